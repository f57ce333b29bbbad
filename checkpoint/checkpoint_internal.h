/* Shared by the files of the checkpoint module (not a public header): strings
 * from files made safe for messages, and the vocabulary's entries in a file. */
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
