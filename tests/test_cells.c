/* User-defined cell types through the sequence layer: parameter names, f64
 * gradient checks over two bidirectional layers with variable lengths,
 * padding that changes nothing, a cell with three states, the fused-step
 * hook, misuse of the cell API; plus cr_params_convert and the Xavier and
 * Kaiming initialisers. */
#include "expect_error.h"

#include <math.h>
#include <stdlib.h>

#include "carousel/nn.h"

static cr_graph *g;
static void setup(void) { cr_graph_use(g = cr_graph_init()); }
static void teardown(void) { cr_graph_free(g); }
TestSuite(cells, .init = setup, .fini = teardown);

/* ---- two user cells ---------------------------------------------------------------- */

/* MGU (Zhou et al. 2016), projection blocks [f, n]:
 *   f = s(W_f x + U_f h + b_f)   n = tanh(W x + U (f*h) + b)   h' = (1-f)*h + f*n */
enum { MGU_W, MGU_UF, MGU_U, MGU_B };
static const cr_cell_param mgu_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},
    {.name = "u_f", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}},
    {.name = "u", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}},
    {.name = "b", .role = CR_PARAM_INPUT_BIAS},
};
static void mgu_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                     cr_tensor **next)
{
    int64_t H = c->hidden_size;
    cr_tensor *h = s[0];
    cr_tensor *f = cr_sigmoid(cr_add(cr_narrow(gx, 1, 0, H), cr_matmul(h, w[MGU_UF])));
    cr_tensor *n = cr_tanh(cr_add(cr_narrow(gx, 1, H, H), cr_matmul(cr_mul(f, h), w[MGU_U])));
    next[0] = cr_add(cr_mul(cr_rsub_scalar(f, 1), h), cr_mul(f, n));
}
static const cr_cell_type mgu = {
    .name = "mgu", .n_states = 1, .proj = CR_H(2), .params = mgu_params, .n_params = 4, .step = mgu_step};

/* Three states a, b, c; projection blocks [g1, g2]:
 *   a' = tanh(g1 + a U^T + v*c)   b' = s(g2)*b + a'   c' = tanh(b')
 * Every state reaches later outputs (b through c, c through a). */
enum { TRI_W, TRI_U, TRI_V, TRI_B };
static const cr_cell_param tri_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},
    {.name = "u", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}},
    {.name = "v", .role = CR_PARAM_WEIGHT, .shape = {CR_H(1)}, .init = CR_INIT_UNIFORM(-0.5, 0.5)},
    {.name = "b", .role = CR_PARAM_INPUT_BIAS},
};
static void tri_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                     cr_tensor **next)
{
    int64_t H = c->hidden_size;
    next[0] =
        cr_tanh(cr_add(cr_add(cr_narrow(gx, 1, 0, H), cr_matmul(s[0], w[TRI_U])), cr_mul(w[TRI_V], s[2])));
    next[1] = cr_add(cr_mul(cr_sigmoid(cr_narrow(gx, 1, H, H)), s[1]), next[0]);
    next[2] = cr_tanh(next[1]);
}
static const cr_cell_type tri = {
    .name = "tri", .n_states = 3, .proj = CR_H(2), .params = tri_params, .n_params = 4, .step = tri_step};

static cr_tensor *leaf(cr_tensor *t)
{
    cr_requires_grad(t, true);
    return t;
}

static cr_tensor *lengths_of(int64_t B, const int32_t *lens)
{
    cr_tensor *t = cr_tensor_init(CR_I32, CR_SHAPE(B));
    memcpy(t->data, lens, (size_t)B * sizeof *lens);
    return t;
}

/* ---- names -------------------------------------------------------------------------- */

