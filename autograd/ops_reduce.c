/* Reductions (sum, mean, max along dims), softmax and log-softmax, matrix
 * products, and the fused cross-entropy loss. */
#include <math.h>
#include <string.h>

#include "ops_internal.h"

static const cr_tensor *as_contiguous(const cr_tensor *x)
{
    return cr_is_contiguous(x) ? x : cr_contiguous_copy(x);
}

/* Shape of x reduced over dim (keepdim keeps it as 1). */
static int reduced_shape(const cr_tensor *x, int dim, bool keepdim, int64_t *shape)
{
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (d != dim)
            shape[nd++] = x->shape[d];
        else if (keepdim)
            shape[nd++] = 1;
    }
    return nd;
}

/* Header for gy seen with the reduced dim kept as size 1, so it broadcasts. */
static cr_tensor keepdim_view(const cr_tensor *gy, const cr_tensor *x, int dim)
{
    cr_tensor v = *gy;
    v.ndim = x->ndim;
    int64_t s = 1;
    for (int d = x->ndim - 1; d >= 0; d--) {
        v.shape[d] = d == dim ? 1 : x->shape[d];
        v.stride[d] = s;
        s *= v.shape[d];
    }
    return v;
}

/* ---- sum and mean -------------------------------------------------------------- */

static void sum_fwd(cr_node *n) { cr_k_reduce(CR_R_SUM, n->out, NULL, as_contiguous(n->in[0]), CR_ALL_DIMS); }
static void sum_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) cr_k_accumulate(gx, n->out->grad, NULL); /* dx += dy (broadcast) */
}
const cr_op cr_op_sum = {"sum", sum_fwd, sum_bwd};
cr_tensor *cr_sum(cr_tensor *x)
{
    cr_check_float("cr_sum", x);
    return cr_node_finish(cr_node_new(&cr_op_sum, 1, &x), x->dtype, 0, NULL);
}

static void mean_fwd(cr_node *n) { cr_k_reduce(CR_R_MEAN, n->out, NULL, as_contiguous(n->in[0]), CR_ALL_DIMS); }
static void mean_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) /* dx += dy / numel */
        cr_k_accumulate(gx, n->out->grad, cr_scalar(gx->dtype, 1.0 / (double)cr_numel(n->in[0])));
}
const cr_op cr_op_mean = {"mean", mean_fwd, mean_bwd};
cr_tensor *cr_mean(cr_tensor *x)
{
    cr_check_float("cr_mean", x);
    return cr_node_finish(cr_node_new(&cr_op_mean, 1, &x), x->dtype, 0, NULL);
}

static cr_tensor *reduce_dim_new(const cr_op *op, cr_tensor *x, int dim, bool keepdim)
{
    cr_check_float(op->name, x);
    dim = cr_dim_norm(op->name, dim, x->ndim);
    int64_t shape[CR_MAX_DIMS];
    int nd = reduced_shape(x, dim, keepdim, shape);
    cr_node *n = cr_node_new(op, 1, &x);
    n->attr.i[0] = dim;
    n->attr.i[1] = keepdim;
    return cr_node_finish(n, x->dtype, nd, shape);
}

static void sum_dim_fwd(cr_node *n)
{
    cr_k_reduce(CR_R_SUM, n->out, NULL, as_contiguous(n->in[0]), (int)n->attr.i[0]);
}
static void sum_dim_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (!gx) return;
    cr_tensor gy = keepdim_view(n->out->grad, n->in[0], (int)n->attr.i[0]);
    cr_k_accumulate(gx, &gy, NULL); /* dx += dy, repeated along dim */
}
const cr_op cr_op_sum_dim = {"sum_dim", sum_dim_fwd, sum_dim_bwd};
cr_tensor *cr_sum_dim(cr_tensor *x, int dim, bool keepdim) { return reduce_dim_new(&cr_op_sum_dim, x, dim, keepdim); }

