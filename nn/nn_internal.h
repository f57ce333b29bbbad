/* Internal to nn/: what the cell types (cell.c, cell_*.c), the sequence
 * layer (rnn.c) and the hand-derived BPTT (bptt.c) share. Not installed. */
#ifndef CAROUSEL_NN_INTERNAL_H
#define CAROUSEL_NN_INTERNAL_H

#include "nn.h"

/* The hand-derived BPTT of each built-in cell (nn/bptt.c). */
extern const struct cr_cell_bptt cr_bptt_rnn_tanh, cr_bptt_rnn_relu, cr_bptt_gru, cr_bptt_gru_original,
    cr_bptt_lstm, cr_bptt_lstm_peephole;

/* Validate a type's descriptor (errors name op and the type); returns the
 * index of its CR_PARAM_INPUT row. */
int cr_cell_type_check(const char *op, const cr_cell_type *type);
/* The CR_PARAM_INPUT row of a checked type. */
int cr_cell_input_index(const cr_cell_type *type);
/* Everything cr_cell_make would refuse, checked before anything is made. */
void cr_cell_config_check(const char *op, const cr_cell_config *cfg);
/* Create one cell's parameters prefix.<name> (op names the public caller). */
cr_cell cr_cell_make(const char *op, cr_params *ps, const char *prefix, const cr_cell_config *cfg,
                     cr_rng *rng);
/* The weights a step sees (w[j] of cr_cell_step_fn), made once per sequence
 * of T steps of batch B: W^T as a view for one step, else as cr_weight_t (a
 * view packed once, whose products stack their weight-gradient rows). */
void cr_cell_step_weights(const cr_cell *cell, cr_tensor **w, int64_t T, int64_t B);
/* x W_ih^T + the input biases, x [..., I] -> [..., G]. With fold_idx
 * non-NULL and x a lookup E[idx] of an embedding table E [V, I]
 * (cr_gather_rows_source) with at least 2V lookups, the projection of the
 * table instead, E W_ih^T + biases [V, G], and *fold_idx = idx: row idx[i] of
 * it is row i of x's projection. Else *fold_idx = NULL. */
cr_tensor *cr_cell_project(const cr_cell *cell, cr_tensor *x, const cr_tensor **fold_idx);
/* The step to run: the fused one when the type has it and `fused`. */
cr_cell_step_fn cr_cell_step_of(const cr_cell_type *type, bool fused);
/* Every next[k] of a step is a (B, H) tensor of dtype dt, else an error
 * naming op and the type. */
void cr_cell_check_next(const char *op, const cr_cell *cell, cr_tensor *const *next, int64_t B, cr_dtype dt);

#endif
