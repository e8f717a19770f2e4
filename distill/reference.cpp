// kerf reference executor: kerf IR -> LibTorch (ATen), float32. See distill/reference.h.
#include "distill/reference.h"
#include "distill/reference_torch.h"

#include "distill/attention_train.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <utility>

namespace kerf::distill {
namespace {

using ir::DType;

// An error raised inside an op; converted to a Status naming the node at the run() boundary.
struct OpError : std::runtime_error {
  ErrorCode code;
  OpError(ErrorCode c, const std::string& m) : std::runtime_error(m), code(c) {}
};
[[noreturn]] void fail(const std::string& m, ErrorCode c = ErrorCode::kBadInput) { throw OpError(c, m); }

std::string node_label(const ir::Node& n) { return "node '" + n.name + "' (" + n.qualified_op() + ")"; }

// ------------------------------------------------------------------------------ dtypes / tensors

size_t elem_size(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kF64: case DType::kI64: return 8;
    case DType::kI8: case DType::kU8: case DType::kBool: return 1;
    default: return 0;
  }
}
enum class Kind { kFloat, kInt, kBool, kUnknown };
Kind kind_of(DType t) {
  switch (t) {
    case DType::kF32: case DType::kF16: case DType::kBF16: case DType::kF64: return Kind::kFloat;
    case DType::kI64: case DType::kI32: case DType::kI8: case DType::kU8: return Kind::kInt;
    case DType::kBool: return Kind::kBool;
    default: return Kind::kUnknown;
  }
}
const char* kind_name(Kind k) {
  return k == Kind::kFloat ? "float" : k == Kind::kInt ? "integer" : k == Kind::kBool ? "bool" : "unknown";
}
at::ScalarType storage_type(DType t) {
  switch (t) {
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF64: return at::kDouble;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI8: return at::kChar;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
    default: fail("tensor has an undefined dtype");
  }
}
at::ScalarType compute_type(Kind k) {
  return k == Kind::kFloat ? at::kFloat : k == Kind::kInt ? at::kLong : at::kBool;
}

// ir::Tensor -> ATen tensor in the compute type (f32 / i64 / bool). Throws OpError.
at::Tensor to_aten(const ir::Tensor& t) {
  const Kind k = kind_of(t.dtype);
  if (k == Kind::kUnknown) fail("tensor has an undefined dtype", ErrorCode::kInvalidArgument);
  int64_t n = 1;
  for (int64_t d : t.shape) {
    if (d < 0) fail("tensor has a negative dimension", ErrorCode::kInvalidArgument);
    n *= d;
  }
  if (t.data.size() != static_cast<size_t>(n) * elem_size(t.dtype))
    fail("tensor data holds " + std::to_string(t.data.size()) + " bytes, shape and dtype need " +
             std::to_string(static_cast<size_t>(n) * elem_size(t.dtype)),
         ErrorCode::kInvalidArgument);
  const at::ScalarType st = storage_type(t.dtype);
  if (n > 0 && reinterpret_cast<uintptr_t>(t.data.data()) % elem_size(t.dtype) == 0) {
    // View the bytes in place and convert (or copy) once: the result owns its memory.
    at::Tensor view = at::from_blob(const_cast<uint8_t*>(t.data.data()), t.shape, at::TensorOptions().dtype(st));
    return view.to(compute_type(k), /*non_blocking=*/false, /*copy=*/true);
  }
  at::Tensor raw = at::empty(t.shape, at::TensorOptions().dtype(st));
  if (n > 0) std::memcpy(raw.data_ptr(), t.data.data(), t.data.size());
  return raw.to(compute_type(k));
}

// ATen tensor -> ir::Tensor (f32 for any float, i64 for any integer, bool).
ir::Tensor from_aten(const at::Tensor& x) {
  at::Tensor c;
  ir::Tensor t;
  if (at::isFloatingType(x.scalar_type())) {
    c = x.to(at::kFloat).contiguous();
    t.dtype = DType::kF32;
  } else if (x.scalar_type() == at::kBool) {
    c = x.contiguous();
    t.dtype = DType::kBool;
  } else if (at::isIntegralType(x.scalar_type(), /*includeBool=*/false)) {
    c = x.to(at::kLong).contiguous();
    t.dtype = DType::kI64;
  } else {
    fail(std::string("cannot convert a tensor of type ") + c10::toString(x.scalar_type()));
  }
  t.shape.assign(c.sizes().begin(), c.sizes().end());
  t.data.resize(c.numel() * c.element_size());
  if (!t.data.empty()) std::memcpy(t.data.data(), c.data_ptr(), t.data.size());
  return t;
}

at::Tensor i64_1d(const std::vector<int64_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  return t;
}
std::vector<int64_t> to_vec(const at::Tensor& t, const char* what) {
  if (!t.defined()) fail(std::string(what) + " is missing");
  if (at::isFloatingType(t.scalar_type())) fail(std::string(what) + " must be an integer tensor");
  at::Tensor c = t.to(at::kLong).contiguous().reshape({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}
int64_t to_scalar_i64(const at::Tensor& t, const char* what) {
  if (!t.defined() || t.numel() != 1) fail(std::string(what) + " must hold exactly one value");
  return t.to(at::kLong).reshape({-1})[0].item<int64_t>();
}
bool is_int(const at::Tensor& t) { return at::isIntegralType(t.scalar_type(), /*includeBool=*/false); }

// ------------------------------------------------------------------------------ attributes

const ir::AttrValue* find_attr(const ir::Node& n, const char* k) {
  auto it = n.attrs.find(k);
  return it == n.attrs.end() ? nullptr : &it->second;
}
bool has_attr(const ir::Node& n, const char* k) { return find_attr(n, k) != nullptr; }
int64_t attr_int(const ir::Node& n, const char* k, int64_t def) {
  const ir::AttrValue* a = find_attr(n, k);
  if (!a) return def;
  if (auto* p = std::get_if<int64_t>(a)) return *p;
  if (auto* p = std::get_if<double>(a); p && std::floor(*p) == *p) return static_cast<int64_t>(*p);
  fail(std::string("attribute '") + k + "' must be an integer");
}
double attr_float(const ir::Node& n, const char* k, double def) {
  const ir::AttrValue* a = find_attr(n, k);
  if (!a) return def;
  if (auto* p = std::get_if<double>(a)) return *p;
  if (auto* p = std::get_if<int64_t>(a)) return static_cast<double>(*p);
  fail(std::string("attribute '") + k + "' must be a float");
}
std::string attr_string(const ir::Node& n, const char* k, const std::string& def) {
  const ir::AttrValue* a = find_attr(n, k);
  if (!a) return def;
  if (auto* p = std::get_if<std::string>(a)) return *p;
  fail(std::string("attribute '") + k + "' must be a string");
}
std::vector<int64_t> attr_ints(const ir::Node& n, const char* k) {
  const ir::AttrValue* a = find_attr(n, k);
  if (!a) return {};
  if (auto* p = std::get_if<std::vector<int64_t>>(a)) return *p;
  if (auto* p = std::get_if<int64_t>(a)) return {*p};
  fail(std::string("attribute '") + k + "' must be a list of integers");
}
int64_t require_int(const ir::Node& n, const char* k) {
  if (!has_attr(n, k)) fail(std::string("attribute '") + k + "' is required");
  return attr_int(n, k, 0);
}

int64_t norm_axis(int64_t a, int64_t rank, const char* what = "axis") {
  if (a < -rank || a >= std::max<int64_t>(rank, 1))
    fail(std::string(what) + " " + std::to_string(a) + " is out of range for rank " + std::to_string(rank));
  return a < 0 ? a + rank : a;
}

// ONNX TensorProto data type -> compute type.
bool onnx_cast_target(int64_t to, at::ScalarType* out) {
  switch (to) {
    case 1: case 10: case 11: case 16: *out = at::kFloat; return true;        // f32 f16 f64 bf16
    case 2: case 3: case 4: case 5: case 6: case 7: case 12: case 13: *out = at::kLong; return true;
    case 9: *out = at::kBool; return true;
    default: return false;
  }
}

// ------------------------------------------------------------------------------ executor state

struct KV {
  at::Tensor k, v;        // [B, G, P, Dh]: views of the first P positions of kbuf / vbuf when those are defined
  at::Tensor kbuf, vbuf;  // [B, G, capacity, Dh] growth buffers for incremental decoding (amortized O(1) append)
};
struct Step;
struct RunCtx {
  int64_t past;              // tokens in the KV caches before this run (Rotary positions start here)
  std::vector<KV>& staged;   // caches being built by this run; committed on success
  int64_t opset;
  const ReferenceExecutor::Observer* observer = nullptr;  // set while running an observed step
  size_t step_index = 0;
  bool training = false;     // forward_train: fused causal attention (distill/attention_train.h)
};

void observe(RunCtx& c, const std::string& node_name, const char* what, const at::Tensor& t) {
  if (!c.observer || !*c.observer) return;
  at::Tensor x = t.to(at::kFloat).contiguous();
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  ReferenceExecutor::Observation o;
  o.node_name = &node_name;
  o.node_index = c.step_index;
  o.what = what;
  o.data = x.data_ptr<float>();
  o.cols = cols;
  o.rows = cols ? x.numel() / cols : 0;
  (*c.observer)(o);
}
using Tensors = std::vector<at::Tensor>;
using OpFn = void (*)(RunCtx&, const Step&, const Tensors& in, Tensors& out);

struct Step {
  ir::Node node;               // copy: op, name, attrs (inputs/outputs resolved below)
  OpFn fn = nullptr;
  std::vector<int> in;         // slot per input; -1 = omitted optional input
  std::vector<int> out;        // slot per output
  std::vector<int> release;    // slots whose last reader is this step
  int cache = -1;              // Attention: index of its KV cache
};

const at::Tensor& in_at(const Tensors& in, size_t i, const char* what) {
  if (i >= in.size() || !in[i].defined()) fail(std::string("input ") + std::to_string(i) + " (" + what + ") is missing");
  return in[i];
}
const at::Tensor* opt_in(const Tensors& in, size_t i) {
  return i < in.size() && in[i].defined() ? &in[i] : nullptr;
}

// ------------------------------------------------------------------------------ ONNX ops

void op_identity(RunCtx&, const Step&, const Tensors& in, Tensors& out) { out[0] = in_at(in, 0, "input"); }

void op_shape(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "data");
  const int64_t r = x.dim();
  int64_t start = attr_int(s.node, "start", 0), end = attr_int(s.node, "end", r);
  if (start < 0) start += r;
  if (end < 0) end += r;
  start = std::clamp<int64_t>(start, 0, r);
  end = std::clamp<int64_t>(end, 0, r);
  std::vector<int64_t> v;
  for (int64_t i = start; i < end; ++i) v.push_back(x.size(i));
  out[0] = i64_1d(v);
}

void op_gather(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "data");
  at::Tensor idx = in_at(in, 1, "indices").to(at::kLong);
  const int64_t axis = norm_axis(attr_int(s.node, "axis", 0), x.dim());
  const int64_t dim = x.size(axis);
  idx = at::where(idx < 0, idx + dim, idx);
  if (idx.numel() > 0) {
    const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
    if (lo < 0 || hi >= dim)
      fail("index out of range [" + std::to_string(-dim) + ", " + std::to_string(dim) + ") on axis " +
           std::to_string(axis));
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().begin() + axis);
  for (int64_t d : idx.sizes()) shape.push_back(d);
  for (int64_t i = axis + 1; i < x.dim(); ++i) shape.push_back(x.size(i));
  out[0] = x.index_select(axis, idx.reshape({-1})).reshape(shape);
}

void op_unsqueeze(RunCtx& c, const Step& s, const Tensors& in, Tensors& out) {
  at::Tensor x = in_at(in, 0, "data");
  std::vector<int64_t> axes = opt_in(in, 1) ? to_vec(in[1], "axes") : attr_ints(s.node, "axes");
  if (axes.empty()) fail("axes are missing");
  const int64_t r = x.dim() + static_cast<int64_t>(axes.size());
  for (auto& a : axes) a = norm_axis(a, r, "axis");
  std::sort(axes.begin(), axes.end());
  if (std::adjacent_find(axes.begin(), axes.end()) != axes.end()) fail("duplicate axes");
  for (int64_t a : axes) x = x.unsqueeze(a);
  out[0] = x;
}

void op_squeeze(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  at::Tensor x = in_at(in, 0, "data");
  std::vector<int64_t> axes = opt_in(in, 1) ? to_vec(in[1], "axes") : attr_ints(s.node, "axes");
  if (axes.empty()) {
    std::vector<int64_t> shape;
    for (int64_t d : x.sizes()) if (d != 1) shape.push_back(d);
    out[0] = x.reshape(shape);
    return;
  }
  for (auto& a : axes) a = norm_axis(a, x.dim());
  std::sort(axes.rbegin(), axes.rend());
  if (std::adjacent_find(axes.begin(), axes.end()) != axes.end()) fail("duplicate axes");
  for (int64_t a : axes) {
    if (x.size(a) != 1) fail("cannot squeeze axis " + std::to_string(a) + " of size " + std::to_string(x.size(a)));
    x = x.squeeze(a);
  }
  out[0] = x;
}

void op_concat(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  if (in.empty()) fail("needs at least one input");
  for (size_t i = 0; i < in.size(); ++i) in_at(in, i, "input");
  const int64_t axis = norm_axis(require_int(s.node, "axis"), in[0].dim());
  out[0] = at::cat(in, axis);
}

void op_cast(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  at::ScalarType t;
  if (!onnx_cast_target(require_int(s.node, "to"), &t))
    fail("Cast to ONNX type " + std::to_string(attr_int(s.node, "to", 0)) + " is not supported", ErrorCode::kUnsupported);
  out[0] = in_at(in, 0, "input").to(t);
}

void op_constant_of_shape(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const std::vector<int64_t> shape = to_vec(in_at(in, 0, "shape"), "shape");
  for (int64_t d : shape) if (d < 0) fail("negative dimension in shape");
  const ir::AttrValue* a = find_attr(s.node, "value");
  if (!a) {
    out[0] = at::zeros(shape, at::kFloat);
    return;
  }
  const ir::Tensor* vt = std::get_if<ir::Tensor>(a);
  if (!vt) fail("attribute 'value' must be a tensor");
  at::Tensor v = to_aten(*vt);
  if (v.numel() != 1) fail("attribute 'value' must hold one element");
  out[0] = at::full(shape, v.reshape({-1})[0].item(), at::TensorOptions().dtype(v.scalar_type()));
}

template <int K>
void op_binary(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  const at::Tensor& a = in_at(in, 0, "A");
  const at::Tensor& b = in_at(in, 1, "B");
  switch (K) {
    case 0: out[0] = at::add(a, b); break;
    case 1: out[0] = at::sub(a, b); break;
    case 2: out[0] = at::mul(a, b); break;
    case 3: out[0] = (is_int(a) && is_int(b)) ? at::div(a, b, "trunc") : at::div(a, b); break;
    case 4: out[0] = at::pow(a, b).to(a.scalar_type()); break;  // ONNX: result has the base's type
    case 5: out[0] = at::eq(a, b); break;
    case 6: out[0] = at::lt(a, b); break;
    case 7: out[0] = at::gt(a, b); break;
    case 8: out[0] = at::logical_and(a, b); break;
    case 9: out[0] = at::logical_or(a, b); break;
  }
}

template <int K>
void op_unary(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "X");
  switch (K) {
    case 0: out[0] = at::sqrt(x); break;
    case 1: out[0] = at::reciprocal(x); break;
    case 2: out[0] = at::neg(x); break;
    case 3: out[0] = at::sigmoid(x); break;
    case 4: out[0] = at::exp(x); break;
    case 5: out[0] = at::log(x); break;
    case 6: out[0] = at::tanh(x); break;
    case 7: out[0] = at::relu(x); break;
    case 8: out[0] = at::abs(x); break;
    case 9: out[0] = at::erf(x); break;
    case 10: out[0] = at::sin(x); break;
    case 11: out[0] = at::cos(x); break;
    case 12: out[0] = at::logical_not(x); break;
  }
}

