/* Float-type template for conv_kernels.c: included once per type with T
 * (float or double) and SFX (f32 or f64) defined. Every loop writes disjoint
 * parts of its output per iteration (a row of the columns, or one input
 * plane), so the OpenMP loops give the same numbers on any thread count. */

#define CAT_(a, b) a##_##b
#define CAT2(a, b) CAT_(a, b)
#define FN(name) CAT2(name, SFX)

/* d[0..n) += s[0..n); restrict lets the compiler vectorise without
 * checking for overlap. */
static inline void FN(add_run)(T *restrict d, const T *restrict s, int64_t n)
{
    for (int64_t i = 0; i < n; i++) d[i] += s[i];
}

/* Row (c, ki, kj) of the columns holds, for every sample of the block and
 * every output position (oh, ow), x[n, c, oh SH - PH + ki DH, ow SW - PW + kj DW].
 * The output rows and columns that read padding are known per (ki, kj)
 * (window_span), so the inner loops are plain copies. */
static void FN(im2col)(const cr_window *g, const T *x, int64_t n0, int64_t nb, T *cols)
{
    const int64_t KK = g->KH * g->KW, rows = g->C * KK, OH = g->OH, OW = g->OW, P = OH * OW, width = nb * P;
    const int64_t plane = g->H * g->W, W = g->W, SH = g->SH, SW = g->SW;
    CR_PAR_FOR(
        rows * width > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t r = 0; r < rows; r++) {
            int64_t c = r / KK, ki = r % KK / g->KW, kj = r % g->KW;
            int64_t off_h = ki * g->DH - g->PH, off_w = kj * g->DW - g->PW, hlo, hhi, lo, hi;
            window_span(g->H, OH, SH, off_h, &hlo, &hhi);
            window_span(W, OW, SW, off_w, &lo, &hi);
            for (int64_t n = 0; n < nb; n++) {
                const T *src = x + ((n0 + n) * g->C + c) * plane;
                T *d = cols + r * width + n * P;
                for (int64_t i = 0; i < hlo * OW; i++) d[i] = 0;
                for (int64_t oh = hlo; oh < hhi; oh++) {
                    const T *row = src + (oh * SH + off_h) * W;
                    T *dd = d + oh * OW;
                    for (int64_t ow = 0; ow < lo; ow++) dd[ow] = 0;
                    if (SW == 1) /* (not a restrict copy: GCC would call memcpy for these short runs) */
                        for (int64_t ow = lo; ow < hi; ow++) dd[ow] = row[ow + off_w];
                    else
                        for (int64_t ow = lo; ow < hi; ow++) dd[ow] = row[ow * SW + off_w];
                    for (int64_t ow = hi; ow < OW; ow++) dd[ow] = 0;
                }
                for (int64_t i = hhi * OW; i < P; i++) d[i] = 0;
            }
        });
}

/* The adjoint of im2col: every column entry is added back to the input
 * element it was read from. One iteration owns one (sample, channel) plane
 * and adds into it in a fixed order (ki, kj, oh, ow). */
static void FN(col2im)(const cr_window *g, const T *cols, int64_t n0, int64_t nb, T *gx)
{
    const int64_t OH = g->OH, OW = g->OW, P = OH * OW, width = nb * P, plane = g->H * g->W;
    const int64_t W = g->W, SH = g->SH, SW = g->SW, planes = nb * g->C;
    CR_PAR_FOR(
        planes * g->KH * g->KW * P > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t q = 0; q < planes; q++) {
            int64_t n = q / g->C, c = q % g->C;
            T *dst = gx + ((n0 + n) * g->C + c) * plane;
            for (int64_t ki = 0; ki < g->KH; ki++) {
                int64_t off_h = ki * g->DH - g->PH, hlo, hhi;
                window_span(g->H, OH, SH, off_h, &hlo, &hhi);
                for (int64_t kj = 0; kj < g->KW; kj++) {
                    int64_t off_w = kj * g->DW - g->PW, lo, hi;
                    window_span(W, OW, SW, off_w, &lo, &hi);
                    const T *src = cols + ((c * g->KH + ki) * g->KW + kj) * width + n * P;
                    for (int64_t oh = hlo; oh < hhi; oh++) {
                        T *row = dst + (oh * SH + off_h) * W;
                        const T *s = src + oh * OW;
                        if (SW == 1)
                            FN(add_run)(row + lo + off_w, s + lo, hi - lo);
                        else
                            for (int64_t ow = lo; ow < hi; ow++) row[ow * SW + off_w] += s[ow];
                    }
                }
            }
        });
}

