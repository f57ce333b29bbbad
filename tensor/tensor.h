/*
 * carousel tensor module: dtypes, shapes, strided storage, views, arenas, the
 * counter-based RNG and the compute kernels (BLIS matmul, OpenMP elementwise).
 *
 * This module knows nothing of graphs. A tensor carries fields that the
 * autograd module fills (`requires_grad`, `retain_grad`, `grad`, `node`);
 * tensor code never reads them. Autograd reads two of this module's: `gen`
 * (the arena generation that made a header) and `version` (in-place writes).
 *
 * Lifetimes (see ARCHITECTURE.md):
 *   cr_tensor_init(...) / cr_tensor_free(t)  persistent, heap, owned by the caller
 *   cr_tensor_new(...), cr_zeros(...), ...   per-step, bump-allocated from the
 *                                            thread's current arena (a graph's)
 *
 * Glossary used in shape comments: B batch, T time steps, I input features,
 * H hidden units, V vocabulary, G gates (4H for LSTM, 3H for GRU).
 */
#ifndef CAROUSEL_TENSOR_H
#define CAROUSEL_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "unary_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CR_MAX_DIMS 8

typedef enum cr_dtype { CR_F32 = 0, CR_F64 = 1, CR_I32 = 2 } cr_dtype;

struct cr_node;

typedef struct cr_tensor {
    cr_dtype dtype;
    int ndim;
    int64_t shape[CR_MAX_DIMS];
    int64_t stride[CR_MAX_DIMS]; /* in elements, may be 0 (expanded) */
    void *data;                  /* address of element [0, ..., 0] */
    void *owned;                 /* heap block to free, or NULL (arena/view) */
    /* In-place writes through the API (cr_fill, cr_copy_, cr_set, ...) bump the
     * storage's version; every view of one storage shares one counter, which
     * lives in the header that owns the storage. Writes through `data` are
     * not seen: call cr_tensor_bump_version after them. */
    uint64_t *version;
    uint64_t version_store;
    bool persistent; /* created by cr_tensor_init */
    /* autograd fields, owned by autograd/ */
    bool requires_grad;
    bool retain_grad;
    struct cr_tensor *grad;
    struct cr_node *node; /* producer on a tape, NULL for leaves */
    /* Generation of the arena that made this header (cr_arena_generation),
     * or 0 for headers outside any arena (persistent tensors, and views a
     * caller fills in its own header, which copy their source's). A header
     * whose generation is no longer its arena's belongs to a cleared step. */
    uint64_t gen;
    const char *name; /* optional label (parameters, graph export) */
    /* A persistent gradient's record of the rows that may be nonzero (kept by
     * autograd/graph.c for embedding tables; one heap block, freed with the
     * tensor), or NULL. Headers copied from it must not keep it. */
    struct cr_grad_rows *rows;
} cr_tensor;

/* ---- errors ------------------------------------------------------------ */

/* Misuse of the API (shapes, dtypes, dims, indices) calls the error handler
 * with a message naming the op and the shapes. The default handler prints it
 * to stderr and aborts. A handler must not return (it may longjmp or exit);
 * if it does, carousel aborts. */
typedef void (*cr_error_handler)(const char *message);
cr_error_handler cr_set_error_handler(cr_error_handler h); /* returns the old one */
/* GCC and clang check the format string against the arguments. */
#if defined(__GNUC__)
#define CR_PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define CR_PRINTF_LIKE(f, a)
#endif
_Noreturn void cr_error(const char *fmt, ...) CR_PRINTF_LIKE(1, 2);
/* Format a shape as "[2,3,4]" into buf; returns buf. */
char *cr_shape_str(char *buf, size_t len, int ndim, const int64_t *shape);

/* Sizes: false when a * b (or a + b) overflows; *out is left alone then. */
bool cr_mul_ok(int64_t a, int64_t b, int64_t *out);
bool cr_add_ok(int64_t a, int64_t b, int64_t *out);
/* Elements of a shape (dims >= 0), or -1 when the product overflows int64.
 * Zero dims count as 1 in the overflow test, so a valid shape's strides fit
 * too. */
