/* nn layers: PyTorch parity on committed fixtures (sequence layers, cells,
 * Linear, Embedding, LayerNorm), float64 gradient checks of every cell and
 * sequence layer, variable-length batches, initialisers and losses. */
#include "expect_error.h"
#include "fixture.h"

static cr_graph *g;
static void setup(void) { cr_graph_use(g = cr_graph_init()); }
static void teardown(void) { cr_graph_free(g); }
TestSuite(nn, .init = setup, .fini = teardown);

static cr_tensor *leaf(cr_tensor *t)
{
    cr_requires_grad(t, true);
    return t;
}

/* loss = sum(a * w) for a fixture weight w */
static cr_tensor *weighted(cr_tensor *a, cr_tensor *w) { return cr_sum(cr_mul(a, w)); }

/* ---- PyTorch parity: sequence layers -------------------------------------------------- */

static void seq_parity(const char *file, const cr_cell_type *type, cr_dtype dt, double tol)
{
    cr_st_file *f = fixture_open(file);
    cr_rnn_config cfg = {.cell = type,
                         .input_size = fixture_meta_int(f, "input_size"),
                         .hidden_size = fixture_meta_int(f, "hidden_size"),
                         .num_layers = (int)fixture_meta_int(f, "num_layers"),
                         .bidirectional = fixture_meta_int(f, "bidirectional"),
                         .dtype = dt};
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(1);
    cr_rnn *m = cr_rnn_init(ps, NULL, cfg, &rng);
    for (size_t i = 0; i < ps->n; i++) fixture_copy(f, ps->items[i].name, ps->items[i].value);
    bool lstm = type == &cr_cell_lstm;
    cr_tensor *x = leaf(fixture_tensor(f, "x")), *h0 = leaf(fixture_tensor(f, "h0"));
    cr_tensor *c0 = lstm ? leaf(fixture_tensor(f, "c0")) : NULL;
    cr_tensor *lengths = fixture_tensor(f, "lengths");
    cr_tensor *gy = fixture_tensor(f, "gy"), *gh = fixture_tensor(f, "gh"),
              *gc = lstm ? fixture_tensor(f, "gc") : NULL;

    cr_rnn_output o = cr_rnn_forward(m, x, lengths, h0, c0);
    cr_tensor *loss = cr_add(weighted(o.y, gy), weighted(o.h_n, gh));
    if (lstm) loss = cr_add(loss, weighted(o.c_n, gc));
    cr_backward(loss);

    EXPECT_MATCH(f, "y", o.y, tol);
    EXPECT_MATCH(f, "h_n", o.h_n, tol);
    if (lstm) EXPECT_MATCH(f, "c_n", o.c_n, tol);
    EXPECT_MATCH(f, "loss", loss, tol);
    char name[256];
    for (size_t i = 0; i < ps->n; i++) {
        snprintf(name, sizeof name, "grad.%s", ps->items[i].name);
        EXPECT_MATCH(f, name, ps->items[i].value->grad, tol);
    }
    EXPECT_MATCH(f, "grad.x", x->grad, tol);
    EXPECT_MATCH(f, "grad.h0", h0->grad, tol);
    if (lstm) EXPECT_MATCH(f, "grad.c0", c0->grad, tol);

    cr_tensor *all[] = {x, h0, c0, lengths, gy, gh, gc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) cr_tensor_free(all[i]);
    cr_rnn_free(m);
    cr_params_free(ps);
    cr_st_file_free(f);
}

#define F32_TOL 1e-5
#define F64_TOL 1e-10

Test(nn, torch_rnn_tanh_f64) { seq_parity("rnn_tanh_f64.safetensors", &cr_cell_rnn_tanh, CR_F64, F64_TOL); }
Test(nn, torch_rnn_tanh_f32) { seq_parity("rnn_tanh_f32.safetensors", &cr_cell_rnn_tanh, CR_F32, F32_TOL); }
Test(nn, torch_rnn_relu_f64) { seq_parity("rnn_relu_f64.safetensors", &cr_cell_rnn_relu, CR_F64, F64_TOL); }
Test(nn, torch_rnn_relu_f32) { seq_parity("rnn_relu_f32.safetensors", &cr_cell_rnn_relu, CR_F32, F32_TOL); }
Test(nn, torch_gru_f64) { seq_parity("gru_f64.safetensors", &cr_cell_gru, CR_F64, F64_TOL); }
Test(nn, torch_gru_f32) { seq_parity("gru_f32.safetensors", &cr_cell_gru, CR_F32, F32_TOL); }
Test(nn, torch_lstm_f64) { seq_parity("lstm_f64.safetensors", &cr_cell_lstm, CR_F64, F64_TOL); }
Test(nn, torch_lstm_f32) { seq_parity("lstm_f32.safetensors", &cr_cell_lstm, CR_F32, F32_TOL); }

/* ---- PyTorch parity: cells ---------------------------------------------------------------- */

