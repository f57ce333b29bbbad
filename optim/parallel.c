/* The data-parallel training step: a batch split into a fixed number of
 * shards, each shard's forward and backward on one thread (its own graph, its
 * own gradient buffer, the weights shared read-only), the shard gradients
 * summed in a fixed pairwise tree, then clipping and one optimizer step.
 * Results depend on the shard count, never on the thread count. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "optim_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Elements per block of the tree sum: blocks go to threads, and each block is
 * summed over the shards level by level while it sits in cache. */
#define REDUCE_BLOCK 4096

/* Auto mode: intra-op threads once the largest weight matrix has at least
 * this many elements. bench/parallel on the shared 2-core machine: replicas
 * beat intra-op on 2 threads at hidden 128 (7x) and 512 (5x; W_hh is 1M
 * elements there), a step of hundreds of fork/joins losing to busy cores, so
 * the switch sits above hidden 2048 (4H x H = 16.8M). See ARCHITECTURE.md. */
int64_t cr_trainer_intra_op_elems = (int64_t)1 << 25;

typedef struct leaf_index {
    const cr_tensor *p;
    size_t i;
} leaf_index;

/* ---- profile ----------------------------------------------------------------------
 * CR_TRAINER_PROFILE=1 in the environment at cr_trainer_init: every step
 * takes clock readings (a few dozen, ~25 ns each) and cr_trainer_free prints
 * per-step averages to stderr: where the step's time goes on the calling
 * thread, and each thread's part of the region (start latency, shard work
 * in wall and CPU time, waiting at the barrier, reducing, waiting for the
 * join). Off (one branch per phase) otherwise. */
#define PROF_THREADS 8
#define PROF_WARMUP 2 /* steps not counted: first touch of buffers, arenas, optimizer state */

/* One thread's readings for the current step, on a cache line of its own. */
typedef struct prof_thread {
    _Alignas(64) double start, shards_done, barrier_out, reduce_done, end; /* wall, s */
    double cpu_shards;                                                  /* CPU s in shards */
    int shards;
} prof_thread;

enum { PH_PRE, PH_REGION, PH_AFTER, PH_PUBLISH, PH_CLIP, PH_OPT, PH_STEP, PH_N };
static const char *const ph_name[PH_N] = {"before region", "region (fork..join)", "after region",
                                          "publish",       "clip",                "optimizer step",
                                          "whole step"};

typedef struct prof {
    prof_thread th[PROF_THREADS];
    double mark[PH_N + 1]; /* this step's phase boundaries */
    double ph[PH_N];       /* sums over steps */
    double lat[PROF_THREADS], busy[PROF_THREADS], cpu[PROF_THREADS], bwait[PROF_THREADS],
        red[PROF_THREADS], jwait[PROF_THREADS];
    long nshards[PROF_THREADS];
    int64_t steps, region_steps;
    int nth_max;
} prof;

