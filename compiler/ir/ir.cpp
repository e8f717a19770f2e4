#include "compiler/ir/ir.h"

#include "kerf/format.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace kerf {

const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kBadInput: return "bad input";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kIo: return "i/o error";
    case ErrorCode::kVerificationFailed: return "verification failed";
    case ErrorCode::kResourceLimit: return "resource limit";
    case ErrorCode::kInternal: return "internal error";
  }
  return "error";
}

int exit_code_for(ErrorCode c) {
  switch (c) {
    case ErrorCode::kOk: return 0;
    case ErrorCode::kInvalidArgument: return 2;
    case ErrorCode::kBadInput: return 3;
    case ErrorCode::kUnsupported: return 4;
    case ErrorCode::kIo: return 5;
    case ErrorCode::kVerificationFailed: return 6;
    case ErrorCode::kResourceLimit: return 7;
    case ErrorCode::kInternal: return 70;
  }
  return 70;
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  return std::string(error_code_name(code_)) + ": " + message_;
}

}  // namespace kerf

namespace kerf::ir {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kUndefined: return "undefined";
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF64: return "f64";
    case DType::kI64: return "i64";
    case DType::kI32: return "i32";
    case DType::kI8: return "i8";
    case DType::kU8: return "u8";
    case DType::kBool: return "bool";
  }
  return "undefined";
}

Result<DType> dtype_from_name(std::string_view name) {
  static const std::pair<const char*, DType> kAll[] = {
      {"f32", DType::kF32}, {"f16", DType::kF16}, {"bf16", DType::kBF16}, {"f64", DType::kF64},
      {"i64", DType::kI64}, {"i32", DType::kI32}, {"i8", DType::kI8},     {"u8", DType::kU8},
      {"bool", DType::kBool}};
  for (const auto& [n, t] : kAll)
    if (name == n) return t;
  return BadInput("unknown dtype '" + std::string(name) + "'");
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kF64: case DType::kI64: return 8;
    case DType::kI8: case DType::kU8: case DType::kBool: return 1;
    case DType::kUndefined: return 0;
  }
  return 0;
}

bool dtype_is_float(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}

// One implementation of the IEEE half conversions, shared with runtime-lite (kerf/format.h).
float half_to_float(uint16_t h) { return fmt::f16_to_f32(h); }
uint16_t float_to_half(float f) { return fmt::f32_to_f16(f); }
float bf16_to_float(uint16_t h) { return fmt::bf16_to_f32(h); }

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return static_cast<uint16_t>(x >> 16);
}

std::string shape_to_string(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ",";
    if (s[i].is_static())
      out += std::to_string(s[i].value);
    else
      out += s[i].symbol.empty() ? "?" : s[i].symbol;
  }
  return out + "]";
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {
template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
}  // namespace

float Tensor::f32_at(int64_t i) const {
  assert(i >= 0 && static_cast<size_t>(i) * dtype_size(dtype) < data.size());
  const uint8_t* p = data.data() + static_cast<size_t>(i) * dtype_size(dtype);
  switch (dtype) {
    case DType::kF32: return load<float>(p);
    case DType::kF16: return half_to_float(load<uint16_t>(p));
    case DType::kBF16: return bf16_to_float(load<uint16_t>(p));
    case DType::kF64: return static_cast<float>(load<double>(p));
    case DType::kI64: return static_cast<float>(load<int64_t>(p));
    case DType::kI32: return static_cast<float>(load<int32_t>(p));
    case DType::kI8: return static_cast<float>(load<int8_t>(p));
    case DType::kU8: case DType::kBool: return static_cast<float>(load<uint8_t>(p));
    case DType::kUndefined: return 0.f;
  }
  return 0.f;
}

int64_t Tensor::i64_at(int64_t i) const {
  assert(i >= 0 && static_cast<size_t>(i) * dtype_size(dtype) < data.size());
  const uint8_t* p = data.data() + static_cast<size_t>(i) * dtype_size(dtype);
  switch (dtype) {
    case DType::kI64: return load<int64_t>(p);
    case DType::kI32: return load<int32_t>(p);
    case DType::kI8: return load<int8_t>(p);
    case DType::kU8: case DType::kBool: return load<uint8_t>(p);
    default: return static_cast<int64_t>(f32_at(i));
  }
}

std::vector<float> Tensor::to_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  if (dtype == DType::kF32) {
    std::memcpy(out.data(), data.data(), out.size() * 4);
  } else {
    for (size_t i = 0; i < out.size(); ++i) out[i] = f32_at(static_cast<int64_t>(i));
  }
  return out;
}

std::vector<int64_t> Tensor::to_i64() const {
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = i64_at(static_cast<int64_t>(i));
  return out;
}

