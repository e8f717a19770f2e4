// Structured pruning rewrites (see prune.h).
#include "prune/prune.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <sstream>

#include <Eigen/Dense>

#include "compiler/ir/pass.h"
#include "passes/passes.h"

namespace kerf::prune {
namespace {

const ir::Node* producer_node(const ir::Graph& g, const std::string& v) {
  const int p = g.producer(v);
  return p < 0 ? nullptr : &g.nodes[static_cast<size_t>(p)];
}

Status unsupported(const ir::Node& n, const std::string& what) {
  return Unsupported("pruning: node '" + n.name + "' (" + n.qualified_op() + "): " + what);
}

/// The Linear producing `v` (optionally through a Rotary); its weight must be an initializer.
Result<const ir::Node*> linear_of(const ir::Graph& g, const ir::Node& at, const std::string& v, bool through_rotary) {
  const ir::Node* p = producer_node(g, v);
  if (p && through_rotary && p->is("kerf", "Rotary")) p = producer_node(g, p->inputs[0]);
  if (!p || !p->is("kerf", "Linear")) return unsupported(at, "input '" + v + "' is not produced by a kerf.Linear");
  if (p->inputs.size() > 2 && !p->inputs[2].empty()) return unsupported(*p, "projections with a bias are not supported");
  if (!g.is_constant(p->inputs[1])) return unsupported(*p, "weight '" + p->inputs[1] + "' is not an initializer");
  return p;
}

const std::vector<int64_t>& shape_of(const ir::Graph& g, const std::string& init) { return g.initializers.at(init).shape; }

/// Indices of the `keep` largest scores, ascending. Ties keep the lower index.
std::vector<int64_t> top_k(const std::vector<double>& s, int64_t keep) {
  std::vector<int64_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[static_cast<size_t>(a)] > s[static_cast<size_t>(b)]; });
  idx.resize(static_cast<size_t>(keep));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int64_t> all_of(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

int64_t round_keep(double frac, int64_t n) { return std::clamp<int64_t>(static_cast<int64_t>(std::llround(frac * static_cast<double>(n))), 1, n); }

/// A fraction < 1 that rounds to every structure would silently prune nothing: an error that says
/// what the counts allow.
Status check_reduces(double frac, int64_t kept, int64_t n, const std::string& what) {
  if (frac < 1 && kept == n)
    return InvalidArgument("pruning: keeping " + std::to_string(frac) + " of " + std::to_string(n) + " " + what +
                           " rounds to all of them; the smallest reduction keeps " + std::to_string(n - 1) + "/" +
                           std::to_string(n) + " = " + std::to_string(static_cast<double>(n - 1) / static_cast<double>(n)));
  return Status::Ok();
}

/// Row / column selection of a float initializer (any float dtype; the dtype is kept, so values are
/// bit-identical).
ir::Tensor take(const ir::Tensor& t, int axis, const std::vector<int64_t>& idx) {
  ir::Tensor o;
  o.dtype = t.dtype;
  o.shape = t.shape;
  const size_t es = ir::dtype_size(t.dtype);
  if (t.shape.size() == 1) {
    o.shape[0] = static_cast<int64_t>(idx.size());
    o.data.resize(idx.size() * es);
    for (size_t i = 0; i < idx.size(); ++i)
      std::copy_n(t.data.data() + static_cast<size_t>(idx[i]) * es, es, o.data.data() + i * es);
    return o;
  }
  const int64_t R = t.shape[0], C = t.shape[1];
  if (axis == 0) {
    o.shape[0] = static_cast<int64_t>(idx.size());
    o.data.resize(idx.size() * static_cast<size_t>(C) * es);
    for (size_t i = 0; i < idx.size(); ++i)
      std::copy_n(t.data.data() + static_cast<size_t>(idx[i] * C) * es, static_cast<size_t>(C) * es,
                  o.data.data() + i * static_cast<size_t>(C) * es);
  } else {
    o.shape[1] = static_cast<int64_t>(idx.size());
    o.data.resize(static_cast<size_t>(R) * idx.size() * es);
    for (int64_t r = 0; r < R; ++r)
      for (size_t i = 0; i < idx.size(); ++i)
        std::copy_n(t.data.data() + static_cast<size_t>(r * C + idx[i]) * es, es,
                    o.data.data() + (static_cast<size_t>(r) * idx.size() + i) * es);
  }
  return o;
}

/// Rows of whole heads: head indices -> row indices (head_dim rows each).
std::vector<int64_t> head_rows(const std::vector<int64_t>& heads, int64_t dh) {
  std::vector<int64_t> r;
  for (int64_t h : heads)
    for (int64_t i = 0; i < dh; ++i) r.push_back(h * dh + i);
  return r;
}

Status check_indices(const std::vector<int64_t>& v, int64_t n, const std::string& what) {
  if (v.empty()) return InvalidArgument("pruning plan: " + what + " keeps nothing");
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0 || v[i] >= n) return InvalidArgument("pruning plan: " + what + " index " + std::to_string(v[i]) + " out of range [0, " + std::to_string(n) + ")");
    if (i && v[i] <= v[i - 1]) return InvalidArgument("pruning plan: " + what + " indices are not ascending");
  }
  return Status::Ok();
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

/// Linear MACs of one block per token, x2 (see Cost).
double block_linear_flops(int64_t D, int64_t H, int64_t G, int64_t Dh, int64_t F) {
  return 2.0 * static_cast<double>(D) * static_cast<double>(H * Dh + 2 * G * Dh) + 2.0 * static_cast<double>(H * Dh * D) +
         6.0 * static_cast<double>(F * D);
}

}  // namespace

