/* The main demo: a character-level language model (LSTM or GRU) trained with
 * truncated BPTT (Adam, gradient clipping by global norm), then sampled from.
 *
 *   ./build/examples/charlm [--data FILE] [--cell lstm|gru] [--steps N] [--hidden H] ...
 *                           [--save FILE] [--resume FILE] [--stop-at N] [--quick] [--mpi]
 *   mpirun -np 2 ./build/examples/charlm --mpi [same flags]
 *
 * (--help lists every flag with its default.) Training is data-parallel
 * (optim.h's cr_trainer): each batch is split into --shards shards (8 by
 * default), which --threads threads (default: every available core, or
 * OMP_NUM_THREADS) take in turn. The shard count is part of the run and the
 * thread count is not: the same flags give the same weights, and a
 * byte-identical --save checkpoint, on any number of threads. --dropout
 * applies between layers (--layers 2 and up); its masks come from each
 * shard's stream, keyed by the seed, the step and the shard. --mpi trains
 * over the ranks of an mpirun job (the mpi module, cr_mpi.h): the shards are
 * split over the ranks, the gradient is summed across them in the trainer's
 * fixed tree, rank 0 prints and writes the checkpoint, and the result is one
 * process's: `mpirun -np 2 charlm --mpi --save a` and `charlm --save b` write
 * byte-identical files, and a checkpoint resumes on any number of ranks.
 * The default corpus is the GNU
 * GPL text every Debian system ships. The text is encoded in place to one
 * byte per character, so a file costs about 1.1 times its own size in memory
 * (the held-out tenth is copied once); validation reads the first
 * --val-chunks chunks of the held-out text (64 by default, 0 = all of it).
 *
 * --save writes a checkpoint from which --resume continues bit for bit with
 * the same flags (weights, Adam's state, schedule step, RNG, the state carried
 * from chunk to chunk, data position): --stop-at K --save f, then --resume f,
 * gives the checkpoint a single run would have. A --resume file that is
 * missing, malformed or made by another model exits 1 with a one-line reason.
 * The last line is a key=value summary: demo=charlm steps=... train_loss=...
 * val_loss=... bits_per_char=... A failed save exits with status 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "carousel.h"
#include "cli.h"
#ifdef CR_HAVE_MPI
#include "carousel/cr_mpi.h"
#endif

typedef struct opts {
    const char *data, *save, *resume, *cell, *prime, *mode_name;
    int64_t steps, stop_at, hidden, layers, batch, seq, sample, embed, val_chunks, seed, threads, shards;
    double lr, clip, temperature, threshold, dropout;
    bool quick, mpi;
    cr_parallel_mode mode;
} opts;

typedef struct model {
    cr_params *ps;
    cr_embedding emb;
    cr_rnn *lstm;
    cr_linear head;
} model;

#define DEFAULT_PRIME "The "

static opts parse(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.data = "/usr/share/common-licenses/GPL-3",
              .cell = "lstm",
              .prime = DEFAULT_PRIME,
              .steps = quick ? 150 : 1200,
              .hidden = 128,
              .layers = 1,
              .batch = 32,
              .seq = 64,
              .sample = quick ? 100 : 400,
              .embed = 32,
              .lr = 3e-3,
              .clip = 5.0,
              .temperature = 0.8,
              .seed = 42,
              .threads = quick ? 1 : 0,
              .shards = 8,
              .mode_name = "auto",
              .val_chunks = 64,
              .threshold = 3.5,
              .quick = quick};
    cli_flag flags[] = {
        {"--data", CLI_STR, &o.data, "the text to learn (any bytes; one character = one byte)"},
        {"--cell", CLI_STR, &o.cell, "lstm or gru"},
        {"--steps", CLI_INT, &o.steps, "training steps: the learning-rate schedule's length"},
        {"--stop-at", CLI_INT, &o.stop_at,
         "stop after this step (0: at --steps); --save, then --resume goes on"},
        {"--hidden", CLI_INT, &o.hidden, "hidden units per layer"},
        {"--layers", CLI_INT, &o.layers, "stacked recurrent layers"},
        {"--embed", CLI_INT, &o.embed, "character embedding size"},
        {"--batch", CLI_INT, &o.batch, "streams per batch (B)"},
        {"--seq", CLI_INT, &o.seq, "characters per truncated-BPTT chunk (T)"},
        {"--lr", CLI_REAL, &o.lr, "Adam's peak learning rate (warmup, then cosine to lr/10)"},
        {"--clip", CLI_REAL, &o.clip, "clip the gradient's global norm to this"},
        {"--seed", CLI_INT, &o.seed, "seed of the weights, dropout and sampling"},
        {"--dropout", CLI_REAL, &o.dropout, "dropout between layers (--layers 2 and up)"},
        {"--threads", CLI_INT, &o.threads, "threads (0: OMP_NUM_THREADS, else every core)"},
        {"--shards", CLI_INT, &o.shards, "shards per batch: part of the run, not of the thread count"},
        {"--mode", CLI_STR, &o.mode_name,
         "auto, replicas (threads take shards) or intra-op (threaded kernels)"},
        {"--mpi", CLI_BOOL, &o.mpi,
         "train over the ranks of an mpirun job (rank 0 prints and saves; threads 0: a machine's cores shared by its ranks)"},
        {"--sample", CLI_INT, &o.sample, "characters to sample after training"},
        {"--prime", CLI_STR, &o.prime, "the sample starts with this text"},
        {"--temperature", CLI_REAL, &o.temperature, "sampling temperature (lower: safer choices)"},
        {"--save", CLI_STR, &o.save, "write a checkpoint here after training"},
        {"--resume", CLI_STR, &o.resume, "continue bit for bit from a checkpoint --save wrote (same flags)"},
        {"--val-chunks", CLI_INT, &o.val_chunks, "validation chunks of 4 x T characters (0: all)"},
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails above this many validation bits per char"},
        {"--quick", CLI_BOOL, &o.quick, "a short run (150 steps, one thread) that exits 1 unless it learned"},
    };
    cli_parse(argc, argv,
              "A character-level language model (LSTM or GRU) trained with truncated BPTT, then sampled.",
              "The last line is a summary:\n"
              "  demo=charlm steps=... train_loss=... val_loss=... bits_per_char=...\n"
              "A failed --save, or a --resume file that is missing, malformed or made by\n"
              "another model, exits 1 with the reason.",
              flags, CLI_COUNT(flags));
    if (strcmp(o.cell, "lstm") && strcmp(o.cell, "gru"))
        cli_fail(argv[0], "--cell: '%s' is neither lstm nor gru", o.cell);
    if (!strcmp(o.mode_name, "auto"))
        o.mode = CR_PARALLEL_AUTO;
    else if (!strcmp(o.mode_name, "replicas"))
        o.mode = CR_PARALLEL_REPLICAS;
    else if (!strcmp(o.mode_name, "intra-op"))
        o.mode = CR_PARALLEL_INTRA_OP;
    else
        cli_fail(argv[0], "--mode: '%s' is none of auto, replicas, intra-op", o.mode_name);
    if (o.steps < 1 || o.stop_at < 0 || o.stop_at > o.steps || o.hidden < 1 || o.layers < 1 || o.embed < 1 ||
        o.batch < 1 || o.seq < 1 || o.sample < 0 || o.val_chunks < 0 || o.threads < 0 || o.threads > 1024 ||
        o.shards < 1 || o.shards > 4096 || !(o.dropout >= 0 && o.dropout < 1) || !(o.lr > 0) ||
        !(o.clip > 0) || !(o.temperature > 0))
        cli_fail(argv[0], "a size or rate out of range");
    if (o.stop_at == 0) o.stop_at = o.steps;
    return o;
}

/* Hold out every tenth block of 500 characters (the sixth of each ten), so
 * that validation text comes from all over the file, unseen but of the same
 * kind: the last tenth of the GPL, say, is its all-capitals disclaimer and an
 * appendix, like nothing before it. The held-out blocks move to the end in
 * order: ids[0, n_train) is the training stream and ids[n_train, n) the
 * held-out one. Returns n_train (n when the text is too short to split). */
