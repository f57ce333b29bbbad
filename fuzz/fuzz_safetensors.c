/*
 * libFuzzer harness for the safetensors reader: cr_st_parse on arbitrary
 * bytes must either reject them with a one-line message (no control byte in
 * it: strings from the file are escaped), or return a file
 * whose entries, lookups and metadata are consistent and which survives a
 * round trip through the writer's header builder unchanged.
 */

/* The writer is included rather than linked so the harness can reach its
 * static header builder and round-trip in memory (no file, no fsync per
 * input); the reader is compiled in with the harness (fuzz/meson.build). */
#include "../checkpoint/st_write.c"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Aborting (not returning) makes libFuzzer save the input as a crash. */
#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (!(cond)) abort();                                                                                \
    } while (0)

static void check_file(const cr_st_file *f)
{
    size_t n = cr_st_count(f), total = 0;
    const unsigned char *prev_end = NULL;
    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *e = cr_st_entry_at(f, i);
        CHECK(e && e->name);
        CHECK(e->ndim >= 0 && e->ndim <= CR_MAX_DIMS);
        CHECK(cr_st_find(f, e->name) == e);
        /* Entries tile the data section in order. */
        if (prev_end) CHECK((const unsigned char *)e->data == prev_end);
        prev_end = (const unsigned char *)e->data + e->nbytes;
        /* Touch every byte so ASan sees any bad range. */
        volatile unsigned char sink = 0;
        for (size_t k = 0; k < e->nbytes; k++) sink ^= ((const unsigned char *)e->data)[k];
        (void)sink;
        total += e->nbytes;
    }
    CHECK(total == cr_st_data_bytes(f));
    CHECK(cr_st_entry_at(f, n) == NULL);

    for (size_t i = 0; i < cr_st_meta_count(f); i++) {
        const char *k = NULL, *v = NULL;
        CHECK(cr_st_meta_at(f, i, &k, &v) && k && v);
        CHECK(cr_st_meta_get(f, k) == v); /* keys are unique */
    }
}

/* Whatever the reader accepts, the writer must encode, and reading that back
 * must give the same tensors and metadata. */
static void check_round_trip(const cr_st_file *f)
{
    size_t n = cr_st_count(f), nm = cr_st_meta_count(f);
    cr_st_entry *es = malloc((n ? n : 1) * sizeof *es);
    const char **kv = malloc((nm ? 2 * nm : 1) * sizeof *kv);
    CHECK(es && kv);
    for (size_t i = 0; i < n; i++) es[i] = *cr_st_entry_at(f, i);
    for (size_t i = 0; i < nm; i++) cr_st_meta_at(f, i, &kv[2 * i], &kv[2 * i + 1]);

    st_buf hdr = {0};
    CHECK(st_build_header(es, n, kv, nm, &hdr) == CR_OK);
    size_t len = 8 + hdr.len + cr_st_data_bytes(f);
    unsigned char *buf = malloc(len);
    CHECK(buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hdr.len >> (8 * i));
    memcpy(buf + 8, hdr.p, hdr.len);
    size_t off = 8 + hdr.len;
    for (size_t i = 0; i < n; i++) {
        if (es[i].nbytes) memcpy(buf + off, es[i].data, es[i].nbytes);
        off += es[i].nbytes;
    }

    cr_st_file *g = NULL;
    CHECK(cr_st_parse(buf, len, &g) == CR_OK);
    CHECK(cr_st_count(g) == n && cr_st_meta_count(g) == nm);
    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *a = &es[i], *b = cr_st_entry_at(g, i);
        CHECK(strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->ndim == b->ndim);
        CHECK(memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof a->shape[0]) == 0);
        CHECK(a->nbytes == b->nbytes);
        CHECK(a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0);
    }
    for (size_t i = 0; i < nm; i++) {
        const char *k, *v;
        CHECK(cr_st_meta_at(g, i, &k, &v));
        CHECK(strcmp(k, kv[2 * i]) == 0 && strcmp(v, kv[2 * i + 1]) == 0);
    }
    cr_st_file_free(g);
    free(buf);
    free(hdr.p);
    free(kv);
    free(es);
}

/* The same bytes through the file reader (a memfd: a regular file), which
 * parses the header chunk by chunk as it reads it: same verdict, same file. */
static void check_file_path(const uint8_t *data, size_t size, cr_status st_mem, const cr_st_file *fm)
{
    int fd = memfd_create("fuzz", 0);
    CHECK(fd >= 0);
    CHECK(size == 0 || write(fd, data, size) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    cr_st_file *ff = NULL;
    cr_status st = cr_st_read(path, &ff);
    close(fd);
    CHECK(st == st_mem);
    if (st == CR_OK) {
        CHECK(cr_st_count(ff) == cr_st_count(fm) && cr_st_meta_count(ff) == cr_st_meta_count(fm));
        for (size_t i = 0; i < cr_st_count(fm); i++)
            CHECK(strcmp(cr_st_entry_at(ff, i)->name, cr_st_entry_at(fm, i)->name) == 0);
    }
    cr_st_file_free(ff);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cr_st_file *f = NULL;
    cr_failure(CR_OK, "%s", "");
    cr_status st = cr_st_parse(data, size, &f);
    check_file_path(data, size, st, f);
    if (st == CR_OK) {
        CHECK(f != NULL);
        check_file(f);
        check_round_trip(f);
        cr_st_file_free(f);
    } else {
        CHECK(f == NULL);
        CHECK(st == CR_EFORMAT || st == CR_ENOMEM);
        const char *err = cr_last_error();
        CHECK(err[0] != '\0');
        for (const char *c = err; *c; c++) CHECK((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7F);
    }
    return 0;
}
