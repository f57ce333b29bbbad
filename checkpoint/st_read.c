/* The safetensors reader: a strict, bounded, thread-safe parser for the fixed
 * shape of the header (no JSON library, no tree, no global state), the file
 * and memory entry points, and the accessors of a parsed file. */
#include "checkpoint_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The header length is encoded byte by byte, so it is portable. Tensor data
 * is copied raw: safetensors stores little-endian elements, which is what an
 * x86_64 or arm64 host holds in memory. A big-endian host would have to
 * byte-swap every element; refuse to build there rather than write files no
 * one else can read. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint/st_read.c hands out tensor data raw and needs a little-endian host"
#endif

typedef struct st_meta {
    const char *key;
    const char *value;
} st_meta;

struct cr_st_file {
    cr_st_entry *entries; /* n, ordered by data offset */
    size_t n;
    const cr_st_entry **by_name; /* n, sorted by strcmp on name, for bsearch */
    st_meta *meta;
    size_t n_meta;
    char *pool;         /* every name, key and value, NUL-terminated */
    unsigned char *buf; /* the data section the entries point into */
    size_t data_bytes;
};

/*
 * The header has a fixed shape: one object whose values are tensor entries
 * (objects with exactly "dtype": string, "shape": [integers], "data_offsets":
 * [integer, integer]) or the "__metadata__" object of strings. A parser that
 * knows that shape needs no tree, no recursion and no global state: it reads
 * the bytes once, keeps only what the file will hold (one entry per tensor,
 * the decoded strings) and stops at the first byte that cannot belong to a
 * valid header, e.g. at the 9th dim of a shape or a '[' where a dtype should be.
 * Reading a file, it parses each chunk of the header as it arrives, so a
 * hostile header is rejected after reading up to its first bad byte, not all
 * of it. Memory: strings are decoded in place, into the header buffer itself:
 * a decoded JSON string (plus its NUL) is never longer than its literal, so
 * the bytes written stay behind the bytes read, and the buffer is then shrunk
 * to the strings kept. Besides it, one cr_st_entry (96 bytes) and one pointer
 * per tensor, whose header text takes at least 50 bytes: about 2.2x the
 * header for typical names, at most about three times.
 */

/* Bytes of the header read per chunk while parsing a file (the fuzz harness
 * sets a few bytes, to cross a chunk boundary everywhere). */
#ifndef CR_ST_CHUNK
#define CR_ST_CHUNK ((size_t)1 << 20)
#endif

typedef struct st_parser {
    const char *start, *p, *end; /* end: the bytes read so far */
    const char *limit;           /* start + the header's length */
    int fd;                      /* the file the rest comes from, -1 when all is there */
    int io_err;                  /* errno of a failed read (0: the file was shorter) */
    bool io_failed;
    char *pool; /* = start: decoded strings, written behind p; entries hold offsets into it until the end */
    size_t pool_len;
    cr_st_entry *e; /* e[i].name: pool offset; e[i].data: begin offset */
    size_t n, cap;
    st_meta *meta; /* key/value: pool offsets */
    size_t n_meta, meta_cap;
    uint64_t data_len;
} st_parser;

/* Read the next chunk of the header from the file; false when the header is
 * all there or the read failed (P->io_failed: reported by the caller). */
static bool st_more(st_parser *P)
{
    if (P->end == P->limit || P->fd < 0 || P->io_failed) return false;
    size_t want = (size_t)(P->limit - P->end);
    if (want > CR_ST_CHUNK) want = CR_ST_CHUNK;
    ssize_t r;
    do {
        r = read(P->fd, P->pool + (P->end - P->start), want);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) {
        P->io_failed = true;
        P->io_err = r < 0 ? errno : 0;
        return false;
    }
    P->end += r;
    return true;
}

