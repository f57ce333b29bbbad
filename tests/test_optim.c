/*
 * Tests of optim/ (the rules in sgd.c, adam.c, rmsprop.c, the generic optim.c, clip.c, schedule.c): PyTorch
 * parity on the 20-step trajectories of tests/fixtures/optim_f64.safetensors, hand-computed references for
 * the options the fixture leaves out, clipping, schedules and contract errors.
 */
#include "carousel.h"

#include <criterion/criterion.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------------- */

static cr_graph *g_graph;

static void setup(void)
{
    g_graph = cr_graph_init();
    cr_graph_use(g_graph);
}
static void teardown(void)
{
    cr_graph_use(NULL);
    cr_graph_free(g_graph);
}

TestSuite(optim, .init = setup, .fini = teardown);

static const char *fixture_path(const char *name)
{
    static char buf[1024];
    const char *dir = getenv("CR_FIXTURES");
    snprintf(buf, sizeof buf, "%s/%s", dir && *dir ? dir : "tests/fixtures", name);
    return buf;
}

static const cr_st_entry *need(const cr_st_file *f, const char *name)
{
    const cr_st_entry *e = cr_st_find(f, name);
    cr_assert(e != NULL, "fixture tensor %s missing", name);
    cr_assert(e->dtype == CR_F64, "%s is not F64", name);
    return e;
}

/* i-th f64 of an entry (data may be unaligned). */
static double entry_at(const cr_st_entry *e, int64_t i)
{
    double x;
    memcpy(&x, (const char *)e->data + 8 * i, 8);
    return x;
}

/* Copy a fixture entry into a tensor of the same element count (any float dtype). */
static void load_into(cr_tensor *t, const cr_st_entry *e)
{
    cr_assert_eq((size_t)cr_numel(t) * 8, e->nbytes, "size of %s", e->name);
    for (int64_t i = 0; i < cr_numel(t); i++) cr_set_flat(t, i, entry_at(e, i));
}

static double meta_f(const cr_st_file *f, const char *cfg, const char *key)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", cfg, key);
    const char *v = cr_st_meta_get(f, k);
    cr_assert(v != NULL, "metadata %s missing", k);
    return strtod(v, NULL);
}

static const char *meta_s(const cr_st_file *f, const char *cfg, const char *key)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", cfg, key);
    const char *v = cr_st_meta_get(f, k);
    cr_assert(v != NULL, "metadata %s missing", k);
    return v;
}

/* Relative error with a floor on the denominator. */
/* Relative error, with values below rel_floor compared absolutely: the f32
 * check sets the floor to 1, since a parameter passing near 0 makes any
 * relative error of f32 rounding meaningless. */
static double rel_floor = 1e-9;
static double rel_err(double a, double e) { return fabs(a - e) / fmax(fabs(e), rel_floor); }

/* The fixture problem: loss = mean((x W^T + b - t)^2). */
static cr_tensor *fixture_loss(cr_tensor *x, cr_tensor *t, cr_tensor *W, cr_tensor *b)
{
    return cr_mean(cr_square(cr_sub(cr_add(cr_matmul(x, cr_transpose(W, 0, 1)), b), t)));
}

/* An optimizer built from a fixture config's metadata. */
static cr_optim *optim_from_meta(const cr_st_file *f, const char *cfg, cr_params *ps)
{
    const char *kind = meta_s(f, cfg, "optimizer");
    if (strcmp(kind, "SGD") == 0) {
        cr_sgd_config c = {.lr = meta_f(f, cfg, "lr"),
                           .momentum = meta_f(f, cfg, "momentum"),
                           .dampening = meta_f(f, cfg, "dampening"),
                           .weight_decay = meta_f(f, cfg, "weight_decay"),
                           .nesterov = strcmp(meta_s(f, cfg, "nesterov"), "1") == 0};
        return cr_sgd_init(ps, c);
    }
    if (strcmp(kind, "Adam") == 0 || strcmp(kind, "AdamW") == 0) {
        const char *betas = meta_s(f, cfg, "betas");
        char *comma;
        double b1 = strtod(betas, &comma);
        cr_assert(*comma == ',', "betas %s", betas);
        double b2 = strtod(comma + 1, NULL);
        cr_adam_config c = {.lr = meta_f(f, cfg, "lr"),
                            .beta1 = b1,
                            .beta2 = b2,
                            .eps = meta_f(f, cfg, "eps"),
                            .weight_decay = meta_f(f, cfg, "weight_decay"),
                            .amsgrad = strcmp(meta_s(f, cfg, "amsgrad"), "1") == 0};
        return kind[4] == 'W' ? cr_adamw_init(ps, c) : cr_adam_init(ps, c);
    }
    cr_assert_str_eq(kind, "RMSprop");
    cr_rmsprop_config c = {.lr = meta_f(f, cfg, "lr"),
                           .alpha = meta_f(f, cfg, "alpha"),
                           .eps = meta_f(f, cfg, "eps"),
                           .weight_decay = meta_f(f, cfg, "weight_decay"),
                           .momentum = meta_f(f, cfg, "momentum"),
                           .centered = strcmp(meta_s(f, cfg, "centered"), "1") == 0};
    return cr_rmsprop_init(ps, c);
}

/* Run one fixture config in dtype dt; returns the worst relative error over
 * losses, norms and parameters of every step. */
