/*
 * Finite-difference checks (float64, cr_gradcheck) of the backward of every op
 * in the op table, for plain, broadcasting and view-of-view inputs; a table
 * maps op names to checks (the unary ops: the cases of tests/unary_cases.h)
 * and a test fails when an op has none.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "carousel/autograd.h"
#include "expect_error.h"
#include "unary_cases.h"

#define EPS 1e-6     /* central-difference step */
#define MAX_REL 1e-6 /* largest relative error accepted */

/* ---- persistent inputs, freed after each test ------------------------------- */

static cr_tensor *owned[64];
static int n_owned;

static void teardown(void)
{
    for (int i = 0; i < n_owned; i++) cr_tensor_free(owned[i]);
    n_owned = 0;
}

TestSuite(gradcheck, .fini = teardown);

static cr_tensor *keep(cr_tensor *t)
{
    cr_assert_lt(n_owned, 64);
    owned[n_owned++] = t;
    return t;
}

/* A persistent f64 input with uniform values in [lo, hi) that requires a gradient. */
static cr_tensor *input(int ndim, const int64_t *shape, double lo, double hi)
{
    static uint64_t seed = 1;
    cr_tensor *t = keep(cr_tensor_init(CR_F64, ndim, shape));
    cr_rng r = cr_rng_seed(seed++);
    cr_fill_uniform(t, &r, lo, hi);
    cr_requires_grad(t, true);
    return t;
}

static cr_tensor *input_values(int ndim, const int64_t *shape, const double *v)
{
    cr_tensor *t = keep(cr_tensor_init(CR_F64, ndim, shape));
    memcpy(t->data, v, (size_t)cr_numel(t) * sizeof(double));
    cr_requires_grad(t, true);
    return t;
}

static double eps = EPS;

static void run_check(const char *what, cr_gradcheck_fn f, void *ctx, int n, cr_tensor *const *in)
{
    cr_gradcheck_report rep;
    double err = cr_gradcheck(f, ctx, n, in, eps, &rep);
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += cr_numel(in[i]);
    cr_assert_eq(rep.n_checked, total, "%s: checked %lld of %lld elements", what, (long long)rep.n_checked,
                 (long long)total);
    cr_assert(err < MAX_REL,
              "%s: relative error %.3g at input %d element %lld (analytic %.10g, numeric %.10g)", what, err,
              rep.worst_input, (long long)rep.worst_index, rep.analytic, rep.numeric);
}

#define CHECK1(what, f, ctx, a) run_check(what, f, ctx, 1, (cr_tensor *[]){a})
#define CHECK2(what, f, ctx, a, b) run_check(what, f, ctx, 2, (cr_tensor *[]){a, b})
#define CHECK3_(what, f, ctx, a, b, c) run_check(what, f, ctx, 3, (cr_tensor *[]){a, b, c})

/* ---- arithmetic (broadcasting) ------------------------------------------------- */

typedef cr_tensor *(*binary_op)(cr_tensor *, cr_tensor *);
static cr_tensor *f_binary(cr_tensor *const *in, void *ctx) { return ((binary_op *)ctx)[0](in[0], in[1]); }
/* the same op on views: a transposed and narrowed, b selected from a permute */
static cr_tensor *f_binary_views(cr_tensor *const *in, void *ctx)
{
    cr_tensor *a = cr_narrow(cr_transpose(in[0], 0, 1), 0, 1, 3);        /* [5,4] -> [4,5] -> [3,5] */
    cr_tensor *b = cr_select(cr_permute(in[1], (int[]){2, 0, 1}), 1, 1); /* [2,5,3] -> [3,2,5] -> [3,5] */
    return ((binary_op *)ctx)[0](a, b);
}

/* Broadcasting pairs: [2,3]+[3], [2,1]+[1,3], [2,3]+[], [3,1,2]+[4,1], same shape, and views. */
static void check_binary(const char *name, binary_op op, double lo_b, double hi_b)
{
    char what[64];
    int64_t shapes[][2][3] = {{{2, 3, 0}, {3, 0, 0}}, {{2, 1, 0}, {1, 3, 0}}, {{2, 3, 0}, {0, 0, 0}},
                              {{3, 1, 2}, {4, 1, 0}}, {{2, 3, 0}, {2, 3, 0}}, {{3, 0, 0}, {2, 3, 0}}};
    int nd[][2] = {{2, 1}, {2, 2}, {2, 0}, {3, 2}, {2, 2}, {1, 2}};
    for (size_t c = 0; c < sizeof nd / sizeof nd[0]; c++) {
        cr_tensor *a = input(nd[c][0], shapes[c][0], -2, 2);
        cr_tensor *b = input(nd[c][1], shapes[c][1], lo_b, hi_b);
        snprintf(what, sizeof what, "%s case %zu", name, c);
        CHECK2(what, f_binary, &op, a, b);
    }
    snprintf(what, sizeof what, "%s of views", name);
    CHECK2(what, f_binary_views, &op, input(CR_SHAPE(5, 4), -2, 2), input(CR_SHAPE(2, 5, 3), lo_b, hi_b));
}

static void check_add(void) { check_binary("add", cr_add, -2, 2); }
static void check_sub(void) { check_binary("sub", cr_sub, -2, 2); }
static void check_mul(void) { check_binary("mul", cr_mul, -2, 2); }
static void check_div(void) { check_binary("div", cr_div, 0.5, 2); }

/* max/min: b is a + an offset of at least 0.2 in size, so no pair is near a tie */
static void check_extremum(const char *name, binary_op op)
{
    char what[64];
    cr_tensor *a = input_values(CR_SHAPE(2, 3), (double[]){0.1, -1.2, 0.7, 1.5, -0.4, 0.0});
    cr_tensor *b = input_values(CR_SHAPE(3), (double[]){0.4, -0.9, 0.2}); /* vs rows: all gaps >= 0.2 */
    snprintf(what, sizeof what, "%s broadcast", name);
    CHECK2(what, f_binary, &op, a, b);
    cr_tensor *c = input_values(CR_SHAPE(2, 3), (double[]){0.5, -1.5, 1.0, 1.2, 0.3, -0.5});
    snprintf(what, sizeof what, "%s same shape", name);
    CHECK2(what, f_binary, &op, a, c);
    cr_tensor *s = input_values(0, NULL, (double[]){0.35});
    snprintf(what, sizeof what, "%s scalar", name);
    CHECK2(what, f_binary, &op, a, s);
}
static void check_maximum(void) { check_extremum("maximum", cr_maximum); }
static void check_minimum(void) { check_extremum("minimum", cr_minimum); }

/* ---- unary functions: one check per case of tests/unary_cases.h --------------------- */

static cr_tensor *f_unary(cr_tensor *const *in, void *ctx) { return ((const unary_case *)ctx)->apply(in[0]); }
/* on a strided view: transpose then narrow */
static cr_tensor *f_unary_view(cr_tensor *const *in, void *ctx)
{
    return ((const unary_case *)ctx)->apply(cr_narrow(cr_transpose(in[0], 0, 1), 1, 1, 2));
}

/* x uniform in the case's [lo, hi), kept 0.05 away from its kinks; checked
 * plain and on a view */
static void check_unary_case(const unary_case *c)
{
    char what[96];
    cr_tensor *x = input(CR_SHAPE(3, 4), c->lo, c->hi), *v = input(CR_SHAPE(4, 3), c->lo, c->hi);
    unary_case_avoid_kinks(c, x, 0.05);
    unary_case_avoid_kinks(c, v, 0.05);
    snprintf(what, sizeof what, "%s", c->id);
    CHECK1(what, f_unary, (void *)c, x);
    snprintf(what, sizeof what, "%s on a view", c->id);
    CHECK1(what, f_unary_view, (void *)c, v);
}

Test(gradcheck, unary_ops)
{
    for (size_t i = 0; i < N_UNARY_CASES; i++) {
        check_unary_case(&unary_cases[i]);
        teardown();
    }
}

/* The reads column of tensor/unary_ops.h must be exact: backward's version
 * check covers only what it names. So: changing the values of a tensor the op
 * says its backward does not read leaves the gradient alone, and changing one
 * it says it reads changes it. (Writes through ->data are not versioned, which
 * is what lets this test change them under the tape.) */