void op_where(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  at::Tensor cond = in_at(in, 0, "condition").to(at::kBool);
  at::Tensor x = in_at(in, 1, "X"), y = in_at(in, 2, "Y");
  if (x.scalar_type() != y.scalar_type()) {
    const at::ScalarType t = at::result_type(x, y);
    x = x.to(t);
    y = y.to(t);
  }
  out[0] = at::where(cond, x, y);
}

void op_reduce_mean(RunCtx& c, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "data");
  std::vector<int64_t> axes = opt_in(in, 1) ? to_vec(in[1], "axes") : attr_ints(s.node, "axes");
  const bool keep = attr_int(s.node, "keepdims", 1) != 0;
  if (axes.empty()) {
    if (attr_int(s.node, "noop_with_empty_axes", 0) != 0) {
      out[0] = x;
      return;
    }
    for (int64_t i = 0; i < x.dim(); ++i) axes.push_back(i);
  }
  for (auto& a : axes) a = norm_axis(a, x.dim());
  at::Tensor xf = at::isFloatingType(x.scalar_type()) ? x : x.to(at::kFloat);
  out[0] = at::mean(xf, axes, keep).to(x.scalar_type());
}

void op_matmul(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  out[0] = at::matmul(in_at(in, 0, "A"), in_at(in, 1, "B"));
}

