// `kerf inspect`: a model's IR (imported or after a pipeline), or an artifact's contents.
#pragma once

#include <string>

#include "compiler/ir/status.h"

namespace kerf {

/// Text for `path`: a .kerf artifact (detected by its magic) prints metadata, every tensor (dtype,
/// shape, group, bytes) and the program; anything else is imported as ONNX, `pipeline` is run
/// ("none" = as imported) and the graph is printed as IR text (constants elided unless `full`).
Result<std::string> inspect(const std::string& path, const std::string& pipeline, bool full);

}  // namespace kerf
