/* Shape ops: views (reshape, transpose, permute, narrow, select, expand) that
 * share their input's storage, plus contiguous, concat, stack, split, chunk.
 * The backward of a slice adds into the slice of the input's gradient only. */
#include <string.h>

#include "ops_internal.h"

static void accumulate_view(cr_tensor *gx_view, const cr_tensor *gy) { cr_k_accumulate(gx_view, gy, NULL); }

/* ---- reshape ----------------------------------------------------------------------- */

static void reshape_fwd(cr_node *n) { cr_view_reshape(n->out, n->in[0], (int)n->attr2.i[0], n->attr.i); }
static void reshape_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    cr_view_reshape(&v, n->out->grad, n->in[0]->ndim, n->in[0]->shape); /* dx += reshape(dy) */
    accumulate_view(gx, &v);
}
const cr_op cr_op_reshape = {"reshape", reshape_fwd, reshape_bwd};

cr_tensor *cr_reshape(cr_tensor *x, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > CR_MAX_DIMS) cr_error("cr_reshape: %d dims requested", ndim);
    if (!cr_is_contiguous(x)) x = cr_contiguous(x);
    cr_tensor probe;
    cr_view_reshape(&probe, x, ndim, shape); /* validates, resolves -1 */
    cr_node *n = cr_node_new(&cr_op_reshape, 1, &x);
    n->attr2.i[0] = ndim;
    memcpy(n->attr.i, probe.shape, (size_t)ndim * sizeof(int64_t));
    return cr_node_finish_view(n);
}

/* ---- transpose and permute ------------------------------------------------------------- */

static void transpose_fwd(cr_node *n) { cr_view_transpose(n->out, n->in[0], (int)n->attr.i[0], (int)n->attr.i[1]); }
static void transpose_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    cr_view_transpose(&v, n->out->grad, (int)n->attr.i[0], (int)n->attr.i[1]); /* dx += dy^T */
    accumulate_view(gx, &v);
}
const cr_op cr_op_transpose = {"transpose", transpose_fwd, transpose_bwd};

cr_tensor *cr_transpose(cr_tensor *x, int d0, int d1)
{
    cr_node *n = cr_node_new(&cr_op_transpose, 1, &x);
    n->attr.i[0] = cr_dim_norm("cr_transpose", d0, x->ndim);
    n->attr.i[1] = cr_dim_norm("cr_transpose", d1, x->ndim);
    return cr_node_finish_view(n);
}

static void permute_fwd(cr_node *n)
{
    int perm[CR_MAX_DIMS];
    for (int d = 0; d < n->in[0]->ndim; d++) perm[d] = (int)n->attr.i[d];
    cr_view_permute(n->out, n->in[0], perm);
}
static void permute_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    int inv[CR_MAX_DIMS];
    for (int d = 0; d < n->in[0]->ndim; d++) inv[n->attr.i[d]] = d;
    cr_view_permute(&v, n->out->grad, inv); /* dx += dy permuted back */
    accumulate_view(gx, &v);
}
const cr_op cr_op_permute = {"permute", permute_fwd, permute_bwd};

cr_tensor *cr_permute(cr_tensor *x, const int *perm)
{
    cr_tensor probe;
    cr_view_permute(&probe, x, perm); /* validates */
    cr_node *n = cr_node_new(&cr_op_permute, 1, &x);
    for (int d = 0; d < x->ndim; d++) n->attr.i[d] = perm[d];
    return cr_node_finish_view(n);
}

/* ---- narrow and select -------------------------------------------------------------------- */

static void narrow_fwd(cr_node *n) { cr_view_narrow(n->out, n->in[0], (int)n->attr.i[0], n->attr.i[1], n->attr.i[2]); }
static void narrow_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    cr_view_narrow(&v, gx, (int)n->attr.i[0], n->attr.i[1], n->attr.i[2]); /* dx[slice] += dy */
    accumulate_view(&v, n->out->grad);
}
const cr_op cr_op_narrow = {"narrow", narrow_fwd, narrow_bwd};

cr_tensor *cr_narrow(cr_tensor *x, int dim, int64_t start, int64_t len)
{
    cr_tensor probe;
    dim = cr_dim_norm("cr_narrow", dim, x->ndim);
    cr_view_narrow(&probe, x, dim, start, len);
    cr_node *n = cr_node_new(&cr_op_narrow, 1, &x);
    n->attr.i[0] = dim;
    n->attr.i[1] = start;
    n->attr.i[2] = len;
    return cr_node_finish_view(n);
}

static void select_fwd(cr_node *n) { cr_view_select(n->out, n->in[0], (int)n->attr.i[0], n->attr.i[1]); }
static void select_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0), v;
    if (!gx) return;
    cr_view_select(&v, gx, (int)n->attr.i[0], n->attr.i[1]); /* dx[index] += dy */
    accumulate_view(&v, n->out->grad);
}
const cr_op cr_op_select = {"select", select_fwd, select_bwd};

