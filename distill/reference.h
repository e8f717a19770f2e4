// kerf reference executor: the kerf IR lowered to LibTorch (ATen), computed in float32.
//
// This is the numerical ground truth of the compiler side: calibration, pruning scores,
// distillation targets and the accuracy report all compare against it. It interprets a Graph
// node by node, in order, over ATen tensors:
//   * every float value (f32/f16/bf16/f64) is computed in float32; f16/bf16/f64 initializers and
//     Constant nodes are converted to float32 once, in create();
//   * every integer value (i64/i32/i8/u8) is int64; bool stays bool.
// It runs both graph forms of compiler/ir/ir.h:
//   * imported graphs: the ONNX default-domain ops the PyTorch exporter emits for a Llama
//     (opsets 13-21 semantics; a few older forms too): Constant, Shape, Gather, Unsqueeze,
//     Squeeze, Concat, Cast, Equal, Where, ConstantOfShape, Mul, Add, Sub, Div, Pow, Sqrt,
//     Reciprocal, ReduceMean, MatMul, Reshape, Transpose, Expand, Softmax, Sigmoid, Slice, Trilu,
//     Range, Neg, Identity (and the trivial Exp, Log, Tanh, Relu, Abs, Erf, Sin, Cos), and
//     QuantizeLinear / DequantizeLinear (per tensor or per axis, up to opset 21: the QDQ export of
//     formats/onnx/qdq_export.h; integer codes are int64 like every integer value);
//   * lifted graphs: the "kerf" domain ops (Embedding, RMSNorm, Linear, Rotary, Attention,
//     GatedFFN) exactly as ir.h's top comment defines them, plus the default-domain Add.
//     Each Attention node owns an implicit KV cache [B, G, P, Dh]; Rotary applies positions
//     P..P+T-1 where P is the number of tokens cached before the current run().
//
// Header is torch-free (pimpl): the CLI and other code include it without LibTorch headers.
// No exceptions cross this API: LibTorch errors are caught and returned as a Status naming the
// node (name and op type).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"

namespace kerf::distill {

struct ReferenceOptions {
  /// Intra-op threads for LibTorch (at::set_num_threads; process-wide, set again by each run()
  /// when it differs). 0 = hardware concurrency. LibTorch/OpenBLAS use libgomp here, whose
  /// threads spin while waiting: on a loaded machine with threads > 1, run the process with
  /// OMP_WAIT_POLICY=passive (read at process start) or it can be 10-30x slower.
  int threads = 0;
};

class ReferenceExecutor {
 public:
  /// Prepares `graph`: copies the nodes, names and value types it needs (the graph is not kept by
  /// reference), converts initializers and Constant nodes to ATen tensors once, resolves value
  /// names to slots and checks every node.
  /// Errors: Unsupported naming the op type and node for an op it cannot run (unknown op, unknown
  /// domain, unsupported Cast target); BadInput for a malformed graph (a node input that is not
  /// defined before use, a graph output never produced, a bad initializer).
  static Result<ReferenceExecutor> create(const ir::Graph& graph, const ReferenceOptions& opt = {});

  ReferenceExecutor(ReferenceExecutor&&) noexcept;
  ReferenceExecutor& operator=(ReferenceExecutor&&) noexcept;
  ReferenceExecutor(const ReferenceExecutor&) = delete;
  ReferenceExecutor& operator=(const ReferenceExecutor&) = delete;
  ~ReferenceExecutor();

  /// Generic run. `inputs` maps every graph input name to a tensor. Any float dtype is accepted
  /// for a float input (converted to f32), any integer dtype for an integer input (to i64); the
  /// declared dtype of the graph input only tells float from integer from bool. Static dims
  /// declared for an input are checked. Returns the graph outputs in graph order, float values as
  /// kF32 (whatever dtype the graph declares, e.g. f16 logits come back as f32), integer values as
  /// kI64, bool as kBool.
  /// Works for raw imported graphs (including the KV-cache export fed with explicit
  /// past_key_values.* tensors, also of past length 0 — the returned present.* tensors can be fed
  /// back as past) and for lifted graphs, where it APPENDS the new tokens to the implicit KV caches.
  /// On error the KV caches are left as they were before the call.
  /// Errors: InvalidArgument for a missing input (named), an input name the graph does not have,
  /// a dtype class or static-dim mismatch, or a batch size different from the cached one;
  /// BadInput naming the node (and op) where LibTorch rejected the computation.
  Result<std::vector<ir::Tensor>> run(const std::map<std::string, ir::Tensor>& inputs);

