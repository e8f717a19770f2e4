// End to end on the real model: FP16 ONNX -> lifted IR -> INT4 artifact -> runtime-lite ->
// EVAL.md report; KV-cache decode vs prefill on the artifact; corrupted artifacts rejected.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "compiler/pipeline/compile.h"
#include "compiler/pipeline/eval.h"
#include "compiler/pipeline/inspect.h"
#include "formats/artifact/pack.h"
#include "kerf/kerf.h"

namespace {

const std::string kModel = std::string(KERF_SOURCE_DIR) + "/examples/stories260K/stories260K.fp16.onnx";
const std::string kText = std::string(KERF_SHARED_DIR) + "/text/tinystories_valid_800.txt";

// Compiles the bundled model once per test binary run.
const std::string& artifact() {
  static std::string path;
  if (path.empty()) {
    kerf::pipeline::CompileOptions o;
    o.model_path = kModel;
    o.output_path = std::string(KERF_BINARY_DIR) + "/test_stories260K.kerf";
    auto r = kerf::pipeline::compile(o);
    INFO(r.status().to_string());
    REQUIRE(r.ok());
    CHECK(r->lift_max_abs_diff >= 0);  // the lift was checked (fp16 source: against a 5e-3 x max|logit| bound)
    CHECK(r->quant.bpw == Approx(5.435).margin(0.001));  // 35 linears q4 g32 + tied embedding q8/row
    path = o.output_path;
  }
  return path;
}

struct ModelGuard {
  kerf_model* m = nullptr;
  ~ModelGuard() { kerf_model_close(m); }
};

std::vector<uint8_t> read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

int open_bytes(const std::vector<uint8_t>& bytes, const std::string& name, std::string* msg) {
  const std::string p = std::string(KERF_BINARY_DIR) + "/" + name;
  {
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  char err[512] = {0};
  ModelGuard g;
  int rc = kerf_model_open(p.c_str(), KERF_OPEN_VERIFY_DATA, &g.m, err, sizeof err);
  *msg = err;
  std::remove(p.c_str());
  return rc;
}

}  // namespace

TEST_CASE("e2e: INT4 artifact of stories260K, EVAL.md on stories 400-799", "[e2e][stories]") {
  kerf::pipeline::EvalOptions eo;
  eo.artifact_path = artifact();
  eo.reference_path = kModel;
  eo.text_path = kText;
  eo.stories = {400, 800};
  auto r = kerf::pipeline::evaluate(eo);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  std::printf("e2e eval: ppl_reference %.4f, ppl %.4f, kl %.5f, top1 %.4f, bpw %.3f, bytes %llu, tokens %lld\n",
              r->ppl_reference, r->ppl, r->kl, r->top1, r->bpw, static_cast<unsigned long long>(r->bytes),
              static_cast<long long>(r->predicted_tokens));
  CHECK(r->n_stories == 400);
  CHECK(r->predicted_tokens == 152644);            // shared/models/README.md, evaluation set
  CHECK(r->ppl_reference == Approx(5.33).margin(0.02));
  CHECK(r->ppl <= 1.10 * r->ppl_reference);         // RTN INT4 g32 within +10 %
  CHECK(r->ppl > r->ppl_reference);                 // quantization costs something
  CHECK(r->kl > 0.0);
  CHECK(r->kl < 0.2);
  CHECK(r->top1 > 0.75);
  CHECK(r->bpw == Approx(5.435).margin(0.001));
  auto j = nlohmann::json::parse(kerf::pipeline::eval_report_json(*r));
  for (const char* k : {"ppl", "ppl_reference", "kl", "top1", "bpw", "bytes"}) CHECK(j.contains(k));
  CHECK(j["schema"] == "kerf.report/1");  // docs/report.md; tests/test_verify.cpp validates it against the schema
  CHECK(j["ppl"].get<double>() == r->ppl);
  CHECK(j["tensors"].size() == r->tensors.size());
  CHECK(j["placement"][0]["ops"].size() == r->ops.size());
  CHECK(j["bytes"].get<uint64_t>() == std::filesystem::file_size(artifact()));
}

TEST_CASE("e2e: KV-cache decode gives the prefill logits on the artifact", "[e2e][stories]") {
  ModelGuard g;
  char err[256];
  REQUIRE(kerf_model_open(artifact().c_str(), 0, &g.m, err, sizeof err) == KERF_OK);
  kerf_session* s = nullptr;
  REQUIRE(kerf_session_create(g.m, 0, &s) == KERF_OK);
  std::unique_ptr<kerf_session, void (*)(kerf_session*)> sg(s, kerf_session_free);
  int32_t toks[64];
  int n = 0;
  REQUIRE(kerf_tokenize(g.m, "Once upon a time, there was a little girl named Lily. She loved to play outside.", 1,
                        toks, 64, &n) == KERF_OK);
  REQUIRE(n > 16);
  const int V = kerf_model_vocab_size(g.m);
  std::vector<float> full(static_cast<size_t>(n) * V), step(static_cast<size_t>(V));
  REQUIRE(kerf_session_eval(s, toks, n, full.data(), 1) == KERF_OK);
  kerf_session_reset(s);
  REQUIRE(kerf_session_eval(s, toks, 8, nullptr, 0) == KERF_OK);  // prefill 8, then decode one by one
  double max_diff = 0;
  for (int t = 8; t < n; ++t) {
    REQUIRE(kerf_session_eval(s, toks + t, 1, step.data(), 0) == KERF_OK);
    for (int v = 0; v < V; ++v)
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(step[static_cast<size_t>(v)] - full[static_cast<size_t>(t) * V + v])));
  }
  CHECK(kerf_session_pos(s) == n);
  CHECK(max_diff <= 1e-4);
}

