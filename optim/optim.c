/* The generic optimizer: a rule (hyper-parameter table, state slots, update)
 * applied to every parameter of a set, its state in persistent tensors, and
 * the accessors and state hooks that checkpoints use. No rule is named here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim_internal.h"

struct cr_optim {
    const cr_optim_rule *rule;
    void *cfg;     /* rule->config_size bytes */
    void *scratch; /* as many, in the same block: a config being checked (no malloc per set_lr) */
    cr_params *ps;
    size_t n;          /* parameters at init */
    cr_tensor **value; /* [n] the parameter tensors at init (detects a changed set) */
    int64_t n_steps;   /* cr_optim_step calls */
    int64_t *step;     /* [n] updates each parameter received */
    cr_tensor **slot;  /* [n * CR_OPTIM_MAX_SLOTS] persistent state, NULL where unused */
};

/* ---- configuration ----------------------------------------------------------- */

static const cr_optim_hparam *hparam_find(const cr_optim_rule *r, const char *name)
{
    for (int h = 0; h < r->n_hparams; h++)
        if (strcmp(r->hparams[h].name, name) == 0) return &r->hparams[h];
    return NULL;
}

static double hparam_read(const void *cfg, const cr_optim_hparam *h)
{
    const char *p = (const char *)cfg + h->offset;
    return h->is_bool ? (*(const bool *)p ? 1 : 0) : *(const double *)p;
}

bool cr_optim_config_ok(const cr_optim_rule *rule, const void *cfg, char *msg, size_t len)
{
    for (int i = 0; i < rule->n_hparams; i++) {
        const cr_optim_hparam *h = &rule->hparams[i];
        if (h->is_bool) continue;
        double x = hparam_read(cfg, h);
        if (isfinite(x) && x >= h->lo && x < h->hi) continue;
        if (h->lo == -INFINITY && h->hi == INFINITY)
            snprintf(msg, len, "%s = %g must be finite", h->name, x);
        else
            snprintf(msg, len, "%s = %g must be finite and in [%g, %g)", h->name, x, h->lo, h->hi);
        return false;
    }
    return !rule->validate || rule->validate(cfg, msg, len);
}

/* A rule that cannot work is a programming error of whoever wrote it. */
static void check_rule(const char *op, const cr_optim_rule *r)
{
    if (!r || !r->name || !r->update || r->config_size == 0 || r->n_hparams < 1 || !r->hparams ||
        r->n_slots < 0 || r->n_slots > CR_OPTIM_MAX_SLOTS || (r->n_slots > 0 && !r->slots))
        cr_error("%s: the rule is incomplete (name, config_size, hparams, update, at most %d slots)", op,
                 CR_OPTIM_MAX_SLOTS);
    const cr_optim_hparam *lr = hparam_find(r, "lr");
    if (!lr || lr->is_bool) cr_error("%s: rule '%s' has no real hyper-parameter \"lr\"", op, r->name);
    for (int h = 0; h < r->n_hparams; h++)
        if (r->hparams[h].offset + (r->hparams[h].is_bool ? sizeof(bool) : sizeof(double)) > r->config_size)
            cr_error("%s: rule '%s': hyper-parameter '%s' lies outside its %zu-byte config", op, r->name,
                     r->hparams[h].name, r->config_size);
}

static bool uses_slot(const cr_optim_rule *r, const void *cfg, int s)
{
    return !r->uses_slot || r->uses_slot(cfg, s);
}

/* Slot s of parameter i if the current config uses it, else NULL (a slot a
 * previous config used stays allocated but is not seen). */
static cr_tensor *active_slot(const cr_optim *o, size_t i, int s)
{
    return uses_slot(o->rule, o->cfg, s) ? o->slot[i * CR_OPTIM_MAX_SLOTS + s] : NULL;
}

/* Allocate (zero-filled) every slot the current config uses and lacks. */
static void alloc_slots(cr_optim *o)
{
    for (size_t i = 0; i < o->n; i++)
        for (int s = 0; s < o->rule->n_slots; s++)
            if (uses_slot(o->rule, o->cfg, s) && !o->slot[i * CR_OPTIM_MAX_SLOTS + s]) {
                const cr_tensor *v = o->value[i];
                o->slot[i * CR_OPTIM_MAX_SLOTS + s] = cr_tensor_init(v->dtype, v->ndim, v->shape);
            }
}

