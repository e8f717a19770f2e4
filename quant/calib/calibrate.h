// kerf quant/calib: calibrated quantization of a lifted graph, layer by layer on the already
// quantized prefix (GPTQ's sequential scheme), with AWQ scale folding and per-tensor precisions.
//
// Calibration data is token sequences (one story each, BOS first), run through the LibTorch
// reference executor (distill/reference.h) in float32. For every weight matrix the statistics of
// its input x (rows = tokens) are accumulated: H = sum x x^T (double [cols, cols]), the token
// count N, and mean |x| per input channel. Peak memory is one stage's H plus the executor's
// activations for one sequence: the inputs are never stored.
//
// Stages, in graph order (each a set of matrices sharing one input; the prefix up to the stage's
// node is re-run with every earlier stage already quantized, so the statistics are those the
// quantized model produces — "true sequential"):
//   kerf.Linear nodes reading the same value (e.g. wq, wk, wv)   input: that value
//   kerf.GatedFFN w1, w3                                         input: the FFN input x
//   kerf.GatedFFN w2                                             input: act(x W1^T) * (x W3^T)
//   the tied embedding / classifier is quantized at its classifier stage (input: the final norm);
//   an untied embedding table has no input statistics (RTN / search without importances).
//
// Methods per tensor (TensorChoice):
//   rtn   RTN with ParamRule kRtn / kTwn, or kSearch with the imatrix diag(H) as importances
//         (llama.cpp's importance-weighted make_qx_quants); needs calibration only for kSearch.
//   gptq  GPTQ (quant/gptq.h) with the stage's H.
//   awq   AWQ (quant/awq.h): per-input-channel scales searched on FP statistics of all stages in one
//         pass and folded into the op producing the input (an RMSNorm weight; the v projection's
//         rows for the attention output, tied across the query heads of a KV group (GQA); w3's
//         rows for the FFN hidden), then clipping search, then RTN with the rule.
//   awq+gptq  the same scaling and clipping, then GPTQ.
// A stage whose input has no foldable producer (or whose value has other consumers) is quantized
// without AWQ scaling and its plan entries say so in `note`.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/qspec.h"
#include "quant/recipe.h"

namespace kerf::quant {

enum class Method { kRtn, kGptq, kAwq, kAwqGptq };
/// "rtn" | "gptq" | "awq" | "awq+gptq". kInvalidArgument otherwise.
Result<Method> parse_method(const std::string& text);
const char* method_name(Method m);

/// The precision and method of one weight matrix.
struct TensorChoice {
  QSpec spec;
  Method method = Method::kGptq;
  ParamRule rule = ParamRule::kSearch;
  /// Learned group parameters (unsnapped, flat group order, [rows * ng]), e.g. the step sizes
  /// of quantization-aware distillation with learn_scales (distill/qad.h). When set, the method
  /// must be kRtn and the tensor is quantized with them (quantize_with_params), the rule unused.
  std::vector<GroupParams> params;
  /// True when the method or rule needs calibration statistics.
  bool needs_calibration() const { return params.empty() && (method != Method::kRtn || rule == ParamRule::kSearch); }
};
/// "int4_asym:g32 gptq search".
std::string to_string(const TensorChoice& c);

struct CalibOptions {
  int threads = 0;            ///< LibTorch threads (0 = all cores)
  bool sequential = true;     ///< statistics on the quantized prefix (true) or all from the FP model
  GptqOptions gptq;
  AwqOptions awq;
  bool awq_clip = true;       ///< AWQ's clipping search after the scales (awq, awq+gptq)
  /// Information lines ("awq: scales searched ..."); null = silent. When set, the stages and tensors
  /// are also progress tasks ("calibration", and "gptq" / "awq" / "rtn" / "quantize" for a mix of
  /// methods) of the installed progress reporter (compiler/pipeline/progress.h).
  std::function<void(const std::string&)> progress;
  /// Out (optional): wall seconds by phase, accumulated in first-run order: "calibration" (input
  /// statistics, executor set-up), "awq search" (scale search and folding), "quantization (METHOD)"
  /// per method ("cast" for plain f16 / f32 storage).
  std::vector<std::pair<std::string, double>>* phase_seconds = nullptr;
};

/// Statistics of one stage input.
struct InputStats {
  int64_t cols = 0, tokens = 0;
  std::vector<double> H;         ///< [cols * cols], sum over tokens of x x^T
  std::vector<float> mean_abs;   ///< [cols], mean |x|
  /// Accumulates rows x [rows, cols] (float32, row-major).
  void add(const float* x, int64_t rows, int64_t cols);
  /// diag(H) / tokens as float importances (the imatrix).
  std::vector<float> imatrix() const;
};

/// Quantizes every weight matrix of `lifted` with its choice (`choices` by initializer name; a
/// matrix missing from the map is an error naming it). AWQ folds modify initializers of `lifted`
/// (norm weights, v / w3 rows) in place so that the emitted artifact matches what was calibrated.
/// `calib` holds token sequences (ids < vocab, each >= 2 tokens); it may be empty only when no
/// choice needs calibration. The result lists every matrix in first-use order with precision,
/// method, output error on the calibration inputs and notes; bpw follows shared/EVAL.md.
/// Errors: kInvalidArgument (missing choice, bad spec, calibration needed but none given, a token
/// id out of range), kBadInput (weights: NaN / shapes, named), and the quantizers' errors, each with
/// the tensor's name as context.
Result<QuantizedModel> quantize_calibrated(ir::Graph& lifted, const std::map<std::string, TensorChoice>& choices,
                                           const std::vector<std::vector<int64_t>>& calib, const CalibOptions& opt);

}  // namespace kerf::quant