Test(cells, user_cell_parameters_get_layer_names)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(1);
    cr_rnn *m = cr_rnn_init(ps, "enc",
                            (cr_rnn_config){.cell = &mgu,
                                            .input_size = 3,
                                            .hidden_size = 4,
                                            .num_layers = 2,
                                            .bidirectional = true,
                                            .dtype = CR_F32},
                            &rng);
    cr_assert_eq(ps->n, 16);
    const struct {
        const char *name;
        int ndim;
        int64_t r, c;
    } want[] = {
        {"enc.l0.w_ih", 2, 8, 3},      {"enc.l0.u_f", 2, 4, 4},          {"enc.l0.u", 2, 4, 4},
        {"enc.l0.b", 1, 8, 0},         {"enc.l0_reverse.w_ih", 2, 8, 3}, {"enc.l1.w_ih", 2, 8, 8},
        {"enc.l1_reverse.b", 1, 8, 0},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        cr_tensor *t = cr_params_get(ps, want[k].name);
        cr_assert_not_null(t, "%s", want[k].name);
        cr_assert_eq(t->ndim, want[k].ndim, "%s", want[k].name);
        cr_assert_eq(t->shape[0], want[k].r, "%s", want[k].name);
        if (want[k].ndim == 2) cr_assert_eq(t->shape[1], want[k].c, "%s", want[k].name);
    }
    /* the cells hold the same tensors, found by name */
    cr_assert_eq(cr_cell_get(&m->cells[3], "u_f"), cr_params_get(ps, "enc.l1_reverse.u_f"));
    EXPECT_ERROR(cr_cell_get(&m->cells[0], "w_hh"), "cr_cell_get: cell mgu has no parameter w_hh");
    cr_rnn_free(m);
    cr_params_free(ps);
}

Test(cells, no_bias_drops_bias_rows_and_init_rules_apply)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(2);
    cr_cell c = cr_cell_init(
        ps, "t",
        (cr_cell_config){.cell = &tri, .input_size = 2, .hidden_size = 16, .no_bias = true, .dtype = CR_F64},
        &rng);
    cr_assert_null(cr_cell_get(&c, "b"));
    cr_assert_null(cr_params_get(ps, "t.b"));
    cr_assert_eq(ps->n, 3);
    /* v: U(-0.5, 0.5); u: the default U(+-1/sqrt(H)) = U(+-0.25) */
    double vmax = 0, umax = 0;
    for (int64_t i = 0; i < 16; i++) vmax = fmax(vmax, fabs(cr_get_flat(cr_cell_get(&c, "v"), i)));
    for (int64_t i = 0; i < 256; i++) umax = fmax(umax, fabs(cr_get_flat(cr_cell_get(&c, "u"), i)));
    cr_expect(vmax <= 0.5 && vmax > 0.3, "v max %g", vmax);
    cr_expect(umax <= 0.25 && umax > 0.2, "u max %g", umax);
    cr_params_free(ps);
}

Test(cells, builtin_lookup)
{
    size_t n;
    const cr_cell_type *const *all = cr_cell_builtins(&n);
    cr_assert_eq(n, 6);
    for (size_t k = 0; k < n; k++) {
        cr_assert_eq(cr_cell_builtin(all[k]->name), all[k]);
        cr_assert_not_null(all[k]->bptt);
    }
    cr_assert_eq(cr_cell_builtin("lstm"), &cr_cell_lstm);
    cr_assert_null(cr_cell_builtin("lstm_peepholes")); /* no silent fallback */
    cr_assert_null(cr_cell_builtin(NULL));
}

/* ---- gradient checks through the whole layer ----------------------------------------------- */

typedef struct seq_case {
    cr_rnn *m;
    const cr_tensor *lengths;
    int n_params;
} seq_case;

static cr_tensor *flat(cr_tensor *t) { return cr_reshape(t, CR_SHAPE(-1)); }

/* inputs: params..., x, s0[0..n_states) */
static cr_tensor *seq_fn(cr_tensor *const *in, void *ctx)
{
    seq_case *c = ctx;
    int n = c->m->cfg.cell->n_states;
    cr_rnn_output o = cr_rnn_forward_states(c->m, in[c->n_params], c->lengths, n, in + c->n_params + 1);
    cr_tensor *parts[1 + CR_CELL_MAX_STATES] = {flat(o.y)};
    for (int k = 0; k < n; k++) parts[1 + k] = flat(o.states[k]);
    return cr_concat(1 + n, parts, 0);
}

