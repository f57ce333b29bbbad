/* A graph's memory: values no backward reads die with their scope (and using
 * one after is an error), gradients die once their node's backward has run
 * (a view's is its base's, a stacked piece's a slice of the stack's), and
 * recomputed segments (cr_recompute, the sequence layer's recompute_steps)
 * give the plain run's outputs and gradients bit for bit, in f32 and f64,
 * with dropout, while memory grows with the segment instead of the sequence. */
#include "expect_error.h"

#include <math.h>
#include <stdlib.h>

#include "carousel/nn.h"

static cr_graph *g;
static void setup(void) { cr_graph_use(g = cr_graph_init()); }
static void teardown(void) { cr_graph_free(g); }
TestSuite(memory, .init = setup, .fini = teardown);

static cr_tensor *owned[64];
static int n_owned;
static cr_tensor *keep_t(cr_tensor *t)
{
    cr_assert_lt(n_owned, 64);
    return owned[n_owned++] = t;
}
static void free_owned(void)
{
    while (n_owned) cr_tensor_free(owned[--n_owned]);
}

static cr_tensor *param(cr_dtype dt, int ndim, const int64_t *shape, uint64_t seed)
{
    cr_tensor *t = keep_t(cr_tensor_init(dt, ndim, shape));
    cr_rng r = cr_rng_seed(seed);
    cr_fill_uniform(t, &r, -0.6, 0.6);
    cr_requires_grad(t, true);
    return t;
}

/* a and b hold the same bits */
static void expect_same_bits(const cr_tensor *a, const cr_tensor *b, const char *what)
{
    cr_assert_not_null(a, "%s: no first tensor", what);
    cr_assert_not_null(b, "%s: no second tensor", what);
    cr_assert_eq(a->dtype, b->dtype, "%s: dtypes differ", what);
    cr_assert_eq(cr_numel(a), cr_numel(b), "%s: sizes differ", what);
    for (int64_t i = 0, n = cr_numel(a); i < n; i++) {
        double x = cr_get_flat(a, i), y = cr_get_flat(b, i);
        cr_assert(memcmp(&x, &y, sizeof x) == 0, "%s: element %lld is %.17g, then %.17g", what, (long long)i,
                  x, y);
    }
}

/* ---- scopes ---------------------------------------------------------------------------- */

Test(memory, a_scope_releases_the_values_no_backward_reads)
{
    cr_tensor *w = param(CR_F64, CR_SHAPE(4), 1);
    cr_tensor *x = cr_from_array(CR_F64, CR_SHAPE(4), (double[]){0.5, -1, 2, 0.25});
    size_t before = cr_graph_bytes_used(g);
    cr_scope s = cr_scope_begin();
    cr_tensor *a = cr_mul(x, w);          /* read by no backward (tanh reads its output) */
    cr_tensor *v = cr_narrow(a, 0, 1, 2); /* a view of it */
    cr_tensor *b = cr_tanh(a);            /* tanh's backward reads b */
    cr_tensor *c = cr_add_scalar(b, 1);   /* read by no backward, but kept */
    cr_tensor *d = cr_exp(c);             /* read by no backward (exp reads its output: d is) */
    size_t inside = cr_graph_bytes_used(g);
    cr_scope_end(s, 1, &c);
    cr_assert(cr_tensor_released(a));
    cr_assert(cr_tensor_released(v), "a view of a released value is released");
    cr_assert_not(cr_tensor_released(b));
    cr_assert_not(cr_tensor_released(c));
    cr_assert_not(cr_tensor_released(d), "exp's backward reads its output");
    cr_assert_lt(cr_graph_bytes_used(g), inside, "the scope gave memory back");
    cr_assert_gt(cr_graph_bytes_used(g), before);
    EXPECT_ERROR(cr_add(a, w), "cr_add: input 0, f64 [4] (made by cr_mul, tape #0), was released");
    EXPECT_ERROR(cr_tanh(v), "cr_tanh: input 0, f64 [2]");
    EXPECT_ERROR(cr_get_flat(v, 0), "cr_get_flat: tensor f64 [2] was released");
    EXPECT_ERROR(cr_item(a), "cr_item: tensor f64 [4] was released");
    EXPECT_ERROR(cr_detach(a), "cr_detach: tensor 0, f64 [4]");
    /* backward still works: it reads only what stayed */
    cr_backward(cr_add(cr_sum(cr_square(c)), cr_sum(d)));
    for (int i = 0; i < 4; i++) {
        double xi = cr_get_flat(x, i), bi = tanh(xi * cr_get_flat(w, i));
        double want = (2 * (bi + 1) + exp(bi + 1)) * (1 - bi * bi) * xi;
        cr_assert_float_eq(cr_get_flat(w->grad, i), want, 1e-13);
    }
    free_owned();
}