static void mean_dim_fwd(cr_node *n)
{
    cr_k_reduce(CR_R_MEAN, n->out, NULL, as_contiguous(n->in[0]), (int)n->attr.i[0]);
}
static void mean_dim_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (!gx) return;
    int dim = (int)n->attr.i[0];
    cr_tensor gy = keepdim_view(n->out->grad, n->in[0], dim);
    cr_k_accumulate(gx, &gy, cr_scalar(gx->dtype, 1.0 / (double)n->in[0]->shape[dim])); /* dx += dy / n */
}
const cr_op cr_op_mean_dim = {"mean_dim", mean_dim_fwd, mean_dim_bwd};
cr_tensor *cr_mean_dim(cr_tensor *x, int dim, bool keepdim) { return reduce_dim_new(&cr_op_mean_dim, x, dim, keepdim); }

static void max_dim_fwd(cr_node *n)
{
    n->saved = cr_tensor_new(CR_I32, n->out->ndim, n->out->shape);
    cr_k_reduce(CR_R_MAX, n->out, n->saved, as_contiguous(n->in[0]), (int)n->attr.i[0]);
}
static void max_dim_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) cr_k_index_add_dim(gx, (int)n->attr.i[0], n->saved, n->out->grad); /* dx[argmax] += dy */
}
const cr_op cr_op_max_dim = {"max_dim", max_dim_fwd, max_dim_bwd};
cr_tensor *cr_max_dim(cr_tensor *x, int dim, bool keepdim)
{
    if (x->ndim > 0 && x->shape[cr_dim_norm("cr_max_dim", dim, x->ndim)] == 0)
        cr_error("cr_max_dim: dim %d of the input is empty", dim);
    return reduce_dim_new(&cr_op_max_dim, x, dim, keepdim);
}

cr_tensor *cr_argmax(cr_tensor *x, int dim, bool keepdim)
{
    cr_check_float("cr_argmax", x);
    dim = cr_dim_norm("cr_argmax", dim, x->ndim);
    if (x->shape[dim] == 0) cr_error("cr_argmax: dim %d of the input is empty", dim);
    int64_t shape[CR_MAX_DIMS];
    int nd = reduced_shape(x, dim, keepdim, shape);
    cr_tensor *idx = cr_tensor_new(CR_I32, nd, shape);
    cr_tensor *val = cr_tensor_new(x->dtype, nd, shape);
    cr_k_reduce(CR_R_MAX, val, idx, as_contiguous(x), dim);
    return idx;
}

/* ---- softmax ---------------------------------------------------------------------- */

static cr_tensor *softmax_new(const cr_op *op, cr_tensor *x, int dim)
{
    cr_check_float(op->name, x);
    cr_node *n = cr_node_new(op, 1, &x);
    n->attr.i[0] = cr_dim_norm(op->name, dim, x->ndim);
    return cr_node_finish(n, x->dtype, x->ndim, x->shape);
}

static void softmax_fwd(cr_node *n) { cr_k_softmax(n->out, as_contiguous(n->in[0]), (int)n->attr.i[0], false); }
static void softmax_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) cr_k_softmax_backward(gx, n->out->grad, n->out, (int)n->attr.i[0], false); /* dx += y*(dy - sum(dy*y)) */
}
const cr_op cr_op_softmax = {"softmax", softmax_fwd, softmax_bwd};
cr_tensor *cr_softmax(cr_tensor *x, int dim) { return softmax_new(&cr_op_softmax, x, dim); }

static void log_softmax_fwd(cr_node *n) { cr_k_softmax(n->out, as_contiguous(n->in[0]), (int)n->attr.i[0], true); }
static void log_softmax_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) cr_k_softmax_backward(gx, n->out->grad, n->out, (int)n->attr.i[0], true); /* dx += dy - e^y sum(dy) */
}
const cr_op cr_op_log_softmax = {"log_softmax", log_softmax_fwd, log_softmax_bwd};
cr_tensor *cr_log_softmax(cr_tensor *x, int dim) { return softmax_new(&cr_op_log_softmax, x, dim); }

/* ---- matmul ------------------------------------------------------------------------ */

/* 2-D view of batch i of t (t itself when 2-D), transposed when asked. */
static cr_tensor mat(const cr_tensor *t, int64_t i, bool trans)
{
    cr_tensor v = *t;
    if (t->ndim == 3) {
        v.ndim = 2;
        v.data = (char *)t->data + i * t->stride[0] * (int64_t)cr_dtype_size(t->dtype);
        v.shape[0] = t->shape[1];
        v.shape[1] = t->shape[2];
        v.stride[0] = t->stride[1];
        v.stride[1] = t->stride[2];
    }
    if (trans) {
        int64_t s = v.shape[0], st = v.stride[0];
        v.shape[0] = v.shape[1];
        v.stride[0] = v.stride[1];
        v.shape[1] = s;
        v.stride[1] = st;
    }
    return v;
}

