/*
 * The tape: gradient accumulation, shared parameters, no-grad, detach,
 * retain_grad, a 100,000-step chain, arena reuse without malloc, stale graphs,
 * misuse messages, DOT export and one graph per OpenMP thread.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel/autograd.h"
#include "expect_error.h"

/* ---- malloc counting: this test links with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,
 * so every allocation made by carousel (a static library here) and by this file
 * passes through these wrappers. Shared libraries (libc, BLIS, libgomp,
 * Criterion) call the real functions directly and are not counted. */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
static atomic_long n_allocs;

void *__wrap_malloc(size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t m)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return __real_realloc(p, n);
}

/* ---- fixture ----------------------------------------------------------------- */

static cr_graph *graph;
static cr_tensor *owned[16];
static int n_owned;

static void setup(void)
{
    graph = cr_graph_init();
    cr_graph_use(graph);
}

static void teardown(void)
{
    for (int i = 0; i < n_owned; i++) cr_tensor_free(owned[i]);
    n_owned = 0;
    cr_graph_free(graph);
}

TestSuite(graph, .init = setup, .fini = teardown);

/* A persistent f64 parameter holding `v`, requiring a gradient. */
static cr_tensor *param(int ndim, const int64_t *shape, const double *v)
{
    cr_tensor *t = cr_tensor_init(CR_F64, ndim, shape);
    memcpy(t->data, v, (size_t)cr_numel(t) * sizeof(double));
    cr_requires_grad(t, true);
    owned[n_owned++] = t;
    return t;
}

static cr_tensor *f64(int ndim, const int64_t *shape, const double *v)
{
    return cr_from_array(CR_F64, ndim, shape, v);
}

static void expect_values(const cr_tensor *t, const double *want, int64_t n, double tol)
{
    cr_assert_not_null(t, "no tensor (no gradient?)");
    cr_assert_eq(cr_numel(t), n);
    for (int64_t i = 0; i < n; i++)
        cr_assert(fabs(cr_get_flat(t, i) - want[i]) <= tol, "element %lld: got %.17g, expected %.17g",
                  (long long)i, cr_get_flat(t, i), want[i]);
}

/* ---- accumulation --------------------------------------------------------------- */

Test(graph, backward_accumulates_until_zeroed)
{
    cr_tensor *w = param(CR_SHAPE(3), (double[]){1, 2, 3});
    cr_tensor *x = f64(CR_SHAPE(3), (double[]){4, 5, 6});
    cr_assert_null(w->grad);
    cr_backward(cr_sum(cr_mul(w, x))); /* dw = x */
    cr_assert(w->grad->persistent);
    expect_values(w->grad, (double[]){4, 5, 6}, 3, 0);
    cr_graph_clear(graph);
    x = f64(CR_SHAPE(3), (double[]){1, 1, 2});
    cr_backward(cr_sum(cr_mul(w, x))); /* a new step adds */
    expect_values(w->grad, (double[]){5, 6, 8}, 3, 0);
    cr_tensor *loss = cr_sum(cr_mul(w, x));
    cr_backward(loss); /* twice on one graph: adds again */
    cr_backward(loss);
    expect_values(w->grad, (double[]){7, 8, 12}, 3, 0);
    cr_tensor *g = w->grad;
    cr_zero_grad(w);
    cr_assert_eq(w->grad, g); /* kept allocated */
    expect_values(w->grad, (double[]){0, 0, 0}, 3, 0);
    cr_backward(cr_sum(cr_square(w))); /* dw = 2w */
    expect_values(w->grad, (double[]){2, 4, 6}, 3, 0);
}

/* A select of a step tensor's first dim (the h or the c of an LSTM step's
 * [2,B,H] pair) gets the base's gradient through the view: the view's half
 * is written, not added to, and only the other half is zero-filled (in the
 * ASan build the pool hands out NaN, so a half left unfilled shows). Through stack
 * as the sequence layer collects h, through a plain op, and both halves. */
Test(graph, select_of_a_pair_fills_only_the_other_half)
{
    cr_tensor *w = param(CR_SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *k = f64(CR_SHAPE(3), (double[]){1, -2, 0.5});
    cr_tensor *y1 = cr_mul_scalar(w, 2), *y2 = cr_mul_scalar(w, 3);
    cr_tensor *hs[2] = {cr_select(y1, 0, 0), cr_select(y2, 0, 0)};
    cr_backward(cr_sum(cr_mul(cr_stack(2, hs, 0), k))); /* dw[0] = 2k + 3k, dw[1] = 0 */
    expect_values(w->grad, (double[]){5, -10, 2.5, 0, 0, 0}, 6, 0);
    cr_graph_clear(graph);
    cr_zero_grad(w);
    cr_tensor *y = cr_mul_scalar(w, 2), *c = cr_select(y, 0, 1);
    cr_backward(cr_sum(cr_square(c))); /* dw[1] = 2 * 2c = 8 w[1] */
    expect_values(w->grad, (double[]){0, 0, 0, 32, 40, 48}, 6, 0);
    cr_graph_clear(graph);
    cr_zero_grad(w);
    y = cr_mul_scalar(w, 2);
    k = f64(CR_SHAPE(3), (double[]){1, -2, 0.5}); /* the cleared graph took the first k */
    cr_backward(cr_add(cr_sum(cr_mul(cr_select(y, 0, 0), k)), cr_sum(cr_square(cr_select(y, 0, 1)))));
    expect_values(w->grad, (double[]){2, -4, 1, 32, 40, 48}, 6, 0);
}

Test(graph, tensor_used_twice_gets_both_gradients)
{
    cr_tensor *w = param(CR_SHAPE(2), (double[]){3, -1});
    cr_tensor *y = cr_mul(w, w);                   /* dy/dw = 2w through two inputs of one node */
    cr_tensor *z = cr_add(y, cr_mul_scalar(w, 5)); /* and once more, elsewhere */
    cr_backward(cr_sum(z));
    expect_values(w->grad, (double[]){11, 3}, 2, 0);
}

Test(graph, step_leaves_get_arena_gradients)
{
    cr_tensor *x = f64(CR_SHAPE(2), (double[]){1, 2});
    cr_requires_grad(x, true);
    cr_backward(cr_sum(cr_exp(x)));
    cr_assert_not(x->grad->persistent);
    expect_values(x->grad, (double[]){exp(1), exp(2)}, 2, 1e-15);
    cr_requires_grad(x, false);
    cr_assert_not(x->requires_grad);
}

/* h_t = tanh(w * h_{t-1} + x_t), h_0 = 0, loss = h_T, all scalars: the forward
 * value and d loss / d w, d loss / d x_t by hand. */
static double hand_chain(double w, const double *x, int64_t T, double *dw, double *dx)
{
    double *h = malloc((size_t)(T + 1) * sizeof *h);
    h[0] = 0;
    for (int64_t t = 1; t <= T; t++) h[t] = tanh(w * h[t - 1] + x[t - 1]);
    double g = 1, gw = 0;
    for (int64_t t = T; t >= 1; t--) {
        double dpre = g * (1 - h[t] * h[t]);
        gw += dpre * h[t - 1];
        if (dx) dx[t - 1] = dpre;
        g = dpre * w;
    }
    double out = h[T];
    free(h);
    *dw = gw;
    return out;
}

Test(graph, parameter_used_at_every_step_gets_the_sum)
{
    double xs[6] = {0.5, -0.3, 0.8, 0.1, -0.7, 0.4}, dx[6], dw;
    cr_tensor *w = param(CR_SHAPE(1), (double[]){0.8});
    cr_tensor *x = param(CR_SHAPE(6), xs);
    cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(1));
    for (int64_t t = 0; t < 6; t++) h = cr_tanh(cr_add(cr_mul(w, h), cr_narrow(x, 0, t, 1)));
    double want = hand_chain(0.8, xs, 6, &dw, dx);
    cr_assert_float_eq(cr_item(h), want, 1e-15);
    cr_backward(h);
    cr_assert_float_eq(cr_item(w->grad), dw, 1e-14);
    expect_values(x->grad, dx, 6, 1e-14);
    cr_assert_eq(cr_graph_node_count(graph), 6 * 4);
}

