/*
 * Hand-derived backpropagation through time for the classic cells (vanilla
 * RNN, GRU in two formulations, LSTM with and without peepholes): the
 * reference that autograd is checked against and timed beside. No graph.
 *
 * One layer, unidirectional, batch-first. Every cache is a batch-first
 * (B, T, *) buffer, so row (b, t) of each lines up with row (b, t) of x: the
 * input projection, dx, dW_ih and dW_hh are each one product over all B*T
 * rows, and only the recurrent products h_{t-1} W_hh^T (forward) and
 * dA_t W_hh (backward) run inside the time loop, on step slices whose rows are
 * T*width apart. The arithmetic is in bptt_impl.h, included once per dtype.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blis.h"
#include "nn.h"

struct cr_bptt {
    cr_cell_kind kind;
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
    void *hp;  /* (B, G) h_{t-1} W_hh^T of one step */
    void *dgx; /* (B, T, G) dL/d(input-side pre-activations): feeds dx, dW_ih, db_ih */
    void *dgh; /* (B, T, G) dL/d(hidden-side pre-activations): feeds dh, dW_hh, db_hh.
                * The same buffer as dgx except for PyTorch's GRU, whose n block
                * differs (the hidden side is multiplied by r). */
    void *dh;  /* (B, H) dL/dh_t, carried from step t+1 to step t */
    void *dc;  /* (B, H) dL/dc_t, carried, LSTM only */
    void *drh; /* (B, H) dL/d(r h_{t-1}), GRU (original) only */
    void *zero_g; /* (G) zeros: the bias of a layer without biases */
};

#define REAL float
#define FN(name) name##_f32
#define GEMM bli_sgemm
#define EXP expf
#define TANH tanhf
#include "bptt_impl.h"
#undef REAL
#undef FN
#undef GEMM
#undef EXP
#undef TANH

#define REAL double
#define FN(name) name##_f64
#define GEMM bli_dgemm
#define EXP exp
#define TANH tanh
#include "bptt_impl.h"
#undef REAL
#undef FN
#undef GEMM
#undef EXP
#undef TANH

static bool is_lstm(cr_cell_kind k)
{
    return k == CR_CELL_LSTM || k == CR_CELL_LSTM_PEEPHOLE;
}

const char *cr_cell_kind_name(cr_cell_kind kind)
{
    switch (kind) {
    case CR_CELL_RNN_TANH: return "rnn_tanh";
    case CR_CELL_RNN_RELU: return "rnn_relu";
    case CR_CELL_GRU: return "gru";
    case CR_CELL_GRU_ORIGINAL: return "gru_original";
    case CR_CELL_LSTM: return "lstm";
    case CR_CELL_LSTM_PEEPHOLE: return "lstm_peephole";
    }
    return "?";
}

int64_t cr_cell_gates(cr_cell_kind kind)
{
    switch (kind) {
    case CR_CELL_RNN_TANH:
    case CR_CELL_RNN_RELU: return 1;
    case CR_CELL_GRU:
    case CR_CELL_GRU_ORIGINAL: return 3;
    case CR_CELL_LSTM:
    case CR_CELL_LSTM_PEEPHOLE: return 4;
    }
    cr_error("cr_cell_gates: unknown cell kind %d", (int)kind);
}

/* ---- workspace ------------------------------------------------------------- */

