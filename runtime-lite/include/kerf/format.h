// The .kerf artifact, version 1: the on-disk structures shared by the writer (formats/) and the
// reader (runtime-lite/). Dependency-free: C++17 standard library only, no exceptions needed.
// formats/SPEC.md is the normative description; this header must agree with it.
//
// All integers little-endian. Layout of a file:
//   [FileHeader][metadata section][string pool][tensor table][program section] ... pad to 4096 ...
//   [data section: tensor payloads, each 64-byte aligned (offsets relative to data_offset)]
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "kerf/xxh64.h"

namespace kerf::fmt {

inline constexpr char kMagic[8] = {'K', 'E', 'R', 'F', 'A', 'R', 'T', '\0'};
inline constexpr uint16_t kVersionMajor = 1;  ///< bumped only for breaking changes
inline constexpr uint16_t kVersionMinor = 3;  ///< 1.1: generic quantized dtypes (kQSym .. kBinary); 1.2: tiled layout; 1.3: GPU / NPU placement
inline constexpr uint64_t kDataAlign = 4096;  ///< data section start alignment (page, for mmap)
inline constexpr uint64_t kTensorAlign = 64;  ///< each tensor payload's alignment within data
inline constexpr uint32_t kMaxRank = 4;

/// At offset 0. `header_size` lets later minor versions grow the header: readers use the fields
/// they know and skip the rest. Hashes are XXH64 (seed 0), see kerf/xxh64.h.
struct FileHeader {
  char magic[8];
  uint16_t version_major;
  uint16_t version_minor;
  uint32_t header_size;      ///< sizeof(FileHeader) as written
  uint64_t file_size;        ///< total bytes; a reader rejects a file of another size (truncation)
  uint64_t meta_offset, meta_size;        ///< metadata section (MetaEntry records)
  uint64_t strings_offset, strings_size;  ///< string pool: names referenced by (offset, size)
  uint64_t tensors_offset;                ///< tensor table: tensor_count x TensorEntry
  uint32_t tensor_count, tensor_entry_size;
  uint64_t program_offset, program_size;  ///< program section (ProgramHeader, ops)
  uint64_t data_offset, data_size;        ///< data section (tensor payloads)
  uint64_t sections_hash;  ///< XXH64 of bytes [header_size, data_offset): meta, strings, table, program
  uint64_t header_hash;    ///< XXH64 of the header bytes [0, header_size) with this field zeroed
};
static_assert(sizeof(FileHeader) == 120, "FileHeader layout");

/// Tensor element types. Quantized types store a [rows, cols] matrix (shape[0] = rows = output
/// channels, shape[1] = cols = input channels) quantized group-wise along cols with group size
/// `group_size` (g); ng = ceil(cols / g) groups per row, the last one partial when g does not divide
/// cols (its scale is computed over its real elements only). Payload layouts:
///   kQ4Asym: codes  u8 [rows][ceil(cols/2)]  element c of a row in byte c/2, low nibble when c even
///            scale  f16[rows][ng]            w = code * scale + min,  code in 0..15
///            min    f16[rows][ng]            (llama.cpp Q4_1 convention: fp16 scale and offset)
///   kQ8Sym:  codes  i8 [rows][cols]          w = code * scale, code in -127..127
///            scale  f16[rows][ng]
/// The three / two arrays follow each other with no padding. bytes = quant_payload_bytes().
///
/// Generic quantized dtypes (format 1.1). TensorEntry.flags carries their parameters, see QFlags
/// below (flags must be 0 for every other dtype). ng = ceil(cols / g) groups per row; the groups of
/// the whole tensor are numbered i = r * ng + j (row r, group j of the row), NG = rows * ng.
///   Codes, one byte string of rb bytes per row, rows after each other, then the group parameters:
///     kQSym   b bits (2..8): rb = ceil(cols * b / 8). Element c's code u (0 <= u < 2^b) is the
///             b-bit field at bit offset c * b of its row's bytes, LSB first (bit k of the row
///             string is bit k % 8 of byte k / 8; a field may straddle bytes; padding bits are 0).
///             w = s_i * (u - 2^(b-1))      (q = u - 2^(b-1) in [-2^(b-1), 2^(b-1) - 1])
///     kQAsym  b bits (2..8): codes as kQSym.   w = s_i * u + m_i
///             (b = 4 with kF16 scales is byte-identical to kQ4Asym.)
///     kTernary: rb = ceil(cols / 5); byte k of a row holds elements 5k..5k+4 as base-3 digits,
///             byte = sum_{t<5} d_t * 3^t with d = q + 1, q in {-1, 0, +1} (padding digits d = 1).
///             Readers decode (byte mod 243). w = s_i * q.  (1.6 bits per weight.)
///     kBinary: rb = ceil(cols / 8); bit c % 8 of byte c / 8 set means q = +1, clear q = -1
///             (padding bits 0). w = s_i * q.
///   Group parameters, scale format kF16 (QFlags scale field 0):
///     s f16[NG], then for kQAsym m f16[NG].
///   Group parameters, scale format kK6 (field 1; llama.cpp k-quant style): super-blocks of 8
///     consecutive groups in the flat order i, NS = ceil(NG / 8), P6 = ceil(NG * 6 / 8) bytes:
///     sc  6-bit unsigned [NG] packed LSB first (value i at bit offset 6 i), P6 bytes
///     (kQAsym) mc 6-bit unsigned [NG] packed the same way, P6 bytes
///     d   f16[NS]      s_i = d[i / 8] * sc_i
///     (kQAsym) dm f16[NS]   m_i = dm[i / 8] * mc_i
///   All arrays follow each other with no padding. bytes = quant_payload_bytes(t, rows, cols, g, flags);
///   the array offsets are given by qlayout() below. A super-block of kK6 may span row boundaries
///   (when ng is not a multiple of 8). Padding bits of the 6-bit arrays are 0 (readers ignore them).
///   Dequantization is computed in f32 (formats/SPEC.md section 6.4 is normative, bit-exact):
///     s_i = f16_to_f32(s[i])                          (kF16)
///     s_i = f16_to_f32(d[i / 8]) * float(sc_i)        (kK6; one f32 multiply, rounded)
///     m_i likewise from m / (dm, mc);  w = s_i * float(q)  or  (s_i * float(u)) + m_i, the product
///     rounded to f32 before the addition (no fused multiply-add).
enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kI32 = 3,
  kI64 = 4,
  kQ8Sym = 16,
  kQ4Asym = 17,
  kQSym = 18,
  kQAsym = 19,
  kTernary = 20,
  kBinary = 21,
};

