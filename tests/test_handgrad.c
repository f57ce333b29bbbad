/*
 * Autograd against hand-derived BPTT (nn/bptt.c) and both against central
 * finite differences, in float64, for every built-in cell, compared with
 * cr_grad_compare; plus the comparison function's own contract.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel/nn.h"

/* A one-layer unidirectional sequence layer (autograd) with the same
 * parameters viewed as hand-BPTT weights, inputs that require gradients, and
 * the fixed random weights R1, R2, R3 of the loss
 *   L = sum(y R1) + sum(h_n R2) [+ sum(c_n R3)]. */
typedef struct rig {
    const cr_cell_type *type;
    int64_t B, T, I, H;
    cr_params *ps;
    cr_rnn *m;
    cr_bptt_weights p;      /* the cell's tensors, shared by both methods */
    cr_tensor *x, *h0, *c0; /* (B, T, I), (B, H), (B, H) LSTM only; require grad */
    cr_tensor *r1, *r2, *r3;
    cr_graph *g;
} rig;

/* Up to 7 parameters, then x, h0, c0. */
#define MAX_TENSORS 10

/* Every built-in cell, each with its hand BPTT. */
static const cr_cell_type *const all_types[] = {&cr_cell_rnn_tanh, &cr_cell_rnn_relu,
                                                &cr_cell_gru,      &cr_cell_gru_original,
                                                &cr_cell_lstm,     &cr_cell_lstm_peephole};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

/* A type's position in all_types: the seeds of the old enum order. */
static uint64_t seed_of(const cr_cell_type *type)
{
    for (size_t k = 0; k < N_TYPES; k++)
        if (all_types[k] == type) return k;
    cr_assert_fail("%s is not a built-in cell", type->name);
    return 0;
}

static cr_tensor *random_leaf(cr_rng *rng, double bound, int ndim, const int64_t *shape)
{
    cr_tensor *t = cr_tensor_init(CR_F64, ndim, shape);
    cr_fill_uniform(t, rng, -bound, bound);
    return t;
}

static rig rig_make(const cr_cell_type *type, int64_t B, int64_t T, int64_t I, int64_t H, bool bias,
                    uint64_t seed)
{
    rig R = {.type = type, .B = B, .T = T, .I = I, .H = H};
    cr_rng rng = cr_rng_seed(seed);
    R.ps = cr_params_init();
    cr_rnn_config cfg = {
        .cell = type, .input_size = I, .hidden_size = H, .num_layers = 1, .no_bias = !bias, .dtype = CR_F64};
    R.m = cr_rnn_init(R.ps, "rnn", cfg, &rng);
    cr_assert_eq(R.m->cells[0].type, type);
    R.p = cr_bptt_weights_of(&R.m->cells[0]);
    /* Wider than PyTorch's U(+-1/sqrt(H)), so the gates leave their linear range. */
    for (size_t k = 0; k < R.ps->n; k++) cr_fill_uniform(R.ps->items[k].value, &rng, -0.6, 0.6);
    R.x = random_leaf(&rng, 1, CR_SHAPE(B, T, I));
    R.h0 = random_leaf(&rng, 0.5, CR_SHAPE(B, H));
    R.r1 = random_leaf(&rng, 1, CR_SHAPE(B, T, H));
    R.r2 = random_leaf(&rng, 1, CR_SHAPE(B, H));
    cr_requires_grad(R.x, true);
    cr_requires_grad(R.h0, true);
    if (type->n_states == 2) {
        R.c0 = random_leaf(&rng, 0.5, CR_SHAPE(B, H));
        R.r3 = random_leaf(&rng, 1, CR_SHAPE(B, H));
        cr_requires_grad(R.c0, true);
    }
    R.g = cr_graph_init();
    cr_graph_use(R.g);
    return R;
}

static void rig_free(rig *R)
{
    cr_graph_use(NULL);
    cr_graph_free(R->g);
    cr_rnn_free(R->m);
    cr_params_free(R->ps);
    cr_tensor *ts[] = {R->x, R->h0, R->c0, R->r1, R->r2, R->r3};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) cr_tensor_free(ts[k]);
}

/* The autograd forward and its loss (in the rig's graph). The states are
 * [1, B, H] in the sequence layer, (B, H) here: R2, R3 broadcast. */
