/* carousel's own f32 AVX-512 micro-kernel for products with a packed right
 * operand (cr_k_gemm_packed): tiles of 8 rows of A by 32 columns of B, with
 * the arithmetic of BLIS's skx kernel element by element, so the bits are
 * those of cr_k_gemm.
 *
 * Why its own kernel: BLIS's skx sgemm kernel is 32 x 12 and prefers
 * column-stored C, so a row-stored C = A B runs as C^T = B^T A^T and A's
 * rows land on the 12 side: a batch of 32 rows is tiled 12 + 12 + 8 (89% of
 * the work useful), a shard of 16 rows 12 + 4 (67%). Here A's rows are the
 * broadcast side, 8 per tile, so 8, 16, 32 or 64 rows tile exactly, and the
 * columns run along C's contiguous rows, B's packed panels. Why 8 x 32 (16
 * accumulators, two loads of B and eight broadcasts per 16 FMAs): against
 * 8 x 48 (24 accumulators, fewer loads per FMA) and 6 x 64 on one Zen 5
 * core, [32,512]x[512,2048] ran at 207/208/206 GFLOP/s (medians of three
 * alternating runs) against 192/198/183 and 187/202 (the likely reason: a
 * 32-column panel of a KC block, 384 x 32 floats = 48 KB, fits Zen 5's L1
 * for every group of rows to read, a 48-column one, 72 KB, does not); and
 * 32 divides the hidden sizes' 4H, so no lane is padding and two threads
 * split the panels evenly. */
#include "gemm_ukr.h"

#ifdef CR_HAVE_UKR
#include <immintrin.h>

#define TGT __attribute__((target("avx512f")))

bool cr_ukr_available(void) { return __builtin_cpu_supports("avx512f"); }

/* Columns [j0, j0 + 16) of a panel: the lanes below `w` columns, and those
 * at or past j_edge (BLIS's edge tile along the columns). */
static inline __mmask16 lanes_below(int64_t w)
{
    return w >= 16 ? 0xffff : w <= 0 ? 0 : (__mmask16)((1u << w) - 1);
}

/* One tile: R rows (a constant once inlined) by the panel's NV vectors of
 * 16 columns, of which the lanes in cm[] exist in C. The accumulators stay in
 * registers: R * NV of them, with NV rows of B and one broadcast. Each of its
 * kc steps also asks for one line into L2, at address pf + p * pfs (pf 0:
 * none): this tile's share of the panel read next. Addresses rather than
 * pointers: the next block's panel may be shorter than kc rows, and a
 * prefetch past it is harmless where a pointer past its object is not. */
