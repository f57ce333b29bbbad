/* The sequence layer: any cell type over multi-layer, bidirectional,
 * variable-length batches. Everything is a composition of autograd ops: no
 * backward code lives here. The input projection is one product over all
 * B*T steps; only the cell's step (its recurrent products) stays inside the
 * time loop. Padding is the layer's business: it masks every state. */
#include <stdio.h>
#include <stdlib.h>

#include "nn_internal.h"

cr_rnn *cr_rnn_init(cr_params *ps, const char *prefix, cr_rnn_config cfg, cr_rng *rng)
{
    if (cfg.num_layers < 1) cr_error("cr_rnn_init: num_layers %d must be at least 1", cfg.num_layers);
    if (!(cfg.dropout >= 0 && cfg.dropout < 1))
        cr_error("cr_rnn_init: dropout %g is not in [0, 1)", cfg.dropout);
    if (cfg.recompute_steps < 0)
        cr_error("cr_rnn_init: recompute_steps %d must be 0 (off) or positive", cfg.recompute_steps);
    /* every layer's configuration is checked before anything is allocated */
    cr_cell_config cc = {.cell = cfg.cell,
                         .input_size = cfg.input_size,
                         .hidden_size = cfg.hidden_size,
                         .no_bias = cfg.no_bias,
                         .forget_bias = cfg.forget_bias,
                         .dtype = cfg.dtype};
    cr_cell_config_check("cr_rnn_init", &cc);
    cc.input_size = cfg.hidden_size * (cfg.bidirectional ? 2 : 1);
    if (cfg.num_layers > 1) cr_cell_config_check("cr_rnn_init", &cc);
    cr_rnn *m = cr_xcalloc(1, sizeof *m);
    m->cfg = cfg;
    m->dirs = cfg.bidirectional ? 2 : 1;
    m->train = true;
    m->fused = true;
    m->fold_lookup = true;
    m->dropout_rng = cr_rng_seed(rng->seed ^ UINT64_C(0xd50c0de));
    m->cells = cr_xcalloc((size_t)(cfg.num_layers * m->dirs), sizeof *m->cells);
    for (int l = 0; l < cfg.num_layers; l++)
        for (int d = 0; d < m->dirs; d++) {
            char name[512];
            snprintf(name, sizeof name, "%s%sl%d%s", prefix ? prefix : "", prefix && *prefix ? "." : "", l,
                     d ? "_reverse" : "");
            cc.input_size = l == 0 ? cfg.input_size : cfg.hidden_size * m->dirs;
            m->cells[l * m->dirs + d] = cr_cell_make("cr_rnn_init", ps, name, &cc, rng);
        }
    return m;
}

void cr_rnn_free(cr_rnn *m)
{
    if (!m) return;
    free(m->cells);
    free(m);
}

/* [B, 1] float mask of the sequences still running at step t, or NULL when
 * all of them are. */
static cr_tensor *step_mask(const cr_tensor *lengths, int64_t t, cr_dtype dt)
{
    if (!lengths) return NULL;
    const int32_t *len = lengths->data;
    int64_t B = lengths->shape[0];
    bool all = true;
    for (int64_t b = 0; b < B; b++) all &= t < len[b];
    if (all) return NULL;
    cr_tensor *m = cr_tensor_new(dt, 2, (int64_t[]){B, 1});
    for (int64_t b = 0; b < B; b++) cr_set_flat(m, b, t < len[b] ? 1.0 : 0.0);
    return m;
}

/* What the steps of one direction of one layer need besides gx and the
 * states: kept in the arena, so a recomputed segment can run them again. */
typedef struct steps {
    const char *op;
    const cr_cell *cell;
    cr_cell_step_fn step;
    cr_tensor *w[CR_CELL_MAX_PARAMS]; /* the step's weights (W^T made once) */
    const cr_tensor *lengths;
    /* A folded embedding lookup's indices [B, T] (cr_cell_project): gx is
     * then the table's projection [V, G], whose rows each step looks up. */
    const cr_tensor *idx;
    uint64_t idx_version; /* idx's when the forward began (a recomputed segment reads it again) */
    bool reverse;
    int64_t T, i0, i1; /* steps i0..i1-1 in processing order (t = T-1-i when reverse) */
} steps;

