/* examples/sentiment: many-to-one classification. Word embeddings and an
 * LSTM read a short review and say whether it is positive or negative. The
 * reviews come from a small grammar, labelled by rules in which word order
 * matters, so counting good and bad words is not enough:
 *
 *   "the plot was good"                             positive
 *   "the plot was not very good"                    negative  (negation flips)
 *   "the acting was bad but the music was great"    positive  (after "but" wins)
 *   "the music was great but the acting was bad"    negative  (same words)
 *   "the plot was very dull and the cast was fine"  negative  (intensified counts twice)
 *
 * A clause scores p w n: p = +1 or -1 for its adjective, w = 2 when an
 * intensifier (very, really, ...) precedes it, n = -1 under a negation (not,
 * never, hardly). One clause: its sign; "X and Y": the sign of the sum (never
 * a tie); "X but Y": the sign of Y. Up to ten words without sentiment
 * follow ("... i saw it with my friends last week"): a left-to-right reader
 * must carry the evidence through them, while the backward direction of a
 * bidirectional LSTM reads it last. The program builds a small labelled
 * training set (1000 reviews) and a test set, trains a unidirectional and a
 * bidirectional LSTM on the same data, and compares their test accuracy,
 * overall and on each construction.
 *
 *   ./build/examples/sentiment [--train N] [--epochs E] [--hidden H] ... [--quick]
 *
 * Last line: example=sentiment ... accuracy_uni=... accuracy_bi=...
 * With --quick (run by meson test) it exits 1 unless both reach --threshold.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel.h"
#include "cli.h"

/* ---- the language ----------------------------------------------------------------------------------- */

static const char *const words[] = {
    "<pad>",     "the",     "this",   "a",        "movie",     "film",      "plot",   "acting",    "story",
    "cast",      "ending",  "music",  "script",   "dialogue",  "was",       "is",     "seemed",    "felt",
    "honestly",  "overall", "and",    "but",      "not",       "never",     "hardly", "very",      "really",
    "extremely", "truly",   "good",   "great",    "excellent", "wonderful", "fun",    "brilliant", "fine",
    "moving",    "bad",     "awful",  "terrible", "boring",    "dull",      "poor",   "weak",      "silly",
    "i",         "saw",     "it",     "with",     "my",        "friends",   "last",   "week",      "at",
    "home",      "on",      "sunday", "twice",
};
enum { PAD = 0, V = sizeof words / sizeof *words };
/* Ranges of word ids by role. */
enum {
    DET0 = 1,
    NOUN0 = 4,
    VERB0 = 14,
    OPEN0 = 18,
    AND = 20,
    BUT = 21,
    NEG0 = 22,
    INT0 = 25,
    POS0 = 29,
    NEG_ADJ0 = 37
};
enum { TAIL0 = 45 };
enum {
    N_DET = 3,
    N_NOUN = 10,
    N_VERB = 4,
    N_OPEN = 2,
    N_NEG = 3,
    N_INT = 4,
    N_POS = 8,
    N_NEG_ADJ = 8,
    N_TAIL = 13
};
enum { MAX_WORDS = 32, MAX_TAIL = 10 };

/* What kind of phrase a review is, for the per-construction accuracy. */
typedef enum kind { PLAIN, NEGATED, AND_SUM, BUT_CONTRAST, N_KINDS } kind;
static const char *const kind_names[] = {"plain", "negated", "and", "but"};

typedef struct review {
    int32_t w[MAX_WORDS];
    int64_t len;
    int32_t label; /* 1 positive, 0 negative */
    kind kind;
} review;

static int32_t pick(cr_rng *r, int32_t first, int32_t n)
{
    return first + (int32_t)(cr_rng_uniform01(r) * n);
}

