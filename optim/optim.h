/*
 * carousel optim module: optimizers, gradient clipping, learning-rate
 * schedules, checkpoints and data utilities.
 */
#ifndef CAROUSEL_OPTIM_H
#define CAROUSEL_OPTIM_H

#include "nn.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif
#endif
