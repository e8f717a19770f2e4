// runtime-lite CPU kernels. Two sets:
//  * the scalar reference kernels (first banner): straightforward code, the oracle of the tests;
//  * the executor's fast kernels (second banner): the same math arranged for SIMD (16 interleaved
//    partial sums reduced in a fixed tree, a vectorizable exp), multiversioned for x86-64-v3 / v4
//    where the compiler and libc support function multiversioning (GCC >= 12 / clang >= 14, glibc),
//    plain loops the compiler auto-vectorizes elsewhere. They differ from the reference by rounding
//    only (summation order, exp within 2e-7 relative); with no fused multiply-adds (kernels.cpp
//    forbids contraction) they give the same bits on every instruction set.
// All activations are float32 row-major; weights are read from the mapping through WeightView and
// dequantized one row at a time (never a full float copy of a weight). No allocation inside a
// kernel: callers pass scratch.
#pragma once

#include <cstdint>

#include "model.h"
#include "qkernels.h"

namespace kerf::rt {

// ---------------------------------------------------------------- scalar reference kernels

/// Dequantizes row `r` (0 <= r < w.rows) of `w` into out[0..w.cols). Any supported dtype: f32, f16,
/// bf16, q8_sym, q4_asym and the generic qsym / qasym (2..8 bits) / ternary / binary with f16 or k6
/// group parameters (w.flags), in the plain or the tiled layout (dequant_row_tiled). Bit-exact: the
/// f32 expressions of formats/SPEC.md section 6.4 (no fused multiply-add); partial last groups
/// handled. Reads only the tensor's payload.
void dequant_row(const WeightView& w, int64_t r, float* out);

/// y[t, n] = sum_k x[t, k] * W[n, k] for t < T, n < w.rows, k < w.cols (x: [T, cols], y: [T, rows]).
/// `row_buf` holds w.cols floats. Each output is accumulated in the same order whatever T is, so a
/// prefill of T rows gives bit-identical results to T single-row calls.
void linear(const WeightView& w, const float* x, int64_t T, float* y, float* row_buf);

/// out[t, :] = dequantized row tokens[t] of `table` (tokens already range-checked), out: [T, cols].
void embedding(const WeightView& table, const int32_t* tokens, int64_t T, float* out);

/// out[t, :] = weight * x[t, :] / sqrt(mean(x[t, :]^2) + eps); x, out: [T, D]; weight: D floats.
/// out may alias x.
void rmsnorm(const float* x, const float* weight, int64_t T, int64_t D, double eps, float* out);

/// In-place RoPE on x: [T, width], width = heads * head_dim, row t at position pos0 + t.
/// Pair i of a head (i < head_dim/2) is (2i, 2i+1) when interleaved, else (i, i + head_dim/2);
/// angle = pos * theta^(-2i/head_dim), computed in double; (a, b) -> (a cos - b sin, a sin + b cos).
void rotary(float* x, int64_t T, int64_t width, int64_t head_dim, double theta, bool interleaved, int64_t pos0);

struct AttnShape {
  int64_t n_heads, n_kv_heads, head_dim;
  double scale;
  bool causal;
};
/// Appends k, v ([T, G*Dh]) to the caches ([n_ctx, G*Dh], rows pos0..pos0+T-1; caller checked
/// pos0 + T <= n_ctx), then out[t, h*Dh..] = softmax(q_h . K^T * scale) V over cached positions
/// 0..pos0+t (causal) or 0..pos0+T-1, with query head h reading KV head h / (H/G).
/// q, out: [T, H*Dh]; `scores` holds pos0 + T floats.
void attention(const AttnShape& s, const float* q, const float* k, const float* v, int64_t T, int64_t pos0,
               float* kcache, float* vcache, float* out, float* scores);

/// a[i] = silu(a[i]) * b[i] for i < n; silu(z) = z / (1 + exp(-z)).
void silu_mul(float* a, const float* b, int64_t n);

/// out[i] = a[i] + b[i]; out may alias a or b.
void add(const float* a, const float* b, float* out, int64_t n);

// ---------------------------------------------------------------- fast kernels (the executor's)

/// out[i] = fmt::f16_to_f32(in[i]) for i < n, bit for bit (NaN payloads and subnormals included),
/// branch-free so that it vectorizes.
void f16_to_f32_row(const uint16_t* in, float* out, int64_t n);

/// dequant_row() (same bits) with vectorized f16 / bf16 rows.
void dequant_row_fast(const WeightView& w, int64_t r, float* out);

/// Output rows [r0, r1) of linear(): y[t * ldy + r] = sum_k W[r, k] * x[t * w.cols + k] for t < T.
/// Any layout (rows come from dequant_row_fast into row_buf, w.cols floats; f32 rows are read in
/// place). Each output's sum is formed the same way whatever T, r0, r1 and ldy are, so splitting
/// the rows across threads or the tokens across calls gives identical bits.
void linear_rows(const WeightView& w, const float* x, int64_t T, int64_t r0, int64_t r1, float* y, int64_t ldy,
                 float* row_buf);

/// rmsnorm() with vectorized sums (same contract; out may alias x).
void rmsnorm_fast(const float* x, const float* weight, int64_t T, int64_t D, double eps, float* out);

/// out[i] = exp(x[i]) by a range reduction to [-ln2/2, ln2/2] and a degree-7 polynomial: relative
/// error below 2e-7 (measured: 8e-8) for x in [-87, 88]; x < -87 gives exp(-87) (1.6e-38) and
/// x > 88 gives exp(88) (1.7e38) instead of 0 / inf; NaN stays NaN. out may alias x.
void exp_fast_n(const float* x, float* out, int64_t n);

/// silu_mul() with exp_fast: a[i] = a[i] / (1 + exp(-a[i])) * b[i].
void silu_mul_fast(float* a, const float* b, int64_t n);

/// Fills the RoPE table rows of positions [p0, p1) for one (head_dim, theta): row p holds
/// head_dim / 2 cosines, then head_dim / 2 sines, table[p * head_dim + i] = float(cos(a)) and
/// table[p * head_dim + head_dim / 2 + i] = float(sin(a)), a = p * theta^(-2i / head_dim) in double:
/// exactly the values rotary() computes.
void rope_table_fill(int64_t head_dim, double theta, int64_t p0, int64_t p1, float* table);

/// rotary() reading the angles from a table filled for positions up to pos0 + T - 1: bit-identical
/// to rotary() (the same f32 expressions, never fused). Reads x, writes out (may be the same).
void rotary_fast(const float* x, float* out, int64_t T, int64_t width, int64_t head_dim, bool interleaved,
                 int64_t pos0, const float* table);

/// The KV cache of one Attention op, head-major so that a head's keys and values are contiguous:
/// element d of KV head g at position p is at (g * n_ctx + p) * head_dim + d of k and v, float32 or
/// (f16) IEEE half (uint16_t).
struct KVView {
  void* k = nullptr;
  void* v = nullptr;
  bool f16 = false;
  int64_t n_kv_heads = 0, head_dim = 0, n_ctx = 0;
};

/// Writes k, v: [T, n_kv_heads * head_dim] into positions [pos0, pos0 + T) of the cache (f16:
/// fmt::f32_to_f16, round to nearest even; values beyond the f16 range become +-inf).
void kv_store(const KVView& kv, const float* k, const float* v, int64_t T, int64_t pos0);

/// attention() over a cache already holding rows [0, n_kv), for query rows q: [Tq, H * Dh] at
/// positions qpos0 .. qpos0 + Tq - 1 (causal: row t reads keys 0 .. qpos0 + t; otherwise all n_kv).
/// Computes the work items [i0, i1) of the H * Tq (head, row) pairs numbered h * Tq + t, writing
/// out[t * H * Dh + h * Dh ..] (out: [Tq, H * Dh]); disjoint item ranges may run concurrently, each
/// with its own `scores` (n_kv floats).
void attention_fast(const AttnShape& s, const float* q, int64_t Tq, int64_t qpos0, int64_t n_kv, const KVView& kv,
                    int64_t i0, int64_t i1, float* out, float* scores);

}  // namespace kerf::rt
