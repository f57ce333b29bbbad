/* The storage pool of a graph: 64-byte block heads before 64-byte aligned
 * payloads, carved from an arena of their own, recycled through one free list
 * per exact payload size (an array indexed by size for payloads up to
 * SMALL_CLASSES * 64 bytes, an open-addressing table from size to list head
 * above), rewound all at once by a clear. Steady-state steps allocate the
 * same sizes in the same order, so once warm they take every block from a
 * free list or from chunks the arena kept: no malloc. */
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

typedef struct slot {
    size_t bytes; /* 0: empty */
    cr_block *head;
} slot;

/* Payload sizes of 64 * k bytes, k < SMALL_CLASSES (256 KiB: a [32, 2048]
 * f32 gate block), index their free list directly. */
#define SMALL_CLASSES 4096

struct cr_pool {
    cr_arena *arena;
    cr_block *small[SMALL_CLASSES];
    slot *table; /* larger sizes; power-of-two capacity, at most half full */
    size_t cap, used;
    uint64_t seq;
    size_t live;
};

cr_pool *cr_pool_init(size_t chunk_bytes)
{
    cr_pool *p = cr_xcalloc(1, sizeof *p);
    p->arena = cr_arena_init(chunk_bytes);
    p->cap = 64;
    p->table = cr_xcalloc(p->cap, sizeof *p->table);
    p->seq = 1; /* 0 is never a block's: callers use it for "none" */
    return p;
}

void cr_pool_free(cr_pool *p)
{
    if (!p) return;
    cr_arena_free(p->arena);
    free(p->table);
    free(p);
}

/* The slot of size `bytes`, added when absent (the table doubles when half
 * full: a handful of sizes per model, so this happens while warming up). */
static slot *slot_of(cr_pool *p, size_t bytes)
{
    for (;;) {
        size_t mask = p->cap - 1, i = (bytes / 64 * 0x9E3779B97F4A7C15u) >> 7 & mask;
        for (;; i = (i + 1) & mask) {
            if (p->table[i].bytes == bytes) return &p->table[i];
            if (p->table[i].bytes == 0) break;
        }
        if (2 * (p->used + 1) <= p->cap) {
            p->used++;
            p->table[i].bytes = bytes;
            p->table[i].head = NULL;
            return &p->table[i];
        }
        slot *old = p->table;
        size_t old_cap = p->cap;
        p->cap *= 2;
        p->table = cr_xcalloc(p->cap, sizeof *p->table);
        for (size_t k = 0; k < old_cap; k++) {
            if (!old[k].bytes) continue;
            size_t m = p->cap - 1, j = (old[k].bytes / 64 * 0x9E3779B97F4A7C15u) >> 7 & m;
            while (p->table[j].bytes) j = (j + 1) & m;
            p->table[j] = old[k];
        }
        free(old);
    }
}

/* The head of the free list of payload size `bytes` (a multiple of 64). */
static cr_block **head_of(cr_pool *p, size_t bytes)
{
    return bytes / 64 < SMALL_CLASSES ? &p->small[bytes / 64] : &slot_of(p, bytes)->head;
}

cr_block *cr_pool_get(cr_pool *p, size_t bytes, int kind)
{
    if (bytes > SIZE_MAX / 4) cr_error("cr_pool_get: %zu bytes is more than any memory holds", bytes);
    bytes = (bytes + 63) & ~(size_t)63;
    cr_block **head = head_of(p, bytes), *b = *head;
    if (b) {
        *head = b->next;
        UNPOISON(cr_block_payload(b), bytes);
    } else {
        b = cr_arena_alloc(p->arena, sizeof *b + bytes);
    }
    *b = (cr_block){.bytes = bytes, .kind = (uint8_t)kind, .seq = p->seq++};
    p->live += sizeof *b + bytes;
#ifndef NDEBUG
    if (kind != CR_BLOCK_HEADER) memset(cr_block_payload(b), 0xff, bytes); /* NaN in f32 and f64 */
#endif
    return b;
}

void cr_pool_put(cr_pool *p, cr_block *b)
{
    if (b->free) cr_error("cr_pool_put: block of %zu bytes given back twice", b->bytes);
    cr_block **head = head_of(p, b->bytes);
    b->free = true;
    b->next = *head;
    *head = b;
    p->live -= sizeof *b + b->bytes;
    POISON(cr_block_payload(b), b->bytes);
}

void cr_pool_reset(cr_pool *p)
{
    memset(p->small, 0, sizeof p->small);
    for (size_t k = 0; k < p->cap; k++) p->table[k].head = NULL;
    cr_arena_reset(p->arena);
    p->seq = 1;
    p->live = 0;
}

uint64_t cr_pool_seq(const cr_pool *p) { return p->seq; }
size_t cr_pool_live(const cr_pool *p) { return p->live; }
size_t cr_pool_capacity(const cr_pool *p) { return cr_arena_capacity(p->arena) + p->cap * sizeof *p->table; }
