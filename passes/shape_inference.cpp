// infer-shapes, fold and dce passes.
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "passes/const_eval.h"
#include "passes/passes.h"

namespace kerf::passes {
namespace {

using ir::Dim;
using ir::DType;
using ir::Shape;
using ir::ValueInfo;

int64_t norm_axis(int64_t axis, int64_t rank) { return axis < 0 ? axis + rank : axis; }

struct Inference {
  ir::Graph& g;
  std::unordered_map<std::string, SymVec> sym;
  int unknown_ops = 0;

  std::optional<ValueInfo> info(const std::string& v) const {
    if (v.empty()) return std::nullopt;
    if (const ir::Tensor* t = g.constant(v)) {
      ValueInfo vi;
      vi.dtype = t->dtype;
      vi.rank_known = true;
      for (auto d : t->shape) vi.shape.push_back(Dim::of(d));
      return vi;
    }
    auto it = g.values.find(v);
    if (it == g.values.end() || !it->second.rank_known) return std::nullopt;
    return it->second;
  }

  std::optional<SymVec> symval(const std::string& v) const {
    if (v.empty()) return std::nullopt;
    if (const ir::Tensor* t = g.constant(v)) {
      if (ir::dtype_is_float(t->dtype) || t->shape.size() > 1 || t->numel() > 16) return std::nullopt;
      SymVec s;
      for (int64_t i = 0; i < t->numel(); ++i) s.push_back(SymElem{true, t->i64_at(i), {}});
      return s;
    }
    auto it = sym.find(v);
    if (it == sym.end()) return std::nullopt;
    return it->second;
  }

  static Dim broadcast_dim(const Dim& a, const Dim& b) {
    if (a.is_static() && a.value == 1) return b;
    if (b.is_static() && b.value == 1) return a;
    if (a == b) return a;
    if (a.is_static()) return a;
    if (b.is_static()) return b;
    return Dim{};
  }

  static std::optional<Shape> broadcast(const std::vector<ValueInfo>& ins) {
    Shape out;
    for (const auto& vi : ins) {
      if (!vi.rank_known) return std::nullopt;
      size_t r = std::max(out.size(), vi.shape.size());
      Shape s(r);
      for (size_t i = 0; i < r; ++i) {
        Dim a = i < r - out.size() ? Dim::of(1) : out[i - (r - out.size())];
        Dim b = i < r - vi.shape.size() ? Dim::of(1) : vi.shape[i - (r - vi.shape.size())];
        s[i] = broadcast_dim(a, b);
      }
      out = s;
    }
    return out;
  }

  static Dim dim_from_sym(const SymElem& e) {
    if (e.known) return Dim::of(e.value);
    if (!e.symbol.empty()) return Dim::sym(e.symbol);
    return Dim{};
  }

  void set(const std::string& v, DType dt, Shape s) {
    if (v.empty()) return;
    ValueInfo vi;
    vi.dtype = dt;
    vi.shape = std::move(s);
    vi.rank_known = true;
    g.values[v] = vi;
  }

  std::vector<int64_t> const_ints(const std::string& v) const {
    const ir::Tensor* t = g.constant(v);
    return t ? t->to_i64() : std::vector<int64_t>{};
  }

