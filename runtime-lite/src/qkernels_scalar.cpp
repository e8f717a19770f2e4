// The scalar reference of the runtime-lite integer kernels: plain loops that spell out the
// normative arithmetic of qkernels.h (every other ISA is tested bit-identical against this file).
// Also the fallback for tensors whose tile height R is not 4 (any R in {1, 2, 4, 8, 16}).
#include <cmath>

#include "qkernels_impl.h"

namespace kerf::rt::qk {
namespace {

/// Unsigned code u of element e (0..31) of one row's code bytes c of a block (format.h order).
template <CodeFmt C>
inline int code_at(const uint8_t* c, int e) {
  if constexpr (C == CodeFmt::k8) return c[e];
  if constexpr (C == CodeFmt::k4) return e < 16 ? c[e] & 15 : c[e - 16] >> 4;
  if constexpr (C == CodeFmt::k2) return (c[e & 7] >> (2 * (e >> 3))) & 3;
  if constexpr (C == CodeFmt::k3)
    return ((c[e & 7] >> (2 * (e >> 3))) & 3) | (((c[8 + (e >> 3)] >> (e & 7)) & 1) << 2);
  if constexpr (C == CodeFmt::k1) return (c[e >> 3] >> (e & 7)) & 1;
  return 0;
}

template <CodeFmt C>
void gemm_ref(const TiledView& w, const QDesc& D, const QActs& a, int64_t tile0, int64_t tile1, float* y,
              int64_t ldy) {
  const fmt::TiledLayout& L = w.L;
  const int64_t R = int64_t(L.R), KB = int64_t(L.KB), gpb = int64_t(L.gpb), cb = int64_t(L.cb);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const uint8_t* base = w.data + tile * int64_t(L.tile_bytes);
    for (int64_t i = 0; i < R && tile * R + i < w.rows; ++i)
      for (int64_t t = 0; t < a.T; ++t) {
        const int8_t* q = a.q + t * KB * 32;
        float acc = 0.0f;
        for (int64_t b = 0; b < KB; ++b) {
          const uint8_t* par = base + L.param_offset(uint64_t(b / gpb));
          const uint8_t* codes = base + L.block_offset(uint64_t(b)) + i * cb;
          int32_t dot = 0;
          for (int e = 0; e < 32; ++e) dot += code_at<C>(codes, e) * q[b * 32 + e];
          const float d = a.d[t * KB + b];
          const int32_t sum = a.sum[t * KB + b];
          const int32_t iq = dot * (1 << D.shift) - D.off * sum;
          acc = std::fmaf(load_f16(par + 2 * i) * d, float(iq), acc);
          if (D.asym) acc = std::fmaf(load_f16(par + 2 * (R + i)), d * float(sum), acc);
        }
        y[t * ldy + tile * R + i] = acc;
      }
  }
}

}  // namespace

void quantize_acts_scalar(const float* x, int64_t T, int64_t K, const QActs* a) {
  const int64_t KB = a->KB;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < KB; ++b) {
      const float* xb = x + t * K + b * 32;
      const int n = int(K - b * 32 < 32 ? K - b * 32 : 32);
      float amax = 0.0f;
      for (int e = 0; e < n; ++e) amax = std::fabs(xb[e]) > amax ? std::fabs(xb[e]) : amax;
      const float d = amax / 127.0f, id = act_inv_scale(d);
      int8_t* q = a->q + t * KB * 32 + b * 32;
      int32_t sum = 0;
      for (int e = 0; e < 32; ++e) {
        float v = e < n ? std::nearbyintf(xb[e] * id) : 0.0f;
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;  // |x * id| <= 127 (1 + 2^-23) for finite x
        q[e] = v == v ? int8_t(v) : int8_t(0);                // NaN (from a NaN or inf x) -> 0
        sum += q[e];
      }
      a->d[t * KB + b] = d;
      a->sum[t * KB + b] = sum;
    }
}

void gemm_scalar(const TiledView& w, const QActs& a, int64_t tile0, int64_t tile1, float* y, int64_t ldy) {
  QDesc D;
  if (!qdesc(w, &D)) return;
  switch (D.fmt) {
    case CodeFmt::k8: return gemm_ref<CodeFmt::k8>(w, D, a, tile0, tile1, y, ldy);
    case CodeFmt::k4: return gemm_ref<CodeFmt::k4>(w, D, a, tile0, tile1, y, ldy);
    case CodeFmt::k3: return gemm_ref<CodeFmt::k3>(w, D, a, tile0, tile1, y, ldy);
    case CodeFmt::k2: return gemm_ref<CodeFmt::k2>(w, D, a, tile0, tile1, y, ldy);
    case CodeFmt::k1: return gemm_ref<CodeFmt::k1>(w, D, a, tile0, tile1, y, ldy);
  }
}

const QKernels kScalar = {Isa::kScalar, quantize_acts_scalar, gemm_scalar};

}  // namespace kerf::rt::qk