cr_bptt *cr_bptt_init(cr_cell_kind kind, cr_dtype dt, int64_t B, int64_t T, int64_t I,
                      int64_t H)
{
    if ((unsigned)kind > (unsigned)CR_CELL_LSTM_PEEPHOLE)
        cr_error("cr_bptt_init: unknown cell kind %d", (int)kind);
    if (dt != CR_F32 && dt != CR_F64)
        cr_error("cr_bptt_init: dtype %s, expected f32 or f64", cr_dtype_name(dt));
    if (B < 1 || T < 1 || I < 1 || H < 1)
        cr_error("cr_bptt_init: sizes B=%lld T=%lld I=%lld H=%lld must be positive",
                 (long long)B, (long long)T, (long long)I, (long long)H);
    cr_bptt *w = cr_xcalloc(1, sizeof *w);
    const int64_t G = cr_cell_gates(kind) * H;
    const size_t es = cr_dtype_size(dt);
    const size_t bth = (size_t)(B * T * H) * es, btg = (size_t)(B * T * G) * es;
    *w = (cr_bptt){.kind = kind, .dt = dt, .B = B, .T = T, .I = I, .H = H, .G = G};
    w->x = cr_xmalloc((size_t)(B * T * I) * es);
    w->gates = cr_xmalloc(btg);
    w->hprev = cr_xmalloc(bth);
    w->hs = cr_xmalloc(bth);
    w->hp = cr_xmalloc((size_t)(B * G) * es);
    w->dgx = cr_xmalloc(btg);
    w->dgh = kind == CR_CELL_GRU ? cr_xmalloc(btg) : w->dgx;
    w->dh = cr_xmalloc((size_t)(B * H) * es);
    w->zero_g = cr_xcalloc((size_t)G, es);
    if (is_lstm(kind)) {
        w->cprev = cr_xmalloc(bth);
        w->cs = cr_xmalloc(bth);
        w->tanh_c = cr_xmalloc(bth);
        w->dc = cr_xmalloc((size_t)(B * H) * es);
    }
    if (kind == CR_CELL_GRU)
        w->hn = cr_xmalloc(bth);
    if (kind == CR_CELL_GRU_ORIGINAL) {
        w->rh = cr_xmalloc(bth);
        w->drh = cr_xmalloc((size_t)(B * H) * es);
    }
    return w;
}

void cr_bptt_free(cr_bptt *w)
{
    if (!w)
        return;
    if (w->dgh != w->dgx)
        free(w->dgh);
    void *bufs[] = {w->x,  w->gates, w->hprev, w->hs,  w->cprev, w->cs, w->tanh_c,
                    w->hn, w->rh,    w->hp,    w->dgx, w->dh,    w->dc, w->drh, w->zero_g};
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++)
        free(bufs[k]);
    free(w);
}

/* ---- argument checks ---------------------------------------------------------- */

/* t must be a contiguous tensor of dtype dt and the given shape; NULL is
 * allowed when `optional`. Errors name the op, the argument and the layer. */
static void check_arg(const char *op, const cr_bptt *w, const char *what, const cr_tensor *t,
                      bool optional, int ndim, const int64_t *shape)
{
    char got[128], want[128];
    if (!t) {
        if (optional)
            return;
        cr_error("%s: %s is NULL (%s, B=%lld T=%lld I=%lld H=%lld)", op, what,
                 cr_cell_kind_name(w->kind), (long long)w->B, (long long)w->T,
                 (long long)w->I, (long long)w->H);
    }
    bool ok = t->dtype == w->dt && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->shape[d] == shape[d];
    if (!ok)
        cr_error("%s: %s is %s %s, expected %s %s (%s, B=%lld T=%lld I=%lld H=%lld)", op, what,
                 cr_shape_str(got, sizeof got, t->ndim, t->shape), cr_dtype_name(t->dtype),
                 cr_shape_str(want, sizeof want, ndim, shape), cr_dtype_name(w->dt),
                 cr_cell_kind_name(w->kind), (long long)w->B, (long long)w->T,
                 (long long)w->I, (long long)w->H);
    if (!cr_is_contiguous(t))
        cr_error("%s: %s %s is not contiguous", op, what,
                 cr_shape_str(got, sizeof got, t->ndim, t->shape));
}

