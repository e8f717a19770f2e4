// The list of every graph pass, in pipeline order, and the runner for text pipelines.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "compiler/ir/pass.h"

namespace kerf::passes {

struct PassInfo {
  const char* name;
  const char* description;
  std::unique_ptr<Pass> (*make)();
};

/// All passes, in the order a full pipeline runs them (comments in registry.cpp say why).
const std::vector<PassInfo>& registry();

/// Pipeline aliases: "canonicalize" = the import clean-up and lifting pipeline.
const char* canonicalize_pipeline();

/// Parses `text` (pass names, options in braces, aliases expanded) and runs it on `g`. Errors name
/// the unknown pass / option, or carry the failing pass's message prefixed with its name. The
/// graph is validated after every pass (a pass that breaks it is an internal error naming it).
Status run_pipeline(ir::Graph& g, const std::string& text, PassContext* ctx = nullptr);

}  // namespace kerf::passes
