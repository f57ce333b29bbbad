/* Tensor headers: dtypes, checked shapes and sizes, creation (persistent on
 * the heap, per-step in the current arena), element access, fills, copies
 * (with their own strided loop: this file calls no kernel) and strided views. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "iter.h"
#include "transpose.h"
#include "tensor.h"

int64_t cr_parallel_threshold = 16384; /* measured crossover, bench/elementwise */

size_t cr_dtype_size(cr_dtype dt)
{
    switch (dt) {
    case CR_F32: return 4;
    case CR_F64: return 8;
    case CR_I32: return 4;
    }
    cr_error("cr_dtype_size: unknown dtype %d", (int)dt);
}

const char *cr_dtype_name(cr_dtype dt)
{
    switch (dt) {
    case CR_F32: return "f32";
    case CR_F64: return "f64";
    case CR_I32: return "i32";
    }
    return "?";
}

int64_t cr_numel(const cr_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

bool cr_is_contiguous(const cr_tensor *t)
{
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expect) return false;
        expect *= t->shape[d];
    }
    return true;
}

bool cr_same_shape(const cr_tensor *a, const cr_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

bool cr_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout, int64_t *out)
{
    /* built in a local first: out may be a or b (cr_k_accumulate folds three
     * shapes in place), and writing out[i] early would clobber a[i - (n - na)] */
    int n = na > nb ? na : nb;
    int64_t res[CR_MAX_DIMS];
    if (n > CR_MAX_DIMS) return false;
    for (int i = 0; i < n; i++) {
        int64_t da = i < n - na ? 1 : a[i - (n - na)];
        int64_t db = i < n - nb ? 1 : b[i - (n - nb)];
        if (da != db && da != 1 && db != 1) return false;
        res[i] = da == 1 ? db : da;
    }
    for (int i = 0; i < n; i++) out[i] = res[i];
    *nout = n;
    return true;
}

/* ---- checked sizes ------------------------------------------------------- */

bool cr_mul_ok(int64_t a, int64_t b, int64_t *out)
{
#if defined(__GNUC__)
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) return false;
    *out = r;
    return true;
#else
    if (a != 0 && b != 0 && (a > INT64_MAX / b || a < INT64_MIN / b))
        return false; /* callers pass sizes >= 0 */
    *out = a * b;
    return true;
#endif
}

bool cr_add_ok(int64_t a, int64_t b, int64_t *out)
{
    if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b)) return false;
    *out = a + b;
    return true;
}

int64_t cr_shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1, nonzero = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] != 0 && !cr_mul_ok(nonzero, shape[d], &nonzero)) return -1;
        n = shape[d] == 0 ? 0 : n;
    }
    return n ? nonzero : 0;
}

bool cr_shape_fits(cr_dtype dt, int ndim, const int64_t *shape, int64_t *numel)
{
    if (ndim < 0 || ndim > CR_MAX_DIMS) return false;
    int64_t nonzero = 1, bytes;
    bool empty = false;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return false;
        if (shape[d] == 0)
            empty = true;
        else if (!cr_mul_ok(nonzero, shape[d], &nonzero))
            return false;
    }
    if (!cr_mul_ok(nonzero, (int64_t)cr_dtype_size(dt), &bytes) || (uint64_t)bytes > PTRDIFF_MAX)
        return false;
    *numel = empty ? 0 : nonzero;
    return true;
}

/* A shape `fn` can allocate in dtype dt (cr_shape_fits), or an error saying
 * why not. Returns the element count. */
static int64_t check_shape(const char *fn, cr_dtype dt, int ndim, const int64_t *shape)
{
    char s[128];
    if (ndim < 0 || ndim > CR_MAX_DIMS)
        cr_error("%s: %d dims, at most %d are supported", fn, ndim, CR_MAX_DIMS);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0)
            cr_error("%s: negative size in shape %s", fn, cr_shape_str(s, sizeof s, ndim, shape));
    int64_t numel;
    if (!cr_shape_fits(dt, ndim, shape, &numel))
        cr_error("%s: shape %s of %s holds more elements than memory can address", fn,
                 cr_shape_str(s, sizeof s, ndim, shape), cr_dtype_name(dt));
    return numel;
}

