/* Float-type template for kernels.c: included once per type with T (float or
 * double), SFX (f32 or f64), the names tensor/unary_ops.h's expressions
 * use (EXP, TANH, ...) and SMEXP (softmax's exp as a double) defined. The
 * softmax loops here serve a dim that is not the last; f32 rows go to
 * softmax_kernels.c. */

#define CAT_(a, b) a##_##b
#define CAT2(a, b) CAT_(a, b)
#define FN(name) CAT2(name, SFX)

/* Apply `EXPR` (in terms of the input value `v`) from x into out, same shape. */
#define UNARY_LOOP(EXPR)                                                                                     \
    do {                                                                                                     \
        if (contig) {                                                                                        \
            T *restrict o_ = out->data;                                                                      \
            const T *restrict x_ = x->data;                                                                  \
            CR_PAR_FOR(                                                                                      \
                n > cr_parallel_threshold, "omp parallel for simd schedule(static)",                         \
                for (int64_t i = 0; i < n; i++) {                                                            \
                    T v = x_[i];                                                                             \
                    o_[i] = (T)(EXPR);                                                                       \
                });                                                                                          \
        } else {                                                                                             \
            const cr_tensor *ops_[2] = {out, x};                                                             \
            cr_iter it;                                                                                      \
            cr_iter_init(&it, out->ndim, out->shape, 2, ops_);                                               \
            T *o0 = out->data;                                                                               \
            const T *x0 = x->data;                                                                           \
            CR_PAR_FOR(                                                                                      \
                n > cr_parallel_threshold, "omp parallel for schedule(static)",                              \
                for (int64_t r = 0; r < it.outer; r++) {                                                     \
                    int64_t off[2];                                                                          \
                    cr_iter_row(&it, r, off);                                                                \
                    int64_t so = it.stride[0][it.ndim - 1], sx = it.stride[1][it.ndim - 1];                  \
                    if (so == 1 && sx == 1) { /* contiguous rows (a gate's slice): vectorises */             \
                        T *restrict or_ = o0 + off[0];                                                       \
                        const T *restrict xr_ = x0 + off[1];                                                 \
                        for (int64_t i = 0; i < it.inner; i++) {                                             \
                            T v = xr_[i];                                                                    \
                            or_[i] = (T)(EXPR);                                                              \
                        }                                                                                    \
                    } else {                                                                                 \
                        for (int64_t i = 0; i < it.inner; i++) {                                             \
                            T v = x0[off[1] + i * sx];                                                       \
                            o0[off[0] + i * so] = (T)(EXPR);                                                 \
                        }                                                                                    \
                    }                                                                                        \
                });                                                                                          \
        }                                                                                                    \
    } while (0)

/* 1/(1+e^-x), split by sign so the exponential never overflows (the f64
 * SIGMOID; f32 uses the gate function) */
static inline T FN(sigmoid)(T x)
{
    if (x >= 0) return (T)1 / ((T)1 + EXP(-x));
    T e = EXP(x);
    return e / ((T)1 + e);
}

/* One case per line of tensor/unary_ops.h. */
static void FN(unary)(cr_unary_kind k, cr_tensor *out, const cr_tensor *x, T a, T b)
{
    int64_t n = cr_numel(out);
    bool contig = cr_is_contiguous(out) && cr_is_contiguous(x);
    (void)a;
    (void)b;
    switch (k) {
#define FORWARD_(name, KIND, np, params, reads, fwd, deriv, valid)                                           \
    case CR_U_##KIND: UNARY_LOOP(fwd); break;
        CR_UNARY_OPS(FORWARD_)
#undef FORWARD_
    case CR_U_COUNT_: break;
    }
}
#undef UNARY_LOOP

