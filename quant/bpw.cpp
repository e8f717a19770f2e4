// kerf quant: bits-per-weight accounting (see bpw.h).
#include "quant/bpw.h"

#include <cstdio>

namespace kerf::quant {
namespace {

bool is_k6(fmt::DType dtype, uint32_t flags) {
  return fmt::dtype_is_generic_quant(dtype) && fmt::qflags_scale(flags) == fmt::ScaleFormat::kK6;
}

}  // namespace

int code_bits(fmt::DType dtype, uint32_t flags) {
  switch (dtype) {
    case fmt::DType::kQ4Asym: return 4;
    case fmt::DType::kQ8Sym: return 8;
    case fmt::DType::kQSym:
    case fmt::DType::kQAsym: return static_cast<int>(fmt::qflags_bits(flags));
    case fmt::DType::kBinary: return 1;
    case fmt::DType::kF16:
    case fmt::DType::kBF16: return 16;
    case fmt::DType::kF32: return 32;
    default: return 0;  // kTernary: 8 bits per 5 weights, see code_row_bits
  }
}

int64_t code_row_bits(fmt::DType dtype, int64_t cols, uint32_t flags) {
  if (dtype == fmt::DType::kTernary) return 8 * ((cols + 4) / 5);
  return cols * code_bits(dtype, flags);
}

int group_param_bits(fmt::DType dtype, uint32_t flags) {
  switch (dtype) {
    case fmt::DType::kQ4Asym: return 32;
    case fmt::DType::kQ8Sym: return 16;
    case fmt::DType::kQSym:
    case fmt::DType::kQAsym:
    case fmt::DType::kTernary:
    case fmt::DType::kBinary:
      return static_cast<int>(fmt::qparam_arrays(dtype)) * (is_k6(dtype, flags) ? 6 : 16);
    default: return 0;
  }
}

int super_param_bits(fmt::DType dtype, uint32_t flags) {
  return is_k6(dtype, flags) ? 16 * static_cast<int>(fmt::qparam_arrays(dtype)) : 0;
}

Result<int64_t> logical_bits(fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size, uint32_t flags) {
  std::string what = std::string(fmt::dtype_name(dtype)) + " [" + std::to_string(rows) + ", " +
                     std::to_string(cols) + "] g " + std::to_string(group_size);
  if (flags != 0) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " flags 0x%x", flags);
    what += buf;
  }
  if (rows < 1 || cols < 1) return InvalidArgument("logical_bits: " + what + ": rows and cols must be >= 1");
  if (cols > (int64_t{1} << 40) / rows) return InvalidArgument("logical_bits: " + what + ": too large");
  if (!fmt::qflags_valid(dtype, flags))
    return InvalidArgument("logical_bits: " + what +
                           (fmt::dtype_is_generic_quant(dtype)
                                ? ": invalid flags (bits 2..8 for qsym / qasym, 0 for ternary / binary; scale format "
                                  "0 = f16 or 1 = k6)"
                                : ": flags must be 0 for this dtype"));
  const bool generic = fmt::dtype_is_generic_quant(dtype);
  if (!generic && code_bits(dtype, flags) == 0)
    return InvalidArgument("logical_bits: " + what + ": not a weight-matrix storage dtype");
  int64_t g = group_size;
  if ((dtype == fmt::DType::kQ8Sym || generic) && g == 0) g = cols;
  if (fmt::dtype_is_quantized(dtype) && g < 1)
    return InvalidArgument("logical_bits: " + what + ": group size must be >= 1");
  int64_t bits = rows * code_row_bits(dtype, cols, flags);
  if (fmt::dtype_is_quantized(dtype)) {
    const int64_t n_groups = rows * ((cols + g - 1) / g);
    const int64_t per = fmt::kK6GroupsPerSuper;
    bits += n_groups * group_param_bits(dtype, flags) + ((n_groups + per - 1) / per) * super_param_bits(dtype, flags);
  }
  return bits;
}

int64_t stored_bits(const QuantTensor& q) {
  auto b = logical_bits(q.dtype, q.rows, q.cols, q.group_size, q.flags);
  return b.ok() ? *b : 0;
}

Status BpwAccount::add(const std::string& name, fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size,
                       uint32_t flags) {
  KERF_ASSIGN_OR_RETURN(const int64_t bits, logical_bits(dtype, rows, cols, group_size, flags));
  WeightBits e;
  e.name = name;
  e.dtype = dtype;
  e.rows = rows;
  e.cols = cols;
  e.group_size = static_cast<int32_t>(fmt::dtype_is_quantized(dtype) ? (group_size == 0 ? cols : group_size) : 0);
  e.flags = flags;
  e.weights = rows * cols;
  e.bits = bits;
  auto it = index_.find(name);
  if (it != index_.end()) {
    const WeightBits& o = entries_[it->second];
    if (o.dtype != e.dtype || o.rows != e.rows || o.cols != e.cols || o.group_size != e.group_size ||
        o.flags != e.flags)
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