/* Bytes available at s, reading until there are k (fewer at the header's end). */
static size_t st_have(st_parser *P, const char *s, size_t k)
{
    while ((size_t)(P->end - s) < k && st_more(P)) {}
    return (size_t)(P->end - s);
}

static cr_status st_bad_json(const st_parser *P)
{
    size_t at = (size_t)(P->p - P->start);
    if (P->p < P->end && *P->p == '\0')
        return cr_failure(CR_EFORMAT, "header has a NUL byte at offset %zu", at);
    return cr_failure(CR_EFORMAT, "header is not valid JSON (near byte %zu of %zu)", at,
                      (size_t)(P->limit - P->start));
}

static void st_ws(st_parser *P)
{
    while ((P->p < P->end || st_more(P)) && (*P->p == ' ' || *P->p == '\t' || *P->p == '\n' || *P->p == '\r'))
        P->p++;
}

/* Is the next byte c (after whitespace)? Consumes it if so. */
static bool st_take(st_parser *P, char c)
{
    st_ws(P);
    if (P->p < P->end && *P->p == c) {
        P->p++;
        return true;
    }
    return false;
}

static bool st_peek(st_parser *P, char c)
{
    st_ws(P);
    return P->p < P->end && *P->p == c;
}

/* Does a JSON value other than an object start here? (A wrong type is
 * reported as such; anything else is not JSON at all.) */
static bool st_value_start(st_parser *P)
{
    static const char *const lit[] = {"null", "true", "false"};
    st_ws(P);
    if (P->p >= P->end) return false;
    char c = *P->p;
    if (c == '[' || c == '"' || c == '-' || (c >= '0' && c <= '9')) return true;
    for (int i = 0; i < 3; i++)
        if (st_have(P, P->p, strlen(lit[i])) >= strlen(lit[i]) && memcmp(P->p, lit[i], strlen(lit[i])) == 0)
            return true;
    return false;
}

static int st_hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A JSON string at P->p (which is '"'), decoded to UTF-8 and NUL-terminated
 * at P->pool + *off. Rejects raw control characters, bad escapes, invalid
 * UTF-8, lone surrogates and \u0000 (names are C strings). */
