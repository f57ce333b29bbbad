/*
 * carousel optim module: optimizers (each a rule: hyper-parameters, state
 * slots, one update), gradient clipping and learning-rate schedules.
 * Data utilities are in data.h, checkpoints in checkpoint.h.
 */
#ifndef CAROUSEL_OPTIM_H
#define CAROUSEL_OPTIM_H

#include "nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- optimizers (optim/optim.c and one file per rule) ------------------------ */
/*
 * An optimizer walks a parameter set (f32 and f64 parameters) and updates
 * every parameter that has a gradient (value->grad != NULL); parameters
 * without one are skipped, as in PyTorch, and their state does not advance.
 * The update rules are PyTorch 1.13's (torch.optim), with k the number of
 * updates a parameter has received, g its gradient and p its value:
 *
 *   SGD      g += wd p;  buf = g (first update), else buf = m buf + (1-damp) g;
 *            d = nesterov ? g + m buf : buf  (d = g when m = 0);  p -= lr d
 *   Adam     g += wd p;  m1 = b1 m1 + (1-b1) g;  m2 = b2 m2 + (1-b2) g^2;
 *            p -= lr/(1-b1^k) m1 / (sqrt(m2)/sqrt(1-b2^k) + eps)
 *            (amsgrad: m2max = max(m2max, m2) replaces m2 in the denominator)
 *   AdamW    p *= 1 - lr wd, then Adam without weight decay (decoupled decay)
 *   RMSprop  g += wd p;  s = a s + (1-a) g^2;  centered: ga = a ga + (1-a) g,
 *            den = sqrt(s - ga^2) + eps, else den = sqrt(s) + eps;
 *            momentum: buf = m buf + g/den, p -= lr buf; else p -= lr g/den
 *
 * f32 parameters are updated in f32 arithmetic, f64 in f64 (as PyTorch does).
 * The state (moments, buffers) lives in persistent tensors allocated by
 * *_init, so a step makes no allocation; elementwise loops use OpenMP above
 * cr_parallel_threshold elements, each thread on disjoint elements, so
 * results do not depend on the thread count. The parameter set must not
 * change after *_init. A step bumps the version of every tensor it writes
 * (parameters and state), so autograd refuses a backward that would read a
 * parameter updated after its forward.
 *
 * An optimizer is a rule (cr_optim_rule): its hyper-parameters (a table of
 * fields of its config struct, with their valid ranges), its state slots
 * (PyTorch's state keys) and one update function. The generic part (init,
 * step, accessors, checkpoints) reads only the rule, so adding an optimizer
 * is one file (see optim/sgd.c) plus its prototypes here.
 *
 *     cr_optim *opt = cr_adam_init(ps, cr_adam_defaults(1e-3));
 *     for (...) {
 *         cr_optim_zero_grad(opt);
 *         cr_backward(loss_of(ps, batch));
 *         cr_optim_step(opt);
 *         cr_graph_clear(g);
 *     }
 *     cr_optim_free(opt);
 */

typedef struct cr_optim cr_optim;

/* One hyper-parameter of a rule: a double or bool field of its config. */
typedef struct cr_optim_hparam {
    const char *name; /* PyTorch's name: "lr", "beta1", "momentum", ... */
    size_t offset;    /* offsetof(config struct, field) */
    bool is_bool;     /* a flag (bool field), else a double */
    double lo, hi;    /* a double must be finite with lo <= x < hi (hi = INFINITY: no bound) */
} cr_optim_hparam;

/* Most state tensors a rule may keep per parameter. */
#define CR_OPTIM_MAX_SLOTS 4

