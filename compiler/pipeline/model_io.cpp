#include "compiler/pipeline/model_io.h"
#include "kerf/xxh64.h"

#include <memory>

#include "kerf/tokenizer.h"

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "formats/onnx/onnx_import.h"
#include "formats/torchscript/torchscript_import.h"
#include "passes/registry.h"

namespace kerf::pipeline {

namespace fs = std::filesystem;

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Result<ir::Graph> import_model(const std::string& path) {
  if (is_torchscript_archive(path)) return import_torchscript(path);
  return import_onnx(path);
}

Result<LoadedModel> load_model(const std::string& path) {
  LoadedModel m;
  auto t0 = std::chrono::steady_clock::now();
  KERF_ASSIGN_OR_RETURN(ir::Graph g, import_model(path));
  m.import_seconds = seconds_since(t0);
  m.imported_nodes = g.nodes.size();
  m.imported_initializers = g.initializers.size();
  t0 = std::chrono::steady_clock::now();
  Status st = passes::run_pipeline(g, "canonicalize", &m.passes);
  if (!st.ok()) return st.with_context(path);
  m.passes_seconds = seconds_since(t0);
  m.lifted = std::move(g);
  return m;
}

Result<std::vector<uint8_t>> read_llama2c_tokenizer(const std::string& path, int64_t vocab_size) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError(path + ": cannot open tokenizer file");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 4) return BadInput(path + ": tokenizer file is " + std::to_string(bytes.size()) + " bytes (truncated)");
  size_t off = 4;
  for (int64_t i = 0; i < vocab_size; ++i) {
    if (bytes.size() - off < 8)
      return BadInput(path + ": token " + std::to_string(i) + " at offset " + std::to_string(off) +
                      ": file ends (the model has " + std::to_string(vocab_size) + " tokens)");
    int32_t len;
    std::memcpy(&len, bytes.data() + off + 4, 4);
    off += 8;
    if (len < 0 || static_cast<size_t>(len) > bytes.size() - off)
      return BadInput(path + ": token " + std::to_string(i) + " at offset " + std::to_string(off - 4) +
                      ": length " + std::to_string(len) + " runs past the end of the file");
    off += static_cast<size_t>(len);
  }
  if (off != bytes.size())
    return BadInput(path + ": " + std::to_string(bytes.size() - off) + " bytes left after " + std::to_string(vocab_size) +
                    " tokens: the tokenizer does not match the model's vocabulary");
  return bytes;
}

Result<std::string> find_tokenizer_beside(const std::string& model_path) {
  fs::path dir = fs::path(model_path).parent_path();
  if (dir.empty()) dir = ".";
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && (name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && e.path().extension() == ".bin")))
      found.push_back(e.path().string());
  }
  if (found.size() == 1) return found[0];
  std::string list;
  for (const auto& f : found) list += " " + f;
  return InvalidArgument("no --tokenizer given and " + std::string(found.empty() ? "no" : "more than one") +
                         " llama2.c tokenizer (tokenizer.bin / tok*.bin) beside " + model_path +
                         (found.empty() ? "" : ":" + list) + "; pass --tokenizer FILE");
}

Result<int64_t> vocab_size_of(const ir::Graph& lifted) {
  for (const auto& n : lifted.nodes)
    if (n.is("kerf", "Embedding")) {
      const ir::Tensor* t = lifted.constant(n.inputs[1]);
      if (t && t->shape.size() == 2) return t->shape[0];
    }
  return BadInput("the lifted graph has no Embedding: not a language model kerf can compile");
}

Result<std::vector<std::vector<int64_t>>> tokenize_texts(const std::vector<uint8_t>& tokenizer_file, int64_t vocab,
                                                         const std::vector<std::string>& texts) {
  kerf_tokenizer* raw = nullptr;
  char err[256] = {0};
  int rc = kerf_tokenizer_load(tokenizer_file.data(), tokenizer_file.size(), static_cast<int>(vocab), &raw, err, sizeof err);
  if (rc != KERF_OK) return BadInput(std::string("tokenizer: ") + err);
  std::unique_ptr<kerf_tokenizer, void (*)(kerf_tokenizer*)> tok(raw, kerf_tokenizer_free);
  std::vector<std::vector<int64_t>> out;
  std::vector<int32_t> ids;
  for (const std::string& text : texts) {
    ids.resize(text.size() + 4);
    int n = 0;
    rc = kerf_tokenizer_encode(tok.get(), text.c_str(), 1, ids.data(), static_cast<int>(ids.size()), &n);
    if (rc == KERF_ERR_ARGUMENT && n > static_cast<int>(ids.size())) {
      ids.resize(static_cast<size_t>(n));
      rc = kerf_tokenizer_encode(tok.get(), text.c_str(), 1, ids.data(), n, &n);
    }
    if (rc != KERF_OK) return Internal("tokenizer failed on text #" + std::to_string(out.size()));
    out.emplace_back(ids.begin(), ids.begin() + n);
  }
  return out;
}

Result<std::vector<int64_t>> tokenize_text(const std::vector<uint8_t>& tokenizer_file, int64_t vocab, const std::string& text) {
  KERF_ASSIGN_OR_RETURN(auto all, tokenize_texts(tokenizer_file, vocab, {text}));
  return std::move(all[0]);
}

}  // namespace kerf::pipeline

namespace kerf::pipeline {

Result<uint64_t> file_xxh64(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError(path + ": cannot open");
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) return IoError(path + ": read error");
  return xxh64(bytes.data(), bytes.size(), 0);
}

}  // namespace kerf::pipeline
