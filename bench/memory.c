/* bench/memory: peak resident memory and time per token of the char-LM training
 * step (embedding 64, LSTM hidden 512, batch 32, linear head to 65 classes,
 * cross-entropy, clip at 5, Adam; one thread) at several sequence lengths,
 * with and without recompute, beside PyTorch's same step (bench/memory_torch.py).
 *
 *   ./build/bench/memory [--T 64,256,1024] [--reps N] [--segment S] [--no-torch]
 *
 * Every configuration runs in a fresh process on both sides and is measured
 * the same way: peak RSS (getrusage's ru_maxrss) after a warm-up step and
 * --reps timed steps, minus the same process's peak just before the model is
 * built (for PyTorch: right after `import torch`). With recompute, the
 * sequence runs in segments of S steps (default round(sqrt(T))): each segment
 * (embedding, LSTM, head, loss) goes through cr_recompute on the C side and
 * torch.utils.checkpoint (non-reentrant) on the PyTorch side.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "args.h"
#include "carousel.h"

#ifndef CR_BENCH_SRCDIR
#define CR_BENCH_SRCDIR "bench"
#endif
#ifndef CR_BENCH_PYTHON
#define CR_BENCH_PYTHON "/usr/bin/python3"
#endif

#define MAX_T 16
#define B_ 32
#define E_ 64
#define H_ 512
#define V_ 65

typedef struct opts {
    int64_t T[MAX_T];
    int n_T;
    int reps;
    int64_t segment; /* 0: round(sqrt(T)) */
    bool torch;
} opts;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--T T[,T..]] [--reps N] [--segment S] [--no-torch]\n"
            "  defaults: --T 64,256,1024 --reps 3 (segments of round(sqrt(T)) steps)\n",
            prog);
    exit(2);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static long maxrss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int64_t segment_of(const opts *o, int64_t T)
{
    int64_t s = o->segment > 0 ? o->segment : (int64_t)llround(sqrt((double)T));
    return s < 1 ? 1 : s > T ? T : s;
}

/* ---- the carousel side, in a child process ------------------------------------ */

typedef struct lm {
    int64_t T;
    cr_params *ps;
    cr_embedding emb;
    cr_rnn *lstm;
    cr_linear head;
    cr_optim *opt;
    cr_graph *g;
    cr_tensor *x, *y; /* i32 [B, T]: inputs and targets */
} lm;

static lm lm_make(int64_t T)
{
    lm m = {.T = T};
    cr_rng rng = cr_rng_seed(1);
    m.ps = cr_params_init();
    m.emb = cr_embedding_init(m.ps, "embed", V_, E_, -1, CR_F32, &rng);
    m.lstm = cr_rnn_init(
        m.ps, "lstm",
        (cr_rnn_config){
            .cell = &cr_cell_lstm, .input_size = E_, .hidden_size = H_, .num_layers = 1, .dtype = CR_F32},
        &rng);
    m.head = cr_linear_init(m.ps, "head", H_, V_, true, CR_F32, &rng);
    m.opt = cr_adam_init(m.ps, cr_adam_defaults(1e-3));
    m.g = cr_graph_init();
    m.x = cr_tensor_init(CR_I32, CR_SHAPE(B_, T));
    m.y = cr_tensor_init(CR_I32, CR_SHAPE(B_, T));
    int32_t *x = m.x->data, *y = m.y->data;
    for (int64_t k = 0; k < B_ * T; k++) {
        x[k] = (int32_t)(cr_rng_uniform01(&rng) * V_) % V_;
        y[k] = (int32_t)(cr_rng_uniform01(&rng) * V_) % V_;
    }
    return m;
}

static void lm_free(lm *m)
{
    cr_optim_free(m->opt);
    cr_graph_free(m->g);
    cr_tensor_free(m->x);
    cr_tensor_free(m->y);
    cr_rnn_free(m->lstm);
    cr_params_free(m->ps);
}

/* Embedding, LSTM from (h, c), head and the summed cross-entropy of steps
 * [t0, t0 + len): what one segment computes. h, c are [1, B, H] or NULL. */
static cr_tensor *lm_forward(const lm *m, int64_t t0, int64_t len, cr_tensor *h, cr_tensor *c,
                             cr_reduction red, cr_rnn_output *out)
{
    cr_tensor *x = cr_narrow(m->x, 1, t0, len), *y = cr_reshape(cr_narrow(m->y, 1, t0, len), CR_SHAPE(-1));
    *out = cr_rnn_forward(m->lstm, cr_embedding_forward(&m->emb, x), NULL, h, c);
    cr_tensor *logits = cr_linear_forward(&m->head, cr_reshape(out->y, CR_SHAPE(-1, H_)));
    return cr_cross_entropy(logits, y, -1, red);
}

typedef struct segment {
    const lm *m;
    int64_t t0, len;
} segment;

/* in = {h, c}; out = {h_n, c_n, summed loss of the segment} */
static void segment_fn(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    const segment *s = ctx;
    cr_rnn_output o;
    out[2] = lm_forward(s->m, s->t0, s->len, in[0], in[1], CR_SUM, &o);
    out[0] = o.h_n;
    out[1] = o.c_n;
}

