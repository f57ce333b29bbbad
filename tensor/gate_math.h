/* Internal to tensor/: the single-precision gate functions (exp, sigmoid,
 * tanh) shared by the elementwise kernels (kernels.c) and the fused RNN gate
 * kernels (rnn_kernels.c). */
#ifndef CAROUSEL_GATE_MATH_H
#define CAROUSEL_GATE_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Single-precision exp, tanh and sigmoid for the gate nonlinearities, written
 * without calls or branches so the compiler vectorises the loops around them
 * (libm's scalar tanhf/expf were a fifth of an LSTM step). Accuracy: a few
 * ulp (tests/test_tensor.c checks them against double-precision libm).
 *
 * exp: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
 * product), e^r by its Taylor polynomial to r^7 (truncation 5e-9, below float
 * rounding), 2^n built in the exponent bits. x is clamped to [-87, 88], where
 * 2^n stays a normal float: enough for sigmoid and tanh, which saturate long
 * before. */
static inline float exp_gate_f32(float x)
{
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* 1/(1+e^-x); the clamp in exp makes both tails finite. */
static inline float sigmoid_gate_f32(float x) { return 1.0f / (1.0f + exp_gate_f32(-x)); }

/* tanh: an odd Taylor polynomial to x^15 below |x| = 0.4 (where 1 - 2/(e^2x+1)
 * would cancel), 1 - 2/(e^2|x|+1) above, with the sign restored. */
static inline float tanh_gate_f32(float x)
{
    float a = x < 0 ? -x : x, a2 = a * a;
    float s = -929569.0f / 638512875;
    s = s * a2 + 21844.0f / 6081075;
    s = s * a2 - 1382.0f / 155925;
    s = s * a2 + 62.0f / 2835;
    s = s * a2 - 17.0f / 315;
    s = s * a2 + 2.0f / 15;
    s = s * a2 - 1.0f / 3;
    s = s * a2 * a + a;
    float big = 1.0f - 2.0f / (exp_gate_f32(2.0f * a) + 1.0f);
    float t = a < 0.4f ? s : big;
    return x < 0 ? -t : t;
}

/* double: libm, split by sign so the exponential never overflows */
static inline double sigmoid_gate_f64(double x)
{
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

#endif
