/*
 * Tests of checkpoint/checkpoint.c: training resumed from a checkpoint in a new process
 * matches training straight through, bit for bit; checkpoint files that are
 * missing, corrupt or do not fit leave everything untouched; truncated BPTT
 * carries state across chunks and stops the gradient at their boundary.
 */
#include "carousel.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tmpdir.h"

static void setup(void) { tmpdir_make("resume"); }

static void teardown(void) { tmpdir_remove(); }

TestSuite(resume, .init = setup, .fini = teardown);

/* ---- a tiny character language model, built from ops ------------------------------- */
/* Embedding E [V,D], tanh RNN h = tanh(e W_ih^T + h W_hh^T + b) over windows of T
 * characters (each window starts from h = 0), dropout on h, logits h W_out^T + b_out.
 * Windows come in a shuffled order per epoch, drawn from (data seed, epoch), so
 * the order is a function of the step; dropout draws from the session's RNG. */

static const char TEXT[] = "the quick brown fox jumps over the lazy dog; a constant error carousel keeps "
                           "gradients alive through time, and the dog sleeps on while the fox runs on.\n";

enum { D = 6, H = 12, T = 5, B = 3 };

typedef struct session {
    cr_params *ps;
    cr_optim *opt;
    cr_schedule sched;
    cr_rng rng;   /* dropout */
    int64_t step; /* the schedule position = steps taken */
    cr_vocab *vocab;
    int32_t *stream;
    int64_t n;
    cr_graph *g;
} session;

typedef enum { OPT_ADAM, OPT_SGD, OPT_ADAMW, OPT_RMSPROP } opt_choice;

static cr_optim *make_optim(cr_params *ps, opt_choice c)
{
    switch (c) {
    case OPT_SGD:
        return cr_sgd_init(
            ps, (cr_sgd_config){.lr = 0.1, .momentum = 0.9, .nesterov = true, .weight_decay = 1e-3});
    case OPT_ADAMW: {
        cr_adam_config a = cr_adamw_defaults(0.01);
        a.amsgrad = true;
        return cr_adamw_init(ps, a);
    }
    case OPT_RMSPROP:
        return cr_rmsprop_init(
            ps,
            (cr_rmsprop_config){.lr = 0.01, .alpha = 0.9, .eps = 1e-8, .momentum = 0.5, .centered = true});
    case OPT_ADAM: break;
    }
    cr_adam_config a = cr_adam_defaults(0.01);
    a.weight_decay = 1e-4;
    return cr_adam_init(ps, a);
}

/* A fresh session. `vocab` NULL: build it from the text (else take it over).
 * init_seed gives the initial weights; resumed sessions use another one, to
 * show that loading replaces them. */
static session *session_new(uint64_t init_seed, cr_vocab *vocab, opt_choice oc)
{
    session *s = calloc(1, sizeof *s);
    s->g = cr_graph_init();
    cr_graph_use(s->g);
    s->vocab = vocab ? vocab : cr_vocab_init_chars(TEXT, strlen(TEXT));
    int64_t V = cr_vocab_size(s->vocab);
    cr_assert_eq(cr_vocab_encode(s->vocab, TEXT, strlen(TEXT), NULL, 0, &s->n), CR_OK);
    s->stream = malloc((size_t)s->n * sizeof *s->stream);
    cr_assert_eq(cr_vocab_encode(s->vocab, TEXT, strlen(TEXT), s->stream, s->n, &s->n), CR_OK);
    s->ps = cr_params_init();
    cr_tensor *w[] = {
        cr_params_add(s->ps, "lm", "embed", CR_F32, CR_SHAPE(V, D)),
        cr_params_add(s->ps, "lm", "rnn.w_ih", CR_F32, CR_SHAPE(H, D)),
        cr_params_add(s->ps, "lm", "rnn.w_hh", CR_F32, CR_SHAPE(H, H)),
        cr_params_add(s->ps, "lm", "rnn.b", CR_F32, CR_SHAPE(H)),
        cr_params_add(s->ps, "lm", "out.w", CR_F32, CR_SHAPE(V, H)),
        cr_params_add(s->ps, "lm", "out.b", CR_F32, CR_SHAPE(V)),
    };
    cr_rng init = cr_rng_seed(init_seed);
    for (size_t i = 0; i < sizeof w / sizeof *w; i++) cr_fill_uniform(w[i], &init, -0.3, 0.3);
    s->opt = make_optim(s->ps, oc);
    s->sched = cr_schedule_warmup_cosine(cr_optim_get_lr(s->opt), 3, 40, 1e-4);
    s->rng = cr_rng_seed(99);
    return s;
}

static void session_free(session *s)
{
    cr_optim_free(s->opt);
    cr_params_free(s->ps);
    cr_vocab_free(s->vocab);
    free(s->stream);
    cr_graph_use(NULL);
    cr_graph_free(s->g);
    free(s);
}

static cr_tensor *P(session *s, const char *name) { return cr_params_get(s->ps, name); }

