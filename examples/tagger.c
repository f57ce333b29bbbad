/* examples/tagger: many-to-many sequence labelling. A bidirectional LSTM tags
 * every word of a sentence with its part of speech, on sentences from a toy
 * grammar whose ambiguous words ("fish", "duck", "watch", ...) can be a noun,
 * a verb or a noun modifier, and only the context says which:
 *
 *   the  duck  swims            duck = NOUN  (a verb follows)
 *   the  duck  pond  swims      duck = MOD   (a noun follows: right context)
 *   bob  duck  the  ball        duck = VERB  (a subject precedes: left context)
 *   bob  sees  the  duck        duck = NOUN  (same right context as "the cat duck")
 *
 * A left-to-right LSTM has not yet seen the right context when it must tag
 * the word; a bidirectional one has. Both are trained on the same sentences
 * and compared on held-out ones: word accuracy, accuracy on the ambiguous
 * words, and whole sentences tagged without a mistake.
 *
 *   ./build/examples/tagger [--steps S] [--hidden H] [--embed E] ... [--quick]
 *
 * Grammar: S -> NP VP ["and" NP VP];  NP -> DET [ADJ] [MOD] N | NAME;
 * VP -> V [NP] [ADV], where MOD, N and V may each be an ambiguous word.
 * Last line: example=tagger ... accuracy_uni=... accuracy_bi=...
 * ambiguous_uni=... ambiguous_bi=... With --quick (run by meson test) it
 * exits 1 unless the bidirectional tagger reaches --threshold on the
 * ambiguous words and beats the unidirectional one there.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel.h"
#include "cli.h"

/* ---- the language --------------------------------------------------------------------------------- */

enum tag { T_DET, T_NAME, T_NOUN, T_VERB, T_ADJ, T_MOD, T_ADV, T_CONJ, N_TAGS };
static const char *const tag_names[] = {"DET", "NAME", "NOUN", "VERB", "ADJ", "MOD", "ADV", "CONJ"};

/* Word classes: each a range of ids in `words`. */
static const char *const words[] = {
    "<pad>", "the",    "a",      "every",                            /* DET 1..3 */
    "alice", "bob",    "carol",                                      /* NAME 4..6 */
    "dog",   "cat",    "man",    "boat",   "house", "pond",  "ball", /* NOUN 7..13 */
    "sees",  "likes",  "chases", "paints", "finds", "swims",         /* VERB 14..19 */
    "old",   "big",    "red",                                        /* ADJ 20..22 */
    "fish",  "duck",   "watch",  "park",   "train", "book",  "cook", /* AMBIG 23..29: NOUN, VERB or MOD */
    "today", "slowly", "again",                                      /* ADV 30..32 */
    "and",                                                           /* 33 */
};
enum { PAD = 0, V = sizeof words / sizeof *words, MAX_WORDS = 32 };
typedef struct wclass {
    int32_t first, n;
} wclass;
static const wclass DET = {1, 3}, NAME = {4, 3}, NOUN = {7, 7}, VERB = {14, 6}, ADJ = {20, 3},
                    AMBIG = {23, 7}, ADV = {30, 3};
static const int32_t AND = 33;

typedef struct sentence {
    int32_t w[MAX_WORDS], tag[MAX_WORDS];
    int64_t len;
} sentence;

static bool coin(cr_rng *r, double p) { return cr_rng_uniform01(r) < p; }
static void emit(sentence *s, cr_rng *r, wclass c, enum tag t)
{
    s->w[s->len] = c.first + (int32_t)(cr_rng_uniform01(r) * c.n);
    s->tag[s->len++] = t;
}
static bool ambiguous(int32_t w) { return w >= AMBIG.first && w < AMBIG.first + AMBIG.n; }

/* Ambiguous words are drawn as often as the plain ones of a slot. */
static void noun_phrase(sentence *s, cr_rng *r)
{
    if (coin(r, 0.3)) {
        emit(s, r, NAME, T_NAME);
        return;
    }
    emit(s, r, DET, T_DET);
    if (coin(r, 0.3)) emit(s, r, ADJ, T_ADJ);
    if (coin(r, 0.4)) emit(s, r, AMBIG, T_MOD);
    emit(s, r, coin(r, 0.5) ? AMBIG : NOUN, T_NOUN);
}

static void clause(sentence *s, cr_rng *r)
{
    noun_phrase(s, r);
    emit(s, r, coin(r, 0.5) ? AMBIG : VERB, T_VERB);
    if (coin(r, 0.6)) noun_phrase(s, r);
    if (coin(r, 0.3)) emit(s, r, ADV, T_ADV);
}

static sentence make_sentence(cr_rng *r)
{
    sentence s = {.len = 0};
    clause(&s, r);
    if (coin(r, 0.3)) {
        s.w[s.len] = AND;
        s.tag[s.len++] = T_CONJ;
        clause(&s, r);
    }
    return s;
}

/* ---- the model ---------------------------------------------------------------------------------------- */