TEST_CASE("e2e: corrupted copies of the real artifact are rejected with a clear message", "[e2e][stories]") {
  const std::vector<uint8_t> good = read_all(artifact());
  REQUIRE(good.size() > 8192);
  std::string msg;
  CHECK(open_bytes(good, "copy.kerf", &msg) == KERF_OK);

  std::vector<uint8_t> truncated(good.begin(), good.begin() + static_cast<long>(good.size() / 2));
  CHECK(open_bytes(truncated, "truncated.kerf", &msg) == KERF_ERR_CORRUPT);
  CHECK(msg.find("truncated") != std::string::npos);

  for (size_t at : {size_t{20}, size_t{200}, good.size() - 100}) {  // header, table, tensor data
    std::vector<uint8_t> flipped = good;
    flipped[at] ^= 0x10;
    INFO("bit flipped at byte " << at);
    int rc = open_bytes(flipped, "flipped.kerf", &msg);
    CHECK(rc != KERF_OK);
    CHECK(msg.find("checksum") != std::string::npos);
  }
}

TEST_CASE("e2e: inspect lists the artifact's tensors and program", "[e2e][stories]") {
  auto text = kerf::inspect(artifact(), "canonicalize", false);
  INFO(text.status().to_string());
  REQUIRE(text.ok());
  CHECK(text->find("model.layers.0.wq.weight") != std::string::npos);
  // target host: the q4_asym linears and the q8_sym per-row embedding are stored tiled (SPEC 6.6)
  CHECK(text->find("qasym4/f16 g32 t4") != std::string::npos);
  CHECK(text->find("qsym8/f16 g64 t4") != std::string::npos);
  CHECK(text->find("compile.layout = \"tiled4\"") != std::string::npos);
  CHECK(text->find("Attention(") != std::string::npos);
  auto ir = kerf::inspect(kModel, "canonicalize", false);
  REQUIRE(ir.ok());
  CHECK(ir->find("kerf.Attention") != std::string::npos);
}

namespace {

/// The tensor table of an artifact file (no checks: the files come from the writer).
std::map<std::string, kerf::artifact::TensorRecord> tensors_of(const std::vector<uint8_t>& f) {
  namespace fmt = kerf::fmt;
  fmt::FileHeader h;
  std::memcpy(&h, f.data(), sizeof h);
  std::map<std::string, kerf::artifact::TensorRecord> out;
  for (uint32_t i = 0; i < h.tensor_count; ++i) {
    fmt::TensorEntry e;
    std::memcpy(&e, f.data() + h.tensors_offset + uint64_t(i) * h.tensor_entry_size, sizeof e);
    kerf::artifact::TensorRecord t;
    t.name.assign(reinterpret_cast<const char*>(f.data() + h.strings_offset + e.name_offset), e.name_size);
    t.dtype = fmt::DType(e.dtype);
    t.shape.assign(e.shape, e.shape + e.rank);
    t.group_size = e.group_size;
    t.flags = e.flags;
    const uint8_t* p = f.data() + h.data_offset + e.offset;
    t.payload.assign(p, p + e.size);
    out[t.name] = t;
  }
  return out;
}

}  // namespace

