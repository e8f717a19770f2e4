// The OpenCL GPU backend (runtime-lite/src/opencl/), driven directly through DeviceBackend
// (prepare, run op by op, download) and compared with the CPU executor and the scalar reference
// kernels: stories260K in every weight dtype (prefill, then decode through the device KV cache),
// Embedding bit for bit against dequant_row (SPEC 6.4 on the device), attention variants (GQA,
// non-interleaved RoPE, non-causal, explicit scale, chunked softmax), transfers and stats, and the
// errors (tiled weights, KERF_OPENCL_DEVICE naming no device). With KERF_GPU_TEST_REPORT set, the
// measured errors are printed (docs/gpu.md quotes them).
//
// Tolerances: results differ from the CPU by summation order and by the device's exp / sqrt only,
// so logits are compared with max |gpu - cpu| <= kLogitTol * max(1, max |cpu|) (measured ~1e-6
// relative on PoCL, see docs/gpu.md); Embedding and Rotary outputs are exact.
#include <catch2/catch.hpp>

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../../runtime-lite/src/backend.h"
#include "../../runtime-lite/src/kernels.h"
#include "../../runtime-lite/src/model.h"
#include "test_util.h"

#ifdef KERF_HAVE_OPENCL
#include <CL/cl.h>
#endif

using namespace kt;
namespace rt = kerf::rt;

#ifndef KERF_HAVE_OPENCL

TEST_CASE("GPU backend: a runtime built without OpenCL says so", "[gpu]") {
  std::string err;
  std::unique_ptr<rt::DeviceBackend> b = rt::make_gpu_backend(&err);
  CHECK(b == nullptr);
  CHECK(err.find("built without OpenCL") != std::string::npos);
}

#else

namespace {

/// Relative logit tolerance (of max(1, max |cpu logit|)); see the header comment.
constexpr double kLogitTol = 2e-5;

bool report() { return std::getenv("KERF_GPU_TEST_REPORT") != nullptr; }

uint64_t now_ns_test() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

/// Sets (value != nullptr) or unsets an environment variable for a scope.
struct EnvGuard {
  std::string name;
  bool had = false;
  std::string old;
  EnvGuard(const char* n, const char* value) : name(n) {
    if (const char* o = std::getenv(n)) {
      had = true;
      old = o;
    }
    if (value) setenv(n, value, 1);
    else unsetenv(n);
  }
  ~EnvGuard() {
    if (had) setenv(name.c_str(), old.c_str(), 1);
    else unsetenv(name.c_str());
  }
};

/// The backend, or nullptr when this machine has no OpenCL device at all (then the test says so
/// and passes: the build has OpenCL, the machine has no driver). Any other failure fails the test.
std::unique_ptr<rt::DeviceBackend> gpu_or_skip() {
  std::string err;
  std::unique_ptr<rt::DeviceBackend> b = rt::make_gpu_backend(&err);
  if (!b) {
    INFO(err);
    const bool no_device = err.find("no OpenCL platform") != std::string::npos ||
                           err.find("no OpenCL device") != std::string::npos;
    if (no_device) WARN("skipped: " << err);
    else FAIL("make_gpu_backend: " << err);
  }
  return b;
}

struct Model {
  TempDir dir;
  kerf_model* m = nullptr;
  explicit Model(art::ArtifactBuilder& b) {
    const std::string path = dir.file("model.kerf");
    const std::string e = b.write(path);
    REQUIRE(e == "");
    std::string msg;
    REQUIRE(open_status(path, KERF_OPEN_VERIFY_DATA, &msg, &m) == KERF_OK);
  }
  ~Model() { kerf_model_close(m); }
};

/// A session whose ops (those in `mask`, default all) run on the GPU backend, op by op, as the
/// executor's GPU path will.
struct GpuRun {
  kerf_session* s = nullptr;
  std::unique_ptr<rt::DeviceBackend> b;
  int64_t pos = 0;
  std::string err;
  ~GpuRun() { kerf_session_free(s); }
  /// false (with the test skipped or failed) when there is no backend.
  bool open(kerf_model* m, int n_ctx, std::vector<uint8_t> mask = {}) {
    REQUIRE(kerf_session_create(m, n_ctx, &s) == KERF_OK);
    b = gpu_or_skip();
    if (!b) return false;
    if (mask.empty()) mask.assign(m->ops.size(), 1);
    const int rc = b->prepare(s, mask.data(), &err);
    INFO(err);
    REQUIRE(rc == KERF_OK);
    return true;
  }
  /// All-token logits [T, V] of the next T tokens.
  std::vector<float> eval(const std::vector<int32_t>& toks) {
    const kerf_model* m = s->model;
    const int64_t T = int64_t(toks.size());
    s->tokens = toks;
    for (size_t i = 0; i < m->ops.size(); ++i) {
      const int rc = b->run(i, T, pos, &err);
      INFO(err);
      REQUIRE(rc == KERF_OK);
    }
    std::vector<float> out(size_t(T) * size_t(m->vocab));
    const int rc = b->download(m->output_value, out.data(), T, &err);
    INFO(err);
    REQUIRE(rc == KERF_OK);
    pos += T;
    return out;
  }
};

/// A CPU session (fast kernels, or the scalar reference ones).
struct CpuRun {
  kerf_session* s = nullptr;
  CpuRun(kerf_model* m, int n_ctx, bool reference) {
    REQUIRE(kerf_session_create(m, n_ctx, &s) == KERF_OK);
    if (reference) REQUIRE(rt::set_reference_kernels(s, true));
  }
  ~CpuRun() { kerf_session_free(s); }
  std::vector<float> eval(const std::vector<int32_t>& toks) {
    std::vector<float> out(toks.size() * size_t(s->model->vocab));
    REQUIRE(kerf_session_eval(s, toks.data(), int(toks.size()), out.data(), 1) == KERF_OK);
    return out;
  }
};

struct Err {
  double abs = 0, scale = 1;  ///< max |a - b|, max(1, max |b|)
  double rel() const { return abs / scale; }
  void add(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      REQUIRE(std::isfinite(a[i]));
      abs = std::max(abs, double(std::fabs(a[i] - b[i])));
      scale = std::max(scale, double(std::fabs(b[i])));
    }
  }
};

