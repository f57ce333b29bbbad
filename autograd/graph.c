/* The graph: a tape of nodes in creation order plus the arena that holds every
 * tensor made during a step. Backward is one reverse walk of the tape. The
 * checks that keep a gradient from being silently wrong live here too: stale
 * step tensors, in-place writes to what backward reads (versions), and
 * anomaly detection (NaN or inf in an op's output or gradients). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

struct cr_graph {
    cr_arena *arena;
    cr_node **tape;
    size_t n, cap;
    uint64_t gen; /* the arena's generation: changes on every clear, so stale tensors are recognised */
};

static _Thread_local cr_graph *current_graph;
static _Thread_local bool grad_disabled; /* zero-initialised: grad mode on */
static _Thread_local bool detect_anomaly;
/* Grad mode as it was when the running backward began: errors raised inside
 * backward restore it first, so a handler that longjmps out (tests do) does
 * not leave recording off. */
static _Thread_local bool grad_disabled_outside;
/* Where a persistent leaf's gradient goes on this thread (cr_set_grad_hook). */
static _Thread_local cr_grad_hook grad_hook;
static _Thread_local void *grad_hook_ctx;

cr_graph *cr_graph_init(void)
{
    cr_graph *g = cr_xcalloc(1, sizeof *g);
    g->arena = cr_arena_init((size_t)1 << 20);
    g->cap = 1024;
    g->tape = cr_xmalloc(g->cap * sizeof *g->tape);
    g->gen = cr_arena_generation(g->arena);
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
    g->gen = cr_arena_generation(g->arena);
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

bool cr_set_detect_anomaly(bool on)
{
    bool old = detect_anomaly;
    detect_anomaly = on;
    return old;
}

bool cr_detect_anomaly(void) { return detect_anomaly; }

void cr_requires_grad(cr_tensor *t, bool on)
{
    if (t->node)
        cr_error("cr_requires_grad: tensor made by %s is not a leaf; use cr_retain_grad", t->node->op->name);
    if (on && t->dtype == CR_I32) cr_error("cr_requires_grad: i32 tensors have no gradient");
    t->requires_grad = on;
}

void cr_retain_grad(cr_tensor *t)
{
    if (!t->requires_grad) cr_error("cr_retain_grad: tensor does not require a gradient");
    t->retain_grad = true;
}

static cr_graph *need_graph(const char *op)
{
    if (!current_graph) cr_error("%s: no current graph; call cr_graph_use(cr_graph_init()) first", op);
    return current_graph;
}

/* ---- what made a tensor, for messages ---------------------------------------- */

/* The op that made t, when its node is still intact: t's node is this graph's
 * and either on the current tape or in arena memory not reused since a clear.
 * NULL for leaves and when that cannot be known. */
static const cr_op *maker(const cr_graph *g, const cr_tensor *t)
{
    const cr_node *n = t->node;
    if (!n) return NULL;
    if (t->gen == g->gen) return n->op;
    return cr_arena_untouched(g->arena, n) ? n->op : NULL;
}

/* " (made by cr_tanh, tape #3)" or "" into buf */
static const char *made_by(char *buf, size_t len, const cr_graph *g, const cr_tensor *t)
{
    const cr_op *op = maker(g, t);
    if (op && t->gen == g->gen)
        snprintf(buf, len, " (made by %s, tape #%zu)", op->name, t->node->tape_index);
    else if (op)
        snprintf(buf, len, " (made by %s)", op->name);
    else if (t->node && cr_arena_owns(g->arena, t->node))
        snprintf(buf, len, " (made by an op whose record was reused since)");
    else
        buf[0] = '\0'; /* a leaf, or another graph's tensor */
    return buf;
}

/* A step tensor (gen != 0) used in this graph must be of its current step. */
static void check_current(const char *fn, const char *what, int i, const cr_graph *g, const cr_tensor *t)
{
    if (!t->gen || t->gen == g->gen) return;
    char s[128], m[128];
    cr_error("%s: %s %d, %s %s%s, is a step tensor from before a cr_graph_clear or from another graph; "
             "keep values across steps in persistent tensors (cr_tensor_init)",
             fn, what, i, cr_dtype_name(t->dtype), cr_shape_str(s, sizeof s, t->ndim, t->shape),
             made_by(m, sizeof m, g, t));
}

cr_tensor *cr_detach(cr_tensor *t)
{
    cr_graph *g = need_graph("cr_detach");
    check_current("cr_detach", "tensor", 0, g, t);
    return cr_tensor_alias(t);
}

/* ---- nodes ------------------------------------------------------------------ */

/* Version slots follow the input list: one per saved input, then the output,
 * in the order of op->saves's bits. */
static int version_slots(const cr_op *op, int n_in)
{
    int k = 0;
    for (int i = 0; i < n_in && i < 8; i++) k += (op->saves & CR_SAVES_IN(i)) != 0;
    return k + ((op->saves & CR_SAVES_OUT) != 0);
}

static inline uint64_t *node_versions(const cr_node *n) { return (uint64_t *)(n->in + n->n_in); }

static inline uint64_t version_of(const cr_tensor *t) { return t->version ? *t->version : 0; }

cr_node *cr_node_new(const cr_op *op, int n_in, cr_tensor *const *in)
{
    cr_graph *g = need_graph(op->name);
    if (n_in < 0) cr_error("%s: %d inputs", op->name, n_in);
    for (int i = 0; i < n_in; i++) { /* before allocating, which may reuse a stale input's memory */
        if (!in[i]) cr_error("%s: input %d is NULL", op->name, i);
        check_current(op->name, "input", i, g, in[i]);
    }
    /* the node, its input list, its version slots and its attributes in one block */
    size_t head = sizeof(cr_node) + (size_t)n_in * sizeof(cr_tensor *) +
                  (size_t)version_slots(op, n_in) * sizeof(uint64_t);
    cr_node *n = cr_arena_alloc_aligned(g->arena, head + op->attr_size, 16);
    memset(n, 0, sizeof *n);
    n->op = op;
    n->n_in = n_in;
    n->in = (cr_tensor **)(n + 1);
    if (op->attr_size) {
        n->attr = (char *)n + head;
        memset(n->attr, 0, op->attr_size);
    }
    for (int i = 0; i < n_in; i++) n->in[i] = in[i];
    return n;
}

void cr_node_attr_mismatch(const cr_node *n, size_t size)
{
    cr_error("%s: attributes read as %zu bytes, but the op's descriptor declares %zu", n->op->name, size,
             n->op->attr_size);
}

/* ---- anomaly detection ---------------------------------------------------------- */

/* Whether any of n floats (or doubles) has all exponent bits set (inf or
 * NaN): an OR over integer bits, which vectorises, unlike an early-exit
 * isfinite loop. */
static bool any_nonfinite_f32(const float *p, int64_t n)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, p + i, sizeof b);
        bad |= (~b & 0x7f800000u) == 0;
    }
    return bad;
}

