// `kerf verify` and the "kerf.report/1" report: threshold parsing, recipe verify: sections, the
// detail-string parser, the checks (pure), and the CLI end to end (real exit codes: a broken INT2
// compile fails with 6 naming the metrics, the int4-gptq recipe passes its own thresholds, a
// regressing baseline fails naming ppl_vs_baseline, no thresholds = 2, a malformed baseline = 3), and
// the reports validated against docs/report.schema.json with Debian's python3-jsonschema.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>

#include "compiler/pipeline/manifest.h"
#include "compiler/pipeline/recipe_file.h"
#include "compiler/pipeline/report.h"
#include "compiler/pipeline/verify.h"
#include "support.h"

namespace {

using kerf::test::kModel;
using kerf::test::kText;
using J = nlohmann::ordered_json;

struct Run {
  int code = -1;
  std::string out, err;
};

std::string kerf_exe() {
  const std::string p = std::string(KERF_BINARY_DIR) + "/kerf";
  INFO("the CLI tests need the kerf binary (build the kerf target): " << p);
  REQUIRE(std::filesystem::exists(p));
  return p;
}

/// Runs `kerf ARGS` through /bin/sh with stdout and stderr captured separately.
Run run_kerf(const std::string& args) {
  static int n = 0;
  const std::string base = std::string(KERF_BINARY_DIR) + "/test_verify_run_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
  const std::string cmd = "OMP_WAIT_POLICY=passive " + kerf_exe() + " " + args + " >" + base + ".out 2>" + base + ".err";
  const int rc = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = kerf::test::read_bytes(base + ".out");
  r.err = kerf::test::read_bytes(base + ".err");
  std::remove((base + ".out").c_str());
  std::remove((base + ".err").c_str());
  return r;
}

std::string bin(const std::string& name) { return std::string(KERF_BINARY_DIR) + "/" + name; }

/// Compiles the bundled model once per test-binary run with the given extra arguments.
const std::string& compiled(const std::string& name, const std::string& args) {
  static std::map<std::string, std::string> done;
  auto it = done.find(name);
  if (it != done.end()) return it->second;
  const std::string out = bin(name);
  std::remove(out.c_str());
  Run r = run_kerf("compile " + kModel + " --target host -o " + out + " " + args + " -q");
  INFO("kerf compile " << args << "\n" << r.out << r.err);
  REQUIRE(r.code == 0);
  return done[name] = out;
}

// INT2 everywhere: a deliberately broken recipe.
const std::string& int2_artifact() {
  return compiled("test_verify_int2.kerf", "--linear int2_asym:g32 --embedding int2_asym:g32 --method rtn --calib " + kText +
                                               " --calib-stories 0:8 --threads 1");
}
// The main job's recipe (with its verify: section) on a short calibration range.
const std::string& gptq_artifact() {
  return compiled("test_verify_gptq.kerf", "--recipe " + std::string(KERF_SOURCE_DIR) + "/examples/recipes/int4-gptq.yaml --calib " +
                                               kText + " --calib-stories 0:16 --threads 1");
}
// RTN baseline, no recipe: no thresholds recorded.
const std::string& rtn_artifact() { return compiled("test_verify_rtn.kerf", ""); }

const std::string kFast = " --stories 400:440";

std::string verify_args(const std::string& artifact) {
  return "verify " + artifact + " --reference " + kModel + " --text " + kText + kFast + " -q";
}

/// Validates `json_path` against docs/report.schema.json with /usr/bin/python3's jsonschema
/// (Draft 2020-12). Returns "" when valid, else the validator's output.
std::string schema_errors(const std::string& json_path) {
  const std::string script = bin("test_verify_validate.py");
  kerf::test::write_bytes(script,
                          "import json, sys\n"
                          "try:\n"
                          "    import jsonschema\n"
                          "except ImportError:\n"
                          "    print('python3-jsonschema is not installed (scripts/install-deps.sh installs it)')\n"
                          "    sys.exit(3)\n"
                          "schema = json.load(open(sys.argv[1]))\n"
                          "jsonschema.Draft202012Validator.check_schema(schema)\n"
                          "v = jsonschema.Draft202012Validator(schema)\n"
                          "errs = list(v.iter_errors(json.load(open(sys.argv[2]))))\n"
                          "for e in errs[:20]:\n"
                          "    print('/'.join(map(str, e.absolute_path)) + ': ' + e.message)\n"
                          "sys.exit(1 if errs else 0)\n");
  const std::string log = json_path + ".schema.log";
  const std::string cmd = "/usr/bin/python3 " + script + " " + std::string(KERF_SOURCE_DIR) + "/docs/report.schema.json " + json_path +
                          " >" + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string out = kerf::test::read_bytes(log);
  std::remove(log.c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 0) return "";
  return out.empty() ? "validator exited with " + std::to_string(rc) : out;
}

J read_json(const std::string& path) {
  J j;
  REQUIRE_NOTHROW(j = J::parse(kerf::test::read_bytes(path)));
  return j;
}

}  // namespace