/// Group-parameter storage of the generic quantized dtypes.
enum class ScaleFormat : uint32_t {
  kF16 = 0,  ///< one f16 per group and parameter
  kK6 = 1,   ///< 6-bit per group and parameter under an f16 super-scale per 8 groups
};
inline constexpr uint32_t kK6GroupsPerSuper = 8;
/// Weight layout of a generic quantized dtype (TensorEntry.flags bits 16-23, format 1.2).
enum class Layout : uint32_t {
  kPlain = 0,  ///< rows of codes, then the group parameters (section 6.3 of formats/SPEC.md)
  kTiled = 1,  ///< row tiles x 32-column blocks, parameters next to their blocks (section 6.6)
};
/// TensorEntry.flags of a generic quantized dtype: bits 0-7 code bits b (kQSym / kQAsym: 2..8;
/// kTernary / kBinary: 0), bits 8-15 ScaleFormat, bits 16-23 Layout, bits 24-31 log2 of the rows
/// per tile R (kTiled: 0..4, i.e. R in {1, 2, 4, 8, 16}; kPlain: 0).
inline constexpr uint32_t make_qflags(uint32_t bits, ScaleFormat sf) { return bits | (uint32_t(sf) << 8); }
inline constexpr uint32_t make_qflags_tiled(uint32_t bits, ScaleFormat sf, uint32_t log2_rows) {
  return bits | (uint32_t(sf) << 8) | (uint32_t(Layout::kTiled) << 16) | (log2_rows << 24);
}
inline constexpr uint32_t qflags_bits(uint32_t flags) { return flags & 0xffu; }
inline constexpr ScaleFormat qflags_scale(uint32_t flags) { return ScaleFormat((flags >> 8) & 0xffu); }
inline constexpr Layout qflags_layout(uint32_t flags) { return Layout((flags >> 16) & 0xffu); }
/// Rows per tile R of a kTiled tensor (1 for kPlain).
inline constexpr uint32_t qflags_tile_rows(uint32_t flags) { return 1u << ((flags >> 24) & 0xffu); }
/// Columns per block of the tiled layout (the unit of the int8 dot products of runtime-lite).
inline constexpr uint32_t kTileBlock = 32;

