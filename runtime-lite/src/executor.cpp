// Executor: sessions (KV caches, activation buffers, worker threads) and the interpreter of the
// program's ops. The fast path runs the kernels of kernels.h / qkernels.h in parallel regions of the
// session's thread pool; the reference path (set_reference_kernels, for tests) runs the scalar
// reference kernels on one thread.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <cstring>
#include <new>

#include "kernels.h"
#include "model.h"
#include "qkernels.h"

using kerf::fmt::OpCode;
namespace fmt = kerf::fmt;
using kerf::rt::AlignedBuf;
using kerf::rt::OpInfo;
using kerf::rt::OpPlan;

namespace kerf::rt {

struct MatPlan {
  WeightView w;
  TiledView tv;        ///< valid when tiled
  bool tiled = false;  ///< kTiled layout: int8 activations and QKernels::gemm
  int64_t grain = 16;  ///< a thread's rows are a multiple of this (R when tiled)
};

struct OpPlan {
  MatPlan mat[3];               ///< Embedding: table; Linear: weight; GatedFFN: w1, w3, w2
  const float* norm = nullptr;  ///< RMSNorm: f32 weight (in the mapping or kerf_session::norm_copies)
  int rope = -1;                ///< Rotary: index into kerf_session::rope
  bool last_only = false;       ///< when only the last row of the program output is wanted, only the
                                ///< last row of this op's output is read (mark_last_only)
  int group = 1;                ///< Linear: ops this one runs (itself and the next group - 1); 0: run
                                ///< by an earlier op (group_linears)
};

AlignedBuf& AlignedBuf::operator=(AlignedBuf&& o) noexcept {
  if (this != &o) {
    std::free(p);
    p = o.p;
    bytes = o.bytes;
    o.p = nullptr;
    o.bytes = 0;
  }
  return *this;
}
AlignedBuf::~AlignedBuf() { std::free(p); }
bool AlignedBuf::reserve(size_t n) {
  if (n <= bytes && p) return true;
  std::free(p);
  p = nullptr;
  bytes = 0;
  const size_t rounded = (std::max<size_t>(n, 1) + 63) / 64 * 64;
  if (rounded < n || posix_memalign(&p, 64, rounded) != 0) {
    p = nullptr;
    return false;
  }
  bytes = rounded;
  return true;
}

void set_value_observer(kerf_session* s, ValueObserver fn, void* ctx) {
  if (!s) return;
  s->observer = fn;
  s->observer_ctx = ctx;
}

bool set_reference_kernels(kerf_session* s, bool on) {
  if (!s || (on && s->kv_f16)) return false;
  s->reference = on;
  s->cap_tokens = 0;  // the reference path sizes its own scratch
  s->pos = 0;         // and lays out its KV cache position-major
  return true;
}

}  // namespace kerf::rt

