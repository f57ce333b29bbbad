/* Internal: strided iteration over up to four operands broadcast to one
 * output shape. Dimensions that are contiguous for every operand are merged,
 * so the common cases reduce to one or two flat loops. */
#ifndef CAROUSEL_ITER_H
#define CAROUSEL_ITER_H

#include "tensor.h"

#define ITER_MAX_OPS 4

typedef struct cr_iter {
    int ndim; /* after merging, >= 1 */
    int n_ops;
    int64_t shape[CR_MAX_DIMS];
    int64_t stride[ITER_MAX_OPS][CR_MAX_DIMS]; /* elements; 0 along broadcast dims */
    int64_t inner;                             /* shape[ndim-1] */
    int64_t outer;                             /* product of the other dims */
} cr_iter;

/* Operand k (a tensor whose shape broadcasts to `shape`) gets its strides
 * (iter.c). */
void cr_iter_init(cr_iter *it, int ndim, const int64_t *shape, int n_ops, const cr_tensor *const *ops);
/* Element offsets of operand rows for outer index o. */
static inline void cr_iter_row(const cr_iter *it, int64_t o, int64_t *off)
{
    for (int k = 0; k < it->n_ops; k++) off[k] = 0;
    for (int d = it->ndim - 2; d >= 0; d--) {
        int64_t i = o % it->shape[d];
        o /= it->shape[d];
        for (int k = 0; k < it->n_ops; k++) off[k] += i * it->stride[k][d];
    }
}

/* BLIS thread count (gemm.c). */
void cr_gemm_set_threads(int n);

#endif
