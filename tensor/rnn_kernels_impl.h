/* Float-type template for rnn_kernels.c: included once per type (and, for
 * f32, once per instruction set) with T, SFX, TGT (a target attribute or
 * nothing), TANH and SIGMOID defined. Every 2-D operand has unit inner
 * stride and any row stride (a time step's slice of a [B,T,G] projection); act, out and dy
 * are contiguous. Every gradient target is given (the op passes a scratch
 * buffer for an input that needs none) and is written when its flag says it is new
 * (`first`) and added to otherwise, so no buffer is zero-filled first. */

#define CAT_(a, b) a##_##b
#define CAT2(a, b) CAT_(a, b)
#define FN(name) CAT2(name, SFX)

/* d (+)= v, the load unconditional so the loop vectorises (a blend; the value
 * read from a new buffer is discarded) */
#define PUT(d, j, v, first)                                                                                  \
    do {                                                                                                     \
        T old_ = (d)[j];                                                                                     \
        (d)[j] = (first) ? (v) : old_ + (v);                                                                 \
    } while (0)

/* i, f, g, o = s(z_i), s(z_f), tanh(z_g), s(z_o) with z = gx + gh;
 * c' = f c + i g; h' = o tanh(c'). act rows: i | f | g | o | tanh(c'). */
static TGT void FN(lstm_gates)(int64_t B, int64_t H, T *restrict out, T *restrict act, const T *gx,
                               int64_t sgx, const T *gh, int64_t sgh, const T *c, int64_t sc)
{
    const int64_t BH = B * H;
    CR_PAR_FOR(
        BH * 4 > cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t b = 0; b < B; b++) {
            const T *restrict x = gx + b * sgx, *restrict y = gh + b * sgh, *restrict cp = c + b * sc;
            T *restrict hn = out + b * H, *restrict cn = out + BH + b * H;
            T *restrict ai = act + b * H, *restrict af = ai + BH, *restrict ag = af + BH,
                        *restrict ao = ag + BH, *restrict at = ao + BH;
            _Pragma("omp simd") for (int64_t j = 0; j < H; j++)
            {
                T i = SIGMOID(x[j] + y[j]), f = SIGMOID(x[H + j] + y[H + j]);
                T g = TANH(x[2 * H + j] + y[2 * H + j]), o = SIGMOID(x[3 * H + j] + y[3 * H + j]);
                T cc = f * cp[j] + i * g, tc = TANH(cc);
                ai[j] = i;
                af[j] = f;
                ag[j] = g;
                ao[j] = o;
                at[j] = tc;
                cn[j] = cc;
                hn[j] = o * tc;
            }
        });
}

/* dc = dc' + dh o (1 - tanh^2 c'); dz_i = dc g i(1-i), dz_f = dc c f(1-f),
 * dz_g = dc i (1-g^2), dz_o = dh tanh(c') o(1-o); dgx, dgh (+)= dz;
 * dc_prev (+)= dc f. One batch row; inlined with constant flags, so each
 * combination is a loop of plain stores or adds (a flag read inside the loop
 * keeps GCC from vectorising it). */
static inline TGT __attribute__((always_inline)) void
FN(lstm_bwd_row)(int64_t H, int64_t BH, T *restrict x0, T *restrict h0, T *restrict pc, const T *restrict dh,
                 const T *restrict dcn, const T *restrict cp, const T *restrict ai, const bool gx_first,
                 const bool gh_first, const bool c_first)
{
    T *restrict x1 = x0 + H, *restrict x2 = x1 + H, *restrict x3 = x2 + H;
    T *restrict h1 = h0 + H, *restrict h2 = h1 + H, *restrict h3 = h2 + H;
    const T *restrict af = ai + BH, *restrict ag = af + BH, *restrict ao = ag + BH, *restrict at = ao + BH;
    _Pragma("omp simd") for (int64_t j = 0; j < H; j++)
    {
        T i = ai[j], f = af[j], g = ag[j], o = ao[j], tc = at[j];
        T dc = dcn[j] + dh[j] * o * (1 - tc * tc);
        T zi = dc * g * i * (1 - i), zf = dc * cp[j] * f * (1 - f);
        T zg = dc * i * (1 - g * g), zo = dh[j] * tc * o * (1 - o);
        PUT(x0, j, zi, gx_first);
        PUT(x1, j, zf, gx_first);
        PUT(x2, j, zg, gx_first);
        PUT(x3, j, zo, gx_first);
        PUT(h0, j, zi, gh_first);
        PUT(h1, j, zf, gh_first);
        PUT(h2, j, zg, gh_first);
        PUT(h3, j, zo, gh_first);
        PUT(pc, j, dc * f, c_first);
    }
}

