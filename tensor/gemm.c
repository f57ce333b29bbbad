/* Matrix products on strided 2-D views: a plain C kernel for tiny products
 * where packing and dispatch cost more than the arithmetic (threshold
 * measured with bench/matmul); f32 products with row-stored C, with or
 * without a packed right operand, on carousel's own AVX-512 micro-kernel
 * (gemm_ukr.c) with BLIS's bits, where it has them; otherwise BLIS's
 * micro-kernel under carousel's own blocking loops when the product runs on
 * one thread, BLIS's threaded typed API when it may fork. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <blis.h>

#include "gemm_ukr.h"
#include "transpose.h"
#include "iter.h"
#include "tensor.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* m*n*k at or below this goes to the C kernel; see ARCHITECTURE.md for the
 * measurement behind the default. */
int64_t cr_gemm_small_threshold = 32768;
/* m*n*k at or below this runs on one thread even where threads are allowed:
 * the fork and join of a parallel region (microseconds on a quiet machine,
 * a scheduler time slice when the other core is busy) cost more than half
 * of such a product. The one-thread path gives the threaded one's bits. */
int64_t cr_gemm_parallel_threshold = (int64_t)1 << 20;
/* Packs of at least this many bytes have the kernel fetch each next panel
 * ahead (own_part, cr_ukr_sgemm_block): bigger than L2 (2 MB on the Xeon, 1 MB on
 * Zen 4 and 5), they stream from L3 at every product. On the Xeon it is
 * worth 15-25% to the packed products at hidden 512 and 1024, and nothing
 * either way at 256 (1 MB); at 128 (256 KB, in L2) about 0.5% lost, so
 * smaller packs go without. On AMD (set at load, by blis_arch_hint below) only packs of 8 MB
 * and more (hidden 1024): on Zen 5 the products at hidden 512 already ran at
 * the FMA units' peak without it (about 205 GFLOP/s of 208), and a fetch
 * ahead lost 5-17% of the step there, while at hidden 1024 it gained 9% on
 * two threads (that fetch was the earlier, unspread one; the spread one has
 * not been measured on Zen). */
int64_t cr_gemm_fetch_bytes = (int64_t)1 << 20;

void cr_gemm_set_threads(int n) { bli_thread_set_num_threads(n > 0 ? n : 1); }

/* Debian's BLIS 0.9.0 often fails to pick its AVX-512 (skx) kernels on CPUs
 * that run them well, so carousel asks for them at load time, before any BLIS
 * call, and only when the user has not chosen (BLIS reads BLIS_ARCH_TYPE
 * once, when it initialises):
 * - AMD Zen 5 (family 0x1A), which BLIS 0.9 predates: it falls back to its
 *   generic C kernels, about 6x slower than skx's.
 * - AMD Zen 4 (family 0x19 with AVX-512; Zen 3, the same family, has none):
 *   BLIS picks its zen3 AVX2 kernels, and skx's with carousel's own
 *   micro-kernel (which needs them) ran the char LM step 11-12% faster at
 *   hidden 512 (ARCHITECTURE.md, Threads).
 * - Intel with AVX-512: BLIS takes skx only where the brand string names a
 *   Xeon tier and SKU it knows to have two FMA units, else haswell's AVX2
 *   kernels. A virtual machine's "Intel(R) Xeon(R) Processor" names neither:
 *   on such a Xeon (family 6, model 207) sgemm ran at 150 GFLOP/s per core
 *   with skx, 80 with haswell, and both carousel's step and PyTorch's ran
 *   faster. On a one-FMA-unit part, skx's 16-wide FMAs on one port match
 *   haswell's two 8-wide ones, so nothing is lost there.
 * Debian's BLIS 0.9 takes any name as id 0, which is skx's (BLIS_ARCH_TYPE=zen3
 * selects skx there too: tested with bli_arch_query_id), so "skx" works
 * there as well as with versions that read names. The same constructor
 * sets cr_gemm_fetch_bytes for AMD CPUs (whatever BLIS_ARCH_TYPE says), as
 * it reads the vendor anyway. The constructor attribute and cpuid.h are
 * GCC/clang facilities; other compilers simply skip the hint (and keep the
 * 1 MB bound). */
static unsigned hinted_family;

unsigned cr_blis_arch_hinted(void) { return hinted_family; }

#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#include <stdlib.h>

__attribute__((constructor)) static void blis_arch_hint(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    bool amd = b == 0x68747541u;                     /* "AuthenticAMD" */
    bool intel = b == 0x756e6547u;                   /* "GenuineIntel" */
    if (amd) cr_gemm_fetch_bytes = (int64_t)8 << 20; /* the fetch ahead: see cr_gemm_fetch_bytes */
    if (getenv("BLIS_ARCH_TYPE") || !(amd || intel) || !__get_cpuid(1, &a, &b, &c, &d)) return;
    unsigned family = ((a >> 8) & 0xfu) + ((a >> 20) & 0xffu);
    /* The AVX-512 subsets BLIS's skx kernels need (its own test). A
     * constructor may run before libgcc's, which fills in what
     * __builtin_cpu_supports reads: hence the explicit init. */
    __builtin_cpu_init();
    bool skx = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    if (skx && (intel || family >= 0x19u) && setenv("BLIS_ARCH_TYPE", "skx", 0) == 0) hinted_family = family;
}
#endif

/* BLIS rejects strides that do not describe a valid matrix even along a
 * size-1 dimension, where ours can be anything (views of views). */
static void fix_strides(int64_t r, int64_t c, int64_t *rs, int64_t *cs)
{
    if (r <= 1 && c <= 1) {
        *rs = 1;
        *cs = 1;
    } else if (r <= 1) {
        *rs = *cs * c;
    } else if (c <= 1) {
        *cs = *rs * r;
    }
}

/* m*n*k, the measure of a product's size that the thresholds compare, or
 * INT64_MAX past it: expanded views (stride 0) give shapes whose product
 * overflows without any memory behind them. */
static int64_t work_of(int64_t m, int64_t n, int64_t k)
{
    int64_t mn, mnk;
    return cr_mul_ok(m, n, &mn) && cr_mul_ok(mn, k, &mnk) ? mnk : INT64_MAX;
}

/* Products cr_k_gemm gives to the C kernel below (small_sgemm/small_dgemm):
 * work (work_of) at most cr_gemm_small_threshold, C at most 4096 wide. */
static bool goes_small(int64_t work, int64_t n) { return work <= cr_gemm_small_threshold && n <= 4096; }

/* The C kernel computes dot products of contiguous rows (eight partial sums)
 * where B is a transposed row-major matrix and A's rows are contiguous, and
 * runs along B's rows (one chain per element) otherwise. */
static bool small_by_dots(int64_t csa, int64_t rsb, int64_t csb) { return rsb == 1 && csb != 1 && csa == 1; }

