/*
 * Hand-derived backpropagation through time for the built-in cells (vanilla
 * RNN, GRU in two formulations, LSTM with and without peepholes): the
 * reference that autograd is checked against and timed beside. No graph.
 * Each built-in cell type points at its hand BPTT (type->bptt): the cell's
 * forward and backward step, what it caches, and its own weight gradients;
 * this file holds the workspace and the drivers every cell shares.
 *
 * One layer, unidirectional, batch-first. Every cache is a batch-first
 * (B, T, *) buffer, so row (b, t) of each lines up with row (b, t) of x: the
 * input projection, dx, dW_ih and dW_hh are each one product over all B*T
 * rows, and only the recurrent products h_{t-1} W_hh^T (forward) and
 * dA_t W_hh (backward) run inside the time loop, on step slices whose rows are
 * T*width apart. The arithmetic is in bptt_impl.h, included once per dtype;
 * products go through the tensor module's cr_k_gemm.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

struct cr_bptt;

/* What one cell's hand BPTT adds to the shared drivers. */
struct cr_cell_bptt {
    bool cell_state;     /* LSTM: caches c_{t-1}, c_t, tanh(c_t) and carries dc */
    bool gru_hn;         /* PyTorch's GRU: caches W_hn h + b_hn, and dgh differs from dgx */
    bool gru_rh;         /* the original GRU: caches r h_{t-1} and d(r h) */
    int recurrent_gates; /* gate blocks of W_hh that multiply h_{t-1} itself */
    /* [0] f32, [1] f64: step t of the forward and of the backward (see
     * bptt_impl.h for what each reads and writes), and the cell's own weight
     * gradients after the shared ones (NULL: none). */
    void (*forward_step[2])(struct cr_bptt *w, const cr_bptt_weights *p, int64_t t);
    void (*backward_step[2])(struct cr_bptt *w, const cr_bptt_weights *p, int64_t t);
    void (*grads[2])(struct cr_bptt *w, const cr_bptt_weights *p, cr_bptt_weights *g);
};

struct cr_bptt {
    const cr_cell_type *type;
    const struct cr_cell_bptt *hand; /* type->bptt */
    cr_dtype dt;
    int64_t B, T, I, H, G;
    bool ran; /* a forward has filled the caches */
    /* Forward caches; row (b, t) belongs to batch row b, step t. */
    void *x;      /* (B, T, I) the input */
    void *gates;  /* (B, T, G) gate activations (RNN: h_t; GRU: r, z, n; LSTM: i, f, g, o) */
    void *hprev;  /* (B, T, H) h_{t-1}, the state step t read */
    void *hs;     /* (B, T, H) h_t */
    void *cprev;  /* (B, T, H) c_{t-1}, LSTM only */
    void *cs;     /* (B, T, H) c_t, LSTM only */
    void *tanh_c; /* (B, T, H) tanh(c_t), LSTM only */
    void *hn;     /* (B, T, H) W_hn h_{t-1} + b_hn, GRU (PyTorch) only */
    void *rh;     /* (B, T, H) r_t h_{t-1}, GRU (original) only */
    /* Scratch. */
    void *hp;     /* (B, G) h_{t-1} W_hh^T of one step */
    void *dgx;    /* (B, T, G) dL/d(input-side pre-activations): feeds dx, dW_ih, db_ih */
    void *dgh;    /* (B, T, G) dL/d(hidden-side pre-activations): feeds dh, dW_hh, db_hh.
                   * The same buffer as dgx except for PyTorch's GRU, whose n block
                   * differs (the hidden side is multiplied by r). */
    void *dh;     /* (B, H) dL/dh_t, carried from step t+1 to step t */
    void *dc;     /* (B, H) dL/dc_t, carried, LSTM only */
    void *drh;    /* (B, H) dL/d(r h_{t-1}), GRU (original) only */
    void *zero_g; /* (G) zeros: the bias of a layer without biases */
};

/* The per-row loops run on OpenMP threads only above the size where a
 * parallel region pays (tensor.h's CR_PAR_FOR, never an if() clause). */
#define PAR_FOR(COND, ...) CR_PAR_FOR(COND, "omp parallel for schedule(static)", __VA_ARGS__)

#define REAL float
#define FN(name) name##_f32
#define DT CR_F32
#define DTI 0
#define EXP expf
#define TANH tanhf
#include "bptt_impl.h"
#undef REAL
#undef FN
#undef DT
#undef DTI
#undef EXP
#undef TANH

