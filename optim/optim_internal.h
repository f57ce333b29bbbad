/* Shared by the files of the optim module (not a public header): the
 * constructor behind every cr_<rule>_init, and the parallel-loop macro. */
#ifndef CAROUSEL_OPTIM_INTERNAL_H
#define CAROUSEL_OPTIM_INTERNAL_H

#include "optim.h"

/* cr_optim_init, with misuse reported under the name of the public function
 * the user called (op, e.g. "cr_adam_init"). */
cr_optim *cr_optim_make(const char *op, cr_params *ps, const cr_optim_rule *rule, const void *cfg);

/* Run a for statement with OpenMP when COND holds and as a plain loop
 * otherwise. An if() clause on the pragma is not the same: a false clause
 * still enters the OpenMP runtime on every call (libgomp builds a team of
 * one, ~0.3 us; ARCHITECTURE.md, Threads). The same macro as tensor's
 * internal one; when tensor.h exports it, this copy steps aside. */
#ifndef CR_PAR_FOR
#define CR_PAR_FOR(COND, PRAGMA, ...)                                                                        \
    do {                                                                                                     \
        if (COND) {                                                                                          \
            _Pragma(PRAGMA) __VA_ARGS__                                                                      \
        } else {                                                                                             \
            __VA_ARGS__                                                                                      \
        }                                                                                                    \
    } while (0)
#endif

#endif
