/* Training state that outlives a step: checkpoints of parameters, optimizer
 * moments and step counts, schedule position, RNG and vocabulary (one atomic
 * safetensors file), status codes, and the state carried across TBPTT chunks. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "optim_internal.h"

/* ---- status codes ------------------------------------------------------------ */

const char *cr_status_str(cr_status s)
{
    switch (s) {
    case CR_OK: return "ok";
    case CR_NONFINITE: return "non-finite value";
    case CR_EIO: return "i/o error";
    case CR_EFORMAT: return "malformed file";
    case CR_EMISMATCH: return "file does not fit";
    case CR_ENOMEM: return "out of memory";
    case CR_EINVAL: return "invalid data";
    }
    return "unknown status";
}

cr_status cr_optim_fail(char *err, size_t errlen, cr_status st, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return st;
}

cr_status cr_optim_st_read(const char *path, cr_st_file **f, char *err, size_t errlen)
{
    char msg[512];
    if (cr_st_read(path, f, msg, sizeof msg) == 0) return CR_OK;
    /* Tell a file we cannot read from one we read but reject. */
    cr_status st = CR_EFORMAT;
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        st = CR_EIO;
    else if (strstr(msg, "out of memory"))
        st = CR_ENOMEM;
    if (fd >= 0) close(fd);
    return cr_optim_fail(err, errlen, st, "%s", msg);
}

/* ---- truncated BPTT ----------------------------------------------------------- */

void cr_state_carry(cr_tensor *dst, const cr_tensor *h)
{
    char s1[128], s2[128];
    if (!dst || !h) cr_error("cr_state_carry: %s is NULL", dst ? "h" : "dst");
    if (!dst->persistent)
        cr_error("cr_state_carry: dst %s is a step tensor; the carried state must be persistent "
                 "(cr_tensor_init), or it dies with the graph",
                 cr_shape_str(s1, sizeof s1, dst->ndim, dst->shape));
    if (dst->requires_grad)
        cr_error("cr_state_carry: dst %s requires a gradient; a carried state must be a constant",
                 cr_shape_str(s1, sizeof s1, dst->ndim, dst->shape));
    if (!cr_same_shape(dst, h))
        cr_error("cr_state_carry: dst %s and h %s differ in shape",
                 cr_shape_str(s1, sizeof s1, dst->ndim, dst->shape),
                 cr_shape_str(s2, sizeof s2, h->ndim, h->shape));
    if (dst->data != h->data) cr_copy_(dst, h);
}

/* ---- hyper-parameters as metadata ------------------------------------------------ */

typedef struct hp_desc {
    const char *name;
    size_t off; /* in the kind's config struct */
    bool is_bool;
} hp_desc;

#define HP(T, f)                                                                                             \
    {                                                                                                        \
#f, offsetof(T, f), false                                                                            \
    }
#define HPB(T, f)                                                                                            \
    {                                                                                                        \
#f, offsetof(T, f), true                                                                             \
    }
static const hp_desc sgd_hp[] = {HP(cr_sgd_config, lr), HP(cr_sgd_config, momentum),
                                 HP(cr_sgd_config, dampening), HP(cr_sgd_config, weight_decay),
                                 HPB(cr_sgd_config, nesterov)};
static const hp_desc adam_hp[] = {HP(cr_adam_config, lr),           HP(cr_adam_config, beta1),
                                  HP(cr_adam_config, beta2),        HP(cr_adam_config, eps),
                                  HP(cr_adam_config, weight_decay), HPB(cr_adam_config, amsgrad)};
static const hp_desc rms_hp[] = {HP(cr_rmsprop_config, lr),       HP(cr_rmsprop_config, alpha),
                                 HP(cr_rmsprop_config, eps),      HP(cr_rmsprop_config, weight_decay),
                                 HP(cr_rmsprop_config, momentum), HPB(cr_rmsprop_config, centered)};
#define MAX_HP 6

/* The hyper-parameter table of o's kind and the config struct it describes. */
static const hp_desc *hp_table(cr_optim *o, size_t *n, char **base)
{
    switch (o->kind) {
    case CR_OPTIM_SGD: *n = 5, *base = (char *)&o->sgd; return sgd_hp;
    case CR_OPTIM_ADAM:
    case CR_OPTIM_ADAMW: *n = 6, *base = (char *)&o->adam; return adam_hp;
    case CR_OPTIM_RMSPROP: *n = 6, *base = (char *)&o->rms; return rms_hp;
    }
    *n = 0, *base = NULL;
    return NULL;
}