/* One training step: windows of step s->step in its epoch's shuffled order. */
static double session_step(session *s)
{
    int64_t W = cr_windows_count(s->n, T, 2);
    int64_t per_epoch = W / B, epoch = s->step / per_epoch, slot = s->step % per_epoch;
    int64_t *perm = malloc((size_t)W * sizeof *perm);
    cr_rng order = {.seed = 12345, .offset = (uint64_t)epoch << 32};
    cr_permutation(perm, W, &order);
    int64_t starts[B];
    for (int b = 0; b < B; b++) starts[b] = perm[slot * B + b] * 2;
    free(perm);
    cr_graph_use(s->g);
    cr_tensor *x = cr_tensor_new(CR_I32, CR_SHAPE(B, T)), *y = cr_tensor_new(CR_I32, CR_SHAPE(B, T));
    cr_windows_fill(x, y, s->stream, s->n, starts);

    cr_schedule_apply(&s->sched, s->opt, s->step);
    cr_optim_zero_grad(s->opt);
    cr_tensor *emb = cr_gather_rows(P(s, "lm.embed"), x, -1); /* [B,T,D] */
    cr_tensor *h = cr_zeros(CR_F32, CR_SHAPE(B, H)), *loss = NULL;
    cr_tensor *w_ih_t = cr_transpose(P(s, "lm.rnn.w_ih"), 0, 1),
              *w_hh_t = cr_transpose(P(s, "lm.rnn.w_hh"), 0, 1);
    cr_tensor *w_out_t = cr_transpose(P(s, "lm.out.w"), 0, 1);
    for (int t = 0; t < T; t++) {
        /* h = tanh(e_t W_ih^T + h W_hh^T + b) */
        h = cr_tanh(
            cr_add(cr_add(cr_matmul(cr_select(emb, 1, t), w_ih_t), cr_matmul(h, w_hh_t)), P(s, "lm.rnn.b")));
        cr_tensor *logits = cr_add(cr_matmul(cr_dropout(h, 0.2, true, &s->rng), w_out_t), P(s, "lm.out.b"));
        cr_tensor *tgt = cr_tensor_new(CR_I32, CR_SHAPE(B));
        for (int b = 0; b < B; b++) ((int32_t *)tgt->data)[b] = ((const int32_t *)y->data)[b * T + t];
        cr_tensor *l = cr_cross_entropy(logits, tgt, -100, CR_MEAN);
        loss = loss ? cr_add(loss, l) : l;
    }
    loss = cr_mul_scalar(loss, 1.0 / T);
    double value = cr_item(loss);
    cr_backward(loss);
    if (cr_clip_grad_norm(s->ps, 0.5, NULL) == CR_OK) cr_optim_step(s->opt);
    cr_graph_clear(s->g);
    s->step++;
    return value;
}

static void session_train(session *s, int64_t steps)
{
    for (int64_t k = 0; k < steps; k++) session_step(s);
}

static cr_status session_save(session *s, const char *path)
{
    const char *meta[] = {"run", "test_resume"};
    return cr_checkpoint_save(path, s->ps, s->opt, s->step, &s->rng, s->vocab, meta, 1);
}

static bool files_equal(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    bool eq = cr_read_file(a, &x, &nx) == CR_OK && cr_read_file(b, &y, &ny) == CR_OK && nx == ny &&
              memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return eq;
}

/* Weights, moments and step counts of two sessions, bit for bit. */
static bool sessions_equal(session *a, session *b)
{
    if (a->step != b->step || a->rng.seed != b->rng.seed || a->rng.offset != b->rng.offset) return false;
    for (size_t i = 0; i < a->ps->n; i++) {
        const cr_tensor *x = a->ps->items[i].value, *y = b->ps->items[i].value;
        if (memcmp(x->data, y->data, (size_t)cr_numel(x) * 4)) return false;
        const char *slots[] = {"exp_avg",         "exp_avg_sq", "max_exp_avg_sq",
                               "momentum_buffer", "square_avg", "grad_avg"};
        for (int k = 0; k < 6; k++) {
            const cr_tensor *sx = cr_optim_state(a->opt, a->ps->items[i].name, slots[k]);
            const cr_tensor *sy = cr_optim_state(b->opt, b->ps->items[i].name, slots[k]);
            if (!sx != !sy) return false;
            if (sx && memcmp(sx->data, sy->data, (size_t)cr_numel(sx) * 4)) return false;
        }
        if (cr_optim_param_steps(a->opt, a->ps->items[i].name) !=
            cr_optim_param_steps(b->opt, b->ps->items[i].name))
            return false;
    }
    return cr_optim_steps(a->opt) == cr_optim_steps(b->opt) &&
           cr_optim_get_lr(a->opt) == cr_optim_get_lr(b->opt);
}

/* ---- resume in a new process ---------------------------------------------------------- */

enum { N_BEFORE = 11, M_AFTER = 13 };

/* The child: wait for the checkpoint, load it into fresh objects, train M
 * steps, save. Exit codes name the failing stage (no Criterion in here). */
