/* Convolutions (conv1d, conv2d; PyTorch's NCL/NCHW layout, weight [O, C/G, k...],
 * stride, zero padding, dilation, groups, optional bias): Winograd F(2x2,
 * 3x3) for 3x3 stride-1 ones with enough channels, direct kernels (stride 1
 * along W; the input gradient as a convolution of dY with the flipped
 * weight), or lowered to products: im2col of a block of samples, then one
 * gemm per group. A 1x1 convolution whose samples are large is a plain
 * product on the input itself. */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops_internal.h"

typedef struct {
    cr_window g;    /* one sample: C input channels, the window, the output OH x OW */
    int64_t groups; /* G: input and output channels split into G independent convolutions */
} conv_attr;

/* The columns of one block of samples stay below this many bytes (at least
 * one sample per block): big enough that the products are not tiny, small
 * enough to stay in cache between im2col and the product, and enough blocks
 * to share among threads. The blocks depend only on the shapes, never on the
 * thread count, and the weight gradient sums the blocks' products in block
 * order, so results are the same on any number of threads. */
int64_t cr_conv_block_bytes = (int64_t)1 << 18;
/* The forward keeps the columns of the whole batch for the weight gradient
 * (instead of backward building them again) when they take at most this. */
int64_t cr_conv_keep_bytes = (int64_t)1 << 25;
/* Groups with at most this many output channels (and stride 1 along W) run
 * the direct kernels for the output and the weight gradient, and with
 * stride 1 both ways the input gradient too (a direct convolution of dY
 * with the flipped weight). -1, the default, means every group on a CPU
 * with AVX-512, where the kernels' 64-byte tiles are registers and beat the
 * products at every size measured (bench/conv), and 8 elsewhere: the
 * baseline build splits each tile into four SSE registers, and only a
 * product too thin for BLIS's micro-kernel (32 rows for sgemm on skx) is
 * still worth it there. */
int64_t cr_conv_direct_channels = -1;

/* Groups with at least this many input and output channels, a 3x3 kernel,
 * stride 1, dilation 1 and padding at most 2 compute the output, the input
 * gradient (a 3x3 convolution of dY padded by 2 - P) and the weight
 * gradient by Winograd F(2x2, 3x3) (cr_k_conv_winograd, _dw: 16
 * multiply-adds per tile of 2x2 outputs and channel pair instead of 36).
 * -1, the default, means 32 on a CPU with AVX-512 and never elsewhere;
 * INT64_MAX turns it off. Measured against the direct kernels (forward and
 * backward, one thread): 64->64 on 32x32 13.5 ms against 21.6, 128->128 on
 * 16x16 28.8 against 48.4, 32->32 on 32x32 4.3 against 5.8 and on 28x28 or
 * 14x14 level; 16->16 on 28x28 8.1 against 6.1 (the transforms run along
 * tile rows, so rows of fewer than 16 tiles leave lanes idle, and they
 * weigh more next to products over few channels). */
int64_t cr_conv_winograd_channels = -1;

static int64_t winograd_limit(void)
{
    if (cr_conv_winograd_channels >= 0) return cr_conv_winograd_channels;
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx512f")) return 32;
#endif
    return INT64_MAX;
}

static int64_t direct_limit(void)
{
    if (cr_conv_direct_channels >= 0) return cr_conv_direct_channels;
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx512f")) return INT64_MAX;
#endif
    return 8;
}

/* Below this many multiply-adds an op runs its blocks on one thread: a
 * parallel region costs microseconds, more on a busy machine. */
#define CONV_PARALLEL_MACS (1 << 21)

/* The weight gradient is summed in segments of consecutive blocks, each
 * into its own partial sum (one weight's worth), and the partial sums are
 * added in segment order. The segments are fixed by the shapes: at most 64,
 * and at most 8 MiB of partial sums (a large weight gets few, and its large
 * products use BLIS's threads instead). */
#define CONV_SEGMENTS 64
#define CONV_SEGMENT_BYTES ((int64_t)8 << 20)
#define CONV_DIRECT_SEGMENTS 8

/* A 2-D header over data (elements of dt), for cr_k_gemm. */
static cr_tensor mat(cr_dtype dt, void *data, int64_t rows, int64_t cols, int64_t rs, int64_t cs)
{
    cr_tensor v;
    memset(&v, 0, sizeof v);
    v.dtype = dt;
    v.ndim = 2;
    v.shape[0] = rows;
    v.shape[1] = cols;
    v.stride[0] = rs;
    v.stride[1] = cs;
    v.data = data;
    return v;
}

/* A 1-D header over the first n elements of a scratch buffer. */
static cr_tensor flat(const cr_tensor *buf, int64_t n)
{
    cr_tensor v = mat(buf->dtype, buf->data, 1, n, n, 1);
    v.ndim = 1;
    v.shape[0] = n;
    v.stride[0] = 1;
    return v;
}