void op_reshape(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "data");
  std::vector<int64_t> shape = to_vec(in_at(in, 1, "shape"), "shape");
  const bool allowzero = attr_int(s.node, "allowzero", 0) != 0;
  int64_t neg = 0;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      ++neg;
    } else if (shape[i] == 0 && !allowzero) {
      if (static_cast<int64_t>(i) >= x.dim()) fail("shape has 0 at index " + std::to_string(i) + " beyond the input's rank");
      shape[i] = x.size(i);
    } else if (shape[i] < 0) {
      fail("shape has invalid dimension " + std::to_string(shape[i]));
    }
  }
  if (neg > 1) fail("shape has more than one -1");
  if (allowzero && neg > 0 && std::count(shape.begin(), shape.end(), 0) > 0) fail("allowzero with both 0 and -1");
  out[0] = x.reshape(shape);
}

void op_transpose(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "data");
  std::vector<int64_t> perm = attr_ints(s.node, "perm");
  if (perm.empty())
    for (int64_t i = x.dim() - 1; i >= 0; --i) perm.push_back(i);
  if (static_cast<int64_t>(perm.size()) != x.dim()) fail("perm has the wrong length");
  out[0] = x.permute(perm);
}

void op_expand(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "input");
  const std::vector<int64_t> shape = to_vec(in_at(in, 1, "shape"), "shape");
  const int64_t r = std::max<int64_t>(x.dim(), static_cast<int64_t>(shape.size()));
  std::vector<int64_t> target(r);
  for (int64_t i = 0; i < r; ++i) {
    const int64_t ia = i - (r - x.dim()), ib = i - (r - static_cast<int64_t>(shape.size()));
    const int64_t a = ia >= 0 ? x.size(ia) : 1, b = ib >= 0 ? shape[ib] : 1;
    if (a == b || b == 1) target[i] = a;
    else if (a == 1) target[i] = b;
    else fail("cannot broadcast dimension " + std::to_string(a) + " to " + std::to_string(b));
  }
  out[0] = x.expand(target);
}

void op_softmax(RunCtx& c, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "input");
  if (c.opset >= 13) {
    out[0] = at::softmax(x, norm_axis(attr_int(s.node, "axis", -1), x.dim()));
  } else {  // opset < 13: coerced to 2-D at `axis`
    const int64_t axis = norm_axis(attr_int(s.node, "axis", 1), x.dim());
    int64_t rows = 1;
    for (int64_t i = 0; i < axis; ++i) rows *= x.size(i);
    out[0] = at::softmax(x.reshape({rows, -1}), 1).reshape(x.sizes());
  }
}

void op_slice(RunCtx& c, const Step& s, const Tensors& in, Tensors& out) {
  at::Tensor x = in_at(in, 0, "data");
  std::vector<int64_t> starts, ends, axes, steps;
  if (c.opset >= 10 && in.size() >= 3) {
    starts = to_vec(in_at(in, 1, "starts"), "starts");
    ends = to_vec(in_at(in, 2, "ends"), "ends");
    if (opt_in(in, 3)) axes = to_vec(in[3], "axes");
    if (opt_in(in, 4)) steps = to_vec(in[4], "steps");
  } else {
    starts = attr_ints(s.node, "starts");
    ends = attr_ints(s.node, "ends");
    axes = attr_ints(s.node, "axes");
  }
  if (starts.size() != ends.size()) fail("starts and ends differ in length");
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (axes.size() != starts.size() || steps.size() != starts.size()) fail("axes/steps length mismatch");
  for (size_t i = 0; i < starts.size(); ++i) {
    const int64_t axis = norm_axis(axes[i], x.dim());
    const int64_t d = x.size(axis), step = steps[i];
    if (step == 0) fail("step 0");
    int64_t st = starts[i], en = ends[i];
    if (st < 0) st += d;  // cannot overflow: d >= 0
    if (en < 0) en += d;
    if (step > 0) {
      st = std::clamp<int64_t>(st, 0, d);
      en = std::clamp<int64_t>(en, 0, d);
      x = x.slice(axis, st, std::max(st, en), step);
    } else {
      std::vector<int64_t> idx;
      if (d > 0) {
        st = std::clamp<int64_t>(st, 0, d - 1);
        en = std::clamp<int64_t>(en, -1, d - 1);
        for (int64_t j = st; j > en; j += step) idx.push_back(j);
      }
      x = x.index_select(axis, i64_1d(idx));
    }
  }
  out[0] = x;
}

void op_trilu(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "input");
  if (x.dim() < 2) fail("input must have rank >= 2");
  const int64_t k = opt_in(in, 1) ? to_scalar_i64(in[1], "k") : 0;
  out[0] = attr_int(s.node, "upper", 1) != 0 ? at::triu(x, k) : at::tril(x, k);
}

void op_range(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  const at::Tensor& a = in_at(in, 0, "start");
  const at::Tensor& b = in_at(in, 1, "limit");
  const at::Tensor& d = in_at(in, 2, "delta");
  if (a.numel() != 1 || b.numel() != 1 || d.numel() != 1) fail("start, limit and delta must be scalars");
  if (is_int(a)) {
    const int64_t st = to_scalar_i64(a, "start"), li = to_scalar_i64(b, "limit"), de = to_scalar_i64(d, "delta");
    if (de == 0) fail("delta is 0");
    const int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(static_cast<double>(li - st) / de)));
    out[0] = at::arange(n, at::kLong).mul(de).add(st);
  } else {
    const double st = a.to(at::kDouble).item<double>(), li = b.to(at::kDouble).item<double>(),
                 de = d.to(at::kDouble).item<double>();
    if (de == 0) fail("delta is 0");
    const int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((li - st) / de)));
    out[0] = at::arange(n, at::kDouble).mul(de).add(st).to(a.scalar_type());
  }
}