Test(memory, scopes_nest_and_end_innermost_first)
{
    cr_tensor *x = cr_from_array(CR_F32, CR_SHAPE(3), (float[]){1, 2, 3});
    cr_scope outer = cr_scope_begin();
    cr_tensor *a = cr_exp(x); /* no gradient: nothing is recorded, nothing saved */
    cr_scope inner = cr_scope_begin();
    cr_tensor *b = cr_mul_scalar(a, 2), *c = cr_add_scalar(b, 1);
    EXPECT_ERROR(cr_scope_end(outer, 0, NULL), "cr_scope_end: scopes end innermost first");
    cr_scope_end(inner, 1, &c);
    cr_assert(cr_tensor_released(b));
    cr_assert_not(cr_tensor_released(c));
    cr_assert_not(cr_tensor_released(a), "made before the inner scope");
    cr_assert_float_eq(cr_get_flat(c, 2), 2 * expf(3) + 1, 1e-4);
    cr_tensor *keep[2] = {NULL, c}; /* NULL entries are skipped */
    cr_scope_end(outer, 2, keep);
    cr_assert(cr_tensor_released(a));
    cr_assert_not(cr_tensor_released(c), "kept by both scopes");
    /* a scope does not outlive a clear */
    cr_scope s = cr_scope_begin();
    cr_graph_clear(g);
    EXPECT_ERROR(cr_scope_end(s, 0, NULL),
                 "cr_scope_end: the scope was not opened in this graph's current step");
    EXPECT_ERROR(cr_scope_end(s, -1, NULL), "cr_scope_end");
}

Test(memory, values_outside_every_scope_stay_to_the_clear)
{
    cr_tensor *x = cr_from_array(CR_F64, CR_SHAPE(2), (double[]){1, 2});
    cr_tensor *a = cr_exp(x), *b = cr_exp(a);
    cr_scope s = cr_scope_begin();
    cr_tensor *c = cr_exp(b);
    cr_scope_end(s, 0, NULL);
    cr_assert_not(cr_tensor_released(a));
    cr_assert_not(cr_tensor_released(b), "made before the scope");
    cr_assert(cr_tensor_released(c));
    cr_assert_float_eq(cr_get_flat(b, 0), exp(exp(1)), 1e-12);
}

/* ---- gradients --------------------------------------------------------------------------- */

/* A chain of tanh over n doubles: its backward needs two or three gradient
 * buffers at a time, not one per op. */
Test(memory, gradients_die_once_their_node_has_run)
{
    const int64_t n = 4096;
    cr_tensor *w = param(CR_F64, CR_SHAPE(n), 2);
    cr_tensor *h = w;
    for (int k = 0; k < 50; k++) h = cr_tanh(cr_mul_scalar(h, 1.1));
    cr_tensor *loss = cr_sum(h);
    size_t forward = cr_graph_bytes_used(g), bytes = (size_t)n * sizeof(double);
    cr_backward(loss);
    size_t peak = cr_graph_bytes_peak(g);
    cr_assert_lt(peak - forward, 4 * bytes,
                 "backward held %zu bytes above the forward's %zu (buffers of %zu)", peak - forward, forward,
                 bytes);
    cr_assert_leq(cr_graph_bytes_used(g), forward + 1024, "gradients left behind after backward");
    for (size_t i = 0; i < cr_graph_node_count(g); i++)
        cr_assert_null(cr_graph_node(g, i)->out->grad, "node %zu kept its gradient", i);
    cr_assert_not_null(w->grad);
    free_owned();
}

