/*
 * The tensor module on its own (no graphs): creation, dtypes, strided views and
 * copies, broadcasting, the Philox RNG, printing, arenas, cr_k_gemm against a
 * naive loop, reductions, softmax and the error path.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel/tensor.h"
#include "expect_error.h"

/* ---- fixture: every test runs with a private current arena ---------------- */

static cr_arena *arena;

static void setup(void)
{
    arena = cr_arena_init(0);
    cr_arena_use(arena);
}

static void teardown(void)
{
    cr_arena_use(NULL);
    cr_arena_free(arena);
}

TestSuite(tensor, .init = setup, .fini = teardown);

/* ---- helpers -------------------------------------------------------------- */

static cr_tensor *f64(int ndim, const int64_t *shape, const double *v)
{
    return cr_from_array(CR_F64, ndim, shape, v);
}

static void expect_values(const cr_tensor *t, const double *want, int64_t n, double tol)
{
    cr_assert_eq(cr_numel(t), n, "numel %lld, expected %lld", (long long)cr_numel(t), (long long)n);
    for (int64_t i = 0; i < n; i++) {
        double got = cr_get_flat(t, i);
        cr_assert(fabs(got - want[i]) <= tol || (isnan(got) && isnan(want[i])),
                  "element %lld: got %.17g, expected %.17g", (long long)i, got, want[i]);
    }
}

static void expect_shape(const cr_tensor *t, int ndim, const int64_t *shape)
{
    cr_assert_eq(t->ndim, ndim, "ndim %d, expected %d", t->ndim, ndim);
    for (int d = 0; d < ndim; d++)
        cr_assert_eq(t->shape[d], shape[d], "dim %d is %lld, expected %lld", d, (long long)t->shape[d],
                     (long long)shape[d]);
}

static void expect_strides(const cr_tensor *t, const int64_t *stride)
{
    for (int d = 0; d < t->ndim; d++)
        cr_assert_eq(t->stride[d], stride[d], "stride %d is %lld, expected %lld", d, (long long)t->stride[d],
                     (long long)stride[d]);
}

/* ---- creation and dtypes ---------------------------------------------------- */

Test(tensor, dtypes)
{
    cr_assert_eq(cr_dtype_size(CR_F32), 4);
    cr_assert_eq(cr_dtype_size(CR_F64), 8);
    cr_assert_eq(cr_dtype_size(CR_I32), 4);
    cr_assert_str_eq(cr_dtype_name(CR_F32), "f32");
    cr_assert_str_eq(cr_dtype_name(CR_F64), "f64");
    cr_assert_str_eq(cr_dtype_name(CR_I32), "i32");
}

Test(tensor, zeros_ones_full_in_every_dtype)
{
    cr_dtype dts[3] = {CR_F32, CR_F64, CR_I32};
    for (int k = 0; k < 3; k++) {
        cr_tensor *z = cr_zeros(dts[k], CR_SHAPE(2, 3));
        cr_tensor *o = cr_ones(dts[k], CR_SHAPE(2, 3));
        cr_tensor *f = cr_full(dts[k], CR_SHAPE(4), -7.0);
        cr_assert_eq(z->dtype, dts[k]);
        expect_shape(z, CR_SHAPE(2, 3));
        expect_strides(z, (int64_t[]){3, 1});
        cr_assert(cr_is_contiguous(z));
        cr_assert_eq(cr_numel(z), 6);
        cr_assert_null(z->owned);
        cr_assert_not(z->persistent);
        for (int64_t i = 0; i < 6; i++) {
            cr_assert_eq(cr_get_flat(z, i), 0.0);
            cr_assert_eq(cr_get_flat(o, i), 1.0);
        }
        expect_values(f, (double[]){-7, -7, -7, -7}, 4, 0);
    }
    /* the fill really is per dtype: 0.1 rounds differently in f32 and f64 */
    cr_assert_eq(cr_item(cr_full(CR_F32, CR_SHAPE(1), 0.1)), (double)0.1f);
    cr_assert_eq(cr_item(cr_full(CR_F64, CR_SHAPE(1), 0.1)), 0.1);
    cr_assert_eq(cr_item(cr_full(CR_I32, CR_SHAPE(1), 2.9)), 2.0); /* truncation */
}

Test(tensor, scalar_is_zero_dim)
{
    cr_tensor *s = cr_scalar(CR_F64, 2.5);
    cr_assert_eq(s->ndim, 0);
    cr_assert_eq(cr_numel(s), 1);
    cr_assert(cr_is_contiguous(s));
    cr_assert_eq(cr_item(s), 2.5);
    cr_assert_eq(cr_get(s, NULL), 2.5);
}

Test(tensor, arange)
{
    cr_tensor *a = cr_arange(CR_F64, 0, 5, 1);
    expect_shape(a, CR_SHAPE(5));
    expect_values(a, (double[]){0, 1, 2, 3, 4}, 5, 0);
    cr_tensor *b = cr_arange(CR_F32, 1, 2, 0.25);
    expect_values(b, (double[]){1, 1.25, 1.5, 1.75}, 4, 0);
    cr_tensor *c = cr_arange(CR_I32, 10, 0, -3);
    expect_values(c, (double[]){10, 7, 4, 1}, 4, 0);
    cr_tensor *e = cr_arange(CR_F64, 3, 3, 1); /* empty */
    expect_shape(e, CR_SHAPE(0));
    cr_tensor *r = cr_arange(CR_F64, 0, 1, 0.1); /* NumPy gives 10 elements */
    cr_assert_eq(cr_numel(r), 10);
    EXPECT_ERROR(cr_arange(CR_F64, 0, 1, 0), "cr_arange");
}

Test(tensor, from_array_copies)
{
    float src[6] = {1, 2, 3, 4, 5, 6};
    cr_tensor *t = cr_from_array(CR_F32, CR_SHAPE(2, 3), src);
    src[0] = 100;
    cr_assert_eq(cr_get(t, (int64_t[]){0, 0}), 1.0);
    cr_assert_eq(cr_get(t, (int64_t[]){1, 2}), 6.0);
    int32_t isrc[3] = {-1, 0, 7};
    cr_tensor *i = cr_from_array(CR_I32, CR_SHAPE(3), isrc);
    expect_values(i, (double[]){-1, 0, 7}, 3, 0);
    /* an empty tensor needs no data */
    cr_tensor *e = cr_from_array(CR_F64, CR_SHAPE(0, 4), NULL);
    cr_assert_eq(cr_numel(e), 0);
}

Test(tensor, persistent_tensors)
{
    cr_tensor *p = cr_tensor_init(CR_F64, CR_SHAPE(3, 4));
    cr_assert(p->persistent);
    cr_assert_not_null(p->owned);
    cr_assert_eq(p->data, p->owned);
    for (int64_t i = 0; i < 12; i++) cr_assert_eq(cr_get_flat(p, i), 0.0);
    cr_set(p, (int64_t[]){2, 3}, 5);
    cr_assert_eq(cr_get_flat(p, 11), 5.0);
    /* an alias shares storage but owns nothing */
    cr_tensor *a = cr_tensor_alias(p);
    cr_assert_eq(a->data, p->data);
    cr_assert_null(a->owned);
    cr_assert_not(a->persistent);
    cr_tensor_free(p);
    cr_tensor_free(NULL);
    cr_tensor *e = cr_tensor_init(CR_I32, CR_SHAPE(0));
    cr_tensor_free(e);
    EXPECT_ERROR(cr_tensor_free(a), "cr_tensor_free: tensor [3,4] is not persistent");
    EXPECT_ERROR(cr_tensor_free(cr_zeros(CR_F32, CR_SHAPE(2))), "not persistent");
}

Test(tensor, get_set_and_item)
{
    cr_tensor *t = cr_zeros(CR_F64, CR_SHAPE(2, 3, 4));
    cr_set(t, (int64_t[]){1, 2, 3}, 9);
    cr_assert_eq(cr_get_flat(t, 23), 9.0);
    cr_set_flat(t, 5, -1);
    cr_assert_eq(cr_get(t, (int64_t[]){0, 1, 1}), -1.0);
    EXPECT_ERROR(cr_get(t, (int64_t[]){0, 3, 0}), "[2,3,4]");
    EXPECT_ERROR(cr_get_flat(t, 24), "out of range");
    EXPECT_ERROR(cr_item(t), "cr_item: tensor of shape [2,3,4] has 24 elements");
}

Test(tensor, bad_shapes_are_reported)
{
    EXPECT_ERROR(cr_zeros(CR_F32, CR_SHAPE(2, -3)), "negative size in shape [2,-3]");
    EXPECT_ERROR(cr_tensor_new(CR_F32, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}), "9 dims");
}

/* ---- views --------------------------------------------------------------------- */

Test(tensor, reshape_of_contiguous_shares_storage)
{
    cr_tensor *t = cr_arange(CR_F64, 0, 12, 1);
    cr_tensor v;
    cr_view_reshape(&v, t, CR_SHAPE(3, -1));
    expect_shape(&v, CR_SHAPE(3, 4));
    expect_strides(&v, (int64_t[]){4, 1});
    cr_assert_eq(v.data, t->data);
    cr_set(&v, (int64_t[]){2, 1}, 99);
    cr_assert_eq(cr_get_flat(t, 9), 99.0);
    cr_tensor w;
    EXPECT_ERROR(cr_view_reshape(&w, &v, 0, NULL), "cannot become []"); /* 12 elements are no scalar */
}

Test(tensor, reshape_errors)
{
    cr_tensor *t = cr_zeros(CR_F64, CR_SHAPE(3, 4));
    cr_tensor v, tr;
    EXPECT_ERROR(cr_view_reshape(&v, t, CR_SHAPE(5, 2)),
                 "cr_reshape: [3,4] (12 elements) cannot become [5,2]");
    EXPECT_ERROR(cr_view_reshape(&v, t, CR_SHAPE(-1, -1)), "more than one -1");
    EXPECT_ERROR(cr_view_reshape(&v, t, CR_SHAPE(-1, 5)), "cannot become [-1,5]");
    cr_view_transpose(&tr, t, 0, 1);
    EXPECT_ERROR(cr_view_reshape(&v, &tr, CR_SHAPE(12)), "not contiguous");
}

Test(tensor, reshape_to_scalar_and_empty)
{
    cr_tensor *one = cr_full(CR_F32, CR_SHAPE(1, 1), 4);
    cr_tensor v;
    cr_view_reshape(&v, one, 0, NULL);
    cr_assert_eq(v.ndim, 0);
    cr_assert_eq(cr_item(&v), 4.0);
    cr_tensor *e = cr_zeros(CR_F32, CR_SHAPE(0, 3));
    cr_view_reshape(&v, e, CR_SHAPE(3, 0, 5));
    expect_shape(&v, CR_SHAPE(3, 0, 5));
    cr_view_reshape(&v, e, CR_SHAPE(-1, 3));
    expect_shape(&v, CR_SHAPE(0, 3));
}

Test(tensor, transpose_and_permute_are_views)
{
    cr_tensor *t = cr_arange(CR_F64, 0, 24, 1), v3, tr, p;
    cr_view_reshape(&v3, t, CR_SHAPE(2, 3, 4));
    cr_view_transpose(&tr, &v3, 0, -1);
    expect_shape(&tr, CR_SHAPE(4, 3, 2));
    expect_strides(&tr, (int64_t[]){1, 4, 12});
    cr_assert_not(cr_is_contiguous(&tr));
    cr_assert_eq(tr.data, t->data);
    cr_assert_eq(cr_get(&tr, (int64_t[]){3, 1, 1}), 12 + 4 + 3.0);
    cr_view_permute(&p, &v3, (int[]){1, 2, 0});
    expect_shape(&p, CR_SHAPE(3, 4, 2));
    expect_strides(&p, (int64_t[]){4, 1, 12});
    cr_assert_eq(cr_get(&p, (int64_t[]){2, 3, 1}), 12 + 8 + 3.0);
    cr_set(&p, (int64_t[]){0, 0, 1}, -5);
    cr_assert_eq(cr_get_flat(t, 12), -5.0);
    EXPECT_ERROR(cr_view_permute(&p, &v3, (int[]){0, 0, 1}), "cr_permute");
    EXPECT_ERROR(cr_view_transpose(&tr, &v3, 0, 3), "cr_transpose: dim 3 out of range for 3 dims");
}

