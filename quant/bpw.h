// kerf quant: effective bits-per-weight accounting, as shared/EVAL.md defines it.
//
// bpw = all bits stored for the model's weight matrices (every Linear and the embedding /
// classifier, counted once if tied), scales and zero points included, divided by the number of
// those weights. A partial last group counts as a whole group. Norm weights and recomputable
// tables (RoPE) are excluded (simply never add them).
//
// "Logical" bits of a [rows, cols] matrix, ng = ceil(cols / g):
//   kQ4Asym: rows*cols*4 + rows*ng*32   (fp16 scale + fp16 min per group, llama.cpp Q4_1 style)
//   kQ8Sym:  rows*cols*8 + rows*ng*16   (fp16 scale per group, llama.cpp Q8_0 style)
//   kF16 / kBF16: 16 per weight;  kF32: 32 per weight.
//   Generic dtypes (format 1.1; TensorEntry flags give the code bits b and the scale format),
//   NG = rows*ng groups, A = 2 parameter arrays for kQAsym (scale, min), 1 otherwise:
//     codes: kQSym / kQAsym rows*cols*b;  kTernary rows*ceil(cols/5)*8 (5 weights per byte, the
//            byte that pads a row counted whole);  kBinary rows*cols
//     params: kF16 scales A*16*NG;  kK6 scales A*(6*NG + 16*ceil(NG/8)) (6-bit values plus an fp16
//            super-scale per 8 groups, a partial last super-block counted whole).
//   This is quant::spec_bits() of quant/qspec.h; e.g. int4_sym:g32:k6 on 64x64 = 4.25 bpw,
//   int4_asym:g32:k6 = 4.5 bpw, int4_asym:g32 (fp16) = 5.0 bpw.
// The nibble that pads an odd-length Q4 row to a whole byte is not counted (payload bytes * 8 may
// therefore exceed the logical bits by 4 per row).
//
// Reference: stories260K default recipe (35 linears kQ4Asym g32 + tied 512x64 embedding kQ8Sym per
// row): linears alone 5.028 bpw, all weight matrices 5.435 bpw.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "kerf/format.h"
#include "quant/rtn.h"

namespace kerf::quant {

/// Bits per stored code: 4 (kQ4Asym), 8 (kQ8Sym), 16 (kF16, kBF16), 32 (kF32), b =
/// fmt::qflags_bits(flags) (kQSym, kQAsym), 1 (kBinary); 0 for kTernary (1.6 bits: 8 per 5
/// weights, see code_row_bits) and other dtypes. `flags`: TensorEntry flags (generic dtypes only).
int code_bits(fmt::DType dtype, uint32_t flags = 0);
/// Code bits of one row of `cols` weights: cols * code_bits, kTernary 8 * ceil(cols / 5).
int64_t code_row_bits(fmt::DType dtype, int64_t cols, uint32_t flags = 0);
/// Bits of the parameters stored per group: 32 (kQ4Asym), 16 (kQ8Sym); generic dtypes: 16 per
/// parameter array with fp16 scales, 6 per array with kK6 scales (their fp16 super-scales are
/// super_param_bits per 8 groups); 0 for plain dtypes.
int group_param_bits(fmt::DType dtype, uint32_t flags = 0);
/// Bits stored per kK6 super-block of fmt::kK6GroupsPerSuper groups: 16 per parameter array
/// (32 for kQAsym); 0 for everything else.
int super_param_bits(fmt::DType dtype, uint32_t flags = 0);

/// Logical bits of a [rows, cols] weight matrix stored as `dtype` with group size `group_size`
/// (ignored for plain dtypes; for kQ8Sym and the generic dtypes 0 means one group per row) and
/// TensorEntry `flags` (generic dtypes: code bits + scale format; 0 otherwise). Errors
/// (kInvalidArgument): rows / cols < 1, group size < 1 for kQ4Asym (< 0 for the others), flags
/// that fmt::qflags_valid() rejects, a dtype that is not a weight-matrix storage type (kI32 / kI64).
Result<int64_t> logical_bits(fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size, uint32_t flags = 0);

/// The bits that count towards bpw for a stored tensor: logical_bits(q.dtype, q.rows, q.cols,
/// q.group_size, q.flags). 0 for a malformed QuantTensor (use logical_bits() to get the error).
int64_t stored_bits(const QuantTensor& q);

/// One weight matrix in a bpw account.
struct WeightBits {
  std::string name;
  fmt::DType dtype = fmt::DType::kF32;
  int64_t rows = 0, cols = 0;
  int32_t group_size = 0;
  uint32_t flags = 0;   ///< TensorEntry flags (generic quantized dtypes; 0 otherwise)
  int64_t weights = 0;  ///< rows * cols
  int64_t bits = 0;     ///< logical bits
};

/// Accumulates weight matrices by name; each name is counted once (a tied embedding / classifier
/// added twice with the same storage is counted once).
class BpwAccount {
 public:
  /// Adds a matrix. Adding a name already present with identical dtype / shape / group / flags is
  /// a no-op; with different ones it is kInvalidArgument (one tensor cannot be stored twice
  /// differently). Other errors as logical_bits().
  Status add(const std::string& name, fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size,
             uint32_t flags = 0);
  /// Adds a stored tensor (same rules; uses q.flags).
  Status add(const std::string& name, const QuantTensor& q) {
    return add(name, q.dtype, q.rows, q.cols, q.group_size, q.flags);
  }
  int64_t weight_count() const { return weights_; }
  int64_t weight_bits() const { return bits_; }
  /// weight_bits / weight_count; 0 when empty.
  double bpw() const { return weights_ == 0 ? 0.0 : static_cast<double>(bits_) / static_cast<double>(weights_); }
  /// Entries in the order first added.
  const std::vector<WeightBits>& entries() const { return entries_; }

 private:
  std::vector<WeightBits> entries_;
  std::map<std::string, size_t> index_;
  int64_t weights_ = 0, bits_ = 0;
};

}  // namespace kerf::quant