/// Evaluation sizes: `prefill` tokens (T >= 4 runs the GEMM path), then 2 (GEMV with T = 2), then
/// one at a time (decode through the KV cache) up to `total`.
std::vector<size_t> prefill_then_decode(size_t total, size_t prefill) {
  std::vector<size_t> n = {prefill};
  size_t at = prefill;
  if (at < total) {
    n.push_back(std::min<size_t>(2, total - at));
    at += n.back();
  }
  for (; at < total; ++at) n.push_back(1);
  return n;
}

/// Evaluates toks in evaluations of `sizes` tokens on the GPU backend, the CPU executor and the
/// reference kernels, comparing every evaluation's all-token logits. Returns the errors against the
/// CPU executor (*ref: against the reference kernels); *ran = false when there is no device.
Err compare_sequence(kerf_model* m, const std::vector<int32_t>& toks, const std::vector<size_t>& sizes, Err* ref,
                     bool* ran, int n_ctx = 0) {
  GpuRun g;
  *ran = false;
  if (!g.open(m, n_ctx)) return {};
  CpuRun cpu(m, n_ctx, false), rf(m, n_ctx, true);
  Err e;
  size_t at = 0;
  for (size_t n : sizes) {
    REQUIRE(at + n <= toks.size());
    const std::vector<int32_t> chunk(toks.begin() + long(at), toks.begin() + long(at + n));
    const std::vector<float> lg = g.eval(chunk), lc = cpu.eval(chunk), lr = rf.eval(chunk);
    e.add(lg, lc);
    ref->add(lg, lr);
    at += n;
  }
  *ran = true;
  return e;
}

/// Precisions of the whole-model runs: every dtype, both scale formats, 2..8 code bits.
struct Prec {
  fmt::DType dt;
  uint32_t flags;
};
const Prec kPrecisions[] = {
    {fmt::DType::kF32, 0},
    {fmt::DType::kF16, 0},
    {fmt::DType::kQ8Sym, 0},
    {fmt::DType::kQ4Asym, 0},
    {fmt::DType::kQSym, fmt::make_qflags(2, fmt::ScaleFormat::kF16)},
    {fmt::DType::kQSym, fmt::make_qflags(3, fmt::ScaleFormat::kK6)},
    {fmt::DType::kQSym, fmt::make_qflags(5, fmt::ScaleFormat::kF16)},
    {fmt::DType::kQSym, fmt::make_qflags(8, fmt::ScaleFormat::kK6)},
    {fmt::DType::kQAsym, fmt::make_qflags(2, fmt::ScaleFormat::kK6)},
    {fmt::DType::kQAsym, fmt::make_qflags(4, fmt::ScaleFormat::kF16)},
    {fmt::DType::kQAsym, fmt::make_qflags(6, fmt::ScaleFormat::kK6)},
    {fmt::DType::kQAsym, fmt::make_qflags(7, fmt::ScaleFormat::kF16)},
    {fmt::DType::kTernary, fmt::make_qflags(0, fmt::ScaleFormat::kF16)},
    {fmt::DType::kTernary, fmt::make_qflags(0, fmt::ScaleFormat::kK6)},
    {fmt::DType::kBinary, fmt::make_qflags(0, fmt::ScaleFormat::kF16)},
    {fmt::DType::kBinary, fmt::make_qflags(0, fmt::ScaleFormat::kK6)},
};

std::string describe(fmt::DType dt, uint32_t flags, uint32_t group) {
  char b[64];
  return fmt::describe_qtype(dt, flags, group, b, sizeof b);
}

