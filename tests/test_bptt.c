/*
 * Tests for the hand-derived BPTT (nn/bptt.c): every built-in cell's gradients
 * against central finite differences of its own forward in float64, closed
 * forms with zero weights, f32 against f64, accumulation, and misuse.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <string.h>

#include "carousel/nn.h"

static const cr_cell_type *const all_kinds[] = {&cr_cell_rnn_tanh, &cr_cell_rnn_relu,
                                                &cr_cell_gru,      &cr_cell_gru_original,
                                                &cr_cell_lstm,     &cr_cell_lstm_peephole};
#define N_KINDS (sizeof all_kinds / sizeof all_kinds[0])

static bool is_lstm(const cr_cell_type *k) { return k->n_states == 2; }

/* A type's position in all_kinds: the seeds of the old enum order. */
static uint64_t index_of(const cr_cell_type *k)
{
    for (size_t i = 0; i < N_KINDS; i++)
        if (all_kinds[i] == k) return i;
    return 0;
}

/* A layer under test: its parameters (in a cr_params set, as the sequence
 * layers hold them), gradient accumulators, inputs, outputs and the fixed
 * random weights R1, R2, R3 of the loss. */
typedef struct layer {
    const cr_cell_type *kind;
    cr_dtype dt;
    int64_t B, T, I, H;
    cr_params *ps;
    cr_bptt_weights p, g;
    cr_tensor *x, *h0, *c0;  /* (B, T, I), (B, H), (B, H) or NULL */
    cr_tensor *y, *hn, *cn;  /* outputs */
    cr_tensor *r1, *r2, *r3; /* loss weights, shapes of y, hn, cn */
    cr_tensor *dx, *dh0, *dc0;
    cr_bptt *w;
} layer;

static cr_tensor *init(cr_dtype dt, int ndim, const int64_t *shape)
{
    return cr_tensor_init(dt, ndim, shape);
}

static cr_tensor *init_like(const cr_tensor *t)
{
    return t ? cr_tensor_init(t->dtype, t->ndim, t->shape) : NULL;
}

/* Field s (0..6, in declaration order) of a cr_bptt_weights. */
#define N_SLOTS 7
static cr_tensor **slot(cr_bptt_weights *p, int s)
{
    cr_tensor **fields[N_SLOTS] = {&p->w_ih, &p->w_hh, &p->b_ih, &p->b_hh, &p->w_ci, &p->w_cf, &p->w_co};
    return fields[s];
}
static const char *const slot_names[N_SLOTS] = {"w_ih", "w_hh", "b_ih", "b_hh", "w_ci", "w_cf", "w_co"};

