/* Shared by the files of the optim module (not a public header): the
 * constructor behind every cr_<rule>_init, and the parallel-loop macro. */
#ifndef CAROUSEL_OPTIM_INTERNAL_H
#define CAROUSEL_OPTIM_INTERNAL_H

#include "optim.h"

/* Elements per block of a gradient's sum of squares (clip.c) and per chunk of
 * the trainer's in-region update (parallel.c): one constant, so the trainer's
 * norm is cr_clip_grad_norm's bit for bit. */
#define CR_SQ_BLOCK 8192

/* cr_optim_init, with misuse reported under the name of the public function
 * the user called (op, e.g. "cr_adam_init"). */
cr_optim *cr_optim_make(const char *op, cr_params *ps, const cr_optim_rule *rule, const void *cfg);

#endif
