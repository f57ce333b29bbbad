/* examples/custom_cell: two recurrent cells defined here, in a parameter
 * table and a step each, trained through carousel's sequence layer (two
 * bidirectional layers, variable lengths) and gradient-checked in f64
 * through the whole layer.
 *
 *   ./build/examples/custom_cell [--cell mgu|lngru|all] [--steps N] [--quick] ...
 *
 * The task is tagging: at every step t of a sequence of random symbols the
 * model names the pair (x[t-D], x[t+D]), with "none" past either end. The
 * left half needs memory of D steps back and the right half D steps ahead,
 * which only the backward direction has seen; a forward-only model cannot
 * beat chance on it. (--delay 3 --symbols 3 --steps 1200 is harder: the MGU
 * needs the steps, the layer-normed GRU far fewer.) The last line per cell is
 *   example=custom_cell cell=NAME gradcheck_max_rel=... accuracy=...
 * With --quick (run by meson test) it trains briefly and exits 1 unless the
 * accuracy reaches --threshold and the gradient check passes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel.h"
#include "cli.h"

/* ---- the cells: a table and a step each ------------------------------------------------- */

/* MGU, the minimal gated unit (Zhou et al. 2016), projection blocks [f, n]:
 *   f = s(W_f x + U_f h + b_f)   n = tanh(W x + U (f*h) + b)   h' = (1-f)*h + f*n */
enum { MGU_W, MGU_UF, MGU_U, MGU_B };
static const cr_cell_param mgu_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},                                /* [W_f; W] (2H, I) */
    {.name = "u_f", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}}, /* (H, H) */
    {.name = "u", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}},   /* (H, H) */
    {.name = "b", .role = CR_PARAM_INPUT_BIAS},                              /* [b_f; b] (2H) */
};
static void mgu_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                     cr_tensor **next)
{
    int64_t H = c->hidden_size;
    cr_tensor *h = s[0];
    cr_tensor *f = cr_sigmoid(cr_add(cr_narrow(gx, 1, 0, H), cr_matmul(h, w[MGU_UF])));
    cr_tensor *n = cr_tanh(cr_add(cr_narrow(gx, 1, H, H), cr_matmul(cr_mul(f, h), w[MGU_U])));
    next[0] = cr_add(cr_mul(cr_rsub_scalar(f, 1), h), cr_mul(f, n));
}
static const cr_cell_type mgu = {
    .name = "mgu", .n_states = 1, .proj = CR_H(2), .params = mgu_params, .n_params = 4, .step = mgu_step};

/* GRU with layer norm on the candidate (gate blocks r, z, n as PyTorch's):
 *   r = s(W_r x + b_r + U_r h + c_r)   z = s(W_z x + b_z + U_z h + c_z)
 *   n = tanh(LN(W_n x + b_n + r * (U_n h + c_n)))   h' = (1-z)*n + z*h
 *   LN(v) = g * (v - mean(v)) / sqrt(var(v) + 1e-5) + beta, over the H units */
enum { LG_W, LG_U, LG_B, LG_C, LG_G, LG_BETA };
static const cr_cell_param lngru_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},                                 /* (3H, I) */
    {.name = "w_hh", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(3), CR_H(1)}}, /* (3H, H) */
    {.name = "b_ih", .role = CR_PARAM_INPUT_BIAS},                            /* (3H) */
    {.name = "b_hh", .role = CR_PARAM_BIAS, .shape = {CR_H(3)}},              /* (3H), gated by r */
    {.name = "ln_g", .role = CR_PARAM_WEIGHT, .shape = {CR_H(1)}, .init = CR_INIT_CONSTANT(1)},
    {.name = "ln_b", .role = CR_PARAM_WEIGHT, .shape = {CR_H(1)}, .init = CR_INIT_CONSTANT(0)},
};
static void lngru_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                       cr_tensor **next)
{
    int64_t H = c->hidden_size;
    cr_tensor *h = s[0], *gh = cr_matmul(h, w[LG_U]);
    if (w[LG_C]) gh = cr_add(gh, w[LG_C]);
    cr_tensor *r = cr_sigmoid(cr_add(cr_narrow(gx, 1, 0, H), cr_narrow(gh, 1, 0, H)));
    cr_tensor *z = cr_sigmoid(cr_add(cr_narrow(gx, 1, H, H), cr_narrow(gh, 1, H, H)));
    cr_layernorm ln = {.weight = w[LG_G], .bias = w[LG_BETA], .eps = 1e-5};
    cr_tensor *n = cr_tanh(
        cr_layernorm_forward(&ln, cr_add(cr_narrow(gx, 1, 2 * H, H), cr_mul(r, cr_narrow(gh, 1, 2 * H, H)))));
    next[0] = cr_add(n, cr_mul(z, cr_sub(h, n))); /* (1-z)*n + z*h */
}
static const cr_cell_type lngru = {.name = "lngru",
                                   .n_states = 1,
                                   .proj = CR_H(3),
                                   .params = lngru_params,
                                   .n_params = 6,
                                   .step = lngru_step};

