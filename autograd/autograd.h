/*
 * carousel autograd module: the graph (a tape in an arena), the op table, the
 * differentiable ops, backward, no-grad, detach, gradcheck and DOT export.
 *
 * Ten lines:
 *
 *     cr_graph *g = cr_graph_init();
 *     cr_graph_use(g);
 *     cr_tensor *w = cr_tensor_init(CR_F32, CR_SHAPE(3, 2));   // persistent
 *     cr_requires_grad(w, true);
 *     cr_tensor *x = cr_ones(CR_F32, CR_SHAPE(4, 3));           // per-step
 *     cr_tensor *loss = cr_sum(cr_tanh(cr_matmul(x, w)));
 *     cr_backward(loss);                                        // w->grad += dloss/dw
 *     cr_graph_clear(g);                                        // frees every step tensor
 *     cr_tensor_free(w);
 *     cr_graph_free(g);
 */
#ifndef CAROUSEL_AUTOGRAD_H
#define CAROUSEL_AUTOGRAD_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- graph ---------------------------------------------------------------- */

typedef struct cr_graph cr_graph;
typedef struct cr_node cr_node;

/* An op: its name, forward and backward, defined side by side (autograd/ops_*.c).
 * forward computes n->out from n->in and n->attr; backward adds into the grads
 * of the inputs that require them. */
typedef struct cr_op {
    const char *name;
    void (*forward)(cr_node *n);
    void (*backward)(cr_node *n);
} cr_op;

#define CR_NODE_ATTRS 8
struct cr_node {
    const cr_op *op;
    cr_tensor *out;
    cr_tensor **in; /* n_in inputs (arena) */
    int n_in;
    union {
        int64_t i[CR_NODE_ATTRS];
        double f[CR_NODE_ATTRS];
    } attr, attr2;   /* op parameters: ints in attr.i, reals in attr2.f */
    cr_tensor *saved; /* what backward needs beyond inputs/output (mask, argmax, ...) */
    size_t tape_index; /* position on the tape (recorded nodes only) */
};

cr_graph *cr_graph_init(void);
void cr_graph_free(cr_graph *g);           /* NULL is a no-op */
cr_graph *cr_graph_use(cr_graph *g);       /* make current (thread-local); returns previous */
cr_graph *cr_graph_current(void);
/* Release every tensor the graph made, keeping the memory for the next step. */
void cr_graph_clear(cr_graph *g);
size_t cr_graph_node_count(const cr_graph *g);
const cr_node *cr_graph_node(const cr_graph *g, size_t i);
size_t cr_graph_bytes_used(const cr_graph *g);
size_t cr_graph_bytes_reserved(const cr_graph *g);
/* Write the recorded tape as Graphviz DOT (op names, shapes). Returns 0, or -1
 * with errno set when the stream fails. */
int cr_graph_export_dot(const cr_graph *g, FILE *f);

/* ---- gradient mode ------------------------------------------------------- */

void cr_requires_grad(cr_tensor *t, bool on); /* leaves (persistent tensors) */
bool cr_grad_enabled(void);
bool cr_set_grad_enabled(bool on); /* returns the previous mode (thread-local) */
/* Keep the gradient of an intermediate tensor after backward. */
void cr_retain_grad(cr_tensor *t);
/* A view of t that records no history: the gradient stops here. */
cr_tensor *cr_detach(cr_tensor *t);

/* ---- backward ------------------------------------------------------------ */

/* loss must be a one-element tensor; seeds d loss = 1. */
void cr_backward(cr_tensor *loss);
/* Seeds d out = grad (same shape as out). */
void cr_backward_with(cr_tensor *out, const cr_tensor *grad);
/* Zero (keep allocated) the gradient of a leaf. */
void cr_zero_grad(cr_tensor *t);

/* ---- the op table ---------------------------------------------------------- */

/* Every op the library defines, for tests and tools. */
const cr_op *const *cr_op_table(size_t *count);
const cr_op *cr_op_find(const char *name);

