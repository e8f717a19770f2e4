// Importance metrics for structured pruning (the API is prune/importance.h; the implementation runs
// the reference executor, so it lives with the other LibTorch code in distill/).
#include "prune/importance.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include <Eigen/Dense>

#include "distill/reference.h"
#include "distill/reference_torch.h"
#include "quant/recipe.h"

namespace kerf::prune {
namespace {

/// Calibration sequences grouped into right-padded batches of similar lengths.
struct Batch {
  std::vector<int64_t> tokens;  // [B*T]
  std::vector<int64_t> len;     // real length per row
  int64_t B = 0, T = 0;
};

std::vector<Batch> make_batches(const std::vector<std::vector<int64_t>>& calib, int64_t max_tokens) {
  std::vector<const std::vector<int64_t>*> seqs;
  int64_t total = 0;
  for (const auto& s : calib) {
    if (max_tokens > 0 && total >= max_tokens) break;
    if (s.size() < 2) continue;
    seqs.push_back(&s);
    total += static_cast<int64_t>(s.size());
  }
  std::stable_sort(seqs.begin(), seqs.end(), [](auto* a, auto* b) { return a->size() < b->size(); });
  std::vector<Batch> out;
  for (size_t i = 0; i < seqs.size();) {
    Batch b;
    b.T = static_cast<int64_t>(seqs[i]->size());
    size_t j = i;
    while (j < seqs.size() && j - i < 16 && static_cast<int64_t>(j - i + 1) * static_cast<int64_t>(seqs[j]->size()) <= 8192) {
      b.T = static_cast<int64_t>(seqs[j]->size());
      ++j;
    }
    if (j == i) j = i + 1;
    b.B = static_cast<int64_t>(j - i);
    for (size_t k = i; k < j; ++k) {
      const auto& s = *seqs[k];
      b.len.push_back(static_cast<int64_t>(s.size()));
      for (int64_t t = 0; t < b.T; ++t) b.tokens.push_back(t < static_cast<int64_t>(s.size()) ? s[static_cast<size_t>(t)] : s.back());
    }
    out.push_back(std::move(b));
    i = j;
  }
  return out;
}

std::string node_with_weight(const ir::Graph& g, const std::string& op, const std::string& w) {
  for (const auto& n : g.nodes)
    if (n.is("kerf", op) && n.inputs.size() > 1 && n.inputs[1] == w) return n.name;
  return {};
}

/// Per-structure sums of an element-wise score tensor per weight (Taylor: |w g|, magnitude: w^2).
Scores aggregate(const Model& m, std::map<std::string, at::Tensor>& S, const std::string& method) {
  Scores s;
  s.method = method;
  at::Tensor embed = S.at(m.embedding_table).sum(0);
  if (m.classifier_weight != m.embedding_table) embed = embed + S.at(m.classifier_weight).sum(0);
  embed = embed + S.at(m.final_norm_weight);
  for (const Block& b : m.blocks) {
    const int64_t H = b.n_heads, G = b.n_kv_heads, Dh = b.head_dim, D = m.dim;
    at::Tensor heads = S.at(b.wq).view({H, Dh * D}).sum(1) + S.at(b.wo).view({D, H, Dh}).sum(at::IntArrayRef{0, 2});
    at::Tensor kv = heads.view({G, H / G}).sum(1) + S.at(b.wk).view({G, Dh * D}).sum(1) + S.at(b.wv).view({G, Dh * D}).sum(1);
    at::Tensor ffn = S.at(b.w1).sum(1) + S.at(b.w3).sum(1) + S.at(b.w2).sum(0);
    for (const auto* w : {&b.wq, &b.wk, &b.wv, &b.w1, &b.w3}) embed = embed + S.at(*w).sum(0);
    for (const auto* w : {&b.wo, &b.w2}) embed = embed + S.at(*w).sum(1);
    embed = embed + S.at(b.attn_norm_weight) + S.at(b.ffn_norm_weight);
    auto vec = [](const at::Tensor& t) {
      at::Tensor c = t.to(at::kDouble).contiguous();
      return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    };
    s.heads.push_back(vec(heads));
    s.kv_groups.push_back(vec(kv));
    s.ffn.push_back(vec(ffn));
    if (&b == &m.blocks.back()) s.embed = vec(embed);
  }
  return s;
}

std::vector<std::string> scored_tensors(const Model& m) {
  std::vector<std::string> v = {m.embedding_table, m.final_norm_weight};
  if (m.classifier_weight != m.embedding_table) v.push_back(m.classifier_weight);
  for (const Block& b : m.blocks)
    for (const auto* w : {&b.wq, &b.wk, &b.wv, &b.wo, &b.w1, &b.w3, &b.w2, &b.attn_norm_weight, &b.ffn_norm_weight}) v.push_back(*w);
  return v;
}

Result<at::Tensor> weight_tensor(const distill::ReferenceExecutor& ex, const std::string& name) {
  std::vector<int64_t> shape;
  KERF_ASSIGN_OR_RETURN(std::vector<float> w, ex.weight(name, &shape));
  return at::from_blob(w.data(), shape, at::kFloat).clone();
}

Result<Scores> magnitude(const distill::ReferenceExecutor& ex, const Model& m) {
  std::map<std::string, at::Tensor> S;
  for (const auto& n : scored_tensors(m)) {
    KERF_ASSIGN_OR_RETURN(at::Tensor w, weight_tensor(ex, n));
    S[n] = w * w;
  }
  return aggregate(m, S, "magnitude");
}

Result<Scores> taylor(distill::ReferenceExecutor& ex, const Model& m, const std::vector<Batch>& batches) {
  std::map<std::string, at::Tensor> params, grads;
  const auto names = scored_tensors(m);
  for (const auto& n : names) {
    KERF_ASSIGN_OR_RETURN(at::Tensor w, weight_tensor(ex, n));
    params[n] = w.set_requires_grad(true);
    grads[n] = at::zeros_like(w);
  }
  int64_t total = 0;
  for (const Batch& b : batches)
    for (int64_t l : b.len) total += l - 1;
  for (const Batch& b : batches) {
    at::Tensor tok = at::from_blob(const_cast<int64_t*>(b.tokens.data()), {b.B, b.T}, at::kLong).clone();
    KERF_ASSIGN_OR_RETURN(at::Tensor logits, distill::forward_train(ex, tok, params));
    at::Tensor mask = at::zeros({b.B, b.T - 1}, at::kFloat);
    for (int64_t i = 0; i < b.B; ++i) mask[i].narrow(0, 0, b.len[static_cast<size_t>(i)] - 1).fill_(1.f);
    at::Tensor lp = at::log_softmax(logits.narrow(1, 0, b.T - 1), -1);
    at::Tensor nll = -lp.gather(-1, tok.narrow(1, 1, b.T - 1).unsqueeze(-1)).squeeze(-1);
    at::Tensor loss = (nll * mask).sum() / static_cast<double>(total);
    std::vector<at::Tensor> leaves;
    for (const auto& n : names) leaves.push_back(params[n]);
    std::vector<at::Tensor> g;
    try {
      g = torch::autograd::grad({loss}, leaves, {}, false, false, true);
    } catch (const c10::Error& e) {
      return Internal(std::string("taylor importance: backward failed: ") + e.what_without_backtrace());
    }
    for (size_t i = 0; i < names.size(); ++i)
      if (g[i].defined()) grads[names[i]].add_(g[i]);
  }
  std::map<std::string, at::Tensor> S;
  for (const auto& n : names) S[n] = (params[n].detach() * grads[n]).abs();
  return aggregate(m, S, "taylor");
}

Result<Scores> activation(distill::ReferenceExecutor& ex, const ir::Graph& g, const Model& m, const std::vector<Batch>& batches) {
  enum Kind { kHeads, kFfn, kNorm };
  struct Tap {
    Kind kind;
    size_t block;
  };
  std::map<std::string, Tap> taps;  // node name -> what its observation means
  std::vector<size_t> idx;
  auto add = [&](const std::string& node, Tap t) -> Status {
    const int64_t i = ex.node_index(node);
    if (node.empty() || i < 0) return Internal("activation importance: node for a pruning structure not found");
    taps[node] = t;
    idx.push_back(static_cast<size_t>(i));
    return Status::Ok();
  };
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    const Block& b = m.blocks[l];
    KERF_RETURN_IF_ERROR(add(node_with_weight(g, "Linear", b.wo), {kHeads, l}));
    KERF_RETURN_IF_ERROR(add(node_with_weight(g, "Linear", b.wq), {kNorm, l}));
    KERF_RETURN_IF_ERROR(add(b.ffn, {kFfn, l}));
  }
  KERF_RETURN_IF_ERROR(add(node_with_weight(g, "Linear", m.classifier_weight), {kNorm, m.blocks.size()}));
  const size_t L = m.blocks.size();
  std::vector<std::vector<double>> heads(L), ffn(L);
  std::vector<double> embed(static_cast<size_t>(m.dim), 0.0);
  std::vector<std::vector<double>> agram(L), fgram(L);
  for (size_t l = 0; l < L; ++l) {
    heads[l].assign(static_cast<size_t>(m.blocks[l].n_heads), 0.0);
    ffn[l].assign(static_cast<size_t>(m.blocks[l].ffn_dim), 0.0);
    const size_t hd = static_cast<size_t>(m.blocks[l].n_heads * m.blocks[l].head_dim), f = static_cast<size_t>(m.blocks[l].ffn_dim);
    agram[l].assign(hd * hd, 0.0);
    fgram[l].assign(f * f, 0.0);
  }
  int64_t count = 0;
  const Batch* cur = nullptr;
  auto real = [&](int64_t row) { return row % cur->T < cur->len[static_cast<size_t>(row / cur->T)]; };
  // G += X^T X over the real rows (Eigen, double accumulation).
  auto add_gram = [&](std::vector<double>& g, const float* data, int64_t rows, int64_t cols) {
    using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    std::vector<int64_t> keep;
    for (int64_t r = 0; r < rows; ++r)
      if (real(r)) keep.push_back(r);
    Mat x(static_cast<Eigen::Index>(keep.size()), cols);
    for (size_t i = 0; i < keep.size(); ++i)
      std::copy_n(data + keep[i] * cols, cols, x.row(static_cast<Eigen::Index>(i)).data());
    Eigen::MatrixXd xtx = (x.transpose() * x).cast<double>();
    Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> G(g.data(), cols, cols);
    G += xtx;
  };
  ex.set_observer(
      [&](const distill::ReferenceExecutor::Observation& o) {
        const Tap& t = taps.at(*o.node_name);
        const std::string what = o.what;
        if (t.kind == kHeads && what == "x") {
          const Block& b = m.blocks[t.block];
          add_gram(agram[t.block], o.data, o.rows, o.cols);
          for (int64_t r = 0; r < o.rows; ++r) {
            if (!real(r)) continue;
            const float* x = o.data + r * o.cols;
            for (int64_t h = 0; h < b.n_heads; ++h) {
              double s = 0;
              for (int64_t i = 0; i < b.head_dim; ++i) s += static_cast<double>(x[h * b.head_dim + i]) * x[h * b.head_dim + i];
              heads[t.block][static_cast<size_t>(h)] += std::sqrt(s);
            }
          }
        } else if (t.kind == kFfn && what == "ffn_hidden") {
          add_gram(fgram[t.block], o.data, o.rows, o.cols);
          for (int64_t r = 0; r < o.rows; ++r) {
            if (!real(r)) continue;
            const float* x = o.data + r * o.cols;
            for (int64_t c = 0; c < o.cols; ++c) ffn[t.block][static_cast<size_t>(c)] += std::fabs(x[c]);
          }
        } else if ((t.kind == kNorm || t.kind == kFfn) && what == "x") {  // RMSNorm outputs (GatedFFN x = FFN norm)
          for (int64_t r = 0; r < o.rows; ++r) {
            if (!real(r)) continue;
            const float* x = o.data + r * o.cols;
            for (int64_t c = 0; c < o.cols; ++c) embed[static_cast<size_t>(c)] += std::fabs(x[c]);
          }
        }
      },
      idx);
  for (const Batch& b : batches) {
    cur = &b;
    ex.reset_cache();
    auto r = ex.forward_batch(b.tokens, b.B, b.T);
    ex.reset_cache();
    if (!r.ok()) {
      ex.set_observer(nullptr, {});
      return r.status();
    }
    for (int64_t l : b.len) count += l;
  }
  ex.set_observer(nullptr, {});
  Scores s;
  s.method = "activation";
  const double n = static_cast<double>(std::max<int64_t>(count, 1));
  for (size_t l = 0; l < L; ++l) {
    for (double& v : heads[l]) v /= n;
    for (double& v : ffn[l]) v /= n;
    const int64_t G = m.blocks[l].n_kv_heads, per = m.blocks[l].n_heads / G;
    std::vector<double> kv(static_cast<size_t>(G), 0.0);
    for (int64_t h = 0; h < m.blocks[l].n_heads; ++h) kv[static_cast<size_t>(h / per)] += heads[l][static_cast<size_t>(h)];
    s.kv_groups.push_back(kv);
  }
  for (double& v : embed) v /= n;
  s.heads = std::move(heads);
  s.ffn = std::move(ffn);
  s.embed = std::move(embed);
  s.attn_gram = std::move(agram);
  s.ffn_gram = std::move(fgram);
  return s;
}

/// Mean next-token cross entropy (nats) of `ex` over the batches.
Result<double> mean_nll(distill::ReferenceExecutor& ex, const std::vector<Batch>& batches) {
  double sum = 0;
  int64_t n = 0;
  for (const Batch& b : batches) {
    ex.reset_cache();
    KERF_ASSIGN_OR_RETURN(std::vector<float> lg, ex.forward_batch(b.tokens, b.B, b.T));
    ex.reset_cache();
    const int64_t V = static_cast<int64_t>(lg.size()) / (b.B * b.T);
    at::Tensor logits = at::from_blob(lg.data(), {b.B, b.T, V}, at::kFloat);
    at::Tensor lp = at::log_softmax(logits, -1);
    for (int64_t i = 0; i < b.B; ++i)
      for (int64_t t = 0; t + 1 < b.len[static_cast<size_t>(i)]; ++t) {
        sum -= lp[i][t][b.tokens[static_cast<size_t>(i * b.T + t + 1)]].item<double>();
        ++n;
      }
  }
  return n ? sum / static_cast<double>(n) : 0.0;
}

}  // namespace

