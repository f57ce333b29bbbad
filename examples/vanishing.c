/* Exploding and vanishing gradients in a vanilla tanh RNN: the recurrent
 * matrix is orthogonal times a gain (its spectral radius), and retain_grad
 * keeps dL/dh_t for every step so we can watch the norm shrink or grow as the
 * gradient travels back from the last step.
 *
 *   ./build/examples/vanishing [--steps T] [--hidden H] [--seed S]
 *
 * (examples/gradflow extends this to five cells, three radii, the impulse
 * response and clipping, and draws the curves.)
 *
 * One line per gain: gain=... then the norm at a few distances from the end;
 * last line: example=vanishing steps=... ratio_gain_0.5=... (||dL/dh_0|| / ||dL/dh_T-1||)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel.h"
#include "cli.h"

static double norm(const cr_tensor *t)
{
    double s = 0;
    for (int64_t i = 0; i < cr_numel(t); i++) s += cr_get_flat(t, i) * cr_get_flat(t, i);
    return sqrt(s);
}

/* ||dL/dh_0|| / ||dL/dh_{T-1}|| for a tanh RNN whose W_hh has spectral radius gain */
static double run(double gain, int64_t T, int64_t H, uint64_t seed, bool print)
{
    cr_graph *g = cr_graph_init();
    cr_graph *prev = cr_graph_use(g);
    cr_params *ps = cr_params_init();
    cr_rng rng = cr_rng_seed(seed);
    cr_cell cell = cr_cell_init(
        ps, "rnn",
        (cr_cell_config){
            .cell = &cr_cell_rnn_tanh, .input_size = H, .hidden_size = H, .no_bias = true, .dtype = CR_F64},
        &rng);
    cr_init_orthogonal(cr_cell_get(&cell, "w_hh"), &rng, gain,
                       0); /* all eigenvalues on the circle of radius gain */
    cr_init_uniform(cr_cell_get(&cell, "w_ih"), &rng, 0.1);
    cr_tensor *x = cr_tensor_new(CR_F64, CR_SHAPE(1, H));
    cr_fill_normal(x, &rng, 0, 0.1);
    cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(1, H));
    cr_tensor **hs = malloc((size_t)T * sizeof *hs);
    for (int64_t t = 0; t < T; t++) {
        cr_cell_forward(&cell, x, h, NULL, &h, NULL);
        cr_retain_grad(h);
        hs[t] = h;
    }
    cr_backward(cr_sum(h)); /* the loss sees only the last state */
    double last = norm(hs[T - 1]->grad), first = norm(hs[0]->grad);
    if (print) {
        printf("gain=%.2f", gain);
        for (int64_t d = 0; d<T; d += T / 8> 0 ? T / 8 : 1)
            printf(" grad_norm_t-%lld=%.3e", (long long)d, norm(hs[T - 1 - d]->grad));
        printf("\n");
    }
    free(hs);
    cr_params_free(ps);
    cr_graph_use(prev);
    cr_graph_free(g);
    return first / last;
}

int main(int argc, char **argv)
{
    int64_t T = 50, H = 32, seed = 1;
    cli_flag flags[] = {
        {"--steps", CLI_INT, &T, "time steps T"},
        {"--hidden", CLI_INT, &H, "hidden units H"},
        {"--seed", CLI_INT, &seed, "seed of the weights and inputs"},
    };
    cli_parse(argc, argv,
              "The gradient norm back through time in a tanh RNN whose recurrent matrix is orthogonal times\n"
              "a gain of 0.5 to 3 (examples/gradflow has the full analysis, with pictures).",
              NULL, flags, CLI_COUNT(flags));
    if (T < 2 || H < 1) cli_fail(argv[0], "--steps must be at least 2 and --hidden at least 1");
    const double gains[] = {0.5, 0.9, 1.0, 1.5, 3.0};
    double ratio[5];
    for (int k = 0; k < 5; k++) ratio[k] = run(gains[k], T, H, (uint64_t)seed, true);
    /* Below radius 1 the norm decays geometrically (about gain^distance); above
     * it the norm grows until tanh saturates and its derivative holds it back. */
    printf(
        "example=vanishing steps=%lld hidden=%lld ratio_gain_0.5=%.3e ratio_gain_1.0=%.3e ratio_gain_1.5=%.3e "
        "ratio_gain_3.0=%.3e\n",
        (long long)T, (long long)H, ratio[0], ratio[2], ratio[3], ratio[4]);
    return 0;
}
