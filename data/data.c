/* Data utilities: character and word vocabularies (build, encode, decode),
 * reading text files, a Philox-driven Fisher-Yates shuffle, padded batches of
 * variable-length sequences and windows over one stream. Only tensor/ below. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data.h"

/* ---- vocabularies ------------------------------------------------------------ */

struct cr_vocab {
    cr_vocab_kind kind;
    int32_t n;            /* tokens */
    char *bytes;          /* every token's bytes, concatenated */
    int64_t *off;         /* [n+1] token i is bytes[off[i] .. off[i+1]) */
    int32_t unk, eos;     /* special ids, -1 when absent */
    int32_t byte_id[256]; /* char: id of each byte, -1 if absent */
    int32_t *table;       /* word: open-addressing hash of ids, -1 empty */
    size_t table_cap;     /* a power of two >= 2n */
};

static const char UNK[] = "<unk>", EOS[] = "<eos>";

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static uint64_t fnv1a(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211u;
    return h;
}

static bool tok_eq(const cr_vocab *v, int32_t id, const char *s, size_t len)
{
    size_t l = (size_t)(v->off[id + 1] - v->off[id]);
    return l == len && memcmp(v->bytes + v->off[id], s, len) == 0;
}

int32_t cr_vocab_id(const cr_vocab *v, const char *token, size_t len)
{
    if (!v) cr_error("cr_vocab_id: vocabulary is NULL");
    if (v->kind == CR_VOCAB_CHAR) return len == 1 ? v->byte_id[(unsigned char)token[0]] : -1;
    size_t mask = v->table_cap - 1;
    for (size_t h = fnv1a(token, len) & mask;; h = (h + 1) & mask) {
        int32_t id = v->table[h];
        if (id < 0) return -1;
        if (tok_eq(v, id, token, len)) return id;
    }
}

void cr_vocab_free(cr_vocab *v)
{
    if (!v) return;
    free(v->bytes);
    free(v->off);
    free(v->table);
    free(v);
}

/* Build a vocabulary that takes ownership of bytes and off (malloc'd), check
 * the tokens (distinct; one byte each for a char vocabulary) and index them.
 * Frees bytes and off on failure. */
static cr_status vocab_make(cr_vocab_kind kind, char *bytes, int64_t *off, int32_t n, int32_t unk,
                            int32_t eos, cr_vocab **out)
{
    cr_vocab *v = calloc(1, sizeof *v);
    if (!v) {
        free(bytes);
        free(off);
        return cr_failure(CR_ENOMEM, "vocabulary: out of memory");
    }
    *v = (cr_vocab){.kind = kind, .n = n, .bytes = bytes, .off = off, .unk = unk, .eos = eos};
    for (int i = 0; i < 256; i++) v->byte_id[i] = -1;
    if (kind == CR_VOCAB_CHAR) {
        for (int32_t i = 0; i < n; i++) {
            int64_t tl = off[i + 1] - off[i];
            if (tl != 1) {
                cr_vocab_free(v);
                return cr_failure(CR_EINVAL, "char vocabulary: token %d is %lld bytes long, not 1", (int)i,
                                  (long long)tl);
            }
            unsigned char c = (unsigned char)bytes[off[i]];
            if (v->byte_id[c] >= 0) {
                cr_vocab_free(v);
                return cr_failure(CR_EINVAL, "char vocabulary: byte 0x%02x appears twice", c);
            }
            v->byte_id[c] = i;
        }
    } else {
        size_t cap = 16;
        while (cap < 2 * (size_t)n) cap *= 2;
        v->table = malloc(cap * sizeof *v->table);
        if (!v->table) {
            cr_vocab_free(v);
            return cr_failure(CR_ENOMEM, "vocabulary: out of memory");
        }
        v->table_cap = cap;
        memset(v->table, 0xff, cap * sizeof *v->table); /* all -1 */
        for (int32_t i = 0; i < n; i++) {
            const char *s = bytes + off[i];
            size_t len = (size_t)(off[i + 1] - off[i]);
            if (len == 0) {
                cr_vocab_free(v);
                return cr_failure(CR_EINVAL, "word vocabulary: token %d is empty", (int)i);
            }
            size_t h = fnv1a(s, len) & (cap - 1);
            for (; v->table[h] >= 0; h = (h + 1) & (cap - 1))
                if (tok_eq(v, v->table[h], s, len)) {
                    int32_t first = v->table[h];
                    cr_vocab_free(v);
                    return cr_failure(CR_EINVAL, "word vocabulary: tokens %d and %d are equal", (int)first,
                                      (int)i);
                }
            v->table[h] = i;
        }
    }
    if (unk < -1 || unk >= n || eos < -1 || eos >= n || (kind == CR_VOCAB_WORD && (unk < 0 || eos < 0))) {
        cr_vocab_free(v);
        return cr_failure(CR_EINVAL, "vocabulary of %d tokens: bad <unk> id %d or <eos> id %d", (int)n,
                          (int)unk, (int)eos);
    }
    *out = v;
    return CR_OK;
}