/* out = EXPR(u, v) with u from x, v from y, broadcast. */
#define BINARY_LOOP(EXPR)                                                                                    \
    do {                                                                                                     \
        if (same) {                                                                                          \
            T *restrict o_ = out->data;                                                                      \
            const T *x_ = x->data, *y_ = y->data;                                                            \
            CR_PAR_FOR(                                                                                      \
                n > cr_parallel_threshold, "omp parallel for simd schedule(static)",                         \
                for (int64_t i = 0; i < n; i++) {                                                            \
                    T u = x_[i], v = y_[i];                                                                  \
                    o_[i] = (EXPR);                                                                          \
                });                                                                                          \
        } else {                                                                                             \
            CR_PAR_FOR(                                                                                      \
                n > cr_parallel_threshold, "omp parallel for schedule(static)",                              \
                for (int64_t r = 0; r < it.outer; r++) {                                                     \
                    int64_t off[3];                                                                          \
                    cr_iter_row(&it, r, off);                                                                \
                    T *o_ = o0 + off[0];                                                                     \
                    const T *x_ = x0 + off[1], *y_ = y0 + off[2];                                            \
                    int64_t so = it.stride[0][it.ndim - 1], sx = it.stride[1][it.ndim - 1],                  \
                            sy = it.stride[2][it.ndim - 1];                                                  \
                    if (so == 1 && sx == 1 && sy == 1) {                                                     \
                        T *restrict or_ = o_;                                                                \
                        for (int64_t i = 0; i < it.inner; i++) {                                             \
                            T u = x_[i], v = y_[i];                                                          \
                            or_[i] = (EXPR);                                                                 \
                        }                                                                                    \
                    } else {                                                                                 \
                        for (int64_t i = 0; i < it.inner; i++) {                                             \
                            T u = x_[i * sx], v = y_[i * sy];                                                \
                            o_[i * so] = (EXPR);                                                             \
                        }                                                                                    \
                    }                                                                                        \
                });                                                                                          \
        }                                                                                                    \
    } while (0)

static void FN(binary)(cr_binary_kind k, cr_tensor *out, const cr_tensor *x, const cr_tensor *y)
{
    int64_t n = cr_numel(out);
    bool same = cr_same_shape(out, x) && cr_same_shape(out, y) && cr_is_contiguous(out) &&
                cr_is_contiguous(x) && cr_is_contiguous(y);
    cr_iter it;
    if (!same) {
        const cr_tensor *ops[3] = {out, x, y};
        cr_iter_init(&it, out->ndim, out->shape, 3, ops);
    }
    T *o0 = out->data;
    const T *x0 = x->data, *y0 = y->data;
    switch (k) {
    case CR_B_ADD: BINARY_LOOP(u + v); break;
    case CR_B_SUB: BINARY_LOOP(u - v); break;
    case CR_B_MUL: BINARY_LOOP(u * v); break;
    case CR_B_DIV: BINARY_LOOP(u / v); break;
    case CR_B_MAX: BINARY_LOOP(u >= v ? u : v); break;
    case CR_B_MIN: BINARY_LOOP(u <= v ? u : v); break;
    case CR_B_GE: BINARY_LOOP((T)(u >= v)); break;
    case CR_B_GT: BINARY_LOOP((T)(u > v)); break;
    case CR_B_LE: BINARY_LOOP((T)(u <= v)); break;
    case CR_B_LT: BINARY_LOOP((T)(u < v)); break;
    }
}
#undef BINARY_LOOP

/* acc += x (* y) over `shape`, the broadcast of all three: acc dims of size 1
 * sum what lies along them, x or y dims of size 1 are repeated. With `set`
 * (a gradient's first write) acc's old contents are not read: acc = x (* y);
 * the caller zeroes acc first when it is summed into (fewer elements than
 * `shape`). */
