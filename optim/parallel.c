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

/* Elements per chunk, the unit of the work after the shards: the tree sum of
 * the shard buffers, then (cr_trainer_step) publishing, the sum of squares,
 * scaling and the update. A chunk lies inside one parameter, at multiples of
 * CHUNK from its start: that is clip.c's SQ_BLOCK, so the chunks' sums of
 * squares are cr_clip_grad_norm's blocks and the norm is its norm bit for
 * bit. Eight shard buffers of a chunk (256 KB in f32) sit in L2 while the
 * tree sums them. */
#define CHUNK CR_SQ_BLOCK

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

typedef struct chunk {
    size_t i;       /* parameter */
    int64_t lo, hi; /* its elements [lo, hi) */
} chunk;

/* What the thread running shard s writes during a step, on cache lines no
 * other shard writes (its dropout stream advances on every draw). */
typedef struct shard_slot {
    _Alignas(64) cr_rng rng;
    double loss;
} shard_slot;

/* The optimizer part of a replica step, run inside the step's region. */
typedef struct tail {
    cr_optim *opt;
    const cr_optim_rule *rule;
    const void *cfg;
    double max_norm; /* 0: no clipping */
    bool ranges;     /* the rule updates element by element, so chunks update apart */
    /* written by thread 0 in the region, read after it */
    bool serial_clip; /* a sum of squares is not finite: cr_clip_grad_norm decides after the region */
    double norm, coef;
} tail;

/* ---- profile ----------------------------------------------------------------------
 * CR_TRAINER_PROFILE=1 in the environment at cr_trainer_init: every step
 * takes clock readings (a few dozen, ~25 ns each) and cr_trainer_free prints
 * per-step averages to stderr: where the step's time goes on the calling
 * thread, and each thread's part of the region (start latency, shard work
 * in wall and CPU time, waiting at the barrier, reducing, waiting for the
 * join). CR_TRAINER_PROFILE=serial profiles the step with the optimizer
 * part after the region instead of inside it (as before), for comparison.
 * Off (one branch per phase) otherwise. */
#define PROF_THREADS 8
#define PROF_WARMUP 2 /* steps not counted: first touch of buffers, arenas, optimizer state */

/* A reading of the wall clock and of this thread's CPU clock, in seconds.
 * On a shared machine the CPU time is the instrument: wall time also holds
 * the time other processes ran on this thread's core. */
typedef struct stamp {
    double w, c;
} stamp;

static stamp stamp_now(void)
{
    struct timespec w, c;
    clock_gettime(CLOCK_MONOTONIC, &w);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c);
    return (stamp){(double)w.tv_sec + 1e-9 * (double)w.tv_nsec, (double)c.tv_sec + 1e-9 * (double)c.tv_nsec};
}

/* One thread's readings for the current step, on a cache line of its own:
 * region entry, shards done, out of the barrier, work after the shards done. */
enum { TS_START, TS_SHARDS, TS_BARRIER, TS_DONE, TS_N };
typedef struct prof_thread {
    _Alignas(64) stamp ts[TS_N];
    int shards;
} prof_thread;

enum { PH_PRE, PH_REGION, PH_AFTER, PH_TAIL, PH_STEP, PH_N };
static const char *const ph_name[PH_N] = {"before the region", "region (fork..join)", "after the region",
                                          "publish+clip+optimizer after the region", "whole step"};
/* per thread: start latency, shards, barrier, after the shards, join wait */
enum { TH_START, TH_SHARDS, TH_BARRIER, TH_AFTER, TH_JOIN, TH_N };

typedef struct prof {
    prof_thread th[PROF_THREADS];
    double ph[PH_N][2];                /* sums over steps, wall and CPU of the calling thread */
    double thr[PROF_THREADS][TH_N][2]; /* the same per thread and part of the region */
    long nshards[PROF_THREADS];
    int64_t steps, region_steps;
    int nth_max;
} prof;

