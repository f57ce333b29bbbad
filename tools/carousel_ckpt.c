/*
 * carousel-ckpt: inspect and verify safetensors checkpoints.
 *   carousel-ckpt info FILE     every tensor, the totals and the metadata
 *   carousel-ckpt verify FILE   full validation; exit 0 if valid, 1 if not, 2 on misuse
 */
#include "carousel.h"

#include <stdio.h>
#include <string.h>

static const char usage[] = "usage: carousel-ckpt info FILE\n"
                            "       carousel-ckpt verify FILE\n"
                            "\n"
                            "  info    list every tensor (name, dtype, shape, bytes), the totals\n"
                            "          and the metadata of a safetensors checkpoint\n"
                            "  verify  validate the whole file; print 'ok: N tensors, B bytes'\n"
                            "          and exit 0, or print the reason and exit 1\n";

/* Bytes of a character at s that a terminal may act on or that reorders the
 * line, 0 for others: the C1 controls U+0080..U+009F (UTF-8 C2 80..C2 9F,
 * e.g. U+009B CSI, U+0085 NEL), the line and paragraph separators U+2028,
 * U+2029 and the bidirectional overrides and isolates U+202A..U+202E,
 * U+2066..U+2069. */
static int unsafe_seq(const unsigned char *s)
{
    if (s[0] == 0xC2 && s[1] >= 0x80 && s[1] <= 0x9F) return 2;
    if (s[0] == 0xE2 && s[1] == 0x80 && s[2] >= 0xA8 && s[2] <= 0xAE) return 3;
    if (s[0] == 0xE2 && s[1] == 0x81 && s[2] >= 0xA6 && s[2] <= 0xA9) return 3;
    return 0;
}

/* Names and metadata come from the file: print control characters (C0, DEL
 * and C1) and the bidirectional controls escaped, as \xNN per byte, so a
 * hostile file cannot move the cursor, forge lines or reorder what is shown. */
static void put_escaped(FILE *out, const char *s)
{
    while (*s) {
        unsigned char c = (unsigned char)*s;
        int k = unsafe_seq((const unsigned char *)s); /* the && chains stop at a NUL */
        if (k) {
            for (int i = 0; i < k; i++) fprintf(out, "\\x%02x", (unsigned char)s[i]);
            s += k;
            continue;
        }
        if (c == '\\')
            fputs("\\\\", out);
        else if (c < 0x20 || c == 0x7F)
            fprintf(out, "\\x%02x", c);
        else
            fputc(c, out);
        s++;
    }
}

static int cmd_info(const cr_st_file *f, const char *path)
{
    size_t n = cr_st_count(f);
    size_t width = 4; /* "name" */
    unsigned long long numel_total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(cr_st_entry_at(f, i)->name);
        if (l > width) width = l;
    }
    if (width > 60) width = 60; /* longer names just push their row out */

    printf("file: ");
    put_escaped(stdout, path);
    printf("\n\n%-*s  %-5s  %-20s  %12s\n", (int)width, "name", "dtype", "shape", "bytes");
    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *e = cr_st_entry_at(f, i);
        char shape[CR_MAX_DIMS * 21 + 3];
        cr_shape_str(shape, sizeof shape, e->ndim, e->shape); /* "[4,8]", "[]" for a scalar */
        unsigned long long numel = 1;
        for (int d = 0; d < e->ndim; d++)
            numel *= (unsigned long long)e->shape[d]; /* validated: no overflow */
        numel_total += numel;
        size_t l = strlen(e->name);
        put_escaped(stdout, e->name);
        printf("%*s  %-5s  %-20s  %12zu\n", l < width ? (int)(width - l) : 0, "", cr_st_dtype_name(e->dtype),
               shape, e->nbytes);
    }
    printf("\ntotal: %zu tensors, %llu elements, %zu bytes of data\n", n, numel_total, cr_st_data_bytes(f));

    size_t nm = cr_st_meta_count(f);
    printf("metadata: %zu %s\n", nm, nm == 1 ? "entry" : "entries");
    for (size_t i = 0; i < nm; i++) {
        const char *k, *v;
        cr_st_meta_at(f, i, &k, &v);
        fputs("  ", stdout);
        put_escaped(stdout, k);
        fputs(" = ", stdout);
        put_escaped(stdout, v);
        fputc('\n', stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc != 3 || (strcmp(argv[1], "info") != 0 && strcmp(argv[1], "verify") != 0)) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1], *path = argv[2];

    cr_st_file *f = NULL;
    if (cr_st_read(path, &f) != CR_OK) {
        fprintf(stderr, "carousel-ckpt: %s\n", cr_last_error());
        return 1;
    }
    if (strcmp(cmd, "info") == 0)
        cmd_info(f, path);
    else
        printf("ok: %zu tensors, %zu bytes\n", cr_st_count(f), cr_st_data_bytes(f));
    cr_st_file_free(f);

    /* A full disk or closed pipe on stdout is a failure too. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "carousel-ckpt: error writing the output\n");
        return 1;
    }
    return 0;
}