inline const char* scale_format_name(ScaleFormat sf) {
  switch (sf) {
    case ScaleFormat::kF16: return "f16";
    case ScaleFormat::kK6: return "k6";
  }
  return "?";
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kQ8Sym: return "q8_sym";
    case DType::kQ4Asym: return "q4_asym";
    case DType::kQSym: return "qsym";
    case DType::kQAsym: return "qasym";
    case DType::kTernary: return "ternary";
    case DType::kBinary: return "binary";
  }
  return "?";
}
inline bool dtype_is_generic_quant(DType t) {
  return t == DType::kQSym || t == DType::kQAsym || t == DType::kTernary || t == DType::kBinary;
}
inline bool dtype_is_quantized(DType t) {
  return t == DType::kQ8Sym || t == DType::kQ4Asym || dtype_is_generic_quant(t);
}
/// Whether `flags` is valid for `t`: 0 for every non-generic dtype; for the generic ones the
/// QFlags rules (bits 2..8 for kQSym / kQAsym, 0 for kTernary / kBinary; scale format 0 or 1;
/// layout kPlain with bits 24-31 zero, or kTiled with log2 R <= 4, scale format f16 and, for
/// kQSym / kQAsym, b in {2, 3, 4, 8}). The tiled layout also needs group_size % 32 == 0 (checked
/// by tensor_payload_bytes(), which knows the group size).
inline const char* qflags_problem(DType t, uint32_t flags) {
  if (!dtype_is_generic_quant(t)) return flags == 0 ? nullptr : "flags must be 0 for this dtype";
  if (uint32_t(qflags_scale(flags)) > 1u) return "unknown scale format (bits 8-15 must be 0 = f16 or 1 = k6)";
  const uint32_t b = qflags_bits(flags);
  if (t == DType::kQSym || t == DType::kQAsym) {
    if (b < 2 || b > 8) return "code bits (bits 0-7) must be 2..8";
  } else if (b != 0) {
    return "code bits (bits 0-7) must be 0 for ternary / binary";
  }
  const uint32_t layout = (flags >> 16) & 0xffu, lr = flags >> 24;
  if (layout == uint32_t(Layout::kPlain)) return lr == 0 ? nullptr : "bits 24-31 must be 0 for the plain layout";
  if (layout != uint32_t(Layout::kTiled)) return "unknown layout (bits 16-23 must be 0 = plain or 1 = tiled)";
  if (lr > 4) return "tile rows (bits 24-31, log2) must be 0..4";
  if (qflags_scale(flags) != ScaleFormat::kF16) return "the tiled layout needs f16 scales";
  if ((t == DType::kQSym || t == DType::kQAsym) && b != 2 && b != 3 && b != 4 && b != 8)
    return "the tiled layout needs code bits 2, 3, 4 or 8";
  return nullptr;
}
inline bool qflags_valid(DType t, uint32_t flags) { return qflags_problem(t, flags) == nullptr; }
/// Bytes per row of the code array of a generic quantized dtype (0 for other dtypes).
inline uint64_t qcode_row_bytes(DType t, uint64_t cols, uint32_t flags) {
  switch (t) {
    case DType::kQSym: case DType::kQAsym: return (cols * qflags_bits(flags) + 7) / 8;
    case DType::kTernary: return (cols + 4) / 5;
    case DType::kBinary: return (cols + 7) / 8;
    default: return 0;
  }
}
/// Number of per-group parameter arrays: 2 for kQAsym (scale, min), 1 for the other generic ones.
inline uint32_t qparam_arrays(DType t) { return t == DType::kQAsym ? 2u : 1u; }
/// Bytes of the group parameters of a generic quantized dtype with NG groups in total.
inline uint64_t qparam_bytes(DType t, uint64_t n_groups, uint32_t flags) {
  const uint64_t arrays = qparam_arrays(t);
  if (qflags_scale(flags) == ScaleFormat::kK6) {
    const uint64_t ns = (n_groups + kK6GroupsPerSuper - 1) / kK6GroupsPerSuper;
    return arrays * ((n_groups * 6 + 7) / 8 + 2 * ns);
  }
  return arrays * 2 * n_groups;
}
/// Byte offsets (from the payload start) and counts of the arrays of a generic quantized payload.
/// Codes start at offset 0 (row r at r * row_bytes). Offsets of arrays the dtype / scale format
/// does not have are 0. Assumes qflags_valid(t, flags), g >= 1; no overflow checks (see
/// tensor_payload_bytes()).
struct QLayout {
  uint64_t row_bytes = 0;    ///< rb, code bytes per row
  uint64_t n_groups = 0;     ///< NG = rows * ceil(cols / g)
  uint64_t n_super = 0;      ///< kK6: NS = ceil(NG / 8); kF16: 0
  uint64_t scale = 0;        ///< kF16: s f16[NG]; kK6: sc 6-bit [NG]
  uint64_t min = 0;          ///< kQAsym only. kF16: m f16[NG]; kK6: mc 6-bit [NG]
  uint64_t super_scale = 0;  ///< kK6: d f16[NS]
  uint64_t super_min = 0;    ///< kK6 kQAsym: dm f16[NS]
  uint64_t bytes = 0;        ///< whole payload (== quant_payload_bytes)
};
inline QLayout qlayout(DType t, uint64_t rows, uint64_t cols, uint64_t g, uint32_t flags) {
  QLayout L;
  const bool asym = t == DType::kQAsym;
  L.row_bytes = qcode_row_bytes(t, cols, flags);
  L.n_groups = rows * ((cols + g - 1) / g);
  L.scale = rows * L.row_bytes;
  if (qflags_scale(flags) == ScaleFormat::kK6) {
    const uint64_t p6 = (L.n_groups * 6 + 7) / 8;
    L.n_super = (L.n_groups + kK6GroupsPerSuper - 1) / kK6GroupsPerSuper;
    L.min = asym ? L.scale + p6 : 0;
    L.super_scale = L.scale + (asym ? 2 : 1) * p6;
    L.super_min = asym ? L.super_scale + 2 * L.n_super : 0;
    L.bytes = L.super_scale + (asym ? 4 : 2) * L.n_super;
  } else {
    L.min = asym ? L.scale + 2 * L.n_groups : 0;
    L.bytes = L.scale + (asym ? 4 : 2) * L.n_groups;
  }
  return L;
}
/// Geometry of a kTiled payload (formats/SPEC.md section 6.6). The matrix is cut into NT =
/// ceil(rows / R) tiles of R rows (the last one padded with zero rows) and each row into KB =
/// ceil(cols / 32) blocks of 32 columns (the last one padded); a group of g columns (g % 32 == 0)
/// is gpb = g / 32 blocks, ng = ceil(cols / g) groups per row, the last one may have fewer blocks.
/// A tile is, for each group j in order: the group parameters of its R rows (s f16[R], then for
/// kQAsym m f16[R]), then each block of the group: R rows x cb code bytes. Tiles are padded to
/// tile_bytes, a multiple of 64, and follow each other. Block code bytes cb: b = 8: 32; b = 4: 16;
/// b = 3: 12; b = 2 and ternary: 8; binary: 4.
struct TiledLayout {
  uint64_t R = 0, KB = 0, gpb = 0, ng = 0, NT = 0;
  uint64_t cb = 0;          ///< code bytes of one row in one block
  uint64_t param_bytes = 0; ///< bytes of one group's parameters in a tile: R * 2 * (kQAsym ? 2 : 1)
  uint64_t group_bytes = 0; ///< param_bytes + gpb * R * cb: stride between groups within a tile
  uint64_t tile_bytes = 0;  ///< multiple of 64
  uint64_t bytes = 0;       ///< NT * tile_bytes
  /// Offset of group j's parameters from the tile start (scales; mins follow at + 2 R).
  uint64_t param_offset(uint64_t j) const { return j * group_bytes; }
  /// Offset of block kb's codes (row 0 of the tile; row i at + i * cb) from the tile start.
  uint64_t block_offset(uint64_t kb) const {
    return (kb / gpb) * group_bytes + param_bytes + (kb % gpb) * R * cb;
  }
};
/// Unpacks one row's 32-column block of the tiled layout (SPEC.md §6.6) into codes u[0..32).
/// w: code width in bits — 8, 4, 3 or 2 for qsym / qasym, 2 for ternary, 1 for binary;
/// src: the row's tiled_block_bytes() = 4·w bytes. Output: 0 <= u[e] < 2^w (unsigned codes, before the
/// dtype's zero offset). The scalar definition of the layout; the SIMD kernels must agree with it.
inline void tiled_get_block(uint32_t w, const uint8_t* src, uint8_t* u) {
  uint32_t word = 0;  // bit e: bit 2 (w = 3) or bit 0 (w = 1) of u_e; little-endian
  if (w == 3 || w == 1)
    for (int k = 3; k >= 0; --k) word = word << 8 | src[(w == 3 ? 8 : 0) + k];
  for (uint32_t e = 0; e < kTileBlock; ++e) {
    switch (w) {
      case 8: u[e] = src[e]; break;
      case 4: u[e] = uint8_t((src[e % 16] >> (e < 16 ? 0 : 4)) & 15u); break;
      case 3:
      case 2: u[e] = uint8_t(((src[e % 8] >> (2 * (e / 8))) & 3u) | (w == 3 ? ((word >> e) & 1u) << 2 : 0u)); break;
      default: u[e] = uint8_t((word >> e) & 1u); break;
    }
  }
}
/// Code bytes per row per 32-column block of the tiled layout (0 if `t`, `bits` have none).
inline uint64_t tiled_block_bytes(DType t, uint32_t bits) {
  if (t == DType::kTernary) return 8;
  if (t == DType::kBinary) return 4;
  if (t == DType::kQSym || t == DType::kQAsym) {
    switch (bits) {
      case 8: return 32;
      case 4: return 16;
      case 3: return 12;
      case 2: return 8;
      default: return 0;
    }
  }
  return 0;
}
/// Assumes qflags_valid(t, flags) with the kTiled layout and g % 32 == 0; no overflow checks (see
/// tensor_payload_bytes()).
inline TiledLayout tiled_layout(DType t, uint64_t rows, uint64_t cols, uint64_t g, uint32_t flags) {
  TiledLayout L;
  L.R = qflags_tile_rows(flags);
  L.KB = (cols + kTileBlock - 1) / kTileBlock;
  L.gpb = g / kTileBlock;
  L.ng = (cols + g - 1) / g;
  L.NT = (rows + L.R - 1) / L.R;
  L.cb = tiled_block_bytes(t, qflags_bits(flags));
  L.param_bytes = L.R * 2 * qparam_arrays(t);
  L.group_bytes = L.param_bytes + L.gpb * L.R * L.cb;
  const uint64_t raw = L.ng * L.param_bytes + L.KB * L.R * L.cb;
  L.tile_bytes = (raw + 63) / 64 * 64;
  L.bytes = L.NT * L.tile_bytes;
  return L;
}