/* ---- no-grad, detach, retain_grad ----------------------------------------------------- */

Test(graph, no_grad_records_nothing)
{
    cr_tensor *w = param(CR_SHAPE(2, 2), (double[]){1, 2, 3, 4});
    cr_assert(cr_grad_enabled());
    cr_assert(cr_set_grad_enabled(false));
    cr_assert_not(cr_grad_enabled());
    cr_tensor *y = cr_sum(cr_tanh(cr_matmul(w, cr_transpose(w, 0, 1))));
    cr_assert_eq(cr_graph_node_count(graph), 0);
    cr_assert_not(y->requires_grad);
    cr_assert_null(y->node);
    cr_assert_float_eq(cr_item(y), tanh(5) + 2 * tanh(11) + tanh(25), 1e-14); /* values still computed */
    EXPECT_ERROR(cr_backward(y), "cr_backward: tensor [] does not require a gradient");
    cr_assert_not(cr_set_grad_enabled(true));
    cr_tensor *z = cr_sum(w);
    cr_assert(z->requires_grad);
    cr_assert_eq(cr_graph_node_count(graph), 1);
    cr_assert_str_eq(cr_graph_node(graph, 0)->op->name, "cr_sum");
    cr_assert_null(cr_graph_node(graph, 1));
}

Test(graph, tensors_without_grad_record_nothing)
{
    cr_tensor *a = f64(CR_SHAPE(2), (double[]){1, 2});
    cr_tensor *y = cr_exp(cr_add(a, a));
    cr_assert_not(y->requires_grad);
    cr_assert_eq(cr_graph_node_count(graph), 0);
}

Test(graph, detach_stops_the_gradient)
{
    cr_tensor *w = param(CR_SHAPE(2), (double[]){2, -3});
    cr_tensor *x = f64(CR_SHAPE(2), (double[]){5, 7});
    cr_tensor *wx = cr_mul(w, x);
    cr_tensor *d = cr_detach(wx);
    cr_assert_eq(d->data, wx->data); /* shares storage */
    cr_assert_not(d->requires_grad);
    cr_assert_null(d->node);
    cr_backward(cr_sum(cr_mul(d, w))); /* d(w x w)/dw with w x held fixed = w x */
    expect_values(w->grad, (double[]){10, -21}, 2, 0);
    cr_zero_grad(w);
    cr_backward(cr_sum(cr_mul(wx, w))); /* without detach: 2 w x */
    expect_values(w->grad, (double[]){20, -42}, 2, 0);
    /* a detached leaf */
    cr_tensor *dw = cr_detach(w);
    cr_assert_not(dw->requires_grad);
    cr_assert_not(dw->persistent);
    cr_assert_null(dw->owned);
}

Test(graph, where_condition_needs_no_gradient)
{
    cr_tensor *w = param(CR_SHAPE(3), (double[]){-1, 2, 0.5});
    cr_tensor *cond = cr_add_scalar(w, 0); /* requires a gradient itself */
    cr_backward(cr_sum(cr_where(cond, w, cr_neg(w))));
    expect_values(w->grad, (double[]){1, 1, 1}, 3, 0); /* nonzero cond everywhere: d w / d w */
}