/// bf16 record (round to nearest even) of a row-major [rows, cols] matrix.
art::TensorRecord bf16_record(const std::string& name, int64_t rows, int64_t cols, const std::vector<float>& v) {
  art::TensorRecord t{name, fmt::DType::kBF16, {rows, cols}, 0, {}};
  for (float f : v) {
    uint32_t u = bits_of(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    t.payload.push_back(uint8_t(u >> 16));
    t.payload.push_back(uint8_t(u >> 24));
  }
  return t;
}

/// Embedding + tied classifier: tokens -> table rows [T, D] -> logits [T, V].
void build_embed_classifier(art::ArtifactBuilder& b, const art::TensorRecord& table, int64_t V, int64_t D,
                            int max_seq) {
  b.add_meta_string(fmt::meta::kArch, "llama");
  b.add_meta_int(fmt::meta::kVocab, V);
  b.add_meta_int(fmt::meta::kDim, D);
  b.add_meta_int(fmt::meta::kLayers, 0);
  b.add_meta_int(fmt::meta::kMaxSeq, max_seq);
  const uint32_t emb = b.add_tensor(table);
  const uint32_t tok = b.add_value({"tokens", 1}), x = b.add_value({"x", uint32_t(D)});
  const uint32_t logits = b.add_value({"logits", uint32_t(V)});
  b.add_op({fmt::OpCode::kEmbedding, fmt::Backend::kCpu, "embed", {tok, art::tensor_ref(emb)}, {x}, {}});
  b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "classifier", {x, art::tensor_ref(emb)}, {logits}, {}});
  b.set_io(tok, logits);
}

const std::vector<int32_t> kStoryTokens = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376,
                                           298, 315, 421, 395, 317, 426, 261, 378, 432, 383};

}  // namespace

TEST_CASE("GPU backend: device selection by default, by P:D, by name; bad KERF_OPENCL_DEVICE fails", "[gpu]") {
  std::string first_name;
  {
    EnvGuard env("KERF_OPENCL_DEVICE", nullptr);
    std::unique_ptr<rt::DeviceBackend> b = gpu_or_skip();
    if (!b) return;
    CHECK(b->unit() == fmt::Backend::kGpu);
    first_name = b->device_name();
    INFO(first_name);
    CHECK(first_name.find("OpenCL") == 0);
    CHECK(first_name.find(" / ") != std::string::npos);
    CHECK((first_name.find("(GPU)") != std::string::npos || first_name.find("(CPU)") != std::string::npos ||
           first_name.find("(ACCELERATOR)") != std::string::npos));
  }
  // Every device by its indices and by its name.
  cl_uint np = 0;
  REQUIRE(clGetPlatformIDs(0, nullptr, &np) == CL_SUCCESS);
  std::vector<cl_platform_id> ps(np);
  REQUIRE(clGetPlatformIDs(np, ps.data(), nullptr) == CL_SUCCESS);
  int tried = 0;
  for (cl_uint p = 0; p < np; ++p) {
    cl_uint nd = 0;
    if (clGetDeviceIDs(ps[p], CL_DEVICE_TYPE_ALL, 0, nullptr, &nd) != CL_SUCCESS) continue;
    std::vector<cl_device_id> ds(nd);
    REQUIRE(clGetDeviceIDs(ps[p], CL_DEVICE_TYPE_ALL, nd, ds.data(), nullptr) == CL_SUCCESS);
    for (cl_uint d = 0; d < nd; ++d) {
      char name[256] = {0};
      REQUIRE(clGetDeviceInfo(ds[d], CL_DEVICE_NAME, sizeof name - 1, name, nullptr) == CL_SUCCESS);
      const std::string idx = std::to_string(p) + ":" + std::to_string(d);
      for (const std::string& sel : {idx, std::string(name)}) {
        INFO("KERF_OPENCL_DEVICE=" << sel);
        EnvGuard env("KERF_OPENCL_DEVICE", sel.c_str());
        std::string err;
        std::unique_ptr<rt::DeviceBackend> b = rt::make_gpu_backend(&err);
        INFO(err);
        REQUIRE(b != nullptr);
        CHECK(std::string(b->device_name()).find(name) != std::string::npos);
        ++tried;
      }
    }
  }
  CHECK(tried >= 2);
  for (const char* bad : {"99:0", "0:99", "no-such-opencl-device-xyz"}) {
    INFO("KERF_OPENCL_DEVICE=" << bad);
    EnvGuard env("KERF_OPENCL_DEVICE", bad);
    std::string err;
    std::unique_ptr<rt::DeviceBackend> b = rt::make_gpu_backend(&err);
    CHECK(b == nullptr);
    INFO(err);
    CHECK(err.find("KERF_OPENCL_DEVICE") != std::string::npos);
    CHECK(err.find(bad) != std::string::npos);
    CHECK(err.find("devices:") != std::string::npos);  // lists what there is
  }
}

