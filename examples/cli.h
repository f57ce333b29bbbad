/* Shared by the example programs: flags read from a table (with --help that
 * lists them and their defaults), a monotonic clock, the progress line (a
 * bar redrawn in place on a terminal, plain periodic lines otherwise), and
 * the training block of an example (cli_training: the common flags, Adam,
 * optim.h's data-parallel trainer, the schedule, the graph) whose step is
 * written as "the loss of one shard of the batch". */
#ifndef CAROUSEL_EXAMPLES_CLI_H
#define CAROUSEL_EXAMPLES_CLI_H

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define CLI_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CLI_PRINTF(f, a)
#endif

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- flags ------------------------------------------------------------------------------------ */

/* A flag and where its value goes: CLI_INT an int64_t, CLI_REAL a double,
 * CLI_STR a const char *, CLI_BOOL a bool (a switch, takes no value). The
 * value the variable holds when cli_parse starts is the default --help shows:
 *
 *     opts o = {.steps = 1000, .lr = 1e-2};
 *     cli_flag flags[] = {{"--steps", CLI_INT, &o.steps, "training steps"},
 *                         {"--lr", CLI_REAL, &o.lr, "Adam's learning rate"}};
 *     cli_parse(argc, argv, "what the program shows", "--quick: ...", flags, CLI_COUNT(flags));
 */
typedef enum cli_kind { CLI_INT, CLI_REAL, CLI_STR, CLI_BOOL } cli_kind;
typedef struct cli_flag {
    const char *name; /* "--steps" */
    cli_kind kind;
    void *value;
    const char *help;
} cli_flag;
#define CLI_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static inline void cli_help(FILE *f, const char *prog, const char *about, const char *notes,
                            const cli_flag *fl, int n)
{
    static const char *const meta[] = {" N", " X", " S", ""};
    fprintf(f, "usage: %s [flags]\n%s\n\nflags [default]:\n", prog, about);
    for (int i = 0; i < n; i++) {
        char arg[96];
        snprintf(arg, sizeof arg, "%s%s", fl[i].name, meta[fl[i].kind]);
        fprintf(f, "  %-20s %s", arg, fl[i].help);
        switch (fl[i].kind) {
        case CLI_INT: fprintf(f, " [%lld]\n", (long long)*(int64_t *)fl[i].value); break;
        case CLI_REAL: fprintf(f, " [%g]\n", *(double *)fl[i].value); break;
        case CLI_STR: {
            const char *s = *(const char **)fl[i].value;
            fprintf(f, " [%s]\n", s ? s : "none");
            break;
        }
        case CLI_BOOL: fprintf(f, "\n"); break;
        }
    }
    fprintf(f, "  %-20s this text\n", "--help");
    if (notes && *notes) fprintf(f, "\n%s\n", notes);
}

/* A malformed command line: the reason on stderr, exit 2. */
static inline void cli_fail(const char *prog, const char *fmt, ...) CLI_PRINTF(2, 3);
static inline void cli_fail(const char *prog, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (--help lists the flags)\n");
    va_end(ap);
    exit(2);
}

/* Fill the table's variables from argv. --help prints the flags and exits 0;
 * an unknown flag, a missing or malformed value ("5x", "") exits 2. */
static inline void cli_parse(int argc, char **argv, const char *about, const char *notes, const cli_flag *fl,
                             int n)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cli_help(stdout, argv[0], about, notes, fl, n);
            exit(0);
        }
    }
    for (int i = 1; i < argc; i++) {
        const cli_flag *f = NULL;
        for (int k = 0; k < n && !f; k++)
            if (!strcmp(argv[i], fl[k].name)) f = &fl[k];
        if (!f) cli_fail(argv[0], "unknown flag '%s'", argv[i]);
        if (f->kind == CLI_BOOL) {
            *(bool *)f->value = true;
            continue;
        }
        if (i + 1 >= argc) cli_fail(argv[0], "%s needs a value", f->name);
        const char *v = argv[++i];
        char *end;
        errno = 0;
        if (f->kind == CLI_INT) {
            long long x = strtoll(v, &end, 10);
            if (errno || end == v || *end) cli_fail(argv[0], "%s: '%s' is not an integer", f->name, v);
            *(int64_t *)f->value = (int64_t)x;
        } else if (f->kind == CLI_REAL) {
            double x = strtod(v, &end);
            if (errno || end == v || *end || !isfinite(x))
                cli_fail(argv[0], "%s: '%s' is not a number", f->name, v);
            *(double *)f->value = x;
        } else {
            *(const char **)f->value = v;
        }
    }
}