static double lm_step(lm *m, int64_t seg)
{
    cr_graph *prev = cr_graph_use(m->g);
    cr_optim_zero_grad(m->opt);
    cr_tensor *loss;
    if (seg == 0) {
        cr_rnn_output o;
        loss = lm_forward(m, 0, m->T, NULL, NULL, CR_MEAN, &o);
    } else {
        int64_t n = (m->T + seg - 1) / seg;
        segment *segs = cr_arena_alloc(cr_arena_current(), (size_t)n * sizeof *segs);
        cr_tensor **parts = cr_arena_alloc(cr_arena_current(), (size_t)n * sizeof *parts);
        cr_tensor *s[3] = {cr_zeros(CR_F32, CR_SHAPE(1, B_, H_)), cr_zeros(CR_F32, CR_SHAPE(1, B_, H_))};
        for (int64_t k = 0; k < n; k++) {
            segs[k] = (segment){m, k * seg, k * seg + seg <= m->T ? seg : m->T - k * seg};
            cr_recompute(segment_fn, &segs[k], 2, s, 3, s, 0, NULL);
            parts[k] = s[2];
        }
        loss = cr_mul_scalar(cr_sum(cr_stack((int)n, parts, 0)), 1.0 / (double)(B_ * m->T));
    }
    double value = cr_item(loss);
    cr_backward(loss);
    cr_clip_grad_norm(m->ps, 5.0, NULL);
    cr_optim_step(m->opt);
    cr_graph_clear(m->g);
    cr_graph_use(prev);
    return value;
}

static int child(int64_t T, int ckpt, int64_t seg, int reps)
{
    long base = maxrss_kb();
    cr_set_num_threads(1);
    lm m = lm_make(T);
    if (!ckpt) seg = 0;
    double loss = lm_step(&m, seg); /* warm-up: Adam state, arena, pool, BLIS buffers */
    double t[64];
    if (reps > 64) reps = 64;
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        lm_step(&m, seg);
        t[r] = now_ms() - t0;
    }
    size_t peak = cr_graph_bytes_peak(m.g); /* the largest step's, since the graph was made */
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    printf(
        "result side=carousel T=%lld checkpoint=%d ok=1 mb=%.1f ms_min=%.2f ms_med=%.2f ms_max=%.2f loss=%.6f "
        "graph_peak_mb=%.1f graph_reserved_mb=%.1f base_mb=%.1f\n",
        (long long)T, ckpt, (double)(maxrss_kb() - base) / 1024.0, t[0], t[reps / 2], t[reps - 1], loss,
        (double)peak / 1048576.0, (double)cr_graph_bytes_reserved(m.g) / 1048576.0, (double)base / 1024.0);
    lm_free(&m);
    return 0;
}

/* ---- the parent: one fresh process per side and configuration ------------------ */

typedef struct run {
    bool ok;
    double mb, ms_min, ms_med, ms_max, loss, graph_peak_mb;
} run;

static double field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* Run argv in a child with BLIS_NUM_THREADS=1 and read its "result" line. */
static run spawn(char *const *argv)
{
    run r = {.ok = false,
             .mb = NAN,
             .ms_min = NAN,
             .ms_med = NAN,
             .ms_max = NAN,
             .loss = NAN,
             .graph_peak_mb = NAN};
    int up[2];
    if (pipe(up) != 0) return r;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(up[1], 1);
        close(up[0]);
        close(up[1]);
        setenv("BLIS_NUM_THREADS", "1", 1);
        setenv("OMP_NUM_THREADS", "1", 1);
        execv(argv[0], argv);
        _exit(127);
    }
    close(up[1]);
    if (pid < 0) {
        close(up[0]);
        return r;
    }
    FILE *f = fdopen(up[0], "r");
    char line[2048];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "result ", 7)) {
            printf("  | %s", line);
            continue;
        }
        r.ok = field(line, "ok") == 1;
        r.mb = field(line, "mb");
        r.ms_min = field(line, "ms_min");
        r.ms_med = field(line, "ms_med");
        r.ms_max = field(line, "ms_max");
        r.loss = field(line, "loss");
        r.graph_peak_mb = field(line, "graph_peak_mb");
        if (!r.ok) printf("  | %s", line);
    }
    if (f) fclose(f);
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        printf("  | child %s exited with status %d\n", argv[0], st);
        r.ok = false;
    }
    return r;
}

static run run_carousel(const char *self, int64_t T, int ckpt, int64_t seg, int reps)
{
    char a[3][32], b[32];
    snprintf(a[0], 32, "%lld", (long long)T);
    snprintf(a[1], 32, "%d", ckpt);
    snprintf(a[2], 32, "%lld", (long long)seg);
    snprintf(b, 32, "%d", reps);
    char *argv[] = {(char *)self, "--child", a[0], a[1], a[2], "--reps", b, NULL};
    return spawn(argv);
}

