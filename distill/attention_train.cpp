#include "distill/attention_train.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define KERF_ATTN_X86 1
#else
#define KERF_ATTN_X86 0
#endif

namespace kerf::distill {
namespace {

std::atomic<bool> g_force_scalar{false};

bool avx2_available() {
#if KERF_ATTN_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

/// Shapes and pointers of one call; the kernels work on one (batch row b, KV group g) task, which
/// owns dK / dV of that group (no races between tasks).
struct Dims {
  int64_t B, T, H, G, dh, per, Tpad;
  float scale;
};

/// kt[d * Tpad + j] = x[b, j, g * dh + d]: the group's keys (or values) transposed, so that the
/// scores of one query against consecutive keys are contiguous in j.
void transpose_group(const float* x, const Dims& D, int64_t b, int64_t g, float* kt) {
  const int64_t row = D.G * D.dh;
  for (int64_t j = 0; j < D.T; ++j) {
    const float* src = x + (b * D.T + j) * row + g * D.dh;
    for (int64_t d = 0; d < D.dh; ++d) kt[d * D.Tpad + j] = src[d];
  }
}

// ---------------------------------------------------------------- portable kernels

void forward_scalar(const float* Q, const float* K, const float* V, float* O, float* L, const Dims& D, int64_t b, int64_t g) {
  std::vector<float> kt(static_cast<size_t>(D.dh * D.Tpad)), s(static_cast<size_t>(D.Tpad)), acc(static_cast<size_t>(D.dh));
  transpose_group(K, D, b, g, kt.data());
  const int64_t qrow = D.H * D.dh, krow = D.G * D.dh;
  for (int64_t h = g * D.per; h < (g + 1) * D.per; ++h)
    for (int64_t i = 0; i < D.T; ++i) {
      const float* qi = Q + (b * D.T + i) * qrow + h * D.dh;
      const int64_t n = i + 1;
      float m = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        float a = 0;
        for (int64_t d = 0; d < D.dh; ++d) a += qi[d] * kt[static_cast<size_t>(d * D.Tpad + j)];
        s[static_cast<size_t>(j)] = a * D.scale;
        m = std::max(m, s[static_cast<size_t>(j)]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const float p = std::exp(s[static_cast<size_t>(j)] - m);
        sum += p;
        const float* vj = V + (b * D.T + j) * krow + g * D.dh;
        for (int64_t d = 0; d < D.dh; ++d) acc[static_cast<size_t>(d)] += p * vj[d];
      }
      float* oi = O + (b * D.T + i) * qrow + h * D.dh;
      for (int64_t d = 0; d < D.dh; ++d) oi[d] = acc[static_cast<size_t>(d)] / static_cast<float>(sum);
      L[(b * D.H + h) * D.T + i] = m + static_cast<float>(std::log(sum));
    }
}

void backward_scalar(const float* Q, const float* K, const float* V, const float* O, const float* L, const float* dO, float* dQ,
                     float* dK, float* dV, const Dims& D, int64_t b, int64_t g) {
  std::vector<float> kt(static_cast<size_t>(D.dh * D.Tpad)), vt(static_cast<size_t>(D.dh * D.Tpad));
  std::vector<float> p(static_cast<size_t>(D.Tpad)), ds(static_cast<size_t>(D.Tpad));
  std::vector<float> dk(static_cast<size_t>(D.T * D.dh), 0.0f), dv(static_cast<size_t>(D.T * D.dh), 0.0f), dq(static_cast<size_t>(D.dh));
  transpose_group(K, D, b, g, kt.data());
  transpose_group(V, D, b, g, vt.data());
  const int64_t qrow = D.H * D.dh, krow = D.G * D.dh;
  for (int64_t h = g * D.per; h < (g + 1) * D.per; ++h)
    for (int64_t i = 0; i < D.T; ++i) {
      const float* qi = Q + (b * D.T + i) * qrow + h * D.dh;
      const float* oi = O + (b * D.T + i) * qrow + h * D.dh;
      const float* doi = dO + (b * D.T + i) * qrow + h * D.dh;
      const float lse = L[(b * D.H + h) * D.T + i];
      float Di = 0;
      for (int64_t d = 0; d < D.dh; ++d) Di += doi[d] * oi[d];
      const int64_t n = i + 1;
      for (int64_t j = 0; j < n; ++j) {
        float a = 0, dp = 0;
        for (int64_t d = 0; d < D.dh; ++d) {
          a += qi[d] * kt[static_cast<size_t>(d * D.Tpad + j)];
          dp += doi[d] * vt[static_cast<size_t>(d * D.Tpad + j)];
        }
        const float pj = std::exp(a * D.scale - lse);
        p[static_cast<size_t>(j)] = pj;
        ds[static_cast<size_t>(j)] = pj * (dp - Di) * D.scale;
      }
      std::fill(dq.begin(), dq.end(), 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = K + (b * D.T + j) * krow + g * D.dh;
        float* dkj = dk.data() + j * D.dh;
        float* dvj = dv.data() + j * D.dh;
        for (int64_t d = 0; d < D.dh; ++d) {
          dq[static_cast<size_t>(d)] += ds[static_cast<size_t>(j)] * kj[d];
          dkj[d] += ds[static_cast<size_t>(j)] * qi[d];
          dvj[d] += p[static_cast<size_t>(j)] * doi[d];
        }
      }
      float* dqi = dQ + (b * D.T + i) * qrow + h * D.dh;
      for (int64_t d = 0; d < D.dh; ++d) dqi[d] = dq[static_cast<size_t>(d)];
    }
  for (int64_t j = 0; j < D.T; ++j)
    for (int64_t d = 0; d < D.dh; ++d) {
      dK[(b * D.T + j) * krow + g * D.dh + d] = dk[static_cast<size_t>(j * D.dh + d)];
      dV[(b * D.T + j) * krow + g * D.dh + d] = dv[static_cast<size_t>(j * D.dh + d)];
    }
}

// ---------------------------------------------------------------- AVX2 + FMA kernels (head_dim % 8 == 0)

#if KERF_ATTN_X86
#define KERF_AVX2 __attribute__((target("avx2,fma")))

/// exp(x), x <= 0 expected (clamped at -87.3, where it returns ~1e-38): Cephes expf's range
/// reduction x = n ln2 + r and degree-6 polynomial, scaled by 2^n through the exponent bits.
KERF_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

KERF_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

KERF_AVX2 inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/// s[j] = scale * sum_d q[d] * kt[d * Tpad + j] for j in [0, n8) (n8 a multiple of 8). Four blocks
/// of 8 keys at a time: independent FMA chains (one chain per block would wait on FMA latency).
KERF_AVX2 inline void scores8(const float* q, const float* kt, int64_t dh, int64_t Tpad, float scale, int64_t n8, float* s) {
  int64_t j = 0;
  for (; j + 32 <= n8; j += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t d = 0; d < dh; ++d) {
      const __m256 qd = _mm256_set1_ps(q[d] * scale);
      const float* row = kt + d * Tpad + j;
      a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row), a0);
      a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + 8), a1);
      a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + 16), a2);
      a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + 24), a3);
    }
    _mm256_storeu_ps(s + j, a0);
    _mm256_storeu_ps(s + j + 8, a1);
    _mm256_storeu_ps(s + j + 16, a2);
    _mm256_storeu_ps(s + j + 24, a3);
  }
  for (; j < n8; j += 8) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < dh; ++d) a = _mm256_fmadd_ps(_mm256_set1_ps(q[d] * scale), _mm256_loadu_ps(kt + d * Tpad + j), a);
    _mm256_storeu_ps(s + j, a);
  }
}