int64_t cr_shape_numel(int ndim, const int64_t *shape);
/* Whether cr_tensor_init accepts `shape` in dtype dt: 0 to CR_MAX_DIMS dims,
 * none negative, and the product of the nonzero dims times the element size
 * at most PTRDIFF_MAX (so an empty shape's strides fit too). Readers of
 * files check a shape with it before making a tensor of it. The element
 * count into *numel when it does. */
bool cr_shape_fits(cr_dtype dt, int ndim, const int64_t *shape, int64_t *numel);

/* ---- status: failures that come from the outside world ------------------ */

/* What a call that depends on the outside world (files, parsing, data, numbers
 * a model produced) returns instead of aborting; misuse of the API still goes
 * to cr_error. A failing call also leaves a one-line message, readable with
 * cr_last_error() until the same thread's next failure. */
typedef enum cr_status {
    CR_OK = 0,
    CR_NONFINITE, /* a gradient norm (or value) was NaN or infinite */
    CR_EIO,       /* the file could not be opened, read or written */
    CR_EFORMAT,   /* the file is not what it claims to be (corrupt, truncated, lying) */
    CR_EMISMATCH, /* the file is valid but does not fit the model / optimizer */
    CR_ENOMEM,    /* out of memory while handling outside data */
    CR_EINVAL     /* outside data (text, ids) that the call cannot take */
} cr_status;
const char *cr_status_str(cr_status s); /* "ok", "non-finite value", "i/o error", ... */
/* The message of this thread's last failure ("" before any). Thread-local:
 * concurrent calls on other threads do not overwrite it. */
const char *cr_last_error(void);
/* Set this thread's last-error message (printf-style) and return st: the one
 * way a function reports an outside-world failure, `return cr_failure(CR_EIO, ...)`.
 * (Not cr_fail: Criterion, the test framework, defines a macro of that name.) */
cr_status cr_failure(cr_status st, const char *fmt, ...) CR_PRINTF_LIKE(2, 3);

/* Checked allocation: never returns NULL (reports through cr_error). */
void *cr_xmalloc(size_t bytes);
void *cr_xcalloc(size_t n, size_t bytes);
void *cr_xrealloc(void *p, size_t bytes);

/* ---- arenas ------------------------------------------------------------ */

/* A bump allocator that grows by chunks and rewinds at once. Reset keeps the
 * chunks, so steady-state use makes no malloc call. Every init and reset takes
 * a new generation, unique in the process, which tensors made in the arena
 * record (cr_tensor.gen): a header from before a reset is recognisably stale. */
typedef struct cr_arena cr_arena;
cr_arena *cr_arena_init(size_t chunk_bytes);
void cr_arena_free(cr_arena *a);
void *cr_arena_alloc(cr_arena *a, size_t bytes); /* 64-byte aligned */
/* align: a power of two from 16 to 64 (headers and nodes need only 16) */
void *cr_arena_alloc_aligned(cr_arena *a, size_t bytes, size_t align);
void cr_arena_reset(cr_arena *a);
/* A position in the arena; rewinding to it hands everything allocated since
 * back (pointers into it become invalid; under ASan they are poisoned). The
 * generation does not change: a rewind is for temporaries no one keeps. */
typedef struct cr_arena_mark {
    void *chunk;
    size_t used, before_cur;
} cr_arena_mark;
cr_arena_mark cr_arena_mark_get(const cr_arena *a);
void cr_arena_rewind(cr_arena *a, cr_arena_mark m);
bool cr_arena_since(const cr_arena *a, cr_arena_mark m, const void *p); /* p was handed out after m */
size_t cr_arena_used(const cr_arena *a); /* bytes handed out since the last reset, O(1) */
size_t cr_arena_capacity(const cr_arena *a);
size_t cr_arena_chunk_count(const cr_arena *a);
uint64_t cr_arena_generation(const cr_arena *a); /* never 0 */
/* True when memory at p, allocated from a before its last reset, has not been
 * handed out again since (so an old header or node there is still intact). */
bool cr_arena_untouched(const cr_arena *a, const void *p);
bool cr_arena_owns(const cr_arena *a, const void *p); /* p lies in one of a's chunks */
/* Thread-local current arena used by every `_new` constructor. */
cr_arena *cr_arena_use(cr_arena *a); /* returns the previous one */
cr_arena *cr_arena_current(void);