const char* metric_name(Metric m) {
  switch (m) {
    case Metric::kActivation: return "activation";
    case Metric::kTaylor: return "taylor";
    case Metric::kMagnitude: return "magnitude";
  }
  return "?";
}

Result<Metric> parse_metric(const std::string& s) {
  if (s == "activation") return Metric::kActivation;
  if (s == "taylor") return Metric::kTaylor;
  if (s == "magnitude") return Metric::kMagnitude;
  return InvalidArgument("unknown importance metric '" + s + "' (activation | taylor | magnitude)");
}

Result<Scores> compute_importance(const ir::Graph& lifted, const Model& m, const std::vector<std::vector<int64_t>>& calib,
                                  const ImportanceOptions& opt) {
  auto say = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  std::vector<Batch> batches = make_batches(calib, opt.max_tokens);
  if (batches.empty() && opt.metric != Metric::kMagnitude) return InvalidArgument("pruning importance: no calibration tokens");
  distill::ReferenceOptions ro;
  ro.threads = opt.threads;
  KERF_ASSIGN_OR_RETURN(distill::ReferenceExecutor ex, distill::ReferenceExecutor::create(lifted, ro));
  Scores s;
  int64_t tokens = 0;
  for (const Batch& b : batches)
    for (int64_t l : b.len) tokens += l;
  say(std::string("pruning importance: ") + metric_name(opt.metric) + " on " + std::to_string(tokens) + " calibration tokens");
  switch (opt.metric) {
    case Metric::kActivation: {
      c10::InferenceMode im;
      KERF_ASSIGN_OR_RETURN(s, activation(ex, lifted, m, batches));
      break;
    }
    case Metric::kTaylor: {
      KERF_ASSIGN_OR_RETURN(s, taylor(ex, m, batches));
      break;
    }
    case Metric::kMagnitude: {
      KERF_ASSIGN_OR_RETURN(s, magnitude(ex, m));
      break;
    }
  }
  if (opt.gram && s.attn_gram.empty() && !batches.empty()) {  // second moments for compensate()
    c10::InferenceMode im;
    KERF_ASSIGN_OR_RETURN(Scores a, activation(ex, lifted, m, batches));
    s.attn_gram = std::move(a.attn_gram);
    s.ffn_gram = std::move(a.ffn_gram);
  }
  if (opt.depth) {
    if (batches.empty()) return InvalidArgument("pruning importance: depth scores need calibration tokens");
    c10::InferenceMode im;
    KERF_ASSIGN_OR_RETURN(double base, mean_nll(ex, batches));
    for (size_t l = 0; l < m.blocks.size(); ++l) {
      ir::Graph g = lifted;
      Plan p;
      p.dropped_blocks = {static_cast<int>(l)};
      KERF_RETURN_IF_ERROR(apply_plan(g, m, p));
      KERF_ASSIGN_OR_RETURN(distill::ReferenceExecutor e2, distill::ReferenceExecutor::create(g, ro));
      KERF_ASSIGN_OR_RETURN(double nll, mean_nll(e2, batches));
      s.blocks.push_back(nll - base);
      say("pruning importance: without block " + std::to_string(l) + " the calibration NLL rises by " + std::to_string(nll - base));
    }
  }
  return s;
}