static double now_s(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct cr_trainer {
    cr_trainer_config cfg; /* as resolved: shards, threads, mode, local range */
    cr_params *ps;
    size_t n;          /* parameters */
    cr_tensor **value; /* [n] the parameter tensors at init */
    int64_t *offset;   /* [n] first element of parameter i in a flat buffer */
    int64_t numel;     /* elements of all parameters */
    cr_dtype dtype;
    leaf_index *sorted;     /* [n] by address, for the grad hook */
    int n_local;            /* shards this trainer runs */
    cr_tensor **flat;       /* [n_local] one gradient buffer per shard, [numel] */
    cr_tensor **view;       /* [n_local * n] parameter i of shard s, a view of flat[s] */
    unsigned char *touched; /* [n_local * n] shard s reached parameter i */
    unsigned char *reached; /* [n] some local shard reached parameter i (ORed over ranks by MPI) */
    cr_graph **graph;       /* [n_local] each shard's graph */
    cr_shard *shard;        /* [n_local] this step's shards */
    cr_rng *rng;            /* [n_local] their dropout streams */
    double *loss;           /* [n_local] their losses */
    int64_t step;           /* backward passes so far: keys the dropout streams */
    /* Happens-before edges around the OpenMP region and its barrier, in C11
     * atomics that ThreadSanitizer sees (libgomp's own synchronisation is
     * not instrumented). A release/acquire pair costs nothing here. */
    atomic_int next_shard;
    atomic_int sync;
    prof *prof; /* NULL unless CR_TRAINER_PROFILE is set */
};

/* ---- configuration ------------------------------------------------------------- */

cr_trainer_config cr_trainer_defaults(void)
{
    return (cr_trainer_config){.shards = 8, .threads = 0, .mode = CR_PARALLEL_AUTO, .seed = 0};
}

const char *cr_parallel_mode_name(cr_parallel_mode m)
{
    switch (m) {
    case CR_PARALLEL_AUTO: return "auto";
    case CR_PARALLEL_REPLICAS: return "replicas";
    case CR_PARALLEL_INTRA_OP: return "intra-op";
    }
    return "?";
}

static int cmp_leaf(const void *a, const void *b)
{
    const leaf_index *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}

/* The rule of auto mode: intra-op threads pay once products are large
 * (BLIS's threads split a big product well), replicas below that. */
static cr_parallel_mode resolve_mode(const cr_trainer *t)
{
    if (t->cfg.mode != CR_PARALLEL_AUTO) return t->cfg.mode;
    int64_t biggest = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->value[i]->ndim == 2 && cr_numel(t->value[i]) > biggest) biggest = cr_numel(t->value[i]);
    return t->cfg.threads > 1 && biggest >= cr_trainer_intra_op_elems ? CR_PARALLEL_INTRA_OP
                                                                      : CR_PARALLEL_REPLICAS;
}

cr_trainer *cr_trainer_init(cr_params *ps, cr_trainer_config cfg)
{
    if (!ps) cr_error("cr_trainer_init: params is NULL");
    if (cfg.shards == 0) cfg.shards = cr_trainer_defaults().shards;
    if (cfg.shards < 1) cr_error("cr_trainer_init: shards = %d must be at least 1", cfg.shards);
    if (cfg.threads < 0)
        cr_error("cr_trainer_init: threads = %d must be >= 0 (0: all available)", cfg.threads);
    if ((unsigned)cfg.mode > (unsigned)CR_PARALLEL_INTRA_OP)
        cr_error("cr_trainer_init: mode %d is not a cr_parallel_mode", (int)cfg.mode);
    if (cfg.local_shards == 0 && cfg.first_shard == 0) cfg.local_shards = cfg.shards;
    if (cfg.first_shard < 0 || cfg.local_shards < 1 || cfg.first_shard > cfg.shards - cfg.local_shards)
        cr_error("cr_trainer_init: local shards [%d, %d + %d) do not lie in the run's %d shards",
                 cfg.first_shard, cfg.first_shard, cfg.local_shards, cfg.shards);
    if (cfg.threads == 0) cfg.threads = cr_get_num_threads();
    if (ps->n == 0) cr_error("cr_trainer_init: the parameter set is empty");

    cr_trainer *t = cr_xcalloc(1, sizeof *t);
    t->cfg = cfg;
    t->ps = ps;
    t->n = ps->n;
    t->dtype = ps->items[0].value->dtype;
    t->value = cr_xcalloc(t->n, sizeof *t->value);
    t->offset = cr_xcalloc(t->n, sizeof *t->offset);
    t->sorted = cr_xcalloc(t->n, sizeof *t->sorted);
    for (size_t i = 0; i < t->n; i++) {
        cr_tensor *v = ps->items[i].value;
        char s[128];
        if (v->dtype != t->dtype || v->dtype == CR_I32 || !cr_is_contiguous(v)) {
            cr_trainer_free(t);
            cr_error(
                "cr_trainer_init: parameter '%s' is %s %s; all must be contiguous and of one float dtype (%s)",
                ps->items[i].name, cr_dtype_name(v->dtype), cr_shape_str(s, sizeof s, v->ndim, v->shape),
                cr_dtype_name(ps->items[0].value->dtype));
        }
        t->value[i] = v;
        t->offset[i] = t->numel;
        t->numel += cr_numel(v);
        t->sorted[i] = (leaf_index){v, i};
    }
    qsort(t->sorted, t->n, sizeof *t->sorted, cmp_leaf);
    t->cfg.mode = resolve_mode(t);
    const char *pe = getenv("CR_TRAINER_PROFILE");
    if (pe && *pe && strcmp(pe, "0") != 0) {
        t->prof = aligned_alloc(64, (sizeof(prof) + 63) / 64 * 64);
        if (!t->prof) cr_error("cr_trainer_init: out of memory for the profile");
        memset(t->prof, 0, sizeof(prof));
    }

    int S = t->n_local = cfg.local_shards;
    t->flat = cr_xcalloc((size_t)S, sizeof *t->flat);
    t->view = cr_xcalloc((size_t)S * t->n, sizeof *t->view);
    t->touched = cr_xcalloc((size_t)S * t->n, 1);
    t->reached = cr_xcalloc(t->n, 1);
    t->graph = cr_xcalloc((size_t)S, sizeof *t->graph);
    t->shard = cr_xcalloc((size_t)S, sizeof *t->shard);
    t->rng = cr_xcalloc((size_t)S, sizeof *t->rng);
    t->loss = cr_xcalloc((size_t)S, sizeof *t->loss);
    for (int s = 0; s < S; s++) {
        t->flat[s] = cr_tensor_init(t->dtype, 1, (int64_t[]){t->numel});
        t->graph[s] = cr_graph_init();
        for (size_t i = 0; i < t->n; i++) {
            cr_tensor part, *v = t->value[i], *h = cr_xcalloc(1, sizeof *h);
            cr_view_narrow(&part, t->flat[s], 0, t->offset[i], cr_numel(v));
            cr_view_reshape(h, &part, v->ndim, v->shape);
            t->view[(size_t)s * t->n + i] = h;
        }
    }
    return t;
}

