// Scalar reference kernels. See kernels.h.
#include "kernels.h"

#include <cmath>
#include <cstring>

namespace kerf::rt {
namespace {

inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void dequant_row(const WeightView& w, int64_t r, float* out) {
  const int64_t C = w.cols;
  switch (w.dtype) {
    case fmt::DType::kF32:
      std::memcpy(out, w.data + 4 * r * C, size_t(C) * 4);
      return;
    case fmt::DType::kF16: {
      const uint8_t* p = w.data + 2 * r * C;
      for (int64_t c = 0; c < C; ++c) out[c] = fmt::f16_to_f32(rd16(p + 2 * c));
      return;
    }
    case fmt::DType::kBF16: {
      const uint8_t* p = w.data + 2 * r * C;
      for (int64_t c = 0; c < C; ++c) out[c] = fmt::bf16_to_f32(rd16(p + 2 * c));
      return;
    }
    case fmt::DType::kQ8Sym: {
      const int64_t g = w.group, ng = (C + g - 1) / g;
      const int8_t* codes = reinterpret_cast<const int8_t*>(w.data) + r * C;
      const uint8_t* scales = w.data + w.rows * C + 2 * r * ng;
      for (int64_t j = 0; j < ng; ++j) {
        const float s = fmt::f16_to_f32(rd16(scales + 2 * j));
        const int64_t c1 = (j + 1) * g < C ? (j + 1) * g : C;
        for (int64_t c = j * g; c < c1; ++c) out[c] = float(codes[c]) * s;
      }
      return;
    }
    case fmt::DType::kQ4Asym: {
      const int64_t g = w.group, ng = (C + g - 1) / g, rb = (C + 1) / 2;
      const uint8_t* codes = w.data + r * rb;
      const uint8_t* scales = w.data + w.rows * rb + 2 * r * ng;
      const uint8_t* mins = w.data + w.rows * rb + 2 * w.rows * ng + 2 * r * ng;
      for (int64_t j = 0; j < ng; ++j) {
        const float s = fmt::f16_to_f32(rd16(scales + 2 * j)), mn = fmt::f16_to_f32(rd16(mins + 2 * j));
        const int64_t c1 = (j + 1) * g < C ? (j + 1) * g : C;
        for (int64_t c = j * g; c < c1; ++c) {
          const unsigned code = (c & 1) ? (codes[c >> 1] >> 4) : (codes[c >> 1] & 0xfu);
          out[c] = float(code) * s + mn;
        }
      }
      return;
    }
    default:
      for (int64_t c = 0; c < C; ++c) out[c] = 0.f;  // unreachable: the loader rejects other dtypes
      return;
  }
}

void linear(const WeightView& w, const float* x, int64_t T, float* y, float* row_buf) {
  const int64_t N = w.rows, K = w.cols;
  for (int64_t n = 0; n < N; ++n) {
    const float* row;
    if (w.dtype == fmt::DType::kF32) {
      row = reinterpret_cast<const float*>(w.data) + n * K;  // payloads are 64-byte aligned in a page-aligned map
    } else {
      dequant_row(w, n, row_buf);
      row = row_buf;
    }
    for (int64_t t = 0; t < T; ++t) y[t * N + n] = dot(row, x + t * K, K);
  }
}

void embedding(const WeightView& table, const int32_t* tokens, int64_t T, float* out) {
  for (int64_t t = 0; t < T; ++t) dequant_row(table, tokens[t], out + t * table.cols);
}

void rmsnorm(const float* x, const float* weight, int64_t T, int64_t D, double eps, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    float ss = 0.f;
    for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / float(D) + float(eps));
    float* o = out + t * D;
    for (int64_t i = 0; i < D; ++i) o[i] = weight[i] * (xr[i] * inv);
  }
}

void rotary(float* x, int64_t T, int64_t width, int64_t head_dim, double theta, bool interleaved, int64_t pos0) {
  const int64_t half = head_dim / 2, heads = width / head_dim;
  for (int64_t t = 0; t < T; ++t) {
    const double pos = double(pos0 + t);
    for (int64_t i = 0; i < half; ++i) {
      const double ang = pos * std::pow(theta, -2.0 * double(i) / double(head_dim));
      const float c = float(std::cos(ang)), s = float(std::sin(ang));
      for (int64_t h = 0; h < heads; ++h) {
        float* xh = x + t * width + h * head_dim;
        const int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = xh[ia], b = xh[ib];
        xh[ia] = a * c - b * s;
        xh[ib] = a * s + b * c;
      }
    }
  }
}

void attention(const AttnShape& s, const float* q, const float* k, const float* v, int64_t T, int64_t pos0,
               float* kcache, float* vcache, float* out, float* scores) {
  const int64_t H = s.n_heads, G = s.n_kv_heads, Dh = s.head_dim, kvw = G * Dh, qw = H * Dh, rep = H / G;
  std::memcpy(kcache + pos0 * kvw, k, size_t(T * kvw) * sizeof(float));
  std::memcpy(vcache + pos0 * kvw, v, size_t(T * kvw) * sizeof(float));
  const float scale = float(s.scale);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n_keys = s.causal ? pos0 + t + 1 : pos0 + T;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / rep;
      const float* qh = q + t * qw + h * Dh;
      float mx = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) {
        scores[j] = dot(qh, kcache + j * kvw + kvh * Dh, Dh) * scale;
        if (scores[j] > mx) mx = scores[j];
      }
      float sum = 0.f;
      for (int64_t j = 0; j < n_keys; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      const float inv = 1.0f / sum;
      float* o = out + t * qw + h * Dh;
      for (int64_t d = 0; d < Dh; ++d) o[d] = 0.f;
      for (int64_t j = 0; j < n_keys; ++j) {
        const float p = scores[j] * inv;
        const float* vj = vcache + j * kvw + kvh * Dh;
        for (int64_t d = 0; d < Dh; ++d) o[d] += p * vj[d];
      }
    }
  }
}

void silu_mul(float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = a[i] / (1.0f + std::exp(-a[i])) * b[i];
}

void add(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace kerf::rt
