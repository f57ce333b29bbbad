/*
 * Tests of the safetensors reader and writer (checkpoint/st_*.c) and of params_io.c: round trips, the bytes
 * written, rejection of every kind of broken or lying file, atomic writes, and loading parameter sets.
 */
#include "carousel.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tmpdir.h"

/* ---- fixture: a fresh temporary directory per test ------------------------- */

static void setup(void) { tmpdir_make("st"); }

static void teardown(void) { tmpdir_remove(); }

TestSuite(safetensors, .init = setup, .fini = teardown);

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    cr_assert(fread(b, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

/* A file in memory: length field, the header as given, data_len bytes 0..255. */
static unsigned char *mkfile(const char *hdr, size_t data_len, size_t *len)
{
    size_t h = strlen(hdr);
    *len = 8 + h + data_len;
    unsigned char *b = malloc(*len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, h);
    for (size_t i = 0; i < data_len; i++) b[8 + h + i] = (unsigned char)i;
    return b;
}

/* Parse hdr+data and expect failure with `needle` in the message. */
static void expect_reject(const char *hdr, size_t data_len, const char *needle)
{
    size_t len;
    unsigned char *b = mkfile(hdr, data_len, &len);
    cr_st_file *f = (cr_st_file *)1;
    cr_status rc = cr_st_parse(b, len, &f);
    free(b);
    cr_assert_eq(rc, CR_EFORMAT, "accepted: %s", hdr);
    cr_assert_null(f);
    cr_assert(strstr(cr_last_error(), needle), "message '%s' lacks '%s' (header %s)", cr_last_error(), needle,
              hdr);
    cr_assert_null(strchr(cr_last_error(), '\n'), "message is not one line: %s", cr_last_error());
}

static void expect_accept(const char *hdr, size_t data_len)
{
    size_t len;
    unsigned char *b = mkfile(hdr, data_len, &len);
    cr_st_file *f = NULL;
    cr_status rc = cr_st_parse(b, len, &f);
    free(b);
    cr_assert_eq(rc, CR_OK, "rejected %s: %s", hdr, cr_last_error());
    cr_st_file_free(f);
}

/* ---- a small valid file ------------------------------------------------------ */

static const float k_f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-8f, -7.0f};
static const double k_f64[4] = {3.141592653589793, -1e300, 2.5e-310, 42.0};
static const int32_t k_i32[1] = {-123456};

static const char *const k_meta[] = {"step", "1000", "note", "quote \" back\\slash \n tab\t ü€", "empty", ""};

static void write_sample(const char *path)
{
    cr_st_entry es[4] = {
        {.name = "l0.w_ih",
         .dtype = CR_F32,
         .ndim = 2,
         .shape = {2, 3},
         .data = k_f32,
         .nbytes = sizeof k_f32},
        {.name = "analysis.x",
         .dtype = CR_F64,
         .ndim = 1,
         .shape = {4},
         .data = k_f64,
         .nbytes = sizeof k_f64},
        {.name = "scalar", .dtype = CR_I32, .ndim = 0, .data = k_i32, .nbytes = 4},
        {.name = "empty", .dtype = CR_F32, .ndim = 2, .shape = {0, 5}, .data = NULL, .nbytes = 0},
    };
    cr_assert_eq(cr_st_write(path, es, 4, k_meta, 3), CR_OK, "%s", cr_last_error());
}

static void check_sample(const cr_st_file *f)
{
    cr_assert_eq(cr_st_count(f), 4);
    cr_assert_eq(cr_st_data_bytes(f), sizeof k_f32 + sizeof k_f64 + 4);

    const cr_st_entry *e = cr_st_find(f, "l0.w_ih");
    cr_assert_not_null(e);
    cr_assert_eq(e->dtype, CR_F32);
    cr_assert_eq(e->ndim, 2);
    cr_assert_eq(e->shape[0], 2);
    cr_assert_eq(e->shape[1], 3);
    cr_assert_eq(e->nbytes, sizeof k_f32);
    cr_assert_eq(memcmp(e->data, k_f32, sizeof k_f32), 0);

    e = cr_st_find(f, "analysis.x");
    cr_assert_not_null(e);
    cr_assert_eq(e->dtype, CR_F64);
    cr_assert_eq(e->ndim, 1);
    cr_assert_eq(memcmp(e->data, k_f64, sizeof k_f64), 0);

    e = cr_st_find(f, "scalar");
    cr_assert_not_null(e);
    cr_assert_eq(e->dtype, CR_I32);
    cr_assert_eq(e->ndim, 0);
    int32_t v;
    memcpy(&v, e->data, 4);
    cr_assert_eq(v, -123456);

    e = cr_st_find(f, "empty");
    cr_assert_not_null(e);
    cr_assert_eq(e->nbytes, 0);
    cr_assert_eq(e->shape[0], 0);
    cr_assert_eq(e->shape[1], 5);

    cr_assert_null(cr_st_find(f, "absent"));
    cr_assert_null(cr_st_find(f, "__metadata__"));

    /* Entries in data order, which is the order they were written in. */
    cr_assert_str_eq(cr_st_entry_at(f, 0)->name, "l0.w_ih");
    cr_assert_str_eq(cr_st_entry_at(f, 1)->name, "analysis.x");
    cr_assert_null(cr_st_entry_at(f, 4));

    cr_assert_eq(cr_st_meta_count(f), 3);
    cr_assert_str_eq(cr_st_meta_get(f, "step"), "1000");
    cr_assert_str_eq(cr_st_meta_get(f, "note"), k_meta[3]);
    cr_assert_str_eq(cr_st_meta_get(f, "empty"), "");
    cr_assert_null(cr_st_meta_get(f, "absent"));
    const char *k, *val;
    cr_assert(cr_st_meta_at(f, 1, &k, &val));
    cr_assert_str_eq(k, "note");
    cr_assert(!cr_st_meta_at(f, 3, &k, &val));
}

Test(safetensors, round_trip)
{
    const char *p = tpath("a.safetensors");
    write_sample(p);
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(p, &f), CR_OK, "%s", cr_last_error());
    check_sample(f);
    cr_st_file_free(f);

    /* The same bytes through cr_st_parse; the copy outlives the input. */
    size_t len;
    unsigned char *b = slurp(p, &len);
    cr_assert_eq(cr_st_parse(b, len, &f), CR_OK, "%s", cr_last_error());
    memset(b, 0xAB, len);
    free(b);
    check_sample(f);
    cr_st_file_free(f);
}