inline uint32_t dtype_elem_size(DType t) {  // plain types only
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kI64: return 8;
    default: return 0;
  }
}
/// Payload bytes of a quantized [rows, cols] matrix with group size g (g >= 1) and TensorEntry
/// flags `flags` (generic dtypes; 0 otherwise). 0 if unknown type. No overflow checks: see
/// tensor_payload_bytes().
inline uint64_t quant_payload_bytes(DType t, uint64_t rows, uint64_t cols, uint64_t g, uint32_t flags = 0) {
  const uint64_t ng = (cols + g - 1) / g;
  if (t == DType::kQ4Asym) return rows * ((cols + 1) / 2) + 4 * rows * ng;
  if (t == DType::kQ8Sym) return rows * cols + 2 * rows * ng;
  if (dtype_is_generic_quant(t)) {
    if (qflags_layout(flags) == Layout::kTiled) return tiled_layout(t, rows, cols, g, flags).bytes;
    return rows * qcode_row_bytes(t, cols, flags) + qparam_bytes(t, rows * ng, flags);
  }
  return 0;
}

/// One row of the tensor table (fixed 80 bytes; readers use tensor_entry_size to step).
struct TensorEntry {
  uint32_t name_offset, name_size;  ///< into the string pool
  uint32_t dtype;                   ///< DType
  uint32_t rank;                    ///< 1..kMaxRank
  int64_t shape[kMaxRank];          ///< unused trailing dims are 0
  uint32_t group_size;              ///< quantized types: g; else 0
  uint32_t flags;                   ///< generic quantized dtypes: QFlags (bits, scale format); else 0
  uint64_t offset;                  ///< payload offset relative to data_offset, multiple of 64
  uint64_t size;                    ///< payload bytes
  uint64_t hash;                    ///< XXH64 of the payload
};
static_assert(sizeof(TensorEntry) == 80, "TensorEntry layout");