static void cell_parity(const char *file, const cr_cell_type *type, cr_dtype dt, double tol)
{
    cr_st_file *f = fixture_open(file);
    cr_cell_config cc = {.cell = type,
                         .input_size = fixture_meta_int(f, "input_size"),
                         .hidden_size = fixture_meta_int(f, "hidden_size"),
                         .dtype = dt};
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(2);
    cr_cell cell = cr_cell_init(ps, NULL, cc, &rng);
    for (size_t i = 0; i < ps->n; i++) fixture_copy(f, ps->items[i].name, ps->items[i].value);
    bool lstm = type == &cr_cell_lstm;
    cr_tensor *x = leaf(fixture_tensor(f, "x")), *h = leaf(fixture_tensor(f, "h"));
    cr_tensor *c = lstm ? leaf(fixture_tensor(f, "c")) : NULL;
    cr_tensor *gh = fixture_tensor(f, "gh"), *gc = lstm ? fixture_tensor(f, "gc") : NULL;
    cr_tensor *h_out, *c_out = NULL;
    cr_cell_forward(&cell, x, h, c, &h_out, &c_out);
    cr_tensor *loss = weighted(h_out, gh);
    if (lstm) loss = cr_add(loss, weighted(c_out, gc));
    cr_backward(loss);
    EXPECT_MATCH(f, "h_out", h_out, tol);
    if (lstm) EXPECT_MATCH(f, "c_out", c_out, tol);
    char name[256];
    for (size_t i = 0; i < ps->n; i++) {
        snprintf(name, sizeof name, "grad.%s", ps->items[i].name);
        EXPECT_MATCH(f, name, ps->items[i].value->grad, tol);
    }
    EXPECT_MATCH(f, "grad.x", x->grad, tol);
    EXPECT_MATCH(f, "grad.h", h->grad, tol);
    if (lstm) EXPECT_MATCH(f, "grad.c", c->grad, tol);
    cr_tensor *all[] = {x, h, c, gh, gc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) cr_tensor_free(all[i]);
    cr_params_free(ps);
    cr_st_file_free(f);
}

Test(nn, torch_rnncell_f64) { cell_parity("rnncell_f64.safetensors", &cr_cell_rnn_tanh, CR_F64, F64_TOL); }
Test(nn, torch_rnncell_f32) { cell_parity("rnncell_f32.safetensors", &cr_cell_rnn_tanh, CR_F32, F32_TOL); }
Test(nn, torch_grucell_f64) { cell_parity("grucell_f64.safetensors", &cr_cell_gru, CR_F64, F64_TOL); }
Test(nn, torch_grucell_f32) { cell_parity("grucell_f32.safetensors", &cr_cell_gru, CR_F32, F32_TOL); }
Test(nn, torch_lstmcell_f64) { cell_parity("lstmcell_f64.safetensors", &cr_cell_lstm, CR_F64, F64_TOL); }
Test(nn, torch_lstmcell_f32) { cell_parity("lstmcell_f32.safetensors", &cr_cell_lstm, CR_F32, F32_TOL); }

/* ---- PyTorch parity: Linear, Embedding, LayerNorm -------------------------------------------- */

Test(nn, torch_linear)
{
    cr_st_file *f = fixture_open("linear_f64.safetensors");
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(3);
    cr_linear l = cr_linear_init(ps, NULL, fixture_meta_int(f, "in_features"),
                                 fixture_meta_int(f, "out_features"), true, CR_F64, &rng);
    fixture_copy(f, "weight", l.weight);
    fixture_copy(f, "bias", l.bias);
    cr_tensor *x = leaf(fixture_tensor(f, "x")), *gy = fixture_tensor(f, "gy");
    cr_tensor *y = cr_linear_forward(&l, x);
    cr_backward(weighted(y, gy));
    EXPECT_MATCH(f, "y", y, F64_TOL);
    EXPECT_MATCH(f, "grad.weight", l.weight->grad, F64_TOL);
    EXPECT_MATCH(f, "grad.bias", l.bias->grad, F64_TOL);
    EXPECT_MATCH(f, "grad.x", x->grad, F64_TOL);
    cr_tensor_free(x);
    cr_tensor_free(gy);
    cr_params_free(ps);
    cr_st_file_free(f);
}

Test(nn, torch_embedding)
{
    cr_st_file *f = fixture_open("embedding_f64.safetensors");
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(4);
    cr_embedding e = cr_embedding_init(ps, NULL, fixture_meta_int(f, "num_embeddings"),
                                       fixture_meta_int(f, "embedding_dim"),
                                       fixture_meta_int(f, "padding_idx"), CR_F64, &rng);
    fixture_copy(f, "weight", e.weight);
    cr_tensor *idx = fixture_tensor(f, "indices"), *gy = fixture_tensor(f, "gy");
    cr_tensor *y = cr_embedding_forward(&e, idx);
    cr_backward(weighted(y, gy));
    EXPECT_MATCH(f, "y", y, F64_TOL);
    EXPECT_MATCH(f, "grad.weight", e.weight->grad, F64_TOL);
    for (int64_t j = 0; j < e.weight->shape[1]; j++)
        cr_expect_eq(cr_get_flat(e.weight->grad, e.padding_idx * e.weight->shape[1] + j), 0.0);
    cr_tensor_free(idx);
    cr_tensor_free(gy);
    cr_params_free(ps);
    cr_st_file_free(f);
}

