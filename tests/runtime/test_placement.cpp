// Heterogeneous execution (format 1.3 placement, runtime-lite/src/backend.h): the loader's checks of
// OpEntry.backend and placement.prefill, the executor's dispatch and transfers (GPU through OpenCL
// when this build has it), the explicit CPU-only override, per-unit statistics, and the refusal of a
// unit the runtime cannot provide (no silent fallback).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using namespace kt;

struct Model {
  std::vector<uint8_t> bytes;
  void* mem = nullptr;
  kerf_model* m = nullptr;
  ~Model() {
    if (m) kerf_model_close(m);
    std::free(mem);
  }
};

/// Opens the builder's bytes (64-byte aligned copy); returns the status and the message.
int open_builder(const art::ArtifactBuilder& b, Model* out, std::string* msg) {
  std::string err;
  out->bytes = b.serialize(&err);
  REQUIRE(!out->bytes.empty());
  REQUIRE(posix_memalign(&out->mem, 64, out->bytes.size()) == 0);
  std::memcpy(out->mem, out->bytes.data(), out->bytes.size());
  char e[1024] = {0};
  const int rc = kerf_model_open_memory(out->mem, out->bytes.size(), 0, "placed.kerf", &out->m, e, sizeof e);
  if (msg) *msg = e;
  return rc;
}

art::ArtifactBuilder small_llama(fmt::DType dt = fmt::DType::kQ8Sym) {
  LlamaCfg c;
  art::ArtifactBuilder b;
  build_llama(b, c, random_llama(c, 7), dt, 8);
  return b;
}

/// Logits of all positions for `toks` (prefill), then one decode step.
std::vector<float> run(kerf_session* s, const std::vector<int32_t>& toks, int vocab) {
  std::vector<float> out(toks.size() * static_cast<size_t>(vocab)), one(static_cast<size_t>(vocab));
  kerf_session_reset(s);
  REQUIRE(kerf_session_eval(s, toks.data(), int(toks.size()), out.data(), 1) == KERF_OK);
  const int32_t next = 5;
  INFO(kerf_session_last_error(s));
  REQUIRE(kerf_session_eval(s, &next, 1, one.data(), 0) == KERF_OK);
  out.insert(out.end(), one.begin(), one.end());
  return out;
}

}  // namespace