static void prof_add(double *acc, stamp a, stamp b)
{
    acc[0] += b.w - a.w;
    acc[1] += b.c - a.c;
}

/* A step's end: its tail since m1 and the whole step since m0. */
static void prof_step_end(prof *pf, stamp m0, stamp m1)
{
    stamp m2 = stamp_now();
    prof_add(pf->ph[PH_TAIL], m1, m2);
    prof_add(pf->ph[PH_STEP], m0, m2);
    pf->steps++;
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
    unsigned char *touched; /* [n_local * tstride] shard s reached parameter i */
    size_t tstride;         /* n rounded up to a cache line: shards write their own lines */
    unsigned char *reached; /* [n] some local shard reached parameter i (ORed over ranks by MPI) */
    cr_graph **graph;       /* [n_local] each shard's graph */
    cr_shard *shard;        /* [n_local] this step's shards */
    shard_slot *slot;       /* [n_local] their dropout streams and losses */
    double *loss;           /* [n_local] the losses, gathered for the tree */
    int64_t n_chunks;
    chunk *chunk;    /* [n_chunks] in parameter order */
    double *part;    /* [n_chunks] sum of squares of each chunk's published gradient */
    int64_t *psteps; /* [n] the optimizer's update counts after a step in the region */
    void *cfg_copy;  /* the optimizer's config, for cr_optim_restore */
    size_t cfg_copy_size;
    int64_t step; /* backward passes so far: keys the dropout streams */
    /* Happens-before edges around the OpenMP region and its barrier, in C11
     * atomics that ThreadSanitizer sees (libgomp's own synchronisation is
     * not instrumented). A release/acquire pair costs nothing here. */
    prof *prof;       /* NULL unless CR_TRAINER_PROFILE is set */
    bool serial_tail; /* CR_TRAINER_PROFILE=serial: the old serial tail, to compare */
    /* Counters the threads take work from, on a line of their own. */
    _Alignas(64) atomic_int next_shard;
    atomic_int next_chunk, next_update;
    atomic_int sync;
    char pad[64 - 4 * sizeof(atomic_int)];
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

    /* aligned: the counters' cache line */
    cr_trainer *t = aligned_alloc(_Alignof(cr_trainer), (sizeof *t + 63) / 64 * 64);
    if (!t) cr_error("cr_trainer_init: out of memory");
    memset(t, 0, sizeof *t);
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
        t->n_chunks += (cr_numel(v) + CHUNK - 1) / CHUNK;
    }
    t->chunk = cr_xcalloc((size_t)t->n_chunks + 1, sizeof *t->chunk);
    t->part = cr_xcalloc((size_t)t->n_chunks + 1, sizeof *t->part);
    t->psteps = cr_xcalloc(t->n, sizeof *t->psteps);
    for (size_t i = 0, c = 0; i < t->n; i++)
        for (int64_t lo = 0; lo < cr_numel(t->value[i]); lo += CHUNK)
            t->chunk[c++] =
                (chunk){i, lo, lo + CHUNK < cr_numel(t->value[i]) ? lo + CHUNK : cr_numel(t->value[i])};
    qsort(t->sorted, t->n, sizeof *t->sorted, cmp_leaf);
    t->cfg.mode = resolve_mode(t);
    const char *pe = getenv("CR_TRAINER_PROFILE");
    if (pe && *pe && strcmp(pe, "0") != 0) {
        t->prof = aligned_alloc(64, (sizeof(prof) + 63) / 64 * 64);
        if (!t->prof) cr_error("cr_trainer_init: out of memory for the profile");
        memset(t->prof, 0, sizeof(prof));
        t->serial_tail = strcmp(pe, "serial") == 0;
    }

    int S = t->n_local = cfg.local_shards;
    t->flat = cr_xcalloc((size_t)S, sizeof *t->flat);
    t->view = cr_xcalloc((size_t)S * t->n, sizeof *t->view);
    t->tstride = (t->n + 63) / 64 * 64;
    t->touched = cr_xcalloc((size_t)S * t->tstride, 1);
    t->reached = cr_xcalloc(t->n, 1);
    t->graph = cr_xcalloc((size_t)S, sizeof *t->graph);
    t->shard = cr_xcalloc((size_t)S, sizeof *t->shard);
    t->slot = aligned_alloc(_Alignof(shard_slot), (size_t)S * sizeof *t->slot);
    if (!t->slot) cr_error("cr_trainer_init: out of memory");
    memset(t->slot, 0, (size_t)S * sizeof *t->slot);
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