Test(memory, a_view_sees_its_base_gradient)
{
    cr_tensor *w = param(CR_F64, CR_SHAPE(3, 4), 3);
    cr_tensor *a = cr_mul_scalar(w, 2);
    cr_tensor *v = cr_narrow(a, 1, 1, 2), *t = cr_transpose(a, 0, 1);
    cr_retain_grad(a);
    cr_retain_grad(v);
    cr_retain_grad(t);
    cr_backward(cr_add(cr_sum(cr_square(v)), cr_sum(cr_mul_scalar(t, 3))));
    /* the view's gradient is the same view of the base's: no buffer of its own */
    cr_assert_eq((char *)v->grad->data, (char *)a->grad->data + sizeof(double));
    cr_assert_eq(v->grad->stride[0], 4);
    cr_assert_eq(t->grad->data, a->grad->data);
    cr_assert_eq(t->grad->stride[0], 1);
    for (int64_t i = 0; i < 3; i++)
        for (int64_t j = 0; j < 4; j++) {
            double av = 2 * cr_get(w, (int64_t[]){i, j});
            double want = 3 + (j == 1 || j == 2 ? 2 * av : 0);
            cr_assert_float_eq(cr_get(a->grad, (int64_t[]){i, j}), want, 1e-14);
            cr_assert_float_eq(cr_get(w->grad, (int64_t[]){i, j}), 2 * want, 1e-14);
        }
    free_owned();
}

Test(memory, stacked_pieces_get_slices_of_the_stack_gradient)
{
    cr_tensor *w = param(CR_F32, CR_SHAPE(5), 4);
    cr_tensor *hs[3];
    for (int t = 0; t < 3; t++) {
        hs[t] = cr_tanh(cr_mul_scalar(w, t + 1));
        cr_retain_grad(hs[t]);
    }
    cr_tensor *y = cr_stack(3, hs, 0);
    cr_backward(cr_sum(cr_mul(y, cr_reshape(cr_arange(CR_F32, 0, 15, 1), CR_SHAPE(3, 5)))));
    for (int t = 0; t < 3; t++) {
        cr_assert_eq((float *)hs[t]->grad->data, (float *)hs[0]->grad->data + 5 * t, "piece %d", t);
        for (int j = 0; j < 5; j++) cr_assert_eq(cr_get_flat(hs[t]->grad, j), 5 * t + j);
    }
    free_owned();
}

/* ---- recompute: the plain run's gradients, bit for bit ---------------------------------- */

/* An LSTM step composed of ops, dropout on its output: the forward that a
 * segment covers. w: w_x [I,4H], w_h [H,4H], b [4H]. */
typedef struct {
    cr_tensor *w_x, *w_h, *b, *xs; /* xs [T,B,I] */
    cr_rng rng;
    int64_t H, t0, t1;
    bool last_only; /* a segment returns its states only */
} lstm_ctx;

static void lstm_steps(lstm_ctx *c, cr_tensor **h, cr_tensor **cs, cr_tensor **ys)
{
    int64_t H = c->H;
    for (int64_t t = c->t0; t < c->t1; t++) {
        cr_tensor *z = cr_add(cr_add(cr_matmul(cr_select(c->xs, 0, t), c->w_x), cr_matmul(*h, c->w_h)), c->b);
        cr_tensor *i = cr_sigmoid(cr_narrow(z, 1, 0, H)), *f = cr_sigmoid(cr_narrow(z, 1, H, H));
        cr_tensor *gg = cr_tanh(cr_narrow(z, 1, 2 * H, H)), *o = cr_sigmoid(cr_narrow(z, 1, 3 * H, H));
        *cs = cr_add(cr_mul(f, *cs), cr_mul(i, gg));
        *h = cr_mul(o, cr_tanh(*cs));
        ys[t - c->t0] = cr_dropout(*h, 0.25, true, &c->rng);
    }
}