/* ---- options ------------------------------------------------------------------------------- */

typedef struct opts {
    cli_training t;
    const char *cell; /* mgu, lngru or all: not a built-in cell, so not t.cell */
    int64_t min_len, max_len, delay, symbols, eval;
    double threshold;
} opts;

static opts parse(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.t = {.steps = quick ? 300 : 600,
                    .hidden = 24,
                    .batch = 32,
                    .shards = 4,
                    .threads = quick ? 1 : 0,
                    .seed = 1,
                    .lr = 1e-2,
                    .clip = 1.0,
                    .decay = 0, /* a constant learning rate */
                    .quick = quick},
              .cell = "all",
              .min_len = 6,
              .max_len = 14,
              .delay = 2,
              .symbols = 4,
              .eval = 256,
              .threshold = 0.9};
    cli_flag flags[] = {
        {"--cell", CLI_STR, &o.cell, "mgu, lngru or all"},
        CLI_TRAINING_FLAG("--steps", NULL),
        CLI_TRAINING_FLAG("--hidden", "hidden units per direction"),
        CLI_TRAINING_FLAG("--batch", "sequences per batch"),
        {"--min-len", CLI_INT, &o.min_len, "shortest sequence"},
        {"--max-len", CLI_INT, &o.max_len, "longest sequence"},
        {"--delay", CLI_INT, &o.delay, "D: step t is tagged with the symbols at t-D and t+D"},
        {"--symbols", CLI_INT, &o.symbols, "K: distinct symbols"},
        {"--eval", CLI_INT, &o.eval, "held-out sequences"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails below this accuracy"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG(
            "--quick", "300 steps, then exit 1 unless accuracy >= threshold and the gradient check passes"),
    };
    cli_training_parse(
        &o.t, argc, argv,
        "Two user-defined cells (MGU, a GRU with layer norm) trained as bidirectional taggers through\n"
        "the sequence layer, and gradient-checked in f64.",
        NULL, flags, CLI_COUNT(flags));
    if (strcmp(o.cell, "mgu") && strcmp(o.cell, "lngru") && strcmp(o.cell, "all"))
        cli_fail(argv[0], "--cell: mgu, lngru or all, not '%s'", o.cell);
    cli_training_check(&o.t, argv[0],
                       o.min_len < 1 || o.max_len < o.min_len || o.max_len > 4096 || o.delay < 1 ||
                           o.symbols < 2 || o.eval < 1,
                       "an option out of range");
    return o;
}

/* ---- the task -------------------------------------------------------------------------------- */

/* A batch: one-hot symbols x [B, T, K] (zero rows in the padding), lengths
 * [B], and targets [B*T]: (K+1) * left + right with left = x[t-D], right =
 * x[t+D], 0 standing for "none", and -1 (ignored) in the padding. */
typedef struct batch {
    cr_tensor *x, *lengths, *target;
} batch;

