/* Transposing copies of f32 and f64 matrices (transpose.h): the packing of
 * gemm.c's micro-panels (a weight W becomes the column panels the micro-kernel
 * reads; cr_weight_t's pack of W^T straight from W) and cr_copy_ of a matrix
 * from its transpose. */
#include "transpose.h"

/* In 8x8 (f32) and 4x4 (f64) tiles with AVX shuffles where the CPU has
 * AVX; a scalar copy elsewhere and for the edges. The shuffles move bits,
 * so the copy is exact. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX_TILES 1

/* One W x W tile: dst[q*ld + r] = s[r*rs + q] for r, q < W. */
__attribute__((target("avx"), always_inline)) static inline void tile_f32(float *d, int64_t ld,
                                                                          const float *s, int64_t rs)
{
    __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + rs), a2 = _mm256_loadu_ps(s + 2 * rs),
           a3 = _mm256_loadu_ps(s + 3 * rs), a4 = _mm256_loadu_ps(s + 4 * rs),
           a5 = _mm256_loadu_ps(s + 5 * rs), a6 = _mm256_loadu_ps(s + 6 * rs),
           a7 = _mm256_loadu_ps(s + 7 * rs);
    __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
    __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
    __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
    __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}

__attribute__((target("avx"), always_inline)) static inline void tile_f64(double *d, int64_t ld,
                                                                          const double *s, int64_t rs)
{
    __m256d a0 = _mm256_loadu_pd(s), a1 = _mm256_loadu_pd(s + rs), a2 = _mm256_loadu_pd(s + 2 * rs),
            a3 = _mm256_loadu_pd(s + 3 * rs);
    __m256d t0 = _mm256_unpacklo_pd(a0, a1), t1 = _mm256_unpackhi_pd(a0, a1);
    __m256d t2 = _mm256_unpacklo_pd(a2, a3), t3 = _mm256_unpackhi_pd(a2, a3);
    _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(d + ld, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(d + 2 * ld, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(d + 3 * ld, _mm256_permute2f128_pd(t1, t3, 0x31));
}

/* W x W tiles over the whole tiles of R x Q, the scalar copy for the edges. */
#define TILED(T, SFX, W)                                                                                     \
    __attribute__((target("avx"))) static void transpose_##SFX##_avx(T *dst, int64_t ld, const T *src,       \
                                                                     int64_t rs, int64_t R, int64_t Q)       \
    {                                                                                                        \
        int64_t r0 = 0;                                                                                      \
        for (; r0 + (W) <= R; r0 += (W)) {                                                                   \
            int64_t q0 = 0;                                                                                  \
            for (; q0 + (W) <= Q; q0 += (W)) tile_##SFX(dst + q0 * ld + r0, ld, src + r0 * rs + q0, rs);     \
            for (int64_t r = r0; r < r0 + (W); r++)                                                          \
                for (int64_t q = q0; q < Q; q++) dst[q * ld + r] = src[r * rs + q];                          \
        }                                                                                                    \
        for (int64_t r = r0; r < R; r++)                                                                     \
            for (int64_t q = 0; q < Q; q++) dst[q * ld + r] = src[r * rs + q];                               \
    }
TILED(float, f32, 8)
TILED(double, f64, 4)
#endif

/* The AVX tiles where the CPU has them (the call vanishes where they are not
 * built), then the scalar copy. */
#ifdef HAVE_AVX_TILES
#define AVX_FIRST(call)                                                                                      \
    if (__builtin_cpu_supports("avx")) {                                                                     \
        call;                                                                                                \
        return;                                                                                              \
    }
#else
#define AVX_FIRST(call)
#endif
#define TRANSPOSE(T, SFX)                                                                                    \
    void cr_transpose_##SFX(T *dst, int64_t ld, const T *src, int64_t rs, int64_t R, int64_t Q)              \
    {                                                                                                        \
        AVX_FIRST(transpose_##SFX##_avx(dst, ld, src, rs, R, Q))                                             \
        for (int64_t r = 0; r < R; r++)                                                                      \
            for (int64_t q = 0; q < Q; q++) dst[q * ld + r] = src[r * rs + q];                               \
    }
TRANSPOSE(float, f32)
TRANSPOSE(double, f64)
