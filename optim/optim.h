/*
 * carousel optim module: optimizers, gradient clipping, learning-rate
 * schedules, checkpoints and data utilities.
 */
#ifndef CAROUSEL_OPTIM_H
#define CAROUSEL_OPTIM_H

#include "nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- checkpoints: safetensors files (optim/safetensors.c) ------------------- */

/* The safetensors format (https://github.com/huggingface/safetensors):
 *
 *     u64 N (little-endian) | N bytes of JSON header | data section
 *
 * The header is one JSON object mapping each tensor name to
 *     {"dtype":"F32"|"F64"|"I32","shape":[d0,...],"data_offsets":[begin,end]}
 * (offsets relative to the data section) plus an optional "__metadata__"
 * object whose values are strings. Data is raw little-endian, row-major.
 * carousel writes the header padded with spaces to a multiple of 8 bytes.
 *
 * The reader accepts a file only if: the header is at most CR_ST_MAX_HEADER
 * bytes of UTF-8 JSON (trailing whitespace allowed); every tensor has exactly
 * those three fields, a dtype carousel has (F32, F64, I32), at most
 * CR_MAX_DIMS non-negative integer dims, and end - begin equal to its byte
 * size; names and metadata keys are unique; and, as in the reference reader,
 * the ranges tile the data section exactly (no overlap, gap or trailing bytes).
 *
 * Files come from the outside world, so this API never aborts: every function
 * returns 0 on success or -1 with a one-line message in err[errlen] (err may
 * be NULL). The low-level part uses only libc and cJSON. */

/* One tensor of a file. `data` may be unaligned in a file read from disk:
 * copy it out with memcpy rather than casting it to float *. */
typedef struct cr_st_entry {
    const char *name;
    cr_dtype dtype;
    int ndim;                    /* 0..CR_MAX_DIMS (0 is a scalar) */
    int64_t shape[CR_MAX_DIMS];
    const void *data;
    size_t nbytes;               /* numel * element size */
} cr_st_entry;

/* A parsed, fully validated file; it owns its names, metadata and data. */
typedef struct cr_st_file cr_st_file;

/* Largest header carousel accepts (a guard against absurd lengths). */
#define CR_ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024)

/* Write n tensors and n_meta metadata pairs atomically: a temporary file in
 * the same directory is written, flushed, fsynced and renamed over `path`,
 * then the directory is fsynced. On failure the temporary file is removed and
 * any previous file at `path` is left as it was (one exception: if only the
 * final directory fsync fails, the new file is in place and the message says
 * so). Permissions are those of the file replaced, else 0666 minus the umask.
 * meta_kv holds 2*n_meta strings: key0, value0, key1, value1, ... (may be
 * NULL when n_meta is 0). */
int cr_st_write(const char *path, const cr_st_entry *entries, size_t n,
                const char *const *meta_kv, size_t n_meta, char *err, size_t errlen);
/* Read and validate a whole file. On success *out owns everything. */
int cr_st_read(const char *path, cr_st_file **out, char *err, size_t errlen);
/* Validate `len` bytes already in memory (copied: `bytes` may be freed after). */
int cr_st_parse(const void *bytes, size_t len, cr_st_file **out, char *err, size_t errlen);
void cr_st_file_free(cr_st_file *f); /* NULL is a no-op */

/* Entries are ordered by their position in the data section. */
size_t cr_st_count(const cr_st_file *f);
const cr_st_entry *cr_st_entry_at(const cr_st_file *f, size_t i); /* NULL if i >= count */
const cr_st_entry *cr_st_find(const cr_st_file *f, const char *name); /* NULL if absent */
size_t cr_st_data_bytes(const cr_st_file *f); /* size of the data section */
/* Metadata, in file order. */
size_t cr_st_meta_count(const cr_st_file *f);
const char *cr_st_meta_get(const cr_st_file *f, const char *key); /* NULL if absent */
/* Key and value of the i-th pair; returns false if i >= count. */
bool cr_st_meta_at(const cr_st_file *f, size_t i, const char **key, const char **value);
/* "F32", "F64", "I32" (safetensors spelling), or "?" for a bad value. */
const char *cr_st_dtype_name(cr_dtype dt);