static void FN(accumulate)(cr_tensor *acc, const cr_tensor *x, const cr_tensor *y, int ndim,
                           const int64_t *shape, bool set)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    bool same = cr_numel(acc) == n && cr_is_contiguous(acc) && cr_is_contiguous(x) && cr_numel(x) == n &&
                (!y || (cr_is_contiguous(y) && cr_numel(y) == n));
    if (same) {
        T *restrict a_ = acc->data;
        const T *x_ = x->data;
        if (y) {
            const T *y_ = y->data;
            if (set)
                CR_PAR_FOR(n > cr_parallel_threshold, "omp parallel for simd schedule(static)",
                           for (int64_t i = 0; i < n; i++) a_[i] = x_[i] * y_[i];);
            else
                CR_PAR_FOR(n > cr_parallel_threshold, "omp parallel for simd schedule(static)",
                           for (int64_t i = 0; i < n; i++) a_[i] += x_[i] * y_[i];);
        } else {
            /* A copy by memcpy, whose wide stores this file's baseline build
             * lacks (its loop stored 16 bytes at a time: the weight-gradient
             * stacking copies were 2.4% of the hidden-512 char-LM step), in
             * chunks of 64 KB when threads share it. */
            const int64_t chunk = ((int64_t)1 << 16) / (int64_t)sizeof(T), n_chunks = (n + chunk - 1) / chunk;
            if (set)
                CR_PAR_FOR(
                    n > cr_parallel_threshold, "omp parallel for schedule(static)",
                    for (int64_t c = 0; c < n_chunks; c++) {
                        int64_t lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
                        memcpy(a_ + lo, x_ + lo, (size_t)len * sizeof(T));
                    });
            else
                CR_PAR_FOR(n > cr_parallel_threshold, "omp parallel for simd schedule(static)",
                           for (int64_t i = 0; i < n; i++) a_[i] += x_[i];);
        }
        return;
    }
    const cr_tensor *ops[3] = {acc, x, y ? y : x};
    cr_iter it;
    cr_iter_init(&it, ndim, shape, 3, ops);
    bool reduces = cr_numel(acc) < n;
    T *a0 = acc->data;
    const T *x0 = x->data, *y0 = y ? y->data : NULL;
    int64_t sa = it.stride[0][it.ndim - 1], sx = it.stride[1][it.ndim - 1], sy = it.stride[2][it.ndim - 1];
    /* When acc is summed into, rows may share acc elements: run serially so the
     * sum has one fixed order. Otherwise rows are disjoint and run in parallel. */
    CR_PAR_FOR(
        !reduces && n > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t r = 0; r < it.outer; r++) {
            int64_t o[3];
            cr_iter_row(&it, r, o);
            T *a_ = a0 + o[0];
            const T *x_ = x0 + o[1];
            if (sa == 0 && it.inner > 1) { /* the row sums into one element, in double */
                double s = 0;
                if (y0)
                    for (int64_t i = 0; i < it.inner; i++)
                        s += (double)x_[i * sx] * (double)y0[o[2] + i * sy];
                else
                    for (int64_t i = 0; i < it.inner; i++) s += (double)x_[i * sx];
                a_[0] += (T)s;
            } else if (y0) {
                const T *y_ = y0 + o[2];
                if (set && !reduces)
                    for (int64_t i = 0; i < it.inner; i++) a_[i * sa] = x_[i * sx] * y_[i * sy];
                else
                    for (int64_t i = 0; i < it.inner; i++) a_[i * sa] += x_[i * sx] * y_[i * sy];
            } else {
                if (set && !reduces)
                    for (int64_t i = 0; i < it.inner; i++) a_[i * sa] = x_[i * sx];
                else
                    for (int64_t i = 0; i < it.inner; i++) a_[i * sa] += x_[i * sx];
            }
        });
}

static void FN(where)(cr_tensor *out, const cr_tensor *cond, const cr_tensor *x, const cr_tensor *y)
{
    const cr_tensor *ops[4] = {out, cond, x, y};
    cr_iter it;
    cr_iter_init(&it, out->ndim, out->shape, 4, ops);
    T *o0 = out->data;
    const T *x0 = x->data, *y0 = y->data;
    for (int64_t r = 0; r < it.outer; r++) {
        int64_t o[4];
        cr_iter_row(&it, r, o);
        int last = it.ndim - 1;
        for (int64_t i = 0; i < it.inner; i++) {
            int64_t ci = o[1] + i * it.stride[1][last];
            bool c = cond->dtype == CR_F32   ? ((const float *)cond->data)[ci] != 0
                     : cond->dtype == CR_F64 ? ((const double *)cond->data)[ci] != 0
                                             : ((const int32_t *)cond->data)[ci] != 0;
            o0[o[0] + i * it.stride[0][last]] =
                c ? x0[o[2] + i * it.stride[2][last]] : y0[o[3] + i * it.stride[3][last]];
        }
    }
}

/* Sum over fixed blocks, then the block sums in order: the same result on any
 * number of threads. */