/* Per-step averages of the profile, in microseconds, to stderr. */
static void prof_print(const cr_trainer *t)
{
    const prof *p = t->prof;
    int64_t steps = p->steps ? p->steps : p->region_steps;
    if (steps == 0) return;
    double k = 1e6 / (double)steps;
    fprintf(stderr, "cr_trainer profile: %lld steps, %d shards, %s, up to %d threads; us per step:\n",
            (long long)steps, t->cfg.shards, cr_parallel_mode_name(t->cfg.mode), p->nth_max);
    for (int i = 0; i < PH_N; i++) fprintf(stderr, "  %-20s %10.1f\n", ph_name[i], p->ph[i] * k);
    fprintf(stderr, "  %-6s %8s %8s %8s %8s %8s %8s %8s\n", "thread", "shards", "start", "busy", "cpu",
            "barrier", "reduce", "join");
    for (int i = 0; i < p->nth_max && i < PROF_THREADS; i++)
        fprintf(stderr, "  %-6d %8.2f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f\n", i,
                (double)p->nshards[i] / (double)steps, p->lat[i] * k, p->busy[i] * k, p->cpu[i] * k,
                p->bwait[i] * k, p->red[i] * k, p->jwait[i] * k);
}

void cr_trainer_free(cr_trainer *t)
{
    if (!t) return;
    if (t->prof) {
        prof_print(t);
        free(t->prof);
    }
    for (int s = 0; s < t->n_local && t->flat; s++) {
        for (size_t i = 0; i < t->n; i++) free(t->view[(size_t)s * t->n + i]);
        cr_tensor_free(t->flat[s]);
        cr_graph_free(t->graph[s]);
    }
    free(t->value);
    free(t->offset);
    free(t->sorted);
    free(t->flat);
    free(t->view);
    free(t->touched);
    free(t->reached);
    free(t->graph);
    free(t->shard);
    free(t->rng);
    free(t->loss);
    free(t);
}