TEST_CASE("GPU backend: stories260K in every weight dtype matches the CPU, prefill then decode", "[gpu]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  // g = 32: the 64-column matrices have whole groups, w2 (172 columns) a partial last group of 12.
  std::vector<Prec> precs(std::begin(kPrecisions), std::end(kPrecisions));
  for (const Prec& p : precs) {
    const std::string d = describe(p.dt, p.flags, 32);
    INFO("precision " << d);
    art::ArtifactBuilder b;
    build_llama(b, c, w, p.dt, 32, true, p.flags);
    Model M(b);
    Err ref;
    bool ran = false;
    const Err e = compare_sequence(M.m, kStoryTokens, prefill_then_decode(kStoryTokens.size(), 12), &ref, &ran);
    if (!ran) return;
    if (report())
      std::printf("gpu stories260K %-16s max|gpu-cpu| %.3g (rel %.3g)  max|gpu-ref| %.3g (rel %.3g)  max|logit| %.3g\n",
                  d.c_str(), e.abs, e.rel(), ref.abs, ref.rel(), e.scale);
    CHECK(e.rel() <= kLogitTol);
    CHECK(ref.rel() <= kLogitTol);
  }
}

TEST_CASE("GPU backend: Embedding is bit-identical to dequant_row for every dtype (SPEC 6.4)", "[gpu]") {
  // [37, 45] tables with g = 7: a partial last group of 3, k6 super-blocks across rows, code
  // fields straddling bytes, an odd q4 row (last high nibble unused).
  const int64_t V = 37, D = 45;
  const uint32_t g = 7;
  std::mt19937 rng(7);
  const std::vector<float> table = random_vec(rng, size_t(V * D), 0.7f);
  std::vector<std::pair<std::string, art::TensorRecord>> recs;
  recs.push_back({"bf16", bf16_record("emb", V, D, table)});
  recs.push_back({"f32", matrix("emb", V, D, table, fmt::DType::kF32, 0)});
  recs.push_back({"f16", matrix("emb", V, D, table, fmt::DType::kF16, 0)});
  recs.push_back({"q8_sym", matrix("emb", V, D, table, fmt::DType::kQ8Sym, g)});
  recs.push_back({"q4_asym", matrix("emb", V, D, table, fmt::DType::kQ4Asym, g)});
  for (uint32_t bits = 2; bits <= 8; ++bits)
    for (fmt::ScaleFormat sf : {fmt::ScaleFormat::kF16, fmt::ScaleFormat::kK6})
      for (fmt::DType dt : {fmt::DType::kQSym, fmt::DType::kQAsym}) {
        const uint32_t flags = fmt::make_qflags(bits, sf);
        recs.push_back({describe(dt, flags, g), matrix("emb", V, D, table, dt, g, flags)});
      }
  for (fmt::ScaleFormat sf : {fmt::ScaleFormat::kF16, fmt::ScaleFormat::kK6})
    for (fmt::DType dt : {fmt::DType::kTernary, fmt::DType::kBinary}) {
      // Random codes and parameters (scales of both signs, every code) rather than a quantized table.
      const GenericQ q = random_generic(rng, dt, 0, sf == fmt::ScaleFormat::kK6, V, D, g);
      recs.push_back({describe(dt, q.flags(), g), generic_record("emb", q)});
    }
  {
    const GenericQ q = random_generic(rng, fmt::DType::kQAsym, 5, true, V, D, g);
    recs.push_back({"random " + describe(q.dtype, q.flags(), g), generic_record("emb", q)});
  }
  for (const auto& [label, rec] : recs) {
    INFO("table " << label);
    art::ArtifactBuilder b;
    build_embed_classifier(b, rec, V, D, 64);
    Model M(b);
    GpuRun gr;
    if (!gr.open(M.m, 64)) return;
    std::vector<int32_t> toks(static_cast<size_t>(V));
    for (int64_t t = 0; t < V; ++t) toks[size_t(t)] = int32_t((t * 11) % V);  // every row, shuffled
    const std::vector<float> lg = gr.eval(toks);
    std::vector<float> x(size_t(V * D));
    REQUIRE(gr.b->download(1, x.data(), V, &gr.err) == KERF_OK);  // value 1: the embedding
    const rt::WeightView wv = M.m->tensors[0].view();
    std::vector<float> row(static_cast<size_t>(D));
    int64_t mismatches = 0;
    for (int64_t t = 0; t < V; ++t) {
      rt::dequant_row(wv, toks[size_t(t)], row.data());
      for (int64_t c = 0; c < D; ++c)
        if (bits_of(row[size_t(c)]) != bits_of(x[size_t(t * D + c)])) ++mismatches;
    }
    CHECK(mismatches == 0);
    // The classifier on those rows: GEMM (T = 37), then GEMV (T = 1, 2) against the CPU.
    CpuRun cpu(M.m, 64, false);
    Err e;
    e.add(lg, cpu.eval(toks));
    const std::vector<int32_t> one = {5}, two = {36, 0};
    e.add(gr.eval(one), cpu.eval(one));
    e.add(gr.eval(two), cpu.eval(two));
    CHECK(e.rel() <= kLogitTol);
  }
}

