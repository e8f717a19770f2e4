// C API introspection: metadata keys, tensor table and program listing (kerf.h).
#include <cstdio>
#include <cstring>
#include <string>

#include "model.h"


extern "C" {

int kerf_model_meta_count(const kerf_model* m) { return m ? static_cast<int>(m->meta.size()) : 0; }

const char* kerf_model_meta_key(const kerf_model* m, int index) {
  if (!m || index < 0 || static_cast<size_t>(index) >= m->meta.size()) return nullptr;
  // Keys in the mapping are not NUL-terminated: keep NUL-terminated copies in the model.
  auto* self = const_cast<kerf_model*>(m);
  if (self->meta_keys.size() != m->meta.size()) {
    self->meta_keys.clear();
    for (const auto& mi : m->meta) self->meta_keys.emplace_back(mi.key);
  }
  return self->meta_keys[static_cast<size_t>(index)].c_str();
}

int kerf_model_tensor_count(const kerf_model* m) { return m ? static_cast<int>(m->tensors.size()) : 0; }

int kerf_model_tensor_info(const kerf_model* m, int index, kerf_tensor_info* out) {
  if (!m || !out || index < 0 || static_cast<size_t>(index) >= m->tensors.size()) return KERF_ERR_ARGUMENT;
  auto* self = const_cast<kerf_model*>(m);
  if (self->tensor_names.size() != m->tensors.size()) {
    self->tensor_names.clear();
    for (const auto& t : m->tensors) self->tensor_names.emplace_back(t.name);
  }
  if (self->tensor_precisions.size() != m->tensors.size()) {
    self->tensor_precisions.clear();
    char prec[64];
    for (const auto& t : m->tensors)
      self->tensor_precisions.emplace_back(kerf::fmt::describe_qtype(t.dtype, t.flags, t.group_size, prec, sizeof prec));
  }
  const auto& t = m->tensors[static_cast<size_t>(index)];
  out->name = self->tensor_names[static_cast<size_t>(index)].c_str();
  out->dtype_name = kerf::fmt::dtype_name(t.dtype);
  out->dtype = static_cast<uint32_t>(t.dtype);
  out->rank = t.rank;
  for (uint32_t i = 0; i < 4; ++i) out->shape[i] = t.shape[i];
  out->group_size = t.group_size;
  out->bytes = t.size;
  out->flags = t.flags;
  out->precision = self->tensor_precisions[static_cast<size_t>(index)].c_str();
  return KERF_OK;
}

int kerf_model_op_count(const kerf_model* m) { return m ? static_cast<int>(m->ops.size()) : 0; }

int kerf_model_op_describe(const kerf_model* m, int index, char* buf, size_t size) {
  if (!m || !buf || size == 0 || index < 0 || static_cast<size_t>(index) >= m->ops.size()) return KERF_ERR_ARGUMENT;
  const auto& op = m->ops[static_cast<size_t>(index)];
  std::string s(m->values[op.output].name);
  s += " = ";
  s += kerf::fmt::op_name(op.op);
  s += "(";
  for (size_t i = 0; i < op.inputs.size(); ++i) {
    const uint32_t ref = op.inputs[i];
    if (i) s += ", ";
    if (ref & kerf::fmt::kRefTensorBit) {
      s += "@";
      s += std::string(m->tensors[ref & ~kerf::fmt::kRefTensorBit].name);
    } else {
      s += std::string(m->values[ref].name);
    }
  }
  s += ")";
  char attrs[256];
  attrs[0] = 0;
  using kerf::fmt::OpCode;
  if (op.op == OpCode::kRMSNorm) std::snprintf(attrs, sizeof attrs, " eps=%g", op.eps);
  if (op.op == OpCode::kRotary)
    std::snprintf(attrs, sizeof attrs, " head_dim=%lld theta=%g", static_cast<long long>(op.head_dim), op.theta);
  if (op.op == OpCode::kAttention)
    std::snprintf(attrs, sizeof attrs, " heads=%lld kv_heads=%lld head_dim=%lld scale=%g", static_cast<long long>(op.n_heads),
                  static_cast<long long>(op.n_kv_heads), static_cast<long long>(op.head_dim), op.scale);
  s += attrs;
  // [decode unit] or [prefill unit / decode unit] when they differ
  s += " [";
  if (op.unit[1] != op.unit[0]) s += std::string(kerf::fmt::backend_name(op.unit[1])) + " prefill / ";
  s += kerf::fmt::backend_name(op.unit[0]);
  s += "]";
  std::snprintf(buf, size, "%s", s.c_str());
  return KERF_OK;
}

}  // extern "C"
