// lift-transformer: exporter op soup -> kerf transformer ops (see passes.h and compiler/ir/ir.h).
//
// Matching is anchored on ops that only appear once per structure (MatMul with a constant weight,
// ReduceMean of a square, Sigmoid gate, Softmax) and then checks the surrounding dataflow; what is
// between the q/k/v projections and the softmax ("glue": reshapes, transposes, rotary arithmetic,
// KV-cache concatenation, repeat_kv expansion) is traced, checked for the facts the lifted op
// asserts (rotary tables follow theta^(-2i/d), interleaved pairs, causal mask), and replaced.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "passes/passes.h"

namespace kerf::passes {
namespace {

using ir::DType;
using ir::Graph;
using ir::Node;
using ir::Tensor;

class Lifter {
 public:
  Lifter(Graph& g, PassContext& ctx, bool canonical) : g_(g), ctx_(ctx), canonical_(canonical) {}

  Result<bool> run() {
    bool changed = false;
    index();
    changed |= lift_linear();
    changed |= lift_embedding();
    index();
    KERF_ASSIGN_OR_RETURN(bool norms, lift_rmsnorm());
    changed |= norms;
    index();
    changed |= lift_gated_ffn();
    index();
    KERF_ASSIGN_OR_RETURN(bool attn, lift_attention());
    changed |= attn;
    index();
    changed |= tie_classifier();
    if (!changed) return false;
    // Drop the KV-cache graph inputs/outputs that the Attention ops now hold implicitly.
    for (const auto& v : drop_outputs_) g_.outputs.erase(std::remove(g_.outputs.begin(), g_.outputs.end(), v), g_.outputs.end());
    for (const auto& v : drop_inputs_) {
      g_.inputs.erase(std::remove(g_.inputs.begin(), g_.inputs.end(), v), g_.inputs.end());
      g_.values.erase(v);
    }
    PassContext tmp;
    KERF_ASSIGN_OR_RETURN(bool dce_changed, make_dce()->run(g_, tmp));
    (void)dce_changed;
    for (const auto& v : drop_inputs_)
      for (const auto& n : g_.nodes)
        for (const auto& in : n.inputs)
          if (in == v)
            return Unsupported("KV-cache input '" + v + "' is still used by node '" + n.name + "' (" +
                               n.qualified_op() + ") after lifting attention");
    if (canonical_) KERF_RETURN_IF_ERROR(canonical_names());
    return true;
  }

 private:
  Graph& g_;
  PassContext& ctx_;
  bool canonical_;
  std::unordered_map<std::string, int> prod_;
  std::unordered_map<std::string, std::vector<int>> cons_;
  std::set<std::string> drop_inputs_, drop_outputs_;

  void index() {
    prod_.clear();
    cons_.clear();
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      for (const auto& o : g_.nodes[i].outputs) prod_[o] = static_cast<int>(i);
      for (const auto& in : g_.nodes[i].inputs)
        if (!in.empty()) cons_[in].push_back(static_cast<int>(i));
    }
  }
  Node* producer(const std::string& v) {
    auto it = prod_.find(v);
    return it == prod_.end() ? nullptr : &g_.nodes[static_cast<size_t>(it->second)];
  }
  Node* producer_op(const std::string& v, const char* dom, const char* op) {
    Node* n = producer(v);
    return n && n->is(dom, op) ? n : nullptr;
  }
  std::vector<Node*> consumers(const std::string& v) {
    std::vector<Node*> out;
    auto it = cons_.find(v);
    if (it != cons_.end())
      for (int i : it->second) out.push_back(&g_.nodes[static_cast<size_t>(i)]);
    return out;
  }
  std::optional<double> scalar(const std::string& v) const {
    const Tensor* t = g_.constant(v);
    if (!t || t->numel() != 1) return std::nullopt;
    return static_cast<double>(t->f32_at(0));
  }
  static void make_kerf(Node& n, const std::string& op, std::vector<std::string> inputs) {
    n.op = op;
    n.domain = "kerf";
    n.inputs = std::move(inputs);
    n.attrs.clear();
  }

