// Executor: sessions (KV caches, activation buffers) and the interpreter of the program's ops.
#include <algorithm>
#include <cstring>
#include <new>

#include "kernels.h"
#include "model.h"

using kerf::fmt::OpCode;
using kerf::rt::FloatBuf;
using kerf::rt::OpInfo;

namespace {

/// Scratch floats an evaluation of T tokens needs (see the op cases in run_op).
size_t scratch_floats(const kerf_model* m, size_t T, size_t n_ctx) {
  size_t need = n_ctx;  // attention scores
  for (const OpInfo& op : m->ops) {
    const auto& w = [&](size_t k) -> const kerf::rt::TensorInfo& {
      return m->tensors[op.inputs[k] & ~kerf::fmt::kRefTensorBit];
    };
    switch (op.op) {
      case OpCode::kLinear: need = std::max<size_t>(need, size_t(w(1).shape[1])); break;
      case OpCode::kRMSNorm: need = std::max<size_t>(need, size_t(w(1).shape[0])); break;
      case OpCode::kGatedFFN: {
        const size_t F = size_t(w(1).shape[0]), D = size_t(w(1).shape[1]);
        need = std::max(need, 2 * T * F + std::max(D, F));
        break;
      }
      default: break;
    }
  }
  return need;
}

void run_op(kerf_session* s, const OpInfo& op, int64_t T, int64_t pos0) {
  const kerf_model* m = s->model;
  auto val = [&](size_t k) -> float* { return s->vals[op.inputs[k]].p; };
  auto wv = [&](size_t k) { return m->tensors[op.inputs[k] & ~kerf::fmt::kRefTensorBit].view(); };
  auto width = [&](size_t k) -> int64_t { return m->values[op.inputs[k]].width; };
  float* out = s->vals[op.output].p;
  const int64_t out_w = m->values[op.output].width;
  float* scratch = s->scratch.p;
  switch (op.op) {
    case OpCode::kEmbedding:
      kerf::rt::embedding(wv(1), s->tokens.data(), T, out);
      break;
    case OpCode::kRMSNorm: {
      const kerf::rt::WeightView w = wv(1);
      kerf::rt::dequant_row(w, 0, scratch);
      kerf::rt::rmsnorm(val(0), scratch, T, width(0), op.eps, out);
      break;
    }
    case OpCode::kLinear:
      kerf::rt::linear(wv(1), val(0), T, out, scratch);
      break;
    case OpCode::kRotary:
      std::memcpy(out, val(0), size_t(T * out_w) * sizeof(float));
      kerf::rt::rotary(out, T, out_w, op.head_dim, op.theta, op.interleaved != 0, pos0);
      break;
    case OpCode::kAttention: {
      const kerf::rt::AttnShape sh{op.n_heads, op.n_kv_heads, op.head_dim, op.scale, op.causal != 0};
      kerf::rt::attention(sh, val(0), val(1), val(2), T, pos0, s->kcache[op.kv_slot].p, s->vcache[op.kv_slot].p, out,
                          scratch);
      break;
    }
    case OpCode::kGatedFFN: {
      const kerf::rt::WeightView w1 = wv(1), w3 = wv(2), w2 = wv(3);
      const int64_t F = w1.rows;
      float* h1 = scratch;
      float* h3 = scratch + T * F;
      float* row = scratch + 2 * T * F;
      kerf::rt::linear(w1, val(0), T, h1, row);
      kerf::rt::linear(w3, val(0), T, h3, row);
      kerf::rt::silu_mul(h1, h3, T * F);
      kerf::rt::linear(w2, h1, T, out, row);
      break;
    }
    case OpCode::kAdd:
      kerf::rt::add(val(0), val(1), out, T * out_w);
      break;
  }
}

}  // namespace

extern "C" {

int kerf_session_create(const kerf_model* m, int n_ctx, kerf_session** out) {
  if (!out) return KERF_ERR_ARGUMENT;
  *out = nullptr;
  if (!m || n_ctx < 0 || n_ctx > m->max_seq_len) return KERF_ERR_ARGUMENT;
  if (n_ctx == 0) n_ctx = m->max_seq_len;
  kerf_session* s = new (std::nothrow) kerf_session;
  if (!s) return KERF_ERR_MEMORY;
  s->model = m;
  s->n_ctx = n_ctx;
  s->kcache.resize(size_t(m->n_attention));
  s->vcache.resize(size_t(m->n_attention));
  s->vals.resize(m->values.size());
  for (const OpInfo& op : m->ops) {
    if (op.op != OpCode::kAttention) continue;
    const size_t n = size_t(n_ctx) * size_t(op.n_kv_heads * op.head_dim);
    if (!s->kcache[op.kv_slot].zeros(n) || !s->vcache[op.kv_slot].zeros(n)) {
      delete s;
      return KERF_ERR_MEMORY;
    }
  }
  *out = s;
  return KERF_OK;
}

void kerf_session_free(kerf_session* s) { delete s; }

void kerf_session_reset(kerf_session* s) {
  if (s) s->pos = 0;  // cached rows past pos are overwritten before they are read
}

int kerf_session_pos(const kerf_session* s) { return s ? s->pos : 0; }

int kerf_session_eval(kerf_session* s, const int32_t* tokens, int n, float* logits, int all_logits) {
  if (!s || !tokens || n < 1) return KERF_ERR_ARGUMENT;
  const kerf_model* m = s->model;
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= m->vocab) return KERF_ERR_ARGUMENT;
  if (n > s->n_ctx - s->pos) return KERF_ERR_CONTEXT;
  const size_t T = size_t(n);
  if (T > s->cap_tokens) {
    for (const OpInfo& op : m->ops)  // only values some op writes get a buffer
      if (!s->vals[op.output].reserve(T * m->values[op.output].width)) return KERF_ERR_MEMORY;
    if (!s->scratch.reserve(scratch_floats(m, T, size_t(s->n_ctx)))) return KERF_ERR_MEMORY;
    s->cap_tokens = T;
  }
  s->tokens.assign(tokens, tokens + n);
  for (const OpInfo& op : m->ops) run_op(s, op, int64_t(T), s->pos);
  s->pos += n;
  if (logits) {
    const size_t V = size_t(m->vocab);
    const float* src = s->vals[m->output_value].p;
    if (all_logits) std::memcpy(logits, src, T * V * sizeof(float));
    else std::memcpy(logits, src + (T - 1) * V, V * sizeof(float));
  }
  return KERF_OK;
}

}  // extern "C"