Test(nn, torch_layernorm)
{
    cr_st_file *f = fixture_open("layernorm_f64.safetensors");
    cr_params *ps = cr_params_init();
    cr_layernorm ln = cr_layernorm_init(ps, NULL, fixture_meta_int(f, "normalized_shape"),
                                        strtod(cr_st_meta_get(f, "eps"), NULL), CR_F64);
    fixture_copy(f, "weight", ln.weight);
    fixture_copy(f, "bias", ln.bias);
    cr_tensor *x = leaf(fixture_tensor(f, "x")), *gy = fixture_tensor(f, "gy");
    cr_tensor *y = cr_layernorm_forward(&ln, x);
    cr_backward(weighted(y, gy));
    EXPECT_MATCH(f, "y", y, F64_TOL);
    EXPECT_MATCH(f, "grad.weight", ln.weight->grad, F64_TOL);
    EXPECT_MATCH(f, "grad.bias", ln.bias->grad, F64_TOL);
    EXPECT_MATCH(f, "grad.x", x->grad, F64_TOL);
    cr_tensor_free(x);
    cr_tensor_free(gy);
    cr_params_free(ps);
    cr_st_file_free(f);
}

/* ---- float64 gradient checks of cells and sequence layers ------------------------------------- */

typedef struct seq_case {
    cr_rnn *m;
    const cr_tensor *lengths;
    int n_in; /* inputs: params..., x, h0, (c0) */
} seq_case;

static cr_tensor *flat(cr_tensor *t) { return cr_reshape(t, CR_SHAPE(-1)); }

static cr_tensor *seq_fn(cr_tensor *const *in, void *ctx)
{
    seq_case *c = ctx;
    bool lstm = c->m->cfg.cell->n_states == 2;
    int k = c->n_in - (lstm ? 3 : 2);
    cr_rnn_output o = cr_rnn_forward(c->m, in[k], c->lengths, in[k + 1], lstm ? in[k + 2] : NULL);
    cr_tensor *parts[3] = {flat(o.y), flat(o.h_n), lstm ? flat(o.c_n) : NULL};
    return cr_concat(lstm ? 3 : 2, parts, 0);
}

static void seq_gradcheck(cr_rnn_config cfg, bool var_len)
{
    cfg.input_size = 2;
    cfg.hidden_size = 3;
    cfg.dtype = CR_F64;
    int64_t B = 3, T = 4;
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(11);
    cr_rnn *m = cr_rnn_init(ps, "rnn", cfg, &rng);
    bool lstm = cfg.cell->n_states == 2;
    int dirs = cfg.bidirectional ? 2 : 1;
    cr_tensor *in[64];
    int n = 0;
    for (size_t i = 0; i < ps->n; i++) in[n++] = ps->items[i].value;
    cr_tensor *x = leaf(cr_tensor_init(CR_F64, CR_SHAPE(B, T, 2)));
    cr_tensor *h0 = leaf(cr_tensor_init(CR_F64, CR_SHAPE(cfg.num_layers * dirs, B, 3)));
    cr_tensor *c0 = lstm ? leaf(cr_tensor_init(CR_F64, CR_SHAPE(cfg.num_layers * dirs, B, 3))) : NULL;
    cr_fill_uniform(x, &rng, -1, 1);
    cr_fill_uniform(h0, &rng, -0.5, 0.5);
    in[n++] = x;
    in[n++] = h0;
    if (c0) {
        cr_fill_uniform(c0, &rng, -0.5, 0.5);
        in[n++] = c0;
    }
    cr_tensor *lengths = cr_tensor_init(CR_I32, CR_SHAPE(B));
    int32_t lens[3] = {4, 2, 1};
    memcpy(lengths->data, lens, sizeof lens);
    seq_case c = {.m = m, .lengths = var_len ? lengths : NULL, .n_in = n};
    cr_gradcheck_report rep;
    double err = cr_gradcheck(seq_fn, &c, n, in, 1e-5, &rep);
    cr_expect(err < 1e-6,
              "%s layers=%d bidir=%d var_len=%d: rel err %.3g at input %d index %lld (%.10g vs %.10g)",
              cfg.cell->name, cfg.num_layers, cfg.bidirectional, var_len, err, rep.worst_input,
              (long long)rep.worst_index, rep.analytic, rep.numeric);
    cr_expect_gt(rep.n_checked, 20);
    cr_tensor_free(x);
    cr_tensor_free(h0);
    cr_tensor_free(c0);
    cr_tensor_free(lengths);
    cr_rnn_free(m);
    cr_params_free(ps);
}

static const cr_cell_type *const all_types[] = {&cr_cell_rnn_tanh, &cr_cell_rnn_relu,
                                                &cr_cell_gru,      &cr_cell_gru_original,
                                                &cr_cell_lstm,     &cr_cell_lstm_peephole};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

Test(nn, gradcheck_one_layer)
{
    for (size_t i = 0; i < N_TYPES; i++)
        seq_gradcheck((cr_rnn_config){.cell = all_types[i], .num_layers = 1}, false);
}

Test(nn, gradcheck_two_layers_bidirectional)
{
    for (size_t i = 0; i < N_TYPES; i++)
        seq_gradcheck((cr_rnn_config){.cell = all_types[i], .num_layers = 2, .bidirectional = true}, false);
}