static int child_resume(int fd)
{
    char c;
    if (read(fd, &c, 1) != 1 || c != 'g') return 10;
    /* the vocabulary first: it fixes the model's shapes */
    cr_vocab *vocab = NULL;
    if (cr_vocab_load(tpath("mid.safetensors"), &vocab) != CR_OK) {
        fprintf(stderr, "child: %s\n", cr_last_error());
        return 11;
    }
    /* fresh objects: other initial weights, a freshly made optimizer, RNG and step */
    session *s = session_new(777, vocab, OPT_ADAM);
    if (cr_checkpoint_load(tpath("mid.safetensors"), s->ps, s->opt, &s->step, &s->rng, NULL) != CR_OK) {
        fprintf(stderr, "child: %s\n", cr_last_error());
        return 12;
    }
    if (s->step != N_BEFORE || s->rng.offset == 0) return 13;
    session_train(s, M_AFTER);
    if (session_save(s, tpath("child_end.safetensors")) != CR_OK) return 14;
    session_free(s);
    return 0;
}

Test(resume, new_process_matches_straight_run)
{
    /* Fork first, before this process starts any OpenMP thread, but after the
     * directory exists, so parent and child share it. */
    tmpdir_path();
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork failed");
    if (pid == 0) {
        close(pipefd[1]);
        _exit(child_resume(pipefd[0]));
    }
    close(pipefd[0]);

    session *b = session_new(1, NULL, OPT_ADAM);
    session_train(b, N_BEFORE);
    cr_assert_eq(session_save(b, tpath("mid.safetensors")), CR_OK, "%s", cr_last_error());
    char go = 'g';
    cr_assert_eq(write(pipefd[1], &go, 1), 1);
    close(pipefd[1]);

    session *a = session_new(1, NULL, OPT_ADAM);
    session_train(a, N_BEFORE + M_AFTER);
    cr_assert_eq(session_save(a, tpath("straight_end.safetensors")), CR_OK, "%s", cr_last_error());

    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed at stage %d", WEXITSTATUS(status));
    /* Same weights, moments, step counts, schedule position, RNG, vocabulary,
     * metadata: the two files are identical byte for byte. */
    cr_assert(files_equal(tpath("straight_end.safetensors"), tpath("child_end.safetensors")),
              "resumed run differs from the straight run");
    /* and training did something: the weights moved since the middle */
    cr_st_file *mid = NULL;
    cr_assert_eq(cr_st_read(tpath("mid.safetensors"), &mid), CR_OK);
    const cr_st_entry *e = cr_st_find(mid, "lm.out.w");
    cr_assert(memcmp(e->data, P(a, "lm.out.w")->data, e->nbytes) != 0);
    cr_st_file_free(mid);
    session_free(a);
    session_free(b);
}

/* Every optimizer kind resumes exactly (in-process, fresh objects). */
Test(resume, every_optimizer_resumes_exactly)
{
    opt_choice kinds[] = {OPT_ADAM, OPT_SGD, OPT_ADAMW, OPT_RMSPROP};
    for (int k = 0; k < 4; k++) {
        session *a = session_new(5, NULL, kinds[k]);
        session_train(a, 7);
        cr_assert_eq(session_save(a, tpath("k.safetensors")), CR_OK, "%s", cr_last_error());
        session_train(a, 6);
        session *b = session_new(6, NULL, kinds[k]);
        cr_assert_eq(cr_checkpoint_load(tpath("k.safetensors"), b->ps, b->opt, &b->step, &b->rng, NULL),
                     CR_OK, "%s", cr_last_error());
        session_train(b, 6);
        cr_assert(sessions_equal(a, b), "optimizer %s", cr_optim_name(a->opt));
        session_free(a);
        session_free(b);
    }
}

/* ---- what a checkpoint holds --------------------------------------------------------- */

Test(resume, checkpoint_contents)
{
    session *s = session_new(1, NULL, OPT_ADAM);
    session_train(s, 4);
    cr_optim_set_lr(s->opt, 0.0125);
    cr_assert_eq(session_save(s, tpath("c.safetensors")), CR_OK, "%s", cr_last_error());
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(tpath("c.safetensors"), &f), CR_OK, "%s", cr_last_error());
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.format"), "checkpoint-1");
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.optim"), "adam");
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.optim.lr"), "0.012500000000000001");
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.schedule_step"), "4");
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.rng.seed"), "99");
    cr_assert_str_eq(cr_st_meta_get(f, "run"), "test_resume", "the caller's metadata");
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.vocab.kind"), "char");
    const cr_st_entry *m = cr_st_find(f, "__optim__.adam.exp_avg.lm.rnn.w_hh");
    cr_assert(m != NULL);
    cr_assert(memcmp(m->data, cr_optim_state(s->opt, "lm.rnn.w_hh", "exp_avg")->data, m->nbytes) == 0);
    const cr_st_entry *k = cr_st_find(f, "__optim__.adam.step.lm.out.b");
    cr_assert(k != NULL && k->dtype == CR_F64 && k->ndim == 0);
    double steps;
    memcpy(&steps, k->data, 8);
    cr_assert_eq(steps, 4.0);
    cr_st_file_free(f);
    /* weights-only loaders read it too */
    cr_assert_eq(cr_params_load(s->ps, tpath("c.safetensors")), CR_OK, "%s", cr_last_error());
    cr_assert_eq(cr_checkpoint_load(tpath("c.safetensors"), s->ps, NULL, NULL, NULL, NULL), CR_OK);
    session_free(s);
}

/* The caller's own tensors (a carried hidden state) go into the same file,
 * are skipped by the loaders and read back by name; a name outside the
 * reserved prefix, or one the file already has, fails with nothing written. */
