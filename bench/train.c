/* bench/lstm_train, bench/gru_train and bench/dynet: whole training steps of
 * recurrent models, carousel against PyTorch (bench/train_torch.py) on the same
 * weights and data, the two sides taking turns in the same invocation.
 *
 *   lstm_train / gru_train: the char-level LM step of issue 12 (embedding 64,
 *     one LSTM or GRU layer of hidden H, linear to 65 classes, batch B, 64 steps,
 *     mean cross-entropy, backward, clip at norm 5, Adam lr 1e-3), with its
 *     GFLOP/s and its share of a BLIS sgemm measured in the same run.
 *   dynet: the DyNet benchmark suite's CPU workloads, on synthetic data of the
 *     same shapes: an LSTM LM (embedding 128, hidden 256, vocabulary 10000,
 *     mini-batches of 64/16/4/1 sentences) and a BiLSTM tagger (word embedding
 *     128, hidden 50 per direction, MLP 32, 45 tags, one sentence per update),
 *     without and with a character BiLSTM (embedding 20, hidden 64 per
 *     direction) for the rare words; SGD lr 0.1.
 *
 * Options: --hidden H[,..] --batch B[,..] --threads T[,..] --reps N --rounds R
 * --quick --no-torch --no-fused (the cells' composed steps) --only NAME
 * --mode auto|replicas|intra-op --shards S (the char LM on several threads:
 * through cr_trainer in its auto mode by default, one shard per thread).
 * The suite is chosen at build time (CR_TRAIN_SUITE). See bench/README.md. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <blis.h>

#include "args.h"
#include "carousel.h"
#include "peer.h"

#ifndef CR_TRAIN_SUITE
#define CR_TRAIN_SUITE 1 /* 1 lstm_train, 2 gru_train, 3 dynet */
#endif

#define MAX_LIST 16
#define MAX_SAMPLES 1024
#define MAX_BATCHES 8

typedef enum { W_CHARLM, W_LM, W_TAGGER } workload;

/* One configuration: a workload, its sizes and the thread count. */
typedef struct config {
    workload kind;
    const cr_cell_type *cell; /* the recurrent cell (char LM: LSTM or GRU) */
    int64_t H, B;             /* hidden, batch (sentences per update) */
    int threads;
    bool chars; /* tagger: character BiLSTM for rare words */
} config;

typedef struct opts {
    int reps, rounds;
    bool torch, quick, fused;
    const char *only;
    const char *mode; /* char LM on several threads: auto, replicas or intra-op */
    int shards;       /* its shards (0: one per thread) */
    int64_t hidden[MAX_LIST], batch[MAX_LIST], threads[MAX_LIST];
    int n_hidden, n_batch, n_threads;
} opts;

/* ---- sizes of the workloads ---------------------------------------------------- */

enum {
    CHARLM_E = 64,
    CHARLM_V = 65,
    CHARLM_T = 64, /* issue 12's step */
    LM_E = 128,
    LM_H = 256,
    LM_V = 10000,
    LM_K = 4, /* DyNet rnnlm-batch */
    TAG_E = 128,
    TAG_H = 50,
    TAG_MLP = 32,
    TAG_TAGS = 45, /* DyNet bilstm-tagger */
    TAG_VW = 20000,
    TAG_CE = 20,
    TAG_CV = 80,
    TAG_CH = 64, /* chars: embedding, alphabet, hidden */
    TAG_K = 8,   /* sentences per timed unit */
};
/* Sentence lengths of a unit's batches (LM) or sentences (tagger): PTB/WSJ
 * sentences average about 24 words. */
static const int64_t lm_len[LM_K] = {12, 20, 28, 36};
static const int64_t tag_len[TAG_K] = {12, 20, 28, 36, 16, 24, 32, 40};

/* ---- the carousel side ------------------------------------------------------------ */

