/*
 * Convolutions and pooling: PyTorch parity on committed fixtures (every op
 * case and a LeNet-5, f32 and f64, outputs and all gradients), the layers'
 * init and names, a conv1d feeding an LSTM (f64 gradient check), results that
 * do not depend on the thread count or the block size, misuse messages.
 */
#include <omp.h>

#include "expect_error.h"
#include "fixture.h"

static cr_graph *g;
static int64_t default_block, default_keep;
static void setup(void)
{
    cr_graph_use(g = cr_graph_init());
    default_block = cr_conv_block_bytes;
    default_keep = cr_conv_keep_bytes;
}
static void teardown(void)
{
    cr_graph_free(g);
    cr_conv_block_bytes = default_block;
    cr_conv_keep_bytes = default_keep;
}
TestSuite(conv, .init = setup, .fini = teardown);

#define F32_TOL 1e-5
#define F64_TOL 1e-10

static cr_tensor *leaf(cr_tensor *t)
{
    cr_requires_grad(t, true);
    return t;
}

/* "2,1" into v[0..n) */
static void meta_list(const cr_st_file *f, const char *name, const char *key, int64_t *v, int n)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", name, key);
    const char *s = cr_st_meta_get(f, k);
    cr_assert_not_null(s, "fixture has no metadata '%s'", k);
    for (int i = 0; i < n; i++) {
        char *end;
        v[i] = strtoll(s, &end, 10);
        cr_assert(end != s, "'%s' = '%s' has fewer than %d values", k, s, n);
        s = *end == ',' ? end + 1 : end;
    }
}

/* worst error of a fixture tensor, asserted below tol */
static double match(const cr_st_file *f, const char *name, const char *what, const cr_tensor *t, double tol)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", name, what);
    double err = fixture_err(f, k, t);
    cr_expect(err <= tol, "%s: error %.3g exceeds %.1g", k, err, tol);
    return err;
}

/* One case of conv_<dtype>.safetensors: the op on the stored inputs, y and
 * every gradient of sum(y * gy) against PyTorch's. */
static double parity_case(const cr_st_file *f, const char *name, double tol)
{
    char k[128], op[32];
    snprintf(k, sizeof k, "%s.op", name);
    const char *opv = cr_st_meta_get(f, k);
    cr_assert_not_null(opv);
    snprintf(op, sizeof op, "%s", opv);
    snprintf(k, sizeof k, "%s.x", name);
    cr_tensor *x = leaf(fixture_tensor(f, k)), *w = NULL, *b = NULL, *y;
    snprintf(k, sizeof k, "%s.gy", name);
    cr_tensor *gy = fixture_tensor(f, k);
    int nd = strchr(op, '1') ? 1 : 2;
    if (!strncmp(op, "conv", 4)) {
        int64_t s[2], p[2], d[2], groups, bias;
        meta_list(f, name, "stride", s, nd);
        meta_list(f, name, "padding", p, nd);
        meta_list(f, name, "dilation", d, nd);
        meta_list(f, name, "groups", &groups, 1);
        meta_list(f, name, "bias", &bias, 1);
        snprintf(k, sizeof k, "%s.weight", name);
        w = leaf(fixture_tensor(f, k));
        snprintf(k, sizeof k, "%s.bias", name);
        if (bias) b = leaf(fixture_tensor(f, k));
        if (nd == 1)
            y = cr_conv1d(x, w, b, (cr_conv1d_opts){s[0], p[0], d[0], groups});
        else
            y = cr_conv2d(x, w, b, (cr_conv2d_opts){{s[0], s[1]}, {p[0], p[1]}, {d[0], d[1]}, groups});
    } else {
        int64_t kk[2], s[2], p[2];
        meta_list(f, name, "kernel", kk, nd);
        meta_list(f, name, "stride", s, nd);
        meta_list(f, name, "padding", p, nd);
        bool max = !strncmp(op, "max", 3);
        if (nd == 1) {
            cr_pool1d_opts o = {kk[0], s[0], p[0]};
            y = max ? cr_max_pool1d(x, o) : cr_avg_pool1d(x, o);
        } else {
            cr_pool2d_opts o = {{kk[0], kk[1]}, {s[0], s[1]}, {p[0], p[1]}};
            y = max ? cr_max_pool2d(x, o) : cr_avg_pool2d(x, o);
        }
    }
    cr_assert_str_eq(y->node->op->name + 3, op);
    cr_backward_with(y, gy);
    double worst = match(f, name, "y", y, tol);
    worst = fmax(worst, match(f, name, "grad.x", x->grad, tol));
    if (w) worst = fmax(worst, match(f, name, "grad.weight", w->grad, tol));
    if (b) worst = fmax(worst, match(f, name, "grad.bias", b->grad, tol));
    cr_tensor_free(x);
    cr_tensor_free(w);
    cr_tensor_free(b);
    cr_tensor_free(gy);
    cr_graph_clear(g);
    return worst;
}

