/* Sequence to sequence (Sutskever et al., 2014) on a toy task: read a string of
 * digits, write it reversed (or sorted). An LSTM encoder reads the variable-
 * length source; its final (h, c) starts an LSTM decoder cell, which is
 * trained with teacher forcing (it is fed the true previous token) and
 * cross-entropy that ignores padding. Held-out sources are then decoded
 * greedily and with beam search, in no-grad mode, and scored by exact match.
 *
 *   ./build/examples/seq2seq [--task reverse|sort] [--steps N] [--hidden H] ... [--quick]
 *
 * Last line: example=seq2seq steps=... train_loss=... greedy_acc=... beam_acc=... beam=K
 * With --quick (run by meson test) it trains briefly and exits 1 unless the
 * greedy accuracy reaches --threshold.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "carousel.h"
#include "cli.h"

/* Tokens: padding, start and end of the output, then the ten digits. */
enum { PAD = 0, BOS = 1, EOS = 2, DIGIT0 = 3, VOCAB = 13 };

typedef struct opts {
    cli_training t;
    const char *task;
    int64_t embed, min_len, max_len, beam, test;
    double threshold;
} opts;

typedef struct model {
    cr_params *ps;
    cr_embedding emb; /* (V, E), shared by source and target tokens; row PAD is 0 */
    cr_rnn *enc;      /* LSTM over the source, [B, T, E] -> final (h, c) [1, B, H] */
    cr_cell dec;      /* LSTM cell, one output token per step */
    cr_linear head;   /* (V, H): logits of the next token */
} model;

/* One example: source digits and the wanted output (without EOS). */
typedef struct example {
    int32_t src[64], tgt[64];
    int64_t len;
} example;

static opts parse(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.t = {CLI_TRAINING_COMMON(quick), .steps = quick ? 300 : 600, .batch = 64, .hidden = 64,
                    .lr = 5e-3, .warmup = true},
              .task = "reverse",
              .embed = 32,
              .min_len = 3,
              .max_len = quick ? 6 : 10,
              .beam = 4,
              .test = quick ? 200 : 500,
              .threshold = 0.8};
    cli_flag flags[] = {
        {"--task", CLI_STR, &o.task, "reverse or sort the digits"},
        CLI_TRAINING_FLAG("--steps", NULL),
        CLI_TRAINING_FLAG("--batch", "examples per batch"),
        CLI_TRAINING_FLAG("--hidden", "LSTM hidden units (encoder and decoder)"),
        {"--embed", CLI_INT, &o.embed, "token embedding size"},
        {"--min-len", CLI_INT, &o.min_len, "shortest source"},
        {"--max-len", CLI_INT, &o.max_len, "longest source (at most 63)"},
        {"--beam", CLI_INT, &o.beam, "beam width"},
        {"--test", CLI_INT, &o.test, "held-out sources decoded"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        CLI_TRAINING_FLAG("--clip", "clip the gradient's global norm to this"),
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails below this greedy accuracy"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG("--quick",
                          "a short run (--steps 300 --max-len 6 --test 200) that exits 1 unless it learned"),
    };
    cli_training_parse(
        &o.t, argc, argv,
        "An LSTM encoder-decoder reverses (or sorts) strings of digits: teacher forcing in training,\n"
        "greedy and beam-search decoding of held-out sources.",
        NULL, flags, CLI_COUNT(flags));
    cli_training_check(&o.t, argv[0],
                       (strcmp(o.task, "reverse") && strcmp(o.task, "sort")) || o.embed < 1 ||
                           o.min_len < 1 || o.max_len < o.min_len || o.max_len > 63 || o.beam < 1 ||
                           o.beam > 64 || o.test < 1 || !(o.t.clip > 0),
                       "an option out of range");
    return o;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* A random source of min_len..max_len digits and its target. */
static example make_example(const opts *o, cr_rng *rng)
{
    example e;
    e.len = o->min_len + (int64_t)(cr_rng_uniform01(rng) * (double)(o->max_len - o->min_len + 1));
    for (int64_t t = 0; t < e.len; t++) e.src[t] = DIGIT0 + (int32_t)(cr_rng_uniform01(rng) * 10);
    if (!strcmp(o->task, "sort")) {
        memcpy(e.tgt, e.src, (size_t)e.len * sizeof *e.tgt);
        qsort(e.tgt, (size_t)e.len, sizeof *e.tgt, cmp_i32);
    } else {
        for (int64_t t = 0; t < e.len; t++) e.tgt[t] = e.src[e.len - 1 - t];
    }
    return e;
}