Test(safetensors, round_trip_no_tensors)
{
    const char *p = tpath("empty.safetensors");
    cr_assert_eq(cr_st_write(p, NULL, 0, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(p, &f), CR_OK, "%s", cr_last_error());
    cr_assert_eq(cr_st_count(f), 0);
    cr_assert_eq(cr_st_meta_count(f), 0);
    cr_assert_null(cr_st_find(f, "x"));
    cr_st_file_free(f);
    cr_st_file_free(NULL);
}

/* The exact bytes, as the reference implementation lays them out. */
Test(safetensors, golden_bytes)
{
    const char *p = tpath("g.safetensors");
    const float x[2] = {1.0f, 2.0f};
    cr_st_entry e = {.name = "x", .dtype = CR_F32, .ndim = 1, .shape = {2}, .data = x, .nbytes = 8};
    const char *meta[] = {"k", "v"};
    cr_assert_eq(cr_st_write(p, &e, 1, meta, 1), CR_OK, "%s", cr_last_error());
    size_t len;
    unsigned char *b = slurp(p, &len);
    const char *json = "{\"__metadata__\":{\"k\":\"v\"},\"x\":{\"dtype\":\"F32\",\"shape\":[2],"
                       "\"data_offsets\":[0,8]}}";
    size_t jl = strlen(json), hl = (jl + 7) / 8 * 8;
    cr_assert_eq(len, 8 + hl + 8);
    cr_assert_eq(b[0], (unsigned char)hl);
    for (int i = 1; i < 8; i++) cr_assert_eq(b[i], 0);
    cr_assert_eq(memcmp(b + 8, json, jl), 0);
    for (size_t i = jl; i < hl; i++) cr_assert_eq(b[8 + i], ' ');
    /* 1.0f and 2.0f little-endian */
    const unsigned char want[8] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0x40};
    cr_assert_eq(memcmp(b + 8 + hl, want, 8), 0);
    free(b);
}

/* Names and metadata keys are JSON-escaped on the way out. */
Test(safetensors, escaped_names_round_trip)
{
    const char *p = tpath("esc.safetensors");
    const char *names[] = {"we\"ird\\name", "ctl\x01\x1f\x7f", "caf\xc3\xa9.\xe2\x82\xac", ""};
    int32_t v[4] = {1, 2, 3, 4};
    cr_st_entry es[4];
    for (int i = 0; i < 4; i++)
        es[i] = (cr_st_entry){
            .name = names[i], .dtype = CR_I32, .ndim = 1, .shape = {1}, .data = &v[i], .nbytes = 4};
    const char *meta[] = {"k\"\n", "v\\\t"};
    cr_assert_eq(cr_st_write(p, es, 4, meta, 1), CR_OK, "%s", cr_last_error());
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(p, &f), CR_OK, "%s", cr_last_error());
    for (int i = 0; i < 4; i++) {
        const cr_st_entry *e = cr_st_find(f, names[i]);
        cr_assert_not_null(e, "name %d lost", i);
        cr_assert_eq(memcmp(e->data, &v[i], 4), 0);
    }
    cr_assert_str_eq(cr_st_meta_get(f, "k\"\n"), "v\\\t");
    cr_st_file_free(f);
}

/* A file written by another tool: header not padded, no metadata, other key
 * order, whitespace inside. */
Test(safetensors, reads_foreign_layout)
{
    expect_accept("{ \"b\" : {\"data_offsets\":[8,16],\"shape\":[2],\"dtype\":\"I32\"},"
                  "\"a\":{\"shape\":[1,2],\"dtype\":\"F32\",\"data_offsets\":[0,8]} }\n",
                  16);
    expect_accept("{}", 0);
    expect_accept("{\"__metadata__\":{}}", 0);
}

/* ---- truncation and lengths ----------------------------------------------- */

Test(safetensors, every_truncation_is_rejected)
{
    const char *p = tpath("t.safetensors");
    write_sample(p);
    size_t len;
    unsigned char *b = slurp(p, &len);
    for (size_t n = 0; n < len; n++) {
        /* A fresh heap copy so ASan sees any read past n. */
        unsigned char *c = malloc(n ? n : 1);
        memcpy(c, b, n);
        cr_st_file *f = NULL;
        cr_assert_neq(cr_st_parse(c, n, &f), CR_OK, "prefix %zu accepted", n);
        cr_assert_null(f);
        cr_assert(cr_last_error()[0] != '\0', "prefix %zu: no message", n);
        free(c);
    }
    /* And through the file path, for a few lengths. */
    size_t cuts[] = {0, 3, 8, 20, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        const char *q = tpath("cut.safetensors");
        FILE *fp = fopen(q, "wb");
        fwrite(b, 1, cuts[i], fp);
        fclose(fp);
        cr_st_file *f = NULL;
        cr_assert_neq(cr_st_read(q, &f), CR_OK);
        cr_assert(strstr(cr_last_error(), q), "message names the file: %s", cr_last_error());
    }
    free(b);
}

Test(safetensors, header_length_lies)
{
    size_t len;
    unsigned char *b = mkfile("{}", 0, &len);
    cr_st_file *f = NULL;

    b[7] = 0x80; /* 2^63 */
    cr_assert_neq(cr_st_parse(b, len, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "header length"), "%s", cr_last_error());
    cr_assert(strstr(cr_last_error(), "limit"), "%s", cr_last_error());

    memset(b, 0, 8);
    uint64_t big = CR_ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(big >> (8 * i));
    cr_assert_neq(cr_st_parse(b, len, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "limit"), "%s", cr_last_error());

    memset(b, 0, 8);
    b[0] = 3; /* longer than the 2 bytes there */
    cr_assert_neq(cr_st_parse(b, len, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "exceeds the 2 bytes"), "%s", cr_last_error());

    memset(b, 0, 8); /* zero-length header */
    cr_assert_neq(cr_st_parse(b, len, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "empty"), "%s", cr_last_error());

    b[0] = 1; /* "{" only */
    cr_assert_neq(cr_st_parse(b, len, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "JSON"), "%s", cr_last_error());
    free(b);

    cr_assert_neq(cr_st_parse(NULL, 0, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "shorter than"), "%s", cr_last_error());
}

/* ---- lying offsets ---------------------------------------------------------- */

Test(safetensors, offsets_beyond_end)
{
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                  "tensor 'a': data_offsets [0,16] end beyond the 8-byte data section");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[9,9]}}", 8, "end beyond");
}

Test(safetensors, offsets_wrong_size)
{
    expect_reject("{\"l0.w_ih\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,96]}}", 96,
                  "tensor 'l0.w_ih': data_offsets [0,96] but dtype F32 shape [4,8] needs 128 "
                  "bytes");
    expect_reject("{\"a\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, "needs 8 bytes");
    expect_reject("{\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin after end");
}

Test(safetensors, offsets_overlap_gap_trailing)
{
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, "tensors 'a' [0,8] and 'b' [4,12] overlap");
    /* The same range twice. */
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                  8, "overlap");
    /* An empty tensor inside another one. */
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                  8, "overlap");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                  "4 unused bytes before tensor 'a'");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9,
                  "1 bytes after the last tensor");
    expect_reject("{}", 3, "3 bytes after the last tensor");
    /* Listed out of order in the header is fine. */
    expect_accept("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                  16);
}

