/*
 * Data-parallel training (optim/parallel.c) and what it stands on: the serial
 * product path against BLIS on 1 to 4 threads, the per-thread gradient hook,
 * shard streams for dropout, bit-identical weights on any thread count and in
 * either mode, the fixed tree over shard ranges (MPI), one parallel region
 * per replica step, and misuse.
 */
#include <blis.h>
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include "carousel.h"
#include "expect_error.h"
#include "parallel_model.h"

/* This suite links with -Wl,--wrap=GOMP_parallel: every OpenMP region that
 * carousel (a static library here) or this file enters passes through it. */
void __real_GOMP_parallel(void (*fn)(void *), void *data, unsigned n, unsigned flags);
static atomic_long n_regions;
void __wrap_GOMP_parallel(void (*fn)(void *), void *data, unsigned n, unsigned flags)
{
    atomic_fetch_add(&n_regions, 1);
    __real_GOMP_parallel(fn, data, n, flags);
}

static const pm_config small = {.B = 12,
                                .T = 7,
                                .V = 11,
                                .E = 6,
                                .H = 9,
                                .layers = 2,
                                .dropout = 0.3,
                                .lengths = true,
                                .carry = true,
                                .seed = 5};

/* ---- products: the serial path is BLIS's arithmetic ------------------------------------ */

/* The operands of one product C = A B (+ C): random A, B and C (C0, with its
 * first contents saved in c_in, and C1 for the second path), and the views a
 * and b, row-major or the transposes of [k, m] and [n, k] tensors. */
typedef struct {
    cr_tensor *A, *B, *C0, *C1;
    cr_tensor a, b;
    void *c_in;
    size_t bytes;
} operands;

static operands operands_make(cr_dtype dt, int64_t m, int64_t n, int64_t k, bool ta, bool tb, uint64_t seed)
{
    operands o = {.A = ta ? cr_tensor_init(dt, CR_SHAPE(k, m)) : cr_tensor_init(dt, CR_SHAPE(m, k)),
                  .B = tb ? cr_tensor_init(dt, CR_SHAPE(n, k)) : cr_tensor_init(dt, CR_SHAPE(k, n)),
                  .C0 = cr_tensor_init(dt, CR_SHAPE(m, n)),
                  .C1 = cr_tensor_init(dt, CR_SHAPE(m, n)),
                  .bytes = (size_t)(m * n) * cr_dtype_size(dt)};
    cr_rng r = cr_rng_seed(seed);
    cr_fill_uniform(o.A, &r, -1, 1);
    cr_fill_uniform(o.B, &r, -1, 1);
    cr_fill_uniform(o.C0, &r, -1, 1);
    o.c_in = malloc(o.bytes);
    memcpy(o.c_in, o.C0->data, o.bytes);
    if (ta)
        cr_view_transpose(&o.a, o.A, 0, 1);
    else
        o.a = *o.A;
    if (tb)
        cr_view_transpose(&o.b, o.B, 0, 1);
    else
        o.b = *o.B;
    return o;
}

static void operands_free(operands *o)
{
    free(o->c_in);
    cr_tensor_free(o->A);
    cr_tensor_free(o->B);
    cr_tensor_free(o->C0);
    cr_tensor_free(o->C1);
}

/* C = A B (+ C) through cr_k_gemm on one thread against bli_?gemm_ex on nt
 * threads, for operands given as row-major or transposed views. */
static void gemm_case(cr_dtype dt, int64_t m, int64_t n, int64_t k, bool ta, bool tb, double beta)
{
    operands o = operands_make(dt, m, n, k, ta, tb, (uint64_t)(m * 131 + n * 7 + k));
    const cr_tensor *a = &o.a, *b = &o.b;
    cr_serial_begin();
    cr_k_gemm(1.0, a, b, beta, o.C0);
    cr_serial_end();
    for (int nt = 1; nt <= 4; nt++) {
        memcpy(o.C1->data, o.c_in, o.bytes);
        rntm_t rn = BLIS_RNTM_INITIALIZER;
        bli_rntm_set_num_threads(nt, &rn);
        bli_rntm_disable_l3_sup(&rn); /* BLIS's packed path, as cr_k_gemm's threads (gemm.c) */
        if (dt == CR_F32) {
            float one = 1, be = (float)beta;
            bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, a->data, a->stride[0],
                         a->stride[1], b->data, b->stride[0], b->stride[1], &be, o.C1->data, n, 1, NULL, &rn);
        } else {
            double one = 1;
            bli_dgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, a->data, a->stride[0],
                         a->stride[1], b->data, b->stride[0], b->stride[1], &beta, o.C1->data, n, 1, NULL,
                         &rn);
        }
        cr_assert(
            memcmp(o.C0->data, o.C1->data, o.bytes) == 0,
            "%s [%lld,%lld]x[%lld,%lld] ta=%d tb=%d beta=%g: serial path differs from BLIS on %d threads",
            cr_dtype_name(dt), (long long)m, (long long)k, (long long)k, (long long)n, ta, tb, beta, nt);
    }
    operands_free(&o);
}

