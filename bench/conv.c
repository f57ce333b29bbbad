/* bench/conv: convolutions against PyTorch in the same run: the LeNet-5
 * training step of examples/lenet (batch 64, SGD with momentum) on identical
 * weights and data, and conv2d forward+backward at a few sizes (LeNet's two
 * layers, a 3x3 64->64 conv on 32x32, a 1x1 64->64 conv on 32x32).
 *
 *   ./build/bench/conv [--threads T[,T..]] [--reps N] [--rounds R] [--case NAME[,NAME..]]
 *                      [--torch-malloc keep|default] [--no-torch]
 *
 * The peer bench/conv_torch.py runs in one python process per case, driven
 * over a pipe, so the two sides take turns round by round. Both run with the
 * same thread count (torch.set_num_threads and BLIS_NUM_THREADS).
 *
 * Page faults: torch allocates its activations and gradients afresh every
 * call, and glibc's malloc returns large blocks to the kernel, so as shipped
 * each call faults in new pages; on this VM that cost swings from session to
 * session (conv3x3_64: torch ~18 ms in one, 95-145 ms in another, all of the
 * difference in faults). By default the peer keeps its freed memory
 * (--torch-malloc keep, mallopt in conv_torch.py), as carousel's arena does,
 * so torch is measured at its best; --torch-malloc default measures it as
 * shipped. Each side's minor faults per call are printed.
 */
#include <math.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "carousel.h"
#include "peer.h"

#define MAX_LIST 16
#define MAX_SAMPLES 4096

/* One conv2d case: x [N, C, S, S], w [O, C, K, K], padding P; lenet: the training step. */
typedef struct bench_case {
    const char *name;
    bool lenet;
    int64_t N, C, O, S, K, P;
    bool input_grad;
} bench_case;

static const bench_case cases[] = {
    {"lenet_step", true, 64, 0, 0, 0, 0, 0, false},    {"lenet_conv1", false, 64, 1, 6, 28, 5, 2, false},
    {"lenet_conv2", false, 64, 6, 16, 14, 5, 0, true}, {"conv3x3_64", false, 16, 64, 64, 32, 3, 1, true},
    {"conv1x1_64", false, 16, 64, 64, 32, 1, 0, true},
};
#define N_CASES (sizeof cases / sizeof cases[0])

typedef struct opts {
    int64_t threads[MAX_LIST];
    int n_threads;
    int reps, rounds;
    bool use[N_CASES];
    bool torch;
    const char *torch_malloc; /* "keep" or "default" */
} opts;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--threads T[,T..]] [--reps N] [--rounds R] [--case NAME[,NAME..]]\n"
            "          [--torch-malloc keep|default] [--no-torch]\n"
            "  defaults: --threads 1,2 --reps 5 --rounds 10 --torch-malloc keep, every case:",
            prog);
    for (size_t k = 0; k < N_CASES; k++) fprintf(stderr, " %s", cases[k].name);
    fprintf(stderr, "\n");
    exit(2);
}

static opts parse(int argc, char **argv)
{
    opts o = {
        .threads = {1, 2}, .n_threads = 2, .reps = 5, .rounds = 10, .torch = true, .torch_malloc = "keep"};
    for (size_t k = 0; k < N_CASES; k++) o.use[k] = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-torch")) {
            o.torch = false;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage(argv[0]);
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) usage(argv[0]);
        if (!strcmp(a, "--threads")) {
            o.n_threads = 0; /* a repeated flag replaces the list */
            if (!bench_list(v, o.threads, &o.n_threads, MAX_LIST)) usage(argv[0]);
        } else if (!strcmp(a, "--reps"))
            o.reps = atoi(v);
        else if (!strcmp(a, "--rounds"))
            o.rounds = atoi(v);
        else if (!strcmp(a, "--torch-malloc")) {
            if (strcmp(v, "keep") && strcmp(v, "default")) usage(argv[0]);
            o.torch_malloc = v;
        } else if (!strcmp(a, "--case")) {
            for (size_t k = 0; k < N_CASES; k++) o.use[k] = false;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
                size_t k = 0;
                while (k < N_CASES && strcmp(cases[k].name, t)) k++;
                if (k == N_CASES) usage(argv[0]);
                o.use[k] = true;
            }
        } else
            usage(argv[0]);
    }
    if (o.reps < 1 || o.rounds < 1 || o.reps * o.rounds > MAX_SAMPLES) usage(argv[0]);
    return o;
}