#define REAL double
#define FN(name) name##_f64
#define DT CR_F64
#define DTI 1
#define EXP exp
#define TANH tanh
#include "bptt_impl.h"
#undef REAL
#undef FN
#undef DT
#undef DTI
#undef EXP
#undef TANH

/* ---- the hand BPTT of each built-in cell -------------------------------------- */

#define STEPS(fwd, bwd) .forward_step = {fwd##_f32, fwd##_f64}, .backward_step = {bwd##_f32, bwd##_f64}
const struct cr_cell_bptt cr_bptt_rnn_tanh = {.recurrent_gates = 1,
                                              STEPS(rnn_tanh_forward, rnn_tanh_backward)};
const struct cr_cell_bptt cr_bptt_rnn_relu = {.recurrent_gates = 1,
                                              STEPS(rnn_relu_forward, rnn_relu_backward)};
const struct cr_cell_bptt cr_bptt_gru = {
    .gru_hn = true, .recurrent_gates = 3, STEPS(gru_forward, gru_backward)};
const struct cr_cell_bptt cr_bptt_gru_original = {.gru_rh = true,
                                                  .recurrent_gates = 2,
                                                  STEPS(gru_original_forward, gru_original_backward),
                                                  .grads = {gru_original_grads_f32, gru_original_grads_f64}};
const struct cr_cell_bptt cr_bptt_lstm = {
    .cell_state = true, .recurrent_gates = 4, STEPS(lstm_forward, lstm_backward)};
const struct cr_cell_bptt cr_bptt_lstm_peephole = {.cell_state = true,
                                                   .recurrent_gates = 4,
                                                   STEPS(lstm_forward, lstm_backward),
                                                   .grads = {peephole_grads_f32, peephole_grads_f64}};

/* ---- workspace ------------------------------------------------------------- */

cr_bptt *cr_bptt_init(const cr_cell_type *type, cr_dtype dt, int64_t B, int64_t T, int64_t I, int64_t H)
{
    if (!type) cr_error("cr_bptt_init: cell type is NULL");
    if (!type->bptt) cr_error("cr_bptt_init: cell %s has no hand-derived BPTT", type->name);
    if (dt != CR_F32 && dt != CR_F64)
        cr_error("cr_bptt_init: dtype %s, expected f32 or f64", cr_dtype_name(dt));
    if (B < 1 || T < 1 || I < 1 || H < 1)
        cr_error("cr_bptt_init: sizes B=%lld T=%lld I=%lld H=%lld must be positive", (long long)B,
                 (long long)T, (long long)I, (long long)H);
    const struct cr_cell_bptt *hand = type->bptt;
    cr_bptt *w = cr_xcalloc(1, sizeof *w);
    const int64_t G = cr_cell_proj_width(type, H, I);
    const size_t es = cr_dtype_size(dt);
    const size_t bth = (size_t)(B * T * H) * es, btg = (size_t)(B * T * G) * es;
    *w = (cr_bptt){.type = type, .hand = hand, .dt = dt, .B = B, .T = T, .I = I, .H = H, .G = G};
    w->x = cr_xmalloc((size_t)(B * T * I) * es);
    w->gates = cr_xmalloc(btg);
    w->hprev = cr_xmalloc(bth);
    w->hs = cr_xmalloc(bth);
    w->hp = cr_xmalloc((size_t)(B * G) * es);
    w->dgx = cr_xmalloc(btg);
    w->dgh = hand->gru_hn ? cr_xmalloc(btg) : w->dgx;
    w->dh = cr_xmalloc((size_t)(B * H) * es);
    w->zero_g = cr_xcalloc((size_t)G, es);
    if (hand->cell_state) {
        w->cprev = cr_xmalloc(bth);
        w->cs = cr_xmalloc(bth);
        w->tanh_c = cr_xmalloc(bth);
        w->dc = cr_xmalloc((size_t)(B * H) * es);
    }
    if (hand->gru_hn) w->hn = cr_xmalloc(bth);
    if (hand->gru_rh) {
        w->rh = cr_xmalloc(bth);
        w->drh = cr_xmalloc((size_t)(B * H) * es);
    }
    return w;
}