#define RNN_T 20
Test(graph, retain_grad_keeps_every_hidden_state)
{
    /* four independent scalar chains h_t = tanh(w h_{t-1} + x_t), loss = sum h_T */
    double wv[4] = {0.5, -0.7, 0.9, 0.3}, xs[RNN_T][4];
    for (int t = 0; t < RNN_T; t++)
        for (int k = 0; k < 4; k++) xs[t][k] = 0.5 * sin(1.3 * t + k);
    cr_tensor *w = param(CR_SHAPE(4), wv);
    cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(4)), *hs[RNN_T], *pre[RNN_T];
    for (int t = 0; t < RNN_T; t++) {
        pre[t] = cr_add(cr_mul(w, h), f64(CR_SHAPE(4), xs[t]));
        h = hs[t] = cr_tanh(pre[t]);
        cr_retain_grad(h);
    }
    cr_backward(cr_sum(h));
    /* hand: per chain, d loss / d h_t */
    double prev_norm = INFINITY;
    for (int t = RNN_T - 1; t >= 0; t--) {
        cr_assert_not_null(hs[t]->grad, "h_%d lost its gradient", t);
        cr_assert_null(pre[t]->grad, "pre_%d kept a gradient it was not asked to", t);
        double norm = 0;
        for (int k = 0; k < 4; k++) {
            double g = 1; /* d h_T / d h_t for chain k */
            for (int s = RNN_T - 1; s > t; s--) {
                double hsv = cr_get_flat(hs[s], k);
                g *= (1 - hsv * hsv) * wv[k];
            }
            cr_assert_float_eq(cr_get_flat(hs[t]->grad, k), g, 1e-14, "t %d chain %d", t, k);
            norm += g * g;
        }
        norm = sqrt(norm);
        cr_assert_lt(norm, prev_norm, "gradient norm grew going back to step %d", t); /* it vanishes */
        prev_norm = norm;
    }
    cr_assert_lt(prev_norm, 0.02 * 2, "norm at step 0 is %g", prev_norm); /* vs |d loss / d h_T| = 2 */
    EXPECT_ERROR(cr_retain_grad(f64(CR_SHAPE(1), (double[]){1})),
                 "cr_retain_grad: tensor does not require a gradient");
}

Test(graph, retained_gradients_do_not_flow_twice)
{
    cr_tensor *w = param(CR_SHAPE(2), (double[]){0.5, -1});
    cr_tensor *x = f64(CR_SHAPE(2), (double[]){2, 3});
    cr_tensor *h = cr_mul(w, x);
    cr_retain_grad(h);
    cr_backward(cr_sum(h)); /* dw = x, dh = 1 */
    expect_values(w->grad, (double[]){2, 3}, 2, 0);
    expect_values(h->grad, (double[]){1, 1}, 2, 0);
    /* a second loss recorded after h, not depending on it: h's old gradient
     * must not be sent to w again */
    cr_backward(cr_sum(cr_mul_scalar(w, 10)));
    expect_values(w->grad, (double[]){12, 13}, 2, 0);
    expect_values(h->grad, (double[]){1, 1}, 2, 0);
    /* a third through h: the retained gradient accumulates like a leaf's */
    cr_backward(cr_sum(cr_mul_scalar(h, 3)));
    expect_values(h->grad, (double[]){4, 4}, 2, 0);
    expect_values(w->grad, (double[]){18, 22}, 2, 0);
}

/* ---- a long chain --------------------------------------------------------------------- */

#define LONG_T 100000
Test(graph, hundred_thousand_steps_backpropagate)
{
    double *xs = malloc(LONG_T * sizeof *xs), *dx = malloc(LONG_T * sizeof *dx), dw;
    for (int64_t t = 0; t < LONG_T; t++) xs[t] = 0.6 * sin(0.01 * (double)t);
    cr_tensor *w = param(CR_SHAPE(1), (double[]){0.95});
    cr_tensor *x = param(CR_SHAPE(LONG_T), xs);
    cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(1));
    for (int64_t t = 0; t < LONG_T; t++) h = cr_tanh(cr_add(cr_mul(h, w), cr_narrow(x, 0, t, 1)));
    cr_assert_eq(cr_graph_node_count(graph), 4 * LONG_T);
    double want = hand_chain(0.95, xs, LONG_T, &dw, dx);
    cr_assert_float_eq(cr_item(h), want, 1e-12);
    cr_backward(h);
    cr_assert_float_eq(cr_item(w->grad), dw, 1e-10);
    for (int64_t t = LONG_T - 50; t < LONG_T; t++)
        cr_assert_float_eq(cr_get_flat(x->grad, t), dx[t], 1e-12, "dx[%lld]", (long long)t);
    cr_assert_float_eq(cr_get_flat(x->grad, 0), dx[0], 1e-300); /* vanished: 0.95^100000 underflows */
    free(xs);
    free(dx);
}

/* ---- arena reuse: no malloc in steady state ----------------------------------------------- */

typedef struct {
    cr_tensor *w_ih, *w_hh, *b, *w_out, *emb; /* [I,H] [H,H] [H] [H,V] [V,I] */
} small_model;

/* One training step of a small embedding + tanh RNN + cross-entropy model. */
static double train_step(const small_model *m, int big)
{
    int64_t B = 4, T = 5;
    int32_t tok[20], tgt[4] = {1, -1, 3, 0};
    for (int i = 0; i < 20; i++) tok[i] = (i * 7) % 6;
    cr_tensor *idx = cr_from_array(CR_I32, CR_SHAPE(T, B), tok);
    cr_tensor *x = cr_gather_rows(m->emb, idx, 0); /* [T,B,I] */
    cr_tensor *xw = cr_matmul(x, m->w_ih);         /* [T,B,H] */
    cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(B, m->w_hh->shape[0]));
    cr_tensor *hs[5];
    for (int64_t t = 0; t < T; t++) {
        h = cr_tanh(cr_add(cr_add(cr_select(xw, 0, t), cr_matmul(h, m->w_hh)), m->b));
        hs[t] = h;
    }
    cr_tensor *all = cr_stack(5, hs, 0);
    cr_tensor *pooled = cr_mean_dim(cr_softmax(all, -1), 0, false);
    cr_tensor *logits = cr_matmul(cr_add(h, pooled), m->w_out);
    cr_rng r = cr_rng_seed(3);
    logits = cr_dropout(logits, 0.1, true, &r);
    cr_tensor *loss = cr_cross_entropy(logits, cr_from_array(CR_I32, CR_SHAPE(4), tgt), -1, CR_MEAN);
    loss = cr_add(loss, cr_mul_scalar(cr_sum(cr_square(m->w_hh)), 1e-3));
    if (big) { /* a product big enough for BLIS */
        cr_tensor *a = cr_ones(CR_F64, CR_SHAPE(40, 40));
        cr_tensor *bb =
            cr_matmul(a, cr_expand(cr_reshape(m->b, CR_SHAPE(m->b->shape[0], 1)), CR_SHAPE(40, 40)));
        loss = cr_add(loss, cr_mul_scalar(cr_mean(bb), 1e-3));
    }
    cr_backward(loss);
    return cr_item(loss);
}

