/*
 * Checkpoints in the safetensors format: a validating reader and an atomic
 * writer (low level, libc + cJSON only, so the fuzz harness compiles this file
 * alone), and cr_params_save / cr_params_load on top of them.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "optim.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
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
#error "optim/safetensors.c copies tensor data raw and needs a little-endian host"
#endif

#define ST_META_KEY "__metadata__"

/* Shapes and offsets arrive as JSON numbers, i.e. doubles; integers at or
 * above 2^53 cannot be told apart from their neighbours, so refuse them. */
#define ST_MAX_JSON_INT 9007199254740992.0 /* 2^53 */

typedef struct st_meta {
    char *key;
    char *value;
} st_meta;

struct cr_st_file {
    cr_st_entry *entries; /* n, ordered by data offset */
    size_t n;
    const cr_st_entry **by_name; /* n, sorted by strcmp on name, for bsearch */
    st_meta *meta;
    size_t n_meta;
    unsigned char *buf; /* owned storage the entries' data point into */
    size_t data_bytes;
};

/* ---- small helpers ---------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int st_fail(char *err, size_t errlen,
                                                         const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A name from a file, made safe to put in a one-line message: control bytes
 * become '?', and long names are cut (at a UTF-8 boundary) with "...". */
#define ST_NAME_MAX 64
typedef struct st_name {
    char s[ST_NAME_MAX + 4];
} st_name;

static st_name st_show(const char *name)
{
    st_name out;
    size_t n = 0;
    if (!name)
        name = "(null)";
    size_t len = strlen(name);
    size_t keep = len;
    if (len > ST_NAME_MAX) {
        keep = ST_NAME_MAX;
        while (keep > 0 && ((unsigned char)name[keep] & 0xC0) == 0x80)
            keep--;
    }
    for (size_t i = 0; i < keep; i++) {
        unsigned char c = (unsigned char)name[i];
        out.s[n++] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
    }
    if (keep < len) {
        memcpy(out.s + n, "...", 3);
        n += 3;
    }
    out.s[n] = '\0';
    return out;
}

static size_t st_elsize(cr_dtype dt)
{
    switch (dt) {
    case CR_F32: return 4;
    case CR_F64: return 8;
    case CR_I32: return 4;
    }
    return 0;
}

const char *cr_st_dtype_name(cr_dtype dt)
{
    switch (dt) {
    case CR_F32: return "F32";
    case CR_F64: return "F64";
    case CR_I32: return "I32";
    }
    return "?";
}

static bool st_dtype_parse(const char *s, cr_dtype *dt)
{
    if (strcmp(s, "F32") == 0)
        *dt = CR_F32;
    else if (strcmp(s, "F64") == 0)
        *dt = CR_F64;
    else if (strcmp(s, "I32") == 0)
        *dt = CR_I32;
    else
        return false;
    return true;
}

/* "[4,8]" into buf (truncated if it does not fit). */
static const char *st_shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t n = 0;
    if (len == 0)
        return buf;
    buf[0] = '\0';
    n += (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && n < len; d++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (n < len)
        snprintf(buf + n, len - n, "]");
    return buf;
}
#define ST_SHAPE_BUF (CR_MAX_DIMS * 21 + 3)

/* bytes = prod(shape) * elsize; false on a negative dim or overflow. */
static bool st_nbytes(cr_dtype dt, int ndim, const int64_t *shape, uint64_t *bytes)
{
    uint64_t b = st_elsize(dt);
    if (b == 0 || ndim < 0 || ndim > CR_MAX_DIMS)
        return false;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return false;
        uint64_t dim = (uint64_t)shape[d];
        if (dim != 0 && b > UINT64_MAX / dim)
            return false;
        b *= dim;
    }
    if (b > SIZE_MAX)
        return false;
    *bytes = b;
    return true;
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF): JSON
 * text must be UTF-8, and other safetensors readers reject anything else.
 * Returns the offset of the first bad byte, or len when all is well. */
static size_t st_utf8_check(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else {
            return i;
        }
        if (len - i <= need)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += need + 1;
    }
    return len;
}

/* ---- writer ----------------------------------------------------------------- */

/* A growable byte buffer for the JSON header; `oom` sticks once set. */
typedef struct st_buf {
    char *p;
    size_t len, cap;
    bool oom;
} st_buf;

