/* Training checkpoints: parameters, optimizer state (its rule's slots, step
 * counts and hyper-parameters, read from the rule's tables), schedule
 * position, RNG and vocabulary in one atomic safetensors file. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_internal.h"

/* Metadata keys and tensor names. */
#define KEY_FORMAT "carousel.format"
#define FORMAT "checkpoint-1"
#define KEY_OPTIM "carousel.optim"
#define KEY_OPTIM_STEPS "carousel.optim.steps"
#define KEY_HPARAM "carousel.optim." /* + the hyper-parameter's name */
#define KEY_SCHED "carousel.schedule_step"
#define KEY_RNG_SEED "carousel.rng.seed"
#define KEY_RNG_OFFSET "carousel.rng.offset"
#define RESERVED_KEY "carousel."

/* malloc'd "__optim__.<rule>.<what>.<param>", NULL when out of memory. */
static char *state_name(const cr_optim *o, const char *what, const char *param)
{
    const char *rule = cr_optim_name(o);
    size_t len = strlen(CR_ST_OPTIM_PREFIX) + strlen(rule) + strlen(what) + strlen(param) + 3;
    char *s = malloc(len);
    if (s) snprintf(s, len, "%s%s.%s.%s", CR_ST_OPTIM_PREFIX, rule, what, param);
    return s;
}

/* malloc'd "carousel.optim.<name>", NULL when out of memory. */
static char *hparam_key(const char *name)
{
    size_t len = strlen(KEY_HPARAM) + strlen(name) + 1;
    char *s = malloc(len);
    if (s) snprintf(s, len, KEY_HPARAM "%s", name);
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

/* Fixed metadata pairs besides the hyper-parameters and the vocabulary's. */
#define N_FIXED_META 6

/* fn: the public function the caller used, for messages. */
static cr_status save(const char *fn, const char *path, const cr_params *ps, const cr_optim *o,
                      int64_t schedule_step, const cr_rng *rng, const cr_vocab *vocab,
                      const cr_st_entry *user, size_t n_user, const char *const *meta_kv, size_t n_meta)
{
    if (!path || !ps) cr_error("%s: %s is NULL", fn, path ? "params" : "path");
    if (n_meta && !meta_kv) cr_error("%s: meta_kv is NULL with n_meta %zu", fn, n_meta);
    if (n_user && !user) cr_error("%s: extra is NULL with n_extra %zu", fn, n_user);
    if (schedule_step < 0) cr_error("%s: schedule_step = %lld is negative", fn, (long long)schedule_step);
    for (size_t i = 0; i < n_meta; i++)
        if (!meta_kv[2 * i] || !meta_kv[2 * i + 1] ||
            strncmp(meta_kv[2 * i], RESERVED_KEY, strlen(RESERVED_KEY)) == 0)
            cr_error("%s: metadata key %zu ('%s') is NULL, has a NULL value or starts with the "
                     "reserved '" RESERVED_KEY "'",
                     fn, i, meta_kv[2 * i] ? meta_kv[2 * i] : "(null)");
    if (o) cr_optim_check(o, ps, fn);

    const cr_optim_rule *rule = o ? cr_optim_rule_of(o) : NULL;
    size_t n_hp = rule ? (size_t)rule->n_hparams : 0, n_slots = rule ? (size_t)rule->n_slots : 0;
    size_t max_own = N_FIXED_META + n_hp + CR_VOCAB_N_META;
    if (n_user > SIZE_MAX / sizeof(cr_st_entry) / 2)
        return cr_failure(CR_ENOMEM, "%s: too many tensors", path);
    size_t max_extra = (o ? ps->n * (n_slots + 1) : 0) + 2 + n_user;
    cr_status st = CR_OK;
    char(*vals)[40] = calloc(max_own, sizeof *vals);
    char **hp_keys = calloc(n_hp ? n_hp : 1, sizeof *hp_keys);
    const char **kv = calloc(2 * (max_own + n_meta), sizeof *kv);
    cr_st_entry *extra = calloc(max_extra, sizeof *extra);
    double *steps = calloc(o && ps->n ? ps->n : 1, sizeof *steps);
    size_t n_extra = 0, n_own = 0, n_names = 0;
    cr_vocab_blob vb = {0};
    if (!vals || !hp_keys || !kv || !extra || !steps) goto oom;
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
        OWN(KEY_OPTIM, "%s", rule->name);
        OWN(KEY_OPTIM_STEPS, "%lld", (long long)cr_optim_steps(o));
        for (size_t h = 0; h < n_hp; h++) {
            if (!(hp_keys[h] = hparam_key(rule->hparams[h].name))) goto oom;
            double x = cr_optim_get_hparam(o, rule->hparams[h].name);
            if (rule->hparams[h].is_bool)
                OWN(hp_keys[h], "%d", x != 0);
            else
                OWN(hp_keys[h], "%.17g", x);
        }
        for (size_t i = 0; i < ps->n; i++) {
            const char *pname = ps->items[i].name;
            steps[i] = (double)cr_optim_param_steps_at(o, i);
            extra[n_extra] = (cr_st_entry){.name = state_name(o, "step", pname),
                                           .dtype = CR_F64,
                                           .ndim = 0,
                                           .data = &steps[i],
                                           .nbytes = sizeof(double)};
            if (!extra[n_extra].name) goto oom;
            n_extra++, n_names++;
            for (size_t s = 0; s < n_slots; s++) {
                const cr_tensor *t = cr_optim_slot(o, i, (int)s);
                if (!t) continue;
                cr_st_entry *e = &extra[n_extra];
                *e = (cr_st_entry){.name = state_name(o, rule->slots[s], pname),
                                   .dtype = t->dtype,
                                   .ndim = t->ndim,
                                   .data = t->data,
                                   .nbytes = (size_t)cr_numel(t) * cr_dtype_size(t->dtype)};
                memcpy(e->shape, t->shape, sizeof e->shape);
                if (!e->name) goto oom;
                n_extra++, n_names++;
            }
        }
    }
#undef OWN
    if (vocab) {
        if ((st = cr_vocab_blob_make(vocab, &vb)) != CR_OK) {
            cr_failure(st, "%s: %s", path, cr_last_error());
            goto done;
        }
        extra[n_extra++] = vb.e[0];
        extra[n_extra++] = vb.e[1];
        memcpy(kv + 2 * n_own, vb.kv, sizeof vb.kv);
        n_own += CR_VOCAB_N_META;
    }
    if (n_user) memcpy(extra + n_extra, user, n_user * sizeof *user);
    n_extra += n_user;
    if (n_meta) memcpy(kv + 2 * n_own, meta_kv, 2 * n_meta * sizeof *kv);
    st = cr_params_save_extra(ps, extra, n_extra, path, kv, n_own + n_meta);
    goto done;

oom:
    st = cr_failure(CR_ENOMEM, "%s: out of memory", path);
done:
    for (size_t i = 0; extra && i < n_names; i++) free((char *)extra[i].name);
    for (size_t h = 0; hp_keys && h < n_hp; h++) free(hp_keys[h]);
    cr_vocab_blob_free(&vb);
    free(vals);
    free(hp_keys);
    free(kv);
    free(extra);
    free(steps);
    return st;
}