/* ---- the carousel side --------------------------------------------------------------- */

typedef struct model {
    const bench_case *c;
    cr_params *ps;
    cr_conv2d_layer conv1, conv2;
    cr_linear fc1, fc2, fc3;
    cr_optim *opt;
    cr_graph *g;
    cr_tensor *x, *tgt; /* lenet: images, i32 labels */
    cr_tensor *w, *b;   /* conv: parameters (x is the input) */
} model;

static model model_make(const bench_case *c)
{
    model m = {.c = c, .g = cr_graph_init(), .ps = cr_params_init()};
    cr_rng rng = cr_rng_seed(1234);
    if (c->lenet) {
        m.conv1 = cr_conv2d_layer_init(
            m.ps, "conv1",
            (cr_conv2d_config){
                .in_channels = 1, .out_channels = 6, .kernel = {5, 5}, .padding = {2, 2}, .dtype = CR_F32},
            &rng);
        m.conv2 = cr_conv2d_layer_init(
            m.ps, "conv2",
            (cr_conv2d_config){.in_channels = 6, .out_channels = 16, .kernel = {5, 5}, .dtype = CR_F32},
            &rng);
        m.fc1 = cr_linear_init(m.ps, "fc1", 400, 120, true, CR_F32, &rng);
        m.fc2 = cr_linear_init(m.ps, "fc2", 120, 84, true, CR_F32, &rng);
        m.fc3 = cr_linear_init(m.ps, "fc3", 84, 10, true, CR_F32, &rng);
        cr_sgd_config sc = cr_sgd_defaults(0.01);
        sc.momentum = 0.9;
        m.opt = cr_sgd_init(m.ps, sc);
        m.x = cr_tensor_init(CR_F32, CR_SHAPE(c->N, 1, 28, 28));
        cr_fill_uniform(m.x, &rng, -1, 1);
        m.tgt = cr_tensor_init(CR_I32, CR_SHAPE(c->N));
        for (int64_t k = 0; k < c->N; k++)
            ((int32_t *)m.tgt->data)[k] = (int32_t)(cr_rng_uniform01(&rng) * 10) % 10;
    } else {
        m.x = cr_tensor_init(CR_F32, CR_SHAPE(c->N, c->C, c->S, c->S));
        m.w = cr_params_add(m.ps, "conv", "weight", CR_F32, CR_SHAPE(c->O, c->C, c->K, c->K));
        m.b = cr_params_add(m.ps, "conv", "bias", CR_F32, CR_SHAPE(c->O));
        cr_fill_uniform(m.x, &rng, -1, 1);
        cr_fill_uniform(m.w, &rng, -0.1, 0.1);
        cr_fill_uniform(m.b, &rng, -0.1, 0.1);
        if (c->input_grad) cr_requires_grad(m.x, true);
    }
    return m;
}

static void model_free(model *m)
{
    cr_optim_free(m->opt);
    cr_graph_free(m->g);
    cr_tensor_free(m->x);
    cr_tensor_free(m->tgt);
    cr_params_free(m->ps);
}

/* One call: the LeNet training step (zero grads, forward, loss, backward,
 * SGD step), or conv2d forward + backward of sum(y). Returns the loss, or
 * sum |dW| for a conv (compared with the peer's). */
