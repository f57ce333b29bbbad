/* bench/lstm: one training step of a sequence model, carousel against PyTorch
 * (torch.nn.LSTM + nn.Linear) on identical weights and data: an f32 LSTM over
 * [B,T,I], a linear head to V classes on every step, cross-entropy, backward, SGD/Adam.
 *
 *   ./build/bench/lstm [--hidden H[,H..]] [--threads T[,T..]] [--layers L] [--reps N]
 *                      [--rounds R] [--batch B] [--steps T] [--vocab V]
 *                      [--optim sgd|adam] [--no-torch]
 *
 * The peer bench/lstm_torch.py runs in one python process per configuration,
 * driven over a pipe, so the two sides take turns round by round.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "carousel.h"
#include "peer.h"

#define MAX_LIST 16
#define MAX_SAMPLES 4096

typedef struct opts {
    int64_t hidden[MAX_LIST];
    int n_hidden;
    int64_t threads[MAX_LIST];
    int n_threads;
    int layers, reps, rounds;
    int64_t B, T, V;
    bool adam, torch;
    double lr;
} opts;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--hidden H[,H..]] [--threads T[,T..]] [--layers L] [--reps N]\n"
            "          [--rounds R] [--batch B] [--steps T] [--vocab V] [--optim sgd|adam]\n"
            "          [--no-torch]\n"
            "  defaults: --hidden 256,512 --threads 1,2 --layers 1 --reps 3 --rounds 4\n"
            "  --batch 32 --steps 64 --vocab 64 --optim sgd (input size = hidden)\n",
            prog);
    exit(2);
}

static opts parse(int argc, char **argv)
{
    opts o = {.hidden = {256, 512},
              .n_hidden = 2,
              .threads = {1, 2},
              .n_threads = 2,
              .layers = 1,
              .reps = 3,
              .rounds = 4,
              .B = 32,
              .T = 64,
              .V = 64,
              .torch = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-torch")) {
            o.torch = false;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) usage(argv[0]);
        if (!strcmp(a, "--hidden")) {
            o.n_hidden = 0; /* a repeated flag replaces the list */
            if (!bench_list(v, o.hidden, &o.n_hidden, MAX_LIST)) usage(argv[0]);
        } else if (!strcmp(a, "--threads")) {
            o.n_threads = 0; /* a repeated flag replaces the list */
            if (!bench_list(v, o.threads, &o.n_threads, MAX_LIST)) usage(argv[0]);
        } else if (!strcmp(a, "--layers"))
            o.layers = atoi(v);
        else if (!strcmp(a, "--reps"))
            o.reps = atoi(v);
        else if (!strcmp(a, "--rounds"))
            o.rounds = atoi(v);
        else if (!strcmp(a, "--batch"))
            o.B = atoll(v);
        else if (!strcmp(a, "--steps"))
            o.T = atoll(v);
        else if (!strcmp(a, "--vocab"))
            o.V = atoll(v);
        else if (!strcmp(a, "--optim") && (!strcmp(v, "sgd") || !strcmp(v, "adam")))
            o.adam = v[0] == 'a';
        else
            usage(argv[0]);
    }
    if (o.layers < 1 || o.reps < 1 || o.rounds < 1 || o.B < 1 || o.T < 1 || o.V < 2 ||
        o.reps * o.rounds > MAX_SAMPLES)
        usage(argv[0]);
    o.lr = o.adam ? 1e-3 : 0.1;
    return o;
}

/* ---- the carousel side ------------------------------------------------------ */

typedef struct model {
    int64_t B, T, I, H, V;
    int layers;
    cr_params *ps;
    cr_rnn *rnn;
    cr_linear head;
    cr_optim *opt;
    cr_graph *g;
    cr_tensor *x;   /* [B, T, I] f32 */
    cr_tensor *tgt; /* [B*T] i32 */
} model;

static model model_make(const opts *o, int64_t H)
{
    model m = {.B = o->B, .T = o->T, .I = H, .H = H, .V = o->V, .layers = o->layers};
    cr_rng rng = cr_rng_seed(1234);
    m.ps = cr_params_init();
    cr_rnn_config cfg = {
        .cell = &cr_cell_lstm, .input_size = m.I, .hidden_size = H, .num_layers = o->layers, .dtype = CR_F32};
    m.rnn = cr_rnn_init(m.ps, "lstm", cfg, &rng);
    m.head = cr_linear_init(m.ps, "head", H, m.V, true, CR_F32, &rng);
    m.opt = o->adam ? cr_adam_init(m.ps, cr_adam_defaults(o->lr)) : cr_sgd_init(m.ps, cr_sgd_defaults(o->lr));
    m.g = cr_graph_init();
    m.x = cr_tensor_init(CR_F32, CR_SHAPE(m.B, m.T, m.I));
    m.tgt = cr_tensor_init(CR_I32, CR_SHAPE(m.B * m.T));
    cr_fill_uniform(m.x, &rng, -1, 1);
    int32_t *t = m.tgt->data;
    for (int64_t k = 0; k < m.B * m.T; k++)
        t[k] = (int32_t)(cr_rng_uniform01(&rng) * (double)m.V) % (int32_t)m.V;
    return m;
}