cr_status cr_checkpoint_save(const char *path, const cr_params *ps, const cr_optim *o, int64_t schedule_step,
                             const cr_rng *rng, const cr_vocab *vocab, const char *const *meta_kv,
                             size_t n_meta)
{
    return save("cr_checkpoint_save", path, ps, o, schedule_step, rng, vocab, NULL, 0, meta_kv, n_meta);
}

cr_status cr_checkpoint_save_extra(const char *path, const cr_params *ps, const cr_optim *o,
                                   int64_t schedule_step, const cr_rng *rng, const cr_vocab *vocab,
                                   const cr_st_entry *extra, size_t n_extra, const char *const *meta_kv,
                                   size_t n_meta)
{
    return save("cr_checkpoint_save_extra", path, ps, o, schedule_step, rng, vocab, extra, n_extra, meta_kv,
                n_meta);
}

/* ---- load ------------------------------------------------------------------------- */

/* Find tensor `name` with dtype and shape of t (or F64 scalar when t is NULL). */
static cr_status find_like(const cr_st_file *f, const char *name, const cr_tensor *t, const cr_st_entry **out,
                           const char *path)
{
    const cr_st_entry *e = cr_st_find(f, name);
    if (!e) return cr_failure(CR_EMISMATCH, "%s: tensor '%s' is missing", path, cr_escape(name).s);
    bool same;
    if (t) {
        same = e->dtype == t->dtype && e->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = e->shape[d] == t->shape[d];
    } else {
        same = e->dtype == CR_F64 && (e->ndim == 0 || (e->ndim == 1 && e->shape[0] == 1));
    }
    if (!same) {
        char s1[CR_MAX_DIMS * 21 + 3], s2[CR_MAX_DIMS * 21 + 3] = "[]";
        if (t) cr_shape_str(s2, sizeof s2, t->ndim, t->shape);
        return cr_failure(CR_EMISMATCH, "%s: tensor '%s' is %s %s, expected %s %s", path, cr_escape(name).s,
                          cr_st_dtype_name(e->dtype), cr_shape_str(s1, sizeof s1, e->ndim, e->shape),
                          cr_st_dtype_name(t ? t->dtype : CR_F64), s2);
    }
    *out = e;
    return CR_OK;
}

