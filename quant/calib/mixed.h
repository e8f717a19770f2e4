// kerf quant/calib: mixed-precision allocation under an effective bits-per-weight budget.
//
// 1. Sensitivity: for every allocatable weight matrix t and candidate precision c, t alone is
//    quantized with c (with the candidate's method on FP calibration statistics: GPTQ with the FP
//    Hessian, or RTN / importance search; AWQ candidates are measured as their GPTQ / RTN part) and
//    the mean KL(p_FP || p_quantized) of the next-token distributions is measured on a held-aside
//    part of the calibration set ("sensitivity sequences").
// 2. Allocation: the multiple-choice knapsack  min sum_t cost[t][c_t]  s.t.
//    sum_t bits(t, c_t) <= budget  — solved exactly by dynamic programming over the bit budget in
//    units of ceil(budget / 20000) bits (each item's bits rounded UP to whole units, so the real
//    total never exceeds the budget). The budget is bpw x (all weights of all matrices, tied once)
//    minus the bits of the matrices fixed by the recipe; bpw is shared/EVAL.md's.
// 3. Re-measurement ("sensitivities do not add at low bits"): each round applies the current
//    allocation, measures the joint KL, then for every t and c measures the joint KL with only t
//    changed to c; cost[t][c] = that KL minus the current one, and the knapsack is solved again.
//    A round's allocation is kept only if its measured joint KL is lower. Rounds stop early when
//    nothing changes.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"
#include "quant/calib/calibrate.h"

namespace kerf::quant {

struct MixedOptions {
  double bpw = 0;                                   ///< budget (> 0), bits per weight over all matrices
  std::vector<TensorChoice> candidates;             ///< non-plain precisions the allocator may pick (>= 1)
  std::map<std::string, TensorChoice> fixed;        ///< recipe overrides: kept as given, bits counted
  int rounds = 1;                                   ///< re-measurement rounds after the additive solution
  int threads = 0;
  GptqOptions gptq;
  std::function<void(const std::string&)> progress;
};

struct MixedResult {
  std::map<std::string, TensorChoice> choices;       ///< every weight matrix (fixed ones included)
  std::map<std::string, std::vector<double>> sensitivity;  ///< allocatable tensor -> KL per candidate (round 0)
  int64_t budget_bits = 0, total_bits = 0, weights = 0;    ///< budget, allocated bits (all matrices), weights
  double bpw = 0;                                    ///< total_bits / weights
  double predicted_kl = 0;                           ///< sum of round-0 sensitivities of the chosen candidates
  std::vector<double> measured_kl;                   ///< joint KL of the allocation after each round (0 = additive)
  std::vector<std::string> log;                      ///< one line per round
};

/// Allocates precisions for every weight matrix of `lifted` (not modified).
/// `calib`: sequences for the statistics (GPTQ Hessians, imatrix); `sens`: sequences on which KL is
/// measured (should be disjoint from the evaluation text; may overlap `calib`).
/// Errors: kInvalidArgument for an empty candidate list, a budget below the cheapest allocation
/// (the message gives the minimum achievable bpw) or above nothing, empty `sens`; plus the
/// quantizers' and executor's errors.
Result<MixedResult> allocate_mixed(const ir::Graph& lifted, const std::vector<std::vector<int64_t>>& calib,
                                   const std::vector<std::vector<int64_t>>& sens, const MixedOptions& opt);

/// The knapsack of step 2 on its own (exposed for tests): items[t][c] = {bits, cost}; returns the
/// chosen candidate index per item minimising the summed cost with summed bits <= budget_bits.
/// kInvalidArgument when even the cheapest choice per item exceeds the budget.
struct KnapsackItem {
  int64_t bits = 0;
  double cost = 0;
};
Result<std::vector<int>> solve_mckp(const std::vector<std::vector<KnapsackItem>>& items, int64_t budget_bits);

}  // namespace kerf::quant