#define NV (CR_UKR_NW / 16)
TGT static inline __attribute__((always_inline)) void tile(const int R, int64_t kc, const float *restrict a,
                                                           const float *restrict b, float alpha, float beta,
                                                           bool general_beta, const __mmask16 cm[NV],
                                                           const __mmask16 em[NV], int64_t edge_row, float *c,
                                                           int64_t rsc, uintptr_t pf, uintptr_t pfs)
{
    __m512 acc[CR_UKR_MR][NV];
    for (int r = 0; r < R; r++)
        for (int q = 0; q < NV; q++) acc[r][q] = _mm512_setzero_ps();
    /* C's lines are wanted after the products: ask for them now, so that a
     * C too big for the caches (a product over all B*T rows) does not stall
     * the tile's end on memory. */
    for (int r = 0; r < R; r++) {
        const char *cr = (const char *)(c + r * rsc);
        for (int q = 0; q < NV; q++) _mm_prefetch(cr + 64 * q, _MM_HINT_T0);
        _mm_prefetch(cr + 4 * CR_UKR_NW - 1, _MM_HINT_T0);
    }
    for (int64_t p = 0; p < kc; p++) {
        const float *bp = b + p * CR_UKR_NW, *ap = a + p * CR_UKR_MR;
        if (pf) _mm_prefetch((const char *)(pf + (uintptr_t)p * pfs), _MM_HINT_T1);
        __m512 bq[NV];
        for (int q = 0; q < NV; q++) bq[q] = _mm512_loadu_ps(bp + 16 * q);
        for (int r = 0; r < R; r++) {
            __m512 ar = _mm512_set1_ps(ap[r]);
            for (int q = 0; q < NV; q++) acc[r][q] = _mm512_fmadd_ps(ar, bq[q], acc[r][q]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < R; r++) {
        float *cr = c + r * rsc;
        for (int q = 0; q < NV; q++) {
            __m512 t = _mm512_mul_ps(acc[r][q], va); /* BLIS: acc * alpha, always */
            if (beta == 0) {
                _mm512_mask_storeu_ps(cr + 16 * q, cm[q], t);
                continue;
            }
            __m512 cv = _mm512_maskz_loadu_ps(cm[q], cr + 16 * q);
            __m512 v = _mm512_fmadd_ps(vb, cv, t); /* full tile: beta * C + acc * alpha, one rounding */
            if (general_beta) { /* edge tile: acc * alpha + (beta * C); the same when beta is 1 */
                __m512 e = _mm512_add_ps(t, _mm512_mul_ps(vb, cv));
                v = _mm512_mask_blend_ps(r >= edge_row ? cm[q] : em[q], v, e);
            }
            _mm512_mask_storeu_ps(cr + 16 * q, cm[q], v);
        }
    }
}

/* Two copies of each tile, with and without the fetches ahead, so that the
 * k loop carries no test of pf (with one, bench/matmul's hidden-1024 packed
 * products read 1-3% below the unconditional version, within the noise). */
#define TILE_CASE(R)                                                                                         \
    case R:                                                                                                  \
        if (pf)                                                                                              \
            tile(R, kc, a, b, alpha, beta, general_beta, cm, em, edge_row, c, rsc, pf, pfs);                 \
        else                                                                                                 \
            tile(R, kc, a, b, alpha, beta, general_beta, cm, em, edge_row, c, rsc, 0, 0);                    \
        break;

TGT static void tile_rows(int rows, int64_t kc, const float *a, const float *b, float alpha, float beta,
                          bool general_beta, const __mmask16 cm[NV], const __mmask16 em[NV], int64_t edge_row,
                          float *c, int64_t rsc, uintptr_t pf, uintptr_t pfs)
{
    switch (rows) {
#if CR_UKR_MR > 7
        TILE_CASE(8)
#endif
#if CR_UKR_MR > 6
        TILE_CASE(7)
#endif
        TILE_CASE(6)
        TILE_CASE(5)
        TILE_CASE(4)
        TILE_CASE(3)
        TILE_CASE(2)
        TILE_CASE(1)
    default: break;
    }
}

/* Panels outer, row groups inner: a panel (kc x 32, 48 KB at KC 384) is
 * read from L3 once and then from L1/L2 by every group of rows. With `after`
 * (not NULL) they also ask for the next panel (`after` past the last one)
 * to be brought into L2: the hardware's prefetchers do not run ahead across
 * panels, and a product whose packed weight streams from L3 (4 MB at hidden
 * 512, 16 MB at 1024) waited for it. The next panel is shared out among the
 * panel's G groups of rows, each asking for one line per k step over its
 * 1/G of the panel, so that the requests are spread over the whole time the
 * panel takes and L3 sees a steady stream. (One group alone asks for every
 * other line; the line pairs' other halves come with them, by the L2's
 * adjacent-line prefetch.)
 *
 * bench/matmul's packed products on the Xeon of ARCHITECTURE.md, 12
 * alternating runs each, GFLOP/s min/median/max (before: the whole next
 * panel during the first group, and only for packs of 8 MB or more):
 *   [32,1024]x[1024,4096]  before 138.6/139.8/141.5  spread 157.9/164.4/165.3
 *   [16,1024]x[1024,4096]  before 100.7/120.0/122.3  spread 111.9/150.0/151.9
 *   [32,512]x[512,2048]    before 139.3/141.7/145.8  spread 162.5/166.3/168.4
 *   [16,512]x[512,2048]    before 120.7/123.5/127.4  spread 147.1/154.6/155.4
 *   [8,1024]x[1024,4096]   before  90.6/ 94.2/ 98.5  spread  72.6/ 96.6/ 99.9
 * The spread fetch runs a streamed weight at the speed of one that fits in
 * L2 (165-169 at hidden 128 and 256, where the fetch changes nothing). The
 * earlier one, tried at hidden 512 on Zen 5, lost 5-17% there; the spread
 * one has not been measured on Zen. */
TGT void cr_ukr_sgemm_block(int64_t m, int64_t j_lo, int64_t j_hi, int64_t kc, float alpha, const float *ap,
                            const float *bp, const float *after, float beta, int64_t i_edge, int64_t j_edge,
                            float *c, int64_t rsc)
{
    bool general_beta = beta != 0 && beta != 1;
    /* a panel is 4 * CR_UKR_NW bytes per k step: 1/G of it per group */
    int64_t groups = (m + CR_UKR_MR - 1) / CR_UKR_MR;
    uintptr_t pfs = (uintptr_t)((4 * CR_UKR_NW + groups - 1) / groups);
    for (int64_t j0 = j_lo; j0 < j_hi; j0 += CR_UKR_NW, bp += kc * CR_UKR_NW) {
        uintptr_t next = !after                  ? 0
                         : j0 + CR_UKR_NW < j_hi ? (uintptr_t)bp + (uintptr_t)(kc * CR_UKR_NW) * sizeof(float)
                                                 : (uintptr_t)after;
        __mmask16 cm[NV], em[NV];
        for (int q = 0; q < NV; q++) {
            int64_t jq = j0 + 16 * q;
            cm[q] = lanes_below(j_hi - jq);
            em[q] = (__mmask16)(cm[q] & ~lanes_below(j_edge - jq));
        }
        for (int64_t i0 = 0; i0 < m; i0 += CR_UKR_MR) {
            int rows = m - i0 < CR_UKR_MR ? (int)(m - i0) : CR_UKR_MR;
            uintptr_t share = next ? next + (uintptr_t)(i0 / CR_UKR_MR) * pfs * (uintptr_t)kc : 0;
            tile_rows(rows, kc, ap + i0 * kc, bp, alpha, beta, general_beta, cm, em, i_edge - i0,
                      c + i0 * rsc + j0, rsc, share, pfs);
        }
    }
}

/* Columns [j0, j0 + NP * CR_UKR_NW) of one row of C (NP panels, a constant
 * once inlined), as the small-product kernel computes them: per element one
 * chain from zero over the k products in order, each a multiply then an add
 * (two roundings, no FMA), then alpha * acc, or alpha * acc + beta * C. */
TGT static inline __attribute__((always_inline)) void small_cols(const int NP, int64_t k, const float *a,
                                                                 int64_t csa, const float *bp, int64_t j0,
                                                                 int64_t n, float alpha, float beta, float *c)
{
    __m512 acc[4][NV];
    for (int g = 0; g < NP; g++)
        for (int q = 0; q < NV; q++) acc[g][q] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p++) {
        __m512 ap = _mm512_set1_ps(a[p * csa]);
        for (int g = 0; g < NP; g++)
            for (int q = 0; q < NV; q++)
                acc[g][q] = _mm512_add_ps(
                    acc[g][q], _mm512_mul_ps(ap, _mm512_loadu_ps(bp + (g * k + p) * CR_UKR_NW + 16 * q)));
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int g = 0; g < NP; g++)
        for (int q = 0; q < NV; q++) {
            int64_t j = j0 + g * CR_UKR_NW + 16 * q;
            __mmask16 cm = lanes_below(n - j);
            __m512 t = _mm512_mul_ps(va, acc[g][q]);
            if (beta != 0) t = _mm512_add_ps(t, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(cm, c + j)));
            _mm512_mask_storeu_ps(c + j, cm, t);
        }
}

/* Four panels at a time (eight chains in flight where a panel is two
 * vectors), the last one, two or three by their own copy. */
TGT void cr_ukr_small(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t rsa, int64_t csa,
                      const float *bp, float beta, float *c, int64_t rsc)
{
    int64_t panels = (n + CR_UKR_NW - 1) / CR_UKR_NW;
    for (int64_t i = 0; i < m; i++)
        for (int64_t p0 = 0; p0 < panels; p0 += 4) {
            const float *a_i = a + i * rsa, *b0 = bp + p0 * k * CR_UKR_NW;
            float *c_i = c + i * rsc;
            int64_t j0 = p0 * CR_UKR_NW;
            switch (panels - p0 < 4 ? (int)(panels - p0) : 4) {
            case 4: small_cols(4, k, a_i, csa, b0, j0, n, alpha, beta, c_i); break;
            case 3: small_cols(3, k, a_i, csa, b0, j0, n, alpha, beta, c_i); break;
            case 2: small_cols(2, k, a_i, csa, b0, j0, n, alpha, beta, c_i); break;
            default: small_cols(1, k, a_i, csa, b0, j0, n, alpha, beta, c_i); break;
            }
        }
}

#endif