static void model_free(model *m)
{
    cr_optim_free(m->opt);
    cr_graph_free(m->g);
    cr_tensor_free(m->x);
    cr_tensor_free(m->tgt);
    cr_rnn_free(m->rnn);
    cr_params_free(m->ps);
}

/* One training step: zero the gradients, forward, loss, backward, (the
 * gradient norm if asked, outside the timed steps), optimizer step. */
static double train_step(model *m, double *grad_norm)
{
    cr_graph *prev = cr_graph_use(m->g);
    cr_optim_zero_grad(m->opt);
    cr_rnn_output out = cr_rnn_forward(m->rnn, m->x, NULL, NULL, NULL);
    cr_tensor *logits = cr_linear_forward(&m->head, out.y); /* [B, T, V] */
    cr_tensor *loss = cr_cross_entropy(cr_reshape(logits, CR_SHAPE(-1, m->V)), m->tgt, -1, CR_MEAN);
    double value = cr_item(loss);
    cr_backward(loss);
    if (grad_norm) *grad_norm = cr_grad_norm(m->ps);
    cr_optim_step(m->opt);
    cr_graph_clear(m->g);
    cr_graph_use(prev);
    return value;
}

/* The data, then every weight in torch's order (weight_ih_l0, weight_hh_l0,
 * bias_ih_l0, bias_hh_l0, ..., head weight, head bias), raw little-endian. */
static int write_tensors(const model *m, FILE *f)
{
    const cr_tensor *ts[4 * 64 + 4];
    size_t n = 0;
    ts[n++] = m->x;
    ts[n++] = m->tgt;
    for (int l = 0; l < m->layers && l < 64; l++) {
        const cr_cell *c = &m->rnn->cells[l];
        ts[n++] = cr_cell_get(c, "w_ih");
        ts[n++] = cr_cell_get(c, "w_hh");
        ts[n++] = cr_cell_get(c, "b_ih");
        ts[n++] = cr_cell_get(c, "b_hh");
    }
    ts[n++] = m->head.weight;
    ts[n++] = m->head.bias;
    for (size_t k = 0; k < n; k++) {
        size_t count = (size_t)cr_numel(ts[k]);
        if (!cr_is_contiguous(ts[k]) || fwrite(ts[k]->data, cr_dtype_size(ts[k]->dtype), count, f) != count)
            return -1;
    }
    return 0;
}

/* ---- the PyTorch peer, one process per configuration ------------------------ */

/* Start the peer on the data file and wait for its "ready" line (after its
 * two warm-up steps; bench/peer.h). */
static bench_peer peer_start(const opts *o, const model *m, int threads, const char *path)
{
    char a[9][32];
    snprintf(a[0], 32, "%lld", (long long)m->B);
    snprintf(a[1], 32, "%lld", (long long)m->T);
    snprintf(a[2], 32, "%lld", (long long)m->I);
    snprintf(a[3], 32, "%lld", (long long)m->H);
    snprintf(a[4], 32, "%lld", (long long)m->V);
    snprintf(a[5], 32, "%d", m->layers);
    snprintf(a[6], 32, "%d", threads);
    snprintf(a[7], 32, "%s", o->adam ? "adam" : "sgd");
    snprintf(a[8], 32, "%.17g", o->lr);
    const char *args[] = {"--file",    path,       "--batch", a[0],      "--steps", a[1],       "--input",
                          a[2],        "--hidden", a[3],      "--vocab", a[4],      "--layers", a[5],
                          "--threads", a[6],       "--optim", a[7],      "--lr",    a[8],       NULL};
    return bench_peer_start((bench_peer_config){.script = "lstm_torch.py", .args = args, .threads = threads});
}

static void step_call(void *m) { train_step(m, NULL); }

/* ---- one configuration ---------------------------------------------------------- */

typedef struct result {
    int64_t H;
    int threads;
    double c_best, c_med, t_best, t_med; /* ms per step */
    double c_loss0, c_loss1, c_gnorm0, t_loss0, t_loss1, t_gnorm0;
} result;