static void gradcheck_layer(const cr_cell_type *type)
{
    const int64_t B = 3, T = 5, I = 2, H = 3, L = 2, D = 2;
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(11);
    cr_rnn *m = cr_rnn_init(ps, "rnn",
                            (cr_rnn_config){.cell = type,
                                            .input_size = I,
                                            .hidden_size = H,
                                            .num_layers = (int)L,
                                            .bidirectional = true,
                                            .dtype = CR_F64},
                            &rng);
    cr_tensor *in[64];
    int n = 0;
    for (size_t i = 0; i < ps->n; i++) in[n++] = ps->items[i].value;
    int np = n;
    cr_tensor *x = leaf(cr_tensor_init(CR_F64, CR_SHAPE(B, T, I)));
    cr_fill_uniform(x, &rng, -1, 1);
    in[n++] = x;
    for (int k = 0; k < type->n_states; k++) {
        in[n] = leaf(cr_tensor_init(CR_F64, CR_SHAPE(L * D, B, H)));
        cr_fill_uniform(in[n++], &rng, -0.5, 0.5);
    }
    cr_tensor *lengths = lengths_of(B, (int32_t[]){5, 2, 1});
    seq_case c = {.m = m, .lengths = lengths, .n_params = np};
    cr_gradcheck_report rep;
    double err = cr_gradcheck(seq_fn, &c, n, in, 1e-5, &rep);
    cr_expect(err < 1e-6, "%s: rel err %.3g at input %d index %lld (%.10g vs %.10g)", type->name, err,
              rep.worst_input, (long long)rep.worst_index, rep.analytic, rep.numeric);
    cr_expect_gt(rep.n_checked, 150);
    /* every input received a gradient, the states included */
    for (int k = 0; k < n; k++) cr_expect_not_null(in[k]->grad, "%s input %d", type->name, k);
    for (int k = np; k < n; k++) cr_tensor_free(in[k]);
    cr_tensor_free(lengths);
    cr_rnn_free(m);
    cr_params_free(ps);
}

Test(cells, gradcheck_mgu_two_layers_bidirectional_variable_lengths) { gradcheck_layer(&mgu); }
Test(cells, gradcheck_three_states_two_layers_bidirectional_variable_lengths) { gradcheck_layer(&tri); }

/* ---- padding: a padded batch equals each sequence run alone -------------------------------- */