static small_model make_model(int64_t H)
{
    int64_t I = 3, V = 6;
    small_model m;
    cr_tensor **ps[5] = {&m.w_ih, &m.w_hh, &m.b, &m.w_out, &m.emb};
    int64_t shapes[5][2] = {{I, H}, {H, H}, {H, 0}, {H, V}, {V, I}};
    for (int i = 0; i < 5; i++) {
        *ps[i] = cr_tensor_init(CR_F64, i == 2 ? 1 : 2, shapes[i]);
        cr_rng r = cr_rng_seed((uint64_t)i);
        cr_fill_uniform(*ps[i], &r, -0.5, 0.5);
        cr_requires_grad(*ps[i], true);
        owned[n_owned++] = *ps[i];
    }
    return m;
}

static void check_no_malloc(int64_t H, int big)
{
    small_model m = make_model(H);
    double first = train_step(&m, big); /* warm-up: chunks, tape, parameter gradients */
    cr_graph_clear(graph);
    train_step(&m, big);
    cr_graph_clear(graph);
    size_t reserved = cr_graph_bytes_reserved(graph);
    long before = atomic_load(&n_allocs);
    double again = 0;
    for (int step = 0; step < 3; step++) {
        again = train_step(&m, big);
        cr_graph_clear(graph);
    }
    long allocs = atomic_load(&n_allocs) - before;
    cr_assert_eq(allocs, 0, "%ld allocation calls in three steady-state steps", allocs);
    cr_assert_eq(cr_graph_bytes_reserved(graph), reserved);
    cr_assert_eq(again, first); /* same inputs, same dropout mask, no update: same loss */
    cr_assert_eq(cr_graph_bytes_used(graph), 0);
}

Test(graph, steady_state_makes_no_malloc_call)
{
    /* the counter works: a persistent tensor is two calls */
    long before = atomic_load(&n_allocs);
    cr_tensor *p = cr_tensor_init(CR_F32, CR_SHAPE(3));
    cr_assert_eq(atomic_load(&n_allocs) - before, 2);
    cr_tensor_free(p);
    check_no_malloc(8, 0);
}

Test(graph, steady_state_makes_no_malloc_call_with_blis) { check_no_malloc(40, 1); }

/* Scopes, recomputed segments (whose first run and rebuild give their memory
 * back mid-step) and gradients freed mid-backward recycle the same blocks
 * every step: no malloc once warm either. */
static void seg_rnn(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    const small_model *m = ctx;
    cr_tensor *h = in[0];
    for (int t = 0; t < 3; t++) {
        cr_scope s = cr_scope_begin();
        h = cr_tanh(cr_add(cr_matmul(h, m->w_hh), m->b));
        cr_scope_end(s, 1, &h);
    }
    out[0] = h;
    out[1] = cr_sum(cr_square(h));
}

static double recomputed_step(const small_model *m)
{
    cr_tensor *h = cr_ones(CR_F64, CR_SHAPE(4, m->w_hh->shape[0]));
    cr_tensor *loss = cr_scalar(CR_F64, 0), *out[2];
    for (int k = 0; k < 4; k++) {
        cr_recompute(seg_rnn, (void *)m, 1, &h, 2, out, 0, NULL);
        h = out[0];
        loss = cr_add(loss, out[1]);
    }
    cr_backward(loss);
    return cr_item(loss);
}

Test(graph, steady_state_with_scopes_and_recompute_makes_no_malloc_call)
{
    small_model m = make_model(40);
    double first = recomputed_step(&m);
    cr_graph_clear(graph);
    recomputed_step(&m);
    cr_graph_clear(graph);
    size_t reserved = cr_graph_bytes_reserved(graph);
    long before = atomic_load(&n_allocs);
    for (int step = 0; step < 3; step++) {
        cr_assert_eq(recomputed_step(&m), first);
        cr_graph_clear(graph);
    }
    long allocs = atomic_load(&n_allocs) - before;
    cr_assert_eq(allocs, 0, "%ld allocation calls in three steady-state steps", allocs);
    cr_assert_eq(cr_graph_bytes_reserved(graph), reserved);
}

Test(graph, graph_grows_then_stays)
{
    cr_tensor *w = param(CR_SHAPE(64), (double[64]){0});
    size_t used = 0;
    for (int step = 0; step < 4; step++) {
        cr_tensor *h = w;
        for (int t = 0; t < 3000; t++) h = cr_tanh(cr_add_scalar(h, 0.01)); /* several MB */
        cr_backward(cr_sum(h));
        if (step == 0) used = cr_graph_bytes_used(graph);
        cr_assert_eq(cr_graph_bytes_used(graph), used, "step %d used %zu bytes, step 0 %zu", step,
                     cr_graph_bytes_used(graph), used);
        cr_assert_geq(cr_graph_bytes_reserved(graph), used);
        cr_graph_clear(graph);
    }
}

/* ---- stale graphs and misuse ------------------------------------------------------------------ */

Test(graph, backward_through_a_cleared_graph_is_an_error)
{
    cr_tensor *w = param(CR_SHAPE(2), (double[]){1, 2});
    cr_tensor *loss = cr_sum(cr_tanh(w));
    cr_graph_clear(graph);
    EXPECT_ERROR(cr_backward(loss),
                 "cr_backward: tensor [] (made by cr_sum) belongs to a graph that was cleared");
    cr_assert_null(w->grad);
    /* and through another graph that is current */
    loss = cr_sum(cr_tanh(w));
    cr_graph *other = cr_graph_init();
    cr_graph_use(other);
    EXPECT_ERROR(cr_backward(loss), "belongs to a graph that was cleared (or is not current)");
    cr_graph_use(graph);
    cr_graph_free(other);
    cr_backward(loss);
    cr_assert_not_null(w->grad);
}

/* ---- typed op attributes --------------------------------------------------------------------- */

typedef struct {
    double scale;
} scale_attr;
static void scale_fwd(cr_node *n) { cr_k_scale(n->out, n->in[0], CR_NODE_ATTR(n, scale_attr)->scale); }
static void scale_bwd(cr_node *n) { cr_k_accumulate(cr_grad_of(n->in[0]), n->out->grad, NULL); }
static const cr_op good_scale = {"good_scale", scale_fwd, scale_bwd, 0, sizeof(scale_attr)};
static const cr_op bad_scale = {"bad_scale", scale_fwd, scale_bwd, 0, sizeof(int32_t)};

