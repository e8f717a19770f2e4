// Target lowering: from a CPU artifact program (formats/artifact/writer.h ArtifactBuilder) to a
// device's artifact: the placement pass's input (program_of), the recorded placement (OpEntry
// backends, placement.prefill, placement.why, target.profile), and the integer-only NPU lowering
// (per-channel symmetric int8 / int4 weights for NPU ops, static activation scales calibrated on
// text through runtime-lite: npu.act_scales / npu.op_scales, docs/npu-arithmetic.md).
#pragma once

#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"
#include "compiler/targets/placement.h"
#include "compiler/targets/profile.h"
#include "formats/artifact/writer.h"

namespace kerf::targets {

/// The placement pass's view of the builder's program (ops in order, value widths, weight dtypes
/// and bytes as stored, MACs per token, attention shapes).
Program program_of(const artifact::ArtifactBuilder& b);

/// Names of the tensors that only ops running on the cpu in both phases read (these may take the
/// cpu's tiled layout).
std::vector<std::string> cpu_only_tensors(const artifact::ArtifactBuilder& b, const Placement& p);

/// Per-channel symmetric quantization of a float32 [rows, cols] matrix for the NPU: per row the scale
/// s = c * max|w| / (2^(b-1) - 1) with the clip ratio c in {1, 0.99, ..., 0.80} of least squared
/// error, codes q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1) (restricted range, positive
/// scales: what NPU toolchains take), stored as fmt::DType::kQSym with b bits, group = cols, f16
/// scales (the scale rounded to f16 before the codes are chosen). Errors: kBadInput for a non-finite
/// weight (row, col named); kInvalidArgument for bits not 4 or 8.
Result<artifact::TensorRecord> quantize_npu_weight(const std::string& name, const float* w, int64_t rows, int64_t cols,
                                                   int bits);

/// Records `p` in `b`: each op's OpEntry backend (decode unit), placement.prefill when a prefill unit
/// differs, placement.why (one line per op: "name: prefill UNIT, decode UNIT: why") and
/// target.profile; gives the NPU ops per-channel weights of profile.npu.weight_bits bits from the
/// float weights of `g` (a tensor also read by a non-NPU op keeps its stored form and the NPU ops
/// get a copy named NAME@npuB). Errors: a weight of an NPU op that `g` has no float constant for.
Status apply_placement(artifact::ArtifactBuilder& b, const Placement& p, const DeviceProfile& profile, const ir::Graph& g);

/// Calibrates the NPU's static activation scales on `seqs` (token ids, each starting with BOS) by
/// running the artifact bytes of `b` on the CPU (reference kernels) and stores npu.act_scales /
/// npu.op_scales in `b`. Errors: kInternal when runtime-lite rejects the artifact, kInvalidArgument
/// for no sequences.
Status calibrate_npu(artifact::ArtifactBuilder& b, const DeviceProfile& profile,
                     const std::vector<std::vector<int32_t>>& seqs);

/// Token ids of `texts` (each with BOS) with the tokenizer stored in `b`, each cut to `max_len`
/// tokens and the total capped at `max_tokens`.
Result<std::vector<std::vector<int32_t>>> tokenize_with_artifact(const artifact::ArtifactBuilder& b,
                                                                 const std::vector<std::string>& texts, int64_t max_len,
                                                                 int64_t max_tokens);

}  // namespace kerf::targets