namespace {

/// One attention block with the options build_llama does not vary: theta, interleaved = 0,
/// causal, scale, and GQA with H / G = 3.
void build_attention_variant(art::ArtifactBuilder& b, const Weights& w, const LlamaCfg& c, int interleaved, int causal,
                             double scale, double theta) {
  using fmt::AttrKey;
  using fmt::OpCode;
  const int64_t D = c.dim, Dh = c.head_dim(), KV = c.kv_heads * Dh;
  b.add_meta_string(fmt::meta::kArch, "llama");
  b.add_meta_int(fmt::meta::kVocab, c.vocab);
  b.add_meta_int(fmt::meta::kDim, D);
  b.add_meta_int(fmt::meta::kLayers, 1);
  b.add_meta_int(fmt::meta::kMaxSeq, c.max_seq);
  auto mat = [&](const std::string& n, int64_t r, int64_t k) {
    return art::tensor_ref(b.add_tensor(matrix(n, r, k, w.at(n), fmt::DType::kQ8Sym, 8)));
  };
  auto vec = [&](const std::string& n) {
    return art::tensor_ref(b.add_tensor(art::TensorRecord::from_f16(n, {D}, w.at(n))));
  };
  auto val = [&](const std::string& n, int64_t width) { return b.add_value({n, uint32_t(width)}); };
  auto op = [&](OpCode code, const std::string& name, std::vector<uint32_t> in, uint32_t out,
                std::vector<fmt::OpAttr> attrs = {}) {
    b.add_op({code, fmt::Backend::kCpu, name, std::move(in), {out}, std::move(attrs)});
  };
  const uint32_t emb = mat("tok_embeddings.weight", c.vocab, D);
  const uint32_t tok = val("tokens", 1), x = val("x", D), h = val("h", D), q = val("q", D), k = val("k", KV),
                 v = val("v", KV), qr = val("qr", D), kr = val("kr", KV), a = val("a", D), o = val("o", D),
                 x1 = val("x1", D), n = val("n", D), logits = val("logits", c.vocab);
  op(OpCode::kEmbedding, "embed", {tok, emb}, x);
  op(OpCode::kRMSNorm, "norm0", {x, vec(lname(0, "attention_norm.weight"))}, h, {art::attr_float(AttrKey::kEps, 1e-6)});
  op(OpCode::kLinear, "wq", {h, mat(lname(0, "attention.wq.weight"), D, D)}, q);
  op(OpCode::kLinear, "wk", {h, mat(lname(0, "attention.wk.weight"), KV, D)}, k);
  op(OpCode::kLinear, "wv", {h, mat(lname(0, "attention.wv.weight"), KV, D)}, v);
  const std::vector<fmt::OpAttr> rot = {art::attr_int(AttrKey::kHeadDim, Dh), art::attr_float(AttrKey::kTheta, theta),
                                        art::attr_int(AttrKey::kInterleaved, interleaved)};
  op(OpCode::kRotary, "rope_q", {q}, qr, rot);
  op(OpCode::kRotary, "rope_k", {k}, kr, rot);
  op(OpCode::kAttention, "attention", {qr, kr, v}, a,
     {art::attr_int(AttrKey::kNHeads, c.heads), art::attr_int(AttrKey::kNKvHeads, c.kv_heads),
      art::attr_int(AttrKey::kHeadDim, Dh), art::attr_float(AttrKey::kScale, scale),
      art::attr_int(AttrKey::kCausal, causal)});
  op(OpCode::kLinear, "wo", {a, mat(lname(0, "attention.wo.weight"), D, D)}, o);
  op(OpCode::kAdd, "residual", {x, o}, x1);
  op(OpCode::kRMSNorm, "norm", {x1, vec("norm.weight")}, n, {art::attr_float(AttrKey::kEps, 1e-5)});
  op(OpCode::kLinear, "classifier", {n, emb}, logits);
  b.set_io(tok, logits);
}

}  // namespace

