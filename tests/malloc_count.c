/* An LD_PRELOAD library that counts every allocation call the process makes
 * (malloc, calloc, realloc, the aligned variants) and every free, in any
 * library: carousel, BLIS, libgomp, libc. Calls made from inside libgomp are
 * also counted apart (the caller's address against libgomp's mapped text),
 * because libgomp allocates and frees a team at every parallel region of one
 * thread, which BLIS opens on every product. tests/alloc_steady reads the
 * counts. Forwards to glibc's own entry points, so no dlsym (which itself
 * allocates) is needed. */
#define _GNU_SOURCE
#include <link.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);

static atomic_long n_alloc, n_free, n_alloc_gomp, n_free_gomp;
static uintptr_t gomp_lo, gomp_hi; /* libgomp's executable segment */

long cr_alloc_calls(void) { return atomic_load(&n_alloc); }
long cr_free_calls(void) { return atomic_load(&n_free); }
long cr_alloc_calls_libgomp(void) { return atomic_load(&n_alloc_gomp); }
long cr_free_calls_libgomp(void) { return atomic_load(&n_free_gomp); }

static int find_gomp(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    if (!info->dlpi_name || !strstr(info->dlpi_name, "libgomp")) return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            gomp_lo = info->dlpi_addr + ph->p_vaddr;
            gomp_hi = gomp_lo + ph->p_memsz;
        }
    }
    return 1;
}

/* Every library is mapped before any constructor runs. */
__attribute__((constructor)) static void locate_libgomp(void) { dl_iterate_phdr(find_gomp, NULL); }

/* Blocks libgomp allocated and has not freed (it frees through tail calls,
 * so a free's return address may not lie in libgomp): a few slots suffice
 * for its short-lived teams. */
#define GOMP_SLOTS 64
static _Atomic(void *) gomp_blocks[GOMP_SLOTS];

static void *counted(void *p, uintptr_t ra)
{
    atomic_fetch_add(&n_alloc, 1);
    if (ra >= gomp_lo && ra < gomp_hi) {
        atomic_fetch_add(&n_alloc_gomp, 1);
        for (int i = 0; i < GOMP_SLOTS; i++) {
            void *none = NULL;
            if (atomic_compare_exchange_strong(&gomp_blocks[i], &none, p)) break;
        }
    }
    return p;
}
#define COUNTED(p) counted((p), (uintptr_t)__builtin_return_address(0))

void *malloc(size_t n) { return COUNTED(__libc_malloc(n)); }
void *calloc(size_t n, size_t m) { return COUNTED(__libc_calloc(n, m)); }
void *realloc(void *p, size_t n) { return COUNTED(__libc_realloc(p, n)); }
void *memalign(size_t align, size_t n) { return COUNTED(__libc_memalign(align, n)); }
void *aligned_alloc(size_t align, size_t n) { return COUNTED(__libc_memalign(align, n)); }

int posix_memalign(void **out, size_t align, size_t n)
{
    void *p = COUNTED(__libc_memalign(align, n));
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void free(void *p)
{
    if (p) {
        atomic_fetch_add(&n_free, 1);
        for (int i = 0; i < GOMP_SLOTS; i++) {
            void *q = p;
            if (atomic_compare_exchange_strong(&gomp_blocks[i], &q, NULL)) {
                atomic_fetch_add(&n_free_gomp, 1);
                break;
            }
        }
    }
    __libc_free(p);
}
