/*
 * carousel nn module: named parameter sets, initialisers, layers (Linear,
 * Embedding, LayerNorm), cell types (the built-in RNN/GRU/LSTM and user
 * cells, each a step built from autograd ops) and the sequence layer that
 * runs any of them, losses, and hand-derived reference BPTT.
 *
 * Parameter names follow PyTorch's layout with dots: "charlm.lstm.l0.w_ih"
 * is torch's weight_ih_l0, "...l0_reverse.b_hh" is bias_hh_l0_reverse.
 */
#ifndef CAROUSEL_NN_H
#define CAROUSEL_NN_H

#include "autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameter sets -------------------------------------------------------- */

typedef struct cr_param {
    char *name;       /* hierarchical, e.g. "charlm.lstm.l0.w_ih" */
    cr_tensor *value; /* persistent, requires_grad; value->grad is its gradient */
} cr_param;

typedef struct cr_params {
    cr_param *items;
    size_t n, cap;
} cr_params;

cr_params *cr_params_init(void);
void cr_params_free(cr_params *ps); /* frees every parameter tensor and its gradient */
/* Create a zero-filled persistent parameter that requires a gradient. The name
 * is prefix + "." + name (prefix may be NULL or ""). Duplicate names are an error. */
cr_tensor *cr_params_add(cr_params *ps, const char *prefix, const char *name, cr_dtype dt, int ndim,
                         const int64_t *shape);
cr_tensor *cr_params_get(const cr_params *ps, const char *name); /* NULL if absent */
size_t cr_params_numel(const cr_params *ps);                     /* scalars in all parameters */
size_t cr_params_bytes(const cr_params *ps);                     /* bytes of all parameter values */
void cr_params_zero_grad(cr_params *ps);
/* Convert every parameter to dtype dt (f32 or f64) in place: the same tensor
 * headers (so layers holding them keep working) with new storage, values
 * rounded or widened, gradients dropped. Layers read their dtype from their
 * weights, so e.g. a trained f32 model runs in f64 for a gradient check.
 * Call it between steps (no graph may hold views of the old storage) and
 * before creating an optimizer, whose moments keep the old dtype. */
void cr_params_convert(cr_params *ps, cr_dtype dt);
/* Print "name dtype shape numel" for every parameter and the totals. */
void cr_params_print(const cr_params *ps, FILE *f);

/* ---- initialisers (all seeded through the framework's RNG) ---------------- */

void cr_init_constant(cr_tensor *t, double value);
void cr_init_uniform(cr_tensor *t, cr_rng *r, double bound); /* U(-bound, bound) */
void cr_init_normal(cr_tensor *t, cr_rng *r, double std);    /* N(0, std^2) */
/* Fans of a 2-D weight [out, in]: fan_in = in, fan_out = out. */
void cr_init_xavier_uniform(cr_tensor *t, cr_rng *r, double gain); /* U(+-gain sqrt(6/(in+out))) */
void cr_init_kaiming_uniform(cr_tensor *t, cr_rng *r);             /* U(+-sqrt(6/in)), for relu */
/* Orthogonal rows or columns (whichever are fewer), times gain, via
 * Gram-Schmidt on a Gaussian matrix. With block_rows > 0 each block of
 * block_rows rows (a gate's recurrent matrix, [H, H]) is made orthogonal on
 * its own, so every gate's recurrent matrix has spectral radius gain. */
void cr_init_orthogonal(cr_tensor *t, cr_rng *r, double gain, int64_t block_rows);

/* ---- Linear, Embedding, LayerNorm (dropout is the op cr_dropout) ------------ */

typedef struct cr_linear {
    cr_tensor *weight; /* (O, I) */
    cr_tensor *bias;   /* (O), or NULL */
} cr_linear;
/* PyTorch's default init: weight and bias U(+-1/sqrt(I)). */
cr_linear cr_linear_init(cr_params *ps, const char *prefix, int64_t in, int64_t out, bool bias, cr_dtype dt,
                         cr_rng *rng);
cr_tensor *cr_linear_forward(const cr_linear *l, cr_tensor *x); /* x W^T + b, x [..., I] */