static void set_contiguous(cr_tensor *t, cr_dtype dt, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->ndim = ndim;
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t->shape[d] = shape[d];
        t->stride[d] = s;
        s *= shape[d];
    }
    t->version = &t->version_store;
}

void cr_tensor_bump_version(cr_tensor *t)
{
    if (t->version && *t->version != CR_VERSION_RELEASED) ++*t->version;
}

bool cr_tensor_released(const cr_tensor *t) { return t->version && *t->version == CR_VERSION_RELEASED; }

/* Element access and fills refuse a storage given back to its graph's pool:
 * its memory may already hold another tensor. */
static void check_live(const char *fn, const cr_tensor *t)
{
    if (!cr_tensor_released(t)) return;
    char s[128];
    cr_error("%s: tensor %s %s was released (its graph gave its memory back at a cr_scope_end or after a "
             "recomputed segment); keep it (cr_scope_end's keep list) to read it",
             fn, cr_dtype_name(t->dtype), cr_shape_str(s, sizeof s, t->ndim, t->shape));
}

uint64_t cr_tensor_version(const cr_tensor *t) { return t->version ? *t->version : 0; }

cr_tensor *cr_tensor_init(cr_dtype dt, int ndim, const int64_t *shape)
{
    int64_t n = check_shape("cr_tensor_init", dt, ndim, shape);
    cr_tensor *t = cr_xmalloc(sizeof *t);
    set_contiguous(t, dt, ndim, shape);
    t->owned = cr_xcalloc((size_t)n, cr_dtype_size(dt));
    t->data = t->owned;
    t->persistent = true;
    return t;
}

void cr_tensor_free(cr_tensor *t)
{
    if (!t) return;
    if (!t->persistent) { /* free() on arena memory would corrupt the heap far from here */
        char s[128];
        cr_error("cr_tensor_free: tensor %s is not persistent (it belongs to a graph's arena or is a view)",
                 cr_shape_str(s, sizeof s, t->ndim, t->shape));
    }
    if (t->grad && t->grad->persistent) cr_tensor_free(t->grad);
    free(t->rows);
    free(t->owned);
    free(t);
}

cr_tensor *cr_tensor_new_as(const char *fn, cr_dtype dt, int ndim, const int64_t *shape)
{
    int64_t n = check_shape(fn, dt, ndim, shape);
    cr_arena *a = cr_arena_current();
    if (!a) cr_error("%s: no current graph; call cr_graph_use(cr_graph_init()) first", fn);
    cr_tensor *t = cr_arena_alloc_aligned(a, sizeof *t, 16);
    set_contiguous(t, dt, ndim, shape);
    t->data = cr_arena_alloc(a, (size_t)n * cr_dtype_size(dt));
    t->gen = cr_arena_generation(a);
    return t;
}

cr_tensor *cr_tensor_header_new_as(const char *fn, cr_dtype dt, int ndim, const int64_t *shape)
{
    check_shape(fn, dt, ndim, shape);
    cr_arena *a = cr_arena_current();
    if (!a) cr_error("%s: no current graph; call cr_graph_use(cr_graph_init()) first", fn);
    cr_tensor *t = cr_arena_alloc_aligned(a, sizeof *t, 16);
    set_contiguous(t, dt, ndim, shape);
    t->gen = cr_arena_generation(a);
    return t;
}

void cr_tensor_set_contiguous(cr_tensor *t, cr_dtype dt, int ndim, const int64_t *shape)
{
    set_contiguous(t, dt, ndim, shape);
}

cr_tensor *cr_tensor_new(cr_dtype dt, int ndim, const int64_t *shape)
{
    return cr_tensor_new_as("cr_tensor_new", dt, ndim, shape);
}