static void sb_put(st_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (n > SIZE_MAX - b->len - 1) {
        b->oom = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(st_buf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(st_buf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string literal; s is valid UTF-8 (checked by the caller). */
static void sb_json_str(st_buf *b, const char *s)
{
    sb_put(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_put(b, run, (size_t)(s - run));
        char esc[8];
        switch (c) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\r': sb_puts(b, "\\r"); break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_puts(b, esc);
        }
        run = s + 1;
    }
    sb_put(b, run, (size_t)(s - run));
    sb_put(b, "\"", 1);
}

static int st_cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that appears twice in names[n] (sorted in place), or NULL. */
static const char *st_first_dup(const char **names, size_t n)
{
    if (n < 2)
        return NULL;
    qsort(names, n, sizeof *names, st_cmp_str_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

/* Check the caller's entries and metadata, and build the padded header. */
static int st_build_header(const cr_st_entry *entries, size_t n, const char *const *meta_kv,
                           size_t n_meta, st_buf *hdr, char *err, size_t errlen)
{
    if (n > 0 && !entries)
        return st_fail(err, errlen, "entries is NULL but n is %zu", n);
    if (n_meta > 0 && !meta_kv)
        return st_fail(err, errlen, "meta_kv is NULL but n_meta is %zu", n_meta);
    if (n_meta > SIZE_MAX / 2)
        return st_fail(err, errlen, "n_meta %zu is absurd", n_meta);

    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *e = &entries[i];
        if (!e->name)
            return st_fail(err, errlen, "entry %zu has no name", i);
        st_name nm = st_show(e->name);
        size_t nlen = strlen(e->name);
        if (st_utf8_check((const unsigned char *)e->name, nlen) != nlen)
            return st_fail(err, errlen, "tensor '%s': name is not valid UTF-8", nm.s);
        if (strcmp(e->name, ST_META_KEY) == 0)
            return st_fail(err, errlen, "tensor name '%s' is reserved for metadata", nm.s);
        if (st_elsize(e->dtype) == 0)
            return st_fail(err, errlen, "tensor '%s': unknown dtype value %d", nm.s,
                           (int)e->dtype);
        if (e->ndim < 0 || e->ndim > CR_MAX_DIMS)
            return st_fail(err, errlen, "tensor '%s': ndim %d is outside 0..%d", nm.s,
                           e->ndim, CR_MAX_DIMS);
        char sh[ST_SHAPE_BUF];
        uint64_t need;
        if (!st_nbytes(e->dtype, e->ndim, e->shape, &need))
            return st_fail(err, errlen, "tensor '%s': shape %s is negative or too large",
                           nm.s, st_shape_str(sh, sizeof sh, e->ndim, e->shape));
        if (need != e->nbytes)
            return st_fail(err, errlen, "tensor '%s': nbytes %zu but dtype %s shape %s needs %llu",
                           nm.s, e->nbytes, cr_st_dtype_name(e->dtype),
                           st_shape_str(sh, sizeof sh, e->ndim, e->shape),
                           (unsigned long long)need);
        if (e->nbytes > 0 && !e->data)
            return st_fail(err, errlen, "tensor '%s': data is NULL", nm.s);
    }
    for (size_t i = 0; i < 2 * n_meta; i++) {
        if (!meta_kv[i])
            return st_fail(err, errlen, "metadata %s %zu is NULL", i % 2 ? "value" : "key",
                           i / 2);
        size_t len = strlen(meta_kv[i]);
        if (st_utf8_check((const unsigned char *)meta_kv[i], len) != len)
            return st_fail(err, errlen, "metadata %s '%s' is not valid UTF-8",
                           i % 2 ? "value" : "key", st_show(meta_kv[i]).s);
    }

    /* Duplicates: one sorted array of names for tensors, one for keys. */
    size_t nnames = n > n_meta ? n : n_meta;
    const char **names = malloc((nnames ? nnames : 1) * sizeof *names);
    if (!names)
        return st_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < n; i++)
        names[i] = entries[i].name;
    const char *dup = st_first_dup(names, n);
    if (dup) {
        st_name nm = st_show(dup);
        free(names);
        return st_fail(err, errlen, "duplicate tensor name '%s'", nm.s);
    }
    for (size_t i = 0; i < n_meta; i++)
        names[i] = meta_kv[2 * i];
    dup = st_first_dup(names, n_meta);
    if (dup) {
        st_name nm = st_show(dup);
        free(names);
        return st_fail(err, errlen, "duplicate metadata key '%s'", nm.s);
    }
    free(names);

    /* The header, metadata first (as the reference implementation writes it),
     * then tensors in data order. */
    sb_put(hdr, "{", 1);
    if (n_meta > 0) {
        sb_puts(hdr, "\"" ST_META_KEY "\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i)
                sb_put(hdr, ",", 1);
            sb_json_str(hdr, meta_kv[2 * i]);
            sb_put(hdr, ":", 1);
            sb_json_str(hdr, meta_kv[2 * i + 1]);
        }
        sb_puts(hdr, "}");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *e = &entries[i];
        if (i || n_meta)
            sb_put(hdr, ",", 1);
        sb_json_str(hdr, e->name);
        sb_puts(hdr, ":{\"dtype\":\"");
        sb_puts(hdr, cr_st_dtype_name(e->dtype));
        sb_puts(hdr, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            if (d)
                sb_put(hdr, ",", 1);
            sb_u64(hdr, (uint64_t)e->shape[d]);
        }
        sb_puts(hdr, "],\"data_offsets\":[");
        sb_u64(hdr, off);
        sb_put(hdr, ",", 1);
        if (e->nbytes > UINT64_MAX - off)
            return st_fail(err, errlen, "total data size overflows");
        off += e->nbytes;
        sb_u64(hdr, off);
        sb_puts(hdr, "]}");
    }
    sb_put(hdr, "}", 1);
    /* Pad so the data section starts 8-byte aligned (the 8-byte length field
     * plus a header that is a multiple of 8). */
    while (!hdr->oom && hdr->len % 8 != 0)
        sb_put(hdr, " ", 1);
    if (hdr->oom)
        return st_fail(err, errlen, "out of memory building the header");
    if ((uint64_t)hdr->len > CR_ST_MAX_HEADER)
        return st_fail(err, errlen, "header of %zu bytes exceeds the %llu-byte limit", hdr->len,
                       (unsigned long long)CR_ST_MAX_HEADER);
    return 0;
}

/* Permission bits for a new file: those of the file being replaced, else
 * 0666 minus the umask. mkstemp creates 0600, and umask() can only be read by
 * setting it (racy in a threaded program), so read it from /proc; when that is
 * unavailable keep 0600, the safe side. */
static mode_t st_new_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
        return st.st_mode & 07777;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0600;
    char line[256];
    mode_t mode = 0600;
    while (fgets(line, sizeof line, f)) {
        unsigned mask;
        if (sscanf(line, "Umask: %o", &mask) == 1) {
            mode = (mode_t)(0666 & ~mask);
            break;
        }
    }
    fclose(f);
    return mode;
}

static bool st_write_all(FILE *fp, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, fp) == n;
}

int cr_st_write(const char *path, const cr_st_entry *entries, size_t n,
                const char *const *meta_kv, size_t n_meta, char *err, size_t errlen)
{
    if (!path || !*path)
        return st_fail(err, errlen, "no path given");
    st_buf hdr = {0};
    if (st_build_header(entries, n, meta_kv, n_meta, &hdr, err, errlen) != 0) {
        free(hdr.p);
        return -1;
    }
    unsigned char lenbytes[8];
    uint64_t hlen = hdr.len;
    for (int i = 0; i < 8; i++)
        lenbytes[i] = (unsigned char)(hlen >> (8 * i));

    /* The temporary file sits beside the target so rename() is atomic (same
     * file system). */
    size_t plen = strlen(path);
    static const char suffix[] = ".tmp.XXXXXX";
    char *tmp = malloc(plen + sizeof suffix);
    if (!tmp) {
        free(hdr.p);
        return st_fail(err, errlen, "%s: out of memory", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);

    mode_t mode = st_new_mode(path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(hdr.p);
        free(tmp);
        return st_fail(err, errlen, "%s: cannot create a temporary file beside it: %s", path,
                       strerror(e));
    }
    FILE *fp = fdopen(fd, "wb");
    if (!fp) {
        int e = errno;
        close(fd);
        unlink(tmp);
        free(hdr.p);
        free(tmp);
        return st_fail(err, errlen, "%s: fdopen: %s", path, strerror(e));
    }

    /* A file system without permissions (FAT, some network mounts) refuses
     * fchmod; the file then keeps mkstemp's 0600, which is no reason to fail. */
    if (fchmod(fd, mode) != 0) {
    }
    const char *step = "write";
    bool ok = st_write_all(fp, lenbytes, 8) && st_write_all(fp, hdr.p, hdr.len);
    for (size_t i = 0; ok && i < n; i++)
        ok = st_write_all(fp, entries[i].data, entries[i].nbytes);
    if (ok && fflush(fp) != 0)
        ok = false;
    if (ok && fsync(fd) != 0)
        ok = false, step = "fsync";
    int e = errno;
    /* fclose also reports delayed write errors, so its result counts. */
    if (fclose(fp) != 0 && ok)
        ok = false, step = "close", e = errno;
    free(hdr.p);
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return st_fail(err, errlen, "%s: %s failed: %s", path, step, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        free(tmp);
        return st_fail(err, errlen, "%s: cannot rename the temporary file over it: %s", path,
                       strerror(e));
    }
    free(tmp);

    /* Make the rename itself durable: fsync the directory entry. */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return st_fail(err, errlen, "%s: written, but out of memory syncing its directory", path);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    int rc = 0;
    /* Some file systems cannot fsync a directory (EINVAL); nothing more to do there. */
    if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL)) {
        e = errno;
        rc = st_fail(err, errlen, "%s: written, but syncing directory %s failed: %s", path, dir,
                     strerror(e));
    }
    if (dfd >= 0)
        close(dfd);
    free(dir);
    return rc;
}