static batch batch_make(const opts *o, int64_t B, cr_rng *rng)
{
    const int64_t T = o->max_len, K = o->symbols, D = o->delay;
    batch b = {.x = cr_tensor_init(CR_F32, CR_SHAPE(B, T, K)),
               .lengths = cr_tensor_init(CR_I32, CR_SHAPE(B)),
               .target = cr_tensor_init(CR_I32, CR_SHAPE(B * T))};
    int32_t *len = b.lengths->data, *y = b.target->data, sym[4096];
    float *x = b.x->data;
    for (int64_t i = 0; i < B; i++) {
        len[i] =
            (int32_t)(o->min_len + (int64_t)(cr_rng_uniform01(rng) * (double)(o->max_len - o->min_len + 1)));
        for (int64_t t = 0; t < len[i]; t++) {
            sym[t] = 1 + (int32_t)(cr_rng_uniform01(rng) * (double)K);
            x[(i * T + t) * K + sym[t] - 1] = 1;
        }
        for (int64_t t = 0; t < T; t++) {
            int32_t left = t - D >= 0 && t < len[i] ? sym[t - D] : 0, right = t + D < len[i] ? sym[t + D] : 0;
            y[i * T + t] = t < len[i] ? (int32_t)(K + 1) * left + right : -1;
        }
    }
    return b;
}

static void batch_free(batch *b)
{
    cr_tensor_free(b->x);
    cr_tensor_free(b->lengths);
    cr_tensor_free(b->target);
}

typedef struct model {
    cr_params *ps;
    cr_rnn *rnn;
    cr_linear head;
    int64_t classes;
} model;

/* logits [B*T, C] */
static cr_tensor *logits_of(model *m, const batch *b)
{
    cr_tensor *y = cr_rnn_forward(m->rnn, b->x, b->lengths, NULL, NULL).y; /* [B, T, 2H] */
    return cr_reshape(cr_linear_forward(&m->head, y), CR_SHAPE(-1, m->classes));
}

typedef struct step_ctx {
    model *m;
    const batch *b;
    int64_t B, T, steps; /* sequences, padded length, real (unpadded) steps in the batch */
} step_ctx;

/* Cross-entropy summed over a shard's real steps, divided by the batch's. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end;
    batch part = {.x = cr_narrow(c->b->x, 0, lo, hi - lo),
                  .lengths = cr_narrow(c->b->lengths, 0, lo, hi - lo),
                  .target = cr_narrow(c->b->target, 0, lo * c->T, (hi - lo) * c->T)};
    cr_tensor *ce = cr_cross_entropy(logits_of(c->m, &part), part.target, -1, CR_SUM);
    return cr_mul_scalar(ce, 1.0 / (double)c->steps);
}

/* Share of the real (unpadded) steps tagged right. */
static double accuracy(model *m, const batch *b)
{
    bool was = cr_set_grad_enabled(false);
    cr_tensor *pred = cr_argmax(logits_of(m, b), 1, false);
    const int32_t *p = pred->data, *y = b->target->data;
    int64_t right = 0, all = 0;
    for (int64_t k = 0; k < cr_numel(b->target); k++)
        if (y[k] >= 0) all++, right += p[k] == y[k];
    cr_set_grad_enabled(was);
    return (double)right / (double)all;
}

/* ---- the gradient check: the whole layer in f64 ---------------------------------------------- */

typedef struct check {
    cr_rnn *rnn;
    const cr_tensor *lengths;
    int n_params; /* inputs: the layer's parameters, then x */
} check;

/* Every output and final state of the layer, flattened. */
static cr_tensor *layer_fn(cr_tensor *const *in, void *ctx)
{
    check *c = ctx;
    cr_rnn_output o = cr_rnn_forward(c->rnn, in[c->n_params], c->lengths, NULL, NULL);
    cr_tensor *parts[2] = {cr_reshape(o.y, CR_SHAPE(-1)), cr_reshape(o.h_n, CR_SHAPE(-1))};
    return cr_concat(2, parts, 0);
}

/* Convert the model to f64 (the same layer objects), check the layer's
 * gradient by central differences on a small variable-length batch, and
 * convert back; the f32 weights come back bit for bit. */