typedef struct opts {
    cli_training t;
    int64_t embed, test;
    double threshold;
} opts;

typedef struct model {
    cr_params *ps;
    cr_embedding emb; /* (V, E), row PAD zero */
    cr_rnn *lstm;     /* E -> H per direction */
    cr_linear head;   /* (N_TAGS, dirs*H): a tag at every step */
} model;

static model model_init(const opts *o, bool bidirectional, cr_rng *rng)
{
    model m = {.ps = cr_params_init()};
    m.emb = cr_embedding_init(m.ps, "tagger.embed", V, o->embed, PAD, CR_F32, rng);
    m.lstm = cr_rnn_init(m.ps, "tagger.lstm",
                         (cr_rnn_config){.cell = &cr_cell_lstm,
                                         .input_size = o->embed,
                                         .hidden_size = o->t.hidden,
                                         .num_layers = 1,
                                         .bidirectional = bidirectional,
                                         .forget_bias = 1.0,
                                         .dtype = CR_F32},
                         rng);
    m.head = cr_linear_init(m.ps, "tagger.head", m.lstm->dirs * o->t.hidden, N_TAGS, true, CR_F32, rng);
    return m;
}

/* Logits [n*T, N_TAGS] of sentences ss[0..n) padded to T = the longest;
 * *target gets the tags [n*T] (-1 in the padding). */
static cr_tensor *logits_of(model *m, const sentence *const *ss, int64_t n, cr_tensor **target)
{
    const int32_t **seqs = cr_arena_alloc(cr_arena_current(), (size_t)n * sizeof *seqs);
    const int32_t **tags = cr_arena_alloc(cr_arena_current(), (size_t)n * sizeof *tags);
    int64_t *lens = cr_arena_alloc(cr_arena_current(), (size_t)n * sizeof *lens);
    for (int64_t i = 0; i < n; i++) seqs[i] = ss[i]->w, tags[i] = ss[i]->tag, lens[i] = ss[i]->len;
    cr_tensor *idx, *lengths, *tag_idx;
    cr_batch_pad_new(n, seqs, lens, PAD, &idx, &lengths);
    cr_batch_pad_new(n, tags, lens, -1, &tag_idx, &lengths);
    *target = cr_reshape(tag_idx, CR_SHAPE(-1));
    cr_tensor *y = cr_rnn_forward(m->lstm, cr_embedding_forward(&m->emb, idx), lengths, NULL, NULL).y;
    return cr_linear_forward(&m->head, cr_reshape(y, CR_SHAPE(-1, y->shape[2])));
}

typedef struct step_ctx {
    model *m;
    const sentence *const *batch;
    int64_t B, words; /* sentences and words in the batch */
} step_ctx;

/* Cross-entropy summed over a shard's words, divided by the batch's words. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end;
    cr_tensor *target, *logits = logits_of(c->m, c->batch + lo, hi - lo, &target);
    return cr_mul_scalar(cr_cross_entropy(logits, target, -1, CR_SUM), 1.0 / (double)c->words);
}

typedef struct score {
    int64_t words, right, amb, amb_right, sentences, sentences_right;
    int64_t amb_by_tag[N_TAGS], amb_right_by_tag[N_TAGS];
} score;

static score evaluate(model *m, const sentence *test, int64_t n, cr_graph *g)
{
    bool was = cr_set_grad_enabled(false);
    score sc = {.sentences = n};
    for (int64_t lo = 0; lo < n; lo += 256) {
        int64_t k = n - lo < 256 ? n - lo : 256;
        const sentence *ss[256];
        for (int64_t i = 0; i < k; i++) ss[i] = &test[lo + i];
        cr_tensor *target, *logits = logits_of(m, ss, k, &target);
        const int32_t *p = cr_argmax(logits, 1, false)->data;
        int64_t T = cr_numel(target) / k;
        for (int64_t i = 0; i < k; i++) {
            bool all = true;
            for (int64_t t = 0; t < ss[i]->len; t++) {
                bool hit = p[i * T + t] == ss[i]->tag[t];
                sc.words++, sc.right += hit, all &= hit;
                if (ambiguous(ss[i]->w[t])) {
                    sc.amb++, sc.amb_right += hit;
                    sc.amb_by_tag[ss[i]->tag[t]]++, sc.amb_right_by_tag[ss[i]->tag[t]] += hit;
                }
            }
            sc.sentences_right += all;
        }
        cr_graph_clear(g);
    }
    cr_set_grad_enabled(was);
    return sc;
}

static score run(const opts *o, bool bidirectional, const sentence *test)
{
    cli_training t = o->t; /* both models from the same weights and sentences */
    model m = model_init(o, bidirectional, &t.rng);
    cli_training_start(&t, m.ps);
    const char *name = bidirectional ? "bidirectional" : "unidirectional";
    printf("model=%s params=%zu\n", name, cr_params_numel(m.ps));
    sentence *batch = cr_xmalloc((size_t)t.batch * sizeof *batch);
    const sentence **rows = cr_xmalloc((size_t)t.batch * sizeof *rows);
    step_ctx ctx = {.m = &m, .batch = rows, .B = t.batch};
    progress bar = progress_start(t.steps, "tok");
    double loss_avg = NAN;
    int64_t tokens = 0;
    for (int64_t step = 0; step < t.steps; step++) {
        ctx.words = 0;
        for (int64_t i = 0; i < t.batch; i++) {
            batch[i] = make_sentence(&t.data);
            rows[i] = &batch[i];
            ctx.words += batch[i].len;
        }
        tokens += ctx.words;
        double loss = cli_training_step(&t, step, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? loss : 0.95 * loss_avg + 0.05 * loss;
        progress_update(&bar, step + 1, tokens, "loss=%.4f", loss_avg);
    }
    score sc = evaluate(&m, test, o->test, t.g);
    printf("model=%s train_loss=%.4f word_accuracy=%.4f ambiguous_accuracy=%.4f sentence_accuracy=%.4f "
           "train_s=%.1f\n",
           name, loss_avg, (double)sc.right / (double)sc.words, (double)sc.amb_right / (double)sc.amb,
           (double)sc.sentences_right / (double)sc.sentences, progress_elapsed(&bar));
    free(batch);
    free(rows);
    cli_training_free(&t);
    cr_rnn_free(m.lstm);
    cr_params_free(m.ps);
    return sc;
}

