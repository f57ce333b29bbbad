/* Internal to autograd/: the op descriptors (one per op, defined next to its
 * forward and backward in ops_*.c) and helpers shared by the op files. */
#ifndef CAROUSEL_OPS_INTERNAL_H
#define CAROUSEL_OPS_INTERNAL_H

#include "autograd.h"

#define CR_OP_LIST(X)                                                                      \
    X(add) X(sub) X(mul) X(div) X(maximum) X(minimum) X(neg) X(add_scalar) X(mul_scalar)   \
    X(pow) X(exp) X(ln) X(sqrt) X(abs) X(square) X(tanh) X(sigmoid) X(relu) X(leaky_relu)  \
    X(elu) X(softplus) X(hardtanh) X(clamp)                                                \
    X(sum) X(mean) X(sum_dim) X(mean_dim) X(max_dim) X(softmax) X(log_softmax)             \
    X(matmul) X(reshape) X(transpose) X(permute) X(narrow) X(select) X(expand)             \
    X(contiguous) X(concat) X(stack)                                                       \
    X(gather_rows) X(where) X(mask) X(dropout) X(cross_entropy)

#define CR_DECLARE_OP(name) extern const cr_op cr_op_##name;
CR_OP_LIST(CR_DECLARE_OP)
#undef CR_DECLARE_OP

/* The gradient buffer of input i, or NULL when it needs none. */
static inline cr_tensor *input_grad(cr_node *n, int i)
{
    cr_tensor *t = n->in[i];
    return t->requires_grad ? cr_grad_of(t) : NULL;
}

/* Name the op and both shapes when a and b cannot be combined. */
void cr_check_float_pair(const char *op, const cr_tensor *a, const cr_tensor *b);
void cr_check_float(const char *op, const cr_tensor *a);

#endif
