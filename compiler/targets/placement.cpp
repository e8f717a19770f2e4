#include "compiler/targets/placement.h"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>

#include "kerf/format.h"

namespace kerf::targets {
namespace {

constexpr int kUnits = 3;
const char* const kUnitNames[kUnits] = {"cpu", "gpu", "npu"};
constexpr double kInf = std::numeric_limits<double>::infinity();

int unit_index(const std::string& u) {
  for (int k = 0; k < kUnits; ++k)
    if (u == kUnitNames[k]) return k;
  return -1;
}

std::string us(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g us", v);
  return b;
}

struct Model {
  const Program& prog;
  const DeviceProfile& prof;
  const UnitProfile* unit[kUnits];
  int64_t T[2], C[2];  // per phase: tokens, context

  double transfer_us(int v, int from, int to, int ph) const {
    if (from == to) return 0;
    const double bytes = double(T[ph]) * double(prog.widths[size_t(v)]) * 4.0;
    double bw = kInf, fixed = 0;
    for (int u : {from, to}) {
      bw = std::min(bw, unit[u]->bandwidth_gbs);
      if (u != 0) fixed += unit[u]->transfer_us;
    }
    return fixed + bytes / (bw * 1e3);
  }

  /// Total modelled time of phase ph under `a` (op -> unit), transfers included; optionally the list.
  double simulate(const std::vector<int>& a, int ph, std::vector<Transfer>* out = nullptr,
                  const std::vector<std::array<double, kUnits>>* cost = nullptr) const {
    std::vector<uint8_t> where(prog.widths.size(), 0);
    double total = 0;
    auto move = [&](int v, int to, int consumer) {
      const uint8_t bit = uint8_t(1u << to);
      if (where[size_t(v)] & bit) return;
      if (!(where[size_t(v)] & 1u)) {
        int h = 1;
        while (h < kUnits && !(where[size_t(v)] & (1u << h))) ++h;
        if (h == kUnits) return;  // never written (not in our programs); nothing to move
        const double c = transfer_us(v, h, 0, ph);
        total += c;
        if (out) out->push_back({v, kUnitNames[h], "cpu", consumer, c});
        where[size_t(v)] |= 1u;
      }
      if (to != 0) {
        const double c = transfer_us(v, 0, to, ph);
        total += c;
        if (out) out->push_back({v, "cpu", kUnitNames[to], consumer, c});
        where[size_t(v)] |= bit;
      }
    };
    for (size_t i = 0; i < prog.ops.size(); ++i) {
      const ProgramOp& op = prog.ops[i];
      for (int v : op.inputs) move(v, a[i], int(i));
      total += (*cost)[i][size_t(a[i])];
      where[size_t(op.output)] = uint8_t(1u << a[i]);
    }
    move(prog.output, 0, int(prog.ops.size()));
    return total;
  }
};

}  // namespace

bool Placement::uses(const std::string& unit) const {
  for (const OpPlacement& p : ops)
    if (p.unit[0] == unit || p.unit[1] == unit) return true;
  return false;
}

std::string unsupported_reason(const Program& prog, size_t i, const UnitProfile& unit, const std::string& unit_name) {
  const ProgramOp& op = prog.ops[i];
  if (!unit.ops.count(op.op)) return "the " + unit_name + " does not run " + op.op;
  if (unit_name == "npu") {  // the compiler gives npu ops per-channel int weights of the profile's bits
    if (op.op == "Attention" && prog.max_seq_len > fmt::kNpuMaxKeys)
      return "the npu's attention (int32 sums, docs/npu-arithmetic.md) holds at most " + std::to_string(fmt::kNpuMaxKeys) +
             " keys and the model's context is " + std::to_string(prog.max_seq_len);
    return "";
  }
  for (const std::string& d : op.weight_dtypes)
    if (!unit.weights.count(d)) return "the " + unit_name + " does not take " + d + " weights";
  return "";
}

double op_cost_us(const Program& prog, size_t i, const UnitProfile& unit, bool npu, int64_t T, int64_t C) {
  const ProgramOp& op = prog.ops[i];
  double flops = 2.0 * double(T) * op.macs_per_token;
  const double act_bytes = npu ? unit.activation_bits / 8.0 : 4.0;
  double bytes = npu ? double(op.weight_params) * unit.weight_bits / 8.0 + 2.0 * double(op.weight_rows) : op.weight_bytes;
  double io = double(prog.widths[size_t(op.output)]);
  for (int v : op.inputs) io += double(prog.widths[size_t(v)]);
  bytes += double(T) * io * act_bytes;
  if (op.op == "Attention") {
    // keys read: decode T = 1 reads C; a prefill of T tokens reads ~T (T + 1) / 2 (causal)
    const double keys = T == 1 ? double(C) : double(T) * double(T + 1) / 2.0;
    flops += 4.0 * double(op.n_heads * op.head_dim) * keys;
    bytes += 2.0 * double(T == 1 ? C : T) * double(op.n_kv_heads * op.head_dim) * act_bytes;
  }
  const double launches = npu && unit.max_tokens > 0 ? std::ceil(double(T) / double(unit.max_tokens)) : 1.0;
  return unit.launch_us * launches + std::max(flops / (unit.gops * 1e3), bytes / (unit.bandwidth_gbs * 1e3));
}

Result<Placement> place(const Program& prog, const DeviceProfile& profile, const PlaceOptions& opt) {
  const size_t n = prog.ops.size();
  Model M{prog, profile, {profile.unit("cpu"), profile.unit("gpu"), profile.unit("npu")}, {1, opt.prefill_tokens},
          {opt.context, opt.prefill_tokens}};
  if (!M.unit[0]) return InvalidArgument("profile " + profile.name + " has no cpu");
  // Support and pins.
  std::vector<std::array<std::string, kUnits>> why_not(n);
  std::vector<int> pin(n, -1);
  std::vector<std::string> pin_text(n);
  Placement pl;
  for (const auto& [pattern, unit] : opt.pins) {
    const int u = unit_index(unit);
    if (u < 0) return InvalidArgument("placement pin '" + pattern + "=" + unit + "': unknown unit (cpu, gpu, npu)");
    if (!M.unit[u]) return InvalidArgument("placement pin '" + pattern + "=" + unit + "': profile " + profile.name + " has no " + unit);
  }
  for (size_t i = 0; i < n; ++i) {
    for (int u = 0; u < kUnits; ++u)
      why_not[i][size_t(u)] = M.unit[u] ? unsupported_reason(prog, i, *M.unit[u], kUnitNames[u])
                                        : std::string("profile ") + profile.name + " has no " + kUnitNames[u];
    if (!why_not[i][0].empty()) return Unsupported("op '" + prog.ops[i].name + "': " + why_not[i][0] + " (the cpu must run every op)");
    for (const auto& [pattern, unit] : opt.pins) {
      if (fnmatch(pattern.c_str(), prog.ops[i].name.c_str(), 0) != 0) continue;
      const int u = unit_index(unit);
      const std::string text = "'" + pattern + "=" + unit + "'";
      if (!why_not[i][size_t(u)].empty()) {
        const std::string msg = "op '" + prog.ops[i].name + "' (" + prog.ops[i].op + ") is pinned to the " + unit + " by " +
                                text + ", but " + why_not[i][size_t(u)] + " (profile " + profile.name + ")";
        if (opt.strict) return InvalidArgument(msg);
        pl.notes.push_back(msg + "; placed by cost instead");
      } else {
        pin[i] = u;
        pin_text[i] = text;
      }
      break;
    }
  }
  // Costs per phase.
  std::vector<std::array<double, kUnits>> cost[2];
  for (int ph = 0; ph < 2; ++ph) {
    cost[ph].resize(n);
    for (size_t i = 0; i < n; ++i)
      for (int u = 0; u < kUnits; ++u)
        cost[ph][i][size_t(u)] = M.unit[u] && why_not[i][size_t(u)].empty()
                                     ? op_cost_us(prog, i, *M.unit[u], u == 2, M.T[ph], M.C[ph])
                                     : kInf;
  }
  const std::string policy[2] = {profile.decode, profile.prefill};
  // The allowed units of op i in phase ph.
  auto allowed = [&](size_t i, int ph) {
    std::vector<int> a;
    if (pin[i] >= 0) return std::vector<int>{pin[i]};
    if (policy[ph] != "auto") {
      const int u = unit_index(policy[ph]);
      return std::vector<int>{why_not[i][size_t(u)].empty() ? u : 0};
    }
    for (int u = 0; u < kUnits; ++u)
      if (std::isfinite(cost[ph][i][size_t(u)])) a.push_back(u);
    return a;
  };
  // An Attention op on two units hands KV-cache rows to the unit about to run it (runtime-lite
  // backend.h, lazily): per cycle of one prefill and D decode steps, the prefill's T rows reach the
  // decode unit in one copy, and the D decode rows reach the prefill unit in one copy (when another
  // prefill follows). K and V, f32.
  const double D = double(opt.decode_tokens);
  auto kv_cost = [&](size_t i, int from, int to, int ph) {
    const ProgramOp& op = prog.ops[i];
    const double rows = ph == 1 ? double(M.T[1]) : D;
    const double bytes = rows * 2.0 * double(op.n_kv_heads * op.head_dim) * 4.0;
    double bw = kInf, fixed = 0;
    for (int u : {from, to}) {
      bw = std::min(bw, M.unit[u]->bandwidth_gbs);
      if (u != 0) fixed += M.unit[u]->transfer_us;
    }
    return fixed + bytes / (bw * 1e3);
  };
  auto handoff = [&](const std::vector<int>& a0, const std::vector<int>& a1) {
    double h = 0;
    for (size_t i = 0; i < n; ++i)
      if (prog.ops[i].op == "Attention" && a0[i] != a1[i]) h += kv_cost(i, a1[i], a0[i], 1) + kv_cost(i, a0[i], a1[i], 0);
    return h;
  };
  // The objective: one prefill + decode_tokens decode steps, transfers and handoffs included.
  // Coordinate descent: each phase's local search (single ops, then contiguous ranges moved to one
  // unit) with the other phase fixed, alternating until neither improves. The phases are coupled
  // through the Attention handoffs, so the descent runs from two starts -- every op on its cheapest
  // unit, and every op on the cpu where allowed -- and the better end point wins.
  auto descend = [&](std::vector<int> (&a)[2]) {
    auto phase_cost = [&](int ph, const std::vector<int>& x) {
      return (ph == 1 ? 1.0 : D) * M.simulate(x, ph, nullptr, &cost[ph]) + (ph == 1 ? handoff(a[0], x) : handoff(x, a[1]));
    };
    for (int round = 0; round < 4; ++round) {
      bool any = false;
      for (int ph : {1, 0}) {
        double tot = phase_cost(ph, a[ph]);
        for (int iter = 0; iter < 50; ++iter) {
          bool improved = false;
          for (size_t i = 0; i < n; ++i)
            for (int u : allowed(i, ph)) {
              if (u == a[ph][i]) continue;
              std::vector<int> trial = a[ph];
              trial[i] = u;
              const double t = phase_cost(ph, trial);
              if (t < tot - 1e-9) {
                tot = t;
                a[ph] = trial;
                improved = true;
              }
            }
          const size_t max_len = std::min<size_t>(n, 64);
          for (int u = 0; u < kUnits; ++u) {
            if (!M.unit[u]) continue;
            for (size_t st = 0; st < n; ++st)
              for (size_t len = 2; len <= max_len && st + len <= n; ++len) {
                std::vector<int> trial = a[ph];
                bool changed = false;
                for (size_t i = st; i < st + len; ++i) {
                  const auto al = allowed(i, ph);
                  if (std::find(al.begin(), al.end(), u) != al.end() && trial[i] != u) {
                    trial[i] = u;
                    changed = true;
                  }
                }
                if (!changed) continue;
                const double t = phase_cost(ph, trial);
                if (t < tot - 1e-9) {
                  tot = t;
                  a[ph] = trial;
                  improved = true;
                }
              }
          }
          if (!improved) break;
          any = true;
        }
      }
      if (!any) break;
    }
    return M.simulate(a[1], 1, nullptr, &cost[1]) + D * M.simulate(a[0], 0, nullptr, &cost[0]) + handoff(a[0], a[1]);
  };
  std::vector<int> a[2], c[2];
  for (int ph = 0; ph < 2; ++ph) {
    a[ph].resize(n);
    c[ph].resize(n);
    for (size_t i = 0; i < n; ++i) {
      const auto al = allowed(i, ph);
      a[ph][i] = *std::min_element(al.begin(), al.end(), [&](int x, int y) { return cost[ph][i][size_t(x)] < cost[ph][i][size_t(y)]; });
      c[ph][i] = std::find(al.begin(), al.end(), 0) != al.end() ? 0 : al.front();
    }
  }
  if (descend(c) < descend(a)) {
    a[0] = c[0];
    a[1] = c[1];
  }
  const std::vector<int>* best = a;
  pl.kv_handoff_us[1] = pl.kv_handoff_us[0] = 0;
  for (size_t i = 0; i < n; ++i)
    if (prog.ops[i].op == "Attention" && a[0][i] != a[1][i]) {
      pl.kv_handoff_us[1] += kv_cost(i, a[1][i], a[0][i], 1);
      pl.kv_handoff_us[0] += kv_cost(i, a[0][i], a[1][i], 0);
    }

  pl.ops.resize(n);
  for (int ph = 0; ph < 2; ++ph) {
    pl.total_us[ph] = M.simulate(best[ph], ph, &pl.transfers[ph], &cost[ph]) + pl.kv_handoff_us[ph];
    for (size_t i = 0; i < n; ++i) {
      OpPlacement& p = pl.ops[i];
      const int u = best[ph][i];
      p.unit[ph] = kUnitNames[u];
      p.cost_us[ph] = cost[ph][i][size_t(u)];
      std::vector<int> cand;
      for (int k = 0; k < kUnits; ++k)
        if (std::isfinite(cost[ph][i][size_t(k)])) cand.push_back(k);
      std::string why;
      if (pin[i] >= 0) {
        why = "pinned by " + pin_text[i];
      } else if (cand.size() == 1) {
        why = "only the cpu runs it";
        for (int k = 1; k < kUnits; ++k)
          if (M.unit[k]) why += "; " + why_not[i][size_t(k)];
      } else if (policy[ph] != "auto") {
        why = "profile placement." + std::string(ph ? "prefill" : "decode") + " = " + policy[ph];
      } else {
        std::sort(cand.begin(), cand.end(), [&](int x, int y) { return cost[ph][i][size_t(x)] < cost[ph][i][size_t(y)]; });
        why = "cost:";
        for (size_t k = 0; k < cand.size(); ++k)
          why += std::string(k ? " <" : "") + " " + kUnitNames[cand[k]] + " " + us(cost[ph][i][size_t(cand[k])]);
        if (cand[0] != u) why += "; on the " + std::string(kUnitNames[u]) + " to save transfers";
      }
      if (prog.ops[i].op == "Attention" && best[0][i] != best[1][i]) {
        why += std::string("; its KV cache rows are handed to the ") + kUnitNames[best[1 - ph][i]] + " when it next runs " +
               (ph ? "a decode step" : "a prefill");
      }
      p.why[ph] = why;
    }
  }
  return pl;
}

}  // namespace kerf::targets