  void infer_node(const ir::Node& n) {
    std::vector<std::optional<ValueInfo>> in;
    for (const auto& i : n.inputs) in.push_back(info(i));
    auto all = [&](size_t k) {
      for (size_t i = 0; i < k; ++i)
        if (i >= in.size() || !in[i]) return false;
      return true;
    };
    const std::string out = n.outputs.empty() ? "" : n.outputs[0];
    const std::string& op = n.op;
    if (n.domain == "kerf") {
      if (op == "Embedding" && all(2) && in[1]->shape.size() == 2) {
        Shape s = in[0]->shape;
        s.push_back(in[1]->shape[1]);
        set(out, in[1]->dtype, s);
      } else if ((op == "RMSNorm" || op == "Rotary" || op == "Attention" || op == "GatedFFN") && all(1)) {
        set(out, in[0]->dtype, in[0]->shape);
      } else if (op == "Linear" && all(2) && !in[0]->shape.empty() && in[1]->shape.size() == 2) {
        Shape s = in[0]->shape;
        s.back() = in[1]->shape[0];
        set(out, in[0]->dtype, s);
      } else {
        ++unknown_ops;
      }
      return;
    }
    if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Pow" || op == "Equal" || op == "Where") {
      size_t k = op == "Where" ? 3 : 2;
      if (!all(k)) return void(++unknown_ops);
      std::vector<ValueInfo> v;
      for (size_t i = 0; i < k; ++i) v.push_back(*in[i]);
      auto s = broadcast(v);
      if (!s) return void(++unknown_ops);
      DType dt = op == "Equal" ? DType::kBool : (op == "Where" ? in[1]->dtype : in[0]->dtype);
      set(out, dt, *s);
      // Symbolic arithmetic on shape vectors.
      if (op != "Pow") {
        auto a = symval(n.inputs[op == "Where" ? 1 : 0]);
        auto b = symval(n.inputs[op == "Where" ? 2 : 1]);
        if (op != "Where" && a && b && (a->size() == b->size() || a->size() == 1 || b->size() == 1)) {
          SymVec r(std::max(a->size(), b->size()));
          for (size_t i = 0; i < r.size(); ++i) {
            const SymElem& x = (*a)[a->size() == 1 ? 0 : i];
            const SymElem& y = (*b)[b->size() == 1 ? 0 : i];
            if (x.known && y.known) {
              r[i].known = true;
              if (op == "Add") r[i].value = x.value + y.value;
              else if (op == "Sub") r[i].value = x.value - y.value;
              else if (op == "Mul") r[i].value = x.value * y.value;
              else if (op == "Div") r[i].value = y.value ? x.value / y.value : 0;
              else r[i].value = x.value == y.value;
            } else if (op == "Mul" && x.known && x.value == 1) {
              r[i] = y;
            } else if ((op == "Mul" || op == "Div") && y.known && y.value == 1) {
              r[i] = x;
            } else if ((op == "Add" || op == "Sub") && y.known && y.value == 0) {
              r[i] = x;
            }
          }
          sym[out] = r;
        }
      }
      return;
    }
    if (op == "Sqrt" || op == "Sigmoid" || op == "Neg" || op == "Reciprocal" || op == "Softmax" || op == "Identity" ||
        op == "Trilu") {
      if (!all(1)) return void(++unknown_ops);
      set(out, in[0]->dtype, in[0]->shape);
      if (op == "Identity" || op == "Neg") {
        if (auto s = symval(n.inputs[0]); s && op == "Identity") sym[out] = *s;
      }
      return;
    }
    if (op == "Cast") {
      if (!all(1)) return void(++unknown_ops);
      const DType to = dtype_from_onnx_code(n.attr_int("to", 0));
      set(out, to, in[0]->shape);
      if (auto s = symval(n.inputs[0]); s && !ir::dtype_is_float(to)) sym[out] = *s;
      return;
    }
    if (op == "MatMul") {
      if (!all(2)) return void(++unknown_ops);
      const Shape& a = in[0]->shape;
      const Shape& b = in[1]->shape;
      if (a.size() < 2 || b.size() < 2) return void(++unknown_ops);
      ValueInfo ba, bb;
      ba.rank_known = bb.rank_known = true;
      ba.shape.assign(a.begin(), a.end() - 2);
      bb.shape.assign(b.begin(), b.end() - 2);
      auto batch = broadcast({ba, bb});
      if (!batch) return void(++unknown_ops);
      Shape s = *batch;
      s.push_back(a[a.size() - 2]);
      s.push_back(b.back());
      set(out, in[0]->dtype, s);
      return;
    }
    if (op == "Gather") {
      if (!all(2)) return void(++unknown_ops);
      int64_t rank = static_cast<int64_t>(in[0]->shape.size());
      int64_t axis = norm_axis(n.attr_int("axis", 0), rank);
      if (axis < 0 || axis >= rank) return void(++unknown_ops);
      Shape s(in[0]->shape.begin(), in[0]->shape.begin() + axis);
      s.insert(s.end(), in[1]->shape.begin(), in[1]->shape.end());
      s.insert(s.end(), in[0]->shape.begin() + axis + 1, in[0]->shape.end());
      set(out, in[0]->dtype, s);
      auto data = symval(n.inputs[0]);
      const ir::Tensor* idx = g.constant(n.inputs[1]);
      if (data && idx && axis == 0 && idx->numel() <= 16) {
        SymVec r;
        for (int64_t k : idx->to_i64()) {
          if (k < 0) k += static_cast<int64_t>(data->size());
          if (k < 0 || k >= static_cast<int64_t>(data->size())) return;
          r.push_back((*data)[static_cast<size_t>(k)]);
        }
        sym[out] = r;
      }
      return;
    }
    if (op == "Unsqueeze" || op == "Squeeze") {
      if (!all(1)) return void(++unknown_ops);
      std::vector<int64_t> axes = n.attr_ints("axes");
      if (n.inputs.size() > 1 && !n.inputs[1].empty()) {
        if (!g.constant(n.inputs[1])) return void(++unknown_ops);
        axes = const_ints(n.inputs[1]);
      }
      Shape s;
      if (op == "Unsqueeze") {
        int64_t out_rank = static_cast<int64_t>(in[0]->shape.size() + axes.size());
        std::vector<bool> is_new(static_cast<size_t>(out_rank), false);
        for (auto ax : axes) {
          ax = norm_axis(ax, out_rank);
          if (ax < 0 || ax >= out_rank) return void(++unknown_ops);
          is_new[static_cast<size_t>(ax)] = true;
        }
        size_t k = 0;
        for (int64_t i = 0; i < out_rank; ++i) s.push_back(is_new[static_cast<size_t>(i)] ? Dim::of(1) : in[0]->shape[k++]);
      } else {
        int64_t rank = static_cast<int64_t>(in[0]->shape.size());
        std::vector<bool> drop(static_cast<size_t>(rank), false);
        for (auto ax : axes) {
          ax = norm_axis(ax, rank);
          if (ax < 0 || ax >= rank) return void(++unknown_ops);
          drop[static_cast<size_t>(ax)] = true;
        }
        for (int64_t i = 0; i < rank; ++i) {
          const Dim& d = in[0]->shape[static_cast<size_t>(i)];
          if (axes.empty() ? !(d.is_static() && d.value == 1) : !drop[static_cast<size_t>(i)]) s.push_back(d);
        }
      }
      set(out, in[0]->dtype, s);
      if (auto sv = symval(n.inputs[0])) sym[out] = *sv;
      return;
    }
    if (op == "Concat") {
      std::vector<ValueInfo> v;
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        if (!in[i]) return void(++unknown_ops);
        v.push_back(*in[i]);
      }
      if (v.empty()) return void(++unknown_ops);
      int64_t rank = static_cast<int64_t>(v[0].shape.size());
      int64_t axis = norm_axis(n.attr_int("axis", 0), rank);
      if (axis < 0 || axis >= rank) return void(++unknown_ops);
      Shape s = v[0].shape;
      int64_t total = 0;
      bool known = true;
      for (const auto& x : v) {
        if (static_cast<int64_t>(x.shape.size()) != rank) return void(++unknown_ops);
        const Dim& d = x.shape[static_cast<size_t>(axis)];
        if (d.is_static()) total += d.value;
        else known = false;
      }
      // Concatenating a zero-length static piece keeps the other piece's symbolic dim.
      if (known) {
        s[static_cast<size_t>(axis)] = Dim::of(total);
      } else {
        int non_zero = 0;
        Dim only;
        for (const auto& x : v) {
          const Dim& d = x.shape[static_cast<size_t>(axis)];
          if (!(d.is_static() && d.value == 0)) { ++non_zero; only = d; }
        }
        s[static_cast<size_t>(axis)] = non_zero == 1 ? only : Dim{};
      }
      for (int64_t i = 0; i < rank; ++i)
        if (i != axis)
          for (const auto& x : v) s[static_cast<size_t>(i)] = broadcast_dim(s[static_cast<size_t>(i)], x.shape[static_cast<size_t>(i)]);
      set(out, v[0].dtype, s);
      if (rank == 1) {
        SymVec r;
        for (const auto& i : n.inputs) {
          auto sv = symval(i);
          if (!sv) return;
          r.insert(r.end(), sv->begin(), sv->end());
        }
        sym[out] = r;
      }
      return;
    }
    if (op == "Shape") {
      if (!all(1)) return void(++unknown_ops);
      const Shape& x = in[0]->shape;
      int64_t rank = static_cast<int64_t>(x.size());
      int64_t start = std::clamp<int64_t>(norm_axis(n.attr_int("start", 0), rank), 0, rank);
      int64_t end = std::clamp<int64_t>(norm_axis(n.attr_int("end", rank), rank), start, rank);
      set(out, DType::kI64, {Dim::of(end - start)});
      SymVec r;
      for (int64_t i = start; i < end; ++i) {
        const Dim& d = x[static_cast<size_t>(i)];
        r.push_back(SymElem{d.is_static(), d.is_static() ? d.value : 0, d.symbol});
      }
      sym[out] = r;
      return;
    }
    if (op == "Reshape" || op == "Expand" || op == "ConstantOfShape") {
      const std::string& shape_in = op == "ConstantOfShape" ? n.inputs[0] : (n.inputs.size() > 1 ? n.inputs[1] : "");
      auto target = symval(shape_in);
      DType dt = DType::kF32;
      if (op == "ConstantOfShape") {
        const ir::Tensor* v = n.attr_tensor("value");
        dt = v ? v->dtype : DType::kF32;
      } else {
        if (!in[0]) return void(++unknown_ops);
        dt = in[0]->dtype;
      }
      if (!target) {
        // Rank is still known from the shape tensor's length.
        auto si = info(shape_in);
        if (si && si->shape.size() == 1 && si->shape[0].is_static()) {
          set(out, dt, Shape(static_cast<size_t>(si->shape[0].value)));
        } else {
          ++unknown_ops;
        }
        return;
      }
      Shape s;
      for (const auto& e : *target) s.push_back(dim_from_sym(e));
      if (op == "Reshape") {
        const Shape& x = in[0]->shape;
        int infer = -1;
        for (size_t i = 0; i < s.size(); ++i) {
          if ((*target)[i].known && (*target)[i].value == 0 && n.attr_int("allowzero", 0) == 0 && i < x.size()) s[i] = x[i];
          if ((*target)[i].known && (*target)[i].value == -1) { infer = static_cast<int>(i); s[i] = Dim{}; }
        }
        if (infer >= 0) {  // -1: solve when everything else is static
          int64_t in_el = 1, known = 1;
          bool ok = true;
          for (const auto& d : x) { if (!d.is_static()) ok = false; else in_el *= d.value; }
          for (size_t i = 0; i < s.size(); ++i)
            if (static_cast<int>(i) != infer) { if (!s[i].is_static()) ok = false; else known *= s[i].value; }
          if (ok && known > 0) s[static_cast<size_t>(infer)] = Dim::of(in_el / known);
        }
      } else if (op == "Expand") {
        ValueInfo a = *in[0], b;
        b.rank_known = true;
        b.shape = s;
        auto bs = broadcast({a, b});
        if (!bs) return void(++unknown_ops);
        s = *bs;
      }
      set(out, dt, s);
      return;
    }
    if (op == "Transpose") {
      if (!all(1)) return void(++unknown_ops);
      std::vector<int64_t> perm = n.attr_ints("perm");
      const Shape& x = in[0]->shape;
      if (perm.empty())
        for (int64_t i = static_cast<int64_t>(x.size()) - 1; i >= 0; --i) perm.push_back(i);
      if (perm.size() != x.size()) return void(++unknown_ops);
      Shape s;
      for (auto p : perm) {
        if (p < 0 || p >= static_cast<int64_t>(x.size())) return void(++unknown_ops);
        s.push_back(x[static_cast<size_t>(p)]);
      }
      set(out, in[0]->dtype, s);
      return;
    }
    if (op == "ReduceMean") {
      if (!all(1)) return void(++unknown_ops);
      std::vector<int64_t> axes = n.attr_ints("axes");
      const Shape& x = in[0]->shape;
      int64_t rank = static_cast<int64_t>(x.size());
      bool keep = n.attr_int("keepdims", 1) != 0;
      std::vector<bool> red(static_cast<size_t>(rank), axes.empty());
      for (auto a : axes) {
        a = norm_axis(a, rank);
        if (a < 0 || a >= rank) return void(++unknown_ops);
        red[static_cast<size_t>(a)] = true;
      }
      Shape s;
      for (int64_t i = 0; i < rank; ++i) {
        if (!red[static_cast<size_t>(i)]) s.push_back(x[static_cast<size_t>(i)]);
        else if (keep) s.push_back(Dim::of(1));
      }
      set(out, in[0]->dtype, s);
      return;
    }
    if (op == "Slice") {
      if (!all(1)) return void(++unknown_ops);
      const Shape& x = in[0]->shape;
      int64_t rank = static_cast<int64_t>(x.size());
      Shape s = x;
      const ir::Tensor* st = n.inputs.size() > 1 ? g.constant(n.inputs[1]) : nullptr;
      const ir::Tensor* en = n.inputs.size() > 2 ? g.constant(n.inputs[2]) : nullptr;
      std::vector<int64_t> axes;
      if (n.inputs.size() > 3 && !n.inputs[3].empty()) {
        if (!g.constant(n.inputs[3])) return void(++unknown_ops);
        axes = const_ints(n.inputs[3]);
      }
      auto sv = n.inputs.size() > 1 ? symval(n.inputs[1]) : std::nullopt;
      size_t count = st ? static_cast<size_t>(st->numel()) : (sv ? sv->size() : 0);
      if (axes.empty())
        for (size_t i = 0; i < count; ++i) axes.push_back(static_cast<int64_t>(i));
      for (size_t i = 0; i < axes.size(); ++i) {
        int64_t ax = norm_axis(axes[i], rank);
        if (ax < 0 || ax >= rank) return void(++unknown_ops);
        const Dim& d = x[static_cast<size_t>(ax)];
        if (st && en && d.is_static()) {
          int64_t b = st->i64_at(static_cast<int64_t>(i)), e = en->i64_at(static_cast<int64_t>(i));
          if (b < 0) b += d.value;
          if (e < 0) e += d.value;
          b = std::clamp<int64_t>(b, 0, d.value);
          e = std::clamp<int64_t>(e, b, d.value);
          s[static_cast<size_t>(ax)] = Dim::of(e - b);
        } else {
          s[static_cast<size_t>(ax)] = Dim{};
        }
      }
      set(out, in[0]->dtype, s);
      return;
    }
    if (op == "Range") {
      if (!all(1)) return void(++unknown_ops);
      set(out, in[0]->dtype, {Dim{}});
      return;
    }
    ++unknown_ops;
  }

