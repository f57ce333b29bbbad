/* The PyTorch peer of the benchmarks that compare against it in the same run
 * (conv, lstm, parallel, train): start bench/<name>_torch.py over two pipes,
 * ask it for timed steps, stop it; and the alternating turns of the two sides.
 *
 * The protocol (bench/conv_torch.py and the others): the peer may print
 * anything, then one line "ready ok=1 key=value ..." after its warm-up (ok=0
 * without torch); to "run N" it answers "ms t1 .. tN", to "quit" it exits. */
#ifndef CAROUSEL_BENCH_PEER_H
#define CAROUSEL_BENCH_PEER_H

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_time.h"
#include "carousel.h"

#ifndef CR_BENCH_SRCDIR
#define CR_BENCH_SRCDIR "bench"
#endif
#ifndef CR_BENCH_PYTHON
#define CR_BENCH_PYTHON "/usr/bin/python3"
#endif

extern char **environ; /* POSIX */

typedef struct bench_peer {
    pid_t pid;        /* -1: none started */
    FILE *to, *from;  /* its stdin and stdout */
    bool ok;          /* ready with ok=1, and no run failed since */
    char ready[1024]; /* its "ready ..." line, "" if none came: read it with bench_field */
} bench_peer;

#define BENCH_PEER_NONE ((bench_peer){.pid = -1})

typedef struct bench_peer_config {
    const char *script;      /* its file in bench/, e.g. "conv_torch.py" */
    const char *const *args; /* its arguments, NULL-terminated */
    int threads;             /* BLIS_NUM_THREADS for the peer (and OMP_NUM_THREADS with omp) */
    bool omp;                /* replace OMP_NUM_THREADS too */
    bool echo_every_ready;   /* print every peer's ready line; else the first one and any with ok=0 */
} bench_peer_config;

/* The value of " key=" in line, or nan. */
static inline double bench_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* Starts the peer ($CR_BENCH_PYTHON or CR_BENCH_PYTHON, on the script with
 * the arguments) and waits for its ready line, echoing "torch: <line>" for
 * what it says before. Its environment is this one's with BLIS_NUM_THREADS
 * (and OMP_NUM_THREADS) set to the thread count: torch.set_num_threads does
 * not reach the BLAS it links (Debian's libblas.so.3 is BLIS, with its own
 * thread count), and without the BLIS_ARCH_TYPE carousel set on a Zen 4 CPU
 * (below). Returns with ok false, and a "torch: skipped" line where a
 * cause is known, when python, the script or torch is missing. */
static inline bench_peer bench_peer_start(bench_peer_config cfg)
{
    bench_peer p = BENCH_PEER_NONE;
    const char *py = getenv("CR_BENCH_PYTHON");
    if (!py || !*py) py = CR_BENCH_PYTHON;
    char script[4096];
    snprintf(script, sizeof script, "%s/%s", CR_BENCH_SRCDIR, cfg.script);
    if (access(py, X_OK) != 0 || access(script, R_OK) != 0) {
        printf("torch: skipped (%s or %s not found)\n", py, script);
        return p;
    }
    size_t n_args = 0;
    while (cfg.args[n_args]) n_args++;
    char **argv = cr_xmalloc((n_args + 3) * sizeof *argv);
    argv[0] = (char *)py;
    argv[1] = script;
    for (size_t k = 0; k <= n_args; k++) argv[k + 2] = (char *)cfg.args[k];

    const char *vars[] = {"BLIS_NUM_THREADS=", "OMP_NUM_THREADS="};
    const size_t n_vars = cfg.omp ? 2 : 1;
    /* BLIS's kernels: each side gets its faster choice. carousel set skx
     * (tensor/gemm.c) unless the user chose; on Zen 5 that is torch's best
     * too (BLIS's own choice there is its generic C), and on an Intel Xeon
     * whose brand string BLIS cannot place (haswell's kernels otherwise:
     * torch's hidden-512 step ran 1.5x faster with skx), but on Zen 4 torch
     * ran its step 1.2x (hidden 128) to 1.5x (hidden 512) slower with skx
     * than with BLIS's own zen3 kernels, so there the peer does not inherit
     * it. */
    const bool drop_arch = cr_blis_arch_hinted() == 0x19;
    char set[2][64];
    size_t n_env = 0;
    while (environ[n_env]) n_env++;
    char **envp = cr_xmalloc((n_env + n_vars + 1) * sizeof *envp);
    size_t k_env = 0;
    for (size_t k = 0; k < n_env; k++) {
        bool replaced = false;
        for (size_t v = 0; v < n_vars; v++) replaced |= !strncmp(environ[k], vars[v], strlen(vars[v]));
        replaced |= drop_arch && !strncmp(environ[k], "BLIS_ARCH_TYPE=", 15);
        if (!replaced) envp[k_env++] = environ[k];
    }
    for (size_t v = 0; v < n_vars; v++) {
        snprintf(set[v], sizeof set[v], "%s%d", vars[v], cfg.threads);
        envp[k_env++] = set[v];
    }
    envp[k_env] = NULL;

    int down[2], up[2]; /* down: our writes to its stdin; up: its stdout to us */
    if (pipe(down) != 0) goto out;
    if (pipe(up) != 0) {
        close(down[0]);
        close(down[1]);
        goto out;
    }
    fflush(stdout); /* else the child's copy of our buffer could be written twice */
    p.pid = fork();
    if (p.pid == 0) {
        dup2(down[0], 0);
        dup2(up[1], 1);
        close(down[0]);
        close(down[1]);
        close(up[0]);
        close(up[1]);
        execve(py, argv, envp);
        _exit(127);
    }
    close(down[0]);
    close(up[1]);
    if (p.pid < 0) {
        close(down[1]);
        close(up[0]);
        printf("torch: skipped (fork: %s)\n", strerror(errno));
        goto out;
    }
    p.to = fdopen(down[1], "w");
    p.from = fdopen(up[0], "r");
    char line[sizeof p.ready];
    while (fgets(line, sizeof line, p.from)) {
        if (!strncmp(line, "ready ", 6)) {
            memcpy(p.ready, line, sizeof line);
            p.ok = bench_field(line, "ok") == 1;
            static bool shown; /* the versions and thread counts, once per run */
            if (cfg.echo_every_ready || !p.ok || !shown) printf("torch: %s", line);
            shown = true;
            break;
        }
        printf("torch: %s", line); /* anything else the peer says */
    }
out:
    free(envp);
    free(argv);
    return p;
}

