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

/* What an op's backward reads, besides the output's gradient (cr_op.saves).
 * At recording, the node notes the version of each such tensor; backward
 * refuses to run when one was written in place since (cr_tensor_bump_version).
 * An input that backward only needs the shape of (add, sum, views) is not
 * listed and may be overwritten, as in PyTorch. */
#define CR_SAVES_IN(i) (1u << (i)) /* input i's values (i < 8) */
#define CR_SAVES_OUT (1u << 8)     /* the output's values */
/* Products (mul, matmul, matmul_bias): input 0 is read only for the gradient
 * of input 1 and the other way round, so each is checked (and kept) only when
 * the other requires a gradient. */
#define CR_SAVES_CROSS (1u << 9)
/* Not a read: the output is a view of input 0 (shape and strides only), and
 * the same view of input 0's gradient is the output's gradient. forward must
 * fill n->out from n->in[0] and the attributes alone (it is run on the
 * gradient too), and backward has nothing to do when cr_grad_via_base(out). */
#define CR_OP_VIEW (1u << 10)

/* An op: the public function's name, its forward and backward, defined side
 * by side (autograd/ops_*.c). forward computes n->out from n->in and the
 * node's attributes; backward adds into the grads of the inputs that require
 * them. Messages name the op by `name`, so give the function users call. */
typedef struct cr_op {
    const char *name; /* "cr_add" */
    void (*forward)(cr_node *n);
    void (*backward)(cr_node *n);
    unsigned saves;   /* CR_SAVES_*, and CR_OP_VIEW for a view op */
    size_t attr_size; /* bytes of the op's attribute struct, 0 for none */
} cr_op;

/* A recorded op application. Its input list, the versions of what backward
 * reads and the op's attribute struct follow it in one arena block. */
struct cr_node {
    const cr_op *op;
    cr_tensor *out;
    cr_tensor **in;    /* n_in inputs */
    void *attr;        /* op->attr_size bytes, zeroed; read through CR_NODE_ATTR */
    cr_tensor *saved;  /* a tensor the forward made for backward (argmax, log-probabilities), or NULL */
    size_t tape_index; /* position on the tape (recorded nodes only) */
    int n_in;
    unsigned saves; /* op->saves as it applies to this node (CR_SAVES_CROSS resolved) */
};

/* The attribute struct of n's op, typed: an op declares
 *     typedef struct { int dim; bool keepdim; } reduce_attr;
 * with .attr_size = sizeof(reduce_attr) in its descriptor, and reads
 * CR_NODE_ATTR(n, reduce_attr)->dim. A size that does not match the
 * descriptor's is an error. */
#define CR_NODE_ATTR(n, type) ((type *)cr_node_attr_checked((n), sizeof(type)))
_Noreturn void cr_node_attr_mismatch(const cr_node *n, size_t size);
static inline void *cr_node_attr_checked(const cr_node *n, size_t size)
{
    if (size != n->op->attr_size) cr_node_attr_mismatch(n, size);
    return n->attr;
}

cr_graph *cr_graph_init(void);
void cr_graph_free(cr_graph *g);     /* NULL is a no-op */
cr_graph *cr_graph_use(cr_graph *g); /* make current (thread-local); returns previous */
cr_graph *cr_graph_current(void);
/* Release every tensor the graph made, keeping the memory for the next step. */
void cr_graph_clear(cr_graph *g);
size_t cr_graph_node_count(const cr_graph *g);
const cr_node *cr_graph_node(const cr_graph *g, size_t i);
/* Bytes the graph holds now: headers and nodes in its arena, plus the op
 * outputs' storage and the gradients alive in its pool. */
size_t cr_graph_bytes_used(const cr_graph *g);
size_t cr_graph_bytes_reserved(const cr_graph *g);
/* The most cr_graph_bytes_used has been since the graph was made (noted
 * whenever the pool hands out a block). */
size_t cr_graph_bytes_peak(const cr_graph *g);
/* Write the recorded tape as Graphviz DOT (op names, shapes). Returns 0, or -1
 * with errno set when the stream fails. */
int cr_graph_export_dot(const cr_graph *g, FILE *f);

/* ---- scopes: values no backward reads die with their scope ---------------- */