static void parity_file(const char *file, double tol)
{
    cr_st_file *f = fixture_open(file);
    const char *cases = cr_st_meta_get(f, "cases");
    cr_assert_not_null(cases);
    /* one sample per block (1x1 cases multiply the input directly); the
     * default blocks with the columns built again in backward; both through
     * the products only; the defaults; the direct kernels for every case
     * with stride 1 along W, however many channels; Winograd for every 3x3
     * case with stride 1, dilation 1 and padding at most 2, however many
     * channels */
    int64_t blocks[5] = {1, cr_conv_block_bytes, cr_conv_block_bytes, cr_conv_block_bytes,
                         cr_conv_block_bytes};
    int64_t keep[5] = {cr_conv_keep_bytes, 0, cr_conv_keep_bytes, cr_conv_keep_bytes, cr_conv_keep_bytes};
    int64_t direct[5] = {0, 0, cr_conv_direct_channels, (int64_t)1 << 30, cr_conv_direct_channels},
            default_direct = cr_conv_direct_channels;
    int64_t winograd[5] = {INT64_MAX, INT64_MAX, cr_conv_winograd_channels, INT64_MAX, 1},
            default_winograd = cr_conv_winograd_channels;
    int n_cases = 0;
    double worst = 0;
    for (int k = 0; k < 5; k++) {
        cr_conv_block_bytes = blocks[k];
        cr_conv_keep_bytes = keep[k];
        cr_conv_direct_channels = direct[k];
        cr_conv_winograd_channels = winograd[k];
        n_cases = 0;
        for (const char *s = cases; *s;) {
            const char *e = strchr(s, ',');
            size_t len = e ? (size_t)(e - s) : strlen(s);
            char name[64];
            cr_assert_lt(len, sizeof name);
            memcpy(name, s, len);
            name[len] = '\0';
            worst = fmax(worst, parity_case(f, name, tol));
            n_cases++;
            s += len + (e != NULL);
        }
    }
    cr_conv_direct_channels = default_direct;
    cr_conv_winograd_channels = default_winograd;
    cr_assert_geq(n_cases, 20, "only %d cases in %s", n_cases, file);
    fprintf(stderr, "%s: %d cases, worst error %.3g\n", file, n_cases, worst);
    cr_st_file_free(f);
}

Test(conv, torch_ops_f64) { parity_file("conv_f64.safetensors", F64_TOL); }
Test(conv, torch_ops_f32) { parity_file("conv_f32.safetensors", F32_TOL); }

/* ---- a LeNet-5: the layers, relu, max pooling, a flatten, linear layers, cross-entropy ---- */

typedef struct lenet {
    cr_conv2d_layer conv1, conv2;
    cr_linear fc1, fc2, fc3;
} lenet;

static lenet lenet_init(cr_params *ps, int64_t h1, int64_t h2, cr_dtype dt, cr_rng *rng)
{
    lenet m;
    m.conv1 = cr_conv2d_layer_init(
        ps, "conv1",
        (cr_conv2d_config){
            .in_channels = 1, .out_channels = 6, .kernel = {5, 5}, .padding = {2, 2}, .dtype = dt},
        rng);
    m.conv2 = cr_conv2d_layer_init(
        ps, "conv2", (cr_conv2d_config){.in_channels = 6, .out_channels = 16, .kernel = {5, 5}, .dtype = dt},
        rng);
    m.fc1 = cr_linear_init(ps, "fc1", 400, h1, true, dt, rng);
    m.fc2 = cr_linear_init(ps, "fc2", h1, h2, true, dt, rng);
    m.fc3 = cr_linear_init(ps, "fc3", h2, 10, true, dt, rng);
    return m;
}

static cr_tensor *lenet_forward(const lenet *m, cr_tensor *x)
{
    cr_pool2d_opts pool = {.kernel = {2, 2}};
    cr_tensor *h = cr_max_pool2d(cr_relu(cr_conv2d_layer_forward(&m->conv1, x)), pool); /* [N,6,14,14] */
    h = cr_max_pool2d(cr_relu(cr_conv2d_layer_forward(&m->conv2, h)), pool);            /* [N,16,5,5] */
    h = cr_reshape(h, CR_SHAPE(h->shape[0], 400));
    h = cr_relu(cr_linear_forward(&m->fc1, h));
    h = cr_relu(cr_linear_forward(&m->fc2, h));
    return cr_linear_forward(&m->fc3, h);
}