Test(resume, caller_tensors_in_a_checkpoint)
{
    session *s = session_new(1, NULL, OPT_ADAM);
    session_train(s, 2);
    float h[2][3] = {{1, -2, 3.5f}, {0.25f, 0, -1e-3f}};
    cr_st_entry e = {
        .name = "__optim__.lm.h", .dtype = CR_F32, .ndim = 2, .shape = {2, 3}, .data = h, .nbytes = sizeof h};
    const char *path = tpath("extra.safetensors");
    cr_assert_eq(cr_checkpoint_save_extra(path, s->ps, s->opt, s->step, &s->rng, s->vocab, &e, 1, NULL, 0),
                 CR_OK, "%s", cr_last_error());
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(path, &f), CR_OK, "%s", cr_last_error());
    const cr_st_entry *got = cr_st_find(f, "__optim__.lm.h");
    cr_assert(got && got->dtype == CR_F32 && got->ndim == 2 && got->shape[0] == 2 && got->shape[1] == 3);
    cr_assert(memcmp(got->data, h, sizeof h) == 0);
    cr_assert(cr_st_find(f, "__optim__.adam.exp_avg.lm.embed") != NULL, "the optimizer's state is there too");
    cr_st_file_free(f);
    int64_t step = -1;
    cr_assert_eq(cr_checkpoint_load(path, s->ps, s->opt, &step, NULL, NULL), CR_OK, "%s", cr_last_error());
    cr_assert_eq(step, 2);
    cr_assert_eq(cr_params_load(s->ps, path), CR_OK, "%s", cr_last_error());

    const char *bad = tpath("bad.safetensors");
    e.name = "lm.h";
    cr_assert_eq(cr_checkpoint_save_extra(bad, s->ps, s->opt, 0, NULL, NULL, &e, 1, NULL, 0), CR_EINVAL);
    cr_assert(strstr(cr_last_error(), "lm.h") != NULL, "%s", cr_last_error());
    e.name = "__optim__.adam.exp_avg.lm.embed"; /* the optimizer's own */
    cr_assert_eq(cr_checkpoint_save_extra(bad, s->ps, s->opt, 0, NULL, NULL, &e, 1, NULL, 0), CR_EINVAL);
    cr_assert_eq(access(bad, F_OK), -1, "a failed save leaves no file");
    session_free(s);
}

/* The saved hyper-parameters replace the optimizer's, as in load_state_dict,
 * and slots the saved config needs are created. */
Test(resume, hyperparameters_are_restored)
{
    session *s = session_new(1, NULL, OPT_ADAMW); /* amsgrad on */
    session_train(s, 3);
    cr_assert_eq(session_save(s, tpath("h.safetensors")), CR_OK, "%s", cr_last_error());
    cr_params *ps = cr_params_init();
    for (size_t i = 0; i < s->ps->n; i++) {
        const cr_tensor *v = s->ps->items[i].value;
        cr_params_add(ps, NULL, s->ps->items[i].name, v->dtype, v->ndim, v->shape);
    }
    cr_optim *o = cr_adamw_init(ps, cr_adam_defaults(1.0)); /* no amsgrad, other lr and wd */
    cr_assert_null(cr_optim_state(o, "lm.embed", "max_exp_avg_sq"));
    int64_t step = 0;
    cr_assert_eq(cr_checkpoint_load(tpath("h.safetensors"), ps, o, &step, NULL, NULL), CR_OK, "%s",
                 cr_last_error());
    cr_adam_config c = *(const cr_adam_config *)cr_optim_config(o),
                   want = *(const cr_adam_config *)cr_optim_config(s->opt);
    cr_assert(memcmp(&c, &want, sizeof c) == 0);
    cr_assert(c.amsgrad);
    cr_assert_eq(step, 3);
    const cr_tensor *v1 = cr_optim_state(o, "lm.embed", "max_exp_avg_sq"),
                    *v2 = cr_optim_state(s->opt, "lm.embed", "max_exp_avg_sq");
    cr_assert(v1 != NULL);
    cr_assert(memcmp(v1->data, v2->data, (size_t)cr_numel(v1) * 4) == 0);
    cr_optim_free(o);
    cr_params_free(ps);
    session_free(s);
}

/* ---- failures leave everything as it was ----------------------------------------------- */

typedef struct snapshot {
    char *bytes;
    size_t n;
} snapshot;

/* Every parameter, moment, step count, and the lr of a session, as bytes. */
static snapshot snap(session *s)
{
    snapshot sn = {0};
    cr_assert_eq(cr_checkpoint_save(tpath("snap.safetensors"), s->ps, s->opt, 0, NULL, NULL, NULL, 0), CR_OK);
    cr_assert_eq(cr_read_file(tpath("snap.safetensors"), &sn.bytes, &sn.n), CR_OK);
    return sn;
}

static void expect_unchanged(session *s, snapshot before, const char *what)
{
    snapshot now = snap(s);
    cr_assert(now.n == before.n && memcmp(now.bytes, before.bytes, now.n) == 0, "%s changed the session",
              what);
    free(now.bytes);
}

