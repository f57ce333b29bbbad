/* Shared by the files of the optim module (not a public header): the
 * constructor behind every cr_<rule>_init, and the parallel-loop macro. */
#ifndef CAROUSEL_OPTIM_INTERNAL_H
#define CAROUSEL_OPTIM_INTERNAL_H

#include "optim.h"

/* cr_optim_init, with misuse reported under the name of the public function
 * the user called (op, e.g. "cr_adam_init"). */
cr_optim *cr_optim_make(const char *op, cr_params *ps, const cr_optim_rule *rule, const void *cfg);

#endif
