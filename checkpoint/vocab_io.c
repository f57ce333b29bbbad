/* Vocabularies in safetensors files: the token bytes and offsets as two I32
 * tensors under CR_ST_OPTIM_PREFIX plus kind/size/unk/eos metadata, in a file
 * of their own (cr_vocab_save) or inside a training checkpoint. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_internal.h"

#define VOCAB_BYTES CR_ST_OPTIM_PREFIX "vocab.bytes"
#define VOCAB_OFFSETS CR_ST_OPTIM_PREFIX "vocab.offsets"
static const char *const vocab_keys[CR_VOCAB_N_META] = {"carousel.vocab.kind", "carousel.vocab.size",
                                                        "carousel.vocab.unk", "carousel.vocab.eos"};

cr_status cr_vocab_blob_make(const cr_vocab *v, cr_vocab_blob *b)
{
    memset(b, 0, sizeof *b);
    int32_t n = (int32_t)cr_vocab_size(v);
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        cr_vocab_token(v, i, &len);
        total += (int64_t)len;
    }
    if (total > INT32_MAX)
        return cr_failure(CR_EINVAL, "vocabulary of %lld bytes is too large to save", (long long)total);
    b->data = malloc((size_t)(total + n + 1 + 1) * sizeof *b->data);
    if (!b->data) return cr_failure(CR_ENOMEM, "vocabulary: out of memory");
    int32_t *bytes = b->data, *off = b->data + total;
    off[0] = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *tok = cr_vocab_token(v, i, &len);
        for (size_t k = 0; k < len; k++) bytes[off[i] + (int64_t)k] = (unsigned char)tok[k];
        off[i + 1] = off[i] + (int32_t)len;
    }
    b->e[0] = (cr_st_entry){.name = VOCAB_BYTES,
                            .dtype = CR_I32,
                            .ndim = 1,
                            .shape = {total},
                            .data = bytes,
                            .nbytes = (size_t)total * 4};
    b->e[1] = (cr_st_entry){.name = VOCAB_OFFSETS,
                            .dtype = CR_I32,
                            .ndim = 1,
                            .shape = {n + 1},
                            .data = off,
                            .nbytes = (size_t)(n + 1) * 4};
    snprintf(b->val[0], sizeof b->val[0], "%s", cr_vocab_kind_of(v) == CR_VOCAB_CHAR ? "char" : "word");
    snprintf(b->val[1], sizeof b->val[1], "%d", (int)n);
    snprintf(b->val[2], sizeof b->val[2], "%d", (int)cr_vocab_unk(v));
    snprintf(b->val[3], sizeof b->val[3], "%d", (int)cr_vocab_eos(v));
    for (int i = 0; i < CR_VOCAB_N_META; i++) {
        b->kv[2 * i] = vocab_keys[i];
        b->kv[2 * i + 1] = b->val[i];
    }
    return CR_OK;
}

void cr_vocab_blob_free(cr_vocab_blob *b)
{
    free(b->data);
    b->data = NULL;
}

/* A decimal integer in [lo, hi] filling the whole string. */
static bool parse_int(const char *s, long long lo, long long hi, long long *out)
{
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || *end || x < lo || x > hi) return false;
    *out = x;
    return true;
}

cr_status cr_vocab_from_file(const cr_st_file *f, cr_vocab **out)
{
    const cr_st_entry *eb = cr_st_find(f, VOCAB_BYTES), *eo = cr_st_find(f, VOCAB_OFFSETS);
    const char *kind_s = cr_st_meta_get(f, vocab_keys[0]);
    if (!eb || !eo || !kind_s) return cr_failure(CR_EMISMATCH, "no vocabulary in the file");
    cr_vocab_kind kind;
    if (strcmp(kind_s, "char") == 0)
        kind = CR_VOCAB_CHAR;
    else if (strcmp(kind_s, "word") == 0)
        kind = CR_VOCAB_WORD;
    else
        return cr_failure(CR_EFORMAT, "vocabulary kind '%s' is neither 'char' nor 'word'",
                          cr_escape(kind_s).s);
    long long size, unk, eos;
    if (!parse_int(cr_st_meta_get(f, vocab_keys[1]), 0, INT32_MAX - 1, &size) ||
        !parse_int(cr_st_meta_get(f, vocab_keys[2]), -1, INT32_MAX, &unk) ||
        !parse_int(cr_st_meta_get(f, vocab_keys[3]), -1, INT32_MAX, &eos))
        return cr_failure(CR_EFORMAT, "vocabulary metadata size/unk/eos missing or not integers");
    if (eb->dtype != CR_I32 || eb->ndim != 1 || eo->dtype != CR_I32 || eo->ndim != 1 ||
        eo->shape[0] != size + 1)
        return cr_failure(CR_EFORMAT, "vocabulary tensors must be I32 [bytes] and I32 [size+1] (size %lld)",
                          size);
    int64_t total = eb->shape[0];
    char *bytes = malloc((size_t)(total ? total : 1));
    int64_t *off = malloc((size_t)(size + 1) * sizeof *off);
    cr_status st = CR_OK;
    if (!bytes || !off) {
        st = cr_failure(CR_ENOMEM, "vocabulary: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < total; i++) {
        int32_t x;
        memcpy(&x, (const char *)eb->data + 4 * i, 4);
        if (x < 0 || x > 255) {
            st = cr_failure(CR_EFORMAT, "vocabulary byte %lld is %d, not in 0..255", (long long)i, (int)x);
            goto done;
        }
        bytes[i] = (char)(unsigned char)x;
    }
    for (int64_t i = 0; i <= size; i++) {
        int32_t x;
        memcpy(&x, (const char *)eo->data + 4 * i, 4);
        off[i] = x;
        bool ok = i == 0 ? x == 0 : x >= off[i - 1] && x <= total;
        if (ok && i == size) ok = x == total;
        if (!ok) {
            st = cr_failure(CR_EFORMAT, "vocabulary offsets must rise from 0 to %lld (offset %lld is %d)",
                            (long long)total, (long long)i, (int)x);
            goto done;
        }
    }
    st = cr_vocab_init_tokens(out, kind, bytes, off, (int32_t)size, (int32_t)unk, (int32_t)eos);
    if (st == CR_EINVAL) st = CR_EFORMAT; /* tokens that make no vocabulary: the file is bad */
done:
    free(bytes);
    free(off);
    return st;
}

cr_status cr_vocab_save(const cr_vocab *v, const char *path)
{
    if (!v || !path) cr_error("cr_vocab_save: %s is NULL", v ? "path" : "vocabulary");
    cr_vocab_blob b;
    cr_status st = cr_vocab_blob_make(v, &b);
    if (st != CR_OK) return cr_failure(st, "%s: %s", path, cr_last_error());
    const char *kv[2 * CR_VOCAB_N_META + 2] = {"carousel.format", "vocab-1"};
    memcpy(kv + 2, b.kv, sizeof b.kv);
    st = cr_st_write(path, b.e, 2, kv, CR_VOCAB_N_META + 1);
    cr_vocab_blob_free(&b);
    return st;
}

cr_status cr_vocab_load(const char *path, cr_vocab **out)
{
    if (!path || !out) cr_error("cr_vocab_load: %s is NULL", path ? "out" : "path");
    cr_st_file *f = NULL;
    cr_status st = cr_st_read(path, &f);
    if (st != CR_OK) return st;
    st = cr_vocab_from_file(f, out);
    cr_st_file_free(f);
    if (st != CR_OK) return cr_failure(st, "%s: %s", path, cr_last_error());
    return CR_OK;
}