static layer layer_make_bias(const cr_cell_type *kind, cr_dtype dt, int64_t B, int64_t T, int64_t I,
                             int64_t H, uint64_t seed, bool bias)
{
    layer L = {.kind = kind, .dt = dt, .B = B, .T = T, .I = I, .H = H};
    const int64_t G = cr_cell_proj_width(kind, H, I);
    cr_rng rng = cr_rng_seed(seed);
    L.ps = cr_params_init();
    cr_fill_uniform(cr_params_add(L.ps, "rnn.l0", "w_ih", dt, CR_SHAPE(G, I)), &rng, -0.5, 0.5);
    cr_fill_uniform(cr_params_add(L.ps, "rnn.l0", "w_hh", dt, CR_SHAPE(G, H)), &rng, -0.5, 0.5);
    if (bias) {
        cr_fill_uniform(cr_params_add(L.ps, "rnn.l0", "b_ih", dt, CR_SHAPE(G)), &rng, -0.5, 0.5);
        cr_fill_uniform(cr_params_add(L.ps, "rnn.l0", "b_hh", dt, CR_SHAPE(G)), &rng, -0.5, 0.5);
    }
    if (kind == &cr_cell_lstm_peephole) { /* its own three vectors */
        cr_fill_uniform(cr_params_add(L.ps, "rnn.l0", "w_ci", dt, CR_SHAPE(H)), &rng, -0.5, 0.5);
        cr_fill_uniform(cr_params_add(L.ps, "rnn.l0", "w_cf", dt, CR_SHAPE(H)), &rng, -0.5, 0.5);
        cr_fill_uniform(cr_params_add(L.ps, "rnn.l0", "w_co", dt, CR_SHAPE(H)), &rng, -0.5, 0.5);
    }
    L.p = cr_bptt_weights_from(L.ps, "rnn.l0", kind);
    for (int s = 0; s < N_SLOTS; s++) *slot(&L.g, s) = init_like(*slot(&L.p, s));

    L.x = init(dt, CR_SHAPE(B, T, I));
    L.h0 = init(dt, CR_SHAPE(B, H));
    cr_fill_uniform(L.x, &rng, -1, 1);
    cr_fill_uniform(L.h0, &rng, -0.5, 0.5);
    L.y = init(dt, CR_SHAPE(B, T, H));
    L.hn = init(dt, CR_SHAPE(B, H));
    L.r1 = init_like(L.y);
    L.r2 = init_like(L.hn);
    cr_fill_uniform(L.r1, &rng, -1, 1);
    cr_fill_uniform(L.r2, &rng, -1, 1);
    L.dx = init_like(L.x);
    L.dh0 = init_like(L.h0);
    if (is_lstm(kind)) {
        L.c0 = init_like(L.h0);
        cr_fill_uniform(L.c0, &rng, -0.5, 0.5);
        L.cn = init_like(L.hn);
        L.r3 = init_like(L.hn);
        cr_fill_uniform(L.r3, &rng, -1, 1);
        L.dc0 = init_like(L.h0);
    }
    L.w = cr_bptt_init(kind, dt, B, T, I, H);
    return L;
}

static layer layer_make(const cr_cell_type *kind, cr_dtype dt, int64_t B, int64_t T, int64_t I, int64_t H,
                        uint64_t seed)
{
    return layer_make_bias(kind, dt, B, T, I, H, seed, true);
}

static void layer_free(layer *L)
{
    cr_params_free(L->ps);
    for (int s = 0; s < N_SLOTS; s++) cr_tensor_free(*slot(&L->g, s));
    cr_tensor *ts[] = {L->x, L->h0, L->c0, L->y, L->hn, L->cn, L->r1, L->r2, L->r3, L->dx, L->dh0, L->dc0};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) cr_tensor_free(ts[k]);
    cr_bptt_free(L->w);
}

/* Element access for either float dtype. */
static double at(const cr_tensor *t, int64_t i)
{
    return t->dtype == CR_F32 ? ((const float *)t->data)[i] : ((const double *)t->data)[i];
}
static void put(cr_tensor *t, int64_t i, double v)
{
    if (t->dtype == CR_F32)
        ((float *)t->data)[i] = (float)v;
    else
        ((double *)t->data)[i] = v;
}

static double dot(const cr_tensor *a, const cr_tensor *b)
{
    double s = 0;
    for (int64_t i = 0; i < cr_numel(a); i++) s += at(a, i) * at(b, i);
    return s;
}

/* loss = sum(y R1) + sum(h_n R2) [+ sum(c_n R3)] */
static double loss(layer *L)
{
    cr_bptt_forward(L->w, &L->p, L->x, L->h0, L->c0, L->y, L->hn, L->cn);
    return dot(L->y, L->r1) + dot(L->hn, L->r2) + (L->cn ? dot(L->cn, L->r3) : 0);
}

/* Forward, then backward of the loss: gradients land in L->g, dx, dh0, dc0. */
static void grads(layer *L)
{
    loss(L);
    cr_bptt_backward(L->w, &L->p, L->r1, L->r2, L->r3, &L->g, L->dx, L->dh0, L->dc0);
}

/* Largest |analytic - numeric| / max(1, |analytic|, |numeric|) over every
 * element of t, numeric by central differences of the hand forward. */
