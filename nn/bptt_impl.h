/*
 * The body of the hand-derived BPTT (nn/bptt.c), written once for one scalar
 * type: the drivers (input projection, time loops, weight gradients) and each
 * built-in cell's forward and backward step. bptt.c includes this file twice,
 * with REAL = float / double, FN(x) = x##_f32 / x##_f64, DT the dtype and
 * the matching libm functions.
 */
#ifndef REAL
#error "nn/bptt_impl.h is included by nn/bptt.c only"
#endif

#define DATA(t) ((t) ? (REAL *)(t)->data : NULL)

/* C (m, n) = op(A) op(B) + beta * C on row-major buffers with row strides
 * rsa, rsb, rsc (column stride 1); op(A) is (m, k), op(B) is (k, n). A step's
 * slice of a batch-first (B, T, *) buffer is such a matrix: row b starts at
 * b * T * width, so the row stride is T * width. The product goes through the
 * tensor module's gemm on strided headers: a transposed operand is a view
 * with swapped strides, as BLIS takes it, and no copy. */
static void FN(gemm)(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const REAL *a, int64_t rsa,
                     const REAL *b, int64_t rsb, REAL beta, REAL *c, int64_t rsc)
{
    cr_tensor A = {.dtype = DT, .ndim = 2, .shape = {m, k}, .data = (REAL *)a};
    cr_tensor Bm = {.dtype = DT, .ndim = 2, .shape = {k, n}, .data = (REAL *)b};
    cr_tensor C = {.dtype = DT, .ndim = 2, .shape = {m, n}, .stride = {rsc, 1}, .data = c};
    A.stride[0] = ta ? 1 : rsa; /* A stored (k, m) when transposed */
    A.stride[1] = ta ? rsa : 1;
    Bm.stride[0] = tb ? 1 : rsb;
    Bm.stride[1] = tb ? rsb : 1;
    cr_k_gemm(1.0, &A, &Bm, beta, &C);
}

static inline REAL FN(sigmoid)(REAL v) { return 1 / (1 + EXP(-v)); }

/* ---- forward steps ----------------------------------------------------------- */
/* Step t reads h_{t-1} (and c_{t-1}) from row (b, t) of hprev (cprev), adds
 * the recurrent product to its slice of gates (rows T*G apart) and replaces
 * the pre-activations there by the gate activations; it writes h_t into hs. */

/* h_t = act(a_t), a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh */
static void FN(rnn_forward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t, bool relu)
{
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    REAL *a = (REAL *)w->gates + t * G, *ht = (REAL *)w->hs + t * H, *hp = w->hp;
    const REAL *hq = (const REAL *)w->hprev + t * H;
    const REAL *b_hh = p->b_hh ? DATA(p->b_hh) : w->zero_g;
    FN(gemm)(false, true, B, G, H, hq, TH, DATA(p->w_hh), H, 0, hp, G);
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            for (int64_t j = 0; j < H; j++) {
                REAL pre = a[b * TG + j] + hp[b * G + j] + b_hh[j];
                REAL h = relu ? (pre > 0 ? pre : 0) : TANH(pre);
                a[b * TG + j] = h;
                ht[b * TH + j] = h;
            }
        });
}
static void FN(rnn_tanh_forward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    FN(rnn_forward)(w, p, t, false);
}
static void FN(rnn_relu_forward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    FN(rnn_forward)(w, p, t, true);
}

/* blocks i, f, g, o of a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
 *   i = σ(a_i + w_ci c_{t-1})   f = σ(a_f + w_cf c_{t-1})   g = tanh(a_g)
 *   c_t = f c_{t-1} + i g       o = σ(a_o + w_co c_t)       h_t = o tanh(c_t)
 * (the w_c* terms only with peepholes) */
