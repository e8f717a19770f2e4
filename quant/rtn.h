// kerf quant: round-to-nearest (RTN) baseline quantizers and their reference dequantization.
//
// A weight matrix is [rows, cols] = [out, in] (row-major float32, the Linear / Embedding layout of
// compiler/ir/ir.h). It is quantized group-wise along cols (the input dimension) with group size g:
// ng = ceil(cols / g) groups per row; the last group of a row is partial when g does not divide
// cols, and its parameters are computed over its real elements only (cols 172, g 32 = 5 x 32 + 12).
// Payloads follow kerf/format.h byte for byte (kQ4Asym, kQ8Sym), so a QuantTensor can be written to
// an artifact unchanged and read by runtime-lite.
//
// Rounding: code = round-half-away-from-zero (std::round), as llama.cpp's reference quantizers.
// Group parameters are rounded to fp16 BEFORE the codes are chosen, and the codes are chosen against
// the fp16-rounded values, so the dequantization the runtime performs is exactly what was optimised.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "kerf/format.h"

namespace kerf::quant {

/// A [rows, cols] matrix stored in an artifact dtype, `payload` in kerf/format.h's exact layout.
///   kQ4Asym: u8 codes [rows][ceil(cols/2)] (element c in byte c/2, low nibble when c even), then
///            f16 scale [rows][ng], then f16 min [rows][ng];  w = code * scale + min, code 0..15.
///   kQ8Sym:  i8 codes [rows][cols], then f16 scale [rows][ng];  w = code * scale, code -127..127.
///   kQSym / kQAsym / kTernary / kBinary (format 1.1): the layouts of kerf/format.h with `flags`
///            (code bits, fp16 or kK6 group parameters); produced by quant/qspec.h (pack,
///            quantize_rtn).
///   kF16:    f16 [rows][cols] (plain, group_size 0).   kF32: f32 [rows][cols] (plain, group_size 0).
/// f16/f32 values are little-endian.
/// payload.size() == payload_bytes(dtype, rows, cols, group_size, flags).
/// `group_size` is the g that was used (>= 1) for quantized dtypes: a per-row Q8 tensor records
/// g = cols, so ng = ceil(cols / g) is always well defined for readers.
struct QuantTensor {
  fmt::DType dtype = fmt::DType::kF32;
  int64_t rows = 0, cols = 0;
  int32_t group_size = 0;
  uint32_t flags = 0;  ///< TensorEntry flags (generic dtypes of quant/qspec.h: bits + scale format); else 0
  std::vector<uint8_t> payload;
};

/// Bytes of the payload of a [rows, cols] tensor of `dtype` with TensorEntry `flags` (generic
/// dtypes; 0 for the others): fmt::quant_payload_bytes() for the quantized dtypes,
/// rows * cols * elem_size for kF16 / kF32. Errors (kInvalidArgument): rows or cols < 1, g < 1 for
/// a quantized dtype, a dtype other than kQ4Asym / kQ8Sym / kQSym / kQAsym / kTernary / kBinary /
/// kF16 / kF32, flags that fmt::qflags_valid() rejects, or a size beyond 2^40 elements.
Result<uint64_t> payload_bytes(fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size, uint32_t flags = 0);

/// RTN INT4 asymmetric (min/max), llama.cpp Q4_1 convention with groups of `group_size` along cols.
/// Per group: scale = (max - min) / 15 and min = group min, both rounded to fp16 first; then
/// code = clamp(round((w - min_h) / scale_h), 0, 15). A constant group (scale_h == 0) gets codes 0
/// (it dequantizes to min_h).
///   w: float32 [rows * cols] row-major. rows, cols >= 1; group_size >= 1 (g > cols = one group/row).
/// Errors: kInvalidArgument for a null pointer or bad sizes; kBadInput for a NaN / Inf weight
/// (message names row and col); kUnsupported when a group's min or scale is outside the fp16 range
/// (message names row and group).
Result<QuantTensor> quantize_q4_asym_rtn(const float* w, int64_t rows, int64_t cols, int group_size);

/// RTN INT8 symmetric (absmax), llama.cpp Q8_0 convention with groups of `group_size` along cols.
/// Per group: scale = max|w| / 127 rounded to fp16 first; code = clamp(round(w / scale_h), -127,
/// 127); an all-zero group (scale_h == 0) gets codes 0. group_size 0 = one group per row (the
/// result records group_size = cols).
///   w: float32 [rows * cols] row-major. rows, cols >= 1; group_size >= 0.
/// Errors: as quantize_q4_asym_rtn (kUnsupported when max|w| / 127 exceeds the fp16 range).
Result<QuantTensor> quantize_q8_sym_rtn(const float* w, int64_t rows, int64_t cols, int group_size);

/// Stores a [rows, cols] float32 matrix as plain kF16 (round-to-nearest-even) or kF32.
/// Errors: kInvalidArgument for bad sizes or another dtype; kBadInput for NaN / Inf (row, col);
/// kUnsupported for a kF16 value outside the fp16 range (row, col).
Result<QuantTensor> store_plain(const float* w, int64_t rows, int64_t cols, fmt::DType dtype);

/// Reference dequantization (scalar, straightforward): float32 [rows * cols] row-major, each value
/// computed in float as code * scale + min (kQ4Asym) or code * scale (kQ8Sym); generic dtypes via
/// quant/qspec.h unpack() and dequantize_value() (s * q (+ m), kK6 s = d * sc), i.e. exactly what
/// the runtime must compute.
/// Errors (kInvalidArgument): an unsupported dtype, bad sizes, group size or flags, or a payload
/// whose size differs from payload_bytes(); kBadInput for a Q8 code of -128.
Result<std::vector<float>> dequantize(const QuantTensor& q);

/// Relative RMS error sqrt(sum (a - b)^2 / sum a^2) of `approx` against `ref` (n elements each);
/// the absolute RMS error when `ref` is all zero (0 when both are).
double relative_rms_error(const float* ref, const float* approx, int64_t n);

}  // namespace kerf::quant
