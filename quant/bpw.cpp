// kerf quant: bits-per-weight accounting (see bpw.h).
#include "quant/bpw.h"

namespace kerf::quant {

int code_bits(fmt::DType dtype) {
  switch (dtype) {
    case fmt::DType::kQ4Asym: return 4;
    case fmt::DType::kQ8Sym: return 8;
    case fmt::DType::kF16:
    case fmt::DType::kBF16: return 16;
    case fmt::DType::kF32: return 32;
    default: return 0;
  }
}

int group_param_bits(fmt::DType dtype) {
  switch (dtype) {
    case fmt::DType::kQ4Asym: return 32;
    case fmt::DType::kQ8Sym: return 16;
    default: return 0;
  }
}

Result<int64_t> logical_bits(fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size) {
  const std::string what = std::string(fmt::dtype_name(dtype)) + " [" + std::to_string(rows) + ", " +
                           std::to_string(cols) + "] g " + std::to_string(group_size);
  if (rows < 1 || cols < 1) return InvalidArgument("logical_bits: " + what + ": rows and cols must be >= 1");
  if (cols > (int64_t{1} << 40) / rows) return InvalidArgument("logical_bits: " + what + ": too large");
  const int cb = code_bits(dtype);
  if (cb == 0) return InvalidArgument("logical_bits: " + what + ": not a weight-matrix storage dtype");
  int64_t g = group_size;
  if (dtype == fmt::DType::kQ8Sym && g == 0) g = cols;
  if (fmt::dtype_is_quantized(dtype) && g < 1)
    return InvalidArgument("logical_bits: " + what + ": group size must be >= 1");
  int64_t bits = rows * cols * cb;
  if (fmt::dtype_is_quantized(dtype)) bits += rows * ((cols + g - 1) / g) * group_param_bits(dtype);
  return bits;
}

int64_t stored_bits(const QuantTensor& q) {
  auto b = logical_bits(q.dtype, q.rows, q.cols, q.group_size);
  return b.ok() ? *b : 0;
}

Status BpwAccount::add(const std::string& name, fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size) {
  KERF_ASSIGN_OR_RETURN(const int64_t bits, logical_bits(dtype, rows, cols, group_size));
  WeightBits e;
  e.name = name;
  e.dtype = dtype;
  e.rows = rows;
  e.cols = cols;
  e.group_size = static_cast<int32_t>(fmt::dtype_is_quantized(dtype) ? (group_size == 0 ? cols : group_size) : 0);
  e.weights = rows * cols;
  e.bits = bits;
  auto it = index_.find(name);
  if (it != index_.end()) {
    const WeightBits& o = entries_[it->second];
    if (o.dtype != e.dtype || o.rows != e.rows || o.cols != e.cols || o.group_size != e.group_size)
      return InvalidArgument("bpw: tensor '" + name + "' added twice with different storage (" +
                             fmt::dtype_name(o.dtype) + " vs " + fmt::dtype_name(e.dtype) + ")");
    return Status::Ok();  // tied: counted once
  }
  index_[name] = entries_.size();
  entries_.push_back(e);
  weights_ += e.weights;
  bits_ += e.bits;
  return Status::Ok();
}

}  // namespace kerf::quant