static double run_fixture_config(const cr_st_file *f, const char *cfg, cr_dtype dt)
{
    cr_tensor *x = cr_tensor_init(dt, CR_SHAPE(8, 3)), *t = cr_tensor_init(dt, CR_SHAPE(8, 4));
    load_into(x, need(f, "x"));
    load_into(t, need(f, "t"));
    cr_params *ps = cr_params_init();
    cr_tensor *W = cr_params_add(ps, NULL, "W", dt, CR_SHAPE(4, 3));
    cr_tensor *b = cr_params_add(ps, NULL, "b", dt, CR_SHAPE(4));
    load_into(W, need(f, "init.W"));
    load_into(b, need(f, "init.b"));
    cr_optim *o = optim_from_meta(f, cfg, ps);
    const char *clip = meta_s(f, cfg, "clip");
    char name[128];
    snprintf(name, sizeof name, "%s.loss", cfg);
    const cr_st_entry *losses = need(f, name);
    const cr_st_entry *norms = NULL;
    if (strcmp(clip, "norm") == 0) {
        snprintf(name, sizeof name, "%s.norm", cfg);
        norms = need(f, name);
    }
    int steps = atoi(cr_st_meta_get(f, "steps"));
    cr_assert_eq(steps, 20);
    double worst = 0;
    for (int k = 1; k <= steps; k++) {
        cr_optim_zero_grad(o);
        cr_tensor *loss = fixture_loss(x, t, W, b);
        worst = fmax(worst, rel_err(cr_item(loss), entry_at(losses, k - 1)));
        cr_backward(loss);
        if (norms) {
            cr_status status = CR_NONFINITE;
            double n;
            status = cr_clip_grad_norm(ps, meta_f(f, cfg, "max_norm"), &n);
            cr_assert_eq(status, CR_OK);
            worst = fmax(worst, rel_err(n, entry_at(norms, k - 1)));
        } else if (strcmp(clip, "value") == 0) {
            cr_assert_eq(cr_clip_grad_value(ps, meta_f(f, cfg, "clip_value")), CR_OK);
        }
        cr_optim_step(o);
        cr_graph_clear(g_graph);
        snprintf(name, sizeof name, "%s.step%d.W", cfg, k);
        const cr_st_entry *eW = need(f, name);
        snprintf(name, sizeof name, "%s.step%d.b", cfg, k);
        const cr_st_entry *eb = need(f, name);
        for (int64_t i = 0; i < 12; i++) worst = fmax(worst, rel_err(cr_get_flat(W, i), entry_at(eW, i)));
        for (int64_t i = 0; i < 4; i++) worst = fmax(worst, rel_err(cr_get_flat(b, i), entry_at(eb, i)));
    }
    cr_assert_eq(cr_optim_steps(o), steps);
    cr_assert_eq(cr_optim_param_steps(o, "W"), steps);
    cr_optim_free(o);
    cr_params_free(ps);
    cr_tensor_free(x);
    cr_tensor_free(t);
    return worst;
}

/* ---- PyTorch parity ----------------------------------------------------------- */

Test(optim, pytorch_trajectories_f64)
{
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(fixture_path("optim_f64.safetensors"), &f), CR_OK, "%s", cr_last_error());
    cr_assert_str_eq(cr_st_meta_get(f, "kind"), "optim");
    char configs[512];
    snprintf(configs, sizeof configs, "%s", cr_st_meta_get(f, "configs"));
    int n_cfg = 0;
    for (char *save = NULL, *cfg = strtok_r(configs, ",", &save); cfg; cfg = strtok_r(NULL, ",", &save)) {
        double worst = run_fixture_config(f, cfg, CR_F64);
        cr_log_info("%-14s worst relative error %.3g", cfg, worst);
        cr_expect(worst < 1e-6, "%s: worst relative error %.3g", cfg, worst);
        n_cfg++;
    }
    cr_assert_eq(n_cfg, 9, "expected the 9 configurations of the README, got %d", n_cfg);
    cr_st_file_free(f);
}

/* The same trajectories in f32 follow the f64 ones to f32 accuracy. */
Test(optim, pytorch_trajectories_f32_close)
{
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(fixture_path("optim_f64.safetensors"), &f), CR_OK);
    const char *cfgs[] = {"sgd_nesterov", "adam_wd", "adamw", "rmsprop", "sgd_clipnorm"};
    rel_floor = 1.0;
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        double worst = run_fixture_config(f, cfgs[i], CR_F32);
        cr_expect(worst < 2e-4, "%s f32: worst relative error %.3g", cfgs[i], worst);
    }
    cr_st_file_free(f);
}

/* ---- options the fixture does not cover: scalar references --------------------- */

/* One parameter of n elements with gradient g_k(i) = sin(i + 3k) + 0.1 k at step k. */
static void set_grad(cr_tensor *p, int k)
{
    cr_tensor *g = cr_grad_of(p);
    for (int64_t i = 0; i < cr_numel(p); i++) cr_set_flat(g, i, sin((double)i + 3.0 * k) + 0.1 * k);
}

