/* Command-line lists shared by the benchmarks: "--hidden 128,512" and the
 * like, comma-separated positive integers. */
#ifndef CAROUSEL_BENCH_ARGS_H
#define CAROUSEL_BENCH_ARGS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* Appends the comma-separated positive integers of s to list, which holds *n
 * of at most max entries. False (list partly filled) on an empty entry, a
 * value below 1, anything but digits and commas, or more than max entries. */
static inline bool bench_list(const char *s, int64_t *list, int *n, int max)
{
    for (;;) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v < 1 || *n >= max) return false;
        list[(*n)++] = v;
        if (*end == '\0') return true;
        if (*end != ',') return false;
        s = end + 1;
    }
}

#endif