const char* head_mode_name(HeadMode m) { return m == HeadMode::kKvGroups ? "kv-groups" : "query-heads"; }
Result<HeadMode> parse_head_mode(const std::string& s) {
  if (s == "kv-groups" || s == "kv") return HeadMode::kKvGroups;
  if (s == "query-heads" || s == "query") return HeadMode::kQueryHeads;
  return InvalidArgument("unknown head pruning mode '" + s + "' (kv-groups | query-heads)");
}

bool Plan::identity() const {
  return dropped_blocks.empty() && heads.empty() && kv_groups.empty() && ffn.empty() && embed.empty();
}

Result<Model> analyze(const ir::Graph& g) {
  Model m;
  for (const auto& n : g.nodes) {
    if (n.is("kerf", "Embedding")) {
      if (!m.embedding_table.empty()) return unsupported(n, "more than one Embedding");
      m.embedding_table = n.inputs[1];
      if (!g.is_constant(m.embedding_table)) return unsupported(n, "table is not an initializer");
      m.vocab = shape_of(g, m.embedding_table)[0];
      m.dim = shape_of(g, m.embedding_table)[1];
    }
  }
  if (m.embedding_table.empty()) return Unsupported("pruning: the graph has no kerf.Embedding (is it lifted?)");
  for (const auto& n : g.nodes) {
    if (!n.is("kerf", "Attention")) continue;
    Block b;
    b.index = static_cast<int>(m.blocks.size());
    b.attention = n.name;
    b.n_heads = n.attr_int("n_heads", 0);
    b.n_kv_heads = n.attr_int("n_kv_heads", 0);
    b.head_dim = n.attr_int("head_dim", 0);
    if (b.n_heads <= 0 || b.n_kv_heads <= 0 || b.head_dim <= 0 || b.n_heads % b.n_kv_heads)
      return unsupported(n, "bad n_heads / n_kv_heads / head_dim");
    KERF_ASSIGN_OR_RETURN(const ir::Node* q, linear_of(g, n, n.inputs[0], true));
    KERF_ASSIGN_OR_RETURN(const ir::Node* k, linear_of(g, n, n.inputs[1], true));
    KERF_ASSIGN_OR_RETURN(const ir::Node* v, linear_of(g, n, n.inputs[2], false));
    if (q->inputs[0] != k->inputs[0] || q->inputs[0] != v->inputs[0]) return unsupported(n, "q, k, v do not read the same normalized input");
    b.wq = q->inputs[1];
    b.wk = k->inputs[1];
    b.wv = v->inputs[1];
    const ir::Node* norm = producer_node(g, q->inputs[0]);
    if (!norm || !norm->is("kerf", "RMSNorm") || !g.is_constant(norm->inputs[1])) return unsupported(n, "q/k/v input is not a kerf.RMSNorm");
    b.attn_norm = norm->name;
    b.attn_norm_weight = norm->inputs[1];
    b.residual_in = norm->inputs[0];
    const auto cons = g.consumers(n.outputs[0]);
    if (cons.size() != 1 || !g.nodes[static_cast<size_t>(cons[0])].is("kerf", "Linear")) return unsupported(n, "output is not read by exactly one kerf.Linear (wo)");
    const ir::Node& o = g.nodes[static_cast<size_t>(cons[0])];
    if (o.inputs.size() > 2 && !o.inputs[2].empty()) return unsupported(o, "projections with a bias are not supported");
    if (!g.is_constant(o.inputs[1])) return unsupported(o, "weight is not an initializer");
    b.wo = o.inputs[1];
    // Residual add after wo, then the FFN norm, the GatedFFN and the second add.
    const auto oc = g.consumers(o.outputs[0]);
    if (oc.size() != 1 || !g.nodes[static_cast<size_t>(oc[0])].is("", "Add")) return unsupported(o, "output is not read by one residual Add");
    const ir::Node& add1 = g.nodes[static_cast<size_t>(oc[0])];
    const std::string& other1 = add1.inputs[0] == o.outputs[0] ? add1.inputs[1] : add1.inputs[0];
    if (other1 != b.residual_in) return unsupported(add1, "residual Add does not add the block input");
    const ir::Node* ffn = nullptr;
    const ir::Node* fnorm = nullptr;
    for (int c : g.consumers(add1.outputs[0])) {
      const ir::Node& cn = g.nodes[static_cast<size_t>(c)];
      if (cn.is("kerf", "RMSNorm")) fnorm = &cn;
    }
    if (!fnorm) return unsupported(add1, "no kerf.RMSNorm (FFN norm) reads the residual stream");
    for (int c : g.consumers(fnorm->outputs[0])) {
      const ir::Node& cn = g.nodes[static_cast<size_t>(c)];
      if (cn.is("kerf", "GatedFFN")) ffn = &cn;
    }
    if (!ffn) return unsupported(*fnorm, "not followed by a kerf.GatedFFN");
    b.ffn_norm = fnorm->name;
    b.ffn_norm_weight = fnorm->inputs[1];
    b.ffn = ffn->name;
    b.w1 = ffn->inputs[1];
    b.w3 = ffn->inputs[2];
    b.w2 = ffn->inputs[3];
    for (const auto* w : {&b.w1, &b.w3, &b.w2})
      if (!g.is_constant(*w)) return unsupported(*ffn, "weight '" + *w + "' is not an initializer");
    b.ffn_dim = shape_of(g, b.w1)[0];
    const auto fc = g.consumers(ffn->outputs[0]);
    if (fc.size() != 1 || !g.nodes[static_cast<size_t>(fc[0])].is("", "Add")) return unsupported(*ffn, "output is not read by one residual Add");
    const ir::Node& add2 = g.nodes[static_cast<size_t>(fc[0])];
    const std::string& other2 = add2.inputs[0] == ffn->outputs[0] ? add2.inputs[1] : add2.inputs[0];
    if (other2 != add1.outputs[0]) return unsupported(add2, "residual Add does not add the attention output");
    b.residual_out = add2.outputs[0];
    // Shapes.
    const int64_t D = m.dim, H = b.n_heads, G = b.n_kv_heads, Dh = b.head_dim, F = b.ffn_dim;
    auto want = [&](const std::string& w, std::vector<int64_t> s) -> Status {
      if (shape_of(g, w) != s) return unsupported(n, "weight '" + w + "' has an unexpected shape");
      return Status::Ok();
    };
    KERF_RETURN_IF_ERROR(want(b.wq, {H * Dh, D}));
    KERF_RETURN_IF_ERROR(want(b.wk, {G * Dh, D}));
    KERF_RETURN_IF_ERROR(want(b.wv, {G * Dh, D}));
    KERF_RETURN_IF_ERROR(want(b.wo, {D, H * Dh}));
    KERF_RETURN_IF_ERROR(want(b.w1, {F, D}));
    KERF_RETURN_IF_ERROR(want(b.w3, {F, D}));
    KERF_RETURN_IF_ERROR(want(b.w2, {D, F}));
    KERF_RETURN_IF_ERROR(want(b.attn_norm_weight, {D}));
    KERF_RETURN_IF_ERROR(want(b.ffn_norm_weight, {D}));
    m.blocks.push_back(std::move(b));
  }
  if (m.blocks.empty()) return Unsupported("pruning: the graph has no kerf.Attention blocks");
  // Final norm and classifier: the Linear producing the first graph output.
  const ir::Node* cls = producer_node(g, g.outputs.empty() ? std::string() : g.outputs[0]);
  if (!cls || !cls->is("kerf", "Linear") || !g.is_constant(cls->inputs[1])) return Unsupported("pruning: the logits are not a kerf.Linear of an initializer");
  m.classifier_weight = cls->inputs[1];
  if (shape_of(g, m.classifier_weight) != std::vector<int64_t>{m.vocab, m.dim}) return unsupported(*cls, "classifier shape is not [V, D]");
  const ir::Node* fn = producer_node(g, cls->inputs[0]);
  if (!fn || !fn->is("kerf", "RMSNorm")) return unsupported(*cls, "classifier input is not a kerf.RMSNorm");
  m.final_norm_weight = fn->inputs[1];
  return m;
}