Test(tensor, narrow_and_select_are_views)
{
    cr_tensor *t = cr_arange(CR_F64, 0, 20, 1), m, n, s, s2;
    cr_view_reshape(&m, t, CR_SHAPE(4, 5));
    cr_view_narrow(&n, &m, 1, 1, 3); /* columns 1..3 */
    expect_shape(&n, CR_SHAPE(4, 3));
    expect_strides(&n, (int64_t[]){5, 1});
    cr_assert_not(cr_is_contiguous(&n));
    cr_assert_eq((double *)n.data, (double *)t->data + 1);
    expect_values(&n, (double[]){1, 2, 3, 6, 7, 8, 11, 12, 13, 16, 17, 18}, 12, 0);
    cr_view_select(&s, &n, 0, -1); /* last row of the narrow */
    expect_shape(&s, CR_SHAPE(3));
    expect_values(&s, (double[]){16, 17, 18}, 3, 0);
    cr_view_select(&s2, &n, 1, 2); /* a column: stride 5 */
    expect_strides(&s2, (int64_t[]){5});
    expect_values(&s2, (double[]){3, 8, 13, 18}, 4, 0);
    cr_set_flat(&s2, 0, -3);
    cr_assert_eq(cr_get_flat(t, 3), -3.0);
    cr_view_narrow(&n, &m, 0, 4, 0); /* empty narrow at the end is fine */
    cr_assert_eq(cr_numel(&n), 0);
    EXPECT_ERROR(cr_view_narrow(&n, &m, 1, 3, 3),
                 "cr_narrow: start 3, length 3 out of range for dim 1 of [4,5]");
    EXPECT_ERROR(cr_view_select(&s, &m, 0, 4), "cr_select: index 4 out of range for dim 0 of [4,5]");
    EXPECT_ERROR(cr_view_select(&s, &m, 0, -5), "cr_select");
}

Test(tensor, expand_is_a_stride_zero_view)
{
    cr_tensor *t = f64(CR_SHAPE(3, 1), (double[]){1, 2, 3}), e, e2;
    cr_view_expand(&e, t, CR_SHAPE(2, 3, 4));
    expect_shape(&e, CR_SHAPE(2, 3, 4));
    expect_strides(&e, (int64_t[]){0, 1, 0});
    cr_assert_eq(e.data, t->data);
    for (int64_t i = 0; i < 24; i++) cr_assert_eq(cr_get_flat(&e, i), (double)((i / 4) % 3 + 1));
    cr_view_expand(&e2, t, CR_SHAPE(3, 1)); /* same shape: unchanged */
    expect_strides(&e2, (int64_t[]){1, 1});
    EXPECT_ERROR(cr_view_expand(&e, t, CR_SHAPE(2, 4)), "cr_expand: cannot expand [3,1] to [2,4]");
    EXPECT_ERROR(cr_view_expand(&e, t, CR_SHAPE(3)), "cr_expand");
    EXPECT_ERROR(cr_view_expand(&e, t, CR_SHAPE(3, -1)), "cr_expand");
}

Test(tensor, views_of_views)
{
    /* select(narrow(transpose(x))) reads the right elements */
    cr_tensor *t = cr_arange(CR_F32, 0, 60, 1), x, tr, n, s;
    cr_view_reshape(&x, t, CR_SHAPE(3, 4, 5));
    cr_view_transpose(&tr, &x, 0, 2); /* [5,4,3] */
    cr_view_narrow(&n, &tr, 0, 2, 2); /* [2,4,3] */
    cr_view_select(&s, &n, 1, 3);     /* [2,3] */
    expect_shape(&s, CR_SHAPE(2, 3));
    for (int64_t a = 0; a < 2; a++)
        for (int64_t c = 0; c < 3; c++)
            cr_assert_eq(cr_get(&s, (int64_t[]){a, c}), (double)(c * 20 + 3 * 5 + (a + 2)));
    cr_tensor *cc = cr_contiguous_copy(&s);
    cr_assert(cr_is_contiguous(cc));
    cr_assert_neq(cc->data, s.data);
    expect_values(cc, (double[]){17, 37, 57, 18, 38, 58}, 6, 0);
}

Test(tensor, contiguity)
{
    cr_tensor *t = cr_zeros(CR_F32, CR_SHAPE(4, 1, 3)), v;
    cr_assert(cr_is_contiguous(t));
    cr_view_transpose(&v, t, 0, 1); /* moving a size-1 dim keeps the layout */
    cr_assert(cr_is_contiguous(&v));
    cr_view_narrow(&v, t, 0, 1, 2); /* rows are still dense */
    cr_assert(cr_is_contiguous(&v));
    cr_view_narrow(&v, t, 2, 0, 2);
    cr_assert_not(cr_is_contiguous(&v));
}

Test(tensor, copies_between_layouts_and_dtypes)
{
    cr_tensor *a = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6}), at;
    cr_view_transpose(&at, a, 0, 1);
    cr_tensor *f = cr_zeros(CR_F32, CR_SHAPE(3, 2));
    cr_copy_(f, &at);
    expect_values(f, (double[]){1, 4, 2, 5, 3, 6}, 6, 0);
    cr_tensor *i = cr_zeros(CR_I32, CR_SHAPE(3, 2));
    cr_copy_(i, &at);
    expect_values(i, (double[]){1, 4, 2, 5, 3, 6}, 6, 0);
    /* into a strided destination */
    cr_tensor *d = cr_zeros(CR_F64, CR_SHAPE(3, 2)), dt;
    cr_view_transpose(&dt, d, 0, 1);
    cr_copy_(&dt, a);
    expect_values(d, (double[]){1, 4, 2, 5, 3, 6}, 6, 0);
    EXPECT_ERROR(cr_copy_(f, a), "cr_copy_: destination [3,2] and source [2,3] differ in shape");
    cr_tensor *scaled = cr_zeros(CR_F64, CR_SHAPE(3, 2));
    cr_k_scale(scaled, f, -0.5); /* f32 in, f64 out */
    expect_values(scaled, (double[]){-0.5, -2, -1, -2.5, -1.5, -3}, 6, 0);
    /* a strided fill touches only the view */
    cr_tensor col;
    cr_view_select(&col, d, 1, 0);
    cr_fill(&col, 0);
    expect_values(d, (double[]){0, 4, 0, 5, 0, 6}, 6, 0);
}

Test(tensor, strided_copies_convert_every_dtype_pair)
{
    /* every (dst, src) dtype pair, from a transposed source into a transposed destination */
    cr_dtype dts[3] = {CR_F32, CR_F64, CR_I32};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            cr_tensor *src = cr_tensor_new(dts[j], CR_SHAPE(2, 3)), st, dt;
            for (int64_t k = 0; k < 6; k++) cr_set_flat(src, k, (double)(k * 3 - 7));
            cr_view_transpose(&st, src, 0, 1);
            cr_tensor *dst = cr_zeros(dts[i], CR_SHAPE(2, 3));
            cr_view_transpose(&dt, dst, 0, 1);
            cr_copy_(&dt, &st);
            expect_values(dst, (double[]){-7, -4, -1, 2, 5, 8}, 6, 0);
        }
    /* a parallel-sized strided copy, and a copy of an expanded (stride 0) source */
    int64_t n = 300;
    cr_tensor *big = cr_tensor_new(CR_F32, CR_SHAPE(n, n)), bt;
    cr_rng r = cr_rng_seed(3);
    cr_fill_uniform(big, &r, -1, 1);
    cr_view_transpose(&bt, big, 0, 1);
    cr_tensor *c = cr_contiguous_copy(&bt);
    for (int64_t i = 0; i < n; i += 13)
        for (int64_t j = 0; j < n; j += 7)
            cr_assert_eq(cr_get(c, (int64_t[]){i, j}), cr_get(big, (int64_t[]){j, i}));
    cr_tensor *col = f64(CR_SHAPE(3, 1), (double[]){1, 2, 3}), e;
    cr_view_expand(&e, col, CR_SHAPE(3, 4));
    expect_values(cr_contiguous_copy(&e), (double[]){1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3}, 12, 0);
    cr_copy_(cr_tensor_new(CR_F64, CR_SHAPE(0, 3)), cr_zeros(CR_F64, CR_SHAPE(0, 3))); /* empty */
}

/* A matrix copied from its transpose (f32 and f64 by transpose.c's tiles, i32
 * by the general loop): every element, for sizes that are not multiples of
 * the tile, a destination with padded rows, each element size, and a size
 * that runs on threads. */
Test(tensor, transposed_copies_hit_every_element)
{
    cr_dtype dts[3] = {CR_F32, CR_F64, CR_I32};
    int64_t sizes[][2] = {{33, 70}, {64, 32}, {97, 31}, {700, 650}};
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < 4; s++) {
            int64_t R = sizes[s][0], Q = sizes[s][1];
            cr_tensor *src = cr_tensor_new(dts[d], CR_SHAPE(Q, R)), st, dv;
            for (int64_t k = 0; k < Q * R; k++) cr_set_flat(src, k, (double)(k % 1000003));
            cr_view_transpose(&st, src, 0, 1);
            cr_tensor *dst = cr_full(dts[d], CR_SHAPE(R, Q + 5), -1); /* rows padded by 5 */
            cr_view_narrow(&dv, dst, 1, 0, Q);
            cr_copy_(&dv, &st);
            for (int64_t i = 0; i < R; i++) {
                for (int64_t j = 0; j < Q; j++)
                    if (cr_get(dst, (int64_t[]){i, j}) != cr_get(src, (int64_t[]){j, i}))
                        cr_assert_fail("dtype %d, %lldx%lld: [%lld,%lld]", d, (long long)R, (long long)Q,
                                       (long long)i, (long long)j);
                for (int64_t j = Q; j < Q + 5; j++) cr_assert_eq(cr_get(dst, (int64_t[]){i, j}), -1);
            }
        }
}

Test(tensor, unsqueeze_view)
{
    cr_tensor *t = cr_arange(CR_F64, 0, 6, 1), x, u, tr;
    cr_view_reshape(&x, t, CR_SHAPE(2, 3));
    cr_view_unsqueeze(&u, &x, 1);
    expect_shape(&u, CR_SHAPE(2, 1, 3));
    expect_strides(&u, (int64_t[]){3, 3, 1});
    cr_view_unsqueeze(&u, &x, -1);
    expect_shape(&u, CR_SHAPE(2, 3, 1));
    expect_strides(&u, (int64_t[]){3, 1, 1});
    cr_view_transpose(&tr, &x, 0, 1);
    cr_view_unsqueeze(&u, &tr, 0); /* in place of its source too */
    cr_view_unsqueeze(&u, &u, 2);
    expect_shape(&u, CR_SHAPE(1, 3, 1, 2));
    expect_values(&u, (double[]){0, 3, 1, 4, 2, 5}, 6, 0);
    EXPECT_ERROR(cr_view_unsqueeze(&u, &x, 3), "cr_unsqueeze: dim 3 out of range for 3 dims");
}

/* ---- versions ---------------------------------------------------------------------- */

Test(tensor, api_writes_bump_the_shared_version)
{
    cr_tensor *p = cr_tensor_init(CR_F32, CR_SHAPE(4, 3)), v, w;
    cr_assert_eq(cr_tensor_version(p), 0);
    cr_view_narrow(&v, p, 0, 1, 2);
    cr_view_transpose(&w, &v, 0, 1);
    uint64_t n = 0;
    cr_fill(&w, 1);
    cr_assert_eq(cr_tensor_version(p), ++n); /* a write through a view of a view */
    cr_set(p, (int64_t[]){0, 0}, 2);
    cr_assert_eq(cr_tensor_version(&v), ++n);
    cr_set_flat(&v, 1, 3);
    cr_copy_(&w, cr_zeros(CR_F64, CR_SHAPE(3, 2)));
    n += 2;
    cr_rng r = cr_rng_seed(1);
    cr_fill_uniform(p, &r, 0, 1);
    cr_fill_normal(&v, &r, 0, 1);
    cr_fill_dropout_mask(p, &r, 0.5);
    n += 3;
    cr_assert_eq(cr_tensor_version(&w), n);
    cr_tensor_bump_version(&w);
    cr_assert_eq(cr_tensor_version(p), n + 1);
    /* reads and fresh storages do not count */
    cr_get_flat(p, 0);
    cr_assert_eq(cr_tensor_version(p), n + 1);
    cr_assert_eq(cr_tensor_version(cr_contiguous_copy(p)), 1); /* made by one cr_copy_ */
    cr_assert_eq(cr_tensor_version(cr_tensor_new(CR_F32, CR_SHAPE(2))), 0);
    cr_tensor_free(p);
}

