/* The list of built-in cell types, looked up by name. In a file of its own:
 * the cell files use cell.c (and their hand BPTT uses it too), so cell.c
 * must not name the cells. */
#include <string.h>

#include "nn_internal.h"

static const cr_cell_type *const builtins[] = {&cr_cell_rnn_tanh, &cr_cell_rnn_relu,
                                               &cr_cell_gru,      &cr_cell_gru_original,
                                               &cr_cell_lstm,     &cr_cell_lstm_peephole};
#define N_BUILTINS (sizeof builtins / sizeof builtins[0])

const cr_cell_type *const *cr_cell_builtins(size_t *n)
{
    if (n) *n = N_BUILTINS;
    return builtins;
}

const cr_cell_type *cr_cell_builtin(const char *name)
{
    for (size_t k = 0; name && k < N_BUILTINS; k++)
        if (strcmp(builtins[k]->name, name) == 0) return builtins[k];
    return NULL;
}
