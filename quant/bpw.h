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

/// Bits per stored code: 4 (kQ4Asym), 8 (kQ8Sym), 16 (kF16, kBF16), 32 (kF32); 0 for other dtypes.
int code_bits(fmt::DType dtype);
/// Bits of the parameters stored per group: 32 (kQ4Asym), 16 (kQ8Sym), 0 for plain dtypes.
int group_param_bits(fmt::DType dtype);

/// Logical bits of a [rows, cols] weight matrix stored as `dtype` with group size `group_size`
/// (ignored for plain dtypes; for kQ8Sym, 0 means one group per row). Errors (kInvalidArgument):
/// rows / cols < 1, group size < 1 for kQ4Asym (< 0 for kQ8Sym), a dtype that is not a
/// weight-matrix storage type (kI32 / kI64).
Result<int64_t> logical_bits(fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size);

/// The bits that count towards bpw for a stored tensor: logical_bits(q.dtype, q.rows, q.cols,
/// q.group_size). 0 for a malformed QuantTensor (use logical_bits() to get the error).
int64_t stored_bits(const QuantTensor& q);

/// One weight matrix in a bpw account.
struct WeightBits {
  std::string name;
  fmt::DType dtype = fmt::DType::kF32;
  int64_t rows = 0, cols = 0;
  int32_t group_size = 0;
  int64_t weights = 0;  ///< rows * cols
  int64_t bits = 0;     ///< logical bits
};

/// Accumulates weight matrices by name; each name is counted once (a tied embedding / classifier
/// added twice with the same storage is counted once).
class BpwAccount {
 public:
  /// Adds a matrix. Adding a name already present with identical dtype / shape / group is a no-op;
  /// with different ones it is kInvalidArgument (one tensor cannot be stored twice differently).
  /// Other errors as logical_bits().
  Status add(const std::string& name, fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size);
  /// Adds a stored tensor (same rules).
  Status add(const std::string& name, const QuantTensor& q) {
    return add(name, q.dtype, q.rows, q.cols, q.group_size);
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