/* ---- overflow-checked sizes ------------------------------------------------------------ */

#define P32 ((int64_t)1 << 32)

Test(tensor, element_counts_that_overflow_are_refused)
{
    /* [2^32, 2^32] has 2^64 elements: used to wrap to 0 and allocate nothing */
    EXPECT_ERROR(
        cr_tensor_init(CR_F32, CR_SHAPE(P32, P32)),
        "cr_tensor_init: shape [4294967296,4294967296] of f32 holds more elements than memory can address");
    EXPECT_ERROR(cr_zeros(CR_F32, CR_SHAPE(P32, P32)), "cr_zeros: shape [4294967296,4294967296]");
    EXPECT_ERROR(cr_tensor_new(CR_F64, CR_SHAPE(3, P32, P32)),
                 "cr_tensor_new: shape [3,4294967296,4294967296]");
    EXPECT_ERROR(cr_ones(CR_F64, CR_SHAPE(P32 / 2, P32 / 2, 2)), "cr_ones"); /* 2^63 elements */
    EXPECT_ERROR(cr_full(CR_F64, CR_SHAPE(P32 / 4, P32 / 4, 8), 1),
                 "cr_full"); /* 2^61 elements, 2^64 bytes */
    EXPECT_ERROR(cr_from_array(CR_I32, CR_SHAPE(INT64_MAX, 2), NULL), "cr_from_array");
    EXPECT_ERROR(cr_tensor_init(CR_F32, CR_SHAPE(0, P32, P32)),
                 "cr_tensor_init"); /* no elements, but no strides */
    /* a large empty shape whose strides fit is fine */
    cr_tensor *e = cr_zeros(CR_F32, CR_SHAPE(1 << 20, 1 << 20, 0));
    cr_assert_eq(cr_numel(e), 0);
    cr_assert_eq(cr_shape_numel(CR_SHAPE(P32, P32)), -1);
    cr_assert_eq(cr_shape_numel(CR_SHAPE(P32, 0, 7)), 0);
    cr_assert_eq(cr_shape_numel(CR_SHAPE(P32, 2)), 2 * P32);
    int64_t out = 5;
    cr_assert_not(cr_mul_ok(INT64_MAX / 2 + 1, 2, &out));
    cr_assert_not(cr_add_ok(INT64_MAX, 1, &out));
    cr_assert_not(cr_add_ok(INT64_MIN, -1, &out));
    cr_assert_eq(out, 5);
    cr_assert(cr_add_ok(INT64_MAX, -1, &out) && out == INT64_MAX - 1);
}

Test(tensor, view_ranges_that_overflow_are_refused)
{
    cr_tensor *x = cr_zeros(CR_F32, CR_SHAPE(2, 3)), v;
    /* start + len overflows: the check used to pass and return [2,INT64_MAX] */
    EXPECT_ERROR(cr_view_narrow(&v, x, 1, 1, INT64_MAX),
                 "cr_narrow: start 1, length 9223372036854775807 out of range "
                 "for dim 1 of [2,3]");
    EXPECT_ERROR(cr_view_narrow(&v, x, 1, INT64_MAX, 1), "cr_narrow: start 9223372036854775807");
    EXPECT_ERROR(cr_view_narrow(&v, x, 1, 4, -1), "cr_narrow");
    EXPECT_ERROR(cr_view_select(&v, x, 1, INT64_MIN), "cr_select: index -9223372036854775808 out of range");
    EXPECT_ERROR(cr_view_select(&v, x, 1, INT64_MAX), "cr_select");
    /* an expand whose element count does not fit in 63 bits */
    cr_tensor *one = cr_zeros(CR_F32, CR_SHAPE(1, 1));
    EXPECT_ERROR(cr_view_expand(&v, one, CR_SHAPE(P32, P32)),
                 "cr_expand: [1,1] expanded to [4294967296,4294967296] has more than 2^63 elements");
    cr_view_expand(&v, one, CR_SHAPE(P32, P32 / 4)); /* 2^62: fine, it costs no memory */
    cr_assert_eq(cr_numel(&v), (int64_t)1 << 62);
    /* reshape sizes whose product overflows */
    EXPECT_ERROR(cr_view_reshape(&v, x, CR_SHAPE(P32, P32, -1)),
                 "cr_reshape: [2,3] (6 elements) cannot become");
    EXPECT_ERROR(cr_view_reshape(&v, x, CR_SHAPE(P32, P32, 0, 6)), "cr_reshape");
}

Test(tensor, arange_counts_that_overflow_are_refused)
{
    EXPECT_ERROR(cr_arange(CR_F32, 0, 1e300, 1),
                 "cr_arange: start 0, stop 1e+300, step 1 give 1e+300 elements");
    EXPECT_ERROR(cr_arange(CR_F64, -1e308, 1e308, 1), "cr_arange"); /* stop - start is inf */
    EXPECT_ERROR(cr_arange(CR_F64, 0, 0x1p62, 0.5), "cr_arange");
    cr_assert_eq(cr_numel(cr_arange(CR_F64, 1e300, 0, 1)), 0); /* a negative count is empty */
}

Test(tensor, arena_sizes_that_overflow_are_refused)
{
    cr_arena *a = cr_arena_init(4096);
    EXPECT_ERROR(cr_arena_alloc(a, SIZE_MAX),
                 "cr_arena_alloc: 18446744073709551615 bytes is more than any memory holds");
    EXPECT_ERROR(cr_arena_alloc(a, SIZE_MAX - 15), "cr_arena_alloc"); /* used to round up to 0 */
    EXPECT_ERROR(cr_arena_alloc_aligned(a, SIZE_MAX / 2, 16), "cr_arena_alloc");
    cr_assert_eq(cr_arena_used(a), 0);
    cr_assert_not_null(cr_arena_alloc(a, 100)); /* still usable */
    cr_arena_free(a);
    EXPECT_ERROR(cr_arena_init(SIZE_MAX - 8), "cr_arena_alloc: a chunk of");
}

Test(tensor, arena_generations)
{
    cr_arena *a = cr_arena_init(4096), *b = cr_arena_init(4096);
    uint64_t ga = cr_arena_generation(a), gb = cr_arena_generation(b);
    cr_assert(ga != 0 && gb != 0 && ga != gb);
    cr_arena_use(a);
    cr_tensor *t = cr_zeros(CR_F32, CR_SHAPE(3));
    cr_assert_eq(t->gen, ga);
    cr_assert_eq(cr_tensor_alias(t)->gen, ga);
    cr_tensor v;
    cr_view_narrow(&v, t, 0, 0, 2); /* a caller's header copies its source's */
    cr_assert_eq(v.gen, ga);
    cr_tensor *p = cr_tensor_init(CR_F32, CR_SHAPE(2));
    cr_assert_eq(p->gen, 0); /* outside any arena */
    cr_assert_eq(cr_tensor_alias(p)->gen, ga);
    cr_tensor_free(p);
    /* untouched: memory from before a reset, until it is handed out again */
    cr_assert(cr_arena_owns(a, t));
    cr_assert_not(cr_arena_owns(b, t));
    cr_assert_not(cr_arena_untouched(a, t)); /* in use */
    cr_arena_reset(a);
    cr_assert_neq(cr_arena_generation(a), ga);
    cr_assert(cr_arena_untouched(a, t));
    cr_assert(cr_arena_untouched(a, t->data));
    cr_zeros(CR_F32, CR_SHAPE(3)); /* the same header and data again */
    cr_assert_not(cr_arena_untouched(a, t));
    cr_assert_not(cr_arena_untouched(b, t));
    cr_arena_use(arena);
    cr_arena_free(a);
    cr_arena_free(b);
}

/* ---- broadcasting ----------------------------------------------------------------- */

static void expect_broadcast(int na, const int64_t *a, int nb, const int64_t *b, int nw, const int64_t *want)
{
    int n = -1;
    int64_t out[CR_MAX_DIMS];
    cr_assert(cr_broadcast_shape(na, a, nb, b, &n, out));
    cr_assert_eq(n, nw);
    for (int d = 0; d < n; d++)
        cr_assert_eq(out[d], want[d], "dim %d: %lld vs %lld", d, (long long)out[d], (long long)want[d]);
}

Test(tensor, broadcast_shape)
{
    expect_broadcast(CR_SHAPE(3, 1), CR_SHAPE(1, 4), CR_SHAPE(3, 4));
    expect_broadcast(CR_SHAPE(5, 3, 1), CR_SHAPE(4), CR_SHAPE(5, 3, 4));
    expect_broadcast(0, NULL, CR_SHAPE(2, 2), CR_SHAPE(2, 2));
    expect_broadcast(CR_SHAPE(2, 2), 0, NULL, CR_SHAPE(2, 2));
    expect_broadcast(0, NULL, 0, NULL, 0, NULL);
    expect_broadcast(CR_SHAPE(0, 1), CR_SHAPE(1, 3), CR_SHAPE(0, 3));
    expect_broadcast(CR_SHAPE(0), CR_SHAPE(2, 1), CR_SHAPE(2, 0));
    expect_broadcast(CR_SHAPE(1), CR_SHAPE(0), CR_SHAPE(0));
    int n;
    int64_t out[CR_MAX_DIMS];
    cr_assert_not(cr_broadcast_shape(CR_SHAPE(3), CR_SHAPE(4), &n, out));
    cr_assert_not(cr_broadcast_shape(CR_SHAPE(0), CR_SHAPE(3), &n, out));
    cr_assert_not(cr_broadcast_shape(CR_SHAPE(2, 3), CR_SHAPE(3, 2), &n, out));
}

Test(tensor, broadcast_shape_in_place)
{
    /* the output may be one of the inputs (cr_k_accumulate folds three shapes so) */
    int64_t sh[CR_MAX_DIMS] = {3};
    int n;
    cr_assert(cr_broadcast_shape(1, sh, CR_SHAPE(2, 3), &n, sh));
    cr_assert_eq(n, 2);
    cr_assert_eq(sh[0], 2);
    cr_assert_eq(sh[1], 3);
    int64_t sh2[CR_MAX_DIMS] = {4, 1};
    cr_assert(cr_broadcast_shape(2, sh2, CR_SHAPE(2, 1, 5), &n, sh2));
    cr_assert_eq(n, 3);
    cr_assert(sh2[0] == 2 && sh2[1] == 4 && sh2[2] == 5);
}

Test(tensor, binary_kernel_broadcasts)
{
    cr_tensor *a = f64(CR_SHAPE(3, 1), (double[]){1, 2, 3});
    cr_tensor *b = f64(CR_SHAPE(4), (double[]){10, 20, 30, 40});
    cr_tensor *o = cr_tensor_new(CR_F64, CR_SHAPE(3, 4));
    cr_k_binary(CR_B_ADD, o, a, b);
    expect_values(o, (double[]){11, 21, 31, 41, 12, 22, 32, 42, 13, 23, 33, 43}, 12, 0);
    cr_k_binary(CR_B_SUB, o, b, a);
    expect_values(o, (double[]){9, 19, 29, 39, 8, 18, 28, 38, 7, 17, 27, 37}, 12, 0);
    /* 0-dim scalar on either side */
    cr_tensor *s = cr_scalar(CR_F64, 2);
    cr_tensor *o2 = cr_tensor_new(CR_F64, CR_SHAPE(4));
    cr_k_binary(CR_B_DIV, o2, b, s);
    expect_values(o2, (double[]){5, 10, 15, 20}, 4, 0);
    cr_k_binary(CR_B_DIV, o2, s, b);
    expect_values(o2, (double[]){0.2, 0.1, 2.0 / 30, 0.05}, 4, 1e-15);
    cr_tensor *o0 = cr_tensor_new(CR_F64, 0, NULL);
    cr_k_binary(CR_B_MUL, o0, s, s);
    cr_assert_eq(cr_item(o0), 4.0);
    /* comparisons give 0/1 */
    cr_k_binary(CR_B_GT, o, b, cr_full(CR_F64, CR_SHAPE(3, 1), 25));
    expect_values(o, (double[]){0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1}, 12, 0);
    /* size-0 dims: nothing to do, nothing read */
    cr_tensor *e = cr_tensor_new(CR_F64, CR_SHAPE(0, 4));
    cr_k_binary(CR_B_ADD, e, cr_tensor_new(CR_F64, CR_SHAPE(0, 1)), b);
    EXPECT_ERROR(cr_k_binary(CR_B_ADD, o, a, cr_zeros(CR_F64, CR_SHAPE(2, 4))),
                 "cr_k_binary: shapes [3,1] and [2,4] do not broadcast");
    EXPECT_ERROR(cr_k_binary(CR_B_ADD, o, a, cr_zeros(CR_F64, CR_SHAPE(3))),
                 "cr_k_binary: output [3,4] is not the broadcast of [3,1] and [3]");
    EXPECT_ERROR(cr_k_binary(CR_B_ADD, o, a, cr_zeros(CR_F32, CR_SHAPE(4))), "dtypes f64 and f32 differ");
}

