/* Reductions (sum and mean of everything, sum, mean and max along a dim,
 * argmax), softmax and log-softmax. */
#include "ops_internal.h"

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
static void sum_bwd(cr_node *n) { input_grad_add(n, 0, n->out->grad, NULL); /* dx += dy (broadcast) */ }
const cr_op cr_op_sum = {"cr_sum", sum_fwd, sum_bwd, 0, 0};
cr_tensor *cr_sum(cr_tensor *x)
{
    cr_check_float("cr_sum", x);
    return cr_node_finish(cr_node_new(&cr_op_sum, 1, &x), x->dtype, 0, NULL);
}

static void mean_fwd(cr_node *n)
{
    cr_k_reduce(CR_R_MEAN, n->out, NULL, as_contiguous(n->in[0]), CR_ALL_DIMS);
}
static void mean_bwd(cr_node *n)
{
    if (n->in[0]->requires_grad) /* dx += dy / numel */
        input_grad_add(n, 0, n->out->grad, cr_scalar(n->in[0]->dtype, 1.0 / (double)cr_numel(n->in[0])));
}
const cr_op cr_op_mean = {"cr_mean", mean_fwd, mean_bwd, 0, 0};
cr_tensor *cr_mean(cr_tensor *x)
{
    cr_check_float("cr_mean", x);
    return cr_node_finish(cr_node_new(&cr_op_mean, 1, &x), x->dtype, 0, NULL);
}

/* ---- along a dim ---------------------------------------------------------------- */

typedef struct {
    int dim; /* normalised */
    bool keepdim;
} reduce_attr;

static cr_tensor *reduce_dim_new(const cr_op *op, cr_tensor *x, int dim, bool keepdim)
{
    cr_check_float(op->name, x);
    dim = cr_dim_norm(op->name, dim, x->ndim);
    int64_t shape[CR_MAX_DIMS];
    int nd = reduced_shape(x, dim, keepdim, shape);
    cr_node *n = cr_node_new(op, 1, &x);
    *CR_NODE_ATTR(n, reduce_attr) = (reduce_attr){dim, keepdim};
    return cr_node_finish(n, x->dtype, nd, shape);
}

static int dim_of(const cr_node *n) { return CR_NODE_ATTR(n, reduce_attr)->dim; }

static void sum_dim_fwd(cr_node *n)
{
    cr_k_reduce(CR_R_SUM, n->out, NULL, as_contiguous(n->in[0]), dim_of(n));
}
static void sum_dim_bwd(cr_node *n)
{
    if (!n->in[0]->requires_grad) return;
    cr_tensor gy = keepdim_view(n->out->grad, n->in[0], dim_of(n));
    input_grad_add(n, 0, &gy, NULL); /* dx += dy, repeated along dim */
}
const cr_op cr_op_sum_dim = {"cr_sum_dim", sum_dim_fwd, sum_dim_bwd, 0, sizeof(reduce_attr)};
cr_tensor *cr_sum_dim(cr_tensor *x, int dim, bool keepdim)
{
    return reduce_dim_new(&cr_op_sum_dim, x, dim, keepdim);
}

static void mean_dim_fwd(cr_node *n)
{
    cr_k_reduce(CR_R_MEAN, n->out, NULL, as_contiguous(n->in[0]), dim_of(n));
}
static void mean_dim_bwd(cr_node *n)
{
    if (!n->in[0]->requires_grad) return;
    int dim = dim_of(n);
    cr_tensor gy = keepdim_view(n->out->grad, n->in[0], dim);
    input_grad_add(n, 0, &gy,
                   cr_scalar(n->in[0]->dtype, 1.0 / (double)n->in[0]->shape[dim])); /* dx += dy / n */
}
const cr_op cr_op_mean_dim = {"cr_mean_dim", mean_dim_fwd, mean_dim_bwd, 0, sizeof(reduce_attr)};
cr_tensor *cr_mean_dim(cr_tensor *x, int dim, bool keepdim)
{
    return reduce_dim_new(&cr_op_mean_dim, x, dim, keepdim);
}

/* n->saved holds the argmax indices (i32, the output's shape). */
static void max_dim_fwd(cr_node *n)
{
    n->saved = cr_tensor_new(CR_I32, n->out->ndim, n->out->shape);
    cr_k_reduce(CR_R_MAX, n->out, n->saved, as_contiguous(n->in[0]), dim_of(n));
}
static void max_dim_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (!gx) return;
    cr_tensor *t = contiguous_grad(gx);
    cr_k_index_add_dim(t, dim_of(n), n->saved, n->out->grad); /* dx[argmax] += dy */
    contiguous_grad_done(gx, t);
}
const cr_op cr_op_max_dim = {"cr_max_dim", max_dim_fwd, max_dim_bwd, 0, sizeof(reduce_attr)};
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
    cr_tensor *idx = cr_tensor_new_as("cr_argmax", CR_I32, nd, shape);
    cr_tensor *val = cr_tensor_new_as("cr_argmax", x->dtype, nd, shape);
    cr_k_reduce(CR_R_MAX, val, idx, as_contiguous(x), dim);
    return idx;
}

/* ---- softmax ---------------------------------------------------------------------- */

typedef struct {
    int dim; /* normalised */
} softmax_attr;

static cr_tensor *softmax_new(const cr_op *op, cr_tensor *x, int dim)
{
    cr_check_float(op->name, x);
    dim = cr_dim_norm(op->name, dim, x->ndim);
    cr_node *n = cr_node_new(op, 1, &x);
    CR_NODE_ATTR(n, softmax_attr)->dim = dim;
    return cr_node_finish(n, x->dtype, x->ndim, x->shape);
}

static int softmax_dim(const cr_node *n) { return CR_NODE_ATTR(n, softmax_attr)->dim; }

static void softmax_fwd(cr_node *n) { cr_k_softmax(n->out, as_contiguous(n->in[0]), softmax_dim(n), false); }
static void softmax_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (!gx) return;
    cr_tensor *t = contiguous_grad(gx);
    cr_k_softmax_backward(t, n->out->grad, n->out, softmax_dim(n), false); /* dx += y*(dy - sum(dy*y)) */
    contiguous_grad_done(gx, t);
}
const cr_op cr_op_softmax = {"cr_softmax", softmax_fwd, softmax_bwd, CR_SAVES_OUT, sizeof(softmax_attr)};
cr_tensor *cr_softmax(cr_tensor *x, int dim) { return softmax_new(&cr_op_softmax, x, dim); }

static void log_softmax_fwd(cr_node *n)
{
    cr_k_softmax(n->out, as_contiguous(n->in[0]), softmax_dim(n), true);
}
static void log_softmax_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (!gx) return;
    cr_tensor *t = contiguous_grad(gx);
    cr_k_softmax_backward(t, n->out->grad, n->out, softmax_dim(n), true); /* dx += dy - e^y sum(dy) */
    contiguous_grad_done(gx, t);
}
const cr_op cr_op_log_softmax = {"cr_log_softmax", log_softmax_fwd, log_softmax_bwd, CR_SAVES_OUT,
                                 sizeof(softmax_attr)};
cr_tensor *cr_log_softmax(cr_tensor *x, int dim) { return softmax_new(&cr_op_log_softmax, x, dim); }
