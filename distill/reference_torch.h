// LibTorch-facing extension of the reference executor, for translation units that already include
// LibTorch (distillation). Not for the CLI or runtime code: it pulls in ATen.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <vector>
#include <string>

#include "distill/reference.h"

namespace kerf::distill {

/// A differentiable forward: the graph run on `tokens` (int64 [B, T], positions 0..T-1, fresh
/// KV caches; the executor's caches are left alone) with the initializers named in `params`
/// replaced by the given float32 tensors of the same shape (which may require grad, e.g.
/// fake-quantized weights with a straight-through estimator). Must be called outside
/// c10::InferenceMode. Returns the first graph output (logits [B, T, V]) with its autograd graph.
/// Errors: InvalidArgument for bad tokens, an unknown initializer or a shape mismatch; the node
/// errors of run().
Result<at::Tensor> forward_train(ReferenceExecutor& ex, const at::Tensor& tokens,
                                 const std::map<std::string, at::Tensor>& params);

/// forward_train that also returns the named graph values `taps` (e.g. "layers.2.out", the residual
/// stream after block 2): result[0] = logits [B, T, V], result[1 + i] = value taps[i] (float32, with
/// its autograd graph). Errors: forward_train's; InvalidArgument for an unknown value name.
Result<std::vector<at::Tensor>> forward_train_taps(ReferenceExecutor& ex, const at::Tensor& tokens,
                                                   const std::map<std::string, at::Tensor>& params,
                                                   const std::vector<std::string>& taps);

}  // namespace kerf::distill