/// Metadata section: uint32 count, then `count` records:
///   uint32 key_size, key bytes (dotted ASCII, e.g. "model.n_layers"), uint8 MetaType, value:
///     kInt: int64 | kFloat: float64 | kString: uint32 size + UTF-8 bytes | kBytes: uint64 size + bytes
///   Records are packed (no alignment); read with memcpy.
enum class MetaType : uint8_t { kInt = 1, kFloat = 2, kString = 3, kBytes = 4 };

/// Program section: ProgramHeader, then `n_values` ValueEntry, then `n_ops` ops, each an OpEntry
/// followed by n_inputs uint32 refs, n_outputs uint32 value ids, n_attrs OpAttr.
/// Ops run in order. Value 0..n_values-1 are activations (float32 at run time);
/// `input_value` holds the token ids, `output_value` the logits.
struct ProgramHeader {
  uint32_t n_values;
  uint32_t n_ops;
  uint32_t input_value;   ///< value id fed with token ids
  uint32_t output_value;  ///< value id holding logits [T, vocab]
};
struct ValueEntry {
  uint32_t name_offset, name_size;  ///< into the string pool
  uint32_t width;                   ///< elements per token (last dim): D, H*Dh, vocab ...
  uint32_t reserved;
};
enum class OpCode : uint32_t {
  kEmbedding = 1,  ///< in: tokens value, table tensor                 out: [T, D]
  kRMSNorm = 2,    ///< in: x value, weight tensor          attrs: eps
  kLinear = 3,     ///< in: x value, weight tensor [N, K]              out: [T, N]
  kRotary = 4,     ///< in: x value                          attrs: head_dim, theta, interleaved
  kAttention = 5,  ///< in: q, k, v values                   attrs: n_heads, n_kv_heads, head_dim, scale, causal
  kGatedFFN = 6,   ///< in: x value, w1, w3, w2 tensors                attrs: activation (1 = silu)
  kAdd = 7,        ///< in: a, b values
};
/// Compute unit of an op (OpEntry.backend: its decode placement; format 1.3 adds kGpu and kNpu and the
/// metadata key placement.prefill for evaluations of more than one token). runtime-lite/src/backend.h
/// describes how the executor moves values between units.
enum class Backend : uint32_t { kCpu = 0, kGpu = 1, kNpu = 2 };
inline constexpr uint32_t kBackendCount = 3;
inline const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kCpu: return "cpu";
    case Backend::kGpu: return "gpu";
    case Backend::kNpu: return "npu";
  }
  return nullptr;
}
struct OpEntry {
  uint32_t op;        ///< OpCode
  uint32_t backend;   ///< Backend
  uint32_t n_inputs, n_outputs, n_attrs;
  uint32_t name_offset, name_size;  ///< node name, for error messages
  uint32_t reserved;
};
/// Input reference: bit 31 set = tensor-table index (low 31 bits), clear = value id.
inline constexpr uint32_t kRefTensorBit = 0x80000000u;
enum class AttrKey : uint32_t {
  kEps = 1, kHeadDim = 2, kTheta = 3, kInterleaved = 4, kNHeads = 5, kNKvHeads = 6,
  kScale = 7, kCausal = 8, kActivation = 9,
};
struct OpAttr {
  uint32_t key;   ///< AttrKey
  uint32_t kind;  ///< 0 = int (i), 1 = float (f)
  union {
    int64_t i;
    double f;
  };
};
static_assert(sizeof(OpAttr) == 16, "OpAttr layout");

