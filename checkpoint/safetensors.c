/*
 * The safetensors format: a strict, bounded, thread-safe reader (its own
 * small JSON parser for the fixed shape of the header) and an atomic writer.
 * Depends on libc and the tensor module only, so the fuzz harness builds it alone.
 */
#define _GNU_SOURCE /* O_TMPFILE */

#include "checkpoint_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The header length is encoded byte by byte, so it is portable. Tensor data
 * is copied raw: safetensors stores little-endian elements, which is what an
 * x86_64 or arm64 host holds in memory. A big-endian host would have to
 * byte-swap every element; refuse to build there rather than write files no
 * one else can read. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint/safetensors.c copies tensor data raw and needs a little-endian host"
#endif

#define ST_META_KEY "__metadata__"

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

/* ---- messages --------------------------------------------------------------- */

cr_escaped cr_escape(const char *s)
{
    static const char hex[] = "0123456789abcdef";
    cr_escaped out;
    size_t n = 0, i = 0;
    if (!s) s = "(null)";
    for (; s[i] && i < CR_ESCAPE_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\'' || c == '"' || c == '\\') {
            out.s[n++] = '\\';
            out.s[n++] = (char)c;
        } else if (c < 0x20 || c >= 0x7F) {
            out.s[n++] = '\\';
            out.s[n++] = 'x';
            out.s[n++] = hex[c >> 4];
            out.s[n++] = hex[c & 15];
        } else {
            out.s[n++] = (char)c;
        }
    }
    if (s[i]) {
        memcpy(out.s + n, "...", 3);
        n += 3;
    }
    out.s[n] = '\0';
    return out;
}

/* ---- dtypes and sizes ---------------------------------------------------------- */

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

static bool st_dtype_known(cr_dtype dt) { return dt == CR_F32 || dt == CR_F64 || dt == CR_I32; }

/* bytes = prod(shape) * element size; false on a negative dim or overflow. */
static bool st_nbytes(cr_dtype dt, int ndim, const int64_t *shape, uint64_t *bytes)
{
    if (!st_dtype_known(dt) || ndim < 0 || ndim > CR_MAX_DIMS) return false;
    uint64_t b = cr_dtype_size(dt);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return false;
        uint64_t dim = (uint64_t)shape[d];
        if (dim != 0 && b > UINT64_MAX / dim) return false;
        b *= dim;
    }
    if (b > SIZE_MAX) return false;
    *bytes = b;
    return true;
}

#define ST_SHAPE_BUF (CR_MAX_DIMS * 21 + 3)

/* Length of the valid UTF-8 sequence at s[0..len) (no overlongs, surrogates
 * or code points above U+10FFFF), or 0 if it is not one. */
static size_t st_utf8_seq(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0; /* overlong */
        if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90; /* overlong */
        if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (len <= need || s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k <= need; k++)
        if ((s[k] & 0xC0) != 0x80) return 0;
    return need + 1;
}

