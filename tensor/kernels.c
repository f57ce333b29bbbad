/* Elementwise, reduction and softmax kernels for f32 and f64. The loops are
 * written once in kernels_impl.h and instantiated for each float type. */
#include <math.h>
#include <string.h>

#include "iter.h"
#include "softmax_kernels.h"
#include "tensor.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static void check_float(const char *op, const cr_tensor *t)
{
    if (t->dtype == CR_I32) cr_error("%s: needs f32 or f64, got i32", op);
}

static void check_same_dtype(const char *op, const cr_tensor *a, const cr_tensor *b)
{
    if (a->dtype != b->dtype)
        cr_error("%s: dtypes %s and %s differ", op, cr_dtype_name(a->dtype), cr_dtype_name(b->dtype));
}

/* t = 0 for a float tensor of any strides (a gradient about to be summed into). */
static void zero_fill(cr_tensor *t)
{
    if (cr_is_contiguous(t)) {
        memset(t->data, 0, (size_t)cr_numel(t) * cr_dtype_size(t->dtype));
        return;
    }
    for (int64_t i = 0, n = cr_numel(t); i < n; i++) cr_set_flat(t, i, 0.0);
}

static inline double softplus_d(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

/* View a contiguous x as [outer, n, inner] around dim. */
static void split_dims(const cr_tensor *x, int dim, int64_t *outer, int64_t *n, int64_t *inner)
{
    *outer = 1;
    *inner = 1;
    for (int d = 0; d < dim; d++) *outer *= x->shape[d];
    *n = x->shape[dim];
    for (int d = dim + 1; d < x->ndim; d++) *inner *= x->shape[d];
}

#include "gate_math.h"

/* The names tensor/unary_ops.h's expressions use, per type. */
#define T float
#define SFX f32
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#define TANH tanh_gate_f32
#define SIGMOID sigmoid_gate_f32
#define ABS fabsf
#define POW powf
#define SOFTPLUS(v) ((float)softplus_d((double)(v)))
#define SMEXP(v) ((double)exp_softmax_f32(v)) /* softmax's exp, as a double */
#include "kernels_impl.h"
#undef T
#undef SFX
#undef EXP
#undef LOG
#undef SQRT
#undef TANH
#undef SIGMOID
#undef ABS
#undef POW
#undef SOFTPLUS
#undef SMEXP

#define T double
#define SFX f64
#define EXP exp
#define LOG log
#define SQRT sqrt
#define TANH tanh
#define SIGMOID sigmoid_f64
#define ABS fabs
#define POW pow
#define SOFTPLUS softplus_d
#define SMEXP(v) exp(v)
#include "kernels_impl.h"

/* What each kind's derivative reads (the reads column). */
#define READS_(name, KIND, np, params, reads, fwd, deriv, valid) reads,
static const unsigned char unary_reads[CR_U_COUNT_] = {CR_UNARY_OPS(READS_)};
#undef READS_

void cr_k_unary(cr_unary_kind k, cr_tensor *out, const cr_tensor *x, double a, double b)
{
    check_float("cr_k_unary", out);
    check_same_dtype("cr_k_unary", out, x);
    if ((unsigned)k >= CR_U_COUNT_) cr_error("cr_k_unary: unknown kind %d", (int)k);
    if (!cr_same_shape(out, x)) {
        char s1[128], s2[128];
        cr_error("cr_k_unary: output %s and input %s differ in shape",
                 cr_shape_str(s1, sizeof s1, out->ndim, out->shape),
                 cr_shape_str(s2, sizeof s2, x->ndim, x->shape));
    }
    if (out->dtype == CR_F32)
        unary_f32(k, out, x, (float)a, (float)b);
    else
        unary_f64(k, out, x, a, b);
}

static void check_broadcast_out(const char *op, const cr_tensor *out, const cr_tensor *x, const cr_tensor *y)
{
    int n;
    int64_t sh[CR_MAX_DIMS];
    char s1[128], s2[128], s3[128];
    if (!cr_broadcast_shape(x->ndim, x->shape, y->ndim, y->shape, &n, sh))
        cr_error("%s: shapes %s and %s do not broadcast", op, cr_shape_str(s1, sizeof s1, x->ndim, x->shape),
                 cr_shape_str(s2, sizeof s2, y->ndim, y->shape));
    bool same = n == out->ndim;
    for (int d = 0; same && d < n; d++) same = sh[d] == out->shape[d];
    if (!same)
        cr_error("%s: output %s is not the broadcast of %s and %s", op,
                 cr_shape_str(s3, sizeof s3, out->ndim, out->shape),
                 cr_shape_str(s1, sizeof s1, x->ndim, x->shape),
                 cr_shape_str(s2, sizeof s2, y->ndim, y->shape));
}

void cr_k_binary(cr_binary_kind k, cr_tensor *out, const cr_tensor *x, const cr_tensor *y)
{
    check_float("cr_k_binary", out);
    check_same_dtype("cr_k_binary", out, x);
    check_same_dtype("cr_k_binary", out, y);
    check_broadcast_out("cr_k_binary", out, x, y);
    if (out->dtype == CR_F32)
        binary_f32(k, out, x, y);
    else
        binary_f64(k, out, x, y);
}

static void accumulate(const char *fn, cr_tensor *acc, const cr_tensor *x, const cr_tensor *y, bool set)
{
    check_float(fn, acc);
    check_same_dtype(fn, acc, x);
    if (y) check_same_dtype(fn, acc, y);
    int n;
    int64_t sh[CR_MAX_DIMS];
    char s1[128], s2[128], s3[128];
    bool ok = cr_broadcast_shape(acc->ndim, acc->shape, x->ndim, x->shape, &n, sh);
    if (ok && y) ok = cr_broadcast_shape(n, sh, y->ndim, y->shape, &n, sh);
    if (!ok)
        cr_error("%s: gradient %s%s%s does not fit %s", fn, cr_shape_str(s1, sizeof s1, x->ndim, x->shape),
                 y ? " * " : "", y ? cr_shape_str(s2, sizeof s2, y->ndim, y->shape) : "",
                 cr_shape_str(s3, sizeof s3, acc->ndim, acc->shape));
    if (set && cr_shape_numel(n, sh) > cr_numel(acc)) { /* summed into: start from zero */
        zero_fill(acc);
        set = false;
    }
    if (acc->dtype == CR_F32)
        accumulate_f32(acc, x, y, n, sh, set);
    else
        accumulate_f64(acc, x, y, n, sh, set);
}

void cr_k_accumulate(cr_tensor *acc, const cr_tensor *x, const cr_tensor *y)
{
    accumulate("cr_k_accumulate", acc, x, y, false);
}

void cr_k_assign(cr_tensor *acc, const cr_tensor *x, const cr_tensor *y)
{
    accumulate("cr_k_assign", acc, x, y, true);
}

static void unary_backward(const char *fn, cr_unary_kind k, cr_tensor *gx, const cr_tensor *gy,
                           const cr_tensor *x, const cr_tensor *out, double a, double b, bool set)
{
    if ((unsigned)k >= CR_U_COUNT_) cr_error("%s: unknown kind %d", fn, (int)k);
    bool rx = unary_reads[k] & CR_RD_X, ry = unary_reads[k] & CR_RD_Y;
    check_float(fn, gx);
    check_same_dtype(fn, gx, gy);
    if ((rx && !x) || (ry && !out)) cr_error("%s: the derivative needs %s", fn, rx && !x ? "x" : "out");
    if (rx) check_same_dtype(fn, gx, x);
    if (ry) check_same_dtype(fn, gx, out);
    if (!cr_same_shape(gx, gy) || (rx && !cr_same_shape(gx, x)) || (ry && !cr_same_shape(gx, out)))
        cr_error("%s: operands must share one shape", fn);
    if (!rx) x = NULL;
    if (!ry) out = NULL;
    bool contig = cr_is_contiguous(gx) && cr_is_contiguous(gy) && (!x || cr_is_contiguous(x)) &&
                  (!out || cr_is_contiguous(out));
    if (contig) {
        const void *xd = x ? x->data : NULL, *yd = out ? out->data : NULL;
        int64_t n = cr_numel(gx);
        if (gx->dtype == CR_F32)
            unary_backward_f32(k, gx->data, gy->data, xd, yd, n, (float)a, (float)b, set);
        else
            unary_backward_f64(k, gx->data, gy->data, xd, yd, n, a, b, set);
        return;
    }
    /* strided: row by row when every operand's rows are contiguous (a gate's
     * slice of a shared [B, 4H] gradient), else through contiguous copies */
    bool done = gx->dtype == CR_F32 ? unary_backward_rows_f32(k, gx, gy, x, out, (float)a, (float)b, set)
                                    : unary_backward_rows_f64(k, gx, gy, x, out, a, b, set);
    if (done) return;
    if (x && !cr_is_contiguous(x)) x = cr_contiguous_copy(x);
    if (out && !cr_is_contiguous(out)) out = cr_contiguous_copy(out);
    if (!cr_is_contiguous(gy)) gy = cr_contiguous_copy(gy);
    cr_tensor *t = cr_is_contiguous(gx) ? gx : cr_tensor_new(gx->dtype, gx->ndim, gx->shape);
    unary_backward(fn, k, t, gy, x, out, a, b, set || t != gx);
    if (t != gx) accumulate(fn, gx, t, NULL, set);
}

/* gx += gy * f'(x): the one public spelling of the loop above. */
void cr_k_unary_backward(cr_unary_kind k, cr_tensor *gx, const cr_tensor *gy, const cr_tensor *x,
                         const cr_tensor *out, double a, double b)
{
    unary_backward("cr_k_unary_backward", k, gx, gy, x, out, a, b, false);
}

void cr_k_unary_backward_assign(cr_unary_kind k, cr_tensor *gx, const cr_tensor *gy, const cr_tensor *x,
                                const cr_tensor *out, double a, double b)
{
    unary_backward("cr_k_unary_backward_assign", k, gx, gy, x, out, a, b, true);
}

void cr_k_softmax_backward(cr_tensor *gx, const cr_tensor *gy, const cr_tensor *out, int dim, bool log)
{
    check_float("cr_k_softmax_backward", gx);
    check_same_dtype("cr_k_softmax_backward", gx, gy);
    check_same_dtype("cr_k_softmax_backward", gx, out);
    if (!cr_is_contiguous(gx) || !cr_is_contiguous(gy) || !cr_is_contiguous(out) || !cr_same_shape(gx, gy) ||
        !cr_same_shape(gx, out))
        cr_error("cr_k_softmax_backward: operands must be contiguous and of one shape");
    dim = cr_dim_norm("cr_k_softmax_backward", dim, gx->ndim);
    int64_t outer, n, inner;
    split_dims(gx, dim, &outer, &n, &inner);
    if (gx->dtype == CR_F32 && inner == 1 && log)
        cr_k_log_softmax_backward_rows_f32(gx->data, gy->data, out->data, outer, n);
    else if (gx->dtype == CR_F32)
        softmax_backward_f32(gx->data, gy->data, out->data, outer, n, inner, log);
    else
        softmax_backward_f64(gx->data, gy->data, out->data, outer, n, inner, log);
}

void cr_k_index_add_dim(cr_tensor *gx, int dim, const cr_tensor *idx, const cr_tensor *gy)
{
    check_float("cr_k_index_add_dim", gx);
    check_same_dtype("cr_k_index_add_dim", gx, gy);
    dim = cr_dim_norm("cr_k_index_add_dim", dim, gx->ndim);
    int64_t outer, n, inner;
    split_dims(gx, dim, &outer, &n, &inner);
    if (!cr_is_contiguous(gx) || !cr_is_contiguous(gy) || !cr_is_contiguous(idx) || idx->dtype != CR_I32 ||
        cr_numel(idx) != outer * inner || cr_numel(gy) != outer * inner)
        cr_error("cr_k_index_add_dim: operands do not fit");
    if (gx->dtype == CR_F32)
        index_add_dim_f32(gx->data, idx->data, gy->data, outer, n, inner);
    else
        index_add_dim_f64(gx->data, idx->data, gy->data, outer, n, inner);
}

void cr_k_scale(cr_tensor *out, const cr_tensor *x, double scale)
{
    if (out->dtype != x->dtype && x->dtype != CR_I32) { /* convert first, then scale in place */
        cr_copy_(out, x);
        x = out;
    }
    cr_k_unary(CR_U_MUL_SCALAR, out, x, scale, 0);
}

void cr_k_where(cr_tensor *out, const cr_tensor *cond, const cr_tensor *x, const cr_tensor *y)
{
    check_float("cr_k_where", out);
    check_same_dtype("cr_k_where", out, x);
    check_same_dtype("cr_k_where", out, y);
    check_broadcast_out("cr_k_where", out, x, y);
    if (out->dtype == CR_F32)
        where_f32(out, cond, x, y);
    else
        where_f64(out, cond, x, y);
}

void cr_k_reduce(cr_reduce_kind k, cr_tensor *out, cr_tensor *arg, const cr_tensor *x, int dim)
{
    check_float("cr_k_reduce", x);
    check_same_dtype("cr_k_reduce", out, x);
    if (!cr_is_contiguous(x) || !cr_is_contiguous(out))
        cr_error("cr_k_reduce: input and output must be contiguous");
    int64_t outer, n, inner;
    if (dim == CR_ALL_DIMS) {
        outer = 1;
        n = cr_numel(x);
        inner = 1;
    } else {
        dim = cr_dim_norm("cr_k_reduce", dim, x->ndim);
        split_dims(x, dim, &outer, &n, &inner);
    }
    if (cr_numel(out) != outer * inner)
        cr_error("cr_k_reduce: output has %lld elements, expected %lld", (long long)cr_numel(out),
                 (long long)(outer * inner));
    if ((k == CR_R_MAX || k == CR_R_MIN) && n == 0) cr_error("cr_k_reduce: max/min over an empty dim");
    if (arg && (arg->dtype != CR_I32 || cr_numel(arg) != outer * inner))
        cr_error("cr_k_reduce: argmax buffer must be i32 with %lld elements", (long long)(outer * inner));
    int32_t *argp = arg ? arg->data : NULL;
    if (x->dtype == CR_F32)
        reduce_f32(k, out->data, argp, x->data, outer, n, inner);
    else
        reduce_f64(k, out->data, argp, x->data, outer, n, inner);
}

void cr_k_softmax(cr_tensor *out, const cr_tensor *x, int dim, bool log)
{
    check_float("cr_k_softmax", x);
    check_same_dtype("cr_k_softmax", out, x);
    if (!cr_is_contiguous(x) || !cr_is_contiguous(out) || !cr_same_shape(out, x))
        cr_error("cr_k_softmax: input and output must be contiguous and of one shape");
    dim = cr_dim_norm("cr_k_softmax", dim, x->ndim);
    int64_t outer, n, inner;
    split_dims(x, dim, &outer, &n, &inner);
    if (x->dtype == CR_F32 && inner == 1)
        cr_k_softmax_rows_f32(out->data, x->data, outer, n, log);
    else if (x->dtype == CR_F32)
        softmax_f32(out->data, x->data, outer, n, inner, log);
    else
        softmax_f64(out->data, x->data, outer, n, inner, log);
}

void cr_set_num_threads(int n)
{
#ifdef _OPENMP
    omp_set_num_threads(n > 0 ? n : 1);
#else
    (void)n;
#endif
    cr_gemm_set_threads(n);
}