cr_tensor *cr_zeros(cr_dtype dt, int ndim, const int64_t *shape)
{
    cr_tensor *t = cr_tensor_new_as("cr_zeros", dt, ndim, shape);
    memset(t->data, 0, (size_t)cr_numel(t) * cr_dtype_size(dt));
    return t;
}

static cr_tensor *full_as(const char *fn, cr_dtype dt, int ndim, const int64_t *shape, double value)
{
    cr_tensor *t = cr_tensor_new_as(fn, dt, ndim, shape);
    cr_fill(t, value);
    return t;
}

cr_tensor *cr_full(cr_dtype dt, int ndim, const int64_t *shape, double value)
{
    return full_as("cr_full", dt, ndim, shape, value);
}

cr_tensor *cr_ones(cr_dtype dt, int ndim, const int64_t *shape)
{
    return full_as("cr_ones", dt, ndim, shape, 1.0);
}

cr_tensor *cr_scalar(cr_dtype dt, double value) { return full_as("cr_scalar", dt, 0, NULL, value); }

cr_tensor *cr_arange(cr_dtype dt, double start, double stop, double step)
{
    if (step == 0 || !isfinite(start) || !isfinite(stop) || !isfinite(step))
        cr_error("cr_arange: start %g, stop %g, step %g do not define a range", start, stop, step);
    /* (stop - start) may overflow to inf; the count is checked as a double
     * before it becomes an integer (a double beyond int64 does not convert) */
    double count = ceil((stop - start) / step);
    if (!(count <= 0x1p62))
        cr_error("cr_arange: start %g, stop %g, step %g give %g elements, more than memory can address",
                 start, stop, step, count);
    int64_t n = count > 0 ? (int64_t)count : 0;
    cr_tensor *t = cr_tensor_new_as("cr_arange", dt, 1, &n);
    for (int64_t i = 0; i < n; i++) cr_set_flat(t, i, start + (double)i * step);
    return t;
}

cr_tensor *cr_from_array(cr_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    cr_tensor *t = cr_tensor_new_as("cr_from_array", dt, ndim, shape);
    size_t bytes = (size_t)cr_numel(t) * cr_dtype_size(dt);
    if (bytes && !data) {
        char s[128];
        cr_error("cr_from_array: data is NULL for shape %s", cr_shape_str(s, sizeof s, ndim, shape));
    }
    if (bytes) memcpy(t->data, data, bytes); /* data may be NULL when empty */
    return t;
}

cr_tensor *cr_tensor_alias(const cr_tensor *t)
{
    cr_arena *a = cr_arena_current();
    if (!a) cr_error("cr_tensor_alias: no current graph");
    cr_tensor *v = cr_arena_alloc_aligned(a, sizeof *v, 16);
    *v = *t;
    v->gen = cr_arena_generation(a); /* the header is the arena's, whatever the storage */
    v->owned = NULL;
    v->persistent = false;
    v->requires_grad = false;
    v->retain_grad = false;
    v->grad = NULL;
    v->node = NULL;
    v->name = NULL;
    v->rows = NULL;
    return v;
}

/* ---- element access ---------------------------------------------------- */

static int64_t offset_of(const cr_tensor *t, const int64_t *index)
{
    int64_t off = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (index[d] < 0 || index[d] >= t->shape[d]) {
            char s[128];
            cr_error("cr_get/cr_set: index %lld out of range for dim %d of shape %s", (long long)index[d], d,
                     cr_shape_str(s, sizeof s, t->ndim, t->shape));
        }
        off += index[d] * t->stride[d];
    }
    return off;
}

static int64_t flat_offset(const cr_tensor *t, int64_t i)
{
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t n = t->shape[d];
        off += (i % n) * t->stride[d];
        i /= n;
    }
    return off;
}