namespace {
void store_f(DType t, uint8_t* p, double v) {
  switch (t) {
    case DType::kF32: { float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
    case DType::kF16: { uint16_t h = float_to_half(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    case DType::kBF16: { uint16_t h = float_to_bf16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    case DType::kF64: std::memcpy(p, &v, 8); break;
    case DType::kI64: { int64_t x = static_cast<int64_t>(v); std::memcpy(p, &x, 8); break; }
    case DType::kI32: { int32_t x = static_cast<int32_t>(v); std::memcpy(p, &x, 4); break; }
    case DType::kI8: { int8_t x = static_cast<int8_t>(v); std::memcpy(p, &x, 1); break; }
    case DType::kU8: { uint8_t x = static_cast<uint8_t>(v); std::memcpy(p, &x, 1); break; }
    case DType::kBool: { uint8_t x = v != 0; std::memcpy(p, &x, 1); break; }
    case DType::kUndefined: break;
  }
}
void store_i(DType t, uint8_t* p, int64_t v) {
  if (t == DType::kI64) { std::memcpy(p, &v, 8); return; }
  store_f(t, p, static_cast<double>(v));
}
}  // namespace

Tensor Tensor::from_f32(std::vector<int64_t> shape, const std::vector<float>& v, DType dtype) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  assert(static_cast<int64_t>(v.size()) == t.numel());
  t.data.resize(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) store_f(dtype, t.data.data() + i * dtype_size(dtype), v[i]);
  return t;
}

Tensor Tensor::from_i64(std::vector<int64_t> shape, const std::vector<int64_t>& v, DType dtype) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  assert(static_cast<int64_t>(v.size()) == t.numel());
  t.data.resize(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) store_i(dtype, t.data.data() + i * dtype_size(dtype), v[i]);
  return t;
}

Tensor Tensor::cast(DType to) const {
  if (to == dtype) return *this;
  if (dtype_is_float(dtype) && dtype_is_float(to)) return from_f32(shape, to_f32(), to);
  if (dtype_is_float(dtype)) {  // float -> integer truncates toward zero, as ONNX Cast does
    std::vector<float> v = to_f32();
    std::vector<int64_t> iv(v.size());
    for (size_t i = 0; i < v.size(); ++i) iv[i] = static_cast<int64_t>(v[i]);
    return from_i64(shape, iv, to);
  }
  return from_i64(shape, to_i64(), to);
}

// ------------------------------------------------------------------------------------------ Node

int64_t Node::attr_int(const std::string& k, int64_t def) const {
  auto it = attrs.find(k);
  if (it == attrs.end()) return def;
  if (auto* v = std::get_if<int64_t>(&it->second)) return *v;
  if (auto* v = std::get_if<double>(&it->second)) return static_cast<int64_t>(*v);
  return def;
}
double Node::attr_float(const std::string& k, double def) const {
  auto it = attrs.find(k);
  if (it == attrs.end()) return def;
  if (auto* v = std::get_if<double>(&it->second)) return *v;
  if (auto* v = std::get_if<int64_t>(&it->second)) return static_cast<double>(*v);
  return def;
}
std::string Node::attr_string(const std::string& k, const std::string& def) const {
  auto it = attrs.find(k);
  if (it == attrs.end()) return def;
  if (auto* v = std::get_if<std::string>(&it->second)) return *v;
  return def;
}
std::vector<int64_t> Node::attr_ints(const std::string& k, const std::vector<int64_t>& def) const {
  auto it = attrs.find(k);
  if (it == attrs.end()) return def;
  if (auto* v = std::get_if<std::vector<int64_t>>(&it->second)) return *v;
  if (auto* v = std::get_if<int64_t>(&it->second)) return {*v};
  return def;
}
const Tensor* Node::attr_tensor(const std::string& k) const {
  auto it = attrs.find(k);
  if (it == attrs.end()) return nullptr;
  return std::get_if<Tensor>(&it->second);
}

// ----------------------------------------------------------------------------------------- Graph

const Tensor* Graph::constant(const std::string& v) const {
  auto it = initializers.find(v);
  return it == initializers.end() ? nullptr : &it->second;
}

int Graph::producer(const std::string& v) const {
  if (v.empty()) return -1;
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& o : nodes[i].outputs)
      if (o == v) return static_cast<int>(i);
  return -1;
}

std::vector<int> Graph::consumers(const std::string& v) const {
  std::vector<int> out;
  if (v.empty()) return out;
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& in : nodes[i].inputs)
      if (in == v) {
        out.push_back(static_cast<int>(i));
        break;
      }
  return out;
}