/* Encode a batch of sources: the encoder's final states h, c [B, H], taken at
 * each sequence's own end (the lengths argument keeps padding out). */
static void encode(model *m, int64_t B, const example *ex, cr_tensor **h, cr_tensor **c)
{
    const int32_t **seqs = cr_arena_alloc(cr_arena_current(), (size_t)B * sizeof *seqs);
    int64_t *lens = cr_arena_alloc(cr_arena_current(), (size_t)B * sizeof *lens);
    for (int64_t b = 0; b < B; b++) {
        seqs[b] = ex[b].src;
        lens[b] = ex[b].len;
    }
    cr_tensor *src, *len;
    cr_batch_pad_new(B, seqs, lens, PAD, &src, &len);
    cr_rnn_output o = cr_rnn_forward(m->enc, cr_embedding_forward(&m->emb, src), len, NULL, NULL);
    *h = cr_select(o.h_n, 0, 0);
    *c = cr_select(o.c_n, 0, 0);
}

/* Teacher-forced loss of B examples, summed over their targets and divided
 * by `count` (the batch's number of targets, so the shards of a batch add up
 * to its mean). With target y_1..y_L and y_{L+1} = EOS, the decoder reads
 * BOS, y_1, ..., y_L and at step t predicts y_{t+1}:
 *   (h_t, c_t) = LSTM(E[in_t], h_{t-1}, c_{t-1}),  (h_0, c_0) = encoder's final state
 *   loss = -(1/count) sum_{b,t} log softmax(W h_t + b)[y_{t+1}]  over the non-PAD targets */
static cr_tensor *loss_batch(model *m, int64_t B, const example *ex, int64_t count)
{
    int32_t(*din)[65] = cr_arena_alloc(cr_arena_current(), (size_t)B * sizeof *din);
    int32_t(*dout)[65] = cr_arena_alloc(cr_arena_current(), (size_t)B * sizeof *dout);
    const int32_t **in_seqs = cr_arena_alloc(cr_arena_current(), (size_t)B * sizeof *in_seqs);
    const int32_t **out_seqs = cr_arena_alloc(cr_arena_current(), (size_t)B * sizeof *out_seqs);
    int64_t *lens = cr_arena_alloc(cr_arena_current(), (size_t)B * sizeof *lens);
    for (int64_t b = 0; b < B; b++) {
        din[b][0] = BOS;
        memcpy(din[b] + 1, ex[b].tgt, (size_t)ex[b].len * sizeof(int32_t));
        memcpy(dout[b], ex[b].tgt, (size_t)ex[b].len * sizeof(int32_t));
        dout[b][ex[b].len] = EOS;
        in_seqs[b] = din[b];
        out_seqs[b] = dout[b];
        lens[b] = ex[b].len + 1;
    }
    cr_tensor *in_idx, *out_idx, *lengths;
    cr_batch_pad_new(B, in_seqs, lens, PAD, &in_idx, &lengths);
    cr_batch_pad_new(B, out_seqs, lens, PAD, &out_idx, &lengths);
    int64_t T = in_idx->shape[1];

    cr_tensor *h, *c;
    encode(m, B, ex, &h, &c);
    cr_tensor *e = cr_embedding_forward(&m->emb, in_idx); /* [B, T, E] */
    cr_tensor **hs = cr_arena_alloc(cr_arena_current(), (size_t)T * sizeof *hs);
    for (int64_t t = 0; t < T; t++) {
        /* Past a sequence's end the decoder runs on PAD inputs; those steps'
         * targets are PAD, which the loss ignores, so they get no gradient. */
        cr_cell_forward(&m->dec, cr_select(e, 1, t), h, c, &h, &c);
        hs[t] = h;
    }
    cr_tensor *y = cr_reshape(cr_stack((int)T, hs, 1), CR_SHAPE(B * T, m->dec.hidden_size));
    cr_tensor *logits = cr_linear_forward(&m->head, y);
    cr_tensor *ce = cr_cross_entropy(logits, cr_reshape(out_idx, CR_SHAPE(B * T)), PAD, CR_SUM);
    return cr_mul_scalar(ce, 1.0 / (double)count);
}