namespace {

using namespace kerf::rt;

/// An op below this many multiply-adds (or elements, for the per-token ops) runs on the calling
/// thread: a parallel region costs ~1-2 us of dispatch and join when the workers are spinning, about
/// the time one core needs for 64K multiply-adds of a quantized matrix.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/// Most Linear ops one group runs (q, k, v: 3).
constexpr int kMaxGroup = 4;

// ---------------------------------------------------------------- plan

/// The unit op runs on in phase ph (0 decode, 1 prefill) in session s.
fmt::Backend unit_of(const kerf_session* s, const OpInfo& op, int ph) {
  return s->cpu_only ? fmt::Backend::kCpu : op.unit[ph];
}
/// Runs on the CPU in both phases (may take part in the CPU-only plan optimizations).
bool on_cpu(const kerf_session* s, const OpInfo& op) {
  return unit_of(s, op, 0) == fmt::Backend::kCpu && unit_of(s, op, 1) == fmt::Backend::kCpu;
}

MatPlan mat_plan(const TensorInfo& t) {
  MatPlan mp;
  mp.w = t.view();
  mp.tiled = tiled_view(mp.w, &mp.tv);
  if (mp.tiled) mp.grain = int64_t(mp.tv.L.R);
  return mp;
}

/// Weights, norm weights and RoPE tables of op i; the per-token scratch sizes.
int resolve_op(kerf_session* s, size_t i) {
  const kerf_model* m = s->model;
  const OpInfo& op = m->ops[i];
  OpPlan& p = s->plan[i];
  int nmat = 0;
  for (uint32_t ref : op.inputs) {
    if (!(ref & fmt::kRefTensorBit)) continue;
    const TensorInfo& t = m->tensors[ref & ~fmt::kRefTensorBit];
    if (op.op == OpCode::kRMSNorm) {
      if (t.dtype == fmt::DType::kF32) {
        p.norm = reinterpret_cast<const float*>(t.data);  // payloads are 64-byte aligned in the mapping
      } else {
        s->norm_copies.emplace_back();
        FloatBuf& c = s->norm_copies.back();
        if (!c.reserve(size_t(t.shape[0]))) return KERF_ERR_MEMORY;
        dequant_row(t.view(), 0, c.p);
        p.norm = c.p;
      }
      continue;
    }
    MatPlan& mp = p.mat[nmat++];
    mp = mat_plan(t);
    s->max_cols = std::max(s->max_cols, mp.w.cols);
    if (mp.tiled) s->max_kb = std::max(s->max_kb, int64_t(mp.tv.L.KB));
    if (op.op == OpCode::kGatedFFN && nmat == 1) s->max_ffn = std::max(s->max_ffn, mp.w.rows);
  }
  if (op.op == OpCode::kRotary) {
    auto it = std::find_if(s->rope.begin(), s->rope.end(),
                           [&](const RopeTable& r) { return r.head_dim == op.head_dim && r.theta == op.theta; });
    if (it == s->rope.end()) {
      s->rope.emplace_back();
      RopeTable& r = s->rope.back();
      r.head_dim = op.head_dim;
      r.theta = op.theta;
      if (!r.table.reserve(size_t(s->n_ctx) * size_t(op.head_dim) * sizeof(float))) return KERF_ERR_MEMORY;
      it = s->rope.end() - 1;
    }
    p.rope = int(it - s->rope.begin());
  }
  return KERF_OK;
}

/// Rows needed, last op first: an op is last-only when no later op needs all rows of its output;
/// then it needs only the last row of its inputs, except Attention's k and v, which the KV cache
/// keeps for every position.
void mark_last_only(kerf_session* s) {
  const kerf_model* m = s->model;
  std::vector<char> need_all(m->values.size(), 0);
  for (size_t i = m->ops.size(); i-- > 0;) {
    const OpInfo& op = m->ops[i];
    const bool lo = !need_all[op.output] && on_cpu(s, op);  // a device computes every row
    s->plan[i].last_only = lo;
    for (size_t k = 0; k < op.inputs.size(); ++k)
      if (!(op.inputs[k] & fmt::kRefTensorBit) && (!lo || (op.op == OpCode::kAttention && k > 0)))
        need_all[op.inputs[k]] = 1;
  }
}

/// Consecutive Linear ops reading the same value (q, k, v) run as one group: one quantization of
/// the input, one parallel region. The first op of a group gets group = its size, the others 0.
void group_linears(kerf_session* s) {
  const kerf_model* m = s->model;
  for (size_t i = 0; i < m->ops.size();) {
    size_t j = i + 1;
    if (m->ops[i].op == OpCode::kLinear && on_cpu(s, m->ops[i]))
      while (j < m->ops.size() && j - i < size_t(kMaxGroup) && m->ops[j].op == OpCode::kLinear &&
             m->ops[j].inputs[0] == m->ops[i].inputs[0] && s->plan[j].last_only == s->plan[i].last_only &&
             on_cpu(s, m->ops[j]))
        s->plan[j++].group = 0;
    s->plan[i].group = int(j - i);
    i = j;
  }
}

/// Activation buffers: the outputs of an op (of a group) take free slots (the smallest wide enough,
/// else the widest, grown), then the slots of the values read for the last time are freed. So an
/// output never shares a buffer with an input, and the program output is never freed.
void assign_slots(kerf_session* s) {
  const kerf_model* m = s->model;
  const size_t nv = m->values.size();
  std::vector<size_t> last_use(nv, 0);  // the first op of the group that reads it last
  for (size_t i = 0, lead = 0; i < m->ops.size(); ++i) {
    if (s->plan[i].group > 0) lead = i;
    for (uint32_t ref : m->ops[i].inputs)
      if (!(ref & fmt::kRefTensorBit)) last_use[ref] = lead;
  }
  s->slot_of.assign(nv, -1);
  s->slot_width.clear();
  std::vector<int> free_slots;
  auto take = [&](int64_t w) {
    auto better = [&](int f, int b) {  // is free slot f a better home than b?
      const int64_t wf = s->slot_width[size_t(f)], wb = s->slot_width[size_t(b)];
      if ((wf >= w) != (wb >= w)) return wf >= w;
      return wf >= w ? wf < wb : wf > wb;
    };
    int best = -1;
    for (int f : free_slots)
      if (best < 0 || better(f, best)) best = f;
    if (best < 0) {
      best = int(s->slot_width.size());
      s->slot_width.push_back(0);
    } else {
      free_slots.erase(std::find(free_slots.begin(), free_slots.end(), best));
    }
    s->slot_width[size_t(best)] = std::max(s->slot_width[size_t(best)], w);
    return best;
  };
  auto release = [&](uint32_t v) {
    const int sl = s->slot_of[v];
    if (v != m->output_value && sl >= 0 && std::find(free_slots.begin(), free_slots.end(), sl) == free_slots.end())
      free_slots.push_back(sl);
  };
  for (size_t i = 0; i < m->ops.size(); ++i) {
    const size_t g = size_t(s->plan[i].group);
    for (size_t k = i; k < i + g; ++k) s->slot_of[m->ops[k].output] = take(m->values[m->ops[k].output].width);
    for (size_t k = i; k < i + g; ++k) {
      for (uint32_t ref : m->ops[k].inputs)
        if (!(ref & fmt::kRefTensorBit) && last_use[ref] == i) release(ref);
      if (last_use[m->ops[k].output] <= i) release(m->ops[k].output);  // never read
    }
  }
  s->slots.resize(s->slot_width.size());
  s->vals.assign(nv, nullptr);
}

int build_plan(kerf_session* s) {
  s->plan.assign(s->model->ops.size(), OpPlan{});
  for (size_t i = 0; i < s->plan.size(); ++i)
    if (const int rc = resolve_op(s, i); rc != KERF_OK) return rc;
  mark_last_only(s);
  group_linears(s);
  assign_slots(s);
  s->thread_floats = size_t(round16(s->max_cols) + round16(s->n_ctx));
  return KERF_OK;
}

/// KV caches of `kv_f16` elements into k, v (one pair per Attention op).
bool alloc_kv(const kerf_model* m, int n_ctx, bool kv_f16, std::vector<AlignedBuf>* k, std::vector<AlignedBuf>* v) {
  k->clear();
  v->clear();
  k->resize(size_t(m->n_attention));
  v->resize(size_t(m->n_attention));
  for (const OpInfo& op : m->ops) {
    if (op.op != OpCode::kAttention) continue;
    const size_t n = size_t(n_ctx) * size_t(op.n_kv_heads * op.head_dim) * (kv_f16 ? 2 : 4);
    // Not zeroed (pages stay untouched until used): attention reads only positions kv_store wrote.
    if (!(*k)[size_t(op.kv_slot)].reserve(n) || !(*v)[size_t(op.kv_slot)].reserve(n)) return false;
  }
  return true;
}

// ---------------------------------------------------------------- fast path

struct Exec {
  kerf_session* s;
  int64_t T, pos0;
  bool last;  ///< only the last row of the program output is wanted