/* ---- bad headers -------------------------------------------------------------- */

Test(safetensors, bad_json)
{
    expect_reject("{", 0, "not valid JSON");
    expect_reject("not json", 0, "not valid JSON");
    expect_reject("{\"a\":}", 0, "not valid JSON");
    expect_reject("[]", 0, "not a JSON object");
    expect_reject("\"x\"", 0, "not a JSON object");
    expect_reject("{} {}", 0, "bytes after the JSON object");
    expect_reject("{}x", 0, "bytes after the JSON object");
    expect_reject("{\"a\xff\":1}", 0, "not valid UTF-8");
    expect_reject("{\"\xc0\xaf\":1}", 0, "not valid UTF-8");     /* overlong '/' */
    expect_reject("{\"\xed\xa0\x80\":1}", 0, "not valid UTF-8"); /* surrogate */

    /* An embedded NUL byte in the header. */
    size_t len;
    unsigned char *b = mkfile("{}      ", 0, &len);
    b[8 + 3] = 0;
    cr_st_file *f = NULL;
    cr_assert_neq(cr_st_parse(b, len, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "NUL"), "%s", cr_last_error());
    free(b);
}

Test(safetensors, bad_entries)
{
    expect_reject("{\"a\":1}", 0, "tensor 'a': entry is not an object");
    expect_reject("{\"a\":[]}", 0, "tensor 'a': entry is not an object");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0]}}", 0, "missing field 'data_offsets'");
    expect_reject("{\"a\":{\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "missing field 'dtype'");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0],\"x\":1}}", 0,
                  "unknown field 'x'");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[0],"
                  "\"data_offsets\":[0,0]}}",
                  0, "field 'dtype' appears twice");
    expect_reject("{\"a\":{\"dtype\":32,\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "dtype is not a string");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,0]}}", 0,
                  "shape is not an array");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
                  "shape[0] is not a non-negative integer");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", 0, "shape[0]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,0]}}", 0, "shape[1]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,0]}}", 0, "shape[0]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                  "\"data_offsets\":[0,4]}}",
                  4, "more than 8 dims");
    expect_reject("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,4294967296],"
                  "\"data_offsets\":[0,0]}}",
                  0, "overflows");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0]}}", 0,
                  "data_offsets is not an array of two");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0,0]}}", 0,
                  "data_offsets is not an array of two");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,-0.5]}}", 0,
                  "data_offsets is not an array of two");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":\"0,0\"}}", 0,
                  "data_offsets is not an array of two");
}

Test(safetensors, unknown_dtype)
{
    expect_reject("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'a': unsupported dtype 'BF16'");
    expect_reject("{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  "unsupported dtype 'f32'");
}

Test(safetensors, duplicates)
{
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, "duplicate tensor name 'a'");
    expect_reject("{\"__metadata__\":{\"k\":\"1\"},\"__metadata__\":{}}", 0, "__metadata__ appears twice");
    expect_reject("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "duplicate metadata key 'k'");
}

Test(safetensors, bad_metadata)
{
    expect_reject("{\"__metadata__\":[]}", 0, "__metadata__ is not an object");
    expect_reject("{\"__metadata__\":{\"step\":100}}", 0, "__metadata__ value of 'step' is not a string");
    expect_reject("{\"__metadata__\":{\"a\":null}}", 0, "value of 'a' is not a string");
}

Test(safetensors, messages_are_sanitised)
{
    /* A control character in a name must not break the one-line message. */
    expect_reject("{\"a\\nb\":1}", 0, "tensor 'a\\x0ab'");
    char hdr[600];
    snprintf(hdr, sizeof hdr, "{\"%0300d\":1}", 7);
    expect_reject(hdr, 0, "...'");
}

/* ---- writer ------------------------------------------------------------------- */

Test(safetensors, writer_rejects_bad_input)
{
    const char *p = tpath("w.safetensors");
    float x[2] = {0};
    cr_st_entry e = {.name = "x", .dtype = CR_F32, .ndim = 1, .shape = {3}, .data = x, .nbytes = 8};
    cr_assert_neq(cr_st_write(p, &e, 1, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "tensor 'x': nbytes 8 but dtype F32 shape [3] needs 12"), "%s",
              cr_last_error());

    cr_st_entry two[2] = {{.name = "x", .dtype = CR_F32, .ndim = 1, .shape = {2}, .data = x, .nbytes = 8},
                          {.name = "x", .dtype = CR_F32, .ndim = 1, .shape = {2}, .data = x, .nbytes = 8}};
    cr_assert_neq(cr_st_write(p, two, 2, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "duplicate tensor name 'x'"), "%s", cr_last_error());

    two[1].name = "__metadata__";
    cr_assert_neq(cr_st_write(p, two, 2, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "reserved"), "%s", cr_last_error());

    two[1].name = "y";
    two[1].data = NULL;
    cr_assert_neq(cr_st_write(p, two, 2, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "data is NULL"), "%s", cr_last_error());

    two[1].data = x;
    two[1].dtype = (cr_dtype)7;
    cr_assert_neq(cr_st_write(p, two, 2, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "unknown dtype"), "%s", cr_last_error());

    two[1].dtype = CR_F32;
    two[1].ndim = 9;
    cr_assert_neq(cr_st_write(p, two, 2, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "ndim 9"), "%s", cr_last_error());

    const char *dupmeta[] = {"k", "1", "k", "2"};
    cr_assert_neq(cr_st_write(p, &two[0], 1, dupmeta, 2), CR_OK);
    cr_assert(strstr(cr_last_error(), "duplicate metadata key 'k'"), "%s", cr_last_error());

    const char *nullmeta[] = {"k", NULL};
    cr_assert_neq(cr_st_write(p, &two[0], 1, nullmeta, 1), CR_OK);
    cr_assert(strstr(cr_last_error(), "metadata value 0 is NULL"), "%s", cr_last_error());

    cr_st_entry badname = two[0];
    badname.name = "bad\xff";
    cr_assert_neq(cr_st_write(p, &badname, 1, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "UTF-8"), "%s", cr_last_error());

    /* Nothing was created, not even a temporary file; err may be NULL. */
    cr_assert_eq(count_dir_entries(tmpdir_path()), 0);
    cr_assert_neq(cr_st_write(p, &e, 1, NULL, 0), CR_OK);
}

Test(safetensors, write_into_missing_directory_fails)
{
    const char *p = tpath("no/such/dir/a.safetensors");
    float x = 1;
    cr_st_entry e = {.name = "x", .dtype = CR_F32, .ndim = 0, .data = &x, .nbytes = 4};
    cr_assert_neq(cr_st_write(p, &e, 1, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), p), "%s", cr_last_error());
    cr_assert(strstr(cr_last_error(), "No such file"), "%s", cr_last_error());
    cr_assert_eq(count_dir_entries(tmpdir_path()), 0);

    /* A directory nobody may create files in, even root. */
    cr_assert_neq(cr_st_write("/proc/carousel-test.safetensors", &e, 1, NULL, 0), CR_OK);
    cr_assert(cr_last_error()[0]);
}

