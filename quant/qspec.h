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
//
// Dequantization, in float, exactly as the runtime computes it (one place: k6_param / dequant_expr
// below; dequantize_value, unpack and quant::dequantize all use them):
//   kF16 scales: s = f16_to_f32(s_bits), m = f16_to_f32(m_bits)
//   kK6 scales:  s = f16_to_f32(d_bits) * float(sc), m = f16_to_f32(dm_bits) * float(mc)
//   w = s * float(q)  (kAsym: s * float(q) + m; no fused multiply-add)
//
// Sources of the parameter rules (ParamRule): llama.cpp ggml-quants.c quantize_row_q4_0_ref (Q4_0
// sign rule), make_qx_quants (symmetric scale search, weighted least-squares refit) and
// make_qkx2_quants (asymmetric scale / min search); BitNet b1.58 (Ma et al. 2024, "The Era of 1-bit
// LLMs") absmean ternary scale; TWN (Li & Liu 2016, "Ternary Weight Networks") threshold
// 0.7 * E|w|. Rounding of codes is round-half-away-from-zero (std::round), as in rtn.h.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
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
  /// This resolved g is what QuantTensor.group_size records.
  int64_t group_for(int64_t cols) const;
};

/// The k-quant parameter value d * k, in float as the runtime computes it (d: fp16 bits).
inline float k6_param(uint16_t d_bits, int k) { return fmt::f16_to_f32(d_bits) * static_cast<float>(k); }
/// The dequantization expression of the generic dtypes: s * q (+ m when `asym`).
inline float dequant_expr(float s, float m, int q, bool asym) {
  const float v = s * static_cast<float>(q);
  return asym ? v + m : v;
}

/// Artifact dtype and TensorEntry flags of a spec (kF32 / kF16 with flags 0 for plain kinds).
fmt::DType dtype_of(const QSpec& s);
uint32_t flags_of(const QSpec& s);
/// Checks bits / group / scale format are valid for the kind. kInvalidArgument naming the field:
/// kSym / kAsym need bits 2..8; kTernary / kBinary need bits 0; quantized kinds need
/// group_size >= 0; plain kinds need bits 0, group_size 0 and kF16 scales (the "no scales" value).
Status validate(const QSpec& s);
/// "int4_asym:g32", "int3_sym:g32:k6", "ternary:g64", "int8_sym:row", "f16".
std::string to_string(const QSpec& s);
/// Parses the text form above (lower case, no spaces; options in any order, each at most once;
/// "g<N>" needs 1 <= N <= 2^31 - 1; plain kinds take no options). kInvalidArgument quoting the text
/// and saying what is wrong. parse_qspec(to_string(s)) == s for every valid s.
Result<QSpec> parse_qspec(const std::string& text);
bool operator==(const QSpec& a, const QSpec& b);
inline bool operator!=(const QSpec& a, const QSpec& b) { return !(a == b); }
/// Logical bits of a [rows, cols] matrix in this precision, as shared/EVAL.md counts them:
/// codes (b per weight; ternary 8 bits per 5 weights of a row, rounded up per row; binary 1) plus
/// per group 16 bits per parameter (kF16) or 6 bits per parameter plus 16 bits per parameter per
/// super-block of 8 groups (kK6, partial last super-block counted whole); plain kinds 16 / 32.
/// Equals quant::logical_bits(dtype_of(s), rows, cols, s.group_for(cols), flags_of(s)) (bpw.h).
/// 0 for an invalid spec or rows / cols < 1.
int64_t spec_bits(const QSpec& s, int64_t rows, int64_t cols);

struct GroupParams {
  float scale = 0.f;  ///< s
  float min = 0.f;    ///< m (kAsym only; 0 otherwise)
};

