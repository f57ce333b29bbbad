/* bench/matmul: cr_matmul through the framework (a recorded graph node with its
 * arena output) against bli_sgemm on the same buffers, on LSTM-sized f32 products;
 * the recurrent products with a packed weight, and the char LM's products over
 * all time steps without one, on carousel's own micro-kernel against BLIS's
 * kernel on the same loops; then a small-size sweep of the C kernel against
 * BLIS to place cr_gemm_small_threshold.
 *
 *   ./build/bench/matmul [--threads N] [--rounds N] [--no-sweep]
 */
#include <blis.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_time.h"
#include "carousel.h"

/* ---- the LSTM-sized set --------------------------------------------------- */

typedef struct prod {
    const char *what;
    int64_t m, k, n;
    cr_tensor *a, *b, *c; /* persistent: a [m,k], b [k,n] (requires grad), c [m,n] for BLIS */
    cr_graph *g;
} prod;

static void run_framework(void *p_)
{
    prod *p = p_;
    (void)cr_matmul(p->a, p->b); /* node on the tape, arena output, BLIS call */
    cr_graph_clear(p->g);
}

static void run_blis(void *p_)
{
    prod *p = p_;
    float one = 1, zero = 0;
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, p->m, p->n, p->k, &one, p->a->data, p->k, 1, p->b->data,
              p->n, 1, &zero, p->c->data, p->n, 1);
}

/* ---- packed right operand: own micro-kernel against BLIS's ------------------ */

typedef struct packed {
    cr_tensor *a, *b, *c, *pack_own, *pack_blis;
    const cr_tensor *pack; /* the one run_packed uses */
} packed;

static void run_packed(void *p_)
{
    packed *p = p_;
    cr_k_gemm_packed(1.0, p->a, p->b, p->pack, 0.0, p->c);
}

/* A pack of b made with the own kernel's layout or BLIS's (cr_gemm_blis_only). */
static cr_tensor *pack_made(const cr_tensor *b, bool blis)
{
    bool saved = cr_gemm_blis_only;
    cr_gemm_blis_only = blis;
    cr_tensor *pk = cr_tensor_init(CR_F32, 1, (int64_t[]){cr_k_gemm_pack_numel(b)});
    cr_k_gemm_pack(pk, b);
    cr_gemm_blis_only = saved;
    return pk;
}

/* GFLOP/s of run(ctx) on carousel's own micro-kernel and on BLIS's, pick(ctx,
 * own) choosing the side: the sides alternate over the rounds, each round's
 * figure the best sample of that round; their min / median / max in *so and
 * *sb. Leaves the own side picked. */
static void own_vs_blis(int rounds, double flops, void (*run)(void *), void (*pick)(void *, bool), void *ctx,
                        bench_stats *so, bench_stats *sb)
{
    double *g[2] = {cr_xmalloc((size_t)rounds * sizeof(double)), cr_xmalloc((size_t)rounds * sizeof(double))};
    for (int r = 0; r < rounds; r++)
        for (int side = 0; side < 2; side++) {
            bool is_own = (side ^ (r & 1)) == 0;
            pick(ctx, is_own);
            g[!is_own][r] = flops / bench_best_ns(run, ctx, 1e6, 20e6);
        }
    pick(ctx, true);
    *so = bench_spread(g[0], rounds);
    *sb = bench_spread(g[1], rounds);
    free(g[0]);
    free(g[1]);
}

static void pick_pack(void *p_, bool own)
{
    packed *p = p_;
    p->pack = own ? p->pack_own : p->pack_blis;
}

/* [m,H]x[H,4H] with the weight packed, m = 32 (a batch) and 16 (a shard of two
 * replicas): GFLOP/s of each kernel, min / median / max over the rounds (each
 * round's figure the best sample of that round), the sides alternating. */