static cr_tensor *autograd_loss(rig *R, cr_rnn_output *o)
{
    const int64_t B = R->B, H = R->H;
    cr_tensor *h0 = cr_reshape(R->h0, CR_SHAPE(1, B, H));
    cr_tensor *c0 = R->c0 ? cr_reshape(R->c0, CR_SHAPE(1, B, H)) : NULL;
    *o = cr_rnn_forward(R->m, R->x, NULL, h0, c0);
    cr_tensor *loss = cr_add(cr_sum(cr_mul(o->y, R->r1)), cr_sum(cr_mul(o->h_n, R->r2)));
    if (o->c_n) loss = cr_add(loss, cr_sum(cr_mul(o->c_n, R->r3)));
    return loss;
}

/* Gradient sets, in the order of `names`: the parameters of ps, then x, h0, c0. */
typedef struct grads {
    size_t n;
    const char *names[MAX_TENSORS];
    cr_tensor *t[MAX_TENSORS];
} grads;

static size_t n_tensors(const rig *R) { return R->ps->n + (R->c0 ? 3 : 2); }

static void names_of(const rig *R, grads *G)
{
    G->n = n_tensors(R);
    cr_assert_leq(G->n, MAX_TENSORS);
    for (size_t k = 0; k < R->ps->n; k++) G->names[k] = R->ps->items[k].name;
    G->names[R->ps->n] = "x";
    G->names[R->ps->n + 1] = "h0";
    if (R->c0) G->names[R->ps->n + 2] = "c0";
}

static cr_tensor *like(const cr_tensor *t) { return cr_tensor_init(t->dtype, t->ndim, t->shape); }

/* The leaves, in gradient order. */
static cr_tensor *leaf(const rig *R, size_t k)
{
    if (k < R->ps->n) return R->ps->items[k].value;
    cr_tensor *rest[] = {R->x, R->h0, R->c0};
    return rest[k - R->ps->n];
}

/* Autograd gradients (copied out of the leaves' grad buffers) and, when
 * outs is non-NULL, the forward outputs y, h_n, c_n as (B, T, H), (B, H). */
static grads autograd_grads(rig *R, cr_tensor **outs)
{
    grads G;
    names_of(R, &G);
    for (size_t k = 0; k < G.n; k++)
        if (leaf(R, k)->grad) cr_zero_grad(leaf(R, k));
    cr_rnn_output o;
    cr_backward(autograd_loss(R, &o));
    for (size_t k = 0; k < G.n; k++) {
        G.t[k] = like(leaf(R, k));
        cr_assert_not_null(leaf(R, k)->grad, "no gradient reached %s", G.names[k]);
        cr_copy_(G.t[k], leaf(R, k)->grad);
    }
    if (outs) {
        cr_tensor *src[] = {o.y, o.h_n, o.c_n};
        const int64_t state[] = {R->B, R->H};
        for (int k = 0; k < 3; k++) {
            outs[k] = NULL;
            if (!src[k]) continue;
            cr_tensor *s = k ? cr_reshape(src[k], 2, state) : src[k];
            outs[k] = like(s);
            cr_copy_(outs[k], s);
        }
    }
    cr_graph_clear(R->g);
    return G;
}

/* Hand-derived gradients of the same loss, and its outputs. */
static grads hand_grads(rig *R, cr_tensor **outs)
{
    grads G;
    names_of(R, &G);
    cr_bptt *w = cr_bptt_init(R->type, CR_F64, R->B, R->T, R->I, R->H);
    cr_bptt_weights g = {0};
    cr_tensor **gf[] = {&g.w_ih, &g.w_hh, &g.b_ih, &g.b_hh, &g.w_ci, &g.w_cf, &g.w_co};
    cr_tensor *const pf[] = {R->p.w_ih, R->p.w_hh, R->p.b_ih, R->p.b_hh, R->p.w_ci, R->p.w_cf, R->p.w_co};
    for (int s = 0; s < 7; s++) *gf[s] = pf[s] ? like(pf[s]) : NULL;
    cr_tensor *y = cr_tensor_init(CR_F64, CR_SHAPE(R->B, R->T, R->H));
    cr_tensor *hn = like(R->h0), *cn = R->c0 ? like(R->c0) : NULL;
    cr_tensor *dx = like(R->x), *dh0 = like(R->h0), *dc0 = R->c0 ? like(R->c0) : NULL;
    cr_bptt_forward(w, &R->p, R->x, R->h0, R->c0, y, hn, cn);
    cr_bptt_backward(w, &R->p, R->r1, R->r2, R->r3, &g, dx, dh0, dc0);
    /* Gradients in parameter-set order: find each parameter's slot. */
    for (size_t k = 0; k < R->ps->n; k++) {
        G.t[k] = NULL;
        for (int s = 0; s < 7; s++)
            if (pf[s] == R->ps->items[k].value) G.t[k] = *gf[s];
        cr_assert_not_null(G.t[k], "%s is not a weight of the cell", G.names[k]);
    }
    G.t[R->ps->n] = dx;
    G.t[R->ps->n + 1] = dh0;
    if (dc0) G.t[R->ps->n + 2] = dc0;
    if (outs) {
        outs[0] = y;
        outs[1] = hn;
        outs[2] = cn;
    } else {
        cr_tensor_free(y);
        cr_tensor_free(hn);
        cr_tensor_free(cn);
    }
    cr_bptt_free(w);
    return G;
}