#define SMALL_GEMM(T, NAME)                                                                                  \
    static void NAME(int64_t m, int64_t n, int64_t k, T alpha, const T *a, int64_t rsa, int64_t csa,         \
                     const T *b, int64_t rsb, int64_t csb, T beta, T *c, int64_t rsc, int64_t csc)           \
    {                                                                                                        \
        T acc[n > 0 ? n : 1];                                                                                \
        if (small_by_dots(csa, rsb, csb)) {                                                                  \
            /* B is a transposed row-major matrix (a weight W^T): dot products of                            \
             * contiguous rows, eight partial sums so the loop vectorises without                            \
             * reassociating a single sum. */                                                                \
            for (int64_t i = 0; i < m; i++) {                                                                \
                const T *ai = a + i * rsa;                                                                   \
                for (int64_t j = 0; j < n; j++) {                                                            \
                    const T *bj = b + j * csb;                                                               \
                    T s8[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                      \
                    int64_t p = 0;                                                                           \
                    for (; p + 8 <= k; p += 8)                                                               \
                        for (int q = 0; q < 8; q++) s8[q] += ai[p + q] * bj[p + q];                          \
                    T s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));         \
                    for (; p < k; p++) s += ai[p] * bj[p];                                                   \
                    T *cij = c + i * rsc + j * csc;                                                          \
                    *cij = beta == 0 ? alpha * s : alpha * s + beta * *cij;                                  \
                }                                                                                            \
            }                                                                                                \
            return;                                                                                          \
        }                                                                                                    \
        for (int64_t i = 0; i < m; i++) {                                                                    \
            for (int64_t j = 0; j < n; j++) acc[j] = 0;                                                      \
            for (int64_t p = 0; p < k; p++) {                                                                \
                T aip = a[i * rsa + p * csa];                                                                \
                const T *bp = b + p * rsb;                                                                   \
                if (csb == 1)                                                                                \
                    for (int64_t j = 0; j < n; j++) acc[j] += aip * bp[j];                                   \
                else                                                                                         \
                    for (int64_t j = 0; j < n; j++) acc[j] += aip * bp[j * csb];                             \
            }                                                                                                \
            T *ci = c + i * rsc;                                                                             \
            if (beta == 0)                                                                                   \
                for (int64_t j = 0; j < n; j++) ci[j * csc] = alpha * acc[j];                                \
            else                                                                                             \
                for (int64_t j = 0; j < n; j++) ci[j * csc] = alpha * acc[j] + beta * ci[j * csc];           \
        }                                                                                                    \
    }

SMALL_GEMM(float, small_sgemm)
SMALL_GEMM(double, small_dgemm)

/* ---- one thread: BLIS's micro-kernel under carousel's loops ------------------
 *
 * BLIS 0.9 built for OpenMP enters a parallel region on every product, even
 * with one thread, and libgomp allocates and frees a team for a region of one
 * thread (and for every nested region): 209 allocations per charlm step on one
 * thread. So a product that runs on one thread (one thread allowed, or inside
 * a parallel region or a replica) goes through the loops below instead: the
 * five loops of BLIS's native gemm (jc over NC columns, pc over KC of the
 * inner dimension, pack B, ic over MC rows, pack A, then the micro-tiles),
 * with the blocksizes and the micro-kernel of BLIS's context for this CPU.
 * The arithmetic of each element is therefore BLIS's single-threaded one: the
 * same KC blocks, each a chain of FMAs in k order inside the micro-kernel,
 * alpha and beta applied by it (tests/test_parallel.c checks the bits against
 * bli_sgemm_ex on 1 to 4 threads). Packing buffers are per thread, grown on
 * demand and kept, so a steady-state product allocates nothing. */

typedef struct pack_bufs {
    void *a, *b;
    size_t a_bytes, b_bytes;
} pack_bufs;

static _Thread_local pack_bufs bufs;
static pthread_key_t bufs_key;
static pthread_once_t bufs_once = PTHREAD_ONCE_INIT;

static void bufs_release(void *p)
{
    pack_bufs *pb = p;
    free(pb->a);
    free(pb->b);
    *pb = (pack_bufs){0};
}

static void bufs_key_make(void)
{
    if (pthread_key_create(&bufs_key, bufs_release)) cr_error("cr_k_gemm: pthread_key_create failed");
}

/* A 64-byte aligned buffer of at least `need` bytes (plus slack for the
 * micro-kernel's prefetches), kept for the thread's next products. */
static void *grow(void **p, size_t *have, size_t need)
{
    need += 256;
    if (need <= *have) return *p;
    pthread_once(&bufs_once, bufs_key_make);
    pthread_setspecific(bufs_key, &bufs); /* frees both buffers at thread exit */
    free(*p);
    *p = NULL;
    *have = 0;
    if (posix_memalign(p, 64, need))
        cr_error("cr_k_gemm: out of memory for %zu bytes of packing buffer", need);
    *have = need;
    return *p;
}

/* BLIS's forward blocksize rule (bli_determine_blocksize_f_sub): the default
 * block, or all that is left when it fits in the maximum block. */
static inline int64_t block(int64_t left, int64_t def, int64_t max) { return left <= max ? left : def; }

typedef struct ukr_info {
    cntx_t *cntx;
    void_fp ukr;
    bool rows; /* the micro-kernel prefers row-stored C */
    int64_t mr, nr, pmr, pnr, kc, kc_max, mc, mc_max, nc, nc_max;
} ukr_info;

static ukr_info ukr_query(num_t dt)
{
    cntx_t *cx = bli_gks_query_cntx();
    return (ukr_info){
        .cntx = cx,
        .ukr = bli_cntx_get_l3_nat_ukr_dt(dt, BLIS_GEMM_UKR, cx),
        .rows = bli_cntx_l3_nat_ukr_prefers_rows_dt(dt, BLIS_GEMM_UKR, cx),
        .mr = bli_cntx_get_blksz_def_dt(dt, BLIS_MR, cx),
        .nr = bli_cntx_get_blksz_def_dt(dt, BLIS_NR, cx),
        .pmr = bli_cntx_get_blksz_max_dt(dt, BLIS_MR, cx), /* BLIS keeps PACKMR as MR's maximum */
        .pnr = bli_cntx_get_blksz_max_dt(dt, BLIS_NR, cx),
        .kc = bli_cntx_get_blksz_def_dt(dt, BLIS_KC, cx),
        .kc_max = bli_cntx_get_blksz_max_dt(dt, BLIS_KC, cx),
        .mc = bli_cntx_get_blksz_def_dt(dt, BLIS_MC, cx),
        .mc_max = bli_cntx_get_blksz_max_dt(dt, BLIS_MC, cx),
        .nc = bli_cntx_get_blksz_def_dt(dt, BLIS_NC, cx),
        .nc_max = bli_cntx_get_blksz_max_dt(dt, BLIS_NC, cx),
    };
}

/* Packing copies rows of a constant width where it can: the compiler then
 * moves each row in vector registers, where a width it cannot see becomes
 * a call to memcpy per row (37% of a weight-gradient product whose panels
 * are 8 wide, measured). BY_WIDTH(w, COPY) expands COPY(w) with w made a
 * constant for the micro-kernels' widths. */
#define BY_WIDTH(w, COPY)                                                                                    \
    switch (w) {                                                                                             \
    case 8: COPY(8); break;                                                                                  \
    case 12: COPY(12); break;                                                                                \
    case 16: COPY(16); break;                                                                                \
    case 32: COPY(32); break;                                                                                \
    default: COPY(w); break;                                                                                 \
    }

/* kc rows of w elements, src rows sp apart to dst rows ld apart */
#define COPY_ROWS(w)                                                                                         \
    for (int64_t p = 0; p < kc; p++)                                                                         \
        for (int64_t i = 0; i < (w); i++) dst[p * ld + i] = src[p * sp + i]

