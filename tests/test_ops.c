/*
 * Forward values of every op in the op table against hand-computed numbers:
 * broadcasting arithmetic, elementwise functions, reductions, softmax, matmul
 * (2-D, batched, on views), shape ops, gather/where/mask/dropout, cross-entropy.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include "carousel/autograd.h"
#include "expect_error.h"
#include "unary_cases.h"

static cr_graph *graph;

static void setup(void)
{
    graph = cr_graph_init();
    cr_graph_use(graph);
}

static void teardown(void) { cr_graph_free(graph); }

TestSuite(ops, .init = setup, .fini = teardown);

/* ---- helpers ---------------------------------------------------------------- */

static cr_tensor *f64(int ndim, const int64_t *shape, const double *v)
{
    return cr_from_array(CR_F64, ndim, shape, v);
}

static cr_tensor *i32(int ndim, const int64_t *shape, const int32_t *v)
{
    return cr_from_array(CR_I32, ndim, shape, v);
}

static void expect_values(const cr_tensor *t, const double *want, int64_t n, double tol)
{
    cr_assert_eq(cr_numel(t), n, "numel %lld, expected %lld", (long long)cr_numel(t), (long long)n);
    for (int64_t i = 0; i < n; i++) {
        double got = cr_get_flat(t, i);
        cr_assert(fabs(got - want[i]) <= tol * fmax(1, fabs(want[i])),
                  "element %lld: got %.17g, expected %.17g", (long long)i, got, want[i]);
    }
}

static void expect_shape(const cr_tensor *t, int ndim, const int64_t *shape)
{
    char a[128], b[128];
    bool ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    cr_assert(ok, "shape %s, expected %s", cr_shape_str(a, sizeof a, t->ndim, t->shape),
              cr_shape_str(b, sizeof b, ndim, shape));
}

/* ---- arithmetic with broadcasting --------------------------------------------------- */

Test(ops, binary_arithmetic_broadcasts)
{
    cr_tensor *a = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *row = f64(CR_SHAPE(3), (double[]){10, 20, 30});
    cr_tensor *col = f64(CR_SHAPE(2, 1), (double[]){2, 4});
    cr_tensor *s = cr_scalar(CR_F64, 0.5);
    cr_tensor *y = cr_add(a, row);
    expect_shape(y, CR_SHAPE(2, 3));
    expect_values(y, (double[]){11, 22, 33, 14, 25, 36}, 6, 0);
    expect_values(cr_sub(a, col), (double[]){-1, 0, 1, 0, 1, 2}, 6, 0);
    expect_values(cr_sub(col, a), (double[]){1, 0, -1, 0, -1, -2}, 6, 0);
    expect_values(cr_mul(a, s), (double[]){0.5, 1, 1.5, 2, 2.5, 3}, 6, 0);
    expect_values(cr_div(a, col), (double[]){0.5, 1, 1.5, 1, 1.25, 1.5}, 6, 0);
    expect_values(cr_div(s, a), (double[]){0.5, 0.25, 0.5 / 3, 0.125, 0.1, 0.5 / 6}, 6, 1e-15);
    /* outer sum of a column and a row */
    cr_tensor *o = cr_add(col, row);
    expect_shape(o, CR_SHAPE(2, 3));
    expect_values(o, (double[]){12, 22, 32, 14, 24, 34}, 6, 0);
    /* 0-dim with 0-dim stays 0-dim */
    cr_tensor *ss = cr_mul(s, s);
    cr_assert_eq(ss->ndim, 0);
    cr_assert_eq(cr_item(ss), 0.25);
    /* size-0 dims broadcast to size 0 */
    cr_tensor *e = cr_add(cr_zeros(CR_F64, CR_SHAPE(0, 1)), row);
    expect_shape(e, CR_SHAPE(0, 3));
    /* f32 works the same */
    cr_tensor *af = cr_full(CR_F32, CR_SHAPE(2), 1.5);
    expect_values(cr_mul(af, cr_full(CR_F32, CR_SHAPE(2, 1), 2)), (double[]){3, 3, 3, 3}, 4, 0);
}

Test(ops, maximum_minimum)
{
    cr_tensor *a = f64(CR_SHAPE(4), (double[]){1, -2, 3, 0});
    cr_tensor *b = f64(CR_SHAPE(2, 1), (double[]){0.5, 2});
    expect_values(cr_maximum(a, b), (double[]){1, 0.5, 3, 0.5, 2, 2, 3, 2}, 8, 0);
    expect_values(cr_minimum(a, b), (double[]){0.5, -2, 0.5, 0, 1, -2, 2, 0}, 8, 0);
}

Test(ops, arithmetic_misuse_names_op_and_shapes)
{
    cr_tensor *a = cr_zeros(CR_F64, CR_SHAPE(2, 3)), *b = cr_zeros(CR_F64, CR_SHAPE(4));
    EXPECT_ERROR(cr_add(a, b), "cr_add: shapes [2,3] and [4] do not broadcast");
    EXPECT_ERROR(cr_mul(a, cr_zeros(CR_F32, CR_SHAPE(3))),
                 "cr_mul: f64 [2,3] and f32 [3] (need one float dtype)");
    EXPECT_ERROR(cr_exp(cr_zeros(CR_I32, CR_SHAPE(3))), "cr_exp: needs f32 or f64, got i32 [3]");
}

/* ---- elementwise functions ------------------------------------------------------------ */

typedef cr_tensor *(*unary_fn)(cr_tensor *);

static double sigm(double x) { return 1 / (1 + exp(-x)); }

Test(ops, unary_functions)
{
    double xs[6] = {-2, -0.7, -0.1, 0.3, 0.9, 2.5};
    cr_tensor *x = f64(CR_SHAPE(2, 3), xs);
    struct {
        const char *name;
        unary_fn f;
        double (*ref)(double);
    } cases[] = {
        {"exp", cr_exp, exp},
        {"tanh", cr_tanh, tanh},
        {"sigmoid", cr_sigmoid, sigm},
        {"abs", cr_abs, fabs},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        cr_tensor *y = cases[c].f(x);
        expect_shape(y, CR_SHAPE(2, 3));
        for (int i = 0; i < 6; i++)
            cr_assert_float_eq(cr_get_flat(y, i), cases[c].ref(xs[i]), 1e-15, "%s(%g)", cases[c].name, xs[i]);
    }
    double want_relu[6] = {0, 0, 0, 0.3, 0.9, 2.5};
    expect_values(cr_relu(x), want_relu, 6, 0);
    expect_values(cr_neg(x), (double[]){2, 0.7, 0.1, -0.3, -0.9, -2.5}, 6, 0);
    expect_values(cr_square(x), (double[]){4, 0.49, 0.01, 0.09, 0.81, 6.25}, 6, 1e-15);
    expect_values(cr_hardtanh(x), (double[]){-1, -0.7, -0.1, 0.3, 0.9, 1}, 6, 0);
    expect_values(cr_clamp(x, -0.5, 0.5), (double[]){-0.5, -0.5, -0.1, 0.3, 0.5, 0.5}, 6, 0);
    expect_values(cr_leaky_relu(x, 0.1), (double[]){-0.2, -0.07, -0.01, 0.3, 0.9, 2.5}, 6, 1e-15);
    expect_values(cr_add_scalar(x, 1.5), (double[]){-0.5, 0.8, 1.4, 1.8, 2.4, 4}, 6, 1e-15);
    expect_values(cr_mul_scalar(x, -2), (double[]){4, 1.4, 0.2, -0.6, -1.8, -5}, 6, 0);
    cr_tensor *elu = cr_elu(x, 1.5);
    for (int i = 0; i < 6; i++)
        cr_assert_float_eq(cr_get_flat(elu, i), xs[i] > 0 ? xs[i] : 1.5 * (exp(xs[i]) - 1), 1e-15);
    cr_tensor *sp = cr_softplus(x);
    for (int i = 0; i < 6; i++) cr_assert_float_eq(cr_get_flat(sp, i), log1p(exp(xs[i])), 1e-15);
    /* positive domain */
    cr_tensor *p = f64(CR_SHAPE(4), (double[]){0.25, 1, 4, 9});
    expect_values(cr_sqrt(p), (double[]){0.5, 1, 2, 3}, 4, 0);
    expect_values(cr_ln(p), (double[]){log(0.25), 0, log(4.0), log(9.0)}, 4, 1e-15);
    expect_values(cr_pow(p, 1.5), (double[]){0.125, 1, 8, 27}, 4, 1e-15);
    expect_values(cr_pow(p, -1), (double[]){4, 1, 0.25, 1.0 / 9}, 4, 1e-15);
    expect_values(cr_pow(p, 0), (double[]){1, 1, 1, 1}, 4, 0);
    EXPECT_ERROR(cr_clamp(x, 1, -1), "cr_clamp: needs lo <= hi, got lo = 1, hi = -1");
}

