/* Losses: fused cross-entropy with logits (log-softmax and the negative
 * log-likelihood in one op, ignore_index, mean or sum). */
#include <math.h>

#include "ops_internal.h"

/* loss = -sum_n logp[n, t_n] / count, logp = log_softmax(logits); the
 * gradient is (softmax - onehot(t)) / count for counted rows. n->saved holds
 * logp as [rows, C]. */

typedef struct {
    int64_t ignore_index;
    cr_reduction red;
    int64_t count; /* targets that counted, set by forward */
} ce_attr;

static void cross_entropy_fwd(cr_node *n)
{
    cr_tensor *logits = n->in[0], *target = n->in[1];
    int64_t C = logits->shape[logits->ndim - 1], rows = cr_numel(logits) / (C ? C : 1);
    ce_attr *at = CR_NODE_ATTR(n, ce_attr);
    int64_t ignore = at->ignore_index;
    cr_tensor lv = *as_contiguous(logits);
    lv.ndim = 2;
    lv.shape[0] = rows;
    lv.shape[1] = C;
    lv.stride[0] = C;
    lv.stride[1] = 1;
    n->saved = cr_tensor_new(logits->dtype, 2, lv.shape);
    cr_k_softmax(n->saved, &lv, 1, true);
    const cr_tensor *tc = as_contiguous(target);
    const int32_t *tgt = tc->data;
    double total = 0;
    int64_t count = 0;
    for (int64_t r = 0; r < rows; r++) {
        int32_t t = tgt[r];
        if (t == ignore) continue;
        if (t < 0 || t >= C)
            cr_error("cr_cross_entropy: target %d at row %lld is out of range for %lld classes", t,
                     (long long)r, (long long)C);
        total -= cr_get_flat(n->saved, r * C + t);
        count++;
    }
    at->count = count;
    double loss = at->red == CR_MEAN ? (count ? total / (double)count : NAN) : total;
    cr_set_flat(n->out, 0, loss);
}

static void cross_entropy_bwd(cr_node *n)
{
    bool first_, first;
    cr_tensor *gx_ = input_grad_first(n, 0, &first_);
    if (!gx_) return;
    cr_tensor *gx = gx_;
    first = first_;
    if (!cr_is_contiguous(gx_)) { /* the rows are written raw: into a new contiguous buffer, then added */
        gx = cr_tensor_new(gx_->dtype, gx_->ndim, gx_->shape);
        first = true;
    }
    cr_tensor *logits = n->in[0];
    int64_t C = logits->shape[logits->ndim - 1], rows = cr_numel(logits) / (C ? C : 1);
    const ce_attr *at = CR_NODE_ATTR(n, ce_attr);
    int64_t count = at->count, ignore = at->ignore_index;
    double scale = cr_item(n->out->grad);
    if (at->red == CR_MEAN) scale = count ? scale / (double)count : 0.0;
    /* dlogits (+)= scale * (softmax - onehot(t)) on counted rows; a new buffer's rows are written (0 + v:
     * -0 turns +0, the bits a zero-filled buffer gave), ignored ones zeroed */
    cr_tensor g2 = *gx;
    g2.ndim = 2;
    g2.shape[0] = rows;
    g2.shape[1] = C;
    g2.stride[0] = C;
    g2.stride[1] = 1;
    cr_k_cross_entropy_backward(&g2, first, n->saved, as_contiguous(n->in[1]), ignore, scale);
    if (gx != gx_) grad_add(gx_, first_, gx, NULL);
}
const cr_op cr_op_cross_entropy = {"cr_cross_entropy", cross_entropy_fwd, cross_entropy_bwd, CR_SAVES_IN(1),
                                   sizeof(ce_attr)};

cr_tensor *cr_cross_entropy(cr_tensor *logits, const cr_tensor *target, int64_t ignore_index,
                            cr_reduction red)
{
    char s1[128], s2[128];
    cr_check_float("cr_cross_entropy", logits);
    if (target->dtype != CR_I32)
        cr_error("cr_cross_entropy: targets must be i32, got %s", cr_dtype_name(target->dtype));
    bool ok = (logits->ndim == 2 && target->ndim == 1 && target->shape[0] == logits->shape[0]) ||
              (logits->ndim == 1 && target->ndim == 0);
    if (!ok)
        cr_error("cr_cross_entropy: logits %s and targets %s: need [N,C] with [N], or [C] with []",
                 cr_shape_str(s1, sizeof s1, logits->ndim, logits->shape),
                 cr_shape_str(s2, sizeof s2, target->ndim, target->shape));
    cr_tensor *in[2] = {logits, (cr_tensor *)target};
    cr_node *n = cr_node_new(&cr_op_cross_entropy, 2, in);
    *CR_NODE_ATTR(n, ce_attr) = (ce_attr){ignore_index, red, 0};
    return cr_node_finish(n, logits->dtype, 0, NULL);
}
