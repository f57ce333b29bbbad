/* bench/handgrad: what autograd costs over hand-derived BPTT. One f32 LSTM
 * layer (batch 32, 64 steps, input = hidden), forward + backward of dL/dy,
 * by autograd (cr_rnn_forward, cr_backward_with) and by nn/bptt.c.
 *
 *   ./build/bench/handgrad [--hidden H[,H..]] [--threads T[,T..]] [--reps N]
 *                          [--batch B] [--steps T] [--only autograd|hand]
 *
 * --only runs one method (for a profiler: perf record ./build/bench/handgrad
 * --hidden 512 --threads 1 --only autograd); its ratio is then nan.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "carousel.h"

#define MAX_LIST 16

typedef struct opts {
    int64_t hidden[MAX_LIST];
    int n_hidden;
    int threads[MAX_LIST];
    int n_threads;
    int reps;
    int64_t B, T;
    bool run_auto, run_hand;
} opts;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--hidden H[,H..]] [--threads T[,T..]] [--reps N] [--batch B] [--steps T]\n"
            "          [--only autograd|hand]\n"
            "  --hidden and --threads may repeat; defaults: --hidden 128,512,1024\n"
            "  --threads 1,2 --reps 3 --batch 32 --steps 64\n",
            prog);
    exit(2);
}

static opts parse(int argc, char **argv)
{
    opts o = {.reps = 3, .B = 32, .T = 64, .run_auto = true, .run_hand = true};
    int64_t th[MAX_LIST];
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v || !strcmp(a, "--help") || !strcmp(a, "-h")) usage(argv[0]);
        if (!strcmp(a, "--hidden")) {
            if (!bench_list(v, o.hidden, &o.n_hidden, MAX_LIST)) usage(argv[0]);
        } else if (!strcmp(a, "--threads")) {
            if (!bench_list(v, th, &o.n_threads, MAX_LIST)) usage(argv[0]);
        } else if (!strcmp(a, "--reps"))
            o.reps = atoi(v);
        else if (!strcmp(a, "--batch"))
            o.B = atoll(v);
        else if (!strcmp(a, "--steps"))
            o.T = atoll(v);
        else if (!strcmp(a, "--only") && (!strcmp(v, "autograd") || !strcmp(v, "hand"))) {
            o.run_auto = v[0] == 'a';
            o.run_hand = v[0] == 'h';
        } else
            usage(argv[0]);
    }
    if (o.reps < 1 || o.B < 1 || o.T < 1) usage(argv[0]);
    if (!o.n_hidden) {
        const int64_t def[] = {128, 512, 1024};
        memcpy(o.hidden, def, sizeof def);
        o.n_hidden = 3;
    }
    for (int k = 0; k < o.n_threads; k++) o.threads[k] = (int)th[k];
    if (!o.n_threads) {
        o.threads[0] = 1;
        o.threads[1] = 2;
        o.n_threads = 2;
    }
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

/* ---- the layer, two ways --------------------------------------------------------- */

typedef struct layer {
    int64_t B, T, I, H;
    cr_params *ps;
    cr_rnn *m; /* autograd */
    cr_graph *g;
    cr_bptt *w;         /* hand: workspace */
    cr_bptt_weights p;  /* the same tensors as m's cell */
    cr_bptt_weights gp; /* hand gradient accumulators (autograd's live in p.*->grad) */
    cr_tensor *x;       /* (B, T, I), requires grad */
    cr_tensor *dy;      /* (B, T, H): dL/dy, the seed of both backwards */
    cr_tensor *dx;      /* (B, T, I): the hand dx */
} layer;

static cr_tensor *like(const cr_tensor *t) { return t ? cr_tensor_init(t->dtype, t->ndim, t->shape) : NULL; }

static layer layer_make(int64_t B, int64_t T, int64_t H)
{
    layer L = {.B = B, .T = T, .I = H, .H = H};
    cr_rng rng = cr_rng_seed(42);
    L.ps = cr_params_init();
    cr_rnn_config cfg = {
        .cell = &cr_cell_lstm, .input_size = L.I, .hidden_size = H, .num_layers = 1, .dtype = CR_F32};
    L.m = cr_rnn_init(L.ps, "lstm", cfg, &rng);
    L.p = cr_bptt_weights_of(&L.m->cells[0]);
    L.gp = (cr_bptt_weights){
        .w_ih = like(L.p.w_ih), .w_hh = like(L.p.w_hh), .b_ih = like(L.p.b_ih), .b_hh = like(L.p.b_hh)};
    L.x = cr_tensor_init(CR_F32, CR_SHAPE(B, T, L.I));
    L.dy = cr_tensor_init(CR_F32, CR_SHAPE(B, T, H));
    L.dx = like(L.x);
    cr_fill_uniform(L.x, &rng, -1, 1);
    cr_fill_uniform(L.dy, &rng, -1, 1);
    cr_requires_grad(L.x, true);
    L.g = cr_graph_init();
    L.w = cr_bptt_init(&cr_cell_lstm, CR_F32, B, T, L.I, H);
    return L;
}