/* ---- the direct convolution ----
 * One vector VT is 64 bytes of T (V lanes: 16 floats, 8 doubles), whatever
 * the CPU: lane l of a tile always holds position ow0 + l, so every sum is
 * taken in the same order on every code path and thread count. The kernels
 * are built twice with GCC's target_clones (the library targets baseline
 * x86-64; the AVX-512 clone is chosen at load time and holds 16-float
 * tiles in one register). conv_kernels.c lets products and sums fuse into
 * FMAs, so the clone's last bits can differ from the baseline's, never
 * between thread counts. */
typedef T FN(vec) __attribute__((vector_size(64)));
typedef T FN(vec_u) __attribute__((vector_size(64), aligned(sizeof(T)))); /* at any element */
#define VT FN(vec)
#define V ((int64_t)(64 / sizeof(T)))
/* the tile at p (GCC's vector types may alias their element type) */
#define VLOAD(p) (*(const FN(vec_u) *)(p))

/* xp [C, Hp, Wq] = the C planes of one sample, x[c] (H x W), inside a border
 * of PH rows and PW columns of zeros, each row then V more zeros
 * (Hp = H + 2 PH, Wq = W + 2 PW + V): a tile of V lanes starting at any
 * output column then reads inside its row. */
static void FN(pad_planes)(const cr_window *g, int64_t C, const T *x, T *xp)
{
    const int64_t Hp = g->H + 2 * g->PH, Wq = g->W + 2 * g->PW + V;
    for (int64_t c = 0; c < C; c++) {
        T *d = xp + c * Hp * Wq;
        const T *s = x + c * g->H * g->W;
        memset(d, 0, (size_t)(g->PH * Wq) * sizeof(T));
        for (int64_t h = 0; h < g->H; h++) {
            T *r = d + (g->PH + h) * Wq;
            memset(r, 0, (size_t)g->PW * sizeof(T));
            memcpy(r + g->PW, s + h * g->W, (size_t)g->W * sizeof(T));
            memset(r + g->PW + g->W, 0, (size_t)(Wq - g->PW - g->W) * sizeof(T));
        }
        memset(d + (g->PH + g->H) * Wq, 0, (size_t)(g->PH * Wq) * sizeof(T));
    }
}

/* Output rows oh of channels o0 .. o0+og (og <= 8, a constant after
 * inlining, so the accumulators stay in registers), tile by tile: y = b +
 * the sum over (c, ki, kj) of w[o,c,ki,kj] times the tile of the padded
 * input row oh SH + ki DH from column ow0 + kj DW. */
static inline __attribute__((always_inline)) void FN(direct_rows)(const cr_window *g, int64_t Cg, int og,
                                                                  const T *w, const T *b, const T *xp, T *y,
                                                                  int64_t P, int64_t oh)
{
    const int64_t KK = g->KH * g->KW, Hp = g->H + 2 * g->PH, Wq = g->W + 2 * g->PW + V, OW = g->OW;
    for (int64_t ow0 = 0; ow0 < OW; ow0 += V) {
        VT acc[8];
        for (int o = 0; o < og; o++) acc[o] = (VT){0} + (b ? b[o] : 0);
        for (int64_t c = 0; c < Cg; c++)
            for (int64_t ki = 0; ki < g->KH; ki++) {
                const T *row = xp + (c * Hp + oh * g->SH + ki * g->DH) * Wq + ow0;
                const T *wr = w + c * KK + ki * g->KW;
                for (int64_t kj = 0; kj < g->KW; kj++) {
                    VT xv = VLOAD(row + kj * g->DW);
                    for (int o = 0; o < og; o++) acc[o] += wr[o * Cg * KK + kj] * xv;
                }
            }
        int64_t n = OW - ow0 < V ? OW - ow0 : V;
        for (int o = 0; o < og; o++) memcpy(y + o * P + oh * OW + ow0, &acc[o], (size_t)n * sizeof(T));
    }
}

#define DIRECT_SWITCH(CALL)                                                                                  \
    switch (og) {                                                                                            \
    case 1: CALL(1); break;                                                                                  \
    case 2: CALL(2); break;                                                                                  \
    case 3: CALL(3); break;                                                                                  \
    case 4: CALL(4); break;                                                                                  \
    case 5: CALL(5); break;                                                                                  \
    case 6: CALL(6); break;                                                                                  \
    case 7: CALL(7); break;                                                                                  \
    default: CALL(8); break;                                                                                 \
    }