typedef struct cr_optim_rule {
    const char *name;               /* "adam"; checkpoints store the state under it */
    size_t config_size;             /* sizeof its config struct */
    const cr_optim_hparam *hparams; /* every field of the config; one is "lr" */
    int n_hparams;
    const char *const *slots; /* per-parameter state tensors, named by PyTorch's state keys */
    int n_slots;              /* <= CR_OPTIM_MAX_SLOTS */
    /* Does a config keep slot s (NULL: every slot)? */
    bool (*uses_slot)(const void *cfg, int s);
    /* Checks beyond the ranges of the table (NULL if none): false with the
     * reason in msg. */
    bool (*validate)(const void *cfg, char *msg, size_t len);
    /* One update of parameter p (contiguous, f32 or f64) by its gradient g
     * (same dtype and size); slot[s] is its state for slot s (NULL where the
     * config does not use it); k counts the updates p has received,
     * this one included (1 on the first). Unless whole_tensor is set, element
     * i must depend only on element i of its inputs: cr_trainer then updates
     * 8192-element chunks of a parameter on different threads. */
    void (*update)(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k);
    /* The update reads across elements (a norm of g, say): it is only ever
     * given whole parameters. */
    bool whole_tensor;
} cr_optim_rule;

/* An optimizer following `rule` with config cfg (copied; rule->config_size
 * bytes) over every parameter of ps (kept by reference: ps must outlive it).
 * Bad hyper-parameters or integer parameters are misuse. */
cr_optim *cr_optim_init(cr_params *ps, const cr_optim_rule *rule, const void *cfg);
void cr_optim_free(cr_optim *o); /* NULL is a no-op; frees the state, not the parameters */

void cr_optim_step(cr_optim *o);              /* p <- update(p, p->grad) for every p with a gradient */
void cr_optim_zero_grad(cr_optim *o);         /* every existing gradient = 0 (kept allocated) */
void cr_optim_set_lr(cr_optim *o, double lr); /* lr >= 0, used by the next step */
double cr_optim_get_lr(const cr_optim *o);
const cr_optim_rule *cr_optim_rule_of(const cr_optim *o);
const char *cr_optim_name(const cr_optim *o); /* the rule's name: "sgd", "adam", ... */
/* The configuration in use, a struct of the rule's config type:
 *     const cr_adam_config *c = cr_optim_config(o);   // o made by cr_adam_init */
const void *cr_optim_config(const cr_optim *o);
/* A hyper-parameter by name (flags read 0 or 1); an unknown name is misuse. */
double cr_optim_get_hparam(const cr_optim *o, const char *name);
/* Set one (validated with the whole config, misuse if invalid); the next step uses it. */
void cr_optim_set_hparam(cr_optim *o, const char *name, double value);
cr_params *cr_optim_params(const cr_optim *o);
int64_t cr_optim_steps(const cr_optim *o); /* cr_optim_step calls so far */
/* Inspect the state of one parameter: slot is PyTorch's state name
 * ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq",
 * "square_avg", "grad_avg"). NULL when the optimizer keeps no such slot. */
const cr_tensor *cr_optim_state(const cr_optim *o, const char *param_name, const char *slot);
/* Updates parameter `param_name` has received (PyTorch's state['step']); -1 if unknown. */
int64_t cr_optim_param_steps(const cr_optim *o, const char *param_name);

/* The whole state by position, for checkpoints (PyTorch's state_dict and
 * load_state_dict): parameter i of the set, slot s of the rule's table. */
/* Misuse unless o is over ps and ps still holds the tensors seen at init. */
void cr_optim_check(const cr_optim *o, const cr_params *ps, const char *op);
cr_tensor *cr_optim_slot(const cr_optim *o, size_t i, int s); /* NULL when the config does not use s */
int64_t cr_optim_param_steps_at(const cr_optim *o, size_t i);
/* Is cfg valid for rule (ranges and the rule's own checks)? If not, says why in msg. */
bool cr_optim_config_ok(const cr_optim_rule *rule, const void *cfg, char *msg, size_t len);
/* Replace the config (must be valid), the step count and every parameter's
 * update count (param_steps[ps->n]); allocates, zero-filled, any slot the new
 * config uses and o lacked. The caller then fills the slots. */
void cr_optim_restore(cr_optim *o, const void *cfg, int64_t n_steps, const int64_t *param_steps);

