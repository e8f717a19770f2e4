// Private to the qkernels translation units (qkernels*.cpp): the per-dtype constants of the
// normative arithmetic (qkernels.h), the kernel tables of each ISA, and the ISA-independent SIMD
// driver + microkernel, instantiated once per ISA by qkernels_avx2.cpp, qkernels_avx512.cpp,
// qkernels_neon.cpp with a policy struct `I` that supplies the intrinsics (see "ISA policy" below).
//
// Microkernel idea (bit-exact with the per-row sequential fmaf chain of the reference):
//   A tile block (R = 4 rows x 32 columns) is decoded into unsigned code bytes in a "lo / hi" form:
//   vector lane (128 bits) l holds one row's elements 0..15 (lo) or 16..31 (hi). The activation
//   block of a token is broadcast to every 128-bit lane (q[0..15] resp. q[16..31]), so one u8 x s8
//   dot step (vpdpbusd / maddubs + madd / sdot) leaves 4 int32 partial sums per row and token.
//   Four such accumulators (any mix of tiles, half-tiles and tokens) are reduced together by a 4x4
//   transpose-add (reduce4) into one vector whose 32-bit lane (l, k) is the exact int32 dot of
//   row l of accumulator k. Everything after that is per-lane float work in the normative order:
//     iq = (dot << shift) - o        o = (off - (bias << shift)) * sum   (exact: |.| < 2^24)
//     acc = fma(s * d, iq, acc)      [qasym: acc = fma(m, d * sum, acc)]
//   with the per-lane s (row scale), d (token block scale), o, d * sum brought into the lane order
//   by one permute each. Per-token values are repacked by the driver into 4 slots per block.
//   With accumulating dot instructions the int32 accumulators run over all blocks and a block's
//   dots are the difference of two consecutive reductions (no zeroing per block).
//   A microkernel computes NTL tiles x NTK tokens (NTL * (4 / L) * NTK accumulators per block,
//   multiple of 4): e.g. 4 tiles x 1 token for GEMV (16 rows of float accumulators) and 1-2 tiles
//   x 4 tokens for GEMM (a decoded block reused by 4 tokens; tiles cache-blocked in L2 for T > 4).
//   Weights streamed once (T <= 4) are prefetched into L2 a few tile groups ahead in one sequential
//   sweep: NTL interleaved tile streams alone reach clearly less DRAM bandwidth than one stream.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "qkernels.h"

namespace kerf::rt::qk {

/// Code formats of one row in one 32-column block (format.h, TiledLayout; cb bytes).
enum class CodeFmt { k8, k4, k3, k2, k1 };

/// The dtype constants of the normative arithmetic: iq = (dot << shift) - off * sum.
struct QDesc {
  CodeFmt fmt = CodeFmt::k4;
  int32_t off = 0;   ///< qsym: 2^(b-1); ternary, binary: 1; qasym: 0
  int shift = 0;     ///< binary: 1 (iq = 2 dot - sum); else 0
  bool asym = false; ///< qasym: the min term
};
/// False when `w` is not a tiled generic dtype with code bits the kernels know.
inline bool qdesc(const TiledView& w, QDesc* d) {
  using fmt::DType;
  *d = QDesc();
  if (w.dtype == DType::kTernary) { d->fmt = CodeFmt::k2; d->off = 1; return true; }
  if (w.dtype == DType::kBinary) { d->fmt = CodeFmt::k1; d->off = 1; d->shift = 1; return true; }
  if (w.dtype != DType::kQSym && w.dtype != DType::kQAsym) return false;
  switch (w.bits) {
    case 8: d->fmt = CodeFmt::k8; break;
    case 4: d->fmt = CodeFmt::k4; break;
    case 3: d->fmt = CodeFmt::k3; break;
    case 2: d->fmt = CodeFmt::k2; break;
    default: return false;
  }
  d->asym = w.dtype == DType::kQAsym;
  d->off = d->asym ? 0 : int32_t(1) << (w.bits - 1);
  return true;
}

/// Block scale rule of quantize_acts (qkernels.h): d = amax / 127, id = 1 / d for normal d, else 0.
inline float act_inv_scale(float d) { return d >= 0x1p-126f ? 1.0f / d : 0.0f; }

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fmt::f16_to_f32(h);
}

