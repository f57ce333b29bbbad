/* Internal to tensor/: carousel's own f32 micro-kernel for products whose
 * right operand is packed once (cr_k_gemm_packed in gemm.c), in gemm_ukr.c. */
#ifndef CAROUSEL_GEMM_UKR_H
#define CAROUSEL_GEMM_UKR_H

#include <stdbool.h>
#include <stdint.h>

/* A tile is CR_UKR_MR rows of A (and C) by CR_UKR_NW columns of B (and C):
 * B's pack holds panels CR_UKR_NW columns wide, A is packed per KC block in
 * groups of CR_UKR_MR rows. 8 x 32 was measured best (gemm_ukr.c says why);
 * the macros can be set on the command line to measure others again
 * (CR_UKR_MR <= 8, CR_UKR_NW a multiple of 16 up to 64). */
#ifndef CR_UKR_MR
#define CR_UKR_MR 8
#define CR_UKR_NW 32
#endif

/* The kernel is built with GCC or clang on x86-64 (a target attribute and
 * intrinsics), and runs where cr_ukr_available() says the CPU has AVX-512 F. */
#if defined(__GNUC__) && defined(__x86_64__)
#define CR_HAVE_UKR 1

bool cr_ukr_available(void);

/* One KC block of C[0:m, j_lo:j_hi] (row-stored, rows rsc apart; c points at
 * C[0][0]) from alpha * A B + beta * C, as BLIS's skx sgemm kernel computes
 * it: for each element one chain of FMAs over the block's kc products in k
 * order from zero, acc * alpha, then fma(beta, C, acc * alpha); where BLIS's
 * own tiling would put the element in an edge tile (rows i >= i_edge or
 * columns j >= j_edge), acc * alpha + (beta * C) with two roundings, as its
 * edge path does. beta == 0 never reads C. ap: A's m rows of this block,
 * packed in groups of CR_UKR_MR ([kc][CR_UKR_MR] each, zero-padded); bp: the
 * pack's panel holding column j_lo (j_lo a multiple of CR_UKR_NW), the
 * following panels after it, each [kc][CR_UKR_NW]; after: NULL, or the
 * panel the caller reads next, once this block's are done, and then the
 * kernel has each next panel brought into L2 while it works on the one
 * before (for packs streaming from L3). */
void cr_ukr_sgemm_block(int64_t m, int64_t j_lo, int64_t j_hi, int64_t kc, float alpha, const float *ap,
                        const float *bp, const float *after, float beta, int64_t i_edge, int64_t j_edge,
                        float *c, int64_t rsc);

/* C = alpha A B + beta C (C row-stored, m x n; beta == 0 never reads C) with
 * the arithmetic of gemm.c's kernel for small products where it runs along
 * B's rows (each element one chain over k in order from zero, multiply then
 * add, then alpha * acc, plus beta * C), B read from a pack of one KC block:
 * bp its panels, [k][CR_UKR_NW] each, in order. */
void cr_ukr_small(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t rsa, int64_t csa,
                  const float *bp, float beta, float *c, int64_t rsc);

#endif
#endif
