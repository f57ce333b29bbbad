/* Elementwise ops: broadcasting arithmetic and the unary functions. Each op's
 * forward and backward sit together; backward adds into input gradients and
 * sums broadcast dimensions back to each input's shape. */
#include "ops_internal.h"

/* ---- binary, with NumPy broadcasting ---------------------------------------- */

static cr_tensor *binary_new(const cr_op *op, cr_tensor *a, cr_tensor *b)
{
    char s1[128], s2[128];
    cr_check_float_pair(op->name, a, b);
    int nd;
    int64_t shape[CR_MAX_DIMS];
    if (!cr_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape))
        cr_error("%s: shapes %s and %s do not broadcast", op->name, cr_shape_str(s1, sizeof s1, a->ndim, a->shape),
                 cr_shape_str(s2, sizeof s2, b->ndim, b->shape));
    cr_tensor *in[2] = {a, b};
    return cr_node_finish(cr_node_new(op, 2, in), a->dtype, nd, shape);
}

/* out-shaped temporary: op(x, y) */
static cr_tensor *tmp_binary(cr_binary_kind k, const cr_tensor *shape_of, const cr_tensor *x, const cr_tensor *y)
{
    cr_tensor *t = cr_tensor_new(shape_of->dtype, shape_of->ndim, shape_of->shape);
    cr_k_binary(k, t, x, y);
    return t;
}

static void add_fwd(cr_node *n) { cr_k_binary(CR_B_ADD, n->out, n->in[0], n->in[1]); }
static void add_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad, *ga = input_grad(n, 0), *gb = input_grad(n, 1);
    if (ga) cr_k_accumulate(ga, gy, NULL); /* da += dy */
    if (gb) cr_k_accumulate(gb, gy, NULL); /* db += dy */
}
const cr_op cr_op_add = {"add", add_fwd, add_bwd};
cr_tensor *cr_add(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_add, a, b); }

static void sub_fwd(cr_node *n) { cr_k_binary(CR_B_SUB, n->out, n->in[0], n->in[1]); }
static void sub_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad, *ga = input_grad(n, 0), *gb = input_grad(n, 1);
    if (ga) cr_k_accumulate(ga, gy, NULL);                                  /* da += dy */
    if (gb) cr_k_accumulate(gb, gy, cr_scalar(gy->dtype, -1.0));            /* db -= dy */
}
const cr_op cr_op_sub = {"sub", sub_fwd, sub_bwd};
cr_tensor *cr_sub(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_sub, a, b); }

static void mul_fwd(cr_node *n) { cr_k_binary(CR_B_MUL, n->out, n->in[0], n->in[1]); }
static void mul_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad, *ga = input_grad(n, 0), *gb = input_grad(n, 1);
    if (ga) cr_k_accumulate(ga, gy, n->in[1]); /* da += dy * b */
    if (gb) cr_k_accumulate(gb, gy, n->in[0]); /* db += dy * a */
}
const cr_op cr_op_mul = {"mul", mul_fwd, mul_bwd};
cr_tensor *cr_mul(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_mul, a, b); }

static void div_fwd(cr_node *n) { cr_k_binary(CR_B_DIV, n->out, n->in[0], n->in[1]); }
static void div_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad, *ga = input_grad(n, 0), *gb = input_grad(n, 1);
    cr_tensor *y = n->out, *b = n->in[1];
    if (ga) cr_k_accumulate(ga, tmp_binary(CR_B_DIV, y, gy, b), NULL); /* da += dy / b */
    if (gb) { /* db -= dy * y / b */
        cr_tensor *t = tmp_binary(CR_B_DIV, y, y, b);
        cr_k_accumulate(gb, tmp_binary(CR_B_MUL, y, gy, t), cr_scalar(y->dtype, -1.0));
    }
}
const cr_op cr_op_div = {"div", div_fwd, div_bwd};
cr_tensor *cr_div(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_div, a, b); }

/* max/min: the gradient goes to the chosen input; ties go to a */
static void extremum_bwd(cr_node *n, cr_binary_kind to_a, cr_binary_kind to_b)
{
    cr_tensor *gy = n->out->grad, *ga = input_grad(n, 0), *gb = input_grad(n, 1);
    cr_tensor *a = n->in[0], *b = n->in[1];
    if (ga) cr_k_accumulate(ga, gy, tmp_binary(to_a, gy, a, b));
    if (gb) cr_k_accumulate(gb, gy, tmp_binary(to_b, gy, a, b));
}
static void maximum_fwd(cr_node *n) { cr_k_binary(CR_B_MAX, n->out, n->in[0], n->in[1]); }
static void maximum_bwd(cr_node *n) { extremum_bwd(n, CR_B_GE, CR_B_LT); }
const cr_op cr_op_maximum = {"maximum", maximum_fwd, maximum_bwd};
cr_tensor *cr_maximum(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_maximum, a, b); }

