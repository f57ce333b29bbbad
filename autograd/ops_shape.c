/* Shape ops: views (reshape, transpose, permute, narrow, select, expand,
 * unsqueeze) that share their input's storage, plus contiguous, concat, stack,
 * split, chunk.
 * A view's gradient is the same view of its input's gradient (cr_op.view), so
 * its backward has nothing to do; the code below runs only when the input's
 * gradient is laid out differently from the input. The gradient of each piece
 * of concat and stack is the piece's slice of the output's gradient, shared
 * rather than copied when the piece has none yet. */
#include <string.h>

#include "ops_internal.h"

/* dx += dy seen through a view of dx's (or dy's) gradient */
static void accumulate_view(cr_tensor *gx_view, const cr_tensor *gy) { cr_k_accumulate(gx_view, gy, NULL); }

/* ---- reshape ----------------------------------------------------------------------- */

/* a target shape: reshape's (with -1 resolved) and expand's */
typedef struct {
    int ndim;
    int64_t shape[CR_MAX_DIMS];
} shape_attr;

static void reshape_fwd(cr_node *n)
{
    const shape_attr *at = CR_NODE_ATTR(n, shape_attr);
    cr_view_reshape(n->out, n->in[0], at->ndim, at->shape);
}
static void reshape_bwd(cr_node *n)
{
    if (cr_grad_via_base(n->out)) return;
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    cr_view_reshape(&v, n->out->grad, n->in[0]->ndim, n->in[0]->shape); /* dx += reshape(dy) */
    accumulate_view(gx, &v);
}
const cr_op cr_op_reshape = {"cr_reshape", reshape_fwd, reshape_bwd, CR_OP_VIEW, sizeof(shape_attr)};

cr_tensor *cr_reshape(cr_tensor *x, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > CR_MAX_DIMS) cr_error("cr_reshape: %d dims requested", ndim);
    if (!cr_is_contiguous(x)) x = cr_contiguous(x);
    cr_tensor probe;
    cr_view_reshape(&probe, x, ndim, shape); /* validates, resolves -1 */
    cr_node *n = cr_node_new(&cr_op_reshape, 1, &x);
    shape_attr *at = CR_NODE_ATTR(n, shape_attr);
    at->ndim = ndim;
    memcpy(at->shape, probe.shape, (size_t)ndim * sizeof(int64_t));
    return cr_node_finish_view(n);
}

/* ---- transpose and permute ------------------------------------------------------------- */

typedef struct {
    int d0, d1; /* normalised */
} transpose_attr;

static void transpose_fwd(cr_node *n)
{
    const transpose_attr *at = CR_NODE_ATTR(n, transpose_attr);
    cr_view_transpose(n->out, n->in[0], at->d0, at->d1);
}
static void transpose_bwd(cr_node *n)
{
    if (cr_grad_via_base(n->out)) return;
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    const transpose_attr *at = CR_NODE_ATTR(n, transpose_attr);
    cr_view_transpose(&v, n->out->grad, at->d0, at->d1); /* dx += dy^T */
    accumulate_view(gx, &v);
}
const cr_op cr_op_transpose = {"cr_transpose", transpose_fwd, transpose_bwd, CR_OP_VIEW,
                               sizeof(transpose_attr)};

cr_tensor *cr_transpose(cr_tensor *x, int d0, int d1)
{
    transpose_attr at = {cr_dim_norm("cr_transpose", d0, x->ndim), cr_dim_norm("cr_transpose", d1, x->ndim)};
    cr_node *n = cr_node_new(&cr_op_transpose, 1, &x);
    *CR_NODE_ATTR(n, transpose_attr) = at;
    return cr_node_finish_view(n);
}

typedef struct {
    int perm[CR_MAX_DIMS]; /* output dim d is input dim perm[d] */
} permute_attr;

static void permute_fwd(cr_node *n)
{
    cr_view_permute(n->out, n->in[0], CR_NODE_ATTR(n, permute_attr)->perm);
}
static void permute_bwd(cr_node *n)
{
    if (cr_grad_via_base(n->out)) return;
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    const int *perm = CR_NODE_ATTR(n, permute_attr)->perm;
    int inv[CR_MAX_DIMS];
    for (int d = 0; d < n->in[0]->ndim; d++) inv[perm[d]] = d;
    cr_view_permute(&v, n->out->grad, inv); /* dx += dy permuted back */
    accumulate_view(gx, &v);
}
const cr_op cr_op_permute = {"cr_permute", permute_fwd, permute_bwd, CR_OP_VIEW, sizeof(permute_attr)};