/* ---- dtypes and shapes ------------------------------------------------- */

size_t cr_dtype_size(cr_dtype dt);
const char *cr_dtype_name(cr_dtype dt);
int64_t cr_numel(const cr_tensor *t);
bool cr_is_contiguous(const cr_tensor *t);
bool cr_same_shape(const cr_tensor *a, const cr_tensor *b);
/* NumPy broadcasting of two shapes; returns false when they do not fit. */
bool cr_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout, int64_t *out);

/* ---- creation ---------------------------------------------------------- */

/* Shapes are checked: at most CR_MAX_DIMS dims, none negative, and an
 * element count and byte size that fit (errors name the function and shape). */

/* Persistent tensor on the heap, zero-filled; free with cr_tensor_free. */
cr_tensor *cr_tensor_init(cr_dtype dt, int ndim, const int64_t *shape);
void cr_tensor_free(cr_tensor *t); /* NULL is a no-op; also frees t->grad */
/* Per-step tensor in the current arena, uninitialised / zero-filled. */
cr_tensor *cr_tensor_new(cr_dtype dt, int ndim, const int64_t *shape);
/* cr_tensor_new whose errors name `fn`, for constructors built on it (ops). */
cr_tensor *cr_tensor_new_as(const char *fn, cr_dtype dt, int ndim, const int64_t *shape);
cr_tensor *cr_zeros(cr_dtype dt, int ndim, const int64_t *shape);
cr_tensor *cr_ones(cr_dtype dt, int ndim, const int64_t *shape);
cr_tensor *cr_full(cr_dtype dt, int ndim, const int64_t *shape, double value);
cr_tensor *cr_scalar(cr_dtype dt, double value);                           /* 0-dim */
cr_tensor *cr_arange(cr_dtype dt, double start, double stop, double step); /* [start,stop) */
/* Copy `data` (numel elements of dtype dt) into a new arena tensor. */
cr_tensor *cr_from_array(cr_dtype dt, int ndim, const int64_t *shape, const void *data);
/* Header-only copy sharing storage (arena). */
cr_tensor *cr_tensor_alias(const cr_tensor *t);
/* A contiguous header in the current arena whose data (NULL here) the caller
 * places: autograd puts op outputs in its graph's pool. Shapes are checked as
 * by cr_tensor_new_as; errors name fn. */
cr_tensor *cr_tensor_header_new_as(const char *fn, cr_dtype dt, int ndim, const int64_t *shape);
/* Fill the header t (any memory) as a contiguous tensor of that shape with
 * its own version counter and no data; every other field is zeroed. */
void cr_tensor_set_contiguous(cr_tensor *t, cr_dtype dt, int ndim, const int64_t *shape);

/* Convenience for shapes: CR_SHAPE(2, 3) expands to `2, (int64_t[]){2, 3}`. */
#define CR_SHAPE(...)                                                                                        \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]) { __VA_ARGS__ }

/* ---- element access (slow, for tests and printing) ---------------------- */

double cr_get(const cr_tensor *t, const int64_t *index);
void cr_set(cr_tensor *t, const int64_t *index, double v);
double cr_get_flat(const cr_tensor *t, int64_t i); /* i-th element in row-major order */
void cr_set_flat(cr_tensor *t, int64_t i, double v);
double cr_item(const cr_tensor *t); /* the only element of a 1-element tensor */

/* ---- versions: in-place writes ----------------------------------------- */

/* Every in-place write through the API (cr_fill, cr_copy_, cr_set,
 * cr_set_flat, the cr_fill_* RNG fills) bumps the version of the tensor's
 * storage, shared by all its views. Autograd records the versions of the
 * tensors an op's backward reads and refuses to run that backward when one
 * has changed (as PyTorch does). Writes through `->data`, and the cr_k_*
 * kernels (building blocks that write into an output they are given), are
 * not seen: call cr_tensor_bump_version after writing into a tensor that an
 * op may have saved. */
void cr_tensor_bump_version(cr_tensor *t);
uint64_t cr_tensor_version(const cr_tensor *t); /* 0 for a fresh storage */
/* The version of a storage its graph gave back (cr_scope_end, cr_recompute):
 * ops, element access, fills and copies refuse such a tensor and its views. */
