// kerf IR text form: a readable, line-oriented rendering of a Graph that parses back exactly.
//
// Pass tests are written as "IR before -> IR after" in this form; parse_graph(print_graph(g))
// reproduces g field by field, and print_graph(parse_graph(t)) == t for any t print_graph wrote.
//
// Syntax (one statement per line; `#` starts a comment that runs to the end of the line):
//
//   graph "stories260K" opset 17 {
//     meta "source.format" = "onnx"
//     input %tokens : i64[batch,seq]
//     output %logits : f32[batch,seq,512]
//     const %model.embed.weight : f16[512,64] = [0.0123, -0.5, ...]
//     const %big : f16[512,64] = elided(65536 bytes, xxh64 0x0123456789abcdef)
//     %x : f32[batch,seq,64] = kerf.Embedding(%tokens, %model.embed.weight) @embed
//     %y = Reshape(%x, %shape, _) {act = "silu", allowzero = 0, eps = 1e-05, perm = i[0, 2, 1, 3], scales = f[1.0, 2.5], value = tensor f32[2] [1.0, 2.0]} @/layers.0/Reshape
//     %a, %b = Split(%x) @n3
//     () = kerf.Sink(%a)                      # a node without outputs
//     value %stale : f32[3]                   # a Graph::values entry not shown anywhere else
//   }
//
// A node is always one line. Attributes print in key order (std::map).
// Printed order: meta, input, output, const, nodes, value. The parser accepts the statements in
// any order (inputs, outputs and nodes keep their relative order).
//
// Lexical rules
//  * Value references: %name when the name matches [A-Za-z0-9_.:/\-]+, else %"quoted"; `_` (no
//    `%`) is the empty name (an omitted optional input or output). Because `:` may be part of a
//    name (ONNX "onnx::MatMul_1541"), put a space before the ` : type` annotation.
//  * Node names: `@name` / `@"quoted"` after the attributes, same rule; no `@` = empty name.
//  * Strings are double-quoted with escapes \" \\ \n \t \r and \xHH (other control bytes);
//    bytes >= 0x80 are written as is.
//  * Ops: `Op` (default domain) or `domain.Op` (split at the last dot); when the domain or op is
//    not made of identifier parts they are written `"domain"."op"`.
//  * Attribute keys: a bare identifier ([A-Za-z_][A-Za-z0-9_.]*) or a quoted string.
//
// Types:  dtype[dims]   rank known; dims are integers, symbols (bare identifier or quoted) or `?`
//                       (unnamed dynamic); `f32[]` is a scalar
//         dtype         rank unknown, element type known
//         ?[dims] / ?   element type unknown (DType::kUndefined)
//  dtype is one of f32 f16 bf16 f64 i64 i32 i8 u8 bool. A `: type` on an input, output or node
//  output (or a `value` line) is that name's Graph::values entry; no annotation = no entry. The
//  same name may be annotated several times (e.g. on its output line and its node) if they agree.
//  A const's type is the tensor's own dtype and shape, not a Graph::values entry.
//
// Attribute values:
//   42, -1                   int           (integers never contain '.', 'e', inf or nan)
//   1.0, 1e-05, -0.0, inf, -inf, nan      float (always contains '.', 'e', "inf" or "nan")
//   "text"                   string
//   i[1, 2, 3]  / f[1.0, 2.5]             int / float lists (`i[]`, `f[]` when empty)
//   tensor f32[2] [1.0, 2.0]              tensor (same data forms as a const)
//
// Tensor data: a flat row-major list. Floats use the shortest decimal form that converts back to
// the same bits (std::to_chars; f16/bf16 print their exact float value), so every value,
// including -0.0, subnormals, inf and 65504, round-trips bit-exactly. NaNs print as `nan` / `-nan`
// for the dtype's default quiet NaN and `nan(0xBITS)` (raw bits of the element) otherwise.
// Integers (i64 i32 i8 u8 bool) print as integers (bool bytes as 0/1, or the raw byte).
// Tensors whose byte count does not match dtype and shape (or of undefined dtype) print as
// `raw "hexbytes"`. With PrintOptions::max_inline_elements >= 0, larger tensors print as
// `elided(N bytes, xxh64 0x...)` (XXH64, seed 0, of the data); such text does not parse back.
//
// Not represented (normalised away): the symbol of a static Dim (value >= 0) or of a Dim with a
// value below -1, and a non-empty shape in a ValueInfo whose rank_known is false.
// parse_graph checks syntax only; call Graph::validate() for well-formedness.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"

namespace kerf::ir {

struct PrintOptions {
  /// Constants (initializers and tensor attributes) with more elements than this are printed
  /// elided (shape, dtype, byte count, XXH64 of the data) and cannot be parsed back;
  /// -1 = print every constant in full.
  int64_t max_inline_elements = -1;
  /// Annotate node outputs with their type from Graph::values when known, and print `value`
  /// lines for the other Graph::values entries. With false, only inputs and outputs carry types
  /// (the text then no longer round-trips Graph::values).
  bool value_types = true;
};

/// Renders `g` in the text form described above (ends with "}\n").
std::string print_graph(const Graph& g, const PrintOptions& opt = {});

/// Parses print_graph's output (full form). Errors are kBadInput with
/// "line L, column C: expected ..., got ...".
Result<Graph> parse_graph(std::string_view text);

}  // namespace kerf::ir