Test(tensor, binary_kernel_on_strided_views)
{
    cr_tensor *a = cr_arange(CR_F32, 0, 6, 1), m, mt;
    cr_view_reshape(&m, a, CR_SHAPE(2, 3));
    cr_view_transpose(&mt, &m, 0, 1); /* [[0,3],[1,4],[2,5]] */
    cr_tensor *o = cr_tensor_new(CR_F32, CR_SHAPE(3, 2));
    cr_k_binary(CR_B_MUL, o, &mt, &mt);
    expect_values(o, (double[]){0, 9, 1, 16, 4, 25}, 6, 0);
    /* output strided too */
    cr_tensor *d = cr_zeros(CR_F32, CR_SHAPE(2, 3)), dt;
    cr_view_transpose(&dt, d, 0, 1);
    cr_k_binary(CR_B_ADD, &dt, &mt, cr_scalar(CR_F32, 1));
    expect_values(d, (double[]){1, 2, 3, 4, 5, 6}, 6, 0);
}

Test(tensor, accumulate_sums_back_to_shape)
{
    cr_tensor *g = f64(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *row = cr_zeros(CR_F64, CR_SHAPE(3));
    cr_k_accumulate(row, g, NULL);
    expect_values(row, (double[]){5, 7, 9}, 3, 0);
    cr_tensor *col = cr_zeros(CR_F64, CR_SHAPE(2, 1));
    cr_k_accumulate(col, g, NULL);
    expect_values(col, (double[]){6, 15}, 2, 0);
    cr_tensor *s = cr_zeros(CR_F64, 0, NULL);
    cr_k_accumulate(s, g, NULL);
    cr_k_accumulate(s, g, NULL); /* accumulates */
    cr_assert_eq(cr_item(s), 42.0);
    /* with a product, and y of more dims than acc and x */
    cr_tensor *acc = cr_zeros(CR_F64, CR_SHAPE(3));
    cr_tensor *x = f64(CR_SHAPE(3), (double[]){1, 10, 100});
    cr_k_accumulate(acc, x, g);
    expect_values(acc, (double[]){5, 70, 900}, 3, 0);
    /* acc larger than x: x repeats */
    cr_tensor *big = cr_zeros(CR_F64, CR_SHAPE(2, 3));
    cr_k_accumulate(big, x, NULL);
    expect_values(big, (double[]){1, 10, 100, 1, 10, 100}, 6, 0);
    EXPECT_ERROR(cr_k_accumulate(row, cr_zeros(CR_F64, CR_SHAPE(4)), NULL), "cr_k_accumulate");
}

/* ---- RNG ---------------------------------------------------------------------------- */

Test(tensor, philox_known_answer)
{
    /* Random123's known-answer vector for philox4x32-10, counter and key zero */
    uint32_t w[4];
    cr_philox(0, 0, w);
    cr_assert_eq(w[0], 0x6627e8d5u);
    cr_assert_eq(w[1], 0xe169c58du);
    cr_assert_eq(w[2], 0xbc57ac4cu);
    cr_assert_eq(w[3], 0x9b00dbd8u);
    uint32_t v[4];
    cr_philox(0, 1, v);
    cr_assert(memcmp(w, v, sizeof w) != 0);
    cr_philox(1, 0, v);
    cr_assert(memcmp(w, v, sizeof w) != 0);
}

Test(tensor, rng_same_seed_and_offset_same_values)
{
    cr_rng r1 = cr_rng_seed(42), r2 = cr_rng_seed(42), r3 = cr_rng_seed(43);
    cr_tensor *a = cr_tensor_new(CR_F64, CR_SHAPE(100));
    cr_tensor *b = cr_tensor_new(CR_F64, CR_SHAPE(100));
    cr_tensor *c = cr_tensor_new(CR_F64, CR_SHAPE(100));
    cr_fill_uniform(a, &r1, -1, 1);
    cr_fill_uniform(b, &r2, -1, 1);
    cr_fill_uniform(c, &r3, -1, 1);
    cr_assert_eq(r1.offset, 100);
    cr_assert(memcmp(a->data, b->data, 100 * sizeof(double)) == 0);
    cr_assert(memcmp(a->data, c->data, 100 * sizeof(double)) != 0);
    for (int64_t i = 0; i < 100; i++) {
        double v = cr_get_flat(a, i);
        cr_assert(v >= -1 && v < 1);
    }
    /* the value at a position depends only on (seed, position) */
    cr_rng r4 = {.seed = 42, .offset = 37};
    cr_tensor *d = cr_tensor_new(CR_F64, CR_SHAPE(5));
    cr_fill_uniform(d, &r4, -1, 1);
    for (int64_t i = 0; i < 5; i++) cr_assert_eq(cr_get_flat(d, i), cr_get_flat(a, 37 + i));
    /* scalar draws use the same stream */
    cr_rng r5 = cr_rng_seed(42);
    double u = cr_rng_uniform01(&r5);
    cr_assert_float_eq(-1 + 2 * u, cr_get_flat(a, 0), 1e-15);
    cr_assert_eq(r5.offset, 1);
    /* normal draws too */
    cr_rng r6 = cr_rng_seed(8), r7 = cr_rng_seed(8);
    cr_tensor *nrm = cr_tensor_new(CR_F64, CR_SHAPE(3));
    cr_fill_normal(nrm, &r6, 0, 1);
    for (int64_t i = 0; i < 3; i++) cr_assert_eq(cr_rng_normal(&r7), cr_get_flat(nrm, i));
    /* the next fill continues the stream */
    cr_fill_uniform(b, &r2, -1, 1);
    cr_assert(memcmp(a->data, b->data, 100 * sizeof(double)) != 0);
}

Test(tensor, rng_strided_fill_matches_flat_order)
{
    cr_rng r1 = cr_rng_seed(7), r2 = cr_rng_seed(7);
    cr_tensor *flat = cr_tensor_new(CR_F64, CR_SHAPE(3, 4));
    cr_fill_normal(flat, &r1, 0, 1);
    cr_tensor *base = cr_zeros(CR_F64, CR_SHAPE(4, 3)), t;
    cr_view_transpose(&t, base, 0, 1);
    cr_fill_normal(&t, &r2, 0, 1);
    for (int64_t i = 0; i < 12; i++) cr_assert_eq(cr_get_flat(&t, i), cr_get_flat(flat, i));
}

Test(tensor, rng_fill_independent_of_thread_count)
{
    int64_t n = 100000; /* far above the fill's parallel threshold */
    cr_tensor *a = cr_tensor_new(CR_F32, CR_SHAPE(n)), *b = cr_tensor_new(CR_F32, CR_SHAPE(n));
    cr_tensor *c = cr_tensor_new(CR_F64, CR_SHAPE(n)), *d = cr_tensor_new(CR_F64, CR_SHAPE(n));
    int old = cr_get_num_threads();
    cr_rng r = cr_rng_seed(2024);
    cr_set_num_threads(1);
    cr_fill_normal(a, &r, 0, 1);
    cr_fill_dropout_mask(c, &r, 0.3);
    r = cr_rng_seed(2024);
    cr_set_num_threads(2);
    cr_fill_normal(b, &r, 0, 1);
    cr_fill_dropout_mask(d, &r, 0.3);
    cr_set_num_threads(old);
    cr_assert(memcmp(a->data, b->data, (size_t)n * sizeof(float)) == 0);
    cr_assert(memcmp(c->data, d->data, (size_t)n * sizeof(double)) == 0);
    /* reductions too: fixed blocks summed in order */
    cr_tensor *s1 = cr_tensor_new(CR_F32, 0, NULL), *s2 = cr_tensor_new(CR_F32, 0, NULL);
    cr_set_num_threads(1);
    cr_k_reduce(CR_R_SUM, s1, NULL, a, CR_ALL_DIMS);
    cr_set_num_threads(2);
    cr_k_reduce(CR_R_SUM, s2, NULL, a, CR_ALL_DIMS);
    cr_set_num_threads(old);
    cr_assert_eq(cr_item(s1), cr_item(s2));
}

Test(tensor, rng_normal_moments)
{
    int64_t n = 200000;
    cr_tensor *t = cr_tensor_new(CR_F64, CR_SHAPE(n));
    cr_rng r = cr_rng_seed(1);
    cr_fill_normal(t, &r, 3, 2);
    double s = 0, s2 = 0, s3 = 0;
    int64_t within1 = 0;
    const double *v = t->data;
    for (int64_t i = 0; i < n; i++) {
        s += v[i];
        s2 += v[i] * v[i];
        within1 += fabs(v[i] - 3) < 2;
    }
    double mean = s / (double)n, var = s2 / (double)n - mean * mean;
    for (int64_t i = 0; i < n; i++) s3 += pow((v[i] - mean) / sqrt(var), 3);
    /* standard errors: 2/sqrt(n) = 0.0045 for the mean, ~0.3% for the std */
    cr_assert(fabs(mean - 3) < 0.02, "mean %g", mean);
    cr_assert(fabs(sqrt(var) - 2) < 0.02, "std %g", sqrt(var));
    cr_assert(fabs(s3 / (double)n) < 0.03, "skew %g", s3 / (double)n);
    cr_assert(fabs((double)within1 / (double)n - 0.6827) < 0.005, "P(|z|<1) = %g",
              (double)within1 / (double)n);
}

Test(tensor, rng_uniform_and_dropout_mask)
{
    int64_t n = 100000;
    cr_tensor *u = cr_tensor_new(CR_F64, CR_SHAPE(n));
    cr_rng r = cr_rng_seed(9);
    cr_fill_uniform(u, &r, 2, 5);
    double s = 0, lo = 10, hi = -10;
    for (int64_t i = 0; i < n; i++) {
        double v = cr_get_flat(u, i);
        s += v;
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    cr_assert(lo >= 2 && hi < 5);
    cr_assert(lo < 2.001 && hi > 4.999);
    cr_assert(fabs(s / (double)n - 3.5) < 0.02);
    cr_tensor *m = cr_tensor_new(CR_F32, CR_SHAPE(n));
    cr_fill_dropout_mask(m, &r, 0.25);
    int64_t zeros = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = cr_get_flat(m, i);
        cr_assert(v == 0 || v == (double)(float)(1 / 0.75), "mask value %g", v);
        zeros += v == 0;
    }
    cr_assert(fabs((double)zeros / (double)n - 0.25) < 0.01, "dropped %g", (double)zeros / (double)n);
    EXPECT_ERROR(cr_fill_dropout_mask(m, &r, 1.0), "cr_fill_dropout_mask: p = 1");
    EXPECT_ERROR(cr_fill_uniform(cr_tensor_new(CR_I32, CR_SHAPE(2)), &r, 0, 1), "i32");
}

/* ---- printing -------------------------------------------------------------------------- */

static char *print_to_string(const cr_tensor *t)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    cr_fprint(f, t);
    fclose(f);
    return buf;
}

#define EXPECT_PRINT(t, text)                                                                                \
    do {                                                                                                     \
        char *s_ = print_to_string(t);                                                                       \
        cr_assert_str_eq(s_, text);                                                                          \
        free(s_);                                                                                            \
    } while (0)