Test(optim, adam_amsgrad_matches_reference)
{
    cr_params *ps = cr_params_init();
    cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F64, CR_SHAPE(5));
    for (int i = 0; i < 5; i++) cr_set_flat(p, i, 0.3 * i - 0.5);
    cr_adam_config c = cr_adam_defaults(0.05);
    c.amsgrad = true;
    c.weight_decay = 0.02;
    cr_optim *o = cr_adam_init(ps, c);
    double ref[5], m[5] = {0}, v[5] = {0}, vmax[5] = {0};
    for (int i = 0; i < 5; i++) ref[i] = 0.3 * i - 0.5;
    for (int k = 1; k <= 12; k++) {
        set_grad(p, k);
        cr_optim_step(o);
        for (int i = 0; i < 5; i++) {
            double g = sin(i + 3.0 * k) + 0.1 * k + 0.02 * ref[i];
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.999 * v[i] + 0.001 * g * g;
            vmax[i] = fmax(vmax[i], v[i]);
            double den = sqrt(vmax[i]) / sqrt(1 - pow(0.999, k)) + 1e-8;
            ref[i] -= 0.05 / (1 - pow(0.9, k)) * m[i] / den;
        }
        for (int i = 0; i < 5; i++)
            cr_assert(rel_err(cr_get_flat(p, i), ref[i]) < 1e-12, "step %d elem %d", k, i);
    }
    cr_assert(cr_optim_state(o, "p", "max_exp_avg_sq") != NULL);
    cr_assert(rel_err(cr_get_flat(cr_optim_state(o, "p", "max_exp_avg_sq"), 2), vmax[2]) < 1e-12);
    cr_optim_free(o);
    cr_params_free(ps);
}

Test(optim, rmsprop_centered_momentum_matches_reference)
{
    cr_params *ps = cr_params_init();
    cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F64, CR_SHAPE(4));
    cr_rmsprop_config c = {
        .lr = 0.01, .alpha = 0.9, .eps = 1e-6, .weight_decay = 0.1, .momentum = 0.5, .centered = true};
    cr_optim *o = cr_rmsprop_init(ps, c);
    double ref[4] = {0}, s[4] = {0}, ga[4] = {0}, buf[4] = {0};
    for (int k = 1; k <= 10; k++) {
        set_grad(p, k);
        cr_optim_step(o);
        for (int i = 0; i < 4; i++) {
            double g = sin(i + 3.0 * k) + 0.1 * k + 0.1 * ref[i];
            s[i] = 0.9 * s[i] + 0.1 * g * g;
            ga[i] = 0.9 * ga[i] + 0.1 * g;
            double avg = sqrt(s[i] - ga[i] * ga[i]) + 1e-6;
            buf[i] = 0.5 * buf[i] + g / avg;
            ref[i] -= 0.01 * buf[i];
        }
        for (int i = 0; i < 4; i++)
            cr_assert(rel_err(cr_get_flat(p, i), ref[i]) < 1e-12, "step %d elem %d", k, i);
    }
    cr_optim_free(o);
    cr_params_free(ps);
}

/* RMSprop's vector loops (one per combination of weight decay, centered,
 * momentum) give the bits of the scalar update, written here in float with
 * PyTorch's order of operations, on 1037 elements (a vector remainder). */
Test(optim, rmsprop_every_flag_combination_bit_for_bit)
{
    enum { N = 1037 };
    for (int mode = 0; mode < 8; mode++) {
        bool wd_on = mode & 1, cent = mode & 2, mom_on = mode & 4;
        cr_params *ps = cr_params_init();
        cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(N));
        for (int i = 0; i < N; i++) cr_set_flat(p, i, 0.01 * (i % 37) - 0.2);
        cr_rmsprop_config c = {.lr = 0.03,
                               .alpha = 0.9,
                               .eps = 1e-6,
                               .weight_decay = wd_on ? 0.1 : 0,
                               .momentum = mom_on ? 0.5 : 0,
                               .centered = cent};
        cr_optim *o = cr_rmsprop_init(ps, c);
        static float ref[N], s[N], ga[N], buf[N];
        memcpy(ref, p->data, sizeof ref);
        memset(s, 0, sizeof s);
        memset(ga, 0, sizeof ga);
        memset(buf, 0, sizeof buf);
        float lr = 0.03f, wd = (float)c.weight_decay, alpha = 0.9f, oma = (float)(1 - 0.9), eps = 1e-6f,
              mom = (float)c.momentum;
        for (int k = 1; k <= 3; k++) {
            set_grad(p, k);
            const float *g = cr_grad_of(p)->data;
            cr_optim_step(o);
            for (int i = 0; i < N; i++) {
                float gi = g[i];
                if (wd_on) gi = gi + wd * ref[i];
                s[i] = s[i] * alpha + oma * gi * gi;
                float avg;
                if (cent) {
                    ga[i] = ga[i] * alpha + oma * gi;
                    avg = sqrtf(s[i] + -1.0f * ga[i] * ga[i]);
                } else {
                    avg = sqrtf(s[i]);
                }
                avg = avg + eps;
                if (mom_on) {
                    buf[i] = buf[i] * mom + gi / avg;
                    ref[i] = ref[i] + (-lr) * buf[i];
                } else {
                    ref[i] = ref[i] + (-lr) * gi / avg;
                }
            }
            cr_assert(memcmp(p->data, ref, sizeof ref) == 0, "mode %d step %d", mode, k);
        }
        cr_optim_free(o);
        cr_params_free(ps);
    }
}

