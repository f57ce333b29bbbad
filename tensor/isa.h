/* Internal to tensor/: the f32 kernels built from one _impl.h for the
 * baseline, AVX2 and AVX-512 (rnn_kernels.c, softmax_kernels.c), and the call
 * that runs the widest variant the CPU has. GCC's target attribute and
 * __builtin_cpu_supports are GCC/clang facilities on x86-64; elsewhere only
 * the baseline is built. The variants use exactly rounded operations only,
 * so they give the same bits (tests compare them, cr_gates_baseline). */
#ifndef CAROUSEL_ISA_H
#define CAROUSEL_ISA_H

#include "tensor.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define CR_ISA_VARIANTS 1
#endif

/* The widest variant this CPU runs (cr_gates_baseline forces the baseline):
 * 2 AVX-512, 1 AVX2, 0 baseline. */
static inline int cr_f32_isa(void)
{
#ifdef CR_ISA_VARIANTS
    if (cr_gates_baseline) return 0;
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

/* name_f32_avx512(...), name_f32_avx2(...) or name_f32(...) */
#ifdef CR_ISA_VARIANTS
#define CR_F32_CALL(name, ...)                                                                               \
    do {                                                                                                     \
        int isa_ = cr_f32_isa();                                                                             \
        if (isa_ == 2)                                                                                       \
            name##_f32_avx512(__VA_ARGS__);                                                                  \
        else if (isa_ == 1)                                                                                  \
            name##_f32_avx2(__VA_ARGS__);                                                                    \
        else                                                                                                 \
            name##_f32(__VA_ARGS__);                                                                         \
    } while (0)
#else
#define CR_F32_CALL(name, ...) name##_f32(__VA_ARGS__)
#endif

#endif
