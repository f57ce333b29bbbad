/* Fused gate ops of the LSTM and GRU cells: the pointwise part of a step (the
 * sums, sigmoids, tanhs and products after the recurrent product) as one op
 * with its own backward, one pass over the gates each way instead of a dozen
 * kernels and nodes. The kernels are tensor/rnn_kernels.c; the cells offer
 * them as their fused step (nn/cell_lstm.c, nn/cell_gru.c). */
#include <stdio.h>

#include "ops_internal.h"

/* t itself when its rows have unit stride, else a contiguous copy. */
static const cr_tensor *rows(const cr_tensor *t)
{
    return t->stride[1] == 1 || t->shape[1] <= 1 ? t : cr_contiguous_copy(t);
}

/* Gradient target of input i for the kernel: the input's gradient when its
 * rows have unit stride and its memory overlaps no earlier target's (views of
 * one tensor: the same tensor passed twice, overlapping slices; the kernel's
 * vector loop assumes its outputs do not alias), else a new arena temporary
 * that finish_target adds in. */
typedef struct {
    cr_tensor *grad, *k;      /* the gradient, and what the kernel writes */
    bool grad_first, k_first; /* new (unwritten): written, not added to */
} target;

/* Whether the memory spans of a and b (2-D, non-negative strides) meet. */
static bool overlap(const cr_tensor *a, const cr_tensor *b)
{
    size_t es = cr_dtype_size(a->dtype);
    const char *a0 = a->data, *b0 = b->data;
    const char *a1 =
        a0 + (size_t)((a->shape[0] - 1) * a->stride[0] + (a->shape[1] - 1) * a->stride[1] + 1) * es;
    const char *b1 =
        b0 + (size_t)((b->shape[0] - 1) * b->stride[0] + (b->shape[1] - 1) * b->stride[1] + 1) * es;
    return a0 < b1 && b0 < a1;
}

static target grad_target(cr_node *n, int i, int n_earlier, const target *earlier)
{
    target t = {0};
    t.grad = input_grad_first(n, i, &t.grad_first);
    t.k = t.grad;
    t.k_first = t.grad_first;
    if (!t.grad) { /* the kernel writes every target: a scratch row set, dropped */
        t.k = cr_tensor_new(n->in[i]->dtype, 2, n->in[i]->shape);
        t.k_first = true;
        return t;
    }
    bool own = t.grad->stride[1] == 1 || t.grad->shape[1] <= 1;
    for (int e = 0; e < n_earlier && own; e++) own = !overlap(t.grad, earlier[e].k);
    if (!own) {
        t.k = cr_tensor_new(t.grad->dtype, 2, t.grad->shape);
        t.k_first = true;
    }
    return t;
}

static void finish_target(const target *t)
{
    if (!t->grad || t->k == t->grad) return;
    if (t->grad_first)
        cr_k_assign(t->grad, t->k, NULL);
    else
        cr_k_accumulate(t->grad, t->k, NULL);
}

/* Check gx and gh ([B, gates*H]) against the state s ([B,H]). */
static void check_gates(const char *op, int gates, const cr_tensor *gx, const cr_tensor *gh,
                        const cr_tensor *s)
{
    char a[128], b[128], c[128];
    cr_check_float_pair(op, gx, gh);
    cr_check_float_pair(op, gx, s);
    bool ok = gx->ndim == 2 && gh->ndim == 2 && s->ndim == 2;
    if (ok) {
        int64_t B = s->shape[0], H = s->shape[1];
        ok = gx->shape[0] == B && gh->shape[0] == B && gx->shape[1] == gates * H && gh->shape[1] == gates * H;
    }
    if (!ok)
        cr_error("%s: gx %s, gh %s, state %s: expected gx and gh [B,%dH] for a state [B,H]", op,
                 cr_shape_str(a, sizeof a, gx->ndim, gx->shape),
                 cr_shape_str(b, sizeof b, gh->ndim, gh->shape), cr_shape_str(c, sizeof c, s->ndim, s->shape),
                 gates);
}

/* ---- LSTM ------------------------------------------------------------------------ */

/* out = (h', c') as [2,B,H]; n->saved = (i, f, g, o, tanh c') as [5,B,H] */
static void lstm_gates_fwd(cr_node *n)
{
    const cr_tensor *c = rows(n->in[2]);
    n->saved = cr_tensor_new(n->out->dtype, 3, (int64_t[]){5, c->shape[0], c->shape[1]});
    cr_k_lstm_gates(n->out, n->saved, rows(n->in[0]), rows(n->in[1]), c);
}
static void lstm_gates_bwd(cr_node *n)
{
    /* dz = dL/d(gx + gh) from dh', dc' (kernel comment); dgx += dz, dgh += dz, dc += dc_total f */
    const cr_tensor *dy = as_contiguous(n->out->grad);
    target t[3];
    for (int i = 0; i < 3; i++) t[i] = grad_target(n, i, i, t);
    target tx = t[0], th = t[1], tc = t[2];
    cr_k_lstm_gates_backward(tx.k, tx.k_first, th.k, th.k_first, tc.k, tc.k_first, dy, n->saved,
                             rows(n->in[2]));
    finish_target(&tx);
    finish_target(&th);
    finish_target(&tc);
}
const cr_op cr_op_lstm_gates = {"cr_lstm_gates", lstm_gates_fwd, lstm_gates_bwd, CR_SAVES_IN(2), 0};

cr_tensor *cr_lstm_gates(cr_tensor *gx, cr_tensor *gh, cr_tensor *c)
{
    check_gates("cr_lstm_gates", 4, gx, gh, c);
    cr_tensor *in[3] = {gx, gh, c};
    return cr_node_finish(cr_node_new(&cr_op_lstm_gates, 3, in), c->dtype, 3,
                          (int64_t[]){2, c->shape[0], c->shape[1]});
}

/* ---- GRU ------------------------------------------------------------------------- */

/* out = h' [B,H]; n->saved = (r, z, n, gh_n) as [4,B,H] */
static void gru_gates_fwd(cr_node *n)
{
    const cr_tensor *h = rows(n->in[2]);
    n->saved = cr_tensor_new(n->out->dtype, 3, (int64_t[]){4, h->shape[0], h->shape[1]});
    cr_k_gru_gates(n->out, n->saved, rows(n->in[0]), rows(n->in[1]), h);
}
static void gru_gates_bwd(cr_node *n)
{
    /* dgx = [dz_r, dz_z, da_n], dgh = [dz_r, dz_z, r da_n], dh += dh' z (kernel comment) */
    const cr_tensor *dy = as_contiguous(n->out->grad);
    target t[3];
    for (int i = 0; i < 3; i++) t[i] = grad_target(n, i, i, t);
    target tx = t[0], th = t[1], tq = t[2];
    cr_k_gru_gates_backward(tx.k, tx.k_first, th.k, th.k_first, tq.k, tq.k_first, dy, n->saved,
                            rows(n->in[2]));
    finish_target(&tx);
    finish_target(&th);
    finish_target(&tq);
}
const cr_op cr_op_gru_gates = {"cr_gru_gates", gru_gates_fwd, gru_gates_bwd, CR_SAVES_IN(2), 0};

cr_tensor *cr_gru_gates(cr_tensor *gx, cr_tensor *gh, cr_tensor *h)
{
    check_gates("cr_gru_gates", 3, gx, gh, h);
    cr_tensor *in[3] = {gx, gh, h};
    return cr_node_finish(cr_node_new(&cr_op_gru_gates, 3, in), h->dtype, 2, h->shape);
}