static void lenet_parity(const char *file, cr_dtype dt, double tol)
{
    cr_st_file *f = fixture_open(file);
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(3);
    lenet m = lenet_init(ps, fixture_meta_int(f, "fc1"), fixture_meta_int(f, "fc2"), dt, &rng);
    cr_assert_eq(ps->n, 10);
    for (size_t i = 0; i < ps->n; i++) fixture_copy(f, ps->items[i].name, ps->items[i].value);
    cr_tensor *x = leaf(fixture_tensor(f, "x")), *target = fixture_tensor(f, "target");
    cr_tensor *logits = lenet_forward(&m, x);
    cr_tensor *loss = cr_cross_entropy(logits, target, -1, CR_MEAN);
    cr_backward(loss);
    double worst = fmax(fixture_err(f, "logits", logits), fixture_err(f, "loss", loss));
    EXPECT_MATCH(f, "logits", logits, tol);
    EXPECT_MATCH(f, "loss", loss, tol);
    EXPECT_MATCH(f, "grad.x", x->grad, tol);
    worst = fmax(worst, fixture_err(f, "grad.x", x->grad));
    char name[128];
    for (size_t i = 0; i < ps->n; i++) {
        snprintf(name, sizeof name, "grad.%s", ps->items[i].name);
        EXPECT_MATCH(f, name, ps->items[i].value->grad, tol);
        worst = fmax(worst, fixture_err(f, name, ps->items[i].value->grad));
    }
    fprintf(stderr, "%s: worst error %.3g\n", file, worst);
    cr_tensor_free(x);
    cr_tensor_free(target);
    cr_params_free(ps);
    cr_st_file_free(f);
}

Test(conv, torch_lenet_f64) { lenet_parity("lenet_f64.safetensors", CR_F64, F64_TOL); }
Test(conv, torch_lenet_f32) { lenet_parity("lenet_f32.safetensors", CR_F32, F32_TOL); }

/* ---- layers ------------------------------------------------------------------------------------- */

/* max |v| over a tensor */
static double max_abs(const cr_tensor *t)
{
    double m = 0;
    for (int64_t i = 0; i < cr_numel(t); i++) m = fmax(m, fabs(cr_get_flat(t, i)));
    return m;
}

Test(conv, layers_have_pytorch_names_shapes_and_init)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(9);
    cr_conv2d_layer c2 = cr_conv2d_layer_init(
        ps, "enc.conv",
        (cr_conv2d_config){
            .in_channels = 8, .out_channels = 32, .kernel = {3, 5}, .groups = 2, .dtype = CR_F32},
        &rng);
    cr_conv1d_layer c1 = cr_conv1d_layer_init(
        ps, "feat",
        (cr_conv1d_config){
            .in_channels = 3, .out_channels = 64, .kernel = 7, .no_bias = true, .dtype = CR_F64},
        &rng);
    cr_assert_eq(ps->n, 3);
    cr_assert_eq(cr_params_get(ps, "enc.conv.weight"), c2.weight);
    cr_assert_eq(cr_params_get(ps, "enc.conv.bias"), c2.bias);
    cr_assert_eq(cr_params_get(ps, "feat.weight"), c1.weight);
    cr_assert_null(c1.bias);
    cr_assert_null(cr_params_get(ps, "feat.bias"));
    int64_t w2[] = {32, 4, 3, 5}, w1[] = {64, 3, 7};
    cr_assert_eq(c2.weight->ndim, 4);
    for (int d = 0; d < 4; d++) cr_assert_eq(c2.weight->shape[d], w2[d]);
    for (int d = 0; d < 3; d++) cr_assert_eq(c1.weight->shape[d], w1[d]);
    cr_assert_eq(c2.bias->shape[0], 32);
    cr_assert_eq(c2.weight->dtype, CR_F32);
    cr_assert_eq(c1.weight->dtype, CR_F64);
    cr_assert(c2.weight->requires_grad && c2.bias->requires_grad && c1.weight->requires_grad);
    /* U(+-1/sqrt(fan_in)): fan_in = 8/2 * 3 * 5 = 60 and 3 * 7 = 21; the
     * largest of 1920 (or 1344) draws comes within 1% of the bound */
    double b2 = 1 / sqrt(60.0), b1 = 1 / sqrt(21.0);
    cr_assert(max_abs(c2.weight) <= b2 && max_abs(c2.weight) > 0.99 * b2, "weight bound %g vs %g",
              max_abs(c2.weight), b2);
    cr_assert(max_abs(c2.bias) <= b2 && max_abs(c2.bias) > 0.5 * b2);
    cr_assert(max_abs(c1.weight) <= b1 && max_abs(c1.weight) > 0.99 * b1);
    /* options reach the op: stride 2, padding 1 on a [2, 8, 9, 9] input */
    cr_conv2d_layer s = cr_conv2d_layer_init(ps, "s",
                                             (cr_conv2d_config){.in_channels = 8,
                                                                .out_channels = 4,
                                                                .kernel = {3, 3},
                                                                .stride = {2, 2},
                                                                .padding = {1, 1},
                                                                .dtype = CR_F32},
                                             &rng);
    cr_tensor *y = cr_conv2d_layer_forward(&s, cr_zeros(CR_F32, CR_SHAPE(2, 8, 9, 9)));
    cr_assert(y->shape[0] == 2 && y->shape[1] == 4 && y->shape[2] == 5 && y->shape[3] == 5);
    cr_tensor *y1 = cr_conv1d_layer_forward(&c1, cr_ones(CR_F64, CR_SHAPE(2, 3, 10)));
    cr_assert(y1->shape[0] == 2 && y1->shape[1] == 64 && y1->shape[2] == 4);
    EXPECT_ERROR(
        cr_conv2d_layer_init(
            ps, "bad",
            (cr_conv2d_config){
                .in_channels = 6, .out_channels = 4, .kernel = {3, 3}, .groups = 4, .dtype = CR_F32},
            &rng),
        "cr_conv2d_layer_init: in_channels 6 and out_channels 4 must be positive and divisible by groups 4");
    EXPECT_ERROR(
        cr_conv1d_layer_init(ps, "bad",
                             (cr_conv1d_config){.in_channels = 2, .out_channels = 4, .dtype = CR_F32}, &rng),
        "cr_conv1d_layer_init: kernel 0 must be positive");
    cr_params_free(ps);
}