static void FN(lstm_forward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    REAL *a = (REAL *)w->gates + t * G, *ht = (REAL *)w->hs + t * H, *hp = w->hp;
    const REAL *hq = (const REAL *)w->hprev + t * H;
    const REAL *cq = (const REAL *)w->cprev + t * H;
    REAL *ct = (REAL *)w->cs + t * H, *tc = (REAL *)w->tanh_c + t * H;
    const REAL *b_hh = p->b_hh ? DATA(p->b_hh) : w->zero_g;
    const REAL *w_ci = DATA(p->w_ci), *w_cf = DATA(p->w_cf), *w_co = DATA(p->w_co); /* (H) or NULL */
    FN(gemm)(false, true, B, G, H, hq, TH, DATA(p->w_hh), H, 0, hp, G);
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            REAL *ab = a + b * TG;
            const REAL *hpb = hp + b * G;
            for (int64_t j = 0; j < H; j++) {
                REAL cp = cq[b * TH + j];
                REAL zi = ab[j] + hpb[j] + b_hh[j];
                REAL zf = ab[H + j] + hpb[H + j] + b_hh[H + j];
                REAL zg = ab[2 * H + j] + hpb[2 * H + j] + b_hh[2 * H + j];
                REAL zo = ab[3 * H + j] + hpb[3 * H + j] + b_hh[3 * H + j];
                if (w_ci) {
                    zi += w_ci[j] * cp;
                    zf += w_cf[j] * cp;
                }
                REAL i = FN(sigmoid)(zi), f = FN(sigmoid)(zf), g = TANH(zg);
                REAL c = f * cp + i * g;
                if (w_co) zo += w_co[j] * c;
                REAL o = FN(sigmoid)(zo), tch = TANH(c);
                ab[j] = i;
                ab[H + j] = f;
                ab[2 * H + j] = g;
                ab[3 * H + j] = o;
                ct[b * TH + j] = c;
                tc[b * TH + j] = tch;
                ht[b * TH + j] = o * tch;
            }
        });
}

/* blocks r, z, n; hn_t = W_hn h_{t-1} + b_hn is kept (backward needs it)
 *   r = σ(a_r + W_hr h + b_hr)   z = σ(a_z + W_hz h + b_hz)
 *   n = tanh(a_n + r hn_t)       h_t = (1 - z) n + z h_{t-1} */
static void FN(gru_forward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    REAL *a = (REAL *)w->gates + t * G, *ht = (REAL *)w->hs + t * H, *hp = w->hp;
    const REAL *hq = (const REAL *)w->hprev + t * H;
    REAL *hnt = (REAL *)w->hn + t * H;
    const REAL *b_hh = p->b_hh ? DATA(p->b_hh) : w->zero_g;
    FN(gemm)(false, true, B, G, H, hq, TH, DATA(p->w_hh), H, 0, hp, G);
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            REAL *ab = a + b * TG;
            const REAL *hpb = hp + b * G;
            for (int64_t j = 0; j < H; j++) {
                REAL r = FN(sigmoid)(ab[j] + hpb[j] + b_hh[j]);
                REAL z = FN(sigmoid)(ab[H + j] + hpb[H + j] + b_hh[H + j]);
                REAL hnv = hpb[2 * H + j] + b_hh[2 * H + j];
                REAL n = TANH(ab[2 * H + j] + r * hnv);
                ab[j] = r;
                ab[H + j] = z;
                ab[2 * H + j] = n;
                hnt[b * TH + j] = hnv;
                ht[b * TH + j] = (1 - z) * n + z * hq[b * TH + j];
            }
        });
}

/* r, z as in PyTorch's GRU, but the reset gate acts before the recurrent
 * product, so n needs a second product inside the step:
 *   rh_t = r h_{t-1}   n = tanh(a_n + rh_t W_hn^T + b_hn) */