Test(parallel, serial_products_are_blis_bits_on_1_to_4_threads, .timeout = 300)
{
    /* LSTM-shaped products of a shard (rows 8, 16, 64) at H = 64 and 160:
     * recurrent, input projection, head, their backward products (the
     * transposed layouts), and the weight gradients (inner dim = rows). Edges
     * of the micro-tiles and of KC blocks (k = 400 > 384) included. */
    const int64_t shapes[][3] = {{8, 256, 64},  {16, 640, 160}, {64, 256, 64},  {8, 64, 256},  {16, 65, 160},
                                 {64, 160, 65}, {64, 256, 16},  {160, 640, 16}, {33, 47, 400}, {1, 300, 120}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                gemm_case(CR_F32, shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, s % 2 ? 1.0 : 0.0);
    gemm_case(CR_F64, 24, 90, 70, false, true, 0.0);
    gemm_case(CR_F64, 70, 24, 300, true, false, 1.0);
}

/* C = A B (+ C) through cr_k_gemm_packed (B packed once) against cr_k_gemm
 * on one thread, the packed product on 1 to 4 threads and inside a serial
 * section, with B row-major or a transposed view, A row-major or transposed. */
static void packed_case(cr_dtype dt, int64_t m, int64_t n, int64_t k, bool ta, bool tb, double beta)
{
    operands o = operands_make(dt, m, n, k, ta, tb, (uint64_t)(m * 17 + n * 5 + k));
    int64_t np = cr_k_gemm_pack_numel(&o.b);
    cr_assert_gt(np, (int64_t)0);
    cr_tensor *P = cr_tensor_init(dt, CR_SHAPE(np + 3)), pv; /* an odd offset: any alignment is accepted */
    cr_view_narrow(&pv, P, 0, 3, np);
    cr_k_gemm_pack(&pv, &o.b);
    cr_serial_begin();
    cr_k_gemm(1.0, &o.a, &o.b, beta, o.C0);
    cr_serial_end();
    for (int nt = 0; nt <= 4; nt++) { /* 0: one thread allowed, inside a serial section */
        memcpy(o.C1->data, o.c_in, o.bytes);
        omp_set_num_threads(nt ? nt : 2);
        if (!nt) cr_serial_begin();
        cr_k_gemm_packed(1.0, &o.a, &o.b, &pv, beta, o.C1);
        if (!nt) cr_serial_end();
        cr_assert(memcmp(o.C0->data, o.C1->data, o.bytes) == 0,
                  "%s [%lld,%lld]x[%lld,%lld] ta=%d tb=%d beta=%g: packed product differs on %d threads",
                  cr_dtype_name(dt), (long long)m, (long long)k, (long long)k, (long long)n, ta, tb, beta,
                  nt);
    }
    omp_set_num_threads(1);
    cr_tensor_free(P);
    operands_free(&o);
}

Test(parallel, packed_products_are_cr_k_gemm_bits_on_1_to_4_threads, .timeout = 300)
{
    int64_t par = cr_gemm_parallel_threshold;
    cr_gemm_parallel_threshold = 0; /* every product here on the threads asked for */
    /* recurrent products h W^T and dh = dz W (m = batch rows), KC edges (k =
     * 400, 1000), panel edges (n not a multiple of the micro-tile), one row,
     * and a product small enough for the C kernel (the pack is then unused) */
    const int64_t shapes[][3] = {{32, 512, 128}, {32, 128, 512}, {7, 300, 400}, {33, 47, 1000},
                                 {1, 300, 120},  {64, 97, 33},   {4, 8, 8},     {3, 2, 520}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                packed_case(CR_F32, shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, s % 2 ? 1.0 : 0.0);
    packed_case(CR_F64, 24, 90, 70, false, true, 0.0);
    packed_case(CR_F64, 33, 100, 300, true, false, 1.0);
    cr_gemm_parallel_threshold = par;
}

/* carousel's own micro-kernel for packed f32 products (tensor/gemm_ukr.c)
 * runs where the CPU has AVX-512 and BLIS its skx kernels, whose arithmetic
 * it reproduces; elsewhere packed products stay on BLIS's kernel. */
static bool own_kernel_expected(void)
{
    return __builtin_cpu_supports("avx512f") && bli_arch_query_id() == BLIS_ARCH_SKX;
}

/* C = alpha A B + beta C through a pack, against cr_k_gemm on one thread,
 * on 1 and 2 threads; A row-major with a row stride wider than k (a narrowed
 * view) or transposed. beta 0 starts from a C of NaNs (never read). Checks
 * that the own kernel ran (or did not) as expected. */
static void own_case(int64_t m, int64_t n, int64_t k, bool ta, double alpha, double beta)
{
    cr_tensor *A = ta ? cr_tensor_init(CR_F32, CR_SHAPE(k, m)) : cr_tensor_init(CR_F32, CR_SHAPE(m, k + 5));
    cr_tensor *B = cr_tensor_init(CR_F32, CR_SHAPE(k, n)), *C0 = cr_tensor_init(CR_F32, CR_SHAPE(m, n)),
              *C1 = cr_tensor_init(CR_F32, CR_SHAPE(m, n)), a;
    cr_rng r = cr_rng_seed((uint64_t)(m * 1009 + n * 31 + k));
    cr_fill_uniform(A, &r, -1, 1);
    cr_fill_uniform(B, &r, -1, 1);
    cr_fill_uniform(C0, &r, -1, 1);
    if (beta == 0) cr_fill(C0, NAN);
    size_t bytes = (size_t)(m * n) * sizeof(float);
    void *c_in = malloc(bytes);
    memcpy(c_in, C0->data, bytes);
    if (ta)
        cr_view_transpose(&a, A, 0, 1);
    else
        cr_view_narrow(&a, A, 1, 2, k);
    cr_tensor *P = cr_tensor_init(CR_F32, CR_SHAPE(cr_k_gemm_pack_numel(B)));
    cr_k_gemm_pack(P, B);
    cr_serial_begin();
    cr_k_gemm(alpha, &a, B, beta, C0);
    cr_serial_end();
    for (int nt = 1; nt <= 2; nt++) {
        memcpy(C1->data, c_in, bytes);
        omp_set_num_threads(nt);
        int64_t before = cr_k_gemm_own_count();
        cr_k_gemm_packed(alpha, &a, B, P, beta, C1);
        int64_t ran = cr_k_gemm_own_count() - before;
        cr_assert_eq(ran, own_kernel_expected() && !cr_gemm_blis_only ? 1 : 0,
                     "[%lld,%lld]x[%lld,%lld]: own kernel ran %lld times", (long long)m, (long long)k,
                     (long long)k, (long long)n, (long long)ran);
        cr_assert(memcmp(C0->data, C1->data, bytes) == 0,
                  "[%lld,%lld]x[%lld,%lld] ta=%d alpha=%g beta=%g: packed product differs on %d threads",
                  (long long)m, (long long)k, (long long)k, (long long)n, ta, alpha, beta, nt);
    }
    omp_set_num_threads(1);
    free(c_in);
    cr_tensor_free(P);
    cr_tensor_free(A);
    cr_tensor_free(B);
    cr_tensor_free(C0);
    cr_tensor_free(C1);
}

Test(parallel, packed_own_kernel_edges_are_cr_k_gemm_bits, .timeout = 300)
{
    int64_t par = cr_gemm_parallel_threshold, fetch = cr_gemm_fetch_bytes;
    cr_gemm_parallel_threshold = 0;         /* 2 threads really split the panels */
    cr_gemm_fetch_bytes = (int64_t)1 << 20; /* on every CPU: 8 MB on AMD */
    /* rows: one tile, partial tiles, exact tiles, past them, and more than
     * the 192 rows packed at a time (BLIS's own edge tiles of 12 rows fall
     * elsewhere); columns: partial panels and BLIS's 32-column edge; k in KC
     * blocks of 384 + 116, 384 + 384 + 232 and 384 + 316 (KC 384, at most
     * 480 in one block); every product above cr_gemm_small_threshold, so the
     * pack is used; a pack over 1 MB ([1000,300]), for which the tiles fetch
     * the next panel ahead, each group of rows its share of it */
    const int64_t rows[] = {1, 7, 8, 16, 17, 32, 33, 200},
                  cols[][2] = {{97, 500}, {200, 1000}, {50, 700}, {300, 1000}};
    const double ab[][2] = {{1, 0}, {1, 1}, {0.5, 0.75}, {-1.3, -1.5}, {1, 0.3}, {2.5, 0}};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        for (size_t j = 0; j < sizeof cols / sizeof *cols; j++)
            for (size_t s = 0; s < sizeof ab / sizeof *ab; s++)
                own_case(rows[i], cols[j][0], cols[j][1], (i + j + s) % 2, ab[s][0], ab[s][1]);
    cr_gemm_parallel_threshold = par;
    cr_gemm_fetch_bytes = fetch;
}

/* Small products through a pack (cr_k_gemm would give them to its C kernel)
 * against cr_k_gemm: the same bits, whether the pack's AVX-512 copy of the C
 * kernel's arithmetic ran (B row-major) or the C kernel itself (B a
 * transposed matrix and A row-major: its partial sums of dot products; or k
 * beyond one KC block). A row-major with wide rows or transposed, C's rows
 * wider than n, beta 0 from a C of NaNs; columns over one to eight panels
 * with partial last ones. */
Test(parallel, small_products_on_a_pack_are_the_c_kernels_bits)
{
    const int64_t shapes[][3] = {{1, 128, 32}, {1, 32, 128}, {2, 200, 50}, {1, 65, 7}, {3, 97, 17},
                                 {1, 256, 64}, {4, 8, 8},    {1, 2, 500},  {1, 1, 9},  {5, 33, 1}};
    const double ab[][2] = {{1, 0}, {1, 1}, {0.5, 0.75}, {-1.3, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int layout = 0; layout < 4; layout++) {
            bool ta = layout & 1, tb = layout & 2;
            int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            cr_assert_leq(m * n * k, cr_gemm_small_threshold);
            const double *al = ab[(s + (size_t)layout) % 4];
            operands o = operands_make(CR_F32, m, n, k, ta, tb, (uint64_t)(m * 3 + n * 7 + k * 11));
            cr_tensor *W = cr_tensor_init(CR_F32, CR_SHAPE(m, n + 2)), c;
            cr_view_narrow(&c, W, 1, 1, n);
            cr_tensor *P = cr_tensor_init(CR_F32, CR_SHAPE(cr_k_gemm_pack_numel(&o.b)));
            cr_k_gemm_pack(P, &o.b);
            float *want = malloc((size_t)(m * n) * sizeof(float));
            for (int side = 0; side < 2; side++) {
                cr_fill(W, al[1] == 0 ? NAN : 0.25f);
                int64_t before = cr_k_gemm_own_small_count();
                if (side == 0)
                    cr_k_gemm(al[0], &o.a, &o.b, al[1], &c);
                else
                    cr_k_gemm_packed(al[0], &o.a, &o.b, P, al[1], &c);
                int64_t ran = cr_k_gemm_own_small_count() - before;
                /* the C kernel's dot products: B transposed, A's rows contiguous (so also
                 * a transposed A of one row) */
                bool dots = o.b.stride[0] == 1 && o.b.stride[1] != 1 && o.a.stride[1] == 1;
                bool expect = side == 1 && !dots && k <= 480 && own_kernel_expected();
                cr_assert_eq(ran, expect ? 1 : 0, "[%lld,%lld]x[%lld,%lld] ta=%d tb=%d: ran %lld times",
                             (long long)m, (long long)k, (long long)k, (long long)n, ta, tb, (long long)ran);
                for (int64_t i = 0; i < m; i++) {
                    float *row = (float *)c.data + i * c.stride[0];
                    if (side == 0)
                        memcpy(want + i * n, row, (size_t)n * sizeof(float));
                    else
                        cr_assert(memcmp(want + i * n, row, (size_t)n * sizeof(float)) == 0,
                                  "[%lld,%lld]x[%lld,%lld] ta=%d tb=%d alpha=%g beta=%g: row %lld differs",
                                  (long long)m, (long long)k, (long long)k, (long long)n, ta, tb, al[0],
                                  al[1], (long long)i);
                }
            }
            free(want);
            cr_tensor_free(P);
            cr_tensor_free(W);
            operands_free(&o);
        }
}

/* C = alpha A B + beta C through cr_k_gemm without a pack (carousel's kernel
 * with B packed on the way, where it runs), on one thread and split over 2
 * and 3 threads, against bli_sgemm_ex on one thread; A and B row-major or
 * transposed, C's rows wider than n (a narrowed view), or with tc C stored
 * by columns (a transposed view of a narrowed [n, m + 3]: carousel's kernel
 * where m > 128 and n >= 1024, else BLIS's). beta 0 starts from a C of
 * NaNs. */
static void own_plain_case(int64_t m, int64_t n, int64_t k, bool ta, bool tb, bool tc, double alpha,
                           double beta)
{
    operands o = operands_make(CR_F32, m, n, k, ta, tb, (uint64_t)(m * 7 + n * 131 + k * 3));
    int64_t rows = tc ? n : m, cols = tc ? m : n, ldc = cols + 3;
    cr_tensor *W0 = cr_tensor_init(CR_F32, CR_SHAPE(rows, ldc)),
              *W1 = cr_tensor_init(CR_F32, CR_SHAPE(rows, ldc));
    cr_rng r = cr_rng_seed((uint64_t)(m + n + k));
    cr_fill_uniform(W0, &r, -1, 1);
    if (beta == 0) cr_fill(W0, NAN);
    size_t bytes = (size_t)(rows * ldc) * sizeof(float);
    void *w_in = malloc(bytes);
    memcpy(w_in, W0->data, bytes);
    cr_tensor c0, c1;
    cr_view_narrow(&c0, W0, 1, 0, cols);
    cr_view_narrow(&c1, W1, 1, 0, cols);
    if (tc) {
        cr_tensor n0 = c0, n1 = c1;
        cr_view_transpose(&c0, &n0, 0, 1);
        cr_view_transpose(&c1, &n1, 0, 1);
    }
    float al = (float)alpha, be = (float)beta;
    rntm_t rn = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(1, &rn);
    bli_rntm_disable_l3_sup(&rn); /* BLIS's packed path, as cr_k_gemm's threads (gemm.c) */
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &al, o.a.data, o.a.stride[0], o.a.stride[1],
                 o.b.data, o.b.stride[0], o.b.stride[1], &be, c0.data, c0.stride[0], c0.stride[1], NULL, &rn);
    for (int nt = 0; nt <= 3; nt++) { /* 0: inside a serial section */
        if (nt == 1) continue;
        memcpy(W1->data, w_in, bytes);
        omp_set_num_threads(nt ? nt : 2);
        if (!nt) cr_serial_begin();
        int64_t before = cr_k_gemm_own_plain_count();
        cr_k_gemm(alpha, &o.a, &o.b, beta, &c1);
        int64_t ran = cr_k_gemm_own_plain_count() - before;
        if (!nt) cr_serial_end();
        bool own = own_kernel_expected() && (!tc || (m > 128 && n >= 1024));
        cr_assert_eq(ran, own ? 1 : 0, "[%lld,%lld]x[%lld,%lld] tc=%d: own kernel ran %lld times",
                     (long long)m, (long long)k, (long long)k, (long long)n, tc, (long long)ran);
        cr_assert(
            memcmp(W0->data, W1->data, bytes) == 0,
            "[%lld,%lld]x[%lld,%lld] ta=%d tb=%d tc=%d alpha=%g beta=%g: differs from BLIS on %d threads",
            (long long)m, (long long)k, (long long)k, (long long)n, ta, tb, tc, alpha, beta, nt);
    }
    omp_set_num_threads(1);
    free(w_in);
    cr_tensor_free(W0);
    cr_tensor_free(W1);
    operands_free(&o);
}

Test(parallel, plain_products_on_the_own_kernel_are_blis_bits, .timeout = 300)
{
    int64_t par = cr_gemm_parallel_threshold;
    cr_gemm_parallel_threshold = 0; /* threads really split the product */
    /* The step's products at small sizes (input projection, head with 65
     * classes, their backward products, stacked weight gradients), and edges:
     * rows past one block of 192 and not a multiple of 8 or 12, columns past
     * one block of 1024 and not a multiple of 32, k in KC blocks (384 + 116,
     * 384 + 384 + 232), more columns than rows (split by columns), narrow C
     * (at most 128 columns) with rows past one block of 512. Each also with
     * C stored by columns; [393, 1057], [200, 1030] and [129, 2100] are wide
     * and tall enough for carousel's kernel then (a transposed head's
     * gradient like DyNet's [256, 10000]: C^T with 1030 rows and 200
     * columns, past one block of 192 rows and of 1024 columns). */
    const int64_t shapes[][3] = {{200, 256, 64},   {130, 65, 160}, {130, 160, 65},  {65, 160, 400},
                                 {416, 64, 500},   {7, 1100, 70},  {13, 97, 1000},  {1, 300, 120},
                                 {393, 1057, 130}, {40, 2100, 33}, {1100, 40, 300}, {200, 1030, 450},
                                 {129, 2100, 40}};
    const double ab[][2] = {{1, 0}, {1, 1}, {0.5, 0.75}, {-1.3, -1.5}, {1, 0.3}, {2.5, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int t = 0; t < 8; t++)
            own_plain_case(shapes[s][0], shapes[s][1], shapes[s][2], t & 1, (t >> 1) & 1, t >> 2,
                           ab[(s + t) % 6][0], ab[(s + t) % 6][1]);
    /* cr_gemm_blis_only keeps products on BLIS's kernel */
    operands o = operands_make(CR_F32, 64, 64, 64, false, false, 9);
    cr_gemm_blis_only = true;
    int64_t before = cr_k_gemm_own_plain_count();
    cr_k_gemm(1.0, &o.a, &o.b, 0.0, o.C0);
    cr_assert_eq(cr_k_gemm_own_plain_count(), before);
    cr_gemm_blis_only = false;
    operands_free(&o);
    cr_gemm_parallel_threshold = par;
}

Test(parallel, packs_are_read_the_way_they_were_made)
{
    /* A pack made for BLIS's kernel (cr_gemm_blis_only) stays BLIS's after
     * the flag is cleared, and an own-kernel pack stays the own kernel's
     * after it is set: the product follows the pack's header, bits equal. */
    int64_t m = 32, n = 256, k = 500;
    cr_tensor *A = cr_tensor_init(CR_F32, CR_SHAPE(m, k)), *B = cr_tensor_init(CR_F32, CR_SHAPE(k, n));
    cr_tensor *C0 = cr_tensor_init(CR_F32, CR_SHAPE(m, n)), *C1 = cr_tensor_init(CR_F32, CR_SHAPE(m, n));
    cr_rng r = cr_rng_seed(3);
    cr_fill_uniform(A, &r, -1, 1);
    cr_fill_uniform(B, &r, -1, 1);
    cr_serial_begin();
    cr_k_gemm(1.0, A, B, 0.0, C0);
    for (int blis = 0; blis < 2; blis++) {
        cr_gemm_blis_only = blis;
        cr_tensor *P = cr_tensor_init(CR_F32, CR_SHAPE(cr_k_gemm_pack_numel(B)));
        cr_k_gemm_pack(P, B);
        cr_gemm_blis_only = !blis;
        int64_t before = cr_k_gemm_own_count();
        cr_k_gemm_packed(1.0, A, B, P, 0.0, C1);
        cr_assert_eq(cr_k_gemm_own_count() - before, !blis && own_kernel_expected() ? 1 : 0);
        cr_assert(memcmp(C0->data, C1->data, (size_t)(m * n) * sizeof(float)) == 0, "blis_only=%d", blis);
        cr_tensor_free(P);
    }
    cr_gemm_blis_only = false;
    /* a pack of another B (one column more) is not read: the product is cr_k_gemm's */
    cr_tensor *B2 = cr_tensor_init(CR_F32, CR_SHAPE(k, n - 1)),
              *C2 = cr_tensor_init(CR_F32, CR_SHAPE(m, n - 1)),
              *C3 = cr_tensor_init(CR_F32, CR_SHAPE(m, n - 1));
    cr_fill_uniform(B2, &r, -1, 1);
    cr_tensor *P = cr_tensor_init(CR_F32, CR_SHAPE(cr_k_gemm_pack_numel(B)));
    cr_k_gemm_pack(P, B);
    int64_t before = cr_k_gemm_own_count();
    cr_k_gemm_packed(1.0, A, B2, P, 0.0, C2);
    cr_assert_eq(cr_k_gemm_own_count(), before);
    cr_k_gemm(1.0, A, B2, 0.0, C3);
    cr_assert(memcmp(C2->data, C3->data, (size_t)(m * (n - 1)) * sizeof(float)) == 0);
    cr_serial_end();
    cr_tensor_free(P);
    cr_tensor_free(B2);
    cr_tensor_free(C2);
    cr_tensor_free(C3);
    cr_tensor_free(A);
    cr_tensor_free(B);
    cr_tensor_free(C0);
    cr_tensor_free(C1);
}

/* A pack made on 2 to 4 threads (the panels split among them) is the pack
 * made inside a serial section, byte for byte: B row-major and transposed,
 * a last KC block shorter than the others (k = 900) and a last panel with
 * padding (n = 1000). */
Test(parallel, packs_made_on_threads_are_the_serial_pack)
{
    int64_t k = 900, n = 1000;
    cr_tensor *B = cr_tensor_init(CR_F32, CR_SHAPE(k, n)), *Bt = cr_tensor_init(CR_F32, CR_SHAPE(n, k)), bt;
    cr_rng r = cr_rng_seed(8);
    cr_fill_uniform(B, &r, -1, 1);
    cr_fill_uniform(Bt, &r, -1, 1);
    cr_view_transpose(&bt, Bt, 0, 1);
    const cr_tensor *bs[2] = {B, &bt};
    for (int t = 0; t < 2; t++) {
        /* two packs 64-byte multiples apart in one buffer: the same alignment,
         * so the same bytes before the header are left alone */
        int64_t np = cr_k_gemm_pack_numel(bs[t]), off = (np + 15) / 16 * 16;
        cr_tensor *buf = cr_tensor_init(CR_F32, CR_SHAPE(off + np)), p0, p1, *P0 = &p0, *P1 = &p1;
        cr_view_narrow(P0, buf, 0, 0, np);
        cr_view_narrow(P1, buf, 0, off, np);
        memset(P0->data, 0xff, (size_t)np * sizeof(float));
        cr_serial_begin();
        cr_k_gemm_pack(P0, bs[t]);
        cr_serial_end();
        for (int nt = 2; nt <= 4; nt++) {
            omp_set_num_threads(nt);
            memset(P1->data, 0xff, (size_t)np * sizeof(float));
            int64_t before = atomic_load(&n_regions);
            cr_k_gemm_pack(P1, bs[t]);
            cr_assert_gt(atomic_load(&n_regions), before, "the pack did not fork");
            cr_assert(memcmp(P0->data, P1->data, (size_t)np * sizeof(float)) == 0,
                      "transposed=%d: the pack on %d threads differs", t, nt);
        }
        omp_set_num_threads(1);
        cr_tensor_free(buf);
    }
    cr_tensor_free(B);
    cr_tensor_free(Bt);
}

/* The lookup's gradient, a scatter-add whose columns threads share out, is
 * the same on 1 to 4 threads and equal to the rows added in order (repeated
 * indices, a skipped index, a width that leaves a partial slice). */
Test(parallel, lookup_gradient_is_the_same_on_1_to_4_threads)
{
    int64_t V = 6, width = 1300, m = 40;
    cr_tensor *gy = cr_tensor_init(CR_F32, CR_SHAPE(m, width)),
              *want = cr_tensor_init(CR_F32, CR_SHAPE(V, width));
    cr_tensor *idx = cr_tensor_init(CR_I32, CR_SHAPE(m));
    cr_rng r = cr_rng_seed(12);
    cr_fill_uniform(gy, &r, -1, 1);
    int32_t *ix = idx->data;
    for (int64_t i = 0; i < m; i++) ix[i] = (int32_t)((i * 7 + i / 3) % V); /* every row several times */
    const int32_t skip = 2;
    float *w = want->data;
    const float *g = gy->data;
    memset(w, 0, (size_t)(V * width) * sizeof(float));
    for (int64_t i = 0; i < m; i++)
        if (ix[i] != skip)
            for (int64_t j = 0; j < width; j++) w[ix[i] * width + j] += g[i * width + j];
    for (int nt = 1; nt <= 4; nt++) {
        omp_set_num_threads(nt);
        cr_graph *gr = cr_graph_init();
        cr_graph *old = cr_graph_use(gr);
        cr_tensor *table = cr_tensor_init(CR_F32, CR_SHAPE(V, width));
        cr_requires_grad(table, true);
        int64_t before = atomic_load(&n_regions);
        cr_backward_with(cr_gather_rows(table, idx, skip), gy);
        if (nt > 1) cr_assert_gt(atomic_load(&n_regions), before, "nothing forked on %d threads", nt);
        cr_assert(memcmp(table->grad->data, w, (size_t)(V * width) * sizeof(float)) == 0,
                  "the lookup's gradient on %d threads is not the rows added in order", nt);
        cr_graph_use(old);
        cr_graph_free(gr);
        cr_tensor_free(table);
    }
    omp_set_num_threads(1);
    cr_tensor_free(gy);
    cr_tensor_free(want);
    cr_tensor_free(idx);
}

Test(parallel, serial_sections_keep_kernels_from_forking)
{
    omp_set_num_threads(2);
    cr_assert(cr_parallel_ok());
    cr_serial_begin();
    cr_assert_not(cr_parallel_ok());
    cr_serial_begin();
    cr_serial_end();
    cr_assert(cr_serial());
    cr_serial_end();
    cr_assert(cr_parallel_ok());
    bool inside = true;
#pragma omp parallel num_threads(2)
    {
#pragma omp master
        inside = cr_parallel_ok();
    }
    cr_assert_not(inside, "no kernel forks inside a parallel region");
    omp_set_num_threads(1);
    cr_assert_not(cr_parallel_ok(), "a team of one is never forked");
    EXPECT_ERROR(cr_serial_end(), "cr_serial_end: no cr_serial_begin");
}

/* ---- one shard on one thread is plain training ------------------------------------------ */

Test(parallel, one_shard_is_serial_training_bit_for_bit)
{
    pm_config cfg = small;
    cfg.dropout = 0; /* the serial side would draw from the layer's generator */
    pm_model a = pm_make(cfg, 1), b = pm_make(cfg, 1);
    pm_train(&a, 3, 1, 1, CR_PARALLEL_REPLICAS, 0.05);
    cr_graph *g = cr_graph_init();
    cr_graph *old = cr_graph_use(g);
    cr_shard whole = {.index = 0, .shards = 1, .begin = 0, .end = cfg.B, .rows = cfg.B, .weight = 1};
    for (int k = 0; k < 3; k++) {
        pm_next_batch(&b);
        cr_optim_zero_grad(b.opt);
        cr_backward(pm_loss(&b, &whole));
        cr_assert_eq(cr_clip_grad_norm(b.ps, 0.05, NULL), CR_OK);
        cr_optim_step(b.opt);
        pm_carry(&b, &whole);
        cr_graph_clear(g);
    }
    cr_graph_use(old);
    cr_graph_free(g);
    cr_assert(pm_same_weights(a.ps, b.ps));
    pm_free(&a);
    pm_free(&b);
}

Test(parallel, sharded_gradient_is_the_batch_gradient)
{
    pm_config cfg = small;
    cfg.dropout = 0;
    cfg.carry = false;
    pm_model m = pm_make(cfg, 5);
    pm_next_batch(&m);
    cr_trainer *t = cr_trainer_init(m.ps, (cr_trainer_config){.shards = 5, .threads = 2});
    cr_task task = pm_task(&m);
    double loss = cr_trainer_backward(t, &task);
    cr_trainer_publish(t);
    /* the whole batch at once, serially */
    size_t n = m.ps->n;
    cr_tensor **want = calloc(n, sizeof *want);
    for (size_t i = 0; i < n; i++) {
        cr_tensor *p = m.ps->items[i].value;
        want[i] = cr_tensor_init(p->dtype, p->ndim, p->shape);
        cr_copy_(want[i], p->grad);
    }
    cr_graph *g = cr_graph_init();
    cr_graph *old = cr_graph_use(g);
    cr_shard whole = {.index = 0, .shards = 1, .begin = 0, .end = cfg.B, .rows = cfg.B, .weight = 1};
    cr_optim_zero_grad(m.opt);
    cr_tensor *l = pm_loss(&m, &whole);
    cr_assert_float_eq(cr_item(l), loss, 1e-6 * fabs(loss));
    cr_backward(l);
    for (size_t i = 0; i < n; i++) {
        const cr_tensor *gs = want[i], *gb = m.ps->items[i].value->grad;
        for (int64_t k = 0; k < cr_numel(gs); k++)
            cr_assert_float_eq(cr_get_flat(gs, k), cr_get_flat(gb, k), 1e-6 + 1e-5 * fabs(cr_get_flat(gb, k)),
                               "%s[%lld]", m.ps->items[i].name, (long long)k);
        cr_tensor_free(want[i]);
    }
    free(want);
    cr_graph_use(old);
    cr_graph_free(g);
    cr_trainer_free(t);
    pm_free(&m);
}

/* ---- the moonshot: the same weights on any thread count -------------------------------- */

Test(parallel, identical_weights_on_1_2_3_4_threads_and_in_both_modes, .timeout = 300)
{
    /* dropout between layers, variable lengths, carried state, clipping that
     * bites (0.05), Adam; 5 shards, so threads get unequal shares */
    pm_model ref = pm_make(small, 5);
    double l_ref = pm_train(&ref, 4, 5, 1, CR_PARALLEL_REPLICAS, 0.05);
    cr_assert(isfinite(l_ref));
    for (int threads = 2; threads <= 4; threads++) {
        pm_model m = pm_make(small, 5);
        double l = pm_train(&m, 4, 5, threads, CR_PARALLEL_REPLICAS, 0.05);
        cr_assert_eq(l, l_ref, "loss on %d threads: %.17g vs %.17g", threads, l, l_ref);
        cr_assert(pm_same_weights(m.ps, ref.ps), "weights on %d threads differ from 1 thread", threads);
        cr_assert(memcmp(m.h->data, ref.h->data, (size_t)cr_numel(m.h) * 4) == 0, "carried state differs");
        pm_free(&m);
    }
    pm_model io = pm_make(small, 5);
    omp_set_num_threads(2);
    pm_train(&io, 4, 5, 2, CR_PARALLEL_INTRA_OP, 0.05);
    cr_assert(pm_same_weights(io.ps, ref.ps), "intra-op mode gives other weights");
    pm_free(&io);
    pm_free(&ref);
}

Test(parallel, dropout_streams_belong_to_shards_not_threads)
{
    /* every row the same: without dropout all shards' losses agree; with it
     * each shard (and each step) draws its own masks */
    pm_config cfg = small;
    cfg.lengths = false;
    cfg.carry = false;
    cfg.dropout = 0.5;
    pm_model m = pm_make(cfg, 4);
    pm_next_batch(&m);
    for (int64_t b = 1; b < cfg.B; b++) {
        memcpy((int32_t *)m.x->data + b * cfg.T, m.x->data, (size_t)cfg.T * 4);
        memcpy((int32_t *)m.y->data + b * cfg.T, m.y->data, (size_t)cfg.T * 4);
    }
    cr_tensor_bump_version(m.x);
    cr_tensor_bump_version(m.y);
    cr_graph *g = cr_graph_init();
    cr_graph *old = cr_graph_use(g);
    double first[4];
    for (int s = 0; s < 4; s++) {
        cr_rng stream = cr_rng_seed(100 + (uint64_t)s);
        cr_shard sh = {
            .index = s, .shards = 4, .begin = 3 * s, .end = 3 * s + 3, .rows = cfg.B, .weight = 0.25};
        cr_rng *prev = cr_rng_use_dropout_stream(&stream);
        first[s] = cr_item(pm_loss(&m, &sh));
        cr_rng_use_dropout_stream(prev);
        cr_assert_eq(stream.offset > 0, true, "the layer's dropout drew from the shard's stream");
        cr_graph_clear(g);
    }
    cr_assert_neq(first[0], first[1]);
    cr_assert_neq(first[2], first[3]);
    cr_graph_use(old);
    cr_graph_free(g);
    /* through the trainer: two steps on 1 and 3 threads give the same losses */
    pm_model a = pm_make(cfg, 4), b = pm_make(cfg, 4);
    for (int k = 0; k < 2; k++) {
        double la = pm_train(&a, 1, 4, 1, CR_PARALLEL_REPLICAS, 0),
               lb = pm_train(&b, 1, 4, 3, CR_PARALLEL_REPLICAS, 0);
        cr_assert_eq(la, lb);
    }
    cr_assert(pm_same_weights(a.ps, b.ps));
    pm_free(&a);
    pm_free(&b);
    pm_free(&m);
}

/* ---- the tree over shard ranges: what an MPI rank runs ---------------------------------- */

Test(parallel, local_shard_ranges_complete_the_tree_bit_for_bit)
{
    pm_config cfg = small;
    cfg.carry = false;
    pm_model m = pm_make(cfg, 8);
    pm_next_batch(&m);
    cr_task task = pm_task(&m);
    cr_trainer *all = cr_trainer_init(m.ps, (cr_trainer_config){.shards = 8, .threads = 2, .seed = 3});
    cr_trainer *lo = cr_trainer_init(
        m.ps, (cr_trainer_config){.shards = 8, .threads = 2, .seed = 3, .first_shard = 0, .local_shards = 4});
    cr_trainer *hi = cr_trainer_init(
        m.ps, (cr_trainer_config){.shards = 8, .threads = 1, .seed = 3, .first_shard = 4, .local_shards = 4});
    double l_all = cr_trainer_backward(all, &task);
    double l_lo = cr_trainer_backward(lo, &task), l_hi = cr_trainer_backward(hi, &task);
    cr_assert_eq(l_lo + l_hi, l_all);
    cr_tensor *g = cr_trainer_grad(all), *a = cr_trainer_grad(lo), *b = cr_trainer_grad(hi);
    cr_assert_eq(cr_numel(g), (int64_t)cr_params_numel(m.ps));
    for (int64_t k = 0; k < cr_numel(g); k++) {
        float s = ((float *)a->data)[k] + ((float *)b->data)[k];
        cr_assert(s == ((float *)g->data)[k], "element %lld: %g + %g != %g", (long long)k,
                  ((float *)a->data)[k], ((float *)b->data)[k], ((float *)g->data)[k]);
    }
    cr_trainer_free(all);
    cr_trainer_free(lo);
    cr_trainer_free(hi);
    pm_free(&m);
}

/* ---- regions, publishing, shards without rows, callbacks ------------------------------------ */

Test(parallel, a_replica_step_enters_one_parallel_region)
{
    pm_config cfg = small;
    cfg.B = 64;
    cfg.T = 12;
    cfg.H = 96; /* products above the small-product threshold; elementwise ops above the OpenMP one at B=64 */
    cfg.V = 300;
    pm_model m = pm_make(cfg, 4);
    omp_set_num_threads(2);
    cr_trainer *t =
        cr_trainer_init(m.ps, (cr_trainer_config){.shards = 4, .threads = 2, .mode = CR_PARALLEL_REPLICAS});
    cr_task task = pm_task(&m);
    pm_next_batch(&m);
    cr_trainer_step(t, &task, m.opt, 1.0, NULL, NULL);
    long before = atomic_load(&n_regions);
    pm_next_batch(&m);
    cr_trainer_step(t, &task, m.opt, 1.0, NULL, NULL);
    cr_assert_eq(atomic_load(&n_regions) - before, 1, "a replica step entered %ld regions",
                 atomic_load(&n_regions) - before);
    cr_trainer_free(t);
    /* the same step with the shards in turn forks in the kernels */
    t = cr_trainer_init(m.ps, (cr_trainer_config){.shards = 1, .threads = 2, .mode = CR_PARALLEL_INTRA_OP});
    before = atomic_load(&n_regions);
    pm_next_batch(&m);
    cr_trainer_step(t, &task, m.opt, 1.0, NULL, NULL);
    cr_assert_gt(atomic_load(&n_regions) - before, 1);
    cr_trainer_free(t);
    pm_free(&m);
}

static int order[16], n_order;
static cr_tensor *only_w(void *ctx, const cr_shard *s)
{
    cr_tensor *w = ctx;
    return cr_mul_scalar(cr_sum(w), (double)(s->end - s->begin));
}
static void note(void *ctx, const cr_shard *s)
{
    (void)ctx;
    cr_assert_not_null(cr_graph_current());
    order[n_order++] = s->index;
}

Test(parallel, publish_callbacks_and_shards_without_rows)
{
    cr_params *ps = cr_params_init();
    cr_tensor *w = cr_params_add(ps, NULL, "w", CR_F32, CR_SHAPE(3));
    cr_tensor *unused = cr_params_add(ps, NULL, "unused", CR_F32, CR_SHAPE(2));
    cr_fill(w, 2);
    cr_grad_of(unused);
    cr_fill(unused->grad, 7); /* left from an earlier step: publish zeroes it, as zero_grad would */
    cr_trainer *t = cr_trainer_init(ps, (cr_trainer_config){.shards = 8, .threads = 3});
    cr_task task = {.rows = 3, .loss = only_w, .after_backward = note, .ctx = w};
    n_order = 0;
    double loss = cr_trainer_backward(t, &task); /* 3 rows, 8 shards: five shards have none */
    cr_assert_float_eq(loss, 3 * 6.0, 1e-6);
    cr_assert_eq(n_order, 3);
    for (int k = 1; k < n_order; k++)
        cr_assert_lt(order[k - 1], order[k], "after_backward runs in shard order");
    cr_assert_null(w->grad, "backward leaves the parameters' gradients alone");
    cr_trainer_publish(t);
    for (int k = 0; k < 3; k++) cr_assert_float_eq(cr_get_flat(w->grad, k), 3.0, 1e-6);
    for (int k = 0; k < 2; k++) cr_assert_eq(cr_get_flat(unused->grad, k), 0.0);
    cr_assert_eq(cr_trainer_steps(t), 1);
    cr_trainer_free(t);
    cr_params_free(ps);
}

/* ---- the optimizer part inside the region ------------------------------------------------------ */

/* A two-layer model whose first weight spans three 8192-element chunks, and
 * a parameter no shard reaches (its old gradient is zeroed and updated, as
 * zero_grad + step would). */
typedef struct tail_model {
    cr_params *ps;
    cr_tensor *w, *b, *v, *unused, *x;
    cr_optim *opt;
    double nan_at; /* a shard loss times NaN at this step (from 1), else 1 */
    int step;
} tail_model;

static cr_tensor *tail_loss(void *ctx, const cr_shard *s)
{
    tail_model *m = ctx;
    cr_tensor *h = cr_tanh(cr_add(cr_matmul(cr_narrow(m->x, 0, s->begin, s->end - s->begin), m->w), m->b));
    double k = m->step == m->nan_at && s->index == 1 ? NAN : s->weight;
    return cr_mul_scalar(cr_sum(cr_matmul(h, m->v)), k);
}

/* Normalised SGD, p -= lr g / ||g||: not element by element (whole_tensor), so
 * the trainer updates it a whole parameter at a time. */
typedef struct nsgd_config {
    double lr;
} nsgd_config;
static void nsgd_update(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k)
{
    (void)slot;
    (void)k;
    double ss = 0, lr = ((const nsgd_config *)cfg)->lr;
    for (int64_t i = 0; i < cr_numel(p); i++)
        ss += (double)((const float *)g->data)[i] * ((const float *)g->data)[i];
    for (int64_t i = 0; i < cr_numel(p); i++)
        ((float *)p->data)[i] -= (float)(lr * ((const float *)g->data)[i] / (sqrt(ss) + 1e-12));
}
static const cr_optim_hparam nsgd_hparams[] = {{"lr", offsetof(nsgd_config, lr), false, 0, INFINITY}};
static const cr_optim_rule nsgd_rule = {.name = "nsgd",
                                        .config_size = sizeof(nsgd_config),
                                        .hparams = nsgd_hparams,
                                        .n_hparams = 1,
                                        .update = nsgd_update,
                                        .whole_tensor = true};

static tail_model tail_make(int rule)
{
    tail_model m = {.ps = cr_params_init(), .nan_at = 0};
    cr_rng r = cr_rng_seed(17);
    m.w = cr_params_add(m.ps, NULL, "w", CR_F32, CR_SHAPE(120, 200)); /* 24000: chunks 8192, 8192, 7616 */
    m.b = cr_params_add(m.ps, NULL, "b", CR_F32, CR_SHAPE(200));
    m.unused = cr_params_add(m.ps, NULL, "unused", CR_F32, CR_SHAPE(9000));
    m.v = cr_params_add(m.ps, NULL, "v", CR_F32, CR_SHAPE(200, 1));
    cr_fill_uniform(m.w, &r, -0.1, 0.1);
    cr_fill_uniform(m.b, &r, -0.1, 0.1);
    cr_fill_uniform(m.v, &r, -0.5, 0.5);
    cr_fill_uniform(m.unused, &r, -1, 1);
    cr_grad_of(m.unused);
    cr_fill(m.unused->grad, 3);
    m.x = cr_tensor_init(CR_F32, CR_SHAPE(10, 120));
    cr_fill_uniform(m.x, &r, -1, 1);
    if (rule == 0) m.opt = cr_adam_init(m.ps, cr_adam_defaults(1e-2));
    if (rule == 1) m.opt = cr_sgd_init(m.ps, (cr_sgd_config){.lr = 0.1, .momentum = 0.9, .nesterov = true});
    if (rule == 2) m.opt = cr_optim_init(m.ps, &nsgd_rule, &(nsgd_config){.lr = 0.05});
    return m;
}

static void tail_free(tail_model *m)
{
    cr_optim_free(m->opt);
    cr_tensor_free(m->x);
    cr_params_free(m->ps);
}

Test(parallel, the_update_inside_the_region_is_publish_clip_step_bit_for_bit)
{
    static const double clips[] = {0.05, 0, 1e6};
    for (int rule = 0; rule < 3; rule++)
        for (size_t c = 0; c < sizeof clips / sizeof *clips; c++)
            for (int threads = 1; threads <= 3; threads += 2) {
                tail_model a = tail_make(rule), b = tail_make(rule);
                a.nan_at = b.nan_at = c == 0 ? 4 : 0; /* clipping a NaN gradient: reported, no update */
                cr_trainer *ta = cr_trainer_init(
                    a.ps, (cr_trainer_config){.shards = 5, .threads = threads, .mode = CR_PARALLEL_REPLICAS});
                cr_trainer *tb = cr_trainer_init(
                    b.ps, (cr_trainer_config){.shards = 5, .threads = 1, .mode = CR_PARALLEL_REPLICAS});
                cr_task task_a = {.rows = 10, .loss = tail_loss, .ctx = &a},
                        task_b = {.rows = 10, .loss = tail_loss, .ctx = &b};
                for (int k = 1; k <= 5; k++) {
                    a.step = b.step = k;
                    double na = -1, nb = -1, la, lb;
                    cr_status sa = cr_trainer_step(ta, &task_a, a.opt, clips[c], &la, &na);
                    /* the serial tail by hand */
                    lb = cr_trainer_backward(tb, &task_b);
                    cr_trainer_publish(tb);
                    cr_status sb = CR_OK;
                    if (clips[c] > 0)
                        sb = cr_clip_grad_norm(b.ps, clips[c], &nb);
                    else
                        nb = NAN;
                    if (sb == CR_OK) cr_optim_step(b.opt);
                    cr_assert_eq(sa, sb, "rule %d clip %g threads %d step %d: status", rule, clips[c],
                                 threads, k);
                    cr_assert(memcmp(&la, &lb, sizeof la) == 0);
                    cr_assert((isnan(na) && isnan(nb)) || na == nb,
                              "rule %d clip %g threads %d step %d: norm %.17g, serially %.17g", rule,
                              clips[c], threads, k, na, nb);
                    cr_assert(pm_same_weights(a.ps, b.ps),
                              "rule %d clip %g threads %d step %d: weights differ", rule, clips[c], threads,
                              k);
                    for (size_t i = 0; i < a.ps->n; i++) {
                        const cr_tensor *ga = a.ps->items[i].value->grad, *gb = b.ps->items[i].value->grad;
                        cr_assert(memcmp(ga->data, gb->data, (size_t)cr_numel(ga) * 4) == 0,
                                  "published (clipped) gradients differ");
                        cr_assert_eq(cr_optim_param_steps_at(a.opt, i), cr_optim_param_steps_at(b.opt, i));
                        for (int s = 0; s < cr_optim_rule_of(a.opt)->n_slots; s++) {
                            const cr_tensor *xa = cr_optim_slot(a.opt, i, s),
                                            *xb = cr_optim_slot(b.opt, i, s);
                            cr_assert_eq(!xa, !xb);
                            if (xa) cr_assert(memcmp(xa->data, xb->data, (size_t)cr_numel(xa) * 4) == 0);
                        }
                    }
                    cr_assert_eq(cr_optim_steps(a.opt), cr_optim_steps(b.opt));
                }
                cr_trainer_free(ta);
                cr_trainer_free(tb);
                tail_free(&a);
                tail_free(&b);
            }
}

/* ---- misuse ------------------------------------------------------------------------------------ */

static cr_tensor *stray;
static cr_tensor *uses_stray(void *ctx, const cr_shard *s)
{
    (void)ctx;
    (void)s;
    return cr_sum(stray);
}
static cr_tensor *not_scalar(void *ctx, const cr_shard *s)
{
    (void)s;
    return cr_mul_scalar((cr_tensor *)ctx, 2);
}

Test(parallel, misuse_names_the_function_and_the_reason)
{
    cr_params *ps = cr_params_init();
    cr_tensor *w = cr_params_add(ps, NULL, "w", CR_F32, CR_SHAPE(4));
    EXPECT_ERROR(cr_trainer_init(ps, (cr_trainer_config){.shards = -1}), "cr_trainer_init: shards = -1");
    EXPECT_ERROR(cr_trainer_init(ps, (cr_trainer_config){.shards = 4, .first_shard = 3, .local_shards = 2}),
                 "do not lie in the run's 4 shards");
    cr_params *mixed = cr_params_init();
    cr_params_add(mixed, NULL, "a", CR_F32, CR_SHAPE(2));
    cr_params_add(mixed, NULL, "b", CR_F64, CR_SHAPE(2));
    EXPECT_ERROR(cr_trainer_init(mixed, cr_trainer_defaults()), "one float dtype");
    cr_params_free(mixed);
    cr_trainer *t = cr_trainer_init(ps, (cr_trainer_config){.shards = 2, .threads = 1});
    cr_task bad = {.rows = 0, .loss = not_scalar, .ctx = w};
    EXPECT_ERROR(cr_trainer_backward(t, &bad), "task->rows = 0");
    bad.rows = 2;
    EXPECT_ERROR(cr_trainer_backward(t, &bad), "it must be a one-element float tensor");
    cr_trainer_free(t);
    /* a persistent tensor outside the set that requires a gradient */
    stray = cr_tensor_init(CR_F32, CR_SHAPE(2));
    cr_requires_grad(stray, true);
    t = cr_trainer_init(ps, (cr_trainer_config){.shards = 1, .threads = 1});
    cr_task task = {.rows = 1, .loss = uses_stray};
    EXPECT_ERROR(cr_trainer_backward(t, &task), "is not in the trainer's parameter set");
    cr_trainer_free(t);
    cr_tensor_free(stray);
    cr_params_free(ps);
}

/* ---- other layers inside replicas -------------------------------------------------------- */

typedef struct conv_model {
    cr_params *ps;
    cr_tensor *w, *b, *x, *y; /* y [N, O, L'] targets */
} conv_model;

static cr_tensor *conv_loss(void *ctx, const cr_shard *s)
{
    conv_model *m = ctx;
    int64_t rows = s->end - s->begin;
    cr_tensor *out =
        cr_conv1d(cr_narrow(m->x, 0, s->begin, rows), m->w, m->b, (cr_conv1d_opts){.padding = 1});
    cr_tensor *d = cr_sub(cr_tanh(out), cr_narrow(m->y, 0, s->begin, rows));
    return cr_mul_scalar(cr_sum(cr_mul(d, d)), 1.0 / (double)cr_numel(m->y));
}

static conv_model conv_make(void)
{
    conv_model m = {.ps = cr_params_init()};
    cr_rng r = cr_rng_seed(11);
    m.w = cr_params_add(m.ps, NULL, "w", CR_F32, CR_SHAPE(8, 4, 3));
    m.b = cr_params_add(m.ps, NULL, "b", CR_F32, CR_SHAPE(8));
    cr_fill_uniform(m.w, &r, -0.3, 0.3);
    cr_fill_uniform(m.b, &r, -0.1, 0.1);
    m.x = cr_tensor_init(CR_F32, CR_SHAPE(16, 4, 30));
    m.y = cr_tensor_init(CR_F32, CR_SHAPE(16, 8, 30));
    cr_fill_uniform(m.x, &r, -1, 1);
    cr_fill_uniform(m.y, &r, -0.5, 0.5);
    return m;
}

Test(parallel, convolutions_in_replicas_give_the_same_weights)
{
    /* two im2col blocks per shard (two samples each), too little work for
     * the conv's own threads: the blocks run serially on a replica thread,
     * which must use the conv's one scratch set whatever its team number */
    int64_t old_block = cr_conv_block_bytes;
    cr_conv_block_bytes = 2 * 12 * 30 * 4; /* two samples of columns (C*K = 12 rows, 30 positions) */
    conv_model a = conv_make(), b = conv_make();
    cr_task ta = {.rows = 16, .loss = conv_loss, .ctx = &a}, tb = {.rows = 16, .loss = conv_loss, .ctx = &b};
    cr_optim *oa = cr_adam_init(a.ps, cr_adam_defaults(1e-2)),
             *ob = cr_adam_init(b.ps, cr_adam_defaults(1e-2));
    cr_trainer *t1 =
        cr_trainer_init(a.ps, (cr_trainer_config){.shards = 4, .threads = 1, .mode = CR_PARALLEL_REPLICAS});
    cr_trainer *t3 =
        cr_trainer_init(b.ps, (cr_trainer_config){.shards = 4, .threads = 3, .mode = CR_PARALLEL_REPLICAS});
    for (int k = 0; k < 3; k++) {
        double la, lb;
        cr_trainer_step(t1, &ta, oa, 0, &la, NULL);
        cr_trainer_step(t3, &tb, ob, 0, &lb, NULL);
        cr_assert_eq(la, lb, "step %d: loss %.17g on 1 thread, %.17g on 3", k, la, lb);
    }
    cr_assert(pm_same_weights(a.ps, b.ps));
    cr_conv_block_bytes = old_block;
    cr_trainer_free(t1);
    cr_trainer_free(t3);
    cr_optim_free(oa);
    cr_optim_free(ob);
    conv_model *ms[] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        cr_tensor_free(ms[i]->x);
        cr_tensor_free(ms[i]->y);
        cr_params_free(ms[i]->ps);
    }
}