/* ---- a conv1d feature extractor feeding an LSTM, gradient-checked in f64 ---------------------- */

typedef struct {
    cr_conv1d_layer conv;
    cr_rnn *lstm;
} conv_lstm;

/* x [B, C, T] -> conv1d (padding 1) -> tanh (smooth, for finite differences) -> [B, T, O] -> LSTM: every h_t
 * and the final c */
static cr_tensor *f_conv_lstm(cr_tensor *const *in, void *ctx)
{
    const conv_lstm *m = ctx;
    cr_tensor *feat = cr_tanh(cr_conv1d_layer_forward(&m->conv, in[0])); /* [B, O, T] */
    cr_rnn_output o = cr_rnn_forward(m->lstm, cr_transpose(feat, 1, 2), NULL, NULL, NULL);
    return cr_add(cr_sum(o.y), cr_mul_scalar(cr_sum(o.c_n), 0.5));
}

Test(conv, conv1d_feeds_an_lstm_and_gradchecks)
{
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(21);
    conv_lstm m;
    m.conv = cr_conv1d_layer_init(
        ps, "feat",
        (cr_conv1d_config){.in_channels = 3, .out_channels = 4, .kernel = 3, .padding = 1, .dtype = CR_F64},
        &rng);
    m.lstm = cr_rnn_init(
        ps, "lstm",
        (cr_rnn_config){
            .cell = &cr_cell_lstm, .input_size = 4, .hidden_size = 3, .num_layers = 1, .dtype = CR_F64},
        &rng);
    cr_tensor *x = cr_tensor_init(CR_F64, CR_SHAPE(2, 3, 6));
    cr_fill_uniform(x, &rng, -1, 1);
    cr_requires_grad(x, true);
    cr_tensor *in[16] = {x};
    int n = 1;
    for (size_t i = 0; i < ps->n; i++) in[n++] = ps->items[i].value;
    /* runs: the output has the LSTM's shape */
    cr_rnn_output o =
        cr_rnn_forward(m.lstm, cr_transpose(cr_conv1d_layer_forward(&m.conv, x), 1, 2), NULL, NULL, NULL);
    cr_assert(o.y->ndim == 3 && o.y->shape[0] == 2 && o.y->shape[1] == 6 && o.y->shape[2] == 3);
    cr_gradcheck_report rep;
    double err =
        cr_gradcheck(f_conv_lstm, &m, n, in, 1e-5, &rep); /* rounding over 36 outputs / eps vs eps^2 */
    fprintf(stderr, "conv1d -> LSTM gradcheck: %lld elements, worst relative error %.3g, absolute %.3g\n",
            (long long)rep.n_checked, err, rep.max_abs_err);
    cr_assert_lt(err, 1e-6, "input %d element %lld: analytic %.10g numeric %.10g", rep.worst_input,
                 (long long)rep.worst_index, rep.analytic, rep.numeric);
    cr_assert_eq(rep.n_checked, cr_numel(x) + (int64_t)cr_params_numel(ps));
    cr_tensor_free(x);
    cr_rnn_free(m.lstm);
    cr_params_free(ps);
}