Test(nn, gradcheck_variable_lengths)
{
    for (size_t i = 0; i < N_TYPES; i++)
        seq_gradcheck((cr_rnn_config){.cell = all_types[i], .num_layers = 2, .bidirectional = true}, true);
}

Test(nn, gradcheck_lstm_peephole_and_forget_bias)
{
    seq_gradcheck((cr_rnn_config){.cell = &cr_cell_lstm_peephole, .num_layers = 1, .forget_bias = 1.0},
                  false);
    seq_gradcheck((cr_rnn_config){.cell = &cr_cell_lstm_peephole, .num_layers = 2, .bidirectional = true},
                  true);
}

Test(nn, gradcheck_without_bias)
{
    seq_gradcheck((cr_rnn_config){.cell = &cr_cell_gru, .num_layers = 1, .no_bias = true}, false);
    seq_gradcheck((cr_rnn_config){.cell = &cr_cell_lstm, .num_layers = 1, .no_bias = true}, false);
}

/* ---- an embedding lookup folded into the input projection ------------------------------------- */

/* Lookups on the current graph's tape: 1 for the embedding, and, when the
 * first layer folded it, one per time step of each of its directions (a
 * step looks its rows up in the table's projection). */
static int lookups_on_tape(void)
{
    const cr_graph *cg = cr_graph_current();
    int n = 0;
    for (size_t i = 0; i < cr_graph_node_count(cg); i++)
        n += !strcmp(cr_graph_node(cg, i)->op->name, "cr_gather_rows");
    return n;
}

typedef struct fold_case {
    cr_rnn *m;
    const cr_tensor *idx, *lengths;
    int lookups; /* on the tape after the forward */
} fold_case;

static cr_tensor *fold_fn(cr_tensor *const *in, void *ctx)
{
    fold_case *c = ctx;
    int k = (int)c->m->cells[0].type->n_params * c->m->cfg.num_layers * c->m->dirs; /* in[k]: the table */
    cr_rnn_output o = cr_rnn_forward(c->m, cr_gather_rows(in[k], c->idx, -1), c->lengths, NULL, NULL);
    int n = lookups_on_tape(); /* the analytic pass records; the numeric ones need no tape */
    if (n > c->lookups) c->lookups = n;
    cr_tensor *parts[2] = {flat(o.y), flat(o.h_n)};
    return cr_concat(2, parts, 0);
}

static void idx_fill(cr_tensor *idx, int64_t V)
{
    for (int64_t i = 0; i < cr_numel(idx); i++) ((int32_t *)idx->data)[i] = (int32_t)((i * 7 + 2) % V);
}

/* Through the fold, the table's, the weights' and the biases' gradients
 * are right (central differences, f64), bidirectional, two layers, uneven
 * lengths: every cell type. */
Test(nn, gradcheck_through_a_folded_lookup)
{
    for (size_t t = 0; t < N_TYPES; t++) {
        int64_t B = 3, T = 4, V = 3, I = 2;
        cr_params *ps = cr_params_init();
        cr_rng rng = cr_rng_seed(31);
        cr_rnn *m = cr_rnn_init(ps, "rnn",
                                (cr_rnn_config){.cell = all_types[t],
                                                .input_size = I,
                                                .hidden_size = 3,
                                                .num_layers = 2,
                                                .bidirectional = true,
                                                .dtype = CR_F64},
                                &rng);
        cr_tensor *in[64];
        int n = 0;
        for (size_t i = 0; i < ps->n; i++) in[n++] = ps->items[i].value;
        cr_tensor *table = leaf(cr_tensor_init(CR_F64, CR_SHAPE(V, I)));
        cr_fill_uniform(table, &rng, -1, 1);
        in[n++] = table;
        cr_tensor *idx = cr_tensor_init(CR_I32, CR_SHAPE(B, T)),
                  *lengths = cr_tensor_init(CR_I32, CR_SHAPE(B));
        idx_fill(idx, V);
        memcpy(lengths->data, (int32_t[]){4, 2, 3}, 3 * sizeof(int32_t));
        fold_case c = {.m = m, .idx = idx, .lengths = lengths};
        cr_gradcheck_report rep;
        double err = cr_gradcheck(fold_fn, &c, n, in, 1e-5, &rep);
        cr_expect_eq(c.lookups, 1 + 2 * T,
                     "%s: %d lookups on the tape, expected the embedding's and one per step and direction",
                     all_types[t]->name, c.lookups);
        cr_expect(err < 1e-6, "%s: rel err %.3g at input %d index %lld (%.10g vs %.10g)", all_types[t]->name,
                  err, rep.worst_input, (long long)rep.worst_index, rep.analytic, rep.numeric);
        cr_expect_gt(rep.n_checked, 20);
        cr_tensor_free(table);
        cr_tensor_free(idx);
        cr_tensor_free(lengths);
        cr_rnn_free(m);
        cr_params_free(ps);
    }
}

/* y and every parameter's gradient of one forward and backward (loss: the
 * sum of y^2) of m on e's lookup of idx, copied out of the graph (which is
 * cleared); `lookups`: the lookups the forward must leave on the tape. */
