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
#include <random>

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
};

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
  int64_t real = 0;
};

Batch make_batch(const std::vector<const std::vector<int64_t>*>& rows, int64_t seq_len, std::mt19937_64* rng) {
  std::vector<std::vector<int64_t>> cut;
  int64_t T = 1;
  for (const auto* r : rows) {
    std::vector<int64_t> x = *r;
    if (static_cast<int64_t>(x.size()) > seq_len) {
      const int64_t off = rng ? static_cast<int64_t>((*rng)() % static_cast<uint64_t>(x.size() - static_cast<size_t>(seq_len) + 1)) : 0;
      x = std::vector<int64_t>(x.begin() + off, x.begin() + off + seq_len);
    }
    T = std::max<int64_t>(T, static_cast<int64_t>(x.size()));
    cut.push_back(std::move(x));
  }
  const int64_t B = static_cast<int64_t>(cut.size());
  Batch b;
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

Result<at::Tensor> teacher_logits(ReferenceExecutor& teacher, const Batch& b) {
  const int64_t B = b.tokens.size(0), T = b.tokens.size(1);
  std::vector<int64_t> flat(b.tokens.data_ptr<int64_t>(), b.tokens.data_ptr<int64_t>() + B * T);
  teacher.reset_cache();
  KERF_ASSIGN_OR_RETURN(std::vector<float> lg, teacher.forward_batch(flat, B, T));
  teacher.reset_cache();
  const int64_t V = static_cast<int64_t>(lg.size()) / (B * T);
  return at::from_blob(lg.data(), {B, T, V}, at::kFloat).clone();
}

/// Per-position KL(p_t || p_s) at temperature temp, masked mean over real positions.
at::Tensor kd_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double temp) {
  at::Tensor lt = at::log_softmax(teacher / temp, -1);
  at::Tensor ls = at::log_softmax(student / temp, -1);
  at::Tensor kl = (lt.exp() * (lt - ls)).sum(-1);  // [B, T]
  return (kl * mask).sum() / mask.sum() * (temp * temp);
}

}  // namespace