/* ---- the same numbers on any thread count, and (to rounding) any block size ------------------- */

typedef struct {
    cr_tensor *y, *gx, *gw, *gb, *p;
} run_out;

/* conv (groups 2, padding, stride) -> max pool and avg pool -> weighted sum
 * (weights from a fixed seed); backward. Stride 2 along W goes through the
 * products; stride 2 along H (stride 1 along W) through the direct kernels
 * when they are on (cr_conv_direct_channels). */
static run_out conv_run(cr_tensor *x, cr_tensor *w, cr_tensor *b, bool stride_h)
{
    cr_zero_grad(x);
    cr_zero_grad(w);
    cr_zero_grad(b);
    cr_conv2d_opts co = {.stride = {1, 2}, .padding = {2, 1}, .groups = 2};
    if (stride_h) co = (cr_conv2d_opts){.stride = {2, 1}, .padding = {1, 2}, .groups = 2};
    cr_tensor *y = cr_conv2d(x, w, b, co);
    cr_pool2d_opts po = {.kernel = {3, 3}, .stride = {2, 2}, .padding = {1, 1}};
    cr_tensor *p = cr_add(cr_max_pool2d(y, po), cr_avg_pool2d(y, po));
    cr_rng rng = cr_rng_seed(5);
    cr_tensor *gy_pool = cr_tensor_new(p->dtype, p->ndim, p->shape);
    cr_fill_uniform(gy_pool, &rng, -1, 1);
    cr_backward(cr_sum(cr_mul(p, gy_pool)));
    run_out r = {cr_contiguous_copy(y), cr_contiguous_copy(x->grad), cr_contiguous_copy(w->grad),
                 cr_contiguous_copy(b->grad), cr_contiguous_copy(p)};
    return r;
}

/* persistent copies of a run's tensors */
static cr_tensor *persist(const cr_tensor *t)
{
    cr_tensor *p = cr_tensor_init(t->dtype, t->ndim, t->shape);
    cr_copy_(p, t);
    return p;
}
static run_out keep_run(run_out r)
{
    return (run_out){persist(r.y), persist(r.gx), persist(r.gw), persist(r.gb), persist(r.p)};
}
static void free_run(run_out r)
{
    cr_tensor *t[] = {r.y, r.gx, r.gw, r.gb, r.p};
    for (int i = 0; i < 5; i++) cr_tensor_free(t[i]);
}

static double max_diff(const cr_tensor *a, const cr_tensor *b)
{
    double m = 0;
    for (int64_t i = 0; i < cr_numel(a); i++) m = fmax(m, fabs(cr_get_flat(a, i) - cr_get_flat(b, i)));
    return m;
}

static void compare_runs(run_out a, run_out b, double tol)
{
    cr_tensor *ta[] = {a.y, a.gx, a.gw, a.gb, a.p}, *tb[] = {b.y, b.gx, b.gw, b.gb, b.p};
    const char *names[] = {"y", "grad x", "grad w", "grad b", "pooled"};
    for (int i = 0; i < 5; i++) {
        double d = max_diff(ta[i], tb[i]);
        cr_assert(d <= tol, "%s differs by %.3g", names[i], d);
        if (tol == 0)
            cr_assert(
                !memcmp(ta[i]->data, tb[i]->data, (size_t)cr_numel(ta[i]) * cr_dtype_size(ta[i]->dtype)),
                "%s differs in its bits", names[i]);
    }
}