TEST_CASE("verify: thresholds accept 5% or 0.05 and reject ambiguous or out-of-range values", "[verify]") {
  using kerf::pipeline::parse_threshold;
  CHECK(*parse_threshold("max_ppl_increase", "5%") == Approx(0.05));
  CHECK(*parse_threshold("max_ppl_increase", "0.05") == Approx(0.05));
  CHECK(*parse_threshold("max_ppl_increase", "250%") == Approx(2.5));
  CHECK(*parse_threshold("min_top1", "85%") == Approx(0.85));
  CHECK(*parse_threshold("min_top1", "0.85") == Approx(0.85));
  CHECK(*parse_threshold("max_kl", "0.08") == Approx(0.08));
  CHECK(*parse_threshold("max_kl", "1.5") == Approx(1.5));  // nats: no ambiguity rule
  auto amb = parse_threshold("max_ppl_increase", "5");
  REQUIRE_FALSE(amb.ok());
  CHECK(amb.status().code() == kerf::ErrorCode::kInvalidArgument);
  CHECK_THAT(amb.status().message(), Catch::Contains("ambiguous") && Catch::Contains("5%") && Catch::Contains("0.05"));
  CHECK_THAT(parse_threshold("max_kl", "5%").status().message(), Catch::Contains("nats"));
  CHECK_FALSE(parse_threshold("min_top1", "1.5").ok());
  CHECK_FALSE(parse_threshold("min_top1", "150%").ok());
  CHECK_FALSE(parse_threshold("max_kl", "-0.1").ok());
  CHECK_FALSE(parse_threshold("max_kl", "0.1x").ok());
  CHECK_FALSE(parse_threshold("max_kl", "nan").ok());
  CHECK_FALSE(parse_threshold("max_ppl_increase", "").ok());
  CHECK_FALSE(parse_threshold("max_speed", "1").ok());
}