/* Per-step averages of the profile, in microseconds (wall / CPU), to stderr. */
static void prof_print(const cr_trainer *t)
{
    const prof *p = t->prof;
    int64_t steps = p->steps ? p->steps : p->region_steps;
    if (steps == 0) return;
    double k = 1e6 / (double)steps;
    fprintf(stderr,
            "cr_trainer profile: %lld steps, %d shards, %s, up to %d threads; us per step, wall / CPU of "
            "the calling thread:\n",
            (long long)steps, t->cfg.shards, cr_parallel_mode_name(t->cfg.mode), p->nth_max);
    for (int i = 0; i < PH_N; i++)
        fprintf(stderr, "  %-40s %10.1f / %10.1f\n", ph_name[i], p->ph[i][0] * k, p->ph[i][1] * k);
    fprintf(stderr, "  per thread, wall / CPU: %6s %17s %17s %17s %17s %17s\n", "shards", "start", "shards",
            "barrier", "after shards", "join wait");
    for (int i = 0; i < p->nth_max && i < PROF_THREADS; i++) {
        fprintf(stderr, "  thread %-16d %6.2f", i, (double)p->nshards[i] / (double)steps);
        for (int j = 0; j < TH_N; j++)
            fprintf(stderr, " %8.1f/%8.1f", p->thr[i][j][0] * k, p->thr[i][j][1] * k);
        fprintf(stderr, "\n");
    }
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
    free(t->slot);
    free(t->loss);
    free(t->chunk);
    free(t->part);
    free(t->psteps);
    free(t->cfg_copy);
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
    unsigned char *tch = &t->touched[(size_t)r->s * t->tstride + i];
    if (!*tch) *tch = 1;
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
    memset(t->touched + (size_t)s * t->tstride, 0, t->n);
    t->slot[s].loss = 0;
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
    t->slot[s].loss = cr_item(loss);
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

/* ---- the work after the shards ------------------------------------------------------- */

/* After every shard's backward, in shard order, with the shard's graph
 * current: carried state is written once no shard still reads it. Then the
 * graphs are cleared and reached[] gathered. One thread. */
static void finish_shards(cr_trainer *t, const cr_task *task)
{
    const int n = t->n_local;
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
        for (int s = 0; s < n; s++) t->reached[i] |= t->touched[(size_t)s * t->tstride + i];
    }
}

/* Chunk c summed over the shards into flat[0]; with a tail, also published
 * into its parameter's ->grad (zeros where no shard reached the parameter, as
 * cr_trainer_publish) and, when clipping, its sum of squares in part[c]: the
 * loop of clip.c's sumsq (f64, element order), for the same bits. */
static void chunk_reduce(cr_trainer *t, const tail *tl, int64_t c)
{
    const chunk *k = &t->chunk[c];
    int64_t off = t->offset[k->i] + k->lo, len = k->hi - k->lo;
    tree_sum(t->flat, t->n_local, t->dtype, off, off + len);
    if (!tl) return;
    bool reached = false;
    for (int s = 0; s < t->n_local; s++) reached |= t->touched[(size_t)s * t->tstride + k->i];
    cr_tensor *g = t->value[k->i]->grad;
    size_t esz = cr_dtype_size(t->dtype);
    char *dst = (char *)g->data + (size_t)k->lo * esz;
    if (reached)
        memcpy(dst, (const char *)t->flat[0]->data + (size_t)off * esz, (size_t)len * esz);
    else
        memset(dst, 0, (size_t)len * esz);
    if (tl->max_norm == 0) return;
    double ss = 0;
    if (t->dtype == CR_F64)
        for (int64_t i = 0; i < len; i++) {
            double x = ((const double *)(const void *)dst)[i];
            ss += x * x;
        }
    else
        for (int64_t i = 0; i < len; i++) {
            double x = (double)((const float *)(const void *)dst)[i];
            ss += x * x;
        }
    t->part[c] = ss;
}

