/* bench/parallel: tokens/s of the char-LM training step (embedding 64, one
 * LSTM layer, a linear head on every step, batch 64, 64 steps, clipping by
 * global norm, Adam) through cr_trainer, in each mode on 1 and 2 threads,
 * against PyTorch with 1 and 2 threads in the same run.
 *
 *   ./build/bench/parallel [--hidden H[,H..]] [--threads T[,T..]] [--modes M[,M..]]
 *                          [--shards S] [--reps N] [--rounds R] [--batch B] [--steps T]
 *                          [--no-torch] [--forkjoin] [--paired]
 *
 * Modes: replicas (threads take shards; --shards, 8 by default), intra-op
 * (one shard, threads inside products and kernels) and auto (the rule of
 * cr_trainer_init). One PyTorch process per (hidden, threads), driven over a
 * pipe (bench/parallel_torch.py), takes turns with carousel round by round.
 * --forkjoin measures instead what one OpenMP fork/join costs here under the
 * wait policy in the environment (OMP_WAIT_POLICY, GOMP_SPINCOUNT).
 * --paired (no PyTorch) keeps one model per thread count alive and takes
 * turns between the thread counts round by round, so that each round's
 * speedup compares steps run under the same load from other processes; it
 * reports the spread of those per-round speedups and the load average.
 */
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "carousel.h"
#include "charlm_model.h"
#include "peer.h"

#define MAX_LIST 8
#define MAX_SAMPLES 4096

typedef struct opts {
    int64_t hidden[MAX_LIST];
    int n_hidden;
    int64_t threads[MAX_LIST];
    int n_threads;
    cr_parallel_mode modes[MAX_LIST];
    int n_modes;
    int shards, reps, rounds;
    int64_t B, T;
    bool torch, forkjoin, paired;
} opts;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--hidden H[,H..]] [--threads T[,T..]] [--modes M[,M..]] [--shards S]\n"
            "          [--reps N] [--rounds R] [--batch B] [--steps T] [--no-torch] [--forkjoin] [--paired]\n"
            "  defaults: --hidden 128,512 --threads 1,2 --modes replicas,intra-op,auto --shards 8\n"
            "  --reps 3 --rounds 5 --batch 64 --steps 64 (modes: replicas, intra-op, auto)\n",
            prog);
    exit(2);
}

static void parse_modes(const char *prog, const char *s, opts *o)
{
    o->n_modes = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (o->n_modes == MAX_LIST) usage(prog);
        if (len == 8 && !strncmp(s, "replicas", len))
            o->modes[o->n_modes++] = CR_PARALLEL_REPLICAS;
        else if (len == 8 && !strncmp(s, "intra-op", len))
            o->modes[o->n_modes++] = CR_PARALLEL_INTRA_OP;
        else if (len == 4 && !strncmp(s, "auto", len))
            o->modes[o->n_modes++] = CR_PARALLEL_AUTO;
        else
            usage(prog);
        s += len + (s[len] == ',');
    }
    if (o->n_modes == 0) usage(prog);
}

static opts parse(int argc, char **argv)
{
    opts o = {.hidden = {128, 512},
              .n_hidden = 2,
              .threads = {1, 2},
              .n_threads = 2,
              .modes = {CR_PARALLEL_REPLICAS, CR_PARALLEL_INTRA_OP, CR_PARALLEL_AUTO},
              .n_modes = 3,
              .shards = 8,
              .reps = 3,
              .rounds = 5,
              .B = 64,
              .T = 64,
              .torch = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-torch")) {
            o.torch = false;
            continue;
        }
        if (!strcmp(a, "--forkjoin")) {
            o.forkjoin = true;
            continue;
        }
        if (!strcmp(a, "--paired")) {
            o.paired = true;
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
        } else if (!strcmp(a, "--modes"))
            parse_modes(argv[0], v, &o);
        else if (!strcmp(a, "--shards"))
            o.shards = atoi(v);
        else if (!strcmp(a, "--reps"))
            o.reps = atoi(v);
        else if (!strcmp(a, "--rounds"))
            o.rounds = atoi(v);
        else if (!strcmp(a, "--batch"))
            o.B = atoll(v);
        else if (!strcmp(a, "--steps"))
            o.T = atoll(v);
        else
            usage(argv[0]);
    }
    if (o.shards < 1 || o.reps < 1 || o.rounds < 1 || o.B < 1 || o.T < 1 ||
        o.reps * o.rounds > MAX_SAMPLES / 4)
        usage(argv[0]);
    return o;
}

/* ---- fork/join ----------------------------------------------------------------- */

/* Microseconds per empty 2-thread region, and per region separated by `gap`
 * microseconds of serial work (what the pool threads wait through between
 * two regions of a step); the median of 5 batches. */