/* ---- SGD (optim/sgd.c) ------------------------------------------------------ */
typedef struct cr_sgd_config {
    double lr;           /* learning rate */
    double momentum;     /* m, 0 for plain SGD */
    double dampening;    /* damp: buf = m buf + (1-damp) g after the first update */
    double weight_decay; /* L2 penalty, added to the gradient */
    bool nesterov;       /* needs momentum > 0 and dampening == 0 */
} cr_sgd_config;
extern const cr_optim_rule cr_sgd_rule;                  /* slot: momentum_buffer (momentum != 0) */
cr_sgd_config cr_sgd_defaults(double lr);                /* m 0, damp 0, wd 0, no Nesterov (PyTorch's) */
cr_optim *cr_sgd_init(cr_params *ps, cr_sgd_config cfg); /* p -= lr (g or momentum) */

/* ---- Adam and AdamW (optim/adam.c) -------------------------------------------- */
typedef struct cr_adam_config {
    double lr;
    double beta1, beta2; /* moment decay rates, in [0, 1) */
    double eps;          /* added after the bias-corrected square root */
    double weight_decay; /* Adam: L2 added to the gradient; AdamW: decoupled */
    bool amsgrad;        /* keep the running maximum of the second moment */
} cr_adam_config;
extern const cr_optim_rule cr_adam_rule;     /* slots: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad) */
extern const cr_optim_rule cr_adamw_rule;    /* the same slots */
cr_adam_config cr_adam_defaults(double lr);  /* betas 0.9, 0.999, eps 1e-8, wd 0 */
cr_adam_config cr_adamw_defaults(double lr); /* the same with wd 0.01 */
cr_optim *cr_adam_init(cr_params *ps, cr_adam_config cfg);  /* p -= lr m^/(sqrt(v^)+eps) */
cr_optim *cr_adamw_init(cr_params *ps, cr_adam_config cfg); /* p *= 1-lr wd, then Adam */

/* ---- RMSprop (optim/rmsprop.c) ---------------------------------------------- */
typedef struct cr_rmsprop_config {
    double lr;
    double alpha;        /* smoothing constant of the squared-gradient average */
    double eps;          /* added after the square root */
    double weight_decay; /* L2 added to the gradient */
    double momentum;     /* 0: no momentum buffer */
    bool centered;       /* divide by the estimated variance, not the raw second moment */
} cr_rmsprop_config;
extern const cr_optim_rule cr_rmsprop_rule;       /* slots: square_avg, momentum_buffer, grad_avg */
cr_rmsprop_config cr_rmsprop_defaults(double lr); /* alpha 0.99, eps 1e-8, wd 0, m 0 */
cr_optim *cr_rmsprop_init(cr_params *ps, cr_rmsprop_config cfg); /* p -= lr g/(sqrt(s)+eps) */

/* ---- gradient clipping (optim/clip.c) --------------------------------------- */

/* Global L2 norm of all gradients, PyTorch's norm of the per-tensor norms,
 * total = sqrt(sum_p ||g_p||^2), accumulated in f64 over fixed blocks (so it
 * does not depend on the thread count) and returned as measured before
 * clipping. As PyTorch's clip_grad_norm_, every gradient is scaled by
 * coef = max_norm / (total + 1e-6) when coef < 1 (its clamp of coef to 1 is
 * the same as not scaling), so the clipped norm is max_norm total/(total +
 * 1e-6): max_norm to within 1e-6, not 1 as in KANN. A NaN or infinite norm
 * leaves every gradient untouched and returns CR_NONFINITE (with a message),
 * so the caller can skip the step; otherwise CR_OK. *norm (may be NULL) gets
 * the norm either way. Squares that overflow f64 are rescaled: only NaN/inf
 * elements (or a norm above DBL_MAX) count as non-finite. Scaled gradients
 * get their version bumped. */
cr_status cr_clip_grad_norm(cr_params *ps, double max_norm, double *norm); /* g *= min(1, c/(|g|+1e-6)) */
/* Clamp every gradient element to [-clip, clip] (PyTorch's clip_grad_value_).
 * Returns CR_NONFINITE if any element was NaN or infinite (NaN stays NaN,
 * +-inf becomes +-clip), else CR_OK. */