static int64_t hold_out(uint8_t *ids, int64_t n)
{
    int64_t block = n / 10 < 500 ? n / 10 : 500, n_val = 0, n_train = 0;
    if (block < 1) return n;
    for (int64_t k = 5, lo; (lo = k * block) < n; k += 10) n_val += lo + block <= n ? block : n - lo;
    uint8_t *val = cr_xmalloc((size_t)n_val);
    for (int64_t k = 0, lo = 0, v = 0; lo < n; k++, lo += block) {
        int64_t len = lo + block <= n ? block : n - lo;
        if (k % 10 == 5) {
            memcpy(val + v, ids + lo, (size_t)len);
            v += len;
        } else { /* to an address at or below lo: memmove */
            memmove(ids + n_train, ids + lo, (size_t)len);
            n_train += len;
        }
    }
    memcpy(ids + n_train, val, (size_t)n_val);
    free(val);
    return n_train;
}

/* logits [B*T, V] for x [B, T], starting from the carried state (h, c); the
 * final state goes to out. The caller carries it (cr_state_carry) only after
 * backward, which still reads h and c: dW_hh needs the chunk's h_0. */
static cr_tensor *forward(model *m, const cr_tensor *x, cr_tensor *h, cr_tensor *c, cr_rnn_output *out)
{
    cr_tensor *e = cr_embedding_forward(&m->emb, x); /* [B, T, E] */
    *out = cr_rnn_forward(m->lstm, e, NULL, h, c);
    int64_t H = m->lstm->cfg.hidden_size;
    return cr_linear_forward(&m->head, cr_reshape(out->y, CR_SHAPE(-1, H)));
}

