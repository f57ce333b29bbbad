/* The GRU cell in two formulations, gate blocks r, z, n as PyTorch's nn.GRU:
 * PyTorch's (reset gate on the recurrent product, b_hn inside it) and Cho et
 * al. 2014's original (reset gate on h before the product). b_hh stays in the
 * step because its n block is gated by r. */
#include "nn_internal.h"

enum { W_IH, W_HH, B_IH, B_HH };
static const cr_cell_param gru_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},                                 /* (3H, I) */
    {.name = "w_hh", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(3), CR_H(1)}}, /* (3H, H) */
    {.name = "b_ih", .role = CR_PARAM_INPUT_BIAS},                            /* (3H) */
    {.name = "b_hh", .role = CR_PARAM_BIAS, .shape = {CR_H(3)}},              /* (3H) */
};

/* Gate block k of a [B, 3H] tensor. */
static cr_tensor *gate(cr_tensor *t, int k, int64_t H) { return cr_narrow(t, 1, k * H, H); }

/* r = s(gx_r + gh_r), z = s(gx_z + gh_z), n = tanh(gx_n + r*gh_n), gh = h W_hh^T + b_hh
 * h' = (1-z)*n + z*h = n + z*(h-n) */
static void gru_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                     cr_tensor **next)
{
    int64_t H = c->hidden_size;
    cr_tensor *h = s[0], *gh = cr_matmul(h, w[W_HH]);
    if (w[B_HH]) gh = cr_add(gh, w[B_HH]);
    cr_tensor *r = cr_sigmoid(cr_add(gate(gx, 0, H), gate(gh, 0, H)));
    cr_tensor *z = cr_sigmoid(cr_add(gate(gx, 1, H), gate(gh, 1, H)));
    cr_tensor *n = cr_tanh(cr_add(gate(gx, 2, H), cr_mul(r, gate(gh, 2, H))));
    next[0] = cr_add(n, cr_mul(z, cr_sub(h, n)));
}

/* The same step through the fused gate op (autograd/ops_rnn.c): the
 * recurrent product with b_hh in its own buffer, then one node for the rest. */
static void gru_fused_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                           cr_tensor **next)
{
    (void)c;
    cr_tensor *h = s[0];
    cr_tensor *gh = w[B_HH] ? cr_matmul_bias(h, w[W_HH], w[B_HH]) : cr_matmul(h, w[W_HH]);
    next[0] = cr_gru_gates(gx, gh, h);
}

/* r, z as above from the r, z rows of W_hh; n = tanh(gx_n + (r*h) W_hn^T + b_hn) */
static void gru_original_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                              cr_tensor **next)
{
    int64_t H = c->hidden_size;
    cr_tensor *h = s[0], *b = w[B_HH];
    cr_tensor *ghrz = cr_matmul(h, cr_narrow(w[W_HH], 1, 0, 2 * H));
    if (b) ghrz = cr_add(ghrz, cr_narrow(b, 0, 0, 2 * H));
    cr_tensor *r = cr_sigmoid(cr_add(gate(gx, 0, H), gate(ghrz, 0, H)));
    cr_tensor *z = cr_sigmoid(cr_add(gate(gx, 1, H), gate(ghrz, 1, H)));
    cr_tensor *ghn = cr_matmul(cr_mul(r, h), cr_narrow(w[W_HH], 1, 2 * H, H));
    if (b) ghn = cr_add(ghn, cr_narrow(b, 0, 2 * H, H));
    cr_tensor *n = cr_tanh(cr_add(gate(gx, 2, H), ghn));
    next[0] = cr_add(n, cr_mul(z, cr_sub(h, n)));
}

const cr_cell_type cr_cell_gru = {.name = "gru",
                                  .n_states = 1,
                                  .proj = CR_H(3),
                                  .params = gru_params,
                                  .n_params = 4,
                                  .step = gru_step,
                                  .fused_step = gru_fused_step,
                                  .bptt = &cr_bptt_gru};
const cr_cell_type cr_cell_gru_original = {.name = "gru_original",
                                           .n_states = 1,
                                           .proj = CR_H(3),
                                           .params = gru_params,
                                           .n_params = 4,
                                           .step = gru_original_step,
                                           .bptt = &cr_bptt_gru_original};
