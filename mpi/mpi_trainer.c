/* Data-parallel training over MPI ranks: the split of a run's shards into
 * per-rank blocks that are subtrees of the fixed reduction tree, the per-step
 * exchange (a reduction along that tree, then a broadcast, with point-to-point
 * messages in a fixed order), and checkpoints written by rank 0. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cr_mpi.h"

#define MAGIC INT64_C(0x31504d4c52524143) /* "CARRLMP1": a carousel step message, version 1 */
#define TAG_STEP 7101
#define MSG_LEN 240

/* The fixed part of a step message; the reached flags follow it in the same
 * buffer, the gradient travels beside it in the same message. */
typedef struct step_header {
    int64_t magic;
    int64_t step;   /* the trainer's step this gradient belongs to */
    int64_t rows;   /* rows of the batch */
    int64_t numel;  /* elements of the flat gradient */
    int64_t status; /* CR_OK, or the verdict that every rank returns */
    double loss;    /* the subtree's loss */
    char msg[MSG_LEN];
} step_header;

/* What every rank compares at init and after a load. */
typedef struct summary {
    int64_t shards, numel, n_params, dtype, step, optim_steps;
    uint64_t seed, layout_hash, value_hash;
} summary;

struct cr_mpi_trainer {
    MPI_Comm comm; /* a duplicate with MPI_ERRORS_RETURN */
    int rank, ranks, first, local;
    cr_params *ps;
    cr_trainer *t;
    size_t n;                      /* parameters */
    int count;                     /* elements of the flat gradient, as MPI counts them */
    MPI_Datatype elem;             /* MPI_FLOAT or MPI_DOUBLE */
    size_t hdr_bytes;              /* header + reached flags */
    step_header *mine;             /* this rank's header (+ flags) */
    step_header *theirs;           /* a received header (+ flags) */
    void *their_grad;              /* [numel] a received gradient */
    MPI_Datatype mine_t, theirs_t; /* header + gradient as one message */
    size_t sent;                   /* bytes sent in the last exchange */
    double exchange_s;             /* its wall time */
};

/* ---- the split ------------------------------------------------------------------------- */

bool cr_mpi_split(int shards, int ranks, int rank, int *first, int *local)
{
    if (shards < 1 || ranks < 1 || rank < 0 || rank >= ranks) return false;
    int per = shards / ranks + (shards % ranks != 0); /* ceil(S / R) */
    int64_t L = 1;
    while (L < per) L *= 2;                               /* a power of two: a block is a subtree */
    if ((int64_t)(ranks - 1) * L >= shards) return false; /* the last rank would get nothing */
    int64_t f = (int64_t)rank * L, end = f + L < shards ? f + L : shards;
    *first = (int)f;
    *local = (int)(end - f);
    return true;
}

/* ---- small helpers ----------------------------------------------------------------------- */

static cr_status mpi_fail(int rc, const char *fn, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
    return cr_failure(CR_EIO, "%s: %s failed: %s", fn, what, s);
}