bool Graph::is_graph_output(const std::string& v) const {
  for (const auto& o : outputs)
    if (o == v) return true;
  return false;
}

std::string Graph::unique_name(const std::string& base) const {
  std::unordered_set<std::string> used(inputs.begin(), inputs.end());
  used.insert(outputs.begin(), outputs.end());
  for (const auto& [k, _] : initializers) used.insert(k);
  for (const auto& [k, _] : values) used.insert(k);  // a stale type entry must not be inherited
  for (const auto& n : nodes) {
    for (const auto& o : n.outputs) used.insert(o);
    used.insert(n.name);
  }
  if (!used.count(base)) return base;
  for (int i = 1;; ++i) {
    std::string c = base + "_" + std::to_string(i);
    if (!used.count(c)) return c;
  }
}

Status Graph::validate() const {
  std::unordered_set<std::string> defined(inputs.begin(), inputs.end());
  for (const auto& [k, _] : initializers) defined.insert(k);
  std::unordered_set<std::string> node_names;
  for (const auto& [k, t] : initializers) {
    if (static_cast<size_t>(t.numel()) * dtype_size(t.dtype) != t.data.size())
      return BadInput("initializer '" + k + "' holds " + std::to_string(t.data.size()) + " bytes, its dtype " +
                      dtype_name(t.dtype) + " and shape need " +
                      std::to_string(static_cast<size_t>(t.numel()) * dtype_size(t.dtype)));
  }
  for (const auto& n : nodes) {
    if (!n.name.empty() && !node_names.insert(n.name).second)
      return BadInput("duplicate node name '" + n.name + "'");
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const auto& in = n.inputs[i];
      if (!in.empty() && !defined.count(in)) {
        std::string later;  // a later producer: the graph is out of order or has a cycle
        for (const auto& m : nodes)
          if (later.empty() && &m != &n && std::find(m.outputs.begin(), m.outputs.end(), in) != m.outputs.end())
            later = m.name;
        return BadInput("node '" + n.name + "' (" + n.qualified_op() + ") input " + std::to_string(i) + " '" + in +
                        "' is not defined before it (not a graph input, initializer or earlier output)" +
                        (later.empty() ? std::string()
                                       : "; it is produced by the later node '" + later +
                                             "' (the graph has a cycle or is not topologically sorted)"));
      }
    }
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      if (!defined.insert(o).second)
        return BadInput("value '" + o + "' is defined twice (again by node '" + n.name + "')");
    }
  }
  for (const auto& o : outputs)
    if (!defined.count(o)) return BadInput("graph output '" + o + "' is never produced");
  return Status::Ok();
}

Status Graph::topo_sort() {
  std::unordered_map<std::string, int> prod;
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& o : nodes[i].outputs)
      if (!o.empty()) prod[o] = static_cast<int>(i);
  const size_t n = nodes.size();
  std::vector<int> indeg(n, 0);
  std::vector<std::vector<int>> succ(n);
  for (size_t i = 0; i < n; ++i) {
    std::set<int> deps;
    for (const auto& in : nodes[i].inputs) {
      auto it = prod.find(in);
      if (it != prod.end()) deps.insert(it->second);
    }
    for (int d : deps) {
      succ[static_cast<size_t>(d)].push_back(static_cast<int>(i));
      ++indeg[i];
    }
  }
  // Stable Kahn: always take the lowest-index ready node.
  std::set<int> ready;
  for (size_t i = 0; i < n; ++i)
    if (indeg[i] == 0) ready.insert(static_cast<int>(i));
  std::vector<Node> out;
  out.reserve(n);
  while (!ready.empty()) {
    int i = *ready.begin();
    ready.erase(ready.begin());
    out.push_back(nodes[static_cast<size_t>(i)]);
    for (int s : succ[static_cast<size_t>(i)])
      if (--indeg[static_cast<size_t>(s)] == 0) ready.insert(s);
  }
  if (out.size() != n) {
    for (size_t i = 0; i < n; ++i)
      if (indeg[i] > 0) return BadInput("graph has a cycle through node '" + nodes[i].name + "'");
  }
  nodes = std::move(out);
  return Status::Ok();
}

std::map<std::string, int> Graph::op_histogram() const {
  std::map<std::string, int> h;
  for (const auto& n : nodes) ++h[n.qualified_op()];
  return h;
}

int64_t Graph::parameter_count() const {
  std::set<std::string> seen;
  int64_t total = 0;
  for (const auto& n : nodes)
    for (const auto& in : n.inputs) {
      const Tensor* t = constant(in);
      if (t && dtype_is_float(t->dtype) && seen.insert(in).second) total += t->numel();
    }
  return total;
}

}  // namespace kerf::ir