static double fd_error(layer *L, cr_tensor *t, const cr_tensor *grad, const char *what)
{
    const double eps = 1e-6;
    double worst = 0;
    for (int64_t i = 0; i < cr_numel(t); i++) {
        const double v = at(t, i);
        put(t, i, v + eps);
        const double lp = loss(L);
        put(t, i, v - eps);
        const double lm = loss(L);
        put(t, i, v);
        const double num = (lp - lm) / (2 * eps), ana = at(grad, i);
        const double err = fabs(ana - num) / fmax(1, fmax(fabs(ana), fabs(num)));
        if (err > worst) worst = err;
    }
    cr_assert(worst < 1e-7, "%s, %s: relative error %g", L->kind->name, what, worst);
    return worst;
}

static void gradcheck_bias(const cr_cell_type *kind, int64_t B, int64_t T, int64_t I, int64_t H, bool bias)
{
    layer L = layer_make_bias(kind, CR_F64, B, T, I, H, 1234 + index_of(kind), bias);
    grads(&L);
    for (int s = 0; s < N_SLOTS; s++) {
        cr_tensor *p = *slot(&L.p, s), *g = *slot(&L.g, s);
        cr_assert_eq(p == NULL, g == NULL);
        if (p) fd_error(&L, p, g, slot_names[s]);
    }
    fd_error(&L, L.x, L.dx, "x");
    fd_error(&L, L.h0, L.dh0, "h0");
    if (L.c0) fd_error(&L, L.c0, L.dc0, "c0");
    layer_free(&L);
}

static void gradcheck(const cr_cell_type *kind, int64_t B, int64_t T, int64_t I, int64_t H)
{
    gradcheck_bias(kind, B, T, I, H, true);
}

/* ---- gradients against finite differences, f64 ------------------------------ */

Test(bptt, gradcheck_rnn_tanh) { gradcheck(&cr_cell_rnn_tanh, 3, 6, 4, 5); }
Test(bptt, gradcheck_rnn_relu) { gradcheck(&cr_cell_rnn_relu, 3, 6, 4, 5); }
Test(bptt, gradcheck_gru) { gradcheck(&cr_cell_gru, 3, 6, 4, 5); }
Test(bptt, gradcheck_gru_original) { gradcheck(&cr_cell_gru_original, 3, 6, 4, 5); }
Test(bptt, gradcheck_lstm) { gradcheck(&cr_cell_lstm, 3, 6, 4, 5); }
Test(bptt, gradcheck_lstm_peephole) { gradcheck(&cr_cell_lstm_peephole, 3, 6, 4, 5); }

/* Degenerate sizes: single rows, steps and units (strides of 1-wide views). */
Test(bptt, gradcheck_tiny_sizes)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        gradcheck(all_kinds[k], 1, 1, 1, 1);
        gradcheck(all_kinds[k], 2, 7, 3, 1);
        gradcheck(all_kinds[k], 1, 3, 1, 2);
    }
}

/* Layers without biases (cr_cell_config.no_bias): NULL biases count as zeros. */
Test(bptt, gradcheck_without_biases)
{
    for (size_t k = 0; k < N_KINDS; k++) gradcheck_bias(all_kinds[k], 2, 4, 3, 3, false);
}

/* ---- known values: zero weights, chosen biases ------------------------------- */

/* Zero W_ih, W_hh, so every gate is a constant of the biases and the
 * recurrence becomes scalar per unit. */
static layer zero_weight_layer(const cr_cell_type *kind)
{
    layer L = layer_make(kind, CR_F64, 2, 5, 3, 4, 99);
    cr_fill(L.p.w_ih, 0);
    cr_fill(L.p.w_hh, 0);
    const int64_t G = cr_cell_proj_width(kind, L.H, L.I);
    for (int64_t j = 0; j < G; j++) {
        put(L.p.b_ih, j, 0.1 * (double)(j % 7) - 0.3);
        put(L.p.b_hh, j, 0.05 * (double)(j % 5) - 0.1);
    }
    return L;
}

static double sig(double v) { return 1 / (1 + exp(-v)); }

static void check_close(double got, double want, const char *what)
{
    cr_assert(fabs(got - want) < 1e-13, "%s: got %.17g, want %.17g", what, got, want);
}