/* values only: the next chunk starts from a constant */
static void carry(cr_tensor *h, cr_tensor *c, const cr_rnn_output *o)
{
    cr_state_carry(h, o->h_n);
    if (c) cr_state_carry(c, o->c_n);
}

/* The cell state tensor: [L, B, H] for an LSTM, NULL for a one-state cell. */
static cr_tensor *cell_state_init(const model *m, int64_t B)
{
    const cr_rnn_config *cfg = &m->lstm->cfg;
    return cfg->cell->n_states > 1 ? cr_tensor_init(CR_F32, CR_SHAPE(cfg->num_layers, B, cfg->hidden_size))
                                   : NULL;
}

/* One training step's shards: shard s reads rows [begin, end) of the batch
 * (x, y) and of the carried state (h, c), all persistent, and keeps its final
 * state for after_backward, which carries it once every shard's backward has
 * read the old one. */
typedef struct batch {
    model *m;
    cr_tensor *x, *y, *h, *c; /* [B, T] ids and targets; [L, B, H] carried state (c: NULL for a GRU) */
    cr_rnn_output *out;       /* [shards] each shard's output */
} batch;

static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    batch *b = ctx;
    int64_t rows = s->end - s->begin;
    cr_tensor *h = cr_narrow(b->h, 1, s->begin, rows), *c = b->c ? cr_narrow(b->c, 1, s->begin, rows) : NULL;
    cr_tensor *x = cr_narrow(b->x, 0, s->begin, rows),
              *y = cr_reshape(cr_narrow(b->y, 0, s->begin, rows), CR_SHAPE(-1));
    cr_tensor *loss = cr_cross_entropy(forward(b->m, x, h, c, &b->out[s->index]), y, -1, CR_MEAN);
    return cr_mul_scalar(loss, s->weight); /* its share of the batch mean */
}

static void shard_carry(void *ctx, const cr_shard *s)
{
    batch *b = ctx;
    int64_t rows = s->end - s->begin;
    cr_copy_(cr_narrow(b->h, 1, s->begin, rows), b->out[s->index].h_n);
    if (b->c) cr_copy_(cr_narrow(b->c, 1, s->begin, rows), b->out[s->index].c_n);
}

/* Mean cross-entropy (nats per char) over the first max_chunks chunks of the
 * held-out stream (0: all of them). */
static double evaluate(model *m, const uint8_t *ids, int64_t n, int64_t B, int64_t T, int64_t max_chunks,
                       cr_graph *g)
{
    int64_t L = m->lstm->cfg.num_layers, H = m->lstm->cfg.hidden_size;
    int64_t chunks = cr_stream_chunks(n, B, T);
    if (max_chunks > 0 && chunks > max_chunks) chunks = max_chunks;
    if (chunks == 0) return NAN;
    cr_tensor *h = cr_tensor_init(CR_F32, CR_SHAPE(L, B, H)), *c = cell_state_init(m, B);
    cr_tensor *x = cr_tensor_init(CR_I32, CR_SHAPE(B, T)), *y = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
    bool old = cr_set_grad_enabled(false);
    double total = 0;
    for (int64_t k = 0; k < chunks; k++) {
        cr_stream_chunk_u8(x, y, ids, n, k);
        cr_rnn_output out;
        cr_tensor *logits = forward(m, x, h, c, &out);
        total += cr_item(cr_cross_entropy(logits, cr_reshape(y, CR_SHAPE(-1)), -1, CR_MEAN));
        carry(h, c, &out);
        cr_graph_clear(g);
    }
    cr_set_grad_enabled(old);
    cr_tensor_free(h);
    cr_tensor_free(c);
    cr_tensor_free(x);
    cr_tensor_free(y);
    return total / (double)chunks;
}