/* ---- checkpoints of parameter sets ---------------------------------------- */

/* Tensor names starting with this prefix are reserved for optimizer state
 * (e.g. "__optim__.adam.m.charlm.lstm.l0.w_ih"): cr_params_load skips them,
 * so a checkpoint holding weights and optimizer state still loads into a
 * model. Every other tensor in a file must be a parameter of the model. */
#define CR_ST_OPTIM_PREFIX "__optim__."

/* Save every parameter value of ps (by its hierarchical name) and metadata. */
int cr_params_save(const cr_params *ps, const char *path, const char *const *meta_kv,
                   size_t n_meta, char *err, size_t errlen);
/* Same, plus extra tensors (optimizer state) whose names must start with
 * CR_ST_OPTIM_PREFIX. */
int cr_params_save_extra(const cr_params *ps, const cr_st_entry *extra, size_t n_extra,
                         const char *path, const char *const *meta_kv, size_t n_meta,
                         char *err, size_t errlen);
/* Load a file into ps. Every parameter must be in the file with the same
 * dtype and shape; tensors that are not parameters are an error unless they
 * carry CR_ST_OPTIM_PREFIX. Nothing is copied until the whole file has been
 * validated, so on failure every parameter keeps its value. */
int cr_params_load(cr_params *ps, const char *path, char *err, size_t errlen);

/* ---- status codes (optim/state.c) ----------------------------------------- */

/* What a call that depends on the outside world (files, data, numbers a model
 * produced) reports instead of aborting. Misuse of the API still goes to
 * cr_error. Functions returning a status also write a one-line message to
 * err[errlen] when err is not NULL. */
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

/* ---- optimizers (optim/optimizers.c) --------------------------------------- */
/*
 * An optimizer walks a parameter set (f32 and f64 parameters) and updates
 * every parameter that has a gradient (value->grad != NULL); parameters
 * without one are skipped, as in PyTorch, and their state does not advance.
 * The update rules are PyTorch 1.13's (torch.optim), with k the number of
 * updates a parameter has received, g its gradient and p its value:
 *
 *   SGD      g += wd p;  buf = g (first update), else buf = m buf + (1-damp) g;
 *            d = nesterov ? g + m buf : buf  (d = g when m = 0);  p -= lr d
 *   Adam     g += wd p;  m1 = b1 m1 + (1-b1) g;  m2 = b2 m2 + (1-b2) g^2;
 *            p -= lr/(1-b1^k) m1 / (sqrt(m2)/sqrt(1-b2^k) + eps)
 *            (amsgrad: m2max = max(m2max, m2) replaces m2 in the denominator)
 *   AdamW    p *= 1 - lr wd, then Adam without weight decay (decoupled decay)
 *   RMSprop  g += wd p;  s = a s + (1-a) g^2;  centered: ga = a ga + (1-a) g,
 *            den = sqrt(s - ga^2) + eps, else den = sqrt(s) + eps;
 *            momentum: buf = m buf + g/den, p -= lr buf; else p -= lr g/den
 *
 * f32 parameters are updated in f32 arithmetic, f64 in f64 (as PyTorch does).
 * The state (moments, buffers) lives in persistent tensors allocated by
 * *_init, so a step makes no allocation; elementwise loops use OpenMP above
 * cr_parallel_threshold elements, each thread on disjoint elements, so
 * results do not depend on the thread count. The parameter set must not
 * change after *_init.
 *
 *     cr_optim *opt = cr_adam_init(ps, cr_adam_defaults(1e-3));
 *     for (...) {
 *         cr_optim_zero_grad(opt);
 *         cr_backward(loss_of(ps, batch));
 *         cr_optim_step(opt);
 *         cr_graph_clear(g);
 *     }
 *     cr_optim_free(opt);
 */

