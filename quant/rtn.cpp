// kerf quant: RTN quantizers (see rtn.h).
#include "quant/rtn.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "compiler/ir/ir.h"
#include "quant/qspec.h"

namespace kerf::quant {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;

std::string rc(int64_t r, int64_t c) { return "row " + std::to_string(r) + ", col " + std::to_string(c); }

Status check_shape(int64_t rows, int64_t cols) {
  if (rows < 1 || cols < 1)
    return InvalidArgument("matrix shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                           "]: rows and cols must be >= 1");
  if (cols > kMaxElements / rows)
    return InvalidArgument("matrix shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                           "] is too large (more than 2^40 elements)");
  return Status::Ok();
}

Status check_finite(const float* w, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(w[r * cols + c]))
        return BadInput(std::string(std::isnan(w[r * cols + c]) ? "NaN" : "Inf") + " weight at " + rc(r, c));
  return Status::Ok();
}

/// fp16 round trip of a finite float; `ok` false when it does not fit the fp16 range.
float to_half_value(double v, uint16_t* bits, bool* ok) {
  const float f = static_cast<float>(v);
  *bits = ir::float_to_half(f);  // round-to-nearest-even; |f| >= 65520 becomes Inf
  const float back = ir::half_to_float(*bits);
  *ok = std::isfinite(f) && std::isfinite(back);
  return back;
}

void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xFF);
  p[1] = static_cast<uint8_t>(v >> 8);
}
uint16_t get_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%x", v);
  return buf;
}

}  // namespace

Result<uint64_t> payload_bytes(fmt::DType dtype, int64_t rows, int64_t cols, int64_t group_size, uint32_t flags) {
  KERF_RETURN_IF_ERROR(check_shape(rows, cols));
  const auto r = static_cast<uint64_t>(rows), c = static_cast<uint64_t>(cols);
  if (!fmt::qflags_valid(dtype, flags))
    return InvalidArgument(std::string(fmt::dtype_name(dtype)) + ": flags 0x" + hex(flags) + " are invalid" +
                           (fmt::dtype_is_generic_quant(dtype) ? " (bits 2..8 for qsym / qasym, 0 for ternary / binary; "
                                                                 "scale format 0 = f16 or 1 = k6)"
                                                               : " (must be 0 for this dtype)"));
  switch (dtype) {
    case fmt::DType::kQ4Asym:
    case fmt::DType::kQ8Sym:
    case fmt::DType::kQSym:
    case fmt::DType::kQAsym:
    case fmt::DType::kTernary:
    case fmt::DType::kBinary:
      if (group_size < 1)
        return InvalidArgument(std::string(fmt::dtype_name(dtype)) + ": group size " +
                               std::to_string(group_size) + " must be >= 1");
      return fmt::quant_payload_bytes(dtype, r, c, static_cast<uint64_t>(group_size), flags);
    case fmt::DType::kF16: return r * c * 2;
    case fmt::DType::kF32: return r * c * 4;
    default:
      return InvalidArgument(std::string("dtype ") + fmt::dtype_name(dtype) +
                             " is not a weight-matrix storage type (q4_asym, q8_sym, qsym, qasym, ternary, binary, "
                             "f16, f32)");
  }
}

