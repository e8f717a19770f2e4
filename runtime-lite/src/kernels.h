// runtime-lite scalar CPU kernels (reference code; SIMD versions come later). All activations are
// float32 row-major; weights are read from the mapping through WeightView and dequantized one row at
// a time (never a full float copy of a weight). No allocation inside a kernel: callers pass scratch.
#pragma once

#include <cstdint>

#include "model.h"

namespace kerf::rt {

/// Dequantizes row `r` (0 <= r < w.rows) of `w` into out[0..w.cols). Any supported dtype: f32, f16,
/// bf16, q8_sym, q4_asym and the generic qsym / qasym (2..8 bits) / ternary / binary with f16 or k6
/// group parameters (w.flags). Bit-exact: the f32 expressions of formats/SPEC.md section 6.4 (no
/// fused multiply-add); partial last groups handled. Reads only the tensor's payload.
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

}  // namespace kerf::rt
