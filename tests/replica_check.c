/* The data-parallel trainer as a plain program, without Criterion, so that
 * it runs under ThreadSanitizer (Criterion aborts under TSan: its inheritable
 * arena cannot be mapped, Snaipe/Criterion#274). Trains the char-LM-shaped
 * model of parallel_model.h (dropout, variable lengths, carried state,
 * clipping that bites; then without carried state and clipping, where the
 * update follows each chunk's sum) on 1, 2, 3 and 4 threads in replica mode
 * and checks the weights and carried state bit for bit; exits 0 when they
 * agree. */
#include <stdio.h>
#include <string.h>

#include "carousel.h"
#include "parallel_model.h"

/* Train on 1 thread, then on 2, 3 and 4, and compare; returns the failures. */
static int check(pm_config cfg, double clip, const char *what)
{
    const int steps = 3, shards = 5;
    pm_model ref = pm_make(cfg, shards);
    double l_ref = pm_train(&ref, steps, shards, 1, CR_PARALLEL_REPLICAS, clip);
    int bad = 0;
    for (int threads = 2; threads <= 4; threads++) {
        pm_model m = pm_make(cfg, shards);
        double l = pm_train(&m, steps, shards, threads, CR_PARALLEL_REPLICAS, clip);
        bool same = l == l_ref && pm_same_weights(m.ps, ref.ps) &&
                    !memcmp(m.h->data, ref.h->data, (size_t)cr_numel(m.h) * sizeof(float)) &&
                    !memcmp(m.c->data, ref.c->data, (size_t)cr_numel(m.c) * sizeof(float));
        printf("%s: threads=%d loss=%.9g %s\n", what, threads, l,
               same ? "same as 1 thread" : "DIFFERS from 1 thread");
        bad += !same;
        pm_free(&m);
    }
    pm_free(&ref);
    return bad;
}

int main(void)
{
    const pm_config cfg = {.B = 12,
                           .T = 7,
                           .V = 11,
                           .E = 6,
                           .H = 9,
                           .layers = 2,
                           .dropout = 0.3,
                           .lengths = true,
                           .carry = true,
                           .seed = 5};
    int bad = check(cfg, 0.05, "carried state, clipping");
    /* no callback, no clipping: chunks are updated right after their sum */
    pm_config plain = cfg;
    plain.carry = false;
    bad += check(plain, 0, "no carried state, no clipping");
    return bad ? 1 : 0;
}