static void FN(gru_original_forward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    REAL *a = (REAL *)w->gates + t * G, *ht = (REAL *)w->hs + t * H, *hp = w->hp;
    const REAL *hq = (const REAL *)w->hprev + t * H;
    REAL *rht = (REAL *)w->rh + t * H;
    const REAL *w_hh = DATA(p->w_hh);
    const REAL *b_hh = p->b_hh ? DATA(p->b_hh) : w->zero_g;
    FN(gemm)(false, true, B, 2 * H, H, hq, TH, w_hh, H, 0, hp, G);
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            REAL *ab = a + b * TG;
            const REAL *hpb = hp + b * G;
            for (int64_t j = 0; j < H; j++) {
                REAL r = FN(sigmoid)(ab[j] + hpb[j] + b_hh[j]);
                REAL z = FN(sigmoid)(ab[H + j] + hpb[H + j] + b_hh[H + j]);
                ab[j] = r;
                ab[H + j] = z;
                rht[b * TH + j] = r * hq[b * TH + j];
            }
        });
    FN(gemm)(false, true, B, H, H, rht, TH, w_hh + 2 * H * H, H, 0, hp + 2 * H, G);
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            REAL *ab = a + b * TG;
            const REAL *hpb = hp + b * G;
            for (int64_t j = 0; j < H; j++) {
                REAL z = ab[H + j];
                REAL n = TANH(ab[2 * H + j] + hpb[2 * H + j] + b_hh[2 * H + j]);
                ab[2 * H + j] = n;
                ht[b * TH + j] = (1 - z) * n + z * hq[b * TH + j];
            }
        });
}

/* ---- the forward driver ------------------------------------------------------ */

static void FN(forward)(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *x_t, const cr_tensor *h0_t,
                        const cr_tensor *c0_t, cr_tensor *y_t, cr_tensor *hn_t, cr_tensor *cn_t)
{
    const int64_t B = w->B, T = w->T, I = w->I, H = w->H, G = w->G;
    const bool par = B * H >= cr_parallel_threshold;

    const REAL *x = DATA(x_t);                              /* (B, T, I) */
    const REAL *h0 = DATA(h0_t);                            /* (B, H) or NULL: zeros */
    const REAL *c0 = DATA(c0_t);                            /* (B, H) or NULL: zeros */
    const REAL *w_ih = DATA(p->w_ih);                       /* (G, I) */
    const REAL *b_ih = p->b_ih ? DATA(p->b_ih) : w->zero_g; /* (G) */

    REAL *gates = w->gates; /* (B, T, G) */
    REAL *hprev = w->hprev; /* (B, T, H) */
    REAL *hs = w->hs;       /* (B, T, H) */
    REAL *cprev = w->cprev; /* (B, T, H) LSTM */
    REAL *cs = w->cs;       /* (B, T, H) LSTM */

    /* 1. The input projection of every step at once, hoisted out of the time
     *    loop: gates = X W_ih^T + b_ih, with X viewed as (B*T, I). X is kept
     *    for dW_ih = dA^T X in backward. */
    memcpy(w->x, x, (size_t)(B * T * I) * sizeof(REAL));
    for (int64_t r = 0; r < B * T; r++)
        for (int64_t j = 0; j < G; j++) gates[r * G + j] = b_ih[j];
    FN(gemm)(false, true, B * T, G, I, x, I, w_ih, I, 1, gates, G);

    /* 2. The recurrence: step t's h_{t-1} (c_{t-1}) is the previous step's
     *    output or the initial state; the cell's step does the rest. */
    const int64_t TH = T * H;
    for (int64_t t = 0; t < T; t++) {
        PAR_FOR(
            par, for (int64_t b = 0; b < B; b++) {
                for (int64_t j = 0; j < H; j++) {
                    const int64_t k = b * TH + t * H + j, k0 = b * H + j;
                    hprev[k] = t > 0 ? hs[k - H] : h0 ? h0[k0] : 0;
                    if (cprev) cprev[k] = t > 0 ? cs[k - H] : c0 ? c0[k0] : 0;
                }
            });
        w->hand->forward_step[DTI](w, p, t);
    }

    /* 3. Outputs: y = every h_t, h_n = h_T, c_n = c_T. */
    REAL *y = DATA(y_t), *h_n = DATA(hn_t), *c_n = DATA(cn_t);
    if (y) memcpy(y, hs, (size_t)(B * T * H) * sizeof(REAL));
    for (int64_t b = 0; b < B; b++) {
        if (h_n) memcpy(h_n + b * H, hs + (b * T + T - 1) * H, (size_t)H * sizeof(REAL));
        if (c_n) memcpy(c_n + b * H, cs + (b * T + T - 1) * H, (size_t)H * sizeof(REAL));
    }
}