Test(optim, sgd_dampening_matches_reference)
{
    cr_params *ps = cr_params_init();
    cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(3));
    cr_optim *o = cr_sgd_init(ps, (cr_sgd_config){.lr = 0.1, .momentum = 0.8, .dampening = 0.3});
    double ref[3] = {0}, buf[3] = {0};
    for (int k = 1; k <= 6; k++) {
        set_grad(p, k);
        cr_optim_step(o);
        for (int i = 0; i < 3; i++) {
            double g = sin(i + 3.0 * k) + 0.1 * k;
            buf[i] = k == 1 ? g : 0.8 * buf[i] + 0.7 * g; /* first step: buf = g, no dampening */
            ref[i] -= 0.1 * buf[i];
        }
        for (int i = 0; i < 3; i++)
            cr_assert(fabs(cr_get_flat(p, i) - ref[i]) < 1e-5, "step %d elem %d", k, i);
    }
    cr_optim_free(o);
    cr_params_free(ps);
}

/* A parameter without a gradient is skipped and its state does not advance:
 * when it first gets one, Adam's bias correction starts from k = 1. */
Test(optim, params_without_grad_are_skipped)
{
    cr_params *ps = cr_params_init();
    cr_tensor *a = cr_params_add(ps, "m", "a", CR_F64, CR_SHAPE(2));
    cr_tensor *late = cr_params_add(ps, "m", "late", CR_F64, CR_SHAPE(2));
    cr_fill(late, 1.0);
    cr_optim *o = cr_adam_init(ps, cr_adam_defaults(0.1));
    for (int k = 1; k <= 3; k++) {
        set_grad(a, k);
        cr_optim_step(o);
    }
    cr_assert_null(late->grad);
    cr_assert_eq(cr_get_flat(late, 0), 1.0);
    cr_assert_eq(cr_optim_param_steps(o, "m.late"), 0);
    cr_assert_eq(cr_optim_param_steps(o, "m.a"), 3);
    cr_assert_eq(cr_optim_param_steps(o, "nope"), -1);
    /* first update of `late`: m = 0.1 g, v = 0.001 g^2, so p -= lr sign(g) (to eps) */
    cr_fill(cr_grad_of(late), 0.5);
    cr_optim_step(o);
    cr_assert(fabs(cr_get_flat(late, 0) - 0.9) < 1e-7, "got %.10f", cr_get_flat(late, 0));
    cr_assert_eq(cr_optim_param_steps(o, "m.late"), 1);
    cr_assert_eq(cr_optim_steps(o), 4);
    cr_optim_free(o);
    cr_params_free(ps);
}

Test(optim, zero_grad_keeps_buffers_and_lr_accessors)
{
    cr_params *ps = cr_params_init();
    cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(3));
    cr_optim *o = cr_sgd_init(ps, cr_sgd_defaults(0.5));
    set_grad(p, 1);
    cr_tensor *g = p->grad;
    cr_optim_zero_grad(o);
    cr_assert_eq(p->grad, g, "zero_grad keeps the buffer");
    for (int i = 0; i < 3; i++) cr_assert_eq(cr_get_flat(g, i), 0.0);
    cr_assert_eq(cr_optim_get_lr(o), 0.5);
    cr_optim_set_lr(o, 0.25);
    cr_assert_eq(cr_optim_get_lr(o), 0.25);
    cr_assert_eq(((const cr_sgd_config *)cr_optim_config(o))->lr, 0.25);
    cr_assert_eq(cr_optim_get_hparam(o, "lr"), 0.25);
    cr_optim_set_hparam(o, "momentum", 0.9);
    cr_assert_eq(((const cr_sgd_config *)cr_optim_config(o))->momentum, 0.9);
    cr_assert_not_null(cr_optim_state(o, "p", "momentum_buffer"), "momentum on: a buffer");
    cr_optim_set_hparam(o, "momentum", 0);
    cr_assert_str_eq(cr_optim_name(o), "sgd");
    cr_assert_eq(cr_optim_rule_of(o), &cr_sgd_rule);
    cr_assert_eq(cr_optim_params(o), ps);
    cr_assert_null(cr_optim_state(o, "p", "momentum_buffer"), "no momentum: no buffer");
    cr_optim_free(o);
    cr_optim_free(NULL);
    cr_params_free(ps);
}

/* Steady state: a step allocates nothing (all state was made by *_init). */
Test(optim, step_makes_no_allocation)
{
    cr_params *ps = cr_params_init();
    cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(64, 32));
    cr_tensor *q = cr_params_add(ps, NULL, "q", CR_F64, CR_SHAPE(32));
    cr_optim *os[4] = {
        cr_sgd_init(ps, (cr_sgd_config){.lr = 0.1, .momentum = 0.9, .nesterov = true}),
        cr_adam_init(ps, cr_adam_defaults(1e-3)), cr_adamw_init(ps, cr_adamw_defaults(1e-3)),
        cr_rmsprop_init(ps,
                        (cr_rmsprop_config){.lr = 0.01, .alpha = 0.99, .momentum = 0.9, .centered = true})};
    set_grad(p, 1);
    set_grad(q, 1);
    for (int j = 0; j < 4; j++) cr_optim_step(os[j]); /* the first step may touch lazily made things */
    struct mallinfo2 before = mallinfo2();
    for (int k = 0; k < 5; k++)
        for (int j = 0; j < 4; j++) {
            cr_optim_step(os[j]);
            cr_clip_grad_norm(ps, 1.0, NULL);
            cr_optim_zero_grad(os[j]);
        }
    struct mallinfo2 after = mallinfo2();
    cr_assert_eq(after.uordblks, before.uordblks, "heap in use changed: %zu -> %zu", before.uordblks,
                 after.uordblks);
    for (int j = 0; j < 4; j++) cr_optim_free(os[j]);
    cr_params_free(ps);
}