Test(tensor, print_small)
{
    cr_tensor *m = cr_arange(CR_F32, 0, 6, 1), v;
    cr_view_reshape(&v, m, CR_SHAPE(2, 3));
    cr_set_flat(&v, 1, 0.5);
    EXPECT_PRINT(&v, "tensor([[0, 0.5, 2],\n        [3, 4, 5]], dtype=f32, shape=[2,3])\n");
    cr_tensor vt;
    cr_view_transpose(&vt, &v, 0, 1);
    EXPECT_PRINT(&vt, "tensor([[0, 3],\n        [0.5, 4],\n        [2, 5]], dtype=f32, shape=[3,2])\n");
    EXPECT_PRINT(cr_scalar(CR_F64, -1.25), "tensor(-1.25, dtype=f64, shape=[])\n");
    EXPECT_PRINT(cr_arange(CR_I32, 3, 0, -1), "tensor([3, 2, 1], dtype=i32, shape=[3])\n");
    EXPECT_PRINT(cr_zeros(CR_F64, CR_SHAPE(0)), "tensor([], dtype=f64, shape=[0])\n");
    EXPECT_PRINT(cr_full(CR_F64, CR_SHAPE(1), 1.0 / 3), "tensor([0.333333], dtype=f64, shape=[1])\n");
}

Test(tensor, print_elides_long_dims)
{
    EXPECT_PRINT(cr_arange(CR_I32, 0, 20, 1), "tensor([0, 1, 2, ..., 17, 18, 19], dtype=i32, shape=[20])\n");
    cr_tensor *t = cr_arange(CR_F64, 0, 1000, 1), v;
    cr_view_reshape(&v, t, CR_SHAPE(100, 10));
    char *s = print_to_string(&v);
    cr_assert(strlen(s) < 400, "printed %zu characters", strlen(s));
    cr_assert(strstr(s, "tensor([[0, 1, 2, ..., 7, 8, 9],\n        [10, 11, 12, ..., 17, 18, 19],\n") == s,
              "%s", s);
    cr_assert(strstr(s, "        ...,\n        [970, 971, 972, ..., 977, 978, 979],\n") != NULL, "%s", s);
    cr_assert(strstr(s, "[990, 991, 992, ..., 997, 998, 999]], dtype=f64, shape=[100,10])\n") != NULL, "%s",
              s);
    cr_assert(strstr(s, "500") == NULL);
    free(s);
}

/* ---- arenas ----------------------------------------------------------------------------- */

Test(tensor, arena_bump_reset_and_grow)
{
    cr_arena *a = cr_arena_init(4096);
    cr_assert_eq(cr_arena_chunk_count(a), 1);
    cr_assert_eq(cr_arena_capacity(a), 4096);
    cr_assert_eq(cr_arena_used(a), 0);
    char *p = cr_arena_alloc(a, 10), *q = cr_arena_alloc(a, 100);
    cr_assert_eq((uintptr_t)p % 64, 0);
    cr_assert_eq((uintptr_t)q % 64, 0);
    cr_assert_eq(q - p, 64);
    cr_assert_eq(cr_arena_used(a), 64 + 112);    /* sizes round up to 16 bytes */
    char *r = cr_arena_alloc_aligned(a, 20, 16); /* headers pack at 16 */
    cr_assert_eq(r - q, 112);
    cr_assert_eq(cr_arena_used(a), 64 + 112 + 32);
    memset(p, 1, 10);
    memset(q, 2, 100);
    /* grow past the first chunk, including an allocation bigger than a chunk */
    void *big = cr_arena_alloc(a, 10000);
    memset(big, 3, 10000);
    cr_assert_geq(cr_arena_chunk_count(a), 2);
    size_t cap = cr_arena_capacity(a), chunks = cr_arena_chunk_count(a);
    cr_assert_geq(cap, 4096 + 10000);
    cr_assert_geq(cr_arena_used(a), 64 + 112 + 32 + 10000);
    /* reset keeps every chunk and hands out the same memory again */
    cr_arena_reset(a);
    cr_assert_eq(cr_arena_used(a), 0);
    cr_assert_eq(cr_arena_capacity(a), cap);
    cr_assert_eq(cr_arena_chunk_count(a), chunks);
    cr_assert_eq(cr_arena_alloc(a, 10), p);
    cr_assert_eq(cr_arena_alloc(a, 100), q);
    cr_assert_eq(cr_arena_alloc_aligned(a, 20, 16), r);
    cr_assert_eq(cr_arena_alloc(a, 10000), big);
    cr_assert_eq(cr_arena_chunk_count(a), chunks);
    cr_arena_free(a);
    cr_arena_free(NULL);
}

Test(tensor, arena_repeated_steps_keep_capacity)
{
    cr_arena *a = cr_arena_init(1024);
    size_t cap = 0;
    for (int step = 0; step < 5; step++) {
        cr_arena_reset(a);
        for (int i = 0; i < 100; i++) cr_arena_alloc(a, (size_t)(i % 7) * 50);
        if (step == 1) cap = cr_arena_capacity(a);
        if (step > 1) cr_assert_eq(cr_arena_capacity(a), cap, "step %d grew the arena", step);
    }
    cr_arena_free(a);
}

Test(tensor, arena_current_is_per_thread)
{
    cr_assert_eq(cr_arena_current(), arena);
    cr_arena *a = cr_arena_init(0);
    cr_assert_eq(cr_arena_use(a), arena);
    cr_assert_eq(cr_arena_current(), a);
    cr_arena *seen = arena;
    int team = 0;
#pragma omp parallel num_threads(2)
    {
        if (omp_get_thread_num() == 0) team = omp_get_num_threads();
        if (omp_get_thread_num() == 1) seen = cr_arena_current();
    }
    if (team > 1) cr_assert_null(seen); /* a new thread has no arena */
    cr_arena_use(arena);
    cr_arena_free(a);
    /* with no current arena, step tensors are refused clearly */
    cr_arena_use(NULL);
    EXPECT_ERROR(cr_zeros(CR_F32, CR_SHAPE(2)), "no current graph");
    cr_arena_use(arena);
}

/* ---- gemm --------------------------------------------------------------------------------- */

/* C = alpha A B + beta C, naively, in long double. */
static void naive_gemm(double alpha, const cr_tensor *a, const cr_tensor *b, double beta, cr_tensor *c)
{
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            long double s = 0;
            for (int64_t p = 0; p < k; p++)
                s += (long double)cr_get(a, (int64_t[]){i, p}) * cr_get(b, (int64_t[]){p, j});
            double old = cr_get(c, (int64_t[]){i, j});
            cr_set(c, (int64_t[]){i, j}, (double)(alpha * s + (beta == 0 ? 0 : beta * old)));
        }
}

/* A [m,k] taken as the transpose of a [k+2, m+1] buffer, narrowed; B [k,n] a
 * narrow of a wider row-major buffer or a transpose; C a transposed view. */
static void check_gemm(cr_dtype dt, int64_t m, int64_t k, int64_t n, int layout, double alpha, double beta)
{
    cr_rng r = cr_rng_seed((uint64_t)(m * 1000 + k * 10 + n + layout));
    cr_tensor *abuf = cr_tensor_new(dt, CR_SHAPE(k + 2, m + 1)), at, a;
    cr_fill_uniform(abuf, &r, -1, 1);
    cr_view_transpose(&at, abuf, 0, 1); /* [m+1, k+2] */
    cr_view_narrow(&a, &at, 1, 1, k);   /* [m+1, k] */
    cr_view_narrow(&a, &a, 0, 1, m);    /* [m, k], strides (1, m+1) */
    cr_tensor b;
    if (layout == 0) {
        cr_tensor *bbuf = cr_tensor_new(dt, CR_SHAPE(k, n + 3));
        cr_fill_uniform(bbuf, &r, -1, 1);
        cr_view_narrow(&b, bbuf, 1, 2, n); /* row stride n+3 */
    } else {
        cr_tensor *bbuf = cr_tensor_new(dt, CR_SHAPE(n, k));
        cr_fill_uniform(bbuf, &r, -1, 1);
        cr_view_transpose(&b, bbuf, 0, 1); /* column-major */
    }
    cr_tensor *cbuf = cr_tensor_new(dt, CR_SHAPE(n, m)), c;
    cr_fill_uniform(cbuf, &r, -1, 1);
    cr_view_transpose(&c, cbuf, 0, 1);
    cr_tensor *want = cr_contiguous_copy(&c);
    naive_gemm(alpha, &a, &b, beta, want);
    cr_k_gemm(alpha, &a, &b, beta, &c);
    double tol = (dt == CR_F32 ? 2e-6 : 1e-13) * (double)(k + 1);
    for (int64_t i = 0; i < m * n; i++) {
        double got = cr_get_flat(&c, i), w = cr_get_flat(want, i);
        cr_assert(fabs(got - w) <= tol,
                  "%s m=%lld k=%lld n=%lld layout %d: element %lld is %.10g, expected %.10g",
                  cr_dtype_name(dt), (long long)m, (long long)k, (long long)n, layout, (long long)i, got, w);
    }
}

Test(tensor, gemm_matches_naive_on_strided_views)
{
    int64_t sizes[][3] = {{3, 4, 5},    {1, 7, 1},    {5, 1, 6},     {17, 13, 9},    /* small kernel */
                          {40, 50, 30}, {64, 33, 70}, {1, 300, 200}, {200, 120, 1}}; /* BLIS */
    cr_dtype dts[2] = {CR_F32, CR_F64};
    int64_t saved = cr_gemm_small_threshold, saved_par = cr_gemm_parallel_threshold;
    int saved_threads = cr_get_num_threads();
    /* every size through each path: the C kernel, BLIS's micro-kernel under
     * carousel's loops on one thread, BLIS's threaded API on two threads */
    int64_t small[3] = {INT64_MAX, 0, 0}, par[3] = {0, INT64_MAX, 0};
    for (int p = 0; p < 3; p++) {
        cr_gemm_small_threshold = small[p];
        cr_gemm_parallel_threshold = par[p];
        cr_set_num_threads(p == 2 ? 2 : saved_threads);
        for (int d = 0; d < 2; d++)
            for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
                for (int layout = 0; layout < 2; layout++) {
                    check_gemm(dts[d], sizes[s][0], sizes[s][1], sizes[s][2], layout, 1.0, 0.0);
                    check_gemm(dts[d], sizes[s][0], sizes[s][1], sizes[s][2], layout, -0.5, 2.0);
                }
    }
    cr_gemm_small_threshold = saved;
    cr_gemm_parallel_threshold = saved_par;
    cr_set_num_threads(saved_threads);
}

Test(tensor, gemm_contiguous_and_expanded_operands)
{
    /* plain row-major, above the threshold */
    cr_tensor *a = cr_tensor_new(CR_F64, CR_SHAPE(50, 40)), *b = cr_tensor_new(CR_F64, CR_SHAPE(40, 60));
    cr_rng r = cr_rng_seed(5);
    cr_fill_uniform(a, &r, -1, 1);
    cr_fill_uniform(b, &r, -1, 1);
    cr_tensor *c = cr_zeros(CR_F64, CR_SHAPE(50, 60)), *w = cr_zeros(CR_F64, CR_SHAPE(50, 60));
    cr_k_gemm(1, a, b, 0, c);
    naive_gemm(1, a, b, 0, w);
    for (int64_t i = 0; i < 3000; i++) cr_assert_float_eq(cr_get_flat(c, i), cr_get_flat(w, i), 1e-12);
    /* a row broadcast to every row (stride 0), below and above the threshold */
    for (int64_t m = 4; m <= 64; m *= 16) {
        cr_tensor *row = cr_tensor_new(CR_F64, CR_SHAPE(1, 40)), e;
        cr_fill_uniform(row, &r, -1, 1);
        cr_view_expand(&e, row, CR_SHAPE(m, 40));
        cr_tensor *c2 = cr_zeros(CR_F64, CR_SHAPE(m, 60)), *w2 = cr_zeros(CR_F64, CR_SHAPE(m, 60));
        cr_k_gemm(1, &e, b, 0, c2);
        naive_gemm(1, &e, b, 0, w2);
        for (int64_t i = 0; i < m * 60; i++)
            cr_assert_float_eq(cr_get_flat(c2, i), cr_get_flat(w2, i), 1e-12);
    }
    /* a column broadcast along B's columns (column stride 0), through BLIS */
    cr_tensor *colv = cr_tensor_new(CR_F64, CR_SHAPE(40, 1)), eb;
    cr_fill_uniform(colv, &r, -1, 1);
    cr_view_expand(&eb, colv, CR_SHAPE(40, 60));
    cr_tensor *c3 = cr_zeros(CR_F64, CR_SHAPE(50, 60)), *w3 = cr_zeros(CR_F64, CR_SHAPE(50, 60));
    cr_k_gemm(1, a, &eb, 0, c3);
    naive_gemm(1, a, &eb, 0, w3);
    for (int64_t i = 0; i < 3000; i++) cr_assert_float_eq(cr_get_flat(c3, i), cr_get_flat(w3, i), 1e-12);
    /* k = 0: C = beta C */
    cr_tensor *a0 = cr_zeros(CR_F64, CR_SHAPE(2, 0)), *b0 = cr_zeros(CR_F64, CR_SHAPE(0, 3));
    cr_tensor *c0 = cr_full(CR_F64, CR_SHAPE(2, 3), 4);
    cr_k_gemm(1, a0, b0, 0.5, c0);
    expect_values(c0, (double[]){2, 2, 2, 2, 2, 2}, 6, 0);
    EXPECT_ERROR(cr_k_gemm(1, a, a, 0, c), "cr_k_gemm: [50,40] x [50,40] -> [50,60] do not fit");
}