void cr_bptt_free(cr_bptt *w)
{
    if (!w) return;
    if (w->dgh != w->dgx) free(w->dgh);
    void *bufs[] = {w->x,  w->gates, w->hprev, w->hs, w->cprev, w->cs,  w->tanh_c, w->hn,
                    w->rh, w->hp,    w->dgx,   w->dh, w->dc,    w->drh, w->zero_g};
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) free(bufs[k]);
    free(w);
}

/* ---- argument checks ---------------------------------------------------------- */

/* t must be a contiguous tensor of dtype dt and the given shape; NULL is
 * allowed when `optional`. Errors name the op, the argument and the layer. */
static void check_arg(const char *op, const cr_bptt *w, const char *what, const cr_tensor *t, bool optional,
                      int ndim, const int64_t *shape)
{
    char got[128], want[128];
    if (!t) {
        if (optional) return;
        cr_error("%s: %s is NULL (%s, B=%lld T=%lld I=%lld H=%lld)", op, what, w->type->name, (long long)w->B,
                 (long long)w->T, (long long)w->I, (long long)w->H);
    }
    bool ok = t->dtype == w->dt && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (!ok)
        cr_error("%s: %s is %s %s, expected %s %s (%s, B=%lld T=%lld I=%lld H=%lld)", op, what,
                 cr_shape_str(got, sizeof got, t->ndim, t->shape), cr_dtype_name(t->dtype),
                 cr_shape_str(want, sizeof want, ndim, shape), cr_dtype_name(w->dt), w->type->name,
                 (long long)w->B, (long long)w->T, (long long)w->I, (long long)w->H);
    if (!cr_is_contiguous(t))
        cr_error("%s: %s %s is not contiguous", op, what, cr_shape_str(got, sizeof got, t->ndim, t->shape));
}

/* The fields of cr_bptt_weights, by the names of the built-in tables. */
#define N_SLOTS 7
static const char *const slot_names[N_SLOTS] = {"w_ih", "w_hh", "b_ih", "b_hh", "w_ci", "w_cf", "w_co"};
static cr_tensor *const *slot_c(const cr_bptt_weights *p, int s)
{
    cr_tensor *const *f[N_SLOTS] = {&p->w_ih, &p->w_hh, &p->b_ih, &p->b_hh, &p->w_ci, &p->w_cf, &p->w_co};
    return f[s];
}

static bool has_param(const cr_cell_type *type, const char *name)
{
    for (int j = 0; j < type->n_params; j++)
        if (strcmp(type->params[j].name, name) == 0) return true;
    return false;
}

/* The weights (or gradients, when `optional`) of the cell. */
static void check_weights(const char *op, const cr_bptt *w, const char *set, const cr_bptt_weights *p,
                          bool optional)
{
    char name[64];
    const int64_t G = w->G, I = w->I, H = w->H;
    const int64_t shapes[N_SLOTS][2] = {{G, I}, {G, H}, {G, 0}, {G, 0}, {H, 0}, {H, 0}, {H, 0}};
    for (int s = 0; s < N_SLOTS; s++) {
        const cr_tensor *t = *slot_c(p, s);
        snprintf(name, sizeof name, "%s%s", set, slot_names[s]);
        if (!has_param(w->type, slot_names[s])) {
            if (t) cr_error("%s: %s given, but a %s cell has no such parameter", op, name, w->type->name);
            continue;
        }
        /* Biases may be absent (a layer without biases): they count as zeros. */
        const bool bias = slot_names[s][0] == 'b';
        check_arg(op, w, name, t, optional || bias, shapes[s][1] ? 2 : 1, shapes[s]);
    }
}

/* ---- forward and backward ------------------------------------------------------ */

void cr_bptt_forward(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *x, const cr_tensor *h0,
                     const cr_tensor *c0, cr_tensor *y, cr_tensor *h_n, cr_tensor *c_n)
{
    static const char op[] = "cr_bptt_forward";
    if (!w || !p) cr_error("%s: workspace or weights is NULL", op);
    const int64_t B = w->B, T = w->T, I = w->I, H = w->H;
    check_weights(op, w, "", p, false);
    check_arg(op, w, "x", x, false, 3, (int64_t[]){B, T, I});
    check_arg(op, w, "h0", h0, true, 2, (int64_t[]){B, H});
    check_arg(op, w, "y", y, true, 3, (int64_t[]){B, T, H});
    check_arg(op, w, "h_n", h_n, true, 2, (int64_t[]){B, H});
    if (w->hand->cell_state) {
        check_arg(op, w, "c0", c0, true, 2, (int64_t[]){B, H});
        check_arg(op, w, "c_n", c_n, true, 2, (int64_t[]){B, H});
    } else if (c0 || c_n) {
        cr_error("%s: c0/c_n given, but a %s cell has no cell state", op, w->type->name);
    }
    if (w->dt == CR_F32)
        forward_f32(w, p, x, h0, c0, y, h_n, c_n);
    else
        forward_f64(w, p, x, h0, c0, y, h_n, c_n);
    w->ran = true;
}

