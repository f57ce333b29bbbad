/* The graph: a tape of nodes in creation order plus the arena that holds every
 * tensor made during a step. Backward is one reverse walk of the tape. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

struct cr_graph {
    cr_arena *arena;
    cr_node **tape;
    size_t n, cap;
    uint64_t gen; /* changes on every clear, so stale tensors are recognised */
};

static _Thread_local cr_graph *current_graph;
static _Thread_local bool grad_disabled; /* zero-initialised: grad mode on */
static atomic_uint_fast64_t next_gen = 1;

cr_graph *cr_graph_init(void)
{
    cr_graph *g = cr_xcalloc(1, sizeof *g);
    g->arena = cr_arena_init((size_t)1 << 20);
    g->cap = 1024;
    g->tape = cr_xmalloc(g->cap * sizeof *g->tape);
    g->gen = atomic_fetch_add(&next_gen, 1);
    return g;
}

void cr_graph_free(cr_graph *g)
{
    if (!g) return;
    if (current_graph == g) {
        current_graph = NULL;
        cr_arena_use(NULL);
    }
    cr_arena_free(g->arena);
    free(g->tape);
    free(g);
}

cr_graph *cr_graph_use(cr_graph *g)
{
    cr_graph *old = current_graph;
    current_graph = g;
    cr_arena_use(g ? g->arena : NULL);
    return old;
}

cr_graph *cr_graph_current(void) { return current_graph; }

void cr_graph_clear(cr_graph *g)
{
    cr_arena_reset(g->arena);
    g->n = 0;
    g->gen = atomic_fetch_add(&next_gen, 1);
}

size_t cr_graph_node_count(const cr_graph *g) { return g->n; }
const cr_node *cr_graph_node(const cr_graph *g, size_t i) { return i < g->n ? g->tape[i] : NULL; }
size_t cr_graph_bytes_used(const cr_graph *g) { return cr_arena_used(g->arena); }
size_t cr_graph_bytes_reserved(const cr_graph *g) { return cr_arena_capacity(g->arena); }

/* ---- grad mode ------------------------------------------------------------- */

bool cr_grad_enabled(void) { return !grad_disabled; }

bool cr_set_grad_enabled(bool on)
{
    bool old = !grad_disabled;
    grad_disabled = !on;
    return old;
}

void cr_requires_grad(cr_tensor *t, bool on)
{
    if (t->node)
        cr_error("cr_requires_grad: tensor made by op '%s' is not a leaf; use cr_retain_grad",
                 t->node->op->name);
    if (on && t->dtype == CR_I32) cr_error("cr_requires_grad: i32 tensors have no gradient");
    t->requires_grad = on;
}

void cr_retain_grad(cr_tensor *t)
{
    if (!t->requires_grad) cr_error("cr_retain_grad: tensor does not require a gradient");
    t->retain_grad = true;
}

cr_tensor *cr_detach(cr_tensor *t)
{
    cr_tensor *d = cr_tensor_alias(t);
    d->gen = t->gen;
    return d;
}

static cr_graph *need_graph(const char *op)
{
    if (!current_graph) cr_error("%s: no current graph; call cr_graph_use(cr_graph_init()) first", op);
    return current_graph;
}

/* ---- nodes ------------------------------------------------------------------ */

cr_node *cr_node_new(const cr_op *op, int n_in, cr_tensor *const *in)
{
    cr_graph *g = need_graph(op->name);
    /* the node and its input list in one block */
    size_t bytes = sizeof(cr_node) + (size_t)(n_in > 0 ? n_in : 1) * sizeof(cr_tensor *);
    cr_node *n = cr_arena_alloc_aligned(g->arena, bytes, 16);
    memset(n, 0, sizeof *n);
    n->op = op;
    n->n_in = n_in;
    n->in = (cr_tensor **)(n + 1);
    for (int i = 0; i < n_in; i++) {
        if (!in[i]) cr_error("%s: input %d is NULL", op->name, i);
        n->in[i] = in[i];
    }
    return n;
}

static cr_tensor *record(cr_node *n, cr_tensor *out)
{
    cr_graph *g = current_graph;
    n->out = out;
    n->op->forward(n);
    out->gen = g->gen; /* after forward: a view's forward overwrites the header */
    bool needs = false;
    if (!grad_disabled)
        for (int i = 0; i < n->n_in; i++) needs |= n->in[i]->requires_grad;
    if (!needs) return out;
    out->requires_grad = true;
    out->node = n;
    if (g->n == g->cap) {
        g->cap *= 2;
        g->tape = cr_xrealloc(g->tape, g->cap * sizeof *g->tape);
    }
    n->tape_index = g->n;
    g->tape[g->n++] = n;
    return out;
}

cr_tensor *cr_node_finish(cr_node *n, cr_dtype dt, int ndim, const int64_t *shape)
{
    return record(n, cr_tensor_new(dt, ndim, shape));
}

