// kerf quant: the baseline (RTN) recipe applied to a lifted graph.
//
// Every weight-matrix input of a lifted op (domain "kerf") gets one explicit decision:
//   Linear(x, weight[N,K])            weight            role "linear"     -> options.linear_dtype, g = group_size
//   GatedFFN(x, w1[F,D], w3[F,D], w2[D,F])  w1, w3, w2  role "linear"     -> options.linear_dtype, g = group_size
//   Embedding(tokens, table[V,D])     table             role "embedding"  -> options.embedding_dtype,
//                                                                            g = embedding_group (0 = per row)
// A table that is also the weight of a Linear (the tied classifier) is planned once, with the
// embedding's decision and role "embedding+classifier", and counted once in bpw. Every other
// initializer (RMSNorm weights, RoPE tables, ...) is left as it is and listed in `kept`.
// Quantization is RTN (quant/rtn.h); bpw follows shared/EVAL.md (quant/bpw.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"
#include "kerf/format.h"
#include "quant/rtn.h"

namespace kerf::quant {

/// The decision for one tensor.
struct TensorPlan {
  std::string name;                        ///< initializer name in the graph
  fmt::DType dtype = fmt::DType::kF32;     ///< storage dtype in the artifact
  int32_t group_size = 0;                  ///< g actually used (per-row Q8 records cols); 0 for plain dtypes
  std::string method;                      ///< "rtn" (Q4/Q8), "cast" (f16), "none" (f32 / kept)
  std::string role;                        ///< "linear", "embedding", "embedding+classifier"; kept: "norm", "other"
  int64_t rows = 0, cols = 0;              ///< matrix shape (kept tensors: 0)
  int64_t bits = 0;                        ///< logical bits counted in bpw (kept tensors: 0)
  double rel_rms_error = 0.0;              ///< ||W - dequant(Q)||_F / ||W||_F (kept tensors: 0)
  uint32_t flags = 0;                      ///< TensorEntry flags (generic quantized dtypes)
  std::string precision;                   ///< quant/qspec.h text form, e.g. "int4_asym:g32" (empty: legacy RTN)
  double output_error = -1.0;              ///< tr(D H D^T) / tr(W H W^T) on calibration inputs (-1: not measured)
  double sensitivity = -1.0;               ///< mixed precision: measured KL when only this tensor is quantized (-1: not measured)
  std::string note;                        ///< e.g. "awq alpha 0.35 folded into layers.0.attn_norm.weight"
};

/// Baseline recipe options. linear_dtype / embedding_dtype: kQ4Asym, kQ8Sym, kF16 or kF32.
struct QuantOptions {
  int group_size = 32;                               ///< g for linears (>= 1; kQ8Sym also accepts 0 = per row)
  fmt::DType linear_dtype = fmt::DType::kQ4Asym;
  fmt::DType embedding_dtype = fmt::DType::kQ8Sym;
  int embedding_group = 0;                           ///< 0 = one group per row (kQ8Sym only)
};

/// The result: stored tensors by initializer name, the plan (in graph order, one entry per
/// weight matrix) and the bpw account of those matrices.
struct QuantizedModel {
  std::map<std::string, QuantTensor> tensors;  ///< one per planned weight matrix
  std::vector<TensorPlan> plan;                ///< the weight-matrix decisions, first-use order
  std::vector<TensorPlan> kept;                ///< other initializers used by nodes, left unchanged
  double bpw = 0.0;                            ///< weight_bits / weight_count
  int64_t weight_count = 0;                    ///< weights in the planned matrices (tied once)
  int64_t weight_bits = 0;                     ///< logical bits of those matrices
};

/// One weight matrix of a lifted graph, as enumerate_weights() finds it.
struct WeightUse {
  std::string tensor;        ///< initializer name
  std::string node;          ///< first node using it
  bool linear = false;       ///< read as a Linear / GatedFFN weight
  bool embedding = false;    ///< read as an Embedding table
  int64_t rows = 0, cols = 0;
  /// "linear", "embedding", "embedding+classifier" (a tied table)
  std::string role() const { return embedding ? (linear ? "embedding+classifier" : "embedding") : "linear"; }
};

/// The weight-matrix inputs of the lifted ops (kerf.Linear weight, kerf.GatedFFN w1 / w3 / w2,
/// kerf.Embedding table) in first-use order, each once. Errors: kBadInput naming the node and
/// tensor for a missing / non-initializer / non-2-D / non-float / empty weight or GatedFFN shapes
/// that disagree.
Result<std::vector<WeightUse>> enumerate_weights(const ir::Graph& lifted);

/// Every other initializer read by a node (norm weights, tables), as "kept" plan entries.
std::vector<TensorPlan> kept_initializers(const ir::Graph& lifted, const std::vector<WeightUse>& weights);

/// Checks the options (dtypes and group sizes valid for their dtypes). kInvalidArgument otherwise.
Status validate(const QuantOptions& options);

/// Applies the baseline RTN recipe to a lifted graph (not modified).
/// Errors: kInvalidArgument for bad options; kBadInput naming the node and tensor when a weight
/// input is missing, is not an initializer, is not 2-D, is not a float tensor, has NaN / Inf
/// (row, col), or when a GatedFFN's w1 / w3 / w2 shapes disagree; kUnsupported naming the tensor
/// when a value is outside the fp16 range.
Result<QuantizedModel> quantize_graph_rtn(const ir::Graph& lifted, const QuantOptions& options);

}  // namespace kerf::quant
