/*
 * carousel nn module: named parameter sets, initialisers, layers (Linear,
 * Embedding, Dropout, LayerNorm), RNN/GRU/LSTM cells and sequence layers built
 * from autograd ops, losses, and hand-derived reference BPTT.
 *
 * Parameter names follow PyTorch's layout with dots: "charlm.lstm.l0.w_ih"
 * is torch's weight_ih_l0, "...l0_reverse.b_hh" is bias_hh_l0_reverse.
 */
#ifndef CAROUSEL_NN_H
#define CAROUSEL_NN_H

#include "autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameter sets -------------------------------------------------------- */

typedef struct cr_param {
    char *name;        /* hierarchical, e.g. "charlm.lstm.l0.w_ih" */
    cr_tensor *value;  /* persistent, requires_grad; value->grad is its gradient */
} cr_param;

typedef struct cr_params {
    cr_param *items;
    size_t n, cap;
} cr_params;

cr_params *cr_params_init(void);
void cr_params_free(cr_params *ps); /* frees every parameter tensor and its gradient */
/* Create a zero-filled persistent parameter that requires a gradient. The name
 * is prefix + "." + name (prefix may be NULL or ""). Duplicate names are an error. */
cr_tensor *cr_params_add(cr_params *ps, const char *prefix, const char *name, cr_dtype dt,
                         int ndim, const int64_t *shape);
cr_tensor *cr_params_get(const cr_params *ps, const char *name); /* NULL if absent */
size_t cr_params_numel(const cr_params *ps);  /* scalars in all parameters */
size_t cr_params_bytes(const cr_params *ps);  /* bytes of all parameter values */
void cr_params_zero_grad(cr_params *ps);
/* Print "name dtype shape numel" for every parameter and the totals. */
void cr_params_print(const cr_params *ps, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