#define CR_VERSION_RELEASED UINT64_MAX
bool cr_tensor_released(const cr_tensor *t);

/* ---- in-place fills and copies ------------------------------------------ */

void cr_fill(cr_tensor *t, double value);
void cr_copy_(cr_tensor *dst, const cr_tensor *src); /* same shape, any dtypes/strides */
cr_tensor *cr_contiguous_copy(const cr_tensor *t);   /* always a fresh arena copy */

/* ---- views: fill `dst` (a header) to alias part of `src` ----------------- */

void cr_view_reshape(cr_tensor *dst, const cr_tensor *src, int ndim, const int64_t *shape);
void cr_view_transpose(cr_tensor *dst, const cr_tensor *src, int d0, int d1);
void cr_view_permute(cr_tensor *dst, const cr_tensor *src, const int *perm);
void cr_view_narrow(cr_tensor *dst, const cr_tensor *src, int dim, int64_t start, int64_t len);
void cr_view_select(cr_tensor *dst, const cr_tensor *src, int dim, int64_t index);
void cr_view_expand(cr_tensor *dst, const cr_tensor *src, int ndim, const int64_t *shape);
/* Insert a size-1 dim at `dim` (in [-(ndim+1), ndim]). */
void cr_view_unsqueeze(cr_tensor *dst, const cr_tensor *src, int dim);
/* Normalise a possibly negative dim; reports `op` on error. */
int cr_dim_norm(const char *op, int dim, int ndim);

/* ---- RNG ---------------------------------------------------------------- */

/* Philox4x32-10: the value at position p of stream (seed) depends only on
 * (seed, p), so fills are identical whatever the thread count. */
typedef struct cr_rng {
    uint64_t seed;
    uint64_t offset; /* next unused counter */
} cr_rng;
cr_rng cr_rng_seed(uint64_t seed);
void cr_philox(uint64_t seed, uint64_t counter, uint32_t out[4]);
double cr_rng_uniform01(cr_rng *r); /* in [0, 1) */
double cr_rng_normal(cr_rng *r);
void cr_fill_uniform(cr_tensor *t, cr_rng *r, double lo, double hi);
void cr_fill_normal(cr_tensor *t, cr_rng *r, double mean, double std);
/* Bernoulli keep-mask scaled for inverted dropout: 1/(1-p) with prob 1-p, else 0.
 * Draws from this thread's dropout stream instead of r while one is set. */
void cr_fill_dropout_mask(cr_tensor *t, cr_rng *r, double p);
/* Make r (NULL: none) this thread's dropout stream; returns the previous one.
 * A data-parallel replica sets its shard's stream (keyed by the step and the
 * shard's position in the batch), so every dropout mask of the shard (the
 * sequence layer's, cr_dropout's) is the same on any thread count, and no
 * two threads advance a generator they share. */
cr_rng *cr_rng_use_dropout_stream(cr_rng *r);

/* ---- kernels ------------------------------------------------------------ */
/* Kernels write into an existing `out`. Float dtypes only unless stated.
 * Elementwise kernels use OpenMP above cr_parallel_threshold elements. */

/* Run a for statement with OpenMP when COND holds and more than one thread
 * is allowed, and as a plain loop otherwise:
 *     CR_PAR_FOR(n > cr_parallel_threshold, "omp parallel for schedule(static)",
 *                for (int64_t i = 0; i < n; i++) y[i] = f(x[i]););
 * An if() clause on the pragma is not the same: a false clause still enters
 * the OpenMP runtime on every call (libgomp builds and frees a team of one,
 * ~0.3 us and a malloc/free pair) and the outlined loop runs up to 3-7x
 * slower than a plain one (bench/elementwise). Every module's parallel loops
 * use this. The loop forks only when cr_parallel_ok() holds (threads.c):
 * more than one thread allowed, never inside a parallel region or a
 * data-parallel replica. */
#define CR_PAR_FOR(COND, PRAGMA, ...)                                                                        \
    do {                                                                                                     \
        if ((COND) && cr_parallel_ok()) {                                                                    \
            _Pragma(PRAGMA) __VA_ARGS__                                                                      \
        } else {                                                                                             \
            __VA_ARGS__                                                                                      \
        }                                                                                                    \
    } while (0)

