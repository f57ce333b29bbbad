/* Sliding-window kernels for convolutions and pooling, f32 and f64: im2col
 * and its adjoint col2im (which lower a convolution to gemm), the direct
 * convolution and its weight gradient (for few output channels), max and average
 * pooling with their backward. The loops are in conv_kernels_impl.h,
 * instantiated per float type. A 1-D window is a 2-D one with H = KH = 1. */
#include <math.h>
#include <string.h>

#include "tensor.h"

/* Products and sums fuse into FMAs where the CPU has them (the direct
 * kernels' AVX-512 clone): half the instructions. A machine without FMA
 * rounds each product, so the two give slightly different sums; either is
 * the same on any thread count. */
#pragma GCC optimize("fp-contract=fast")

int64_t cr_window_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d)
{
    /* out = (in + 2p - d(k-1) - 1) / s + 1, when the dilated kernel fits the padded input */
    int64_t span, padded;
    if (in < 0 || k < 1 || s < 1 || p < 0 || d < 1) return -1;
    if (!cr_mul_ok(d, k - 1, &span) || !cr_add_ok(span, 1, &span)) return -1;
    if (!cr_mul_ok(p, 2, &padded) || !cr_add_ok(padded, in, &padded)) return -1;
    if (padded < span) return -1;
    return (padded - span) / s + 1;
}

/* The output columns ow in [*lo, *hi) whose input column ow S + off lies in
 * [0, W): the rest of a row reads padding. */
static inline void window_span(int64_t W, int64_t OW, int64_t S, int64_t off, int64_t *lo, int64_t *hi)
{
    *lo = off >= 0 ? 0 : (-off + S - 1) / S;
    *hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / S + 1;
    if (*hi > OW) *hi = OW;
    if (*lo > OW) *lo = OW;
    if (*hi < *lo) *hi = *lo;
}

/* Samples whose weight-gradient sums share the registers of the direct
 * kernel: enough that a register tile runs over at least 32 tiles of V
 * positions between two folds into memory (one for 32 x 32 outputs, four
 * for LeNet's 10 x 10), at most 8. */
static int64_t dw_group(const cr_window *g, int64_t v)
{
    int64_t steps = g->OH * ((g->OW + v - 1) / v), n = steps > 0 ? (32 + steps - 1) / steps : 1;
    return n < 1 ? 1 : n > 8 ? 8 : n;
}

/* Winograd tiles per chunk: 2 runs of 3 vectors (f32), 4 (f64); the
 * chunk's transformed input and products (16 planes of C x 96 each) stay
 * in L2 for 64 channels. */
#define WG_CHUNK ((int64_t)96)

#define T float
#define TI int32_t
#define SFX f32
#include "conv_kernels_impl.h"
#undef T
#undef TI
#undef SFX
#define T double
#define TI int64_t
#define SFX f64
#include "conv_kernels_impl.h"
#undef T
#undef TI
#undef SFX

/* ---- checks: the kernels take raw buffers, so their shapes are checked here ---- */

static void check_contig(const char *fn, const char *what, const cr_tensor *t, cr_dtype dt)
{
    char s[128];
    if (t->dtype != dt)
        cr_error("%s: %s is %s, expected %s", fn, what, cr_dtype_name(t->dtype), cr_dtype_name(dt));
    if (!cr_is_contiguous(t))
        cr_error("%s: %s %s must be contiguous", fn, what, cr_shape_str(s, sizeof s, t->ndim, t->shape));
}

static void check_numel(const char *fn, const char *what, const cr_tensor *t, int64_t want)
{
    char s[128];
    if (cr_numel(t) != want)
        cr_error("%s: %s %s has %lld elements, the window needs %lld", fn, what,
                 cr_shape_str(s, sizeof s, t->ndim, t->shape), (long long)cr_numel(t), (long long)want);
}