KERF_AVX2 void forward_avx2(const float* Q, const float* K, const float* V, float* O, float* L, const Dims& D, int64_t b, int64_t g) {
  std::vector<float> kt(static_cast<size_t>(D.dh * D.Tpad)), s(static_cast<size_t>(D.Tpad));
  transpose_group(K, D, b, g, kt.data());
  const int64_t qrow = D.H * D.dh, krow = D.G * D.dh, chunks = D.dh / 8;
  for (int64_t h = g * D.per; h < (g + 1) * D.per; ++h)
    for (int64_t i = 0; i < D.T; ++i) {
      const float* qi = Q + (b * D.T + i) * qrow + h * D.dh;
      const int64_t n = i + 1, n8 = n / 8 * 8;
      scores8(qi, kt.data(), D.dh, D.Tpad, D.scale, n8, s.data());
      for (int64_t j = n8; j < n; ++j) {
        float a = 0;
        for (int64_t d = 0; d < D.dh; ++d) a += qi[d] * D.scale * kt[static_cast<size_t>(d * D.Tpad + j)];
        s[static_cast<size_t>(j)] = a;
      }
      __m256 mv = _mm256_set1_ps(-INFINITY);
      for (int64_t j = 0; j < n8; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s.data() + j));
      float m = hmax(mv);
      for (int64_t j = n8; j < n; ++j) m = std::max(m, s[static_cast<size_t>(j)]);
      const __m256 mm = _mm256_set1_ps(m);
      __m256 sv = _mm256_setzero_ps();
      for (int64_t j = 0; j < n8; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s.data() + j), mm));
        _mm256_storeu_ps(s.data() + j, e);
        sv = _mm256_add_ps(sv, e);
      }
      float sum = hsum(sv);
      for (int64_t j = n8; j < n; ++j) {
        s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - m);
        sum += s[static_cast<size_t>(j)];
      }
      const float* vb = V + b * D.T * krow + g * D.dh;
      float* oi = O + (b * D.T + i) * qrow + h * D.dh;
      const __m256 inv = _mm256_set1_ps(1.0f / sum);
      if (chunks == 1) {  // head_dim 8: four register accumulators (FMA latency)
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 3 < n; j += 4) {
          a0 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j)]), _mm256_loadu_ps(vb + j * krow), a0);
          a1 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j + 1)]), _mm256_loadu_ps(vb + (j + 1) * krow), a1);
          a2 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j + 2)]), _mm256_loadu_ps(vb + (j + 2) * krow), a2);
          a3 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j + 3)]), _mm256_loadu_ps(vb + (j + 3) * krow), a3);
        }
        for (; j < n; ++j) a0 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j)]), _mm256_loadu_ps(vb + j * krow), a0);
        _mm256_storeu_ps(oi, _mm256_mul_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), inv));
      } else {
        for (int64_t c = 0; c < chunks; ++c) {
          __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
          int64_t j = 0;
          for (; j + 1 < n; j += 2) {
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j)]), _mm256_loadu_ps(vb + j * krow + 8 * c), a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j + 1)]), _mm256_loadu_ps(vb + (j + 1) * krow + 8 * c), a1);
          }
          if (j < n) a0 = _mm256_fmadd_ps(_mm256_set1_ps(s[static_cast<size_t>(j)]), _mm256_loadu_ps(vb + j * krow + 8 * c), a0);
          _mm256_storeu_ps(oi + 8 * c, _mm256_mul_ps(_mm256_add_ps(a0, a1), inv));
        }
      }
      L[(b * D.H + h) * D.T + i] = m + std::log(sum);
    }
}