/* Metadata keys and tensor names. */
#define KEY_FORMAT "carousel.format"
#define FORMAT "checkpoint-1"
#define KEY_OPTIM "carousel.optim"
#define KEY_OPTIM_STEPS "carousel.optim.steps"
#define KEY_SCHED "carousel.schedule_step"
#define KEY_RNG_SEED "carousel.rng.seed"
#define KEY_RNG_OFFSET "carousel.rng.offset"
#define RESERVED_KEY "carousel."

/* malloc'd "__optim__.<kind>.<what>.<param>", NULL when out of memory. */
static char *state_name(const cr_optim *o, const char *what, const char *param)
{
    const char *kind = cr_optim_name(o);
    size_t len = strlen(CR_ST_OPTIM_PREFIX) + strlen(kind) + strlen(what) + strlen(param) + 3;
    char *s = malloc(len);
    if (s) snprintf(s, len, "%s%s.%s.%s", CR_ST_OPTIM_PREFIX, kind, what, param);
    return s;
}

static bool parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s || *s == '+' || *s == ' ') return false;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || *end || x < 0) return false;
    *out = x;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9') return false; /* strtoull would accept "-1" */
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = x;
    return true;
}

static bool parse_f64(const char *s, double *out)
{
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (*end || (errno == ERANGE && fabs(x) > 1)) return false;
    *out = x;
    return true;
}

/* ---- save ------------------------------------------------------------------------- */

/* Metadata strings: fixed keys with values in `vals`, then the caller's pairs. */
#define MAX_OWN_META (6 + MAX_HP + CR_VOCAB_N_META)