static result measure(const opts *o, int64_t H, int threads)
{
    result r = {.H = H,
                .threads = threads,
                .t_best = NAN,
                .t_med = NAN,
                .t_loss0 = NAN,
                .t_loss1 = NAN,
                .t_gnorm0 = NAN};
    cr_set_num_threads(threads);
    model m = model_make(o, H);
    bench_peer p = BENCH_PEER_NONE;
    bool started = false;
    if (o->torch) {
        char path[] = "/tmp/cr_bench_lstm_XXXXXX";
        int fd = mkstemp(path);
        FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
        if (!f || write_tensors(&m, f) != 0 || fclose(f) != 0) {
            printf("torch: skipped (cannot write %s)\n", path);
        } else {
            p = peer_start(o, &m, threads, path);
            started = p.ok;
        }
        if (fd >= 0) unlink(path);
    }
    /* Warm-up, two steps (arena, BLIS buffers, optimizer state): the first
     * loss and gradient norm on the initial weights, and the loss after one
     * update, compared with the peer's. */
    r.c_loss0 = train_step(&m, &r.c_gnorm0);
    r.c_loss1 = train_step(&m, NULL);
    if (p.ok) {
        r.t_loss0 = bench_field(p.ready, "loss0");
        r.t_loss1 = bench_field(p.ready, "loss1");
        r.t_gnorm0 = bench_field(p.ready, "gnorm0");
    }
    static double tc[MAX_SAMPLES], tt[MAX_SAMPLES];
    bench_samples sc = BENCH_SAMPLES(tc), st = BENCH_SAMPLES(tt);
    bench_turns(o->rounds, o->reps, step_call, &m, &sc, &p, &st);
    if (started && !p.ok)
        printf("torch: peer failed, no timings for hidden=%lld threads=%d\n", (long long)H, threads);
    bench_peer_stop(&p);
    bench_stats cs = bench_spread(sc.v, sc.n), ts = bench_spread(st.v, st.n);
    r.c_best = cs.min, r.c_med = cs.med;
    r.t_best = ts.min, r.t_med = ts.med;
    model_free(&m);
    return r;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN); /* a peer that died shows as a failed write, not a kill */
    const opts o = parse(argc, argv);
    printf("f32 LSTM (%d layer%s, input = hidden), batch %lld, %lld steps, linear head to %lld\n"
           "classes on every step, cross-entropy, backward, %s (lr %g). ms per training step:\n"
           "best (median) of %d rounds x %d steps per side, the sides taking turns.\n\n",
           o.layers, o.layers > 1 ? "s" : "", (long long)o.B, (long long)o.T, (long long)o.V,
           o.adam ? "Adam" : "SGD", o.lr, o.rounds, o.reps);
    printf("%6s %7s %19s %19s %7s  %-22s %-22s %-22s\n", "hidden", "threads", "carousel_ms", "torch_ms",
           "ratio", "loss0 (c, torch)", "loss1 (c, torch)", "|grad|0 (c, torch)");
    result res[MAX_LIST * MAX_LIST];
    int n = 0;
    for (int h = 0; h < o.n_hidden; h++)
        for (int t = 0; t < o.n_threads; t++) {
            result r = measure(&o, o.hidden[h], (int)o.threads[t]);
            res[n++] = r;
            printf(
                "%6lld %7d %9.2f (%7.2f) %9.2f (%7.2f) %7.3f  %10.6f %10.6f  %10.6f %10.6f  %10.6f %10.6f\n",
                (long long)r.H, r.threads, r.c_best, r.c_med, r.t_best, r.t_med, r.t_best / r.c_best,
                r.c_loss0, r.t_loss0, r.c_loss1, r.t_loss1, r.c_gnorm0, r.t_gnorm0);
        }
    double worst = 0; /* the two sides' losses and gradient norms, on the same weights */
    for (int k = 0; k < n; k++) {
        const double c[] = {res[k].c_loss0, res[k].c_loss1, res[k].c_gnorm0};
        const double t[] = {res[k].t_loss0, res[k].t_loss1, res[k].t_gnorm0};
        for (int j = 0; j < 3; j++)
            if (!isnan(t[j])) worst = fmax(worst, fabs(c[j] - t[j]) / fmax(fabs(t[j]), 1e-30));
    }
    printf("\nagreement: largest relative difference of loss0, loss1, |grad|0: %.2e\n\n", worst);
    for (int k = 0; k < n; k++)
        printf("bench=lstm hidden=%lld threads=%d layers=%d carousel_ms=%.3f torch_ms=%.3f ratio=%.3f\n",
               (long long)res[k].H, res[k].threads, o.layers, res[k].c_best, res[k].t_best,
               res[k].t_best / res[k].c_best);
    return 0;
}