/* ---- reader ----------------------------------------------------------------- */

/* A JSON number that is an exact non-negative integer below 2^53. */
static bool st_json_u64(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j))
        return false;
    double d = j->valuedouble;
    if (!(d >= 0 && d < ST_MAX_JSON_INT)) /* also false for NaN */
        return false;
    uint64_t v = (uint64_t)d;
    if ((double)v != d)
        return false;
    *out = v;
    return true;
}

/* One tensor while parsing: its entry and its offsets in the data section. */
typedef struct st_raw {
    cr_st_entry e;
    uint64_t begin, end;
} st_raw;

static int st_parse_tensor(const cJSON *j, uint64_t data_len, st_raw *r, char *err,
                           size_t errlen)
{
    const char *name = j->string ? j->string : "";
    st_name nm = st_show(name);
    if (!cJSON_IsObject(j))
        return st_fail(err, errlen, "tensor '%s': entry is not an object", nm.s);

    const cJSON *jdt = NULL, *jsh = NULL, *joff = NULL;
    for (const cJSON *c = j->child; c; c = c->next) {
        const char *k = c->string ? c->string : "";
        const cJSON **slot = strcmp(k, "dtype") == 0          ? &jdt
                             : strcmp(k, "shape") == 0        ? &jsh
                             : strcmp(k, "data_offsets") == 0 ? &joff
                                                              : NULL;
        if (!slot)
            return st_fail(err, errlen, "tensor '%s': unknown field '%s'", nm.s, st_show(k).s);
        if (*slot)
            return st_fail(err, errlen, "tensor '%s': field '%s' appears twice", nm.s, k);
        *slot = c;
    }
    if (!jdt || !jsh || !joff)
        return st_fail(err, errlen, "tensor '%s': missing field '%s'", nm.s,
                       !jdt ? "dtype" : !jsh ? "shape" : "data_offsets");

    if (!cJSON_IsString(jdt) || !jdt->valuestring)
        return st_fail(err, errlen, "tensor '%s': dtype is not a string", nm.s);
    if (!st_dtype_parse(jdt->valuestring, &r->e.dtype))
        return st_fail(err, errlen,
                       "tensor '%s': unsupported dtype '%s' (carousel reads F32, F64, I32)",
                       nm.s, st_show(jdt->valuestring).s);

    if (!cJSON_IsArray(jsh))
        return st_fail(err, errlen, "tensor '%s': shape is not an array", nm.s);
    int nd = 0;
    for (const cJSON *c = jsh->child; c; c = c->next) {
        if (nd == CR_MAX_DIMS)
            return st_fail(err, errlen, "tensor '%s': shape has more than %d dims", nm.s,
                           CR_MAX_DIMS);
        uint64_t d;
        if (!st_json_u64(c, &d))
            return st_fail(err, errlen, "tensor '%s': shape[%d] is not a non-negative integer",
                           nm.s, nd);
        r->e.shape[nd++] = (int64_t)d;
    }
    r->e.ndim = nd;
    char sh[ST_SHAPE_BUF];
    st_shape_str(sh, sizeof sh, nd, r->e.shape);
    uint64_t need;
    if (!st_nbytes(r->e.dtype, nd, r->e.shape, &need))
        return st_fail(err, errlen, "tensor '%s': dtype %s shape %s overflows", nm.s,
                       cr_st_dtype_name(r->e.dtype), sh);

    if (!cJSON_IsArray(joff) || !joff->child || !joff->child->next || joff->child->next->next ||
        !st_json_u64(joff->child, &r->begin) || !st_json_u64(joff->child->next, &r->end))
        return st_fail(err, errlen,
                       "tensor '%s': data_offsets is not an array of two non-negative integers",
                       nm.s);
    unsigned long long b = r->begin, e = r->end;
    if (b > e)
        return st_fail(err, errlen, "tensor '%s': data_offsets [%llu,%llu] begin after end",
                       nm.s, b, e);
    if (e > data_len)
        return st_fail(err, errlen,
                       "tensor '%s': data_offsets [%llu,%llu] end beyond the %llu-byte data "
                       "section",
                       nm.s, b, e, (unsigned long long)data_len);
    if (e - b != need)
        return st_fail(err, errlen,
                       "tensor '%s': data_offsets [%llu,%llu] but dtype %s shape %s needs %llu "
                       "bytes",
                       nm.s, b, e, cr_st_dtype_name(r->e.dtype), sh, (unsigned long long)need);
    r->e.nbytes = (size_t)need;
    r->e.name = strdup(name);
    if (!r->e.name)
        return st_fail(err, errlen, "out of memory");
    return 0;
}