static bool any_nonfinite_f64(const double *p, int64_t n)
{
    uint64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t b;
        memcpy(&b, p + i, sizeof b);
        bad |= (~b & 0x7ff0000000000000u) == 0;
    }
    return bad;
}

/* Index of the first NaN or inf of a float tensor, or -1. */
static int64_t first_nonfinite(const cr_tensor *t)
{
    int64_t n = cr_numel(t);
    if (t->dtype == CR_I32) return -1;
    if (cr_is_contiguous(t)) {
        bool any = t->dtype == CR_F32 ? any_nonfinite_f32(t->data, n) : any_nonfinite_f64(t->data, n);
        if (!any) return -1;
    }
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(cr_get_flat(t, i))) return i;
    return -1;
}

/* Raise the anomaly found in `bad` (element at, value v) while running n's
 * `phase`; `what` says which tensor it is. The message names the op, its tape
 * position, the shapes, the ops that made its inputs and the last few ops
 * recorded before it. */
static _Noreturn void anomaly(const cr_graph *g, const cr_node *n, bool recorded, bool in_backward,
                              const char *what, const cr_tensor *bad, int64_t at)
{
    char msg[900], s[128], m[128];
    size_t used = 0;
#define PUT(...) (used += (size_t)snprintf(msg + used, used < sizeof msg ? sizeof msg - used : 0, __VA_ARGS__))
    char pos[48];
    if (recorded) snprintf(pos, sizeof pos, "tape #%zu", n->tape_index);
    else snprintf(pos, sizeof pos, "not on the tape");
    double v = cr_get_flat(bad, at);
    PUT("%s%s (%s) %s: anomaly: %s, %s %s, holds %s at element %lld; output %s", in_backward ? "cr_backward: " : "",
        n->op->name, pos, in_backward ? "backward" : "forward", what,
        cr_dtype_name(bad->dtype), cr_shape_str(s, sizeof s, bad->ndim, bad->shape), isnan(v) ? "NaN" : v < 0 ? "-inf" : "inf",
        (long long)at, cr_shape_str(s, sizeof s, n->out->ndim, n->out->shape));
    for (int i = 0; i < n->n_in && i < 4; i++)
        PUT("; input %d %s%s", i, cr_shape_str(s, sizeof s, n->in[i]->ndim, n->in[i]->shape),
            n->in[i]->node ? made_by(m, sizeof m, g, n->in[i]) : n->in[i]->requires_grad ? " (a leaf)" : "");
    size_t end = recorded ? n->tape_index : g->n;
    if (end > 0) PUT("; last ops before it:");
    for (size_t k = end > 3 ? end - 3 : 0; k < end; k++) {
        const cr_node *p = g->tape[k];
        PUT(" #%zu %s %s", k, p->op->name, cr_shape_str(s, sizeof s, p->out->ndim, p->out->shape));
    }
#undef PUT
    if (in_backward) grad_disabled = grad_disabled_outside;
    cr_error("%s", msg);
}

