// Lowering of a lifted, quantized graph to the .kerf program and tensor table (formats/SPEC.md).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "formats/artifact/writer.h"
#include "quant/recipe.h"

namespace kerf::pipeline {

struct EmitOptions {
  std::vector<uint8_t> tokenizer;  ///< llama2.c tokenizer file bytes (metadata "tokenizer.model")
  std::string recipe;              ///< recorded as "compile.recipe"
  std::string target = "host";     ///< recorded as "compile.target"
  std::string source_name;         ///< recorded as "source.file"
  std::string producer_version;    ///< recorded as "producer.version"
  std::map<std::string, std::string> extra_meta;  ///< more string metadata (compile.recipe_text, compile.calib_hash, ...)
};

/// Builds the artifact of a lifted graph (only kerf ops and Add; one token-id input, logits as
/// the first output). Weight matrices come from `q.tensors` (their planned dtype and layout);
/// other initializers read by ops (norm weights) are stored as f32. Every value must have a static
/// last dimension (its width). Metadata: model.* (arch, vocab_size, dim, n_layers, max_seq_len),
/// tokenizer.*, producer.*, compile.*, quant.bpw and one "quant.tensor.<name>" string per tensor
/// ("q4_asym g32 rtn linear").
/// Errors: kUnsupported naming a node whose op has no artifact op (the graph is not lifted) or a
/// constant where the program needs an activation; kBadInput for a missing weight or width.
Result<artifact::ArtifactBuilder> build_artifact(const ir::Graph& lifted, const quant::QuantizedModel& q,
                                                 const EmitOptions& opt);

}  // namespace kerf::pipeline