static int st_parse_meta(const cJSON *j, cr_st_file *f, char *err, size_t errlen)
{
    if (!cJSON_IsObject(j))
        return st_fail(err, errlen, ST_META_KEY " is not an object");
    size_t n = 0;
    for (const cJSON *c = j->child; c; c = c->next)
        n++;
    f->meta = calloc(n ? n : 1, sizeof *f->meta);
    if (!f->meta)
        return st_fail(err, errlen, "out of memory");
    for (const cJSON *c = j->child; c; c = c->next) {
        const char *k = c->string ? c->string : "";
        if (!cJSON_IsString(c) || !c->valuestring)
            return st_fail(err, errlen, ST_META_KEY " value of '%s' is not a string",
                           st_show(k).s);
        st_meta *m = &f->meta[f->n_meta];
        m->key = strdup(k);
        m->value = strdup(c->valuestring);
        f->n_meta++; /* counted before the check so cr_st_file_free frees both */
        if (!m->key || !m->value)
            return st_fail(err, errlen, "out of memory");
    }
    /* Duplicate keys, by sorting (a header may hold millions of them). */
    const char **keys = malloc((n ? n : 1) * sizeof *keys);
    if (!keys)
        return st_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < n; i++)
        keys[i] = f->meta[i].key;
    const char *dup = st_first_dup(keys, n);
    st_name dn = st_show(dup);
    free(keys);
    if (dup)
        return st_fail(err, errlen, "duplicate metadata key '%s'", dn.s);
    return 0;
}