cr_parallel_mode cr_trainer_mode(const cr_trainer *t) { return t->cfg.mode; }
int cr_trainer_threads(const cr_trainer *t) { return t->cfg.threads; }
int cr_trainer_shards(const cr_trainer *t) { return t->cfg.shards; }
int64_t cr_trainer_steps(const cr_trainer *t) { return t->step; }

void cr_trainer_set_steps(cr_trainer *t, int64_t steps)
{
    if (steps < 0) cr_error("cr_trainer_set_steps: steps = %lld must be >= 0", (long long)steps);
    t->step = steps;
}

/* ---- one shard -------------------------------------------------------------------- */

typedef struct replica {
    cr_trainer *t;
    int s; /* local shard index */
} replica;

/* cr_grad_of of a persistent leaf inside a shard: the shard's buffer for it. */
static cr_tensor *shard_grad(void *ctx, const cr_tensor *leaf)
{
    const replica *r = ctx;
    const cr_trainer *t = r->t;
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->sorted[mid].p < leaf)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == t->n || t->sorted[lo].p != leaf) {
        char s[128];
        cr_error("cr_trainer_step: a persistent %s %s%s%s that requires a gradient is not in the trainer's "
                 "parameter set; shards may share only its parameters (other persistent inputs must not "
                 "require a gradient)",
                 cr_dtype_name(leaf->dtype), cr_shape_str(s, sizeof s, leaf->ndim, leaf->shape),
                 leaf->name ? " named " : "", leaf->name ? leaf->name : "");
    }
    size_t i = t->sorted[lo].i;
    t->touched[(size_t)r->s * t->n + i] = 1;
    return t->view[(size_t)r->s * t->n + i];
}

/* splitmix64's finaliser: a well-mixed 64-bit key from the run's seed, the
 * step and the shard's position in the batch. */
static uint64_t mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* Forward and backward of local shard s on this thread, into its buffer. */
static void run_shard(cr_trainer *t, const cr_task *task, int s, bool anomaly)
{
    cr_shard *sh = &t->shard[s];
    size_t bytes = (size_t)t->numel * cr_dtype_size(t->dtype);
    memset(t->flat[s]->data, 0, bytes);
    memset(t->touched + (size_t)s * t->n, 0, t->n);
    t->loss[s] = 0;
    if (sh->begin == sh->end) return; /* fewer rows than shards: nothing here */
    replica r = {t, s};
    cr_graph *old_graph = cr_graph_use(t->graph[s]);
    bool old_grad = cr_set_grad_enabled(true), old_anomaly = cr_set_detect_anomaly(anomaly);
    cr_rng *old_stream = cr_rng_use_dropout_stream(sh->rng); /* keyed by the shard, never the thread */
    cr_set_grad_hook(shard_grad, &r);
    cr_tensor *loss = task->loss(task->ctx, sh);
    char str[128];
    if (!loss || cr_numel(loss) != 1 || loss->dtype == CR_I32)
        cr_error("cr_trainer_step: the loss of shard %d is %s; it must be a one-element float tensor",
                 sh->index, loss ? cr_shape_str(str, sizeof str, loss->ndim, loss->shape) : "NULL");
    t->loss[s] = cr_item(loss);
    if (loss->requires_grad) cr_backward(loss);
    cr_set_grad_hook(NULL, NULL);
    cr_rng_use_dropout_stream(old_stream);
    cr_set_detect_anomaly(old_anomaly);
    cr_set_grad_enabled(old_grad);
    cr_graph_use(old_graph);
}

/* ---- the fixed tree ------------------------------------------------------------------ */

/* buf[s] += buf[s + w] for w = 1, 2, 4, ... and s a multiple of 2w: the
 * pairwise tree ((0+1)+(2+3))+((4+5)+(6+7)), its shape fixed by the count
 * alone. Elements [lo, hi) only. */