/* The optimizer part of pass 1: the saved rule, hyper-parameters (into cfg),
 * step counts and state entries of every slot the saved config uses. */
static cr_status check_optim(const cr_st_file *f, const cr_params *ps, const cr_optim *o, const char *path,
                             void *cfg, int64_t *n_steps, int64_t *steps, const cr_st_entry **slot_e)
{
    const cr_optim_rule *rule = cr_optim_rule_of(o);
    const char *kind = cr_st_meta_get(f, KEY_OPTIM);
    if (!kind) return cr_failure(CR_EMISMATCH, "%s: the file holds no optimizer state", path);
    if (strcmp(kind, rule->name) != 0)
        return cr_failure(CR_EMISMATCH, "%s: the file holds '%s' state, the optimizer is %s", path,
                          cr_escape(kind).s, rule->name);
    if (!parse_i64(cr_st_meta_get(f, KEY_OPTIM_STEPS), n_steps))
        return cr_failure(CR_EFORMAT, "%s: metadata " KEY_OPTIM_STEPS " is missing or bad", path);
    memcpy(cfg, cr_optim_config(o), rule->config_size);
    for (int h = 0; h < rule->n_hparams; h++) {
        const cr_optim_hparam *hp = &rule->hparams[h];
        char *key = hparam_key(hp->name);
        if (!key) return cr_failure(CR_ENOMEM, "%s: out of memory", path);
        const char *v = cr_st_meta_get(f, key);
        double x = 0;
        bool ok = hp->is_bool ? v && (strcmp(v, "0") == 0 || strcmp(v, "1") == 0) : parse_f64(v, &x);
        if (!ok) {
            cr_status st = cr_failure(CR_EFORMAT, "%s: metadata %s is missing or bad", path, key);
            free(key);
            return st;
        }
        free(key);
        if (hp->is_bool)
            *(bool *)((char *)cfg + hp->offset) = v[0] == '1';
        else
            *(double *)((char *)cfg + hp->offset) = x;
    }
    char msg[160];
    if (!cr_optim_config_ok(rule, cfg, msg, sizeof msg))
        return cr_failure(CR_EFORMAT, "%s: optimizer %s", path, msg);
    for (size_t i = 0; i < ps->n; i++) {
        const char *pname = ps->items[i].name;
        const cr_st_entry *e;
        char *name = state_name(o, "step", pname);
        if (!name) return cr_failure(CR_ENOMEM, "%s: out of memory", path);
        cr_status st = find_like(f, name, NULL, &e, path);
        double k = 0;
        if (st == CR_OK) {
            memcpy(&k, e->data, sizeof k);
            if (!(k >= 0 && k <= 9007199254740992.0 && k == floor(k)))
                st = cr_failure(CR_EFORMAT, "%s: step count '%s' = %g is not a count", path,
                                cr_escape(name).s, k);
        }
        free(name);
        if (st != CR_OK) return st;
        steps[i] = (int64_t)k;
        for (int s = 0; s < rule->n_slots; s++) {
            if (rule->uses_slot && !rule->uses_slot(cfg, s)) continue;
            if (!(name = state_name(o, rule->slots[s], pname)))
                return cr_failure(CR_ENOMEM, "%s: out of memory", path);
            st = find_like(f, name, ps->items[i].value, &slot_e[i * CR_OPTIM_MAX_SLOTS + s], path);
            free(name);
            if (st != CR_OK) return st;
        }
    }
    return CR_OK;
}