/* One kind per line of tensor/unary_ops.h: CR_U_NEG, CR_U_EXP, ... */
#define CR_UNARY_KIND_(name, KIND, np, params, reads, fwd, deriv, valid) CR_U_##KIND,
typedef enum cr_unary_kind { CR_UNARY_OPS(CR_UNARY_KIND_) CR_U_COUNT_ } cr_unary_kind;
#undef CR_UNARY_KIND_

typedef enum cr_binary_kind {
    CR_B_ADD,
    CR_B_SUB,
    CR_B_MUL,
    CR_B_DIV,
    CR_B_MAX,
    CR_B_MIN,
    CR_B_GE,
    CR_B_GT,
    CR_B_LE,
    CR_B_LT /* 1 where the comparison holds, else 0 */
} cr_binary_kind;

/* out = f(x; a, b) elementwise, same shape and dtype (x may be strided); a, b
 * are the op's scalar parameters in the order of tensor/unary_ops.h (0 when
 * it has fewer). */
void cr_k_unary(cr_unary_kind k, cr_tensor *out, const cr_tensor *x, double a, double b);
/* out = x op y with broadcasting (out has the broadcast shape). */
void cr_k_binary(cr_binary_kind k, cr_tensor *out, const cr_tensor *x, const cr_tensor *y);
/* acc += x * y (or acc += x when y is NULL), where x, y have the same shape as
 * acc or broadcast to a larger shape that is summed back to acc's shape. */
void cr_k_accumulate(cr_tensor *acc, const cr_tensor *x, const cr_tensor *y);
/* The same without reading acc: acc = x (* y), summed back to acc's shape
 * where x, y are larger (acc is zeroed first then). For a gradient's first
 * write, so a fresh buffer need not be zero-filled. */
void cr_k_assign(cr_tensor *acc, const cr_tensor *x, const cr_tensor *y);
/* gx += gy * f'(x) for the unary kind that produced out = f(x); all four of
 * one shape, any strides (rows of a gate's slice run as flat loops), a and b
 * as in cr_k_unary. Only what the kind's derivative reads (unary_ops.h) is
 * touched: x or out may be NULL otherwise. */
void cr_k_unary_backward(cr_unary_kind k, cr_tensor *gx, const cr_tensor *gy, const cr_tensor *x,
                         const cr_tensor *out, double a, double b);
/* gx = gy * f'(x): the same without reading gx (a gradient's first write). */
void cr_k_unary_backward_assign(cr_unary_kind k, cr_tensor *gx, const cr_tensor *gy, const cr_tensor *x,
                                const cr_tensor *out, double a, double b);
/* out = scale * x (same shapes; out's dtype may differ from x's). */
void cr_k_scale(cr_tensor *out, const cr_tensor *x, double scale);
/* out = where(cond != 0, x, y); cond broadcast to out. */
void cr_k_where(cr_tensor *out, const cr_tensor *cond, const cr_tensor *x, const cr_tensor *y);

typedef enum cr_reduce_kind { CR_R_SUM, CR_R_MEAN, CR_R_MAX, CR_R_MIN } cr_reduce_kind;
/* Reduce over `dim` (or all elements when dim == CR_ALL_DIMS). `out` has the
 * reduced shape (keepdim or not: only its element count matters). For MAX/MIN,
 * `arg` (i32, same element count as out, may be NULL) gets the index along dim. */
#define CR_ALL_DIMS (-1000)
void cr_k_reduce(cr_reduce_kind k, cr_tensor *out, cr_tensor *arg, const cr_tensor *x, int dim);

/* Softmax / log-softmax over `dim`. */
void cr_k_softmax(cr_tensor *out, const cr_tensor *x, int dim, bool log);
/* gx += d softmax (or log-softmax) given gy and the forward output out. */
void cr_k_softmax_backward(cr_tensor *gx, const cr_tensor *gy, const cr_tensor *out, int dim, bool log);
/* Cross-entropy's input gradient from the log-probabilities logp [rows, C]
 * and i32 targets [rows] (contiguous): gx row r (+)= scale * (softmax -
 * onehot(t_r)), written when first (a new buffer; ignored rows get 0) and
 * added otherwise (ignored rows untouched). f32 uses the softmax exp below. */
