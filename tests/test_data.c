/*
 * Tests of data/data.c (and vocabulary files, checkpoint/vocab_io.c): character and word vocabularies (build,
 * encode, decode, save, load, rejection of broken files), reading files, the seeded shuffle, padded batches,
 * windows and TBPTT stream chunks.
 */
#include "carousel.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tmpdir.h"

/* cr_vocab_encode's token count, or -1 when it fails. */
static int64_t encode_count(const cr_vocab *v, const char *text, size_t len, int32_t *out, int64_t cap)
{
    int64_t n = -1;
    return cr_vocab_encode(v, text, len, out, cap, &n) == CR_OK ? n : -1;
}

static cr_graph *g_graph;

static void setup(void)
{
    tmpdir_make("data");
    g_graph = cr_graph_init();
    cr_graph_use(g_graph);
}

static void teardown(void)
{
    tmpdir_remove();
    cr_graph_use(NULL);
    cr_graph_free(g_graph);
}

TestSuite(data, .init = setup, .fini = teardown);

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f != NULL);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* ---- character vocabularies ------------------------------------------------------ */

Test(data, char_vocab_roundtrip)
{
    const char *text = "hello world\n";
    cr_vocab *v = cr_vocab_init_chars(text, strlen(text));
    cr_assert_eq(cr_vocab_kind_of(v), CR_VOCAB_CHAR);
    cr_assert_eq(cr_vocab_size(v), 9); /* \n, ' ', d, e, h, l, o, r, w */
    cr_assert_eq(cr_vocab_unk(v), -1);
    cr_assert_eq(cr_vocab_id(v, "\n", 1), 0, "byte order");
    cr_assert_eq(cr_vocab_id(v, " ", 1), 1);
    cr_assert_eq(cr_vocab_id(v, "w", 1), 8);
    cr_assert_eq(cr_vocab_id(v, "z", 1), -1);
    size_t len;
    cr_assert_eq(*cr_vocab_token(v, 4, &len), 'h');
    cr_assert_eq(len, 1);

    int32_t ids[32];
    int64_t n = encode_count(v, text, strlen(text), ids, 32);
    cr_assert_eq(n, 12);
    cr_assert_eq(ids[0], 4);
    cr_assert_eq(encode_count(v, text, strlen(text), NULL, 0), 12, "count only");
    char out[64];
    cr_assert_eq(cr_vocab_decode(v, ids, n, out, sizeof out), 12);
    cr_assert_str_eq(out, text);
    /* a short buffer: snprintf-like */
    cr_assert_eq(cr_vocab_decode(v, ids, n, out, 5), 12);
    cr_assert_str_eq(out, "hell");

    cr_assert_eq(encode_count(v, "hez", 3, ids, 32), -1);
    cr_assert(strstr(cr_last_error(), "0x7a") && strstr(cr_last_error(), "offset 2"), "message: %s",
              cr_last_error());
    cr_vocab_free(v);
    cr_vocab_free(NULL);
}

/* Every byte value, NUL and 0xff included, survives a file. */
Test(data, char_vocab_all_bytes_save_load)
{
    char text[512];
    for (int i = 0; i < 512; i++) text[i] = (char)(255 - i % 256);
    cr_vocab *v = cr_vocab_init_chars(text, sizeof text);
    cr_assert_eq(cr_vocab_size(v), 256);
    cr_assert_eq(cr_vocab_save(v, tpath("v.safetensors")), CR_OK, "%s", cr_last_error());
    cr_vocab *w = NULL;
    cr_assert_eq(cr_vocab_load(tpath("v.safetensors"), &w), CR_OK, "%s", cr_last_error());
    cr_assert_eq(cr_vocab_size(w), 256);
    int32_t a[512], b[512];
    cr_assert_eq(encode_count(v, text, sizeof text, a, 512), 512);
    cr_assert_eq(encode_count(w, text, sizeof text, b, 512), 512);
    cr_assert(memcmp(a, b, sizeof a) == 0);
    char back[513];
    cr_assert_eq(cr_vocab_decode(w, b, 512, back, sizeof back), 512);
    cr_assert(memcmp(back, text, 512) == 0);
    cr_vocab_free(v);
    cr_vocab_free(w);
}

