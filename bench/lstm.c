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
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "carousel.h"

#ifndef CR_BENCH_SRCDIR
#define CR_BENCH_SRCDIR "bench"
#endif
#ifndef CR_BENCH_PYTHON
#define CR_BENCH_PYTHON "/usr/bin/python3"
#endif

extern char **environ; /* POSIX */

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

/* Comma-separated positive integers of s into list (n entries). */
static void parse_list(const char *prog, const char *s, int64_t *list, int *n)
{
    *n = 0;
    for (;;) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v < 1 || *n == MAX_LIST) usage(prog);
        list[(*n)++] = v;
        if (*end == '\0') return;
        if (*end != ',') usage(prog);
        s = end + 1;
    }
}

static opts parse(int argc, char **argv)
{
    opts o = {.hidden = {256, 512}, .n_hidden = 2, .threads = {1, 2}, .n_threads = 2, .layers = 1,
              .reps = 3, .rounds = 4, .B = 32, .T = 64, .V = 64, .torch = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-torch")) {
            o.torch = false;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) usage(argv[0]);
        if (!strcmp(a, "--hidden")) parse_list(argv[0], v, o.hidden, &o.n_hidden);
        else if (!strcmp(a, "--threads")) parse_list(argv[0], v, o.threads, &o.n_threads);
        else if (!strcmp(a, "--layers")) o.layers = atoi(v);
        else if (!strcmp(a, "--reps")) o.reps = atoi(v);
        else if (!strcmp(a, "--rounds")) o.rounds = atoi(v);
        else if (!strcmp(a, "--batch")) o.B = atoll(v);
        else if (!strcmp(a, "--steps")) o.T = atoll(v);
        else if (!strcmp(a, "--vocab")) o.V = atoll(v);
        else if (!strcmp(a, "--optim") && (!strcmp(v, "sgd") || !strcmp(v, "adam"))) o.adam = v[0] == 'a';
        else usage(argv[0]);
    }
    if (o.layers < 1 || o.reps < 1 || o.rounds < 1 || o.B < 1 || o.T < 1 || o.V < 2 ||
        o.reps * o.rounds > MAX_SAMPLES)
        usage(argv[0]);
    o.lr = o.adam ? 1e-3 : 0.1;
    return o;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
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
    cr_rnn_config cfg = {.cell = &cr_cell_lstm, .input_size = m.I, .hidden_size = H,
                         .num_layers = o->layers, .dtype = CR_F32};
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

typedef struct peer {
    pid_t pid;
    FILE *to, *from;
    bool ok;
    double loss0, loss1, gnorm0; /* its first two losses and first gradient norm */
    char version[64];
} peer;

/* Value of key= in line, or nan. */
static double field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* Start the peer on the data file and wait for its "ready" line (after its
 * two warm-up steps). Returns with ok false when python or torch is missing. */
static peer peer_start(const opts *o, const model *m, int threads, const char *path)
{
    peer p = {.pid = -1, .loss0 = NAN, .loss1 = NAN, .gnorm0 = NAN};
    const char *py = getenv("CR_BENCH_PYTHON");
    if (!py || !*py) py = CR_BENCH_PYTHON;
    const char *script = CR_BENCH_SRCDIR "/lstm_torch.py";
    if (access(py, X_OK) != 0 || access(script, R_OK) != 0) {
        printf("torch: skipped (%s or %s not found)\n", py, script);
        return p;
    }
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
    char *argv[] = {(char *)py, (char *)script, "--file", (char *)path, "--batch", a[0], "--steps", a[1],
                    "--input", a[2], "--hidden", a[3], "--vocab", a[4], "--layers", a[5],
                    "--threads", a[6], "--optim", a[7], "--lr", a[8], NULL};
    /* torch.set_num_threads does not reach the BLAS it links (Debian's
     * libblas.so.3 is BLIS with its own thread count): give that T too. */
    size_t n_env = 0;
    while (environ[n_env]) n_env++;
    char **envp = cr_xmalloc((n_env + 2) * sizeof *envp), blis_env[64];
    size_t k_env = 0;
    for (size_t k = 0; k < n_env; k++)
        if (strncmp(environ[k], "BLIS_NUM_THREADS=", 17)) envp[k_env++] = environ[k];
    snprintf(blis_env, sizeof blis_env, "BLIS_NUM_THREADS=%d", threads);
    envp[k_env++] = blis_env;
    envp[k_env] = NULL;
    int down[2], up[2];
    if (pipe(down) != 0) {
        free(envp);
        return p;
    }
    if (pipe(up) != 0) {
        close(down[0]);
        close(down[1]);
        free(envp);
        return p;
    }
    fflush(stdout);
    p.pid = fork();
    if (p.pid == 0) {
        dup2(down[0], 0);
        dup2(up[1], 1);
        close(down[0]);
        close(down[1]);
        close(up[0]);
        close(up[1]);
        execve(py, argv, envp);
        _exit(127);
    }
    free(envp);
    close(down[0]);
    close(up[1]);
    if (p.pid < 0) {
        close(down[1]);
        close(up[0]);
        printf("torch: skipped (fork: %s)\n", strerror(errno));
        return p;
    }
    p.to = fdopen(down[1], "w");
    p.from = fdopen(up[0], "r");
    char line[1024];
    while (fgets(line, sizeof line, p.from)) {
        if (!strncmp(line, "ready ", 6)) {
            p.ok = field(line, "ok") == 1;
            p.loss0 = field(line, "loss0");
            p.loss1 = field(line, "loss1");
            p.gnorm0 = field(line, "gnorm0");
            const char *v = strstr(line, " torch_version=");
            if (v) sscanf(v + 15, "%63s", p.version);
            static bool shown;
            if (!p.ok || !shown) printf("torch: %s", line); /* its versions and thread counts */
            shown = true;
            break;
        }
        printf("torch: %s", line); /* anything else the peer says */
    }
    return p;
}

