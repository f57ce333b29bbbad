/* examples/gradflow: the stability analysis of recurrent networks, measured.
 * For five cells (tanh, sigmoid and ReLU RNNs, GRU, LSTM) whose recurrent
 * matrices are scaled to spectral radius 0.9, 1.0 and 1.1 (measured by power
 * iteration and printed), it records
 *   - the norm of dL/dh_t against t for a loss on the last state (every h_t
 *     keeps its gradient through cr_retain_grad): vanishing or exploding;
 *   - the forward response to a single impulse, ||h_t(x_0 = e) - h_t(x_0 = 0)||:
 *     how long the network remembers an input;
 * and then trains an exploding ReLU RNN with plain SGD three times: without
 * clipping, clipping the gradient's global norm, and clipping each element
 * (by value), to show what clipping does to the training and to the
 * gradient's direction.
 *
 * The sigmoid RNN is not a built-in cell: it is defined here as a user cell
 * type (a parameter table and a step), and the sequence machinery runs it
 * like the others.
 *
 *   ./build/examples/gradflow [--out DIR] [--len T] [--hidden H] ... [--quick]
 *
 * It writes DIR/gradflow_grad.csv, gradflow_impulse.csv and gradflow_clip.csv
 * always, and with gnuplot (Debian: gnuplot-nox) DIR/gradflow.png (gradient
 * and impulse curves, one panel per radius) and gradflow_clip.png, drawn by
 * DIR/gradflow.gp, which stays for you to edit and rerun. Last line:
 * example=gradflow ... grad_ratio_<cell>_<radius>=||dL/dh_0||/||dL/dh_T-1|| ...
 * With --quick (run by meson test) it checks the measured radii, the
 * clipping identities and that the clipped runs learned, and exits 1 if not.
 */
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "carousel.h"
#include "cli.h"

extern char **environ;

/* ---- a user cell: the sigmoid RNN --------------------------------------------------------------- */

/* h' = s(W_ih x + b_ih + W_hh h + b_hh), PyTorch's RNN layout with a logistic
 * nonlinearity. s' <= 1/4, so its Jacobian is at most a quarter of W_hh's. */
enum { SIG_WIH, SIG_WHH, SIG_BIH, SIG_BHH };
static const cr_cell_param sigmoid_params[] = {
    {.name = "w_ih", .role = CR_PARAM_INPUT},                                 /* (H, I) */
    {.name = "w_hh", .role = CR_PARAM_WEIGHT_T, .shape = {CR_H(1), CR_H(1)}}, /* (H, H) */
    {.name = "b_ih", .role = CR_PARAM_INPUT_BIAS},                            /* (H) */
    {.name = "b_hh", .role = CR_PARAM_INPUT_BIAS},                            /* (H), not gated: joins b_ih */
};
/* gx = x W_ih^T + b_ih + b_hh (the layer's projection); w[SIG_WHH] is W_hh^T */
static void sigmoid_step(const cr_cell *c, cr_tensor *const *w, cr_tensor *gx, cr_tensor *const *s,
                         cr_tensor **next)
{
    (void)c;
    next[0] = cr_sigmoid(cr_add(gx, cr_matmul(s[0], w[SIG_WHH])));
}
static const cr_cell_type cell_rnn_sigmoid = {.name = "rnn_sigmoid",
                                              .n_states = 1,
                                              .proj = CR_H(1),
                                              .params = sigmoid_params,
                                              .n_params = 4,
                                              .step = sigmoid_step};

enum { N_CELLS = 5, N_RADII = 3 };
static const cr_cell_type *const cells[N_CELLS] = {&cr_cell_rnn_tanh, &cell_rnn_sigmoid, &cr_cell_rnn_relu,
                                                   &cr_cell_gru, &cr_cell_lstm};
static const double radii[N_RADII] = {0.9, 1.0, 1.1};

typedef struct opts {
    const char *out;
    int64_t len, hidden, input, batch, clip_len, clip_steps, threads, seed;
    double input_scale, clip_radius, clip_norm, clip_value, lr, threshold;
    bool bias, quick;
} opts;

