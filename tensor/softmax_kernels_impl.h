/* Instruction-set template for softmax_kernels.c: included once per f32
 * variant with SFX (name suffix) and TGT (a target attribute or nothing).
 * Rows are contiguous, n >= 1 elements each. Sums over a row go to LANES
 * partial sums in double (element j to lane j % LANES), added pairwise at the
 * end: the order is fixed by LANES, not by the vector width, so every variant
 * gives the same bits. */

#define CAT_(a, b) a##_##b
#define CAT2(a, b) CAT_(a, b)
#define FN(name) CAT2(name, SFX)

/* sum_j (double)v[j] in the fixed lane order */
static inline TGT double FN(lane_sum)(const float *restrict v, int64_t n)
{
    double sl[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) sl[k] += (double)v[j + k];
    for (int k = 0; j + k < n; k++) sl[k] += (double)v[j + k];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int k = 0; k < w; k++) sl[k] += sl[k + w];
    return sl[0];
}

/* The row's max, NaN ignored unless x[0] is one (the serial loop's result:
 * `x[j] > m` is false for a NaN); a row with any NaN ends up all NaN anyway. */
static inline TGT float FN(row_max)(const float *restrict x, int64_t n)
{
    float ml[LANES];
    for (int k = 0; k < LANES; k++) ml[k] = x[0];
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) ml[k] = x[j + k] > ml[k] ? x[j + k] : ml[k];
    for (int k = 0; j + k < n; k++) ml[k] = x[j + k] > ml[k] ? x[j + k] : ml[k];
    float m = ml[0];
    for (int k = 1; k < LANES; k++) m = ml[k] > m ? ml[k] : m;
    return m;
}

/* o = softmax(x) or log_softmax(x) of one row: m = max x, e_j = e^(x_j - m)
 * (written to o first), s = sum e in double; o_j = e_j / s, or x_j - m -
 * log s. A NaN or +inf in the row makes s NaN, so the whole row is NaN. */
static inline TGT void FN(softmax_row)(float *restrict o, const float *restrict x, int64_t n, bool take_log)
{
    float m = FN(row_max)(x, n);
    _Pragma("omp simd") for (int64_t j = 0; j < n; j++) o[j] = exp_softmax_f32(x[j] - m);
    double s = FN(lane_sum)(o, n);
    if (take_log) {
        float lse = (float)log(s);
        _Pragma("omp simd") for (int64_t j = 0; j < n; j++) o[j] = x[j] - m - lse;
    } else {
        _Pragma("omp simd") for (int64_t j = 0; j < n; j++) o[j] = (float)((double)o[j] / s);
    }
}

static TGT void FN(softmax_rows)(float *out, const float *x, int64_t rows, int64_t n, bool take_log)
{
    CR_PAR_FOR(
        rows * n > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t r = 0; r < rows; r++) {
            if (take_log)
                FN(softmax_row)(out + r * n, x + r * n, n, true);
            else
                FN(softmax_row)(out + r * n, x + r * n, n, false);
        });
}

/* y = log_softmax: gx += gy - e^y sum(gy), row by row */
static TGT void FN(log_softmax_backward_rows)(float *gx, const float *gy, const float *y, int64_t rows,
                                              int64_t n)
{
    CR_PAR_FOR(
        rows * n > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t r = 0; r < rows; r++) {
            float *restrict g = gx + r * n;
            const float *restrict dy = gy + r * n, *restrict yr = y + r * n;
            double s = FN(lane_sum)(dy, n);
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) g[j] +=
                dy[j] - (float)((double)exp_softmax_f32(yr[j]) * s);
        });
}

/* One counted row of cross-entropy's gradient from its log-probabilities:
 * g_c (+)= scale * (e^lp_c - [c == t]). Every class gets scale * e^lp_c,
 * then class t is redone with the 1 subtracted (in double, as for the
 * others); on a new buffer (first) 0 + v, which turns -0 into +0. */
static inline TGT void FN(ce_row)(float *restrict g, const float *restrict lp, int64_t C, int32_t t,
                                  double scale, bool first)
{
    float gt = first ? 0.0f : g[t];
    if (first)
        _Pragma("omp simd") for (int64_t c = 0; c < C; c++) g[c] =
            0.0f + (float)(scale * exp_softmax_f32(lp[c]));
    else
        _Pragma("omp simd") for (int64_t c = 0; c < C; c++) g[c] += (float)(scale * exp_softmax_f32(lp[c]));
    g[t] = gt + (float)(scale * ((double)exp_softmax_f32(lp[t]) - 1.0));
}

static TGT void FN(ce_backward)(float *g, const float *lp, const int32_t *tgt, int64_t rows, int64_t C,
                                int64_t ignore, double scale, bool first)
{
    CR_PAR_FOR(
        rows * C > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t r = 0; r < rows; r++) {
            float *gr = g + r * C;
            if (tgt[r] == ignore) {
                if (first) memset(gr, 0, (size_t)C * sizeof *gr);
            } else if (first) {
                FN(ce_row)(gr, lp + r * C, C, tgt[r], scale, true);
            } else {
                FN(ce_row)(gr, lp + r * C, C, tgt[r], scale, false);
            }
        });
}

static TGT void FN(exp_all)(float *y, const float *x, int64_t n)
{
    CR_PAR_FOR(n > cr_parallel_threshold, "omp parallel for simd schedule(static)",
               for (int64_t i = 0; i < n; i++) y[i] = exp_softmax_f32(x[i]););
}

#undef FN
#undef CAT2
#undef CAT_