/* Feed the prime (printed as it goes in), then sample n characters, each fed
 * back as the next input. */
static void sample(model *m, const cr_vocab *v, const int32_t *prime, int64_t n_prime, int64_t n,
                   double temperature, cr_rng *rng, cr_graph *g)
{
    int64_t L = m->lstm->cfg.num_layers, H = m->lstm->cfg.hidden_size, V = cr_vocab_size(v);
    cr_tensor *h = cr_tensor_init(CR_F32, CR_SHAPE(L, 1, H)), *c = cell_state_init(m, 1);
    cr_tensor *x = cr_tensor_init(CR_I32, CR_SHAPE(1, 1));
    bool old = cr_set_grad_enabled(false);
    int32_t cur = prime[0];
    for (int64_t i = 0;; i++) {
        size_t len;
        const char *tok = cr_vocab_token(v, cur, &len);
        fwrite(tok, 1, len, stdout);
        if (i + 1 == n_prime + n) break;
        ((int32_t *)x->data)[0] = cur;
        cr_rnn_output out;
        cr_tensor *p = cr_softmax(cr_mul_scalar(forward(m, x, h, c, &out), 1.0 / temperature), -1);
        carry(h, c, &out);
        if (i + 1 < n_prime) {
            cur = prime[i + 1];
        } else {
            double u = cr_rng_uniform01(rng), acc = 0;
            cur = (int32_t)(V - 1);
            for (int64_t k = 0; k < V; k++) {
                acc += cr_get_flat(p, k);
                if (u < acc) {
                    cur = (int32_t)k;
                    break;
                }
            }
        }
        cr_graph_clear(g);
    }
    putchar('\n');
    cr_set_grad_enabled(old);
    cr_tensor_free(h);
    cr_tensor_free(c);
    cr_tensor_free(x);
}

/* ---- stopping and resuming ------------------------------------------------------------------ */

/* What --save stores beside the weights, Adam's state, the step and the RNG
 * (cr_checkpoint_save_extra): the state carried from chunk to chunk, the
 * running loss, and metadata a resumed run must agree with. The data
 * position is the step (chunk k = step mod chunks), given the same text and
 * --batch/--seq. */
#define RUN_H CR_ST_OPTIM_PREFIX "charlm.h"         /* F32 [L, B, H] */
#define RUN_C CR_ST_OPTIM_PREFIX "charlm.c"         /* F32 [L, B, H], LSTM only */
#define RUN_STATS CR_ST_OPTIM_PREFIX "charlm.stats" /* F64 [2]: running loss, skipped steps */

typedef struct run {
    cr_tensor *h, *c; /* carried state */
    double stats[2];  /* running train loss, skipped steps */
    int64_t chars;    /* characters of the whole text */
} run;

static cr_st_entry state_entry(const char *name, const cr_tensor *t)
{
    cr_st_entry e = {.name = name,
                     .dtype = t->dtype,
                     .ndim = t->ndim,
                     .data = t->data,
                     .nbytes = (size_t)cr_numel(t) * sizeof(float)};
    for (int d = 0; d < t->ndim; d++) e.shape[d] = t->shape[d];
    return e;
}