static void tree_sum(cr_tensor *const *buf, int n, cr_dtype dt, int64_t lo, int64_t hi)
{
    for (int w = 1; w < n; w *= 2)
        for (int s = 0; s + w < n; s += 2 * w) {
            if (dt == CR_F32) {
                float *restrict a = (float *)buf[s]->data + lo;
                const float *restrict b = (const float *)buf[s + w]->data + lo;
                for (int64_t i = 0; i < hi - lo; i++) a[i] += b[i];
            } else {
                double *restrict a = (double *)buf[s]->data + lo;
                const double *restrict b = (const double *)buf[s + w]->data + lo;
                for (int64_t i = 0; i < hi - lo; i++) a[i] += b[i];
            }
        }
}

static double tree_sum_doubles(double *x, int n)
{
    for (int w = 1; w < n; w *= 2)
        for (int s = 0; s + w < n; s += 2 * w) x[s] += x[s + w];
    return x[0];
}

/* One thread's part of a step: take shards until none is left, wait for the
 * others, then sum blocks `id`, `id + nth`, ... of the buffers. */
static void replica_body(cr_trainer *t, const cr_task *task, int id, int nth, bool anomaly)
{
    prof_thread *pt = t->prof && id < PROF_THREADS ? &t->prof->th[id] : NULL;
    double cpu0 = 0;
    if (pt) {
        pt->start = now_s(CLOCK_MONOTONIC);
        cpu0 = now_s(CLOCK_THREAD_CPUTIME_ID);
        pt->shards = 0;
    }
    for (;;) {
        int s = atomic_fetch_add_explicit(&t->next_shard, 1, memory_order_acq_rel);
        if (s >= t->n_local) break;
        run_shard(t, task, s, anomaly);
        if (pt) pt->shards++;
    }
    if (pt) {
        pt->cpu_shards = now_s(CLOCK_THREAD_CPUTIME_ID) - cpu0;
        pt->shards_done = now_s(CLOCK_MONOTONIC);
    }
    atomic_fetch_add_explicit(&t->sync, 1, memory_order_release);
#ifdef _OPENMP
    if (nth > 1) {
#pragma omp barrier
    }
#endif
    (void)atomic_load_explicit(&t->sync, memory_order_acquire);
    if (pt) pt->barrier_out = now_s(CLOCK_MONOTONIC);
    int64_t blocks = (t->numel + REDUCE_BLOCK - 1) / REDUCE_BLOCK;
    for (int64_t b = id; b < blocks; b += nth) {
        int64_t lo = b * REDUCE_BLOCK, hi = lo + REDUCE_BLOCK < t->numel ? lo + REDUCE_BLOCK : t->numel;
        tree_sum(t->flat, t->n_local, t->dtype, lo, hi);
    }
    if (pt) pt->reduce_done = now_s(CLOCK_MONOTONIC);
    atomic_fetch_add_explicit(&t->sync, 1, memory_order_release);
}

/* Sum the threads' readings of a region that ran from `fork` to `join`. */
static void prof_region(prof *p, int nth, double fork, double join)
{
    p->region_steps++;
    if (nth > p->nth_max) p->nth_max = nth;
    for (int i = 0; i < nth && i < PROF_THREADS; i++) {
        const prof_thread *q = &p->th[i];
        p->nshards[i] += q->shards;
        p->lat[i] += q->start - fork;
        p->busy[i] += q->shards_done - q->start;
        p->cpu[i] += q->cpu_shards;
        p->bwait[i] += q->barrier_out - q->shards_done;
        p->red[i] += q->reduce_done - q->barrier_out;
        p->jwait[i] += join - q->reduce_done;
    }
}

typedef struct region_args {
    cr_trainer *t;
    const cr_task *task;
    bool anomaly;
} region_args;

static pthread_mutex_t region_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(region_args *) region;

/* The body of a replica step's one parallel region (it reads no local of
 * the caller; see cr_trainer_backward). */
static void region_body(void)
{
    const region_args *a = atomic_load_explicit(&region, memory_order_acquire);
    cr_serial_begin();
#ifdef _OPENMP
    replica_body(a->t, a->task, omp_get_thread_num(), omp_get_num_threads(), a->anomaly);
#else
    replica_body(a->t, a->task, 0, 1, a->anomaly);
#endif
    cr_serial_end();
}

