/* Optimizers over a parameter set: SGD (momentum, dampening, Nesterov, weight
 * decay), Adam, AdamW and RMSprop with PyTorch 1.13's update rules, their state
 * in persistent tensors, and one elementwise update loop per rule and dtype. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim_internal.h"

const char *const cr_optim_slot_names[CR_N_SLOTS] = {
    [CR_SLOT_MOMENTUM_BUFFER] = "momentum_buffer", [CR_SLOT_EXP_AVG] = "exp_avg",
    [CR_SLOT_EXP_AVG_SQ] = "exp_avg_sq",           [CR_SLOT_MAX_EXP_AVG_SQ] = "max_exp_avg_sq",
    [CR_SLOT_SQUARE_AVG] = "square_avg",           [CR_SLOT_GRAD_AVG] = "grad_avg",
};

static const char *const kind_names[] = {
    [CR_OPTIM_SGD] = "sgd",
    [CR_OPTIM_ADAM] = "adam",
    [CR_OPTIM_ADAMW] = "adamw",
    [CR_OPTIM_RMSPROP] = "rmsprop",
};

/* ---- update loops ------------------------------------------------------------ */
/* One loop per rule, instantiated for float and double. Scalars arrive already
 * rounded to the parameter's type (as PyTorch casts them for its kernels), and
 * each expression keeps PyTorch's order: add_(x, alpha) is self + alpha*x,
 * addcmul_(a, b, value) is self + value*a*b, addcdiv_(a, b, value) is
 * self + value*a/b. Every iteration touches only element i: OpenMP threads
 * work on disjoint elements and results do not depend on the thread count. */

#define OMP_FOR _Pragma("omp parallel for schedule(static) if (n >= cr_parallel_threshold)")

/* d = g + wd p; buf = first ? d : m buf + (1-damp) d; d = nesterov ? d + m buf : buf; p -= lr d */
#define DEF_SGD(T)                                                                                           \
    static void sgd_##T(T *restrict p, const T *restrict g, T *restrict buf, int64_t n, T lr, T wd, T mom,   \
                        T one_m_damp, bool nesterov, bool first)                                             \
    {                                                                                                        \
        OMP_FOR                                                                                              \
        for (int64_t i = 0; i < n; i++) {                                                                    \
            T d = g[i];                                                                                      \
            if (wd != 0) d = d + wd * p[i];                                                                  \
            if (buf) {                                                                                       \
                T b = first ? d : buf[i] * mom + one_m_damp * d;                                             \
                buf[i] = b;                                                                                  \
                d = nesterov ? d + mom * b : b;                                                              \
            }                                                                                                \
            p[i] = p[i] + (-lr) * d;                                                                         \
        }                                                                                                    \
    }

/* AdamW: p *= decay first. g += wd p (Adam); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * den = sqrt(v or vmax) / sqrt(1-b2^k) + eps; p -= step_size m / den */
#define DEF_ADAM(T, SQRT)                                                                                    \
    static void adam_##T(T *restrict p, const T *restrict g, T *restrict m, T *restrict v, T *restrict vmax, \
                         int64_t n, T decay, T wd, T b1, T one_m_b1, T b2, T one_m_b2, T step_size,          \
                         T bc2_sqrt, T eps)                                                                  \
    {                                                                                                        \
        OMP_FOR                                                                                              \
        for (int64_t i = 0; i < n; i++) {                                                                    \
            T pi = p[i], gi = g[i];                                                                          \
            if (decay != 1) pi = pi * decay;                                                                 \
            if (wd != 0) gi = gi + wd * pi;                                                                  \
            T mi = m[i] * b1 + one_m_b1 * gi;                                                                \
            T vi = v[i] * b2 + one_m_b2 * gi * gi;                                                           \
            m[i] = mi;                                                                                       \
            v[i] = vi;                                                                                       \
            if (vmax) {                                                                                      \
                if (!(vmax[i] >= vi)) vmax[i] = vi; /* torch.maximum: NaN wins */                            \
                vi = vmax[i];                                                                                \
            }                                                                                                \
            T den = SQRT(vi) / bc2_sqrt + eps;                                                               \
            p[i] = pi + (-step_size) * mi / den;                                                             \
        }                                                                                                    \
    }

