/* carousel's mpi module: data-parallel training over MPI ranks (Open MPI).
 * Optional: built when meson finds MPI (option `mpi`), as its own library
 * (libcarousel-mpi, pkg-config carousel-mpi); libcarousel itself never links
 * MPI. The header is not named mpi.h so that it cannot hide MPI's own. */
#ifndef CAROUSEL_CR_MPI_H
#define CAROUSEL_CR_MPI_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * An MPI trainer is a cr_trainer (optim.h) whose shards are spread over the
 * ranks of a communicator. The shard count belongs to the run: rank r runs a
 * contiguous block of the run's shards, and the ranks' gradient sums are
 * combined in the same fixed pairwise tree the single-process trainer uses,
 * so R ranks give bit-identical weights to one process with the same shard
 * count, seed and batches (and so to any thread count or mode inside a rank).
 *
 *     MPI_Init(&argc, &argv);
 *     ... every rank builds the same model from the same seed, reads the data ...
 *     cr_mpi_trainer *mt;
 *     if (cr_mpi_trainer_init(MPI_COMM_WORLD, ps, cr_trainer_defaults(), &mt) != CR_OK)
 *         { fprintf(stderr, "%s\n", cr_last_error()); MPI_Finalize(); return 1; }
 *     for (...) {   // every rank forms the same global batch; shards pick their rows
 *         if (cr_mpi_trainer_step(mt, &task, opt, 5.0, &loss, &norm) == CR_EIO) break;
 *     }
 *     cr_mpi_checkpoint_save(mt, "run.ckpt", ps, opt, step, &rng, vocab, NULL, 0); // rank 0 writes
 *     cr_mpi_trainer_free(mt);
 *     MPI_Finalize();
 *
 * The split. The tree over S shards adds neighbours, then pairs of pairs, and
 * so on; a block of shards is a subtree exactly when its size L is a power of
 * two and it starts at a multiple of L. So L is the smallest power of two
 * with R*L >= S, rank r runs shards [r*L, min(S, (r+1)*L)), and every rank
 * must get at least one: (R-1)*L < S. The ranks' sums are then the leaves of
 * the tree over ceil(S/L) = R blocks, the same tree as the single process's
 * upper levels. Other counts are refused (8 shards on 3 ranks: blocks of 4
 * leave the third rank empty; blocks of 3 would cut subtrees).
 *
 * The exchange. One message per rank per step holds a header (step, rows,
 * the loss, which parameters were reached, an error verdict) and the flat
 * gradient, sent straight from the trainer's buffer (an MPI datatype over
 * both, no packing copy). A reduction along the tree (at level w, rank r
 * with r % 2w == 0 receives rank r+w's message and adds it into its own,
 * a += b exactly as the trainer adds shard buffers) leaves the sum on rank 0,
 * which sends it back down the same binomial tree (rank r receives at the
 * level of its lowest set bit and forwards at every level below). Never
 * MPI_Allreduce: its summation order is left to the implementation. Over a
 * step the ranks send 2(R-1) messages of cr_mpi_trainer_message_bytes each
 * (numel * dtype size plus a header of ~300 bytes + one byte per parameter);
 * rank 0 sends ceil(log2 R) of them, a leaf rank one.
 *
 * Failures. The communicator is a duplicate with MPI_ERRORS_RETURN, and every
 * call's result is checked: a failed send or receive returns CR_EIO with the
 * MPI error string. A rank whose step, batch size or layout differs from the
 * others' makes every rank return CR_EINVAL (the verdict travels in the
 * broadcast, so no rank is left waiting). A rank that dies (crash, exit
 * without MPI_Finalize, kill) is Open MPI's to handle: mpirun notices and
 * kills the other ranks of the job, printing which rank exited (README.md
 * shows what it prints); MPI_ERRORS_RETURN does not change that.
 */
typedef struct cr_mpi_trainer cr_mpi_trainer;

/* The block of shards that rank `rank` of `ranks` runs for a run of `shards`
 * (see above). Returns false, leaving *first and *local alone, when the split
 * cannot preserve the tree. */
bool cr_mpi_split(int shards, int ranks, int rank, int *first, int *local);

