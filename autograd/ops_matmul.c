/* Matrix products: 2-D, batched 3-D, and 3-D by a shared 2-D weight, through
 * the strided gemm kernel (transposed views cost no copy); a batch that folds
 * into rows becomes one product. matmul_bias adds a broadcast bias into the
 * product's own buffer (one output instead of a product and a sum).
 * weight_t is W^T for a weight multiplied at every time step: a view of W
 * packed once for the products, which stack their weight-gradient rows into
 * one product. */
#include <string.h>

#include "graph_internal.h"

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

/* ---- weight_t: a weight shared by the products of every time step -------------------------- */

/* The stack of the products' rows, in a gradient-side pool block taken by the
 * first product's backward and given back by weight_t's: h [cap,K], then dy
 * [cap,N]. W packed for the products' dh = dy W (cr_k_gemm_pack), in another
 * such block, made and given back the same way. (W^T's own pack, for the
 * forward products, is the node's saved tensor.) A W small enough that some
 * products go to the small-product kernel (one row of h: N K at most
 * cr_gemm_small_threshold), which reads B in place, also gets a contiguous
 * W^T (`small`), so that kernel runs along B's rows, not down its columns
 * (a strided W^T view cost 3-5% of the hidden-32 batch-1 step). */
typedef struct {
    int64_t cap, used; /* rows the stack holds (0: no stack), rows in it */
    cr_block *blk;
    cr_block *pack_w;
    int64_t pack_numel;
    cr_tensor *small; /* contiguous W^T in the arena, or NULL */
} weight_t_attr;

/* Header of rows [0, m) of a [cap, cols] matrix at p. */
static cr_tensor rows_of(cr_dtype dt, void *p, int64_t m, int64_t cols)
{
    cr_tensor v;
    memset(&v, 0, sizeof v);
    cr_tensor_set_contiguous(&v, dt, 2, (int64_t[]){m, cols});
    v.data = p;
    return v;
}

/* dW (+)= dy^T h over the stacked rows: one [N, rows] x [rows, K] product. */
static void weight_t_flush(cr_node *wn)
{
    weight_t_attr *a = CR_NODE_ATTR(wn, weight_t_attr);
    if (!a->used) return;
    const cr_tensor *w = wn->in[0];
    cr_dtype dt = w->dtype;
    int64_t N = w->shape[0], K = w->shape[1];
    char *p = cr_block_payload(a->blk);
    cr_tensor h = rows_of(dt, p, a->used, K);
    cr_tensor dy = rows_of(dt, p + (size_t)(a->cap * K) * cr_dtype_size(dt), a->used, N);
    bool first;
    cr_tensor *gw = input_grad_first(wn, 0, &first);
    cr_tensor dyt = mat(&dy, 0, true);
    cr_k_gemm(1.0, &dyt, &h, first ? 0.0 : 1.0, gw);
    a->used = 0;
}

/* A product h W' (h [M,K], W' = weight_t(W)) hands its rows to the stack
 * instead of computing dW' itself; false when it cannot (no stack, M above
 * its size). */
static bool weight_t_defer(cr_node *wn, const cr_tensor *h, const cr_tensor *gy)
{
    weight_t_attr *a = CR_NODE_ATTR(wn, weight_t_attr);
    int64_t m = h->shape[0], N = wn->in[0]->shape[0], K = wn->in[0]->shape[1];
    if (h->ndim != 2 || m > a->cap) return false;
    if (a->used + m > a->cap) weight_t_flush(wn);
    cr_dtype dt = h->dtype;
    if (!a->blk) {
        cr_graph *g = cr_graph_current();
        a->blk = cr_graph_block_get(g, (size_t)(a->cap * (K + N)) * cr_dtype_size(dt));
        cr_grad_reserve(wn->out); /* so that weight_t's backward runs */
    }
    char *p = cr_block_payload(a->blk);
    cr_tensor hs = rows_of(dt, p + (size_t)(a->used * K) * cr_dtype_size(dt), m, K);
    cr_tensor ds = rows_of(dt, p + (size_t)(a->cap * K + a->used * N) * cr_dtype_size(dt), m, N);
    cr_k_assign(&hs, h, NULL);
    cr_k_assign(&ds, gy, NULL);
    a->used += m;
    return true;
}

/* W packed for dh = dy W (a header over the pool block, made by the first
 * product's backward), or NULL when W cannot be packed. */
static const cr_tensor *weight_t_pack_w(cr_node *wn, cr_tensor *hdr)
{
    weight_t_attr *a = CR_NODE_ATTR(wn, weight_t_attr);
    const cr_tensor *w = wn->in[0];
    if (!a->pack_w) {
        int64_t np = cr_k_gemm_pack_numel(w);
        if (!np) return NULL;
        a->pack_w = cr_graph_block_get(cr_graph_current(), (size_t)np * cr_dtype_size(w->dtype));
        a->pack_numel = np;
        cr_grad_reserve(wn->out); /* so that weight_t's backward runs and gives the block back */
        *hdr = rows_of(w->dtype, cr_block_payload(a->pack_w), 1, np);
        cr_k_gemm_pack(hdr, w);
    }
    *hdr = rows_of(w->dtype, cr_block_payload(a->pack_w), 1, a->pack_numel);
    return hdr;
}