Result<QuantTensor> quantize_q4_asym_rtn(const float* w, int64_t rows, int64_t cols, int group_size) {
  if (w == nullptr) return InvalidArgument("quantize_q4_asym_rtn: null weight pointer");
  KERF_RETURN_IF_ERROR(check_shape(rows, cols));
  if (group_size < 1)
    return InvalidArgument("quantize_q4_asym_rtn: group size " + std::to_string(group_size) + " must be >= 1");
  KERF_RETURN_IF_ERROR(check_finite(w, rows, cols));

  QuantTensor q;
  q.dtype = fmt::DType::kQ4Asym;
  q.rows = rows;
  q.cols = cols;
  q.group_size = group_size;
  const int64_t g = group_size;
  const int64_t ng = (cols + g - 1) / g;
  const int64_t row_bytes = (cols + 1) / 2;
  q.payload.assign(fmt::quant_payload_bytes(q.dtype, rows, cols, g), 0);
  uint8_t* codes = q.payload.data();
  uint8_t* scales = codes + rows * row_bytes;
  uint8_t* mins = scales + 2 * rows * ng;

  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t c0 = j * g, c1 = std::min(cols, c0 + g);  // real elements only
      float mn = wr[c0], mx = wr[c0];
      for (int64_t c = c0; c < c1; ++c) {
        mn = std::min(mn, wr[c]);
        mx = std::max(mx, wr[c]);
      }
      uint16_t scale_bits = 0, min_bits = 0;
      bool ok_s = false, ok_m = false;
      const float scale_h = to_half_value((static_cast<double>(mx) - mn) / 15.0, &scale_bits, &ok_s);
      const float min_h = to_half_value(mn, &min_bits, &ok_m);
      if (!ok_s || !ok_m)
        return Unsupported("quantize_q4_asym_rtn: row " + std::to_string(r) + ", group " + std::to_string(j) +
                           ": min " + std::to_string(mn) + " / scale " + std::to_string((mx - mn) / 15.0) +
                           " outside the fp16 range");
      put_u16(scales + 2 * (r * ng + j), scale_bits);
      put_u16(mins + 2 * (r * ng + j), min_bits);
      for (int64_t c = c0; c < c1; ++c) {
        int code = 0;
        if (scale_h > 0.0f) {
          const float x = std::round((wr[c] - min_h) / scale_h);
          code = static_cast<int>(std::min(15.0f, std::max(0.0f, x)));
        }
        uint8_t& byte = codes[r * row_bytes + c / 2];
        byte = static_cast<uint8_t>(byte | ((c % 2 == 0) ? code : (code << 4)));
      }
    }
  }
  return q;
}

Result<QuantTensor> quantize_q8_sym_rtn(const float* w, int64_t rows, int64_t cols, int group_size) {
  if (w == nullptr) return InvalidArgument("quantize_q8_sym_rtn: null weight pointer");
  KERF_RETURN_IF_ERROR(check_shape(rows, cols));
  if (group_size < 0)
    return InvalidArgument("quantize_q8_sym_rtn: group size " + std::to_string(group_size) +
                           " must be >= 1 (or 0 for one group per row)");
  if (group_size == 0 && cols > INT32_MAX)
    return InvalidArgument("quantize_q8_sym_rtn: per-row group of " + std::to_string(cols) + " columns is too large");
  KERF_RETURN_IF_ERROR(check_finite(w, rows, cols));

  QuantTensor q;
  q.dtype = fmt::DType::kQ8Sym;
  q.rows = rows;
  q.cols = cols;
  q.group_size = group_size == 0 ? static_cast<int32_t>(cols) : group_size;
  const int64_t g = q.group_size;
  const int64_t ng = (cols + g - 1) / g;
  q.payload.assign(fmt::quant_payload_bytes(q.dtype, rows, cols, g), 0);
  uint8_t* codes = q.payload.data();
  uint8_t* scales = codes + rows * cols;

  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t c0 = j * g, c1 = std::min(cols, c0 + g);
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(wr[c]));
      uint16_t scale_bits = 0;
      bool ok = false;
      const float scale_h = to_half_value(static_cast<double>(amax) / 127.0, &scale_bits, &ok);
      if (!ok)
        return Unsupported("quantize_q8_sym_rtn: row " + std::to_string(r) + ", group " + std::to_string(j) +
                           ": scale " + std::to_string(amax / 127.0) + " outside the fp16 range");
      put_u16(scales + 2 * (r * ng + j), scale_bits);
      for (int64_t c = c0; c < c1; ++c) {
        int code = 0;
        if (scale_h > 0.0f) {
          const float x = std::round(wr[c] / scale_h);
          code = static_cast<int>(std::min(127.0f, std::max(-127.0f, x)));
        }
        codes[r * cols + c] = static_cast<uint8_t>(static_cast<int8_t>(code));
      }
    }
  }
  return q;
}