cr_status cr_checkpoint_save(const char *path, const cr_params *ps, const cr_optim *o, int64_t schedule_step,
                             const cr_rng *rng, const cr_vocab *vocab, const char *const *meta_kv,
                             size_t n_meta, char *err, size_t errlen)
{
    if (!path || !ps) cr_error("cr_checkpoint_save: %s is NULL", path ? "params" : "path");
    if (n_meta && !meta_kv) cr_error("cr_checkpoint_save: meta_kv is NULL with n_meta %zu", n_meta);
    if (schedule_step < 0)
        cr_error("cr_checkpoint_save: schedule_step = %lld is negative", (long long)schedule_step);
    for (size_t i = 0; i < n_meta; i++)
        if (!meta_kv[2 * i] || !meta_kv[2 * i + 1] ||
            strncmp(meta_kv[2 * i], RESERVED_KEY, strlen(RESERVED_KEY)) == 0)
            cr_error(
                "cr_checkpoint_save: metadata key %zu ('%s') is NULL, has a NULL value or starts with the "
                "reserved '" RESERVED_KEY "'",
                i, meta_kv[2 * i] ? meta_kv[2 * i] : "(null)");
    if (o) {
        if (o->ps != ps) cr_error("cr_checkpoint_save: the optimizer was created over another parameter set");
        cr_optim_check_set(o, "cr_checkpoint_save");
    }

    cr_status st = CR_OK;
    char vals[MAX_OWN_META][40], hp_keys[MAX_HP][48];
    const char **kv = NULL;
    cr_st_entry *extra = NULL;
    double *steps = NULL;
    size_t n_extra = 0, n_own = 0;
    cr_vocab_blob vb = {0};
    bool have_vb = false;

    size_t max_extra = (o ? o->n * (CR_N_SLOTS + 1) : 0) + 2;
    extra = calloc(max_extra, sizeof *extra);
    kv = calloc(2 * (MAX_OWN_META + n_meta), sizeof *kv);
    steps = calloc(o && o->n ? o->n : 1, sizeof *steps);
    if (!extra || !kv || !steps) {
        st = cr_optim_fail(err, errlen, CR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
#define OWN(key, ...)                                                                                        \
    do {                                                                                                     \
        snprintf(vals[n_own], sizeof vals[n_own], __VA_ARGS__);                                              \
        kv[2 * n_own] = (key);                                                                               \
        kv[2 * n_own + 1] = vals[n_own];                                                                     \
        n_own++;                                                                                             \
    } while (0)
    OWN(KEY_FORMAT, "%s", FORMAT);
    OWN(KEY_SCHED, "%lld", (long long)schedule_step);
    if (rng) {
        OWN(KEY_RNG_SEED, "%llu", (unsigned long long)rng->seed);
        OWN(KEY_RNG_OFFSET, "%llu", (unsigned long long)rng->offset);
    }
    if (o) {
        OWN(KEY_OPTIM, "%s", cr_optim_name(o));
        OWN(KEY_OPTIM_STEPS, "%lld", (long long)o->n_steps);
        size_t nh;
        char *base;
        const hp_desc *hp = hp_table((cr_optim *)o, &nh, &base);
        for (size_t h = 0; h < nh; h++) {
            snprintf(hp_keys[h], sizeof hp_keys[h], "carousel.optim.%s", hp[h].name);
            if (hp[h].is_bool)
                OWN(hp_keys[h], "%d", *(const bool *)(base + hp[h].off) ? 1 : 0);
            else
                OWN(hp_keys[h], "%.17g", *(const double *)(base + hp[h].off));
        }
        for (size_t i = 0; i < o->n; i++) {
            const char *pname = ps->items[i].name;
            steps[i] = (double)o->step[i];
            extra[n_extra] = (cr_st_entry){.name = state_name(o, "step", pname),
                                           .dtype = CR_F64,
                                           .ndim = 0,
                                           .data = &steps[i],
                                           .nbytes = sizeof(double)};
            if (!extra[n_extra++].name) {
                st = cr_optim_fail(err, errlen, CR_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            for (int s = 0; s < CR_N_SLOTS; s++) {
                if (!cr_optim_uses_slot(o, s)) continue;
                const cr_tensor *t = o->slot[i * CR_N_SLOTS + s];
                cr_st_entry *e = &extra[n_extra];
                *e = (cr_st_entry){.name = state_name(o, cr_optim_slot_names[s], pname),
                                   .dtype = t->dtype,
                                   .ndim = t->ndim,
                                   .data = t->data,
                                   .nbytes = (size_t)cr_numel(t) * cr_dtype_size(t->dtype)};
                memcpy(e->shape, t->shape, sizeof e->shape);
                n_extra++;
                if (!e->name) {
                    st = cr_optim_fail(err, errlen, CR_ENOMEM, "%s: out of memory", path);
                    goto done;
                }
            }
        }
    }
#undef OWN
    if (vocab) {
        char msg[256];
        if ((st = cr_vocab_blob_make(vocab, &vb, msg, sizeof msg)) != CR_OK) {
            cr_optim_fail(err, errlen, st, "%s: %s", path, msg);
            goto done;
        }
        have_vb = true;
        extra[n_extra++] = vb.e[0];
        extra[n_extra++] = vb.e[1];
        memcpy(kv + 2 * n_own, vb.kv, sizeof vb.kv);
        n_own += CR_VOCAB_N_META;
    }
    if (n_meta) memcpy(kv + 2 * n_own, meta_kv, 2 * n_meta * sizeof *kv);
    if (cr_params_save_extra(ps, extra, n_extra, path, kv, n_own + n_meta, err, errlen) != 0) st = CR_EIO;

done:
    if (extra) {
        size_t n_own_names = n_extra - (have_vb ? 2 : 0);
        for (size_t i = 0; i < n_own_names; i++) free((char *)extra[i].name);
    }
    if (have_vb) cr_vocab_blob_free(&vb);
    free(extra);
    free(kv);
    free(steps);
    return st;
}

/* ---- load ------------------------------------------------------------------------- */

/* Find tensor `name` with dtype and shape of t (or F64 scalar when t is NULL). */
static cr_status find_like(const cr_st_file *f, const char *name, const cr_tensor *t, const cr_st_entry **out,
                           const char *path, char *err, size_t errlen)
{
    const cr_st_entry *e = cr_st_find(f, name);
    if (!e) return cr_optim_fail(err, errlen, CR_EMISMATCH, "%s: tensor '%s' is missing", path, name);
    bool same;
    if (t) {
        same = e->dtype == t->dtype && e->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = e->shape[d] == t->shape[d];
    } else {
        same = e->dtype == CR_F64 && (e->ndim == 0 || (e->ndim == 1 && e->shape[0] == 1));
    }
    if (!same) {
        char s1[128], s2[128] = "[]";
        if (t) cr_shape_str(s2, sizeof s2, t->ndim, t->shape);
        return cr_optim_fail(err, errlen, CR_EMISMATCH, "%s: tensor '%s' is %s %s, expected %s %s", path,
                             name, cr_st_dtype_name(e->dtype), cr_shape_str(s1, sizeof s1, e->ndim, e->shape),
                             cr_st_dtype_name(t ? t->dtype : CR_F64), s2);
    }
    *out = e;
    return CR_OK;
}

cr_status cr_checkpoint_load(const char *path, cr_params *ps, cr_optim *o, int64_t *schedule_step,
                             cr_rng *rng, cr_vocab **vocab, char *err, size_t errlen)
{
    if (!path || !ps) cr_error("cr_checkpoint_load: %s is NULL", path ? "params" : "path");
    if (o) {
        if (o->ps != ps) cr_error("cr_checkpoint_load: the optimizer was created over another parameter set");
        cr_optim_check_set(o, "cr_checkpoint_load");
    }
    cr_st_file *f = NULL;
    cr_status st = cr_optim_st_read(path, &f, err, errlen);
    if (st != CR_OK) return st;

    const cr_st_entry **have = calloc(ps->n ? ps->n : 1, sizeof *have);
    const cr_st_entry **slot_e = calloc((o && o->n ? o->n : 1) * CR_N_SLOTS, sizeof *slot_e);
    int64_t *steps = calloc(o && o->n ? o->n : 1, sizeof *steps);
    bool *used = calloc(cr_st_count(f) ? cr_st_count(f) : 1, sizeof *used);
    cr_vocab *new_vocab = NULL;
    char *name = NULL;
    if (!have || !slot_e || !steps || !used) {
        st = cr_optim_fail(err, errlen, CR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    const char *fmt = cr_st_meta_get(f, KEY_FORMAT);
    if (fmt && strcmp(fmt, FORMAT) != 0) {
        st = cr_optim_fail(err, errlen, CR_EFORMAT, "%s: unsupported checkpoint format '%.40s' (this is %s)",
                           path, fmt, FORMAT);
        goto done;
    }

    /* Pass 1: check everything, touch nothing. */
    for (size_t i = 0; i < ps->n; i++) {
        if ((st = find_like(f, ps->items[i].name, ps->items[i].value, &have[i], path, err, errlen)) != CR_OK)
            goto done;
        used[have[i] - cr_st_entry_at(f, 0)] = true;
    }
    for (size_t j = 0; j < cr_st_count(f); j++) {
        const char *nm = cr_st_entry_at(f, j)->name;
        if (!used[j] && strncmp(nm, CR_ST_OPTIM_PREFIX, strlen(CR_ST_OPTIM_PREFIX)) != 0) {
            st = cr_optim_fail(err, errlen, CR_EMISMATCH,
                               "%s: tensor '%.200s' is not a parameter of the model", path, nm);
            goto done;
        }
    }

    cr_optim tmp; /* o with the file's configuration, to know its slots */
    int64_t n_steps = 0;
    if (o) {
        const char *kind = cr_st_meta_get(f, KEY_OPTIM);
        if (!kind) {
            st = cr_optim_fail(err, errlen, CR_EMISMATCH, "%s: the file holds no optimizer state", path);
            goto done;
        }
        if (strcmp(kind, cr_optim_name(o)) != 0) {
            st = cr_optim_fail(err, errlen, CR_EMISMATCH,
                               "%s: the file holds %.40s state, the optimizer is %s", path, kind,
                               cr_optim_name(o));
            goto done;
        }
        if (!parse_i64(cr_st_meta_get(f, KEY_OPTIM_STEPS), &n_steps)) {
            st = cr_optim_fail(err, errlen, CR_EFORMAT, "%s: metadata " KEY_OPTIM_STEPS " is missing or bad",
                               path);
            goto done;
        }
        tmp = *o;
        size_t nh;
        char *base;
        const hp_desc *hp = hp_table(&tmp, &nh, &base);
        for (size_t h = 0; h < nh; h++) {
            char key[64];
            snprintf(key, sizeof key, "carousel.optim.%s", hp[h].name);
            const char *v = cr_st_meta_get(f, key);
            double x;
            bool ok = hp[h].is_bool ? v && (strcmp(v, "0") == 0 || strcmp(v, "1") == 0) : parse_f64(v, &x);
            if (!ok) {
                st = cr_optim_fail(err, errlen, CR_EFORMAT, "%s: metadata %s is missing or bad", path, key);
                goto done;
            }
            if (hp[h].is_bool)
                *(bool *)(base + hp[h].off) = v[0] == '1';
            else
                *(double *)(base + hp[h].off) = x;
        }
        char msg[160];
        if (!cr_optim_config_ok(tmp.kind, &tmp.sgd, &tmp.adam, &tmp.rms, msg, sizeof msg)) {
            st = cr_optim_fail(err, errlen, CR_EFORMAT, "%s: optimizer %s", path, msg);
            goto done;
        }
        for (size_t i = 0; i < o->n; i++) {
            const char *pname = ps->items[i].name;
            const cr_st_entry *e;
            if (!(name = state_name(o, "step", pname))) {
                st = cr_optim_fail(err, errlen, CR_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            if ((st = find_like(f, name, NULL, &e, path, err, errlen)) != CR_OK) goto done;
            double k;
            memcpy(&k, e->data, sizeof k);
            if (!(k >= 0 && k <= 9007199254740992.0 && k == floor(k))) {
                st = cr_optim_fail(err, errlen, CR_EFORMAT, "%s: step count '%s' = %g is not a count", path,
                                   name, k);
                goto done;
            }
            steps[i] = (int64_t)k;
            free(name);
            name = NULL;
            for (int s = 0; s < CR_N_SLOTS; s++) {
                if (!cr_optim_uses_slot(&tmp, s)) continue;
                if (!(name = state_name(o, cr_optim_slot_names[s], pname))) {
                    st = cr_optim_fail(err, errlen, CR_ENOMEM, "%s: out of memory", path);
                    goto done;
                }
                if ((st = find_like(f, name, ps->items[i].value, &slot_e[i * CR_N_SLOTS + s], path, err,
                                    errlen)) != CR_OK)
                    goto done;
                free(name);
                name = NULL;
            }
        }
    }
    int64_t sched = 0;
    if (schedule_step && !parse_i64(cr_st_meta_get(f, KEY_SCHED), &sched)) {
        st = cr_optim_fail(err, errlen, cr_st_meta_get(f, KEY_SCHED) ? CR_EFORMAT : CR_EMISMATCH,
                           "%s: metadata " KEY_SCHED " is missing or bad", path);
        goto done;
    }
    cr_rng r = {0};
    if (rng && (!parse_u64(cr_st_meta_get(f, KEY_RNG_SEED), &r.seed) ||
                !parse_u64(cr_st_meta_get(f, KEY_RNG_OFFSET), &r.offset))) {
        st = cr_optim_fail(err, errlen, cr_st_meta_get(f, KEY_RNG_SEED) ? CR_EFORMAT : CR_EMISMATCH,
                           "%s: metadata " KEY_RNG_SEED " / " KEY_RNG_OFFSET " is missing or bad", path);
        goto done;
    }
    if (vocab) {
        char msg[256];
        if ((st = cr_vocab_from_file(f, &new_vocab, msg, sizeof msg)) != CR_OK) {
            cr_optim_fail(err, errlen, st, "%s: %s", path, msg);
            goto done;
        }
    }

    /* Pass 2: commit (memcpy: file data may be unaligned). */
    for (size_t i = 0; i < ps->n; i++)
        if (have[i]->nbytes) memcpy(ps->items[i].value->data, have[i]->data, have[i]->nbytes);
    if (o) {
        o->sgd = tmp.sgd;
        o->adam = tmp.adam;
        o->rms = tmp.rms;
        o->n_steps = n_steps;
        cr_optim_alloc_slots(o);
        for (size_t i = 0; i < o->n; i++) {
            o->step[i] = steps[i];
            for (int s = 0; s < CR_N_SLOTS; s++) {
                const cr_st_entry *e = slot_e[i * CR_N_SLOTS + s];
                if (e && e->nbytes) memcpy(o->slot[i * CR_N_SLOTS + s]->data, e->data, e->nbytes);
            }
        }
    }
    if (schedule_step) *schedule_step = sched;
    if (rng) *rng = r;
    if (vocab) {
        *vocab = new_vocab;
        new_vocab = NULL;
    }
    st = CR_OK;

done:
    cr_vocab_free(new_vocab);
    free(name);
    free(have);
    free(slot_e);
    free(steps);
    free(used);
    cr_st_file_free(f);
    return st;
}