cr_vocab *cr_vocab_init_chars(const char *text, size_t len)
{
    if (!text && len) cr_error("cr_vocab_init_chars: text is NULL");
    bool seen[256] = {false};
    for (size_t i = 0; i < len; i++) seen[(unsigned char)text[i]] = true;
    char *bytes = cr_xmalloc(256);
    int64_t *off = cr_xmalloc(257 * sizeof *off);
    int32_t n = 0;
    off[0] = 0;
    for (int c = 0; c < 256; c++)
        if (seen[c]) {
            bytes[n] = (char)c;
            n++;
            off[n] = n;
        }
    cr_vocab *v = NULL;
    if (vocab_make(CR_VOCAB_CHAR, bytes, off, n, -1, -1, &v) != CR_OK)
        cr_error("cr_vocab_init_chars: %s", cr_last_error());
    return v;
}

/* A distinct word of the text while counting. */
typedef struct word_count {
    const char *s;
    size_t len;
    int64_t count;
} word_count;

/* Most frequent first, then byte order (shorter first on a common prefix). */
static int cmp_word_count(const void *pa, const void *pb)
{
    const word_count *a = pa, *b = pb;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    size_t l = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, l);
    if (c) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* Next word of text[*pos..len): sets *s, *wlen and returns 1; returns 2 for a
 * newline (<eos>), 0 at the end. */
static int next_word(const char *text, size_t len, size_t *pos, const char **s, size_t *wlen)
{
    size_t i = *pos;
    while (i < len && is_space((unsigned char)text[i]) && text[i] != '\n') i++;
    if (i == len) {
        *pos = i;
        return 0;
    }
    if (text[i] == '\n') {
        *pos = i + 1;
        return 2;
    }
    size_t j = i;
    while (j < len && !is_space((unsigned char)text[j])) j++;
    *s = text + i;
    *wlen = j - i;
    *pos = j;
    return 1;
}

static bool is_special(const char *s, size_t len)
{
    return (len == 5 && memcmp(s, UNK, 5) == 0) || (len == 5 && memcmp(s, EOS, 5) == 0);
}