typedef struct step_ctx {
    model *m;
    const example *batch;
    int64_t B, targets; /* examples and targets (each output and its EOS) in the batch */
} step_ctx;

static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end;
    return loss_batch(c->m, hi - lo, c->batch + lo, c->targets);
}

/* Output tokens (before EOS) equal the target, and EOS was produced. */
static bool exact(const example *e, const int32_t *out, int64_t n, bool ended)
{
    return ended && n == e->len && !memcmp(out, e->tgt, (size_t)n * sizeof *out);
}

/* Greedy decoding of N examples at once: feed back the argmax token. Returns
 * the number decoded exactly; out[b] receives example b's len[b] tokens and
 * ok[b] whether they match. */
static int64_t decode_greedy(model *m, int64_t N, const example *ex, int64_t max_steps, int32_t (*out)[64],
                             int64_t *len, bool *ok)
{
    cr_tensor *h, *c;
    encode(m, N, ex, &h, &c);
    int32_t *tok = cr_xmalloc((size_t)N * sizeof *tok);
    memset(len, 0, (size_t)N * sizeof *len);
    bool *ended = cr_xcalloc((size_t)N, sizeof *ended);
    for (int64_t b = 0; b < N; b++) tok[b] = BOS;
    int64_t n_ended = 0;
    for (int64_t t = 0; t < max_steps && n_ended < N; t++) {
        cr_tensor *x = cr_embedding_forward(&m->emb, cr_from_array(CR_I32, CR_SHAPE(N), tok));
        cr_cell_forward(&m->dec, x, h, c, &h, &c);
        cr_tensor *best = cr_argmax(cr_linear_forward(&m->head, h), 1, false); /* i32 [N] */
        for (int64_t b = 0; b < N; b++) {
            tok[b] = ((const int32_t *)best->data)[b];
            if (ended[b]) continue;
            if (tok[b] == EOS) {
                ended[b] = true;
                n_ended++;
            } else {
                out[b][len[b]++] = tok[b];
            }
        }
    }
    int64_t right = 0;
    for (int64_t b = 0; b < N; b++) {
        ok[b] = exact(&ex[b], out[b], len[b], ended[b]);
        right += ok[b];
    }
    free(tok);
    free(ended);
    return right;
}

/* A beam hypothesis: tokens so far, their total log-probability
 *   score = sum_t log p(y_t | y_<t, x),
 * and whether it has ended (emitted EOS or reached the length limit). */
typedef struct hyp {
    int32_t tok[64];
    int64_t len;
    double score;
    bool done, ended; /* ended: done by EOS */
    int64_t row;      /* this hypothesis's row in the decoder state, if alive */
} hyp;

typedef struct cand {
    double score;
    int64_t from; /* index of the parent hypothesis */
    int32_t tok;  /* appended token, or -1: the (finished) parent carried over */
} cand;

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1; /* best first */
    if (x->from != y->from) return (x->from > y->from) - (x->from < y->from);
    return (x->tok > y->tok) - (x->tok < y->tok); /* a fixed order for ties */
}

/* Beam search for one example: every step, expand each live hypothesis with
 * its K most likely next tokens, carry finished ones over unchanged, and keep
 * the K best candidates by total log-probability. Stop when all K have ended
 * or after max_steps tokens. Scores are plain sums, not length-normalised:
 * the output's length is fixed by the input here and the model predicts EOS
 * confidently, so the usual bias of sums toward short outputs does no harm.
 * The decoder runs once per step on the live hypotheses as a batch; their
 * states are reordered with cr_gather_rows after each selection. */