static void check_window(const char *fn, const cr_window *g)
{
    bool ok = g->C >= 0 && g->H >= 0 && g->W >= 0 && g->KH >= 1 && g->KW >= 1 && g->SH >= 1 && g->SW >= 1 &&
              g->PH >= 0 && g->PW >= 0 && g->DH >= 1 && g->DW >= 1 &&
              g->OH == cr_window_out(g->H, g->KH, g->SH, g->PH, g->DH) &&
              g->OW == cr_window_out(g->W, g->KW, g->SW, g->PW, g->DW);
    if (!ok)
        cr_error(
            "%s: window C=%lld H=%lld W=%lld kernel %lldx%lld stride %lldx%lld padding %lldx%lld dilation "
            "%lldx%lld output %lldx%lld is not consistent",
            fn, (long long)g->C, (long long)g->H, (long long)g->W, (long long)g->KH, (long long)g->KW,
            (long long)g->SH, (long long)g->SW, (long long)g->PH, (long long)g->PW, (long long)g->DH,
            (long long)g->DW, (long long)g->OH, (long long)g->OW);
}

/* x holds at least samples [n0, n0+nb) of C planes of H x W each. */
static void check_block(const char *fn, const cr_window *g, const cr_tensor *x, int64_t n0, int64_t nb)
{
    int64_t per = g->C * g->H * g->W;
    if (n0 < 0 || nb < 0 || (per > 0 && (n0 + nb) > cr_numel(x) / per))
        cr_error("%s: samples %lld..%lld are outside the input (%lld elements, %lld per sample)", fn,
                 (long long)n0, (long long)(n0 + nb), (long long)cr_numel(x), (long long)per);
}

void cr_k_im2col(const cr_window *g, const cr_tensor *x, int64_t n0, int64_t nb, cr_tensor *cols)
{
    check_window("cr_k_im2col", g);
    if (x->dtype == CR_I32) cr_error("cr_k_im2col: needs f32 or f64, got i32");
    check_contig("cr_k_im2col", "input", x, x->dtype);
    check_contig("cr_k_im2col", "columns", cols, x->dtype);
    check_block("cr_k_im2col", g, x, n0, nb);
    check_numel("cr_k_im2col", "columns", cols, g->C * g->KH * g->KW * nb * g->OH * g->OW);
    if (x->dtype == CR_F32)
        im2col_f32(g, x->data, n0, nb, cols->data);
    else
        im2col_f64(g, x->data, n0, nb, cols->data);
}

void cr_k_col2im(const cr_window *g, const cr_tensor *cols, int64_t n0, int64_t nb, cr_tensor *gx)
{
    check_window("cr_k_col2im", g);
    if (gx->dtype == CR_I32) cr_error("cr_k_col2im: needs f32 or f64, got i32");
    check_contig("cr_k_col2im", "gradient", gx, gx->dtype);
    check_contig("cr_k_col2im", "columns", cols, gx->dtype);
    check_block("cr_k_col2im", g, gx, n0, nb);
    check_numel("cr_k_col2im", "columns", cols, g->C * g->KH * g->KW * nb * g->OH * g->OW);
    if (gx->dtype == CR_F32)
        col2im_f32(g, cols->data, n0, nb, gx->data);
    else
        col2im_f64(g, cols->data, n0, nb, gx->data);
}

/* The direct kernels: x [N, C, H, W], w [O, C/G, KH, KW], y and gy [N, O, OH, OW], all
 * contiguous, stride 1 along W. */
static void check_direct(const char *fn, const cr_window *g, int64_t G, const cr_tensor *x,
                         const cr_tensor *w, const cr_tensor *out, int64_t n0, int64_t nb)
{
    char s[128];
    check_window(fn, g);
    if (x->dtype == CR_I32) cr_error("%s: needs f32 or f64, got i32", fn);
    if (g->SW != 1) cr_error("%s: stride %lld along W: the direct kernels need 1", fn, (long long)g->SW);
    check_contig(fn, "input", x, x->dtype);
    check_contig(fn, "weight", w, x->dtype);
    check_contig(fn, "output", out, x->dtype);
    int64_t O = w->ndim >= 1 ? w->shape[0] : 0;
    if (G < 1 || g->C % G || O % G || cr_numel(w) != O * (g->C / G) * g->KH * g->KW)
        cr_error("%s: weight %s does not fit %lld channels in %lld groups with a %lldx%lld kernel", fn,
                 cr_shape_str(s, sizeof s, w->ndim, w->shape), (long long)g->C, (long long)G,
                 (long long)g->KH, (long long)g->KW);
    check_block(fn, g, x, n0, nb);
    int64_t sample = g->C * g->H * g->W;
    check_numel(fn, "output", out, (sample > 0 ? cr_numel(x) / sample : 0) * O * g->OH * g->OW);
}