typedef struct {
    cr_tensor *y, **grads;
    size_t n;
} layer_run;

static layer_run run_on_lookup(cr_params *ps, cr_rnn *m, cr_embedding *e, const cr_tensor *idx, int lookups,
                               const char *what)
{
    cr_params_zero_grad(ps);
    cr_rnn_output o = cr_rnn_forward(m, cr_embedding_forward(e, idx), NULL, NULL, NULL);
    cr_expect_eq(lookups_on_tape(), lookups, "%s: %d lookups, expected %d", what, lookups_on_tape(), lookups);
    cr_backward(cr_sum(cr_mul(o.y, o.y)));
    layer_run r = {.y = cr_tensor_init(o.y->dtype, o.y->ndim, o.y->shape), .n = ps->n};
    cr_copy_(r.y, o.y);
    r.grads = calloc(ps->n, sizeof *r.grads);
    for (size_t i = 0; i < ps->n; i++) {
        const cr_tensor *v = ps->items[i].value;
        cr_assert(v->grad, "%s: no gradient for %s", what, ps->items[i].name);
        r.grads[i] = cr_tensor_init(v->dtype, v->ndim, v->shape);
        cr_copy_(r.grads[i], v->grad);
    }
    cr_graph_clear(g);
    return r;
}

static void layer_run_free(layer_run *r)
{
    for (size_t i = 0; i < r->n; i++) cr_tensor_free(r->grads[i]);
    free(r->grads);
    cr_tensor_free(r->y);
}

/* An embedding of V rows of I into a sequence layer of `layers` layers of
 * hidden size H, in ps (new), with idx [B, T] filled with indices below V. */
typedef struct {
    cr_params *ps;
    cr_embedding e;
    cr_rnn *m;
    cr_tensor *idx;
} lookup_layer;

static lookup_layer lookup_layer_init(const cr_cell_type *type, cr_dtype dt, int layers, uint64_t seed,
                                      int64_t B, int64_t T, int64_t V, int64_t I, int64_t H)
{
    lookup_layer l = {.ps = cr_params_init()};
    cr_rng rng = cr_rng_seed(seed);
    l.e = cr_embedding_init(l.ps, "emb", V, I, -1, dt, &rng);
    l.m = cr_rnn_init(
        l.ps, "rnn",
        (cr_rnn_config){.cell = type, .input_size = I, .hidden_size = H, .num_layers = layers, .dtype = dt},
        &rng);
    l.idx = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
    idx_fill(l.idx, V);
    return l;
}

static void lookup_layer_free(lookup_layer *l)
{
    cr_tensor_free(l->idx);
    cr_rnn_free(l->m);
    cr_params_free(l->ps);
}

/* The folded layer's outputs, loss and gradients against the same layer
 * with m->fold_lookup off: outputs equal to rounding, gradients (summed in
 * another order) to 1e-13 in f64 and 1e-5 in f32. */
static void fold_against_plain(const cr_cell_type *type, cr_dtype dt, double tol)
{
    const int64_t T = 16;
    lookup_layer l = lookup_layer_init(type, dt, 2, 41, 4, T, 5, 6, 8);
    cr_params *ps = l.ps;
    cr_rnn *m = l.m;
    layer_run run[2];
    for (int fold = 1; fold >= 0; fold--) {
        char what[64];
        snprintf(what, sizeof what, "%s fold=%d", type->name, fold);
        m->fold_lookup = fold;
        run[fold] = run_on_lookup(ps, m, &l.e, l.idx, 1 + fold * (int)T, what);
    }
    for (int64_t k = 0; k < cr_numel(run[0].y); k++)
        cr_expect(fabs(cr_get_flat(run[0].y, k) - cr_get_flat(run[1].y, k)) <= tol * 1e-2, "%s y[%lld]",
                  type->name, (long long)k);
    for (size_t i = 0; i < ps->n; i++) {
        double worst = 0, scale = 0;
        for (int64_t k = 0; k < cr_numel(run[0].grads[i]); k++) {
            worst = fmax(worst, fabs(cr_get_flat(run[0].grads[i], k) - cr_get_flat(run[1].grads[i], k)));
            scale = fmax(scale, fabs(cr_get_flat(run[0].grads[i], k)));
        }
        cr_expect(scale > 0 && worst <= tol * scale, "%s %s: gradient of %s differs by %.3g (scale %.3g)",
                  type->name, cr_dtype_name(dt), ps->items[i].name, worst, scale);
    }
    layer_run_free(&run[0]);
    layer_run_free(&run[1]);
    lookup_layer_free(&l);
}

Test(nn, folded_lookup_matches_the_plain_projection)
{
    for (size_t t = 0; t < N_TYPES; t++) {
        fold_against_plain(all_types[t], CR_F64, 1e-13);
        fold_against_plain(all_types[t], CR_F32, 1e-5);
    }
}

/* No fold where it would be wrong or dear: a padding_idx (its row gets no
 * gradient, the product's weight gradient still needs it), a table or an
 * embedding output written after the lookup (the fold would read the new
 * values), a table with more than half as many rows as lookups. The layer
 * then sees the values it was given. */
