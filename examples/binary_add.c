/* examples/binary_add: an RNN adds two binary numbers bit by bit, least
 * significant bit first, the way it is done on paper: at step t it reads
 * bit t of a and of b and writes bit t of a + b, so it must carry. Trained on
 * 8-bit numbers, it is tested on 32-bit numbers: a network that learned the
 * carry adds numbers of any width.
 *
 *   ./build/examples/binary_add [--bits N] [--test-bits M] [--steps S] ... [--quick]
 *
 * An N-bit sum has N+1 bits; the last step reads two zeros and writes the
 * final carry. Accuracy is exact: a sum counts as right only if all its bits
 * are. Last line: example=binary_add ... test_bits=32 test_accuracy=...
 * With --quick (run by meson test) it exits 1 unless test_accuracy reaches
 * --threshold.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "carousel.h"
#include "cli.h"

typedef struct opts {
    int64_t bits, test_bits, test;
    double threshold;
} opts;

/* B sums of two n-bit numbers: x [B, n+1, 2] holds bit t of a and of b at
 * step t (0 at step n), target [B*(n+1)] bit t of a + b. */
typedef struct batch {
    int64_t B, T;
    cr_tensor *x, *target;
} batch;

static batch batch_init(int64_t B, int64_t bits)
{
    int64_t T = bits + 1;
    return (batch){.B = B,
                   .T = T,
                   .x = cr_tensor_init(CR_F32, CR_SHAPE(B, T, 2)),
                   .target = cr_tensor_init(CR_I32, CR_SHAPE(B * T))};
}

static void batch_free(batch *b)
{
    cr_tensor_free(b->x);
    cr_tensor_free(b->target);
}

/* Fresh random operands, added bit by bit with a carry (so any width works;
 * written through ->data, so the versions are bumped). */
static void batch_fill(batch *b, cr_rng *rng)
{
    float *x = b->x->data;
    int32_t *y = b->target->data;
    for (int64_t i = 0; i < b->B; i++) {
        int carry = 0;
        for (int64_t t = 0; t < b->T; t++) {
            int a = t < b->T - 1 && cr_rng_uniform01(rng) < 0.5,
                c = t < b->T - 1 && cr_rng_uniform01(rng) < 0.5;
            x[(i * b->T + t) * 2] = (float)a;
            x[(i * b->T + t) * 2 + 1] = (float)c;
            y[i * b->T + t] = (a + c + carry) & 1;
            carry = (a + c + carry) >> 1;
        }
    }
    cr_tensor_bump_version(b->x);
    cr_tensor_bump_version(b->target);
}

typedef struct model {
    cr_params *ps;
    cr_rnn *rnn;
    cr_linear head; /* (2, H): logits of the sum bit */
} model;

/* Logits [n*T, 2] of sums lo..lo+n of b. */
static cr_tensor *logits_of(model *m, const batch *b, int64_t lo, int64_t n)
{
    cr_tensor *y = cr_rnn_forward(m->rnn, cr_narrow(b->x, 0, lo, n), NULL, NULL, NULL).y; /* [n, T, H] */
    return cr_linear_forward(&m->head, cr_reshape(y, CR_SHAPE(n * b->T, m->rnn->cfg.hidden_size)));
}

typedef struct step_ctx {
    model *m;
    const batch *b;
} step_ctx;

/* Cross-entropy summed over a shard's bits, divided by the batch's bits. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end, T = c->b->T;
    cr_tensor *target = cr_narrow(c->b->target, 0, lo * T, (hi - lo) * T);
    cr_tensor *ce = cr_cross_entropy(logits_of(c->m, c->b, lo, hi - lo), target, -1, CR_SUM);
    return cr_mul_scalar(ce, 1.0 / (double)(c->b->B * T));
}

/* Share of sums with every bit right; *bit_acc gets the share of bits.
 * Prints the first `show` sums as the model computes them. */
static double accuracy(model *m, const batch *b, cr_graph *g, int show, double *bit_acc)
{
    bool was = cr_set_grad_enabled(false);
    cr_tensor *pred = cr_argmax(logits_of(m, b, 0, b->B), 1, false); /* i32 [B*T] */
    const int32_t *p = pred->data, *y = b->target->data;
    int64_t exact = 0, bits = 0;
    for (int64_t i = 0; i < b->B; i++) {
        int64_t wrong = 0;
        for (int64_t t = 0; t < b->T; t++) wrong += p[i * b->T + t] != y[i * b->T + t];
        exact += wrong == 0;
        bits += b->T - wrong;
    }
    for (int64_t i = 0; i < show && i < b->B && b->T <= 64; i++) { /* a few sums, read back in decimal */
        const float *x = b->x->data;
        uint64_t a = 0, c = 0, sum = 0;
        for (int64_t t = b->T - 1; t >= 0; t--) {
            a = a << 1 | (x[(i * b->T + t) * 2] > 0);
            c = c << 1 | (x[(i * b->T + t) * 2 + 1] > 0);
            sum = sum << 1 | (uint64_t)p[i * b->T + t];
        }
        printf("  %llu + %llu = %llu (%s)\n", (unsigned long long)a, (unsigned long long)c,
               (unsigned long long)sum, a + c == sum ? "right" : "wrong");
    }
    cr_graph_clear(g);
    cr_set_grad_enabled(was);
    *bit_acc = (double)bits / (double)(b->B * b->T);
    return (double)exact / (double)b->B;
}

