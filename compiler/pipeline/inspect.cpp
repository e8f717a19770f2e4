#include "compiler/pipeline/inspect.h"

#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "compiler/ir/ir_text.h"
#include "compiler/pipeline/manifest.h"
#include "compiler/pipeline/model_io.h"
#include "kerf/format.h"
#include "kerf/kerf.h"
#include "passes/registry.h"

namespace kerf {

namespace {

Result<std::string> inspect_artifact(const std::string& path, bool full) {
  char err[512] = {0};
  kerf_model* m = nullptr;
  int rc = kerf_model_open(path.c_str(), KERF_OPEN_VERIFY_DATA, &m, err, sizeof err);
  if (rc != KERF_OK) return BadInput(std::string(kerf_status_string(rc)) + ": " + err);
  std::unique_ptr<kerf_model, void (*)(kerf_model*)> guard(m, kerf_model_close);
  std::ostringstream os;
  char buf[1024];
  os << "artifact " << path << "\n\nmetadata:\n";
  for (int i = 0; i < kerf_model_meta_count(m); ++i) {
    const char* key = kerf_model_meta_key(m, i);
    int64_t iv;
    double fv;
    const char* s;
    size_t n;
    if (kerf_model_meta_int(m, key, &iv) == 0) {
      os << "  " << key << " = " << iv << "\n";
    } else if (kerf_model_meta_float(m, key, &fv) == 0) {
      std::snprintf(buf, sizeof buf, "  %s = %.6g\n", key, fv);
      os << buf;
    } else if (kerf_model_meta_string(m, key, &s, &n) == 0) {
      // Text is printed with \n escaped (long values cut unless --full); binary values (the
      // tokenizer file) by size only.
      bool text = true;
      for (size_t k = 0; k < n && text; ++k) {
        const unsigned char c = static_cast<unsigned char>(s[k]);
        text = c >= 0x20 || c == '\n' || c == '\t';
      }
      if (!text) {
        os << "  " << key << " = <" << n << " bytes>\n";
        continue;
      }
      std::string v;
      for (size_t k = 0; k < n; ++k) v += s[k] == '\n' ? std::string("\\n") : std::string(1, s[k]);
      if (!full && v.size() > 240) v = v.substr(0, 240) + "... (" + std::to_string(n) + " bytes)";
      os << "  " << key << " = \"" << v << "\"\n";
    } else {
      os << "  " << key << " = <bytes>\n";
    }
  }
  os << "\ntensors:\n";
  // precision: fmt::describe_qtype, e.g. "f32", "q8_sym g64", "qasym4/f16 g32 t4" (tiled, 4 rows per tile)
  std::snprintf(buf, sizeof buf, "  %-40s %-20s %-14s %6s %10s\n", "name", "precision", "shape", "group", "bytes");
  os << buf;
  uint64_t total = 0;
  for (int i = 0; i < kerf_model_tensor_count(m); ++i) {
    kerf_tensor_info ti;
    if (kerf_model_tensor_info(m, i, &ti) != 0) continue;
    std::string shape = "[";
    for (uint32_t d = 0; d < ti.rank; ++d) shape += (d ? "," : "") + std::to_string(ti.shape[d]);
    shape += "]";
    std::snprintf(buf, sizeof buf, "  %-40s %-20s %-14s %6u %10llu\n", ti.name, (ti.precision ? ti.precision : ti.dtype_name), shape.c_str(), ti.group_size,
                  static_cast<unsigned long long>(ti.bytes));
    os << buf;
    total += ti.bytes;
  }
  os << "  total tensor bytes: " << total << "\n\nprogram:\n";
  for (int i = 0; i < kerf_model_op_count(m); ++i) {
    char line[1024];
    if (kerf_model_op_describe(m, i, line, sizeof line) == 0) os << "  " << line << "\n";
  }
  return os.str();
}

}  // namespace

Result<std::string> inspect(const std::string& path, const std::string& pipeline, bool full) {
  char magic[8] = {0};
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) return IoError(path + ": cannot open");
    f.read(magic, 8);
  }
  if (std::memcmp(magic, fmt::kMagic, 8) == 0) {
    // The package manifest beside it is checked first: an altered artifact is reported as such.
    KERF_ASSIGN_OR_RETURN(std::string manifest, pipeline::inspect_manifest_text(path));
    KERF_ASSIGN_OR_RETURN(std::string text, inspect_artifact(path, full));
    return text + manifest;
  }
  KERF_ASSIGN_OR_RETURN(ir::Graph g, pipeline::import_model(path));
  const size_t imported = g.nodes.size();
  PassContext ctx;
  if (pipeline != "none") {
    Status st = passes::run_pipeline(g, pipeline, &ctx);
    if (!st.ok()) return st.with_context(path);
  }
  ir::PrintOptions po;
  po.max_inline_elements = full ? -1 : 16;
  std::ostringstream os;
  os << "# " << path << ": " << imported << " nodes imported";
  if (pipeline != "none") os << ", " << g.nodes.size() << " after '" << pipeline << "'";
  os << ", " << g.parameter_count() << " parameters\n";
  for (const auto& [k, v] : ctx.counters) os << "# " << k << " = " << v << "\n";
  os << ir::print_graph(g, po);
  return os.str();
}

}  // namespace kerf