static inline char *at(const cr_tensor *t, int64_t i)
{
    return (char *)t->data + i * (int64_t)cr_dtype_size(t->dtype);
}

/* rows [O, width]: row o = b[o] (the bias, before a product added with beta 1) */
static void fill_rows(cr_dtype dt, void *rows, int64_t O, int64_t width, const void *b)
{
    for (int64_t o = 0; o < O; o++) {
        if (dt == CR_F32) {
            float *r = (float *)rows + o * width, v = ((const float *)b)[o];
            for (int64_t j = 0; j < width; j++) r[j] = v;
        } else {
            double *r = (double *)rows + o * width, v = ((const double *)b)[o];
            for (int64_t j = 0; j < width; j++) r[j] = v;
        }
    }
}

/* Between the sample-major [m, O, P] of outputs and gradients and the
 * channel-major [O, m*P] of a block's product: scatter (to_samples) or gather. */
static void reorder(bool to_samples, size_t es, char *samples, char *block, int64_t m, int64_t O, int64_t P)
{
    size_t row = (size_t)P * es;
    for (int64_t o = 0; o < O; o++)
        for (int64_t j = 0; j < m; j++) {
            char *s = samples + (size_t)(j * O + o) * row, *b = block + (size_t)(o * m + j) * row;
            memcpy(to_samples ? s : b, to_samples ? b : s, row);
        }
}

/* Sizes of one op application. */
typedef struct {
    cr_dtype dt;
    size_t es;
    int64_t N, C, O, G, Cg, Og, K, P; /* K = Cg KH KW: one group's rows of the columns */
    int64_t rows;                     /* G K: rows of the columns */
    int64_t nb, blocks;               /* samples per block, number of blocks */
    int64_t segs;                     /* segments of blocks for the weight gradient */
    bool direct;                      /* 1x1, one sample per block: the input plane is the columns */
    bool dconv;                       /* few output channels per group: the direct kernels */
    bool wino;                        /* 3x3, stride 1: Winograd for the output, dX and dW */
    int threads;                      /* scratch sets; blocks (and segments) run in parallel when > 1 */
    bool par;                         /* enough work for parallel blocks */
} conv_dims;

static conv_dims dims_of(const cr_node *n)
{
    const conv_attr *a = CR_NODE_ATTR(n, conv_attr);
    const cr_window *g = &a->g;
    conv_dims d = {.dt = n->in[0]->dtype,
                   .es = cr_dtype_size(n->in[0]->dtype),
                   .N = n->in[0]->shape[0],
                   .C = g->C,
                   .O = n->in[1]->shape[0],
                   .G = a->groups};
    d.Cg = d.C / d.G;
    d.Og = d.O / d.G;
    d.K = d.Cg * g->KH * g->KW;
    d.rows = d.G * d.K;
    d.P = g->OH * g->OW;
    int64_t sample = d.rows * d.P * (int64_t)d.es; /* bytes of one sample's columns */
    d.nb = sample >= cr_conv_block_bytes ? 1 : cr_conv_block_bytes / (sample > 0 ? sample : 1);
    if (d.nb > d.N) d.nb = d.N > 0 ? d.N : 1;
    d.blocks = (d.N + d.nb - 1) / d.nb;
    bool pointwise = g->KH == 1 && g->KW == 1 && g->SH == 1 && g->SW == 1 && g->PH == 0 && g->PW == 0;
    d.direct = pointwise && d.nb == 1;
    d.dconv = g->SW == 1 && d.Og <= direct_limit();
    int64_t wl = winograd_limit();
    d.wino = g->KH == 3 && g->KW == 3 && g->SH == 1 && g->SW == 1 && g->DH == 1 && g->DW == 1 && g->PH <= 2 &&
             g->PW <= 2 && d.Cg >= wl && d.Og >= wl;
    /* Several blocks and threads, and enough work to pay for a parallel
     * region: one block per thread at a time, each product on one thread
     * (BLIS, called inside a parallel region, runs on the calling thread),
     * which beats splitting small products between threads. Otherwise a
     * serial loop, where BLIS may use the threads. */
    int t = cr_parallel_ok() ? cr_get_num_threads() : 1; /* 1 inside a replica or a region */
    double macs = (double)d.O * (double)d.K * (double)d.P * (double)d.N;
    d.par = d.blocks > 1 && t > 1 && macs >= CONV_PARALLEL_MACS;
    d.threads = d.par ? (int)(t < d.blocks ? t : d.blocks) : 1;
    int64_t weight = d.O * d.K * (int64_t)d.es, segs = CONV_SEGMENT_BYTES / (weight > 0 ? weight : 1);
    d.segs = segs < 1 ? 1 : segs > CONV_SEGMENTS ? CONV_SEGMENTS : segs;
    /* the direct weight gradient clears and folds O K lane sums per segment:
     * fewer segments, as many as parallel blocks need on a small machine */
    if (d.dconv && d.segs > CONV_DIRECT_SEGMENTS) d.segs = CONV_DIRECT_SEGMENTS;
    if (d.segs > d.blocks) d.segs = d.blocks > 0 ? d.blocks : 1;
    return d;
}