typedef struct model {
    config cf;
    cr_params *ps;
    cr_embedding emb, cemb;
    cr_rnn *rnn, *crnn;
    cr_linear head, mlp;
    cr_optim *opt;
    cr_graph *g;
    cr_trainer *tr;                 /* char LM on several threads: the step runs through it */
    int shards;                     /* the trainer's (1 without one) */
    int cur;                        /* the batch the trainer's shards read */
    int n_batches;                  /* optimizer updates per timed unit */
    int64_t len[MAX_BATCHES];       /* time steps of each */
    cr_tensor *in[MAX_BATCHES];     /* tokens [B, T] i32 */
    cr_tensor *tgt[MAX_BATCHES];    /* targets [B*T] i32 */
    cr_tensor **chars[MAX_BATCHES]; /* tagger with chars: per word, its characters [1, n] (rare) or NULL */
    double tokens;                  /* tokens per unit */
} model;

static void fill_ids(cr_tensor *t, cr_rng *rng, int64_t n)
{
    int32_t *p = t->data;
    for (int64_t k = 0; k < cr_numel(t); k++)
        p[k] = (int32_t)(cr_rng_uniform01(rng) * (double)n) % (int32_t)n;
}

/* The trainer that runs the char LM's step on several threads, in the mode
 * the options ask for: auto (cr_trainer's choice for the model's size, which
 * is how a user trains on several threads), replicas, or none (intra-op:
 * one batch, threads inside the products and kernels, also the 1-thread
 * step). One shard per thread unless --shards; none when the batch has fewer
 * rows than shards. */
static cr_trainer *trainer_for(const opts *o, const config *cf, cr_params *ps, int *shards)
{
    *shards = 1;
    if (cf->kind != W_CHARLM || cf->threads < 2 || !strcmp(o->mode, "intra-op")) return NULL;
    int s = o->shards ? o->shards : cf->threads;
    if (cf->B < s) return NULL;
    *shards = s;
    cr_parallel_mode mode = !strcmp(o->mode, "replicas") ? CR_PARALLEL_REPLICAS : CR_PARALLEL_AUTO;
    return cr_trainer_init(ps, (cr_trainer_config){.shards = s, .threads = cf->threads, .mode = mode});
}

static model model_make(const opts *o, const config *cf)
{
    bool fused = o->fused;
    model m = {.cf = *cf};
    cr_rng rng = cr_rng_seed(1234);
    m.ps = cr_params_init();
    const cr_dtype f = CR_F32;
    if (cf->kind == W_CHARLM || cf->kind == W_LM) {
        int64_t E = cf->kind == W_LM ? LM_E : CHARLM_E, V = cf->kind == W_LM ? LM_V : CHARLM_V;
        m.emb = cr_embedding_init(m.ps, "emb", V, E, -1, f, &rng);
        cr_rnn_config rc = {
            .cell = cf->cell, .input_size = E, .hidden_size = cf->H, .num_layers = 1, .dtype = f};
        m.rnn = cr_rnn_init(m.ps, "rnn", rc, &rng);
        m.head = cr_linear_init(m.ps, "head", cf->H, V, true, f, &rng);
        m.n_batches = cf->kind == W_LM ? LM_K : 1;
        for (int k = 0; k < m.n_batches; k++) {
            m.len[k] = cf->kind == W_LM ? lm_len[k] : CHARLM_T;
            m.in[k] = cr_tensor_init(CR_I32, CR_SHAPE(cf->B, m.len[k]));
            m.tgt[k] = cr_tensor_init(CR_I32, CR_SHAPE(cf->B * m.len[k]));
            fill_ids(m.in[k], &rng, V);
            fill_ids(m.tgt[k], &rng, V);
            m.tokens += (double)(cf->B * m.len[k]);
        }
    } else {
        m.emb = cr_embedding_init(m.ps, "emb", TAG_VW, TAG_E, -1, f, &rng);
        cr_rnn_config rc = {.cell = cf->cell,
                            .input_size = TAG_E,
                            .hidden_size = TAG_H,
                            .num_layers = 1,
                            .bidirectional = true,
                            .dtype = f};
        m.rnn = cr_rnn_init(m.ps, "rnn", rc, &rng);
        m.mlp = cr_linear_init(m.ps, "mlp", 2 * TAG_H, TAG_MLP, true, f, &rng);
        m.head = cr_linear_init(m.ps, "head", TAG_MLP, TAG_TAGS, true, f, &rng);
        if (cf->chars) {
            m.cemb = cr_embedding_init(m.ps, "cemb", TAG_CV, TAG_CE, -1, f, &rng);
            cr_rnn_config cc = {.cell = cf->cell,
                                .input_size = TAG_CE,
                                .hidden_size = TAG_CH,
                                .num_layers = 1,
                                .bidirectional = true,
                                .dtype = f};
            m.crnn = cr_rnn_init(m.ps, "crnn", cc, &rng);
        }
        m.n_batches = TAG_K;
        for (int k = 0; k < m.n_batches; k++) {
            int64_t L = m.len[k] = tag_len[k];
            m.in[k] = cr_tensor_init(CR_I32, CR_SHAPE(1, L));
            m.tgt[k] = cr_tensor_init(CR_I32, CR_SHAPE(L));
            fill_ids(m.in[k], &rng, TAG_VW);
            fill_ids(m.tgt[k], &rng, TAG_TAGS);
            m.tokens += (double)L;
            if (!cf->chars) continue;
            m.chars[k] = cr_xcalloc((size_t)L, sizeof *m.chars[k]);
            for (int64_t j = 0; j < L; j++) {
                if (((int32_t *)m.in[k]->data)[j] % 4 != 0) continue; /* a quarter of the words are rare */
                int64_t n = 2 + (int64_t)(cr_rng_uniform01(&rng) * 10);
                m.chars[k][j] = cr_tensor_init(CR_I32, CR_SHAPE(1, n));
                fill_ids(m.chars[k][j], &rng, TAG_CV);
            }
        }
    }
    m.rnn->fused = fused;
    if (m.crnn) m.crnn->fused = fused;
    /* Adam for the char LM (issue 12); plain SGD for the DyNet suite, whose
     * dense update of a 10000- or 20000-row embedding would otherwise be most
     * of a small step on both sides. */
    m.opt = cf->kind == W_CHARLM ? cr_adam_init(m.ps, cr_adam_defaults(1e-3))
                                 : cr_sgd_init(m.ps, cr_sgd_defaults(0.1));
    m.g = cr_graph_init();
    m.tr = trainer_for(o, cf, m.ps, &m.shards);
    return m;
}

