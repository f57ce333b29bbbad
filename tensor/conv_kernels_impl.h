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
/* Without padding, and with whole tiles per output row, no tile reads past
 * its input row (the last one ends at W - 1): the kernels then read the
 * input in place, rows of W (a 1x1 convolution, whose planes ops_conv.c
 * passes as single rows of H W, always qualifies when H W is a multiple of
 * V). Otherwise pad_planes copies it into rows of W + 2 PW + V. */
#define IN_PLACE(g) ((g)->PH == 0 && (g)->PW == 0 && (g)->OW % V == 0)
#define ROW_Q(g) (IN_PLACE(g) ? (g)->W : (g)->W + 2 * (g)->PW + V)

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

/* Register tiles of the direct kernels: og output channels (at most 8) by
 * TILES(og) vectors, at most 24 accumulators of AVX-512's 32 registers, the
 * rest for the step's loads. A forward step loads TILES(og) input vectors
 * and og weights for og TILES(og) FMAs; a weight-gradient step TILES(og)
 * input vectors and og gradient vectors. One row of the old kernel (og
 * weights and one load per og FMAs) was bound by loads past 8 channels. */
#define TILES(og) ((og) >= 7 ? 3 : (og) >= 5 ? 4 : (og) >= 4 ? 6 : 8)

/* wp: each run of og <= 8 output channels of a group (o .. o+og) as
 * [Cg KH KW][og] from o K on, so a step's og weights are adjacent. */
static void FN(pack_weights)(int64_t G, int64_t O, int64_t K, const T *w, T *wp)
{
    const int64_t Og = O / G;
    for (int64_t k = 0; k < G; k++)
        for (int64_t o0 = 0; o0 < Og; o0 += 8) {
            int64_t og = Og - o0 < 8 ? Og - o0 : 8, o = k * Og + o0;
            for (int64_t j = 0; j < K; j++)
                for (int64_t i = 0; i < og; i++) wp[o * K + j * og + i] = w[(o + i) * K + j];
        }
}

/* og channels (a constant after inlining, so the accumulators stay in
 * registers) by TILES(og) tiles of output positions, tile t reading the
 * padded input from xt[t]: acc[o][t] = b[o] + the sum over (c, ki, kj) of
 * wp[(c, ki, kj)][o] times the input tile at xt[t] + (c Hp + ki DH) Wq + kj DW.
 * Lanes [0, len[t]) of the first nvalid tiles go to y + o P + yo[t]
 * (added to y when add). */