TEST_CASE("verify: a recipe's verify: section parses, round-trips through metadata, and rejects typos", "[verify][recipe]") {
  using namespace kerf::pipeline;
  auto r = parse_recipe_text("default: {precision: int4_asym:g32, method: rtn, rule: rtn}\n"
                             "verify: {max_ppl_increase: 6%, min_top1: 0.87, max_kl: 0.06, max_ppl_regression: 0.5%}\n",
                             "r.yaml");
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  CHECK(*r->verify.max_ppl_increase == Approx(0.06));
  CHECK(*r->verify.min_top1 == Approx(0.87));
  CHECK(*r->verify.max_kl == Approx(0.06));
  CHECK(*r->verify.max_ppl_regression == Approx(0.005));
  CHECK_FALSE(r->verify.max_kl_regression.has_value());
  const auto meta = verify_metadata(r->verify);
  CHECK(meta.size() == 4);
  CHECK(meta.at("verify.max_ppl_increase") == "0.06");
  auto back = verify_thresholds_from_metadata([&](const std::string& k) -> std::optional<std::string> {
    auto it = meta.find(k);
    return it == meta.end() ? std::nullopt : std::optional<std::string>(it->second);
  });
  REQUIRE(back.ok());
  CHECK(*back->max_ppl_increase == *r->verify.max_ppl_increase);
  CHECK(*back->min_top1 == *r->verify.min_top1);
  CHECK_FALSE(back->max_top1_regression.has_value());

  auto typo = parse_recipe_text("verify: {max_ppl_increse: 5%}\n", "t.yaml");
  REQUIRE_FALSE(typo.ok());
  CHECK(typo.status().code() == kerf::ErrorCode::kBadInput);
  CHECK_THAT(typo.status().message(), Catch::Contains("t.yaml") && Catch::Contains("verify.max_ppl_increse") &&
                                          Catch::Contains("unknown key"));
  auto bad = parse_recipe_text("verify: {max_kl: 8%}\n", "k.yaml");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("k.yaml: verify.max_kl") && Catch::Contains("nats"));
  // The bundled main-job recipe carries thresholds.
  auto main = parse_recipe_file(std::string(KERF_SOURCE_DIR) + "/examples/recipes/int4-gptq.yaml");
  REQUIRE(main.ok());
  CHECK(*main->verify.max_ppl_increase == Approx(0.06));
  CHECK(*main->verify.min_top1 == Approx(0.87));
  CHECK(*main->verify.max_kl == Approx(0.06));
}

TEST_CASE("report: quant.tensor detail strings parse into precision, method, role and errors", "[verify][report]") {
  using kerf::pipeline::parse_tensor_detail;
  auto d = parse_tensor_detail("int4_asym:g32 gptq/search linear layout=t4 rel.err=0.0774 out.err=0.00053", 64);
  CHECK(*d.precision == "int4_asym:g32");
  CHECK(*d.method == "gptq/search");
  CHECK(*d.role == "linear");
  CHECK(*d.tile_rows == 4);
  CHECK(*d.rel_err == Approx(0.0774));
  CHECK(*d.out_err == Approx(0.00053));
  CHECK_FALSE(d.sens_kl.has_value());
  auto m = parse_tensor_detail("int3_sym:g32:k6 gptq/search linear rel.err=0.1500 sens.kl=0.00321", 64);
  CHECK(*m.precision == "int3_sym:g32:k6");
  CHECK(*m.sens_kl == Approx(0.00321));
  CHECK_FALSE(m.out_err.has_value());
  CHECK_FALSE(m.tile_rows.has_value());
  // The RTN baseline writes the stored precision; it is translated to qspec text.
  auto r = parse_tensor_detail("qasym4/f16 g32 t4 rtn linear", 64);
  CHECK(*r.precision == "int4_asym:g32");
  CHECK(*r.method == "rtn");
  CHECK(*r.role == "linear");
  CHECK(*r.tile_rows == 4);
  CHECK_FALSE(r.rel_err.has_value());
  CHECK(*parse_tensor_detail("q8_sym g64 rtn embedding+classifier", 64).precision == "int8_sym:row");
  CHECK(*parse_tensor_detail("q8_sym g32 rtn embedding+classifier", 64).precision == "int8_sym:g32");
  CHECK(*parse_tensor_detail("qsym3/k6 g32 rtn linear", 64).precision == "int3_sym:g32:k6");
  CHECK(*parse_tensor_detail("ternary/f16 g64 rtn linear", 128).precision == "ternary:g64");
  auto none = parse_tensor_detail("", 0);
  CHECK_FALSE(none.precision.has_value());
  CHECK_FALSE(none.method.has_value());
  CHECK_FALSE(parse_tensor_detail("something odd", 0).precision.has_value());

  using kerf::pipeline::layer_index;
  CHECK(*layer_index("model.layers.3.wq.weight") == 3);
  CHECK(*layer_index("layers.12.ffn") == 12);
  CHECK_FALSE(layer_index("model.embed.weight").has_value());
  CHECK_FALSE(layer_index("model.sublayers.3.w").has_value());
  CHECK_FALSE(layer_index("model.layers.x.w").has_value());
}