/* Every case of tests/unary_cases.h against its libm reference: f64 to a few
 * ulp, f32 (inputs rounded to f32 first, the reference in double) to 1e-6,
 * on a plain input and on a strided view. */
Test(ops, unary_cases_match_libm)
{
    cr_rng r = cr_rng_seed(17);
    for (size_t i = 0; i < N_UNARY_CASES; i++) {
        const unary_case *c = &unary_cases[i];
        for (int dt = 0; dt < 2; dt++) {
            cr_tensor *x = cr_tensor_new(dt ? CR_F32 : CR_F64, CR_SHAPE(4, 5));
            cr_fill_uniform(x, &r, c->lo, c->hi);
            double tol = dt ? 1e-6 : 4e-16;
            cr_tensor *views[2] = {x, cr_transpose(x, 0, 1)};
            for (int v = 0; v < 2; v++) {
                cr_tensor *y = c->apply(views[v]);
                cr_assert_eq(y->dtype, x->dtype);
                expect_shape(y, views[v]->ndim, views[v]->shape);
                for (int64_t j = 0; j < 20; j++) {
                    double in = cr_get_flat(views[v], j), got = cr_get_flat(y, j), want = c->ref(in);
                    cr_assert(fabs(got - want) <= tol * fmax(1, fabs(want)),
                              "%s %s%s (%.17g) = %.17g, libm %.17g", c->id, cr_dtype_name(x->dtype),
                              v ? " on a view" : "", in, got, want);
                }
            }
        }
    }
}

Test(ops, unary_on_strided_view)
{
    cr_tensor *x = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *t = cr_transpose(x, 0, 1);
    cr_tensor *y = cr_square(t);
    expect_shape(y, CR_SHAPE(3, 2));
    cr_assert(cr_is_contiguous(y));
    expect_values(y, (double[]){1, 16, 4, 25, 9, 36}, 6, 0);
    cr_tensor *z = cr_add(t, cr_narrow(cr_transpose(x, 0, 1), 1, 1, 1)); /* [3,2] + [3,1] of views */
    expect_values(z, (double[]){5, 8, 7, 10, 9, 12}, 6, 0);
}

/* ---- reductions and normalisers ---------------------------------------------------------- */

Test(ops, sums_and_means)
{
    cr_tensor *x = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *s = cr_sum(x), *m = cr_mean(x);
    cr_assert_eq(s->ndim, 0);
    cr_assert_eq(cr_item(s), 21.0);
    cr_assert_eq(cr_item(m), 3.5);
    cr_tensor *s0 = cr_sum_dim(x, 0, false), *s1 = cr_sum_dim(x, -1, true);
    expect_shape(s0, CR_SHAPE(3));
    expect_values(s0, (double[]){5, 7, 9}, 3, 0);
    expect_shape(s1, CR_SHAPE(2, 1));
    expect_values(s1, (double[]){6, 15}, 2, 0);
    cr_tensor *m0 = cr_mean_dim(x, 0, true), *m1 = cr_mean_dim(x, 1, false);
    expect_shape(m0, CR_SHAPE(1, 3));
    expect_values(m0, (double[]){2.5, 3.5, 4.5}, 3, 0);
    expect_shape(m1, CR_SHAPE(2));
    expect_values(m1, (double[]){2, 5}, 2, 0);
    /* of a transposed view */
    cr_tensor *t = cr_transpose(x, 0, 1);
    expect_values(cr_sum_dim(t, 1, false), (double[]){5, 7, 9}, 3, 0);
    cr_assert_eq(cr_item(cr_sum(t)), 21.0);
    /* of a 3-D middle dim */
    cr_tensor *x3 = cr_reshape(cr_arange(CR_F64, 0, 24, 1), CR_SHAPE(2, 3, 4));
    cr_tensor *m3 = cr_mean_dim(x3, 1, false);
    expect_shape(m3, CR_SHAPE(2, 4));
    expect_values(m3, (double[]){4, 5, 6, 7, 16, 17, 18, 19}, 8, 0);
    EXPECT_ERROR(cr_sum_dim(x, 2, false), "cr_sum_dim: dim 2 out of range for 2 dims");
}

Test(ops, max_dim_and_argmax)
{
    cr_tensor *x = f64(CR_SHAPE(2, 4), (double[]){3, 9, 1, 9, -1, -5, -0.5, -2});
    cr_tensor *m1 = cr_max_dim(x, 1, false), *m0 = cr_max_dim(x, 0, true);
    expect_shape(m1, CR_SHAPE(2));
    expect_values(m1, (double[]){9, -0.5}, 2, 0);
    expect_shape(m0, CR_SHAPE(1, 4));
    expect_values(m0, (double[]){3, 9, 1, 9}, 4, 0);
    cr_tensor *a1 = cr_argmax(x, 1, false), *a0 = cr_argmax(x, -2, true);
    cr_assert_eq(a1->dtype, CR_I32);
    expect_values(a1, (double[]){1, 2}, 2, 0); /* tie 9, 9: first index */
    expect_shape(a0, CR_SHAPE(1, 4));
    expect_values(a0, (double[]){0, 0, 0, 0}, 4, 0);
    cr_assert_not(a1->requires_grad);
    EXPECT_ERROR(cr_max_dim(cr_zeros(CR_F64, CR_SHAPE(3, 0)), 1, false),
                 "cr_max_dim: dim 1 of the input is empty");
}

Test(ops, softmax_and_log_softmax)
{
    cr_tensor *x = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 0, 0, log(2.0)});
    cr_tensor *p = cr_softmax(x, 1), *lp = cr_log_softmax(x, -1);
    double z = exp(1) + exp(2) + exp(3);
    expect_values(p, (double[]){exp(1) / z, exp(2) / z, exp(3) / z, 0.25, 0.25, 0.5}, 6, 1e-15);
    expect_values(lp, (double[]){1 - log(z), 2 - log(z), 3 - log(z), log(0.25), log(0.25), log(0.5)}, 6,
                  1e-15);
    cr_tensor *p0 = cr_softmax(x, 0);
    expect_values(p0,
                  (double[]){sigm(1), sigm(2), sigm(3 - log(2.0)), sigm(-1), sigm(-2), sigm(log(2.0) - 3)}, 6,
                  1e-15);
    /* of a transposed view: same as softmax over the other dim */
    cr_tensor *pt = cr_softmax(cr_transpose(x, 0, 1), 0);
    for (int64_t i = 0; i < 2; i++)
        for (int64_t j = 0; j < 3; j++)
            cr_assert_float_eq(cr_get(pt, (int64_t[]){j, i}), cr_get(p, (int64_t[]){i, j}), 1e-15);
}

/* ---- matmul -------------------------------------------------------------------------------- */

/* the naive product of two [m,k] x [k,n] tensors (any strides), into a new tensor */
static cr_tensor *naive_matmul(const cr_tensor *a, const cr_tensor *b)
{
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    cr_tensor *c = cr_zeros(CR_F64, CR_SHAPE(m, n));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t p = 0; p < k; p++) s += cr_get(a, (int64_t[]){i, p}) * cr_get(b, (int64_t[]){p, j});
            cr_set(c, (int64_t[]){i, j}, s);
        }
    return c;
}

static cr_tensor *random_tensor(cr_dtype dt, int ndim, const int64_t *shape, uint64_t seed)
{
    cr_tensor *t = cr_tensor_new(dt, ndim, shape);
    cr_rng r = cr_rng_seed(seed);
    cr_fill_uniform(t, &r, -1, 1);
    return t;
}

static void expect_close(const cr_tensor *got, const cr_tensor *want, double tol)
{
    cr_assert_eq(cr_numel(got), cr_numel(want));
    for (int64_t i = 0; i < cr_numel(got); i++)
        cr_assert(fabs(cr_get_flat(got, i) - cr_get_flat(want, i)) <= tol, "element %lld: %.17g vs %.17g",
                  (long long)i, cr_get_flat(got, i), cr_get_flat(want, i));
}