Test(bptt, known_rnn)
{
    for (int relu = 0; relu < 2; relu++) {
        layer L = zero_weight_layer(relu ? &cr_cell_rnn_relu : &cr_cell_rnn_tanh);
        const int64_t B = L.B, T = L.T, H = L.H;
        grads(&L);
        /* h_t = act(b_ih + b_hh) at every step; dL/db = act'(.) (sum of every
         * dL/dh_t), the same for b_ih and b_hh; nothing reaches x or h0. */
        for (int64_t j = 0; j < H; j++) {
            const double pre = at(L.p.b_ih, j) + at(L.p.b_hh, j);
            const double h = relu ? fmax(pre, 0) : tanh(pre);
            const double d = relu ? (pre > 0) : 1 - h * h;
            double sum_dh = 0;
            for (int64_t b = 0; b < B; b++) {
                for (int64_t t = 0; t < T; t++) {
                    check_close(at(L.y, (b * T + t) * H + j), h, "y");
                    sum_dh += at(L.r1, (b * T + t) * H + j);
                }
                check_close(at(L.hn, b * H + j), h, "h_n");
                sum_dh += at(L.r2, b * H + j);
            }
            check_close(at(L.g.b_ih, j), d * sum_dh, "db_ih");
            check_close(at(L.g.b_hh, j), d * sum_dh, "db_hh");
        }
        for (int64_t i = 0; i < cr_numel(L.dx); i++) check_close(at(L.dx, i), 0, "dx");
        for (int64_t i = 0; i < cr_numel(L.dh0); i++) check_close(at(L.dh0, i), 0, "dh0");
        layer_free(&L);
    }
}

Test(bptt, known_gru)
{
    for (int orig = 0; orig < 2; orig++) {
        layer L = zero_weight_layer(orig ? &cr_cell_gru_original : &cr_cell_gru);
        const int64_t B = L.B, T = L.T, H = L.H;
        loss(&L);
        /* r, z constant; n = tanh(b_in + r b_hn) (PyTorch) or tanh(b_in + b_hn)
         * (original, W_hn (r h) = 0); h_t - n = z (h_{t-1} - n), so
         * h_t = n + z^t (h_0 - n). */
        for (int64_t j = 0; j < H; j++) {
            const double bi = at(L.p.b_ih, j), bh = at(L.p.b_hh, j);
            const double r = sig(bi + bh);
            const double z = sig(at(L.p.b_ih, H + j) + at(L.p.b_hh, H + j));
            const double bn = at(L.p.b_ih, 2 * H + j), bhn = at(L.p.b_hh, 2 * H + j);
            const double n = tanh(orig ? bn + bhn : bn + r * bhn);
            for (int64_t b = 0; b < B; b++) {
                const double h0 = at(L.h0, b * H + j);
                for (int64_t t = 0; t < T; t++)
                    check_close(at(L.y, (b * T + t) * H + j), n + pow(z, (double)t + 1) * (h0 - n), "y");
                check_close(at(L.hn, b * H + j), n + pow(z, (double)T) * (h0 - n), "h_n");
            }
        }
        layer_free(&L);
    }
}

Test(bptt, known_lstm)
{
    layer L = zero_weight_layer(&cr_cell_lstm);
    const int64_t B = L.B, T = L.T, H = L.H;
    loss(&L);
    /* Constant gates; c_t = f c_{t-1} + i g, so
     * c_t = f^t c_0 + i g (1 - f^t) / (1 - f), h_t = o tanh(c_t). */
    for (int64_t j = 0; j < H; j++) {
        double gate[4];
        for (int k = 0; k < 4; k++) gate[k] = at(L.p.b_ih, k * H + j) + at(L.p.b_hh, k * H + j);
        const double i = sig(gate[0]), f = sig(gate[1]), g = tanh(gate[2]), o = sig(gate[3]);
        for (int64_t b = 0; b < B; b++) {
            const double c0 = at(L.c0, b * H + j);
            double c = 0;
            for (int64_t t = 1; t <= T; t++) {
                const double ft = pow(f, (double)t);
                c = ft * c0 + i * g * (1 - ft) / (1 - f);
                check_close(at(L.y, (b * T + t - 1) * H + j), o * tanh(c), "y");
            }
            check_close(at(L.hn, b * H + j), o * tanh(c), "h_n");
            check_close(at(L.cn, b * H + j), c, "c_n");
        }
    }
    layer_free(&L);
}

