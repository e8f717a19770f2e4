// `kerf compile`: model -> lifted IR -> quantized -> .kerf artifact, with a printed summary.
#pragma once

#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "quant/recipe.h"

namespace kerf::pipeline {

struct CompileOptions {
  std::string model_path;
  std::string output_path;
  std::string tokenizer_path;        ///< empty: the only tokenizer.bin / tok*.bin beside the model
  std::string target = "host";       ///< device profile; v1 knows "host" (scalar CPU)
  quant::QuantOptions quant;         ///< default: INT4 asym g32 linears, INT8 per-row embedding
  bool verify_lift = true;           ///< run imported and lifted graphs on a probe and compare logits
  int threads = 0;                   ///< LibTorch threads (0 = all cores)
  std::string producer_version = "0";
};

struct CompileSummary {
  size_t imported_nodes = 0, lifted_nodes = 0;
  std::map<std::string, int> lifted_ops;
  double lift_max_abs_diff = -1;     ///< probe logits, imported vs lifted graph (-1: not verified)
  quant::QuantizedModel quant;       ///< plan, bpw (tensors' payloads dropped after writing)
  uint64_t bytes = 0;                ///< artifact size on disk
  double import_seconds = 0, passes_seconds = 0, verify_seconds = 0, quant_seconds = 0, write_seconds = 0,
         total_seconds = 0;
  std::string recipe;
};

/// Known target names.
const std::vector<std::string>& known_targets();

/// Compiles. Errors: kInvalidArgument (unknown target, bad quant options, no tokenizer), and the
/// import / pass / quantization / write errors, each naming the file, node or tensor. Nothing is
/// left at output_path on error.
Result<CompileSummary> compile(const CompileOptions& opt);

/// Human-readable summary (ops, per-tensor plan, bpw, bytes, timings).
std::string compile_summary_text(const CompileOptions& opt, const CompileSummary& s);

}  // namespace kerf::pipeline
