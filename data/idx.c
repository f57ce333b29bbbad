/* IDX files (LeCun's format of MNIST and Fashion-MNIST), gzip-compressed or
 * plain, read through zlib: the header is validated before anything is
 * allocated for the data, the buffer grows with the bytes actually read (a
 * header that lies costs no more memory than the file holds), and any
 * truncation, trailing byte or corrupt gzip stream is a CR_EFORMAT. One
 * exception, zlib's: bytes after a complete gzip stream that do not start
 * another are ignored by gzread, so a compressed file with junk appended
 * reads as its stream alone (refusing it would mean inflating by hand). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "data.h"

size_t cr_idx_type_size(cr_idx_type t)
{
    switch (t) {
    case CR_IDX_U8:
    case CR_IDX_I8: return 1;
    case CR_IDX_I16: return 2;
    case CR_IDX_I32:
    case CR_IDX_F32: return 4;
    case CR_IDX_F64: return 8;
    }
    return 0;
}

const char *cr_idx_type_name(cr_idx_type t)
{
    switch (t) {
    case CR_IDX_U8: return "u8";
    case CR_IDX_I8: return "i8";
    case CR_IDX_I16: return "i16";
    case CR_IDX_I32: return "i32";
    case CR_IDX_F32: return "f32";
    case CR_IDX_F64: return "f64";
    }
    return "?";
}

void cr_idx_free(cr_idx *idx)
{
    if (!idx) return;
    free(idx->data);
    free(idx);
}

/* The stream's error after a read that stopped short: a system error, a
 * corrupt or cut gzip stream, or CR_OK at a clean end of the file. */
static cr_status stream_failure(gzFile f, const char *path, const char *what)
{
    int zerr = Z_OK;
    const char *zmsg = gzerror(f, &zerr);
    if (zerr == Z_ERRNO)
        return cr_failure(CR_EIO, "%s: read error in the %s: %s", path, what, strerror(errno));
    if (zerr == Z_MEM_ERROR) return cr_failure(CR_ENOMEM, "%s: out of memory while decompressing", path);
    if (zerr != Z_OK) { /* Z_DATA_ERROR (corrupt), Z_BUF_ERROR (gzip stream cut short) */
        /* zlib's message repeats the path ("path: incorrect data check"); and
         * it decompresses ahead, so which part of the IDX file was hit is unknown */
        size_t pl = strlen(path);
        if (!strncmp(zmsg, path, pl) && !strncmp(zmsg + pl, ": ", 2)) zmsg += pl + 2;
        return cr_failure(CR_EFORMAT, "%s: corrupt or truncated gzip stream: %s", path, zmsg);
    }
    return CR_OK;
}

/* After gzread failed: its error, never CR_OK. */
static cr_status read_failure(gzFile f, const char *path, const char *what)
{
    cr_status st = stream_failure(f, path, what);
    return st != CR_OK ? st : cr_failure(CR_EIO, "%s: read error in the %s", path, what);
}

