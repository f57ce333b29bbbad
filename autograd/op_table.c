/* The op table: every op descriptor the library defines, for tests and tools.
 * It is the only file that refers to all of them, so no op file depends on
 * another through it (and graph.c, which every op file uses, on none). */
#include <string.h>

#include "ops_internal.h"

#define CR_OP_ENTRY(name) &cr_op_##name,
#define CR_UNARY_OP_ENTRY(name, KIND, np, params, reads, fwd, deriv, valid) CR_OP_ENTRY(name)
static const cr_op *const op_table[] = {CR_OP_LIST(CR_OP_ENTRY) CR_UNARY_OPS(CR_UNARY_OP_ENTRY)};
#undef CR_UNARY_OP_ENTRY
#undef CR_OP_ENTRY

const cr_op *const *cr_op_table(size_t *count)
{
    *count = sizeof op_table / sizeof op_table[0];
    return op_table;
}

const cr_op *cr_op_find(const char *name)
{
    for (size_t i = 0; i < sizeof op_table / sizeof op_table[0]; i++)
        if (strcmp(op_table[i]->name, name) == 0) return op_table[i];
    return NULL;
}
