/* Internal to autograd/: the graph's fields and the hooks recompute.c uses to
 * record a segment, run its backward and give its memory back. */
#ifndef CAROUSEL_GRAPH_INTERNAL_H
#define CAROUSEL_GRAPH_INTERNAL_H

#include "ops_internal.h"
#include "pool.h"

struct cr_graph {
    cr_arena *arena; /* bump: headers, nodes, step tensors, backward's temporaries */
    cr_pool *pool;   /* storage of op outputs and of gradients */
    cr_node **tape;
    size_t n, cap;
    uint64_t gen; /* the arena's generation: changes on every clear, so stale tensors are recognised */
    /* Value storages made while a scope is open, in order; a scope's end
     * releases its part of the log. */
    cr_block **log;
    size_t n_log, cap_log;
    int depth;            /* open scopes (segments count as scopes) */
    int segments;         /* open segments: a scope's end leaves values backward reads in the log for them */
    uint64_t capture_seq; /* while a segment's first run records: storages older than this read by an op are
                             kept */
    uint64_t pass;        /* backward passes so far */
    size_t bw_start;      /* the running backward started at this tape index */
    size_t peak;          /* most bytes in use (arena + pool) since init */
    void *scratch;        /* cr_graph_scratch's buffer (heap, kept across steps) */
    size_t scratch_cap;
};

/* A heap buffer of at least `bytes`, zeroed, valid until the next call: for
 * arrays that must outlive an arena rewind but not the call that needs them.
 * It grows while warming up and is kept, so steady state allocates nothing. */
void *cr_graph_scratch(cr_graph *g, size_t bytes);
/* A gradient-side pool block an op keeps between backward calls (weight_t's
 * stack of rows), counted in the peak; given back with cr_graph_block_put. */
cr_block *cr_graph_block_get(cr_graph *g, size_t bytes);
void cr_graph_block_put(cr_graph *g, cr_block *b);
/* Make t's gradient buffer when it has none, left unwritten (fresh): its
 * node's backward will run, and the first real write still overwrites. */
void cr_grad_reserve(cr_tensor *t);

/* The storage block of a value tensor (an op output, or a view of one), or
 * NULL for arena, persistent and gradient storage. */
cr_block *cr_value_block(const cr_tensor *t);
/* The header whose version counter t uses: its storage's owner (NULL when t
 * has no counter). */
cr_tensor *cr_storage_owner(const cr_tensor *t);
/* A contiguous tensor with its header in the arena and its storage in the
 * pool (logged in the open scope), as op outputs are; errors name fn. */
cr_tensor *cr_value_new(cr_graph *g, const char *fn, cr_dtype dt, int ndim, const int64_t *shape);
/* Give back the value storages logged from log_pos on (blocks numbered from
 * seq0 on): those of keep[] stay (and stay logged), every other one is
 * released; with `all` even those a recorded backward reads (a segment's
 * discarded tape). */
void cr_release_since(cr_graph *g, size_t log_pos, uint64_t seq0, int n_keep, cr_tensor *const *keep,
                      bool all);
/* Record n with output out (a header whose storage is already filled) and
 * whether it needs a gradient, skipping the op's forward. */
cr_tensor *cr_record_computed(cr_node *n, cr_tensor *out, bool needs);
/* Run n's backward as cr_backward does: version checks, anomaly checks,
 * temporaries rewound, output gradient dropped. */
void cr_run_backward_node(cr_graph *g, cr_node *n);
/* Make src's gradient (a gradient header of g) also t's, without copying,
 * when t needs one and has none; false when it cannot. */
bool cr_grad_adopt(cr_tensor *t, const cr_tensor *src);
/* Drop t's gradient (its storage when no other header uses it). */
void cr_grad_drop(cr_graph *g, cr_tensor *t);
_Noreturn void cr_backward_error(const char *fmt, ...) CR_PRINTF_LIKE(1, 2);

#endif
