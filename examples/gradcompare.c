/*
 * examples/gradcompare: autograd, hand-derived BPTT and finite differences side
 * by side for every classic cell, in f64 and f32: per parameter, the worst
 * relative error between the methods, and the time of one forward + backward.
 *
 *   ./build/examples/gradcompare [--steps T] [--hidden H] [--batch B] [--input I]
 *                                [--floor F] [--threads N] [--seed S] [--quick]
 *
 * Last line: example=gradcompare f64_hand=... f64_fd=... f32_hand=... f32_fd=...
 * (the worst relative errors over every cell and tensor). With --quick (run
 * by meson test, small sizes) it exits 1 when one of them exceeds its bound.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "carousel.h"
#include "cli.h"

typedef struct opts {
    int64_t T, H, B, I, threads, seed;
    double floor; /* tiny of cr_grad_compare */
    bool quick;
} opts;

static opts parse(int argc, char **argv)
{
    opts o = {.T = 50,
              .H = 64,
              .B = 16,
              .I = 32,
              .threads = 1,
              .seed = 1,
              .floor = 1e-2,
              .quick = cli_has(argc, argv, "--quick")};
    if (o.quick) o.T = 10, o.H = 16, o.B = 4, o.I = 8;
    cli_flag flags[] = {
        {"--steps", CLI_INT, &o.T, "time steps T"},
        {"--hidden", CLI_INT, &o.H, "hidden units H"},
        {"--batch", CLI_INT, &o.B, "batch B"},
        {"--input", CLI_INT, &o.I, "input features I"},
        {"--floor", CLI_REAL, &o.floor, "denominator floor of the relative error"},
        {"--threads", CLI_INT, &o.threads, "threads (sizes this small gain nothing from more)"},
        {"--seed", CLI_INT, &o.seed, "seed of weights and data"},
        {"--quick", CLI_BOOL, &o.quick,
         "small sizes (--steps 10 --hidden 16 --batch 4 --input 8); exit 1 if an error exceeds its bound"},
    };
    cli_parse(
        argc, argv,
        "Autograd, hand-derived BPTT and finite differences side by side for every built-in cell, in f64\n"
        "and f32: the worst relative error per parameter, and the time of one forward + backward.",
        NULL, flags, CLI_COUNT(flags));
    if (o.T < 1 || o.H < 1 || o.B < 1 || o.I < 1 || o.threads < 1 || !(o.floor > 0))
        cli_fail(argv[0], "an option out of range");
    return o;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ---- one layer, two ways ------------------------------------------------------ */

#define MAX_TENSORS 10 /* up to 7 parameters, then x, h0, c0 */

/* A one-layer sequence layer, its weights seen by the hand BPTT, inputs that
 * require gradients and the loss L = sum(y R1) + sum(h_n R2) [+ sum(c_n R3)]. */
typedef struct rig {
    const cr_cell_type *type;
    cr_dtype dt;
    int64_t B, T, I, H;
    cr_params *ps;
    cr_rnn *m;
    cr_bptt_weights p;
    cr_tensor *x, *h0, *c0, *r1, *r2, *r3;
    size_t n; /* tensors with a gradient: parameters, x, h0 (, c0) */
    const char *names[MAX_TENSORS];
    cr_tensor *leaves[MAX_TENSORS];
    cr_graph *g;
    cr_bptt *w;
} rig;

/* U(-bound, bound) drawn in f64 and rounded to t's dtype, so an f32 rig holds
 * the f32 roundings of the f64 rig's numbers. */
static void fill(cr_tensor *t, cr_rng *rng, double bound)
{
    cr_tensor *tmp = cr_tensor_init(CR_F64, t->ndim, t->shape);
    cr_fill_uniform(tmp, rng, -bound, bound);
    cr_copy_(t, tmp);
    cr_tensor_free(tmp);
}

static cr_tensor *input(cr_dtype dt, cr_rng *rng, double bound, int ndim, const int64_t *shape)
{
    cr_tensor *t = cr_tensor_init(dt, ndim, shape);
    fill(t, rng, bound);
    return t;
}

static rig rig_make(const cr_cell_type *type, cr_dtype dt, int64_t B, int64_t T, int64_t I, int64_t H,
                    uint64_t seed)
{
    rig R = {.type = type, .dt = dt, .B = B, .T = T, .I = I, .H = H};
    cr_rng rng = cr_rng_seed(seed);
    R.ps = cr_params_init();
    cr_rnn_config cfg = {.cell = type, .input_size = I, .hidden_size = H, .num_layers = 1, .dtype = dt};
    R.m = cr_rnn_init(R.ps, "rnn", cfg, &rng);
    R.p = cr_bptt_weights_of(&R.m->cells[0]);
    for (size_t k = 0; k < R.ps->n; k++) fill(R.ps->items[k].value, &rng, 1 / sqrt((double)H));
    R.x = input(dt, &rng, 1, CR_SHAPE(B, T, I));
    R.h0 = input(dt, &rng, 0.5, CR_SHAPE(B, H));
    R.r1 = input(dt, &rng, 1, CR_SHAPE(B, T, H));
    R.r2 = input(dt, &rng, 1, CR_SHAPE(B, H));
    if (type->n_states == 2) {
        R.c0 = input(dt, &rng, 0.5, CR_SHAPE(B, H));
        R.r3 = input(dt, &rng, 1, CR_SHAPE(B, H));
    }
    for (size_t k = 0; k < R.ps->n; k++) {
        R.names[k] = strrchr(R.ps->items[k].name, '.') + 1; /* "rnn.l0.w_ih" -> "w_ih" */
        R.leaves[k] = R.ps->items[k].value;
    }
    R.n = R.ps->n;
    cr_tensor *rest[] = {R.x, R.h0, R.c0};
    const char *rest_names[] = {"x", "h0", "c0"};
    for (int k = 0; k < (R.c0 ? 3 : 2); k++) {
        cr_requires_grad(rest[k], true);
        R.names[R.n] = rest_names[k];
        R.leaves[R.n++] = rest[k];
    }
    R.g = cr_graph_init();
    R.w = cr_bptt_init(type, dt, B, T, I, H);
    return R;
}

static void rig_free(rig *R)
{
    cr_graph_free(R->g);
    cr_bptt_free(R->w);
    cr_rnn_free(R->m);
    cr_params_free(R->ps);
    cr_tensor *ts[] = {R->x, R->h0, R->c0, R->r1, R->r2, R->r3};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) cr_tensor_free(ts[k]);
}

