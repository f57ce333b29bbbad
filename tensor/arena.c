/* Bump allocator for per-step tensors: chunks are appended as needed and the
 * whole arena rewinds at once, keeping its chunks for the next step. Each init
 * and reset takes a process-wide unique generation. A mark taken mid-step
 * rewinds to it (backward's temporaries, a recomputed segment). */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "tensor.h"

/* Under AddressSanitizer, memory given back by a rewind is poisoned until it
 * is handed out again, so a pointer kept past a rewind is reported. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define ARENA_ALIGN 64
/* The largest single request: far beyond any memory, far from SIZE_MAX, so
 * the rounding and chunk-header arithmetic below cannot wrap. */
#define ARENA_MAX_REQUEST (SIZE_MAX / 4)

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    size_t hwm;          /* the most handed out since the last reset (>= used after a rewind) */
    unsigned char *base; /* ARENA_ALIGN-aligned start of the usable bytes */
} chunk;

struct cr_arena {
    chunk *first, *cur;
    size_t chunk_bytes;
    size_t n_chunks;
    size_t before_cur; /* bytes used in the chunks before cur, so cr_arena_used is O(1) */
    uint64_t gen;
};

static _Thread_local cr_arena *current_arena;
/* Generations are unique across arenas, so a header from one arena never
 * passes for another's. 0 is never used (it marks headers outside arenas). */
static atomic_uint_fast64_t next_gen = 1;

static chunk *chunk_new(size_t size)
{
    if (size > ARENA_MAX_REQUEST)
        cr_error("cr_arena_alloc: a chunk of %zu bytes is larger than any memory", size);
    chunk *c = cr_xmalloc(sizeof *c + size + ARENA_ALIGN);
    uintptr_t p = (uintptr_t)(c + 1);
    p = (p + ARENA_ALIGN - 1) & ~(uintptr_t)(ARENA_ALIGN - 1);
    c->base = (unsigned char *)p;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    c->hwm = 0;
    return c;
}

cr_arena *cr_arena_init(size_t chunk_bytes)
{
    chunk *first = chunk_new(chunk_bytes ? chunk_bytes : (size_t)1 << 20); /* may refuse the size */
    cr_arena *a = cr_xcalloc(1, sizeof *a);
    a->chunk_bytes = first->size;
    a->first = a->cur = first;
    a->n_chunks = 1;
    a->gen = atomic_fetch_add(&next_gen, 1);
    return a;
}

void cr_arena_free(cr_arena *a)
{
    if (!a) return;
    if (current_arena == a) current_arena = NULL;
    for (chunk *c = a->first, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

void *cr_arena_alloc_aligned(cr_arena *a, size_t bytes, size_t align)
{
    if (align < 16 || align > ARENA_ALIGN || (align & (align - 1)))
        cr_error("cr_arena_alloc_aligned: alignment %zu is not a power of two in [16, %d]", align,
                 ARENA_ALIGN);
    if (bytes > ARENA_MAX_REQUEST) cr_error("cr_arena_alloc: %zu bytes is more than any memory holds", bytes);
    bytes = (bytes + 15) & ~(size_t)15;
    for (;;) {
        chunk *c = a->cur;
        size_t at = (c->used + align - 1) & ~(align - 1);
        if (at <= c->size && c->size - at >= bytes) {
            c->used = at + bytes;
            if (c->used > c->hwm) c->hwm = c->used;
            UNPOISON(c->base + at, bytes);
            return c->base + at;
        }
        a->before_cur += c->used;
        if (c->next) { /* a chunk kept from an earlier step */
            a->cur = c->next;
            a->cur->used = 0;
            continue;
        }
        /* Grow: at least the configured chunk size, doubling with the total so
         * a long sequence needs few chunks. */
        size_t size =
            a->chunk_bytes <= ARENA_MAX_REQUEST / a->n_chunks ? a->chunk_bytes * a->n_chunks : bytes;
        if (size < bytes) size = bytes;
        c->next = chunk_new(size);
        a->n_chunks++;
        a->cur = c->next;
    }
}

void *cr_arena_alloc(cr_arena *a, size_t bytes) { return cr_arena_alloc_aligned(a, bytes, ARENA_ALIGN); }

void cr_arena_reset(cr_arena *a)
{
    for (chunk *c = a->first; c; c = c->next) c->hwm = 0;
    a->cur = a->first;
    a->first->used = 0;
    a->before_cur = 0;
    a->gen = atomic_fetch_add(&next_gen, 1);
}

cr_arena_mark cr_arena_mark_get(const cr_arena *a)
{
    return (cr_arena_mark){a->cur, a->cur->used, a->before_cur};
}

/* Chunks after the mark's keep their contents' high-water marks, so
 * cr_arena_untouched stays right; the bytes given back are poisoned under
 * ASan. */
void cr_arena_rewind(cr_arena *a, cr_arena_mark m)
{
    chunk *c = m.chunk;
    if (c == a->cur && m.used == c->used) return; /* nothing allocated since the mark: the common case */
    for (chunk *k = c; k; k = k->next) {
        size_t from = k == c ? m.used : 0, to = k == a->cur ? k->used : k->hwm;
        if (to > from) POISON(k->base + from, to - from);
        if (k == a->cur) break;
    }
    a->cur = c;
    c->used = m.used;
    a->before_cur = m.before_cur;
}

uint64_t cr_arena_generation(const cr_arena *a) { return a->gen; }

bool cr_arena_since(const cr_arena *a, cr_arena_mark m, const void *p)
{
    const unsigned char *q = p;
    const chunk *c = m.chunk;
    for (; c; c = c->next) {
        size_t from = c == m.chunk ? m.used : 0;
        if (q >= c->base + from && q < c->base + c->used) return true;
        if (c == a->cur) break;
    }
    return false;
}

bool cr_arena_owns(const cr_arena *a, const void *p)
{
    const unsigned char *q = p;
    for (const chunk *c = a->first; c; c = c->next)
        if (q >= c->base && q < c->base + c->size) return true;
    return false;
}

/* Each chunk remembers the most it handed out since the last reset (a rewind
 * does not lower it), so p is untouched when it lies at or beyond that. */
bool cr_arena_untouched(const cr_arena *a, const void *p)
{
    const unsigned char *q = p;
    for (const chunk *c = a->first; c; c = c->next)
        if (q >= c->base && q < c->base + c->size) return (size_t)(q - c->base) >= c->hwm;
    return false;
}

size_t cr_arena_used(const cr_arena *a) { return a->before_cur + a->cur->used; }

size_t cr_arena_capacity(const cr_arena *a)
{
    size_t n = 0;
    for (const chunk *c = a->first; c; c = c->next) n += c->size;
    return n;
}

size_t cr_arena_chunk_count(const cr_arena *a) { return a->n_chunks; }

cr_arena *cr_arena_use(cr_arena *a)
{
    cr_arena *old = current_arena;
    current_arena = a;
    return old;
}

cr_arena *cr_arena_current(void) { return current_arena; }
