/* Internal to autograd/: the op descriptors (one per op, defined next to its
 * forward and backward in ops_*.c) and helpers shared by the op files. */
#ifndef CAROUSEL_OPS_INTERNAL_H
#define CAROUSEL_OPS_INTERNAL_H

#include "autograd.h"

/* Every op but the unary ones, which come from tensor/unary_ops.h; one line per family. */
/* clang-format off */
#define CR_OP_LIST(X)                                                                                        \
    X(add) X(sub) X(mul) X(div) X(maximum) X(minimum)                                                        \
    X(sum) X(mean) X(sum_dim) X(mean_dim) X(max_dim) X(softmax) X(log_softmax)                               \
    X(matmul) X(matmul_bias) X(weight_t) X(cross_entropy)                                                    \
    X(reshape) X(transpose) X(permute) X(narrow) X(select) X(expand) X(unsqueeze)                            \
    X(contiguous) X(concat) X(stack)                                                                         \
    X(gather_rows) X(where) X(mask) X(dropout)                                                               \
    X(conv1d) X(conv2d) X(max_pool1d) X(max_pool2d) X(avg_pool1d) X(avg_pool2d)                              \
    X(lstm_gates) X(gru_gates)                                                                               \
    X(recompute)
/* clang-format on */

#define CR_DECLARE_OP(name) extern const cr_op cr_op_##name;
#define CR_DECLARE_UNARY_OP(name, KIND, np, params, reads, fwd, deriv, valid) CR_DECLARE_OP(name)
CR_OP_LIST(CR_DECLARE_OP)
CR_UNARY_OPS(CR_DECLARE_UNARY_OP)
#undef CR_DECLARE_UNARY_OP
#undef CR_DECLARE_OP

/* For a backward that adds into rows ix[0..m) of t's gradient (ix[i] ==
 * skip: none) and nothing else: the record of nonzero rows, taken before
 * input_grad (which drops it), and handed back with the rows after the
 * writes (graph.c; cr_grad_rows). */
struct cr_grad_rows *cr_grad_rows_begin(const cr_tensor *t);
void cr_grad_rows_end(cr_tensor *t, struct cr_grad_rows *was, const int32_t *ix, int64_t m, int64_t skip);

/* Refuses (cr_backward's error) when a tensor that n's backward reads (its
 * op's saves) was written in place since n was recorded. The engine checks
 * each node before its own backward; a backward that reads another node's
 * input (a product reading the W of its weight_t) checks that node first. */
void cr_node_check_versions(const cr_node *n);

/* The gradient buffer of input i, or NULL when it needs none. */
static inline cr_tensor *input_grad(cr_node *n, int i)
{
    cr_tensor *t = n->in[i];
    return t->requires_grad ? cr_grad_buffer(t, NULL) : NULL;
}

/* The same for a backward that writes every element: *first tells whether
 * the buffer is new (unwritten), so the op writes (=) instead of adding. */
static inline cr_tensor *input_grad_first(cr_node *n, int i, bool *first)
{
    cr_tensor *t = n->in[i];
    return t->requires_grad ? cr_grad_buffer(t, first) : NULL;
}

/* gx (+)= x (* y) summed to gx's shape: = on a new buffer, += otherwise. */
static inline void grad_add(cr_tensor *gx, bool first, const cr_tensor *x, const cr_tensor *y)
{
    if (first)
        cr_k_assign(gx, x, y);
    else
        cr_k_accumulate(gx, x, y);
}

/* Input i's gradient (+)= x (* y), when input i needs one. */
static inline void input_grad_add(cr_node *n, int i, const cr_tensor *x, const cr_tensor *y)
{
    bool first;
    cr_tensor *gx = input_grad_first(n, i, &first);
    if (gx) grad_add(gx, first, x, y);
}

/* Backward code that writes raw rows needs a contiguous gradient; a view's
 * may be strided. This gives gx itself or a zeroed contiguous temporary (gone
 * after the backward), which contiguous_grad_done adds into gx. */
static inline cr_tensor *contiguous_grad(cr_tensor *gx)
{
    return cr_is_contiguous(gx) ? gx : cr_zeros(gx->dtype, gx->ndim, gx->shape);
}
static inline void contiguous_grad_done(cr_tensor *gx, cr_tensor *t)
{
    if (t != gx) cr_k_accumulate(gx, t, NULL);
}

/* x itself when contiguous, else a contiguous copy in the arena. */
static inline const cr_tensor *as_contiguous(const cr_tensor *x)
{
    return cr_is_contiguous(x) ? x : cr_contiguous_copy(x);
}

/* Name the op and both shapes when a and b cannot be combined (graph.c). */
void cr_check_float_pair(const char *op, const cr_tensor *a, const cr_tensor *b);
void cr_check_float(const char *op, const cr_tensor *a);
/* The node that made t on the current graph's current step, or NULL (a leaf,
 * a persistent tensor, a tensor of a cleared step or of another graph). */
const cr_node *cr_step_node(const cr_tensor *t);

#endif