/* A 3-D tensor whose first two dims merge into one: [B,M,K] -> [B*M,K]. */
static bool flatten3(const cr_tensor *t, cr_tensor *v)
{
    if (t->ndim != 3 || t->stride[0] != t->shape[1] * t->stride[1]) return false;
    *v = *t;
    v->ndim = 2;
    v->shape[0] = t->shape[0] * t->shape[1];
    v->shape[1] = t->shape[2];
    v->stride[0] = t->stride[1];
    v->stride[1] = t->stride[2];
    return true;
}

/* C (+)= op(A) op(B) over batches; 2-D operands are shared by every batch, and
 * a 2-D C sums over them. beta applies to the first product only. */
static void gemm_batched(const cr_tensor *a, bool ta, const cr_tensor *b, bool tb, double beta, cr_tensor *c)
{
    int64_t nb = 1;
    if (a->ndim == 3) nb = a->shape[0];
    if (b->ndim == 3) nb = b->shape[0];
    if (c->ndim == 3) nb = c->shape[0];
    /* One product where the batch folds into rows: [B*M,K] x [K,N], or the
     * weight gradient [K,B*M] x [B*M,N] of the hoisted input projection. */
    cr_tensor af, cf, bf;
    if (!ta && b->ndim == 2 && flatten3(a, &af) && flatten3(c, &cf)) {
        cr_tensor bv = mat(b, 0, tb);
        cr_k_gemm(1.0, &af, &bv, beta, &cf);
        return;
    }
    if (ta && c->ndim == 2 && flatten3(a, &af) && flatten3(b, &bf) && !tb) {
        cr_tensor at = mat(&af, 0, true);
        cr_k_gemm(1.0, &at, &bf, beta, c);
        return;
    }
    for (int64_t i = 0; i < nb; i++) {
        cr_tensor av = mat(a, i, ta), bv = mat(b, i, tb), cv = mat(c, c->ndim == 3 ? i : 0, false);
        cr_k_gemm(1.0, &av, &bv, (c->ndim == 2 && i > 0) ? 1.0 : beta, &cv);
    }
}

static void matmul_fwd(cr_node *n) { gemm_batched(n->in[0], false, n->in[1], false, 0.0, n->out); }
static void matmul_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad, *ga = input_grad(n, 0), *gb = input_grad(n, 1);
    if (ga) gemm_batched(gy, false, n->in[1], true, 1.0, ga); /* dA += dY B^T */
    if (gb) gemm_batched(n->in[0], true, gy, false, 1.0, gb); /* dB += A^T dY */
}
const cr_op cr_op_matmul = {"matmul", matmul_fwd, matmul_bwd};

cr_tensor *cr_matmul(cr_tensor *a, cr_tensor *b)
{
    char s1[128], s2[128];
    cr_check_float_pair("cr_matmul", a, b);
    cr_shape_str(s1, sizeof s1, a->ndim, a->shape);
    cr_shape_str(s2, sizeof s2, b->ndim, b->shape);
    if (a->ndim < 2 || a->ndim > 3 || b->ndim < 2 || b->ndim > 3)
        cr_error("cr_matmul: %s x %s: operands must be 2-D or 3-D", s1, s2);
    int64_t m = a->shape[a->ndim - 2], k = a->shape[a->ndim - 1];
    int64_t k2 = b->shape[b->ndim - 2], nn = b->shape[b->ndim - 1];
    if (k != k2) cr_error("cr_matmul: %s x %s: inner dims %lld and %lld differ", s1, s2, (long long)k, (long long)k2);
    if (a->ndim == 3 && b->ndim == 3 && a->shape[0] != b->shape[0])
        cr_error("cr_matmul: %s x %s: batch sizes %lld and %lld differ", s1, s2, (long long)a->shape[0],
                 (long long)b->shape[0]);
    cr_tensor *in[2] = {a, b};
    cr_node *n = cr_node_new(&cr_op_matmul, 2, in);
    if (a->ndim == 2 && b->ndim == 2) return cr_node_finish(n, a->dtype, 2, (int64_t[]){m, nn});
    int64_t batch = a->ndim == 3 ? a->shape[0] : b->shape[0];
    return cr_node_finish(n, a->dtype, 3, (int64_t[]){batch, m, nn});
}