Test(ops, matmul_2d)
{
    cr_tensor *a = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *b = f64(CR_SHAPE(3, 2), (double[]){7, 8, 9, 10, 11, 12});
    cr_tensor *c = cr_matmul(a, b);
    expect_shape(c, CR_SHAPE(2, 2));
    expect_values(c, (double[]){58, 64, 139, 154}, 4, 0);
    /* A^T A on a transposed view, no copy needed */
    cr_tensor *ata = cr_matmul(cr_transpose(a, 0, 1), a);
    expect_shape(ata, CR_SHAPE(3, 3));
    expect_values(ata, (double[]){17, 22, 27, 22, 29, 36, 27, 36, 45}, 9, 0);
    /* larger than the small-kernel threshold, with transposed and narrowed views */
    cr_tensor *big_a = random_tensor(CR_F64, CR_SHAPE(70, 50), 1),
              *big_b = random_tensor(CR_F64, CR_SHAPE(60, 45), 2);
    cr_tensor *va = cr_transpose(big_a, 0, 1);  /* [50,70] */
    cr_tensor *vb = cr_narrow(big_b, 1, 5, 40); /* [60,40] */
    cr_tensor *va2 = cr_narrow(va, 1, 10, 60);  /* [50,60] */
    cr_tensor *got = cr_matmul(va2, vb);        /* [50,40] */
    expect_shape(got, CR_SHAPE(50, 40));
    expect_close(got, naive_matmul(va2, vb), 1e-12);
    /* f32 */
    cr_tensor *fa = random_tensor(CR_F32, CR_SHAPE(33, 40), 3),
              *fb = random_tensor(CR_F32, CR_SHAPE(40, 35), 4);
    expect_close(cr_matmul(fa, fb), naive_matmul(fa, fb), 1e-4);
}

Test(ops, matmul_batched)
{
    cr_tensor *a = cr_reshape(cr_arange(CR_F64, 0, 12, 1), CR_SHAPE(2, 2, 3));
    cr_tensor *b = cr_reshape(cr_arange(CR_F64, 0, 12, 1), CR_SHAPE(2, 3, 2));
    cr_tensor *c = cr_matmul(a, b);
    expect_shape(c, CR_SHAPE(2, 2, 2));
    /* batch 0: [[0,1,2],[3,4,5]] x [[0,1],[2,3],[4,5]]; batch 1 likewise offset by 6 */
    expect_values(c, (double[]){10, 13, 28, 40, 172, 193, 244, 274}, 8, 0);
    /* 3-D x 2-D: the weight shared by every batch */
    cr_tensor *w = f64(CR_SHAPE(3, 1), (double[]){1, -1, 2});
    cr_tensor *cw = cr_matmul(a, w);
    expect_shape(cw, CR_SHAPE(2, 2, 1));
    expect_values(cw, (double[]){3, 9, 15, 21}, 4, 0);
    /* 2-D x 3-D */
    cr_tensor *l = f64(CR_SHAPE(1, 3), (double[]){1, 0, -1});
    cr_tensor *lb = cr_matmul(l, b);
    expect_shape(lb, CR_SHAPE(2, 1, 2));
    expect_values(lb, (double[]){-4, -4, -4, -4}, 4, 0);
    /* batched on permuted views, against per-batch naive products */
    cr_tensor *p = random_tensor(CR_F64, CR_SHAPE(5, 4, 3), 5); /* [K,B,M] */
    cr_tensor *q = random_tensor(CR_F64, CR_SHAPE(4, 6, 5), 6); /* [B,N,K] */
    cr_tensor *pa = cr_permute(p, (int[]){1, 2, 0});            /* [B,M,K] */
    cr_tensor *qb = cr_transpose(q, 1, 2);                      /* [B,K,N] */
    cr_tensor *pq = cr_matmul(pa, qb);
    expect_shape(pq, CR_SHAPE(4, 3, 6));
    for (int64_t i = 0; i < 4; i++)
        expect_close(cr_select(pq, 0, i), naive_matmul(cr_select(pa, 0, i), cr_select(qb, 0, i)), 1e-14);
    /* a 3-D view that cannot fold its batch into rows, times a 2-D weight */
    cr_tensor *w2 = random_tensor(CR_F64, CR_SHAPE(5, 2), 7);
    cr_tensor *pw = cr_matmul(cr_permute(p, (int[]){1, 2, 0}), w2);
    for (int64_t i = 0; i < 4; i++)
        expect_close(cr_select(pw, 0, i), naive_matmul(cr_select(pa, 0, i), w2), 1e-14);
}

Test(ops, matmul_bias)
{
    /* the values of matmul then add, bit for bit, for a row bias and a column bias */
    cr_rng r = cr_rng_seed(4);
    cr_tensor *a = cr_tensor_new(CR_F32, CR_SHAPE(2, 37, 50)), *b = cr_tensor_new(CR_F32, CR_SHAPE(50, 41));
    cr_tensor *row = cr_tensor_new(CR_F32, CR_SHAPE(41)), *col = cr_tensor_new(CR_F32, CR_SHAPE(37, 1));
    cr_tensor *all[4] = {a, b, row, col};
    for (int i = 0; i < 4; i++) cr_fill_uniform(all[i], &r, -1, 1);
    cr_tensor *bias[2] = {row, col};
    for (int i = 0; i < 2; i++) {
        cr_tensor *y = cr_matmul_bias(a, b, bias[i]), *want = cr_add(cr_matmul(a, b), bias[i]);
        expect_shape(y, CR_SHAPE(2, 37, 41));
        cr_assert_eq(memcmp(y->data, want->data, (size_t)cr_numel(y) * sizeof(float)), 0, "bias %d", i);
    }
    cr_tensor *x2 = f64(CR_SHAPE(1, 2), (double[]){1, 2}), *w2 = f64(CR_SHAPE(2, 2), (double[]){1, 2, 3, 4});
    expect_values(cr_matmul_bias(x2, w2, f64(CR_SHAPE(2), (double[]){0.5, -1})), (double[]){7.5, 9}, 2, 0);
    EXPECT_ERROR(cr_matmul_bias(x2, w2, f64(CR_SHAPE(3), (double[]){1, 2, 3})),
                 "cr_matmul_bias: bias [3] does not broadcast to the product's shape [1,2]");
    EXPECT_ERROR(cr_matmul_bias(x2, w2, f64(CR_SHAPE(2, 1, 2), (double[]){1, 2, 3, 4})),
                 "cr_matmul_bias: bias [2,1,2] does not broadcast");
    EXPECT_ERROR(cr_matmul_bias(x2, f64(CR_SHAPE(3, 2), (double[6]){0}), row),
                 "cr_matmul_bias: [1,2] x [3,2]: inner dims 2 and 3 differ");
}

/* Five steps h' = tanh(h W^T + x_t) through W^T as a view (rows 0) or as
 * weight_t with `rows`; returns the loss, W's gradient in gw. */
static double recurrent_grads(const cr_tensor *w0, int mode, int64_t rows, cr_tensor *gw)
{
    cr_graph *g = cr_graph_init(), *outer = cr_graph_use(g);
    cr_tensor *w = cr_tensor_init(CR_F64, 2, w0->shape);
    cr_copy_(w, w0);
    cr_requires_grad(w, true);
    int64_t H = w0->shape[0];
    cr_tensor *wt = mode ? cr_weight_t(w, rows) : cr_transpose(w, 0, 1),
              *h = cr_zeros(CR_F64, CR_SHAPE(3, H));
    cr_rng r = cr_rng_seed(11);
    cr_tensor *loss = NULL;
    for (int t = 0; t < 5; t++) {
        cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(3, H));
        cr_fill_uniform(x, &r, -1, 1);
        h = cr_tanh(cr_add(cr_matmul(h, wt), x));
        cr_tensor *term = cr_sum(cr_mul(h, x));
        loss = loss ? cr_add(loss, term) : term;
    }
    double l = cr_item(loss);
    cr_backward(loss);
    cr_copy_(gw, w->grad);
    cr_graph_use(outer);
    cr_graph_free(g);
    cr_tensor_free(w);
    return l;
}