static run run_torch(int64_t T, int ckpt, int64_t seg, int reps)
{
    const char *py = getenv("CR_BENCH_PYTHON");
    if (!py || !*py) py = CR_BENCH_PYTHON;
    const char *script = CR_BENCH_SRCDIR "/memory_torch.py";
    if (access(py, X_OK) != 0 || access(script, R_OK) != 0) {
        run r = {.ok = false, .mb = NAN, .ms_med = NAN};
        return r;
    }
    char a[4][32];
    snprintf(a[0], 32, "%lld", (long long)T);
    snprintf(a[1], 32, "%d", ckpt);
    snprintf(a[2], 32, "%lld", (long long)seg);
    snprintf(a[3], 32, "%d", reps);
    char *argv[] = {(char *)py, (char *)script, "--steps", a[0], "--checkpoint", a[1], "--segment",
                    a[2],       "--reps",       a[3],      NULL};
    return spawn(argv);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    opts o = {.T = {64, 256, 1024}, .n_T = 3, .reps = 3, .torch = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--child") && i + 3 < argc) {
            int reps = 3;
            if (i + 5 < argc && !strcmp(argv[i + 4], "--reps")) reps = atoi(argv[i + 5]);
            return child(atoll(argv[i + 1]), atoi(argv[i + 2]), atoll(argv[i + 3]), reps < 1 ? 1 : reps);
        }
        if (!strcmp(a, "--no-torch")) {
            o.torch = false;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) usage(argv[0]);
        if (!strcmp(a, "--T")) {
            o.n_T = 0; /* a repeated flag replaces the list */
            if (!bench_list(v, o.T, &o.n_T, MAX_T)) usage(argv[0]);
        } else if (!strcmp(a, "--reps"))
            o.reps = atoi(v);
        else if (!strcmp(a, "--segment"))
            o.segment = atoll(v);
        else
            usage(argv[0]);
    }
    if (o.reps < 1 || o.reps > 64) usage(argv[0]);
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "memory: cannot find my own executable: %s\n", strerror(errno));
        return 1;
    }
    self[len] = '\0';
    printf(
        "char-LM training step: embedding %d, LSTM hidden %d, batch %d, linear head to %d classes,\n"
        "cross-entropy, clip at 5, Adam; one thread. Each configuration in a fresh process per side:\n"
        "peak RSS minus the process's baseline, and ms per token (min/median/max of %d steps after a warm-up).\n\n",
        E_, H_, B_, V_, o.reps);
    printf("%5s %4s %4s %12s %10s %7s %26s %26s %7s %10s\n", "T", "ckpt", "seg", "carousel_mb", "torch_mb",
           "ratio", "carousel us/token", "torch us/token", "t_ratio", "graph_pk");
    run res[MAX_T][2][2];
    for (int k = 0; k < o.n_T; k++)
        for (int ckpt = 0; ckpt < 2; ckpt++) {
            int64_t T = o.T[k], seg = segment_of(&o, T);
            run *c = &res[k][ckpt][0], *t = &res[k][ckpt][1];
            bool torch_first = (k + ckpt) & 1; /* the sides take turns going first */
            *t = (run){.ok = false, .mb = NAN, .ms_min = NAN, .ms_med = NAN, .ms_max = NAN};
            if (o.torch && torch_first) *t = run_torch(T, ckpt, seg, o.reps);
            *c = run_carousel(self, T, ckpt, seg, o.reps);
            if (o.torch && !torch_first) *t = run_torch(T, ckpt, seg, o.reps);
            double tok = (double)(B_ * T) / 1e3; /* ms per step -> us per token */
            printf("%5lld %4d %4lld %12.1f %10.1f %7.3f %8.2f/%7.2f/%7.2f %8.2f/%7.2f/%7.2f %7.3f %10.1f\n",
                   (long long)T, ckpt, ckpt ? (long long)seg : 0LL, c->mb, t->mb, c->mb / t->mb,
                   c->ms_min / tok, c->ms_med / tok, c->ms_max / tok, t->ms_min / tok, t->ms_med / tok,
                   t->ms_max / tok, c->ms_med / t->ms_med, c->graph_peak_mb);
        }
    printf("\n");
    for (int k = 0; k < o.n_T; k++) {
        const run *plain = &res[k][0][0], *rc = &res[k][1][0];
        printf("recompute at T=%lld: %.2fx the memory and %.2fx the time per token of the plain step\n",
               (long long)o.T[k], rc->mb / plain->mb, rc->ms_med / plain->ms_med);
    }
    printf("\n");
    for (int k = 0; k < o.n_T; k++)
        for (int ckpt = 0; ckpt < 2; ckpt++) {
            const run *c = &res[k][ckpt][0], *t = &res[k][ckpt][1];
            double tok = (double)(B_ * o.T[k]);
            printf("bench=memory T=%lld checkpoint=%d carousel_mb=%.1f torch_mb=%.1f ratio=%.3f "
                   "ms_per_token=%.5f torch_ms_per_token=%.5f\n",
                   (long long)o.T[k], ckpt, c->mb, t->mb, c->mb / t->mb, c->ms_med / tok, t->ms_med / tok);
        }
    return 0;
}
