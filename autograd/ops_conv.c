/* Convolutions (conv1d, conv2d; PyTorch's NCL/NCHW layout, weight [O, C/G, k...],
 * stride, zero padding, dilation, groups, optional bias) lowered to products:
 * im2col of a block of samples, then one gemm per group. A 1x1 convolution
 * whose samples are large is a plain product on the input itself. */
#include <string.h>

#include "ops_internal.h"

typedef struct {
    cr_window g;    /* one sample: C input channels, the window, the output OH x OW */
    int64_t groups; /* G: input and output channels split into G independent convolutions */
} conv_attr;

/* The columns of one block of samples stay below this many bytes (at least
 * one sample per block): big enough that the products are not tiny, small
 * enough to stay in cache between im2col and the product. The block depends
 * only on the shapes, never on the thread count, so sums over blocks (the
 * weight gradient) come out the same on any number of threads. */
int64_t cr_conv_block_bytes = (int64_t)1 << 20;

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

static inline char *at(const cr_tensor *t, int64_t i) { return (char *)t->data + i * (int64_t)cr_dtype_size(t->dtype); }

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
    int64_t nb;                       /* samples per block; 0: direct 1x1 products */
} conv_dims;

static conv_dims dims_of(const cr_node *n)
{
    const conv_attr *a = CR_NODE_ATTR(n, conv_attr);
    const cr_window *g = &a->g;
    conv_dims d = {.dt = n->in[0]->dtype, .es = cr_dtype_size(n->in[0]->dtype), .N = n->in[0]->shape[0],
                   .C = g->C, .O = n->in[1]->shape[0], .G = a->groups};
    d.Cg = d.C / d.G;
    d.Og = d.O / d.G;
    d.K = d.Cg * g->KH * g->KW;
    d.P = g->OH * g->OW;
    int64_t sample = d.C * g->KH * g->KW * d.P * (int64_t)d.es; /* bytes of one sample's columns */
    d.nb = sample >= cr_conv_block_bytes ? 1 : cr_conv_block_bytes / (sample > 0 ? sample : 1);
    if (d.nb > d.N) d.nb = d.N > 0 ? d.N : 1;
    bool pointwise = g->KH == 1 && g->KW == 1 && g->SH == 1 && g->SW == 1 && g->PH == 0 && g->PW == 0;
    if (pointwise && d.nb == 1) d.nb = 0; /* a sample's input already is its columns */
    return d;
}

static void conv_fwd(cr_node *n)
{
    const cr_window *g = &CR_NODE_ATTR(n, conv_attr)->g;
    const cr_tensor *x = n->in[0], *w = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
    cr_tensor *y = n->out;
    conv_dims d = dims_of(n);
    double beta = b ? 1.0 : 0.0;
    if (d.nb == 0) { /* 1x1: Y_s[g] = W[g] X_s[g], the input plane [Cg, P] is the columns */
        for (int64_t s = 0; s < d.N; s++) {
            if (b) fill_rows(d.dt, at(y, s * d.O * d.P), d.O, d.P, b->data);
            for (int64_t k = 0; k < d.G; k++) {
                cr_tensor wk = mat(d.dt, at(w, k * d.Og * d.K), d.Og, d.K, d.K, 1);
                cr_tensor xk = mat(d.dt, at(x, (s * d.C + k * d.Cg) * d.P), d.Cg, d.P, d.P, 1);
                cr_tensor yk = mat(d.dt, at(y, (s * d.O + k * d.Og) * d.P), d.Og, d.P, d.P, 1);
                cr_k_gemm(1.0, &wk, &xk, beta, &yk);
            }
        }
        return;
    }
    cr_tensor *cols = cr_tensor_new(d.dt, CR_SHAPE(d.G * d.K * d.nb * d.P));
    cr_tensor *yb = d.nb > 1 ? cr_tensor_new(d.dt, CR_SHAPE(d.O * d.nb * d.P)) : NULL;
    for (int64_t n0 = 0; n0 < d.N; n0 += d.nb) {
        int64_t m = d.N - n0 < d.nb ? d.N - n0 : d.nb, width = m * d.P;
        cr_tensor cv = flat(cols, d.G * d.K * width);
        cr_k_im2col(g, x, n0, m, &cv);
        /* the block's outputs [O, m*P]: the sample itself when the block is one */
        char *out = yb ? yb->data : at(y, n0 * d.O * d.P);
        if (b) fill_rows(d.dt, out, d.O, width, b->data);
        for (int64_t k = 0; k < d.G; k++) { /* Y[g] (+)= W[g] cols[g] */
            cr_tensor wk = mat(d.dt, at(w, k * d.Og * d.K), d.Og, d.K, d.K, 1);
            cr_tensor ck = mat(d.dt, at(cols, k * d.K * width), d.K, width, width, 1);
            cr_tensor yk = mat(d.dt, out + k * d.Og * width * (int64_t)d.es, d.Og, width, width, 1);
            cr_k_gemm(1.0, &wk, &ck, beta, &yk);
        }
        if (yb) reorder(true, d.es, at(y, n0 * d.O * d.P), out, m, d.O, d.P);
    }
}