Result<QadReport> quantization_aware_distill(ir::Graph& student, const ir::Graph& teacher,
                                             const std::map<std::string, std::pair<quant::QSpec, quant::ParamRule>>& precision,
                                             const std::vector<std::vector<int64_t>>& train,
                                             const std::vector<std::vector<int64_t>>& val, const QadOptions& opt) {
  auto say = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  if (train.empty()) return InvalidArgument("distillation: no training sequences");
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
  for (Param& p : ps) {
    p.m = at::zeros_like(p.w.detach());
    p.v = at::zeros_like(p.w.detach());
  }

  // Validation batches (fixed, no random cut) and their teacher logits.
  std::vector<Batch> vb;
  std::vector<at::Tensor> vt;
  for (size_t i = 0; i < val.size(); i += static_cast<size_t>(opt.batch)) {
    std::vector<const std::vector<int64_t>*> rows;
    for (size_t j = i; j < std::min(val.size(), i + static_cast<size_t>(opt.batch)); ++j) rows.push_back(&val[j]);
    vb.push_back(make_batch(rows, opt.seq_len, nullptr));
    KERF_ASSIGN_OR_RETURN(at::Tensor t, teacher_logits(tex, vb.back()));
    vt.push_back(t);
  }
  auto validate = [&]() -> Result<double> {
    if (vb.empty()) return 0.0;
    c10::NoGradGuard ng;
    KERF_ASSIGN_OR_RETURN(auto eff, effective(ps, false));
    double num = 0, den = 0;
    for (size_t i = 0; i < vb.size(); ++i) {
      KERF_ASSIGN_OR_RETURN(at::Tensor s, forward_train(sex, vb[i].tokens, eff));
      at::Tensor l = kd_loss(s, vt[i], vb[i].mask, 1.0);
      const double n = vb[i].mask.sum().item<double>();
      num += l.item<double>() * n;
      den += n;
    }
    return den > 0 ? num / den : 0.0;
  };

  QadReport rep;
  KERF_ASSIGN_OR_RETURN(rep.val_kl_initial, validate());
  rep.val_kl_best = rep.val_kl_initial;
  std::vector<at::Tensor> best;
  for (const Param& p : ps) best.push_back(p.w.detach().clone());
  {
    char buf[160];
    std::snprintf(buf, sizeof buf, "qad: %zu tensors (%zu fake-quantized), %zu training / %zu validation sequences; val KL %.4f before training",
                  ps.size(), static_cast<size_t>(std::count_if(ps.begin(), ps.end(), [](const Param& p) { return p.fake_quant; })),
                  train.size(), val.size(), rep.val_kl_initial);
    say(buf);
    rep.log.push_back(buf);
  }

  std::mt19937_64 rng(opt.seed);
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  int64_t tokens_seen = 0;
  const auto t_train = std::chrono::steady_clock::now();
  double loss_avg = 0;
  for (int step = 1; step <= opt.steps; ++step) {
    std::vector<const std::vector<int64_t>*> rows;
    for (int i = 0; i < opt.batch; ++i) rows.push_back(&train[static_cast<size_t>(rng() % train.size())]);
    Batch b = make_batch(rows, opt.seq_len, &rng);
    KERF_ASSIGN_OR_RETURN(at::Tensor tl, teacher_logits(tex, b));
    KERF_ASSIGN_OR_RETURN(auto eff, effective(ps, true));
    KERF_ASSIGN_OR_RETURN(at::Tensor sl, forward_train(sex, b.tokens, eff));
    at::Tensor loss = kd_loss(sl, tl, b.mask, opt.temperature);
    std::vector<at::Tensor> leaves;
    for (const Param& p : ps) leaves.push_back(p.w);
    std::vector<at::Tensor> grads;
    try {
      grads = torch::autograd::grad({loss}, leaves, {}, false, false, true);
    } catch (const c10::Error& e) {
      return Internal(std::string("distillation: backward failed: ") + e.what_without_backtrace());
    }
    const double lv = loss.item<double>();
    loss_avg = step == 1 ? lv : 0.9 * loss_avg + 0.1 * lv;
    tokens_seen += b.real;
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
        if (opt.weight_decay > 0 && p.fake_quant) w.mul_(1.0 - lr * opt.weight_decay);
        w.addcdiv_(p.m / bc1, (p.v / bc2).sqrt_().add_(eps), -lr);
      }
    }
    if (step % opt.eval_every == 0 || step == opt.steps) {
      KERF_ASSIGN_OR_RETURN(double vk, validate());
      const double el = since(t_train);
      char buf[200];
      std::snprintf(buf, sizeof buf, "qad step %d/%d  loss %.4f  val.kl %.4f  %.0f tok/s  ETA %.0f s", step, opt.steps, loss_avg,
                    vk, static_cast<double>(tokens_seen) / std::max(el, 1e-9), el / step * (opt.steps - step));
      say(buf);
      rep.log.push_back(buf);
      rep.val_kl_final = vk;
      if (vb.empty() || vk < rep.val_kl_best) {
        rep.val_kl_best = vk;
        rep.best_step = step;
        for (size_t i = 0; i < ps.size(); ++i) best[i] = ps[i].w.detach().clone();
      }
    }
  }
  rep.steps = opt.steps;
  rep.seconds = since(t0);
  rep.tokens_per_second = static_cast<double>(tokens_seen) / std::max(since(t_train), 1e-9);
  // Keep the best weights (validation), as float32 initializers of the student graph.
  for (size_t i = 0; i < ps.size(); ++i) {
    at::Tensor w = best[i].contiguous();
    std::vector<float> v(w.data_ptr<float>(), w.data_ptr<float>() + w.numel());
    std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
    student.initializers[ps[i].name] = ir::Tensor::from_f32(shape, v);
  }
  return rep;
}

}  // namespace kerf::distill