void quantize_acts_scalar(const float* x, int64_t T, int64_t K, const QActs* a);
void gemm_scalar(const TiledView& w, const QActs& a, int64_t tile0, int64_t tile1, float* y, int64_t ldy);
extern const QKernels kScalar;
#if defined(__x86_64__)
extern const QKernels kAvx2, kAvx512Vnni;
#elif defined(__aarch64__)
extern const QKernels kNeon, kNeonDot;
#endif

// ------------------------------------------------------------------------------------------------
// ISA policy `I` (a struct of static inline functions) used by the templates below:
//   B, V, F, Idx        code-byte / int32 / float / permute-index vector types (VL = 4 L 32-bit lanes)
//   L, kRunning         rows (128-bit lanes) per vector (H = 4 / L vectors hold a tile's lo or hi)
//   kBias8              c: codes of CodeFmt::k8 are decoded as u - c (0, or 128 for signed dots)
//   decode<C>(p, lo, hi)  the R = 4 x cb code bytes of one tile block at p -> lo[H], hi[H]
//   act(q, &ql, &qh)    one token's 32 int8 of the block at q, broadcast to every 128-bit lane
//   dot<C>(&acc, lo, hi, ql, qh)  int32 partial dots, 4 per 128-bit lane, exact: acc += dot when
//                       kRunning (accumulating is free: vpdpbusd, sdot, sadalp), else acc = dot
//   reduce4(a0..a3)     lane (l, k) = sum of the 4 partial lanes of 128-bit lane l of a_k
//   scales<N>(p[N])     f32 of the 4 f16 at each of p[0..N) in order, N <= TPV = VL / 4 tiles
//   idx(int32 lanes[VL]) / perm(F, Idx)   lane permutation dst[i] = src[lanes[i]]
//   expand<NTK>(p4, Idx)  lane i = p4[token of lane i] from 4 repacked floats
//   cvt, fmadd(a, b, c) = fma(a, b, c) = a * b + c rounded once, mul, sub, twice(V) (x << 1),
//   isub(V, V), zero() (V), load(const float*), store(float*, F)   (unaligned)
//   prefetch(const void*)  into L2
// ------------------------------------------------------------------------------------------------

inline constexpr int kChunkBlocks = 512;  ///< activation blocks repacked at a time (stack: 24 KiB)
inline constexpr int kMaxTileBlock = 64;  ///< tiles of one cache block (weights reused by T >= 4)

/// Lane bookkeeping of a microkernel shape. Accumulator a = (tl * H + h) * NTK + tk holds tile tl,
/// rows h * L .. h * L + L - 1, token tk; reduced vector v holds accumulators 4v .. 4v + 3.
template <int L, int NTL, int NTK>
struct Shape {
  static constexpr int H = 4 / L, VL = 4 * L, TPV = VL / 4, NV = NTL * H * NTK / 4;
  static constexpr int NC = (NTL + TPV - 1) / TPV;  ///< scale chunks (vectors of TPV tiles' scales)
  static_assert(NTL * H * NTK % 4 == 0, "shape");
  struct Tab {
    int32_t s[NV][VL] = {};   ///< lane -> index into scales() of its tile chunk: (tl % TPV) * 4 + row
    int32_t d[VL] = {};       ///< lane -> token slot (the same for every v)
    int chunk[NV] = {};       ///< v -> tile chunk (tiles chunk * TPV ..)
    int tl[NV][VL] = {}, row[NV][VL] = {}, tk[NV][VL] = {};
  };
  static constexpr Tab make() {
    Tab t{};
    for (int v = 0; v < NV; ++v)
      for (int x = 0; x < VL; ++x) {
        const int l = x / 4, k = x % 4, a = 4 * v + k;
        const int tk = a % NTK, h = (a / NTK) % H, tl = a / NTK / H;
        t.tl[v][x] = tl;
        t.row[v][x] = h * L + l;
        t.tk[v][x] = tk;
        t.s[v][x] = (tl % TPV) * 4 + h * L + l;
        t.d[x] = tk;
        if (x == 0) t.chunk[v] = tl / TPV;
      }
    return t;
  }
  static constexpr Tab tab = make();
  static constexpr bool chunks_ok() {  // every lane of v reads the scales chunk of v
    for (int v = 0; v < NV; ++v)
      for (int x = 0; x < VL; ++x)
        if (tab.tl[v][x] / TPV != tab.chunk[v]) return false;
    return true;
  }
  static_assert(chunks_ok(), "a reduced vector spans two scale chunks");
};

