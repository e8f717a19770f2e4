// Sampler: greedy / temperature / top-p (nucleus) with a seeded xorshift64* generator.
#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#include "kerf/kerf.h"

struct kerf_sampler {
  float temperature = 1.0f;
  float top_p = 1.0f;
  uint64_t state = 1;
  std::vector<float> probs;
  std::vector<int32_t> order;

  uint64_t next() {  // xorshift64*
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
  }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)
};

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

int32_t argmax(const float* logits, int vocab) {
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;  // strict >: lowest id on ties
  return best;
}

}  // namespace

extern "C" {

kerf_sampler* kerf_sampler_create(float temperature, float top_p, uint64_t seed) {
  if (std::isnan(temperature) || std::isnan(top_p)) return nullptr;
  kerf_sampler* s = new (std::nothrow) kerf_sampler;
  if (!s) return nullptr;
  s->temperature = temperature;
  s->top_p = top_p;
  s->state = splitmix64(seed);
  if (s->state == 0) s->state = 0x9E3779B97F4A7C15ULL;
  return s;
}

void kerf_sampler_free(kerf_sampler* s) { delete s; }

int32_t kerf_sampler_sample(kerf_sampler* s, const float* logits, int vocab) {
  if (!s || !logits || vocab < 1) return -1;
  if (!(s->temperature > 0.0f) || !std::isfinite(s->temperature)) return argmax(logits, vocab);
  const int32_t top = argmax(logits, vocab);
  const float mx = logits[top];
  s->probs.resize(size_t(vocab));
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) {
    const float p = std::isnan(logits[i]) ? 0.0f : std::exp((logits[i] - mx) / s->temperature);
    s->probs[size_t(i)] = p;
    sum += p;
  }
  for (float& p : s->probs) p = float(p / sum);
  const float coin = s->uniform();
  if (s->top_p > 0.0f && s->top_p < 1.0f) {
    s->order.resize(size_t(vocab));
    for (int i = 0; i < vocab; ++i) s->order[size_t(i)] = i;
    const std::vector<float>& pr = s->probs;
    std::sort(s->order.begin(), s->order.end(), [&](int32_t a, int32_t b) {
      return pr[size_t(a)] > pr[size_t(b)] || (pr[size_t(a)] == pr[size_t(b)] && a < b);
    });
    // Smallest prefix whose cumulative probability exceeds top_p (llama2.c's sample_topp).
    float cum = 0.0f;
    size_t last = size_t(vocab) - 1;
    for (size_t i = 0; i < size_t(vocab); ++i) {
      cum += pr[size_t(s->order[i])];
      if (cum > s->top_p) {
        last = i;
        break;
      }
    }
    const float r = coin * cum;
    float c = 0.0f;
    for (size_t i = 0; i <= last; ++i) {
      c += pr[size_t(s->order[i])];
      if (r < c) return s->order[i];
    }
    return s->order[last];
  }
  float c = 0.0f;
  for (int i = 0; i < vocab; ++i) {
    c += s->probs[size_t(i)];
    if (coin < c) return i;
  }
  return top;  // rounding: the cdf ended below coin
}

}  // extern "C"
