/* Cell types: checking a descriptor, creating a cell's parameters from its
 * table, the hoisted input projection, and one step of any cell. The
 * built-in types live in cell_rnn.c, cell_gru.c and cell_lstm.c (listed by
 * cell_builtins.c); the sequence layer that runs them is rnn.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn_internal.h"

static int64_t dim_eval(cr_dim d, int64_t H, int64_t I) { return d.h * H + d.i * I + d.n; }

int64_t cr_cell_proj_width(const cr_cell_type *type, int64_t H, int64_t I)
{
    return dim_eval(type->proj, H, I);
}

static bool is_bias(cr_param_role r) { return r == CR_PARAM_INPUT_BIAS || r == CR_PARAM_BIAS; }

int cr_cell_input_index(const cr_cell_type *type)
{
    for (int j = 0; j < type->n_params; j++)
        if (type->params[j].role == CR_PARAM_INPUT) return j;
    return -1;
}

int cr_cell_type_check(const char *op, const cr_cell_type *t)
{
    if (!t) cr_error("%s: no cell type (the config's cell is NULL)", op);
    if (!t->name) cr_error("%s: a cell type needs a name", op);
    const char *name = t->name;
    if (t->n_states < 1 || t->n_states > CR_CELL_MAX_STATES)
        cr_error("%s: cell %s has %d states, expected 1 to %d", op, name, t->n_states, CR_CELL_MAX_STATES);
    if (!t->step) cr_error("%s: cell %s has no step function", op, name);
    if (!t->params || t->n_params < 1 || t->n_params > CR_CELL_MAX_PARAMS)
        cr_error("%s: cell %s has %d parameters, expected 1 to %d", op, name, t->n_params,
                 CR_CELL_MAX_PARAMS);
    if (t->proj.h < 0 || t->proj.i < 0 || t->proj.n < 0 || t->proj.h + t->proj.i + t->proj.n < 1)
        cr_error("%s: cell %s: input projection width %lld*H + %lld*I + %lld is not positive", op, name,
                 (long long)t->proj.h, (long long)t->proj.i, (long long)t->proj.n);
    int input = -1;
    for (int j = 0; j < t->n_params; j++) {
        const cr_cell_param *p = &t->params[j];
        if (!p->name || !*p->name) cr_error("%s: cell %s: parameter %d has no name", op, name, j);
        if ((unsigned)p->role > (unsigned)CR_PARAM_BIAS)
            cr_error("%s: cell %s: parameter %s has unknown role %d", op, name, p->name, (int)p->role);
        if ((unsigned)p->init.rule > (unsigned)CR_RULE_ORTHOGONAL)
            cr_error("%s: cell %s: parameter %s has unknown init rule %d", op, name, p->name,
                     (int)p->init.rule);
        for (int k = 0; k < j; k++)
            if (strcmp(t->params[k].name, p->name) == 0)
                cr_error("%s: cell %s: two parameters are named %s", op, name, p->name);
        if (p->role == CR_PARAM_INPUT) {
            if (input >= 0)
                cr_error("%s: cell %s: %s and %s are both the input projection (CR_PARAM_INPUT)", op, name,
                         t->params[input].name, p->name);
            input = j;
        }
    }
    if (input < 0) cr_error("%s: cell %s has no input projection (a CR_PARAM_INPUT parameter)", op, name);
    return input;
}

/* Shape of table row p for sizes H, I: returns ndim. */
static int param_shape(const char *op, const cr_cell_type *t, const cr_cell_param *p, int64_t H, int64_t I,
                       int64_t *shape)
{
    int64_t G = cr_cell_proj_width(t, H, I);
    if (p->role == CR_PARAM_INPUT) {
        shape[0] = G;
        shape[1] = I;
        return 2;
    }
    if (p->role == CR_PARAM_INPUT_BIAS) {
        shape[0] = G;
        return 1;
    }
    int nd = 0;
    for (; nd < 2; nd++) {
        const cr_dim d = p->shape[nd];
        if (d.h == 0 && d.i == 0 && d.n == 0) break;
        shape[nd] = dim_eval(d, H, I);
        if (shape[nd] < 1)
            cr_error("%s: cell %s: dim %d of parameter %s is %lld (H=%lld, I=%lld)", op, t->name, nd, p->name,
                     (long long)shape[nd], (long long)H, (long long)I);
    }
    if (p->role == CR_PARAM_WEIGHT_T && nd != 2)
        cr_error("%s: cell %s: parameter %s is transposed for the step (CR_PARAM_WEIGHT_T) but has %d dims",
                 op, t->name, p->name, nd);
    return nd;
}

static void param_init(const char *op, const cr_cell_type *t, const cr_cell_param *p, cr_tensor *v, int64_t H,
                       cr_rng *rng)
{
    switch (p->init.rule) {
    case CR_RULE_RECURRENT: cr_init_uniform(v, rng, 1.0 / sqrt((double)H)); return;
    case CR_RULE_CONSTANT: cr_init_constant(v, p->init.a); return;
    case CR_RULE_UNIFORM: cr_fill_uniform(v, rng, p->init.a, p->init.b); return;
    case CR_RULE_ORTHOGONAL:
        if (v->ndim != 2 || v->shape[0] % H != 0)
            cr_error("%s: cell %s: orthogonal init of %s needs a 2-D weight whose rows are blocks of H=%lld",
                     op, t->name, p->name, (long long)H);
        cr_init_orthogonal(v, rng, p->init.a, H);
        return;
    }
}

