/* Counter-based random numbers (Philox4x32-10, Salmon et al. 2011): element i
 * of a fill draws from counter offset+i, so a fill gives the same values on
 * any number of threads and in any order. */
#include <math.h>

#include "iter.h"
#include "tensor.h"

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void cr_philox(uint64_t seed, uint64_t counter, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(0xD2511F53u, c0, &hi0, &lo0);
        mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

cr_rng cr_rng_seed(uint64_t seed) { return (cr_rng){.seed = seed, .offset = 0}; }

/* 53 random bits -> [0, 1) */
static inline double u01(uint32_t a, uint32_t b)
{
    uint64_t x = ((uint64_t)a << 21) ^ (uint64_t)(b >> 11);
    return (double)(x & ((UINT64_C(1) << 53) - 1)) * 0x1.0p-53;
}

static inline double draw_uniform(uint64_t seed, uint64_t ctr)
{
    uint32_t w[4];
    cr_philox(seed, ctr, w);
    return u01(w[0], w[1]);
}

static inline double draw_normal(uint64_t seed, uint64_t ctr)
{
    uint32_t w[4];
    cr_philox(seed, ctr, w);
    double u1 = 1.0 - u01(w[0], w[1]); /* (0, 1]: log is finite */
    double u2 = u01(w[2], w[3]);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2) /* 2 pi */;
}

double cr_rng_uniform01(cr_rng *r) { return draw_uniform(r->seed, r->offset++); }
double cr_rng_normal(cr_rng *r) { return draw_normal(r->seed, r->offset++); }

typedef enum { FILL_UNIFORM, FILL_NORMAL, FILL_DROPOUT } fill_kind;

/* Element value at counter ctr: uniform in [a, b), normal N(a, b^2), or a
 * dropout keep-mask value (0 with probability a, else b). */
static inline double fill_value(fill_kind kind, uint64_t seed, uint64_t ctr, double a, double b)
{
    if (kind == FILL_NORMAL) return a + b * draw_normal(seed, ctr);
    double u = draw_uniform(seed, ctr);
    return kind == FILL_UNIFORM ? a + (b - a) * u : (u < a ? 0.0 : b);
}

static void fill(cr_tensor *t, cr_rng *r, fill_kind kind, double a, double b, const char *op)
{
    if (t->dtype == CR_I32) cr_error("%s: needs a float tensor, got i32", op);
    int64_t n = cr_numel(t);
    uint64_t seed = r->seed, base = r->offset;
    bool contig = cr_is_contiguous(t);
    r->offset += (uint64_t)n;
    cr_tensor_bump_version(t);
    if (!contig) {
        for (int64_t i = 0; i < n; i++) {
            cr_set_flat(t, i, fill_value(kind, seed, base + (uint64_t)i, a, b));
        }
        return;
    }
    /* a Philox block costs ~100 cycles: worth threads from a few thousand up */
    CR_PAR_FOR(
        n > 4096, "omp parallel for schedule(static)", for (int64_t i = 0; i < n; i++) {
            double v = fill_value(kind, seed, base + (uint64_t)i, a, b);
            if (t->dtype == CR_F32)
                ((float *)t->data)[i] = (float)v;
            else
                ((double *)t->data)[i] = v;
        });
}

void cr_fill_uniform(cr_tensor *t, cr_rng *r, double lo, double hi)
{
    fill(t, r, FILL_UNIFORM, lo, hi, "cr_fill_uniform");
}

void cr_fill_normal(cr_tensor *t, cr_rng *r, double mean, double std)
{
    fill(t, r, FILL_NORMAL, mean, std, "cr_fill_normal");
}

/* A replica's shard stream, which replaces the generator callers pass (cr_rng_use_dropout_stream). */
static _Thread_local cr_rng *dropout_stream;

cr_rng *cr_rng_use_dropout_stream(cr_rng *r)
{
    cr_rng *old = dropout_stream;
    dropout_stream = r;
    return old;
}

void cr_fill_dropout_mask(cr_tensor *t, cr_rng *r, double p)
{
    if (!(p >= 0 && p < 1)) cr_error("cr_fill_dropout_mask: p = %g is not in [0, 1)", p);
    fill(t, dropout_stream ? dropout_stream : r, FILL_DROPOUT, p, 1.0 / (1.0 - p), "cr_fill_dropout_mask");
}