/* The weights (or gradients, when `optional`) of the cell. */
static void check_weights(const char *op, const cr_bptt *w, const char *set,
                          const cr_bptt_weights *p, bool optional)
{
    char name[64];
    const int64_t G = w->G, I = w->I, H = w->H;
    const bool peep = w->kind == CR_CELL_LSTM_PEEPHOLE;
    struct {
        const char *name;
        const cr_tensor *t;
        int ndim;
        int64_t shape[2];
        bool used;
    } args[] = {
        {"w_ih", p->w_ih, 2, {G, I}, true},   {"w_hh", p->w_hh, 2, {G, H}, true},
        {"b_ih", p->b_ih, 1, {G, 0}, true},   {"b_hh", p->b_hh, 1, {G, 0}, true},
        {"w_ci", p->w_ci, 1, {H, 0}, peep},   {"w_cf", p->w_cf, 1, {H, 0}, peep},
        {"w_co", p->w_co, 1, {H, 0}, peep},
    };
    for (size_t k = 0; k < sizeof args / sizeof args[0]; k++) {
        snprintf(name, sizeof name, "%s%s", set, args[k].name);
        if (!args[k].used) {
            if (args[k].t)
                cr_error("%s: %s given, but a %s cell has no peepholes", op, name,
                         cr_cell_kind_name(w->kind));
            continue;
        }
        /* Biases may be absent (a layer without biases): they count as zeros. */
        const bool bias = args[k].name[0] == 'b';
        check_arg(op, w, name, args[k].t, optional || bias, args[k].ndim, args[k].shape);
    }
}

/* ---- forward and backward ------------------------------------------------------ */

void cr_bptt_forward(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *x,
                     const cr_tensor *h0, const cr_tensor *c0, cr_tensor *y, cr_tensor *h_n,
                     cr_tensor *c_n)
{
    static const char op[] = "cr_bptt_forward";
    if (!w || !p)
        cr_error("%s: workspace or weights is NULL", op);
    const int64_t B = w->B, T = w->T, I = w->I, H = w->H;
    check_weights(op, w, "", p, false);
    check_arg(op, w, "x", x, false, 3, (int64_t[]){B, T, I});
    check_arg(op, w, "h0", h0, true, 2, (int64_t[]){B, H});
    check_arg(op, w, "y", y, true, 3, (int64_t[]){B, T, H});
    check_arg(op, w, "h_n", h_n, true, 2, (int64_t[]){B, H});
    if (is_lstm(w->kind)) {
        check_arg(op, w, "c0", c0, true, 2, (int64_t[]){B, H});
        check_arg(op, w, "c_n", c_n, true, 2, (int64_t[]){B, H});
    } else if (c0 || c_n) {
        cr_error("%s: c0/c_n given, but a %s cell has no cell state", op,
                 cr_cell_kind_name(w->kind));
    }
    if (w->dt == CR_F32)
        forward_f32(w, p, x, h0, c0, y, h_n, c_n);
    else
        forward_f64(w, p, x, h0, c0, y, h_n, c_n);
    w->ran = true;
}

void cr_bptt_backward(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *dy,
                      const cr_tensor *dh_n, const cr_tensor *dc_n, cr_bptt_weights *g,
                      cr_tensor *dx, cr_tensor *dh0, cr_tensor *dc0)
{
    static const char op[] = "cr_bptt_backward";
    if (!w || !p)
        cr_error("%s: workspace or weights is NULL", op);
    if (!w->ran)
        cr_error("%s: no forward has run on this workspace", op);
    const int64_t B = w->B, T = w->T, I = w->I, H = w->H;
    check_weights(op, w, "", p, false);
    if (g)
        check_weights(op, w, "gradient ", g, true);
    check_arg(op, w, "dy", dy, true, 3, (int64_t[]){B, T, H});
    check_arg(op, w, "dh_n", dh_n, true, 2, (int64_t[]){B, H});
    check_arg(op, w, "dx", dx, true, 3, (int64_t[]){B, T, I});
    check_arg(op, w, "dh0", dh0, true, 2, (int64_t[]){B, H});
    if (is_lstm(w->kind)) {
        check_arg(op, w, "dc_n", dc_n, true, 2, (int64_t[]){B, H});
        check_arg(op, w, "dc0", dc0, true, 2, (int64_t[]){B, H});
    } else if (dc_n || dc0) {
        cr_error("%s: dc_n/dc0 given, but a %s cell has no cell state", op,
                 cr_cell_kind_name(w->kind));
    }
    if (w->dt == CR_F32)
        backward_f32(w, p, dy, dh_n, dc_n, g, dx, dh0, dc0);
    else
        backward_f64(w, p, dy, dh_n, dc_n, g, dx, dh0, dc0);
}