TEST_CASE("verify: checks against thresholds and a baseline (pure)", "[verify]") {
  using namespace kerf::pipeline;
  J rep = {{"ppl", 5.6}, {"ppl_reference", 5.3}, {"kl", 0.05}, {"top1", 0.88}, {"bpw", 5.0}, {"bytes", 1000}};
  ResolvedThresholds th;
  th.values.max_ppl_increase = 0.05;  // 5.6 / 5.3 - 1 = 5.66 % -> fails
  th.values.min_top1 = 0.85;
  th.values.max_kl = 0.08;
  auto cs = run_checks(rep, th, nullptr);
  REQUIRE(cs.size() == 3);
  CHECK(cs[0].metric == "ppl_increase");
  CHECK(cs[0].value == Approx(5.6 / 5.3 - 1));
  CHECK_FALSE(cs[0].passed);
  CHECK(cs[0].message == "ppl_increase 5.66 % > 5 % (ppl 5.6 vs reference 5.3)");
  CHECK(cs[1].passed);
  CHECK(cs[1].message == "top1 0.88 >= 0.85");
  CHECK(cs[2].passed);
  VerifyOutcome o;
  o.checks = cs;
  CHECK(verify_failure_line(o) == "kerf verify: FAILED: ppl_increase 5.66 % > 5 % (ppl 5.6 vs reference 5.3)");
  th.values.max_ppl_increase = 0.06;
  CHECK(run_checks(rep, th, nullptr)[0].passed);

  // Against a baseline: ppl +3.7 % (fails 1 %), kl +0.002 (passes 0.005), top1 -0.02 (fails -0.01);
  // bpw +0.5 reported only, until the recipe has a budget it exceeds.
  J base = {{"ppl", 5.4}, {"kl", 0.048}, {"top1", 0.90}, {"bpw", 4.5}, {"bytes", 900}};
  ResolvedThresholds tb;
  tb.values.max_ppl_regression = 0.01;
  tb.values.max_kl_regression = 0.005;
  tb.values.max_top1_regression = 0.01;
  auto bc = run_checks(rep, tb, &base);
  REQUIRE(bc.size() == 5);
  CHECK(bc[0].metric == "ppl_vs_baseline");
  CHECK_FALSE(bc[0].passed);
  CHECK_THAT(bc[0].message, Catch::StartsWith("ppl_vs_baseline +3.70 % > 1 %"));
  CHECK(bc[1].metric == "kl_vs_baseline");
  CHECK(bc[1].passed);
  CHECK(bc[2].metric == "top1_vs_baseline");
  CHECK(bc[2].value == Approx(-0.02));
  CHECK(*bc[2].limit == Approx(-0.01));
  CHECK_FALSE(bc[2].passed);
  CHECK(bc[3].metric == "bpw_vs_baseline");
  CHECK(bc[3].passed);
  CHECK_FALSE(bc[3].limit.has_value());
  CHECK(bc[4].metric == "bytes_vs_baseline");
  CHECK(bc[4].value == 100);
  tb.bpw_budget = 4.75;
  auto budget = run_checks(rep, tb, &base);
  CHECK_FALSE(budget[3].passed);
  CHECK(*budget[3].limit == Approx(0.25));
  CHECK_THAT(budget[3].message, Catch::Contains("recipe budget 4.75 bpw"));
  const J v = verification_object(budget, tb, &base, "old.json");
  CHECK(v["passed"] == false);
  CHECK(v["baseline"]["file"] == "old.json");
  CHECK(v["thresholds"]["bpw_budget"] == 4.75);
  CHECK(v["checks"].size() == 5);
  // Checks whose inputs are missing are left out (no reference: no ppl_increase / kl / top1).
  J noref = {{"ppl", 5.6}, {"ppl_reference", nullptr}, {"kl", nullptr}, {"top1", nullptr}, {"bpw", 5.0}, {"bytes", 1000}};
  CHECK(run_checks(noref, th, nullptr).empty());
}

