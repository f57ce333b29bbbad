/* The one error path for API misuse (a replaceable handler whose default
 * prints and aborts) and the checked allocators that report through it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

static void default_handler(const char *message)
{
    fprintf(stderr, "carousel: %s\n", message);
    fflush(stderr);
    abort();
}

static cr_error_handler handler = default_handler;

cr_error_handler cr_set_error_handler(cr_error_handler h)
{
    cr_error_handler old = handler;
    handler = h ? h : default_handler;
    return old;
}

void cr_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    handler(msg);
    abort(); /* a handler that returns leaves no safe way to continue */
}

char *cr_shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t used = 0;
    if (len == 0) return buf;
    buf[0] = '\0';
    if (ndim < 0 || ndim > CR_MAX_DIMS) { /* not a shape (a header overwritten since): none of it is read */
        snprintf(buf, len, "[? %d dims]", ndim);
        return buf;
    }
    used += (size_t)snprintf(buf + used, len - used, "[");
    for (int d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, d ? ",%lld" : "%lld", (long long)shape[d]);
    if (used < len) snprintf(buf + used, len - used, "]");
    return buf;
}

void *cr_xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) cr_error("out of memory allocating %zu bytes", bytes);
    return p;
}

void *cr_xcalloc(size_t n, size_t bytes)
{
    void *p = calloc(n ? n : 1, bytes ? bytes : 1);
    if (!p) cr_error("out of memory allocating %zu x %zu bytes", n, bytes);
    return p;
}

void *cr_xrealloc(void *p, size_t bytes)
{
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) cr_error("out of memory reallocating %zu bytes", bytes);
    return q;
}
