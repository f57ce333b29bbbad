/* Timing helpers shared by the benchmarks: a monotonic clock, the best
 * per-call time over many short samples, which filters out the time a shared,
 * busy machine takes away (a descheduled thread shows up as a slow sample), and
 * the min / median / max of a set of samples. */
#ifndef CAROUSEL_BENCH_TIME_H
#define CAROUSEL_BENCH_TIME_H

#include <math.h>
#include <stdlib.h>
#include <time.h>

static inline double bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static inline double bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Calls fn(ctx) in samples of a batch of calls lasting about sample_ns, for
 * about budget_ns in all (at least one sample), and returns the fastest
 * sample's ns per call. */
static inline double bench_best_ns(void (*fn)(void *), void *ctx, double sample_ns, double budget_ns)
{
    double t0 = bench_now_ns();
    fn(ctx);
    double one = bench_now_ns() - t0;
    long batch = one >= sample_ns ? 1 : (long)(sample_ns / (one > 1 ? one : 1));
    if (batch < 1) batch = 1;
    double best = batch == 1 ? one : INFINITY, start = bench_now_ns();
    do {
        double s = bench_now_ns();
        for (long i = 0; i < batch; i++) fn(ctx);
        double per = (bench_now_ns() - s) / (double)batch;
        if (per < best) best = per;
    } while (bench_now_ns() - start < budget_ns);
    return best;
}

/* The spread of n samples: the smallest, the median (the upper middle one,
 * v[n/2] of the sorted samples, when n is even) and the largest; all nan when
 * n is 0. */
typedef struct bench_stats {
    double min, med, max;
} bench_stats;

static inline int bench_cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[0..n) in place and returns its spread. */
static inline bench_stats bench_spread(double *v, int n)
{
    if (n <= 0) return (bench_stats){NAN, NAN, NAN};
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return (bench_stats){v[0], v[n / 2], v[n - 1]};
}

#endif
