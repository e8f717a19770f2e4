// The graph passes of kerf (see passes/registry.h for their order and the pipelines).
#pragma once

#include <memory>

#include "compiler/ir/pass.h"

namespace kerf::passes {

/// "infer-shapes": dtype and (symbolic) shape of every value, written to Graph::values. Also tracks
/// the *values* of small int64 shape tensors symbolically (Shape -> Gather -> Unsqueeze -> Concat
/// chains), element by element as a constant, a named dim ("batch") or unknown, which is what lets
/// `fold` remove the exporter's shape arithmetic and lets Reshape/Expand outputs get real shapes.
/// Never fails on ops it does not know: their outputs stay untyped (counter "unknown_ops").
std::unique_ptr<Pass> make_infer_shapes();

/// "fold": constant folding. Evaluates every node whose inputs are all constants (integer and
/// float ops used by exporters: Shape/Gather/Unsqueeze/Squeeze/Concat/Cast/Add/Sub/Mul/Div/Equal/
/// Where/Range/Slice/ConstantOfShape/Reshape/Transpose/Expand/Identity/Neg/Sqrt/Pow/Reciprocal),
/// plus nodes whose output is fully known from symbolic shape values (e.g. Gather(Shape(x), 2)
/// when x's last dim is 64). Results become initializers; folded nodes are removed. Runs
/// infer-shapes itself. Counter "folded_nodes".
std::unique_ptr<Pass> make_fold();

/// "dce": removes nodes whose outputs are not used by any node or graph output, and initializers
/// nobody reads. Counters "removed_nodes", "removed_initializers".
std::unique_ptr<Pass> make_dce();

/// "lift-transformer": rewrites the exporter's op soup into the kerf transformer ops documented in
/// compiler/ir/ir.h (Embedding, RMSNorm, Linear, Rotary, Attention with GQA and an implicit KV
/// cache, GatedFFN, tied classifier), turns KV-cache graph inputs/outputs (past_key_values.* /
/// present.*) into the Attention ops' implicit cache, and gives values and weights canonical names
/// (model.layers.{i}.wq.weight, ...) so that exports of the same model lift to the same graph.
/// Errors (kUnsupported) name the node where a pattern was recognised but could not be lifted
/// (e.g. a non-causal mask, a rotary table that does not follow theta^(-2i/d)).
/// Options: canonical-names=1|0.
std::unique_ptr<Pass> make_lift_transformer();

}  // namespace kerf::passes
