/* Fused pointwise gate kernels of the LSTM and GRU cells, forward and
 * backward, for f32 (carousel's vectorisable gate functions) and f64 (libm):
 * one pass over a step's gates instead of one kernel per add, mul, sigmoid
 * and tanh. The ops that use them are in autograd/ops_rnn.c. */
#include <stdbool.h>

#include "gate_math.h"
#include "tensor.h"

#define T float
#define SFX f32
#define TANH tanh_gate_f32
#define SIGMOID sigmoid_gate_f32
#include "rnn_kernels_impl.h"
#undef T
#undef SFX
#undef TANH
#undef SIGMOID

#define T double
#define SFX f64
#define TANH tanh
#define SIGMOID sigmoid_gate_f64
#include "rnn_kernels_impl.h"
#undef T
#undef SFX
#undef TANH
#undef SIGMOID

/* Row stride of a 2-D operand (unit inner stride checked by the caller). */
static int64_t rs(const cr_tensor *t) { return t->stride[0]; }
static void *dp(cr_tensor *t) { return t->data; }

void cr_k_lstm_gates(cr_tensor *out, cr_tensor *act, const cr_tensor *gx, const cr_tensor *gh,
                     const cr_tensor *c)
{
    int64_t B = c->shape[0], H = c->shape[1];
    if (out->dtype == CR_F32)
        lstm_gates_f32(B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), c->data, rs(c));
    else
        lstm_gates_f64(B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), c->data, rs(c));
}

void cr_k_lstm_gates_backward(cr_tensor *dgx, bool gx_first, cr_tensor *dgh, bool gh_first, cr_tensor *dc,
                              bool c_first, const cr_tensor *dy, const cr_tensor *act, const cr_tensor *c)
{
    int64_t B = c->shape[0], H = c->shape[1];
    if (dy->dtype == CR_F32)
        lstm_gates_backward_f32(B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dc), rs(dc),
                                c_first, dy->data, act->data, c->data, rs(c));
    else
        lstm_gates_backward_f64(B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dc), rs(dc),
                                c_first, dy->data, act->data, c->data, rs(c));
}

void cr_k_gru_gates(cr_tensor *out, cr_tensor *act, const cr_tensor *gx, const cr_tensor *gh,
                    const cr_tensor *h)
{
    int64_t B = h->shape[0], H = h->shape[1];
    if (out->dtype == CR_F32)
        gru_gates_f32(B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), h->data, rs(h));
    else
        gru_gates_f64(B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), h->data, rs(h));
}

void cr_k_gru_gates_backward(cr_tensor *dgx, bool gx_first, cr_tensor *dgh, bool gh_first, cr_tensor *dh,
                             bool h_first, const cr_tensor *dy, const cr_tensor *act, const cr_tensor *h)
{
    int64_t B = h->shape[0], H = h->shape[1];
    if (dy->dtype == CR_F32)
        gru_gates_backward_f32(B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dh), rs(dh),
                               h_first, dy->data, act->data, h->data, rs(h));
    else
        gru_gates_backward_f64(B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dh), rs(dh),
                               h_first, dy->data, act->data, h->data, rs(h));
}