TEST_CASE("kerf verify: INT2 everywhere fails with exit code 6 naming the metrics", "[verify][cli][stories]") {
  kerf::test::TempDir dir("verify_int2");
  const std::string json = dir.file("r.json"), html = dir.file("r.html");
  Run r = run_kerf(verify_args(int2_artifact()) + " --max-ppl-increase 5% --min-top1 0.85 --max-kl 0.08 --json " + json + " --html " + html);
  INFO(r.out << r.err);
  CHECK(r.code == 6);
  // The last stderr line lists every failed check with its value and limit.
  CHECK_THAT(r.err, Catch::Contains("kerf verify: FAILED: ppl_increase ") && Catch::Contains(" % > 5 % (ppl ") &&
                        Catch::Contains("top1 0.") && Catch::Contains(" < 0.85") && Catch::Contains("kl ") &&
                        Catch::Contains(" > 0.08"));
  CHECK_THAT(r.out, Catch::Contains("FAIL") && !Catch::Contains("PASS"));
  // The reports are written even when the gate fails (CI publishes them).
  const J j = read_json(json);
  CHECK(j["schema"] == "kerf.report/1");
  CHECK(j["verification"]["passed"] == false);
  REQUIRE(j["verification"]["checks"].size() == 3);
  for (const auto& c : j["verification"]["checks"]) CHECK(c["passed"] == false);
  CHECK(j["ppl"].get<double>() > 5 * j["ppl_reference"].get<double>());
  CHECK(j["top1"].get<double>() < 0.5);
  for (const auto& t : j["tensors"])
    if (t["shape"].size() == 2) CHECK(t["precision"] == "int2_asym:g32");
  CHECK(schema_errors(json) == "");
  const std::string h = kerf::test::read_bytes(html);
  CHECK_THAT(h, Catch::StartsWith("<!DOCTYPE html>"));
}

TEST_CASE("kerf verify: the int4-gptq recipe passes its own thresholds; the report validates", "[verify][cli][stories]") {
  kerf::test::TempDir dir("verify_gptq");
  const std::string json = dir.file("r.json");
  Run r = run_kerf(verify_args(gptq_artifact()) + " --json " + json);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("FAILED") == std::string::npos);
  CHECK_THAT(r.out, Catch::Contains("PASSED (3 of 3 checks)") && Catch::Contains("max_ppl_increase (recipe)"));
  const J j = read_json(json);
  const J& v = j["verification"];
  CHECK(v["passed"] == true);
  CHECK(v["thresholds"]["max_ppl_increase"] == 0.06);
  CHECK(v["thresholds"]["min_top1"] == 0.87);
  CHECK(v["thresholds"]["max_kl"] == 0.06);
  CHECK(v["threshold_sources"]["max_kl"] == "recipe");
  // The numbers behind the verdict (stories 400:440; 400:800 gives +4.9 %, 0.050, 0.886).
  CHECK(j["ppl"].get<double>() / j["ppl_reference"].get<double>() - 1 < 0.06);
  CHECK(j["kl"].get<double>() < 0.06);
  CHECK(j["top1"].get<double>() > 0.87);
  CHECK(j["predicted_tokens"] == 13329);
  CHECK(j["bpw"].get<double>() == Approx(5.435).margin(0.001));
  // Structured tensor fields, layers and placement.
  bool saw_linear = false;
  for (const auto& t : j["tensors"]) {
    if (t["name"] == "model.layers.0.wq.weight") {
      saw_linear = true;
      CHECK(t["precision"] == "int4_asym:g32");
      CHECK(t["method"] == "gptq/search");
      CHECK(t["role"] == "linear");
      CHECK(t["layer"] == 0);
      CHECK(t["bits_per_weight"] == 5.0);
      CHECK(t["rel_err"].get<double>() > 0);
      CHECK(t["out_err"].get<double>() > 0);
    }
    if (t["name"] == "model.norm.weight") CHECK(t["precision"].is_null());
  }
  CHECK(saw_linear);
  REQUIRE(j["layers"].size() == 5);
  CHECK(j["layers"][0]["params"] == 45312);  // wq 64x64, wk, wv 32x64, wo 64x64, w1, w3 172x64, w2 64x172
  CHECK(j["layers"][0]["rel_err_mean"].get<double>() > 0);
  REQUIRE(j["placement"].size() == 1);
  CHECK(j["placement"][0]["device"] == "host");
  bool tiled_linear = false;
  for (const auto& op : j["placement"][0]["ops"]) {
    CHECK(op["unit"] == "cpu");
    if (op["op"] == "kerf.Linear") tiled_linear = op["kernel"] == "tiled int8-act GEMV/GEMM";
  }
  CHECK(tiled_linear);
  CHECK(schema_errors(json) == "");
  // A package manifest beside the artifact records the verdict.
  const std::string mp = kerf::pipeline::manifest_path_for(gptq_artifact());
  REQUIRE(std::filesystem::exists(mp));
  const J m = read_json(mp);
  CHECK(m["verification"]["passed"] == true);
  CHECK(m["verification"]["stories"] == "400:440");
}

