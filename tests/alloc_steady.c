/* No allocation in the whole process once training is warm: a char-LM-like
 * step (embedding, two-layer LSTM sequence layer, linear head, cross-entropy,
 * clip, Adam) run under tests/malloc_count.c (LD_PRELOAD), which counts every
 * malloc-family call and every free made by any library (carousel, BLIS,
 * libgomp, libc). Plain, with the layer's recompute_steps, in segments
 * through cr_recompute, and through the data-parallel trainer (cr_trainer,
 * 4 shards); on two threads and on one.
 *
 * Every steady-state step must make no call at all. (libgomp allocates and
 * frees a team at every parallel region of one thread, and BLIS 0.9-openmp
 * opens a region for every product: products that run on one thread go
 * through carousel's loops over BLIS's micro-kernel instead, tensor/gemm.c,
 * and carousel's own loops stay out of OpenMP on one thread, CR_PAR_FOR.)
 * Exit status 0 when that holds; 1 when not; 2 when the counter is not loaded
 * (so the test cannot pass without measuring). */
#include <dlfcn.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "carousel.h"

enum { B = 4, T = 24, E = 16, H = 96, V = 20, SEG = 6 };

typedef struct lm {
    cr_params *ps;
    cr_embedding emb;
    cr_rnn *rnn;
    cr_linear head;
    cr_optim *opt;
    cr_tensor *x, *y; /* i32 [B, T] */
} lm;

typedef struct chunk {
    lm *m;
    int64_t t0, len;
} chunk;

static cr_tensor *forward(lm *m, int64_t t0, int64_t len, cr_tensor *h, cr_tensor *c, cr_rnn_output *o)
{
    cr_tensor *x = cr_narrow(m->x, 1, t0, len), *y = cr_reshape(cr_narrow(m->y, 1, t0, len), CR_SHAPE(-1));
    *o = cr_rnn_forward(m->rnn, cr_embedding_forward(&m->emb, x), NULL, h, c);
    return cr_cross_entropy(cr_linear_forward(&m->head, cr_reshape(o->y, CR_SHAPE(-1, H))), y, -1, CR_SUM);
}

static void segment(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    chunk *k = ctx;
    cr_rnn_output o;
    out[2] = forward(k->m, k->t0, k->len, in[0], in[1], &o);
    out[0] = o.h_n;
    out[1] = o.c_n;
}

/* The threads (bits by OpenMP thread number) that have run a trainer shard:
 * per-thread buffers (gemm.c's packing) are made at a thread's first shard,
 * so the trainer is warm only once every thread has run one. A thread kept
 * off its core by other jobs can miss the first steps altogether. */
static atomic_uint shard_threads;

/* A trainer shard: rows [begin, end) of the batch, its share of the mean. */
static cr_tensor *shard_loss(void *ctx, const cr_shard *s)
{
    lm *m = ctx;
    int tid = omp_get_thread_num();
    if (tid < 32) atomic_fetch_or(&shard_threads, 1u << tid);
    int64_t rows = s->end - s->begin;
    cr_tensor *x = cr_narrow(m->x, 0, s->begin, rows),
              *y = cr_reshape(cr_narrow(m->y, 0, s->begin, rows), CR_SHAPE(-1));
    cr_rnn_output o = cr_rnn_forward(m->rnn, cr_embedding_forward(&m->emb, x), NULL, NULL, NULL);
    cr_tensor *ce =
        cr_cross_entropy(cr_linear_forward(&m->head, cr_reshape(o.y, CR_SHAPE(-1, H))), y, -1, CR_SUM);
    return cr_mul_scalar(ce, 1.0 / (B * T));
}

/* mode 0: plain, 1: the layer's recompute_steps, 2: segments through
 * cr_recompute, 3: a trainer step */