  float* row_buf(int tid) const { return s->per_thread.as<float>() + size_t(tid) * s->thread_floats; }
  float* scores(int tid) const { return row_buf(tid) + round16(s->max_cols); }

  /// f(begin, end, tid) over [0, n) on the session's threads when `work` is worth a region.
  template <class F>
  void par(int64_t n, int64_t grain, int64_t work, const F& f) const {
    if (work < kMinParallelWork || s->pool.size() == 1) f(int64_t(0), n, 0);
    else s->pool.parallel_for(n, grain, f);
  }

  /// x: [T, K] as int8 blocks in the session's buffer (tokens split across threads when large).
  QActs quantize(const float* x, int64_t T, int64_t K) const {
    QActs a;
    a.T = T;
    a.KB = (K + 31) / 32;
    const size_t nb = size_t(T * a.KB), qbytes = (nb * 32 + 63) / 64 * 64, dbytes = (nb * 4 + 63) / 64 * 64;
    uint8_t* base = s->qacts.as<uint8_t>();
    a.q = reinterpret_cast<int8_t*>(base);
    a.d = reinterpret_cast<float*>(base + qbytes);
    a.sum = reinterpret_cast<int32_t*>(base + qbytes + dbytes);
    const QKernels* qk = s->model->qk;
    par(T, 1, T * K, [&](int64_t b, int64_t e, int) {
      QActs sub{e - b, a.KB, a.q + b * a.KB * 32, a.d + b * a.KB, a.sum + b * a.KB};
      qk->quantize_acts(x + b * K, e - b, K, &sub);
    });
    return a;
  }

  /// Rows [r0, r1) of y = W x (r0 a multiple of mp.grain): gemm over the row tiles, or plain rows.
  void mat_rows(const MatPlan& mp, const float* x, const QActs& a, int64_t T, int64_t r0, int64_t r1, float* y,
                int tid) const {
    if (mp.tiled) {
      const int64_t R = mp.grain;
      s->model->qk->gemm(mp.tv, a, r0 / R, (r1 + R - 1) / R, y, mp.w.rows);
    } else {
      linear_rows(mp.w, x, T, r0, r1, y, mp.w.rows, row_buf(tid));
    }
  }

  /// ys[k] = W_k x for the n <= kMaxGroup matrices (one input x: [T, K], quantized once), in one
  /// region over their concatenated row units (tiles; 16-row blocks of plain matrices).
  void linears(const MatPlan* const* mats, float* const* ys, int n, const float* x, int64_t T) const {
    int64_t start[kMaxGroup + 1] = {0}, macs = 0;
    bool tiled = false;
    for (int k = 0; k < n; ++k) {
      const MatPlan& mp = *mats[k];
      start[k + 1] = start[k] + (mp.w.rows + mp.grain - 1) / mp.grain;
      macs += T * mp.w.rows * mp.w.cols;
      tiled = tiled || mp.tiled;
    }
    const QActs a = tiled ? quantize(x, T, mats[0]->w.cols) : QActs{};
    par(start[n], 1, macs, [&](int64_t b, int64_t e, int tid) {
      for (int k = 0; k < n; ++k) {
        const MatPlan& mp = *mats[k];
        const int64_t u0 = std::max(b, start[k]) - start[k], u1 = std::min(e, start[k + 1]) - start[k];
        if (u0 < u1) mat_rows(mp, x, a, T, u0 * mp.grain, std::min(u1 * mp.grain, mp.w.rows), ys[k], tid);
      }
    });
  }