static double step(model *m)
{
    cr_graph *prev = cr_graph_use(m->g);
    double value;
    if (m->c->lenet) {
        cr_optim_zero_grad(m->opt);
        cr_pool2d_opts pool = {.kernel = {2, 2}};
        cr_tensor *h = cr_max_pool2d(cr_relu(cr_conv2d_layer_forward(&m->conv1, m->x)), pool);
        h = cr_max_pool2d(cr_relu(cr_conv2d_layer_forward(&m->conv2, h)), pool);
        h = cr_reshape(h, CR_SHAPE(m->c->N, 400));
        h = cr_relu(cr_linear_forward(&m->fc1, h));
        h = cr_relu(cr_linear_forward(&m->fc2, h));
        cr_tensor *loss = cr_cross_entropy(cr_linear_forward(&m->fc3, h), m->tgt, -1, CR_MEAN);
        value = cr_item(loss);
        cr_backward(loss);
        cr_optim_step(m->opt);
    } else {
        cr_params_zero_grad(m->ps);
        if (m->x->grad) cr_zero_grad(m->x);
        const bench_case *c = m->c;
        cr_tensor *y = cr_conv2d(m->x, m->w, m->b, (cr_conv2d_opts){.padding = {c->P, c->P}});
        cr_backward_with(y, cr_full(CR_F32, y->ndim, y->shape, 1.0));
        value = 0;
        for (int64_t i = 0; i < cr_numel(m->w); i++) value += fabs(((float *)m->w->grad->data)[i]);
    }
    cr_graph_clear(m->g);
    cr_graph_use(prev);
    return value;
}

/* The data then the weights (torch's parameter order), raw little-endian. */
static int write_tensors(const model *m, FILE *f)
{
    const cr_tensor *ts[16];
    size_t n = 0;
    ts[n++] = m->x;
    if (m->c->lenet) ts[n++] = m->tgt;
    for (size_t k = 0; k < m->ps->n; k++) ts[n++] = m->ps->items[k].value;
    for (size_t k = 0; k < n; k++) {
        size_t count = (size_t)cr_numel(ts[k]);
        if (!cr_is_contiguous(ts[k]) || fwrite(ts[k]->data, cr_dtype_size(ts[k]->dtype), count, f) != count)
            return -1;
    }
    return 0;
}

/* ---- the PyTorch peer, one process per case and thread count ---------------------------------- */

/* Starts the peer on the data file (see bench/peer.h). */
static bench_peer peer_start(const bench_case *c, int threads, const char *path, const char *malloc_mode)
{
    char a[8][32];
    snprintf(a[0], 32, "%lld", (long long)c->N);
    snprintf(a[1], 32, "%lld", (long long)c->C);
    snprintf(a[2], 32, "%lld", (long long)c->O);
    snprintf(a[3], 32, "%lld", (long long)c->S);
    snprintf(a[4], 32, "%lld", (long long)c->K);
    snprintf(a[5], 32, "%lld", (long long)c->P);
    snprintf(a[6], 32, "%d", c->input_grad);
    snprintf(a[7], 32, "%d", threads);
    const char *kind = c->lenet ? "lenet" : "conv";
    const char *args[] = {"--file",       path, "--case",    kind, "--batch",  a[0],        "--cin",     a[1],
                          "--cout",       a[2], "--size",    a[3], "--kernel", a[4],        "--padding", a[5],
                          "--input-grad", a[6], "--threads", a[7], "--malloc", malloc_mode, NULL};
    return bench_peer_start((bench_peer_config){.script = "conv_torch.py", .args = args, .threads = threads});
}

static void step_call(void *m) { step(m); }

/* ---- one case ------------------------------------------------------------------------------ */

typedef struct result {
    const bench_case *c;
    int threads;
    double c_min, c_med, c_max, t_min, t_med, t_max; /* ms per call */
    double c_v0, c_v1, t_v0, t_v1;                   /* first two losses (or sum |dW|) of each side */
    double c_faults, t_faults;                       /* minor page faults per call */
} result;

static double minor_faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_minflt;
}