/// How group parameters are chosen from a group's weights w[0..n) and optional importances h.
/// kRtn and kTwn ignore the importances; kSearch minimises the importance-weighted error.
enum class ParamRule {
  kRtn,     ///< kSym, kF16 scales: llama.cpp Q4_0 rule s = w* / -2^(b-1), w* the element of largest
            ///< |w| with its sign (so w* maps exactly to code -2^(b-1); s may be negative).
            ///< kSym, kK6 scales (s must be >= 0): the smallest non-clipping s >= 0,
            ///< s = max(max(w) / (2^(b-1) - 1), -min(w) / 2^(b-1), 0).
            ///< kAsym: s = (max - min) / (2^b - 1), m = min (kK6: min(min, 0) first).
            ///< ternary: absmean (BitNet b1.58), s = mean|w|;  binary: s = mean|w|.
  kTwn,     ///< ternary only: TWN threshold delta = 0.7 mean|w|, s = mean of the |w| > delta
            ///< (0 when none); codes are then chosen nearest for s like every rule (|w| > s / 2).
  kSearch,  ///< importance-weighted search minimising sum h (w - dequant(q(w)))^2, each candidate
            ///< evaluated with its parameters snapped (fp16, or the ParamGrid) and codes by
            ///< quantize_value; the kRtn result is the first candidate, so kSearch is never worse
            ///< than kRtn under the same snapping. kSym: llama.cpp make_qx_quants (inverse scales
            ///< -(2^(b-1) + 0.1 t) / w* and (2^(b-1) - 1 + 0.1 t) / w*, t = -9..9, only positive
            ///< ones for kK6; each candidate also refit by weighted least squares given its
            ///< codes); kAsym: make_qkx2_quants (21 inverse scales (2^b - 2 + 0.1 t) / (max - min),
            ///< t = 0..20, codes from min, (s, m) refit by weighted least squares); ternary: of
            ///< the supports "the k largest |w|" (k = 1..n) with the weighted LS scale
            ///< s = sum h|w| / sum h over the support, the 4 of least unsnapped error, plus the
            ///< TWN scale; binary: s = sum h|w| / sum h. Then up to 3 rounds of "codes for the
            ///< snapped best, weighted LS refit" while it improves. h = null means all 1; a group
            ///< whose importances sum to 0 is treated as unweighted. Cost: about 80 (kSym) / 45
            ///< (kAsym) evaluations of the group, ~1 s per 10^6 weights.
};
Result<ParamRule> parse_param_rule(const std::string& text);  ///< "rtn" | "twn" | "search"
const char* param_rule_name(ParamRule r);

/// Parameters of one group before snapping to the representable grid. `w`: the group's n weights
/// (finite), `h`: n importances (>= 0, finite) or null (all 1). For kK6 the scale is >= 0 and the
/// asym min is clamped to <= 0 (the k-quant convention m = dm * mc with dm <= 0). kSearch
/// evaluates its candidates with fp16-rounded parameters (the final snapping for kF16; an
/// estimate for kK6, whose grid is not known yet). Sym kinds return min 0.
/// Errors: kInvalidArgument (null w, n < 1, invalid or plain spec, kTwn for a non-ternary spec,
/// a negative / non-finite importance).
Result<GroupParams> choose_group_params(const QSpec& s, const float* w, const float* h, int64_t n, ParamRule rule);
class ParamGrid;
/// As above for flat group `i` of `grid`'s tensor, with every candidate evaluated snapped by
/// grid.snap(i, .); returns the SNAPPED (representable) parameters. For kRtn / kTwn this is
/// grid.snap(i, choose_group_params(...)). Errors as above, and kInvalidArgument for i out of range
/// or a spec other than grid.spec().
Result<GroupParams> choose_group_params(const QSpec& s, const float* w, const float* h, int64_t n, ParamRule rule,
                                        const ParamGrid& grid, int64_t i);