/* A set of step times in ms: v[0..n), at most cap. */
typedef struct bench_samples {
    double *v;
    int n, cap;
} bench_samples;

#define BENCH_SAMPLES(array)                                                                                 \
    ((bench_samples){.v = (array), .n = 0, .cap = (int)(sizeof(array) / sizeof *(array))})

/* Asks the peer for n steps and appends their ms to t (as many as fit).
 * Returns false, and leaves the peer not ok, when it failed. */
static inline bool bench_peer_run(bench_peer *p, int warm, int n, bench_samples *t)
{
    if (!p->ok) return false;
    fprintf(p->to, "run %d\n", warm + n);
    fflush(p->to);
    char line[16384];
    if (!fgets(line, sizeof line, p->from) || strncmp(line, "ms", 2)) return p->ok = false;
    char *s = line + 2, *end;
    for (int k = 0; k < warm + n; k++) {
        double v = strtod(s, &end);
        if (end == s) return p->ok = false;
        if (k >= warm && t->n < t->cap) t->v[t->n++] = v;
        s = end;
    }
    return true;
}

/* Tells the peer to quit and waits for it; an abnormal exit of a peer that
 * was ok is reported. Nothing to do for BENCH_PEER_NONE. */
static inline void bench_peer_stop(bench_peer *p)
{
    if (p->to) {
        fprintf(p->to, "quit\n");
        fclose(p->to);
    }
    if (p->from) fclose(p->from);
    if (p->pid > 0) {
        int st;
        waitpid(p->pid, &st, 0);
        if (!WIFEXITED(st) || (WEXITSTATUS(st) != 0 && p->ok))
            printf("torch: peer exited with status %d\n", st);
    }
}

/* Waits 50 ms between turns: OpenMP workers keep spinning for a while after a
 * parallel region (libgomp's GOMP_SPINCOUNT, torch's pool alike), and a turn
 * that starts at once shares the cores with the other side's spinners. Seen in
 * bench/parallel: carousel's 2-thread replicas read 1.55x its 1-thread speed
 * right after torch's turns, 1.95x with no peer (--paired). */
static inline void bench_settle(void)
{
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* Round `round` of bench_turns: reps timed calls of step(ctx) appended to c
 * and reps steps of the peer appended to t, the side going first changing
 * with the round's parity (so that neither always runs on a machine the
 * other just warmed or loaded), with a settling pause before each turn, and
 * one untimed call at the start of each turn on both sides: after the pause
 * and the other side's turn the caches, branch predictors and clock are
 * cold, and a short unit pays for that (the hidden-32, batch-1 char-LM step,
 * 0.3 ms, read 0.28 / 0.36 / 1.75 ms min / median / max over three turns of
 * one call each). */
static inline void bench_turn(int round, int reps, void (*step)(void *), void *ctx, bench_samples *c,
                              bench_peer *p, bench_samples *t)
{
    for (int side = 0; side < 2; side++) {
        bench_settle();
        if ((side ^ (round & 1)) == 0) {
            step(ctx); /* untimed: warms what the other side's turn cooled */
            for (int k = 0; k < reps && c->n < c->cap; k++) {
                double t0 = bench_now_ms();
                step(ctx);
                c->v[c->n++] = bench_now_ms() - t0;
            }
        } else if (p) {
            bench_peer_run(p, 1, reps, t);
        }
    }
}

/* rounds rounds of bench_turn */
static inline void bench_turns(int rounds, int reps, void (*step)(void *), void *ctx, bench_samples *c,
                               bench_peer *p, bench_samples *t)
{
    for (int round = 0; round < rounds; round++) bench_turn(round, reps, step, ctx, c, p, t);
}

#endif