void cr_cell_config_check(const char *op, const cr_cell_config *cfg)
{
    const cr_cell_type *t = cfg->cell;
    cr_cell_type_check(op, t);
    int64_t I = cfg->input_size, H = cfg->hidden_size;
    if (I <= 0 || H <= 0)
        cr_error("%s: input_size %lld and hidden_size %lld must be positive", op, (long long)I, (long long)H);
    if (cfg->dtype != CR_F32 && cfg->dtype != CR_F64)
        cr_error("%s: dtype %s, expected f32 or f64", op, cr_dtype_name(cfg->dtype));
    if (cfg->forget_bias != 0 && !t->init)
        cr_error("%s: forget_bias %g given, but cell %s has no forget gate to set", op, cfg->forget_bias,
                 t->name);
    if (cfg->forget_bias != 0 && cfg->no_bias)
        cr_error("%s: forget_bias %g needs biases, but no_bias is set", op, cfg->forget_bias);
    for (int j = 0; j < t->n_params; j++) {
        int64_t shape[2];
        param_shape(op, t, &t->params[j], H, I, shape);
    }
}

cr_cell cr_cell_make(const char *op, cr_params *ps, const char *prefix, const cr_cell_config *cfg,
                     cr_rng *rng)
{
    cr_cell_config_check(op, cfg);
    const cr_cell_type *t = cfg->cell;
    int64_t I = cfg->input_size, H = cfg->hidden_size;
    cr_cell c = {.type = t, .input_size = I, .hidden_size = H};
    for (int j = 0; j < t->n_params; j++) {
        const cr_cell_param *p = &t->params[j];
        if (cfg->no_bias && is_bias(p->role)) continue;
        int64_t shape[2];
        int nd = param_shape(op, t, p, H, I, shape);
        c.p[j] = cr_params_add(ps, prefix, p->name, cfg->dtype, nd, shape);
        param_init(op, t, p, c.p[j], H, rng);
    }
    if (t->init) t->init(&c, cfg);
    return c;
}

cr_cell cr_cell_init(cr_params *ps, const char *prefix, cr_cell_config cfg, cr_rng *rng)
{
    return cr_cell_make("cr_cell_init", ps, prefix, &cfg, rng);
}

cr_tensor *cr_cell_get(const cr_cell *cell, const char *name)
{
    const cr_cell_type *t = cell->type;
    for (int j = 0; j < t->n_params; j++)
        if (strcmp(t->params[j].name, name) == 0) return cell->p[j];
    cr_error("cr_cell_get: cell %s has no parameter %s", t->name, name);
}

/* Rows of h stacked per weight-gradient product of a recurrent weight: about
 * CR_STACK_ROWS (a product that deep runs near BLIS's peak; a step's own, K =
 * B, does not at small B), whole steps, no more than the sequence has. */
#define CR_STACK_ROWS 512

void cr_cell_step_weights(const cr_cell *cell, cr_tensor **w, int64_t T, int64_t B)
{
    const cr_cell_type *t = cell->type;
    int64_t steps = B >= CR_STACK_ROWS ? 1 : CR_STACK_ROWS / B;
    int64_t rows = B * (steps < T ? steps : T);
    for (int j = 0; j < t->n_params; j++) {
        cr_param_role r = t->params[j].role;
        cr_tensor *p = cell->p[j];
        if (r == CR_PARAM_WEIGHT_T)
            w[j] = T > 1 ? cr_weight_t(p, rows) : cr_transpose(p, 0, 1);
        else
            w[j] = r == CR_PARAM_INPUT ? NULL : p;
    }
}

cr_tensor *cr_cell_project(const cr_cell *cell, cr_tensor *x, const cr_tensor **fold_idx)
{
    const cr_cell_type *t = cell->type;
    cr_tensor *w_t = cr_transpose(cell->p[cr_cell_input_index(t)], 0, 1);
    /* The input biases are summed first ([G] + [G]), then broadcast once, into
     * the product's own buffer. */
    cr_tensor *b = NULL;
    for (int j = 0; j < t->n_params; j++)
        if (t->params[j].role == CR_PARAM_INPUT_BIAS && cell->p[j])
            b = b ? cr_add(b, cell->p[j]) : cell->p[j];
    /* x = E[idx], an embedding lookup: E[idx] W^T + b is row idx of
     * E W^T + b, so the product runs over the table's V rows instead of the
     * B*T looked up, and backward scatter-adds dz into a [V, G] gradient
     * before two products of V rows, instead of three of B*T (a character
     * LM's 65 rows against 2048). Worth it from 2 lookups per row on. The
     * caller looks the rows up, a step at a time. */
    cr_tensor *table;
    const cr_tensor *idx;
    if (fold_idx) *fold_idx = NULL;
    if (fold_idx && cr_gather_rows_source(x, &table, &idx) && 2 * table->shape[0] <= cr_numel(idx)) {
        *fold_idx = idx;
        return b ? cr_matmul_bias(table, w_t, b) : cr_matmul(table, w_t); /* [V, G] */
    }
    return b ? cr_matmul_bias(x, w_t, b) : cr_matmul(x, w_t);
}