Result<QuantTensor> store_plain(const float* w, int64_t rows, int64_t cols, fmt::DType dtype) {
  if (w == nullptr) return InvalidArgument("store_plain: null weight pointer");
  KERF_RETURN_IF_ERROR(check_shape(rows, cols));
  if (dtype != fmt::DType::kF16 && dtype != fmt::DType::kF32)
    return InvalidArgument(std::string("store_plain: dtype ") + fmt::dtype_name(dtype) + " is not f16 or f32");
  KERF_RETURN_IF_ERROR(check_finite(w, rows, cols));
  QuantTensor q;
  q.dtype = dtype;
  q.rows = rows;
  q.cols = cols;
  q.group_size = 0;
  const int64_t n = rows * cols;
  if (dtype == fmt::DType::kF32) {
    q.payload.resize(static_cast<size_t>(n) * 4);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, &w[i], 4);
      for (int b = 0; b < 4; ++b) q.payload[4 * i + b] = static_cast<uint8_t>(u >> (8 * b));
    }
  } else {
    q.payload.resize(static_cast<size_t>(n) * 2);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h = 0;
      bool ok = false;
      to_half_value(w[i], &h, &ok);
      if (!ok) return Unsupported("store_plain: f16 overflow at " + rc(i / cols, i % cols));
      put_u16(&q.payload[2 * i], h);
    }
  }
  return q;
}

Result<std::vector<float>> dequantize(const QuantTensor& q) {
  auto want = payload_bytes(q.dtype, q.rows, q.cols, q.group_size, q.flags);
  if (!want.ok()) return want.status().with_context("dequantize");
  if (q.payload.size() != *want)
    return InvalidArgument(std::string("dequantize: ") + fmt::dtype_name(q.dtype) + " [" + std::to_string(q.rows) +
                           ", " + std::to_string(q.cols) + "] g " + std::to_string(q.group_size) + ": payload has " +
                           std::to_string(q.payload.size()) + " bytes, expected " + std::to_string(*want));
  if (fmt::dtype_is_generic_quant(q.dtype)) {
    auto u = unpack(q);
    if (!u.ok()) return u.status().with_context("dequantize");
    return dequantize(*u);
  }
  const int64_t rows = q.rows, cols = q.cols;
  std::vector<float> out(static_cast<size_t>(rows * cols));
  const uint8_t* p = q.payload.data();
  switch (q.dtype) {
    case fmt::DType::kQ4Asym: {
      const int64_t g = q.group_size, ng = (cols + g - 1) / g, row_bytes = (cols + 1) / 2;
      const uint8_t* scales = p + rows * row_bytes;
      const uint8_t* mins = scales + 2 * rows * ng;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const uint8_t byte = p[r * row_bytes + c / 2];
          const int code = (c % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
          const float scale = ir::half_to_float(get_u16(scales + 2 * (r * ng + c / g)));
          const float mn = ir::half_to_float(get_u16(mins + 2 * (r * ng + c / g)));
          out[r * cols + c] = static_cast<float>(code) * scale + mn;
        }
      break;
    }
    case fmt::DType::kQ8Sym: {
      const int64_t g = q.group_size, ng = (cols + g - 1) / g;
      const uint8_t* scales = p + rows * cols;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const int code = static_cast<int8_t>(p[r * cols + c]);
          if (code == -128) return BadInput("dequantize: q8_sym code -128 at " + rc(r, c));
          const float scale = ir::half_to_float(get_u16(scales + 2 * (r * ng + c / g)));
          out[r * cols + c] = static_cast<float>(code) * scale;
        }
      break;
    }
    case fmt::DType::kF16:
      for (int64_t i = 0; i < rows * cols; ++i) out[i] = ir::half_to_float(get_u16(p + 2 * i));
      break;
    case fmt::DType::kF32:
      for (int64_t i = 0; i < rows * cols; ++i) {
        uint32_t u = 0;
        for (int b = 0; b < 4; ++b) u |= static_cast<uint32_t>(p[4 * i + b]) << (8 * b);
        std::memcpy(&out[i], &u, 4);
      }
      break;
    default:
      return Internal("dequantize: unreachable dtype");
  }
  return out;
}

double relative_rms_error(const float* ref, const float* approx, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(ref[i]) - approx[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  if (n <= 0) return 0.0;
  if (den == 0.0) return std::sqrt(num / static_cast<double>(n));
  return std::sqrt(num / den);
}

}  // namespace kerf::quant