TEST_CASE("placement: the loader checks backends and placement.prefill", "[placement]") {
  {
    art::ArtifactBuilder b = small_llama();
    b.ops()[3].backend = fmt::Backend(7);
    std::string err;
    CHECK(b.serialize(&err).empty());  // the writer refuses it
    CHECK_THAT(err, Catch::Contains("unknown backend 7"));
  }
  {  // placement.prefill of the wrong length
    art::ArtifactBuilder b = small_llama();
    b.add_meta_bytes(fmt::meta::kPlacementPrefill, std::vector<uint8_t>(b.op_count() - 1, 0));
    Model m;
    std::string msg;
    CHECK(open_builder(b, &m, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("placement.prefill") && Catch::Contains("one per op"));
  }
  {  // an unknown unit code in placement.prefill
    art::ArtifactBuilder b = small_llama();
    std::vector<uint8_t> pre(b.op_count(), 0);
    pre[2] = 3;
    b.add_meta_bytes(fmt::meta::kPlacementPrefill, pre);
    Model m;
    std::string msg;
    CHECK(open_builder(b, &m, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("op #2") && Catch::Contains("unknown backend 3"));
  }
  {  // a valid placement shows in the op description
    art::ArtifactBuilder b = small_llama();
    std::vector<uint8_t> pre(b.op_count(), 0);
    pre[2] = uint8_t(fmt::Backend::kGpu);
    pre[3] = uint8_t(fmt::Backend::kGpu);
    pre[4] = uint8_t(fmt::Backend::kNpu);
    b.add_meta_bytes(fmt::meta::kPlacementPrefill, pre);
    b.ops()[3].backend = fmt::Backend::kGpu;
    Model m;
    REQUIRE(open_builder(b, &m, nullptr) == KERF_OK);
    char line[512];
    REQUIRE(kerf_model_op_describe(m.m, 2, line, sizeof line) == KERF_OK);
    CHECK_THAT(std::string(line), Catch::EndsWith("[gpu prefill / cpu]"));
    REQUIRE(kerf_model_op_describe(m.m, 3, line, sizeof line) == KERF_OK);
    CHECK_THAT(std::string(line), Catch::EndsWith("[gpu]"));
    REQUIRE(kerf_model_op_describe(m.m, 4, line, sizeof line) == KERF_OK);
    CHECK_THAT(std::string(line), Catch::EndsWith("[npu prefill / cpu]"));
    REQUIRE(kerf_model_op_describe(m.m, 1, line, sizeof line) == KERF_OK);
    CHECK_THAT(std::string(line), Catch::EndsWith("[cpu]"));
  }
}

TEST_CASE("placement: CPU-only override runs a GPU-placed program bit-identically to the CPU program", "[placement]") {
  art::ArtifactBuilder cpu_b = small_llama();
  art::ArtifactBuilder gpu_b = small_llama();
  for (auto& op : gpu_b.ops()) op.backend = fmt::Backend::kGpu;
  Model cm, gm;
  REQUIRE(open_builder(cpu_b, &cm, nullptr) == KERF_OK);
  REQUIRE(open_builder(gpu_b, &gm, nullptr) == KERF_OK);
  kerf_session *cs = nullptr, *gs = nullptr;
  char err[512] = {0};
  REQUIRE(kerf_session_create_ex(cm.m, 0, 0, &cs, err, sizeof err) == KERF_OK);
  REQUIRE(kerf_session_create_ex(gm.m, 0, KERF_SESSION_CPU_ONLY, &gs, err, sizeof err) == KERF_OK);
  const std::vector<int32_t> toks = {1, 40, 300, 7, 99, 2};
  const std::vector<float> a = run(cs, toks, 512), b = run(gs, toks, 512);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(bits_of(a[i]) == bits_of(b[i]));
  kerf_unit_stats st;
  CHECK(kerf_session_unit_stats(gs, KERF_UNIT_GPU, &st) == KERF_ERR_ARGUMENT);  // no gpu in this session
  REQUIRE(kerf_session_unit_stats(gs, KERF_UNIT_CPU, &st) == KERF_OK);
  CHECK(st.ops == 2 * uint64_t(kerf_model_op_count(gm.m)));  // every op, prefill and decode
  CHECK(st.uploads == 0);
  kerf_session_free(cs);
  kerf_session_free(gs);
  CHECK(kerf_session_create_ex(cm.m, 0, 8u, &cs, err, sizeof err) == KERF_ERR_ARGUMENT);  // unknown flag
}

#ifndef KERF_HAVE_OPENCL
TEST_CASE("placement: without OpenCL a GPU-placed program is refused with the op named", "[placement]") {
  art::ArtifactBuilder b = small_llama();
  b.ops()[4].backend = fmt::Backend::kGpu;
  Model m;
  REQUIRE(open_builder(b, &m, nullptr) == KERF_OK);
  kerf_session* s = nullptr;
  char err[1024] = {0};
  CHECK(kerf_session_create_ex(m.m, 0, 0, &s, err, sizeof err) == KERF_ERR_UNSUPPORTED);
  CHECK(s == nullptr);
  CHECK_THAT(std::string(err), Catch::Contains("op #4") && Catch::Contains("placed on the gpu") &&
                                   Catch::Contains("built without OpenCL"));
}
#else
TEST_CASE("placement: mixed CPU / GPU placement agrees with the CPU and counts its transfers", "[placement][gpu]") {
  // Linear ops of layer 0 on the GPU for prefill only; layer 1's FFN on the GPU in both phases.
  art::ArtifactBuilder cpu_b = small_llama();
  art::ArtifactBuilder mix = small_llama();
  std::vector<uint8_t> pre(mix.op_count(), 0);
  size_t gpu_decode_ops = 0, gpu_prefill_ops = 0;
  for (size_t i = 0; i < mix.op_count(); ++i) {
    const auto& op = mix.ops()[i];
    if (op.name.rfind("l0.w", 0) == 0) pre[i] = uint8_t(fmt::Backend::kGpu), ++gpu_prefill_ops;
    if (op.name == "l1.ffn") {
      mix.ops()[i].backend = fmt::Backend::kGpu;
      pre[i] = uint8_t(fmt::Backend::kGpu);
      ++gpu_decode_ops, ++gpu_prefill_ops;
    }
  }
  REQUIRE(gpu_prefill_ops == 5);  // wq, wk, wv, wo, ffn
  mix.add_meta_bytes(fmt::meta::kPlacementPrefill, pre);
  Model cm, mm;
  REQUIRE(open_builder(cpu_b, &cm, nullptr) == KERF_OK);
  REQUIRE(open_builder(mix, &mm, nullptr) == KERF_OK);
  kerf_session *cs = nullptr, *ms = nullptr;
  char err[1024] = {0};
  REQUIRE(kerf_session_create_ex(cm.m, 0, 0, &cs, err, sizeof err) == KERF_OK);
  const int rc = kerf_session_create_ex(mm.m, 0, 0, &ms, err, sizeof err);
  INFO(err);
  REQUIRE(rc == KERF_OK);
  const std::vector<int32_t> toks = {1, 40, 300, 7, 99, 2};
  const std::vector<float> a = run(cs, toks, 512);
  kerf_session_reset_stats(ms);
  const std::vector<float> b = run(ms, toks, 512);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(a[i])));
  }
  // f32 on both; only the summation order differs (measured ~1e-6 relative here)
  CHECK(worst <= 1e-4 * scale);
  kerf_unit_stats g, c;
  REQUIRE(kerf_session_unit_stats(ms, KERF_UNIT_GPU, &g) == KERF_OK);
  REQUIRE(kerf_session_unit_stats(ms, KERF_UNIT_CPU, &c) == KERF_OK);
  CHECK(g.ops == gpu_prefill_ops + gpu_decode_ops);
  CHECK(c.ops == 2 * uint64_t(kerf_model_op_count(mm.m)) - g.ops);
  // prefill: attn_in up once (wq, wk, wv share it), attn up for wo, ffn_in up for the ffn;
  // q, k, v, attn_out and ffn_out down. decode: ffn_in up, ffn_out down.
  CHECK(g.uploads == 3 + 1);
  CHECK(g.downloads == 5 + 1);
  CHECK(g.upload_bytes > 0);
  CHECK(kerf_session_unit_device(ms, KERF_UNIT_GPU) != nullptr);
  kerf_session_free(cs);
  kerf_session_free(ms);
}

