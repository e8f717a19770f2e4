// kerf quant: the precision vocabulary shared by every quantizer (RTN, importance-weighted search,
// ternary / binary, GPTQ, AWQ) and the exact mapping between "codes + group parameters" and the
// artifact payloads of kerf/format.h (generic dtypes kQSym, kQAsym, kTernary, kBinary, format 1.1).
//
// Conventions. A weight matrix W is float32 [rows, cols] = [out, in], row-major. It is quantized
// group-wise along cols with group size g (0 = one group per row, resolved to cols); ng =
// ceil(cols / g) groups per row, the last one partial when g does not divide cols; groups are
// numbered i = r * ng + j in flat (row-major) order, NG = rows * ng. Per group i the parameters are
// GroupParams{scale s_i, min m_i} and each weight is stored as an integer code q:
//   kSym     b bits: q in [-2^(b-1), 2^(b-1) - 1],  w = s * q
//   kAsym    b bits: q in [0, 2^b - 1],             w = s * q + m
//   kTernary:        q in {-1, 0, +1},              w = s * q
//   kBinary:         q in {-1, +1},                 w = s * q
// Group parameters are stored in fp16 (ScaleFormat::kF16) or as 6-bit integers under an fp16
// super-scale per 8 groups (ScaleFormat::kK6, llama.cpp k-quant style: s = d * sc, m = dm * mc with
// sc, mc in 0..63). Every quantizer chooses codes against the REPRESENTABLE parameters (ParamGrid::
// snap), so what the runtime computes is what was optimised.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "kerf/format.h"
#include "quant/rtn.h"

namespace kerf::quant {

enum class QKind { kF32, kF16, kSym, kAsym, kTernary, kBinary };

/// One precision. Text form (parse_qspec / to_string):
///   "f32" | "f16" | "int<b>_sym" | "int<b>_asym" | "ternary" | "binary"   (b = 2..8)
///   optionally followed by ":g<N>" (group size, default 32) or ":row" (one group per row), and
///   ":k6" (6-bit quantized scales) or ":f16" (fp16 scales, the default). E.g. "int4_asym:g32",
///   "int3_sym:g32:k6", "ternary:g64", "int8_sym:row".
struct QSpec {
  QKind kind = QKind::kAsym;
  int bits = 4;                                  ///< kSym / kAsym: 2..8; other kinds: 0
  int group_size = 32;                           ///< >= 1, or 0 = one group per row; plain kinds: 0
  fmt::ScaleFormat scales = fmt::ScaleFormat::kF16;