/* Op outputs keep their header in the graph's arena to the clear, but their
 * storage lives in the graph's pool. A scope ends the life of the storage
 * made inside it that no recorded backward reads (CR_SAVES_*), except what
 * the caller keeps: it returns to the pool, serves later tensors of the same
 * size, and the tensor (with its views) is marked released, so an op, an
 * element access, a fill or a copy that uses it is an error. Layers use
 * scopes so a step's intermediate values do not stay resident:
 *
 *     cr_scope s = cr_scope_begin();
 *     cr_tensor *h = step(x, h_prev);          // many intermediates
 *     cr_scope_end(s, 1, &h);                  // only h (and what backward reads) stays
 *
 * Keeping a tensor keeps its storage (all its views). Scopes nest and end
 * innermost first; cr_graph_clear closes any still open. Outside every scope
 * nothing is released before the clear. */
typedef struct cr_scope {
    size_t log_pos;
    uint64_t seq, gen;
    int depth;
} cr_scope;
cr_scope cr_scope_begin(void);
/* keep: n_keep tensors (NULL entries are skipped) */
void cr_scope_end(cr_scope s, int n_keep, cr_tensor *const *keep);

/* ---- recompute: segments whose values are rebuilt in backward ------------- */

/* A segment of the graph: out[0..n_out) from in[0..n_in). It may read
 * persistent tensors (parameters) and step tensors made before it; it draws
 * random numbers only from generators given to cr_recompute. */
typedef void (*cr_segment_fn)(cr_tensor *const *in, cr_tensor **out, void *ctx);
/* Runs fn(in, out, ctx) and keeps only its outputs: every value it made
 * inside is released at once. Backward runs it again (the generators in
 * rngs rewound to where they stood the first time, so dropout draws the same
 * masks), backpropagates through the rebuilt values and releases them, so
 * the gradients are those of the plain run, bit for bit, and memory holds one
 * segment's values at a time. ctx and what fn reads must stay valid and
 * unchanged until backward: a rebuilt output that differs from the first run
 * is an error, and so is an input written in place since. With grad mode off
 * this is fn inside a scope. Chaining segments of about sqrt(T) steps makes
 * the memory of a T-step sequence grow like sqrt(T) (bench/memory). */
void cr_recompute(cr_segment_fn fn, void *ctx, int n_in, cr_tensor *const *in, int n_out, cr_tensor **out,
                  int n_rng, cr_rng *const *rngs);

/* ---- gradient mode ------------------------------------------------------- */

void cr_requires_grad(cr_tensor *t, bool on); /* leaves (persistent tensors) */
bool cr_grad_enabled(void);
bool cr_set_grad_enabled(bool on); /* returns the previous mode (thread-local) */
/* Keep the gradient of an intermediate tensor after backward. */
void cr_retain_grad(cr_tensor *t);
/* A view of t that records no history: the gradient stops here. */
cr_tensor *cr_detach(cr_tensor *t);

/* ---- anomaly detection --------------------------------------------------- */

/* When on (thread-local, off by default), the first op whose forward output,
 * or whose backward gradient for an input, holds a NaN or an infinity raises
 * an error naming the op, its position on the tape, forward or backward, the
 * shapes and the ops that made its inputs. Every op output and gradient is
 * scanned, so this costs time (see ARCHITECTURE.md): a debugging aid.
 * Returns the previous setting. */
bool cr_set_detect_anomaly(bool on);
bool cr_detect_anomaly(void);

/* ---- backward ------------------------------------------------------------ */

/* loss must be a one-element tensor; seeds d loss = 1. */
void cr_backward(cr_tensor *loss);
/* Seeds d out = grad (same shape as out). */
void cr_backward_with(cr_tensor *out, const cr_tensor *grad);
/* Zero (keep allocated) the gradient of a leaf. */
void cr_zero_grad(cr_tensor *t);
/* The rows of a persistent leaf's gradient that may be nonzero, *n of them,
 * each once; every other row is exactly +0. Known for a table whose gradient
 * since its last cr_zero_grad came only from cr_gather_rows (embedding
 * lookups), else NULL (any row may be nonzero). A write through ->data that
 * is not followed by cr_tensor_bump_version is not seen: bump after one. */
const int32_t *cr_grad_rows(const cr_tensor *t, int64_t *n);

/* ---- the op table ---------------------------------------------------------- */

/* Every op the library defines, for tests and tools (autograd/op_table.c). */
const cr_op *const *cr_op_table(size_t *count);
const cr_op *cr_op_find(const char *name); /* by public name: "cr_tanh" */

/* Building blocks for new ops: create a node for `op` with inputs, allocate
 * its output (dtype, shape) in the arena, run op->forward, and record it when
 * any input requires a gradient and grad mode is on. cr_node_new checks that
 * every input is a persistent tensor or a step tensor of the current graph's
 * current step (not one from before a cr_graph_clear, nor another graph's). */
