/* Internal to autograd/: the pool that holds the storage of op outputs and of
 * gradients in a graph. Blocks are carved from an arena of their own and
 * recycled through exact-size free lists, so a storage can die in the middle
 * of a step (a value no backward reads, a gradient whose node has run) and
 * its memory serve the next storage of that size, with no malloc/free per
 * tensor. A clear rewinds the whole pool at once. */
#ifndef CAROUSEL_POOL_H
#define CAROUSEL_POOL_H

#include "tensor.h"

enum { CR_BLOCK_VALUE = 1, CR_BLOCK_GRAD, CR_BLOCK_HEADER };

/* The 64 bytes before every payload: the pool's bookkeeping and the state
 * autograd keeps per storage. */
typedef struct cr_block {
    _Alignas(64) size_t bytes; /* payload bytes: the size class */
    struct cr_block *next;     /* next free block of this size */
    cr_tensor *owner;          /* value: the header that owns the storage */
    uint64_t seq;              /* allocation number since the pool's reset */
    uint32_t refs;             /* gradient: headers that use this storage */
    uint8_t kind;              /* CR_BLOCK_* */
    bool free;
    bool saved;    /* value: a recorded backward (or a segment's recompute) reads it */
    bool kept;     /* value: in a cr_scope_end's keep list (transient) */
    bool fresh;    /* gradient: never written, holds garbage (logically zero) */
    bool via_base; /* header: a view op's gradient seen through its base's */
} cr_block;

_Static_assert(sizeof(cr_block) == 64, "payloads stay 64-byte aligned");

static inline void *cr_block_payload(cr_block *b) { return b + 1; }
static inline cr_block *cr_block_of(const void *payload) { return (cr_block *)payload - 1; }

typedef struct cr_pool cr_pool;
cr_pool *cr_pool_init(size_t chunk_bytes);
void cr_pool_free(cr_pool *p);
/* A block of at least `bytes` payload (64-byte aligned): a free one of the
 * same size class, or a new one carved from the pool's arena. Its state
 * fields are zeroed and seq set. In builds without NDEBUG the payload of a
 * value or gradient is filled with NaN (all bits set), so a kernel that
 * leaves part of an output or a first-written gradient unwritten shows. */
cr_block *cr_pool_get(cr_pool *p, size_t bytes, int kind);
/* Back to its free list (poisoned under ASan until handed out again). */
void cr_pool_put(cr_pool *p, cr_block *b);
void cr_pool_reset(cr_pool *p);            /* every block free, memory kept */
uint64_t cr_pool_seq(const cr_pool *p);    /* the seq the next block will get */
size_t cr_pool_live(const cr_pool *p);     /* bytes of blocks in use (with their 64-byte heads) */
size_t cr_pool_capacity(const cr_pool *p); /* bytes reserved */

#endif
