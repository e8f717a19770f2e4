// runtime-lite: the integer-only NPU path. This is the BIT-EXACT REFERENCE of the arithmetic a vendor
// NPU has to reproduce (docs/npu-arithmetic.md is the normative text; this header and npu.cpp are its
// executable form), run on the CPU, single-threaded.
//
// Numbers on the NPU:
//   * activations: symmetric integer codes with a static per-value scale from calibration
//     ("npu.act_scales"): 8 bits (codes [-127, 127]) or 16 bits ([-32767, 32767]), zero point 0,
//     real = code * scale. Stored as int16_t whatever the bit width.
//   * weights of Linear / GatedFFN: qsym4 / qsym8 codes q (int8), one f16 scale per output channel.
//   * accumulators: int32 when the op's integer input is 8-bit (the bound on K is checked in
//     prepare), int64 otherwise; requantization by per-channel (multiplier, shift) pairs:
//     TFLite / gemmlowp fixed point (QuantizeMultiplier, SaturatingRoundingDoublingHighMul,
//     RoundingDivideByPOT, MultiplyByQuantizedMultiplier; gemmlowp/fixedpoint/fixedpoint.h,
//     tensorflow/lite/kernels/internal/common.h) for int32 accumulators, and a single-rounding
//     64-bit variant (mul_round_shift) for int64 ones.
//   * softmax: base-2 integer exp (2^-d from two 256-entry Q30 tables and a shift, in the spirit of
//     TFLite's LUT-based int16 softmax; not I-BERT's polynomial), Q18 exponentials summed in int32
//     (at most kMaxKeys keys), a normalized 31-bit integer reciprocal, Q15 probabilities.
//   * SiLU: a LUT (256 entries indexed by 8-bit codes; 513 entries with linear interpolation for
//     16-bit codes, like TFLite's int16 activation tables).
//   * RMSNorm: int64 sum of squares, integer square root and reciprocal (inv_sqrt_q), the norm
//     weights folded into per-channel multipliers.
//   * RoPE: Q64 phase accumulators (position * increment, wrapping) and a 40-step integer CORDIC.
// Floating point is used only in the host transfers (upload / download) and in prepare(), to derive
// multipliers and tables from the stored float scales, by deterministic procedures (IEEE + - * / sqrt, which are correctly rounded, and the
// det_exp / det_log below built from them): no libm transcendental function anywhere, so the same
// bits on x86-64 and aarch64. Private header; no exceptions, no RTTI.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "kerf/npu_calibrate.h"

struct kerf_model;