cr_optim *cr_optim_make(const char *op, cr_params *ps, const cr_optim_rule *rule, const void *cfg)
{
    check_rule(op, rule);
    if (!ps || !cfg) cr_error("%s: %s is NULL", op, ps ? "config" : "params");
    char msg[160];
    if (!cr_optim_config_ok(rule, cfg, msg, sizeof msg)) cr_error("%s: %s", op, msg);
    cr_optim *o = cr_xcalloc(1, sizeof *o);
    o->rule = rule;
    size_t cfg_bytes = (rule->config_size + 15) / 16 * 16;
    o->cfg = cr_xmalloc(2 * cfg_bytes);
    o->scratch = (char *)o->cfg + cfg_bytes;
    memcpy(o->cfg, cfg, rule->config_size);
    o->ps = ps;
    o->n = ps->n;
    o->value = cr_xcalloc(o->n, sizeof *o->value);
    o->step = cr_xcalloc(o->n, sizeof *o->step);
    o->slot = cr_xcalloc(o->n * CR_OPTIM_MAX_SLOTS, sizeof *o->slot);
    for (size_t i = 0; i < o->n; i++) {
        cr_tensor *v = ps->items[i].value;
        char s[128];
        if (v->dtype != CR_F32 && v->dtype != CR_F64)
            cr_error("%s: parameter '%s' %s is %s; only f32 and f64 parameters can be optimized", op,
                     ps->items[i].name, cr_shape_str(s, sizeof s, v->ndim, v->shape),
                     cr_dtype_name(v->dtype));
        if (!cr_is_contiguous(v))
            cr_error("%s: parameter '%s' %s is not contiguous", op, ps->items[i].name,
                     cr_shape_str(s, sizeof s, v->ndim, v->shape));
        o->value[i] = v;
    }
    alloc_slots(o);
    return o;
}

cr_optim *cr_optim_init(cr_params *ps, const cr_optim_rule *rule, const void *cfg)
{
    return cr_optim_make("cr_optim_init", ps, rule, cfg);
}

void cr_optim_free(cr_optim *o)
{
    if (!o) return;
    for (size_t i = 0; i < o->n * CR_OPTIM_MAX_SLOTS; i++) cr_tensor_free(o->slot[i]);
    free(o->slot);
    free(o->step);
    free(o->value);
    free(o->cfg);
    free(o);
}

/* ---- the step ------------------------------------------------------------------ */

void cr_optim_check(const cr_optim *o, const cr_params *ps, const char *op)
{
    if (!o) cr_error("%s: optimizer is NULL", op);
    if (ps && o->ps != ps) cr_error("%s: the optimizer was created over another parameter set", op);
    if (o->ps->n != o->n)
        cr_error("%s: the parameter set changed after the optimizer was created (%zu parameters, now %zu)",
                 op, o->n, o->ps->n);
    for (size_t i = 0; i < o->n; i++)
        if (o->ps->items[i].value != o->value[i])
            cr_error("%s: parameter %zu ('%s') is not the tensor the optimizer was created with", op, i,
                     o->ps->items[i].name);
}

void cr_optim_step(cr_optim *o)
{
    cr_optim_check(o, NULL, "cr_optim_step");
    for (size_t i = 0; i < o->n; i++) {
        cr_tensor *p = o->value[i], *g = p->grad;
        if (!g) continue; /* no gradient yet: skipped, state unchanged (PyTorch) */
        if (g->dtype != p->dtype || cr_numel(g) != cr_numel(p) || !cr_is_contiguous(g)) {
            char s1[128], s2[128];
            cr_error("cr_optim_step: gradient of '%s' is %s %s%s, parameter is %s %s", o->ps->items[i].name,
                     cr_dtype_name(g->dtype), cr_shape_str(s1, sizeof s1, g->ndim, g->shape),
                     cr_is_contiguous(g) ? "" : " (not contiguous)", cr_dtype_name(p->dtype),
                     cr_shape_str(s2, sizeof s2, p->ndim, p->shape));
        }
        cr_tensor *slot[CR_OPTIM_MAX_SLOTS] = {NULL};
        for (int s = 0; s < o->rule->n_slots; s++) slot[s] = active_slot(o, i, s);
        o->rule->update(o->cfg, p, g, slot, ++o->step[i]);
        /* The rule wrote through ->data: make the writes visible to autograd. */
        cr_tensor_bump_version(p);
        for (int s = 0; s < o->rule->n_slots; s++)
            if (slot[s]) cr_tensor_bump_version(slot[s]);
    }
    o->n_steps++;
}

void cr_optim_zero_grad(cr_optim *o)
{
    if (!o) cr_error("cr_optim_zero_grad: optimizer is NULL");
    cr_params_zero_grad(o->ps);
}

/* ---- accessors ------------------------------------------------------------------- */

