/* The mpi module under mpirun (tests/meson.build runs it on 2 ranks): weights
 * bit-identical to one process with the same shard count, refused splits,
 * ranks that disagree, checkpoints written by rank 0 and loaded everywhere.
 * `mpi_train DIR` runs the checks; `mpi_train --die RANK HOW` makes that rank
 * leave without MPI_Finalize in the middle of a run (tests/mpi_die.py). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "carousel.h"
#include "carousel/cr_mpi.h"
#include "parallel_model.h"

static int rank, ranks, failures;

/* Every rank's verdict: a check fails when it fails on any rank. */
static void check(bool ok, const char *what)
{
    int bad = !ok, any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (bad) fprintf(stderr, "rank %d: FAIL %s\n", rank, what);
    if (rank == 0) printf("%s %s\n", any ? "FAIL" : "ok  ", what);
    fflush(stdout);
    failures += any;
}

static bool mentions(const char *s) { return strstr(cr_last_error(), s) != NULL; }

/* Train `steps` steps over the ranks and on this process alone (the
 * reference: one cr_trainer running every shard), same seed and batches. */
static void same_as_one_process(pm_config cfg, int shards, int steps, double clip, const char *what)
{
    int f, l;
    if (!cr_mpi_split(shards, ranks, 0, &f, &l)) { /* refused: split_rules checks that */
        if (rank == 0) printf("skip %s: %d shards do not split over %d ranks\n", what, shards, ranks);
        return;
    }
    pm_model a = pm_make(cfg, shards), b = pm_make(cfg, shards);
    cr_mpi_trainer *mt;
    cr_status st = cr_mpi_trainer_init(
        MPI_COMM_WORLD, a.ps, (cr_trainer_config){.shards = shards, .threads = 1, .seed = cfg.seed}, &mt);
    if (st != CR_OK) {
        fprintf(stderr, "rank %d: %s\n", rank, cr_last_error());
        check(false, what);
        return;
    }
    cr_trainer *ref =
        cr_trainer_init(b.ps, (cr_trainer_config){.shards = shards, .threads = 1, .seed = cfg.seed});
    cr_task ta = pm_task(&a), tb = pm_task(&b);
    bool same_loss = true, ok = true;
    for (int k = 0; k < steps; k++) {
        pm_next_batch(&a);
        pm_next_batch(&b);
        double la, lb, na, nb;
        ok &= cr_mpi_trainer_step(mt, &ta, a.opt, clip, &la, &na) == CR_OK;
        cr_trainer_step(ref, &tb, b.opt, clip, &lb, &nb);
        same_loss &= memcmp(&la, &lb, sizeof la) == 0 && (clip == 0 || memcmp(&na, &nb, sizeof na) == 0);
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %d shards over %d ranks (this rank: [%d, +%d)) = one process, bit for bit",
             what, shards, ranks, cr_mpi_trainer_first_shard(mt), cr_mpi_trainer_local_shards(mt));
    check(ok && same_loss && pm_same_weights(a.ps, b.ps), msg);
    cr_trainer_free(ref);
    cr_mpi_trainer_free(mt);
    pm_free(&a);
    pm_free(&b);
}

/* (Shard counts of 2 * ranks split over any number of ranks.)
 * A parameter only the last shard uses (so only the last rank reaches it):
 * its gradient must still reach every rank, or Adam would skip it there. */
typedef struct partial {
    cr_params *ps;
    cr_tensor *w, *u, *x;
} partial;

static cr_tensor *partial_loss(void *ctx, const cr_shard *s)
{
    partial *p = ctx;
    cr_tensor *x = cr_narrow(p->x, 0, s->begin, s->end - s->begin);
    cr_tensor *l = cr_sum(cr_tanh(cr_matmul(x, p->w)));
    if (s->index == s->shards - 1) l = cr_add(l, cr_sum(cr_mul(p->u, p->u)));
    return cr_mul_scalar(l, 1.0 / (double)s->rows);
}

static void partial_init(partial *p)
{
    cr_rng rng = cr_rng_seed(3);
    p->ps = cr_params_init();
    p->w = cr_params_add(p->ps, "p", "w", CR_F64, CR_SHAPE(4, 3));
    p->u = cr_params_add(p->ps, "p", "u", CR_F64, CR_SHAPE(5));
    cr_fill_normal(p->w, &rng, 0, 1);
    cr_fill_normal(p->u, &rng, 0, 1);
    p->x = cr_tensor_init(CR_F64, CR_SHAPE(8, 4));
    cr_fill_normal(p->x, &rng, 0, 1);
}

