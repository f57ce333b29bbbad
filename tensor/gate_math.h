/* Internal to tensor/: the single-precision gate functions (exp, sigmoid,
 * tanh) shared by the elementwise kernels (kernels.c) and the fused RNN gate
 * kernels (rnn_kernels.c). */
#ifndef CAROUSEL_GATE_MATH_H
#define CAROUSEL_GATE_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* xc = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
 * product) and n an integer (in a float); returns e^r by its Taylor
 * polynomial to r^7 (truncation 5e-9, below float rounding). */
static inline float exp_reduced_f32(float xc, float *n_out)
{
    float n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    *n_out = n;
    return p;
}

/* Single-precision exp, tanh and sigmoid for the gate nonlinearities, written
 * without calls or branches so the compiler vectorises the loops around them
 * (libm's scalar tanhf/expf were a fifth of an LSTM step). Accuracy: a few
 * ulp (tests/test_tensor.c checks them against double-precision libm).
 *
 * exp: e^r of exp_reduced_f32, 2^n built in the exponent bits. x is clamped to [-87, 88], where
 * 2^n stays a normal float: enough for sigmoid and tanh, which saturate long
 * before. */
static inline float exp_gate_f32(float x)
{
    float xc = x > -87.0f ? x : -87.0f; /* a NaN too: its int conversion below would be undefined */
    xc = xc < 88.0f ? xc : 88.0f;
    float n, p = exp_reduced_f32(xc, &n);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x != x ? x : p * scale; /* NaN gives NaN (and so sigmoid and tanh) */
}

/* e^x over the whole float range, for softmax and cross-entropy, whose
 * arguments (x - max of the row) reach -inf and whose small results matter
 * (e^-100 is 3.7e-44, not the gate exp's clamped 1.6e-38). The gate exp's
 * reduction and polynomial on x clamped to [-104, 89]: below -104 e^x rounds
 * to 0 and above 89 it overflows, so the clamp changes no result. 2^n, for
 * n in [-150, 128], is applied as two factors 2^(n/2) and 2^(n - n/2), both
 * normal floats: the first product is exact (p is near 1) and the second
 * rounds once, into the subnormal range, to 0 or to inf where the true value
 * does. A NaN is clamped to -104 like -inf (so the integer conversion never
 * sees one; a NaN's conversion is undefined) and put back by the last select,
 * so NaN gives NaN, +inf gives inf and -inf gives 0. Only +, -, *, compares,
 * an exact int conversion and bit moves: exactly rounded in any vector
 * width. Accuracy: tests/test_tensor.c sweeps it against libm's exp. */
static inline float exp_softmax_f32(float x)
{
    float xc = x > -104.0f ? x : -104.0f; /* NaN and -inf give -104 */
    xc = xc < 89.0f ? xc : 89.0f;
    float n, p = exp_reduced_f32(xc, &n);
    int32_t ni = (int32_t)n, n1 = ni / 2, n2 = ni - n1; /* each in [-75, 64] */
    int32_t b1 = (n1 + 127) * (1 << 23), b2 = (n2 + 127) * (1 << 23);
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    float y = (p * s1) * s2;
    return x != x ? x : y;
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
