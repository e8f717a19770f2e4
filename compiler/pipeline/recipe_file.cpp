#include "compiler/pipeline/recipe_file.h"

#include <fnmatch.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "compiler/pipeline/yaml_fields.h"
#include "kerf/xxh64.h"

namespace kerf::pipeline {
namespace {

using yaml::check_keys;
using yaml::Ctx;
using yaml::get;

Status parse_choice(const Ctx& c, const YAML::Node& n, const std::string& where, quant::TensorChoice* ch,
                    const std::set<std::string>& extra_keys = {}) {
  std::set<std::string> keys = {"precision", "method", "rule"};
  keys.insert(extra_keys.begin(), extra_keys.end());
  KERF_RETURN_IF_ERROR(check_keys(c, n, where, keys));
  std::string s;
  if (n["precision"]) {
    KERF_RETURN_IF_ERROR(get(c, n["precision"], where + ".precision", &s));
    auto q = quant::parse_qspec(s);
    if (!q.ok()) return c.err(where + ".precision", q.status().message());
    ch->spec = *q;
  }
  if (n["method"]) {
    KERF_RETURN_IF_ERROR(get(c, n["method"], where + ".method", &s));
    auto m = quant::parse_method(s);
    if (!m.ok()) return c.err(where + ".method", m.status().message());
    ch->method = *m;
  }
  if (n["rule"]) {
    KERF_RETURN_IF_ERROR(get(c, n["rule"], where + ".rule", &s));
    auto r = quant::parse_param_rule(s);
    if (!r.ok()) return c.err(where + ".rule", r.status().message());
    ch->rule = *r;
  }
  if (ch->rule == quant::ParamRule::kTwn && ch->spec.kind != quant::QKind::kTernary)
    return c.err(where + ".rule", "twn applies to ternary precisions only, not " + quant::to_string(ch->spec));
  return Status::Ok();
}

}  // namespace

bool VerifyThresholds::any() const {
  for (const auto& [name, member] : fields())
    if ((this->*member).has_value()) return true;
  return false;
}

void VerifyThresholds::override_with(const VerifyThresholds& over) {
  for (const auto& [name, member] : fields())
    if ((over.*member).has_value()) this->*member = over.*member;
}

const std::vector<std::pair<const char*, std::optional<double> VerifyThresholds::*>>& VerifyThresholds::fields() {
  static const std::vector<std::pair<const char*, std::optional<double> VerifyThresholds::*>> f = {
      {"max_ppl_increase", &VerifyThresholds::max_ppl_increase},
      {"min_top1", &VerifyThresholds::min_top1},
      {"max_kl", &VerifyThresholds::max_kl},
      {"max_ppl_regression", &VerifyThresholds::max_ppl_regression},
      {"max_kl_regression", &VerifyThresholds::max_kl_regression},
      {"max_top1_regression", &VerifyThresholds::max_top1_regression},
  };
  return f;
}

Result<double> parse_threshold(const std::string& key, const std::string& text) {
  bool known = false;
  for (const auto& [name, member] : VerifyThresholds::fields()) known |= key == name;
  if (!known) return InvalidArgument("unknown threshold '" + key + "'");
  const bool nats = key == "max_kl" || key == "max_kl_regression";
  std::string t = text;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.erase(t.begin());
  const bool percent = !t.empty() && t.back() == '%';
  if (percent) t.pop_back();
  const std::optional<double> num = parse_finite(t);
  if (!num) return InvalidArgument("'" + text + "' is not a number" + (nats ? "" : " or a percentage such as 5%"));
  if (nats && percent) return InvalidArgument("'" + text + "': KL is in nats per token, not a percentage (e.g. 0.08)");
  double v = *num;
  if (percent) v /= 100.0;
  else if (!nats && v > 1.0) {
    char frac[32];
    std::snprintf(frac, sizeof frac, "%g", v / 100.0);
    return InvalidArgument("'" + text + "' is ambiguous (a fraction above 1): write " + t + "% or " + frac);
  }
  if (v < 0) return InvalidArgument("'" + text + "' must be >= 0");
  if ((key == "min_top1" || key == "max_top1_regression") && v > 1.0) return InvalidArgument("'" + text + "' must be <= 1 (100%)");
  return v;
}

std::map<std::string, std::string> verify_metadata(const VerifyThresholds& th) {
  std::map<std::string, std::string> m;
  for (const auto& [name, member] : VerifyThresholds::fields()) {
    if (!(th.*member)) continue;
    m[std::string("verify.") + name] = shortest_double(*(th.*member));
  }
  return m;
}

Result<VerifyThresholds> verify_thresholds_from_metadata(
    const std::function<std::optional<std::string>(const std::string&)>& get) {
  VerifyThresholds th;
  for (const auto& [name, member] : VerifyThresholds::fields()) {
    const std::string key = std::string("verify.") + name;
    const std::optional<std::string> v = get(key);
    if (!v) continue;
    const std::optional<double> d = parse_finite(*v);
    if (!d || *d < 0) return BadInput("metadata " + key + " = '" + *v + "' is not a non-negative number");
    th.*member = *d;
  }
  return th;
}

Result<Recipe> parse_recipe_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError("cannot read recipe '" + path + "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_recipe_text(ss.str(), path);
}

Result<Recipe> parse_recipe_text(const std::string& text, const std::string& label) {
  Ctx c{label};
  Recipe r;
  r.source_text = text;
  r.hash = xxh64(text.data(), text.size(), 0);
  YAML::Node root;
  KERF_RETURN_IF_ERROR(yaml::load_mapping(text, label, "recipe", &root));
  try {
    KERF_RETURN_IF_ERROR(check_keys(c, root, "",
                                    {"name", "description", "calibration", "default", "gptq", "awq", "tensors", "mixed", "qad", "prune", "distill", "strict",
                                     "verify", "placement"}));
    if (const YAML::Node pl = root["placement"]) {
      if (!pl.IsMap()) return c.err("placement", "must be a mapping of op-name pattern to unit (cpu, gpu, npu)");
      for (const auto& kv : pl) {
        const std::string pat = kv.first.as<std::string>();
        std::string unit;
        KERF_RETURN_IF_ERROR(get(c, kv.second, "placement." + pat, &unit));
        if (unit != "cpu" && unit != "gpu" && unit != "npu") return c.err("placement." + pat, "unknown unit '" + unit + "' (cpu, gpu, npu)");
        r.placement.emplace_back(pat, unit);
      }
    }
    if (root["name"]) KERF_RETURN_IF_ERROR(get(c, root["name"], "name", &r.name));
    if (root["strict"]) KERF_RETURN_IF_ERROR(get(c, root["strict"], "strict", &r.strict));
    if (const YAML::Node cal = root["calibration"]) {
      KERF_RETURN_IF_ERROR(check_keys(c, cal, "calibration", {"stories", "tokens", "sequential"}));
      if (cal["stories"]) {
        std::string s;
        KERF_RETURN_IF_ERROR(get(c, cal["stories"], "calibration.stories", &s));
        auto sr = parse_story_range(s);
        if (!sr.ok()) return c.err("calibration.stories", sr.status().message());
        r.calib_stories = *sr;
      }
      if (cal["tokens"]) KERF_RETURN_IF_ERROR(get(c, cal["tokens"], "calibration.tokens", &r.calib_tokens));
      if (r.calib_tokens < 0) return c.err("calibration.tokens", "must be >= 0");
      if (cal["sequential"]) KERF_RETURN_IF_ERROR(get(c, cal["sequential"], "calibration.sequential", &r.sequential));
    }
    if (const YAML::Node d = root["default"]) KERF_RETURN_IF_ERROR(parse_choice(c, d, "default", &r.default_choice));
    if (const YAML::Node g = root["gptq"]) {
      KERF_RETURN_IF_ERROR(check_keys(c, g, "gptq", {"damp", "act_order", "block_size", "static_groups"}));
      if (g["damp"]) KERF_RETURN_IF_ERROR(get(c, g["damp"], "gptq.damp", &r.gptq.damp));
      if (g["act_order"]) KERF_RETURN_IF_ERROR(get(c, g["act_order"], "gptq.act_order", &r.gptq.act_order));
      if (g["block_size"]) KERF_RETURN_IF_ERROR(get(c, g["block_size"], "gptq.block_size", &r.gptq.block_size));
      if (g["static_groups"]) KERF_RETURN_IF_ERROR(get(c, g["static_groups"], "gptq.static_groups", &r.gptq.static_groups));
      if (!(r.gptq.damp >= 0)) return c.err("gptq.damp", "must be >= 0");
      if (r.gptq.block_size < 1) return c.err("gptq.block_size", "must be >= 1");
    }
    if (const YAML::Node a = root["awq"]) {
      KERF_RETURN_IF_ERROR(check_keys(c, a, "awq", {"grid", "clip", "max_shrink"}));
      if (a["grid"]) KERF_RETURN_IF_ERROR(get(c, a["grid"], "awq.grid", &r.awq.grid));
      if (a["clip"]) KERF_RETURN_IF_ERROR(get(c, a["clip"], "awq.clip", &r.awq_clip));
      if (a["max_shrink"]) KERF_RETURN_IF_ERROR(get(c, a["max_shrink"], "awq.max_shrink", &r.awq.max_shrink));
      if (r.awq.grid < 1) return c.err("awq.grid", "must be >= 1");
      if (!(r.awq.max_shrink >= 0 && r.awq.max_shrink < 1)) return c.err("awq.max_shrink", "must be in [0, 1)");
    }
    if (const YAML::Node ts = root["tensors"]) {
      if (!ts.IsSequence()) return c.err("tensors", "must be a list of {match, precision, method, rule}");
      for (size_t i = 0; i < ts.size(); ++i) {
        const std::string where = "tensors[" + std::to_string(i) + "]";
        RecipeOverride o;
        o.choice = r.default_choice;
        KERF_RETURN_IF_ERROR(parse_choice(c, ts[i], where, &o.choice, {"match"}));
        if (!ts[i]["match"]) return c.err(where, "needs a 'match' (a role or a name glob)");
        KERF_RETURN_IF_ERROR(get(c, ts[i]["match"], where + ".match", &o.match));
        if (o.match.empty()) return c.err(where + ".match", "is empty");
        r.overrides.push_back(o);
      }
    }
    if (const YAML::Node m = root["mixed"]) {
      KERF_RETURN_IF_ERROR(
          check_keys(c, m, "mixed", {"bpw", "candidates", "method", "rule", "rounds", "sensitivity_tokens"}));
      r.mixed = true;
      if (!m["bpw"]) return c.err("mixed", "needs 'bpw' (the budget)");
      KERF_RETURN_IF_ERROR(get(c, m["bpw"], "mixed.bpw", &r.mixed_bpw));
      if (!(r.mixed_bpw > 0 && r.mixed_bpw <= 32)) return c.err("mixed.bpw", "must be in (0, 32]");
      quant::TensorChoice base = r.default_choice;
      std::string s;
      if (m["method"]) {
        KERF_RETURN_IF_ERROR(get(c, m["method"], "mixed.method", &s));
        auto mm = quant::parse_method(s);
        if (!mm.ok()) return c.err("mixed.method", mm.status().message());
        base.method = *mm;
      }
      if (m["rule"]) {
        KERF_RETURN_IF_ERROR(get(c, m["rule"], "mixed.rule", &s));
        auto rr = quant::parse_param_rule(s);
        if (!rr.ok()) return c.err("mixed.rule", rr.status().message());
        base.rule = *rr;
      }
      if (!m["candidates"] || !m["candidates"].IsSequence() || m["candidates"].size() == 0)
        return c.err("mixed.candidates", "needs a non-empty list of precisions");
      for (size_t i = 0; i < m["candidates"].size(); ++i) {
        KERF_RETURN_IF_ERROR(get(c, m["candidates"][i], "mixed.candidates", &s));
        auto q = quant::parse_qspec(s);
        if (!q.ok()) return c.err("mixed.candidates[" + std::to_string(i) + "]", q.status().message());
        if (q->plain()) return c.err("mixed.candidates[" + std::to_string(i) + "]", "'" + s + "' is not a quantized precision");
        quant::TensorChoice ch = base;
        ch.spec = *q;
        if (ch.rule == quant::ParamRule::kTwn && ch.spec.kind != quant::QKind::kTernary) ch.rule = quant::ParamRule::kSearch;
        r.candidates.push_back(ch);
      }
      if (m["rounds"]) KERF_RETURN_IF_ERROR(get(c, m["rounds"], "mixed.rounds", &r.rounds));
      if (r.rounds < 0 || r.rounds > 10) return c.err("mixed.rounds", "must be in 0..10");
      if (m["sensitivity_tokens"])
        KERF_RETURN_IF_ERROR(get(c, m["sensitivity_tokens"], "mixed.sensitivity_tokens", &r.sensitivity_tokens));
      if (r.sensitivity_tokens < 16) return c.err("mixed.sensitivity_tokens", "must be >= 16");
    }
    // qad: and distill: share their training keys.
    auto training = [&](const YAML::Node& q, const std::string& sec, distill::QadOptions& o, StoryRange& stories, double& val_fraction,
                        int& teacher_samples, bool extra) -> Status {
      const std::vector<std::string> keys = {"steps", "lr", "batch", "seq_len", "stories", "val_fraction", "temperature", "seed",
                                             "weight_decay", "warmup", "eval_every", "hidden_weight", "teacher_samples"};
      std::set<std::string> allowed(keys.begin(), keys.end());
      if (sec == "qad") allowed.insert({"init", "learn_scales", "scale_lr"});
      KERF_RETURN_IF_ERROR(check_keys(c, q, sec, allowed));
      if (q["steps"]) KERF_RETURN_IF_ERROR(get(c, q["steps"], sec + ".steps", &o.steps));
      if (q["lr"]) KERF_RETURN_IF_ERROR(get(c, q["lr"], sec + ".lr", &o.lr));
      if (q["batch"]) KERF_RETURN_IF_ERROR(get(c, q["batch"], sec + ".batch", &o.batch));
      if (q["seq_len"]) KERF_RETURN_IF_ERROR(get(c, q["seq_len"], sec + ".seq_len", &o.seq_len));
      if (q["temperature"]) KERF_RETURN_IF_ERROR(get(c, q["temperature"], sec + ".temperature", &o.temperature));
      if (q["weight_decay"]) KERF_RETURN_IF_ERROR(get(c, q["weight_decay"], sec + ".weight_decay", &o.weight_decay));
      if (q["warmup"]) KERF_RETURN_IF_ERROR(get(c, q["warmup"], sec + ".warmup", &o.warmup));
      if (q["eval_every"]) KERF_RETURN_IF_ERROR(get(c, q["eval_every"], sec + ".eval_every", &o.eval_every));
      if (q["seed"]) KERF_RETURN_IF_ERROR(get(c, q["seed"], sec + ".seed", &o.seed));
      if (q["val_fraction"]) KERF_RETURN_IF_ERROR(get(c, q["val_fraction"], sec + ".val_fraction", &val_fraction));
      if (q["hidden_weight"]) KERF_RETURN_IF_ERROR(get(c, q["hidden_weight"], sec + ".hidden_weight", &o.hidden_weight));
      if (q["teacher_samples"]) KERF_RETURN_IF_ERROR(get(c, q["teacher_samples"], sec + ".teacher_samples", &teacher_samples));
      if (q["stories"]) {
        std::string st;
        KERF_RETURN_IF_ERROR(get(c, q["stories"], sec + ".stories", &st));
        auto sr = parse_story_range(st);
        if (!sr.ok()) return c.err(sec + ".stories", sr.status().message());
        stories = *sr;
      }
      if (o.steps < (extra ? 0 : 1) || o.steps > 1000000) return c.err(sec + ".steps", extra ? "must be in 0..1000000" : "must be in 1..1000000");
      if (!(o.lr > 0 && o.lr < 1)) return c.err(sec + ".lr", "must be in (0, 1)");
      if (o.batch < 1 || o.batch > 4096) return c.err(sec + ".batch", "must be in 1..4096");
      if (o.seq_len < 2) return c.err(sec + ".seq_len", "must be >= 2");
      if (!(o.temperature > 0)) return c.err(sec + ".temperature", "must be > 0");
      if (o.warmup < 0 || o.eval_every < 1) return c.err(sec, "warmup must be >= 0 and eval_every >= 1");
      if (!(val_fraction >= 0 && val_fraction < 0.5)) return c.err(sec + ".val_fraction", "must be in [0, 0.5)");
      if (!(o.hidden_weight >= 0)) return c.err(sec + ".hidden_weight", "must be >= 0");
      if (teacher_samples < 0 || teacher_samples > 1000000) return c.err(sec + ".teacher_samples", "must be in 0..1000000");
      return Status::Ok();
    };
    if (const YAML::Node q = root["qad"]) {
      r.qad = true;
      KERF_RETURN_IF_ERROR(training(q, "qad", r.qad_options, r.qad_stories, r.qad_val_fraction, r.qad_teacher_samples, false));
      if (q["init"]) {
        std::string init;
        KERF_RETURN_IF_ERROR(get(c, q["init"], "qad.init", &init));
        if (init != "fp" && init != "gptq") return c.err("qad.init", "expected fp or gptq, got '" + init + "'");
        r.qad_init_gptq = init == "gptq";
      }
      if (q["learn_scales"]) KERF_RETURN_IF_ERROR(get(c, q["learn_scales"], "qad.learn_scales", &r.qad_options.learn_scales));
      if (q["scale_lr"]) KERF_RETURN_IF_ERROR(get(c, q["scale_lr"], "qad.scale_lr", &r.qad_options.scale_lr));
      if (!(r.qad_options.scale_lr > 0 && r.qad_options.scale_lr <= 1000)) return c.err("qad.scale_lr", "must be in (0, 1000]");
    }
    if (const YAML::Node q = root["distill"]) {
      r.distill = true;
      r.distill_options.steps = 0;
      r.distill_options.label = "distill";
      KERF_RETURN_IF_ERROR(training(q, "distill", r.distill_options, r.distill_stories, r.distill_val_fraction, r.teacher_samples, true));
    }
    if (const YAML::Node p = root["prune"]) {
      KERF_RETURN_IF_ERROR(check_keys(c, p, "prune", {"keep_heads", "keep_ffn", "keep_embed", "drop_blocks", "head_mode", "importance", "budget", "allocation"}));
      r.prune = true;
      if (p["keep_heads"]) KERF_RETURN_IF_ERROR(get(c, p["keep_heads"], "prune.keep_heads", &r.keep_heads));
      if (p["keep_ffn"]) KERF_RETURN_IF_ERROR(get(c, p["keep_ffn"], "prune.keep_ffn", &r.keep_ffn));
      if (p["keep_embed"]) KERF_RETURN_IF_ERROR(get(c, p["keep_embed"], "prune.keep_embed", &r.keep_embed));
      if (p["drop_blocks"]) KERF_RETURN_IF_ERROR(get(c, p["drop_blocks"], "prune.drop_blocks", &r.drop_blocks));
      if (p["head_mode"]) KERF_RETURN_IF_ERROR(get(c, p["head_mode"], "prune.head_mode", &r.head_mode));
      if (p["importance"]) KERF_RETURN_IF_ERROR(get(c, p["importance"], "prune.importance", &r.importance));
      if (p["budget"]) KERF_RETURN_IF_ERROR(get(c, p["budget"], "prune.budget", &r.prune_budget));
      if (p["allocation"]) KERF_RETURN_IF_ERROR(get(c, p["allocation"], "prune.allocation", &r.prune_alloc));
      if (!r.prune_alloc.empty() && r.prune_alloc != "uniform" && r.prune_alloc != "measured")
        return c.err("prune.allocation", "expected uniform or measured, got '" + r.prune_alloc + "'");
      for (double f : {r.keep_heads, r.keep_ffn, r.keep_embed})
        if (!(f > 0 && f <= 1)) return c.err("prune", "keep fractions must be in (0, 1]");
      if (r.drop_blocks < 0) return c.err("prune.drop_blocks", "must be >= 0");
    }
    if (const YAML::Node v = root["verify"]) {
      std::set<std::string> keys;
      for (const auto& [name, member] : VerifyThresholds::fields()) keys.insert(name);
      KERF_RETURN_IF_ERROR(check_keys(c, v, "verify", keys));
      for (const auto& [name, member] : VerifyThresholds::fields()) {
        if (!v[name]) continue;
        std::string text;
        KERF_RETURN_IF_ERROR(get(c, v[name], std::string("verify.") + name, &text));
        auto t = parse_threshold(name, text);
        if (!t.ok()) return c.err(std::string("verify.") + name, t.status().message());
        r.verify.*member = *t;
      }
    }
  } catch (const YAML::Exception& e) {
    return BadInput(label + ": " + e.what());
  }
  if (r.name.empty()) r.name = label;
  return r;
}

bool recipe_matches(const std::string& match, const quant::WeightUse& u) {
  auto has = [&](const char* pat) { return fnmatch(pat, u.tensor.c_str(), 0) == 0; };
  if (match == "all") return true;
  if (match == "linear") return !u.embedding;
  if (match == "embedding") return u.embedding;
  if (match == "classifier") return (u.embedding && u.linear) || (!u.embedding && (has("*output*") || has("*lm_head*")));
  if (match == "attention") return !u.embedding && (has("*.wq.*") || has("*.wk.*") || has("*.wv.*") || has("*.wo.*"));
  if (match == "ffn") return !u.embedding && (has("*.w1.*") || has("*.w2.*") || has("*.w3.*"));
  return fnmatch(match.c_str(), u.tensor.c_str(), 0) == 0;
}

std::map<std::string, quant::TensorChoice> recipe_choices(const Recipe& r, const std::vector<quant::WeightUse>& weights,
                                                          std::vector<std::string>* unmatched) {
  std::map<std::string, quant::TensorChoice> out;
  std::vector<bool> used(r.overrides.size(), false);
  for (const auto& u : weights) {
    quant::TensorChoice ch = r.default_choice;
    for (size_t i = 0; i < r.overrides.size(); ++i)
      if (recipe_matches(r.overrides[i].match, u)) {
        ch = r.overrides[i].choice;
        used[i] = true;
        break;
      }
    out[u.tensor] = ch;
  }
  if (unmatched)
    for (size_t i = 0; i < r.overrides.size(); ++i)
      if (!used[i]) unmatched->push_back(r.overrides[i].match);
  return out;
}

}  // namespace kerf::pipeline