static void parameters_reached_on_one_rank(void)
{
    partial a, b;
    partial_init(&a);
    partial_init(&b);
    cr_optim *oa = cr_adam_init(a.ps, cr_adam_defaults(0.1)), *ob = cr_adam_init(b.ps, cr_adam_defaults(0.1));
    cr_mpi_trainer *mt;
    bool ok = cr_mpi_trainer_init(MPI_COMM_WORLD, a.ps,
                                  (cr_trainer_config){.shards = 2 * ranks, .threads = 1}, &mt) == CR_OK;
    cr_trainer *ref = cr_trainer_init(b.ps, (cr_trainer_config){.shards = 2 * ranks, .threads = 1});
    cr_task ta = {.rows = 8, .loss = partial_loss, .ctx = &a},
            tb = {.rows = 8, .loss = partial_loss, .ctx = &b};
    for (int k = 0; ok && k < 3; k++) {
        ok &= cr_mpi_trainer_step(mt, &ta, oa, 0, NULL, NULL) == CR_OK;
        cr_trainer_step(ref, &tb, ob, 0, NULL, NULL);
    }
    check(
        ok && pm_same_weights(a.ps, b.ps) && a.u->grad && cr_get_flat(a.u->grad, 0) != 0,
        "a parameter only the last rank's shard reaches gets its gradient (and its Adam step) on every rank");
    cr_trainer_free(ref);
    cr_mpi_trainer_free(mt);
    cr_optim_free(oa);
    cr_optim_free(ob);
    for (partial *p = &a; p; p = p == &a ? &b : NULL) {
        cr_tensor_free(p->x);
        cr_params_free(p->ps);
    }
}

static void split_rules(void)
{
    /* 8 shards: blocks of 4 on 2 ranks, of 2 on 4, of 1 on 8; 3 ranks would
     * need blocks of 4 (the third empty) or of 3 (not subtrees). */
    int f, l;
    bool ok = cr_mpi_split(8, 2, 1, &f, &l) && f == 4 && l == 4;
    ok = ok && cr_mpi_split(8, 4, 3, &f, &l) && f == 6 && l == 2;
    ok = ok && !cr_mpi_split(8, 3, 0, &f, &l) && !cr_mpi_split(1, 2, 0, &f, &l);
    ok = ok && cr_mpi_split(6, 2, 1, &f, &l) && f == 4 && l == 2; /* ((0+1)+(2+3))+(4+5) */
    ok = ok && cr_mpi_split(5, 2, 1, &f, &l) && f == 4 && l == 1;
    check(ok, "cr_mpi_split: power-of-two blocks, none empty");

    /* On this run's ranks, a count that cannot split is refused by every rank. */
    int bad = 0;
    for (int s = 1; s <= 4 * ranks && !bad; s++)
        if (!cr_mpi_split(s, ranks, 0, &f, &l)) bad = s;
    if (bad) {
        pm_model m =
            pm_make((pm_config){.B = 4, .T = 3, .V = 5, .E = 2, .H = 3, .layers = 1, .seed = 1}, bad);
        cr_mpi_trainer *mt;
        cr_status st = cr_mpi_trainer_init(MPI_COMM_WORLD, m.ps, (cr_trainer_config){.shards = bad}, &mt);
        char what[128];
        snprintf(what, sizeof what, "%d shards on %d ranks: CR_EINVAL on every rank, saying why", bad, ranks);
        check(st == CR_EINVAL && mentions("cannot be split over") && mt == NULL, what);
        pm_free(&m);
    }
}

static void disagreeing_ranks(void)
{
    pm_config cfg = {.B = 6, .T = 4, .V = 7, .E = 3, .H = 5, .layers = 1, .carry = true, .seed = 11};
    /* a different initialisation on the last rank */
    pm_config other = cfg;
    if (rank == ranks - 1) other.seed = 12;
    pm_model m = pm_make(other, 2 * ranks);
    cr_mpi_trainer *mt;
    cr_status st =
        cr_mpi_trainer_init(MPI_COMM_WORLD, m.ps, (cr_trainer_config){.shards = 2 * ranks, .seed = 11}, &mt);
    check(ranks == 1 || (st == CR_EINVAL && mentions("values differ from rank 0's")),
          "different initial weights: CR_EINVAL on every rank at init");
    if (st == CR_OK) cr_mpi_trainer_free(mt);
    pm_free(&m);

    /* a rank out of step: every rank returns CR_EINVAL, none waits forever */
    m = pm_make(cfg, 2 * ranks);
    st = cr_mpi_trainer_init(MPI_COMM_WORLD, m.ps, (cr_trainer_config){.shards = 2 * ranks, .seed = 11}, &mt);
    cr_task task = pm_task(&m);
    pm_next_batch(&m);
    if (rank == ranks - 1) cr_trainer_set_steps(cr_mpi_trainer_local(mt), 5);
    st = cr_mpi_trainer_step(mt, &task, m.opt, 1.0, NULL, NULL);
    check(ranks == 1 || (st == CR_EINVAL && mentions("does not match")),
          "a rank at another step: CR_EINVAL with the reason on every rank");
    /* and they go on together once back in step */
    cr_trainer_set_steps(cr_mpi_trainer_local(mt), 1);
    check(cr_mpi_trainer_step(mt, &task, m.opt, 1.0, NULL, NULL) == CR_OK,
          "back in step, the next step works");
    if (ranks == 2) /* rank 1 sends its sum up, rank 0 sends the total down */
        check(cr_mpi_trainer_bytes_sent(mt) == cr_mpi_trainer_message_bytes(mt) &&
                  cr_mpi_trainer_message_bytes(mt) > cr_params_bytes(m.ps),
              "bytes sent per step on 2 ranks: one message each way");
    cr_mpi_trainer_free(mt);
    pm_free(&m);
}

