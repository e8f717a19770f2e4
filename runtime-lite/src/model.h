// runtime-lite internals: the loaded model (a validated view of the mapped .kerf file) and the
// session state. Private header; no exceptions, no RTTI.
#pragma once

#include <cstddef>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "kerf/format.h"
#include "kerf/kerf.h"
#include "threadpool.h"

namespace kerf::rt {

/// A weight matrix (or vector, rows = 1) inside the mapping. Plain types are row-major [rows, cols];
/// quantized ones use the SPEC layouts with group size `group` (and, for the generic quantized
/// dtypes, the code bits / scale format in `flags`, fmt::qflags_*).
struct WeightView {
  fmt::DType dtype = fmt::DType::kF32;
  const uint8_t* data = nullptr;
  int64_t rows = 0, cols = 0;
  uint32_t group = 0;
  uint32_t flags = 0;  ///< TensorEntry.flags (validated by the loader: fmt::qflags_valid)
};

struct TensorInfo {
  std::string_view name;
  fmt::DType dtype = fmt::DType::kF32;
  uint32_t rank = 0;
  int64_t shape[fmt::kMaxRank] = {0, 0, 0, 0};
  uint32_t group_size = 0;
  uint32_t flags = 0;                       ///< TensorEntry.flags (generic quantized dtypes; else 0)
  uint64_t offset = 0, size = 0, hash = 0;  ///< offset relative to the data section
  const uint8_t* data = nullptr;            ///< into the mapping
  /// rank-2 -> [shape0, shape1]; rank-1 -> [1, shape0]
  WeightView view() const;
};

struct MetaInfo {
  std::string_view key;
  fmt::MetaType type = fmt::MetaType::kInt;
  int64_t i = 0;
  double f = 0.0;
  const char* data = nullptr;  ///< string / bytes payload in the mapping
  uint64_t size = 0;
};

/// One op with its attributes resolved (defaults applied) and shapes checked by the loader.
struct OpInfo {
  fmt::OpCode op = fmt::OpCode::kAdd;
  std::string_view name;
  uint32_t index = 0;
  std::vector<uint32_t> inputs;  ///< raw refs
  uint32_t output = 0;
  // attributes
  double eps = 1e-5, theta = 10000.0, scale = 0.0;
  int64_t head_dim = 0, n_heads = 0, n_kv_heads = 0, interleaved = 1, causal = 1, activation = 1;
  int kv_slot = -1;  ///< Attention: index of its KV cache in the session
  /// Compute unit: [0] decode (OpEntry.backend, T == 1), [1] prefill (metadata placement.prefill,
  /// T > 1; = [0] when absent). An Attention op on two units has a KV cache on each (backend.h).
  fmt::Backend unit[2] = {fmt::Backend::kCpu, fmt::Backend::kCpu};
};

struct ValueInfo {
  std::string_view name;
  uint32_t width = 0;
};

struct Tokenizer {
  bool present = false;
  int32_t max_token_length = 0;
  std::vector<std::string> pieces;  ///< NUL-terminated copies (std::string keeps a trailing NUL)
  std::vector<float> scores;
  std::unordered_map<std::string, int32_t> index;  ///< piece -> id (last one wins, like the python)
  int32_t bos = 1, eos = 2;
};

struct QKernels;  // qkernels.h (which includes this header)

}  // namespace kerf::rt

struct kerf_model {
  std::string path;
  const uint8_t* map = nullptr;
  size_t map_size = 0;
  bool owns_map = true;  ///< false for kerf_model_open_memory (the caller's buffer)
  kerf::fmt::FileHeader header{};
  std::vector<kerf::rt::MetaInfo> meta;
  std::vector<kerf::rt::TensorInfo> tensors;
  std::vector<kerf::rt::ValueInfo> values;
  std::vector<kerf::rt::OpInfo> ops;
  uint32_t input_value = 0, output_value = 0;
  int n_attention = 0;
  uint32_t units_used = 0;  ///< bit (1 << Backend) for every non-CPU unit some op is placed on
  int vocab = 0, max_seq_len = 0;
  kerf::rt::Tokenizer tok;
  std::string piece_buf;  ///< kerf_token_to_piece's per-model buffer (byte pieces)
  std::vector<std::string> meta_keys, tensor_names;  ///< NUL-terminated copies for introspection (filled by the loader)
  std::vector<std::string> tensor_precisions;        ///< fmt::describe_qtype of each tensor (filled by the loader)
  const kerf::rt::QKernels* qk = nullptr;            ///< integer kernels for tiled weights (kerf_model_open)

  const kerf::rt::MetaInfo* find_meta(std::string_view key) const;
};