/* cr_grad_norm's arithmetic over the chunks' sums of squares: a parameter's
 * blocks in order, its norm sqrt(ss), the norms squared summed in parameter
 * order, sqrt. False when a sum is not finite: cr_clip_grad_norm then
 * rescales or reports, after the region. */
static bool chunks_norm(const cr_trainer *t, double *norm)
{
    double total = 0, ss = 0;
    for (int64_t c = 0; c < t->n_chunks; c++) {
        ss += t->part[c];
        if (c + 1 == t->n_chunks || t->chunk[c + 1].i != t->chunk[c].i) {
            if (!isfinite(ss)) return false;
            double norm_i = sqrt(ss);
            total += norm_i * norm_i;
            ss = 0;
        }
    }
    if (!isfinite(total)) return false;
    *norm = sqrt(total);
    return true;
}

/* A 1-d view of elements [lo, hi) of a contiguous tensor. */
static void range_view(cr_tensor *dst, const cr_tensor *src, int64_t lo, int64_t hi)
{
    cr_tensor whole;
    cr_view_reshape(&whole, src, 1, (int64_t[]){cr_numel(src)});
    cr_view_narrow(dst, &whole, 0, lo, hi - lo);
}

/* Elements [lo, hi) of parameter i: the gradient scaled by coef (clip.c's
 * scale_grad: x * (float)coef in f32) when below 1, then the rule's update
 * on the same range of the parameter, its gradient and its state. */
static void update_range(cr_trainer *t, const tail *tl, double coef, size_t i, int64_t lo, int64_t hi)
{
    cr_tensor *p = t->value[i], *g = p->grad;
    if (coef < 1) {
        if (t->dtype == CR_F64) {
            double *x = (double *)g->data;
            for (int64_t e = lo; e < hi; e++) x[e] = x[e] * coef;
        } else {
            float *x = (float *)g->data, cf = (float)coef;
            for (int64_t e = lo; e < hi; e++) x[e] = x[e] * cf;
        }
    }
    cr_tensor pv, gv, sv[CR_OPTIM_MAX_SLOTS], *slot[CR_OPTIM_MAX_SLOTS] = {NULL};
    range_view(&pv, p, lo, hi);
    range_view(&gv, g, lo, hi);
    for (int s = 0; s < tl->rule->n_slots; s++) {
        cr_tensor *x = cr_optim_slot(tl->opt, i, s);
        if (!x) continue;
        range_view(&sv[s], x, lo, hi);
        slot[s] = &sv[s];
    }
    tl->rule->update(tl->cfg, &pv, &gv, slot, cr_optim_param_steps_at(tl->opt, i) + 1);
}

/* Every thread's exit from a barrier of the region: a happens-before edge in
 * C11 atomics that ThreadSanitizer sees (libgomp's own synchronisation is
 * not instrumented). */
static void region_barrier(cr_trainer *t, int nth)
{
    atomic_fetch_add_explicit(&t->sync, 1, memory_order_release);
#ifdef _OPENMP
    if (nth > 1) {
#pragma omp barrier
    }
#else
    (void)nth;
#endif
    (void)atomic_load_explicit(&t->sync, memory_order_acquire);
}