Test(safetensors, write_into_unwritable_directory_keeps_old_file)
{
    const char *sub = tpath("ro");
    cr_assert_eq(mkdir(sub, 0700), 0);
    char p[512];
    snprintf(p, sizeof p, "%s/a.safetensors", sub);
    write_sample(p);
    size_t len0;
    unsigned char *before = slurp(p, &len0);

    cr_assert_eq(chmod(sub, 0500), 0);
    float x = 1;
    cr_st_entry e = {.name = "x", .dtype = CR_F32, .ndim = 0, .data = &x, .nbytes = 4};
    cr_status rc = cr_st_write(p, &e, 1, NULL, 0);
    chmod(sub, 0700);
    if (geteuid() != 0) { /* root writes anywhere; the other tests cover it */
        cr_assert_eq(rc, CR_EIO);
        cr_assert(strstr(cr_last_error(), "Permission denied"), "%s", cr_last_error());
        size_t len1;
        unsigned char *after = slurp(p, &len1);
        cr_assert_eq(len1, len0);
        cr_assert_eq(memcmp(before, after, len0), 0);
        free(after);
        cr_assert_eq(count_dir_entries(sub), 1);
    }
    free(before);
}

/* A write that fails half way (file size limit) leaves the old file as it was
 * and no temporary file behind. Works as root too. */
Test(safetensors, failed_write_keeps_old_file)
{
    const char *p = tpath("a.safetensors");
    write_sample(p);
    size_t len0;
    unsigned char *before = slurp(p, &len0);

    static float big[4096];
    cr_st_entry e = {
        .name = "big", .dtype = CR_F32, .ndim = 1, .shape = {4096}, .data = big, .nbytes = sizeof big};
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {.rlim_cur = 1000, .rlim_max = RLIM_INFINITY};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    cr_status rc = cr_st_write(p, &e, 1, NULL, 0);
    rl.rlim_cur = RLIM_INFINITY;
    setrlimit(RLIMIT_FSIZE, &rl);
    cr_assert_eq(rc, CR_EIO);
    cr_assert(strstr(cr_last_error(), "File too large"), "%s", cr_last_error());

    size_t len1;
    unsigned char *after = slurp(p, &len1);
    cr_assert_eq(len1, len0);
    cr_assert_eq(memcmp(before, after, len0), 0);
    free(before);
    free(after);
    cr_assert_eq(count_dir_entries(tmpdir_path()), 1, "temporary file left behind");
}

/* The rename is the last step; when it fails the temporary must go too. */
Test(safetensors, failed_rename_removes_temp)
{
    const char *p = tpath("isdir");
    cr_assert_eq(mkdir(p, 0700), 0);
    char inner[512];
    snprintf(inner, sizeof inner, "%s/keep", p);
    FILE *fp = fopen(inner, "w");
    fclose(fp);
    float x = 1;
    cr_st_entry e = {.name = "x", .dtype = CR_F32, .ndim = 0, .data = &x, .nbytes = 4};
    cr_assert_neq(cr_st_write(p, &e, 1, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "rename"), "%s", cr_last_error());
    cr_assert_eq(count_dir_entries(tmpdir_path()), 1, "temporary file left behind");
    cr_assert_eq(count_dir_entries(p), 1);
}

