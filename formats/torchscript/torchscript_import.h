// TorchScript importer: a torch.jit.script / torch.jit.trace archive (.pt, a zip) -> kerf IR.
//
// The only importer that links LibTorch's jit; <torch/...> is included by torchscript_import.cpp
// alone, so this header stays torch-free. docs/torchscript.md lists the supported aten ops.
#pragma once

#include <string>
#include <vector>

#include "compiler/ir/ir.h"

namespace kerf {

struct TorchScriptImportOptions {
  /// Largest archive accepted, bytes.
  uint64_t max_file_bytes = 16ull << 30;
};

/// True when the file starts with a zip local-file header ("PK\x03\x04"), the container of a
/// TorchScript archive. False for an unreadable file (the importer then reports the I/O error).
bool is_torchscript_archive(const std::string& path);

/// The aten / prim ops (qualified, e.g. "aten::linear") the importer maps to IR ops, sorted.
const std::vector<std::string>& supported_torchscript_ops();

/// Imports the `forward` method of a TorchScript module (torch::jit::load, eval mode).
///  - The graph is inlined; module attributes are resolved: parameters and buffers become
///    Graph::initializers named by their module path ("model.layers.0.wq.weight"; a tensor
///    reached under two paths, e.g. a tied embedding, is one initializer per path), numbers and
///    flags become constants. LibTorch's cleanups then run (tuple lowering, list idioms, constant
///    propagation, mutation removal, dropout removal, dead-code elimination).
///  - Parameter dtypes f32, f16, bf16 (also f64 and the integer types) are kept as they are.
///  - forward's tensor arguments become Graph::inputs named after the argument ("tokens"): a
///    traced archive records their dtype and rank; a scripted one does not, and they are taken
///    as int64 token ids [batch, seq]. Dims are symbolic ("batch", "seq", then "d2", ...).
///    Tensor outputs (a tuple is flattened) become Graph::outputs.
///  - aten ops become the default-domain (ONNX-opset-17 semantics) ops the ONNX importer
///    produces — Gather (embedding, select), MatMul, Mul/Add/Sub/Div/Pow/Sqrt/Reciprocal (rsqrt),
///    ReduceMean, Softmax, Sigmoid (silu = x * Sigmoid(x)), Reshape, Transpose, Concat
///    (cat, stack), Slice, Expand, Unsqueeze, Squeeze, Shape, Cast, ConstantOfShape (full),
///    Trilu (triu/tril), Where, Equal — except aten::linear with a constant 2-D weight, which
///    becomes kerf.Linear directly (plus Add for a bias). Python scalars take the dtype of the
///    tensor they combine with (PyTorch's type promotion), so fp16 models carry fp16 constants.
///  - Graph::metadata: source.format = "torchscript", source.file, source.producer.
/// Errors: kIo (missing / unreadable file), kBadInput (not a TorchScript archive: torch::jit::load
/// failed, its message is included; no forward method), kUnsupported (ops with no mapping: the
/// message lists EVERY such op with the source location "file:line:col" and source text of each
/// use; control flow that depends on the input (prim::If / prim::Loop left after constant
/// propagation); in-place writes to values the outputs depend on; argument forms the mapping
/// does not cover, e.g. a dynamic dim argument — each naming the op and its source location).
/// No exception escapes: LibTorch errors are caught and returned as a Status naming the file.
Result<ir::Graph> import_torchscript(const std::string& path, const TorchScriptImportOptions& opt = {});

}  // namespace kerf
