/* Recurrent cells (RNN, GRU in both formulations, LSTM with optional
 * peepholes) and multi-layer, bidirectional, variable-length sequence layers.
 * Everything is a composition of autograd ops: no backward code lives here.
 * The input projection is one product over all B*T steps; only the recurrent
 * product stays inside the time loop. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "nn.h"

int cr_rnn_gates(cr_rnn_mode mode)
{
    switch (mode) {
    case CR_RNN_TANH:
    case CR_RNN_RELU: return 1;
    case CR_GRU:
    case CR_GRU_ORIGINAL: return 3;
    case CR_LSTM: return 4;
    }
    cr_error("cr_rnn_gates: unknown mode %d", (int)mode);
}

const char *cr_rnn_mode_name(cr_rnn_mode mode)
{
    switch (mode) {
    case CR_RNN_TANH: return "rnn_tanh";
    case CR_RNN_RELU: return "rnn_relu";
    case CR_GRU: return "gru";
    case CR_GRU_ORIGINAL: return "gru_original";
    case CR_LSTM: return "lstm";
    }
    return "?";
}

cr_rnn_cell cr_cell_init(cr_params *ps, const char *prefix, cr_cell_config cfg, cr_rng *rng)
{
    int64_t I = cfg.input_size, H = cfg.hidden_size, G = cr_rnn_gates(cfg.mode) * H;
    if (I <= 0 || H <= 0)
        cr_error("cr_cell_init: input_size %lld and hidden_size %lld must be positive", (long long)I, (long long)H);
    if (cfg.peephole && cfg.mode != CR_LSTM) cr_error("cr_cell_init: peepholes need an LSTM, not %s", cr_rnn_mode_name(cfg.mode));
    double bound = 1.0 / sqrt((double)H); /* PyTorch's init for recurrent layers */
    cr_rnn_cell c = {.mode = cfg.mode, .input_size = I, .hidden_size = H};
    c.w_ih = cr_params_add(ps, prefix, "w_ih", cfg.dtype, CR_SHAPE(G, I));
    c.w_hh = cr_params_add(ps, prefix, "w_hh", cfg.dtype, CR_SHAPE(G, H));
    cr_init_uniform(c.w_ih, rng, bound);
    cr_init_uniform(c.w_hh, rng, bound);
    if (!cfg.no_bias) {
        c.b_ih = cr_params_add(ps, prefix, "b_ih", cfg.dtype, CR_SHAPE(G));
        c.b_hh = cr_params_add(ps, prefix, "b_hh", cfg.dtype, CR_SHAPE(G));
        cr_init_uniform(c.b_ih, rng, bound);
        cr_init_uniform(c.b_hh, rng, bound);
        if (cfg.mode == CR_LSTM && cfg.forget_bias != 0)
            for (int64_t j = H; j < 2 * H; j++) { /* gate block f */
                cr_set_flat(c.b_ih, j, cfg.forget_bias);
                cr_set_flat(c.b_hh, j, 0.0);
            }
    }
    if (cfg.peephole) {
        c.w_ci = cr_params_add(ps, prefix, "w_ci", cfg.dtype, CR_SHAPE(H));
        c.w_cf = cr_params_add(ps, prefix, "w_cf", cfg.dtype, CR_SHAPE(H));
        c.w_co = cr_params_add(ps, prefix, "w_co", cfg.dtype, CR_SHAPE(H));
        cr_init_uniform(c.w_ci, rng, bound);
        cr_init_uniform(c.w_cf, rng, bound);
        cr_init_uniform(c.w_co, rng, bound);
    }
    return c;
}

/* Gate block k of a [B, gates*H] tensor. */
static cr_tensor *gate(cr_tensor *t, int k, int64_t H) { return cr_narrow(t, 1, k * H, H); }