/* g += wd p; s = a s + (1-a) g^2; [ga = a ga + (1-a) g]; den = sqrt(s [- ga^2]) + eps;
 * momentum: buf = m buf + g/den, p -= lr buf; else p -= lr g/den */
#define DEF_RMSPROP(T, SQRT)                                                                                 \
    static void rmsprop_##T(T *restrict p, const T *restrict g, T *restrict s, T *restrict ga,               \
                            T *restrict buf, int64_t n, T lr, T wd, T alpha, T one_m_alpha, T eps, T mom)    \
    {                                                                                                        \
        OMP_FOR                                                                                              \
        for (int64_t i = 0; i < n; i++) {                                                                    \
            T gi = g[i];                                                                                     \
            if (wd != 0) gi = gi + wd * p[i];                                                                \
            T si = s[i] * alpha + one_m_alpha * gi * gi;                                                     \
            s[i] = si;                                                                                       \
            T avg;                                                                                           \
            if (ga) {                                                                                        \
                T gai = ga[i] * alpha + one_m_alpha * gi;                                                    \
                ga[i] = gai;                                                                                 \
                avg = SQRT(si + (T)(-1) * gai * gai);                                                        \
            } else {                                                                                         \
                avg = SQRT(si);                                                                              \
            }                                                                                                \
            avg = avg + eps;                                                                                 \
            if (buf) {                                                                                       \
                T b = buf[i] * mom + gi / avg;                                                               \
                buf[i] = b;                                                                                  \
                p[i] = p[i] + (-lr) * b;                                                                     \
            } else {                                                                                         \
                p[i] = p[i] + (-lr) * gi / avg;                                                              \
            }                                                                                                \
        }                                                                                                    \
    }

DEF_SGD(float)
DEF_SGD(double)
DEF_ADAM(float, sqrtf)
DEF_ADAM(double, sqrt)
DEF_RMSPROP(float, sqrtf)
DEF_RMSPROP(double, sqrt)

/* ---- configuration ------------------------------------------------------------- */

cr_sgd_config cr_sgd_defaults(double lr) { return (cr_sgd_config){.lr = lr}; }