static void forkjoin(void)
{
    const char *wp = getenv("OMP_WAIT_POLICY"), *sc = getenv("GOMP_SPINCOUNT");
    printf("fork/join of a 2-thread OpenMP region, OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s\n",
           wp ? wp : "(unset)", sc ? sc : "(unset)");
    static const double gaps[] = {0, 10, 100, 1000};
    volatile double sink = 0;
    for (size_t g = 0; g < sizeof gaps / sizeof *gaps; g++) {
        double per[5];
        int n = gaps[g] >= 1000 ? 200 : 2000;
        for (int b = 0; b < 5; b++) {
            double busy = 0, t0 = bench_now_ms();
            for (int i = 0; i < n; i++) {
#pragma omp parallel num_threads(2)
                {
                    sink += 0; /* nothing: the cost is the fork and the join */
                }
                double s = bench_now_ms();
                while ((bench_now_ms() - s) * 1e3 < gaps[g]) {}
                busy += bench_now_ms() - s;
            }
            per[b] = (bench_now_ms() - t0 - busy) * 1e3 / n;
        }
        bench_stats st = bench_spread(per, 5);
        printf("  gap %6.0f us: %8.2f us per fork/join (min %.2f, max %.2f)\n", gaps[g], st.med, st.min,
               st.max);
        printf("bench=forkjoin gap_us=%.0f us_per_region=%.3f\n", gaps[g], st.med);
    }
}

/* ---- the carousel side ------------------------------------------------------------ */

typedef struct model {
    charlm lm;
    cr_optim *opt;
    cr_trainer *tr;
} model;

static model model_make(const opts *o, int64_t H, cr_parallel_mode mode, int threads)
{
    cr_rng rng = cr_rng_seed(1234);
    model m = {.lm = charlm_make(o->B, o->T, H, 0.0, &rng)};
    m.opt = cr_adam_init(m.lm.ps, cr_adam_defaults(1e-3));
    int shards = mode == CR_PARALLEL_INTRA_OP ? 1 : mode == CR_PARALLEL_AUTO ? 0 : o->shards;
    m.tr = cr_trainer_init(m.lm.ps, (cr_trainer_config){.shards = shards, .threads = threads, .mode = mode});
    return m;
}

static void model_free(model *m)
{
    cr_trainer_free(m->tr);
    cr_optim_free(m->opt);
    charlm_free(&m->lm);
}

static double train_step(model *m, double *norm)
{
    cr_task task = {.rows = m->lm.B, .loss = charlm_shard_loss, .ctx = &m->lm};
    double loss, n;
    cr_trainer_step(m->tr, &task, m->opt, 5.0, &loss, &n);
    if (norm) *norm = n;
    return loss;
}

/* The data, then the weights in torch's order, raw little-endian. */
static int write_tensors(const model *m, FILE *f)
{
    const cr_cell *c = &m->lm.lstm->cells[0];
    const cr_tensor *ts[] = {m->lm.x,
                             m->lm.y,
                             m->lm.emb.weight,
                             cr_cell_get(c, "w_ih"),
                             cr_cell_get(c, "w_hh"),
                             cr_cell_get(c, "b_ih"),
                             cr_cell_get(c, "b_hh"),
                             m->lm.head.weight,
                             m->lm.head.bias};
    for (size_t k = 0; k < sizeof ts / sizeof *ts; k++) {
        size_t count = (size_t)cr_numel(ts[k]);
        if (!cr_is_contiguous(ts[k]) || fwrite(ts[k]->data, cr_dtype_size(ts[k]->dtype), count, f) != count)
            return -1;
    }
    return 0;
}

/* ---- the PyTorch peer ------------------------------------------------------------- */

/* Start the peer on the data file and wait for its "ready" line. The peer
 * gets OMP_NUM_THREADS and BLIS_NUM_THREADS = threads (torch.set_num_threads
 * does not reach the BLIS that Debian's torch calls), and BLIS_ARCH_TYPE as
 * carousel set it in this process (tensor/gemm.c, on Zen 5). */
static bench_peer peer_start(const model *m, int threads, const char *path)
{
    char a[5][32];
    snprintf(a[0], 32, "%lld", (long long)m->lm.B);
    snprintf(a[1], 32, "%lld", (long long)m->lm.T);
    snprintf(a[2], 32, "%lld", (long long)m->lm.H);
    snprintf(a[3], 32, "%d", threads);
    snprintf(a[4], 32, "%d", VOCAB);
    const char *args[] = {"--file", path,        "--batch", a[0],      "--steps", a[1], "--hidden",
                          a[2],     "--threads", a[3],      "--vocab", a[4],      NULL};
    return bench_peer_start((bench_peer_config){.script = "parallel_torch.py",
                                                .args = args,
                                                .threads = threads,
                                                .omp = true,
                                                .echo_every_ready = true});
}