cr_node *cr_node_new(const cr_op *op, int n_in, cr_tensor *const *in);
cr_tensor *cr_node_finish(cr_node *n, cr_dtype dt, int ndim, const int64_t *shape);
/* For views: the output is a header only, which op->forward fills to alias an input. */
cr_tensor *cr_node_finish_view(cr_node *n);
/* The gradient buffer of t, created zero-filled on first use (the graph's
 * pool for step tensors, the heap for persistent leaves). A step tensor's
 * gradient lives until its node's backward has run (to the clear when
 * retained or a leaf); a view's is the same view of its base's gradient. */
cr_tensor *cr_grad_of(cr_tensor *t);
/* For backward code (ops): t's gradient buffer; with `fresh` non-NULL, a new
 * buffer is not zero-filled and *fresh says so: the caller then writes every
 * element (cr_k_assign, cr_k_unary_backward_assign, a product with beta 0)
 * instead of adding. With fresh NULL this is cr_grad_of. */
cr_tensor *cr_grad_buffer(cr_tensor *t, bool *fresh);
/* t's gradient is a view of its base's (a view op's output): the op's backward
 * has nothing to add. */
bool cr_grad_via_base(const cr_tensor *t);
/* Hand n's output gradient to input i without copying, when input i needs a
 * gradient and has none, is a step tensor of the output's shape and dtype,
 * and no other tensor uses the output's gradient (add's backward: dx = dy).
 * cr_grad_movable says whether it would; call cr_grad_move after every other
 * read of the output gradient. */
bool cr_grad_movable(const cr_node *n, int i);
bool cr_grad_move(cr_node *n, int i);
/* Make `view`, a header over part of of->grad, t's gradient without copying
 * (stack's backward: input i's gradient is slice i of the output's), under
 * the same conditions; false when it cannot. */
bool cr_grad_share(cr_tensor *t, const cr_tensor *of, const cr_tensor *view);
/* Errors for an input: NULL, stale (another step or graph) or released. */
void cr_check_input(const char *fn, int i, const cr_tensor *t);

/* Per-thread gradient buffers of persistent leaves, for data-parallel
 * replicas (optim/parallel.c): while a hook is set on a thread, the gradient
 * of a persistent leaf t that backward adds into is fn(ctx, t), not t->grad,
 * so threads sharing the weights accumulate into buffers of their own. fn
 * never returns NULL (it reports a leaf it does not know as misuse). A
 * NULL fn ends it. Thread-local. */
typedef cr_tensor *(*cr_grad_hook)(void *ctx, const cr_tensor *leaf);
void cr_set_grad_hook(cr_grad_hook fn, void *ctx);

/* ---- ops: arithmetic (NumPy broadcasting) ---------------------------------- */

cr_tensor *cr_add(cr_tensor *a, cr_tensor *b);     /* a + b */
cr_tensor *cr_sub(cr_tensor *a, cr_tensor *b);     /* a - b */
cr_tensor *cr_mul(cr_tensor *a, cr_tensor *b);     /* a * b */
cr_tensor *cr_div(cr_tensor *a, cr_tensor *b);     /* a / b */
cr_tensor *cr_maximum(cr_tensor *a, cr_tensor *b); /* max(a, b), ties send grad to a */
cr_tensor *cr_minimum(cr_tensor *a, cr_tensor *b); /* min(a, b), ties send grad to a */

/* ---- ops: elementwise functions -------------------------------------------- */

/* One prototype per line of tensor/unary_ops.h, which gives each op's
 * parameters and math: cr_<name>(cr_tensor *x, <params as double>), e.g.
 * cr_tanh(x), cr_leaky_relu(x, slope), cr_rsub_scalar(x, c) = c - x,
 * cr_clamp(x, lo, hi). The natural log is cr_ln (cr_log is Criterion's). */
#define CR_UNARY_PROTO_(name, KIND, np, params, reads, fwd, deriv, valid)                                    \
    cr_tensor *cr_##name(cr_tensor *x CR_UNARY_PARAMS_##np params);
CR_UNARY_OPS(CR_UNARY_PROTO_)
#undef CR_UNARY_PROTO_

/* ---- ops: reductions and normalisers ---------------------------------------- */

cr_tensor *cr_sum(cr_tensor *x);  /* all elements -> [] */
cr_tensor *cr_mean(cr_tensor *x); /* all elements -> [] */
cr_tensor *cr_sum_dim(cr_tensor *x, int dim, bool keepdim);
cr_tensor *cr_mean_dim(cr_tensor *x, int dim, bool keepdim);
cr_tensor *cr_max_dim(cr_tensor *x, int dim, bool keepdim); /* grad to the argmax */
cr_tensor *cr_argmax(cr_tensor *x, int dim, bool keepdim);  /* i32, no grad */
cr_tensor *cr_softmax(cr_tensor *x, int dim);
cr_tensor *cr_log_softmax(cr_tensor *x, int dim);