/* The padded sample (pad_planes: rows of W + 2 PW + V, V = 64 bytes of the
 * dtype) and the packed weight (forward), or for the weight gradient the
 * sample's gy with rows padded to whole tiles and the lane sums (16 bytes
 * of the dtype per weight). */
int64_t cr_k_conv_direct_scratch(const cr_window *g, int64_t groups, int64_t O, cr_dtype dt, bool dw)
{
    int64_t es = (int64_t)cr_dtype_size(dt), v = 64 / es, l = 16 / es;
    int64_t pad = g->C * (g->H + 2 * g->PH) * (g->W + 2 * g->PW + v),
            weight = O * (g->C / groups) * g->KH * g->KW;
    if (!dw) return pad + weight;
    int64_t owq = (g->OW + v - 1) / v * v, ns = dw_group(g, v);
    return ns * (pad + (O < 8 ? O : 8) * g->OH * owq) + weight * l;
}

void cr_k_conv_direct(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *w,
                      const cr_tensor *b, int64_t n0, int64_t nb, cr_tensor *y, bool add, cr_tensor *scratch)
{
    check_direct("cr_k_conv_direct", g, groups, x, w, y, n0, nb);
    int64_t O = w->shape[0];
    if (b) {
        check_contig("cr_k_conv_direct", "bias", b, x->dtype);
        check_numel("cr_k_conv_direct", "bias", b, O);
    }
    check_contig("cr_k_conv_direct", "scratch", scratch, x->dtype);
    int64_t need = cr_k_conv_direct_scratch(g, groups, O, x->dtype, false);
    if (cr_numel(scratch) < need)
        cr_error("cr_k_conv_direct: scratch of %lld elements, needs %lld", (long long)cr_numel(scratch),
                 (long long)need);
    int64_t pad = need - cr_numel(w);
    if (x->dtype == CR_F32) {
        float *s = scratch->data;
        conv_direct_f32(g, groups, O, x->data, w->data, b ? b->data : NULL, n0, nb, y->data, add, s, s + pad);
    } else {
        double *s = scratch->data;
        conv_direct_f64(g, groups, O, x->data, w->data, b ? b->data : NULL, n0, nb, y->data, add, s, s + pad);
    }
}

void cr_k_conv_direct_dw(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *gy,
                         int64_t n0, int64_t nb, cr_tensor *dw, cr_tensor *scratch)
{
    check_direct("cr_k_conv_direct_dw", g, groups, x, dw, gy, n0, nb);
    int64_t O = dw->shape[0], need = cr_k_conv_direct_scratch(g, groups, O, x->dtype, true);
    check_contig("cr_k_conv_direct_dw", "scratch", scratch, x->dtype);
    if (cr_numel(scratch) < need)
        cr_error("cr_k_conv_direct_dw: scratch of %lld elements, needs %lld", (long long)cr_numel(scratch),
                 (long long)need);
    int64_t v = 64 / (int64_t)cr_dtype_size(x->dtype);
    int64_t ns = dw_group(g, v), pad = ns * g->C * (g->H + 2 * g->PH) * (g->W + 2 * g->PW + v),
            gyq = ns * (O < 8 ? O : 8) * g->OH * ((g->OW + v - 1) / v * v);
    if (x->dtype == CR_F32) {
        float *s = scratch->data;
        conv_direct_dw_f32(g, groups, O, x->data, gy->data, n0, nb, dw->data, s, s + pad, s + pad + gyq);
    } else {
        double *s = scratch->data;
        conv_direct_dw_f64(g, groups, O, x->data, gy->data, n0, nb, dw->data, s, s + pad, s + pad + gyq);
    }
}

