// The .kerf v1 artifact writer (formats/SPEC.md; writes format 1.3, fmt::kVersionMinor). C++17 standard library + POSIX file calls only:
// no IR, no LibTorch, so runtime tests and the compiler share it. Errors are returned as strings
// (never thrown out of write()/serialize()).
//
// Usage:
//   ArtifactBuilder b;
//   b.add_meta_int(fmt::meta::kVocab, 512);
//   uint32_t emb = b.add_tensor(TensorRecord::from_f32("tok_embeddings.weight", {512, 64}, w));
//   uint32_t tok = b.add_value({"tokens", 1}), x = b.add_value({"x0", 64});
//   b.add_op({fmt::OpCode::kEmbedding, fmt::Backend::kCpu, "embed", {tok, tensor_ref(emb)}, {x}, {}});
//   ... b.set_io(tok, logits);
//   std::string err = b.write("model.kerf");  // "" on success
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kerf/format.h"

namespace kerf::artifact {

/// A typed metadata value (SPEC section 4). `str` holds the string or bytes payload.
struct MetaValue {
  fmt::MetaType type = fmt::MetaType::kInt;
  int64_t i = 0;
  double f = 0.0;
  std::string str;
};

/// One tensor of the tensor table with its payload.
struct TensorRecord {
  std::string name;                 ///< unique, non-empty
  fmt::DType dtype = fmt::DType::kF32;
  std::vector<int64_t> shape;       ///< 1..4 dims, each >= 1; quantized types: [rows, cols]
  uint32_t group_size = 0;          ///< quantized types: group size g >= 1 along cols; plain: 0
  std::vector<uint8_t> payload;     ///< exactly fmt::tensor_payload_bytes(dtype, shape, group, flags) bytes
  /// TensorEntry.flags: quant params of the generic quantized dtypes (qsym, qasym, ternary, binary:
  /// fmt::make_qflags(bits, scale format)), else 0. Last member so that aggregate initialization
  /// {name, dtype, shape, group, payload} keeps working.
  uint32_t flags = 0;

  /// Plain tensors from float values: f32 / f16 (round to nearest even) encodings, row-major.
  /// `v.size()` must equal the product of `shape` (checked when the artifact is written).
  static TensorRecord from_f32(std::string name, std::vector<int64_t> shape, const std::vector<float>& v);
  static TensorRecord from_f16(std::string name, std::vector<int64_t> shape, const std::vector<float>& v);
};

/// A value (activation) of the program: float32 [T, width] at run time.
struct ValueRecord {
  std::string name;    ///< for messages; may be empty, need not be unique
  uint32_t width = 0;  ///< elements per token (>= 1); the input (token ids) value has width 1
};

/// An op of the program (SPEC section 7).
struct OpRecord {
  fmt::OpCode op = fmt::OpCode::kAdd;
  fmt::Backend backend = fmt::Backend::kCpu;
  std::string name;                ///< node name, for error messages
  std::vector<uint32_t> inputs;    ///< value id, or tensor_ref(tensor index); kinds per op_input_kinds()
  std::vector<uint32_t> outputs;   ///< value ids (exactly one in v1)
  std::vector<fmt::OpAttr> attrs;  ///< build with attr_int()/attr_float()
};

/// Input ref of tensor-table index `tensor_index` (sets fmt::kRefTensorBit).
inline uint32_t tensor_ref(uint32_t tensor_index) { return tensor_index | fmt::kRefTensorBit; }
fmt::OpAttr attr_int(fmt::AttrKey key, int64_t v);
fmt::OpAttr attr_float(fmt::AttrKey key, double v);

/// Writes `n` bytes at `data` to `path` atomically: a temporary file in the same directory (mkstemp),
/// fsync, rename over `path`, fsync of the directory (best effort). Returns "" on success, else
/// "path: <syscall>: <strerror>"; on error `path` is untouched and the temporary file is removed.
/// The one atomic-write routine of kerf (artifacts, manifests, reports).
std::string write_file_atomic(const std::string& path, const void* data, size_t n);

/// Collects an artifact in memory and serializes it. Setting a metadata key twice keeps the last
/// value; metadata is written sorted by key. Tensors are written in add order.
class ArtifactBuilder {
 public:
  void add_meta_int(const std::string& key, int64_t v);
  void add_meta_float(const std::string& key, double v);
  void add_meta_string(const std::string& key, std::string v);
  void add_meta_bytes(const std::string& key, std::vector<uint8_t> v);

  /// Returns the tensor's table index (use tensor_ref() to refer to it from an op).
  uint32_t add_tensor(TensorRecord t);
  /// Returns the value id.
  uint32_t add_value(ValueRecord v);
  void add_op(OpRecord op);
  /// Program input (token ids, width 1) and output (logits, width vocab) value ids.
  void set_io(uint32_t input_value, uint32_t output_value);

  size_t tensor_count() const { return tensors_.size(); }
  size_t value_count() const { return values_.size(); }
  size_t op_count() const { return ops_.size(); }
  const std::map<std::string, MetaValue>& meta() const { return meta_; }
  /// The collected program, for target passes (placement sets OpRecord::backend, the NPU lowering
  /// replaces or adds weight tensors); validate() / serialize() check whatever was changed.
  std::vector<OpRecord>& ops() { return ops_; }
  const std::vector<OpRecord>& ops() const { return ops_; }
  std::vector<TensorRecord>& tensors() { return tensors_; }
  const std::vector<TensorRecord>& tensors() const { return tensors_; }
  const std::vector<ValueRecord>& values() const { return values_; }
  uint32_t input_value() const { return input_value_; }
  uint32_t output_value() const { return output_value_; }

  /// Checks what a writer can check without running the program: metadata keys (non-empty, <= 256
  /// bytes), tensor names (non-empty, unique), dtype/shape/group/flags valid (fmt::qflags_valid) and
  /// payload size == implied size, op codes / arity / input kinds (fmt::op_input_kinds), refs and value ids in range, attrs
  /// keys and kinds, io set and in range. Returns "" when fine, else a message naming the
  /// tensor / op / key.
  std::string validate() const;

  /// The whole file in memory (deterministic). On error returns {} and sets *err (if not null).
  std::vector<uint8_t> serialize(std::string* err) const;

  /// Validates, serializes and writes `path` atomically: a temporary file in the same directory,
  /// fsync, rename over `path`, fsync of the directory. Returns "" on success, else a message
  /// (validation error or "path: <syscall>: <strerror>"); on error nothing new is left at `path`
  /// (an existing file there is untouched) and the temporary file is removed.
  std::string write(const std::string& path) const;

 private:
  std::map<std::string, MetaValue> meta_;
  std::vector<TensorRecord> tensors_;
  std::vector<ValueRecord> values_;
  std::vector<OpRecord> ops_;
  uint32_t input_value_ = UINT32_MAX, output_value_ = UINT32_MAX;
};

}  // namespace kerf::artifact