/* Ask the peer for n steps; appends their ms to t. Returns false on failure. */
static bool peer_run(peer *p, int n, double *t, int *nt)
{
    if (!p->ok) return false;
    fprintf(p->to, "run %d\n", n);
    fflush(p->to);
    char line[16384];
    if (!fgets(line, sizeof line, p->from) || strncmp(line, "ms", 2)) {
        p->ok = false;
        return false;
    }
    char *s = line + 2, *end;
    for (int k = 0; k < n; k++) {
        double v = strtod(s, &end);
        if (end == s) {
            p->ok = false;
            return false;
        }
        t[(*nt)++] = v;
        s = end;
    }
    return true;
}

static void peer_stop(peer *p)
{
    if (p->to) {
        fprintf(p->to, "quit\n");
        fclose(p->to);
    }
    if (p->from) fclose(p->from);
    if (p->pid > 0) {
        int st;
        waitpid(p->pid, &st, 0);
        if (!WIFEXITED(st) || (WEXITSTATUS(st) != 0 && p->ok))
            printf("torch: peer exited with status %d\n", st);
    }
}

/* ---- one configuration ---------------------------------------------------------- */

typedef struct result {
    int64_t H;
    int threads;
    double c_best, c_med, t_best, t_med; /* ms per step */
    double c_loss0, c_loss1, c_gnorm0, t_loss0, t_loss1, t_gnorm0;
} result;

static result measure(const opts *o, int64_t H, int threads)
{
    result r = {.H = H, .threads = threads, .t_best = NAN, .t_med = NAN, .t_loss0 = NAN,
                .t_loss1 = NAN, .t_gnorm0 = NAN};
    cr_set_num_threads(threads);
    model m = model_make(o, H);
    peer p = {.pid = -1};
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
        r.t_loss0 = p.loss0;
        r.t_loss1 = p.loss1;
        r.t_gnorm0 = p.gnorm0;
    }
    static double tc[MAX_SAMPLES], tt[MAX_SAMPLES];
    int nc = 0, nt = 0;
    for (int round = 0; round < o->rounds; round++)
        for (int side = 0; side < 2; side++) {
            if ((side ^ (round & 1)) == 0) { /* the sides take turns going first */
                for (int k = 0; k < o->reps; k++) {
                    double t0 = now_ms();
                    train_step(&m, NULL);
                    tc[nc++] = now_ms() - t0;
                }
            } else if (p.ok) {
                peer_run(&p, o->reps, tt, &nt);
            }
        }
    if (started && !p.ok) printf("torch: peer failed, no timings for hidden=%lld threads=%d\n", (long long)H, threads);
    peer_stop(&p);
    qsort(tc, (size_t)nc, sizeof *tc, cmp_double);
    r.c_best = tc[0];
    r.c_med = tc[nc / 2];
    if (nt > 0) {
        qsort(tt, (size_t)nt, sizeof *tt, cmp_double);
        r.t_best = tt[0];
        r.t_med = tt[nt / 2];
    }
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
            printf("%6lld %7d %9.2f (%7.2f) %9.2f (%7.2f) %7.3f  %10.6f %10.6f  %10.6f %10.6f  %10.6f %10.6f\n",
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