static void padding_changes_nothing(const cr_cell_type *type)
{
    const int64_t B = 3, T = 6, I = 2, H = 3, C = 4; /* C = cells: 2 layers x 2 directions */
    const int n = type->n_states;
    const int32_t lens[3] = {6, 2, 4};
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(21);
    cr_rnn *m = cr_rnn_init(ps, "m",
                            (cr_rnn_config){.cell = type,
                                            .input_size = I,
                                            .hidden_size = H,
                                            .num_layers = 2,
                                            .bidirectional = true,
                                            .dtype = CR_F64},
                            &rng);
    cr_tensor *x = leaf(cr_tensor_init(CR_F64, CR_SHAPE(B, T, I)));
    cr_fill_uniform(x, &rng, -1, 1);
    for (int64_t b = 0; b < B; b++) /* garbage in the padding */
        for (int64_t t = lens[b]; t < T; t++)
            for (int64_t i = 0; i < I; i++) cr_set(x, (int64_t[]){b, t, i}, 1e3 * (double)(t + 1));
    cr_tensor *lengths = lengths_of(B, lens);
    /* loss: every output and every final state, weighted so nothing cancels */
    cr_rnn_output o = cr_rnn_forward_states(m, x, lengths, 0, NULL);
    cr_tensor *loss = cr_sum(cr_square(o.y));
    for (int k = 0; k < n; k++) loss = cr_add(loss, cr_sum(cr_mul_scalar(o.states[k], 1.0 + k)));
    cr_backward(loss);
    cr_tensor **batched = calloc(ps->n, sizeof *batched);
    for (size_t i = 0; i < ps->n; i++) {
        batched[i] = cr_tensor_init(CR_F64, ps->items[i].value->ndim, ps->items[i].value->shape);
        cr_copy_(batched[i], ps->items[i].value->grad);
    }
    cr_tensor *dx = cr_tensor_init(CR_F64, CR_SHAPE(B, T, I));
    cr_copy_(dx, x->grad);
    cr_params_zero_grad(ps);

    for (int64_t b = 0; b < B; b++) {
        cr_tensor *xb = cr_contiguous(cr_narrow(cr_narrow(x, 0, b, 1), 1, 0, lens[b])); /* [1, len, I] */
        cr_tensor *xl = cr_tensor_init(CR_F64, CR_SHAPE(1, lens[b], I));
        cr_copy_(xl, xb);
        leaf(xl);
        cr_rnn_output ob = cr_rnn_forward_states(m, xl, NULL, 0, NULL);
        cr_tensor *lb = cr_sum(cr_square(ob.y));
        for (int k = 0; k < n; k++) lb = cr_add(lb, cr_sum(cr_mul_scalar(ob.states[k], 1.0 + k)));
        cr_backward(lb);
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < 2 * H; j++) {
                double want = t < lens[b] ? cr_get(ob.y, (int64_t[]){0, t, j}) : 0.0;
                cr_expect(fabs(cr_get(o.y, (int64_t[]){b, t, j}) - want) < 1e-13, "%s y[%lld,%lld,%lld]",
                          type->name, (long long)b, (long long)t, (long long)j);
            }
        for (int k = 0; k < n; k++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t j = 0; j < H; j++)
                    cr_expect(fabs(cr_get(o.states[k], (int64_t[]){c, b, j}) -
                                   cr_get(ob.states[k], (int64_t[]){c, 0, j})) < 1e-13,
                              "%s state %d cell %lld", type->name, k, (long long)c);
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < I; i++) {
                double want = t < lens[b] ? cr_get(xl->grad, (int64_t[]){0, t, i}) : 0.0;
                cr_expect(fabs(cr_get(dx, (int64_t[]){b, t, i}) - want) < 1e-12, "%s dx[%lld,%lld,%lld]",
                          type->name, (long long)b, (long long)t, (long long)i);
            }
        cr_tensor_free(xl);
    }
    /* parameter gradients add up over the sequences */
    for (size_t i = 0; i < ps->n; i++)
        for (int64_t e = 0; e < cr_numel(batched[i]); e++)
            cr_expect(fabs(cr_get_flat(batched[i], e) - cr_get_flat(ps->items[i].value->grad, e)) < 1e-12,
                      "%s grad %s[%lld]", type->name, ps->items[i].name, (long long)e);
    for (size_t i = 0; i < ps->n; i++) cr_tensor_free(batched[i]);
    free(batched);
    cr_tensor_free(dx);
    cr_tensor_free(x);
    cr_tensor_free(lengths);
    cr_rnn_free(m);
    cr_params_free(ps);
}

Test(cells, padding_changes_nothing_mgu) { padding_changes_nothing(&mgu); }
Test(cells, padding_changes_nothing_three_states) { padding_changes_nothing(&tri); }

/* ---- one step of a user cell --------------------------------------------------------------------- */

Test(cells, one_step_matches_the_layer)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(4);
    cr_rnn *m = cr_rnn_init(
        ps, "m",
        (cr_rnn_config){.cell = &tri, .input_size = 2, .hidden_size = 3, .num_layers = 1, .dtype = CR_F64},
        &rng);
    cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(2, 1, 2));
    cr_fill_uniform(x, &rng, -1, 1);
    cr_rnn_output o = cr_rnn_forward_states(m, x, NULL, 0, NULL);
    cr_tensor *z = cr_zeros(CR_F64, CR_SHAPE(2, 3));
    cr_tensor *s[3] = {z, z, z}, *next[3];
    cr_cell_forward_states(&m->cells[0], cr_select(x, 1, 0), s, next);
    for (int k = 0; k < 3; k++)
        for (int64_t i = 0; i < 6; i++)
            cr_expect_eq(cr_get_flat(next[k], i), cr_get_flat(o.states[k], i), "state %d", k);
    EXPECT_ERROR(cr_cell_forward(&m->cells[0], cr_select(x, 1, 0), z, z, &next[0], &next[1]),
                 "cr_cell_forward: cell tri has 3 states; use cr_cell_forward_states");
    cr_rnn_free(m);
    cr_params_free(ps);
}