cr_status cr_clip_grad_value(cr_params *ps, double clip); /* g = clamp(g, -c, c) */
/* The norm alone, without clipping. */
double cr_grad_norm(const cr_params *ps); /* sqrt(sum g^2) */

/* ---- learning-rate schedules (optim/schedule.c) ----------------------------- */
/*
 * A schedule maps the number of optimizer steps taken so far, k (0 before the
 * first step), to a learning rate. It is a plain value: its only state is the
 * step counter, which the caller keeps (and stores in checkpoints). The
 * formulas are the closed forms of torch.optim.lr_scheduler:
 *
 *   constant     lr
 *   step         lr gamma^floor(k / step_size)                    (StepLR)
 *   exponential  lr gamma^k                                       (ExponentialLR)
 *   cosine       eta_min + (lr - eta_min)(1 + cos(pi k/t_max))/2  (CosineAnnealingLR),
 *                held at eta_min for k >= t_max (no warm restart)
 *   linear       lr (f0 + (f1 - f0) min(k, n)/n)                 (LinearLR: warm-up)
 *
 * cr_schedule_then(a, m, b) runs a for k < m, then b on its own counter k - m
 * (SequentialLR with milestone m). Up to CR_SCHEDULE_MAX_PHASES phases.
 *
 *     cr_schedule s = cr_schedule_then(cr_schedule_linear(3e-3, 0.01, 1.0, 100), 100,
 *                                      cr_schedule_cosine(3e-3, 900, 1e-5));
 *     for (int64_t k = 0; k < 1000; k++) {
 *         cr_schedule_apply(&s, opt, k);   // lr for this step
 *         ... backward ...; cr_optim_step(opt);
 *     }
 */

#define CR_SCHEDULE_MAX_PHASES 8
typedef enum cr_schedule_kind {
    CR_SCHED_CONSTANT,
    CR_SCHED_STEP,
    CR_SCHED_EXPONENTIAL,
    CR_SCHED_COSINE,
    CR_SCHED_LINEAR
} cr_schedule_kind;

typedef struct cr_schedule_phase {
    cr_schedule_kind kind;
    int64_t start; /* first step of the phase; it sees k - start */
    double lr;     /* base learning rate */
    double a, b;   /* step/exponential: gamma; cosine: eta_min; linear: f0, f1 */
    int64_t n;     /* step: step_size; cosine: t_max; linear: steps to reach f1 */
} cr_schedule_phase;

typedef struct cr_schedule {
    int n_phases;
    cr_schedule_phase phase[CR_SCHEDULE_MAX_PHASES];
} cr_schedule;

cr_schedule cr_schedule_constant(double lr);                                /* lr */
cr_schedule cr_schedule_step(double lr, int64_t step_size, double gamma);   /* lr g^floor(k/s) */
cr_schedule cr_schedule_exponential(double lr, double gamma);               /* lr g^k */
cr_schedule cr_schedule_cosine(double lr, int64_t t_max, double eta_min);   /* cosine to eta_min */
cr_schedule cr_schedule_linear(double lr, double f0, double f1, int64_t n); /* lr (f0..f1) */
/* a for k < milestone, then b on k - milestone. */
cr_schedule cr_schedule_then(cr_schedule a, int64_t milestone, cr_schedule b); /* k<m ? a(k) : b(k-m) */
/* Linear warm-up, lr (k+1)/warmup for k < warmup, then cosine annealing from
 * lr to eta_min at step `total`. */
cr_schedule cr_schedule_warmup_cosine(double lr, int64_t warmup, int64_t total, double eta_min);
double cr_schedule_lr(const cr_schedule *s, int64_t step); /* lr after `step` steps */
/* cr_optim_set_lr(o, cr_schedule_lr(s, step)); returns that lr. */
double cr_schedule_apply(const cr_schedule *s, cr_optim *o, int64_t step);