/* Large parameters take the OpenMP path; the result is the serial one, bit for bit. */
Test(optim, threads_do_not_change_results)
{
    int64_t n = 3 * cr_parallel_threshold + 17;
    double *res[2];
    for (int run = 0; run < 2; run++) {
        cr_set_num_threads(run == 0 ? 1 : 4);
        cr_params *ps = cr_params_init();
        cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(n));
        cr_rng r = cr_rng_seed(7);
        cr_fill_normal(p, &r, 0, 1);
        cr_optim *o = cr_adam_init(ps, cr_adam_defaults(1e-2));
        double norm = 0;
        for (int k = 1; k <= 3; k++) {
            cr_fill_normal(cr_grad_of(p), &r, 0, 3);
            double nk;
            cr_assert_eq(cr_clip_grad_norm(ps, 100.0, &nk), CR_OK);
            norm += nk;
            cr_optim_step(o);
        }
        res[run] = malloc((size_t)n * sizeof(float) + sizeof(double));
        memcpy(res[run], p->data, (size_t)n * sizeof(float));
        memcpy((char *)res[run] + (size_t)n * sizeof(float), &norm, sizeof norm);
        cr_optim_free(o);
        cr_params_free(ps);
    }
    cr_assert(memcmp(res[0], res[1], (size_t)n * sizeof(float) + sizeof(double)) == 0);
    free(res[0]);
    free(res[1]);
}

/* One SGD step of loss = sum(w * lookup(table, idx)): the table's gradient is
 * nonzero in the looked-up rows only. With `dense`, cr_grad_of before the
 * backward drops the record of those rows, so the step takes the dense path. */
static void lookup_step(cr_params *ps, cr_optim *o, const int32_t *ids, int64_t m, bool dense)
{
    cr_tensor *table = cr_params_get(ps, "table"), *w = cr_params_get(ps, "w");
    cr_optim_zero_grad(o);
    if (dense) cr_grad_of(table);
    cr_tensor *idx = cr_tensor_new(CR_I32, CR_SHAPE(m));
    memcpy(idx->data, ids, (size_t)m * sizeof *ids);
    cr_backward(cr_sum(cr_mul(cr_gather_rows(table, idx, 2), w)));
    cr_optim_step(o);
    cr_graph_clear(g_graph);
}

/* Plain SGD updates only the rows an embedding lookup reached when it knows
 * them (cr_grad_rows), and lands on the same bits as the dense update: the
 * other rows, a NaN and a -0 among them, are p + (-lr) * +0 = p. */
Test(optim, sgd_on_looked_up_rows_matches_dense)
{
    float *res[2];
    for (int run = 0; run < 2; run++) {
        cr_params *ps = cr_params_init();
        cr_tensor *table = cr_params_add(ps, NULL, "table", CR_F32, CR_SHAPE(40, 5));
        cr_tensor *w = cr_params_add(ps, NULL, "w", CR_F32, CR_SHAPE(3, 5));
        cr_rng r = cr_rng_seed(11);
        cr_fill_normal(table, &r, 0, 1);
        cr_fill_normal(w, &r, 0, 1);
        cr_set_flat(table, 5 * 30, NAN);
        cr_set_flat(table, 5 * 31 + 1, -0.0);
        cr_optim *o = cr_sgd_init(ps, cr_sgd_defaults(0.3));
        static const int32_t ids[4][3] = {{4, 9, 4}, {2, 17, 39}, {0, 2, 4}, {9, 9, 2}}; /* 2: skipped */
        for (int k = 0; k < 4; k++) {
            lookup_step(ps, o, ids[k], 3, run == 1);
            int64_t n;
            const int32_t *rows = cr_grad_rows(table, &n);
            if (run == 1 || k == 0) { /* dense, or untracked until the first zero_grad */
                cr_assert_null(rows, "step %d", k);
                continue;
            }
            cr_assert_not_null(rows, "step %d", k);
            int64_t want = 0; /* distinct ids but the skipped one */
            for (int j = 0; j < 3; j++) {
                bool seen = ids[k][j] == 2;
                for (int i = 0; i < j; i++) seen |= ids[k][i] == ids[k][j];
                want += !seen;
            }
            cr_assert_eq(n, want, "step %d: %lld rows listed", k, (long long)n);
            for (int64_t i = 0; i < n; i++) cr_assert_neq(rows[i], 2);
        }
        res[run] = malloc(sizeof(float) * 200);
        memcpy(res[run], table->data, sizeof(float) * 200);
        cr_optim_zero_grad(o);
        for (int64_t i = 0; i < 200; i++)
            cr_assert_eq(cr_get_flat(table->grad, i), 0.0, "grad %lld", (long long)i);
        cr_optim_free(o);
        cr_params_free(ps);
    }
    cr_assert(memcmp(res[0], res[1], sizeof(float) * 200) == 0, "sparse and dense SGD differ");
    cr_assert(isnan(res[0][150]) && signbit(res[0][156]), "untouched rows kept");
    free(res[0]);
    free(res[1]);
}

/* The record of looked-up rows is dropped by any other write to the gradient:
 * an API write (it bumps the version), a second use of the table through
 * another op, or a caller of cr_grad_of. */
