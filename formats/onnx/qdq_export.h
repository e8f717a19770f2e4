// QDQ ONNX export of a target's NPU partition: the ops of a lowered artifact whose PREFILL unit is
// the npu, written as a float ONNX model in which every tensor that kerf's integer-only NPU path
// quantizes carries a QuantizeLinear -> DequantizeLinear pair with its static scale (the format
// vendor NPU toolchains take: QNN / ONNX Runtime QNN EP, NeuroPilot, OpenVINO NPU). docs/qdq-export.md
// describes the graph; docs/npu-arithmetic.md (runtime-lite/src/npu.h) the arithmetic it stands for.
//
// The exported graph (ONNX opset 21, IR version 10; T = QdqExportOptions::tokens, static):
//   inputs   every value an npu op reads that no npu op writes: float32 [T, width]
//   outputs  every value an npu op writes that a non-npu op (or the program output) reads, then for
//            each npu Attention op its rotated K and its V: float32 [T, G*Dh] (what a runtime appends
//            to the KV cache), all dequantized (code x scale, as the NPU hands them back)
//   weights  Linear / GatedFFN matrices W [N, K] (qsym8 / qsym4, one f16 scale per output channel):
//            an INT8 initializer holding W^T [K, N] (4-bit codes as int8 values in [-7, 7]) and a
//            float32 [N] scale, DequantizeLinear(axis = 1: the output channel) -> MatMul(x, W^T)
//   QDQ      QuantizeLinear(x, scale, output_dtype = INT8 | INT16, zero point 0 (omitted)) ->
//            DequantizeLinear: on each partition input (the NPU's upload), each op output
//            ("npu.act_scales"), the GatedFFN internals h1 = x W1^T, h3 = x W3^T, silu(h1) * h3
//            ("npu.op_scales") and each Attention's softmax probabilities (Q15: INT16, scale 2^-15)
//   ops      RMSNorm: Mul(x, x), ReduceMean(axes [-1]), Add(eps), Sqrt, Div, Mul(gamma);
//            Rotary: Reshape [T, H, 2, Dh/2] (halves) or [T, H, Dh/2, 2] (interleaved), Slice, cos /
//            sin tables of positions 0..T-1 (float32 initializers, computed in double), Mul / Sub /
//            Add, Concat, Reshape; Attention: Reshape / Transpose, KV heads repeated by Reshape +
//            Expand (query head h reads KV head h / (H / G)), MatMul, Mul(scale), Add(causal mask
//            initializer [T, T]: 0 / -1e9), Softmax, QDQ, MatMul, Transpose, Reshape;
//            GatedFFN: MatMul, Sigmoid, Mul (silu), Mul, MatMul; Add.
// It is a prefill of exactly T tokens at positions 0..T-1 from an empty KV cache (pad a shorter
// prompt on the right: with the causal mask the padding does not change the earlier rows).
//
// Differences from the NPU reference (both sides round, at different places; docs/qdq-export.md has
// the measured agreement): the NPU requantizes integer accumulators with fixed-point multipliers,
// computes RoPE by CORDIC, SiLU by a table and softmax by base-2 integer exponentials, and clamps
// codes to the symmetric range [-(2^(b-1) - 1), 2^(b-1) - 1]; QuantizeLinear saturates to
// [-2^(b-1), 2^(b-1) - 1] (one more code on the negative side, reached only beyond the calibrated range).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "compiler/targets/placement.h"
#include "formats/artifact/writer.h"

namespace kerf {

struct QdqExportOptions {
  /// Static sequence length T of the graph (the profile's npu max_tokens); >= 1.
  int64_t tokens = 128;
  /// ModelProto producer_name / producer_version.
  std::string producer = "kerf";
  std::string producer_version;
  /// GraphProto name; "" = "<compile.target> npu partition".
  std::string graph_name;
};

/// What was exported (for the CLI's summary line and the tests).
struct QdqExportSummary {
  int64_t opset = 21;
  int64_t tokens = 0;
  size_t npu_ops = 0;           ///< artifact ops exported (prefill unit "npu")
  size_t nodes = 0;             ///< ONNX nodes in the graph
  size_t qdq_pairs = 0;         ///< activation QuantizeLinear -> DequantizeLinear pairs
  size_t act_values = 0;        ///< of which artifact values (partition inputs + op outputs)
  size_t internal_pairs = 0;    ///< of which GatedFFN internals (3 per op) and softmax probabilities (1 per Attention)
  size_t weight_matrices = 0;   ///< INT8 initializers with a per-channel DequantizeLinear
  int activation_bits = 0;      ///< 8, 16, or 0 when the values differ
  std::vector<std::string> inputs, outputs;  ///< graph input / output names, in graph order
  std::vector<int64_t> input_widths, output_widths;
  uint64_t bytes = 0;           ///< serialized size
};

/// The QDQ ONNX model of `b`'s npu partition as serialized ModelProto bytes. `b` is the final builder
/// of one target (after targets::apply_placement and targets::calibrate_npu: it must hold
/// "npu.act_scales" and, with an npu GatedFFN, "npu.op_scales"); `p` its placement (p.ops[i].unit[1]
/// is op i's prefill unit). Errors: kInvalidArgument when no op is on the npu for prefill, tokens < 1
/// or p does not match b; kBadInput for missing / malformed npu.* metadata (value or op named), a
/// weight of an npu op that is not per-channel qsym4 / qsym8 with f16 scales (tensor and op named),
/// inconsistent attention shapes; kUnsupported for an op the export has no decomposition for
/// (an npu Embedding, a GatedFFN activation other than silu, a quantized RMSNorm weight);
/// kResourceLimit when the model would exceed protobuf's 2 GiB (external data is not written).
Result<std::string> qdq_onnx_bytes(const artifact::ArtifactBuilder& b, const targets::Placement& p,
                                   const QdqExportOptions& opt, QdqExportSummary* summary = nullptr);

/// qdq_onnx_bytes() written atomically to `path` (artifact::write_file_atomic: nothing is left at
/// `path` on error). Errors: those of qdq_onnx_bytes, kIo for the write.
Status export_qdq_onnx(const artifact::ArtifactBuilder& b, const targets::Placement& p, const QdqExportOptions& opt,
                       const std::string& path);
Status export_qdq_onnx(const artifact::ArtifactBuilder& b, const targets::Placement& p, const QdqExportOptions& opt,
                       const std::string& path, QdqExportSummary* summary);

}  // namespace kerf
