/* Recomputed segments (cr_recompute): a function of some tensors runs once and
 * only its outputs are kept; each output gets a node of the op cr_recompute on
 * the tape. The first of those nodes that backward reaches runs the function
 * again on the same inputs (its random generators rewound), seeds the rebuilt
 * outputs with the gradients that reached the kept ones, walks the rebuilt
 * tape in reverse exactly as the plain run would, and gives every rebuilt
 * value back. Gradients flow into the segment's inputs and the parameters it
 * read through their own buffers, in the plain run's order: bit for bit the
 * plain run's gradients. */
#include <string.h>

#include "graph_internal.h"

typedef struct segment {
    cr_segment_fn fn;
    void *ctx;
    int n_in, n_out, n_rng;
    cr_tensor **in;
    uint64_t *in_version;
    cr_tensor **out; /* the outputs the caller got (aliases of the first run's) */
    uint64_t *out_version;
    cr_rng **rng;
    uint64_t *rng_start, *rng_end; /* each generator's offset before and after the first run */
    uint64_t done_pass;            /* the backward pass that last rebuilt it */
} segment;

typedef struct {
    segment *seg;
    int k; /* which output the node stands for */
} recompute_attr;

static uint64_t version_of(const cr_tensor *t) { return t->version ? *t->version : 0; }

static void *arena_array(size_t n, size_t size)
{
    void *p = cr_arena_alloc(cr_arena_current(), (n ? n : 1) * size);
    memset(p, 0, (n ? n : 1) * size);
    return p;
}

/* a and b hold the same bits (same dtype and shape) */
static bool same_values(const cr_tensor *a, const cr_tensor *b)
{
    if (a->dtype != b->dtype || !cr_same_shape(a, b)) return false;
    int64_t n = cr_numel(a);
    if (cr_is_contiguous(a) && cr_is_contiguous(b))
        return memcmp(a->data, b->data, (size_t)n * cr_dtype_size(a->dtype)) == 0;
    for (int64_t i = 0; i < n; i++) {
        double x = cr_get_flat(a, i), y = cr_get_flat(b, i);
        if (memcmp(&x, &y, sizeof x)) return false;
    }
    return true;
}

/* The values were computed by the segment's first run. */
static void recompute_fwd(cr_node *n) { (void)n; }