static void lstm_segment(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    lstm_ctx *c = ctx;
    cr_tensor *h = in[0], *cs = in[1], *ys[64];
    cr_assert_leq(c->t1 - c->t0, 64);
    lstm_steps(c, &h, &cs, c->last_only ? ys : out + 2);
    out[0] = h;
    out[1] = cs;
}

/* Loss of T steps from zero states, plain (seg 0) or in segments of seg steps;
 * the gradients go to w_x, w_h, b and xs. The loss reads every step's output,
 * or (last_only) the final states alone, so that nothing but the segments'
 * boundaries need stay. */
static double lstm_run_(cr_tensor *const *p, cr_dtype dt, int64_t B, int64_t T, int64_t H, int seg,
                        bool last_only)
{
    lstm_ctx *ctx = cr_arena_alloc(cr_arena_current(), (size_t)(T + 1) * sizeof *ctx);
    cr_rng rng = cr_rng_seed(11);
    cr_tensor *h = cr_zeros(dt, CR_SHAPE(B, H)), *cs = cr_zeros(dt, CR_SHAPE(B, H));
    cr_tensor **ys = cr_arena_alloc(cr_arena_current(), (size_t)T * sizeof *ys);
    if (!seg) {
        ctx[0] = (lstm_ctx){p[0], p[1], p[2], p[3], rng, H, 0, T, last_only};
        lstm_steps(&ctx[0], &h, &cs, ys);
    } else {
        for (int64_t t0 = 0, k = 0; t0 < T; t0 += seg, k++) {
            lstm_ctx *c = &ctx[k];
            *c = (lstm_ctx){p[0], p[1], p[2], p[3], rng, H, t0, t0 + seg < T ? t0 + seg : T, last_only};
            cr_tensor **out = cr_arena_alloc(cr_arena_current(), (size_t)(2 + seg) * sizeof *out);
            cr_recompute(lstm_segment, c, 2, (cr_tensor *[]){h, cs}, last_only ? 2 : (int)(2 + c->t1 - t0),
                         out, 1, (cr_rng *[]){&c->rng});
            rng = c->rng; /* the next segment draws on from here */
            h = out[0];
            cs = out[1];
            if (!last_only)
                for (int64_t t = t0; t < c->t1; t++) ys[t] = out[2 + t - t0];
        }
    }
    cr_tensor *y = last_only ? h : cr_stack((int)T, ys, 0); /* [T,B,H] */
    cr_tensor *r = cr_arange(dt, 0, (double)cr_numel(y), 1);
    cr_tensor *loss =
        cr_add(cr_sum(cr_mul(y, cr_reshape(cr_mul_scalar(r, 0.001), y->ndim, y->shape))), cr_sum(cs));
    double v = cr_item(loss);
    cr_backward(loss);
    return v;
}

static double lstm_run(cr_tensor *const *p, cr_dtype dt, int64_t B, int64_t T, int64_t H, int seg)
{
    return lstm_run_(p, dt, B, T, H, seg, false);
}

static void recompute_matches_plain(cr_dtype dt)
{
    const int64_t B = 3, T = 11, I = 5, H = 4;
    cr_tensor *p[4] = {param(dt, CR_SHAPE(I, 4 * H), 21), param(dt, CR_SHAPE(H, 4 * H), 22),
                       param(dt, CR_SHAPE(4 * H), 23), param(dt, CR_SHAPE(T, B, I), 24)};
    double loss0 = lstm_run(p, dt, B, T, H, 0);
    cr_tensor *plain[4];
    for (int k = 0; k < 4; k++) {
        plain[k] = keep_t(cr_tensor_init(dt, p[k]->ndim, p[k]->shape));
        cr_copy_(plain[k], p[k]->grad);
    }
    cr_graph_clear(g);
    const int segs[] = {1, 3, 4, 11, 20};
    for (size_t s = 0; s < sizeof segs / sizeof segs[0]; s++) {
        for (int k = 0; k < 4; k++) cr_zero_grad(p[k]);
        double loss = lstm_run(p, dt, B, T, H, segs[s]);
        cr_assert(memcmp(&loss, &loss0, sizeof loss) == 0, "segments of %d: loss %.17g, plain %.17g", segs[s],
                  loss, loss0);
        const char *names[4] = {"w_x", "w_h", "b", "xs"};
        for (int k = 0; k < 4; k++) {
            char what[64];
            snprintf(what, sizeof what, "segments of %d: d%s", segs[s], names[k]);
            expect_same_bits(p[k]->grad, plain[k], what);
        }
        cr_graph_clear(g);
    }
    free_owned();
}