/* One thread's part of a step: take shards until none is left; wait for the
 * others; take chunks to sum over the shards (thread 0 first finishes the
 * shards: callbacks, graphs). With a tail (cr_trainer_step in replica mode)
 * the chunks are also published and their sums of squares taken; after a
 * second barrier every thread derives the same norm from the sums and takes
 * chunks (or whole parameters, for a rule marked whole_tensor) to
 * scale and update. Which thread takes what changes no result: each chunk's
 * arithmetic is fixed, and the norm is summed in one order by every thread. */
static void replica_body(cr_trainer *t, const cr_task *task, tail *tl, int id, int nth, bool anomaly)
{
    prof_thread *pt = t->prof && id < PROF_THREADS ? &t->prof->th[id] : NULL;
    if (pt) {
        pt->ts[TS_START] = stamp_now();
        pt->shards = 0;
    }
    for (;;) {
        int s = atomic_fetch_add_explicit(&t->next_shard, 1, memory_order_acq_rel);
        if (s >= t->n_local) break;
        run_shard(t, task, s, anomaly);
        if (pt) pt->shards++;
    }
    if (pt) pt->ts[TS_SHARDS] = stamp_now();
    region_barrier(t, nth);
    if (pt) pt->ts[TS_BARRIER] = stamp_now();
    if (tl && id == 0) finish_shards(t, task);
    /* Without clipping an elementwise rule needs nothing from other chunks:
     * each chunk is updated right after it is summed, with no second barrier
     * (unless after_backward, still running on thread 0, may read weights). */
    bool at_once = tl && tl->max_norm == 0 && tl->ranges && !task->after_backward;
    for (;;) {
        int c = atomic_fetch_add_explicit(&t->next_chunk, 1, memory_order_relaxed);
        if (c >= t->n_chunks) break;
        chunk_reduce(t, tl, c);
        if (at_once) update_range(t, tl, 1, t->chunk[c].i, t->chunk[c].lo, t->chunk[c].hi);
    }
    if (tl && !at_once) {
        region_barrier(t, nth);
        double norm = NAN, coef = 1;
        bool clip_here = tl->max_norm > 0;
        if (clip_here && chunks_norm(t, &norm)) coef = tl->max_norm / (norm + 1e-6);
        bool update = !clip_here || !isnan(norm);
        if (id == 0) {
            tl->serial_clip = !update;
            tl->norm = norm;
            tl->coef = coef;
        }
        int units = tl->ranges ? (int)t->n_chunks : (int)t->n;
        for (;;) {
            int u = update ? atomic_fetch_add_explicit(&t->next_update, 1, memory_order_relaxed) : units;
            if (u >= units) break;
            if (tl->ranges)
                update_range(t, tl, coef, t->chunk[u].i, t->chunk[u].lo, t->chunk[u].hi);
            else
                update_range(t, tl, coef, (size_t)u, 0, cr_numel(t->value[u]));
        }
    }
    if (pt) pt->ts[TS_DONE] = stamp_now();
    atomic_fetch_add_explicit(&t->sync, 1, memory_order_release);
}

/* Sum the threads' readings of a region that ran from `fork` to `join` (the
 * calling thread's stamps; start latency and join wait in wall time only). */
static void prof_region(prof *p, int nth, stamp fork, stamp join)
{
    p->region_steps++;
    if (nth > p->nth_max) p->nth_max = nth;
    for (int i = 0; i < nth && i < PROF_THREADS; i++) {
        const prof_thread *q = &p->th[i];
        p->nshards[i] += q->shards;
        p->thr[i][TH_START][0] += q->ts[TS_START].w - fork.w;
        prof_add(p->thr[i][TH_SHARDS], q->ts[TS_START], q->ts[TS_SHARDS]);
        prof_add(p->thr[i][TH_BARRIER], q->ts[TS_SHARDS], q->ts[TS_BARRIER]);
        prof_add(p->thr[i][TH_AFTER], q->ts[TS_BARRIER], q->ts[TS_DONE]);
        p->thr[i][TH_JOIN][0] += join.w - q->ts[TS_DONE].w;
    }
}