/* FNV-1a, 64 bits: equal bytes give equal hashes on every rank. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * UINT64_C(0x100000001b3);
    return h;
}
#define FNV_START UINT64_C(0xcbf29ce484222325)

static size_t tensor_bytes(const cr_tensor *t) { return (size_t)cr_numel(t) * cr_dtype_size(t->dtype); }

static summary summarise(const cr_params *ps, const cr_optim *o, cr_trainer_config cfg, int64_t step)
{
    summary s = {.shards = cfg.shards,
                 .seed = cfg.seed,
                 .n_params = (int64_t)ps->n,
                 .step = step,
                 .layout_hash = FNV_START,
                 .value_hash = FNV_START};
    s.dtype = ps->n ? (int64_t)ps->items[0].value->dtype : -1;
    for (size_t i = 0; i < ps->n; i++) {
        const cr_tensor *v = ps->items[i].value;
        s.numel += cr_numel(v);
        s.layout_hash = fnv(s.layout_hash, ps->items[i].name, strlen(ps->items[i].name) + 1);
        s.layout_hash = fnv(s.layout_hash, &v->ndim, sizeof v->ndim);
        s.layout_hash = fnv(s.layout_hash, v->shape, (size_t)v->ndim * sizeof v->shape[0]);
        s.layout_hash = fnv(s.layout_hash, &v->dtype, sizeof v->dtype);
        if (cr_is_contiguous(v)) s.value_hash = fnv(s.value_hash, v->data, tensor_bytes(v));
    }
    if (o) { /* the optimizer's state must agree too, or the ranks' steps differ */
        s.optim_steps = cr_optim_steps(o);
        const cr_optim_rule *rule = cr_optim_rule_of(o);
        for (size_t i = 0; i < ps->n; i++)
            for (int k = 0; k < rule->n_slots; k++) {
                const cr_tensor *sl = cr_optim_slot(o, i, k);
                if (sl && cr_is_contiguous(sl)) s.value_hash = fnv(s.value_hash, sl->data, tensor_bytes(sl));
            }
    }
    return s;
}

/* Collective: every rank's summary; CR_EINVAL (the same message on every
 * rank) naming the first rank that differs from rank 0 and how. */
static cr_status compare_summaries(MPI_Comm comm, int ranks, summary mine, const char *fn, const char *advice)
{
    summary *all = cr_xcalloc((size_t)ranks, sizeof *all);
    int rc = MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, comm);
    if (rc != MPI_SUCCESS) {
        free(all);
        return mpi_fail(rc, fn, "MPI_Allgather of the ranks' layouts");
    }
    cr_status st = CR_OK;
    const summary *a = &all[0];
    for (int r = 1; r < ranks && st == CR_OK; r++) {
        const summary *b = &all[r];
        if (b->shards != a->shards)
            st = cr_failure(CR_EINVAL, "%s: rank %d runs %lld shards, rank 0 %lld", fn, r,
                            (long long)b->shards, (long long)a->shards);
        else if (b->seed != a->seed)
            st = cr_failure(CR_EINVAL, "%s: rank %d has seed %llu, rank 0 %llu", fn, r,
                            (unsigned long long)b->seed, (unsigned long long)a->seed);
        else if (b->n_params != a->n_params || b->numel != a->numel || b->dtype != a->dtype ||
                 b->layout_hash != a->layout_hash)
            st = cr_failure(
                CR_EINVAL,
                "%s: rank %d's parameters (%lld tensors, %lld elements) are not laid out as rank 0's "
                "(%lld tensors, %lld elements): names, shapes and dtype must agree",
                fn, r, (long long)b->n_params, (long long)b->numel, (long long)a->n_params,
                (long long)a->numel);
        else if (b->step != a->step || b->optim_steps != a->optim_steps)
            st = cr_failure(CR_EINVAL, "%s: rank %d is at step %lld (optimizer %lld), rank 0 at %lld (%lld)",
                            fn, r, (long long)b->step, (long long)b->optim_steps, (long long)a->step,
                            (long long)a->optim_steps);
        else if (b->value_hash != a->value_hash)
            st = cr_failure(CR_EINVAL, "%s: rank %d's parameter or optimizer values differ from rank 0's; %s",
                            fn, r, advice);
    }
    free(all);
    return st;
}

/* Header + gradient as one MPI datatype at absolute addresses (MPI_BOTTOM). */
static int message_type(MPI_Datatype *out, void *hdr, size_t hdr_bytes, void *grad, int count,
                        MPI_Datatype elem)
{
    MPI_Aint disp[2];
    int rc = MPI_Get_address(hdr, &disp[0]);
    if (rc == MPI_SUCCESS) rc = MPI_Get_address(grad, &disp[1]);
    int len[2] = {(int)hdr_bytes, count};
    MPI_Datatype types[2] = {MPI_BYTE, elem};
    if (rc == MPI_SUCCESS) rc = MPI_Type_create_struct(2, len, disp, types, out);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(out);
    return rc;
}