static cr_status save_run(const opts *o, const model *m, const cr_optim *opt, int64_t step, const cr_rng *rng,
                          const cr_vocab *vocab, const run *r)
{
    char seq[32], chars[32];
    snprintf(seq, sizeof seq, "%lld", (long long)o->seq);
    snprintf(chars, sizeof chars, "%lld", (long long)r->chars);
    const char *meta[] = {"charlm.cell", o->cell, "charlm.seq", seq, "charlm.chars", chars};
    cr_st_entry extra[3] = {state_entry(RUN_H, r->h),
                            {.name = RUN_STATS,
                             .dtype = CR_F64,
                             .ndim = 1,
                             .shape = {2},
                             .data = r->stats,
                             .nbytes = sizeof r->stats}};
    size_t n_extra = 2;
    if (r->c) extra[n_extra++] = state_entry(RUN_C, r->c);
    return cr_checkpoint_save_extra(o->save, m->ps, opt, step, rng, vocab, extra, n_extra, meta, 3);
}

/* The carried-state tensor `name` of f into t, if it has t's dtype and shape. */
static bool load_state(const cr_st_file *f, const char *name, cr_tensor *t, const char *path)
{
    const cr_st_entry *e = cr_st_find(f, name);
    if (!e) {
        fprintf(stderr, "charlm: --resume %s: no tensor %s (not a checkpoint charlm's --save wrote)\n", path,
                name);
        return false;
    }
    bool same = e->dtype == t->dtype && e->ndim == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = e->shape[d] == t->shape[d];
    if (!same) {
        fprintf(
            stderr,
            "charlm: --resume %s: %s is not F32 [%lld, %lld, %lld] (--layers, --batch, --hidden of this run)\n",
            path, name, (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2]);
        return false;
    }
    memcpy(t->data, e->data, e->nbytes);
    cr_tensor_bump_version(t);
    return true;
}

static bool same_vocab(const cr_vocab *a, const cr_vocab *b)
{
    if (cr_vocab_size(a) != cr_vocab_size(b)) return false;
    for (int64_t i = 0; i < cr_vocab_size(a); i++) {
        size_t la, lb;
        const char *ta = cr_vocab_token(a, (int32_t)i, &la), *tb = cr_vocab_token(b, (int32_t)i, &lb);
        if (la != lb || memcmp(ta, tb, la)) return false;
    }
    return true;
}

/* Restore a run from o->resume into the model, optimizer, RNG and run state
 * built from this run's flags; *step gets the steps already taken. Every
 * refusal is one line on stderr naming the reason. */
static bool resume_run(const opts *o, model *m, cr_optim *opt, cr_rng *rng, const cr_vocab *vocab, run *r,
                       int64_t *step)
{
    const char *path = o->resume;
    cr_st_file *f = NULL;
    cr_vocab *saved = NULL;
    bool ok = false;
    if (cr_st_read(path, &f) != CR_OK) {
        fprintf(stderr, "charlm: --resume: %s\n", cr_last_error());
        goto done;
    }
    const char *cell = cr_st_meta_get(f, "charlm.cell"), *seq = cr_st_meta_get(f, "charlm.seq"),
               *chars = cr_st_meta_get(f, "charlm.chars");
    if (!cell || !seq || !chars) {
        fprintf(stderr,
                "charlm: --resume %s: no charlm.cell, charlm.seq or charlm.chars metadata (not a checkpoint "
                "charlm's --save wrote)\n",
                path);
        goto done;
    }
    if (strcmp(cell, o->cell)) { /* a name from the file is printed only if it is one we know */
        bool known = !strcmp(cell, "lstm") || !strcmp(cell, "gru");
        fprintf(stderr, "charlm: --resume %s: trained with --cell %s, this run has --cell %s\n", path,
                known ? cell : "(unknown)", o->cell);
        goto done;
    }
    char seq_now[32], chars_now[32];
    snprintf(seq_now, sizeof seq_now, "%lld", (long long)o->seq);
    snprintf(chars_now, sizeof chars_now, "%lld", (long long)r->chars);
    if (strcmp(seq, seq_now)) {
        fprintf(stderr, "charlm: --resume %s: trained with another --seq than %s\n", path, seq_now);
        goto done;
    }
    if (strcmp(chars, chars_now)) {
        fprintf(stderr,
                "charlm: --resume %s: trained on a text of another length than --data %s (%s chars)\n", path,
                o->data, chars_now);
        goto done;
    }
    const cr_st_entry *st = cr_st_find(f, RUN_STATS);
    if (!st || st->dtype != CR_F64 || st->ndim != 1 || st->shape[0] != 2) {
        fprintf(stderr, "charlm: --resume %s: no F64 [2] tensor %s\n", path, RUN_STATS);
        goto done;
    }
    /* Weights, Adam's moments and step counts, the step, the RNG, the
     * vocabulary: validated whole before anything is written. */
    if (cr_checkpoint_load(path, m->ps, opt, step, rng, &saved) != CR_OK) {
        fprintf(stderr, "charlm: --resume: %s\n", cr_last_error());
        goto done;
    }
    if (!same_vocab(saved, vocab)) {
        fprintf(stderr, "charlm: --resume %s: trained on another alphabet than --data %s\n", path, o->data);
        goto done;
    }
    if (*step < 0 || *step > o->steps) {
        fprintf(stderr, "charlm: --resume %s: saved at step %lld, outside this run's --steps %lld\n", path,
                (long long)*step, (long long)o->steps);
        goto done;
    }
    if (!load_state(f, RUN_H, r->h, path) || (r->c && !load_state(f, RUN_C, r->c, path))) goto done;
    memcpy(r->stats, st->data, sizeof r->stats);
    ok = true;
done:
    cr_vocab_free(saved);
    cr_st_file_free(f);
    return ok;
}