/* Step t's input projection [B, G]: a time slice of gx [B, T, G], or, for a
 * folded lookup, gx's rows idx[:, t]. Looked up a step at a time, the rows
 * are in cache when the step reads them, and their gradient is a step's own
 * buffer, written whole by the step's backward and scatter-added at once
 * into the [V, G] table's (one [B, T, G] buffer would be zero-filled first:
 * a step writes a strided slice of it). */
static cr_tensor *step_input(const steps *st, cr_tensor *gx, int64_t t)
{
    if (!st->idx) return cr_select(gx, 1, t);
    if (cr_tensor_version(st->idx) != st->idx_version)
        cr_error("%s: the indices of the embedding lookup were written after the forward began", st->op);
    const int64_t B = st->idx->shape[0];
    cr_tensor *col = cr_tensor_new(CR_I32, 1, (int64_t[]){B});
    const int32_t *ix = st->idx->data;
    for (int64_t b = 0; b < B; b++) ((int32_t *)col->data)[b] = ix[b * st->T + t];
    return cr_gather_rows(gx, col, -1);
}

/* Steps i0..i1-1 from the states s (updated), each in a scope of its own: of
 * a step's values only the states, its output (ys[i - i0]) and what backward
 * reads stay resident. */
static void run_steps(const steps *st, cr_tensor *gx, cr_tensor **s, cr_tensor **ys)
{
    const cr_cell *cell = st->cell;
    const int n = cell->type->n_states;
    const int64_t B = st->idx ? st->idx->shape[0] : gx->shape[0];
    const cr_dtype dt = gx->dtype;
    for (int64_t i = st->i0; i < st->i1; i++) {
        int64_t t = st->reverse ? st->T - 1 - i : i;
        cr_scope sc = cr_scope_begin();
        cr_tensor *next[CR_CELL_MAX_STATES] = {0}, *y;
        st->step(cell, st->w, step_input(st, gx, t), s, next);
        cr_cell_check_next(st->op, cell, next, B, dt);
        cr_tensor *mask = step_mask(st->lengths, t, dt);
        if (mask) { /* finished sequences keep every state and output 0 */
            for (int k = 0; k < n; k++) s[k] = cr_where(mask, next[k], s[k]);
            y = cr_mask(next[0], mask);
        } else {
            for (int k = 0; k < n; k++) s[k] = next[k];
            y = next[0];
        }
        ys[i - st->i0] = y;
        cr_tensor *keep[CR_CELL_MAX_STATES + 1] = {y};
        for (int k = 0; k < n; k++) keep[1 + k] = s[k];
        cr_scope_end(sc, 1 + n, keep);
    }
}

/* A recomputed segment of steps: in = {gx, states}, out = {the steps'
 * outputs in processing order, the states after them}. A state that is also
 * the last output is the same tensor (one output of cr_recompute), so its
 * gradient sums in the plain run's order. */
static void steps_segment(cr_tensor *const *in, cr_tensor **out, void *ctx)
{
    const steps *st = ctx;
    const int n = st->cell->type->n_states;
    cr_tensor *s[CR_CELL_MAX_STATES];
    for (int k = 0; k < n; k++) s[k] = in[1 + k];
    run_steps(st, in[0], s, out);
    for (int k = 0; k < n; k++) out[st->i1 - st->i0 + k] = s[k];
}

/* Run one direction of one layer over the whole sequence from the states s
 * (updated to the final states); returns the outputs [B, T, H]. With
 * recompute_steps, the time loop runs in segments of that many steps
 * through cr_recompute: the hoisted projection, the segments' boundary states
 * and the outputs stay; every other value of a step is rebuilt in backward. */