void cr_k_cross_entropy_backward(cr_tensor *gx, bool first, const cr_tensor *logp, const cr_tensor *target,
                                 int64_t ignore, double scale);
/* y = e^x elementwise (contiguous f32) with the exp of the f32 softmax,
 * log-softmax and cross-entropy kernels: valid over the whole float range
 * (subnormal results, 0, inf, NaN), within 1.3 ulp of the exact value
 * (tests/test_tensor.c). */
void cr_k_exp_softmax(cr_tensor *y, const cr_tensor *x);
/* gx[..., idx[...], ...] += gy along dim (gx contiguous; idx i32 with gy's
 * element count, the reduced shape): the backward of max over a dim. */
void cr_k_index_add_dim(cr_tensor *gx, int dim, const cr_tensor *idx, const cr_tensor *gy);

/* Fused RNN gates (tensor/rnn_kernels.c), f32 or f64. 2-D operands have unit
 * inner stride and any row stride; out, act and dy are contiguous. Every
 * gradient target is given (a scratch buffer for one not needed) and is
 * written when its *_first flag is set, else added to.
 * LSTM: z = gx + gh ([B,4H], gates i f g o), c [B,H]; out [2,B,H] = (h', c'),
 * act [5,B,H] = (i, f, g, o, tanh c'). */
void cr_k_lstm_gates(cr_tensor *out, cr_tensor *act, const cr_tensor *gx, const cr_tensor *gh,
                     const cr_tensor *c);
void cr_k_lstm_gates_backward(cr_tensor *dgx, bool gx_first, cr_tensor *dgh, bool gh_first, cr_tensor *dc,
                              bool c_first, const cr_tensor *dy, const cr_tensor *act, const cr_tensor *c);
/* GRU (PyTorch's): gx, gh [B,3H] (gates r z n, gh with b_hh), h [B,H]; out
 * [B,H] = h', act [4,B,H] = (r, z, n, gh_n). */
void cr_k_gru_gates(cr_tensor *out, cr_tensor *act, const cr_tensor *gx, const cr_tensor *gh,
                    const cr_tensor *h);
void cr_k_gru_gates_backward(cr_tensor *dgx, bool gx_first, cr_tensor *dgh, bool gh_first, cr_tensor *dh,
                             bool h_first, const cr_tensor *dy, const cr_tensor *act, const cr_tensor *h);
/* The f32 gate and softmax kernels run an AVX2 or AVX-512 build where the
 * CPU has it, with the same bits as the baseline build; true forces the
 * baseline one (tests compare them). */
extern bool cr_gates_baseline;

/* C = alpha * op(A) op(B) + beta * C for 2-D views of one float dtype, any
 * strides (a transposed view costs no copy). Small products use a plain C
 * kernel, larger ones BLIS. */
void cr_k_gemm(double alpha, const cr_tensor *a, const cr_tensor *b, double beta, cr_tensor *c);
/* Products with m*n*k at or below this use the C kernel (measured, bench/matmul). */
extern int64_t cr_gemm_small_threshold;
/* Products with m*n*k at or below this run on one thread even where threads
 * are allowed (a parallel region costs more than it saves); same bits. */
extern int64_t cr_gemm_parallel_threshold;
/* Packs of at least this many bytes have carousel's kernel fetch each next
 * panel into L2 ahead of use (same bits): 1 MB, 8 MB on AMD (set at load;
 * tensor/gemm.c gives the measurements). */
extern int64_t cr_gemm_fetch_bytes;
/* A right operand B [K,N] used by many products (a recurrent weight at every
 * time step), packed once into the micro-kernel's panels instead of on every
 * call. cr_k_gemm_pack_numel: elements of B's dtype the pack needs (0 when B
 * cannot be packed); cr_k_gemm_pack fills `pack` (contiguous, that many
 * elements, any alignment) from B; cr_k_gemm_packed(alpha, A, B, pack, beta,
 * C) is cr_k_gemm(alpha, A, B, beta, C) bit for bit on any thread count,
 * reading B's panels from the pack (B's values must not have changed). Small
 * products read the pack too where the C kernel's arithmetic can be had from
 * it (the same bits, by carousel's AVX-512 kernel); otherwise it is cr_k_gemm
 * itself where cr_k_gemm would not pack B (small products, C not row-stored,
 * pack NULL). */