Test(nn, lookup_is_not_folded_when_it_would_change_the_result)
{
    int64_t B = 2, T = 6, V = 4, I = 3;
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(51);
    cr_rnn *m = cr_rnn_init(
        ps, "rnn",
        (cr_rnn_config){
            .cell = &cr_cell_lstm, .input_size = I, .hidden_size = 4, .num_layers = 1, .dtype = CR_F64},
        &rng);
    cr_tensor *table = leaf(cr_tensor_init(CR_F64, CR_SHAPE(V, I))),
              *idx = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
    cr_fill_uniform(table, &rng, -1, 1);
    idx_fill(idx, V);
    for (int c = 0; c < 5; c++) {
        cr_tensor *x = cr_gather_rows(table, idx, c == 0 ? 1 : -1);
        cr_tensor *want = NULL;
        if (c == 1 || c == 2) { /* written after the lookup: the layer must see x as it is now */
            cr_fill(c == 1 ? table : x, 0.25);
            want = cr_tensor_init(CR_F64, CR_SHAPE(B, T, I));
            cr_fill(want, c == 1 ? cr_get_flat(x, 0) : 0.25);
            if (c == 1) cr_copy_(want, x);
        }
        if (c == 3) x = cr_gather_rows(table, cr_narrow(idx, 1, 0, 3), -1); /* 6 lookups of 4 rows */
        int before = lookups_on_tape();
        cr_rnn_output o = cr_rnn_forward(m, x, NULL, NULL, NULL);
        cr_expect_eq(lookups_on_tape(), before + (c == 4 ? T : 0), "case %d: %d lookups added", c,
                     lookups_on_tape() - before);
        if (want) {
            m->fold_lookup = false;
            cr_rnn_output p = cr_rnn_forward(m, want, NULL, NULL, NULL);
            m->fold_lookup = true;
            for (int64_t k = 0; k < cr_numel(o.y); k++)
                cr_expect_eq(cr_get_flat(o.y, k), cr_get_flat(p.y, k), "case %d: y[%lld]", c, (long long)k);
            cr_tensor_free(want);
        }
        cr_graph_clear(g);
        if (c == 1) cr_fill_uniform(table, &rng, -1, 1);
    }
    /* a lookup of a cleared step is not one to fold, though its header and
     * node are still intact (nothing has been allocated since the clear) */
    cr_tensor *old = cr_gather_rows(table, idx, -1), *t;
    const cr_tensor *ix;
    cr_expect(cr_gather_rows_source(old, &t, &ix), "a lookup of this step");
    cr_graph_clear(g);
    cr_expect(!cr_gather_rows_source(old, &t, &ix), "a lookup of a cleared step taken for a foldable one");
    cr_tensor_free(table);
    cr_tensor_free(idx);
    cr_rnn_free(m);
    cr_params_free(ps);
}

/* A folded lookup in recomputed segments: backward looks each step's rows up
 * again, the same rows (outputs and gradients equal the plain run's bit for
 * bit), and indices written after the forward are an error, not other rows. */
Test(nn, folded_lookup_in_recomputed_segments)
{
    const int64_t T = 8, V = 4;
    lookup_layer l = lookup_layer_init(&cr_cell_lstm, CR_F64, 1, 61, 3, T, V, 3, 5);
    cr_params *ps = l.ps;
    cr_rnn *m = l.m;
    cr_tensor *idx = l.idx;
    layer_run run[2];
    for (int r = 0; r < 2; r++) {
        m->cfg.recompute_steps = r ? 3 : 0;
        /* the segments' steps are not on the tape (one cr_recompute node each) */
        run[r] = run_on_lookup(ps, m, &l.e, idx, r ? 1 : 1 + (int)T,
                               r ? "recompute_steps 3" : "recompute_steps 0");
    }
    for (int64_t k = 0; k < cr_numel(run[0].y); k++)
        cr_expect_eq(cr_get_flat(run[0].y, k), cr_get_flat(run[1].y, k), "y[%lld]", (long long)k);
    for (size_t i = 0; i < ps->n; i++)
        for (int64_t k = 0; k < cr_numel(run[0].grads[i]); k++)
            cr_expect_eq(cr_get_flat(run[0].grads[i], k), cr_get_flat(run[1].grads[i], k),
                         "gradient of %s[%lld]", ps->items[i].name, (long long)k);
    layer_run_free(&run[0]);
    layer_run_free(&run[1]);
    cr_rnn_output o = cr_rnn_forward(m, cr_embedding_forward(&l.e, idx), NULL, NULL, NULL);
    cr_tensor *loss = cr_sum(cr_mul(o.y, o.y));
    cr_set_flat(idx, 0, (cr_get_flat(idx, 0) + 1) < V ? cr_get_flat(idx, 0) + 1 : 0);
    EXPECT_ERROR(cr_backward(loss), "indices of the embedding lookup were written");
    cr_graph_clear(g);
    lookup_layer_free(&l);
}

/* ---- variable lengths: a padded batch equals each sequence run alone ---------------------------- */