static void gradient_after_writing(const unary_case *c, cr_tensor *x, bool write_x, bool write_y, double *g)
{
    cr_graph *gr = cr_graph_init();
    cr_graph_use(gr);
    cr_zero_grad(x);
    double saved[12];
    for (int64_t i = 0; i < 12; i++) saved[i] = cr_get_flat(x, i);
    cr_tensor *y = c->apply(x);
    cr_tensor *gy = cr_full(CR_F64, CR_SHAPE(3, 4), 1.0);
    for (int64_t i = 0; i < 12; i++) { /* v -> 1.7 - 3v: moves across 0, +-1 and the clamp bounds */
        if (write_x) ((double *)x->data)[i] = 1.7 - 3 * saved[i];
        if (write_y) ((double *)y->data)[i] = 1.7 - 3 * ((double *)y->data)[i];
        cr_set_flat(gy, i, 0.5 + 0.1 * (double)i);
    }
    cr_backward_with(y, gy);
    for (int64_t i = 0; i < 12; i++) g[i] = x->grad ? cr_get_flat(x->grad, i) : 0;
    memcpy(x->data, saved, sizeof saved);
    cr_graph_use(NULL);
    cr_graph_free(gr);
}

static bool same_values(const double *a, const double *b, int n)
{
    for (int i = 0; i < n; i++)
        if (!(a[i] == b[i])) return false; /* NaN differs */
    return true;
}

Test(gradcheck, unary_reads_column_is_exact)
{
    /* per op: whether some case's gradient changed with x, with y */
    const cr_op *ops[N_UNARY_CASES];
    bool moved_x[N_UNARY_CASES] = {false}, moved_y[N_UNARY_CASES] = {false};
    size_t n_ops = 0;
    for (size_t i = 0; i < N_UNARY_CASES; i++) {
        const unary_case *c = &unary_cases[i];
        cr_tensor *x = input(CR_SHAPE(3, 4), c->lo, c->hi);
        unary_case_avoid_kinks(c, x, 0.05);
        cr_graph *probe = cr_graph_init();
        cr_graph_use(probe);
        const cr_op *op = unary_case_op(c, x);
        cr_graph_use(NULL);
        cr_graph_free(probe);
        cr_assert_not_null(op);
        size_t k = 0;
        while (k < n_ops && ops[k] != op) k++;
        if (k == n_ops) ops[n_ops++] = op;
        bool reads_x = op->saves & CR_SAVES_IN(0), reads_y = op->saves & CR_SAVES_OUT;
        double g[12], gx[12], gyw[12];
        gradient_after_writing(c, x, false, false, g);
        gradient_after_writing(c, x, true, false, gx);
        gradient_after_writing(c, x, false, true, gyw);
        bool dx = !same_values(g, gx, 12), dy = !same_values(g, gyw, 12);
        /* the direction that matters: what the line leaves out is never read */
        cr_assert(reads_x || !dx, "%s: backward reads x, but its line in unary_ops.h says it does not",
                  c->id);
        cr_assert(reads_y || !dy, "%s: backward reads y, but its line in unary_ops.h says it does not",
                  c->id);
        moved_x[k] |= dx;
        moved_y[k] |= dy;
        teardown();
    }
    /* and what it names is read in some case (cr_pow(x, 0) alone reads nothing) */
    for (size_t k = 0; k < n_ops; k++) {
        cr_assert(!(ops[k]->saves & CR_SAVES_IN(0)) || moved_x[k],
                  "%s: its line says backward reads x; it does not", ops[k]->name);
        cr_assert(!(ops[k]->saves & CR_SAVES_OUT) || moved_y[k],
                  "%s: its line says backward reads y; it does not", ops[k]->name);
    }
}

/* ---- reductions and normalisers ----------------------------------------------------- */

typedef struct {
    int dim;
    bool keepdim;
    int view; /* 0 plain, 1 transposed, 2 expanded, 3 reshaped to 3-D */
} red_ctx;

static cr_tensor *red_input(cr_tensor *x, const red_ctx *c)
{
    if (c->view == 1) return cr_transpose(x, 0, -1);
    if (c->view == 2)
        return cr_expand(cr_narrow(x, 0, 1, 1), CR_SHAPE(2, 3, x->shape[1])); /* [1,K] -> [2,3,K] */
    if (c->view == 3) return cr_reshape(x, CR_SHAPE(2, 3, 2));                /* [3,4] -> [2,3,2] */
    return x;
}

static cr_tensor *f_sum(cr_tensor *const *in, void *ctx) { return cr_sum(red_input(in[0], ctx)); }
static cr_tensor *f_mean(cr_tensor *const *in, void *ctx) { return cr_mean(red_input(in[0], ctx)); }
static cr_tensor *f_sum_dim(cr_tensor *const *in, void *ctx)
{
    const red_ctx *c = ctx;
    return cr_sum_dim(red_input(in[0], c), c->dim, c->keepdim);
}
static cr_tensor *f_mean_dim(cr_tensor *const *in, void *ctx)
{
    const red_ctx *c = ctx;
    return cr_mean_dim(red_input(in[0], c), c->dim, c->keepdim);
}
static cr_tensor *f_max_dim(cr_tensor *const *in, void *ctx)
{
    const red_ctx *c = ctx;
    return cr_max_dim(red_input(in[0], c), c->dim, c->keepdim);
}
static cr_tensor *f_softmax(cr_tensor *const *in, void *ctx)
{
    const red_ctx *c = ctx;
    return cr_softmax(red_input(in[0], c), c->dim);
}
static cr_tensor *f_log_softmax(cr_tensor *const *in, void *ctx)
{
    const red_ctx *c = ctx;
    return cr_log_softmax(red_input(in[0], c), c->dim);
}

static void check_reduction(const char *name, cr_gradcheck_fn f, bool distinct)
{
    char what[96];
    red_ctx cases[] = {{0, false, 0}, {1, true, 0},  {-1, false, 1}, {0, true, 1}, {1, false, 2},
                       {2, true, 2},  {1, false, 3}, {1, true, 3},   {0, false, 3}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_tensor *x = input(CR_SHAPE(3, 4), -2, 2);
        if (distinct) /* max: well separated values, so no near-tie decides the argmax */
            for (int64_t j = 0; j < 12; j++) cr_set_flat(x, j, (double)((j * 5) % 12) * 0.3 - 1.5);
        snprintf(what, sizeof what, "%s dim %d keepdim %d view %d", name, cases[i].dim, cases[i].keepdim,
                 cases[i].view);
        CHECK1(what, f, &cases[i], x);
    }
}