static double load(const cr_tensor *t, int64_t off)
{
    switch (t->dtype) {
    case CR_F32: return ((const float *)t->data)[off];
    case CR_F64: return ((const double *)t->data)[off];
    case CR_I32: return ((const int32_t *)t->data)[off];
    }
    return 0;
}

static void store(cr_tensor *t, int64_t off, double v)
{
    switch (t->dtype) {
    case CR_F32: ((float *)t->data)[off] = (float)v; break;
    case CR_F64: ((double *)t->data)[off] = v; break;
    case CR_I32: ((int32_t *)t->data)[off] = (int32_t)v; break;
    }
}

double cr_get(const cr_tensor *t, const int64_t *index)
{
    check_live("cr_get", t);
    return load(t, offset_of(t, index));
}
void cr_set(cr_tensor *t, const int64_t *index, double v)
{
    check_live("cr_set", t);
    store(t, offset_of(t, index), v);
    cr_tensor_bump_version(t);
}

double cr_get_flat(const cr_tensor *t, int64_t i)
{
    check_live("cr_get_flat", t);
    if (i < 0 || i >= cr_numel(t))
        cr_error("cr_get_flat: index %lld out of range for %lld elements", (long long)i,
                 (long long)cr_numel(t));
    return load(t, flat_offset(t, i));
}

void cr_set_flat(cr_tensor *t, int64_t i, double v)
{
    check_live("cr_set_flat", t);
    if (i < 0 || i >= cr_numel(t))
        cr_error("cr_set_flat: index %lld out of range for %lld elements", (long long)i,
                 (long long)cr_numel(t));
    store(t, flat_offset(t, i), v);
    cr_tensor_bump_version(t);
}

double cr_item(const cr_tensor *t)
{
    check_live("cr_item", t);
    if (cr_numel(t) != 1) {
        char s[128];
        cr_error("cr_item: tensor of shape %s has %lld elements, not 1",
                 cr_shape_str(s, sizeof s, t->ndim, t->shape), (long long)cr_numel(t));
    }
    return load(t, 0);
}

void cr_fill(cr_tensor *t, double value)
{
    check_live("cr_fill", t);
    int64_t n = cr_numel(t);
    cr_tensor_bump_version(t);
    if (cr_is_contiguous(t)) {
        switch (t->dtype) {
        case CR_F32:
            for (int64_t i = 0; i < n; i++) ((float *)t->data)[i] = (float)value;
            return;
        case CR_F64:
            for (int64_t i = 0; i < n; i++) ((double *)t->data)[i] = value;
            return;
        case CR_I32:
            for (int64_t i = 0; i < n; i++) ((int32_t *)t->data)[i] = (int32_t)value;
            return;
        }
    }
    for (int64_t i = 0; i < n; i++) store(t, flat_offset(t, i), value);
}

/* dst = src where dst's rows are contiguous and src's columns are (a matrix
 * and its transpose: cr_contiguous of a transposed view, cr_weight_t's W^T
 * when nothing is recorded), f32 or f64:
 * row by row every read of src would touch a new cache line (at 4096 x 1024
 * the copy ran at 1.3 GB/s); transpose.c copies by tiles in registers, the
 * threads taking blocks of dst's rows. False when the layout is not this one. */
static bool transposed_copy(cr_tensor *dst, const cr_tensor *src)
{
    if (dst->ndim != 2 || dst->dtype == CR_I32 || dst->stride[1] != 1 || src->stride[0] != 1 ||
        src->stride[1] == 1)
        return false;
    int64_t R = dst->shape[0], Q = dst->shape[1], ds = dst->stride[0], ss = src->stride[1];
    if (R < 8 || Q < 8) return false;
    enum { ROWS = 16 }; /* dst rows per unit: 16 measured faster than 8 and 32 (L1 sets) */
    int64_t units = (R + ROWS - 1) / ROWS;
    bool f32 = dst->dtype == CR_F32;
    CR_PAR_FOR(
        R * Q > cr_parallel_threshold, "omp parallel for schedule(static)",
        for (int64_t u = 0; u < units; u++) {
            int64_t r0 = u * ROWS, n = R - r0 < ROWS ? R - r0 : ROWS;
            if (f32)
                cr_transpose_f32((float *)dst->data + r0 * ds, ds, (const float *)src->data + r0, ss, Q, n);
            else
                cr_transpose_f64((double *)dst->data + r0 * ds, ds, (const double *)src->data + r0, ss, Q, n);
        });
    return true;
}