/* W' = W^T, a view of W (its gradient the same view of W's). The products
 * read W's pack for the micro-kernel (n->saved, made by cr_weight_t), not
 * W' itself, so no copy of W^T is made. */
static void weight_t_fwd(cr_node *n) { cr_view_transpose(n->out, n->in[0], 0, 1); }
static void weight_t_bwd(cr_node *n)
{
    weight_t_attr *a = CR_NODE_ATTR(n, weight_t_attr);
    weight_t_flush(n); /* dW (+)= dy^T h, the stacked rows */
    if (a->blk) cr_graph_block_put(cr_graph_current(), a->blk);
    if (a->pack_w) cr_graph_block_put(cr_graph_current(), a->pack_w);
    a->blk = a->pack_w = NULL;
    if (cr_grad_via_base(n->out)) return; /* other uses of W' wrote W's gradient through the view */
    bool unwritten;
    cr_tensor *gy = cr_grad_buffer(n->out, &unwritten);
    if (unwritten) return; /* every product stacked its rows */
    bool first;
    cr_tensor *gw = input_grad_first(n, 0, &first);
    if (!gw) return;
    cr_tensor gwt = mat(gw, 0, true);
    grad_add(&gwt, first, gy, NULL); /* dW (+)= dW'^T: W's gradient not laid out like W */
}
/* Saves W: its backward reads nothing, but the products' backward read W
 * itself (dh = dy W, and W's pack made then), after their forward read W'
 * through its pack. An in-place write to W in between (an optimizer step
 * before backward) would mix two weights into dh; the products check W's
 * version first. */
const cr_op cr_op_weight_t = {"cr_weight_t", weight_t_fwd, weight_t_bwd, CR_SAVES_IN(0) | CR_OP_VIEW,
                              sizeof(weight_t_attr)};

cr_tensor *cr_weight_t(cr_tensor *w, int64_t rows)
{
    char s[128];
    cr_check_float("cr_weight_t", w);
    if (w->ndim != 2)
        cr_error("cr_weight_t: weight %s must be 2-D", cr_shape_str(s, sizeof s, w->ndim, w->shape));
    if (rows < 0) cr_error("cr_weight_t: rows %lld must be 0 (no stack) or positive", (long long)rows);
    /* Not recorded (no gradient wanted): a contiguous copy, which every
     * product packs as a plain copy (no node holds a pack for them). */
    if (!cr_grad_enabled() || !w->requires_grad) return cr_contiguous(cr_transpose(w, 0, 1));
    cr_node *n = cr_node_new(&cr_op_weight_t, 1, &w);
    CR_NODE_ATTR(n, weight_t_attr)->cap = rows;
    cr_tensor *wt = cr_node_finish_view(n);
    /* W^T packed once, straight from W, for every step's product (not in
     * forward: a view op's forward also makes its gradient's view) */
    int64_t np = cr_k_gemm_pack_numel(wt);
    if (np) {
        n->saved = cr_tensor_new(wt->dtype, 1, (int64_t[]){np});
        cr_k_gemm_pack(n->saved, wt);
    }
    if (cr_numel(w) <= cr_gemm_small_threshold) {
        weight_t_attr *a = CR_NODE_ATTR(n, weight_t_attr);
        a->small = cr_tensor_new(wt->dtype, 2, wt->shape);
        cr_copy_(a->small, wt);
    }
    return wt;
}

/* ---- matmul ------------------------------------------------------------------------------------ */

/* The weight_t node of a product's right operand, or NULL. */
static cr_node *shared_weight(const cr_node *n)
{
    const cr_tensor *b = n->in[1];
    return b->node && b->node->op == &cr_op_weight_t ? b->node : NULL;
}

/* y = a b; by W^T's pack (or contiguous copy) when b is a shared weight's
 * W^T (the same bits) */
static void product(cr_node *n)
{
    cr_node *wn = shared_weight(n);
    const cr_tensor *small = wn ? CR_NODE_ATTR(wn, weight_t_attr)->small : NULL;
    const cr_tensor *b = small ? small : n->in[1];
    if (wn && wn->saved && n->in[0]->ndim == 2)
        cr_k_gemm_packed(1.0, n->in[0], b, wn->saved, 0.0, n->out);
    else
        gemm_batched(n->in[0], false, b, false, 0.0, n->out);
}