static cr_tensor *scale_op(const cr_op *op, cr_tensor *x, double s)
{
    cr_node *n = cr_node_new(op, 1, &x);
    cr_assert_not_null(n->attr);
    for (size_t i = 0; i < op->attr_size; i++) cr_assert_eq(((unsigned char *)n->attr)[i], 0); /* zeroed */
    if (op->attr_size == sizeof(scale_attr)) CR_NODE_ATTR(n, scale_attr)->scale = s;
    return cr_node_finish(n, x->dtype, x->ndim, x->shape);
}

Test(graph, op_attributes_are_typed_and_checked)
{
    cr_tensor *x = f64(CR_SHAPE(2), (double[]){1, 2});
    expect_values(scale_op(&good_scale, x, 3), (double[]){3, 6}, 2, 0);
    /* a struct of another size than the descriptor declares is refused */
    EXPECT_ERROR(scale_op(&bad_scale, x, 3),
                 "bad_scale: attributes read as 8 bytes, but the op's descriptor declares 4");
    /* an op without attributes has none */
    cr_assert_null(cr_graph_node(graph, 0) ? cr_graph_node(graph, 0)->attr : NULL);
    cr_tensor *w = param(CR_SHAPE(2), (double[]){1, 2});
    cr_add(w, w);
    cr_assert_null(cr_graph_node(graph, 0)->attr);
    cr_assert_eq(cr_graph_node(graph, 0)->op->attr_size, 0);
}

/* ---- in-place writes to what backward reads (version counters) ------------------------------ */

/* The example: a persistent state h, read by the recurrent product,
 * overwritten by the next chunk's state (what cr_state_carry does) before
 * backward. dW would silently come out of h_next. */
Test(graph, write_into_a_saved_input_before_backward_is_refused)
{
    cr_tensor *h = cr_tensor_init(CR_F64, CR_SHAPE(2, 3));
    owned[n_owned++] = h;
    cr_fill(h, 1);
    cr_tensor *w = param(CR_SHAPE(3, 3), (double[9]){0});
    cr_tensor *y = cr_sum(cr_matmul(h, w));
    cr_tensor *h_next = cr_full(CR_F64, CR_SHAPE(2, 3), 5);
    cr_copy_(h, h_next);
    EXPECT_ERROR(cr_backward(y),
                 "cr_backward: cr_matmul (tape #0) needs its input 0, f64 [2,3], but it was written "
                 "in place after the op was recorded (version 1 then, 2 now)");
    cr_assert(w->grad == NULL || cr_get_flat(w->grad, 0) == 0); /* nothing flowed */
    /* written back after backward, as a training loop should: fine, dW[0] = 2 */
    cr_graph_clear(graph);
    cr_fill(h, 1);
    y = cr_sum(cr_matmul(h, w));
    cr_backward(y);
    cr_copy_(h, cr_full(CR_F64, CR_SHAPE(2, 3), 5));
    expect_values(w->grad, (double[]){2, 2, 2, 2, 2, 2, 2, 2, 2}, 9, 0);
}

/* A weight shared by every step's product through cr_weight_t, as the
 * recurrent layers use it: the products' forward reads W' (a view of W^T,
 * through its pack), their backward reads W itself (dh = dy W, by W's pack
 * made then). W written in place in between (an optimizer step before
 * backward) would mix two weights into dh without a trace; it is refused
 * before any product's backward runs (the last product's check of W', which
 * shares W's version, comes first). H = 3 and 64: below and above the size
 * the pack is made for. */
static cr_tensor *two_steps(cr_tensor *h0, cr_tensor *w, int64_t rows)
{
    cr_tensor *wt = cr_weight_t(w, rows);
    return cr_sum(cr_tanh(cr_matmul(cr_tanh(cr_matmul(h0, wt)), wt)));
}

static void shared_weight_case(int64_t H)
{
    int64_t B = 2;
    cr_rng r = cr_rng_seed(7);
    cr_tensor *w = cr_tensor_init(CR_F64, CR_SHAPE(H, H)), *h0 = cr_tensor_init(CR_F64, CR_SHAPE(B, H));
    owned[n_owned++] = w;
    owned[n_owned++] = h0;
    cr_fill_uniform(w, &r, -0.5, 0.5);
    cr_fill_uniform(h0, &r, -1, 1);
    cr_requires_grad(w, true);
    cr_requires_grad(h0, true);
    /* the weight written after backward, as a training loop does: fine */
    cr_backward(two_steps(h0, w, 2 * B));
    cr_fill(w, 0.5);
    cr_assert_not_null(h0->grad);
    cr_graph_clear(graph);
    cr_zero_grad(h0);
    /* written between forward and backward: refused, nothing flows */
    cr_tensor *y = two_steps(h0, w, 2 * B);
    cr_fill(w, 0.25);
    EXPECT_ERROR(cr_backward(y), "cr_backward: cr_matmul (tape #3) needs its input 1");
    for (int64_t i = 0; i < B * H; i++)
        cr_assert(cr_get_flat(h0->grad, i) == 0, "H=%lld: a gradient flowed into h0", (long long)H);
    cr_graph_clear(graph);
}

Test(graph, write_into_a_shared_weight_before_backward_is_refused)
{
    shared_weight_case(3);
    shared_weight_case(64);
}

Test(graph, views_share_the_version_counter)
{
    /* a view of h is saved; a write through h is seen */
    cr_tensor *h = cr_tensor_init(CR_F64, CR_SHAPE(2, 2, 3));
    owned[n_owned++] = h;
    cr_tensor *w = param(CR_SHAPE(3, 3), (double[9]){0});
    cr_tensor *y = cr_sum(cr_matmul(cr_select(h, 0, 1), w));
    cr_set_flat(h, 0, 2); /* another row of h, same storage */
    EXPECT_ERROR(cr_backward(y), "cr_matmul (tape #0) needs its input 0, f64 [2,3]");
    /* a write through a view of a saved output is seen */
    cr_graph_clear(graph);
    cr_tensor *x = param(CR_SHAPE(2, 3), (double[6]){0.1, 0.2, 0.3, 0.4, 0.5, 0.6});
    cr_tensor *t = cr_tanh(x); /* backward reads t */
    cr_tensor *loss = cr_sum(t);
    cr_tensor row;
    cr_view_select(&row, t, 0, 1);
    cr_fill(&row, 0);
    EXPECT_ERROR(cr_backward(loss), "cr_tanh (tape #0) needs its output, f64 [2,3]");
    /* and one through cr_copy_ into a narrow view of an op output */
    cr_graph_clear(graph);
    t = cr_exp(x);
    loss = cr_sum(t);
    cr_copy_(cr_narrow(t, 1, 0, 1), cr_zeros(CR_F64, CR_SHAPE(2, 1)));
    EXPECT_ERROR(cr_backward(loss), "cr_exp (tape #0) needs its output");
}