static void recompute_bwd(cr_node *n)
{
    char s1[128], s2[128];
    segment *s = CR_NODE_ATTR(n, recompute_attr)->seg;
    cr_graph *g = cr_graph_current();
    if (s->done_pass == g->pass) return; /* a later output's node already ran the segment */
    s->done_pass = g->pass;
    for (int i = 0; i < s->n_in; i++)
        if (version_of(s->in[i]) != s->in_version[i])
            cr_backward_error(
                "cr_backward: cr_recompute (tape #%zu) runs its segment again on input %d, %s %s, but it "
                "was written in place after the segment ran (version %llu then, %llu now); write after "
                "backward, or into a copy",
                n->tape_index, i, cr_dtype_name(s->in[i]->dtype),
                cr_shape_str(s1, sizeof s1, s->in[i]->ndim, s->in[i]->shape),
                (unsigned long long)s->in_version[i], (unsigned long long)version_of(s->in[i]));
    /* rebuild: recorded on the tape after everything else, logged as a scope */
    size_t m0 = g->n, log0 = g->n_log, start = g->bw_start;
    uint64_t seq0 = cr_pool_seq(g->pool);
    uint64_t *now = arena_array((size_t)s->n_rng, sizeof *now);
    cr_tensor **out = arena_array((size_t)s->n_out, sizeof *out);
    for (int j = 0; j < s->n_rng; j++) {
        now[j] = s->rng[j]->offset;
        s->rng[j]->offset = s->rng_start[j];
    }
    g->depth++;
    g->segments++;
    bool mode = cr_set_grad_enabled(true); /* off inside backward */
    s->fn(s->in, out, s->ctx);
    cr_set_grad_enabled(mode);
    for (int j = 0; j < s->n_rng; j++) {
        uint64_t end = s->rng[j]->offset;
        s->rng[j]->offset = now[j];
        if (end != s->rng_end[j])
            cr_backward_error(
                "cr_backward: cr_recompute (tape #%zu): the segment drew %llu numbers from generator %d "
                "the first time and %llu when run again; it must draw the same",
                n->tape_index, (unsigned long long)(s->rng_end[j] - s->rng_start[j]), j,
                (unsigned long long)(end - s->rng_start[j]));
    }
    for (int k = 0; k < s->n_out; k++) {
        const cr_tensor *a = s->out[k], *b = out[k];
        if (!b || (version_of(a) == s->out_version[k] ? !same_values(a, b)
                                                      : a->dtype != b->dtype || !cr_same_shape(a, b)))
            cr_backward_error(
                "cr_backward: cr_recompute (tape #%zu): output %d of the segment, %s %s, is %s %s when "
                "run again: the function must compute the same values from the same inputs (draw "
                "random numbers only from the generators given to cr_recompute, read nothing that "
                "changed since)",
                n->tape_index, k, cr_dtype_name(a->dtype), cr_shape_str(s1, sizeof s1, a->ndim, a->shape),
                b ? "different:" : "missing", b ? cr_shape_str(s2, sizeof s2, b->ndim, b->shape) : "");
    }
    /* seed the rebuilt outputs with the gradients the kept ones received */
    for (int k = 0; k < s->n_out; k++) {
        cr_tensor *o = s->out[k], *t = out[k];
        int j = 0;
        while (j < k && s->out[j] != o) j++;
        if (j < k || !o->grad || !o->node || o->node->tape_index > start || !t->requires_grad) continue;
        if (!cr_grad_adopt(t, o)) {
            bool first;
            cr_tensor *gt = cr_grad_buffer(t, &first);
            if (first)
                cr_k_assign(gt, o->grad, NULL);
            else
                cr_k_accumulate(gt, o->grad, NULL);
        }
    }
    g->bw_start = g->n ? g->n - 1 : 0; /* segments nested inside run too */
    for (size_t j = g->n; j-- > m0;) cr_run_backward_node(g, g->tape[j]);
    g->bw_start = start;
    /* give the rebuilt tape back (its headers and nodes go with this node's
     * arena rewind) */
    for (size_t j = m0; j < g->n; j++)
        if (g->tape[j]->out->grad) cr_grad_drop(g, g->tape[j]->out);
    g->n = m0;
    cr_release_since(g, log0, seq0, 0, NULL, true);
    g->segments--;
    g->depth--;
}

const cr_op cr_op_recompute = {"cr_recompute", recompute_fwd, recompute_bwd, 0, sizeof(recompute_attr)};

/* What a segment's first run leaves, saved before its arena memory is given
 * back: each output's header and storage owner by value, which outputs
 * repeat an earlier one, which need a gradient. In the graph's scratch
 * buffer: it must outlive the rewind, not the call. */
typedef struct first_run {
    cr_tensor *hdr, *owner;      /* [n_out] copies */
    const cr_tensor **old_owner; /* the owner's address when it lay in the given-back part, else NULL */
    cr_tensor **copy;            /* an output whose data lay in the given-back part: its data, copied */
    cr_tensor **keep, **new_owner;
    cr_block **copy_block;
    int *dup; /* the first k' <= k with the same tensor */
    bool *needs;
} first_run;

static first_run first_run_new(cr_graph *g, int n_out)
{
    size_t n = (size_t)n_out, a = 2 * sizeof(cr_tensor) + 5 * sizeof(void *) + sizeof(int) + sizeof(bool);
    char *p = cr_graph_scratch(g, n * a + 16 * 16);
    first_run f;
#define TAKE(field, size)                                                                                    \
    f.field = (void *)p;                                                                                     \
    p += ((n * (size)) + 15) & ~(size_t)15
    TAKE(hdr, sizeof(cr_tensor));
    TAKE(owner, sizeof(cr_tensor));
    TAKE(old_owner, sizeof(void *));
    TAKE(copy, sizeof(void *));
    TAKE(keep, sizeof(void *));
    TAKE(new_owner, sizeof(void *));
    TAKE(copy_block, sizeof(void *));
    TAKE(dup, sizeof(int));
    TAKE(needs, sizeof(bool));
#undef TAKE
    return f;
}