static bool st_utf8_ok(const char *s)
{
    size_t len = strlen(s);
    for (size_t i = 0, k; i < len; i += k)
        if (!(k = st_utf8_seq((const unsigned char *)s + i, len - i))) return false;
    return true;
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
    if (b->oom) return;
    if (n > SIZE_MAX - b->len - 1) {
        b->oom = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
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
        if (c >= 0x20 && c != '"' && c != '\\') continue;
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
    if (n < 2) return NULL;
    qsort(names, n, sizeof *names, st_cmp_str_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

/* Check the caller's entries and metadata, and build the padded header. */
static cr_status st_build_header(const cr_st_entry *entries, size_t n, const char *const *meta_kv,
                                 size_t n_meta, st_buf *hdr)
{
    if (n > 0 && !entries) return cr_failure(CR_EINVAL, "entries is NULL but n is %zu", n);
    if (n_meta > 0 && !meta_kv) return cr_failure(CR_EINVAL, "meta_kv is NULL but n_meta is %zu", n_meta);
    if (n_meta > SIZE_MAX / 2) return cr_failure(CR_EINVAL, "n_meta %zu is absurd", n_meta);

    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *e = &entries[i];
        if (!e->name) return cr_failure(CR_EINVAL, "entry %zu has no name", i);
        cr_escaped esc = cr_escape(e->name);
        const char *nm = esc.s;
        if (!st_utf8_ok(e->name)) return cr_failure(CR_EINVAL, "tensor '%s': name is not valid UTF-8", nm);
        if (strcmp(e->name, ST_META_KEY) == 0)
            return cr_failure(CR_EINVAL, "tensor name '%s' is reserved for metadata", nm);
        if (!st_dtype_known(e->dtype))
            return cr_failure(CR_EINVAL, "tensor '%s': unknown dtype value %d", nm, (int)e->dtype);
        if (e->ndim < 0 || e->ndim > CR_MAX_DIMS)
            return cr_failure(CR_EINVAL, "tensor '%s': ndim %d is outside 0..%d", nm, e->ndim, CR_MAX_DIMS);
        char sh[ST_SHAPE_BUF];
        uint64_t need;
        if (!st_nbytes(e->dtype, e->ndim, e->shape, &need))
            return cr_failure(CR_EINVAL, "tensor '%s': shape %s is negative or too large", nm,
                           cr_shape_str(sh, sizeof sh, e->ndim, e->shape));
        if (need != e->nbytes)
            return cr_failure(CR_EINVAL, "tensor '%s': nbytes %zu but dtype %s shape %s needs %llu", nm,
                           e->nbytes, cr_st_dtype_name(e->dtype), cr_shape_str(sh, sizeof sh, e->ndim, e->shape),
                           (unsigned long long)need);
        if (e->nbytes > 0 && !e->data) return cr_failure(CR_EINVAL, "tensor '%s': data is NULL", nm);
    }
    for (size_t i = 0; i < 2 * n_meta; i++) {
        if (!meta_kv[i]) return cr_failure(CR_EINVAL, "metadata %s %zu is NULL", i % 2 ? "value" : "key", i / 2);
        if (!st_utf8_ok(meta_kv[i]))
            return cr_failure(CR_EINVAL, "metadata %s '%s' is not valid UTF-8", i % 2 ? "value" : "key",
                           cr_escape(meta_kv[i]).s);
    }

    /* Duplicates: one sorted array of names for tensors, one for keys. */
    size_t nnames = n > n_meta ? n : n_meta;
    const char **names = malloc((nnames ? nnames : 1) * sizeof *names);
    if (!names) return cr_failure(CR_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) names[i] = entries[i].name;
    const char *dup = st_first_dup(names, n);
    if (dup) {
        free(names);
        return cr_failure(CR_EINVAL, "duplicate tensor name '%s'", cr_escape(dup).s);
    }
    for (size_t i = 0; i < n_meta; i++) names[i] = meta_kv[2 * i];
    dup = st_first_dup(names, n_meta);
    free(names);
    if (dup) return cr_failure(CR_EINVAL, "duplicate metadata key '%s'", cr_escape(dup).s);

    /* The header, metadata first (as the reference implementation writes it),
     * then tensors in data order. */
    sb_put(hdr, "{", 1);
    if (n_meta > 0) {
        sb_puts(hdr, "\"" ST_META_KEY "\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i) sb_put(hdr, ",", 1);
            sb_json_str(hdr, meta_kv[2 * i]);
            sb_put(hdr, ":", 1);
            sb_json_str(hdr, meta_kv[2 * i + 1]);
        }
        sb_puts(hdr, "}");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *e = &entries[i];
        if (i || n_meta) sb_put(hdr, ",", 1);
        sb_json_str(hdr, e->name);
        sb_puts(hdr, ":{\"dtype\":\"");
        sb_puts(hdr, cr_st_dtype_name(e->dtype));
        sb_puts(hdr, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            if (d) sb_put(hdr, ",", 1);
            sb_u64(hdr, (uint64_t)e->shape[d]);
        }
        sb_puts(hdr, "],\"data_offsets\":[");
        sb_u64(hdr, off);
        sb_put(hdr, ",", 1);
        if (e->nbytes > UINT64_MAX - off) return cr_failure(CR_EINVAL, "total data size overflows");
        off += e->nbytes;
        sb_u64(hdr, off);
        sb_puts(hdr, "]}");
    }
    sb_put(hdr, "}", 1);
    /* Pad so the data section starts 8-byte aligned (the 8-byte length field
     * plus a header that is a multiple of 8). */
    while (!hdr->oom && hdr->len % 8 != 0) sb_put(hdr, " ", 1);
    if (hdr->oom) return cr_failure(CR_ENOMEM, "out of memory building the header");
    if ((uint64_t)hdr->len > CR_ST_MAX_HEADER)
        return cr_failure(CR_EINVAL, "header of %zu bytes exceeds the %llu-byte limit", hdr->len,
                       (unsigned long long)CR_ST_MAX_HEADER);
    return CR_OK;
}

/* Permission bits for a new file: those of the file being replaced, else
 * 0666 minus the umask. umask() can only be read by setting it (racy in a
 * threaded program), so read it from /proc; when that is unavailable keep
 * 0600, the safe side. */
static mode_t st_new_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return st.st_mode & 07777;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0600;
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

/* Temporary files: "<path>.tmp.<pid>.<6 letters>", beside the target so the
 * rename is atomic (same file system). The pid says which process owns one, so
 * a later save can tell a leftover of a killed save from a save in progress. */
#define ST_TMP_TAG ".tmp."

/* dir and base of path (dir "." when path has no slash); malloc'd, NULL when out of memory. */
static char *st_dir_of(const char *path, const char **base)
{
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    return slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
}

/* Remove "<base>.tmp.<pid>.*" files in dir whose process no longer exists
 * (leftovers of a save that was killed). Best effort: errors are ignored, and
 * a file whose pid is alive, or that another naming made, is left alone. */
static void st_remove_stale_temps(const char *dir, const char *base)
{
    DIR *d = opendir(dir);
    if (!d) return;
    size_t bl = strlen(base), tl = strlen(ST_TMP_TAG);
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (strncmp(nm, base, bl) != 0 || strncmp(nm + bl, ST_TMP_TAG, tl) != 0) continue;
        const char *p = nm + bl + tl;
        long long pid = 0;
        int digits = 0;
        for (; *p >= '0' && *p <= '9' && digits < 10; p++, digits++) pid = pid * 10 + (*p - '0');
        if (digits == 0 || *p != '.' || strlen(p + 1) != 6 || pid <= 0 || pid > INT32_MAX) continue;
        if (pid == (long long)getpid()) continue; /* another thread of ours may be saving */
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
        unlinkat(dirfd(d), nm, 0);
    }
    closedir(d);
}

/* Fill the last six bytes of name (the X's) with letters from a counter. */
static void st_tmp_letters(char *name)
{
    static _Atomic unsigned long counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40) ^
                 (uint64_t)counter++ * 0x9E3779B97F4A7C15u;
    char *p = name + strlen(name) - 6;
    for (int i = 0; i < 6; i++, x /= 26) p[i] = (char)('a' + x % 26);
}