/* ---- the fused-step hook --------------------------------------------------------------------------- */

static int fused_calls;
static void mgu_fused(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                      cr_tensor **next)
{
    fused_calls++;
    mgu_step(c, w, gx, s, next);
}

Test(cells, layer_prefers_the_fused_step)
{
    cr_cell_type fast = mgu;
    fast.name = "mgu_fast";
    fast.fused_step = mgu_fused;
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(5);
    cr_rnn *m = cr_rnn_init(ps, "m",
                            (cr_rnn_config){.cell = &fast,
                                            .input_size = 2,
                                            .hidden_size = 3,
                                            .num_layers = 2,
                                            .bidirectional = true,
                                            .dtype = CR_F64},
                            &rng);
    cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(2, 5, 2));
    cr_fill_uniform(x, &rng, -1, 1);
    fused_calls = 0;
    cr_tensor *y1 = cr_rnn_forward(m, x, NULL, NULL, NULL).y;
    cr_expect_eq(fused_calls, 4 * 5); /* every step of 2 layers x 2 directions */
    m->fused = false;
    cr_tensor *y2 = cr_rnn_forward(m, x, NULL, NULL, NULL).y;
    cr_expect_eq(fused_calls, 20);
    for (int64_t i = 0; i < cr_numel(y1); i++) cr_expect_eq(cr_get_flat(y1, i), cr_get_flat(y2, i));
    cr_rnn_free(m);
    cr_params_free(ps);
}

/* ---- misuse ---------------------------------------------------------------------------------------- */

/* A step whose output is 2H wide. */
static void wide_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                      cr_tensor **next)
{
    (void)c, (void)w, (void)s;
    next[0] = cr_tanh(gx);
}
/* A step that forgets its second state. */
static void forgetful_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                           cr_tensor **next)
{
    mgu_step(c, w, gx, s, next);
}

static cr_rnn *layer_of(cr_params *ps, const cr_cell_type *t, int64_t I, int64_t H)
{
    cr_rng rng = cr_rng_seed(9);
    return cr_rnn_init(ps, t->name,
                       (cr_rnn_config){.cell = t,
                                       .input_size = I,
                                       .hidden_size = H,
                                       .num_layers = 2,
                                       .bidirectional = true,
                                       .dtype = CR_F64},
                       &rng);
}