typedef struct cr_optim cr_optim;
typedef enum cr_optim_kind { CR_OPTIM_SGD, CR_OPTIM_ADAM, CR_OPTIM_ADAMW, CR_OPTIM_RMSPROP } cr_optim_kind;

typedef struct cr_sgd_config {
    double lr;           /* learning rate */
    double momentum;     /* m, 0 for plain SGD */
    double dampening;    /* damp: buf = m buf + (1-damp) g after the first update */
    double weight_decay; /* L2 penalty, added to the gradient */
    bool nesterov;       /* needs momentum > 0 and dampening == 0 */
} cr_sgd_config;

typedef struct cr_adam_config {
    double lr;
    double beta1, beta2; /* moment decay rates, in [0, 1) */
    double eps;          /* added after the bias-corrected square root */
    double weight_decay; /* Adam: L2 added to the gradient; AdamW: decoupled */
    bool amsgrad;        /* keep the running maximum of the second moment */
} cr_adam_config;

typedef struct cr_rmsprop_config {
    double lr;
    double alpha;        /* smoothing constant of the squared-gradient average */
    double eps;          /* added after the square root */
    double weight_decay; /* L2 added to the gradient */
    double momentum;     /* 0: no momentum buffer */
    bool centered;       /* divide by the estimated variance, not the raw second moment */
} cr_rmsprop_config;

/* PyTorch's defaults with the given learning rate. */
cr_sgd_config cr_sgd_defaults(double lr);         /* m 0, damp 0, wd 0, no Nesterov */
cr_adam_config cr_adam_defaults(double lr);       /* betas 0.9, 0.999, eps 1e-8, wd 0 */
cr_adam_config cr_adamw_defaults(double lr);      /* the same with wd 0.01 */
cr_rmsprop_config cr_rmsprop_defaults(double lr); /* alpha 0.99, eps 1e-8, wd 0, m 0 */

/* Create an optimizer over every parameter of ps (kept by reference: ps must
 * outlive it). Bad hyper-parameters or integer parameters are misuse. */
cr_optim *cr_sgd_init(cr_params *ps, cr_sgd_config cfg);      /* p -= lr (g or momentum) */
cr_optim *cr_adam_init(cr_params *ps, cr_adam_config cfg);     /* p -= lr m^/(sqrt(v^)+eps) */
cr_optim *cr_adamw_init(cr_params *ps, cr_adam_config cfg);    /* p *= 1-lr wd, then Adam */
cr_optim *cr_rmsprop_init(cr_params *ps, cr_rmsprop_config cfg); /* p -= lr g/(sqrt(s)+eps) */
void cr_optim_free(cr_optim *o); /* NULL is a no-op; frees the state, not the parameters */

void cr_optim_step(cr_optim *o);      /* p <- update(p, p->grad) for every p with a gradient */
void cr_optim_zero_grad(cr_optim *o); /* every existing gradient = 0 (kept allocated) */
void cr_optim_set_lr(cr_optim *o, double lr); /* lr >= 0, used by the next step */
double cr_optim_get_lr(const cr_optim *o);
cr_optim_kind cr_optim_kind_of(const cr_optim *o);
const char *cr_optim_name(const cr_optim *o); /* "sgd", "adam", "adamw", "rmsprop" */
cr_params *cr_optim_params(const cr_optim *o);
int64_t cr_optim_steps(const cr_optim *o); /* cr_optim_step calls so far */
/* The configuration in use (the one matching the kind; the others are zero). */
cr_sgd_config cr_optim_sgd_config(const cr_optim *o);
cr_adam_config cr_optim_adam_config(const cr_optim *o);
cr_rmsprop_config cr_optim_rmsprop_config(const cr_optim *o);
/* Inspect the state of one parameter: slot is PyTorch's state name
 * ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq",
 * "square_avg", "grad_avg"). NULL when the optimizer keeps no such slot. */
