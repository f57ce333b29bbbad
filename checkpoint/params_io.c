/* Parameter sets in safetensors files: save every parameter by its
 * hierarchical name (plus optional extra tensors such as optimizer state),
 * and load a file back into a model after validating all of it. */
#include <stdlib.h>
#include <string.h>

#include "checkpoint_internal.h"

/* Describe parameter value t as an entry; checks it can be saved/loaded raw.
 * A tensor without elements has no bytes to copy, so its strides do not
 * matter: it is accepted whatever cr_is_contiguous says of them. */
static cr_status param_entry(const cr_param *p, cr_st_entry *e)
{
    const cr_tensor *t = p->value;
    if (!p->name || !t) return cr_failure(CR_EINVAL, "a parameter has no %s", t ? "name" : "value");
    if (t->dtype != CR_F32 && t->dtype != CR_F64 && t->dtype != CR_I32)
        return cr_failure(CR_EINVAL, "parameter '%s' has an unknown dtype %d", cr_escape(p->name).s,
                          (int)t->dtype);
    int64_t numel = cr_numel(t);
    if (numel > 0 && !cr_is_contiguous(t))
        return cr_failure(CR_EINVAL, "parameter '%s' is not contiguous", cr_escape(p->name).s);
    if (numel > 0 && !t->data)
        return cr_failure(CR_EINVAL, "parameter '%s' has no data", cr_escape(p->name).s);
    memset(e, 0, sizeof *e);
    e->name = p->name;
    e->dtype = t->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    e->data = t->data;
    e->nbytes = (size_t)numel * cr_dtype_size(t->dtype);
    return CR_OK;
}

cr_status cr_params_save_extra(const cr_params *ps, const cr_st_entry *extra, size_t n_extra,
                               const char *path, const char *const *meta_kv, size_t n_meta)
{
    if (!ps || !path) cr_error("cr_params_save: %s is NULL", ps ? "path" : "params");
    if (n_extra > 0 && !extra) cr_error("cr_params_save_extra: extra is NULL but n_extra is %zu", n_extra);
    if (n_extra > SIZE_MAX / sizeof(cr_st_entry) - ps->n - 1)
        return cr_failure(CR_ENOMEM, "%s: too many tensors", path);
    size_t n = ps->n + n_extra;
    cr_st_entry *es = malloc((n ? n : 1) * sizeof *es);
    if (!es) return cr_failure(CR_ENOMEM, "%s: out of memory", path);
    cr_status st = CR_OK;
    for (size_t i = 0; i < ps->n && st == CR_OK; i++) st = param_entry(&ps->items[i], &es[i]);
    for (size_t i = 0; i < n_extra && st == CR_OK; i++) {
        const char *nm = extra[i].name;
        if (!nm || strncmp(nm, CR_ST_OPTIM_PREFIX, strlen(CR_ST_OPTIM_PREFIX)) != 0)
            st = cr_failure(CR_EINVAL, "extra tensor '%s' does not start with '%s'", cr_escape(nm).s,
                            CR_ST_OPTIM_PREFIX);
        es[ps->n + i] = extra[i];
    }
    if (st != CR_OK)
        cr_failure(st, "%s: %s", path, cr_last_error());
    else
        st = cr_st_write(path, es, n, meta_kv, n_meta);
    free(es);
    return st;
}

cr_status cr_params_save(const cr_params *ps, const char *path, const char *const *meta_kv, size_t n_meta)
{
    return cr_params_save_extra(ps, NULL, 0, path, meta_kv, n_meta);
}

cr_status cr_params_load(cr_params *ps, const char *path)
{
    if (!ps || !path) cr_error("cr_params_load: %s is NULL", ps ? "path" : "params");
    cr_st_file *f = NULL;
    cr_status st = cr_st_read(path, &f);
    if (st != CR_OK) return st;
    size_t nf = cr_st_count(f);
    bool *used = calloc(nf ? nf : 1, sizeof *used);
    cr_st_entry *want = malloc((ps->n ? ps->n : 1) * sizeof *want);
    const cr_st_entry **have = malloc((ps->n ? ps->n : 1) * sizeof *have);
    if (!used || !want || !have) {
        st = cr_failure(CR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    /* Pass 1: check everything, touch nothing. */
    for (size_t i = 0; i < ps->n; i++) {
        if ((st = param_entry(&ps->items[i], &want[i])) != CR_OK) {
            cr_failure(st, "%s: %s", path, cr_last_error());
            goto done;
        }
        const cr_st_entry *w = &want[i], *e = cr_st_find(f, w->name);
        if (!e) {
            st = cr_failure(CR_EMISMATCH, "%s: parameter '%s' is missing from the file", path,
                            cr_escape(w->name).s);
            goto done;
        }
        bool same = e->dtype == w->dtype && e->ndim == w->ndim;
        for (int d = 0; same && d < w->ndim; d++) same = e->shape[d] == w->shape[d];
        if (!same) {
            char s1[CR_MAX_DIMS * 21 + 3], s2[CR_MAX_DIMS * 21 + 3];
            st = cr_failure(CR_EMISMATCH, "%s: parameter '%s': file has %s %s, model has %s %s", path,
                            cr_escape(w->name).s, cr_st_dtype_name(e->dtype),
                            cr_shape_str(s1, sizeof s1, e->ndim, e->shape), cr_st_dtype_name(w->dtype),
                            cr_shape_str(s2, sizeof s2, w->ndim, w->shape));
            goto done;
        }
        used[e - cr_st_entry_at(f, 0)] = true;
        have[i] = e;
    }
    for (size_t j = 0; j < nf; j++) {
        const char *nm = cr_st_entry_at(f, j)->name;
        if (!used[j] && strncmp(nm, CR_ST_OPTIM_PREFIX, strlen(CR_ST_OPTIM_PREFIX)) != 0) {
            st = cr_failure(CR_EMISMATCH, "%s: tensor '%s' is not a parameter of the model", path,
                            cr_escape(nm).s);
            goto done;
        }
    }
    /* Pass 2: copy (memcpy, since file data may be unaligned), and tell
     * autograd the parameters changed. */
    for (size_t i = 0; i < ps->n; i++) {
        if (want[i].nbytes) memcpy(ps->items[i].value->data, have[i]->data, want[i].nbytes);
        cr_tensor_bump_version(ps->items[i].value);
    }

done:
    free(used);
    free(want);
    free(have);
    cr_st_file_free(f);
    return st;
}
