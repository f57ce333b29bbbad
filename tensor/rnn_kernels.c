/* Fused pointwise gate kernels of the LSTM and GRU cells, forward and
 * backward, for f32 (carousel's vectorisable gate functions) and f64 (libm):
 * one pass over a step's gates instead of one kernel per add, mul, sigmoid
 * and tanh. The ops that use them are in autograd/ops_rnn.c.
 *
 * The library is built for baseline x86-64 (16-byte vectors), where the
 * LSTM's forward (three sigmoids and two tanhs per element) is bound by
 * arithmetic: at hidden 512 it took as long as a tenth of the training
 * step. On x86-64 the f32 kernels are also compiled for AVX2 and AVX-512
 * and chosen by the CPU at run time. The loops use only +, -, *, / (not
 * contracted: C11 mode), compares and bit operations, each exactly rounded
 * in any vector width, so every variant gives the same bits (tested). */
#include <stdbool.h>

#include "gate_math.h"
#include "isa.h"
#include "tensor.h"

bool cr_gates_baseline = false;

#define T float
#define TANH tanh_gate_f32
#define SIGMOID sigmoid_gate_f32
#define CR_ISA_IMPL "rnn_kernels_impl.h"
#include "isa_variants.h"
#undef CR_ISA_IMPL
#undef T
#undef TANH
#undef SIGMOID

#define T double
#define SFX f64
#define TGT
#define TANH tanh
#define SIGMOID sigmoid_gate_f64
#include "rnn_kernels_impl.h"
#undef T
#undef SFX
#undef TGT
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
        CR_F32_CALL(lstm_gates, B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), c->data,
                    rs(c));
    else
        lstm_gates_f64(B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), c->data, rs(c));
}

void cr_k_lstm_gates_backward(cr_tensor *dgx, bool gx_first, cr_tensor *dgh, bool gh_first, cr_tensor *dc,
                              bool c_first, const cr_tensor *dy, const cr_tensor *act, const cr_tensor *c)
{
    int64_t B = c->shape[0], H = c->shape[1];
    if (dy->dtype == CR_F32)
        CR_F32_CALL(lstm_gates_backward, B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dc),
                    rs(dc), c_first, dy->data, act->data, c->data, rs(c));
    else
        lstm_gates_backward_f64(B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dc), rs(dc),
                                c_first, dy->data, act->data, c->data, rs(c));
}

void cr_k_gru_gates(cr_tensor *out, cr_tensor *act, const cr_tensor *gx, const cr_tensor *gh,
                    const cr_tensor *h)
{
    int64_t B = h->shape[0], H = h->shape[1];
    if (out->dtype == CR_F32)
        CR_F32_CALL(gru_gates, B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), h->data,
                    rs(h));
    else
        gru_gates_f64(B, H, out->data, act->data, gx->data, rs(gx), gh->data, rs(gh), h->data, rs(h));
}

void cr_k_gru_gates_backward(cr_tensor *dgx, bool gx_first, cr_tensor *dgh, bool gh_first, cr_tensor *dh,
                             bool h_first, const cr_tensor *dy, const cr_tensor *act, const cr_tensor *h)
{
    int64_t B = h->shape[0], H = h->shape[1];
    if (dy->dtype == CR_F32)
        CR_F32_CALL(gru_gates_backward, B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dh),
                    rs(dh), h_first, dy->data, act->data, h->data, rs(h));
    else
        gru_gates_backward_f64(B, H, dp(dgx), rs(dgx), gx_first, dp(dgh), rs(dgh), gh_first, dp(dh), rs(dh),
                               h_first, dy->data, act->data, h->data, rs(h));
}
