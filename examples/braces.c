/* examples/braces: an LSTM reads a string of brackets of several kinds,
 * "([]{()})", and says whether it is balanced: every bracket closed by one of
 * its own kind, in the right order. That takes a stack, which the network
 * has to build in its state; the program reports its accuracy against the
 * nesting depth of the strings, including depths it never saw in training.
 *
 *   ./build/examples/braces [--kinds K] [--max-len L] [--depth D] [--steps S] ... [--quick]
 *
 * Half the strings are balanced. The other half are balanced strings with one
 * small change that breaks them: a bracket of the wrong kind "([)]", two
 * neighbours swapped ")(", or a bracket turned around. The depth of a string
 * is the largest number of brackets open at once (for a broken string, that
 * of the balanced string it came from). Last line: example=braces ...
 * accuracy=... accuracy_depth_1=... (accuracy is over the depths seen in
 * training, 1..D; the test also has depths D+1 and D+2). With --quick (run by meson test) it exits 1
 * unless the accuracy over the trained depths reaches --threshold.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel.h"
#include "cli.h"

enum { MAX_LEN = 256, MAX_KINDS = 4 };
static const char brackets[] = "()[]{}<>"; /* token 2k opens kind k, 2k+1 closes it */

typedef struct opts {
    int64_t kinds, max_len, depth, test;
    double threshold;
} opts;

/* ---- the strings --------------------------------------------------------------------------------- */

static int64_t uniform(cr_rng *r, int64_t lo, int64_t hi) /* in [lo, hi] */
{
    return lo + (int64_t)(cr_rng_uniform01(r) * (double)(hi - lo + 1));
}

/* Is s (n tokens) balanced? A stack of open kinds. */
static bool balanced(const int32_t *s, int64_t n)
{
    int32_t stack[MAX_LEN];
    int64_t top = 0;
    for (int64_t i = 0; i < n; i++) {
        if (s[i] % 2 == 0)
            stack[top++] = s[i] / 2;
        else if (top == 0 || stack[--top] != s[i] / 2)
            return false;
    }
    return top == 0;
}

/* The largest number of brackets open at once (closings of any kind count). */
static int64_t depth_of(const int32_t *s, int64_t n)
{
    int64_t d = 0, max = 0;
    for (int64_t i = 0; i < n; i++) {
        d += s[i] % 2 == 0 ? 1 : -1;
        if (d > max) max = d;
    }
    return max;
}

/* A random balanced string of n tokens (n even, n >= 2 depth) reaching
 * exactly `depth`: open while allowed with probability 1/2, else close the
 * innermost; drawn again until it reaches the depth. */
static void balanced_string(int32_t *s, int64_t n, int64_t depth, int64_t kinds, cr_rng *r)
{
    int32_t stack[MAX_LEN];
    do {
        int64_t top = 0;
        for (int64_t i = 0; i < n; i++) {
            bool can_open = top < depth && top + 1 <= n - i - 1, must_open = top == 0;
            if (must_open || (can_open && cr_rng_uniform01(r) < 0.5)) {
                stack[top] = (int32_t)uniform(r, 0, kinds - 1);
                s[i] = 2 * stack[top++];
            } else {
                s[i] = 2 * stack[--top] + 1;
            }
        }
    } while (depth_of(s, n) != depth);
}

/* One change that leaves the string unbalanced: another kind for one
 * bracket, two different neighbours swapped, or one bracket turned around. */
static void corrupt(int32_t *s, int64_t n, int64_t kinds, cr_rng *r)
{
    int32_t copy[MAX_LEN];
    memcpy(copy, s, (size_t)n * sizeof *s);
    do {
        memcpy(s, copy, (size_t)n * sizeof *s);
        int64_t i = uniform(r, 0, n - 1), how = uniform(r, kinds > 1 ? 0 : 1, 2);
        if (how == 0)
            s[i] = (int32_t)(2 * ((s[i] / 2 + uniform(r, 1, kinds - 1)) % kinds) + s[i] % 2);
        else if (how == 1 && i + 1 < n)
            s[i] = copy[i + 1], s[i + 1] = copy[i];
        else
            s[i] ^= 1;
    } while (balanced(s, n));
}

/* A batch: one-hot tokens x [B, T, 2K] (zero rows past a string's end),
 * lengths [B], labels [B] (1 = balanced) and each string's depth. */