/* ---- word vocabularies ------------------------------------------------------------- */

Test(data, word_vocab_build_encode_decode)
{
    const char *text = "the cat  sat\nthe dog <unk> sat\n";
    cr_vocab *v = cr_vocab_init_words(text, strlen(text), 1, 0);
    cr_assert_eq(cr_vocab_kind_of(v), CR_VOCAB_WORD);
    /* <unk>, <eos>, then by count (sat 2, the 2: byte order), then cat, dog */
    cr_assert_eq(cr_vocab_size(v), 6);
    cr_assert_eq(cr_vocab_unk(v), 0);
    cr_assert_eq(cr_vocab_eos(v), 1);
    const char *want[] = {"<unk>", "<eos>", "sat", "the", "cat", "dog"};
    for (int i = 0; i < 6; i++) {
        size_t len;
        const char *t = cr_vocab_token(v, i, &len);
        cr_assert(len == strlen(want[i]) && memcmp(t, want[i], len) == 0, "token %d", i);
        cr_assert_eq(cr_vocab_id(v, want[i], strlen(want[i])), i);
    }
    int32_t ids[16];
    int64_t n = encode_count(v, text, strlen(text), ids, 16);
    int32_t expect[] = {3, 4, 2, 1, 3, 5, 0, 2, 1};
    cr_assert_eq(n, 9);
    cr_assert(memcmp(ids, expect, sizeof expect) == 0);
    char out[64];
    cr_assert_eq(cr_vocab_decode(v, ids, n, out, sizeof out), strlen("the cat sat\nthe dog <unk> sat\n"));
    cr_assert_str_eq(out, "the cat sat\nthe dog <unk> sat\n");
    /* unseen words map to <unk> */
    cr_assert_eq(encode_count(v, "the zebra", 9, ids, 16), 2);
    cr_assert_eq(ids[1], 0);
    cr_vocab_free(v);

    v = cr_vocab_init_words(text, strlen(text), 2, 0);
    cr_assert_eq(cr_vocab_size(v), 4, "cat and dog are below min_count");
    cr_assert_eq(cr_vocab_id(v, "cat", 3), -1);
    cr_vocab_free(v);
    v = cr_vocab_init_words(text, strlen(text), 1, 3);
    cr_assert_eq(cr_vocab_size(v), 3, "max_size counts the specials");
    cr_assert_eq(cr_vocab_id(v, "sat", 3), 2);
    cr_vocab_free(v);
}

/* A word vocabulary large enough to rehash, saved and loaded. */
Test(data, word_vocab_many_words_save_load)
{
    size_t cap = 200000, len = 0;
    char *text = malloc(cap);
    for (int i = 0; i < 5000; i++)
        len += (size_t)snprintf(text + len, cap - len, "w%d%s", i % 3000, i % 17 && i != 4999 ? " " : "\n");
    cr_vocab *v = cr_vocab_init_words(text, len, 1, 0);
    cr_assert_eq(cr_vocab_size(v), 3002);
    /* words 0..1999 appear twice and come first, in byte order: w0, w1, w10, w100 ... */
    size_t tl;
    const char *t = cr_vocab_token(v, 2, &tl);
    cr_assert(tl == 2 && memcmp(t, "w0", 2) == 0);
    cr_assert_eq(cr_vocab_save(v, tpath("w.safetensors")), CR_OK, "%s", cr_last_error());
    cr_vocab *w = NULL;
    cr_assert_eq(cr_vocab_load(tpath("w.safetensors"), &w), CR_OK, "%s", cr_last_error());
    int64_t n = 0;
    cr_assert_eq(cr_vocab_encode(v, text, len, NULL, 0, &n), CR_OK);
    int32_t *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
    cr_assert_eq(encode_count(v, text, len, a, n), n);
    cr_assert_eq(encode_count(w, text, len, b, n), n);
    cr_assert(memcmp(a, b, (size_t)n * 4) == 0);
    char *back = malloc(len + 1);
    cr_assert_eq(cr_vocab_decode(w, b, n, back, len + 1), len);
    cr_assert(memcmp(back, text, len) == 0,
              "the text uses single spaces and newlines, so decode inverts encode");
    free(a);
    free(b);
    free(back);
    free(text);
    cr_vocab_free(v);
    cr_vocab_free(w);
}

