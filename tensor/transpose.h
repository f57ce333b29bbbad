/* Internal to tensor/: transposing copies, dst[q*ld + r] = src[r*rs + q]
 * for r < R, q < Q (the rows of src contiguous), bit for bit. */
#ifndef CAROUSEL_TRANSPOSE_H
#define CAROUSEL_TRANSPOSE_H

#include <stdint.h>

void cr_transpose_f32(float *dst, int64_t ld, const float *src, int64_t rs, int64_t R, int64_t Q);
void cr_transpose_f64(double *dst, int64_t ld, const double *src, int64_t rs, int64_t R, int64_t Q);

#endif
