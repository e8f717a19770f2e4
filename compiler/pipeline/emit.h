// Lowering of a lifted, quantized graph to the .kerf program and tensor table (formats/SPEC.md).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "formats/artifact/writer.h"
#include "quant/recipe.h"

namespace kerf::pipeline {

/// Float metadata: the bits-per-weight budget of a mixed-precision compile (recipe mixed.bpw or
/// --bpw); written only when a budget was given. `kerf verify` gates bpw_vs_baseline with it.
inline constexpr const char* kMetaBpwBudget = "quant.bpw_budget";

struct EmitOptions {
  std::vector<uint8_t> tokenizer;  ///< llama2.c tokenizer file bytes (metadata "tokenizer.model")
  std::string recipe;              ///< recorded as "compile.recipe"
  std::string target = "host";     ///< recorded as "compile.target"
  std::string source_name;         ///< recorded as "source.file"
  std::string producer_version;    ///< recorded as "producer.version"
  double bpw_budget = 0;           ///< > 0: recorded as float kMetaBpwBudget ("quant.bpw_budget")
  std::map<std::string, std::string> extra_meta;  ///< more string metadata (compile.recipe_text, compile.calib_hash, ...)
};

/// Builds the artifact of a lifted graph (only kerf ops and Add; one token-id input, logits as
/// the first output). Weight matrices come from `q.tensors` (their planned dtype and layout, plain
/// or tiled: the compiler packs them for the target before, see compile.cpp);
/// other initializers read by ops (norm weights) are stored as f32. Every value must have a static
/// last dimension (its width). Metadata: model.* (arch, vocab_size, dim, n_layers, max_seq_len),
/// tokenizer.*, producer.*, compile.*, quant.bpw, quant.bpw_budget (mixed precision only) and one "quant.tensor.<name>" string per tensor:
/// RTN baseline: the stored precision (fmt::describe_qtype), method and role ("q4_asym g32 rtn
/// linear", "qasym4/f16 g32 t4 rtn linear"); calibrated: the qspec precision, method, role, then
/// " layout=t4" for a tiled tensor and the error figures ("int4_asym:g32 gptq linear layout=t4
/// rel.err=0.0774 out.err=0.00050").
/// Errors: kUnsupported naming a node whose op has no artifact op (the graph is not lifted) or a
/// constant where the program needs an activation; kBadInput for a missing weight or width.
Result<artifact::ArtifactBuilder> build_artifact(const ir::Graph& lifted, const quant::QuantizedModel& q,
                                                 const EmitOptions& opt);

}  // namespace kerf::pipeline
