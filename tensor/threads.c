/* The thread count OpenMP loops may use: read by every CR_PAR_FOR (so a
 * loop on one thread never enters the OpenMP runtime), hence below tensor.c
 * in the file order; cr_set_num_threads, which also sets BLIS's, is in
 * kernels.c. */
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
