/* Broadcasting arithmetic: add, sub, mul, div, maximum, minimum. Each op's
 * forward and backward sit together; backward adds into input gradients and
 * sums broadcast dimensions back to each input's shape (the unary functions
 * are in ops_unary.c). */
#include "ops_internal.h"

/* ---- binary, with NumPy broadcasting ---------------------------------------- */

static cr_tensor *binary_new(const cr_op *op, cr_tensor *a, cr_tensor *b)
{
    char s1[128], s2[128];
    cr_check_float_pair(op->name, a, b);
    int nd;
    int64_t shape[CR_MAX_DIMS];
    if (!cr_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape))
        cr_error("%s: shapes %s and %s do not broadcast", op->name,
                 cr_shape_str(s1, sizeof s1, a->ndim, a->shape),
                 cr_shape_str(s2, sizeof s2, b->ndim, b->shape));
    cr_tensor *in[2] = {a, b};
    return cr_node_finish(cr_node_new(op, 2, in), a->dtype, nd, shape);
}

/* out-shaped temporary: op(x, y) */
static cr_tensor *tmp_binary(cr_binary_kind k, const cr_tensor *shape_of, const cr_tensor *x,
                             const cr_tensor *y)
{
    cr_tensor *t = cr_tensor_new(shape_of->dtype, shape_of->ndim, shape_of->shape);
    cr_k_binary(k, t, x, y);
    return t;
}

static void add_fwd(cr_node *n) { cr_k_binary(CR_B_ADD, n->out, n->in[0], n->in[1]); }
static void add_bwd(cr_node *n)
{
    /* da += dy, db += dy; an input with no gradient yet may take dy itself
     * (after the other has read it) */
    cr_tensor *gy = n->out->grad;
    int mv = cr_grad_movable(n, 1) ? 1 : cr_grad_movable(n, 0) ? 0 : -1;
    for (int i = 0; i < 2; i++)
        if (i != mv) input_grad_add(n, i, gy, NULL);
    if (mv >= 0 && !cr_grad_move(n, mv)) input_grad_add(n, mv, gy, NULL);
}
const cr_op cr_op_add = {"cr_add", add_fwd, add_bwd, 0, 0};
cr_tensor *cr_add(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_add, a, b); }

static void sub_fwd(cr_node *n) { cr_k_binary(CR_B_SUB, n->out, n->in[0], n->in[1]); }
static void sub_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad;
    bool mv = cr_grad_movable(n, 0);
    if (n->in[1]->requires_grad) input_grad_add(n, 1, gy, cr_scalar(gy->dtype, -1.0)); /* db -= dy */
    if (!mv || !cr_grad_move(n, 0)) input_grad_add(n, 0, gy, NULL);                    /* da += dy */
}
const cr_op cr_op_sub = {"cr_sub", sub_fwd, sub_bwd, 0, 0};
cr_tensor *cr_sub(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_sub, a, b); }

static void mul_fwd(cr_node *n) { cr_k_binary(CR_B_MUL, n->out, n->in[0], n->in[1]); }
static void mul_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad;
    input_grad_add(n, 0, gy, n->in[1]); /* da += dy * b */
    input_grad_add(n, 1, gy, n->in[0]); /* db += dy * a */
}
const cr_op cr_op_mul = {"cr_mul", mul_fwd, mul_bwd, CR_SAVES_IN(0) | CR_SAVES_IN(1) | CR_SAVES_CROSS, 0};
cr_tensor *cr_mul(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_mul, a, b); }

static void div_fwd(cr_node *n) { cr_k_binary(CR_B_DIV, n->out, n->in[0], n->in[1]); }
static void div_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad, *y = n->out, *b = n->in[1];
    if (n->in[0]->requires_grad)
        input_grad_add(n, 0, tmp_binary(CR_B_DIV, y, gy, b), NULL); /* da += dy / b */
    if (n->in[1]->requires_grad) {                                  /* db -= dy * y / b */
        cr_tensor *t = tmp_binary(CR_B_DIV, y, y, b);
        input_grad_add(n, 1, tmp_binary(CR_B_MUL, y, gy, t), cr_scalar(y->dtype, -1.0));
    }
}
const cr_op cr_op_div = {"cr_div", div_fwd, div_bwd, CR_SAVES_IN(1) | CR_SAVES_OUT, 0};
cr_tensor *cr_div(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_div, a, b); }

/* max/min: the gradient goes to the chosen input; ties go to a */
static void extremum_bwd(cr_node *n, cr_binary_kind to_a, cr_binary_kind to_b)
{
    cr_tensor *gy = n->out->grad, *a = n->in[0], *b = n->in[1];
    if (a->requires_grad) input_grad_add(n, 0, gy, tmp_binary(to_a, gy, a, b));
    if (b->requires_grad) input_grad_add(n, 1, gy, tmp_binary(to_b, gy, a, b));
}
static void maximum_fwd(cr_node *n) { cr_k_binary(CR_B_MAX, n->out, n->in[0], n->in[1]); }
static void maximum_bwd(cr_node *n) { extremum_bwd(n, CR_B_GE, CR_B_LT); }
const cr_op cr_op_maximum = {"cr_maximum", maximum_fwd, maximum_bwd, CR_SAVES_IN(0) | CR_SAVES_IN(1), 0};
cr_tensor *cr_maximum(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_maximum, a, b); }

static void minimum_fwd(cr_node *n) { cr_k_binary(CR_B_MIN, n->out, n->in[0], n->in[1]); }
static void minimum_bwd(cr_node *n) { extremum_bwd(n, CR_B_LE, CR_B_GT); }
const cr_op cr_op_minimum = {"cr_minimum", minimum_fwd, minimum_bwd, CR_SAVES_IN(0) | CR_SAVES_IN(1), 0};
cr_tensor *cr_minimum(cr_tensor *a, cr_tensor *b) { return binary_new(&cr_op_minimum, a, b); }
