// Executor end to end: a tiny random Llama (prefill == decode), stories260K against the fp32
// reference logits, session/context errors.
#include <catch2/catch.hpp>

#include <algorithm>

#include "../../runtime-lite/src/model.h"
#include "../../runtime-lite/src/qkernels.h"
#include "test_util.h"

using namespace kt;

namespace {

struct Loaded {
  TempDir dir;
  kerf_model* m = nullptr;
  Loaded(const LlamaCfg& c, const Weights& w, fmt::DType dt, uint32_t group, uint32_t flags = 0) {
    art::ArtifactBuilder b;
    build_llama(b, c, w, dt, group, true, flags);
    const std::string path = dir.file("llama.kerf");
    const std::string e = b.write(path);
    REQUIRE(e == "");
    std::string msg;
    REQUIRE(open_status(path, KERF_OPEN_VERIFY_DATA, &msg, &m) == KERF_OK);
  }
  ~Loaded() { kerf_model_close(m); }
};

double max_abs_diff(const float* a, const float* b, size_t n) {
  double d = 0;
  for (size_t i = 0; i < n; ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

}  // namespace

TEST_CASE("tiny Llama: prefill all-logits == token-by-token decode logits", "[executor]") {
  LlamaCfg c;  // dim 16, 2 layers, 4 heads, 2 kv heads, vocab 512
  const Weights w = random_llama(c, 12);
  const std::pair<fmt::DType, uint32_t> precisions[] = {
      {fmt::DType::kF32, 0},         {fmt::DType::kF16, 0},         {fmt::DType::kQ8Sym, 0},
      {fmt::DType::kQ4Asym, 0},      {fmt::DType::kQSym, 0x103},    {fmt::DType::kQAsym, 0x005},
      {fmt::DType::kTernary, 0x100}, {fmt::DType::kBinary, 0x000},
  };
  for (const auto& [dt, flags] : precisions) {
    char prec[64];
    INFO("precision " << fmt::describe_qtype(dt, flags, 8, prec, sizeof prec));
    Loaded L(c, w, dt, 8, flags);
    const int V = kerf_model_vocab_size(L.m);
    REQUIRE(V == 512);
    const std::vector<int32_t> toks = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 17};
    const int N = int(toks.size());
    kerf_session* s = nullptr;
    REQUIRE(kerf_session_create(L.m, 0, &s) == KERF_OK);
    std::vector<float> pre(size_t(N * V)), dec(size_t(N * V)), last(static_cast<size_t>(V));
    REQUIRE(kerf_session_eval(s, toks.data(), N, pre.data(), 1) == KERF_OK);
    CHECK(kerf_session_pos(s) == N);
    kerf_session_reset(s);
    CHECK(kerf_session_pos(s) == 0);
    for (int i = 0; i < N; ++i) REQUIRE(kerf_session_eval(s, &toks[size_t(i)], 1, dec.data() + i * V, 1) == KERF_OK);
    CHECK(max_abs_diff(pre.data(), dec.data(), pre.size()) <= 1e-5);
    // mixed: prefill 4, then 1, then the rest; last-row-only output
    kerf_session_reset(s);
    REQUIRE(kerf_session_eval(s, toks.data(), 4, last.data(), 0) == KERF_OK);
    CHECK(max_abs_diff(last.data(), pre.data() + 3 * V, size_t(V)) <= 1e-5);
    REQUIRE(kerf_session_eval(s, toks.data() + 4, 1, last.data(), 0) == KERF_OK);
    CHECK(max_abs_diff(last.data(), pre.data() + 4 * V, size_t(V)) <= 1e-5);
    REQUIRE(kerf_session_eval(s, toks.data() + 5, N - 5, last.data(), 0) == KERF_OK);
    CHECK(max_abs_diff(last.data(), pre.data() + (N - 1) * V, size_t(V)) <= 1e-5);
    // logits are finite and not all equal
    bool finite = true;
    for (float x : pre) finite = finite && std::isfinite(x);
    CHECK(finite);
    CHECK(*std::max_element(pre.begin(), pre.begin() + V) > *std::min_element(pre.begin(), pre.begin() + V));
    kerf_session_free(s);
  }
}

TEST_CASE("session arguments and the context limit", "[executor]") {
  LlamaCfg c;
  c.max_seq = 8;
  Loaded L(c, random_llama(c, 2), fmt::DType::kF32, 32);
  kerf_session* s = nullptr;
  CHECK(kerf_session_create(L.m, 9, &s) == KERF_ERR_ARGUMENT);
  CHECK(s == nullptr);
  CHECK(kerf_session_create(L.m, -1, &s) == KERF_ERR_ARGUMENT);
  REQUIRE(kerf_session_create(L.m, 5, &s) == KERF_OK);
  const int32_t toks[6] = {1, 2, 3, 4, 5, 6};
  CHECK(kerf_session_eval(s, toks, 6, nullptr, 0) == KERF_ERR_CONTEXT);
  CHECK(kerf_session_pos(s) == 0);
  REQUIRE(kerf_session_eval(s, toks, 5, nullptr, 0) == KERF_OK);
  CHECK(kerf_session_eval(s, toks, 1, nullptr, 0) == KERF_ERR_CONTEXT);
  kerf_session_reset(s);
  const int32_t bad[2] = {1, 512};
  CHECK(kerf_session_eval(s, bad, 2, nullptr, 0) == KERF_ERR_ARGUMENT);
  const int32_t neg[1] = {-1};
  CHECK(kerf_session_eval(s, neg, 1, nullptr, 0) == KERF_ERR_ARGUMENT);
  CHECK(kerf_session_eval(s, toks, 0, nullptr, 0) == KERF_ERR_ARGUMENT);
  CHECK(kerf_session_eval(s, nullptr, 1, nullptr, 0) == KERF_ERR_ARGUMENT);
  kerf_session_free(s);
}

TEST_CASE("stories260K artifact reproduces the fp32 reference logits", "[executor][stories260K]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  REQUIRE(c.dim == 64);
  REQUIRE(c.kv_heads == 4);
  const std::vector<std::vector<float>> ref = ref_logits();
  REQUIRE(ref.size() == 16);
  REQUIRE(ref[0].size() == 512);
  const std::vector<int32_t> toks = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
  const int N = 16, V = 512;
  auto run = [&](fmt::DType dt, uint32_t group, std::vector<float>* out, uint32_t flags = 0) {
    Loaded L(c, w, dt, group, flags);
    // the tokenizer in the artifact gives the reference tokens
    std::vector<int32_t> enc(64);
    int n = 0;
    REQUIRE(kerf_tokenize(L.m, "Once upon a time, there was a little girl named Lily.", 1, enc.data(), 64, &n) == KERF_OK);
    enc.resize(size_t(n));
    CHECK(enc == toks);
    kerf_session* s = nullptr;
    REQUIRE(kerf_session_create(L.m, 0, &s) == KERF_OK);
    out->assign(size_t(N * V), 0.f);
    REQUIRE(kerf_session_eval(s, toks.data(), N, out->data(), 1) == KERF_OK);
    kerf_session_free(s);
  };
  // Mean NLL of predicting tokens[1:], top-1 agreement and max |diff| against the reference.
  auto score = [&](const std::vector<float>& lg, double* nll, int* agree, double* maxdiff) {
    *nll = 0;
    *agree = 0;
    *maxdiff = 0;
    for (int i = 0; i < N; ++i) {
      const float* row = lg.data() + i * V;
      const int a = int(std::max_element(row, row + V) - row);
      const int b = int(std::max_element(ref[size_t(i)].begin(), ref[size_t(i)].end()) - ref[size_t(i)].begin());
      *agree += a == b;
      for (int j = 0; j < V; ++j) *maxdiff = std::max(*maxdiff, double(std::fabs(row[j] - ref[size_t(i)][size_t(j)])));
      if (i + 1 < N) {
        double mx = row[0], sum = 0;
        for (int j = 0; j < V; ++j) mx = std::max(mx, double(row[j]));
        for (int j = 0; j < V; ++j) sum += std::exp(double(row[j]) - mx);
        *nll += -(double(row[toks[size_t(i + 1)]]) - mx - std::log(sum));
      }
    }
    *nll /= (N - 1);
  };
  std::vector<float> f32, q8, q4;
  double nll, maxdiff;
  int agree;
  run(fmt::DType::kF32, 32, &f32);
  score(f32, &nll, &agree, &maxdiff);
  CHECK(maxdiff <= 1e-3);
  CHECK(agree == N);
  CHECK(nll == Approx(0.10014).margin(2e-4));  // models/README.md: mean NLL of the prompt, fp32
  run(fmt::DType::kQ8Sym, 32, &q8);
  score(q8, &nll, &agree, &maxdiff);
  CHECK(agree >= N - 1);
  CHECK(nll < 0.15);
  run(fmt::DType::kQ4Asym, 32, &q4);
  score(q4, &nll, &agree, &maxdiff);
  WARN("stories260K prompt: q4_asym g32 mean NLL " << nll << ", top-1 agreement " << agree << "/" << N);
  CHECK(nll < 1.0);
  // Generic dtypes (format 1.1). qasym4/f16 is byte-identical to q4_asym: same logits, bit for bit.
  std::vector<float> g;
  run(fmt::DType::kQAsym, 32, &g, fmt::make_qflags(4, fmt::ScaleFormat::kF16));
  CHECK(g == q4);
  run(fmt::DType::kQSym, 32, &g, fmt::make_qflags(8, fmt::ScaleFormat::kF16));
  score(g, &nll, &agree, &maxdiff);
  CHECK(agree >= N - 1);
  CHECK(nll < 0.15);
  run(fmt::DType::kQAsym, 32, &g, fmt::make_qflags(5, fmt::ScaleFormat::kK6));
  score(g, &nll, &agree, &maxdiff);
  WARN("stories260K prompt: qasym5/k6 g32 mean NLL " << nll << ", top-1 agreement " << agree << "/" << N);
  CHECK(nll < 1.0);
}

namespace {

/// Logits of `toks` (all rows) with the fast kernels, or the scalar reference kernels.
std::vector<float> logits_of(kerf_model* m, const std::vector<int32_t>& toks, bool reference, int kv_type = KERF_KV_F32) {
  kerf_session* s = nullptr;
  REQUIRE(kerf_session_create(m, 0, &s) == KERF_OK);
  REQUIRE(kerf_session_set_kv_type(s, kv_type) == KERF_OK);
  REQUIRE(kerf::rt::set_reference_kernels(s, reference) == (kv_type == KERF_KV_F32 || !reference));
  std::vector<float> out(toks.size() * size_t(kerf_model_vocab_size(m)));
  REQUIRE(kerf_session_eval(s, toks.data(), int(toks.size()), out.data(), 1) == KERF_OK);
  kerf_session_free(s);
  return out;
}

/// max |a - b| / max |b|
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 0;
  for (float x : b) scale = std::max(scale, double(std::fabs(x)));
  return max_abs_diff(a.data(), b.data(), a.size()) / scale;
}

}  // namespace