int64_t cr_k_gemm_pack_numel(const cr_tensor *b);
void cr_k_gemm_pack(cr_tensor *pack, const cr_tensor *b);
void cr_k_gemm_packed(double alpha, const cr_tensor *a, const cr_tensor *b, const cr_tensor *pack,
                      double beta, cr_tensor *c);
/* f32 products with row-stored C, packed or not (and unpacked ones with a
 * column-stored C more than 128 rows and at least 1024 columns), run carousel's own AVX-512
 * micro-kernel (8 rows of A by 32 columns, so batches of 8, 16, 32 rows tile
 * exactly) where the CPU has AVX-512 and BLIS runs its skx kernels, whose
 * arithmetic it reproduces: the same bits. true sends cr_k_gemm's products
 * to BLIS's micro-kernel, and makes packs made from then on use it (a pack
 * is always read the way it was made). */
extern bool cr_gemm_blis_only;
/* The CPU family (AMD's 0x19 Zen 4 or 0x1A Zen 5, or Intel's 6) for which
 * carousel set BLIS_ARCH_TYPE=skx when it was loaded (the variable unset, the
 * CPU with AVX-512; tensor/gemm.c says why), else 0. Other BLIS users in the process see the variable too
 * (bench/peer.h decides what its PyTorch peer gets). */
unsigned cr_blis_arch_hinted(void);
/* Products that have run on carousel's own micro-kernel so far in this
 * process, through a pack and without one, and small products through a pack
 * with the C kernel's arithmetic (tests check the dispatch). */
int64_t cr_k_gemm_own_count(void);
int64_t cr_k_gemm_own_plain_count(void);
int64_t cr_k_gemm_own_small_count(void);

/* ---- sliding windows: convolution lowering and pooling (conv_kernels.c) ---- */

/* A 2-D window over planes of H x W (a 1-D one has H = KH = SH = DH = 1 and
 * PH = 0): kernel KH x KW, stride, padding on each side, dilation, and the
 * output size OH x OW (cr_window_out). C is the channels per sample. */
typedef struct cr_window {
    int64_t C, H, W;
    int64_t KH, KW, SH, SW, PH, PW, DH, DW;
    int64_t OH, OW;
} cr_window;
/* Output length (in + 2p - d(k-1) - 1)/s + 1, or -1 when the dilated kernel
 * does not fit the padded input, a size is out of range or overflows. */
int64_t cr_window_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d);
/* cols [C*KH*KW, nb*OH*OW] (contiguous) = im2col of samples [n0, n0+nb) of x
 * [N, C, H, W] (contiguous): row (c, ki, kj), column (n - n0, oh, ow) holds
 * x[n, c, oh*SH - PH + ki*DH, ow*SW - PW + kj*DW], zero outside the input. */
void cr_k_im2col(const cr_window *g, const cr_tensor *x, int64_t n0, int64_t nb, cr_tensor *cols);
/* The adjoint of im2col: gx[n0 .. n0+nb) += each column entry at the element it came
 * from (per plane in a fixed order, so any thread count gives the same sums). */
void cr_k_col2im(const cr_window *g, const cr_tensor *cols, int64_t n0, int64_t nb, cr_tensor *gx);
/* The direct convolution (no columns): x [N, C, H, W], w [O, C/G, KH, KW],
 * b [O] or NULL, y [N, O, OH, OW], all contiguous, stride 1 along W
 * (g->SW == 1). cr_k_conv_direct writes y (or adds to it: add) for samples
 * [n0, n0+nb); cr_k_conv_direct_dw writes dw [O, C/G, KH, KW] = the weight
 * gradient from those samples' gy (same shape as y), summed in an order
 * fixed by the shapes. scratch: cr_k_conv_direct_scratch elements of x's
 * dtype (the padded input, the packed weight; dw: the packed gradient and
 * the lane sums). */
int64_t cr_k_conv_direct_scratch(const cr_window *g, int64_t groups, int64_t O, cr_dtype dt, bool dw);
void cr_k_conv_direct(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *w,
                      const cr_tensor *b, int64_t n0, int64_t nb, cr_tensor *y, bool add, cr_tensor *scratch);