static cr_tensor *run_direction(const char *op, cr_rnn *m, const cr_cell *cell, cr_tensor *in,
                                const cr_tensor *lengths, bool reverse, cr_tensor **s)
{
    const int n = cell->type->n_states;
    const int64_t T = in->shape[1];
    cr_scope sc = cr_scope_begin();
    const cr_tensor *idx = NULL; /* [B,T,I] x [I,G]: one product over B*T, or over V for a folded lookup */
    cr_tensor *gx = cr_cell_project(cell, in, m->fold_lookup ? &idx : NULL);
    steps *st = cr_arena_alloc(cr_arena_current(), sizeof *st);
    *st = (steps){.op = op,
                  .cell = cell,
                  .step = cr_cell_step_of(cell->type, m->fused),
                  .lengths = lengths,
                  .idx = idx,
                  .idx_version = idx ? cr_tensor_version(idx) : 0,
                  .reverse = reverse,
                  .T = T,
                  .i0 = 0,
                  .i1 = T};
    /* W^T made once (a contiguous copy), so their gradients sum once */
    cr_cell_step_weights(cell, st->w, T, in->shape[0]);
    cr_tensor **ys = cr_arena_alloc(cr_arena_current(), (size_t)T * sizeof *ys); /* processing order */
    int64_t seg = m->cfg.recompute_steps;
    if (seg > 0 && cr_grad_enabled()) {
        for (int64_t i0 = 0; i0 < T; i0 += seg) {
            steps *part = cr_arena_alloc(cr_arena_current(), sizeof *part);
            *part = *st;
            part->i0 = i0;
            part->i1 = i0 + seg < T ? i0 + seg : T;
            int64_t len = part->i1 - i0;
            cr_tensor *io[1 + CR_CELL_MAX_STATES] = {gx};
            for (int k = 0; k < n; k++) io[1 + k] = s[k];
            cr_tensor **out = cr_arena_alloc(cr_arena_current(), (size_t)(len + n) * sizeof *out);
            cr_recompute(steps_segment, part, 1 + n, io, (int)(len + n), out, 1,
                         (cr_rng *[]){&m->dropout_rng});
            for (int64_t i = 0; i < len; i++) ys[i0 + i] = out[i];
            for (int k = 0; k < n; k++) s[k] = out[len + k];
        }
    } else {
        run_steps(st, gx, s, ys);
    }
    if (reverse) /* to time order */
        for (int64_t i = 0, j = T - 1; i < j; i++, j--) {
            cr_tensor *tmp = ys[i];
            ys[i] = ys[j];
            ys[j] = tmp;
        }
    cr_tensor *y = cr_stack((int)T, ys, 1);
    cr_tensor *keep[1 + CR_CELL_MAX_STATES] = {y};
    for (int k = 0; k < n; k++) keep[1 + k] = s[k];
    cr_scope_end(sc, 1 + n, keep);
    return y;
}

static void check_state(const char *op, const char *what, const cr_tensor *s, int64_t n, int64_t B, int64_t H,
                        cr_dtype dt)
{
    if (s->dtype == dt && s->ndim == 3 && s->shape[0] == n && s->shape[1] == B && s->shape[2] == H) return;
    char a[128];
    cr_error("%s: %s is %s %s, expected %s [%lld,%lld,%lld]", op, what, cr_dtype_name(s->dtype),
             cr_shape_str(a, sizeof a, s->ndim, s->shape), cr_dtype_name(dt), (long long)n, (long long)B,
             (long long)H);
}

