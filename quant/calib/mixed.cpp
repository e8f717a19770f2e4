// kerf quant/calib: mixed-precision allocation (see mixed.h).
#include "quant/calib/mixed.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include "distill/reference.h"
#include "quant/bpw.h"
#include "quant/calib/stages.h"

namespace kerf::quant {

using namespace calib_detail;

Result<std::vector<int>> solve_mckp(const std::vector<std::vector<KnapsackItem>>& items, int64_t budget_bits) {
  const size_t n = items.size();
  if (n == 0) return std::vector<int>{};
  int64_t min_bits = 0;
  for (size_t i = 0; i < n; ++i) {
    if (items[i].empty()) return InvalidArgument("knapsack: item " + std::to_string(i) + " has no candidates");
    int64_t mb = std::numeric_limits<int64_t>::max();
    for (const auto& c : items[i]) mb = std::min(mb, c.bits);
    min_bits += mb;
  }
  if (min_bits > budget_bits)
    return InvalidArgument("knapsack: the cheapest choice needs " + std::to_string(min_bits) + " bits, budget is " +
                           std::to_string(budget_bits));
  // Units: items' bits rounded up, so any solution in units fits the real budget.
  const int64_t unit = std::max<int64_t>(1, (budget_bits + 19999) / 20000);
  const int64_t B = budget_bits / unit;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> best(static_cast<size_t>(B + 1), inf), next;
  std::vector<std::vector<int8_t>> pick(n);  // pick[i][b]: candidate index for item i at capacity b
  best[0] = 0;
  // best[b] = min cost using exactly b units (then take min over b).
  for (size_t i = 0; i < n; ++i) {
    next.assign(static_cast<size_t>(B + 1), inf);
    pick[i].assign(static_cast<size_t>(B + 1), -1);
    for (size_t c = 0; c < items[i].size(); ++c) {
      const int64_t u = (items[i][c].bits + unit - 1) / unit;
      const double cost = items[i][c].cost;
      for (int64_t b = u; b <= B; ++b) {
        const double v = best[static_cast<size_t>(b - u)] + cost;
        if (v < next[static_cast<size_t>(b)]) {
          next[static_cast<size_t>(b)] = v;
          pick[i][static_cast<size_t>(b)] = static_cast<int8_t>(c);
        }
      }
    }
    best.swap(next);
  }
  int64_t bstar = -1;
  double vstar = inf;
  for (int64_t b = 0; b <= B; ++b)
    if (best[static_cast<size_t>(b)] < vstar) {
      vstar = best[static_cast<size_t>(b)];
      bstar = b;
    }
  if (bstar < 0) {
    // Rounding up to units made it infeasible although the exact bits fit: take the cheapest.
    std::vector<int> cheapest(n);
    for (size_t i = 0; i < n; ++i) {
      int bi = 0;
      for (size_t c = 1; c < items[i].size(); ++c)
        if (items[i][c].bits < items[i][static_cast<size_t>(bi)].bits) bi = static_cast<int>(c);
      cheapest[i] = bi;
    }
    return cheapest;
  }
  std::vector<int> choice(n);
  int64_t b = bstar;
  for (size_t i = n; i-- > 0;) {
    const int c = pick[i][static_cast<size_t>(b)];
    choice[i] = c;
    b -= (items[i][static_cast<size_t>(c)].bits + unit - 1) / unit;
  }
  return choice;
}

namespace {

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// log-softmax of each row of logits [T, V] in place (double accumulation).
void log_softmax_rows(std::vector<float>& x, int64_t V) {
  const int64_t T = static_cast<int64_t>(x.size()) / V;
  for (int64_t t = 0; t < T; ++t) {
    float* r = x.data() + t * V;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, r[v]);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(r[v] - mx));
    const float lse = mx + static_cast<float>(std::log(s));
    for (int64_t v = 0; v < V; ++v) r[v] -= lse;
  }
}

}  // namespace