/* ---- vocabulary files from the outside world --------------------------------------- */

Test(data, vocab_load_missing_and_garbage)
{
    cr_vocab *v = (cr_vocab *)0x1;
    cr_assert_eq(cr_vocab_load(tpath("absent.safetensors"), &v), CR_EIO);
    cr_assert(strstr(cr_last_error(), "absent.safetensors") != NULL, "%s", cr_last_error());
    cr_assert_eq(v, (cr_vocab *)0x1, "untouched on failure");
    write_bytes(tpath("junk"), "\x10\0\0\0\0\0\0\0{not json}      ", 24);
    cr_assert_eq(cr_vocab_load(tpath("junk"), &v), CR_EFORMAT, "%s", cr_last_error());
    cr_assert_eq(cr_vocab_load(tmpdir_path(), &v), CR_EIO, "a directory: %s", cr_last_error());
    /* a valid file with no vocabulary in it */
    double x = 1;
    cr_st_entry e = {.name = "w", .dtype = CR_F64, .ndim = 1, .shape = {1}, .data = &x, .nbytes = 8};
    cr_assert_eq(cr_st_write(tpath("params"), &e, 1, NULL, 0), CR_OK);
    cr_assert_eq(cr_vocab_load(tpath("params"), &v), CR_EMISMATCH, "%s", cr_last_error());
}

/* Write a vocabulary file by hand: bytes, offsets and metadata as given. */
static cr_status load_crafted(const int32_t *bytes, int64_t nb, const int32_t *off, int64_t no,
                              const char *kind, const char *size)
{
    cr_st_entry e[2] = {
        {.name = "__optim__.vocab.bytes",
         .dtype = CR_I32,
         .ndim = 1,
         .shape = {nb},
         .data = bytes,
         .nbytes = (size_t)nb * 4},
        {.name = "__optim__.vocab.offsets",
         .dtype = CR_I32,
         .ndim = 1,
         .shape = {no},
         .data = off,
         .nbytes = (size_t)no * 4},
    };
    const char *kv[] = {"carousel.vocab.kind", kind, "carousel.vocab.size", size,
                        "carousel.vocab.unk",  "0",  "carousel.vocab.eos",  "1"};
    cr_assert_eq(cr_st_write(tpath("crafted"), e, 2, kv, 4), CR_OK);
    cr_vocab *v = NULL;
    cr_status st = cr_vocab_load(tpath("crafted"), &v);
    cr_vocab_free(v);
    return st;
}

Test(data, vocab_load_rejects_lying_files)
{
    int32_t ab[] = {'a', 'b', 'c', 'd'};
    int32_t ok_off[] = {0, 1, 2, 4};
    cr_assert_eq(load_crafted(ab, 4, ok_off, 4, "word", "3"), CR_OK, "%s", cr_last_error());
    int32_t down[] = {0, 3, 2, 4};
    cr_assert_eq(load_crafted(ab, 4, down, 4, "word", "3"), CR_EFORMAT);
    int32_t past[] = {0, 1, 2, 5};
    cr_assert_eq(load_crafted(ab, 4, past, 4, "word", "3"), CR_EFORMAT);
    int32_t empty[] = {0, 0, 2, 4};
    cr_assert_eq(load_crafted(ab, 4, empty, 4, "word", "3"), CR_EFORMAT, "empty word");
    int32_t big[] = {'a', 300, 'c', 'd'};
    cr_assert_eq(load_crafted(big, 4, ok_off, 4, "word", "3"), CR_EFORMAT);
    cr_assert(strstr(cr_last_error(), "300") != NULL, "%s", cr_last_error());
    int32_t dup[] = {'a', 'b', 'a', 'b'};
    int32_t dup_off[] = {0, 1, 2, 4};
    cr_assert_eq(load_crafted(dup, 4, dup_off, 4, "word", "3"), CR_OK, "ab differs from a");
    int32_t dup_off2[] = {0, 2, 4};
    cr_assert_eq(load_crafted(dup, 4, dup_off2, 3, "word", "2"), CR_EFORMAT, "ab twice");
    cr_assert_eq(load_crafted(ab, 4, ok_off, 4, "word", "7"), CR_EFORMAT, "size lies");
    cr_assert_eq(load_crafted(ab, 4, ok_off, 4, "word", "x"), CR_EFORMAT);
    cr_assert_eq(load_crafted(ab, 4, ok_off, 4, "bytes", "3"), CR_EFORMAT, "kind");
    cr_assert_eq(load_crafted(ab, 4, ok_off, 4, "char", "3"), CR_EFORMAT, "char tokens are 1 byte");
    int32_t one[] = {0, 1, 2, 3, 4};
    cr_assert_eq(load_crafted(ab, 4, one, 5, "char", "4"), CR_OK, "%s", cr_last_error());
}