/* ---- ops: linear algebra ------------------------------------------------------ */

/* [M,K]x[K,N] -> [M,N]; [B,M,K]x[B,K,N] -> [B,M,N]; [B,M,K]x[K,N] -> [B,M,N]. */
cr_tensor *cr_matmul(cr_tensor *a, cr_tensor *b);
/* a b + bias, bias broadcast to the product's shape (a bias row [N]): the
 * values of cr_add(cr_matmul(a, b), bias), bit for bit, in one buffer instead
 * of two (a linear layer, a hoisted input projection). */
cr_tensor *cr_matmul_bias(cr_tensor *a, cr_tensor *b, cr_tensor *bias);
/* W^T ([N,K] -> [K,N]) for a weight multiplied at many time steps (a
 * recurrent h W^T): when recorded (W requires a gradient), a view of W that
 * is packed once for the micro-kernel; else a contiguous copy. A product
 * cr_matmul(h, wt) reads that pack, takes dh = dy W from W itself, and, with
 * rows > 0, stacks its (h, dy) rows instead of adding h^T dy per product:
 * dW += dy^T h is one product per `rows` stacked rows (and one for the rest
 * in this op's backward). Other uses of wt (a narrowed block) reach W's
 * gradient through the view. rows 0: no stack. */
cr_tensor *cr_weight_t(cr_tensor *w, int64_t rows);
/* Fused recurrent gates (a cell's pointwise step after its recurrent product,
 * one op with its own backward). LSTM, gates i f g o as nn.LSTM:
 * z = gx + gh ([B,4H] each, e.g. the step's input projection and h W_hh^T),
 * c [B,H]; i,f,o = sigmoid(z_i,f,o), g = tanh(z_g), c' = f c + i g,
 * h' = o tanh(c'). Returns [2,B,H]: select(y, 0, 0) is h', select(y, 0, 1) c'. */
cr_tensor *cr_lstm_gates(cr_tensor *gx, cr_tensor *gh, cr_tensor *c);
/* GRU, gates r z n as nn.GRU: gx, gh [B,3H] (gh = h W_hh^T + b_hh), h [B,H];
 * r,z = sigmoid(gx_r,z + gh_r,z), n = tanh(gx_n + r gh_n), h' = n + z (h - n). */
cr_tensor *cr_gru_gates(cr_tensor *gx, cr_tensor *gh, cr_tensor *h);

/* ---- ops: views and shape ------------------------------------------------------ */

cr_tensor *cr_reshape(cr_tensor *x, int ndim, const int64_t *shape); /* one dim may be -1 */
cr_tensor *cr_transpose(cr_tensor *x, int d0, int d1);
cr_tensor *cr_permute(cr_tensor *x, const int *perm);
cr_tensor *cr_narrow(cr_tensor *x, int dim, int64_t start, int64_t len);
cr_tensor *cr_select(cr_tensor *x, int dim, int64_t index); /* drops dim */
cr_tensor *cr_expand(cr_tensor *x, int ndim, const int64_t *shape);
cr_tensor *cr_unsqueeze(cr_tensor *x, int dim); /* a size-1 dim inserted at dim */
cr_tensor *cr_contiguous(cr_tensor *x);         /* x itself when already contiguous */
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
/* When x is, unchanged, what cr_gather_rows made on the current step from a
 * 2-D table without a skip_index (a plain embedding lookup), and neither the
 * table nor the indices were written since: true, with the (contiguous) table
 * and the indices. A product x W then equals gather_rows(table W, idx), which
 * costs less when the table has fewer rows than idx has entries (nn/cell.c). */
bool cr_gather_rows_source(const cr_tensor *x, cr_tensor **table, const cr_tensor **idx);
/* where(cond, x, y) with broadcasting; cond is any dtype, nonzero = true. */
cr_tensor *cr_where(const cr_tensor *cond, cr_tensor *x, cr_tensor *y);
/* x * mask (mask broadcast, no gradient to mask). */
cr_tensor *cr_mask(cr_tensor *x, const cr_tensor *mask);
/* Inverted dropout with probability p; identity when !train or p == 0. */
cr_tensor *cr_dropout(cr_tensor *x, double p, bool train, cr_rng *rng);

/* ---- ops: convolutions and pooling ---------------------------------------------- */

