/* The thread count OpenMP loops and products may use, and when a kernel may
 * fork threads: not inside an OpenMP parallel region, not inside a
 * data-parallel replica (cr_serial_begin), and only when more than one thread
 * is allowed. A fork in any of those places would nest a team of one, which
 * libgomp allocates and frees on every call. Below tensor.c and gemm.c in the
 * file order (CR_PAR_FOR reads it); cr_set_num_threads, which also sets
 * BLIS's, is in kernels.c. */
#include "tensor.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int cr_get_num_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Depth of cr_serial_begin on this thread. */
static _Thread_local int serial_depth;

bool cr_parallel_ok(void)
{
#ifdef _OPENMP
    return serial_depth == 0 && !omp_in_parallel() && omp_get_max_threads() > 1;
#else
    return false;
#endif
}

void cr_serial_begin(void) { serial_depth++; }

void cr_serial_end(void)
{
    if (serial_depth == 0) cr_error("cr_serial_end: no cr_serial_begin to end");
    serial_depth--;
}

bool cr_serial(void) { return serial_depth > 0; }