/* ---- recording --------------------------------------------------------------------- */

static cr_tensor *record(cr_node *n, cr_tensor *out)
{
    cr_graph *g = current_graph;
    n->out = out;
    n->op->forward(n);
    out->gen = g->gen; /* after forward: a view's forward overwrites the header */
    bool needs = false;
    if (!grad_disabled)
        for (int i = 0; i < n->n_in; i++) needs |= n->in[i]->requires_grad;
    if (needs) {
        out->requires_grad = true;
        out->node = n;
        if (g->n == g->cap) {
            g->cap *= 2;
            g->tape = cr_xrealloc(g->tape, g->cap * sizeof *g->tape);
        }
        n->tape_index = g->n;
        g->tape[g->n++] = n;
        unsigned saves = n->op->saves;
        if (saves & ~CR_SAVES_CROSS) { /* note the versions backward will expect */
            if ((saves & CR_SAVES_CROSS) && n->n_in == 2) {
                if (!n->in[1]->requires_grad) saves &= ~CR_SAVES_IN(0);
                if (!n->in[0]->requires_grad) saves &= ~CR_SAVES_IN(1);
            }
            n->saves = saves;
            uint64_t *ver = node_versions(n);
            int k = 0;
            for (int i = 0; i < n->n_in && i < 8; i++)
                if (n->op->saves & CR_SAVES_IN(i)) ver[k++] = version_of(n->in[i]);
            if (n->op->saves & CR_SAVES_OUT) ver[k] = version_of(out);
        }
    }
    if (detect_anomaly) {
        int64_t at = first_nonfinite(out);
        if (at >= 0) anomaly(g, n, needs, false, "the output", out, at);
    }
    return out;
}

cr_tensor *cr_node_finish(cr_node *n, cr_dtype dt, int ndim, const int64_t *shape)
{
    return record(n, cr_tensor_new_as(n->op->name, dt, ndim, shape));
}

cr_tensor *cr_node_finish_view(cr_node *n)
{
    cr_tensor *out = cr_arena_alloc_aligned(current_graph->arena, sizeof *out, 16);
    memset(out, 0, sizeof *out);
    return record(n, out);
}

void cr_set_grad_hook(cr_grad_hook fn, void *ctx)
{
    grad_hook = fn;
    grad_hook_ctx = fn ? ctx : NULL;
}

cr_tensor *cr_grad_of(cr_tensor *t)
{
    if (grad_hook && t->persistent) return grad_hook(grad_hook_ctx, t); /* a replica's own buffer */
    if (!t->grad) t->grad = t->persistent ? cr_tensor_init(t->dtype, t->ndim, t->shape)
                                          : cr_zeros(t->dtype, t->ndim, t->shape);
    return t->grad;
}