static bool decode_beam(model *m, const example *ex, int64_t K, int64_t max_steps, int32_t *out,
                        int64_t *out_len)
{
    int64_t V = VOCAB, top = K < V ? K : V;
    hyp *beams = cr_xcalloc((size_t)K, sizeof *beams), *next = cr_xcalloc((size_t)K, sizeof *next);
    cand *cands = cr_xmalloc((size_t)(K + K * top) * sizeof *cands);
    int32_t *rows = cr_xmalloc((size_t)K * sizeof *rows), *toks = cr_xmalloc((size_t)K * sizeof *toks);
    int64_t n_beams = 1;
    beams[0] = (hyp){.row = 0};
    cr_tensor *h, *c;
    encode(m, 1, ex, &h, &c); /* [1, H]: the one live hypothesis */
    for (int64_t step = 0; step < max_steps; step++) {
        /* live hypotheses are rows 0..n_live-1 of h, c, in beam order */
        int64_t n_live = 0;
        for (int64_t k = 0; k < n_beams; k++)
            if (!beams[k].done) toks[n_live++] = beams[k].len ? beams[k].tok[beams[k].len - 1] : BOS;
        if (n_live == 0) break;
        cr_tensor *x = cr_embedding_forward(&m->emb, cr_from_array(CR_I32, CR_SHAPE(n_live), toks));
        cr_cell_forward(&m->dec, x, h, c, &h, &c);
        cr_tensor *logp = cr_log_softmax(cr_linear_forward(&m->head, h), 1); /* [n_live, V] */
        const float *lp = logp->data;
        int64_t n_c = 0;
        for (int64_t k = 0; k < n_beams; k++) {
            const hyp *b = &beams[k];
            if (b->done) {
                cands[n_c++] = (cand){b->score, k, -1};
                continue;
            }
            /* the `top` best tokens of this row, by repeated selection (V is tiny) */
            const float *r = lp + b->row * V;
            bool taken[VOCAB] = {false};
            for (int64_t j = 0; j < top; j++) {
                int32_t arg = -1;
                for (int32_t v = 0; v < V; v++)
                    if (!taken[v] && (arg < 0 || r[v] > r[arg])) arg = v;
                taken[arg] = true;
                cands[n_c++] = (cand){b->score + r[arg], k, arg};
            }
        }
        qsort(cands, (size_t)n_c, sizeof *cands, cmp_cand);
        int64_t n_next = n_c < K ? n_c : K, live = 0;
        for (int64_t j = 0; j < n_next; j++) {
            const cand *cd = &cands[j];
            hyp *nb = &next[j];
            *nb = beams[cd->from];
            nb->score = cd->score;
            if (cd->tok < 0) continue; /* a finished hypothesis, unchanged */
            if (cd->tok == EOS) {
                nb->done = nb->ended = true;
                continue;
            }
            nb->tok[nb->len++] = cd->tok;
            if (nb->len >= max_steps) { /* out of room without an EOS */
                nb->done = true;
                continue;
            }
            rows[live] = (int32_t)beams[cd->from].row; /* the parent's state row */
            nb->row = live++;
        }
        if (live > 0) { /* the survivors' states, in their new order */
            cr_tensor *idx = cr_from_array(CR_I32, CR_SHAPE(live), rows);
            h = cr_gather_rows(h, idx, -1);
            c = cr_gather_rows(c, idx, -1);
        }
        hyp *t = beams;
        beams = next;
        next = t;
        n_beams = n_next;
    }
    /* beams are sorted by score; the best is first */
    const hyp *best = &beams[0];
    memcpy(out, best->tok, (size_t)best->len * sizeof *out);
    *out_len = best->len;
    bool ok = exact(ex, best->tok, best->len, best->ended);
    free(beams);
    free(next);
    free(cands);
    free(rows);
    free(toks);
    return ok;
}

static void print_tokens(const char *label, const int32_t *t, int64_t n)
{
    printf("%s", label);
    for (int64_t i = 0; i < n; i++) putchar(t[i] >= DIGIT0 ? '0' + (t[i] - DIGIT0) : '?');
}

