/* Truncated BPTT's carried state: copy a step's final hidden state, by value,
 * into the persistent tensor the next chunk starts from. */
#include "nn.h"

void cr_state_carry(cr_tensor *dst, const cr_tensor *h)
{
    char s1[128], s2[128];
    if (!dst || !h) cr_error("cr_state_carry: %s is NULL", dst ? "h" : "dst");
    if (!dst->persistent)
        cr_error("cr_state_carry: dst %s is a step tensor; the carried state must be persistent "
                 "(cr_tensor_init), or it dies with the graph",
                 cr_shape_str(s1, sizeof s1, dst->ndim, dst->shape));
    if (dst->requires_grad)
        cr_error("cr_state_carry: dst %s requires a gradient; a carried state must be a constant",
                 cr_shape_str(s1, sizeof s1, dst->ndim, dst->shape));
    if (!cr_same_shape(dst, h))
        cr_error("cr_state_carry: dst %s and h %s differ in shape",
                 cr_shape_str(s1, sizeof s1, dst->ndim, dst->shape),
                 cr_shape_str(s2, sizeof s2, h->ndim, h->shape));
    if (dst->data != h->data)
        cr_copy_(dst, h); /* bumps dst's version */
    else
        cr_tensor_bump_version(dst);
}