namespace {
/// Appends block l's kept query heads and KV groups to `p` when it keeps `units` head units (KV
/// groups in kv-groups mode, query heads per group in query-heads mode), the highest-scored ones.
void add_heads(const Block& b, const Scores& s, size_t l, HeadMode mode, int64_t units, Plan* p) {
  const int64_t G = b.n_kv_heads, per = b.n_heads / G;
  std::vector<int64_t> hs;
  if (mode == HeadMode::kKvGroups) {
    p->kv_groups.push_back(top_k(s.kv_groups[l], units));
    for (int64_t gi : p->kv_groups.back())
      for (int64_t j = 0; j < per; ++j) hs.push_back(gi * per + j);
  } else {
    for (int64_t gi = 0; gi < G; ++gi) {
      std::vector<double> sub(s.heads[l].begin() + gi * per, s.heads[l].begin() + (gi + 1) * per);
      for (int64_t j : top_k(sub, units)) hs.push_back(gi * per + j);
    }
    p->kv_groups.push_back(all_of(G));
  }
  p->heads.push_back(hs);
}
}  // namespace

Result<Plan> make_plan(const Model& m, const Scores& s, const PruneOptions& opt) {
  for (double f : {opt.keep_heads, opt.keep_ffn, opt.keep_embed})
    if (!(f > 0 && f <= 1)) return InvalidArgument("pruning: keep fractions must be in (0, 1], got " + std::to_string(f));
  const int L = static_cast<int>(m.blocks.size());
  if (opt.drop_blocks < 0 || opt.drop_blocks >= L)
    return InvalidArgument("pruning: cannot drop " + std::to_string(opt.drop_blocks) + " of " + std::to_string(L) + " blocks");
  Plan p;
  const Block& b0 = m.blocks[0];
  const int64_t H = b0.n_heads, G = b0.n_kv_heads, per = H / G;
  for (const Block& b : m.blocks)
    if (b.n_heads != H || b.n_kv_heads != G || b.ffn_dim != b0.ffn_dim)
      return Unsupported("pruning: blocks of different widths (block " + std::to_string(b.index) + ") are not supported");
  if (opt.keep_heads < 1) {
    if (opt.head_mode == HeadMode::kKvGroups) {
      if (s.kv_groups.size() != m.blocks.size()) return InvalidArgument("pruning: no KV-group scores (" + s.method + ")");
      const int64_t kg = round_keep(opt.keep_heads, G);
      KERF_RETURN_IF_ERROR(check_reduces(opt.keep_heads, kg, G, "KV groups (kv-groups head mode)"));
      if (kg < G)
        for (size_t l = 0; l < m.blocks.size(); ++l) add_heads(m.blocks[l], s, l, opt.head_mode, kg, &p);
    } else {
      if (s.heads.size() != m.blocks.size()) return InvalidArgument("pruning: no head scores (" + s.method + ")");
      const int64_t kp = round_keep(opt.keep_heads, per);
      if (per == 1)
        return InvalidArgument("pruning: query-heads mode needs several query heads per KV group (this model has " +
                               std::to_string(H) + " heads over " + std::to_string(G) + " KV heads); use kv-groups");
      KERF_RETURN_IF_ERROR(check_reduces(opt.keep_heads, kp, per, "query heads per KV group (query-heads mode)"));
      if (kp < per)
        for (size_t l = 0; l < m.blocks.size(); ++l) add_heads(m.blocks[l], s, l, opt.head_mode, kp, &p);
    }
  }
  if (opt.keep_ffn < 1) {
    if (s.ffn.size() != m.blocks.size()) return InvalidArgument("pruning: no FFN channel scores (" + s.method + ")");
    const int64_t kf = round_keep(opt.keep_ffn, b0.ffn_dim);
    KERF_RETURN_IF_ERROR(check_reduces(opt.keep_ffn, kf, b0.ffn_dim, "FFN channels per block"));
    if (kf < b0.ffn_dim)
      for (size_t l = 0; l < m.blocks.size(); ++l) p.ffn.push_back(top_k(s.ffn[l], kf));
  }
  if (opt.keep_embed < 1) {
    if (static_cast<int64_t>(s.embed.size()) != m.dim) return InvalidArgument("pruning: no embedding-channel scores (" + s.method + ")");
    const int64_t kd = round_keep(opt.keep_embed, m.dim);
    KERF_RETURN_IF_ERROR(check_reduces(opt.keep_embed, kd, m.dim, "embedding channels"));
    if (kd < m.dim) p.embed = top_k(s.embed, kd);
  }
  if (opt.drop_blocks > 0) {
    if (static_cast<int>(s.blocks.size()) != L) return InvalidArgument("pruning: no depth (block) scores");
    std::vector<int64_t> keep = top_k(s.blocks, L - opt.drop_blocks);
    for (int l = 0; l < L; ++l)
      if (!std::binary_search(keep.begin(), keep.end(), l)) p.dropped_blocks.push_back(l);
  }
  return p;
}

