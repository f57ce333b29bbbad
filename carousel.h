/* carousel: automatic differentiation for recurrent neural networks in C.
 * One include for every module: optim -> nn -> autograd -> tensor; data ->
 * tensor; checkpoint -> optim, data (and what they use). Each module's header
 * can also be included alone: <carousel/nn.h>. */
#ifndef CAROUSEL_H
#define CAROUSEL_H
#include "carousel/tensor.h"
#include "carousel/autograd.h"
#include "carousel/nn.h"
#include "carousel/optim.h"
#include "carousel/data.h"
#include "carousel/checkpoint.h"
#endif