Test(tensor, gemm_f32_broadcast_operands_and_sizes_past_int64, .timeout = 30)
{
    /* f32 with row-stored C runs carousel's kernel: A a row broadcast to
     * every row, B a column broadcast along its columns (stride 0) */
    cr_rng r = cr_rng_seed(6);
    cr_tensor *row = cr_tensor_new(CR_F32, CR_SHAPE(1, 70)), *col = cr_tensor_new(CR_F32, CR_SHAPE(70, 1)),
              *bf = cr_tensor_new(CR_F32, CR_SHAPE(70, 90)), *af = cr_tensor_new(CR_F32, CR_SHAPE(40, 70)),
              ea, eb;
    cr_fill_uniform(row, &r, -1, 1);
    cr_fill_uniform(col, &r, -1, 1);
    cr_fill_uniform(bf, &r, -1, 1);
    cr_fill_uniform(af, &r, -1, 1);
    cr_view_expand(&ea, row, CR_SHAPE(40, 70));
    cr_view_expand(&eb, col, CR_SHAPE(70, 90));
    const cr_tensor *as[2] = {&ea, af}, *bs[2] = {bf, &eb};
    for (int i = 0; i < 2; i++) {
        cr_tensor *c = cr_zeros(CR_F32, CR_SHAPE(40, 90)), *w = cr_zeros(CR_F32, CR_SHAPE(40, 90));
        cr_k_gemm(1, as[i], bs[i], 0, c);
        naive_gemm(1, as[i], bs[i], 0, w);
        for (int64_t j = 0; j < 40 * 90; j++) cr_assert_float_eq(cr_get_flat(c, j), cr_get_flat(w, j), 1e-4);
    }
    /* m*n*k past INT64_MAX with no memory behind it (expanded views): 4*4*2^60
     * wraps to 0, which would send the product to the C kernel's loop over
     * k; compared without overflowing, alpha 0 leaves C = beta C at once */
    int64_t k = (int64_t)1 << 60;
    cr_tensor *one_a = cr_tensor_new(CR_F32, CR_SHAPE(1, 1)), *one_b = cr_tensor_new(CR_F32, CR_SHAPE(1, 1));
    cr_tensor big_a, big_b;
    cr_view_expand(&big_a, one_a, CR_SHAPE(4, k));
    cr_view_expand(&big_b, one_b, CR_SHAPE(k, 4));
    cr_tensor *c = cr_full(CR_F32, CR_SHAPE(4, 4), 3);
    cr_k_gemm(0, &big_a, &big_b, 0.5, c);
    for (int64_t j = 0; j < 16; j++) cr_assert_eq(cr_get_flat(c, j), 1.5);
}

/* ---- reductions and softmax ------------------------------------------------------------------- */

Test(tensor, reductions)
{
    cr_tensor *x = f64(CR_SHAPE(2, 3), (double[]){1, 5, 3, 4, 2, 6});
    cr_tensor *s = cr_tensor_new(CR_F64, 0, NULL);
    cr_k_reduce(CR_R_SUM, s, NULL, x, CR_ALL_DIMS);
    cr_assert_eq(cr_item(s), 21.0);
    cr_k_reduce(CR_R_MEAN, s, NULL, x, CR_ALL_DIMS);
    cr_assert_eq(cr_item(s), 3.5);
    cr_k_reduce(CR_R_MAX, s, NULL, x, CR_ALL_DIMS);
    cr_assert_eq(cr_item(s), 6.0);
    cr_tensor *r0 = cr_tensor_new(CR_F64, CR_SHAPE(3)), *r1 = cr_tensor_new(CR_F64, CR_SHAPE(2, 1));
    cr_tensor *a0 = cr_tensor_new(CR_I32, CR_SHAPE(3)), *a1 = cr_tensor_new(CR_I32, CR_SHAPE(2));
    cr_k_reduce(CR_R_SUM, r0, NULL, x, 0);
    expect_values(r0, (double[]){5, 7, 9}, 3, 0);
    cr_k_reduce(CR_R_MEAN, r1, NULL, x, -1);
    expect_values(r1, (double[]){3, 4}, 2, 0);
    cr_k_reduce(CR_R_MAX, r0, a0, x, 0);
    expect_values(r0, (double[]){4, 5, 6}, 3, 0);
    expect_values(a0, (double[]){1, 0, 1}, 3, 0);
    cr_k_reduce(CR_R_MIN, r1, a1, x, 1);
    expect_values(r1, (double[]){1, 2}, 2, 0);
    expect_values(a1, (double[]){0, 1}, 2, 0);
    EXPECT_ERROR(cr_k_reduce(CR_R_SUM, r1, NULL, x, 0), "cr_k_reduce: output has 2 elements, expected 3");
}

Test(tensor, argmax_ties_and_nan)
{
    /* ties keep the first index; NaN wins (as in PyTorch) */
    cr_tensor *x = f64(CR_SHAPE(3, 4), (double[]){2, 7, 7, 1,     /* tie */
                                                  NAN, 1, 9, 3,   /* NaN first */
                                                  0, 5, NAN, 8}); /* NaN later */
    cr_tensor *v = cr_tensor_new(CR_F64, CR_SHAPE(3)), *a = cr_tensor_new(CR_I32, CR_SHAPE(3));
    cr_k_reduce(CR_R_MAX, v, a, x, 1);
    expect_values(a, (double[]){1, 0, 2}, 3, 0);
    expect_values(v, (double[]){7, NAN, NAN}, 3, 0);
    cr_k_reduce(CR_R_MIN, v, a, x, 1);
    expect_values(a, (double[]){3, 0, 2}, 3, 0);
    /* along dim 0, several columns at once */
    cr_tensor *v0 = cr_tensor_new(CR_F64, CR_SHAPE(4)), *a0 = cr_tensor_new(CR_I32, CR_SHAPE(4));
    cr_k_reduce(CR_R_MAX, v0, a0, x, 0);
    expect_values(a0, (double[]){1, 0, 2, 2}, 4, 0);
    expect_values(v0, (double[]){NAN, 7, NAN, 8}, 4, 0);
    cr_tensor *e = cr_zeros(CR_F64, CR_SHAPE(2, 0));
    EXPECT_ERROR(cr_k_reduce(CR_R_MAX, cr_tensor_new(CR_F64, CR_SHAPE(2)), NULL, e, 1), "empty");
}

Test(tensor, reductions_of_empty_and_large)
{
    cr_tensor *e = cr_zeros(CR_F32, CR_SHAPE(0, 3)), *s = cr_tensor_new(CR_F32, 0, NULL);
    cr_k_reduce(CR_R_SUM, s, NULL, e, CR_ALL_DIMS);
    cr_assert_eq(cr_item(s), 0.0);
    cr_k_reduce(CR_R_MEAN, s, NULL, e, CR_ALL_DIMS);
    cr_assert(isnan(cr_item(s)));
    cr_tensor *r = cr_tensor_new(CR_F32, CR_SHAPE(3));
    cr_k_reduce(CR_R_SUM, r, NULL, e, 0);
    expect_values(r, (double[]){0, 0, 0}, 3, 0);
    /* a long f32 sum is accumulated in double: 1e6 ones plus small parts */
    int64_t n = 1000003;
    cr_tensor *ones = cr_full(CR_F32, CR_SHAPE(n), 1);
    cr_k_reduce(CR_R_SUM, s, NULL, ones, CR_ALL_DIMS);
    cr_assert_eq(cr_item(s), (double)n);
    cr_tensor *m = cr_tensor_new(CR_F32, CR_SHAPE(1));
    cr_tensor v;
    cr_view_reshape(&v, ones, CR_SHAPE(1, n));
    cr_k_reduce(CR_R_MEAN, m, NULL, &v, 1);
    cr_assert_eq(cr_item(m), 1.0);
}

Test(tensor, softmax_rows_sum_to_one)
{
    cr_rng r = cr_rng_seed(3);
    cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(4, 7));
    cr_fill_normal(x, &r, 0, 3);
    cr_set_flat(x, 0, 1000); /* huge logits must not overflow */
    cr_set_flat(x, 1, 999);
    cr_tensor *y = cr_tensor_new(CR_F64, CR_SHAPE(4, 7)), *ly = cr_tensor_new(CR_F64, CR_SHAPE(4, 7));
    cr_k_softmax(y, x, 1, false);
    cr_k_softmax(ly, x, -1, true);
    for (int64_t i = 0; i < 4; i++) {
        double s = 0;
        for (int64_t j = 0; j < 7; j++) {
            double p = cr_get(y, (int64_t[]){i, j});
            cr_assert(p >= 0 && p <= 1);
            s += p;
            cr_assert(fabs(exp(cr_get(ly, (int64_t[]){i, j})) - p) <= 1e-12 * fmax(p, 1e-300),
                      "log-softmax at %lld,%lld", (long long)i, (long long)j);
        }
        cr_assert_float_eq(s, 1.0, 1e-14, "row %lld sums to %.17g", (long long)i, s);
    }
    cr_assert_float_eq(cr_get_flat(y, 0), 1 / (1 + exp(-1.0)), 1e-12);
    /* along dim 0 of a [3,2] (inner stride 2): known values */
    cr_tensor *z = f64(CR_SHAPE(3, 2), (double[]){0, 1, log(2.0), 1, log(3.0), 1});
    cr_tensor *zy = cr_tensor_new(CR_F64, CR_SHAPE(3, 2));
    cr_k_softmax(zy, z, 0, false);
    expect_values(zy, (double[]){1.0 / 6, 1.0 / 3, 2.0 / 6, 1.0 / 3, 3.0 / 6, 1.0 / 3}, 6, 1e-15);
    /* f32 too */
    cr_tensor *xf = cr_tensor_new(CR_F32, CR_SHAPE(5, 11)), *yf = cr_tensor_new(CR_F32, CR_SHAPE(5, 11));
    cr_fill_normal(xf, &r, 0, 5);
    cr_k_softmax(yf, xf, 1, false);
    for (int64_t i = 0; i < 5; i++) {
        double s = 0;
        for (int64_t j = 0; j < 11; j++) s += cr_get(yf, (int64_t[]){i, j});
        cr_assert_float_eq(s, 1.0, 1e-6);
    }
    /* an empty softmax dim is fine: nothing to normalise */
    cr_tensor *e = cr_zeros(CR_F64, CR_SHAPE(3, 0)), *ey = cr_tensor_new(CR_F64, CR_SHAPE(3, 0));
    cr_k_softmax(ey, e, 1, false);
    cr_k_softmax(ey, e, 1, true);
}