static void model_free(model *m)
{
    for (int k = 0; k < m->n_batches; k++) {
        cr_tensor_free(m->in[k]);
        cr_tensor_free(m->tgt[k]);
        if (!m->chars[k]) continue;
        for (int64_t j = 0; j < m->len[k]; j++) cr_tensor_free(m->chars[k][j]);
        free(m->chars[k]);
    }
    cr_trainer_free(m->tr);
    cr_optim_free(m->opt);
    cr_graph_free(m->g);
    cr_rnn_free(m->rnn);
    cr_rnn_free(m->crnn);
    cr_params_free(m->ps);
}

/* The tagger's word vectors [1, L, E]: a lookup per word, or for a rare word
 * the final states of the character BiLSTM, both directions ([2,1,64] ->
 * [1,128]). */
static cr_tensor *tagger_words(model *m, int k)
{
    int64_t L = m->len[k];
    if (!m->cf.chars) return cr_embedding_forward(&m->emb, m->in[k]);
    cr_tensor **v = cr_arena_alloc(cr_arena_current(), (size_t)L * sizeof *v);
    for (int64_t j = 0; j < L; j++) {
        if (m->chars[k][j]) {
            cr_rnn_output o =
                cr_rnn_forward(m->crnn, cr_embedding_forward(&m->cemb, m->chars[k][j]), NULL, NULL, NULL);
            v[j] = cr_reshape(o.h_n, CR_SHAPE(1, 2 * TAG_CH));
        } else {
            v[j] = cr_embedding_forward(&m->emb, cr_narrow(m->in[k], 1, j, 1)); /* [1, 1, E] */
            v[j] = cr_reshape(v[j], CR_SHAPE(1, TAG_E));
        }
    }
    return cr_stack((int)L, v, 1);
}

/* The char LM's loss on a shard's rows of batch m->cur, weighted by the
 * shard's share (the trainer sums the shards). */
