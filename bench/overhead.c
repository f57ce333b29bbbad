/* bench/overhead: the per-op cost of the tape. A chain of tiny ops (add, mul,
 * tanh in turn on 1- or 4-element f32 tensors, from a leaf requiring grad),
 * forward + backward + graph clear, in CPU ns per op, beside PyTorch on the same chain.
 *
 *   ./build/bench/overhead [--ops N] [--reps N] [--size 1|4] [--no-torch] [--anomaly]
 *
 * --anomaly runs the chain with anomaly detection on (cr_set_detect_anomaly),
 * to measure what the NaN/inf scans cost.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carousel.h"

#ifndef CR_BENCH_SRCDIR
#define CR_BENCH_SRCDIR "bench"
#endif
#ifndef CR_BENCH_PYTHON
#define CR_BENCH_PYTHON "/usr/bin/python3"
#endif

/* Process CPU time: on a shared machine, wall time also counts the time
 * other processes hold the cores (the peer measures the same way). */
static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct timing {
    double fwd, bwd, clear; /* CPU ns for the whole chain */
    double wall;            /* wall ns for all three */
} timing;

/* One step: build the chain on g from leaf x, backward, clear. */
static timing one_rep(cr_graph *g, cr_tensor *x, long ops)
{
    timing t;
    cr_zero_grad(x);
    double w0 = wall_ns(), t0 = cpu_ns();
    cr_tensor *y = x;
    for (long i = 0; i < ops; i++) {
        switch (i % 3) {
        case 0: y = cr_add(y, x); break;
        case 1: y = cr_mul(y, x); break;
        default: y = cr_tanh(y); break;
        }
    }
    double t1 = cpu_ns();
    cr_backward_with(y, cr_ones(CR_F32, y->ndim, y->shape));
    double t2 = cpu_ns();
    cr_graph_clear(g);
    double t3 = cpu_ns();
    t.wall = wall_ns() - w0;
    t.fwd = t1 - t0;
    t.bwd = t2 - t1;
    t.clear = t3 - t2;
    return t;
}

/* Run the PyTorch peer; fills *ns (nan when python or torch is missing) and
 * echoes its line. */
static void run_torch(long ops, int reps, int size, double *ns)
{
    *ns = NAN;
    const char *py = getenv("CR_BENCH_PYTHON");
    if (!py || !*py) py = CR_BENCH_PYTHON;
    const char *script = CR_BENCH_SRCDIR "/overhead_torch.py";
    if (access(py, X_OK) != 0 || access(script, R_OK) != 0) {
        printf("torch: skipped (%s or %s not found)\n", py, script);
        return;
    }
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' '%s' --ops %ld --reps %d --size %d 2>&1", py, script, ops, reps, size);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("torch: skipped (popen failed)\n");
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, p)) {
        const char *k = strstr(line, "torch_ns_per_op=");
        if (k) *ns = strtod(k + strlen("torch_ns_per_op="), NULL); /* "nan" parses too */
        printf("torch: %s", line);
    }
    int st = pclose(p);
    if (st != 0) {
        printf("torch: peer exited with status %d\n", st);
        *ns = NAN;
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--ops N] [--reps N] [--size 1|4] [--no-torch] [--anomaly]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows through pipes and run targets */
    long ops = 1000000;
    int reps = 5, size = 1;
    int torch = 1, anomaly = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ops") && i + 1 < argc)
            ops = atol(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-torch"))
            torch = 0;
        else if (!strcmp(argv[i], "--anomaly"))
            anomaly = 1;
        else
            usage(argv[0]);
    }
    if (ops < 1 || reps < 1 || size < 1) usage(argv[0]);

    cr_set_num_threads(1);
    cr_set_detect_anomaly(anomaly);
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    cr_tensor *x = cr_tensor_init(CR_F32, 1, (int64_t[]){size});
    cr_fill(x, 0.5);
    cr_requires_grad(x, true);

    one_rep(g, x, ops); /* warm-up: grows the arena and the tape once */
    timing *t = cr_xmalloc((size_t)reps * sizeof *t);
    double *tot = cr_xmalloc((size_t)reps * sizeof *tot);
    int best = 0;
    for (int r = 0; r < reps; r++) {
        t[r] = one_rep(g, x, ops);
        tot[r] = t[r].fwd + t[r].bwd + t[r].clear;
        if (tot[r] < tot[best]) best = r;
    }
    double grad0 = cr_get_flat(x->grad, 0);
    double best_ns = tot[best] / (double)ops;
    qsort(tot, (size_t)reps, sizeof *tot, cmp_double);
    double median_ns = tot[reps / 2] / (double)ops;
    printf(
        "carousel: ops=%ld size=%d reps=%d%s best %.1f CPU ns/op (fwd %.1f, bwd %.1f, clear %.2f; wall %.1f), "
        "median %.1f ns/op, arena %.1f MB, grad_x0=%.6g\n",
        ops, size, reps, anomaly ? " anomaly-detection" : "", best_ns, t[best].fwd / (double)ops,
        t[best].bwd / (double)ops, t[best].clear / (double)ops, t[best].wall / (double)ops, median_ns,
        (double)cr_graph_bytes_reserved(g) / 1e6, grad0);

    double torch_ns = NAN;
    if (torch)
        run_torch(ops, reps, size, &torch_ns);
    else
        printf("torch: skipped (--no-torch)\n");

    cr_tensor_free(x);
    cr_graph_free(g);
    free(t);
    free(tot);
    printf("bench=overhead ops=%ld ns_per_op=%.1f torch_ns_per_op=%.1f ratio=%.1f\n", ops, best_ns, torch_ns,
           torch_ns / best_ns);
    return 0;
}