typedef struct batch {
    int64_t B, T, K;
    cr_tensor *x, *lengths, *label;
    int64_t *depth;
} batch;

static batch batch_init(int64_t B, int64_t T, int64_t K)
{
    return (batch){.B = B,
                   .T = T,
                   .K = K,
                   .x = cr_tensor_init(CR_F32, CR_SHAPE(B, T, 2 * K)),
                   .lengths = cr_tensor_init(CR_I32, CR_SHAPE(B)),
                   .label = cr_tensor_init(CR_I32, CR_SHAPE(B)),
                   .depth = cr_xmalloc((size_t)B * sizeof(int64_t))};
}

static void batch_free(batch *b)
{
    cr_tensor_free(b->x);
    cr_tensor_free(b->lengths);
    cr_tensor_free(b->label);
    free(b->depth);
}

/* Strings of depth 1..max_depth (uniform) and even length in [2 depth, T],
 * half of them broken (written through ->data: versions bumped). */
static void batch_fill(batch *b, int64_t max_depth, cr_rng *r)
{
    float *x = b->x->data;
    int32_t *len = b->lengths->data, *label = b->label->data, s[MAX_LEN];
    memset(x, 0, (size_t)cr_numel(b->x) * sizeof *x);
    for (int64_t i = 0; i < b->B; i++) {
        int64_t d = uniform(r, 1, max_depth), n = 2 * uniform(r, d, b->T / 2);
        balanced_string(s, n, d, b->K, r);
        label[i] = cr_rng_uniform01(r) < 0.5;
        if (!label[i]) corrupt(s, n, b->K, r);
        len[i] = (int32_t)n;
        b->depth[i] = d;
        for (int64_t t = 0; t < n; t++) x[(i * b->T + t) * 2 * b->K + s[t]] = 1;
    }
    cr_tensor_bump_version(b->x);
    cr_tensor_bump_version(b->lengths);
    cr_tensor_bump_version(b->label);
}

/* ---- the model -------------------------------------------------------------------------------------- */

typedef struct model {
    cr_params *ps;
    cr_rnn *lstm;
    cr_linear head; /* (2, H): logits of broken, balanced from the final state */
} model;

static cr_tensor *logits_of(model *m, const batch *b, int64_t lo, int64_t n)
{
    cr_tensor *x = cr_narrow(b->x, 0, lo, n), *len = cr_narrow(b->lengths, 0, lo, n);
    cr_rnn_output o = cr_rnn_forward(m->lstm, x, len, NULL, NULL);
    return cr_linear_forward(&m->head, cr_select(o.h_n, 0, 0)); /* [n, 2] */
}

typedef struct step_ctx {
    model *m;
    const batch *b;
} step_ctx;

/* Cross-entropy summed over a shard's strings, divided by the batch size. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end;
    cr_tensor *ce = cr_cross_entropy(logits_of(c->m, c->b, lo, hi - lo),
                                     cr_narrow(c->b->label, 0, lo, hi - lo), -1, CR_SUM);
    return cr_mul_scalar(ce, 1.0 / (double)c->b->B);
}

/* right[d], all[d]: strings of depth d classified right, and in all. */
static void score(model *m, const batch *b, cr_graph *g, int64_t *right, int64_t *all)
{
    bool was = cr_set_grad_enabled(false);
    cr_tensor *pred = cr_argmax(logits_of(m, b, 0, b->B), 1, false);
    const int32_t *p = pred->data, *y = b->label->data;
    for (int64_t i = 0; i < b->B; i++) {
        all[b->depth[i]]++;
        right[b->depth[i]] += p[i] == y[i];
    }
    cr_graph_clear(g);
    cr_set_grad_enabled(was);
}