static cr_tensor *charlm_shard_loss(void *ctx, const cr_shard *s)
{
    model *m = ctx;
    int64_t rows = s->end - s->begin, T = m->len[m->cur];
    cr_tensor *x = cr_narrow(m->in[m->cur], 0, s->begin, rows),
              *y = cr_narrow(m->tgt[m->cur], 0, s->begin * T, rows * T);
    cr_rnn_output o = cr_rnn_forward(m->rnn, cr_embedding_forward(&m->emb, x), NULL, NULL, NULL);
    cr_tensor *logits = cr_linear_forward(&m->head, o.y);
    cr_tensor *loss =
        cr_cross_entropy(cr_reshape(logits, CR_SHAPE(-1, m->head.weight->shape[0])), y, -1, CR_MEAN);
    return cr_mul_scalar(loss, s->weight);
}

/* One update on batch k: forward, loss, backward, clip (char LM), Adam. */
static double batch_step(model *m, int k, double *grad_norm)
{
    if (m->tr) { /* the same, over the trainer's shards on its threads */
        double loss = NAN, norm = NAN;
        m->cur = k;
        cr_task task = {.rows = m->cf.B, .loss = charlm_shard_loss, .ctx = m};
        cr_status st = cr_trainer_step(m->tr, &task, m->opt, 5.0, &loss, &norm);
        if (st != CR_OK && st != CR_NONFINITE) {
            fprintf(stderr, "bench: cr_trainer_step: %s\n", cr_last_error());
            exit(1);
        }
        if (grad_norm) *grad_norm = norm;
        return loss;
    }
    cr_graph *prev = cr_graph_use(m->g);
    cr_optim_zero_grad(m->opt);
    cr_tensor *loss;
    if (m->cf.kind == W_TAGGER) {
        cr_rnn_output o = cr_rnn_forward(m->rnn, tagger_words(m, k), NULL, NULL, NULL); /* [1, L, 2H] */
        cr_tensor *r = cr_linear_forward(&m->head, cr_tanh(cr_linear_forward(&m->mlp, o.y)));
        loss = cr_cross_entropy(cr_reshape(r, CR_SHAPE(-1, TAG_TAGS)), m->tgt[k], -1, CR_SUM);
    } else {
        cr_rnn_output o = cr_rnn_forward(m->rnn, cr_embedding_forward(&m->emb, m->in[k]), NULL, NULL, NULL);
        cr_tensor *logits = cr_linear_forward(&m->head, o.y); /* [B, T, V] */
        loss = cr_cross_entropy(cr_reshape(logits, CR_SHAPE(-1, m->head.weight->shape[0])), m->tgt[k], -1,
                                CR_MEAN);
    }
    double value = cr_item(loss);
    cr_backward(loss);
    double norm = NAN;
    if (m->cf.kind == W_CHARLM)
        cr_clip_grad_norm(m->ps, 5.0, &norm);
    else if (grad_norm)
        norm = cr_grad_norm(m->ps);
    if (grad_norm) *grad_norm = norm;
    cr_optim_step(m->opt);
    cr_graph_clear(m->g);
    cr_graph_use(prev);
    return value;
}

static void unit_step(model *m)
{
    for (int k = 0; k < m->n_batches; k++) batch_step(m, k, NULL);
}

static void unit_call(void *m) { unit_step(m); }

/* Every parameter by its name, then the data as data.in.K, data.tgt.K and
 * data.chars.K.J, in one safetensors file the peer reads. */
static bool write_file(const model *m, const char *path)
{
    size_t n_max = m->ps->n + 2 * MAX_BATCHES + (size_t)MAX_BATCHES * 64, n = 0;
    cr_st_entry *e = cr_xcalloc(n_max, sizeof *e);
    char(*names)[48] = cr_xcalloc(n_max, sizeof *names);
    for (size_t k = 0; k < m->ps->n; k++) {
        const cr_tensor *t = m->ps->items[k].value;
        e[n] = (cr_st_entry){.name = m->ps->items[k].name,
                             .dtype = t->dtype,
                             .ndim = t->ndim,
                             .data = t->data,
                             .nbytes = (size_t)cr_numel(t) * cr_dtype_size(t->dtype)};
        memcpy(e[n].shape, t->shape, sizeof t->shape);
        n++;
    }
    for (int k = 0; k < m->n_batches; k++)
        for (int64_t j = -2; j < (m->chars[k] ? m->len[k] : 0); j++) {
            const cr_tensor *t = j == -2 ? m->in[k] : j == -1 ? m->tgt[k] : m->chars[k][j];
            if (!t) continue;
            if (j < 0)
                snprintf(names[n], sizeof names[n], "data.%s.%d", j == -2 ? "in" : "tgt", k);
            else
                snprintf(names[n], sizeof names[n], "data.chars.%d.%lld", k, (long long)j);
            e[n] = (cr_st_entry){.name = names[n],
                                 .dtype = t->dtype,
                                 .ndim = t->ndim,
                                 .data = t->data,
                                 .nbytes = (size_t)cr_numel(t) * cr_dtype_size(t->dtype)};
            memcpy(e[n].shape, t->shape, sizeof t->shape);
            n++;
        }
    bool ok = cr_st_write(path, e, n, NULL, 0) == CR_OK;
    if (!ok) printf("torch: cannot write %s: %s\n", path, cr_last_error());
    free(names);
    free(e);
    return ok;
}