static bool st_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

/* Write length, header and every tensor's data to fd, then fsync. */
static bool st_write_body(int fd, const unsigned char lenbytes[8], const st_buf *hdr, const cr_st_entry *entries,
                          size_t n, const char **step)
{
    *step = "write";
    bool ok = st_write_all(fd, lenbytes, 8) && st_write_all(fd, hdr->p, hdr->len);
    for (size_t i = 0; ok && i < n; i++) ok = st_write_all(fd, entries[i].data, entries[i].nbytes);
    if (ok && fsync(fd) != 0) ok = false, *step = "fsync";
    return ok;
}

/* Create the temporary file and write everything into it; on success *tmp
 * names it (complete and synced). With tmpfile, an unnamed O_TMPFILE file
 * that is linked to *tmp only at the end; *fallback is set when that is not
 * possible here (no O_TMPFILE, no /proc), so the caller tries a named file. */
static cr_status st_write_temp(const char *path, const char *dir, char *tmp, bool tmpfile, mode_t mode,
                               const unsigned char lenbytes[8], const st_buf *hdr, const cr_st_entry *entries,
                               size_t n, bool *fallback)
{
    int fd = -1;
    *fallback = false;
    if (tmpfile) {
#ifdef O_TMPFILE
        fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
#else
        errno = EOPNOTSUPP;
#endif
        if (fd < 0) {
            /* EISDIR / EOPNOTSUPP / EINVAL: no O_TMPFILE on this kernel or file system. */
            *fallback = errno != EACCES && errno != EROFS && errno != ENOSPC && errno != EDQUOT;
            if (!*fallback)
                return cr_failure(CR_EIO, "%s: cannot create a temporary file beside it: %s", path,
                               strerror(errno));
            return CR_EIO;
        }
    } else {
        fd = mkstemp(tmp);
        if (fd < 0)
            return cr_failure(CR_EIO, "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    }
    /* A file system without permissions (FAT, some network mounts) refuses
     * fchmod; the file then keeps mode 0600, which is no reason to fail. */
    if (fchmod(fd, mode) != 0) {
    }
    const char *step;
    bool ok = st_write_body(fd, lenbytes, hdr, entries, n, &step);
    int e = errno;
    bool linked = !tmpfile;
    if (ok && tmpfile) {
        /* Give the complete file a name (linkat through /proc, which needs no
         * privilege, unlike AT_EMPTY_PATH). */
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        for (int tries = 0; tries < 100 && !linked; tries++) {
            st_tmp_letters(tmp);
            if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) == 0)
                linked = true;
            else if (errno != EEXIST)
                break;
        }
        if (!linked) {
            close(fd);
            *fallback = true;
            return CR_EIO;
        }
    }
    /* close also reports delayed write errors on some file systems. */
    if (close(fd) != 0 && ok) ok = false, step = "close", e = errno;
    if (!ok) {
        if (linked) unlink(tmp);
        return cr_failure(CR_EIO, "%s: %s failed: %s", path, step, strerror(e));
    }
    return CR_OK;
}