/* This thread's scratch set: its number in the conv's own team, 0 when the
 * loop runs serially (which may be on thread k of someone else's team, a
 * data-parallel replica's, with one scratch set). */
static int thread_id(const conv_dims *d)
{
#ifdef _OPENMP
    return d->par ? omp_get_thread_num() : 0;
#else
    (void)d;
    return 0;
#endif
}

/* Scratch of `per` elements for each of d->threads threads (arena memory:
 * allocated before any parallel region, which has no current arena). */
static cr_tensor *scratch(const conv_dims *d, int64_t per)
{
    return cr_tensor_new(d->dt, CR_SHAPE(per * d->threads));
}

/* The window the direct kernels see: a 1x1 convolution with stride 1 and no
 * padding as one row of H W per plane (the same arithmetic), so its tiles
 * run along the whole plane instead of stopping at each row's end. */
static cr_window direct_window(const cr_window *g)
{
    if (g->KH != 1 || g->KW != 1 || g->SH != 1 || g->SW != 1 || g->PH != 0 || g->PW != 0) return *g;
    int64_t hw = g->H * g->W;
    return (cr_window){
        .C = g->C, .H = 1, .W = hw, .KH = 1, .KW = 1, .SH = 1, .SW = 1, .DH = 1, .DW = 1, .OH = 1, .OW = hw};
}

/* ---- forward ------------------------------------------------------------------------- */

typedef struct {
    conv_dims d;
    const cr_window *g;
    cr_window dg; /* direct_window(g) */
    const cr_tensor *x, *w, *b;
    cr_tensor *y;
    cr_tensor *cols; /* kept: one slice per block; else one per thread */
    bool kept;
    cr_tensor *yb; /* [O, nb*P] per thread, when nb > 1 */
} fwd_ctx;

static void fwd_block(const fwd_ctx *c, int64_t blk)
{
    const conv_dims *d = &c->d;
    int tid = thread_id(d);
    int64_t n0 = blk * d->nb, m = d->N - n0 < d->nb ? d->N - n0 : d->nb, width = m * d->P;
    int64_t slice = d->rows * d->nb * d->P;
    /* the block's columns [G*K, m*P]: for a direct 1x1, the sample's input [C, P] */
    char *cp = at(c->x, n0 * d->C * d->P);
    if (!d->direct) {
        cr_tensor cv = flat(c->cols, d->rows * width);
        cv.data = at(c->cols, (c->kept ? blk : tid) * slice);
        cr_k_im2col(c->g, c->x, n0, m, &cv);
        cp = cv.data;
    }
    /* the block's outputs [O, m*P]: the sample itself when the block is one */
    char *out = c->yb ? at(c->yb, tid * d->O * d->nb * d->P) : at(c->y, n0 * d->O * d->P);
    if (c->b) fill_rows(d->dt, out, d->O, width, c->b->data);
    for (int64_t k = 0; k < d->G; k++) { /* Y[g] (+)= W[g] cols[g] */
        cr_tensor wk = mat(d->dt, at(c->w, k * d->Og * d->K), d->Og, d->K, d->K, 1);
        cr_tensor ck = mat(d->dt, cp + k * d->K * width * (int64_t)d->es, d->K, width, width, 1);
        cr_tensor yk = mat(d->dt, out + k * d->Og * width * (int64_t)d->es, d->Og, width, width, 1);
        cr_k_gemm(1.0, &wk, &ck, c->b ? 1.0 : 0.0, &yk);
    }
    if (c->yb) reorder(true, d->es, at(c->y, n0 * d->O * d->P), out, m, d->O, d->P);
}

static int64_t block_size(const conv_dims *d, int64_t blk)
{
    return d->N - blk * d->nb < d->nb ? d->N - blk * d->nb : d->nb;
}

/* y (+)= the convolution of x with w (and b) under window g, O output
 * channels, on the direct kernels or, when d->wino, by Winograd F(2x2, 3x3)
 * (w transformed once first): blocks of samples as the lowering's, each
 * thread with its own scratch. The forward, and dX as a convolution of dY. */
