/* bench/mpi: tokens/s of the char-LM training step (embedding 64, one LSTM
 * layer, a linear head on every step, batch 64, 64 steps, clipping, Adam)
 * over MPI ranks, against the same step on one process, and the bytes each
 * rank sends per step.
 *
 *   ./build/bench/mpi [--hidden H] [--shards S] [--steps N] [--rounds R] [--batch B] [--seq T]
 *
 * Run plainly, it is the driver: each round starts, in turn, `mpirun -np 1`
 * (one rank, one thread), `mpirun -np 2` (two ranks, one thread each) and
 * `mpirun -np 1 --bind-to none` with two OpenMP threads (cr_trainer's
 * replicas, the single-machine peer), each a fresh job running this program
 * with --child, and prints min/median/max over the rounds and the ratios.
 * Every configuration runs the same shards, so all three train the same
 * weights; the child checks that its loss after the timed steps agrees.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "carousel.h"
#include "carousel/cr_mpi.h"
#include "charlm_model.h"

#define MAX_ROUNDS 64

typedef struct opts {
    int64_t H, B, T;
    int shards, steps, rounds, threads;
    bool child, use_mpi;
} opts;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--hidden H] [--shards S] [--steps N] [--rounds R] [--batch B] [--seq T]\n"
            "  defaults: --hidden 128 --shards 8 --steps 20 --rounds 5 --batch 64 --seq 64\n",
            prog);
    exit(2);
}

static opts parse(int argc, char **argv)
{
    opts o = {.H = 128, .B = 64, .T = 64, .shards = 8, .steps = 20, .rounds = 5, .threads = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--child")) {
            o.child = true;
            continue;
        }
        if (!strcmp(a, "--mpi")) {
            o.use_mpi = true;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) usage(argv[0]);
        if (!strcmp(a, "--hidden"))
            o.H = atoll(v);
        else if (!strcmp(a, "--shards"))
            o.shards = atoi(v);
        else if (!strcmp(a, "--steps"))
            o.steps = atoi(v);
        else if (!strcmp(a, "--rounds"))
            o.rounds = atoi(v);
        else if (!strcmp(a, "--batch"))
            o.B = atoll(v);
        else if (!strcmp(a, "--seq"))
            o.T = atoll(v);
        else if (!strcmp(a, "--threads"))
            o.threads = atoi(v);
        else
            usage(argv[0]);
    }
    if (o.H < 1 || o.B < 1 || o.T < 1 || o.shards < 1 || o.steps < 1 || o.rounds < 1 ||
        o.rounds > MAX_ROUNDS || o.threads < 1)
        usage(argv[0]);
    return o;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- the child: one configuration under mpirun ------------------------------------------ */

/* A shard loss that needs no gradient: the trainer's backward does no work,
 * so a step is the exchange alone (both ranks arrive at once). */
static cr_tensor *no_loss(void *ctx, const cr_shard *s)
{
    (void)ctx, (void)s;
    return cr_zeros(CR_F32, CR_SHAPE(1));
}

