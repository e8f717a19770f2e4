// Plain <-> tiled layout conversion (see pack.h; formats/SPEC.md sections 6.3 and 6.6).
#include "formats/artifact/pack.h"

#include <cstdio>
#include <cstring>
#include <vector>

namespace kerf::artifact {

namespace {

using fmt::DType;

/// A quantized matrix as unsigned codes and f16 group parameters: the common form of both layouts.
/// u = the code of the tiled layout (qsym / qasym: the b-bit code; ternary: q + 1; binary: 1 for
/// +1, 0 for -1); s, m: f16 bits in the flat group order i = r * ng + j (m: qasym only).
struct Codes {
  DType dtype = DType::kQSym;  ///< kQSym, kQAsym, kTernary or kBinary
  uint32_t bits = 0;           ///< kQSym / kQAsym: b; else 0
  int64_t rows = 0, cols = 0, g = 0;
  std::vector<uint8_t> u;      ///< [rows * cols]
  std::vector<uint16_t> s, m;  ///< [rows * ng]
  int64_t ng() const { return (cols + g - 1) / g; }
};

/// Bits per code in the tiled block orders: b for qsym / qasym, 2 for ternary, 1 for binary.
uint32_t code_width(DType t, uint32_t bits) { return t == DType::kTernary ? 2 : t == DType::kBinary ? 1 : bits; }

/// Code of q = 0 (the padding columns of the tiled layout).
uint8_t zero_code(DType t, uint32_t bits) {
  return t == DType::kQSym ? uint8_t(1u << (bits - 1)) : t == DType::kTernary ? 1 : 0;
}

uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
void wr16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v & 0xff);
  p[1] = uint8_t(v >> 8);
}
void wr32(uint8_t* p, uint32_t v) {
  for (int k = 0; k < 4; ++k) p[k] = uint8_t(v >> (8 * k));
}

// One 32-column block of one row (SPEC 6.6): w = code width (8, 4, 3, 2 or 1).
void put_block(uint32_t w, const uint8_t* u, uint8_t* dst) {
  auto plane2 = [&](uint8_t* d) {  // byte i holds u_{i+8k} & 3 in bits 2k..2k+1
    for (int i = 0; i < 8; ++i)
      d[i] = uint8_t((u[i] & 3) | (u[i + 8] & 3) << 2 | (u[i + 16] & 3) << 4 | (u[i + 24] & 3) << 6);
  };
  auto word = [&](uint8_t* d, int shift) {  // bit e = bit `shift` of u_e
    uint32_t v = 0;
    for (int e = 0; e < 32; ++e) v |= uint32_t((u[e] >> shift) & 1u) << e;
    wr32(d, v);
  };
  switch (w) {
    case 8: std::memcpy(dst, u, 32); break;
    case 4: for (int i = 0; i < 16; ++i) dst[i] = uint8_t(u[i] | u[i + 16] << 4); break;
    case 3: plane2(dst); word(dst + 8, 2); break;
    case 2: plane2(dst); break;
    default: word(dst, 0); break;
  }
}
std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", unsigned(v));
  return buf;
}

/// Payload size check shared by both directions.
bool size_ok(const TensorRecord& t, std::string* why) {
  uint64_t want = 0;
  if (t.shape.empty() || t.shape.size() > fmt::kMaxRank ||
      !fmt::tensor_payload_bytes(t.dtype, uint32_t(t.shape.size()), t.shape.data(), t.group_size, &want, t.flags)) {
    *why = "invalid shape, group size or flags for its dtype";
    return false;
  }
  if (t.payload.size() != want) {
    *why = "payload is " + std::to_string(t.payload.size()) + " bytes, expected " + std::to_string(want);
    return false;
  }
  return true;
}