/* "[the] noun verb [not] [very] adjective"; returns its score p w n. */
static int clause(review *v, cr_rng *r, bool *negated)
{
    v->w[v->len++] = pick(r, DET0, N_DET);
    v->w[v->len++] = pick(r, NOUN0, N_NOUN);
    v->w[v->len++] = pick(r, VERB0, N_VERB);
    int n = 1, w = 1;
    if (cr_rng_uniform01(r) < 0.35) v->w[v->len++] = pick(r, NEG0, N_NEG), n = -1, *negated = true;
    if (cr_rng_uniform01(r) < 0.35) v->w[v->len++] = pick(r, INT0, N_INT), w = 2;
    int p = cr_rng_uniform01(r) < 0.5 ? 1 : -1;
    v->w[v->len++] = p > 0 ? pick(r, POS0, N_POS) : pick(r, NEG_ADJ0, N_NEG_ADJ);
    return p * w * n;
}

/* Words that carry no sentiment ("i saw it with my friends"), 0..MAX_TAIL of
 * them after the last clause: the label's evidence comes first, and a
 * left-to-right reader must keep it through them. */
static void tail(review *v, cr_rng *r)
{
    int64_t n = (int64_t)(cr_rng_uniform01(r) * (MAX_TAIL + 1));
    for (int64_t i = 0; i < n; i++) v->w[v->len++] = pick(r, TAIL0, N_TAIL);
}

static review make_review(cr_rng *r)
{
    for (;;) {
        review v = {.len = 0};
        bool negated = false;
        if (cr_rng_uniform01(r) < 0.2) v.w[v.len++] = pick(r, OPEN0, N_OPEN);
        int s1 = clause(&v, r, &negated);
        double u = cr_rng_uniform01(r);
        if (u < 0.4) {
            v.label = s1 > 0;
            v.kind = negated ? NEGATED : PLAIN;
            tail(&v, r);
            return v;
        }
        v.w[v.len++] = u < 0.7 ? AND : BUT;
        int s2 = clause(&v, r, &negated);
        if (u < 0.7 && s1 + s2 == 0) continue; /* a tie has no label: draw again */
        v.label = (u < 0.7 ? s1 + s2 : s2) > 0;
        v.kind = u < 0.7 ? AND_SUM : BUT_CONTRAST;
        tail(&v, r);
        return v;
    }
}

static void print_review(const review *v)
{
    for (int64_t t = 0; t < v->len; t++) printf("%s%s", t ? " " : "", words[v->w[t]]);
}

/* ---- the model ---------------------------------------------------------------------------------------- */

typedef struct opts {
    cli_training t; /* t.steps: --epochs passes over the training set's whole batches */
    int64_t train, test, epochs, embed;
    double threshold;
} opts;

typedef struct model {
    cr_params *ps;
    cr_embedding emb; /* (V, E), row PAD zero */
    cr_rnn *lstm;     /* E -> H, one or two directions */
    cr_linear head;   /* (2, dirs*H) */
} model;

static model model_init(const opts *o, bool bidirectional, cr_rng *rng)
{
    model m = {.ps = cr_params_init()};
    m.emb = cr_embedding_init(m.ps, "sentiment.embed", V, o->embed, PAD, CR_F32, rng);
    m.lstm = cr_rnn_init(m.ps, "sentiment.lstm",
                         (cr_rnn_config){.cell = &cr_cell_lstm,
                                         .input_size = o->embed,
                                         .hidden_size = o->t.hidden,
                                         .num_layers = 1,
                                         .bidirectional = bidirectional,
                                         .forget_bias = 1.0,
                                         .dtype = CR_F32},
                         rng);
    m.head =
        cr_linear_init(m.ps, "sentiment.head", (bidirectional ? 2 : 1) * o->t.hidden, 2, true, CR_F32, rng);
    return m;
}

static void model_free(model *m)
{
    cr_rnn_free(m->lstm);
    cr_params_free(m->ps);
}

/* Logits [n, 2] of reviews rs[0..n). The final states of both directions
 * (forward: after the last word, backward: after the first) are the summary. */
