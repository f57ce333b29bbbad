/* carousel: automatic differentiation for recurrent neural networks in C.
 * One include for the four modules: optim -> nn -> autograd -> tensor. */
#ifndef CAROUSEL_H
#define CAROUSEL_H
#include "tensor.h"
#include "autograd.h"
#include "nn.h"
#include "optim.h"
#endif
