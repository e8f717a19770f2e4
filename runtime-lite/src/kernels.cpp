// CPU kernels: the scalar reference, then the executor's fast kernels. See kernels.h.
#include "kernels.h"

#include <cmath>
#include <cstring>

#include "qkernels.h"

// No fused multiply-add anywhere in this file, whatever -ffp-contract / -march the build uses: the
// dequantization arithmetic is normative (SPEC 6.4: s * q is rounded to f32 before a min is added),
// rotary_fast must match rotary bit for bit, and the fast kernels, whose summation order is written
// out (16 partial sums, a fixed tree), then give the same bits on every instruction set.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

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

namespace {

/// 6-bit value i of a kK6 packed array (LSB first, value i at bit offset 6 i).
inline uint32_t get6(const uint8_t* p, uint64_t i) {
  const uint64_t bit = 6 * i, k = bit >> 3;
  const uint32_t sh = uint32_t(bit & 7u);
  uint32_t v = uint32_t(p[k]) >> sh;
  if (sh > 2) v |= uint32_t(p[k + 1]) << (8 - sh);  // straddles into the next byte
  return v & 63u;
}

/// Five base-3 digits (as q = digit - 1, in float) of every byte; bytes >= 243 decode as byte mod 243.
struct TernaryLut {
  float q[256][5];
  constexpr TernaryLut() : q() {
    for (int b = 0; b < 256; ++b) {
      int v = b % 243;
      for (int t = 0; t < 5; ++t) {
        q[b][t] = float(v % 3 - 1);
        v /= 3;
      }
    }
  }
};
constexpr TernaryLut kTernaryLut{};

/// Writes the float value of each element's integer q (kQSym: u - 2^(b-1); kQAsym: u; kTernary,
/// kBinary: -1 / 0 / +1) of one row's codes into out[0..C). Exact: |q| <= 255.
void decode_codes(fmt::DType t, uint32_t b, const uint8_t* p, uint64_t rb, int64_t C, float* out) {
  if (t == fmt::DType::kTernary) {
    const int64_t full = C / 5;
    for (int64_t k = 0; k < full; ++k) std::memcpy(out + 5 * k, kTernaryLut.q[p[k]], 5 * sizeof(float));
    for (int64_t c = 5 * full; c < C; ++c) out[c] = kTernaryLut.q[p[full]][c - 5 * full];
    return;
  }
  if (t == fmt::DType::kBinary) {  // bit set: +1, clear: -1 (branch-free: 2 * bit - 1)
    const int64_t full = C / 8;
    for (int64_t k = 0; k < full; ++k) {
      const unsigned v = p[k];
      for (int e = 0; e < 8; ++e) out[8 * k + e] = float(int((v >> e) & 1u) * 2 - 1);
    }
    for (int64_t c = 8 * full; c < C; ++c) out[c] = float(int((p[full] >> (c & 7)) & 1u) * 2 - 1);
    return;
  }
  const int off = t == fmt::DType::kQSym ? (1 << (b - 1)) : 0;
  if (b == 8) {
    for (int64_t c = 0; c < C; ++c) out[c] = float(int(p[c]) - off);
    return;
  }
  if (b == 4 || b == 2) {  // fields never straddle bytes: whole bytes, then the tail
    const int per = 8 / int(b);
    const unsigned mask = (1u << b) - 1;
    const int64_t full = C / per;
    for (int64_t k = 0; k < full; ++k) {
      const unsigned v = p[k];
      for (int e = 0; e < per; ++e) out[per * k + e] = float(int((v >> (e * int(b))) & mask) - off);
    }
    for (int64_t c = per * full; c < C; ++c)
      out[c] = float(int((p[full] >> ((c - per * full) * int(b))) & mask) - off);
    return;
  }
  // Any b: a 64-bit little-endian bit buffer, refilled to >= 56 valid bits, drained b bits a code.
  const uint8_t* end = p + rb;
  const uint64_t mask = (uint64_t(1) << b) - 1;
  uint64_t buf = 0;
  uint32_t n = 0;  // valid bits in buf
  int64_t c = 0;
  while (c < C) {
    if (end - p >= 8) {  // whole-word refill; bits above n are the true next bits, so OR is safe
      uint64_t v;
      std::memcpy(&v, p, 8);
      buf |= v << n;
      p += (63 - n) >> 3;
      n |= 56;
    } else {
      while (n <= 56 && p < end) {
        buf |= uint64_t(*p++) << n;
        n += 8;
      }
    }
    int64_t k = int64_t(n / b);
    if (k == 0) break;  // cannot happen for a valid payload (rb * 8 >= C * b)
    if (k > C - c) k = C - c;
    for (; k > 0; --k, ++c) {
      out[c] = float(int(buf & mask) - off);
      buf >>= b;
      n -= b;
    }
  }
  for (; c < C; ++c) out[c] = 0.f;
}

/// Generic quantized dtypes (kQSym .. kBinary): decode the codes, then apply each group's parameters.
void dequant_generic(const WeightView& w, int64_t r, float* out) {
  const int64_t C = w.cols, g = w.group, ng = (C + g - 1) / g;
  const fmt::QLayout L = fmt::qlayout(w.dtype, uint64_t(w.rows), uint64_t(C), uint64_t(g), w.flags);
  decode_codes(w.dtype, fmt::qflags_bits(w.flags), w.data + uint64_t(r) * L.row_bytes, L.row_bytes, C, out);
  const bool asym = w.dtype == fmt::DType::kQAsym, k6 = fmt::qflags_scale(w.flags) == fmt::ScaleFormat::kK6;
  for (int64_t j = 0; j < ng; ++j) {
    const uint64_t i = uint64_t(r) * uint64_t(ng) + uint64_t(j);  // flat group index
    float s, m = 0.f;
    if (k6) {
      const uint64_t sb = i / fmt::kK6GroupsPerSuper;
      const float d = fmt::f16_to_f32(rd16(w.data + L.super_scale + 2 * sb));
      s = d * float(get6(w.data + L.scale, i));
      if (asym) {
        const float dm = fmt::f16_to_f32(rd16(w.data + L.super_min + 2 * sb));
        m = dm * float(get6(w.data + L.min, i));
      }
    } else {
      s = fmt::f16_to_f32(rd16(w.data + L.scale + 2 * i));
      if (asym) m = fmt::f16_to_f32(rd16(w.data + L.min + 2 * i));
    }
    const int64_t c0 = j * g, c1 = C - c0 > g ? c0 + g : C;
    if (asym) {
      for (int64_t c = c0; c < c1; ++c) out[c] = s * out[c] + m;
    } else {
      for (int64_t c = c0; c < c1; ++c) out[c] = s * out[c];
    }
  }
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
    case fmt::DType::kQSym: case fmt::DType::kQAsym: case fmt::DType::kTernary: case fmt::DType::kBinary: {
      TiledView tv;
      if (tiled_view(w, &tv)) {
        dequant_row_tiled(tv, r, out);
        return;
      }
      if (fmt::qflags_valid(w.dtype, w.flags) && w.group >= 1) {
        dequant_generic(w, r, out);
        return;
      }
      for (int64_t c = 0; c < C; ++c) out[c] = 0.f;  // unreachable: the loader rejects bad flags
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

void rope_table_fill(int64_t head_dim, double theta, int64_t p0, int64_t p1, float* table) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(theta, -2.0 * double(i) / double(head_dim));
    for (int64_t p = p0; p < p1; ++p) {
      const double ang = double(p) * inv_freq;  // == rotary()'s pos * std::pow(...)
      table[p * head_dim + i] = float(std::cos(ang));
      table[p * head_dim + half + i] = float(std::sin(ang));
    }
  }
}

void rotary_fast(const float* x, float* out, int64_t T, int64_t width, int64_t head_dim, bool interleaved,
                 int64_t pos0, const float* table) {
  const int64_t half = head_dim / 2, heads = width / head_dim;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = table + (pos0 + t) * head_dim;
    const float* s = c + half;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xh = x + t * width + h * head_dim;
      float* oh = out + t * width + h * head_dim;
      if (interleaved) {
        for (int64_t i = 0; i < half; ++i) {
          const float a = xh[2 * i], b = xh[2 * i + 1];
          oh[2 * i] = a * c[i] - b * s[i];
          oh[2 * i + 1] = a * s[i] + b * c[i];
        }
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const float a = xh[i], b = xh[i + half];
          oh[i] = a * c[i] - b * s[i];
          oh[i + half] = a * s[i] + b * c[i];
        }
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

// ---------------------------------------------------------------- fast kernels

// Function multiversioning: each KERF_CLONES function is compiled for x86-64-v4 (AVX-512), v3 (AVX2)
// and the baseline, and the dynamic loader's ifunc resolver picks one per process. Elsewhere (other
// architectures, compilers, or libcs without ifunc) the baseline loops, which -O3 auto-vectorizes.
// The clones are internal functions (*_cloned) behind the public ones of kernels.h: GCC would emit a
// resolver in every file that sees a cloned declaration, and clang ignores the attribute on a
// definition whose earlier declaration lacks it.
#if defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && !defined(KERF_NO_MULTIVERSION) && \
    ((defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 12))
#define KERF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERF_CLONES
#endif
// Helpers are forced inline so that each clone gets them compiled for its instruction set.
#if defined(__GNUC__)
#define KERF_INLINE inline __attribute__((always_inline))
#else
#define KERF_INLINE inline
#endif

namespace {

constexpr int kLanes = 16;  // partial sums: one AVX-512 register, two AVX2, four SSE

KERF_INLINE float bits_to_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

/// Exact branch-free f16 -> f32: (em << 13) * 2^112 rebiases normals and subnormals alike (the
/// product is exact), inf / NaN (exponent 31) are built directly.
KERF_INLINE float h2f(uint16_t h) {
  const uint32_t em = h & 0x7fffu, sign = uint32_t(h & 0x8000u) << 16;
  const float mag = bits_to_f32(em << 13) * 0x1p112f;
  uint32_t b;
  std::memcpy(&b, &mag, 4);
  b = em >= 0x7c00u ? (0x7f800000u | (em << 13)) : b;
  return bits_to_f32(b | sign);
}

/// Sum of 16 partial sums in a fixed tree.
KERF_INLINE float hsum(const float* acc) {
  float a8[8], a4[4];
  for (int j = 0; j < 8; ++j) a8[j] = acc[j] + acc[j + 8];
  for (int j = 0; j < 4; ++j) a4[j] = a8[j] + a8[j + 4];
  return (a4[0] + a4[2]) + (a4[1] + a4[3]);
}

KERF_INLINE float dot16(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

KERF_INLINE float dot16(const float* a, const uint16_t* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * h2f(b[i + j]);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * h2f(b[i]);
  return s;
}

KERF_INLINE void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
KERF_INLINE void axpy(float* y, float a, const uint16_t* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * h2f(x[i]);
}

/// exp(x): x = k ln2 + r, |r| <= ln2 / 2 (k by the 1.5 * 2^23 rounding trick, ln2 in two parts),
/// exp(r) by the Cephes expf polynomial, 2^k put into the exponent field.
KERF_INLINE float expf_fast(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);  // NaN passes through (both compares false)
  const float t = x * 1.44269504088896341f + 12582912.f;  // 12582912 = 1.5 * 2^23
  const float k = t - 12582912.f;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  const float p = ((((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                     1.6666665459e-1f) * r + 5.0000001201e-1f) * r) * r + r + 1.f;
  uint32_t tb;
  std::memcpy(&tb, &t, 4);
  return p * bits_to_f32((tb - 0x4b400000u + 127u) << 23);  // k = the low bits of t's mantissa
}

template <class KV>
KERF_INLINE void attention_items(const AttnShape& s, const float* q, int64_t Tq, int64_t qpos0, int64_t n_kv,
                                 const KV* kcache, const KV* vcache, int64_t n_ctx, int64_t i0, int64_t i1,
                                 float* out, float* scores) {
  const int64_t H = s.n_heads, Dh = s.head_dim, qw = H * Dh, rep = H / s.n_kv_heads;
  const float scale = float(s.scale);
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t h = item / Tq, t = item % Tq;
    const KV* kc = kcache + (h / rep) * n_ctx * Dh;
    const KV* vc = vcache + (h / rep) * n_ctx * Dh;
    const int64_t n_keys = s.causal ? qpos0 + t + 1 : n_kv;
    const float* qh = q + t * qw + h * Dh;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n_keys; ++j) {
      scores[j] = dot16(qh, kc + j * Dh, Dh) * scale;
      mx = scores[j] > mx ? scores[j] : mx;
    }
    float acc[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n_keys; j += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += (scores[j + l] = expf_fast(scores[j + l] - mx));
    float sum = hsum(acc);
    for (; j < n_keys; ++j) sum += (scores[j] = expf_fast(scores[j] - mx));
    const float inv = 1.0f / sum;
    float* o = out + t * qw + h * Dh;
    for (int64_t d = 0; d < Dh; ++d) o[d] = 0.f;
    for (j = 0; j < n_keys; ++j) axpy(o, scores[j] * inv, vc + j * Dh, Dh);
  }
}

// The multiversioned bodies of the public functions below.

KERF_CLONES void f16_to_f32_row_cloned(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = h2f(in[i]);
}

KERF_CLONES void linear_rows_cloned(const WeightView& w, const float* x, int64_t T, int64_t r0, int64_t r1, float* y,
                                    int64_t ldy, float* row_buf) {
  const int64_t K = w.cols;
  for (int64_t n = r0; n < r1; ++n) {
    const float* row = row_buf;
    if (w.dtype == fmt::DType::kF32) row = reinterpret_cast<const float*>(w.data) + n * K;
    else dequant_row_fast(w, n, row_buf);
    for (int64_t t = 0; t < T; ++t) y[t * ldy + n] = dot16(row, x + t * K, K);
  }
}

KERF_CLONES void rmsnorm_cloned(const float* x, const float* weight, int64_t T, int64_t D, double eps, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    const float inv = 1.0f / std::sqrt(dot16(xr, xr, D) / float(D) + float(eps));
    float* o = out + t * D;
    for (int64_t i = 0; i < D; ++i) o[i] = weight[i] * (xr[i] * inv);
  }
}

KERF_CLONES void exp_cloned(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = expf_fast(x[i]);
}

KERF_CLONES void silu_mul_cloned(float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = a[i] / (1.0f + expf_fast(-a[i])) * b[i];
}

KERF_CLONES void attention_cloned(const AttnShape& s, const float* q, int64_t Tq, int64_t qpos0, int64_t n_kv,
                                  const KVView& kv, int64_t i0, int64_t i1, float* out, float* scores) {
  if (kv.f16)
    attention_items(s, q, Tq, qpos0, n_kv, static_cast<const uint16_t*>(kv.k), static_cast<const uint16_t*>(kv.v),
                    kv.n_ctx, i0, i1, out, scores);
  else
    attention_items(s, q, Tq, qpos0, n_kv, static_cast<const float*>(kv.k), static_cast<const float*>(kv.v), kv.n_ctx,
                    i0, i1, out, scores);
}

}  // namespace

void f16_to_f32_row(const uint16_t* in, float* out, int64_t n) { f16_to_f32_row_cloned(in, out, n); }

void dequant_row_fast(const WeightView& w, int64_t r, float* out) {
  if (w.dtype == fmt::DType::kF16) {
    f16_to_f32_row(reinterpret_cast<const uint16_t*>(w.data) + r * w.cols, out, w.cols);
  } else {
    dequant_row(w, r, out);
  }
}

void linear_rows(const WeightView& w, const float* x, int64_t T, int64_t r0, int64_t r1, float* y, int64_t ldy,
                 float* row_buf) {
  linear_rows_cloned(w, x, T, r0, r1, y, ldy, row_buf);
}

void rmsnorm_fast(const float* x, const float* weight, int64_t T, int64_t D, double eps, float* out) {
  rmsnorm_cloned(x, weight, T, D, eps, out);
}

void exp_fast_n(const float* x, float* out, int64_t n) { exp_cloned(x, out, n); }

void silu_mul_fast(float* a, const float* b, int64_t n) { silu_mul_cloned(a, b, n); }

void kv_store(const KVView& kv, const float* k, const float* v, int64_t T, int64_t pos0) {
  const int64_t Dh = kv.head_dim, kvw = kv.n_kv_heads * Dh;
  for (int64_t g = 0; g < kv.n_kv_heads; ++g)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t at = (g * kv.n_ctx + pos0 + t) * Dh, from = t * kvw + g * Dh;
      if (kv.f16) {
        for (int64_t d = 0; d < Dh; ++d) {
          static_cast<uint16_t*>(kv.k)[at + d] = fmt::f32_to_f16(k[from + d]);
          static_cast<uint16_t*>(kv.v)[at + d] = fmt::f32_to_f16(v[from + d]);
        }
      } else {
        std::memcpy(static_cast<float*>(kv.k) + at, k + from, size_t(Dh) * sizeof(float));
        std::memcpy(static_cast<float*>(kv.v) + at, v + from, size_t(Dh) * sizeof(float));
      }
    }
}