cr_status cr_checkpoint_load(const char *path, cr_params *ps, cr_optim *o, int64_t *schedule_step,
                             cr_rng *rng, cr_vocab **vocab)
{
    if (!path || !ps) cr_error("cr_checkpoint_load: %s is NULL", path ? "params" : "path");
    if (o) cr_optim_check(o, ps, "cr_checkpoint_load");
    cr_st_file *f = NULL;
    cr_status st = cr_st_read(path, &f);
    if (st != CR_OK) return st;

    size_t np = ps->n ? ps->n : 1, nf = cr_st_count(f);
    const cr_st_entry **have = calloc(np, sizeof *have);
    const cr_st_entry **slot_e = calloc(np * CR_OPTIM_MAX_SLOTS, sizeof *slot_e);
    int64_t *steps = calloc(np, sizeof *steps);
    bool *used = calloc(nf ? nf : 1, sizeof *used);
    void *cfg = o ? calloc(1, cr_optim_rule_of(o)->config_size) : NULL;
    cr_vocab *new_vocab = NULL;
    int64_t n_steps = 0, sched = 0;
    cr_rng r = {0};
    if (!have || !slot_e || !steps || !used || (o && !cfg)) {
        st = cr_failure(CR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    const char *fmt = cr_st_meta_get(f, KEY_FORMAT);
    if (fmt && strcmp(fmt, FORMAT) != 0) {
        st = cr_failure(CR_EFORMAT, "%s: unsupported checkpoint format '%s' (this is %s)", path,
                        cr_escape(fmt).s, FORMAT);
        goto done;
    }

    /* Pass 1: check everything, touch nothing. */
    for (size_t i = 0; i < ps->n; i++) {
        if ((st = find_like(f, ps->items[i].name, ps->items[i].value, &have[i], path)) != CR_OK) goto done;
        used[have[i] - cr_st_entry_at(f, 0)] = true;
    }
    for (size_t j = 0; j < nf; j++) {
        const char *nm = cr_st_entry_at(f, j)->name;
        if (!used[j] && strncmp(nm, CR_ST_OPTIM_PREFIX, strlen(CR_ST_OPTIM_PREFIX)) != 0) {
            st = cr_failure(CR_EMISMATCH, "%s: tensor '%s' is not a parameter of the model", path,
                            cr_escape(nm).s);
            goto done;
        }
    }
    if (o && (st = check_optim(f, ps, o, path, cfg, &n_steps, steps, slot_e)) != CR_OK) goto done;
    if (schedule_step && !parse_i64(cr_st_meta_get(f, KEY_SCHED), &sched)) {
        st = cr_failure(cr_st_meta_get(f, KEY_SCHED) ? CR_EFORMAT : CR_EMISMATCH,
                        "%s: metadata " KEY_SCHED " is missing or bad", path);
        goto done;
    }
    if (rng && (!parse_u64(cr_st_meta_get(f, KEY_RNG_SEED), &r.seed) ||
                !parse_u64(cr_st_meta_get(f, KEY_RNG_OFFSET), &r.offset))) {
        st = cr_failure(cr_st_meta_get(f, KEY_RNG_SEED) ? CR_EFORMAT : CR_EMISMATCH,
                        "%s: metadata " KEY_RNG_SEED " / " KEY_RNG_OFFSET " is missing or bad", path);
        goto done;
    }
    if (vocab && (st = cr_vocab_from_file(f, &new_vocab)) != CR_OK) {
        cr_failure(st, "%s: %s", path, cr_last_error());
        goto done;
    }

    /* Pass 2: commit (memcpy: file data may be unaligned), bumping the
     * version of every tensor written so autograd sees the change. */
    for (size_t i = 0; i < ps->n; i++) {
        if (have[i]->nbytes) memcpy(ps->items[i].value->data, have[i]->data, have[i]->nbytes);
        cr_tensor_bump_version(ps->items[i].value);
    }
    if (o) {
        cr_optim_restore(o, cfg, n_steps, steps);
        for (size_t i = 0; i < ps->n; i++)
            for (int s = 0; s < cr_optim_rule_of(o)->n_slots; s++) {
                const cr_st_entry *e = slot_e[i * CR_OPTIM_MAX_SLOTS + s];
                cr_tensor *t = cr_optim_slot(o, i, s);
                if (!e || !t) continue;
                if (e->nbytes) memcpy(t->data, e->data, e->nbytes);
                cr_tensor_bump_version(t);
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
    free(have);
    free(slot_e);
    free(steps);
    free(used);
    free(cfg);
    cr_st_file_free(f);
    return st;
}
