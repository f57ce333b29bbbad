/* Test cases of the unary ops (tensor/unary_ops.h), one line each, shared by
 * tests/test_ops.c (forward values against libm in double, f64 and f32) and
 * tests/test_gradcheck.c (float64 finite differences, plain and on a view;
 * the reads column; the every-op expression). A new unary op needs one line
 * here; both suites fail for an op in the table that no case exercises.
 *
 * UNARY_CASE(id, call, reference, lo, hi, kinks)
 *   id         unique name of the case
 *   call       the op applied to the tensor x
 *   reference  the same function of the double v, from libm
 *   lo, hi     inputs are drawn uniform in [lo, hi)
 *   kinks      points where the op has no derivative (inputs are kept 0.05
 *              away): NO_KINKS, KINKS1(k) or KINKS2(k1, k2)
 */
#ifndef CAROUSEL_TEST_UNARY_CASES_H
#define CAROUSEL_TEST_UNARY_CASES_H

#include <math.h>

#include "carousel/autograd.h"

/* clang-format off */
#define UNARY_CASES(U)                                                                                   \
    U(neg,         cr_neg(x),                -v,                                  -2,   2, NO_KINKS)      \
    U(exp,         cr_exp(x),                exp(v),                              -2,   2, NO_KINKS)      \
    U(ln,          cr_ln(x),                 log(v),                             0.5,   3, NO_KINKS)      \
    U(sqrt,        cr_sqrt(x),               sqrt(v),                            0.5,   3, NO_KINKS)      \
    U(abs,         cr_abs(x),                fabs(v),                             -2,   2, KINKS1(0))     \
    U(square,      cr_square(x),             v * v,                               -2,   2, NO_KINKS)      \
    U(reciprocal,  cr_reciprocal(x),         1 / v,                              0.5,   2, NO_KINKS)      \
    U(reciprocal_negative, cr_reciprocal(x), 1 / v,                               -2, -0.5, NO_KINKS)     \
    U(tanh,        cr_tanh(x),               tanh(v),                             -2,   2, NO_KINKS)      \
    U(sigmoid,     cr_sigmoid(x),            1 / (1 + exp(-v)),                   -3,   3, NO_KINKS)      \
    U(relu,        cr_relu(x),               v > 0 ? v : 0,                       -2,   2, KINKS1(0))     \
    U(softplus,    cr_softplus(x),           log1p(exp(v)),                       -3,   3, NO_KINKS)      \
    U(hardtanh,    cr_hardtanh(x),           fmax(-1, fmin(1, v)),                -2,   2, KINKS2(-1, 1)) \
    U(leaky_relu,  cr_leaky_relu(x, 0.1),    v > 0 ? v : 0.1 * v,                 -2,   2, KINKS1(0))     \
    U(elu,         cr_elu(x, 0.7),           v > 0 ? v : 0.7 * expm1(v),          -2,   2, KINKS1(0))     \
    U(pow_2_5,     cr_pow(x, 2.5),           pow(v, 2.5),                        0.5,   2, NO_KINKS)      \
    U(pow_m1_5,    cr_pow(x, -1.5),          pow(v, -1.5),                       0.5,   2, NO_KINKS)      \
    U(pow_3,       cr_pow(x, 3),             v * v * v,                           -2,   2, NO_KINKS)      \
    U(pow_0,       cr_pow(x, 0),             1,                                   -2,   2, NO_KINKS)      \
    U(add_scalar,  cr_add_scalar(x, 1.5),    v + 1.5,                             -2,   2, NO_KINKS)      \
    U(mul_scalar,  cr_mul_scalar(x, -0.7),   -0.7 * v,                            -2,   2, NO_KINKS)      \
    U(rsub_scalar, cr_rsub_scalar(x, 1),     1 - v,                               -2,   2, NO_KINKS)      \
    U(clamp,       cr_clamp(x, -0.5, 0.8),   fmax(-0.5, fmin(0.8, v)),            -2,   2, KINKS2(-0.5, 0.8))
/* clang-format on */

#define NO_KINKS {0, 0}, 0
#define KINKS1(a) {a, 0}, 1
#define KINKS2(a, b) {a, b}, 2

typedef struct unary_case {
    const char *id;
    cr_tensor *(*apply)(cr_tensor *x);
    double (*ref)(double v);
    double lo, hi;
    double kinks[2];
    int n_kinks;
} unary_case;

#define UNARY_CASE_FNS_(id, call, reference, lo, hi, kinks)                                                  \
    static cr_tensor *unary_apply_##id(cr_tensor *x) { return call; }                                        \
    static double unary_ref_##id(double v)                                                                   \
    {                                                                                                        \
        (void)v;                                                                                             \
        return reference;                                                                                    \
    }
UNARY_CASES(UNARY_CASE_FNS_)
#undef UNARY_CASE_FNS_

#define UNARY_CASE_ENTRY_(id, call, reference, lo, hi, kinks)                                                \
    {#id, unary_apply_##id, unary_ref_##id, lo, hi, kinks},
static const unary_case unary_cases[] = {UNARY_CASES(UNARY_CASE_ENTRY_)};
#undef UNARY_CASE_ENTRY_
#define N_UNARY_CASES (sizeof unary_cases / sizeof unary_cases[0])

/* Move values closer than `gap` to a kink of case c so that no finite
 * difference straddles one. */
static inline void unary_case_avoid_kinks(const unary_case *c, cr_tensor *t, double gap)
{
    for (int64_t i = 0; i < cr_numel(t); i++) {
        double v = cr_get_flat(t, i);
        for (int k = 0; k < c->n_kinks; k++)
            if (fabs(v - c->kinks[k]) < gap) v = c->kinks[k] + (v < c->kinks[k] ? -gap : gap);
        cr_set_flat(t, i, v);
    }
}

/* The op a case exercises: the last node it records (x must require a gradient). */
static inline const cr_op *unary_case_op(const unary_case *c, cr_tensor *x)
{
    cr_tensor *y = c->apply(x);
    return y->node ? y->node->op : NULL;
}

#endif