static double loss_value(rig *R)
{
    cr_rnn_output o;
    bool was = cr_set_grad_enabled(false);
    double v = cr_item(autograd_loss(R, &o));
    cr_set_grad_enabled(was);
    cr_graph_clear(R->g);
    return v;
}

/* Central differences of the autograd forward (no-grad) in every element of
 * every leaf. */
static grads numeric_grads(rig *R)
{
    const double eps = 1e-5;
    grads G;
    names_of(R, &G);
    for (size_t k = 0; k < G.n; k++) {
        cr_tensor *t = leaf(R, k);
        double *v = t->data;
        G.t[k] = like(t);
        for (int64_t i = 0; i < cr_numel(t); i++) {
            const double keep = v[i];
            v[i] = keep + eps;
            const double lp = loss_value(R);
            v[i] = keep - eps;
            const double lm = loss_value(R);
            v[i] = keep;
            ((double *)G.t[k]->data)[i] = (lp - lm) / (2 * eps);
        }
    }
    return G;
}

static void grads_free(grads *G)
{
    for (size_t k = 0; k < G->n; k++) cr_tensor_free(G->t[k]);
}

/* Compare set A (column heading la) with set B (lb); on failure print the
 * whole table before the failed expectations. */
static void expect_close(const grads *A, const char *la, const grads *B, const char *lb, double tiny,
                         double tol, const cr_cell_type *type)
{
    cr_grad_diff d[MAX_TENSORS];
    const double worst = cr_grad_compare(A->names, (const cr_tensor *const *)A->t,
                                         (const cr_tensor *const *)B->t, A->n, tiny, d);
    if (!(worst <= tol)) {
        fprintf(stderr, "%s, %s vs %s:\n", type->name, la, lb);
        cr_grad_diff_print(stderr, d, A->n, la, lb);
    }
    for (size_t k = 0; k < A->n; k++)
        cr_expect(d[k].max_rel <= tol, "%s, %s vs %s, %s: max rel error %.3g at %lld (%.17g, %.17g)",
                  type->name, la, lb, d[k].name, d[k].max_rel, (long long)d[k].worst_index, d[k].a, d[k].b);
}

/* ---- autograd against hand-derived BPTT, 50 steps ------------------------------ */

/* The floor of the relative error's denominator. Gradients here are
 * O(0.01..1); an element that is small by cancellation carries the rounding
 * of its O(1) terms (1e-16..1e-15 absolute), which in a pure relative error
 * (tiny = 0) reached 2.7e-12 in a seed sweep (a GRU bias gradient of -8.8e-4).
 * Below the floor the bound is 1e-14 absolute; the worst seen over 150 seeds
 * was 2.8e-13. */
#define TINY 1e-2

static void agree(const cr_cell_type *type, bool bias, int64_t T)
{
    rig R = rig_make(type, 3, T, 4, 6, bias, 100 + seed_of(type));
    cr_tensor *oa[3], *oh[3];
    grads A = autograd_grads(&R, oa);
    grads H = hand_grads(&R, oh);
    /* The forwards first (y, h_n, c_n), with the same floor. */
    grads O = {.n = R.c0 ? 3 : 2, .names = {"y", "h_n", "c_n"}};
    grads P = O;
    memcpy(O.t, oa, sizeof oa);
    memcpy(P.t, oh, sizeof oh);
    expect_close(&O, "autograd", &P, "hand", TINY, 1e-12, type);
    /* Then every parameter and dx, dh0, dc0. */
    expect_close(&A, "autograd", &H, "hand", TINY, 1e-12, type);
    grads_free(&O);
    grads_free(&P);
    grads_free(&A);
    grads_free(&H);
    rig_free(&R);
}