/* ---- files ------------------------------------------------------------------------ */

Test(data, read_file)
{
    char big[100000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 26);
    write_bytes(tpath("t.txt"), big, sizeof big);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(cr_read_file(tpath("t.txt"), &text, &len), CR_OK, "%s", cr_last_error());
    cr_assert_eq(len, sizeof big);
    cr_assert(memcmp(text, big, len) == 0);
    cr_assert_eq(text[len], '\0');
    free(text);
    write_bytes(tpath("e.txt"), "", 0);
    cr_assert_eq(cr_read_file(tpath("e.txt"), &text, &len), CR_OK);
    cr_assert_eq(len, 0);
    free(text);
    cr_assert_eq(cr_read_file(tpath("none.txt"), &text, &len), CR_EIO);
    cr_assert(strstr(cr_last_error(), "none.txt") != NULL);
    cr_assert_str_eq(cr_status_str(CR_EIO), "i/o error");
}

/* ---- shuffling --------------------------------------------------------------------- */

Test(data, shuffle_is_a_seeded_permutation)
{
    int64_t a[100], b[100];
    cr_rng r1 = cr_rng_seed(42), r2 = cr_rng_seed(42), r3 = cr_rng_seed(43);
    cr_permutation(a, 100, &r1);
    cr_permutation(b, 100, &r2);
    cr_assert(memcmp(a, b, sizeof a) == 0, "same seed, same order");
    cr_assert_eq(r1.offset, r2.offset);
    cr_assert_geq(r1.offset, 99, "one counter per draw at least");
    int seen[100] = {0};
    for (int i = 0; i < 100; i++) seen[a[i]]++;
    for (int i = 0; i < 100; i++) cr_assert_eq(seen[i], 1);
    cr_permutation(b, 100, &r3);
    cr_assert(memcmp(a, b, sizeof a) != 0, "another seed, another order");
    /* resuming from a saved (seed, offset) continues the same sequence */
    cr_rng saved = r1;
    cr_permutation(a, 100, &r1);
    cr_permutation(b, 100, &saved);
    cr_assert(memcmp(a, b, sizeof a) == 0);
    cr_shuffle(NULL, 0, &r1);
    cr_shuffle(a, 1, &r1);
}

/* All 6 orders of 3 items are equally likely. */
Test(data, shuffle_is_uniform)
{
    int count[3][3][3] = {{{0}}};
    cr_rng r = cr_rng_seed(2024);
    for (int t = 0; t < 60000; t++) {
        int64_t p[3] = {0, 1, 2};
        cr_shuffle(p, 3, &r);
        count[p[0]][p[1]][p[2]]++;
    }
    int perms = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 3; k++)
                if (count[i][j][k]) {
                    perms++;
                    cr_assert(abs(count[i][j][k] - 10000) < 500, "order %d%d%d seen %d times", i, j, k,
                              count[i][j][k]);
                }
    cr_assert_eq(perms, 6);
}

/* ---- batches and windows ------------------------------------------------------------ */