Test(ops, weight_t)
{
    cr_tensor *w = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    /* no gradient wanted: a contiguous copy; else a view of W, no copy */
    cr_tensor *wt = cr_weight_t(w, 0);
    expect_shape(wt, CR_SHAPE(3, 2));
    cr_assert(cr_is_contiguous(wt) && wt->data != w->data);
    expect_values(wt, (double[]){1, 4, 2, 5, 3, 6}, 6, 0);
    cr_requires_grad(w, true);
    wt = cr_weight_t(w, 0);
    expect_shape(wt, CR_SHAPE(3, 2));
    cr_assert(wt->data == w->data && wt->stride[0] == 1 && wt->stride[1] == 3, "W^T is a view of W");
    expect_values(wt, (double[]){1, 4, 2, 5, 3, 6}, 6, 0);
    cr_requires_grad(w, false);
    /* the loss and W's gradient of a recurrence as through the W^T view, for
     * no stack, stacks of one step, of two (a product, then the rest in
     * backward) and of all five; H 6 (products small enough to read a
     * contiguous W^T) and 192 (only W^T's pack and the view) */
    static const int64_t sizes[] = {6, 192};
    for (int s = 0; s < 2; s++) {
        int64_t H = sizes[s];
        cr_rng r = cr_rng_seed(3);
        cr_tensor *w0 = cr_tensor_init(CR_F64, CR_SHAPE(H, H)),
                  *want = cr_tensor_init(CR_F64, CR_SHAPE(H, H));
        cr_tensor *got = cr_tensor_init(CR_F64, CR_SHAPE(H, H));
        cr_fill_uniform(w0, &r, -0.5, 0.5);
        double l0 = recurrent_grads(w0, 0, 0, want);
        static const int64_t rows[] = {0, 3, 6, 15, 64};
        for (int i = 0; i < 5; i++) {
            double l = recurrent_grads(w0, 1, rows[i], got);
            cr_assert_eq(l, l0, "H %lld rows %lld: the loss differs", (long long)H, (long long)rows[i]);
            for (int64_t j = 0; j < H * H; j++)
                cr_assert(fabs(cr_get_flat(got, j) - cr_get_flat(want, j)) <= 1e-13,
                          "H %lld rows %lld: dW[%lld] %.17g, want %.17g", (long long)H, (long long)rows[i],
                          (long long)j, cr_get_flat(got, j), cr_get_flat(want, j));
        }
        cr_tensor_free(w0);
        cr_tensor_free(want);
        cr_tensor_free(got);
    }
    EXPECT_ERROR(cr_weight_t(f64(CR_SHAPE(3), (double[]){1, 2, 3}), 0),
                 "cr_weight_t: weight [3] must be 2-D");
    EXPECT_ERROR(cr_weight_t(w, -1), "cr_weight_t: rows -1 must be 0 (no stack) or positive");
    EXPECT_ERROR(cr_weight_t(cr_zeros(CR_I32, CR_SHAPE(2, 2)), 0),
                 "cr_weight_t: needs f32 or f64, got i32 [2,2]");
}

Test(ops, matmul_misuse)
{
    cr_tensor *a = cr_zeros(CR_F32, CR_SHAPE(32, 64)), *b = cr_zeros(CR_F32, CR_SHAPE(65, 128));
    EXPECT_ERROR(cr_matmul(a, b), "cr_matmul: [32,64] x [65,128]: inner dims 64 and 65 differ");
    EXPECT_ERROR(cr_matmul(cr_zeros(CR_F32, CR_SHAPE(2, 3, 4)), cr_zeros(CR_F32, CR_SHAPE(3, 4, 5))),
                 "cr_matmul: [2,3,4] x [3,4,5]: batch sizes 2 and 3 differ");
    EXPECT_ERROR(cr_matmul(cr_zeros(CR_F32, CR_SHAPE(4)), b),
                 "cr_matmul: [4] x [65,128]: operands must be 2-D or 3-D");
}

/* ---- views and shape ops ------------------------------------------------------------------- */

Test(ops, view_ops_share_storage)
{
    cr_tensor *x = cr_arange(CR_F64, 0, 24, 1);
    cr_tensor *r = cr_reshape(x, CR_SHAPE(2, -1, 4));
    expect_shape(r, CR_SHAPE(2, 3, 4));
    cr_assert_eq(r->data, x->data);
    cr_tensor *t = cr_transpose(r, 0, 2);
    expect_shape(t, CR_SHAPE(4, 3, 2));
    cr_assert_eq(t->data, x->data);
    cr_assert_eq(cr_get(t, (int64_t[]){3, 2, 1}), 12 + 8 + 3.0);
    cr_tensor *p = cr_permute(r, (int[]){2, 0, 1});
    expect_shape(p, CR_SHAPE(4, 2, 3));
    cr_assert_eq(cr_get(p, (int64_t[]){1, 1, 2}), 12 + 8 + 1.0);
    cr_tensor *n = cr_narrow(r, 1, 1, 2);
    expect_shape(n, CR_SHAPE(2, 2, 4));
    cr_assert_eq(n->data, (double *)x->data + 4);
    cr_tensor *s = cr_select(r, -1, 3);
    expect_shape(s, CR_SHAPE(2, 3));
    expect_values(s, (double[]){3, 7, 11, 15, 19, 23}, 6, 0);
    cr_tensor *e = cr_expand(cr_reshape(cr_arange(CR_F64, 0, 3, 1), CR_SHAPE(3, 1)), CR_SHAPE(2, 3, 2));
    expect_shape(e, CR_SHAPE(2, 3, 2));
    expect_values(e, (double[]){0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2}, 12, 0);
    /* reshape of a non-contiguous view copies first */
    cr_tensor *rt = cr_reshape(t, CR_SHAPE(24));
    cr_assert_neq(rt->data, x->data);
    expect_values(
        rt, (double[]){0, 12, 4, 16, 8, 20, 1, 13, 5, 17, 9, 21, 2, 14, 6, 18, 10, 22, 3, 15, 7, 19, 11, 23},
        24, 0);
    EXPECT_ERROR(cr_reshape(x, CR_SHAPE(5, 5)), "cr_reshape: [24] (24 elements) cannot become [5,5]");
    EXPECT_ERROR(cr_narrow(r, 2, 3, 2), "cr_narrow: start 3, length 2 out of range for dim 2 of [2,3,4]");
    EXPECT_ERROR(cr_select(r, 0, 2), "cr_select: index 2 out of range for dim 0 of [2,3,4]");
    EXPECT_ERROR(cr_expand(r, CR_SHAPE(3, 3, 4)), "cr_expand: cannot expand [2,3,4] to [3,3,4]");
    EXPECT_ERROR(cr_permute(r, (int[]){0, 1, 1}), "cr_permute");
}

Test(ops, unsqueeze)
{
    cr_tensor *x = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *u0 = cr_unsqueeze(x, 0), *u1 = cr_unsqueeze(x, 1), *u2 = cr_unsqueeze(x, -1);
    expect_shape(u0, CR_SHAPE(1, 2, 3));
    expect_shape(u1, CR_SHAPE(2, 1, 3));
    expect_shape(u2, CR_SHAPE(2, 3, 1));
    cr_assert_eq(u1->data, x->data);
    cr_assert(cr_is_contiguous(u0) && cr_is_contiguous(u1) && cr_is_contiguous(u2));
    expect_values(u2, (double[]){1, 2, 3, 4, 5, 6}, 6, 0);
    /* of a transposed view: a view again, the strides kept */
    cr_tensor *t = cr_unsqueeze(cr_transpose(x, 0, 1), 1); /* [3,1,2] */
    expect_shape(t, CR_SHAPE(3, 1, 2));
    cr_assert_eq(t->data, x->data);
    expect_values(t, (double[]){1, 4, 2, 5, 3, 6}, 6, 0);
    /* broadcasting a column against a row */
    cr_tensor *row = f64(CR_SHAPE(3), (double[]){10, 20, 30});
    expect_values(cr_add(cr_unsqueeze(row, 1), row), (double[]){20, 30, 40, 30, 40, 50, 40, 50, 60}, 9, 0);
    cr_tensor *s = cr_unsqueeze(cr_scalar(CR_F64, 7), 0);
    expect_shape(s, CR_SHAPE(1));
    EXPECT_ERROR(cr_unsqueeze(x, 3), "cr_unsqueeze: dim 3 out of range for 3 dims");
    EXPECT_ERROR(cr_unsqueeze(x, -4), "cr_unsqueeze: dim -4 out of range for 3 dims");
    EXPECT_ERROR(cr_unsqueeze(cr_zeros(CR_F64, 8, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1}), 0),
                 "cr_unsqueeze: [1,1,1,1,1,1,1,1] already has 8 dims");
}

Test(ops, sizes_that_overflow_are_refused)
{
    /* two expanded [2^62] views concatenate to 2^63 elements */
    int64_t big = (int64_t)1 << 62;
    cr_tensor *e = cr_expand(cr_zeros(CR_F32, CR_SHAPE(1)), CR_SHAPE(big));
    EXPECT_ERROR(cr_concat(2, (cr_tensor *[]){e, e}, 0),
                 "cr_concat: the 2 tensors' sizes along dim 0 add up to more than 2^63");
    /* an op whose output would not fit names itself */
    cr_tensor *row = cr_expand(cr_zeros(CR_F32, CR_SHAPE(1, 1)), CR_SHAPE(1, (int64_t)1 << 40));
    cr_tensor *col = cr_expand(cr_zeros(CR_F32, CR_SHAPE(1, 1)), CR_SHAPE((int64_t)1 << 40, 1));
    EXPECT_ERROR(cr_add(row, col), "cr_add: shape [1099511627776,1099511627776] of f32 holds more elements");
    EXPECT_ERROR(cr_narrow(cr_zeros(CR_F32, CR_SHAPE(2, 3)), 1, 1, INT64_MAX),
                 "cr_narrow: start 1, length 9223372036854775807 out of range for dim 1 of [2,3]");
    /* a piece size near INT64_MAX is one piece, not an overflow */
    cr_tensor *x = cr_zeros(CR_F32, CR_SHAPE(5)), *out[2];
    cr_assert_eq(cr_split(x, INT64_MAX, 0, out, 2), 1);
    expect_shape(out[0], CR_SHAPE(5));
    EXPECT_ERROR(cr_from_array(CR_F32, CR_SHAPE(2), NULL), "cr_from_array: data is NULL for shape [2]");
}