/* ---- parameters by name ---------------------------------------------------------- */

static cr_tensor *lookup(const cr_params *ps, const char *prefix, const char *name,
                         bool optional)
{
    char full[256];
    if (prefix && prefix[0])
        snprintf(full, sizeof full, "%s.%s", prefix, name);
    else
        snprintf(full, sizeof full, "%s", name);
    cr_tensor *t = cr_params_get(ps, full);
    if (!t && !optional)
        cr_error("cr_bptt_weights_from: no parameter \"%s\"", full);
    return t;
}

cr_bptt_weights cr_bptt_weights_from(const cr_params *ps, const char *prefix,
                                     cr_cell_kind kind)
{
    if (!ps)
        cr_error("cr_bptt_weights_from: parameter set is NULL");
    cr_bptt_weights p = {
        .w_ih = lookup(ps, prefix, "w_ih", false),
        .w_hh = lookup(ps, prefix, "w_hh", false),
        .b_ih = lookup(ps, prefix, "b_ih", true), /* absent without biases */
        .b_hh = lookup(ps, prefix, "b_hh", true),
    };
    if (kind == CR_CELL_LSTM_PEEPHOLE) {
        p.w_ci = lookup(ps, prefix, "w_ci", false);
        p.w_cf = lookup(ps, prefix, "w_cf", false);
        p.w_co = lookup(ps, prefix, "w_co", false);
    }
    return p;
}

cr_bptt_weights cr_bptt_grads_of(const cr_bptt_weights *p)
{
    cr_bptt_weights g = {0};
    if (!p)
        return g;
    g.w_ih = p->w_ih ? cr_grad_of(p->w_ih) : NULL;
    g.w_hh = p->w_hh ? cr_grad_of(p->w_hh) : NULL;
    g.b_ih = p->b_ih ? cr_grad_of(p->b_ih) : NULL;
    g.b_hh = p->b_hh ? cr_grad_of(p->b_hh) : NULL;
    g.w_ci = p->w_ci ? cr_grad_of(p->w_ci) : NULL;
    g.w_cf = p->w_cf ? cr_grad_of(p->w_cf) : NULL;
    g.w_co = p->w_co ? cr_grad_of(p->w_co) : NULL;
    return g;
}

/* ---- bridges from the autograd cells --------------------------------------------- */

cr_cell_kind cr_cell_kind_of(const cr_rnn_cell *cell)
{
    switch (cell->mode) {
    case CR_RNN_TANH: return CR_CELL_RNN_TANH;
    case CR_RNN_RELU: return CR_CELL_RNN_RELU;
    case CR_GRU: return CR_CELL_GRU;
    case CR_GRU_ORIGINAL: return CR_CELL_GRU_ORIGINAL;
    case CR_LSTM: return cell->w_ci ? CR_CELL_LSTM_PEEPHOLE : CR_CELL_LSTM;
    }
    cr_error("cr_cell_kind_of: unknown cell mode %d", (int)cell->mode);
}

cr_bptt_weights cr_bptt_weights_of(const cr_rnn_cell *cell)
{
    return (cr_bptt_weights){cell->w_ih, cell->w_hh, cell->b_ih, cell->b_hh,
                             cell->w_ci, cell->w_cf, cell->w_co};
}
