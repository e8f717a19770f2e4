// Quantization-aware distillation (see qad.h).
#include "distill/qad.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <sstream>

#include "compiler/pipeline/progress.h"
#include "distill/checkpoint.h"
#include "distill/dist_torch.h"
#include "distill/reference.h"
#include "distill/reference_torch.h"
#include "quant/recipe.h"

namespace kerf::distill {
namespace {

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Param {
  std::string name;
  at::Tensor w;           // leaf, requires grad
  at::Tensor m, v;        // AdamW moments
  bool fake_quant = false;
  quant::QSpec spec;
  quant::ParamRule rule = quant::ParamRule::kRtn;
  int64_t rows = 0, cols = 0;
  // learn_scales: a fake-quantized matrix's scale / min tensors ([rows, ng], indices into the
  // parameter list), and for those tensors themselves: group_param, LSQ's gradient scale and
  // the sign each scale keeps (the rule's sign: the Q4_0 rule's scales are negative).
  int s_idx = -1, m_idx = -1;
  bool group_param = false;
  double grad_scale = 1.0;
  at::Tensor sign;
};

/// LSQ forward of a matrix with learned group parameters: the exact artifact quantizer
/// (quantize_with_params) as the value, the LSQ / LSQ+ straight-through gradients (qad.h,
/// learn_scales) for w, s and m.
Result<at::Tensor> lsq_fake_quant(const Param& p, const Param& sp, const Param* mp, bool with_grad) {
  const int64_t ng = sp.w.size(1), g = p.spec.group_for(p.cols);
  at::Tensor sv = sp.w.detach().contiguous(), mv = mp ? mp->w.detach().contiguous() : at::Tensor();
  std::vector<quant::GroupParams> gp(static_cast<size_t>(p.rows * ng));
  for (size_t i = 0; i < gp.size(); ++i) {
    gp[i].scale = sv.data_ptr<float>()[i];
    gp[i].min = mp ? mv.data_ptr<float>()[i] : 0.f;
  }
  at::Tensor w = p.w.detach().contiguous();
  KERF_ASSIGN_OR_RETURN(quant::Unpacked u, quant::quantize_with_params(w.data_ptr<float>(), p.rows, p.cols, p.spec, gp));
  KERF_ASSIGN_OR_RETURN(std::vector<float> d, quant::dequantize(u));
  at::Tensor wq = at::from_blob(d.data(), {p.rows, p.cols}, at::kFloat).clone();
  if (!with_grad) return wq;
  std::vector<float> codes(u.codes.begin(), u.codes.end()), ss(gp.size()), ms(gp.size());
  for (size_t i = 0; i < gp.size(); ++i) ss[i] = u.params[i].scale, ms[i] = u.params[i].min;
  auto expand = [&](const at::Tensor& t) { return t.repeat_interleave(g, 1).narrow(1, 0, p.cols); };
  const at::Tensor q = at::from_blob(codes.data(), {p.rows, p.cols}, at::kFloat).clone();
  at::Tensor f;
  if (p.spec.kind == quant::QKind::kBinary) {
    f = expand(sp.w) * q + p.w;
  } else {
    const at::Tensor sd = expand(at::from_blob(ss.data(), {p.rows, ng}, at::kFloat).clone());
    const at::Tensor md = expand(at::from_blob(ms.data(), {p.rows, ng}, at::kFloat).clone());
    const at::Tensor live = sd.ne(0);
    const at::Tensor x = at::where(live, (w - md) / at::where(live, sd, at::ones_like(sd)), at::zeros_like(sd));
    const at::Tensor in = (live & x.ge(p.spec.qmin()) & x.le(p.spec.qmax())).to(at::kFloat);
    f = expand(sp.w) * (q - in * x) + p.w * in;
    if (mp) f = f + expand(mp->w) * (1 - in);
  }
  return f + (wq - f).detach();
}

/// The group parameters of `p` as the rule chooses them from its current weights (unsnapped
/// values of the representable result): the starting point of learned scales.
Result<std::pair<at::Tensor, at::Tensor>> rule_params(const Param& p) {
  at::Tensor w = p.w.detach().contiguous();
  KERF_ASSIGN_OR_RETURN(quant::Unpacked u, quant::quantize_rtn_unpacked(w.data_ptr<float>(), p.rows, p.cols, p.spec, nullptr, p.rule));
  const int64_t ng = static_cast<int64_t>(u.params.size()) / p.rows;
  std::vector<float> sv, mv;
  for (const auto& gp : u.params) sv.push_back(gp.scale), mv.push_back(gp.min);
  return std::make_pair(at::from_blob(sv.data(), {p.rows, ng}, at::kFloat).clone(), at::from_blob(mv.data(), {p.rows, ng}, at::kFloat).clone());
}

/// Q(W): the artifact's quantizer applied to the current weights, dequantized (float32).
Result<at::Tensor> fake_quant(const Param& p) {
  at::Tensor w = p.w.detach().contiguous();
  KERF_ASSIGN_OR_RETURN(quant::QuantTensor q,
                        quant::quantize_rtn(w.data_ptr<float>(), p.rows, p.cols, p.spec, nullptr, p.rule));
  KERF_ASSIGN_OR_RETURN(std::vector<float> d, quant::dequantize(q));
  return at::from_blob(d.data(), {p.rows, p.cols}, at::kFloat).clone();
}

/// Effective weights for a forward: STE for the fake-quantized ones.
Result<std::map<std::string, at::Tensor>> effective(std::vector<Param>& ps, bool with_grad) {
  std::map<std::string, at::Tensor> out;
  for (Param& p : ps) {
    if (p.group_param) continue;
    if (p.s_idx >= 0) {
      KERF_ASSIGN_OR_RETURN(out[p.name], lsq_fake_quant(p, ps[static_cast<size_t>(p.s_idx)], p.m_idx >= 0 ? &ps[static_cast<size_t>(p.m_idx)] : nullptr,
                                                        with_grad));
      continue;
    }
    if (!p.fake_quant) {
      out[p.name] = with_grad ? p.w : p.w.detach();
      continue;
    }
    KERF_ASSIGN_OR_RETURN(at::Tensor q, fake_quant(p));
    out[p.name] = with_grad ? p.w + (q - p.w).detach() : q;
  }
  return out;
}

struct Batch {
  at::Tensor tokens;  // [B, T] int64
  at::Tensor mask;    // [B, T] float, 1 on real positions
  std::vector<size_t> rows;  // training-sequence index per row (uncut rows only; SIZE_MAX when cut)
  int64_t real = 0;
};

Batch make_batch(const std::vector<const std::vector<int64_t>*>& rows, const std::vector<size_t>& ids, int64_t seq_len,
                 std::mt19937_64* rng) {
  std::vector<std::vector<int64_t>> cut;
  Batch b;
  int64_t T = 1;
  for (size_t k = 0; k < rows.size(); ++k) {
    std::vector<int64_t> x = *rows[k];
    size_t id = k < ids.size() ? ids[k] : SIZE_MAX;
    if (static_cast<int64_t>(x.size()) > seq_len) {
      const int64_t off = rng ? static_cast<int64_t>((*rng)() % static_cast<uint64_t>(x.size() - static_cast<size_t>(seq_len) + 1)) : 0;
      x = std::vector<int64_t>(x.begin() + off, x.begin() + off + seq_len);
      id = SIZE_MAX;
    }
    T = std::max<int64_t>(T, static_cast<int64_t>(x.size()));
    cut.push_back(std::move(x));
    b.rows.push_back(id);
  }
  const int64_t B = static_cast<int64_t>(cut.size());
  b.tokens = at::zeros({B, T}, at::kLong);
  b.mask = at::zeros({B, T}, at::kFloat);
  auto tk = b.tokens.accessor<int64_t, 2>();
  auto mk = b.mask.accessor<float, 2>();
  for (int64_t i = 0; i < B; ++i) {
    const auto& x = cut[static_cast<size_t>(i)];
    for (int64_t t = 0; t < T; ++t) {
      const bool real = t < static_cast<int64_t>(x.size());
      tk[i][t] = real ? x[static_cast<size_t>(t)] : x.back();
      mk[i][t] = real ? 1.f : 0.f;
    }
    b.real += static_cast<int64_t>(x.size());
  }
  return b;
}

/// The teacher's outputs for a batch: logits [B, T, V] and the hidden taps.
struct TeacherOut {
  at::Tensor logits;
  std::vector<at::Tensor> taps;
};

Result<TeacherOut> teacher_forward(ReferenceExecutor& teacher, const Batch& b, const std::vector<std::string>& taps) {
  TeacherOut o;
  if (taps.empty()) {
    const int64_t B = b.tokens.size(0), T = b.tokens.size(1);
    std::vector<int64_t> flat(b.tokens.data_ptr<int64_t>(), b.tokens.data_ptr<int64_t>() + B * T);
    teacher.reset_cache();
    KERF_ASSIGN_OR_RETURN(std::vector<float> lg, teacher.forward_batch(flat, B, T));
    teacher.reset_cache();
    const int64_t V = static_cast<int64_t>(lg.size()) / (B * T);
    o.logits = at::from_blob(lg.data(), {B, T, V}, at::kFloat).clone();
    return o;
  }
  c10::NoGradGuard ng;
  KERF_ASSIGN_OR_RETURN(auto v, forward_train_taps(teacher, b.tokens, {}, taps));
  o.logits = v[0];
  o.taps.assign(v.begin() + 1, v.end());
  return o;
}

/// Sum over real positions of KL(p_t || p_s) at temperature temp, times T^2.
at::Tensor kd_sum(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double temp) {
  at::Tensor lt = at::log_softmax(teacher / temp, -1);
  at::Tensor ls = at::log_softmax(student / temp, -1);
  return ((lt.exp() * (lt - ls)).sum(-1) * mask).sum() * (temp * temp);
}

/// The same, averaged over the real positions.
at::Tensor kd_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double temp) {
  return kd_sum(student, teacher, mask, temp) / mask.sum();
}

/// Per pair, the masked sum of the teacher value's squares (the normalizer of hidden_loss).
std::vector<double> hidden_norms(const std::vector<at::Tensor>& t, const at::Tensor& mask) {
  std::vector<double> d;
  for (const auto& x : t) d.push_back((x.pow(2) * mask.unsqueeze(-1)).sum().item<double>());
  return d;
}

/// Normalized hidden-state MSE: mean over the pairs of masked sum (s - t)^2 / norms[pair] (norms over
/// the whole (global) batch, so data-parallel ranks add up to the single-process loss).
at::Tensor hidden_loss(const std::vector<at::Tensor>& s, const std::vector<at::Tensor>& t, const at::Tensor& mask,
                       const std::vector<double>& norms) {
  at::Tensor total = at::zeros({}, at::kFloat);
  const at::Tensor m = mask.unsqueeze(-1);
  for (size_t i = 0; i < s.size(); ++i) total = total + ((s[i] - t[i]).pow(2) * m).sum() / std::max(norms[i], 1e-12);
  return total / static_cast<double>(std::max<size_t>(s.size(), 1));
}

}  // namespace