namespace kerf::rt::npu {

// ============================================================================ code ranges

/// Largest code magnitude of a `bits`-bit activation (8 -> 127, 16 -> 32767). Symmetric ranges: the
/// most negative two's complement code is never produced.
constexpr int32_t qmax_of(int bits) { return bits == 8 ? 127 : 32767; }

/// v clamped to [-qmax, qmax].
inline int32_t clamp_code(int64_t v, int32_t qmax) {
  return v > qmax ? qmax : v < -qmax ? -qmax : int32_t(v);
}

/// Quantization of a host value at upload (the only float -> code conversion of the path):
/// r = x / scale in f32 (correctly rounded division); NaN -> 0; r >= qmax -> qmax, r <= -qmax -> -qmax;
/// otherwise r rounded to nearest, ties to even. scale: finite, > 0.
int16_t quantize_value(float x, float scale, int32_t qmax);

// ============================================================================ fixed-point primitives

/// gemmlowp SaturatingRoundingDoublingHighMul: the high 32 bits of 2*a*b, rounded:
/// floor((a * b + 2^30) / 2^31) (ties toward +infinity), except a == b == INT32_MIN -> INT32_MAX.
/// (gemmlowp/fixedpoint/fixedpoint.h; TFLite reference_ops.)
int32_t srdhm(int32_t a, int32_t b);

/// gemmlowp RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero.
/// exponent in [0, 31].
int32_t rounding_divide_by_pot(int32_t x, int exponent);

/// x * 2^exponent saturated to [INT32_MIN, INT32_MAX] (gemmlowp SaturatingRoundingMultiplyByPOT for a
/// positive exponent). exponent in [0, 31].
int32_t saturating_left_shift(int32_t x, int exponent);

/// TFLite MultiplyByQuantizedMultiplier(int32 x, int32 m, int shift):
///   rounding_divide_by_pot(srdhm(saturating_left_shift(x, max(shift, 0)), m), max(-shift, 0))
/// ~ x * m * 2^(shift - 31) with two roundings. m in [0, 2^31), shift in [-31, 31]. (TFLite writes
/// x * (1 << left_shift), which is undefined on overflow; the saturating shift agrees with it
/// wherever it is defined.)
int32_t multiply_by_quantized_multiplier(int32_t x, int32_t m, int shift);

/// round(x * m / 2^right), ties away from zero, computed exactly (96-bit product, no intermediate
/// rounding) and saturated to [-(2^63 - 1), 2^63 - 1]. m >= 0, right in [0, 127]. The requantization
/// of the int64 accumulators (the 64-bit counterpart of multiply_by_quantized_multiplier).
int64_t mul_round_shift(int64_t x, int32_t m, int right);

/// x / 2^n rounded to nearest, ties away from zero (RoundingDivideByPOT on int64). n in [0, 62].
int64_t rshift_rhaz(int64_t x, int n);

/// floor(sqrt(n)) for any uint64 n (bit-by-bit integer algorithm).
uint64_t isqrt_u64(uint64_t n);

/// Integer inverse square root of m in [1, 2^62): k = the smallest integer with m * 4^k >= 2^60 (then
/// m * 4^k < 2^62), r = isqrt_u64(m * 4^k) in [2^30, 2^31), R = floor((2^61 + floor(r / 2)) / r) in
/// (2^30, 2^31]. Then 1 / sqrt(m) ~ R * 2^(k - 61) (relative error < 2^-29).
struct InvSqrt {
  int64_t R = 0;
  int k = 0;
};
InvSqrt inv_sqrt_q(uint64_t m);

/// Normalized integer reciprocal of E in [1, 2^31): s such that E * 2^s is in [2^30, 2^31),
/// R = floor((2^61 - 1) / (E * 2^s)) in [2^30, 2^31). Then 1 / E ~ R * 2^(s - 61) (relative error < 2^-30).
struct Recip {
  int64_t R = 0;
  int s = 0;
};
Recip recip_q(int32_t E);

/// A real multiplier M ~ m * 2^(shift - 31), m in [2^30, 2^31) (or m = 0: M = 0).
struct Multiplier {
  int32_t m = 0;
  int shift = 0;
};

/// TFLite QuantizeMultiplier: real = q * 2^shift with q in [0.5, 1) (frexp, exact), m = round(q * 2^31)
/// (ties away from zero; exact in double); m == 2^31 -> m = 2^30, shift + 1; real == 0 or
/// shift < -31 -> (0, 0). Returns false (out untouched) for a negative, NaN or infinite real or
/// real >= 2^31 (shift > 31).
bool quantize_multiplier(double real, Multiplier* out);

// ============================================================================ deterministic tables

/// exp(x) in double from + - * / only (Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, Taylor
/// polynomial of degree 14 in Horner form, scaled by 2^k with std::ldexp, which is exact): the same
/// bits on every IEEE-754 platform (no fused multiply-add: npu.cpp forbids contraction). Relative
/// error < 4e-16. x > 709.7 -> +inf, x < -745 -> 0, NaN -> NaN.
double det_exp(double x);
/// log(x) for finite x > 0 the same way (frexp, then 2 atanh((m-1)/(m+1)) as a degree-25 odd series).
/// Relative error < 4e-16. x <= 0 or NaN -> NaN.
double det_log(double x);

/// 2^(-j/256) and 2^(-j/65536) in Q30 for j in [0, 256), derived from the chain c_1 = sqrt(0.5),
/// c_k = sqrt(c_(k-1)) (c_k = 2^(-2^-k), k = 1..16, correctly rounded double sqrt): hi[j] =
/// round_half_even(2^30 * prod over set bits b of j, ascending, of c_(8-b)); lo[j] likewise with
/// c_(16-b). hi[0] = lo[0] = 2^30.
struct Exp2Tables {
  uint32_t hi[256];
  uint32_t lo[256];
};
const Exp2Tables& exp2_tables();

/// 2^(-f / 65536) in Q30 for f in [0, 65536): (hi[f >> 8] * lo[f & 255] + 2^29) >> 30, in (2^29, 2^30].
uint32_t exp2_neg_q16(uint32_t f);

/// RoPE phase increment of pair i (0 <= i < head_dim/2), in turns per position, Q64:
/// inc = round_half_even(2^64 * det_exp(-(2i / head_dim) * det_log(theta)) / (2 pi)) with
/// 2 pi = 6.283185307179586 (double), every step a double operation in this order.
uint64_t rope_phase_inc(int64_t i, int64_t head_dim, double theta);

/// cos and sin of `phase` turns (phase / 2^32 of a full turn) in Q30 by 40 CORDIC rotations in Q40
/// (fixed atan(2^-i) / (2 pi) table and gain, docs/npu-arithmetic.md), after a reduction to the
/// nearest quarter turn. |error| <= 2 / 2^30 (measured: 0.54 / 2^30).
void cordic_cos_sin(uint32_t phase, int32_t* c, int32_t* s);

/// Position p's phase of a pair: the top 32 bits of (p * inc mod 2^64), rounded (mod 2^32).
inline uint32_t rope_phase(int64_t p, uint64_t inc) {
  const uint64_t ph = uint64_t(p) * inc;  // wraps: whole turns drop out
  return uint32_t((ph >> 32) + ((ph >> 31) & 1u));
}

/// SiLU table of a GatedFFN's h1 (scale s1, h_bits 8 or 16). Entries are silu(c * s1) / s1 in Q8
/// (units of s1 / 256): L(c) = round_half_even(256 c / (1 + det_exp(-(c * s1)))), c * s1 exact in
/// double. 8 bits: 256 entries, entry c + 128 for c in [-128, 127]. 16 bits: 513 entries at
/// c_k = -32768 + 128 k, k = 0..512 (silu_eval interpolates).
void silu_lut(float s1, int h_bits, std::vector<int32_t>* lut);
/// silu(code * s1) / s1 in Q8 from the table: 8 bits lut[code + 128]; 16 bits u = code + 32768,
/// k = u >> 7, f = u & 127: lut[k] + rshift_rhaz((lut[k+1] - lut[k]) * f, 7).
inline int64_t silu_eval(const int32_t* lut, int h_bits, int32_t code) {
  if (h_bits == 8) return lut[code + 128];
  const int32_t u = code + 32768, k = u >> 7, f = u & 127;
  return int64_t(lut[k]) + rshift_rhaz(int64_t(lut[k + 1] - lut[k]) * f, 7);
}

/// eps of an RMSNorm in Q30 units of the input's code^2: round_half_even(2^30 * (eps / (s_x * s_x)))
/// in double (s_x * s_x and the division rounded), clamped to [0, 2^61].
int64_t rmsnorm_eps_q30(double eps, float s_x);

// ============================================================================ kernels
// Activations are int16_t codes, row-major [T, width]. `*_bits` is 8 or 16 (the clamp range of the
// result, and for integer inputs the accumulator width). No allocation; callers pass scratch.

/// Linear: y[t, n] = clamp(R(sum_k x[t, k] * w[n, k])), w: int8 [N, K] codes. in_bits 8: int32
/// accumulator (|sum| <= K * 127 * max|w| must be < 2^31, checked by the caller), R =
/// multiply_by_quantized_multiplier(acc, mul[n].m, mul[n].shift); in_bits 16: int64 accumulator,
/// R = mul_round_shift(acc, mul[n].m, 31 - mul[n].shift). mul[n] ~ s_x * s_w[n] / s_y.
void linear(const int16_t* x, int64_t T, int64_t K, int in_bits, const int8_t* w, int64_t N, const Multiplier* mul,
            int out_bits, int16_t* y);

/// RMSNorm of rows x: [T, D] (codes of scale s_x) to y (codes of scale s_y):
///   S = sum x^2 (int64); m = floor(S * 2^30 / D) + eps30 (eps30 = rmsnorm_eps_q30(eps, s_x));
///   m == 0 -> the row is 0. Else (R, k) = inv_sqrt_q(m);
///   y[i] = clamp(+-mul_round_shift(x[i] * R, g[i].m, 77 - g[i].shift - k)), minus when neg[i],
///   g[i] ~ |gamma[i]| / s_y.
void rmsnorm(const int16_t* x, int64_t T, int64_t D, int64_t eps30, const Multiplier* g, const uint8_t* neg,
             int out_bits, int16_t* y);

/// RoPE of rows x: [T, width] at positions pos0..: for each head and pair i (interleaved: (2i, 2i+1),
/// else (i, i + Dh/2)), with (C, S) = cordic_cos_sin(rope_phase(pos, inc[i])):
///   a' = clamp(mul_round_shift(a*C - b*S, mul.m, 61 - mul.shift)), b' = ... (a*S + b*C),
/// mul ~ s_x / s_y. y may not alias x.
void rotary(const int16_t* x, int16_t* y, int64_t T, int64_t width, int64_t head_dim, bool interleaved, int64_t pos0,
            const uint64_t* inc, Multiplier mul, int out_bits);

struct AttnParams {
  int64_t n_heads = 1, n_kv_heads = 1, head_dim = 1;
  bool causal = true;
  Multiplier logit;       ///< ~ |scale| * s_q * s_k * log2(e) * 2^16: logits in Q16 base-2 units
  bool logit_neg = false; ///< scale < 0
  Multiplier out;         ///< ~ s_v / s_out (the Q15 of the probabilities is in the shift)
  int out_bits = 8;
};
/// Most keys one softmax sums (its Q18 exponentials in an int32): the NPU's n_ctx limit.
constexpr int64_t kMaxKeys = fmt::kNpuMaxKeys;

/// Attention of query rows q: [T, H*Dh] at positions pos0.. over caches kc, vc: [n_ctx, G*Dh] whose
/// rows [0, pos0 + T) are filled (the caller appends k, v first; pos0 + T <= kMaxKeys). For each row t,
/// head h (KV head g = h / (H / G)), key j < n (n = pos0 + t + 1 when causal, else pos0 + T):
///   z_j = clamp(+-mul_round_shift(q . k_j, logit.m, 31 - logit.shift), +-(2^31 - 1))  (Q16, log2 units)
///   d_j = max z - z_j, i = d_j >> 16: e_j = i > 18 ? 0 : rshift_rhaz(exp2_neg_q16(d_j & 0xffff), i + 12)  (Q18)
///   E = sum e_j (int32, in [2^18, 2^31)); (R, s) = recip_q(E); P_j = min(32767, rshift_rhaz(e_j R, 46 - s))  (Q15)
///   o_d = sum_j P_j v_j[d] (int32); out = clamp(mul_round_shift(o_d, out.m, 46 - out.shift)).
/// scratch: 2 * (pos0 + T) int32.
void attention(const AttnParams& p, const int16_t* q, int64_t T, int64_t pos0, const int16_t* kc, const int16_t* vc,
               int16_t* out, int32_t* scratch);

/// GatedFFN gate: g[i] = clamp(mul_round_shift(silu_eval(lut, h_bits, h1[i]) * h3[i], mul.m, 39 - mul.shift)),
/// mul ~ s1 * s3 / s_g (the Q8 of the table is in the shift).
void silu_mul(const int16_t* h1, const int16_t* h3, int64_t n, const int32_t* lut, int h_bits, Multiplier mul,
              int g_bits, int16_t* g);

/// Add: A = mul_round_shift(a, ma.m, 15 - ma.shift), B likewise (Q16 in output code units,
/// ma ~ s_a / s_y, mb ~ s_b / s_y); y = clamp(rshift_rhaz(A + B, 16)).
void add(const int16_t* a, const int16_t* b, int64_t n, Multiplier ma, Multiplier mb, int out_bits, int16_t* y);

// ============================================================================ backend access (tests)

/// The codes rows [0, T) of value v on an NPU backend (one made by make_npu_backend): copies T * width
/// int16 into out. KERF_ERR_ARGUMENT when `b` is not an NPU backend or v is not on it.
int read_codes(DeviceBackend* b, uint32_t v, int64_t T, int16_t* out, std::string* err);

// Calibration (npu_calib.cpp): declared in the public C++ header kerf/npu_calibrate.h, which the
// compiler uses (it must not include runtime internals).
}  // namespace kerf::rt::npu

