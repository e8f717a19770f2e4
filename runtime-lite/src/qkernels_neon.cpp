// AArch64 Advanced SIMD kernels: 128-bit vectors holding one row of a tile block (elements 0..15 or
// 16..31), signed 8-bit dot products (codes < 128 as they are; 8-bit codes biased to u - 128), the
// shared SIMD driver of qkernels_impl.h. Two builds of this file:
//   kNeon     baseline ARMv8-A: smull / smlal pair products (|.| <= 2 * 128 * 127 < 2^15) + sadalp
//   kNeonDot  ARMv8.2-A dot product (sdot), from qkernels_neondot.cpp, which defines
//             KERF_QK_NEON_DOT and includes this file (compiled with -march=armv8.2-a+dotprod)
// Compiled on aarch64 only (CMakeLists.txt); kNeonDot is dispatched when HWCAP_ASIMDDP is set.
#if defined(__aarch64__)
#include <arm_neon.h>

#include "qkernels_impl.h"

#ifndef KERF_QK_NEON_DOT
#define KERF_QK_NEON_DOT 0
#endif

namespace kerf::rt::qk {
namespace {

#define KQ_INL static inline __attribute__((always_inline))

struct Neon {
  using V = int32x4_t;
  using B = int8x16_t;
  using F = float32x4_t;
  using Idx = uint8x16_t;
  static constexpr int L = 1, kBias8 = 128;
  static constexpr bool kRunning = true;

  /// Row decoders: lo = codes 0..15, hi = codes 16..31 (as int8, all < 128 except k8: u - 128).
  KQ_INL void planes2(uint8x8_t v, uint8x16_t* lo, uint8x16_t* hi) {
    const uint8x8_t m3 = vdup_n_u8(3);
    *lo = vcombine_u8(vand_u8(v, m3), vand_u8(vshr_n_u8(v, 2), m3));
    *hi = vcombine_u8(vand_u8(vshr_n_u8(v, 4), m3), vshr_n_u8(v, 6));
  }
  /// Bytes e of lo / hi: bit e / 16 + e of the little-endian 32-bit word at w ? v : 0.
  KQ_INL void bits16(const uint8_t* w, uint8x16_t v, uint8x16_t* lo, uint8x16_t* hi) {
    const uint8x16_t bitm = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ULL));
    *lo = vandq_u8(vtstq_u8(vcombine_u8(vld1_dup_u8(w), vld1_dup_u8(w + 1)), bitm), v);
    *hi = vandq_u8(vtstq_u8(vcombine_u8(vld1_dup_u8(w + 2), vld1_dup_u8(w + 3)), bitm), v);
  }
  template <CodeFmt C>
  KQ_INL void decode(const uint8_t* p, B* lo, B* hi) {
    for (int i = 0; i < 4; ++i) {
      uint8x16_t l, h;
      if constexpr (C == CodeFmt::k4) {
        const uint8x16_t x = vld1q_u8(p + 16 * i);
        l = vandq_u8(x, vdupq_n_u8(15));
        h = vshrq_n_u8(x, 4);
      } else if constexpr (C == CodeFmt::k8) {
        l = veorq_u8(vld1q_u8(p + 32 * i), vdupq_n_u8(0x80));
        h = veorq_u8(vld1q_u8(p + 32 * i + 16), vdupq_n_u8(0x80));
      } else if constexpr (C == CodeFmt::k2) {
        planes2(vld1_u8(p + 8 * i), &l, &h);
      } else if constexpr (C == CodeFmt::k3) {
        uint8x16_t lb, hb;
        planes2(vld1_u8(p + 12 * i), &l, &h);
        bits16(p + 12 * i + 8, vdupq_n_u8(4), &lb, &hb);
        l = vorrq_u8(l, lb);
        h = vorrq_u8(h, hb);
      } else {
        bits16(p + 4 * i, vdupq_n_u8(1), &l, &h);
      }
      lo[i] = vreinterpretq_s8_u8(l);
      hi[i] = vreinterpretq_s8_u8(h);
    }
  }
  KQ_INL void act(const int8_t* q, B* lo, B* hi) {
    *lo = vld1q_s8(q);
    *hi = vld1q_s8(q + 16);
  }
  template <CodeFmt>
  KQ_INL void dot(V* acc, B lo, B hi, B ql, B qh) {
#if KERF_QK_NEON_DOT
    *acc = vdotq_s32(vdotq_s32(*acc, lo, ql), hi, qh);
#else
    const int16x8_t pl = vmlal_s8(vmull_s8(vget_low_s8(lo), vget_low_s8(ql)), vget_high_s8(lo), vget_high_s8(ql));
    const int16x8_t ph = vmlal_s8(vmull_s8(vget_low_s8(hi), vget_low_s8(qh)), vget_high_s8(hi), vget_high_s8(qh));
    *acc = vpadalq_s16(vpadalq_s16(*acc, pl), ph);
#endif
  }
  KQ_INL V reduce4(V a0, V a1, V a2, V a3) { return vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3)); }
  template <int N>
  KQ_INL F scales(const uint8_t* const* p) {
    uint16_t h[4];
    std::memcpy(h, p[0], 8);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
  }
  KQ_INL Idx idx(const int32_t* lanes) {
    uint8_t b[16];
    for (int i = 0; i < 16; ++i) b[i] = uint8_t(lanes[i / 4] * 4 + i % 4);
    return vld1q_u8(b);
  }
  KQ_INL F perm(F x, Idx i) { return vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(x), i)); }
  template <int NTK>
  KQ_INL F expand(const float* p4, Idx i) {
    if constexpr (NTK == 1) return vld1q_dup_f32(p4);
    if constexpr (NTK == 4) return vld1q_f32(p4);
    return perm(vld1q_f32(p4), i);
  }
  KQ_INL F cvt(V x) { return vcvtq_f32_s32(x); }
  KQ_INL V twice(V x) { return vaddq_s32(x, x); }
  KQ_INL V isub(V a, V b) { return vsubq_s32(a, b); }
  KQ_INL V zero() { return vdupq_n_s32(0); }
  KQ_INL F sub(F a, F b) { return vsubq_f32(a, b); }
  KQ_INL F mul(F a, F b) { return vmulq_f32(a, b); }
  KQ_INL F fmadd(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  KQ_INL F load(const float* p) { return vld1q_f32(p); }
  KQ_INL void store(float* p, F x) { vst1q_f32(p, x); }
  KQ_INL void prefetch(const void* p) { __builtin_prefetch(p, 0, 2); }  // to L2
};