/* The direct convolution of samples [n0, n0+nb), stride 1 along W, output
 * channels in runs of at most 8 (one accumulator tile each). One sample at a
 * time: no sum depends on threads. xp: C Hp Wq elements (pad_planes). */
__attribute__((target_clones("arch=x86-64-v4", "default"))) static void
FN(conv_direct)(const cr_window *g, int64_t G, int64_t O, const T *x, const T *w, const T *b, int64_t n0,
                int64_t nb, T *y, T *xp)
{
    const int64_t C = g->C, Cg = C / G, Og = O / G, KK = g->KH * g->KW, P = g->OH * g->OW;
    const int64_t Hp = g->H + 2 * g->PH, Wq = g->W + 2 * g->PW + V;
    for (int64_t n = n0; n < n0 + nb; n++) {
        FN(pad_planes)(g, C, x + n * C * g->H * g->W, xp);
        for (int64_t k = 0; k < G; k++)
            for (int64_t o0 = 0; o0 < Og; o0 += 8) {
                int og = Og - o0 < 8 ? (int)(Og - o0) : 8;
                int64_t o = k * Og + o0;
                const T *wo = w + o * Cg * KK, *bo = b ? b + o : NULL, *xk = xp + k * Cg * Hp * Wq;
                T *yo = y + (n * O + o) * P;
                for (int64_t oh = 0; oh < g->OH; oh++) {
#define ROWS(OG) FN(direct_rows)(g, Cg, OG, wo, bo, xk, yo, P, oh)
                    DIRECT_SWITCH(ROWS)
#undef ROWS
                }
            }
    }
}

/* Lane sums for weights (c, ki, kj) of channels o0 .. o0+og of one sample:
 * s[o][(c, ki, kj)][l] += the sum over (oh, tiles) of lane l of
 * dy[o] (gyp rows, OWq long, zero past OW) times the input tile. */
static inline __attribute__((always_inline)) void
FN(direct_dw_lanes)(const cr_window *g, int64_t Cg, int og, const T *xp, const T *gyp, int64_t OWq, T *s)
{
    const int64_t KK = g->KH * g->KW, Hp = g->H + 2 * g->PH, Wq = g->W + 2 * g->PW + V, OHq = g->OH * OWq;
    for (int64_t c = 0; c < Cg; c++)
        for (int64_t ki = 0; ki < g->KH; ki++)
            for (int64_t kj = 0; kj < g->KW; kj++) {
                VT acc[8];
                for (int o = 0; o < og; o++) acc[o] = (VT){0};
                for (int64_t oh = 0; oh < g->OH; oh++) {
                    const T *row = xp + (c * Hp + oh * g->SH + ki * g->DH) * Wq + kj * g->DW;
                    const T *d = gyp + oh * OWq;
                    for (int64_t ow0 = 0; ow0 < OWq; ow0 += V) {
                        VT xv = VLOAD(row + ow0);
                        for (int o = 0; o < og; o++) acc[o] += VLOAD(d + o * OHq + ow0) * xv;
                    }
                }
                T *sk = s + ((c * KK + ki * g->KW + kj) * V);
                for (int o = 0; o < og; o++) {
                    VT t = VLOAD(sk + o * Cg * KK * V) + acc[o];
                    memcpy(sk + o * Cg * KK * V, &t, sizeof t);
                }
            }
}

/* dw [O, Cg KH KW] = the weight gradient of the direct convolution over
 * samples [n0, n0+nb): dw[o,c,ki,kj] = the sum over (n, oh, ow) of
 * gy[n,o,oh,ow] xpad[n, c, oh SH + ki DH, ow + kj DW], in an order fixed by
 * the shapes: V lanes per weight (ow mod V), summed over tiles and rows into
 * registers per sample, then into lane sums (acc) sample by sample, then the
 * lanes pairwise. xp: C Hp Wq elements; gyp: O OH OWq (the sample's gy with
 * rows padded to whole tiles by zeros); acc: O Cg KH KW V. */