inline const char* op_name(OpCode op) {
  switch (op) {
    case OpCode::kEmbedding: return "Embedding";
    case OpCode::kRMSNorm: return "RMSNorm";
    case OpCode::kLinear: return "Linear";
    case OpCode::kRotary: return "Rotary";
    case OpCode::kAttention: return "Attention";
    case OpCode::kGatedFFN: return "GatedFFN";
    case OpCode::kAdd: return "Add";
  }
  return nullptr;
}
/// Input signature of an op: one char per input, 'v' = value id, 't' = tensor reference
/// (kRefTensorBit set). Every op has exactly one output value. nullptr for an unknown op code.
inline const char* op_input_kinds(OpCode op) {
  switch (op) {
    case OpCode::kEmbedding: return "vt";
    case OpCode::kRMSNorm: return "vt";
    case OpCode::kLinear: return "vt";
    case OpCode::kRotary: return "v";
    case OpCode::kAttention: return "vvv";
    case OpCode::kGatedFFN: return "vttt";
    case OpCode::kAdd: return "vv";
  }
  return nullptr;
}
inline const char* attr_name(AttrKey k) {
  switch (k) {
    case AttrKey::kEps: return "eps";
    case AttrKey::kHeadDim: return "head_dim";
    case AttrKey::kTheta: return "theta";
    case AttrKey::kInterleaved: return "interleaved";
    case AttrKey::kNHeads: return "n_heads";
    case AttrKey::kNKvHeads: return "n_kv_heads";
    case AttrKey::kScale: return "scale";
    case AttrKey::kCausal: return "causal";
    case AttrKey::kActivation: return "activation";
  }
  return nullptr;
}
/// Kind an attribute must have: 1 (float) for eps, theta, scale; 0 (int) for the others.
inline uint32_t attr_kind(AttrKey k) {
  return (k == AttrKey::kEps || k == AttrKey::kTheta || k == AttrKey::kScale) ? 1u : 0u;
}

