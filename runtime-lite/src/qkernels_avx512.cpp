// AVX-512 (F, BW, VL) + VNNI kernels: 512-bit vectors holding the 4 rows of a tile (one row per
// 128-bit lane), vpdpbusd u8 x s8 dot products (no saturation: codes are used as they are), the
// shared SIMD driver of qkernels_impl.h. Compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512vnni -mavx2 -mfma -mf16c (CMakeLists.txt) on x86-64 only; dispatched when the CPU has them.
#if defined(__x86_64__)
// GCC 12's avx512fintrin.h self-initializes _mm512_undefined_* values, which -O3 reports as
// maybe-uninitialized where they are inlined (GCC PR 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "qkernels_impl.h"

namespace kerf::rt::qk {
namespace {

#define KQ_INL static inline __attribute__((always_inline))

struct Avx512 {
  using V = __m512i;
  using F = __m512;
  using B = V;
  using Idx = __m512i;
  static constexpr int L = 4, kBias8 = 0;
  static constexpr bool kRunning = true;

  /// Lane l of wv holds a row's 32-bit little-endian bit word (4 times): byte e of lane l of the
  /// masks is bit e (klo) resp. bit 16 + e (khi) of that word.
  KQ_INL void bits16(V wv, __mmask64* klo, __mmask64* khi) {
    const int64_t k1 = 0x0101010101010101LL;
    const V sel_lo = _mm512_set_epi64(k1, 0, k1, 0, k1, 0, k1, 0);  // bytes: 0 x 8, 1 x 8
    const V bitm = _mm512_set1_epi64(int64_t(0x8040201008040201ULL));
    *klo = _mm512_test_epi8_mask(_mm512_shuffle_epi8(wv, sel_lo), bitm);
    *khi = _mm512_test_epi8_mask(_mm512_shuffle_epi8(wv, _mm512_add_epi8(sel_lo, _mm512_set1_epi8(2))), bitm);
  }
  /// 2-bit planes: lane l of x = the 8 plane bytes of row l twice -> codes 0..15 and 16..31.
  KQ_INL void planes2(V x, V* lo, V* hi) {
    const V m3 = _mm512_set1_epi8(3);
    *lo = _mm512_and_si512(_mm512_srlv_epi64(x, _mm512_set_epi64(2, 0, 2, 0, 2, 0, 2, 0)), m3);
    *hi = _mm512_and_si512(_mm512_srlv_epi64(x, _mm512_set_epi64(6, 4, 6, 4, 6, 4, 6, 4)), m3);
  }