Test(safetensors, overwrite_leaves_no_temp_and_keeps_mode)
{
    const char *p = tpath("a.safetensors");
    write_sample(p);
    cr_assert_eq(chmod(p, 0640), 0);
    float x = 5;
    cr_st_entry e = {.name = "x", .dtype = CR_F32, .ndim = 0, .data = &x, .nbytes = 4};
    cr_assert_eq(cr_st_write(p, &e, 1, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_assert_eq(count_dir_entries(tmpdir_path()), 1);
    struct stat st;
    cr_assert_eq(stat(p, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0640);

    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(p, &f), CR_OK, "%s", cr_last_error());
    cr_assert_eq(cr_st_count(f), 1);
    cr_st_file_free(f);

    /* A relative path (no directory part) works too. */
    char cwd[512];
    cr_assert(getcwd(cwd, sizeof cwd));
    cr_assert_eq(chdir(tmpdir_path()), 0);
    cr_assert_eq(cr_st_write("rel.safetensors", &e, 1, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_assert_eq(chdir(cwd), 0);
    cr_assert_eq(count_dir_entries(tmpdir_path()), 2);
}

Test(safetensors, read_errors, .timeout = 10)
{
    cr_st_file *f = NULL;
    cr_assert_neq(cr_st_read(tpath("absent"), &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "No such file"), "%s", cr_last_error());
    cr_assert_neq(cr_st_read(tmpdir_path(), &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "not a regular file"), "%s", cr_last_error());
    cr_assert_null(f);

    /* A FIFO is refused at once rather than waited on. */
    const char *fifo = tpath("fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    cr_assert_neq(cr_st_read(fifo, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "not a regular file"), "%s", cr_last_error());

    const char *empty = tpath("empty");
    FILE *fp = fopen(empty, "wb");
    fclose(fp);
    cr_assert_neq(cr_st_read(empty, &f), CR_OK);
    cr_assert(strstr(cr_last_error(), "file is 0 bytes"), "%s", cr_last_error());
}

/* ---- parameter sets ------------------------------------------------------------ */

static cr_params *make_params(int64_t hidden)
{
    cr_params *ps = cr_params_init();
    cr_tensor *w = cr_params_add(ps, "rnn", "w_ih", CR_F32, CR_SHAPE(hidden, 3));
    cr_tensor *b = cr_params_add(ps, "rnn", "b_ih", CR_F64, CR_SHAPE(hidden));
    cr_tensor *sc = cr_params_add(ps, NULL, "scale", CR_F64, CR_SHAPE(2));
    for (int64_t i = 0; i < hidden * 3; i++) ((float *)w->data)[i] = (float)i * 0.5f;
    for (int64_t i = 0; i < hidden; i++) ((double *)b->data)[i] = -(double)i;
    ((double *)sc->data)[0] = 7;
    ((double *)sc->data)[1] = -7.5;
    return ps;
}

static void zero_params(cr_params *ps)
{
    for (size_t i = 0; i < ps->n; i++) cr_fill(ps->items[i].value, 0.0);
}

static bool params_equal(const cr_params *a, const cr_params *b)
{
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        const cr_tensor *x = a->items[i].value, *y = b->items[i].value;
        size_t nb = (size_t)cr_numel(x) * cr_dtype_size(x->dtype);
        if (strcmp(a->items[i].name, b->items[i].name) != 0 || !cr_same_shape(x, y) ||
            memcmp(x->data, y->data, nb) != 0)
            return false;
    }
    return true;
}

Test(safetensors, params_round_trip)
{
    const char *p = tpath("model.safetensors");
    cr_params *ps = make_params(4);
    const char *meta[] = {"arch", "rnn"};
    cr_assert_eq(cr_params_save(ps, p, meta, 1), CR_OK, "%s", cr_last_error());

    cr_params *qs = make_params(4);
    zero_params(qs);
    cr_assert(!params_equal(ps, qs));
    cr_assert_eq(cr_params_load(qs, p), CR_OK, "%s", cr_last_error());
    cr_assert(params_equal(ps, qs));

    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(p, &f), CR_OK, "%s", cr_last_error());
    cr_assert_not_null(cr_st_find(f, "rnn.w_ih"));
    cr_assert_not_null(cr_st_find(f, "scale"));
    cr_assert_str_eq(cr_st_meta_get(f, "arch"), "rnn");
    cr_st_file_free(f);
    cr_params_free(ps);
    cr_params_free(qs);
}

Test(safetensors, params_load_rejects_shape_mismatch_and_changes_nothing)
{
    const char *p = tpath("model.safetensors");
    cr_params *ps = make_params(4);
    cr_assert_eq(cr_params_save(ps, p, NULL, 0), CR_OK, "%s", cr_last_error());

    /* Same names, hidden size 5: the first parameter in the file would fit
     * nowhere, and nothing may be copied. */
    cr_params *qs = make_params(5);
    cr_params *orig = make_params(5);
    cr_assert_neq(cr_params_load(qs, p), CR_OK);
    cr_assert(strstr(cr_last_error(), "parameter 'rnn.w_ih': file has F32 [4,3], model has F32 [5,3]"), "%s",
              cr_last_error());
    cr_assert(params_equal(qs, orig), "a failed load changed the parameters");
    cr_params_free(qs);
    cr_params_free(orig);

    /* Only the last parameter differs: still nothing copied. */
    cr_params *rs = cr_params_init();
    cr_params_add(rs, "rnn", "w_ih", CR_F32, CR_SHAPE(4, 3));
    cr_params_add(rs, "rnn", "b_ih", CR_F64, CR_SHAPE(4));
    cr_params_add(rs, NULL, "scale", CR_F32, CR_SHAPE(2)); /* dtype differs */
    cr_assert_neq(cr_params_load(rs, p), CR_OK);
    cr_assert(strstr(cr_last_error(), "parameter 'scale': file has F64 [2], model has F32 [2]"), "%s",
              cr_last_error());
    cr_assert_eq(cr_get_flat(rs->items[0].value, 5), 0.0);
    cr_params_free(rs);
    cr_params_free(ps);
}

Test(safetensors, params_load_missing_and_extra)
{
    const char *p = tpath("model.safetensors");
    cr_params *ps = make_params(2);
    cr_assert_eq(cr_params_save(ps, p, NULL, 0), CR_OK, "%s", cr_last_error());

    /* The model has a parameter the file lacks. */
    cr_params *more = make_params(2);
    cr_params_add(more, "head", "w", CR_F32, CR_SHAPE(2, 2));
    cr_assert_neq(cr_params_load(more, p), CR_OK);
    cr_assert(strstr(cr_last_error(), "parameter 'head.w' is missing"), "%s", cr_last_error());
    cr_params_free(more);

    /* The file has a tensor the model lacks. */
    cr_params *fewer = cr_params_init();
    cr_params_add(fewer, "rnn", "w_ih", CR_F32, CR_SHAPE(2, 3));
    cr_params_add(fewer, "rnn", "b_ih", CR_F64, CR_SHAPE(2));
    cr_assert_neq(cr_params_load(fewer, p), CR_OK);
    cr_assert(strstr(cr_last_error(), "tensor 'scale' is not a parameter of the model"), "%s",
              cr_last_error());
    cr_assert_eq(cr_get_flat(fewer->items[0].value, 1), 0.0);
    cr_params_free(fewer);
    cr_params_free(ps);
}

Test(safetensors, params_with_optimizer_state)
{
    const char *p = tpath("ckpt.safetensors");
    cr_params *ps = make_params(3);
    double m[3] = {0.1, 0.2, 0.3};
    cr_st_entry extra = {.name = CR_ST_OPTIM_PREFIX "adam.m.rnn.b_ih",
                         .dtype = CR_F64,
                         .ndim = 1,
                         .shape = {3},
                         .data = m,
                         .nbytes = sizeof m};
    cr_assert_eq(cr_params_save_extra(ps, &extra, 1, p, NULL, 0), CR_OK, "%s", cr_last_error());

    cr_params *qs = make_params(3);
    zero_params(qs);
    cr_assert_eq(cr_params_load(qs, p), CR_OK, "%s", cr_last_error());
    cr_assert(params_equal(ps, qs));

    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(p, &f), CR_OK, "%s", cr_last_error());
    const cr_st_entry *e = cr_st_find(f, "__optim__.adam.m.rnn.b_ih");
    cr_assert_not_null(e);
    cr_assert_eq(memcmp(e->data, m, sizeof m), 0);
    cr_st_file_free(f);

    /* Extras must carry the reserved prefix. */
    extra.name = "adam.m";
    cr_assert_neq(cr_params_save_extra(ps, &extra, 1, p, NULL, 0), CR_OK);
    cr_assert(strstr(cr_last_error(), "does not start with '__optim__.'"), "%s", cr_last_error());
    cr_params_free(ps);
    cr_params_free(qs);
}

Test(safetensors, params_load_from_broken_file)
{
    const char *p = tpath("bad.safetensors");
    FILE *fp = fopen(p, "wb");
    fwrite("\x02\0\0\0\0\0\0\0{]", 1, 10, fp);
    fclose(fp);
    cr_params *ps = make_params(2);
    cr_params *orig = make_params(2);
    cr_assert_neq(cr_params_load(ps, p), CR_OK);
    cr_assert(strstr(cr_last_error(), "not valid JSON"), "%s", cr_last_error());
    cr_assert(params_equal(ps, orig));
    cr_params_free(ps);
    cr_params_free(orig);
}

/* ---- hostile headers: rejected early, in bounded memory ------------------------ */

/* A header of `prefix`, `rep` repeated n times, then `suffix`, parsed as a file. */
static cr_status parse_repeated(const char *prefix, const char *rep, size_t n, const char *suffix)
{
    size_t lp = strlen(prefix), lr = strlen(rep), ls = strlen(suffix), h = lp + lr * n + ls;
    unsigned char *b = malloc(8 + h);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, prefix, lp);
    for (size_t i = 0; i < n; i++) memcpy(b + 8 + lp + i * lr, rep, lr);
    memcpy(b + 8 + lp + n * lr, suffix, ls);
    cr_st_file *f = (cr_st_file *)1;
    cr_status st = cr_st_parse(b, 8 + h, &f);
    free(b);
    cr_assert_null(f);
    return st;
}

static void expect_repeated_reject(const char *prefix, const char *rep, size_t n, const char *suffix,
                                   const char *needle)
{
    cr_assert_eq(parse_repeated(prefix, rep, n, suffix), CR_EFORMAT, "accepted %s%s...", prefix, rep);
    cr_assert(strstr(cr_last_error(), needle), "message '%s' lacks '%s'", cr_last_error(), needle);
    for (const char *c = cr_last_error(); *c; c++)
        cr_assert((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f, "raw byte 0x%02x in the message",
                  (unsigned char)*c);
}

Test(safetensors, hostile_headers)
{
    /* Deep nesting wherever a value goes: the fixed shape of the header
     * rejects the first bracket, so depth costs nothing. */
    expect_repeated_reject("", "[", 1000000, "", "not a JSON object");
    expect_repeated_reject("{\"a\":", "[", 1000000, "", "entry is not an object");
    expect_repeated_reject("{\"a\":{\"dtype\":", "[", 1000000, "", "dtype is not a string");
    expect_repeated_reject("{\"a\":{\"shape\":[", "[", 1000000, "", "shape[0] is not a non-negative integer");
    expect_repeated_reject("{\"__metadata__\":{\"k\":", "{\"k\":", 1000000, "",
                           "value of 'k' is not a string");
    expect_repeated_reject("{\"a\":", "{\"a\":", 1000000, "", "unknown field 'a'");
    /* Huge arrays: the 9th dim, the 3rd offset. */
    expect_repeated_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0", ",0", 5000000,
                           "],\"data_offsets\":[0,0]}}", "more than 8 dims");
    expect_repeated_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4", ",4", 5000000,
                           "]}}", "data_offsets is not an array of two");
    /* Huge numbers: a million digits, 2^63, and values that are not plain integers. */
    expect_repeated_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1", "0", 1000000, "]}}", "shape[0]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775808],\"data_offsets\":[0,0]}}", 0,
                  "shape[0]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807],\"data_offsets\":[0,0]}}", 0,
                  "overflows");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551620]}}", 4,
                  "data_offsets is not an array of two");
    /* Many duplicate keys, found by sorting, not by pairs. */
    expect_repeated_reject("{\"__metadata__\":{\"x\":\"1\"", ",\"k\":\"v\"", 200000, "}}",
                           "duplicate metadata key 'k'");
    /* Strings: bad escapes, lone surrogates, NUL, raw control bytes, invalid UTF-8 in values. */
    expect_reject("{\"a\\q\":1}", 0, "not valid JSON");
    expect_reject("{\"a\\u12\":1}", 0, "not valid JSON");
    expect_reject("{\"a\\ud800\":1}", 0, "lone surrogate");
    expect_reject("{\"a\\udc00x\":1}", 0, "lone surrogate");
    expect_reject("{\"a\\u0000\":1}", 0, "NUL");
    expect_reject("{\"a\tb\":1}", 0, "not valid JSON");
    expect_reject("{\"__metadata__\":{\"k\":\"v\xc3\"}}", 0, "not valid UTF-8");
    expect_reject("{\"__metadata__\":{\"k\":\"v\xf4\x90\x80\x80\"}}", 0, "not valid UTF-8");
    /* Cut anywhere (every prefix is covered above); unterminated strings and objects. */
    expect_reject("{\"abc", 0, "not valid JSON");
    expect_reject("{\"abc\\", 0, "not valid JSON");
    expect_reject("{\"a\":{\"dtype\":\"F32\"", 0, "not valid JSON");
    expect_reject("{\"__metadata__\":{\"k\":\"v\"", 0, "not valid JSON");
}

