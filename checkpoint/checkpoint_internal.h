/* Shared by the files of the checkpoint module (not a public header): the
 * format's small pieces (st_format.c), strings from files made safe for
 * messages, and the vocabulary's entries in a file (vocab_io.c). */
#ifndef CAROUSEL_CHECKPOINT_INTERNAL_H
#define CAROUSEL_CHECKPOINT_INTERNAL_H

#include "checkpoint.h"

/* A string from a file, made safe to put in a one-line message: control
 * bytes and non-ASCII as \xNN, quotes and backslashes escaped, at most
 * CR_ESCAPE_MAX source bytes followed by "..." when longer. Use it inside
 * the call that prints it (cr_failure(..., cr_escape(name).s)): the array lives
 * only as long as the returned value. */
#define CR_ESCAPE_MAX 64
typedef struct cr_escaped {
    char s[CR_ESCAPE_MAX * 4 + 4];
} cr_escaped;
cr_escaped cr_escape(const char *s);

/* ---- the safetensors format (st_format.c) ---- */

#define CR_ST_META_KEY "__metadata__"
#define CR_ST_SHAPE_BUF (CR_MAX_DIMS * 21 + 3) /* "[d0,...,d7]" */

bool cr_st_dtype_parse(const char *s, cr_dtype *dt); /* "F32" -> CR_F32, ... */
bool cr_st_dtype_known(cr_dtype dt);
/* bytes = prod(shape) * element size; false on a bad dtype, a negative dim or overflow
 * (of the nonzero dims too, when a zero dim makes 0 bytes). */
bool cr_st_nbytes(cr_dtype dt, int ndim, const int64_t *shape, uint64_t *bytes);
/* Length of the valid UTF-8 sequence at s[0..len) (no overlongs, surrogates
 * or code points above U+10FFFF), or 0 if it is not one. */
size_t cr_st_utf8_seq(const unsigned char *s, size_t len);
/* The first name that appears twice in names[n] (sorted in place), or NULL. */
const char *cr_st_first_dup(const char **names, size_t n);

/* A vocabulary as two safetensors entries and metadata pairs (vocab_io.c),
 * for cr_vocab_save and cr_checkpoint_save. kv points into val: do not copy
 * a blob after making it. */
#define CR_VOCAB_N_META 4
typedef struct cr_vocab_blob {
    int32_t *data; /* token bytes (one per element) then offsets; malloc'd */
    cr_st_entry e[2];
    char val[CR_VOCAB_N_META][24];
    const char *kv[2 * CR_VOCAB_N_META];
} cr_vocab_blob;
cr_status cr_vocab_blob_make(const cr_vocab *v, cr_vocab_blob *b);
void cr_vocab_blob_free(cr_vocab_blob *b);
/* Validate and build the vocabulary stored in f (CR_EMISMATCH if it has none). */
cr_status cr_vocab_from_file(const cr_st_file *f, cr_vocab **out);

#endif