static cr_tensor *autograd_loss(rig *R)
{
    cr_tensor *h0 = cr_reshape(R->h0, CR_SHAPE(1, R->B, R->H));
    cr_tensor *c0 = R->c0 ? cr_reshape(R->c0, CR_SHAPE(1, R->B, R->H)) : NULL;
    cr_rnn_output o = cr_rnn_forward(R->m, R->x, NULL, h0, c0);
    cr_tensor *loss = cr_add(cr_sum(cr_mul(o.y, R->r1)), cr_sum(cr_mul(o.h_n, R->r2)));
    return o.c_n ? cr_add(loss, cr_sum(cr_mul(o.c_n, R->r3))) : loss;
}

/* One forward + backward by autograd; the gradients accumulate in the leaves. */
static void autograd_step(rig *R)
{
    cr_graph *prev = cr_graph_use(R->g);
    cr_backward(autograd_loss(R));
    cr_graph_clear(R->g);
    cr_graph_use(prev);
}

/* One forward + backward by hand, accumulating into g (dx, dh0, dc0 written). */
static void hand_step(rig *R, cr_bptt_weights *g, cr_tensor *const *d)
{
    cr_bptt_forward(R->w, &R->p, R->x, R->h0, R->c0, NULL, NULL, NULL);
    cr_bptt_backward(R->w, &R->p, R->r1, R->r2, R->r3, g, d[0], d[1], d[2]);
}

static cr_tensor *like(const cr_tensor *t, cr_dtype dt) { return cr_tensor_init(dt, t->ndim, t->shape); }

/* Autograd's gradients, copied out of the leaves (zeroed first). */
static void autograd_grads(rig *R, cr_tensor **out)
{
    for (size_t k = 0; k < R->n; k++)
        if (R->leaves[k]->grad) cr_zero_grad(R->leaves[k]);
    autograd_step(R);
    for (size_t k = 0; k < R->n; k++) {
        out[k] = like(R->leaves[k], R->dt);
        cr_copy_(out[k], R->leaves[k]->grad);
    }
}