Test(memory, recompute_gives_the_plain_gradients_f64) { recompute_matches_plain(CR_F64); }
Test(memory, recompute_gives_the_plain_gradients_f32) { recompute_matches_plain(CR_F32); }

/* ---- the sequence layer's recompute_steps ----------------------------------------------- */

typedef struct {
    cr_params *ps;
    cr_rnn *m;
    cr_tensor *x, *h0, *c0, *lengths; /* x [B,T,I] persistent, requires a gradient */
} layer;

static layer layer_make(const cr_cell_type *type, cr_dtype dt, int64_t B, int64_t T, int64_t I, int64_t H)
{
    layer l = {.ps = cr_params_init()};
    cr_rng rng = cr_rng_seed(5);
    cr_rnn_config cfg = {.cell = type,
                         .input_size = I,
                         .hidden_size = H,
                         .num_layers = 2,
                         .bidirectional = true,
                         .dropout = 0.3,
                         .dtype = dt};
    l.m = cr_rnn_init(l.ps, "rnn", cfg, &rng);
    l.x = param(dt, CR_SHAPE(B, T, I), 31);
    l.h0 = param(dt, CR_SHAPE(4, B, H), 32);
    l.c0 = type->n_states > 1 ? param(dt, CR_SHAPE(4, B, H), 33) : NULL;
    l.lengths = keep_t(cr_tensor_init(CR_I32, CR_SHAPE(B)));
    for (int64_t b = 0; b < B; b++) ((int32_t *)l.lengths->data)[b] = (int32_t)(T - (b * 3) % T);
    return l;
}

static void layer_free(layer *l)
{
    cr_rnn_free(l->m);
    cr_params_free(l->ps);
}

/* Run the layer (dropout masks from the same seed each time) and a loss over
 * y and the final states; backward. Returns the outputs' values, copied. */
static void layer_run(layer *l, int recompute, cr_tensor **values, bool var_len)
{
    l->m->cfg.recompute_steps = recompute;
    l->m->dropout_rng = cr_rng_seed(77);
    cr_rnn_output o = cr_rnn_forward(l->m, l->x, var_len ? l->lengths : NULL, l->h0, l->c0);
    cr_tensor *outs[3] = {o.y, o.h_n, o.c_n};
    cr_tensor *loss = NULL;
    for (int k = 0; k < 3; k++) {
        if (!outs[k]) continue;
        cr_tensor *r = cr_arange(outs[k]->dtype, 0, (double)cr_numel(outs[k]), 1);
        cr_tensor *part =
            cr_sum(cr_mul(outs[k], cr_reshape(cr_mul_scalar(r, 0.01), outs[k]->ndim, outs[k]->shape)));
        loss = loss ? cr_add(loss, part) : part;
        values[k] = keep_t(cr_tensor_init(outs[k]->dtype, outs[k]->ndim, outs[k]->shape));
        cr_copy_(values[k], outs[k]);
    }
    cr_backward(loss);
}

