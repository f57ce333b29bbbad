/* Graphviz DOT export of a recorded tape: one box per op (name and output
 * shape), one ellipse per leaf, edges from inputs to the ops that use them. */
#include <errno.h>

#include "ops_internal.h"

static void leaf(FILE *f, const cr_tensor *t)
{
    char s[128];
    fprintf(f, "  t%p [shape=ellipse, label=\"%s\\n%s %s\"];\n", (const void *)t, t->name ? t->name : "leaf",
            cr_dtype_name(t->dtype), cr_shape_str(s, sizeof s, t->ndim, t->shape));
}

int cr_graph_export_dot(const cr_graph *g, FILE *f)
{
    char s[128];
    fprintf(f, "digraph carousel {\n  rankdir=LR;\n  node [fontname=\"monospace\", shape=box];\n");
    for (size_t i = 0; i < cr_graph_node_count(g); i++) {
        const cr_node *n = cr_graph_node(g, i);
        fprintf(f, "  n%p [label=\"%s\\n%s\"];\n", (const void *)n, n->op->name,
                cr_shape_str(s, sizeof s, n->out->ndim, n->out->shape));
        for (int k = 0; k < n->n_in; k++) {
            const cr_tensor *in = n->in[k];
            if (in->node) {
                fprintf(f, "  n%p -> n%p;\n", (const void *)in->node, (const void *)n);
            } else if (in->requires_grad) {
                leaf(f, in);
                fprintf(f, "  t%p -> n%p;\n", (const void *)in, (const void *)n);
            }
        }
    }
    fprintf(f, "}\n");
    if (ferror(f)) {
        if (!errno) errno = EIO;
        return -1;
    }
    return 0;
}