/* A failure after MPI_Init: the other ranks may be waiting in a step, so the
 * whole job goes (MPI_Abort prints which rank ended it). */
static int fail(const opts *o, int rc)
{
#ifdef CR_HAVE_MPI
    if (o->mpi) MPI_Abort(MPI_COMM_WORLD, rc);
#endif
    (void)o;
    return rc;
}

int main(int argc, char **argv)
{
    opts o = parse(argc, argv);
    int rank = 0, ranks = 1;
#ifdef CR_HAVE_MPI
    if (o.mpi) {
        MPI_Init(&argc, &argv);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &ranks);
        /* rank 0 speaks for the job; every rank still reports its errors */
        if (rank != 0 && !freopen("/dev/null", "w", stdout)) return fail(&o, 1);
    }
#else
    if (o.mpi) cli_fail(argv[0], "--mpi: this build has no MPI (meson option mpi; Debian: libopenmpi-dev)");
#endif
    if (!o.mpi && o.threads == 0) o.threads = cr_get_num_threads(); /* OMP_NUM_THREADS, else every core */
    if (o.threads > 0)
        cr_set_num_threads((int)o.threads); /* over MPI, 0: a machine's cores shared by its ranks */
    char *text;
    size_t len;
    if (cr_read_file(o.data, &text, &len) != CR_OK) {
        fprintf(stderr, "charlm: %s\n", cr_last_error());
        return fail(&o, 1);
    }
    cr_vocab *vocab = cr_vocab_init_chars(text, len);
    int64_t n = (int64_t)len, V = cr_vocab_size(vocab);
    /* One id byte per character, in place: the text itself is not needed again. */
    uint8_t *ids = (uint8_t *)text;
    if (cr_vocab_encode_bytes(vocab, text, len, ids) != CR_OK) {
        fprintf(stderr, "charlm: %s\n", cr_last_error());
        cr_vocab_free(vocab);
        free(text);
        return fail(&o, 1);
    }
    int64_t n_train = hold_out(ids, n), n_val = n - n_train;
    printf("data=%s chars=%lld vocab=%lld train=%lld val=%lld\n", o.data, (long long)n, (long long)V,
           (long long)n_train, (long long)n_val);
    if (cr_stream_chunks(n_train, o.batch, o.seq) < 1) {
        fprintf(stderr, "charlm: %s is too short for batch %lld x seq %lld\n", o.data, (long long)o.batch,
                (long long)o.seq);
        cr_vocab_free(vocab);
        free(text);
        return fail(&o, 1);
    }

    /* The prime's ids. A text without the default prime's letters starts
     * from its own first character instead. */
    int64_t n_prime = (int64_t)strlen(o.prime);
    int32_t *prime = cr_xcalloc((size_t)n_prime + 1, sizeof *prime);
    for (int64_t i = 0; i < n_prime; i++) {
        prime[i] = cr_vocab_id(vocab, o.prime + i, 1);
        if (prime[i] >= 0) continue;
        if (strcmp(o.prime, DEFAULT_PRIME))
            cli_fail(argv[0], "--prime: the byte 0x%02x does not occur in %s", (uint8_t)o.prime[i], o.data);
        n_prime = 0;
    }
    if (n_prime == 0) {
        prime[0] = ids[0];
        n_prime = 1;
    }

    cr_rng rng = cr_rng_seed((uint64_t)o.seed);
    const cr_cell_type *cell = cr_cell_builtin(o.cell);
    model m = {.ps = cr_params_init()};
    m.emb = cr_embedding_init(m.ps, "charlm.embed", V, o.embed, -1, CR_F32, &rng);
    char prefix[32]; /* charlm.lstm.l0.w_ih, charlm.gru.l0.w_ih: another cell's file has other names */
    snprintf(prefix, sizeof prefix, "charlm.%s", o.cell);
    m.lstm = cr_rnn_init(m.ps, prefix,
                         (cr_rnn_config){.cell = cell,
                                         .input_size = o.embed,
                                         .hidden_size = o.hidden,
                                         .num_layers = (int)o.layers,
                                         .dropout = o.dropout,
                                         .forget_bias = cell == &cr_cell_lstm,
                                         .dtype = CR_F32},
                         &rng);
    m.head = cr_linear_init(m.ps, "charlm.head", o.hidden, V, true, CR_F32, &rng);
    cr_trainer_config tcfg = {
        .shards = (int)o.shards, .threads = (int)o.threads, .mode = o.mode, .seed = (uint64_t)o.seed};
    cr_trainer *tr;