#define REDUCE_BLOCK 8192
static double FN(sum_all)(const T *x, int64_t n)
{
    int64_t nb = (n + REDUCE_BLOCK - 1) / REDUCE_BLOCK;
    if (nb <= 1 || nb > 4096) {
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += x[i];
        return s;
    }
    double part[4096];
    CR_PAR_FOR(
        n > cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t b = 0; b < nb; b++) {
            int64_t lo = b * REDUCE_BLOCK, hi = lo + REDUCE_BLOCK < n ? lo + REDUCE_BLOCK : n;
            double s = 0;
            for (int64_t i = lo; i < hi; i++) s += x[i];
            part[b] = s;
        });
    double s = 0;
    for (int64_t b = 0; b < nb; b++) s += part[b];
    return s;
}

static void FN(reduce)(cr_reduce_kind k, T *out, int32_t *arg, const T *x, int64_t outer, int64_t n,
                       int64_t inner)
{
    if (outer == 1 && inner == 1 && (k == CR_R_SUM || k == CR_R_MEAN)) {
        double s = FN(sum_all)(x, n);
        out[0] = (T)(k == CR_R_MEAN ? (n ? s / (double)n : NAN) : s);
        return;
    }
    int64_t total = outer * n * inner;
    CR_PAR_FOR(
        total > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t o = 0; o < outer; o++) {
            const T *xo = x + o * n * inner;
            T *out_o = out + o * inner;
            if (k == CR_R_SUM || k == CR_R_MEAN) {
                if (inner == 1) {
                    double s = 0;
                    for (int64_t j = 0; j < n; j++) s += xo[j];
                    out_o[0] = (T)(k == CR_R_MEAN ? (n ? s / (double)n : NAN) : s);
                } else {
                    for (int64_t i = 0; i < inner; i++) out_o[i] = 0;
                    for (int64_t j = 0; j < n; j++)
                        for (int64_t i = 0; i < inner; i++) out_o[i] += xo[j * inner + i];
                    if (k == CR_R_MEAN)
                        for (int64_t i = 0; i < inner; i++) out_o[i] = n ? out_o[i] / (T)n : (T)NAN;
                }
            } else {
                bool mx = k == CR_R_MAX;
                for (int64_t i = 0; i < inner; i++) {
                    T best = xo[i];
                    int32_t bi = 0;
                    for (int64_t j = 1; j < n; j++) {
                        T v = xo[j * inner + i];
                        /* NaN wins, as in PyTorch; ties keep the first index */
                        if ((mx ? v > best : v < best) || (v != v && best == best)) {
                            best = v;
                            bi = (int32_t)j;
                        }
                    }
                    out_o[i] = best;
                    if (arg) arg[o * inner + i] = bi;
                }
            }
        });
}

static void FN(softmax)(T *out, const T *x, int64_t outer, int64_t n, int64_t inner, bool take_log)
{
    int64_t total = outer * n * inner;
    if (n == 0) return; /* nothing to normalise; xo[0] does not exist */
    CR_PAR_FOR(
        total > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t o = 0; o < outer; o++) {
            for (int64_t i = 0; i < inner; i++) {
                const T *xo = x + o * n * inner + i;
                T *oo = out + o * n * inner + i;
                T m = xo[0];
                for (int64_t j = 1; j < n; j++)
                    if (xo[j * inner] > m) m = xo[j * inner];
                double s = 0;
                for (int64_t j = 0; j < n; j++) s += SMEXP(xo[j * inner] - m);
                if (take_log) {
                    T lse = (T)(log(s));
                    for (int64_t j = 0; j < n; j++) oo[j * inner] = xo[j * inner] - m - lse;
                } else {
                    for (int64_t j = 0; j < n; j++) oo[j * inner] = (T)(SMEXP(xo[j * inner] - m) / s);
                }
            }
        });
}

/* gx += gy * dy/dx (or gx = ... with `set`, a gradient's first write), one
 * case per line of tensor/unary_ops.h, with x (input) and y (output) in
 * scope; only what the line's reads column names is loaded (the other
 * pointer may be NULL). n contiguous elements per operand. */