// QuantizeLinear / DequantizeLinear (opsets 13-21): per tensor (scalar scale) or per axis (a 1-D
// scale along `axis`); blocked quantization (block_size > 0) and float8 are not supported. Integer
// values are int64 here, so a QuantizeLinear's saturation range is the ONNX type in its output_dtype
// attribute, which create() sets from the zero point's initializer when the node has none.
bool onnx_quant_range(int64_t type, int64_t* lo, int64_t* hi) {
  switch (type) {
    case 2: *lo = 0, *hi = 255; return true;          // UINT8
    case 3: *lo = -128, *hi = 127; return true;       // INT8
    case 4: *lo = 0, *hi = 65535; return true;        // UINT16
    case 5: *lo = -32768, *hi = 32767; return true;   // INT16
    case 21: *lo = 0, *hi = 15; return true;          // UINT4
    case 22: *lo = -8, *hi = 7; return true;          // INT4
    default: return false;
  }
}
at::Tensor quant_param(const at::Tensor& p, const at::Tensor& x, const Step& s, const char* what) {
  if (attr_int(s.node, "block_size", 0) != 0) fail("blocked quantization (block_size > 0) is not supported", ErrorCode::kUnsupported);
  if (p.dim() == 0) return p;
  if (p.dim() != 1) fail(std::string(what) + " must be a scalar or 1-D");
  const int64_t axis = norm_axis(attr_int(s.node, "axis", 1), x.dim());
  if (p.size(0) != x.size(axis))
    fail(std::string(what) + " has " + std::to_string(p.size(0)) + " values, axis " + std::to_string(axis) + " has " +
         std::to_string(x.size(axis)));
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[static_cast<size_t>(axis)] = p.size(0);
  return p.reshape(shape);
}

// y = saturate(round_half_to_even(x / y_scale) + y_zero_point); NaN -> 0.
void op_quantize_linear(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "x");
  if (!at::isFloatingType(x.scalar_type())) fail("x must be a float tensor");
  int64_t lo = 0, hi = 0;
  if (!onnx_quant_range(attr_int(s.node, "output_dtype", 2), &lo, &hi))
    fail("output type " + std::to_string(attr_int(s.node, "output_dtype", 2)) + " is not supported", ErrorCode::kUnsupported);
  at::Tensor q = at::round(at::div(x.to(at::kFloat), quant_param(in_at(in, 1, "y_scale"), x, s, "y_scale").to(at::kFloat)));
  if (const at::Tensor* zp = opt_in(in, 2)) q = q + quant_param(*zp, x, s, "y_zero_point").to(at::kFloat);
  out[0] = at::nan_to_num(q, 0.0, static_cast<double>(hi), static_cast<double>(lo)).clamp(lo, hi).to(at::kLong);
}

// y = (x - x_zero_point) * x_scale, float32.
void op_dequantize_linear(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "x");
  if (!is_int(x)) fail("x must be an integer tensor", ErrorCode::kUnsupported);
  at::Tensor d = x.to(at::kLong);
  if (const at::Tensor* zp = opt_in(in, 2)) d = d - quant_param(*zp, x, s, "x_zero_point").to(at::kLong);
  out[0] = d.to(at::kFloat) * quant_param(in_at(in, 1, "x_scale"), x, s, "x_scale").to(at::kFloat);
}

// ------------------------------------------------------------------------------ kerf ops

void op_embedding(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  const at::Tensor& tok = in_at(in, 0, "tokens");
  const at::Tensor& table = in_at(in, 1, "table");
  if (!is_int(tok)) fail("tokens must be integers");
  if (table.dim() != 2) fail("table must be [V, D]");
  const int64_t V = table.size(0);
  if (tok.numel() > 0) {
    const int64_t lo = tok.min().item<int64_t>(), hi = tok.max().item<int64_t>();
    if (lo < 0 || hi >= V)
      fail("token id " + std::to_string(lo < 0 ? lo : hi) + " is out of range [0, " + std::to_string(V) + ")",
           ErrorCode::kInvalidArgument);
  }
  std::vector<int64_t> shape(tok.sizes().begin(), tok.sizes().end());
  shape.push_back(table.size(1));
  out[0] = table.index_select(0, tok.reshape({-1}).to(at::kLong)).reshape(shape);
}

void op_rmsnorm(RunCtx&, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "x");
  const at::Tensor& w = in_at(in, 1, "weight");
  const double eps = attr_float(s.node, "eps", 1e-5);
  // Same expression as the Llama reference: x * rsqrt(mean(x^2) + eps), then * weight.
  out[0] = x * at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps) * w;
}

void op_linear(RunCtx&, const Step&, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "x");
  const at::Tensor& w = in_at(in, 1, "weight");
  if (w.dim() != 2 || x.dim() < 1 || x.size(-1) != w.size(1))
    fail("x [..., " + std::to_string(x.dim() ? x.size(-1) : 0) + "] does not match weight [N, K] = " +
         c10::str(w.sizes()));
  const at::Tensor* b = opt_in(in, 2);
  out[0] = b ? at::linear(x, w, *b) : at::linear(x, w);
}

void op_rotary(RunCtx& c, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "x");
  const int64_t dh = require_int(s.node, "head_dim");
  const double theta = attr_float(s.node, "theta", 10000.0);
  const bool interleaved = attr_int(s.node, "interleaved", 1) != 0;
  if (x.dim() != 3) fail("x must be [B, T, H*Dh], got " + c10::str(x.sizes()));
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  if (dh <= 0 || dh % 2 != 0 || C % dh != 0)
    fail("head_dim " + std::to_string(dh) + " must be even and divide " + std::to_string(C));
  const int64_t H = C / dh;
  // Computed like the Llama reference (float32): inv_freq = 1 / theta^(2i/Dh); angle = pos * inv_freq.
  at::Tensor inv = at::reciprocal(at::pow(theta, at::arange(0, dh, 2, at::kFloat).div(static_cast<double>(dh))));
  at::Tensor pos = at::arange(c.past, c.past + T, at::kFloat);
  at::Tensor ang = at::outer(pos, inv);                     // [T, Dh/2]
  at::Tensor cs = at::cos(ang).view({1, T, 1, dh / 2});
  at::Tensor sn = at::sin(ang).view({1, T, 1, dh / 2});
  if (interleaved) {
    at::Tensor xr = x.reshape({B, T, H, dh / 2, 2});
    at::Tensor a = xr.select(-1, 0), b = xr.select(-1, 1);
    out[0] = at::stack({a * cs - b * sn, a * sn + b * cs}, -1).reshape({B, T, C});
  } else {
    at::Tensor xr = x.reshape({B, T, H, dh});
    at::Tensor a = xr.narrow(-1, 0, dh / 2), b = xr.narrow(-1, dh / 2, dh / 2);
    out[0] = at::cat({a * cs - b * sn, a * sn + b * cs}, -1).reshape({B, T, C});
  }
}