typedef struct cr_embedding {
    cr_tensor *weight;   /* (V, D) */
    int64_t padding_idx; /* row that gets no gradient, or -1 */
} cr_embedding;
/* Init N(0, 1) as PyTorch, with the padding row zeroed. */
cr_embedding cr_embedding_init(cr_params *ps, const char *prefix, int64_t vocab, int64_t dim,
                               int64_t padding_idx, cr_dtype dt, cr_rng *rng);
cr_tensor *cr_embedding_forward(const cr_embedding *e, const cr_tensor *idx); /* W[idx] */

typedef struct cr_layernorm {
    cr_tensor *weight, *bias; /* (D) each, init 1 and 0 */
    double eps;
} cr_layernorm;
cr_layernorm cr_layernorm_init(cr_params *ps, const char *prefix, int64_t dim, double eps, cr_dtype dt);
/* (x - mean) / sqrt(var + eps) * w + b over the last dim (biased variance) */
cr_tensor *cr_layernorm_forward(const cr_layernorm *ln, cr_tensor *x);

/* ---- cell types ------------------------------------------------------------------ */
/*
 * A recurrent cell is a type (cr_cell_type): a name, its state tensors, the
 * width G of its input projection, a table of the parameters it owns, and
 * its step written as a composition of autograd ops. Built-in and user cells
 * are the same kind of thing: a sequence layer (cr_rnn) runs any type over
 * many layers, both directions and variable lengths, and a user cell is its
 * table plus its step (examples/custom_cell.c):
 *
 *     // MGU: f = s(W_f x + U_f h + b_f)  n = tanh(W x + U (f*h) + b)  h' = (1-f)*h + f*n
 *     enum { W, UF, U, BIAS };
 *     static const cr_cell_param mgu_params[] = {
 *         {.name = "w_ih", .role = CR_PARAM_INPUT},                               // [W_f; W] (2H, I)
 *         {.name = "u_f", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}}, // (H, H)
 *         {.name = "u", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}},   // (H, H)
 *         {.name = "b", .role = CR_PARAM_INPUT_BIAS},                             // [b_f; b] (2H)
 *     };
 *     static void mgu_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx,
 *                          cr_tensor *const *s, cr_tensor **next)
 *     {
 *         int64_t H = c->hidden_size;
 *         cr_tensor *h = s[0];
 *         cr_tensor *f = cr_sigmoid(cr_add(cr_narrow(gx, 1, 0, H), cr_matmul(h, w[UF])));
 *         cr_tensor *n = cr_tanh(cr_add(cr_narrow(gx, 1, H, H), cr_matmul(cr_mul(f, h), w[U])));
 *         next[0] = cr_add(cr_mul(cr_rsub_scalar(f, 1), h), cr_mul(f, n));
 *     }
 *     const cr_cell_type mgu = {.name = "mgu", .n_states = 1, .proj = CR_H(2),
 *                               .params = mgu_params, .n_params = 4, .step = mgu_step};
 *
 * Sizes in the table are written in multiples of H (hidden size) and I (the
 * layer's input size): CR_H(3) is 3H, CR_I(1) is I, CR_N(5) is 5.
 */

#define CR_CELL_MAX_STATES 4
#define CR_CELL_MAX_PARAMS 16

typedef struct cr_dim {
    int64_t h, i, n; /* the size h*H + i*I + n */
} cr_dim;
#define CR_H(k)                                                                                              \
    {                                                                                                        \
        .h = (k)                                                                                             \
    }
#define CR_I(k)                                                                                              \
    {                                                                                                        \
        .i = (k)                                                                                             \
    }
#define CR_N(k)                                                                                              \
    {                                                                                                        \
        .n = (k)                                                                                             \
    }

/* How the sequence layer treats a parameter, and what the step sees of it. */
typedef enum cr_param_role {
    CR_PARAM_INPUT,      /* (G, I): the input projection x W^T of all steps at once, one
                          * product over B*T rows; the step sees its slice gx, not W */
    CR_PARAM_INPUT_BIAS, /* (G): added into that projection (b_ih, and a recurrent bias
                          * that is not gated: b_hh of RNN and LSTM); dropped by no_bias */
    CR_PARAM_WEIGHT,     /* any shape: the step sees it as it is */
    CR_PARAM_WEIGHT_T,   /* 2-D (out, in): the step sees W^T (in, out), made once per
                          * sequence, so s W^T copies nothing and its gradient is
                          * summed back once, not once per step */
    CR_PARAM_BIAS        /* any shape: as WEIGHT, but dropped by no_bias (the step sees NULL) */
} cr_param_role;

