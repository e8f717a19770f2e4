#include "passes/const_eval.h"

#include <cmath>
#include <limits>

namespace kerf::passes {
namespace {

using ir::DType;
using ir::Tensor;

struct Arr {
  DType dt = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<double> v;
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

Arr to_arr(const Tensor& t) {
  Arr a;
  a.dt = t.dtype;
  a.shape = t.shape;
  a.v.resize(static_cast<size_t>(t.numel()));
  if (ir::dtype_is_float(t.dtype)) {
    for (size_t i = 0; i < a.v.size(); ++i) a.v[i] = t.f32_at(static_cast<int64_t>(i));
  } else {
    for (size_t i = 0; i < a.v.size(); ++i) a.v[i] = static_cast<double>(t.i64_at(static_cast<int64_t>(i)));
  }
  return a;
}

Tensor to_tensor(const Arr& a) {
  if (ir::dtype_is_float(a.dt)) {
    std::vector<float> f(a.v.begin(), a.v.end());
    return Tensor::from_f32(a.shape, f, a.dt);
  }
  std::vector<int64_t> iv(a.v.size());
  for (size_t i = 0; i < a.v.size(); ++i) iv[i] = static_cast<int64_t>(a.v[i]);
  return Tensor::from_i64(a.shape, iv, a.dt);
}

std::vector<int64_t> strides_of(const std::vector<int64_t>& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int i = static_cast<int>(s.size()) - 2; i >= 0; --i) st[static_cast<size_t>(i)] = st[static_cast<size_t>(i) + 1] * s[static_cast<size_t>(i) + 1];
  return st;
}

std::optional<std::vector<int64_t>> broadcast_shape(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  size_t r = std::max(a.size(), b.size());
  std::vector<int64_t> out(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1) return std::nullopt;
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Index into `a` for multi-index `idx` of a broadcast output of rank idx.size().
double bcast_at(const Arr& a, const std::vector<int64_t>& idx, const std::vector<int64_t>& st) {
  size_t off = idx.size() - a.shape.size();
  int64_t flat = 0;
  for (size_t i = 0; i < a.shape.size(); ++i) flat += (a.shape[i] == 1 ? 0 : idx[off + i]) * st[i];
  return a.v[static_cast<size_t>(flat)];
}

template <class F>
std::optional<Arr> elementwise(const std::vector<const Arr*>& ins, DType out_dt, F f, int64_t max_el) {
  std::vector<int64_t> shape;
  for (const Arr* a : ins) {
    auto s = broadcast_shape(shape, a->shape);
    if (!s) return std::nullopt;
    shape = *s;
  }
  Arr out;
  out.dt = out_dt;
  out.shape = shape;
  if (out.numel() > max_el) return std::nullopt;
  out.v.resize(static_cast<size_t>(out.numel()));
  std::vector<std::vector<int64_t>> st;
  for (const Arr* a : ins) st.push_back(strides_of(a->shape));
  std::vector<int64_t> idx(shape.size(), 0);
  std::vector<double> args(ins.size());
  for (size_t e = 0; e < out.v.size(); ++e) {
    for (size_t k = 0; k < ins.size(); ++k) args[k] = bcast_at(*ins[k], idx, st[k]);
    out.v[e] = f(args);
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < shape[static_cast<size_t>(d)]) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
  return out;
}

int64_t norm_axis(int64_t axis, int64_t rank) { return axis < 0 ? axis + rank : axis; }

bool is_int(DType t) { return !ir::dtype_is_float(t); }

double int_div(double a, double b, DType dt) {
  if (is_int(dt)) {
    if (b == 0) return 0;
    return std::trunc(a / b);  // ONNX integer Div truncates (C semantics)
  }
  return a / b;
}

}  // namespace

DType dtype_from_onnx_code(int64_t code) {
  switch (code) {
    case 1: return DType::kF32;
    case 10: return DType::kF16;
    case 16: return DType::kBF16;
    case 11: return DType::kF64;
    case 7: return DType::kI64;
    case 6: return DType::kI32;
    case 3: return DType::kI8;
    case 2: return DType::kU8;
    case 9: return DType::kBool;
    default: return DType::kUndefined;
  }
}

std::optional<std::vector<Tensor>> eval_constant_node(const ir::Node& n, const std::vector<const Tensor*>& in_t,
                                                      int64_t max_el) {
  if (!n.domain.empty()) return std::nullopt;
  for (const Tensor* t : in_t)
    if (t && t->numel() > max_el) return std::nullopt;
  std::vector<Arr> arrs;
  std::vector<bool> present;
  for (const Tensor* t : in_t) {
    arrs.push_back(t ? to_arr(*t) : Arr{});
    present.push_back(t != nullptr);
  }
  auto has = [&](size_t i) { return i < present.size() && present[i]; };
  const std::string& op = n.op;
  std::optional<Arr> r;
  const Arr* A = has(0) ? &arrs[0] : nullptr;

  if ((op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Pow") && has(0) && has(1)) {
    DType dt = arrs[0].dt;
    r = elementwise({&arrs[0], &arrs[1]}, dt, [&](const std::vector<double>& a) {
      if (op == "Add") return a[0] + a[1];
      if (op == "Sub") return a[0] - a[1];
      if (op == "Mul") return a[0] * a[1];
      if (op == "Div") return int_div(a[0], a[1], dt);
      return std::pow(a[0], a[1]);
    }, max_el);
  } else if (op == "Equal" && has(0) && has(1)) {
    r = elementwise({&arrs[0], &arrs[1]}, DType::kBool, [](const std::vector<double>& a) { return a[0] == a[1] ? 1.0 : 0.0; }, max_el);
  } else if (op == "Where" && has(0) && has(1) && has(2)) {
    r = elementwise({&arrs[0], &arrs[1], &arrs[2]}, arrs[1].dt,
                    [](const std::vector<double>& a) { return a[0] != 0 ? a[1] : a[2]; }, max_el);
  } else if ((op == "Neg" || op == "Sqrt" || op == "Reciprocal" || op == "Identity" || op == "Sigmoid") && A) {
    r = elementwise({A}, A->dt, [&](const std::vector<double>& a) {
      if (op == "Neg") return -a[0];
      if (op == "Sqrt") return std::sqrt(a[0]);
      if (op == "Reciprocal") return 1.0 / a[0];
      if (op == "Sigmoid") return 1.0 / (1.0 + std::exp(-a[0]));
      return a[0];
    }, max_el);
  } else if (op == "Cast" && A) {
    const DType to = dtype_from_onnx_code(n.attr_int("to", 0));
    if (to == DType::kUndefined) return std::nullopt;
    Arr o = *A;
    o.dt = to;
    if (is_int(to) && !is_int(A->dt))
      for (auto& x : o.v) x = std::trunc(x);
    if (to == DType::kBool)
      for (auto& x : o.v) x = x != 0 ? 1 : 0;
    r = o;
  } else if (op == "Shape" && A) {
    Arr o;
    o.dt = DType::kI64;
    int64_t rank = static_cast<int64_t>(A->shape.size());
    int64_t start = norm_axis(n.attr_int("start", 0), rank), end = norm_axis(n.attr_int("end", rank), rank);
    start = std::max<int64_t>(0, std::min(start, rank));
    end = std::max<int64_t>(start, std::min(end, rank));
    for (int64_t i = start; i < end; ++i) o.v.push_back(static_cast<double>(A->shape[static_cast<size_t>(i)]));
    o.shape = {end - start};
    r = o;
  } else if (op == "Gather" && A && has(1)) {
    const Arr& idx = arrs[1];
    int64_t rank = static_cast<int64_t>(A->shape.size());
    int64_t axis = norm_axis(n.attr_int("axis", 0), rank);
    if (axis < 0 || axis >= rank) return std::nullopt;
    std::vector<int64_t> shape(A->shape.begin(), A->shape.begin() + axis);
    shape.insert(shape.end(), idx.shape.begin(), idx.shape.end());
    shape.insert(shape.end(), A->shape.begin() + axis + 1, A->shape.end());
    int64_t outer = 1, inner = 1, dim = A->shape[static_cast<size_t>(axis)];
    for (int64_t i = 0; i < axis; ++i) outer *= A->shape[static_cast<size_t>(i)];
    for (int64_t i = axis + 1; i < rank; ++i) inner *= A->shape[static_cast<size_t>(i)];
    Arr o;
    o.dt = A->dt;
    o.shape = shape;
    if (o.numel() > max_el) return std::nullopt;
    for (int64_t a = 0; a < outer; ++a)
      for (double iv : idx.v) {
        int64_t k = static_cast<int64_t>(iv);
        if (k < 0) k += dim;
        if (k < 0 || k >= dim) return std::nullopt;
        for (int64_t b = 0; b < inner; ++b) o.v.push_back(A->v[static_cast<size_t>((a * dim + k) * inner + b)]);
      }
    r = o;
  } else if ((op == "Unsqueeze" || op == "Squeeze") && A) {
    std::vector<int64_t> axes = n.attr_ints("axes");
    if (has(1)) for (double x : arrs[1].v) axes.push_back(static_cast<int64_t>(x));
    Arr o = *A;
    if (op == "Unsqueeze") {
      int64_t out_rank = static_cast<int64_t>(A->shape.size() + axes.size());
      std::vector<bool> is_new(static_cast<size_t>(out_rank), false);
      for (auto ax : axes) {
        ax = norm_axis(ax, out_rank);
        if (ax < 0 || ax >= out_rank) return std::nullopt;
        is_new[static_cast<size_t>(ax)] = true;
      }
      o.shape.clear();
      size_t k = 0;
      for (int64_t i = 0; i < out_rank; ++i) o.shape.push_back(is_new[static_cast<size_t>(i)] ? 1 : A->shape[k++]);
    } else {
      int64_t rank = static_cast<int64_t>(A->shape.size());
      std::vector<bool> drop(static_cast<size_t>(rank), axes.empty());
      for (auto ax : axes) drop[static_cast<size_t>(norm_axis(ax, rank))] = true;
      o.shape.clear();
      for (int64_t i = 0; i < rank; ++i)
        if (!(drop[static_cast<size_t>(i)] && A->shape[static_cast<size_t>(i)] == 1)) o.shape.push_back(A->shape[static_cast<size_t>(i)]);
    }
    r = o;
  } else if (op == "Concat") {
    for (size_t i = 0; i < in_t.size(); ++i)
      if (!has(i)) return std::nullopt;
    if (arrs.empty()) return std::nullopt;
    int64_t rank = static_cast<int64_t>(arrs[0].shape.size());
    int64_t axis = norm_axis(n.attr_int("axis", 0), rank);
    if (rank == 0 || axis < 0 || axis >= rank) return std::nullopt;
    Arr o;
    o.dt = arrs[0].dt;
    o.shape = arrs[0].shape;
    o.shape[static_cast<size_t>(axis)] = 0;
    for (const auto& a : arrs) {
      if (static_cast<int64_t>(a.shape.size()) != rank) return std::nullopt;
      o.shape[static_cast<size_t>(axis)] += a.shape[static_cast<size_t>(axis)];
    }
    int64_t outer = 1;
    for (int64_t i = 0; i < axis; ++i) outer *= o.shape[static_cast<size_t>(i)];
    for (int64_t a = 0; a < outer; ++a)
      for (const auto& x : arrs) {
        int64_t chunk = x.numel() / std::max<int64_t>(outer, 1);
        for (int64_t b = 0; b < chunk; ++b) o.v.push_back(x.v[static_cast<size_t>(a * chunk + b)]);
      }
    r = o;
  } else if (op == "Reshape" && A && has(1)) {
    std::vector<int64_t> shape;
    int64_t known = 1, infer = -1;
    for (size_t i = 0; i < arrs[1].v.size(); ++i) {
      int64_t d = static_cast<int64_t>(arrs[1].v[i]);
      if (d == 0 && n.attr_int("allowzero", 0) == 0) d = i < A->shape.size() ? A->shape[i] : 0;
      if (d == -1) {
        infer = static_cast<int64_t>(i);
        shape.push_back(1);
        continue;
      }
      shape.push_back(d);
      known *= d;
    }
    if (infer >= 0) {
      if (known == 0 || A->numel() % known) return std::nullopt;
      shape[static_cast<size_t>(infer)] = A->numel() / known;
    }
    Arr o = *A;
    o.shape = shape;
    if (o.numel() != A->numel()) return std::nullopt;
    r = o;
  } else if (op == "ConstantOfShape" && A) {
    Arr o;
    const Tensor* val = n.attr_tensor("value");
    o.dt = val ? val->dtype : DType::kF32;
    double fill = val && val->numel() > 0 ? (ir::dtype_is_float(val->dtype) ? val->f32_at(0) : static_cast<double>(val->i64_at(0))) : 0.0;
    for (double d : A->v) o.shape.push_back(static_cast<int64_t>(d));
    if (o.numel() > max_el || o.numel() < 0) return std::nullopt;
    o.v.assign(static_cast<size_t>(o.numel()), fill);
    r = o;
  } else if (op == "Range" && A && has(1) && has(2)) {
    double s = A->v.at(0), lim = arrs[1].v.at(0), d = arrs[2].v.at(0);
    if (d == 0) return std::nullopt;
    int64_t cnt = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((lim - s) / d)));
    if (cnt > max_el) return std::nullopt;
    Arr o;
    o.dt = A->dt;
    o.shape = {cnt};
    for (int64_t i = 0; i < cnt; ++i) o.v.push_back(s + static_cast<double>(i) * d);
    r = o;
  } else if (op == "Slice" && A && has(1) && has(2)) {
    int64_t rank = static_cast<int64_t>(A->shape.size());
    std::vector<int64_t> starts, ends, axes, steps;
    for (double x : arrs[1].v) starts.push_back(static_cast<int64_t>(x));
    for (double x : arrs[2].v) ends.push_back(static_cast<int64_t>(x));
    if (has(3)) for (double x : arrs[3].v) axes.push_back(static_cast<int64_t>(x));
    else for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    if (has(4)) for (double x : arrs[4].v) steps.push_back(static_cast<int64_t>(x));
    else steps.assign(starts.size(), 1);
    std::vector<int64_t> b(static_cast<size_t>(rank), 0), e(A->shape), st(static_cast<size_t>(rank), 1);
    for (size_t i = 0; i < starts.size(); ++i) {
      int64_t ax = norm_axis(axes[i], rank);
      if (ax < 0 || ax >= rank || steps[i] != 1) return std::nullopt;  // step != 1 not needed by exporters
      int64_t dim = A->shape[static_cast<size_t>(ax)];
      int64_t s0 = starts[i] < 0 ? starts[i] + dim : starts[i];
      int64_t e0 = ends[i] < 0 ? ends[i] + dim : ends[i];
      s0 = std::max<int64_t>(0, std::min(s0, dim));
      e0 = std::max<int64_t>(s0, std::min(e0, dim));
      b[static_cast<size_t>(ax)] = s0;
      e[static_cast<size_t>(ax)] = e0;
    }
    Arr o;
    o.dt = A->dt;
    for (int64_t i = 0; i < rank; ++i) o.shape.push_back(e[static_cast<size_t>(i)] - b[static_cast<size_t>(i)]);
    auto ist = strides_of(A->shape);
    std::vector<int64_t> idx(static_cast<size_t>(rank), 0);
    int64_t total = o.numel();
    for (int64_t k = 0; k < total; ++k) {
      int64_t flat = 0;
      for (int64_t d = 0; d < rank; ++d) flat += (idx[static_cast<size_t>(d)] + b[static_cast<size_t>(d)]) * ist[static_cast<size_t>(d)];
      o.v.push_back(A->v[static_cast<size_t>(flat)]);
      for (int64_t d = rank - 1; d >= 0; --d) {
        if (++idx[static_cast<size_t>(d)] < o.shape[static_cast<size_t>(d)]) break;
        idx[static_cast<size_t>(d)] = 0;
      }
    }
    r = o;
  } else if (op == "Transpose" && A) {
    int64_t rank = static_cast<int64_t>(A->shape.size());
    std::vector<int64_t> perm = n.attr_ints("perm");
    if (perm.empty())
      for (int64_t i = rank - 1; i >= 0; --i) perm.push_back(i);
    if (static_cast<int64_t>(perm.size()) != rank) return std::nullopt;
    Arr o;
    o.dt = A->dt;
    for (auto p : perm) o.shape.push_back(A->shape[static_cast<size_t>(p)]);
    auto ist = strides_of(A->shape);
    std::vector<int64_t> idx(static_cast<size_t>(rank), 0);
    for (int64_t k = 0; k < o.numel(); ++k) {
      int64_t flat = 0;
      for (int64_t d = 0; d < rank; ++d) flat += idx[static_cast<size_t>(d)] * ist[static_cast<size_t>(perm[static_cast<size_t>(d)])];
      o.v.push_back(A->v[static_cast<size_t>(flat)]);
      for (int64_t d = rank - 1; d >= 0; --d) {
        if (++idx[static_cast<size_t>(d)] < o.shape[static_cast<size_t>(d)]) break;
        idx[static_cast<size_t>(d)] = 0;
      }
    }
    r = o;
  } else if (op == "Expand" && A && has(1)) {
    std::vector<int64_t> target;
    for (double x : arrs[1].v) target.push_back(static_cast<int64_t>(x));
    auto s = broadcast_shape(A->shape, target);
    if (!s) return std::nullopt;
    Arr tgt;
    tgt.dt = A->dt;
    tgt.shape = *s;
    if (tgt.numel() > max_el) return std::nullopt;
    tgt.v.assign(static_cast<size_t>(tgt.numel()), 0.0);
    r = elementwise({A, &tgt}, A->dt, [](const std::vector<double>& a) { return a[0]; }, max_el);
  } else if (op == "Trilu" && A) {
    int64_t k = has(1) ? static_cast<int64_t>(arrs[1].v.at(0)) : 0;
    bool upper = n.attr_int("upper", 1) != 0;
    if (A->shape.size() < 2) return std::nullopt;
    Arr o = *A;
    int64_t rows = A->shape[A->shape.size() - 2], cols = A->shape.back();
    for (int64_t m = 0; m < o.numel() / std::max<int64_t>(rows * cols, 1); ++m)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          bool keep = upper ? (j - i >= k) : (j - i <= k);
          if (!keep) o.v[static_cast<size_t>((m * rows + i) * cols + j)] = 0;
        }
    r = o;
  } else {
    return std::nullopt;
  }
  if (!r || r->numel() > max_el) return std::nullopt;
  return std::vector<Tensor>{to_tensor(*r)};
}

}  // namespace kerf::passes
