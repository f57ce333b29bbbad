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
