/* Parameter initialisers: constant, uniform, normal, Xavier/Glorot, Kaiming,
 * and orthogonal (for recurrent matrices), all drawn from the Philox RNG. */
#include <math.h>
#include <stdlib.h>

#include "nn.h"

void cr_init_constant(cr_tensor *t, double value) { cr_fill(t, value); }

void cr_init_uniform(cr_tensor *t, cr_rng *r, double bound) { cr_fill_uniform(t, r, -bound, bound); }

void cr_init_normal(cr_tensor *t, cr_rng *r, double std) { cr_fill_normal(t, r, 0.0, std); }

static void fans(const char *op, const cr_tensor *t, double *fan_in, double *fan_out)
{
    if (t->ndim < 2) cr_error("%s: needs a weight of at least 2 dims, got %d", op, t->ndim);
    double field = 1;
    for (int d = 2; d < t->ndim; d++) field *= (double)t->shape[d];
    *fan_in = (double)t->shape[1] * field;
    *fan_out = (double)t->shape[0] * field;
}

void cr_init_xavier_uniform(cr_tensor *t, cr_rng *r, double gain)
{
    double fi, fo;
    fans("cr_init_xavier_uniform", t, &fi, &fo);
    cr_init_uniform(t, r, gain * sqrt(6.0 / (fi + fo)));
}

void cr_init_kaiming_uniform(cr_tensor *t, cr_rng *r)
{
    double fi, fo;
    fans("cr_init_kaiming_uniform", t, &fi, &fo);
    cr_init_uniform(t, r, sqrt(6.0 / fi)); /* gain sqrt(2) for relu: bound = gain*sqrt(3/fan_in) */
}

/* Orthonormalise the rows of a [rows, cols] block (rows <= cols) in place by
 * modified Gram-Schmidt; a is row-major double. */
static void gram_schmidt_rows(double *a, int64_t rows, int64_t cols)
{
    for (int64_t i = 0; i < rows; i++) {
        double *ai = a + i * cols;
        for (int64_t j = 0; j < i; j++) {
            const double *aj = a + j * cols;
            double dot = 0;
            for (int64_t k = 0; k < cols; k++) dot += ai[k] * aj[k];
            for (int64_t k = 0; k < cols; k++) ai[k] -= dot * aj[k];
        }
        double norm = 0;
        for (int64_t k = 0; k < cols; k++) norm += ai[k] * ai[k];
        norm = sqrt(norm);
        for (int64_t k = 0; k < cols; k++) ai[k] /= norm;
    }
}

void cr_init_orthogonal(cr_tensor *t, cr_rng *r, double gain, int64_t block_rows)
{
    if (t->ndim != 2 || !cr_is_contiguous(t))
        cr_error("cr_init_orthogonal: needs a contiguous 2-D tensor, got %d dims", t->ndim);
    int64_t rows = t->shape[0], cols = t->shape[1];
    int64_t br = block_rows > 0 ? block_rows : rows;
    if (rows % br != 0)
        cr_error("cr_init_orthogonal: %lld rows do not split into blocks of %lld", (long long)rows,
                 (long long)br);
    /* orthogonalise whichever side is shorter: rows of the block, or its columns */
    bool by_rows = br <= cols;
    int64_t n = by_rows ? br : cols, len = by_rows ? cols : br;
    double *a = cr_xmalloc((size_t)(n * len) * sizeof *a);
    for (int64_t b = 0; b < rows / br; b++) {
        for (int64_t i = 0; i < n * len; i++) a[i] = cr_rng_normal(r);
        gram_schmidt_rows(a, n, len);
        for (int64_t i = 0; i < br; i++)
            for (int64_t j = 0; j < cols; j++) {
                double v = by_rows ? a[i * cols + j] : a[j * br + i];
                cr_set_flat(t, (b * br + i) * cols + j, gain * v);
            }
    }
    free(a);
}