static int child(opts o)
{
    int rank = 0, ranks = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    cr_set_num_threads(o.threads);
    cr_rng rng = cr_rng_seed(1);
    charlm m = charlm_make(o.B, o.T, o.H, 1.0, &rng);
    cr_params *ps = m.ps;
    cr_optim *opt = cr_adam_init(ps, cr_adam_defaults(1e-3));
    cr_trainer_config cfg = {
        .shards = o.shards, .threads = o.threads, .mode = CR_PARALLEL_REPLICAS, .seed = 1};
    cr_mpi_trainer *mt = NULL;
    cr_trainer *tr = NULL;
    if (o.use_mpi) {
        if (cr_mpi_trainer_init(MPI_COMM_WORLD, ps, cfg, &mt) != CR_OK) {
            fprintf(stderr, "bench/mpi: %s\n", cr_last_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    } else {
        tr = cr_trainer_init(ps, cfg);
    }
    cr_task task = {.rows = o.B, .loss = charlm_shard_loss, .ctx = &m};
    cr_rng data = cr_rng_seed(2);
    double *step_s = cr_xcalloc((size_t)o.steps, sizeof *step_s), exch = 0, loss = 0, norm;
    for (int k = -2; k < o.steps; k++) { /* two warm-up steps */
        charlm_fill(&m, &data);
        double t0 = MPI_Wtime();
        cr_status st = mt ? cr_mpi_trainer_step(mt, &task, opt, 5.0, &loss, &norm)
                          : cr_trainer_step(tr, &task, opt, 5.0, &loss, &norm);
        if (st != CR_OK && st != CR_NONFINITE) {
            fprintf(stderr, "bench/mpi: rank %d: %s\n", rank, cr_last_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (k >= 0) {
            step_s[k] = MPI_Wtime() - t0;
            if (mt) exch += cr_mpi_trainer_exchange_s(mt);
        }
    }
    /* The exchange alone: median over 50 steps of a task with no gradient. */
    double bare[50];
    int n_bare = mt && ranks > 1 ? 50 : 0;
    cr_task empty = {.rows = o.B, .loss = no_loss};
    for (int k = 0; k < n_bare; k++) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (cr_mpi_trainer_backward(mt, &empty, NULL) != CR_OK) MPI_Abort(MPI_COMM_WORLD, 1);
        bare[k] = cr_mpi_trainer_exchange_s(mt);
    }
    if (n_bare) qsort(bare, (size_t)n_bare, sizeof *bare, cmp_double);
    double bare_ms = n_bare ? 1e3 * bare[n_bare / 2] : 0, bare_max = 0;
    MPI_Reduce(&bare_ms, &bare_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    /* the job's step takes as long as its slowest rank: the max per step */
    double *slowest = cr_xcalloc((size_t)o.steps, sizeof *slowest);
    MPI_Reduce(step_s, slowest, o.steps, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    unsigned long long sent = mt ? cr_mpi_trainer_bytes_sent(mt) : 0, sent_all = 0;
    MPI_Reduce(&sent, &sent_all, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    double exch_max = 0;
    MPI_Reduce(&exch, &exch_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        qsort(slowest, (size_t)o.steps, sizeof *slowest, cmp_double);
        double med = slowest[o.steps / 2];
        printf(
            "child ranks=%d threads=%d step_ms=%.3f exchange_ms=%.3f bare_exchange_ms=%.3f tokens_per_s=%.0f "
            "message_bytes=%zu bytes_sent_per_step=%llu params=%zu loss=%.17g\n",
            ranks, o.threads, 1e3 * med, 1e3 * exch_max / o.steps, bare_max, (double)(o.B * o.T) / med,
            mt ? cr_mpi_trainer_message_bytes(mt) : 0, sent_all, cr_params_numel(ps), loss);
    }
    free(step_s);
    free(slowest);
    cr_mpi_trainer_free(mt);
    cr_trainer_free(tr);
    cr_optim_free(opt);
    charlm_free(&m);
    return 0;
}

/* ---- the driver ------------------------------------------------------------------------ */

typedef struct config {
    const char *name;
    int np, threads;
    bool mpi;
    const char *bind;
} config;

typedef struct result {
    double tps[MAX_ROUNDS], step_ms[MAX_ROUNDS], exch_ms[MAX_ROUNDS], bare_ms[MAX_ROUNDS];
    int n;
    size_t message, sent;
    double loss;
} result;

static bool run_child(const char *self, const opts *o, const config *c, result *r)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "mpirun -np %d %s--oversubscribe %s %s --child %s --threads %d --hidden %lld --shards %d "
             "--steps %d --batch %lld --seq %lld 2>&1",
             c->np, geteuid() == 0 ? "--allow-run-as-root " : "", c->bind, self, c->mpi ? "--mpi" : "",
             c->threads, (long long)o->H, o->shards, o->steps, (long long)o->B, (long long)o->T);
    FILE *p = popen(cmd, "r");
    if (!p) return false;
    char line[1024];
    bool got = false;
    while (fgets(line, sizeof line, p)) {
        double step_ms, exch_ms, bare_ms, tps, loss;
        size_t msg, params;
        unsigned long long sent;
        int ranks, threads;
        if (sscanf(
                line,
                "child ranks=%d threads=%d step_ms=%lf exchange_ms=%lf bare_exchange_ms=%lf tokens_per_s=%lf "
                "message_bytes=%zu bytes_sent_per_step=%llu params=%zu loss=%lf",
                &ranks, &threads, &step_ms, &exch_ms, &bare_ms, &tps, &msg, &sent, &params, &loss) == 10) {
            r->bare_ms[r->n] = bare_ms;
            r->tps[r->n] = tps;
            r->step_ms[r->n] = step_ms;
            r->exch_ms[r->n] = exch_ms;
            r->n++;
            r->message = msg;
            r->sent = (size_t)sent;
            r->loss = loss;
            got = true;
        } else {
            fputs(line, stdout);
        }
    }
    return pclose(p) == 0 && got;
}

static void stats(const double *x, int n, double *lo, double *med, double *hi)
{
    double s[MAX_ROUNDS];
    memcpy(s, x, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    *lo = s[0], *med = s[n / 2], *hi = s[n - 1];
}

int main(int argc, char **argv)
{
    opts o = parse(argc, argv);
    if (o.child) {
        MPI_Init(&argc, &argv);
        int rc = child(o);
        MPI_Finalize();
        return rc;
    }
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) return 1;
    self[len] = '\0';
    const config cfgs[] = {
        {"1 rank x 1 thread", 1, 1, true, ""},
        {"2 ranks x 1 thread", 2, 1, true, ""},
        {"1 process x 2 threads (cr_trainer)", 1, 2, false, "--bind-to none"},
    };
    enum { NCFG = sizeof cfgs / sizeof *cfgs };
    result res[NCFG] = {0};
    printf(
        "char-LM step: embedding %d, LSTM hidden %lld, head %d, batch %lld x %lld, %d shards, Adam, clip 5;\n"
        "median step of %d per job (the slowest rank's), %d rounds, configurations interleaved\n",
        EMBED, (long long)o.H, VOCAB, (long long)o.B, (long long)o.T, o.shards, o.steps, o.rounds);
    for (int round = 0; round < o.rounds; round++)
        for (int c = 0; c < NCFG; c++)
            if (!run_child(self, &o, &cfgs[c], &res[c])) {
                fprintf(stderr, "bench/mpi: the job for '%s' failed\n", cfgs[c].name);
                return 1;
            }
    double base_lo, base_med, base_hi;
    stats(res[0].tps, res[0].n, &base_lo, &base_med, &base_hi);
    printf("\n%-36s %30s %8s %9s %12s %24s %11s\n", "configuration", "tokens/s min / median / max", "vs 1",
           "step ms", "exchange ms", "bare exchange min/med/max", "bytes/step");
    for (int c = 0; c < NCFG; c++) {
        double lo, med, hi, s_lo, s_med, s_hi, e_lo, e_med, e_hi, b_lo, b_med, b_hi;
        stats(res[c].tps, res[c].n, &lo, &med, &hi);
        stats(res[c].step_ms, res[c].n, &s_lo, &s_med, &s_hi);
        stats(res[c].exch_ms, res[c].n, &e_lo, &e_med, &e_hi);
        stats(res[c].bare_ms, res[c].n, &b_lo, &b_med, &b_hi);
        printf("%-36s %9.0f / %9.0f / %9.0f %7.2fx %9.2f %12.3f %7.3f/%7.3f/%7.3f %11zu\n", cfgs[c].name, lo,
               med, hi, med / base_med, s_med, e_med, b_lo, b_med, b_hi, res[c].sent);
        printf(
            "bench=mpi config=%d ranks=%d threads=%d hidden=%lld tokens_per_s=%.0f min=%.0f max=%.0f "
            "step_ms=%.3f exchange_ms=%.3f bare_exchange_ms=%.3f message_bytes=%zu bytes_sent_per_step=%zu\n",
            c, cfgs[c].np, cfgs[c].threads, (long long)o.H, med, lo, hi, s_med, e_med, b_med, res[c].message,
            res[c].sent);
    }
    bool same = res[0].loss == res[1].loss && res[1].loss == res[2].loss;
    printf("\nsame loss after %d steps in all three: %s (%.9g)\n", o.steps + 2, same ? "yes" : "NO",
           res[0].loss);
    return same ? 0 : 1;
}