typedef struct region_args {
    cr_trainer *t;
    const cr_task *task;
    tail *tl;
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
    replica_body(a->t, a->task, a->tl, omp_get_thread_num(), omp_get_num_threads(), a->anomaly);
#else
    replica_body(a->t, a->task, a->tl, 0, 1, a->anomaly);
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

/* cr_trainer_backward, and with a tail cr_trainer_step's whole replica step. */
static double backward_run(cr_trainer *t, const cr_task *task, tail *tl)
{
    if (!t || !task || !task->loss)
        cr_error("cr_trainer_backward: %s is NULL", !t ? "trainer" : !task ? "task" : "task->loss");
    if (task->rows < 1)
        cr_error("cr_trainer_backward: task->rows = %lld must be at least 1", (long long)task->rows);
    check_params(t, "cr_trainer_backward");
    prof *pf = t->step >= PROF_WARMUP ? t->prof : NULL;
    stamp m0 = pf ? stamp_now() : (stamp){0}, m1 = {0}, m2 = {0};
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
                                 .rng = &t->slot[s].rng};
        t->slot[s].rng = cr_rng_seed(mix(t->cfg.seed ^ mix((uint64_t)t->step ^ mix((uint64_t)g))));
        active += begin < end;
    }
    bool anomaly = cr_detect_anomaly();
    atomic_store_explicit(&t->next_shard, 0, memory_order_relaxed);
    atomic_store_explicit(&t->next_chunk, 0, memory_order_relaxed);
    atomic_store_explicit(&t->next_update, 0, memory_order_relaxed);
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
    if (pf) m1 = stamp_now();
    if (nth > 1) {
        /* The region's arguments go through region_args, published with a
         * release store the workers' first action acquires, so that
         * ThreadSanitizer sees the hand-off (libgomp's is not instrumented,
         * and a block capturing locals makes the workers read the caller's
         * stack behind its back). The lock serialises trainers stepping on
         * several user threads at once; uncontended it costs ~20 ns a step. */
        pthread_mutex_lock(&region_lock);
        region_args args = {t, task, tl, anomaly};
        atomic_store_explicit(&region, &args, memory_order_release);
#pragma omp parallel num_threads(nth)
        region_body();
        atomic_store_explicit(&region, NULL, memory_order_relaxed);
        pthread_mutex_unlock(&region_lock);
        (void)atomic_load_explicit(&t->sync, memory_order_acquire);
    } else {
        replica_body(t, task, tl, 0, 1, anomaly);
    }
    if (pf) {
        m2 = stamp_now();
        prof_region(pf, nth, m1, m2);
    }
    if (replicas) cr_serial_end();
    if (!tl) finish_shards(t, task);
    t->step++;
    for (int s = 0; s < n; s++) t->loss[s] = t->slot[s].loss;
    double total = tree_sum_doubles(t->loss, n);
    if (pf) {
        prof_add(pf->ph[PH_PRE], m0, m1);
        prof_add(pf->ph[PH_REGION], m1, m2);
        prof_add(pf->ph[PH_AFTER], m2, stamp_now());
    }
    return total;
}

double cr_trainer_backward(cr_trainer *t, const cr_task *task) { return backward_run(t, task, NULL); }

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

/* Can the optimizer part of this step run inside the region? Replica mode,
 * and every parameter already has a gradient tensor the chunks can be
 * published into (from the first step on; creating one is not for worker
 * threads) and state of its own shape. */
static bool tail_fits(const cr_trainer *t, const cr_optim *opt)
{
    if (t->cfg.mode != CR_PARALLEL_REPLICAS) return false;
    const cr_optim_rule *r = cr_optim_rule_of(opt);
    for (size_t i = 0; i < t->n; i++) {
        const cr_tensor *p = t->value[i], *g = p->grad;
        if (!g || g->dtype != t->dtype || !cr_is_contiguous(g) || cr_numel(g) != cr_numel(p)) return false;
        for (int s = 0; s < r->n_slots; s++) {
            const cr_tensor *x = cr_optim_slot(opt, i, s);
            if (x && (x->dtype != t->dtype || !cr_is_contiguous(x) || cr_numel(x) != cr_numel(p)))
                return false;
        }
    }
    return true;
}