void cr_zero_grad(cr_tensor *t)
{
    if (t->grad) cr_fill(t->grad, 0.0);
}

/* ---- backward ------------------------------------------------------------------ */

/* Refuse n's backward when it would read a tensor written in place since n
 * was recorded. */
static _Noreturn void version_error(const cr_node *n, const char *which, const cr_tensor *t, uint64_t then)
{
    char s[128];
    grad_disabled = grad_disabled_outside;
    cr_error("cr_backward: %s (tape #%zu) needs its %s, %s %s, but it was written in place after the op "
             "was recorded (version %llu then, %llu now); write after backward, or into a copy",
             n->op->name, n->tape_index, which, cr_dtype_name(t->dtype), cr_shape_str(s, sizeof s, t->ndim, t->shape),
             (unsigned long long)then, (unsigned long long)version_of(t));
}

static void check_versions(const cr_node *n)
{
    const uint64_t *ver = node_versions(n);
    int k = 0;
    for (int i = 0; i < n->n_in && i < 8; i++) {
        if (!(n->op->saves & CR_SAVES_IN(i))) continue;
        uint64_t then = ver[k++];
        if ((n->saves & CR_SAVES_IN(i)) && version_of(n->in[i]) != then) {
            char which[32];
            snprintf(which, sizeof which, "input %d", i);
            version_error(n, which, n->in[i], then);
        }
    }
    if ((n->saves & CR_SAVES_OUT) && version_of(n->out) != ver[k]) version_error(n, "output", n->out, ver[k]);
}

/* The gradient backward has added into t so far (NULL if none), wherever a
 * grad hook sends it. */
static const cr_tensor *grad_now(cr_tensor *t)
{
    return grad_hook && t->persistent && t->requires_grad ? grad_hook(grad_hook_ctx, t) : t->grad;
}

/* n's backward under anomaly detection: a gradient that was finite before and
 * is not after is this op's doing (one that already held a NaN is not). */
static void backward_checked(const cr_graph *g, cr_node *n)
{
    uint64_t finite_before = ~(uint64_t)0; /* one bit per input, up to 64 */
    for (int i = 0; i < n->n_in && i < 64; i++) {
        const cr_tensor *gr = grad_now(n->in[i]);
        if (n->in[i]->requires_grad && gr && first_nonfinite(gr) >= 0) finite_before &= ~((uint64_t)1 << i);
    }
    n->op->backward(n);
    for (int i = 0; i < n->n_in; i++) {
        const cr_tensor *gr = grad_now(n->in[i]);
        if (!n->in[i]->requires_grad || !gr || (i < 64 && !(finite_before >> i & 1))) continue;
        int64_t at = first_nonfinite(gr);
        if (at >= 0) {
            char what[48];
            snprintf(what, sizeof what, "the gradient for input %d", i);
            anomaly(g, n, true, true, what, gr, at);
        }
    }
}

void cr_backward_with(cr_tensor *out, const cr_tensor *grad)
{
    char s1[128], s2[128];
    cr_graph *g = need_graph("cr_backward");
    if (!out->requires_grad)
        cr_error("cr_backward: tensor %s does not require a gradient (no input needed one, or grad mode was off)",
                 cr_shape_str(s1, sizeof s1, out->ndim, out->shape));
    if (out->node && (out->gen != g->gen || out->node->tape_index >= g->n || g->tape[out->node->tape_index] != out->node))
        cr_error("cr_backward: tensor %s%s belongs to a graph that was cleared (or is not current)",
                 cr_shape_str(s1, sizeof s1, out->ndim, out->shape), made_by(s2, sizeof s2, g, out));
    check_current("cr_backward", "gradient", 0, g, grad);
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
    grad_disabled_outside = !old;
    bool anomalies = detect_anomaly;
    for (size_t i = start + 1; i-- > 0;) {
        cr_node *n = g->tape[i];
        if (!n->out->grad) continue;
        if (n->saves) check_versions(n);
        if (anomalies)
            backward_checked(g, n);
        else
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

/* ---- checks shared by the op files ------------------------------------------------ */

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