KERF_AVX2 void backward_avx2(const float* Q, const float* K, const float* V, const float* O, const float* L, const float* dO, float* dQ,
                             float* dK, float* dV, const Dims& D, int64_t b, int64_t g) {
  std::vector<float> kt(static_cast<size_t>(D.dh * D.Tpad)), vt(static_cast<size_t>(D.dh * D.Tpad));
  std::vector<float> p(static_cast<size_t>(D.Tpad)), ds(static_cast<size_t>(D.Tpad)), dp(static_cast<size_t>(D.Tpad));
  std::vector<float> dk(static_cast<size_t>(D.T * D.dh), 0.0f), dv(static_cast<size_t>(D.T * D.dh), 0.0f);
  transpose_group(K, D, b, g, kt.data());
  transpose_group(V, D, b, g, vt.data());
  const int64_t qrow = D.H * D.dh, krow = D.G * D.dh, chunks = D.dh / 8;
  const float* kb = K + b * D.T * krow + g * D.dh;
  for (int64_t h = g * D.per; h < (g + 1) * D.per; ++h)
    for (int64_t i = 0; i < D.T; ++i) {
      const float* qi = Q + (b * D.T + i) * qrow + h * D.dh;
      const float* oi = O + (b * D.T + i) * qrow + h * D.dh;
      const float* doi = dO + (b * D.T + i) * qrow + h * D.dh;
      const float lse = L[(b * D.H + h) * D.T + i];
      float Di = 0;
      for (int64_t d = 0; d < D.dh; ++d) Di += doi[d] * oi[d];
      const int64_t n = i + 1, n8 = n / 8 * 8;
      scores8(qi, kt.data(), D.dh, D.Tpad, D.scale, n8, p.data());
      scores8(doi, vt.data(), D.dh, D.Tpad, 1.0f, n8, dp.data());
      const __m256 lv = _mm256_set1_ps(lse), dv_i = _mm256_set1_ps(Di), sc = _mm256_set1_ps(D.scale);
      for (int64_t j = 0; j < n8; j += 8) {
        const __m256 pj = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.data() + j), lv));
        _mm256_storeu_ps(p.data() + j, pj);
        _mm256_storeu_ps(ds.data() + j, _mm256_mul_ps(_mm256_mul_ps(pj, _mm256_sub_ps(_mm256_loadu_ps(dp.data() + j), dv_i)), sc));
      }
      for (int64_t j = n8; j < n; ++j) {
        float a = 0, dpj = 0;
        for (int64_t d = 0; d < D.dh; ++d) {
          a += qi[d] * D.scale * kt[static_cast<size_t>(d * D.Tpad + j)];
          dpj += doi[d] * vt[static_cast<size_t>(d * D.Tpad + j)];
        }
        const float pj = std::exp(a - lse);
        p[static_cast<size_t>(j)] = pj;
        ds[static_cast<size_t>(j)] = pj * (dpj - Di) * D.scale;
      }
      float* dqi = dQ + (b * D.T + i) * qrow + h * D.dh;
      if (chunks == 1) {  // head_dim 8: registers only, four dq accumulators (FMA latency)
        const __m256 q0 = _mm256_loadu_ps(qi), do0 = _mm256_loadu_ps(doi);
        __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps(), d2 = _mm256_setzero_ps(), d3 = _mm256_setzero_ps();
        auto one = [&](int64_t j, __m256& acc) KERF_AVX2 {
          const __m256 dsj = _mm256_set1_ps(ds[static_cast<size_t>(j)]);
          acc = _mm256_fmadd_ps(dsj, _mm256_loadu_ps(kb + j * krow), acc);
          float* dkj = dk.data() + j * 8;
          float* dvj = dv.data() + j * 8;
          _mm256_storeu_ps(dkj, _mm256_fmadd_ps(dsj, q0, _mm256_loadu_ps(dkj)));
          _mm256_storeu_ps(dvj, _mm256_fmadd_ps(_mm256_set1_ps(p[static_cast<size_t>(j)]), do0, _mm256_loadu_ps(dvj)));
        };
        int64_t j = 0;
        for (; j + 3 < n; j += 4) {
          one(j, d0);
          one(j + 1, d1);
          one(j + 2, d2);
          one(j + 3, d3);
        }
        for (; j < n; ++j) one(j, d0);
        _mm256_storeu_ps(dqi, _mm256_add_ps(_mm256_add_ps(d0, d1), _mm256_add_ps(d2, d3)));
      } else {
        for (int64_t c = 0; c < chunks; ++c) {
          const __m256 qc = _mm256_loadu_ps(qi + 8 * c), doc = _mm256_loadu_ps(doi + 8 * c);
          __m256 acc = _mm256_setzero_ps();
          for (int64_t j = 0; j < n; ++j) {
            const __m256 dsj = _mm256_set1_ps(ds[static_cast<size_t>(j)]);
            acc = _mm256_fmadd_ps(dsj, _mm256_loadu_ps(kb + j * krow + 8 * c), acc);
            float* dkj = dk.data() + j * D.dh + 8 * c;
            float* dvj = dv.data() + j * D.dh + 8 * c;
            _mm256_storeu_ps(dkj, _mm256_fmadd_ps(dsj, qc, _mm256_loadu_ps(dkj)));
            _mm256_storeu_ps(dvj, _mm256_fmadd_ps(_mm256_set1_ps(p[static_cast<size_t>(j)]), doc, _mm256_loadu_ps(dvj)));
          }
          _mm256_storeu_ps(dqi + 8 * c, acc);
        }
      }
    }
  for (int64_t j = 0; j < D.T; ++j)
    for (int64_t d = 0; d < D.dh; ++d) {
      dK[(b * D.T + j) * krow + g * D.dh + d] = dk[static_cast<size_t>(j * D.dh + d)];
      dV[(b * D.T + j) * krow + g * D.dh + d] = dv[static_cast<size_t>(j * D.dh + d)];
    }
}
#endif

