/*
 * carousel data module: character and word vocabularies, reading text files,
 * shuffling with the counter-based RNG, padded batches of variable-length
 * sequences, and windows or parallel streams over one long stream of ids for
 * language models, and IDX files (MNIST, Fashion-MNIST). Depends on tensor/
 * only (and zlib); vocabularies are saved and loaded by the checkpoint module
 * (checkpoint.h).
 */
#ifndef CAROUSEL_DATA_H
#define CAROUSEL_DATA_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- vocabularies (data/data.c) ------------------------------------------------ */

/*
 * Text and data files come from the outside world: calls that read them
 * return a cr_status with a message in cr_last_error() and never abort.
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
/* Ids of text into out[0..cap) (out may be NULL when cap is 0); *count gets
 * the number of tokens in text (more than cap means out holds the first cap).
 * CR_EINVAL when a byte is not in a char vocabulary. */
cr_status cr_vocab_encode(const cr_vocab *v, const char *text, size_t len, int32_t *out, int64_t cap,
                          int64_t *count);
/* Char vocabularies only (at most 256 ids): one id byte per text byte into
 * out[0..len), which may be text itself (encoding in place). A stream of a
 * large file then costs one byte per character, not four. CR_EINVAL when a
 * byte is not in the vocabulary. */
cr_status cr_vocab_encode_bytes(const cr_vocab *v, const char *text, size_t len, uint8_t *out);
/* Text of n ids into out[0..cap), NUL-terminated when cap > 0 (char: bytes
 * joined; word: words joined by spaces, <eos> as a newline). Returns the
 * length of the full text, like snprintf. An id out of range is misuse. */
size_t cr_vocab_decode(const cr_vocab *v, const int32_t *ids, int64_t n, char *out, size_t cap);
/* A vocabulary from its tokens (copied): token i is bytes[offsets[i] ..
 * offsets[i+1]), offsets[0] = 0; unk and eos are ids or -1 (a word
 * vocabulary needs both). For tokens that come from outside (a file, see
 * cr_vocab_load in checkpoint.h): CR_EINVAL when they do not make a
 * vocabulary (falling offsets, char tokens not one byte, repeated tokens,
 * empty words, special ids out of range). */
cr_status cr_vocab_init_tokens(cr_vocab **out, cr_vocab_kind kind, const char *bytes, const int64_t *offsets,
                               int32_t n, int32_t unk, int32_t eos);

/* Read a whole file into *text (malloc'd, NUL-terminated, free with free()). */
cr_status cr_read_file(const char *path, char **text, size_t *len);

/* Fisher-Yates shuffle of items[0..n) with the counter-based RNG (one Philox
 * counter per draw, rarely more: draws are unbiased by rejection), so the
 * order depends only on (seed, offset) and r->offset advances past the
 * counters used. */
void cr_shuffle(int64_t *items, int64_t n, cr_rng *r);   /* swap(i, U{0..i}), i = n-1..1 */
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
void cr_windows_fill(cr_tensor *x, cr_tensor *y, const int32_t *stream, int64_t n, const int64_t *starts);
/* Windows of T ids (+1 for the target) starting at 0, stride, 2 stride, ...; 0 if n < T+1. */
int64_t cr_windows_count(int64_t n, int64_t T, int64_t stride); /* (n-T-1)/stride + 1 */

/* The stream as B parallel rows for truncated BPTT: row b is the R = (n-1)/B
 * ids from b R on, cut into chunks of T steps (the remainder is dropped), so
 * chunk c+1 of row b continues chunk c and the hidden state can be carried.
 * x[b,t] = stream[b R + c T + t], y[b,t] = stream[b R + c T + t + 1]; x, y as
 * for cr_windows_fill, with B and T taken from their shape. */
int64_t cr_stream_chunks(int64_t n, int64_t B, int64_t T); /* floor(R / T) */
void cr_stream_chunk(cr_tensor *x, cr_tensor *y, const int32_t *stream, int64_t n, int64_t c);
/* The same over a stream of byte ids (cr_vocab_encode_bytes). */
void cr_stream_chunk_u8(cr_tensor *x, cr_tensor *y, const uint8_t *stream, int64_t n, int64_t c);

/* ---- IDX files (data/idx.c) ------------------------------------------------------ */

/*
 * LeCun's IDX format, gzip-compressed (read through zlib) or plain: bytes
 * 00 00, an element type, the number of dims d, d big-endian u32 sizes, then
 * the elements, big-endian, row-major. Fashion-MNIST's files are
 * train-images-idx3-ubyte.gz (u8 [60000, 28, 28]), train-labels-idx1-ubyte.gz
 * (u8 [60000]) and the same for t10k (10000), in Debian's
 * dataset-fashion-mnist under /usr/share/datasets/fashion-mnist/.
 */
typedef enum cr_idx_type {
    CR_IDX_U8 = 0x08,
    CR_IDX_I8 = 0x09,
    CR_IDX_I16 = 0x0B,
    CR_IDX_I32 = 0x0C,
    CR_IDX_F32 = 0x0D,
    CR_IDX_F64 = 0x0E
} cr_idx_type;
typedef struct cr_idx {
    cr_idx_type type;
    int ndim; /* 1 .. CR_MAX_DIMS */
    int64_t shape[CR_MAX_DIMS];
    int64_t numel;
    void *data; /* numel elements in host byte order: uint8_t, int8_t, int16_t, int32_t, float or double */
} cr_idx;
/* Read and validate a whole file. On success *out owns the data (free with
 * cr_idx_free). On failure *out is NULL and the status is CR_EIO (cannot open
 * or read), CR_EFORMAT (bad magic number, unknown type, 0 or more than
 * CR_MAX_DIMS dims, sizes that overflow, data shorter or longer than the
 * header says, corrupt or truncated gzip stream) or CR_ENOMEM. Memory grows
 * with the bytes actually read, so a header that claims more data than the
 * file holds costs no more than the file. */
cr_status cr_idx_read(const char *path, cr_idx **out);
void cr_idx_free(cr_idx *idx);               /* NULL is a no-op */
size_t cr_idx_type_size(cr_idx_type t);      /* bytes per element, 0 for an unknown type */
const char *cr_idx_type_name(cr_idx_type t); /* "u8", "i16", ..., "?" */
/* The elements as a persistent tensor of the same shape in dtype dt (i32 only
 * from the integer types); free with cr_tensor_free. */
cr_tensor *cr_idx_tensor(const cr_idx *idx, cr_dtype dt);

#ifdef __cplusplus
}
#endif
#endif