/* the row function with constant flags, from inside the batch loop */
#define ROW(gf, hf, cf) FN(lstm_bwd_row)(H, BH, x0, h0, pc, dh, dcn, cp, ai, gf, hf, cf)
static TGT void FN(lstm_gates_backward)(int64_t B, int64_t H, T *dgx, int64_t sdgx, bool gx_first, T *dgh,
                                        int64_t sdgh, bool gh_first, T *dcp, int64_t sdc, bool c_first,
                                        const T *restrict dy, const T *restrict act, const T *c, int64_t sc)
{
    const int64_t BH = B * H;
    const int flags = gx_first << 2 | gh_first << 1 | c_first;
    CR_PAR_FOR(
        BH * 4 > cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t b = 0; b < B; b++) {
            T *x0 = dgx + b * sdgx, *h0 = dgh + b * sdgh, *pc = dcp + b * sdc;
            const T *dh = dy + b * H, *dcn = dy + BH + b * H, *cp = c + b * sc, *ai = act + b * H;
            switch (flags) {
            case 0: ROW(false, false, false); break;
            case 1: ROW(false, false, true); break;
            case 2: ROW(false, true, false); break;
            case 3: ROW(false, true, true); break;
            case 4: ROW(true, false, false); break;
            case 5: ROW(true, false, true); break;
            case 6: ROW(true, true, false); break;
            default: ROW(true, true, true); break;
            }
        });
}
#undef ROW

/* r = s(gx_r + gh_r), z = s(gx_z + gh_z), n = tanh(gx_n + r gh_n),
 * h' = n + z (h - n). act rows: r | z | n | gh_n. */
static TGT void FN(gru_gates)(int64_t B, int64_t H, T *restrict out, T *restrict act, const T *gx,
                              int64_t sgx, const T *gh, int64_t sgh, const T *h, int64_t sh)
{
    const int64_t BH = B * H;
    CR_PAR_FOR(
        BH * 4 > cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t b = 0; b < B; b++) {
            const T *restrict x = gx + b * sgx, *restrict y = gh + b * sgh, *restrict hp = h + b * sh;
            T *restrict hn = out + b * H;
            T *restrict ar = act + b * H, *restrict az = ar + BH, *restrict an = az + BH,
                        *restrict ahn = an + BH;
            _Pragma("omp simd") for (int64_t j = 0; j < H; j++)
            {
                T r = SIGMOID(x[j] + y[j]), z = SIGMOID(x[H + j] + y[H + j]);
                T ghn = y[2 * H + j], n = TANH(x[2 * H + j] + r * ghn);
                ar[j] = r;
                az[j] = z;
                an[j] = n;
                ahn[j] = ghn;
                hn[j] = n + z * (hp[j] - n);
            }
        });
}

/* da_n = dh' (1-z)(1-n^2); dz_r = da_n gh_n r(1-r); dz_z = dh' (h-n) z(1-z);
 * dgx = [dz_r, dz_z, da_n], dgh = [dz_r, dz_z, da_n r]; dh (+)= dh' z. One
 * batch row, inlined with constant flags as the LSTM's. */
static inline TGT __attribute__((always_inline)) void
FN(gru_bwd_row)(int64_t H, int64_t BH, T *restrict x0, T *restrict h0, T *restrict pq, const T *restrict d,
                const T *restrict hp, const T *restrict ar, const bool gx_first, const bool gh_first,
                const bool h_first)
{
    const T *restrict az = ar + BH, *restrict an = az + BH, *restrict ahn = an + BH;
    T *restrict x1 = x0 + H, *restrict x2 = x1 + H;
    T *restrict h1 = h0 + H, *restrict h2 = h1 + H;
    _Pragma("omp simd") for (int64_t j = 0; j < H; j++)
    {
        T r = ar[j], z = az[j], n = an[j];
        T dan = d[j] * (1 - z) * (1 - n * n);
        T dzr = dan * ahn[j] * r * (1 - r), dzz = d[j] * (hp[j] - n) * z * (1 - z);
        PUT(x0, j, dzr, gx_first);
        PUT(x1, j, dzz, gx_first);
        PUT(x2, j, dan, gx_first);
        PUT(h0, j, dzr, gh_first);
        PUT(h1, j, dzz, gh_first);
        PUT(h2, j, dan * r, gh_first);
        PUT(pq, j, d[j] * z, h_first);
    }
}

/* the row function with constant flags, from inside the batch loop */
#define ROW(gf, hf, cf) FN(gru_bwd_row)(H, BH, x0, h0, pq, d, hp, ar, gf, hf, cf)
static TGT void FN(gru_gates_backward)(int64_t B, int64_t H, T *dgx, int64_t sdgx, bool gx_first, T *dgh,
                                       int64_t sdgh, bool gh_first, T *dhp, int64_t sdh, bool h_first,
                                       const T *restrict dy, const T *restrict act, const T *h, int64_t sh)
{
    const int64_t BH = B * H;
    const int flags = gx_first << 2 | gh_first << 1 | h_first;
    CR_PAR_FOR(
        BH * 4 > cr_parallel_threshold, "omp parallel for schedule(static)", for (int64_t b = 0; b < B; b++) {
            T *x0 = dgx + b * sdgx, *h0 = dgh + b * sdgh, *pq = dhp + b * sdh;
            const T *d = dy + b * H, *hp = h + b * sh, *ar = act + b * H;
            switch (flags) {
            case 0: ROW(false, false, false); break;
            case 1: ROW(false, false, true); break;
            case 2: ROW(false, true, false); break;
            case 3: ROW(false, true, true); break;
            case 4: ROW(true, false, false); break;
            case 5: ROW(true, false, true); break;
            case 6: ROW(true, true, false); break;
            default: ROW(true, true, true); break;
            }
        });
}
#undef ROW

#undef PUT
#undef FN
#undef CAT2
#undef CAT_