/// Reads a plain-layout tensor (valid, packable: see tiled_problem) into Codes.
Codes read_plain(const TensorRecord& t) {
  Codes c;
  c.rows = t.shape[0];
  c.cols = t.shape[1];
  c.g = t.group_size;
  const int64_t R = c.rows, C = c.cols, NG = R * c.ng();
  const uint8_t* p = t.payload.data();
  const uint8_t *sp = nullptr, *mp = nullptr;
  c.u.resize(size_t(R * C));
  if (t.dtype == DType::kQ8Sym) {  // i8 code -> qsym8 u = code + 128
    c.dtype = DType::kQSym;
    c.bits = 8;
    for (int64_t k = 0; k < R * C; ++k) c.u[size_t(k)] = uint8_t(p[k] ^ 0x80u);
    sp = p + R * C;
  } else if (t.dtype == DType::kQ4Asym) {  // byte-identical to qasym4/f16
    c.dtype = DType::kQAsym;
    c.bits = 4;
    const int64_t rb = (C + 1) / 2;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < C; ++k) c.u[size_t(r * C + k)] = uint8_t((p[r * rb + k / 2] >> (4 * (k & 1))) & 15);
    sp = p + R * rb;
    mp = sp + 2 * NG;
  } else {
    c.dtype = t.dtype;
    c.bits = fmt::qflags_bits(t.flags);
    const fmt::QLayout L = fmt::qlayout(t.dtype, uint64_t(R), uint64_t(C), uint64_t(c.g), t.flags);
    for (int64_t r = 0; r < R; ++r) {
      const uint8_t* row = p + uint64_t(r) * L.row_bytes;
      for (int64_t k = 0; k < C; ++k) {
        uint8_t& u = c.u[size_t(r * C + k)];
        if (t.dtype == DType::kTernary) {
          int v = row[k / 5] % 243;
          for (int64_t d = 0; d < k % 5; ++d) v /= 3;
          u = uint8_t(v % 3);
        } else if (t.dtype == DType::kBinary) {
          u = uint8_t((row[k / 8] >> (k % 8)) & 1);
        } else {  // b-bit field at bit offset k * b, LSB first; spans at most two bytes
          const uint64_t bit = uint64_t(k) * c.bits, at = bit / 8;
          uint32_t v = row[at];
          if (at + 1 < L.row_bytes) v |= uint32_t(row[at + 1]) << 8;
          u = uint8_t((v >> (bit % 8)) & ((1u << c.bits) - 1));
        }
      }
    }
    sp = p + L.scale;
    mp = c.dtype == DType::kQAsym ? p + L.min : nullptr;
  }
  for (int64_t i = 0; i < NG; ++i) {
    c.s.push_back(rd16(sp + 2 * i));
    if (mp) c.m.push_back(rd16(mp + 2 * i));
  }
  return c;
}

/// Writes Codes as the plain generic layout (SPEC 6.3, f16 parameters).
TensorRecord write_plain(const std::string& name, const Codes& c) {
  TensorRecord t{name, c.dtype, {c.rows, c.cols}, uint32_t(c.g), {}};
  t.flags = fmt::make_qflags(c.bits, fmt::ScaleFormat::kF16);
  const int64_t R = c.rows, C = c.cols;
  const fmt::QLayout L = fmt::qlayout(c.dtype, uint64_t(R), uint64_t(C), uint64_t(c.g), t.flags);
  t.payload.assign(size_t(L.bytes), 0);
  uint8_t* p = t.payload.data();
  for (int64_t r = 0; r < R; ++r) {
    uint8_t* row = p + uint64_t(r) * L.row_bytes;
    const uint8_t* u = c.u.data() + r * C;
    if (c.dtype == DType::kTernary) {
      for (uint64_t k = 0; k < L.row_bytes; ++k) {
        int byte = 0;
        for (int d = 4; d >= 0; --d) byte = byte * 3 + (int64_t(5 * k) + d < C ? u[5 * k + uint64_t(d)] : 1);
        row[k] = uint8_t(byte);
      }
      continue;
    }
    const uint32_t b = code_width(c.dtype, c.bits);
    for (int64_t k = 0; k < C; ++k) {
      const uint64_t bit = uint64_t(k) * b, at = bit / 8;
      const uint32_t v = uint32_t(u[k]) << (bit % 8);
      row[at] = uint8_t(row[at] | (v & 0xff));
      if (v >> 8) row[at + 1] = uint8_t(row[at + 1] | (v >> 8));
    }
  }
  for (size_t i = 0; i < c.s.size(); ++i) {
    wr16(p + L.scale + 2 * i, c.s[i]);
    if (!c.m.empty()) wr16(p + L.min + 2 * i, c.m[i]);
  }
  return t;
}

}  // namespace

const char* tiled_problem(const TensorRecord& t) {
  if (!fmt::dtype_is_quantized(t.dtype)) return "not a quantized dtype";
  if (t.shape.size() != 2) return "not a rank-2 matrix";
  if (fmt::dtype_is_generic_quant(t.dtype)) {
    if (const char* why = fmt::qflags_problem(t.dtype, t.flags)) return why;
    if (fmt::qflags_layout(t.flags) != fmt::Layout::kPlain) return "already in the tiled layout";
    if (fmt::qflags_scale(t.flags) != fmt::ScaleFormat::kF16)
      return "k6 group parameters (the tiled layout stores f16 parameters; converting k6 is not lossless)";
    if (!fmt::tiled_block_bytes(t.dtype, fmt::qflags_bits(t.flags))) return "code bits 5, 6 and 7 have no tiled form (2, 3, 4, 8)";
  }
  if (t.group_size % fmt::kTileBlock != 0 && int64_t(t.group_size) < t.shape[1])
    return "group size is not a multiple of 32 (and not a whole row)";
  return nullptr;
}

