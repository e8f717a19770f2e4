// runtime-lite integer kernels for the tiled weight layout (formats/SPEC.md section 6.6): int8
// activations quantized on the fly per 32-column block (llama.cpp's Q8_0 rule), integer dot products
// of weight codes with them, one fused multiply-add per block into an f32 accumulator per output.
//
// Normative arithmetic (every ISA gives the same bits as the scalar reference; tests check it):
//   Activations, per token row x[0..K) padded with zeros to KB * 32, per block b (32 values):
//     amax = max |x_e|;  d_b = amax / 127.0f;  id = d_b >= 0x1p-126f ? 1.0f / d_b : 0.0f;
//     q_e = clamp(nearbyint(x_e * id), -127, 127)   (round half to even; x_e * id rounded to f32)
//     sum_b = sum of q_e (int32)
//   (id is 0 also for a subnormal d_b, whose 1 / d_b may overflow: such a block quantizes to 0.
//   Non-finite x: amax ignores NaN, q_e of a NaN x_e * id is 0; an inf gives d_b = inf, q = 0.)
//   Weight row r, block b of group j = b / gpb, codes u_e of the block, s = f32(s_j), m = f32(m_j):
//     dot_b = sum_e u_e * q_e                                   (int32, exact)
//     qsym b bits: iq = dot_b - 2^(b-1) * sum_b;  ternary: iq = dot_b - sum_b;
//     binary: iq = 2 * dot_b - sum_b;  qasym: iq = dot_b                  (all exact int32)
//     acc = fmaf(s * d_b, (float)iq, acc)          (s * d_b rounded to f32 first; (float)iq exact)
//     qasym only, then: acc = fmaf(m, d_b * (float)sum_b, acc)   (the product rounded first)
//   over b = 0 .. KB-1 in order, acc starting at +0.0f; y[t, r] = acc.
// |iq| <= 32 * 255 * 127 < 2^24, so (float)iq is exact.
//
// No allocation, no exceptions. Callers own every buffer. Kernels: qkernels_scalar.cpp (the
// reference; also every tensor with R != 4), qkernels_avx2.cpp, qkernels_avx512.cpp,
// qkernels_neon.cpp (+ qkernels_neondot.cpp) on the shared driver of qkernels_impl.h; tests in
// tests/runtime/test_qkernels.cpp, speed in bench/kernels_bench.cpp. gemm uses about 28 KiB of stack.
#pragma once

#include <cstdint>

#include "model.h"

namespace kerf::rt {

/// A kTiled weight tensor inside the mapping, with its geometry (fmt::tiled_layout).
struct TiledView {
  fmt::DType dtype = fmt::DType::kQSym;  ///< kQSym, kQAsym, kTernary or kBinary
  uint32_t bits = 0;                     ///< code bits (kQSym / kQAsym: 2, 3, 4, 8; else 0)
  int64_t rows = 0, cols = 0;
  fmt::TiledLayout L;
  const uint8_t* data = nullptr;         ///< payload start (64-byte aligned in the mapping)
};

/// True (and fills *out) when `w` is a generic quantized dtype in the kTiled layout.
bool tiled_view(const WeightView& w, TiledView* out);

/// Int8 activations of T token rows of K values: KB = ceil(K / 32) blocks per row.
///   q   int8 [T][KB * 32]  (the padding of the last block is 0)
///   d   f32  [T][KB]       block scales
///   sum i32  [T][KB]       block sums of q
/// q must be 64-byte aligned (kernels use aligned loads of 32-byte rows).
struct QActs {
  int64_t T = 0, KB = 0;
  int8_t* q = nullptr;
  float* d = nullptr;
  int32_t* sum = nullptr;
};

/// Instruction sets with kernels. kScalar always exists; others only where compiled for the build's
/// architecture and supported by the running CPU.
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kNeon = 3, kNeonDot = 4 };
const char* isa_name(Isa isa);

/// One ISA's kernels. All functions compute exactly the normative arithmetic above.
struct QKernels {
  Isa isa;
  /// Quantizes x: [T, K] f32 into a (a->T == T, a->KB == ceil(K / 32), buffers sized by the caller).
  void (*quantize_acts)(const float* x, int64_t T, int64_t K, const QActs* a);
  /// y[t * ldy + r] for t < a.T and the rows r of tiles [tile0, tile1) that are < w.rows:
  /// the dot of weight row r with activation row t (normative arithmetic). a.KB == w.L.KB.
  /// Writes nothing else. Safe to call concurrently on disjoint tile ranges.
  void (*gemm)(const TiledView& w, const QActs& a, int64_t tile0, int64_t tile1, float* y, int64_t ldy);
};

/// The kernels of `isa`, or nullptr when this build or this CPU lacks it.
const QKernels* qkernels(Isa isa);
/// The best available kernels for this CPU. The environment variable KERF_ISA (scalar, avx2,
/// avx512vnni, neon, neondot) forces one; nullptr when it names an unknown or unavailable ISA (the
/// caller reports that as an error: never a silent fallback).
const QKernels* qkernels_best();
/// Parses an ISA name as above; false when unknown.
bool parse_isa(const char* name, Isa* out);

/// Dequantizes row r (< w.rows) of a tiled tensor into out[0..w.cols) with the plain layout's exact
/// arithmetic (SPEC 6.4: w = s * q, or (s * u) + m unfused), for Embedding lookups and tests.
void dequant_row_tiled(const TiledView& w, int64_t r, float* out);

}  // namespace kerf::rt