int main(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    cli_training t = {CLI_TRAINING_COMMON(quick),
                      .cell = "gru",
                      .steps = quick ? 1000 : 2000,
                      .hidden = 8,
                      .batch = 32,
                      .lr = 1e-2};
    opts o = {.bits = 8, .test_bits = 32, .test = 1000, .threshold = 0.95};
    cli_flag flags[] = {
        CLI_TRAINING_FLAG("--cell", "a built-in cell: gru, lstm, rnn_tanh, ..."),
        {"--bits", CLI_INT, &o.bits, "width of the training operands"},
        {"--test-bits", CLI_INT, &o.test_bits, "width of the test operands"},
        CLI_TRAINING_FLAG("--steps", NULL),
        CLI_TRAINING_FLAG("--hidden", NULL),
        CLI_TRAINING_FLAG("--batch", "sums per batch"),
        {"--test", CLI_INT, &o.test, "test sums"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        CLI_TRAINING_FLAG("--clip", NULL),
        {"--threshold", CLI_REAL, &o.threshold,
         "--quick fails below this exact-sum accuracy on the test width"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG("--quick", "a short run (1000 steps) that exits 1 unless it learned"),
    };
    cli_training_parse(&t, argc, argv,
                       "An RNN adds binary numbers bit by bit: trained on 8-bit numbers, tested on 32-bit.",
                       NULL, flags, CLI_COUNT(flags));
    cli_training_check(&t, argv[0], o.bits < 1 || o.test_bits < 1 || o.test < 1,
                       "a size or rate out of range");

    const cr_cell_type *cell = t.cell_type;
    model m = {.ps = cr_params_init()};
    m.rnn = cr_rnn_init(
        m.ps, "adder.rnn",
        (cr_rnn_config){
            .cell = cell, .input_size = 2, .hidden_size = t.hidden, .num_layers = 1, .dtype = CR_F32},
        &t.rng);
    m.head = cr_linear_init(m.ps, "adder.head", t.hidden, 2, true, CR_F32, &t.rng);
    cli_training_start(&t, m.ps);
    printf("example=binary_add cell=%s hidden=%lld params=%zu train_bits=%lld test_bits=%lld\n", cell->name,
           (long long)t.hidden, cr_params_numel(m.ps), (long long)o.bits, (long long)o.test_bits);

    batch train = batch_init(t.batch, o.bits);
    step_ctx ctx = {.m = &m, .b = &train};
    progress bar = progress_start(t.steps, "seq");
    double loss_avg = NAN;
    for (int64_t step = 1; step <= t.steps; step++) {
        batch_fill(&train, &t.data);
        double loss = cli_training_step(&t, step - 1, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? loss : 0.95 * loss_avg + 0.05 * loss;
        progress_update(&bar, step, step * t.batch, "loss=%.4f", loss_avg);
    }
    double train_s = progress_elapsed(&bar), bits_train, bits_test;
    batch held = batch_init(o.test, o.bits), test = batch_init(o.test, o.test_bits);
    batch_fill(&held, &t.data);
    batch_fill(&test, &t.data);
    double acc_train = accuracy(&m, &held, t.g, 0, &bits_train),
           acc = accuracy(&m, &test, t.g, 3, &bits_test);
    printf("bits=%lld accuracy=%.4f bit_accuracy=%.5f\nbits=%lld accuracy=%.4f bit_accuracy=%.5f\n",
           (long long)o.bits, acc_train, bits_train, (long long)o.test_bits, acc, bits_test);
    printf("example=binary_add cell=%s steps=%lld train_loss=%.4f train_bits=%lld train_accuracy=%.4f "
           "test_bits=%lld test_accuracy=%.4f test_bit_accuracy=%.5f train_s=%.1f\n",
           cell->name, (long long)t.steps, loss_avg, (long long)o.bits, acc_train, (long long)o.test_bits,
           acc, bits_test, train_s);
    bool ok = acc >= o.threshold;
    if (t.quick && !ok)
        fprintf(stderr, "binary_add: %lld-bit accuracy %.4f below the threshold %.2f\n",
                (long long)o.test_bits, acc, o.threshold);

    batch_free(&train);
    batch_free(&held);
    batch_free(&test);
    cli_training_free(&t);
    cr_rnn_free(m.rnn);
    cr_params_free(m.ps);
    return t.quick && !ok ? 1 : 0;
}
