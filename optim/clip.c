/* Gradient clipping over a parameter set: by global L2 norm (PyTorch's
 * clip_grad_norm_, with a status instead of scaling by a NaN) and by value.
 * Sums of squares run in f64 over fixed blocks, so the norm is reproducible. */
#include <math.h>

#include "optim_internal.h"

/* Elements per block of a sum of squares (optim_internal.h): blocks are summed
 * one after the other whatever the thread count, so the result never depends on it. */
#define SQ_BLOCK CR_SQ_BLOCK
/* Blocks handed to threads per round (their partial sums live on the stack). */
#define SQ_ROUND 64

static const cr_tensor *grad_checked(const cr_params *ps, size_t i, const char *op)
{
    const cr_tensor *p = ps->items[i].value, *g = p->grad;
    if (!g) return NULL;
    if ((g->dtype != CR_F32 && g->dtype != CR_F64) || !cr_is_contiguous(g)) {
        char s[128];
        cr_error("%s: gradient of '%s' is %s %s%s; need a contiguous f32 or f64 tensor", op,
                 ps->items[i].name, cr_dtype_name(g->dtype), cr_shape_str(s, sizeof s, g->ndim, g->shape),
                 cr_is_contiguous(g) ? "" : " (not contiguous)");
    }
    return g;
}

/* sum (x_i / scale)^2 over a contiguous float tensor, in f64, block by block. */
static double sumsq(const cr_tensor *g, double scale)
{
    int64_t n = cr_numel(g);
    int64_t nb = (n + SQ_BLOCK - 1) / SQ_BLOCK;
    const float *xf = g->data;
    const double *xd = g->data;
    bool f64 = g->dtype == CR_F64;
    double inv = 1.0 / scale, total = 0;
    for (int64_t b0 = 0; b0 < nb; b0 += SQ_ROUND) {
        double part[SQ_ROUND];
        int64_t nr = nb - b0 < SQ_ROUND ? nb - b0 : SQ_ROUND;
        CR_PAR_FOR(
            n >= cr_parallel_threshold, "omp parallel for schedule(static)",
            for (int64_t r = 0; r < nr; r++) {
                int64_t lo = (b0 + r) * SQ_BLOCK, hi = lo + SQ_BLOCK < n ? lo + SQ_BLOCK : n;
                double s = 0;
                if (f64)
                    for (int64_t i = lo; i < hi; i++) {
                        double x = xd[i] * inv;
                        s += x * x;
                    }
                else
                    for (int64_t i = lo; i < hi; i++) {
                        double x = (double)xf[i] * inv;
                        s += x * x;
                    }
                part[r] = s;
            });
        for (int64_t r = 0; r < nr; r++) total += part[r];
    }
    return total;
}

/* max |x_i|, NaN if any element is NaN. */
static double maxabs(const cr_tensor *g)
{
    int64_t n = cr_numel(g);
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = g->dtype == CR_F64 ? ((const double *)g->data)[i] : ((const float *)g->data)[i];
        if (x != x) return x;
        if (fabs(x) > m) m = fabs(x);
    }
    return m;
}

/* ||g||_2 of one tensor; rescales when the plain sum of squares overflows, so
 * only a NaN or infinite element (or a true norm above DBL_MAX) is non-finite. */
static double tensor_norm(const cr_tensor *g)
{
    double ss = sumsq(g, 1.0);
    if (isfinite(ss)) return sqrt(ss);
    double m = maxabs(g);
    if (!isfinite(m)) return m;
    return m * sqrt(sumsq(g, m));
}

/* PyTorch's total: the 2-norm of the per-tensor 2-norms. */
double cr_grad_norm(const cr_params *ps)
{
    if (!ps) cr_error("cr_grad_norm: params is NULL");
    double ss = 0, big = 0;
    for (size_t i = 0; i < ps->n; i++) {
        const cr_tensor *g = grad_checked(ps, i, "cr_grad_norm");
        if (!g) continue;
        double t = tensor_norm(g);
        if (!isfinite(t)) return t;
        ss += t * t;
        if (t > big) big = t;
    }
    if (isfinite(ss)) return sqrt(ss);
    /* the norms squared overflowed: rescale by the largest */
    double s2 = 0;
    for (size_t i = 0; i < ps->n; i++) {
        const cr_tensor *g = ps->items[i].value->grad;
        if (!g) continue;
        double t = tensor_norm(g) / big;
        s2 += t * t;
    }
    return big * sqrt(s2);
}

static void scale_grad(cr_tensor *g, double coef)
{
    int64_t n = cr_numel(g);
    if (g->dtype == CR_F64) {
        double *x = g->data;
        CR_PAR_FOR(n >= cr_parallel_threshold, "omp parallel for schedule(static)",
                   for (int64_t i = 0; i < n; i++) x[i] = x[i] * coef;);
    } else {
        float *x = g->data, c = (float)coef;
        CR_PAR_FOR(n >= cr_parallel_threshold, "omp parallel for schedule(static)",
                   for (int64_t i = 0; i < n; i++) x[i] = x[i] * c;);
    }
    cr_tensor_bump_version(g);
}

cr_status cr_clip_grad_norm(cr_params *ps, double max_norm, double *norm)
{
    if (!ps) cr_error("cr_clip_grad_norm: params is NULL");
    if (!(max_norm > 0) || !isfinite(max_norm))
        cr_error("cr_clip_grad_norm: max_norm = %g must be finite and > 0", max_norm);
    double total = cr_grad_norm(ps);
    if (norm) *norm = total;
    if (!isfinite(total))
        return cr_failure(CR_NONFINITE,
                          "cr_clip_grad_norm: the gradient norm is %g; gradients left as they are", total);
    /* PyTorch multiplies by min(coef, 1); a factor of exactly 1 changes nothing. */
    double coef = max_norm / (total + 1e-6);
    if (coef < 1)
        for (size_t i = 0; i < ps->n; i++)
            if (ps->items[i].value->grad) scale_grad(ps->items[i].value->grad, coef);
    return CR_OK;
}

cr_status cr_clip_grad_value(cr_params *ps, double clip)
{
    if (!ps) cr_error("cr_clip_grad_value: params is NULL");
    if (!(clip >= 0) || !isfinite(clip))
        cr_error("cr_clip_grad_value: clip = %g must be finite and >= 0", clip);
    int bad = 0;
    for (size_t k = 0; k < ps->n; k++) {
        cr_tensor *g = (cr_tensor *)grad_checked(ps, k, "cr_clip_grad_value");
        if (!g) continue;
        int64_t n = cr_numel(g);
        if (g->dtype == CR_F64) {
            double *x = g->data, c = clip;
            CR_PAR_FOR(
                n >= cr_parallel_threshold, "omp parallel for schedule(static) reduction(| : bad)",
                for (int64_t i = 0; i < n; i++) {
                    double v = x[i];
                    if (!isfinite(v)) bad |= 1;
                    x[i] = v > c ? c : v < -c ? -c : v; /* NaN stays NaN */
                });
        } else {
            float *x = g->data, c = (float)clip;
            CR_PAR_FOR(
                n >= cr_parallel_threshold, "omp parallel for schedule(static) reduction(| : bad)",
                for (int64_t i = 0; i < n; i++) {
                    float v = x[i];
                    if (!isfinite(v)) bad |= 1;
                    x[i] = v > c ? c : v < -c ? -c : v;
                });
        }
        cr_tensor_bump_version(g);
    }
    return bad ? cr_failure(CR_NONFINITE, "cr_clip_grad_value: a gradient holds NaN or infinite values")
               : CR_OK;
}
