/* The safetensors writer: validates the caller's entries and metadata, builds
 * the padded JSON header, and writes the file atomically through an unnamed
 * temporary file (O_TMPFILE, else a named one that the next save of the same
 * target cleans up if this process dies). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_TMPFILE */
#endif

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
#error "checkpoint/st_write.c copies tensor data raw and needs a little-endian host"
#endif

static bool st_utf8_ok(const char *s)
{
    size_t len = strlen(s);
    for (size_t i = 0, k; i < len; i += k)
        if (!(k = cr_st_utf8_seq((const unsigned char *)s + i, len - i))) return false;
    return true;
}

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
        default: snprintf(esc, sizeof esc, "\\u%04x", c); sb_puts(b, esc);
        }
        run = s + 1;
    }
    sb_put(b, run, (size_t)(s - run));
    sb_put(b, "\"", 1);
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
        if (strcmp(e->name, CR_ST_META_KEY) == 0)
            return cr_failure(CR_EINVAL, "tensor name '%s' is reserved for metadata", nm);
        if (!cr_st_dtype_known(e->dtype))
            return cr_failure(CR_EINVAL, "tensor '%s': unknown dtype value %d", nm, (int)e->dtype);
        if (e->ndim < 0 || e->ndim > CR_MAX_DIMS)
            return cr_failure(CR_EINVAL, "tensor '%s': ndim %d is outside 0..%d", nm, e->ndim, CR_MAX_DIMS);
        char sh[CR_ST_SHAPE_BUF];
        uint64_t need;
        if (!cr_st_nbytes(e->dtype, e->ndim, e->shape, &need))
            return cr_failure(CR_EINVAL, "tensor '%s': shape %s is negative or too large", nm,
                              cr_shape_str(sh, sizeof sh, e->ndim, e->shape));
        if (need != e->nbytes)
            return cr_failure(CR_EINVAL, "tensor '%s': nbytes %zu but dtype %s shape %s needs %llu", nm,
                              e->nbytes, cr_st_dtype_name(e->dtype),
                              cr_shape_str(sh, sizeof sh, e->ndim, e->shape), (unsigned long long)need);
        if (e->nbytes > 0 && !e->data) return cr_failure(CR_EINVAL, "tensor '%s': data is NULL", nm);
    }
    for (size_t i = 0; i < 2 * n_meta; i++) {
        if (!meta_kv[i])
            return cr_failure(CR_EINVAL, "metadata %s %zu is NULL", i % 2 ? "value" : "key", i / 2);
        if (!st_utf8_ok(meta_kv[i]))
            return cr_failure(CR_EINVAL, "metadata %s '%s' is not valid UTF-8", i % 2 ? "value" : "key",
                              cr_escape(meta_kv[i]).s);
    }

    /* Duplicates: one sorted array of names for tensors, one for keys. */
    size_t nnames = n > n_meta ? n : n_meta;
    const char **names = malloc((nnames ? nnames : 1) * sizeof *names);
    if (!names) return cr_failure(CR_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) names[i] = entries[i].name;
    const char *dup = cr_st_first_dup(names, n);
    if (dup) {
        free(names);
        return cr_failure(CR_EINVAL, "duplicate tensor name '%s'", cr_escape(dup).s);
    }
    for (size_t i = 0; i < n_meta; i++) names[i] = meta_kv[2 * i];
    dup = cr_st_first_dup(names, n_meta);
    free(names);
    if (dup) return cr_failure(CR_EINVAL, "duplicate metadata key '%s'", cr_escape(dup).s);

    /* The header, metadata first (as the reference implementation writes it),
     * then tensors in data order. */
    sb_put(hdr, "{", 1);
    if (n_meta > 0) {
        sb_puts(hdr, "\"" CR_ST_META_KEY "\":{");
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
        if (pid == (long long)getpid()) continue;                 /* another thread of ours may be saving */
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
static bool st_write_body(int fd, const unsigned char lenbytes[8], const st_buf *hdr,
                          const cr_st_entry *entries, size_t n, const char **step)
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
            return cr_failure(CR_EIO, "%s: cannot create a temporary file beside it: %s", path,
                              strerror(errno));
    }
    /* A file system without permissions (FAT, some network mounts) refuses
     * fchmod; the file then keeps mode 0600, which is no reason to fail. */
    if (fchmod(fd, mode) != 0) {}
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
        st = cr_failure(CR_EIO, "%s: written, but syncing directory %s failed: %s", path, dir,
                        strerror(errno));
    if (dfd >= 0) close(dfd);
    free(dir);
    return st;
}