void cr_cell_step(const cr_rnn_cell *cell, cr_tensor *gx, cr_tensor *w_hh_t, cr_tensor *h, cr_tensor *c,
                  cr_tensor **h_out, cr_tensor **c_out)
{
    int64_t H = cell->hidden_size;
    switch (cell->mode) {
    case CR_RNN_TANH:
    case CR_RNN_RELU: {
        /* h' = act(gx + h W_hh^T), b_hh already in gx */
        cr_tensor *pre = cr_add(gx, cr_matmul(h, w_hh_t));
        *h_out = cell->mode == CR_RNN_TANH ? cr_tanh(pre) : cr_relu(pre);
        return;
    }
    case CR_LSTM: {
        /* [i f g o] = gx + h W_hh^T; peepholes add w_ci*c, w_cf*c to i, f */
        cr_tensor *z = cr_add(gx, cr_matmul(h, w_hh_t));
        cr_tensor *zi = gate(z, 0, H), *zf = gate(z, 1, H), *zg = gate(z, 2, H), *zo = gate(z, 3, H);
        if (cell->w_ci) {
            zi = cr_add(zi, cr_mul(c, cell->w_ci));
            zf = cr_add(zf, cr_mul(c, cell->w_cf));
        }
        cr_tensor *i = cr_sigmoid(zi), *f = cr_sigmoid(zf), *g = cr_tanh(zg);
        /* c' = f*c + i*g */
        cr_tensor *cn = cr_add(cr_mul(f, c), cr_mul(i, g));
        /* o = sigmoid(z_o + w_co*c'); h' = o * tanh(c') */
        if (cell->w_co) zo = cr_add(zo, cr_mul(cn, cell->w_co));
        *h_out = cr_mul(cr_sigmoid(zo), cr_tanh(cn));
        *c_out = cn;
        return;
    }
    case CR_GRU: {
        /* r = s(gx_r + gh_r), z = s(gx_z + gh_z), n = tanh(gx_n + r*gh_n), gh = h W_hh^T + b_hh */
        cr_tensor *gh = cr_matmul(h, w_hh_t);
        if (cell->b_hh) gh = cr_add(gh, cell->b_hh);
        cr_tensor *r = cr_sigmoid(cr_add(gate(gx, 0, H), gate(gh, 0, H)));
        cr_tensor *z = cr_sigmoid(cr_add(gate(gx, 1, H), gate(gh, 1, H)));
        cr_tensor *n = cr_tanh(cr_add(gate(gx, 2, H), cr_mul(r, gate(gh, 2, H))));
        /* h' = (1-z)*n + z*h = n + z*(h-n) */
        *h_out = cr_add(n, cr_mul(z, cr_sub(h, n)));
        return;
    }
    case CR_GRU_ORIGINAL: {
        /* r, z as above; n = tanh(gx_n + (r*h) W_hn^T + b_hn) */
        cr_tensor *ghrz = cr_matmul(h, cr_narrow(w_hh_t, 1, 0, 2 * H));
        if (cell->b_hh) ghrz = cr_add(ghrz, cr_narrow(cell->b_hh, 0, 0, 2 * H));
        cr_tensor *r = cr_sigmoid(cr_add(gate(gx, 0, H), gate(ghrz, 0, H)));
        cr_tensor *z = cr_sigmoid(cr_add(gate(gx, 1, H), gate(ghrz, 1, H)));
        cr_tensor *ghn = cr_matmul(cr_mul(r, h), cr_narrow(w_hh_t, 1, 2 * H, H));
        if (cell->b_hh) ghn = cr_add(ghn, cr_narrow(cell->b_hh, 0, 2 * H, H));
        cr_tensor *n = cr_tanh(cr_add(gate(gx, 2, H), ghn));
        *h_out = cr_add(n, cr_mul(z, cr_sub(h, n)));
        return;
    }
    }
}

/* The bias added to the hoisted input projection: b_ih, plus b_hh where the
 * recurrent bias is not gated (RNN, LSTM). NULL without biases. */
static cr_tensor *input_bias(const cr_rnn_cell *cell)
{
    if (!cell->b_ih) return NULL;
    if (cell->mode == CR_GRU || cell->mode == CR_GRU_ORIGINAL) return cell->b_ih;
    return cr_add(cell->b_ih, cell->b_hh);
}

static void check_state(const char *op, const char *what, const cr_tensor *s, int64_t n, int64_t B, int64_t H,
                        cr_dtype dt)
{
    bool ok = s->dtype == dt && (n ? (s->ndim == 3 && s->shape[0] == n && s->shape[1] == B && s->shape[2] == H)
                                   : (s->ndim == 2 && s->shape[0] == B && s->shape[1] == H));
    if (!ok) {
        char a[128];
        if (n)
            cr_error("%s: %s is %s %s, expected %s [%lld,%lld,%lld]", op, what, cr_dtype_name(s->dtype),
                     cr_shape_str(a, sizeof a, s->ndim, s->shape), cr_dtype_name(dt), (long long)n, (long long)B,
                     (long long)H);
        cr_error("%s: %s is %s %s, expected %s [%lld,%lld]", op, what, cr_dtype_name(s->dtype),
                 cr_shape_str(a, sizeof a, s->ndim, s->shape), cr_dtype_name(dt), (long long)B, (long long)H);
    }
}

