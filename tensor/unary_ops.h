/*
 * The unary elementwise ops, one line each. This list is the only place a
 * unary op is defined: it is expanded into the cr_unary_kind enum (tensor.h),
 * the forward and backward kernel loops for f32 and f64 (kernels_impl.h), the
 * op descriptors and constructors (autograd/ops_unary.c), their public
 * prototypes (autograd.h) and the op table (autograd/op_table.c). Adding an
 * op is one line here plus one test case line in tests/unary_cases.h.
 *
 * Columns of OP(name, KIND, np, (params), reads, forward, derivative, valid):
 *   name        the public function is cr_<name>
 *   KIND        the kernel's enum value is CR_U_<KIND>
 *   np          number of scalar parameters (0, 1 or 2)
 *   (params)    their names in the public prototype, in order; inside the
 *               expressions the first is `a`, the second `b`
 *   reads       what the derivative reads besides the incoming gradient:
 *               CR_RD_NONE, CR_RD_X (the input), CR_RD_Y (the output) or
 *               CR_RD_XY. Backward refuses to run when a tensor it reads was
 *               written in place after the forward (version counters), so
 *               this must be exact: tests/test_gradcheck.c checks it.
 *   forward     y = f(v), an expression of the input element `v` and a, b
 *   derivative  dy/dx, an expression of x (input element), y (output
 *               element) and a, b; backward adds dy * derivative into dx
 *   valid       a condition on the named params, checked by the constructor
 *               (1 when any value is allowed)
 * Expressions may use T (float or double) and EXP, LOG, SQRT, ABS, POW,
 * TANH, SIGMOID, SOFTPLUS, which the kernels map to each type (f32 TANH and
 * SIGMOID are carousel's vectorisable gate functions, tensor/kernels.c).
 * Every op follows PyTorch's definition, including at its kinks.
 */
#ifndef CAROUSEL_UNARY_OPS_H
#define CAROUSEL_UNARY_OPS_H

/* clang-format off */
#define CR_UNARY_OPS(OP)                                                                                                   \
    /* name         KIND         np params     reads      forward y = f(v)              derivative dy/dx (x, y)        valid */ \
    OP(neg,         NEG,         0, (),        CR_RD_NONE, -v,                          -1,                            1)        /* -x */                       \
    OP(exp,         EXP,         0, (),        CR_RD_Y,    EXP(v),                      y,                             1)        /* e^x */                      \
    OP(ln,          LOG,         0, (),        CR_RD_X,    LOG(v),                      1 / x,                         1)        /* natural log; d = 1/x */     \
    OP(sqrt,        SQRT,        0, (),        CR_RD_Y,    SQRT(v),                     (T)0.5 / y,                    1)        /* d = 1/(2 sqrt x) */         \
    OP(abs,         ABS,         0, (),        CR_RD_X,    ABS(v),                      x > 0 ? 1 : x < 0 ? -1 : 0,    1)        /* |x|; d = sign x, 0 at 0 */  \
    OP(square,      SQUARE,      0, (),        CR_RD_X,    v * v,                       2 * x,                         1)        /* x^2 */                      \
    OP(reciprocal,  RECIP,       0, (),        CR_RD_Y,    1 / v,                       -y * y,                        1)        /* 1/x; d = -1/x^2 */          \
    OP(tanh,        TANH,        0, (),        CR_RD_Y,    TANH(v),                     1 - y * y,                     1)        /* d = 1 - tanh^2 x */         \
    OP(sigmoid,     SIGMOID,     0, (),        CR_RD_Y,    SIGMOID(v),                  y * (1 - y),                   1)        /* 1/(1+e^-x); d = s(1-s) */   \
    OP(relu,        RELU,        0, (),        CR_RD_Y,    v > 0 ? v : 0,               y > 0,                         1)        /* max(x, 0); d = [x > 0] */   \
    OP(softplus,    SOFTPLUS,    0, (),        CR_RD_X,    SOFTPLUS(v),                 SIGMOID(x),                    1)        /* log(1+e^x); d = s(x) */     \
    OP(hardtanh,    HARDTANH,    0, (),        CR_RD_X,    v < -1 ? -1 : v > 1 ? 1 : v, x > -1 && x < 1,               1)        /* clamp(x,-1,1) */            \
    OP(leaky_relu,  LEAKY_RELU,  1, (slope),   CR_RD_X,    v > 0 ? v : a * v,           x > 0 ? 1 : a,                 1)        /* x>0 ? x : slope x */        \
    OP(elu,         ELU,         1, (alpha),   CR_RD_XY,   v > 0 ? v : a * (EXP(v) - 1), x > 0 ? 1 : y + a,            1)        /* x>0 ? x : alpha(e^x-1) */   \
    OP(pow,         POW,         1, (p),       CR_RD_X,    POW(v, a),                   a == 0 ? 0 : a * POW(x, a - 1), 1)       /* x^p; d = p x^(p-1), 0 for p = 0 */ \
    OP(add_scalar,  ADD_SCALAR,  1, (c),       CR_RD_NONE, v + a,                       1,                             1)        /* x + c */                    \
    OP(mul_scalar,  MUL_SCALAR,  1, (c),       CR_RD_NONE, v * a,                       a,                             1)        /* c x */                      \
    OP(rsub_scalar, RSUB_SCALAR, 1, (c),       CR_RD_NONE, a - v,                       -1,                            1)        /* c - x (1 - f in one op) */  \
    OP(clamp,       CLAMP,       2, (lo, hi),  CR_RD_X,    v < a ? a : v > b ? b : v,   x >= a && x <= b,              lo <= hi) /* d = [lo <= x <= hi] */
/* clang-format on */

/* The reads column. */
#define CR_RD_NONE 0
#define CR_RD_X 1
#define CR_RD_Y 2
#define CR_RD_XY 3

/* Expanding the (params) column: CR_UNARY_PARAMS_<np> params gives the extra
 * prototype parameters, CR_UNARY_ARGS_<np> params the kernel's (a, b). */
#define CR_UNARY_PARAMS_0()
#define CR_UNARY_PARAMS_1(p) , double p
#define CR_UNARY_PARAMS_2(p, q) , double p, double q
#define CR_UNARY_ARGS_0() 0.0, 0.0
#define CR_UNARY_ARGS_1(p) p, 0.0
#define CR_UNARY_ARGS_2(p, q) p, q

#endif