Test(graph, inputs_backward_does_not_read_may_be_overwritten)
{
    /* add reads neither input (as in PyTorch): writing one is fine */
    cr_tensor *c = cr_tensor_init(CR_F64, CR_SHAPE(3));
    owned[n_owned++] = c;
    cr_tensor *w = param(CR_SHAPE(3), (double[]){1, 2, 3});
    cr_tensor *y = cr_sum(cr_add(w, c));
    cr_fill(c, 7);
    cr_backward(y);
    expect_values(w->grad, (double[]){1, 1, 1}, 3, 0);
    /* mul reads c for dw; w is read only for dc, which nobody needs */
    cr_zero_grad(w);
    cr_fill(c, 2);
    y = cr_sum(cr_mul(w, c));
    cr_fill(w, 9);
    cr_backward(y);
    expect_values(w->grad, (double[]){2, 2, 2}, 3, 0);
    y = cr_sum(cr_mul(w, c));
    cr_fill(c, 3);
    EXPECT_ERROR(cr_backward(y), "cr_mul (tape #4) needs its input 1, f64 [3]");
    /* a reduction reads only its input's shape */
    cr_graph_clear(graph);
    cr_tensor *x = param(CR_SHAPE(3), (double[]){1, 2, 3});
    cr_tensor *z = cr_mean(x);
    cr_fill(x, 0);
    cr_backward(z);
    expect_values(x->grad, (double[]){1.0 / 3, 1.0 / 3, 1.0 / 3}, 3, 1e-16);
}

Test(graph, data_writes_are_not_versioned_until_bumped)
{
    cr_tensor *h = cr_tensor_init(CR_F64, CR_SHAPE(3));
    owned[n_owned++] = h;
    cr_tensor *w = param(CR_SHAPE(3), (double[]){1, 2, 3});
    uint64_t v0 = cr_tensor_version(h);
    cr_tensor *y = cr_sum(cr_mul(h, w));
    ((double *)h->data)[0] = 4; /* not seen */
    cr_assert_eq(cr_tensor_version(h), v0);
    cr_backward(y);
    cr_assert_eq(cr_get_flat(w->grad, 0), 4);
    y = cr_sum(cr_mul(h, w));
    ((double *)h->data)[1] = 4;
    cr_tensor_bump_version(h); /* now it is */
    EXPECT_ERROR(cr_backward(y), "cr_mul (tape #2) needs its input 0");
}

/* ---- step tensors after a clear -------------------------------------------------------------- */

Test(graph, step_tensor_from_a_cleared_graph_is_refused_as_input)
{
    cr_tensor *w = param(CR_SHAPE(2), (double[]){1, 2});
    cr_tensor *t = cr_tanh(w), *z = cr_zeros(CR_F64, CR_SHAPE(2));
    cr_graph_clear(graph);
    EXPECT_ERROR(cr_add(t, w), "cr_add: input 0, f64 [2] (made by cr_tanh), is a step tensor from before a "
                               "cr_graph_clear or from another graph");
    EXPECT_ERROR(cr_mul(w, z), "cr_mul: input 1, f64 [2], is a step tensor from before a cr_graph_clear");
    EXPECT_ERROR(cr_sum(cr_transpose(cr_reshape(z, CR_SHAPE(1, 2)), 0, 1)), "cr_reshape: input 0, f64 [2]");
    EXPECT_ERROR(cr_detach(t), "cr_detach: tensor 0, f64 [2]");
    /* once the node's memory is handed out again (here just its first 16
     * bytes; the tensor's header, allocated after it, is still intact), the
     * maker is no longer named */
    cr_arena_alloc_aligned(cr_arena_current(), 16, 16);
    EXPECT_ERROR(cr_add(t, w), "cr_add: input 0, f64 [2] (made by an op whose record was reused since)");
    /* persistent tensors and headers outside the arena are always fine */
    cr_tensor v;
    cr_view_narrow(&v, w, 0, 1, 1);
    expect_values(cr_add(&v, w), (double[]){3, 4}, 2, 0);
}

Test(graph, step_tensor_whose_header_was_overwritten_is_named_stale)
{
    /* the cleared step's tensor header is handed out again as data: its
     * dtype and shape are garbage, and the op says what happened instead of
     * reporting them */
    cr_tensor *w = param(CR_SHAPE(2), (double[]){1, 2});
    cr_tensor *t = cr_tanh(w);
    cr_graph_clear(graph);
    size_t bytes = 4096;
    void *p = cr_arena_alloc_aligned(cr_arena_current(), bytes, 16);
    cr_assert((char *)t >= (char *)p && (char *)(t + 1) <= (char *)p + bytes,
              "the header is not reused here");
    memset(p, 0xa5, bytes);
    const char *want = "an input is a step tensor from before a cr_graph_clear, its header since overwritten";
    EXPECT_ERROR(cr_mul(t, w), want);
    EXPECT_ERROR(cr_mul(w, t), want);
    EXPECT_ERROR(cr_tanh(t), want);
    EXPECT_ERROR(cr_sum(t), want);
    /* a shape of an impossible rank is not read */
    char s[64];
    cr_assert_str_eq(cr_shape_str(s, sizeof s, -5, NULL), "[? -5 dims]");
    cr_assert_str_eq(cr_shape_str(s, sizeof s, CR_MAX_DIMS + 1, NULL), "[? 9 dims]");
}