static void layer_matches_plain(const cr_cell_type *type, cr_dtype dt, bool var_len)
{
    const int64_t B = 3, T = 9, I = 4, H = 5;
    layer l = layer_make(type, dt, B, T, I, H);
    cr_tensor *v0[3] = {0}, *g0[64];
    size_t np = l.ps->n;
    cr_assert_lt(np + 3, 64);
    layer_run(&l, 0, v0, var_len);
    cr_tensor *leaves[3] = {l.x, l.h0, l.c0};
    for (size_t k = 0; k < np + 3; k++) {
        cr_tensor *t = k < np ? l.ps->items[k].value : leaves[k - np];
        g0[k] = t ? keep_t(cr_tensor_init(dt, t->ndim, t->shape)) : NULL;
        if (t) cr_copy_(g0[k], t->grad);
    }
    cr_graph_clear(g);
    const int segs[] = {1, 2, 4, 9, 30};
    for (size_t s = 0; s < sizeof segs / sizeof segs[0]; s++) {
        cr_params_zero_grad(l.ps);
        for (int k = 0; k < 3; k++)
            if (leaves[k]) cr_zero_grad(leaves[k]);
        cr_tensor *v[3] = {0};
        layer_run(&l, segs[s], v, var_len);
        for (int k = 0; k < 3; k++) {
            char what[96];
            snprintf(what, sizeof what, "%s, segments of %d: output %d", type->name, segs[s], k);
            if (v0[k]) expect_same_bits(v[k], v0[k], what);
        }
        for (size_t k = 0; k < np + 3; k++) {
            cr_tensor *t = k < np ? l.ps->items[k].value : leaves[k - np];
            if (!t) continue;
            char what[128];
            snprintf(what, sizeof what, "%s, segments of %d: gradient of %s", type->name, segs[s],
                     k < np        ? l.ps->items[k].name
                     : k == np     ? "x"
                     : k == np + 1 ? "h0"
                                   : "c0");
            expect_same_bits(t->grad, g0[k], what);
        }
        cr_graph_clear(g);
    }
    layer_free(&l);
    free_owned();
}

/* two bidirectional layers with dropout between them, variable lengths */
Test(memory, layer_recompute_gives_the_plain_gradients_lstm_f64)
{
    layer_matches_plain(&cr_cell_lstm, CR_F64, true);
}
Test(memory, layer_recompute_gives_the_plain_gradients_lstm_f32)
{
    layer_matches_plain(&cr_cell_lstm, CR_F32, true);
}
Test(memory, layer_recompute_gives_the_plain_gradients_lstm_full_length)
{
    layer_matches_plain(&cr_cell_lstm, CR_F32, false);
}
/* a state read by several ops of the next step (h in the GRU), and peepholes */
Test(memory, layer_recompute_gives_the_plain_gradients_gru)
{
    layer_matches_plain(&cr_cell_gru, CR_F32, false);
}
Test(memory, layer_recompute_gives_the_plain_gradients_gru_var_len)
{
    layer_matches_plain(&cr_cell_gru, CR_F64, true);
}
Test(memory, layer_recompute_gives_the_plain_gradients_peephole)
{
    layer_matches_plain(&cr_cell_lstm_peephole, CR_F32, true);
}

/* The composed step keeps seven [B,H] values per step, the fused one (one
 * gate node, its activations saved) fewer, so recomputing gains less there. */
Test(memory, layer_recompute_keeps_less)
{
    const int64_t B = 8, T = 48, I = 16, H = 32;
    for (int fused = 0; fused < 2; fused++) {
        size_t peak[2];
        for (int r = 0; r < 2; r++) {
            cr_graph *own = cr_graph_init(), *prev = cr_graph_use(own);
            layer l = layer_make(&cr_cell_lstm, CR_F32, B, T, I, H);
            l.m->fused = fused;
            cr_tensor *v[3];
            layer_run(&l, r ? 6 : 0, v, false);
            peak[r] = cr_graph_bytes_peak(own);
            layer_free(&l);
            free_owned();
            cr_graph_use(prev);
            cr_graph_free(own);
        }
        size_t bound = fused ? peak[0] * 4 / 5 : peak[0] * 3 / 4;
        cr_assert_lt(peak[1], bound, "fused %d, recompute_steps 6: peak %zu bytes, plain %zu", fused, peak[1],
                     peak[0]);
    }
}

