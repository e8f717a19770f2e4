// libFuzzer target: the ONNX importer on arbitrary bytes, then (when it imports) the canonicalize
// pipeline (infer-shapes, fold, dce, lift-transformer) that `kerf compile` runs next. Every outcome
// must be a Status; external-data references resolve in an empty private folder.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "formats/onnx/onnx_import.h"
#include "fuzz/importer_common.h"

namespace {
const std::string& empty_dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/kerf_fuzz_onnx_XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    return std::string(d ? d : "/nonexistent-kerf-fuzz");
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kerf::Result<kerf::ir::Graph> g = kerf::import_onnx_bytes(data, size, empty_dir(), "fuzz.onnx");
  kerf::fuzz::canonicalize_imported(g);
  return 0;
}