cr_status cr_st_write(const char *path, const cr_st_entry *entries, size_t n, const char *const *meta_kv,
                      size_t n_meta)
{
    if (!path || !*path) return cr_failure(CR_EINVAL, "no path given");
    st_buf hdr = {0};
    cr_status st = st_build_header(entries, n, meta_kv, n_meta, &hdr);
    if (st != CR_OK) {
        free(hdr.p);
        return st;
    }
    unsigned char lenbytes[8];
    for (int i = 0; i < 8; i++) lenbytes[i] = (unsigned char)((uint64_t)hdr.len >> (8 * i));

    const char *base;
    char *dir = st_dir_of(path, &base);
    size_t tlen = strlen(path) + strlen(ST_TMP_TAG) + 24;
    char *tmp = malloc(tlen);
    if (!dir || !tmp) {
        free(hdr.p);
        free(dir);
        free(tmp);
        return cr_failure(CR_ENOMEM, "%s: out of memory", path);
    }
    st_remove_stale_temps(dir, base);

    /* Preferably an unnamed file (O_TMPFILE): a save killed while writing
     * leaves nothing behind, and the file is named only once complete, just
     * before the rename. Else a named file, which the next save of the same
     * target removes if this process dies first. */
    mode_t mode = st_new_mode(path);
    bool fallback;
    snprintf(tmp, tlen, "%s" ST_TMP_TAG "%ld.XXXXXX", path, (long)getpid());
    st = st_write_temp(path, dir, tmp, true, mode, lenbytes, &hdr, entries, n, &fallback);
    if (st != CR_OK && fallback) {
        snprintf(tmp, tlen, "%s" ST_TMP_TAG "%ld.XXXXXX", path, (long)getpid());
        st = st_write_temp(path, dir, tmp, false, mode, lenbytes, &hdr, entries, n, &fallback);
    }
    free(hdr.p);
    if (st == CR_OK && rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        st = cr_failure(CR_EIO, "%s: cannot rename the temporary file over it: %s", path, strerror(e));
    }
    free(tmp);
    if (st != CR_OK) {
        free(dir);
        return st;
    }

    /* Make the rename itself durable: fsync the directory entry. Some file
     * systems cannot fsync a directory (EINVAL); nothing more to do there. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL))
        st = cr_failure(CR_EIO, "%s: written, but syncing directory %s failed: %s", path, dir, strerror(errno));
    if (dfd >= 0) close(dfd);
    free(dir);
    return st;
}

/* ---- reader ----------------------------------------------------------------- */
/*
 * The header has a fixed shape: one object whose values are tensor entries
 * (objects with exactly "dtype": string, "shape": [integers], "data_offsets":
 * [integer, integer]) or the "__metadata__" object of strings. A parser that
 * knows that shape needs no tree, no recursion and no global state: it reads
 * the bytes once, keeps only what the file will hold (one entry per tensor,
 * the decoded strings) and stops at the first byte that cannot belong to a
 * valid header, e.g. at the 9th dim of a shape or a '[' where a dtype should be.
 * Memory: strings are decoded in place, into the header buffer itself: a
 * decoded JSON string (plus its NUL) is never longer than its literal, so the
 * bytes written stay behind the bytes read, and the buffer is then shrunk to
 * the strings kept. Besides it, one cr_st_entry (96 bytes) and one pointer per
 * tensor, whose header text takes at least 50 bytes: at most about three times
 * the header in all, 2.3x for typical names.
 */

typedef struct st_parser {
    const char *start, *p, *end;
    char *pool; /* = start: decoded strings, written behind p; entries hold offsets into it until the end */
    size_t pool_len;
    cr_st_entry *e; /* e[i].name: pool offset; e[i].data: begin offset */
    size_t n, cap;
    st_meta *meta; /* key/value: pool offsets */
    size_t n_meta, meta_cap;
    uint64_t data_len;
} st_parser;

static cr_status st_bad_json(const st_parser *P)
{
    return cr_failure(CR_EFORMAT, "header is not valid JSON (near byte %zu of %zu)", (size_t)(P->p - P->start),
                   (size_t)(P->end - P->start));
}

static void st_ws(st_parser *P)
{
    while (P->p < P->end && (*P->p == ' ' || *P->p == '\t' || *P->p == '\n' || *P->p == '\r')) P->p++;
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
        if ((size_t)(P->end - P->p) >= strlen(lit[i]) && memcmp(P->p, lit[i], strlen(lit[i])) == 0) return true;
    return false;
}

static int st_hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
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
    const char *s = P->p + 1, *end = P->end;
    char *o = P->pool + P->pool_len;
    *off = P->pool_len;
    while (s < end && *s != '"') {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20) {
            P->p = s;
            return st_bad_json(P);
        }
        if (c >= 0x80) {
            size_t k = st_utf8_seq((const unsigned char *)s, (size_t)(end - s));
            if (!k) return cr_failure(CR_EFORMAT, "header is not valid UTF-8 (byte %zu)", (size_t)(s - P->start));
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
        if (end - s < 2) { /* a backslash as the header's last byte */
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
        long cp = end - s >= 4 ? st_hex4(s) : -1;
        if (cp < 0) {
            P->p = s - 2;
            return st_bad_json(P);
        }
        s += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a high surrogate needs its low half */
            long lo = end - s >= 6 && s[0] == '\\' && s[1] == 'u' ? st_hex4(s + 2) : -1;
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
    if (s >= end) {
        P->p = end;
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
        for (; s < P->end && *s >= '0' && *s <= '9'; s++) {
            unsigned d = (unsigned)(*s - '0');
            if (v > ((uint64_t)INT64_MAX - d) / 10) return false;
            v = v * 10 + d;
        }
    }
    if (s < P->end && ((*s >= '0' && *s <= '9') || *s == '.' || *s == 'e' || *s == 'E')) return false;
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
        return st_value_start(P) ? cr_failure(CR_EFORMAT, "tensor '%s': entry is not an object", NM) : st_bad_json(P);
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
            if (have[f]) return cr_failure(CR_EFORMAT, "tensor '%s': field '%s' appears twice", NM, fields[f]);
            have[f] = true;
            if (!st_take(P, ':')) return st_bad_json(P);
            if (f == 0) {
                if (!st_peek(P, '"'))
                    return st_value_start(P) ? cr_failure(CR_EFORMAT, "tensor '%s': dtype is not a string", NM)
                                             : st_bad_json(P);
                const char *dt;
                if ((st = st_scratch_string(P, &dt)) != CR_OK) return st;
                if (!st_dtype_parse(dt, &e.dtype))
                    return cr_failure(CR_EFORMAT, "tensor '%s': unsupported dtype '%s' (carousel reads F32, F64, I32)",
                                   NM, cr_escape(dt).s);
            } else if (f == 1) {
                if (!st_take(P, '['))
                    return st_value_start(P) || st_peek(P, '{')
                               ? cr_failure(CR_EFORMAT, "tensor '%s': shape is not an array", NM)
                               : st_bad_json(P);
                if (!st_take(P, ']')) {
                    for (;;) {
                        if (e.ndim == CR_MAX_DIMS)
                            return cr_failure(CR_EFORMAT, "tensor '%s': shape has more than %d dims", NM, CR_MAX_DIMS);
                        uint64_t d;
                        if (!st_uint(P, &d))
                            return cr_failure(CR_EFORMAT, "tensor '%s': shape[%d] is not a non-negative integer", NM,
                                           e.ndim);
                        e.shape[e.ndim++] = (int64_t)d;
                        if (st_take(P, ']')) break;
                        if (!st_take(P, ',')) return st_bad_json(P);
                    }
                }
            } else {
                if (!(st_take(P, '[') && st_uint(P, &begin) && st_take(P, ',') && st_uint(P, &end) &&
                      st_take(P, ']')))
                    return cr_failure(CR_EFORMAT,
                                   "tensor '%s': data_offsets is not an array of two non-negative integers", NM);
            }
            if (st_take(P, '}')) break;
            if (!st_take(P, ',')) return st_bad_json(P);
        }
    }
    for (int f = 0; f < 3; f++)
        if (!have[f]) return cr_failure(CR_EFORMAT, "tensor '%s': missing field '%s'", NM, fields[f]);

    char sh[ST_SHAPE_BUF];
    cr_shape_str(sh, sizeof sh, e.ndim, e.shape);
    uint64_t need;
    if (!st_nbytes(e.dtype, e.ndim, e.shape, &need))
        return cr_failure(CR_EFORMAT, "tensor '%s': dtype %s shape %s overflows", NM, cr_st_dtype_name(e.dtype), sh);
    unsigned long long b = begin, en = end;
    if (b > en) return cr_failure(CR_EFORMAT, "tensor '%s': data_offsets [%llu,%llu] begin after end", NM, b, en);
    if (en > P->data_len)
        return cr_failure(CR_EFORMAT, "tensor '%s': data_offsets [%llu,%llu] end beyond the %llu-byte data section", NM,
                       b, en, (unsigned long long)P->data_len);
    if (en - b != need)
        return cr_failure(CR_EFORMAT, "tensor '%s': data_offsets [%llu,%llu] but dtype %s shape %s needs %llu bytes", NM,
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
        return st_value_start(P) ? cr_failure(CR_EFORMAT, ST_META_KEY " is not an object") : st_bad_json(P);
    if (st_take(P, '}')) return CR_OK;
    for (;;) {
        size_t k, v;
        if (!st_peek(P, '"')) return st_bad_json(P);
        cr_status st = st_string(P, &k);
        if (st != CR_OK) return st;
        if (!st_take(P, ':')) return st_bad_json(P);
        if (!st_peek(P, '"'))
            return st_value_start(P) || st_peek(P, '{')
                       ? cr_failure(CR_EFORMAT, ST_META_KEY " value of '%s' is not a string", cr_escape(P->pool + k).s)
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
            if (strcmp(P->pool + k, ST_META_KEY) == 0) {
                if (seen_meta) return cr_failure(CR_EFORMAT, ST_META_KEY " appears twice");
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
    if (P->p != P->end)
        return cr_failure(CR_EFORMAT, "header has bytes after the JSON object (byte %zu)", (size_t)(P->p - P->start));
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
 * section has data_len bytes. On success *out holds every entry (data not
 * attached yet: entries' data are offsets into the data section). */
static cr_status st_parse_header(char *h, size_t hlen, uint64_t data_len, cr_st_file **out)
{
    const char *nul = memchr(h, 0, hlen);
    if (nul) {
        size_t at = (size_t)(nul - h);
        free(h);
        return cr_failure(CR_EFORMAT, "header has a NUL byte at offset %zu", at);
    }
    st_parser P = {.start = h, .p = h, .end = h + hlen, .pool = h, .data_len = data_len};
    /* Every tensor has one "data_offsets" key: counting them sizes the entry
     * array exactly (a key spelled with escapes falls back to doubling). */
    size_t guess = 0;
    for (const char *q = h; (q = memmem(q, hlen - (size_t)(q - h), "\"data_offsets\"", 14)); q += 14) guess++;
    if (guess > hlen / 50 + 1) guess = hlen / 50 + 1; /* a tensor entry takes at least 50 bytes */
    cr_st_file *f = calloc(1, sizeof *f);
    P.cap = guess;
    P.e = guess ? malloc(guess * sizeof *P.e) : NULL;
    cr_status st = f && (P.e || !guess) ? st_parse_object(&P) : cr_failure(CR_ENOMEM, "out of memory");
    if (st != CR_OK) goto fail;

    /* Offsets into the pool become pointers once it has its final size. */
    char *pool = realloc(P.pool, P.pool_len ? P.pool_len : 1);
    if (pool) P.pool = pool;
    if (P.n < P.cap) {
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
    const char *dup = st_first_dup(keys, f->n_meta);
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
    if (len < 8) return cr_failure(CR_EFORMAT, "file is %llu bytes, shorter than the 8-byte header length",
                                (unsigned long long)len);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = (h << 8) | b[i];
    if (h > CR_ST_MAX_HEADER)
        return cr_failure(CR_EFORMAT, "header length %llu exceeds the %llu-byte limit", (unsigned long long)h,
                       (unsigned long long)CR_ST_MAX_HEADER);
    if (h > len - 8)
        return cr_failure(CR_EFORMAT, "header length %llu exceeds the %llu bytes after it", (unsigned long long)h,
                       (unsigned long long)(len - 8));
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
    if (!h) return cr_failure(CR_ENOMEM, "out of memory copying a %llu-byte header", (unsigned long long)hlen);
    memcpy(h, b + 8, (size_t)hlen);
    if ((st = st_parse_header(h, (size_t)hlen, len - 8 - hlen, &f)) != CR_OK) return st;
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
        st = cr_failure(CR_ENOMEM, "%s: out of memory reading a %llu-byte header", path, (unsigned long long)hlen);
        goto done;
    }
    if (!st_read_all(fd, hdr, (size_t)hlen, &e)) goto short_read;
    size_t data_len = (size_t)(size - 8 - hlen);
    st = st_parse_header(hdr, (size_t)hlen, data_len, &f);
    hdr = NULL; /* the parser took it */
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

const cr_st_entry *cr_st_entry_at(const cr_st_file *f, size_t i) { return f && i < f->n ? &f->entries[i] : NULL; }

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