TEST_CASE("kerf verify: a baseline comparison that regresses fails naming ppl_vs_baseline", "[verify][cli][stories]") {
  kerf::test::TempDir dir("verify_baseline");
  const std::string good = dir.file("good.json");
  Run g = run_kerf(verify_args(gptq_artifact()) + " --json " + good);
  INFO(g.out << g.err);
  REQUIRE(g.code == 0);
  // Against itself: no regression, bpw / bytes reported.
  Run same = run_kerf(verify_args(gptq_artifact()) + " --baseline " + good);
  INFO(same.out << same.err);
  CHECK(same.code == 0);
  CHECK_THAT(same.out, Catch::Contains("ppl_vs_baseline") && Catch::Contains("+0.00 %") && Catch::Contains("bytes_vs_baseline"));
  // The INT2 artifact against the good report, with loose absolute limits: only the baseline fails.
  const std::string json = dir.file("r.json");
  Run r = run_kerf(verify_args(int2_artifact()) + " --max-ppl-increase 100000% --baseline " + good + " --json " + json);
  INFO(r.out << r.err);
  CHECK(r.code == 6);
  CHECK_THAT(r.err, Catch::Contains("FAILED: ppl_vs_baseline +") && Catch::Contains("% > 1 %") &&
                        Catch::Contains("vs baseline") && Catch::Contains("kl_vs_baseline") && Catch::Contains("top1_vs_baseline"));
  CHECK(r.err.find("ppl_increase") == std::string::npos);
  const J j = read_json(json);
  CHECK(j["verification"]["baseline"]["file"] == good);
  CHECK(j["verification"]["threshold_sources"]["max_ppl_regression"] == "default");
  CHECK(schema_errors(json) == "");
  // A baseline from another story range does not compare: exit 2, naming both.
  Run other = run_kerf("verify " + gptq_artifact() + " --reference " + kModel + " --text " + kText +
                       " --stories 400:420 -q --baseline " + good);
  CHECK(other.code == 2);
  CHECK_THAT(other.err, Catch::Contains("400:440") && Catch::Contains("400:420"));
}