/* The hand BPTT's fields that hold parameter k of ps. */
static cr_tensor **slot_of(cr_bptt_weights *w, const cr_bptt_weights *p, const cr_tensor *t)
{
    cr_tensor **g[] = {&w->w_ih, &w->w_hh, &w->b_ih, &w->b_hh, &w->w_ci, &w->w_cf, &w->w_co};
    const cr_tensor *v[] = {p->w_ih, p->w_hh, p->b_ih, p->b_hh, p->w_ci, p->w_cf, p->w_co};
    for (int s = 0; s < 7; s++)
        if (v[s] == t) return g[s];
    cr_error("gradcompare: a parameter the cell does not have");
}

/* The hand BPTT's gradients in the same order, and the cr_bptt_weights
 * pointing at them (for timing). */
static void hand_grads(rig *R, cr_tensor **out, cr_bptt_weights *g)
{
    *g = (cr_bptt_weights){0};
    for (size_t k = 0; k < R->n; k++) {
        out[k] = like(R->leaves[k], R->dt);
        if (k < R->ps->n) *slot_of(g, &R->p, R->leaves[k]) = out[k];
    }
    cr_tensor *d[3] = {out[R->ps->n], out[R->ps->n + 1], R->c0 ? out[R->ps->n + 2] : NULL};
    hand_step(R, g, d);
}

static double loss_value(rig *R)
{
    cr_graph *prev = cr_graph_use(R->g);
    bool was = cr_set_grad_enabled(false);
    double v = cr_item(autograd_loss(R));
    cr_set_grad_enabled(was);
    cr_graph_clear(R->g);
    cr_graph_use(prev);
    return v;
}

/* Central differences of the (f64) autograd forward in every element of
 * every leaf. */
static void numeric_grads(rig *R, cr_tensor **out)
{
    const double eps = 1e-5;
    for (size_t k = 0; k < R->n; k++) {
        cr_tensor *t = R->leaves[k];
        double *v = t->data;
        out[k] = like(t, CR_F64);
        for (int64_t i = 0; i < cr_numel(t); i++) {
            const double keep = v[i];
            v[i] = keep + eps;
            const double lp = loss_value(R);
            v[i] = keep - eps;
            const double lm = loss_value(R);
            v[i] = keep;
            ((double *)out[k]->data)[i] = (lp - lm) / (2 * eps);
        }
    }
}

static void free_all(cr_tensor **ts, size_t n)
{
    for (size_t k = 0; k < n; k++) cr_tensor_free(ts[k]);
}

/* ---- timing --------------------------------------------------------------------- */

typedef struct timed {
    rig *R;
    cr_bptt_weights g;
    cr_tensor *d[3];
} timed;

static void run_autograd(timed *c) { autograd_step(c->R); }

static void run_hand(timed *c) { hand_step(c->R, &c->g, c->d); }

/* The fastest of at least 3 runs and about 60 ms, after one warm-up run. */
static double best_ms(void (*fn)(timed *), timed *c)
{
    fn(c);
    double best = INFINITY, start = now_ms();
    for (int k = 0; k < 3 || now_ms() - start < 60; k++) {
        const double t0 = now_ms();
        fn(c);
        best = fmin(best, now_ms() - t0);
    }
    return best;
}

/* ---- the table ------------------------------------------------------------------- */

/* Prints the cell's rows; worst[0], worst[1] get the largest autograd-vs-hand
 * and autograd-vs-differences errors (kept if larger than before). */
