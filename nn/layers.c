/* Feed-forward layers and losses, each a composition of autograd ops:
 * Linear, Embedding, LayerNorm, MSE and binary cross-entropy. */
#include <math.h>
#include <string.h>

#include "nn.h"

cr_linear cr_linear_init(cr_params *ps, const char *prefix, int64_t in, int64_t out, bool bias, cr_dtype dt,
                         cr_rng *rng)
{
    if (in <= 0 || out <= 0)
        cr_error("cr_linear_init: sizes in=%lld out=%lld must be positive", (long long)in, (long long)out);
    cr_linear l = {0};
    double bound = 1.0 / sqrt((double)in);
    l.weight = cr_params_add(ps, prefix, "weight", dt, CR_SHAPE(out, in));
    cr_init_uniform(l.weight, rng, bound);
    if (bias) {
        l.bias = cr_params_add(ps, prefix, "bias", dt, CR_SHAPE(out));
        cr_init_uniform(l.bias, rng, bound);
    }
    return l;
}

cr_tensor *cr_linear_forward(const cr_linear *l, cr_tensor *x)
{
    int64_t in = l->weight->shape[1], out = l->weight->shape[0];
    if (x->ndim < 1 || x->shape[x->ndim - 1] != in) {
        char s[128];
        cr_error("cr_linear_forward: input %s does not end in %lld features",
                 cr_shape_str(s, sizeof s, x->ndim, x->shape), (long long)in);
    }
    int64_t shape[CR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    cr_tensor *x2 = x->ndim == 2 ? x : cr_reshape(x, CR_SHAPE(-1, in)), *w_t = cr_transpose(l->weight, 0, 1);
    cr_tensor *y = l->bias ? cr_matmul_bias(x2, w_t, l->bias) : cr_matmul(x2, w_t); /* [N, I] x [I, O] + b */
    return x->ndim == 2 ? y : cr_reshape(y, x->ndim, shape);
}

cr_embedding cr_embedding_init(cr_params *ps, const char *prefix, int64_t vocab, int64_t dim,
                               int64_t padding_idx, cr_dtype dt, cr_rng *rng)
{
    if (padding_idx >= vocab)
        cr_error("cr_embedding_init: padding_idx %lld >= vocabulary %lld", (long long)padding_idx,
                 (long long)vocab);
    cr_embedding e = {.padding_idx = padding_idx};
    e.weight = cr_params_add(ps, prefix, "weight", dt, CR_SHAPE(vocab, dim));
    cr_init_normal(e.weight, rng, 1.0);
    if (padding_idx >= 0)
        for (int64_t j = 0; j < dim; j++) cr_set_flat(e.weight, padding_idx * dim + j, 0.0);
    return e;
}

cr_tensor *cr_embedding_forward(const cr_embedding *e, const cr_tensor *idx)
{
    return cr_gather_rows(e->weight, idx, e->padding_idx);
}

cr_layernorm cr_layernorm_init(cr_params *ps, const char *prefix, int64_t dim, double eps, cr_dtype dt)
{
    cr_layernorm ln = {.eps = eps};
    ln.weight = cr_params_add(ps, prefix, "weight", dt, CR_SHAPE(dim));
    ln.bias = cr_params_add(ps, prefix, "bias", dt, CR_SHAPE(dim));
    cr_init_constant(ln.weight, 1.0);
    return ln;
}

cr_tensor *cr_layernorm_forward(const cr_layernorm *ln, cr_tensor *x)
{
    if (x->ndim < 1 || x->shape[x->ndim - 1] != ln->weight->shape[0]) {
        char s[128];
        cr_error("cr_layernorm_forward: input %s does not end in %lld features",
                 cr_shape_str(s, sizeof s, x->ndim, x->shape), (long long)ln->weight->shape[0]);
    }
    cr_tensor *mu = cr_mean_dim(x, -1, true);
    cr_tensor *xc = cr_sub(x, mu);
    cr_tensor *var = cr_mean_dim(cr_square(xc), -1, true);      /* biased, as PyTorch */
    cr_tensor *inv = cr_pow(cr_add_scalar(var, ln->eps), -0.5); /* 1/sqrt(var + eps) */
    return cr_add(cr_mul(cr_mul(xc, inv), ln->weight), ln->bias);
}

static cr_tensor *reduce(cr_tensor *t, cr_reduction red) { return red == CR_SUM ? cr_sum(t) : cr_mean(t); }

cr_tensor *cr_mse_loss(cr_tensor *pred, cr_tensor *target, cr_reduction red)
{
    return reduce(cr_square(cr_sub(pred, target)), red);
}

cr_tensor *cr_bce_with_logits(cr_tensor *logits, cr_tensor *target, cr_reduction red)
{
    return reduce(cr_sub(cr_softplus(logits), cr_mul(logits, target)), red);
}