Test(optim, grad_rows_dropped_by_other_writes)
{
    cr_params *ps = cr_params_init();
    cr_tensor *table = cr_params_add(ps, NULL, "table", CR_F64, CR_SHAPE(6, 3));
    cr_tensor *w = cr_params_add(ps, NULL, "w", CR_F64, CR_SHAPE(2, 3));
    cr_fill(table, 0.5);
    cr_fill(w, 1.0);
    cr_optim *o = cr_sgd_init(ps, cr_sgd_defaults(0.1));
    const int32_t ids[2] = {1, 4};
    lookup_step(ps, o, ids, 2, false); /* the first backward: the record starts at the next zero_grad */
    int64_t n;
    lookup_step(ps, o, ids, 2, false);
    cr_assert_not_null(cr_grad_rows(table, &n));
    cr_assert_eq(n, 2);
    cr_fill(table->grad, 1.0);
    cr_assert_null(cr_grad_rows(table, &n), "an API write drops it");
    cr_optim_zero_grad(o);
    cr_assert_not_null(cr_grad_rows(table, &n), "a full zero_grad starts it again");
    cr_assert_eq(n, 0);
    for (int64_t i = 0; i < 18; i++) cr_assert_eq(cr_get_flat(table->grad, i), 0.0);
    /* the table also used whole: every row has a gradient */
    cr_tensor *idx = cr_tensor_new(CR_I32, CR_SHAPE(2));
    memcpy(idx->data, ids, sizeof ids);
    cr_tensor *y = cr_add(cr_sum(cr_gather_rows(table, idx, -1)), cr_sum(cr_mul(table, table)));
    cr_backward(y);
    cr_assert_null(cr_grad_rows(table, &n), "a second op on the table drops it");
    cr_graph_clear(g_graph);
    cr_optim_zero_grad(o);
    for (int64_t i = 0; i < 18; i++) cr_assert_eq(cr_get_flat(table->grad, i), 0.0);
    cr_optim_free(o);
    cr_params_free(ps);
}

/* ---- clipping ------------------------------------------------------------------- */

static cr_params *two_grads(double scale)
{
    cr_params *ps = cr_params_init();
    cr_tensor *a = cr_params_add(ps, NULL, "a", CR_F64, CR_SHAPE(3, 2));
    cr_tensor *b = cr_params_add(ps, NULL, "b", CR_F32, CR_SHAPE(4));
    for (int i = 0; i < 6; i++) cr_set_flat(cr_grad_of(a), i, scale * (i - 2.5));
    for (int i = 0; i < 4; i++) cr_set_flat(cr_grad_of(b), i, scale * (1 + i));
    cr_params_add(ps, NULL, "no_grad", CR_F64, CR_SHAPE(2));
    return ps;
}

/* Every tensor a step, a clipping or a parameter load writes through ->data
 * gets its version bumped, so autograd can tell a parameter changed after a
 * forward that saved it. */
Test(optim, in_place_writes_bump_versions)
{
    cr_params *ps = cr_params_init();
    cr_tensor *p = cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(3));
    cr_optim *o = cr_adam_init(ps, cr_adam_defaults(0.1));
    set_grad(p, 1);
    uint64_t v0 = cr_tensor_version(p);
    cr_optim_step(o);
    cr_assert_gt(cr_tensor_version(p), v0, "the step");
    const cr_tensor *m = cr_optim_state(o, "p", "exp_avg");
    cr_assert_gt(cr_tensor_version(m), 0, "the state");
    uint64_t g0 = cr_tensor_version(p->grad);
    cr_set_flat(p->grad, 0, 100);
    g0 = cr_tensor_version(p->grad);
    cr_assert_eq(cr_clip_grad_norm(ps, 1.0, NULL), CR_OK);
    cr_assert_gt(cr_tensor_version(p->grad), g0, "clipping by norm");
    g0 = cr_tensor_version(p->grad);
    cr_assert_eq(cr_clip_grad_value(ps, 0.1), CR_OK);
    cr_assert_gt(cr_tensor_version(p->grad), g0, "clipping by value");
    cr_optim_free(o);
    cr_params_free(ps);
}

Test(optim, clip_norm_scales_to_the_threshold)
{
    cr_params *ps = two_grads(1.0);
    /* sum of squares: a: 2*(2.5^2 + 1.5^2 + 0.5^2) = 17.5, b: 1+4+9+16 = 30 */
    double want = sqrt(47.5);
    cr_assert(fabs(cr_grad_norm(ps) - want) < 1e-12);
    cr_status st = CR_NONFINITE;
    double n;
    st = cr_clip_grad_norm(ps, 2.0, &n);
    cr_assert_eq(st, CR_OK);
    cr_assert(fabs(n - want) < 1e-12, "returns the norm before clipping");
    double after = cr_grad_norm(ps);
    cr_assert(fabs(after - 2.0) < 1e-6, "clipped norm %.9f is the threshold (not 1, as KANN)", after);
    cr_assert(fabs(after - 2.0 * want / (want + 1e-6)) < 1e-6);
    /* below the threshold: unchanged */
    double again;
    st = cr_clip_grad_norm(ps, 5.0, &again);
    cr_assert(fabs(again - after) < 1e-12);
    cr_assert(fabs(cr_grad_norm(ps) - after) < 1e-15);
    cr_params_free(ps);
}