typedef enum cr_init_rule {
    CR_RULE_RECURRENT = 0, /* U(+-1/sqrt(H)): PyTorch's init of every RNN/GRU/LSTM tensor */
    CR_RULE_CONSTANT,      /* every element a */
    CR_RULE_UNIFORM,       /* U(a, b) */
    CR_RULE_ORTHOGONAL     /* 2-D: every block of H rows orthogonal, times gain a */
} cr_init_rule;

typedef struct cr_init {
    cr_init_rule rule;
    double a, b;
} cr_init;
/* The rules as initialisers of a table row's .init (the default is
 * CR_RULE_RECURRENT). */
#define CR_INIT_CONSTANT(v)                                                                                  \
    {                                                                                                        \
        .rule = CR_RULE_CONSTANT, .a = (v)                                                                   \
    }
#define CR_INIT_UNIFORM(lo, hi)                                                                              \
    {                                                                                                        \
        .rule = CR_RULE_UNIFORM, .a = (lo), .b = (hi)                                                        \
    }
#define CR_INIT_ORTHOGONAL(gain)                                                                             \
    {                                                                                                        \
        .rule = CR_RULE_ORTHOGONAL, .a = (gain)                                                              \
    }

/* One row of a cell's parameter table. The sequence layer creates it as
 * prefix.l{k}[_reverse].<name> for every layer k and direction. Write rows
 * with designated initialisers (the fields left out are zero, which
 * -Wmissing-field-initializers accepts only in that form):
 *     {.name = "w_hh", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(4), CR_H(1)}}
 *     {.name = "ln_g", .role = CR_PARAM_WEIGHT, .shape = {CR_H(1)}, .init = CR_INIT_CONSTANT(1)} */
typedef struct cr_cell_param {
    const char *name;
    cr_param_role role;
    cr_dim shape[2]; /* up to 2 dims, a zero dim ends the shape ({0} is a scalar);
                      * ignored for CR_PARAM_INPUT (G, I) and CR_PARAM_INPUT_BIAS (G) */
    cr_init init;    /* drawn in table order from the layer's RNG */
} cr_cell_param;

typedef struct cr_cell_type cr_cell_type;

/* One cell of a layer: its type, sizes and parameter tensors. */
typedef struct cr_cell {
    const cr_cell_type *type;
    int64_t input_size, hidden_size;  /* I, H */
    cr_tensor *p[CR_CELL_MAX_PARAMS]; /* table order; NULL for a bias under no_bias */
} cr_cell;

/* One time step. gx: the step's slice of the input projection (B, G), any
 * strides; s[k]: state k before the step (B, H); w[j]: parameter j of the
 * table (W^T for CR_PARAM_WEIGHT_T, NULL for CR_PARAM_INPUT and for a dropped
 * bias). Writes state k after the step to next[k], every k < n_states, each
 * (B, H) of the weights' dtype; next[0] is the step's output. The step must
 * not write into s or gx: it builds new tensors from ops. */
typedef void (*cr_cell_step_fn)(const cr_cell *cell, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                                cr_tensor **next);

typedef struct cr_cell_config cr_cell_config;
struct cr_cell_bptt; /* a hand-derived BPTT (nn/bptt.c), built-in cells only */