void op_attention(RunCtx& c, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& q = in_at(in, 0, "q");
  const at::Tensor& k = in_at(in, 1, "k");
  const at::Tensor& v = in_at(in, 2, "v");
  const int64_t H = require_int(s.node, "n_heads"), G = require_int(s.node, "n_kv_heads"),
                dh = require_int(s.node, "head_dim");
  const double scale = attr_float(s.node, "scale", 1.0 / std::sqrt(static_cast<double>(dh)));
  const bool causal = attr_int(s.node, "causal", 1) != 0;
  if (q.dim() != 3 || k.dim() != 3 || v.dim() != 3) fail("q, k, v must be [B, T, heads*Dh]");
  const int64_t B = q.size(0), T = q.size(1);
  if (q.size(2) != H * dh || k.sizes() != at::IntArrayRef({B, T, G * dh}) || v.sizes() != k.sizes())
    fail("shapes q " + c10::str(q.sizes()) + ", k " + c10::str(k.sizes()) + ", v " + c10::str(v.sizes()) +
         " do not match n_heads " + std::to_string(H) + ", n_kv_heads " + std::to_string(G) + ", head_dim " +
         std::to_string(dh));
  if (c.training && causal && !c.staged[s.cache].k.defined() && q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
      v.scalar_type() == at::kFloat && H % G == 0) {
    // Training forward from position 0: no score tensors materialized, custom backward.
    out[0] = causal_gqa_attention(q, k, v, H, G, dh, scale);
    return;
  }
  at::Tensor qh = q.view({B, T, H, dh}).transpose(1, 2);                 // [B, H, T, Dh]
  at::Tensor kh = k.reshape({B, T, G, dh}).transpose(1, 2);              // [B, G, T, Dh]
  at::Tensor vh = v.reshape({B, T, G, dh}).transpose(1, 2);
  KV& kv = c.staged[s.cache];
  int64_t P = 0;
  if (kv.k.defined()) {
    if (kv.k.size(0) != B)
      fail("batch size " + std::to_string(B) + " differs from the KV cache's " + std::to_string(kv.k.size(0)) +
               " (call reset_cache() first)",
           ErrorCode::kInvalidArgument);
    P = kv.k.size(2);
    if (at::GradMode::is_enabled() && (kh.requires_grad() || vh.requires_grad())) {
      kh = at::cat({kv.k, kh}, 2);
      vh = at::cat({kv.v, vh}, 2);
    } else {
      // Append into a growth buffer: positions >= P of the buffer are not part of any committed
      // cache (committed views end at their own length), so writing there leaves them unchanged.
      if (!kv.kbuf.defined() || kv.kbuf.size(2) < P + T || kv.kbuf.data_ptr() != kv.k.data_ptr()) {
        const int64_t cap = std::max<int64_t>(2 * (P + T), 64);
        at::Tensor kb = at::empty({B, G, cap, dh}, kh.options()), vb = at::empty({B, G, cap, dh}, vh.options());
        kb.narrow(2, 0, P).copy_(kv.k);
        vb.narrow(2, 0, P).copy_(kv.v);
        kv.kbuf = kb;
        kv.vbuf = vb;
      }
      kv.kbuf.narrow(2, P, T).copy_(kh);
      kv.vbuf.narrow(2, P, T).copy_(vh);
      kh = kv.kbuf.narrow(2, 0, P + T);
      vh = kv.vbuf.narrow(2, 0, P + T);
    }
  } else {
    kh = kh.contiguous();
    vh = vh.contiguous();
  }
  kv.k = kh;
  kv.v = vh;
  const int64_t L = P + T;
  // GQA without copying K/V: query head h = g * (H/G) + j reads KV head g, so the queries of a group
  // are stacked as [B, G, (H/G) * T, Dh] against that group's [B, G, L, Dh].
  const int64_t per = H / G;
  at::Tensor qg = qh.reshape({B, G, per * T, dh});
  at::Tensor scores = at::matmul(qg, kh.transpose(-1, -2)).mul_(scale).view({B, H, T, L});  // [B, H, T, L]
  if (causal) {
    at::Tensor mask = at::ones({T, L}, at::kBool).triu(P + 1);  // key j > P + i is masked
    scores.masked_fill_(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1).view({B, G, per * T, L});
  out[0] = at::matmul(probs, vh).view({B, H, T, dh}).transpose(1, 2).reshape({B, T, H * dh});
}

void op_gated_ffn(RunCtx& c, const Step& s, const Tensors& in, Tensors& out) {
  const at::Tensor& x = in_at(in, 0, "x");
  const at::Tensor& w1 = in_at(in, 1, "w1");
  const at::Tensor& w3 = in_at(in, 2, "w3");
  const at::Tensor& w2 = in_at(in, 3, "w2");
  const std::string act = attr_string(s.node, "activation", "silu");
  at::Tensor g = at::linear(x, w1);
  if (act == "silu") g = at::silu(g);
  else if (act == "gelu") g = at::gelu(g);
  else if (act == "gelu_tanh") g = at::gelu(g, "tanh");
  else if (act == "relu") g = at::relu(g);
  else fail("activation '" + act + "' is not supported", ErrorCode::kUnsupported);
  at::Tensor h = g * at::linear(x, w3);
  if (c.observer) observe(c, s.node.name, "ffn_hidden", h);
  out[0] = at::linear(h, w2);
}

const std::unordered_map<std::string, OpFn>& onnx_ops() {
  static const std::unordered_map<std::string, OpFn> m = {
      {"Identity", op_identity},     {"Shape", op_shape},
      {"Gather", op_gather},         {"Unsqueeze", op_unsqueeze},
      {"Squeeze", op_squeeze},       {"Concat", op_concat},
      {"Cast", op_cast},             {"ConstantOfShape", op_constant_of_shape},
      {"Add", op_binary<0>},         {"Sub", op_binary<1>},
      {"Mul", op_binary<2>},         {"Div", op_binary<3>},
      {"Pow", op_binary<4>},         {"Equal", op_binary<5>},
      {"Less", op_binary<6>},        {"Greater", op_binary<7>},
      {"And", op_binary<8>},         {"Or", op_binary<9>},
      {"Sqrt", op_unary<0>},         {"Reciprocal", op_unary<1>},
      {"Neg", op_unary<2>},          {"Sigmoid", op_unary<3>},
      {"Exp", op_unary<4>},          {"Log", op_unary<5>},
      {"Tanh", op_unary<6>},         {"Relu", op_unary<7>},
      {"Abs", op_unary<8>},          {"Erf", op_unary<9>},
      {"Sin", op_unary<10>},         {"Cos", op_unary<11>},
      {"Not", op_unary<12>},         {"Where", op_where},
      {"ReduceMean", op_reduce_mean}, {"MatMul", op_matmul},
      {"Reshape", op_reshape},       {"Transpose", op_transpose},
      {"Expand", op_expand},         {"Softmax", op_softmax},
      {"Slice", op_slice},           {"Trilu", op_trilu},
      {"Range", op_range},
      {"QuantizeLinear", op_quantize_linear}, {"DequantizeLinear", op_dequantize_linear},
  };
  return m;
}
const std::unordered_map<std::string, OpFn>& kerf_ops() {
  static const std::unordered_map<std::string, OpFn> m = {
      {"Embedding", op_embedding}, {"RMSNorm", op_rmsnorm},   {"Linear", op_linear},
      {"Rotary", op_rotary},       {"Attention", op_attention}, {"GatedFFN", op_gated_ffn},
  };
  return m;
}

// Constant node -> tensor (Constant nodes are folded at create()).
at::Tensor constant_value(const ir::Node& n) {
  if (const ir::AttrValue* a = find_attr(n, "value")) {
    if (auto* t = std::get_if<ir::Tensor>(a)) return to_aten(*t);
    fail("attribute 'value' must be a tensor");
  }
  if (has_attr(n, "value_float")) return at::scalar_tensor(attr_float(n, "value_float", 0), at::kFloat);
  if (has_attr(n, "value_int")) return at::scalar_tensor(attr_int(n, "value_int", 0), at::kLong);
  if (has_attr(n, "value_ints")) return i64_1d(attr_ints(n, "value_ints"));
  if (const ir::AttrValue* a = find_attr(n, "value_floats")) {
    const auto* v = std::get_if<std::vector<double>>(a);
    if (!v) fail("attribute 'value_floats' must be a list of floats");
    return at::tensor(c10::ArrayRef<double>(*v), at::kDouble).to(at::kFloat);
  }
  fail("Constant has no supported value attribute", ErrorCode::kUnsupported);
}

int resolve_threads(int t) {
  if (t > 0) return t;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

}  // namespace

// ------------------------------------------------------------------------------ Impl

struct ReferenceExecutor::Impl {
  std::vector<std::string> input_names, output_names;
  std::vector<int> input_slots, output_slots;
  std::vector<ir::ValueInfo> input_infos;     // declared types of the graph inputs (may be unknown)
  std::vector<std::string> slot_names;
  std::vector<at::Tensor> constants;          // per slot; defined for initializers / Constant nodes
  std::vector<Step> steps;
  std::vector<KV> caches;                     // one per Attention node
  int64_t opset = 17;
  int threads = 1;
  std::unordered_map<std::string, int> initializer_slots;
  std::vector<at::Tensor> train_constants;    // forward_train: normal (non-inference) copies
  ReferenceExecutor::Observer observer;
  std::vector<bool> observed;                 // per step
  size_t prefix_steps = 0;                    // > 0 while forward_prefix runs
  std::vector<bool> pinned;                   // per slot: not released after its last reader (forward_train taps)
  bool training = false;                      // inside forward_train

  // Runs steps 0..n_steps-1 on `env`; `staged` caches are updated (caller decides to commit).
  Status run_steps(std::vector<at::Tensor>& env, std::vector<KV>& staged, size_t n_steps);

  int64_t cached_tokens() const {
    return caches.empty() || !caches[0].k.defined() ? 0 : caches[0].k.size(2);
  }
};

ReferenceExecutor::ReferenceExecutor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ReferenceExecutor::ReferenceExecutor(ReferenceExecutor&&) noexcept = default;
ReferenceExecutor& ReferenceExecutor::operator=(ReferenceExecutor&&) noexcept = default;
ReferenceExecutor::~ReferenceExecutor() = default;

Result<ReferenceExecutor> ReferenceExecutor::create(const ir::Graph& graph, const ReferenceOptions& opt) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.opset = graph.opset > 0 ? graph.opset : 17;
  m.threads = resolve_threads(opt.threads);
  if (opt.threads < 0) return InvalidArgument("ReferenceOptions::threads must be >= 0");

  std::unordered_map<std::string, int> slot;
  auto new_slot = [&](const std::string& name) {
    const int id = static_cast<int>(m.slot_names.size());
    slot.emplace(name, id);
    m.slot_names.push_back(name);
    m.constants.emplace_back();
    return id;
  };

  try {
    c10::InferenceMode guard;
    // Initializers first; a graph input with the same name overrides it when fed (IR < 4 style).
    for (const auto& [name, t] : graph.initializers) {
      const int id = new_slot(name);
      m.initializer_slots.emplace(name, id);
      try {
        m.constants[id] = to_aten(t);
      } catch (const OpError& e) {
        return Status(ErrorCode::kBadInput, "initializer '" + name + "': " + e.what());
      }
    }
    for (const std::string& name : graph.inputs) {
      auto it = slot.find(name);
      const int id = it != slot.end() ? it->second : new_slot(name);
      m.input_names.push_back(name);
      m.input_slots.push_back(id);
      auto vi = graph.values.find(name);
      m.input_infos.push_back(vi != graph.values.end() ? vi->second : ir::ValueInfo{});
    }
    std::vector<int> last_use;  // filled after the walk
    for (const ir::Node& n : graph.nodes) {
      const std::string label = node_label(n);
      const bool onnx_domain = n.domain.empty() || n.domain == "ai.onnx";
      if (onnx_domain && n.op == "Constant") {
        if (n.outputs.size() != 1 || n.outputs[0].empty()) return BadInput(label + ": needs exactly one output");
        if (slot.count(n.outputs[0])) return BadInput(label + ": value '" + n.outputs[0] + "' is defined twice");
        try {
          at::Tensor v = constant_value(n);
          m.constants[new_slot(n.outputs[0])] = v;
        } catch (const OpError& e) {
          return Status(e.code, label + ": " + e.what());
        }
        continue;
      }
      const auto& table = onnx_domain ? onnx_ops() : n.domain == "kerf" ? kerf_ops() : onnx_ops();
      auto fit = (onnx_domain || n.domain == "kerf") ? table.find(n.op) : table.end();
      if (fit == table.end())
        return Unsupported(label + ": op '" + n.qualified_op() + "' is not supported by the reference executor");
      Step st;
      st.fn = fit->second;
      st.node.op = n.op;
      st.node.domain = n.domain;
      st.node.name = n.name;
      st.node.attrs = n.attrs;
      st.node.inputs = n.inputs;
      st.node.outputs = n.outputs;
      for (const std::string& in : n.inputs) {
        if (in.empty()) {
          st.in.push_back(-1);
          continue;
        }
        auto it = slot.find(in);
        if (it == slot.end()) return BadInput(label + ": input '" + in + "' is not defined before use");
        st.in.push_back(it->second);
      }
      for (const std::string& out : n.outputs) {
        if (out.empty()) {
          st.out.push_back(-1);
          continue;
        }
        if (slot.count(out)) return BadInput(label + ": value '" + out + "' is defined twice");
        st.out.push_back(new_slot(out));
      }
      if (st.out.empty()) return BadInput(label + ": has no outputs");
      // Static checks that need no data.
      try {
        if (onnx_domain && n.op == "Cast") {
          at::ScalarType t;
          if (!onnx_cast_target(require_int(n, "to"), &t))
            return Unsupported(label + ": Cast to ONNX type " + std::to_string(attr_int(n, "to", 0)) +
                               " is not supported");
        }
        if (n.domain == "kerf" && n.op == "Attention") {
          const int64_t H = require_int(n, "n_heads"), G = require_int(n, "n_kv_heads"), dh = require_int(n, "head_dim");
          if (H <= 0 || G <= 0 || dh <= 0 || H % G != 0)
            return BadInput(label + ": n_heads must be a positive multiple of n_kv_heads, head_dim positive");
          if (n.inputs.size() != 3) return BadInput(label + ": needs inputs q, k, v");
          st.cache = static_cast<int>(m.caches.size());
          m.caches.emplace_back();
        }
        if (n.domain == "kerf" && n.op == "Rotary") require_int(n, "head_dim");
        if (onnx_domain && n.op == "QuantizeLinear") {
          // The output type (integers are int64 here): output_dtype, else the zero point's type, else uint8.
          if (!has_attr(n, "output_dtype")) {
            int64_t t = 2;
            if (n.inputs.size() >= 3 && !n.inputs[2].empty()) {
              auto zi = graph.initializers.find(n.inputs[2]);
              if (zi == graph.initializers.end() || (zi->second.dtype != DType::kI8 && zi->second.dtype != DType::kU8))
                return Unsupported(label + ": the zero point '" + n.inputs[2] +
                                   "' must be an int8 / uint8 initializer (its type is the output type), or give output_dtype");
              t = zi->second.dtype == DType::kI8 ? 3 : 2;
            }
            st.node.attrs["output_dtype"] = ir::AttrValue(t);
          }
          int64_t lo, hi;
          if (!onnx_quant_range(attr_int(st.node, "output_dtype", 2), &lo, &hi))
            return Unsupported(label + ": output type " + std::to_string(attr_int(st.node, "output_dtype", 2)) +
                               " is not supported (uint8, int8, uint16, int16, uint4, int4)");
        }
      } catch (const OpError& e) {
        return Status(e.code, label + ": " + e.what());
      }
      m.steps.push_back(std::move(st));
    }
    for (const std::string& name : graph.outputs) {
      auto it = slot.find(name);
      if (it == slot.end()) return BadInput("graph output '" + name + "' is never produced");
      m.output_names.push_back(name);
      m.output_slots.push_back(it->second);
    }
    // Release each intermediate value after its last reader (not constants, not graph outputs).
    last_use.assign(m.slot_names.size(), -1);
    for (size_t i = 0; i < m.steps.size(); ++i)
      for (int s : m.steps[i].in)
        if (s >= 0) last_use[s] = static_cast<int>(i);
    std::vector<bool> keep(m.slot_names.size(), false);
    for (int s : m.output_slots) keep[s] = true;
    for (size_t s = 0; s < m.slot_names.size(); ++s)
      if (!keep[s] && !m.constants[s].defined() && last_use[s] >= 0) m.steps[last_use[s]].release.push_back(static_cast<int>(s));
  } catch (const c10::Error& e) {
    return Internal(std::string("reference executor: preparing the graph: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("reference executor: preparing the graph: ") + e.what());
  }
  at::set_num_threads(m.threads);
  return ReferenceExecutor(std::move(impl));
}

Result<std::vector<ir::Tensor>> ReferenceExecutor::run(const std::map<std::string, ir::Tensor>& inputs) {
  Impl& m = *impl_;
  for (const auto& [name, t] : inputs)
    if (std::find(m.input_names.begin(), m.input_names.end(), name) == m.input_names.end())
      return InvalidArgument("'" + name + "' is not an input of the graph");
  if (at::get_num_threads() != m.threads) at::set_num_threads(m.threads);
  try {
    c10::InferenceMode guard;
    std::vector<at::Tensor> env = m.constants;
    for (size_t i = 0; i < m.input_names.size(); ++i) {
      const std::string& name = m.input_names[i];
      const ir::ValueInfo& vi = m.input_infos[i];
      auto it = inputs.find(name);
      if (it == inputs.end()) {
        if (m.constants[m.input_slots[i]].defined()) continue;  // initializer acts as the default
        return InvalidArgument("graph input '" + name + "' is missing");
      }
      const ir::Tensor& t = it->second;
      const Kind want = kind_of(vi.dtype), got = kind_of(t.dtype);
      if (want != Kind::kUnknown && got != want)
        return InvalidArgument("graph input '" + name + "' must be a " + kind_name(want) + " tensor, got " +
                               kind_name(got));
      if (vi.rank_known) {
        bool ok = vi.shape.size() == t.shape.size();
        for (size_t d = 0; ok && d < t.shape.size(); ++d)
          if (vi.shape[d].is_static() && vi.shape[d].value != t.shape[d]) ok = false;
        if (!ok) {
          std::string got_s = "[";
          for (size_t d = 0; d < t.shape.size(); ++d) got_s += (d ? "," : "") + std::to_string(t.shape[d]);
          return InvalidArgument("graph input '" + name + "' has shape " + got_s + "], expected " +
                                 ir::shape_to_string(vi.shape));
        }
      }
      try {
        env[m.input_slots[i]] = to_aten(t);
      } catch (const OpError& e) {
        return Status(e.code, "graph input '" + name + "': " + e.what());
      }
    }
    std::vector<KV> staged = m.caches;
    KERF_RETURN_IF_ERROR(m.run_steps(env, staged, m.prefix_steps > 0 ? m.prefix_steps : m.steps.size()));
    if (m.prefix_steps > 0) return std::vector<ir::Tensor>{};  // forward_prefix: no outputs, no commit
    std::vector<ir::Tensor> result;
    result.reserve(m.output_slots.size());
    for (size_t i = 0; i < m.output_slots.size(); ++i) {
      const at::Tensor& t = env[m.output_slots[i]];
      if (!t.defined()) return Internal("graph output '" + m.output_names[i] + "' was not computed");
      result.push_back(from_aten(t));
    }
    m.caches = std::move(staged);  // commit the KV caches only after a successful run
    return result;
  } catch (const OpError& e) {
    return Status(e.code, std::string("reference executor: ") + e.what());
  } catch (const c10::Error& e) {
    return Internal(std::string("reference executor: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("reference executor: ") + e.what());
  }
}

Status ReferenceExecutor::Impl::run_steps(std::vector<at::Tensor>& env, std::vector<KV>& staged, size_t n_steps) {
  RunCtx ctx{cached_tokens(), staged, opset};
  ctx.training = training;
  Tensors in, out;
  for (size_t i = 0; i < n_steps && i < steps.size(); ++i) {
    const Step& st = steps[i];
    in.clear();
    for (size_t j = 0; j < st.in.size(); ++j) {
      const int s = st.in[j];
      if (s >= 0 && !env[s].defined())
        return Internal(node_label(st.node) + ": input '" + st.node.inputs[j] + "' was not computed");
      in.push_back(s >= 0 ? env[s] : at::Tensor());
    }
    out.assign(st.out.size(), at::Tensor());
    const bool obs = observer && i < observed.size() && observed[i];
    ctx.observer = obs ? &observer : nullptr;
    ctx.step_index = i;
    try {
      if (obs && !in.empty() && in[0].defined()) observe(ctx, st.node.name, "x", in[0]);
      st.fn(ctx, st, in, out);
    } catch (const OpError& e) {
      return Status(e.code, node_label(st.node) + ": " + e.what());
    } catch (const c10::Error& e) {
      return BadInput(node_label(st.node) + ": " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      return BadInput(node_label(st.node) + ": " + e.what());
    }
    for (size_t j = 0; j < st.out.size(); ++j)
      if (st.out[j] >= 0) env[st.out[j]] = std::move(out[j]);
    for (int s : st.release)
      if (pinned.empty() || !pinned[static_cast<size_t>(s)]) env[s].reset();
  }
  return Status::Ok();
}

void ReferenceExecutor::set_observer(Observer obs, std::vector<size_t> node_indices) {
  Impl& m = *impl_;
  m.observer = std::move(obs);
  m.observed.assign(m.steps.size(), false);
  for (size_t i : node_indices) {
    if (i >= m.steps.size()) continue;
    const ir::Node& n = m.steps[i].node;
    if (n.domain == "kerf" && (n.op == "Linear" || n.op == "GatedFFN")) m.observed[i] = true;
  }
}

int64_t ReferenceExecutor::node_index(const std::string& name) const {
  for (size_t i = 0; i < impl_->steps.size(); ++i)
    if (impl_->steps[i].node.name == name) return static_cast<int64_t>(i);
  return -1;
}
const std::string& ReferenceExecutor::node_name(size_t i) const { return impl_->steps.at(i).node.name; }
const std::string& ReferenceExecutor::node_op(size_t i) const { return impl_->steps.at(i).node.op; }
const std::vector<std::string>& ReferenceExecutor::node_inputs(size_t i) const { return impl_->steps.at(i).node.inputs; }

Status ReferenceExecutor::forward_prefix(const std::vector<int64_t>& tokens, size_t last_node) {
  Impl& m = *impl_;
  if (last_node >= m.steps.size())
    return InvalidArgument("forward_prefix: node " + std::to_string(last_node) + " is beyond the " +
                           std::to_string(m.steps.size()) + " nodes of the graph");
  return forward_prefix_batch(tokens, 1, static_cast<int64_t>(tokens.size()), last_node);
}

Status ReferenceExecutor::set_weight(const std::string& name, const std::vector<float>& values) {
  Impl& m = *impl_;
  auto it = m.initializer_slots.find(name);
  if (it == m.initializer_slots.end()) return InvalidArgument("set_weight: '" + name + "' is not an initializer");
  at::Tensor& cur = m.constants[it->second];
  if (cur.numel() != static_cast<int64_t>(values.size()))
    return InvalidArgument("set_weight: '" + name + "' has " + std::to_string(cur.numel()) + " elements, got " +
                           std::to_string(values.size()));
  try {
    c10::InferenceMode guard;
    at::Tensor t = at::empty(cur.sizes(), at::kFloat);
    std::memcpy(t.data_ptr<float>(), values.data(), values.size() * sizeof(float));
    cur = t;
    m.train_constants.clear();
  } catch (const c10::Error& e) {
    return Internal(std::string("set_weight: ") + e.what_without_backtrace());
  }
  return Status::Ok();
}

Result<std::vector<float>> ReferenceExecutor::weight(const std::string& name, std::vector<int64_t>* shape) const {
  const Impl& m = *impl_;
  auto it = m.initializer_slots.find(name);
  if (it == m.initializer_slots.end()) return InvalidArgument("weight: '" + name + "' is not an initializer");
  try {
    c10::InferenceMode guard;
    at::Tensor t = m.constants[it->second].to(at::kFloat).contiguous();
    if (shape) shape->assign(t.sizes().begin(), t.sizes().end());
    std::vector<float> v(static_cast<size_t>(t.numel()));
    if (!v.empty()) std::memcpy(v.data(), t.data_ptr<float>(), v.size() * sizeof(float));
    return v;
  } catch (const c10::Error& e) {
    return Internal(std::string("weight: ") + e.what_without_backtrace());
  }
}

Result<std::vector<float>> ReferenceExecutor::forward_tokens(const std::vector<int64_t>& tokens) {
  return forward_batch(tokens, 1, static_cast<int64_t>(tokens.size()));
}

Status ReferenceExecutor::forward_prefix_batch(const std::vector<int64_t>& tokens, int64_t B, int64_t T, size_t last_node) {
  Impl& m = *impl_;
  if (last_node >= m.steps.size())
    return InvalidArgument("forward_prefix: node " + std::to_string(last_node) + " is beyond the " +
                           std::to_string(m.steps.size()) + " nodes of the graph");
  m.prefix_steps = last_node + 1;
  auto r = forward_batch(tokens, B, T);
  m.prefix_steps = 0;
  return r.ok() ? Status::Ok() : r.status();
}

Result<std::vector<float>> ReferenceExecutor::forward_batch(const std::vector<int64_t>& tokens, int64_t B, int64_t T) {
  Impl& m = *impl_;
  if (tokens.empty() || B < 1 || T < 1 || static_cast<int64_t>(tokens.size()) != B * T)
    return InvalidArgument("forward_tokens: need B*T tokens (B, T >= 1), got " + std::to_string(tokens.size()));
  if (m.input_names.empty() || m.output_names.empty())
    return InvalidArgument("forward_tokens: the graph needs a token input and a logits output");
  std::map<std::string, ir::Tensor> feed;
  feed[m.input_names[0]] = ir::Tensor{DType::kI64, {B, T},
                                      std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(tokens.data()),
                                                           reinterpret_cast<const uint8_t*>(tokens.data() + tokens.size()))};
  for (size_t i = 1; i < m.input_names.size(); ++i) {
    const std::string& name = m.input_names[i];
    const ir::ValueInfo& vi = m.input_infos[i];
    if (name.rfind("past", 0) != 0)
      return InvalidArgument("forward_tokens: graph input '" + name +
                             "' is neither the token input nor a past_* KV input; use run()");
    if (!vi.rank_known || vi.shape.empty())
      return InvalidArgument("forward_tokens: graph input '" + name + "' has no declared shape");
    ir::Tensor t;
    t.dtype = kind_of(vi.dtype) == Kind::kInt ? DType::kI64 : DType::kF32;
    for (size_t d = 0; d < vi.shape.size(); ++d)
      t.shape.push_back(d == 0 ? B : vi.shape[d].is_static() ? vi.shape[d].value : 0);
    feed[name] = std::move(t);
  }
  KERF_ASSIGN_OR_RETURN(std::vector<ir::Tensor> outs, run(feed));
  if (m.prefix_steps > 0) return std::vector<float>{};  // forward_prefix
  if (outs.empty()) return Internal("forward_tokens: the graph produced no outputs");
  const ir::Tensor& lg = outs[0];
  if (lg.dtype != DType::kF32 || lg.shape.size() != 3 || lg.shape[0] != B || lg.shape[1] != T)
    return InvalidArgument("forward_tokens: first graph output '" + m.output_names[0] +
                           "' is not float logits [B, T, V]");
  std::vector<float> v(lg.data.size() / sizeof(float));
  if (!v.empty()) std::memcpy(v.data(), lg.data.data(), lg.data.size());
  return v;
}

struct TrainAccess {
  static Result<std::vector<at::Tensor>> forward(ReferenceExecutor& ex, const at::Tensor& tokens,
                                                 const std::map<std::string, at::Tensor>& params,
                                                 const std::vector<std::string>& taps) {
    ReferenceExecutor::Impl& m = *ex.impl_;
    if (tokens.dim() != 2 || tokens.scalar_type() != at::kLong)
      return InvalidArgument("forward_train: tokens must be int64 [B, T]");
    if (m.input_slots.empty() || m.output_slots.empty()) return InvalidArgument("forward_train: no token input / logits output");
    std::vector<int> tap_slots;
    for (const auto& t : taps) {
      auto it = std::find(m.slot_names.begin(), m.slot_names.end(), t);
      if (it == m.slot_names.end()) return InvalidArgument("forward_train: no value named '" + t + "'");
      tap_slots.push_back(static_cast<int>(it - m.slot_names.begin()));
    }
    try {
      // Autograd-capable copies of the constants (the executor's own are inference tensors).
      if (m.train_constants.size() != m.constants.size()) {
        m.train_constants.assign(m.constants.size(), at::Tensor());
        for (size_t i = 0; i < m.constants.size(); ++i)
          if (m.constants[i].defined()) m.train_constants[i] = m.constants[i].clone();
      }
      std::vector<at::Tensor> env = m.train_constants;
      for (const auto& [name, t] : params) {
        auto it = m.initializer_slots.find(name);
        if (it == m.initializer_slots.end()) return InvalidArgument("forward_train: '" + name + "' is not an initializer");
        if (t.sizes() != m.constants[static_cast<size_t>(it->second)].sizes())
          return InvalidArgument("forward_train: '" + name + "' has shape " + c10::str(t.sizes()) + ", expected " +
                                 c10::str(m.constants[static_cast<size_t>(it->second)].sizes()));
        env[static_cast<size_t>(it->second)] = t;
      }
      env[static_cast<size_t>(m.input_slots[0])] = tokens;
      std::vector<KV> staged(m.caches.size());
      std::vector<KV> saved = std::move(m.caches);
      m.caches.assign(saved.size(), KV{});  // positions start at 0
      m.pinned.assign(m.slot_names.size(), false);
      for (int s : tap_slots) m.pinned[static_cast<size_t>(s)] = true;
      m.training = true;
      Status st = m.run_steps(env, staged, m.steps.size());
      m.training = false;
      m.pinned.clear();
      m.caches = std::move(saved);
      if (!st.ok()) return st;
      std::vector<at::Tensor> out = {env[static_cast<size_t>(m.output_slots[0])]};
      for (int s : tap_slots) out.push_back(env[static_cast<size_t>(s)]);
      for (const auto& t : out)
        if (!t.defined()) return Internal("forward_train: an output or tap was not computed");
      return out;
    } catch (const c10::Error& e) {
      m.pinned.clear();
      m.training = false;
      return Internal(std::string("forward_train: ") + e.what_without_backtrace());
    }
  }
};

Result<at::Tensor> forward_train(ReferenceExecutor& ex, const at::Tensor& tokens, const std::map<std::string, at::Tensor>& params) {
  KERF_ASSIGN_OR_RETURN(auto v, TrainAccess::forward(ex, tokens, params, {}));
  return v[0];
}

Result<std::vector<at::Tensor>> forward_train_taps(ReferenceExecutor& ex, const at::Tensor& tokens,
                                                   const std::map<std::string, at::Tensor>& params,
                                                   const std::vector<std::string>& taps) {
  return TrainAccess::forward(ex, tokens, params, taps);
}

void ReferenceExecutor::reset_cache() {
  for (KV& kv : impl_->caches) kv = KV{};
}
int64_t ReferenceExecutor::cached_tokens() const { return impl_->cached_tokens(); }
bool ReferenceExecutor::has_kv_cache() const { return !impl_->caches.empty(); }
const std::vector<std::string>& ReferenceExecutor::input_names() const { return impl_->input_names; }
const std::vector<std::string>& ReferenceExecutor::output_names() const { return impl_->output_names; }
size_t ReferenceExecutor::num_nodes() const { return impl_->steps.size(); }
int ReferenceExecutor::num_threads() const { return impl_->threads; }

}  // namespace kerf::distill
