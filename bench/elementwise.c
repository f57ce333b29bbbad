/* bench/elementwise: where OpenMP starts to pay for contiguous elementwise
 * kernels (tanh, add, the backward's acc += x*y), serial against N threads from
 * 1K to 4M f32 elements, to place cr_parallel_threshold.
 *
 *   ./build/bench/elementwise [--threads N] [--rounds N]
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_time.h"
#include "carousel.h"

typedef enum kind { K_TANH, K_ADD, K_ACC, NKIND } kind;
static const char *const kind_name[NKIND] = {"tanh", "add", "acc+=x*y"};

typedef struct job {
    kind k;
    cr_tensor *out, *x, *y;
} job;

/* Through the library's kernel (serial or parallel by cr_parallel_threshold). */
static void run_kernel(void *j_)
{
    const job *j = j_;
    switch (j->k) {
    case K_TANH: cr_k_unary(CR_U_TANH, j->out, j->x, 0, 0); break;
    case K_ADD: cr_k_binary(CR_B_ADD, j->out, j->x, j->y); break;
    default: cr_k_accumulate(j->out, j->x, j->y); break;
    }
}

/* The same arithmetic as a plain loop outside any OpenMP construct: what a
 * serial kernel costs without the parallel machinery around it. */
static void run_plain(void *j_)
{
    const job *j = j_;
    int64_t n = cr_numel(j->out);
    float *restrict o = j->out->data;
    const float *restrict x = j->x->data, *restrict y = j->y->data;
    switch (j->k) {
    case K_TANH:
        for (int64_t i = 0; i < n; i++) o[i] = tanhf(x[i]);
        break;
    case K_ADD:
        for (int64_t i = 0; i < n; i++) o[i] = x[i] + y[i];
        break;
    default:
        for (int64_t i = 0; i < n; i++) o[i] += x[i] * y[i];
        break;
    }
}

static volatile int sink;
static void region_if_false(void *p)
{
    int64_t n = *(int64_t *)p;
#pragma omp parallel if (n > 1)
    sink = 1;
}
static void region_team(void *p)
{
    (void)p;
#pragma omp parallel
    sink = 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows through pipes and run targets */
    int threads = 2, rounds = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--threads N] [--rounds N]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 2) threads = 2;
    if (rounds < 1) rounds = 1;

    /* The fixed cost of OpenMP itself. */
    int64_t one = 1;
    double r_if = INFINITY, r_team = INFINITY;
    for (int r = 0; r < rounds; r++) {
        omp_set_num_threads(threads);
        double t = bench_best_ns(region_if_false, &one, 50e3, 2e6);
        if (t < r_if) r_if = t;
        t = bench_best_ns(region_team, NULL, 50e3, 2e6);
        if (t < r_team) r_team = t;
    }
    printf(
        "openmp: empty parallel region with %d threads %.2f us; with a false if() clause (serial) %.3f us\n",
        threads, r_team / 1e3, r_if / 1e3);

    enum { NSIZE = 13 }; /* 1K .. 4M, doubling */
    int64_t sizes[NSIZE];
    for (int i = 0; i < NSIZE; i++) sizes[i] = (int64_t)1024 << i;
    int64_t maxn = sizes[NSIZE - 1];
    cr_rng rng = cr_rng_seed(7);
    cr_tensor *x = cr_tensor_init(CR_F32, 1, &maxn), *y = cr_tensor_init(CR_F32, 1, &maxn);
    cr_tensor *out = cr_tensor_init(CR_F32, 1, &maxn);
    cr_fill_uniform(x, &rng, -2, 2);
    cr_fill_uniform(y, &rng, 0.999, 1.001); /* acc += x*y stays bounded-ish */
    cr_fill(out, 0.0);

    int64_t saved = cr_parallel_threshold;
    static job jobs[NKIND][NSIZE];
    static cr_tensor views[NKIND][NSIZE][3]; /* the first n elements of out, x, y */
    static double ser[NKIND][NSIZE], plain[NKIND][NSIZE], par[NKIND][NSIZE], speedup[NKIND][NSIZE];
    for (int k = 0; k < NKIND; k++)
        for (int s = 0; s < NSIZE; s++) {
            cr_tensor *v = views[k][s];
            cr_view_narrow(&v[0], out, 0, 0, sizes[s]);
            cr_view_narrow(&v[1], x, 0, 0, sizes[s]);
            cr_view_narrow(&v[2], y, 0, 0, sizes[s]);
            jobs[k][s] = (job){(kind)k, &v[0], &v[1], &v[2]};
            ser[k][s] = plain[k][s] = par[k][s] = INFINITY;
        }
    /* Rounds outermost, so every point is sampled across the whole run. */
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < NKIND; k++)
            for (int s = 0; s < NSIZE; s++) {
                job *j = &jobs[k][s];
                cr_parallel_threshold = INT64_MAX;
                omp_set_num_threads(1);
                ser[k][s] = fmin(ser[k][s], bench_best_ns(run_kernel, j, 50e3, 2e6));
                plain[k][s] = fmin(plain[k][s], bench_best_ns(run_plain, j, 50e3, 2e6));
                cr_parallel_threshold = 0;
                omp_set_num_threads(threads);
                par[k][s] = fmin(par[k][s], bench_best_ns(run_kernel, j, 50e3, 2e6));
            }
    cr_parallel_threshold = saved;
    omp_set_num_threads(threads);
    printf("elementwise: f32 contiguous; kernel serial (threshold off), plain loop, kernel with %d threads "
           "(threshold 0); best sample of %d rounds\n",
           threads, rounds);
    printf("%-9s %9s %11s %11s %11s %8s\n", "op", "elems", "kernel_us", "plain_us", "threads_us", "speedup");
    for (int k = 0; k < NKIND; k++)
        for (int s = 0; s < NSIZE; s++) {
            speedup[k][s] = fmin(ser[k][s], plain[k][s]) / par[k][s];
            printf("%-9s %9lld %11.2f %11.2f %11.2f %8.2f\n", kind_name[k], (long long)sizes[s],
                   ser[k][s] / 1e3, plain[k][s] / 1e3, par[k][s] / 1e3, speedup[k][s]);
        }

    /* Crossover of an op: the smallest size from which the threads beat the
     * faster serial version at that size and the next two (-1: nowhere), so
     * one stalled sample at a larger size (a busy machine) does not move it.
     * The summary takes the largest over the ops: no op slower in parallel. */
    int64_t worst = 0;
    printf("crossover (smallest size from which %d threads win there and at the next two sizes):", threads);
    for (int k = 0; k < NKIND; k++) {
        int64_t c = -1;
        for (int s = 0; s < NSIZE && c < 0; s++) {
            bool wins = true;
            for (int t = s; t < s + 3 && t < NSIZE; t++) wins = wins && speedup[k][t] > 1.0;
            if (wins) c = sizes[s];
        }
        printf(" %s=%lld", kind_name[k], (long long)c);
        if (c < 0 || worst < 0)
            worst = -1;
        else if (c > worst)
            worst = c;
    }
    printf(" (current cr_parallel_threshold %lld)\n", (long long)saved);

    cr_tensor_free(x);
    cr_tensor_free(y);
    cr_tensor_free(out);
    printf("bench=elementwise crossover_elems=%lld\n", (long long)worst);
    return 0;
}