cr_cell_step_fn cr_cell_step_of(const cr_cell_type *type, bool fused)
{
    return fused && type->fused_step ? type->fused_step : type->step;
}

void cr_cell_check_next(const char *op, const cr_cell *cell, cr_tensor *const *next, int64_t B, cr_dtype dt)
{
    const cr_cell_type *t = cell->type;
    int64_t H = cell->hidden_size;
    char a[128];
    for (int k = 0; k < t->n_states; k++) {
        const cr_tensor *s = next[k];
        if (!s)
            cr_error("%s: cell %s: the step left state %d unset (the type declares %d state%s)", op, t->name,
                     k, t->n_states, t->n_states == 1 ? "" : "s");
        if (s->ndim != 2 || s->shape[0] != B || s->shape[1] != H || s->dtype != dt)
            cr_error("%s: cell %s: the step returned state %d as %s %s, expected %s [%lld,%lld]", op, t->name,
                     k, cr_dtype_name(s->dtype), cr_shape_str(a, sizeof a, s->ndim, s->shape),
                     cr_dtype_name(dt), (long long)B, (long long)H);
    }
}

/* ---- one step of a cell ------------------------------------------------------------ */

static void check_state(const char *op, const char *what, const cr_tensor *s, int64_t B, int64_t H,
                        cr_dtype dt)
{
    char a[128];
    if (!s)
        cr_error("%s: %s is NULL, expected %s [%lld,%lld]", op, what, cr_dtype_name(dt), (long long)B,
                 (long long)H);
    if (s->dtype != dt || s->ndim != 2 || s->shape[0] != B || s->shape[1] != H)
        cr_error("%s: %s is %s %s, expected %s [%lld,%lld]", op, what, cr_dtype_name(s->dtype),
                 cr_shape_str(a, sizeof a, s->ndim, s->shape), cr_dtype_name(dt), (long long)B, (long long)H);
}

static void cell_step(const char *op, const cr_cell *cell, cr_tensor *x, cr_tensor *const *s,
                      const char *const *names, cr_tensor **next)
{
    char a[128];
    const cr_cell_type *t = cell->type;
    cr_dtype dt = cell->p[cr_cell_input_index(t)]->dtype; /* the weights', not a stored config's */
    if (x->ndim != 2 || x->shape[1] != cell->input_size || x->dtype != dt)
        cr_error("%s: input is %s %s, expected %s [B,%lld]", op, cr_dtype_name(x->dtype),
                 cr_shape_str(a, sizeof a, x->ndim, x->shape), cr_dtype_name(dt),
                 (long long)cell->input_size);
    int64_t B = x->shape[0];
    cr_tensor *in[CR_CELL_MAX_STATES], *out[CR_CELL_MAX_STATES] = {0}, *w[CR_CELL_MAX_PARAMS];
    for (int k = 0; k < t->n_states; k++) {
        char what[32];
        if (!names) snprintf(what, sizeof what, "state %d", k);
        check_state(op, names ? names[k] : what, s[k], B, cell->hidden_size, dt);
        in[k] = s[k]; /* a copy, so next may be s itself */
    }
    cr_cell_step_weights(cell, w, 1, B);
    cr_cell_step_of(t, true)(cell, w, cr_cell_project(cell, x, NULL), in, out);
    cr_cell_check_next(op, cell, out, B, dt);
    for (int k = 0; k < t->n_states; k++) next[k] = out[k];
}

void cr_cell_forward_states(const cr_cell *cell, cr_tensor *x, cr_tensor *const *s, cr_tensor **next)
{
    cell_step("cr_cell_forward_states", cell, x, s, NULL, next);
}

void cr_cell_forward(const cr_cell *cell, cr_tensor *x, cr_tensor *h, cr_tensor *c, cr_tensor **h_out,
                     cr_tensor **c_out)
{
    const cr_cell_type *t = cell->type;
    if (t->n_states > 2)
        cr_error("cr_cell_forward: cell %s has %d states; use cr_cell_forward_states", t->name, t->n_states);
    if (t->n_states == 1 && c) cr_error("cr_cell_forward: c given to cell %s, which has one state", t->name);
    if (t->n_states == 2 && !c_out)
        cr_error("cr_cell_forward: cell %s has two states and c_out is NULL", t->name);
    static const char *const names[] = {"h", "c"};
    cr_tensor *s[2] = {h, c}, *next[2];
    cell_step("cr_cell_forward", cell, x, s, names, next);
    *h_out = next[0];
    if (c_out) *c_out = t->n_states == 2 ? next[1] : NULL;
}