Test(tensor, unary_kernel_values_and_strides)
{
    cr_tensor *x = f64(CR_SHAPE(2, 3), (double[]){-2, -0.5, 0, 0.5, 1, 3}), xt;
    cr_view_transpose(&xt, x, 0, 1); /* strided input */
    cr_tensor *o = cr_tensor_new(CR_F64, CR_SHAPE(3, 2));
    cr_k_unary(CR_U_CLAMP, o, &xt, -1, 0.75);
    expect_values(o, (double[]){-1, 0.5, -0.5, 0.75, 0, 0.75}, 6, 0);
    cr_k_unary(CR_U_SOFTPLUS, o, &xt, 0, 0);
    for (int64_t i = 0; i < 6; i++)
        cr_assert_float_eq(cr_get_flat(o, i), log1p(exp(cr_get_flat(&xt, i))), 1e-15);
    /* softplus and sigmoid stay finite far out */
    cr_tensor *big = f64(CR_SHAPE(2), (double[]){-800, 800}), *ob = cr_tensor_new(CR_F64, CR_SHAPE(2));
    cr_k_unary(CR_U_SOFTPLUS, ob, big, 0, 0);
    expect_values(ob, (double[]){0, 800}, 2, 1e-12);
    cr_k_unary(CR_U_SIGMOID, ob, big, 0, 0);
    expect_values(ob, (double[]){0, 1}, 2, 0);
    /* a unary over a parallel-sized strided input */
    int64_t n = 300;
    cr_tensor *sq = cr_tensor_new(CR_F32, CR_SHAPE(n, n)), sqt;
    cr_rng r = cr_rng_seed(11);
    cr_fill_uniform(sq, &r, -1, 1);
    cr_view_transpose(&sqt, sq, 0, 1);
    cr_tensor *os = cr_tensor_new(CR_F32, CR_SHAPE(n, n));
    cr_k_unary(CR_U_MUL_SCALAR, os, &sqt, 3, 0);
    for (int64_t i = 0; i < n; i += 7)
        for (int64_t j = 0; j < n; j += 5)
            cr_assert_eq(cr_get(os, (int64_t[]){i, j}),
                         (double)(3.0f * (float)cr_get(sq, (int64_t[]){j, i})));
    EXPECT_ERROR(cr_k_unary(CR_U_EXP, o, x, 0, 0),
                 "cr_k_unary: output [3,2] and input [2,3] differ in shape");
}

/* Every kernel above the parallel threshold gives what it gives serially. */
#define N_KERNELS 10
static void run_kernels(cr_tensor **out, cr_tensor **argmax, const cr_tensor *x, const cr_tensor *y,
                        const cr_tensor *xt, const cr_tensor *row, int64_t R, int64_t C)
{
    for (int k = 0; k < N_KERNELS; k++) out[k] = cr_zeros(CR_F64, CR_SHAPE(R, C));
    cr_k_unary(CR_U_TANH, out[0], x, 0, 0);            /* contiguous */
    cr_k_unary(CR_U_ELU, out[1], xt, 0.5, 0);          /* strided */
    cr_k_binary(CR_B_MUL, out[2], x, y);               /* same shapes */
    cr_k_binary(CR_B_SUB, out[3], xt, row);            /* broadcast, strided */
    cr_k_accumulate(out[4], x, y);                     /* same shapes */
    cr_k_accumulate(out[5], row, xt);                  /* acc larger than x: rows disjoint */
    cr_tensor *colsum = cr_zeros(CR_F64, CR_SHAPE(C)); /* acc smaller: summed */
    cr_k_accumulate(colsum, x, xt);
    cr_k_accumulate(out[6], colsum, NULL);
    cr_k_softmax(out[7], x, 1, false);
    cr_k_unary_backward(CR_U_SIGMOID, out[8], y, xt, out[0], 0, 0);
    cr_tensor *sums = cr_tensor_new(CR_F64, CR_SHAPE(C)), *maxs = cr_tensor_new(CR_F64, CR_SHAPE(R, 1));
    *argmax = cr_tensor_new(CR_I32, CR_SHAPE(R, 1));
    cr_k_reduce(CR_R_SUM, sums, NULL, x, 0);
    cr_k_reduce(CR_R_MAX, maxs, *argmax, x, 1);
    cr_k_accumulate(out[9], sums, NULL); /* out[9][i,j] = column sum j + row max i */
    cr_k_accumulate(out[9], maxs, NULL);
}

Test(tensor, parallel_kernels_match_serial)
{
    int64_t R = 300, C = 257; /* 77100 elements, above cr_parallel_threshold */
    cr_assert_gt(R * C, cr_parallel_threshold);
    cr_rng r = cr_rng_seed(21);
    cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(R, C)), *y = cr_tensor_new(CR_F64, CR_SHAPE(R, C));
    cr_tensor *row = cr_tensor_new(CR_F64, CR_SHAPE(C)), *xtb = cr_tensor_new(CR_F64, CR_SHAPE(C, R)), xt;
    cr_fill_uniform(x, &r, -2, 2);
    cr_fill_uniform(y, &r, -2, 2);
    cr_fill_uniform(row, &r, -2, 2);
    cr_fill_uniform(xtb, &r, -2, 2);
    cr_view_transpose(&xt, xtb, 0, 1);
    cr_tensor *serial[N_KERNELS], *parallel[N_KERNELS], *arg_s, *arg_p;
    int64_t saved = cr_parallel_threshold;
    int old = cr_get_num_threads();
    cr_parallel_threshold = INT64_MAX;
    cr_set_num_threads(1);
    run_kernels(serial, &arg_s, x, y, &xt, row, R, C);
    cr_parallel_threshold = saved;
    cr_set_num_threads(2);
    run_kernels(parallel, &arg_p, x, y, &xt, row, R, C);
    cr_set_num_threads(old);
    for (int k = 0; k < N_KERNELS; k++)
        cr_assert(memcmp(serial[k]->data, parallel[k]->data, (size_t)(R * C) * sizeof(double)) == 0,
                  "kernel %d differs between serial and parallel runs", k);
    cr_assert(memcmp(arg_s->data, arg_p->data, (size_t)R * sizeof(int32_t)) == 0);
    /* and the values are right: spot checks against scalar formulas */
    for (int64_t i = 0; i < R; i += 37)
        for (int64_t j = 0; j < C; j += 29) {
            int64_t ij[2] = {i, j};
            double xv = cr_get(x, ij), yv = cr_get(y, ij), tv = cr_get(&xt, ij), rv = cr_get_flat(row, j);
            cr_assert_float_eq(cr_get(parallel[0], ij), tanh(xv), 1e-15);
            cr_assert_float_eq(cr_get(parallel[1], ij), tv > 0 ? tv : 0.5 * (exp(tv) - 1), 1e-15);
            cr_assert_eq(cr_get(parallel[2], ij), xv * yv);
            cr_assert_eq(cr_get(parallel[3], ij), tv - rv);
            cr_assert_eq(cr_get(parallel[4], ij), xv * yv);
            cr_assert_eq(cr_get(parallel[5], ij), rv * tv);
            cr_assert_float_eq(cr_get(parallel[8], ij), yv * tanh(xv) * (1 - tanh(xv)), 1e-15);
        }
    for (int64_t j = 0; j < C; j += 31) {
        double s = 0;
        for (int64_t i = 0; i < R; i++) s += cr_get(x, (int64_t[]){i, j}) * cr_get(&xt, (int64_t[]){i, j});
        cr_assert_float_eq(cr_get(parallel[6], (int64_t[]){0, j}), s, 1e-11);
    }
    for (int64_t i = 0; i < R; i += 41) {
        int64_t best = 0;
        for (int64_t j = 1; j < C; j++)
            if (cr_get(x, (int64_t[]){i, j}) > cr_get(x, (int64_t[]){i, best})) best = j;
        cr_assert_eq(cr_get_flat(arg_p, i), (double)best);
        double colsum = 0;
        for (int64_t k = 0; k < R; k++) colsum += cr_get(x, (int64_t[]){k, 5});
        cr_assert_float_eq(cr_get(parallel[9], (int64_t[]){i, 5}), colsum + cr_get(x, (int64_t[]){i, best}),
                           1e-11);
    }
}

/* ---- the default error handler ---------------------------------------------------------------- */

Test(tensor, default_handler_aborts, .signal = SIGABRT)
{
    cr_tensor *t = cr_zeros(CR_F32, CR_SHAPE(2, 3)), v;
    cr_view_narrow(&v, t, 0, 1, 5);
}

Test(tensor, returning_handler_still_aborts, .signal = SIGABRT)
{
    cr_set_error_handler(NULL); /* NULL restores the default */
    cr_error("test error %d", 1);
}

static void returning_handler(const char *m) { (void)m; }

Test(tensor, handler_that_returns_aborts, .signal = SIGABRT)
{
    cr_set_error_handler(returning_handler);
    cr_error("oops");
}

Test(tensor, shape_str)
{
    char buf[64];
    cr_assert_str_eq(cr_shape_str(buf, sizeof buf, CR_SHAPE(32, 64)), "[32,64]");
    cr_assert_str_eq(cr_shape_str(buf, sizeof buf, 0, NULL), "[]");
    char small[6];
    cr_shape_str(small, sizeof small, CR_SHAPE(123, 456, 789));
    cr_assert_eq(strlen(small), 5); /* truncated, terminated */
}

/* f32 tanh and sigmoid use carousel's own vectorisable exp: a few ulp of
 * double-precision libm across the range, contiguous and strided. */
Test(tensor, f32_tanh_sigmoid_accuracy)
{
    int64_t n = 200001;
    cr_tensor *x = cr_tensor_new(CR_F32, 1, &n), *t = cr_tensor_new(CR_F32, 1, &n),
              *s = cr_tensor_new(CR_F32, 1, &n);
    for (int64_t i = 0; i < n; i++) cr_set_flat(x, i, -60.0 + 120.0 * (double)i / (double)(n - 1));
    cr_set_flat(x, n / 2, 0.0);
    cr_set_flat(x, 1, 1e-7);
    cr_k_unary(CR_U_TANH, t, x, 0, 0);
    cr_k_unary(CR_U_SIGMOID, s, x, 0, 0);
    for (int64_t i = 0; i < n; i++) {
        double v = cr_get_flat(x, i), wt = tanh(v), ws = 1.0 / (1.0 + exp(-v));
        cr_assert(fabs(cr_get_flat(t, i) - wt) <= 4e-7 * fabs(wt) + 1e-45, "tanh(%.9g) = %.9g, want %.9g", v,
                  cr_get_flat(t, i), wt);
        cr_assert(fabs(cr_get_flat(s, i) - ws) <= 4e-7 * ws + 1e-38, "sigmoid(%.9g) = %.9g, want %.9g", v,
                  cr_get_flat(s, i), ws);
    }
    /* a strided view (a gate's slice) goes through the same functions */
    cr_tensor v, o;
    cr_view_narrow(&v, x, 0, 100, 1000);
    cr_tensor *out = cr_tensor_new(CR_F32, CR_SHAPE(1000));
    cr_view_narrow(&o, out, 0, 0, 1000);
    cr_k_unary(CR_U_TANH, &o, &v, 0, 0);
    for (int64_t i = 0; i < 1000; i++) cr_assert_eq(cr_get_flat(out, i), cr_get_flat(t, 100 + i));
    /* NaN in, NaN out (a diverged run), among finite lanes and in the tail;
     * the infinities saturate */
    int64_t m = 37;
    cr_tensor *e = cr_tensor_new(CR_F32, 1, &m), *et = cr_tensor_new(CR_F32, 1, &m),
              *es = cr_tensor_new(CR_F32, 1, &m);
    for (int64_t i = 0; i < m; i++) cr_set_flat(e, i, 0.5);
    cr_set_flat(e, 3, NAN);
    cr_set_flat(e, 35, NAN);
    cr_set_flat(e, 5, INFINITY);
    cr_set_flat(e, 6, -INFINITY);
    cr_k_unary(CR_U_TANH, et, e, 0, 0);
    cr_k_unary(CR_U_SIGMOID, es, e, 0, 0);
    for (int64_t i = 3; i < m; i += 32) {
        cr_assert(isnan(cr_get_flat(et, i)) && isnan(cr_get_flat(es, i)), "element %lld: NaN lost",
                  (long long)i);
    }
    cr_assert(cr_get_flat(et, 5) == 1 && cr_get_flat(et, 6) == -1 && cr_get_flat(es, 5) == 1 &&
              cr_get_flat(es, 6) >= 0 && cr_get_flat(es, 6) < 1e-37);
    cr_assert_float_eq(cr_get_flat(et, 4), tanh(0.5), 1e-7); /* a finite lane beside the NaN */
}

