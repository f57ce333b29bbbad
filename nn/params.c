/* Named parameter sets: persistent tensors with hierarchical names, walked by
 * optimizers, clipping, checkpoints and reports. */
#include <stdlib.h>
#include <string.h>

#include "nn.h"

cr_params *cr_params_init(void) { return cr_xcalloc(1, sizeof(cr_params)); }

void cr_params_free(cr_params *ps)
{
    if (!ps) return;
    for (size_t i = 0; i < ps->n; i++) {
        free(ps->items[i].name);
        cr_tensor_free(ps->items[i].value);
    }
    free(ps->items);
    free(ps);
}

cr_tensor *cr_params_add(cr_params *ps, const char *prefix, const char *name, cr_dtype dt, int ndim,
                         const int64_t *shape)
{
    size_t lp = prefix ? strlen(prefix) : 0, ln = strlen(name);
    char *full = cr_xmalloc(lp + ln + 2);
    if (lp) {
        memcpy(full, prefix, lp);
        full[lp] = '.';
        memcpy(full + lp + 1, name, ln + 1);
    } else {
        memcpy(full, name, ln + 1);
    }
    if (cr_params_get(ps, full)) {
        free(full);
        cr_error("cr_params_add: a parameter named '%s%s%s' already exists", lp ? prefix : "", lp ? "." : "",
                 name);
    }
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 16;
        ps->items = cr_xrealloc(ps->items, ps->cap * sizeof *ps->items);
    }
    cr_tensor *t = cr_tensor_init(dt, ndim, shape);
    cr_requires_grad(t, true);
    t->name = full;
    ps->items[ps->n++] = (cr_param){.name = full, .value = t};
    return t;
}

cr_tensor *cr_params_get(const cr_params *ps, const char *name)
{
    for (size_t i = 0; i < ps->n; i++)
        if (strcmp(ps->items[i].name, name) == 0) return ps->items[i].value;
    return NULL;
}

size_t cr_params_numel(const cr_params *ps)
{
    size_t n = 0;
    for (size_t i = 0; i < ps->n; i++) n += (size_t)cr_numel(ps->items[i].value);
    return n;
}

size_t cr_params_bytes(const cr_params *ps)
{
    size_t n = 0;
    for (size_t i = 0; i < ps->n; i++)
        n += (size_t)cr_numel(ps->items[i].value) * cr_dtype_size(ps->items[i].value->dtype);
    return n;
}

void cr_params_zero_grad(cr_params *ps)
{
    for (size_t i = 0; i < ps->n; i++) cr_zero_grad(ps->items[i].value);
}

void cr_params_convert(cr_params *ps, cr_dtype dt)
{
    if (dt != CR_F32 && dt != CR_F64)
        cr_error("cr_params_convert: dtype %s, expected f32 or f64", cr_dtype_name(dt));
    for (size_t i = 0; i < ps->n; i++) {
        cr_tensor *t = ps->items[i].value;
        if (t->dtype == CR_I32)
            cr_error("cr_params_convert: parameter %s is i32, not a float", ps->items[i].name);
        /* The old gradient goes whatever the dtype: a converted model starts clean. */
        cr_tensor_free(t->grad);
        t->grad = NULL;
        if (t->dtype == dt) continue;
        /* New storage, copied with conversion, swapped into the same header:
         * layers and optimizers hold the header, not the storage. */
        cr_tensor *n = cr_tensor_init(dt, t->ndim, t->shape);
        cr_copy_(n, t);
        free(t->owned);
        t->owned = n->owned;
        t->data = n->data;
        t->dtype = dt;
        memcpy(t->stride, n->stride, sizeof t->stride);
        n->owned = NULL;
        cr_tensor_free(n);
        cr_tensor_bump_version(t);
    }
}

void cr_params_print(const cr_params *ps, FILE *f)
{
    char s[128];
    for (size_t i = 0; i < ps->n; i++) {
        const cr_tensor *t = ps->items[i].value;
        fprintf(f, "%-40s %s %-16s %lld\n", ps->items[i].name, cr_dtype_name(t->dtype),
                cr_shape_str(s, sizeof s, t->ndim, t->shape), (long long)cr_numel(t));
    }
    fprintf(f, "%zu parameters, %zu scalars, %zu bytes\n", ps->n, cr_params_numel(ps), cr_params_bytes(ps));
}