/* Building blocks for new ops: create a node for `op` with inputs, allocate
 * its output (dtype, shape) in the arena, run op->forward, and record it when
 * any input requires a gradient and grad mode is on. */
cr_node *cr_node_new(const cr_op *op, int n_in, cr_tensor *const *in);
cr_tensor *cr_node_finish(cr_node *n, cr_dtype dt, int ndim, const int64_t *shape);
/* For views: the output is a header only, which op->forward fills to alias an input. */
cr_tensor *cr_node_finish_view(cr_node *n);
/* The gradient buffer of t, created zero-filled on first use (arena for step
 * tensors, heap for persistent leaves). */
cr_tensor *cr_grad_of(cr_tensor *t);

/* ---- ops: arithmetic (NumPy broadcasting) ---------------------------------- */

cr_tensor *cr_add(cr_tensor *a, cr_tensor *b); /* a + b */
cr_tensor *cr_sub(cr_tensor *a, cr_tensor *b); /* a - b */
cr_tensor *cr_mul(cr_tensor *a, cr_tensor *b); /* a * b */
cr_tensor *cr_div(cr_tensor *a, cr_tensor *b); /* a / b */
cr_tensor *cr_maximum(cr_tensor *a, cr_tensor *b); /* max(a, b), ties send grad to a */
cr_tensor *cr_minimum(cr_tensor *a, cr_tensor *b); /* min(a, b), ties send grad to a */
cr_tensor *cr_add_scalar(cr_tensor *x, double c);  /* x + c */
cr_tensor *cr_mul_scalar(cr_tensor *x, double c);  /* c * x */
cr_tensor *cr_pow(cr_tensor *x, double p);         /* x^p */
cr_tensor *cr_neg(cr_tensor *x);                   /* -x */

/* ---- ops: elementwise functions -------------------------------------------- */

cr_tensor *cr_exp(cr_tensor *x);      /* e^x */
cr_tensor *cr_ln(cr_tensor *x);       /* natural log (cr_log is taken by Criterion) */
cr_tensor *cr_sqrt(cr_tensor *x);     /* sqrt(x) */
cr_tensor *cr_abs(cr_tensor *x);      /* |x| */
cr_tensor *cr_square(cr_tensor *x);   /* x^2 */
cr_tensor *cr_tanh(cr_tensor *x);     /* tanh(x) */
cr_tensor *cr_sigmoid(cr_tensor *x);  /* 1/(1+exp(-x)) */
cr_tensor *cr_relu(cr_tensor *x);     /* max(x, 0) */
cr_tensor *cr_leaky_relu(cr_tensor *x, double slope); /* x>0 ? x : slope*x */
cr_tensor *cr_elu(cr_tensor *x, double alpha);        /* x>0 ? x : alpha*(e^x-1) */
cr_tensor *cr_softplus(cr_tensor *x); /* log(1+e^x) */
cr_tensor *cr_hardtanh(cr_tensor *x); /* clamp(x, -1, 1) */
cr_tensor *cr_clamp(cr_tensor *x, double lo, double hi);

/* ---- ops: reductions and normalisers ---------------------------------------- */

cr_tensor *cr_sum(cr_tensor *x);                               /* all elements -> [] */
cr_tensor *cr_mean(cr_tensor *x);                              /* all elements -> [] */
cr_tensor *cr_sum_dim(cr_tensor *x, int dim, bool keepdim);
cr_tensor *cr_mean_dim(cr_tensor *x, int dim, bool keepdim);
cr_tensor *cr_max_dim(cr_tensor *x, int dim, bool keepdim);    /* grad to the argmax */
cr_tensor *cr_argmax(cr_tensor *x, int dim, bool keepdim);     /* i32, no grad */
cr_tensor *cr_softmax(cr_tensor *x, int dim);
cr_tensor *cr_log_softmax(cr_tensor *x, int dim);

/* ---- ops: linear algebra ------------------------------------------------------ */