int main(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.t = {CLI_TRAINING_COMMON(quick), .steps = quick ? 400 : 1500, .batch = 32, .hidden = 32,
                    .lr = 1e-2, .warmup = true},
              .embed = 16,
              .test = 2000,
              .threshold = 0.95};
    cli_flag flags[] = {
        CLI_TRAINING_FLAG("--steps", "training steps (batches of fresh sentences)"),
        CLI_TRAINING_FLAG("--batch", "sentences per batch"),
        {"--embed", CLI_INT, &o.embed, "word embedding size"},
        CLI_TRAINING_FLAG("--hidden", "LSTM hidden units per direction"),
        {"--test", CLI_INT, &o.test, "held-out test sentences"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        CLI_TRAINING_FLAG("--clip", NULL),
        {"--threshold", CLI_REAL, &o.threshold,
         "--quick fails below this bidirectional accuracy on ambiguous words"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG("--quick", "a short run (400 steps) that exits 1 unless it learned"),
    };
    cli_training_parse(
        &o.t, argc, argv,
        "A bidirectional LSTM tags parts of speech where ambiguous words need left and right context;\n"
        "a unidirectional tagger trained on the same sentences is the baseline.",
        NULL, flags, CLI_COUNT(flags));
    cli_training_check(&o.t, argv[0], o.embed < 1 || o.test < 1, "a size or rate out of range");

    cr_rng held = cr_rng_seed((uint64_t)o.t.seed ^ 0x7e57);
    sentence *test = cr_xmalloc((size_t)o.test * sizeof *test);
    for (int64_t i = 0; i < o.test; i++) test[i] = make_sentence(&held);
    printf("example=tagger vocabulary=%d tags=%d e.g.", (int)V, (int)N_TAGS);
    for (int64_t t = 0; t < test[0].len; t++)
        printf(" %s/%s", words[test[0].w[t]], tag_names[test[0].tag[t]]);
    printf("\n");

    score sc[2];
    for (int bi = 0; bi < 2; bi++) sc[bi] = run(&o, bi, test);
    for (int t = 0; t < N_TAGS; t++)
        if (sc[0].amb_by_tag[t])
            printf("ambiguous words tagged %-4s count=%5lld accuracy_uni=%.4f accuracy_bi=%.4f\n",
                   tag_names[t], (long long)sc[0].amb_by_tag[t],
                   (double)sc[0].amb_right_by_tag[t] / (double)sc[0].amb_by_tag[t],
                   (double)sc[1].amb_right_by_tag[t] / (double)sc[1].amb_by_tag[t]);
    double acc[2], amb[2], sent[2];
    for (int k = 0; k < 2; k++) {
        acc[k] = (double)sc[k].right / (double)sc[k].words;
        amb[k] = (double)sc[k].amb_right / (double)sc[k].amb;
        sent[k] = (double)sc[k].sentences_right / (double)sc[k].sentences;
    }
    printf(
        "example=tagger steps=%lld accuracy_uni=%.4f accuracy_bi=%.4f ambiguous_uni=%.4f ambiguous_bi=%.4f "
        "sentences_uni=%.4f sentences_bi=%.4f\n",
        (long long)o.t.steps, acc[0], acc[1], amb[0], amb[1], sent[0], sent[1]);
    bool ok = amb[1] >= o.threshold && amb[1] > amb[0];
    if (o.t.quick && !ok)
        fprintf(stderr, "tagger: ambiguous-word accuracy %.4f (bi) against %.4f (uni), threshold %.2f\n",
                amb[1], amb[0], o.threshold);
    free(test);
    return o.t.quick && !ok ? 1 : 0;
}
