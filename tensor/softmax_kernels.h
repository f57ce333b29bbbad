/* Internal to tensor/: the f32 row kernels of softmax_kernels.c that
 * kernels.c's cr_k_softmax and cr_k_softmax_backward call for a contiguous
 * last dim. rows x n floats, row-major. */
#ifndef CAROUSEL_SOFTMAX_KERNELS_H
#define CAROUSEL_SOFTMAX_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

/* out = softmax(x) (or log_softmax with log) of each row */
void cr_k_softmax_rows_f32(float *out, const float *x, int64_t rows, int64_t n, bool log);
/* gx += gy - e^y sum(gy) per row, y = log_softmax */
void cr_k_log_softmax_backward_rows_f32(float *gx, const float *gy, const float *y, int64_t rows, int64_t n);

#endif
