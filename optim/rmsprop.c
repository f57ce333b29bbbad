/* RMSprop with momentum, centering and weight decay (torch.optim.RMSprop,
 * PyTorch 1.13): its config, hyper-parameter table, state slots and update loop. */
#include <math.h>
#include <stddef.h>

#include "optim_internal.h"

/* g += wd p; s = a s + (1-a) g^2; [ga = a ga + (1-a) g]; den = sqrt(s [- ga^2]) + eps;
 * momentum: buf = m buf + g/den, p -= lr buf; else p -= lr g/den.
 * PyTorch's order of operations; iteration i touches element i only. One loop
 * per combination of the flags (weight decay, centered, momentum) with
 * constants for them, as in sgd.c and adam.c: a test inside the loop kept GCC
 * from vectorising it. sqrt is inline (optim/ builds with -fno-math-errno) and
 * ISO C mode contracts nothing into an FMA, so the vector loops give the
 * scalar loop's bits. */
#define RMSPROP_LOOP(T, SQRT, WD, CENT, MOM)                                                                 \
    CR_PAR_FOR(                                                                                              \
        n >= cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t i = 0; i < n; i++) {   \
            T gi = g[i];                                                                                     \
            if (WD) gi = gi + wd * p[i];                                                                     \
            T si = s[i] * alpha + one_m_alpha * gi * gi;                                                     \
            s[i] = si;                                                                                       \
            T avg;                                                                                           \
            if (CENT) {                                                                                      \
                T gai = ga[i] * alpha + one_m_alpha * gi;                                                    \
                ga[i] = gai;                                                                                 \
                avg = SQRT(si + (T)(-1) * gai * gai);                                                        \
            } else {                                                                                         \
                avg = SQRT(si);                                                                              \
            }                                                                                                \
            avg = avg + eps;                                                                                 \
            if (MOM) {                                                                                       \
                T b = buf[i] * mom + gi / avg;                                                               \
                buf[i] = b;                                                                                  \
                p[i] = p[i] + (-lr) * b;                                                                     \
            } else {                                                                                         \
                p[i] = p[i] + (-lr) * gi / avg;                                                              \
            }                                                                                                \
        })
#define RMSPROP_MODES(T, SQRT, WD)                                                                           \
    do {                                                                                                     \
        if (ga && buf)                                                                                       \
            RMSPROP_LOOP(T, SQRT, WD, 1, 1);                                                                 \
        else if (ga)                                                                                         \
            RMSPROP_LOOP(T, SQRT, WD, 1, 0);                                                                 \
        else if (buf)                                                                                        \
            RMSPROP_LOOP(T, SQRT, WD, 0, 1);                                                                 \
        else                                                                                                 \
            RMSPROP_LOOP(T, SQRT, WD, 0, 0);                                                                 \
    } while (0)
#define DEF_RMSPROP(T, SQRT)                                                                                 \
    static void rmsprop_##T(T *restrict p, const T *restrict g, T *restrict s, T *restrict ga,               \
                            T *restrict buf, int64_t n, T lr, T wd, T alpha, T one_m_alpha, T eps, T mom)    \
    {                                                                                                        \
        if (wd != 0)                                                                                         \
            RMSPROP_MODES(T, SQRT, 1);                                                                       \
        else                                                                                                 \
            RMSPROP_MODES(T, SQRT, 0);                                                                       \
    }
DEF_RMSPROP(float, sqrtf)
DEF_RMSPROP(double, sqrt)

enum { SLOT_SQUARE_AVG, SLOT_MOMENTUM_BUFFER, SLOT_GRAD_AVG };
static const char *const slots[] = {[SLOT_SQUARE_AVG] = "square_avg",
                                    [SLOT_MOMENTUM_BUFFER] = "momentum_buffer",
                                    [SLOT_GRAD_AVG] = "grad_avg"};

#define HP(f, lo, hi)                                                                                        \
    {                                                                                                        \
#f, offsetof(cr_rmsprop_config, f), false, lo, hi                                                    \
    }
static const cr_optim_hparam hparams[] = {
    HP(lr, 0, INFINITY),       HP(alpha, 0, INFINITY),
    HP(eps, 0, INFINITY),      HP(weight_decay, 0, INFINITY),
    HP(momentum, 0, INFINITY), {"centered", offsetof(cr_rmsprop_config, centered), true, 0, 0},
};

static bool uses_slot(const void *cfg, int s)
{
    const cr_rmsprop_config *c = cfg;
    return s == SLOT_SQUARE_AVG || (s == SLOT_MOMENTUM_BUFFER && c->momentum > 0) ||
           (s == SLOT_GRAD_AVG && c->centered);
}

static void update(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k)
{
    (void)k;
    const cr_rmsprop_config *c = cfg;
    int64_t n = cr_numel(p);
    void *s = slot[SLOT_SQUARE_AVG]->data, *ga = slot[SLOT_GRAD_AVG] ? slot[SLOT_GRAD_AVG]->data : NULL;
    void *buf = slot[SLOT_MOMENTUM_BUFFER] ? slot[SLOT_MOMENTUM_BUFFER]->data : NULL;
    if (p->dtype == CR_F64)
        rmsprop_double(p->data, g->data, s, ga, buf, n, c->lr, c->weight_decay, c->alpha, 1 - c->alpha,
                       c->eps, c->momentum);
    else
        rmsprop_float(p->data, g->data, s, ga, buf, n, (float)c->lr, (float)c->weight_decay, (float)c->alpha,
                      (float)(1 - c->alpha), (float)c->eps, (float)c->momentum);
}

const cr_optim_rule cr_rmsprop_rule = {
    .name = "rmsprop",
    .config_size = sizeof(cr_rmsprop_config),
    .hparams = hparams,
    .n_hparams = sizeof hparams / sizeof *hparams,
    .slots = slots,
    .n_slots = sizeof slots / sizeof *slots,
    .uses_slot = uses_slot,
    .update = update,
};

cr_rmsprop_config cr_rmsprop_defaults(double lr)
{
    return (cr_rmsprop_config){.lr = lr, .alpha = 0.99, .eps = 1e-8};
}

cr_optim *cr_rmsprop_init(cr_params *ps, cr_rmsprop_config cfg)
{
    return cr_optim_make("cr_rmsprop_init", ps, &cr_rmsprop_rule, &cfg);
}
