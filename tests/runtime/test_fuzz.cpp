// Robustness: mutated artifacts (hashes re-fixed so that the parsers, not the checksums, see the
// damage) must open cleanly or fail with a message, never crash; whatever opens must run.
#include <catch2/catch.hpp>

#include "test_util.h"

using namespace kt;

TEST_CASE("mutated artifacts never crash the loader or the executor", "[loader][fuzz]") {
  LlamaCfg c;
  c.vocab = 32;
  c.max_seq = 16;
  art::ArtifactBuilder b;
  // Mostly q4_asym, plus generic quantized dtypes (format 1.1) so that mutated flags are exercised.
  const std::map<std::string, MatPrecision> generic = {
      {"layers.0.attention.wq.weight", {fmt::DType::kQSym, 8, fmt::make_qflags(3, fmt::ScaleFormat::kK6)}},
      {"layers.0.feed_forward.w2.weight", {fmt::DType::kTernary, 8, fmt::make_qflags(0, fmt::ScaleFormat::kF16)}},
      {"layers.1.attention.wv.weight", {fmt::DType::kQAsym, 8, fmt::make_qflags(5, fmt::ScaleFormat::kK6)}},
  };
  build_llama(b, c, random_llama(c, 8), fmt::DType::kQ4Asym, 8, false, 0, generic);
  std::string err;
  const std::vector<uint8_t> good = b.serialize(&err);
  REQUIRE(err.empty());
  const fmt::FileHeader h = header_of(good);
  TempDir d;
  const std::string path = d.file("fuzz.kerf");
  std::mt19937 rng(1234);
  int opened = 0, rejected = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::vector<uint8_t> f = good;
    // Mutate 1-3 bytes in the hashed region (header fields or sections).
    const int n = 1 + int(rng() % 3);
    for (int k = 0; k < n; ++k) {
      const bool in_header = rng() % 4 == 0;
      const uint64_t lo = in_header ? 16 : h.header_size;
      const uint64_t hi = in_header ? 112 : h.program_offset + h.program_size;
      const uint64_t at = lo + rng() % (hi - lo);
      f[at] = (rng() % 2) ? uint8_t(rng()) : uint8_t(f[at] ^ (1u << (rng() % 8)));
    }
    refix_hashes(f);
    write_file(path, f);
    kerf_model* m = nullptr;
    char msg[512];
    const int rc = kerf_model_open(path.c_str(), 0, &m, msg, sizeof msg);
    if (rc != KERF_OK) {
      ++rejected;
      REQUIRE(m == nullptr);
      REQUIRE(std::strlen(msg) > 0);
      continue;
    }
    ++opened;
    kerf_session* s = nullptr;
    if (kerf_session_create(m, 4, &s) == KERF_OK) {
      std::vector<float> logits(size_t(kerf_model_vocab_size(m)) * 3);
      const int32_t toks[3] = {1, 0, 2};
      const int V = kerf_model_vocab_size(m);
      if (V > 2) kerf_session_eval(s, toks, 3, logits.data(), 1);
      kerf_session_free(s);
    }
    kerf_model_close(m);
  }
  CHECK(rejected > 0);
  CHECK(opened + rejected == 1500);
}