namespace kerf::rt {

/// A float32 buffer from malloc (so allocation failure is a status, not an abort).
struct FloatBuf {
  float* p = nullptr;
  size_t n = 0;
  FloatBuf() = default;
  FloatBuf(const FloatBuf&) = delete;
  FloatBuf& operator=(const FloatBuf&) = delete;
  FloatBuf(FloatBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; o.n = 0; }
  ~FloatBuf();
  /// Ensures room for `count` floats (contents not kept); false on allocation failure.
  bool reserve(size_t count);
  /// Allocates `count` zeroed floats; false on failure.
  bool zeros(size_t count);
};

/// Loads and validates (loader.cpp). On failure returns a status and a message in *err.
int load_model(const char* path, uint32_t flags, kerf_model** out, std::string* err);
/// The same on a caller-owned buffer (64-byte aligned; borrowed until kerf_model_close).
int load_model_memory(const void* data, size_t size, uint32_t flags, const char* name, kerf_model** out,
                      std::string* err);
/// Parses the llama2.c tokenizer bytes (tokenizer.cpp).
bool parse_tokenizer(const uint8_t* data, uint64_t size, int vocab, Tokenizer* tok, std::string* err);

}  // namespace kerf::rt

namespace kerf::rt {

/// Heap bytes aligned to 64 (the int8 activations need it; cache lines for the rest). Allocation
/// failure is a status, not an abort.
struct AlignedBuf {
  void* p = nullptr;
  size_t bytes = 0;
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  AlignedBuf(AlignedBuf&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; o.bytes = 0; }
  AlignedBuf& operator=(AlignedBuf&& o) noexcept;
  ~AlignedBuf();
  /// Ensures room for `n` bytes (contents not kept when it grows); false on allocation failure.
  bool reserve(size_t n);
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

/// An op with its weights, norm weight and RoPE table resolved once per session (executor.cpp).
/// Only declared here: qkernels.h, which the plan needs, includes this header.
struct OpPlan;

/// cos / sin of one (head_dim, theta) for positions [0, filled) (rope_table_fill's layout).
struct RopeTable {
  int64_t head_dim = 0;
  double theta = 0;
  int64_t filled = 0;
  AlignedBuf table;  ///< n_ctx * head_dim floats
};

/// Runs `s` with the scalar reference kernels on one thread (tests compare the fast kernels with
/// them) and empties its KV cache. Returns false (nothing changed) when the session has an f16 KV
/// cache.
bool set_reference_kernels(kerf_session* s, bool on);

/// Calibration hook (the NPU's static activation scales, npu_calibrate): called on the reference path
/// only, after each op with which = -1 and its output [T, width]; for GatedFFN also before w2 with
/// which = 0 (h1 = w1 x), 1 (h3 = w3 x) and 2 (silu(h1) * h3), each [T, F].
using ValueObserver = void (*)(void* ctx, size_t op, int which, const float* data, int64_t T, int64_t width);
/// Installs (fn != nullptr) or removes the observer of `s`.
void set_value_observer(kerf_session* s, ValueObserver fn, void* ctx);

}  // namespace kerf::rt

struct kerf_session {
  const kerf_model* model = nullptr;
  int n_ctx = 0;
  int pos = 0;
  bool kv_f16 = false;                               ///< kerf_session_set_kv_type
  std::vector<kerf::rt::AlignedBuf> kcache, vcache;  ///< per Attention op: [n_ctx, G*Dh] f32 or f16
  std::vector<kerf::rt::FloatBuf> slots;           ///< activation buffers [T, slot_width]; values whose
                                                   ///< lifetimes do not overlap share one (build_plan)
  std::vector<int64_t> slot_width;
  std::vector<int> slot_of;                        ///< per value: its slot (-1: the token ids)
  std::vector<float*> vals;                        ///< per value: its slot's buffer
  size_t cap_tokens = 0;                           ///< T the value buffers and the scratch hold
  std::vector<int32_t> tokens;
  std::vector<kerf::rt::OpPlan> plan;              ///< per op of the program
  std::vector<kerf::rt::FloatBuf> norm_copies;     ///< f32 copies of non-f32 RMSNorm weights
  std::vector<kerf::rt::RopeTable> rope;
  kerf::rt::AlignedBuf qacts;                      ///< int8 activations of one op input: [T][KB*32] q, d, sum
  kerf::rt::AlignedBuf hidden;                     ///< GatedFFN: h1, h3 [T, F] each
  kerf::rt::AlignedBuf per_thread;                 ///< n_threads x thread_floats: row buffer, attention scores
  size_t thread_floats = 0;
  int64_t max_kb = 0, max_cols = 0, max_ffn = 0;   ///< sizes of the scratch above per token
  kerf::rt::ThreadPool pool;                       ///< kerf_session_set_threads
  bool reference = false;                          ///< kerf::rt::set_reference_kernels
  kerf::rt::FloatBuf scratch;                      ///< reference kernels' temporaries
  kerf::rt::ValueObserver observer = nullptr;       ///< set_value_observer (reference path only)
  void* observer_ctx = nullptr;
  // Heterogeneous execution (backend.h).
  std::unique_ptr<kerf::rt::DeviceBackend> dev[kerf::fmt::kBackendCount];  ///< [kGpu], [kNpu] when used
  bool cpu_only = false;                           ///< KERF_SESSION_CPU_ONLY: placement ignored
  std::vector<uint8_t> where;                      ///< per value: bit u set = valid on unit u (this eval)
  kerf::rt::UnitStats cpu_stats;                   ///< the CPU's ops and run time
  std::string last_error;                          ///< message of the last failed kerf_session_eval
  std::vector<std::array<int64_t, kerf::fmt::kBackendCount>> kv_valid;  ///< per Attention on two units:
                                                   ///< rows [0, n) each unit's KV cache holds (sync_kv)
};