/* ---- data-parallel training (optim/parallel.c) ------------------------------- */
/*
 * A trainer turns "the loss of this shard" into a training step on all the
 * cores. Each step's batch of `rows` rows is split into a fixed number of
 * shards (shard k gets rows [begin, end): rows/shards each, one more for the
 * first rows%shards). Each shard runs forward and backward on one thread,
 * recording its own graph (the current graph is per thread) and adding into
 * its own gradient buffer, with the weights shared read-only; the shard
 * gradients are then summed in a fixed pairwise tree, ((g0+g1)+(g2+g3))+...,
 * and clipping and one optimizer step follow. Shards are a property of the
 * run; threads only take them. So with the same seed and shard count a run
 * gives bit-identical weights on 1, 2, 3, 4 or 8 threads (README.md says
 * exactly what is guaranteed).
 *
 *     // rows [s->begin, s->end) of this step's batch -> the shard's share of the batch loss
 *     static cr_tensor *shard_loss(void *ctx, const cr_shard *s) {
 *         batch *b = ctx;  // b->x, b->y persistent (cr_tensor_init): shards read them
 *         cr_tensor *x = cr_narrow(b->x, 0, s->begin, s->end - s->begin);
 *         cr_tensor *y = cr_contiguous(cr_narrow(b->y, 0, s->begin, s->end - s->begin));
 *         cr_tensor *l = cr_cross_entropy(model_forward(b->m, x), y, -1, CR_MEAN);
 *         return cr_mul_scalar(l, s->weight);   // shard mean * rows share = batch mean
 *     }
 *     cr_trainer *tr = cr_trainer_init(ps, cr_trainer_defaults());   // 8 shards, all cores
 *     cr_task task = {.rows = B, .loss = shard_loss, .ctx = &b};
 *     for (...) cr_trainer_step(tr, &task, opt, 5.0, &loss, &norm);  // clip at 5, then opt
 *     cr_trainer_free(tr);
 *
 * The loss function runs on worker threads: it reads only persistent tensors
 * and what it creates itself (a step tensor of the caller's graph is refused
 * as another graph's), and writes nothing shared. Every dropout mask it draws
 * (the sequence layer's, cr_dropout's) comes from the shard's stream, keyed
 * by the seed, the step and the shard's position, never by the thread.
 * Carried state (truncated BPTT) is written by task->after_backward, which
 * runs on the calling thread after every shard's backward, shard by shard in
 * order, with the shard's graph current (its outputs still alive).
 *
 * Modes. Replicas: threads take shards and every kernel and product inside a
 * shard runs on its thread (BLIS single-threaded, no nested OpenMP); one
 * parallel region per step. Intra-op: shards one after the other on the
 * calling thread, threads inside the products and kernels (large hidden
 * sizes). Auto: intra-op when more than one thread is used and the largest
 * weight matrix holds at least cr_trainer_intra_op_elems elements, replicas
 * otherwise. The mode changes the speed, not the result.
 *
 * Over processes (MPI): give each rank its own shard range (first_shard,
 * local_shards) and split the step: cr_trainer_backward leaves the sum of the
 * local shards in one flat buffer, cr_trainer_grad(t); an allreduce goes
 * there (and an OR into cr_trainer_reached(t)); cr_trainer_publish copies it into every parameter's ->grad;
 * then clip and step as usual. With local_shards a power of two and first_shard a multiple of it, the local
 * sum is a subtree of the whole batch's tree, and summing the ranks' buffers pairwise in rank order completes
 * it bit for bit.
 */
typedef struct cr_trainer cr_trainer;

typedef enum cr_parallel_mode {
    CR_PARALLEL_AUTO,     /* by model size (see above) */
    CR_PARALLEL_REPLICAS, /* threads take shards; one thread per shard */
    CR_PARALLEL_INTRA_OP  /* shards in turn; threads inside products and kernels */
} cr_parallel_mode;

