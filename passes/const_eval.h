// Small evaluator for constant sub-expressions (shape arithmetic, masks), shared by `fold` and
// `infer-shapes`. Values are computed in double (exact for the int64 magnitudes of shapes, < 2^53).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"

namespace kerf::passes {

/// Evaluates `n` on constant inputs (nullptr = omitted optional input). Returns the outputs, or
/// nullopt when the op is not one the evaluator knows or the inputs do not fit its rules (the
/// caller then leaves the node alone). `max_elements` bounds the size of any output.
std::optional<std::vector<ir::Tensor>> eval_constant_node(const ir::Node& n, const std::vector<const ir::Tensor*>& in,
                                                          int64_t max_elements = 1 << 20);

/// The IR dtype of an ONNX TensorProto.DataType code (Cast's "to" attribute); kUndefined for codes
/// kerf does not handle.
ir::DType dtype_from_onnx_code(int64_t code);

/// One element of a symbolically known int64 vector: a constant, or a named dynamic dim.
struct SymElem {
  bool known = false;     ///< value is valid
  int64_t value = 0;
  std::string symbol;     ///< non-empty for a named dim such as "batch"
  bool operator==(const SymElem& o) const { return known == o.known && value == o.value && symbol == o.symbol; }
};
using SymVec = std::vector<SymElem>;

}  // namespace kerf::passes