TEST_CASE("GPU backend: GQA, RoPE variants, non-causal attention, chunked softmax match the CPU", "[gpu]") {
  std::vector<int32_t> toks(40);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 37 + 5) % 512);
  SECTION("random Llama, 8 query heads on 2 KV heads, 2 layers") {
    LlamaCfg c;
    c.dim = 32;
    c.heads = 8;
    c.kv_heads = 2;
    c.hidden = 72;
    const Weights w = random_llama(c, 21);
    for (const Prec& p : {Prec{fmt::DType::kF32, 0}, Prec{fmt::DType::kQ4Asym, 0},
                          Prec{fmt::DType::kQSym, fmt::make_qflags(4, fmt::ScaleFormat::kK6)}}) {
      INFO("precision " << describe(p.dt, p.flags, 16));
      art::ArtifactBuilder b;
      build_llama(b, c, w, p.dt, 16, true, p.flags);
      Model M(b);
      Err ref;
      bool ran = false;
      // Decode first, then evaluations longer than any before (the device buffers grow), then decode.
      const Err e = compare_sequence(M.m, toks, {1, 9, 2, 1, 16, 1, 1}, &ref, &ran);
      if (!ran) return;
      if (report())
        std::printf("gpu GQA 8/2 %-16s rel %.3g (ref %.3g)\n", describe(p.dt, p.flags, 16).c_str(), e.rel(), ref.rel());
      CHECK(e.rel() <= kLogitTol);
      CHECK(ref.rel() <= kLogitTol);
    }
  }
  SECTION("one block: interleaved 0 / 1, causal 0 / 1, scale 0.3, theta 5e5, H/G = 3, chunks of 16 keys") {
    LlamaCfg c;
    c.dim = 24;  // 6 heads of 4, 2 KV heads
    c.heads = 6;
    c.kv_heads = 2;
    c.layers = 1;
    c.max_seq = 64;
    const Weights w = random_llama(c, 5);
    for (const char* chunk : {"", "16"}) {
      EnvGuard env("KERF_OPENCL_ATTN_CHUNK", *chunk ? chunk : nullptr);
      for (int interleaved : {0, 1})
        for (int causal : {0, 1}) {
          INFO("interleaved " << interleaved << " causal " << causal << " chunk '" << chunk << "'");
          art::ArtifactBuilder b;
          build_attention_variant(b, w, c, interleaved, causal, 0.3, 500000.0);
          Model M(b);
          Err ref;
          bool ran = false;
          // Non-causal: each evaluation's queries see its own later keys; decode steps then differ
          // from the prefill, exactly as on the CPU.
          const Err e = compare_sequence(M.m, toks, prefill_then_decode(toks.size(), 30), &ref, &ran);
          if (!ran) return;
          if (report())
            std::printf("gpu attention il %d causal %d chunk '%s' rel %.3g (ref %.3g)\n", interleaved, causal, chunk,
                        e.rel(), ref.rel());
          CHECK(e.rel() <= kLogitTol);
          CHECK(ref.rel() <= kLogitTol);
        }
    }
  }
}

TEST_CASE("GPU backend: deterministic; Rotary bit-identical to the CPU; upload / download round trip; stats", "[gpu]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  art::ArtifactBuilder b;
  build_llama(b, c, w, fmt::DType::kF32, 32, true);
  Model M(b);
  const kerf_model* m = M.m;
  GpuRun g;
  if (!g.open(M.m, 64)) return;
  const std::vector<int32_t> toks(kStoryTokens.begin(), kStoryTokens.begin() + 6);
  const std::vector<float> first = g.eval(toks);
  {  // run to run: the same bits (fixed reduction trees, no atomics)
    GpuRun g2;
    REQUIRE(g2.open(M.m, 64));
    const std::vector<float> again = g2.eval(toks);
    CHECK(std::memcmp(first.data(), again.data(), first.size() * 4) == 0);
  }
  // Op 5 is l0.rope_q (embed, attention_norm, wq, wk, wv, rope_q): upload a known q, rerun it at
  // positions 9.., compare with the CPU's rotary().
  size_t rope = 0;
  while (m->ops[rope].op != fmt::OpCode::kRotary) ++rope;
  const uint32_t qv = m->ops[rope].inputs[0], qo = m->ops[rope].output;
  const int64_t W = m->values[qv].width, T = 5;
  std::mt19937 rng(3);
  const std::vector<float> q = random_vec(rng, size_t(T * W), 2.f);
  REQUIRE(g.b->upload(qv, q.data(), T, &g.err) == KERF_OK);
  std::vector<float> back(q.size());
  REQUIRE(g.b->download(qv, back.data(), T, &g.err) == KERF_OK);
  CHECK(std::memcmp(back.data(), q.data(), q.size() * 4) == 0);
  REQUIRE(g.b->run(rope, T, 9, &g.err) == KERF_OK);
  std::vector<float> rot(q.size()), cpu = q;
  REQUIRE(g.b->download(qo, rot.data(), T, &g.err) == KERF_OK);
  rt::rotary(cpu.data(), T, W, m->ops[rope].head_dim, m->ops[rope].theta, true, 9);
  int64_t mism = 0;
  for (size_t i = 0; i < q.size(); ++i) mism += bits_of(cpu[i]) != bits_of(rot[i]);
  CHECK(mism == 0);
  REQUIRE(g.b->finish(&g.err) == KERF_OK);
  const rt::UnitStats& st = g.b->stats;
  CHECK(st.ops == m->ops.size() + 1);
  CHECK(st.uploads == 1);
  CHECK(st.upload_bytes == uint64_t(T * W * 4));
  CHECK(st.downloads == 3);
  CHECK(st.download_bytes == uint64_t(6 * m->vocab * 4 + 2 * T * W * 4));
  CHECK(st.run_ns > 0);
  CHECK(st.busy_ns > 0);
  CHECK(st.busy_ns < st.run_ns + st.transfer_ns + 10000000000ull);  // device time: a sane number
  CHECK(st.transfer_ns > 0);
  // Errors: positions past n_ctx, values the GPU does not hold.
  CHECK(g.b->run(rope, 2, 63, &g.err) == KERF_ERR_CONTEXT);
  CHECK(g.err.find("rope_q") != std::string::npos);
  CHECK(g.b->download(m->input_value, back.data(), 1, &g.err) != KERF_OK);
}