void cr_bptt_backward(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *dy, const cr_tensor *dh_n,
                      const cr_tensor *dc_n, cr_bptt_weights *g, cr_tensor *dx, cr_tensor *dh0,
                      cr_tensor *dc0)
{
    static const char op[] = "cr_bptt_backward";
    if (!w || !p) cr_error("%s: workspace or weights is NULL", op);
    if (!w->ran) cr_error("%s: no forward has run on this workspace", op);
    const int64_t B = w->B, T = w->T, I = w->I, H = w->H;
    check_weights(op, w, "", p, false);
    if (g) check_weights(op, w, "gradient ", g, true);
    check_arg(op, w, "dy", dy, true, 3, (int64_t[]){B, T, H});
    check_arg(op, w, "dh_n", dh_n, true, 2, (int64_t[]){B, H});
    check_arg(op, w, "dx", dx, true, 3, (int64_t[]){B, T, I});
    check_arg(op, w, "dh0", dh0, true, 2, (int64_t[]){B, H});
    if (w->hand->cell_state) {
        check_arg(op, w, "dc_n", dc_n, true, 2, (int64_t[]){B, H});
        check_arg(op, w, "dc0", dc0, true, 2, (int64_t[]){B, H});
    } else if (dc_n || dc0) {
        cr_error("%s: dc_n/dc0 given, but a %s cell has no cell state", op, w->type->name);
    }
    if (w->dt == CR_F32)
        backward_f32(w, p, dy, dh_n, dc_n, g, dx, dh0, dc0);
    else
        backward_f64(w, p, dy, dh_n, dc_n, g, dx, dh0, dc0);
}

/* ---- parameters by name ---------------------------------------------------------- */

static cr_tensor **slot(cr_bptt_weights *p, int s)
{
    cr_tensor **f[N_SLOTS] = {&p->w_ih, &p->w_hh, &p->b_ih, &p->b_hh, &p->w_ci, &p->w_cf, &p->w_co};
    return f[s];
}

cr_bptt_weights cr_bptt_weights_from(const cr_params *ps, const char *prefix, const cr_cell_type *type)
{
    if (!ps || !type) cr_error("cr_bptt_weights_from: parameter set or cell type is NULL");
    if (!type->bptt) cr_error("cr_bptt_weights_from: cell %s has no hand-derived BPTT", type->name);
    cr_bptt_weights p = {0};
    for (int s = 0; s < N_SLOTS; s++) {
        if (!has_param(type, slot_names[s])) continue;
        char full[256];
        if (prefix && prefix[0])
            snprintf(full, sizeof full, "%s.%s", prefix, slot_names[s]);
        else
            snprintf(full, sizeof full, "%s", slot_names[s]);
        cr_tensor *t = cr_params_get(ps, full);
        if (!t && slot_names[s][0] != 'b') /* biases are absent without biases */
            cr_error("cr_bptt_weights_from: no parameter \"%s\" (cell %s)", full, type->name);
        *slot(&p, s) = t;
    }
    return p;
}

cr_bptt_weights cr_bptt_weights_of(const cr_cell *cell)
{
    if (!cell->type->bptt) cr_error("cr_bptt_weights_of: cell %s has no hand-derived BPTT", cell->type->name);
    cr_bptt_weights p = {0};
    for (int s = 0; s < N_SLOTS; s++)
        if (has_param(cell->type, slot_names[s])) *slot(&p, s) = cr_cell_get(cell, slot_names[s]);
    return p;
}

cr_bptt_weights cr_bptt_grads_of(const cr_bptt_weights *p)
{
    cr_bptt_weights g = {0};
    if (!p) return g;
    for (int s = 0; s < N_SLOTS; s++) {
        cr_tensor *t = *slot_c(p, s);
        *slot(&g, s) = t ? cr_grad_of(t) : NULL;
    }
    return g;
}
