// kerf IR: a small, ONNX-shaped dataflow graph.
//
// One Graph type holds both the imported form (ONNX ops in the default domain, e.g. "MatMul",
// "Reshape"; ~1,400 nodes for stories260K) and the lifted form (transformer ops in the "kerf"
// domain, ~60 nodes). Values are named; a node refers to its inputs and outputs by name; an empty
// input name is an omitted optional input (ONNX convention). Constants live in `initializers`.
//
// Lifted ops (domain "kerf"), the contract between passes, the reference executor (distill/) and
// the artifact program (formats/SPEC.md). Shapes: B batch, T new tokens, P tokens already in the
// KV cache, D model dim, V vocab, H query heads, G KV heads, Dh head dim, F FFN hidden dim.
//   Embedding(tokens i64[B,T], table[V,D])                -> [B,T,D]     table[tokens]
//   RMSNorm(x[...,D], weight[D]) {eps: float}             -> [...,D]     w * x / sqrt(mean(x^2) + eps)
//   Linear(x[...,K], weight[N,K])                         -> [...,N]     x W^T (weight rows = outputs)
//   Rotary(x[B,T,H*Dh]) {head_dim, theta: float, interleaved: 1}
//                                                         -> [B,T,H*Dh]  RoPE at positions P..P+T-1 on
//        (even, odd) pairs: (a, b) -> (a cos - b sin, a sin + b cos), angle = pos * theta^(-2i/Dh)
//   Attention(q[B,T,H*Dh], k[B,T,G*Dh], v[B,T,G*Dh]) {n_heads, n_kv_heads, head_dim, scale: float,
//        causal: 1}                                       -> [B,T,H*Dh]
//        Appends k, v to this op's KV cache (one cache per Attention node, implicit state) and
//        attends over all P+T cached positions with a causal mask offset by P. Query head h reads
//        KV head h / (H/G) (GQA). softmax(q k^T * scale) v.
//   GatedFFN(x[...,D], w1[F,D], w3[F,D], w2[D,F]) {activation: "silu"}
//                                                         -> [...,D]     w2( silu(x w1^T) * (x w3^T) )
//   Add(a, b) (default domain, ONNX broadcasting) is used for the residual stream.
// The tied classifier is a Linear whose weight is the Embedding's table (same initializer name).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "compiler/ir/status.h"

namespace kerf::ir {

/// Element types. Names in the text form are given by dtype_name().
enum class DType : uint8_t { kUndefined = 0, kF32, kF16, kBF16, kF64, kI64, kI32, kI8, kU8, kBool };

const char* dtype_name(DType t);                ///< "f32", "f16", "bf16", "f64", "i64", ...
Result<DType> dtype_from_name(std::string_view name);
size_t dtype_size(DType t);                     ///< bytes per element; 0 for kUndefined
bool dtype_is_float(DType t);

/// IEEE half <-> float conversions (round-to-nearest-even), and bfloat16.
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t h);
uint16_t float_to_bf16(float f);

/// One dimension: a static size (value >= 0) or a dynamic one (value = -1) with an optional symbol.
struct Dim {
  int64_t value = -1;
  std::string symbol;  ///< e.g. "batch", "seq"; empty for an unnamed dynamic dim
  bool is_static() const { return value >= 0; }
  bool operator==(const Dim& o) const { return value == o.value && symbol == o.symbol; }
  bool operator!=(const Dim& o) const { return !(*this == o); }
  static Dim of(int64_t v) { return Dim{v, {}}; }
  static Dim sym(std::string s) { return Dim{-1, std::move(s)}; }
};
using Shape = std::vector<Dim>;
std::string shape_to_string(const Shape& s);  ///< "[batch,seq,64]"

/// Constant tensor data: row-major, little-endian, `data.size() == numel() * dtype_size(dtype)`.
struct Tensor {
  DType dtype = DType::kUndefined;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;