Test(nn, padding_changes_nothing)
{
    for (size_t mi = 0; mi < N_TYPES; mi++) {
        const cr_cell_type *type = all_types[mi];
        bool lstm = type->n_states == 2;
        int64_t B = 3, T = 5, I = 2, H = 3;
        cr_params *ps = cr_params_init();
        cr_rng rng = cr_rng_seed(21);
        cr_rnn_config cfg = {.cell = type,
                             .input_size = I,
                             .hidden_size = H,
                             .num_layers = 2,
                             .bidirectional = true,
                             .dtype = CR_F64};
        cr_rnn *m = cr_rnn_init(ps, "m", cfg, &rng);
        cr_tensor *x = cr_tensor_init(CR_F64, CR_SHAPE(B, T, I));
        cr_fill_uniform(x, &rng, -1, 1);
        cr_tensor *lengths = cr_tensor_init(CR_I32, CR_SHAPE(B));
        int32_t lens[3] = {5, 2, 3};
        memcpy(lengths->data, lens, sizeof lens);

        /* batched, with garbage in the padding */
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = lens[b]; t < T; t++)
                for (int64_t i = 0; i < I; i++) cr_set(x, (int64_t[]){b, t, i}, 1e3 * (double)(t + 1));
        cr_rnn_output o = cr_rnn_forward(m, x, lengths, NULL, NULL);
        cr_tensor *loss = cr_add(cr_sum(cr_square(o.y)), cr_sum(o.h_n));
        if (lstm) loss = cr_add(loss, cr_sum(o.c_n));
        cr_backward(loss);
        size_t np = ps->n;
        cr_tensor **batched = calloc(np, sizeof *batched);
        for (size_t i = 0; i < np; i++) {
            batched[i] = cr_tensor_init(CR_F64, ps->items[i].value->ndim, ps->items[i].value->shape);
            cr_copy_(batched[i], ps->items[i].value->grad);
        }
        cr_tensor *y_batched = cr_contiguous_copy(o.y), *h_batched = cr_contiguous_copy(o.h_n);
        cr_params_zero_grad(ps);

        /* one sequence at a time; parameter gradients add up over the three */
        for (int64_t b = 0; b < B; b++) {
            cr_tensor *xb = cr_contiguous(cr_narrow(cr_select(x, 0, b), 0, 0, lens[b]));
            xb = cr_reshape(xb, CR_SHAPE(1, lens[b], I));
            cr_rnn_output ob = cr_rnn_forward(m, xb, NULL, NULL, NULL);
            cr_tensor *lb = cr_add(cr_sum(cr_square(ob.y)), cr_sum(ob.h_n));
            if (lstm) lb = cr_add(lb, cr_sum(ob.c_n));
            cr_backward(lb);
            for (int64_t t = 0; t < T; t++)
                for (int64_t j = 0; j < 2 * H; j++) {
                    double want = t < lens[b] ? cr_get(ob.y, (int64_t[]){0, t, j}) : 0.0;
                    cr_expect(fabs(cr_get(y_batched, (int64_t[]){b, t, j}) - want) < 1e-13,
                              "%s y[%lld,%lld,%lld]", type->name, (long long)b, (long long)t, (long long)j);
                }
            for (int64_t k = 0; k < 4; k++)
                for (int64_t j = 0; j < H; j++)
                    cr_expect(fabs(cr_get(h_batched, (int64_t[]){k, b, j}) -
                                   cr_get(ob.h_n, (int64_t[]){k, 0, j})) < 1e-13,
                              "%s h_n", type->name);
        }
        for (size_t i = 0; i < np; i++)
            for (int64_t e = 0; e < cr_numel(batched[i]); e++)
                cr_expect(fabs(cr_get_flat(batched[i], e) - cr_get_flat(ps->items[i].value->grad, e)) < 1e-12,
                          "%s grad %s[%lld]", type->name, ps->items[i].name, (long long)e);
        for (size_t i = 0; i < np; i++) cr_tensor_free(batched[i]);
        free(batched);
        cr_tensor_free(x);
        cr_tensor_free(lengths);
        cr_rnn_free(m);
        cr_params_free(ps);
        cr_graph_clear(g);
    }
}

/* ---- initialisers, losses, misuse ------------------------------------------------------------------- */

Test(nn, orthogonal_blocks_have_spectral_radius_one)
{
    cr_tensor *w = cr_tensor_init(CR_F64, CR_SHAPE(8, 4)); /* two [4,4] gate blocks */
    cr_rng rng = cr_rng_seed(5);
    cr_init_orthogonal(w, &rng, 1.0, 4);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                double dot = 0; /* rows of an orthogonal block are orthonormal */
                for (int k = 0; k < 4; k++)
                    dot += cr_get_flat(w, (b * 4 + i) * 4 + k) * cr_get_flat(w, (b * 4 + j) * 4 + k);
                cr_expect(fabs(dot - (i == j)) < 1e-12);
            }
    cr_tensor_free(w);
}

