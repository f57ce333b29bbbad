/* Shared by the parallel tests (test_parallel.c, replica_check.c): a
 * character-LM-shaped model (embedding, a multi-layer LSTM with dropout
 * between layers, a linear head on every step) trained through
 * cr_trainer on random ids, with variable lengths and truncated BPTT's
 * carried state per sequence. */
#ifndef CAROUSEL_TEST_PARALLEL_MODEL_H
#define CAROUSEL_TEST_PARALLEL_MODEL_H

#include <stdlib.h>
#include <string.h>

#include "carousel.h"

typedef struct pm_config {
    int64_t B, T, V, E, H;
    int layers;
    double dropout;
    bool lengths; /* variable lengths: sequence b is T - b % 3 long */
    bool carry;   /* truncated BPTT: each step starts from the last one's final state */
    uint64_t seed;
} pm_config;

typedef struct pm_model {
    pm_config cfg;
    cr_params *ps;
    cr_embedding emb;
    cr_rnn *lstm;
    cr_linear head;
    cr_optim *opt;
    cr_tensor *x, *y, *len; /* [B, T] ids, [B, T] targets (-1 at padding), [B] lengths */
    cr_tensor *h, *c;       /* [L, B, H] carried state */
    cr_rnn_output *out;     /* per shard */
    int max_shards;
    cr_rng data_rng;
} pm_model;

static inline pm_model pm_make(pm_config cfg, int max_shards)
{
    pm_model m = {.cfg = cfg, .max_shards = max_shards};
    cr_rng rng = cr_rng_seed(cfg.seed);
    m.ps = cr_params_init();
    m.emb = cr_embedding_init(m.ps, "emb", cfg.V, cfg.E, -1, CR_F32, &rng);
    m.lstm = cr_rnn_init(m.ps, "lstm",
                         (cr_rnn_config){.cell = &cr_cell_lstm,
                                         .input_size = cfg.E,
                                         .hidden_size = cfg.H,
                                         .num_layers = cfg.layers,
                                         .dropout = cfg.dropout,
                                         .forget_bias = 1.0,
                                         .dtype = CR_F32},
                         &rng);
    m.head = cr_linear_init(m.ps, "head", cfg.H, cfg.V, true, CR_F32, &rng);
    m.opt = cr_adam_init(m.ps, cr_adam_defaults(1e-2));
    m.x = cr_tensor_init(CR_I32, CR_SHAPE(cfg.B, cfg.T));
    m.y = cr_tensor_init(CR_I32, CR_SHAPE(cfg.B, cfg.T));
    m.len = cr_tensor_init(CR_I32, CR_SHAPE(cfg.B));
    m.h = cr_tensor_init(CR_F32, CR_SHAPE(cfg.layers, cfg.B, cfg.H));
    m.c = cr_tensor_init(CR_F32, CR_SHAPE(cfg.layers, cfg.B, cfg.H));
    m.out = cr_xcalloc((size_t)max_shards, sizeof *m.out);
    m.data_rng = cr_rng_seed(cfg.seed + 1);
    return m;
}

static inline void pm_free(pm_model *m)
{
    cr_optim_free(m->opt);
    cr_tensor_free(m->x);
    cr_tensor_free(m->y);
    cr_tensor_free(m->len);
    cr_tensor_free(m->h);
    cr_tensor_free(m->c);
    free(m->out);
    cr_rnn_free(m->lstm);
    cr_params_free(m->ps);
}

/* The next batch: random ids, targets -1 past each sequence's length. */
static inline void pm_next_batch(pm_model *m)
{
    const pm_config *c = &m->cfg;
    int32_t *x = m->x->data, *y = m->y->data, *len = m->len->data;
    for (int64_t b = 0; b < c->B; b++) {
        len[b] = (int32_t)(c->lengths ? c->T - b % 3 : c->T);
        for (int64_t t = 0; t < c->T; t++) {
            x[b * c->T + t] = (int32_t)(cr_rng_uniform01(&m->data_rng) * (double)c->V) % (int32_t)c->V;
            int32_t tgt = (int32_t)(cr_rng_uniform01(&m->data_rng) * (double)c->V) % (int32_t)c->V;
            y[b * c->T + t] = t < len[b] ? tgt : -1;
        }
    }
    cr_tensor_bump_version(m->x);
    cr_tensor_bump_version(m->y);
    cr_tensor_bump_version(m->len);
}

/* Rows [begin, end) of the batch: their summed cross-entropy over the batch's
 * token count, so the shard losses add up to the batch mean. */
static inline cr_tensor *pm_loss(void *ctx, const cr_shard *s)
{
    pm_model *m = ctx;
    const pm_config *c = &m->cfg;
    int64_t rows = s->end - s->begin, count = 0;
    for (int64_t b = 0; b < c->B; b++) count += ((const int32_t *)m->len->data)[b];
    cr_tensor *x = cr_narrow(m->x, 0, s->begin, rows);
    cr_tensor *y = cr_reshape(cr_narrow(m->y, 0, s->begin, rows), CR_SHAPE(-1));
    cr_tensor *len = c->lengths ? cr_narrow(m->len, 0, s->begin, rows) : NULL;
    cr_tensor *h = c->carry ? cr_narrow(m->h, 1, s->begin, rows) : NULL;
    cr_tensor *cc = c->carry ? cr_narrow(m->c, 1, s->begin, rows) : NULL;
    cr_rnn_output *o = &m->out[s->index];
    *o = cr_rnn_forward(m->lstm, cr_embedding_forward(&m->emb, x), len, h, cc);
    cr_tensor *logits = cr_linear_forward(&m->head, cr_reshape(o->y, CR_SHAPE(-1, c->H)));
    return cr_mul_scalar(cr_cross_entropy(logits, y, -1, CR_SUM), 1.0 / (double)count);
}

static inline void pm_carry(void *ctx, const cr_shard *s)
{
    pm_model *m = ctx;
    int64_t rows = s->end - s->begin;
    cr_copy_(cr_narrow(m->h, 1, s->begin, rows), m->out[s->index].h_n);
    cr_copy_(cr_narrow(m->c, 1, s->begin, rows), m->out[s->index].c_n);
}

static inline cr_task pm_task(pm_model *m)
{
    return (cr_task){
        .rows = m->cfg.B, .loss = pm_loss, .after_backward = m->cfg.carry ? pm_carry : NULL, .ctx = m};
}

/* Train `steps` steps through a trainer of `shards` shards on `threads`
 * threads in `mode`, clipping at `clip`; returns the last loss. */
static inline double pm_train(pm_model *m, int steps, int shards, int threads, cr_parallel_mode mode,
                              double clip)
{
    cr_trainer *t = cr_trainer_init(
        m->ps, (cr_trainer_config){.shards = shards, .threads = threads, .mode = mode, .seed = m->cfg.seed});
    cr_task task = pm_task(m);
    double loss = 0, norm;
    for (int k = 0; k < steps; k++) {
        pm_next_batch(m);
        cr_trainer_step(t, &task, m->opt, clip, &loss, &norm);
    }
    cr_trainer_free(t);
    return loss;
}

/* Every parameter's bytes equal? */
static inline bool pm_same_weights(const cr_params *a, const cr_params *b)
{
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        const cr_tensor *x = a->items[i].value, *y = b->items[i].value;
        if (cr_numel(x) != cr_numel(y) ||
            memcmp(x->data, y->data, (size_t)cr_numel(x) * cr_dtype_size(x->dtype)))
            return false;
    }
    return true;
}

#endif