/* Winograd F(2x2, 3x3): the padded samples (winograd_pad) of a block of
 * nb, the chunk's transformed input (16 Cg WG_CHUNK) and products (16 Og
 * WG_CHUNK), each of the first and the last followed by 16 elements: a
 * vector of the transforms may read past the last row (its lanes there
 * are not used). */
int64_t cr_k_conv_winograd_scratch(const cr_window *g, int64_t groups, int64_t O, int64_t nb)
{
    int64_t TH = (g->OH + 1) / 2, TW = (g->OW + 1) / 2;
    return nb * g->C * (2 * TH + 2) * (2 * TW + 2) + 16 + 16 * (g->C / groups + O / groups) * WG_CHUNK + 16;
}

static bool winograd_window(const cr_window *g)
{
    return g->KH == 3 && g->KW == 3 && g->SH == 1 && g->SW == 1 && g->DH == 1 && g->DW == 1;
}

void cr_k_winograd_weights(const cr_tensor *w, int64_t groups, cr_tensor *wt)
{
    char s[128];
    if (w->dtype == CR_I32) cr_error("cr_k_winograd_weights: needs f32 or f64, got i32");
    check_contig("cr_k_winograd_weights", "weight", w, w->dtype);
    check_contig("cr_k_winograd_weights", "transformed weight", wt, w->dtype);
    if (w->ndim != 4 || w->shape[2] != 3 || w->shape[3] != 3 || groups < 1 || w->shape[0] % groups)
        cr_error("cr_k_winograd_weights: weight %s is not [O, C/G, 3, 3] with O divisible by %lld groups",
                 cr_shape_str(s, sizeof s, w->ndim, w->shape), (long long)groups);
    check_numel("cr_k_winograd_weights", "transformed weight", wt, 16 * w->shape[0] * w->shape[1]);
    if (w->dtype == CR_F32)
        winograd_weights_f32(groups, w->shape[0], w->shape[1], w->data, wt->data);
    else
        winograd_weights_f64(groups, w->shape[0], w->shape[1], w->data, wt->data);
}

/* The window and input a Winograd kernel takes, or an error naming fn. */
static void check_winograd(const char *fn, const cr_window *g, const cr_tensor *x)
{
    check_window(fn, g);
    if (!winograd_window(g))
        cr_error("%s: kernel %lldx%lld stride %lldx%lld dilation %lldx%lld: needs 3x3, stride 1, dilation 1",
                 fn, (long long)g->KH, (long long)g->KW, (long long)g->SH, (long long)g->SW, (long long)g->DH,
                 (long long)g->DW);
    if (x->dtype == CR_I32) cr_error("%s: needs f32 or f64, got i32", fn);
}

void cr_k_conv_winograd(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *wt,
                        const cr_tensor *b, int64_t n0, int64_t nb, cr_tensor *y, bool add,
                        cr_tensor *scratch)
{
    const char *fn = "cr_k_conv_winograd";
    char s[128];
    check_winograd(fn, g, x);
    check_contig(fn, "input", x, x->dtype);
    check_contig(fn, "transformed weight", wt, x->dtype);
    check_contig(fn, "output", y, x->dtype);
    check_contig(fn, "scratch", scratch, x->dtype);
    if (wt->ndim != 3 || wt->shape[0] != 16 || groups < 1 || g->C % groups || wt->shape[2] * groups != g->C ||
        wt->shape[1] % groups)
        cr_error("%s: transformed weight %s is not [16, O, C/G] for %lld channels in %lld groups", fn,
                 cr_shape_str(s, sizeof s, wt->ndim, wt->shape), (long long)g->C, (long long)groups);
    int64_t O = wt->shape[1];
    if (b) {
        check_contig(fn, "bias", b, x->dtype);
        check_numel(fn, "bias", b, O);
    }
    check_block(fn, g, x, n0, nb);
    int64_t sample = g->C * g->H * g->W;
    check_numel(fn, "output", y, (sample > 0 ? cr_numel(x) / sample : 0) * O * g->OH * g->OW);
    int64_t need = cr_k_conv_winograd_scratch(g, groups, O, nb);
    if (cr_numel(scratch) < need)
        cr_error("%s: scratch of %lld elements, needs %lld", fn, (long long)cr_numel(scratch),
                 (long long)need);
    int64_t pad = need - 16 * (g->C / groups + O / groups) * WG_CHUNK - 16,
            ul = 16 * (g->C / groups) * WG_CHUNK;
    if (x->dtype == CR_F32) {
        float *p = scratch->data;
        conv_winograd_f32(g, groups, O, x->data, wt->data, b ? b->data : NULL, n0, nb, y->data, add, p,
                          p + pad, p + pad + ul);
    } else {
        double *p = scratch->data;
        conv_winograd_f64(g, groups, O, x->data, wt->data, b ? b->data : NULL, n0, nb, y->data, add, p,
                          p + pad, p + pad + ul);
    }
}

