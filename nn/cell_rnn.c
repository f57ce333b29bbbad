/* The Elman RNN cell (PyTorch's nn.RNN), tanh or relu, as two cell types:
 *   h' = act(W_ih x + b_ih + W_hh h + b_hh)
 * The recurrent bias is not gated, so it folds into the input projection. */
#include "nn_internal.h"

enum { W_IH, W_HH, B_IH, B_HH };
static const cr_cell_param rnn_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},                                 /* (H, I) */
    {.name = "w_hh", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}}, /* (H, H) */
    {.name = "b_ih", .role = CR_PARAM_INPUT_BIAS},                            /* (H) */
    {.name = "b_hh", .role = CR_PARAM_INPUT_BIAS},                            /* (H) */
};

/* h' = tanh(gx + h W_hh^T), gx = x W_ih^T + b_ih + b_hh */
static void tanh_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                      cr_tensor **next)
{
    (void)c;
    next[0] = cr_tanh(cr_add(gx, cr_matmul(s[0], w[W_HH])));
}

/* h' = relu(gx + h W_hh^T) */
static void relu_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                      cr_tensor **next)
{
    (void)c;
    next[0] = cr_relu(cr_add(gx, cr_matmul(s[0], w[W_HH])));
}

const cr_cell_type cr_cell_rnn_tanh = {.name = "rnn_tanh",
                                       .n_states = 1,
                                       .proj = CR_H(1),
                                       .params = rnn_params,
                                       .n_params = 4,
                                       .step = tanh_step,
                                       .bptt = &cr_bptt_rnn_tanh};
const cr_cell_type cr_cell_rnn_relu = {.name = "rnn_relu",
                                       .n_states = 1,
                                       .proj = CR_H(1),
                                       .params = rnn_params,
                                       .n_params = 4,
                                       .step = relu_step,
                                       .bptt = &cr_bptt_rnn_relu};