cr_vocab *cr_vocab_init_words(const char *text, size_t len, int64_t min_count, int64_t max_size)
{
    if (!text && len) cr_error("cr_vocab_init_words: text is NULL");
    if (max_size < 0 || max_size == 1 || max_size == 2 || max_size > INT32_MAX)
        cr_error("cr_vocab_init_words: max_size = %lld must be 0 (no limit) or in 3..%d (it counts <unk> and "
                 "<eos>)",
                 (long long)max_size, INT32_MAX);
    /* count distinct words with a growing open-addressing table */
    size_t cap = 1024, nw = 0, wcap = 256;
    int64_t *table = cr_xmalloc(cap * sizeof *table);
    memset(table, 0xff, cap * sizeof *table);
    word_count *w = cr_xmalloc(wcap * sizeof *w);
    size_t pos = 0, wl = 0;
    const char *s = NULL;
    int kind;
    while ((kind = next_word(text, len, &pos, &s, &wl)) != 0) {
        if (kind != 1 || is_special(s, wl)) continue;
        size_t h = fnv1a(s, wl) & (cap - 1);
        while (table[h] >= 0 && !(w[table[h]].len == wl && memcmp(w[table[h]].s, s, wl) == 0))
            h = (h + 1) & (cap - 1);
        if (table[h] >= 0) {
            w[table[h]].count++;
            continue;
        }
        if (nw == wcap) {
            wcap *= 2;
            w = cr_xrealloc(w, wcap * sizeof *w);
        }
        w[nw] = (word_count){.s = s, .len = wl, .count = 1};
        table[h] = (int64_t)nw++;
        if (2 * nw > cap) { /* rehash */
            cap *= 2;
            table = cr_xrealloc(table, cap * sizeof *table);
            memset(table, 0xff, cap * sizeof *table);
            for (size_t k = 0; k < nw; k++) {
                size_t g = fnv1a(w[k].s, w[k].len) & (cap - 1);
                while (table[g] >= 0) g = (g + 1) & (cap - 1);
                table[g] = (int64_t)k;
            }
        }
    }
    free(table);
    qsort(w, nw, sizeof *w, cmp_word_count);
    size_t keep = 0;
    while (keep < nw && w[keep].count >= min_count) keep++;
    if (max_size > 0 && keep > (size_t)max_size - 2) keep = (size_t)max_size - 2;
    if (keep > (size_t)INT32_MAX - 2)
        cr_error("cr_vocab_init_words: %zu distinct words do not fit i32 ids", keep);
    size_t total = 10;
    for (size_t k = 0; k < keep; k++) total += w[k].len;
    char *bytes = cr_xmalloc(total);
    int64_t *off = cr_xmalloc((keep + 3) * sizeof *off);
    memcpy(bytes, UNK, 5);
    memcpy(bytes + 5, EOS, 5);
    off[0] = 0, off[1] = 5, off[2] = 10;
    for (size_t k = 0; k < keep; k++) {
        memcpy(bytes + off[k + 2], w[k].s, w[k].len);
        off[k + 3] = off[k + 2] + (int64_t)w[k].len;
    }
    free(w);
    cr_vocab *v = NULL;
    if (vocab_make(CR_VOCAB_WORD, bytes, off, (int32_t)keep + 2, 0, 1, &v) != CR_OK)
        cr_error("cr_vocab_init_words: %s", cr_last_error());
    return v;
}

cr_status cr_vocab_init_tokens(cr_vocab **out, cr_vocab_kind kind, const char *bytes, const int64_t *offsets,
                               int32_t n, int32_t unk, int32_t eos)
{
    if (!out || n < 0 || (n > 0 && !offsets) || (kind != CR_VOCAB_CHAR && kind != CR_VOCAB_WORD))
        cr_error("cr_vocab_init_tokens: out %p, kind %d, %d tokens, offsets %p", (void *)out, (int)kind,
                 (int)n, (const void *)offsets);
    *out = NULL;
    int64_t total = n > 0 ? offsets[n] : 0;
    if (n > 0 && offsets[0] != 0)
        return cr_failure(CR_EINVAL, "vocabulary offsets must start at 0, not %lld", (long long)offsets[0]);
    for (int32_t i = 0; i < n; i++)
        if (offsets[i + 1] < offsets[i])
            return cr_failure(CR_EINVAL, "vocabulary offsets must not fall (offset %d is %lld, then %lld)",
                              (int)i, (long long)offsets[i], (long long)offsets[i + 1]);
    if (total > 0 && !bytes) cr_error("cr_vocab_init_tokens: bytes is NULL for %lld bytes", (long long)total);
    char *b = malloc((size_t)(total ? total : 1));
    int64_t *off = malloc(((size_t)n + 1) * sizeof *off);
    if (!b || !off) {
        free(b);
        free(off);
        return cr_failure(CR_ENOMEM, "vocabulary: out of memory");
    }
    if (total) memcpy(b, bytes, (size_t)total);
    off[0] = 0;
    if (n > 0) memcpy(off, offsets, ((size_t)n + 1) * sizeof *off);
    return vocab_make(kind, b, off, n, unk, eos, out);
}

cr_vocab_kind cr_vocab_kind_of(const cr_vocab *v) { return v->kind; }
int64_t cr_vocab_size(const cr_vocab *v) { return v->n; }
int32_t cr_vocab_unk(const cr_vocab *v) { return v->unk; }
int32_t cr_vocab_eos(const cr_vocab *v) { return v->eos; }

const char *cr_vocab_token(const cr_vocab *v, int32_t id, size_t *len)
{
    if (!v) cr_error("cr_vocab_token: vocabulary is NULL");
    if (id < 0 || id >= v->n) cr_error("cr_vocab_token: id %d is out of range [0, %d)", (int)id, (int)v->n);
    if (len) *len = (size_t)(v->off[id + 1] - v->off[id]);
    return v->bytes + v->off[id];
}