/// The three ways codes enter iq (QDesc): qsym / ternary (shift 0), qasym (+ the min term), binary
/// (shift 1).
enum class Kind { kSym, kAsym, kBin };
template <CodeFmt C>
using Fmt = std::integral_constant<CodeFmt, C>;
/// Streaming (T <= 4, K in one chunk): while a tile group is computed, the tile group kPrefetchGroups
/// ahead is prefetched into L2 as one sequential sweep, spread over the blocks. The DRAM then sees
/// one sequential stream instead of NTL interleaved ones (tiles are tile_bytes apart).
inline constexpr int kPrefetchGroups = 4;
/// A sequential prefetch sweep: n lines per block from p, up to end.
struct Sweep {
  const uint8_t* p = nullptr;
  const uint8_t* end = nullptr;
  int64_t n = 0;
};

/// Per-token values of kChunkBlocks blocks, 4 slots per block (slots >= the token count repeat
/// the last token): d, o = (off - (bias << shift)) * sum, ds = d * sum (qasym).
struct Repack {
  alignas(64) float d[kChunkBlocks * 4];
  alignas(64) float o[kChunkBlocks * 4];
  alignas(64) float ds[kChunkBlocks * 4];
};

template <class I, CodeFmt C, Kind K, int NTL, int NTK>
struct Micro {
  using S = Shape<I::L, NTL, NTK>;
  using B = typename I::B;
  using V = typename I::V;
  using F = typename I::F;
  static constexpr int H = S::H, NV = S::NV, TPV = S::TPV;

  /// Sv / Mv: the scales / mins of the group whose parameters start at tile offset po, per lane.
  static void params(const uint8_t* const* tp, int64_t po, const typename I::Idx* is, F* Sv, F* Mv) {
    constexpr const auto& tab = S::tab;
    F raw[S::NC], rawm[S::NC];
    for (int c = 0; c < S::NC; ++c) {
      const uint8_t* p[TPV];
      for (int i = 0; i < TPV; ++i) p[i] = tp[c * TPV + i < NTL ? c * TPV + i : NTL - 1] + po;
      constexpr int N = NTL < TPV ? NTL : TPV;  // distinct tiles of a chunk
      raw[c] = I::template scales<N>(p);
      if constexpr (K == Kind::kAsym) {
        for (int i = 0; i < TPV; ++i) p[i] += 8;  // the mins follow the R = 4 scales
        rawm[c] = I::template scales<N>(p);
      }
    }
    for (int v = 0; v < NV; ++v) {
      Sv[v] = I::perm(raw[tab.chunk[v]], is[v]);
      if constexpr (K == Kind::kAsym) Mv[v] = I::perm(rawm[tab.chunk[v]], is[v]);
    }
  }

  /// acc[NV][VL] += the blocks [kb0, kb1) of tiles tp[0..NTL) x tokens qp[0..NTK) (qp at block 0;
  /// rp at block kb0).
  static void run(const uint8_t* const* tp, const int8_t* const* qp, const Repack& rp, const fmt::TiledLayout& L,
                  int64_t kb0, int64_t kb1, float* acc, Sweep pf) {
    constexpr const auto& tab = S::tab;
    typename I::Idx is[NV], id = I::idx(tab.d);
    for (int v = 0; v < NV; ++v) is[v] = I::idx(tab.s[v]);
    F A[NV], Sv[NV], Mv[NV];
    for (int v = 0; v < NV; ++v) A[v] = I::load(acc + v * S::VL);
    const int64_t gpb = int64_t(L.gpb), GB = int64_t(L.group_bytes), P = int64_t(L.param_bytes);
    const int64_t bstride = 4 * int64_t(L.cb);  // the blocks of a group follow each other
    int64_t jend = (kb0 / gpb + 1) * gpb, po = kb0 / gpb * GB, bo = po + P + (kb0 % gpb) * bstride;
    params(tp, po, is, Sv, Mv);
    // kRunning: the dot accumulators run over the blocks (|sum| < 512 * 2^20 < 2^31) and a block's
    // dots are the difference of consecutive reductions (reduce4 is linear; exact in int32).
    constexpr int NA = NTL * H * NTK;
    V run[NA], prev[NV];
    for (int i = 0; i < NA; ++i) run[i] = I::zero();
    for (int v = 0; v < NV; ++v) prev[v] = I::zero();
    for (int64_t b = kb0; b < kb1; ++b, bo += bstride) {
      if (b == jend) {  // next group: its parameters, then its first block
        jend += gpb;
        po += GB;
        bo = po + P;
        params(tp, po, is, Sv, Mv);
      }
      for (int64_t i = 0; i < pf.n && pf.p < pf.end; ++i, pf.p += 64) I::prefetch(pf.p);
      B ql[NTK], qh[NTK];
      for (int t = 0; t < NTK; ++t) I::act(qp[t] + b * 32, &ql[t], &qh[t]);
      V red[NV];
      int na = 0, nv = 0;
#pragma GCC unroll 4
      for (int tl = 0; tl < NTL; ++tl) {
        B lo[H], hi[H];
        I::template decode<C>(tp[tl] + bo, lo, hi);
#pragma GCC unroll 4
        for (int h = 0; h < H; ++h)
#pragma GCC unroll 4
          for (int t = 0; t < NTK; ++t) {
            I::template dot<C>(&run[na], lo[h], hi[h], ql[t], qh[t]);
            if (++na % 4 == 0) {
              red[nv] = I::reduce4(run[na - 4], run[na - 3], run[na - 2], run[na - 1]);
              if constexpr (I::kRunning) {
                const V cur = red[nv];
                red[nv] = I::isub(cur, prev[nv]);
                prev[nv] = cur;
              }
              ++nv;
            }
          }
      }
      const int64_t rb = (b - kb0) * 4;
      const F dv = I::template expand<NTK>(rp.d + rb, id), ov = I::template expand<NTK>(rp.o + rb, id);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const F iq = I::sub(I::cvt(K == Kind::kBin ? I::twice(red[v]) : red[v]), ov);
        A[v] = I::fmadd(I::mul(Sv[v], dv), iq, A[v]);
        if constexpr (K == Kind::kAsym) A[v] = I::fmadd(Mv[v], I::template expand<NTK>(rp.ds + rb, id), A[v]);
      }
    }
    for (int v = 0; v < NV; ++v) I::store(acc + v * S::VL, A[v]);
  }
};