Test(bptt, known_lstm_peephole)
{
    layer L = zero_weight_layer(&cr_cell_lstm_peephole);
    const int64_t B = L.B, T = L.T, H = L.H;
    loss(&L);
    /* With zero matrices each unit is a scalar recurrence in c alone:
     * i = σ(a_i + w_ci c), f = σ(a_f + w_cf c), c' = f c + i g,
     * o = σ(a_o + w_co c'), h' = o tanh(c'). */
    for (int64_t j = 0; j < H; j++) {
        double a[4];
        for (int k = 0; k < 4; k++) a[k] = at(L.p.b_ih, k * H + j) + at(L.p.b_hh, k * H + j);
        const double wci = at(L.p.w_ci, j), wcf = at(L.p.w_cf, j), wco = at(L.p.w_co, j);
        for (int64_t b = 0; b < B; b++) {
            double c = at(L.c0, b * H + j), h = 0;
            for (int64_t t = 0; t < T; t++) {
                const double i = sig(a[0] + wci * c), f = sig(a[1] + wcf * c);
                c = f * c + i * tanh(a[2]);
                h = sig(a[3] + wco * c) * tanh(c);
                check_close(at(L.y, (b * T + t) * H + j), h, "y");
            }
            check_close(at(L.hn, b * H + j), h, "h_n");
            check_close(at(L.cn, b * H + j), c, "c_n");
        }
    }
    layer_free(&L);
}

/* ---- f32 against f64 ---------------------------------------------------------- */

static void check_f32(const cr_tensor *t32, const cr_tensor *t64, const char *what, const cr_cell_type *kind)
{
    for (int64_t i = 0; i < cr_numel(t64); i++) {
        const double a = at(t32, i), b = at(t64, i);
        cr_assert(fabs(a - b) <= 1e-5 * fmax(1, fabs(b)), "%s %s[%lld]: f32 %.9g, f64 %.17g", kind->name,
                  what, (long long)i, a, b);
    }
}

Test(bptt, f32_matches_f64)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        const cr_cell_type *kind = all_kinds[k];
        layer L64 = layer_make(kind, CR_F64, 3, 6, 4, 5, 7);
        layer L32 = layer_make(kind, CR_F32, 3, 6, 4, 5, 8);
        /* The same numbers in both: copy the f64 values (exact in f32 after rounding). */
        for (int s = 0; s < N_SLOTS; s++)
            if (*slot(&L64.p, s)) cr_copy_(*slot(&L32.p, s), *slot(&L64.p, s));
        cr_tensor *src[] = {L64.x, L64.h0, L64.c0, L64.r1, L64.r2, L64.r3};
        cr_tensor *dst[] = {L32.x, L32.h0, L32.c0, L32.r1, L32.r2, L32.r3};
        for (int i = 0; i < 6; i++)
            if (src[i]) {
                cr_copy_(dst[i], src[i]);
                cr_copy_(src[i], dst[i]); /* both sides hold the f32-rounded values */
            }
        for (int s = 0; s < N_SLOTS; s++)
            if (*slot(&L64.p, s)) cr_copy_(*slot(&L64.p, s), *slot(&L32.p, s));
        grads(&L64);
        grads(&L32);
        check_f32(L32.y, L64.y, "y", kind);
        check_f32(L32.hn, L64.hn, "h_n", kind);
        check_f32(L32.dx, L64.dx, "dx", kind);
        check_f32(L32.dh0, L64.dh0, "dh0", kind);
        if (L64.cn) {
            check_f32(L32.cn, L64.cn, "c_n", kind);
            check_f32(L32.dc0, L64.dc0, "dc0", kind);
        }
        for (int s = 0; s < N_SLOTS; s++)
            if (*slot(&L64.g, s)) check_f32(*slot(&L32.g, s), *slot(&L64.g, s), slot_names[s], kind);
        layer_free(&L64);
        layer_free(&L32);
    }
}