  // ------------------------------------------------------------------ Linear, Embedding
  bool lift_linear() {
    bool changed = false;
    std::map<std::string, std::string> transposed;  // weight [K,N] -> lifted weight [N,K]
    for (auto& n : g_.nodes) {
      if (!n.is("", "MatMul") || n.inputs.size() != 2) continue;
      const Tensor* w = g_.constant(n.inputs[1]);
      if (!w || w->shape.size() != 2 || !ir::dtype_is_float(w->dtype) || g_.is_constant(n.inputs[0])) continue;
      auto it = transposed.find(n.inputs[1]);
      if (it == transposed.end()) {
        const int64_t K = w->shape[0], N = w->shape[1];
        const size_t es = ir::dtype_size(w->dtype);
        Tensor t;
        t.dtype = w->dtype;
        t.shape = {N, K};
        t.data.resize(w->data.size());
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < N; ++j)
            std::memcpy(&t.data[static_cast<size_t>(j * K + k) * es], &w->data[static_cast<size_t>(k * N + j) * es], es);
        std::string name = g_.unique_name(n.inputs[1] + ".T");
        g_.initializers[name] = std::move(t);
        it = transposed.emplace(n.inputs[1], name).first;
      }
      make_kerf(n, "Linear", {n.inputs[0], it->second});
      ctx_.count("lift-transformer", "linear");
      changed = true;
    }
    return changed;
  }

  bool lift_embedding() {
    bool changed = false;
    for (auto& n : g_.nodes) {
      if (!n.is("", "Gather") || n.inputs.size() != 2 || n.attr_int("axis", 0) != 0) continue;
      const Tensor* table = g_.constant(n.inputs[0]);
      if (!table || table->shape.size() != 2 || !ir::dtype_is_float(table->dtype) || g_.is_constant(n.inputs[1]))
        continue;
      make_kerf(n, "Embedding", {n.inputs[1], n.inputs[0]});
      ctx_.count("lift-transformer", "embedding");
      changed = true;
    }
    return changed;
  }

