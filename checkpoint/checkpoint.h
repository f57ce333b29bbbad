/*
 * carousel checkpoint module: safetensors files (reader and atomic writer),
 * parameter sets, optimizer state, vocabularies and whole training
 * checkpoints. Depends on tensor, nn, optim and data.
 *
 * Files come from the outside world, so nothing here aborts on a bad file:
 * every call returns a cr_status and leaves a one-line message in
 * cr_last_error() (tensor.h). Strings that come from a file (names, keys,
 * values) are escaped in messages (control bytes and non-ASCII as \xNN,
 * quotes escaped, long strings cut with "..."), so a hostile file cannot
 * forge log lines or send terminal escapes. Misuse (NULL arguments) is cr_error.
 */
#ifndef CAROUSEL_CHECKPOINT_H
#define CAROUSEL_CHECKPOINT_H

#include "data.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- safetensors files (checkpoint/st_read.c, st_write.c) ------------------- */

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
 * bytes of UTF-8 JSON (trailing whitespace allowed) with no NUL byte and no
 * \u0000 or lone surrogate in a string; every tensor has exactly those three
 * fields, a dtype carousel has (F32, F64, I32), at most CR_MAX_DIMS dims, dims
 * and offsets written as plain non-negative integers (no fraction, exponent
 * or sign) up to INT64_MAX, a shape a tensor can have (the product of its
 * nonzero dims times the element size below PTRDIFF_MAX, even when a zero dim
 * empties it), and end - begin equal to its byte size; names and
 * metadata keys are unique; and, as in the reference reader, the ranges tile
 * the data section exactly (no overlap, gap or trailing bytes).
 *
 * The reader is a streaming parser of that fixed shape: it parses the header
 * chunk by chunk as it reads it and stops at the first byte that cannot
 * belong to a valid header (the 9th dim of a shape, a '[' in place of a
 * dtype), needs no global state (concurrent loads are safe) and reads the data
 * section only after the header is valid. Its memory is about 2.2 times the
 * header (below 4 times in any case) plus the data section. */

/* One tensor of a file. `data` may be unaligned in a file read from disk:
 * copy it out with memcpy rather than casting it to float *. */
typedef struct cr_st_entry {
    const char *name;
    cr_dtype dtype;
    int ndim; /* 0..CR_MAX_DIMS (0 is a scalar) */
    int64_t shape[CR_MAX_DIMS];
    const void *data;
    size_t nbytes; /* numel * element size */
} cr_st_entry;

/* A parsed, fully validated file; it owns its names, metadata and data. */
typedef struct cr_st_file cr_st_file;

/* Largest header carousel accepts (a guard against absurd lengths). */
#define CR_ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024)

/* Write n tensors and n_meta metadata pairs atomically: the data goes to an
 * unnamed temporary file (O_TMPFILE) in the same directory, or where the file
 * system lacks that to "<path>.tmp.<pid>.XXXXXX", is fsynced and renamed over
 * `path`, then the directory is fsynced. A save killed midway leaves nothing
 * (O_TMPFILE) or a temporary file that the next save of the same path removes
 * (its pid no longer runs). On failure any previous file at `path` is left as
 * it was (one exception: if only the final directory fsync fails, the new
 * file is in place and the message says so). Permissions are those of the
 * file replaced, else 0666 minus the umask. meta_kv holds 2*n_meta strings:
 * key0, value0, key1, value1, ... (may be NULL when n_meta is 0). Entries
 * or metadata that cannot be written (bad UTF-8, duplicates, sizes) give
 * CR_EINVAL; the file system's refusals CR_EIO. */
cr_status cr_st_write(const char *path, const cr_st_entry *entries, size_t n, const char *const *meta_kv,
                      size_t n_meta);
/* Read and validate a whole file. On success *out owns everything; on
 * failure *out is NULL and the status is CR_EIO (cannot open or read, not a
 * regular file), CR_EFORMAT (not a valid file) or CR_ENOMEM. */
cr_status cr_st_read(const char *path, cr_st_file **out);
/* Validate `len` bytes already in memory (copied: `bytes` may be freed after). */
cr_status cr_st_parse(const void *bytes, size_t len, cr_st_file **out);
void cr_st_file_free(cr_st_file *f); /* NULL is a no-op */

/* Entries are ordered by their position in the data section. */
size_t cr_st_count(const cr_st_file *f);
const cr_st_entry *cr_st_entry_at(const cr_st_file *f, size_t i);     /* NULL if i >= count */
const cr_st_entry *cr_st_find(const cr_st_file *f, const char *name); /* NULL if absent */
size_t cr_st_data_bytes(const cr_st_file *f);                         /* size of the data section */
/* Metadata, in file order. */
size_t cr_st_meta_count(const cr_st_file *f);
const char *cr_st_meta_get(const cr_st_file *f, const char *key); /* NULL if absent */
/* Key and value of the i-th pair; returns false if i >= count. */
bool cr_st_meta_at(const cr_st_file *f, size_t i, const char **key, const char **value);
/* "F32", "F64", "I32" (safetensors spelling), or "?" for a bad value. */
const char *cr_st_dtype_name(cr_dtype dt);

/* ---- parameter sets (checkpoint/params_io.c) ------------------------------- */

