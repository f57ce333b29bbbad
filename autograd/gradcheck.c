/* Finite-difference gradient check: central differences on every input
 * element, against autograd's gradient of sum(f(x) * r) for a fixed random r
 * (a random projection checks the whole Jacobian, not just its column sums). */
#include <math.h>
#include <stdlib.h>

#include "ops_internal.h"

/* sum(out * r) in double */
static double project(const cr_tensor *out, const cr_tensor *r)
{
    double s = 0;
    for (int64_t i = 0, n = cr_numel(out); i < n; i++) s += cr_get_flat(out, i) * cr_get_flat(r, i);
    return s;
}

double cr_gradcheck(cr_gradcheck_fn f, void *ctx, int n_in, cr_tensor *const *inputs, double eps,
                    cr_gradcheck_report *report)
{
    for (int i = 0; i < n_in; i++) {
        const cr_tensor *x = inputs[i];
        char s[128];
        if (x->dtype != CR_F64)
            cr_error(
                "cr_gradcheck: input %d is %s %s; finite differences need f64 (in f32 they measure rounding)",
                i, cr_dtype_name(x->dtype), cr_shape_str(s, sizeof s, x->ndim, x->shape));
        if (!x->persistent || !x->requires_grad)
            cr_error("cr_gradcheck: input %d, %s, must be a persistent tensor that requires a gradient", i,
                     cr_shape_str(s, sizeof s, x->ndim, x->shape));
    }
    cr_graph *g = cr_graph_init();
    cr_graph *prev = cr_graph_use(g);
    bool prev_mode = cr_set_grad_enabled(true);

    for (int i = 0; i < n_in; i++) cr_zero_grad(inputs[i]);
    cr_tensor *out = f(inputs, ctx);
    cr_tensor *r = cr_tensor_init(out->dtype, out->ndim, out->shape);
    cr_rng rng = cr_rng_seed(0x5eed);
    cr_fill_uniform(r, &rng, -1.0, 1.0);
    cr_tensor *rs = cr_tensor_alias(r); /* step view of r, so r is not a leaf here */
    cr_backward(cr_sum(cr_mul(out, rs)));

    cr_gradcheck_report rep = {0};
    rep.worst_input = -1;
    cr_set_grad_enabled(false);
    for (int i = 0; i < n_in; i++) {
        cr_tensor *x = inputs[i];
        for (int64_t j = 0, n = cr_numel(x); j < n; j++) {
            double analytic = x->grad ? cr_get_flat(x->grad, j) : 0.0;
            double v = cr_get_flat(x, j);
            cr_graph_clear(g);
            cr_set_flat(x, j, v + eps);
            double fp = project(f(inputs, ctx), r);
            cr_graph_clear(g);
            cr_set_flat(x, j, v - eps);
            double fm = project(f(inputs, ctx), r);
            cr_set_flat(x, j, v);
            double numeric = (fp - fm) / (2 * eps);
            double abs_err = fabs(analytic - numeric);
            double denom = fmax(fmax(fabs(analytic), fabs(numeric)), 1e-3);
            double rel = abs_err / denom;
            if (!(abs_err <= rep.max_abs_err)) rep.max_abs_err = abs_err; /* NaN-sticky */
            if (!(rel <= rep.max_rel_err) || rep.worst_input < 0) {
                if (!(rel <= rep.max_rel_err)) rep.max_rel_err = rel;
                rep.worst_input = i;
                rep.worst_index = j;
                rep.analytic = analytic;
                rep.numeric = numeric;
            }
            rep.n_checked++;
        }
    }
    cr_set_grad_enabled(prev_mode);
    cr_tensor_free(r);
    cr_graph_use(prev);
    cr_graph_free(g);
    if (report) *report = rep;
    return rep.max_rel_err;
}
