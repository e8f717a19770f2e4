// AVX2 + FMA + F16C kernels: 256-bit vectors holding 2 rows of a tile (one row per 128-bit lane),
// u8 x s8 dot products with vpmaddubsw + vpmaddwd (int16 pair sums stay below 2^15: codes < 128;
// 8-bit codes are biased to u - 128 and use the sign trick |w| x sign(q, w)), the shared SIMD
// driver of qkernels_impl.h. Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) on x86-64 only.
#if defined(__x86_64__)
#include <immintrin.h>

#include "qkernels_impl.h"

namespace kerf::rt::qk {
namespace {

#define KQ_INL static inline __attribute__((always_inline))

struct Avx2 {
  using V = __m256i;
  using F = __m256;
  using B = V;
  using Idx = __m256i;
  static constexpr int L = 2, kBias8 = 128;
  static constexpr bool kRunning = false;

  KQ_INL V load128x2(const uint8_t* lo_lane, const uint8_t* hi_lane) {
    return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(hi_lane), reinterpret_cast<const __m128i*>(lo_lane));
  }
  /// Lane l of x = the 8 plane bytes of a row twice -> its codes 0..15 (lo) and 16..31 (hi).
  KQ_INL void planes2(V x, V* lo, V* hi) {
    const V m3 = _mm256_set1_epi8(3);
    *lo = _mm256_and_si256(_mm256_srlv_epi64(x, _mm256_set_epi64x(2, 0, 2, 0)), m3);
    *hi = _mm256_and_si256(_mm256_srlv_epi64(x, _mm256_set_epi64x(6, 4, 6, 4)), m3);
  }
  /// Lane l of wv = a row's 32-bit bit word (4 times): byte e = (bit e (lo) resp. 16 + e (hi)) ? v : 0.
  KQ_INL void bits16(V wv, V v, V* lo, V* hi) {
    const int64_t k1 = 0x0101010101010101LL;
    const V sel = _mm256_set_epi64x(k1, 0, k1, 0), bitm = _mm256_set1_epi64x(int64_t(0x8040201008040201ULL));
    const V bl = _mm256_and_si256(_mm256_shuffle_epi8(wv, sel), bitm);
    const V bh = _mm256_and_si256(_mm256_shuffle_epi8(wv, _mm256_add_epi8(sel, _mm256_set1_epi8(2))), bitm);
    *lo = _mm256_and_si256(_mm256_cmpeq_epi8(bl, bitm), v);
    *hi = _mm256_and_si256(_mm256_cmpeq_epi8(bh, bitm), v);
  }