/* [M,K]x[K,N] -> [M,N]; [B,M,K]x[B,K,N] -> [B,M,N]; [B,M,K]x[K,N] -> [B,M,N]. */
cr_tensor *cr_matmul(cr_tensor *a, cr_tensor *b);

/* ---- ops: views and shape ------------------------------------------------------ */

cr_tensor *cr_reshape(cr_tensor *x, int ndim, const int64_t *shape); /* one dim may be -1 */
cr_tensor *cr_transpose(cr_tensor *x, int d0, int d1);
cr_tensor *cr_permute(cr_tensor *x, const int *perm);
cr_tensor *cr_narrow(cr_tensor *x, int dim, int64_t start, int64_t len);
cr_tensor *cr_select(cr_tensor *x, int dim, int64_t index); /* drops dim */
cr_tensor *cr_expand(cr_tensor *x, int ndim, const int64_t *shape);
cr_tensor *cr_contiguous(cr_tensor *x); /* x itself when already contiguous */
cr_tensor *cr_concat(int n, cr_tensor *const *xs, int dim);
cr_tensor *cr_stack(int n, cr_tensor *const *xs, int dim);
/* Split dim into pieces of `size` (last may be smaller); writes up to max_out
 * views to out, returns the number of pieces. */
int cr_split(cr_tensor *x, int64_t size, int dim, cr_tensor **out, int max_out);
/* n equal pieces along dim (size must divide). */
void cr_chunk(cr_tensor *x, int n, int dim, cr_tensor **out);

/* ---- ops: indexing, masking, dropout ------------------------------------------- */

/* Rows of table [V, ...] picked by idx (i32, any shape) -> [idx..., ...];
 * backward scatter-adds into the rows. Rows equal to skip_index (unless < 0)
 * receive no gradient (embedding padding). */
cr_tensor *cr_gather_rows(cr_tensor *table, const cr_tensor *idx, int64_t skip_index);
/* where(cond, x, y) with broadcasting; cond is any dtype, nonzero = true. */
cr_tensor *cr_where(const cr_tensor *cond, cr_tensor *x, cr_tensor *y);
/* x * mask (mask broadcast, no gradient to mask). */
cr_tensor *cr_mask(cr_tensor *x, const cr_tensor *mask);
/* Inverted dropout with probability p; identity when !train or p == 0. */
cr_tensor *cr_dropout(cr_tensor *x, double p, bool train, cr_rng *rng);

/* ---- ops: losses ---------------------------------------------------------------- */

typedef enum cr_reduction { CR_MEAN, CR_SUM } cr_reduction;
/* Fused cross-entropy with logits [N, C] (or [C]) and class indices (i32 [N]);
 * targets equal to ignore_index count for nothing; CR_MEAN divides by the
 * number of counted targets. */
cr_tensor *cr_cross_entropy(cr_tensor *logits, const cr_tensor *target, int64_t ignore_index,
                            cr_reduction red);

/* ---- gradcheck ------------------------------------------------------------------- */

/* f builds an output from inputs (all f64, persistent, requires_grad). */
typedef cr_tensor *(*cr_gradcheck_fn)(cr_tensor *const *inputs, void *ctx);
typedef struct cr_gradcheck_report {
    double max_abs_err;
    double max_rel_err; /* |a-n| / max(|a|, |n|, 1e-3) */
    int worst_input;    /* where max_rel_err occurs */
    int64_t worst_index;
    double analytic, numeric; /* the two values there */
    int64_t n_checked;
} cr_gradcheck_report;
/* Central differences with step eps on every input element, against the
 * autograd gradient of sum(f(x) * r) for a fixed random r. Runs in a private
 * graph. Zeroes the inputs' gradients first and leaves the analytic gradient
 * in them. Returns the worst relative error. */
double cr_gradcheck(cr_gradcheck_fn f, void *ctx, int n_in, cr_tensor *const *inputs, double eps,
                    cr_gradcheck_report *report);

#ifdef __cplusplus
}
#endif
#endif
