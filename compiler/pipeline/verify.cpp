#include "compiler/pipeline/verify.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "compiler/pipeline/bench.h"
#include "compiler/pipeline/emit.h"
#include "compiler/pipeline/json_io.h"
#include "compiler/pipeline/manifest.h"
#include "compiler/pipeline/report.h"
#include "kerf/kerf.h"

namespace kerf::pipeline {

namespace {

using J = nlohmann::ordered_json;

std::string fmt_num(double v, int digits = 4) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", digits, v);
  return b;
}

// A fraction as a percentage: 0.04873 -> "4.87 %", 18.342 -> "1834.2 %", signed when `sign`.
std::string fmt_pct(double v, bool sign = false) {
  char b[64];
  const double p = v * 100.0;
  std::snprintf(b, sizeof b, sign ? "%+.*f %%" : "%.*f %%", std::fabs(p) >= 100 ? 1 : 2, p);
  return b;
}

// The limit of a ratio threshold as a percentage without trailing zeros: 0.05 -> "5 %".
std::string fmt_pct_limit(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.4g %%", v * 100.0);
  return b;
}

std::string fmt_signed(double v, int digits = 4) {
  char b[64];
  std::snprintf(b, sizeof b, "%+.*g", digits, v);
  return b;
}

VerifyCheck make_check(const std::string& metric, double value, std::optional<double> limit, const std::string& op) {
  VerifyCheck c;
  c.metric = metric;
  c.value = value;
  c.limit = limit;
  c.op = op;
  return c;
}

bool is_pct_metric(const std::string& m) { return m == "ppl_increase" || m == "ppl_vs_baseline"; }

std::string value_text(const VerifyCheck& c) {
  if (is_pct_metric(c.metric)) return fmt_pct(c.value, c.metric == "ppl_vs_baseline");
  if (c.metric == "bytes_vs_baseline") return fmt_signed(c.value, 12);
  if (c.metric.find("_vs_baseline") != std::string::npos) return fmt_signed(c.value);
  return fmt_num(c.value);
}

std::string limit_text(const VerifyCheck& c) {
  if (!c.limit) return "-";
  return is_pct_metric(c.metric) ? fmt_pct_limit(*c.limit) : fmt_num(*c.limit);
}

// "metric VALUE OP LIMIT (context)"; OP negated when the check failed.
void finish(VerifyCheck* c, const std::string& context) {
  if (c->limit) {
    c->passed = c->op == "<=" ? c->value <= *c->limit : c->value >= *c->limit;
    const std::string op = c->passed ? c->op : (c->op == "<=" ? ">" : "<");
    c->message = c->metric + " " + value_text(*c) + " " + op + " " + limit_text(*c);
  } else {
    c->passed = true;
    c->message = c->metric + " " + value_text(*c) + " (reported only)";
  }
  if (!context.empty()) c->message += " (" + context + ")";
}

std::optional<double> num(const J& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

std::optional<std::string> str(const J& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

std::optional<std::string> meta_string(const kerf_model* m, const std::string& key) {
  const char* s = nullptr;
  size_t n = 0;
  if (kerf_model_meta_string(m, key.c_str(), &s, &n) != KERF_OK) return std::nullopt;
  return std::string(s, n);
}

}  // namespace

Status set_threshold(VerifyThresholds* t, const std::string& key, const std::string& flag, const std::string& text) {
  for (const auto& [name, member] : VerifyThresholds::fields()) {
    if (key != name) continue;
    auto v = parse_threshold(key, text);
    if (!v.ok()) return v.status().with_context(flag);
    t->*member = *v;
    return Status::Ok();
  }
  return InvalidArgument(flag + ": unknown threshold '" + key + "'");
}

Result<J> read_report_file(const std::string& path) {
  auto r = read_json_file(path, {kReportSchema, kEvalReportSchema});
  if (!r.ok()) return r.status().with_context("baseline report");
  J j = std::move(*r);
  if (!num(j, "ppl") || !(*num(j, "ppl") > 0))
    return BadInput("baseline report " + path + ": \"ppl\" is missing or not a positive number");
  for (const char* k : {"kl", "top1", "bpw", "bytes"}) {
    auto it = j.find(k);
    if (it != j.end() && !it->is_null() && !it->is_number())
      return BadInput("baseline report " + path + ": \"" + k + "\" is not a number");
  }
  return j;
}

Result<ResolvedThresholds> resolve_thresholds(const std::string& artifact_path, const VerifyThresholds& command_line,
                                              bool with_baseline) {
  char err[512] = {0};
  kerf_model* raw = nullptr;
  const int rc = kerf_model_open(artifact_path.c_str(), 0, &raw, err, sizeof err);
  if (rc != KERF_OK) {
    const std::string msg = std::string(kerf_status_string(rc)) + ": " + err;
    return rc == KERF_ERR_IO ? IoError(msg) : (rc == KERF_ERR_UNSUPPORTED ? Unsupported(msg) : BadInput(msg));
  }
  std::unique_ptr<kerf_model, void (*)(kerf_model*)> model(raw, kerf_model_close);
  auto stored = verify_thresholds_from_metadata([&](const std::string& k) { return meta_string(model.get(), k); });
  if (!stored.ok()) return stored.status().with_context(artifact_path);
  ResolvedThresholds r;
  r.values = *stored;
  for (const auto& [name, member] : VerifyThresholds::fields())
    if ((r.values.*member).has_value()) r.sources[name] = "recipe";
  for (const auto& [name, member] : VerifyThresholds::fields())
    if ((command_line.*member).has_value()) r.sources[name] = "command line";
  r.values.override_with(command_line);
  if (with_baseline) {
    const std::pair<std::optional<double> VerifyThresholds::*, std::pair<const char*, double>> defaults[] = {
        {&VerifyThresholds::max_ppl_regression, {"max_ppl_regression", kDefaultMaxPplRegression}},
        {&VerifyThresholds::max_kl_regression, {"max_kl_regression", kDefaultMaxKlRegression}},
        {&VerifyThresholds::max_top1_regression, {"max_top1_regression", kDefaultMaxTop1Regression}},
    };
    for (const auto& [member, d] : defaults)
      if (!(r.values.*member)) {
        r.values.*member = d.second;
        r.sources[d.first] = "default";
      }
  }
  // The bits-per-weight budget of a mixed-precision recipe, recorded by the compiler.
  double budget = 0;
  if (kerf_model_meta_float(model.get(), kMetaBpwBudget, &budget) == KERF_OK && budget > 0 && std::isfinite(budget))
    r.bpw_budget = budget;
  return r;
}

std::vector<VerifyCheck> run_checks(const J& report, const ResolvedThresholds& th, const J* baseline) {
  std::vector<VerifyCheck> out;
  const VerifyThresholds& t = th.values;
  const auto ppl = num(report, "ppl"), ppl_ref = num(report, "ppl_reference"), kl = num(report, "kl"),
             top1 = num(report, "top1"), bpw = num(report, "bpw"), bytes = num(report, "bytes");
  if (t.max_ppl_increase && ppl && ppl_ref && *ppl_ref > 0) {
    VerifyCheck c = make_check("ppl_increase", *ppl / *ppl_ref - 1.0, t.max_ppl_increase, "<=");
    finish(&c, "ppl " + fmt_num(*ppl) + " vs reference " + fmt_num(*ppl_ref));
    out.push_back(c);
  }
  if (t.min_top1 && top1) {
    VerifyCheck c = make_check("top1", *top1, t.min_top1, ">=");
    finish(&c, "");
    out.push_back(c);
  }
  if (t.max_kl && kl) {
    VerifyCheck c = make_check("kl", *kl, t.max_kl, "<=");
    finish(&c, "nats/token");
    out.push_back(c);
  }
  if (baseline) {
    const J& b = *baseline;
    const std::string name = "baseline";
    const auto bppl = num(b, "ppl"), bkl = num(b, "kl"), btop1 = num(b, "top1"), bbpw = num(b, "bpw"), bbytes = num(b, "bytes");
    if (t.max_ppl_regression && ppl && bppl && *bppl > 0) {
      VerifyCheck c = make_check("ppl_vs_baseline", *ppl / *bppl - 1.0, t.max_ppl_regression, "<=");
      finish(&c, "ppl " + fmt_num(*ppl) + " vs " + name + " " + fmt_num(*bppl));
      out.push_back(c);
    }
    if (t.max_kl_regression && kl && bkl) {
      VerifyCheck c = make_check("kl_vs_baseline", *kl - *bkl, t.max_kl_regression, "<=");
      finish(&c, "kl " + fmt_num(*kl) + " vs " + name + " " + fmt_num(*bkl));
      out.push_back(c);
    }
    if (t.max_top1_regression && top1 && btop1) {
      VerifyCheck c = make_check("top1_vs_baseline", *top1 - *btop1, -*t.max_top1_regression, ">=");
      finish(&c, "top1 " + fmt_num(*top1) + " vs " + name + " " + fmt_num(*btop1));
      out.push_back(c);
    }
    if (bpw && bbpw) {
      VerifyCheck c = make_check("bpw_vs_baseline", *bpw - *bbpw, std::nullopt, "<=");
      if (th.bpw_budget) c.limit = *th.bpw_budget - *bbpw;
      finish(&c, "bpw " + fmt_num(*bpw) + " vs " + name + " " + fmt_num(*bbpw) +
                     (th.bpw_budget ? "; recipe budget " + fmt_num(*th.bpw_budget) + " bpw" : std::string()));
      out.push_back(c);
    }
    if (bytes && bbytes) {
      VerifyCheck c = make_check("bytes_vs_baseline", *bytes - *bbytes, std::nullopt, "<=");
      finish(&c, "bytes " + fmt_num(*bytes, 12) + " vs " + name + " " + fmt_num(*bbytes, 12));
      out.push_back(c);
    }
  }
  return out;
}

J verification_object(const std::vector<VerifyCheck>& checks, const ResolvedThresholds& th, const J* baseline,
                      const std::string& baseline_path) {
  bool passed = true;
  for (const auto& c : checks) passed = passed && c.passed;
  J v;
  v["passed"] = passed;
  J thr = J::object(), src = J::object();
  for (const auto& [name, member] : VerifyThresholds::fields()) {
    if (!(th.values.*member)) continue;
    thr[name] = *(th.values.*member);
    auto it = th.sources.find(name);
    src[name] = it == th.sources.end() ? "command line" : it->second;
  }
  if (th.bpw_budget) {
    thr["bpw_budget"] = *th.bpw_budget;
    src["bpw_budget"] = "recipe";
  }
  v["thresholds"] = thr;
  v["threshold_sources"] = src;
  J cs = J::array();
  for (const auto& c : checks)
    cs.push_back({{"metric", c.metric},
                  {"value", c.value},
                  {"limit", c.limit ? J(*c.limit) : J(nullptr)},
                  {"op", c.op},
                  {"passed", c.passed},
                  {"message", c.message}});
  v["checks"] = cs;
  if (baseline) {
    J b;
    b["file"] = baseline_path;
    for (const char* k : {"ppl", "kl", "top1", "bpw", "bytes"}) {
      auto it = baseline->find(k);
      b[k] = it != baseline->end() && it->is_number() ? *it : J(nullptr);
    }
    v["baseline"] = b;
  }
  return v;
}

Result<VerifyOutcome> run_verify(const VerifyOptions& opt) {
  if (opt.eval.reference_path.empty())
    return InvalidArgument("kerf verify needs --reference MODEL (the FP model the artifact was compiled from)");
  VerifyOutcome o;
  const std::string range = std::to_string(opt.eval.stories.begin) + ":" + std::to_string(opt.eval.stories.end);
  if (!opt.baseline_path.empty()) {
    KERF_ASSIGN_OR_RETURN(J b, read_report_file(opt.baseline_path));
    const std::optional<std::string> bst = str(b, "stories");
    if (bst && *bst != range)
      return InvalidArgument("baseline report " + opt.baseline_path + " was measured on stories " + *bst + ", this run on " +
                             range + ": pass --stories " + *bst + " (perplexities of different story sets do not compare)");
    o.baseline = std::move(b);
  }
  KERF_ASSIGN_OR_RETURN(ResolvedThresholds th, resolve_thresholds(opt.eval.artifact_path, opt.thresholds, o.baseline.has_value()));
  if (!th.values.any())
    return InvalidArgument(
        "kerf verify: no thresholds: give --max-ppl-increase (e.g. 5%), --min-top1 (e.g. 0.85) and/or --max-kl (e.g. 0.08), "
        "or --baseline OLD_REPORT.json, or compile with a recipe that has a verify: section (artifact " +
        opt.eval.artifact_path + " records none)");
  // A package manifest beside the artifact must describe this artifact before we record into it.
  const std::string mpath = manifest_path_for(opt.eval.artifact_path);
  std::error_code ec;
  if (std::filesystem::exists(mpath, ec)) {
    KERF_ASSIGN_OR_RETURN(J manifest, read_manifest(mpath));
    KERF_RETURN_IF_ERROR(check_artifact_against_manifest(opt.eval.artifact_path, manifest, mpath));
  }

  KERF_ASSIGN_OR_RETURN(EvalReport rep, evaluate(opt.eval));
  if (!o.baseline) {
  } else if (auto bt = num(*o.baseline, "predicted_tokens"); bt && static_cast<int64_t>(*bt) != rep.predicted_tokens) {
    return InvalidArgument("baseline report " + opt.baseline_path + " scored " + fmt_num(*bt, 12) + " tokens, this run " +
                           std::to_string(rep.predicted_tokens) + " on the same stories: another text file or tokenizer");
  }
  o.report = report_object(rep);
  if (opt.bench) {
    BenchOptions bo;
    bo.artifact_path = opt.eval.artifact_path;
    bo.threads = 1;
    bo.prompt_tokens = 64;
    bo.gen_tokens = 32;
    bo.repeat = 1;
    bo.bandwidth_mib = 0;
    KERF_ASSIGN_OR_RETURN(BenchReport br, run_bench(bo));
    o.report["speed"] = {{"threads", br.threads},
                         {"prefill_tps", br.prefill_tps.measured ? J(br.prefill_tps.mean) : J(nullptr)},
                         {"decode_tps", br.decode_tps.measured ? J(br.decode_tps.mean) : J(nullptr)},
                         {"isa", br.isa}};
  }
  const J* base = o.baseline ? &*o.baseline : nullptr;
  o.checks = run_checks(o.report, th, base);
  o.report["verification"] = verification_object(o.checks, th, base, opt.baseline_path);
  o.passed = o.report["verification"]["passed"].get<bool>();
  return o;
}

std::string verify_table(const VerifyOutcome& o) {
  const J& r = o.report;
  std::ostringstream os;
  char buf[512];
  auto n = [&](const char* k) { return num(r, k); };
  os << "kerf verify " << r.value("artifact", std::string()) << ": stories " << r.value("stories", std::string()) << " of "
     << r.value("text", std::string()) << " (" << r.value("predicted_tokens", int64_t{0}) << " predicted tokens)\n";
  std::snprintf(buf, sizeof buf, "  ppl %.4f (reference %.4f), kl %.5f, top-1 %.4f, %.3f bpw, %.0f bytes\n", n("ppl").value_or(0),
                n("ppl_reference").value_or(0), n("kl").value_or(0), n("top1").value_or(0), n("bpw").value_or(0), n("bytes").value_or(0));
  os << buf;
  if (r.contains("speed") && r["speed"].is_object()) {
    const J& s = r["speed"];
    std::snprintf(buf, sizeof buf, "  speed (runtime-lite, %d thread, %s): prefill %.0f tokens/s, decode %.0f tokens/s\n",
                  s.value("threads", 1), s.value("isa", std::string("?")).c_str(), num(s, "prefill_tps").value_or(0),
                  num(s, "decode_tps").value_or(0));
    os << buf;
  }
  const J& v = r["verification"];
  std::snprintf(buf, sizeof buf, "\n  %-18s %14s %18s   %s\n", "metric", "value", "limit", "result");
  os << buf;
  for (const auto& c : o.checks) {
    std::string limit = c.limit ? c.op + " " + limit_text(c) : "(reported)";
    std::snprintf(buf, sizeof buf, "  %-18s %14s %18s   %s\n", c.metric.c_str(), value_text(c).c_str(), limit.c_str(),
                  !c.limit ? "INFO" : (c.passed ? "PASS" : "FAIL"));
    os << buf;
  }
  if (v.contains("threshold_sources") && !v["threshold_sources"].empty()) {
    os << "  limits from:";
    bool first = true;
    for (const auto& [k, s] : v["threshold_sources"].items()) {
      os << (first ? " " : ", ") << k << " (" << s.get<std::string>() << ")";
      first = false;
    }
    os << "\n";
  }
  int gated = 0, failed = 0;
  for (const auto& c : o.checks) {
    gated += c.limit.has_value();
    failed += !c.passed;
  }
  if (failed == 0) {
    std::snprintf(buf, sizeof buf, "\nkerf verify: PASSED (%d of %d checks)\n", gated, gated);
    os << buf;
  }
  return os.str();
}

std::string verify_failure_line(const VerifyOutcome& o) {
  std::string line;
  for (const auto& c : o.checks)
    if (!c.passed) line += (line.empty() ? "" : "; ") + c.message;
  return line.empty() ? std::string() : "kerf verify: FAILED: " + line;
}

Result<std::string> record_verification_in_manifest(const std::string& artifact_path, const VerifyOutcome& o) {
  const std::string mpath = manifest_path_for(artifact_path);
  std::error_code ec;
  if (!std::filesystem::exists(mpath, ec)) return std::string();
  J v = o.report.value("verification", J::object());
  v["stories"] = o.report.value("stories", std::string());
  J m;
  for (const char* k : {"ppl", "ppl_reference", "kl", "top1", "bpw", "bytes"}) m[k] = o.report.contains(k) ? o.report[k] : J(nullptr);
  v["metrics"] = m;
  KERF_RETURN_IF_ERROR(manifest_set_verification(mpath, v));
  return mpath;
}

}  // namespace kerf::pipeline
