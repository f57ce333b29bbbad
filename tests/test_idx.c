/*
 * The IDX reader (data/idx.c): valid files of every element type, gzipped and
 * plain, and hostile ones (bad magic, types, dims, overflowing sizes, lying
 * headers, truncation, trailing bytes, corrupt gzip, random mutations), each
 * refused with a status and a message, never a crash.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <zlib.h>

#include "carousel/data.h"
#include "tmpdir.h"

static void setup(void) { tmpdir_make("idx"); }
TestSuite(idx, .init = setup, .fini = tmpdir_remove);

static void write_plain(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

static void write_gz(const char *path, const void *bytes, size_t n)
{
    gzFile f = gzopen(path, "wb");
    cr_assert_not_null(f);
    if (n) cr_assert_eq(gzwrite(f, bytes, (unsigned)n), (int)n);
    cr_assert_eq(gzclose(f), Z_OK);
}

/* read a whole file back */
static size_t slurp(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* header: 00 00 type ndim, then the dims big-endian */
static size_t header(unsigned char *p, int type, int ndim, const uint32_t *dims)
{
    p[0] = 0, p[1] = 0, p[2] = (unsigned char)type, p[3] = (unsigned char)ndim;
    for (int d = 0; d < ndim; d++) {
        p[4 + 4 * d] = (unsigned char)(dims[d] >> 24);
        p[5 + 4 * d] = (unsigned char)(dims[d] >> 16);
        p[6 + 4 * d] = (unsigned char)(dims[d] >> 8);
        p[7 + 4 * d] = (unsigned char)dims[d];
    }
    return 4 + 4 * (size_t)ndim;
}

/* a valid u8 [3, 2, 2] file: values 0, 7, 14, ... */
static size_t small_u8(unsigned char *p)
{
    size_t n = header(p, 0x08, 3, (uint32_t[]){3, 2, 2});
    for (int i = 0; i < 12; i++) p[n++] = (unsigned char)(7 * i);
    return n;
}

static cr_idx *read_ok(const char *path)
{
    cr_idx *idx = NULL;
    cr_status st = cr_idx_read(path, &idx);
    cr_assert_eq(st, CR_OK, "%s: %s", path, cr_last_error());
    cr_assert_not_null(idx);
    return idx;
}

/* the read fails with st and a message containing text; *out stays NULL */
static void read_fails(const char *path, cr_status st, const char *text)
{
    cr_idx *idx = (cr_idx *)1;
    cr_status got = cr_idx_read(path, &idx);
    cr_assert_eq(got, st, "%s: status %s, expected %s (%s)", path, cr_status_str(got), cr_status_str(st),
                 cr_last_error());
    cr_assert_null(idx);
    cr_assert(strstr(cr_last_error(), text), "message \"%s\" lacks \"%s\"", cr_last_error(), text);
    cr_assert(strstr(cr_last_error(), path), "message \"%s\" does not name the file", cr_last_error());
}

Test(idx, reads_gzipped_and_plain_u8)
{
    unsigned char b[64];
    size_t n = small_u8(b);
    write_gz(tpath("a.gz"), b, n);
    write_plain(tpath("a"), b, n);
    for (int k = 0; k < 2; k++) {
        cr_idx *idx = read_ok(tpath(k ? "a" : "a.gz"));
        cr_assert_eq(idx->type, CR_IDX_U8);
        cr_assert_eq(idx->ndim, 3);
        cr_assert(idx->shape[0] == 3 && idx->shape[1] == 2 && idx->shape[2] == 2);
        cr_assert_eq(idx->numel, 12);
        for (int i = 0; i < 12; i++) cr_assert_eq(((uint8_t *)idx->data)[i], 7 * i);
        cr_tensor *t = cr_idx_tensor(idx, CR_F32), *l = cr_idx_tensor(idx, CR_I32);
        cr_assert(t->ndim == 3 && t->shape[0] == 3 && t->shape[2] == 2 && t->persistent);
        cr_assert_eq(((float *)t->data)[11], 77.0f);
        cr_assert_eq(((int32_t *)l->data)[5], 35);
        cr_tensor_free(t);
        cr_tensor_free(l);
        cr_idx_free(idx);
    }
    cr_idx_free(NULL);
}

Test(idx, converts_every_type_from_big_endian)
{
    unsigned char b[256];
    /* i8 [2]: -3, 100 */
    size_t n = header(b, 0x09, 1, (uint32_t[]){2});
    b[n++] = 0xFD, b[n++] = 100;
    write_gz(tpath("i8"), b, n);
    cr_idx *idx = read_ok(tpath("i8"));
    cr_assert(((int8_t *)idx->data)[0] == -3 && ((int8_t *)idx->data)[1] == 100);
    cr_idx_free(idx);
    /* i16 [2]: -2, 0x1234 */
    n = header(b, 0x0B, 1, (uint32_t[]){2});
    b[n++] = 0xFF, b[n++] = 0xFE, b[n++] = 0x12, b[n++] = 0x34;
    write_gz(tpath("i16"), b, n);
    idx = read_ok(tpath("i16"));
    cr_assert(((int16_t *)idx->data)[0] == -2 && ((int16_t *)idx->data)[1] == 0x1234);
    cr_idx_free(idx);
    /* i32 [1, 2]: -70000, 0x01020304 */
    n = header(b, 0x0C, 2, (uint32_t[]){1, 2});
    int32_t iv[2] = {-70000, 0x01020304};
    for (int i = 0; i < 2; i++)
        for (int k = 3; k >= 0; k--) b[n++] = (unsigned char)((uint32_t)iv[i] >> (8 * k));
    write_gz(tpath("i32"), b, n);
    idx = read_ok(tpath("i32"));
    cr_assert(idx->ndim == 2 && ((int32_t *)idx->data)[0] == -70000 &&
              ((int32_t *)idx->data)[1] == 0x01020304);
    cr_idx_free(idx);
    /* f32 [2]: 1.5, -0.25; f64 [1]: pi */
    n = header(b, 0x0D, 1, (uint32_t[]){2});
    float fv[2] = {1.5f, -0.25f};
    for (int i = 0; i < 2; i++) {
        uint32_t u;
        memcpy(&u, &fv[i], 4);
        for (int k = 3; k >= 0; k--) b[n++] = (unsigned char)(u >> (8 * k));
    }
    write_plain(tpath("f32"), b, n);
    idx = read_ok(tpath("f32"));
    cr_assert(((float *)idx->data)[0] == 1.5f && ((float *)idx->data)[1] == -0.25f);
    cr_tensor *t = cr_idx_tensor(idx, CR_F64);
    cr_assert_eq(((double *)t->data)[1], -0.25);
    cr_tensor_free(t);
    cr_idx_free(idx);
    n = header(b, 0x0E, 1, (uint32_t[]){1});
    double pi = 3.14159265358979323846;
    uint64_t u;
    memcpy(&u, &pi, 8);
    for (int k = 7; k >= 0; k--) b[n++] = (unsigned char)(u >> (8 * k));
    write_gz(tpath("f64"), b, n);
    idx = read_ok(tpath("f64"));
    cr_assert_eq(((double *)idx->data)[0], pi);
    cr_assert_str_eq(cr_idx_type_name(idx->type), "f64");
    cr_assert_eq(cr_idx_type_size(idx->type), 8);
    cr_idx_free(idx);
    /* an empty dim is a valid, empty file */
    n = header(b, 0x08, 3, (uint32_t[]){0, 28, 28});
    write_gz(tpath("empty"), b, n);
    idx = read_ok(tpath("empty"));
    cr_assert(idx->numel == 0 && idx->shape[1] == 28);
    cr_idx_free(idx);
}

Test(idx, files_that_cannot_be_read)
{
    read_fails(tpath("missing.gz"), CR_EIO, "cannot open");
    tmpdir_path();
    cr_assert_eq(mkdir(tpath("dir"), 0700), 0);
    read_fails(tpath("dir"), CR_EIO, "read error");
}

Test(idx, hostile_headers)
{
    unsigned char b[128];
    write_plain(tpath("empty"), b, 0);
    read_fails(tpath("empty"), CR_EFORMAT, "empty");
    write_gz(tpath("empty.gz"), b, 0);
    read_fails(tpath("empty.gz"), CR_EFORMAT, "empty");
    write_gz(tpath("short"), (unsigned char[]){0, 0, 8}, 3);
    read_fails(tpath("short"), CR_EFORMAT, "truncated");
    /* a text file, a gzip of a safetensors-like header, magic bytes off by one */
    write_gz(tpath("text"), "hello world\n", 12);
    read_fails(tpath("text"), CR_EFORMAT, "not an IDX file: magic number 68 65 6c 6c");
    size_t n = small_u8(b);
    b[1] = 1;
    write_gz(tpath("magic"), b, n);
    read_fails(tpath("magic"), CR_EFORMAT, "does not start with 00 00");
    n = small_u8(b);
    b[2] = 0x07;
    write_gz(tpath("type"), b, n);
    read_fails(tpath("type"), CR_EFORMAT, "unknown IDX element type 0x07");
    n = small_u8(b);
    b[2] = 0xFF;
    write_plain(tpath("type2"), b, n);
    read_fails(tpath("type2"), CR_EFORMAT, "unknown IDX element type 0xff");
    n = header(b, 0x08, 0, NULL);
    write_gz(tpath("nodims"), b, n);
    read_fails(tpath("nodims"), CR_EFORMAT, "0 dims");
    uint32_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    n = header(b, 0x08, 9, nine);
    b[n++] = 5;
    write_gz(tpath("ninedims"), b, n);
    read_fails(tpath("ninedims"), CR_EFORMAT, "9 dims");
    n = header(b, 0x08, 3, (uint32_t[]){60000, 28, 28});
    write_gz(tpath("cutdims"), b, n - 5);
    read_fails(tpath("cutdims"), CR_EFORMAT,
               "truncated header: 3 dims need 12 bytes of sizes, the file has 7");
    /* sizes whose product overflows: 2^32-1 to the 4th (u8), 2^31 x 2^31 x 8 (f64) */
    n = header(b, 0x08, 4, (uint32_t[]){0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu});
    write_gz(tpath("overflow"), b, n);
    read_fails(tpath("overflow"), CR_EFORMAT,
               "sizes [4294967295,4294967295,4294967295,4294967295] of u8 hold more");
    n = header(b, 0x0E, 2, (uint32_t[]){0x80000000u, 0x80000000u});
    write_plain(tpath("overflow2"), b, n);
    read_fails(tpath("overflow2"), CR_EFORMAT, "hold more bytes than memory can address");
}

/* A zero dim makes no data, but the other dims still give the strides of the
 * tensor cr_idx_tensor builds: a product of them that overflows is refused
 * here, with a status, not by an abort in cr_idx_tensor. */
Test(idx, empty_shape_with_overflowing_dims)
{
    unsigned char b[64];
    size_t n = header(b, 0x08, 4, (uint32_t[]){0, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu});
    write_plain(tpath("zero_huge"), b, n);
    read_fails(tpath("zero_huge"), CR_EFORMAT, "sizes [0,4294967295,4294967295,4294967295] of u8 hold more");
    /* 2^31 x 2^31 elements fit i64, but not as the f64 tensor cr_idx_tensor may make of them */
    n = header(b, 0x08, 3, (uint32_t[]){0x80000000u, 0x80000000u, 0});
    write_gz(tpath("zero_huge_f64"), b, n);
    read_fails(tpath("zero_huge_f64"), CR_EFORMAT, "hold more");
    /* an empty shape whose other dims are sane still reads, and makes an empty tensor */
    n = header(b, 0x0D, 3, (uint32_t[]){0, 28, 28});
    write_gz(tpath("zero_ok"), b, n);
    cr_idx *idx = read_ok(tpath("zero_ok"));
    cr_assert_eq(idx->numel, 0);
    cr_tensor *t = cr_idx_tensor(idx, CR_F64);
    cr_assert_eq(t->ndim, 3);
    cr_assert_eq(t->shape[2], 28);
    cr_tensor_free(t);
    cr_idx_free(idx);
}

Test(idx, lying_truncated_and_trailing_data)
{
    unsigned char b[4096];
    size_t n = small_u8(b);
    /* one byte short, plain and gzipped */
    write_plain(tpath("short"), b, n - 1);
    read_fails(tpath("short"), CR_EFORMAT,
               "truncated: shape [3,2,2] of u8 needs 12 bytes of data, the file has 11");
    write_gz(tpath("short.gz"), b, n - 1);
    read_fails(tpath("short.gz"), CR_EFORMAT, "the file has 11");
    /* one byte too many */
    b[n] = 42;
    write_gz(tpath("long.gz"), b, n + 1);
    read_fails(tpath("long.gz"), CR_EFORMAT, "bytes after the 12 bytes of data of shape [3,2,2]");
    write_plain(tpath("long"), b, n + 1);
    read_fails(tpath("long"), CR_EFORMAT, "bytes after");
    /* a header claiming 60000 x 28 x 28 images with 100 bytes of data, and
     * one claiming 2^59 bytes: refused at the end of the data, not at a malloc */
    n = header(b, 0x08, 3, (uint32_t[]){60000, 28, 28});
    memset(b + n, 1, 100);
    write_gz(tpath("liar.gz"), b, n + 100);
    read_fails(tpath("liar.gz"), CR_EFORMAT, "needs 47040000 bytes of data, the file has 100");
    n = header(b, 0x08, 2, (uint32_t[]){0x40000000u, 0x20000000u});
    memset(b + n, 1, 100);
    write_plain(tpath("liar"), b, n + 100);
    read_fails(tpath("liar"), CR_EFORMAT, "needs 576460752303423488 bytes of data, the file has 100");
}

Test(idx, corrupt_gzip_streams)
{
    /* a file of some size, so the deflate stream has a body to break */
    unsigned char b[8192], z[16384];
    size_t n = header(b, 0x08, 2, (uint32_t[]){64, 64});
    for (int i = 0; i < 4096; i++) b[n++] = (unsigned char)((i * 31) ^ (i >> 3));
    write_gz(tpath("good.gz"), b, n);
    size_t zn = slurp(tpath("good.gz"), z, sizeof z);
    cr_assert_gt(zn, 100);
    cr_idx_free(read_ok(tpath("good.gz")));
    /* cut: the gzip trailer, then half the stream */
    write_plain(tpath("cut8.gz"), z, zn - 8);
    read_fails(tpath("cut8.gz"), CR_EFORMAT, "corrupt or truncated gzip stream: unexpected end of file");
    write_plain(tpath("cut.gz"), z, zn / 2);
    read_fails(tpath("cut.gz"), CR_EFORMAT, "gzip stream");
    /* a wrong CRC, and bytes flipped in the middle of the stream */
    memcpy(b, z, zn);
    b[zn - 6] ^= 0x5A;
    write_plain(tpath("crc.gz"), b, zn);
    read_fails(tpath("crc.gz"), CR_EFORMAT, "crc.gz: corrupt or truncated gzip stream: incorrect data check");
    memcpy(b, z, zn);
    for (size_t i = zn / 3; i < zn / 3 + 16; i++) b[i] ^= 0xFF;
    write_plain(tpath("flip.gz"), b, zn);
    cr_idx *idx = (cr_idx *)1;
    cr_assert_neq(cr_idx_read(tpath("flip.gz"), &idx), CR_OK);
    cr_assert_null(idx);
    cr_assert_gt(strlen(cr_last_error()), 10);
}

/* Random damage to a valid file (plain and gzipped): flipped bytes, cuts and
 * insertions. Every read returns a status (OK or an error with a message);
 * an OK file's shape agrees with its element count. Under ASan/UBSan this is
 * what shows the reader never reads or writes out of bounds. */
Test(idx, random_damage_never_crashes)
{
    unsigned char base[512], z[2048], m[4096];
    size_t n = header(base, 0x0B, 2, (uint32_t[]){7, 9});
    for (int i = 0; i < 126; i++) base[n++] = (unsigned char)(i * 13);
    write_gz(tpath("base.gz"), base, n);
    size_t zn = slurp(tpath("base.gz"), z, sizeof z);
    cr_rng rng = cr_rng_seed(77);
    int ok = 0, failed = 0;
    for (int iter = 0; iter < 1500; iter++) {
        bool gz = iter % 2;
        const unsigned char *src = gz ? z : base;
        size_t len = gz ? zn : n;
        memcpy(m, src, len);
        int kind = (int)(cr_rng_uniform01(&rng) * 3);
        if (kind == 0) { /* flip 1-4 bytes (mostly in the header for plain files) */
            int k = 1 + (int)(cr_rng_uniform01(&rng) * 4);
            for (int j = 0; j < k; j++) {
                size_t at = (size_t)(cr_rng_uniform01(&rng) * (double)(gz ? len : 16));
                m[at] ^= (unsigned char)(1 + cr_rng_uniform01(&rng) * 255);
            }
        } else if (kind == 1) { /* cut */
            len = (size_t)(cr_rng_uniform01(&rng) * (double)len);
        } else { /* insert a run of random bytes */
            size_t at = (size_t)(cr_rng_uniform01(&rng) * (double)len),
                   k = 1 + (size_t)(cr_rng_uniform01(&rng) * 64);
            memmove(m + at + k, m + at, len - at);
            for (size_t j = 0; j < k; j++) m[at + j] = (unsigned char)(cr_rng_uniform01(&rng) * 256);
            len += k;
        }
        write_plain(tpath("m"), m, len);
        cr_idx *idx = (cr_idx *)1;
        cr_status st = cr_idx_read(tpath("m"), &idx);
        if (st == CR_OK) {
            int64_t numel = 1;
            for (int d = 0; d < idx->ndim; d++) numel *= idx->shape[d];
            cr_assert_eq(numel, idx->numel);
            cr_assert(idx->ndim >= 1 && idx->ndim <= CR_MAX_DIMS);
            cr_idx_free(idx);
            ok++;
        } else {
            cr_assert(st == CR_EFORMAT || st == CR_EIO || st == CR_ENOMEM, "status %d", (int)st);
            cr_assert_null(idx);
            cr_assert_gt(strlen(cr_last_error()), 10);
            failed++;
        }
    }
    cr_assert_gt(
        failed,
        1000); /* most damage is caught (a flipped data byte of a plain file is not damage we can see) */
    cr_assert_gt(ok, 0);
}
