// kerf quant/calib internals: calibration stages over the reference executor (see calibrate.h).
#pragma once

#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "compiler/pipeline/progress.h"
#include "distill/reference.h"
#include "quant/calib/calibrate.h"

namespace kerf::quant::calib_detail {

/// A set of weight matrices sharing one input, observed at one executor node.
struct Stage {
  size_t node = 0;                   ///< executor node index (observation point)
  std::string node_name;
  std::string what = "x";            ///< "x" or "ffn_hidden"
  std::string input_value;           ///< the value read ("x" stages); "" for ffn_hidden
  std::vector<std::string> tensors;  ///< weight initializers
  InputStats stats;
};

/// Sequences packed for batched forwards: sorted by length, right-padded with the sequence's last
/// token to the longest of the batch (causal attention: padding never affects real positions).
struct Batch {
  std::vector<int64_t> tokens;  ///< [B * T]
  int64_t B = 0, T = 0;
  std::vector<int64_t> lens;    ///< real length of each row
  std::vector<size_t> index;    ///< original sequence index of each row
};
/// At most `max_tokens` (B * T) per batch, at least one sequence.
std::vector<Batch> make_batches(const std::vector<std::vector<int64_t>>& seqs, int64_t max_tokens = 512);

/// Stages in executor order: Linear nodes grouped by input value, GatedFFN as (w1, w3) then (w2).
std::vector<Stage> build_stages(const distill::ReferenceExecutor& ex);

/// Runs every sequence of `calib` (fresh context each) through the nodes up to the last stage's
/// node and accumulates each stage's input statistics. With a reporter, the batches are a progress
/// task named `task` (unit "batches").
Status observe(distill::ReferenceExecutor& ex, std::vector<Stage*> stages, const std::vector<std::vector<int64_t>>& calib,
               progress::Reporter* reporter = nullptr, const std::string& task = "calibration");

/// Quantizes one matrix with its choice (GPTQ needs `stats`; importance search uses its imatrix).
/// Appends remarks (damping retries) to *note.
Result<QuantTensor> quantize_one(const std::vector<float>& w, int64_t rows, int64_t cols, const TensorChoice& c,
                                 const InputStats* stats, const GptqOptions& gopt, std::string* note);

}  // namespace kerf::quant::calib_detail