static void conv_bwd(cr_node *n)
{
    const cr_window *g = &CR_NODE_ATTR(n, conv_attr)->g;
    const cr_tensor *x = n->in[0], *w = n->in[1], *gy = as_contiguous(n->out->grad);
    cr_tensor *gx = input_grad(n, 0), *gw = input_grad(n, 1), *gb = n->n_in > 2 ? input_grad(n, 2) : NULL;
    conv_dims d = dims_of(n);
    if (gb) { /* db[o] += sum over samples and positions of dy[s, o, p] */
        cr_tensor acc = *gb, dy = *gy;
        acc.ndim = 3;
        acc.shape[0] = 1, acc.shape[1] = d.O, acc.shape[2] = 1;
        acc.stride[0] = d.O, acc.stride[1] = 1, acc.stride[2] = 1;
        dy.ndim = 3;
        dy.shape[0] = d.N, dy.shape[1] = d.O, dy.shape[2] = d.P;
        dy.stride[0] = d.O * d.P, dy.stride[1] = d.P, dy.stride[2] = 1;
        cr_k_accumulate(&acc, &dy, NULL);
    }
    if (!gx && !gw) return;
    if (d.nb == 0) { /* 1x1, per sample and group */
        for (int64_t s = 0; s < d.N; s++)
            for (int64_t k = 0; k < d.G; k++) {
                cr_tensor dyk = mat(d.dt, at(gy, (s * d.O + k * d.Og) * d.P), d.Og, d.P, d.P, 1);
                if (gw) { /* dW[g] += dY_s[g] X_s[g]^T */
                    cr_tensor xt = mat(d.dt, at(x, (s * d.C + k * d.Cg) * d.P), d.P, d.Cg, 1, d.P);
                    cr_tensor gwk = mat(d.dt, at(gw, k * d.Og * d.K), d.Og, d.K, d.K, 1);
                    cr_k_gemm(1.0, &dyk, &xt, 1.0, &gwk);
                }
                if (gx) { /* dX_s[g] += W[g]^T dY_s[g] */
                    cr_tensor wt = mat(d.dt, at(w, k * d.Og * d.K), d.K, d.Og, 1, d.K);
                    cr_tensor gxk = mat(d.dt, at(gx, (s * d.C + k * d.Cg) * d.P), d.Cg, d.P, d.P, 1);
                    cr_k_gemm(1.0, &wt, &dyk, 1.0, &gxk);
                }
            }
        return;
    }
    int64_t rows = d.G * d.K;
    cr_tensor *cols = gw ? cr_tensor_new(d.dt, CR_SHAPE(rows * d.nb * d.P)) : NULL;
    cr_tensor *dcols = gx ? cr_tensor_new(d.dt, CR_SHAPE(rows * d.nb * d.P)) : NULL;
    cr_tensor *dyb = d.nb > 1 ? cr_tensor_new(d.dt, CR_SHAPE(d.O * d.nb * d.P)) : NULL;
    for (int64_t n0 = 0; n0 < d.N; n0 += d.nb) {
        int64_t m = d.N - n0 < d.nb ? d.N - n0 : d.nb, width = m * d.P;
        /* the block's output gradient as [O, m*P] */
        char *dyp = at(gy, n0 * d.O * d.P);
        if (dyb) {
            reorder(false, d.es, dyp, dyb->data, m, d.O, d.P);
            dyp = dyb->data;
        }
        if (gw) { /* dW[g] += dY[g] cols[g]^T, the blocks in order */
            cr_tensor cv = flat(cols, rows * width);
            cr_k_im2col(g, x, n0, m, &cv);
            for (int64_t k = 0; k < d.G; k++) {
                cr_tensor dyk = mat(d.dt, dyp + k * d.Og * width * (int64_t)d.es, d.Og, width, width, 1);
                cr_tensor ct = mat(d.dt, at(cols, k * d.K * width), width, d.K, 1, width);
                cr_tensor gwk = mat(d.dt, at(gw, k * d.Og * d.K), d.Og, d.K, d.K, 1);
                cr_k_gemm(1.0, &dyk, &ct, 1.0, &gwk);
            }
        }
        if (gx) { /* dcols[g] = W[g]^T dY[g]; dX += col2im(dcols) */
            for (int64_t k = 0; k < d.G; k++) {
                cr_tensor wt = mat(d.dt, at(w, k * d.Og * d.K), d.K, d.Og, 1, d.K);
                cr_tensor dyk = mat(d.dt, dyp + k * d.Og * width * (int64_t)d.es, d.Og, width, width, 1);
                cr_tensor dck = mat(d.dt, at(dcols, k * d.K * width), d.K, width, width, 1);
                cr_k_gemm(1.0, &wt, &dyk, 0.0, &dck);
            }
            cr_tensor dv = flat(dcols, rows * width);
            cr_k_col2im(g, &dv, n0, m, gx);
        }
    }
}