Result<Plan> allocate_widths(const ir::Graph& lifted, const Model& m, const Scores& s, HeadMode mode, const Plan& uniform,
                             const std::vector<std::vector<int64_t>>& calib, const AllocationOptions& opt) {
  auto say = [&](const std::string& line) {
    if (opt.progress) opt.progress(line);
  };
  const std::vector<Batch> batches = make_batches(calib, opt.max_tokens);
  if (batches.empty()) return InvalidArgument("pruning allocation: no calibration tokens");
  const size_t L = m.blocks.size();
  distill::ReferenceOptions ro;
  ro.threads = opt.threads;
  c10::InferenceMode im;
  // Log-probabilities [B, T, V] of a graph's executor on a batch.
  auto log_probs = [](distill::ReferenceExecutor& ex, const Batch& b) -> Result<at::Tensor> {
    ex.reset_cache();
    KERF_ASSIGN_OR_RETURN(std::vector<float> lg, ex.forward_batch(b.tokens, b.B, b.T));
    ex.reset_cache();
    const int64_t V = static_cast<int64_t>(lg.size()) / (b.B * b.T);
    return at::log_softmax(at::from_blob(lg.data(), {b.B, b.T, V}, at::kFloat), -1);  // a new tensor: lg may go
  };
  // The unpruned model's log-probabilities and the real-position masks, once.
  std::vector<at::Tensor> tlp, mask;
  int64_t positions = 0;
  {
    KERF_ASSIGN_OR_RETURN(distill::ReferenceExecutor tex, distill::ReferenceExecutor::create(lifted, ro));
    for (const Batch& b : batches) {
      KERF_ASSIGN_OR_RETURN(at::Tensor lp, log_probs(tex, b));
      tlp.push_back(lp);
      at::Tensor mk = at::zeros({b.B, b.T, 1}, at::kFloat);
      for (int64_t i = 0; i < b.B; ++i) mk[i].narrow(0, 0, b.len[static_cast<size_t>(i)]).fill_(1.f);
      positions += mk.sum().item<int64_t>();
      mask.push_back(mk);
    }
  }
  const bool grams = !s.attn_gram.empty() && !s.ffn_gram.empty();
  auto measure = [&](const Widths& w) -> Result<double> {
    KERF_ASSIGN_OR_RETURN(Plan p, plan_with_widths(m, s, mode, w, uniform));
    ir::Graph g = lifted;
    KERF_RETURN_IF_ERROR(apply_plan(g, m, p));
    if (grams) KERF_RETURN_IF_ERROR(compensate(g, lifted, m, p, s));
    KERF_ASSIGN_OR_RETURN(distill::ReferenceExecutor ex, distill::ReferenceExecutor::create(g, ro));
    double kl = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      KERF_ASSIGN_OR_RETURN(at::Tensor slp, log_probs(ex, batches[i]));
      kl += ((tlp[i].exp() * (tlp[i] - slp)) * mask[i]).sum().item<double>();
    }
    return kl / static_cast<double>(positions);
  };
  // Local search from the uniform widths: move `c` units of one kind from block a to block b while
  // the best such move lowers the measured KL (best improvement per pass).
  Widths cur = widths_of(m, uniform, mode);
  KERF_ASSIGN_OR_RETURN(double kl, measure(cur));
  {
    char buf[120];
    std::snprintf(buf, sizeof buf, "pruning allocation: uniform widths, calibration KL %.4f on %lld positions", kl, static_cast<long long>(positions));
    say(buf);
  }
  // A dropped block's widths count toward the totals but compute nothing: never a source or a target.
  auto dropped = [&](size_t l) {
    return std::find(uniform.dropped_blocks.begin(), uniform.dropped_blocks.end(), static_cast<int>(l)) != uniform.dropped_blocks.end();
  };
  auto search = [&](std::vector<int64_t>* v, const std::vector<int64_t>& full, int64_t c, const char* what) -> Status {
    for (int move = 0; move < opt.max_moves; ++move) {
      double best = kl;
      size_t from = L, to = L;
      for (size_t a = 0; a < L; ++a)
        for (size_t b = 0; b < L; ++b) {
          if (a == b || dropped(a) || dropped(b) || (*v)[a] - c < 1 || (*v)[b] + c > full[b]) continue;
          (*v)[a] -= c, (*v)[b] += c;
          Result<double> r = measure(cur);
          (*v)[a] += c, (*v)[b] -= c;
          if (!r.ok()) return r.status();
          if (*r < best) best = *r, from = a, to = b;
        }
      if (from == L) break;
      (*v)[from] -= c, (*v)[to] += c;
      char buf[200];
      std::snprintf(buf, sizeof buf, "pruning allocation: %lld %s from block %zu to block %zu (calibration KL %.4f -> %.4f)",
                    static_cast<long long>(c), what, from, to, kl, best);
      say(buf);
      kl = best;
    }
    return Status::Ok();
  };
  std::vector<int64_t> full_heads, full_ffn;
  int64_t fmax = 0;
  for (const Block& b : m.blocks) {
    full_heads.push_back(full_head_units(b, mode));
    full_ffn.push_back(b.ffn_dim);
    fmax = std::max(fmax, b.ffn_dim);
  }
  if (!cur.head_units.empty())
    KERF_RETURN_IF_ERROR(search(&cur.head_units, full_heads, 1, mode == HeadMode::kKvGroups ? "KV groups" : "query heads per group"));
  if (!cur.ffn.empty())
    for (int64_t div : {8, 16, 32}) KERF_RETURN_IF_ERROR(search(&cur.ffn, full_ffn, std::max<int64_t>(1, (fmax + div - 1) / div), "FFN channels"));
  return plan_with_widths(m, s, mode, cur, uniform);
}

}  // namespace kerf::prune