static void conv_blocks(const conv_dims *d, const cr_window *g, int64_t O, const cr_tensor *x,
                        const cr_tensor *w, const cr_tensor *b, cr_tensor *y, bool add)
{
    cr_tensor *wt = NULL;
    if (d->wino) {
        wt = cr_tensor_new(d->dt, CR_SHAPE(16, O, w->shape[1]));
        cr_k_winograd_weights(w, d->G, wt);
    }
    int64_t per = d->wino ? cr_k_conv_winograd_scratch(g, d->G, O, d->nb)
                          : cr_k_conv_direct_scratch(g, d->G, O, d->dt, false);
    cr_tensor *s = scratch(d, per);
    CR_PAR_FOR(
        d->par, "omp parallel for schedule(static) num_threads(d->threads)",
        for (int64_t k = 0; k < d->blocks; k++) {
            cr_tensor sv = flat(s, per);
            sv.data = at(s, thread_id(d) * per);
            if (wt)
                cr_k_conv_winograd(g, d->G, x, wt, b, k * d->nb, block_size(d, k), y, add, &sv);
            else
                cr_k_conv_direct(g, d->G, x, w, b, k * d->nb, block_size(d, k), y, add, &sv);
        });
}

static void conv_fwd(cr_node *n)
{
    fwd_ctx c = {.d = dims_of(n),
                 .g = &CR_NODE_ATTR(n, conv_attr)->g,
                 .dg = direct_window(&CR_NODE_ATTR(n, conv_attr)->g),
                 .x = n->in[0],
                 .w = n->in[1],
                 .b = n->n_in > 2 ? n->in[2] : NULL,
                 .y = n->out};
    const conv_dims *d = &c.d;
    if (d->wino || d->dconv) {
        conv_blocks(&c.d, d->wino ? c.g : &c.dg, c.d.O, c.x, c.w, c.b, c.y, false);
        return;
    }
    int64_t slice = d->rows * d->nb * d->P, all;
    /* keep the columns for dW when it will be wanted and they are not too big */
    c.kept = !d->direct && cr_grad_enabled() && c.w->requires_grad && cr_mul_ok(slice, d->blocks, &all) &&
             all <= cr_conv_keep_bytes / (int64_t)d->es;
    if (!d->direct) c.cols = c.kept ? cr_tensor_new(d->dt, CR_SHAPE(all)) : scratch(d, slice);
    if (c.kept) n->saved = c.cols;
    if (d->nb > 1) c.yb = scratch(d, d->O * d->nb * d->P);
    CR_PAR_FOR(d->par, "omp parallel for schedule(static) num_threads(d->threads)",
               for (int64_t b = 0; b < d->blocks; b++) fwd_block(&c, b););
}

/* db[o] += the sum over samples and positions of dy[s, o, p], in double, in
 * one fixed order (eight interleaved partial sums per row so the loop
 * vectorises); the channels are independent, so threads do not change it. */
#define BIAS_GRAD(T)                                                                                         \
    do {                                                                                                     \
        const T *dy = gy->data;                                                                              \
        T *db = gb->data;                                                                                    \
        CR_PAR_FOR(                                                                                          \
            d->N * d->O * d->P > cr_parallel_threshold, "omp parallel for schedule(static)",                 \
            for (int64_t o = 0; o < d->O; o++) {                                                             \
                double s8[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0;                                              \
                for (int64_t i = 0; i < d->N; i++) {                                                         \
                    const T *r = dy + (i * d->O + o) * d->P;                                                 \
                    int64_t p = 0;                                                                           \
                    for (; p + 8 <= d->P; p += 8)                                                            \
                        for (int q = 0; q < 8; q++) s8[q] += (double)r[p + q];                               \
                    for (; p < d->P; p++) s += (double)r[p];                                                 \
                }                                                                                            \
                db[o] += (T)(s + ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]))); \
            });                                                                                              \
    } while (0)

static void bias_grad(const conv_dims *d, const cr_tensor *gy, cr_tensor *gb)
{
    if (d->dt == CR_F32)
        BIAS_GRAD(float);
    else
        BIAS_GRAD(double);
}

/* ---- backward ------------------------------------------------------------------------ */

/* dyt [m*P, O] = the block's output gradient [m, O, P] with each sample's
 * [O, P] transposed (positions as rows, for the weight gradient's product),
 * in tiles of 32 x 32 so that reads and writes both stay in cache. */
#define TRANSPOSE_TILES(T)                                                                                   \
    for (int64_t p0 = 0; p0 < P; p0 += 32)                                                                   \
        for (int64_t o0 = 0; o0 < O; o0 += 32)                                                               \
            for (int64_t p = p0; p < p0 + 32 && p < P; p++)                                                  \
                for (int64_t o = o0; o < o0 + 32 && o < O; o++)                                              \
    ((T *)dst)[p * O + o] = ((const T *)src)[o * P + p]

static void transpose_block(size_t es, const char *dy, char *dyt, int64_t m, int64_t O, int64_t P)
{
    for (int64_t j = 0; j < m; j++) {
        const char *src = dy + (size_t)(j * O * P) * es;
        char *dst = dyt + (size_t)(j * P * O) * es;
        if (es == 4)
            TRANSPOSE_TILES(float);
        else
            TRANSPOSE_TILES(double);
    }
}
#undef TRANSPOSE_TILES