Test(handgrad, rnn_tanh_50_steps) { agree(&cr_cell_rnn_tanh, true, 50); }
Test(handgrad, rnn_relu_50_steps) { agree(&cr_cell_rnn_relu, true, 50); }
Test(handgrad, gru_50_steps) { agree(&cr_cell_gru, true, 50); }
Test(handgrad, gru_original_50_steps) { agree(&cr_cell_gru_original, true, 50); }
Test(handgrad, lstm_50_steps) { agree(&cr_cell_lstm, true, 50); }
Test(handgrad, lstm_peephole_50_steps) { agree(&cr_cell_lstm_peephole, true, 50); }

Test(handgrad, without_biases)
{
    for (size_t k = 0; k < N_TYPES; k++) agree(all_types[k], false, 12);
}

/* ---- both against finite differences, small case --------------------------------- */

Test(handgrad, finite_differences)
{
    for (size_t k = 0; k < N_TYPES; k++) {
        rig R = rig_make(all_types[k], 2, 5, 3, 4, true, 7 + k);
        grads A = autograd_grads(&R, NULL);
        grads H = hand_grads(&R, NULL);
        grads N = numeric_grads(&R);
        /* Central differences with eps 1e-5 are good to ~1e-10 absolute
         * (truncation eps^2 L'''/6, rounding of the loss / 2 eps; worst seen
         * 5e-9 relative above the floor), so 1e-7 leaves a wide margin. */
        expect_close(&A, "autograd", &N, "finite-diff", TINY, 1e-7, all_types[k]);
        expect_close(&H, "hand", &N, "finite-diff", TINY, 1e-7, all_types[k]);
        grads_free(&A);
        grads_free(&H);
        grads_free(&N);
        rig_free(&R);
    }
}

/* The parameter-set form reads the gradients autograd left in ps. */
Test(handgrad, compare_params_reads_autograd_grads)
{
    rig R = rig_make(&cr_cell_lstm_peephole, 2, 6, 3, 4, true, 3);
    grads H = hand_grads(&R, NULL);
    cr_rnn_output o;
    cr_backward(autograd_loss(&R, &o));
    cr_grad_diff d[MAX_TENSORS];
    const double worst = cr_grad_compare_params(R.ps, (const cr_tensor *const *)H.t, 0, d);
    cr_assert_leq(worst, 1e-12);
    for (size_t k = 0; k < R.ps->n; k++) {
        cr_assert_str_eq(d[k].name, R.ps->items[k].name);
        cr_assert_eq(d[k].numel, cr_numel(R.ps->items[k].value));
    }
    grads_free(&H);
    rig_free(&R);
}

/* ---- cr_grad_compare itself ------------------------------------------------------ */

static cr_tensor *from(cr_dtype dt, int64_t r, int64_t c, const double *v)
{
    cr_tensor *t = cr_tensor_init(dt, CR_SHAPE(r, c));
    for (int64_t i = 0; i < r * c; i++) cr_set_flat(t, i, v[i]);
    return t;
}

Test(gradcompare, known_errors)
{
    cr_tensor *a = from(CR_F64, 2, 3, (const double[]){1, 2, 0, -4, 0, 1e-20});
    cr_tensor *b = from(CR_F64, 2, 3, (const double[]){1, 2.5, 0, -4.4, 0, 0});
    const char *names[] = {"w"};
    cr_grad_diff d;
    /* Pure relative: 1e-20 against 0 is a relative error of 1. */
    double worst =
        cr_grad_compare(names, (const cr_tensor *const[]){a}, (const cr_tensor *const[]){b}, 1, 0, &d);
    cr_assert_float_eq(worst, 1.0, 1e-15);
    cr_assert_eq(d.worst_index, 5);
    cr_assert_float_eq(d.max_abs, 0.5, 1e-15);
    cr_assert_str_eq(d.name, "w");
    cr_assert_eq(d.numel, 6);
    /* Floor 1e-3: that element is now absolute (1e-17); the worst is |2 - 2.5| / 2.5. */
    worst = cr_grad_compare(names, (const cr_tensor *const[]){a}, (const cr_tensor *const[]){b}, 1, 1e-3, &d);
    cr_assert_float_eq(worst, 0.2, 1e-15);
    cr_assert_eq(d.worst_index, 1);
    cr_assert_float_eq(d.a, 2, 0);
    cr_assert_float_eq(d.b, 2.5, 0);
    cr_tensor_free(a);
    cr_tensor_free(b);
}