/* x is read for dW only, w for dX only. */
const cr_op cr_op_conv1d = {"cr_conv1d", conv_fwd, conv_bwd, CR_SAVES_IN(0) | CR_SAVES_IN(1) | CR_SAVES_CROSS,
                            sizeof(conv_attr)};
const cr_op cr_op_conv2d = {"cr_conv2d", conv_fwd, conv_bwd, CR_SAVES_IN(0) | CR_SAVES_IN(1) | CR_SAVES_CROSS,
                            sizeof(conv_attr)};

/* "[a]" or "[a,b]" for nd values */
static const char *pair_str(char *buf, size_t len, int nd, const int64_t *v) { return cr_shape_str(buf, len, nd, v); }

/* Checks and the node, shared by both: nd spatial dims (1 or 2); stride,
 * padding and dilation have nd entries with the defaults already applied. */
static cr_tensor *conv_new(const cr_op *op, int nd, cr_tensor *x, cr_tensor *w, cr_tensor *b, const int64_t *stride,
                           const int64_t *padding, const int64_t *dilation, int64_t groups)
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
        cr_error("%s: weight %s must be %s", fn, s2, nd == 1 ? "[out, in/groups, K]" : "[out, in/groups, KH, KW]");
    bool ok = groups >= 1;
    for (int i = 0; i < nd; i++) ok = ok && stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0;
    if (!ok)
        cr_error("%s: stride %s, padding %s, dilation %s, groups %lld: stride, dilation and groups must be >= 1 "
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
        cr_error("%s: input %s with padding %s is smaller than the kernel %s dilated by %s (or the sizes overflow)",
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