/* After a step whose update ran in the region: what cr_trainer_publish,
 * cr_clip_grad_norm and cr_optim_step would have left besides the numbers
 * (tensor versions, the optimizer's step counts). */
static void tail_finish(cr_trainer *t, const tail *tl)
{
    const cr_optim_rule *r = tl->rule;
    for (size_t i = 0; i < t->n; i++) {
        cr_tensor *p = t->value[i];
        cr_tensor_bump_version(p->grad); /* published */
        if (tl->coef < 1) cr_tensor_bump_version(p->grad);
        cr_tensor_bump_version(p);
        for (int s = 0; s < r->n_slots; s++) {
            cr_tensor *x = cr_optim_slot(tl->opt, i, s);
            if (x) cr_tensor_bump_version(x);
        }
        t->psteps[i] = cr_optim_param_steps_at(tl->opt, i) + 1;
    }
    /* the config is passed back unchanged; restore copies it, so not from itself */
    if (t->cfg_copy_size < r->config_size) {
        free(t->cfg_copy);
        t->cfg_copy = cr_xmalloc(r->config_size);
        t->cfg_copy_size = r->config_size;
    }
    memcpy(t->cfg_copy, tl->cfg, r->config_size);
    cr_optim_restore(tl->opt, t->cfg_copy, cr_optim_steps(tl->opt) + 1, t->psteps);
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
    stamp m0 = pf ? stamp_now() : (stamp){0}, m1 = {0};
    check_params(t, "cr_trainer_step");
    cr_optim_check(opt, t->ps, "cr_trainer_step");
    if (!t->serial_tail && tail_fits(t, opt)) {
        /* Replicas, steady state: publish, clip and update inside the step's
         * one region, chunk by chunk (the serial tail was 1.2% of a step's CPU at
         * hidden 128; see ARCHITECTURE.md, Parallel training). */
        const cr_optim_rule *r = cr_optim_rule_of(opt);
        tail tl = {.opt = opt,
                   .rule = r,
                   .cfg = cr_optim_config(opt),
                   .max_norm = max_norm,
                   .ranges = !r->whole_tensor,
                   .norm = NAN,
                   .coef = 1};
        double l = backward_run(t, task, &tl);
        if (loss) *loss = l;
        if (pf) m1 = stamp_now();
        cr_status st = CR_OK;
        if (tl.serial_clip) { /* published, not scaled, not updated */
            cr_serial_begin();
            for (size_t i = 0; i < t->n; i++) cr_tensor_bump_version(t->value[i]->grad);
            st = cr_clip_grad_norm(t->ps, max_norm, norm);
            if (st == CR_OK) cr_optim_step(opt);
            cr_serial_end();
        } else {
            if (norm) *norm = tl.norm;
            tail_finish(t, &tl);
        }
        if (pf) prof_step_end(pf, m0, m1);
        return st;
    }
    double l = cr_trainer_backward(t, task);
    if (loss) *loss = l;
    /* Replicas: the step's one parallel region is behind us; the serial rest
     * (publish, clip, update) forks no more. */
    bool serial = t->cfg.mode == CR_PARALLEL_REPLICAS;
    if (serial) cr_serial_begin();
    if (pf) m1 = stamp_now();
    cr_trainer_publish(t);
    cr_status st = CR_OK;
    if (max_norm > 0)
        st = cr_clip_grad_norm(t->ps, max_norm, norm);
    else if (norm)
        *norm = NAN;
    if (st == CR_OK) cr_optim_step(opt);
    if (serial) cr_serial_end();
    if (pf) prof_step_end(pf, m0, m1);
    return st;
}