void quantize_acts_neon(const float* x, int64_t T, int64_t K, const QActs* a) {
  const int64_t KB = a->KB;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < KB; ++b) {
      float tail[32];
      const float* xb = x + t * K + b * 32;
      if (K - b * 32 < 32) {  // the last, partial block: zero padded
        for (int e = 0; e < 32; ++e) tail[e] = e < K - b * 32 ? xb[e] : 0.0f;
        xb = tail;
      }
      float32x4_t v[8], am = vdupq_n_f32(0.0f);
      for (int i = 0; i < 8; ++i) {
        v[i] = vld1q_f32(xb + 4 * i);
        am = vmaxnmq_f32(am, vabsq_f32(v[i]));  // maxNum: a NaN |x| is ignored
      }
      const float d = vmaxvq_f32(am) / 127.0f;
      const float32x4_t id = vdupq_n_f32(act_inv_scale(d));
      int32x4_t s = vdupq_n_s32(0);
      int16x8_t h[4];
      for (int i = 0; i < 4; ++i) {
        int32x4_t c[2];
        for (int k = 0; k < 2; ++k) {  // round to nearest, ties to even; NaN -> 0
          const int32x4_t r = vcvtnq_s32_f32(vmulq_f32(v[2 * i + k], id));
          c[k] = vminq_s32(vmaxq_s32(r, vdupq_n_s32(-127)), vdupq_n_s32(127));
          s = vaddq_s32(s, c[k]);
        }
        h[i] = vcombine_s16(vmovn_s32(c[0]), vmovn_s32(c[1]));
      }
      int8_t* qb = a->q + t * KB * 32 + b * 32;
      vst1q_s8(qb, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
      vst1q_s8(qb + 16, vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])));
      a->d[t * KB + b] = d;
      a->sum[t * KB + b] = vaddvq_s32(s);
    }
}

}  // namespace

#if KERF_QK_NEON_DOT
const QKernels kNeonDot = {Isa::kNeonDot, quantize_acts_neon, gemm_simd<Neon, 1, 1, 2>};
#else
const QKernels kNeon = {Isa::kNeon, quantize_acts_neon, gemm_simd<Neon, 1, 1, 2>};
#endif

}  // namespace kerf::rt::qk
#endif  // __aarch64__