/* Is the switch `name` on the command line? (To pick a mode's defaults
 * before cli_parse, so that explicit flags still override them.) */
static inline bool cli_has(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], name)) return true;
    return false;
}

/* ---- progress ---------------------------------------------------------------------------------- */

/* The line a training loop updates after every step. On a terminal (stdout
 * is a tty) it is a bar redrawn in place, at most ten times a second:
 *     [###########---------]  55% 550/1000  loss=0.0123  8.1k seq/s  0:04 left
 * Otherwise (a pipe, a file, meson test) a plain line at every tenth of the
 * run, which logs and scripts can read:
 *     step=550/1000 loss=0.0123 seq_per_s=8100 elapsed_s=5.0 left_s=4.1 */
typedef struct progress {
    int64_t total;    /* steps */
    const char *unit; /* what the throughput counts: "seq", "tok" */
    double t0, drawn; /* start, last redraw */
    bool tty;
} progress;

static inline progress progress_start(int64_t total, const char *unit)
{
    progress p = {.total = total, .unit = unit, .t0 = now_s(), .drawn = -1, .tty = isatty(STDOUT_FILENO)};
    return p;
}

static inline double progress_elapsed(const progress *p) { return now_s() - p->t0; }

static inline void progress_clock(char *buf, size_t len, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

/* After step `step` (1..total), with `items` units processed so far; the
 * rest of the line (loss, accuracy) in printf form. */
static inline void progress_update(progress *p, int64_t step, int64_t items, const char *fmt, ...)
    CLI_PRINTF(4, 5);
static inline void progress_update(progress *p, int64_t step, int64_t items, const char *fmt, ...)
{
    double t = now_s(), el = t - p->t0;
    bool last = step >= p->total;
    int64_t every = p->total >= 10 ? p->total / 10 : 1;
    if (p->tty ? (!last && t - p->drawn < 0.1) : (step % every && !last)) return;
    p->drawn = t;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    double rate = el > 0 ? (double)items / el : 0;
    double left = step > 0 ? el * (double)(p->total - step) / (double)step : 0;
    if (!p->tty) {
        printf("step=%lld/%lld %s %s_per_s=%.0f elapsed_s=%.1f left_s=%.1f\n", (long long)step,
               (long long)p->total, msg, p->unit, rate, el, left);
        fflush(stdout);
        return;
    }
    enum { W = 20 };
    int64_t total = p->total > 0 ? p->total : 1;
    char bar[W + 1], clock[32];
    for (int i = 0; i < W; i++) bar[i] = i < (int)(W * step / total) ? '#' : '-';
    bar[W] = 0;
    progress_clock(clock, sizeof clock, last ? el : left);
    const char *k = rate >= 1e6 ? "M" : rate >= 1e3 ? "k" : "";
    double r = rate >= 1e6 ? rate / 1e6 : rate >= 1e3 ? rate / 1e3 : rate;
    printf("\r[%s] %3d%% %lld/%lld  %s  %.1f%s %s/s  %s %s\033[K", bar, (int)(100 * step / total),
           (long long)step, (long long)p->total, msg, r, k, p->unit, clock, last ? "total" : "left");
    if (last) putchar('\n');
    fflush(stdout);
}

/* ---- one training step on every core ----------------------------------------------------------- */

#ifdef CAROUSEL_H
/* The loss of one shard of the current batch, rows [s->begin, s->end),
 * scaled so that the shards' losses add up to the batch's loss (a mean over
 * the batch is the sum over the shard's items divided by the batch size, or
 * the shard's mean times s->weight). It builds its graph from the shared,
 * read-only weights and the batch, and returns a one-element tensor. It runs
 * on one of the trainer's threads, so it writes nothing shared (a per-shard
 * output goes into an array indexed by s->index) and draws random numbers
 * only from s->rng (dropout does so by itself): then the run is the same on
 * any thread count. */
typedef cr_tensor *(*shard_loss_fn)(void *ctx, const cr_shard *s);

/* --threads: 0 is every core (or OMP_NUM_THREADS). Resolve it before the
 * program sets its own kernel thread count (cr_set_num_threads(1)), which
 * changes what cr_get_num_threads reports. */
static inline int64_t cli_threads(int64_t threads) { return threads > 0 ? threads : cr_get_num_threads(); }

/* ---- the training block of an example ------------------------------------------------------- */

/* What every training example sets up around its model: the common flags,
 * their checks, the random streams, Adam, the trainer, the learning-rate
 * schedule and the graph. The example sets the defaults, lists the common
 * rows where it wants them in its own table (CLI_TRAINING_FLAG: the row's
 * name and help, NULL for the usual help) and keeps its own rows:
 *
 *     cli_training t = {.steps = 600, .hidden = 8, .batch = 64, .shards = 4, .seed = 1,
 *                       .lr = 1e-2, .clip = 1.0, .decay = 20};
 *     cli_flag flags[] = {CLI_TRAINING_FLAG("--steps", NULL),
 *                         {"--len", CLI_INT, &len, "string length"},
 *                         CLI_TRAINING_FLAG("--batch", "strings per batch"), ...};
 *     cli_training_parse(&t, argc, argv, "what it shows", NULL, flags, CLI_COUNT(flags));
 *     cli_training_check(&t, argv[0], len < 1, "a size or rate out of range");
 *     ... the model, its weights drawn from t.rng ...
 *     cli_training_start(&t, ps);
 *     for (int64_t k = 0; k < t.steps; k++) loss = cli_training_step(&t, k, shard_loss, &ctx);
 *     cli_training_free(&t);
 *
 * A field without its row (no --clip, say) keeps the example's constant. */
typedef struct cli_training {
    /* the flags */
    const char *cell; /* --cell: a built-in cell (NULL: the example has no --cell) */
    int64_t steps, hidden, batch, shards, threads, seed;
    double lr, clip; /* Adam's learning rate; the global norm clipped to (0: off) */
    bool quick;
    /* The learning rate: a linear warm-up over the first steps / 20 when
     * warmup is set, then a cosine from lr down to lr / decay at the last
     * step; decay 0 keeps lr throughout. */
    bool warmup;
    double decay;
    /* set by cli_training_parse and cli_training_check */
    const cr_cell_type *cell_type; /* --cell's */
    cr_rng rng, data;              /* the weights' stream (seed) and the data's (seed ^ 0xda7a) */
    /* made by cli_training_start, freed by cli_training_free */
    cr_optim *opt;
    cr_trainer *tr;
    cr_schedule sched;
    cr_graph *g, *prev; /* the step's graph, made current; the one it replaced */
} cli_training;

/* The training block's settings the small examples share, as designated
 * initializers inside a cli_training: 4 shards (the results do not depend on
 * the thread count), one thread under --quick (meson test runs several
 * examples at once, every core otherwise), seed 1, clipping at norm 1, a
 * cosine decay to lr / 20. The example adds its cell, steps, sizes, lr and
 * warm-up. */
#define CLI_TRAINING_COMMON(quick_)                                                                          \
    .shards = 4, .threads = (quick_) ? 1 : 0, .seed = 1, .clip = 1.0, .decay = 20, .quick = (quick_)

/* A row of the example's table whose variable is a field of cli_training:
 * cli_training_parse fills in its kind and variable, and the usual help
 * where `help` is NULL. */
#define CLI_TRAINING_FLAG(name, help) ((cli_flag){name, CLI_INT, NULL, help})

/* Bind the table's CLI_TRAINING_FLAG rows to t, read argv (cli_parse), and
 * look --cell up among the built-in cells (exit 2 if it is none). */
static inline void cli_training_parse(cli_training *t, int argc, char **argv, const char *about,
                                      const char *notes, cli_flag *fl, int n)
{
    static const struct {
        const char *name;
        cli_kind kind;
        size_t offset;
        const char *help; /* NULL: each example says its own */
    } rows[] = {
        {"--cell", CLI_STR, offsetof(cli_training, cell), NULL},
        {"--steps", CLI_INT, offsetof(cli_training, steps), "training steps (batches)"},
        {"--hidden", CLI_INT, offsetof(cli_training, hidden), "hidden units"},
        {"--batch", CLI_INT, offsetof(cli_training, batch), NULL},
        {"--shards", CLI_INT, offsetof(cli_training, shards), "shards per batch (the unit of parallel work)"},
        {"--threads", CLI_INT, offsetof(cli_training, threads),
         "threads taking the shards (0: OMP_NUM_THREADS, else every core)"},
        {"--lr", CLI_REAL, offsetof(cli_training, lr), "Adam's learning rate"},
        {"--clip", CLI_REAL, offsetof(cli_training, clip),
         "clip the gradient's global norm to this (0: off)"},
        {"--seed", CLI_INT, offsetof(cli_training, seed), "seed of weights and data"},
        {"--quick", CLI_BOOL, offsetof(cli_training, quick), NULL},
    };
    for (int i = 0; i < n; i++) {
        if (fl[i].value) continue;
        int r = 0;
        while (r < CLI_COUNT(rows) && strcmp(fl[i].name, rows[r].name)) r++;
        if (r == CLI_COUNT(rows))
            cr_error("cli_training_parse: %s is not a flag of cli_training", fl[i].name);
        if (!fl[i].help && !rows[r].help)
            cr_error("cli_training_parse: %s needs the example's help", fl[i].name);
        fl[i].kind = rows[r].kind;
        fl[i].value = (char *)t + rows[r].offset;
        if (!fl[i].help) fl[i].help = rows[r].help;
    }
    cli_parse(argc, argv, about, notes, fl, n);
    if (t->cell && !(t->cell_type = cr_cell_builtin(t->cell)))
        cli_fail(argv[0], "--cell: no built-in cell '%s'", t->cell);
}

/* Exit 2 with `msg` if the example's own flags are `out_of_range` or a
 * common one is. Then settle the run: --threads 0 becomes the core count,
 * the kernels go to one thread (on tensors this small threading loses more
 * than it gains: the trainer's threads take whole shards instead), and the
 * weights' and data's streams are seeded. */
static inline void cli_training_check(cli_training *t, const char *prog, bool out_of_range, const char *msg)
{
    if (out_of_range || t->steps < 1 || t->hidden < 1 || t->batch < 1 || t->shards < 1 ||
        t->shards > t->batch || t->threads < 0 || t->threads > 1024 || !(t->lr > 0) || t->clip < 0)
        cli_fail(prog, "%s", msg);
    t->threads = cli_threads(t->threads); /* before cr_get_num_threads reports 1 */
    cr_set_num_threads(1);
    t->rng = cr_rng_seed((uint64_t)t->seed);
    t->data = cr_rng_seed((uint64_t)t->seed ^ 0xda7a);
}

/* Adam on ps, the trainer (`shards` shards per batch, part of the run: the
 * results depend on it; taken by `threads` threads, not part of the run;
 * `seed` keying the shards' random streams; it prints its threads, shards
 * and mode), the schedule, and a graph made current. */
static inline void cli_training_start(cli_training *t, cr_params *ps)
{
    t->opt = cr_adam_init(ps, cr_adam_defaults(t->lr));
    cr_trainer_config cfg = {.shards = (int)t->shards, .threads = (int)t->threads, .seed = (uint64_t)t->seed};
    t->tr = cr_trainer_init(ps, cfg);
    printf("threads=%d shards=%d mode=%s\n", cr_trainer_threads(t->tr), cr_trainer_shards(t->tr),
           cr_parallel_mode_name(cr_trainer_mode(t->tr)));
    t->sched = t->decay > 0 ? cr_schedule_warmup_cosine(t->lr, t->warmup ? t->steps / 20 : 0, t->steps,
                                                        t->lr / t->decay)
                            : cr_schedule_constant(t->lr);
    t->g = cr_graph_init();
    t->prev = cr_graph_use(t->g);
}

/* Step k of the run (0 for the first): the schedule's learning rate, then
 * every shard's forward and backward on the trainer's threads, the gradients
 * summed in a fixed order, clipping by global norm when clip > 0 (a
 * non-finite norm skips the update), the update. Returns the batch's loss. */
static inline double cli_training_step(cli_training *t, int64_t k, shard_loss_fn loss_of, void *ctx)
{
    cr_schedule_apply(&t->sched, t->opt, k);
    cr_task task = {.rows = t->batch, .loss = loss_of, .ctx = ctx};
    double loss;
    cr_trainer_step(t->tr, &task, t->opt, t->clip, &loss, NULL);
    return loss;
}

/* Free what cli_training_start made and make the previous graph current. */
static inline void cli_training_free(cli_training *t)
{
    cr_trainer_free(t->tr);
    cr_optim_free(t->opt);
    cr_graph_use(t->prev);
    cr_graph_free(t->g);
    t->tr = NULL, t->opt = NULL, t->g = t->prev = NULL;
}
#endif

#endif