static void check_params(const cr_trainer *t, const char *op)
{
    if (t->ps->n != t->n)
        cr_error("%s: the parameter set has %zu parameters, %zu at cr_trainer_init", op, t->ps->n, t->n);
    for (size_t i = 0; i < t->n; i++)
        if (t->ps->items[i].value != t->value[i] || t->value[i]->dtype != t->dtype)
            cr_error("%s: parameter '%s' changed since cr_trainer_init (replaced or converted)", op,
                     t->ps->items[i].name);
}

double cr_trainer_backward(cr_trainer *t, const cr_task *task)
{
    if (!t || !task || !task->loss)
        cr_error("cr_trainer_backward: %s is NULL", !t ? "trainer" : !task ? "task" : "task->loss");
    if (task->rows < 1)
        cr_error("cr_trainer_backward: task->rows = %lld must be at least 1", (long long)task->rows);
    check_params(t, "cr_trainer_backward");
    prof *pf = t->step >= PROF_WARMUP ? t->prof : NULL;
    double m0 = pf ? now_s(CLOCK_MONOTONIC) : 0, m1 = 0, m2 = 0;
    const int S = t->cfg.shards, n = t->n_local;
    int active = 0;
    for (int s = 0; s < n; s++) {
        int g = t->cfg.first_shard + s;
        /* rows / S each, and one more for the first rows % S shards */
        int64_t q = task->rows / S, rem = task->rows % S;
        int64_t begin = g * q + (g < rem ? g : rem), end = begin + q + (g < rem);
        t->shard[s] = (cr_shard){.index = g,
                                 .shards = S,
                                 .begin = begin,
                                 .end = end,
                                 .rows = task->rows,
                                 .weight = (double)(end - begin) / (double)task->rows,
                                 .step = t->step,
                                 .rng = &t->rng[s]};
        t->rng[s] = cr_rng_seed(mix(t->cfg.seed ^ mix((uint64_t)t->step ^ mix((uint64_t)g))));
        active += begin < end;
    }
    bool anomaly = cr_detect_anomaly();
    atomic_store_explicit(&t->next_shard, 0, memory_order_relaxed);
    bool replicas = t->cfg.mode == CR_PARALLEL_REPLICAS;
    /* The configured thread count, not OpenMP's default: threads = 3 forks
     * three threads even under OMP_NUM_THREADS=1. Never a nested team. */
    bool can_fork = !cr_serial();
#ifdef _OPENMP
    can_fork = can_fork && !omp_in_parallel();
#else
    can_fork = false;
#endif
    int nth = replicas && can_fork ? (t->cfg.threads < active ? t->cfg.threads : active) : 1;
    if (replicas) cr_serial_begin(); /* no kernel of a shard forks */
    if (pf) m1 = now_s(CLOCK_MONOTONIC);
    if (nth > 1) {
        /* The region's arguments go through region_args, published with a
         * release store the workers' first action acquires, so that
         * ThreadSanitizer sees the hand-off (libgomp's is not instrumented,
         * and a block capturing locals makes the workers read the caller's
         * stack behind its back). The lock serialises trainers stepping on
         * several user threads at once; uncontended it costs ~20 ns a step. */
        pthread_mutex_lock(&region_lock);
        region_args args = {t, task, anomaly};
        atomic_store_explicit(&region, &args, memory_order_release);
#pragma omp parallel num_threads(nth)
        region_body();
        atomic_store_explicit(&region, NULL, memory_order_relaxed);
        pthread_mutex_unlock(&region_lock);
        (void)atomic_load_explicit(&t->sync, memory_order_acquire);
    } else {
        replica_body(t, task, 0, 1, anomaly);
    }
    if (pf) {
        m2 = now_s(CLOCK_MONOTONIC);
        prof_region(pf, nth, m1, m2);
    }
    if (replicas) cr_serial_end();

    /* After every shard's backward, in shard order, with the shard's graph
     * current: carried state is written once no shard still reads it. */
    if (task->after_backward) {
        for (int s = 0; s < n; s++) {
            if (t->shard[s].begin == t->shard[s].end) continue;
            cr_graph *old = cr_graph_use(t->graph[s]);
            task->after_backward(task->ctx, &t->shard[s]);
            cr_graph_use(old);
        }
    }
    for (int s = 0; s < n; s++) cr_graph_clear(t->graph[s]);
    for (size_t i = 0; i < t->n; i++) {
        t->reached[i] = 0;
        for (int s = 0; s < n; s++) t->reached[i] |= t->touched[(size_t)s * t->n + i];
    }
    t->step++;
    double total = tree_sum_doubles(t->loss, n);
    if (pf) {
        pf->ph[PH_PRE] += m1 - m0;
        pf->ph[PH_REGION] += m2 - m1;
        pf->ph[PH_AFTER] += now_s(CLOCK_MONOTONIC) - m2;
    }
    return total;
}

