// kerf prune: importance of heads, KV groups, FFN channels, embedding channels and blocks, measured on
// calibration text through the reference executor (distill/reference.h).
//
// Metrics (selectable by name):
//   activation  Minitron (Muralidharan et al. 2024, sec. 2.2): mean over calibration tokens of
//               ||attention output of head h||_2 (the wo input slice of the head); a KV group scores
//               the sum of its query heads; FFN channel c: mean |act(x w1_c) * (x w3_c)| (the w2
//               input); embedding channel d: sum over every RMSNorm output (attention, FFN, final) of
//               mean |x_d|.
//   taylor      first-order Taylor (LLM-Pruner, Ma et al. 2023, eq. 3-5, element-wise, summed per
//               structure): sum over the structure's weights of |w * dL/dw|, L = next-token cross
//               entropy averaged over all calibration tokens (one gradient over the whole set).
//   magnitude   sum of w^2 over the structure's weights (ranking = L2 norm of the weight group).
// A structure's weights: head h = rows of wq and columns of wo of that head; KV group = its query
// heads plus its rows of wk and wv; FFN channel = row of w1 and w3, column of w2; embedding channel =
// column of the table, of wq/wk/wv/w1/w3 (and an untied classifier), row of wo/w2, and the RMSNorm
// weights' entry.
// Depth (block) importance, when asked: the increase of the calibration cross entropy (nats/token)
// when the block alone is removed (Minitron's depth ranking by LM loss; Gromov et al. 2024).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"
#include "prune/prune.h"

namespace kerf::prune {

enum class Metric { kActivation, kTaylor, kMagnitude };
const char* metric_name(Metric m);             ///< "activation" | "taylor" | "magnitude"
Result<Metric> parse_metric(const std::string& s);

struct ImportanceOptions {
  Metric metric = Metric::kActivation;
  bool depth = false;            ///< also score whole blocks (one forward per block over the calibration set)
  int64_t max_tokens = 16384;    ///< calibration tokens used (0 = all)
  bool gram = true;              ///< also measure the second moments compensate() needs (one activation pass)
  int threads = 0;               ///< LibTorch threads (0 = all cores)
  std::function<void(const std::string&)> progress;
};

/// Scores every structure of `m` (analyze(lifted)) on `calib` (token sequences, BOS first).
/// Errors: kInvalidArgument for no calibration tokens; the reference executor's errors.
Result<Scores> compute_importance(const ir::Graph& lifted, const Model& m, const std::vector<std::vector<int64_t>>& calib,
                                  const ImportanceOptions& opt);

/// Measured non-uniform widths (`--prune-alloc measured`).
struct AllocationOptions {
  int64_t max_tokens = 4096;   ///< calibration tokens each candidate is measured on
  int max_moves = 8;           ///< accepted moves per kind and step size
  int threads = 0;             ///< LibTorch threads (0 = all cores)
  std::function<void(const std::string&)> progress;
};

/// Redistributes the widths of `uniform` (make_plan's uniform plan) over the blocks, keeping its
/// totals of head units (KV groups or query heads per group, per `mode`) and FFN channels: a local
/// search on the measured loss, as layer-wise allocations do (OWL, Yin et al. 2024, and BESA, Xu et
/// al. 2024, allocate per-layer sparsity; measured here instead of predicted, because removals do
/// not add). The loss is the mean KL divergence of the pruned and compensated (compensate()) model
/// to the unpruned one on the first `max_tokens` calibration tokens. Starting from the uniform
/// widths, each pass tries every move of one head unit (then of an FFN chunk of ceil(F/8), ceil(F/16),
/// ceil(F/32) channels) from block a to block b and applies the best one if it lowers the loss (at
/// most `max_moves` per kind and chunk), so the result never measures worse than uniform. Every
/// accepted move is a progress line. The kept structures inside a block are the highest-scored ones
/// of `s`; embedding channels and dropped blocks come from `uniform` (a dropped block keeps its
/// widths: it is never a source or target of a move). Without Gram matrices in `s`
/// the candidates are measured uncompensated. Cost: L (L - 1) forward passes per pass.
/// Errors: kInvalidArgument for no calibration tokens; the reference executor's and
/// plan_with_widths()'s errors.
Result<Plan> allocate_widths(const ir::Graph& lifted, const Model& m, const Scores& s, HeadMode mode, const Plan& uniform,
                             const std::vector<std::vector<int64_t>>& calib, const AllocationOptions& opt);

}  // namespace kerf::prune