  template <CodeFmt C>
  KQ_INL void decode(const uint8_t* p, V* lo, V* hi) {
    for (int h = 0; h < 2; ++h) {  // rows 2h, 2h + 1
      if constexpr (C == CodeFmt::k4) {
        const V x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * h)), m = _mm256_set1_epi8(15);
        lo[h] = _mm256_and_si256(x, m);
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m);
      } else if constexpr (C == CodeFmt::k8) {  // w = u - 128 as int8
        const V s = _mm256_set1_epi8(-128);
        lo[h] = _mm256_xor_si256(load128x2(p + 64 * h, p + 64 * h + 32), s);
        hi[h] = _mm256_xor_si256(load128x2(p + 64 * h + 16, p + 64 * h + 48), s);
      } else if constexpr (C == CodeFmt::k2) {
        const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h));
        planes2(_mm256_permute4x64_epi64(_mm256_castsi128_si256(x), 0x50), &lo[h], &hi[h]);
      } else if constexpr (C == CodeFmt::k3) {  // 32 bytes from p + 16 h: rows 2h, 2h + 1 inside
        const V y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * h));
        const V ix = h ? _mm256_setr_epi32(2, 3, 2, 3, 5, 6, 5, 6) : _mm256_setr_epi32(0, 1, 0, 1, 3, 4, 3, 4);
        const V iw = h ? _mm256_setr_epi32(4, 4, 4, 4, 7, 7, 7, 7) : _mm256_setr_epi32(2, 2, 2, 2, 5, 5, 5, 5);
        V l2, h2, lb, hb;
        planes2(_mm256_permutevar8x32_epi32(y, ix), &l2, &h2);
        bits16(_mm256_permutevar8x32_epi32(y, iw), _mm256_set1_epi8(4), &lb, &hb);
        lo[h] = _mm256_or_si256(l2, lb);
        hi[h] = _mm256_or_si256(h2, hb);
      } else {  // k1
        const V x = _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        const V iw = h ? _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3) : _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        bits16(_mm256_permutevar8x32_epi32(x, iw), _mm256_set1_epi8(1), &lo[h], &hi[h]);
      }
    }
  }
  KQ_INL void act(const int8_t* q, V* lo, V* hi) {
    *lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    *hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16)));
  }
  template <CodeFmt C>
  KQ_INL void dot(V* acc, V lo, V hi, V ql, V qh) {
    const V ones = _mm256_set1_epi16(1);
    if constexpr (C == CodeFmt::k8) {  // |w| * sign(q, w): pair sums <= 2 * 128 * 127 < 2^15
      const V pl = _mm256_maddubs_epi16(_mm256_abs_epi8(lo), _mm256_sign_epi8(ql, lo));
      const V ph = _mm256_maddubs_epi16(_mm256_abs_epi8(hi), _mm256_sign_epi8(qh, hi));
      *acc = _mm256_add_epi32(_mm256_madd_epi16(pl, ones), _mm256_madd_epi16(ph, ones));
    } else {  // codes <= 15: 4 products <= 4 * 15 * 127 < 2^15
      *acc = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, ql), _mm256_maddubs_epi16(hi, qh)), ones);
    }
  }
  KQ_INL V reduce4(V a0, V a1, V a2, V a3) {
    const V t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(a0, a1), _mm256_unpackhi_epi32(a0, a1));
    const V t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(a2, a3), _mm256_unpackhi_epi32(a2, a3));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
  }
  template <int N>
  KQ_INL F scales(const uint8_t* const* p) {
    const __m128i lo = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p[0]));
    if constexpr (N == 1) return _mm256_cvtph_ps(lo);  // lanes >= 4 are not used
    return _mm256_cvtph_ps(_mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(lo), reinterpret_cast<const double*>(p[1]))));
  }
  KQ_INL Idx idx(const int32_t* lanes) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes)); }
  KQ_INL F perm(F x, Idx i) { return _mm256_permutevar8x32_ps(x, i); }
  template <int NTK>
  KQ_INL F expand(const float* p4, Idx i) {
    if constexpr (NTK == 1) return _mm256_set1_ps(p4[0]);
    if constexpr (NTK == 4) return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p4));
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(p4)), i);
  }
  KQ_INL F cvt(V x) { return _mm256_cvtepi32_ps(x); }
  KQ_INL V twice(V x) { return _mm256_add_epi32(x, x); }
  KQ_INL V isub(V a, V b) { return _mm256_sub_epi32(a, b); }
  KQ_INL V zero() { return _mm256_setzero_si256(); }
  KQ_INL F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  KQ_INL F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  KQ_INL F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  KQ_INL F load(const float* p) { return _mm256_loadu_ps(p); }
  KQ_INL void store(float* p, F x) { _mm256_storeu_ps(p, x); }
  KQ_INL void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }
};

void quantize_acts_avx2(const float* x, int64_t T, int64_t K, const QActs* a) {
  const int64_t KB = a->KB;
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < KB; ++b) {
      alignas(32) float tail[32];
      const float* xb = x + t * K + b * 32;
      if (K - b * 32 < 32) {  // the last, partial block: zero padded
        for (int e = 0; e < 32; ++e) tail[e] = e < K - b * 32 ? xb[e] : 0.0f;
        xb = tail;
      }
      __m256 v[4], am = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(xb + 8 * i);
        am = _mm256_max_ps(_mm256_and_ps(v[i], absm), am);  // a NaN |x| gives the second operand: ignored
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float d = _mm_cvtss_f32(m4) / 127.0f;
      const __m256 id = _mm256_set1_ps(act_inv_scale(d));
      const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
      __m256i q[4], s = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        const __m256 y = _mm256_mul_ps(v[i], id);  // rounded half to even by the MXCSR default
        const __m256i c = _mm256_and_si256(_mm256_cvtps_epi32(y), _mm256_castps_si256(_mm256_cmp_ps(y, y, _CMP_ORD_Q)));
        q[i] = _mm256_min_epi32(_mm256_max_epi32(c, lo), hi);
        s = _mm256_add_epi32(s, q[i]);
      }
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a->q + t * KB * 32 + b * 32),
                          _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
      a->d[t * KB + b] = d;
      a->sum[t * KB + b] = _mm_cvtsi128_si32(s4);
    }
}

}  // namespace

const QKernels kAvx2 = {Isa::kAvx2, quantize_acts_avx2, gemm_simd<Avx2, 4, 1, 1>};

}  // namespace kerf::rt::qk
#endif  // __x86_64__