/* An empty shape has no bytes, but its other dims still make the strides of
 * a tensor of it: a product of them that overflows is refused whatever the
 * order of the dims, so every entry read can become a tensor. */
Test(safetensors, empty_shape_with_overflowing_dims)
{
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904,4611686018427387904],"
                  "\"data_offsets\":[0,0]}}",
                  0, "tensor 'a': dtype F32 shape [0,4611686018427387904,4611686018427387904] overflows");
    expect_reject("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904,0],"
                  "\"data_offsets\":[0,0]}}",
                  0, "overflows");
    /* 2^61 elements of 8 bytes: 2^64, one more than a tensor can address */
    expect_reject("{\"a\":{\"dtype\":\"F64\",\"shape\":[0,2305843009213693952],\"data_offsets\":[0,0]}}", 0,
                  "overflows");
    /* what is accepted can be made a tensor */
    const char *hdr = "{\"a\":{\"dtype\":\"F64\",\"shape\":[1099511627776,0,1024],\"data_offsets\":[0,0]}}";
    size_t len;
    unsigned char *b = mkfile(hdr, 0, &len);
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_parse(b, len, &f), CR_OK, "%s", cr_last_error());
    free(b);
    const cr_st_entry *e = cr_st_find(f, "a");
    cr_assert_not_null(e);
    cr_tensor *t = cr_tensor_init(e->dtype, e->ndim, e->shape);
    cr_assert_eq(cr_numel(t), 0);
    cr_tensor_free(t);
    cr_st_file_free(f);
}

/* Escapes decode to the UTF-8 a writer would have stored directly. */
Test(safetensors, string_escapes_decode)
{
    size_t len;
    unsigned char *b =
        mkfile("{\"__metadata__\":{\"\\u00e9\\ud83d\\ude00\\/\\b\\f\":\"\\\"\\\\\"}}", 0, &len);
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_parse(b, len, &f), CR_OK, "%s", cr_last_error());
    free(b);
    cr_assert_str_eq(cr_st_meta_get(f, "\xc3\xa9\xf0\x9f\x98\x80/\b\f"), "\"\\");
    cr_st_file_free(f);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifndef UNDER_ASAN /* the memory measurement and its helpers */