typedef struct {
    conv_dims d;
    const cr_window *g;
    cr_window dg; /* direct_window(g) */
    const cr_tensor *x, *w, *gy;
    cr_tensor *gx, *gw;
    const cr_tensor *kept; /* the forward's columns, one slice per block, or NULL */
    cr_tensor *part;       /* per segment: dW^T [G][K, Og] of its blocks */
    cr_tensor *cols;       /* per thread: columns (rebuilt), or column gradients */
    cr_tensor *dyt;        /* per thread: dY^T [m*P, O] */
    cr_tensor *dyb;        /* per thread: dY [O, m*P], when nb > 1 */
    bool gx_first;         /* gx is a new buffer: written, not added to */
} bwd_ctx;

/* dW[g]^T = sum over the segment's blocks of cols[g] dY[g]^T: BLIS sums
 * fastest over the rows of dY^T [m*P, O] (a row-major operand), not over a
 * transposed view of dY. */
static void dw_segment(const bwd_ctx *c, int64_t seg)
{
    const conv_dims *d = &c->d;
    int tid = thread_id(d);
    int64_t slice = d->rows * d->nb * d->P;
    char *dyt = at(c->dyt, tid * d->nb * d->P * d->O);
    for (int64_t blk = seg * d->blocks / d->segs, end = (seg + 1) * d->blocks / d->segs; blk < end; blk++) {
        int64_t n0 = blk * d->nb, m = block_size(d, blk), width = m * d->P;
        transpose_block(d->es, at(c->gy, n0 * d->O * d->P), dyt, m, d->O, d->P);
        char *cp = at(c->x, n0 * d->C * d->P); /* a direct 1x1's columns: the input itself */
        if (c->kept) {
            cp = at(c->kept, blk * slice);
        } else if (!d->direct) {
            cr_tensor cv = flat(c->cols, d->rows * width);
            cv.data = at(c->cols, tid * slice);
            cr_k_im2col(c->g, c->x, n0, m, &cv);
            cp = cv.data;
        }
        double beta = blk == seg * d->blocks / d->segs ? 0.0 : 1.0;
        for (int64_t k = 0; k < d->G; k++) {
            cr_tensor ck = mat(d->dt, cp + k * d->K * width * (int64_t)d->es, d->K, width, width, 1);
            cr_tensor dk = mat(d->dt, dyt + k * d->Og * (int64_t)d->es, width, d->Og, d->O, 1);
            cr_tensor tk = mat(d->dt, at(c->part, (seg * d->G + k) * d->K * d->Og), d->K, d->Og, d->Og, 1);
            cr_k_gemm(1.0, &ck, &dk, beta, &tk);
        }
    }
}

/* The direct weight gradient of a segment's samples into its partial sum
 * dW [O, K] (the partial sums are added in segment order). */
static void dw_direct_segment(const bwd_ctx *c, int64_t seg)
{
    const conv_dims *d = &c->d;
    int64_t per = cr_k_conv_direct_scratch(&c->dg, d->G, d->O, d->dt, true);
    cr_tensor sv = flat(c->cols, per);
    sv.data = at(c->cols, thread_id(d) * per);
    cr_tensor pv = mat(d->dt, at(c->part, seg * d->O * d->K), d->O, d->K, d->K, 1);
    int64_t n0 = seg * d->blocks / d->segs * d->nb, n1 = (seg + 1) * d->blocks / d->segs * d->nb;
    if (n1 > d->N) n1 = d->N;
    cr_k_conv_direct_dw(&c->dg, d->G, c->x, c->gy, n0, n1 - n0, &pv, &sv);
}

/* The Winograd weight gradient of a segment's samples into its partial
 * sum of transformed sums (cr_k_conv_winograd_dw). */
static void dw_winograd_segment(const bwd_ctx *c, int64_t seg)
{
    const conv_dims *d = &c->d;
    int64_t per = cr_k_conv_winograd_dw_scratch(c->g, d->G, d->O, d->dt),
            nd = cr_k_winograd_dw_numel(d->O, d->Cg, d->dt);
    cr_tensor sv = flat(c->cols, per);
    sv.data = at(c->cols, thread_id(d) * per);
    cr_tensor pv = flat(c->part, nd);
    pv.data = at(c->part, seg * nd);
    memset(pv.data, 0, (size_t)nd * d->es);
    int64_t n0 = seg * d->blocks / d->segs * d->nb, n1 = (seg + 1) * d->blocks / d->segs * d->nb;
    if (n1 > d->N) n1 = d->N;
    cr_k_conv_winograd_dw(c->g, d->G, c->x, c->gy, n0, n1 - n0, d->O, &pv, &sv);
}

