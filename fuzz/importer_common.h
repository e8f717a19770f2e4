// What the importer fuzz targets do after an import: `kerf compile`'s next step, the canonicalize
// pipeline (infer-shapes, fold, dce, lift-transformer), on whatever graph imported. Statuses are
// printed with KERF_FUZZ_VERBOSE=1 (to see why a seed is rejected); they never fail the target.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "compiler/ir/ir.h"
#include "passes/registry.h"

namespace kerf::fuzz {

inline void canonicalize_imported(Result<ir::Graph>& g) {
  const bool verbose = std::getenv("KERF_FUZZ_VERBOSE") != nullptr;
  if (!g.ok()) {
    if (verbose) std::fprintf(stderr, "import: %s\n", g.status().to_string().c_str());
    return;
  }
  const Status st = passes::run_pipeline(*g, passes::canonicalize_pipeline());
  if (verbose) std::fprintf(stderr, "canonicalize: %s\n", st.to_string().c_str());
}

}  // namespace kerf::fuzz