/* ---- memory that grows with the segment, not the sequence ------------------------------- */

static size_t lstm_peak(int64_t T, int seg)
{
    const int64_t B = 4, I = 8, H = 32;
    cr_graph *own = cr_graph_init(), *prev = cr_graph_use(own);
    cr_tensor *p[4] = {param(CR_F32, CR_SHAPE(I, 4 * H), 21), param(CR_F32, CR_SHAPE(H, 4 * H), 22),
                       param(CR_F32, CR_SHAPE(4 * H), 23), param(CR_F32, CR_SHAPE(T, B, I), 24)};
    lstm_run_(p, CR_F32, B, T, H, seg, true);
    size_t peak = cr_graph_bytes_peak(own);
    free_owned();
    cr_graph_use(prev);
    cr_graph_free(own);
    return peak;
}

Test(memory, segments_of_sqrt_t_steps_grow_like_sqrt_t)
{
    size_t plain[2] = {lstm_peak(64, 0), lstm_peak(256, 0)}, seg[2] = {lstm_peak(64, 8), lstm_peak(256, 16)};
    double rp = (double)plain[1] / (double)plain[0], rs = (double)seg[1] / (double)seg[0];
    cr_assert_gt(rp, 3.5, "plain: 4x the steps, %.2fx the memory", rp);
    /* sqrt(4) = 2, plus what stays O(T): the inputs xs and their gradient,
     * the segments' boundary states */
    cr_assert_lt(rs, 2.6, "segments of sqrt(T): 4x the steps, %.2fx the memory (%zu, %zu bytes)", rs, seg[0],
                 seg[1]);
    cr_assert_lt(seg[1], plain[0], "T=256 in segments (%zu bytes) above T=64 plain (%zu)", seg[1], plain[0]);
}

/* ---- recompute: backward twice, misuse ---------------------------------------------------- */

static void seg_scale(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    const double *k = ctx;
    out[0] = cr_tanh(cr_mul_scalar(in[0], *k));
}

Test(memory, recompute_backward_twice_adds_twice)
{
    cr_tensor *w = param(CR_F64, CR_SHAPE(3), 41);
    double k = 1.5;
    cr_tensor *y;
    cr_recompute(seg_scale, &k, 1, &w, 1, &y, 0, NULL);
    cr_tensor *loss = cr_sum(y);
    cr_backward(loss);
    cr_backward(loss);
    for (int i = 0; i < 3; i++) {
        double t = tanh(1.5 * cr_get_flat(w, i));
        cr_assert_float_eq(cr_get_flat(w->grad, i), 2 * 1.5 * (1 - t * t), 1e-14);
    }
    free_owned();
}

static int calls;
static void seg_drifts(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    (void)ctx;
    out[0] = cr_mul_scalar(in[0], ++calls); /* reads state that changes: not a function of its inputs */
}

static void seg_draws(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    cr_rng *r = ctx;
    out[0] = cr_dropout(in[0], 0.5, true, r);
}

static void seg_null(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    (void)in;
    (void)ctx;
    out[0] = NULL;
}