/* ---- backward steps ---------------------------------------------------------- */
/* On entry dh holds the total dL/dh_t (what flows in from step t+1, from h_n
 * and from y_t). A step writes dL/d(pre-activations of step t) into its slice
 * of dgx (and dgh) and leaves in dh what reaches h_{t-1} other than through
 * the recurrent product h_{t-1} W_hh^T, which the driver adds after it. */

/* h = act(pre):  dpre = dh * act'(pre), written through h itself:
 *   tanh' = 1 - h^2,  relu' = [h > 0] (0 at the kink, as PyTorch).
 * h_{t-1} enters only through the recurrent product. */
static void FN(rnn_backward)(cr_bptt *w, int64_t t, bool relu)
{
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    const REAL *ht = (const REAL *)w->hs + t * H;
    REAL *dax = (REAL *)w->dgx + t * G, *dh = w->dh;
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            for (int64_t j = 0; j < H; j++) {
                REAL h = ht[b * TH + j];
                REAL d = relu ? (h > 0 ? 1 : 0) : 1 - h * h;
                dax[b * TG + j] = dh[b * H + j] * d;
                dh[b * H + j] = 0;
            }
        });
}
static void FN(rnn_tanh_backward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    (void)p;
    FN(rnn_backward)(w, t, false);
}
static void FN(rnn_relu_backward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    (void)p;
    FN(rnn_backward)(w, t, true);
}

static void FN(lstm_backward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    const REAL *a = (const REAL *)w->gates + t * G; /* i, f, g, o of step t */
    const REAL *cq = (const REAL *)w->cprev + t * H, *tc = (const REAL *)w->tanh_c + t * H;
    const REAL *w_ci = DATA(p->w_ci), *w_cf = DATA(p->w_cf), *w_co = DATA(p->w_co); /* (H) or NULL */
    REAL *dax = (REAL *)w->dgx + t * G, *dh = w->dh, *dc = w->dc;
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            const REAL *ab = a + b * TG;
            REAL *db = dax + b * TG;
            for (int64_t j = 0; j < H; j++) {
                REAL i = ab[j], f = ab[H + j], gg = ab[2 * H + j], o = ab[3 * H + j];
                REAL cp = cq[b * TH + j], tch = tc[b * TH + j];
                REAL dhv = dh[b * H + j];
                /* h = o tanh(c):  do = dh tanh(c);  dc += dh o (1 - tanh(c)^2)
                 * (dc already holds what c_t passes on to c_{t+1}). */
                REAL d_o = dhv * tch;
                REAL dcv = dc[b * H + j] + dhv * o * (1 - tch * tch);
                /* o = σ(z_o):  dz_o = do o (1 - o).
                 * Peephole: z_o has w_co c_t, so c_t also gets dz_o w_co. */
                REAL dzo = d_o * o * (1 - o);
                if (w_co) dcv += dzo * w_co[j];
                /* c = f c_{t-1} + i g:
                 *   df = dc c_{t-1},  di = dc g,  dg = dc i,  dc_{t-1} = dc f */
                REAL df = dcv * cp, di = dcv * gg, dg = dcv * i;
                REAL dcp = dcv * f;
                /* i, f = σ(z), g = tanh(z):  σ' = σ (1 - σ),  tanh' = 1 - tanh^2 */
                REAL dzi = di * i * (1 - i), dzf = df * f * (1 - f);
                REAL dzg = dg * (1 - gg * gg);
                /* Peephole: z_i, z_f have w_ci c_{t-1}, w_cf c_{t-1}. */
                if (w_ci) dcp += dzi * w_ci[j] + dzf * w_cf[j];
                db[j] = dzi;
                db[H + j] = dzf;
                db[2 * H + j] = dzg;
                db[3 * H + j] = dzo;
                dc[b * H + j] = dcp;
                /* h_{t-1} enters only through the recurrent product. */
                dh[b * H + j] = 0;
            }
        });
}