Result<QadReport> quantization_aware_distill(ir::Graph& student, const ir::Graph& teacher,
                                             const std::map<std::string, std::pair<quant::QSpec, quant::ParamRule>>& precision,
                                             const std::vector<std::vector<int64_t>>& train,
                                             const std::vector<std::vector<int64_t>>& val, const QadOptions& opt) {
  auto say = [&](const std::string& s) {
    if (opt.progress && (!opt.dp || opt.dp->rank() == 0)) opt.progress(s);
  };
  if (train.empty()) return InvalidArgument(opt.label + ": no training sequences");
  if (opt.steps < 1 || opt.batch < 1 || opt.seq_len < 2 || !(opt.lr > 0) || opt.eval_every < 1 || !(opt.temperature > 0))
    return InvalidArgument("distillation: steps, batch, eval_every >= 1, seq_len >= 2, lr and temperature > 0 required");
  for (const auto& s : train)
    if (s.size() < 2) return InvalidArgument("distillation: a training sequence has fewer than 2 tokens");
  const auto t0 = std::chrono::steady_clock::now();
  ReferenceOptions ro;
  ro.threads = opt.threads;
  KERF_ASSIGN_OR_RETURN(ReferenceExecutor tex, ReferenceExecutor::create(teacher, ro));
  KERF_ASSIGN_OR_RETURN(ReferenceExecutor sex, ReferenceExecutor::create(student, ro));
  KERF_ASSIGN_OR_RETURN(std::vector<quant::WeightUse> uses, quant::enumerate_weights(student));

  std::vector<Param> ps;
  for (const auto& u : uses) {
    auto it = precision.find(u.tensor);
    if (it == precision.end()) return InvalidArgument("distillation: no precision for weight '" + u.tensor + "'");
    std::vector<int64_t> shape;
    KERF_ASSIGN_OR_RETURN(std::vector<float> w, sex.weight(u.tensor, &shape));
    Param p;
    p.name = u.tensor;
    p.rows = u.rows;
    p.cols = u.cols;
    p.spec = it->second.first;
    p.rule = it->second.second;
    p.fake_quant = !p.spec.plain();
    p.w = at::from_blob(w.data(), {u.rows, u.cols}, at::kFloat).clone().set_requires_grad(true);
    ps.push_back(std::move(p));
  }
  for (const auto& k : quant::kept_initializers(student, uses)) {
    if (k.role != "norm") continue;
    std::vector<int64_t> shape;
    KERF_ASSIGN_OR_RETURN(std::vector<float> w, sex.weight(k.name, &shape));
    Param p;
    p.name = k.name;
    p.w = at::from_blob(w.data(), shape, at::kFloat).clone().set_requires_grad(true);
    ps.push_back(std::move(p));
  }
  if (opt.learn_scales) {
    if (!(opt.scale_lr > 0)) return InvalidArgument(opt.label + ": scale_lr must be > 0");
    const size_t n = ps.size();
    for (size_t i = 0; i < n; ++i) {
      if (!ps[i].fake_quant) continue;
      KERF_ASSIGN_OR_RETURN(auto sm, rule_params(ps[i]));
      const quant::QSpec spec = ps[i].spec;
      Param s;
      s.name = ps[i].name + "#scale";
      s.group_param = true;
      s.grad_scale = 1.0 / std::sqrt(static_cast<double>(spec.group_for(ps[i].cols)) * std::max(1, std::max(-spec.qmin(), spec.qmax())));
      s.sign = at::where(sm.first.lt(0), at::full_like(sm.first, -1.0), at::ones_like(sm.first));
      s.w = sm.first.set_requires_grad(true);
      ps[i].s_idx = static_cast<int>(ps.size());
      ps.push_back(std::move(s));
      if (spec.kind == quant::QKind::kAsym) {
        Param m;
        m.name = ps[i].name + "#min";
        m.group_param = true;
        m.grad_scale = ps.back().grad_scale;
        m.w = sm.second.set_requires_grad(true);
        ps[i].m_idx = static_cast<int>(ps.size());
        ps.push_back(std::move(m));
      }
    }
  }
  for (Param& p : ps) {
    p.m = at::zeros_like(p.w.detach());
    p.v = at::zeros_like(p.w.detach());
  }

  const int world = opt.dp ? opt.dp->world_size() : 1;
  const int rank = opt.dp ? opt.dp->rank() : 0;
  std::vector<std::string> s_taps, t_taps;
  if (opt.hidden_weight > 0) {
    if (opt.hidden_pairs.empty()) return InvalidArgument(opt.label + ": hidden_weight > 0 but no hidden-state pairs");
    for (const auto& [a, b] : opt.hidden_pairs) s_taps.push_back(a), t_taps.push_back(b);
  }
  auto student_forward = [&](const Batch& b, const std::map<std::string, at::Tensor>& eff) -> Result<std::vector<at::Tensor>> {
    return forward_train_taps(sex, b.tokens, eff, s_taps);
  };
  // Loss of this rank's rows: KL summed over its positions / the global count of real positions.
  auto loss_of = [&](const std::vector<at::Tensor>& st, const TeacherOut& te, const Batch& b, double temp, double global_positions,
                     const std::vector<double>& norms) {
    at::Tensor l = kd_sum(st[0], te.logits, b.mask, temp) / global_positions;
    if (opt.hidden_weight > 0) l = l + opt.hidden_weight * hidden_loss({st.begin() + 1, st.end()}, te.taps, b.mask, norms);
    return l;
  };

  // Validation batches (fixed, no random cut) and their teacher outputs.
  std::vector<Batch> vb;
  std::vector<TeacherOut> vt;
  for (size_t i = 0; i < val.size(); i += static_cast<size_t>(opt.batch)) {
    std::vector<const std::vector<int64_t>*> rows;
    for (size_t j = i; j < std::min(val.size(), i + static_cast<size_t>(opt.batch)); ++j) rows.push_back(&val[j]);
    vb.push_back(make_batch(rows, {}, opt.seq_len, nullptr));
    KERF_ASSIGN_OR_RETURN(TeacherOut t, teacher_forward(tex, vb.back(), t_taps));
    vt.push_back(std::move(t));
  }
  auto validate = [&]() -> Result<double> {
    if (vb.empty()) return 0.0;
    c10::NoGradGuard ng;
    KERF_ASSIGN_OR_RETURN(auto eff, effective(ps, false));
    double num = 0, den = 0;
    for (size_t i = 0; i < vb.size(); ++i) {
      KERF_ASSIGN_OR_RETURN(at::Tensor s, forward_train(sex, vb[i].tokens, eff));
      at::Tensor l = kd_loss(s, vt[i].logits, vb[i].mask, 1.0);
      const double n = vb[i].mask.sum().item<double>();
      num += l.item<double>() * n;
      den += n;
    }
    return den > 0 ? num / den : 0.0;
  };

  // Teacher outputs of every training sequence, computed once (sequences are never cut when none
  // is longer than seq_len, so a batch's teacher outputs are slices of these).
  size_t longest = 0, total_tokens = 0;
  for (const auto& q : train) longest = std::max(longest, q.size()), total_tokens += q.size();
  int64_t vocab = vt.empty() ? 0 : vt[0].logits.size(2);
  std::vector<TeacherOut> cache;
  if (opt.cache_teacher && static_cast<int64_t>(longest) <= opt.seq_len) {
    if (vocab == 0) {
      Batch b = make_batch({&train[0]}, {0}, opt.seq_len, nullptr);
      KERF_ASSIGN_OR_RETURN(TeacherOut t, teacher_forward(tex, b, t_taps));
      vocab = t.logits.size(2);
    }
    int64_t width = vocab;
    for (const auto& t : vt)
      for (const auto& h : t.taps) width += h.size(-1);
    if (static_cast<double>(total_tokens) * static_cast<double>(width) * 4.0 <= 2.0 * (1ull << 30)) {
      const auto tc = std::chrono::steady_clock::now();
      std::vector<size_t> order(train.size());
      std::iota(order.begin(), order.end(), size_t{0});
      std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return train[x].size() < train[y].size(); });
      cache.resize(train.size());
      progress::Task task(opt.label + " teacher", static_cast<int64_t>(order.size()), "sequences",
                          opt.progress && rank == 0 ? progress::current() : nullptr);
      for (size_t i = 0; i < order.size();) {
        std::vector<const std::vector<int64_t>*> rows;
        std::vector<size_t> ids;
        size_t j = i;
        while (j < order.size() && j - i < 16 && (j - i + 1) * train[order[j]].size() <= 8192) rows.push_back(&train[order[j]]), ids.push_back(order[j]), ++j;
        if (rows.empty()) rows.push_back(&train[order[j]]), ids.push_back(order[j]), ++j;
        Batch b = make_batch(rows, ids, opt.seq_len, nullptr);
        KERF_ASSIGN_OR_RETURN(TeacherOut t, teacher_forward(tex, b, t_taps));
        for (size_t k = 0; k < ids.size(); ++k) {
          const int64_t len = static_cast<int64_t>(train[ids[k]].size());
          TeacherOut& c = cache[ids[k]];
          c.logits = t.logits[static_cast<int64_t>(k)].narrow(0, 0, len).clone();
          for (const auto& h : t.taps) c.taps.push_back(h[static_cast<int64_t>(k)].narrow(0, 0, len).clone());
        }
        i = j;
        task.set(static_cast<int64_t>(j));
      }
      task.finish();
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s: teacher outputs of %zu training sequences (%zu tokens) cached in %.1f s", opt.label.c_str(),
                    train.size(), total_tokens, since(tc));
      say(buf);
    }
  }
  auto teacher_for = [&](const Batch& b) -> Result<TeacherOut> {
    bool cached = !cache.empty();
    for (size_t id : b.rows) cached = cached && id != SIZE_MAX;
    if (!cached) return teacher_forward(tex, b, t_taps);
    const int64_t B = b.tokens.size(0), T = b.tokens.size(1);
    TeacherOut o;
    o.logits = at::zeros({B, T, vocab}, at::kFloat);
    for (size_t h = 0; h < t_taps.size(); ++h) o.taps.push_back(at::zeros({B, T, cache[b.rows[0]].taps[h].size(-1)}, at::kFloat));
    for (int64_t i = 0; i < B; ++i) {
      const TeacherOut& c = cache[b.rows[static_cast<size_t>(i)]];
      const int64_t len = c.logits.size(0);
      o.logits[i].narrow(0, 0, len).copy_(c.logits);
      for (size_t h = 0; h < t_taps.size(); ++h) o.taps[h][i].narrow(0, 0, len).copy_(c.taps[h]);
    }
    return o;
  };

  QadReport rep;
  KERF_ASSIGN_OR_RETURN(rep.val_kl_initial, validate());
  rep.val_kl_best = rep.val_kl_initial;
  std::vector<at::Tensor> best, init;
  for (const Param& p : ps) best.push_back(p.w.detach().clone());
  if (opt.checkpoint_initial)
    for (const Param& p : ps) init.push_back(p.w.detach().clone());
  {
    char buf[240];
    const auto groups = std::count_if(ps.begin(), ps.end(), [](const Param& p) { return p.group_param; });
    std::snprintf(buf, sizeof buf, "%s: %zu tensors (%zu fake-quantized%s), %zu training / %zu validation sequences; val KL %.4f before training",
                  opt.label.c_str(), ps.size() - static_cast<size_t>(groups),
                  static_cast<size_t>(std::count_if(ps.begin(), ps.end(), [](const Param& p) { return p.fake_quant; })),
                  groups > 0 ? (", " + std::to_string(groups) + " learned group-parameter tensors").c_str() : "", train.size(), val.size(),
                  rep.val_kl_initial);
    say(buf);
    rep.log.push_back(buf);
  }

  // Batches: uniform sampling, or (bucket) B neighbours in length order from a random start.
  std::vector<size_t> by_len(train.size());
  std::iota(by_len.begin(), by_len.end(), size_t{0});
  std::stable_sort(by_len.begin(), by_len.end(), [&](size_t x, size_t y) { return train[x].size() < train[y].size(); });
  std::mt19937_64 rng(opt.seed);
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  int64_t tokens_seen = 0;
  double loss_avg = 0, trained_seconds = 0;
  int first_step = 1;

  // Everything that must match for a resumed run to equal an uninterrupted one.
  std::string options_text;
  {
    char buf[320];
    std::snprintf(buf, sizeof buf, "steps %d batch %d seq_len %d lr %.9g wd %.9g warmup %d T %.9g clip %.9g eval_every %d seed %llu world %d bucket %d hidden %.9g",
                  opt.steps, opt.batch, opt.seq_len, opt.lr, opt.weight_decay, opt.warmup, opt.temperature, opt.clip, opt.eval_every,
                  static_cast<unsigned long long>(opt.seed), world, opt.bucket ? 1 : 0, opt.hidden_weight);
    options_text = buf;
    if (opt.learn_scales) {
      std::snprintf(buf, sizeof buf, " learn_scales %.9g", opt.scale_lr);
      options_text += buf;
    }
  }
  auto checkpoint = [&](int step) -> Status {
    if (opt.checkpoint_path.empty() || rank != 0) return Status::Ok();
    Checkpoint ck;
    ck.meta = opt.checkpoint_meta;
    std::ostringstream rs;
    rs << rng;
    ck.meta["train.step"] = std::to_string(step);
    ck.meta["train.steps"] = std::to_string(opt.steps);
    ck.meta["train.rng"] = rs.str();
    ck.meta["train.tokens_seen"] = std::to_string(tokens_seen);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", loss_avg);
    ck.meta["train.loss_avg"] = buf;
    std::snprintf(buf, sizeof buf, "%.17g", rep.val_kl_best);
    ck.meta["train.val_kl_best"] = buf;
    std::snprintf(buf, sizeof buf, "%.17g", trained_seconds + since(t0));
    ck.meta["train.seconds"] = buf;
    ck.meta["train.best_step"] = std::to_string(rep.best_step);
    ck.meta["train.options"] = options_text;
    auto put = [&](const std::string& name, const at::Tensor& t) {
      at::Tensor c = t.detach().contiguous();
      ck.tensors.push_back({name, std::vector<int64_t>(c.sizes().begin(), c.sizes().end()),
                            std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel())});
    };
    for (size_t i = 0; i < ps.size(); ++i) {
      put(ps[i].name, ps[i].w);
      put(ps[i].name + "#best", best[i]);
      put(ps[i].name + "#adam.m", ps[i].m);
      put(ps[i].name + "#adam.v", ps[i].v);
      if (!init.empty()) put(ps[i].name + "#init", init[i]);
    }
    return save_checkpoint(opt.checkpoint_path, ck).with_context(opt.label + " checkpoint");
  };
  if (opt.resume) {
    if (opt.checkpoint_path.empty()) return InvalidArgument(opt.label + ": resume needs a checkpoint path");
    KERF_ASSIGN_OR_RETURN(Checkpoint ck, load_checkpoint(opt.checkpoint_path));
    auto it = ck.meta.find("train.options");
    if (it == ck.meta.end() || it->second != options_text)
      return InvalidArgument(opt.checkpoint_path + ": the checkpoint was trained with other options (" +
                             (it == ck.meta.end() ? std::string("none recorded") : it->second) + "; now " + options_text +
                             "): resuming would not continue that run");
    auto get = [&](const std::string& name, at::Tensor& into) -> Status {
      const CheckpointTensor* t = ck.find(name);
      if (!t) return InvalidArgument(opt.checkpoint_path + ": checkpoint has no tensor '" + name + "' (another model or pruning?)");
      if (std::vector<int64_t>(into.sizes().begin(), into.sizes().end()) != t->shape)
        return InvalidArgument(opt.checkpoint_path + ": tensor '" + name + "' has another shape than the student's");
      c10::NoGradGuard ng;
      into.detach().copy_(at::from_blob(const_cast<float*>(t->data.data()), into.sizes(), at::kFloat));
      return Status::Ok();
    };
    for (size_t i = 0; i < ps.size(); ++i) {
      KERF_RETURN_IF_ERROR(get(ps[i].name, ps[i].w));
      KERF_RETURN_IF_ERROR(get(ps[i].name + "#best", best[i]));
      KERF_RETURN_IF_ERROR(get(ps[i].name + "#adam.m", ps[i].m));
      KERF_RETURN_IF_ERROR(get(ps[i].name + "#adam.v", ps[i].v));
      if (!init.empty()) KERF_RETURN_IF_ERROR(get(ps[i].name + "#init", init[i]));
    }
    try {
      std::istringstream rs(ck.meta.at("train.rng"));
      rs >> rng;
      if (!rs) throw std::invalid_argument("rng");
      first_step = std::stoi(ck.meta.at("train.step")) + 1;
      tokens_seen = std::stoll(ck.meta.at("train.tokens_seen"));
      loss_avg = std::stod(ck.meta.at("train.loss_avg"));
      rep.val_kl_best = std::stod(ck.meta.at("train.val_kl_best"));
      rep.best_step = std::stoi(ck.meta.at("train.best_step"));
      trained_seconds = std::stod(ck.meta.at("train.seconds"));
    } catch (const std::exception& e) {
      return BadInput(opt.checkpoint_path + ": checkpoint training state is missing or malformed (" + e.what() + ")");
    }
    rep.resumed_from = first_step - 1;
    say(opt.label + ": resumed from " + opt.checkpoint_path + " at step " + std::to_string(first_step - 1));
  }
  const auto t_train = std::chrono::steady_clock::now();
  const int64_t tokens_at_start = tokens_seen;
  // Progress task over the optimizer steps (rank 0 only); validation lines stay log lines.
  progress::Task task(opt.label, opt.steps, "steps", opt.progress && rank == 0 ? progress::current() : nullptr, first_step - 1);
  for (int step = first_step; step <= opt.steps; ++step) {
    std::vector<const std::vector<int64_t>*> rows;
    std::vector<size_t> ids;
    const size_t global = static_cast<size_t>(opt.batch) * static_cast<size_t>(world);
    if (opt.bucket && train.size() > global) {
      const size_t start = static_cast<size_t>(rng() % (train.size() - global + 1));
      for (size_t i = 0; i < global; ++i) ids.push_back(by_len[start + i]);
    } else {
      for (size_t i = 0; i < global; ++i) ids.push_back(static_cast<size_t>(rng() % train.size()));
    }
    // Window offsets are drawn for the whole global batch (same RNG sequence on every rank).
    std::vector<const std::vector<int64_t>*> all_rows;
    for (size_t id : ids) all_rows.push_back(&train[id]);
    Batch gb = make_batch(all_rows, ids, opt.seq_len, &rng);
    Batch b;
    {
      const int64_t r0 = static_cast<int64_t>(rank) * opt.batch;
      b.tokens = gb.tokens.narrow(0, r0, opt.batch).contiguous();
      b.mask = gb.mask.narrow(0, r0, opt.batch).contiguous();
      b.rows.assign(gb.rows.begin() + r0, gb.rows.begin() + r0 + opt.batch);
      b.real = static_cast<int64_t>(b.mask.sum().item<double>());
      // Trim right padding that only other ranks' rows needed.
      int64_t T = 1;
      for (int64_t i = 0; i < opt.batch; ++i) T = std::max<int64_t>(T, static_cast<int64_t>(b.mask[i].sum().item<double>()));
      if (T < b.tokens.size(1)) {
        b.tokens = b.tokens.narrow(1, 0, T).contiguous();
        b.mask = b.mask.narrow(1, 0, T).contiguous();
      }
    }
    const double global_positions = gb.mask.sum().item<double>();
    KERF_ASSIGN_OR_RETURN(TeacherOut te, teacher_for(b));
    KERF_ASSIGN_OR_RETURN(auto eff, effective(ps, true));
    KERF_ASSIGN_OR_RETURN(std::vector<at::Tensor> st, student_forward(b, eff));
    std::vector<double> norms;
    if (opt.hidden_weight > 0) {
      norms = hidden_norms(te.taps, b.mask);
      if (world > 1) KERF_RETURN_IF_ERROR(opt.dp->allreduce_sum(norms));
    }
    at::Tensor loss = loss_of(st, te, b, opt.temperature, global_positions, norms);
    std::vector<at::Tensor> leaves;
    for (const Param& p : ps) leaves.push_back(p.w);
    std::vector<at::Tensor> grads;
    try {
      grads = torch::autograd::grad({loss}, leaves, {}, false, false, true);
    } catch (const c10::Error& e) {
      return Internal(opt.label + ": backward failed: " + e.what_without_backtrace());
    }
    double lv = loss.item<double>();
    if (world > 1) {
      std::vector<at::Tensor> sync;
      for (auto& g : grads)
        if (g.defined()) sync.push_back(g);
      KERF_RETURN_IF_ERROR(allreduce_sum(*opt.dp, sync));
      std::vector<double> lvv = {lv};
      KERF_RETURN_IF_ERROR(opt.dp->allreduce_sum(lvv));
      lv = lvv[0];
    }
    if (opt.on_gradient)
      for (size_t i = 0; i < ps.size(); ++i)
        if (grads[i].defined()) {
          at::Tensor g = grads[i].contiguous();
          opt.on_gradient(step, ps[i].name, std::vector<float>(g.data_ptr<float>(), g.data_ptr<float>() + g.numel()));
        }
    loss_avg = step == 1 ? lv : 0.9 * loss_avg + 0.1 * lv;
    tokens_seen += static_cast<int64_t>(global_positions);
    for (size_t i = 0; i < ps.size(); ++i)
      if (ps[i].group_param && grads[i].defined()) grads[i] = grads[i] * ps[i].grad_scale;
    {
      c10::NoGradGuard ng;
      double norm2 = 0;
      for (auto& g : grads)
        if (g.defined()) norm2 += g.pow(2).sum().item<double>();
      const double gn = std::sqrt(norm2);
      const double scale = (opt.clip > 0 && gn > opt.clip) ? opt.clip / gn : 1.0;
      const double warm = std::min(1.0, static_cast<double>(step) / std::max(1, opt.warmup));
      const double prog = static_cast<double>(step - opt.warmup) / std::max(1, opt.steps - opt.warmup);
      const double cosine = step <= opt.warmup ? 1.0 : 0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * std::clamp(prog, 0.0, 1.0)));
      const double lr = opt.lr * warm * cosine;
      const double bc1 = 1.0 - std::pow(b1, step), bc2 = 1.0 - std::pow(b2, step);
      for (size_t i = 0; i < ps.size(); ++i) {
        if (!grads[i].defined()) continue;
        Param& p = ps[i];
        at::Tensor g = grads[i] * scale;
        p.m.mul_(b1).add_(g, 1 - b1);
        p.v.mul_(b2).addcmul_(g, g, 1 - b2);
        at::Tensor w = p.w.detach();
        if (opt.weight_decay > 0 && p.rows > 0) w.mul_(1.0 - lr * opt.weight_decay);
        w.addcdiv_(p.m / bc1, (p.v / bc2).sqrt_().add_(eps), p.group_param ? -lr * opt.scale_lr : -lr);
        // A learned scale keeps its sign and stays away from 0 (where it would get no gradient).
        if (p.sign.defined()) w.copy_(p.sign * (w * p.sign).clamp_min(1e-6));
      }
    }
    if (step % opt.eval_every == 0 || step == opt.steps) {
      KERF_ASSIGN_OR_RETURN(double vk, validate());
      const double el = since(t_train);
      char buf[200];
      std::snprintf(buf, sizeof buf, "%s step %d/%d  loss %.4f  val.kl %.4f  %.0f tok/s  ETA %.0f s", opt.label.c_str(), step, opt.steps,
                    loss_avg, vk, static_cast<double>(tokens_seen - tokens_at_start) / std::max(el, 1e-9), el / (step - first_step + 1) * (opt.steps - step));
      say(buf);
      rep.log.push_back(buf);
      rep.val_kl_final = vk;
      if (vb.empty() || vk < rep.val_kl_best) {
        rep.val_kl_best = vk;
        rep.best_step = step;
        for (size_t i = 0; i < ps.size(); ++i) best[i] = ps[i].w.detach().clone();
      }
    }
    if ((opt.checkpoint_every > 0 && step % opt.checkpoint_every == 0) || step == opt.steps) KERF_RETURN_IF_ERROR(checkpoint(step));
    {
      char buf[64];
      std::snprintf(buf, sizeof buf, "loss %.4f", loss_avg);
      task.step("", buf);
    }
  }
  task.finish();
  rep.steps = opt.steps;
  rep.seconds = since(t0);
  rep.tokens_per_second = static_cast<double>(tokens_seen - tokens_at_start) / std::max(since(t_train), 1e-9);
  // Keep the best weights (validation), as float32 initializers of the student graph.
  for (size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].group_param) continue;
    at::Tensor w = best[i].contiguous();
    std::vector<float> v(w.data_ptr<float>(), w.data_ptr<float>() + w.numel());
    std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
    student.initializers[ps[i].name] = ir::Tensor::from_f32(shape, v);
    if (ps[i].s_idx < 0) continue;
    const at::Tensor sv = best[static_cast<size_t>(ps[i].s_idx)].contiguous();
    const at::Tensor mv = ps[i].m_idx >= 0 ? best[static_cast<size_t>(ps[i].m_idx)].contiguous() : at::Tensor();
    std::vector<quant::GroupParams>& gp = rep.params[ps[i].name];
    gp.resize(static_cast<size_t>(sv.numel()));
    for (size_t k = 0; k < gp.size(); ++k) {
      gp[k].scale = sv.data_ptr<float>()[k];
      gp[k].min = mv.defined() ? mv.data_ptr<float>()[k] : 0.f;
    }
  }
  return rep;
}

