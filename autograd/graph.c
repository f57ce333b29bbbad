/* The graph: a tape of nodes in creation order, the arena that holds every
 * header made during a step, and the pool that holds the storage of op
 * outputs and gradients, whose lifetimes the tape gives: a gradient dies once
 * its node's backward has run, a value no backward reads dies at the end of
 * its scope. Backward is one reverse walk of the tape. The checks that keep a
 * gradient from being silently wrong live here too: stale step tensors,
 * released values, in-place writes to what backward reads (versions), and
 * anomaly detection (NaN or inf in an op's output or gradients). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "graph_internal.h"

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
    g->pool = cr_pool_init((size_t)1 << 20);
    g->cap = 1024;
    g->tape = cr_xmalloc(g->cap * sizeof *g->tape);
    g->cap_log = 256;
    g->log = cr_xmalloc(g->cap_log * sizeof *g->log);
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
    cr_pool_free(g->pool);
    free(g->tape);
    free(g->log);
    free(g->scratch);
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

/* Everything goes at once: scopes still open are closed with it. */
void cr_graph_clear(cr_graph *g)
{
    cr_arena_reset(g->arena);
    cr_pool_reset(g->pool);
    g->n = 0;
    g->n_log = 0;
    g->depth = 0;
    g->segments = 0;
    g->capture_seq = 0;
    g->gen = cr_arena_generation(g->arena);
}

size_t cr_graph_node_count(const cr_graph *g) { return g->n; }
const cr_node *cr_graph_node(const cr_graph *g, size_t i) { return i < g->n ? g->tape[i] : NULL; }
size_t cr_graph_bytes_used(const cr_graph *g) { return cr_arena_used(g->arena) + cr_pool_live(g->pool); }
size_t cr_graph_bytes_reserved(const cr_graph *g)
{
    return cr_arena_capacity(g->arena) + cr_pool_capacity(g->pool);
}
size_t cr_graph_bytes_peak(const cr_graph *g)
{
    size_t now = cr_graph_bytes_used(g);
    return now > g->peak ? now : g->peak;
}

void *cr_graph_scratch(cr_graph *g, size_t bytes)
{
    if (bytes > g->scratch_cap) {
        free(g->scratch);
        g->scratch_cap = bytes > 2 * g->scratch_cap ? bytes : 2 * g->scratch_cap;
        g->scratch = cr_xmalloc(g->scratch_cap);
    }
    memset(g->scratch, 0, bytes);
    return g->scratch;
}

/* A pool block, noting the most bytes the graph has held. */
static cr_block *pool_get(cr_graph *g, size_t bytes, int kind)
{
    cr_block *b = cr_pool_get(g->pool, bytes, kind);
    size_t used = cr_arena_used(g->arena) + cr_pool_live(g->pool);
    if (used > g->peak) g->peak = used;
    return b;
}

cr_block *cr_graph_block_get(cr_graph *g, size_t bytes) { return pool_get(g, bytes, CR_BLOCK_GRAD); }
void cr_graph_block_put(cr_graph *g, cr_block *b) { cr_pool_put(g->pool, b); }

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