/* ---- the PyTorch peer, one process per configuration --------------------------------- */

static const char *workload_name(workload w)
{
    return w == W_CHARLM ? "charlm" : w == W_LM ? "lm" : "tagger";
}

/* Start the peer on the file and wait for its "ready" line (after its warm-up; bench/peer.h). */
static bench_peer peer_start(const config *cf, const char *path)
{
    char a[4][32];
    snprintf(a[0], 32, "%lld", (long long)cf->H);
    snprintf(a[1], 32, "%lld", (long long)cf->B);
    snprintf(a[2], 32, "%d", cf->threads);
    snprintf(a[3], 32, "%d", cf->chars);
    const char *args[] = {"--file",  path,           "--workload", workload_name(cf->kind),
                          "--cell",  cf->cell->name, "--hidden",   a[0],
                          "--batch", a[1],           "--threads",  a[2],
                          "--chars", a[3],           NULL};
    return bench_peer_start(
        (bench_peer_config){.script = "train_torch.py", .args = args, .threads = cf->threads});
}

/* ---- BLIS's sgemm peak, measured in the same run ---------------------------------- */

/* The operands of the 2048^3 product, made once for the whole run. */
enum { PEAK_N = 2048 };
static float *peak_a, *peak_b, *peak_c;

/* Best GFLOP/s of a 2048^3 sgemm over reps calls (after one untimed call,
 * which warms the packing buffers and caches the step cooled) on the
 * current thread count. */
static double blis_peak(int reps)
{
    const dim_t n = PEAK_N;
    if (!peak_a) {
        peak_a = cr_xmalloc((size_t)(n * n) * sizeof *peak_a);
        peak_b = cr_xmalloc((size_t)(n * n) * sizeof *peak_b);
        peak_c = cr_xmalloc((size_t)(n * n) * sizeof *peak_c);
        for (dim_t k = 0; k < n * n; k++) {
            peak_a[k] = (float)(k % 7) * 0.1f;
            peak_b[k] = (float)(k % 5) * 0.1f;
            peak_c[k] = 0;
        }
    }
    float one = 1, zero = 0;
    double best = INFINITY;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = bench_now_ms();
        bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, n, n, n, &one, peak_a, n, 1, peak_b, n, 1, &zero,
                  peak_c, n, 1);
        double t = bench_now_ms() - t0;
        if (r > 0 && t < best) best = t;
    }
    return 2.0 * (double)n * (double)n * (double)n / (best * 1e6);
}

static void blis_peak_free(void)
{
    free(peak_a);
    free(peak_b);
    free(peak_c);
    peak_a = peak_b = peak_c = NULL;
}

/* ---- one configuration ------------------------------------------------------------- */

typedef struct result {
    config cf;
    double c[3], t[3]; /* ms per unit: min, median, max (t: nan without the peer) */
    double tokens, gflop;
    double share[3];  /* the step's GFLOP/s over BLIS's in the same round: min, median, max over rounds */
    double blis_best; /* BLIS's best GFLOP/s in any round */
    const char *mode; /* char LM: how its threads were used */
    int shards;
    double c_loss0, c_loss1, c_gnorm0, t_loss0, t_loss1, t_gnorm0;
} result;

/* min, median (the mean of the middle two for an even count), max of the samples */
static void spread(const bench_samples *v, double *out)
{
    bench_stats s = bench_spread(v->v, v->n); /* sorts */
    int n = v->n;
    out[0] = s.min;
    out[1] = n % 2 || n == 0 ? s.med : 0.5 * (v->v[n / 2 - 1] + v->v[n / 2]);
    out[2] = s.max;
}