static void minimum_fwd(cr_node *n) { cr_k_binary(CR_B_MIN, n->out, n->in[0], n->in[1]); }
static void minimum_bwd(cr_node *n) { extremum_bwd(n, CR_B_LE, CR_B_GT); }
const cr_op cr_op_minimum = {"minimum", minimum_fwd, minimum_bwd};
cr_tensor *cr_minimum(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_minimum, a, b); }

/* ---- unary ----------------------------------------------------------------------- */
/* Every unary op keeps its kind in attr.i[0] and its scalars in attr2.f[0..1];
 * the derivative of each kind lives in cr_k_unary_backward. */

static cr_tensor *unary_new(const cr_op *op, cr_unary_kind k, cr_tensor *x, double a, double b)
{
    cr_check_float(op->name, x);
    cr_node *n = cr_node_new(op, 1, &x);
    n->attr.i[0] = k;
    n->attr2.f[0] = a;
    n->attr2.f[1] = b;
    return cr_node_finish(n, x->dtype, x->ndim, x->shape);
}

static void unary_fwd(cr_node *n)
{
    cr_k_unary((cr_unary_kind)n->attr.i[0], n->out, n->in[0], n->attr2.f[0], n->attr2.f[1]);
}

static void unary_bwd(cr_node *n)
{
    cr_tensor *gx = input_grad(n, 0);
    if (gx) /* dx += dy * f'(x) */
        cr_k_unary_backward((cr_unary_kind)n->attr.i[0], gx, n->out->grad, n->in[0], n->out, n->attr2.f[0],
                            n->attr2.f[1]);
}

#define UNARY_OP(name, kind)                                                       \
    const cr_op cr_op_##name = {#name, unary_fwd, unary_bwd};                      \
    cr_tensor *cr_##name(cr_tensor *x) { return unary_new(&cr_op_##name, kind, x, 0, 0); }

UNARY_OP(neg, CR_U_NEG)           /* d/dx -x = -1 */
UNARY_OP(exp, CR_U_EXP)           /* d/dx e^x = e^x */
UNARY_OP(ln, CR_U_LOG)            /* d/dx ln x = 1/x */
UNARY_OP(sqrt, CR_U_SQRT)         /* d/dx sqrt x = 1/(2 sqrt x) */
UNARY_OP(abs, CR_U_ABS)           /* d/dx |x| = sign x (0 at 0) */
UNARY_OP(square, CR_U_SQUARE)     /* d/dx x^2 = 2x */
UNARY_OP(tanh, CR_U_TANH)         /* d/dx tanh x = 1 - tanh^2 x */
UNARY_OP(sigmoid, CR_U_SIGMOID)   /* d/dx s(x) = s(x)(1 - s(x)) */
UNARY_OP(relu, CR_U_RELU)         /* d/dx relu x = [x > 0] */
UNARY_OP(softplus, CR_U_SOFTPLUS) /* d/dx log(1+e^x) = s(x) */
UNARY_OP(hardtanh, CR_U_HARDTANH) /* d/dx = [-1 < x < 1] */

const cr_op cr_op_leaky_relu = {"leaky_relu", unary_fwd, unary_bwd};
cr_tensor *cr_leaky_relu(cr_tensor *x, double slope) { return unary_new(&cr_op_leaky_relu, CR_U_LEAKY_RELU, x, slope, 0); }

const cr_op cr_op_elu = {"elu", unary_fwd, unary_bwd};
cr_tensor *cr_elu(cr_tensor *x, double alpha) { return unary_new(&cr_op_elu, CR_U_ELU, x, alpha, 0); }

const cr_op cr_op_clamp = {"clamp", unary_fwd, unary_bwd};
cr_tensor *cr_clamp(cr_tensor *x, double lo, double hi)
{
    if (!(lo <= hi)) cr_error("cr_clamp: lo %g > hi %g", lo, hi);
    return unary_new(&cr_op_clamp, CR_U_CLAMP, x, lo, hi);
}

const cr_op cr_op_pow = {"pow", unary_fwd, unary_bwd};
cr_tensor *cr_pow(cr_tensor *x, double p) { return unary_new(&cr_op_pow, CR_U_POW, x, p, 0); }

const cr_op cr_op_add_scalar = {"add_scalar", unary_fwd, unary_bwd};
cr_tensor *cr_add_scalar(cr_tensor *x, double c) { return unary_new(&cr_op_add_scalar, CR_U_ADD_SCALAR, x, c, 0); }

const cr_op cr_op_mul_scalar = {"mul_scalar", unary_fwd, unary_bwd};
cr_tensor *cr_mul_scalar(cr_tensor *x, double c) { return unary_new(&cr_op_mul_scalar, CR_U_MUL_SCALAR, x, c, 0); }
