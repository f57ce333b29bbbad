/* Convolution layers: parameters prefix.weight [O, C/groups, k...] and
 * prefix.bias [O] with PyTorch's default init, and a forward that is one
 * cr_conv1d / cr_conv2d op. */
#include <math.h>

#include "nn.h"

/* PyTorch's Conv*d.reset_parameters: kaiming_uniform_(a = sqrt(5)) gives
 * bound = gain sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)) = sqrt(1/3),
 * that is 1/sqrt(fan_in); the bias is U(+-1/sqrt(fan_in)) too. */
static void init_conv(cr_tensor *w, cr_tensor *b, int64_t fan_in, cr_rng *rng)
{
    double bound = 1.0 / sqrt((double)fan_in);
    cr_init_uniform(w, rng, bound);
    if (b) cr_init_uniform(b, rng, bound);
}

static void check_channels(const char *fn, int64_t in, int64_t out, int64_t groups)
{
    if (in < 1 || out < 1 || groups < 1 || in % groups || out % groups)
        cr_error("%s: in_channels %lld and out_channels %lld must be positive and divisible by groups %lld",
                 fn, (long long)in, (long long)out, (long long)groups);
}

cr_conv1d_layer cr_conv1d_layer_init(cr_params *ps, const char *prefix, cr_conv1d_config cfg, cr_rng *rng)
{
    int64_t groups = cfg.groups ? cfg.groups : 1;
    check_channels("cr_conv1d_layer_init", cfg.in_channels, cfg.out_channels, groups);
    if (cfg.kernel < 1) cr_error("cr_conv1d_layer_init: kernel %lld must be positive", (long long)cfg.kernel);
    cr_conv1d_layer l = {.opts = {cfg.stride, cfg.padding, cfg.dilation, groups}};
    l.weight = cr_params_add(ps, prefix, "weight", cfg.dtype,
                             CR_SHAPE(cfg.out_channels, cfg.in_channels / groups, cfg.kernel));
    if (!cfg.no_bias) l.bias = cr_params_add(ps, prefix, "bias", cfg.dtype, CR_SHAPE(cfg.out_channels));
    init_conv(l.weight, l.bias, cfg.in_channels / groups * cfg.kernel, rng);
    return l;
}

cr_tensor *cr_conv1d_layer_forward(const cr_conv1d_layer *l, cr_tensor *x)
{
    return cr_conv1d(x, l->weight, l->bias, l->opts);
}

cr_conv2d_layer cr_conv2d_layer_init(cr_params *ps, const char *prefix, cr_conv2d_config cfg, cr_rng *rng)
{
    int64_t groups = cfg.groups ? cfg.groups : 1;
    check_channels("cr_conv2d_layer_init", cfg.in_channels, cfg.out_channels, groups);
    if (cfg.kernel[0] < 1 || cfg.kernel[1] < 1)
        cr_error("cr_conv2d_layer_init: kernel [%lld,%lld] must be positive", (long long)cfg.kernel[0],
                 (long long)cfg.kernel[1]);
    cr_conv2d_layer l = {.opts = {.stride = {cfg.stride[0], cfg.stride[1]},
                                  .padding = {cfg.padding[0], cfg.padding[1]},
                                  .dilation = {cfg.dilation[0], cfg.dilation[1]},
                                  .groups = groups}};
    l.weight =
        cr_params_add(ps, prefix, "weight", cfg.dtype,
                      CR_SHAPE(cfg.out_channels, cfg.in_channels / groups, cfg.kernel[0], cfg.kernel[1]));
    if (!cfg.no_bias) l.bias = cr_params_add(ps, prefix, "bias", cfg.dtype, CR_SHAPE(cfg.out_channels));
    init_conv(l.weight, l.bias, cfg.in_channels / groups * cfg.kernel[0] * cfg.kernel[1], rng);
    return l;
}

cr_tensor *cr_conv2d_layer_forward(const cr_conv2d_layer *l, cr_tensor *x)
{
    return cr_conv2d(x, l->weight, l->bias, l->opts);
}