TEST_CASE("e2e: target generic keeps the plain layout; host's tiled weights unpack to its bytes", "[e2e][stories]") {
  kerf::pipeline::CompileOptions o;
  o.model_path = kModel;
  o.output_path = std::string(KERF_BINARY_DIR) + "/test_generic.kerf";
  o.target = "generic";
  o.verify_lift = false;
  auto r = kerf::pipeline::compile(o);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  CHECK(r->layout == "plain");
  CHECK(r->untiled.empty());
  CHECK(r->quant.bpw == Approx(5.435).margin(0.001));  // the same logical bits as the tiled artifact
  const auto plain = tensors_of(read_all(o.output_path));
  const auto tiled = tensors_of(read_all(artifact()));
  REQUIRE(plain.size() == tiled.size());
  int n_tiled = 0;
  for (const auto& [name, p] : plain) {
    INFO(name);
    const kerf::artifact::TensorRecord& t = tiled.at(name);
    if (!kerf::fmt::dtype_is_quantized(p.dtype)) {  // norm weights: f32 in both
      CHECK(t.payload == p.payload);
      continue;
    }
    CHECK((p.dtype == kerf::fmt::DType::kQ4Asym || p.dtype == kerf::fmt::DType::kQ8Sym));
    CHECK(kerf::fmt::qflags_layout(t.flags) == kerf::fmt::Layout::kTiled);
    CHECK(kerf::fmt::qflags_tile_rows(t.flags) == 4);
    kerf::artifact::TensorRecord back;
    std::string err;
    REQUIRE(kerf::artifact::unpack_tiled(t, &back, &err));
    std::vector<uint8_t> want = p.payload;  // q4_asym == qasym4/f16 bytes; q8_sym: qsym8 codes are code + 128
    if (p.dtype == kerf::fmt::DType::kQ8Sym)
      for (int64_t k = 0; k < p.shape[0] * p.shape[1]; ++k) want[static_cast<size_t>(k)] ^= 0x80u;
    CHECK(back.payload == want);
    ++n_tiled;
  }
  CHECK(n_tiled == 36);  // 35 linears + the tied embedding
  std::remove(o.output_path.c_str());
}

TEST_CASE("e2e: from the fp32 export, the lifted graph matches the imported one to 1e-4", "[e2e][stories]") {
  kerf::pipeline::CompileOptions o;
  o.model_path = std::string(KERF_SHARED_DIR) + "/models/stories260K/stories260K.fp32.onnx";
  o.output_path = std::string(KERF_BINARY_DIR) + "/test_fp32.kerf";
  auto r = kerf::pipeline::compile(o);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  CHECK(r->lift_max_abs_diff >= 0);
  CHECK(r->lift_max_abs_diff <= 1e-4);
  CHECK(r->lifted_nodes == 63);
}

TEST_CASE("e2e: compile errors leave nothing behind", "[e2e]") {
  kerf::pipeline::CompileOptions o;
  o.model_path = kModel;
  o.output_path = std::string(KERF_BINARY_DIR) + "/never.kerf";
  o.target = "toaster";
  auto r = kerf::pipeline::compile(o);
  CHECK(r.status().code() == kerf::ErrorCode::kInvalidArgument);
  CHECK(r.status().message().find("toaster") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(o.output_path));
  o.target = "host";
  o.tokenizer_path = std::string(KERF_SHARED_DIR) + "/text/tinyshakespeare.txt";  // not a tokenizer
  r = kerf::pipeline::compile(o);
  CHECK(r.status().code() == kerf::ErrorCode::kBadInput);
  CHECK_FALSE(std::filesystem::exists(o.output_path));
}