double cr_optim_get_hparam(const cr_optim *o, const char *name)
{
    if (!o || !name) cr_error("cr_optim_get_hparam: %s is NULL", o ? "name" : "optimizer");
    const cr_optim_hparam *h = hparam_find(o->rule, name);
    if (!h) cr_error("cr_optim_get_hparam: %s has no hyper-parameter '%s'", o->rule->name, name);
    return hparam_read(o->cfg, h);
}

/* Set a hyper-parameter; `op` names the public function for messages. */
static void set_hparam(const char *op, cr_optim *o, const char *name, double value)
{
    if (!o || !name) cr_error("%s: %s is NULL", op, o ? "name" : "optimizer");
    const cr_optim_hparam *h = hparam_find(o->rule, name);
    if (!h) cr_error("%s: %s has no hyper-parameter '%s'", op, o->rule->name, name);
    if (h->is_bool && value != 0 && value != 1) cr_error("%s: %s = %g: a flag is 0 or 1", op, name, value);
    char *cfg = o->scratch, msg[160];
    memcpy(cfg, o->cfg, o->rule->config_size);
    if (h->is_bool)
        *(bool *)(cfg + h->offset) = value != 0;
    else
        *(double *)(cfg + h->offset) = value;
    if (!cr_optim_config_ok(o->rule, cfg, msg, sizeof msg)) cr_error("%s: %s", op, msg);
    memcpy(o->cfg, cfg, o->rule->config_size);
    alloc_slots(o); /* e.g. amsgrad switched on */
}

void cr_optim_set_hparam(cr_optim *o, const char *name, double value)
{
    set_hparam("cr_optim_set_hparam", o, name, value);
}

void cr_optim_set_lr(cr_optim *o, double lr)
{
    if (!o) cr_error("cr_optim_set_lr: optimizer is NULL");
    if (!isfinite(lr) || lr < 0) cr_error("cr_optim_set_lr: lr = %g must be finite and >= 0", lr);
    set_hparam("cr_optim_set_lr", o, "lr", lr);
}

double cr_optim_get_lr(const cr_optim *o)
{
    if (!o) cr_error("cr_optim_get_lr: optimizer is NULL");
    return cr_optim_get_hparam(o, "lr");
}

const cr_optim_rule *cr_optim_rule_of(const cr_optim *o) { return o->rule; }
const char *cr_optim_name(const cr_optim *o) { return o->rule->name; }
const void *cr_optim_config(const cr_optim *o) { return o->cfg; }
cr_params *cr_optim_params(const cr_optim *o) { return o->ps; }
int64_t cr_optim_steps(const cr_optim *o) { return o->n_steps; }

static long param_index(const cr_optim *o, const char *name)
{
    for (size_t i = 0; i < o->n && i < o->ps->n; i++)
        if (o->ps->items[i].value == o->value[i] && strcmp(o->ps->items[i].name, name) == 0) return (long)i;
    return -1;
}

const cr_tensor *cr_optim_state(const cr_optim *o, const char *param_name, const char *slot)
{
    long i = param_index(o, param_name);
    if (i < 0) return NULL;
    for (int s = 0; s < o->rule->n_slots; s++)
        if (strcmp(o->rule->slots[s], slot) == 0) return active_slot(o, (size_t)i, s);
    return NULL;
}

int64_t cr_optim_param_steps(const cr_optim *o, const char *param_name)
{
    long i = param_index(o, param_name);
    return i < 0 ? -1 : o->step[i];
}

/* ---- state for checkpoints ---------------------------------------------------------- */

cr_tensor *cr_optim_slot(const cr_optim *o, size_t i, int s)
{
    if (!o || i >= o->n || s < 0 || s >= o->rule->n_slots)
        cr_error("cr_optim_slot: parameter %zu, slot %d out of range", i, s);
    return active_slot(o, i, s);
}

int64_t cr_optim_param_steps_at(const cr_optim *o, size_t i)
{
    if (!o || i >= o->n) cr_error("cr_optim_param_steps_at: parameter %zu out of range", i);
    return o->step[i];
}

void cr_optim_restore(cr_optim *o, const void *cfg, int64_t n_steps, const int64_t *param_steps)
{
    cr_optim_check(o, NULL, "cr_optim_restore");
    char msg[160];
    if (!cfg || !cr_optim_config_ok(o->rule, cfg, msg, sizeof msg))
        cr_error("cr_optim_restore: %s", cfg ? msg : "config is NULL");
    if (n_steps < 0 || (o->n && !param_steps)) cr_error("cr_optim_restore: bad step counts");
    memcpy(o->cfg, cfg, o->rule->config_size);
    o->n_steps = n_steps;
    for (size_t i = 0; i < o->n; i++) o->step[i] = param_steps[i];
    alloc_slots(o);
}