struct cr_cell_type {
    const char *name;            /* "lstm": in errors and reports */
    int n_states;                /* 1..CR_CELL_MAX_STATES, each (B, H); state 0 is the output */
    cr_dim proj;                 /* G, the width of the input projection: CR_H(4) for LSTM */
    const cr_cell_param *params; /* the table, in creation order */
    int n_params;                /* <= CR_CELL_MAX_PARAMS; exactly one CR_PARAM_INPUT */
    cr_cell_step_fn step;        /* the step as a composition of ops, its formula above it */
    /* Optional, NULL when absent: */
    cr_cell_step_fn fused_step; /* the same step through fused ops with their own backward,
                                 * same contract; the layer prefers it (cr_rnn.fused) */
    void (*init)(cr_cell *cell,
                 const cr_cell_config *cfg); /* after the table's initialisers:
                                              * options of the type (the LSTM's forget_bias). A type
                                              * without it rejects a nonzero forget_bias. */
    const struct cr_cell_bptt *bptt;         /* hand-derived BPTT for cr_bptt_* (built-ins) */
};

/* The built-in cells, with PyTorch's names, layouts and gate orders:
 *   rnn_tanh, rnn_relu  h' = act(W_ih x + b_ih + W_hh h + b_hh)
 *   gru                 PyTorch: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
 *   gru_original        Cho et al. 2014: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
 *   lstm                gates i, f, g, o; states h, c
 *   lstm_peephole       i, f also see w_ci*c, w_cf*c; o sees w_co*c' (diagonal)
 * Parameters w_ih (G, I), w_hh (G, H), b_ih (G), b_hh (G) (+ w_ci, w_cf, w_co (H)). */
extern const cr_cell_type cr_cell_rnn_tanh, cr_cell_rnn_relu, cr_cell_gru, cr_cell_gru_original, cr_cell_lstm,
    cr_cell_lstm_peephole;
/* The built-in type called name ("lstm", "gru_original", ...), or NULL. */
const cr_cell_type *cr_cell_builtin(const char *name);
/* All built-in types, in the order above; *n gets their count. */
const cr_cell_type *const *cr_cell_builtins(size_t *n);
/* G of a type for hidden size H and input size I. */
int64_t cr_cell_proj_width(const cr_cell_type *type, int64_t H, int64_t I);

/* One cell's options. forget_bias (LSTM) sets the f block of b_ih and zeroes
 * that of b_hh, so the forget gate starts at sigmoid(forget_bias). */
struct cr_cell_config {
    const cr_cell_type *cell;
    int64_t input_size, hidden_size;
    bool no_bias;       /* biases are on unless this is set */
    double forget_bias; /* types with an init hook (LSTM); 0 keeps PyTorch's init */
    cr_dtype dtype;
};
/* Parameters prefix.<name> for every row of the type's table. */
cr_cell cr_cell_init(cr_params *ps, const char *prefix, cr_cell_config cfg, cr_rng *rng);
/* The parameter called name (NULL: a bias dropped by no_bias); a name the
 * type's table lacks is an error. */
cr_tensor *cr_cell_get(const cr_cell *cell, const char *name);
/* One step on x (B, I): s[k] (B, H) -> next[k] for every state of the type
 * (through the fused step when the type has one). next may be s. */
void cr_cell_forward_states(const cr_cell *cell, cr_tensor *x, cr_tensor *const *s, cr_tensor **next);
/* The same for cells of one or two states: h, c -> *h_out, *c_out (c NULL
 * for one state, and *c_out, if given, gets NULL). */
void cr_cell_forward(const cr_cell *cell, cr_tensor *x, cr_tensor *h, cr_tensor *c, cr_tensor **h_out,
                     cr_tensor **c_out);

/* ---- sequence layers ------------------------------------------------------------- */

typedef struct cr_rnn_config {
    const cr_cell_type *cell; /* any cell type: &cr_cell_lstm, a user's type */
    int64_t input_size, hidden_size;
    int num_layers; /* >= 1 */
    bool bidirectional;
    double dropout; /* between layers, in training mode */
    bool no_bias;
    double forget_bias; /* LSTM */
    cr_dtype dtype;     /* of the parameters created; forward follows the weights' dtype */
    /* > 0: in training, run the time loop in segments of this many steps
     * through cr_recompute: a step's values are not kept but rebuilt in
     * backward, one segment at a time; the hoisted input projection, the
     * outputs and the states between segments stay. Gradients are the plain
     * run's, bit for bit. For memory that grows like sqrt(T) over a whole
     * model, wrap chunks of it (embedding, layer, head, loss) in cr_recompute
     * instead (bench/memory). 0: keep what backward reads (the default). */
    int recompute_steps;
} cr_rnn_config;