Test(nn, init_bounds_and_forget_bias)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(6);
    cr_cell c = cr_cell_init(
        ps, "lstm",
        (cr_cell_config){
            .cell = &cr_cell_lstm, .input_size = 5, .hidden_size = 16, .forget_bias = 1.0, .dtype = CR_F32},
        &rng);
    double bound = 0.25;
    cr_tensor *w_hh = cr_cell_get(&c, "w_hh"), *b_ih = cr_cell_get(&c, "b_ih"),
              *b_hh = cr_cell_get(&c, "b_hh");
    for (int64_t i = 0; i < cr_numel(w_hh); i++) cr_expect(fabs(cr_get_flat(w_hh, i)) <= bound);
    for (int64_t j = 16; j < 32; j++) {
        cr_expect_eq(cr_get_flat(b_ih, j), 1.0);
        cr_expect_eq(cr_get_flat(b_hh, j), 0.0);
    }
    cr_expect_not_null(cr_params_get(ps, "lstm.w_ih"));
    cr_expect_eq(cr_params_numel(ps), (size_t)(64 * 5 + 64 * 16 + 64 * 2));
    cr_params_free(ps);
}

Test(nn, losses)
{
    cr_tensor *p = cr_from_array(CR_F64, CR_SHAPE(3), (double[]){1, 2, 3});
    cr_tensor *t = cr_from_array(CR_F64, CR_SHAPE(3), (double[]){1, 0, 5});
    cr_expect(fabs(cr_item(cr_mse_loss(p, t, CR_MEAN)) - (0 + 4 + 4) / 3.0) < 1e-15);
    cr_expect(fabs(cr_item(cr_mse_loss(p, t, CR_SUM)) - 8.0) < 1e-15);
    cr_tensor *x = cr_from_array(CR_F64, CR_SHAPE(2), (double[]){0.3, -40.0});
    cr_tensor *y = cr_from_array(CR_F64, CR_SHAPE(2), (double[]){1, 0});
    double want = (-log(1 / (1 + exp(-0.3))) + -log(1 - 1 / (1 + exp(40.0)))) / 2;
    cr_expect(fabs(cr_item(cr_bce_with_logits(x, y, CR_MEAN)) - want) < 1e-15);
}

Test(nn, misuse_names_the_op_and_shapes)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(7);
    cr_rnn *m = cr_rnn_init(
        ps, "lstm",
        (cr_rnn_config){
            .cell = &cr_cell_lstm, .input_size = 4, .hidden_size = 8, .num_layers = 1, .dtype = CR_F32},
        &rng);
    cr_tensor *x = cr_zeros(CR_F32, CR_SHAPE(2, 3, 5));
    EXPECT_ERROR(cr_rnn_forward(m, x, NULL, NULL, NULL),
                 "cr_rnn_forward: input is f32 [2,3,5], expected f32 [B,T,4]");
    cr_tensor *x4 = cr_zeros(CR_F32, CR_SHAPE(2, 3, 4));
    cr_tensor *len = cr_from_array(CR_I32, CR_SHAPE(2), (int32_t[]){3, 4});
    EXPECT_ERROR(cr_rnn_forward(m, x4, len, NULL, NULL),
                 "cr_rnn_forward: length 4 of sequence 1 is not in [1, 3]");
    cr_tensor *h0 = cr_zeros(CR_F32, CR_SHAPE(2, 2, 8));
    EXPECT_ERROR(cr_rnn_forward(m, x4, NULL, h0, NULL),
                 "cr_rnn_forward: h0 is f32 [2,2,8], expected f32 [1,2,8]");
    cr_rnn_free(m);
    cr_params_free(ps);
}

Test(nn, dropout_between_layers_only_in_training)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(8);
    cr_rnn_config cfg = {.cell = &cr_cell_gru,
                         .input_size = 3,
                         .hidden_size = 5,
                         .num_layers = 2,
                         .dropout = 0.5,
                         .dtype = CR_F64};
    cr_rnn *m = cr_rnn_init(ps, "gru", cfg, &rng);
    cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(2, 4, 3));
    cr_fill_uniform(x, &rng, -1, 1);
    /* eval: no dropout, the same numbers every call and as a dropout-free model */
    m->train = false;
    cr_tensor *e1 = cr_rnn_forward(m, x, NULL, NULL, NULL).y, *e2 = cr_rnn_forward(m, x, NULL, NULL, NULL).y;
    m->cfg.dropout = 0;
    m->train = true;
    cr_tensor *e3 = cr_rnn_forward(m, x, NULL, NULL, NULL).y;
    for (int64_t i = 0; i < cr_numel(e1); i++) {
        cr_expect_eq(cr_get_flat(e1, i), cr_get_flat(e2, i));
        cr_expect_eq(cr_get_flat(e1, i), cr_get_flat(e3, i));
    }
    /* train: the second layer sees a masked input, and each call draws a new mask */
    m->cfg.dropout = 0.5;
    cr_tensor *t1 = cr_rnn_forward(m, x, NULL, NULL, NULL).y, *t2 = cr_rnn_forward(m, x, NULL, NULL, NULL).y;
    double d1 = 0, d12 = 0;
    for (int64_t i = 0; i < cr_numel(e1); i++) {
        d1 += fabs(cr_get_flat(t1, i) - cr_get_flat(e1, i));
        d12 += fabs(cr_get_flat(t1, i) - cr_get_flat(t2, i));
    }
    cr_expect_gt(d1, 1e-3);
    cr_expect_gt(d12, 1e-3);
    cr_rnn_free(m);
    cr_params_free(ps);
}