bool use_avx2(int64_t dh) {
#if KERF_ATTN_X86
  return avx2_available() && !g_force_scalar.load() && dh % 8 == 0;
#else
  (void)dh;
  return false;
#endif
}

Dims dims_of(const at::Tensor& q, int64_t H, int64_t G, int64_t dh, double scale) {
  Dims D{};
  D.B = q.size(0);
  D.T = q.size(1);
  D.H = H;
  D.G = G;
  D.dh = dh;
  D.per = H / G;
  D.Tpad = (D.T + 7) / 8 * 8;
  D.scale = static_cast<float>(scale);
  return D;
}

struct CausalAttention : public torch::autograd::Function<CausalAttention> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                            int64_t H, int64_t G, int64_t dh, double scale) {
    const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    const Dims D = dims_of(q, H, G, dh, scale);
    at::Tensor out = at::empty_like(q), lse = at::empty({D.B, H, D.T}, q.options());
    const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>();
    float *O = out.data_ptr<float>(), *L = lse.data_ptr<float>();
    const bool avx = use_avx2(dh);
    at::parallel_for(0, D.B * G, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
#if KERF_ATTN_X86
        if (avx) {
          forward_avx2(Q, K, V, O, L, D, t / G, t % G);
          continue;
        }
#endif
        (void)avx;
        forward_scalar(Q, K, V, O, L, D, t / G, t % G);
      }
    });
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["H"] = H;
    ctx->saved_data["G"] = G;
    ctx->saved_data["dh"] = dh;
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const int64_t H = ctx->saved_data["H"].toInt(), G = ctx->saved_data["G"].toInt(), dh = ctx->saved_data["dh"].toInt();
    const Dims D = dims_of(q, H, G, dh, ctx->saved_data["scale"].toDouble());
    const at::Tensor go = grads[0].contiguous();
    at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
    const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>(), *O = out.data_ptr<float>(),
                *L = lse.data_ptr<float>(), *dO = go.data_ptr<float>();
    float *dQ = dq.data_ptr<float>(), *dK = dk.data_ptr<float>(), *dV = dv.data_ptr<float>();
    const bool avx = use_avx2(dh);
    at::parallel_for(0, D.B * G, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
#if KERF_ATTN_X86
        if (avx) {
          backward_avx2(Q, K, V, O, L, dO, dQ, dK, dV, D, t / G, t % G);
          continue;
        }
#endif
        (void)avx;
        backward_scalar(Q, K, V, O, L, dO, dQ, dK, dV, D, t / G, t % G);
      }
    });
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor causal_gqa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t n_heads, int64_t n_kv_heads,
                                int64_t head_dim, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "causal_gqa_attention: q, k, v must be float32");
  TORCH_CHECK(n_heads > 0 && n_kv_heads > 0 && head_dim > 0 && n_heads % n_kv_heads == 0,
              "causal_gqa_attention: n_heads ", n_heads, " must be a positive multiple of n_kv_heads ", n_kv_heads);
  TORCH_CHECK(q.dim() == 3 && q.size(2) == n_heads * head_dim, "causal_gqa_attention: q must be [B, T, ", n_heads * head_dim, "], got ",
              q.sizes());
  TORCH_CHECK(k.dim() == 3 && k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(2) == n_kv_heads * head_dim &&
                  v.sizes() == k.sizes(),
              "causal_gqa_attention: k and v must be [B, T, ", n_kv_heads * head_dim, "], got ", k.sizes(), " and ", v.sizes());
  return CausalAttention::apply(q, k, v, n_heads, n_kv_heads, head_dim, scale);
}

const char* causal_attention_kernel() { return avx2_available() && !g_force_scalar.load() ? "avx2" : "scalar"; }

void force_scalar_attention(bool on) { g_force_scalar.store(on); }

}  // namespace kerf::distill