void cr_cell_forward(const cr_rnn_cell *cell, cr_tensor *x, cr_tensor *h, cr_tensor *c, cr_tensor **h_out,
                     cr_tensor **c_out)
{
    char a[128];
    cr_dtype dt = cell->w_ih->dtype;
    if (x->ndim != 2 || x->shape[1] != cell->input_size || x->dtype != dt)
        cr_error("cr_cell_forward: input is %s %s, expected %s [B,%lld]", cr_dtype_name(x->dtype),
                 cr_shape_str(a, sizeof a, x->ndim, x->shape), cr_dtype_name(dt), (long long)cell->input_size);
    int64_t B = x->shape[0];
    check_state("cr_cell_forward", "h", h, 0, B, cell->hidden_size, dt);
    if (cell->mode == CR_LSTM) {
        if (!c) cr_error("cr_cell_forward: an LSTM step needs the cell state c");
        check_state("cr_cell_forward", "c", c, 0, B, cell->hidden_size, dt);
    }
    cr_tensor *gx = cr_matmul(x, cr_transpose(cell->w_ih, 0, 1));
    cr_tensor *b = input_bias(cell);
    if (b) gx = cr_add(gx, b);
    cr_cell_step(cell, gx, cr_transpose(cell->w_hh, 0, 1), h, c, h_out, c_out);
}

/* ---- sequence layers ---------------------------------------------------------------- */

cr_rnn *cr_rnn_init(cr_params *ps, const char *prefix, cr_rnn_config cfg, cr_rng *rng)
{
    if (cfg.num_layers < 1) cr_error("cr_rnn_init: num_layers %d must be at least 1", cfg.num_layers);
    if (!(cfg.dropout >= 0 && cfg.dropout < 1)) cr_error("cr_rnn_init: dropout %g is not in [0, 1)", cfg.dropout);
    cr_rnn *m = cr_xcalloc(1, sizeof *m);
    m->cfg = cfg;
    m->dirs = cfg.bidirectional ? 2 : 1;
    m->train = true;
    m->dropout_rng = cr_rng_seed(rng->seed ^ UINT64_C(0xd50c0de));
    m->cells = cr_xcalloc((size_t)(cfg.num_layers * m->dirs), sizeof *m->cells);
    for (int l = 0; l < cfg.num_layers; l++)
        for (int d = 0; d < m->dirs; d++) {
            char name[512];
            snprintf(name, sizeof name, "%s%sl%d%s", prefix ? prefix : "", prefix && *prefix ? "." : "", l,
                     d ? "_reverse" : "");
            cr_cell_config cc = {.mode = cfg.mode,
                                 .input_size = l == 0 ? cfg.input_size : cfg.hidden_size * m->dirs,
                                 .hidden_size = cfg.hidden_size,
                                 .no_bias = cfg.no_bias,
                                 .peephole = cfg.peephole,
                                 .forget_bias = cfg.forget_bias,
                                 .dtype = cfg.dtype};
            m->cells[l * m->dirs + d] = cr_cell_init(ps, name, cc, rng);
        }
    return m;
}

void cr_rnn_free(cr_rnn *m)
{
    if (!m) return;
    free(m->cells);
    free(m);
}

/* [B, 1] float mask of the sequences still running at step t, or NULL when
 * all of them are. */
static cr_tensor *step_mask(const cr_tensor *lengths, int64_t t, cr_dtype dt)
{
    if (!lengths) return NULL;
    const int32_t *len = lengths->data;
    int64_t B = lengths->shape[0];
    bool all = true;
    for (int64_t b = 0; b < B; b++) all &= t < len[b];
    if (all) return NULL;
    cr_tensor *m = cr_tensor_new(dt, 2, (int64_t[]){B, 1});
    for (int64_t b = 0; b < B; b++) cr_set_flat(m, b, t < len[b] ? 1.0 : 0.0);
    return m;
}