static void packed_products(int rounds, cr_rng *rng)
{
    static const int64_t hs[2] = {512, 1024}, ms[2] = {32, 16};
    printf("\npacked weight ([m,H]x[H,4H], cr_k_gemm_packed): own micro-kernel vs BLIS's, GFLOP/s "
           "min/median/max over %d rounds\n",
           rounds);
    for (int ih = 0; ih < 2; ih++)
        for (int im = 0; im < 2; im++) {
            int64_t m = ms[im], k = hs[ih], n = 4 * hs[ih];
            packed p = {cr_tensor_init(CR_F32, 2, (int64_t[]){m, k}),
                        cr_tensor_init(CR_F32, 2, (int64_t[]){k, n}),
                        cr_tensor_init(CR_F32, 2, (int64_t[]){m, n}),
                        NULL,
                        NULL,
                        NULL};
            cr_fill_uniform(p.a, rng, -1, 1);
            cr_fill_uniform(p.b, rng, -1, 1);
            p.pack_own = pack_made(p.b, false);
            p.pack_blis = pack_made(p.b, true);
            bench_stats so, sb;
            own_vs_blis(rounds, 2.0 * (double)(m * k * n), run_packed, pick_pack, &p, &so, &sb);
            int64_t before = cr_k_gemm_own_count();
            run_packed(&p);
            bool own_ran = cr_k_gemm_own_count() > before; /* false: no AVX-512 or not BLIS's skx kernels */
            printf("packed [%lld,%lld]x[%lld,%lld] own %.1f/%.1f/%.1f blis_kernel %.1f/%.1f/%.1f%s\n",
                   (long long)m, (long long)k, (long long)k, (long long)n, so.min, so.med, so.max, sb.min,
                   sb.med, sb.max, own_ran ? "" : " (own kernel not available here: both are BLIS's)");
            printf(
                "bench=matmul_packed m=%lld k=%lld n=%lld own_gflops=%.1f blis_kernel_gflops=%.1f ratio=%.2f\n",
                (long long)m, (long long)k, (long long)n, so.med, sb.med, so.med / sb.med);
            cr_tensor_free(p.a);
            cr_tensor_free(p.b);
            cr_tensor_free(p.c);
            cr_tensor_free(p.pack_own);
            cr_tensor_free(p.pack_blis);
        }
}

/* ---- the small sweep ------------------------------------------------------- */

typedef enum layout { NN, NT, TN } layout; /* forward, dA = dY B^T, dB = A^T dY */
static const char *const layout_name[] = {"NN", "NT", "TN"};

typedef struct small {
    cr_tensor *a, *b, *c; /* views as the product sees them */
} small;

static void run_small(void *s_)
{
    small *s = s_;
    cr_k_gemm(1.0, s->a, s->b, 0.0, s->c);
}

/* A [r,c] operand, either a contiguous tensor or the transposed view of a
 * contiguous [c,r] one (the header lives in *view, the storage in *store). */
static cr_tensor *operand(int64_t r, int64_t c, bool trans, cr_tensor **store, cr_tensor *view, cr_rng *rng)
{
    if (!trans) {
        *store = cr_tensor_init(CR_F32, 2, (int64_t[]){r, c});
        cr_fill_uniform(*store, rng, -1, 1);
        return *store;
    }
    *store = cr_tensor_init(CR_F32, 2, (int64_t[]){c, r});
    cr_fill_uniform(*store, rng, -1, 1);
    cr_view_transpose(view, *store, 0, 1);
    return view;
}

/* ---- products without a pack: own micro-kernel against BLIS's ----------------- */

/* cr_k_gemm's products on the own kernel or on BLIS's */
static void pick_kernel(void *ctx, bool own)
{
    (void)ctx;
    cr_gemm_blis_only = !own;
}

/* The char LM's products over all B*T = 2048 rows at hidden 512 (embedding
 * 64, 65 classes, 4H = 2048) in the layouts the step gives them, through
 * cr_k_gemm with carousel's kernel and with BLIS's (cr_gemm_blis_only) on
 * the same loops: GFLOP/s min/median/max over the rounds, sides alternating. */