static void layer_free(layer *L)
{
    cr_graph_free(L->g);
    cr_bptt_free(L->w);
    cr_tensor *ts[] = {L->gp.w_ih, L->gp.w_hh, L->gp.b_ih, L->gp.b_hh, L->x, L->dy, L->dx};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) cr_tensor_free(ts[k]);
    cr_rnn_free(L->m);
    cr_params_free(L->ps);
}

/* Forward, backward of dy into every weight and x, and the graph cleared. */
static void autograd_step(layer *L)
{
    cr_graph *prev = cr_graph_use(L->g);
    cr_rnn_output o = cr_rnn_forward(L->m, L->x, NULL, NULL, NULL);
    cr_backward_with(o.y, L->dy);
    cr_graph_clear(L->g);
    cr_graph_use(prev);
}

/* The same by hand: the same gradients (weights and dx). */
static void hand_step(layer *L)
{
    cr_bptt_forward(L->w, &L->p, L->x, NULL, NULL, NULL, NULL, NULL);
    cr_bptt_backward(L->w, &L->p, L->dy, NULL, NULL, &L->gp, L->dx, NULL, NULL);
}

typedef struct result {
    int64_t H;
    int threads;
    double auto_best, auto_med, hand_best, hand_med; /* ms */
    double gflop;                                    /* per forward + backward */
} result;

/* Multiply-adds of one forward + backward, as 2 flops each: the input
 * projection, T recurrent products, and backward's two products per forward one. */
static double flops(const layer *L)
{
    const double BT = (double)(L->B * L->T), G = 4.0 * (double)L->H;
    return 3 * 2 * BT * G * ((double)L->I + (double)L->H);
}

static result measure(const opts *o, int64_t H, int threads)
{
    cr_set_num_threads(threads);
    layer L = layer_make(o->B, o->T, H);
    /* Warm up both (arena chunks, BLIS packing buffers, page faults), then
     * alternate them, so a busy moment of a shared machine hits both alike. */
    if (o->run_auto) autograd_step(&L);
    if (o->run_hand) hand_step(&L);
    double *ta = malloc(sizeof(double) * (size_t)o->reps * 2), *th = ta + o->reps;
    for (int r = 0; r < o->reps; r++) {
        double t0 = now_ms();
        if (o->run_auto) autograd_step(&L);
        double t1 = now_ms();
        if (o->run_hand) hand_step(&L);
        double t2 = now_ms();
        ta[r] = o->run_auto ? t1 - t0 : NAN;
        th[r] = o->run_hand ? t2 - t1 : NAN;
    }
    qsort(ta, (size_t)o->reps, sizeof *ta, cmp_double);
    qsort(th, (size_t)o->reps, sizeof *th, cmp_double);
    result res = {.H = H,
                  .threads = threads,
                  .auto_best = ta[0],
                  .auto_med = ta[o->reps / 2],
                  .hand_best = th[0],
                  .hand_med = th[o->reps / 2],
                  .gflop = flops(&L) * 1e-9};
    free(ta);
    layer_free(&L);
    return res;
}

int main(int argc, char **argv)
{
    const opts o = parse(argc, argv);
    result res[MAX_LIST * MAX_LIST];
    int n = 0;
    printf("f32 LSTM, one layer, batch %lld, %lld steps, input = hidden; forward + backward of\n"
           "dL/dy into every weight and x. Best (median) of %d alternating runs.\n\n",
           (long long)o.B, (long long)o.T, o.reps);
    printf("%6s %7s %8s %19s %19s %7s %9s %9s\n", "hidden", "threads", "GFLOP", "autograd_ms", "hand_ms",
           "ratio", "ag_GF/s", "hand_GF/s");
    for (int h = 0; h < o.n_hidden; h++)
        for (int t = 0; t < o.n_threads; t++) {
            result r = measure(&o, o.hidden[h], o.threads[t]);
            res[n++] = r;
            printf("%6lld %7d %8.2f %9.2f (%7.2f) %9.2f (%7.2f) %7.3f %9.1f %9.1f\n", (long long)r.H,
                   r.threads, r.gflop, r.auto_best, r.auto_med, r.hand_best, r.hand_med,
                   r.auto_best / r.hand_best, r.gflop / r.auto_best * 1e3, r.gflop / r.hand_best * 1e3);
            fflush(stdout);
        }
    printf("\n");
    for (int k = 0; k < n; k++)
        printf("bench=handgrad cell=lstm hidden=%lld threads=%d autograd_ms=%.3f hand_ms=%.3f "
               "ratio=%.3f\n",
               (long long)res[k].H, res[k].threads, res[k].auto_best, res[k].hand_best,
               res[k].auto_best / res[k].hand_best);
    return 0;
}