Widths widths_of(const Model& m, const Plan& p, HeadMode mode) {
  Widths w;
  for (size_t l = 0; l < p.heads.size() && l < m.blocks.size(); ++l)
    w.head_units.push_back(mode == HeadMode::kKvGroups ? static_cast<int64_t>(p.kv_groups[l].size())
                                                       : static_cast<int64_t>(p.heads[l].size() / std::max<size_t>(p.kv_groups[l].size(), 1)));
  for (const auto& f : p.ffn) w.ffn.push_back(static_cast<int64_t>(f.size()));
  return w;
}

int64_t full_head_units(const Block& b, HeadMode mode) {
  return mode == HeadMode::kKvGroups ? b.n_kv_heads : b.n_heads / b.n_kv_heads;
}

Result<Plan> plan_with_widths(const Model& m, const Scores& s, HeadMode mode, const Widths& w, const Plan& base) {
  const size_t L = m.blocks.size();
  if ((!w.head_units.empty() && w.head_units.size() != L) || (!w.ffn.empty() && w.ffn.size() != L))
    return InvalidArgument("pruning widths: one entry per block (" + std::to_string(L) + ") required");
  Plan p;
  p.embed = base.embed;
  p.dropped_blocks = base.dropped_blocks;
  if (!w.head_units.empty()) {
    if ((mode == HeadMode::kKvGroups ? s.kv_groups.size() : s.heads.size()) != L) return InvalidArgument("pruning widths: no head scores (" + s.method + ")");
    for (size_t l = 0; l < L; ++l) {
      const Block& b = m.blocks[l];
      const int64_t full = full_head_units(b, mode);
      if (w.head_units[l] < 1 || w.head_units[l] > full)
        return InvalidArgument("pruning widths: block " + std::to_string(l) + " keeps " + std::to_string(w.head_units[l]) + " head units of " + std::to_string(full));
      add_heads(b, s, l, mode, w.head_units[l], &p);
    }
  }
  if (!w.ffn.empty()) {
    if (s.ffn.size() != L) return InvalidArgument("pruning widths: no FFN channel scores (" + s.method + ")");
    for (size_t l = 0; l < L; ++l) {
      if (w.ffn[l] < 1 || w.ffn[l] > m.blocks[l].ffn_dim)
        return InvalidArgument("pruning widths: block " + std::to_string(l) + " keeps " + std::to_string(w.ffn[l]) + " FFN channels of " + std::to_string(m.blocks[l].ffn_dim));
      p.ffn.push_back(top_k(s.ffn[l], w.ffn[l]));
    }
  }
  return p;
}