/* ---- spectral radius -------------------------------------------------------------------------------- */

/* Spectral radius of the n x n matrix A (row-major, f64) by power iteration:
 * ||A^k v|| grows like rho^k, so the mean of log ||A v_k|| over the second
 * half of `iters` normalised steps estimates log rho. (The dominant
 * eigenvalues of a real matrix often come as a complex pair, where v_k
 * rotates and the plain Rayleigh quotient never settles; the mean growth
 * rate still converges.) */
static double spectral_radius(const double *A, int64_t n, cr_rng *rng, int iters)
{
    double *v = cr_xmalloc((size_t)n * sizeof *v), *w = cr_xmalloc((size_t)n * sizeof *w), log_sum = 0;
    for (int64_t i = 0; i < n; i++) v[i] = cr_rng_normal(rng);
    for (int k = 0; k < iters; k++) {
        double norm = 0;
        for (int64_t i = 0; i < n; i++) {
            double s = 0;
            for (int64_t j = 0; j < n; j++) s += A[i * n + j] * v[j];
            w[i] = s;
            norm += s * s;
        }
        norm = sqrt(norm);
        if (norm == 0) break; /* nilpotent: rho = 0 */
        if (k >= iters / 2) log_sum += log(norm);
        for (int64_t i = 0; i < n; i++) v[i] = w[i] / norm;
    }
    free(v);
    free(w);
    return exp(log_sum / (double)(iters - iters / 2));
}

/* ---- one network ---------------------------------------------------------------------------------- */

typedef struct net {
    cr_params *ps;
    cr_cell cell;
    double measured[4]; /* spectral radius of each gate block of w_hh after scaling */
    int blocks;
} net;

/* A cell with its default init, then every H x H gate block of w_hh scaled
 * to spectral radius rho (the GRU's r, z, n; the LSTM's i, f, g, o). */
static net net_init(const cr_cell_type *type, double rho, int64_t I, int64_t H, bool bias, uint64_t seed)
{
    cr_rng rng = cr_rng_seed(seed), probe = cr_rng_seed(seed ^ 0x9e37);
    net n = {.ps = cr_params_init()};
    n.cell = cr_cell_init(n.ps, "net",
                          (cr_cell_config){.cell = type,
                                           .input_size = I,
                                           .hidden_size = H,
                                           .no_bias = !bias,
                                           .forget_bias = bias && type == &cr_cell_lstm ? 1.0 : 0.0,
                                           .dtype = CR_F64},
                          &rng);
    cr_tensor *w = cr_cell_get(&n.cell, "w_hh"); /* (blocks H, H) */
    n.blocks = (int)(w->shape[0] / H);
    for (int k = 0; k < n.blocks; k++) {
        double *A = (double *)w->data + k * H * H;
        double scale = rho / spectral_radius(A, H, &probe, 2000);
        for (int64_t i = 0; i < H * H; i++) A[i] *= scale;
        n.measured[k] = spectral_radius(A, H, &probe, 2000); /* again, from another start */
    }
    cr_tensor_bump_version(w);
    return n;
}

static void net_free(net *n) { cr_params_free(n->ps); }

static double frobenius(const cr_tensor *t)
{
    double s = 0;
    for (int64_t i = 0; i < cr_numel(t); i++) s += cr_get_flat(t, i) * cr_get_flat(t, i);
    return sqrt(s);
}

/* out[d] = ||dL/dh_{T-1-d}|| / ||dL/dh_{T-1}|| for d = 0..T-1 (steps back
 * from the loss), where L = sum(h_{T-1} * u) over a batch of random input
 * sequences, u random: the gradient entering at the last state is u. */