Test(graph, step_tensor_of_another_live_graph_is_refused)
{
    cr_tensor *w = param(CR_SHAPE(2), (double[]){1, 2});
    cr_tensor *mine = cr_tanh(w);
    cr_graph *other = cr_graph_init();
    cr_graph_use(other);
    EXPECT_ERROR(cr_mul(mine, w),
                 "cr_mul: input 0, f64 [2], is a step tensor from before a cr_graph_clear or from "
                 "another graph");
    cr_tensor *theirs = cr_exp(w);
    cr_graph_use(graph);
    EXPECT_ERROR(cr_add(mine, theirs), "cr_add: input 1, f64 [2]");
    cr_graph_free(other);
    cr_backward(cr_sum(mine)); /* the current graph's own tensors still work */
    cr_assert_not_null(w->grad);
}

/* ---- anomaly detection -------------------------------------------------------------------------- */

Test(graph, anomaly_detection_names_the_op_of_a_nonfinite_gradient)
{
    /* the example: d/dx sum(2 sqrt(tanh x)) at x = 0 is inf */
    cr_tensor *x = param(CR_SHAPE(3), (double[]){0, 0.5, 1});
    cr_assert_not(cr_detect_anomaly()); /* off by default */
    cr_backward(cr_sum(cr_mul_scalar(cr_sqrt(cr_tanh(x)), 2)));
    cr_assert(isinf(cr_get_flat(x->grad, 0))); /* silently */
    cr_zero_grad(x);
    cr_graph_clear(graph);
    cr_assert_not(cr_set_detect_anomaly(true));
    cr_tensor *y = cr_sum(cr_mul_scalar(cr_sqrt(cr_tanh(x)), 2));
    EXPECT_ERROR(
        cr_backward(y),
        "cr_backward: cr_sqrt (tape #1) backward: anomaly: the gradient for input 0, f64 [3], holds inf "
        "at element 0; output [3]; input 0 [3] (made by cr_tanh, tape #0); last ops "
        "before it: #0 cr_tanh [3]");
    cr_assert(cr_set_detect_anomaly(false));
}

Test(graph, anomaly_detection_names_the_op_of_a_nonfinite_output)
{
    cr_tensor *x = param(CR_SHAPE(2, 2), (double[]){1, 2, 0, 3});
    cr_set_detect_anomaly(true);
    cr_tensor *a = cr_exp(x), *b = cr_mul(a, x);
    EXPECT_ERROR(cr_ln(cr_sub(b, cr_mul(a, x))),
                 "cr_ln (tape #4) forward: anomaly: the output, f64 [2,2], holds "
                 "-inf at element 0; output [2,2]; input 0 [2,2] (made by cr_sub, "
                 "tape #3); last ops before it: #1 cr_mul [2,2] #2 cr_mul [2,2] "
                 "#3 cr_sub [2,2]");
    /* ops that are not recorded are checked too */
    cr_tensor *c = cr_zeros(CR_F64, CR_SHAPE(2));
    EXPECT_ERROR(cr_div(c, c), "cr_div (not on the tape) forward: anomaly: the output, f64 [2], holds NaN");
    /* a finite computation passes, and backward checks every gradient */
    cr_backward(cr_sum(cr_tanh(cr_mul(a, x))));
    cr_assert_not_null(x->grad);
    cr_set_detect_anomaly(false);
    /* a NaN already in a gradient is not blamed on the next op that adds to it */
    cr_tensor *u = param(CR_SHAPE(1), (double[]){1});
    cr_backward(cr_sum(cr_mul_scalar(u, NAN)));
    cr_set_detect_anomaly(true);
    cr_backward(cr_sum(cr_mul_scalar(u, 2)));
    cr_assert(isnan(cr_item(u->grad)));
    cr_set_detect_anomaly(false);
}

Test(graph, anomaly_detection_is_per_thread)
{
    cr_set_detect_anomaly(true);
    bool seen[2] = {true, true};
    int team = 1;
#pragma omp parallel num_threads(2)
    {
        seen[omp_get_thread_num()] = cr_detect_anomaly();
        if (omp_get_thread_num() == 0) team = omp_get_num_threads();
    }
    cr_assert(seen[0]);
    if (team > 1) cr_assert_not(seen[1]);
    cr_set_detect_anomaly(false);
}

Test(graph, misuse_messages_name_op_and_shapes)
{
    cr_tensor *a = cr_zeros(CR_F32, CR_SHAPE(32, 64)), *b = cr_zeros(CR_F32, CR_SHAPE(65, 128));
    EXPECT_ERROR(cr_matmul(a, b), "cr_matmul: [32,64] x [65,128]: inner dims 64 and 65 differ");
    cr_tensor *w = param(CR_SHAPE(2, 3), (double[6]){0});
    cr_tensor *y = cr_tanh(w), *s = cr_sum(y);
    EXPECT_ERROR(cr_backward(y), "cr_backward: loss [2,3] has 6 elements");
    EXPECT_ERROR(cr_backward_with(y, cr_zeros(CR_F64, CR_SHAPE(3, 2))),
                 "cr_backward: gradient f64 [3,2] does not match output f64 [2,3]");
    EXPECT_ERROR(cr_backward_with(y, cr_zeros(CR_F32, CR_SHAPE(2, 3))),
                 "gradient f32 [2,3] does not match output f64");
    EXPECT_ERROR(cr_requires_grad(y, true), "cr_requires_grad: tensor made by cr_tanh is not a leaf");
    EXPECT_ERROR(cr_requires_grad(cr_zeros(CR_I32, CR_SHAPE(2)), true), "i32 tensors have no gradient");
    EXPECT_ERROR(cr_add(w, cr_zeros(CR_F64, CR_SHAPE(2))), "cr_add: shapes [2,3] and [2] do not broadcast");
    EXPECT_ERROR(cr_sum_dim(w, 5, false), "cr_sum_dim: dim 5 out of range for 2 dims");
    cr_graph_use(NULL);
    EXPECT_ERROR(cr_tanh(w), "cr_tanh: no current graph");
    EXPECT_ERROR(cr_backward(s), "cr_backward: no current graph");
    cr_graph_use(graph);
}

Test(graph, default_handler_aborts_on_misuse, .signal = SIGABRT)
{
    cr_matmul(cr_zeros(CR_F32, CR_SHAPE(32, 64)), cr_zeros(CR_F32, CR_SHAPE(65, 128)));
}