/// Tokens [t0, t0 + nt) (nt <= NTK) x tiles [tile0, tile1): repack, microkernel over K chunks,
/// store the rows < w.rows of the real tiles and tokens. Prefetch sweeps stay below pf_tile1.
template <class I, CodeFmt C, Kind K, int NTL, int NTK>
void run_group(const TiledView& w, const QDesc& D, const QActs& a, int64_t t0, int64_t nt, int64_t tile0,
               int64_t tile1, int64_t pf_tile1, float* y, int64_t ldy) {
  using M = Micro<I, C, K, NTL, NTK>;
  using S = typename M::S;
  constexpr int VL = S::VL, NV = S::NV, PER = NV * VL;  // floats per tile group
  alignas(64) float acc[kMaxTileBlock / NTL * PER];
  Repack rp;
  const fmt::TiledLayout& L = w.L;
  const int64_t KB = int64_t(L.KB), ngroups = (tile1 - tile0 + NTL - 1) / NTL;
  const int32_t obias = D.off - (D.fmt == CodeFmt::k8 ? (I::kBias8 << D.shift) : 0);
  for (int64_t i = 0; i < ngroups * PER; ++i) acc[i] = 0.0f;
  const int8_t* qp[NTK];
  for (int t = 0; t < NTK; ++t) qp[t] = a.q + (t0 + (t < nt ? t : nt - 1)) * KB * 32;
  for (int64_t kb0 = 0; kb0 < KB; kb0 += kChunkBlocks) {
    const int64_t kb1 = kb0 + kChunkBlocks < KB ? kb0 + kChunkBlocks : KB;
    for (int64_t b = kb0; b < kb1; ++b)
      for (int s = 0; s < 4; ++s) {
        const int64_t t = t0 + (s < nt ? s : nt - 1), i = (b - kb0) * 4 + s;
        const float d = a.d[t * KB + b];
        const int32_t sum = a.sum[t * KB + b];
        rp.d[i] = d;
        rp.o[i] = float(obias * sum);
        rp.ds[i] = d * float(sum);
      }
    for (int64_t g = 0; g < ngroups; ++g) {
      const uint8_t* tp[NTL];
      for (int i = 0; i < NTL; ++i) {
        const int64_t tile = tile0 + g * NTL + i < tile1 ? tile0 + g * NTL + i : tile1 - 1;
        tp[i] = w.data + tile * int64_t(L.tile_bytes);
      }
      Sweep pf;
      if (a.T <= 4 && KB <= kChunkBlocks) {  // weights streamed once: prefetch the group ahead
        const int64_t first = tile0 + (g + kPrefetchGroups) * NTL;
        pf.p = w.data + first * int64_t(L.tile_bytes);
        pf.end = w.data + (first + NTL < pf_tile1 ? first + NTL : pf_tile1) * int64_t(L.tile_bytes);
        pf.n = (NTL * int64_t(L.tile_bytes) / 64 + KB - 1) / KB;
      }
      M::run(tp, qp, rp, L, kb0, kb1, acc + g * PER, pf);
    }
  }
  constexpr const auto& tab = S::tab;
  for (int64_t g = 0; g < ngroups; ++g)
    for (int v = 0; v < NV; ++v)
      for (int x = 0; x < VL; ++x) {
        const int64_t tile = tile0 + g * NTL + tab.tl[v][x], r = tile * 4 + tab.row[v][x];
        const int tk = tab.tk[v][x];
        if (tile < tile1 && r < w.rows && tk < nt) y[(t0 + tk) * ldy + r] = acc[g * PER + v * VL + x];
      }
}