/* The weight gradient's transformed sums: [16][O][Cq], Cq the channels per
 * group rounded up to 64 bytes. */
int64_t cr_k_winograd_dw_numel(int64_t O, int64_t Cg, cr_dtype dt)
{
    int64_t v = 64 / (int64_t)cr_dtype_size(dt);
    return 16 * O * ((Cg + v - 1) / v * v);
}

/* The sample's channels and gradient channel-last (winograd_dw: xn, yn), the
 * chunk's transforms (xt, yt). */
static void winograd_dw_parts(const cr_window *g, int64_t groups, int64_t O, cr_dtype dt, int64_t part[4])
{
    int64_t v = 64 / (int64_t)cr_dtype_size(dt), Cg = g->C / groups, Og = O / groups;
    int64_t TH = (g->OH + 1) / 2, TW = (g->OW + 1) / 2, Cq = (Cg + v - 1) / v * v, Op = (Og + v - 1) / v * v;
    part[0] = (2 * TH + 2) * (2 * TW + 2) * Cq;
    part[1] = 4 * TH * TW * Op;
    part[2] = 16 * (WG_CHUNK / 2) * Cq;
    part[3] = 16 * (WG_CHUNK / 2) * (Op + 16);
}

int64_t cr_k_conv_winograd_dw_scratch(const cr_window *g, int64_t groups, int64_t O, cr_dtype dt)
{
    int64_t part[4];
    winograd_dw_parts(g, groups, O, dt, part);
    return part[0] + part[1] + part[2] + part[3];
}

void cr_k_conv_winograd_dw(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *gy,
                           int64_t n0, int64_t nb, int64_t O, cr_tensor *du, cr_tensor *scratch)
{
    const char *fn = "cr_k_conv_winograd_dw";
    check_winograd(fn, g, x);
    if (groups < 1 || O < 1 || g->C % groups || O % groups)
        cr_error("%s: %lld input and %lld output channels do not split into %lld groups", fn, (long long)g->C,
                 (long long)O, (long long)groups);
    check_contig(fn, "input", x, x->dtype);
    check_contig(fn, "gradient", gy, x->dtype);
    check_contig(fn, "sums", du, x->dtype);
    check_contig(fn, "scratch", scratch, x->dtype);
    check_block(fn, g, x, n0, nb);
    int64_t sample = g->C * g->H * g->W;
    check_numel(fn, "gradient", gy, (sample > 0 ? cr_numel(x) / sample : 0) * O * g->OH * g->OW);
    check_numel(fn, "sums", du, cr_k_winograd_dw_numel(O, g->C / groups, x->dtype));
    int64_t part[4];
    winograd_dw_parts(g, groups, O, x->dtype, part);
    if (cr_numel(scratch) < part[0] + part[1] + part[2] + part[3])
        cr_error("%s: scratch of %lld elements, needs %lld", fn, (long long)cr_numel(scratch),
                 (long long)(part[0] + part[1] + part[2] + part[3]));
    if (x->dtype == CR_F32) {
        float *p = scratch->data;
        conv_winograd_dw_f32(g, groups, O, x->data, gy->data, n0, nb, du->data, p, p + part[0],
                             p + part[0] + part[1], p + part[0] + part[1] + part[2]);
    } else {
        double *p = scratch->data;
        conv_winograd_dw_f64(g, groups, O, x->data, gy->data, n0, nb, du->data, p, p + part[0],
                             p + part[0] + part[1], p + part[0] + part[1] + part[2]);
    }
}