Test(conv, results_do_not_depend_on_threads_or_blocks)
{
    /* (a) 9 samples of [4, 48, 49] into 8 channels of [48, 24] (stride 2
     * along W) or [23, 49] (along H); (b) 70 samples of [4, 16, 16] into
     * [16, 7] or [7, 16], so one sample per block makes 70 blocks in 64
     * weight-gradient segments. Both above the 2M multiply-adds where blocks
     * run in parallel. Stride along H with 4 channels per group takes the
     * direct kernels: the same checks, and the same numbers as the products
     * to rounding. */
    const int64_t shapes[2][4] = {{9, 4, 48, 49}, {70, 4, 16, 16}};
    const int64_t positions[2] = {48 * 24, 16 * 7};
    const int64_t default_direct = cr_conv_direct_channels;
    cr_rng rng = cr_rng_seed(4);
    for (int sh = 0; sh < 2; sh++)
        for (int dt = 0; dt < 2; dt++)
            for (int direct = 0; direct < 2; direct++) {
                cr_dtype t = dt ? CR_F64 : CR_F32;
                cr_tensor *x = leaf(cr_tensor_init(t, 4, shapes[sh])),
                          *w = leaf(cr_tensor_init(t, CR_SHAPE(8, 2, 5, 5)));
                cr_tensor *b = leaf(cr_tensor_init(t, CR_SHAPE(8)));
                cr_fill_uniform(x, &rng, -1, 1);
                cr_fill_uniform(w, &rng, -1, 1);
                cr_fill_uniform(b, &rng, -1, 1);
                /* every loop parallel, every product through BLIS */
                int64_t par = cr_parallel_threshold, small = cr_gemm_small_threshold;
                cr_parallel_threshold = 0;
                cr_gemm_small_threshold = 0;
                cr_set_num_threads(1);
                cr_conv_direct_channels = 0;                       /* the reference: products */
                run_out ref = keep_run(conv_run(x, w, b, direct)); /* persistent: outlives the clears */
                cr_conv_direct_channels = direct ? 8 : 0;
                /* blocks of 1, 4 (a partial last block) and all samples, the columns
                 * kept from forward or built again: the same bits on 1 and 2 threads,
                 * and only the grouping of the weight gradient's sums changes */
                int64_t sample = 4 * 25 * positions[sh] * (int64_t)cr_dtype_size(t);
                int64_t blocks[] = {1, 4 * sample, 1 << 30};
                for (int k = 0; k < 3; k++)
                    for (int keep = 0; keep < 2; keep++) {
                        cr_conv_block_bytes = blocks[k];
                        cr_conv_keep_bytes = keep ? (int64_t)1 << 30 : 0;
                        cr_set_num_threads(1);
                        run_out one = conv_run(x, w, b, direct);
                        cr_set_num_threads(2);
                        compare_runs(one, conv_run(x, w, b, direct), 0); /* bit for bit */
                        compare_runs(ref, one, t == CR_F32 ? 1e-4 : 1e-12);
                        cr_graph_clear(g);
                    }
                free_run(ref);
                cr_set_num_threads(1);
                cr_parallel_threshold = par;
                cr_gemm_small_threshold = small;
                cr_conv_block_bytes = default_block;
                cr_conv_keep_bytes = default_keep;
                cr_conv_direct_channels = default_direct;
                cr_tensor *all[] = {x, w, b};
                for (int i = 0; i < 3; i++) cr_tensor_free(all[i]);
                cr_graph_clear(g);
            }
}

/* Winograd F(2x2, 3x3): y, dX and dW of a 3x3 conv with groups 2,
 * 16 channels per group, padding 1 and odd outputs (9 x 21: tiles of one
 * at the ends, 55 per sample, so chunks of 96 cross samples), against the
 * direct kernels: the same bits on 1 and 2 threads, the same y and dX bits
 * for one sample or all per block, the same numbers to rounding. */
static run_out wino_run(cr_tensor *x, cr_tensor *w, cr_tensor *b)
{
    cr_zero_grad(x);
    cr_zero_grad(w);
    cr_zero_grad(b);
    cr_tensor *y = cr_conv2d(x, w, b, (cr_conv2d_opts){.padding = {1, 1}, .groups = 2});
    cr_rng rng = cr_rng_seed(6);
    cr_tensor *gy = cr_tensor_new(y->dtype, y->ndim, y->shape);
    cr_fill_uniform(gy, &rng, -1, 1);
    cr_backward(cr_sum(cr_mul(y, gy)));
    return (run_out){cr_contiguous_copy(y), cr_contiguous_copy(x->grad), cr_contiguous_copy(w->grad),
                     cr_contiguous_copy(b->grad), cr_contiguous_copy(y)};
}

