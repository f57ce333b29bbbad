/* carousel: automatic differentiation for recurrent neural networks in C.
 * One include for every module: optim -> nn -> autograd -> tensor; data ->
 * tensor; checkpoint -> optim, data (and what they use). */
#ifndef CAROUSEL_H
#define CAROUSEL_H
#include "tensor.h"
#include "autograd.h"
#include "nn.h"
#include "optim.h"
#include "data.h"
#include "checkpoint.h"
#endif