/* Rows [p0, p1) of the full panels of panels_by_rows: per panel, w elements
 * of each row, zero-padded to pw. */
#define ROW_PANELS(w)                                                                                        \
    for (int64_t j0 = 0; j0 < full; j0 += (w))                                                               \
        for (int64_t p = p0; p < p1; p++) {                                                                  \
            for (int64_t i = 0; i < (w); i++) dst[j0 / (w)*pw * kc + p * pw + i] = src[p * sp + j0 + i];     \
            for (int64_t i = (w); i < pw; i++) dst[j0 / (w)*pw * kc + p * pw + i] = 0;                       \
        }

/* One micro-panel: dst[p*ld + i] = src[i*si + p*sp] for i < m, p < kc, and
 * zeros for i in [m, ld). A (mc x kc) becomes panels of mr rows (si = rs,
 * sp = cs); B (kc x nc) panels of nr columns (si = cs, sp = rs). */
#define PANEL(T, SFX)                                                                                        \
    static void panel_##SFX(T *restrict dst, int64_t ld, const T *src, int64_t m, int64_t kc, int64_t si,    \
                            int64_t sp)                                                                      \
    {                                                                                                        \
        if (sp == 1 && si != 1 && m > 1) { /* rows of the panel contiguous in src: transpose */              \
            cr_transpose_##SFX(dst, ld, src, si, m, kc);                                                     \
        } else if (si == 1) { /* columns contiguous: copies */                                               \
            BY_WIDTH(m, COPY_ROWS)                                                                           \
        } else {                                                                                             \
            for (int64_t p = 0; p < kc; p++)                                                                 \
                for (int64_t i = 0; i < m; i++) dst[p * ld + i] = src[i * si + p * sp];                      \
        }                                                                                                    \
        if (m < ld)                                                                                          \
            for (int64_t p = 0; p < kc; p++)                                                                 \
                for (int64_t i = m; i < ld; i++) dst[p * ld + i] = 0;                                        \
    }                                                                                                        \
    /* Panels of w (stored pw wide) over mn elements that are contiguous in the                              \
     * source (src[p*sp + i]), eight source rows at a time: every panel's part                               \
     * of them in turn, so that each source line is fetched once and each                                    \
     * panel written in order (a weight gradient's A^T, 8 of every row's                                     \
     * floats with rows 8 KB apart, packed panel by panel was slower). */                                    \
    static void panels_by_rows_##SFX(T *restrict dst, const T *src, int64_t mn, int64_t kc, int64_t sp,      \
                                     int64_t w, int64_t pw)                                                  \
    {                                                                                                        \
        int64_t full = mn - mn % w;                                                                          \
        for (int64_t p0 = 0, p1; p0 < kc; p0 = p1) {                                                         \
            p1 = p0 + 8 < kc ? p0 + 8 : kc;                                                                  \
            BY_WIDTH(w, ROW_PANELS)                                                                          \
            if (full < mn)                                                                                   \
                for (int64_t p = p0; p < p1; p++)                                                            \
                    for (int64_t i = 0; i < pw; i++)                                                         \
                        dst[full / w * pw * kc + p * pw + i] = full + i < mn ? src[p * sp + full + i] : 0;   \
        }                                                                                                    \
    }                                                                                                        \
    static void pack_a_##SFX(T *dst, const T *src, int64_t mc, int64_t kc, int64_t rs, int64_t cs,           \
                             int64_t mr, int64_t pmr)                                                        \
    {                                                                                                        \
        if (rs == 1 && cs != 1) {                                                                            \
            panels_by_rows_##SFX(dst, src, mc, kc, cs, mr, pmr);                                             \
            return;                                                                                          \
        }                                                                                                    \
        for (int64_t i0 = 0; i0 < mc; i0 += mr, dst += pmr * kc)                                             \
            panel_##SFX(dst, pmr, src + i0 * rs, mc - i0 < mr ? mc - i0 : mr, kc, rs, cs);                   \
    }                                                                                                        \
    static void pack_b_##SFX(T *dst, const T *src, int64_t kc, int64_t nc, int64_t rs, int64_t cs,           \
                             int64_t nr, int64_t pnr)                                                        \
    {                                                                                                        \
        if (cs == 1 && rs != 1) {                                                                            \
            panels_by_rows_##SFX(dst, src, nc, kc, rs, nr, pnr);                                             \
            return;                                                                                          \
        }                                                                                                    \
        for (int64_t j0 = 0; j0 < nc; j0 += nr, dst += pnr * kc)                                             \
            panel_##SFX(dst, pnr, src + j0 * cs, nc - j0 < nr ? nc - j0 : nr, kc, cs, rs);                   \
    }

PANEL(float, f32)
PANEL(double, f64)