/// The representable group parameters of one tensor. kF16: each parameter rounded to fp16
/// (round to nearest even; sym kinds get min 0). kK6: per super-block b of 8 consecutive flat
/// groups (8b .. 8b+7, possibly spanning rows; the last one partial) an fp16 d >= 0, the nearest
/// fp16 to S / 63 with S = max(0, largest init scale of the block), raised to the next fp16 value
/// while d * 63 < S (so S maps to k <= 63); for kAsym also dm <= 0 from M = min(0, smallest init
/// min): dm = -(the same choice for -M). snap() rounds a group's parameters to
/// s = k6_param(d, k), k = clamp(round(s / d), 0, 63) (0 when d == 0), and m = k6_param(dm, k'),
/// k' = clamp(round(m / dm), 0, 63).
class ParamGrid {
 public:
  /// `init`: one GroupParams per group (flat order, size rows * ng), e.g. choose_group_params on
  /// the unmodified weights; for kF16 it may be empty (otherwise it is only range-checked).
  /// Errors: kInvalidArgument for an invalid or plain spec, bad sizes, a size mismatch or a
  /// non-finite parameter; kUnsupported (naming row and group) when a parameter is outside the
  /// fp16 range (kF16: |p| >= 65520; kK6: S / 63 or -M / 63 beyond the largest fp16).
  static Result<ParamGrid> make(const QSpec& s, int64_t rows, int64_t cols, const std::vector<GroupParams>& init);
  /// Nearest representable parameters for flat group `i` (0 <= i < rows * ng).
  GroupParams snap(int64_t i, GroupParams p) const;
  /// kK6: the 6-bit integers k (scale) and k' (min) snap() would use; {0, 0} for kF16.
  std::pair<int, int> k6_codes(int64_t i, GroupParams p) const;
  int64_t groups() const { return rows_ * ng_; }  ///< NG
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

/// Code of value w under (representable) params p: nearest code, clamped to the code range
/// (kSym / kTernary: clamp(round(w / s)); kAsym: clamp(round((w - m) / s)); ties away from zero);
/// ternary: the q in {-1,0,1} whose s*q is nearest; binary: +1 when w >= 0 else -1 (when s == 0,
/// code 0 for ints and ternary, +1 for binary). Plain specs: 0.
int quantize_value(const QSpec& s, GroupParams p, float w);
/// s * q (+ m), computed in float exactly as the runtime does (dequant_expr).
float dequantize_value(const QSpec& s, GroupParams p, int q);
/// sum_i h_i (w_i - dequantize_value(s, p, quantize_value(s, p, w_i)))^2 in double, p used as given
/// (snap it first); h null = all 1.
double weighted_sse(const QSpec& s, GroupParams p, const float* w, const float* h, int64_t n);

/// A quantized tensor in unpacked form: one code per weight, snapped params per group.
struct Unpacked {
  QSpec spec;
  int64_t rows = 0, cols = 0;
  std::vector<int16_t> codes;          ///< [rows * cols], ranges as above
  std::vector<GroupParams> params;     ///< [rows * ng], representable (snapped) values
  std::vector<uint16_t> super_d, super_dm;  ///< kK6 only: fp16 bits per super-block
};

/// Packs into kerf/format.h's payload (QuantTensor.dtype / flags / group_size = resolved g set).
/// Errors: kInvalidArgument for an invalid or plain spec, sizes that disagree (codes rows * cols,
/// params rows * ng, kK6 super_d NS and, kAsym only, super_dm NS; super arrays must be empty for
/// kF16), a code out of range (row, col named), a non-zero min for a non-asym kind, or a parameter
/// that is not representable (kF16: not an fp16 value; kK6: s != k6_param(d, sc) for every
/// sc in 0..63, likewise m with dm; a non-finite d / dm).
Result<QuantTensor> pack(const Unpacked& u);
/// Inverse of pack() for generic dtypes (spec.group_size = q.group_size; ternary bytes decoded
/// mod 243). kInvalidArgument for another dtype, invalid flags, bad sizes / group size or a bad
/// payload size.
Result<Unpacked> unpack(const QuantTensor& q);
/// Dequantizes an Unpacked tensor: float32 [rows * cols], dequantize_value per weight.
/// kInvalidArgument for sizes that disagree.
Result<std::vector<float>> dequantize(const Unpacked& u);

/// Quantizes W [rows, cols] (float32, row-major) with per-group parameters from `rule`
/// (importances `col_importance` [cols], e.g. the imatrix = diag(X^T X), or null) snapped to the
/// grid; codes by quantize_value. Steps: init = choose_group_params per group; grid =
/// ParamGrid::make(init); for kK6 with kSearch the search is re-run against the grid
/// (choose_group_params(..., grid, i)); params = grid.snap; codes = quantize_value.
/// Plain specs store f16 / f32 (store_plain; the rule is ignored).
/// Errors: kInvalidArgument for a null w, rows / cols < 1, an invalid spec, kTwn for a non-ternary
/// spec, a negative / non-finite importance (col named); kBadInput for a NaN / Inf weight (row and
/// col named); kUnsupported for parameters outside the fp16 range (row and group named).
Result<QuantTensor> quantize_rtn(const float* w, int64_t rows, int64_t cols, const QSpec& s,
                                 const float* col_importance, ParamRule rule);
/// As quantize_rtn, before packing (quantized specs only; kInvalidArgument for a plain spec).
Result<Unpacked> quantize_rtn_unpacked(const float* w, int64_t rows, int64_t cols, const QSpec& s,
                                       const float* col_importance, ParamRule rule);
/// Quantizes W [rows, cols] (float32, row-major) with GIVEN per-group parameters `params`
/// [rows * ng] (flat group order, unsnapped float values, e.g. the step sizes learned by
/// quantization-aware training, LSQ: Esser et al. 2020): grid = ParamGrid::make(params), each
/// group's parameters snapped by grid.snap, codes by quantize_value. quantize_rtn_unpacked(w, s,
/// h, rule) equals quantize_with_params(w, s, P) for P its rule's unsnapped parameters (kSearch on
/// kK6 excepted, which re-searches against the grid). Errors: kInvalidArgument for a null w,
/// rows / cols < 1, an invalid or plain spec, params.size() != rows * ng, a non-finite parameter;
/// kBadInput for a NaN / Inf weight (row and col named); kUnsupported for parameters outside the
/// fp16 range (row and group named).
Result<Unpacked> quantize_with_params(const float* w, int64_t rows, int64_t cols, const QSpec& s,
                                      const std::vector<GroupParams>& params);

}  // namespace kerf::quant