cr_tensor *cr_permute(cr_tensor *x, const int *perm)
{
    cr_tensor probe;
    cr_view_permute(&probe, x, perm); /* validates */
    cr_node *n = cr_node_new(&cr_op_permute, 1, &x);
    memcpy(CR_NODE_ATTR(n, permute_attr)->perm, perm, (size_t)x->ndim * sizeof *perm);
    return cr_node_finish_view(n);
}

/* ---- narrow and select -------------------------------------------------------------------- */

typedef struct {
    int dim; /* normalised */
    int64_t start, len;
} narrow_attr;

static void narrow_fwd(cr_node *n)
{
    const narrow_attr *at = CR_NODE_ATTR(n, narrow_attr);
    cr_view_narrow(n->out, n->in[0], at->dim, at->start, at->len);
}
static void narrow_bwd(cr_node *n)
{
    if (cr_grad_via_base(n->out)) return;
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    const narrow_attr *at = CR_NODE_ATTR(n, narrow_attr);
    cr_view_narrow(&v, gx, at->dim, at->start, at->len); /* dx[slice] += dy */
    accumulate_view(&v, n->out->grad);
}
const cr_op cr_op_narrow = {"cr_narrow", narrow_fwd, narrow_bwd, CR_OP_VIEW, sizeof(narrow_attr)};

cr_tensor *cr_narrow(cr_tensor *x, int dim, int64_t start, int64_t len)
{
    cr_tensor probe;
    dim = cr_dim_norm("cr_narrow", dim, x->ndim);
    cr_view_narrow(&probe, x, dim, start, len);
    cr_node *n = cr_node_new(&cr_op_narrow, 1, &x);
    *CR_NODE_ATTR(n, narrow_attr) = (narrow_attr){dim, start, len};
    return cr_node_finish_view(n);
}

typedef struct {
    int dim;       /* normalised */
    int64_t index; /* normalised (>= 0) */
} select_attr;

static void select_fwd(cr_node *n)
{
    const select_attr *at = CR_NODE_ATTR(n, select_attr);
    cr_view_select(n->out, n->in[0], at->dim, at->index);
}
static void select_bwd(cr_node *n)
{
    if (cr_grad_via_base(n->out)) return;
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    const select_attr *at = CR_NODE_ATTR(n, select_attr);
    cr_view_select(&v, gx, at->dim, at->index); /* dx[index] += dy */
    accumulate_view(&v, n->out->grad);
}
const cr_op cr_op_select = {"cr_select", select_fwd, select_bwd, CR_OP_VIEW, sizeof(select_attr)};

cr_tensor *cr_select(cr_tensor *x, int dim, int64_t index)
{
    cr_tensor probe;
    dim = cr_dim_norm("cr_select", dim, x->ndim);
    cr_view_select(&probe, x, dim, index);
    cr_node *n = cr_node_new(&cr_op_select, 1, &x);
    *CR_NODE_ATTR(n, select_attr) = (select_attr){dim, index < 0 ? index + x->shape[dim] : index};
    return cr_node_finish_view(n);
}

/* ---- expand and contiguous ------------------------------------------------------------------ */

static void expand_fwd(cr_node *n)
{
    const shape_attr *at = CR_NODE_ATTR(n, shape_attr);
    cr_view_expand(n->out, n->in[0], at->ndim, at->shape);
}
static void expand_bwd(cr_node *n)
{
    input_grad_add(n, 0, n->out->grad, NULL); /* dx += dy summed over expanded dims */
}
const cr_op cr_op_expand = {"cr_expand", expand_fwd, expand_bwd, 0, sizeof(shape_attr)};

cr_tensor *cr_expand(cr_tensor *x, int ndim, const int64_t *shape)
{
    cr_tensor probe;
    cr_view_expand(&probe, x, ndim, shape);
    cr_node *n = cr_node_new(&cr_op_expand, 1, &x);
    shape_attr *at = CR_NODE_ATTR(n, shape_attr);
    at->ndim = ndim;
    memcpy(at->shape, shape, (size_t)ndim * sizeof(int64_t));
    return cr_node_finish_view(n);
}