  template <CodeFmt C>
  KQ_INL void decode(const uint8_t* p, V* lo, V* hi) {
    if constexpr (C == CodeFmt::k4) {  // 4 rows x 16 bytes: low nibbles elements 0..15
      const V x = _mm512_loadu_si512(p), m = _mm512_set1_epi8(15);
      lo[0] = _mm512_and_si512(x, m);
      hi[0] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m);
    } else if constexpr (C == CodeFmt::k8) {  // 4 rows x 32 bytes
      const V x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64);
      lo[0] = _mm512_shuffle_i64x2(x0, x1, 0x88);
      hi[0] = _mm512_shuffle_i64x2(x0, x1, 0xdd);
    } else if constexpr (C == CodeFmt::k2) {  // 4 rows x 8 bytes
      const V x = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      planes2(_mm512_permutexvar_epi64(_mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0), x), lo, hi);
    } else if constexpr (C == CodeFmt::k3) {  // 4 rows x (8 plane bytes + 4 high-bit bytes)
      const V x = _mm512_maskz_loadu_epi32(0x0fff, p);
      planes2(_mm512_permutexvar_epi32(_mm512_set_epi32(10, 9, 10, 9, 7, 6, 7, 6, 4, 3, 4, 3, 1, 0, 1, 0), x), lo,
              hi);
      __mmask64 klo, khi;
      bits16(_mm512_permutexvar_epi32(_mm512_set_epi32(11, 11, 11, 11, 8, 8, 8, 8, 5, 5, 5, 5, 2, 2, 2, 2), x),
             &klo, &khi);
      const V four = _mm512_set1_epi8(4);
      lo[0] = _mm512_mask_add_epi8(lo[0], klo, lo[0], four);
      hi[0] = _mm512_mask_add_epi8(hi[0], khi, hi[0], four);
    } else {  // k1: 4 rows x 4 bytes
      const V x = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      __mmask64 klo, khi;
      bits16(_mm512_permutexvar_epi32(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), x), &klo,
             &khi);
      const V one = _mm512_set1_epi8(1);
      lo[0] = _mm512_maskz_mov_epi8(klo, one);
      hi[0] = _mm512_maskz_mov_epi8(khi, one);
    }
  }
  KQ_INL void act(const int8_t* q, V* lo, V* hi) {
    *lo = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    *hi = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16)));
  }
  template <CodeFmt>
  KQ_INL void dot(V* acc, V lo, V hi, V ql, V qh) {
    *acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(*acc, lo, ql), hi, qh);
  }
  KQ_INL V reduce4(V a0, V a1, V a2, V a3) {
    const V t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    const V t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  }
  KQ_INL __m128i load2x64(const uint8_t* p0, const uint8_t* p1) {
    const __m128d lo = _mm_castsi128_pd(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p0)));
    return _mm_castpd_si128(_mm_loadh_pd(lo, reinterpret_cast<const double*>(p1)));
  }
  template <int N>
  KQ_INL F scales(const uint8_t* const* p) {
    if constexpr (N == 4)
      return _mm512_cvtph_ps(
          _mm256_inserti128_si256(_mm256_castsi128_si256(load2x64(p[0], p[1])), load2x64(p[2], p[3]), 1));
    const __m128i h = N == 2 ? load2x64(p[0], p[1]) : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p[0]));
    return _mm512_castps256_ps512(_mm256_cvtph_ps(h));  // lanes >= 4 N are not used
  }
  KQ_INL Idx idx(const int32_t* lanes) { return _mm512_loadu_si512(lanes); }
  KQ_INL F perm(F x, Idx i) { return _mm512_permutexvar_ps(i, x); }
  template <int NTK>
  KQ_INL F expand(const float* p4, Idx i) {
    if constexpr (NTK == 1) return _mm512_set1_ps(p4[0]);
    if constexpr (NTK == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(p4));
    return _mm512_permutexvar_ps(i, _mm512_castps128_ps512(_mm_loadu_ps(p4)));
  }
  KQ_INL F cvt(V x) { return _mm512_cvtepi32_ps(x); }
  KQ_INL V twice(V x) { return _mm512_add_epi32(x, x); }
  KQ_INL V isub(V a, V b) { return _mm512_sub_epi32(a, b); }
  KQ_INL V zero() { return _mm512_setzero_si512(); }
  KQ_INL F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  KQ_INL F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  KQ_INL F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  KQ_INL F load(const float* p) { return _mm512_loadu_ps(p); }
  KQ_INL void store(float* p, F x) { _mm512_storeu_ps(p, x); }
  KQ_INL void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }
};

void quantize_acts_avx512(const float* x, int64_t T, int64_t K, const QActs* a) {
  const int64_t KB = a->KB;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < KB; ++b) {
      const float* xb = x + t * K + b * 32;
      const int64_t n = K - b * 32;
      const __mmask16 m0 = n >= 16 ? 0xffff : __mmask16((1u << n) - 1);
      const __mmask16 m1 = n >= 32 ? 0xffff : n <= 16 ? 0 : __mmask16((1u << (n - 16)) - 1);
      const __m512 x0 = _mm512_maskz_loadu_ps(m0, xb), x1 = _mm512_maskz_loadu_ps(m1, xb + 16);
      // max(|x|, m) returns m when |x| is NaN: NaNs are ignored like in the reference
      const __m512 am = _mm512_max_ps(_mm512_abs_ps(x1), _mm512_max_ps(_mm512_abs_ps(x0), _mm512_setzero_ps()));
      const float amax = _mm512_reduce_max_ps(am), d = amax / 127.0f;
      const __m512 id = _mm512_set1_ps(act_inv_scale(d));
      const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
      __m512i q[2];
      for (int h = 0; h < 2; ++h) {
        const __m512 v = _mm512_mul_ps(h ? x1 : x0, id);  // rounded half to even by the MXCSR default
        q[h] = _mm512_min_epi32(_mm512_max_epi32(_mm512_maskz_cvtps_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v), lo), hi);
      }
      int8_t* qb = a->q + t * KB * 32 + b * 32;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb), _mm512_cvtepi32_epi8(q[0]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16), _mm512_cvtepi32_epi8(q[1]));
      a->d[t * KB + b] = d;
      a->sum[t * KB + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
    }
}

}  // namespace

const QKernels kAvx512Vnni = {Isa::kAvx512Vnni, quantize_acts_avx512, gemm_simd<Avx512, 4, 2, 2>};

}  // namespace kerf::rt::qk
#endif  // __x86_64__
