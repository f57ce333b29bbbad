/* examples/count_zeros: a recurrent network learns to count, by regression:
 * it reads a bit string and outputs how many zeros it holds. Trained on
 * strings of up to N bits, it is tested on strings of exactly 2N, so it can
 * only pass by having learned a counter, not a table of the lengths it saw.
 *
 *   ./build/examples/count_zeros [--len N] [--steps S] [--hidden H] ... [--quick]
 *
 * The cell is a ReLU RNN, h' = relu(W_ih x + b + W_hh h): a ReLU unit can hold
 * an unbounded count (h' = h + [bit = 0] is one of its solutions), where a
 * tanh unit saturates at 1 and can only count as far as its training range.
 * Last line: example=count_zeros ... test_rmse=... test_accuracy=... (the
 * share of 2N-bit strings whose rounded prediction is the exact count).
 * With --quick (run by meson test) it exits 1 unless test_accuracy reaches
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

/* A batch of B bit strings: one-hot bits x [B, T, 2] (zero rows past a
 * string's end), lengths [B] and the counts of zeros [B, 1]. */
typedef struct batch {
    int64_t B, T;
    cr_tensor *x, *lengths, *count;
} batch;

static batch batch_init(int64_t B, int64_t T)
{
    return (batch){.B = B,
                   .T = T,
                   .x = cr_tensor_init(CR_F32, CR_SHAPE(B, T, 2)),
                   .lengths = cr_tensor_init(CR_I32, CR_SHAPE(B)),
                   .count = cr_tensor_init(CR_F32, CR_SHAPE(B, 1))};
}

static void batch_free(batch *b)
{
    cr_tensor_free(b->x);
    cr_tensor_free(b->lengths);
    cr_tensor_free(b->count);
}

/* Fresh strings with lengths uniform in [min_len, T]. The buffers are
 * written through ->data, so their versions are bumped for autograd. */
static void batch_fill(batch *b, int64_t min_len, cr_rng *rng)
{
    float *x = b->x->data, *count = b->count->data;
    int32_t *len = b->lengths->data;
    for (int64_t i = 0; i < b->B * b->T * 2; i++) x[i] = 0;
    for (int64_t i = 0; i < b->B; i++) {
        len[i] = (int32_t)(min_len + (int64_t)(cr_rng_uniform01(rng) * (double)(b->T - min_len + 1)));
        count[i] = 0;
        for (int64_t t = 0; t < len[i]; t++) {
            int bit = cr_rng_uniform01(rng) < 0.5;
            x[(i * b->T + t) * 2 + bit] = 1;
            count[i] += bit == 0;
        }
    }
    cr_tensor_bump_version(b->x);
    cr_tensor_bump_version(b->lengths);
    cr_tensor_bump_version(b->count);
}

typedef struct model {
    cr_params *ps;
    cr_rnn *rnn;
    cr_linear head; /* (1, H): the count from the final state */
} model;

/* The predicted counts [n, 1] of strings lo..lo+n of b. */
static cr_tensor *predict(model *m, const batch *b, int64_t lo, int64_t n)
{
    cr_tensor *x = cr_narrow(b->x, 0, lo, n), *len = cr_narrow(b->lengths, 0, lo, n);
    cr_rnn_output o = cr_rnn_forward(m->rnn, x, len, NULL, NULL);
    return cr_linear_forward(&m->head, cr_select(o.h_n, 0, 0)); /* h at each string's end */
}

typedef struct step_ctx {
    model *m;
    const batch *b;
} step_ctx;

/* Squared error of a shard, summed and divided by the batch size: the
 * shards add up to the batch's mean squared error. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end;
    cr_tensor *err =
        cr_mse_loss(predict(c->m, c->b, lo, hi - lo), cr_narrow(c->b->count, 0, lo, hi - lo), CR_SUM);
    return cr_mul_scalar(err, 1.0 / (double)c->b->B);
}

/* Root mean squared error and share of exact counts (after rounding). */
static void evaluate(model *m, const batch *b, cr_graph *g, double *rmse, double *acc)
{
    bool was = cr_set_grad_enabled(false);
    cr_tensor *p = predict(m, b, 0, b->B);
    const float *y = b->count->data;
    double se = 0;
    int64_t right = 0;
    for (int64_t i = 0; i < b->B; i++) {
        double v = cr_get_flat(p, i);
        se += (v - y[i]) * (v - y[i]);
        right += lround(v) == lround(y[i]);
    }
    cr_graph_clear(g);
    cr_set_grad_enabled(was);
    *rmse = sqrt(se / (double)b->B);
    *acc = (double)right / (double)b->B;
}