const cr_tensor *cr_optim_state(const cr_optim *o, const char *param_name, const char *slot);
/* Updates parameter `param_name` has received (PyTorch's state['step']); -1 if unknown. */
int64_t cr_optim_param_steps(const cr_optim *o, const char *param_name);

/* ---- gradient clipping (optim/clip.c) --------------------------------------- */

/* Global L2 norm of all gradients, PyTorch's norm of the per-tensor norms,
 * total = sqrt(sum_p ||g_p||^2), accumulated in f64 over fixed blocks (so it
 * does not depend on the thread count) and returned as measured before
 * clipping. As PyTorch's clip_grad_norm_, every gradient is scaled by
 * coef = max_norm / (total + 1e-6) when coef < 1 (its clamp of coef to 1 is
 * the same as not scaling), so the clipped norm is max_norm total/(total +
 * 1e-6): max_norm to within 1e-6, not 1 as in KANN. A NaN or infinite norm
 * leaves every gradient untouched and sets *status = CR_NONFINITE, so the
 * caller can skip the step; otherwise *status = CR_OK (status may be NULL).
 * Squares that overflow f64 are rescaled: only NaN/inf elements (or a norm
 * above DBL_MAX) count as non-finite. */
double cr_clip_grad_norm(cr_params *ps, double max_norm, int *status); /* g *= min(1, c/(|g|+1e-6)) */
/* Clamp every gradient element to [-clip, clip] (PyTorch's clip_grad_value_).
 * Returns CR_NONFINITE if any element was NaN or infinite (NaN stays NaN,
 * +-inf becomes +-clip), else CR_OK. */
int cr_clip_grad_value(cr_params *ps, double clip); /* g = clamp(g, -c, c) */
/* The norm alone, without clipping. */
double cr_grad_norm(const cr_params *ps); /* sqrt(sum g^2) */

/* ---- learning-rate schedules (optim/schedule.c) ----------------------------- */
/*
 * A schedule maps the number of optimizer steps taken so far, k (0 before the
 * first step), to a learning rate. It is a plain value: its only state is the
 * step counter, which the caller keeps (and stores in checkpoints). The
 * formulas are the closed forms of torch.optim.lr_scheduler:
 *
 *   constant     lr
 *   step         lr gamma^floor(k / step_size)                    (StepLR)
 *   exponential  lr gamma^k                                       (ExponentialLR)
 *   cosine       eta_min + (lr - eta_min)(1 + cos(pi k/t_max))/2  (CosineAnnealingLR),
 *                held at eta_min for k >= t_max (no warm restart)
 *   linear       lr (f0 + (f1 - f0) min(k, n)/n)                 (LinearLR: warm-up)
 *
 * cr_schedule_then(a, m, b) runs a for k < m, then b on its own counter k - m
 * (SequentialLR with milestone m). Up to CR_SCHEDULE_MAX_PHASES phases.
 *
 *     cr_schedule s = cr_schedule_then(cr_schedule_linear(3e-3, 0.01, 1.0, 100), 100,
 *                                      cr_schedule_cosine(3e-3, 900, 1e-5));
 *     for (int64_t k = 0; k < 1000; k++) {
 *         cr_schedule_apply(&s, opt, k);   // lr for this step
 *         ... backward ...; cr_optim_step(opt);
 *     }
 */

#define CR_SCHEDULE_MAX_PHASES 8
typedef enum cr_schedule_kind {
    CR_SCHED_CONSTANT, CR_SCHED_STEP, CR_SCHED_EXPONENTIAL, CR_SCHED_COSINE, CR_SCHED_LINEAR
} cr_schedule_kind;

typedef struct cr_schedule_phase {
    cr_schedule_kind kind;
    int64_t start; /* first step of the phase; it sees k - start */
    double lr;     /* base learning rate */
    double a, b;   /* step/exponential: gamma; cosine: eta_min; linear: f0, f1 */
    int64_t n;     /* step: step_size; cosine: t_max; linear: steps to reach f1 */
} cr_schedule_phase;

