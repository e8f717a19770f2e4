// Executor end to end: a tiny random Llama (prefill == decode), stories260K against the fp32
// reference logits, session/context errors.
#include <catch2/catch.hpp>

#include <algorithm>

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
