/* examples/parity: a GRU learns the parity of a bit string (is the number of
 * ones odd?) from strings of up to N bits, and is tested on strings of 2N and
 * 4N bits, which it never saw: it generalises to any length because what it
 * learned is a two-state machine that flips on every one, not a function of
 * N inputs.
 *
 *   ./build/examples/parity [--len N] [--steps S] [--hidden H] ... [--quick]
 *
 * The target is given at every step (the parity of each prefix), the usual
 * way to make parity learnable by gradient descent: with one target at the
 * end, the gradient says nothing until the network already computes an
 * N-input XOR. Accuracy is measured on whole strings (the output after the
 * last bit). Last line: example=parity ... accuracy_2n=... accuracy_4n=...
 * With --quick (run by meson test) it exits 1 unless the 4N accuracy reaches
 * --threshold.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "carousel.h"
#include "cli.h"

typedef struct opts {
    int64_t len, test;
    double threshold;
} opts;

/* A batch of B bit strings: one-hot bits x [B, T, 2], lengths [B], and the
 * parity of every prefix, target [B*T] (-1 past a string's end: ignored). */
typedef struct batch {
    int64_t B, T, n_targets;
    cr_tensor *x, *lengths, *target;
} batch;

static batch batch_init(int64_t B, int64_t T)
{
    return (batch){.B = B,
                   .T = T,
                   .x = cr_tensor_init(CR_F32, CR_SHAPE(B, T, 2)),
                   .lengths = cr_tensor_init(CR_I32, CR_SHAPE(B)),
                   .target = cr_tensor_init(CR_I32, CR_SHAPE(B * T))};
}

static void batch_free(batch *b)
{
    cr_tensor_free(b->x);
    cr_tensor_free(b->lengths);
    cr_tensor_free(b->target);
}

/* Fresh strings with lengths uniform in [min_len, T] (written through
 * ->data, so the versions are bumped). */
static void batch_fill(batch *b, int64_t min_len, cr_rng *rng)
{
    float *x = b->x->data;
    int32_t *len = b->lengths->data, *y = b->target->data;
    b->n_targets = 0;
    for (int64_t i = 0; i < b->B * b->T * 2; i++) x[i] = 0;
    for (int64_t i = 0; i < b->B; i++) {
        len[i] = (int32_t)(min_len + (int64_t)(cr_rng_uniform01(rng) * (double)(b->T - min_len + 1)));
        int32_t parity = 0;
        for (int64_t t = 0; t < b->T; t++) {
            int bit = t < len[i] && cr_rng_uniform01(rng) < 0.5;
            parity ^= bit;
            if (t < len[i]) x[(i * b->T + t) * 2 + bit] = 1;
            y[i * b->T + t] = t < len[i] ? parity : -1;
        }
        b->n_targets += len[i];
    }
    cr_tensor_bump_version(b->x);
    cr_tensor_bump_version(b->lengths);
    cr_tensor_bump_version(b->target);
}

typedef struct model {
    cr_params *ps;
    cr_rnn *rnn;
    cr_linear head; /* (2, H): logits of even, odd */
} model;

/* Logits [n*T, 2] at every step of strings lo..lo+n of b. */
static cr_tensor *logits_of(model *m, const batch *b, int64_t lo, int64_t n)
{
    cr_tensor *x = cr_narrow(b->x, 0, lo, n), *len = cr_narrow(b->lengths, 0, lo, n);
    cr_tensor *y = cr_rnn_forward(m->rnn, x, len, NULL, NULL).y; /* [n, T, H] */
    return cr_linear_forward(&m->head, cr_reshape(y, CR_SHAPE(n * b->T, m->rnn->cfg.hidden_size)));
}

typedef struct step_ctx {
    model *m;
    const batch *b;
} step_ctx;

/* Cross-entropy summed over a shard's steps and divided by the batch's
 * number of steps: the shards add up to the batch's mean. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end, T = c->b->T;
    cr_tensor *target = cr_narrow(c->b->target, 0, lo * T, (hi - lo) * T);
    cr_tensor *ce = cr_cross_entropy(logits_of(c->m, c->b, lo, hi - lo), target, -1, CR_SUM);
    return cr_mul_scalar(ce, 1.0 / (double)c->b->n_targets);
}

/* Share of strings whose parity, read after their last bit, is right. */
static double accuracy(model *m, const batch *b, cr_graph *g)
{
    bool was = cr_set_grad_enabled(false);
    cr_tensor *pred = cr_argmax(logits_of(m, b, 0, b->B), 1, false); /* i32 [B*T] */
    const int32_t *p = pred->data, *y = b->target->data, *len = b->lengths->data;
    int64_t right = 0;
    for (int64_t i = 0; i < b->B; i++) {
        int64_t k = i * b->T + len[i] - 1;
        right += p[k] == y[k];
    }
    cr_graph_clear(g);
    cr_set_grad_enabled(was);
    return (double)right / (double)b->B;
}