int main(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    cli_training t = {
        CLI_TRAINING_COMMON(quick), .steps = 3000, .hidden = 48, .batch = 64, .lr = 1e-2, .warmup = true};
    opts o = {.kinds = 3, .max_len = 20, .depth = 4, .test = 2000, .threshold = 0.9};
    if (quick) o.max_len = 12, o.depth = 3, t.hidden = 32, t.steps = 800;
    cli_flag flags[] = {
        {"--kinds", CLI_INT, &o.kinds, "kinds of brackets, 1..4: () [] {} <>"},
        {"--max-len", CLI_INT, &o.max_len, "longest string (even)"},
        {"--depth", CLI_INT, &o.depth, "deepest nesting in training (the test goes two deeper)"},
        CLI_TRAINING_FLAG("--steps", NULL),
        CLI_TRAINING_FLAG("--hidden", "LSTM hidden units"),
        CLI_TRAINING_FLAG("--batch", "strings per batch"),
        {"--test", CLI_INT, &o.test, "test strings"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        CLI_TRAINING_FLAG("--clip", NULL),
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails below this accuracy on the trained depths"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG(
            "--quick",
            "a short run that exits 1 unless it learned (--max-len 12 --depth 3 --hidden 32 --steps 800)"),
    };
    cli_training_parse(&t, argc, argv,
                       "An LSTM says whether a string of brackets of several kinds is balanced.", NULL, flags,
                       CLI_COUNT(flags));
    cli_training_check(&t, argv[0],
                       o.kinds < 1 || o.kinds > MAX_KINDS || o.depth < 1 || o.max_len < 2 * (o.depth + 2) ||
                           o.max_len > MAX_LEN || o.test < 1,
                       "a size or rate out of range (--max-len must reach 2 (depth + 2))");

    model m = {.ps = cr_params_init()};
    m.lstm = cr_rnn_init(m.ps, "braces.lstm",
                         (cr_rnn_config){.cell = &cr_cell_lstm,
                                         .input_size = 2 * o.kinds,
                                         .hidden_size = t.hidden,
                                         .num_layers = 1,
                                         .forget_bias = 1.0,
                                         .dtype = CR_F32},
                         &t.rng);
    m.head = cr_linear_init(m.ps, "braces.head", t.hidden, 2, true, CR_F32, &t.rng);
    cli_training_start(&t, m.ps);
    printf("example=braces kinds=%.*s hidden=%lld params=%zu max_len=%lld train_depth=1..%lld\n",
           (int)(2 * o.kinds), brackets, (long long)t.hidden, cr_params_numel(m.ps), (long long)o.max_len,
           (long long)o.depth);

    batch train = batch_init(t.batch, o.max_len, o.kinds);
    step_ctx ctx = {.m = &m, .b = &train};
    progress bar = progress_start(t.steps, "seq");
    double loss_avg = NAN;
    for (int64_t step = 1; step <= t.steps; step++) {
        batch_fill(&train, o.depth, &t.data);
        double loss = cli_training_step(&t, step - 1, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? loss : 0.95 * loss_avg + 0.05 * loss;
        progress_update(&bar, step, step * t.batch, "loss=%.4f", loss_avg);
    }
    double train_s = progress_elapsed(&bar);

    /* Test strings of every depth up to two past training, in batches. */
    int64_t right[MAX_LEN] = {0}, all[MAX_LEN] = {0}, D = o.depth + 2;
    batch test = batch_init(t.batch, o.max_len, o.kinds);
    for (int64_t k = 0; k < o.test; k += t.batch) {
        batch_fill(&test, D, &t.data);
        score(&m, &test, t.g, right, all);
    }
    batch_free(&test);
    int64_t seen_right = 0, seen_all = 0;
    char per_depth[512] = "";
    for (int64_t d = 1; d <= D; d++) {
        double acc = all[d] ? (double)right[d] / (double)all[d] : NAN;
        printf("depth=%lld strings=%lld accuracy=%.4f%s\n", (long long)d, (long long)all[d], acc,
               d > o.depth ? " (deeper than any training string)" : "");
        size_t used = strlen(per_depth);
        snprintf(per_depth + used, sizeof per_depth - used, " accuracy_depth_%lld=%.4f", (long long)d, acc);
        if (d <= o.depth) seen_right += right[d], seen_all += all[d];
    }
    double acc = (double)seen_right / (double)seen_all;
    printf("example=braces steps=%lld train_loss=%.4f accuracy=%.4f%s train_s=%.1f\n", (long long)t.steps,
           loss_avg, acc, per_depth, train_s);
    bool ok = acc >= o.threshold;
    if (t.quick && !ok) fprintf(stderr, "braces: accuracy %.4f below the threshold %.2f\n", acc, o.threshold);

    batch_free(&train);
    cli_training_free(&t);
    cr_rnn_free(m.lstm);
    cr_params_free(m.ps);
    return t.quick && !ok ? 1 : 0;
}