static void compare_cell(const opts *o, const cr_cell_type *type, size_t index, cr_dtype dt, double *worst)
{
    const uint64_t seed = (uint64_t)o->seed * 1000 + (uint64_t)index;
    /* Autograd against hand, at the requested size. */
    rig R = rig_make(type, dt, o->B, o->T, o->I, o->H, seed);
    cr_tensor *ga[MAX_TENSORS], *gh[MAX_TENSORS];
    cr_bptt_weights g;
    autograd_grads(&R, ga);
    hand_grads(&R, gh, &g);
    cr_grad_diff dh[MAX_TENSORS];
    cr_grad_compare(R.names, (const cr_tensor *const *)ga, (const cr_tensor *const *)gh, R.n, o->floor, dh);
    timed c = {.R = &R, .g = g, .d = {gh[R.ps->n], gh[R.ps->n + 1], R.c0 ? gh[R.ps->n + 2] : NULL}};
    const double ms_auto = best_ms(run_autograd, &c), ms_hand = best_ms(run_hand, &c);

    /* Autograd against finite differences on a small case. Differences are
     * taken in f64 (in f32 they would carry ~1e-3 error): the f32 rows compare
     * the f32 gradient with the f64 differences of the same numbers. */
    rig S = rig_make(type, dt, 2, 6, 3, 4, seed);
    rig S64 = rig_make(type, CR_F64, 2, 6, 3, 4, seed);
    for (size_t k = 0; k < S.n; k++) cr_copy_(S64.leaves[k], S.leaves[k]);
    cr_copy_(S64.r1, S.r1);
    cr_copy_(S64.r2, S.r2);
    if (S.r3) cr_copy_(S64.r3, S.r3);
    cr_tensor *gs[MAX_TENSORS], *gn[MAX_TENSORS];
    autograd_grads(&S, gs);
    const double t0 = now_ms();
    numeric_grads(&S64, gn);
    const double ms_fd = now_ms() - t0;
    cr_grad_diff dn[MAX_TENSORS];
    cr_grad_compare(S.names, (const cr_tensor *const *)gs, (const cr_tensor *const *)gn, S.n, o->floor, dn);

    for (size_t k = 0; k < R.n; k++) {
        if (k == 0)
            printf("%-4s %-14s %-5s %12.2e %12.2e %11.3f %9.3f %9.1f\n", cr_dtype_name(dt), type->name,
                   R.names[k], dh[k].max_rel, dn[k].max_rel, ms_auto, ms_hand, ms_fd);
        else
            printf("%-4s %-14s %-5s %12.2e %12.2e\n", "", "", R.names[k], dh[k].max_rel, dn[k].max_rel);
        worst[0] = fmax(worst[0], dh[k].max_rel);
        worst[1] = fmax(worst[1], dn[k].max_rel);
    }
    free_all(ga, R.n);
    free_all(gh, R.n);
    free_all(gs, S.n);
    free_all(gn, S.n);
    rig_free(&R);
    rig_free(&S);
    rig_free(&S64);
}

int main(int argc, char **argv)
{
    const opts o = parse(argc, argv);
    cr_set_num_threads((int)o.threads);
    size_t n_types;
    const cr_cell_type *const *types = cr_cell_builtins(&n_types);
    printf("one layer, B=%lld T=%lld I=%lld H=%lld, %d thread%s; "
           "loss = sum(y R1) + sum(h_n R2) [+ sum(c_n R3)]\n",
           (long long)o.B, (long long)o.T, (long long)o.I, (long long)o.H, (int)o.threads,
           o.threads == 1 ? "" : "s");
    printf("rel = max over elements of |a-b| / max(|a|, |b|, %g)\n", o.floor);
    printf("ag-vs-fd: finite differences in f64 (eps 1e-5) on a small case B=2 T=6 I=3 H=4;\n"
           "ms: best time of one forward + backward (fd: the whole gradient, small case)\n\n");
    printf("%-4s %-14s %-5s %12s %12s %11s %9s %9s\n", "dt", "cell", "param", "ag-vs-hand", "ag-vs-fd",
           "autograd_ms", "hand_ms", "fd_ms");
    const cr_dtype dts[] = {CR_F64, CR_F32};
    double worst[2][2] = {{0}}; /* [dtype][hand, fd] */
    for (int d = 0; d < 2; d++)
        for (size_t k = 0; k < n_types; k++)
            if (types[k]->bptt) /* every built-in cell carries its hand BPTT */
                compare_cell(&o, types[k], k, dts[d], worst[d]);
    /* Bounds: f64 autograd and hand BPTT agree to rounding; central
     * differences (eps 1e-5) carry about 1e-10 truncation and rounding; f32
     * gradients hold about 1e-7 relative per operation, over T steps. */
    const double bound[2][2] = {{1e-9, 1e-6}, {1e-3, 1e-3}};
    bool ok = true;
    for (int d = 0; d < 2; d++)
        for (int m = 0; m < 2; m++) ok &= worst[d][m] <= bound[d][m];
    printf(
        "\nexample=gradcompare steps=%lld hidden=%lld f64_hand=%.2e f64_fd=%.2e f32_hand=%.2e f32_fd=%.2e\n",
        (long long)o.T, (long long)o.H, worst[0][0], worst[0][1], worst[1][0], worst[1][1]);
    if (o.quick && !ok)
        fprintf(stderr, "gradcompare: an error exceeds its bound (f64: %g hand, %g fd; f32: %g)\n",
                bound[0][0], bound[0][1], bound[1][0]);
    return o.quick && !ok ? 1 : 0;
}