TEST_CASE("an f16 KV cache turns the reference kernels off, and the session then runs the fast path", "[executor][fast]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  Loaded L(c, w, fmt::DType::kF32, 32, 0);
  const std::vector<int32_t> toks = {1, 403, 407, 261};
  const std::vector<float> want = logits_of(L.m, toks, false, KERF_KV_F16);
  kerf_session* s = nullptr;
  REQUIRE(kerf_session_create(L.m, 0, &s) == KERF_OK);
  REQUIRE(kerf::rt::set_reference_kernels(s, true));
  std::vector<float> got(want.size());
  // Sizes the reference path's buffers for 4 tokens, then switches: the fast path must size its own.
  REQUIRE(kerf_session_eval(s, toks.data(), int(toks.size()), got.data(), 1) == KERF_OK);
  REQUIRE(kerf_session_set_kv_type(s, KERF_KV_F16) == KERF_OK);
  CHECK_FALSE(kerf::rt::set_reference_kernels(s, true));  // the reference attention reads f32 caches
  REQUIRE(kerf_session_eval(s, toks.data(), int(toks.size()), got.data(), 1) == KERF_OK);
  kerf_session_free(s);
  CHECK(max_abs_diff(got.data(), want.data(), want.size()) == 0.0);
}

TEST_CASE("fast kernels reproduce the scalar reference kernels within 1e-5 on stories260K", "[executor][fast][stories260K]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  const std::vector<int32_t> toks = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
  const std::pair<fmt::DType, uint32_t> precisions[] = {
      {fmt::DType::kF32, 0}, {fmt::DType::kF16, 0}, {fmt::DType::kQ4Asym, 0},
      {fmt::DType::kQAsym, fmt::make_qflags(5, fmt::ScaleFormat::kK6)}};
  for (const auto& [dt, flags] : precisions) {
    char prec[64];
    INFO("precision " << fmt::describe_qtype(dt, flags, 32, prec, sizeof prec));
    Loaded L(c, w, dt, 32, flags);
    const std::vector<float> ref = logits_of(L.m, toks, true), fast = logits_of(L.m, toks, false);
    const double d = rel_diff(fast, ref);
    WARN(prec << ": fast vs reference kernels, max |diff| / max |logit| = " << d);
    CHECK(d < 1e-5);
    // f16 KV cache: K and V rounded to f16, the rest unchanged
    const double dh = rel_diff(logits_of(L.m, toks, false, KERF_KV_F16), ref);
    WARN(prec << ": f16 KV cache vs reference, max |diff| / max |logit| = " << dh);
    CHECK(dh > 0);
    CHECK(dh < 2e-3);
  }
}