static double gradcheck_layer(model *m, const opts *o, cr_rng *rng)
{
    cr_params_convert(m->ps, CR_F64);
    const int64_t B = 2, T = 5, K = o->symbols;
    cr_tensor *in[256];
    int n = 0;
    for (size_t k = 0; k < m->ps->n && n < 255; k++)
        if (strncmp(m->ps->items[k].name, "tagger.rnn.", 11) == 0) in[n++] = m->ps->items[k].value;
    cr_tensor *x = cr_tensor_init(CR_F64, CR_SHAPE(B, T, K)), *lengths = cr_tensor_init(CR_I32, CR_SHAPE(B));
    cr_fill_uniform(x, rng, -1, 1);
    cr_requires_grad(x, true);
    ((int32_t *)lengths->data)[0] = (int32_t)T;
    ((int32_t *)lengths->data)[1] = (int32_t)T - 2;
    check c = {.rnn = m->rnn, .lengths = lengths, .n_params = n};
    in[n] = x;
    cr_gradcheck_report rep;
    double err = cr_gradcheck(layer_fn, &c, n + 1, in, 1e-5, &rep);
    printf("cell=%s gradcheck inputs=%d elements=%lld max_rel=%.3e (input %d, element %lld: %.9g vs %.9g)\n",
           m->rnn->cfg.cell->name, n + 1, (long long)rep.n_checked, err, rep.worst_input,
           (long long)rep.worst_index, rep.analytic, rep.numeric);
    cr_tensor_free(x);
    cr_tensor_free(lengths);
    cr_params_convert(m->ps, CR_F32);
    return err;
}

/* ---- one run ------------------------------------------------------------------------------------- */

/* Train, evaluate and check one cell; returns true when it passed (--quick). */
static bool run(const opts *o, const cr_cell_type *type)
{
    cli_training t = o->t; /* every cell from the same weights' and data's streams */
    cr_rng held = cr_rng_seed((uint64_t)t.seed ^ UINT64_C(0x7e57));
    const int64_t K = o->symbols, C = (K + 1) * (K + 1), H = t.hidden;
    model m = {.ps = cr_params_init(), .classes = C};
    m.rnn = cr_rnn_init(m.ps, "tagger.rnn",
                        (cr_rnn_config){.cell = type,
                                        .input_size = K,
                                        .hidden_size = H,
                                        .num_layers = 2,
                                        .bidirectional = true,
                                        .dtype = CR_F32},
                        &t.rng);
    m.head = cr_linear_init(m.ps, "tagger.head", 2 * H, C, true, CR_F32, &t.rng);
    printf(
        "cell=%s params=%zu layers=2 bidirectional=1 hidden=%lld lengths=%lld..%lld delay=%lld classes=%lld\n",
        type->name, cr_params_numel(m.ps), (long long)H, (long long)o->min_len, (long long)o->max_len,
        (long long)o->delay, (long long)C);

    batch test = batch_make(o, o->eval, &held);
    cli_training_start(&t, m.ps);
    progress bar = progress_start(t.steps, "seq");
    double loss_avg = NAN, acc = NAN;
    for (int64_t step = 1; step <= t.steps; step++) {
        batch b = batch_make(o, t.batch, &t.data);
        step_ctx ctx = {.m = &m, .b = &b, .B = t.batch, .T = o->max_len, .steps = 0};
        for (int64_t i = 0; i < t.batch; i++) ctx.steps += ((const int32_t *)b.lengths->data)[i];
        double l = cli_training_step(&t, step - 1, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? l : 0.9 * loss_avg + 0.1 * l;
        batch_free(&b);
        if (step % 100 == 0 || step == t.steps) {
            acc = accuracy(&m, &test);
            cr_graph_clear(t.g);
        }
        progress_update(&bar, step, step * t.batch, "cell=%s loss=%.4f accuracy=%.4f", type->name, loss_avg,
                        acc);
    }
    acc = accuracy(&m, &test);
    cli_training_free(&t); /* before the check converts the parameters: Adam's moments are f32 */
    double err = gradcheck_layer(&m, o, &t.rng);
    bool ok = acc >= o->threshold && err < 1e-5;
    if (t.quick && !ok)
        fprintf(stderr, "custom_cell: %s: accuracy %.4f (threshold %.2f), gradcheck %.3e (limit 1e-5)\n",
                type->name, acc, o->threshold, err);
    printf("example=custom_cell cell=%s gradcheck_max_rel=%.3e accuracy=%.4f\n", type->name, err, acc);
    batch_free(&test);
    cr_rnn_free(m.rnn);
    cr_params_free(m.ps);
    return ok;
}

int main(int argc, char **argv)
{
    opts o = parse(argc, argv);
    bool ok = true;
    if (!strcmp(o.cell, "mgu") || !strcmp(o.cell, "all")) ok &= run(&o, &mgu);
    if (!strcmp(o.cell, "lngru") || !strcmp(o.cell, "all")) ok &= run(&o, &lngru);
    return o.t.quick && !ok ? 1 : 0;
}