cr_tensor *cr_trainer_grad(cr_trainer *t) { return t->flat[0]; }
unsigned char *cr_trainer_reached(cr_trainer *t) { return t->reached; }

void cr_trainer_publish(cr_trainer *t)
{
    check_params(t, "cr_trainer_publish");
    size_t esz = cr_dtype_size(t->dtype);
    for (size_t i = 0; i < t->n; i++) {
        cr_tensor *p = t->value[i];
        if (!t->reached[i]) { /* as zero_grad + a backward that never reached it */
            if (p->grad) cr_fill(p->grad, 0);
            continue;
        }
        cr_tensor *g = cr_grad_of(p);
        if (!cr_is_contiguous(g) || g->dtype != t->dtype)
            cr_error("cr_trainer_publish: the gradient of '%s' is not a contiguous %s tensor",
                     t->ps->items[i].name, cr_dtype_name(t->dtype));
        memcpy(g->data, (char *)t->flat[0]->data + (size_t)t->offset[i] * esz, (size_t)cr_numel(p) * esz);
        cr_tensor_bump_version(g);
    }
}

cr_status cr_trainer_step(cr_trainer *t, const cr_task *task, cr_optim *opt, double max_norm, double *loss,
                          double *norm)
{
    if (!opt) cr_error("cr_trainer_step: optimizer is NULL");
    if (!(max_norm >= 0) || !isfinite(max_norm))
        cr_error("cr_trainer_step: max_norm = %g must be finite and >= 0 (0: no clipping)", max_norm);
    if (cr_optim_params(opt) != t->ps)
        cr_error("cr_trainer_step: the optimizer is over another parameter set");
    prof *pf = t->step >= PROF_WARMUP ? t->prof : NULL;
    double m0 = pf ? now_s(CLOCK_MONOTONIC) : 0, m1 = 0, m2 = 0, m3 = 0;
    double l = cr_trainer_backward(t, task);
    if (loss) *loss = l;
    /* Replicas: the step's one parallel region is behind us; the serial rest
     * (publish, clip, update) forks no more. */
    bool serial = t->cfg.mode == CR_PARALLEL_REPLICAS;
    if (serial) cr_serial_begin();
    if (pf) m1 = now_s(CLOCK_MONOTONIC);
    cr_trainer_publish(t);
    if (pf) m2 = now_s(CLOCK_MONOTONIC);
    cr_status st = CR_OK;
    if (max_norm > 0)
        st = cr_clip_grad_norm(t->ps, max_norm, norm);
    else if (norm)
        *norm = NAN;
    if (pf) m3 = now_s(CLOCK_MONOTONIC);
    if (st == CR_OK) cr_optim_step(opt);
    if (serial) cr_serial_end();
    if (pf) {
        double m4 = now_s(CLOCK_MONOTONIC);
        pf->ph[PH_PUBLISH] += m2 - m1;
        pf->ph[PH_CLIP] += m3 - m2;
        pf->ph[PH_OPT] += m4 - m3;
        pf->ph[PH_STEP] += m4 - m0;
        pf->steps++;
    }
    return st;
}