Status apply_plan(ir::Graph& g, const Model& m, const Plan& plan) {
  const size_t L = m.blocks.size();
  for (const auto* v : {&plan.heads, &plan.kv_groups, &plan.ffn})
    if (!v->empty() && v->size() != L) return InvalidArgument("pruning plan: per-block lists must have one entry per block (" + std::to_string(L) + ")");
  if (plan.heads.empty() != plan.kv_groups.empty()) return InvalidArgument("pruning plan: heads and kv groups must be given together");
  for (int d : plan.dropped_blocks)
    if (d < 0 || static_cast<size_t>(d) >= L) return InvalidArgument("pruning plan: dropped block " + std::to_string(d) + " out of range");
  // Validate everything before touching the graph.
  for (size_t l = 0; l < L; ++l) {
    const Block& b = m.blocks[l];
    const std::string where = "block " + std::to_string(l);
    if (!plan.heads.empty()) {
      KERF_RETURN_IF_ERROR(check_indices(plan.heads[l], b.n_heads, where + " heads"));
      KERF_RETURN_IF_ERROR(check_indices(plan.kv_groups[l], b.n_kv_heads, where + " kv groups"));
      const int64_t per = b.n_heads / b.n_kv_heads;
      const int64_t Gk = static_cast<int64_t>(plan.kv_groups[l].size()), Hk = static_cast<int64_t>(plan.heads[l].size());
      if (Hk % Gk) return InvalidArgument("pruning plan: " + where + " keeps " + std::to_string(Hk) + " heads over " + std::to_string(Gk) + " KV groups");
      // Every kept KV group keeps exactly Hk/Gk of its own query heads, in order.
      std::map<int64_t, int64_t> count;
      for (int64_t h : plan.heads[l]) {
        const int64_t grp = h / per;
        if (!std::binary_search(plan.kv_groups[l].begin(), plan.kv_groups[l].end(), grp))
          return InvalidArgument("pruning plan: " + where + " keeps query head " + std::to_string(h) + " whose KV group " + std::to_string(grp) + " is removed");
        ++count[grp];
      }
      for (int64_t grp : plan.kv_groups[l])
        if (count[grp] != Hk / Gk) return InvalidArgument("pruning plan: " + where + " keeps an uneven number of query heads per KV group");
    }
    if (!plan.ffn.empty()) KERF_RETURN_IF_ERROR(check_indices(plan.ffn[l], b.ffn_dim, where + " ffn channels"));
  }
  if (!plan.embed.empty()) KERF_RETURN_IF_ERROR(check_indices(plan.embed, m.dim, "embedding channels"));

  // Width: slice initializers. A shared initializer would be sliced twice: refuse.
  std::map<std::string, int> uses;
  for (const auto& n : g.nodes)
    for (const auto& i : n.inputs)
      if (g.is_constant(i)) ++uses[i];
  auto sole = [&](const std::string& w, int expected) -> Status {
    if (uses[w] != expected) return BadInput("pruning: initializer '" + w + "' is shared with other nodes");
    return Status::Ok();
  };
  for (size_t l = 0; l < L; ++l) {
    const Block& b = m.blocks[l];
    if (!plan.heads.empty() && (static_cast<int64_t>(plan.heads[l].size()) < b.n_heads)) {
      for (const auto* w : {&b.wq, &b.wk, &b.wv, &b.wo}) KERF_RETURN_IF_ERROR(sole(*w, 1));
      const auto qr = head_rows(plan.heads[l], b.head_dim), kr = head_rows(plan.kv_groups[l], b.head_dim);
      g.initializers[b.wq] = take(g.initializers[b.wq], 0, qr);
      g.initializers[b.wk] = take(g.initializers[b.wk], 0, kr);
      g.initializers[b.wv] = take(g.initializers[b.wv], 0, kr);
      g.initializers[b.wo] = take(g.initializers[b.wo], 1, qr);
      for (auto& n : g.nodes)
        if (n.name == b.attention) {
          n.attrs["n_heads"] = static_cast<int64_t>(plan.heads[l].size());
          n.attrs["n_kv_heads"] = static_cast<int64_t>(plan.kv_groups[l].size());
        }
    }
    if (!plan.ffn.empty() && static_cast<int64_t>(plan.ffn[l].size()) < b.ffn_dim) {
      for (const auto* w : {&b.w1, &b.w3, &b.w2}) KERF_RETURN_IF_ERROR(sole(*w, 1));
      g.initializers[b.w1] = take(g.initializers[b.w1], 0, plan.ffn[l]);
      g.initializers[b.w3] = take(g.initializers[b.w3], 0, plan.ffn[l]);
      g.initializers[b.w2] = take(g.initializers[b.w2], 1, plan.ffn[l]);
    }
  }
  if (!plan.embed.empty() && static_cast<int64_t>(plan.embed.size()) < m.dim) {
    // Every tensor with a model-dim axis; nodes that read the residual stream other than the known
    // ones would see a different width: check there are none.
    std::set<std::string> in_cols = {m.embedding_table, m.classifier_weight};
    std::set<std::string> out_rows;
    std::set<std::string> vecs = {m.final_norm_weight};
    for (const Block& b : m.blocks) {
      for (const auto* w : {&b.wq, &b.wk, &b.wv, &b.w1, &b.w3}) in_cols.insert(*w);
      out_rows.insert(b.wo);
      out_rows.insert(b.w2);
      vecs.insert(b.attn_norm_weight);
      vecs.insert(b.ffn_norm_weight);
    }
    for (const auto& n : g.nodes) {
      if (n.domain == "kerf" || n.is("", "Add")) continue;
      return Unsupported("pruning: embedding channels: node '" + n.name + "' (" + n.qualified_op() + ") is not a lifted op");
    }
    for (const auto& w : in_cols) g.initializers[w] = take(g.initializers[w], 1, plan.embed);
    for (const auto& w : out_rows) g.initializers[w] = take(g.initializers[w], 0, plan.embed);
    for (const auto& w : vecs) g.initializers[w] = take(g.initializers[w], 0, plan.embed);
  }
  // Depth: the dropped block's output becomes its input.
  if (!plan.dropped_blocks.empty()) {
    std::map<std::string, std::string> rename;
    for (int d : plan.dropped_blocks) {
      const Block& b = m.blocks[static_cast<size_t>(d)];
      std::string src = b.residual_in;
      while (rename.count(src)) src = rename[src];
      rename[b.residual_out] = src;
    }
    auto resolve = [&](std::string v) {
      while (rename.count(v)) v = rename[v];
      return v;
    };
    for (auto& n : g.nodes)
      for (auto& i : n.inputs) i = resolve(i);
    for (auto& o : g.outputs)
      if (rename.count(o)) return Unsupported("pruning: a dropped block's output '" + o + "' is a graph output");
  }
  // Remove dead nodes / initializers, then re-infer the shapes of every intermediate value.
  PassContext ctx;
  KERF_RETURN_IF_ERROR(passes::make_dce()->run(g, ctx).status());
  for (const auto& n : g.nodes)
    for (const auto& o : n.outputs)
      if (!g.is_graph_output(o)) g.values.erase(o);
  for (auto it = g.values.begin(); it != g.values.end();) {
    const bool live = g.is_graph_output(it->first) || std::find(g.inputs.begin(), g.inputs.end(), it->first) != g.inputs.end();
    it = live ? std::next(it) : g.values.erase(it);
  }
  KERF_RETURN_IF_ERROR(passes::make_infer_shapes()->run(g, ctx).status());
  return g.validate();
}