/* The forward of both public spellings; names[k] is what errors call s0[k]. */
static cr_rnn_output forward(const char *op, cr_rnn *m, cr_tensor *x, const cr_tensor *lengths,
                             cr_tensor *const *s0, const char *const *names)
{
    char a[128];
    const cr_rnn_config *cfg = &m->cfg;
    const cr_cell *first = &m->cells[0];
    const int n = first->type->n_states;
    const cr_dtype dt = first->p[cr_cell_input_index(first->type)]->dtype; /* the weights', not cfg's */
    if (x->ndim != 3 || x->shape[2] != cfg->input_size || x->dtype != dt)
        cr_error("%s: input is %s %s, expected %s [B,T,%lld]", op, cr_dtype_name(x->dtype),
                 cr_shape_str(a, sizeof a, x->ndim, x->shape), cr_dtype_name(dt), (long long)cfg->input_size);
    int64_t B = x->shape[0], T = x->shape[1], H = cfg->hidden_size;
    int n_cells = cfg->num_layers * m->dirs;
    if (T < 1) cr_error("%s: input %s has no time steps", op, cr_shape_str(a, sizeof a, x->ndim, x->shape));
    if (lengths) {
        if (lengths->dtype != CR_I32 || lengths->ndim != 1 || lengths->shape[0] != B ||
            !cr_is_contiguous(lengths))
            cr_error("%s: lengths must be contiguous i32 [%lld], got %s %s", op, (long long)B,
                     cr_dtype_name(lengths->dtype), cr_shape_str(a, sizeof a, lengths->ndim, lengths->shape));
        for (int64_t b = 0; b < B; b++) {
            int32_t len = ((const int32_t *)lengths->data)[b];
            if (len < 1 || len > T)
                cr_error("%s: length %d of sequence %lld is not in [1, %lld]", op, len, (long long)b,
                         (long long)T);
        }
    }
    for (int k = 0; k < n; k++)
        if (s0 && s0[k]) check_state(op, names[k], s0[k], n_cells, B, H, dt);

    /* fin[k][c]: final state k of cell c */
    cr_tensor **fin = cr_arena_alloc(cr_arena_current(), (size_t)(n * n_cells) * sizeof *fin);
    cr_tensor *zeros = NULL;
    cr_tensor *in = x;
    for (int l = 0; l < cfg->num_layers; l++) {
        cr_scope sc = cr_scope_begin(); /* the directions' outputs die once concatenated */
        cr_tensor *outs[2];
        for (int d = 0; d < m->dirs; d++) {
            int c = l * m->dirs + d;
            cr_tensor *s[CR_CELL_MAX_STATES];
            for (int k = 0; k < n; k++) {
                if ((!s0 || !s0[k]) && !zeros) zeros = cr_zeros(dt, CR_SHAPE(B, H));
                s[k] = s0 && s0[k] ? cr_select(s0[k], 0, c) : zeros;
            }
            outs[d] = run_direction(op, m, &m->cells[c], in, lengths, d == 1, s);
            for (int k = 0; k < n; k++) fin[k * n_cells + c] = s[k];
        }
        cr_tensor *out = m->dirs == 2 ? cr_concat(2, outs, 2) : outs[0];
        if (l + 1 < cfg->num_layers) out = cr_dropout(out, cfg->dropout, m->train, &m->dropout_rng);
        in = out;
        cr_tensor *keep[1 + 2 * CR_CELL_MAX_STATES] = {out};
        int n_keep = 1;
        for (int d = 0; d < m->dirs; d++)
            for (int k = 0; k < n; k++) keep[n_keep++] = fin[k * n_cells + l * m->dirs + d];
        cr_scope_end(sc, n_keep, keep);
    }
    cr_rnn_output o = {.y = in};
    for (int k = 0; k < n; k++) o.states[k] = cr_stack(n_cells, fin + k * n_cells, 0);
    o.h_n = o.states[0];
    o.c_n = n > 1 ? o.states[1] : NULL;
    return o;
}

cr_rnn_output cr_rnn_forward_states(cr_rnn *m, cr_tensor *x, const cr_tensor *lengths, int n_s0,
                                    cr_tensor *const *s0)
{
    const cr_cell_type *t = m->cells[0].type;
    if (n_s0 != 0 && n_s0 != t->n_states)
        cr_error("cr_rnn_forward_states: %d initial states given, cell %s has %d", n_s0, t->name,
                 t->n_states);
    if (n_s0 && !s0) cr_error("cr_rnn_forward_states: n_s0 is %d but s0 is NULL", n_s0);
    static const char *const names[CR_CELL_MAX_STATES] = {"s0[0]", "s0[1]", "s0[2]", "s0[3]"};
    return forward("cr_rnn_forward_states", m, x, lengths, n_s0 ? s0 : NULL, names);
}

cr_rnn_output cr_rnn_forward(cr_rnn *m, cr_tensor *x, const cr_tensor *lengths, cr_tensor *h0, cr_tensor *c0)
{
    const cr_cell_type *t = m->cells[0].type;
    if (c0 && t->n_states < 2)
        cr_error("cr_rnn_forward: c0 given to a %s layer, whose cell has one state", t->name);
    static const char *const names[CR_CELL_MAX_STATES] = {"h0", "c0", "s0[2]", "s0[3]"};
    cr_tensor *s0[CR_CELL_MAX_STATES] = {h0, c0};
    return forward("cr_rnn_forward", m, x, lengths, s0, names);
}