Test(data, batch_pad)
{
    int32_t s0[] = {4, 5}, s1[] = {1, 2, 3, 4, 5};
    const int32_t *seqs[] = {s0, s1, NULL};
    int64_t lens[] = {2, 5, 0};
    cr_tensor *idx, *len;
    cr_batch_pad_new(3, seqs, lens, -100, &idx, &len);
    cr_assert_eq(idx->dtype, CR_I32);
    cr_assert_eq(idx->ndim, 2);
    cr_assert_eq(idx->shape[0], 3);
    cr_assert_eq(idx->shape[1], 5);
    int32_t want[] = {4, 5, -100, -100, -100, 1, 2, 3, 4, 5, -100, -100, -100, -100, -100};
    cr_assert(memcmp(idx->data, want, sizeof want) == 0);
    int32_t wl[] = {2, 5, 0};
    cr_assert(memcmp(len->data, wl, sizeof wl) == 0);
    cr_assert_eq(len->ndim, 1);
    /* padded targets count for nothing in the loss */
    cr_tensor *logits = cr_zeros(CR_F32, CR_SHAPE(15, 7));
    cr_tensor *flat = cr_reshape(idx, CR_SHAPE(15));
    cr_tensor *loss = cr_cross_entropy(logits, flat, -100, CR_SUM);
    cr_assert(fabs(cr_item(loss) - 7 * log(7.0)) < 1e-4, "7 counted targets, loss %f", cr_item(loss));
}

Test(data, windows)
{
    int32_t stream[20];
    for (int i = 0; i < 20; i++) stream[i] = 100 + i;
    cr_assert_eq(cr_windows_count(20, 4, 1), 16);
    cr_assert_eq(cr_windows_count(20, 4, 4), 4);
    cr_assert_eq(cr_windows_count(5, 4, 1), 1);
    cr_assert_eq(cr_windows_count(4, 4, 1), 0);
    cr_tensor *x = cr_tensor_new(CR_I32, CR_SHAPE(2, 4)), *y = cr_tensor_new(CR_I32, CR_SHAPE(2, 4));
    int64_t starts[] = {0, 15};
    cr_windows_fill(x, y, stream, 20, starts);
    int32_t wx[] = {100, 101, 102, 103, 115, 116, 117, 118}, wy[] = {101, 102, 103, 104, 116, 117, 118, 119};
    cr_assert(memcmp(x->data, wx, sizeof wx) == 0);
    cr_assert(memcmp(y->data, wy, sizeof wy) == 0);
}

Test(data, window_past_the_end_is_misuse, .signal = SIGABRT)
{
    int32_t stream[20] = {0};
    cr_tensor *x = cr_tensor_new(CR_I32, CR_SHAPE(1, 4)), *y = cr_tensor_new(CR_I32, CR_SHAPE(1, 4));
    int64_t starts[] = {16};
    cr_windows_fill(x, y, stream, 20, starts);
}

/* Chunk c+1 of each row continues chunk c: a carried state sees one stream. */
Test(data, stream_chunks_continue)
{
    int32_t stream[21];
    for (int i = 0; i < 21; i++) stream[i] = i;
    cr_assert_eq(cr_stream_chunks(21, 2, 3), 3); /* R = 10 per row, 3 chunks of 3 */
    cr_assert_eq(cr_stream_chunks(1, 2, 3), 0);
    cr_tensor *x = cr_tensor_new(CR_I32, CR_SHAPE(2, 3)), *y = cr_tensor_new(CR_I32, CR_SHAPE(2, 3));
    int32_t last[2] = {-1, -1};
    for (int64_t c = 0; c < 3; c++) {
        cr_stream_chunk(x, y, stream, 21, c);
        const int32_t *xd = x->data, *yd = y->data;
        for (int b = 0; b < 2; b++) {
            if (c > 0) cr_assert_eq(xd[b * 3], last[b], "row %d chunk %lld continues", b, (long long)c);
            for (int t = 0; t < 3; t++) {
                cr_assert_eq(xd[b * 3 + t], 10 * b + 3 * c + t);
                cr_assert_eq(yd[b * 3 + t], xd[b * 3 + t] + 1, "next-token target");
            }
            last[b] = yd[b * 3 + 2];
        }
    }
}

/* Byte ids: one byte per character (in place), and chunks over them equal
 * the chunks over int32 ids. */