typedef struct cr_schedule {
    int n_phases;
    cr_schedule_phase phase[CR_SCHEDULE_MAX_PHASES];
} cr_schedule;

cr_schedule cr_schedule_constant(double lr);                                 /* lr */
cr_schedule cr_schedule_step(double lr, int64_t step_size, double gamma);   /* lr g^floor(k/s) */
cr_schedule cr_schedule_exponential(double lr, double gamma);               /* lr g^k */
cr_schedule cr_schedule_cosine(double lr, int64_t t_max, double eta_min);   /* cosine to eta_min */
cr_schedule cr_schedule_linear(double lr, double f0, double f1, int64_t n); /* lr (f0..f1) */
/* a for k < milestone, then b on k - milestone. */
cr_schedule cr_schedule_then(cr_schedule a, int64_t milestone, cr_schedule b); /* k<m ? a(k) : b(k-m) */
/* Linear warm-up, lr (k+1)/warmup for k < warmup, then cosine annealing from
 * lr to eta_min at step `total`. */
cr_schedule cr_schedule_warmup_cosine(double lr, int64_t warmup, int64_t total, double eta_min);
double cr_schedule_lr(const cr_schedule *s, int64_t step); /* lr after `step` steps */
/* cr_optim_set_lr(o, cr_schedule_lr(s, step)); returns that lr. */
double cr_schedule_apply(const cr_schedule *s, cr_optim *o, int64_t step);

/* ---- data: vocabularies, shuffling, batches, windows (optim/data.c) --------- */
/*
 * Text and data files come from the outside world: calls that read them
 * return a status (or -1) with a message and never abort.
 *
 * A character vocabulary has one token per distinct byte of the text, in byte
 * order (UTF-8 text gets one token per byte). A word vocabulary splits on
 * ASCII whitespace; id 0 is "<unk>" (words not kept: below min_count, past
 * max_size, or unseen) and id 1 is "<eos>", emitted for every newline; the
 * words follow by decreasing count, ties in byte order. Literal "<unk>" and
 * "<eos>" in the text map to those ids (Penn Treebank style).
 */

typedef struct cr_vocab cr_vocab;
typedef enum cr_vocab_kind { CR_VOCAB_CHAR, CR_VOCAB_WORD } cr_vocab_kind;

cr_vocab *cr_vocab_init_chars(const char *text, size_t len);
/* min_count: words seen fewer times map to <unk> (<= 1 keeps all); max_size:
 * at most this many ids including <unk> and <eos> (0: no limit). */
cr_vocab *cr_vocab_init_words(const char *text, size_t len, int64_t min_count, int64_t max_size);
void cr_vocab_free(cr_vocab *v); /* NULL is a no-op */
cr_vocab_kind cr_vocab_kind_of(const cr_vocab *v);
int64_t cr_vocab_size(const cr_vocab *v);
int32_t cr_vocab_unk(const cr_vocab *v); /* id of <unk>, -1 for a char vocabulary */
int32_t cr_vocab_eos(const cr_vocab *v); /* id of <eos>, -1 for a char vocabulary */
/* Id of a token (len bytes), or -1 if absent. */
int32_t cr_vocab_id(const cr_vocab *v, const char *token, size_t len);
/* Bytes of token `id` (not NUL-terminated), length in *len; misuse if out of range. */
const char *cr_vocab_token(const cr_vocab *v, int32_t id, size_t *len);
/* Ids of text into out[0..cap) (out may be NULL when cap is 0). Returns the
 * number of tokens in text (more than cap means out holds the first cap), or
 * -1 with a message when a byte is not in a char vocabulary. */
int64_t cr_vocab_encode(const cr_vocab *v, const char *text, size_t len, int32_t *out, int64_t cap,
                        char *err, size_t errlen);
/* Text of n ids into out[0..cap), NUL-terminated when cap > 0 (char: bytes
 * joined; word: words joined by spaces, <eos> as a newline). Returns the
 * length of the full text, like snprintf. An id out of range is misuse. */