static void matmul_fwd(cr_node *n) { product(n); }
static void matmul_bwd(cr_node *n)
{
    bool first_a, first_b;
    cr_tensor *gy = n->out->grad, *ga = input_grad_first(n, 0, &first_a);
    /* B = W^T of a shared weight: B^T is W itself, row-major, so dY B^T is dY
     * W, by W's pack when weight_t's backward will run to give it back */
    cr_node *wn = shared_weight(n);
    if (ga && wn && wn->saves) cr_node_check_versions(wn); /* W as weight_t recorded it */
    cr_tensor pk;
    const cr_tensor *pw =
        ga && wn && n->in[1]->requires_grad && gy->ndim == 2 ? weight_t_pack_w(wn, &pk) : NULL;
    if (pw)
        cr_k_gemm_packed(1.0, gy, wn->in[0], pw, first_a ? 0.0 : 1.0, ga);
    else if (ga && wn)
        gemm_batched(gy, false, wn->in[0], false, first_a ? 0.0 : 1.0, ga);
    else if (ga)
        gemm_batched(gy, false, n->in[1], true, first_a ? 0.0 : 1.0, ga); /* dA (+)= dY B^T */
    if (wn && n->in[1]->requires_grad && weight_t_defer(wn, n->in[0], gy)) return;
    cr_tensor *gb = input_grad_first(n, 1, &first_b);
    if (gb) gemm_batched(n->in[0], true, gy, false, first_b ? 0.0 : 1.0, gb); /* dB (+)= A^T dY */
}
const cr_op cr_op_matmul = {"cr_matmul", matmul_fwd, matmul_bwd,
                            CR_SAVES_IN(0) | CR_SAVES_IN(1) | CR_SAVES_CROSS, 0};

/* The product's shape into shape (2 or 3 dims), after the checks; errors name fn. */
static int product_shape(const char *fn, const cr_tensor *a, const cr_tensor *b, int64_t *shape)
{
    char s1[128], s2[128];
    cr_check_float_pair(fn, a, b);
    /* the shapes are formatted for a message only (a product per step is a hot path) */
#define SHAPES cr_shape_str(s1, sizeof s1, a->ndim, a->shape), cr_shape_str(s2, sizeof s2, b->ndim, b->shape)
    if (a->ndim < 2 || a->ndim > 3 || b->ndim < 2 || b->ndim > 3)
        cr_error("%s: %s x %s: operands must be 2-D or 3-D", fn, SHAPES);
    int64_t m = a->shape[a->ndim - 2], k = a->shape[a->ndim - 1];
    int64_t k2 = b->shape[b->ndim - 2], nn = b->shape[b->ndim - 1];
    if (k != k2)
        cr_error("%s: %s x %s: inner dims %lld and %lld differ", fn, SHAPES, (long long)k, (long long)k2);
    if (a->ndim == 3 && b->ndim == 3 && a->shape[0] != b->shape[0])
        cr_error("%s: %s x %s: batch sizes %lld and %lld differ", fn, SHAPES, (long long)a->shape[0],
                 (long long)b->shape[0]);
#undef SHAPES
    if (a->ndim == 2 && b->ndim == 2) {
        shape[0] = m;
        shape[1] = nn;
        return 2;
    }
    shape[0] = a->ndim == 3 ? a->shape[0] : b->shape[0];
    shape[1] = m;
    shape[2] = nn;
    return 3;
}

cr_tensor *cr_matmul(cr_tensor *a, cr_tensor *b)
{
    int64_t shape[3];
    int nd = product_shape("cr_matmul", a, b, shape);
    cr_tensor *in[2] = {a, b};
    return cr_node_finish(cr_node_new(&cr_op_matmul, 2, in), a->dtype, nd, shape);
}

/* y = a b, then y += bias in place: the same rounding as cr_add(cr_matmul(a, b), bias). */
static void matmul_bias_fwd(cr_node *n)
{
    product(n);
    cr_k_accumulate(n->out, n->in[2], NULL);
}
static void matmul_bias_bwd(cr_node *n)
{
    matmul_bwd(n);                            /* dA, dB as for the product */
    input_grad_add(n, 2, n->out->grad, NULL); /* dbias += dY summed over the broadcast dims */
}
const cr_op cr_op_matmul_bias = {"cr_matmul_bias", matmul_bias_fwd, matmul_bias_bwd,
                                 CR_SAVES_IN(0) | CR_SAVES_IN(1) | CR_SAVES_CROSS, 0};

cr_tensor *cr_matmul_bias(cr_tensor *a, cr_tensor *b, cr_tensor *bias)
{
    char s1[128], s2[128];
    int64_t shape[3], bs[CR_MAX_DIMS];
    int nd = product_shape("cr_matmul_bias", a, b, shape), nb;
    cr_check_float_pair("cr_matmul_bias", a, bias);
    if (!cr_broadcast_shape(nd, shape, bias->ndim, bias->shape, &nb, bs) || nb != nd ||
        memcmp(bs, shape, (size_t)nd * sizeof *bs))
        cr_error("cr_matmul_bias: bias %s does not broadcast to the product's shape %s",
                 cr_shape_str(s1, sizeof s1, bias->ndim, bias->shape),
                 cr_shape_str(s2, sizeof s2, nd, shape));
    cr_tensor *in[3] = {a, b, bias};
    return cr_node_finish(cr_node_new(&cr_op_matmul_bias, 3, in), a->dtype, nd, shape);
}