Test(graph, backward_with_seeds_the_output_gradient)
{
    cr_tensor *w = param(CR_SHAPE(2, 2), (double[]){1, 2, 3, 4});
    cr_tensor *y = cr_mul_scalar(cr_transpose(w, 0, 1), 2);
    cr_backward_with(y, f64(CR_SHAPE(2, 2), (double[]){1, 10, 100, 1000}));
    expect_values(w->grad, (double[]){2, 200, 20, 2000}, 4, 0);
    /* backward on a leaf just accumulates into it */
    cr_backward_with(w, f64(CR_SHAPE(2, 2), (double[]){1, 1, 1, 1}));
    expect_values(w->grad, (double[]){3, 201, 21, 2001}, 4, 0);
}

/* ---- graph inspection and export ----------------------------------------------------------------- */

Test(graph, tape_order_and_bytes)
{
    cr_tensor *w = param(CR_SHAPE(4, 2), (double[8]){0});
    w->name = "w";
    cr_assert_eq(cr_graph_bytes_used(graph), 0);
    cr_tensor *x = cr_ones(CR_F64, CR_SHAPE(3, 4));
    cr_tensor *loss = cr_mean(cr_sigmoid(cr_matmul(x, w)));
    const char *want[3] = {"cr_matmul", "cr_sigmoid", "cr_mean"};
    cr_assert_eq(cr_graph_node_count(graph), 3);
    for (size_t i = 0; i < 3; i++) {
        const cr_node *n = cr_graph_node(graph, i);
        cr_assert_str_eq(n->op->name, want[i]);
        cr_assert_eq(n->tape_index, i);
    }
    cr_assert_eq(cr_graph_node(graph, 2)->out, loss);
    cr_assert_gt(cr_graph_bytes_used(graph), 0);
    cr_assert_geq(cr_graph_bytes_reserved(graph), cr_graph_bytes_used(graph));
    cr_graph_clear(graph);
    cr_assert_eq(cr_graph_node_count(graph), 0);
    cr_assert_eq(cr_graph_bytes_used(graph), 0);
}

Test(graph, dot_export_names_ops_and_shapes)
{
    cr_tensor *w = param(CR_SHAPE(4, 2), (double[8]){0});
    w->name = "encoder.w";
    cr_tensor *x = cr_ones(CR_F64, CR_SHAPE(3, 4));
    cr_sum(cr_tanh(cr_matmul(x, w)));
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_eq(cr_graph_export_dot(graph, f), 0);
    fclose(f);
    cr_assert(strncmp(buf, "digraph", 7) == 0, "%s", buf);
    cr_assert_not_null(strstr(buf, "matmul\\n[3,2]"), "%s", buf);
    cr_assert_not_null(strstr(buf, "tanh\\n[3,2]"), "%s", buf);
    cr_assert_not_null(strstr(buf, "sum\\n[]"), "%s", buf);
    cr_assert_not_null(strstr(buf, "encoder.w\\nf64 [4,2]"), "%s", buf);
    int edges = 0;
    for (const char *p = buf; (p = strstr(p, "->")); p++) edges++;
    cr_assert_eq(edges, 3, "%s", buf); /* w -> matmul -> tanh -> sum; x needs no gradient */
    cr_assert(buf[len - 2] == '}' && buf[len - 1] == '\n');
    free(buf);
    /* a failing stream is reported */
    FILE *full = fopen("/dev/full", "w");
    if (full) {
        setvbuf(full, NULL, _IONBF, 0);
        errno = 0;
        cr_assert_eq(cr_graph_export_dot(graph, full), -1);
        cr_assert_neq(errno, 0);
        fclose(full);
    }
}

/* ---- one graph per thread -------------------------------------------------------------------------- */

Test(graph, each_thread_records_its_own_graph)
{
    cr_tensor *ws[2] = {param(CR_SHAPE(3), (double[]){1, 2, 3}), param(CR_SHAPE(3), (double[]){-1, 0.5, 2})};
    size_t nodes[2] = {0, 0};
    bool saw_main[2] = {true, true}, ok[2] = {false, false};
    int team = 0;
    cr_tensor *marker = cr_sum(ws[0]); /* one node in the main thread's graph */
    (void)marker;
#pragma omp parallel num_threads(2)
    {
        int id = omp_get_thread_num();
        if (id == 0) team = omp_get_num_threads();
        saw_main[id] = cr_graph_current() == graph;
        cr_graph *g = cr_graph_init();
        cr_graph *prev = cr_graph_use(g);
        cr_tensor *w = ws[id];
        cr_tensor *h = w;
        for (int t = 0; t <= id; t++) h = cr_tanh(cr_mul(h, w)); /* thread 1 records more */
        cr_backward(cr_sum(h));
        nodes[id] = cr_graph_node_count(g);
        ok[id] = cr_graph_current() == g;
        cr_graph_use(prev);
        cr_graph_free(g);
    }
    cr_assert(saw_main[0]);                   /* thread 0 is the main thread */
    if (team > 1) cr_assert_not(saw_main[1]); /* a worker starts with no graph */
    cr_assert(ok[0]);
    cr_assert_eq(nodes[0], 3);
    cr_assert_eq(cr_graph_current(), graph);
    cr_assert_eq(cr_graph_node_count(graph), 1);
    /* thread 0: d/dw sum tanh(w^2) = 2w (1 - tanh^2(w^2)) */
    for (int k = 0; k < 3; k++) {
        double w0 = cr_get_flat(ws[0], k), y = tanh(w0 * w0);
        cr_assert_float_eq(cr_get_flat(ws[0]->grad, k), 2 * w0 * (1 - y * y), 1e-14);
    }
    if (team > 1) {
        cr_assert(ok[1]);
        cr_assert_eq(nodes[1], 5);
        /* thread 1: h1 = tanh(w^2), h2 = tanh(h1 w) */
        for (int k = 0; k < 3; k++) {
            double w1 = cr_get_flat(ws[1], k), h1 = tanh(w1 * w1), h2 = tanh(h1 * w1);
            double dh2 = 1 - h2 * h2;
            double dw = dh2 * (h1 + w1 * (1 - h1 * h1) * 2 * w1);
            cr_assert_float_eq(cr_get_flat(ws[1]->grad, k), dw, 1e-14);
        }
    }
}