size_t cr_vocab_decode(const cr_vocab *v, const int32_t *ids, int64_t n, char *out, size_t cap);
/* A vocabulary in a safetensors file (the tensors CR_ST_OPTIM_PREFIX "vocab.bytes"
 * and "vocab.offsets", I32, plus metadata); cr_checkpoint_save can store one
 * beside the weights, and cr_vocab_load reads it from either kind of file. */
cr_status cr_vocab_save(const cr_vocab *v, const char *path, char *err, size_t errlen);
cr_status cr_vocab_load(const char *path, cr_vocab **out, char *err, size_t errlen);

/* Read a whole file into *text (malloc'd, NUL-terminated, free with free()). */
cr_status cr_read_file(const char *path, char **text, size_t *len, char *err, size_t errlen);

/* Fisher-Yates shuffle of items[0..n) with the counter-based RNG (one Philox
 * counter per draw, rarely more: draws are unbiased by rejection), so the
 * order depends only on (seed, offset) and r->offset advances past the
 * counters used. */
void cr_shuffle(int64_t *items, int64_t n, cr_rng *r); /* swap(i, U{0..i}), i = n-1..1 */
void cr_permutation(int64_t *out, int64_t n, cr_rng *r); /* shuffled 0..n-1 */

/* Pad B variable-length sequences (seqs[b] holds lens[b] ids) into per-step
 * arena tensors *idx [B,T] (i32, T = the longest length, at least 1) filled
 * with `pad` after each sequence's end, and *lengths [B] (i32). Use pad =
 * the ignore_index of cr_cross_entropy for targets. */
void cr_batch_pad_new(int64_t B, const int32_t *const *seqs, const int64_t *lens, int32_t pad,
                      cr_tensor **idx, cr_tensor **lengths);

/* Fixed-length windows over one long stream of n ids for language models:
 * window b of length T starts at starts[b]; x[b,t] = stream[starts[b]+t] and
 * the next-token target y[b,t] = stream[starts[b]+t+1]. x, y are existing
 * i32 [B,T] contiguous tensors; starts[b] + T < n is required. */
void cr_windows_fill(cr_tensor *x, cr_tensor *y, const int32_t *stream, int64_t n,
                     const int64_t *starts);
/* Windows of T ids (+1 for the target) starting at 0, stride, 2 stride, ...; 0 if n < T+1. */
int64_t cr_windows_count(int64_t n, int64_t T, int64_t stride); /* (n-T-1)/stride + 1 */

/* The stream as B parallel rows for truncated BPTT: row b is the R = (n-1)/B
 * ids from b R on, cut into chunks of T steps (the remainder is dropped), so
 * chunk c+1 of row b continues chunk c and the hidden state can be carried.
 * x[b,t] = stream[b R + c T + t], y[b,t] = stream[b R + c T + t + 1]; x, y as
 * for cr_windows_fill, with B and T taken from their shape. */
int64_t cr_stream_chunks(int64_t n, int64_t B, int64_t T); /* floor(R / T) */
void cr_stream_chunk(cr_tensor *x, cr_tensor *y, const int32_t *stream, int64_t n, int64_t c);