bool pack_tiled(const TensorRecord& plain, uint32_t log2_rows, TensorRecord* out, std::string* err) {
  std::string why;
  if (const char* p = tiled_problem(plain)) why = std::string("cannot be tiled: ") + p;
  else if (log2_rows > 4) why = "log2 of the rows per tile is " + std::to_string(log2_rows) + ", must be 0..4";
  else size_ok(plain, &why);
  if (!why.empty()) {
    if (err) *err = "tensor '" + plain.name + "': " + why;
    return false;
  }
  Codes c = read_plain(plain);
  if (c.g % fmt::kTileBlock != 0) c.g = (c.cols + fmt::kTileBlock - 1) / fmt::kTileBlock * fmt::kTileBlock;  // one group per row
  TensorRecord t{plain.name, c.dtype, {c.rows, c.cols}, uint32_t(c.g), {}};
  t.flags = fmt::make_qflags_tiled(c.bits, fmt::ScaleFormat::kF16, log2_rows);
  const fmt::TiledLayout L = fmt::tiled_layout(c.dtype, uint64_t(c.rows), uint64_t(c.cols), uint64_t(c.g), t.flags);
  t.payload.assign(size_t(L.bytes), 0);
  const uint32_t w = code_width(c.dtype, c.bits);
  const int64_t ng = c.ng();
  uint8_t blk[fmt::kTileBlock];
  for (int64_t r = 0; r < c.rows; ++r) {  // padding rows stay zero (codes and parameters)
    uint8_t* tile = t.payload.data() + uint64_t(r) / L.R * L.tile_bytes;
    const uint64_t i = uint64_t(r) % L.R;
    for (int64_t j = 0; j < ng; ++j) {
      wr16(tile + L.param_offset(uint64_t(j)) + 2 * i, c.s[size_t(r * ng + j)]);
      if (!c.m.empty()) wr16(tile + L.param_offset(uint64_t(j)) + 2 * L.R + 2 * i, c.m[size_t(r * ng + j)]);
    }
    for (uint64_t kb = 0; kb < L.KB; ++kb) {
      for (uint64_t e = 0; e < fmt::kTileBlock; ++e) {
        const uint64_t col = kb * fmt::kTileBlock + e;
        blk[e] = col < uint64_t(c.cols) ? c.u[size_t(uint64_t(r * c.cols) + col)] : zero_code(c.dtype, c.bits);
      }
      put_block(w, blk, tile + L.block_offset(kb) + i * L.cb);
    }
  }
  *out = std::move(t);
  return true;
}

bool unpack_tiled(const TensorRecord& tiled, TensorRecord* out, std::string* err) {
  std::string why;
  if (!fmt::dtype_is_generic_quant(tiled.dtype) || fmt::qflags_layout(tiled.flags) != fmt::Layout::kTiled)
    why = "not a tiled tensor (dtype " + std::string(fmt::dtype_name(tiled.dtype)) + ", flags " + hex32(tiled.flags) + ")";
  else if (const char* p = fmt::qflags_problem(tiled.dtype, tiled.flags)) why = std::string("invalid flags: ") + p;
  else size_ok(tiled, &why);
  Codes c;
  if (why.empty()) {
    c.dtype = tiled.dtype;
    c.bits = fmt::qflags_bits(tiled.flags);
    c.rows = tiled.shape[0];
    c.cols = tiled.shape[1];
    c.g = tiled.group_size;
    const fmt::TiledLayout L = fmt::tiled_layout(c.dtype, uint64_t(c.rows), uint64_t(c.cols), uint64_t(c.g), tiled.flags);
    const uint32_t w = code_width(c.dtype, c.bits);
    const int64_t ng = c.ng();
    c.u.resize(size_t(c.rows * c.cols));
    uint8_t blk[fmt::kTileBlock];
    for (int64_t r = 0; r < c.rows && why.empty(); ++r) {
      const uint8_t* tile = tiled.payload.data() + uint64_t(r) / L.R * L.tile_bytes;
      const uint64_t i = uint64_t(r) % L.R;
      for (int64_t j = 0; j < ng; ++j) {
        c.s.push_back(rd16(tile + L.param_offset(uint64_t(j)) + 2 * i));
        if (c.dtype == DType::kQAsym) c.m.push_back(rd16(tile + L.param_offset(uint64_t(j)) + 2 * L.R + 2 * i));
      }
      for (uint64_t kb = 0; kb < L.KB; ++kb) {
        fmt::tiled_get_block(w, tile + L.block_offset(kb) + i * L.cb, blk);
        for (uint64_t e = 0; e < fmt::kTileBlock && kb * fmt::kTileBlock + e < uint64_t(c.cols); ++e) {
          if (c.dtype == DType::kTernary && blk[e] == 3)
            why = "ternary code 3 at row " + std::to_string(r) + ", column " + std::to_string(kb * fmt::kTileBlock + e) +
                  " (only 0..2 have a plain form)";
          c.u[size_t(uint64_t(r * c.cols) + kb * fmt::kTileBlock + e)] = blk[e];
        }
      }
    }
  }
  if (!why.empty()) {
    if (err) *err = "tensor '" + tiled.name + "': " + why;
    return false;
  }
  *out = write_plain(tiled.name, c);
  return true;
}

}  // namespace kerf::artifact