/* dst = src for two operands of one shape, any strides: rows of the merged
 * iteration, a flat inner loop where both rows are contiguous. */
#define COPY_ROWS(TD, TS)                                                                                    \
    do {                                                                                                     \
        TD *d0 = dst->data;                                                                                  \
        const TS *s0 = src->data;                                                                            \
        int64_t sd = it.stride[0][it.ndim - 1], ss = it.stride[1][it.ndim - 1];                              \
        CR_PAR_FOR(                                                                                          \
            n > cr_parallel_threshold, "omp parallel for schedule(static)",                                  \
            for (int64_t r = 0; r < it.outer; r++) {                                                         \
                int64_t off[2];                                                                              \
                cr_iter_row(&it, r, off);                                                                    \
                TD *d = d0 + off[0];                                                                         \
                const TS *q = s0 + off[1];                                                                   \
                if (sd == 1 && ss == 1)                                                                      \
                    for (int64_t i = 0; i < it.inner; i++) d[i] = (TD)q[i];                                  \
                else                                                                                         \
                    for (int64_t i = 0; i < it.inner; i++) d[i * sd] = (TD)q[i * ss];                        \
            });                                                                                              \
    } while (0)

void cr_copy_(cr_tensor *dst, const cr_tensor *src)
{
    check_live("cr_copy_", dst);
    check_live("cr_copy_", src);
    if (!cr_same_shape(dst, src)) {
        char a[128], b[128];
        cr_error("cr_copy_: destination %s and source %s differ in shape",
                 cr_shape_str(a, sizeof a, dst->ndim, dst->shape),
                 cr_shape_str(b, sizeof b, src->ndim, src->shape));
    }
    int64_t n = cr_numel(src);
    cr_tensor_bump_version(dst);
    if (n == 0) return;
    if (dst->dtype == src->dtype && cr_is_contiguous(dst) && cr_is_contiguous(src)) {
        memmove(dst->data, src->data, (size_t)n * cr_dtype_size(src->dtype));
        return;
    }
    if (dst->dtype == src->dtype && transposed_copy(dst, src)) return;
    const cr_tensor *ops[2] = {dst, src};
    cr_iter it;
    cr_iter_init(&it, dst->ndim, dst->shape, 2, ops);
    /* same dtype: copy bits; otherwise convert as C does (i32 <- float truncates) */
    if (dst->dtype == src->dtype && cr_dtype_size(src->dtype) == 4)
        COPY_ROWS(uint32_t, uint32_t);
    else if (dst->dtype == src->dtype)
        COPY_ROWS(uint64_t, uint64_t);
    else if (dst->dtype == CR_F32 && src->dtype == CR_F64)
        COPY_ROWS(float, double);
    else if (dst->dtype == CR_F32)
        COPY_ROWS(float, int32_t);
    else if (dst->dtype == CR_F64 && src->dtype == CR_F32)
        COPY_ROWS(double, float);
    else if (dst->dtype == CR_F64)
        COPY_ROWS(double, int32_t);
    else if (src->dtype == CR_F32)
        COPY_ROWS(int32_t, float);
    else
        COPY_ROWS(int32_t, double);
}
#undef COPY_ROWS

cr_tensor *cr_contiguous_copy(const cr_tensor *t)
{
    cr_tensor *c = cr_tensor_new(t->dtype, t->ndim, t->shape);
    cr_copy_(c, t);
    return c;
}

/* ---- views ------------------------------------------------------------- */