static int st_cmp_range(const void *pa, const void *pb)
{
    const st_raw *a = pa, *b = pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return strcmp(a->e.name, b->e.name);
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

/* Validate b[len]. When `owned` is non-NULL it is b itself (malloc'd) and the
 * file takes it on success; otherwise the data section is copied. */
static int st_parse(const unsigned char *b, size_t len, unsigned char *owned, cr_st_file **out,
                    char *err, size_t errlen)
{
    if (len < 8)
        return st_fail(err, errlen, "file is %zu bytes, shorter than the 8-byte header length",
                       len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | b[i];
    if (hlen > CR_ST_MAX_HEADER)
        return st_fail(err, errlen, "header length %llu exceeds the %llu-byte limit",
                       (unsigned long long)hlen, (unsigned long long)CR_ST_MAX_HEADER);
    if (hlen > len - 8)
        return st_fail(err, errlen, "header length %llu exceeds the %zu bytes after it",
                       (unsigned long long)hlen, len - 8);
    if (hlen == 0)
        return st_fail(err, errlen, "header is empty");
    const char *h = (const char *)b + 8;
    size_t hn = (size_t)hlen;
    const char *nul = memchr(h, 0, hn);
    if (nul)
        return st_fail(err, errlen, "header has a NUL byte at offset %zu", (size_t)(nul - h));
    size_t bad = st_utf8_check((const unsigned char *)h, hn);
    if (bad != hn)
        return st_fail(err, errlen, "header is not valid UTF-8 (byte %zu)", bad);

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(h, hn, &end, 0);
    if (!root) {
        size_t pos = (end && end >= h && end <= h + hn) ? (size_t)(end - h) : 0;
        return st_fail(err, errlen, "header is not valid JSON (near byte %zu of %zu)", pos, hn);
    }
    /* Only padding may follow the JSON value. */
    for (const char *p = end; p < h + hn; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return st_fail(err, errlen, "header has bytes after the JSON object (byte %zu)",
                           (size_t)(p - h));
        }
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return st_fail(err, errlen, "header is not a JSON object");
    }

    uint64_t data_len = len - 8 - hlen;
    size_t nchild = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        nchild++;
    cr_st_file *f = calloc(1, sizeof *f);
    st_raw *raw = calloc(nchild ? nchild : 1, sizeof *raw);
    int rc = -1;
    size_t nraw = 0;
    if (!f || !raw) {
        st_fail(err, errlen, "out of memory");
        goto done;
    }
    bool seen_meta = false;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (c->string && strcmp(c->string, ST_META_KEY) == 0) {
            if (seen_meta) {
                st_fail(err, errlen, ST_META_KEY " appears twice");
                goto done;
            }
            seen_meta = true;
            if (st_parse_meta(c, f, err, errlen) != 0)
                goto done;
        } else {
            if (st_parse_tensor(c, data_len, &raw[nraw], err, errlen) != 0)
                goto done;
            nraw++;
        }
    }

    /* Entries in data order; names sorted for duplicates and lookups. */
    qsort(raw, nraw, sizeof *raw, st_cmp_range);
    f->entries = calloc(nraw ? nraw : 1, sizeof *f->entries);
    f->by_name = calloc(nraw ? nraw : 1, sizeof *f->by_name);
    if (!f->entries || !f->by_name) {
        st_fail(err, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < nraw; i++) {
        f->entries[i] = raw[i].e;
        raw[i].e.name = NULL; /* now owned by f */
        f->by_name[i] = &f->entries[i];
    }
    f->n = nraw;
    qsort(f->by_name, nraw, sizeof *f->by_name, st_cmp_entry_name);
    for (size_t i = 1; i < nraw; i++) {
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            st_fail(err, errlen, "duplicate tensor name '%s'", st_show(f->by_name[i]->name).s);
            goto done;
        }
    }

    /* Like the reference reader, require the ranges to tile the data section
     * exactly: no overlap (two tensors sharing bytes), no gap and no trailing
     * bytes (room to hide a second file inside a checkpoint). */
    uint64_t expect = 0;
    for (size_t i = 0; i < nraw; i++) {
        unsigned long long b0 = raw[i].begin, e0 = raw[i].end;
        if (raw[i].begin < expect) {
            st_fail(err, errlen, "tensors '%s' [%llu,%llu] and '%s' [%llu,%llu] overlap",
                    st_show(f->entries[i - 1].name).s, (unsigned long long)raw[i - 1].begin,
                    (unsigned long long)raw[i - 1].end, st_show(f->entries[i].name).s, b0, e0);
            goto done;
        }
        if (raw[i].begin > expect) {
            st_fail(err, errlen,
                    "data section has %llu unused bytes before tensor '%s' [%llu,%llu]",
                    (unsigned long long)(raw[i].begin - expect), st_show(f->entries[i].name).s,
                    b0, e0);
            goto done;
        }
        expect = raw[i].end;
    }
    if (expect != data_len) {
        st_fail(err, errlen, "data section has %llu bytes after the last tensor",
                (unsigned long long)(data_len - expect));
        goto done;
    }

    /* Valid: attach the data. */
    const unsigned char *data = b + 8 + hlen;
    if (owned) {
        f->buf = owned;
    } else {
        f->buf = malloc(data_len ? (size_t)data_len : 1);
        if (!f->buf) {
            st_fail(err, errlen, "out of memory");
            goto done;
        }
        if (data_len)
            memcpy(f->buf, data, (size_t)data_len);
        data = f->buf;
    }
    for (size_t i = 0; i < nraw; i++)
        f->entries[i].data = data + raw[i].begin;
    f->data_bytes = (size_t)data_len;
    *out = f;
    f = NULL;
    rc = 0;

done:
    for (size_t i = 0; i < nraw; i++)
        free((char *)raw[i].e.name);
    free(raw);
    if (f && owned)
        f->buf = NULL; /* the caller frees its own buffer on failure */
    cr_st_file_free(f);
    cJSON_Delete(root);
    return rc;
}

