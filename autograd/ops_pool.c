/* Pooling over the last one or two dims (max_pool1d/2d, avg_pool1d/2d):
 * kernel, stride (default: the kernel), padding of at most half the kernel,
 * as PyTorch without ceil_mode. Max sends the gradient to the first maximum
 * of each window; average divides by the whole window, padding included. */
#include "ops_internal.h"

typedef struct {
    cr_window g; /* one plane; C is unused */
} pool_attr;

/* n->saved holds the argmax of each window (i32, the output's shape). */
static void max_pool_fwd(cr_node *n)
{
    n->saved = cr_tensor_new(CR_I32, n->out->ndim, n->out->shape);
    cr_k_max_pool(&CR_NODE_ATTR(n, pool_attr)->g, n->in[0], n->out, n->saved);
}
static void max_pool_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) /* dx[argmax] += dy */
        cr_k_max_pool_backward(&CR_NODE_ATTR(n, pool_attr)->g, gx, as_contiguous(n->out->grad), n->saved);
}
const cr_op cr_op_max_pool1d = {"cr_max_pool1d", max_pool_fwd, max_pool_bwd, 0, sizeof(pool_attr)};
const cr_op cr_op_max_pool2d = {"cr_max_pool2d", max_pool_fwd, max_pool_bwd, 0, sizeof(pool_attr)};

static void avg_pool_fwd(cr_node *n) { cr_k_avg_pool(&CR_NODE_ATTR(n, pool_attr)->g, n->in[0], n->out); }
static void avg_pool_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) /* dx[window] += dy / (KH KW) */
        cr_k_avg_pool_backward(&CR_NODE_ATTR(n, pool_attr)->g, gx, as_contiguous(n->out->grad));
}
const cr_op cr_op_avg_pool1d = {"cr_avg_pool1d", avg_pool_fwd, avg_pool_bwd, 0, sizeof(pool_attr)};
const cr_op cr_op_avg_pool2d = {"cr_avg_pool2d", avg_pool_fwd, avg_pool_bwd, 0, sizeof(pool_attr)};

/* nd spatial dims (1 or 2) at the end of x, which has one or two more
 * (channels, and optionally the batch); stride 0 means the kernel. */
static cr_tensor *pool_new(const cr_op *op, int nd, cr_tensor *x, const int64_t *kernel,
                           const int64_t *stride_in, const int64_t *padding)
{
    const char *fn = op->name;
    char s1[128], s2[64], s3[64], s4[64];
    cr_check_float(fn, x);
    cr_shape_str(s1, sizeof s1, x->ndim, x->shape);
    if (x->ndim != nd + 1 && x->ndim != nd + 2)
        cr_error("%s: input %s must be %s", fn, s1,
                 nd == 1 ? "[N, C, L] or [C, L]" : "[N, C, H, W] or [C, H, W]");
    int64_t stride[2];
    bool ok = true, half = true;
    for (int i = 0; i < nd; i++) {
        stride[i] = stride_in[i] == 0 ? kernel[i] : stride_in[i];
        ok = ok && kernel[i] >= 1 && stride[i] >= 1 && padding[i] >= 0;
        half = half && padding[i] <= kernel[i] / 2;
    }
    cr_shape_str(s2, sizeof s2, nd, kernel);
    cr_shape_str(s3, sizeof s3, nd, stride_in);
    cr_shape_str(s4, sizeof s4, nd, padding);
    if (!ok)
        cr_error("%s: kernel %s, stride %s, padding %s: kernel and stride must be >= 1 (stride 0 means the "
                 "kernel), padding >= 0",
                 fn, s2, s3, s4);
    if (!half) cr_error("%s: padding %s must be at most half the kernel %s", fn, s4, s2);
    cr_window g = {.C = 1, .H = 1, .KH = 1, .SH = 1, .PH = 0, .DH = 1, .DW = 1, .OH = 1};
    if (nd == 2) {
        g.H = x->shape[x->ndim - 2], g.KH = kernel[0], g.SH = stride[0], g.PH = padding[0];
        g.OH = cr_window_out(g.H, g.KH, g.SH, g.PH, 1);
    }
    g.W = x->shape[x->ndim - 1], g.KW = kernel[nd - 1], g.SW = stride[nd - 1], g.PW = padding[nd - 1];
    g.OW = cr_window_out(g.W, g.KW, g.SW, g.PW, 1);
    if (g.OH < 1 || g.OW < 1)
        cr_error("%s: input %s with padding %s is smaller than the kernel %s", fn, s1, s4, s2);
    int64_t shape[CR_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) shape[d] = x->shape[d];
    if (nd == 2) shape[x->ndim - 2] = g.OH;
    shape[x->ndim - 1] = g.OW;
    cr_tensor *in = cr_contiguous(x);
    cr_node *n = cr_node_new(op, 1, &in);
    CR_NODE_ATTR(n, pool_attr)->g = g;
    return cr_node_finish(n, x->dtype, x->ndim, shape);
}

cr_tensor *cr_max_pool1d(cr_tensor *x, cr_pool1d_opts o)
{
    return pool_new(&cr_op_max_pool1d, 1, x, &o.kernel, &o.stride, &o.padding);
}
cr_tensor *cr_max_pool2d(cr_tensor *x, cr_pool2d_opts o)
{
    return pool_new(&cr_op_max_pool2d, 2, x, o.kernel, o.stride, o.padding);
}
cr_tensor *cr_avg_pool1d(cr_tensor *x, cr_pool1d_opts o)
{
    return pool_new(&cr_op_avg_pool1d, 1, x, &o.kernel, &o.stride, &o.padding);
}
cr_tensor *cr_avg_pool2d(cr_tensor *x, cr_pool2d_opts o)
{
    return pool_new(&cr_op_avg_pool2d, 2, x, o.kernel, o.stride, o.padding);
}