/* Carried state by rows: each rank writes its shards' rows, then every rank
 * holds every row, each from the rank that ran it. */
static void shared_rows(void)
{
    pm_model m =
        pm_make((pm_config){.B = 13, .T = 3, .V = 5, .E = 2, .H = 3, .layers = 1, .seed = 1}, 2 * ranks);
    cr_mpi_trainer *mt;
    cr_mpi_trainer_init(MPI_COMM_WORLD, m.ps, (cr_trainer_config){.shards = 2 * ranks}, &mt);
    const int64_t L = 2, B = 13, H = 3, S = 2 * ranks;
    cr_tensor *t = cr_tensor_init(CR_F32, CR_SHAPE(L, B, H));
    int64_t q = B / S, rem = B % S;
    int64_t lo = 2 * rank * q + (2 * rank < rem ? 2 * rank : rem),
            hi = (2 * rank + 2) * q + (2 * rank + 2 < rem ? 2 * rank + 2 : rem);
    float *d = t->data;
    for (int64_t l = 0; l < L; l++)
        for (int64_t b = lo; b < hi; b++)
            for (int64_t k = 0; k < H; k++) d[(l * B + b) * H + k] = (float)(100 * rank + 10 * l + k);
    bool ok = cr_mpi_trainer_share_rows(mt, t, 1) == CR_OK;
    for (int64_t l = 0; l < L; l++)
        for (int64_t b = 0; b < B; b++) {
            int64_t g = 0; /* the shard of row b, and its rank */
            while (g + 1 < S && (g + 1) * q + (g + 1 < rem ? g + 1 : rem) <= b) g++;
            for (int64_t k = 0; k < H; k++)
                ok &= d[(l * B + b) * H + k] == (float)(100 * (g / 2) + 10 * l + k);
        }
    check(ok,
          "cr_mpi_trainer_share_rows: every rank holds every row [2, 13, 3], each from the rank that ran it");
    cr_tensor_free(t);
    cr_mpi_trainer_free(mt);
    pm_free(&m);
}