namespace {
/// W' = W G[:, K] (G[K, K] + damp)^-1 for W [R, n] (row-major), K ascending.
std::vector<float> reconstruct(const std::vector<float>& w, int64_t R, int64_t n, const std::vector<double>& gram,
                               const std::vector<int64_t>& keep) {
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t k = static_cast<int64_t>(keep.size());
  Eigen::Map<const Mat> G(gram.data(), n, n);
  Mat W(R, n);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < n; ++c) W(r, c) = w[static_cast<size_t>(r * n + c)];
  Mat GnK(n, k), GKK(k, k);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) GnK(i, j) = G(i, keep[static_cast<size_t>(j)]);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) GKK(i, j) = G(keep[static_cast<size_t>(i)], keep[static_cast<size_t>(j)]);
  const double damp = 1e-4 * GKK.diagonal().mean() + 1e-12;
  GKK.diagonal().array() += damp;
  // W' GKK = W GnK  ->  GKK W'^T = (W GnK)^T (GKK symmetric)
  Mat rhs = (W * GnK).transpose();
  Mat sol = GKK.ldlt().solve(rhs);  // [k, R]
  std::vector<float> out(static_cast<size_t>(R * k));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < k; ++j) out[static_cast<size_t>(r * k + j)] = static_cast<float>(sol(j, r));
  return out;
}
}  // namespace