typedef struct cr_rnn {
    cr_rnn_config cfg;
    int dirs;       /* 1 or 2 */
    cr_cell *cells; /* [num_layers * dirs]: layer l direction d at l*dirs+d */
    bool train;     /* dropout on when true (default) */
    bool fused;     /* use the type's fused_step when it has one (default) */
    /* When x is an embedding lookup (cr_embedding_forward, no padding_idx)
     * of a table with at most half as many rows as x has tokens, the first
     * layer's input projection is taken over the table's rows and looked up
     * (cr_gather_rows_source): same values, a third of the products or less
     * for a character-level model. Default true; the gradients then sum in
     * another order (equal to rounding). */
    bool fold_lookup;
    cr_rng dropout_rng;
} cr_rnn;

/* Parameters prefix.l{k}.<name> and prefix.l{k}_reverse.<name> for every row
 * of the cell's table (torch's <name>_l{k}[_reverse] for the built-ins). */
cr_rnn *cr_rnn_init(cr_params *ps, const char *prefix, cr_rnn_config cfg, cr_rng *rng);
void cr_rnn_free(cr_rnn *m); /* the parameters stay in their set */

typedef struct cr_rnn_output {
    cr_tensor *y;   /* [B, T, dirs*H]: every step's top-layer output (0 at padding) */
    cr_tensor *h_n; /* [layers*dirs, B, H]: final states (at each sequence's end) = states[0] */
    cr_tensor *c_n; /* states[1] (the LSTM's cell state), NULL for a one-state cell */
    cr_tensor *states[CR_CELL_MAX_STATES]; /* final state k, [layers*dirs, B, H]; NULL past n_states */
} cr_rnn_output;

/* x [B, T, I] batch-first, of the weights' dtype. lengths: i32 [B] true
 * lengths (<= T, >= 1), or NULL when every sequence is T long; padded steps
 * never change outputs, final states or gradients (the layer masks every
 * state, not the cell). s0: n_s0 initial states, 0 (all zeros) or the type's
 * n_states, each [layers*dirs, B, H] or NULL (zeros). */
cr_rnn_output cr_rnn_forward_states(cr_rnn *m, cr_tensor *x, const cr_tensor *lengths, int n_s0,
                                    cr_tensor *const *s0);
/* The same with h0 = state 0 and c0 = state 1 (c0 NULL for one-state cells);
 * NULL is zeros. */
cr_rnn_output cr_rnn_forward(cr_rnn *m, cr_tensor *x, const cr_tensor *lengths, cr_tensor *h0, cr_tensor *c0);

/* ---- losses ------------------------------------------------------------------------ */

/* Cross-entropy with logits [N, C] and i32 targets [N]: see cr_cross_entropy. */
cr_tensor *cr_mse_loss(cr_tensor *pred, cr_tensor *target, cr_reduction red); /* mean (p-t)^2 */
/* softplus(x) - x t, the stable form of -t log s(x) - (1-t) log(1-s(x)) */
cr_tensor *cr_bce_with_logits(cr_tensor *logits, cr_tensor *target, cr_reduction red);

/* ---- hand-derived reference BPTT (nn/bptt.c) -------------------------------- */
/*
 * Forward and backward through time for one layer of a built-in cell, written
 * out by hand (no graph): the reference that autograd's cells are checked
 * against and timed beside. A cell type carries its hand BPTT (type->bptt);
 * the built-ins have one, user cells need none. Single layer, unidirectional,
 * batch-first, f32/f64. Weight layout is PyTorch's: w_ih (G, I), w_hh (G, H),
 * b_ih (G), b_hh (G) with G = H (RNN), 3H (GRU: blocks r, z, n), 4H (LSTM:
 * blocks i, f, g, o).
 */

/* A cell's weights (or, for backward, their gradient accumulators). The
 * peephole vectors (H) are used only by cr_cell_lstm_peephole, else NULL. */
typedef struct cr_bptt_weights {
    cr_tensor *w_ih, *w_hh, *b_ih, *b_hh; /* (G, I), (G, H), (G), (G); biases may be NULL (zero) */
    cr_tensor *w_ci, *w_cf, *w_co;        /* (H) each */
} cr_bptt_weights;