int main(int argc, char **argv)
{
    opts o = parse(argc, argv);
    cli_training *t = &o.t;
    cr_rng *rng = &t->rng, test_rng = cr_rng_seed((uint64_t)t->seed ^ UINT64_C(0x7e57));

    model m = {.ps = cr_params_init()};
    m.emb = cr_embedding_init(m.ps, "s2s.embed", VOCAB, o.embed, PAD, CR_F32, rng);
    m.enc = cr_rnn_init(m.ps, "s2s.enc",
                        (cr_rnn_config){.cell = &cr_cell_lstm,
                                        .input_size = o.embed,
                                        .hidden_size = t->hidden,
                                        .num_layers = 1,
                                        .forget_bias = 1.0,
                                        .dtype = CR_F32},
                        rng);
    m.dec = cr_cell_init(m.ps, "s2s.dec",
                         (cr_cell_config){.cell = &cr_cell_lstm,
                                          .input_size = o.embed,
                                          .hidden_size = t->hidden,
                                          .forget_bias = 1.0,
                                          .dtype = CR_F32},
                         rng);
    m.head = cr_linear_init(m.ps, "s2s.head", t->hidden, VOCAB, true, CR_F32, rng);
    printf("task=%s lengths=%lld..%lld params=%zu\n", o.task, (long long)o.min_len, (long long)o.max_len,
           cr_params_numel(m.ps));

    cli_training_start(t, m.ps);

    example *batch = cr_xmalloc((size_t)t->batch * sizeof *batch);
    step_ctx ctx = {.m = &m, .batch = batch, .B = t->batch};
    progress bar = progress_start(t->steps, "seq");
    double loss_avg = NAN;
    for (int64_t step = 0; step < t->steps; step++) {
        ctx.targets = 0;
        for (int64_t b = 0; b < t->batch; b++) {
            batch[b] = make_example(&o, &t->data);
            ctx.targets += batch[b].len + 1;
        }
        double l = cli_training_step(t, step, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? l : 0.95 * loss_avg + 0.05 * l;
        progress_update(&bar, step + 1, (step + 1) * t->batch, "loss=%.4f lr=%.2e", loss_avg,
                        cr_optim_get_lr(t->opt));
    }
    free(batch);

    /* Held-out sources from another random stream (short ones may also have
     * been drawn in training: there are only 1000 of length 3). */
    int64_t N = o.test, max_steps = o.max_len + 1; /* the longest output and its EOS */
    example *test = cr_xmalloc((size_t)N * sizeof *test);
    for (int64_t i = 0; i < N; i++) test[i] = make_example(&o, &test_rng);
    int32_t(*greedy_out)[64] = cr_xcalloc((size_t)N, sizeof *greedy_out);
    int64_t *greedy_len = cr_xcalloc((size_t)N, sizeof *greedy_len);
    bool *greedy_ok = cr_xcalloc((size_t)N, sizeof *greedy_ok);
    bool old = cr_set_grad_enabled(false);
    int64_t greedy_right = decode_greedy(&m, N, test, max_steps, greedy_out, greedy_len, greedy_ok);
    cr_graph_clear(t->g);
    int64_t beam_right = 0, fixed = 0, broke = 0;
    for (int64_t i = 0; i < N; i++) {
        int32_t out[64];
        int64_t n;
        bool ok = decode_beam(&m, &test[i], o.beam, max_steps, out, &n);
        beam_right += ok;
        cr_graph_clear(t->g); /* one example's beam per graph */
        /* a few examples, and the first few that beam search gets right and greedy wrong */
        if (i < 3 || (ok && !greedy_ok[i] && fixed < 2)) {
            print_tokens("src=", test[i].src, test[i].len);
            print_tokens(" greedy=", greedy_out[i], greedy_len[i]);
            printf(" (%s)", greedy_ok[i] ? "ok" : "wrong");
            print_tokens(" beam=", out, n);
            printf(" (%s)\n", ok ? "ok" : "wrong");
        }
        fixed += ok && !greedy_ok[i];
        broke += !ok && greedy_ok[i];
    }
    cr_set_grad_enabled(old);
    double greedy_acc = (double)greedy_right / (double)N, beam_acc = (double)beam_right / (double)N;
    printf("held-out=%lld greedy_exact=%lld beam_exact=%lld beam_fixed=%lld beam_broke=%lld\n", (long long)N,
           (long long)greedy_right, (long long)beam_right, (long long)fixed, (long long)broke);
    printf("example=seq2seq steps=%lld train_loss=%.4f greedy_acc=%.4f beam_acc=%.4f beam=%lld task=%s\n",
           (long long)t->steps, loss_avg, greedy_acc, beam_acc, (long long)o.beam, o.task);
    bool ok = greedy_acc >= o.threshold;
    if (t->quick && !ok)
        fprintf(stderr, "seq2seq: greedy accuracy %.4f below the threshold %.2f\n", greedy_acc, o.threshold);

    free(test);
    free(greedy_out);
    free(greedy_len);
    free(greedy_ok);
    cli_training_free(t);
    cr_rnn_free(m.enc);
    cr_params_free(m.ps);
    return t->quick && !ok ? 1 : 0;
}