/* The char LM step's flops: gates 2*B*T*(E+H)*G and head 2*B*T*H*V, times 3
 * for backward (issue 12's count). */
static double charlm_gflop(const config *cf)
{
    double B = (double)cf->B, T = CHARLM_T, H = (double)cf->H;
    double G = (double)cr_cell_proj_width(cf->cell, cf->H, CHARLM_E);
    return 3.0 * (2 * B * T * (CHARLM_E + H) * G + 2 * B * T * H * CHARLM_V) * 1e-9;
}

static result measure(const opts *o, const config *cf)
{
    result r = {.cf = *cf, .t_loss0 = NAN, .t_loss1 = NAN, .t_gnorm0 = NAN};
    cr_set_num_threads(cf->threads);
    model m = model_make(o, cf);
    r.tokens = m.tokens;
    r.mode = m.tr ? cr_parallel_mode_name(cr_trainer_mode(m.tr)) : "intra-op";
    r.shards = m.shards;
    bench_peer p = BENCH_PEER_NONE;
    bool started = false;
    if (o->torch) {
        char path[] = "/tmp/cr_bench_train_XXXXXX";
        int fd = mkstemp(path);
        if (fd >= 0) {
            close(fd);
            if (write_file(&m, path)) {
                p = peer_start(cf, path);
                started = p.ok;
            }
            unlink(path);
        }
    }
    /* Warm-up as the peer's: the first batch (loss0 and the gradient norm
     * before clipping), the next one after that update (loss1), one unit. */
    r.c_loss0 = batch_step(&m, 0, &r.c_gnorm0);
    r.c_loss1 = batch_step(&m, 1 % m.n_batches, NULL);
    unit_step(&m);
    if (p.ok) {
        r.t_loss0 = bench_field(p.ready, "loss0");
        r.t_loss1 = bench_field(p.ready, "loss1");
        r.t_gnorm0 = bench_field(p.ready, "gnorm0");
    }
    /* The char LM's share of BLIS's peak is taken round by round: BLIS's
     * product right after the round's turns, against the step's median in
     * that round, so that both sides of the share ran under the same load
     * (a shared machine's load changes within a run, and a peak taken once
     * in a quiet moment against steps taken in a busy one reads low, or
     * high the other way round). */
    static double tc[MAX_SAMPLES], tt[MAX_SAMPLES], sh[MAX_SAMPLES];
    bench_samples sc = BENCH_SAMPLES(tc), st = BENCH_SAMPLES(tt), ss = BENCH_SAMPLES(sh);
    if (cf->kind == W_CHARLM) r.gflop = charlm_gflop(cf);
    for (int round = 0; round < o->rounds; round++) {
        int n0 = sc.n;
        bench_turn(round, o->reps, unit_call, &m, &sc, &p, &st);
        if (cf->kind != W_CHARLM || sc.n == n0 || ss.n == ss.cap) continue;
        bench_settle(); /* as before a turn: the peer's spinning threads stop first */
        double peak = blis_peak(2), med[3];
        r.blis_best = fmax(r.blis_best, peak);
        bench_samples this_round = {.v = tc + n0, .n = sc.n - n0, .cap = sc.n - n0};
        spread(&this_round, med); /* sorts the round's samples in place: only their spread is read */
        ss.v[ss.n++] = r.gflop / (med[1] * 1e-3) / peak;
    }
    if (started && !p.ok) printf("torch: peer failed, no timings\n");
    bench_peer_stop(&p);
    spread(&sc, r.c);
    spread(&st, r.t);
    if (ss.n)
        spread(&ss, r.share);
    else
        r.share[0] = r.share[1] = r.share[2] = NAN;
    model_free(&m);
    return r;
}

/* ---- the suites ----------------------------------------------------------------- */

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--hidden H[,H..]] [--batch B[,B..]] [--threads T[,T..]] [--reps N] [--rounds R]\n"
            "          [--quick] [--no-torch] [--no-fused] [--only charlm|lm|tagger]\n"
            "          [--mode auto|replicas|intra-op] [--shards S]\n",
            prog);
    exit(2);
}