Test(ops, contiguous)
{
    cr_tensor *x = f64(CR_SHAPE(2, 2), (double[]){1, 2, 3, 4});
    cr_assert_eq(cr_contiguous(x), x);
    cr_tensor *c = cr_contiguous(cr_transpose(x, 0, 1));
    cr_assert(cr_is_contiguous(c));
    cr_assert_neq(c->data, x->data);
    expect_values(c, (double[]){1, 3, 2, 4}, 4, 0);
}

Test(ops, concat_and_stack)
{
    cr_tensor *a = f64(CR_SHAPE(2, 2), (double[]){1, 2, 3, 4});
    cr_tensor *b = f64(CR_SHAPE(2, 3), (double[]){5, 6, 7, 8, 9, 10});
    cr_tensor *c = f64(CR_SHAPE(1, 2), (double[]){-1, -2});
    cr_tensor *ab = cr_concat(2, (cr_tensor *[]){a, b}, 1);
    expect_shape(ab, CR_SHAPE(2, 5));
    expect_values(ab, (double[]){1, 2, 5, 6, 7, 3, 4, 8, 9, 10}, 10, 0);
    cr_tensor *ac = cr_concat(2, (cr_tensor *[]){a, c}, 0);
    expect_shape(ac, CR_SHAPE(3, 2));
    expect_values(ac, (double[]){1, 2, 3, 4, -1, -2}, 6, 0);
    cr_tensor *aca = cr_concat(3, (cr_tensor *[]){cr_transpose(a, 0, 1), c, a}, -2);
    expect_values(aca, (double[]){1, 3, 2, 4, -1, -2, 1, 2, 3, 4}, 10, 0);
    cr_tensor *one = cr_concat(1, (cr_tensor *[]){a}, 0);
    expect_values(one, (double[]){1, 2, 3, 4}, 4, 0);
    cr_tensor *s0 = cr_stack(2, (cr_tensor *[]){a, cr_transpose(a, 0, 1)}, 0);
    expect_shape(s0, CR_SHAPE(2, 2, 2));
    expect_values(s0, (double[]){1, 2, 3, 4, 1, 3, 2, 4}, 8, 0);
    cr_tensor *s2 = cr_stack(2, (cr_tensor *[]){a, a}, -1);
    expect_shape(s2, CR_SHAPE(2, 2, 2));
    expect_values(s2, (double[]){1, 1, 2, 2, 3, 3, 4, 4}, 8, 0);
    cr_tensor *s1 = cr_stack(3, (cr_tensor *[]){a, a, a}, 1);
    expect_shape(s1, CR_SHAPE(2, 3, 2));
    expect_values(s1, (double[]){1, 2, 1, 2, 1, 2, 3, 4, 3, 4, 3, 4}, 12, 0);
    EXPECT_ERROR(cr_concat(2, (cr_tensor *[]){a, b}, 0),
                 "cr_concat: tensor 0 f64 [2,2] and tensor 1 f64 [2,3] do not fit along dim 0");
    EXPECT_ERROR(cr_stack(2, (cr_tensor *[]){a, c}, 0),
                 "cr_stack: tensor 0 f64 [2,2] and tensor 1 f64 [1,2]");
    EXPECT_ERROR(cr_concat(0, NULL, 0), "cr_concat: needs at least one tensor");
    EXPECT_ERROR(cr_concat(2, (cr_tensor *[]){a, cr_zeros(CR_F64, CR_SHAPE(2))}, 0), "cr_concat");
}

Test(ops, split_and_chunk)
{
    cr_tensor *x = cr_reshape(cr_arange(CR_F64, 0, 14, 1), CR_SHAPE(2, 7));
    cr_tensor *out[4];
    int n = cr_split(x, 3, 1, out, 4);
    cr_assert_eq(n, 3);
    expect_shape(out[0], CR_SHAPE(2, 3));
    expect_shape(out[2], CR_SHAPE(2, 1));
    expect_values(out[1], (double[]){3, 4, 5, 10, 11, 12}, 6, 0);
    expect_values(out[2], (double[]){6, 13}, 2, 0);
    cr_assert_eq(out[1]->data, (double *)x->data + 3);
    n = cr_split(x, 1, 0, out, 4);
    cr_assert_eq(n, 2);
    expect_values(out[1], (double[]){7, 8, 9, 10, 11, 12, 13}, 7, 0);
    cr_tensor *ch[2];
    cr_tensor *y = cr_reshape(cr_arange(CR_F64, 0, 8, 1), CR_SHAPE(2, 4));
    cr_chunk(y, 2, -1, ch);
    expect_values(ch[0], (double[]){0, 1, 4, 5}, 4, 0);
    expect_values(ch[1], (double[]){2, 3, 6, 7}, 4, 0);
    EXPECT_ERROR(cr_chunk(x, 2, 1, ch), "cr_chunk: dim 1 of [2,7] does not split into 2 equal pieces");
    EXPECT_ERROR(cr_split(x, 2, 1, out, 3), "cr_split: 4 pieces do not fit in 3 outputs");
}

/* ---- indexing, masking, dropout ----------------------------------------------------------------- */

Test(ops, gather_rows)
{
    cr_tensor *table = f64(CR_SHAPE(4, 2), (double[]){0, 1, 10, 11, 20, 21, 30, 31});
    cr_tensor *idx = i32(CR_SHAPE(2, 3), (int32_t[]){3, 0, 3, 1, 1, 2});
    cr_tensor *y = cr_gather_rows(table, idx, -1);
    expect_shape(y, CR_SHAPE(2, 3, 2));
    expect_values(y, (double[]){30, 31, 0, 1, 30, 31, 10, 11, 10, 11, 20, 21}, 12, 0);
    /* 1-D table: one value per index; 0-dim index */
    cr_tensor *v = f64(CR_SHAPE(3), (double[]){5, 6, 7});
    expect_values(cr_gather_rows(v, i32(CR_SHAPE(2), (int32_t[]){2, 2}), -1), (double[]){7, 7}, 2, 0);
    cr_tensor *one = cr_gather_rows(table, i32(0, NULL, (int32_t[]){2}), -1);
    expect_shape(one, CR_SHAPE(2));
    expect_values(one, (double[]){20, 21}, 2, 0);
    /* from a transposed table */
    cr_tensor *tt = cr_transpose(f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6}), 0, 1);
    expect_values(cr_gather_rows(tt, i32(CR_SHAPE(1), (int32_t[]){2}), -1), (double[]){3, 6}, 2, 0);
    EXPECT_ERROR(cr_gather_rows(table, i32(CR_SHAPE(2), (int32_t[]){1, 4}), -1),
                 "cr_gather_rows: index 4 at position 1 is out of range for 4 rows");
    EXPECT_ERROR(cr_gather_rows(table, f64(CR_SHAPE(1), (double[]){1}), -1),
                 "cr_gather_rows: indices must be i32");
}

Test(ops, where_and_mask)
{
    cr_tensor *cond = i32(CR_SHAPE(2, 1), (int32_t[]){1, 0});
    cr_tensor *x = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *y = cr_scalar(CR_F64, -1);
    cr_tensor *w = cr_where(cond, x, y);
    expect_shape(w, CR_SHAPE(2, 3));
    expect_values(w, (double[]){1, 2, 3, -1, -1, -1}, 6, 0);
    cr_tensor *c2 = f64(CR_SHAPE(3), (double[]){0, 0.5, 0}); /* float condition: nonzero is true */
    expect_values(cr_where(c2, x, y), (double[]){-1, 2, -1, -1, 5, -1}, 6, 0);
    cr_tensor *m = f64(CR_SHAPE(3), (double[]){1, 0, 2});
    expect_values(cr_mask(x, m), (double[]){1, 0, 6, 4, 0, 12}, 6, 0);
    EXPECT_ERROR(cr_where(i32(CR_SHAPE(4), (int32_t[]){1, 1, 1, 1}), x, y),
                 "cr_where: cond [4], x [2,3], y []");
    EXPECT_ERROR(cr_mask(x, f64(CR_SHAPE(2, 2, 3), (double[12]){0})),
                 "cr_mask: mask [2,2,3] does not broadcast to x [2,3]");
}

