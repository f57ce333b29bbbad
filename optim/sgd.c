/* SGD with momentum, dampening, Nesterov momentum and weight decay
 * (torch.optim.SGD, PyTorch 1.13): its config, hyper-parameter table, state
 * slot and update loop. A template for adding an optimizer. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>

#include "optim_internal.h"

/* Each expression keeps PyTorch's order of operations (add_(x, alpha) is
 * self + alpha*x), scalars arrive rounded to the parameter's type, and
 * iteration i touches element i only, so any thread count gives the same bits.
 * d = g + wd p; buf = first ? d : m buf + (1-damp) d; d = nesterov ? d + m buf : buf; p -= lr d
 * One loop per combination of the flags, each with constants for them: a test
 * inside the loop (and the conditional store of buf) kept GCC from
 * vectorising it, and plain SGD is a pass over every parameter per step.
 * ISO C mode (-std=c11) contracts no a*b+c into an FMA, so the vector loops
 * round as the scalar one did. */
#define SGD_LOOP(T, WD, BUF, NEST, FIRST)                                                                    \
    CR_PAR_FOR(                                                                                              \
        n >= cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t i = 0; i < n; i++) {   \
            T d = g[i];                                                                                      \
            if (WD) d = d + wd * p[i];                                                                       \
            if (BUF) {                                                                                       \
                T b = (FIRST) ? d : buf[i] * mom + one_m_damp * d;                                           \
                buf[i] = b;                                                                                  \
                d = (NEST) ? d + mom * b : b;                                                                \
            }                                                                                                \
            p[i] = p[i] + (-lr) * d;                                                                         \
        })
#define SGD_MODES(T, WD)                                                                                     \
    do {                                                                                                     \
        if (!buf)                                                                                            \
            SGD_LOOP(T, WD, 0, 0, 0);                                                                        \
        else if (nesterov)                                                                                   \
            if (first)                                                                                       \
                SGD_LOOP(T, WD, 1, 1, 1);                                                                    \
            else                                                                                             \
                SGD_LOOP(T, WD, 1, 1, 0);                                                                    \
        else if (first)                                                                                      \
            SGD_LOOP(T, WD, 1, 0, 1);                                                                        \
        else                                                                                                 \
            SGD_LOOP(T, WD, 1, 0, 0);                                                                        \
    } while (0)
#define DEF_SGD(T)                                                                                           \
    static void sgd_##T(T *restrict p, const T *restrict g, T *restrict buf, int64_t n, T lr, T wd, T mom,   \
                        T one_m_damp, bool nesterov, bool first)                                             \
    {                                                                                                        \
        if (wd != 0)                                                                                         \
            SGD_MODES(T, 1);                                                                                 \
        else                                                                                                 \
            SGD_MODES(T, 0);                                                                                 \
    }
DEF_SGD(float)
DEF_SGD(double)

enum { SLOT_MOMENTUM_BUFFER };
static const char *const slots[] = {[SLOT_MOMENTUM_BUFFER] = "momentum_buffer"};

#define HP(f, lo, hi)                                                                                        \
    {                                                                                                        \
#f, offsetof(cr_sgd_config, f), false, lo, hi                                                        \
    }
static const cr_optim_hparam hparams[] = {
    HP(lr, 0, INFINITY),
    HP(momentum, 0, INFINITY),
    HP(dampening, -INFINITY, INFINITY),
    HP(weight_decay, 0, INFINITY),
    {"nesterov", offsetof(cr_sgd_config, nesterov), true, 0, 0},
};

static bool uses_slot(const void *cfg, int s)
{
    return s == SLOT_MOMENTUM_BUFFER && ((const cr_sgd_config *)cfg)->momentum != 0;
}

static bool validate(const void *cfg, char *msg, size_t len)
{
    const cr_sgd_config *c = cfg;
    if (c->nesterov && (c->momentum <= 0 || c->dampening != 0)) {
        snprintf(msg, len, "Nesterov momentum needs momentum > 0 and dampening 0 (momentum %g, dampening %g)",
                 c->momentum, c->dampening);
        return false;
    }
    return true;
}

static void update(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k)
{
    const cr_sgd_config *c = cfg;
    int64_t n = cr_numel(p);
    void *buf = slot[SLOT_MOMENTUM_BUFFER] ? slot[SLOT_MOMENTUM_BUFFER]->data : NULL;
    int64_t n_rows;
    const int32_t *rows;
    /* Plain SGD moves a row only by its gradient: where the gradient is known
     * to be zero outside a few rows (an embedding table after its lookups),
     * update those (p + (-lr) * +0 is p for every p, so the bits are the
     * same). Momentum and weight decay move every row. */
    if (!buf && c->weight_decay == 0 && isfinite(c->lr) && (rows = cr_grad_rows(p, &n_rows))) {
        int64_t w = n / p->shape[0];
        for (int64_t k = 0; k < n_rows; k++) {
            int64_t o = (int64_t)rows[k] * w;
            if (p->dtype == CR_F64)
                sgd_double((double *)p->data + o, (const double *)g->data + o, NULL, w, c->lr, 0, 0, 1, false,
                           false);
            else
                sgd_float((float *)p->data + o, (const float *)g->data + o, NULL, w, (float)c->lr, 0, 0, 1,
                          false, false);
        }
        return;
    }
    if (p->dtype == CR_F64)
        sgd_double(p->data, g->data, buf, n, c->lr, c->weight_decay, c->momentum, 1 - c->dampening,
                   c->nesterov, k == 1);
    else
        sgd_float(p->data, g->data, buf, n, (float)c->lr, (float)c->weight_decay, (float)c->momentum,
                  (float)(1 - c->dampening), c->nesterov, k == 1);
}

const cr_optim_rule cr_sgd_rule = {
    .name = "sgd",
    .config_size = sizeof(cr_sgd_config),
    .hparams = hparams,
    .n_hparams = sizeof hparams / sizeof *hparams,
    .slots = slots,
    .n_slots = sizeof slots / sizeof *slots,
    .uses_slot = uses_slot,
    .validate = validate,
    .update = update,
};

cr_sgd_config cr_sgd_defaults(double lr) { return (cr_sgd_config){.lr = lr}; }

cr_optim *cr_sgd_init(cr_params *ps, cr_sgd_config cfg)
{
    return cr_optim_make("cr_sgd_init", ps, &cr_sgd_rule, &cfg);
}