static void step_call(void *m) { train_step(m, NULL); }

/* ---- measurements ------------------------------------------------------------------- */

/* Step times (ms) to tokens/s: the fastest step is the highest rate. */
static bench_stats rate(const bench_samples *ms, double tokens)
{
    bench_stats s = bench_spread(ms->v, ms->n);
    return (bench_stats){tokens * 1e3 / s.max, tokens * 1e3 / s.med, tokens * 1e3 / s.min};
}

/* ---- paired turns --------------------------------------------------------------------- */

static double loadavg1(void)
{
    double l = NAN;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = NAN;
        fclose(f);
    }
    return l;
}

/* For each hidden size and mode: one model per thread count, the thread
 * counts taking turns (order alternating) for o->rounds rounds of o->reps
 * steps. A round's speedup is the 1-thread median step time of that round
 * over the T-thread one. */
static void paired(const opts *o)
{
    double tokens = (double)(o->B * o->T);
    printf("paired turns: %d rounds x %d steps per thread count; load average %.2f at the start\n", o->rounds,
           o->reps, loadavg1());
    static double ms[MAX_LIST][MAX_SAMPLES];
    static double ratio[MAX_LIST][MAX_SAMPLES];
    for (int h = 0; h < o->n_hidden; h++)
        for (int mi = 0; mi < o->n_modes; mi++) {
            model m[MAX_LIST];
            int nt = o->n_threads;
            for (int ti = 0; ti < nt; ti++) {
                cr_set_num_threads((int)o->threads[ti]);
                m[ti] = model_make(o, o->hidden[h], o->modes[mi], (int)o->threads[ti]);
                train_step(&m[ti], NULL);
                train_step(&m[ti], NULL);
            }
            double l0 = loadavg1();
            for (int r = 0; r < o->rounds; r++) {
                double med[MAX_LIST];
                for (int k = 0; k < nt; k++) {
                    int ti = r & 1 ? nt - 1 - k : k;
                    cr_set_num_threads((int)o->threads[ti]);
                    double one[MAX_SAMPLES];
                    for (int s = 0; s < o->reps; s++) {
                        double t0 = bench_now_ms();
                        train_step(&m[ti], NULL);
                        one[s] = ms[ti][r * o->reps + s] = bench_now_ms() - t0;
                    }
                    med[ti] = bench_spread(one, o->reps).med;
                }
                for (int ti = 0; ti < nt; ti++) ratio[ti][r] = med[0] / med[ti];
            }
            double l1 = loadavg1();
            for (int ti = 0; ti < nt; ti++) {
                bench_stats st = bench_spread(ms[ti], o->rounds * o->reps);
                bench_stats sp = bench_spread(ratio[ti], o->rounds);
                printf(
                    "hidden=%lld mode=%s (%s) threads=%lld: %.0f / %.0f / %.0f tokens/s; per-round speedup "
                    "against threads=%lld %.2f / %.2f / %.2f (min / median / max); load %.2f..%.2f\n",
                    (long long)o->hidden[h], cr_parallel_mode_name(o->modes[mi]),
                    cr_parallel_mode_name(cr_trainer_mode(m[ti].tr)), (long long)o->threads[ti],
                    tokens * 1e3 / st.max, tokens * 1e3 / st.med, tokens * 1e3 / st.min,
                    (long long)o->threads[0], sp.min, sp.med, sp.max, l0, l1);
                printf(
                    "bench=parallel_paired mode=%s hidden=%lld threads=%lld tokens_per_s=%.0f speedup=%.3f "
                    "speedup_min=%.3f speedup_max=%.3f load=%.2f\n",
                    cr_parallel_mode_name(o->modes[mi]), (long long)o->hidden[h], (long long)o->threads[ti],
                    tokens * 1e3 / st.med, sp.med, sp.min, sp.max, (l0 + l1) / 2);
            }
            for (int ti = 0; ti < nt; ti++) model_free(&m[ti]);
        }
}