/* Tensor names starting with this prefix are reserved for optimizer state
 * and vocabularies (e.g. "__optim__.adam.exp_avg.charlm.lstm.l0.w_ih"):
 * cr_params_load skips them, so a checkpoint holding weights and optimizer
 * state still loads into a model. Every other tensor in a file must be a
 * parameter of the model. */
#define CR_ST_OPTIM_PREFIX "__optim__."

/* Save every parameter value of ps (by its hierarchical name) and metadata. */
cr_status cr_params_save(const cr_params *ps, const char *path, const char *const *meta_kv, size_t n_meta);
/* Same, plus extra tensors (optimizer state) whose names must start with
 * CR_ST_OPTIM_PREFIX. */
cr_status cr_params_save_extra(const cr_params *ps, const cr_st_entry *extra, size_t n_extra,
                               const char *path, const char *const *meta_kv, size_t n_meta);
/* Load a file into ps. Every parameter must be in the file with the same
 * dtype and shape (CR_EMISMATCH otherwise); tensors that are not parameters
 * are an error unless they carry CR_ST_OPTIM_PREFIX. Nothing is copied until
 * the whole file has been validated, so on failure every parameter keeps its
 * value. Every parameter written gets its version bumped. */
cr_status cr_params_load(cr_params *ps, const char *path);

/* ---- vocabularies (checkpoint/vocab_io.c) ---------------------------------- */

/* A vocabulary in a safetensors file (the tensors CR_ST_OPTIM_PREFIX
 * "vocab.bytes" and "vocab.offsets", I32, plus metadata); cr_checkpoint_save
 * can store one beside the weights, and cr_vocab_load reads it from either
 * kind of file. */
cr_status cr_vocab_save(const cr_vocab *v, const char *path);
cr_status cr_vocab_load(const char *path, cr_vocab **out);

/* ---- training checkpoints (checkpoint/checkpoint.c) ------------------------- */
/*
 * One safetensors file (written atomically) with everything needed to resume
 * training bit for bit:
 *   - every parameter, under its name (cr_params_load reads these files);
 *   - the optimizer's state: CR_ST_OPTIM_PREFIX "<rule>.<slot>.<param>" (e.g.
 *     "__optim__.adam.exp_avg.lstm.w_ih", slot names from the rule's table)
 *     and "<rule>.step.<param>" (F64 scalar);
 *   - metadata: "carousel.format" = "checkpoint-1", "carousel.optim" (the
 *     rule's name), every hyper-parameter of the rule's table as
 *     "carousel.optim.<name>" (%.17g, exact; 0/1 for flags), its step count,
 *     "carousel.schedule_step", "carousel.rng.seed" / ".offset" (decimal),
 *     and an optional vocabulary (see cr_vocab_save);
 *   - the caller's metadata pairs (keys must not start with "carousel.").
 * o, rng and vocab may be NULL to leave them out; o must be over ps. A hidden
 * state carried across TBPTT chunks is the caller's: store it with
 * cr_checkpoint_save_extra, or checkpoint where it is reset.
 *
 *     if (cr_checkpoint_save("run.ckpt", ps, opt, step, &rng, vocab, NULL, 0) != CR_OK)
 *         fprintf(stderr, "checkpoint: %s\n", cr_last_error()); // the previous file is intact
 *     // later, in a new process: the vocabulary first (it fixes the shapes),
 *     // then the model and optimizer as before, then their state
 *     cr_vocab_load("run.ckpt", &vocab);
 *     ... ps = build_model(cr_vocab_size(vocab)); opt = cr_adam_init(ps, ...); ...
 *     cr_checkpoint_load("run.ckpt", ps, opt, &step, &rng, NULL);
 */
cr_status cr_checkpoint_save(const char *path, const cr_params *ps, const cr_optim *o, int64_t schedule_step,
                             const cr_rng *rng, const cr_vocab *vocab, const char *const *meta_kv,
                             size_t n_meta);
/* The same plus the caller's own tensors: state of the run that is neither a
 * parameter nor the optimizer's, such as the hidden state carried across
 * truncated-BPTT chunks, so that a run can stop and resume anywhere. Their
 * names must start with CR_ST_OPTIM_PREFIX followed by a namespace of the
 * caller's ("__optim__.charlm.h"; CR_EINVAL otherwise, and for a name the
 * file already holds). cr_checkpoint_load and cr_params_load skip them; read
 * them back with cr_st_read and cr_st_find. */
cr_status cr_checkpoint_save_extra(const char *path, const cr_params *ps, const cr_optim *o,
                                   int64_t schedule_step, const cr_rng *rng, const cr_vocab *vocab,
                                   const cr_st_entry *extra, size_t n_extra, const char *const *meta_kv,
                                   size_t n_meta);
/* Restore a checkpoint into existing objects. Every non-NULL destination must
 * be in the file (CR_EMISMATCH otherwise); o must follow the rule saved, and
 * gets the saved hyper-parameters, learning rate, step counts and state (as
 * PyTorch's load_state_dict). *vocab receives a new vocabulary. The whole file
 * is validated before anything is written, so on failure every destination
 * keeps its value; every tensor written gets its version bumped. Read the
 * caller's metadata with cr_st_read / cr_st_meta_get. */
cr_status cr_checkpoint_load(const char *path, cr_params *ps, cr_optim *o, int64_t *schedule_step,
                             cr_rng *rng, cr_vocab **vocab);

#ifdef __cplusplus
}
#endif
#endif