int cr_dim_norm(const char *op, int dim, int ndim)
{
    int d = dim < 0 ? dim + ndim : dim;
    if (d < 0 || d >= ndim) cr_error("%s: dim %d out of range for %d dims", op, dim, ndim);
    return d;
}

static void view_base(cr_tensor *dst, const cr_tensor *src)
{
    *dst = *src;
    dst->owned = NULL;
    dst->persistent = false;
    dst->requires_grad = false;
    dst->retain_grad = false;
    dst->grad = NULL;
    dst->node = NULL;
    dst->name = NULL;
    dst->rows = NULL;
}

void cr_view_reshape(cr_tensor *dst, const cr_tensor *src, int ndim, const int64_t *shape)
{
    char a[128], b[128];
    if (ndim < 0 || ndim > CR_MAX_DIMS) cr_error("cr_reshape: %d dims requested", ndim);
    int64_t known = 1, n = cr_numel(src);
    int infer = -1;
    int64_t sh[CR_MAX_DIMS];
    for (int d = 0; d < ndim; d++) {
        sh[d] = shape[d];
        if (shape[d] == -1) {
            if (infer >= 0)
                cr_error("cr_reshape: more than one -1 in %s", cr_shape_str(a, sizeof a, ndim, shape));
            infer = d;
        } else if (shape[d] < 0) {
            cr_error("cr_reshape: negative size in %s", cr_shape_str(a, sizeof a, ndim, shape));
        } else if (!cr_mul_ok(known, shape[d], &known)) {
            known = -1; /* overflows: cannot equal n */
            break;
        }
    }
    if (infer >= 0) sh[infer] = known > 0 ? n / known : 0;
    if (known < 0 || cr_shape_numel(ndim, sh) != n)
        cr_error("cr_reshape: %s (%lld elements) cannot become %s",
                 cr_shape_str(a, sizeof a, src->ndim, src->shape), (long long)n,
                 cr_shape_str(b, sizeof b, ndim, shape));
    if (!cr_is_contiguous(src))
        cr_error("cr_reshape: source %s is not contiguous; call cr_contiguous first",
                 cr_shape_str(a, sizeof a, src->ndim, src->shape));
    view_base(dst, src);
    dst->ndim = ndim;
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        dst->shape[d] = sh[d];
        dst->stride[d] = s;
        s *= sh[d]; /* cannot overflow: the nonzero dims' product fits (cr_shape_numel) */
    }
}

void cr_view_transpose(cr_tensor *dst, const cr_tensor *src, int d0, int d1)
{
    d0 = cr_dim_norm("cr_transpose", d0, src->ndim);
    d1 = cr_dim_norm("cr_transpose", d1, src->ndim);
    view_base(dst, src);
    dst->shape[d0] = src->shape[d1];
    dst->shape[d1] = src->shape[d0];
    dst->stride[d0] = src->stride[d1];
    dst->stride[d1] = src->stride[d0];
}

void cr_view_permute(cr_tensor *dst, const cr_tensor *src, const int *perm)
{
    bool seen[CR_MAX_DIMS] = {false};
    for (int d = 0; d < src->ndim; d++) {
        int p = perm[d];
        if (p < 0 || p >= src->ndim || seen[p])
            cr_error("cr_permute: perm is not a permutation of %d dims (entry %d is %d)", src->ndim, d, p);
        seen[p] = true;
    }
    view_base(dst, src);
    for (int d = 0; d < src->ndim; d++) {
        dst->shape[d] = src->shape[perm[d]];
        dst->stride[d] = src->stride[perm[d]];
    }
}