/// Overflow-checked payload size of a tensor: plain types numel * elem_size, quantized types
/// quant_payload_bytes (rank must be 2 and group_size >= 1; plain types need group_size == 0;
/// `flags` must satisfy qflags_valid()).
/// Every dim in shape[0..rank) must be >= 1 and <= 2^40. Returns false (and leaves *out alone)
/// when the combination is invalid or the size does not fit in 62 bits.
inline bool tensor_payload_bytes(DType t, uint32_t rank, const int64_t* shape, uint32_t group_size,
                                 uint64_t* out, uint32_t flags = 0) {
  if (rank < 1 || rank > kMaxRank) return false;
  if (!qflags_valid(t, flags)) return false;
  const uint64_t kMaxDim = uint64_t(1) << 40, kLimit = uint64_t(1) << 62;
  for (uint32_t i = 0; i < rank; ++i)
    if (shape[i] < 1 || uint64_t(shape[i]) > kMaxDim) return false;
  if (dtype_is_quantized(t)) {
    if (rank != 2 || group_size < 1) return false;
    if (qflags_layout(flags) == Layout::kTiled && group_size % kTileBlock != 0) return false;
    const uint64_t rows = uint64_t(shape[0]), cols = uint64_t(shape[1]);  // each <= 2^40
    const uint64_t ng = (cols + group_size - 1) / group_size;
    // rows * (cols + 4 ng) <= 2^40 * 5 * 2^40 overflows, so check the factors first.
    // >= code bytes + parameter bytes per row, all dtypes; the tiled layout pads a row to whole
    // 32-column blocks and a tile to 64 bytes (at most 64 bytes a row)
    const uint64_t per_row = cols + 4 * ng + 2 * kTileBlock + 64;
    if (per_row != 0 && rows > kLimit / per_row) return false;
    *out = quant_payload_bytes(t, rows, cols, group_size, flags);
    return true;
  }
  const uint32_t es = dtype_elem_size(t);
  if (es == 0 || group_size != 0) return false;
  uint64_t n = es;
  for (uint32_t i = 0; i < rank; ++i) {
    if (n > kLimit / uint64_t(shape[i])) return false;
    n *= uint64_t(shape[i]);
  }
  *out = n;
  return true;
}