static void gradient_flow(net *n, const opts *o, double *out)
{
    const int64_t T = o->len, B = o->batch, H = o->hidden;
    const int S = n->cell.type->n_states;
    cr_graph *g = cr_graph_init();
    cr_graph *prev = cr_graph_use(g);
    cr_rng rng = cr_rng_seed((uint64_t)o->seed ^ 0x1234);
    cr_tensor *s[CR_CELL_MAX_STATES], **hs = cr_xmalloc((size_t)T * sizeof *hs);
    for (int k = 0; k < S; k++) s[k] = cr_zeros(CR_F64, CR_SHAPE(B, H));
    for (int64_t t = 0; t < T; t++) {
        cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(B, o->input));
        cr_fill_normal(x, &rng, 0, o->input_scale);
        cr_cell_forward_states(&n->cell, x, s, s);
        cr_retain_grad(s[0]);
        hs[t] = s[0];
    }
    cr_tensor *u = cr_tensor_new(CR_F64, CR_SHAPE(B, H));
    cr_fill_normal(u, &rng, 0, 1);
    cr_backward(cr_sum(cr_mul(hs[T - 1], u)));
    double top = frobenius(u);
    for (int64_t d = 0; d < T; d++) out[d] = frobenius(hs[T - 1 - d]->grad) / top;
    free(hs);
    cr_graph_use(prev);
    cr_graph_free(g);
}

/* out[t] = ||h_t(x_0 = e) - h_t(x_0 = 0)|| with every later input 0 and
 * ||e|| = 1: both runs go as one batch of two, in no-grad mode. */
static void impulse_response(net *n, const opts *o, double *out)
{
    const int64_t H = o->hidden, I = o->input;
    const int S = n->cell.type->n_states;
    cr_graph *g = cr_graph_init();
    cr_graph *prev = cr_graph_use(g);
    bool was = cr_set_grad_enabled(false);
    cr_tensor *s[CR_CELL_MAX_STATES];
    for (int k = 0; k < S; k++) s[k] = cr_zeros(CR_F64, CR_SHAPE(2, H));
    cr_tensor *x0 = cr_zeros(CR_F64, CR_SHAPE(2, I)), *zero = cr_zeros(CR_F64, CR_SHAPE(2, I));
    for (int64_t i = 0; i < I; i++) cr_set_flat(x0, i, 1 / sqrt((double)I)); /* row 0 only */
    for (int64_t t = 0; t < o->len; t++) {
        cr_cell_forward_states(&n->cell, t == 0 ? x0 : zero, s, s);
        cr_tensor *d = cr_sub(cr_select(s[0], 0, 0), cr_select(s[0], 0, 1));
        out[t] = frobenius(d);
    }
    cr_set_grad_enabled(was);
    cr_graph_use(prev);
    cr_graph_free(g);
}

/* ---- clipping: training an exploding ReLU RNN ----------------------------------------------------- */

/* The task: remember the first of clip_len inputs (x_0 ~ N(0,1), the rest
 * N(0, 0.1^2)) and output it after the last one. ReLU RNN at spectral radius
 * 1.1, a linear head, squared error, plain SGD (Adam's step is bounded by its
 * learning rate whatever the gradient, which would hide the explosion). */
typedef enum clip_mode { CLIP_NONE, CLIP_NORM, CLIP_VALUE, N_MODES } clip_mode;
static const char *const mode_names[N_MODES] = {"none", "norm", "value"};

typedef struct clip_task {
    net n;
    cr_linear head;
    cr_tensor *x;      /* [T, B, 1] */
    cr_tensor *target; /* [B, 1] */
    int64_t T, B;
} clip_task;

static void clip_task_fill(clip_task *c, cr_rng *rng)
{
    double *x = c->x->data, *y = c->target->data;
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t b = 0; b < c->B; b++) x[t * c->B + b] = cr_rng_normal(rng) * (t == 0 ? 1.0 : 0.1);
    for (int64_t b = 0; b < c->B; b++) y[b] = x[b];
    cr_tensor_bump_version(c->x);
    cr_tensor_bump_version(c->target);
}