void attention_fast(const AttnShape& s, const float* q, int64_t Tq, int64_t qpos0, int64_t n_kv, const KVView& kv,
                    int64_t i0, int64_t i1, float* out, float* scores) {
  attention_cloned(s, q, Tq, qpos0, n_kv, kv, i0, i1, out, scores);
}

// ---------------------------------------------------------------- tiled layout (SPEC 6.6)
// Views and the scalar dequantization of one row (qkernels.h); the integer kernels are in qkernels*.cpp.

bool tiled_view(const WeightView& w, TiledView* out) {
  if (!fmt::dtype_is_generic_quant(w.dtype) || fmt::qflags_layout(w.flags) != fmt::Layout::kTiled) return false;
  TiledView v;
  v.dtype = w.dtype;
  v.bits = fmt::qflags_bits(w.flags);
  v.rows = w.rows;
  v.cols = w.cols;
  v.L = fmt::tiled_layout(w.dtype, uint64_t(w.rows), uint64_t(w.cols), w.group, w.flags);
  v.data = w.data;
  *out = v;
  return true;
}

void dequant_row_tiled(const TiledView& w, int64_t r, float* out) {
  const fmt::TiledLayout& L = w.L;
  const uint8_t* tile = w.data + uint64_t(r) / L.R * L.tile_bytes;
  const uint64_t i = uint64_t(r) % L.R;
  const bool asym = w.dtype == fmt::DType::kQAsym;
  // q = u - zero (qsym: 2^(b-1), ternary: 1), binary q = 2u - 1; qasym w = (s * u) + m.
  const int zero = w.dtype == fmt::DType::kQSym ? 1 << (w.bits - 1) : w.dtype == fmt::DType::kTernary ? 1 : 0;
  const int mul = w.dtype == fmt::DType::kBinary ? 2 : 1;
  const int neg = w.dtype == fmt::DType::kBinary ? 1 : zero;
  const uint32_t width = uint32_t(L.cb / 4);  // code bits: 4 bytes per bit of 32 codes
  uint8_t u[fmt::kTileBlock];
  for (uint64_t kb = 0; kb < L.KB; ++kb) {
    const uint8_t* pp = tile + L.param_offset(kb / L.gpb) + 2 * i;
    const float s = fmt::f16_to_f32(rd16(pp));
    const float m = asym ? fmt::f16_to_f32(rd16(pp + 2 * L.R)) : 0.f;
    const uint8_t* src = tile + L.block_offset(kb) + i * L.cb;
    fmt::tiled_get_block(width, src, u);
    const uint64_t c0 = kb * fmt::kTileBlock;
    const uint64_t n = uint64_t(w.cols) - c0 < fmt::kTileBlock ? uint64_t(w.cols) - c0 : fmt::kTileBlock;
    if (asym) {
      for (uint64_t e = 0; e < n; ++e) {
        const float p = s * float(u[e]);
        out[c0 + e] = p + m;
      }
    } else {
      for (uint64_t e = 0; e < n; ++e) out[c0 + e] = s * float(mul * int(u[e]) - neg);
    }
  }
}

}  // namespace kerf::rt
