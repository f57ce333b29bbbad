/* The learned Kalman filter as a linear RNN.
 *
 * A target moves in 1-D with constant velocity perturbed by random
 * accelerations, and we see its position through noise. The classic Kalman
 * filter (known F, H, Q, R) gives the minimum-MSE estimate of the position.
 * Its steady state is a linear recurrence
 *
 *     x^_t = (I - K H) F x^_{t-1} + K z_t,    p^_t = H x^_t
 *
 * which is exactly a linear RNN h_t = A h_{t-1} + B z_t, y_t = C h_t. So a
 * linear RNN trained only on (measurement, true position) pairs, knowing
 * nothing of the model, should learn to filter nearly as well as Kalman. The
 * program trains one with Adam and compares both on held-out sequences, then
 * compares the learned impulse response C A^k B with the steady-state
 * Kalman filter's H Abar^k K (the hidden basis is not identifiable; the
 * input-output map is).
 *
 *   ./build/examples/kalman [--steps N] [--len T] [--hidden H] ... [--quick]
 *
 * Last line: example=kalman mse_measurement=... mse_kalman=... mse_rnn=...
 *            ratio_rnn_to_kalman=... (then mse_kalman_steady=..., the fixed-gain filter)
 * With --quick (run by meson test) it trains briefly and exits 1 unless the
 * RNN's error is within --threshold times the Kalman filter's.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "carousel.h"
#include "cli.h"

typedef struct opts {
    cli_training t;
    int64_t len, test;
    double sigma_a, sigma_z, threshold;
} opts;

/* The simulated world (dt = 1):
 *   state   x_t = [p_t, v_t]^T
 *   motion  x_t = F x_{t-1} + G a_t,  F = [1 1; 0 1], G = [1/2; 1], a_t ~ N(0, sigma_a^2)
 *           so Q = Cov(G a_t) = sigma_a^2 G G^T
 *   sensor  z_t = H x_t + n_t,        H = [1 0],               n_t ~ N(0, sigma_z^2) = N(0, R)
 *   prior   x_0 ~ N(0, P_0),          P_0 = diag(SIGMA_P0^2, SIGMA_V0^2)
 */
#define SIGMA_P0 1.0
#define SIGMA_V0 0.5

typedef struct world {
    double sigma_a, sigma_z;
} world;

typedef struct lrnn {
    cr_tensor *A; /* (H, H) state transition */
    cr_tensor *B; /* (H, 1) input weights */
    cr_tensor *C; /* (1, H) readout */
} lrnn;

static opts parse(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.t = {.steps = quick ? 1000 : 3000,
                    .batch = 64,
                    .hidden = 8,
                    .shards = 4,
                    .threads = quick ? 1 : 0,
                    .seed = 1,
                    .lr = 5e-2,
                    .clip = 100.0, /* only a guard: a bad start can overshoot */
                    .decay = 100,
                    .quick = quick},
              .len = 50,
              .test = 1000,
              .sigma_a = 0.2,
              .sigma_z = 1.0,
              .threshold = 1.1};
    cli_flag flags[] = {
        CLI_TRAINING_FLAG("--steps", "training steps (batches of fresh sequences)"),
        CLI_TRAINING_FLAG("--batch", "sequences per batch"),
        {"--len", CLI_INT, &o.len, "time steps T per sequence"},
        CLI_TRAINING_FLAG("--hidden", "state size of the linear RNN"),
        {"--test", CLI_INT, &o.test, "held-out sequences"},
        CLI_TRAINING_FLAG("--shards", NULL),
        CLI_TRAINING_FLAG("--threads", NULL),
        CLI_TRAINING_FLAG("--lr", NULL),
        {"--sigma-a", CLI_REAL, &o.sigma_a, "std of the random accelerations"},
        {"--sigma-z", CLI_REAL, &o.sigma_z, "std of the measurement noise"},
        {"--threshold", CLI_REAL, &o.threshold, "--quick fails if mse_rnn / mse_kalman exceeds this"},
        CLI_TRAINING_FLAG("--seed", NULL),
        CLI_TRAINING_FLAG("--quick", "a short run (1000 steps) that exits 1 unless it learned"),
    };
    cli_training_parse(&o.t, argc, argv,
                       "A linear RNN learns the Kalman filter of a noisy constant-velocity target.", NULL,
                       flags, CLI_COUNT(flags));
    cli_training_check(&o.t, argv[0], o.len < 1 || o.test < 1 || !(o.sigma_a >= 0) || !(o.sigma_z > 0),
                       "an option out of range");
    return o;
}