/* ---- unsqueeze ------------------------------------------------------------------------------ */

typedef struct {
    int dim; /* normalised, in the output's dims */
} unsqueeze_attr;

static void unsqueeze_fwd(cr_node *n)
{
    cr_view_unsqueeze(n->out, n->in[0], CR_NODE_ATTR(n, unsqueeze_attr)->dim);
}
static void unsqueeze_bwd(cr_node *n)
{
    if (cr_grad_via_base(n->out)) return;
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    cr_view_select(&v, n->out->grad, CR_NODE_ATTR(n, unsqueeze_attr)->dim, 0); /* dx += dy without the dim */
    accumulate_view(gx, &v);
}
const cr_op cr_op_unsqueeze = {"cr_unsqueeze", unsqueeze_fwd, unsqueeze_bwd, CR_OP_VIEW,
                               sizeof(unsqueeze_attr)};

cr_tensor *cr_unsqueeze(cr_tensor *x, int dim)
{
    cr_tensor probe;
    cr_view_unsqueeze(&probe, x, dim); /* validates */
    cr_node *n = cr_node_new(&cr_op_unsqueeze, 1, &x);
    CR_NODE_ATTR(n, unsqueeze_attr)->dim = cr_dim_norm("cr_unsqueeze", dim, x->ndim + 1);
    return cr_node_finish_view(n);
}

static void contiguous_fwd(cr_node *n) { cr_copy_(n->out, n->in[0]); }
static void contiguous_bwd(cr_node *n) { input_grad_add(n, 0, n->out->grad, NULL); /* dx += dy */ }
const cr_op cr_op_contiguous = {"cr_contiguous", contiguous_fwd, contiguous_bwd, 0, 0};

cr_tensor *cr_contiguous(cr_tensor *x)
{
    if (cr_is_contiguous(x)) return x;
    return cr_node_finish(cr_node_new(&cr_op_contiguous, 1, &x), x->dtype, x->ndim, x->shape);
}

/* ---- concat and stack ------------------------------------------------------------------------- */

typedef struct {
    int dim; /* normalised, in the output's dims */
} cat_attr;

static void concat_fwd(cr_node *n)
{
    int dim = CR_NODE_ATTR(n, cat_attr)->dim;
    int64_t off = 0;
    for (int i = 0; i < n->n_in; i++) {
        cr_tensor v;
        cr_view_narrow(&v, n->out, dim, off, n->in[i]->shape[dim]);
        cr_copy_(&v, n->in[i]);
        off += n->in[i]->shape[dim];
    }
}
static void concat_bwd(cr_node *n)
{
    int dim = CR_NODE_ATTR(n, cat_attr)->dim;
    int64_t off = 0;
    for (int i = 0; i < n->n_in; i++) {
        int64_t len = n->in[i]->shape[dim];
        if (n->in[i]->requires_grad) { /* dx_i += dy[piece i], by reference when dx_i is new */
            cr_tensor v;
            cr_view_narrow(&v, n->out->grad, dim, off, len);
            if (!cr_grad_share(n->in[i], n->out, &v)) input_grad_add(n, i, &v, NULL);
        }
        off += len;
    }
}
const cr_op cr_op_concat = {"cr_concat", concat_fwd, concat_bwd, 0, sizeof(cat_attr)};

static void check_pieces(const char *op, int n, cr_tensor *const *xs, int dim, bool stack)
{
    if (n < 1) cr_error("%s: needs at least one tensor", op);
    const cr_tensor *a = xs[0];
    for (int i = 1; i < n; i++) {
        const cr_tensor *b = xs[i];
        bool ok = a->ndim == b->ndim && a->dtype == b->dtype;
        for (int d = 0; ok && d < a->ndim; d++) ok = a->shape[d] == b->shape[d] || (!stack && d == dim);
        if (!ok) {
            char s1[128], s2[128];
            cr_error("%s: tensor 0 %s %s and tensor %d %s %s do not fit along dim %d", op,
                     cr_dtype_name(a->dtype), cr_shape_str(s1, sizeof s1, a->ndim, a->shape), i,
                     cr_dtype_name(b->dtype), cr_shape_str(s2, sizeof s2, b->ndim, b->shape), dim);
        }
    }
}