/* ---- truncated BPTT (optim/state.c) ----------------------------------------- */
/*
 * Train on a long stream in chunks of K steps. The hidden state is carried
 * forward across chunks in a persistent buffer that does not require a
 * gradient, so each chunk's graph starts from a constant: the gradient stops
 * at the chunk boundary, and the chunk's graph is cleared after its update.
 *
 *     cr_tensor *h = cr_tensor_init(CR_F32, CR_SHAPE(B, H));  // carried state, zeros
 *     for (int64_t c = 0; c < cr_stream_chunks(n, B, K); c++) {
 *         cr_stream_chunk(x, y, stream, n, c);                 // x, y: [B, K] i32
 *         cr_tensor *ht = h, *loss = NULL;                     // h is a leaf: no history
 *         for (int64_t t = 0; t < K; t++) {
 *             ht = my_cell(ps, x, t, ht);                      // ops: tanh(x W^T + h U^T + b)
 *             cr_tensor *l = my_step_loss(ps, ht, y, t);       // e.g. cr_cross_entropy
 *             loss = loss ? cr_add(loss, l) : l;
 *         }
 *         cr_optim_zero_grad(opt);
 *         cr_backward(loss);
 *         cr_clip_grad_norm(ps, 1.0, &st);
 *         if (st == CR_OK) cr_optim_step(opt);
 *         cr_state_carry(h, ht);     // values only: after backward (which reads h),
 *                                    // before the clear (which frees ht)
 *         cr_graph_clear(g);         // nothing of this chunk survives
 *     }
 *
 * Within one graph, cr_detach(ht) gives the same cut without a copy. For an
 * LSTM carry both h and c. Reset the carried state (cr_fill(h, 0)) where the
 * stream starts a new document.
 */
/* dst = h by value (any strides/dtypes, same shape); dst must be persistent
 * and must not require a gradient. */
void cr_state_carry(cr_tensor *dst, const cr_tensor *h); /* dst <- value(h), no history */

/* ---- training checkpoints (optim/state.c) ----------------------------------- */
/*
 * One safetensors file (written atomically) with everything needed to resume
 * training bit for bit:
 *   - every parameter, under its name (cr_params_load reads these files);
 *   - the optimizer's state: CR_ST_OPTIM_PREFIX "<kind>.<slot>.<param>" (e.g.
 *     "__optim__.adam.exp_avg.lstm.w_ih") and "<kind>.step.<param>" (F64 scalar);
 *   - metadata: "carousel.format" = "checkpoint-1", "carousel.optim" (kind),
 *     its hyper-parameters "carousel.optim.<name>" (%.17g, exact), its step
 *     count, "carousel.schedule_step", "carousel.rng.seed" / ".offset"
 *     (decimal), and an optional vocabulary (see cr_vocab_save);
 *   - the caller's metadata pairs (keys must not start with "carousel.").
 * o, rng and vocab may be NULL to leave them out; o must be over ps. A hidden
 * state carried across TBPTT chunks is not stored: checkpoint where it is
 * reset (e.g. at an epoch boundary).
 *
 *     char err[256];
 *     if (cr_checkpoint_save("run.ckpt", ps, opt, step, &rng, vocab, NULL, 0, err, sizeof err))
 *         fprintf(stderr, "checkpoint: %s\n", err); // the previous file is intact
 *     // later, in a new process: the vocabulary first (it fixes the shapes),
 *     // then the model and optimizer as before, then their state
 *     cr_vocab_load("run.ckpt", &vocab, err, sizeof err);
 *     ... ps = build_model(cr_vocab_size(vocab)); opt = cr_adam_init(ps, ...); ...
 *     cr_checkpoint_load("run.ckpt", ps, opt, &step, &rng, NULL, err, sizeof err);
 */
cr_status cr_checkpoint_save(const char *path, const cr_params *ps, const cr_optim *o,
                             int64_t schedule_step, const cr_rng *rng, const cr_vocab *vocab,
                             const char *const *meta_kv, size_t n_meta, char *err, size_t errlen);
/* Restore a checkpoint into existing objects. Every non-NULL destination must
 * be in the file (CR_EMISMATCH otherwise); o must be of the kind saved, and
 * gets the saved hyper-parameters, learning rate, step counts and moments (as
 * PyTorch's load_state_dict). *vocab receives a new vocabulary. The whole file
 * is validated before anything is written, so on failure every destination
 * keeps its value. Read the caller's metadata with cr_st_read / cr_st_meta_get. */
cr_status cr_checkpoint_load(const char *path, cr_params *ps, cr_optim *o, int64_t *schedule_step,
                             cr_rng *rng, cr_vocab **vocab, char *err, size_t errlen);

/* ---- end of declarations ---- */

#ifdef __cplusplus
}
#endif
#endif