/* N sequences of T steps: z[n*T+t] the measurement, p[n*T+t] the true position. */
static void simulate(const world *w, cr_rng *rng, int64_t N, int64_t T, float *z, float *p)
{
    for (int64_t n = 0; n < N; n++) {
        double pos = SIGMA_P0 * cr_rng_normal(rng), vel = SIGMA_V0 * cr_rng_normal(rng);
        for (int64_t t = 0; t < T; t++) {
            double acc = w->sigma_a * cr_rng_normal(rng);
            pos += vel + 0.5 * acc; /* x_t = F x_{t-1} + G a_t */
            vel += acc;
            p[n * T + t] = (float)pos;
            z[n * T + t] = (float)(pos + w->sigma_z * cr_rng_normal(rng)); /* z_t = H x_t + n_t */
        }
    }
}

/* One Kalman step in plain C, state x (2), covariance P (2x2), measurement z.
 *   predict  x- = F x                    P- = F P F^T + Q
 *   update   S = H P- H^T + R            K = P- H^T / S
 *            x = x- + K (z - H x-)       P = (I - K H) P-
 * Returns the gain K through k (may be NULL). */
static void kalman_step(const world *w, double x[2], double P[2][2], double z, double k[2])
{
    double qa = w->sigma_a * w->sigma_a, R = w->sigma_z * w->sigma_z;
    /* Q = sigma_a^2 [1/4 1/2; 1/2 1] */
    double q00 = 0.25 * qa, q01 = 0.5 * qa, q11 = qa;
    /* F x and F P F^T with F = [1 1; 0 1] */
    double xp0 = x[0] + x[1], xp1 = x[1];
    double p00 = P[0][0] + 2 * P[0][1] + P[1][1] + q00;
    double p01 = P[0][1] + P[1][1] + q01;
    double p11 = P[1][1] + q11;
    double S = p00 + R, k0 = p00 / S, k1 = p01 / S, innov = z - xp0;
    x[0] = xp0 + k0 * innov;
    x[1] = xp1 + k1 * innov;
    /* (I - K H) P-: row i loses K_i times row 0 of P- */
    P[0][0] = p00 - k0 * p00;
    P[0][1] = p01 - k0 * p01;
    P[1][0] = P[0][1];
    P[1][1] = p11 - k1 * p01;
    if (k) {
        k[0] = k0;
        k[1] = k1;
    }
}

/* The time-varying filter from the true prior: est[n*T+t] = H x^_{t|t}. */
static void kalman_filter(const world *w, const float *z, int64_t N, int64_t T, float *est)
{
    for (int64_t n = 0; n < N; n++) {
        double x[2] = {0, 0}, P[2][2] = {{SIGMA_P0 * SIGMA_P0, 0}, {0, SIGMA_V0 * SIGMA_V0}};
        for (int64_t t = 0; t < T; t++) {
            kalman_step(w, x, P, z[n * T + t], NULL);
            est[n * T + t] = (float)x[0];
        }
    }
}

/* Iterate the Riccati recursion to its fixed point: the steady-state gain K
 * and Abar = (I - K H) F, the linear RNN the learned one should converge to. */