static void plain_products(int rounds, cr_rng *rng)
{
    static const struct {
        const char *name;
        int64_t m, k, n;
        bool ta, tb;
    } cases[] = {
        {"input_proj", 2048, 64, 2048, false, true}, /* x W_ih^T */
        {"head", 2048, 512, 65, false, true},        /* h W_out^T */
        {"head_dh", 2048, 65, 512, false, false},    /* dy W_out */
        {"head_dw", 65, 2048, 512, true, false},     /* dy^T h */
        {"input_dx", 2048, 2048, 64, false, false},  /* dz W_ih */
        {"input_dw", 2048, 2048, 64, true, false},   /* dz^T x */
        {"stacked_dw", 2048, 512, 512, true, false}, /* dz^T h over 512 stacked rows */
    };
    printf("\nwithout a pack (cr_k_gemm, the char LM's products at hidden 512): own micro-kernel vs BLIS's, "
           "GFLOP/s min/median/max over %d rounds\n",
           rounds);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cr_tensor *store[2], views[2];
        small s = {operand(cases[i].m, cases[i].k, cases[i].ta, &store[0], &views[0], rng),
                   operand(cases[i].k, cases[i].n, cases[i].tb, &store[1], &views[1], rng),
                   cr_tensor_init(CR_F32, 2, (int64_t[]){cases[i].m, cases[i].n})};
        bench_stats so, sb;
        own_vs_blis(rounds, 2.0 * (double)(cases[i].m * cases[i].k * cases[i].n), run_small, pick_kernel, &s,
                    &so, &sb);
        int64_t before = cr_k_gemm_own_plain_count();
        run_small(&s);
        bool own_ran = cr_k_gemm_own_plain_count() > before;
        printf("%-10s [%lld,%lld]x[%lld,%lld] own %.1f/%.1f/%.1f blis_kernel %.1f/%.1f/%.1f%s\n",
               cases[i].name, (long long)cases[i].m, (long long)cases[i].k, (long long)cases[i].k,
               (long long)cases[i].n, so.min, so.med, so.max, sb.min, sb.med, sb.max,
               own_ran ? "" : " (own kernel not available here)");
        printf("bench=matmul_plain case=%s m=%lld k=%lld n=%lld own_gflops=%.1f blis_kernel_gflops=%.1f "
               "ratio=%.2f\n",
               cases[i].name, (long long)cases[i].m, (long long)cases[i].k, (long long)cases[i].n, so.med,
               sb.med, so.med / sb.med);
        cr_tensor_free(store[0]);
        cr_tensor_free(store[1]);
        cr_tensor_free(s.c);
    }
}