__attribute__((target_clones("arch=x86-64-v4", "default"))) static void
FN(conv_direct_dw)(const cr_window *g, int64_t G, int64_t O, const T *x, const T *gy, int64_t n0, int64_t nb,
                   T *dw, T *xp, T *gyp, T *acc)
{
    const int64_t C = g->C, Cg = C / G, Og = O / G, KK = g->KH * g->KW, OW = g->OW, P = g->OH * OW;
    const int64_t Hp = g->H + 2 * g->PH, Wq = g->W + 2 * g->PW + V, nw = O * Cg * KK;
    const int64_t OWq = (OW + V - 1) / V * V;
    memset(acc, 0, (size_t)(nw * V) * sizeof(T));
    for (int64_t n = n0; n < n0 + nb; n++) {
        FN(pad_planes)(g, C, x + n * C * g->H * g->W, xp);
        for (int64_t r = 0; r < O * g->OH; r++) {
            memcpy(gyp + r * OWq, gy + n * O * P + r * OW, (size_t)OW * sizeof(T));
            memset(gyp + r * OWq + OW, 0, (size_t)(OWq - OW) * sizeof(T));
        }
        for (int64_t k = 0; k < G; k++)
            for (int64_t o0 = 0; o0 < Og; o0 += 8) {
                int og = Og - o0 < 8 ? (int)(Og - o0) : 8;
                int64_t o = k * Og + o0;
                const T *xk = xp + k * Cg * Hp * Wq, *go = gyp + o * g->OH * OWq;
                T *so = acc + o * Cg * KK * V;
#define LANES_OF(OG) FN(direct_dw_lanes)(g, Cg, OG, xk, go, OWq, so)
                DIRECT_SWITCH(LANES_OF)
#undef LANES_OF
            }
    }
    for (int64_t j = 0; j < nw; j++) {
        T *s = acc + j * V;
        for (int64_t h = V / 2; h >= 1; h /= 2)
            for (int64_t l = 0; l < h; l++) s[l] += s[l + h];
        dw[j] = s[0];
    }
}
#undef DIRECT_SWITCH
#undef VLOAD
#undef V
#undef VT

/* Max over each window, padding being -inf; the index of the first maximum
 * in scan order, a NaN taking over (PyTorch's `val > max || isnan(val)`).
 * Starting from the window's first element gives the same result (PyTorch
 * starts from -inf with the first index). The update is written without
 * branches: which element wins is data-dependent and mispredicts. */
static void FN(max_pool)(const cr_window *g, int64_t planes, const T *x, T *out, int32_t *arg)
{
    const int64_t plane = g->H * g->W, P = g->OH * g->OW;
    const bool two = g->KH == 2 && g->KW == 2 && g->SH == 2 && g->SW == 2 && g->PH == 0 && g->PW == 0 &&
                     g->DH == 1 && g->DW == 1;
    CR_PAR_FOR(
        planes * P * g->KH * g->KW > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t q = 0; q < planes; q++) {
            const T *src = x + q * plane;
            T *o = out + q * P;
            int32_t *a = arg + q * P;
            if (two) { /* 2x2, stride 2: the common case */
                for (int64_t oh = 0; oh < g->OH; oh++) {
                    const T *r0 = src + 2 * oh * g->W, *r1 = r0 + g->W;
                    int32_t base = (int32_t)(2 * oh * g->W), W = (int32_t)g->W;
                    for (int64_t ow = 0; ow < g->OW; ow++) {
                        int32_t i0 = base + 2 * (int32_t)ow;
                        T best = r0[2 * ow], v;
                        int32_t bi = i0;
                        bool t;
                        v = r0[2 * ow + 1], t = v > best || v != v, best = t ? v : best, bi = t ? i0 + 1 : bi;
                        v = r1[2 * ow], t = v > best || v != v, best = t ? v : best, bi = t ? i0 + W : bi;
                        v = r1[2 * ow + 1], t = v > best || v != v, best = t ? v : best,
                        bi = t ? i0 + W + 1 : bi;
                        o[oh * g->OW + ow] = best;
                        a[oh * g->OW + ow] = bi;
                    }
                }
                continue;
            }
            for (int64_t oh = 0; oh < g->OH; oh++) {
                int64_t h0 = oh * g->SH - g->PH, klo = 0, khi = g->KH;
                while (klo < khi && h0 + klo * g->DH < 0) klo++;
                while (khi > klo && h0 + (khi - 1) * g->DH >= g->H) khi--;
                for (int64_t ow = 0; ow < g->OW; ow++) {
                    int64_t w0 = ow * g->SW - g->PW, jlo = 0, jhi = g->KW;
                    while (jlo < jhi && w0 + jlo * g->DW < 0) jlo++;
                    while (jhi > jlo && w0 + (jhi - 1) * g->DW >= g->W) jhi--;
                    if (klo == khi || jlo == jhi) { /* a window of padding only (the ops never make one) */
                        o[oh * g->OW + ow] = -(T)INFINITY;
                        a[oh * g->OW + ow] = -1;
                        continue;
                    }
                    int64_t bi = (h0 + klo * g->DH) * g->W + w0 + jlo * g->DW;
                    T best = src[bi];
                    for (int64_t ki = klo; ki < khi; ki++)
                        for (int64_t kj = jlo; kj < jhi; kj++) {
                            int64_t i = (h0 + ki * g->DH) * g->W + w0 + kj * g->DW;
                            T v = src[i];
                            bool t = v > best || v != v;
                            best = t ? v : best;
                            bi = t ? i : bi;
                        }
                    o[oh * g->OW + ow] = best;
                    a[oh * g->OW + ow] = (int32_t)bi;
                }
            }
        });
}