static cr_tensor *logits_of(model *m, const review *const *rs, int64_t n)
{
    const int32_t **seqs = cr_arena_alloc(cr_arena_current(), (size_t)n * sizeof *seqs);
    int64_t *lens = cr_arena_alloc(cr_arena_current(), (size_t)n * sizeof *lens);
    for (int64_t i = 0; i < n; i++) seqs[i] = rs[i]->w, lens[i] = rs[i]->len;
    cr_tensor *idx, *lengths;
    cr_batch_pad_new(n, seqs, lens, PAD, &idx, &lengths);
    cr_rnn_output o = cr_rnn_forward(m->lstm, cr_embedding_forward(&m->emb, idx), lengths, NULL, NULL);
    cr_tensor *last[2] = {cr_select(o.h_n, 0, 0), m->lstm->dirs == 2 ? cr_select(o.h_n, 0, 1) : NULL};
    return cr_linear_forward(&m->head, m->lstm->dirs == 2 ? cr_concat(2, last, 1) : last[0]);
}

typedef struct step_ctx {
    model *m;
    const review *const *batch; /* B reviews of this step */
    int64_t B;
} step_ctx;

/* Cross-entropy summed over a shard's reviews, divided by the batch size. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end;
    int32_t *y = cr_arena_alloc(cr_arena_current(), (size_t)(hi - lo) * sizeof *y);
    for (int64_t i = lo; i < hi; i++) y[i - lo] = c->batch[i]->label;
    cr_tensor *target = cr_from_array(CR_I32, CR_SHAPE(hi - lo), y);
    cr_tensor *ce = cr_cross_entropy(logits_of(c->m, c->batch + lo, hi - lo), target, -1, CR_SUM);
    return cr_mul_scalar(ce, 1.0 / (double)c->B);
}

/* Accuracy over the test set; right[k] / all[k] per kind of phrase. The
 * first `show` mistakes are printed. */
static double evaluate(model *m, const review *test, int64_t n, cr_graph *g, int64_t *right, int64_t *all,
                       int show)
{
    bool was = cr_set_grad_enabled(false);
    int64_t ok = 0;
    for (int64_t lo = 0; lo < n; lo += 256) {
        int64_t k = n - lo < 256 ? n - lo : 256;
        const review *rs[256];
        for (int64_t i = 0; i < k; i++) rs[i] = &test[lo + i];
        const int32_t *p = cr_argmax(logits_of(m, rs, k), 1, false)->data;
        for (int64_t i = 0; i < k; i++) {
            bool hit = p[i] == rs[i]->label;
            ok += hit, right[rs[i]->kind] += hit, all[rs[i]->kind]++;
            if (!hit && show-- > 0) {
                printf("  wrong: \"");
                print_review(rs[i]);
                printf("\" is %s\n", rs[i]->label ? "positive" : "negative");
            }
        }
        cr_graph_clear(g);
    }
    cr_set_grad_enabled(was);
    return (double)ok / (double)n;
}

/* Train one model on the training set; returns its test accuracy and fills
 * the per-kind counts. */
