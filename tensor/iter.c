/* The strided iteration of tensor/iter.h: broadcast up to four operands to
 * one shape, drop size-1 dims and merge dims contiguous for every operand. */
#include "iter.h"

void cr_iter_init(cr_iter *it, int ndim, const int64_t *shape, int n_ops, const cr_tensor *const *ops)
{
    int64_t sh[CR_MAX_DIMS], st[ITER_MAX_OPS][CR_MAX_DIMS];
    for (int k = 0; k < n_ops; k++) {
        const cr_tensor *t = ops[k];
        int off = ndim - t->ndim;
        for (int d = 0; d < ndim; d++) {
            int64_t s = d < off ? 1 : t->shape[d - off];
            st[k][d] = (d < off || s == 1) ? 0 : t->stride[d - off];
        }
    }
    for (int d = 0; d < ndim; d++) sh[d] = shape[d];
    /* drop size-1 dims, then merge dims contiguous for every operand */
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (sh[d] == 1) continue;
        if (n > 0) {
            bool merge = true;
            for (int k = 0; k < n_ops; k++)
                if (it->stride[k][n - 1] != st[k][d] * sh[d]) merge = false;
            if (merge) {
                it->shape[n - 1] *= sh[d];
                for (int k = 0; k < n_ops; k++) it->stride[k][n - 1] = st[k][d];
                continue;
            }
        }
        it->shape[n] = sh[d];
        for (int k = 0; k < n_ops; k++) it->stride[k][n] = st[k][d];
        n++;
    }
    if (n == 0) {
        it->shape[0] = 1;
        for (int k = 0; k < n_ops; k++) it->stride[k][0] = 0;
        n = 1;
    }
    /* a zero-size dim anywhere means no work */
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) {
            it->shape[0] = 0;
            n = 1;
        }
    it->ndim = n;
    it->n_ops = n_ops;
    it->inner = it->shape[n - 1];
    it->outer = 1;
    for (int d = 0; d < n - 1; d++) it->outer *= it->shape[d];
}