Result<MixedResult> allocate_mixed(const ir::Graph& lifted, const std::vector<std::vector<int64_t>>& calib,
                                   const std::vector<std::vector<int64_t>>& sens, const MixedOptions& opt) {
  auto say = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  progress::Reporter* const reporter = opt.progress ? progress::current() : nullptr;
  if (opt.candidates.empty()) return InvalidArgument("mixed precision: no candidate precisions");
  if (!(opt.bpw > 0)) return InvalidArgument("mixed precision: the bpw budget must be > 0");
  if (sens.empty()) return InvalidArgument("mixed precision: no sensitivity sequences (calibration text needed)");
  for (const auto& c : opt.candidates) {
    KERF_RETURN_IF_ERROR(validate(c.spec).with_context("mixed precision candidate"));
    if (c.spec.plain()) return InvalidArgument("mixed precision: candidate " + to_string(c.spec) + " is not quantized");
  }
  KERF_ASSIGN_OR_RETURN(std::vector<WeightUse> uses, enumerate_weights(lifted));
  for (const auto& [name, c] : opt.fixed) {
    bool found = false;
    for (const auto& u : uses) found |= u.tensor == name;
    if (!found) return InvalidArgument("mixed precision: override for '" + name + "', which is not a weight matrix");
  }

  MixedResult res;
  int64_t fixed_bits = 0;
  std::vector<const WeightUse*> free;
  for (const WeightUse& u : uses) {
    res.weights += u.rows * u.cols;
    auto f = opt.fixed.find(u.tensor);
    if (f != opt.fixed.end()) {
      fixed_bits += spec_bits(f->second.spec, u.rows, u.cols);
      res.choices[u.tensor] = f->second;
    } else {
      free.push_back(&u);
    }
  }
  res.budget_bits = static_cast<int64_t>(std::floor(opt.bpw * static_cast<double>(res.weights)));
  const int64_t free_budget = res.budget_bits - fixed_bits;
  {
    int64_t min_bits = fixed_bits, max_bits = fixed_bits;
    for (const WeightUse* u : free) {
      int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
      for (const auto& c : opt.candidates) {
        const int64_t b = spec_bits(c.spec, u->rows, u->cols);
        lo = std::min(lo, b);
        hi = std::max(hi, b);
      }
      min_bits += lo;
      max_bits += hi;
    }
    char buf[300];
    if (min_bits > res.budget_bits) {
      std::snprintf(buf, sizeof buf,
                    "mixed precision: a budget of %.4f bpw cannot be met: the cheapest candidates with the recipe's "
                    "overrides need %.4f bpw",
                    opt.bpw, static_cast<double>(min_bits) / static_cast<double>(res.weights));
      return InvalidArgument(buf);
    }
    std::snprintf(buf, sizeof buf, "mixed precision: budget %.4f bpw (%lld bits over %lld weights); candidates span %.3f..%.3f bpw",
                  opt.bpw, static_cast<long long>(res.budget_bits), static_cast<long long>(res.weights),
                  static_cast<double>(min_bits) / static_cast<double>(res.weights),
                  static_cast<double>(max_bits) / static_cast<double>(res.weights));
    say(buf);
  }

  distill::ReferenceOptions ro;
  ro.threads = opt.threads;
  ir::Graph g = lifted;
  KERF_ASSIGN_OR_RETURN(distill::ReferenceExecutor ex, distill::ReferenceExecutor::create(g, ro));
  const auto t0 = std::chrono::steady_clock::now();

  // FP statistics for every stage (one pass) and FP log-probs of the sensitivity sequences.
  std::vector<Stage> stages = build_stages(ex);
  std::map<std::string, const InputStats*> stats_of;
  {
    std::vector<Stage*> all;
    for (Stage& s : stages) all.push_back(&s);
    KERF_RETURN_IF_ERROR(observe(ex, all, calib, reporter).with_context("mixed precision: calibration pass"));
    for (const Stage& s : stages)
      for (const std::string& t : s.tensors) stats_of[t] = &s.stats;
  }
  const std::vector<Batch> batches = make_batches(sens);
  std::vector<std::vector<float>> ref_lp, ref_p;  // per batch: log p and p of the FP model, [B*T*V]
  int64_t V = 0, sens_tokens = 0;
  for (const Batch& b : batches) {
    ex.reset_cache();
    KERF_ASSIGN_OR_RETURN(std::vector<float> lg, ex.forward_batch(b.tokens, b.B, b.T));
    V = static_cast<int64_t>(lg.size()) / (b.B * b.T);
    log_softmax_rows(lg, V);
    std::vector<float> p(lg.size());
    for (size_t i = 0; i < lg.size(); ++i) p[i] = std::exp(lg[i]);
    ref_lp.push_back(std::move(lg));
    ref_p.push_back(std::move(p));
    for (int64_t l : b.lens) sens_tokens += l;
  }
  ex.reset_cache();
  auto measure = [&]() -> Result<double> {
    double kl = 0;
    int64_t n = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      const Batch& b = batches[i];
      ex.reset_cache();
      KERF_ASSIGN_OR_RETURN(std::vector<float> lg, ex.forward_batch(b.tokens, b.B, b.T));
      log_softmax_rows(lg, V);
      const std::vector<float>& rp = ref_lp[i];
      const std::vector<float>& pp = ref_p[i];
      for (int64_t r = 0; r < b.B; ++r)
        for (int64_t t = 0; t < b.lens[static_cast<size_t>(r)]; ++t) {
          const size_t base = static_cast<size_t>((r * b.T + t) * V);
          double s = 0;
          for (int64_t v = 0; v < V; ++v)
            s += static_cast<double>(pp[base + static_cast<size_t>(v)]) *
                 static_cast<double>(rp[base + static_cast<size_t>(v)] - lg[base + static_cast<size_t>(v)]);
          kl += s;
          ++n;
        }
    }
    ex.reset_cache();
    return n ? kl / static_cast<double>(n) : 0.0;
  };

  // A choice as the sensitivity pass quantizes it: AWQ candidates by their GPTQ / RTN part (no
  // folding here), GPTQ falls back to RTN for a matrix without input statistics (an untied table).
  auto quantize_as = [&](const WeightUse& u, const std::vector<float>& w, TensorChoice ch) -> Result<std::vector<float>> {
    if (ch.method == Method::kAwq) ch.method = Method::kRtn;
    if (ch.method == Method::kAwqGptq) ch.method = Method::kGptq;
    auto it = stats_of.find(u.tensor);
    const InputStats* st = it != stats_of.end() ? it->second : nullptr;
    if (ch.method == Method::kGptq && !st) ch.method = Method::kRtn;
    std::string note;
    auto q = quantize_one(w, u.rows, u.cols, ch, st, opt.gptq, &note);
    if (!q.ok()) return q.status().with_context("mixed precision: '" + u.tensor + "' as " + to_string(ch));
    return dequantize(*q);
  };

  // Dequantized weights per (free tensor, candidate), and FP weights.
  const size_t NC = opt.candidates.size();
  std::map<std::string, std::vector<float>> fp;
  std::map<std::string, std::vector<std::vector<float>>> deq;
  std::vector<std::vector<KnapsackItem>> items(free.size(), std::vector<KnapsackItem>(NC));
  {
    progress::Task task("candidates", static_cast<int64_t>(free.size()), "tensors", reporter);
    for (size_t i = 0; i < free.size(); ++i) {
      const WeightUse& u = *free[i];
      KERF_ASSIGN_OR_RETURN(fp[u.tensor], ex.weight(u.tensor));
      auto& dv = deq[u.tensor];
      for (size_t c = 0; c < NC; ++c) {
        KERF_ASSIGN_OR_RETURN(std::vector<float> d, quantize_as(u, fp[u.tensor], opt.candidates[c]));
        dv.push_back(std::move(d));
        items[i][c].bits = spec_bits(opt.candidates[c].spec, u.rows, u.cols);
      }
      task.step(u.tensor);
    }
  }
  // Fixed tensors are quantized once and stay so during all measurements.
  for (const WeightUse& u : uses) {
    auto f = opt.fixed.find(u.tensor);
    if (f == opt.fixed.end()) continue;
    KERF_ASSIGN_OR_RETURN(std::vector<float> w, ex.weight(u.tensor));
    KERF_ASSIGN_OR_RETURN(std::vector<float> d, quantize_as(u, w, f->second));
    KERF_RETURN_IF_ERROR(ex.set_weight(u.tensor, d));
  }
  KERF_ASSIGN_OR_RETURN(const double kl_fixed, measure());

  // Round 0: each tensor alone (others FP, fixed ones quantized).
  progress::Task sens_task("sensitivity", static_cast<int64_t>(free.size()), "tensors", reporter);
  for (size_t i = 0; i < free.size(); ++i) {
    const std::string& t = free[i]->tensor;
    auto& sv = res.sensitivity[t];
    for (size_t c = 0; c < NC; ++c) {
      KERF_RETURN_IF_ERROR(ex.set_weight(t, deq[t][c]));
      KERF_ASSIGN_OR_RETURN(double kl, measure());
      sv.push_back(kl);
      items[i][c].cost = std::max(0.0, kl - kl_fixed);
    }
    KERF_RETURN_IF_ERROR(ex.set_weight(t, fp[t]));
    char buf[200];
    std::string line = "KL";
    for (size_t c = 0; c < NC; ++c) {
      std::snprintf(buf, sizeof buf, " %.4f", sv[c]);
      line += buf;
    }
    sens_task.step(t, line);
  }
  sens_task.finish();
  KERF_ASSIGN_OR_RETURN(std::vector<int> choice, solve_mckp(items, free_budget));
  auto apply = [&](const std::vector<int>& ch) -> Status {
    for (size_t i = 0; i < free.size(); ++i)
      KERF_RETURN_IF_ERROR(ex.set_weight(free[i]->tensor, deq[free[i]->tensor][static_cast<size_t>(ch[i])]));
    return Status::Ok();
  };
  KERF_RETURN_IF_ERROR(apply(choice));
  KERF_ASSIGN_OR_RETURN(double kl_cur, measure());
  double pred = kl_fixed;
  for (size_t i = 0; i < free.size(); ++i) pred += items[i][static_cast<size_t>(choice[i])].cost;
  res.predicted_kl = pred;
  res.measured_kl.push_back(kl_cur);
  {
    char buf[200];
    std::snprintf(buf, sizeof buf, "round 0 (additive): predicted KL %.4f, measured %.4f", pred, kl_cur);
    res.log.push_back(buf);
    say(buf);
  }

  // Re-measurement rounds.
  for (int r = 1; r <= opt.rounds; ++r) {
    std::vector<std::vector<KnapsackItem>> it2 = items;
    progress::Task round_task("re-measure " + std::to_string(r), static_cast<int64_t>(free.size()), "tensors", reporter);
    for (size_t i = 0; i < free.size(); ++i) {
      const std::string& t = free[i]->tensor;
      for (size_t c = 0; c < NC; ++c) {
        if (static_cast<int>(c) == choice[i]) {
          it2[i][c].cost = 0;
          continue;
        }
        KERF_RETURN_IF_ERROR(ex.set_weight(t, deq[t][c]));
        KERF_ASSIGN_OR_RETURN(double kl, measure());
        it2[i][c].cost = kl - kl_cur;
      }
      KERF_RETURN_IF_ERROR(ex.set_weight(t, deq[t][static_cast<size_t>(choice[i])]));
      round_task.step(t);
    }
    round_task.finish();
    // Costs may be negative (a change that helps); shift per item so the DP sees costs >= 0.
    for (auto& row : it2) {
      double mn = 0;
      for (auto& c : row) mn = std::min(mn, c.cost);
      for (auto& c : row) c.cost -= mn;
    }
    KERF_ASSIGN_OR_RETURN(std::vector<int> ch2, solve_mckp(it2, free_budget));
    if (ch2 == choice) {
      res.log.push_back("round " + std::to_string(r) + ": allocation unchanged");
      say(res.log.back());
      break;
    }
    KERF_RETURN_IF_ERROR(apply(ch2));
    KERF_ASSIGN_OR_RETURN(double kl2, measure());
    char buf[200];
    std::snprintf(buf, sizeof buf, "round %d: re-measured allocation KL %.4f (was %.4f) -> %s", r, kl2, kl_cur,
                  kl2 < kl_cur ? "kept" : "rejected");
    res.log.push_back(buf);
    say(buf);
    if (kl2 < kl_cur) {
      choice = ch2;
      kl_cur = kl2;
      res.measured_kl.push_back(kl2);
    } else {
      KERF_RETURN_IF_ERROR(apply(choice));
      break;
    }
  }

  res.total_bits = fixed_bits;
  for (size_t i = 0; i < free.size(); ++i) {
    res.choices[free[i]->tensor] = opt.candidates[static_cast<size_t>(choice[i])];
    res.total_bits += items[i][static_cast<size_t>(choice[i])].bits;
  }
  res.bpw = static_cast<double>(res.total_bits) / static_cast<double>(res.weights);
  char buf[200];
  std::snprintf(buf, sizeof buf, "mixed precision: %.4f bpw allocated (budget %.4f), %lld sensitivity tokens, %.1f s",
                res.bpw, opt.bpw, static_cast<long long>(sens_tokens), since(t0));
  say(buf);
  return res;
}

}  // namespace kerf::quant