static void check_sum(void)
{
    red_ctx plain = {0, false, 0}, tr = {0, false, 1}, ex = {0, false, 2};
    CHECK1("sum", f_sum, &plain, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("sum of a transpose", f_sum, &tr, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("sum of an expand", f_sum, &ex, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("sum of a scalar", f_sum, &plain, input(0, NULL, -2, 2));
}
static void check_mean(void)
{
    red_ctx plain = {0, false, 0}, tr = {0, false, 1}, ex = {0, false, 2};
    CHECK1("mean", f_mean, &plain, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("mean of a transpose", f_mean, &tr, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("mean of an expand", f_mean, &ex, input(CR_SHAPE(3, 4), -2, 2));
}
static void check_sum_dim(void) { check_reduction("sum_dim", f_sum_dim, false); }
static void check_mean_dim(void) { check_reduction("mean_dim", f_mean_dim, false); }
static void check_max_dim(void) { check_reduction("max_dim", f_max_dim, true); }
static void check_softmax(void) { check_reduction("softmax", f_softmax, false); }
static void check_log_softmax(void) { check_reduction("log_softmax", f_log_softmax, false); }

/* ---- matmul -------------------------------------------------------------------------- */

static cr_tensor *f_matmul(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_matmul(in[0], in[1]);
}
/* A^T B^T from stored [K,M] and [N,K] */
static cr_tensor *f_matmul_tt(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_matmul(cr_transpose(in[0], -2, -1), cr_transpose(in[1], -2, -1));
}
/* batched on a permuted [M,B,K] and a narrowed weight */
static cr_tensor *f_matmul_perm(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_matmul(cr_permute(in[0], (int[]){1, 0, 2}), cr_narrow(in[1], 1, 1, 2));
}

static void check_matmul(void)
{
    /* The product is linear in each element, so a large step has no truncation
     * error and divides the rounding error of the BLIS-sized sums by more. */
    eps = 1e-3;
    CHECK2("matmul 2-D", f_matmul, NULL, input(CR_SHAPE(3, 4), -1, 1), input(CR_SHAPE(4, 2), -1, 1));
    CHECK2("matmul 3-D x 3-D", f_matmul, NULL, input(CR_SHAPE(2, 3, 4), -1, 1),
           input(CR_SHAPE(2, 4, 5), -1, 1));
    CHECK2("matmul 3-D x 2-D", f_matmul, NULL, input(CR_SHAPE(2, 3, 4), -1, 1), input(CR_SHAPE(4, 5), -1, 1));
    CHECK2("matmul 2-D x 3-D", f_matmul, NULL, input(CR_SHAPE(3, 4), -1, 1), input(CR_SHAPE(2, 4, 5), -1, 1));
    CHECK2("matmul of transposes", f_matmul_tt, NULL, input(CR_SHAPE(4, 3), -1, 1),
           input(CR_SHAPE(2, 4), -1, 1));
    CHECK2("matmul 3-D of transposes", f_matmul_tt, NULL, input(CR_SHAPE(2, 4, 3), -1, 1),
           input(CR_SHAPE(2, 5, 4), -1, 1));
    CHECK2("matmul of permuted 3-D x narrowed 2-D", f_matmul_perm, NULL, input(CR_SHAPE(3, 2, 4), -1, 1),
           input(CR_SHAPE(4, 4), -1, 1));
    /* above the small-product threshold: BLIS */
    CHECK2("matmul through BLIS", f_matmul, NULL, input(CR_SHAPE(40, 30), -1, 1),
           input(CR_SHAPE(30, 30), -1, 1));
    CHECK2("matmul 3-D x 2-D of transposes through BLIS", f_matmul_tt, NULL,
           input(CR_SHAPE(2, 12, 33), -1, 1), input(CR_SHAPE(84, 12), -1, 1)); /* 33 * 84 * 12 per batch */
}

static cr_tensor *f_matmul_bias(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_matmul_bias(in[0], in[1], in[2]);
}
/* the weight as a transposed view, the bias a column broadcast along rows */
static cr_tensor *f_matmul_bias_t(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_matmul_bias(in[0], cr_transpose(in[1], 0, 1), in[2]);
}
static void check_matmul_bias(void)
{
    eps = 1e-3; /* linear in each element, as for matmul */
    run_check("matmul_bias 2-D, row bias", f_matmul_bias, NULL, 3,
              (cr_tensor *[]){input(CR_SHAPE(3, 4), -1, 1), input(CR_SHAPE(4, 2), -1, 1),
                              input(CR_SHAPE(2), -1, 1)});
    run_check("matmul_bias 3-D x 2-D^T, column bias", f_matmul_bias_t, NULL, 3,
              (cr_tensor *[]){input(CR_SHAPE(2, 3, 4), -1, 1), input(CR_SHAPE(5, 4), -1, 1),
                              input(CR_SHAPE(3, 1), -1, 1)});
    run_check("matmul_bias through BLIS", f_matmul_bias, NULL, 3,
              (cr_tensor *[]){input(CR_SHAPE(40, 30), -1, 1), input(CR_SHAPE(30, 30), -1, 1),
                              input(CR_SHAPE(30), -1, 1)});
}

/* Three steps h' = tanh(h W'), W' = weight_t(W, rows), plus a product with a
 * narrowed block of W' and a sum of W' squared (uses whose gradient is not
 * stacked: it reaches W's through the view). rows 6 with 3 rows a step: a
 * product of two steps' rows, then the rest in backward. */
static cr_tensor *f_weight_t(cr_tensor *const *in, void *ctx)
{
    cr_tensor *h = in[0], *wt = cr_weight_t(in[1], *(const int64_t *)ctx), *loss = NULL;
    for (int t = 0; t < 3; t++) {
        h = cr_tanh(cr_matmul(h, wt));
        loss = loss ? cr_add(loss, cr_sum(h)) : cr_sum(h);
    }
    loss = cr_add(loss, cr_sum(cr_square(wt)));
    return cr_add(loss, cr_sum(cr_square(cr_matmul(h, cr_narrow(wt, 1, 1, 2)))));
}

/* Two products by W' whose outputs one op multiplies: its backward makes
 * both products' gradients before either product's backward runs, and the
 * products' backward run in the other order. */
static cr_tensor *f_weight_t_pair(cr_tensor *const *in, void *ctx)
{
    cr_tensor *wt = cr_weight_t(in[1], *(const int64_t *)ctx);
    cr_tensor *a = cr_matmul(in[0], wt);          /* recorded first: its backward runs last */
    cr_tensor *b = cr_matmul(cr_tanh(in[0]), wt); /* its gradient made second */
    cr_tensor *y = cr_mul(a, b);
    return cr_sum(cr_tanh(cr_matmul(y, wt)));
}

static void check_weight_t(void)
{
    static const int64_t rows[] = {0, 3, 6, 100};
    for (int i = 0; i < 4; i++) {
        CHECK2("weight_t", f_weight_t, (void *)&rows[i], input(CR_SHAPE(3, 4), -1, 1),
               input(CR_SHAPE(4, 4), -1, 1));
        CHECK2("weight_t, two products' gradients made at once", f_weight_t_pair, (void *)&rows[i],
               input(CR_SHAPE(3, 4), -1, 1), input(CR_SHAPE(4, 4), -1, 1));
    }
}

/* ---- views and shape ops ---------------------------------------------------------------- */

/* Each view op on its own and composed (views of views), then multiplied by a
 * fixed pattern so the result is not just a permutation of the input. */
static cr_tensor *f_reshape(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_reshape(in[0], CR_SHAPE(4, -1));
}
static cr_tensor *f_reshape_of_transpose(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_reshape(cr_transpose(in[0], 0, 1), CR_SHAPE(2, 6)); /* goes through contiguous */
}
static cr_tensor *f_transpose(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_transpose(in[0], 0, 2);
}
static cr_tensor *f_permute(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_permute(in[0], (int[]){2, 0, 1});
}
static cr_tensor *f_narrow(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_narrow(in[0], 1, 1, 2);
}
static cr_tensor *f_narrow_of_transpose(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_narrow(cr_transpose(in[0], 0, 1), 0, 1, 2);
}
static cr_tensor *f_select(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_select(in[0], 1, -1);
}
static cr_tensor *f_select_of_permute(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_select(cr_permute(in[0], (int[]){2, 0, 1}), 0, 2);
}
static cr_tensor *f_expand(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_expand(in[0], CR_SHAPE(2, 3, 4)); /* from [3,1] */
}
static cr_tensor *f_expand_of_narrow(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_expand(cr_narrow(in[0], 1, 2, 1), CR_SHAPE(3, 5)); /* [3,4] -> [3,1] -> [3,5] */
}
static cr_tensor *f_unsqueeze(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_unsqueeze(in[0], 1); /* [3,4] -> [3,1,4] */
}
static cr_tensor *f_unsqueeze_of_transpose(cr_tensor *const *in, void *ctx)
{
    (void)ctx; /* a strided input, a new last dim, then broadcast against it */
    cr_tensor *u = cr_unsqueeze(cr_transpose(in[0], 0, 1), -1); /* [4,3,1] */
    return cr_mul(u, cr_expand(u, CR_SHAPE(4, 3, 2)));
}
static cr_tensor *f_contiguous(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_contiguous(cr_narrow(cr_transpose(in[0], 0, 1), 1, 0, 2));
}
/* two overlapping views of one input summed: gradients of both add up */
static cr_tensor *f_overlap(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    cr_tensor *a = cr_narrow(in[0], 0, 0, 2), *b = cr_transpose(cr_narrow(in[0], 1, 1, 2), 0, 1);
    return cr_mul(a, b); /* [2,3] * [2,3], sharing x[0..1, 1..2] */
}

static void check_reshape(void)
{
    CHECK1("reshape", f_reshape, NULL, input(CR_SHAPE(2, 2, 3), -2, 2));
    CHECK1("reshape of transpose", f_reshape_of_transpose, NULL, input(CR_SHAPE(3, 4), -2, 2));
}
static void check_transpose(void) { CHECK1("transpose", f_transpose, NULL, input(CR_SHAPE(2, 3, 4), -2, 2)); }
static void check_permute(void) { CHECK1("permute", f_permute, NULL, input(CR_SHAPE(2, 3, 4), -2, 2)); }
static void check_narrow(void)
{
    CHECK1("narrow", f_narrow, NULL, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("narrow of transpose", f_narrow_of_transpose, NULL, input(CR_SHAPE(3, 4), -2, 2));
}
static void check_select(void)
{
    CHECK1("select", f_select, NULL, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("select of permute", f_select_of_permute, NULL, input(CR_SHAPE(2, 3, 4), -2, 2));
}
static void check_expand(void)
{
    CHECK1("expand", f_expand, NULL, input(CR_SHAPE(3, 1), -2, 2));
    CHECK1("expand of narrow", f_expand_of_narrow, NULL, input(CR_SHAPE(3, 4), -2, 2));
}
static void check_unsqueeze(void)
{
    CHECK1("unsqueeze", f_unsqueeze, NULL, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("unsqueeze of transpose", f_unsqueeze_of_transpose, NULL, input(CR_SHAPE(3, 4), -2, 2));
}
static void check_contiguous(void)
{
    CHECK1("contiguous of narrow of transpose", f_contiguous, NULL, input(CR_SHAPE(3, 4), -2, 2));
    CHECK1("overlapping views", f_overlap, NULL, input(CR_SHAPE(3, 3), -2, 2));
}

typedef struct {
    int dim, n;
} cat_ctx;
static cr_tensor *f_concat(cr_tensor *const *in, void *ctx)
{
    const cat_ctx *c = ctx;
    cr_tensor *xs[3] = {in[0], cr_transpose(in[1], 0, 1), in[2]};
    return cr_concat(c->n, xs, c->dim);
}
static cr_tensor *f_stack(cr_tensor *const *in, void *ctx)
{
    const cat_ctx *c = ctx;
    cr_tensor *xs[3] = {in[0], cr_transpose(in[1], 0, 1), in[2]};
    return cr_stack(c->n, xs, c->dim);
}
/* pieces of split and chunk, recombined with different weights */
static cr_tensor *f_split(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    cr_tensor *p[3], *q[2];
    int n = cr_split(in[0], 2, 1, p, 3); /* [3,5] -> [3,2] [3,2] [3,1] */
    cr_assert_eq(n, 3);
    cr_chunk(p[0], 2, 1, q);
    return cr_add(cr_mul(p[1], cr_tanh(p[0])), cr_mul(cr_exp(p[2]), cr_concat(2, q, 1)));
}

static void check_concat(void)
{
    cat_ctx c0 = {0, 3}, c1 = {1, 2}, cm = {-1, 3};
    run_check("concat dim 0", f_concat, &c0, 3,
              (cr_tensor *[]){input(CR_SHAPE(2, 3), -1, 1), input(CR_SHAPE(3, 1), -1, 1),
                              input(CR_SHAPE(4, 3), -1, 1)});
    run_check("concat dim 1", f_concat, &c1, 2,
              (cr_tensor *[]){input(CR_SHAPE(2, 3), -1, 1), input(CR_SHAPE(4, 2), -1, 1),
                              input(CR_SHAPE(1), -1, 1)});
    run_check("concat dim -1", f_concat, &cm, 3,
              (cr_tensor *[]){input(CR_SHAPE(2, 3), -1, 1), input(CR_SHAPE(1, 2), -1, 1),
                              input(CR_SHAPE(2, 2), -1, 1)});
    CHECK1("split and chunk", f_split, NULL, input(CR_SHAPE(3, 5), -1, 1));
}
static void check_stack(void)
{
    cat_ctx s0 = {0, 3}, s1 = {1, 3}, s2 = {-1, 2};
    cr_tensor *a = input(CR_SHAPE(2, 3), -1, 1), *b = input(CR_SHAPE(3, 2), -1, 1),
              *c = input(CR_SHAPE(2, 3), -1, 1);
    run_check("stack dim 0", f_stack, &s0, 3, (cr_tensor *[]){a, b, c});
    run_check("stack dim 1", f_stack, &s1, 3, (cr_tensor *[]){a, b, c});
    run_check("stack dim -1", f_stack, &s2, 3, (cr_tensor *[]){a, b, c});
}

/* ---- indexing, masking, dropout, loss ------------------------------------------------------ */

typedef struct {
    cr_tensor *idx; /* persistent i32 */
    int64_t skip;
} gather_ctx;
static cr_tensor *f_gather(cr_tensor *const *in, void *ctx)
{
    const gather_ctx *c = ctx;
    return cr_gather_rows(in[0], c->idx, c->skip);
}
static cr_tensor *f_gather_t(cr_tensor *const *in, void *ctx)
{
    const gather_ctx *c = ctx;
    return cr_gather_rows(cr_transpose(in[0], 0, 1), c->idx, c->skip);
}

static void check_gather_rows(void)
{
    cr_tensor *idx = keep(cr_tensor_init(CR_I32, CR_SHAPE(2, 3)));
    int32_t rows[6] = {3, 0, 3, 1, 1, 4}; /* repeats; row 2 unused */
    memcpy(idx->data, rows, sizeof rows);
    gather_ctx c = {idx, -1}, c_unused = {idx, 2};
    CHECK1("gather_rows", f_gather, &c, input(CR_SHAPE(5, 3), -1, 1));
    CHECK1("gather_rows, skip index not present", f_gather, &c_unused, input(CR_SHAPE(5, 3), -1, 1));
    CHECK1("gather_rows of a 1-D table", f_gather, &c, input(CR_SHAPE(5), -1, 1));
    CHECK1("gather_rows of a transposed table", f_gather_t, &c, input(CR_SHAPE(2, 5), -1, 1));
    /* the skipped row gets no gradient at all, the others theirs */
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    cr_tensor *table = input(CR_SHAPE(5, 2), -1, 1);
    cr_backward(cr_sum(cr_gather_rows(table, idx, 3)));
    double want[5] = {1, 2, 0, 0, 1}; /* counts of rows 0..4, row 3 skipped */
    for (int64_t r = 0; r < 5; r++)
        for (int64_t j = 0; j < 2; j++)
            cr_assert_eq(cr_get(table->grad, (int64_t[]){r, j}), want[r], "row %lld", (long long)r);
    cr_graph_free(g);
}

typedef struct {
    cr_tensor *cond;
} where_ctx;
static cr_tensor *f_where(cr_tensor *const *in, void *ctx)
{
    const where_ctx *c = ctx;
    return cr_where(c->cond, in[0], in[1]);
}
static void check_where(void)
{
    cr_tensor *cond = keep(cr_tensor_init(CR_I32, CR_SHAPE(2, 1, 3)));
    int32_t cv[6] = {1, 0, 0, 1, 1, 0};
    memcpy(cond->data, cv, sizeof cv);
    where_ctx c = {cond};
    CHECK2("where, broadcast", f_where, &c, input(CR_SHAPE(4, 1), -1, 1), input(CR_SHAPE(2, 4, 3), -1, 1));
    CHECK2("where, same shapes", f_where, &c, input(CR_SHAPE(2, 4, 3), -1, 1),
           input(CR_SHAPE(2, 4, 3), -1, 1));
    CHECK2("where, scalar x", f_where, &c, input(0, NULL, -1, 1), input(CR_SHAPE(2, 4, 3), -1, 1));
}

static cr_tensor *f_mask(cr_tensor *const *in, void *ctx) { return cr_mask(in[0], ctx); }
static cr_tensor *f_mask_view(cr_tensor *const *in, void *ctx)
{
    return cr_mask(cr_transpose(in[0], 0, 1), ctx);
}
static void check_mask(void)
{
    cr_tensor *m = keep(cr_tensor_init(CR_F64, CR_SHAPE(4)));
    memcpy(m->data, (double[]){1, 0, 2.5, -1}, 4 * sizeof(double));
    CHECK1("mask, broadcast", f_mask, m, input(CR_SHAPE(3, 4), -1, 1));
    CHECK1("mask of a view", f_mask_view, m, input(CR_SHAPE(4, 2), -1, 1));
}

typedef struct {
    double p;
    uint64_t seed;
} dropout_ctx;
static cr_tensor *f_dropout(cr_tensor *const *in, void *ctx)
{
    const dropout_ctx *c = ctx;
    cr_rng r = cr_rng_seed(c->seed); /* the same mask at every evaluation */
    return cr_dropout(cr_transpose(in[0], 0, 1), c->p, true, &r);
}
static void check_dropout(void)
{
    dropout_ctx c = {0.4, 99};
    CHECK1("dropout", f_dropout, &c, input(CR_SHAPE(6, 5), -1, 1));
}

/* Two recomputed segments in a chain: a parameter read through ctx, dropout
 * drawing from a generator given to cr_recompute, two outputs each. */
typedef struct {
    cr_rng rng;
    cr_tensor *w;
} segment_ctx;
static void seg_tanh_dropout(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    segment_ctx *c = ctx;
    cr_tensor *h = cr_dropout(cr_tanh(cr_matmul(in[0], c->w)), 0.3, true, &c->rng); /* [3,4] */
    out[0] = cr_mul(h, in[1]);
    out[1] = cr_sum(cr_square(h));
}
static cr_tensor *f_recompute(cr_tensor *const *in, void *ctx)
{
    segment_ctx *c = ctx;
    c->rng = cr_rng_seed(7); /* the same masks at every evaluation */
    c->w = in[1];
    cr_tensor *a[2], *b[2];
    cr_recompute(seg_tanh_dropout, c, 2, (cr_tensor *[]){cr_mul_scalar(in[0], 0.7), in[2]}, 2, a, 1,
                 (cr_rng *[]){&c->rng});
    cr_recompute(seg_tanh_dropout, c, 2, (cr_tensor *[]){a[0], in[2]}, 2, b, 1, (cr_rng *[]){&c->rng});
    return cr_add(cr_add(cr_sum(b[0]), a[1]), cr_mul_scalar(b[1], 0.5));
}
static void check_recompute(void)
{
    segment_ctx c;
    run_check("recompute", f_recompute, &c, 3,
              (cr_tensor *[]){input(CR_SHAPE(3, 4), -1, 1), input(CR_SHAPE(4, 4), -0.8, 0.8),
                              input(CR_SHAPE(3, 4), -1, 1)});
}

typedef struct {
    cr_tensor *target;
    int64_t ignore;
    cr_reduction red;
    bool view;
    bool step_base; /* the view's base is an op's output, also used by another op */
} ce_ctx;
static cr_tensor *f_ce(cr_tensor *const *in, void *ctx)
{
    const ce_ctx *c = ctx;
    if (c->step_base) { /* backward writes y's gradient through the whole-base view first, then adds y*y's */
        cr_tensor *y = cr_mul_scalar(in[0], 1.5), *sq = cr_sum(cr_mul(y, y));
        cr_tensor *ce =
            cr_cross_entropy(cr_reshape(cr_transpose(y, 0, 1), CR_SHAPE(4, 5)), c->target, c->ignore, c->red);
        return cr_add(ce, sq);
    }
    return cr_cross_entropy(c->view ? cr_transpose(in[0], 0, 1) : in[0], c->target, c->ignore, c->red);
}
static void check_cross_entropy(void)
{
    cr_tensor *t = keep(cr_tensor_init(CR_I32, CR_SHAPE(4)));
    memcpy(t->data, (int32_t[]){2, 0, -100, 4}, 4 * sizeof(int32_t));
    cr_tensor *t1 = keep(cr_tensor_init(CR_I32, 0, NULL));
    ((int32_t *)t1->data)[0] = 3;
    ce_ctx mean = {t, -100, CR_MEAN, false, false}, sum = {t, -100, CR_SUM, false, false},
           view = {t, -100, CR_MEAN, true, false};
    ce_ctx one = {t1, -100, CR_SUM, false, false}, ign = {t, 0, CR_MEAN, false, false},
           step = {t, -100, CR_SUM, false, true};
    cr_tensor *tt = keep(cr_tensor_init(CR_I32, CR_SHAPE(4)));
    memcpy(tt->data, (int32_t[]){2, 0, 1, 4}, 4 * sizeof(int32_t));
    ign.target = tt;
    CHECK1("cross_entropy mean, one ignored", f_ce, &mean, input(CR_SHAPE(4, 5), -2, 2));
    CHECK1("cross_entropy sum", f_ce, &sum, input(CR_SHAPE(4, 5), -2, 2));
    CHECK1("cross_entropy of a transposed view", f_ce, &view, input(CR_SHAPE(5, 4), -2, 2));
    CHECK1("cross_entropy 1-D", f_ce, &one, input(CR_SHAPE(5), -2, 2));
    CHECK1("cross_entropy ignoring class 0", f_ce, &ign, input(CR_SHAPE(4, 5), -2, 2));
    CHECK1("cross_entropy of views of a step tensor", f_ce, &step, input(CR_SHAPE(5, 4), -2, 2));
}

/* ---- convolutions and pooling ------------------------------------------------------------------ */

/* Each convolution case runs through the products with three block sizes
 * (cr_conv_block_bytes): one sample per block (a 1x1 convolution then
 * multiplies the input directly), two samples per block (the last block is
 * partial when N is odd; and backward builds the columns again:
 * cr_conv_keep_bytes 0), and every sample in one block; then with the direct
 * kernels on for any number of channels (cr_conv_direct_channels), which
 * take every case with stride 1 along W; then with Winograd F(2x2, 3x3) on
 * for any number of channels (cr_conv_winograd_channels), which takes the
 * output and both gradients of every 3x3 case with stride 1, dilation 1
 * and padding at most 2. */
typedef struct {
    int nd;             /* 1 or 2 */
    int64_t x[4], w[4]; /* shapes (nd + 2 dims) */
    cr_conv1d_opts o1;
    cr_conv2d_opts o2;
    bool bias;
    bool view; /* x stored with its last two dims swapped, passed transposed */
} conv_case;

static cr_tensor *f_conv(cr_tensor *const *in, void *ctx)
{
    const conv_case *c = ctx;
    int last = c->nd + 1;
    cr_tensor *x = c->view ? cr_transpose(in[0], last - 1, last) : in[0];
    cr_tensor *b = c->bias ? in[2] : NULL;
    return c->nd == 1 ? cr_conv1d(x, in[1], b, c->o1) : cr_conv2d(x, in[1], b, c->o2);
}

static void check_conv_case(const char *name, const conv_case *c)
{
    char what[96];
    int nd = c->nd + 2;
    int64_t xs[4];
    memcpy(xs, c->x, sizeof xs);
    if (c->view) { /* stored with the last two dims swapped */
        xs[nd - 1] = c->x[nd - 2];
        xs[nd - 2] = c->x[nd - 1];
    }
    /* bytes of one sample's columns: C * kernel size * output positions * 8 */
    int64_t per_sample = 8 * c->x[1];
    for (int d = 0; d < c->nd; d++) {
        int64_t s = c->nd == 1 ? c->o1.stride : c->o2.stride[d],
                p = c->nd == 1 ? c->o1.padding : c->o2.padding[d];
        int64_t dil = c->nd == 1 ? c->o1.dilation : c->o2.dilation[d];
        per_sample *= c->w[2 + d] * cr_window_out(c->x[2 + d], c->w[2 + d], s ? s : 1, p, dil ? dil : 1);
    }
    /* one sample per block; two (columns built again in backward); all */
    int64_t blocks[5] = {1, 2 * per_sample, (int64_t)1 << 30, 2 * per_sample, 2 * per_sample},
            keep = cr_conv_keep_bytes, block = cr_conv_block_bytes, direct = cr_conv_direct_channels,
            winograd = cr_conv_winograd_channels;
    eps = 1e-3; /* linear in each input: no truncation error, less rounding */
    for (int k = 0; k < 5; k++) {
        cr_conv_block_bytes = blocks[k];
        cr_conv_keep_bytes = k == 1 ? 0 : keep;
        cr_conv_direct_channels = k == 3 ? (int64_t)1 << 30 : k == 4 ? direct : 0;
        cr_conv_winograd_channels = k == 4 ? 1 : INT64_MAX;
        cr_tensor *x = input(nd, xs, -1, 1), *w = input(nd, c->w, -1, 1);
        cr_tensor *b = input(CR_SHAPE(c->w[0]), -1, 1);
        snprintf(what, sizeof what, "%s, block %d", name, k);
        run_check(what, f_conv, (void *)c, c->bias ? 3 : 2, (cr_tensor *[]){x, w, b});
        teardown();
    }
    cr_conv_block_bytes = block;
    cr_conv_keep_bytes = keep;
    cr_conv_direct_channels = direct;
    cr_conv_winograd_channels = winograd;
}

static void check_conv2d(void)
{
    const struct {
        const char *name;
        conv_case c;
    } cases[] = {
        {"conv2d plain", {2, {2, 3, 5, 6}, {4, 3, 3, 3}, .bias = true}},
        {"conv2d stride, padding, dilation",
         {2,
          {3, 2, 7, 8},
          {3, 2, 3, 2},
          .o2 = {.stride = {2, 1}, .padding = {1, 2}, .dilation = {1, 2}},
          .bias = true}},
        {"conv2d groups 2",
         {2, {2, 4, 5, 5}, {6, 2, 3, 3}, .o2 = {.padding = {1, 1}, .groups = 2}, .bias = true}},
        {"conv2d depthwise, dilated",
         {2,
          {2, 3, 6, 6},
          {3, 1, 3, 3},
          .o2 = {.padding = {2, 2}, .dilation = {2, 2}, .groups = 3},
          .bias = true}},
        {"conv2d 1x1", {2, {3, 4, 3, 5}, {2, 4, 1, 1}, .bias = false}},
        {"conv2d 1x1 groups 2", {2, {2, 6, 4, 4}, {4, 3, 1, 1}, .o2 = {.groups = 2}, .bias = true}},
        {"conv2d 1x1 stride 2", {2, {2, 3, 5, 5}, {2, 3, 1, 1}, .o2 = {.stride = {2, 2}}, .bias = true}},
        {"conv2d odd sizes", {2, {3, 1, 7, 5}, {2, 1, 4, 3}, .o2 = {.stride = {3, 2}, .padding = {1, 0}}}},
        {"conv2d of a transposed view",
         {2,
          {2, 3, 5, 6},
          {4, 3, 3, 3},
          .o2 = {.stride = {1, 2}, .padding = {1, 0}},
          .bias = true,
          .view = true}},
        {"conv2d through BLIS", {2, {2, 8, 10, 10}, {16, 8, 3, 3}, .o2 = {.padding = {1, 1}}, .bias = true}},
        /* no padding and rows of 8 outputs (whole f64 tiles): the direct kernels read the input in place */
        {"conv2d read in place", {2, {3, 3, 6, 10}, {5, 3, 3, 3}, .o2 = {.stride = {2, 1}}, .bias = true}},
        /* for the direct kernels: 10 channels (a tile of 8 and one of 2), rows of
         * 21 outputs (f64 tiles of 8: a partial third), stride and dilation along H */
        {"conv2d wide rows, 10 channels",
         {2,
          {3, 3, 6, 19},
          {10, 3, 2, 3},
          .o2 = {.stride = {2, 1}, .padding = {1, 2}, .dilation = {2, 1}},
          .bias = true}},
        {"conv2d groups 3, dilated along W",
         {2, {2, 6, 5, 9}, {9, 2, 3, 2}, .o2 = {.padding = {0, 1}, .dilation = {1, 3}, .groups = 3}}},
        /* for Winograd F(2x2, 3x3): odd outputs (a last tile row and column of
         * one), 3 samples of 6 x 7 tiles (126: chunks of 96 cross a sample),
         * 9 channels per group (a run of 8 and one of 1), padding 0, 1, 2
         * (the input gradient's then 2, 1, 0), rows of 19 tiles (f64 vectors
         * of 8: a partial third) */
        {"conv2d 3x3 odd sizes, groups 2",
         {2, {3, 4, 11, 13}, {18, 2, 3, 3}, .o2 = {.padding = {1, 1}, .groups = 2}, .bias = true}},
        {"conv2d 3x3 padding 0", {2, {2, 3, 8, 7}, {2, 3, 3, 3}, .bias = true}},
        {"conv2d 3x3 padding 2 and 0", {2, {2, 2, 5, 37}, {3, 2, 3, 3}, .o2 = {.padding = {2, 0}}}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_conv_case(cases[i].name, &cases[i].c);
}

static void check_conv1d(void)
{
    const struct {
        const char *name;
        conv_case c;
    } cases[] = {
        {"conv1d plain", {1, {2, 3, 9}, {4, 3, 3}, .bias = true}},
        {"conv1d stride, padding, dilation",
         {1, {3, 2, 10}, {3, 2, 3}, .o1 = {.stride = 2, .padding = 2, .dilation = 2}, .bias = true}},
        {"conv1d groups 2", {1, {2, 6, 7}, {4, 3, 2}, .o1 = {.groups = 2}}},
        {"conv1d 1x1", {1, {3, 5, 4}, {2, 5, 1}, .bias = true}},
        {"conv1d of [B,T,C] transposed",
         {1, {2, 3, 9}, {4, 3, 5}, .o1 = {.padding = 2}, .bias = true, .view = true}},
        {"conv1d odd sizes", {1, {1, 1, 11}, {3, 1, 4}, .o1 = {.stride = 3, .padding = 1}}},
        {"conv1d long rows, dilated",
         {1, {2, 2, 30}, {3, 2, 5}, .o1 = {.padding = 3, .dilation = 2}, .bias = true}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_conv_case(cases[i].name, &cases[i].c);
}

/* Pooling: inputs whose values are all distinct and 4/n apart (a
 * permutation of a grid), so no window is near a tie. */
typedef struct {
    int nd;
    cr_pool1d_opts o1;
    cr_pool2d_opts o2;
    bool max, view;
} pool_case;

static cr_tensor *f_pool(cr_tensor *const *in, void *ctx)
{
    const pool_case *c = ctx;
    cr_tensor *x = c->view ? cr_transpose(in[0], -2, -1) : in[0];
    if (c->nd == 1) return c->max ? cr_max_pool1d(x, c->o1) : cr_avg_pool1d(x, c->o1);
    return c->max ? cr_max_pool2d(x, c->o2) : cr_avg_pool2d(x, c->o2);
}

static cr_tensor *distinct_input(int ndim, const int64_t *shape)
{
    cr_tensor *t = input(ndim, shape, -1, 1);
    int64_t n = cr_numel(t);
    cr_assert(n % 37 != 0);
    for (int64_t j = 0; j < n; j++) cr_set_flat(t, j, (double)((j * 37) % n) * 4.0 / (double)n - 2.0);
    return t;
}

static void check_pools(bool max, int nd)
{
    char what[96];
    const char *kind = max ? "max" : "avg";
    pool_case c2[] = {{2, .o2 = {.kernel = {2, 2}}},
                      {2, .o2 = {.kernel = {3, 2}, .stride = {2, 1}, .padding = {1, 1}}},
                      {2, .o2 = {.kernel = {3, 3}, .stride = {2, 2}, .padding = {1, 1}}, .view = true}};
    int64_t s2[][4] = {{2, 3, 6, 7}, {2, 2, 5, 7}, {3, 5, 6}};
    int n2[] = {4, 4, 3};
    pool_case c1[] = {{1, .o1 = {.kernel = 3, .stride = 2, .padding = 1}},
                      {1, .o1 = {.kernel = 2}},
                      {1, .o1 = {.kernel = 4, .stride = 3, .padding = 2}, .view = true}};
    int64_t s1[][3] = {{2, 3, 9}, {2, 3, 8}, {7, 3}};
    int n1[] = {3, 3, 2};
    for (int i = 0; i < 3; i++) {
        c2[i].max = c1[i].max = max;
        snprintf(what, sizeof what, "%s_pool%dd case %d", kind, nd, i);
        if (nd == 2)
            CHECK1(what, f_pool, &c2[i], distinct_input(n2[i], s2[i]));
        else
            CHECK1(what, f_pool, &c1[i], distinct_input(n1[i], s1[i]));
    }
}
static void check_max_pool1d(void) { check_pools(true, 1); }
static void check_max_pool2d(void) { check_pools(true, 2); }
static void check_avg_pool1d(void) { check_pools(false, 1); }
static void check_avg_pool2d(void) { check_pools(false, 2); }

/* ---- composed: a small tanh RNN over three steps (all ops through views) ------------------------ */

static cr_tensor *f_rnn(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    cr_tensor *x = in[0], *w = in[1], *u = in[2], *b = in[3]; /* x [T=3,B=2,I=3], w [I,H=4], u [H,H], b [H] */
    cr_tensor *xw = cr_matmul(x, w);                          /* hoisted input projection */
    cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(2, 4));
    cr_tensor *hs[3];
    for (int t = 0; t < 3; t++) {
        h = cr_tanh(cr_add(cr_add(cr_select(xw, 0, t), cr_matmul(h, u)), b));
        hs[t] = h;
    }
    return cr_stack(3, hs, 1);
}
Test(gradcheck, composed_rnn)
{
    run_check("tanh RNN", f_rnn, NULL, 4,
              (cr_tensor *[]){input(CR_SHAPE(3, 2, 3), -1, 1), input(CR_SHAPE(3, 4), -0.8, 0.8),
                              input(CR_SHAPE(4, 4), -0.8, 0.8), input(CR_SHAPE(4), -0.5, 0.5)});
}

/* ---- every op at once, in f32 and f64 --------------------------------------------------------- */

/* One expression using every op; constants are made in the inputs' dtype, so
 * the same function runs in f32 and f64. x [4,6], w [6,5], table [7,6]. */
/* tanh(x), recomputed in backward */
static void seg_tanh(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    (void)ctx;
    out[0] = cr_tanh(in[0]);
}

static cr_tensor *f_everything(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    cr_tensor *x = in[0], *w = in[1], *table = in[2];
    cr_dtype dt = x->dtype;
    int32_t iv[4] = {1, 6, 1, 3}, tv[4] = {2, -1, 4, 0};
    cr_tensor *idx = cr_from_array(CR_I32, CR_SHAPE(4), iv), *tgt = cr_from_array(CR_I32, CR_SHAPE(4), tv);
    cr_tensor *e = cr_gather_rows(table, idx, -1); /* [4,6] */
    cr_tensor *a = cr_add(cr_mul(x, e), cr_div(cr_sub(x, e), cr_add_scalar(cr_square(e), 1)));
    a = cr_maximum(cr_minimum(a, cr_full(dt, CR_SHAPE(6), 1.7)), cr_full(dt, 0, NULL, -1.9));
    /* every unary case, on a's values mapped into its domain [lo, hi) by
     * lo + (hi - lo) sigmoid(a) */
    cr_tensor *b = cr_mul_scalar(a, 0.5);
    for (size_t i = 0; i < N_UNARY_CASES; i++) {
        const unary_case *c = &unary_cases[i];
        cr_tensor *u = cr_add_scalar(cr_mul_scalar(cr_sigmoid(a), c->hi - c->lo), c->lo);
        b = cr_add(b, cr_mul_scalar(c->apply(u), 0.05));
    }
    cr_tensor *h; /* [4,5] */
    cr_recompute(seg_tanh, NULL, 1, (cr_tensor *[]){cr_matmul(b, w)}, 1, &h, 0, NULL);
    h = cr_matmul_bias(h, cr_weight_t(cr_narrow(w, 0, 0, 5), 4),
                       cr_narrow(cr_select(x, 0, 0), 0, 0, 5)); /* + x[0,:5] */
    cr_tensor *hs[2] = {h, cr_mask(h, cr_full(dt, CR_SHAPE(5), 2.0))};
    cr_tensor *st = cr_stack(2, hs, 0);              /* [2,4,5] */
    st = cr_select(cr_unsqueeze(st, 1), 1, 0);       /* [2,1,4,5] -> [2,4,5] */
    cr_tensor *p = cr_permute(st, (int[]){1, 2, 0}); /* [4,5,2] */
    cr_tensor *flat = cr_reshape(cr_contiguous(p), CR_SHAPE(4, 10));
    cr_tensor *cat = cr_concat(2, (cr_tensor *[]){flat, cr_reshape(w, CR_SHAPE(3, 10))}, 0); /* [7,10] */
    cr_tensor *sel = cr_select(st, 0, 1);                                                    /* [4,5] */
    cr_rng r = cr_rng_seed(5);
    cr_tensor *logits =
        cr_add(cr_dropout(sel, 0.25, true, &r), cr_expand(cr_max_dim(h, 1, true), CR_SHAPE(4, 5)));
    cr_tensor *cond = cr_from_array(CR_I32, CR_SHAPE(5), (int32_t[]){1, 0, 1, 1, 0});
    logits = cr_where(cond, logits, cr_transpose(cr_log_softmax(cr_transpose(h, 0, 1), 1), 0, 1));
    cr_tensor *loss = cr_cross_entropy(logits, tgt, -1, CR_MEAN);
    loss = cr_add(loss, cr_mean(cr_softmax(flat, 1)));
    loss = cr_add(loss, cr_sum(cr_mean_dim(cr_sum_dim(flat, 0, true), 1, false)));
    loss = cr_add(loss, cr_mul_scalar(cr_sum(cr_square(cr_narrow(cat, 0, 3, 2))), 0.1));
    /* convolutions and pooling: x as one 4x6 image and as 4 channels of 6 steps, weights from table */
    cr_tensor *k2 = cr_reshape(cr_narrow(table, 0, 0, 3), CR_SHAPE(2, 1, 3, 3)); /* [2,1,3,3] */
    cr_tensor *c2 =
        cr_conv2d(cr_reshape(x, CR_SHAPE(1, 1, 4, 6)), k2, cr_narrow(cr_select(table, 0, 3), 0, 1, 2),
                  (cr_conv2d_opts){.padding = {1, 1}}); /* [1,2,4,6] */
    cr_pool2d_opts p22 = {.kernel = {2, 2}};
    cr_tensor *q2 = cr_add(cr_max_pool2d(c2, p22), cr_avg_pool2d(c2, p22));   /* [1,2,2,3] */
    cr_tensor *k1 = cr_reshape(cr_narrow(table, 0, 4, 2), CR_SHAPE(2, 2, 3)); /* [2,2,3] */
    cr_tensor *c1 = cr_conv1d(cr_reshape(x, CR_SHAPE(1, 4, 6)), k1, NULL,
                              (cr_conv1d_opts){.padding = 1, .groups = 2}); /* [1,2,6] */
    cr_pool1d_opts p12 = {.kernel = 2};
    cr_tensor *q1 = cr_add(cr_max_pool1d(c1, p12), cr_avg_pool1d(c1, p12)); /* [1,2,3] */
    loss = cr_add(loss, cr_mul_scalar(cr_add(cr_sum(cr_tanh(q2)), cr_sum(cr_tanh(q1))), 0.1));
    /* fused gates: an LSTM of H = 1 and a GRU of H = 2 on columns of x */
    cr_tensor *lg = cr_lstm_gates(cr_narrow(x, 1, 0, 4), cr_narrow(x, 1, 2, 4), cr_narrow(x, 1, 5, 1));
    cr_tensor *gg = cr_gru_gates(x, cr_mul_scalar(x, 0.5), cr_narrow(x, 1, 3, 2));
    return cr_add(loss, cr_mul_scalar(cr_add(cr_sum(lg), cr_sum(gg)), 0.1));
}

Test(gradcheck, every_op_in_one_expression_f32_matches_f64)
{
    cr_tensor *x = input(CR_SHAPE(4, 6), -1, 1), *w = input(CR_SHAPE(6, 5), -0.5, 0.5);
    cr_tensor *table = input(CR_SHAPE(7, 6), -1, 1);
    run_check("every op", f_everything, NULL, 3, (cr_tensor *[]){x, w, table});
    /* the same in f32: gradients agree to f32 precision */
    cr_tensor *in64[3] = {x, w, table}, *in32[3];
    for (int i = 0; i < 3; i++) {
        in32[i] = keep(cr_tensor_init(CR_F32, in64[i]->ndim, in64[i]->shape));
        for (int64_t j = 0; j < cr_numel(in64[i]); j++) cr_set_flat(in32[i], j, cr_get_flat(in64[i], j));
        cr_requires_grad(in32[i], true);
        cr_zero_grad(in64[i]);
    }
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    cr_tensor *l64 = f_everything(in64, NULL), *l32 = f_everything(in32, NULL);
    cr_assert_eq(l32->dtype, CR_F32);
    cr_assert_float_eq(cr_item(l32), cr_item(l64), 1e-5 * fabs(cr_item(l64)));
    /* the tape really holds every op of the table */
    size_t count;
    const cr_op *const *ops = cr_op_table(&count);
    for (size_t i = 0; i < count; i++) {
        bool seen = false;
        for (size_t k = 0; k < cr_graph_node_count(g); k++) seen |= cr_graph_node(g, k)->op == ops[i];
        cr_assert(seen, "f_everything does not use op '%s'", ops[i]->name);
    }
    cr_backward(l64);
    cr_backward(l32);
    for (int i = 0; i < 3; i++)
        for (int64_t j = 0; j < cr_numel(in64[i]); j++) {
            double g64 = cr_get_flat(in64[i]->grad, j), g32 = cr_get_flat(in32[i]->grad, j);
            cr_assert(fabs(g32 - g64) <= 1e-5 * fmax(1, fabs(g64)),
                      "input %d element %lld: f32 %.8g, f64 %.8g", i, (long long)j, g32, g64);
        }
    cr_graph_free(g);
}

/* ---- fused recurrent gates -------------------------------------------------------------------- */

typedef cr_tensor *(*gates_op)(cr_tensor *, cr_tensor *, cr_tensor *);
static cr_tensor *f_gates(cr_tensor *const *in, void *ctx)
{
    return ((gates_op *)ctx)[0](in[0], in[1], in[2]);
}
/* gx a time step of a [B,T,G] projection (strided rows), gh a transposed
 * view (its gradient is not unit-stride: the op's temporary), the state a
 * narrowed view */
static cr_tensor *f_gates_views(cr_tensor *const *in, void *ctx)
{
    int64_t H = in[2]->shape[1] / 2;
    return ((gates_op *)ctx)[0](cr_select(in[0], 1, 1), cr_transpose(in[1], 0, 1), cr_narrow(in[2], 1, 1, H));
}
/* the same tensor as gx and gh */
static cr_tensor *f_gates_twice(cr_tensor *const *in, void *ctx)
{
    return ((gates_op *)ctx)[0](in[0], in[0], in[1]);
}
/* two LSTM steps: the second reads the first's h' (through a product) and c' */
static cr_tensor *f_lstm_two_steps(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    cr_tensor *y = cr_lstm_gates(cr_select(in[0], 0, 0), cr_select(in[0], 0, 1), in[2]);
    cr_tensor *h = cr_select(y, 0, 0), *c = cr_select(y, 0, 1);
    cr_tensor *y2 = cr_lstm_gates(cr_select(in[0], 0, 2), cr_matmul(h, in[1]), c);
    return cr_add(cr_select(y2, 0, 0), cr_mul_scalar(cr_select(y2, 0, 1), 0.5));
}
/* two GRU steps: h feeds the product and the gates */
static cr_tensor *f_gru_two_steps(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    cr_tensor *h = cr_gru_gates(cr_select(in[0], 0, 0), cr_select(in[0], 0, 1), in[2]);
    return cr_gru_gates(cr_select(in[0], 0, 2), cr_matmul(h, in[1]), h);
}

static void check_lstm_gates(void)
{
    static gates_op op = cr_lstm_gates;
    CHECK3_("lstm_gates", f_gates, &op, input(CR_SHAPE(3, 8), -2, 2), input(CR_SHAPE(3, 8), -2, 2),
            input(CR_SHAPE(3, 2), -2, 2));
    CHECK3_("lstm_gates of views", f_gates_views, &op, input(CR_SHAPE(3, 4, 12), -2, 2),
            input(CR_SHAPE(12, 3), -2, 2), input(CR_SHAPE(3, 6), -2, 2));
    run_check("lstm_gates, gx = gh", f_gates_twice, &op, 2,
              (cr_tensor *[]){input(CR_SHAPE(2, 12), -2, 2), input(CR_SHAPE(2, 3), -2, 2)});
    CHECK3_("lstm_gates, two steps", f_lstm_two_steps, NULL, input(CR_SHAPE(3, 2, 12), -2, 2),
            input(CR_SHAPE(3, 12), -1, 1), input(CR_SHAPE(2, 3), -2, 2));
}

static void check_gru_gates(void)
{
    static gates_op op = cr_gru_gates;
    CHECK3_("gru_gates", f_gates, &op, input(CR_SHAPE(3, 6), -2, 2), input(CR_SHAPE(3, 6), -2, 2),
            input(CR_SHAPE(3, 2), -2, 2));
    CHECK3_("gru_gates of views", f_gates_views, &op, input(CR_SHAPE(3, 4, 9), -2, 2),
            input(CR_SHAPE(9, 3), -2, 2), input(CR_SHAPE(3, 6), -2, 2));
    run_check("gru_gates, gx = gh", f_gates_twice, &op, 2,
              (cr_tensor *[]){input(CR_SHAPE(2, 9), -2, 2), input(CR_SHAPE(2, 3), -2, 2)});
    CHECK3_("gru_gates, two steps", f_gru_two_steps, NULL, input(CR_SHAPE(3, 2, 9), -2, 2),
            input(CR_SHAPE(3, 9), -1, 1), input(CR_SHAPE(2, 3), -2, 2));
}

/* ---- the table: op name -> check ------------------------------------------------------------------ */

/* Every op but the unary ones (checked per case above), one line per family of ops. */
/* clang-format off */
#define CHECKS(X)                                                                                            \
    X(add) X(sub) X(mul) X(div) X(maximum) X(minimum)                                                        \
    X(sum) X(mean) X(sum_dim) X(mean_dim) X(max_dim) X(softmax) X(log_softmax)                               \
    X(matmul) X(matmul_bias) X(weight_t)                                                                     \
    X(reshape) X(transpose) X(permute) X(narrow) X(select) X(expand) X(unsqueeze) X(contiguous) X(concat)    \
    X(stack) X(gather_rows) X(where) X(mask) X(dropout) X(cross_entropy) X(recompute)                        \
    X(conv1d) X(conv2d) X(max_pool1d) X(max_pool2d) X(avg_pool1d) X(avg_pool2d) X(lstm_gates) X(gru_gates)
/* clang-format on */

#define CHECK_TEST(name)                                                                                     \
    Test(gradcheck, name) { check_##name(); }
CHECKS(CHECK_TEST)

#define CHECK_ENTRY(name) {"cr_" #name, check_##name},
static const struct {
    const char *op;
    void (*check)(void);
} check_table[] = {CHECKS(CHECK_ENTRY)};

Test(gradcheck, every_op_has_a_check)
{
    /* the ops the unary cases exercise */
    const cr_op *unary_ops[N_UNARY_CASES];
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    cr_tensor *x = input(CR_SHAPE(2), 0.5, 1);
    for (size_t i = 0; i < N_UNARY_CASES; i++) unary_ops[i] = unary_case_op(&unary_cases[i], x);
    cr_graph_use(NULL);
    cr_graph_free(g);

    size_t count;
    const cr_op *const *ops = cr_op_table(&count);
    cr_assert_gt(count, 0);
    for (size_t i = 0; i < count; i++) {
        bool found = false;
        for (size_t j = 0; j < sizeof check_table / sizeof check_table[0]; j++)
            found |= strcmp(check_table[j].op, ops[i]->name) == 0;
        for (size_t j = 0; j < N_UNARY_CASES; j++) found |= unary_ops[j] == ops[i];
        cr_assert(found,
                  "op '%s' has no gradient check: add one to CHECKS in test_gradcheck.c (a unary op: a line "
                  "in tests/unary_cases.h)",
                  ops[i]->name);
    }
    /* and no check names an op that does not exist */
    for (size_t j = 0; j < sizeof check_table / sizeof check_table[0]; j++)
        cr_assert_not_null(cr_op_find(check_table[j].op), "check '%s' names no op", check_table[j].op);
}

/* ---- the check can fail: a custom op with a wrong backward ------------------------------------------ */

/* y = x^2, whose backward is right except at flat element 2, where it uses 3x. */
static void bad_square_fwd(cr_node *n) { cr_k_unary(CR_U_SQUARE, n->out, n->in[0], 0, 0); }
static void bad_square_bwd(cr_node *n)
{
    cr_tensor *x = n->in[0], *gy = n->out->grad, *gx = cr_grad_of(x);
    for (int64_t i = 0; i < cr_numel(x); i++)
        cr_set_flat(gx, i, cr_get_flat(gx, i) + cr_get_flat(gy, i) * (i == 2 ? 3 : 2) * cr_get_flat(x, i));
}
static const cr_op bad_square = {"bad_square", bad_square_fwd, bad_square_bwd, 0, 0};
static cr_tensor *f_bad(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    cr_node *n = cr_node_new(&bad_square, 1, in);
    return cr_node_finish(n, in[0]->dtype, in[0]->ndim, in[0]->shape);
}

Test(gradcheck, wrong_backward_is_caught)
{
    cr_tensor *x = input_values(CR_SHAPE(2, 3), (double[]){0.5, -0.3, 0.8, 1.1, -0.9, 0.2});
    cr_gradcheck_report rep;
    double err = cr_gradcheck(f_bad, NULL, 1, (cr_tensor *[]){x}, EPS, &rep);
    cr_assert_gt(err, 0.1);
    cr_assert_eq(rep.max_rel_err, err);
    cr_assert_eq(rep.worst_input, 0);
    cr_assert_eq(rep.worst_index, 2);
    cr_assert_eq(rep.n_checked, 6);
    cr_assert_float_eq(rep.analytic, 1.5 * rep.numeric, 1e-6);
    cr_assert_gt(rep.max_abs_err, 0.01);
    /* the report is optional, the result the same */
    double err2 = cr_gradcheck(f_bad, NULL, 1, (cr_tensor *[]){x}, EPS, NULL);
    cr_assert_eq(err, err2);
}

static cr_tensor *f_second_bad(cr_tensor *const *in, void *ctx)
{
    (void)ctx;
    return cr_add(cr_tanh(in[0]), f_bad(&in[1], NULL));
}
Test(gradcheck, report_names_the_input)
{
    cr_tensor *a = input(CR_SHAPE(2, 3), -1, 1);
    cr_tensor *b = input_values(CR_SHAPE(2, 3), (double[]){0.5, -0.3, 0.8, 1.1, -0.9, 0.2});
    cr_gradcheck_report rep;
    cr_gradcheck(f_second_bad, NULL, 2, (cr_tensor *[]){a, b}, EPS, &rep);
    cr_assert_eq(rep.worst_input, 1);
    cr_assert_eq(rep.worst_index, 2);
    cr_assert_eq(rep.n_checked, 12);
    cr_assert_gt(rep.max_rel_err, 0.1);
    /* the inputs are left as they were */
    cr_assert_eq(cr_get_flat(b, 2), 0.8);
}

Test(gradcheck, correct_custom_op_passes)
{
    /* the same check on cr_square passes, and leaves the caller's graph alone */
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    const unary_case *c = NULL;
    for (size_t i = 0; i < N_UNARY_CASES; i++)
        if (!strcmp(unary_cases[i].id, "square")) c = &unary_cases[i];
    cr_assert_not_null(c);
    cr_tensor *x = input(CR_SHAPE(2, 3), -1, 1);
    CHECK1("square", f_unary, (void *)c, x);
    cr_assert_eq(cr_graph_current(), g);
    cr_assert_eq(cr_graph_node_count(g), 0);
    cr_graph_free(g);
}

Test(gradcheck, refuses_inputs_that_are_not_f64)
{
    const unary_case *c = &unary_cases[0];
    cr_tensor *x32 = keep(cr_tensor_init(CR_F32, CR_SHAPE(2, 3)));
    cr_requires_grad(x32, true);
    cr_tensor *x64 = input(CR_SHAPE(2), -1, 1);
    EXPECT_ERROR(cr_gradcheck(f_unary, (void *)c, 1, (cr_tensor *[]){x32}, EPS, NULL),
                 "cr_gradcheck: input 0 is f32 [2,3]; finite differences need f64");
    EXPECT_ERROR(cr_gradcheck(f_second_bad, NULL, 2, (cr_tensor *[]){x64, x32}, EPS, NULL),
                 "cr_gradcheck: input 1 is f32 [2,3]");
    cr_tensor *no_grad = keep(cr_tensor_init(CR_F64, CR_SHAPE(2)));
    EXPECT_ERROR(cr_gradcheck(f_unary, (void *)c, 1, (cr_tensor *[]){no_grad}, EPS, NULL),
                 "cr_gradcheck: input 0, [2], must be a persistent tensor that requires a gradient");
}
