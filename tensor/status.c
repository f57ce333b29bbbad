/* Status codes for failures that come from the outside world, and the
 * thread-local last-error message that goes with them (cr_failure sets it,
 * cr_last_error reads it). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tensor.h"

/* Long enough for a path plus a reason; longer messages are cut. */
static _Thread_local char last_error[1024];

const char *cr_status_str(cr_status s)
{
    switch (s) {
    case CR_OK: return "ok";
    case CR_NONFINITE: return "non-finite value";
    case CR_EIO: return "i/o error";
    case CR_EFORMAT: return "malformed file";
    case CR_EMISMATCH: return "file does not fit";
    case CR_ENOMEM: return "out of memory";
    case CR_EINVAL: return "invalid data";
    }
    return "unknown status";
}

const char *cr_last_error(void) { return last_error; }

cr_status cr_failure(cr_status st, const char *fmt, ...)
{
    /* Format into a local buffer first: an argument may be cr_last_error()
     * itself (a caller adding context to a message it received). */
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_error, msg, sizeof msg);
    return st;
}
