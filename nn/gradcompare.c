/*
 * Side-by-side comparison of two gradient sets (autograd against hand-derived
 * BPTT, or either against finite differences): per named tensor, the worst
 * absolute and relative error, where it occurs, and a table printer.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn.h"

/* Element i (row-major) of a float tensor; `flat` (contiguous) reads directly. */
static double elem(const cr_tensor *t, bool flat, int64_t i)
{
    if (!flat) return cr_get_flat(t, i);
    return t->dtype == CR_F64 ? ((const double *)t->data)[i] : ((const float *)t->data)[i];
}

static void check_float(const char *op, const char *name, const char *side, const cr_tensor *t)
{
    if (t && t->dtype != CR_F32 && t->dtype != CR_F64)
        cr_error("%s: %s (%s) is %s, expected f32 or f64", op, name, side, cr_dtype_name(t->dtype));
}

/* One tensor pair; NULL stands for zeros of the other's shape. */
static cr_grad_diff diff_one(const char *op, const char *name, const cr_tensor *a, const cr_tensor *b,
                             double tiny)
{
    cr_grad_diff d = {.name = name, .worst_index = -1};
    check_float(op, name, "a", a);
    check_float(op, name, "b", b);
    if (a && b &&
        (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) != 0)) {
        char sa[128], sb[128];
        cr_error("%s: %s: shapes %s and %s differ", op, name, cr_shape_str(sa, sizeof sa, a->ndim, a->shape),
                 cr_shape_str(sb, sizeof sb, b->ndim, b->shape));
    }
    const cr_tensor *s = a ? a : b;
    if (!s) return d;
    d.ndim = s->ndim;
    memcpy(d.shape, s->shape, sizeof(int64_t) * (size_t)s->ndim);
    d.numel = cr_numel(s);
    const bool fa = a && cr_is_contiguous(a), fb = b && cr_is_contiguous(b);
    for (int64_t i = 0; i < d.numel; i++) {
        const double x = a ? elem(a, fa, i) : 0, y = b ? elem(b, fb, i) : 0;
        const double abs_err = fabs(x - y);
        const double rel = abs_err / fmax(fmax(fabs(x), fabs(y)), tiny);
        /* A NaN on either side is the worst error there is (the first one is kept). */
        if (abs_err > d.max_abs || (isnan(abs_err) && !isnan(d.max_abs))) d.max_abs = abs_err;
        if (d.worst_index < 0 || rel > d.max_rel || (isnan(rel) && !isnan(d.max_rel))) {
            d.max_rel = rel;
            d.worst_index = i;
            d.a = x;
            d.b = y;
        }
    }
    return d;
}

static double worst_of(const cr_grad_diff *out, size_t n)
{
    double worst = 0;
    for (size_t k = 0; k < n; k++)
        if (out[k].max_rel > worst || (isnan(out[k].max_rel) && !isnan(worst))) worst = out[k].max_rel;
    return worst;
}

double cr_grad_compare(const char *const *names, const cr_tensor *const *a, const cr_tensor *const *b,
                       size_t n, double tiny, cr_grad_diff *out)
{
    if (n && (!a || !b || !out)) cr_error("cr_grad_compare: tensor or output arrays are NULL (n = %zu)", n);
    if (tiny <= 0) tiny = CR_GRAD_TINY;
    for (size_t k = 0; k < n; k++)
        out[k] = diff_one("cr_grad_compare", names && names[k] ? names[k] : "?", a[k], b[k], tiny);
    return worst_of(out, n);
}

double cr_grad_compare_params(const cr_params *ps, const cr_tensor *const *b, double tiny, cr_grad_diff *out)
{
    if (!ps) cr_error("cr_grad_compare_params: parameter set is NULL");
    if (ps->n && (!b || !out))
        cr_error("cr_grad_compare_params: tensor or output arrays are NULL (%zu parameters)", ps->n);
    if (tiny <= 0) tiny = CR_GRAD_TINY;
    for (size_t k = 0; k < ps->n; k++) {
        const cr_tensor *v = ps->items[k].value;
        const cr_tensor *g = v->grad;
        /* A parameter no gradient reached still has its shape: check b against it. */
        if (!g && b[k] &&
            (b[k]->ndim != v->ndim || memcmp(b[k]->shape, v->shape, sizeof(int64_t) * (size_t)v->ndim))) {
            char sa[128], sb[128];
            cr_error("cr_grad_compare_params: %s: shapes %s and %s differ", ps->items[k].name,
                     cr_shape_str(sa, sizeof sa, v->ndim, v->shape),
                     cr_shape_str(sb, sizeof sb, b[k]->ndim, b[k]->shape));
        }
        out[k] = diff_one("cr_grad_compare_params", ps->items[k].name, g, b[k], tiny);
    }
    return worst_of(out, ps->n);
}

/* "[3,17]": the multi-index of flat index i in d's shape. */
static const char *index_str(char *buf, size_t len, const cr_grad_diff *d)
{
    if (d->worst_index < 0) return "-";
    int64_t idx[CR_MAX_DIMS], rest = d->worst_index;
    for (int k = d->ndim - 1; k >= 0; k--) {
        idx[k] = d->shape[k] ? rest % d->shape[k] : 0;
        rest = d->shape[k] ? rest / d->shape[k] : 0;
    }
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int k = 0; k < d->ndim && used < len; k++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", k ? "," : "", (long long)idx[k]);
    if (used < len) snprintf(buf + used, len - used, "]");
    return buf;
}

void cr_grad_diff_print(FILE *f, const cr_grad_diff *d, size_t n, const char *label_a, const char *label_b)
{
    if (!f) f = stdout;
    label_a = label_a ? label_a : "a";
    label_b = label_b ? label_b : "b";
    int w = 9;
    for (size_t k = 0; k < n; k++) {
        int len = (int)strlen(d[k].name ? d[k].name : "?");
        if (len > w) w = len;
    }
    fprintf(f, "%-*s %9s %10s %10s  %-12s %14s %14s\n", w, "tensor", "numel", "max_abs", "max_rel",
            "worst at", label_a, label_b);
    for (size_t k = 0; k < n; k++) {
        char idx[96];
        fprintf(f, "%-*s %9lld %10.3e %10.3e  %-12s %14.7g %14.7g\n", w, d[k].name ? d[k].name : "?",
                (long long)d[k].numel, d[k].max_abs, d[k].max_rel, index_str(idx, sizeof idx, &d[k]), d[k].a,
                d[k].b);
    }
}