Test(gradcompare, dtypes_strides_and_null)
{
    cr_tensor *a = from(CR_F32, 2, 2, (const double[]){1, 2, 3, 4});
    cr_tensor *b64 = from(CR_F64, 2, 2, (const double[]){1, 3, 2, 4});
    /* b64 transposed (a strided view) equals a exactly. */
    cr_tensor bt = {0};
    cr_view_transpose(&bt, b64, 0, 1);
    const char *names[] = {"p", "q"};
    cr_grad_diff d[2];
    double worst = cr_grad_compare(names, (const cr_tensor *const[]){a, NULL},
                                   (const cr_tensor *const[]){&bt, a}, 2, 0, d);
    /* NULL is zeros: q compares 0 with a, a relative error of 1 everywhere. */
    cr_assert_float_eq(d[0].max_rel, 0, 0);
    cr_assert_float_eq(d[1].max_rel, 1, 0);
    cr_assert_float_eq(d[1].max_abs, 4, 0);
    cr_assert_float_eq(worst, 1, 0);
    cr_assert_eq(cr_grad_compare(NULL, NULL, NULL, 0, 0, NULL), 0);
    cr_tensor_free(a);
    cr_tensor_free(b64);
}

Test(gradcompare, nan_is_worst)
{
    cr_tensor *a = from(CR_F64, 1, 3, (const double[]){1, NAN, 5});
    cr_tensor *b = from(CR_F64, 1, 3, (const double[]){2, 1, 5});
    cr_grad_diff d;
    double worst = cr_grad_compare((const char *const[]){"n"}, (const cr_tensor *const[]){a},
                                   (const cr_tensor *const[]){b}, 1, 0, &d);
    cr_assert(isnan(worst));
    cr_assert(isnan(d.max_abs));
    cr_assert_eq(d.worst_index, 1);
    cr_tensor_free(a);
    cr_tensor_free(b);
}

Test(gradcompare, table)
{
    cr_tensor *a = from(CR_F64, 2, 3, (const double[]){1, 2, 3, 4, 5, 6});
    cr_tensor *b = from(CR_F64, 2, 3, (const double[]){1, 2, 3, 4, 5.5, 6});
    cr_grad_diff d;
    cr_grad_compare((const char *const[]){"enc.l0.w_hh"}, (const cr_tensor *const[]){a},
                    (const cr_tensor *const[]){b}, 1, 0, &d);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_grad_diff_print(f, &d, 1, "autograd", "hand");
    fclose(f);
    cr_assert(strstr(buf, "autograd") && strstr(buf, "hand"), "%s", buf);
    cr_assert(strstr(buf, "enc.l0.w_hh"), "%s", buf);
    cr_assert(strstr(buf, "[1,1]"), "%s", buf);     /* the worst element, as a multi-index */
    cr_assert(strstr(buf, "9.091e-02"), "%s", buf); /* 0.5 / 5.5 */
    free(buf);
    cr_tensor_free(a);
    cr_tensor_free(b);
}

Test(gradcompare, shape_mismatch_aborts, .signal = SIGABRT)
{
    cr_tensor *a = cr_tensor_init(CR_F64, CR_SHAPE(2, 3));
    cr_tensor *b = cr_tensor_init(CR_F64, CR_SHAPE(3, 2));
    cr_grad_diff d;
    cr_grad_compare((const char *const[]){"w"}, (const cr_tensor *const[]){a}, (const cr_tensor *const[]){b},
                    1, 0, &d);
}

Test(gradcompare, integer_tensor_aborts, .signal = SIGABRT)
{
    cr_tensor *a = cr_tensor_init(CR_I32, CR_SHAPE(2));
    cr_grad_diff d;
    cr_grad_compare((const char *const[]){"idx"}, (const cr_tensor *const[]){a},
                    (const cr_tensor *const[]){a}, 1, 0, &d);
}