/* dcols[g] = W[g]^T dY[g] with dY as [O, m*P], then dX += col2im(dcols); a
 * direct 1x1 adds W[g]^T dY[g] into the sample's gradient itself. Blocks
 * write disjoint samples. */
static void dx_block(const bwd_ctx *c, int64_t blk)
{
    const conv_dims *d = &c->d;
    int tid = thread_id(d);
    int64_t n0 = blk * d->nb, m = block_size(d, blk), width = m * d->P;
    char *dyp = at(c->gy, n0 * d->O * d->P);
    if (c->dyb) {
        char *buf = at(c->dyb, tid * d->O * d->nb * d->P);
        reorder(false, d->es, dyp, buf, m, d->O, d->P);
        dyp = buf;
    }
    char *dc = d->direct ? at(c->gx, n0 * d->C * d->P) : at(c->cols, tid * d->rows * d->nb * d->P);
    for (int64_t k = 0; k < d->G; k++) {
        cr_tensor wt = mat(d->dt, at(c->w, k * d->Og * d->K), d->K, d->Og, 1, d->K);
        cr_tensor dyk = mat(d->dt, dyp + k * d->Og * width * (int64_t)d->es, d->Og, width, width, 1);
        cr_tensor dck = mat(d->dt, dc + k * d->K * width * (int64_t)d->es, d->K, width, width, 1);
        cr_k_gemm(1.0, &wt, &dyk, d->direct ? 1.0 : 0.0, &dck);
    }
    if (!d->direct) {
        cr_tensor dv = flat(c->cols, d->rows * width);
        dv.data = dc;
        cr_k_col2im(c->g, &dv, n0, m, c->gx);
    }
}

/* The input gradient as a convolution, for stride 1 with padding at most
 * the dilated kernel's reach D (K-1): dX[c, ih, iw] = the sum over (o, ki,
 * kj) of dY[o, ih + P - ki D, iw + P - kj D] w[o, c, ki, kj], the
 * correlation of dY zero-padded by D (K-1) - P with the flipped weight
 * wf[c, o, K-1-ki, K-1-kj] (per group: [Cg, Og] transposed). Its output is
 * H x W again, and it runs on the direct kernels: no columns, no col2im. */
static bool dx_as_conv(const cr_window *g)
{
    return g->SH == 1 && g->SW == 1 && g->PH <= g->DH * (g->KH - 1) && g->PW <= g->DW * (g->KW - 1);
}

#define FLIP_WEIGHT(T)                                                                                       \
    for (int64_t k = 0; k < d->G; k++)                                                                       \
        for (int64_t o = 0; o < d->Og; o++)                                                                  \
            for (int64_t ch = 0; ch < d->Cg; ch++)                                                           \
                for (int64_t i = 0; i < KK; i++)                                                             \
    ((T *)wf->data)[((k * d->Cg + ch) * d->Og + o) * KK + KK - 1 - i] =                                      \
        ((const T *)c->w->data)[((k * d->Og + o) * d->Cg + ch) * KK + i]

static void dx_direct(const bwd_ctx *c)
{
    const conv_dims *d = &c->d;
    const cr_window *g = &c->dg;
    const int64_t KK = g->KH * g->KW;
    cr_tensor *wf = cr_tensor_new(d->dt, CR_SHAPE(d->C, d->Og, g->KH, g->KW));
    if (d->dt == CR_F32)
        FLIP_WEIGHT(float);
    else
        FLIP_WEIGHT(double);
    cr_window t = {.C = d->O,
                   .H = g->OH,
                   .W = g->OW,
                   .KH = g->KH,
                   .KW = g->KW,
                   .SH = 1,
                   .SW = 1,
                   .PH = g->DH * (g->KH - 1) - g->PH,
                   .PW = g->DW * (g->KW - 1) - g->PW,
                   .DH = g->DH,
                   .DW = g->DW,
                   .OH = g->H,
                   .OW = g->W};
    conv_blocks(d, &t, d->C, c->gy, wf, NULL, c->gx, !c->gx_first);
}
#undef FLIP_WEIGHT