int cr_st_parse(const void *bytes, size_t len, cr_st_file **out, char *err, size_t errlen)
{
    if (!out)
        return st_fail(err, errlen, "out is NULL");
    *out = NULL;
    if (!bytes && len > 0)
        return st_fail(err, errlen, "bytes is NULL");
    if (!bytes)
        bytes = "";
    return st_parse(bytes, len, NULL, out, err, errlen);
}

int cr_st_read(const char *path, cr_st_file **out, char *err, size_t errlen)
{
    if (!out)
        return st_fail(err, errlen, "out is NULL");
    *out = NULL;
    if (!path)
        return st_fail(err, errlen, "no path given");
    /* O_NONBLOCK so that a FIFO or device named by mistake is refused below
     * instead of blocking the open; it changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return st_fail(err, errlen, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return st_fail(err, errlen, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return st_fail(err, errlen, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX - 1) {
        close(fd);
        return st_fail(err, errlen, "%s: file too large", path);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return st_fail(err, errlen, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = 0;
    int e = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            e = r < 0 ? errno : 0;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(buf);
        return st_fail(err, errlen, "%s: %s after %zu of %zu bytes", path,
                       e ? strerror(e) : "file shrank while reading", got, size);
    }
    char msg[512];
    if (st_parse(buf, size, buf, out, msg, sizeof msg) != 0) {
        free(buf);
        return st_fail(err, errlen, "%s: %s", path, msg);
    }
    return 0;
}

void cr_st_file_free(cr_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        free((char *)f->entries[i].name);
    free(f->entries);
    free(f->by_name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->meta);
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
    if (!f || !name || f->n == 0)
        return NULL;
    const cr_st_entry *const *p =
        bsearch(name, f->by_name, f->n, sizeof *f->by_name, st_cmp_key_entry);
    return p ? *p : NULL;
}

size_t cr_st_data_bytes(const cr_st_file *f) { return f ? f->data_bytes : 0; }

size_t cr_st_meta_count(const cr_st_file *f) { return f ? f->n_meta : 0; }

const char *cr_st_meta_get(const cr_st_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

bool cr_st_meta_at(const cr_st_file *f, size_t i, const char **key, const char **value)
{
    if (!f || i >= f->n_meta)
        return false;
    if (key)
        *key = f->meta[i].key;
    if (value)
        *value = f->meta[i].value;
    return true;
}

/* ---- parameter sets --------------------------------------------------------- */

/* The parameter checks below read the tensor fields directly instead of
 * calling cr_numel / cr_is_contiguous, so this file still links alone. */

/* Row-major without holes (dims of size 1 may have any stride). */
static bool st_tensor_contiguous(const cr_tensor *t)
{
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] == 0)
            return true;
        if (t->shape[d] != 1 && t->stride[d] != expect)
            return false;
        expect *= t->shape[d];
    }
    return true;
}

