/* examples/lenet: LeNet-5 trained on Fashion-MNIST (Debian's dataset-fashion-mnist,
 * gzipped IDX files read by cr_idx_read), Adam with a cosine schedule, the test
 * accuracy after every epoch. `--quick` trains on a subset and fails unless
 * held-out accuracy clears a threshold (the meson test). --help lists the flags.
 *
 *   conv 6@5x5 pad 2 -> relu -> max pool 2 -> conv 16@5x5 -> relu -> max pool 2
 *   -> flatten 400 -> fc 120 -> relu -> fc 84 -> relu -> fc 10 -> cross-entropy
 *
 * ReLU and max pooling rather than the 1998 paper's scaled tanh and
 * subsampling: in the few epochs of a five-minute run they train faster and
 * reach a higher accuracy (`--tanh` runs tanh with average pooling, for
 * comparison).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carousel.h"
#include "cli.h"

#define SKIP_EXIT 77 /* meson's "skipped" */

typedef struct opts {
    const char *data;
    int64_t epochs, batch, train_limit, test_limit, seed, threads;
    double lr, min_accuracy;
    bool tanh_avg, quick;
} opts;

static opts parse(int argc, char **argv)
{
    bool quick = cli_has(argc, argv, "--quick");
    opts o = {.data = "/usr/share/datasets/fashion-mnist",
              .epochs = quick ? 1 : 8,
              .batch = 64,
              .train_limit = quick ? 12000 : 0,
              .test_limit = quick ? 2000 : 0,
              .seed = 1,
              .threads = 1,
              .lr = 0.002,
              .min_accuracy = 0.7,
              .quick = quick};
    cli_flag flags[] = {
        {"--data", CLI_STR, &o.data, "the directory of Fashion-MNIST's four .gz files"},
        {"--epochs", CLI_INT, &o.epochs, "passes over the training images"},
        {"--batch", CLI_INT, &o.batch, "images per step"},
        {"--lr", CLI_REAL, &o.lr, "Adam's learning rate, cosine-annealed to lr/20"},
        {"--seed", CLI_INT, &o.seed, "initial weights and shuffling"},
        {"--threads", CLI_INT, &o.threads, "OpenMP and BLIS threads (why 1: below)"},
        {"--train-limit", CLI_INT, &o.train_limit, "train on the first N images only (0: all 60000)"},
        {"--test-limit", CLI_INT, &o.test_limit, "evaluate on the first N test images only (0: all 10000)"},
        {"--tanh", CLI_BOOL, &o.tanh_avg, "tanh and average pooling instead of relu and max pooling"},
        {"--quick", CLI_BOOL, &o.quick,
         "the test mode: --epochs 1 --train-limit 12000 --test-limit 2000, and exit 1 below --min-accuracy"},
        {"--min-accuracy", CLI_REAL, &o.min_accuracy, "the threshold of --quick (chance is 0.1)"},
    };
    cli_parse(
        argc, argv, "LeNet-5 trained on Fashion-MNIST, with the test accuracy after every epoch.",
        "--threads is 1 by default: LeNet's products are small, and on the shared 2-core machine it was\n"
        "measured on a second thread made a step slower (bench/README.md). Without the data it exits 1\n"
        "(77 under --quick: meson's \"skipped\").\n"
        "Output: progress (a bar on a terminal, lines otherwise), a line per epoch, and last:\n"
        "  example=lenet epochs=... test_accuracy=... train_images=... seconds=...",
        flags, CLI_COUNT(flags));
    if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0) || o.train_limit < 0 || o.test_limit < 0 || o.threads < 1)
        cli_fail(argv[0], "a size or rate out of range");
    return o;
}

/* ---- data ------------------------------------------------------------------------------ */

typedef struct dataset {
    cr_tensor *images; /* f32 [N, 1, 28, 28], normalised */
    int32_t *labels;   /* [N], 0..9 */
    int64_t n;
} dataset;

/* One IDX file into *out, with its shape checked: images u8 [N, 28, 28] or labels u8 [N]. */
static cr_status load_idx(const char *dir, const char *name, int ndim, cr_idx **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cr_status st = cr_idx_read(path, out);
    if (st != CR_OK) return st;
    const cr_idx *x = *out;
    bool ok =
        x->type == CR_IDX_U8 && x->ndim == ndim && (ndim == 1 || (x->shape[1] == 28 && x->shape[2] == 28));
    if (!ok) {
        char s[128];
        cr_shape_str(s, sizeof s, x->ndim, x->shape);
        cr_idx_free(*out);
        *out = NULL;
        return cr_failure(CR_EFORMAT, "%s: %s %s, expected u8 %s", path, cr_idx_type_name(x->type), s,
                          ndim == 1 ? "[N] labels" : "[N,28,28] images");
    }
    return CR_OK;
}

/* images and labels of one split, the first `limit` of them (0: all), pixels
 * scaled to [0, 1] and then (v - mean) / std with the training set's mean and std */