static result measure(const opts *o, const bench_case *c, int threads)
{
    result r = {.c = c,
                .threads = threads,
                .t_min = NAN,
                .t_med = NAN,
                .t_max = NAN,
                .t_v0 = NAN,
                .t_v1 = NAN,
                .t_faults = NAN};
    cr_set_num_threads(threads);
    model m = model_make(c);
    bench_peer p = BENCH_PEER_NONE;
    bool started = false;
    if (o->torch) {
        char path[] = "/tmp/cr_bench_conv_XXXXXX";
        int fd = mkstemp(path);
        FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
        if (!f || write_tensors(&m, f) != 0 || fclose(f) != 0) {
            printf("torch: skipped (cannot write %s)\n", path);
        } else {
            p = peer_start(c, threads, path, o->torch_malloc);
            started = p.ok;
        }
        if (fd >= 0) unlink(path);
    }
    /* two warm-up calls (arena, BLIS buffers, optimizer state), compared with the peer's */
    r.c_v0 = step(&m);
    r.c_v1 = step(&m);
    double f0 = minor_faults();
    for (int k = 0; k < 3; k++) step(&m);
    r.c_faults = (minor_faults() - f0) / 3;
    if (p.ok) {
        r.t_v0 = bench_field(p.ready, "loss0");
        r.t_v1 = bench_field(p.ready, "loss1");
        r.t_faults = bench_field(p.ready, "faults");
    }
    static double tc[MAX_SAMPLES], tt[MAX_SAMPLES];
    bench_samples sc = BENCH_SAMPLES(tc), st = BENCH_SAMPLES(tt);
    bench_turns(o->rounds, o->reps, step_call, &m, &sc, &p, &st);
    if (started && !p.ok) printf("torch: peer failed, no timings for %s threads=%d\n", c->name, threads);
    bench_peer_stop(&p);
    bench_stats cs = bench_spread(sc.v, sc.n), ts = bench_spread(st.v, st.n);
    r.c_min = cs.min, r.c_med = cs.med, r.c_max = cs.max;
    r.t_min = ts.min, r.t_med = ts.med, r.t_max = ts.max;
    model_free(&m);
    return r;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    const opts o = parse(argc, argv);
    printf(
        "f32, ms per call, min / median / max of %d rounds x %d calls per side, the sides taking turns.\n"
        "lenet_step: LeNet-5 training step, batch 64 (conv 6@5x5 pad 2, relu, max pool, conv 16@5x5, relu,\n"
        "max pool, fc 120, 84, 10, cross-entropy, backward, SGD momentum 0.9). conv cases: conv2d forward +\n"
        "backward of sum(y), [N,C,S,S] * [O,C,K,K] (input gradient too unless it is the first layer).\n"
        "torch's malloc: %s (faults: minor page faults per call, carousel/torch).\n\n",
        o.rounds, o.reps,
        !o.torch                         ? "-"
        : strcmp(o.torch_malloc, "keep") ? "as shipped (--torch-malloc default)"
                                         : "freed memory kept (--torch-malloc keep)");
    printf("%-12s %7s %28s %28s %7s %11s  %s\n", "case", "threads", "carousel_ms min/med/max",
           "torch_ms min/med/max", "ratio", "faults", "first two values (carousel; torch)");
    result res[N_CASES * MAX_LIST];
    int n = 0;
    for (size_t k = 0; k < N_CASES; k++) {
        if (!o.use[k]) continue;
        for (int t = 0; t < o.n_threads; t++) {
            result r = measure(&o, &cases[k], (int)o.threads[t]);
            res[n++] = r;
            printf(
                "%-12s %7d %8.3f %8.3f %9.3f  %8.3f %8.3f %9.3f  %6.3f %5.0f/%-5.0f  %.7g %.7g; %.7g %.7g\n",
                r.c->name, r.threads, r.c_min, r.c_med, r.c_max, r.t_min, r.t_med, r.t_max, r.t_min / r.c_min,
                r.c_faults, r.t_faults, r.c_v0, r.c_v1, r.t_v0, r.t_v1);
        }
    }
    double worst = 0;
    for (int k = 0; k < n; k++) {
        const double c[] = {res[k].c_v0, res[k].c_v1}, t[] = {res[k].t_v0, res[k].t_v1};
        for (int j = 0; j < 2; j++)
            if (!isnan(t[j])) worst = fmax(worst, fabs(c[j] - t[j]) / fmax(fabs(t[j]), 1e-30));
    }
    printf("\nagreement: largest relative difference of the first two values: %.2e\n", worst);
    printf("ratio = torch_ms / carousel_ms of the minima (above 1: carousel is faster)\n\n");
    for (int k = 0; k < n; k++)
        printf("bench=conv case=%s threads=%d carousel_ms=%.3f torch_ms=%.3f ratio=%.3f\n", res[k].c->name,
               res[k].threads, res[k].c_min, res[k].t_min, res[k].t_min / res[k].c_min);
    return 0;
}
