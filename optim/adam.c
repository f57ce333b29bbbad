/* Adam and AdamW (torch.optim.Adam / AdamW, PyTorch 1.13), with amsgrad:
 * one config, one hyper-parameter table, three state slots and one update
 * loop; AdamW differs only in decaying the weights before the update. */
#include <math.h>
#include <stddef.h>

#include "optim_internal.h"

/* AdamW: p *= decay first. g += wd p (Adam); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * den = sqrt(v or vmax) / sqrt(1-b2^k) + eps; p -= step_size m / den.
 * PyTorch's order of operations (addcmul_(a, b, value) is self + value*a*b);
 * iteration i touches element i only. */
/* One loop per combination of the flags (decay, weight decay, amsgrad), each
 * with constants for them, so GCC vectorises it; sqrt and / are correctly
 * rounded in vector form too, and optim/ builds with -fno-math-errno so sqrt
 * needs no libm call. */
#define ADAM_LOOP(T, SQRT, DECAY, WD, AMS)                                                                   \
    CR_PAR_FOR(                                                                                              \
        n >= cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t i = 0; i < n; i++) {   \
            T pi = p[i], gi = g[i];                                                                          \
            if (DECAY) pi = pi * decay;                                                                      \
            if (WD) gi = gi + wd * pi;                                                                       \
            T mi = m[i] * b1 + one_m_b1 * gi;                                                                \
            T vi = v[i] * b2 + one_m_b2 * gi * gi;                                                           \
            m[i] = mi;                                                                                       \
            v[i] = vi;                                                                                       \
            if (AMS) {                                                                                       \
                T vm = vmax[i];                                                                              \
                vm = vm >= vi ? vm : vi; /* torch.maximum: NaN wins */                                       \
                vmax[i] = vm;                                                                                \
                vi = vm;                                                                                     \
            }                                                                                                \
            T den = SQRT(vi) / bc2_sqrt + eps;                                                               \
            p[i] = pi + (-step_size) * mi / den;                                                             \
        })
#define ADAM_AMS(T, SQRT, DECAY, WD)                                                                         \
    do {                                                                                                     \
        if (vmax)                                                                                            \
            ADAM_LOOP(T, SQRT, DECAY, WD, 1);                                                                \
        else                                                                                                 \
            ADAM_LOOP(T, SQRT, DECAY, WD, 0);                                                                \
    } while (0)
#define DEF_ADAM(T, SQRT)                                                                                    \
    static void adam_##T(T *restrict p, const T *restrict g, T *restrict m, T *restrict v, T *restrict vmax, \
                         int64_t n, T decay, T wd, T b1, T one_m_b1, T b2, T one_m_b2, T step_size,          \
                         T bc2_sqrt, T eps)                                                                  \
    {                                                                                                        \
        if (decay != 1) {                                                                                    \
            if (wd != 0)                                                                                     \
                ADAM_AMS(T, SQRT, 1, 1);                                                                     \
            else                                                                                             \
                ADAM_AMS(T, SQRT, 1, 0);                                                                     \
        } else if (wd != 0) {                                                                                \
            ADAM_AMS(T, SQRT, 0, 1);                                                                         \
        } else {                                                                                             \
            ADAM_AMS(T, SQRT, 0, 0);                                                                         \
        }                                                                                                    \
    }
DEF_ADAM(float, sqrtf)
DEF_ADAM(double, sqrt)

enum { SLOT_EXP_AVG, SLOT_EXP_AVG_SQ, SLOT_MAX_EXP_AVG_SQ };
static const char *const slots[] = {
    [SLOT_EXP_AVG] = "exp_avg", [SLOT_EXP_AVG_SQ] = "exp_avg_sq", [SLOT_MAX_EXP_AVG_SQ] = "max_exp_avg_sq"};

#define HP(f, lo, hi)                                                                                        \
    {                                                                                                        \
#f, offsetof(cr_adam_config, f), false, lo, hi                                                       \
    }
static const cr_optim_hparam hparams[] = {
    HP(lr, 0, INFINITY),
    HP(beta1, 0, 1),
    HP(beta2, 0, 1),
    HP(eps, 0, INFINITY),
    HP(weight_decay, 0, INFINITY),
    {"amsgrad", offsetof(cr_adam_config, amsgrad), true, 0, 0},
};

static bool uses_slot(const void *cfg, int s)
{
    return s != SLOT_MAX_EXP_AVG_SQ || ((const cr_adam_config *)cfg)->amsgrad;
}

static void update_with(const cr_adam_config *c, bool decoupled, cr_tensor *p, const cr_tensor *g,
                        cr_tensor *const *slot, int64_t k)
{
    int64_t n = cr_numel(p);
    double step_size = c->lr / (1 - pow(c->beta1, (double)k));
    double bc2_sqrt = sqrt(1 - pow(c->beta2, (double)k));
    double decay = decoupled ? 1 - c->lr * c->weight_decay : 1, wd = decoupled ? 0 : c->weight_decay;
    void *m = slot[SLOT_EXP_AVG]->data, *v = slot[SLOT_EXP_AVG_SQ]->data;
    void *vmax = slot[SLOT_MAX_EXP_AVG_SQ] ? slot[SLOT_MAX_EXP_AVG_SQ]->data : NULL;
    if (p->dtype == CR_F64)
        adam_double(p->data, g->data, m, v, vmax, n, decay, wd, c->beta1, 1 - c->beta1, c->beta2,
                    1 - c->beta2, step_size, bc2_sqrt, c->eps);
    else
        adam_float(p->data, g->data, m, v, vmax, n, (float)decay, (float)wd, (float)c->beta1,
                   (float)(1 - c->beta1), (float)c->beta2, (float)(1 - c->beta2), (float)step_size,
                   (float)bc2_sqrt, (float)c->eps);
}

static void update_adam(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k)
{
    update_with(cfg, false, p, g, slot, k);
}

static void update_adamw(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k)
{
    update_with(cfg, true, p, g, slot, k);
}

const cr_optim_rule cr_adam_rule = {
    .name = "adam",
    .config_size = sizeof(cr_adam_config),
    .hparams = hparams,
    .n_hparams = sizeof hparams / sizeof *hparams,
    .slots = slots,
    .n_slots = sizeof slots / sizeof *slots,
    .uses_slot = uses_slot,
    .update = update_adam,
};

const cr_optim_rule cr_adamw_rule = {
    .name = "adamw",
    .config_size = sizeof(cr_adam_config),
    .hparams = hparams,
    .n_hparams = sizeof hparams / sizeof *hparams,
    .slots = slots,
    .n_slots = sizeof slots / sizeof *slots,
    .uses_slot = uses_slot,
    .update = update_adamw,
};

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

cr_optim *cr_adam_init(cr_params *ps, cr_adam_config cfg)
{
    return cr_optim_make("cr_adam_init", ps, &cr_adam_rule, &cfg);
}

cr_optim *cr_adamw_init(cr_params *ps, cr_adam_config cfg)
{
    return cr_optim_make("cr_adamw_init", ps, &cr_adamw_rule, &cfg);
}