Result<LsqGradients> lsq_gradients(const float* w, int64_t rows, int64_t cols, const quant::QSpec& spec,
                                   const std::vector<quant::GroupParams>& params, const float* upstream) {
  if (spec.plain()) return InvalidArgument("lsq_gradients: plain spec '" + quant::to_string(spec) + "' has no group parameters");
  if (!w || !upstream) return InvalidArgument("lsq_gradients: null weight or upstream pointer");
  if (rows < 1 || cols < 1) return InvalidArgument("lsq_gradients: rows and cols must be >= 1");
  const int64_t g = spec.group_for(cols), ng = (cols + g - 1) / g;
  if (static_cast<int64_t>(params.size()) != rows * ng)
    return InvalidArgument("lsq_gradients: " + std::to_string(params.size()) + " group parameters, need " + std::to_string(rows * ng));
  Param p;
  p.rows = rows;
  p.cols = cols;
  p.spec = spec;
  p.w = at::from_blob(const_cast<float*>(w), {rows, cols}, at::kFloat).clone().set_requires_grad(true);
  std::vector<float> sv, mv;
  for (const auto& gp : params) sv.push_back(gp.scale), mv.push_back(gp.min);
  Param sp, mp;
  sp.w = at::from_blob(sv.data(), {rows, ng}, at::kFloat).clone().set_requires_grad(true);
  mp.w = at::from_blob(mv.data(), {rows, ng}, at::kFloat).clone().set_requires_grad(true);
  const bool asym = spec.kind == quant::QKind::kAsym;
  c10::AutoGradMode grad_on(true);
  KERF_ASSIGN_OR_RETURN(at::Tensor q, lsq_fake_quant(p, sp, asym ? &mp : nullptr, true));
  const at::Tensor up = at::from_blob(const_cast<float*>(upstream), {rows, cols}, at::kFloat);
  std::vector<at::Tensor> leaves = {p.w, sp.w};
  if (asym) leaves.push_back(mp.w);
  std::vector<at::Tensor> gr = torch::autograd::grad({(q * up).sum()}, leaves, {}, false, false, true);
  auto vec = [](const at::Tensor& t, int64_t n) {
    if (!t.defined()) return std::vector<float>(static_cast<size_t>(n), 0.f);
    const at::Tensor c = t.detach().contiguous();
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  };
  LsqGradients out;
  out.value = vec(q, rows * cols);
  out.dw = vec(gr[0], rows * cols);
  out.ds = vec(gr[1], rows * ng);
  out.dm = asym ? vec(gr[2], rows * ng) : std::vector<float>(static_cast<size_t>(rows * ng), 0.f);
  return out;
}

}  // namespace kerf::distill