static cr_status load_split(const char *dir, const char *images, const char *labels, int64_t limit,
                            dataset *d)
{
    cr_idx *xi = NULL, *yi = NULL;
    cr_status st = load_idx(dir, images, 3, &xi);
    if (st == CR_OK) st = load_idx(dir, labels, 1, &yi);
    if (st == CR_OK && xi->shape[0] != yi->shape[0])
        st = cr_failure(CR_EFORMAT, "%s/%s: %lld images but %lld labels in %s", dir, images,
                        (long long)xi->shape[0], (long long)yi->shape[0], labels);
    for (int64_t i = 0; st == CR_OK && i < yi->numel; i++)
        if (((const uint8_t *)yi->data)[i] > 9)
            st = cr_failure(CR_EFORMAT, "%s/%s: label %d at %lld is not a class 0..9", dir, labels,
                            ((const uint8_t *)yi->data)[i], (long long)i);
    if (st != CR_OK) {
        cr_idx_free(xi);
        cr_idx_free(yi);
        return st;
    }
    d->n = limit > 0 && limit < xi->shape[0] ? limit : xi->shape[0];
    d->images = cr_tensor_init(CR_F32, CR_SHAPE(d->n, 1, 28, 28));
    d->labels = cr_xmalloc((size_t)d->n * sizeof *d->labels);
    float *px = d->images->data;
    for (int64_t i = 0; i < d->n * 784; i++) px[i] = (float)((const uint8_t *)xi->data)[i] / 255.0f;
    for (int64_t i = 0; i < d->n; i++) d->labels[i] = ((const uint8_t *)yi->data)[i];
    cr_idx_free(xi);
    cr_idx_free(yi);
    return CR_OK;
}

static void normalise(dataset *d, double mean, double std)
{
    float *px = d->images->data;
    for (int64_t i = 0; i < d->n * 784; i++) px[i] = (float)((px[i] - mean) / std);
}

static void dataset_free(dataset *d)
{
    cr_tensor_free(d->images);
    free(d->labels);
}

/* ---- the model ------------------------------------------------------------------------- */

typedef struct lenet {
    cr_params *ps;
    cr_conv2d_layer conv1, conv2;
    cr_linear fc1, fc2, fc3;
    bool tanh_avg;
} lenet;

static lenet lenet_init(bool tanh_avg, cr_rng *rng)
{
    lenet m = {.ps = cr_params_init(), .tanh_avg = tanh_avg};
    m.conv1 = cr_conv2d_layer_init(
        m.ps, "conv1",
        (cr_conv2d_config){
            .in_channels = 1, .out_channels = 6, .kernel = {5, 5}, .padding = {2, 2}, .dtype = CR_F32},
        rng);
    m.conv2 = cr_conv2d_layer_init(
        m.ps, "conv2",
        (cr_conv2d_config){.in_channels = 6, .out_channels = 16, .kernel = {5, 5}, .dtype = CR_F32}, rng);
    m.fc1 = cr_linear_init(m.ps, "fc1", 400, 120, true, CR_F32, rng);
    m.fc2 = cr_linear_init(m.ps, "fc2", 120, 84, true, CR_F32, rng);
    m.fc3 = cr_linear_init(m.ps, "fc3", 84, 10, true, CR_F32, rng);
    return m;
}

/* x [B, 1, 28, 28] -> logits [B, 10] */
static cr_tensor *lenet_forward(const lenet *m, cr_tensor *x)
{
    cr_pool2d_opts pool = {.kernel = {2, 2}};
    cr_tensor *(*act)(cr_tensor *) = m->tanh_avg ? cr_tanh : cr_relu;
    cr_tensor *(*down)(cr_tensor *, cr_pool2d_opts) = m->tanh_avg ? cr_avg_pool2d : cr_max_pool2d;
    cr_tensor *h = down(act(cr_conv2d_layer_forward(&m->conv1, x)), pool); /* [B, 6, 14, 14] */
    h = down(act(cr_conv2d_layer_forward(&m->conv2, h)), pool);            /* [B, 16, 5, 5] */
    h = cr_reshape(h, CR_SHAPE(h->shape[0], 400));                         /* flatten */
    h = act(cr_linear_forward(&m->fc1, h));
    h = act(cr_linear_forward(&m->fc2, h));
    return cr_linear_forward(&m->fc3, h);
}

/* Images order[k0 .. k0+b) of d into a step tensor [b, 1, 28, 28] and their labels into t (i32 [b]). */
static cr_tensor *batch_of(const dataset *d, const int64_t *order, int64_t k0, int64_t b, cr_tensor **t)
{
    cr_tensor *x = cr_tensor_new(CR_F32, CR_SHAPE(b, 1, 28, 28));
    *t = cr_tensor_new(CR_I32, CR_SHAPE(b));
    for (int64_t i = 0; i < b; i++) {
        int64_t k = order ? order[k0 + i] : k0 + i;
        memcpy((float *)x->data + i * 784, (const float *)d->images->data + k * 784, 784 * sizeof(float));
        ((int32_t *)(*t)->data)[i] = d->labels[k];
    }
    return x;
}