  void run() {
    // Keep the declared types of graph inputs/outputs; recompute everything else.
    std::unordered_set<std::string> keep(g.inputs.begin(), g.inputs.end());
    std::map<std::string, ValueInfo> declared_outputs;
    for (const auto& o : g.outputs)
      if (g.values.count(o)) declared_outputs[o] = g.values[o];
    for (auto it = g.values.begin(); it != g.values.end();)
      it = keep.count(it->first) ? std::next(it) : g.values.erase(it);
    for (const auto& n : g.nodes) infer_node(n);
    for (const auto& [o, vi] : declared_outputs)
      if (!g.values.count(o)) g.values[o] = vi;
  }
};

class InferShapes : public Pass {
 public:
  const char* name() const override { return "infer-shapes"; }
  const char* description() const override { return "dtype and symbolic shape of every value"; }
  Result<bool> run(ir::Graph& g, PassContext& ctx) override {
    Inference inf{g, {}, 0};
    inf.run();
    ctx.count(name(), "unknown_ops", inf.unknown_ops);
    return false;
  }
};

class Fold : public Pass {
 public:
  const char* name() const override { return "fold"; }
  const char* description() const override { return "constant folding, incl. symbolic shape chains"; }
  Result<bool> run(ir::Graph& g, PassContext& ctx) override {
    bool changed_any = false;
    for (int iter = 0; iter < 16; ++iter) {
      Inference inf{g, {}, 0};
      inf.run();
      bool changed = false;
      std::vector<ir::Node> kept;
      kept.reserve(g.nodes.size());
      for (auto& n : g.nodes) {
        if (n.domain.empty() && fold_node(g, inf, n)) {
          changed = true;
          ctx.count(name(), "folded_nodes");
          continue;
        }
        kept.push_back(std::move(n));
      }
      g.nodes = std::move(kept);
      if (!changed) break;
      changed_any = true;
    }
    Inference final_inf{g, {}, 0};
    final_inf.run();
    return changed_any;
  }