static void conv_bwd(cr_node *n)
{
    bwd_ctx c = {.d = dims_of(n),
                 .g = &CR_NODE_ATTR(n, conv_attr)->g,
                 .dg = direct_window(&CR_NODE_ATTR(n, conv_attr)->g),
                 .x = n->in[0],
                 .w = n->in[1],
                 .gy = as_contiguous(n->out->grad),
                 .gx = NULL,
                 .gw = input_grad(n, 1),
                 .kept = n->saved};
    const conv_dims *d = &c.d;
    bool first = false;
    c.gx = input_grad_first(n, 0, &first);
    c.gx_first = first;
    cr_tensor *gb = n->n_in > 2 ? input_grad(n, 2) : NULL;
    if (gb) bias_grad(d, c.gy, gb); /* db += sum of dy over samples and positions */
    if (!c.gx && !c.gw) return;
    if (c.gw && d->wino) {
        int64_t nd = cr_k_winograd_dw_numel(d->O, d->Cg, d->dt);
        c.part = cr_tensor_new(d->dt, CR_SHAPE(d->segs * nd));
        c.cols = scratch(d, cr_k_conv_winograd_dw_scratch(c.g, d->G, d->O, d->dt));
        int segs_threads = d->threads < d->segs ? d->threads : (int)d->segs;
        CR_PAR_FOR(d->par && d->segs > 1, "omp parallel for schedule(static) num_threads(segs_threads)",
                   for (int64_t s = 0; s < d->segs; s++) dw_winograd_segment(&c, s););
        cr_tensor sum = flat(c.part, nd);
        for (int64_t s = 1; s < d->segs; s++) { /* the segments' sums in order, then dW += G^T sum G */
            cr_tensor pv = flat(c.part, nd);
            pv.data = at(c.part, s * nd);
            cr_k_accumulate(&sum, &pv, NULL);
        }
        cr_k_winograd_dw_finish(&sum, d->G, c.gw);
        c.gw = NULL; /* done */
    }
    if (c.gw && d->dconv) {
        c.part = cr_tensor_new(d->dt, CR_SHAPE(d->segs * d->O * d->K));
        c.cols = scratch(d, cr_k_conv_direct_scratch(&c.dg, d->G, d->O, d->dt, true));
        int segs_threads = d->threads < d->segs ? d->threads : (int)d->segs;
        CR_PAR_FOR(d->par && d->segs > 1, "omp parallel for schedule(static) num_threads(segs_threads)",
                   for (int64_t s = 0; s < d->segs; s++) dw_direct_segment(&c, s););
        for (int64_t s = 0; s < d->segs; s++) { /* dW += the segments' partial sums, in order */
            cr_tensor gwv = mat(d->dt, c.gw->data, d->O, d->K, d->K, 1);
            cr_tensor pv = mat(d->dt, at(c.part, s * d->O * d->K), d->O, d->K, d->K, 1);
            cr_k_accumulate(&gwv, &pv, NULL);
        }
        c.gw = NULL; /* done */
    }
    if (!d->direct && (c.gx || (c.gw && !c.kept))) c.cols = scratch(d, d->rows * d->nb * d->P);
    if (c.gw) {
        c.part = cr_tensor_new(d->dt, CR_SHAPE(d->segs * d->O * d->K));
        c.dyt = scratch(d, d->nb * d->P * d->O);
        int segs_threads = d->threads < d->segs ? d->threads : (int)d->segs;
        CR_PAR_FOR(d->par && d->segs > 1, "omp parallel for schedule(static) num_threads(segs_threads)",
                   for (int64_t s = 0; s < d->segs; s++) dw_segment(&c, s););
        for (int64_t s = 0; s < d->segs; s++) /* dW[g] += (dW[g]^T)^T, the segments in order */
            for (int64_t k = 0; k < d->G; k++) {
                cr_tensor gwk = mat(d->dt, at(c.gw, k * d->Og * d->K), d->Og, d->K, d->K, 1);
                cr_tensor tk = mat(d->dt, at(c.part, (s * d->G + k) * d->K * d->Og), d->Og, d->K, 1, d->Og);
                cr_k_accumulate(&gwk, &tk, NULL);
            }
    }
    if (c.gx && (d->wino || (d->dconv && dx_as_conv(&c.dg)))) {
        dx_direct(&c);
        c.gx = NULL; /* done */
    }
    if (c.gx) {
        if (c.gx_first) memset(c.gx->data, 0, (size_t)cr_numel(c.gx) * d->es); /* col2im adds */
        if (d->nb > 1) c.dyb = scratch(d, d->O * d->nb * d->P);
        CR_PAR_FOR(d->par, "omp parallel for schedule(static) num_threads(d->threads)",
                   for (int64_t b = 0; b < d->blocks; b++) dx_block(&c, b););
    }
}

/* x is read for dW only, w for dX only. */
const cr_op cr_op_conv1d = {"cr_conv1d", conv_fwd, conv_bwd, CR_SAVES_IN(0) | CR_SAVES_IN(1) | CR_SAVES_CROSS,
                            sizeof(conv_attr)};
const cr_op cr_op_conv2d = {"cr_conv2d", conv_fwd, conv_bwd, CR_SAVES_IN(0) | CR_SAVES_IN(1) | CR_SAVES_CROSS,
                            sizeof(conv_attr)};

/* "[a]" or "[a,b]" for nd values */
static const char *pair_str(char *buf, size_t len, int nd, const int64_t *v)
{
    return cr_shape_str(buf, len, nd, v);
}

/* Checks and the node, shared by both: nd spatial dims (1 or 2); stride,
 * padding and dilation have nd entries with the defaults already applied. */