Test(conv, winograd_does_not_depend_on_threads_or_blocks)
{
    const int64_t default_direct = cr_conv_direct_channels, default_winograd = cr_conv_winograd_channels,
                  par = cr_parallel_threshold;
    cr_rng rng = cr_rng_seed(8);
    for (int dt = 0; dt < 2; dt++) {
        cr_dtype t = dt ? CR_F64 : CR_F32;
        cr_tensor *x = leaf(cr_tensor_init(t, CR_SHAPE(6, 32, 9, 21))),
                  *w = leaf(cr_tensor_init(t, CR_SHAPE(32, 16, 3, 3))),
                  *b = leaf(cr_tensor_init(t, CR_SHAPE(32)));
        cr_fill_uniform(x, &rng, -1, 1);
        cr_fill_uniform(w, &rng, -1, 1);
        cr_fill_uniform(b, &rng, -1, 1);
        cr_parallel_threshold = 0;
        cr_set_num_threads(1);
        cr_conv_winograd_channels = INT64_MAX; /* the reference: the direct kernels */
        cr_conv_direct_channels = (int64_t)1 << 30;
        run_out ref = keep_run(wino_run(x, w, b));
        cr_conv_winograd_channels = 1;
        cr_conv_direct_channels = default_direct;
        cr_conv_block_bytes = 1; /* one sample per block */
        run_out one = keep_run(wino_run(x, w, b));
        cr_graph_clear(g);
        compare_runs(ref, one, t == CR_F32 ? 1e-4 : 1e-12);
        cr_set_num_threads(2);
        compare_runs(one, wino_run(x, w, b), 0);
        cr_conv_block_bytes = (int64_t)1 << 30; /* all samples in one block: the weight */
        run_out all = wino_run(x, w, b);        /* gradient's sums are grouped by blocks */
        compare_runs(one, all, t == CR_F32 ? 1e-4 : 1e-12);
        cr_assert(!memcmp(one.y->data, all.y->data, (size_t)cr_numel(one.y) * cr_dtype_size(t)));
        cr_assert(!memcmp(one.gx->data, all.gx->data, (size_t)cr_numel(one.gx) * cr_dtype_size(t)));
        cr_graph_clear(g);
        free_run(ref);
        free_run(one);
        cr_set_num_threads(1);
        cr_conv_block_bytes = default_block;
        cr_tensor *ins[] = {x, w, b};
        for (int i = 0; i < 3; i++) cr_tensor_free(ins[i]);
    }
    cr_parallel_threshold = par;
    cr_conv_direct_channels = default_direct;
    cr_conv_winograd_channels = default_winograd;
}

/* ---- what backward reads is version-checked ---------------------------------------------------- */

Test(conv, writing_the_input_before_backward_is_refused)
{
    cr_tensor *x = cr_tensor_init(CR_F64, CR_SHAPE(1, 2, 5, 5)),
              *w = leaf(cr_tensor_init(CR_F64, CR_SHAPE(3, 2, 3, 3)));
    cr_fill(x, 0.5);
    cr_tensor *loss = cr_sum(cr_conv2d(x, w, NULL, (cr_conv2d_opts){0}));
    cr_fill(x, 2.0); /* dW reads x */
    EXPECT_ERROR(cr_backward(loss), "cr_conv2d (tape #0) needs its input 0");
    /* the weight may change when only x's gradient is wanted (x is read for dW only) */
    cr_graph_clear(g);
    cr_tensor *x2 = leaf(cr_tensor_init(CR_F64, CR_SHAPE(1, 2, 5, 5)));
    cr_tensor *w2 = cr_tensor_init(CR_F64, CR_SHAPE(3, 2, 3, 3));
    cr_fill(w2, 1.0);
    loss = cr_sum(cr_conv2d(x2, w2, NULL, (cr_conv2d_opts){0}));
    cr_fill(x2, 3.0);
    cr_backward(loss);                                /* fine: x2 is not read */
    cr_assert_eq(cr_get_flat(x2->grad, 12), 3 * 9.0); /* the centre pixel is in all 9 windows of 3 filters */
    cr_fill(w2, 2.0);
    loss = cr_sum(cr_conv2d(x2, w2, NULL, (cr_conv2d_opts){0}));
    cr_fill(w2, 5.0);
    EXPECT_ERROR(cr_backward(loss), "needs its input 1");
    cr_tensor_free(x);
    cr_tensor_free(w);
    cr_tensor_free(x2);
    cr_tensor_free(w2);
}

/* ---- misuse --------------------------------------------------------------------------------------- */