TEST_CASE("GPU backend: a tiled weight is rejected by name; ops off the GPU are not checked", "[gpu]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  const std::map<std::string, MatPrecision> tiled = {
      {"layers.1.attention.wk.weight",
       MatPrecision{fmt::DType::kQSym, 32, fmt::make_qflags_tiled(4, fmt::ScaleFormat::kF16, 2)}}};
  art::ArtifactBuilder b;
  build_llama(b, c, w, fmt::DType::kQ8Sym, 32, true, 0, tiled);
  Model M(b);
  kerf_session* s = nullptr;
  REQUIRE(kerf_session_create(M.m, 0, &s) == KERF_OK);
  std::unique_ptr<rt::DeviceBackend> g = gpu_or_skip();
  if (!g) {
    kerf_session_free(s);
    return;
  }
  std::vector<uint8_t> mask(M.m->ops.size(), 1);
  std::string err;
  CHECK(g->prepare(s, mask.data(), &err) == KERF_ERR_UNSUPPORTED);
  INFO(err);
  CHECK(err.find("'l1.wk'") != std::string::npos);
  CHECK(err.find("layers.1.attention.wk.weight") != std::string::npos);
  CHECK(err.find("tiled") != std::string::npos);
  // The same model with that op on the CPU prepares.
  for (size_t i = 0; i < M.m->ops.size(); ++i)
    if (M.m->ops[i].name == "l1.wk") mask[i] = 0;
  std::unique_ptr<rt::DeviceBackend> g2 = gpu_or_skip();
  REQUIRE(g2 != nullptr);
  err.clear();
  CHECK(g2->prepare(s, mask.data(), &err) == KERF_OK);
  kerf_session_free(s);
}

TEST_CASE("GPU backend through kerf_session_eval: GPU and mixed CPU / GPU placements match the CPU", "[gpu]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  // 0: every op on the GPU; 1: a mix (decode: two ops of three and every Attention on the GPU;
  // prefill: every other op and the Attention ops), so values cross between the units both ways.
  for (int mix = 0; mix < 2; ++mix) {
    INFO("placement " << (mix ? "mixed" : "all GPU"));
    art::ArtifactBuilder b;
    build_llama(b, c, w, fmt::DType::kQ4Asym, 32, true);
    std::vector<uint8_t> prefill(b.ops().size());
    for (size_t i = 0; i < b.ops().size(); ++i) {
      const bool attn = b.ops()[i].op == fmt::OpCode::kAttention;
      const bool dec = mix == 0 || attn || i % 3 != 0, pre = mix == 0 || attn || i % 2 == 0;
      b.ops()[i].backend = dec ? fmt::Backend::kGpu : fmt::Backend::kCpu;
      prefill[i] = uint8_t(pre ? fmt::Backend::kGpu : fmt::Backend::kCpu);
    }
    b.add_meta_bytes(fmt::meta::kPlacementPrefill, prefill);
    Model M(b);
    char err[1024] = {0};
    kerf_session *gs = nullptr, *cs = nullptr;
    const int rc = kerf_session_create_ex(M.m, 0, 0, &gs, err, sizeof err);
    if (rc != KERF_OK) {
      INFO(err);
      const std::string e = err;
      if (e.find("no OpenCL platform") != std::string::npos || e.find("no OpenCL device") != std::string::npos) {
        WARN("skipped: " << e);
        return;
      }
      FAIL("kerf_session_create_ex: " << e);
    }
    REQUIRE(kerf_session_create_ex(M.m, 0, KERF_SESSION_CPU_ONLY, &cs, err, sizeof err) == KERF_OK);
    const char* dev = kerf_session_unit_device(gs, KERF_UNIT_GPU);
    REQUIRE(dev != nullptr);
    CHECK(std::string(dev).find("OpenCL") == 0);
    const size_t V = size_t(c.vocab);
    Err e;
    size_t at = 0;
    // Prefill, a 3-token evaluation, decode steps (all-token logits), then 5 tokens with only the
    // last row wanted (all_logits = 0).
    for (size_t n : {size_t(9), size_t(1), size_t(3), size_t(1), size_t(1), size_t(5)}) {
      const int all = at + n < kStoryTokens.size() ? 1 : 0;
      std::vector<float> lg(n * V), lc(n * V);
      REQUIRE(kerf_session_eval(gs, kStoryTokens.data() + at, int(n), lg.data(), all) == KERF_OK);
      REQUIRE(kerf_session_eval(cs, kStoryTokens.data() + at, int(n), lc.data(), all) == KERF_OK);
      if (!all) {
        lg.resize(V);
        lc.resize(V);
      }
      e.add(lg, lc);
      at += n;
    }
    REQUIRE(at == kStoryTokens.size());
    if (report()) std::printf("gpu session eval (%s placement) rel %.3g\n", mix ? "mixed" : "all-GPU", e.rel());
    CHECK(e.rel() <= kLogitTol);
    kerf_unit_stats st{};
    REQUIRE(kerf_session_unit_stats(gs, KERF_UNIT_GPU, &st) == KERF_OK);
    CHECK(st.ops > 0);
    CHECK(st.downloads > 0);
    CHECK(st.run_ns > 0);
    if (mix) CHECK(st.uploads > 0);
    else CHECK(st.uploads == 0);
    kerf_session_free(gs);
    kerf_session_free(cs);
  }
}

