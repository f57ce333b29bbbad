/* Softmax, log-softmax and cross-entropy kernels over contiguous rows (the
 * last dim): f32 with carousel's full-range exp (gate_math.h), built for the
 * baseline, AVX2 and AVX-512 and chosen by the CPU at run time; the f64
 * cross-entropy backward with libm's exp. kernels.c's cr_k_softmax and
 * cr_k_softmax_backward call the f32 row kernels.
 *
 * With a 10000-word vocabulary the softmax and its gradient were a quarter of
 * the DyNet LM's training step, two scalar double exps per logit. The f32
 * loops use only +, -, *, /, compares, exact conversions and bit moves, none
 * contracted into an FMA (C11 mode), so every variant gives the same bits;
 * rows are independent, so the thread count changes nothing either (both
 * tested in tests/test_tensor.c). */
#include <math.h>
#include <string.h>

#include "gate_math.h"
#include "isa.h"
#include "softmax_kernels.h"
#include "tensor.h"

#define LANES 16

#define CR_ISA_IMPL "softmax_kernels_impl.h"
#include "isa_variants.h"
#undef CR_ISA_IMPL

void cr_k_softmax_rows_f32(float *out, const float *x, int64_t rows, int64_t n, bool log)
{
    if (n > 0) CR_F32_CALL(softmax_rows, out, x, rows, n, log);
}

void cr_k_log_softmax_backward_rows_f32(float *gx, const float *gy, const float *y, int64_t rows, int64_t n)
{
    if (n > 0) CR_F32_CALL(log_softmax_backward_rows, gx, gy, y, rows, n);
}

void cr_k_exp_softmax(cr_tensor *y, const cr_tensor *x)
{
    if (x->dtype != CR_F32 || y->dtype != CR_F32 || !cr_is_contiguous(x) || !cr_is_contiguous(y) ||
        !cr_same_shape(x, y))
        cr_error("cr_k_exp_softmax: needs contiguous f32 operands of one shape");
    CR_F32_CALL(exp_all, y->data, x->data, cr_numel(x));
}

/* f64: g_c (+)= scale * (e^lp_c - [c == t]) with libm's exp */
static void ce_backward_f64(double *g, const double *lp, const int32_t *tgt, int64_t rows, int64_t C,
                            int64_t ignore, double scale, bool first)
{
    CR_PAR_FOR(
        rows * C > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t r = 0; r < rows; r++) {
            int32_t t = tgt[r];
            double *gr = g + r * C;
            const double *lr = lp + r * C;
            if (t == ignore) {
                if (first) memset(gr, 0, (size_t)C * sizeof *gr);
            } else if (first) {
                for (int64_t c = 0; c < C; c++) gr[c] = 0.0 + scale * (exp(lr[c]) - (c == t));
            } else {
                for (int64_t c = 0; c < C; c++) gr[c] += scale * (exp(lr[c]) - (c == t));
            }
        });
}

void cr_k_cross_entropy_backward(cr_tensor *gx, bool first, const cr_tensor *logp, const cr_tensor *target,
                                 int64_t ignore, double scale)
{
    if (logp->dtype == CR_I32 || gx->dtype != logp->dtype || logp->ndim != 2 || target->dtype != CR_I32 ||
        !cr_is_contiguous(gx) || !cr_is_contiguous(logp) || !cr_is_contiguous(target) ||
        cr_numel(gx) != cr_numel(logp) || cr_numel(target) != logp->shape[0])
        cr_error("cr_k_cross_entropy_backward: operands do not fit");
    int64_t rows = logp->shape[0], C = logp->shape[1];
    const int32_t *t = target->data;
    for (int64_t r = 0; r < rows; r++)
        if (t[r] != ignore && (t[r] < 0 || t[r] >= C))
            cr_error("cr_k_cross_entropy_backward: target %d at row %lld is out of range for %lld classes",
                     t[r], (long long)r, (long long)C);
    if (C == 0) return;
    if (gx->dtype == CR_F32)
        CR_F32_CALL(ce_backward, gx->data, logp->data, target->data, rows, C, ignore, scale, first);
    else
        ce_backward_f64(gx->data, logp->data, target->data, rows, C, ignore, scale, first);
}