#define UNARY_BACKWARD_LOOP(OP, deriv, reads)                                                                \
    CR_PAR_FOR(                                                                                              \
        n > cr_parallel_threshold, "omp parallel for simd schedule(static)",                                 \
        for (int64_t i = 0; i < n; i++) {                                                                    \
            T x = ((reads)&CR_RD_X) ? xs[i] : 0, y = ((reads)&CR_RD_Y) ? ys[i] : 0;                          \
            (void)x;                                                                                         \
            (void)y;                                                                                         \
            gx[i] OP gy[i] * (T)(deriv);                                                                     \
        })
static void FN(unary_backward)(cr_unary_kind k, T *restrict gx, const T *gy, const T *xs, const T *ys,
                               int64_t n, T a, T b, bool set)
{
    (void)a;
    (void)b;
    switch (k) {
#define BACKWARD_(name, KIND, np, params, reads, fwd, deriv, valid)                                          \
    case CR_U_##KIND:                                                                                        \
        if (set)                                                                                             \
            UNARY_BACKWARD_LOOP(=, deriv, reads);                                                            \
        else                                                                                                 \
            UNARY_BACKWARD_LOOP(+=, deriv, reads);                                                           \
        break;
        CR_UNARY_OPS(BACKWARD_)
#undef BACKWARD_
    case CR_U_COUNT_: break;
    }
}
#undef UNARY_BACKWARD_LOOP

/* The same over strided operands whose rows are contiguous (a gate's slice of
 * a [B, 4H] gradient): one flat call per row of the merged iteration. Returns
 * false, doing nothing, when some row is not contiguous. */
static bool FN(unary_backward_rows)(cr_unary_kind k, cr_tensor *gx, const cr_tensor *gy, const cr_tensor *x,
                                    const cr_tensor *y, T a, T b, bool set)
{
    const cr_tensor *ops[4] = {gx, gy, x ? x : gy, y ? y : gy};
    cr_iter it;
    cr_iter_init(&it, gx->ndim, gx->shape, 4, ops);
    for (int k2 = 0; k2 < 4; k2++)
        if (it.stride[k2][it.ndim - 1] != 1 && it.inner > 1) return false;
    T *g0 = gx->data;
    const T *gy0 = gy->data, *x0 = x ? x->data : NULL, *y0 = y ? y->data : NULL;
    int64_t n = cr_numel(gx);
    CR_PAR_FOR(
        n > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t r = 0; r < it.outer; r++) {
            int64_t o[4];
            cr_iter_row(&it, r, o);
            FN(unary_backward)
            (k, g0 + o[0], gy0 + o[1], x0 ? x0 + o[2] : NULL, y0 ? y0 + o[3] : NULL, it.inner, a, b, set);
        });
    return true;
}

static void FN(softmax_backward)(T *gx, const T *gy, const T *y, int64_t outer, int64_t n, int64_t inner,
                                 bool take_log)
{
    int64_t total = outer * n * inner;
    CR_PAR_FOR(
        total > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t o = 0; o < outer; o++) {
            for (int64_t i = 0; i < inner; i++) {
                int64_t base = o * n * inner + i;
                double s = 0;
                if (take_log) {
                    /* y = log softmax: gx = gy - softmax * sum(gy) */
                    for (int64_t j = 0; j < n; j++) s += gy[base + j * inner];
                    for (int64_t j = 0; j < n; j++)
                        gx[base + j * inner] += gy[base + j * inner] - (T)(SMEXP(y[base + j * inner]) * s);
                } else {
                    /* y = softmax: gx = y * (gy - sum(gy * y)) */
                    for (int64_t j = 0; j < n; j++) s += (double)gy[base + j * inner] * y[base + j * inner];
                    for (int64_t j = 0; j < n; j++)
                        gx[base + j * inner] += y[base + j * inner] * (gy[base + j * inner] - (T)s);
                }
            }
        });
}

static void FN(index_add_dim)(T *gx, const int32_t *idx, const T *gy, int64_t outer, int64_t n, int64_t inner)
{
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            int64_t j = idx[o * inner + i];
            gx[o * n * inner + j * inner + i] += gy[o * inner + i];
        }
}

#undef FN
#undef CAT2
#undef CAT_