/* The first run's headers, nodes and temporaries lie in the arena after mk:
 * keep what the outputs need, give the rest back (values to the pool, the
 * tape after m0, the arena after mk), and make res[k] headers of their own,
 * with no history, over the same storage. */
static void keep_outputs(cr_graph *g, first_run *f, cr_arena_mark mk, size_t m0, size_t log0, uint64_t seq0,
                         int n_out, cr_tensor **res)
{
    *f = first_run_new(g, n_out);
    for (int k = 0; k < n_out; k++) {
        int j = 0;
        while (res[j] != res[k]) j++;
        f->dup[k] = j;
        if (j < k) continue;
        cr_tensor *t = res[k];
        f->hdr[k] = *t;
        f->needs[k] = t->requires_grad;
        cr_tensor *o = cr_storage_owner(t);
        if (o && cr_arena_since(g->arena, mk, o)) {
            f->owner[k] = *o;
            f->old_owner[k] = o;
        }
        if (!cr_value_block(t) && !t->persistent && t->data && cr_arena_since(g->arena, mk, t->data)) {
            f->copy[k] =
                cr_value_new(g, "cr_recompute", t->dtype, t->ndim, t->shape); /* a step tensor made inside */
            cr_copy_(f->copy[k], t);
        }
    }
    cr_tensor **keep = f->keep, **new_owner = f->new_owner;
    cr_block **copy_block = f->copy_block;
    for (int k = 0; k < n_out; k++) keep[k] = f->copy[k] ? f->copy[k] : res[k];
    g->n = m0;
    cr_release_since(g, log0, seq0, n_out, keep, true);
    /* the copies' blocks stay logged; their headers lie in the part given back */
    for (int k = 0; k < n_out; k++) copy_block[k] = f->copy[k] ? cr_value_block(f->copy[k]) : NULL;
    cr_arena_rewind(g->arena, mk);
    for (int k = 0; k < n_out; k++) {
        if (f->dup[k] < k) {
            res[k] = res[f->dup[k]];
            continue;
        }
        cr_tensor *h = cr_arena_alloc_aligned(g->arena, sizeof *h, 16), *no = NULL;
        *h = f->hdr[k];
        if (copy_block[k]) { /* the copy's storage, under a header of its own */
            cr_tensor_set_contiguous(h, f->hdr[k].dtype, f->hdr[k].ndim, f->hdr[k].shape);
            h->data = cr_block_payload(copy_block[k]);
            h->owned = copy_block[k];
            copy_block[k]->owner = h;
            no = h;
        } else if (f->old_owner[k]) { /* the storage stays; its owner's header moves */
            for (int j = 0; j < k && !no; j++)
                if (f->old_owner[j] == f->old_owner[k]) no = new_owner[j];
            if (!no) {
                no = cr_arena_alloc_aligned(g->arena, sizeof *no, 16);
                *no = f->owner[k];
                no->version = &no->version_store;
                cr_block *b = no->owned && !no->persistent ? no->owned : NULL;
                if (b && b->kind == CR_BLOCK_VALUE && b->owner == f->old_owner[k]) b->owner = no;
            }
            h->version = &no->version_store;
        }
        new_owner[k] = no;
        if (h != no) h->owned = NULL; /* a view of its storage */
        h->persistent = h->requires_grad = h->retain_grad = false;
        h->grad = NULL;
        h->node = NULL;
        h->name = NULL;
        h->gen = g->gen;
        res[k] = h;
    }
}