/* Looks up prefix.w_ih, prefix.w_hh, ... (and the peepholes when the type
 * has them) in ps; a missing one is an error, except the biases, which a
 * layer without biases lacks. */
cr_bptt_weights cr_bptt_weights_from(const cr_params *ps, const char *prefix, const cr_cell_type *type);
/* The same for a cell of a layer (cr_cell_init, cr_rnn's cells). */
cr_bptt_weights cr_bptt_weights_of(const cr_cell *cell);
/* The gradient tensors (cr_grad_of, created zero-filled if absent) of p's
 * weights, ready to pass as `g` to cr_bptt_backward. */
cr_bptt_weights cr_bptt_grads_of(const cr_bptt_weights *p);

/* Workspace for one (type, dtype, B, T, I, H): the forward caches (gate
 * activations, hidden and cell states) and backward scratch, allocated once
 * and reused by every call, so steady-state use makes no malloc call. The
 * type must have a hand BPTT (type->bptt). */
typedef struct cr_bptt cr_bptt;
cr_bptt *cr_bptt_init(const cr_cell_type *type, cr_dtype dt, int64_t B, int64_t T, int64_t I, int64_t H);
void cr_bptt_free(cr_bptt *w); /* NULL is a no-op */

/* Run the layer over x (B, T, I) from h0, c0 (B, H) (NULL: zeros; c0 only for
 * LSTM). Writes y (B, T, H) = every h_t, h_n (B, H) = h_T and, for LSTM,
 * c_n (B, H) = c_T; y, h_n, c_n may be NULL. Caches what backward needs. */
void cr_bptt_forward(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *x, const cr_tensor *h0,
                     const cr_tensor *c0, cr_tensor *y, cr_tensor *h_n, cr_tensor *c_n);
/* Backward of the last forward, given dL/dy (B, T, H), dL/dh_n and (LSTM)
 * dL/dc_n (B, H), each NULL for zero. ADDS the parameter gradients into g
 * (g or any field may be NULL to skip) and writes dx (B, T, I), dh0 and dc0
 * (B, H) when non-NULL. p must be the weights the forward used. */
void cr_bptt_backward(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *dy, const cr_tensor *dh_n,
                      const cr_tensor *dc_n, cr_bptt_weights *g, cr_tensor *dx, cr_tensor *dh0,
                      cr_tensor *dc0);

/* ---- comparing gradient sets (nn/gradcompare.c) ------------------------------ */
/*
 * Two gradients of one tensor (autograd against hand-derived BPTT, or either
 * against finite differences), element by element:
 *   abs error  |a - b|
 *   rel error  |a - b| / max(|a|, |b|, tiny)
 * tiny is the floor of the denominator: below it the error counts as
 * absolute, so values that are zero up to rounding do not report a relative
 * error of 1. Both zero is an error of 0; a NaN on either side is the worst.
 */
#define CR_GRAD_TINY 1e-300 /* the floor used when tiny <= 0: a pure relative error */

typedef struct cr_grad_diff {
    const char *name; /* borrowed from the caller's names (or the parameter set) */
    int ndim;
    int64_t shape[CR_MAX_DIMS];
    int64_t numel;
    double max_abs;      /* max |a - b| */
    double max_rel;      /* max |a - b| / max(|a|, |b|, tiny) */
    int64_t worst_index; /* row-major index of max_rel, -1 when numel is 0 */
    double a, b;         /* the two values there */
} cr_grad_diff;

/* Compare a[k] with b[k] for k < n into out[k]: f32 or f64, any strides,
 * dtypes may differ (an f32 gradient against an f64 reference); the shapes
 * must match, else an error naming names[k] (names may be NULL: "?"). A NULL
 * tensor counts as zeros of the other's shape. tiny <= 0 means CR_GRAD_TINY.
 * Returns the largest max_rel of all (NaN if any is NaN, 0 when n is 0). */
double cr_grad_compare(const char *const *names, const cr_tensor *const *a, const cr_tensor *const *b,
                       size_t n, double tiny, cr_grad_diff *out);