TEST_CASE("placement: Attention on the GPU for prefill and the CPU for decode hands its KV cache over", "[placement][gpu]") {
  // Every op on the GPU for prefill, on the CPU for decode: each decode step attends over the
  // prefill's keys, which the GPU computed; the first decode step copies them to the CPU, and the
  // next prefill copies the decode steps' rows back to the GPU.
  art::ArtifactBuilder cpu_b = small_llama();
  art::ArtifactBuilder mix = small_llama();
  mix.add_meta_bytes(fmt::meta::kPlacementPrefill, std::vector<uint8_t>(mix.op_count(), uint8_t(fmt::Backend::kGpu)));
  Model cm, mm;
  REQUIRE(open_builder(cpu_b, &cm, nullptr) == KERF_OK);
  REQUIRE(open_builder(mix, &mm, nullptr) == KERF_OK);
  kerf_session *cs = nullptr, *ms = nullptr;
  char err[1024] = {0};
  REQUIRE(kerf_session_create_ex(cm.m, 0, 0, &cs, err, sizeof err) == KERF_OK);
  REQUIRE(kerf_session_create_ex(mm.m, 0, 0, &ms, err, sizeof err) == KERF_OK);
  for (int kv : {KERF_KV_F32, KERF_KV_F16}) {
    REQUIRE(kerf_session_set_kv_type(cs, kv) == KERF_OK);
    REQUIRE(kerf_session_set_kv_type(ms, kv) == KERF_OK);
    const std::vector<int32_t> toks = {1, 40, 300, 7, 99, 2, 17};
    std::vector<float> a = run(cs, toks, 512), b = run(ms, toks, 512);
    // a second prefill after the decode step: the GPU must have the decode step's row too
    const std::vector<int32_t> more = {33, 44, 55};
    std::vector<float> a2(3 * 512), b2(3 * 512);
    REQUIRE(kerf_session_eval(cs, more.data(), 3, a2.data(), 1) == KERF_OK);
    REQUIRE(kerf_session_eval(ms, more.data(), 3, b2.data(), 1) == KERF_OK);
    a.insert(a.end(), a2.begin(), a2.end());
    b.insert(b.end(), b2.begin(), b2.end());
    double worst = 0, scale = 0;
    size_t first_bad = a.size();
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, double(std::fabs(a[i] - b[i])));
      scale = std::max(scale, double(std::fabs(a[i])));
      if (first_bad == a.size() && std::fabs(a[i] - b[i]) > 1e-3) first_bad = i;
    }
    INFO("kv type " << kv << ", first row off: " << first_bad / 512);
    // f32 on both sides: summation order only; an f16 CPU cache rounds K and V (kerf.h: ~6e-4)
    CHECK(worst <= (kv == KERF_KV_F32 ? 1e-4 : 2e-3) * scale);
  }
  kerf_unit_stats g;
  REQUIRE(kerf_session_unit_stats(ms, KERF_UNIT_GPU, &g) == KERF_OK);
  CHECK(g.downloads > 0);
  kerf_session_free(cs);
  kerf_session_free(ms);
}
#endif