/// Tiles [tile0, tile1) x all tokens for one code format: cache blocks of tiles (for T > 4 a block
/// of <= ~192 KiB, a multiple of 4 tiles, is reused by every token group while it sits in L2), token
/// groups of 4 (3 padded to 4), then a group of 2 or 1.
template <class I, CodeFmt C, Kind K, int NTL1, int NTL2, int NTL4>
void gemm_fmt(const TiledView& w, const QDesc& D, const QActs& a, int64_t tile0, int64_t tile1, float* y,
              int64_t ldy) {
  int64_t tb = kMaxTileBlock;
  if (a.T > 4) {
    const int64_t fit = int64_t((192u << 10) / w.L.tile_bytes) / 4 * 4;
    tb = fit < 4 ? 4 : fit > kMaxTileBlock ? kMaxTileBlock : fit;
  }
  for (int64_t b0 = tile0; b0 < tile1; b0 += tb) {
    const int64_t b1 = b0 + tb < tile1 ? b0 + tb : tile1;
    for (int64_t t = 0; t < a.T;) {
      const int64_t nt = a.T - t;
      if (nt >= 3) {
        run_group<I, C, K, NTL4, 4>(w, D, a, t, nt < 4 ? nt : 4, b0, b1, tile1, y, ldy);
        t += 4;
      } else if (nt == 2) {
        run_group<I, C, K, NTL2, 2>(w, D, a, t, 2, b0, b1, tile1, y, ldy);
        t += 2;
      } else {
        run_group<I, C, K, NTL1, 1>(w, D, a, t, 1, b0, b1, tile1, y, ldy);
        t += 1;
      }
    }
  }
}

/// The gemm of qkernels.h for the ISA policy I with microkernel tile counts NTL1 (1 token), NTL2
/// (2 tokens), NTL4 (4 tokens). Tensors with R != 4 use the scalar reference.
template <class I, int NTL1, int NTL2, int NTL4>
void gemm_simd(const TiledView& w, const QActs& a, int64_t tile0, int64_t tile1, float* y, int64_t ldy) {
  QDesc D;
  if (w.L.R != 4 || !qdesc(w, &D)) return gemm_scalar(w, a, tile0, tile1, y, ldy);
  if (tile1 <= tile0 || a.T <= 0) return;
  auto go = [&](auto c, auto k) {
    gemm_fmt<I, decltype(c)::value, decltype(k)::value, NTL1, NTL2, NTL4>(w, D, a, tile0, tile1, y, ldy);
  };
  using Sym = std::integral_constant<Kind, Kind::kSym>;
  using Asym = std::integral_constant<Kind, Kind::kAsym>;
  switch (D.fmt) {
    case CodeFmt::k8: return D.asym ? go(Fmt<CodeFmt::k8>(), Asym()) : go(Fmt<CodeFmt::k8>(), Sym());
    case CodeFmt::k4: return D.asym ? go(Fmt<CodeFmt::k4>(), Asym()) : go(Fmt<CodeFmt::k4>(), Sym());
    case CodeFmt::k3: return D.asym ? go(Fmt<CodeFmt::k3>(), Asym()) : go(Fmt<CodeFmt::k3>(), Sym());
    case CodeFmt::k2: return D.asym ? go(Fmt<CodeFmt::k2>(), Asym()) : go(Fmt<CodeFmt::k2>(), Sym());
    case CodeFmt::k1: return go(Fmt<CodeFmt::k1>(), std::integral_constant<Kind, Kind::kBin>());
  }
}

}  // namespace kerf::rt::qk