/* ---- init and free ----------------------------------------------------------------------- */

cr_status cr_mpi_trainer_init(MPI_Comm comm, cr_params *ps, cr_trainer_config cfg, cr_mpi_trainer **out)
{
    static const char fn[] = "cr_mpi_trainer_init";
    if (!ps || !out) cr_error("%s: %s is NULL", fn, ps ? "out" : "params");
    *out = NULL;
    if (cfg.first_shard != 0 || cfg.local_shards != 0)
        cr_error("%s: first_shard = %d, local_shards = %d: leave them 0, the split over ranks sets them", fn,
                 cfg.first_shard, cfg.local_shards);
    if (cfg.shards == 0) cfg.shards = cr_trainer_defaults().shards;
    if (cfg.shards < 1) cr_error("%s: shards = %d must be at least 1", fn, cfg.shards);
    if (cfg.threads < 0)
        cr_error("%s: threads = %d must be >= 0 (0: the cores shared among ranks)", fn, cfg.threads);
    if (ps->n == 0) cr_error("%s: the parameter set is empty", fn);

    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) cr_error("%s: call MPI_Init first", fn);
    cr_mpi_trainer *mt = cr_xcalloc(1, sizeof *mt);
    mt->comm = MPI_COMM_NULL;
    mt->mine_t = mt->theirs_t = MPI_DATATYPE_NULL;
    int rc = MPI_Comm_dup(comm, &mt->comm);
    if (rc != MPI_SUCCESS) {
        free(mt);
        return mpi_fail(rc, fn, "MPI_Comm_dup");
    }
    cr_status st = CR_OK;
    /* Errors come back as codes on this communicator, so a failure is a
     * status with a message rather than Open MPI's default abort. */
    if ((rc = MPI_Comm_set_errhandler(mt->comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (rc = MPI_Comm_rank(mt->comm, &mt->rank)) != MPI_SUCCESS ||
        (rc = MPI_Comm_size(mt->comm, &mt->ranks)) != MPI_SUCCESS) {
        st = mpi_fail(rc, fn, "setting up the communicator");
        goto fail;
    }
    if ((st = compare_summaries(
             mt->comm, mt->ranks, summarise(ps, NULL, cfg, 0), fn,
             "build the model from the same seed on every rank (or load the same checkpoint)")) != CR_OK)
        goto fail;
    if (!cr_mpi_split(cfg.shards, mt->ranks, mt->rank, &mt->first, &mt->local)) {
        st = cr_failure(
            CR_EINVAL,
            "%s: %d shards cannot be split over %d ranks so that each rank's block is a subtree of the "
            "reduction tree (blocks of a power of two, none empty); use a shard count with "
            "(ranks-1)*L < shards, L the smallest power of two >= shards/ranks (e.g. %d shards), or "
            "another rank count",
            fn, cfg.shards, mt->ranks, mt->ranks * 2 > 1 ? mt->ranks * 2 : 1);
        goto fail;
    }
    int64_t numel = (int64_t)cr_params_numel(ps);
    if (numel > INT_MAX) {
        st = cr_failure(CR_EINVAL, "%s: %lld gradient elements exceed one MPI message's count (%d)", fn,
                        (long long)numel, INT_MAX);
        goto fail;
    }
    if (cfg.threads == 0) { /* this machine's threads, shared among its ranks */
        MPI_Comm node;
        int on_node = 1;
        if ((rc = MPI_Comm_split_type(mt->comm, MPI_COMM_TYPE_SHARED, mt->rank, MPI_INFO_NULL, &node)) !=
            MPI_SUCCESS) {
            st = mpi_fail(rc, fn, "MPI_Comm_split_type");
            goto fail;
        }
        MPI_Comm_size(node, &on_node);
        MPI_Comm_free(&node);
        cfg.threads = cr_get_num_threads() / on_node;
        if (cfg.threads < 1) cfg.threads = 1;
        cr_set_num_threads(cfg.threads);
    }
    cfg.first_shard = mt->first;
    cfg.local_shards = mt->local;
    mt->ps = ps;
    mt->n = ps->n;
    mt->t = cr_trainer_init(ps, cfg);
    mt->count = (int)numel;
    mt->elem = ps->items[0].value->dtype == CR_F64 ? MPI_DOUBLE : MPI_FLOAT;
    mt->hdr_bytes = sizeof(step_header) + mt->n;
    mt->mine = cr_xcalloc(1, mt->hdr_bytes);
    mt->theirs = cr_xcalloc(1, mt->hdr_bytes);
    mt->their_grad = cr_xcalloc((size_t)numel ? (size_t)numel : 1, cr_dtype_size(ps->items[0].value->dtype));
    if ((rc = message_type(&mt->mine_t, mt->mine, mt->hdr_bytes, cr_trainer_grad(mt->t)->data, mt->count,
                           mt->elem)) != MPI_SUCCESS ||
        (rc = message_type(&mt->theirs_t, mt->theirs, mt->hdr_bytes, mt->their_grad, mt->count, mt->elem)) !=
            MPI_SUCCESS) {
        st = mpi_fail(rc, fn, "building the message datatype");
        goto fail;
    }
    *out = mt;
    return CR_OK;
fail:
    cr_mpi_trainer_free(mt);
    return st;
}

void cr_mpi_trainer_free(cr_mpi_trainer *mt)
{
    if (!mt) return;
    if (mt->mine_t != MPI_DATATYPE_NULL) MPI_Type_free(&mt->mine_t);
    if (mt->theirs_t != MPI_DATATYPE_NULL) MPI_Type_free(&mt->theirs_t);
    if (mt->comm != MPI_COMM_NULL) MPI_Comm_free(&mt->comm);
    cr_trainer_free(mt->t);
    free(mt->mine);
    free(mt->theirs);
    free(mt->their_grad);
    free(mt);
}

cr_trainer *cr_mpi_trainer_local(cr_mpi_trainer *mt) { return mt->t; }
int cr_mpi_trainer_rank(const cr_mpi_trainer *mt) { return mt->rank; }
int cr_mpi_trainer_ranks(const cr_mpi_trainer *mt) { return mt->ranks; }
int cr_mpi_trainer_first_shard(const cr_mpi_trainer *mt) { return mt->first; }
int cr_mpi_trainer_local_shards(const cr_mpi_trainer *mt) { return mt->local; }
size_t cr_mpi_trainer_bytes_sent(const cr_mpi_trainer *mt) { return mt->sent; }
double cr_mpi_trainer_exchange_s(const cr_mpi_trainer *mt) { return mt->exchange_s; }

size_t cr_mpi_trainer_message_bytes(const cr_mpi_trainer *mt)
{
    return mt->hdr_bytes + (size_t)mt->count * cr_dtype_size(mt->ps->items[0].value->dtype);
}

/* ---- the exchange ------------------------------------------------------------------------ */

static unsigned char *flags_of(step_header *h) { return (unsigned char *)(h + 1); }

/* mine += theirs: the same a += b, element by element, as the trainer's own
 * tree, so the rank tree continues the shard tree bit for bit. */
static void add_message(cr_mpi_trainer *mt)
{
    step_header *a = mt->mine, *b = mt->theirs;
    if (a->status != CR_OK) return;
    if (b->status != CR_OK) { /* a verdict from further down the tree */
        a->status = b->status;
        memcpy(a->msg, b->msg, sizeof a->msg);
        return;
    }
    if (b->magic != MAGIC || b->numel != a->numel || b->step != a->step || b->rows != a->rows) {
        a->status = CR_EINVAL;
        snprintf(
            a->msg, sizeof a->msg,
            "a rank's step message (step %lld, %lld rows, %lld elements) does not match rank %d's (step %lld, "
            "%lld rows, %lld elements): every rank must run the same steps on the same batch size",
            (long long)b->step, (long long)b->rows, (long long)b->numel, mt->rank, (long long)a->step,
            (long long)a->rows, (long long)a->numel);
        return;
    }
    a->loss += b->loss;
    unsigned char *fa = flags_of(a), *fb = flags_of(b);
    for (size_t i = 0; i < mt->n; i++) fa[i] |= fb[i];
    cr_tensor *g = cr_trainer_grad(mt->t);
    int64_t n = mt->count;
    if (g->dtype == CR_F32) {
        float *restrict x = g->data;
        const float *restrict y = mt->their_grad;
        for (int64_t i = 0; i < n; i++) x[i] += y[i];
    } else {
        double *restrict x = g->data;
        const double *restrict y = mt->their_grad;
        for (int64_t i = 0; i < n; i++) x[i] += y[i];
    }
}

cr_status cr_mpi_trainer_backward(cr_mpi_trainer *mt, const cr_task *task, double *loss)
{
    static const char fn[] = "cr_mpi_trainer_backward";
    if (!mt) cr_error("%s: trainer is NULL", fn);
    double local = cr_trainer_backward(mt->t, task);
    step_header *h = mt->mine;
    *h = (step_header){.magic = MAGIC,
                       .step = cr_trainer_steps(mt->t) - 1,
                       .rows = task->rows,
                       .numel = mt->count,
                       .status = CR_OK,
                       .loss = local};
    memcpy(flags_of(h), cr_trainer_reached(mt->t), mt->n);
    size_t bytes = cr_mpi_trainer_message_bytes(mt);
    mt->sent = 0;
    double t0 = MPI_Wtime();
    const int r = mt->rank, R = mt->ranks;
    int rc, top = 1;
    while (top < R) top *= 2;
    /* Reduction along the tree: at level w, rank r % 2w == 0 adds rank r+w's
     * sum into its own; rank r % 2w == w has its subtree's sum and sends it. */
    for (int w = 1; w < R; w *= 2) {
        if (r % (2 * w) == w) {
            if ((rc = MPI_Send(MPI_BOTTOM, 1, mt->mine_t, r - w, TAG_STEP, mt->comm)) != MPI_SUCCESS) {
                char what[64];
                snprintf(what, sizeof what, "sending the gradient to rank %d", r - w);
                return mpi_fail(rc, fn, what);
            }
            mt->sent += bytes;
            break;
        }
        if (r + w < R) {
            if ((rc = MPI_Recv(MPI_BOTTOM, 1, mt->theirs_t, r + w, TAG_STEP, mt->comm, MPI_STATUS_IGNORE)) !=
                MPI_SUCCESS) {
                char what[64];
                snprintf(what, sizeof what, "receiving the gradient of rank %d", r + w);
                return mpi_fail(rc, fn, what);
            }
            add_message(mt);
        }
    }
    /* Broadcast of rank 0's sum (and verdict) down the same binomial tree:
     * rank r receives at the level of its lowest set bit, then forwards at
     * every lower level. */
    for (int w = top / 2; w >= 1; w /= 2) {
        if (r % (2 * w) == 0 && r + w < R) {
            if ((rc = MPI_Send(MPI_BOTTOM, 1, mt->mine_t, r + w, TAG_STEP, mt->comm)) != MPI_SUCCESS) {
                char what[64];
                snprintf(what, sizeof what, "forwarding the sum to rank %d", r + w);
                return mpi_fail(rc, fn, what);
            }
            mt->sent += bytes;
        } else if (r % (2 * w) == w) {
            if ((rc = MPI_Recv(MPI_BOTTOM, 1, mt->mine_t, r - w, TAG_STEP, mt->comm, MPI_STATUS_IGNORE)) !=
                MPI_SUCCESS) {
                char what[64];
                snprintf(what, sizeof what, "receiving the sum from rank %d", r - w);
                return mpi_fail(rc, fn, what);
            }
        }
    }
    mt->exchange_s = MPI_Wtime() - t0;
    if (h->status != CR_OK) return cr_failure((cr_status)h->status, "%s: %s", fn, h->msg);
    memcpy(cr_trainer_reached(mt->t), flags_of(h), mt->n);
    cr_tensor_bump_version(cr_trainer_grad(mt->t));
    if (loss) *loss = h->loss;
    return CR_OK;
}

cr_status cr_mpi_trainer_step(cr_mpi_trainer *mt, const cr_task *task, cr_optim *opt, double max_norm,
                              double *loss, double *norm)
{
    static const char fn[] = "cr_mpi_trainer_step";
    if (!mt || !opt) cr_error("%s: %s is NULL", fn, mt ? "optimizer" : "trainer");
    if (!(max_norm >= 0) || !isfinite(max_norm))
        cr_error("%s: max_norm = %g must be finite and >= 0 (0: no clipping)", fn, max_norm);
    if (cr_optim_params(opt) != mt->ps) cr_error("%s: the optimizer is over another parameter set", fn);
    cr_status st = cr_mpi_trainer_backward(mt, task, loss);
    if (st != CR_OK) return st;
    /* From here every rank runs the same serial code on the same gradient,
     * as cr_trainer_step does after its backward. */
    bool serial = cr_trainer_mode(mt->t) == CR_PARALLEL_REPLICAS;
    if (serial) cr_serial_begin();
    cr_trainer_publish(mt->t);
    if (max_norm > 0)
        st = cr_clip_grad_norm(mt->ps, max_norm, norm);
    else if (norm)
        *norm = NAN;
    if (st == CR_OK) cr_optim_step(opt);
    if (serial) cr_serial_end();
    return st;
}

/* ---- state held by rows, statuses, checkpoints ----------------------------------------------- */

/* First row of shard g when `rows` rows go to S shards (as cr_trainer_backward
 * splits a batch: rows/S each, one more for the first rows%S). */
static int64_t shard_row(int64_t g, int64_t rows, int64_t S)
{
    int64_t q = rows / S, rem = rows % S;
    return g * q + (g < rem ? g : rem);
}

cr_status cr_mpi_trainer_share_rows(cr_mpi_trainer *mt, cr_tensor *t, int dim)
{
    static const char fn[] = "cr_mpi_trainer_share_rows";
    char s[128];
    if (!mt || !t) cr_error("%s: %s is NULL", fn, mt ? "tensor" : "trainer");
    if (t->dtype == CR_I32 || !cr_is_contiguous(t) || dim < 0 || dim >= t->ndim)
        cr_error("%s: %s %s, dim %d: needs a contiguous float tensor and a dim it has", fn,
                 cr_dtype_name(t->dtype), cr_shape_str(s, sizeof s, t->ndim, t->shape), dim);
    int64_t rows = t->shape[dim], outer = 1, inner = 1, S = cr_trainer_shards(mt->t);
    for (int d = 0; d < dim; d++) outer *= t->shape[d];
    for (int d = dim + 1; d < t->ndim; d++) inner *= t->shape[d];
    if (outer > INT_MAX || rows * inner > INT_MAX)
        cr_error("%s: %s is too large for one MPI datatype", fn,
                 cr_shape_str(s, sizeof s, t->ndim, t->shape));
    MPI_Datatype elem = t->dtype == CR_F64 ? MPI_DOUBLE : MPI_FLOAT;
    size_t esz = cr_dtype_size(t->dtype);
    for (int r = 0; r < mt->ranks; r++) {
        int first, local;
        cr_mpi_split((int)S, mt->ranks, r, &first, &local);
        int64_t lo = shard_row(first, rows, S), hi = shard_row(first + local, rows, S);
        if (lo == hi || outer == 0 || inner == 0) continue;
        /* rank r's rows in every outer slice: a strided block, sent by r to all */
        MPI_Datatype block;
        int rc = MPI_Type_vector((int)outer, (int)((hi - lo) * inner), (int)(rows * inner), elem, &block);
        if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&block);
        if (rc == MPI_SUCCESS) {
            rc = MPI_Bcast((char *)t->data + (size_t)(lo * inner) * esz, 1, block, r, mt->comm);
            MPI_Type_free(&block);
        }
        if (rc != MPI_SUCCESS) {
            char what[64];
            snprintf(what, sizeof what, "MPI_Bcast of rank %d's rows", r);
            return mpi_fail(rc, fn, what);
        }
    }
    cr_tensor_bump_version(t);
    return CR_OK;
}