Test(data, byte_stream_matches_int_stream)
{
    char text[] = "abracadabra, said the wizard, and the rabbit left the hat.";
    size_t len = strlen(text);
    cr_vocab *v = cr_vocab_init_chars(text, len);
    int32_t ids[64];
    int64_t n = encode_count(v, text, len, ids, 64);
    cr_assert_eq(n, (int64_t)len);
    cr_assert_eq(cr_vocab_encode_bytes(v, text, len, (uint8_t *)text), CR_OK); /* in place */
    for (size_t i = 0; i < len; i++) cr_assert_eq(((uint8_t *)text)[i], ids[i]);
    cr_tensor *x = cr_tensor_init(CR_I32, CR_SHAPE(2, 4)), *y = cr_tensor_init(CR_I32, CR_SHAPE(2, 4));
    cr_tensor *x2 = cr_tensor_init(CR_I32, CR_SHAPE(2, 4)), *y2 = cr_tensor_init(CR_I32, CR_SHAPE(2, 4));
    for (int64_t c = 0; c < cr_stream_chunks(n, 2, 4); c++) {
        uint64_t vx = cr_tensor_version(x);
        cr_stream_chunk(x, y, ids, n, c);
        cr_stream_chunk_u8(x2, y2, (const uint8_t *)text, n, c);
        cr_assert_gt(cr_tensor_version(x), vx, "a fill bumps the version");
        cr_assert(memcmp(x->data, x2->data, 32) == 0 && memcmp(y->data, y2->data, 32) == 0, "chunk %lld",
                  (long long)c);
    }
    cr_assert_eq(cr_vocab_encode_bytes(v, "abq", 3, (uint8_t *)text), CR_EINVAL);
    cr_assert(strstr(cr_last_error(), "0x71"), "%s", cr_last_error());
    cr_tensor_free(x);
    cr_tensor_free(y);
    cr_tensor_free(x2);
    cr_tensor_free(y2);
    cr_vocab_free(v);
}

Test(data, encode_bytes_needs_a_char_vocab, .signal = SIGABRT)
{
    cr_vocab *v = cr_vocab_init_words("a b", 3, 1, 0);
    uint8_t out[3];
    cr_vocab_encode_bytes(v, "a b", 3, out);
}

/* A vocabulary from tokens: the same checks a file gets, as CR_EINVAL. */
Test(data, vocab_from_tokens)
{
    const char bytes[] = "<unk><eos>catdog";
    int64_t off[] = {0, 5, 10, 13, 16};
    cr_vocab *v = NULL;
    cr_assert_eq(cr_vocab_init_tokens(&v, CR_VOCAB_WORD, bytes, off, 4, 0, 1), CR_OK, "%s", cr_last_error());
    cr_assert_eq(cr_vocab_id(v, "dog", 3), 3);
    cr_assert_eq(cr_vocab_eos(v), 1);
    cr_vocab_free(v);
    int64_t dup[] = {0, 5, 10, 13, 16};
    cr_assert_eq(cr_vocab_init_tokens(&v, CR_VOCAB_WORD, "<unk><eos>catcat", dup, 4, 0, 1), CR_EINVAL);
    cr_assert(strstr(cr_last_error(), "equal"), "%s", cr_last_error());
    cr_assert_null(v);
    int64_t down[] = {0, 5, 4, 13, 16};
    cr_assert_eq(cr_vocab_init_tokens(&v, CR_VOCAB_WORD, bytes, down, 4, 0, 1), CR_EINVAL);
    cr_assert_eq(cr_vocab_init_tokens(&v, CR_VOCAB_WORD, bytes, off, 4, 0, 9), CR_EINVAL, "eos out of range");
    cr_assert_eq(cr_vocab_init_tokens(&v, CR_VOCAB_CHAR, bytes, off, 4, -1, -1), CR_EINVAL,
                 "char tokens are 1 byte");
}

Test(data, decode_bad_id_is_misuse, .signal = SIGABRT)
{
    cr_vocab *v = cr_vocab_init_chars("ab", 2);
    int32_t id = 2;
    char out[4];
    cr_vocab_decode(v, &id, 1, out, sizeof out);
}