/* Peak resident memory of this process in KiB (VmHWM), and resetting it. */
static long vm_kib(const char *key)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, key, strlen(key)) == 0) v = atol(line + strlen(key));
    if (fp) fclose(fp);
    return v;
}

static bool reset_peak(void)
{
    FILE *fp = fopen("/proc/self/clear_refs", "w");
    if (!fp) return false;
    bool ok = fputs("5", fp) >= 0;
    return fclose(fp) == 0 && ok;
}

/* Write a header of n one-element tensors (plus data) to path; returns the header size. */
static size_t write_many_tensors(const char *path, size_t n)
{
    FILE *fp = fopen(path, "wb");
    cr_assert(fp);
    size_t cap = n * 80 + 16, h = 0;
    char *hdr = malloc(cap);
    hdr[h++] = '{';
    for (size_t i = 0; i < n; i++)
        h += (size_t)snprintf(
            hdr + h, cap - h,
            "%s\"tensor.%09zu\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}", i ? "," : "",
            i, 4 * i, 4 * i + 4);
    hdr[h++] = '}';
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)((uint64_t)h >> (8 * i));
    fwrite(lb, 1, 8, fp);
    fwrite(hdr, 1, h, fp);
    float zero[1024] = {0};
    for (size_t left = n; left > 0;) {
        size_t k = left < 1024 ? left : 1024;
        fwrite(zero, 4, k, fp);
        left -= k;
    }
    cr_assert_eq(fclose(fp), 0);
    free(hdr);
    return h;
}

/* Peak memory (KiB above the resident size before) and seconds of loading
 * `path` in a fresh child process, so no heap the test used before can hide
 * an allocation. Returns the load's status. */
static cr_status load_measured(const char *path, long *peak_kib, double *secs)
{
    int fd[2];
    cr_assert_eq(pipe(fd), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(fd[0]);
        double out[3] = {-1, 0, 0};
        if (reset_peak()) {
            long base = vm_kib("VmRSS:");
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            cr_st_file *f = NULL;
            cr_status st = cr_st_read(path, &f);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            out[0] = (double)(vm_kib("VmHWM:") - base);
            out[1] = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            out[2] = st;
            cr_st_file_free(f);
        }
        ssize_t w = write(fd[1], out, sizeof out);
        _exit(w == (ssize_t)sizeof out ? 0 : 1);
    }
    close(fd[1]);
    double in[3];
    cr_assert_eq(read(fd[0], in, sizeof in), (ssize_t)sizeof in);
    close(fd[0]);
    waitpid(pid, NULL, 0);
    if (in[0] < 0) cr_skip_test("cannot reset the peak RSS (/proc/self/clear_refs)");
    *peak_kib = (long)in[0];
    *secs = in[1];
    return (cr_status)in[2];
}

/* The loader's peak memory is a small multiple of the header: about 2.2x for
 * a large valid header (the header buffer, reused for the decoded names, plus
 * one entry per tensor), about 1x (the header buffer) for one absurd shape
 * array, which is rejected at its 9th dim. */
Test(safetensors, loader_memory_is_bounded, .timeout = 120)
{
    /* One shape array of 10 million dims (20 MB). */
    const char *q = tpath("shape.safetensors");
    const char *pre = "{\"t\":{\"dtype\":\"F32\",\"shape\":[0", *post = "],\"data_offsets\":[0,0]}}";
    size_t n = 10000000, hq = strlen(pre) + 2 * n + strlen(post);
    FILE *fp = fopen(q, "wb");
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)((uint64_t)hq >> (8 * i));
    fwrite(lb, 1, 8, fp);
    fputs(pre, fp);
    for (size_t i = 0; i < n; i++) fputs(",0", fp);
    fputs(post, fp);
    cr_assert_eq(fclose(fp), 0);
    long peak;
    double secs;
    cr_assert_eq(load_measured(q, &peak, &secs), CR_EFORMAT);
    cr_assert(peak * 1024.0 < 1.5 * (double)hq, "hostile %zu-byte header: peak grew by %ld KiB", hq, peak);
    fprintf(stderr, "loader: hostile %zu-byte shape: +%ld KiB peak (%.2fx), %.3f s\n", hq, peak,
            peak * 1024.0 / (double)hq, secs);

    /* ~20 MB of valid header: 250,000 tensors. */
    const char *p = tpath("many.safetensors");
    size_t h = write_many_tensors(p, 250000);
    cr_assert_eq(load_measured(p, &peak, &secs), CR_OK);
    cr_assert(peak * 1024.0 < 4.0 * (double)h, "valid %zu-byte header: peak grew by %ld KiB (%.1fx)", h, peak,
              peak * 1024.0 / (double)h);
    fprintf(stderr, "loader: valid %zu-byte header: +%ld KiB peak (%.2fx the header), %.3f s\n", h, peak,
            peak * 1024.0 / (double)h, secs);
}
#else
Test(safetensors, loader_memory_is_bounded)
{
    cr_skip_test("peak RSS is not meaningful under AddressSanitizer");
}
#endif

/* ---- concurrent loads --------------------------------------------------------------- */

typedef struct loader_job {
    const char *good, *bad;
    int rounds, failures;
    char why[256];
} loader_job;

/* Alternate a valid and a broken file; every result and message must be this
 * thread's own (the reader keeps no global state, the message is thread-local). */
static void *loader_thread(void *arg)
{
    loader_job *j = arg;
    for (int r = 0; r < j->rounds && !j->failures; r++) {
        cr_st_file *f = NULL;
        if (cr_st_read(j->good, &f) != CR_OK || cr_st_count(f) != 4 || !cr_st_find(f, "l0.w_ih")) {
            j->failures++;
            snprintf(j->why, sizeof j->why, "good file, round %d: %s", r, cr_last_error());
        }
        cr_st_file_free(f);
        f = NULL;
        if (cr_st_read(j->bad, &f) != CR_EFORMAT || f || !strstr(cr_last_error(), j->bad)) {
            j->failures++;
            snprintf(j->why, sizeof j->why, "bad file, round %d: %s", r, cr_last_error());
        }
    }
    return NULL;
}