static void kalman_steady(const world *w, double K[2], double Abar[2][2])
{
    double x[2] = {0, 0}, P[2][2] = {{SIGMA_P0 * SIGMA_P0, 0}, {0, SIGMA_V0 * SIGMA_V0}};
    for (int i = 0; i < 10000; i++) kalman_step(w, x, P, 0, K);
    /* (I - K H) = [1-K0 0; -K1 1], times F = [1 1; 0 1] */
    Abar[0][0] = 1 - K[0];
    Abar[0][1] = 1 - K[0];
    Abar[1][0] = -K[1];
    Abar[1][1] = 1 - K[1];
}

/* The fixed-gain filter x^_t = Abar x^_{t-1} + K z_t from x^_0 = 0. */
static void kalman_fixed(const double K[2], double Abar[2][2], const float *z, int64_t N, int64_t T,
                         float *est)
{
    for (int64_t n = 0; n < N; n++) {
        double x0 = 0, x1 = 0;
        for (int64_t t = 0; t < T; t++) {
            double zt = z[n * T + t];
            double y0 = Abar[0][0] * x0 + Abar[0][1] * x1 + K[0] * zt;
            double y1 = Abar[1][0] * x0 + Abar[1][1] * x1 + K[1] * zt;
            x0 = y0;
            x1 = y1;
            est[n * T + t] = (float)x0;
        }
    }
}

/* Estimates [N, T] of the linear RNN for measurements z [N, T], as ops:
 *   h_0 = 0,  h_t = A h_{t-1} + B z_t,  y_t = C h_t
 * Rows of the batch are row vectors, so the code computes h_t A^T + z_t B^T
 * with transposed views (no copies). */
static cr_tensor *lrnn_forward(const lrnn *m, cr_tensor *z)
{
    int64_t N = z->shape[0], T = z->shape[1];
    /* z_t B^T for every t at once: [N, T, 1] x [1, H] -> [N, T, H] */
    cr_tensor *zb = cr_matmul(cr_reshape(z, CR_SHAPE(N, T, 1)), cr_transpose(m->B, 0, 1));
    cr_tensor *at = cr_transpose(m->A, 0, 1);
    cr_tensor **hs = cr_xmalloc((size_t)T * sizeof *hs);
    cr_tensor *h = NULL;
    for (int64_t t = 0; t < T; t++) {
        cr_tensor *in = cr_select(zb, 1, t); /* [N, H] */
        h = h ? cr_add(cr_matmul(h, at), in) : in;
        hs[t] = h;
    }
    cr_tensor *y = cr_matmul(cr_stack((int)T, hs, 1), cr_transpose(m->C, 0, 1)); /* [N, T, 1] */
    free(hs);
    return cr_reshape(y, CR_SHAPE(N, T));
}

typedef struct step_ctx {
    const lrnn *m;
    const float *z, *p; /* measurements and true positions [B, T] */
    int64_t B, T;
} step_ctx;

/* Squared error summed over a shard's sequences and steps, divided by B*T:
 * the shards add up to the batch's mean_{n,t} (y - p)^2. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    step_ctx *c = ctx;
    int64_t lo = s->begin, hi = s->end;
    cr_tensor *z = cr_from_array(CR_F32, CR_SHAPE(hi - lo, c->T), c->z + lo * c->T);
    cr_tensor *p = cr_from_array(CR_F32, CR_SHAPE(hi - lo, c->T), c->p + lo * c->T);
    return cr_mul_scalar(cr_mse_loss(lrnn_forward(c->m, z), p, CR_SUM), 1.0 / (double)(c->B * c->T));
}

static double mse(const float *a, const float *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return s / (double)n;
}

/* MSE at step t only, over the N sequences. */
static double mse_at(const float *a, const float *b, int64_t N, int64_t T, int64_t t)
{
    double s = 0;
    for (int64_t n = 0; n < N; n++)
        s += ((double)a[n * T + t] - b[n * T + t]) * ((double)a[n * T + t] - b[n * T + t]);
    return s / (double)N;
}