cr_adam_config cr_adam_defaults(double lr)
{
    return (cr_adam_config){.lr = lr, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
}

cr_adam_config cr_adamw_defaults(double lr)
{
    cr_adam_config c = cr_adam_defaults(lr);
    c.weight_decay = 0.01;
    return c;
}

cr_rmsprop_config cr_rmsprop_defaults(double lr)
{
    return (cr_rmsprop_config){.lr = lr, .alpha = 0.99, .eps = 1e-8};
}

/* x must be finite and >= 0 (and < 1 when below_one). */
static bool hp_ok(char *msg, size_t len, const char *what, double x, bool below_one)
{
    if (isfinite(x) && x >= 0 && (!below_one || x < 1)) return true;
    snprintf(msg, len, "%s = %g must be finite and in [0, %s)", what, x, below_one ? "1" : "inf");
    return false;
}

bool cr_optim_config_ok(cr_optim_kind kind, const cr_sgd_config *sgd, const cr_adam_config *adam,
                        const cr_rmsprop_config *rms, char *msg, size_t len)
{
    switch (kind) {
    case CR_OPTIM_SGD:
        if (!hp_ok(msg, len, "lr", sgd->lr, false) || !hp_ok(msg, len, "momentum", sgd->momentum, false) ||
            !hp_ok(msg, len, "weight_decay", sgd->weight_decay, false))
            return false;
        if (!isfinite(sgd->dampening)) {
            snprintf(msg, len, "dampening = %g must be finite", sgd->dampening);
            return false;
        }
        if (sgd->nesterov && (sgd->momentum <= 0 || sgd->dampening != 0)) {
            snprintf(msg, len,
                     "Nesterov momentum needs momentum > 0 and dampening 0 (momentum %g, dampening %g)",
                     sgd->momentum, sgd->dampening);
            return false;
        }
        return true;
    case CR_OPTIM_ADAM:
    case CR_OPTIM_ADAMW:
        return hp_ok(msg, len, "lr", adam->lr, false) && hp_ok(msg, len, "beta1", adam->beta1, true) &&
               hp_ok(msg, len, "beta2", adam->beta2, true) && hp_ok(msg, len, "eps", adam->eps, false) &&
               hp_ok(msg, len, "weight_decay", adam->weight_decay, false);
    case CR_OPTIM_RMSPROP:
        return hp_ok(msg, len, "lr", rms->lr, false) && hp_ok(msg, len, "alpha", rms->alpha, false) &&
               hp_ok(msg, len, "eps", rms->eps, false) &&
               hp_ok(msg, len, "weight_decay", rms->weight_decay, false) &&
               hp_ok(msg, len, "momentum", rms->momentum, false);
    }
    snprintf(msg, len, "unknown optimizer kind %d", (int)kind);
    return false;
}

static void check_config(const char *op, cr_optim_kind kind, const cr_sgd_config *sgd,
                         const cr_adam_config *adam, const cr_rmsprop_config *rms)
{
    char msg[160];
    if (!cr_optim_config_ok(kind, sgd, adam, rms, msg, sizeof msg)) cr_error("%s: %s", op, msg);
}

bool cr_optim_uses_slot(const cr_optim *o, int s)
{
    switch (o->kind) {
    case CR_OPTIM_SGD: return s == CR_SLOT_MOMENTUM_BUFFER && o->sgd.momentum != 0;
    case CR_OPTIM_ADAM:
    case CR_OPTIM_ADAMW:
        return s == CR_SLOT_EXP_AVG || s == CR_SLOT_EXP_AVG_SQ ||
               (s == CR_SLOT_MAX_EXP_AVG_SQ && o->adam.amsgrad);
    case CR_OPTIM_RMSPROP:
        return s == CR_SLOT_SQUARE_AVG || (s == CR_SLOT_MOMENTUM_BUFFER && o->rms.momentum > 0) ||
               (s == CR_SLOT_GRAD_AVG && o->rms.centered);
    }
    return false;
}

void cr_optim_alloc_slots(cr_optim *o)
{
    for (size_t i = 0; i < o->n; i++)
        for (int s = 0; s < CR_N_SLOTS; s++)
            if (cr_optim_uses_slot(o, s) && !o->slot[i * CR_N_SLOTS + s]) {
                const cr_tensor *v = o->value[i];
                o->slot[i * CR_N_SLOTS + s] = cr_tensor_init(v->dtype, v->ndim, v->shape);
            }
}

/* The common part of every *_init: snapshot the parameters, check them. */
static cr_optim *optim_new(const char *op, cr_optim_kind kind, cr_params *ps)
{
    if (!ps) cr_error("%s: params is NULL", op);
    cr_optim *o = cr_xcalloc(1, sizeof *o);
    o->kind = kind;
    o->ps = ps;
    o->n = ps->n;
    o->value = cr_xcalloc(o->n ? o->n : 1, sizeof *o->value);
    o->step = cr_xcalloc(o->n ? o->n : 1, sizeof *o->step);
    o->slot = cr_xcalloc((o->n ? o->n : 1) * CR_N_SLOTS, sizeof *o->slot);
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
    return o;
}

cr_optim *cr_sgd_init(cr_params *ps, cr_sgd_config cfg)
{
    check_config("cr_sgd_init", CR_OPTIM_SGD, &cfg, NULL, NULL);
    cr_optim *o = optim_new("cr_sgd_init", CR_OPTIM_SGD, ps);
    o->sgd = cfg;
    cr_optim_alloc_slots(o);
    return o;
}

cr_optim *cr_adam_init(cr_params *ps, cr_adam_config cfg)
{
    check_config("cr_adam_init", CR_OPTIM_ADAM, NULL, &cfg, NULL);
    cr_optim *o = optim_new("cr_adam_init", CR_OPTIM_ADAM, ps);
    o->adam = cfg;
    cr_optim_alloc_slots(o);
    return o;
}

cr_optim *cr_adamw_init(cr_params *ps, cr_adam_config cfg)
{
    check_config("cr_adamw_init", CR_OPTIM_ADAMW, NULL, &cfg, NULL);
    cr_optim *o = optim_new("cr_adamw_init", CR_OPTIM_ADAMW, ps);
    o->adam = cfg;
    cr_optim_alloc_slots(o);
    return o;
}

cr_optim *cr_rmsprop_init(cr_params *ps, cr_rmsprop_config cfg)
{
    check_config("cr_rmsprop_init", CR_OPTIM_RMSPROP, NULL, NULL, &cfg);
    cr_optim *o = optim_new("cr_rmsprop_init", CR_OPTIM_RMSPROP, ps);
    o->rms = cfg;
    cr_optim_alloc_slots(o);
    return o;
}

void cr_optim_free(cr_optim *o)
{
    if (!o) return;
    for (size_t i = 0; i < o->n * CR_N_SLOTS; i++) cr_tensor_free(o->slot[i]);
    free(o->slot);
    free(o->step);
    free(o->value);
    free(o);
}

/* ---- the step ------------------------------------------------------------------ */

/* The parameter set must be the one seen at init (same tensors, same order). */
void cr_optim_check_set(const cr_optim *o, const char *op)
{
    if (o->ps->n != o->n)
        cr_error("%s: the parameter set changed after the optimizer was created (%zu parameters, now %zu)",
                 op, o->n, o->ps->n);
    for (size_t i = 0; i < o->n; i++)
        if (o->ps->items[i].value != o->value[i])
            cr_error("%s: parameter %zu ('%s') is not the tensor the optimizer was created with", op, i,
                     o->ps->items[i].name);
}

static void *slot_data(const cr_optim *o, size_t i, int s)
{
    cr_tensor *t = o->slot[i * CR_N_SLOTS + s];
    return t ? t->data : NULL;
}

static void step_sgd(cr_optim *o, size_t i, const cr_tensor *g, int64_t n)
{
    const cr_sgd_config *c = &o->sgd;
    cr_tensor *p = o->value[i];
    bool first = o->step[i] == 1;
    if (p->dtype == CR_F64)
        sgd_double(p->data, g->data, slot_data(o, i, CR_SLOT_MOMENTUM_BUFFER), n, c->lr, c->weight_decay,
                   c->momentum, 1 - c->dampening, c->nesterov, first);
    else
        sgd_float(p->data, g->data, slot_data(o, i, CR_SLOT_MOMENTUM_BUFFER), n, (float)c->lr,
                  (float)c->weight_decay, (float)c->momentum, (float)(1 - c->dampening), c->nesterov, first);
}

static void step_adam(cr_optim *o, size_t i, const cr_tensor *g, int64_t n)
{
    const cr_adam_config *c = &o->adam;
    cr_tensor *p = o->value[i];
    double k = (double)o->step[i];
    double step_size = c->lr / (1 - pow(c->beta1, k));
    double bc2_sqrt = sqrt(1 - pow(c->beta2, k));
    bool w = o->kind == CR_OPTIM_ADAMW;
    double decay = w ? 1 - c->lr * c->weight_decay : 1, wd = w ? 0 : c->weight_decay;
    void *m = slot_data(o, i, CR_SLOT_EXP_AVG), *v = slot_data(o, i, CR_SLOT_EXP_AVG_SQ);
    void *vmax = slot_data(o, i, CR_SLOT_MAX_EXP_AVG_SQ);
    if (p->dtype == CR_F64)
        adam_double(p->data, g->data, m, v, vmax, n, decay, wd, c->beta1, 1 - c->beta1, c->beta2,
                    1 - c->beta2, step_size, bc2_sqrt, c->eps);
    else
        adam_float(p->data, g->data, m, v, vmax, n, (float)decay, (float)wd, (float)c->beta1,
                   (float)(1 - c->beta1), (float)c->beta2, (float)(1 - c->beta2), (float)step_size,
                   (float)bc2_sqrt, (float)c->eps);
}

static void step_rmsprop(cr_optim *o, size_t i, const cr_tensor *g, int64_t n)
{
    const cr_rmsprop_config *c = &o->rms;
    cr_tensor *p = o->value[i];
    void *s = slot_data(o, i, CR_SLOT_SQUARE_AVG), *ga = slot_data(o, i, CR_SLOT_GRAD_AVG);
    void *buf = slot_data(o, i, CR_SLOT_MOMENTUM_BUFFER);
    if (p->dtype == CR_F64)
        rmsprop_double(p->data, g->data, s, ga, buf, n, c->lr, c->weight_decay, c->alpha, 1 - c->alpha,
                       c->eps, c->momentum);
    else
        rmsprop_float(p->data, g->data, s, ga, buf, n, (float)c->lr, (float)c->weight_decay, (float)c->alpha,
                      (float)(1 - c->alpha), (float)c->eps, (float)c->momentum);
}

void cr_optim_step(cr_optim *o)
{
    if (!o) cr_error("cr_optim_step: optimizer is NULL");
    cr_optim_check_set(o, "cr_optim_step");
    for (size_t i = 0; i < o->n; i++) {
        cr_tensor *p = o->value[i], *g = p->grad;
        if (!g) continue; /* no gradient yet: skipped, state unchanged (PyTorch) */
        int64_t n = cr_numel(p);
        if (g->dtype != p->dtype || cr_numel(g) != n || !cr_is_contiguous(g)) {
            char s1[128], s2[128];
            cr_error("cr_optim_step: gradient of '%s' is %s %s%s, parameter is %s %s", o->ps->items[i].name,
                     cr_dtype_name(g->dtype), cr_shape_str(s1, sizeof s1, g->ndim, g->shape),
                     cr_is_contiguous(g) ? "" : " (not contiguous)", cr_dtype_name(p->dtype),
                     cr_shape_str(s2, sizeof s2, p->ndim, p->shape));
        }
        o->step[i]++;
        switch (o->kind) {
        case CR_OPTIM_SGD: step_sgd(o, i, g, n); break;
        case CR_OPTIM_ADAM:
        case CR_OPTIM_ADAMW: step_adam(o, i, g, n); break;
        case CR_OPTIM_RMSPROP: step_rmsprop(o, i, g, n); break;
        }
    }
    o->n_steps++;
}

void cr_optim_zero_grad(cr_optim *o)
{
    if (!o) cr_error("cr_optim_zero_grad: optimizer is NULL");
    cr_params_zero_grad(o->ps);
}

/* ---- accessors ------------------------------------------------------------------- */

void cr_optim_set_lr(cr_optim *o, double lr)
{
    if (!o) cr_error("cr_optim_set_lr: optimizer is NULL");
    if (!isfinite(lr) || lr < 0) cr_error("cr_optim_set_lr: lr = %g must be finite and >= 0", lr);
    switch (o->kind) {
    case CR_OPTIM_SGD: o->sgd.lr = lr; break;
    case CR_OPTIM_ADAM:
    case CR_OPTIM_ADAMW: o->adam.lr = lr; break;
    case CR_OPTIM_RMSPROP: o->rms.lr = lr; break;
    }
}

double cr_optim_get_lr(const cr_optim *o)
{
    if (!o) cr_error("cr_optim_get_lr: optimizer is NULL");
    switch (o->kind) {
    case CR_OPTIM_SGD: return o->sgd.lr;
    case CR_OPTIM_ADAM:
    case CR_OPTIM_ADAMW: return o->adam.lr;
    case CR_OPTIM_RMSPROP: return o->rms.lr;
    }
    return 0;
}

cr_optim_kind cr_optim_kind_of(const cr_optim *o) { return o->kind; }
const char *cr_optim_name(const cr_optim *o) { return kind_names[o->kind]; }
cr_params *cr_optim_params(const cr_optim *o) { return o->ps; }
int64_t cr_optim_steps(const cr_optim *o) { return o->n_steps; }
cr_sgd_config cr_optim_sgd_config(const cr_optim *o) { return o->sgd; }
cr_adam_config cr_optim_adam_config(const cr_optim *o) { return o->adam; }
cr_rmsprop_config cr_optim_rmsprop_config(const cr_optim *o) { return o->rms; }

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
    for (int s = 0; s < CR_N_SLOTS; s++)
        if (strcmp(cr_optim_slot_names[s], slot) == 0 && cr_optim_uses_slot(o, s))
            return o->slot[(size_t)i * CR_N_SLOTS + s];
    return NULL;
}

int64_t cr_optim_param_steps(const cr_optim *o, const char *param_name)
{
    long i = param_index(o, param_name);
    return i < 0 ? -1 : o->step[i];
}