/* ---- contracts: accumulation, optional arguments, reuse ------------------------ */

Test(bptt, backward_adds_into_gradients)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        layer L = layer_make(all_kinds[k], CR_F64, 3, 4, 2, 3, 5);
        grads(&L);
        cr_tensor *once[N_SLOTS] = {0};
        for (int s = 0; s < N_SLOTS; s++) {
            cr_tensor *g = *slot(&L.g, s);
            if (g) {
                once[s] = init_like(g);
                cr_copy_(once[s], g);
            }
        }
        /* A second backward (no new forward) adds the same amount again. */
        cr_bptt_backward(L.w, &L.p, L.r1, L.r2, L.r3, &L.g, NULL, NULL, NULL);
        for (int s = 0; s < N_SLOTS; s++) {
            if (!once[s]) continue;
            for (int64_t i = 0; i < cr_numel(once[s]); i++)
                check_close(at(*slot(&L.g, s), i), 2 * at(once[s], i), slot_names[s]);
            cr_tensor_free(once[s]);
        }
        layer_free(&L);
    }
}

Test(bptt, null_arguments_mean_zero)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        const cr_cell_type *kind = all_kinds[k];
        layer L = layer_make(kind, CR_F64, 2, 4, 3, 3, 11);
        /* NULL h0, c0 are zeros. */
        cr_fill(L.h0, 0);
        if (L.c0) cr_fill(L.c0, 0);
        loss(&L);
        cr_tensor *y_ref = init_like(L.y);
        cr_copy_(y_ref, L.y);
        cr_bptt_forward(L.w, &L.p, L.x, NULL, NULL, L.y, NULL, NULL);
        for (int64_t i = 0; i < cr_numel(L.y); i++) check_close(at(L.y, i), at(y_ref, i), "y with NULL h0");
        /* NULL dy with only dh_n equals dy = 0. */
        cr_tensor *dh0_ref = init_like(L.dh0);
        cr_tensor *zero = init_like(L.y);
        cr_bptt_backward(L.w, &L.p, zero, L.r2, NULL, NULL, NULL, dh0_ref, NULL);
        cr_bptt_backward(L.w, &L.p, NULL, L.r2, NULL, NULL, NULL, L.dh0, NULL);
        for (int64_t i = 0; i < cr_numel(L.dh0); i++)
            check_close(at(L.dh0, i), at(dh0_ref, i), "dh0 with NULL dy");
        cr_tensor_free(y_ref);
        cr_tensor_free(dh0_ref);
        cr_tensor_free(zero);
        layer_free(&L);
    }
}

Test(bptt, workspace_reuse_is_stateless)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        layer L = layer_make(all_kinds[k], CR_F64, 2, 5, 3, 4, 21);
        grads(&L);
        cr_tensor *dx_ref = init_like(L.dx);
        cr_copy_(dx_ref, L.dx);
        /* A forward on other inputs in between leaves no trace. */
        cr_tensor *x2 = init_like(L.x);
        cr_rng rng = cr_rng_seed(3);
        cr_fill_uniform(x2, &rng, -2, 2);
        cr_bptt_forward(L.w, &L.p, x2, NULL, NULL, L.y, L.hn, L.cn);
        grads(&L);
        for (int64_t i = 0; i < cr_numel(L.dx); i++)
            check_close(at(L.dx, i), at(dx_ref, i), "dx after reuse");
        cr_tensor_free(dx_ref);
        cr_tensor_free(x2);
        layer_free(&L);
    }
}

Test(bptt, grads_of_parameters)
{
    /* cr_bptt_grads_of hands backward the parameters' own gradient buffers,
     * which then hold what the explicit accumulators received. */
    layer L = layer_make(&cr_cell_lstm_peephole, CR_F64, 2, 3, 4, 5, 13);
    grads(&L);
    cr_bptt_weights pg = cr_bptt_grads_of(&L.p);
    cr_bptt_backward(L.w, &L.p, L.r1, L.r2, L.r3, &pg, NULL, NULL, NULL);
    for (int s = 0; s < N_SLOTS; s++) {
        cr_assert_eq(*slot(&pg, s), (*slot(&L.p, s))->grad);
        for (int64_t i = 0; i < cr_numel(*slot(&pg, s)); i++)
            check_close(at(*slot(&pg, s), i), at(*slot(&L.g, s), i), slot_names[s]);
    }
    layer_free(&L);
}

