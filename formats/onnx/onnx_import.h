// ONNX importer: ModelProto (protobuf) -> kerf IR.
#pragma once

#include <string>
#include <vector>

#include "compiler/ir/ir.h"

namespace kerf {

struct OnnxImportOptions {
  /// Largest model file accepted, bytes (protobuf's own limit is 2 GiB; bigger weights must use
  /// ONNX external data, which is read from files beside the model).
  uint64_t max_file_bytes = (2ull << 30) - 1;
  /// Most graph nodes accepted (Llama-70B exports have ~10^4; the bound stops a crafted file from
  /// making every later pass quadratic).
  size_t max_nodes = 1u << 20;
};

/// Highest tensor rank the importer accepts (initializers, value_info, graph inputs / outputs).
inline constexpr int kOnnxMaxRank = 8;

/// Default-domain ONNX op types kerf can import (and the reference executor can run), sorted.
const std::vector<std::string>& supported_onnx_ops();

/// Imports an ONNX model (opsets 13-21 of the default domain; a ReduceMean of opset 18+ whose axes
/// input is an int64 constant gets them back as its attribute). QuantizeLinear / DequantizeLinear
/// import as they are (a QuantizeLinear's output type: its output_dtype attribute, else its zero
/// point's type; INT16 tensors are not read, so INT16 quantization needs output_dtype).
///  - initializers and Constant nodes become Graph::initializers (f32, f16, bf16, f64, i64, i32,
///    i8, u8, bool; raw_data or typed fields; external data read from beside the model, and a
///    location that escapes the model's folder is rejected);
///  - graph inputs that are not initializers become Graph::inputs with their dtype and shape
///    (dim_param -> symbolic Dim, e.g. "batch");
///  - value_info/outputs types are kept in Graph::values; node names are kept (generated as
///    "<op>_<index>" where missing).
/// Errors: kIo (cannot read), kBadInput (not a parseable ModelProto, bad tensor sizes, duplicate
/// or undefined values, a tensor over 2^40 elements, nesting deeper than 64 messages), kResourceLimit (file over max_file_bytes,
/// more than max_nodes nodes, a rank above kOnnxMaxRank), kUnsupported (opset outside 13-21, unknown domain, ops kerf does not
/// know: the message lists EVERY unsupported op type with the names of its nodes; a ReduceMean of opset
/// 18+ with non-constant axes).
Result<ir::Graph> import_onnx(const std::string& path, const OnnxImportOptions& opt = {});

/// Same, from bytes already in memory; `base_dir` is where external data files are looked up.
Result<ir::Graph> import_onnx_bytes(const void* data, size_t size, const std::string& base_dir,
                                    const std::string& display_name, const OnnxImportOptions& opt = {});

}  // namespace kerf