/* Read up to n bytes (n may exceed gzread's unsigned range); *got is how many came. */
static bool read_full(gzFile f, void *buf, size_t n, size_t *got)
{
    *got = 0;
    while (*got < n) {
        size_t want = n - *got > (1u << 30) ? (1u << 30) : n - *got;
        int r = gzread(f, (char *)buf + *got, (unsigned)want);
        if (r < 0) return false;
        if (r == 0) break;
        *got += (size_t)r;
    }
    return true;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Elements arrive big-endian; turn them into host order in place. */
static void to_host_order(void *data, int64_t n, size_t size)
{
    const uint16_t probe = 1;
    unsigned char first;
    memcpy(&first, &probe, 1);
    if (!first || size == 1) return; /* big-endian host, or bytes */
    unsigned char *p = data;
    for (int64_t i = 0; i < n; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

static cr_status read_idx(gzFile f, const char *path, cr_idx *idx)
{
    unsigned char head[4 + 4 * CR_MAX_DIMS];
    size_t got;
    if (!read_full(f, head, 4, &got)) return read_failure(f, path, "header");
    if (got < 4) {
        cr_status st = stream_failure(f, path, "header");
        if (st != CR_OK) return st;
        return cr_failure(CR_EFORMAT,
                          "%s: %s: an IDX header has 4 bytes of magic number, the file has %zu bytes", path,
                          got ? "truncated" : "empty", got);
    }
    if (head[0] || head[1])
        return cr_failure(CR_EFORMAT,
                          "%s: not an IDX file: magic number %02x %02x %02x %02x does not start with 00 00",
                          path, head[0], head[1], head[2], head[3]);
    idx->type = (cr_idx_type)head[2];
    size_t es = cr_idx_type_size(idx->type);
    if (!es)
        return cr_failure(CR_EFORMAT,
                          "%s: unknown IDX element type 0x%02x (known: 08 u8, 09 i8, 0B i16, 0C i32, "
                          "0D f32, 0E f64)",
                          path, head[2]);
    idx->ndim = head[3];
    if (idx->ndim < 1 || idx->ndim > CR_MAX_DIMS)
        return cr_failure(CR_EFORMAT, "%s: %d dims in the IDX header (1 to %d supported)", path, idx->ndim,
                          CR_MAX_DIMS);
    if (!read_full(f, head + 4, 4 * (size_t)idx->ndim, &got)) return read_failure(f, path, "header");
    if (got < 4 * (size_t)idx->ndim) {
        cr_status st = stream_failure(f, path, "header");
        if (st != CR_OK) return st;
        return cr_failure(CR_EFORMAT,
                          "%s: truncated header: %d dims need %d bytes of sizes, the file has %zu", path,
                          idx->ndim, 4 * idx->ndim, got);
    }
    /* A shape cr_idx_tensor can make a tensor of, in its largest dtype (f64):
     * the product of the nonzero dims bounded too when a zero dim empties
     * it, since it gives the strides (cr_tensor_init would abort). */
    for (int d = 0; d < idx->ndim; d++) idx->shape[d] = be32(head + 4 + 4 * d);
    char s[160];
    cr_shape_str(s, sizeof s, idx->ndim, idx->shape);
    int64_t numel;
    if (!cr_shape_fits(CR_F64, idx->ndim, idx->shape, &numel))
        return cr_failure(CR_EFORMAT, "%s: sizes %s of %s hold more bytes than memory can address", path, s,
                          cr_idx_type_name(idx->type));
    int64_t bytes = numel * (int64_t)es; /* es <= 8: fits */
    idx->numel = numel;
    /* Grow with what arrives, from at most 1 MiB: a header promising more than
     * the file holds fails at the end of the file, not at a huge malloc. */
    size_t cap = (size_t)bytes < ((size_t)1 << 20) ? (size_t)bytes : (size_t)1 << 20, have = 0;
    unsigned char *buf = malloc(cap ? cap : 1);
    if (!buf) return cr_failure(CR_ENOMEM, "%s: out of memory (%zu bytes)", path, cap);
    for (;;) {
        if (!read_full(f, buf + have, cap - have, &got)) {
            free(buf);
            return read_failure(f, path, "data");
        }
        have += got;
        if (have < cap || cap == (size_t)bytes) break;
        size_t next = cap > (size_t)bytes / 2 ? (size_t)bytes : 2 * cap;
        unsigned char *nb = realloc(buf, next);
        if (!nb) {
            free(buf);
            return cr_failure(CR_ENOMEM, "%s: out of memory (%zu bytes for data of %s)", path, next, s);
        }
        buf = nb;
        cap = next;
    }
    if (have < (size_t)bytes) {
        free(buf);
        cr_status st = stream_failure(f, path, "data");
        if (st != CR_OK) return st;
        return cr_failure(CR_EFORMAT,
                          "%s: truncated: shape %s of %s needs %lld bytes of data, the file has %zu", path, s,
                          cr_idx_type_name(idx->type), (long long)bytes, have);
    }
    /* nothing may follow the data, and a gzip stream must end cleanly */
    unsigned char extra;
    bool ok = read_full(f, &extra, 1, &got);
    if (!ok || got) {
        free(buf);
        if (!ok) return read_failure(f, path, "data");
        return cr_failure(CR_EFORMAT, "%s: bytes after the %lld bytes of data of shape %s", path,
                          (long long)bytes, s);
    }
    cr_status st = stream_failure(f, path, "data");
    if (st != CR_OK) {
        free(buf);
        return st;
    }
    to_host_order(buf, numel, es);
    idx->data = buf;
    return CR_OK;
}

cr_status cr_idx_read(const char *path, cr_idx **out)
{
    if (!path || !out) cr_error("cr_idx_read: path and out must not be NULL");
    *out = NULL;
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        if (errno) return cr_failure(CR_EIO, "%s: cannot open: %s", path, strerror(errno));
        return cr_failure(CR_ENOMEM, "%s: out of memory opening it", path);
    }
    gzbuffer(f, 1 << 17);
    cr_idx *idx = calloc(1, sizeof *idx);
    if (!idx) {
        gzclose(f);
        return cr_failure(CR_ENOMEM, "%s: out of memory", path);
    }
    cr_status st = read_idx(f, path, idx);
    gzclose(f);
    if (st != CR_OK) {
        cr_idx_free(idx);
        return st;
    }
    *out = idx;
    return CR_OK;
}

cr_tensor *cr_idx_tensor(const cr_idx *idx, cr_dtype dt)
{
    if (!idx) cr_error("cr_idx_tensor: idx is NULL");
    bool integer = idx->type != CR_IDX_F32 && idx->type != CR_IDX_F64;
    if (dt == CR_I32 && !integer)
        cr_error("cr_idx_tensor: %s values do not convert to i32 exactly; read them as f32 or f64",
                 cr_idx_type_name(idx->type));
    cr_tensor *t = cr_tensor_init(dt, idx->ndim, idx->shape);
    for (int64_t i = 0; i < idx->numel; i++) {
        double v;
        switch (idx->type) {
        case CR_IDX_U8: v = ((const uint8_t *)idx->data)[i]; break;
        case CR_IDX_I8: v = ((const int8_t *)idx->data)[i]; break;
        case CR_IDX_I16: v = ((const int16_t *)idx->data)[i]; break;
        case CR_IDX_I32: v = ((const int32_t *)idx->data)[i]; break;
        case CR_IDX_F32: v = ((const float *)idx->data)[i]; break;
        default: v = ((const double *)idx->data)[i]; break;
        }
        if (dt == CR_F32)
            ((float *)t->data)[i] = (float)v;
        else if (dt == CR_F64)
            ((double *)t->data)[i] = v;
        else
            ((int32_t *)t->data)[i] = (int32_t)v;
    }
    return t;
}
