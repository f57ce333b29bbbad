/* Printing tensors: nested brackets like NumPy, with the middle of long
 * dimensions elided, followed by dtype and shape. */
#include <stdio.h>

#include "tensor.h"

#define EDGE 3  /* items shown at each end of an elided dimension */
#define ELIDE 8 /* dimensions longer than this are elided */

static void print_rec(FILE *f, const cr_tensor *t, int d, int64_t off, int indent)
{
    if (d == t->ndim) {
        double v = t->dtype == CR_F32   ? ((const float *)t->data)[off]
                   : t->dtype == CR_F64 ? ((const double *)t->data)[off]
                                        : ((const int32_t *)t->data)[off];
        if (t->dtype == CR_I32)
            fprintf(f, "%d", (int)v);
        else
            fprintf(f, "%.6g", v);
        return;
    }
    int64_t n = t->shape[d];
    bool elide = n > ELIDE;
    fputc('[', f);
    for (int64_t i = 0; i < n; i++) {
        if (elide && i == EDGE) {
            fprintf(f, "...");
            i = n - EDGE - 1;
            goto sep;
        }
        print_rec(f, t, d + 1, off + i * t->stride[d], indent + 1);
    sep:
        if (i + 1 < n) {
            if (d + 1 < t->ndim)
                fprintf(f, ",\n%*s", indent + 1, "");
            else
                fprintf(f, ", ");
        }
    }
    fputc(']', f);
}

void cr_fprint(FILE *f, const cr_tensor *t)
{
    char s[128];
    fprintf(f, "tensor(");
    print_rec(f, t, 0, 0, 7);
    fprintf(f, ", dtype=%s, shape=%s)\n", cr_dtype_name(t->dtype),
            cr_shape_str(s, sizeof s, t->ndim, t->shape));
}

void cr_print(const cr_tensor *t) { cr_fprint(stdout, t); }
