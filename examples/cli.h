/* Shared by the example programs: a monotonic clock and strict parsing of
 * numeric flag values. Each example defines usage(), which prints its flags
 * and exits with status 2; a malformed number calls it. */
#ifndef CAROUSEL_EXAMPLES_CLI_H
#define CAROUSEL_EXAMPLES_CLI_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static void usage(const char *prog);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The whole string must be a number: "5x" and "" are rejected. */
static int64_t parse_int(const char *prog, const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) usage(prog);
    return (int64_t)v;
}

static double parse_real(const char *prog, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) usage(prog);
    return v;
}

#endif