TEST_CASE("GPU backend timing: decode and prefill, GPU placement vs CPU (numbers, not checks)", "[.][gpu-bench]") {
  // ./kerf_runtime_tests "[gpu-bench]": stories260K and a random model of the s15M shape, q4_asym g32,
  // every op on the GPU vs the CPU executor on 1 thread.
  struct Case {
    const char* name;
    LlamaCfg c;
    bool stories;
  };
  LlamaCfg s15;
  s15.dim = 288;
  s15.hidden = 768;
  s15.layers = 6;
  s15.heads = 6;
  s15.kv_heads = 6;
  s15.vocab = 32000;
  s15.max_seq = 256;
  for (const Case& k : {Case{"stories260K", LlamaCfg{}, true}, Case{"s15M-shape", s15, false}}) {
    LlamaCfg c = k.c;
    const Weights w = k.stories ? stories260k(&c) : random_llama(c, 1);
    REQUIRE(!w.empty());
    art::ArtifactBuilder b;
    build_llama(b, c, w, fmt::DType::kQ4Asym, 32, k.stories);
    for (auto& op : b.ops()) op.backend = fmt::Backend::kGpu;
    Model M(b);
    char err[1024] = {0};
    kerf_session *gs = nullptr, *cs = nullptr;
    if (kerf_session_create_ex(M.m, 0, 0, &gs, err, sizeof err) != KERF_OK) {
      WARN("no GPU session: " << err);
      return;
    }
    REQUIRE(kerf_session_create_ex(M.m, 0, KERF_SESSION_CPU_ONLY, &cs, err, sizeof err) == KERF_OK);
    const int P = 32, N = 32;
    std::vector<int32_t> toks(size_t(P + N));
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 97 + 1) % size_t(c.vocab));
    std::vector<float> lg(size_t(P) * size_t(c.vocab));
    for (kerf_session* s : {gs, cs}) {
      // warm-up (PoCL compiles each kernel for its work-group size at the first launch)
      REQUIRE(kerf_session_eval(s, toks.data(), P, lg.data(), 0) == KERF_OK);
      REQUIRE(kerf_session_eval(s, toks.data() + P, 1, lg.data(), 0) == KERF_OK);
      kerf_session_reset(s);
      kerf_session_reset_stats(s);
      const uint64_t t0 = now_ns_test();
      REQUIRE(kerf_session_eval(s, toks.data(), P, lg.data(), 0) == KERF_OK);
      const uint64_t t1 = now_ns_test();
      for (int i = 0; i < N; ++i) REQUIRE(kerf_session_eval(s, toks.data() + P + i, 1, lg.data(), 0) == KERF_OK);
      const uint64_t t2 = now_ns_test();
      kerf_unit_stats st{};
      const bool gpu = s == gs;
      if (gpu) REQUIRE(kerf_session_unit_stats(s, KERF_UNIT_GPU, &st) == KERF_OK);
      std::printf("%-12s %-4s prefill %d tokens %8.2f ms (%7.1f tok/s)  decode %8.3f ms/token  %s%s\n", k.name,
                  gpu ? "gpu" : "cpu", P, (t1 - t0) / 1e6, P / ((t1 - t0) / 1e9), (t2 - t1) / 1e6 / N,
                  gpu ? "device: " : "", gpu ? kerf_session_unit_device(s, KERF_UNIT_GPU) : "1 thread");
      if (gpu)
        std::printf("%-12s gpu  stats: ops %llu, run %.1f ms, busy %.1f ms, transfers %.1f ms (%llu downloads)\n",
                    k.name, (unsigned long long)st.ops, st.run_ns / 1e6, st.busy_ns / 1e6, st.transfer_ns / 1e6,
                    (unsigned long long)st.downloads);
    }
    kerf_session_free(gs);
    kerf_session_free(cs);
  }
}

#endif  // KERF_HAVE_OPENCL