static opts parse(int argc, char **argv)
{
    opts o = {.reps = 3, .rounds = 4, .torch = true, .fused = true, .mode = "auto"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-torch"))
            o.torch = false;
        else if (!strcmp(a, "--quick"))
            o.quick = true;
        else if (!strcmp(a, "--no-fused"))
            o.fused = false;
        else {
            const char *v = i + 1 < argc ? argv[++i] : NULL;
            if (!v) usage(argv[0]);
            if (!strcmp(a, "--hidden")) {
                o.n_hidden = 0; /* a repeated flag replaces the list */
                if (!bench_list(v, o.hidden, &o.n_hidden, MAX_LIST)) usage(argv[0]);
            } else if (!strcmp(a, "--batch")) {
                o.n_batch = 0;
                if (!bench_list(v, o.batch, &o.n_batch, MAX_LIST)) usage(argv[0]);
            } else if (!strcmp(a, "--threads")) {
                o.n_threads = 0;
                if (!bench_list(v, o.threads, &o.n_threads, MAX_LIST)) usage(argv[0]);
            } else if (!strcmp(a, "--mode") &&
                       (!strcmp(v, "auto") || !strcmp(v, "replicas") || !strcmp(v, "intra-op")))
                o.mode = v;
            else if (!strcmp(a, "--shards"))
                o.shards = atoi(v);
            else if (!strcmp(a, "--reps"))
                o.reps = atoi(v);
            else if (!strcmp(a, "--rounds"))
                o.rounds = atoi(v);
            else if (!strcmp(a, "--only"))
                o.only = v;
            else
                usage(argv[0]);
        }
    }
    if (getenv("CR_BENCH_QUICK") && *getenv("CR_BENCH_QUICK") && strcmp(getenv("CR_BENCH_QUICK"), "0"))
        o.quick = true;
    if (o.quick) {
        o.reps = 1;
        o.rounds = 3;
    }
    if (o.reps < 1 || o.rounds < 1 || o.shards < 0) usage(argv[0]);
    return o;
}

static bool listed(const int64_t *list, int n, int64_t v)
{
    if (n == 0) return true;
    for (int k = 0; k < n; k++)
        if (list[k] == v) return true;
    return false;
}

/* The suite's configurations that pass the --hidden/--batch/--threads filters. */
static int suite(const opts *o, config *out)
{
    int n = 0;
#if CR_TRAIN_SUITE == 3
    for (int t = 0; t < (o->n_threads ? o->n_threads : 1); t++) {
        int th = o->n_threads ? (int)o->threads[t] : 1;
        static const int64_t mbs[] = {64, 16, 4, 1};
        for (int k = 0; k < 4; k++)
            if (listed(o->batch, o->n_batch, mbs[k]) && (!o->only || !strcmp(o->only, "lm")))
                out[n++] = (config){W_LM, &cr_cell_lstm, LM_H, mbs[k], th, false};
        for (int c = 0; c < 2; c++)
            if (!o->only || !strcmp(o->only, "tagger"))
                out[n++] = (config){W_TAGGER, &cr_cell_lstm, TAG_H, 1, th, c};
    }
#else
    const cr_cell_type *cell = CR_TRAIN_SUITE == 2 ? &cr_cell_gru : &cr_cell_lstm;
    static const int64_t hb[][2] = {{128, 32}, {512, 32}, {1024, 32}, {32, 1}};
    for (int k = 0; k < 4; k++)
        for (int t = 1; t <= 2; t++) {
            if (!listed(o->hidden, o->n_hidden, hb[k][0]) || !listed(o->batch, o->n_batch, hb[k][1]) ||
                !listed(o->threads, o->n_threads, t))
                continue;
            out[n++] = (config){W_CHARLM, cell, hb[k][0], hb[k][1], t, false};
        }
    for (int h = 0; h < o->n_hidden; h++) /* sizes outside the list, when asked for */
        for (int b = 0; b < (o->n_batch ? o->n_batch : 1); b++)
            for (int t = 0; t < (o->n_threads ? o->n_threads : 2); t++) {
                int64_t H = o->hidden[h], B = o->n_batch ? o->batch[b] : 32;
                int th = o->n_threads ? (int)o->threads[t] : t + 1;
                bool known = false;
                for (int k = 0; k < 4; k++) /* a listed hidden size runs its listed batch unless --batch */
                    known |= hb[k][0] == H && (hb[k][1] == B || o->n_batch == 0);
                if (!known) out[n++] = (config){W_CHARLM, cell, H, B, th, false};
            }
#endif
    return n;
}