Test(optim, clip_norm_nonfinite_leaves_grads)
{
    cr_params *ps = two_grads(1.0);
    cr_tensor *ga = ps->items[0].value->grad, *gb = ps->items[1].value->grad;
    cr_set_flat(gb, 2, NAN);
    double before_a[6];
    memcpy(before_a, ga->data, sizeof before_a);
    cr_status st = CR_NONFINITE;
    double n;
    st = cr_clip_grad_norm(ps, 1.0, &n);
    cr_assert(isnan(n));
    cr_assert_eq(st, CR_NONFINITE);
    cr_assert(memcmp(before_a, ga->data, sizeof before_a) == 0, "grads untouched");
    cr_assert_eq(cr_get_flat(gb, 0), 1.0);
    cr_set_flat(gb, 2, INFINITY);
    st = cr_clip_grad_norm(ps, 1.0, &n);
    cr_assert(isinf(n));
    cr_assert_eq(st, CR_NONFINITE);
    cr_assert_eq(cr_get_flat(gb, 3), 4.0);
    cr_params_free(ps);
}

/* f64 gradients whose squares overflow still have a finite norm. */
Test(optim, clip_norm_huge_finite_grads)
{
    cr_params *ps = cr_params_init();
    cr_tensor *a = cr_params_add(ps, NULL, "a", CR_F64, CR_SHAPE(4));
    cr_tensor *b = cr_params_add(ps, NULL, "b", CR_F64, CR_SHAPE(1));
    cr_fill(cr_grad_of(a), 1e200);
    cr_fill(cr_grad_of(b), 1e200);
    cr_status st = CR_NONFINITE;
    double n;
    st = cr_clip_grad_norm(ps, 1.0, &n);
    cr_assert_eq(st, CR_OK);
    cr_assert(rel_err(n, sqrt(5.0) * 1e200) < 1e-14, "norm %g", n);
    cr_assert(fabs(cr_grad_norm(ps) - 1.0) < 1e-6);
    cr_params_free(ps);
}

Test(optim, clip_value)
{
    cr_params *ps = two_grads(1.0);
    cr_assert_eq(cr_clip_grad_value(ps, 1.5), CR_OK);
    cr_tensor *ga = ps->items[0].value->grad, *gb = ps->items[1].value->grad;
    double wa[6] = {-1.5, -1.5, -0.5, 0.5, 1.5, 1.5}, wb[4] = {1, 1.5, 1.5, 1.5};
    for (int i = 0; i < 6; i++) cr_assert_eq(cr_get_flat(ga, i), wa[i]);
    for (int i = 0; i < 4; i++) cr_assert_eq(cr_get_flat(gb, i), wb[i]);
    cr_set_flat(ga, 0, NAN);
    cr_set_flat(gb, 0, -INFINITY);
    cr_assert_eq(cr_clip_grad_value(ps, 1.0), CR_NONFINITE);
    cr_assert(isnan(cr_get_flat(ga, 0)));
    cr_assert_eq(cr_get_flat(gb, 0), -1.0);
    cr_params_free(ps);
}

Test(optim, clip_bad_max_norm_is_misuse, .signal = SIGABRT)
{
    cr_params *ps = two_grads(1.0);
    cr_clip_grad_norm(ps, -1.0, NULL);
}

/* ---- schedules --------------------------------------------------------------------- */

static void expect_lrs(const cr_schedule *s, const double *want, int n, const char *what)
{
    for (int k = 0; k < n; k++) {
        double lr = cr_schedule_lr(s, k);
        cr_expect(fabs(lr - want[k]) <= 1e-15 + 1e-12 * fabs(want[k]), "%s k=%d: %.17g, torch %.17g", what, k,
                  lr, want[k]);
    }
}

/* Reference values printed by torch 1.13's lr_scheduler (SGD lr 0.1). */
Test(optim, schedules_match_torch)
{
    double step[] = {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125};
    double expo[] = {0.1,
                     0.09000000000000001,
                     0.08100000000000002,
                     0.07290000000000002,
                     0.06561000000000002,
                     0.05904900000000002};
    double cosine[] = {
        0.1,    0.09757729755661011, 0.0905463412215599,  0.07959536998847742,  0.0657963412215599,
        0.0505, 0.03520365877844011, 0.02140463001152259, 0.010453658778440109, 0.0034227024433899004,
        0.001};
    double lin[] = {0.025,
                    0.043750000000000004,
                    0.06250000000000001,
                    0.08125000000000002,
                    0.10000000000000002,
                    0.10000000000000002,
                    0.10000000000000002};
    double seq[] = {0.010000000000000002, 0.03250000000000001,  0.055000000000000014,
                    0.07750000000000003,  0.10000000000000003,  0.1,
                    0.09330127018922195,  0.07500000000000001,  0.05,
                    0.025000000000000012, 0.006698729810778065, 0.0};
    cr_schedule s = cr_schedule_step(0.1, 3, 0.5);
    expect_lrs(&s, step, 10, "StepLR");
    s = cr_schedule_exponential(0.1, 0.9);
    expect_lrs(&s, expo, 6, "ExponentialLR");
    s = cr_schedule_cosine(0.1, 10, 0.001);
    expect_lrs(&s, cosine, 11, "CosineAnnealingLR");
    cr_assert_eq(cr_schedule_lr(&s, 25), 0.001, "held at eta_min after t_max");
    s = cr_schedule_linear(0.1, 0.25, 1.0, 4);
    expect_lrs(&s, lin, 7, "LinearLR");
    s = cr_schedule_then(cr_schedule_linear(0.1, 0.1, 1.0, 4), 5, cr_schedule_cosine(0.1, 6, 0.0));
    expect_lrs(&s, seq, 12, "SequentialLR");
}