static void FN(gru_backward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    (void)p;
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    const REAL *a = (const REAL *)w->gates + t * G; /* r, z, n of step t */
    const REAL *hq = (const REAL *)w->hprev + t * H, *hnt = (const REAL *)w->hn + t * H;
    REAL *dax = (REAL *)w->dgx + t * G, *dah = (REAL *)w->dgh + t * G, *dh = w->dh;
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            const REAL *ab = a + b * TG;
            REAL *dbx = dax + b * TG, *dbh = dah + b * TG;
            for (int64_t j = 0; j < H; j++) {
                REAL r = ab[j], z = ab[H + j], n = ab[2 * H + j];
                REAL hpv = hq[b * TH + j], hnv = hnt[b * TH + j];
                REAL dhv = dh[b * H + j];
                /* h = (1 - z) n + z h_{t-1}:
                 *   dn = dh (1 - z),  dz = dh (h_{t-1} - n),  dh_{t-1} = dh z (direct) */
                REAL dn = dhv * (1 - z), dz = dhv * (hpv - n);
                /* n = tanh(a_n + r hn):  da_n = dn (1 - n^2); the input side
                 * gets da_n, the hidden side (hn = W_hn h + b_hn) da_n r,
                 * and the reset gate dr = da_n hn. */
                REAL dan = dn * (1 - n * n);
                REAL dr = dan * hnv;
                /* r, z = σ(a + W_h h + b_h): both sides get the same gradient. */
                REAL dar = dr * r * (1 - r), daz = dz * z * (1 - z);
                dbx[j] = dbh[j] = dar;
                dbx[H + j] = dbh[H + j] = daz;
                dbx[2 * H + j] = dan;
                dbh[2 * H + j] = dan * r;
                dh[b * H + j] = dhv * z;
            }
        });
}

static void FN(gru_original_backward)(cr_bptt *w, const cr_bptt_weights *p, int64_t t)
{
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G, TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    const REAL *a = (const REAL *)w->gates + t * G; /* r, z, n of step t */
    const REAL *hq = (const REAL *)w->hprev + t * H;
    REAL *dax = (REAL *)w->dgx + t * G, *dh = w->dh, *drh = w->drh;
    /* First n and z, which need only dh ... */
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            const REAL *ab = a + b * TG;
            REAL *db = dax + b * TG;
            for (int64_t j = 0; j < H; j++) {
                REAL z = ab[H + j], n = ab[2 * H + j];
                REAL hpv = hq[b * TH + j], dhv = dh[b * H + j];
                /* h = (1 - z) n + z h_{t-1}: as in PyTorch's GRU */
                REAL dn = dhv * (1 - z), dz = dhv * (hpv - n);
                /* n = tanh(a_n + (r h) W_hn^T + b_hn): one gradient for both sides */
                db[2 * H + j] = dn * (1 - n * n);
                db[H + j] = dz * z * (1 - z);
                dh[b * H + j] = dhv * z;
            }
        });
    /* ... then d(r h_{t-1}) = da_n W_hn, a second product inside the step, */
    FN(gemm)(false, false, B, H, H, dax + 2 * H, TG, DATA(p->w_hh) + 2 * H * H, H, 0, drh, H);
    /* ... which splits into dr = d(rh) h_{t-1} and dh_{t-1} += d(rh) r. */
    PAR_FOR(
        par, for (int64_t b = 0; b < B; b++) {
            const REAL *ab = a + b * TG;
            REAL *db = dax + b * TG;
            for (int64_t j = 0; j < H; j++) {
                REAL r = ab[j], d = drh[b * H + j];
                db[j] = d * hq[b * TH + j] * r * (1 - r);
                dh[b * H + j] += d * r;
            }
        });
}

