/* The unary elementwise ops, generated from tensor/unary_ops.h: for each line
 * a descriptor, its forward and backward (the kernels' loops for that kind)
 * and the public constructor, which checks the line's `valid` condition. */
#include "ops_internal.h"

/* The scalar parameters of an op with any, in the order of its line (b is 0
 * for one parameter); an op without parameters keeps no attributes. */
typedef struct {
    double a, b;
} unary_attr;

static unary_attr params_of(const cr_node *n, int np)
{
    return np ? *CR_NODE_ATTR(n, unary_attr) : (unary_attr){0, 0};
}

static cr_tensor *unary_new(const cr_op *op, int np, cr_tensor *x, double a, double b)
{
    cr_check_float(op->name, x);
    cr_node *n = cr_node_new(op, 1, &x);
    if (np) *CR_NODE_ATTR(n, unary_attr) = (unary_attr){a, b};
    return cr_node_finish(n, x->dtype, x->ndim, x->shape);
}

static void unary_fwd(cr_node *n, cr_unary_kind k, int np)
{
    unary_attr p = params_of(n, np);
    cr_k_unary(k, n->out, n->in[0], p.a, p.b);
}

static void unary_bwd(cr_node *n, cr_unary_kind k, int np)
{
    bool first;
    cr_tensor *gx = input_grad_first(n, 0, &first);
    if (!gx) return;
    unary_attr p = params_of(n, np);
    if (first) /* dx = dy * f'(x) */
        cr_k_unary_backward_assign(k, gx, n->out->grad, n->in[0], n->out, p.a, p.b);
    else /* dx += dy * f'(x) */
        cr_k_unary_backward(k, gx, n->out->grad, n->in[0], n->out, p.a, p.b);
}

/* What backward reads (the reads column) as CR_SAVES_* bits. */
#define UNARY_SAVES(reads) (((reads)&CR_RD_X ? CR_SAVES_IN(0) : 0u) | ((reads)&CR_RD_Y ? CR_SAVES_OUT : 0u))

/* "lo = %g, hi = %g" and the matching arguments, for a failed `valid`. */
#define UNARY_FMT_0() ""
#define UNARY_FMT_1(p) #p " = %g"
#define UNARY_FMT_2(p, q) #p " = %g, " #q " = %g"
#define UNARY_VALS_0()
#define UNARY_VALS_1(p) , p
#define UNARY_VALS_2(p, q) , p, q

#define UNARY_OP(name, KIND, np, params, reads, fwd, deriv, valid)                                           \
    static void name##_fwd(cr_node *n) { unary_fwd(n, CR_U_##KIND, np); }                                    \
    static void name##_bwd(cr_node *n) { unary_bwd(n, CR_U_##KIND, np); }                                    \
    const cr_op cr_op_##name = {"cr_" #name, name##_fwd, name##_bwd, UNARY_SAVES(reads),                     \
                                np ? sizeof(unary_attr) : 0};                                                \
    cr_tensor *cr_##name(cr_tensor *x CR_UNARY_PARAMS_##np params)                                           \
    {                                                                                                        \
        if (!(valid))                                                                                        \
            cr_error("cr_" #name ": needs " #valid ", got " UNARY_FMT_##np params UNARY_VALS_##np params);   \
        return unary_new(&cr_op_##name, np, x, CR_UNARY_ARGS_##np params);                                   \
    }
CR_UNARY_OPS(UNARY_OP)
#undef UNARY_OP