/* Describe parameter value t as an entry; checks it can be saved/loaded raw. */
static int st_param_entry(const cr_param *p, cr_st_entry *e, char *err, size_t errlen)
{
    st_name nm = st_show(p->name);
    const cr_tensor *t = p->value;
    if (!p->name || !t)
        return st_fail(err, errlen, "parameter '%s' has no %s", nm.s, t ? "name" : "value");
    uint64_t nb;
    if (!st_nbytes(t->dtype, t->ndim, t->shape, &nb))
        return st_fail(err, errlen, "parameter '%s': bad dtype or shape", nm.s);
    if (!st_tensor_contiguous(t))
        return st_fail(err, errlen, "parameter '%s' is not contiguous", nm.s);
    if (nb > 0 && !t->data)
        return st_fail(err, errlen, "parameter '%s' has no data", nm.s);
    memset(e, 0, sizeof *e);
    e->name = p->name;
    e->dtype = t->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    e->data = t->data;
    e->nbytes = (size_t)nb;
    return 0;
}

int cr_params_save_extra(const cr_params *ps, const cr_st_entry *extra, size_t n_extra,
                         const char *path, const char *const *meta_kv, size_t n_meta,
                         char *err, size_t errlen)
{
    if (!ps)
        return st_fail(err, errlen, "params is NULL");
    if (n_extra > 0 && !extra)
        return st_fail(err, errlen, "extra is NULL but n_extra is %zu", n_extra);
    if (n_extra > SIZE_MAX / sizeof(cr_st_entry) - ps->n - 1)
        return st_fail(err, errlen, "too many tensors");
    size_t n = ps->n + n_extra;
    cr_st_entry *es = malloc((n ? n : 1) * sizeof *es);
    if (!es)
        return st_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < ps->n; i++) {
        if (st_param_entry(&ps->items[i], &es[i], err, errlen) != 0) {
            free(es);
            return -1;
        }
    }
    for (size_t i = 0; i < n_extra; i++) {
        const char *nm = extra[i].name;
        if (!nm || strncmp(nm, CR_ST_OPTIM_PREFIX, strlen(CR_ST_OPTIM_PREFIX)) != 0) {
            free(es);
            return st_fail(err, errlen, "extra tensor '%s' does not start with '%s'",
                           st_show(nm).s, CR_ST_OPTIM_PREFIX);
        }
        es[ps->n + i] = extra[i];
    }
    int rc = cr_st_write(path, es, n, meta_kv, n_meta, err, errlen);
    free(es);
    return rc;
}

