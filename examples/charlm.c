/* The main demo: a character-level LSTM language model trained with truncated
 * BPTT (Adam, gradient clipping by global norm), then sampled from.
 *
 *   ./build/examples/charlm [--data FILE] [--steps N] [--hidden H] [--layers L]
 *                           [--batch B] [--seq T] [--lr LR] [--clip C] [--seed S]
 *                           [--threads N] [--sample N] [--temperature X] [--save FILE]
 *                           [--val-chunks N]
 *
 * The default corpus is the GNU GPL text every Debian system ships. The text
 * is encoded in place to one byte per character, so a file costs about its
 * own size in memory; validation reads the first --val-chunks chunks of the
 * held-out tenth (64 by default, 0 = all of it). The last line is a key=value
 * summary: demo=charlm steps=... train_loss=... val_loss=... A failed save
 * exits with status 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "carousel.h"
#include "cli.h"

typedef struct opts {
    const char *data, *save;
    int64_t steps, hidden, layers, batch, seq, sample, embed, val_chunks;
    double lr, clip, temperature;
    uint64_t seed;
    int threads;
} opts;

typedef struct model {
    cr_params *ps;
    cr_embedding emb;
    cr_rnn *lstm;
    cr_linear head;
} model;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--data FILE] [--steps N] [--hidden H] [--layers L] [--embed E] [--batch B]\n"
            "          [--seq T] [--lr LR] [--clip C] [--seed S] [--threads N] [--sample N]\n"
            "          [--temperature X] [--save FILE] [--val-chunks N]\n",
            prog);
    exit(2);
}

static opts parse(int argc, char **argv)
{
    opts o = {.data = "/usr/share/common-licenses/GPL-3", .steps = 400, .hidden = 128, .layers = 1,
              .batch = 32, .seq = 64, .sample = 400, .embed = 32, .lr = 3e-3, .clip = 5.0,
              .temperature = 0.8, .seed = 42, .threads = 0, .val_chunks = 64};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage(argv[0]);
        if (!v) usage(argv[0]);
        i++;
        if (!strcmp(a, "--data")) o.data = v;
        else if (!strcmp(a, "--save")) o.save = v;
        else if (!strcmp(a, "--steps")) o.steps = parse_int(argv[0], v);
        else if (!strcmp(a, "--hidden")) o.hidden = parse_int(argv[0], v);
        else if (!strcmp(a, "--layers")) o.layers = parse_int(argv[0], v);
        else if (!strcmp(a, "--embed")) o.embed = parse_int(argv[0], v);
        else if (!strcmp(a, "--batch")) o.batch = parse_int(argv[0], v);
        else if (!strcmp(a, "--seq")) o.seq = parse_int(argv[0], v);
        else if (!strcmp(a, "--sample")) o.sample = parse_int(argv[0], v);
        else if (!strcmp(a, "--lr")) o.lr = parse_real(argv[0], v);
        else if (!strcmp(a, "--clip")) o.clip = parse_real(argv[0], v);
        else if (!strcmp(a, "--temperature")) o.temperature = parse_real(argv[0], v);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)parse_int(argv[0], v);
        else if (!strcmp(a, "--threads")) o.threads = (int)parse_int(argv[0], v);
        else if (!strcmp(a, "--val-chunks")) o.val_chunks = parse_int(argv[0], v);
        else usage(argv[0]);
    }
    if (o.steps < 1 || o.hidden < 1 || o.layers < 1 || o.embed < 1 || o.batch < 1 || o.seq < 1 || o.sample < 0 ||
        o.val_chunks < 0 || !(o.lr > 0) || !(o.temperature > 0)) {
        fprintf(stderr, "charlm: option out of range\n");
        exit(2);
    }
    return o;
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
    cr_state_carry(c, o->c_n);
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
    cr_tensor *h = cr_tensor_init(CR_F32, CR_SHAPE(L, B, H)), *c = cr_tensor_init(CR_F32, CR_SHAPE(L, B, H));
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

static void sample(model *m, const cr_vocab *v, int32_t first, int64_t n, double temperature, cr_rng *rng, cr_graph *g)
{
    int64_t L = m->lstm->cfg.num_layers, H = m->lstm->cfg.hidden_size, V = cr_vocab_size(v);
    cr_tensor *h = cr_tensor_init(CR_F32, CR_SHAPE(L, 1, H)), *c = cr_tensor_init(CR_F32, CR_SHAPE(L, 1, H));
    cr_tensor *x = cr_tensor_init(CR_I32, CR_SHAPE(1, 1));
    bool old = cr_set_grad_enabled(false);
    int32_t cur = first;
    for (int64_t i = 0; i < n; i++) {
        ((int32_t *)x->data)[0] = cur;
        cr_rnn_output out;
        cr_tensor *p = cr_softmax(cr_mul_scalar(forward(m, x, h, c, &out), 1.0 / temperature), -1);
        carry(h, c, &out);
        double u = cr_rng_uniform01(rng), acc = 0;
        cur = (int32_t)(V - 1);
        for (int64_t k = 0; k < V; k++) {
            acc += cr_get_flat(p, k);
            if (u < acc) {
                cur = (int32_t)k;
                break;
            }
        }
        size_t len;
        const char *tok = cr_vocab_token(v, cur, &len);
        fwrite(tok, 1, len, stdout);
        cr_graph_clear(g);
    }
    putchar('\n');
    cr_set_grad_enabled(old);
    cr_tensor_free(h);
    cr_tensor_free(c);
    cr_tensor_free(x);
}

int main(int argc, char **argv)
{
    opts o = parse(argc, argv);
    if (o.threads > 0) cr_set_num_threads(o.threads);
    char *text;
    size_t len;
    if (cr_read_file(o.data, &text, &len) != CR_OK) {
        fprintf(stderr, "charlm: %s\n", cr_last_error());
        return 1;
    }
    cr_vocab *vocab = cr_vocab_init_chars(text, len);
    int64_t n = (int64_t)len, V = cr_vocab_size(vocab);
    /* One id byte per character, in place: the text itself is not needed again. */
    uint8_t *ids = (uint8_t *)text;
    if (cr_vocab_encode_bytes(vocab, text, len, ids) != CR_OK) {
        fprintf(stderr, "charlm: %s\n", cr_last_error());
        return 1;
    }
    int64_t n_train = n * 9 / 10, n_val = n - n_train;
    printf("data=%s chars=%lld vocab=%lld train=%lld val=%lld\n", o.data, (long long)n, (long long)V,
           (long long)n_train, (long long)n_val);
    if (cr_stream_chunks(n_train, o.batch, o.seq) < 1) {
        fprintf(stderr, "charlm: %s is too short for batch %lld x seq %lld\n", o.data, (long long)o.batch,
                (long long)o.seq);
        return 1;
    }

    cr_rng rng = cr_rng_seed(o.seed);
    model m = {.ps = cr_params_init()};
    m.emb = cr_embedding_init(m.ps, "charlm.embed", V, o.embed, -1, CR_F32, &rng);
    m.lstm = cr_rnn_init(m.ps, "charlm.lstm",
                         (cr_rnn_config){.cell = &cr_cell_lstm, .input_size = o.embed, .hidden_size = o.hidden,
                                         .num_layers = (int)o.layers, .forget_bias = 1.0, .dtype = CR_F32},
                         &rng);
    m.head = cr_linear_init(m.ps, "charlm.head", o.hidden, V, true, CR_F32, &rng);
    printf("params=%zu bytes=%zu threads=%d\n", cr_params_numel(m.ps), cr_params_bytes(m.ps), cr_get_num_threads());

    cr_optim *opt = cr_adam_init(m.ps, cr_adam_defaults(o.lr));
    cr_schedule sched = cr_schedule_warmup_cosine(o.lr, o.steps / 20, o.steps, o.lr / 10);
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    int64_t B = o.batch, T = o.seq, L = o.layers, H = o.hidden;
    cr_tensor *h = cr_tensor_init(CR_F32, CR_SHAPE(L, B, H)), *c = cr_tensor_init(CR_F32, CR_SHAPE(L, B, H));
    cr_tensor *x = cr_tensor_init(CR_I32, CR_SHAPE(B, T)), *y = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
    int64_t chunks = cr_stream_chunks(n_train, B, T);
    double t0 = now_s(), loss_avg = NAN;
    int64_t skipped = 0;
    for (int64_t step = 0; step < o.steps; step++) {
        int64_t k = step % chunks;
        if (k == 0) { /* a new pass over the stream starts from a zero state */
            cr_fill(h, 0);
            cr_fill(c, 0);
        }
        cr_stream_chunk_u8(x, y, ids, n_train, k);
        cr_schedule_apply(&sched, opt, step);
        cr_rnn_output out;
        cr_tensor *loss = cr_cross_entropy(forward(&m, x, h, c, &out), cr_reshape(y, CR_SHAPE(-1)), -1, CR_MEAN);
        cr_optim_zero_grad(opt);
        cr_backward(loss);
        double norm;
        if (cr_clip_grad_norm(m.ps, o.clip, &norm) == CR_OK)
            cr_optim_step(opt);
        else
            skipped++;
        carry(h, c, &out); /* after backward, before the clear */
        double l = cr_item(loss);
        loss_avg = isnan(loss_avg) ? l : 0.95 * loss_avg + 0.05 * l;
        cr_graph_clear(g);
        if ((step + 1) % 50 == 0 || step + 1 == o.steps)
            printf("step=%lld loss=%.4f lr=%.2e grad_norm=%.3f ms_per_step=%.1f\n", (long long)(step + 1), loss_avg,
                   cr_optim_get_lr(opt), norm, 1e3 * (now_s() - t0) / (double)(step + 1));
        fflush(stdout);
    }
    double train_s = now_s() - t0;
    double val = evaluate(&m, ids + n_train, n_val, 4, T, o.val_chunks, g);
    printf("val_loss=%.4f bits_per_char=%.3f\n", val, val / log(2.0));

    int rc = 0;
    if (o.save) {
        if (cr_checkpoint_save(o.save, m.ps, opt, o.steps, &rng, vocab, NULL, 0) != CR_OK) {
            fprintf(stderr, "charlm: %s\n", cr_last_error());
            rc = 1;
        } else {
            printf("saved=%s\n", o.save);
        }
    }
    printf("--- sample (temperature %.2f) ---\n", o.temperature);
    sample(&m, vocab, ids[0], o.sample, o.temperature, &rng, g);
    printf("demo=charlm steps=%lld train_loss=%.4f val_loss=%.4f bits_per_char=%.3f skipped_steps=%lld "
           "ms_per_step=%.1f\n",
           (long long)o.steps, loss_avg, val, val / log(2.0), (long long)skipped,
           o.steps ? 1e3 * train_s / (double)o.steps : 0.0);

    cr_tensor_free(h);
    cr_tensor_free(c);
    cr_tensor_free(x);
    cr_tensor_free(y);
    cr_graph_free(g);
    cr_optim_free(opt);
    cr_rnn_free(m.lstm);
    cr_params_free(m.ps);
    cr_vocab_free(vocab);
    free(text);
    return rc;
}