typedef struct verdict {
    int64_t status;
    char msg[512];
} verdict;

cr_status cr_mpi_share_status(cr_mpi_trainer *mt, cr_status st)
{
    static const char fn[] = "cr_mpi_share_status";
    if (!mt) cr_error("%s: trainer is NULL", fn);
    verdict v = {.status = st};
    if (mt->rank == 0 && st != CR_OK) snprintf(v.msg, sizeof v.msg, "%s", cr_last_error());
    int rc = MPI_Bcast(&v, (int)sizeof v, MPI_BYTE, 0, mt->comm);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, fn, "MPI_Bcast of rank 0's status");
    if (v.status != CR_OK && mt->rank != 0) return cr_failure((cr_status)v.status, "rank 0: %s", v.msg);
    return (cr_status)v.status;
}

cr_status cr_mpi_checkpoint_save(cr_mpi_trainer *mt, const char *path, const cr_params *ps, const cr_optim *o,
                                 int64_t schedule_step, const cr_rng *rng, const cr_vocab *vocab,
                                 const char *const *meta_kv, size_t n_meta)
{
    static const char fn[] = "cr_mpi_checkpoint_save";
    if (!mt) cr_error("%s: trainer is NULL", fn);
    /* one writer; cr_checkpoint_save renames a complete file into place */
    cr_status st =
        mt->rank == 0 ? cr_checkpoint_save(path, ps, o, schedule_step, rng, vocab, meta_kv, n_meta) : CR_OK;
    return cr_mpi_share_status(mt, st);
}