typedef struct cr_trainer_config {
    int shards;            /* per batch, >= 1: results depend on it, not on threads (0: 8) */
    int threads;           /* 0: cr_get_num_threads() (OMP_NUM_THREADS, else every core) */
    cr_parallel_mode mode; /* CR_PARALLEL_AUTO by default */
    uint64_t seed;         /* of the shards' dropout streams */
    int first_shard;       /* this process runs shards [first_shard, first_shard + local_shards) */
    int local_shards;      /* 0 with first_shard 0: all of them */
} cr_trainer_config;

typedef struct cr_shard {
    int index;          /* position in the batch, 0 .. shards-1 (global over MPI ranks) */
    int shards;         /* in the run */
    int64_t begin, end; /* its rows of the batch, [begin, end) */
    int64_t rows;       /* rows of the batch */
    double weight;      /* (end - begin) / rows: turns a shard mean into its share of the batch mean */
    int64_t step;       /* trainer steps before this one */
    cr_rng *rng;        /* the shard's stream (also every dropout mask's, see above) */
} cr_shard;

typedef struct cr_task {
    int64_t rows; /* rows in this step's batch, >= 1 (a shard with no rows is skipped) */
    /* The shard's share of the batch loss, a one-element float tensor: the
     * shard losses (and their gradients) are summed, so a batch mean is each
     * shard's mean times s->weight, or its sum over the batch's count. */
    cr_tensor *(*loss)(void *ctx, const cr_shard *s);
    /* Optional: after every shard's backward (carry state here). */
    void (*after_backward)(void *ctx, const cr_shard *s);
    void *ctx;
} cr_task;

cr_trainer_config cr_trainer_defaults(void); /* 8 shards, all threads, auto mode, seed 0 */
/* A trainer over every parameter of ps (contiguous, one float dtype; ps must
 * not change afterwards). Allocates one gradient buffer and one graph per
 * local shard: a steady-state step allocates nothing. */
cr_trainer *cr_trainer_init(cr_params *ps, cr_trainer_config cfg);
void cr_trainer_free(cr_trainer *t); /* NULL is a no-op */
/* Forward and backward of every local shard, gradients summed by the tree
 * into cr_trainer_grad(t); returns the shard losses summed by the same tree.
 * Parameters' ->grad are not touched (cr_trainer_publish). */
double cr_trainer_backward(cr_trainer *t, const cr_task *task);
/* The flat gradient [numel of all parameters], parameters in set order. */
cr_tensor *cr_trainer_grad(cr_trainer *t);
/* [parameters] 1 where a local shard's backward reached parameter i in the
 * last cr_trainer_backward, else 0; publish gives the others no gradient.
 * Over ranks, OR every rank's flags into it before publish. */
unsigned char *cr_trainer_reached(cr_trainer *t);
/* Copy the flat gradient into every parameter's ->grad (allocated if
 * missing), as zero_grad + backward would leave it: a parameter no shard
 * reached keeps a zeroed (or no) gradient. */
void cr_trainer_publish(cr_trainer *t);
/* backward + publish + cr_clip_grad_norm(max_norm; 0: no clipping) +
 * cr_optim_step, skipped (CR_NONFINITE returned) when the norm is NaN/inf. */
cr_status cr_trainer_step(cr_trainer *t, const cr_task *task, cr_optim *opt, double max_norm, double *loss,
                          double *norm);
cr_parallel_mode cr_trainer_mode(const cr_trainer *t); /* as resolved (never AUTO) */
int cr_trainer_threads(const cr_trainer *t);
int cr_trainer_shards(const cr_trainer *t);
int64_t cr_trainer_steps(const cr_trainer *t);           /* backward passes so far */
void cr_trainer_set_steps(cr_trainer *t, int64_t steps); /* on resume: keys the dropout streams */
const char *cr_parallel_mode_name(cr_parallel_mode m);   /* "auto", "replicas", "intra-op" */
/* Auto mode's threshold (elements of the largest 2-D parameter). */
extern int64_t cr_trainer_intra_op_elems;

#ifdef __cplusplus
}
#endif
#endif