TEST_CASE("tiled weights: int8 activations stay close to the float reference of the same weights", "[executor][fast][stories260K]") {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  const std::vector<int32_t> toks = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
  Loaded L(c, w, fmt::DType::kQSym, 32, fmt::make_qflags_tiled(4, fmt::ScaleFormat::kF16, 2));
  kerf_tensor_info ti;
  REQUIRE(kerf_model_tensor_info(L.m, 0, &ti) == KERF_OK);
  CHECK(std::string(ti.precision) == "qsym4/f16 g32 t4");
  // The reference kernels dequantize the tiled rows and multiply in float; the executor quantizes
  // the activations to int8 per 32 values (relative error ~ 1/254 per block), so the logits move by
  // about 1 % of their range, and the predictions stay.
  const std::vector<float> ref = logits_of(L.m, toks, true), fast = logits_of(L.m, toks, false);
  const double d = rel_diff(fast, ref);
  WARN("qsym4 tiled, int8 activations vs float reference: max |diff| / max |logit| = " << d);
  CHECK(d > 0);
  CHECK(d < 0.03);
  const int V = c.vocab;
  int agree = 0;
  for (size_t i = 0; i < toks.size(); ++i)
    agree += std::max_element(fast.begin() + i * V, fast.begin() + (i + 1) * V) - fast.begin() ==
             std::max_element(ref.begin() + i * V, ref.begin() + (i + 1) * V) - ref.begin();
  CHECK(agree >= int(toks.size()) - 1);
}

