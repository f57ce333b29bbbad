/* Indexing and masking ops: row gather (embedding lookup) with scatter-add
 * backward, where, multiplicative masks and inverted dropout. */
#include <string.h>

#include "ops_internal.h"

/* ---- gather_rows --------------------------------------------------------------------- */

typedef struct {
    int64_t skip_index; /* rows equal to it get no gradient (< 0: none) */
    /* The table's and the indices' versions when the lookup was recorded
     * (cr_gather_rows_source asks whether they still hold). */
    uint64_t table_version, idx_version;
} gather_attr;

static void gather_rows_fwd(cr_node *n)
{
    const cr_tensor *table = n->in[0], *idx = n->in[1];
    int64_t rows = table->shape[0], width = cr_numel(table) / (rows ? rows : 1);
    size_t bytes = (size_t)width * cr_dtype_size(table->dtype);
    const int32_t *ix = idx->data;
    for (int64_t i = 0, m = cr_numel(idx); i < m; i++) {
        if (ix[i] < 0 || ix[i] >= rows)
            cr_error("cr_gather_rows: index %d at position %lld is out of range for %lld rows", ix[i],
                     (long long)i, (long long)rows);
        memcpy((char *)n->out->data + (size_t)i * bytes, (const char *)table->data + (size_t)ix[i] * bytes,
               bytes);
    }
}

/* Threads take slices of SCATTER_COLS columns, each running over all of the
 * rows in order, so every element sums its rows in the same order on any
 * thread count. */
enum { SCATTER_COLS = 512 };
#define SCATTER_ADD(T)                                                                                       \
    do {                                                                                                     \
        T *g = gt->data;                                                                                     \
        const T *gy = n->out->grad->data;                                                                    \
        int64_t slices = (width + SCATTER_COLS - 1) / SCATTER_COLS;                                          \
        CR_PAR_FOR(                                                                                          \
            slices > 1 && m * width > cr_parallel_threshold, "omp parallel for schedule(static)",            \
            for (int64_t s = 0; s < slices; s++) {                                                           \
                int64_t j0 = s * SCATTER_COLS, j1 = j0 + SCATTER_COLS < width ? j0 + SCATTER_COLS : width;   \
                for (int64_t i = 0; i < m; i++) {                                                            \
                    if (ix[i] == skip) continue;                                                             \
                    T *row = g + (int64_t)ix[i] * width;                                                     \
                    const T *src = gy + i * width;                                                           \
                    for (int64_t j = j0; j < j1; j++) row[j] += src[j];                                      \
                }                                                                                            \
            });                                                                                              \
    } while (0)

static void gather_rows_bwd(cr_node *n)
{
    struct cr_grad_rows *nonzero = cr_grad_rows_begin(n->in[0]);
    cr_tensor *gt_ = input_grad(n, 0);
    if (!gt_) return;
    cr_tensor *gt = contiguous_grad(gt_); /* the rows are written raw */
    const cr_tensor *idx = n->in[1];
    int64_t rows = n->in[0]->shape[0], width = cr_numel(n->in[0]) / (rows ? rows : 1);
    int64_t m = cr_numel(idx), skip = CR_NODE_ATTR(n, gather_attr)->skip_index;
    const int32_t *ix = idx->data;
    /* dtable[idx[i]] += dy[i] in i's order: repeated indices add in one fixed order */
    if (gt->dtype == CR_F32)
        SCATTER_ADD(float);
    else
        SCATTER_ADD(double);
    contiguous_grad_done(gt_, gt);
    cr_grad_rows_end(n->in[0], nonzero, ix, m, skip);
}
const cr_op cr_op_gather_rows = {"cr_gather_rows", gather_rows_fwd, gather_rows_bwd, CR_SAVES_IN(1),
                                 sizeof(gather_attr)};

cr_tensor *cr_gather_rows(cr_tensor *table, const cr_tensor *idx, int64_t skip_index)
{
    char s1[128], s2[128];
    cr_check_float("cr_gather_rows", table);
    if (idx->dtype != CR_I32)
        cr_error("cr_gather_rows: indices must be i32, got %s", cr_dtype_name(idx->dtype));
    if (table->ndim < 1 || idx->ndim + table->ndim - 1 > CR_MAX_DIMS)
        cr_error("cr_gather_rows: table %s and indices %s do not fit",
                 cr_shape_str(s1, sizeof s1, table->ndim, table->shape),
                 cr_shape_str(s2, sizeof s2, idx->ndim, idx->shape));
    cr_tensor *in[2] = {cr_contiguous(table),
                        (cr_tensor *)(cr_is_contiguous(idx) ? idx : cr_contiguous_copy(idx))};
    int64_t shape[CR_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < idx->ndim; d++) shape[nd++] = idx->shape[d];
    for (int d = 1; d < table->ndim; d++) shape[nd++] = table->shape[d];
    cr_node *n = cr_node_new(&cr_op_gather_rows, 2, in);
    gather_attr *a = CR_NODE_ATTR(n, gather_attr);
    a->skip_index = skip_index;
    a->table_version = cr_tensor_version(in[0]);
    a->idx_version = cr_tensor_version(in[1]);
    return cr_node_finish(n, table->dtype, nd, shape);
}