void cr_view_narrow(cr_tensor *dst, const cr_tensor *src, int dim, int64_t start, int64_t len)
{
    dim = cr_dim_norm("cr_narrow", dim, src->ndim);
    /* len > size - start rather than start + len > size, which can overflow */
    if (start < 0 || len < 0 || start > src->shape[dim] || len > src->shape[dim] - start) {
        char s[128];
        cr_error("cr_narrow: start %lld, length %lld out of range for dim %d of %s", (long long)start,
                 (long long)len, dim, cr_shape_str(s, sizeof s, src->ndim, src->shape));
    }
    view_base(dst, src);
    dst->shape[dim] = len;
    dst->data = (char *)src->data + start * src->stride[dim] * (int64_t)cr_dtype_size(src->dtype);
}

void cr_view_select(cr_tensor *dst, const cr_tensor *src, int dim, int64_t index)
{
    dim = cr_dim_norm("cr_select", dim, src->ndim);
    int64_t i = index < 0 ? index + src->shape[dim] : index;
    if (i < 0 || i >= src->shape[dim]) {
        char s[128];
        cr_error("cr_select: index %lld out of range for dim %d of %s", (long long)index, dim,
                 cr_shape_str(s, sizeof s, src->ndim, src->shape));
    }
    view_base(dst, src);
    dst->data = (char *)src->data + i * src->stride[dim] * (int64_t)cr_dtype_size(src->dtype);
    for (int d = dim; d < src->ndim - 1; d++) {
        dst->shape[d] = src->shape[d + 1];
        dst->stride[d] = src->stride[d + 1];
    }
    dst->ndim = src->ndim - 1;
}

void cr_view_expand(cr_tensor *dst, const cr_tensor *src, int ndim, const int64_t *shape)
{
    char a[128], b[128];
    if (ndim < src->ndim || ndim > CR_MAX_DIMS)
        cr_error("cr_expand: cannot expand %s to %s", cr_shape_str(a, sizeof a, src->ndim, src->shape),
                 cr_shape_str(b, sizeof b, ndim, shape));
    int off = ndim - src->ndim;
    for (int d = 0; d < ndim; d++) {
        int64_t s = d < off ? 1 : src->shape[d - off];
        if ((s != shape[d] && s != 1) || shape[d] < 0)
            cr_error("cr_expand: cannot expand %s to %s", cr_shape_str(a, sizeof a, src->ndim, src->shape),
                     cr_shape_str(b, sizeof b, ndim, shape));
    }
    /* stride 0 costs no memory, but the element count must stay countable */
    if (cr_shape_numel(ndim, shape) < 0)
        cr_error("cr_expand: %s expanded to %s has more than 2^63 elements",
                 cr_shape_str(a, sizeof a, src->ndim, src->shape), cr_shape_str(b, sizeof b, ndim, shape));
    int64_t st[CR_MAX_DIMS];
    for (int d = 0; d < ndim; d++) { /* read src before writing dst: they may be one header */
        int64_t s = d < off ? 1 : src->shape[d - off];
        st[d] = d < off || s != shape[d] ? 0 : src->stride[d - off];
    }
    view_base(dst, src);
    dst->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        dst->shape[d] = shape[d];
        dst->stride[d] = st[d];
    }
}

void cr_view_unsqueeze(cr_tensor *dst, const cr_tensor *src, int dim)
{
    if (src->ndim >= CR_MAX_DIMS) {
        char s[128];
        cr_error("cr_unsqueeze: %s already has %d dims, the most supported",
                 cr_shape_str(s, sizeof s, src->ndim, src->shape), CR_MAX_DIMS);
    }
    dim = cr_dim_norm("cr_unsqueeze", dim, src->ndim + 1);
    /* the new dim's stride is what a contiguous layout would give it (as in
     * PyTorch); being of size 1, it is never stepped along */
    int64_t stride = dim < src->ndim ? src->shape[dim] * src->stride[dim] : 1;
    view_base(dst, src);
    for (int d = src->ndim; d > dim; d--) {
        dst->shape[d] = dst->shape[d - 1];
        dst->stride[d] = dst->stride[d - 1];
    }
    dst->shape[dim] = 1;
    dst->stride[dim] = stride;
    dst->ndim = src->ndim + 1;
}