/* ---- the backward driver ------------------------------------------------------- */

/* acc[j] += sum over the R rows of m (R, n) of m[r, j], one column per thread:
 * disjoint outputs, and the same order of additions whatever the threads. */
static void FN(colsum_add)(REAL *acc, const REAL *m, int64_t R, int64_t n)
{
    PAR_FOR(
        R * n >= cr_parallel_threshold, for (int64_t j = 0; j < n; j++) {
            REAL s = 0;
            for (int64_t r = 0; r < R; r++) s += m[r * n + j];
            acc[j] += s;
        });
}

/* acc[j] += sum over rows of u[r, j] * v[r, j] (both (R, n), row strides su, sv). */
static void FN(coldot_add)(REAL *acc, const REAL *u, int64_t su, const REAL *v, int64_t sv, int64_t R,
                           int64_t n)
{
    PAR_FOR(
        R * n >= cr_parallel_threshold, for (int64_t j = 0; j < n; j++) {
            REAL s = 0;
            for (int64_t r = 0; r < R; r++) s += u[r * su + j] * v[r * sv + j];
            acc[j] += s;
        });
}

/* The original GRU's n rows of W_hh multiplied r h_{t-1}, not h_{t-1}:
 * dW_hn += dA_n^T (r h), the rows the driver's dW_hh product left out. */
static void FN(gru_original_grads)(cr_bptt *w, const cr_bptt_weights *p, cr_bptt_weights *g)
{
    (void)p;
    const int64_t B = w->B, T = w->T, H = w->H, G = w->G;
    REAL *gw_hh = DATA(g->w_hh);
    if (gw_hh)
        FN(gemm)(true, false, H, H, B * T, (REAL *)w->dgh + 2 * H, G, w->rh, H, 1, gw_hh + 2 * H * H, H);
}

/* Peepholes: dw_ci = sum dz_i c_{t-1}, dw_cf = sum dz_f c_{t-1}, dw_co = sum dz_o c_t. */
static void FN(peephole_grads)(cr_bptt *w, const cr_bptt_weights *p, cr_bptt_weights *g)
{
    (void)p;
    const int64_t BT = w->B * w->T, H = w->H, G = w->G;
    const REAL *dgx = w->dgx, *cprev = w->cprev, *cs = w->cs;
    REAL *gw_ci = DATA(g->w_ci), *gw_cf = DATA(g->w_cf), *gw_co = DATA(g->w_co);
    if (gw_ci) FN(coldot_add)(gw_ci, dgx, G, cprev, H, BT, H);
    if (gw_cf) FN(coldot_add)(gw_cf, dgx + H, G, cprev, H, BT, H);
    if (gw_co) FN(coldot_add)(gw_co, dgx + 3 * H, G, cs, H, BT, H);
}