static void step(lm *m, cr_graph *g, cr_trainer *tr, int mode)
{
    if (mode == 3) {
        m->rnn->cfg.recompute_steps = 0;
        cr_task task = {.rows = B, .loss = shard_loss, .ctx = m};
        cr_trainer_step(tr, &task, m->opt, 5.0, NULL, NULL);
        return;
    }
    cr_optim_zero_grad(m->opt);
    m->rnn->cfg.recompute_steps = mode == 1 ? SEG : 0;
    cr_tensor *loss;
    cr_rnn_output o;
    if (mode < 2) {
        loss = forward(m, 0, T, NULL, NULL, &o);
    } else {
        chunk *ks = cr_arena_alloc(cr_arena_current(), (T / SEG) * sizeof *ks);
        cr_tensor *s[3] = {cr_zeros(CR_F32, CR_SHAPE(2, B, H)), cr_zeros(CR_F32, CR_SHAPE(2, B, H))};
        loss = NULL;
        for (int k = 0; k < T / SEG; k++) {
            ks[k] = (chunk){m, k * SEG, SEG};
            cr_recompute(segment, &ks[k], 2, s, 3, s, 1, (cr_rng *[]){&m->rnn->dropout_rng});
            loss = loss ? cr_add(loss, s[2]) : s[2];
        }
    }
    cr_backward(cr_mul_scalar(loss, 1.0 / (B * T)));
    cr_clip_grad_norm(m->ps, 5.0, NULL);
    cr_optim_step(m->opt);
    cr_graph_clear(g);
}

int main(void)
{
    long (*calls)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "cr_alloc_calls");
    long (*frees)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "cr_free_calls");
    long (*gomp_calls)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "cr_alloc_calls_libgomp");
    long (*gomp_frees)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "cr_free_calls_libgomp");
    if (!calls || !frees || !gomp_calls || !gomp_frees) {
        fprintf(stderr, "alloc_steady: run me with LD_PRELOAD=<build>/tests/libmalloc_count.so\n");
        return 2;
    }
    int bad = 0;
    for (int threads = 2; threads >= 1; threads--) {
        cr_set_num_threads(threads);
        lm m = {.ps = cr_params_init()};
        cr_rng rng = cr_rng_seed(3);
        m.emb = cr_embedding_init(m.ps, "emb", V, E, -1, CR_F32, &rng);
        m.rnn = cr_rnn_init(m.ps, "rnn",
                            (cr_rnn_config){.cell = &cr_cell_lstm,
                                            .input_size = E,
                                            .hidden_size = H,
                                            .num_layers = 2,
                                            .dropout = 0.2,
                                            .dtype = CR_F32},
                            &rng);
        m.head = cr_linear_init(m.ps, "head", H, V, true, CR_F32, &rng);
        m.opt = cr_adam_init(m.ps, cr_adam_defaults(1e-3));
        m.x = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
        m.y = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
        for (int i = 0; i < B * T; i++) {
            ((int32_t *)m.x->data)[i] = (int32_t)((i * 7) % V);
            ((int32_t *)m.y->data)[i] = (int32_t)((i * 5 + 3) % V);
        }
        cr_graph *g = cr_graph_init();
        cr_graph_use(g);
        cr_trainer *tr = cr_trainer_init(
            m.ps,
            (cr_trainer_config){.shards = 4, .threads = threads, .mode = CR_PARALLEL_REPLICAS, .seed = 1});
        static const char *names[] = {"plain", "recompute_steps", "cr_recompute", "trainer"};
        for (int mode = 0; mode < 4; mode++) {
            /* warm-up: graph, pool, BLIS, Adam; in the trainer, on every thread */
            atomic_store(&shard_threads, 0);
            unsigned all = threads < 32 ? (1u << threads) - 1 : ~0u;
            for (int w = 0; w < 2 || (mode == 3 && atomic_load(&shard_threads) != all && w < 200); w++)
                step(&m, g, tr, mode);
            long a0 = calls(), f0 = frees(), ga0 = gomp_calls(), gf0 = gomp_frees();
            for (int k = 0; k < 3; k++) step(&m, g, tr, mode);
            long a = calls() - a0, f = frees() - f0, ga = gomp_calls() - ga0, gf = gomp_frees() - gf0;
            printf(
                "threads=%d mode=%s: %ld allocation calls and %ld frees in 3 steady-state steps (%ld and %ld "
                "by libgomp)\n",
                threads, names[mode], a, f, ga, gf);
            bad |= a != 0 || f != 0;
        }
        cr_trainer_free(tr);
        cr_graph_use(NULL);
        cr_graph_free(g);
        cr_optim_free(m.opt);
        cr_rnn_free(m.rnn);
        cr_params_free(m.ps);
        cr_tensor_free(m.x);
        cr_tensor_free(m.y);
    }
    return bad;
}