int main(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    cli_training t = {CLI_TRAINING_COMMON(quick),
                      .cell = "gru",
                      .steps = quick ? 500 : 3000,
                      .hidden = 16,
                      .batch = 32,
                      .lr = 1e-2};
    opts o = {.len = 10, .test = 1000, .threshold = 0.95};
    cli_flag flags[] = {
        CLI_TRAINING_FLAG("--cell", "a built-in cell: gru, lstm, rnn_tanh, ..."),
        {"--len", CLI_INT, &o.len, "N: training strings have 1..N bits, test strings 2N and 4N"},
        CLI_TRAINING_FLAG("--steps", NULL),
        CLI_TRAINING_FLAG("--hidden", NULL),
        CLI_TRAINING_FLAG("--batch", "strings per batch"),
        {"--test", CLI_INT, &o.test, "test strings of each length"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        CLI_TRAINING_FLAG("--clip", NULL),
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails below this accuracy on 4N bits"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG("--quick", "a short run (500 steps) that exits 1 unless it learned"),
    };
    cli_training_parse(&t, argc, argv,
                       "An RNN learns the parity of a bit string on 1..N bits and keeps it on 2N and 4N.",
                       NULL, flags, CLI_COUNT(flags));
    cli_training_check(&t, argv[0], o.len < 1 || o.test < 1, "a size or rate out of range");

    const cr_cell_type *cell = t.cell_type;
    model m = {.ps = cr_params_init()};
    m.rnn = cr_rnn_init(
        m.ps, "parity.rnn",
        (cr_rnn_config){
            .cell = cell, .input_size = 2, .hidden_size = t.hidden, .num_layers = 1, .dtype = CR_F32},
        &t.rng);
    m.head = cr_linear_init(m.ps, "parity.head", t.hidden, 2, true, CR_F32, &t.rng);
    cli_training_start(&t, m.ps);
    printf("example=parity cell=%s hidden=%lld params=%zu train_len=1..%lld\n", cell->name,
           (long long)t.hidden, cr_params_numel(m.ps), (long long)o.len);

    batch train = batch_init(t.batch, o.len);
    step_ctx ctx = {.m = &m, .b = &train};
    progress bar = progress_start(t.steps, "seq");
    double loss_avg = NAN;
    for (int64_t step = 1; step <= t.steps; step++) {
        batch_fill(&train, 1, &t.data);
        double loss = cli_training_step(&t, step - 1, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? loss : 0.95 * loss_avg + 0.05 * loss;
        progress_update(&bar, step, step * t.batch, "loss=%.4f", loss_avg);
    }
    double train_s = progress_elapsed(&bar), acc[3];
    for (int k = 0; k < 3; k++) { /* strings of exactly N, 2N and 4N bits */
        int64_t T = o.len << k;
        batch test = batch_init(o.test, T);
        batch_fill(&test, T, &t.data);
        acc[k] = accuracy(&m, &test, t.g);
        printf("len=%lld accuracy=%.4f\n", (long long)T, acc[k]);
        batch_free(&test);
    }
    printf("example=parity cell=%s steps=%lld train_loss=%.4f len=%lld accuracy_n=%.4f accuracy_2n=%.4f "
           "accuracy_4n=%.4f train_s=%.1f\n",
           cell->name, (long long)t.steps, loss_avg, (long long)o.len, acc[0], acc[1], acc[2], train_s);
    bool ok = acc[2] >= o.threshold;
    if (t.quick && !ok)
        fprintf(stderr, "parity: accuracy on %lld bits %.4f below the threshold %.2f\n",
                (long long)(4 * o.len), acc[2], o.threshold);

    batch_free(&train);
    cli_training_free(&t);
    cr_rnn_free(m.rnn);
    cr_params_free(m.ps);
    return t.quick && !ok ? 1 : 0;
}