cr_status cr_vocab_encode(const cr_vocab *v, const char *text, size_t len, int32_t *out, int64_t cap,
                          int64_t *count)
{
    if (!v) cr_error("cr_vocab_encode: vocabulary is NULL");
    if (!text && len) cr_error("cr_vocab_encode: text is NULL");
    if (cap < 0 || (cap > 0 && !out)) cr_error("cr_vocab_encode: out is NULL with cap %lld", (long long)cap);
    if (!count) cr_error("cr_vocab_encode: count is NULL");
    int64_t n = 0;
    if (v->kind == CR_VOCAB_CHAR) {
        for (size_t i = 0; i < len; i++) {
            int32_t id = v->byte_id[(unsigned char)text[i]];
            if (id < 0)
                return cr_failure(CR_EINVAL, "byte 0x%02x at offset %zu is not in the vocabulary",
                                  (unsigned char)text[i], i);
            if (n < cap) out[n] = id;
            n++;
        }
        *count = n;
        return CR_OK;
    }
    size_t pos = 0, wl = 0;
    const char *s = NULL;
    int kind;
    while ((kind = next_word(text, len, &pos, &s, &wl)) != 0) {
        int32_t id = v->eos;
        if (kind == 1) {
            id = cr_vocab_id(v, s, wl);
            if (id < 0) id = v->unk;
        }
        if (n < cap) out[n] = id;
        n++;
    }
    *count = n;
    return CR_OK;
}

cr_status cr_vocab_encode_bytes(const cr_vocab *v, const char *text, size_t len, uint8_t *out)
{
    if (!v) cr_error("cr_vocab_encode_bytes: vocabulary is NULL");
    if (v->kind != CR_VOCAB_CHAR || v->n > 256)
        cr_error("cr_vocab_encode_bytes: needs a char vocabulary (this one is a %s vocabulary of %d tokens)",
                 v->kind == CR_VOCAB_CHAR ? "char" : "word", (int)v->n);
    if (len && (!text || !out)) cr_error("cr_vocab_encode_bytes: text or out is NULL");
    /* Byte by byte, reading text[i] before writing out[i]: out may be text. */
    for (size_t i = 0; i < len; i++) {
        int32_t id = v->byte_id[(unsigned char)text[i]];
        if (id < 0)
            return cr_failure(CR_EINVAL, "byte 0x%02x at offset %zu is not in the vocabulary",
                              (unsigned char)text[i], i);
        out[i] = (uint8_t)id;
    }
    return CR_OK;
}

size_t cr_vocab_decode(const cr_vocab *v, const int32_t *ids, int64_t n, char *out, size_t cap)
{
    if (!v) cr_error("cr_vocab_decode: vocabulary is NULL");
    if (n < 0 || (n > 0 && !ids)) cr_error("cr_vocab_decode: %lld ids at NULL", (long long)n);
    if (cap > 0 && !out) cr_error("cr_vocab_decode: out is NULL with cap %zu", cap);
    size_t k = 0;
#define PUT(c)                                                                                               \
    do {                                                                                                     \
        if (k + 1 < cap) out[k] = (c);                                                                       \
        k++;                                                                                                 \
    } while (0)
    bool line_start = true;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= v->n)
            cr_error("cr_vocab_decode: ids[%lld] = %d is out of range [0, %d)", (long long)i, (int)id,
                     (int)v->n);
        if (v->kind == CR_VOCAB_WORD && id == v->eos) {
            PUT('\n');
            line_start = true;
            continue;
        }
        if (v->kind == CR_VOCAB_WORD && !line_start) PUT(' ');
        for (int64_t j = v->off[id]; j < v->off[id + 1]; j++) PUT(v->bytes[j]);
        line_start = false;
    }
#undef PUT
    if (cap > 0) out[k < cap ? k : cap - 1] = '\0';
    return k;
}

/* ---- reading files ------------------------------------------------------------- */