/* Fraction of d classified right, in batches of 500 without recording a graph. */
static double accuracy(const lenet *m, const dataset *d, cr_graph *g)
{
    bool old = cr_set_grad_enabled(false);
    int64_t right = 0;
    for (int64_t k = 0; k < d->n; k += 500) {
        int64_t b = d->n - k < 500 ? d->n - k : 500;
        cr_tensor *t, *x = batch_of(d, NULL, k, b, &t);
        cr_tensor *pred = cr_argmax(lenet_forward(m, x), 1, false);
        for (int64_t i = 0; i < b; i++) right += ((int32_t *)pred->data)[i] == ((int32_t *)t->data)[i];
        cr_graph_clear(g);
    }
    cr_set_grad_enabled(old);
    return d->n ? (double)right / (double)d->n : 0;
}

int main(int argc, char **argv)
{
    opts o = parse(argc, argv);
    cr_set_num_threads((int)o.threads);
    setvbuf(stdout, NULL, _IOLBF, 0);
    double t_start = now_s();

    dataset train = {0}, test = {0};
    cr_status st =
        load_split(o.data, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", o.train_limit, &train);
    if (st == CR_OK)
        st =
            load_split(o.data, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", o.test_limit, &test);
    if (st != CR_OK) {
        fprintf(stderr, "lenet: %s\n", cr_last_error());
        if (st == CR_EIO)
            fprintf(stderr,
                    "lenet: Fashion-MNIST is read from %s (Debian: apt-get install dataset-fashion-mnist; "
                    "elsewhere: --data DIR with its four .gz files)\n",
                    o.data);
        dataset_free(&train);
        return st == CR_EIO && o.quick ? SKIP_EXIT : 1;
    }
    /* normalise both splits with the training images' statistics */
    double sum = 0, sq = 0;
    const float *px = train.images->data;
    for (int64_t i = 0; i < train.n * 784; i++) sum += px[i], sq += (double)px[i] * px[i];
    double mean = sum / (double)(train.n * 784), std = sqrt(sq / (double)(train.n * 784) - mean * mean);
    normalise(&train, mean, std);
    normalise(&test, mean, std);

    cr_rng rng = cr_rng_seed((uint64_t)o.seed);
    lenet m = lenet_init(o.tanh_avg, &rng);
    int64_t B = o.batch, steps = train.n / B; /* the last partial batch of an epoch is dropped */
    if (steps < 1) {
        fprintf(stderr, "lenet: %lld training images do not make a batch of %lld\n", (long long)train.n,
                (long long)B);
        return 1;
    }
    printf("data=%s train=%lld test=%lld params=%zu batch=%lld epochs=%lld threads=%d model=%s\n", o.data,
           (long long)train.n, (long long)test.n, cr_params_numel(m.ps), (long long)B, (long long)o.epochs,
           cr_get_num_threads(), o.tanh_avg ? "tanh+avgpool" : "relu+maxpool");
    cr_optim *opt = cr_adam_init(m.ps, cr_adam_defaults(o.lr));
    cr_schedule sched = cr_schedule_cosine(o.lr, o.epochs * steps, o.lr / 20);
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    int64_t *order = cr_xmalloc((size_t)train.n * sizeof *order);
    double acc = 0;
    for (int64_t epoch = 1; epoch <= o.epochs; epoch++) {
        cr_permutation(order, train.n, &rng);
        double loss_sum = 0, loss_avg = NAN, t_epoch = now_s();
        progress bar = progress_start(steps, "img");
        for (int64_t s = 0; s < steps; s++) {
            int64_t k = (epoch - 1) * steps + s;
            cr_schedule_apply(&sched, opt, k);
            cr_tensor *t, *x = batch_of(&train, order, s * B, B, &t);
            cr_tensor *loss = cr_cross_entropy(lenet_forward(&m, x), t, -1, CR_MEAN);
            cr_optim_zero_grad(opt);
            cr_backward(loss);
            cr_optim_step(opt);
            double l = cr_item(loss);
            loss_sum += l;
            loss_avg = isnan(loss_avg) ? l : 0.98 * loss_avg + 0.02 * l;
            cr_graph_clear(g);
            progress_update(&bar, s + 1, (s + 1) * B, "epoch=%lld/%lld loss=%.4f", (long long)epoch,
                            (long long)o.epochs, loss_avg);
        }
        acc = accuracy(&m, &test, g);
        printf("epoch %lld/%lld train_loss=%.4f test_accuracy=%.4f seconds=%.1f\n", (long long)epoch,
               (long long)o.epochs, loss_sum / (double)steps, acc, now_s() - t_epoch);
    }
    printf("example=lenet epochs=%lld test_accuracy=%.4f train_images=%lld seconds=%.1f\n",
           (long long)o.epochs, acc, (long long)train.n, now_s() - t_start);
    int status = 0;
    if (o.quick && !(acc >= o.min_accuracy)) {
        fprintf(stderr, "lenet: test accuracy %.4f is below %.2f: it did not learn\n", acc, o.min_accuracy);
        status = 1;
    }
    free(order);
    cr_optim_free(opt);
    cr_graph_free(g);
    cr_params_free(m.ps);
    dataset_free(&train);
    dataset_free(&test);
    return status;
}