int cr_params_save(const cr_params *ps, const char *path, const char *const *meta_kv,
                   size_t n_meta, char *err, size_t errlen)
{
    return cr_params_save_extra(ps, NULL, 0, path, meta_kv, n_meta, err, errlen);
}

int cr_params_load(cr_params *ps, const char *path, char *err, size_t errlen)
{
    if (!ps)
        return st_fail(err, errlen, "params is NULL");
    cr_st_file *f = NULL;
    if (cr_st_read(path, &f, err, errlen) != 0)
        return -1;
    bool *used = calloc(f->n ? f->n : 1, sizeof *used);
    cr_st_entry *want = malloc((ps->n ? ps->n : 1) * sizeof *want);
    const cr_st_entry **have = malloc((ps->n ? ps->n : 1) * sizeof *have);
    int rc = -1;
    if (!used || !want || !have) {
        st_fail(err, errlen, "%s: out of memory", path);
        goto done;
    }
    /* Pass 1: check everything, touch nothing. */
    for (size_t i = 0; i < ps->n; i++) {
        char msg[256];
        if (st_param_entry(&ps->items[i], &want[i], msg, sizeof msg) != 0) {
            st_fail(err, errlen, "%s: %s", path, msg);
            goto done;
        }
        const cr_st_entry *w = &want[i];
        const cr_st_entry *e = cr_st_find(f, w->name);
        st_name nm = st_show(w->name);
        if (!e) {
            st_fail(err, errlen, "%s: parameter '%s' is missing from the file", path, nm.s);
            goto done;
        }
        bool same = e->dtype == w->dtype && e->ndim == w->ndim;
        for (int d = 0; same && d < w->ndim; d++)
            same = e->shape[d] == w->shape[d];
        if (!same) {
            char s1[ST_SHAPE_BUF], s2[ST_SHAPE_BUF];
            st_fail(err, errlen, "%s: parameter '%s': file has %s %s, model has %s %s", path,
                    nm.s, cr_st_dtype_name(e->dtype),
                    st_shape_str(s1, sizeof s1, e->ndim, e->shape), cr_st_dtype_name(w->dtype),
                    st_shape_str(s2, sizeof s2, w->ndim, w->shape));
            goto done;
        }
        used[e - cr_st_entry_at(f, 0)] = true;
        have[i] = e;
    }
    for (size_t j = 0; j < f->n; j++) {
        const char *nm = f->entries[j].name;
        if (!used[j] && strncmp(nm, CR_ST_OPTIM_PREFIX, strlen(CR_ST_OPTIM_PREFIX)) != 0) {
            st_fail(err, errlen, "%s: tensor '%s' is not a parameter of the model", path,
                    st_show(nm).s);
            goto done;
        }
    }
    /* Pass 2: copy (memcpy, since file data may be unaligned). */
    for (size_t i = 0; i < ps->n; i++)
        if (want[i].nbytes)
            memcpy(ps->items[i].value->data, have[i]->data, want[i].nbytes);
    rc = 0;

done:
    free(used);
    free(want);
    free(have);
    cr_st_file_free(f);
    return rc;
}