#ifdef CR_HAVE_MPI
    cr_mpi_trainer *mt = NULL;
    if (o.mpi) { /* the shards split over the ranks; the same result as one process */
        if (cr_mpi_trainer_init(MPI_COMM_WORLD, m.ps, tcfg, &mt) != CR_OK) {
            fprintf(stderr, "charlm: %s\n", cr_last_error());
            return fail(&o, 1);
        }
        tr = cr_mpi_trainer_local(mt);
    } else
#endif
        tr = cr_trainer_init(m.ps, tcfg);
    printf("cell=%s params=%zu bytes=%zu threads=%d shards=%lld mode=%s ranks=%d\n", o.cell,
           cr_params_numel(m.ps), cr_params_bytes(m.ps), cr_trainer_threads(tr), (long long)o.shards,
           cr_parallel_mode_name(cr_trainer_mode(tr)), ranks);

    cr_optim *opt = cr_adam_init(m.ps, cr_adam_defaults(o.lr));
    cr_schedule sched = cr_schedule_warmup_cosine(o.lr, o.steps / 20, o.steps, o.lr / 10);
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    int64_t B = o.batch, T = o.seq, L = o.layers, H = o.hidden;
    cr_tensor *h = cr_tensor_init(CR_F32, CR_SHAPE(L, B, H)), *c = cell_state_init(&m, B);
    cr_tensor *x = cr_tensor_init(CR_I32, CR_SHAPE(B, T)), *y = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
    int64_t chunks = cr_stream_chunks(n_train, B, T);
    batch bt = {.m = &m, .x = x, .y = y, .h = h, .c = c, .out = cr_xcalloc((size_t)o.shards, sizeof *bt.out)};
    cr_task task = {.rows = B, .loss = shard_loss, .after_backward = shard_carry, .ctx = &bt};
    run r = {.h = h, .c = c, .stats = {NAN, 0}, .chars = n};
    int64_t first = 0; /* steps already taken */
    int rc = 0;
    if (o.resume) {
        /* every rank reads the file (it must be readable on every machine) */
        bool ok = resume_run(&o, &m, opt, &rng, vocab, &r, &first);
        if (ok && first > o.stop_at) {
            fprintf(stderr, "charlm: --resume %s: saved at step %lld, beyond --stop-at %lld\n", o.resume,
                    (long long)first, (long long)o.stop_at);
            ok = false;
        }
#ifdef CR_HAVE_MPI
        if (mt) { /* all ranks resumed, or all stop */
            int mine = ok, all = 0;
            MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
            ok = all;
        }
#endif
        if (!ok) {
            rc = 1;
            goto done;
        }
        cr_trainer_set_steps(tr, first); /* keys the shards' dropout streams */
        printf("resumed=%s step=%lld\n", o.resume, (long long)first);
    }
    double loss_avg = r.stats[0];
    int64_t skipped = (int64_t)r.stats[1];
    progress bar = progress_start(o.stop_at - first, "tok");
    for (int64_t step = first; step < o.stop_at; step++) {
        int64_t k = step % chunks;
        if (k == 0) { /* a new pass over the stream starts from a zero state */
            cr_fill(h, 0);
            if (c) cr_fill(c, 0);
        }
        cr_stream_chunk_u8(x, y, ids, n_train, k);
        cr_schedule_apply(&sched, opt, step);
        double l, norm;
        /* forward and backward of every shard, the tree sum (over ranks too),
         * clipping, Adam; each shard's state is carried after every backward */
        cr_status st;
#ifdef CR_HAVE_MPI
        if (mt)
            st = cr_mpi_trainer_step(mt, &task, opt, o.clip, &l, &norm);
        else
#endif
            st = cr_trainer_step(tr, &task, opt, o.clip, &l, &norm);
        if (st == CR_NONFINITE) {
            skipped++;
        } else if (st != CR_OK) { /* ranks out of step, or MPI failed */
            fprintf(stderr, "charlm: rank %d: %s\n", rank, cr_last_error());
            return fail(&o, 1);
        }
        loss_avg = isnan(loss_avg) ? l : 0.95 * loss_avg + 0.05 * l;
        progress_update(&bar, step + 1 - first, (step + 1 - first) * B * T, "loss=%.4f lr=%.2e", loss_avg,
                        cr_optim_get_lr(opt));
    }
    double train_s = progress_elapsed(&bar);
    r.stats[0] = loss_avg;
    r.stats[1] = (double)skipped;
    double val = rank == 0 ? evaluate(&m, ids + n_train, n_val, 4, T, o.val_chunks, g) : NAN;
    printf("val_loss=%.4f bits_per_char=%.3f\n", val, val / log(2.0));

    if (o.save) {
        cr_status st;
#ifdef CR_HAVE_MPI
        if (mt) { /* the carried state's rows from the ranks that ran them; then rank 0 writes */
            st = cr_mpi_trainer_share_rows(mt, h, 1);
            if (st == CR_OK && c) st = cr_mpi_trainer_share_rows(mt, c, 1);
            if (st != CR_OK) {
                fprintf(stderr, "charlm: rank %d: %s\n", rank, cr_last_error());
                return fail(&o, 1);
            }
            st = cr_mpi_share_status(mt,
                                     rank == 0 ? save_run(&o, &m, opt, o.stop_at, &rng, vocab, &r) : CR_OK);
        } else
#endif
            st = save_run(&o, &m, opt, o.stop_at, &rng, vocab, &r);
        if (st != CR_OK) {
            fprintf(stderr, "charlm: %s\n", cr_last_error());
            rc = 1;
        } else {
            printf("saved=%s\n", o.save);
        }
    }
    printf("--- sample (temperature %.2f) ---\n", o.temperature);
    if (o.sample > 0 && rank == 0) sample(&m, vocab, prime, n_prime, o.sample, o.temperature, &rng, g);
    int64_t ran = o.stop_at - first;
    printf("demo=charlm steps=%lld train_loss=%.4f val_loss=%.4f bits_per_char=%.3f skipped_steps=%lld "
           "ms_per_step=%.1f cell=%s\n",
           (long long)o.stop_at, loss_avg, val, val / log(2.0), (long long)skipped,
           ran ? 1e3 * train_s / (double)ran : 0.0, o.cell);
    if (o.quick && rank == 0 && !(val / log(2.0) <= o.threshold)) {
        fprintf(stderr, "charlm: %.3f bits per char on validation, above the threshold %.2f\n",
                val / log(2.0), o.threshold);
        rc = 1;
    }

done:
    cr_tensor_free(h);
    cr_tensor_free(c);
    cr_tensor_free(x);
    cr_tensor_free(y);
    free(bt.out);
#ifdef CR_HAVE_MPI
    if (mt) {
        cr_mpi_trainer_free(mt); /* and its trainer */
        tr = NULL;
    }
#endif
    cr_trainer_free(tr);
    cr_graph_use(NULL);
    cr_graph_free(g);
    cr_optim_free(opt);
    cr_rnn_free(m.lstm);
    cr_params_free(m.ps);
    cr_vocab_free(vocab);
    free(prime);
    free(text);
#ifdef CR_HAVE_MPI
    if (o.mpi) MPI_Finalize();
#endif
    return rc;
}