static inline __attribute__((always_inline)) void
FN(direct_tiles)(const cr_window *g, int64_t Cg, int og, const T *wp, const T *b, const T *const *xt, T *y,
                 int64_t P, const int64_t *yo, const int64_t *len, int nvalid, bool add)
{
    const int nt = TILES(og);
    const int64_t Hp = g->H + 2 * g->PH, Wq = ROW_Q(g);
    VT acc[8][8];
    for (int o = 0; o < og; o++)
        for (int t = 0; t < nt; t++) acc[o][t] = (VT){0} + (b ? b[o] : 0);
    for (int64_t c = 0; c < Cg; c++)
        for (int64_t ki = 0; ki < g->KH; ki++) {
            const int64_t off = (c * Hp + ki * g->DH) * Wq;
            for (int64_t kj = 0; kj < g->KW; kj++, wp += og) {
                VT xv[8];
                for (int t = 0; t < nt; t++) xv[t] = VLOAD(xt[t] + off + kj * g->DW);
                for (int o = 0; o < og; o++)
                    for (int t = 0; t < nt; t++) acc[o][t] += wp[o] * xv[t];
            }
        }
    for (int t = 0; t < nvalid; t++)
        for (int o = 0; o < og; o++) {
            T *d = y + o * P + yo[t];
            if (len[t] == V) {
                VT r = acc[o][t];
                if (add) r += VLOAD(d);
                memcpy(d, &r, sizeof r);
            } else {
                T tmp[V];
                memcpy(tmp, &acc[o][t], sizeof tmp);
                for (int64_t l = 0; l < len[t]; l++) d[l] = add ? d[l] + tmp[l] : tmp[l];
            }
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

/* The direct convolution of samples [n0, n0+nb), stride 1 along W: y = b +
 * the correlation, or y += it (add). Per sample, per group, per run of at
 * most 8 output channels, the output's tiles (V positions of one row; a row
 * of OW has ceil(OW / V) of them) in runs of TILES(og), in row order; the
 * last run repeats its last tile to fill the registers and stores only its
 * own. One sample at a time: no sum depends on threads. xp: C Hp Wq
 * elements (pad_planes); wp: O Cg KH KW (pack_weights). */
__attribute__((target_clones("arch=x86-64-v4", "default"))) static void
FN(conv_direct)(const cr_window *g, int64_t G, int64_t O, const T *x, const T *w, const T *b, int64_t n0,
                int64_t nb, T *y, bool add, T *xp, T *wp)
{
    const int64_t C = g->C, Cg = C / G, Og = O / G, K = Cg * g->KH * g->KW, OW = g->OW, P = g->OH * OW;
    const int64_t Hp = g->H + 2 * g->PH, Wq = ROW_Q(g), tw = (OW + V - 1) / V, tiles = g->OH * tw;
    FN(pack_weights)(G, O, K, w, wp);
    for (int64_t n = n0; n < n0 + nb; n++) {
        const T *xn = x + n * C * g->H * g->W;
        if (!IN_PLACE(g)) {
            FN(pad_planes)(g, C, xn, xp);
            xn = xp;
        }
        for (int64_t k = 0; k < G; k++)
            for (int64_t o0 = 0; o0 < Og; o0 += 8) {
                int og = Og - o0 < 8 ? (int)(Og - o0) : 8, nt = TILES(og);
                int64_t o = k * Og + o0;
                const T *wo = wp + o * K, *bo = b ? b + o : NULL, *xk = xn + k * Cg * Hp * Wq;
                T *yo = y + (n * O + o) * P;
                for (int64_t i0 = 0; i0 < tiles; i0 += nt) {
                    const T *xt[8];
                    int64_t yoff[8], len[8];
                    int nvalid = tiles - i0 < nt ? (int)(tiles - i0) : nt;
                    for (int t = 0; t < nt; t++) {
                        int64_t i = i0 + (t < nvalid ? t : nvalid - 1), oh = i / tw, ow0 = i % tw * V;
                        xt[t] = xk + oh * g->SH * Wq + ow0;
                        yoff[t] = oh * OW + ow0;
                        len[t] = OW - ow0 < V ? OW - ow0 : V;
                    }
#define TILES_OF(OG) FN(direct_tiles)(g, Cg, OG, wo, bo, xt, yo, P, yoff, len, nvalid, add)
                    DIRECT_SWITCH(TILES_OF)
#undef TILES_OF
                }
            }
    }
}

/* A vector's lanes folded to L = 16 bytes of T (4 floats, 2 doubles) by
 * adding halves twice: lane l of the result is ((a_l + a_l+V/2) + (a_l+V/4
 * + a_l+3V/4)), the same on every path. */
typedef union {
    VT v;
    T __attribute__((vector_size(32))) h[2];
    T __attribute__((vector_size(16))) q[4];
} FN(fold_u);
typedef T FN(quarter_u) __attribute__((vector_size(16), aligned(sizeof(T))));
#define L ((int64_t)(16 / sizeof(T)))

/* The weight gradient's sums over ns samples for og channels (a constant
 * after inlining) by TILES(og) weights, weight q's input read at offset
 * qo[q] of the padded planes xk (xs elements per sample): acc[o][q] = the
 * sum over samples, rows and tiles of the gradient tile times the input
 * tile; each folded to L lanes and added to s + (o K + q) L (the first
 * nvalid weights). dp: the gradient packed tile by tile, [ns][OH][tw][og][V]
 * (zeros past OW): one pointer walks it, so the loop keeps its counters in
 * registers. */
static inline __attribute__((always_inline)) void FN(direct_dw_tiles)(const cr_window *g, int og, const T *xk,
                                                                      const int64_t *qo, const T *dp,
                                                                      int64_t tw, int64_t K, int nvalid, T *s,
                                                                      int64_t ns, int64_t xs)
{
    const int nq = TILES(og);
    const int64_t Wq = ROW_Q(g);
    VT acc[8][8];
    for (int o = 0; o < og; o++)
        for (int q = 0; q < nq; q++) acc[o][q] = (VT){0};
    for (int64_t j = 0; j < ns; j++)
        for (int64_t oh = 0; oh < g->OH; oh++) {
            const T *xr = xk + j * xs + oh * g->SH * Wq;
            for (int64_t t = 0; t < tw; t++, xr += V, dp += og * V) {
                VT xv[8];
                for (int q = 0; q < nq; q++) xv[q] = VLOAD(xr + qo[q]);
                for (int o = 0; o < og; o++) {
                    /* one load into a register: read as volatile, because GCC
                     * otherwise folds the load into each of the nq FMAs below and the
                     * loop becomes bound by loads (about 15% of the kernel's time);
                     * volatile only fixes the number of loads, not the value */
                    VT dv = *(volatile const FN(vec_u) *)(dp + o * V);
                    for (int q = 0; q < nq; q++) acc[o][q] += dv * xv[q];
                }
            }
        }
    for (int o = 0; o < og; o++)
        for (int q = 0; q < nvalid; q++) {
            FN(fold_u) u = {.v = acc[o][q]};
            u.h[0] += u.h[1];
            FN(quarter_u) *d = (FN(quarter_u) *)(s + (o * K + q) * L);
            *d += u.q[0] + u.q[1];
        }
}

/* dw [O, Cg KH KW] = the weight gradient of the direct convolution over
 * samples [n0, n0+nb): dw[o,c,ki,kj] = the sum over (n, oh, ow) of
 * gy[n,o,oh,ow] xpad[n, c, oh SH + ki DH, ow + kj DW], in an order fixed by
 * the shapes: V lanes per weight (ow mod V) summed in registers over groups
 * of ns samples (dw_group: enough tiles that the registers' fold into
 * memory is amortised), folded to L lanes and added to lane sums (acc)
 * group by group, the L lanes pairwise at the end. xp: ns C Hp Wq elements;
 * dp: ns 8 OH OWq (a run of channels' gradient packed by tiles); acc: O Cg
 * KH KW L. */
__attribute__((target_clones("arch=x86-64-v4", "default"))) static void
FN(conv_direct_dw)(const cr_window *g, int64_t G, int64_t O, const T *x, const T *gy, int64_t n0, int64_t nb,
                   T *dw, T *xp, T *dp, T *acc)
{
    const int64_t C = g->C, Cg = C / G, Og = O / G, KK = g->KH * g->KW, K = Cg * KK, OW = g->OW,
                  P = g->OH * OW;
    const int64_t Hp = g->H + 2 * g->PH, Wq = ROW_Q(g), nw = O * K, xs = C * Hp * Wq;
    const int64_t tw = (OW + V - 1) / V, group = dw_group(g, V);
    memset(acc, 0, (size_t)(nw * L) * sizeof(T));
    for (int64_t n1 = n0; n1 < n0 + nb; n1 += group) {
        int64_t ns = n0 + nb - n1 < group ? n0 + nb - n1 : group;
        const T *xn = x + n1 * xs; /* in place: xs is a sample */
        if (!IN_PLACE(g)) {
            for (int64_t j = 0; j < ns; j++)
                FN(pad_planes)(g, C, x + (n1 + j) * C * g->H * g->W, xp + j * xs);
            xn = xp;
        }
        for (int64_t k = 0; k < G; k++)
            for (int64_t o0 = 0; o0 < Og; o0 += 8) {
                int og = Og - o0 < 8 ? (int)(Og - o0) : 8, nq = TILES(og);
                int64_t o = k * Og + o0;
                /* dp[j][oh][t][i][l] = gy[n1 + j, o + i, oh, t V + l], zero past OW */
                for (int64_t j = 0; j < ns; j++)
                    for (int64_t oh = 0; oh < g->OH; oh++)
                        for (int64_t t = 0; t < tw; t++)
                            for (int64_t i = 0; i < og; i++) {
                                T *d = dp + (((j * g->OH + oh) * tw + t) * og + i) * V;
                                const T *r = gy + ((n1 + j) * O + o + i) * P + oh * OW + t * V;
                                int64_t len = OW - t * V < V ? OW - t * V : V;
                                if (len == V) { /* a vector copy, not a call */
                                    FN(vec_u) v = VLOAD(r);
                                    memcpy(d, &v, sizeof v);
                                    continue;
                                }
                                memcpy(d, r, (size_t)len * sizeof(T));
                                memset(d + len, 0, (size_t)(V - len) * sizeof(T));
                            }
                const T *xk = xn + k * Cg * Hp * Wq;
                T *so = acc + o * K * L;
                for (int64_t j0 = 0; j0 < K; j0 += nq) {
                    int64_t qo[8];
                    int nvalid = K - j0 < nq ? (int)(K - j0) : nq;
                    for (int q = 0; q < nq; q++) {
                        int64_t j = j0 + (q < nvalid ? q : nvalid - 1), c = j / KK, ki = j % KK / g->KW,
                                kj = j % g->KW;
                        qo[q] = (c * Hp + ki * g->DH) * Wq + kj * g->DW;
                    }
#define DW_OF(OG) FN(direct_dw_tiles)(g, OG, xk, qo, dp, tw, K, nvalid, so + j0 * L, ns, xs)
                    DIRECT_SWITCH(DW_OF)
#undef DW_OF
                }
            }
    }
    for (int64_t j = 0; j < nw; j++) {
        T *s = acc + j * L;
        for (int64_t h = L / 2; h >= 1; h /= 2)
            for (int64_t l = 0; l < h; l++) s[l] += s[l + h];
        dw[j] = s[0];
    }
}

/* ---- Winograd F(2x2, 3x3) ----
 * A 3x3 correlation (stride 1, dilation 1) by 2x2 output tiles (Lavin and
 * Gray, 2015): with d the tile's 4x4 input patch and g a 3x3 filter, the
 * tile is A^T [(G g G^T) (.) (B^T d B)] A, where
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 *   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 *   A^T = [1 1 1 0; 0 1 -1 -1].
 * Summed over input channels, each of the 16 elementwise products becomes
 * a product of matrices, [O, C] by [C, tiles]: 16 multiply-adds per tile and
 * channel pair instead of 36. The transforms only add (and halve the
 * weights), so the rounding stays near the direct kernel's. Every output
 * tile is computed on its own (the products' lanes are independent tiles,
 * the channel sums run in channel order), so neither blocks, chunks nor
 * threads change a bit. */

/* wt: 16 planes of [O, Cg] (u = G g G^T of each filter, plane 4 i + j for
 * u[i][j]), each packed as pack_weights does (runs of og <= 8 output
 * channels of a group as [Cg][og]). */
static void FN(winograd_weights)(int64_t G, int64_t O, int64_t Cg, const T *w, T *wt)
{
    const int64_t Og = O / G, plane = O * Cg;
    for (int64_t o = 0; o < O; o++) {
        int64_t k = o / Og, ol = o % Og, o0 = ol / 8 * 8, og = Og - o0 < 8 ? Og - o0 : 8;
        T *dst = wt + (k * Og + o0) * Cg + (ol - o0); /* + c og: filter (o, c) in each plane */
        for (int64_t c = 0; c < Cg; c++) {
            const T *f = w + (o * Cg + c) * 9;
            T t[4][3];
            for (int j = 0; j < 3; j++) { /* t = G g */
                t[0][j] = f[j];
                t[1][j] = (T)0.5 * (f[j] + f[3 + j] + f[6 + j]);
                t[2][j] = (T)0.5 * (f[j] - f[3 + j] + f[6 + j]);
                t[3][j] = f[6 + j];
            }
            for (int i = 0; i < 4; i++) { /* u = t G^T, u[i][j] to plane 4 i + j */
                T *u = dst + c * og + 4 * i * plane;
                u[0] = t[i][0];
                u[plane] = (T)0.5 * (t[i][0] + t[i][1] + t[i][2]);
                u[2 * plane] = (T)0.5 * (t[i][0] - t[i][1] + t[i][2]);
                u[3 * plane] = t[i][2];
            }
        }
    }
}

/* xq: the samples' planes inside a border of zeros (PH rows and PW columns
 * before, enough after for whole 4x4 patches: Hq = 2 TH + 2 rows of 2 TW + 2
 * columns), each row stored as its even columns then its odd ones (TW + 1
 * each): the patch column 2 tw + j of every tile of a row is then one
 * contiguous run (even or odd, from tw or tw + 1). */
static inline __attribute__((always_inline)) void FN(winograd_pad)(const cr_window *g, int64_t planes,
                                                                   const T *x, T *xq, int64_t TH, int64_t TW)
{
    typedef TI FN(pmask) __attribute__((vector_size(64)));
    FN(pmask) me, mo; /* the even and the odd lanes of two vectors */
    for (int64_t l = 0; l < V; l++) {
        me[l] = (TI)(2 * l);
        mo[l] = (TI)(2 * l + 1);
    }
    const int64_t Hq = 2 * TH + 2, half = TW + 1, R = 2 * half, W = g->W, PW = g->PW;
    for (int64_t q = 0; q < planes; q++) {
        T *d = xq + q * Hq * R;
        const T *s = x + q * g->H * W;
        memset(d, 0, (size_t)(Hq * R) * sizeof(T));
        for (int64_t h = 0; h < g->H && g->PH + h < Hq; h++) {
            T *r = d + (g->PH + h) * R;
            const T *sr = s + h * W;
            /* x[w] goes to column PW + w: to the even half when PW + w is even */
            T *ev = r + (PW & 1 ? half + PW / 2 : PW / 2), *od = r + (PW & 1 ? (PW + 1) / 2 : half + PW / 2);
            int64_t w = 0;
            for (; w + 2 * V <= W; w += 2 * V) { /* (R >= W + 2 PW: every column has room) */
                VT a = VLOAD(sr + w), b = VLOAD(sr + w + V);
                VT e = __builtin_shuffle(a, b, me), o = __builtin_shuffle(a, b, mo);
                memcpy(ev + w / 2, &e, sizeof e);
                memcpy(od + w / 2, &o, sizeof o);
            }
            for (; w < W; w++) {
                int64_t col = PW + w;
                r[(col & 1) * half + (col >> 1)] = sr[w];
            }
        }
    }
}

/* The input transform of n tiles of one tile row (tw0 .. tw0 + n) of one
 * plane, p at its first patch row: v = B^T d B, plane 4 a + b of v to
 * u[(4 a + b) ks + j] for tile j. V tiles at a time: the patch columns
 * are runs of the even and odd halves (reading up to V past a row: the
 * scratch has room); a last partial vector stores only its tiles. */
static inline __attribute__((always_inline)) void FN(winograd_in)(const T *restrict p, int64_t R,
                                                                  int64_t half, int64_t tw0, int64_t n,
                                                                  T *restrict u, int64_t ks)
{
    const T *e[4], *q[4];
    for (int i = 0; i < 4; i++) {
        e[i] = p + i * R + tw0;
        q[i] = e[i] + half;
    }
    for (int64_t j = 0; j < n; j += V) {
        /* B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3 of the columns e[j], q[j], e[j+1], q[j+1] */
        VT d[4][4], r[4][4], v[16];
        for (int i = 0; i < 4; i++) {
            d[i][0] = VLOAD(e[i] + j);
            d[i][1] = VLOAD(q[i] + j);
            d[i][2] = VLOAD(e[i] + j + 1);
            d[i][3] = VLOAD(q[i] + j + 1);
        }
        for (int b = 0; b < 4; b++) {
            r[0][b] = d[0][b] - d[2][b];
            r[1][b] = d[1][b] + d[2][b];
            r[2][b] = d[2][b] - d[1][b];
            r[3][b] = d[1][b] - d[3][b];
        }
        for (int a = 0; a < 4; a++) { /* (B^T d) B */
            v[4 * a + 0] = r[a][0] - r[a][2];
            v[4 * a + 1] = r[a][1] + r[a][2];
            v[4 * a + 2] = r[a][2] - r[a][1];
            v[4 * a + 3] = r[a][1] - r[a][3];
        }
        if (n - j >= V) { /* (a constant size: a vector store, not a call or rep movs) */
            for (int i = 0; i < 16; i++) memcpy(u + i * ks + j, &v[i], sizeof(VT));
            continue;
        }
        for (int i = 0; i < 16; i++) {
            T t[V];
            memcpy(t, &v[i], sizeof t);
            for (int64_t l = 0; l < n - j; l++) u[i * ks + j + l] = t[l];
        }
    }
}

/* Lanes interleaved: lo = a0 b0 a1 b1 .. (the first halves), hi = the
 * second halves'. */
static inline __attribute__((always_inline)) void FN(interleave)(VT a, VT b, VT *lo, VT *hi)
{
    typedef TI FN(mask) __attribute__((vector_size(64)));
    FN(mask) ml, mh;
    for (int64_t l = 0; l < V; l++) {
        ml[l] = (TI)(l / 2 + (l % 2) * V);
        mh[l] = (TI)(V / 2 + l / 2 + (l % 2) * V);
    }
    *lo = __builtin_shuffle(a, b, ml);
    *hi = __builtin_shuffle(a, b, mh);
}

/* The output transform of n tiles of one tile row of one output plane: the
 * tile A^T m A (m: plane 4 i + j at mp[(4 i + j) ks + j']) plus bias to
 * rows y0, y1 (y1 NULL past the last row) at columns 2 tw, 2 tw + 1 (the
 * latter only below OW), or added to them; V tiles at a time. */
static inline __attribute__((always_inline)) void FN(winograd_out)(const T *restrict mp, int64_t ks,
                                                                   int64_t tw0, int64_t n, int64_t OW, T bias,
                                                                   bool add, T *restrict y0, T *restrict y1)
{
    for (int64_t j = 0; j < n; j += V) {
        VT m[16], s[2][4], v[2][2];
        for (int i = 0; i < 16; i++) m[i] = VLOAD(mp + i * ks + j);
        for (int b = 0; b < 4; b++) {
            s[0][b] = m[b] + m[4 + b] + m[8 + b];
            s[1][b] = m[4 + b] - m[8 + b] - m[12 + b];
        }
        for (int a = 0; a < 2; a++) {
            v[a][0] = bias + (s[a][0] + s[a][1] + s[a][2]);
            v[a][1] = bias + (s[a][1] - s[a][2] - s[a][3]);
        }
        /* columns 2 (tw0 + j) .. : 2 V of them, fewer at the row's end */
        int64_t col = 2 * (tw0 + j), cols = OW - col < 2 * V ? OW - col : 2 * V;
        if (cols > 2 * (n - j)) cols = 2 * (n - j);
        for (int a = 0; a < 2; a++) {
            T *d = a ? y1 : y0;
            if (!d) continue;
            VT lo, hi;
            FN(interleave)(v[a][0], v[a][1], &lo, &hi);
            if (cols == 2 * V) { /* whole vectors, stored from registers */
                if (add) {
                    lo += VLOAD(d + col);
                    hi += VLOAD(d + col + V);
                }
                memcpy(d + col, &lo, sizeof lo);
                memcpy(d + col + V, &hi, sizeof hi);
                continue;
            }
            T t[2 * V];
            memcpy(t, &lo, sizeof lo);
            memcpy(t + V, &hi, sizeof hi);
            for (int64_t l = 0; l < cols; l++) d[col + l] = add ? d[col + l] + t[l] : t[l];
        }
    }
}

/* m [og][ld] (+ nvalid vectors) = the products of og packed weight rows
 * (wp: [Cg][og]) with nt vectors of u ([Cg][ld]): og and nt constants after
 * inlining, so the og nt accumulators stay in registers. Vectors past
 * nvalid repeat the last valid one and are not stored. */
static inline __attribute__((always_inline)) void
FN(winograd_tiles)(int64_t Cg, int og, int nt, int nvalid, const T *wp, const T *u, T *m, int64_t ld)
{
    VT acc[8][8];
    const T *ut[8];
    for (int t = 0; t < nt; t++) ut[t] = u + (t < nvalid ? t : nvalid - 1) * V;
    for (int o = 0; o < og; o++)
        for (int t = 0; t < nt; t++) acc[o][t] = (VT){0};
    for (int64_t c = 0; c < Cg; c++, wp += og) {
        VT xv[8];
        for (int t = 0; t < nt; t++) xv[t] = VLOAD(ut[t] + c * ld);
        for (int o = 0; o < og; o++)
            for (int t = 0; t < nt; t++) acc[o][t] += wp[o] * xv[t];
    }
    for (int o = 0; o < og; o++)
        for (int t = 0; t < nvalid; t++) memcpy(m + o * ld + t * V, &acc[o][t], sizeof(VT));
}

/* y (+)= the 3x3 correlation (stride 1, dilation 1) of samples [n0, n0+nb)
 * of x with the transformed weight wt (winograd_weights), plus b. The tiles
 * of the block, in (sample, tile row, tile column) order, go in chunks of
 * WG_CHUNK: per group the input transform to u [16][Cg][WG_CHUNK], 16
 * products to m [16][Og][WG_CHUNK], the output transform. xq: nb C Hq R
 * elements (winograd_pad). */
__attribute__((target_clones("arch=x86-64-v4", "default"))) static void
FN(conv_winograd)(const cr_window *g, int64_t G, int64_t O, const T *x, const T *wt, const T *b, int64_t n0,
                  int64_t nb, T *y, bool add, T *xq, T *u, T *m)
{
    const int64_t C = g->C, Cg = C / G, Og = O / G, OH = g->OH, OW = g->OW, P = OH * OW;
    const int64_t TH = (OH + 1) / 2, TW = (OW + 1) / 2, half = TW + 1, R = 2 * half, Hq = 2 * TH + 2;
    const int64_t per = TH * TW, total = nb * per, ld = WG_CHUNK, plane = O * Cg;
    FN(winograd_pad)(g, nb * C, x + n0 * C * g->H * g->W, xq, TH, TW);
    for (int64_t t0 = 0; t0 < total; t0 += ld) {
        const int64_t nt = total - t0 < ld ? total - t0 : ld, nv = (nt + V - 1) / V;
        for (int64_t k = 0; k < G; k++) {
            for (int64_t s = t0; s < t0 + nt;) { /* the input transform, a tile row at a time */
                int64_t n = s / per, th = s % per / TW, tw0 = s % per % TW;
                int64_t len = TW - tw0 < t0 + nt - s ? TW - tw0 : t0 + nt - s;
                for (int64_t c = 0; c < Cg; c++) FN(winograd_in)
                (xq + ((n * C + k * Cg + c) * Hq + 2 * th) * R, R, half, tw0, len, u + c * ld + (s - t0),
                 Cg * ld);
                s += len;
            }
            if (nt < nv * V) /* the last vector's lanes past the tiles: zeros, not stale scratch */
                for (int64_t i = 0; i < 16 * Cg; i++)
                    memset(u + i * ld + nt, 0, (size_t)(nv * V - nt) * sizeof(T));
            for (int64_t i = 0; i < 16; i++) { /* m[i] = wt[i] u[i], per run of output channels */
                const T *ui = u + i * Cg * ld;
                for (int64_t o0 = 0; o0 < Og; o0 += 8) {
                    int og = Og - o0 < 8 ? (int)(Og - o0) : 8;
                    const T *wp = wt + i * plane + (k * Og + o0) * Cg;
                    T *mi = m + (i * Og + o0) * ld;
                    if (og == 8) { /* 3 vectors a run; the last run as many as are left */
                        int64_t v0 = 0;
                        for (; v0 + 3 <= nv; v0 += 3)
                            FN(winograd_tiles)(Cg, 8, 3, 3, wp, ui + v0 * V, mi + v0 * V, ld);
                        if (nv - v0 == 2) FN(winograd_tiles)(Cg, 8, 2, 2, wp, ui + v0 * V, mi + v0 * V, ld);
                        if (nv - v0 == 1) FN(winograd_tiles)(Cg, 8, 1, 1, wp, ui + v0 * V, mi + v0 * V, ld);
                        continue;
                    }
                    int nq = TILES(og);
                    for (int64_t v0 = 0; v0 < nv; v0 += nq) {
                        int nvalid = nv - v0 < nq ? (int)(nv - v0) : nq;
#define WG_OF(OG) FN(winograd_tiles)(Cg, OG, TILES(OG), nvalid, wp, ui + v0 * V, mi + v0 * V, ld)
                        DIRECT_SWITCH(WG_OF)
#undef WG_OF
                    }
                }
            }
            for (int64_t s = t0; s < t0 + nt;) { /* the output transform */
                int64_t n = s / per, th = s % per / TW, tw0 = s % per % TW;
                int64_t len = TW - tw0 < t0 + nt - s ? TW - tw0 : t0 + nt - s;
                for (int64_t o = 0; o < Og; o++) {
                    T *yp = y + ((n0 + n) * O + k * Og + o) * P + 2 * th * OW;
                    FN(winograd_out)
                    (m + o * ld + (s - t0), Og * ld, tw0, len, OW, b ? b[k * Og + o] : 0, add, yp,
                     2 * th + 1 < OH ? yp + OW : NULL);
                }
                s += len;
            }
        }
    }
}
/* ---- Winograd F(2x2, 3x3): the weight gradient ----
 * With a tile y = A^T [U (.) X] A (U = G g G^T, X = B^T d B), dL/dU is the
 * sum over tiles of (A dY A^T) (.) X, and dg = G^T (dL/dU) G. Per plane i
 * of the 16 that is a product over tiles, dU[i][o][c] = the sum over t of
 * Y[i][t][o] X[i][t][c]: here with c along the vector lanes, so the tiles
 * and the input's channels go channel-last first (V x V transposes). */

/* r[j][l] = r[l][j]: log2 V rounds of interleaving row i with row i + V/2
 * (each rotates the bits of (row, lane) by one: log2 V of them swap the
 * halves). */
static inline __attribute__((always_inline)) void FN(transpose_vv)(const T *src, int64_t ss, T *dst,
                                                                   int64_t ds)
{
    VT r[V], t[V];
    for (int64_t i = 0; i < V; i++) r[i] = VLOAD(src + i * ss);
    for (int64_t s = 1; s < V; s *= 2) {
        for (int64_t i = 0; i < V / 2; i++) FN(interleave)(r[i], r[i + V / 2], &t[2 * i], &t[2 * i + 1]);
        memcpy(r, t, sizeof r);
    }
    for (int64_t j = 0; j < V; j++) memcpy(dst + j * ds, &r[j], sizeof(VT));
}

/* dst [Hq][Wq][Cq] = n planes of h x w (src, plane after plane) channel-last,
 * plane row hh at dst row r0 + hh, column ww at c0 + ww; zeros elsewhere. */
static inline __attribute__((always_inline)) void FN(channels_last)(const T *src, int64_t n, int64_t h,
                                                                    int64_t w, int64_t r0, int64_t c0,
                                                                    int64_t Hq, int64_t Wq, int64_t Cq,
                                                                    T *dst)
{
    memset(dst, 0, (size_t)(Hq * Wq * Cq) * sizeof(T));
    for (int64_t ch0 = 0; ch0 < n; ch0 += V)
        for (int64_t hh = 0; hh < h; hh++)
            for (int64_t w0 = 0; w0 < w; w0 += V) {
                const T *s = src + ch0 * h * w + hh * w + w0;
                T *d = dst + ((r0 + hh) * Wq + c0 + w0) * Cq + ch0;
                if (ch0 + V <= n && w0 + V <= w) {
                    FN(transpose_vv)(s, h * w, d, Cq);
                    continue;
                }
                for (int64_t ch = 0; ch < V && ch0 + ch < n; ch++)
                    for (int64_t j = 0; j < V && w0 + j < w; j++) d[j * Cq + ch] = s[ch * h * w + j];
            }
}

/* acc[o][q] = the sum over nt tiles of y[t][o] x[t][q V ..] (og and nq
 * constants after inlining), added to du + o ldu + q V. y rows have ldy
 * elements (room for og past the last channel: the extra rows read zeros
 * and only nvalid are stored), x rows ldx. */
static inline __attribute__((always_inline)) void FN(winograd_dw_tiles)(int og, int nq, int nvalid,
                                                                        int64_t nt, const T *y, int64_t ldy,
                                                                        const T *x, int64_t ldx, T *du,
                                                                        int64_t ldu)
{
    VT acc[16][4];
    for (int o = 0; o < og; o++)
        for (int q = 0; q < nq; q++) acc[o][q] = (VT){0};
    for (int64_t t = 0; t < nt; t++, y += ldy, x += ldx) {
        VT xv[4];
        for (int q = 0; q < nq; q++) xv[q] = VLOAD(x + q * V);
        for (int o = 0; o < og; o++)
            for (int q = 0; q < nq; q++) acc[o][q] += y[o] * xv[q];
    }
    for (int o = 0; o < og && o < nvalid; o++) /* (og: GCC then sees acc set) */
        for (int q = 0; q < nq; q++) {
            VT r = VLOAD(du + o * ldu + q * V) + acc[o][q];
            memcpy(du + o * ldu + q * V, &r, sizeof r);
        }
}

/* du [16][O][Cq] += the transformed weight gradient of samples [n0,
 * n0+nb) (Cq: Cg rounded up to vectors), sample by sample, in chunks of
 * WG_CHUNK / 2 tiles: the sums run over the tiles in order, so they depend on
 * the samples given, not on threads. Scratch: xn (the sample's group
 * channel-last, padded: Hq Wq Cq), yn (its gradient: 2 TH 2 TW Op), xt [16][ch][Cq]
 * and yt [16][ch][Oq] (the chunk's transforms). */
__attribute__((target_clones("arch=x86-64-v4", "default"))) static void
FN(conv_winograd_dw)(const cr_window *g, int64_t G, int64_t O, const T *x, const T *gy, int64_t n0,
                     int64_t nb, T *du, T *xn, T *yn, T *xt, T *yt)
{
    const int64_t C = g->C, Cg = C / G, Og = O / G, OH = g->OH, OW = g->OW;
    const int64_t TH = (OH + 1) / 2, TW = (OW + 1) / 2, Hq = 2 * TH + 2, Wq = 2 * TW + 2, Yw = 2 * TW;
    const int64_t Cq = (Cg + V - 1) / V * V, Op = (Og + V - 1) / V * V, Oq = Op + 16, ch = WG_CHUNK / 2;
    const int64_t per = TH * TW;
    memset(yt, 0, (size_t)(16 * ch * Oq) * sizeof(T)); /* lanes past Op stay zero */
    for (int64_t n = n0; n < n0 + nb; n++)
        for (int64_t k = 0; k < G; k++) {
            FN(channels_last)
            (x + (n * C + k * Cg) * g->H * g->W, Cg, g->H, g->W, g->PH, g->PW, Hq, Wq, Cq, xn);
            FN(channels_last)(gy + (n * O + k * Og) * OH * OW, Og, OH, OW, 0, 0, 2 * TH, Yw, Op, yn);
            for (int64_t t0 = 0; t0 < per; t0 += ch) {
                const int64_t nt = per - t0 < ch ? per - t0 : ch;
                for (int64_t t = 0; t < nt; t++) {
                    int64_t th = (t0 + t) / TW, tw = (t0 + t) % TW;
                    const T *p = xn + (2 * th * Wq + 2 * tw) * Cq;
                    for (int64_t cv = 0; cv < Cq; cv += V) { /* X = B^T d B */
                        VT d[4][4], r[4][4];
                        for (int i = 0; i < 4; i++)
                            for (int j = 0; j < 4; j++) d[i][j] = VLOAD(p + (i * Wq + j) * Cq + cv);
                        for (int j = 0; j < 4; j++) {
                            r[0][j] = d[0][j] - d[2][j];
                            r[1][j] = d[1][j] + d[2][j];
                            r[2][j] = d[2][j] - d[1][j];
                            r[3][j] = d[1][j] - d[3][j];
                        }
                        for (int a = 0; a < 4; a++) {
                            VT v[4] = {r[a][0] - r[a][2], r[a][1] + r[a][2], r[a][2] - r[a][1],
                                       r[a][1] - r[a][3]};
                            for (int b = 0; b < 4; b++)
                                memcpy(xt + ((4 * a + b) * ch + t) * Cq + cv, &v[b], sizeof(VT));
                        }
                    }
                    const T *q = yn + (2 * th * Yw + 2 * tw) * Op;
                    for (int64_t ov = 0; ov < Op; ov += V) { /* Y = A dY A^T, A = [1 0; 1 1; 1 -1; 0 -1] */
                        VT e[2][2], r[4][2];
                        for (int a = 0; a < 2; a++)
                            for (int b = 0; b < 2; b++) e[a][b] = VLOAD(q + (a * Yw + b) * Op + ov);
                        for (int b = 0; b < 2; b++) {
                            r[0][b] = e[0][b];
                            r[1][b] = e[0][b] + e[1][b];
                            r[2][b] = e[0][b] - e[1][b];
                            r[3][b] = -e[1][b];
                        }
                        for (int a = 0; a < 4; a++) {
                            VT v[4] = {r[a][0], r[a][0] + r[a][1], r[a][0] - r[a][1], -r[a][1]};
                            for (int b = 0; b < 4; b++)
                                memcpy(yt + ((4 * a + b) * ch + t) * Oq + ov, &v[b], sizeof(VT));
                        }
                    }
                }
                for (int64_t i = 0; i < 16; i++) { /* du[i] += yt[i]^T xt[i] */
                    const T *xi = xt + i * ch * Cq, *yi = yt + i * ch * Oq;
                    T *di = du + (i * O + k * Og) * Cq;
                    for (int64_t c0 = 0; c0 < Cq; c0 += 4 * V) {
                        int nq = Cq - c0 >= 4 * V ? 4 : (int)((Cq - c0) / V);
                        int og = nq == 4 ? 6 : nq == 3 ? 8 : nq == 2 ? 12 : 16;
                        for (int64_t o0 = 0; o0 < Og; o0 += og) {
                            int nvalid = Og - o0 < og ? (int)(Og - o0) : og;
#define DW_RUN(OG, NQ)                                                                                       \
    FN(winograd_dw_tiles)(OG, NQ, nvalid, nt, yi + o0, Oq, xi + c0, Cq, di + o0 * Cq + c0, Cq)
                            switch (nq) {
                            case 4: DW_RUN(6, 4); break;
                            case 3: DW_RUN(8, 3); break;
                            case 2: DW_RUN(12, 2); break;
                            default: DW_RUN(16, 1); break;
                            }
#undef DW_RUN
                        }
                    }
                }
            }
        }
}

/* dw [O, Cg, 3, 3] += G^T du G for every filter (du [16][O][Cq]). */
static void FN(winograd_dw_finish)(int64_t O, int64_t Cg, int64_t Cq, const T *du, T *dw)
{
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < Cg; c++) {
            T u[4][4], t[3][4];
            for (int i = 0; i < 16; i++) u[i / 4][i % 4] = du[(i * O + o) * Cq + c];
            for (int j = 0; j < 4; j++) { /* t = G^T u, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1] */
                t[0][j] = u[0][j] + (T)0.5 * (u[1][j] + u[2][j]);
                t[1][j] = (T)0.5 * (u[1][j] - u[2][j]);
                t[2][j] = (T)0.5 * (u[1][j] + u[2][j]) + u[3][j];
            }
            T *f = dw + (o * Cg + c) * 9;
            for (int i = 0; i < 3; i++) { /* t G */
                f[3 * i + 0] += t[i][0] + (T)0.5 * (t[i][1] + t[i][2]);
                f[3 * i + 1] += (T)0.5 * (t[i][1] - t[i][2]);
                f[3 * i + 2] += (T)0.5 * (t[i][1] + t[i][2]) + t[i][3];
            }
        }
}

#undef L
#undef TILES
#undef DIRECT_SWITCH
#undef ROW_Q
#undef IN_PLACE
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