/* Rewrite a checkpoint with metadata key (or tensor) changed. */
static void rewrite(const char *src, const char *dst, const char *key, const char *value, const char *tensor,
                    const cr_st_entry *replacement)
{
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(src, &f), CR_OK);
    size_t n = cr_st_count(f), nm = cr_st_meta_count(f);
    cr_st_entry *es = malloc(n * sizeof *es);
    const char **kv = malloc(2 * nm * sizeof *kv);
    size_t ne = 0;
    for (size_t i = 0; i < n; i++) {
        const cr_st_entry *e = cr_st_entry_at(f, i);
        if (tensor && strcmp(e->name, tensor) == 0) {
            if (replacement) es[ne++] = *replacement;
        } else {
            es[ne++] = *e;
        }
    }
    size_t nk = 0;
    for (size_t i = 0; i < nm; i++) {
        const char *k, *v;
        cr_st_meta_at(f, i, &k, &v);
        if (key && strcmp(k, key) == 0) {
            if (!value) continue;
            v = value;
        }
        kv[2 * nk] = k;
        kv[2 * nk + 1] = v;
        nk++;
    }
    cr_assert_eq(cr_st_write(dst, es, ne, kv, nk), CR_OK);
    free(es);
    free(kv);
    cr_st_file_free(f);
}

Test(resume, failed_loads_change_nothing)
{
    session *src = session_new(1, NULL, OPT_ADAM);
    session_train(src, 5);
    cr_assert_eq(session_save(src, tpath("good.safetensors")), CR_OK, "%s", cr_last_error());

    session *s = session_new(2, NULL, OPT_ADAM);
    session_train(s, 2);
    snapshot before = snap(s);
    cr_rng rng = {.seed = 1, .offset = 2};
    int64_t step = 77;
    cr_vocab *vocab = NULL;
#define EXPECT_FAIL(path, want, what)                                                                        \
    do {                                                                                                     \
        cr_failure(CR_OK, "%s", "");                                                                         \
        cr_status got = cr_checkpoint_load(path, s->ps, s->opt, &step, &rng, &vocab);                        \
        cr_assert_eq(got, want, "%s: got %s (%s)", what, cr_status_str(got), cr_last_error());               \
        cr_assert(cr_last_error()[0] != 0, "%s: a message", what);                                           \
        expect_unchanged(s, before, what);                                                                   \
        cr_assert(step == 77 && rng.seed == 1 && rng.offset == 2 && vocab == NULL, "%s: outputs untouched",  \
                  what);                                                                                     \
    } while (0)

    EXPECT_FAIL(tpath("missing.safetensors"), CR_EIO, "missing file");
    cr_assert(strstr(cr_last_error(), "missing.safetensors") != NULL, "%s", cr_last_error());

    /* truncated: the data section is cut short */
    char *bytes;
    size_t n;
    cr_assert_eq(cr_read_file(tpath("good.safetensors"), &bytes, &n), CR_OK);
    FILE *fp = fopen(tpath("cut.safetensors"), "wb");
    fwrite(bytes, 1, n - 100, fp);
    fclose(fp);
    free(bytes);
    EXPECT_FAIL(tpath("cut.safetensors"), CR_EFORMAT, "truncated file");

    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), "carousel.optim", "sgd", NULL, NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EMISMATCH, "other optimizer kind");
    cr_assert(strstr(cr_last_error(), "sgd") && strstr(cr_last_error(), "adam"), "%s", cr_last_error());
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), "carousel.rng.offset", "-5", NULL, NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EFORMAT, "negative rng offset");
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), "carousel.rng.seed", NULL, NULL, NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EMISMATCH, "no rng");
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), "carousel.optim.beta1", "1.5", NULL, NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EFORMAT, "beta1 out of range");
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), "carousel.optim.eps", "nan", NULL, NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EFORMAT, "eps NaN");
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), "carousel.schedule_step", "4x", NULL, NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EFORMAT, "bad schedule step");
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), "carousel.format", "checkpoint-9", NULL,
            NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EFORMAT, "future format");
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), NULL, NULL,
            "__optim__.adam.exp_avg_sq.lm.rnn.b", NULL);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EMISMATCH, "a moment missing");
    double half = 2.5;
    cr_st_entry frac = {
        .name = "__optim__.adam.step.lm.rnn.b", .dtype = CR_F64, .ndim = 0, .data = &half, .nbytes = 8};
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), NULL, NULL, "__optim__.adam.step.lm.rnn.b",
            &frac);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EFORMAT, "fractional step count");
    float small[3] = {0};
    cr_st_entry shape = {
        .name = "lm.rnn.b", .dtype = CR_F32, .ndim = 1, .shape = {3}, .data = small, .nbytes = 12};
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), NULL, NULL, "lm.rnn.b", &shape);
    EXPECT_FAIL(tpath("bad.safetensors"), CR_EMISMATCH, "parameter of another shape");
    cr_st_entry extra = {
        .name = "lm.stray", .dtype = CR_F32, .ndim = 1, .shape = {3}, .data = small, .nbytes = 12};
    rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), NULL, NULL, "no-such-tensor", NULL);
    {
        /* a stray tensor that is not a parameter */
        cr_st_file *f = NULL;
        cr_assert_eq(cr_st_read(tpath("bad.safetensors"), &f), CR_OK);
        size_t cnt = cr_st_count(f);
        cr_st_entry *es = malloc((cnt + 1) * sizeof *es);
        for (size_t i = 0; i < cnt; i++) es[i] = *cr_st_entry_at(f, i);
        es[cnt] = extra;
        cr_assert_eq(cr_st_write(tpath("stray.safetensors"), es, cnt + 1, NULL, 0), CR_OK);
        free(es);
        cr_st_file_free(f);
    }
    EXPECT_FAIL(tpath("stray.safetensors"), CR_EMISMATCH, "stray tensor");
    cr_assert(strstr(cr_last_error(), "lm.stray") != NULL, "%s", cr_last_error());
    /* weights only (cr_params_save): no optimizer state to restore */
    cr_assert_eq(cr_params_save(src->ps, tpath("weights.safetensors"), NULL, 0), CR_OK);
    EXPECT_FAIL(tpath("weights.safetensors"), CR_EMISMATCH, "no optimizer state");

    /* and the good file loads */
    cr_assert_eq(cr_checkpoint_load(tpath("good.safetensors"), s->ps, s->opt, &step, &rng, &vocab), CR_OK,
                 "%s", cr_last_error());
    cr_assert_eq(step, 5);
    cr_assert(vocab != NULL);
    cr_assert_eq(cr_vocab_size(vocab), cr_vocab_size(src->vocab));
    cr_vocab_free(vocab);
    free(before.bytes);
    session_free(s);
    session_free(src);