const cr_node *cr_step_node(const cr_tensor *t)
{
    return current_graph && t->gen && t->gen == current_graph->gen ? t->node : NULL;
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

static void check_usable(const char *fn, const char *what, int i, const cr_tensor *t)
{
    cr_graph *g = need_graph(fn);
    check_current(fn, what, i, g, t);
    if (cr_tensor_released(t)) {
        char s[128], m[128];
        cr_error("%s: %s %d, %s %s%s, was released: no backward reads it and its scope ended (cr_scope_end) "
                 "or it was made inside a recomputed segment; keep it in cr_scope_end's list to use it after",
                 fn, what, i, cr_dtype_name(t->dtype), cr_shape_str(s, sizeof s, t->ndim, t->shape),
                 made_by(m, sizeof m, g, t));
    }
}

void cr_check_input(const char *fn, int i, const cr_tensor *t) { check_usable(fn, "input", i, t); }

cr_tensor *cr_detach(cr_tensor *t)
{
    check_usable("cr_detach", "tensor", 0, t);
    return cr_tensor_alias(t);
}

/* ---- value storage: the pool, scopes ------------------------------------------ */

/* The header that owns t's storage holds the version counter every view of
 * it points at. */
cr_tensor *cr_storage_owner(const cr_tensor *t)
{
    return t->version ? (cr_tensor *)((char *)t->version - offsetof(cr_tensor, version_store)) : NULL;
}

cr_block *cr_value_block(const cr_tensor *t)
{
    if (!t->version) return NULL;
    const cr_tensor *o = cr_storage_owner(t);
    if (o->persistent || !o->owned) return NULL;
    cr_block *b = o->owned;
    return b->kind == CR_BLOCK_VALUE && b->owner == o && !b->free ? b : NULL;
}

static void log_push(cr_graph *g, cr_block *b)
{
    if (g->n_log == g->cap_log) {
        g->cap_log *= 2;
        g->log = cr_xrealloc(g->log, g->cap_log * sizeof *g->log);
    }
    g->log[g->n_log++] = b;
}

/* The storage goes back to the pool; its header (and through the shared
 * version counter, every view of it) is marked released. */
static void release_value(cr_graph *g, cr_block *b)
{
    cr_tensor *o = b->owner;
    o->version_store = CR_VERSION_RELEASED;
    o->data = NULL;
    cr_pool_put(g->pool, b);
}

void cr_release_since(cr_graph *g, size_t log_pos, uint64_t seq0, int n_keep, cr_tensor *const *keep,
                      bool all)
{
    for (int k = 0; k < n_keep; k++) {
        cr_block *b = keep[k] ? cr_value_block(keep[k]) : NULL;
        if (b && b->seq >= seq0) b->kept = true;
    }
    size_t w = log_pos;
    for (size_t r = log_pos; r < g->n_log; r++) {
        cr_block *b = g->log[r];
        if (b->kept) { /* stays, and an enclosing scope may release it */
            b->kept = false;
            if (all) b->saved = false; /* only the discarded tape read it */
            g->log[w++] = b;
        } else if (b->saved && !all) {
            /* a backward reads it: it stays until the clear, out of every
             * scope's reach, unless a segment around discards its tape */
            if (g->segments) g->log[w++] = b;
        } else {
            release_value(g, b);
        }
    }
    g->n_log = w;
}

cr_scope cr_scope_begin(void)
{
    cr_graph *g = need_graph("cr_scope_begin");
    g->depth++;
    return (cr_scope){.log_pos = g->n_log, .seq = cr_pool_seq(g->pool), .gen = g->gen, .depth = g->depth};
}

void cr_scope_end(cr_scope s, int n_keep, cr_tensor *const *keep)
{
    cr_graph *g = need_graph("cr_scope_end");
    if (s.gen != g->gen || s.depth < 1)
        cr_error(
            "cr_scope_end: the scope was not opened in this graph's current step (cr_graph_clear closes every scope)");
    if (s.depth != g->depth)
        cr_error(
            "cr_scope_end: scopes end innermost first: this one was opened at depth %d, the innermost open one "
            "at depth %d",
            s.depth, g->depth);
    if (n_keep < 0 || (n_keep > 0 && !keep))
        cr_error("cr_scope_end: %d tensors to keep, list %p", n_keep, (void *)keep);
    cr_release_since(g, s.log_pos, s.seq, n_keep, keep, false);
    g->depth--;
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
        if (cr_tensor_released(in[i])) check_usable(op->name, "input", i, in[i]); /* reports it */
        if (g->capture_seq) { /* a segment's first run: what it reads from before it stays for its recompute
                               */
            cr_block *b = cr_value_block(in[i]);
            if (b && b->seq < g->capture_seq) b->saved = true;
        }
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
#define PUT(...)                                                                                             \
    (used += (size_t)snprintf(msg + used, used < sizeof msg ? sizeof msg - used : 0, __VA_ARGS__))
    char pos[48];
    if (recorded)
        snprintf(pos, sizeof pos, "tape #%zu", n->tape_index);
    else
        snprintf(pos, sizeof pos, "not on the tape");
    double v = cr_get_flat(bad, at);
    PUT("%s%s (%s) %s: anomaly: %s, %s %s, holds %s at element %lld; output %s",
        in_backward ? "cr_backward: " : "", n->op->name, pos, in_backward ? "backward" : "forward", what,
        cr_dtype_name(bad->dtype), cr_shape_str(s, sizeof s, bad->ndim, bad->shape),
        isnan(v) ? "NaN"
        : v < 0  ? "-inf"
                 : "inf",
        (long long)at, cr_shape_str(s, sizeof s, n->out->ndim, n->out->shape));
    for (int i = 0; i < n->n_in && i < 4; i++)
        PUT("; input %d %s%s", i, cr_shape_str(s, sizeof s, n->in[i]->ndim, n->in[i]->shape),
            n->in[i]->node            ? made_by(m, sizeof m, g, n->in[i])
            : n->in[i]->requires_grad ? " (a leaf)"
                                      : "");
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

static void mark_saved(const cr_tensor *t)
{
    cr_block *b = cr_value_block(t);
    if (b) b->saved = true;
}

/* Put n on the tape when it needs a gradient: note the versions of what its
 * backward reads and keep their storage to the clear. */
static cr_tensor *finish(cr_node *n, cr_tensor *out, bool needs)
{
    cr_graph *g = current_graph;
    out->gen = g->gen; /* after forward: a view's forward overwrites the header */
    if (needs) {
        out->requires_grad = true;
        out->node = n;
        if (g->n == g->cap) {
            g->cap *= 2;
            g->tape = cr_xrealloc(g->tape, g->cap * sizeof *g->tape);
        }
        n->tape_index = g->n;
        g->tape[g->n++] = n;
        unsigned saves = n->op->saves & ~CR_OP_VIEW;
        if (saves & ~CR_SAVES_CROSS) {                      /* note the versions backward will expect */
            if ((saves & CR_SAVES_CROSS) && n->n_in >= 2) { /* inputs 0 and 1 */
                if (!n->in[1]->requires_grad) saves &= ~CR_SAVES_IN(0);
                if (!n->in[0]->requires_grad) saves &= ~CR_SAVES_IN(1);
            }
            n->saves = saves;
            uint64_t *ver = node_versions(n);
            int k = 0;
            for (int i = 0; i < n->n_in && i < 8; i++)
                if (n->op->saves & CR_SAVES_IN(i)) ver[k++] = version_of(n->in[i]);
            if (n->op->saves & CR_SAVES_OUT) ver[k] = version_of(out);
            for (int i = 0; i < n->n_in && i < 8; i++)
                if (saves & CR_SAVES_IN(i)) mark_saved(n->in[i]);
            if (saves & CR_SAVES_OUT) mark_saved(out);
        }
    }
    if (detect_anomaly) {
        int64_t at = first_nonfinite(out);
        if (at >= 0) anomaly(g, n, needs, false, "the output", out, at);
    }
    return out;
}

static cr_tensor *record(cr_node *n, cr_tensor *out)
{
    n->out = out;
    n->op->forward(n);
    bool needs = false;
    if (!grad_disabled)
        for (int i = 0; i < n->n_in; i++) needs |= n->in[i]->requires_grad;
    return finish(n, out, needs);
}

cr_tensor *cr_record_computed(cr_node *n, cr_tensor *out, bool needs)
{
    n->out = out;
    return finish(n, out, needs && !grad_disabled);
}

/* Op outputs keep their header in the arena (so a released one is still
 * recognised) and their storage in the pool. */
cr_tensor *cr_value_new(cr_graph *g, const char *fn, cr_dtype dt, int ndim, const int64_t *shape)
{
    cr_tensor *t = cr_tensor_header_new_as(fn, dt, ndim, shape);
    cr_block *b = pool_get(g, (size_t)cr_numel(t) * cr_dtype_size(dt), CR_BLOCK_VALUE);
    b->owner = t;
    t->data = cr_block_payload(b);
    t->owned = b;
    if (g->depth > 0) log_push(g, b);
    return t;
}

cr_tensor *cr_node_finish(cr_node *n, cr_dtype dt, int ndim, const int64_t *shape)
{
    return record(n, cr_value_new(current_graph, n->op->name, dt, ndim, shape));
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

/* ---- gradients ------------------------------------------------------------------ */
/*
 * A step tensor's gradient is a header in a pool block (so backward's rewinds
 * leave it) over a storage block that counts the headers using it. Storage
 * starts `fresh` (unwritten): the first backward to write it may overwrite
 * instead of adding, so nothing is zero-filled that the first write covers.
 * A view op's output sees its gradient through its base's (the same view of
 * the base's gradient), so the view's backward has nothing to do. An output's
 * gradient can be handed to an input (cr_grad_move, cr_grad_share) instead of
 * copied. Once a node's backward has run, its output's header is dropped, and
 * the storage with the last header.
 */

static bool is_view_output(const cr_tensor *t) { return t->node && (t->node->op->saves & CR_OP_VIEW); }

/* The rows of a persistent gradient that may be nonzero (cr_grad_rows, below). */
struct cr_grad_rows {
    uint64_t version;    /* the gradient's version when the record was made */
    bool valid;          /* every row outside list[0..n) is +0 */
    int64_t n_rows, n;   /* rows of the table, rows listed */
    int32_t *list;       /* the rows that may be nonzero, each once */
    unsigned char *mark; /* [n_rows]: 1 for a listed row */
};

static cr_tensor *grad_header(cr_graph *g)
{
    return cr_block_payload(pool_get(g, sizeof(cr_tensor), CR_BLOCK_HEADER));
}

/* A gradient header over `data` in storage d (NULL: a persistent tensor's
 * heap gradient), with its own version counter. */
static void grad_header_own(cr_graph *g, cr_tensor *hdr, cr_block *d)
{
    hdr->requires_grad = hdr->retain_grad = hdr->persistent = false;
    hdr->grad = NULL;
    hdr->node = NULL;
    hdr->name = NULL;
    hdr->rows = NULL;
    hdr->version = &hdr->version_store;
    hdr->version_store = 0;
    hdr->owned = d;
    if (d) d->refs++;
    hdr->gen = g->gen;
}

static cr_tensor *grad_new(cr_graph *g, const cr_tensor *t)
{
    cr_tensor *gr = grad_header(g);
    cr_tensor_set_contiguous(gr, t->dtype, t->ndim, t->shape);
    cr_block *d = pool_get(g, (size_t)cr_numel(gr) * cr_dtype_size(t->dtype), CR_BLOCK_GRAD);
    d->fresh = true;
    gr->data = cr_block_payload(d);
    grad_header_own(g, gr, d);
    return gr;
}

/* t's gradient as the same view of its base's gradient, or NULL when the
 * base's gradient is not laid out like the base. A new base gradient is
 * zero-filled, except for cr_grad_buffer (`whole_ok`), whose caller writes
 * all of the view: then the view's part stays fresh (written, not added to)
 * and only the rest of the base is zero-filled. The view's part is known for
 * a view with as many elements as its base, mapped one to one (reshape,
 * transpose, permute, a full narrow: nothing left to fill; a [rows, 10000]
 * logits gradient seen through a reshape was zero-filled and then
 * overwritten), and for a contiguous view of a contiguous base, one run of
 * its elements (a select along the first dim: the h of an LSTM step's
 * [2,B,H] (h, c) pair, whose c half alone is filled); any other view
 * zero-fills the whole base first. */
static cr_tensor *grad_via_base(cr_graph *g, cr_tensor *t, bool whole_ok)
{
    cr_node *n = t->node;
    cr_tensor *base = n->in[0];
    if (!base->requires_grad) return NULL;
    bool fresh;
    cr_tensor *bg = cr_grad_buffer(base, &fresh);
    size_t es = cr_dtype_size(bg->dtype);
    int64_t total = cr_numel(bg);
    bool laid_out = true;
    for (int d = 0; d < base->ndim; d++)
        if (bg->stride[d] != base->stride[d] && base->shape[d] != 1) laid_out = false;
    if (!laid_out) {
        if (fresh) memset(bg->data, 0, (size_t)total * es);
        return NULL;
    }
    cr_tensor *hdr = grad_header(g);
    memset(hdr, 0, sizeof *hdr);
    cr_node view = *n;
    view.in = &bg;
    view.out = hdr;
    n->op->forward(&view);
    if (fresh) {
        int64_t lo = 0, hi = 0; /* the view's elements: [lo, hi) of the base's, when one run */
        if (whole_ok && cr_numel(t) == total) {
            hi = total;
        } else if (whole_ok && cr_is_contiguous(hdr) && cr_is_contiguous(bg)) {
            lo = (int64_t)(((char *)hdr->data - (char *)bg->data) / (ptrdiff_t)es);
            hi = lo + cr_numel(hdr);
        }
        memset(bg->data, 0, (size_t)lo * es);
        memset((char *)bg->data + (size_t)hi * es, 0, (size_t)(total - hi) * es);
        if (hi > lo) ((cr_block *)bg->owned)->fresh = true;
    }
    grad_header_own(g, hdr, bg->persistent ? NULL : bg->owned);
    cr_block_of(hdr)->via_base = true;
    return hdr;
}

cr_tensor *cr_grad_buffer(cr_tensor *t, bool *fresh)
{
    if (grad_hook && t->persistent) { /* a replica's own buffer, zeroed by its trainer: add into it */
        if (fresh) *fresh = false;
        return grad_hook(grad_hook_ctx, t);
    }
    if (!t->grad) {
        if (t->persistent) {
            t->grad = cr_tensor_init(t->dtype, t->ndim, t->shape);
        } else {
            cr_graph *g = need_graph("cr_grad_of");
            if (is_view_output(t)) t->grad = grad_via_base(g, t, true);
            if (!t->grad) t->grad = grad_new(g, t);
        }
    }
    cr_tensor *gr = t->grad;
    if (gr->persistent && gr->rows) gr->rows->valid = false; /* the caller may write any row */
    cr_block *d = gr->persistent ? NULL : gr->owned;
    bool is_fresh = d && d->fresh;
    if (is_fresh) d->fresh = false; /* written next: by the caller, or zeroed here */
    if (fresh)
        *fresh = is_fresh;
    else if (is_fresh)
        memset(gr->data, 0, (size_t)cr_numel(gr) * cr_dtype_size(gr->dtype));
    return gr;
}

cr_tensor *cr_grad_of(cr_tensor *t) { return cr_grad_buffer(t, NULL); }

void cr_grad_reserve(cr_tensor *t)
{
    if (t->grad || t->persistent) return;
    cr_graph *g = need_graph("cr_grad_reserve");
    if (is_view_output(t)) t->grad = grad_via_base(g, t, false);
    if (!t->grad) t->grad = grad_new(g, t);
}

bool cr_grad_via_base(const cr_tensor *t)
{
    return t->grad && !t->grad->persistent && cr_block_of(t->grad)->via_base;
}

/* t can take a gradient by reference: it needs one, has none, and is neither
 * persistent (heap gradient) nor a view op's output (which uses its base's). */
static bool can_take(const cr_tensor *t)
{
    return t->requires_grad && !t->grad && !t->persistent && !is_view_output(t);
}

/* t's gradient becomes `view`, a region of src (a step gradient, written). */
static bool share(cr_tensor *t, const cr_tensor *src, const cr_tensor *view)
{
    if (!can_take(t) || src->persistent || !cr_same_shape(t, view) || t->dtype != view->dtype) return false;
    cr_block *d = src->owned;
    if (!d || d->fresh) return false;
    cr_graph *g = current_graph;
    cr_tensor *hdr = grad_header(g);
    *hdr = *view;
    grad_header_own(g, hdr, d);
    t->grad = hdr;
    return true;
}

bool cr_grad_share(cr_tensor *t, const cr_tensor *of, const cr_tensor *view)
{
    return !of->retain_grad && of->grad && share(t, of->grad, view);
}

bool cr_grad_adopt(cr_tensor *t, const cr_tensor *src)
{
    return !src->retain_grad && src->grad && share(t, src->grad, src->grad);
}

bool cr_grad_movable(const cr_node *n, int i)
{
    const cr_tensor *t = n->in[i], *o = n->out, *gr = o->grad;
    if (!can_take(t) || o->retain_grad || !gr || gr->persistent || cr_block_of(gr)->via_base) return false;
    const cr_block *d = gr->owned;
    return d && d->refs == 1 && !d->fresh && gr->data == cr_block_payload((cr_block *)d) &&
           cr_is_contiguous(gr) && cr_same_shape(t, gr) && t->dtype == gr->dtype;
}

bool cr_grad_move(cr_node *n, int i)
{
    if (!cr_grad_movable(n, i)) return false;
    n->in[i]->grad = n->out->grad;
    n->out->grad = NULL;
    return true;
}

void cr_grad_drop(cr_graph *g, cr_tensor *t)
{
    cr_tensor *gr = t->grad;
    t->grad = NULL;
    if (!gr || gr->persistent) return;
    cr_block *d = gr->owned;
    if (d && --d->refs == 0) cr_pool_put(g->pool, d);
    cr_pool_put(g->pool, cr_block_of(gr));
}

/* ---- rows of a parameter's gradient that may be nonzero ---------------------------- */

/* An embedding table's gradient after a step holds the rows of the words the
 * step looked up, every other row zero. Knowing them, cr_zero_grad clears
 * those rows only and plain SGD updates those rows only (p - lr * 0 is p),
 * instead of passes over the whole table. The record is right while the
 * gradient's version is the one noted (API writes bump it) and nothing took
 * the buffer through cr_grad_buffer (which may write any row) since. */
static bool rows_valid(const cr_tensor *g)
{
    return g && g->persistent && g->rows && g->rows->valid && *g->version == g->rows->version;
}

const int32_t *cr_grad_rows(const cr_tensor *t, int64_t *n)
{
    if (!rows_valid(t->grad)) return NULL;
    *n = t->grad->rows->n;
    return t->grad->rows->list;
}

struct cr_grad_rows *cr_grad_rows_begin(const cr_tensor *t)
{
    return !grad_hook && t->persistent && rows_valid(t->grad) ? t->grad->rows : NULL;
}

void cr_grad_rows_end(cr_tensor *t, struct cr_grad_rows *was, const int32_t *ix, int64_t m, int64_t skip)
{
    cr_tensor *g = t->grad;
    if (grad_hook || !t->persistent || !g || !g->persistent || g->ndim < 1 || g->shape[0] > INT32_MAX) return;
    if (!was) { /* untracked so far, or written elsewhere: track from the next cr_zero_grad */
        if (!g->rows) {
            int64_t r = g->shape[0];
            struct cr_grad_rows *s = cr_xcalloc(1, sizeof *s + (size_t)r * (sizeof(int32_t) + 1));
            s->n_rows = r;
            s->list = (int32_t *)(s + 1);
            s->mark = (unsigned char *)(s->list + r);
            g->rows = s;
        }
        return;
    }
    for (int64_t i = 0; i < m; i++)
        if (ix[i] != skip && !was->mark[ix[i]]) {
            was->mark[ix[i]] = 1;
            was->list[was->n++] = ix[i];
        }
    was->valid = true;
    was->version = *g->version;
}

void cr_zero_grad(cr_tensor *t)
{
    cr_tensor *g = t->grad;
    if (!g) return;
    struct cr_grad_rows *s = g->persistent ? g->rows : NULL;
    if (s && rows_valid(g)) { /* only the listed rows can be nonzero */
        size_t row = (size_t)(cr_numel(g) / s->n_rows) * cr_dtype_size(g->dtype);
        for (int64_t k = 0; k < s->n; k++) {
            memset((char *)g->data + (size_t)s->list[k] * row, 0, row);
            s->mark[s->list[k]] = 0;
        }
        cr_tensor_bump_version(g);
    } else {
        cr_fill(g, 0.0);
        if (s) memset(s->mark, 0, (size_t)s->n_rows);
    }
    if (!s) return;
    s->n = 0;
    s->valid = true;
    s->version = *g->version;
}

/* ---- backward ------------------------------------------------------------------ */

void cr_backward_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    grad_disabled = grad_disabled_outside;
    cr_error("%s", msg);
}

/* Refuse n's backward when it would read a tensor written in place since n
 * was recorded. */
static _Noreturn void version_error(const cr_node *n, const char *which, const cr_tensor *t, uint64_t then)
{
    char s[128];
    cr_backward_error(
        "cr_backward: %s (tape #%zu) needs its %s, %s %s, but it was written in place after the op "
        "was recorded (version %llu then, %llu now); write after backward, or into a copy",
        n->op->name, n->tape_index, which, cr_dtype_name(t->dtype),
        cr_shape_str(s, sizeof s, t->ndim, t->shape), (unsigned long long)then,
        (unsigned long long)version_of(t));
}

void cr_node_check_versions(const cr_node *n)
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

/* Temporaries n's backward makes in the arena die with it (a rewind); its
 * output's gradient dies after it unless retained. */
void cr_run_backward_node(cr_graph *g, cr_node *n)
{
    if (!n->out->grad) return;
    if (n->saves) cr_node_check_versions(n);
    cr_arena_mark m = cr_arena_mark_get(g->arena);
    if (detect_anomaly)
        backward_checked(g, n);
    else
        n->op->backward(n);
    cr_arena_rewind(g->arena, m);
    if (!n->out->retain_grad) cr_grad_drop(g, n->out);
}

void cr_backward_with(cr_tensor *out, const cr_tensor *grad)
{
    char s1[128], s2[128];
    cr_graph *g = need_graph("cr_backward");
    if (!out->requires_grad)
        cr_error(
            "cr_backward: tensor %s does not require a gradient (no input needed one, or grad mode was off)",
            cr_shape_str(s1, sizeof s1, out->ndim, out->shape));
    if (out->node &&
        (out->gen != g->gen || out->node->tape_index >= g->n || g->tape[out->node->tape_index] != out->node))
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
    g->pass++;
    g->bw_start = start;
    bool first;
    cr_tensor *seed = cr_grad_buffer(out, &first);
    if (first)
        cr_k_assign(seed, grad, NULL);
    else
        cr_k_accumulate(seed, grad, NULL);
    bool old = cr_set_grad_enabled(false); /* backward computes with kernels; record nothing */
    grad_disabled_outside = !old;
    for (size_t i = start + 1; i-- > 0;) cr_run_backward_node(g, g->tape[i]);
    cr_set_grad_enabled(old);
    for (size_t k = 0; k < 2 * n_kept; k += 2) {
        cr_tensor *t = kept[k], *earlier = kept[k + 1];
        if (t->grad) {
            cr_k_accumulate(earlier, t->grad, NULL);
            cr_grad_drop(g, t);
        }
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

/* An op's first look at its inputs. A step tensor of a cleared step whose
 * header memory has been handed out again reads as garbage: its dtype and
 * shape would be reported as such by the op's own checks, before the node
 * could name it as stale. So a stale header that is not a tensor's any more
 * is refused here (best effort: one overwritten by a header of this step
 * cannot be told apart); a stale one still intact gets the node's message,
 * which names the input. */
static void check_step(const char *op, const cr_tensor *t)
{
    if (!current_graph || !t->gen || t->gen == current_graph->gen) return;
    int64_t numel;
    if (!(t->dtype == CR_F32 || t->dtype == CR_F64 || t->dtype == CR_I32) ||
        !cr_shape_fits(t->dtype, t->ndim, t->shape, &numel))
        cr_error("%s: an input is a step tensor from before a cr_graph_clear, its header since overwritten; "
                 "keep values across steps in persistent tensors (cr_tensor_init)",
                 op);
}

void cr_check_float(const char *op, const cr_tensor *a)
{
    check_step(op, a);
    if (a->dtype == CR_I32) {
        char s[128];
        cr_error("%s: needs f32 or f64, got i32 %s", op, cr_shape_str(s, sizeof s, a->ndim, a->shape));
    }
}

void cr_check_float_pair(const char *op, const cr_tensor *a, const cr_tensor *b)
{
    char s1[128], s2[128];
    check_step(op, a);
    check_step(op, b);
    if (a->dtype != b->dtype || a->dtype == CR_I32)
        cr_error("%s: %s %s and %s %s (need one float dtype)", op, cr_dtype_name(a->dtype),
                 cr_shape_str(s1, sizeof s1, a->ndim, a->shape), cr_dtype_name(b->dtype),
                 cr_shape_str(s2, sizeof s2, b->ndim, b->shape));
}
