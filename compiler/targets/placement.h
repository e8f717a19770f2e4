// Placement: which compute unit of a device profile runs each op of the program, for prefill and
// for decode, from what each unit supports and a roofline cost model; the transfers between units
// that follow from it; and why each op went where it did (listed in the report).
//
// Cost model (per op and phase, T tokens, context C; figures from the profile):
//   time = launch_us + max(flops / gops, bytes / bandwidth_gbs)
//   flops = T x 2 x (weight MACs per token) + Attention 4 x n_heads x head_dim x (keys read)
//   bytes = weight bytes as stored for that unit (the NPU's per-channel copy for the npu) +
//           activations read and written + Attention's KV cache reads
//   a value consumed on another unit than the one that produced it costs a transfer:
//   transfer_us of the non-CPU side(s) + bytes / min(bandwidths) (runtime-lite moves device-to-
//   device values through the CPU, so such a move costs both).
//   an Attention op on different units in the two phases hands KV-cache rows over before it runs on
//   the unit that lacks them: per prefill + decode_tokens cycle, one copy of the prefill's rows and
//   one of the decode steps' rows (the same transfer cost).
// Search: the objective is one prefill + decode_tokens decode steps. Each phase starts from the
// per-op cheapest supported unit; coordinate descent then improves one phase with the other fixed
// (the exact total, simulated with runtime-lite's residency rule, runtime-lite/src/backend.h, plus
// the KV handoffs), by single-op and contiguous-range moves, alternating until neither improves.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "compiler/targets/profile.h"

namespace kerf::targets {

/// One op of the program, in program order (1:1 with the artifact's ops).
struct ProgramOp {
  std::string name;                      ///< node name (placement patterns match it)
  std::string op;                        ///< "Embedding", "RMSNorm", "Linear", "Rotary", "Attention", "GatedFFN", "Add"
  std::vector<int> inputs;               ///< value ids read (the token-id input excluded)
  int output = 0;                        ///< value id written
  std::vector<std::string> weight_dtypes;  ///< dtype names of its weights as compiled for the cpu/gpu (fmt::dtype_name)
  double weight_bytes = 0;               ///< bytes of its weights as compiled for the cpu / gpu
  int64_t weight_params = 0;             ///< elements of its weight matrices (the npu stores them per channel)
  int64_t weight_rows = 0;               ///< output channels over its matrices (the npu's per-channel scales)
  double macs_per_token = 0;             ///< weight multiply-adds per token (Linear: N x K; GatedFFN: 3 F D)
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;  ///< Attention
};

struct Program {
  std::vector<ProgramOp> ops;
  std::vector<int64_t> widths;  ///< per value: elements per token
  int output = 0;               ///< the logits value (ends on the cpu)
  int64_t max_seq_len = 0;      ///< the model's context (model.max_seq_len; 0 unknown)
};

struct PlaceOptions {
  int64_t prefill_tokens = 128;  ///< T of the prefill phase the cost model prices
  int64_t context = 256;         ///< KV positions a decode step reads
  int64_t decode_tokens = 128;   ///< decode steps weighed against one prefill when choosing the attention unit
  /// Pinned ops: fnmatch pattern on the op name -> unit ("cpu", "gpu", "npu"), from the recipe's
  /// placement: section or --place; the first matching pattern wins.
  std::vector<std::pair<std::string, std::string>> pins;
  bool strict = false;  ///< a pin the unit cannot honour is an error (else a note, and the op is placed by cost)
};

/// Where one op runs.
struct OpPlacement {
  std::string unit[2];  ///< [0] decode, [1] prefill: "cpu" | "gpu" | "npu"
  std::string why[2];   ///< one line each, e.g. "cost: npu 3.1 us < cpu 9.8 us" or "only the cpu runs Embedding"
  double cost_us[2] = {0, 0};  ///< modelled time of the op on its unit (transfers not included)
};

struct Transfer {
  int value = 0;
  std::string from, to;  ///< units
  int consumer = 0;      ///< op index that needs it
  double cost_us = 0;
};

struct Placement {
  std::vector<OpPlacement> ops;
  double total_us[2] = {0, 0};             ///< modelled time per phase, transfers and KV handoffs included
  std::vector<Transfer> transfers[2];      ///< per phase, in execution order
  std::vector<std::string> notes;          ///< pins that could not be honoured (non-strict), policy notes
  double kv_handoff_us[2] = {0, 0};        ///< modelled KV-cache handoffs (Attention on two units): [1] the
                                           ///< prefill's rows to the decode unit, [0] decode_tokens rows back
  bool uses(const std::string& unit) const;
};

/// Places `prog` on `profile`. Errors: kInvalidArgument for a pin naming an unknown unit or one the
/// profile lacks, or (strict) a pin the unit cannot run ("op 'tok_embeddings' (Embedding) is pinned
/// to the npu by 'tok_*=npu', but the npu of profile snapdragon-8-gen3 does not run Embedding").
Result<Placement> place(const Program& prog, const DeviceProfile& profile, const PlaceOptions& opt);

/// Modelled cost of op `i` on `unit` in a phase of T tokens at context C (no transfers); +inf when
/// the unit cannot run it. Exposed for tests and the report.
double op_cost_us(const Program& prog, size_t i, const UnitProfile& unit, bool npu, int64_t T, int64_t C);

/// Why `unit` cannot run op `i` ("" when it can): the op is not in its ops, a weight dtype is not
/// in its weights, or (npu) an Attention whose context exceeds the NPU arithmetic's fmt::kNpuMaxKeys.
std::string unsupported_reason(const Program& prog, size_t i, const UnitProfile& unit, const std::string& unit_name);

}  // namespace kerf::targets