  int64_t numel() const;
  size_t nbytes() const { return data.size(); }
  /// Element i converted to float / int64 (any dtype). No bounds check beyond an assert.
  float f32_at(int64_t i) const;
  int64_t i64_at(int64_t i) const;
  /// All elements converted to float32 / int64.
  std::vector<float> to_f32() const;
  std::vector<int64_t> to_i64() const;
  /// Builds a tensor of `dtype` (float or integer) from float / int64 values.
  static Tensor from_f32(std::vector<int64_t> shape, const std::vector<float>& v, DType dtype = DType::kF32);
  static Tensor from_i64(std::vector<int64_t> shape, const std::vector<int64_t>& v, DType dtype = DType::kI64);
  /// The same values in another dtype (float <-> float, int <-> int, int <-> float).
  Tensor cast(DType to) const;
  bool operator==(const Tensor& o) const { return dtype == o.dtype && shape == o.shape && data == o.data; }
};

using AttrValue = std::variant<int64_t, double, std::string, std::vector<int64_t>, std::vector<double>, Tensor>;

struct Node {
  std::string op;      ///< op type, e.g. "MatMul" or "Attention"
  std::string domain;  ///< "" for ONNX's default domain, "kerf" for lifted ops
  std::string name;    ///< unique node name (source name kept where there is one)
  std::vector<std::string> inputs;   ///< value names; "" = omitted optional input
  std::vector<std::string> outputs;  ///< value names
  std::map<std::string, AttrValue> attrs;

  bool is(std::string_view dom, std::string_view op_type) const { return domain == dom && op == op_type; }
  bool has_attr(const std::string& k) const { return attrs.count(k) != 0; }
  int64_t attr_int(const std::string& k, int64_t def) const;
  double attr_float(const std::string& k, double def) const;
  std::string attr_string(const std::string& k, const std::string& def) const;
  std::vector<int64_t> attr_ints(const std::string& k, const std::vector<int64_t>& def = {}) const;
  const Tensor* attr_tensor(const std::string& k) const;
  /// "kerf.Attention" or "MatMul"
  std::string qualified_op() const { return domain.empty() ? op : domain + "." + op; }
};

/// Static type of a value: element type and (possibly symbolic) shape. An empty `shape` with
/// `rank_known == false` means the rank is unknown.
struct ValueInfo {
  DType dtype = DType::kUndefined;
  Shape shape;
  bool rank_known = false;
};

struct Graph {
  std::string name;
  int64_t opset = 0;                          ///< ONNX default-domain opset of the source
  std::vector<std::string> inputs;            ///< graph input value names, in order
  std::vector<std::string> outputs;           ///< graph output value names, in order
  std::vector<Node> nodes;                    ///< kept in topological order by every pass
  std::map<std::string, Tensor> initializers; ///< constants by value name (weights, folded values)
  std::map<std::string, ValueInfo> values;    ///< known types: graph inputs/outputs and inferred ones
  std::map<std::string, std::string> metadata;///< model facts, e.g. "source.format" = "onnx"

  bool is_constant(const std::string& v) const { return initializers.count(v) != 0; }
  const Tensor* constant(const std::string& v) const;
  /// Index of the node producing `v`, or -1 (graph input, initializer or unknown).
  int producer(const std::string& v) const;
  /// Indices of nodes that read `v`.
  std::vector<int> consumers(const std::string& v) const;
  bool is_graph_output(const std::string& v) const;
  /// A value name not used anywhere yet, derived from `base`.
  std::string unique_name(const std::string& base) const;

  /// Checks the graph is well formed: unique node outputs, every input defined (graph input,
  /// initializer or an earlier node's output), outputs defined. Error names the node and value.
  Status validate() const;
  /// Re-sorts nodes topologically (stable); error on a cycle naming a node in it.
  Status topo_sort();
  /// Number of nodes per qualified op type.
  std::map<std::string, int> op_histogram() const;
  /// Parameters held in initializers that are inputs of nodes, counted once.
  int64_t parameter_count() const;
};

}  // namespace kerf::ir