/* The bridge from the autograd cells: the same tensors by name. */
Test(bptt, weights_of_cell)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        cr_params *ps = cr_params_init();
        cr_rng rng = cr_rng_seed(5);
        cr_cell_config cfg = {.cell = all_kinds[k], .input_size = 3, .hidden_size = 2, .dtype = CR_F64};
        cr_cell cell = cr_cell_init(ps, "enc.l0", cfg, &rng);
        cr_assert_eq(cell.type, all_kinds[k]);
        cr_bptt_weights a = cr_bptt_weights_of(&cell);
        cr_bptt_weights b = cr_bptt_weights_from(ps, "enc.l0", all_kinds[k]);
        for (int s = 0; s < N_SLOTS; s++) {
            cr_assert_eq(*slot(&a, s), *slot(&b, s), "%s", slot_names[s]);
            /* Peepholes exist exactly in the peephole type. */
            cr_assert_eq(*slot(&a, s) != NULL, s < 4 || all_kinds[k] == &cr_cell_lstm_peephole);
        }
        cr_params_free(ps);
    }
}

Test(bptt, names_and_gates)
{
    cr_assert_str_eq(cr_cell_gru_original.name, "gru_original");
    cr_assert_str_eq(cr_cell_lstm_peephole.name, "lstm_peephole");
    cr_assert_eq(cr_cell_proj_width(&cr_cell_rnn_relu, 5, 3), 5);
    cr_assert_eq(cr_cell_proj_width(&cr_cell_gru, 5, 3), 15);
    cr_assert_eq(cr_cell_proj_width(&cr_cell_lstm, 5, 3), 20);
    for (size_t k = 0; k < N_KINDS; k++) cr_assert_not_null(all_kinds[k]->bptt, "%s", all_kinds[k]->name);
    cr_bptt_free(NULL);
}

/* ---- misuse -------------------------------------------------------------------- */

Test(bptt, wrong_weight_shape_aborts, .signal = SIGABRT)
{
    layer L = layer_make(&cr_cell_lstm, CR_F64, 2, 3, 4, 5, 1);
    L.p.w_hh = L.p.w_ih; /* (20, 4), expected (20, 5) */
    loss(&L);
}

Test(bptt, wrong_dtype_aborts, .signal = SIGABRT)
{
    layer L = layer_make(&cr_cell_gru, CR_F64, 2, 3, 4, 5, 1);
    cr_tensor *x32 = cr_tensor_init(CR_F32, CR_SHAPE(2, 3, 4));
    cr_bptt_forward(L.w, &L.p, x32, NULL, NULL, NULL, NULL, NULL);
}

Test(bptt, cell_state_for_gru_aborts, .signal = SIGABRT)
{
    layer L = layer_make(&cr_cell_gru, CR_F64, 2, 3, 4, 5, 1);
    cr_bptt_forward(L.w, &L.p, L.x, L.h0, L.h0, NULL, NULL, NULL);
}

Test(bptt, backward_before_forward_aborts, .signal = SIGABRT)
{
    layer L = layer_make(&cr_cell_rnn_tanh, CR_F64, 2, 3, 4, 5, 1);
    cr_bptt_backward(L.w, &L.p, L.r1, NULL, NULL, NULL, NULL, NULL, NULL);
}

Test(bptt, missing_parameter_aborts, .signal = SIGABRT)
{
    layer L = layer_make(&cr_cell_lstm, CR_F64, 2, 3, 4, 5, 1);
    cr_bptt_weights_from(L.ps, "rnn.l0", &cr_cell_lstm_peephole); /* no rnn.l0.w_ci */
}

Test(bptt, bad_sizes_abort, .signal = SIGABRT) { cr_bptt_init(&cr_cell_lstm, CR_F64, 2, 0, 4, 5); }