typedef struct result {
    int64_t H;
    int threads;
    cr_parallel_mode mode; /* as asked */
    const char *resolved;
    int shards;
    bench_stats c, t; /* tokens/s */
    double c_loss0, t_loss0;
} result;

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    const opts o = parse(argc, argv);
    if (o.forkjoin) {
        forkjoin();
        return 0;
    }
    if (o.paired) {
        paired(&o);
        return 0;
    }
    double tokens = (double)(o.B * o.T);
    printf(
        "char-LM training step: embedding %d, LSTM, head to %d classes on every step, batch %lld, %lld steps,\n"
        "clip 5, Adam. tokens/s: min / median / max over %d rounds x %d steps per side, carousel and\n"
        "PyTorch taking turns. speedup: against the same mode on 1 thread.\n\n",
        EMBED, VOCAB, (long long)o.B, (long long)o.T, o.rounds, o.reps);
    result res[MAX_LIST * MAX_LIST * MAX_LIST];
    int nres = 0;
    static double tc[MAX_SAMPLES], tt[MAX_SAMPLES];
    for (int h = 0; h < o.n_hidden; h++)
        for (int ti = 0; ti < o.n_threads; ti++) {
            int threads = (int)o.threads[ti];
            cr_set_num_threads(threads);
            bench_peer p = BENCH_PEER_NONE;
            bench_samples st = BENCH_SAMPLES(tt);
            for (int mi = 0; mi < o.n_modes; mi++) {
                model m = model_make(&o, o.hidden[h], o.modes[mi], threads);
                if (mi == 0 && o.torch) {
                    char path[] = "/tmp/cr_bench_parallel_XXXXXX";
                    int fd = mkstemp(path);
                    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
                    if (!f || write_tensors(&m, f) != 0 || fclose(f) != 0)
                        printf("torch: skipped (cannot write %s)\n", path);
                    else
                        p = peer_start(&m, threads, path);
                    if (fd >= 0) unlink(path);
                }
                result r = {.H = o.hidden[h],
                            .threads = threads,
                            .mode = o.modes[mi],
                            .resolved = cr_parallel_mode_name(cr_trainer_mode(m.tr)),
                            .shards = cr_trainer_shards(m.tr),
                            .t_loss0 = bench_field(p.ready, "loss0")};
                r.c_loss0 = train_step(&m, NULL); /* warm-up: arenas, packing buffers, optimizer state */
                train_step(&m, NULL);
                bench_samples sc = BENCH_SAMPLES(tc);
                bench_turns(o.rounds, o.reps, step_call, &m, &sc, &p, &st);
                r.c = rate(&sc, tokens);
                res[nres++] = r;
                model_free(&m);
                printf("hidden=%lld threads=%d mode=%s (%s, %d shards): %.0f / %.0f / %.0f tokens/s\n",
                       (long long)r.H, threads, cr_parallel_mode_name(r.mode), r.resolved, r.shards, r.c.min,
                       r.c.med, r.c.max);
            }
            bench_stats ts = rate(&st, tokens);
            for (int k = nres - o.n_modes; k < nres; k++) res[k].t = ts;
            printf("hidden=%lld threads=%d torch: %.0f / %.0f / %.0f tokens/s\n", (long long)o.hidden[h],
                   threads, ts.min, ts.med, ts.max);
            bench_peer_stop(&p);
        }

    printf("\n%6s %7s %-9s %-9s %6s %29s %29s %8s %9s\n", "hidden", "threads", "mode", "runs as", "shards",
           "carousel tok/s min/med/max", "torch tok/s min/med/max", "speedup", "vs torch");
    for (int k = 0; k < nres; k++) {
        const result *r = &res[k];
        double one = NAN;
        for (int j = 0; j < nres; j++)
            if (res[j].H == r->H && res[j].mode == r->mode && res[j].threads == 1) one = res[j].c.med;
        printf("%6lld %7d %-9s %-9s %6d %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %8.2f %9.2f\n", (long long)r->H,
               r->threads, cr_parallel_mode_name(r->mode), r->resolved, r->shards, r->c.min, r->c.med,
               r->c.max, r->t.min, r->t.med, r->t.max, r->c.med / one, r->c.med / r->t.med);
    }
    double worst = 0;
    for (int k = 0; k < nres; k++)
        if (!isnan(res[k].t_loss0))
            worst = fmax(worst, fabs(res[k].c_loss0 - res[k].t_loss0) / fabs(res[k].t_loss0));
    printf("\nagreement: largest relative difference of the first loss (same weights and data): %.2e\n\n",
           worst);
    for (int k = 0; k < nres; k++) {
        const result *r = &res[k];
        double one = NAN;
        for (int j = 0; j < nres; j++)
            if (res[j].H == r->H && res[j].mode == r->mode && res[j].threads == 1) one = res[j].c.med;
        printf("bench=parallel mode=%s hidden=%lld threads=%d tokens_per_s=%.0f torch_tokens_per_s=%.0f "
               "speedup=%.3f\n",
               cr_parallel_mode_name(r->mode), (long long)r->H, r->threads, r->c.med, r->t.med,
               r->c.med / one);
    }
    return 0;
}
