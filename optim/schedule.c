/* Learning-rate schedules as plain values: the closed forms of PyTorch's
 * StepLR, ExponentialLR, CosineAnnealingLR and LinearLR, chained like
 * SequentialLR. A schedule's only state is the caller's step counter. */
#include <math.h>

#include "optim.h"

static void check_nonneg(const char *op, const char *what, double x)
{
    if (!isfinite(x) || x < 0) cr_error("%s: %s = %g must be finite and >= 0", op, what, x);
}

static cr_schedule one_phase(cr_schedule_phase ph)
{
    cr_schedule s = {.n_phases = 1};
    s.phase[0] = ph;
    return s;
}

cr_schedule cr_schedule_constant(double lr)
{
    check_nonneg("cr_schedule_constant", "lr", lr);
    return one_phase((cr_schedule_phase){.kind = CR_SCHED_CONSTANT, .lr = lr});
}

cr_schedule cr_schedule_step(double lr, int64_t step_size, double gamma)
{
    check_nonneg("cr_schedule_step", "lr", lr);
    check_nonneg("cr_schedule_step", "gamma", gamma);
    if (step_size < 1) cr_error("cr_schedule_step: step_size = %lld must be >= 1", (long long)step_size);
    return one_phase((cr_schedule_phase){.kind = CR_SCHED_STEP, .lr = lr, .a = gamma, .n = step_size});
}

cr_schedule cr_schedule_exponential(double lr, double gamma)
{
    check_nonneg("cr_schedule_exponential", "lr", lr);
    check_nonneg("cr_schedule_exponential", "gamma", gamma);
    return one_phase((cr_schedule_phase){.kind = CR_SCHED_EXPONENTIAL, .lr = lr, .a = gamma});
}

cr_schedule cr_schedule_cosine(double lr, int64_t t_max, double eta_min)
{
    check_nonneg("cr_schedule_cosine", "lr", lr);
    check_nonneg("cr_schedule_cosine", "eta_min", eta_min);
    if (t_max < 1) cr_error("cr_schedule_cosine: t_max = %lld must be >= 1", (long long)t_max);
    return one_phase((cr_schedule_phase){.kind = CR_SCHED_COSINE, .lr = lr, .a = eta_min, .n = t_max});
}

cr_schedule cr_schedule_linear(double lr, double f0, double f1, int64_t n)
{
    check_nonneg("cr_schedule_linear", "lr", lr);
    check_nonneg("cr_schedule_linear", "f0", f0);
    check_nonneg("cr_schedule_linear", "f1", f1);
    if (n < 1) cr_error("cr_schedule_linear: n = %lld must be >= 1", (long long)n);
    return one_phase((cr_schedule_phase){.kind = CR_SCHED_LINEAR, .lr = lr, .a = f0, .b = f1, .n = n});
}

static void check_schedule(const cr_schedule *s, const char *op)
{
    if (!s) cr_error("%s: schedule is NULL", op);
    if (s->n_phases < 1 || s->n_phases > CR_SCHEDULE_MAX_PHASES)
        cr_error("%s: schedule has %d phases (need 1..%d; make one with cr_schedule_constant etc.)", op,
                 s->n_phases, CR_SCHEDULE_MAX_PHASES);
    if (s->phase[0].start != 0)
        cr_error("%s: the first phase starts at %lld, not 0", op, (long long)s->phase[0].start);
    for (int i = 1; i < s->n_phases; i++)
        if (s->phase[i].start <= s->phase[i - 1].start)
            cr_error("%s: phase %d starts at %lld, not after phase %d (%lld)", op, i,
                     (long long)s->phase[i].start, i - 1, (long long)s->phase[i - 1].start);
}

cr_schedule cr_schedule_then(cr_schedule a, int64_t milestone, cr_schedule b)
{
    check_schedule(&a, "cr_schedule_then");
    check_schedule(&b, "cr_schedule_then");
    if (milestone < 0) cr_error("cr_schedule_then: milestone = %lld must be >= 0", (long long)milestone);
    cr_schedule s = {.n_phases = 0};
    for (int i = 0; i < a.n_phases && a.phase[i].start < milestone; i++) s.phase[s.n_phases++] = a.phase[i];
    if (s.n_phases + b.n_phases > CR_SCHEDULE_MAX_PHASES)
        cr_error("cr_schedule_then: %d + %d phases exceed CR_SCHEDULE_MAX_PHASES (%d)", s.n_phases,
                 b.n_phases, CR_SCHEDULE_MAX_PHASES);
    for (int i = 0; i < b.n_phases; i++) {
        cr_schedule_phase ph = b.phase[i];
        if (ph.start > INT64_MAX - milestone)
            cr_error("cr_schedule_then: milestone %lld overflows", (long long)milestone);
        ph.start += milestone;
        s.phase[s.n_phases++] = ph;
    }
    return s;
}

cr_schedule cr_schedule_warmup_cosine(double lr, int64_t warmup, int64_t total, double eta_min)
{
    if (warmup < 0 || total <= warmup)
        cr_error("cr_schedule_warmup_cosine: need 0 <= warmup < total (warmup %lld, total %lld)",
                 (long long)warmup, (long long)total);
    cr_schedule cos = cr_schedule_cosine(lr, total - warmup, eta_min);
    if (warmup == 0) return cos;
    /* lr (k+1)/warmup: from lr/warmup at k = 0 to lr at k = warmup-1 */
    cr_schedule up = warmup == 1 ? cr_schedule_constant(lr)
                                 : cr_schedule_linear(lr, 1.0 / (double)warmup, 1.0, warmup - 1);
    return cr_schedule_then(up, warmup, cos);
}

static double phase_lr(const cr_schedule_phase *p, int64_t k)
{
    switch (p->kind) {
    case CR_SCHED_CONSTANT: return p->lr;
    case CR_SCHED_STEP: return p->lr * pow(p->a, (double)(k / p->n));
    case CR_SCHED_EXPONENTIAL: return p->lr * pow(p->a, (double)k);
    case CR_SCHED_COSINE:
        if (k >= p->n) return p->a;
        return p->a + (p->lr - p->a) * (1 + cos(3.14159265358979323846 * (double)k / (double)p->n)) / 2;
    case CR_SCHED_LINEAR:
        return p->lr * (p->a + (p->b - p->a) * (double)(k < p->n ? k : p->n) / (double)p->n);
    }
    cr_error("cr_schedule_lr: unknown phase kind %d", (int)p->kind);
}

double cr_schedule_lr(const cr_schedule *s, int64_t step)
{
    check_schedule(s, "cr_schedule_lr");
    if (step < 0) cr_error("cr_schedule_lr: step = %lld must be >= 0", (long long)step);
    int i = s->n_phases - 1;
    while (s->phase[i].start > step) i--;
    const cr_schedule_phase *p = &s->phase[i];
    if ((p->kind == CR_SCHED_STEP || p->kind == CR_SCHED_COSINE || p->kind == CR_SCHED_LINEAR) && p->n < 1)
        cr_error("cr_schedule_lr: phase %d has n = %lld (must be >= 1)", i, (long long)p->n);
    return phase_lr(p, step - p->start);
}

double cr_schedule_apply(const cr_schedule *s, cr_optim *o, int64_t step)
{
    double lr = cr_schedule_lr(s, step);
    cr_optim_set_lr(o, lr);
    return lr;
}