cr_status cr_read_file(const char *path, char **text, size_t *len)
{
    if (!path || !text || !len) cr_error("cr_read_file: path, text and len must not be NULL");
    FILE *fp = fopen(path, "rb");
    if (!fp) return cr_failure(CR_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    size_t cap = 1 << 16;
    if (fstat(fileno(fp), &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size < SIZE_MAX - 1)
        cap = (size_t)sb.st_size + 1;
    char *buf = malloc(cap);
    size_t n = 0;
    for (;;) {
        if (!buf) {
            fclose(fp);
            return cr_failure(CR_ENOMEM, "%s: out of memory (%zu bytes)", path, cap);
        }
        n += fread(buf + n, 1, cap - n, fp);
        if (n < cap) break; /* end of file or error */
        if (cap > SIZE_MAX / 2) {
            free(buf);
            fclose(fp);
            return cr_failure(CR_ENOMEM, "%s: file too large", path);
        }
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb) free(buf);
        buf = nb;
    }
    if (ferror(fp)) {
        int e = errno;
        free(buf);
        fclose(fp);
        return cr_failure(CR_EIO, "%s: read error: %s", path, strerror(e));
    }
    fclose(fp);
    buf[n] = '\0'; /* n < cap */
    *text = buf;
    *len = n;
    return CR_OK;
}

/* ---- shuffling ------------------------------------------------------------------- */

/* Uniform in [0, k) (k >= 1): 64 bits per try from one Philox block (two
 * tries per block), rejecting the top sliver that would bias x mod k. */
static uint64_t draw_below(cr_rng *r, uint64_t k)
{
    uint64_t rem = (UINT64_MAX % k + 1) % k; /* 2^64 mod k */
    for (;;) {
        uint32_t w[4];
        cr_philox(r->seed, r->offset++, w);
        uint64_t x = (uint64_t)w[0] << 32 | w[1], y = (uint64_t)w[2] << 32 | w[3];
        if (rem == 0 || x < (uint64_t)0 - rem) return x % k;
        if (y < (uint64_t)0 - rem) return y % k;
    }
}

void cr_shuffle(int64_t *items, int64_t n, cr_rng *r)
{
    if (n < 0 || (n > 0 && !items) || !r)
        cr_error("cr_shuffle: %lld items at %p, rng %p", (long long)n, (void *)items, (void *)r);
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates: items[i] <- a uniform pick of [0, i] */
        int64_t j = (int64_t)draw_below(r, (uint64_t)i + 1);
        int64_t t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
}

void cr_permutation(int64_t *out, int64_t n, cr_rng *r)
{
    if (n < 0 || (n > 0 && !out)) cr_error("cr_permutation: %lld items at %p", (long long)n, (void *)out);
    for (int64_t i = 0; i < n; i++) out[i] = i;
    cr_shuffle(out, n, r);
}

/* ---- batches and windows ------------------------------------------------------- */

void cr_batch_pad_new(int64_t B, const int32_t *const *seqs, const int64_t *lens, int32_t pad,
                      cr_tensor **idx, cr_tensor **lengths)
{
    if (B < 1 || !seqs || !lens || !idx || !lengths)
        cr_error("cr_batch_pad_new: B = %lld, seqs, lens, idx and lengths must be given", (long long)B);
    int64_t T = 1;
    for (int64_t b = 0; b < B; b++) {
        if (lens[b] < 0 || lens[b] > INT32_MAX || (lens[b] > 0 && !seqs[b]))
            cr_error("cr_batch_pad_new: sequence %lld has length %lld at %p", (long long)b,
                     (long long)lens[b], (const void *)seqs[b]);
        if (lens[b] > T) T = lens[b];
    }
    cr_tensor *x = cr_tensor_new(CR_I32, CR_SHAPE(B, T));
    cr_tensor *l = cr_tensor_new(CR_I32, CR_SHAPE(B));
    int32_t *xd = x->data, *ld = l->data;
    for (int64_t b = 0; b < B; b++) {
        if (lens[b]) memcpy(xd + b * T, seqs[b], (size_t)lens[b] * sizeof *xd);
        for (int64_t t = lens[b]; t < T; t++) xd[b * T + t] = pad;
        ld[b] = (int32_t)lens[b];
    }
    *idx = x;
    *lengths = l;
}

/* x, y: contiguous i32 [B,T] of one shape. */
static void check_xy(const char *op, const cr_tensor *x, const cr_tensor *y)
{
    char s1[64], s2[64];
    if (!x || !y) cr_error("%s: x and y must not be NULL", op);
    if (x->dtype != CR_I32 || y->dtype != CR_I32 || x->ndim != 2 || !cr_same_shape(x, y) ||
        !cr_is_contiguous(x) || !cr_is_contiguous(y) || x->shape[1] < 1)
        cr_error("%s: x %s %s and y %s %s must be contiguous i32 [B,T] of one shape", op,
                 cr_dtype_name(x->dtype), cr_shape_str(s1, sizeof s1, x->ndim, x->shape),
                 cr_dtype_name(y->dtype), cr_shape_str(s2, sizeof s2, y->ndim, y->shape));
}

void cr_windows_fill(cr_tensor *x, cr_tensor *y, const int32_t *stream, int64_t n, const int64_t *starts)
{
    check_xy("cr_windows_fill", x, y);
    if (!stream || !starts) cr_error("cr_windows_fill: stream and starts must not be NULL");
    int64_t B = x->shape[0], T = x->shape[1];
    int32_t *xd = x->data, *yd = y->data;
    for (int64_t b = 0; b < B; b++) {
        int64_t s = starts[b];
        if (s < 0 || s > n - 1 - T)
            cr_error(
                "cr_windows_fill: window %lld starts at %lld; with T = %lld it needs start + T < n = %lld",
                (long long)b, (long long)s, (long long)T, (long long)n);
        memcpy(xd + b * T, stream + s, (size_t)T * sizeof *xd);
        memcpy(yd + b * T, stream + s + 1, (size_t)T * sizeof *yd);
    }
    cr_tensor_bump_version(x);
    cr_tensor_bump_version(y);
}

int64_t cr_windows_count(int64_t n, int64_t T, int64_t stride)
{
    if (T < 1 || stride < 1 || n < 0)
        cr_error("cr_windows_count: n = %lld, T = %lld, stride = %lld (need n >= 0, T and stride >= 1)",
                 (long long)n, (long long)T, (long long)stride);
    return n < T + 1 ? 0 : (n - T - 1) / stride + 1;
}

int64_t cr_stream_chunks(int64_t n, int64_t B, int64_t T)
{
    if (B < 1 || T < 1 || n < 0)
        cr_error("cr_stream_chunks: n = %lld, B = %lld, T = %lld (need n >= 0, B and T >= 1)", (long long)n,
                 (long long)B, (long long)T);
    return n < 2 ? 0 : (n - 1) / B / T;
}

void cr_stream_chunk(cr_tensor *x, cr_tensor *y, const int32_t *stream, int64_t n, int64_t c)
{
    check_xy("cr_stream_chunk", x, y);
    if (!stream) cr_error("cr_stream_chunk: stream is NULL");
    int64_t B = x->shape[0], T = x->shape[1], nc = cr_stream_chunks(n, B, T);
    if (c < 0 || c >= nc)
        cr_error("cr_stream_chunk: chunk %lld of %lld (n = %lld, B = %lld, T = %lld)", (long long)c,
                 (long long)nc, (long long)n, (long long)B, (long long)T);
    int64_t R = (n - 1) / B;
    int32_t *xd = x->data, *yd = y->data;
    for (int64_t b = 0; b < B; b++) {
        const int32_t *src = stream + b * R + c * T;
        memcpy(xd + b * T, src, (size_t)T * sizeof *xd);
        memcpy(yd + b * T, src + 1, (size_t)T * sizeof *yd);
    }
    cr_tensor_bump_version(x);
    cr_tensor_bump_version(y);
}

void cr_stream_chunk_u8(cr_tensor *x, cr_tensor *y, const uint8_t *stream, int64_t n, int64_t c)
{
    check_xy("cr_stream_chunk_u8", x, y);
    if (!stream) cr_error("cr_stream_chunk_u8: stream is NULL");
    int64_t B = x->shape[0], T = x->shape[1], nc = cr_stream_chunks(n, B, T);
    if (c < 0 || c >= nc)
        cr_error("cr_stream_chunk_u8: chunk %lld of %lld (n = %lld, B = %lld, T = %lld)", (long long)c,
                 (long long)nc, (long long)n, (long long)B, (long long)T);
    int64_t R = (n - 1) / B;
    int32_t *xd = x->data, *yd = y->data;
    for (int64_t b = 0; b < B; b++) {
        const uint8_t *src = stream + b * R + c * T;
        for (int64_t t = 0; t < T; t++) {
            xd[b * T + t] = src[t];
            yd[b * T + t] = src[t + 1];
        }
    }
    cr_tensor_bump_version(x);
    cr_tensor_bump_version(y);
}