cr_tensor *cr_concat(int n, cr_tensor *const *xs, int dim)
{
    if (n < 1) cr_error("cr_concat: needs at least one tensor");
    dim = cr_dim_norm("cr_concat", dim, xs[0]->ndim);
    check_pieces("cr_concat", n, xs, dim, false);
    int64_t shape[CR_MAX_DIMS];
    memcpy(shape, xs[0]->shape, sizeof shape);
    for (int i = 1; i < n; i++)
        if (!cr_add_ok(shape[dim], xs[i]->shape[dim], &shape[dim]))
            cr_error("cr_concat: the %d tensors' sizes along dim %d add up to more than 2^63", n, dim);
    cr_node *node = cr_node_new(&cr_op_concat, n, xs);
    CR_NODE_ATTR(node, cat_attr)->dim = dim;
    return cr_node_finish(node, xs[0]->dtype, xs[0]->ndim, shape);
}

static void stack_fwd(cr_node *n)
{
    for (int i = 0; i < n->n_in; i++) {
        cr_tensor v;
        cr_view_select(&v, n->out, CR_NODE_ATTR(n, cat_attr)->dim, i);
        cr_copy_(&v, n->in[i]);
    }
}
static void stack_bwd(cr_node *n)
{
    for (int i = 0; i < n->n_in; i++) {
        if (!n->in[i]->requires_grad) continue;
        cr_tensor v; /* dx_i += dy[i], by reference when dx_i is new */
        cr_view_select(&v, n->out->grad, CR_NODE_ATTR(n, cat_attr)->dim, i);
        if (!cr_grad_share(n->in[i], n->out, &v)) input_grad_add(n, i, &v, NULL);
    }
}
const cr_op cr_op_stack = {"cr_stack", stack_fwd, stack_bwd, 0, sizeof(cat_attr)};

cr_tensor *cr_stack(int n, cr_tensor *const *xs, int dim)
{
    check_pieces("cr_stack", n, xs, 0, true);
    int nd = xs[0]->ndim + 1;
    if (nd > CR_MAX_DIMS) cr_error("cr_stack: result would have %d dims", nd);
    dim = cr_dim_norm("cr_stack", dim, nd);
    int64_t shape[CR_MAX_DIMS];
    for (int d = 0, s = 0; d < nd; d++) shape[d] = d == dim ? n : xs[0]->shape[s++];
    cr_node *node = cr_node_new(&cr_op_stack, n, xs);
    CR_NODE_ATTR(node, cat_attr)->dim = dim;
    return cr_node_finish(node, xs[0]->dtype, nd, shape);
}

/* ---- split and chunk: narrow views ----------------------------------------------------------------- */

int cr_split(cr_tensor *x, int64_t size, int dim, cr_tensor **out, int max_out)
{
    dim = cr_dim_norm("cr_split", dim, x->ndim);
    if (size <= 0) cr_error("cr_split: piece size %lld must be positive", (long long)size);
    int64_t len = x->shape[dim];
    int64_t pieces = len / size + (len % size != 0); /* (len + size - 1) / size can overflow */
    if (pieces > max_out)
        cr_error("cr_split: %lld pieces do not fit in %d outputs", (long long)pieces, max_out);
    for (int i = 0; i < pieces; i++) {
        int64_t start = (int64_t)i * size;
        out[i] = cr_narrow(x, dim, start, size <= len - start ? size : len - start);
    }
    return (int)pieces;
}

void cr_chunk(cr_tensor *x, int n, int dim, cr_tensor **out)
{
    dim = cr_dim_norm("cr_chunk", dim, x->ndim);
    if (n <= 0 || x->shape[dim] % n != 0) {
        char s[128];
        cr_error("cr_chunk: dim %d of %s does not split into %d equal pieces", dim,
                 cr_shape_str(s, sizeof s, x->ndim, x->shape), n);
    }
    int64_t size = x->shape[dim] / n;
    for (int i = 0; i < n; i++) out[i] = cr_narrow(x, dim, (int64_t)i * size, size);
}