Test(cells, misuse_names_the_function_and_shapes)
{
    cr_params *ps = cr_params_init();
    cr_tensor *x = cr_zeros(CR_F64, CR_SHAPE(3, 5, 2));

    cr_cell_type wide = mgu;
    wide.name = "wide";
    wide.step = wide_step;
    cr_rnn *m = layer_of(ps, &wide, 2, 4);
    EXPECT_ERROR(cr_rnn_forward(m, x, NULL, NULL, NULL),
                 "cr_rnn_forward: cell wide: the step returned state 0 as f64 [3,8], expected f64 [3,4]");
    cr_rnn_free(m);

    cr_cell_type forgetful = mgu;
    forgetful.name = "forgetful";
    forgetful.n_states = 2;
    forgetful.step = forgetful_step;
    m = layer_of(ps, &forgetful, 2, 4);
    EXPECT_ERROR(cr_rnn_forward(m, x, NULL, NULL, NULL),
                 "cr_rnn_forward: cell forgetful: the step left state 1 unset (the type declares 2 states)");
    cr_rnn_free(m);

    m = layer_of(ps, &tri, 2, 4);
    cr_tensor *h0 = cr_zeros(CR_F64, CR_SHAPE(4, 3, 4)), *bad = cr_zeros(CR_F64, CR_SHAPE(2, 3, 4));
    EXPECT_ERROR(cr_rnn_forward_states(m, x, NULL, 2, (cr_tensor *[]){h0, h0}),
                 "cr_rnn_forward_states: 2 initial states given, cell tri has 3");
    EXPECT_ERROR(cr_rnn_forward_states(m, x, NULL, 3, (cr_tensor *[]){h0, bad, NULL}),
                 "cr_rnn_forward_states: s0[1] is f64 [2,3,4], expected f64 [4,3,4]");
    EXPECT_ERROR(cr_rnn_forward(m, x, NULL, bad, NULL),
                 "cr_rnn_forward: h0 is f64 [2,3,4], expected f64 [4,3,4]");
    cr_rnn_free(m);

    m = layer_of(ps, &mgu, 2, 4);
    EXPECT_ERROR(cr_rnn_forward(m, x, NULL, h0, h0),
                 "cr_rnn_forward: c0 given to a mgu layer, whose cell has one state");
    cr_tensor *x32 = cr_zeros(CR_F32, CR_SHAPE(3, 5, 2));
    EXPECT_ERROR(cr_rnn_forward(m, x32, NULL, NULL, NULL),
                 "cr_rnn_forward: input is f32 [3,5,2], expected f64 [B,T,2]");
    cr_rnn_free(m);
    cr_params_free(ps);
}

Test(cells, bad_descriptors_are_refused)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(3);
    cr_rnn_config cfg = {.input_size = 2, .hidden_size = 4, .num_layers = 1, .dtype = CR_F64};

    EXPECT_ERROR(cr_rnn_init(ps, "m", cfg, &rng), "cr_rnn_init: no cell type (the config's cell is NULL)");
    cr_cell_type t = mgu;
    t.n_states = 5;
    cfg.cell = &t;
    EXPECT_ERROR(cr_rnn_init(ps, "m", cfg, &rng), "cr_rnn_init: cell mgu has 5 states, expected 1 to 4");
    t = mgu;
    t.step = NULL;
    EXPECT_ERROR(cr_rnn_init(ps, "m", cfg, &rng), "cr_rnn_init: cell mgu has no step function");
    t = mgu;
    t.params = mgu_params + 1; /* the table without its input projection */
    t.n_params = 3;
    EXPECT_ERROR(cr_rnn_init(ps, "m", cfg, &rng), "cr_rnn_init: cell mgu has no input projection");
    static const cr_cell_param twice[] = {{.name = "w_ih", .role = CR_PARAM_INPUT},
                                          {.name = "w_ih", .role = CR_PARAM_INPUT_BIAS}};
    t.params = twice;
    t.n_params = 2;
    EXPECT_ERROR(cr_rnn_init(ps, "m", cfg, &rng), "cr_rnn_init: cell mgu: two parameters are named w_ih");
    static const cr_cell_param vec_t[] = {{.name = "w_ih", .role = CR_PARAM_INPUT},
                                          {.name = "u", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1)}}};
    t.params = vec_t;
    EXPECT_ERROR(
        cr_cell_init(ps, "c",
                     (cr_cell_config){.cell = &t, .input_size = 2, .hidden_size = 4, .dtype = CR_F64}, &rng),
        "cr_cell_init: cell mgu: parameter u is transposed for the step (CR_PARAM_WEIGHT_T) but has 1 dims");
    cfg.cell = &mgu;
    cfg.forget_bias = 1;
    EXPECT_ERROR(cr_rnn_init(ps, "m", cfg, &rng),
                 "cr_rnn_init: forget_bias 1 given, but cell mgu has no forget gate");
    cfg.cell = &cr_cell_lstm;
    cfg.no_bias = true;
    EXPECT_ERROR(cr_rnn_init(ps, "m", cfg, &rng),
                 "cr_rnn_init: forget_bias 1 needs biases, but no_bias is set");
    /* a user cell has no hand-derived BPTT */
    EXPECT_ERROR(cr_bptt_init(&mgu, CR_F64, 2, 3, 4, 5), "cr_bptt_init: cell mgu has no hand-derived BPTT");
    cr_params_free(ps);
}