  bool plain() const { return kind == QKind::kF32 || kind == QKind::kF16; }
  /// Smallest / largest code of the kind (0 / 0 for plain kinds).
  int qmin() const;
  int qmax() const;
  /// Group size for a row of `cols` elements (group_size, or cols when 0 or larger than cols).
  int64_t group_for(int64_t cols) const;
};

/// Artifact dtype and TensorEntry flags of a spec (kF32 / kF16 with flags 0 for plain kinds).
fmt::DType dtype_of(const QSpec& s);
uint32_t flags_of(const QSpec& s);
/// Checks bits / group / scale format are valid for the kind. kInvalidArgument naming the field.
Status validate(const QSpec& s);
/// "int4_asym:g32", "int3_sym:g32:k6", "ternary:g64", "int8_sym:row", "f16".
std::string to_string(const QSpec& s);
/// Parses the text form above. kInvalidArgument quoting the text and saying what is wrong.
Result<QSpec> parse_qspec(const std::string& text);
/// Logical bits of a [rows, cols] matrix in this precision, as shared/EVAL.md counts them:
/// codes (b per weight; ternary 8 bits per 5 weights of a row, rounded up per row; binary 1) plus
/// per group 16 bits per parameter (kF16) or 6 bits per parameter plus 16 bits per parameter per
/// super-block of 8 groups (kK6, partial last super-block counted whole); plain kinds 16 / 32.
int64_t spec_bits(const QSpec& s, int64_t rows, int64_t cols);

struct GroupParams {
  float scale = 0.f;  ///< s
  float min = 0.f;    ///< m (kAsym only; 0 otherwise)
};

/// How group parameters are chosen from a group's weights w[0..n) and optional importances h.
enum class ParamRule {
  kRtn,     ///< kSym: s = max|w| / 2^(b-1) with the sign rule of llama.cpp Q4_0 (the element of
            ///< largest magnitude maps to -2^(b-1)); kAsym: min/max; ternary: absmean (BitNet
            ///< b1.58, s = mean|w|); binary: s = mean|w|
  kTwn,     ///< ternary only: TWN threshold delta = 0.7 mean|w|, s = mean of |w| above delta
  kSearch,  ///< importance-weighted search minimising sum h (w - dequant(q(w)))^2 over scale (and
            ///< min / threshold) candidates (llama.cpp make_qx_quants / make_qkx quants with an
            ///< imatrix; for binary the weighted least-squares s = sum h|w| / sum h)
};
Result<ParamRule> parse_param_rule(const std::string& text);  ///< "rtn" | "twn" | "search"
const char* param_rule_name(ParamRule r);

/// Parameters of one group before snapping to the representable grid. `h` may be null (all 1).
/// For kK6 asym the min is clamped to <= 0 (the k-quant convention m = dm * mc with dm <= 0).
/// Errors: kInvalidArgument (n < 1, plain spec, kTwn for a non-ternary spec).
Result<GroupParams> choose_group_params(const QSpec& s, const float* w, const float* h, int64_t n, ParamRule rule);

/// The representable group parameters of one tensor. kF16: each parameter rounded to fp16.
/// kK6: per super-block of 8 groups an fp16 d (and dm), chosen from initial estimates of the
/// group parameters so that the largest estimate is representable; snap() rounds a group's
/// parameters to d * k, k = round(s / d) clamped to 0..63 (and dm * k for mins, dm <= 0).
class ParamGrid {
 public:
  /// `init`: one GroupParams per group (flat order, size rows * ng), e.g. choose_group_params on
  /// the unmodified weights; ignored for kF16. Errors: kInvalidArgument for a size mismatch or a
  /// plain spec; kUnsupported when a parameter is outside the fp16 range.
  static Result<ParamGrid> make(const QSpec& s, int64_t rows, int64_t cols, const std::vector<GroupParams>& init);
  /// Nearest representable parameters for flat group `i`.
  GroupParams snap(int64_t i, GroupParams p) const;
  const QSpec& spec() const { return spec_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t group() const { return group_; }    ///< resolved g
  int64_t groups_per_row() const { return ng_; }
  /// kK6 super-scales as fp16 bits (empty for kF16), one per super-block.
  const std::vector<uint16_t>& super_d() const { return d_; }
  const std::vector<uint16_t>& super_dm() const { return dm_; }

 private:
  QSpec spec_;
  int64_t rows_ = 0, cols_ = 0, group_ = 0, ng_ = 0;
  std::vector<uint16_t> d_, dm_;
};

/// Code of value w under (representable) params p: nearest code, clamped to the code range;
/// ternary: the q in {-1,0,1} whose s*q is nearest; binary: +1 when w >= 0 else -1 (when s == 0,
/// code 0 for ints and ternary, +1 for binary).
int quantize_value(const QSpec& s, GroupParams p, float w);
/// s * q (+ m), computed in float exactly as the runtime does.
float dequantize_value(const QSpec& s, GroupParams p, int q);

/// A quantized tensor in unpacked form: one code per weight, snapped params per group.
struct Unpacked {
  QSpec spec;
  int64_t rows = 0, cols = 0;
  std::vector<int16_t> codes;          ///< [rows * cols], ranges as above
  std::vector<GroupParams> params;     ///< [rows * ng], representable (snapped) values
  std::vector<uint16_t> super_d, super_dm;  ///< kK6 only: fp16 bits per super-block
};

/// Packs into kerf/format.h's payload (QuantTensor.dtype / flags / group_size set). Errors:
/// kInvalidArgument for sizes that disagree, a code out of range, or a parameter that is not
/// representable (kK6: s != d * sc for an integer sc in 0..63).
Result<QuantTensor> pack(const Unpacked& u);
/// Inverse of pack() for generic dtypes. kInvalidArgument for another dtype or a bad payload size.
Result<Unpacked> unpack(const QuantTensor& q);

/// Quantizes W [rows, cols] with per-group parameters from `rule` (importances `col_importance`
/// [cols], e.g. the imatrix = diag(X^T X), or null) snapped to the grid; codes by quantize_value.
/// Plain specs store f16 / f32. Errors: as choose_group_params, kBadInput for NaN / Inf (row, col).
Result<QuantTensor> quantize_rtn(const float* w, int64_t rows, int64_t cols, const QSpec& s,
                                 const float* col_importance, ParamRule rule);

}  // namespace kerf::quant