cr_tensor *cr_node_finish_view(cr_node *n)
{
    cr_tensor *out = cr_arena_alloc_aligned(current_graph->arena, sizeof *out, 16);
    memset(out, 0, sizeof *out);
    return record(n, out);
}

cr_tensor *cr_grad_of(cr_tensor *t)
{
    if (!t->grad) t->grad = t->persistent ? cr_tensor_init(t->dtype, t->ndim, t->shape)
                                          : cr_zeros(t->dtype, t->ndim, t->shape);
    return t->grad;
}

void cr_zero_grad(cr_tensor *t)
{
    if (t->grad) cr_fill(t->grad, 0.0);
}

/* ---- backward ------------------------------------------------------------------ */

void cr_backward_with(cr_tensor *out, const cr_tensor *grad)
{
    char s1[128], s2[128];
    cr_graph *g = need_graph("cr_backward");
    if (!out->requires_grad)
        cr_error("cr_backward: tensor %s does not require a gradient (no input needed one, or grad mode was off)",
                 cr_shape_str(s1, sizeof s1, out->ndim, out->shape));
    if (out->node && (out->gen != g->gen || out->node->tape_index >= g->n || g->tape[out->node->tape_index] != out->node))
        cr_error("cr_backward: tensor %s belongs to a graph that was cleared (or is not current)",
                 cr_shape_str(s1, sizeof s1, out->ndim, out->shape));
    if (!cr_same_shape(out, grad) || out->dtype != grad->dtype)
        cr_error("cr_backward: gradient %s %s does not match output %s %s", cr_dtype_name(grad->dtype),
                 cr_shape_str(s1, sizeof s1, grad->ndim, grad->shape), cr_dtype_name(out->dtype),
                 cr_shape_str(s2, sizeof s2, out->ndim, out->shape));
    if (!out->node) { /* a leaf: nothing to propagate */
        cr_k_accumulate(cr_grad_of(out), grad, NULL);
        return;
    }
    size_t start = out->node->tape_index;
    /* Gradients retained by an earlier backward must not flow again: set them
     * aside for this pass, then add this pass's gradient into them. */
    size_t n_kept = 0;
    for (size_t i = 0; i <= start; i++) n_kept += g->tape[i]->out->retain_grad && g->tape[i]->out->grad;
    cr_tensor **kept = NULL;
    if (n_kept) {
        kept = cr_arena_alloc(g->arena, 2 * n_kept * sizeof *kept);
        for (size_t i = 0, k = 0; i <= start; i++) {
            cr_tensor *t = g->tape[i]->out;
            if (!t->retain_grad || !t->grad) continue;
            kept[k++] = t;
            kept[k++] = t->grad;
            t->grad = NULL;
        }
    }
    cr_k_accumulate(cr_grad_of(out), grad, NULL);
    bool old = cr_set_grad_enabled(false); /* backward computes with kernels; record nothing */
    for (size_t i = start + 1; i-- > 0;) {
        cr_node *n = g->tape[i];
        if (!n->out->grad) continue;
        n->op->backward(n);
        if (!n->out->retain_grad) n->out->grad = NULL;
    }
    cr_set_grad_enabled(old);
    for (size_t k = 0; k < 2 * n_kept; k += 2) {
        cr_tensor *t = kept[k], *earlier = kept[k + 1];
        if (t->grad) cr_k_accumulate(earlier, t->grad, NULL);
        t->grad = earlier;
    }
}

void cr_backward(cr_tensor *loss)
{
    char s[128];
    if (cr_numel(loss) != 1)
        cr_error("cr_backward: loss %s has %lld elements; give an output gradient with cr_backward_with",
                 cr_shape_str(s, sizeof s, loss->ndim, loss->shape), (long long)cr_numel(loss));
    need_graph("cr_backward");
    cr_tensor *one = cr_full(loss->dtype, loss->ndim, loss->shape, 1.0);
    cr_backward_with(loss, one);
}

/* ---- the op table ------------------------------------------------------------- */

#define CR_OP_ENTRY(name) &cr_op_##name,
static const cr_op *const op_table[] = {CR_OP_LIST(CR_OP_ENTRY)};
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

void cr_check_float(const char *op, const cr_tensor *a)
{
    if (a->dtype == CR_I32) {
        char s[128];
        cr_error("%s: needs f32 or f64, got i32 %s", op, cr_shape_str(s, sizeof s, a->ndim, a->shape));
    }
}

void cr_check_float_pair(const char *op, const cr_tensor *a, const cr_tensor *b)
{
    char s1[128], s2[128];
    if (a->dtype != b->dtype || a->dtype == CR_I32)
        cr_error("%s: %s %s and %s %s (need one float dtype)", op, cr_dtype_name(a->dtype),
                 cr_shape_str(s1, sizeof s1, a->ndim, a->shape), cr_dtype_name(b->dtype),
                 cr_shape_str(s2, sizeof s2, b->ndim, b->shape));
}