#undef EXPECT_FAIL
}

/* Strings from a checkpoint (format, optimizer name, vocabulary kind) reach
 * messages escaped: a newline or a terminal escape cannot forge log lines. */
Test(resume, file_strings_are_escaped_in_messages)
{
    session *src = session_new(1, NULL, OPT_ADAM);
    session_train(src, 1);
    cr_assert_eq(session_save(src, tpath("good.safetensors")), CR_OK, "%s", cr_last_error());
    session *s = session_new(2, NULL, OPT_ADAM);
    const char *evil = "x\ncarousel: ok\x1b[31m'";
    const char *shown = "x\\x0acarousel: ok\\x1b[31m\\'";
    struct {
        const char *key, *want;
        cr_status st;
    } cases[] = {
        {"carousel.format", "unsupported checkpoint format '", CR_EFORMAT},
        {"carousel.optim", "the file holds '", CR_EMISMATCH},
        {"carousel.vocab.kind", "vocabulary kind '", CR_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rewrite(tpath("good.safetensors"), tpath("bad.safetensors"), cases[i].key, evil, NULL, NULL);
        cr_vocab *v = NULL;
        cr_status st = cr_checkpoint_load(tpath("bad.safetensors"), s->ps, s->opt, NULL, NULL, &v);
        cr_assert_eq(st, cases[i].st, "%s: %s", cases[i].key, cr_last_error());
        char want[256];
        snprintf(want, sizeof want, "%s%s'", cases[i].want, shown);
        cr_assert(strstr(cr_last_error(), want), "%s: '%s' lacks '%s'", cases[i].key, cr_last_error(), want);
        for (const char *c = cr_last_error(); *c; c++)
            cr_assert((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f, "raw byte 0x%02x",
                      (unsigned char)*c);
    }
    session_free(s);
    session_free(src);
}

/* ---- an optimizer defined outside the library ----------------------------------------- */
/* Sign SGD with a decaying trace: p -= lr sign(g + beta tr), tr = g. A whole
 * optimizer in a config, two tables and an update: checkpoints save and
 * restore it from its tables with no change anywhere else. */
typedef struct sign_config {
    double lr, beta;
    bool trace;
} sign_config;

static const char *const sign_slots[] = {"trace"};
static const cr_optim_hparam sign_hparams[] = {
    {"lr", offsetof(sign_config, lr), false, 0, INFINITY},
    {"beta", offsetof(sign_config, beta), false, 0, 1},
    {"trace", offsetof(sign_config, trace), true, 0, 0},
};

static bool sign_uses_slot(const void *cfg, int s) { return s == 0 && ((const sign_config *)cfg)->trace; }

static void sign_update(const void *cfg, cr_tensor *p, const cr_tensor *g, cr_tensor *const *slot, int64_t k)
{
    (void)k;
    const sign_config *c = cfg;
    float *pd = p->data, *tr = slot[0] ? slot[0]->data : NULL;
    const float *gd = g->data;
    for (int64_t i = 0; i < cr_numel(p); i++) {
        float d = gd[i] + (tr ? (float)c->beta * tr[i] : 0.0f);
        pd[i] -= (float)c->lr * (float)((d > 0) - (d < 0));
        if (tr) tr[i] = gd[i];
    }
}

static const cr_optim_rule sign_rule = {
    .name = "signsgd",
    .config_size = sizeof(sign_config),
    .hparams = sign_hparams,
    .n_hparams = 3,
    .slots = sign_slots,
    .n_slots = 1,
    .uses_slot = sign_uses_slot,
    .update = sign_update,
};

Test(resume, user_defined_rule_resumes_exactly)
{
    session *a = session_new(1, NULL, OPT_ADAM);
    cr_optim_free(a->opt);
    sign_config cfg = {.lr = 0.01, .beta = 0.5, .trace = true};
    a->opt = cr_optim_init(a->ps, &sign_rule, &cfg);
    session_train(a, 3);
    cr_assert_eq(session_save(a, tpath("sign.safetensors")), CR_OK, "%s", cr_last_error());
    cr_st_file *f = NULL;
    cr_assert_eq(cr_st_read(tpath("sign.safetensors"), &f), CR_OK);
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.optim"), "signsgd");
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.optim.beta"), "0.5");
    cr_assert_str_eq(cr_st_meta_get(f, "carousel.optim.trace"), "1");
    cr_assert_not_null(cr_st_find(f, "__optim__.signsgd.trace.lm.embed"));
    cr_st_file_free(f);
    session_train(a, 3);

    session *b = session_new(9, NULL, OPT_ADAM);
    cr_optim_free(b->opt);
    sign_config other = {.lr = 1, .beta = 0, .trace = false};
    b->opt = cr_optim_init(b->ps, &sign_rule, &other);
    cr_assert_null(cr_optim_state(b->opt, "lm.embed", "trace"));
    cr_assert_eq(cr_checkpoint_load(tpath("sign.safetensors"), b->ps, b->opt, &b->step, &b->rng, NULL), CR_OK,
                 "%s", cr_last_error());
    const sign_config *got = cr_optim_config(b->opt);
    cr_assert(got->lr == 0.01 && got->beta == 0.5 && got->trace);
    cr_assert_eq(cr_optim_get_hparam(b->opt, "beta"), 0.5);
    session_train(b, 3);
    for (size_t i = 0; i < a->ps->n; i++) {
        const cr_tensor *x = a->ps->items[i].value, *y = b->ps->items[i].value;
        cr_assert(memcmp(x->data, y->data, (size_t)cr_numel(x) * 4) == 0, "%s differs", a->ps->items[i].name);
    }
    session_free(a);
    session_free(b);
}

Test(resume, save_failure_is_a_status)
{
    session *s = session_new(1, NULL, OPT_SGD);
    cr_status st = session_save(s, tpath("no/such/dir/c.safetensors"));
    cr_assert_eq(st, CR_EIO, "%s", cr_status_str(st));
    cr_assert(strstr(cr_last_error(), "no/such/dir") != NULL, "%s", cr_last_error());
    session_free(s);
}

Test(resume, reserved_metadata_key_is_misuse, .signal = SIGABRT)
{
    session *s = session_new(1, NULL, OPT_SGD);
    const char *meta[] = {"carousel.mine", "x"};
    /* misuse is reported before any file is touched: the path is never created */
    cr_checkpoint_save("never-written.safetensors", s->ps, s->opt, 0, NULL, NULL, meta, 1);
}

/* ---- truncated BPTT ------------------------------------------------------------------- */
/* A tanh RNN from ops, f64: h_t = tanh(x_t W^T + h_{t-1} U^T + b), chunk loss
 * sum_t sum(h_t * r_t) over K steps. */

enum { TB = 2, TI = 3, TH = 4, TK = 4, TCHUNKS = 3 };

typedef struct rnn {
    cr_params *ps;
    cr_tensor *W, *U, *b;
    cr_tensor *x[TK * TCHUNKS], *r[TK * TCHUNKS]; /* persistent inputs and loss weights */
} rnn;

static rnn rnn_make(void)
{
    rnn m;
    m.ps = cr_params_init();
    m.W = cr_params_add(m.ps, "rnn", "W", CR_F64, CR_SHAPE(TH, TI));
    m.U = cr_params_add(m.ps, "rnn", "U", CR_F64, CR_SHAPE(TH, TH));
    m.b = cr_params_add(m.ps, "rnn", "b", CR_F64, CR_SHAPE(TH));
    cr_rng r = cr_rng_seed(3);
    cr_fill_uniform(m.W, &r, -0.8, 0.8);
    cr_fill_uniform(m.U, &r, -0.8, 0.8);
    cr_fill_uniform(m.b, &r, -0.3, 0.3);
    for (int t = 0; t < TK * TCHUNKS; t++) {
        m.x[t] = cr_tensor_init(CR_F64, CR_SHAPE(TB, TI));
        m.r[t] = cr_tensor_init(CR_F64, CR_SHAPE(TB, TH));
        cr_fill_normal(m.x[t], &r, 0, 1);
        cr_fill_normal(m.r[t], &r, 0, 1);
    }
    return m;
}

static void rnn_free(rnn *m)
{
    for (int t = 0; t < TK * TCHUNKS; t++) {
        cr_tensor_free(m->x[t]);
        cr_tensor_free(m->r[t]);
    }
    cr_params_free(m->ps);
}

/* Run chunk c from state h; returns the chunk loss and sets *h_out. */
static cr_tensor *rnn_chunk(rnn *m, int c, cr_tensor *h, cr_tensor **h_out)
{
    cr_tensor *loss = NULL;
    for (int t = c * TK; t < (c + 1) * TK; t++) {
        h = cr_tanh(cr_add(
            cr_add(cr_matmul(m->x[t], cr_transpose(m->W, 0, 1)), cr_matmul(h, cr_transpose(m->U, 0, 1))),
            m->b));
        cr_tensor *l = cr_sum(cr_mul(h, m->r[t]));
        loss = loss ? cr_add(loss, l) : l;
    }
    *h_out = h;
    return loss;
}

/* The gradients of every parameter, copied out (12 + 16 + 4 doubles). */
static void grads_of(rnn *m, double *out)
{
    size_t k = 0;
    for (size_t i = 0; i < m->ps->n; i++) {
        const cr_tensor *g = m->ps->items[i].value->grad;
        for (int64_t j = 0; j < cr_numel(g); j++) out[k++] = cr_get_flat(g, j);
    }
}

enum { NGRAD = TH * TI + TH * TH + TH };

/* A chunk's gradient equals the derivative of that chunk's loss with its
 * incoming state held constant (central differences), and differs from full
 * BPTT through the earlier chunks. */
Test(resume, tbptt_gradient_stops_at_the_chunk_boundary)
{
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    rnn m = rnn_make();
    cr_tensor *carry = cr_tensor_init(CR_F64, CR_SHAPE(TB, TH)); /* zeros */
    double chunk_grad[TCHUNKS][NGRAD];
    cr_tensor *incoming[TCHUNKS];
    size_t reserved = 0;
    for (int c = 0; c < TCHUNKS; c++) {
        incoming[c] = cr_tensor_init(CR_F64, CR_SHAPE(TB, TH));
        cr_copy_(incoming[c], carry);
        cr_params_zero_grad(m.ps);
        cr_tensor *h;
        cr_backward(rnn_chunk(&m, c, carry, &h));
        grads_of(&m, chunk_grad[c]);
        cr_assert_null(carry->grad, "no gradient flows into the carried state");
        cr_state_carry(carry, h);
        cr_graph_clear(g);
        cr_assert_eq(cr_graph_node_count(g), 0);
        if (c == 1) reserved = cr_graph_bytes_reserved(g);
        if (c > 1)
            cr_assert_eq(cr_graph_bytes_reserved(g), reserved, "steady state: the arena does not grow");
    }

    /* central differences of chunk c's loss, incoming state constant */
    bool old = cr_set_grad_enabled(false);
    for (int c = 1; c < TCHUNKS; c++) {
        size_t k = 0;
        for (size_t i = 0; i < m.ps->n; i++) {
            cr_tensor *p = m.ps->items[i].value;
            for (int64_t j = 0; j < cr_numel(p); j++, k++) {
                double v = cr_get_flat(p, j), eps = 1e-6, lp, lm;
                cr_tensor *h;
                cr_set_flat(p, j, v + eps);
                lp = cr_item(rnn_chunk(&m, c, incoming[c], &h));
                cr_set_flat(p, j, v - eps);
                lm = cr_item(rnn_chunk(&m, c, incoming[c], &h));
                cr_set_flat(p, j, v);
                cr_graph_clear(g);
                double num = (lp - lm) / (2 * eps);
                cr_assert(fabs(num - chunk_grad[c][k]) < 1e-7 * fmax(1, fabs(num)),
                          "chunk %d grad %zu: %g vs %g", c, k, chunk_grad[c][k], num);
            }
        }
    }
    cr_set_grad_enabled(old);

    /* one graph over every chunk with cr_detach at the boundaries: the same
     * gradients, and the same final state; without the cut they differ */
    for (int cut = 1; cut >= 0; cut--) {
        cr_tensor *h = cr_zeros(CR_F64, CR_SHAPE(TB, TH)), *loss = NULL;
        for (int c = 0; c < TCHUNKS; c++) {
            if (cut) h = cr_detach(h);
            loss = rnn_chunk(&m, c, h, &h);
        }
        cr_params_zero_grad(m.ps);
        cr_backward(loss); /* the last chunk's loss */
        double gl[NGRAD];
        grads_of(&m, gl);
        double diff = 0;
        for (int k = 0; k < NGRAD; k++) diff = fmax(diff, fabs(gl[k] - chunk_grad[TCHUNKS - 1][k]));
        if (cut) {
            cr_assert(diff < 1e-12, "detach in one graph: max diff %g", diff);
            cr_assert(memcmp(h->data, carry->data, sizeof(double) * TB * TH) == 0,
                      "carried state = straight state");
        } else {
            cr_assert(diff > 1e-6, "full BPTT reaches further back (diff %g)", diff);
        }
        cr_graph_clear(g);
    }
    for (int c = 0; c < TCHUNKS; c++) cr_tensor_free(incoming[c]);
    cr_tensor_free(carry);
    rnn_free(&m);
    cr_graph_use(NULL);
    cr_graph_free(g);
}

Test(resume, carry_into_a_parameter_is_misuse, .signal = SIGABRT)
{
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    cr_params *ps = cr_params_init();
    cr_tensor *p = cr_params_add(ps, NULL, "h0", CR_F32, CR_SHAPE(2, 3));
    cr_state_carry(p, cr_zeros(CR_F32, CR_SHAPE(2, 3)));
}

Test(resume, carry_into_a_step_tensor_is_misuse, .signal = SIGABRT)
{
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    cr_state_carry(cr_zeros(CR_F32, CR_SHAPE(2, 3)), cr_zeros(CR_F32, CR_SHAPE(2, 3)));
}