  /// Token-level convenience for language models whose first graph input holds token ids [B,T]
  /// and whose first graph output is the logits [B,T,V]. Runs `tokens` as batch 1 and returns the
  /// logits as float32 [T*V], row-major (row t = next-token logits after tokens[0..t]).
  /// Lifted graphs (with Attention nodes): appends to the KV caches, so 8 tokens then 1 token at a
  /// time equals one call with all tokens; call reset_cache() to start a new sequence.
  /// Raw graphs: each call is a fresh full-sequence forward. Extra graph inputs whose name starts
  /// with "past" (the KV-cache export's past_key_values.*) are fed as empty past tensors: shape
  /// from the declared type with batch (dim 0) = 1 and every dynamic dim = 0.
  /// Errors: InvalidArgument for empty `tokens`, other extra inputs, or logits not of rank 3;
  /// plus run()'s errors.
  Result<std::vector<float>> forward_tokens(const std::vector<int64_t>& tokens);

  /// Forgets every Attention node's cached K/V (next run starts at position 0).
  void reset_cache();
  /// Number of tokens currently held in the KV caches (0 for raw graphs).
  int64_t cached_tokens() const;
  /// True when the graph has kerf.Attention nodes (implicit KV cache, appending runs).
  bool has_kv_cache() const;
  /// Graph input / output names, in graph order.
  const std::vector<std::string>& input_names() const;
  const std::vector<std::string>& output_names() const;
  /// Nodes executed per run (Constant nodes are folded at create() and not counted).
  size_t num_nodes() const;
  /// The thread count this executor sets before running.
  int num_threads() const;

  // ---- Calibration hooks (quant/calib): observe Linear inputs, run a prefix, replace weights.

  /// One observed activation: float32, row-major [rows, cols] (rows = B*T tokens, cols = features),
  /// valid only during the observer call.
  struct Observation {
    const std::string* node_name = nullptr;  ///< the node (lifted graphs: e.g. "layers.0.wq")
    size_t node_index = 0;                   ///< index among the executed nodes (see node_index())
    const char* what = "";                   ///< "x": the node's first input (Linear / GatedFFN input);
                                             ///< "ffn_hidden": GatedFFN's act(x W1^T) * (x W3^T), the w2 input
    const float* data = nullptr;
    int64_t rows = 0, cols = 0;
  };
  using Observer = std::function<void(const Observation&)>;
  /// Calls `obs` during every later run() for the kerf.Linear and kerf.GatedFFN nodes whose index
  /// is in `node_indices` (before the node computes; GatedFFN also reports "ffn_hidden").
  /// An empty `obs` removes the observer.
  void set_observer(Observer obs, std::vector<size_t> node_indices);
  /// Index of the executed node named `name`, or -1.
  int64_t node_index(const std::string& name) const;
  /// Node name / op of executed node i (i < num_nodes()).
  const std::string& node_name(size_t i) const;
  const std::string& node_op(size_t i) const;
  /// Input names of executed node i.
  const std::vector<std::string>& node_inputs(size_t i) const;
  /// Runs the token-level forward (as forward_tokens) but only nodes 0..last_node inclusive, for
  /// the observer's sake; returns nothing and leaves the KV caches unchanged.
  /// Errors: as forward_tokens; InvalidArgument when last_node >= num_nodes().
  Status forward_prefix(const std::vector<int64_t>& tokens, size_t last_node);

  /// Batched forms: `tokens` holds B sequences of T ids each, row-major [B, T]. Sequences of
  /// different lengths may be right-padded with any valid id: with causal attention the logits /
  /// activations of the real positions do not depend on the padding after them (the caller
  /// ignores the padded positions). forward_batch returns logits [B*T*V]; both leave the KV caches
  /// of lifted graphs extended by the run (call reset_cache() before and after).
  Result<std::vector<float>> forward_batch(const std::vector<int64_t>& tokens, int64_t B, int64_t T);
  Status forward_prefix_batch(const std::vector<int64_t>& tokens, int64_t B, int64_t T, size_t last_node);

  /// Replaces initializer `name` by float32 `values` (row-major, same element count as the
  /// initializer; the initializer's shape is kept). Used to run the model with quantized weights.
  /// Errors: InvalidArgument for an unknown name or a size mismatch.
  Status set_weight(const std::string& name, const std::vector<float>& values);
  /// The current value of initializer `name` as float32 (row-major) and its shape.
  /// Errors: InvalidArgument for an unknown name.
  Result<std::vector<float>> weight(const std::string& name, std::vector<int64_t>* shape = nullptr) const;

  // A batched forward of several sequences (padding + per-sequence positions) is a planned
  // extension: the caches are already [B, G, P, Dh] and run() accepts any batch size.

 private:
  friend struct TrainAccess;  // distill/reference_torch.h
  struct Impl;
  explicit ReferenceExecutor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kerf::distill