 private:
  static bool fold_node(ir::Graph& g, const Inference& inf, const ir::Node& n) {
    if (n.outputs.size() != 1 || n.outputs[0].empty()) return false;
    const std::string& out = n.outputs[0];
    std::vector<const ir::Tensor*> ins;
    bool all_const = true;
    for (const auto& i : n.inputs) {
      if (i.empty()) { ins.push_back(nullptr); continue; }
      const ir::Tensor* t = g.constant(i);
      if (!t) all_const = false;
      ins.push_back(t);
    }
    if (all_const) {
      auto r = eval_constant_node(n, ins);
      if (r && r->size() == 1) {
        g.initializers[out] = std::move((*r)[0]);
        return true;
      }
      return false;
    }
    // Symbolically fully known integer vectors (e.g. Gather(Shape(x), 2) with x[..., 64]).
    auto it = inf.sym.find(out);
    auto vi = g.values.find(out);
    if (it == inf.sym.end() || vi == g.values.end()) return false;
    for (const auto& e : it->second)
      if (!e.known) return false;
    const ValueInfo& v = vi->second;
    if (!v.rank_known || v.shape.size() > 1 || ir::dtype_is_float(v.dtype)) return false;
    int64_t numel = v.shape.empty() ? 1 : v.shape[0].value;
    if (numel != static_cast<int64_t>(it->second.size())) return false;
    std::vector<int64_t> vals;
    for (const auto& e : it->second) vals.push_back(e.value);
    std::vector<int64_t> shape;
    if (!v.shape.empty()) shape.push_back(numel);
    g.initializers[out] = ir::Tensor::from_i64(shape, vals, v.dtype == DType::kUndefined ? DType::kI64 : v.dtype);
    return true;
  }
};