TEST_CASE("the integer kernels' ISA: reported, and KERF_ISA naming a missing one fails kerf_model_open", "[executor]") {
  LlamaCfg c;
  TempDir dir;
  art::ArtifactBuilder b;
  build_llama(b, c, random_llama(c, 4), fmt::DType::kF32, 32, false);
  const std::string path = dir.file("m.kerf");
  REQUIRE(b.write(path) == "");
  std::string msg;
  kerf_model* m = nullptr;
  REQUIRE(open_status(path, 0, &msg, &m) == KERF_OK);
  REQUIRE(kerf_model_isa(m) != nullptr);
  CHECK(std::string(kerf_model_isa(m)) == kerf::rt::isa_name(kerf::rt::qkernels_best()->isa));
  CHECK(kerf_model_isa(nullptr) == nullptr);
  // op introspection: the program build_llama writes (embed, 2 x 13 ops, norm, classifier)
  kerf_op_info oi;
  REQUIRE(kerf_model_op_info(m, 0, &oi) == KERF_OK);
  CHECK(std::string(oi.op) == "Embedding");
  CHECK((oi.n_tensors == 1 && oi.tensors[0] == 0));
  const int last = kerf_model_op_count(m) - 1;
  REQUIRE(kerf_model_op_info(m, last, &oi) == KERF_OK);
  CHECK(std::string(oi.op) == "Linear");
  CHECK((oi.n_tensors == 1 && oi.tensors[0] == 0));  // the tied classifier
  REQUIRE(kerf_model_op_info(m, 11, &oi) == KERF_OK);
  CHECK(std::string(oi.op) == "GatedFFN");
  CHECK(oi.n_tensors == 3);
  CHECK(kerf_model_op_info(m, last + 1, &oi) == KERF_ERR_ARGUMENT);
  CHECK(kerf_model_op_info(m, -1, &oi) == KERF_ERR_ARGUMENT);
  CHECK(kerf_model_op_info(m, 0, nullptr) == KERF_ERR_ARGUMENT);
  kerf_model_close(m);
  const char* old = std::getenv("KERF_ISA");
  const std::string saved = old ? old : "";
  setenv("KERF_ISA", "vax", 1);
  CHECK(open_status(path, 0, &msg) == KERF_ERR_UNSUPPORTED);
  CHECK_THAT(msg, Catch::Contains("KERF_ISA=vax") && Catch::Contains("scalar"));
  setenv("KERF_ISA", "scalar", 1);
  REQUIRE(open_status(path, 0, &msg, &m) == KERF_OK);
  CHECK(std::string(kerf_model_isa(m)) == "scalar");
  kerf_model_close(m);
  if (old) setenv("KERF_ISA", saved.c_str(), 1);
  else unsetenv("KERF_ISA");
}