Test(safetensors, concurrent_loads_are_independent, .timeout = 120)
{
    char good[2][512], bad[2][512];
    static const char *const broken[2] = {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,\"x\"]}}",
                                          "{\"__metadata__\":{\"k\":7}}"};
    for (int t = 0; t < 2; t++) {
        snprintf(good[t], sizeof good[t], "%s", tpath(t ? "good1.safetensors" : "good0.safetensors"));
        snprintf(bad[t], sizeof bad[t], "%s", tpath(t ? "bad1.safetensors" : "bad0.safetensors"));
        write_sample(good[t]);
        size_t len;
        unsigned char *b = mkfile(broken[t], 0, &len);
        FILE *fp = fopen(bad[t], "wb");
        fwrite(b, 1, len, fp);
        fclose(fp);
        free(b);
    }
    loader_job jobs[2] = {{.good = good[0], .bad = bad[0], .rounds = 300},
                          {.good = good[1], .bad = bad[1], .rounds = 300}};
    pthread_t th[2];
    for (int t = 0; t < 2; t++) cr_assert_eq(pthread_create(&th[t], NULL, loader_thread, &jobs[t]), 0);
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < 2; t++) cr_assert_eq(jobs[t].failures, 0, "thread %d: %s", t, jobs[t].why);
}

/* ---- messages never carry raw bytes from a file --------------------------------------- */

Test(safetensors, file_strings_are_escaped_in_messages)
{
    /* A tensor named with a newline, a forged log line and an ANSI escape. */
    const char *evil = "w\ncarousel: all good\x1b[2J'\"\\";
    float x[2] = {1, 2};
    cr_st_entry e = {.name = evil, .dtype = CR_F32, .ndim = 1, .shape = {2}, .data = x, .nbytes = 8};
    const char *p = tpath("evil.safetensors");
    cr_assert_eq(cr_st_write(p, &e, 1, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_params *ps = cr_params_init();
    cr_assert_neq(cr_params_load(ps, p), CR_OK);
    const char *m = cr_last_error();
    cr_assert(strstr(m, "tensor 'w\\x0acarousel: all good\\x1b[2J\\'\\\"\\\\' is not a parameter"), "%s", m);
    for (const char *c = m; *c; c++) cr_assert((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f);
    /* Non-ASCII is escaped too, and a long name is cut with a marker. */
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    memcpy(longname, "\xc3\xa9", 2);
    e.name = longname;
    cr_assert_eq(cr_st_write(p, &e, 1, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_assert_neq(cr_params_load(ps, p), CR_OK);
    cr_assert(strstr(cr_last_error(), "tensor '\\xc3\\xa9nnnn"), "%s", cr_last_error());
    cr_assert(strstr(cr_last_error(), "n...' is not a parameter"), "%s", cr_last_error());
    cr_assert_lt(strlen(cr_last_error()), 400);
    cr_params_free(ps);
}

/* ---- temporary files of interrupted saves ----------------------------------------------- */

static int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    cr_assert(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) n++;
    closedir(d);
    return n;
}

/* A save killed while writing (SIGXFSZ at a 64 KiB file size limit, the
 * default action: terminate) leaves no file behind, and the next save works. */
Test(safetensors, killed_save_leaves_nothing)
{
    const char *p = tpath("run.safetensors");
    static float big[1 << 20]; /* 4 MiB */
    cr_st_entry e = {
        .name = "big", .dtype = CR_F32, .ndim = 1, .shape = {1 << 20}, .data = big, .nbytes = sizeof big};
    for (int kill_round = 0; kill_round < 5; kill_round++) {
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            struct rlimit core = {0, 0}, fsz = {64 * 1024, 64 * 1024};
            setrlimit(RLIMIT_CORE, &core);
            signal(SIGXFSZ, SIG_DFL);
            setrlimit(RLIMIT_FSIZE, &fsz);
            cr_st_write(p, &e, 1, NULL, 0);
            _exit(0); /* not reached: the write is killed */
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGXFSZ, "the child was not killed mid-write");
    }
    cr_assert_eq(count_dir_entries(tmpdir_path()), 0, "a killed save left a file behind");
    big[7] = 3;
    cr_assert_eq(cr_st_write(p, &e, 1, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_assert_eq(count_dir_entries(tmpdir_path()), 1);
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(p, &f), CR_OK, "%s", cr_last_error());
    cr_st_file_free(f);
}

/* Where a file system lacks O_TMPFILE, saves write "<path>.tmp.<pid>.XXXXXX";
 * a leftover whose process is gone is removed by the next save of the same
 * path, one of a live process is not, nor those of another target. */
Test(safetensors, next_save_removes_stale_temps)
{
    const char *p = tpath("run.safetensors");
    pid_t dead = fork();
    cr_assert(dead >= 0);
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0); /* its pid now names no process (until reused) */
    char stale[600], live[600], other[600];
    snprintf(stale, sizeof stale, "%s.tmp.%ld.abcdef", p, (long)dead);
    snprintf(live, sizeof live, "%s.tmp.%ld.ghijkl", p, (long)getppid());
    snprintf(other, sizeof other, "%s.tmp.%ld.abcdef", tpath("other.safetensors"), (long)dead);
    const char *names[] = {stale, live, other};
    for (int i = 0; i < 3; i++) {
        FILE *fp = fopen(names[i], "wb");
        fputs("partial", fp);
        fclose(fp);
    }
    float x = 1;
    cr_st_entry e = {.name = "x", .dtype = CR_F32, .ndim = 0, .data = &x, .nbytes = 4};
    cr_assert_eq(cr_st_write(p, &e, 1, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_assert_eq(access(stale, F_OK), -1, "the stale temporary file of a dead save is still there");
    cr_assert_eq(access(live, F_OK), 0, "removed the temporary file of a live process");
    cr_assert_eq(access(other, F_OK), 0, "removed another target's file");
    cr_assert_eq(count_prefixed(tmpdir_path(), "run.safetensors.tmp."), 1);
}

/* ---- zero-size parameters ------------------------------------------------------------ */

/* A parameter without elements has no bytes to copy, so its strides do not
 * matter to save and load (tensor's cr_is_contiguous may call such strides
 * non-contiguous; params_io accepts them on purpose). */
Test(safetensors, zero_size_parameter_any_strides)
{
    cr_params *ps = cr_params_init();
    cr_tensor *z = cr_params_add(ps, NULL, "z", CR_F32, CR_SHAPE(0, 3));
    cr_tensor *w = cr_params_add(ps, NULL, "w", CR_F32, CR_SHAPE(2));
    cr_set_flat(w, 1, 5);
    z->stride[0] = 7; /* an odd stride on the empty dim */
    z->stride[1] = 2;
    const char *p = tpath("z.safetensors");
    cr_assert_eq(cr_params_save(ps, p, NULL, 0), CR_OK, "%s", cr_last_error());
    cr_set_flat(w, 1, 0);
    uint64_t v = cr_tensor_version(z);
    cr_assert_eq(cr_params_load(ps, p), CR_OK, "%s", cr_last_error());
    cr_assert_eq(cr_get_flat(w, 1), 5);
    cr_assert_gt(cr_tensor_version(z), v, "a load bumps the version of what it writes");
    cr_params_free(ps);
}