/* Units in the last place of a float near v (exact, from double): 2^-149 in
 * the subnormal range. */
static double f32_ulp(double v)
{
    v = fabs(v);
    if (v < FLT_MIN) return ldexp(1, -149);
    int e;
    frexp(v, &e);
    return ldexp(1, e - 24);
}

/* The f32 softmax exp over the whole float range, against libm's double exp.
 * Every 1009th float of [-110, 90] plus every float in windows around the
 * edges (1, FLT_MIN, the last nonzero result, overflow). An exhaustive run
 * over all 2.24e9 floats of [-110, 90] gave 1.218 ulp for normal results and
 * 0.777 units of 2^-149 below FLT_MIN. */
Test(tensor, softmax_exp_f32_full_range)
{
    float centres[] = {0.0f, -87.336548f, -103.27893f, -103.97208f, 88.722839f, -1e-30f, 1e-30f};
    int64_t nc = (int64_t)(sizeof centres / sizeof *centres), win = 20000;
    uint32_t lo, hi;
    float flo = -110.0f, fhi = 90.0f;
    memcpy(&lo, &flo, 4); /* negative floats: bits grow as the value falls */
    memcpy(&hi, &fhi, 4);
    int64_t n = (int64_t)(lo - 0x80000000u) / 1009 + (int64_t)hi / 1009 + 2 + nc * 2 * win, k = 0;
    cr_tensor *x = cr_tensor_new(CR_F32, 1, &n), *y = cr_tensor_new(CR_F32, 1, &n);
    float *xs = x->data;
    for (uint32_t b = 0x80000000u; b <= lo; b += 1009) memcpy(&xs[k++], &b, 4);
    for (uint32_t b = 0; b <= hi; b += 1009) memcpy(&xs[k++], &b, 4);
    for (int64_t c = 0; c < nc; c++) {
        float v = centres[c];
        for (int64_t i = 0; i < win; i++) v = nextafterf(v, -INFINITY);
        for (int64_t i = 0; i < 2 * win; i++, v = nextafterf(v, INFINITY)) xs[k++] = v;
    }
    cr_assert_eq(k, n);
    cr_k_exp_softmax(y, x);
    const float *ys = y->data;
    double worst = 0, worst_sub = 0;
    int64_t overflows = 0, zeros = 0, subnormals = 0;
    for (int64_t i = 0; i < n; i++) {
        double ref = exp((double)xs[i]);
        if (ref >= 0x1.ffffffp127) { /* rounds to inf */
            cr_assert(isinf(ys[i]) && ys[i] > 0, "exp(%a) = %a, want inf", xs[i], ys[i]);
            overflows++;
            continue;
        }
        double err = fabs((double)ys[i] - ref) / f32_ulp(ref);
        if (ref >= FLT_MIN)
            worst = fmax(worst, err);
        else {
            worst_sub = fmax(worst_sub, err);
            zeros += ys[i] == 0;
            subnormals += ys[i] != 0;
        }
        cr_assert(ref >= FLT_MIN ? err <= 1.25 : err <= 1.0, "exp(%a) = %a, want %a (%.3f ulp)", xs[i], ys[i],
                  ref, err);
    }
    cr_assert(overflows > 1000 && zeros > 1000 && subnormals > 10000, "%lld %lld %lld", (long long)overflows,
              (long long)zeros, (long long)subnormals);
    cr_log_info("softmax exp: %lld points, max %.3f ulp (normal), %.3f x 2^-149 (subnormal)\n", (long long)n,
                worst, worst_sub);
    /* the edges: NaN in gives NaN, inf and -inf the limits, no undefined
     * behaviour for any of them (the suite runs under UBSan) */
    float ex[] = {NAN,        -NAN,    INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, 0.0f,      -0.0f,    0x1p-149f,
                  -0x1p-149f, -104.0f, -200.0f,  89.0f,     1e30f,   -1e30f,   88.72283f, -103.28f, -87.0f};
    int64_t ne = (int64_t)(sizeof ex / sizeof *ex);
    cr_tensor *xe = cr_tensor_new(CR_F32, 1, &ne), *ye = cr_tensor_new(CR_F32, 1, &ne);
    memcpy(xe->data, ex, sizeof ex);
    cr_k_exp_softmax(ye, xe);
    const float *e = ye->data;
    cr_assert(isnan(e[0]) && isnan(e[1]));
    cr_assert(isinf(e[2]) && e[2] > 0 && isinf(e[4]) && isinf(e[12]) && isinf(e[13]));
    uint32_t zero_bits = 0;
    for (int i = 3; i < ne; i++)
        if (i == 3 || i == 5 || i == 10 || i == 11 || i == 14) {
            cr_assert(memcmp(&e[i], &zero_bits, 4) == 0, "exp(%a) = %a, want +0", ex[i], e[i]);
        }
    for (int i = 6; i < 10; i++) cr_assert_eq(e[i], 1.0f);
    cr_assert(isfinite(e[15]) && e[16] == 0x1p-149f, "%a %a", e[15], e[16]);
    for (int i = 15; i < 18; i++) {
        double want = exp((double)ex[i]);
        cr_assert(fabs(e[i] - want) <= f32_ulp(want) * 1.25, "exp(%a) = %a, want %a", ex[i], e[i], want);
    }
}

/* f32 softmax, log-softmax, their backward and cross-entropy's backward:
 * close to the f64 kernels, and the same bits in the baseline, AVX2 and
 * AVX-512 builds and on 1 and 2 threads (rows of 1003, not a multiple of the
 * 16 lanes; one ignored row). */
enum { SMX_OUTS = 6 };
static void softmax_f32_outputs(cr_tensor *out[SMX_OUTS], const cr_tensor *x, const cr_tensor *gy,
                                const cr_tensor *tgt)
{
    int64_t R = x->shape[0], C = x->shape[1];
    for (int k = 0; k < SMX_OUTS; k++) out[k] = cr_tensor_new(CR_F32, CR_SHAPE(R, C));
    cr_k_softmax(out[0], x, 1, false);
    cr_k_softmax(out[1], x, 1, true);
    cr_copy_(out[2], gy); /* gx += d log_softmax */
    cr_k_softmax_backward(out[2], gy, out[1], 1, true);
    cr_k_cross_entropy_backward(out[3], true, out[1], tgt, 2, 0.37);
    cr_copy_(out[4], gy);
    cr_k_cross_entropy_backward(out[4], false, out[1], tgt, 2, -1.5);
    cr_k_exp_softmax(out[5], x);
}

Test(tensor, softmax_f32_bits_on_every_isa_and_thread_count)
{
    int64_t R = 64, C = 1003;
    cr_rng r = cr_rng_seed(77);
    cr_tensor *x = cr_tensor_new(CR_F32, CR_SHAPE(R, C)), *gy = cr_tensor_new(CR_F32, CR_SHAPE(R, C));
    cr_tensor *tgt = cr_tensor_new(CR_I32, CR_SHAPE(R));
    cr_fill_normal(x, &r, 0, 8);
    cr_fill_normal(gy, &r, 0, 1);
    int32_t *t = tgt->data;
    for (int64_t i = 0; i < R; i++) t[i] = (int32_t)((i * 389) % C);
    t[5] = 2; /* the ignore index */
    cr_set_flat(x, 3 * C + 17, -INFINITY);
    cr_set_flat(x, 7 * C + 1002, -200); /* underflows to 0 */
    cr_tensor *ref[SMX_OUTS], *got[SMX_OUTS];
    int64_t saved = cr_parallel_threshold;
    int old = cr_get_num_threads();
    bool old_base = cr_gates_baseline;
    cr_gates_baseline = true;
    cr_parallel_threshold = INT64_MAX;
    cr_set_num_threads(1);
    softmax_f32_outputs(ref, x, gy, tgt);
    cr_gates_baseline = old_base;
    cr_parallel_threshold = 0;
    cr_set_num_threads(2);
    softmax_f32_outputs(got, x, gy, tgt);
    cr_parallel_threshold = saved;
    cr_set_num_threads(old);
    for (int k = 0; k < SMX_OUTS; k++)
        cr_assert(memcmp(ref[k]->data, got[k]->data, (size_t)(R * C) * sizeof(float)) == 0,
                  "output %d: baseline serial and native parallel differ", k);
    /* against double-precision libm on the same float differences x - max */
    const float *xs = x->data;
    float m = 0;
    double s = 0;
    for (int64_t i = 0; i < R * C; i++) {
        int64_t row = i / C, c = i % C;
        if (c == 0) {
            m = xs[i];
            for (int64_t j = 1; j < C; j++) m = fmaxf(m, xs[i + j]);
            s = 0;
            for (int64_t j = 0; j < C; j++) s += exp((double)(xs[i + j] - m));
        }
        double d = (double)(xs[i] - m), p = exp(d) / s, lp = d - log(s), g = cr_get_flat(gy, i);
        cr_assert(fabs(cr_get_flat(got[0], i) - p) <= 4e-7 * p + 0x1p-149, "softmax %lld: %.9g, want %.9g",
                  (long long)i, cr_get_flat(got[0], i), p);
        cr_assert(fabs(cr_get_flat(got[1], i) - lp) <= 3e-7 * fmax(1, fabs(lp)) || (isinf(lp) && lp < 0),
                  "log_softmax %lld: %.9g, want %.9g", (long long)i, cr_get_flat(got[1], i), lp);
        double oh = c == t[row], ce3 = t[row] == 2 ? 0 : 0.37 * (p - oh),
               ce4 = t[row] == 2 ? g : g - 1.5 * (p - oh);
        /* e^logp: logp's own rounding (3e-7 |logp|) comes back as a relative error */
        double tol = (p > 0 ? 1e-6 * p * fabs(lp) : 0) + 1e-40;
        cr_assert(fabs(cr_get_flat(got[3], i) - ce3) <= 1e-6 * fabs(ce3) + tol, "ce first %lld",
                  (long long)i);
        cr_assert(fabs(cr_get_flat(got[4], i) - ce4) <= 1e-6 * fabs(ce4) + 2 * tol, "ce add %lld",
                  (long long)i);
    }
}

/* A row with a NaN or +inf logit is NaN throughout (as the double-exp code
 * gave, and as PyTorch does), -inf logits get probability 0, and a row of
 * -inf only is NaN; the NaN may sit in any of the 16 lanes or the tail. */
Test(tensor, softmax_f32_nan_and_inf_rows)
{
    int64_t R = 6, C = 21;
    cr_tensor *x = cr_tensor_new(CR_F32, CR_SHAPE(R, C)), *p = cr_tensor_new(CR_F32, CR_SHAPE(R, C)),
              *lp = cr_tensor_new(CR_F32, CR_SHAPE(R, C));
    for (int64_t i = 0; i < R * C; i++) cr_set_flat(x, i, (double)(i % 7) - 3);
    cr_set_flat(x, 0 * C + 0, NAN);       /* the first element */
    cr_set_flat(x, 1 * C + 18, NAN);      /* the tail */
    cr_set_flat(x, 2 * C + 5, INFINITY);  /* +inf */
    cr_set_flat(x, 3 * C + 4, -INFINITY); /* -inf: probability 0 */
    cr_set_flat(x, 3 * C + 20, -INFINITY);
    for (int64_t j = 0; j < C; j++) cr_set_flat(x, 4 * C + j, -INFINITY); /* all -inf */
    cr_k_softmax(p, x, 1, false);
    cr_k_softmax(lp, x, 1, true);
    for (int64_t row = 0; row < R; row++)
        for (int64_t j = 0; j < C; j++) {
            double a = cr_get_flat(p, row * C + j), b = cr_get_flat(lp, row * C + j);
            if (row <= 2 || row == 4)
                cr_assert(isnan(a) && isnan(b), "row %lld col %lld: %g %g", (long long)row, (long long)j, a,
                          b);
            else if (row == 3 && (j == 4 || j == 20))
                cr_assert(a == 0 && isinf(b) && b < 0);
            else
                cr_assert(isfinite(a) && a > 0 && isfinite(b), "row %lld col %lld", (long long)row,
                          (long long)j);
        }
}