int main(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    cli_training t = {CLI_TRAINING_COMMON(quick),
                      .cell = "rnn_relu",
                      .steps = quick ? 600 : 2000,
                      .hidden = 8,
                      .batch = 64,
                      .lr = 1e-2};
    opts o = {.len = 16, .test = 1000, .threshold = 0.9};
    cli_flag flags[] = {
        CLI_TRAINING_FLAG("--cell", "a built-in cell: rnn_relu, rnn_tanh, gru, lstm, ..."),
        {"--len", CLI_INT, &o.len, "N: training strings have 1..N bits, test strings 2N"},
        CLI_TRAINING_FLAG("--steps", NULL),
        CLI_TRAINING_FLAG("--hidden", NULL),
        CLI_TRAINING_FLAG("--batch", "strings per batch"),
        {"--test", CLI_INT, &o.test, "test strings of 2N bits"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        CLI_TRAINING_FLAG("--clip", NULL),
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails below this test accuracy"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG("--quick", "a short run (600 steps) that exits 1 unless it learned"),
    };
    cli_training_parse(&t, argc, argv,
                       "An RNN counts the zeros in a bit string: trained on 1..N bits, tested on 2N.", NULL,
                       flags, CLI_COUNT(flags));
    cli_training_check(&t, argv[0], o.len < 1 || o.test < 1, "a size or rate out of range");

    const cr_cell_type *cell = t.cell_type;
    model m = {.ps = cr_params_init()};
    m.rnn = cr_rnn_init(
        m.ps, "counter.rnn",
        (cr_rnn_config){
            .cell = cell, .input_size = 2, .hidden_size = t.hidden, .num_layers = 1, .dtype = CR_F32},
        &t.rng);
    m.head = cr_linear_init(m.ps, "counter.head", t.hidden, 1, true, CR_F32, &t.rng);
    cli_training_start(&t, m.ps);
    printf("example=count_zeros cell=%s hidden=%lld params=%zu train_len=1..%lld test_len=%lld\n", cell->name,
           (long long)t.hidden, cr_params_numel(m.ps), (long long)o.len, (long long)(2 * o.len));

    batch train = batch_init(t.batch, o.len), test = batch_init(o.test, 2 * o.len);
    batch_fill(&test, 2 * o.len, &t.data); /* every test string has exactly 2N bits */
    step_ctx ctx = {.m = &m, .b = &train};
    progress bar = progress_start(t.steps, "seq");
    double loss_avg = NAN;
    for (int64_t step = 1; step <= t.steps; step++) {
        batch_fill(&train, 1, &t.data);
        double loss = cli_training_step(&t, step - 1, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? loss : 0.95 * loss_avg + 0.05 * loss;
        progress_update(&bar, step, step * t.batch, "mse=%.4f", loss_avg);
    }
    double train_s = progress_elapsed(&bar), rmse_train, acc_train, rmse, acc;
    batch_fill(&train, o.len, &t.data); /* held-out strings of the training length N */
    evaluate(&m, &train, t.g, &rmse_train, &acc_train);
    evaluate(&m, &test, t.g, &rmse, &acc);
    printf("len=%lld rmse=%.4f accuracy=%.4f\nlen=%lld rmse=%.4f accuracy=%.4f\n", (long long)o.len,
           rmse_train, acc_train, (long long)(2 * o.len), rmse, acc);
    printf(
        "example=count_zeros cell=%s steps=%lld train_mse=%.4f train_len_rmse=%.4f test_len=%lld test_rmse=%.4f "
        "test_accuracy=%.4f train_s=%.1f\n",
        cell->name, (long long)t.steps, loss_avg, rmse_train, (long long)(2 * o.len), rmse, acc, train_s);
    bool ok = acc >= o.threshold;
    if (t.quick && !ok)
        fprintf(stderr, "count_zeros: test accuracy %.4f below the threshold %.2f\n", acc, o.threshold);

    batch_free(&train);
    batch_free(&test);
    cli_training_free(&t);
    cr_rnn_free(m.rnn);
    cr_params_free(m.ps);
    return t.quick && !ok ? 1 : 0;
}