Test(memory, recompute_misuse)
{
    cr_tensor *w = param(CR_F64, CR_SHAPE(64), 42);
    double k = 2;
    cr_tensor *y;
    /* an input written in place after the segment ran */
    cr_tensor *a = cr_mul_scalar(w, 1);
    cr_recompute(seg_scale, &k, 1, &a, 1, &y, 0, NULL);
    cr_fill(a, 0.5);
    EXPECT_ERROR(cr_backward(cr_sum(y)),
                 "cr_backward: cr_recompute (tape #1) runs its segment again on input 0, f64 [64], "
                 "but it was written in place");
    cr_assert(cr_grad_enabled(), "grad mode restored after the error");
    cr_graph_clear(g);
    /* a function that is not a function of its inputs */
    calls = 0;
    cr_recompute(seg_drifts, NULL, 1, &w, 1, &y, 0, NULL);
    EXPECT_ERROR(cr_backward(cr_sum(y)), "output 0 of the segment, f64 [64], is different");
    cr_graph_clear(g);
    /* a generator the segment draws from but cr_recompute was not given */
    cr_rng r = cr_rng_seed(1);
    cr_recompute(seg_draws, &r, 1, &w, 1, &y, 0, NULL);
    EXPECT_ERROR(cr_backward(cr_sum(y)), "is different");
    cr_graph_clear(g);
    /* given, it replays */
    r = cr_rng_seed(1);
    cr_recompute(seg_draws, &r, 1, &w, 1, &y, 1, (cr_rng *[]){&r});
    uint64_t after = r.offset;
    cr_zero_grad(w);
    cr_backward(cr_sum(y));
    cr_assert_eq(r.offset, after, "the generator is back where it was");
    for (int i = 0; i < 64; i++) cr_assert(cr_get_flat(w->grad, i) == 0 || cr_get_flat(w->grad, i) == 2);
    cr_graph_clear(g);
    EXPECT_ERROR(cr_recompute(seg_null, NULL, 1, &w, 1, &y, 0, NULL),
                 "cr_recompute: the segment function left output 0 NULL");
    cr_graph_clear(g);
    EXPECT_ERROR(cr_recompute(NULL, NULL, 1, &w, 1, &y, 0, NULL),
                 "cr_recompute: the segment function is NULL");
    EXPECT_ERROR(cr_recompute(seg_scale, &k, 1, &w, 1, &y, 1, (cr_rng *[]){NULL}),
                 "cr_recompute: generator 0 is NULL");
    free_owned();
}

/* What a segment makes inside is given back as it ends, headers and nodes
 * too: only its outputs stay. */
static void seg_big_inside(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    (void)ctx;
    cr_tensor *h = in[0];
    for (int k = 0; k < 20; k++) h = cr_tanh(cr_mul_scalar(h, 1.01));
    out[0] = cr_sum(h);
    out[1] = cr_zeros(CR_F64, CR_SHAPE(3)); /* a step tensor made inside, in the arena */
    out[2] = h;
    out[3] = cr_narrow(h, 0, 2, 3); /* a view of another output */
}

Test(memory, a_segment_keeps_only_its_outputs)
{
    const int64_t n = 2048;
    cr_tensor *w = param(CR_F64, CR_SHAPE(n), 43), *y[4];
    size_t before = cr_graph_bytes_used(g);
    cr_recompute(seg_big_inside, NULL, 1, &w, 4, y, 0, NULL);
    size_t kept = cr_graph_bytes_used(g) - before, bytes = (size_t)n * sizeof(double);
    cr_assert_lt(kept, bytes + 4096, "the segment kept %zu bytes (its output h is %zu)", kept, bytes);
    cr_assert_gt(cr_graph_bytes_peak(g) - before, 10 * bytes, "the first run held its values");
    cr_assert_not(cr_tensor_released(y[2]));
    for (int i = 0; i < 3; i++) cr_assert_eq(cr_get_flat(y[1], i), 0.0);
    cr_assert_eq(cr_get_flat(y[3], 1), cr_get_flat(y[2], 3));
    cr_assert_null(y[1]->node);
    cr_backward(cr_add(y[0], cr_sum(y[3])));
    cr_tensor *h = w;
    for (int k = 0; k < 20; k++) h = cr_tanh(cr_mul_scalar(h, 1.01));
    cr_tensor *plain = keep_t(cr_tensor_init(CR_F64, CR_SHAPE(n)));
    cr_copy_(plain, w->grad);
    cr_zero_grad(w);
    cr_backward(cr_add(cr_sum(h), cr_sum(cr_narrow(h, 0, 2, 3))));
    expect_same_bits(w->grad, plain, "dw");
    /* in place after the segment ran: a kept output may be written (backward
     * does not read it) */
    cr_fill(y[1], 2);
    cr_assert_eq(cr_get_flat(y[1], 0), 2.0);
    free_owned();
}
