// The tiled weight layout (formats/SPEC.md section 6.6): views and the scalar dequantization of one
// row (qkernels.h). The integer kernels are in qkernels*.cpp.
#include "qkernels.h"

// SPEC 6.4 arithmetic: (s * u) + m rounded twice, never fused (see kernels.cpp). With the f16 scales
// of the tiled layout s * u is exact (11 + 8 significant bits), so this only keeps the rule explicit.
#if defined(__clang__)
#define KERF_NO_FP_CONTRACT _Pragma("clang fp contract(off)")
#else
#define KERF_NO_FP_CONTRACT
#if defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#endif

namespace kerf::rt {
namespace {
inline uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
}  // namespace

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
  KERF_NO_FP_CONTRACT
  const fmt::TiledLayout& L = w.L;
  const uint8_t* tile = w.data + uint64_t(r) / L.R * L.tile_bytes;
  const uint64_t i = uint64_t(r) % L.R;
  const bool asym = w.dtype == fmt::DType::kQAsym;
  // q = u - zero (qsym: 2^(b-1), ternary: 1), binary q = 2u - 1; qasym w = (s * u) + m.
  const int zero = w.dtype == fmt::DType::kQSym ? 1 << (w.bits - 1) : w.dtype == fmt::DType::kTernary ? 1 : 0;
  const int mul = w.dtype == fmt::DType::kBinary ? 2 : 1;
  const int neg = w.dtype == fmt::DType::kBinary ? 1 : zero;
  const uint32_t width = w.dtype == fmt::DType::kTernary ? 2 : w.dtype == fmt::DType::kBinary ? 1 : w.bits;
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