/* The same for every parameter of ps, in order: a = ps->items[k].value->grad
 * (NULL: no gradient reached it, zeros), b = b[k]; out has ps->n entries. */
double cr_grad_compare_params(const cr_params *ps, const cr_tensor *const *b, double tiny, cr_grad_diff *out);
/* A table, one row per tensor: name, numel, max_abs, max_rel, where max_rel
 * occurs (multi-index) and the two values there under the headings label_a,
 * label_b (NULL: "a", "b"). f NULL is stdout. */
void cr_grad_diff_print(FILE *f, const cr_grad_diff *d, size_t n, const char *label_a, const char *label_b);

/* ---- truncated BPTT: the carried state (nn/carry.c) ------------------------- */
/*
 * Train on a long stream in chunks of K steps. The hidden state is carried
 * across chunks in a persistent tensor that does not require a gradient, so
 * each chunk's graph starts from a constant and the gradient stops at the
 * chunk boundary. Carry after backward (which still reads the chunk's initial
 * state: dW_hh needs h_0) and before the clear (which frees the final state):
 *
 *     cr_backward(loss);
 *     if (cr_clip_grad_norm(ps, 1.0, NULL) == CR_OK) cr_optim_step(opt);
 *     cr_state_carry(h, out.h_n);   // and c for an LSTM
 *     cr_graph_clear(g);
 *
 * Carrying before backward would overwrite h_0 in place; the version check
 * makes that backward fail instead of computing a wrong gradient.
 */
/* dst = h by value (any strides/dtypes, same shape); dst must be persistent
 * and must not require a gradient. Bumps dst's version. */
void cr_state_carry(cr_tensor *dst, const cr_tensor *h); /* dst <- value(h), no history */

/* ---- convolution layers (nn/conv.c) ---------------------------------------- */
/*
 * Parameters prefix.weight [O, C/groups, K] (1-D) or [O, C/groups, KH, KW]
 * (2-D) and prefix.bias [O], PyTorch's names and layout, with PyTorch's
 * default init (kaiming_uniform with a = sqrt(5)): weight and bias
 * U(+-1/sqrt(fan_in)), fan_in = C/groups * kernel size. Zeros in the config
 * mean the defaults of cr_conv1d_opts / cr_conv2d_opts (stride 1, padding 0,
 * dilation 1, groups 1). To feed a recurrent layer, transpose the output
 * [B, O, T] to [B, T, O] (cr_transpose(y, 1, 2)).
 */
typedef struct cr_conv1d_config {
    int64_t in_channels, out_channels, kernel;
    int64_t stride, padding, dilation, groups;
    bool no_bias; /* a bias unless this is set */
    cr_dtype dtype;
} cr_conv1d_config;
typedef struct cr_conv1d_layer {
    cr_tensor *weight; /* (O, C/groups, K) */
    cr_tensor *bias;   /* (O), or NULL */
    cr_conv1d_opts opts;
} cr_conv1d_layer;
cr_conv1d_layer cr_conv1d_layer_init(cr_params *ps, const char *prefix, cr_conv1d_config cfg, cr_rng *rng);
cr_tensor *cr_conv1d_layer_forward(const cr_conv1d_layer *l, cr_tensor *x); /* [B, C, T] -> [B, O, T'] */

typedef struct cr_conv2d_config {
    int64_t in_channels, out_channels, kernel[2];
    int64_t stride[2], padding[2], dilation[2], groups;
    bool no_bias;
    cr_dtype dtype;
} cr_conv2d_config;
typedef struct cr_conv2d_layer {
    cr_tensor *weight; /* (O, C/groups, KH, KW) */
    cr_tensor *bias;   /* (O), or NULL */
    cr_conv2d_opts opts;
} cr_conv2d_layer;
cr_conv2d_layer cr_conv2d_layer_init(cr_params *ps, const char *prefix, cr_conv2d_config cfg, cr_rng *rng);
cr_tensor *cr_conv2d_layer_forward(const cr_conv2d_layer *l,
                                   cr_tensor *x); /* [B, C, H, W] -> [B, O, H', W'] */

/* ---- end of declarations ---- */

#ifdef __cplusplus
}
#endif
#endif