/* Run one direction of one layer over the whole sequence. */
static cr_tensor *run_direction(const cr_rnn_cell *cell, cr_tensor *in, const cr_tensor *lengths, bool reverse,
                                cr_tensor *h, cr_tensor *c, cr_tensor **h_fin, cr_tensor **c_fin)
{
    int64_t T = in->shape[1];
    /* one product over all B*T steps: [B,T,In] x [In,G] -> [B,T,G] */
    cr_tensor *gx = cr_matmul(in, cr_transpose(cell->w_ih, 0, 1));
    cr_tensor *b = input_bias(cell);
    if (b) gx = cr_add(gx, b);
    cr_tensor *w_hh_t = cr_transpose(cell->w_hh, 0, 1);
    cr_tensor **ys = cr_arena_alloc(cr_arena_current(), (size_t)(T > 0 ? T : 1) * sizeof *ys);
    for (int64_t s = 0; s < T; s++) {
        int64_t t = reverse ? T - 1 - s : s;
        cr_tensor *hn, *cn = NULL;
        cr_cell_step(cell, cr_select(gx, 1, t), w_hh_t, h, c, &hn, &cn);
        cr_tensor *m = step_mask(lengths, t, in->dtype);
        if (m) { /* finished sequences keep their state and output 0 */
            h = cr_where(m, hn, h);
            if (c) c = cr_where(m, cn, c);
            ys[t] = cr_mask(hn, m);
        } else {
            h = hn;
            c = cn;
            ys[t] = hn;
        }
    }
    *h_fin = h;
    *c_fin = c;
    return cr_stack((int)T, ys, 1);
}

cr_rnn_output cr_rnn_forward(cr_rnn *m, cr_tensor *x, const cr_tensor *lengths, cr_tensor *h0, cr_tensor *c0)
{
    char a[128];
    const cr_rnn_config *cfg = &m->cfg;
    bool lstm = cfg->mode == CR_LSTM;
    if (x->ndim != 3 || x->shape[2] != cfg->input_size || x->dtype != cfg->dtype)
        cr_error("cr_rnn_forward: input is %s %s, expected %s [B,T,%lld]", cr_dtype_name(x->dtype),
                 cr_shape_str(a, sizeof a, x->ndim, x->shape), cr_dtype_name(cfg->dtype), (long long)cfg->input_size);
    int64_t B = x->shape[0], T = x->shape[1], H = cfg->hidden_size;
    int n_states = cfg->num_layers * m->dirs;
    if (T < 1) cr_error("cr_rnn_forward: input %s has no time steps", cr_shape_str(a, sizeof a, x->ndim, x->shape));
    if (lengths) {
        if (lengths->dtype != CR_I32 || lengths->ndim != 1 || lengths->shape[0] != B || !cr_is_contiguous(lengths))
            cr_error("cr_rnn_forward: lengths must be contiguous i32 [%lld], got %s %s", (long long)B,
                     cr_dtype_name(lengths->dtype), cr_shape_str(a, sizeof a, lengths->ndim, lengths->shape));
        for (int64_t b = 0; b < B; b++) {
            int32_t len = ((const int32_t *)lengths->data)[b];
            if (len < 1 || len > T)
                cr_error("cr_rnn_forward: length %d of sequence %lld is not in [1, %lld]", len, (long long)b, (long long)T);
        }
    }
    if (h0) check_state("cr_rnn_forward", "h0", h0, n_states, B, H, cfg->dtype);
    if (c0) {
        if (!lstm) cr_error("cr_rnn_forward: c0 given to a %s layer", cr_rnn_mode_name(cfg->mode));
        check_state("cr_rnn_forward", "c0", c0, n_states, B, H, cfg->dtype);
    }
    cr_tensor **h_fin = cr_arena_alloc(cr_arena_current(), (size_t)n_states * sizeof *h_fin);
    cr_tensor **c_fin = cr_arena_alloc(cr_arena_current(), (size_t)n_states * sizeof *c_fin);
    cr_tensor *zeros = NULL;
    cr_tensor *in = x;
    for (int l = 0; l < cfg->num_layers; l++) {
        cr_tensor *outs[2];
        for (int d = 0; d < m->dirs; d++) {
            int k = l * m->dirs + d;
            if ((!h0 || (lstm && !c0)) && !zeros) zeros = cr_zeros(cfg->dtype, CR_SHAPE(B, H));
            cr_tensor *h = h0 ? cr_select(h0, 0, k) : zeros;
            cr_tensor *c = lstm ? (c0 ? cr_select(c0, 0, k) : zeros) : NULL;
            outs[d] = run_direction(&m->cells[k], in, lengths, d == 1, h, c, &h_fin[k], &c_fin[k]);
        }
        cr_tensor *out = m->dirs == 2 ? cr_concat(2, outs, 2) : outs[0];
        if (l + 1 < cfg->num_layers) out = cr_dropout(out, cfg->dropout, m->train, &m->dropout_rng);
        in = out;
    }
    cr_rnn_output o = {.y = in};
    o.h_n = cr_stack(n_states, h_fin, 0);
    o.c_n = lstm ? cr_stack(n_states, c_fin, 0) : NULL;
    return o;
}