Test(ops, dropout)
{
    int64_t n = 20000;
    cr_tensor *x = cr_full(CR_F32, CR_SHAPE(100, n / 100), 2.0);
    cr_rng r1 = cr_rng_seed(77), r2 = cr_rng_seed(77);
    cr_tensor *y1 = cr_dropout(x, 0.2, true, &r1), *y2 = cr_dropout(x, 0.2, true, &r2);
    cr_tensor *y3 = cr_dropout(x, 0.2, true, &r1); /* the stream moved on */
    int64_t zeros = 0, differ = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = cr_get_flat(y1, i);
        cr_assert(v == 0 || v == (double)(2.0f * (float)(1 / 0.8)), "value %g", v);
        zeros += v == 0;
        cr_assert_eq(v, cr_get_flat(y2, i)); /* same seed, same mask */
        differ += v != cr_get_flat(y3, i);
    }
    cr_assert(fabs((double)zeros / (double)n - 0.2) < 0.015, "dropped %g", (double)zeros / (double)n);
    cr_assert_gt(differ, n / 10);
    /* eval mode and p = 0 are the identity */
    cr_rng r3 = cr_rng_seed(1);
    cr_assert_eq(cr_dropout(x, 0.5, false, &r3), x);
    cr_assert_eq(cr_dropout(x, 0.0, true, &r3), x);
    cr_assert_eq(r3.offset, 0);
    EXPECT_ERROR(cr_dropout(x, 1.0, true, &r3), "cr_dropout: p = 1 is not in [0, 1)");
}

/* ---- cross-entropy ----------------------------------------------------------------------------- */

/* -log_softmax(logits)[r, t_r] by hand */
static double nll_row(const double *logits, int C, int t)
{
    double m = logits[0], s = 0;
    for (int c = 1; c < C; c++) m = fmax(m, logits[c]);
    for (int c = 0; c < C; c++) s += exp(logits[c] - m);
    return -(logits[t] - m - log(s));
}

Test(ops, cross_entropy)
{
    double lg[3][4] = {{1, 2, 3, 4}, {-1, 0.5, 0, 2}, {10, -10, 0, 5}};
    int32_t tg[3] = {3, 0, 2};
    cr_tensor *logits = f64(CR_SHAPE(3, 4), &lg[0][0]);
    cr_tensor *target = i32(CR_SHAPE(3), tg);
    double n0 = nll_row(lg[0], 4, 3), n1 = nll_row(lg[1], 4, 0), n2 = nll_row(lg[2], 4, 2);
    cr_tensor *mean = cr_cross_entropy(logits, target, -100, CR_MEAN);
    cr_assert_eq(mean->ndim, 0);
    cr_assert_float_eq(cr_item(mean), (n0 + n1 + n2) / 3, 1e-14);
    cr_assert_float_eq(cr_item(cr_cross_entropy(logits, target, -100, CR_SUM)), n0 + n1 + n2, 1e-14);
    /* the log-softmax op gives the same numbers */
    cr_tensor *lp = cr_log_softmax(logits, 1);
    cr_assert_float_eq(-cr_get(lp, (int64_t[]){1, 0}), n1, 1e-14);
    /* ignored targets count for nothing, in the sum and in the mean's divisor */
    cr_tensor *t2 = i32(CR_SHAPE(3), (int32_t[]){3, -100, 2});
    cr_assert_float_eq(cr_item(cr_cross_entropy(logits, t2, -100, CR_MEAN)), (n0 + n2) / 2, 1e-14);
    cr_assert_float_eq(cr_item(cr_cross_entropy(logits, t2, -100, CR_SUM)), n0 + n2, 1e-14);
    cr_tensor *t3 = i32(CR_SHAPE(3), (int32_t[]){3, 0, 0});
    cr_assert_float_eq(cr_item(cr_cross_entropy(logits, t3, 0, CR_MEAN)), n0, 1e-14); /* ignore class 0 */
    /* all ignored: the mean is NaN (as in PyTorch), the sum 0 */
    cr_tensor *t4 = i32(CR_SHAPE(3), (int32_t[]){-1, -1, -1});
    cr_assert(isnan(cr_item(cr_cross_entropy(logits, t4, -1, CR_MEAN))));
    cr_assert_eq(cr_item(cr_cross_entropy(logits, t4, -1, CR_SUM)), 0.0);
    /* 1-D logits with a 0-dim target */
    cr_tensor *l1 = f64(CR_SHAPE(4), lg[1]);
    cr_assert_float_eq(cr_item(cr_cross_entropy(l1, i32(0, NULL, (int32_t[]){0}), -100, CR_MEAN)), n1, 1e-14);
    /* f32 logits, from a transposed view */
    cr_tensor *lt = cr_transpose(
        cr_from_array(CR_F32, CR_SHAPE(4, 3), (float[]){1, -1, 10, 2, 0.5, -10, 3, 0, 0, 4, 2, 5}), 0, 1);
    cr_assert_float_eq(cr_item(cr_cross_entropy(lt, target, -100, CR_SUM)), n0 + n1 + n2, 1e-4);
    /* large logits stay finite */
    cr_tensor *huge = f64(CR_SHAPE(1, 2), (double[]){1000, 0});
    cr_assert_float_eq(cr_item(cr_cross_entropy(huge, i32(CR_SHAPE(1), (int32_t[]){1}), -100, CR_SUM)), 1000,
                       1e-9);
    EXPECT_ERROR(cr_cross_entropy(logits, i32(CR_SHAPE(3), (int32_t[]){0, 4, 1}), -100, CR_MEAN),
                 "cr_cross_entropy: target 4 at row 1 is out of range for 4 classes");
    EXPECT_ERROR(cr_cross_entropy(logits, i32(CR_SHAPE(2), (int32_t[]){0, 1}), -100, CR_MEAN),
                 "cr_cross_entropy: logits [3,4] and targets [2]");
    EXPECT_ERROR(cr_cross_entropy(logits, f64(CR_SHAPE(3), (double[]){0, 1, 2}), -100, CR_MEAN),
                 "cr_cross_entropy: targets must be i32, got f64");
}

/* ---- convolutions and pooling --------------------------------------------------------------------- */

Test(ops, conv2d)
{
    cr_tensor *x = f64(CR_SHAPE(1, 1, 3, 3), (double[]){1, 2, 3, 4, 5, 6, 7, 8, 9});
    cr_tensor *w = f64(CR_SHAPE(1, 1, 2, 2), (double[]){1, 2, 3, 4});
    cr_tensor *b = f64(CR_SHAPE(1), (double[]){0.5});
    cr_tensor *y = cr_conv2d(x, w, b, (cr_conv2d_opts){0});
    expect_shape(y, CR_SHAPE(1, 1, 2, 2));
    expect_values(y, (double[]){37.5, 47.5, 67.5, 77.5}, 4, 1e-15); /* 1+4+12+20, ... */
    /* padding 1, stride 2: the corners see 1, 2 and 4 elements of the input */
    y = cr_conv2d(x, w, NULL, (cr_conv2d_opts){.stride = {2, 2}, .padding = {1, 1}});
    expect_shape(y, CR_SHAPE(1, 1, 2, 2));
    expect_values(y, (double[]){4, 2 * 3 + 3 * 4, 4 * 2 + 7 * 4, 5 + 12 + 24 + 36}, 4, 1e-15);
    /* two output channels, each its own filter; f32 as f64 */
    cr_tensor *w2 = cr_from_array(CR_F32, CR_SHAPE(2, 1, 1, 1), (float[]){2, -1});
    y = cr_conv2d(cr_from_array(CR_F32, CR_SHAPE(1, 1, 1, 2), (float[]){3, 5}), w2, NULL,
                  (cr_conv2d_opts){0});
    cr_assert_eq(y->dtype, CR_F32);
    expect_values(y, (double[]){6, 10, -3, -5}, 4, 0);
}

Test(ops, conv1d)
{
    /* groups 2, dilation 2: channel 0 is x0[l] - x0[l+2], channel 1 2 x1[l] + x1[l+2] */
    cr_tensor *x = f64(CR_SHAPE(1, 2, 5), (double[]){1, 2, 3, 4, 5, 10, 20, 30, 40, 50});
    cr_tensor *w = f64(CR_SHAPE(2, 1, 2), (double[]){1, -1, 2, 1});
    cr_tensor *y = cr_conv1d(x, w, NULL, (cr_conv1d_opts){.dilation = 2, .groups = 2});
    expect_shape(y, CR_SHAPE(1, 2, 3));
    expect_values(y, (double[]){-2, -2, -2, 50, 80, 110}, 6, 1e-15);
    /* stride 2, padding 1, bias */
    cr_tensor *w1 = f64(CR_SHAPE(1, 2, 3), (double[]){1, 0, 0, 0, 0, 1});
    y = cr_conv1d(x, w1, f64(CR_SHAPE(1), (double[]){-1}), (cr_conv1d_opts){.stride = 2, .padding = 1});
    expect_shape(y, CR_SHAPE(1, 1, 3)); /* x0[2l-1] + x1[2l+1] - 1 */
    expect_values(y, (double[]){0 + 20 - 1, 2 + 40 - 1, 4 + 0 - 1}, 3, 1e-15);
}

