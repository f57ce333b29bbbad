/* The safetensors format's small pieces shared by the reader and the writer:
 * dtype names and sizes, strict UTF-8, duplicate names, and the escaping of
 * file strings for messages. */
#include <stdlib.h>
#include <string.h>

#include "checkpoint_internal.h"

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

bool cr_st_dtype_parse(const char *s, cr_dtype *dt)
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

bool cr_st_dtype_known(cr_dtype dt) { return dt == CR_F32 || dt == CR_F64 || dt == CR_I32; }

/* bytes = prod(shape) * element size; false on a negative dim or overflow:
 * exactly the shapes cr_tensor_init accepts (cr_shape_fits, whose rule also
 * bounds the nonzero dims of an empty shape), so reader and writer agree
 * with it in whatever order the dims come. */
bool cr_st_nbytes(cr_dtype dt, int ndim, const int64_t *shape, uint64_t *bytes)
{
    int64_t numel;
    if (!cr_st_dtype_known(dt) || !cr_shape_fits(dt, ndim, shape, &numel)) return false;
    *bytes = (uint64_t)numel * cr_dtype_size(dt); /* at most PTRDIFF_MAX */
    return true;
}

/* Length of the valid UTF-8 sequence at s[0..len) (no overlongs, surrogates
 * or code points above U+10FFFF), or 0 if it is not one. */
size_t cr_st_utf8_seq(const unsigned char *s, size_t len)
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

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that appears twice in names[n] (sorted in place), or NULL. */
const char *cr_st_first_dup(const char **names, size_t n)
{
    if (n < 2) return NULL;
    qsort(names, n, sizeof *names, cmp_str_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}