Status compensate(ir::Graph& pruned, const ir::Graph& original, const Model& m, const Plan& plan, const Scores& s) {
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    const Block& b = m.blocks[l];
    const bool heads = !plan.heads.empty() && static_cast<int64_t>(plan.heads[l].size()) < b.n_heads;
    const bool ffn = !plan.ffn.empty() && static_cast<int64_t>(plan.ffn[l].size()) < b.ffn_dim;
    if (std::find(plan.dropped_blocks.begin(), plan.dropped_blocks.end(), static_cast<int>(l)) != plan.dropped_blocks.end()) continue;
    const int64_t D = plan.embed.empty() ? m.dim : static_cast<int64_t>(plan.embed.size());
    auto rows_of = [&](const std::string& w) {
      std::vector<float> full = original.initializers.at(w).to_f32();
      if (plan.embed.empty()) return full;
      const int64_t n = original.initializers.at(w).shape[1];
      std::vector<float> out;
      for (int64_t d : plan.embed) out.insert(out.end(), full.begin() + d * n, full.begin() + (d + 1) * n);
      return out;
    };
    if (heads) {
      const int64_t n = b.n_heads * b.head_dim;
      if (s.attn_gram.size() != m.blocks.size() || static_cast<int64_t>(s.attn_gram[l].size()) != n * n)
        return InvalidArgument("pruning compensation: no attention-output second moments for block " + std::to_string(l));
      const auto keep = head_rows(plan.heads[l], b.head_dim);
      pruned.initializers[b.wo] = ir::Tensor::from_f32({D, static_cast<int64_t>(keep.size())}, reconstruct(rows_of(b.wo), D, n, s.attn_gram[l], keep));
    }
    if (ffn) {
      const int64_t n = b.ffn_dim;
      if (s.ffn_gram.size() != m.blocks.size() || static_cast<int64_t>(s.ffn_gram[l].size()) != n * n)
        return InvalidArgument("pruning compensation: no FFN-activation second moments for block " + std::to_string(l));
      pruned.initializers[b.w2] = ir::Tensor::from_f32({D, static_cast<int64_t>(plan.ffn[l].size())}, reconstruct(rows_of(b.w2), D, n, s.ffn_gram[l], plan.ffn[l]));
    }
  }
  return pruned.validate();
}

std::string to_text(const Plan& p) {
  std::ostringstream os;
  const size_t L = std::max({p.heads.size(), p.ffn.size()});
  for (size_t l = 0; l < L; ++l) {
    os << "block " << l;
    if (!p.heads.empty()) os << " heads " << join(p.heads[l]) << " kv " << join(p.kv_groups[l]);
    if (!p.ffn.empty()) os << " ffn " << join(p.ffn[l]);
    os << "\n";
  }
  if (!p.embed.empty()) os << "embed " << join(p.embed) << "\n";
  if (!p.dropped_blocks.empty()) {
    os << "drop";
    for (size_t i = 0; i < p.dropped_blocks.size(); ++i) os << (i ? "," : " ") << p.dropped_blocks[i];
    os << "\n";
  }
  return os.str();
}

Result<Plan> plan_from_text(const std::string& text) {
  Plan p;
  std::istringstream is(text);
  std::string line;
  int lineno = 0;
  auto ints = [&](const std::string& s) -> Result<std::vector<int64_t>> {
    std::vector<int64_t> v;
    std::stringstream ss(s);
    std::string tok;
    while (std::getline(ss, tok, ',')) {
      try {
        size_t pos = 0;
        v.push_back(std::stoll(tok, &pos));
        if (pos != tok.size()) throw std::invalid_argument(tok);
      } catch (const std::exception&) {
        return BadInput("pruning plan line " + std::to_string(lineno) + ": '" + tok + "' is not an integer");
      }
    }
    return v;
  };
  bool heads = false, ffn = false;
  while (std::getline(is, line)) {
    ++lineno;
    if (line.empty()) continue;
    std::istringstream ls(line);
    std::string kw;
    ls >> kw;
    if (kw == "block") {
      size_t l;
      if (!(ls >> l) || l != std::max(p.heads.size(), p.ffn.size()))
        return BadInput("pruning plan line " + std::to_string(lineno) + ": blocks must be numbered 0, 1, ... in order");
      std::string k, v;
      bool h = false, f = false;
      while (ls >> k >> v) {
        KERF_ASSIGN_OR_RETURN(auto xs, ints(v));
        if (k == "heads") p.heads.push_back(xs), h = true;
        else if (k == "kv") p.kv_groups.push_back(xs);
        else if (k == "ffn") p.ffn.push_back(xs), f = true;
        else return BadInput("pruning plan line " + std::to_string(lineno) + ": unknown key '" + k + "'");
      }
      if (l == 0) heads = h, ffn = f;
      if (h != heads || f != ffn || p.heads.size() != p.kv_groups.size())
        return BadInput("pruning plan line " + std::to_string(lineno) + ": every block must list the same structures");
    } else if (kw == "embed") {
      std::string v;
      ls >> v;
      KERF_ASSIGN_OR_RETURN(p.embed, ints(v));
    } else if (kw == "drop") {
      std::string v;
      ls >> v;
      KERF_ASSIGN_OR_RETURN(auto xs, ints(v));
      for (int64_t x : xs) p.dropped_blocks.push_back(static_cast<int>(x));
    } else {
      return BadInput("pruning plan line " + std::to_string(lineno) + ": unknown line '" + line + "'");
    }
  }
  return p;
}