Test(ops, max_and_avg_pool)
{
    cr_tensor *x = f64(CR_SHAPE(1, 1, 3, 3), (double[]){1, 2, 3, 4, 5, 6, 7, 8, 9});
    cr_tensor *y = cr_max_pool2d(x, (cr_pool2d_opts){.kernel = {2, 2}, .stride = {1, 1}});
    expect_shape(y, CR_SHAPE(1, 1, 2, 2));
    expect_values(y, (double[]){5, 6, 8, 9}, 4, 0);
    y = cr_avg_pool2d(x, (cr_pool2d_opts){.kernel = {2, 2}, .stride = {2, 2}, .padding = {1, 1}});
    expect_values(y, (double[]){1 / 4.0, 5 / 4.0, 11 / 4.0, 28 / 4.0}, 4, 1e-15); /* padding counts */
    /* stride defaults to the kernel; a [C, H, W] input */
    y = cr_max_pool2d(f64(CR_SHAPE(1, 2, 4), (double[]){1, 9, 2, 3, 4, 0, 8, 7}),
                      (cr_pool2d_opts){.kernel = {2, 2}});
    expect_shape(y, CR_SHAPE(1, 1, 2));
    expect_values(y, (double[]){9, 8}, 2, 0);
    cr_tensor *s = f64(CR_SHAPE(1, 1, 5), (double[]){1, 3, 2, 5, 4});
    y = cr_max_pool1d(s, (cr_pool1d_opts){.kernel = 2, .stride = 1});
    expect_values(y, (double[]){3, 3, 5, 5}, 4, 0);
    y = cr_max_pool1d(s, (cr_pool1d_opts){.kernel = 3, .stride = 2, .padding = 1});
    expect_values(y, (double[]){3, 5, 5}, 3, 0);
    y = cr_avg_pool1d(s, (cr_pool1d_opts){.kernel = 3, .stride = 2, .padding = 1});
    expect_values(y, (double[]){4 / 3.0, 10 / 3.0, 3}, 3, 1e-15);
}

Test(ops, max_pool_ties_go_to_the_first)
{
    cr_tensor *x = cr_tensor_init(CR_F64, CR_SHAPE(1, 1, 2, 2));
    cr_fill(x, 1.0);
    cr_requires_grad(x, true);
    cr_backward(cr_sum(cr_max_pool2d(x, (cr_pool2d_opts){.kernel = {2, 2}})));
    expect_values(x->grad, (double[]){1, 0, 0, 0}, 4, 0);
    cr_tensor_free(x);
    /* a NaN wins, as in PyTorch */
    cr_tensor *y =
        cr_max_pool1d(f64(CR_SHAPE(1, 1, 3), (double[]){1, NAN, 2}), (cr_pool1d_opts){.kernel = 3});
    cr_assert(isnan(cr_get_flat(y, 0)));
}

/* ---- recompute: a segment's outputs are those of the plain function ----------------------------- */

static void seg_affine(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    const double *k = ctx;
    cr_tensor *h = cr_tanh(cr_add_scalar(cr_mul_scalar(in[0], *k), 0.5)); /* an intermediate, released */
    out[0] = cr_mul(h, in[1]);
    out[1] = cr_sum(h);
    out[2] = in[1]; /* an input passed through */
}

Test(ops, recompute)
{
    double k = 2.0;
    cr_tensor *x = f64(CR_SHAPE(2, 2), (double[]){0.1, -0.2, 0.3, 0.4}),
              *m = f64(CR_SHAPE(2, 2), (double[]){1, 2, 3, 4});
    cr_requires_grad(x, true);
    cr_tensor *out[3];
    cr_recompute(seg_affine, &k, 2, (cr_tensor *[]){x, m}, 3, out, 0, NULL);
    double t[4];
    for (int i = 0; i < 4; i++) t[i] = tanh(2 * cr_get_flat(x, i) + 0.5);
    expect_values(out[0], (double[]){t[0] * 1, t[1] * 2, t[2] * 3, t[3] * 4}, 4, 1e-15);
    expect_values(out[1], (double[]){t[0] + t[1] + t[2] + t[3]}, 1, 1e-15);
    expect_values(out[2], (double[]){1, 2, 3, 4}, 4, 0);
    /* outputs that depend on a tensor needing a gradient record one node each */
    cr_assert_str_eq(out[0]->node->op->name, "cr_recompute");
    cr_assert_str_eq(out[1]->node->op->name, "cr_recompute");
    cr_assert(out[0]->requires_grad && out[1]->requires_grad);
    cr_assert_not(out[2]->requires_grad); /* m needs none */
    cr_assert_eq(cr_graph_node_count(graph), 2);
    /* with grad mode off, a plain call in a scope */
    cr_set_grad_enabled(false);
    cr_tensor *o2[3];
    cr_recompute(seg_affine, &k, 2, (cr_tensor *[]){x, m}, 3, o2, 0, NULL);
    cr_set_grad_enabled(true);
    expect_values(o2[0], (double[]){t[0] * 1, t[1] * 2, t[2] * 3, t[3] * 4}, 4, 1e-15);
    cr_assert_null(o2[0]->node);
    EXPECT_ERROR(cr_recompute(seg_affine, &k, 2, (cr_tensor *[]){x, NULL}, 3, out, 0, NULL),
                 "cr_recompute: input 1 is NULL");
    EXPECT_ERROR(cr_recompute(seg_affine, &k, 2, (cr_tensor *[]){x, m}, 0, out, 0, NULL),
                 "cr_recompute: 0 outputs");
}

/* ---- fused recurrent gates ------------------------------------------------------------------------ */

/* The composed LSTM and GRU formulas the fused ops replace. */
static void lstm_composed(cr_tensor *gx, cr_tensor *gh, cr_tensor *c, cr_tensor **h2, cr_tensor **c2)
{
    int64_t H = c->shape[1];
    cr_tensor *z = cr_add(gx, gh);
    cr_tensor *i = cr_sigmoid(cr_narrow(z, 1, 0, H)), *f = cr_sigmoid(cr_narrow(z, 1, H, H));
    cr_tensor *g = cr_tanh(cr_narrow(z, 1, 2 * H, H)), *o = cr_sigmoid(cr_narrow(z, 1, 3 * H, H));
    *c2 = cr_add(cr_mul(f, c), cr_mul(i, g));
    *h2 = cr_mul(o, cr_tanh(*c2));
}
static cr_tensor *gru_composed(cr_tensor *gx, cr_tensor *gh, cr_tensor *h)
{
    int64_t H = h->shape[1];
    cr_tensor *r = cr_sigmoid(cr_add(cr_narrow(gx, 1, 0, H), cr_narrow(gh, 1, 0, H)));
    cr_tensor *z = cr_sigmoid(cr_add(cr_narrow(gx, 1, H, H), cr_narrow(gh, 1, H, H)));
    cr_tensor *n = cr_tanh(cr_add(cr_narrow(gx, 1, 2 * H, H), cr_mul(r, cr_narrow(gh, 1, 2 * H, H))));
    return cr_add(n, cr_mul(z, cr_sub(h, n)));
}