/* Split cfg.shards over the ranks of comm (cfg.first_shard and local_shards
 * must be 0: the split sets them) and make the local cr_trainer over ps.
 * cfg.threads 0 means this machine's cores divided among the ranks on it (at
 * least one). Collective: checks that every rank has the same shard count,
 * seed, parameter layout (names, shapes, dtype) and parameter values.
 * CR_EINVAL with a message (the same on every rank) when they differ or the
 * shard count cannot be split over the ranks; CR_EIO when MPI fails. */
cr_status cr_mpi_trainer_init(MPI_Comm comm, cr_params *ps, cr_trainer_config cfg, cr_mpi_trainer **out);
void cr_mpi_trainer_free(cr_mpi_trainer *mt); /* NULL is a no-op; frees its communicator */

/* Local backward (cr_trainer_backward), then the exchange: afterwards every
 * rank holds the whole batch's gradient in cr_trainer_grad and its reached
 * flags, and *loss (if non-NULL) the whole batch's loss. Collective. */
cr_status cr_mpi_trainer_backward(cr_mpi_trainer *mt, const cr_task *task, double *loss);
/* backward + cr_trainer_publish + clipping at max_norm (0: none) + the
 * optimizer step (skipped, CR_NONFINITE, when the norm is NaN/inf: the same
 * on every rank, since every rank clips the same gradient). Collective. */
cr_status cr_mpi_trainer_step(cr_mpi_trainer *mt, const cr_task *task, cr_optim *opt, double max_norm,
                              double *loss, double *norm);

cr_trainer *cr_mpi_trainer_local(cr_mpi_trainer *mt); /* the rank's own trainer */
int cr_mpi_trainer_rank(const cr_mpi_trainer *mt);
int cr_mpi_trainer_ranks(const cr_mpi_trainer *mt);
int cr_mpi_trainer_first_shard(const cr_mpi_trainer *mt);
int cr_mpi_trainer_local_shards(const cr_mpi_trainer *mt);
size_t cr_mpi_trainer_message_bytes(const cr_mpi_trainer *mt); /* one rank's message: header + gradient */
/* Bytes this rank sent in the last exchange (reduction and broadcast). */
size_t cr_mpi_trainer_bytes_sent(const cr_mpi_trainer *mt);
/* Wall time of this rank's last exchange, seconds: messages, sums and any
 * wait for a slower rank. */
double cr_mpi_trainer_exchange_s(const cr_mpi_trainer *mt);

/* Collective: the rows of a tensor indexed by the batch's rows along `dim`
 * (truncated BPTT's carried state [L, B, H], dim 1), each taken from the rank
 * whose shards ran them, copied to every rank (every rank then holds what one
 * process would). t is a contiguous float tensor. */
cr_status cr_mpi_trainer_share_rows(cr_mpi_trainer *mt, cr_tensor *t, int dim);
/* Collective: rank 0's status, and its message, returned on every rank (for
 * work only rank 0 does, such as writing a file). */
cr_status cr_mpi_share_status(cr_mpi_trainer *mt, cr_status st);

/* Collective: rank 0 writes the checkpoint (cr_checkpoint_save, atomic), and
 * every rank returns its status; on failure every rank's cr_last_error() holds
 * rank 0's message. */
cr_status cr_mpi_checkpoint_save(cr_mpi_trainer *mt, const char *path, const cr_params *ps, const cr_optim *o,
                                 int64_t schedule_step, const cr_rng *rng, const cr_vocab *vocab,
                                 const char *const *meta_kv, size_t n_meta);
/* Collective: every rank loads the checkpoint (cr_checkpoint_load; the file
 * must be readable on every machine: a shared file system or a copy), then
 * the ranks check they hold the same values and step. When any rank fails,
 * every rank returns that status with the first failing rank's message. A
 * checkpoint made on any number of ranks (or none) loads on any number. The
 * trainer's step count is set to *schedule_step (it keys the dropout streams). */
cr_status cr_mpi_checkpoint_load(cr_mpi_trainer *mt, const char *path, cr_params *ps, cr_optim *o,
                                 int64_t *schedule_step, cr_rng *rng, cr_vocab **vocab);

#ifdef __cplusplus
}
#endif
#endif