/* Squared error of rows lo..hi, summed and divided by B. */
static cr_tensor *clip_shard_loss(void *ctx, const cr_shard *s)
{
    clip_task *c = ctx;
    int64_t lo = s->begin, hi = s->end, H = c->n.cell.hidden_size;
    cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(hi - lo, H));
    for (int64_t t = 0; t < c->T; t++)
        cr_cell_forward(&c->n.cell, cr_narrow(cr_select(c->x, 0, t), 0, lo, hi - lo), h, NULL, &h, NULL);
    cr_tensor *err =
        cr_mse_loss(cr_linear_forward(&c->head, h), cr_narrow(c->target, 0, lo, hi - lo), CR_SUM);
    return cr_mul_scalar(err, 1.0 / (double)c->B);
}

/* Every gradient, flattened, in parameter order. */
static void grads_copy(const cr_params *ps, double *out)
{
    for (size_t k = 0; k < ps->n; k++) {
        const cr_tensor *gr = ps->items[k].value->grad;
        for (int64_t i = 0; i < cr_numel(ps->items[k].value); i++) *out++ = gr ? cr_get_flat(gr, i) : 0;
    }
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

typedef struct clip_report {
    double loss[N_MODES];      /* mean of the last tenth of the steps */
    int64_t diverged[N_MODES]; /* first step with a non-finite loss, or -1 */
    double raw_norm, clipped_norm[N_MODES], cosine[N_MODES], max_abs_value; /* first step */
} clip_report;

/* Train with each mode from the same weights and data; loss per step into
 * curve[mode * steps + k]. */
static clip_report clip_experiment(const opts *o, double *curve)
{
    clip_report r;
    memset(&r, 0, sizeof r);
    for (int m = 0; m < N_MODES; m++) {
        clip_task c = {.n =
                           net_init(&cr_cell_rnn_relu, o->clip_radius, 1, o->hidden, true, (uint64_t)o->seed),
                       .T = o->clip_len,
                       .B = o->batch};
        cr_rng rng = cr_rng_seed((uint64_t)o->seed ^ 0xc11b), data = cr_rng_seed((uint64_t)o->seed ^ 0xda7a);
        c.head = cr_linear_init(c.n.ps, "head", o->hidden, 1, true, CR_F64, &rng);
        c.x = cr_tensor_init(CR_F64, CR_SHAPE(c.T, c.B, 1));
        c.target = cr_tensor_init(CR_F64, CR_SHAPE(c.B, 1));
        cr_optim *opt = cr_sgd_init(c.n.ps, cr_sgd_defaults(o->lr));
        /* 4 shards on the threads; the gradient lands in the parameters' grad
         * (publish), where clipping is inspected before the step */
        cr_trainer *tr = cr_trainer_init(
            c.n.ps, (cr_trainer_config){.shards = 4, .threads = (int)o->threads, .seed = (uint64_t)o->seed});
        cr_task task = {.rows = c.B, .loss = clip_shard_loss, .ctx = &c};
        cr_graph *g = cr_graph_init();
        cr_graph *prev = cr_graph_use(g);
        size_t numel = cr_params_numel(c.n.ps);
        double *raw = cr_xmalloc(numel * sizeof *raw), *clipped = cr_xmalloc(numel * sizeof *clipped),
               tail = 0;
        r.diverged[m] = -1;
        progress bar = progress_start(o->clip_steps, "seq");
        for (int64_t k = 0; k < o->clip_steps; k++) {
            clip_task_fill(&c, &data);
            double loss = cr_trainer_backward(tr, &task);
            cr_trainer_publish(tr);
            curve[m * o->clip_steps + k] = loss;
            if (!isfinite(loss) && r.diverged[m] < 0) r.diverged[m] = k;
            if (k == 0) grads_copy(c.n.ps, raw);
            cr_status st = CR_OK;
            if (m == CLIP_NORM) st = cr_clip_grad_norm(c.n.ps, o->clip_norm, NULL);
            if (m == CLIP_VALUE) st = cr_clip_grad_value(c.n.ps, o->clip_value);
            if (k == 0) { /* what clipping did to the first gradient */
                grads_copy(c.n.ps, clipped);
                r.raw_norm = sqrt(dot(raw, raw, numel));
                r.clipped_norm[m] = sqrt(dot(clipped, clipped, numel));
                r.cosine[m] = dot(raw, clipped, numel) / (r.raw_norm * r.clipped_norm[m]);
                if (m == CLIP_VALUE)
                    for (size_t i = 0; i < numel; i++)
                        r.max_abs_value = fmax(r.max_abs_value, fabs(clipped[i]));
            }
            if (st == CR_OK) cr_optim_step(opt); /* a non-finite gradient is never applied */
            if (k >= o->clip_steps - o->clip_steps / 10) tail += loss;
            progress_update(&bar, k + 1, (k + 1) * c.B, "clip=%s loss=%.4g", mode_names[m], loss);
        }
        r.loss[m] = tail / (double)(o->clip_steps / 10 > 0 ? o->clip_steps / 10 : 1);
        free(raw);
        free(clipped);
        cr_trainer_free(tr);
        cr_optim_free(opt);
        cr_graph_use(prev);
        cr_graph_free(g);
        cr_tensor_free(c.x);
        cr_tensor_free(c.target);
        net_free(&c.n);
    }
    return r;
}

/* ---- files and pictures ---------------------------------------------------------------------------------
 */

static FILE *open_out(const opts *o, const char *name, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", o->out, name);
    FILE *f = fopen(path, "w");
    if (!f) fprintf(stderr, "gradflow: cannot write %s: %s\n", path, strerror(errno));
    return f;
}

/* Columns: the step, then one column per cell and radius ("rnn_tanh 0.9"). */
static bool write_curves(const opts *o, const char *name, const char *first,
                         const double *v /* [cell][radius][T] */)
{
    char path[4096];
    FILE *f = open_out(o, name, path, sizeof path);
    if (!f) return false;
    fprintf(f, "%s", first);
    for (int c = 0; c < N_CELLS; c++)
        for (int r = 0; r < N_RADII; r++) fprintf(f, ",%s %.1f", cells[c]->name, radii[r]);
    fprintf(f, "\n");
    for (int64_t t = 0; t < o->len; t++) {
        fprintf(f, "%lld", (long long)t);
        for (int k = 0; k < N_CELLS * N_RADII; k++) fprintf(f, ",%.6e", v[k * o->len + t]);
        fprintf(f, "\n");
    }
    bool ok = !ferror(f);
    ok &= fclose(f) == 0;
    if (ok) printf("wrote %s\n", path);
    return ok;
}

static bool write_clip(const opts *o, const double *curve)
{
    char path[4096];
    FILE *f = open_out(o, "gradflow_clip.csv", path, sizeof path);
    if (!f) return false;
    fprintf(f, "step,no clipping,clip norm %g,clip value %g\n", o->clip_norm, o->clip_value);
    for (int64_t k = 0; k < o->clip_steps; k++)
        fprintf(f, "%lld,%.6e,%.6e,%.6e\n", (long long)k, curve[k], curve[o->clip_steps + k],
                curve[2 * o->clip_steps + k]);
    bool ok = !ferror(f);
    ok &= fclose(f) == 0;
    if (ok) printf("wrote %s\n", path);
    return ok;
}

/* The gnuplot script: the gradient and impulse curves as one picture of
 * two rows (one panel per radius), and the three training curves. */
static bool write_script(const opts *o, int64_t diverged, char *path, size_t len)
{
    FILE *f = open_out(o, "gradflow.gp", path, len);
    if (!f) return false;
    const char *d = o->out;
    fprintf(
        f,
        "# Drawn by examples/gradflow; edit and rerun: gnuplot %s\n"
        "set terminal pngcairo size 1500,900 font ',10'\n"
        "set termoption noenhanced\n"
        "set datafile separator ','\n"
        "set datafile missing 'nan'\n"
        "set output '%s/gradflow.png'\n"
        "set logscale y\nset format y '1e%%T'\nset grid\nset key bottom left font ',9'\n"
        "set multiplot layout 2,3 title 'RNN (H=%lld) stability: gradient and memory against the spectral "
        "radius of the recurrent matrix'\n",
        path, d, (long long)o->hidden);
    for (int r = 0; r < N_RADII; r++)
        fprintf(f,
                "set title 'spectral radius %.1f: ||dL/dh_t|| / ||dL/dh_T||'\n"
                "set xlabel 'steps back from the loss'\nset yrange [1e-12:1e4]\n"
                "plot for [c=0:%d] '%s/gradflow_grad.csv' using 1:(column(2+c*%d+%d)) with lines lw 2 "
                "title columnheader(2+c*%d+%d)\n",
                radii[r], N_CELLS - 1, d, N_RADII, r, N_RADII, r);
    for (int r = 0; r < N_RADII; r++)
        fprintf(f,
                "set title 'spectral radius %.1f: impulse response ||h_t(x_0=e) - h_t(x_0=0)||'\n"
                "set xlabel 'steps after the impulse'\nset yrange [1e-12:1e4]\n"
                "plot for [c=0:%d] '%s/gradflow_impulse.csv' using 1:(column(2+c*%d+%d)) with lines lw 2 "
                "title columnheader(2+c*%d+%d)\n",
                radii[r], N_CELLS - 1, d, N_RADII, r, N_RADII, r);
    fprintf(
        f,
        "unset multiplot\n"
        "set terminal pngcairo size 900,500 font ',10'\n"
        "set output '%s/gradflow_clip.png'\n"
        "set title 'ReLU RNN at spectral radius %g remembers its first input for %lld steps (SGD, lr %g)'\n"
        "set xlabel 'training step'\nset ylabel 'squared error'\nset yrange [*:*]\nset key top right\n",
        d, o->clip_radius, (long long)o->clip_len, o->lr);
    if (diverged >= 0) /* its curve may be a single point: say what happened */
        fprintf(f,
                "set label 'no clipping: the loss overflows to NaN at step %lld' at graph 0.35, graph 0.75\n",
                (long long)diverged);
    fprintf(f,
            "plot '%s/gradflow_clip.csv' using 1:2 with linespoints pt 7 lw 2 title columnheader(2), \\\n"
            "     for [c=3:4] '%s/gradflow_clip.csv' using 1:c with lines lw 2 title columnheader(c)\n",
            d, d);
    bool ok = !ferror(f);
    ok &= fclose(f) == 0;
    return ok;
}

/* Run gnuplot on the script; false (with the reason) when it is missing or
 * fails. No shell: the output directory's name is never interpreted. */
static bool draw(const char *script)
{
    pid_t pid;
    char *argv[] = {"gnuplot", (char *)script, NULL};
    int e = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
    if (e) {
        printf("gnuplot not found (%s): wrote the CSV files only; apt-get install gnuplot-nox draws them\n",
               strerror(e));
        return false;
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        printf("gnuplot failed on %s: wrote the CSV files only\n", script);
        return false;
    }
    return true;
}

/* ---- main
 * -------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.out = "gradflow-out",
              .len = 100,
              .hidden = 32,
              .input = 8,
              .batch = 16,
              .clip_len = 40,
              .clip_steps = 300,
              .threads = quick ? 1 : 0,
              .seed = 1,
              .input_scale = 0.1,
              .clip_radius = 2.0,
              .clip_norm = 1.0,
              .clip_value = 0.05,
              .lr = 0.01,
              .threshold = 0.3,
              .quick = quick};
    if (quick) o.len = 60, o.clip_steps = 150;
    cli_flag flags[] = {
        {"--out", CLI_STR, &o.out, "directory for the CSV files, the gnuplot script and the PNGs"},
        {"--len", CLI_INT, &o.len, "time steps T of the gradient and impulse runs"},
        {"--hidden", CLI_INT, &o.hidden, "hidden units H"},
        {"--input", CLI_INT, &o.input, "input features"},
        {"--batch", CLI_INT, &o.batch, "sequences averaged over"},
        {"--input-scale", CLI_REAL, &o.input_scale, "std of the random inputs of the gradient runs"},
        {"--bias", CLI_BOOL, &o.bias, "give the cells their random biases (default: none, the matrix alone)"},
        {"--clip-radius", CLI_REAL, &o.clip_radius, "spectral radius of the clipping runs' ReLU RNN"},
        {"--clip-len", CLI_INT, &o.clip_len, "steps the clipping task must remember its first input"},
        {"--clip-steps", CLI_INT, &o.clip_steps, "SGD steps of each clipping run"},
        {"--clip-norm", CLI_REAL, &o.clip_norm, "global norm the 'norm' run clips to"},
        {"--clip-value", CLI_REAL, &o.clip_value, "bound the 'value' run clamps every element to"},
        {"--lr", CLI_REAL, &o.lr, "SGD learning rate of the clipping runs"},
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails if a clipped run ends above this loss"},
        {"--threads", CLI_INT, &o.threads, "threads taking the clipping runs' 4 shards (0: every core)"},
        {"--seed", CLI_INT, &o.seed, "seed of weights and data"},
        {"--quick", CLI_BOOL, &o.quick, "a short run (--len 60 --clip-steps 150) that checks its results"},
    };
    cli_parse(
        argc, argv,
        "Gradient norm through time, impulse response and gradient clipping for tanh, sigmoid (a user\n"
        "cell) and ReLU RNNs, GRU and LSTM at spectral radius 0.9, 1.0 and 1.1; CSV, and PNG with gnuplot.",
        NULL, flags, CLI_COUNT(flags));
    if (o.len < 2 || o.hidden < 1 || o.input < 1 || o.batch < 4 || o.clip_len < 1 || o.clip_steps < 10 ||
        !(o.input_scale >= 0) || !(o.clip_norm > 0) || !(o.clip_value > 0) || !(o.lr > 0) || o.threads < 0 ||
        o.threads > 1024)
        cli_fail(argv[0], "a size or rate out of range");
    if (strpbrk(o.out, "'\n"))
        cli_fail(argv[0], "--out: a directory name without quotes or newlines, please");
    if (mkdir(o.out, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "gradflow: cannot create %s: %s\n", o.out, strerror(errno));
        return 1;
    }
    /* Kernels on tensors this small lose more to threading than they gain: the
     * trainer's threads take whole shards instead (0 resolved first, while
     * cr_get_num_threads still counts every core). */
    o.threads = cli_threads(o.threads);
    cr_set_num_threads(1);

    const int64_t T = o.len;
    double *grad = cr_xmalloc((size_t)(N_CELLS * N_RADII * T) * sizeof *grad);
    double *resp = cr_xmalloc((size_t)(N_CELLS * N_RADII * T) * sizeof *resp);
    bool ok = true;
    char summary[2048] = "";
    printf("example=gradflow hidden=%lld len=%lld input=%lld batch=%lld\n", (long long)o.hidden, (long long)T,
           (long long)o.input, (long long)o.batch);
    for (int c = 0; c < N_CELLS; c++) {
        for (int r = 0; r < N_RADII; r++) {
            int k = c * N_RADII + r;
            net n = net_init(cells[c], radii[r], o.input, o.hidden, o.bias, (uint64_t)o.seed);
            printf("cell=%-11s radius=%.1f measured=", cells[c]->name, radii[r]);
            for (int b = 0; b < n.blocks; b++) {
                printf("%s%.4f", b ? "," : "", n.measured[b]);
                ok &= fabs(n.measured[b] - radii[r]) < 1e-2 * radii[r];
            }
            gradient_flow(&n, &o, grad + k * T);
            impulse_response(&n, &o, resp + k * T);
            double ratio = grad[k * T + T - 1];
            printf(" grad_t-%lld=%.3e grad_t-%lld=%.3e impulse_t%lld=%.3e impulse_t%lld=%.3e\n",
                   (long long)(T / 2), grad[k * T + T / 2], (long long)(T - 1), ratio, (long long)(T / 2),
                   resp[k * T + T / 2], (long long)(T - 1), resp[k * T + T - 1]);
            size_t used = strlen(summary);
            snprintf(summary + used, sizeof summary - used, " grad_ratio_%s_%.1f=%.3e", cells[c]->name,
                     radii[r], ratio);
            net_free(&n);
        }
    }
    if (!ok) fprintf(stderr, "gradflow: a measured spectral radius is more than 1%% off its target\n");
    /* The claims the pictures make: in the tanh RNN's near-linear regime the
     * gradient shrinks like rho^t below radius 1 and grows above it; a larger
     * radius always carries it further; the sigmoid's slope (at most 1/4)
     * makes it vanish faster than the tanh at every radius. */
    bool claims = grad[T - 1] < 1 && grad[2 * T + T - 1] > 1;
    for (int c = 0; c < N_CELLS; c++)
        for (int r = 0; r + 1 < N_RADII; r++)
            claims &= grad[(c * N_RADII + r) * T + T - 1] < grad[(c * N_RADII + r + 1) * T + T - 1];
    for (int r = 0; r < N_RADII; r++) claims &= grad[(N_RADII + r) * T + T - 1] < grad[r * T + T - 1];
    if (!claims) fprintf(stderr, "gradflow: the gradient norms do not show the expected order\n");
    ok &= claims;

    double *curve = cr_xmalloc((size_t)(N_MODES * o.clip_steps) * sizeof *curve);
    clip_report cr = clip_experiment(&o, curve);
    printf("first gradient: norm %.4g; clipped by norm: norm %.4g, cosine with the raw gradient %.6f; "
           "by value: norm %.4g, largest element %.4g, cosine %.6f\n",
           cr.raw_norm, cr.clipped_norm[CLIP_NORM], cr.cosine[CLIP_NORM], cr.clipped_norm[CLIP_VALUE],
           cr.max_abs_value, cr.cosine[CLIP_VALUE]);
    for (int m = 0; m < N_MODES; m++) {
        if (cr.diverged[m] >= 0)
            printf("clip=%-5s diverged at step %lld\n", mode_names[m], (long long)cr.diverged[m]);
        else
            printf("clip=%-5s final_loss=%.4f\n", mode_names[m], cr.loss[m]);
    }
    /* Clipping by norm keeps the direction and sets the norm; by value it bounds every element. */
    bool clip_ok = fabs(cr.clipped_norm[CLIP_NORM] - fmin(o.clip_norm, cr.raw_norm)) < 1e-5 * o.clip_norm &&
                   cr.cosine[CLIP_NORM] > 1 - 1e-12 && cr.max_abs_value <= o.clip_value;
    bool learned = cr.diverged[CLIP_NORM] < 0 && cr.diverged[CLIP_VALUE] < 0 &&
                   cr.loss[CLIP_NORM] < o.threshold && cr.loss[CLIP_VALUE] < o.threshold;
    if (!clip_ok)
        fprintf(stderr, "gradflow: a clipped gradient breaks its identity (norm, direction or bound)\n");
    if (!learned)
        fprintf(stderr, "gradflow: a clipped run ended above the loss threshold %.3f\n", o.threshold);
    ok &= clip_ok && learned;

    char script[4096];
    bool files = write_curves(&o, "gradflow_grad.csv", "steps_back", grad) &&
                 write_curves(&o, "gradflow_impulse.csv", "t", resp) && write_clip(&o, curve) &&
                 write_script(&o, cr.diverged[CLIP_NONE], script, sizeof script);
    bool drawn = files && draw(script);
    if (drawn) printf("wrote %s/gradflow.png and %s/gradflow_clip.png\n", o.out, o.out);
    printf("example=gradflow len=%lld hidden=%lld png=%d clip_none_loss=%.4g clip_norm_loss=%.4g "
           "clip_value_loss=%.4g clip_norm_cosine=%.6f clip_value_cosine=%.6f%s\n",
           (long long)T, (long long)o.hidden, drawn, cr.diverged[CLIP_NONE] >= 0 ? NAN : cr.loss[CLIP_NONE],
           cr.loss[CLIP_NORM], cr.loss[CLIP_VALUE], cr.cosine[CLIP_NORM], cr.cosine[CLIP_VALUE], summary);
    free(grad);
    free(resp);
    free(curve);
    if (!files) return 1;
    return o.quick && !ok ? 1 : 0;
}