/* ---- cr_params_convert ----------------------------------------------------------------------------- */

typedef struct conv_case {
    cr_rnn *m;
    const cr_tensor *lengths;
    cr_tensor *x;
} conv_case;

static cr_tensor *conv_fn(cr_tensor *const *in, void *ctx)
{
    (void)in; /* the parameters, which the layer holds */
    conv_case *c = ctx;
    return cr_rnn_forward(c->m, c->x, c->lengths, NULL, NULL).y;
}

Test(cells, params_convert_runs_an_f32_model_in_f64)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(31);
    cr_rnn *m = cr_rnn_init(ps, "m",
                            (cr_rnn_config){.cell = &mgu,
                                            .input_size = 2,
                                            .hidden_size = 3,
                                            .num_layers = 2,
                                            .bidirectional = true,
                                            .dtype = CR_F32},
                            &rng);
    cr_linear head = cr_linear_init(ps, "head", 6, 2, true, CR_F32, &rng);
    size_t n = ps->n;
    cr_tensor **keep = calloc(n, sizeof *keep);
    for (size_t i = 0; i < n; i++) {
        keep[i] = cr_tensor_init(CR_F32, ps->items[i].value->ndim, ps->items[i].value->shape);
        cr_copy_(keep[i], ps->items[i].value);
    }
    /* an f32 step leaves gradients, which the conversion drops */
    cr_tensor *x32 = cr_tensor_init(CR_F32, CR_SHAPE(2, 4, 2));
    cr_fill_uniform(x32, &rng, -1, 1);
    cr_tensor *y = cr_linear_forward(&head, cr_rnn_forward(m, x32, NULL, NULL, NULL).y);
    cr_backward(cr_sum(y));
    cr_assert_not_null(head.weight->grad);
    cr_tensor *y32 = cr_tensor_init(CR_F32, y->ndim, y->shape);
    cr_copy_(y32, y);
    cr_tensor *w0 = ps->items[0].value;
    uint64_t v0 = cr_tensor_version(w0);
    cr_graph_clear(g);

    cr_params_convert(ps, CR_F64);
    cr_assert_eq(ps->items[0].value, w0); /* the same header the layer holds */
    cr_expect_gt(cr_tensor_version(w0), v0);
    for (size_t i = 0; i < n; i++) {
        cr_tensor *t = ps->items[i].value;
        cr_assert_eq(t->dtype, CR_F64, "%s", ps->items[i].name);
        cr_assert_null(t->grad, "%s", ps->items[i].name);
        for (int64_t e = 0; e < cr_numel(t); e++)
            cr_assert_eq(((double *)t->data)[e], (double)((float *)keep[i]->data)[e]);
    }
    /* the same layer objects now run in f64: the function of the f32 model
     * (on the same inputs, to f32 rounding), and check in f64 */
    cr_tensor *x = cr_tensor_init(CR_F64, CR_SHAPE(2, 4, 2));
    cr_copy_(x, x32); /* exact: the f32 values widened */
    cr_tensor *y64 = cr_linear_forward(&head, cr_rnn_forward(m, x, NULL, NULL, NULL).y);
    for (int64_t e = 0; e < cr_numel(y64); e++)
        cr_expect(fabs(cr_get_flat(y64, e) - cr_get_flat(y32, e)) < 1e-5, "y[%lld]: f64 %.9g, f32 %.9g",
                  (long long)e, cr_get_flat(y64, e), cr_get_flat(y32, e));
    cr_tensor *lengths = lengths_of(2, (int32_t[]){4, 3});
    conv_case c = {.m = m, .lengths = lengths, .x = x};
    cr_gradcheck_report rep;
    cr_tensor *in[64];
    for (size_t i = 0; i < n - 2; i++) in[i] = ps->items[i].value; /* the layer's, not the head's */
    double err = cr_gradcheck(conv_fn, &c, (int)(n - 2), in, 1e-5, &rep);
    cr_expect(err < 1e-6, "gradcheck after conversion: %.3g", err);
    cr_expect_gt(rep.n_checked, 150);
    EXPECT_ERROR(cr_rnn_forward(m, x32, NULL, NULL, NULL),
                 "cr_rnn_forward: input is f32 [2,4,2], expected f64 [B,T,2]");

    /* and back: f32 -> f64 -> f32 is exact */
    cr_params_convert(ps, CR_F32);
    for (size_t i = 0; i < n; i++)
        cr_assert(memcmp(ps->items[i].value->data, keep[i]->data, (size_t)cr_numel(keep[i]) * 4) == 0, "%s",
                  ps->items[i].name);
    cr_rnn_forward(m, x32, NULL, NULL, NULL);
    EXPECT_ERROR(cr_params_convert(ps, CR_I32), "cr_params_convert: dtype i32, expected f32 or f64");
    for (size_t i = 0; i < n; i++) cr_tensor_free(keep[i]);
    free(keep);
    cr_tensor_free(x);
    cr_tensor_free(x32);
    cr_tensor_free(y32);
    cr_tensor_free(lengths);
    cr_rnn_free(m);
    cr_params_free(ps);
}

