// Fused causal GQA attention for the training forward (distill/reference.cpp's forward_train): the
// scores of one query row are computed, soft-maxed and applied to V without materializing the
// [B, H, T, T] score and probability tensors, and the backward pass recomputes them from the saved
// log-sum-exp per row (the memory-efficient scheme of FlashAttention, Dao et al. 2022, sec. 3.1,
// here as CPU loops: AVX2+FMA where the CPU has them, else portable scalar code, chosen at run time).
// At head_dim 8 (stories260K) the unfused ATen path spent most of a distillation step on these
// tensors (perf); fused, `kerf distill` ran 1.85x faster with the same losses (docs/quantization.md).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace kerf::distill {

/// softmax(q k^T * scale + causal mask) v per head, GQA (query head h reads KV head h / (H / G)),
/// positions 0..T-1 (no KV cache). q: float32 [B, T, H * Dh]; k, v: float32 [B, T, G * Dh]; returns
/// float32 [B, T, H * Dh]. Differentiable in q, k and v (a custom autograd node). Matches the unfused
/// matmul / softmax / matmul to float rounding: tests/test_attention_train.cpp requires the outputs
/// within 2e-6 and the gradients within 5e-6 of the largest reference magnitude (the AVX2 exponential
/// is Cephes expf's range reduction and degree-6 polynomial). Throws c10::Error (as ATen ops do) on
/// wrong dtypes or shapes, or H % G != 0.
at::Tensor causal_gqa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t n_heads,
                                int64_t n_kv_heads, int64_t head_dim, double scale);

/// The kernel actually used on this machine: "avx2" or "scalar" (for logs and tests).
const char* causal_attention_kernel();

/// Test hook: force the portable scalar kernel (true) or the automatic choice (false).
void force_scalar_attention(bool on);

}  // namespace kerf::distill