bool cr_gather_rows_source(const cr_tensor *x, cr_tensor **table, const cr_tensor **idx)
{
    const cr_node *n = cr_step_node(x);
    /* made on this step (its node is intact), the lookup's own output, unwritten */
    if (!n || n->op != &cr_op_gather_rows || n->out != x || cr_tensor_version(x) != 0) return false;
    const gather_attr *a = CR_NODE_ATTR(n, gather_attr);
    if (a->skip_index >= 0 || n->in[0]->ndim != 2 || cr_tensor_version(n->in[0]) != a->table_version ||
        cr_tensor_version(n->in[1]) != a->idx_version)
        return false;
    *table = n->in[0];
    *idx = n->in[1];
    return true;
}

/* ---- where ------------------------------------------------------------------------------ */

static void where_fwd(cr_node *n) { cr_k_where(n->out, n->in[0], n->in[1], n->in[2]); }
static void where_bwd(cr_node *n)
{
    cr_tensor *gy = n->out->grad;
    cr_tensor *zero = cr_scalar(gy->dtype, 0.0), *t = cr_tensor_new(gy->dtype, gy->ndim, gy->shape);
    if (n->in[1]->requires_grad) { /* dx += dy where cond */
        cr_k_where(t, n->in[0], gy, zero);
        input_grad_add(n, 1, t, NULL);
    }
    if (n->in[2]->requires_grad) { /* dy_ += dy where !cond */
        cr_k_where(t, n->in[0], zero, gy);
        input_grad_add(n, 2, t, NULL);
    }
}
const cr_op cr_op_where = {"cr_where", where_fwd, where_bwd, CR_SAVES_IN(0), 0};

cr_tensor *cr_where(const cr_tensor *cond, cr_tensor *x, cr_tensor *y)
{
    char s1[128], s2[128], s3[128];
    cr_check_float_pair("cr_where", x, y);
    int nd;
    int64_t shape[CR_MAX_DIMS];
    bool ok = cr_broadcast_shape(x->ndim, x->shape, y->ndim, y->shape, &nd, shape);
    int nd2;
    int64_t shape2[CR_MAX_DIMS];
    if (ok) ok = cr_broadcast_shape(nd, shape, cond->ndim, cond->shape, &nd2, shape2) && nd2 == nd;
    for (int d = 0; ok && d < nd; d++) ok = shape2[d] == shape[d];
    if (!ok)
        cr_error("cr_where: cond %s, x %s, y %s do not broadcast to the shape of x and y",
                 cr_shape_str(s1, sizeof s1, cond->ndim, cond->shape),
                 cr_shape_str(s2, sizeof s2, x->ndim, x->shape),
                 cr_shape_str(s3, sizeof s3, y->ndim, y->shape));
    if (cond->requires_grad) cond = cr_detach((cr_tensor *)cond);
    cr_tensor *in[3] = {(cr_tensor *)cond, x, y};
    return cr_node_finish(cr_node_new(&cr_op_where, 3, in), x->dtype, nd, shape);
}

/* ---- mask and dropout: y = x * m, no gradient to m ------------------------------------------ */
/* The mask is input 1 (so a write into it before backward is seen), detached
 * when it requires a gradient: it never gets one. */

static void mask_fwd(cr_node *n) { cr_k_binary(CR_B_MUL, n->out, n->in[0], n->in[1]); }
static void mask_bwd(cr_node *n) { input_grad_add(n, 0, n->out->grad, n->in[1]); /* dx += dy * m */ }
const cr_op cr_op_mask = {"cr_mask", mask_fwd, mask_bwd, CR_SAVES_IN(1), 0};

static cr_tensor *mask_new(const cr_op *op, cr_tensor *x, cr_tensor *mask)
{
    char s1[128], s2[128];
    cr_check_float_pair(op->name, x, mask);
    int nd;
    int64_t shape[CR_MAX_DIMS];
    if (!cr_broadcast_shape(x->ndim, x->shape, mask->ndim, mask->shape, &nd, shape) || nd != x->ndim)
        cr_error("%s: mask %s does not broadcast to x %s", op->name,
                 cr_shape_str(s1, sizeof s1, mask->ndim, mask->shape),
                 cr_shape_str(s2, sizeof s2, x->ndim, x->shape));
    for (int d = 0; d < nd; d++)
        if (shape[d] != x->shape[d])
            cr_error("%s: mask %s does not broadcast to x %s", op->name,
                     cr_shape_str(s1, sizeof s1, mask->ndim, mask->shape),
                     cr_shape_str(s2, sizeof s2, x->ndim, x->shape));
    if (mask->requires_grad) mask = cr_detach(mask);
    cr_tensor *in[2] = {x, mask};
    return cr_node_finish(cr_node_new(op, 2, in), x->dtype, x->ndim, x->shape);
}

cr_tensor *cr_mask(cr_tensor *x, const cr_tensor *mask)
{
    return mask_new(&cr_op_mask, x, (cr_tensor *)mask);
}

const cr_op cr_op_dropout = {"cr_dropout", mask_fwd, mask_bwd, CR_SAVES_IN(1), 0};

cr_tensor *cr_dropout(cr_tensor *x, double p, bool train, cr_rng *rng)
{
    if (!(p >= 0 && p < 1)) cr_error("cr_dropout: p = %g is not in [0, 1)", p);
    if (!train || p == 0) return x;
    cr_check_float("cr_dropout", x);
    cr_tensor *m = cr_tensor_new_as("cr_dropout", x->dtype, x->ndim, x->shape);
    cr_fill_dropout_mask(m, rng, p);
    return mask_new(&cr_op_dropout, x, m);
}