void cr_k_conv_direct_dw(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *gy,
                         int64_t n0, int64_t nb, cr_tensor *dw, cr_tensor *scratch);
/* Winograd F(2x2, 3x3) for a 3x3 window with stride 1 and dilation 1 (any
 * padding): cr_k_winograd_weights transforms w [O, C/G, 3, 3] into wt [16,
 * O, C/G] (G w G^T of every filter, packed for the products), and
 * cr_k_conv_winograd writes y (or adds to it: add) = b + the correlation
 * for samples [n0, n0+nb), as cr_k_conv_direct, every output tile on its own
 * (no bit depends on blocks or threads). scratch: cr_k_conv_winograd_scratch
 * elements (nb padded samples, one chunk's transforms). */
int64_t cr_k_conv_winograd_scratch(const cr_window *g, int64_t groups, int64_t O, int64_t nb);
void cr_k_winograd_weights(const cr_tensor *w, int64_t groups, cr_tensor *wt);
void cr_k_conv_winograd(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *wt,
                        const cr_tensor *b, int64_t n0, int64_t nb, cr_tensor *y, bool add,
                        cr_tensor *scratch);
/* Its weight gradient: cr_k_conv_winograd_dw adds to du (cr_k_winograd_dw_numel
 * elements: 16 planes of [O, C/G rounded up to 64 bytes]) the transformed
 * sums over samples [n0, n0+nb) of x and gy (y's shape, O channels), in an
 * order fixed by those samples; cr_k_winograd_dw_finish adds G^T du G to dw
 * [O, C/G, 3, 3]. scratch: cr_k_conv_winograd_dw_scratch elements. */
int64_t cr_k_winograd_dw_numel(int64_t O, int64_t Cg, cr_dtype dt);
int64_t cr_k_conv_winograd_dw_scratch(const cr_window *g, int64_t groups, int64_t O, cr_dtype dt);
void cr_k_conv_winograd_dw(const cr_window *g, int64_t groups, const cr_tensor *x, const cr_tensor *gy,
                           int64_t n0, int64_t nb, int64_t O, cr_tensor *du, cr_tensor *scratch);
void cr_k_winograd_dw_finish(const cr_tensor *du, int64_t groups, cr_tensor *dw);
/* Pooling over every H x W plane of x (contiguous) into out [..., OH, OW].
 * Max: padding is -inf; arg (i32, out's element count) gets the index
 * ih*W + iw of the first maximum in scan order (a NaN wins), as PyTorch;
 * a window of padding only (which the ops never make) gives -inf and -1. */
void cr_k_max_pool(const cr_window *g, const cr_tensor *x, cr_tensor *out, cr_tensor *arg);
void cr_k_max_pool_backward(const cr_window *g, cr_tensor *gx, const cr_tensor *gy, const cr_tensor *arg);
/* Average: the divisor is KH*KW, padding counting as zeros (PyTorch's
 * count_include_pad=True). Backward adds gy / (KH*KW) over each window. */
void cr_k_avg_pool(const cr_window *g, const cr_tensor *x, cr_tensor *out);
void cr_k_avg_pool_backward(const cr_window *g, cr_tensor *gx, const cr_tensor *gy);
/* Elementwise kernels run serially below this many elements (measured). */
extern int64_t cr_parallel_threshold;

/* Threads for OpenMP kernels and BLIS. */
void cr_set_num_threads(int n);
int cr_get_num_threads(void);

/* May a kernel fork threads here? Only outside any OpenMP parallel region and
 * any cr_serial_begin/end section, and when more than one thread is allowed.
 * Kernels never nest teams: a team of one costs libgomp an allocation and a
 * free per region. */
bool cr_parallel_ok(void);
/* Between these (they nest) this thread's kernels and products run serially:
 * a data-parallel replica (optim/parallel.c) computes one shard per thread. */
void cr_serial_begin(void);
void cr_serial_end(void);
bool cr_serial(void); /* inside cr_serial_begin/end on this thread */

/* ---- printing ----------------------------------------------------------- */

/* "tensor([..], dtype=f32, shape=[2,3])"; large tensors are elided. */
void cr_print(const cr_tensor *t);
void cr_fprint(FILE *f, const cr_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