/* ---- Xavier and Kaiming: PyTorch's bounds and the uniform's statistics -------------------------------- */

/* Every |value| <= bound, the largest close to it, mean 0 and variance
 * bound^2 / 3 within 5 standard errors. */
static void expect_uniform(const cr_tensor *t, double bound, const char *what)
{
    int64_t n = cr_numel(t);
    double sum = 0, sq = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = cr_get_flat(t, i);
        sum += v;
        sq += v * v;
        mx = fmax(mx, fabs(v));
    }
    double mean = sum / (double)n, var = sq / (double)n - mean * mean, want = bound * bound / 3;
    cr_expect(mx <= bound && mx > 0.999 * bound, "%s: max %g, bound %g", what, mx, bound);
    cr_expect(fabs(mean) < 5 * sqrt(want / (double)n), "%s: mean %g", what, mean);
    /* var of U^2 is bound^4 (1/5 - 1/9) */
    cr_expect(fabs(var - want) < 5 * bound * bound * sqrt((1.0 / 5 - 1.0 / 9) / (double)n),
              "%s: var %g, want %g", what, var, want);
}

Test(cells, xavier_and_kaiming_match_pytorch)
{
    cr_rng rng = cr_rng_seed(41);
    /* torch.nn.init.xavier_uniform_(w, gain): U(+-gain sqrt(6 / (fan_in + fan_out))) */
    cr_tensor *w = cr_tensor_init(CR_F64, CR_SHAPE(200, 300));
    cr_init_xavier_uniform(w, &rng, 2.0);
    expect_uniform(w, 2.0 * sqrt(6.0 / 500.0), "xavier [200,300]");
    /* kaiming_uniform_(w, a=0, mode='fan_in', nonlinearity='relu'): gain sqrt(2), U(+-gain sqrt(3 / fan_in))
     */
    cr_init_kaiming_uniform(w, &rng);
    expect_uniform(w, sqrt(2.0) * sqrt(3.0 / 300.0), "kaiming [200,300]");
    /* a convolution's weight [out, in, k]: fan_in = in k, fan_out = out k */
    cr_tensor *k = cr_tensor_init(CR_F64, CR_SHAPE(64, 32, 5));
    cr_init_xavier_uniform(k, &rng, 1.0);
    expect_uniform(k, sqrt(6.0 / (32 * 5 + 64 * 5)), "xavier [64,32,5]");
    cr_init_kaiming_uniform(k, &rng);
    expect_uniform(k, sqrt(6.0 / (32 * 5)), "kaiming [64,32,5]");
    cr_tensor *v = cr_tensor_init(CR_F64, CR_SHAPE(10));
    EXPECT_ERROR(cr_init_xavier_uniform(v, &rng, 1.0),
                 "cr_init_xavier_uniform: needs a weight of at least 2 dims, got 1");
    cr_tensor_free(w);
    cr_tensor_free(k);
    cr_tensor_free(v);
}