/* Impulse response of the learned RNN, C A^k B for k = 0..n-1 (plain C on the parameter values). */
static void lrnn_impulse(const lrnn *m, int n, double *out)
{
    int64_t H = m->A->shape[0];
    double *v = cr_xmalloc((size_t)H * sizeof *v), *w = cr_xmalloc((size_t)H * sizeof *w);
    for (int64_t i = 0; i < H; i++) v[i] = cr_get_flat(m->B, i); /* v = A^k B */
    for (int k = 0; k < n; k++) {
        double y = 0;
        for (int64_t i = 0; i < H; i++) y += cr_get_flat(m->C, i) * v[i];
        out[k] = y;
        for (int64_t i = 0; i < H; i++) {
            w[i] = 0;
            for (int64_t j = 0; j < H; j++) w[i] += cr_get_flat(m->A, i * H + j) * v[j];
        }
        memcpy(v, w, (size_t)H * sizeof *v);
    }
    free(v);
    free(w);
}

int main(int argc, char **argv)
{
    opts o = parse(argc, argv);
    cli_training *t = &o.t;
    world w = {.sigma_a = o.sigma_a, .sigma_z = o.sigma_z};
    int64_t B = t->batch, T = o.len, H = t->hidden, NT = o.test;

    /* The reference: the steady-state filter as a linear RNN. */
    double K[2], Abar[2][2];
    kalman_steady(&w, K, Abar);
    printf("world: sigma_a=%g sigma_z=%g len=%lld; steady-state gain K=[%.4f, %.4f]\n", o.sigma_a, o.sigma_z,
           (long long)T, K[0], K[1]);

    cr_rng data_rng = cr_rng_seed((uint64_t)t->seed ^ UINT64_C(0x7a11)),
           test_rng = cr_rng_seed((uint64_t)t->seed ^ UINT64_C(0x7e57));
    cr_params *ps = cr_params_init();
    lrnn m = {.A = cr_params_add(ps, "kalman", "A", CR_F32, CR_SHAPE(H, H)),
              .B = cr_params_add(ps, "kalman", "B", CR_F32, CR_SHAPE(H, 1)),
              .C = cr_params_add(ps, "kalman", "C", CR_F32, CR_SHAPE(1, H))};
    /* A starts as a stable rotation-and-shrink (spectral radius 0.9) so that
     * early gradients through 50 steps neither explode nor vanish. Two hidden
     * units suffice in principle (--hidden 2: the filter's state is [p, v]),
     * but the minimal model sometimes sits for thousands of steps on a plateau
     * (a real eigenvalue of A has to become a complex pair); with a few spare
     * units it converges from every seed we tried. */
    cr_init_orthogonal(m.A, &t->rng, 0.9, 0);
    cr_init_uniform(m.B, &t->rng, 1.0 / sqrt((double)H));
    cr_init_uniform(m.C, &t->rng, 1.0 / sqrt((double)H));
    cli_training_start(t, ps);

    /* Training: a fresh batch of simulated sequences every step (no data is
     * seen twice), full BPTT through all T steps of each sequence. Sequences
     * are independent and short, the filter's memory (about 1/(1-|eig Abar|)
     * steps) is well under T, and h_0 = 0 matches the filter's zero prior
     * mean, so there is nothing to carry between batches and nothing to gain
     * from truncating. */
    float *z = cr_xmalloc((size_t)(B * T) * sizeof *z), *p = cr_xmalloc((size_t)(B * T) * sizeof *p);
    step_ctx ctx = {.m = &m, .z = z, .p = p, .B = B, .T = T};
    progress bar = progress_start(t->steps, "seq");
    double loss_avg = NAN;
    for (int64_t step = 0; step < t->steps; step++) {
        simulate(&w, &data_rng, B, T, z, p);
        double l = cli_training_step(t, step, shard_loss, &ctx);
        loss_avg = isnan(loss_avg) ? l : 0.9 * loss_avg + 0.1 * l;
        progress_update(&bar, step + 1, (step + 1) * B, "train_mse=%.4f lr=%.2e", loss_avg,
                        cr_optim_get_lr(t->opt));
    }
    free(z);
    free(p);

    /* Held-out sequences from another stream. */
    float *zs = cr_xmalloc((size_t)(NT * T) * sizeof *zs),
          *ps_true = cr_xmalloc((size_t)(NT * T) * sizeof *ps_true);
    float *kf = cr_xmalloc((size_t)(NT * T) * sizeof *kf), *kss = cr_xmalloc((size_t)(NT * T) * sizeof *kss);
    float *rn = cr_xmalloc((size_t)(NT * T) * sizeof *rn);
    simulate(&w, &test_rng, NT, T, zs, ps_true);
    kalman_filter(&w, zs, NT, T, kf);
    kalman_fixed(K, Abar, zs, NT, T, kss);
    bool old = cr_set_grad_enabled(false);
    cr_tensor *y = lrnn_forward(&m, cr_from_array(CR_F32, CR_SHAPE(NT, T), zs));
    for (int64_t i = 0; i < NT * T; i++) rn[i] = (float)cr_get_flat(y, i);
    cr_graph_clear(t->g);
    cr_set_grad_enabled(old);

    double m_meas = mse(zs, ps_true, NT * T), m_kf = mse(kf, ps_true, NT * T);
    double m_kss = mse(kss, ps_true, NT * T), m_rnn = mse(rn, ps_true, NT * T);
    printf("held-out: %lld sequences x %lld steps\n", (long long)NT, (long long)T);
    printf("%-6s %12s %12s %12s %12s\n", "t", "measurement", "kalman", "kalman_ss", "linear_rnn");
    const int64_t ts[] = {1, 2, 3, 5, 10, 20, T};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        int64_t t = ts[i] - 1;
        if (t >= T || (i > 0 && ts[i] <= ts[i - 1])) continue;
        printf("%-6lld %12.4f %12.4f %12.4f %12.4f\n", (long long)(t + 1), mse_at(zs, ps_true, NT, T, t),
               mse_at(kf, ps_true, NT, T, t), mse_at(kss, ps_true, NT, T, t), mse_at(rn, ps_true, NT, T, t));
    }
    printf("%-6s %12.4f %12.4f %12.4f %12.4f\n", "all", m_meas, m_kf, m_kss, m_rnn);

    /* The input-output maps: y_t = sum_k (C A^k B) z_{t-k} against H Abar^k K. */
    enum { NK = 12 };
    double imp[NK];
    lrnn_impulse(&m, NK, imp);
    printf("impulse response  k:");
    for (int k = 0; k < NK; k += 2) printf(" %8d", k);
    printf("\n  kalman H Abar^k K:");
    double v0 = K[0], v1 = K[1];
    for (int k = 0; k < NK; k++) {
        if (k % 2 == 0) printf(" %8.4f", v0);
        double n0 = Abar[0][0] * v0 + Abar[0][1] * v1, n1 = Abar[1][0] * v0 + Abar[1][1] * v1;
        v0 = n0;
        v1 = n1;
    }
    printf("\n  learned  C A^k B  :");
    for (int k = 0; k < NK; k += 2) printf(" %8.4f", imp[k]);
    printf("\n");

    printf("example=kalman mse_measurement=%.4f mse_kalman=%.4f mse_rnn=%.4f ratio_rnn_to_kalman=%.4f "
           "mse_kalman_steady=%.4f steps=%lld hidden=%lld\n",
           m_meas, m_kf, m_rnn, m_rnn / m_kf, m_kss, (long long)t->steps, (long long)H);
    bool ok = m_rnn / m_kf <= o.threshold;
    if (t->quick && !ok)
        fprintf(stderr, "kalman: mse_rnn / mse_kalman = %.4f above the threshold %.2f\n", m_rnn / m_kf,
                o.threshold);

    free(zs);
    free(ps_true);
    free(kf);
    free(kss);
    free(rn);
    cli_training_free(t);
    cr_params_free(ps);
    return t->quick && !ok ? 1 : 0;
}