void cr_recompute(cr_segment_fn fn, void *ctx, int n_in, cr_tensor *const *in, int n_out, cr_tensor **out,
                  int n_rng, cr_rng *const *rngs)
{
    cr_graph *g = cr_graph_current();
    if (!g) cr_error("cr_recompute: no current graph; call cr_graph_use(cr_graph_init()) first");
    if (!fn) cr_error("cr_recompute: the segment function is NULL");
    if (n_in < 0 || (n_in > 0 && !in)) cr_error("cr_recompute: %d inputs, list %p", n_in, (const void *)in);
    if (n_out < 1 || !out)
        cr_error("cr_recompute: %d outputs, list %p (a segment has at least one)", n_out, (void *)out);
    if (n_rng < 0 || (n_rng > 0 && !rngs))
        cr_error("cr_recompute: %d generators, list %p", n_rng, (const void *)rngs);
    for (int i = 0; i < n_in; i++) {
        if (!in[i]) cr_error("cr_recompute: input %d is NULL", i);
        cr_check_input("cr_recompute", i, in[i]);
    }
    for (int j = 0; j < n_rng; j++)
        if (!rngs[j]) cr_error("cr_recompute: generator %d is NULL", j);
    bool grad = cr_grad_enabled();
    segment *s = arena_array(1, sizeof *s);
    *s = (segment){.fn = fn, .ctx = ctx, .n_in = n_in, .n_out = n_out, .n_rng = n_rng};
    s->in = arena_array((size_t)n_in, sizeof *s->in);
    s->in_version = arena_array((size_t)n_in, sizeof *s->in_version);
    s->out = arena_array((size_t)n_out, sizeof *s->out);
    s->out_version = arena_array((size_t)n_out, sizeof *s->out_version);
    s->rng = arena_array((size_t)n_rng, sizeof *s->rng);
    s->rng_start = arena_array((size_t)n_rng, sizeof *s->rng_start);
    s->rng_end = arena_array((size_t)n_rng, sizeof *s->rng_end);
    cr_tensor **res = arena_array((size_t)n_out, sizeof *res);
    first_run f;
    uint64_t seq0 = cr_pool_seq(g->pool);
    for (int i = 0; i < n_in; i++) {
        s->in[i] = in[i];
        s->in_version[i] = version_of(in[i]);
        cr_block *b = cr_value_block(in[i]);
        if (b && grad) b->saved = true; /* read again in backward */
    }
    for (int j = 0; j < n_rng; j++) {
        s->rng[j] = rngs[j];
        s->rng_start[j] = rngs[j]->offset;
    }
    /* The first run records as usual (so each output knows whether it needs a
     * gradient, from the inputs or from parameters the function reads); then
     * its tape and every value it made but the outputs are given back. What
     * it reads from before it is kept for the rebuild (capture_seq). With
     * grad mode off it is all there is. */
    size_t m0 = g->n, log0 = g->n_log;
    cr_arena_mark mk = cr_arena_mark_get(g->arena);
    uint64_t capture = g->capture_seq;
    g->depth++;
    g->segments++;
    if (grad) g->capture_seq = seq0;
    fn(s->in, res, ctx);
    g->capture_seq = capture;
    int missing = -1;
    for (int k = 0; k < n_out; k++)
        if (!res[k] && missing < 0) missing = k;
    if (missing < 0) keep_outputs(g, &f, mk, m0, log0, seq0, n_out, res);
    g->segments--;
    g->depth--;
    if (missing >= 0) cr_error("cr_recompute: the segment function left output %d NULL", missing);
    for (int j = 0; j < n_rng; j++) s->rng_end[j] = rngs[j]->offset;
    for (int k = 0; k < n_out; k++) {
        if (f.dup[k] < k) { /* a tensor returned twice is one output: one node, one gradient */
            s->out[k] = out[k] = s->out[f.dup[k]];
            s->out_version[k] = s->out_version[f.dup[k]];
            continue;
        }
        cr_tensor *o = res[k];
        if (grad && f.needs[k]) {
            cr_node *nd = cr_node_new(&cr_op_recompute, n_in, s->in);
            *CR_NODE_ATTR(nd, recompute_attr) = (recompute_attr){s, k};
            cr_record_computed(nd, o, true);
        }
        s->out[k] = out[k] = o;
        s->out_version[k] = version_of(o);
    }
}
