/* The char-level LM that bench/parallel and bench/mpi train (issue 12's step:
 * embedding 64, one LSTM layer, a linear head to 65 classes, cross-entropy),
 * its [B, T] ids and targets, and its shard loss for cr_trainer. */
#ifndef CAROUSEL_BENCH_CHARLM_MODEL_H
#define CAROUSEL_BENCH_CHARLM_MODEL_H

#include "carousel.h"

#define VOCAB 65
#define EMBED 64

typedef struct charlm {
    int64_t B, T, H;
    cr_params *ps;
    cr_embedding emb;
    cr_rnn *lstm;
    cr_linear head;
    cr_tensor *x, *y; /* [B, T] i32 ids and targets */
} charlm;

/* Random ids and targets (a new version of both). */
static inline void charlm_fill(charlm *m, cr_rng *rng)
{
    int32_t *x = m->x->data, *y = m->y->data;
    for (int64_t k = 0; k < m->B * m->T; k++) {
        x[k] = (int32_t)(cr_rng_uniform01(rng) * VOCAB) % VOCAB;
        y[k] = (int32_t)(cr_rng_uniform01(rng) * VOCAB) % VOCAB;
    }
    cr_tensor_bump_version(m->x);
    cr_tensor_bump_version(m->y);
}

/* The parameters drawn from rng, then the data. */
static inline charlm charlm_make(int64_t B, int64_t T, int64_t H, double forget_bias, cr_rng *rng)
{
    charlm m = {.B = B, .T = T, .H = H, .ps = cr_params_init()};
    m.emb = cr_embedding_init(m.ps, "embed", VOCAB, EMBED, -1, CR_F32, rng);
    m.lstm = cr_rnn_init(m.ps, "lstm",
                         (cr_rnn_config){.cell = &cr_cell_lstm,
                                         .input_size = EMBED,
                                         .hidden_size = H,
                                         .num_layers = 1,
                                         .forget_bias = forget_bias,
                                         .dtype = CR_F32},
                         rng);
    m.head = cr_linear_init(m.ps, "head", H, VOCAB, true, CR_F32, rng);
    m.x = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
    m.y = cr_tensor_init(CR_I32, CR_SHAPE(B, T));
    charlm_fill(&m, rng);
    return m;
}

static inline void charlm_free(charlm *m)
{
    cr_tensor_free(m->x);
    cr_tensor_free(m->y);
    cr_rnn_free(m->lstm);
    cr_params_free(m->ps);
}

/* The mean cross-entropy of the shard's rows, weighted by the shard's share. */
static inline cr_tensor *charlm_shard_loss(void *ctx, const cr_shard *s)
{
    charlm *m = ctx;
    int64_t rows = s->end - s->begin;
    cr_tensor *x = cr_narrow(m->x, 0, s->begin, rows),
              *y = cr_reshape(cr_narrow(m->y, 0, s->begin, rows), CR_SHAPE(-1));
    cr_rnn_output o = cr_rnn_forward(m->lstm, cr_embedding_forward(&m->emb, x), NULL, NULL, NULL);
    cr_tensor *logits = cr_linear_forward(&m->head, cr_reshape(o.y, CR_SHAPE(-1, m->H)));
    return cr_mul_scalar(cr_cross_entropy(logits, y, -1, CR_MEAN), s->weight);
}

#endif