TEST_CASE("kerf verify: bad invocations exit 2 / 3 with a clear message", "[verify][cli][stories]") {
  kerf::test::TempDir dir("verify_bad");
  // No thresholds anywhere: exit 2 naming the flags to give.
  Run none = run_kerf(verify_args(rtn_artifact()));
  CHECK(none.code == 2);
  CHECK_THAT(none.err, Catch::Contains("no thresholds") && Catch::Contains("--max-ppl-increase") &&
                           Catch::Contains("--min-top1") && Catch::Contains("--max-kl") && Catch::Contains("verify:"));
  // An ambiguous threshold: exit 2.
  Run amb = run_kerf(verify_args(rtn_artifact()) + " --max-ppl-increase 5");
  CHECK(amb.code == 2);
  CHECK_THAT(amb.err, Catch::Contains("--max-ppl-increase") && Catch::Contains("ambiguous"));
  // A malformed baseline: exit 3 naming the file.
  const std::string bad = dir.file("broken.json");
  kerf::test::write_bytes(bad, "{\"schema\": \"kerf.report/1\", \"ppl\": 5.5,");
  Run b = run_kerf(verify_args(rtn_artifact()) + " --max-kl 1 --baseline " + bad + " --json " + dir.file("out.json"));
  CHECK(b.code == 3);
  CHECK_THAT(b.err, Catch::Contains(bad) && Catch::Contains("not valid JSON"));
  kerf::test::write_bytes(bad, "{\"schema\": \"kerf.bench/1\", \"ppl\": 5.5}");
  Run s = run_kerf(verify_args(rtn_artifact()) + " --max-kl 1 --baseline " + bad);
  CHECK(s.code == 3);
  CHECK_THAT(s.err, Catch::Contains(bad) && Catch::Contains("kerf.bench/1"));
  // A missing baseline: I/O error (5).
  Run missing = run_kerf(verify_args(rtn_artifact()) + " --max-kl 1 --baseline " + dir.file("nope.json"));
  CHECK(missing.code == 5);
  // No report is written by an invocation that could not measure.
  CHECK_FALSE(std::filesystem::exists(dir.file("out.json")));
}

TEST_CASE("kerf eval --json: the main-job-style report is kerf.report/1 and validates against the schema", "[verify][cli][stories]") {
  kerf::test::TempDir dir("verify_eval");
  const std::string json = dir.file("report.json");
  Run r = run_kerf("eval " + gptq_artifact() + " --reference " + kModel + " --text " + kText + kFast + " -q --json " + json);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const J j = read_json(json);
  CHECK(j["schema"] == "kerf.report/1");
  CHECK(j["tool"]["name"] == "kerf");
  CHECK_FALSE(j["tool"]["version"].get<std::string>().empty());
  CHECK_FALSE(j.contains("verification"));
  CHECK_FALSE(j.contains("speed"));
  CHECK(schema_errors(json) == "");
  // The schema rejects a typo at the top level and a wrong type.
  J typo = j;
  typo["pll"] = 1.0;
  const std::string tj = dir.file("typo.json");
  kerf::test::write_bytes(tj, typo.dump());
  CHECK_THAT(schema_errors(tj), Catch::Contains("pll"));
  J wrong = j;
  wrong["tensors"][0]["bits_per_weight"] = "5";
  kerf::test::write_bytes(tj, wrong.dump());
  CHECK_THAT(schema_errors(tj), Catch::Contains("bits_per_weight"));
  // Without a reference the reference-dependent numbers are null, and still valid.
  const std::string noref = dir.file("noref.json");
  Run n = run_kerf("eval " + gptq_artifact() + " --text " + kText + kFast + " -q --json " + noref);
  REQUIRE(n.code == 0);
  const J k = read_json(noref);
  CHECK(k["kl"].is_null());
  CHECK(k["top1"].is_null());
  CHECK(k["ppl"].get<double>() > 1);
  CHECK(schema_errors(noref) == "");
}

TEST_CASE("kerf verify --bench adds the speed section", "[verify][cli][stories]") {
  kerf::test::TempDir dir("verify_bench");
  const std::string json = dir.file("r.json");
  Run r = run_kerf(verify_args(gptq_artifact()) + " --bench --json " + json);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const J j = read_json(json);
  REQUIRE(j.contains("speed"));
  CHECK(j["speed"]["threads"] == 1);
  CHECK(j["speed"]["prefill_tps"].get<double>() > 0);
  CHECK(j["speed"]["decode_tps"].get<double>() > 0);
  CHECK_FALSE(j["speed"]["isa"].get<std::string>().empty());
  CHECK(schema_errors(json) == "");
}