/// Human-readable precision of a tensor into buf (NUL-terminated, truncated to n; returns buf):
///   plain: "f32";  q8_sym / q4_asym: "q4_asym g32";
///   generic: "qsym3/k6 g32", "qasym4/f16 g32", "ternary/k6 g64", "binary/f16 g32"; tiled layout
///   adds " tR" (rows per tile): "qsym4/f16 g32 t4";
///   flags invalid for the dtype: "qsym(flags 0x00000109) g32".
inline const char* describe_qtype(DType t, uint32_t flags, uint32_t group, char* buf, size_t n) {
  if (!buf || n == 0) return buf;
  const char* name = dtype_name(t);
  if (!qflags_valid(t, flags)) {
    std::snprintf(buf, n, "%s(flags 0x%08x) g%u", name, unsigned(flags), unsigned(group));
  } else if (dtype_is_generic_quant(t)) {
    const char* sf = scale_format_name(qflags_scale(flags));
    if (t == DType::kQSym || t == DType::kQAsym)
      std::snprintf(buf, n, "%s%u/%s g%u", name, unsigned(qflags_bits(flags)), sf, unsigned(group));
    else
      std::snprintf(buf, n, "%s/%s g%u", name, sf, unsigned(group));
    if (qflags_layout(flags) == Layout::kTiled) {  // e.g. "qsym4/f16 g32 t4"
      const size_t used = std::strlen(buf);
      if (used + 1 < n) std::snprintf(buf + used, n - used, " t%u", unsigned(qflags_tile_rows(flags)));
    }
  } else if (dtype_is_quantized(t)) {
    std::snprintf(buf, n, "%s g%u", name, unsigned(group));
  } else {
    std::snprintf(buf, n, "%s", name);
  }
  return buf;
}

/// IEEE 754 binary16 <-> float32 (round to nearest even; NaN stays NaN, overflow gives inf).
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    exp = 113;
    while ((man & 0x400u) == 0) { man <<= 1; --exp; }
    bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {  // result is subnormal or zero
    if (ax < 0x33000000u) return sign;  // < 2^-25 rounds to 0
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
  }
  uint32_t r = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return uint16_t(sign | r);
}
/// bfloat16 -> float32 (the high half of a float32).
inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Recomputes `sections_hash` and `header_hash` (section 3) of the file bytes [f, f + n) in place
/// after a deliberate edit, so that the loader's parsers rather than its checksums see the damage
/// (tests, the artifact fuzzer). A hash whose byte range lies outside [0, n) is left as it is.
/// Returns false (nothing changed) when n < sizeof(FileHeader).
inline bool rehash_file(uint8_t* f, size_t n) {
  FileHeader h;
  if (n < sizeof h) return false;
  std::memcpy(&h, f, sizeof h);
  if (h.header_size <= h.data_offset && h.data_offset <= n)
    h.sections_hash = xxh64(f + h.header_size, size_t(h.data_offset - h.header_size));
  if (h.header_size >= sizeof h && h.header_size <= n) {
    h.header_hash = 0;
    std::memcpy(f, &h, sizeof h);
    h.header_hash = xxh64(f, h.header_size);
  }
  std::memcpy(f, &h, sizeof h);
  return true;
}

/// Well-known metadata keys.
namespace meta {
inline constexpr const char* kArch = "model.arch";                  // string, "llama"
inline constexpr const char* kVocab = "model.vocab_size";           // int
inline constexpr const char* kDim = "model.dim";                    // int
inline constexpr const char* kLayers = "model.n_layers";            // int
inline constexpr const char* kMaxSeq = "model.max_seq_len";         // int
inline constexpr const char* kTokType = "tokenizer.type";           // string, "llama2c"
inline constexpr const char* kTokModel = "tokenizer.model";         // bytes, the tok*.bin file
inline constexpr const char* kTokBos = "tokenizer.bos_id";          // int
inline constexpr const char* kTokEos = "tokenizer.eos_id";          // int
inline constexpr const char* kProducer = "producer.name";           // string, "kerf"
inline constexpr const char* kProducerVersion = "producer.version"; // string
inline constexpr const char* kRecipe = "compile.recipe";            // string
inline constexpr const char* kTarget = "compile.target";            // string
inline constexpr const char* kBpw = "quant.bpw";                    // float
// Placement (format 1.3, formats/SPEC.md section 7.3)
inline constexpr const char* kPlacementPrefill = "placement.prefill";  // bytes: uint8 Backend per op (T > 1)
inline constexpr const char* kTargetProfile = "target.profile";        // string: the device profile (YAML text)
// Integer-only NPU path (docs/npu-arithmetic.md)
inline constexpr const char* kNpuActScales = "npu.act_scales";  // bytes: per value {f32 scale, u32 bits}
inline constexpr const char* kNpuOpScales = "npu.op_scales";    // bytes: per op f32[4] internal static scales
}  // namespace meta

/// Keys one NPU Attention may attend over: its int32 probability-weighted sums bound the context
/// (docs/npu-arithmetic.md); a longer context cannot be placed on the npu.
inline constexpr int64_t kNpuMaxKeys = 8191;

}  // namespace kerf::fmt