void cr_k_winograd_dw_finish(const cr_tensor *du, int64_t groups, cr_tensor *dw)
{
    const char *fn = "cr_k_winograd_dw_finish";
    char s[128];
    if (dw->dtype == CR_I32) cr_error("%s: needs f32 or f64, got i32", fn);
    check_contig(fn, "weight gradient", dw, dw->dtype);
    check_contig(fn, "sums", du, dw->dtype);
    if (dw->ndim != 4 || dw->shape[2] != 3 || dw->shape[3] != 3 || groups < 1 || dw->shape[0] % groups)
        cr_error("%s: weight gradient %s is not [O, C/G, 3, 3] with O divisible by %lld groups", fn,
                 cr_shape_str(s, sizeof s, dw->ndim, dw->shape), (long long)groups);
    int64_t O = dw->shape[0], Cg = dw->shape[1], n = cr_k_winograd_dw_numel(O, Cg, dw->dtype);
    check_numel(fn, "sums", du, n);
    if (dw->dtype == CR_F32)
        winograd_dw_finish_f32(O, Cg, n / (16 * O), du->data, dw->data);
    else
        winograd_dw_finish_f64(O, Cg, n / (16 * O), du->data, dw->data);
}

/* Planes of x (its elements / (H W)), with out (and arg) holding OH x OW per plane. */
static int64_t pool_planes(const char *fn, const cr_window *g, const cr_tensor *x, const cr_tensor *out,
                           const cr_tensor *arg)
{
    check_window(fn, g);
    if (x->dtype == CR_I32) cr_error("%s: needs f32 or f64, got i32", fn);
    check_contig(fn, "input", x, x->dtype);
    check_contig(fn, "output", out, x->dtype);
    int64_t plane = g->H * g->W, planes = plane > 0 ? cr_numel(x) / plane : 0;
    check_numel(fn, "input", x, planes * plane);
    check_numel(fn, "output", out, planes * g->OH * g->OW);
    if (arg) {
        check_contig(fn, "indices", arg, CR_I32);
        check_numel(fn, "indices", arg, planes * g->OH * g->OW);
        if (plane > INT32_MAX)
            cr_error("%s: planes of %lld elements do not fit i32 indices", fn, (long long)plane);
    }
    return planes;
}

void cr_k_max_pool(const cr_window *g, const cr_tensor *x, cr_tensor *out, cr_tensor *arg)
{
    int64_t planes = pool_planes("cr_k_max_pool", g, x, out, arg);
    if (x->dtype == CR_F32)
        max_pool_f32(g, planes, x->data, out->data, arg->data);
    else
        max_pool_f64(g, planes, x->data, out->data, arg->data);
}

void cr_k_max_pool_backward(const cr_window *g, cr_tensor *gx, const cr_tensor *gy, const cr_tensor *arg)
{
    int64_t planes = pool_planes("cr_k_max_pool_backward", g, gx, gy, arg);
    if (gx->dtype == CR_F32)
        max_pool_backward_f32(g, planes, gx->data, gy->data, arg->data);
    else
        max_pool_backward_f64(g, planes, gx->data, gy->data, arg->data);
}

void cr_k_avg_pool(const cr_window *g, const cr_tensor *x, cr_tensor *out)
{
    int64_t planes = pool_planes("cr_k_avg_pool", g, x, out, NULL);
    if (x->dtype == CR_F32)
        avg_pool_f32(g, planes, x->data, out->data);
    else
        avg_pool_f64(g, planes, x->data, out->data);
}

void cr_k_avg_pool_backward(const cr_window *g, cr_tensor *gx, const cr_tensor *gy)
{
    int64_t planes = pool_planes("cr_k_avg_pool_backward", g, gx, gy, NULL);
    if (gx->dtype == CR_F32)
        avg_pool_backward_f32(g, planes, gx->data, gy->data);
    else
        avg_pool_backward_f64(g, planes, gx->data, gy->data);
}