static const char *bench_name(const config *cf)
{
    if (cf->kind == W_CHARLM) return cf->cell == &cr_cell_gru ? "gru_train" : "lstm_train";
    return cf->kind == W_LM ? "dynet_lm" : cf->chars ? "dynet_tagger_chars" : "dynet_tagger";
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    const opts o = parse(argc, argv);
    config cfs[64];
    int n = suite(&o, cfs);
    cr_set_num_threads(1); /* initialises BLIS (after carousel chose its kernels) */
    printf(
        "%s: %d configuration(s), %d rounds x %d unit(s) per side, the sides taking turns%s; BLIS %s '%s'\n",
        CR_TRAIN_SUITE == 3   ? "dynet"
        : CR_TRAIN_SUITE == 2 ? "gru_train"
                              : "lstm_train",
        n, o.rounds, o.reps, o.fused ? "" : ", composed cell steps (--no-fused)", bli_info_get_version_str(),
        bli_arch_string(bli_arch_query_id()));
    printf("%-20s %6s %5s %3s %27s %27s %7s %9s %17s %9s  %s\n", "bench", "hidden", "batch", "thr",
           "carousel ms min/med/max", "torch ms min/med/max", "ratio", "GFLOP/s", "of BLIS med (min-max)",
           "BLIS best", "loss0 c/torch, |g|0 c/torch");
    static result res[64];
    double worst = 0;
    for (int k = 0; k < n; k++) {
        result r = res[k] = measure(&o, &cfs[k]);
        double gf = r.gflop / (r.c[1] * 1e-3);
        printf(
            "%-20s %6lld %5lld %3d %8.2f %8.2f %9.2f %8.2f %8.2f %9.2f %7.3f %9.1f %5.1f%% (%3.0f-%3.0f%%) %9.1f  %.6f "
            "%.6f %.5f %.5f\n",
            bench_name(&r.cf), (long long)r.cf.H, (long long)r.cf.B, r.cf.threads, r.c[0], r.c[1], r.c[2],
            r.t[0], r.t[1], r.t[2], r.t[1] / r.c[1], r.gflop > 0 ? gf : NAN, 100 * r.share[1],
            100 * r.share[0], 100 * r.share[2], r.blis_best, r.c_loss0, r.t_loss0, r.c_gnorm0, r.t_gnorm0);
        const double c[] = {r.c_loss0, r.c_loss1, r.c_gnorm0}, t[] = {r.t_loss0, r.t_loss1, r.t_gnorm0};
        for (int j = 0; j < 3; j++)
            if (!isnan(t[j])) worst = fmax(worst, fabs(c[j] - t[j]) / fmax(fabs(t[j]), 1e-30));
    }
    blis_peak_free();
    printf("\nagreement: largest relative difference of loss0, loss1, |grad|0 (carousel vs torch): %.2e\n\n",
           worst);
    for (int k = 0; k < n; k++) {
        const result *r = &res[k];
        double tok = r->tokens / (r->c[1] * 1e-3), ttok = r->tokens / (r->t[1] * 1e-3);
        if (r->cf.kind == W_CHARLM) {
            double gf = r->gflop / (r->c[1] * 1e-3);
            printf(
                "bench=%s hidden=%lld batch=%lld threads=%d tokens_per_s=%.0f torch_tokens_per_s=%.0f ratio=%.3f "
                "gflops=%.1f blis_peak_share=%.3f mode=%s shards=%d\n",
                bench_name(&r->cf), (long long)r->cf.H, (long long)r->cf.B, r->cf.threads, tok, ttok,
                tok / ttok, gf, r->share[1], r->mode, r->shards);
        } else {
            printf("bench=%s hidden=%lld batch=%lld threads=%d tokens_per_s=%.0f torch_tokens_per_s=%.0f "
                   "ratio=%.3f\n",
                   bench_name(&r->cf), (long long)r->cf.H, (long long)r->cf.B, r->cf.threads, tok, ttok,
                   tok / ttok);
        }
    }
    return 0;
}
