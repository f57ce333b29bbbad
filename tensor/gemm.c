/* Matrix products on strided 2-D views: BLIS's typed API for anything of
 * size, a plain C kernel for tiny products where BLIS's packing and dispatch
 * cost more than the arithmetic (threshold measured with bench/matmul). */
#include <blis.h>

#include "iter.h"
#include "tensor.h"

/* m*n*k at or below this goes to the C kernel; see ARCHITECTURE.md for the
 * measurement behind the default. */
int64_t cr_gemm_small_threshold = 32768;

void cr_gemm_set_threads(int n) { bli_thread_set_num_threads(n > 0 ? n : 1); }

/* Debian's BLIS 0.9.0 predates AMD Zen 5 (CPU family 0x1A): on it BLIS falls
 * back to its generic C kernels, about 6x slower than its AVX-512 (skx)
 * kernels, which run correctly there. BLIS reads BLIS_ARCH_TYPE once, when it
 * initialises, so the choice is made at load time, before any BLIS call, and
 * only when the user has not chosen. The constructor attribute and cpuid.h
 * are GCC/clang facilities; other compilers simply skip the hint. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#include <stdlib.h>

__attribute__((constructor)) static void blis_arch_hint(void)
{
    unsigned a, b, c, d;
    if (getenv("BLIS_ARCH_TYPE") || !__get_cpuid(0, &a, &b, &c, &d)) return;
    bool amd = b == 0x68747541u; /* "AuthenticAMD" */
    if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return;
    unsigned family = ((a >> 8) & 0xfu) + ((a >> 20) & 0xffu);
    if (family >= 0x1Au && __builtin_cpu_supports("avx512f")) setenv("BLIS_ARCH_TYPE", "skx", 0);
}
#endif

/* BLIS rejects strides that do not describe a valid matrix even along a
 * size-1 dimension, where ours can be anything (views of views). */
static void fix_strides(int64_t r, int64_t c, int64_t *rs, int64_t *cs)
{
    if (r <= 1 && c <= 1) {
        *rs = 1;
        *cs = 1;
    } else if (r <= 1) {
        *rs = *cs * c;
    } else if (c <= 1) {
        *cs = *rs * r;
    }
}

#define SMALL_GEMM(T, NAME)                                                                      \
    static void NAME(int64_t m, int64_t n, int64_t k, T alpha, const T *a, int64_t rsa,          \
                     int64_t csa, const T *b, int64_t rsb, int64_t csb, T beta, T *c,            \
                     int64_t rsc, int64_t csc)                                                   \
    {                                                                                            \
        T acc[n > 0 ? n : 1];                                                                    \
        if (rsb == 1 && csb != 1 && csa == 1) {                                                  \
            /* B is a transposed row-major matrix (a weight W^T): dot products of       \
             * contiguous rows, eight partial sums so the loop vectorises without       \
             * reassociating a single sum. */                                          \
            for (int64_t i = 0; i < m; i++) {                                                    \
                const T *ai = a + i * rsa;                                                       \
                for (int64_t j = 0; j < n; j++) {                                                \
                    const T *bj = b + j * csb;                                                   \
                    T s8[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                          \
                    int64_t p = 0;                                                               \
                    for (; p + 8 <= k; p += 8)                                                   \
                        for (int q = 0; q < 8; q++) s8[q] += ai[p + q] * bj[p + q];             \
                    T s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7])); \
                    for (; p < k; p++) s += ai[p] * bj[p];                                       \
                    T *cij = c + i * rsc + j * csc;                                              \
                    *cij = beta == 0 ? alpha * s : alpha * s + beta * *cij;                      \
                }                                                                                \
            }                                                                                    \
            return;                                                                              \
        }                                                                                        \
        for (int64_t i = 0; i < m; i++) {                                                        \
            for (int64_t j = 0; j < n; j++) acc[j] = 0;                                          \
            for (int64_t p = 0; p < k; p++) {                                                    \
                T aip = a[i * rsa + p * csa];                                                    \
                const T *bp = b + p * rsb;                                                       \
                if (csb == 1)                                                                    \
                    for (int64_t j = 0; j < n; j++) acc[j] += aip * bp[j];                       \
                else                                                                             \
                    for (int64_t j = 0; j < n; j++) acc[j] += aip * bp[j * csb];                 \
            }                                                                                    \
            T *ci = c + i * rsc;                                                                 \
            if (beta == 0)                                                                       \
                for (int64_t j = 0; j < n; j++) ci[j * csc] = alpha * acc[j];                    \
            else                                                                                 \
                for (int64_t j = 0; j < n; j++) ci[j * csc] = alpha * acc[j] + beta * ci[j * csc]; \
        }                                                                                        \
    }

SMALL_GEMM(float, small_sgemm)
SMALL_GEMM(double, small_dgemm)

void cr_k_gemm(double alpha, const cr_tensor *a, const cr_tensor *b, double beta, cr_tensor *c)
{
    char s1[128], s2[128], s3[128];
    if (a->ndim != 2 || b->ndim != 2 || c->ndim != 2 || a->shape[1] != b->shape[0] ||
        c->shape[0] != a->shape[0] || c->shape[1] != b->shape[1])
        cr_error("cr_k_gemm: %s x %s -> %s do not fit", cr_shape_str(s1, sizeof s1, a->ndim, a->shape),
                 cr_shape_str(s2, sizeof s2, b->ndim, b->shape), cr_shape_str(s3, sizeof s3, c->ndim, c->shape));
    if (a->dtype != b->dtype || a->dtype != c->dtype || a->dtype == CR_I32)
        cr_error("cr_k_gemm: dtypes %s, %s, %s (need one float dtype)", cr_dtype_name(a->dtype),
                 cr_dtype_name(b->dtype), cr_dtype_name(c->dtype));
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    if (m == 0 || n == 0) return;
    int64_t rsa = a->stride[0], csa = a->stride[1], rsb = b->stride[0], csb = b->stride[1];
    int64_t rsc = c->stride[0], csc = c->stride[1];
    if (m * n * k <= cr_gemm_small_threshold && n <= 4096) {
        if (a->dtype == CR_F32)
            small_sgemm(m, n, k, (float)alpha, a->data, rsa, csa, b->data, rsb, csb, (float)beta, c->data, rsc, csc);
        else
            small_dgemm(m, n, k, alpha, a->data, rsa, csa, b->data, rsb, csb, beta, c->data, rsc, csc);
        return;
    }
    fix_strides(m, k, &rsa, &csa);
    fix_strides(k, n, &rsb, &csb);
    fix_strides(m, n, &rsc, &csc);
    if (a->dtype == CR_F32) {
        float al = (float)alpha, be = (float)beta;
        bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &al, a->data, rsa, csa, b->data, rsb, csb,
                  &be, c->data, rsc, csc);
    } else {
        bli_dgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &alpha, a->data, rsa, csa, b->data, rsb,
                  csb, &beta, c->data, rsc, csc);
    }
}