#define SERIAL_GEMM(T, SFX, DT, UKR_T)                                                                       \
    static void serial_gemm_##SFX(int64_t m, int64_t n, int64_t k, T alpha, const T *a, int64_t rsa,         \
                                  int64_t csa, const T *b, int64_t rsb, int64_t csb, T beta, T *c,           \
                                  int64_t rsc, int64_t csc)                                                  \
    {                                                                                                        \
        if (k == 0 || alpha == 0) { /* C = beta C, as BLIS: never 0 * NaN */                                 \
            for (int64_t i = 0; i < m; i++)                                                                  \
                for (int64_t j = 0; j < n; j++)                                                              \
                    c[i * rsc + j * csc] = beta == 0 ? 0 : beta * c[i * rsc + j * csc];                      \
            return;                                                                                          \
        }                                                                                                    \
        ukr_info u = ukr_query(DT);                                                                          \
        /* BLIS computes C^T = B^T A^T when C's storage is not the one the kernel prefers. */                \
        bool row_stored = csc == 1, col_stored = rsc == 1;                                                   \
        if ((row_stored && !u.rows) || (col_stored && u.rows)) {                                             \
            const T *t = a;                                                                                  \
            a = b;                                                                                           \
            b = t;                                                                                           \
            int64_t r = rsa, q = csa, mm = m;                                                                \
            rsa = csb;                                                                                       \
            csa = rsb;                                                                                       \
            rsb = q;                                                                                         \
            csb = r;                                                                                         \
            m = n;                                                                                           \
            n = mm;                                                                                          \
            r = rsc;                                                                                         \
            rsc = csc;                                                                                       \
            csc = r;                                                                                         \
        }                                                                                                    \
        int64_t mc_top = m < u.mc_max ? m : u.mc_max, nc_top = n < u.nc_max ? n : u.nc_max;                  \
        int64_t kc_top = k < u.kc_max ? k : u.kc_max;                                                        \
        T *ap =                                                                                              \
            grow(&bufs.a, &bufs.a_bytes, (size_t)((mc_top + u.mr - 1) / u.mr * u.pmr * kc_top) * sizeof(T)); \
        T *bp =                                                                                              \
            grow(&bufs.b, &bufs.b_bytes, (size_t)((nc_top + u.nr - 1) / u.nr * u.pnr * kc_top) * sizeof(T)); \
        UKR_T ukr = (UKR_T)u.ukr;                                                                            \
        auxinfo_t aux;                                                                                       \
        bli_auxinfo_set_schema_a(BLIS_PACKED_ROW_PANELS, &aux);                                              \
        bli_auxinfo_set_schema_b(BLIS_PACKED_COL_PANELS, &aux);                                              \
        bli_auxinfo_set_is_a(1, &aux);                                                                       \
        bli_auxinfo_set_is_b(1, &aux);                                                                       \
        bli_auxinfo_set_ukr(u.ukr, &aux);                                                                    \
        bli_auxinfo_set_params(NULL, &aux);                                                                  \
        T one = 1;                                                                                           \
        for (int64_t jc = 0, nc; jc < n; jc += nc) {                                                         \
            nc = block(n - jc, u.nc, u.nc_max);                                                              \
            for (int64_t pc = 0, kc; pc < k; pc += kc) {                                                     \
                kc = block(k - pc, u.kc, u.kc_max);                                                          \
                pack_b_##SFX(bp, b + pc * rsb + jc * csb, kc, nc, rsb, csb, u.nr, u.pnr);                    \
                T *beta_use = pc == 0 ? &beta : &one;                                                        \
                for (int64_t ic = 0, mc; ic < m; ic += mc) {                                                 \
                    mc = block(m - ic, u.mc, u.mc_max);                                                      \
                    pack_a_##SFX(ap, a + ic * rsa + pc * csa, mc, kc, rsa, csa, u.mr, u.pmr);                \
                    int64_t ps_a = u.pmr * kc, ps_b = u.pnr * kc;                                            \
                    bli_auxinfo_set_ps_a(ps_a, &aux);                                                        \
                    bli_auxinfo_set_ps_b(ps_b, &aux);                                                        \
                    for (int64_t jr = 0; jr < nc; jr += u.nr) {                                              \
                        T *b1 = bp + jr / u.nr * ps_b;                                                       \
                        for (int64_t ir = 0; ir < mc; ir += u.mr) {                                          \
                            T *a1 = ap + ir / u.mr * ps_a;                                                   \
                            bool last_i = ir + u.mr >= mc;                                                   \
                            T *a2 = last_i ? ap : a1 + ps_a;                                                 \
                            T *b2 = last_i ? (jr + u.nr >= nc ? bp : b1 + ps_b) : b1;                        \
                            bli_auxinfo_set_next_a(a2, &aux);                                                \
                            bli_auxinfo_set_next_b(b2, &aux);                                                \
                            ukr(mc - ir < u.mr ? mc - ir : u.mr, nc - jr < u.nr ? nc - jr : u.nr, kc,        \
                                &alpha, a1, b1, beta_use, c + (ic + ir) * rsc + (jc + jr) * csc, rsc, csc,   \
                                &aux, u.cntx);                                                               \
                        }                                                                                    \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

SERIAL_GEMM(float, f32, BLIS_FLOAT, sgemm_ukr_ft)
SERIAL_GEMM(double, f64, BLIS_DOUBLE, dgemm_ukr_ft)

/* ---- a right operand packed once ------------------------------------------------
 *
 * A product C = A B with row-stored C repacks B on every call: at hidden 512
 * the recurrent product [32,512] x [512,2048] copies B's 4 MB into panels to
 * do 67 MFLOP, and the backward dh = dz W_hh as much again, 64 times per
 * sequence with the same weight. cr_k_gemm_pack packs B once, in the layout
 * the loops above give it (per KC block of B's rows, every micro-panel of its
 * columns: MR-wide panels when the micro-kernel prefers column-stored C, so
 * that C^T = B^T A^T makes B the left operand, NR-wide otherwise).
 * cr_k_gemm_packed then runs the loops above, taking B's panels from the pack
 * and packing only the small A: the same micro-kernel calls on the same
 * values with the same KC blocks, so every element of C has cr_k_gemm's bits.
 * With threads it splits the panels of the pack (C's columns) between them,
 * which changes no element's arithmetic either. */

/* Packed f32 products use carousel's own micro-kernel (gemm_ukr.c) where
 * it reproduces BLIS's arithmetic: the CPU has AVX-512 and BLIS runs its skx
 * kernels (32 x 12, column-preferring, the blocksizes below multiples of the
 * tile so that its edge tiles are the last rows and columns of C). */
bool cr_gemm_blis_only = false;
static atomic_llong own_products, own_plain_products, own_small_products;

int64_t cr_k_gemm_own_count(void)
{
    return (int64_t)atomic_load_explicit(&own_products, memory_order_relaxed);
}

int64_t cr_k_gemm_own_small_count(void)
{
    return (int64_t)atomic_load_explicit(&own_small_products, memory_order_relaxed);
}

int64_t cr_k_gemm_own_plain_count(void)
{
    return (int64_t)atomic_load_explicit(&own_plain_products, memory_order_relaxed);
}

static bool own_possible(const ukr_info *u)
{
#ifdef CR_HAVE_UKR
    return cr_ukr_available() && bli_arch_query_id() == BLIS_ARCH_SKX && u->mr == 32 && u->nr == 12 &&
           !u->rows && u->mc % u->mr == 0 && u->nc % u->nr == 0;
#else
    (void)u;
    return false;
#endif
}

/* The geometry of a pack: panels of width w (stored pw wide, zero-padded) of
 * B's n columns, per KC block of its k rows; `lhs` when B lands on BLIS's
 * micro-kernel's A side, `own` when the panels are carousel's kernel's
 * (CR_UKR_NW wide, B on the vector side). */
typedef struct pack_geom {
    ukr_info u;
    bool lhs, own;
    int64_t w, pw, panels;
    size_t numel; /* elements, with slack for alignment and prefetches, and the header */
} pack_geom;

/* A pack opens (at its first 64-byte boundary) with a header saying whose
 * panels follow, so a product reads a pack the way it was made even if
 * cr_gemm_blis_only changed in between; the panels start 64 bytes later. */
typedef struct pack_head {
    uint64_t magic;
    int64_t k, n;
    int32_t dtype, own;
} pack_head;
#define PACK_MAGIC 0x6b6361702d7263ull /* "cr-pack" */
#define PACK_HEAD_BYTES 64

/* own: -1 chooses (the own kernel where possible unless cr_gemm_blis_only),
 * 0 or 1 asks for that layout (false when it cannot be had). */
static bool pack_geom_of(cr_dtype dt, int64_t k, int64_t n, int own, pack_geom *g)
{
    if (dt != CR_F32 && dt != CR_F64) return false;
    g->u = ukr_query(dt == CR_F32 ? BLIS_FLOAT : BLIS_DOUBLE);
    bool can_own = dt == CR_F32 && own_possible(&g->u);
    g->own = own < 0 ? can_own && !cr_gemm_blis_only : own == 1;
    if (g->own && !can_own) return false;
    if (k < 1 || n < 1) return false;
    size_t es = cr_dtype_size(dt);
    if (g->own) {
        g->lhs = false;
        g->w = g->pw = CR_UKR_NW;
    } else {
        g->lhs = !g->u.rows;
        g->w = g->lhs ? g->u.mr : g->u.nr;
        g->pw = g->lhs ? g->u.pmr : g->u.pnr;
        /* the blocks over B's columns (MC or NC) must start on panel boundaries */
        int64_t big = g->lhs ? g->u.mc : g->u.nc, big_max = g->lhs ? g->u.mc_max : g->u.nc_max;
        if (big % g->w || big_max % g->w) return false;
    }
    g->panels = (n + g->w - 1) / g->w;
    g->numel = (size_t)(g->panels * g->pw * k) + (64 + PACK_HEAD_BYTES + 256 + es - 1) / es;
    return true;
}

static void *pack_base(const cr_tensor *pack)
{
    return (void *)(((uintptr_t)pack->data + 63) & ~(uintptr_t)63);
}

static void *pack_panels(const cr_tensor *pack) { return (char *)pack_base(pack) + PACK_HEAD_BYTES; }

int64_t cr_k_gemm_pack_numel(const cr_tensor *b)
{
    pack_geom g;
    if (b->ndim != 2 || !pack_geom_of(b->dtype, b->shape[0], b->shape[1], -1, &g)) return 0;
    return (int64_t)g.numel;
}

/* Offset of KC block starting at row pc of B: every block before the last is
 * KC rows (block()'s rule), so blocks start at multiples of KC. */
static inline int64_t pack_at(const pack_geom *g, int64_t pc, int64_t panel, int64_t kc)
{
    return pc * g->panels * g->pw + panel * g->pw * kc;
}

#define PACK_B(T, SFX)                                                                                       \
    static void pack_whole_##SFX(const pack_geom *g, T *dst, const T *b, int64_t k, int64_t n, int64_t rsb,  \
                                 int64_t csb)                                                                \
    {                                                                                                        \
        /* panels split among threads, each panel's KC blocks in turn (a panel of a                          \
         * transposed B reads the same rows of the source in every block) */                                 \
        CR_PAR_FOR(                                                                                          \
            cr_parallel_threshold < k * n, "omp parallel for schedule(static)",                              \
            for (int64_t p = 0; p < g->panels; p++) {                                                        \
                int64_t j0 = p * g->w;                                                                       \
                for (int64_t pc = 0, kc; pc < k; pc += kc) {                                                 \
                    kc = block(k - pc, g->u.kc, g->u.kc_max);                                                \
                    panel_##SFX(dst + pack_at(g, pc, p, kc), g->pw, b + pc * rsb + j0 * csb,                 \
                                n - j0 < g->w ? n - j0 : g->w, kc, csb, rsb);                                \
                }                                                                                            \
            });                                                                                              \
    }
PACK_B(float, f32)
PACK_B(double, f64)

void cr_k_gemm_pack(cr_tensor *pack, const cr_tensor *b)
{
    char s1[128];
    pack_geom g;
    if (b->ndim != 2 || !pack_geom_of(b->dtype, b->shape[0], b->shape[1], -1, &g))
        cr_error("cr_k_gemm_pack: %s %s cannot be packed", cr_dtype_name(b->dtype),
                 cr_shape_str(s1, sizeof s1, b->ndim, b->shape));
    if (pack->dtype != b->dtype || !cr_is_contiguous(pack) || cr_numel(pack) < (int64_t)g.numel)
        cr_error("cr_k_gemm_pack: pack of %lld %s elements, need %lld", (long long)cr_numel(pack),
                 cr_dtype_name(pack->dtype), (long long)g.numel);
    int64_t k = b->shape[0], n = b->shape[1], rsb = b->stride[0], csb = b->stride[1];
    fix_strides(k, n, &rsb, &csb);
    pack_head h = {.magic = PACK_MAGIC, .k = k, .n = n, .dtype = (int32_t)b->dtype, .own = g.own};
    memcpy(pack_base(pack), &h, sizeof h);
    if (b->dtype == CR_F32)
        pack_whole_f32(&g, pack_panels(pack), b->data, k, n, rsb, csb);
    else
        pack_whole_f64(&g, pack_panels(pack), b->data, k, n, rsb, csb);
}

/* The geometry `pack` was made with, if it is a pack of B (k x n, dtype). */
static bool pack_geom_read(const cr_tensor *pack, cr_dtype dt, int64_t k, int64_t n, pack_geom *g)
{
    pack_head h;
    if (pack->dtype != dt || !cr_is_contiguous(pack) ||
        cr_numel(pack) * (int64_t)cr_dtype_size(dt) < 64 + PACK_HEAD_BYTES)
        return false;
    memcpy(&h, pack_base(pack), sizeof h);
    return h.magic == PACK_MAGIC && h.k == k && h.n == n && h.dtype == (int32_t)dt &&
           pack_geom_of(dt, k, n, h.own, g) && cr_numel(pack) >= (int64_t)g->numel;
}

/* C's columns [p0*w, p1*w) (panels p0..p1 of the pack), C row-stored. When
 * the pack is the left operand: C^T = B^T A^T, m' = B's columns in MC blocks,
 * A^T the right operand packed per KC block; else C = A B with B's panels
 * in NC blocks and A packed per (NC, KC, MC) block, as serial_gemm does. */
#define PACKED_GEMM(T, SFX, UKR_T)                                                                           \
    static void packed_part_##SFX(const pack_geom *g, int64_t p0, int64_t p1, int64_t m, int64_t n,          \
                                  int64_t k, T alpha, const T *a, int64_t rsa, int64_t csa, const T *pk,     \
                                  T beta, T *c, int64_t rsc)                                                 \
    {                                                                                                        \
        const ukr_info *u = &g->u;                                                                           \
        int64_t lo = p0 * g->w, hi = p1 * g->w < n ? p1 * g->w : n;                                          \
        int64_t small_w = g->lhs ? u->nr : u->mr, small_pw = g->lhs ? u->pnr : u->pmr;                       \
        int64_t small_blk = g->lhs ? (m < u->nc_max ? m : u->nc_max) : (m < u->mc_max ? m : u->mc_max);      \
        int64_t kc_top = k < u->kc_max ? k : u->kc_max;                                                      \
        T *sp = g->lhs                                                                                       \
                    ? grow(&bufs.b, &bufs.b_bytes,                                                           \
                           (size_t)((small_blk + small_w - 1) / small_w * small_pw * kc_top) * sizeof(T))    \
                    : grow(&bufs.a, &bufs.a_bytes,                                                           \
                           (size_t)((small_blk + small_w - 1) / small_w * small_pw * kc_top) * sizeof(T));   \
        UKR_T ukr = (UKR_T)u->ukr;                                                                           \
        auxinfo_t aux;                                                                                       \
        bli_auxinfo_set_schema_a(BLIS_PACKED_ROW_PANELS, &aux);                                              \
        bli_auxinfo_set_schema_b(BLIS_PACKED_COL_PANELS, &aux);                                              \
        bli_auxinfo_set_is_a(1, &aux);                                                                       \
        bli_auxinfo_set_is_b(1, &aux);                                                                       \
        bli_auxinfo_set_ukr(u->ukr, &aux);                                                                   \
        bli_auxinfo_set_params(NULL, &aux);                                                                  \
        T one = 1;                                                                                           \
        if (g->lhs) { /* C^T [n, m] = B^T A^T: rows of C^T are B's columns (unit stride in C) */             \
            for (int64_t jc = 0, nc; jc < m; jc += nc) {                                                     \
                nc = block(m - jc, u->nc, u->nc_max);                                                        \
                for (int64_t pc = 0, kc; pc < k; pc += kc) {                                                 \
                    kc = block(k - pc, u->kc, u->kc_max);                                                    \
                    /* A^T's panels: (kc x nc) of A^T, rows strided by csa, columns by rsa */                \
                    pack_b_##SFX(sp, a + pc * csa + jc * rsa, kc, nc, csa, rsa, u->nr, u->pnr);              \
                    T *beta_use = pc == 0 ? &beta : &one;                                                    \
                    int64_t ps_a = u->pmr * kc, ps_b = u->pnr * kc;                                          \
                    bli_auxinfo_set_ps_a(ps_a, &aux);                                                        \
                    bli_auxinfo_set_ps_b(ps_b, &aux);                                                        \
                    for (int64_t ic = lo, mc; ic < hi; ic += mc) {                                           \
                        mc = block(hi - ic, u->mc, u->mc_max);                                               \
                        const T *ap = pk + pack_at(g, pc, ic / u->mr, kc);                                   \
                        for (int64_t jr = 0; jr < nc; jr += u->nr) {                                         \
                            T *b1 = sp + jr / u->nr * ps_b;                                                  \
                            for (int64_t ir = 0; ir < mc; ir += u->mr) {                                     \
                                T *a1 = (T *)ap + ir / u->mr * ps_a;                                         \
                                bool last_i = ir + u->mr >= mc;                                              \
                                T *a2 = last_i ? (T *)ap : a1 + ps_a;                                        \
                                T *b2 = last_i ? (jr + u->nr >= nc ? sp : b1 + ps_b) : b1;                   \
                                bli_auxinfo_set_next_a(a2, &aux);                                            \
                                bli_auxinfo_set_next_b(b2, &aux);                                            \
                                ukr(mc - ir < u->mr ? mc - ir : u->mr, nc - jr < u->nr ? nc - jr : u->nr,    \
                                    kc, &alpha, a1, b1, beta_use, c + (jc + jr) * rsc + (ic + ir), 1, rsc,   \
                                    &aux, u->cntx);                                                          \
                            }                                                                                \
                        }                                                                                    \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        } else { /* C = A B: B's panels from the pack, A packed per block */                                 \
            for (int64_t jc = lo, nc; jc < hi; jc += nc) {                                                   \
                nc = block(hi - jc, u->nc, u->nc_max);                                                       \
                for (int64_t pc = 0, kc; pc < k; pc += kc) {                                                 \
                    kc = block(k - pc, u->kc, u->kc_max);                                                    \
                    const T *bp = pk + pack_at(g, pc, jc / u->nr, kc);                                       \
                    T *beta_use = pc == 0 ? &beta : &one;                                                    \
                    for (int64_t ic = 0, mc; ic < m; ic += mc) {                                             \
                        mc = block(m - ic, u->mc, u->mc_max);                                                \
                        pack_a_##SFX(sp, a + ic * rsa + pc * csa, mc, kc, rsa, csa, u->mr, u->pmr);          \
                        int64_t ps_a = u->pmr * kc, ps_b = u->pnr * kc;                                      \
                        bli_auxinfo_set_ps_a(ps_a, &aux);                                                    \
                        bli_auxinfo_set_ps_b(ps_b, &aux);                                                    \
                        for (int64_t jr = 0; jr < nc; jr += u->nr) {                                         \
                            T *b1 = (T *)bp + jr / u->nr * ps_b;                                             \
                            for (int64_t ir = 0; ir < mc; ir += u->mr) {                                     \
                                T *a1 = sp + ir / u->mr * ps_a;                                              \
                                bool last_i = ir + u->mr >= mc;                                              \
                                T *a2 = last_i ? sp : a1 + ps_a;                                             \
                                T *b2 = last_i ? (jr + u->nr >= nc ? (T *)bp : b1 + ps_b) : b1;              \
                                bli_auxinfo_set_next_a(a2, &aux);                                            \
                                bli_auxinfo_set_next_b(b2, &aux);                                            \
                                ukr(mc - ir < u->mr ? mc - ir : u->mr, nc - jr < u->nr ? nc - jr : u->nr,    \
                                    kc, &alpha, a1, b1, beta_use, c + (ic + ir) * rsc + (jc + jr), rsc, 1,   \
                                    &aux, u->cntx);                                                          \
                            }                                                                                \
                        }                                                                                    \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    static void packed_gemm_##SFX(const pack_geom *g, int nt, int64_t m, int64_t n, int64_t k, T alpha,      \
                                  const T *a, int64_t rsa, int64_t csa, const T *pk, T beta, T *c,           \
                                  int64_t rsc)                                                               \
    {                                                                                                        \
        if (nt <= 1) {                                                                                       \
            packed_part_##SFX(g, 0, g->panels, m, n, k, alpha, a, rsa, csa, pk, beta, c, rsc);               \
            return;                                                                                          \
        }                                                                                                    \
        _Pragma("omp parallel for num_threads(nt) schedule(static)") for (int t = 0; t < nt; t++)            \
        {                                                                                                    \
            int64_t p0 = g->panels * t / nt, p1 = g->panels * (t + 1) / nt;                                  \
            if (p1 > p0) packed_part_##SFX(g, p0, p1, m, n, k, alpha, a, rsa, csa, pk, beta, c, rsc);        \
        }                                                                                                    \
    }

PACKED_GEMM(float, f32, sgemm_ukr_ft)
PACKED_GEMM(double, f64, dgemm_ukr_ft)

#ifdef CR_HAVE_UKR
/* Rows of A packed at a time by the own kernel's loops (a multiple of
 * CR_UKR_MR): a batch's rows in one go, A's block small beside B's panels. */
enum { OWN_MB = 192 };

/* C's columns [p0*NW, p1*NW) through carousel's kernel: per KC block of B's
 * rows (BLIS's blocks, so the same chains of FMAs), A's rows packed in
 * groups of CR_UKR_MR, then every panel of the pack by every group. */
static void own_part(const pack_geom *g, int64_t p0, int64_t p1, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t rsa, int64_t csa, const float *pk, float beta, float *c,
                     int64_t rsc)
{
    const ukr_info *u = &g->u;
    int64_t lo = p0 * CR_UKR_NW, hi = p1 * CR_UKR_NW < n ? p1 * CR_UKR_NW : n;
    int64_t mb_top = m < OWN_MB ? m : OWN_MB, kc_top = k < u->kc_max ? k : u->kc_max;
    float *sp = grow(&bufs.a, &bufs.a_bytes,
                     (size_t)((mb_top + CR_UKR_MR - 1) / CR_UKR_MR * CR_UKR_MR * kc_top) * sizeof(float));
    /* BLIS's edge tiles: C^T's last MR rows (C's columns) and last NR columns (C's rows) */
    int64_t i_edge = m - m % u->nr, j_edge = n - n % u->mr;
    bool ahead = (int64_t)(g->numel * sizeof(float)) >= cr_gemm_fetch_bytes;
    for (int64_t pc = 0, kc; pc < k; pc += kc) {
        kc = block(k - pc, u->kc, u->kc_max);
        const float *bp = pk + pack_at(g, pc, p0, kc);
        /* the panels read after this block's: these again for more rows, else the next block's */
        const float *after = !ahead ? NULL
                             : pc + kc < k
                                 ? pk + pack_at(g, pc + kc, p0, block(k - pc - kc, u->kc, u->kc_max))
                                 : bp;
        for (int64_t ic = 0; ic < m; ic += OWN_MB) {
            int64_t mb = m - ic < OWN_MB ? m - ic : OWN_MB;
            pack_a_f32(sp, a + ic * rsa + pc * csa, mb, kc, rsa, csa, CR_UKR_MR, CR_UKR_MR);
            cr_ukr_sgemm_block(mb, lo, hi, kc, alpha, sp, bp, after && ic + mb < m ? bp : after,
                               pc == 0 ? beta : 1.0f, i_edge - ic, j_edge, c + ic * rsc, rsc);
        }
    }
}

/* Columns of B packed at a time by own_plain: kc x OWN_NB floats (1.5 MB at
 * KC 384) stay in L2 and L3 while every block of A's rows runs over them. */
enum { OWN_NB = 1024 };
/* C at most OWN_NARROW columns wide is "narrow" for own_plain_part, which
 * then packs A OWN_MB_NARROW rows at a time (768 KB at KC 384). */
enum { OWN_NARROW = 128, OWN_MB_NARROW = 512 };

/* C[i_lo:i_hi, j_lo:j_hi] (row-stored; j_lo a multiple of CR_UKR_NW) on
 * carousel's kernel with B packed as it goes: per block of OWN_NB columns and
 * KC block of B's rows (BLIS's KC blocks, so the same chains of FMAs), B's
 * panels, then per OWN_MB rows A's groups. i_edge, j_edge: BLIS's edge tiles
 * in the whole of C. */
static void own_plain_part(const ukr_info *u, int64_t i_lo, int64_t i_hi, int64_t j_lo, int64_t j_hi,
                           int64_t k, float alpha, const float *a, int64_t rsa, int64_t csa, const float *b,
                           int64_t rsb, int64_t csb, float beta, float *c, int64_t rsc, int64_t i_edge,
                           int64_t j_edge)
{
    /* Narrow C (a weight gradient of the embedding, [4H, 64]): B's block is
     * small, so each group of A's rows runs over all its panels while in L1,
     * and A is packed in blocks of OWN_MB_NARROW rows, so that a transposed
     * A is read in long runs of its rows (192 of them read 768-byte pieces
     * of rows 8 KB apart, and lost to BLIS). */
    bool narrow = j_hi - j_lo <= OWN_NARROW;
    int64_t mb_max = narrow ? OWN_MB_NARROW : OWN_MB;
    int64_t kc_top = k < u->kc_max ? k : u->kc_max;
    int64_t nb_top = j_hi - j_lo < OWN_NB ? j_hi - j_lo : OWN_NB,
            mb_top = i_hi - i_lo < mb_max ? i_hi - i_lo : mb_max;
    float *bp = grow(&bufs.b, &bufs.b_bytes,
                     (size_t)((nb_top + CR_UKR_NW - 1) / CR_UKR_NW * CR_UKR_NW * kc_top) * sizeof(float));
    float *ap = grow(&bufs.a, &bufs.a_bytes,
                     (size_t)((mb_top + CR_UKR_MR - 1) / CR_UKR_MR * CR_UKR_MR * kc_top) * sizeof(float));
    for (int64_t jc = j_lo; jc < j_hi; jc += OWN_NB) {
        int64_t nb = j_hi - jc < OWN_NB ? j_hi - jc : OWN_NB;
        for (int64_t pc = 0, kc; pc < k; pc += kc) {
            kc = block(k - pc, u->kc, u->kc_max);
            float be = pc == 0 ? beta : 1.0f;
            pack_b_f32(bp, b + pc * rsb + jc * csb, kc, nb, rsb, csb, CR_UKR_NW, CR_UKR_NW);
            for (int64_t ic = i_lo; ic < i_hi; ic += mb_max) {
                int64_t mb = i_hi - ic < mb_max ? i_hi - ic : mb_max;
                pack_a_f32(ap, a + ic * rsa + pc * csa, mb, kc, rsa, csa, CR_UKR_MR, CR_UKR_MR);
                int64_t step = narrow ? CR_UKR_MR : mb; /* rows per call: the call runs panels outer */
                /* B's block (at most OWN_NB columns) is read from L2: nothing to fetch ahead */
                for (int64_t i0 = 0; i0 < mb; i0 += step)
                    cr_ukr_sgemm_block(mb - i0 < step ? mb - i0 : step, jc, jc + nb, kc, alpha, ap + i0 * kc,
                                       bp, NULL, be, i_edge - ic - i0, j_edge, c + (ic + i0) * rsc, rsc);
            }
        }
    }
}

/* C = alpha A B + beta C (C row-stored, k > 0, alpha != 0) on carousel's
 * kernel, B packed on the way; on nt threads split along C's longer side
 * (each thread packs all of the other operand), which changes no element's
 * arithmetic. */
static void own_plain(const ukr_info *u, int nt, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                      int64_t rsa, int64_t csa, const float *b, int64_t rsb, int64_t csb, float beta,
                      float *c, int64_t rsc)
{
    atomic_fetch_add_explicit(&own_plain_products, 1, memory_order_relaxed);
    /* BLIS's edge tiles: C^T's last MR rows (C's columns) and last NR columns (C's rows) */
    int64_t i_edge = m - m % u->nr, j_edge = n - n % u->mr;
    if (nt <= 1) {
        own_plain_part(u, 0, m, 0, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, i_edge, j_edge);
        return;
    }
    bool by_rows = m >= n;
    int64_t units = by_rows ? (m + CR_UKR_MR - 1) / CR_UKR_MR : (n + CR_UKR_NW - 1) / CR_UKR_NW;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
        if (u1 <= u0) continue;
        if (by_rows)
            own_plain_part(u, u0 * CR_UKR_MR, u1 * CR_UKR_MR < m ? u1 * CR_UKR_MR : m, 0, n, k, alpha, a, rsa,
                           csa, b, rsb, csb, beta, c, rsc, i_edge, j_edge);
        else
            own_plain_part(u, 0, m, u0 * CR_UKR_NW, u1 * CR_UKR_NW < n ? u1 * CR_UKR_NW : n, k, alpha, a, rsa,
                           csa, b, rsb, csb, beta, c, rsc, i_edge, j_edge);
    }
}

static void own_gemm(const pack_geom *g, int nt, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                     int64_t rsa, int64_t csa, const float *pk, float beta, float *c, int64_t rsc)
{
    atomic_fetch_add_explicit(&own_products, 1, memory_order_relaxed);
    if (nt <= 1) {
        own_part(g, 0, g->panels, m, n, k, alpha, a, rsa, csa, pk, beta, c, rsc);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int64_t p0 = g->panels * t / nt, p1 = g->panels * (t + 1) / nt;
        if (p1 > p0) own_part(g, p0, p1, m, n, k, alpha, a, rsa, csa, pk, beta, c, rsc);
    }
}
#endif

void cr_k_gemm(double alpha, const cr_tensor *a, const cr_tensor *b, double beta, cr_tensor *c)
{
    char s1[128], s2[128], s3[128];
    if (a->ndim != 2 || b->ndim != 2 || c->ndim != 2 || a->shape[1] != b->shape[0] ||
        c->shape[0] != a->shape[0] || c->shape[1] != b->shape[1])
        cr_error("cr_k_gemm: %s x %s -> %s do not fit", cr_shape_str(s1, sizeof s1, a->ndim, a->shape),
                 cr_shape_str(s2, sizeof s2, b->ndim, b->shape),
                 cr_shape_str(s3, sizeof s3, c->ndim, c->shape));
    if (a->dtype != b->dtype || a->dtype != c->dtype || a->dtype == CR_I32)
        cr_error("cr_k_gemm: dtypes %s, %s, %s (need one float dtype)", cr_dtype_name(a->dtype),
                 cr_dtype_name(b->dtype), cr_dtype_name(c->dtype));
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    if (m == 0 || n == 0) return;
    int64_t rsa = a->stride[0], csa = a->stride[1], rsb = b->stride[0], csb = b->stride[1];
    int64_t rsc = c->stride[0], csc = c->stride[1];
    int64_t work = work_of(m, n, k);
/* the f32 or the f64 kernel of a pair, on this call's operands */
#define BY_DTYPE(F32, F64)                                                                                   \
    do {                                                                                                     \
        if (a->dtype == CR_F32)                                                                              \
            F32(m, n, k, (float)alpha, a->data, rsa, csa, b->data, rsb, csb, (float)beta, c->data, rsc,      \
                csc);                                                                                        \
        else                                                                                                 \
            F64(m, n, k, alpha, a->data, rsa, csa, b->data, rsb, csb, beta, c->data, rsc, csc);              \
    } while (0)
    if (goes_small(work, n)) {
        BY_DTYPE(small_sgemm, small_dgemm);
        return;
    }
    fix_strides(m, k, &rsa, &csa);
    fix_strides(k, n, &rsb, &csb);
    fix_strides(m, n, &rsc, &csc);
    bool serial = !cr_parallel_ok() || work <= cr_gemm_parallel_threshold;
#ifdef CR_HAVE_UKR
    /* f32 C on carousel's kernel, where it has BLIS's arithmetic: stored by
     * rows, or by columns when wide and tall enough. A column-stored C is
     * C^T = B^T A^T stored by rows, every element the same products summed
     * in the same order (BLIS itself turns a product so for a kernel that
     * prefers the other storage). That pays for a transposed weight's
     * gradient like DyNet's LM head, dW^T = h^T dy, [256, 10000] (won 43-57
     * of 60 alternating calls against BLIS's kernel on the Xeon, 5-15%),
     * and not for narrower ones: [128, 1024] (C^T 128 columns wide, so
     * own_plain's narrow path) and the char LM head's [512, 65] (C^T 65
     * rows) lost 5-10%. So a column-stored C goes when C^T is not narrow
     * (m > OWN_NARROW) and has at least OWN_NB rows. */
    bool stored_by_rows = csc == 1, stored_by_cols = rsc == 1 && m > OWN_NARROW && n >= OWN_NB;
    if (a->dtype == CR_F32 && (stored_by_rows || stored_by_cols) && k > 0 && alpha != 0 &&
        !cr_gemm_blis_only) {
        ukr_info u = ukr_query(BLIS_FLOAT);
        if (own_possible(&u)) {
            int nt = serial ? 1 : cr_get_num_threads();
            if (stored_by_rows)
                own_plain(&u, nt, m, n, k, (float)alpha, a->data, rsa, csa, b->data, rsb, csb, (float)beta,
                          c->data, rsc);
            else
                own_plain(&u, nt, n, m, k, (float)alpha, b->data, csb, rsb, a->data, csa, rsa, (float)beta,
                          c->data, csc);
            return;
        }
    }
#endif
    if (serial) {
        BY_DTYPE(serial_gemm_f32, serial_gemm_f64);
        return;
    }
#undef BY_DTYPE
    /* Threads: BLIS splits the rows and columns of C, never the inner
     * dimension, so each element's arithmetic is the one above. A local
     * runtime object carries the thread count (BLIS's own is global). BLIS's
     * "sup" path for small and skinny products (in its zen3 kernels, which
     * Zen 3 CPUs run, and Zen 4 ones when BLIS_ARCH_TYPE is set to their
     * number; skx's have none) blocks k and sums otherwise: it is turned
     * off, so that the thread count never changes a bit. */
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(cr_get_num_threads(), &rntm);
    bli_rntm_disable_l3_sup(&rntm);
    if (a->dtype == CR_F32) {
        float al = (float)alpha, be = (float)beta;
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &al, a->data, rsa, csa, b->data, rsb, csb,
                     &be, c->data, rsc, csc, NULL, &rntm);
    } else {
        bli_dgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &alpha, a->data, rsa, csa, b->data, rsb,
                     csb, &beta, c->data, rsc, csc, NULL, &rntm);
    }
}

void cr_k_gemm_packed(double alpha, const cr_tensor *a, const cr_tensor *b, const cr_tensor *pack,
                      double beta, cr_tensor *c)
{
    pack_geom g;
    int64_t m = a->ndim == 2 ? a->shape[0] : 0, k = b->shape[0], n = b->ndim == 2 ? b->shape[1] : 0;
    /* the operands fit, C is row-stored and the pack is one of B */
    bool fits = pack && a->ndim == 2 && b->ndim == 2 && c->ndim == 2 && a->shape[1] == k &&
                c->shape[0] == m && c->shape[1] == n && a->dtype == b->dtype && c->dtype == b->dtype &&
                pack->dtype == b->dtype && m > 0 && n > 0 && c->stride[1] == 1 &&
                pack_geom_read(pack, b->dtype, k, n, &g);
    int64_t work = work_of(m, n, k);
    bool small = goes_small(work, n); /* cr_k_gemm's C kernel */
#ifdef CR_HAVE_UKR
    /* A small product cr_k_gemm gives to the C kernel (small_sgemm) where that
     * runs along B's rows (not its dot products: B a transposed matrix, A's
     * rows contiguous), computed on an own pack of one KC block by carousel's
     * AVX-512 kernel with the C kernel's arithmetic (cr_ukr_small): the same
     * bits, the chains in registers and sixteen lanes wide. The recurrent
     * products at hidden 32, batch 1 (h [1,32] x W^T [32,128] and dh = dz
     * [1,128] x W [128,32]) are such products, 128 per sequence of 64 steps. */
    if (fits && small && g.own && k <= g.u.kc_max &&
        !small_by_dots(a->stride[1], b->stride[0], b->stride[1])) {
        cr_ukr_small(m, n, k, (float)alpha, a->data, a->stride[0], a->stride[1], pack_panels(pack),
                     (float)beta, c->data, c->stride[0]);
        atomic_fetch_add_explicit(&own_small_products, 1, memory_order_relaxed);
        return;
    }
#endif
    /* Where cr_k_gemm would not pack B (other small products, C not
     * row-stored, a pack of another size), it is cr_k_gemm. */
    if (!fits || small || n < 2 || (m > 1 && c->stride[0] == 1) || alpha == 0) {
        cr_k_gemm(alpha, a, b, beta, c);
        return;
    }
    int64_t rsa = a->stride[0], csa = a->stride[1], rsc = c->stride[0], csc = 1;
    fix_strides(m, k, &rsa, &csa);
    fix_strides(m, n, &rsc, &csc);
    int nt = cr_parallel_ok() && work > cr_gemm_parallel_threshold ? cr_get_num_threads() : 1;
#ifdef CR_HAVE_UKR
    if (g.own) {
        own_gemm(&g, nt, m, n, k, (float)alpha, a->data, rsa, csa, pack_panels(pack), (float)beta, c->data,
                 rsc);
        return;
    }
#endif
    if (a->dtype == CR_F32)
        packed_gemm_f32(&g, nt, m, n, k, (float)alpha, a->data, rsa, csa, pack_panels(pack), (float)beta,
                        c->data, rsc);
    else
        packed_gemm_f64(&g, nt, m, n, k, alpha, a->data, rsa, csa, pack_panels(pack), beta, c->data, rsc);
}
