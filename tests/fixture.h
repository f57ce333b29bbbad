/* Test helper: load PyTorch fixtures (safetensors files written by
 * tests/fixtures/make_fixtures.py) from $CR_FIXTURES into tensors. */
#ifndef CAROUSEL_TEST_FIXTURE_H
#define CAROUSEL_TEST_FIXTURE_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel.h"

static inline cr_st_file *fixture_open(const char *file)
{
    const char *dir = getenv("CR_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "tests/fixtures", file);
    cr_st_file *f = NULL;
    if (cr_st_read(path, &f) != CR_OK) cr_assert_fail("cannot load fixture %s: %s", path, cr_last_error());
    return f;
}

static inline const cr_st_entry *fixture_entry(const cr_st_file *f, const char *name)
{
    const cr_st_entry *e = cr_st_find(f, name);
    cr_assert_not_null(e, "fixture has no tensor '%s'", name);
    return e;
}

/* Copy a fixture tensor into an existing tensor of the same element count. */
static inline void fixture_copy(const cr_st_file *f, const char *name, cr_tensor *dst)
{
    const cr_st_entry *e = fixture_entry(f, name);
    cr_assert_eq(e->dtype, dst->dtype, "fixture '%s' dtype differs", name);
    cr_assert_eq((int64_t)(e->nbytes / cr_dtype_size(e->dtype)), cr_numel(dst), "fixture '%s' size differs",
                 name);
    cr_assert(cr_is_contiguous(dst));
    memcpy(dst->data, e->data, e->nbytes);
}

/* A persistent tensor holding a fixture tensor (shape as in the file). */
static inline cr_tensor *fixture_tensor(const cr_st_file *f, const char *name)
{
    const cr_st_entry *e = fixture_entry(f, name);
    cr_tensor *t = cr_tensor_init(e->dtype, e->ndim, e->shape);
    memcpy(t->data, e->data, e->nbytes);
    return t;
}

static inline long fixture_meta_int(const cr_st_file *f, const char *key)
{
    const char *v = cr_st_meta_get(f, key);
    cr_assert_not_null(v, "fixture has no metadata '%s'", key);
    return strtol(v, NULL, 10);
}

/* Worst |a-b| / max(|b|, 1) between a tensor and a fixture tensor: relative
 * for values above 1, absolute below (where relative error means nothing). */
static inline double fixture_err(const cr_st_file *f, const char *name, const cr_tensor *a)
{
    const cr_st_entry *e = fixture_entry(f, name);
    int64_t n = (int64_t)(e->nbytes / cr_dtype_size(e->dtype));
    cr_assert_eq(n, cr_numel(a), "'%s': %lld elements, fixture has %lld", name, (long long)cr_numel(a),
                 (long long)n);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double b;
        if (e->dtype == CR_F32) {
            float v;
            memcpy(&v, (const char *)e->data + i * 4, 4);
            b = v;
        } else {
            memcpy(&b, (const char *)e->data + i * 8, 8);
        }
        double d = fabs(cr_get_flat(a, i) - b) / fmax(fabs(b), 1.0);
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

#define EXPECT_MATCH(f, name, t, tol)                                                                        \
    do {                                                                                                     \
        double err_ = fixture_err((f), (name), (t));                                                         \
        cr_expect(err_ <= (tol), "%s: error %.3g exceeds %.1g", (name), err_, (double)(tol));                \
    } while (0)

#endif
