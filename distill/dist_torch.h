// LibTorch-facing extension of distill/dist.h, for translation units that already include ATen
// (the distillation trainer): gradient summation over ATen tensors.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "distill/dist.h"

namespace kerf::distill {

/// Sums every tensor over the ranks, in place (e.g. the parameters' .grad() before an optimizer
/// step; divide by world_size() for a mean). Tensors: defined, CPU, float32 or float64, any shape
/// and strides. They are packed into one flat buffer per dtype, so the call costs at most two
/// collectives (float32 first, then float64) whatever the number of tensors. Every rank passes
/// tensors of the same shapes and dtypes in the same order. Runs under NoGradGuard.
/// Errors: InvalidArgument naming the tensor index (undefined, not CPU, other dtype); the errors of
/// DataParallel::allreduce_sum.
Status allreduce_sum(DataParallel& dp, const std::vector<at::Tensor>& tensors);

}  // namespace kerf::distill
