/* The LSTM cell, gate blocks i, f, g, o as PyTorch's nn.LSTM, states h and c,
 * with or without diagonal peepholes (w_ci, w_cf see c_{t-1}; w_co sees c_t),
 * and the forget-gate bias option. b_hh is not gated: it folds into the
 * input projection. */
#include "nn_internal.h"

enum { W_IH, W_HH, B_IH, B_HH, W_CI, W_CF, W_CO };
static const cr_cell_param lstm_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},                                 /* (4H, I) */
    {.name = "w_hh", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(4), CR_H(1)}}, /* (4H, H) */
    {.name = "b_ih", .role = CR_PARAM_INPUT_BIAS},                            /* (4H) */
    {.name = "b_hh", .role = CR_PARAM_INPUT_BIAS},                            /* (4H) */
    {.name = "w_ci", .role = CR_PARAM_WEIGHT, .shape = {CR_H(1)}},            /* (H), peephole type only */
    {.name = "w_cf", .role = CR_PARAM_WEIGHT, .shape = {CR_H(1)}},            /* (H) */
    {.name = "w_co", .role = CR_PARAM_WEIGHT, .shape = {CR_H(1)}},            /* (H) */
};

/* Gate block k of a [B, 4H] tensor. */
static cr_tensor *gate(cr_tensor *t, int k, int64_t H) { return cr_narrow(t, 1, k * H, H); }

/* [i f g o] = gx + h W_hh^T; peepholes (when w_ci is given) add w_ci*c, w_cf*c to i, f */
static void lstm(int64_t H, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s, cr_tensor **next,
                 cr_tensor *w_ci, cr_tensor *w_cf, cr_tensor *w_co)
{
    cr_tensor *h = s[0], *c = s[1];
    cr_tensor *z = cr_add(gx, cr_matmul(h, w[W_HH]));
    cr_tensor *zi = gate(z, 0, H), *zf = gate(z, 1, H), *zg = gate(z, 2, H), *zo = gate(z, 3, H);
    if (w_ci) {
        zi = cr_add(zi, cr_mul(c, w_ci));
        zf = cr_add(zf, cr_mul(c, w_cf));
    }
    cr_tensor *i = cr_sigmoid(zi), *f = cr_sigmoid(zf), *g = cr_tanh(zg);
    /* c' = f*c + i*g */
    cr_tensor *cn = cr_add(cr_mul(f, c), cr_mul(i, g));
    /* o = sigmoid(z_o + w_co*c'); h' = o * tanh(c') */
    if (w_co) zo = cr_add(zo, cr_mul(cn, w_co));
    next[0] = cr_mul(cr_sigmoid(zo), cr_tanh(cn));
    next[1] = cn;
}

static void lstm_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                      cr_tensor **next)
{
    lstm(c->hidden_size, w, gx, s, next, NULL, NULL, NULL);
}

static void peephole_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                          cr_tensor **next)
{
    lstm(c->hidden_size, w, gx, s, next, w[W_CI], w[W_CF], w[W_CO]);
}

/* The same step through the fused gate op (autograd/ops_rnn.c): one node and
 * one pass over the gates each way; y = [h'; c'] as [2,B,H]. */
static void lstm_fused_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                            cr_tensor **next)
{
    (void)c;
    cr_tensor *y = cr_lstm_gates(gx, cr_matmul(s[0], w[W_HH]), s[1]);
    next[0] = cr_select(y, 0, 0);
    next[1] = cr_select(y, 0, 1);
}

/* forget_bias b: the f block of b_ih is b and that of b_hh 0, so the folded
 * bias of the forget gate is b and the gate starts at sigmoid(b). */
static void lstm_init(cr_cell *c, const cr_cell_config *cfg)
{
    int64_t H = c->hidden_size;
    if (cfg->forget_bias == 0 || !c->p[B_IH]) return;
    for (int64_t j = H; j < 2 * H; j++) {
        cr_set_flat(c->p[B_IH], j, cfg->forget_bias);
        cr_set_flat(c->p[B_HH], j, 0.0);
    }
}

const cr_cell_type cr_cell_lstm = {.name = "lstm",
                                   .n_states = 2,
                                   .proj = CR_H(4),
                                   .params = lstm_params,
                                   .n_params = 4,
                                   .step = lstm_step,
                                   .fused_step = lstm_fused_step,
                                   .init = lstm_init,
                                   .bptt = &cr_bptt_lstm};
const cr_cell_type cr_cell_lstm_peephole = {.name = "lstm_peephole",
                                            .n_states = 2,
                                            .proj = CR_H(4),
                                            .params = lstm_params,
                                            .n_params = 7,
                                            .step = peephole_step,
                                            .init = lstm_init,
                                            .bptt = &cr_bptt_lstm_peephole};