/* gx[argmax] += gy, plane by plane (one iteration owns one plane). */
static void FN(max_pool_backward)(const cr_window *g, int64_t planes, T *gx, const T *gy, const int32_t *arg)
{
    const int64_t plane = g->H * g->W, P = g->OH * g->OW;
    CR_PAR_FOR(planes * P > cr_parallel_threshold, "omp parallel for schedule(static)",
               for (int64_t q = 0; q < planes; q++) for (int64_t k = 0; k < P; k++) if (arg[q * P + k] >= 0)
                   gx[q * plane + arg[q * P + k]] += gy[q * P + k];);
}

/* Mean over each window with the padding counted as zeros: the divisor is
 * always KH KW (PyTorch's count_include_pad=True; without ceil_mode a window
 * never reaches past the padding). */
static void FN(avg_pool)(const cr_window *g, int64_t planes, const T *x, T *out)
{
    const int64_t plane = g->H * g->W, P = g->OH * g->OW;
    const T inv = (T)1 / (T)(g->KH * g->KW);
    CR_PAR_FOR(
        planes * P * g->KH * g->KW > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t q = 0; q < planes; q++) {
            const T *src = x + q * plane;
            for (int64_t oh = 0; oh < g->OH; oh++)
                for (int64_t ow = 0; ow < g->OW; ow++) {
                    int64_t h0 = oh * g->SH - g->PH, w0 = ow * g->SW - g->PW;
                    T s = 0;
                    for (int64_t ki = 0; ki < g->KH; ki++) {
                        int64_t ih = h0 + ki * g->DH;
                        if (ih < 0 || ih >= g->H) continue;
                        for (int64_t kj = 0; kj < g->KW; kj++) {
                            int64_t iw = w0 + kj * g->DW;
                            if (iw >= 0 && iw < g->W) s += src[ih * g->W + iw];
                        }
                    }
                    out[q * P + oh * g->OW + ow] = s * inv;
                }
        });
}

/* gx[window] += gy / (KH KW), plane by plane. */
static void FN(avg_pool_backward)(const cr_window *g, int64_t planes, T *gx, const T *gy)
{
    const int64_t plane = g->H * g->W, P = g->OH * g->OW;
    const T inv = (T)1 / (T)(g->KH * g->KW);
    CR_PAR_FOR(
        planes * P * g->KH * g->KW > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t q = 0; q < planes; q++) {
            T *dst = gx + q * plane;
            for (int64_t oh = 0; oh < g->OH; oh++)
                for (int64_t ow = 0; ow < g->OW; ow++) {
                    int64_t h0 = oh * g->SH - g->PH, w0 = ow * g->SW - g->PW;
                    T d = gy[q * P + oh * g->OW + ow] * inv;
                    for (int64_t ki = 0; ki < g->KH; ki++) {
                        int64_t ih = h0 + ki * g->DH;
                        if (ih < 0 || ih >= g->H) continue;
                        for (int64_t kj = 0; kj < g->KW; kj++) {
                            int64_t iw = w0 + kj * g->DW;
                            if (iw >= 0 && iw < g->W) dst[ih * g->W + iw] += d;
                        }
                    }
                }
        });
}

#undef FN
#undef CAT2
#undef CAT_