cr_tensor *cr_select(cr_tensor *x, int dim, int64_t index)
{
    cr_tensor probe;
    dim = cr_dim_norm("cr_select", dim, x->ndim);
    cr_view_select(&probe, x, dim, index);
    cr_node *n = cr_node_new(&cr_op_select, 1, &x);
    n->attr.i[0] = dim;
    n->attr.i[1] = index < 0 ? index + x->shape[dim] : index;
    return cr_node_finish_view(n);
}

/* ---- expand and contiguous ------------------------------------------------------------------ */

static void expand_fwd(cr_node *n) { cr_view_expand(n->out, n->in[0], (int)n->attr2.i[0], n->attr.i); }
static void expand_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) cr_k_accumulate(gx, n->out->grad, NULL); /* dx += dy summed over expanded dims */
}
const cr_op cr_op_expand = {"expand", expand_fwd, expand_bwd};

cr_tensor *cr_expand(cr_tensor *x, int ndim, const int64_t *shape)
{
    cr_tensor probe;
    cr_view_expand(&probe, x, ndim, shape);
    cr_node *n = cr_node_new(&cr_op_expand, 1, &x);
    n->attr2.i[0] = ndim;
    memcpy(n->attr.i, shape, (size_t)ndim * sizeof(int64_t));
    return cr_node_finish_view(n);
}

static void contiguous_fwd(cr_node *n) { cr_copy_(n->out, n->in[0]); }
static void contiguous_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) cr_k_accumulate(gx, n->out->grad, NULL); /* dx += dy */
}
const cr_op cr_op_contiguous = {"contiguous", contiguous_fwd, contiguous_bwd};

cr_tensor *cr_contiguous(cr_tensor *x)
{
    if (cr_is_contiguous(x)) return x;
    return cr_node_finish(cr_node_new(&cr_op_contiguous, 1, &x), x->dtype, x->ndim, x->shape);
}

/* ---- concat and stack ------------------------------------------------------------------------- */

static void concat_fwd(cr_node *n)
{
    int dim = (int)n->attr.i[0];
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
    int dim = (int)n->attr.i[0];
    int64_t off = 0;
    for (int i = 0; i < n->n_in; i++) {
        cr_tensor *gx = input_grad(n, i);
        int64_t len = n->in[i]->shape[dim];
        if (gx) { /* dx_i += dy[piece i] */
            cr_tensor v;
            cr_view_narrow(&v, n->out->grad, dim, off, len);
            cr_k_accumulate(gx, &v, NULL);
        }
        off += len;
    }
}
const cr_op cr_op_concat = {"concat", concat_fwd, concat_bwd};

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
    for (int i = 1; i < n; i++) shape[dim] += xs[i]->shape[dim];
    cr_node *node = cr_node_new(&cr_op_concat, n, xs);
    node->attr.i[0] = dim;
    return cr_node_finish(node, xs[0]->dtype, xs[0]->ndim, shape);
}

static void stack_fwd(cr_node *n)
{
    for (int i = 0; i < n->n_in; i++) {
        cr_tensor v;
        cr_view_select(&v, n->out, (int)n->attr.i[0], i);
        cr_copy_(&v, n->in[i]);
    }
}
static void stack_bwd(cr_node *n)
{
    for (int i = 0; i < n->n_in; i++) {
        cr_tensor *gx = input_grad(n, i);
        if (!gx) continue;
        cr_tensor v; /* dx_i += dy[i] */
        cr_view_select(&v, n->out->grad, (int)n->attr.i[0], i);
        cr_k_accumulate(gx, &v, NULL);
    }
}
const cr_op cr_op_stack = {"stack", stack_fwd, stack_bwd};

cr_tensor *cr_stack(int n, cr_tensor *const *xs, int dim)
{
    check_pieces("cr_stack", n, xs, 0, true);
    int nd = xs[0]->ndim + 1;
    if (nd > CR_MAX_DIMS) cr_error("cr_stack: result would have %d dims", nd);
    dim = cr_dim_norm("cr_stack", dim, nd);
    int64_t shape[CR_MAX_DIMS];
    for (int d = 0, s = 0; d < nd; d++) shape[d] = d == dim ? n : xs[0]->shape[s++];
    cr_node *node = cr_node_new(&cr_op_stack, n, xs);
    node->attr.i[0] = dim;
    return cr_node_finish(node, xs[0]->dtype, nd, shape);
}

/* ---- split and chunk: narrow views ----------------------------------------------------------------- */

int cr_split(cr_tensor *x, int64_t size, int dim, cr_tensor **out, int max_out)
{
    dim = cr_dim_norm("cr_split", dim, x->ndim);
    if (size <= 0) cr_error("cr_split: piece size %lld must be positive", (long long)size);
    int64_t len = x->shape[dim];
    int pieces = (int)((len + size - 1) / size);
    if (pieces > max_out) cr_error("cr_split: %d pieces do not fit in %d outputs", pieces, max_out);
    for (int i = 0; i < pieces; i++) {
        int64_t start = (int64_t)i * size;
        out[i] = cr_narrow(x, dim, start, start + size <= len ? size : len - start);
    }
    return pieces;
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