  // ------------------------------------------------------------------ RMSNorm
  // weight * (x * 1/sqrt(mean(x^2, -1) + eps))   with  Div(1, s) | Reciprocal(s) | Div(x, s)
  Result<bool> lift_rmsnorm() {
    bool changed = false;
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      Node& rm = g_.nodes[i];
      if (!rm.is("", "ReduceMean") || rm.attr_int("keepdims", 1) != 1) continue;
      auto axes = rm.attr_ints("axes");
      if (axes.size() != 1 || axes[0] != -1) continue;
      Node* pw = producer_op(rm.inputs[0], "", "Pow");
      if (!pw || scalar(pw->inputs[1]).value_or(0) != 2.0) continue;
      const std::string x = pw->inputs[0];
      auto c1 = consumers(rm.outputs[0]);
      if (c1.size() != 1 || !c1[0]->is("", "Add")) continue;
      Node* add = c1[0];
      const std::string eps_v = add->inputs[0] == rm.outputs[0] ? add->inputs[1] : add->inputs[0];
      auto eps = scalar(eps_v);
      if (!eps) continue;
      auto c2 = consumers(add->outputs[0]);
      if (c2.size() != 1 || !c2[0]->is("", "Sqrt")) continue;
      Node* sq = c2[0];
      auto c3 = consumers(sq->outputs[0]);
      if (c3.size() != 1) continue;
      std::string normed;  // value holding x / rms
      Node* r = c3[0];
      if (r->is("", "Div") && r->inputs[1] == sq->outputs[0] && scalar(r->inputs[0]).value_or(0) == 1.0) {
        auto c4 = consumers(r->outputs[0]);
        if (c4.size() != 1 || !c4[0]->is("", "Mul")) continue;
        Node* m = c4[0];
        if (!((m->inputs[0] == x && m->inputs[1] == r->outputs[0]) || (m->inputs[1] == x && m->inputs[0] == r->outputs[0])))
          continue;
        normed = m->outputs[0];
      } else if (r->is("", "Reciprocal")) {
        auto c4 = consumers(r->outputs[0]);
        if (c4.size() != 1 || !c4[0]->is("", "Mul")) continue;
        normed = c4[0]->outputs[0];
      } else if (r->is("", "Div") && r->inputs[0] == x && r->inputs[1] == sq->outputs[0]) {
        normed = r->outputs[0];
      } else {
        continue;
      }
      auto c5 = consumers(normed);
      if (c5.size() != 1 || !c5[0]->is("", "Mul")) continue;
      Node* wm = c5[0];
      const std::string w = wm->inputs[0] == normed ? wm->inputs[1] : wm->inputs[0];
      const Tensor* wt = g_.constant(w);
      if (!wt || wt->shape.size() != 1) continue;
      make_kerf(*wm, "RMSNorm", {x, w});
      wm->attrs["eps"] = static_cast<double>(static_cast<float>(*eps));
      ctx_.count("lift-transformer", "rmsnorm");
      changed = true;
    }
    return changed;
  }

  // ------------------------------------------------------------------ GatedFFN
  // w2( (g * sigmoid(g)) * u ),  g = w1(h), u = w3(h)
  bool lift_gated_ffn() {
    bool changed = false;
    for (auto& n : g_.nodes) {
      if (!n.is("kerf", "Linear")) continue;
      Node* m = producer_op(n.inputs[0], "", "Mul");
      if (!m) continue;
      for (int side = 0; side < 2; ++side) {
        Node* act = producer_op(m->inputs[side], "", "Mul");
        Node* up = producer_op(m->inputs[1 - side], "kerf", "Linear");
        if (!act || !up) continue;
        Node* sig = nullptr;
        std::string gate;
        for (int s = 0; s < 2; ++s) {
          Node* cand = producer_op(act->inputs[s], "", "Sigmoid");
          if (cand && cand->inputs[0] == act->inputs[1 - s]) {
            sig = cand;
            gate = act->inputs[1 - s];
          }
        }
        if (!sig) continue;
        Node* gl = producer_op(gate, "kerf", "Linear");
        if (!gl || gl->inputs[0] != up->inputs[0]) continue;
        const std::string h = gl->inputs[0], w1 = gl->inputs[1], w3 = up->inputs[1], w2 = n.inputs[1];
        make_kerf(n, "GatedFFN", {h, w1, w3, w2});
        n.attrs["activation"] = std::string("silu");
        ctx_.count("lift-transformer", "gated_ffn");
        changed = true;
        break;
      }
    }
    return changed;
  }

  // ------------------------------------------------------------------ Attention
  struct Region {
    std::set<int> nodes;                 // glue nodes traversed
    std::vector<std::string> linears;    // kerf.Linear outputs reached
    std::vector<std::string> graph_ins;  // graph inputs reached (past KV)
    std::set<std::string> consts;        // float constants of rank 2 reached (rotary tables)
    std::string bad;                     // first unexpected node, if any
  };

  // Data inputs of glue ops (shape operands are not followed: they only carry sizes).
  static std::vector<size_t> data_inputs(const Node& n) {
    const std::string& op = n.op;
    if (op == "Shape") return {};
    if (op == "Reshape" || op == "Expand" || op == "Slice" || op == "Unsqueeze" || op == "Squeeze" ||
        op == "Transpose" || op == "Cast" || op == "Gather" || op == "Identity" || op == "Neg")
      return {0};
    if (op == "Where") return {1, 2};
    if (op == "Concat" || op == "Mul" || op == "Sub" || op == "Add" || op == "Div") {
      std::vector<size_t> all;
      for (size_t i = 0; i < n.inputs.size(); ++i) all.push_back(i);
      return all;
    }
    return {};
  }
  static bool is_glue(const Node& n) {
    static const std::set<std::string> glue = {"Reshape", "Expand", "Slice", "Unsqueeze", "Squeeze", "Transpose",
                                               "Cast",    "Gather", "Identity", "Neg",   "Where",   "Concat",
                                               "Mul",     "Sub",    "Add",   "Div",       "Shape",   "Equal",
                                               "ConstantOfShape", "Trilu", "Range"};
    return n.domain.empty() && glue.count(n.op);
  }

  Region trace(const std::string& start) {
    Region r;
    std::vector<std::string> stack{start};
    std::set<std::string> seen;
    while (!stack.empty()) {
      std::string v = stack.back();
      stack.pop_back();
      if (v.empty() || !seen.insert(v).second) continue;
      if (const Tensor* t = g_.constant(v)) {
        if (t->shape.size() == 2 && ir::dtype_is_float(t->dtype)) r.consts.insert(v);
        continue;
      }
      auto it = prod_.find(v);
      if (it == prod_.end()) {
        if (std::find(g_.inputs.begin(), g_.inputs.end(), v) != g_.inputs.end()) r.graph_ins.push_back(v);
        continue;
      }
      const Node& n = g_.nodes[static_cast<size_t>(it->second)];
      if (n.is("kerf", "Linear")) {
        r.linears.push_back(v);
        continue;
      }
      if (!is_glue(n)) {
        if (r.bad.empty()) r.bad = n.name + " (" + n.qualified_op() + ")";
        continue;
      }
      r.nodes.insert(it->second);
      for (size_t k : data_inputs(n))
        if (k < n.inputs.size()) stack.push_back(n.inputs[k]);
    }
    return r;
  }

  struct Rope {
    bool present = false;
    int64_t head_dim = 0;
    double theta = 0;
    int64_t max_pos = 0;
  };

  // Finds cos/sin tables among `consts`, checks cos[p][i] = cos(p * theta^(-2i/d)) (and sin).
  Result<Rope> check_rope(const std::set<std::string>& consts, const std::string& where) {
    Rope rope;
    const Tensor* cos_t = nullptr;
    const Tensor* sin_t = nullptr;
    for (const auto& c : consts) {
      const Tensor* t = g_.constant(c);
      if (t->shape[0] < 2 || t->shape[1] < 1) continue;
      bool ones = true, zeros = true;
      for (int64_t j = 0; j < t->shape[1]; ++j) {
        ones = ones && std::fabs(t->f32_at(j) - 1.f) < 1e-3f;
        zeros = zeros && std::fabs(t->f32_at(j)) < 1e-3f;
      }
      if (ones) cos_t = t;
      if (zeros) sin_t = t;
    }
    if (!cos_t && !sin_t) return rope;
    if (!cos_t || !sin_t || cos_t->shape != sin_t->shape)
      return Unsupported(where + ": found a rotary table but not a matching cos/sin pair");
    const int64_t P = cos_t->shape[0], half = cos_t->shape[1], d = 2 * half;
    // theta from position 1, pair 1 (pair 0 always has frequency 1): angle = theta^(-2/d).
    double theta = 10000.0;
    if (half > 1) {
      double a = std::atan2(sin_t->f32_at(half + 1), cos_t->f32_at(half + 1));
      if (a <= 0) return Unsupported(where + ": rotary table has a non-positive frequency");
      theta = std::pow(a, -static_cast<double>(d) / 2.0);
      theta = std::round(theta * 1000.0) / 1000.0;
    }
    // fp16 tables make the estimate approximate: also try it rounded to 1..7 significant digits
    // and keep the theta that reproduces the whole table best.
    auto table_error = [&](double th) {
      double err = 0;
      for (int64_t p = 0; p < P; ++p)
        for (int64_t i = 0; i < half; ++i) {
          const float freq = static_cast<float>(1.0 / std::pow(th, 2.0 * static_cast<double>(i) / static_cast<double>(d)));
          const double ang = static_cast<double>(static_cast<float>(p) * freq);
          err = std::max(err, std::fabs(std::cos(ang) - cos_t->f32_at(p * half + i)));
          err = std::max(err, std::fabs(std::sin(ang) - sin_t->f32_at(p * half + i)));
        }
      return err;
    };
    double max_err = table_error(theta);
    const double estimate = theta;
    for (int digits = 1; digits <= 7; ++digits) {
      const double mag = std::pow(10.0, std::floor(std::log10(estimate)) - digits + 1);
      const double cand = std::round(estimate / mag) * mag;
      const double e = table_error(cand);
      if (e < max_err) {
        max_err = e;
        theta = cand;
      }
    }
    if (max_err > 2e-3)
      return Unsupported(where + ": rotary tables do not follow cos/sin(pos * theta^(-2i/d)) for theta " +
                         std::to_string(theta) + " (max error " + std::to_string(max_err) + ")");
    rope.present = true;
    rope.head_dim = d;
    rope.theta = theta;
    rope.max_pos = P;
    ctx_.log.push_back(where + ": rotary theta " + std::to_string(theta) + ", head_dim " + std::to_string(d) +
                       ", table max error " + std::to_string(max_err));
    return rope;
  }

  bool region_has_interleave(const Region& r) {
    for (int i : r.nodes) {
      const Node& n = g_.nodes[static_cast<size_t>(i)];
      if (!n.is("", "Gather")) continue;
      const Tensor* idx = g_.constant(n.inputs[1]);
      auto vi = g_.values.find(n.inputs[0]);
      int64_t rank = vi != g_.values.end() && vi->second.rank_known ? static_cast<int64_t>(vi->second.shape.size()) : -1;
      int64_t axis = n.attr_int("axis", 0);
      if (idx && idx->numel() == 1 && (axis == -1 || (rank > 0 && axis == rank - 1))) {
        // the pair axis has size 2
        if (rank > 0) {
          const auto& dim = vi->second.shape.back();
          if (dim.is_static() && dim.value != 2) continue;
        }
        return true;
      }
    }
    return false;
  }

  Result<bool> lift_attention() {
    bool changed = false;
    PassContext dummy;
    (void)make_infer_shapes()->run(g_, dummy);  // shapes for the interleave check
    int layer = 0;
    std::vector<std::string> softmaxes;
    for (const auto& n : g_.nodes)
      if (n.is("", "Softmax")) softmaxes.push_back(n.name);
    for (const auto& sname : softmaxes) {
      index();
      size_t si = 0;
      while (si < g_.nodes.size() && g_.nodes[si].name != sname) ++si;
      if (si == g_.nodes.size()) return Internal("softmax '" + sname + "' vanished while lifting");
      const std::string where = "attention at Softmax '" + g_.nodes[si].name + "'";
      Node& sm = g_.nodes[si];
      Node* add = producer_op(sm.inputs[0], "", "Add");
      if (!add) return Unsupported(where + ": expected scores + mask before the softmax");
      // The scores side leads to MatMul(q, k^T) through an optional scale.
      std::string scores, mask;
      double scale = 1.0;
      Node* mm = nullptr;
      for (int s = 0; s < 2 && !mm; ++s) {
        Node* p = producer(add->inputs[s]);
        if (!p) continue;
        double sc = 1.0;
        Node* q = p;
        if (p->is("", "Div") && scalar(p->inputs[1])) {
          sc = 1.0 / *scalar(p->inputs[1]);
          q = producer(p->inputs[0]);
        } else if (p->is("", "Mul") && (scalar(p->inputs[1]) || scalar(p->inputs[0]))) {
          bool right = scalar(p->inputs[1]).has_value();
          sc = *scalar(p->inputs[right ? 1 : 0]);
          q = producer(p->inputs[right ? 0 : 1]);
        }
        if (q && q->is("", "MatMul") && !g_.is_constant(q->inputs[1])) {
          mm = q;
          scale = sc;
          scores = add->inputs[s];
          mask = add->inputs[1 - s];
        }
      }
      if (!mm) return Unsupported(where + ": scores are not a MatMul of queries and keys (with a constant scale)");
      // softmax -> MatMul(p, v) -> Transpose(0,2,1,3) -> Reshape = merged heads
      auto c1 = consumers(sm.outputs[0]);
      if (c1.size() != 1 || !c1[0]->is("", "MatMul") || c1[0]->inputs[0] != sm.outputs[0])
        return Unsupported(where + ": softmax output is not multiplied by the values");
      Node* av = c1[0];
      auto c2 = consumers(av->outputs[0]);
      if (c2.size() != 1 || !c2[0]->is("", "Transpose") || c2[0]->attr_ints("perm") != std::vector<int64_t>{0, 2, 1, 3})
        return Unsupported(where + ": attention output is not transposed back to [batch, seq, heads, dim]");
      auto c3 = consumers(c2[0]->outputs[0]);
      if (c3.size() != 1 || !c3[0]->is("", "Reshape"))
        return Unsupported(where + ": attention output heads are not merged by a Reshape");
      const std::string out_value = c3[0]->outputs[0];
      const int out_index = prod_[out_value];

      Region rq = trace(mm->inputs[0]), rk = trace(mm->inputs[1]), rv = trace(av->inputs[1]), rm = trace(mask);
      for (const Region* r : {&rq, &rk, &rv})
        if (!r->bad.empty()) return Unsupported(where + ": unexpected op " + r->bad + " between projection and attention");
      if (rq.linears.size() != 1 || rk.linears.size() != 1 || rv.linears.size() != 1)
        return Unsupported(where + ": could not find exactly one q, k and v projection");
      bool causal = false;
      for (int i : rm.nodes)
        if (g_.nodes[static_cast<size_t>(i)].is("", "Trilu") && g_.nodes[static_cast<size_t>(i)].attr_int("upper", 1) == 1)
          causal = true;
      if (!causal) return Unsupported(where + ": the attention mask is not recognised as causal (Trilu upper)");
      KERF_ASSIGN_OR_RETURN(Rope rope_q, check_rope(rq.consts, where + " (queries)"));
      KERF_ASSIGN_OR_RETURN(Rope rope_k, check_rope(rk.consts, where + " (keys)"));
      if (rope_q.present != rope_k.present)
        return Unsupported(where + ": rotary embedding applied to only one of queries and keys");
      if (rope_q.present && (!region_has_interleave(rq) || !region_has_interleave(rk)))
        return Unsupported(where + ": rotary embedding is not of the interleaved-pairs form (only that is supported)");
      const std::string q = rq.linears[0], k = rk.linears[0], v = rv.linears[0];
      auto rows = [&](const std::string& lin) { return g_.constant(producer(lin)->inputs[1])->shape[0]; };
      const int64_t qn = rows(q), kn = rows(k), vn = rows(v);
      int64_t head_dim = rope_q.present ? rope_q.head_dim : static_cast<int64_t>(std::llround(1.0 / (scale * scale)));
      if (head_dim <= 0 || qn % head_dim || kn % head_dim || kn != vn)
        return Unsupported(where + ": projection sizes q " + std::to_string(qn) + ", k " + std::to_string(kn) +
                           ", v " + std::to_string(vn) + " do not fit head_dim " + std::to_string(head_dim));
      const int64_t n_heads = qn / head_dim, n_kv = kn / head_dim;
      if (n_heads % n_kv) return Unsupported(where + ": n_heads " + std::to_string(n_heads) + " is not a multiple of n_kv_heads " + std::to_string(n_kv));
      // KV cache: past inputs reached from keys/values; present outputs produced inside the regions.
      if (rk.graph_ins.size() != rv.graph_ins.size() || rk.graph_ins.size() > 1)
        return Unsupported(where + ": keys and values do not read one past-cache input each");
      for (const auto& pin : rk.graph_ins) drop_inputs_.insert(pin);
      for (const auto& pin : rv.graph_ins) drop_inputs_.insert(pin);
      for (const Region* r : {&rk, &rv})
        for (int i : r->nodes)
          for (const auto& o : g_.nodes[static_cast<size_t>(i)].outputs)
            if (g_.is_graph_output(o)) drop_outputs_.insert(o);
      if (!rk.graph_ins.empty()) ctx_.count("lift-transformer", "kv_cache_pairs");
      if (rope_q.present) g_.metadata["model.max_seq_len"] = std::to_string(rope_q.max_pos);

      // Replace the merging Reshape with Rotary(q), Rotary(k), Attention.
      std::vector<Node> fresh;
      std::string qr = q, kr = k;
      if (rope_q.present) {
        qr = g_.unique_name(q + ".rot");
        kr = g_.unique_name(k + ".rot");
        for (auto [in, outv] : {std::pair{q, qr}, std::pair{k, kr}}) {
          Node r;
          r.domain = "kerf";
          r.op = "Rotary";
          r.name = outv;
          r.inputs = {in};
          r.outputs = {outv};
          r.attrs["head_dim"] = head_dim;
          r.attrs["theta"] = rope_q.theta;
          r.attrs["interleaved"] = int64_t{1};
          fresh.push_back(std::move(r));
        }
      }
      Node a;
      a.domain = "kerf";
      a.op = "Attention";
      a.name = "attention_" + std::to_string(layer++);
      a.inputs = {qr, kr, v};
      a.outputs = {out_value};
      a.attrs["n_heads"] = n_heads;
      a.attrs["n_kv_heads"] = n_kv;
      a.attrs["head_dim"] = head_dim;
      a.attrs["scale"] = static_cast<double>(static_cast<float>(scale));
      a.attrs["causal"] = int64_t{1};
      fresh.push_back(std::move(a));
      g_.nodes.erase(g_.nodes.begin() + out_index);
      g_.nodes.insert(g_.nodes.begin() + out_index, fresh.begin(), fresh.end());
      ctx_.count("lift-transformer", "attention");
      changed = true;
    }
    return changed;
  }

  // ------------------------------------------------------------------ tied classifier
  bool tie_classifier() {
    bool changed = false;
    std::vector<std::string> tables;
    for (const auto& n : g_.nodes)
      if (n.is("kerf", "Embedding")) tables.push_back(n.inputs[1]);
    for (auto& n : g_.nodes) {
      if (!n.is("kerf", "Linear")) continue;
      const Tensor* w = g_.constant(n.inputs[1]);
      for (const auto& t : tables) {
        if (t == n.inputs[1]) {  // already reads the table (a TorchScript trace of a tied model)
          if (!g_.metadata.count("model.tied_embeddings")) {
            ctx_.log.push_back("classifier '" + n.name + "' reads the embedding table '" + t + "': tied");
            g_.metadata["model.tied_embeddings"] = "1";
            ctx_.count("lift-transformer", "tied_classifier");
          }
          continue;
        }
        const Tensor* e = g_.constant(t);
        if (e && w && *e == *w) {
          ctx_.log.push_back("classifier '" + n.name + "' weight equals the embedding table '" + t + "': tied");
          n.inputs[1] = t;
          g_.metadata["model.tied_embeddings"] = "1";
          ctx_.count("lift-transformer", "tied_classifier");
          changed = true;
        }
      }
    }
    return changed;
  }

  // ------------------------------------------------------------------ canonical names
  Status canonical_names() {
    index();
    std::map<std::string, std::string> ren;  // old value/initializer name -> new
    auto name = [&](const std::string& old, const std::string& fresh) {
      if (!old.empty() && !ren.count(old)) ren[old] = fresh;
    };
    int layer = -1;
    for (const auto& n : g_.nodes) {
      if (n.is("kerf", "Embedding")) {
        name(n.outputs[0], "embed");
        name(n.inputs[1], "model.embed.weight");
        if (g_.inputs.size() == 1 && n.inputs[0] == g_.inputs[0]) name(n.inputs[0], "tokens");
      } else if (n.is("kerf", "Attention")) {
        ++layer;
        const std::string L = "layers." + std::to_string(layer) + ".";
        const std::string W = "model.layers." + std::to_string(layer) + ".";
        name(n.outputs[0], L + "attn");
        const char* roles[3] = {"q", "k", "v"};
        for (int i = 0; i < 3; ++i) {
          std::string v = n.inputs[static_cast<size_t>(i)];
          Node* r = producer_op(v, "kerf", "Rotary");
          if (r) {
            name(v, L + roles[i] + "_rot");
            v = r->inputs[0];
          }
          name(v, L + roles[i]);
          if (Node* lin = producer_op(v, "kerf", "Linear")) {
            name(lin->inputs[1], W + "w" + roles[i] + ".weight");
            if (Node* norm = producer_op(lin->inputs[0], "kerf", "RMSNorm")) {
              name(norm->outputs[0], L + "attn_norm");
              name(norm->inputs[1], W + "attn_norm.weight");
            }
          }
        }
        for (Node* c : consumers(n.outputs[0]))
          if (c->is("kerf", "Linear")) {
            name(c->outputs[0], L + "attn_out");
            name(c->inputs[1], W + "wo.weight");
            for (Node* r : consumers(c->outputs[0]))
              if (r->is("", "Add")) name(r->outputs[0], L + "h");
          }
      } else if (n.is("kerf", "GatedFFN") && layer >= 0) {
        const std::string L = "layers." + std::to_string(layer) + ".";
        const std::string W = "model.layers." + std::to_string(layer) + ".";
        name(n.outputs[0], L + "ffn");
        name(n.inputs[1], W + "w1.weight");
        name(n.inputs[2], W + "w3.weight");
        name(n.inputs[3], W + "w2.weight");
        if (Node* norm = producer_op(n.inputs[0], "kerf", "RMSNorm")) {
          name(norm->outputs[0], L + "ffn_norm");
          name(norm->inputs[1], W + "ffn_norm.weight");
        }
        for (Node* r : consumers(n.outputs[0]))
          if (r->is("", "Add")) name(r->outputs[0], L + "out");
      }
    }
    // Final norm and classifier: the RMSNorm/Linear not named yet that produce the first output.
    if (!g_.outputs.empty()) {
      if (Node* cls = producer_op(g_.outputs[0], "kerf", "Linear")) {
        name(cls->outputs[0], "logits");
        if (!ren.count(cls->inputs[1])) name(cls->inputs[1], "model.lm_head.weight");
        if (Node* norm = producer_op(cls->inputs[0], "kerf", "RMSNorm")) {
          name(norm->outputs[0], "final_norm");
          name(norm->inputs[1], "model.norm.weight");
        }
      }
    }
    // Apply, refusing collisions.
    std::set<std::string> targets;
    for (const auto& [o, n] : ren)
      if (!targets.insert(n).second) return Internal("canonical name '" + n + "' assigned twice");
    auto map = [&](std::string& s) {
      auto it = ren.find(s);
      if (it != ren.end()) s = it->second;
    };
    std::map<std::string, Tensor> inits;
    for (auto& [k, t] : g_.initializers) {
      std::string nk = k;
      map(nk);
      if (inits.count(nk)) return Internal("initializer name collision on '" + nk + "'");
      inits[nk] = std::move(t);
    }
    g_.initializers = std::move(inits);
    std::map<std::string, ir::ValueInfo> vals;
    for (auto& [k, v] : g_.values) {
      std::string nk = k;
      map(nk);
      vals[nk] = v;
    }
    g_.values = std::move(vals);
    for (auto& s : g_.inputs) map(s);
    for (auto& s : g_.outputs) map(s);
    for (auto& n : g_.nodes) {
      for (auto& s : n.inputs) map(s);
      for (auto& s : n.outputs) map(s);
      if (n.domain == "kerf" || n.is("", "Add")) n.name = n.outputs[0];
    }
    return Status::Ok();
  }
};

class LiftTransformer : public Pass {
 public:
  const char* name() const override { return "lift-transformer"; }
  const char* description() const override {
    return "lift op soup into Embedding/RMSNorm/Linear/Rotary/Attention/GatedFFN";
  }
  Status set_option(const std::string& key, const std::string& value) override {
    if (key == "canonical-names" && (value == "0" || value == "1")) {
      canonical_ = value == "1";
      return Status::Ok();
    }
    return Pass::set_option(key, value);
  }
  Result<bool> run(ir::Graph& g, PassContext& ctx) override {
    Lifter l(g, ctx, canonical_);
    return l.run();
  }

 private:
  bool canonical_ = true;
};

}  // namespace

std::unique_ptr<Pass> make_lift_transformer() { return std::make_unique<LiftTransformer>(); }

}  // namespace kerf::passes