static cr_tensor *conv_new(const cr_op *op, int nd, cr_tensor *x, cr_tensor *w, cr_tensor *b,
                           const int64_t *stride, const int64_t *padding, const int64_t *dilation,
                           int64_t groups)
{
    const char *fn = op->name;
    char s1[128], s2[128], s3[64], s4[64], s5[64];
    cr_check_float_pair(fn, x, w);
    if (b) cr_check_float_pair(fn, x, b);
    cr_shape_str(s1, sizeof s1, x->ndim, x->shape);
    cr_shape_str(s2, sizeof s2, w->ndim, w->shape);
    if (x->ndim != nd + 2)
        cr_error("%s: input %s must be %s", fn, s1, nd == 1 ? "[N, C, L]" : "[N, C, H, W]");
    if (w->ndim != nd + 2)
        cr_error("%s: weight %s must be %s", fn, s2,
                 nd == 1 ? "[out, in/groups, K]" : "[out, in/groups, KH, KW]");
    bool ok = groups >= 1;
    for (int i = 0; i < nd; i++) ok = ok && stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0;
    if (!ok)
        cr_error(
            "%s: stride %s, padding %s, dilation %s, groups %lld: stride, dilation and groups must be >= 1 "
            "(0 means 1), padding >= 0",
            fn, pair_str(s3, sizeof s3, nd, stride), pair_str(s4, sizeof s4, nd, padding),
            pair_str(s5, sizeof s5, nd, dilation), (long long)groups);
    int64_t N = x->shape[0], C = x->shape[1], O = w->shape[0];
    if (C % groups || O % groups)
        cr_error("%s: groups %lld must divide the input channels (%lld) and output channels (%lld)", fn,
                 (long long)groups, (long long)C, (long long)O);
    if (w->shape[1] * groups != C)
        cr_error("%s: input %s has %lld channels, weight %s expects %lld per group x %lld groups", fn, s1,
                 (long long)C, s2, (long long)w->shape[1], (long long)groups);
    if (b && (b->ndim != 1 || b->shape[0] != O))
        cr_error("%s: bias %s does not match the weight's %lld output channels", fn,
                 cr_shape_str(s3, sizeof s3, b->ndim, b->shape), (long long)O);
    cr_window g = {.C = C, .H = 1, .KH = 1, .SH = 1, .PH = 0, .DH = 1, .OH = 1};
    if (nd == 2) {
        g.H = x->shape[2], g.KH = w->shape[2], g.SH = stride[0], g.PH = padding[0], g.DH = dilation[0];
        g.OH = cr_window_out(g.H, g.KH, g.SH, g.PH, g.DH);
    }
    g.W = x->shape[nd + 1], g.KW = w->shape[nd + 1], g.SW = stride[nd - 1], g.PW = padding[nd - 1];
    g.DW = dilation[nd - 1];
    g.OW = cr_window_out(g.W, g.KW, g.SW, g.PW, g.DW);
    if (g.OH < 1 || g.OW < 1)
        cr_error(
            "%s: input %s with padding %s is smaller than the kernel %s dilated by %s (or the sizes overflow)",
            fn, s1, pair_str(s3, sizeof s3, nd, padding), pair_str(s4, sizeof s4, nd, w->shape + 2),
            pair_str(s5, sizeof s5, nd, dilation));
    cr_tensor *in[3] = {cr_contiguous(x), cr_contiguous(w), b ? cr_contiguous(b) : NULL};
    cr_node *n = cr_node_new(op, b ? 3 : 2, in);
    *CR_NODE_ATTR(n, conv_attr) = (conv_attr){g, groups};
    if (nd == 1) return cr_node_finish(n, x->dtype, 3, (int64_t[]){N, O, g.OW});
    return cr_node_finish(n, x->dtype, 4, (int64_t[]){N, O, g.OH, g.OW});
}

static int64_t or_default(int64_t v, int64_t def) { return v == 0 ? def : v; }

cr_tensor *cr_conv1d(cr_tensor *x, cr_tensor *w, cr_tensor *b, cr_conv1d_opts o)
{
    int64_t stride = or_default(o.stride, 1), dilation = or_default(o.dilation, 1);
    return conv_new(&cr_op_conv1d, 1, x, w, b, &stride, &o.padding, &dilation, or_default(o.groups, 1));
}

cr_tensor *cr_conv2d(cr_tensor *x, cr_tensor *w, cr_tensor *b, cr_conv2d_opts o)
{
    int64_t stride[2] = {or_default(o.stride[0], 1), or_default(o.stride[1], 1)};
    int64_t dilation[2] = {or_default(o.dilation[0], 1), or_default(o.dilation[1], 1)};
    return conv_new(&cr_op_conv2d, 2, x, w, b, stride, o.padding, dilation, or_default(o.groups, 1));
}