Result<Cost> count_cost(const ir::Graph& g, int64_t context) {
  Cost c;
  c.context = context;
  c.parameters = g.parameter_count();
  std::set<std::string> seen;
  double lin = 0, attn_per_pos = 0;
  for (const auto& n : g.nodes) {
    if (n.domain != "kerf") continue;
    auto init = [&](size_t i) -> Result<const ir::Tensor*> {
      if (i >= n.inputs.size() || !g.is_constant(n.inputs[i])) return BadInput("cost: node '" + n.name + "' input " + std::to_string(i) + " is not an initializer");
      const ir::Tensor* t = g.constant(n.inputs[i]);
      if (seen.insert(n.inputs[i]).second) c.matrix_parameters += t->numel();
      return t;
    };
    if (n.op == "Linear") {
      KERF_ASSIGN_OR_RETURN(const ir::Tensor* w, init(1));
      lin += 2.0 * static_cast<double>(w->numel());
    } else if (n.op == "GatedFFN") {
      for (size_t i = 1; i <= 3; ++i) {
        KERF_ASSIGN_OR_RETURN(const ir::Tensor* w, init(i));
        lin += 2.0 * static_cast<double>(w->numel());
      }
    } else if (n.op == "Embedding") {
      KERF_RETURN_IF_ERROR(init(1).status());
    } else if (n.op == "Attention") {
      attn_per_pos += 4.0 * static_cast<double>(n.attr_int("n_heads", 0) * n.attr_int("head_dim", 0));
    }
  }
  c.decode_flops = lin + attn_per_pos * static_cast<double>(context + 1);
  c.prefill_flops = lin + attn_per_pos * static_cast<double>(context + 1) / 2.0;
  return c;
}

Result<PruneOptions> solve_budget(const ir::Graph& g, const Model& m, const std::string& kind, double fraction, int64_t context,
                                  const PruneOptions& base) {
  if (kind != "flops" && kind != "params") return InvalidArgument("pruning budget: unknown kind '" + kind + "' (flops | params)");
  if (!(fraction > 0 && fraction < 1)) return InvalidArgument("pruning budget: the fraction must be in (0, 1), got " + std::to_string(fraction));
  KERF_ASSIGN_OR_RETURN(Cost full, count_cost(g, context));
  const Block& b = m.blocks[0];
  const int64_t D = m.dim, H = b.n_heads, G = b.n_kv_heads, Dh = b.head_dim, F = b.ffn_dim, per = H / G;
  const double L = static_cast<double>(m.blocks.size());
  // What pruning heads / FFN channels removes, per block (identical blocks).
  auto metric = [&](int64_t h, int64_t gk, int64_t f) {
    const double dh_full = block_linear_flops(D, H, G, Dh, F), dh_new = block_linear_flops(D, h, gk, Dh, f);
    if (kind == "flops")
      return full.decode_flops - L * (dh_full - dh_new) - L * 4.0 * static_cast<double>((H - h) * Dh) * static_cast<double>(context + 1);
    return static_cast<double>(full.parameters) - L * (dh_full - dh_new) / 2.0;
  };
  const double target = fraction * (kind == "flops" ? full.decode_flops : static_cast<double>(full.parameters));
  double best_min = -1;
  PruneOptions best = base;
  const int64_t head_steps = base.head_mode == HeadMode::kKvGroups ? G : per;
  for (int64_t hs = 1; hs <= head_steps; ++hs) {
    const int64_t h = base.head_mode == HeadMode::kKvGroups ? hs * per : hs * G;
    const int64_t gk = base.head_mode == HeadMode::kKvGroups ? hs : G;
    // Largest FFN width that fits with this head count.
    int64_t f = 0;
    for (int64_t fi = F; fi >= 1; --fi)
      if (metric(h, gk, fi) <= target) {
        f = fi;
        break;
      }
    if (f == 0) continue;
    const double rh = static_cast<double>(hs) / static_cast<double>(head_steps), rf = static_cast<double>(f) / static_cast<double>(F);
    const double score = std::min(rh, rf) + 1e-6 * (rh + rf);
    if (score > best_min) {
      best_min = score;
      best.keep_heads = rh;
      best.keep_ffn = rf;
    }
  }
  if (best_min < 0) return InvalidArgument("pruning budget: " + kind + " " + std::to_string(fraction) + " of the original is not reachable by pruning heads and FFN channels");
  return best;
}

}  // namespace kerf::prune