  void run(size_t i) const {
    const kerf_model* m = s->model;
    const OpInfo& op = m->ops[i];
    const OpPlan& p = s->plan[i];
    if (p.group == 0) return;  // run by its group's first op
    const bool lo = last && p.last_only;
    const int64_t r0 = lo ? T - 1 : 0, n = T - r0;  // rows computed: [r0, T)
    auto width = [&](size_t k) -> int64_t { return m->values[op.inputs[k]].width; };
    const int64_t out_w = m->values[op.output].width;
    auto in = [&](size_t k) -> const float* { return s->vals[op.inputs[k]] + r0 * width(k); };
    float* out = s->vals[op.output] + r0 * out_w;
    switch (op.op) {
      case OpCode::kEmbedding: {
        const MatPlan& mp = p.mat[0];
        for (int64_t t = r0; t < T; ++t, out += out_w) {
          if (mp.tiled) dequant_row_tiled(mp.tv, s->tokens[size_t(t)], out);
          else dequant_row_fast(mp.w, s->tokens[size_t(t)], out);
        }
        break;
      }
      case OpCode::kRMSNorm: {
        const float* x = in(0);
        par(n, 1, n * out_w, [&](int64_t b, int64_t e, int) {
          rmsnorm_fast(x + b * out_w, p.norm, e - b, out_w, op.eps, out + b * out_w);
        });
        break;
      }
      case OpCode::kLinear: {
        const MatPlan* mats[kMaxGroup];
        float* ys[kMaxGroup];
        for (int k = 0; k < p.group; ++k) {
          mats[k] = &s->plan[i + size_t(k)].mat[0];
          ys[k] = s->vals[m->ops[i + size_t(k)].output] + r0 * mats[k]->w.rows;
        }
        linears(mats, ys, p.group, in(0), n);
        break;
      }
      case OpCode::kRotary: {
        const float* x = in(0);
        const float* table = s->rope[size_t(p.rope)].table.as<float>();
        par(n, 1, n * out_w, [&](int64_t b, int64_t e, int) {
          rotary_fast(x + b * out_w, out + b * out_w, e - b, out_w, op.head_dim, op.interleaved != 0, pos0 + r0 + b,
                      table);
        });
        break;
      }
      case OpCode::kAttention: {
        const AttnShape sh{op.n_heads, op.n_kv_heads, op.head_dim, op.scale, op.causal != 0};
        const KVView kv{s->kcache[size_t(op.kv_slot)].p, s->vcache[size_t(op.kv_slot)].p, s->kv_f16, op.n_kv_heads,
                        op.head_dim, s->n_ctx};
        kv_store(kv, s->vals[op.inputs[1]], s->vals[op.inputs[2]], T, pos0);  // every row: the cache keeps them
        const float* q = in(0);
        const int64_t n_kv = pos0 + T, items = op.n_heads * n;
        par(items, 1, 2 * items * n_kv * op.head_dim, [&](int64_t b, int64_t e, int tid) {  // q.k and p.v
          attention_fast(sh, q, n, pos0 + r0, n_kv, kv, b, e, out, scores(tid));
        });
        break;
      }
      case OpCode::kGatedFFN: {
        const MatPlan &w1 = p.mat[0], &w3 = p.mat[1], &w2 = p.mat[2];
        const int64_t F = w1.w.rows, D = w1.w.cols;
        float* h1 = s->hidden.as<float>();
        float* h3 = h1 + n * F;
        const float* x = in(0);
        const QActs a = w1.tiled || w3.tiled ? quantize(x, n, D) : QActs{};
        // w1 and w3 rows, then the gate on the same columns, in one region.
        par(F, std::max(w1.grain, w3.grain), 2 * n * F * D, [&](int64_t b, int64_t e, int tid) {
          mat_rows(w1, x, a, n, b, e, h1, tid);
          mat_rows(w3, x, a, n, b, e, h3, tid);
          for (int64_t t = 0; t < n; ++t) silu_mul_fast(h1 + t * F + b, h3 + t * F + b, e - b);
        });
        const MatPlan* w2p = &w2;
        linears(&w2p, &out, 1, h1, n);
        break;
      }
      case OpCode::kAdd: {
        const float *a = in(0), *b2 = in(1);
        par(n, 1, n * out_w, [&](int64_t b, int64_t e, int) {
          add(a + b * out_w, b2 + b * out_w, out + b * out_w, (e - b) * out_w);
        });
        break;
      }
    }
  }
};

// ---------------------------------------------------------------- reference path

/// Scratch floats the reference path needs for T tokens.
size_t reference_scratch_floats(const kerf_model* m, size_t T, size_t n_ctx) {
  size_t need = n_ctx;  // attention scores
  for (const OpInfo& op : m->ops) {
    const auto& w = [&](size_t k) -> const TensorInfo& { return m->tensors[op.inputs[k] & ~fmt::kRefTensorBit]; };
    switch (op.op) {
      case OpCode::kLinear: need = std::max<size_t>(need, size_t(w(1).shape[1])); break;
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

void run_reference(kerf_session* s, const OpInfo& op, const OpPlan& p, int64_t T, int64_t pos0) {
  const kerf_model* m = s->model;
  auto val = [&](size_t k) -> float* { return s->vals[op.inputs[k]]; };
  float* out = s->vals[op.output];
  const int64_t out_w = m->values[op.output].width;
  float* scratch = s->scratch.p;
  switch (op.op) {
    case OpCode::kEmbedding: embedding(p.mat[0].w, s->tokens.data(), T, out); break;
    case OpCode::kRMSNorm: rmsnorm(val(0), p.norm, T, out_w, op.eps, out); break;
    case OpCode::kLinear: linear(p.mat[0].w, val(0), T, out, scratch); break;
    case OpCode::kRotary:
      std::memcpy(out, val(0), size_t(T * out_w) * sizeof(float));
      rotary(out, T, out_w, op.head_dim, op.theta, op.interleaved != 0, pos0);
      break;
    case OpCode::kAttention: {
      const AttnShape sh{op.n_heads, op.n_kv_heads, op.head_dim, op.scale, op.causal != 0};
      attention(sh, val(0), val(1), val(2), T, pos0, s->kcache[size_t(op.kv_slot)].as<float>(),
                s->vcache[size_t(op.kv_slot)].as<float>(), out, scratch);
      break;
    }
    case OpCode::kGatedFFN: {
      const int64_t F = p.mat[0].w.rows;
      float *h1 = scratch, *h3 = scratch + T * F, *row = scratch + 2 * T * F;
      linear(p.mat[0].w, val(0), T, h1, row);
      linear(p.mat[1].w, val(0), T, h3, row);
      if (s->observer) {
        s->observer(s->observer_ctx, size_t(op.index), 0, h1, T, F);
        s->observer(s->observer_ctx, size_t(op.index), 1, h3, T, F);
      }
      silu_mul(h1, h3, T * F);
      if (s->observer) s->observer(s->observer_ctx, size_t(op.index), 2, h1, T, F);
      linear(p.mat[2].w, h1, T, out, row);
      break;
    }
    case OpCode::kAdd: add(val(0), val(1), out, T * out_w); break;
  }
  if (s->observer) s->observer(s->observer_ctx, size_t(op.index), -1, out, T, out_w);
}

using Clock = std::chrono::steady_clock;
uint64_t ns_since(Clock::time_point t0) {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

/// Whether an asynchronous unit u would let some CPU op run while an op of u is pending: replays the
/// executor's residency rule over both phases' placements. A transfer to or from u waits for u's
/// queue, so only a CPU op whose inputs are already on the CPU while u still computes overlaps.
bool can_overlap(const kerf_session* s, fmt::Backend u) {
  const kerf_model* m = s->model;
  for (int ph = 0; ph < 2; ++ph) {
    std::vector<uint8_t> where(m->values.size(), 0);
    bool pending = false;
    const uint8_t ubit = uint8_t(1u << uint32_t(u));
    for (const OpInfo& op : m->ops) {
      const fmt::Backend x = unit_of(s, op, ph);
      for (uint32_t ref : op.inputs) {
        if ((ref & fmt::kRefTensorBit) || ref == m->input_value) continue;
        const uint8_t want = uint8_t(1u << uint32_t(x));
        if (where[ref] & want) continue;
        if (!(where[ref] & 1u) && (where[ref] & ubit)) pending = false;  // download from u waits
        where[ref] |= 1u;
        if (x == u) pending = false;  // upload to u waits
        where[ref] |= want;
      }
      if (x == fmt::Backend::kCpu && pending) return true;
      if (x == u) pending = true;
      where[op.output] = uint8_t(1u << uint32_t(x));
    }
  }
  return false;
}

/// Makes value v valid on unit u (backend.h residency): a download to the CPU from the unit that
/// holds it, then an upload when u is a device.
int make_resident(kerf_session* s, uint32_t v, fmt::Backend u, int64_t T) {
  const uint8_t bit = uint8_t(1u << uint32_t(u));
  if (s->where[v] & bit) return KERF_OK;
  if (!(s->where[v] & 1u)) {
    uint32_t holder = 1;
    while (holder < fmt::kBackendCount && !(s->where[v] & (1u << holder))) ++holder;
    if (holder == fmt::kBackendCount || !s->dev[holder]) {
      s->last_error = "value " + std::to_string(v) + " '" + std::string(s->model->values[v].name) + "' is read before it is written";
      return KERF_ERR_ARGUMENT;
    }
    std::string why;
    if (const int rc = s->dev[holder]->download(v, s->vals[v], T, &why); rc != KERF_OK) {
      s->last_error = std::string(fmt::backend_name(fmt::Backend(holder))) + ": download of value '" +
                      std::string(s->model->values[v].name) + "': " + why;
      return rc;
    }
    s->where[v] |= 1u;
  }
  if (u != fmt::Backend::kCpu) {
    std::string why;
    if (const int rc = s->dev[uint32_t(u)]->upload(v, s->vals[v], T, &why); rc != KERF_OK) {
      s->last_error = std::string(fmt::backend_name(u)) + ": upload of value '" + std::string(s->model->values[v].name) +
                      "': " + why;
      return rc;
    }
    s->where[v] |= bit;
  }
  return KERF_OK;
}

/// Rows [pos0, pos0 + T) of the CPU's KV cache of Attention op `op` to / from f32 [T, G*Dh] (the
/// fast path keeps it head-major [G][n_ctx][Dh], f32 or f16; the reference path position-major f32).
void cpu_kv_rows(kerf_session* s, const OpInfo& op, int64_t pos0, int64_t T, float* k, float* v, bool write) {
  const int64_t Dh = op.head_dim, G = op.n_kv_heads, kvw = G * Dh;
  void* kc = s->kcache[size_t(op.kv_slot)].p;
  void* vc = s->vcache[size_t(op.kv_slot)].p;
  if (s->reference) {
    float* kf = static_cast<float*>(kc) + pos0 * kvw;
    float* vf = static_cast<float*>(vc) + pos0 * kvw;
    if (write) {
      std::memcpy(kf, k, size_t(T * kvw) * sizeof(float));
      std::memcpy(vf, v, size_t(T * kvw) * sizeof(float));
    } else {
      std::memcpy(k, kf, size_t(T * kvw) * sizeof(float));
      std::memcpy(v, vf, size_t(T * kvw) * sizeof(float));
    }
    return;
  }
  const KVView kv{kc, vc, s->kv_f16, G, Dh, s->n_ctx};
  if (write) {
    kv_store(kv, k, v, T, pos0);
    return;
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t at = (g * s->n_ctx + pos0 + t) * Dh, to = t * kvw + g * Dh;
      for (int64_t d = 0; d < Dh; ++d) {
        k[to + d] = s->kv_f16 ? fmt::f16_to_f32(static_cast<const uint16_t*>(kc)[at + d]) : static_cast<const float*>(kc)[at + d];
        v[to + d] = s->kv_f16 ? fmt::f16_to_f32(static_cast<const uint16_t*>(vc)[at + d]) : static_cast<const float*>(vc)[at + d];
      }
    }
}

/// KV-cache handoff (backend.h): an Attention op whose prefill and decode units differ has a cache
/// on each. Before an evaluation runs it on unit u, the rows [valid_u, pos0) that the other unit
/// appended since u last ran are copied over (lazily: a run of decode steps reaches the prefill
/// unit in one copy, at the next prefill, if there is one); afterwards u holds [0, pos0 + T).
int sync_kv(kerf_session* s, int64_t T, int64_t pos0, int ph) {
  const kerf_model* m = s->model;
  s->kv_valid.resize(size_t(m->n_attention));
  for (const OpInfo& op : m->ops) {
    if (op.op != OpCode::kAttention) continue;
    const fmt::Backend to = unit_of(s, op, ph), from = unit_of(s, op, 1 - ph);
    if (from == to) continue;
    int64_t* valid = s->kv_valid[size_t(op.kv_slot)].data();
    for (uint32_t u = 0; u < fmt::kBackendCount; ++u) valid[u] = std::min(valid[u], pos0);  // a reset rewinds
    const int64_t r0 = valid[uint32_t(to)], rows = pos0 - r0;
    if (rows > 0) {
      const size_t n = size_t(rows * op.n_kv_heads * op.head_dim);
      FloatBuf buf;
      if (!buf.reserve(2 * n)) {
        s->last_error = "out of memory for the KV-cache handoff of '" + std::string(op.name) + "'";
        return KERF_ERR_MEMORY;
      }
      float *k = buf.p, *v = buf.p + n;
      std::string why;
      const auto t0 = Clock::now();
      int rc = from == fmt::Backend::kCpu ? (cpu_kv_rows(s, op, r0, rows, k, v, false), KERF_OK)
                                          : s->dev[uint32_t(from)]->kv_rows(op.index, r0, rows, k, v, false, &why);
      if (rc == KERF_OK)
        rc = to == fmt::Backend::kCpu ? (cpu_kv_rows(s, op, r0, rows, k, v, true), KERF_OK)
                                      : s->dev[uint32_t(to)]->kv_rows(op.index, r0, rows, k, v, true, &why);
      if (rc != KERF_OK) {
        s->last_error = "KV-cache handoff of '" + std::string(op.name) + "' from the " + fmt::backend_name(from) +
                        " to the " + fmt::backend_name(to) + ": " + why;
        return rc;
      }
      s->cpu_stats.transfer_ns += ns_since(t0);
    }
    valid[uint32_t(to)] = pos0 + T;
  }
  return KERF_OK;
}

/// Runs every op of the program on its unit (prefill placement when T > 1), moving values between
/// units as backend.h describes; the program output ends on the CPU.
int run_program(kerf_session* s, const Exec& e, int64_t T, int64_t pos0) {
  const kerf_model* m = s->model;
  const int ph = T > 1 ? 1 : 0;
  std::fill(s->where.begin(), s->where.end(), uint8_t(0));
  if (const int rc = sync_kv(s, T, pos0, ph); rc != KERF_OK) return rc;
  for (size_t i = 0; i < m->ops.size(); ++i) {
    const OpInfo& op = m->ops[i];
    const fmt::Backend u = unit_of(s, op, ph);
    for (uint32_t ref : op.inputs)
      if (!(ref & fmt::kRefTensorBit) && ref != m->input_value)
        if (const int rc = make_resident(s, ref, u, T); rc != KERF_OK) return rc;
    if (u == fmt::Backend::kCpu) {
      const OpPlan& p = s->plan[i];
      const auto t0 = Clock::now();
      if (s->reference) run_reference(s, op, p, T, pos0);
      else e.run(i);
      s->cpu_stats.run_ns += ns_since(t0);
      s->cpu_stats.ops += 1;
      s->where[op.output] = 1u;
      if (!s->reference)  // a group's other ops ran with its first op
        for (size_t k = 1; k < size_t(p.group); ++k) s->where[m->ops[i + k].output] = 1u;
    } else {
      std::string why;
      if (const int rc = s->dev[uint32_t(u)]->run(i, T, pos0, &why); rc != KERF_OK) {
        s->last_error = std::string(fmt::backend_name(u)) + ": op #" + std::to_string(i) + " '" + std::string(op.name) +
                        "' (" + fmt::op_name(op.op) + "): " + why;
        return rc;
      }
      s->where[op.output] = uint8_t(1u << uint32_t(u));
    }
  }
  return make_resident(s, m->output_value, fmt::Backend::kCpu, T);
}

}  // namespace

extern "C" {

int kerf_session_create_ex(const kerf_model* m, int n_ctx, uint32_t flags, kerf_session** out, char* err,
                           size_t err_size) {
  std::string msg;
  auto fail = [&](int rc, std::string what) {
    if (err && err_size) std::snprintf(err, err_size, "%s", what.c_str());
    return rc;
  };
  if (!out) return fail(KERF_ERR_ARGUMENT, "out is NULL");
  *out = nullptr;
  if (!m) return fail(KERF_ERR_ARGUMENT, "model is NULL");
  if (n_ctx < 0 || n_ctx > m->max_seq_len)
    return fail(KERF_ERR_ARGUMENT, "n_ctx " + std::to_string(n_ctx) + " outside [0, " + std::to_string(m->max_seq_len) + "]");
  if (flags & ~uint32_t(KERF_SESSION_CPU_ONLY)) return fail(KERF_ERR_ARGUMENT, "unknown session flags");
  if (n_ctx == 0) n_ctx = m->max_seq_len;
  kerf_session* s = new (std::nothrow) kerf_session;
  if (!s) return fail(KERF_ERR_MEMORY, "out of memory");
  s->model = m;
  s->n_ctx = n_ctx;
  s->cpu_only = (flags & KERF_SESSION_CPU_ONLY) != 0;
  int rc = build_plan(s);
  if (rc == KERF_OK && (!alloc_kv(m, n_ctx, false, &s->kcache, &s->vcache) ||
                        !s->per_thread.reserve(s->thread_floats * sizeof(float))))
    rc = KERF_ERR_MEMORY;
  if (rc != KERF_OK) msg = "out of memory";
  // Device backends for the units the placement uses (never a silent fallback: a unit that cannot
  // run its ops fails the session).
  for (uint32_t u = 1; rc == KERF_OK && !s->cpu_only && u < fmt::kBackendCount; ++u) {
    if (!(m->units_used & (1u << u))) continue;
    const char* uname = fmt::backend_name(fmt::Backend(u));
    std::string why;
    if (u == uint32_t(fmt::Backend::kGpu)) s->dev[u] = make_gpu_backend(&why);  // asynchronous itself
    else if (can_overlap(s, fmt::Backend(u)) && !std::getenv("KERF_SYNC_UNITS")) s->dev[u] = make_async(make_npu_backend(&why));
    else s->dev[u] = make_npu_backend(&why);  // nothing could run meanwhile: a queue would only add latency
    if (!s->dev[u]) {
      rc = KERF_ERR_UNSUPPORTED;
      for (const OpInfo& op : m->ops)
        if (op.unit[0] == fmt::Backend(u) || op.unit[1] == fmt::Backend(u)) {
          msg = m->path + ": op #" + std::to_string(op.index) + " '" + std::string(op.name) + "' (" +
                fmt::op_name(op.op) + ") is placed on the " + uname + ", which this runtime cannot use: " + why;
          break;
        }
      break;
    }
    std::vector<uint8_t> mask(m->ops.size(), 0);
    for (size_t i = 0; i < m->ops.size(); ++i)
      mask[i] = m->ops[i].unit[0] == fmt::Backend(u) || m->ops[i].unit[1] == fmt::Backend(u);
    rc = s->dev[u]->prepare(s, mask.data(), &why);
    if (rc != KERF_OK) msg = m->path + ": " + uname + " (" + s->dev[u]->device_name() + "): " + why;
  }
  if (rc != KERF_OK) {
    delete s;
    return fail(rc, msg);
  }
  s->where.assign(m->values.size(), 0);
  *out = s;
  return KERF_OK;
}

int kerf_session_create(const kerf_model* m, int n_ctx, kerf_session** out) {
  return kerf_session_create_ex(m, n_ctx, 0, out, nullptr, 0);
}

const char* kerf_session_last_error(const kerf_session* s) { return s ? s->last_error.c_str() : ""; }

const char* kerf_session_unit_device(const kerf_session* s, int unit) {
  if (!s || unit < 0 || unit >= int(fmt::kBackendCount)) return nullptr;
  if (unit == 0) return "cpu (runtime-lite)";
  return s->dev[unit] ? s->dev[unit]->device_name() : nullptr;
}

int kerf_session_unit_stats(const kerf_session* s, int unit, kerf_unit_stats* out) {
  if (!s || !out || unit < 0 || unit >= int(fmt::kBackendCount)) return KERF_ERR_ARGUMENT;
  if (unit != 0 && !s->dev[unit]) return KERF_ERR_ARGUMENT;
  const kerf::rt::UnitStats& u = unit == 0 ? s->cpu_stats : s->dev[unit]->stats;
  *out = kerf_unit_stats{u.ops, u.run_ns, u.busy_ns, u.uploads, u.upload_bytes, u.downloads, u.download_bytes, u.transfer_ns};
  return KERF_OK;
}

void kerf_session_reset_stats(kerf_session* s) {
  if (!s) return;
  s->cpu_stats = kerf::rt::UnitStats{};
  for (auto& d : s->dev)
    if (d) d->stats = kerf::rt::UnitStats{};
}

void kerf_session_free(kerf_session* s) { delete s; }

int kerf_session_set_threads(kerf_session* s, int n) {
  if (!s || n < 0 || n > 1024) return KERF_ERR_ARGUMENT;
  if (n == 0) {
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n = cpus < 1 ? 1 : cpus > 1024 ? 1024 : int(cpus);
  }
  if (n == s->pool.size()) return KERF_OK;
  const size_t bytes = size_t(n) * s->thread_floats * sizeof(float);
  if (bytes > s->per_thread.bytes) {
    AlignedBuf b;
    if (!b.reserve(bytes)) return KERF_ERR_MEMORY;  // the session keeps its threads
    s->pool.stop();
    s->per_thread = std::move(b);
  }
  return s->pool.start(n) ? KERF_OK : KERF_ERR_MEMORY;
}

int kerf_session_threads(const kerf_session* s) { return s ? s->pool.size() : 1; }

int kerf_session_set_kv_type(kerf_session* s, int type) {
  if (!s || (type != KERF_KV_F32 && type != KERF_KV_F16)) return KERF_ERR_ARGUMENT;
  std::vector<AlignedBuf> k, v;
  if (!alloc_kv(s->model, s->n_ctx, type == KERF_KV_F16, &k, &v)) return KERF_ERR_MEMORY;
  s->kcache.swap(k);
  s->vcache.swap(v);
  s->kv_f16 = type == KERF_KV_F16;
  if (s->kv_f16 && s->reference) kerf::rt::set_reference_kernels(s, false);  // the reference attention reads f32 caches
  s->pos = 0;
  return KERF_OK;
}

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
    s->cap_tokens = 0;  // until every buffer below holds T rows (a failed reserve leaves one empty)
    for (size_t i = 0; i < s->slots.size(); ++i)
      if (!s->slots[i].reserve(T * size_t(s->slot_width[i]))) return KERF_ERR_MEMORY;
    for (size_t v = 0; v < s->vals.size(); ++v)
      s->vals[v] = s->slot_of[v] >= 0 ? s->slots[size_t(s->slot_of[v])].p : nullptr;
    const bool ok = s->reference
                        ? s->scratch.reserve(reference_scratch_floats(m, T, size_t(s->n_ctx)))
                        : s->qacts.reserve(T * size_t(s->max_kb) * 40 + 128) &&
                              s->hidden.reserve(2 * T * size_t(s->max_ffn) * sizeof(float));
    if (!ok) return KERF_ERR_MEMORY;
    s->cap_tokens = T;
  }
  s->tokens.assign(tokens, tokens + n);
  const int64_t pos0 = s->pos;
  if (!s->reference)
    for (RopeTable& r : s->rope)
      if (r.filled < pos0 + n) {
        rope_table_fill(r.head_dim, r.theta, r.filled, pos0 + n, r.table.as<float>());
        r.filled = pos0 + n;
      }
  const Exec e{s, int64_t(T), pos0, !all_logits && T > 1};
  s->last_error.clear();
  if (const int rc = run_program(s, e, int64_t(T), pos0); rc != KERF_OK) return rc;
  s->pos += n;
  if (logits) {
    const size_t V = size_t(m->vocab);
    const float* src = s->vals[m->output_value];
    if (all_logits) std::memcpy(logits, src, T * V * sizeof(float));
    else std::memcpy(logits, src + (T - 1) * V, V * sizeof(float));
  }
  return KERF_OK;
}

}  // extern "C"