/* PyTorch's layout and arithmetic: x [N, C, L] (1-D) or [N, C, H, W] (2-D),
 * weight [O, C/groups, K] or [O, C/groups, KH, KW], bias [O] or NULL; output
 * [N, O, L'] or [N, O, H', W'] with H' = (H + 2 pad - dil (KH-1) - 1)/stride + 1.
 * A zero in the options means the default: stride 1, dilation 1, groups 1,
 * padding 0, so (cr_conv2d_opts){.padding = {2, 2}} reads as in PyTorch.
 * Lowered to products (im2col + gemm); see ARCHITECTURE.md. */
typedef struct cr_conv1d_opts {
    int64_t stride, padding, dilation, groups;
} cr_conv1d_opts;
typedef struct cr_conv2d_opts {
    int64_t stride[2], padding[2], dilation[2]; /* {H, W} */
    int64_t groups;
} cr_conv2d_opts;
/* y[n,o,l] = b[o] + sum_{c in group(o), k} w[o,c,k] x[n,c, l*stride - pad + k*dil] (zero outside) */
cr_tensor *cr_conv1d(cr_tensor *x, cr_tensor *w, cr_tensor *b, cr_conv1d_opts o);
/* the same over (h, w) */
cr_tensor *cr_conv2d(cr_tensor *x, cr_tensor *w, cr_tensor *b, cr_conv2d_opts o);
/* Samples are lowered in blocks whose columns (im2col) take at most
 * cr_conv_block_bytes (at least one sample; blocks run in parallel, one
 * thread each); a 1x1 convolution whose one sample fills a block multiplies
 * the input directly. The forward keeps a whole batch's columns for the
 * weight gradient when they take at most cr_conv_keep_bytes (else backward
 * builds them again). Results do not depend on either beyond rounding, nor on
 * the thread count at all (tests vary them; bench/conv measured the defaults). */
extern int64_t cr_conv_block_bytes;
extern int64_t cr_conv_keep_bytes;
/* Groups with at most cr_conv_direct_channels output channels, stride 1
 * along W, compute the output and the weight gradient with direct kernels
 * instead, and with stride 1 both ways (padding at most the dilated kernel's
 * reach) the input gradient too. Default -1: every group on a CPU with
 * AVX-512, at most 8 channels elsewhere; 0 turns them off. */
extern int64_t cr_conv_direct_channels;
/* Groups with at least cr_conv_winograd_channels input and output channels,
 * a 3x3 kernel, stride 1, dilation 1 and padding at most 2 compute the
 * output and both gradients by Winograd F(2x2, 3x3) instead (the same
 * numbers to rounding, on any thread count). Default -1: 32 on a CPU with
 * AVX-512, never elsewhere; INT64_MAX turns it off. */
extern int64_t cr_conv_winograd_channels;

/* Pooling over the last dim (1-D: x [N, C, L] or [C, L]) or the last two
 * (2-D: [N, C, H, W] or [C, H, W]); stride 0 means the kernel (PyTorch's
 * default), padding at most half the kernel, no ceil mode. */
typedef struct cr_pool1d_opts {
    int64_t kernel, stride, padding;
} cr_pool1d_opts;
typedef struct cr_pool2d_opts {
    int64_t kernel[2], stride[2], padding[2]; /* {H, W} */
} cr_pool2d_opts;
/* max over each window (padding -inf); the gradient goes to the first maximum */
cr_tensor *cr_max_pool1d(cr_tensor *x, cr_pool1d_opts o);
cr_tensor *cr_max_pool2d(cr_tensor *x, cr_pool2d_opts o);
/* sum over each window / (kernel size), padding counted as zeros (count_include_pad) */
cr_tensor *cr_avg_pool1d(cr_tensor *x, cr_pool1d_opts o);
cr_tensor *cr_avg_pool2d(cr_tensor *x, cr_pool2d_opts o);

/* ---- ops: losses ---------------------------------------------------------------- */

typedef enum cr_reduction { CR_MEAN, CR_SUM } cr_reduction;
/* Fused cross-entropy with logits [N, C] (or [C]) and class indices (i32 [N]);
 * targets equal to ignore_index count for nothing; CR_MEAN divides by the
 * number of counted targets. */
cr_tensor *cr_cross_entropy(cr_tensor *logits, const cr_tensor *target, int64_t ignore_index,
                            cr_reduction red);

/* ---- gradcheck ------------------------------------------------------------------- */

/* f builds an output from inputs (all f64, persistent, requires_grad; other
 * inputs are refused: finite differences in f32 measure rounding). */
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