Test(conv, misuse_names_the_op_and_the_shapes)
{
    cr_tensor *x = cr_zeros(CR_F32, CR_SHAPE(2, 3, 8, 8)), *w = cr_zeros(CR_F32, CR_SHAPE(4, 3, 3, 3));
    cr_tensor *x1 = cr_zeros(CR_F32, CR_SHAPE(2, 3, 8)), *w1 = cr_zeros(CR_F32, CR_SHAPE(4, 3, 3));
    cr_conv2d_opts none = {0};
    EXPECT_ERROR(cr_conv2d(x1, w, NULL, none), "cr_conv2d: input [2,3,8] must be [N, C, H, W]");
    EXPECT_ERROR(cr_conv1d(x1, w, NULL, (cr_conv1d_opts){0}),
                 "cr_conv1d: weight [4,3,3,3] must be [out, in/groups, K]");
    EXPECT_ERROR(
        cr_conv2d(x, cr_zeros(CR_F32, CR_SHAPE(4, 2, 3, 3)), NULL, none),
        "cr_conv2d: input [2,3,8,8] has 3 channels, weight [4,2,3,3] expects 2 per group x 1 groups");
    EXPECT_ERROR(cr_conv2d(x, w, NULL, (cr_conv2d_opts){.groups = 2}),
                 "cr_conv2d: groups 2 must divide the input channels (3) and output channels (4)");
    EXPECT_ERROR(cr_conv2d(x, w, cr_zeros(CR_F32, CR_SHAPE(5)), none),
                 "cr_conv2d: bias [5] does not match the weight's 4 output channels");
    EXPECT_ERROR(cr_conv2d(x, cr_zeros(CR_F64, CR_SHAPE(4, 3, 3, 3)), NULL, none),
                 "cr_conv2d: f32 [2,3,8,8] and f64");
    EXPECT_ERROR(cr_conv2d(x, w, NULL, (cr_conv2d_opts){.stride = {-1, 1}}),
                 "cr_conv2d: stride [-1,1], padding [0,0], dilation [1,1], groups 1");
    EXPECT_ERROR(
        cr_conv2d(x, cr_zeros(CR_F32, CR_SHAPE(4, 3, 9, 3)), NULL, none),
        "cr_conv2d: input [2,3,8,8] with padding [0,0] is smaller than the kernel [9,3] dilated by [1,1]");
    EXPECT_ERROR(cr_conv1d(x1, w1, NULL, (cr_conv1d_opts){.dilation = 4}),
                 "cr_conv1d: input [2,3,8] with padding [0] is smaller than the kernel [3] dilated by [4]");
    EXPECT_ERROR(cr_conv2d(x, w, NULL, (cr_conv2d_opts){.padding = {INT64_MAX / 2, 0}}),
                 "or the sizes overflow");
    EXPECT_ERROR(cr_max_pool2d(x, (cr_pool2d_opts){.kernel = {3, 3}, .padding = {2, 1}}),
                 "cr_max_pool2d: padding [2,1] must be at most half the kernel [3,3]");
    EXPECT_ERROR(cr_avg_pool1d(x1, (cr_pool1d_opts){.kernel = 0}),
                 "cr_avg_pool1d: kernel [0], stride [0], padding [0]");
    EXPECT_ERROR(cr_max_pool1d(x, (cr_pool1d_opts){.kernel = 2}),
                 "cr_max_pool1d: input [2,3,8,8] must be [N, C, L] or [C, L]");
    EXPECT_ERROR(cr_avg_pool2d(x, (cr_pool2d_opts){.kernel = {9, 2}}),
                 "cr_avg_pool2d: input [2,3,8,8] with padding [0,0] is smaller than the kernel [9,2]");
    EXPECT_ERROR(cr_max_pool2d(cr_zeros(CR_I32, CR_SHAPE(1, 2, 2)), (cr_pool2d_opts){.kernel = {2, 2}}),
                 "cr_max_pool2d: needs f32 or f64, got i32");
}

Test(conv, empty_batch_and_zero_defaults)
{
    /* N = 0 gives an empty output of the right shape */
    cr_tensor *y = cr_conv2d(cr_zeros(CR_F32, CR_SHAPE(0, 3, 8, 8)), cr_ones(CR_F32, CR_SHAPE(4, 3, 3, 3)),
                             NULL, (cr_conv2d_opts){0});
    cr_assert(y->shape[0] == 0 && y->shape[1] == 4 && y->shape[2] == 6 && y->shape[3] == 6);
    /* zeros in the options are the defaults: the same numbers as spelled out */
    cr_tensor *x = cr_arange(CR_F64, 0, 2 * 3 * 7 * 6, 1);
    x = cr_reshape(x, CR_SHAPE(2, 3, 7, 6));
    cr_tensor *w = cr_reshape(cr_arange(CR_F64, -27, 27, 1), CR_SHAPE(2, 3, 3, 3));
    cr_tensor *a = cr_conv2d(x, w, NULL, (cr_conv2d_opts){0});
    cr_tensor *b = cr_conv2d(x, w, NULL, (cr_conv2d_opts){{1, 1}, {0, 0}, {1, 1}, 1});
    cr_assert_eq(max_diff(a, b), 0);
    cr_tensor *p = cr_max_pool2d(x, (cr_pool2d_opts){.kernel = {2, 3}});
    cr_tensor *q = cr_max_pool2d(x, (cr_pool2d_opts){.kernel = {2, 3}, .stride = {2, 3}});
    cr_assert(p->shape[2] == 3 && p->shape[3] == 2);
    cr_assert_eq(max_diff(p, q), 0);
}
