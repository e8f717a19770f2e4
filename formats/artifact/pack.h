// Conversion of quantized tensors between the plain layouts (formats/SPEC.md sections 6.2, 6.3) and
// the tiled layout of format 1.2 (section 6.6, fmt::TiledLayout). C++17 standard library only, in
// the kerf_writer library: the compiler packs the weights of tiled targets with it, the runtime
// tests use it to build tiled artifacts.
//
// Both directions are lossless: every element dequantizes (SPEC 6.4) to the same f32 bits before and
// after, and unpack_tiled(pack_tiled(x)) gives back x's payload byte for byte when x is a generic
// dtype whose group size is a multiple of 32 (the legacy dtypes come back as their generic twins,
// see pack_tiled).
#pragma once

#include <cstdint>
#include <string>

#include "formats/artifact/writer.h"

namespace kerf::artifact {

/// nullptr when `t` can be stored in the tiled layout by pack_tiled(), else the reason (a static
/// string, e.g. "k6 group parameters: the tiled layout stores f16 parameters"). Packable: rank 2,
/// a plain-layout quantized dtype with f16 group parameters and a code width of the tiled layout
/// (qsym / qasym with b in {2, 3, 4, 8}, ternary, binary, q8_sym, q4_asym), and a group size that
/// is a multiple of 32, or any group size >= cols (one group per row). Does not check the payload
/// size (pack_tiled does).
const char* tiled_problem(const TensorRecord& t);

/// Converts the plain-layout quantized tensor `plain` to the tiled layout with R = 2^log2_rows rows
/// per tile (log2_rows 0..4) into *out (name kept). Dtypes: qsym / qasym / ternary / binary keep
/// their dtype and code width; q8_sym becomes qsym8 (u = code + 128, the same f16 scales) and
/// q4_asym qasym4 (the same codes, scales and mins). A tensor with one group per row whose group
/// size is not a multiple of 32 (g >= cols, e.g. a per-row q8_sym embedding of 48 columns) is
/// stored with g = ceil(cols / 32) * 32, which puts the same columns in the single group. Codes of
/// padding columns are those of q = 0, padding rows and their parameters are zero (SPEC 6.6).
/// Returns false and sets *err (if not null) to "tensor 'NAME': ..." when tiled_problem(plain) is
/// not nullptr, log2_rows > 4, or the payload size does not match dtype / shape / group / flags;
/// *out is then unchanged.
bool pack_tiled(const TensorRecord& plain, uint32_t log2_rows, TensorRecord* out, std::string* err);

/// Converts a tiled-layout tensor back to the plain layout of its dtype (SPEC 6.3: rows of b-bit
/// codes, then s f16[NG] and, for qasym, m f16[NG]) into *out (flags = make_qflags(b, kF16)).
/// Padding columns / rows of the tiled payload are ignored. Returns false and sets *err to
/// "tensor 'NAME': ..." when `tiled` is not a valid tiled tensor (dtype, flags, group size or
/// payload size) or holds a ternary code 3 (never written by pack_tiled; it has no plain form);
/// *out is then unchanged.
bool unpack_tiled(const TensorRecord& tiled, TensorRecord* out, std::string* err);

}  // namespace kerf::artifact