typedef struct point {
    layout lay;
    int64_t m, nk, mnk;
    double c_ns, blis_ns;
} point;

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows through pipes and run targets */
    int threads = 1, rounds = 5, sweep = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-sweep"))
            sweep = 0;
        else {
            fprintf(stderr, "usage: %s [--threads N] [--rounds N] [--no-sweep]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    if (rounds < 1) rounds = 1;
    cr_set_num_threads(threads); /* OpenMP and BLIS alike */
    cr_rng rng = cr_rng_seed(42);
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);

    /* [B=32,H]x[H,4H] recurrent product per step and the hoisted input
     * projection [B*T=2048,I]x[I,4H] with I = H. */
    enum { NP = 8 };
    static const int64_t hs[4] = {128, 256, 512, 1024};
    prod ps[NP];
    for (int i = 0; i < 4; i++) {
        ps[i] = (prod){"recurrent", 32, hs[i], 4 * hs[i], NULL, NULL, NULL, g};
        ps[4 + i] = (prod){"input-proj", 2048, hs[i], 4 * hs[i], NULL, NULL, NULL, g};
    }
    printf("matmul: f32, %d thread(s), best sample of %d rounds (framework and BLIS interleaved); "
           "BLIS %s, sub-configuration '%s'\n",
           threads, rounds, bli_info_get_version_str(), bli_arch_string(bli_arch_query_id()));
    double fw[NP], bl[NP], flops[NP];
    for (int i = 0; i < NP; i++) {
        prod *p = &ps[i];
        p->a = cr_tensor_init(CR_F32, 2, (int64_t[]){p->m, p->k});
        p->b = cr_tensor_init(CR_F32, 2, (int64_t[]){p->k, p->n});
        p->c = cr_tensor_init(CR_F32, 2, (int64_t[]){p->m, p->n});
        cr_fill_uniform(p->a, &rng, -1, 1);
        cr_fill_uniform(p->b, &rng, -1, 1);
        cr_requires_grad(p->b, true); /* a weight: the node is recorded on the tape */
        flops[i] = 2.0 * (double)p->m * (double)p->n * (double)p->k;
        fw[i] = bl[i] = INFINITY;
        run_framework(p); /* warm-up: arena chunk for the output, BLIS packing buffers */
        run_blis(p);
    }
    /* Rounds outermost, so every product is sampled across the whole run;
     * the two sides take turns going first (the second finds warmer caches). */
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < NP; i++)
            for (int side = 0; side < 2; side++) {
                if ((side ^ (r & 1)) == 0)
                    fw[i] = fmin(fw[i], bench_best_ns(run_framework, &ps[i], 1e6, 20e6));
                else
                    bl[i] = fmin(bl[i], bench_best_ns(run_blis, &ps[i], 1e6, 20e6));
            }
    printf("%-11s %22s %11s %11s %13s %7s\n", "product", "[M,K]x[K,N]", "fw_us", "fw_GFLOP/s", "blis_GFLOP/s",
           "pct");
    double fw_total = 0, blis_total = 0, flops_total = 0, min_pct = INFINITY;
    for (int i = 0; i < NP; i++) {
        prod *p = &ps[i];
        char shape[64];
        snprintf(shape, sizeof shape, "[%lld,%lld]x[%lld,%lld]", (long long)p->m, (long long)p->k,
                 (long long)p->k, (long long)p->n);
        double pct = 100.0 * bl[i] / fw[i];
        if (pct < min_pct) min_pct = pct;
        printf("%-11s %22s %11.1f %11.1f %13.1f %6.1f%%\n", p->what, shape, fw[i] / 1e3, flops[i] / fw[i],
               flops[i] / bl[i], pct);
        fw_total += fw[i];
        blis_total += bl[i];
        flops_total += flops[i];
    }
    double fw_gflops = flops_total / fw_total, blis_gflops = flops_total / blis_total;
    double pct = 100.0 * blis_total / fw_total;
    printf(
        "aggregate (total flops / total time): framework %.1f GFLOP/s, BLIS %.1f GFLOP/s, %.1f%% (worst single %.1f%%)\n",
        fw_gflops, blis_gflops, pct, min_pct);

    packed_products(rounds, &rng);
    plain_products(rounds, &rng);

    if (sweep) {
        /* C kernel (threshold huge) against BLIS (threshold 0) through cr_k_gemm,
         * for the three layouts a recurrent step uses. */
        static const int64_t ms[] = {1, 2, 4, 8, 16, 32, 64};
        static const int64_t nks[] = {32, 64, 128};
        enum { NM = sizeof ms / sizeof ms[0], NNK = sizeof nks / sizeof nks[0], NPT = 3 * NM * NNK };
        static point pts[NPT];
        static small sm[NPT];
        static cr_tensor views[NPT][2];
        cr_tensor *store[NPT][2];
        int npt = 0;
        for (int l = 0; l < 3; l++)
            for (int im = 0; im < NM; im++)
                for (int ik = 0; ik < NNK; ik++) {
                    int64_t m = ms[im], nk = nks[ik];
                    sm[npt].a = operand(m, nk, l == TN, &store[npt][0], &views[npt][0], &rng);
                    sm[npt].b = operand(nk, nk, l == NT, &store[npt][1], &views[npt][1], &rng);
                    sm[npt].c = cr_tensor_init(CR_F32, 2, (int64_t[]){m, nk});
                    pts[npt] = (point){(layout)l, m, nk, m * nk * nk, INFINITY, INFINITY};
                    npt++;
                }
        int64_t saved = cr_gemm_small_threshold;
        for (int r = 0; r < rounds; r++)
            for (int i = 0; i < npt; i++)
                for (int side = 0; side < 2; side++) {
                    bool c_kernel = (side ^ (r & 1)) == 0;
                    cr_gemm_small_threshold = c_kernel ? INT64_MAX : 0;
                    double t = bench_best_ns(run_small, &sm[i], 20e3, 1e6);
                    if (c_kernel)
                        pts[i].c_ns = fmin(pts[i].c_ns, t);
                    else
                        pts[i].blis_ns = fmin(pts[i].blis_ns, t);
                }
        cr_gemm_small_threshold = saved;
        printf("\nsmall products through cr_k_gemm: C kernel vs BLIS (us per call, %d thread(s); N = K;\n"
               "NN = forward, NT = A x B^T as in dA = dY W^T, TN = A^T x B as in dW = X^T dY)\n",
               threads);
        printf("%-6s %4s %5s %9s %10s %10s %8s\n", "layout", "M", "N=K", "M*N*K", "C_us", "BLIS_us",
               "C/BLIS");
        for (int i = 0; i < npt; i++) {
            printf("%-6s %4lld %5lld %9lld %10.3f %10.3f %8.2f\n", layout_name[pts[i].lay],
                   (long long)pts[i].m, (long long)pts[i].nk, (long long)pts[i].mnk, pts[i].c_ns / 1e3,
                   pts[i].blis_ns / 1e3, pts[i].c_ns / pts[i].blis_ns);
            cr_tensor_free(store[i][0]);
            cr_tensor_free(store[i][1]);
            cr_tensor_free(sm[i].c);
        }
        /* The threshold minimising the summed slowdown (time / faster path's
         * time) over every point; candidates are 0 and each point's M*N*K. */
        double best_cost = INFINITY, cur_cost = 0;
        int64_t best_t = 0;
        for (int c = -1; c < npt; c++) {
            int64_t t = c < 0 ? 0 : pts[c].mnk;
            double cost = 0;
            for (int i = 0; i < npt; i++) {
                double fast = fmin(pts[i].c_ns, pts[i].blis_ns);
                cost += (pts[i].mnk <= t ? pts[i].c_ns : pts[i].blis_ns) / fast;
            }
            if (cost < best_cost - 1e-9 || (fabs(cost - best_cost) <= 1e-9 && t < best_t)) {
                best_cost = cost;
                best_t = t;
            }
        }
        for (int i = 0; i < npt; i++) {
            double fast = fmin(pts[i].c_ns, pts[i].blis_ns);
            cur_cost += (pts[i].mnk <= saved ? pts[i].c_ns : pts[i].blis_ns) / fast;
        }
        int64_t next = INT64_MAX; /* the best range is [best_t, next) */
        for (int i = 0; i < npt; i++)
            if (pts[i].mnk > best_t && pts[i].mnk < next) next = pts[i].mnk;
        printf(
            "threshold (M*N*K): current %lld costs %.3f x the faster path on average; best %lld (any value in "
            "[%lld, %lld)) costs %.3f x\n",
            (long long)saved, cur_cost / npt, (long long)best_t, (long long)best_t, (long long)next,
            best_cost / npt);
        printf("sweep: current_threshold=%lld best_threshold=%lld\n", (long long)saved, (long long)best_t);
    }

    for (int i = 0; i < NP; i++) {
        cr_tensor_free(ps[i].a);
        cr_tensor_free(ps[i].b);
        cr_tensor_free(ps[i].c);
    }
    cr_graph_free(g);
    printf("bench=matmul framework_gflops=%.1f blis_gflops=%.1f pct_of_blis=%.1f\n", fw_gflops, blis_gflops,
           pct);
    return 0;
}