/* ---- fused cross-entropy with logits ---------------------------------------------------- */
/* loss = -sum_n logp[n, t_n] / count, logp = log_softmax(logits); the
 * gradient is (softmax - onehot(t)) / count for counted rows. */

#define CE_BACKWARD(T)                                                                   \
    do {                                                                                 \
        T *g = gx->data;                                                                 \
        const T *lp = n->saved->data;                                                    \
        for (int64_t r = 0; r < rows; r++) {                                             \
            int32_t t = tgt[r];                                                          \
            if (t == ignore) continue;                                                   \
            for (int64_t c = 0; c < C; c++)                                              \
                g[r * C + c] += (T)(scale * (exp((double)lp[r * C + c]) - (c == t)));    \
        }                                                                                \
    } while (0)

static void cross_entropy_fwd(cr_node *n)
{
    cr_tensor *logits = n->in[0], *target = n->in[1];
    int64_t C = logits->shape[logits->ndim - 1], rows = cr_numel(logits) / (C ? C : 1);
    int64_t ignore = n->attr.i[0];
    cr_tensor lv = *as_contiguous(logits);
    lv.ndim = 2;
    lv.shape[0] = rows;
    lv.shape[1] = C;
    lv.stride[0] = C;
    lv.stride[1] = 1;
    n->saved = cr_tensor_new(logits->dtype, 2, lv.shape);
    cr_k_softmax(n->saved, &lv, 1, true);
    const cr_tensor *tc = as_contiguous(target);
    const int32_t *tgt = tc->data;
    double total = 0;
    int64_t count = 0;
    for (int64_t r = 0; r < rows; r++) {
        int32_t t = tgt[r];
        if (t == ignore) continue;
        if (t < 0 || t >= C)
            cr_error("cross_entropy: target %d at row %lld is out of range for %lld classes", t, (long long)r,
                     (long long)C);
        total -= cr_get_flat(n->saved, r * C + t);
        count++;
    }
    n->attr.i[2] = count;
    double loss = n->attr.i[1] == CR_MEAN ? (count ? total / (double)count : NAN) : total;
    cr_set_flat(n->out, 0, loss);
}

static void cross_entropy_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (!gx) return;
    cr_tensor *logits = n->in[0];
    int64_t C = logits->shape[logits->ndim - 1], rows = cr_numel(logits) / (C ? C : 1);
    int64_t count = n->attr.i[2], ignore = n->attr.i[0];
    double scale = cr_item(n->out->grad);
    if (n->attr.i[1] == CR_MEAN) scale = count ? scale / (double)count : 0.0;
    const int32_t *tgt = as_contiguous(n->in[1])->data;
    if (gx->dtype == CR_F32)
        CE_BACKWARD(float);
    else
        CE_BACKWARD(double);
}
const cr_op cr_op_cross_entropy = {"cross_entropy", cross_entropy_fwd, cross_entropy_bwd};

cr_tensor *cr_cross_entropy(cr_tensor *logits, const cr_tensor *target, int64_t ignore_index, cr_reduction red)
{
    char s1[128], s2[128];
    cr_check_float("cr_cross_entropy", logits);
    cr_shape_str(s1, sizeof s1, logits->ndim, logits->shape);
    cr_shape_str(s2, sizeof s2, target->ndim, target->shape);
    if (target->dtype != CR_I32) cr_error("cr_cross_entropy: targets must be i32, got %s", cr_dtype_name(target->dtype));
    bool ok = (logits->ndim == 2 && target->ndim == 1 && target->shape[0] == logits->shape[0]) ||
              (logits->ndim == 1 && target->ndim == 0);
    if (!ok) cr_error("cr_cross_entropy: logits %s and targets %s: need [N,C] with [N], or [C] with []", s1, s2);
    cr_tensor *in[2] = {logits, (cr_tensor *)target};
    cr_node *n = cr_node_new(&cr_op_cross_entropy, 2, in);
    n->attr.i[0] = ignore_index;
    n->attr.i[1] = red;
    return cr_node_finish(n, logits->dtype, 0, NULL);
}