Test(optim, schedule_composition_and_apply)
{
    cr_schedule s = cr_schedule_warmup_cosine(1.0, 4, 14, 0.0);
    double want[] = {0.25, 0.5, 0.75, 1.0, 1.0};
    expect_lrs(&s, want, 5, "warm-up");
    cr_assert(fabs(cr_schedule_lr(&s, 9) - 0.5) < 1e-15, "cosine half way");
    cr_assert_eq(cr_schedule_lr(&s, 14), 0.0);
    /* three phases; a later milestone truncates the earlier chain */
    cr_schedule t = cr_schedule_then(cr_schedule_then(cr_schedule_constant(1), 2, cr_schedule_constant(2)), 5,
                                     cr_schedule_exponential(3, 0.5));
    cr_assert_eq(t.n_phases, 3);
    double want_t[] = {1, 1, 2, 2, 2, 3, 1.5, 0.75};
    expect_lrs(&t, want_t, 8, "chain");
    cr_schedule u = cr_schedule_then(t, 3, cr_schedule_constant(9));
    double want_u[] = {1, 1, 2, 9, 9, 9};
    expect_lrs(&u, want_u, 6, "truncated chain");

    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(1));
    cr_optim *o = cr_rmsprop_init(ps, cr_rmsprop_defaults(1.0));
    cr_assert_eq(cr_schedule_apply(&s, o, 1), 0.5);
    cr_assert_eq(cr_optim_get_lr(o), 0.5);
    cr_optim_free(o);
    cr_params_free(ps);
}

Test(optim, schedule_empty_is_misuse, .signal = SIGABRT)
{
    cr_schedule s = {0};
    cr_schedule_lr(&s, 0);
}

Test(optim, schedule_bad_t_max_is_misuse, .signal = SIGABRT) { cr_schedule_cosine(0.1, 0, 0); }

/* ---- contract errors ------------------------------------------------------------- */

Test(optim, nesterov_without_momentum_is_misuse, .signal = SIGABRT)
{
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(2));
    cr_sgd_init(ps, (cr_sgd_config){.lr = 0.1, .nesterov = true});
}

Test(optim, bad_beta_is_misuse, .signal = SIGABRT)
{
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(2));
    cr_adam_config c = cr_adam_defaults(0.1);
    c.beta2 = 1.0;
    cr_adam_init(ps, c);
}

Test(optim, set_hparam_out_of_range_is_misuse, .signal = SIGABRT)
{
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(3));
    cr_optim *o = cr_adam_init(ps, cr_adam_defaults(0.1));
    cr_optim_set_hparam(o, "beta1", 1.5);
}

Test(optim, unknown_hparam_is_misuse, .signal = SIGABRT)
{
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(3));
    cr_optim *o = cr_rmsprop_init(ps, cr_rmsprop_defaults(0.1));
    cr_optim_get_hparam(o, "beta1");
}

/* A rule without "lr" cannot follow a schedule: refused at init. */
static void noop_update(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k)
{
    (void)cfg, (void)p, (void)g, (void)slot, (void)k;
}

Test(optim, rule_without_lr_is_misuse, .signal = SIGABRT)
{
    static const cr_optim_hparam hp[] = {{"rate", 0, false, 0, INFINITY}};
    static const cr_optim_rule bad = {
        .name = "bad", .config_size = sizeof(double), .hparams = hp, .n_hparams = 1, .update = noop_update};
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(3));
    double rate = 0.1;
    cr_optim_init(ps, &bad, &rate);
}

Test(optim, negative_lr_is_misuse, .signal = SIGABRT)
{
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(2));
    cr_optim *o = cr_sgd_init(ps, cr_sgd_defaults(0.1));
    cr_optim_set_lr(o, -1);
}

static void int_handler(const char *msg)
{
    fprintf(stderr, "%s\n", msg);
    exit(strstr(msg, "cr_adam_init") && strstr(msg, "'idx'") && strstr(msg, "i32") ? 42 : 1);
}

/* cr_params_add refuses i32 parameters; a hand-made set reaches the optimizer. */
Test(optim, integer_param_is_misuse, .exit_code = 42)
{
    cr_set_error_handler(int_handler);
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "w", CR_F32, CR_SHAPE(2));
    ps->items[0].value->dtype = CR_I32; /* same bytes, integer dtype */
    char name[] = "idx";
    ps->items[0].name = name;
    cr_adam_init(ps, cr_adam_defaults(0.1));
}

Test(optim, changed_param_set_is_misuse, .signal = SIGABRT)
{
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(2));
    cr_optim *o = cr_sgd_init(ps, cr_sgd_defaults(0.1));
    cr_params_add(ps, NULL, "q", CR_F32, CR_SHAPE(2));
    cr_optim_step(o);
}

/* The message names the op and the problem. */
static void msg_handler(const char *msg)
{
    fprintf(stderr, "%s\n", msg);
    exit(strstr(msg, "cr_adamw_init") && strstr(msg, "eps") ? 42 : 1);
}

Test(optim, error_message_names_the_op, .exit_code = 42)
{
    cr_set_error_handler(msg_handler);
    cr_params *ps = cr_params_init();
    cr_params_add(ps, NULL, "p", CR_F32, CR_SHAPE(2));
    cr_adam_config c = cr_adamw_defaults(0.1);
    c.eps = NAN;
    cr_adamw_init(ps, c);
}
