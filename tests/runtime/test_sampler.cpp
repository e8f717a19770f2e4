// Sampler: greedy argmax, seeded determinism, nucleus restriction.
#include <catch2/catch.hpp>

#include <map>
#include <vector>

#include "kerf/kerf.h"

TEST_CASE("greedy sampling is argmax with the lowest id on ties", "[sampler]") {
  kerf_sampler* s = kerf_sampler_create(0.f, 0.9f, 1);
  REQUIRE(s);
  const float l[5] = {0.f, 3.f, -1.f, 3.f, 2.f};
  for (int i = 0; i < 10; ++i) CHECK(kerf_sampler_sample(s, l, 5) == 1);
  CHECK(kerf_sampler_sample(s, nullptr, 5) == -1);
  CHECK(kerf_sampler_sample(s, l, 0) == -1);
  kerf_sampler_free(s);
}

TEST_CASE("same seed, same draws; another seed, other draws", "[sampler]") {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[size_t(i)] = float(i % 7) * 0.3f;
  auto draws = [&](uint64_t seed) {
    kerf_sampler* s = kerf_sampler_create(1.0f, 1.0f, seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(kerf_sampler_sample(s, logits.data(), 50));
    kerf_sampler_free(s);
    return out;
  };
  const std::vector<int32_t> a = draws(42), b = draws(42), c = draws(43), z = draws(0);
  CHECK(a == b);
  CHECK(a != c);
  CHECK(z != a);
  for (int32_t t : a) CHECK((t >= 0 && t < 50));
}

TEST_CASE("temperature sampling follows the softmax distribution", "[sampler]") {
  const float l[3] = {0.f, std::log(3.f), std::log(6.f)};  // probabilities 0.1, 0.3, 0.6
  kerf_sampler* s = kerf_sampler_create(1.0f, 1.0f, 7);
  int count[3] = {0, 0, 0};
  const int N = 20000;
  for (int i = 0; i < N; ++i) ++count[kerf_sampler_sample(s, l, 3)];
  CHECK(count[0] / double(N) == Approx(0.1).margin(0.015));
  CHECK(count[1] / double(N) == Approx(0.3).margin(0.015));
  CHECK(count[2] / double(N) == Approx(0.6).margin(0.015));
  kerf_sampler_free(s);
}

TEST_CASE("top-p restricts draws to the nucleus", "[sampler]") {
  // probabilities 0.5, 0.3, 0.1, 0.1 (ids 3, 0, 1, 2): top_p 0.7 -> nucleus {3, 0}
  const float l[4] = {std::log(0.3f), std::log(0.1f), std::log(0.1f), std::log(0.5f)};
  kerf_sampler* s = kerf_sampler_create(1.0f, 0.7f, 3);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 5000; ++i) ++seen[kerf_sampler_sample(s, l, 4)];
  CHECK(seen.count(1) == 0);
  CHECK(seen.count(2) == 0);
  REQUIRE(seen.count(0) == 1);
  REQUIRE(seen.count(3) == 1);
  CHECK(seen[3] / 5000.0 == Approx(0.5 / 0.8).margin(0.03));  // renormalized within the nucleus
  kerf_sampler_free(s);
  // a tiny top_p keeps only the most likely token
  kerf_sampler* g = kerf_sampler_create(1.0f, 0.01f, 3);
  for (int i = 0; i < 100; ++i) CHECK(kerf_sampler_sample(g, l, 4) == 3);
  kerf_sampler_free(g);
}