class Dce : public Pass {
 public:
  const char* name() const override { return "dce"; }
  const char* description() const override { return "remove unused nodes and initializers"; }
  Result<bool> run(ir::Graph& g, PassContext& ctx) override {
    std::unordered_set<std::string> live(g.outputs.begin(), g.outputs.end());
    std::vector<bool> keep(g.nodes.size(), false);
    for (int i = static_cast<int>(g.nodes.size()) - 1; i >= 0; --i) {
      const auto& n = g.nodes[static_cast<size_t>(i)];
      bool used = false;
      for (const auto& o : n.outputs) used = used || live.count(o);
      if (!used) continue;
      keep[static_cast<size_t>(i)] = true;
      for (const auto& in : n.inputs)
        if (!in.empty()) live.insert(in);
    }
    std::vector<ir::Node> kept;
    int64_t removed = 0;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      if (keep[i]) kept.push_back(std::move(g.nodes[i]));
      else ++removed;
    }
    g.nodes = std::move(kept);
    int64_t removed_init = 0;
    for (auto it = g.initializers.begin(); it != g.initializers.end();) {
      if (!live.count(it->first)) { it = g.initializers.erase(it); ++removed_init; }
      else ++it;
    }
    for (auto it = g.values.begin(); it != g.values.end();) {
      bool is_in = std::find(g.inputs.begin(), g.inputs.end(), it->first) != g.inputs.end();
      it = (live.count(it->first) || is_in) ? std::next(it) : g.values.erase(it);
    }
    ctx.count(name(), "removed_nodes", removed);
    ctx.count(name(), "removed_initializers", removed_init);
    return removed + removed_init > 0;
  }
};

}  // namespace

std::unique_ptr<Pass> make_infer_shapes() { return std::make_unique<InferShapes>(); }
std::unique_ptr<Pass> make_fold() { return std::make_unique<Fold>(); }
std::unique_ptr<Pass> make_dce() { return std::make_unique<Dce>(); }

}  // namespace kerf::passes