cr_status cr_mpi_checkpoint_load(cr_mpi_trainer *mt, const char *path, cr_params *ps, cr_optim *o,
                                 int64_t *schedule_step, cr_rng *rng, cr_vocab **vocab)
{
    static const char fn[] = "cr_mpi_checkpoint_load";
    if (!mt) cr_error("%s: trainer is NULL", fn);
    if (ps != mt->ps) cr_error("%s: params are not the trainer's parameter set", fn);
    int64_t step = 0;
    verdict v = {0};
    v.status = cr_checkpoint_load(path, ps, o, &step, rng, vocab);
    if (v.status != CR_OK) snprintf(v.msg, sizeof v.msg, "%s", cr_last_error());
    verdict *all = cr_xcalloc((size_t)mt->ranks, sizeof *all);
    int rc = MPI_Allgather(&v, (int)sizeof v, MPI_BYTE, all, (int)sizeof v, MPI_BYTE, mt->comm);
    if (rc != MPI_SUCCESS) {
        free(all);
        return mpi_fail(rc, fn, "MPI_Allgather of the load statuses");
    }
    cr_status st = CR_OK;
    for (int r = 0; r < mt->ranks && st == CR_OK; r++)
        if (all[r].status != CR_OK) st = cr_failure((cr_status)all[r].status, "rank %d: %s", r, all[r].msg);
    free(all);
    if (st != CR_OK) return st;
    /* Loaded everywhere: the same file must have given the same state. */
    cr_trainer_config cfg = {.shards = cr_trainer_shards(mt->t)};
    if ((st = compare_summaries(mt->comm, mt->ranks, summarise(ps, o, cfg, step), fn,
                                "every rank must read the same checkpoint file")) != CR_OK)
        return st;
    cr_trainer_set_steps(mt->t, step);
    if (schedule_step) *schedule_step = step;
    return CR_OK;
}