Test(ops, lstm_gates)
{
    /* z = 0, c = 1: i = f = o = 1/2, g = 0, c' = 1/2, h' = tanh(1/2)/2 */
    cr_tensor *y = cr_lstm_gates(cr_zeros(CR_F64, CR_SHAPE(1, 4)), cr_zeros(CR_F64, CR_SHAPE(1, 4)),
                                 cr_full(CR_F64, CR_SHAPE(1, 1), 1.0));
    expect_shape(y, CR_SHAPE(2, 1, 1));
    expect_values(y, (double[]){0.5 * tanh(0.5), 0.5}, 2, 1e-16);
    /* the composed formula, f64 and f32, small and above the parallel threshold;
     * gx a strided time step of a projection */
    const int64_t sizes[][2] = {{3, 5}, {8, 700}};
    for (int k = 0; k < 2; k++)
        for (int d = 0; d < 2; d++) {
            cr_dtype dt = d ? CR_F32 : CR_F64;
            int64_t B = sizes[k][0], H = sizes[k][1];
            cr_tensor *proj = random_tensor(dt, CR_SHAPE(B, 3, 4 * H), 1);
            cr_tensor *gx = cr_select(proj, 1, 2), *gh = random_tensor(dt, CR_SHAPE(B, 4 * H), 2);
            cr_tensor *c = cr_mul_scalar(random_tensor(dt, CR_SHAPE(B, H), 3), 3.0), *h2, *c2;
            cr_tensor *y2 = cr_lstm_gates(gx, gh, c);
            lstm_composed(gx, gh, c, &h2, &c2);
            double tol = d ? 1e-6 : 1e-15;
            expect_close(cr_select(y2, 0, 0), h2, tol);
            expect_close(cr_select(y2, 0, 1), c2, tol);
        }
    EXPECT_ERROR(
        cr_lstm_gates(cr_zeros(CR_F64, CR_SHAPE(2, 8)), cr_zeros(CR_F64, CR_SHAPE(2, 8)),
                      cr_zeros(CR_F64, CR_SHAPE(2, 3))),
        "cr_lstm_gates: gx [2,8], gh [2,8], state [2,3]: expected gx and gh [B,4H] for a state [B,H]");
    EXPECT_ERROR(cr_lstm_gates(cr_zeros(CR_F64, CR_SHAPE(2, 8)), cr_zeros(CR_F32, CR_SHAPE(2, 8)),
                               cr_zeros(CR_F64, CR_SHAPE(2, 2))),
                 "cr_lstm_gates: f64 [2,8] and f32 [2,8]");
}

Test(ops, gru_gates)
{
    /* gx = gh = 0, h = 1: r = z = 1/2, n = 0, h' = 1/2 */
    cr_tensor *y = cr_gru_gates(cr_zeros(CR_F64, CR_SHAPE(1, 3)), cr_zeros(CR_F64, CR_SHAPE(1, 3)),
                                cr_full(CR_F64, CR_SHAPE(1, 1), 1.0));
    expect_shape(y, CR_SHAPE(1, 1));
    expect_values(y, (double[]){0.5}, 1, 1e-16);
    const int64_t sizes[][2] = {{3, 5}, {8, 700}};
    for (int k = 0; k < 2; k++)
        for (int d = 0; d < 2; d++) {
            cr_dtype dt = d ? CR_F32 : CR_F64;
            int64_t B = sizes[k][0], H = sizes[k][1];
            cr_tensor *proj = random_tensor(dt, CR_SHAPE(B, 3, 3 * H), 4);
            cr_tensor *gx = cr_select(proj, 1, 0), *gh = random_tensor(dt, CR_SHAPE(B, 3 * H), 5);
            cr_tensor *h = random_tensor(dt, CR_SHAPE(B, H), 6);
            expect_close(cr_gru_gates(gx, gh, h), gru_composed(gx, gh, h), d ? 1e-6 : 1e-15);
        }
    EXPECT_ERROR(
        cr_gru_gates(cr_zeros(CR_F64, CR_SHAPE(2, 6)), cr_zeros(CR_F64, CR_SHAPE(3, 6)),
                     cr_zeros(CR_F64, CR_SHAPE(2, 2))),
        "cr_gru_gates: gx [2,6], gh [3,6], state [2,2]: expected gx and gh [B,3H] for a state [B,H]");
}

/* The f32 gate kernels of every instruction set this CPU has (baseline,
 * AVX2, AVX-512) give the same bits, forward and backward (written and
 * added-to targets), on values across the clamps and the tanh series'
 * range, with a row length that leaves a vector tail. */
static void gates_run(bool lstm, bool baseline, int64_t B, int64_t H, bool first, cr_tensor **res)
{
    int G = lstm ? 4 : 3, n_act = lstm ? 5 : 4;
    cr_tensor *gx = random_tensor(CR_F32, CR_SHAPE(B, G * H), 7),
              *gh = random_tensor(CR_F32, CR_SHAPE(B, G * H), 8);
    cr_tensor *s = random_tensor(CR_F32, CR_SHAPE(B, H), 9);
    float *x = gx->data, *y = gh->data;
    for (int64_t k = 0; k < B * G * H; k++) { /* |z| from 1e-3 to ~100: series, body and clamps */
        x[k] *= (float)pow(10.0, (double)(k % 6) - 3.0);
        y[k] *= 0.5f;
    }
    cr_tensor *out = lstm ? cr_zeros(CR_F32, CR_SHAPE(2, B, H)) : cr_zeros(CR_F32, CR_SHAPE(B, H));
    cr_tensor *act = cr_zeros(CR_F32, CR_SHAPE(n_act, B, H));
    cr_tensor *dy =
        lstm ? random_tensor(CR_F32, CR_SHAPE(2, B, H), 10) : random_tensor(CR_F32, CR_SHAPE(B, H), 10);
    cr_tensor *dgx = random_tensor(CR_F32, CR_SHAPE(B, G * H), 11),
              *dgh = random_tensor(CR_F32, CR_SHAPE(B, G * H), 12);
    cr_tensor *ds = random_tensor(CR_F32, CR_SHAPE(B, H), 13);
    bool old = cr_gates_baseline;
    cr_gates_baseline = baseline;
    if (lstm) {
        cr_k_lstm_gates(out, act, gx, gh, s);
        cr_k_lstm_gates_backward(dgx, first, dgh, first, ds, first, dy, act, s);
    } else {
        cr_k_gru_gates(out, act, gx, gh, s);
        cr_k_gru_gates_backward(dgx, first, dgh, first, ds, first, dy, act, s);
    }
    cr_gates_baseline = old;
    res[0] = out;
    res[1] = act;
    res[2] = dgx;
    res[3] = dgh;
    res[4] = ds;
}

Test(ops, gate_kernels_give_the_same_bits_in_every_instruction_set)
{
    cr_graph *g = cr_graph_init(), *prev = cr_graph_use(g);
    for (int lstm = 0; lstm < 2; lstm++)
        for (int first = 0; first < 2; first++) {
            cr_tensor *a[5], *b[5];
            gates_run(lstm, true, 5, 37, first, a);
            gates_run(lstm, false, 5, 37, first, b);
            for (int k = 0; k < 5; k++)
                cr_assert(memcmp(a[k]->data, b[k]->data, (size_t)cr_numel(a[k]) * sizeof(float)) == 0,
                          "%s gates, first=%d: result %d differs between the baseline and the CPU's build",
                          lstm ? "lstm" : "gru", first, k);
        }
    cr_graph_use(prev);
    cr_graph_free(g);
}

/* ---- every op above is in the table --------------------------------------------------------------- */

Test(ops, op_table_is_complete_and_findable)
{
    /* the unary ops are tested through the cases of tests/unary_cases.h */
    const char *tested[] = {
        "add",         "sub",        "mul",           "div",        "maximum",  "minimum",     "sum",
        "mean",        "sum_dim",    "mean_dim",      "max_dim",    "softmax",  "log_softmax", "matmul",
        "matmul_bias", "weight_t",   "reshape",       "transpose",  "permute",  "narrow",      "select",
        "expand",      "unsqueeze",  "contiguous",    "concat",     "stack",    "gather_rows", "where",
        "mask",        "dropout",    "cross_entropy", "conv1d",     "conv2d",   "max_pool1d",  "max_pool2d",
        "avg_pool1d",  "avg_pool2d", "recompute",     "lstm_gates", "gru_gates"};
    size_t n_tested = sizeof tested / sizeof tested[0], count;
    const cr_op *unary_ops[N_UNARY_CASES];
    cr_tensor *x = cr_tensor_init(CR_F64, CR_SHAPE(2));
    cr_fill(x, 0.75);
    cr_requires_grad(x, true);
    for (size_t i = 0; i < N_UNARY_CASES; i++) unary_ops[i] = unary_case_op(&unary_cases[i], x);
    cr_tensor_free(x);
    const cr_op *const *table = cr_op_table(&count);
    for (size_t i = 0; i < count; i++) {
        bool found = false;
        for (size_t j = 0; j < n_tested; j++) found |= strcmp(table[i]->name + 3, tested[j]) == 0;
        for (size_t j = 0; j < N_UNARY_CASES; j++) found |= unary_ops[j] == table[i];
        cr_assert(found,
                  "op '%s' has no forward test in test_ops.c (a unary op: a line in tests/unary_cases.h)",
                  table[i]->name);
        cr_assert(strncmp(table[i]->name, "cr_", 3) == 0, "op '%s' is not named by its public function",
                  table[i]->name);
        cr_assert_eq(cr_op_find(table[i]->name), table[i]);
        cr_assert_not_null(table[i]->forward);
        cr_assert_not_null(table[i]->backward);
        for (size_t k = 0; k < i; k++) cr_assert_str_neq(table[k]->name, table[i]->name);
    }
    cr_assert_null(cr_op_find("no_such_op"));
}