static cr_status st_string(st_parser *P, size_t *off)
{
    const char *s = P->p + 1;
    char *o = P->pool + P->pool_len;
    *off = P->pool_len;
    while ((s < P->end || st_more(P)) && *s != '"') {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20) {
            P->p = s;
            return st_bad_json(P);
        }
        if (c >= 0x80) {
            size_t k = cr_st_utf8_seq((const unsigned char *)s, st_have(P, s, 4));
            if (!k)
                return cr_failure(CR_EFORMAT, "header is not valid UTF-8 (byte %zu)", (size_t)(s - P->start));
            memmove(o, s, k); /* o < s, and they may overlap */
            o += k;
            s += k;
            continue;
        }
        if (c != '\\') {
            *o++ = (char)c;
            s++;
            continue;
        }
        if (st_have(P, s, 2) < 2) { /* a backslash as the header's last byte */
            P->p = s;
            return st_bad_json(P);
        }
        char x = s[1];
        s += 2;
        switch (x) {
        case '"': *o++ = '"'; continue;
        case '\\': *o++ = '\\'; continue;
        case '/': *o++ = '/'; continue;
        case 'b': *o++ = '\b'; continue;
        case 'f': *o++ = '\f'; continue;
        case 'n': *o++ = '\n'; continue;
        case 'r': *o++ = '\r'; continue;
        case 't': *o++ = '\t'; continue;
        case 'u': break;
        default: P->p = s - 2; return st_bad_json(P);
        }
        long cp = st_have(P, s, 4) >= 4 ? st_hex4(s) : -1;
        if (cp < 0) {
            P->p = s - 2;
            return st_bad_json(P);
        }
        s += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a high surrogate needs its low half */
            long lo = st_have(P, s, 6) >= 6 && s[0] == '\\' && s[1] == 'u' ? st_hex4(s + 2) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF)
                return cr_failure(CR_EFORMAT, "header is not valid UTF-8 (byte %zu: lone surrogate \\u%04lx)",
                                  (size_t)(s - 6 - P->start), cp);
            s += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return cr_failure(CR_EFORMAT, "header is not valid UTF-8 (byte %zu: lone surrogate \\u%04lx)",
                              (size_t)(s - 6 - P->start), cp);
        } else if (cp == 0) {
            return cr_failure(CR_EFORMAT, "header string at byte %zu holds a NUL character (\\u0000)",
                              (size_t)(s - 6 - P->start));
        }
        /* UTF-8 of cp: never longer than the 6 or 12 bytes of its escape. */
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else if (cp < 0x800) {
            *o++ = (char)(0xC0 | cp >> 6);
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *o++ = (char)(0xE0 | cp >> 12);
            *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else {
            *o++ = (char)(0xF0 | cp >> 18);
            *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
            *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    if (s >= P->end) {
        P->p = P->end;
        return st_bad_json(P);
    }
    *o++ = '\0';
    P->pool_len = (size_t)(o - P->pool);
    P->p = s + 1;
    return CR_OK;
}

/* A non-negative JSON integer without fraction or exponent, at most
 * INT64_MAX; false (stopping at once) for anything else, including other
 * numbers ("1.0", "1e3", "-1") and a 10^6-digit literal. */
static bool st_uint(st_parser *P, uint64_t *out)
{
    st_ws(P);
    const char *s = P->p;
    if (s >= P->end || *s < '0' || *s > '9') return false;
    uint64_t v = 0;
    if (*s == '0') {
        s++;
    } else {
        for (; (s < P->end || st_more(P)) && *s >= '0' && *s <= '9'; s++) {
            unsigned d = (unsigned)(*s - '0');
            if (v > ((uint64_t)INT64_MAX - d) / 10) return false;
            v = v * 10 + d;
        }
    }
    if ((s < P->end || st_more(P)) && ((*s >= '0' && *s <= '9') || *s == '.' || *s == 'e' || *s == 'E'))
        return false;
    P->p = s;
    *out = v;
    return true;
}

/* A string into the pool that is dropped again (field names, dtypes). */
static cr_status st_scratch_string(st_parser *P, const char **s)
{
    size_t off;
    cr_status st = st_string(P, &off);
    if (st == CR_OK) {
        *s = P->pool + off;
        P->pool_len = off; /* the next string overwrites it */
    }
    return st;
}

static cr_status st_parse_tensor(st_parser *P, size_t name_off)
{
    /* The name, escaped for a message (it stays in the pool while we parse). */
#define NM (cr_escape(P->pool + name_off).s)
    if (!st_take(P, '{'))
        return st_value_start(P) ? cr_failure(CR_EFORMAT, "tensor '%s': entry is not an object", NM)
                                 : st_bad_json(P);
    cr_st_entry e = {0};
    uint64_t begin = 0, end = 0;
    bool have[3] = {false, false, false};
    static const char *const fields[3] = {"dtype", "shape", "data_offsets"};
    if (!st_take(P, '}')) {
        for (;;) {
            if (!st_peek(P, '"')) return st_bad_json(P);
            const char *k;
            cr_status st = st_scratch_string(P, &k);
            if (st != CR_OK) return st;
            int f = 0;
            while (f < 3 && strcmp(k, fields[f]) != 0) f++;
            if (f == 3) return cr_failure(CR_EFORMAT, "tensor '%s': unknown field '%s'", NM, cr_escape(k).s);
            if (have[f])
                return cr_failure(CR_EFORMAT, "tensor '%s': field '%s' appears twice", NM, fields[f]);
            have[f] = true;
            if (!st_take(P, ':')) return st_bad_json(P);
            if (f == 0) {
                if (!st_peek(P, '"'))
                    return st_value_start(P)
                               ? cr_failure(CR_EFORMAT, "tensor '%s': dtype is not a string", NM)
                               : st_bad_json(P);
                const char *dt;
                if ((st = st_scratch_string(P, &dt)) != CR_OK) return st;
                if (!cr_st_dtype_parse(dt, &e.dtype))
                    return cr_failure(CR_EFORMAT,
                                      "tensor '%s': unsupported dtype '%s' (carousel reads F32, F64, I32)",
                                      NM, cr_escape(dt).s);
            } else if (f == 1) {
                if (!st_take(P, '['))
                    return st_value_start(P) || st_peek(P, '{')
                               ? cr_failure(CR_EFORMAT, "tensor '%s': shape is not an array", NM)
                               : st_bad_json(P);
                if (!st_take(P, ']')) {
                    for (;;) {
                        if (e.ndim == CR_MAX_DIMS)
                            return cr_failure(CR_EFORMAT, "tensor '%s': shape has more than %d dims", NM,
                                              CR_MAX_DIMS);
                        uint64_t d;
                        if (!st_uint(P, &d))
                            return cr_failure(CR_EFORMAT,
                                              "tensor '%s': shape[%d] is not a non-negative integer", NM,
                                              e.ndim);
                        e.shape[e.ndim++] = (int64_t)d;
                        if (st_take(P, ']')) break;
                        if (!st_take(P, ',')) return st_bad_json(P);
                    }
                }
            } else {
                if (!(st_take(P, '[') && st_uint(P, &begin) && st_take(P, ',') && st_uint(P, &end) &&
                      st_take(P, ']')))
                    return cr_failure(
                        CR_EFORMAT, "tensor '%s': data_offsets is not an array of two non-negative integers",
                        NM);
            }
            if (st_take(P, '}')) break;
            if (!st_take(P, ',')) return st_bad_json(P);
        }
    }
    for (int f = 0; f < 3; f++)
        if (!have[f]) return cr_failure(CR_EFORMAT, "tensor '%s': missing field '%s'", NM, fields[f]);

    char sh[CR_ST_SHAPE_BUF];
    cr_shape_str(sh, sizeof sh, e.ndim, e.shape);
    uint64_t need;
    if (!cr_st_nbytes(e.dtype, e.ndim, e.shape, &need))
        return cr_failure(CR_EFORMAT, "tensor '%s': dtype %s shape %s overflows", NM,
                          cr_st_dtype_name(e.dtype), sh);
    unsigned long long b = begin, en = end;
    if (b > en)
        return cr_failure(CR_EFORMAT, "tensor '%s': data_offsets [%llu,%llu] begin after end", NM, b, en);
    if (en > P->data_len)
        return cr_failure(CR_EFORMAT,
                          "tensor '%s': data_offsets [%llu,%llu] end beyond the %llu-byte data section", NM,
                          b, en, (unsigned long long)P->data_len);
    if (en - b != need)
        return cr_failure(CR_EFORMAT,
                          "tensor '%s': data_offsets [%llu,%llu] but dtype %s shape %s needs %llu bytes", NM,
                          b, en, cr_st_dtype_name(e.dtype), sh, (unsigned long long)need);
    e.nbytes = (size_t)need;
    e.name = (const char *)(uintptr_t)name_off;
    e.data = (const void *)(uintptr_t)begin;
    if (P->n == P->cap) {
        size_t cap = P->cap ? 2 * P->cap : 16;
        cr_st_entry *ne = realloc(P->e, cap * sizeof *ne);
        if (!ne) return cr_failure(CR_ENOMEM, "out of memory");
        P->e = ne;
        P->cap = cap;
    }
    P->e[P->n++] = e;
    return CR_OK;
}
#undef NM

static cr_status st_parse_meta(st_parser *P)
{
    if (!st_take(P, '{'))
        return st_value_start(P) ? cr_failure(CR_EFORMAT, CR_ST_META_KEY " is not an object")
                                 : st_bad_json(P);
    if (st_take(P, '}')) return CR_OK;
    for (;;) {
        size_t k, v;
        if (!st_peek(P, '"')) return st_bad_json(P);
        cr_status st = st_string(P, &k);
        if (st != CR_OK) return st;
        if (!st_take(P, ':')) return st_bad_json(P);
        if (!st_peek(P, '"'))
            return st_value_start(P) || st_peek(P, '{')
                       ? cr_failure(CR_EFORMAT, CR_ST_META_KEY " value of '%s' is not a string",
                                    cr_escape(P->pool + k).s)
                       : st_bad_json(P);
        if ((st = st_string(P, &v)) != CR_OK) return st;
        if (P->n_meta == P->meta_cap) {
            size_t cap = P->meta_cap ? 2 * P->meta_cap : 16;
            st_meta *nm = realloc(P->meta, cap * sizeof *nm);
            if (!nm) return cr_failure(CR_ENOMEM, "out of memory");
            P->meta = nm;
            P->meta_cap = cap;
        }
        P->meta[P->n_meta++] = (st_meta){(const char *)(uintptr_t)k, (const char *)(uintptr_t)v};
        if (st_take(P, '}')) return CR_OK;
        if (!st_take(P, ',')) return st_bad_json(P);
    }
}

/* The whole header: one object of tensors and at most one __metadata__. */
static cr_status st_parse_object(st_parser *P)
{
    if (!st_peek(P, '{'))
        return st_value_start(P) ? cr_failure(CR_EFORMAT, "header is not a JSON object") : st_bad_json(P);
    if (!st_take(P, '{')) return st_bad_json(P);
    bool seen_meta = false;
    if (!st_take(P, '}')) {
        for (;;) {
            if (!st_peek(P, '"')) return st_bad_json(P);
            size_t k;
            cr_status st = st_string(P, &k);
            if (st != CR_OK) return st;
            if (!st_take(P, ':')) return st_bad_json(P);
            if (strcmp(P->pool + k, CR_ST_META_KEY) == 0) {
                if (seen_meta) return cr_failure(CR_EFORMAT, CR_ST_META_KEY " appears twice");
                seen_meta = true;
                P->pool_len = k;
                st = st_parse_meta(P);
            } else {
                st = st_parse_tensor(P, k);
            }
            if (st != CR_OK) return st;
            if (st_take(P, '}')) break;
            if (!st_take(P, ',')) return st_bad_json(P);
        }
    }
    st_ws(P); /* only JSON whitespace (the writer's padding) may follow */
    if (P->p < P->end && *P->p == '\0')
        return cr_failure(CR_EFORMAT, "header has a NUL byte at offset %zu", (size_t)(P->p - P->start));
    if (P->p != P->limit)
        return cr_failure(CR_EFORMAT, "header has bytes after the JSON object (byte %zu)",
                          (size_t)(P->p - P->start));
    return CR_OK;
}

static int st_cmp_range(const void *pa, const void *pb)
{
    const cr_st_entry *a = pa, *b = pb;
    uintptr_t ba = (uintptr_t)a->data, bb = (uintptr_t)b->data;
    if (ba != bb) return ba < bb ? -1 : 1;
    if (a->nbytes != b->nbytes) return a->nbytes < b->nbytes ? -1 : 1;
    return strcmp(a->name, b->name);
}

static int st_cmp_entry_name(const void *pa, const void *pb)
{
    const cr_st_entry *a = *(const cr_st_entry *const *)pa;
    const cr_st_entry *b = *(const cr_st_entry *const *)pb;
    return strcmp(a->name, b->name);
}

static int st_cmp_key_entry(const void *key, const void *pe)
{
    return strcmp((const char *)key, (*(const cr_st_entry *const *)pe)->name);
}

/* Parse and validate the header h[hlen] (malloc'd; taken over: it becomes
 * the pool of decoded strings, or is freed on failure) of a file whose data
 * section has data_len bytes. h holds `filled` bytes; when fewer than hlen,
 * the rest is read from fd chunk by chunk as the parser gets there. On
 * success *out holds every entry (data not attached yet: entries' data are
 * offsets into the data section). */
static cr_status st_parse_header(char *h, size_t hlen, size_t filled, int fd, uint64_t data_len,
                                 cr_st_file **out)
{
    st_parser P = {
        .start = h, .p = h, .end = h + filled, .limit = h + hlen, .fd = fd, .pool = h, .data_len = data_len};
    cr_st_file *f = calloc(1, sizeof *f);
    cr_status st = f ? st_parse_object(&P) : cr_failure(CR_ENOMEM, "out of memory");
    if (st != CR_OK && P.io_failed)
        st = cr_failure(CR_EIO, "%s after %zu of the header's %zu bytes",
                        P.io_err ? strerror(P.io_err) : "file shrank", (size_t)(P.end - P.start), hlen);
    if (st != CR_OK) goto fail;

    /* Offsets into the pool become pointers once it has its final size. */
    char *pool = realloc(P.pool, P.pool_len ? P.pool_len : 1);
    if (pool) P.pool = pool;
    if (P.n < P.cap) { /* give back the doubling's slack */
        cr_st_entry *e = realloc(P.e, (P.n ? P.n : 1) * sizeof *e);
        if (e) P.e = e;
    }
    for (size_t i = 0; i < P.n; i++) P.e[i].name = P.pool + (uintptr_t)P.e[i].name;
    for (size_t i = 0; i < P.n_meta; i++) {
        P.meta[i].key = P.pool + (uintptr_t)P.meta[i].key;
        P.meta[i].value = P.pool + (uintptr_t)P.meta[i].value;
    }
    f->pool = P.pool;
    f->entries = P.e;
    f->n = P.n;
    f->meta = P.meta;
    f->n_meta = P.n_meta;
    P.pool = NULL, P.e = NULL, P.meta = NULL;

    /* Duplicate metadata keys, by sorting (a header may hold millions). */
    const char **keys = malloc((f->n_meta ? f->n_meta : 1) * sizeof *keys);
    if (!keys) {
        st = cr_failure(CR_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < f->n_meta; i++) keys[i] = f->meta[i].key;
    const char *dup = cr_st_first_dup(keys, f->n_meta);
    free(keys);
    if (dup) {
        st = cr_failure(CR_EFORMAT, "duplicate metadata key '%s'", cr_escape(dup).s);
        goto fail;
    }

    /* Entries in data order; names sorted for duplicates and lookups. */
    if (f->n > 1) qsort(f->entries, f->n, sizeof *f->entries, st_cmp_range);
    f->by_name = malloc((f->n ? f->n : 1) * sizeof *f->by_name);
    if (!f->by_name) {
        st = cr_failure(CR_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < f->n; i++) f->by_name[i] = &f->entries[i];
    if (f->n > 1) qsort(f->by_name, f->n, sizeof *f->by_name, st_cmp_entry_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            st = cr_failure(CR_EFORMAT, "duplicate tensor name '%s'", cr_escape(f->by_name[i]->name).s);
            goto fail;
        }

    /* Like the reference reader, require the ranges to tile the data section
     * exactly: no overlap (two tensors sharing bytes), no gap and no trailing
     * bytes (room to hide a second file inside a checkpoint). */
    uint64_t expect = 0;
    for (size_t i = 0; i < f->n; i++) {
        const cr_st_entry *e = &f->entries[i];
        unsigned long long b0 = (uintptr_t)e->data, e0 = b0 + e->nbytes;
        if (b0 < expect) {
            const cr_st_entry *q = &f->entries[i - 1];
            unsigned long long qb = (uintptr_t)q->data;
            cr_escaped n1 = cr_escape(q->name);
            st = cr_failure(CR_EFORMAT, "tensors '%s' [%llu,%llu] and '%s' [%llu,%llu] overlap", n1.s, qb,
                            qb + q->nbytes, cr_escape(e->name).s, b0, e0);
            goto fail;
        }
        if (b0 > expect) {
            st = cr_failure(CR_EFORMAT, "data section has %llu unused bytes before tensor '%s' [%llu,%llu]",
                            (unsigned long long)(b0 - expect), cr_escape(e->name).s, b0, e0);
            goto fail;
        }
        expect = e0;
    }
    if (expect != data_len) {
        st = cr_failure(CR_EFORMAT, "data section has %llu bytes after the last tensor",
                        (unsigned long long)(data_len - expect));
        goto fail;
    }
    *out = f;
    return CR_OK;

fail:
    free(P.pool);
    free(P.e);
    free(P.meta);
    cr_st_file_free(f);
    return st;
}

/* Point every entry at its bytes in data (the file's own data section). */
static void st_attach(cr_st_file *f, unsigned char *data, size_t data_len)
{
    f->buf = data;
    f->data_bytes = data_len;
    for (size_t i = 0; i < f->n; i++) f->entries[i].data = data + (uintptr_t)f->entries[i].data;
}

/* The header length field of a file of `len` bytes, checked against it. */
static cr_status st_header_len(const unsigned char *b, uint64_t len, uint64_t *hlen)
{
    if (len < 8)
        return cr_failure(CR_EFORMAT, "file is %llu bytes, shorter than the 8-byte header length",
                          (unsigned long long)len);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = (h << 8) | b[i];
    if (h > CR_ST_MAX_HEADER)
        return cr_failure(CR_EFORMAT, "header length %llu exceeds the %llu-byte limit", (unsigned long long)h,
                          (unsigned long long)CR_ST_MAX_HEADER);
    if (h > len - 8)
        return cr_failure(CR_EFORMAT, "header length %llu exceeds the %llu bytes after it",
                          (unsigned long long)h, (unsigned long long)(len - 8));
    if (h == 0) return cr_failure(CR_EFORMAT, "header is empty");
    *hlen = h;
    return CR_OK;
}

cr_status cr_st_parse(const void *bytes, size_t len, cr_st_file **out)
{
    if (!out) cr_error("cr_st_parse: out is NULL");
    *out = NULL;
    if (!bytes && len > 0) cr_error("cr_st_parse: bytes is NULL with len %zu", len);
    const unsigned char *b = bytes ? bytes : (const unsigned char *)"";
    uint64_t hlen;
    cr_st_file *f;
    cr_status st = st_header_len(b, len, &hlen);
    if (st != CR_OK) return st;
    char *h = malloc((size_t)hlen); /* the parser decodes strings in place */
    if (!h)
        return cr_failure(CR_ENOMEM, "out of memory copying a %llu-byte header", (unsigned long long)hlen);
    memcpy(h, b + 8, (size_t)hlen);
    if ((st = st_parse_header(h, (size_t)hlen, (size_t)hlen, -1, len - 8 - hlen, &f)) != CR_OK) return st;
    size_t data_len = len - 8 - (size_t)hlen;
    unsigned char *data = malloc(data_len ? data_len : 1);
    if (!data) {
        cr_st_file_free(f);
        return cr_failure(CR_ENOMEM, "out of memory");
    }
    if (data_len) memcpy(data, b + 8 + hlen, data_len);
    st_attach(f, data, data_len);
    *out = f;
    return CR_OK;
}

/* Read exactly n bytes (fails on a short file). */
static bool st_read_all(int fd, void *buf, size_t n, int *err)
{
    size_t got = 0;
    *err = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            *err = r < 0 ? errno : 0;
            return false;
        }
        got += (size_t)r;
    }
    return true;
}

cr_status cr_st_read(const char *path, cr_st_file **out)
{
    if (!out) cr_error("cr_st_read: out is NULL");
    *out = NULL;
    if (!path) cr_error("cr_st_read: path is NULL");
    /* O_NONBLOCK so that a FIFO or device named by mistake is refused below
     * instead of blocking the open; it changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return cr_failure(CR_EIO, "%s: %s", path, strerror(errno));
    struct stat sb;
    cr_status st = CR_OK;
    char *hdr = NULL;
    unsigned char *data = NULL;
    cr_st_file *f = NULL;
    int e = 0;
    if (fstat(fd, &sb) != 0) {
        st = cr_failure(CR_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = cr_failure(CR_EIO, "%s: not a regular file", path);
        goto done;
    }
    /* The header is read and validated before the data section is even
     * allocated: a lying or hostile file costs at most its header. */
    uint64_t size = (uint64_t)sb.st_size, hlen;
    unsigned char lenbytes[8] = {0};
    if (size >= 8 && !st_read_all(fd, lenbytes, 8, &e)) goto short_read;
    if ((st = st_header_len(lenbytes, size, &hlen)) != CR_OK) goto prefix;
    if (size - 8 - hlen > SIZE_MAX - 1) {
        st = cr_failure(CR_EIO, "%s: file too large", path);
        goto done;
    }
    hdr = malloc((size_t)hlen);
    if (!hdr) {
        st = cr_failure(CR_ENOMEM, "%s: out of memory reading a %llu-byte header", path,
                        (unsigned long long)hlen);
        goto done;
    }
    size_t data_len = (size_t)(size - 8 - hlen);
    st = st_parse_header(hdr, (size_t)hlen, 0, fd, data_len, &f); /* reads the header as it parses */
    hdr = NULL;                                                   /* the parser took it */
    if (st != CR_OK) goto prefix;
    data = malloc(data_len ? data_len : 1);
    if (!data) {
        st = cr_failure(CR_ENOMEM, "%s: out of memory reading %zu bytes", path, data_len);
        goto done;
    }
    if (!st_read_all(fd, data, data_len, &e)) goto short_read;
    st_attach(f, data, data_len);
    data = NULL;
    *out = f;
    f = NULL;
    goto done;

short_read:
    st = cr_failure(CR_EIO, "%s: %s", path, e ? strerror(e) : "file shrank while reading");
    goto done;
prefix: /* name the file in the parser's message */
    cr_failure(st, "%s: %s", path, cr_last_error());
done:
    close(fd);
    free(hdr);
    free(data);
    cr_st_file_free(f);
    return st;
}

void cr_st_file_free(cr_st_file *f)
{
    if (!f) return;
    free(f->entries);
    free(f->by_name);
    free(f->meta);
    free(f->pool);
    free(f->buf);
    free(f);
}

/* ---- accessors -------------------------------------------------------------- */

size_t cr_st_count(const cr_st_file *f) { return f ? f->n : 0; }

const cr_st_entry *cr_st_entry_at(const cr_st_file *f, size_t i)
{
    return f && i < f->n ? &f->entries[i] : NULL;
}

const cr_st_entry *cr_st_find(const cr_st_file *f, const char *name)
{
    if (!f || !name || f->n == 0) return NULL;
    const cr_st_entry *const *p = bsearch(name, f->by_name, f->n, sizeof *f->by_name, st_cmp_key_entry);
    return p ? *p : NULL;
}

size_t cr_st_data_bytes(const cr_st_file *f) { return f ? f->data_bytes : 0; }

size_t cr_st_meta_count(const cr_st_file *f) { return f ? f->n_meta : 0; }

const char *cr_st_meta_get(const cr_st_file *f, const char *key)
{
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

bool cr_st_meta_at(const cr_st_file *f, size_t i, const char **key, const char **value)
{
    if (!f || i >= f->n_meta) return false;
    if (key) *key = f->meta[i].key;
    if (value) *value = f->meta[i].value;
    return true;
}