static void checkpoints(const char *dir)
{
    pm_config cfg = {
        .B = 8, .T = 4, .V = 7, .E = 3, .H = 5, .layers = 2, .dropout = 0.2, .carry = true, .seed = 21};
    pm_model a = pm_make(cfg, 2 * ranks), b = pm_make(cfg, 2 * ranks);
    cr_mpi_trainer *mt, *mb;
    cr_mpi_trainer_init(MPI_COMM_WORLD, a.ps, (cr_trainer_config){.shards = 2 * ranks, .seed = 21}, &mt);
    cr_task task = pm_task(&a);
    for (int k = 0; k < 3; k++) {
        pm_next_batch(&a);
        cr_mpi_trainer_step(mt, &task, a.opt, 1.0, NULL, NULL);
    }
    char path[4096], bad[4096];
    snprintf(path, sizeof path, "%s/mpi_train.ckpt", dir);
    snprintf(bad, sizeof bad, "%s/no-such-dir/x.ckpt", dir);
    if (rank == 0) remove(path);
    MPI_Barrier(MPI_COMM_WORLD);
    cr_rng rng = cr_rng_seed(5);
    cr_status st = cr_mpi_checkpoint_save(mt, path, a.ps, a.opt, 3, &rng, NULL, NULL, 0);
    check(st == CR_OK && access(path, R_OK) == 0, "rank 0 saves; every rank sees CR_OK");
    st = cr_mpi_checkpoint_save(mt, bad, a.ps, a.opt, 3, &rng, NULL, NULL, 0);
    check(st == CR_EIO && (rank == 0 || mentions("rank 0: ")),
          "a failed save fails on every rank with rank 0's message");

    /* load into a fresh model on every rank: same values, trainer at step 3 */
    cr_mpi_trainer_init(MPI_COMM_WORLD, b.ps, (cr_trainer_config){.shards = 2 * ranks, .seed = 21}, &mb);
    int64_t step = -1;
    cr_rng r2;
    st = cr_mpi_checkpoint_load(mb, path, b.ps, b.opt, &step, &r2, NULL);
    check(st == CR_OK && step == 3 && pm_same_weights(a.ps, b.ps) &&
              cr_trainer_steps(cr_mpi_trainer_local(mb)) == 3 && cr_optim_steps(b.opt) == 3,
          "every rank loads rank 0's checkpoint: same weights, optimizer and step");
    /* then both go on identically */
    cr_task tb = pm_task(&b);
    b.data_rng = a.data_rng;
    cr_copy_(b.h, a.h);
    cr_copy_(b.c, a.c);
    pm_next_batch(&a);
    pm_next_batch(&b);
    cr_mpi_trainer_step(mt, &task, a.opt, 1.0, NULL, NULL);
    cr_mpi_trainer_step(mb, &tb, b.opt, 1.0, NULL, NULL);
    check(pm_same_weights(a.ps, b.ps),
          "the resumed trainer continues bit for bit (dropout streams keyed by step)");

    char nofile[4096];
    snprintf(nofile, sizeof nofile, "%s/no-such-file.ckpt", dir);
    st = cr_mpi_checkpoint_load(mb, nofile, b.ps, b.opt, &step, &r2, NULL);
    check(st == CR_EIO && mentions("rank 0: "), "a load that fails fails on every rank, naming the rank");
    cr_mpi_trainer_free(mt);
    cr_mpi_trainer_free(mb);
    pm_free(&a);
    pm_free(&b);
}

/* A rank that leaves without MPI_Finalize while the others wait in a step:
 * how = "exit" (_exit(3)), "exit0" (_exit(0)) or "kill" (SIGKILL). */
static int die(int victim, const char *how)
{
    pm_model m =
        pm_make((pm_config){.B = 4, .T = 3, .V = 5, .E = 2, .H = 3, .layers = 1, .seed = 1}, 2 * ranks);
    cr_mpi_trainer *mt;
    if (cr_mpi_trainer_init(MPI_COMM_WORLD, m.ps, (cr_trainer_config){.shards = 2 * ranks}, &mt) != CR_OK)
        return 1;
    cr_task task = pm_task(&m);
    for (int k = 0; k < 3; k++) {
        if (k == 2 && rank == victim) {
            fprintf(stderr, "rank %d: leaving (%s) without MPI_Finalize at step %d\n", rank, how, k);
            fflush(stderr);
            if (!strcmp(how, "kill")) raise(SIGKILL);
            _exit(!strcmp(how, "exit0") ? 0 : 3);
        }
        pm_next_batch(&m);
        cr_status st = cr_mpi_trainer_step(mt, &task, m.opt, 1.0, NULL, NULL);
        if (st != CR_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, cr_last_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    fprintf(stderr, "rank %d: finished every step, which it should not have\n", rank);
    cr_mpi_trainer_free(mt);
    pm_free(&m);
    MPI_Finalize();
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    if (argc == 4 && !strcmp(argv[1], "--die")) return die(atoi(argv[2]), argv[3]);
    if (argc != 2) {
        fprintf(stderr, "usage: mpirun -np N %s DIR | --die RANK exit|exit0|kill\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    split_rules();
    pm_config base = {.B = 13,
                      .T = 5,
                      .V = 11,
                      .E = 4,
                      .H = 6,
                      .layers = 2,
                      .dropout = 0.3,
                      .lengths = true,
                      .carry = true,
                      .seed = 7};
    same_as_one_process(base, 8, 4, 1.0, "LSTM, dropout, lengths, carry, 13 rows");
    same_as_one_process(base, 6, 3, 1.0, "6 shards (blocks of 4 and 2)");
    same_as_one_process(base, 5, 3, 0.0, "5 shards, no clipping");
    same_as_one_process(base, 7, 3, 1.0, "7 shards");
    pm_config few = base;
    few.B = 3;
    same_as_one_process(few, 8, 3, 1.0, "3 rows, 8 shards (shards without rows)");
    parameters_reached_on_one_rank();
    disagreeing_ranks();
    shared_rows();
    checkpoints(argv[1]);
    if (rank == 0) printf("mpi_train: %d ranks, %d failed\n", ranks, failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}