static double run(const opts *o, bool bidirectional, const review *train, const review *test, int64_t *right,
                  int64_t *all)
{
    cli_training t = o->t; /* both models from the same weights' stream */
    model m = model_init(o, bidirectional, &t.rng);
    int64_t steps_per_epoch = o->train / t.batch;
    cli_training_start(&t, m.ps);
    printf("model=%s params=%zu steps=%lld\n", bidirectional ? "bidirectional" : "unidirectional",
           cr_params_numel(m.ps), (long long)t.steps);
    cr_rng order_rng = cr_rng_seed((uint64_t)t.seed ^ 0x5eed);
    int64_t *order = cr_xmalloc((size_t)o->train * sizeof *order);
    const review **batch = cr_xmalloc((size_t)t.batch * sizeof *batch);
    step_ctx ctx = {.m = &m, .batch = batch, .B = t.batch};
    progress bar = progress_start(t.steps, "seq");
    double loss_avg = NAN;
    for (int64_t step = 0; step < t.steps; step++) {
        int64_t k = step % steps_per_epoch;
        if (k == 0) cr_permutation(order, o->train, &order_rng); /* a new epoch, a new order */
        for (int64_t i = 0; i < t.batch; i++) batch[i] = &train[order[k * t.batch + i]];
        double loss = cli_training_step(&t, step, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? loss : 0.95 * loss_avg + 0.05 * loss;
        progress_update(&bar, step + 1, (step + 1) * t.batch, "loss=%.4f", loss_avg);
    }
    double acc = evaluate(&m, test, o->test, t.g, right, all, 3);
    printf("model=%s train_loss=%.4f test_accuracy=%.4f train_s=%.1f\n",
           bidirectional ? "bidirectional" : "unidirectional", loss_avg, acc, progress_elapsed(&bar));
    free(order);
    free(batch);
    cli_training_free(&t);
    model_free(&m);
    return acc;
}

int main(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.t = {CLI_TRAINING_COMMON(quick), .batch = 32, .hidden = 32, .lr = 1e-2, .warmup = true},
              .train = quick ? 2000 : 1000,
              .test = 2000,
              .epochs = quick ? 5 : 15,
              .embed = 16,
              .threshold = 0.9};
    cli_flag flags[] = {
        {"--train", CLI_INT, &o.train, "labelled training reviews"},
        {"--test", CLI_INT, &o.test, "test reviews"},
        {"--epochs", CLI_INT, &o.epochs, "passes over the training set"},
        CLI_TRAINING_FLAG("--batch", "reviews per batch"),
        {"--embed", CLI_INT, &o.embed, "word embedding size"},
        CLI_TRAINING_FLAG("--hidden", "LSTM hidden units per direction"),
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        CLI_TRAINING_FLAG("--clip", NULL),
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails below this test accuracy"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG("--quick",
                          "a short run (--train 2000 --epochs 5) that exits 1 unless both models learned"),
    };
    cli_training_parse(
        &o.t, argc, argv,
        "Embeddings and an LSTM classify generated reviews with negation, intensifiers and 'but';\n"
        "a unidirectional and a bidirectional model are compared on held-out reviews.",
        NULL, flags, CLI_COUNT(flags));
    /* 0 when a flag below is out of range, which then fails anyway */
    o.t.steps = o.t.batch > 0 ? o.epochs * (o.train / o.t.batch) : 0;
    cli_training_check(&o.t, argv[0],
                       o.train < 1 || o.test < 1 || o.epochs < 1 || o.t.batch > o.train || o.embed < 1,
                       "a size or rate out of range");

    cr_rng data = o.t.data;
    review *train = cr_xmalloc((size_t)o.train * sizeof *train),
           *test = cr_xmalloc((size_t)o.test * sizeof *test);
    for (int64_t i = 0; i < o.train; i++) train[i] = make_review(&data);
    for (int64_t i = 0; i < o.test; i++) test[i] = make_review(&data);
    printf("example=sentiment vocabulary=%d train=%lld test=%lld e.g. \"", (int)V, (long long)o.train,
           (long long)o.test);
    print_review(&train[0]);
    printf("\" is %s\n", train[0].label ? "positive" : "negative");

    int64_t right[2][N_KINDS] = {{0}}, all[2][N_KINDS] = {{0}};
    double acc[2];
    for (int bi = 0; bi < 2; bi++) acc[bi] = run(&o, bi, train, test, right[bi], all[bi]);
    char per_kind[256] = "";
    for (int k = 0; k < N_KINDS; k++) {
        printf("phrases=%-8s count=%5lld accuracy_uni=%.4f accuracy_bi=%.4f\n", kind_names[k],
               (long long)all[0][k], (double)right[0][k] / (double)all[0][k],
               (double)right[1][k] / (double)all[1][k]);
        size_t used = strlen(per_kind);
        snprintf(per_kind + used, sizeof per_kind - used, " %s_uni=%.4f %s_bi=%.4f", kind_names[k],
                 (double)right[0][k] / (double)all[0][k], kind_names[k],
                 (double)right[1][k] / (double)all[1][k]);
    }
    printf("example=sentiment train=%lld epochs=%lld accuracy_uni=%.4f accuracy_bi=%.4f%s\n",
           (long long)o.train, (long long)o.epochs, acc[0], acc[1], per_kind);
    bool ok = acc[0] >= o.threshold && acc[1] >= o.threshold;
    if (o.t.quick && !ok)
        fprintf(stderr, "sentiment: test accuracy %.4f (uni) %.4f (bi), threshold %.2f\n", acc[0], acc[1],
                o.threshold);
    free(train);
    free(test);
    return o.t.quick && !ok ? 1 : 0;
}