static void FN(backward)(cr_bptt *w, const cr_bptt_weights *p, const cr_tensor *dy_t, const cr_tensor *dhn_t,
                         const cr_tensor *dcn_t, cr_bptt_weights *g, cr_tensor *dx_t, cr_tensor *dh0_t,
                         cr_tensor *dc0_t)
{
    const int64_t B = w->B, T = w->T, I = w->I, H = w->H, G = w->G;
    const int64_t TG = T * G, TH = T * H;
    const bool par = B * H >= cr_parallel_threshold;
    /* Gate rows of W_hh that multiply h_{t-1} itself (the original GRU's n
     * rows multiply r h_{t-1}, inside its step). */
    const int64_t rows = w->hand->recurrent_gates * H;

    const REAL *w_ih = DATA(p->w_ih); /* (G, I) */
    const REAL *w_hh = DATA(p->w_hh); /* (G, H) */
    const REAL *dy = DATA(dy_t);      /* (B, T, H) or NULL */
    const REAL *dh_n = DATA(dhn_t);   /* (B, H) or NULL */
    const REAL *dc_n = DATA(dcn_t);   /* (B, H) or NULL */
    REAL *dgx = w->dgx;               /* (B, T, G) dL/d(input-side pre-activation) */
    REAL *dgh = w->dgh;               /* (B, T, G) dL/d(hidden-side pre-activation) */
    REAL *dh = w->dh;                 /* (B, H) dL/dh_t, carried from t+1 to t */
    REAL *dc = w->dc;                 /* (B, H) dL/dc_t, carried (LSTM) */

    /* dL/dh_T and dL/dc_T come from the final states only. */
    for (int64_t k = 0; k < B * H; k++) {
        dh[k] = dh_n ? dh_n[k] : 0;
        if (dc) dc[k] = dc_n ? dc_n[k] : 0;
    }

    /* The time loop, last step first: dy_t completes dL/dh_t, the cell's step
     * fills dA_t, and the recurrent product h_{t-1} W_hh^T of step t passes
     * back dh_{t-1} += dA_t W_hh. */
    for (int64_t t = T - 1; t >= 0; t--) {
        if (dy) {
            PAR_FOR(
                par, for (int64_t b = 0; b < B; b++) {
                    for (int64_t j = 0; j < H; j++) dh[b * H + j] += dy[b * TH + t * H + j];
                });
        }
        w->hand->backward_step[DTI](w, p, t);
        FN(gemm)(false, false, B, H, rows, dgh + t * G, TG, w_hh, H, 1, dh, H);
    }

    /* dh0, dc0: what reached the initial states. */
    REAL *dh0 = DATA(dh0_t), *dc0 = DATA(dc0_t);
    if (dh0) memcpy(dh0, dh, (size_t)(B * H) * sizeof(REAL));
    if (dc0) memcpy(dc0, dc, (size_t)(B * H) * sizeof(REAL));

    /* dx = dA W_ih: every step at once, (B*T, G) x (G, I). */
    REAL *dx = DATA(dx_t);
    if (dx) FN(gemm)(false, false, B * T, I, G, dgx, G, w_ih, I, 0, dx, I);

    if (!g) return;
    /* Weight gradients, summed over every step and batch row as one product
     * each: the time loop only filled dgx, dgh. */
    const REAL *x = w->x; /* (B, T, I), the forward's input */
    REAL *gw_ih = DATA(g->w_ih), *gw_hh = DATA(g->w_hh);
    REAL *gb_ih = p->b_ih ? DATA(g->b_ih) : NULL, *gb_hh = p->b_hh ? DATA(g->b_hh) : NULL;
    /* dW_ih += dA^T X:  (G, B*T) x (B*T, I) */
    if (gw_ih) FN(gemm)(true, false, G, I, B * T, dgx, G, x, I, 1, gw_ih, I);
    /* dW_hh += sum_t dA_t^T h_{t-1}:  (rows, B*T) x (B*T, H), with h_{t-1}
     * stacked in hprev. */
    if (gw_hh) FN(gemm)(true, false, rows, H, B * T, dgh, G, w->hprev, H, 1, gw_hh, H);
    /* db = sum over steps and batch rows of dA. */
    if (gb_ih) FN(colsum_add)(gb_ih, dgx, B * T, G);
    if (gb_hh) FN(colsum_add)(gb_hh, dgh, B * T, G);
    /* The cell's own parameters and rows (peepholes, the original GRU's W_hn). */
    if (w->hand->grads[DTI]) w->hand->grads[DTI](w, p, g);
}

#undef DATA
