// `kerf report`: the self-contained HTML page of a JSON report. A hand-written kerf.report/1 fixture
// (every section, a hostile tensor name, a failed verification, a baseline and a three-point curve),
// an old kerf.eval/1 report with no optional keys, the reader's errors, and the real thing: two
// RTN compiles of stories260K evaluated on stories 400:440, rendered and checked in headless
// Chromium by scripts/render-report.sh.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "compiler/pipeline/compile.h"
#include "compiler/pipeline/eval.h"
#include "compiler/pipeline/manifest.h"
#include "compiler/pipeline/report_html.h"
#include "compiler/pipeline/verify.h"
#include "tests/support.h"

using J = nlohmann::ordered_json;
using kerf::pipeline::render_report_html;

namespace {

const char* kSections[] = {"summary", "verification", "tensors", "layers", "curve", "stages", "placement", "baseline"};

/// A kerf.report/1 report as docs/report.md describes it, written by hand: 2 blocks, 5 tensors (one
/// named like an injected script), a verification with one failed check, speed, placement.
J fixture() {
  return J::parse(R"JSON({
  "schema": "kerf.report/1",
  "tool": {"name": "kerf", "version": "0.1.0", "commit": "0123456789abcdef0123456789abcdef01234567"},
  "artifact": "out/s260k-int4.kerf",
  "reference": "examples/stories260K/stories260K.fp16.onnx",
  "text": "shared/text/tinystories_valid_800.txt",
  "stories": "400:440", "n_stories": 40, "predicted_tokens": 6543,
  "ppl": 7.3, "ppl_reference": 7.0, "nll": 1.98787, "nll_reference": 1.94591,
  "kl": 0.03125, "top1": 0.9125, "bpw": 4.5625, "bytes": 151234,
  "recipe": "examples/recipes/int4-gptq.yaml", "target": "host",
  "tensors": [
    {"name": "tok_embeddings.weight", "storage": "qsym8/f16 row", "shape": [512, 64], "bytes": 33792,
     "detail": "int8_sym:row rtn embedding+classifier", "precision": "int8_sym:row", "method": "rtn",
     "role": "embedding+classifier", "layer": null, "bits_per_weight": 8.25, "rel_err": 0.0051, "out_err": null},
    {"name": "model.layers.0.attention.wq.weight", "storage": "qasym4/f16 g32 t4", "shape": [64, 64], "bytes": 2560,
     "detail": "int4_asym:g32 gptq/search linear layout=t4 rel.err=0.0774 out.err=0.0021", "precision": "int4_asym:g32",
     "method": "gptq/search", "role": "linear", "layer": 0, "bits_per_weight": 5.0, "rel_err": 0.0774, "out_err": 0.0021},
    {"name": "model.layers.1.attention.wq.weight", "storage": "qasym4/f16 g32 t4", "shape": [64, 64], "bytes": 2560,
     "detail": "int4_asym:g32 gptq/search linear layout=t4 rel.err=0.0912 out.err=0.0043", "precision": "int4_asym:g32",
     "method": "gptq/search", "role": "linear", "layer": 1, "bits_per_weight": 5.0, "rel_err": 0.0912, "out_err": 0.0043},
    {"name": "<script>alert(\"x\")</script>", "storage": "f32", "shape": [64], "bytes": 256, "detail": "",
     "precision": null, "method": null, "role": "norm", "layer": null, "bits_per_weight": null, "rel_err": null, "out_err": null},
    {"name": "norm.weight", "storage": "f32", "shape": [64], "bytes": 256, "detail": "",
     "precision": null, "method": null, "role": "norm", "layer": null, "bits_per_weight": null, "rel_err": null, "out_err": null}
  ],
  "layers": [
    {"layer": 0, "params": 4096, "bytes": 2560, "bpw": 5.0, "rel_err_mean": 0.0774, "out_err_sum": 0.0021},
    {"layer": 1, "params": 4096, "bytes": 2560, "bpw": 5.0, "rel_err_mean": 0.0912, "out_err_sum": 0.0043}
  ],
  "placement": [
    {"device": "host", "ops": [
      {"index": 0, "op": "kerf.Embedding", "name": "tok_embeddings.weight", "unit": "cpu", "kernel": "row gather", "reason": "one compute unit (CPU); embedding lookup"},
      {"index": 1, "op": "kerf.Linear", "name": "model.layers.0.attention.wq.weight", "unit": "cpu", "kernel": "tiled int8-act GEMV/GEMM", "reason": "one compute unit (CPU); int4 weights, tiled layout"},
      {"index": 2, "op": "kerf.RMSNorm", "name": "norm.weight", "unit": "cpu", "kernel": "scalar float", "reason": "one compute unit (CPU); elementwise"}
    ]}
  ],
  "timing": {"reference_seconds": 1.25, "artifact_seconds": 0.5, "artifact_prefill_tokens_per_second": 13166.0},
  "speed": {"threads": 2, "prefill_tps": 2345.6, "decode_tps": 456.7, "isa": "avx2"},
  "verification": {
    "passed": false,
    "thresholds": {"max_ppl_increase": 0.03, "min_top1": 0.85, "max_kl": 0.08},
    "checks": [
      {"metric": "ppl_increase", "value": 0.042857, "limit": 0.03, "op": "<=", "passed": false,
       "message": "perplexity 7.3000 is 4.29 % above the reference 7.0000 (limit 3.00 %)"},
      {"metric": "top1", "value": 0.9125, "limit": 0.85, "op": ">=", "passed": true, "message": "top-1 agreement 0.9125"},
      {"metric": "kl", "value": 0.03125, "limit": 0.08, "op": "<=", "passed": true, "message": "KL 0.03125"}
    ]
  }
})JSON");
}

/// The section `id` of the page: from its opening tag to the next "</section>".
std::string section(const std::string& html, const std::string& id) {
  const std::string open = "<section id=\"" + id + "\">";
  const size_t a = html.find(open);
  if (a == std::string::npos) return "";
  const size_t b = html.find("</section>", a);
  return html.substr(a, b == std::string::npos ? std::string::npos : b - a);
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + needle.size())) ++n;
  return n;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

/// The page structure every report must have: one <section> per id, in order, each with a heading;
/// nothing that loads a resource (no scripts, links, src attributes, url(), network URLs).
void check_structure(const std::string& html) {
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  size_t last = 0;
  for (const char* id : kSections) {
    INFO(id);
    const std::string open = std::string("<section id=\"") + id + "\">";
    CHECK(count(html, open) == 1);
    const size_t at = html.find(open);
    CHECK(at != std::string::npos);
    CHECK(at > last);
    last = at;
    CHECK(section(html, id).find("<h2>") != std::string::npos);
  }
  const std::string l = lower(html);
  for (const char* bad : {"<script", "<link", "<img", "<iframe", "src=", "url(", "@import", "http:", "https:", "//fonts", "<object"}) {
    INFO(bad);
    CHECK(l.find(bad) == std::string::npos);
  }
  CHECK(count(l, "<section") == count(l, "</section>"));
  CHECK(count(l, "<svg") == count(l, "</svg>"));
  CHECK(count(l, "<table") == count(l, "</table>"));
}

std::string slurp(const std::string& p) { return kerf::test::read_bytes(p); }

}  // namespace

TEST_CASE("report html: the fixture, with a baseline and a three-report curve", "[report]") {
  const J r = fixture();
  J base = fixture();
  base["artifact"] = "out/s260k-int4-old.kerf";
  base["ppl"] = 7.1;  // this report is worse: perplexity, bytes
  base["top1"] = 0.90;  // and better: top-1
  base["bytes"] = 150000;
  base["tensors"][1]["storage"] = "qsym8/f16 g32 t4";  // one tensor changed storage since the baseline
  base["tensors"][1]["precision"] = "int8_sym:g32";
  J c3 = fixture(), c5 = fixture();
  c3["recipe"] = "int3-gptq", c3["bpw"] = 3.5, c3["ppl"] = 8.4, c3["artifact"] = "out/s260k-int3.kerf";
  c5["recipe"] = "int8", c5["bpw"] = 8.5, c5["ppl"] = 7.02, c5["artifact"] = "out/s260k-int8.kerf";
  const std::string html = render_report_html(r, &base, {c3, r, c5});
  check_structure(html);

  // Escaping: the hostile tensor name is text, never markup.
  CHECK(html.find("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") != std::string::npos);
  CHECK(lower(html).find("<script") == std::string::npos);

  const std::string summary = section(html, "summary");
  CHECK(summary.find("7.3000 vs 7.0000 FP reference (+4.29 %)") != std::string::npos);
  CHECK(summary.find("151,234 bytes") != std::string::npos);
  CHECK(summary.find("4.5625") != std::string::npos);
  CHECK(summary.find("0.03125") != std::string::npos);          // KL
  CHECK(summary.find("91.25 %") != std::string::npos);          // top-1
  CHECK(summary.find("decode 456.7 tok/s") != std::string::npos);
  CHECK(summary.find("0123456789abcdef0123456789abcdef01234567") != std::string::npos);
  CHECK(summary.find("6,543 predicted tokens") != std::string::npos);
  // The verdict banner names the failed check, and only that one.
  CHECK(summary.find("banner fail") != std::string::npos);
  CHECK(summary.find("FAIL — 1 of 3 checks failed") != std::string::npos);
  CHECK(summary.find("<b>ppl_increase</b>: perplexity 7.3000 is 4.29 % above the reference 7.0000 (limit 3.00 %)") !=
        std::string::npos);
  CHECK(summary.find("<b>kl</b>") == std::string::npos);

  const std::string ver = section(html, "verification");
  CHECK(count(ver, "<tr class=\"failed\">") == 1);
  CHECK(count(ver, "class=\"ok\">PASS") == 2);
  CHECK(ver.find("<code>max_ppl_increase</code></td><td class=\"n\">3.00 %") != std::string::npos);
  CHECK(ver.find("<code>ppl_increase</code></td><td class=\"n\">+4.29 %</td><td>≤</td><td class=\"n\">3.00 %</td>") !=
        std::string::npos);
  // A failed check without a message: the banner says value, operator and limit itself.
  J quiet = fixture();
  quiet["verification"]["checks"][0].erase("message");
  CHECK(section(render_report_html(quiet, nullptr, {}), "summary").find("<b>ppl_increase</b> = +4.29 % (required: ≤ 3.00 %)") !=
        std::string::npos);

  const std::string tensors = section(html, "tensors");
  CHECK(count(tensors, "<td class=\"name\">") == 5);
  CHECK(tensors.find("gptq/search") != std::string::npos);
  CHECK(tensors.find("512×64") != std::string::npos);
  CHECK(tensors.find("0.0912") != std::string::npos);
  CHECK(tensors.find("total (5 tensors)") != std::string::npos);
  CHECK(tensors.find("39,424") != std::string::npos);  // 33792 + 2 * 2560 + 2 * 256

  // Two bar charts, one bar per block each, with the values written on them.
  const std::string layers = section(html, "layers");
  CHECK(count(layers, "<svg") == 3);  // weight error, output error, bits per weight
  CHECK(count(layers, "<rect class=\"bar\"") == 6);
  CHECK(layers.find(">0.0912</text>") != std::string::npos);
  CHECK(layers.find(">0.0043</text>") != std::string::npos);
  CHECK(layers.find("transformer block") != std::string::npos);

  // Three points in bpw order, this report's highlighted, each labelled with its recipe.
  const std::string curve = section(html, "curve");
  CHECK(count(curve, "<svg") == 1);
  CHECK(count(curve, "<circle class=\"pt") == 3);
  CHECK(count(curve, "<circle class=\"pt cur\"") == 1);
  CHECK(curve.find("int3-gptq (8.4)") != std::string::npos);
  CHECK(curve.find("FP reference 7") != std::string::npos);
  CHECK(curve.find("int3-gptq") < curve.find("examples/recipes/int4-gptq.yaml (7.3)"));
  const size_t rows3 = curve.find("<td class=\"n\">3.500</td>"), rows4 = curve.find("<td class=\"n\">4.562</td>"),
               rows8 = curve.find("<td class=\"n\">8.500</td>");
  CHECK(rows3 < rows4);
  CHECK(rows4 < rows8);
  CHECK(rows8 != std::string::npos);

  CHECK(section(html, "stages").find("No pruning") != std::string::npos);

  const std::string placement = section(html, "placement");
  CHECK(placement.find("device <code>host</code> — 3 ops") != std::string::npos);
  CHECK(placement.find("cpu: 3 ops") != std::string::npos);
  CHECK(placement.find("tiled int8-act GEMV/GEMM × 1") != std::string::npos);
  CHECK(count(placement, "<td>cpu</td>") == 3);
  CHECK(placement.find("Every op: one compute unit (CPU).") != std::string::npos);  // the shared reason, said once
  CHECK(placement.find("<td>int4 weights, tiled layout</td>") != std::string::npos);
  CHECK(count(placement, "one compute unit") == 1);

  // Regressions highlighted, improvements marked, the tensor whose storage changed listed.
  const std::string bl = section(html, "baseline");
  CHECK(bl.find("<tr class=\"regress\"><td>perplexity</td><td class=\"n\">7.1</td><td class=\"n\">7.3</td><td class=\"n\">+0.2</td>") !=
        std::string::npos);
  CHECK(bl.find("<tr class=\"regress\"><td>bytes</td>") != std::string::npos);
  CHECK(bl.find("<tr class=\"improve\"><td>top-1 agreement</td>") != std::string::npos);
  CHECK(bl.find("<tr><td>KL(reference ‖ artifact)</td>") != std::string::npos);  // unchanged: not highlighted
  CHECK(bl.find("2 metrics are worse than in the baseline") != std::string::npos);
  CHECK(bl.find("Tensors whose storage changed (1 of 5)") != std::string::npos);
  CHECK(bl.find("qsym8/f16 g32 t4 [int8_sym:g32]") != std::string::npos);

  // Deterministic: the same inputs give the same page.
  CHECK(render_report_html(r, &base, {c3, r, c5}) == html);
}

TEST_CASE("report html: an old kerf.eval/1 report and absent optional keys", "[report]") {
  // The minimum: a schema and nothing else renders every section, saying what is missing.
  const J bare = J::parse(R"({"schema": "kerf.report/1", "artifact": "a.kerf"})");
  std::string html = render_report_html(bare, nullptr, {});
  check_structure(html);
  CHECK(section(html, "curve").find("One bit budget only") != std::string::npos);
  CHECK(section(html, "curve").find("<svg") == std::string::npos);
  CHECK(section(html, "baseline").find("No baseline given") != std::string::npos);
  CHECK(section(html, "verification").find("No verification in this report") != std::string::npos);
  CHECK(section(html, "summary").find("<tr><th>reference</th><td><span class=\"na\">not in this report") != std::string::npos);
  CHECK(section(html, "summary").find("<tr><th>evaluation text</th><td><span class=\"na\">not in this report") != std::string::npos);
  for (const char* id : {"tensors", "layers", "placement"}) {
    INFO(id);
    CHECK(section(html, id).find("not in this report") != std::string::npos);
  }

  // What `kerf eval --json` wrote before kerf.report/1, with pruning stages.
  const J old = J::parse(R"JSON({
    "schema": "kerf.eval/1", "artifact": "p.kerf", "reference": "m.onnx", "text": "t.txt", "stories": "400:800",
    "n_stories": 400, "predicted_tokens": 152644, "ppl": 5.9, "ppl_reference": 5.33, "nll": 1.77, "nll_reference": 1.67,
    "kl": 0.09, "top1": 0.8, "bpw": 5.435, "bytes": 190000, "recipe": "rtn q4_asym", "target": "host",
    "tensors": [{"name": "model.layers.0.attention.wq.weight", "storage": "qasym4/f16 g32 t4", "shape": [64, 64], "bytes": 2560,
                 "detail": "q4_asym g32 rtn linear"}],
    "stages": [
      {"stage": "original", "measured": true, "ppl": 5.33, "nll": 1.67, "kl": 0, "top1": 1, "params": 260000,
       "decode_flops_per_token": 520000, "prefill_flops_per_token": 500000, "context": 256, "bytes": 1040000},
      {"stage": "pruned", "measured": true, "ppl": 9.5, "nll": 2.25, "kl": 0.6, "top1": 0.55, "params": 180000,
       "decode_flops_per_token": 360000, "prefill_flops_per_token": 350000, "context": 256, "bytes": 720000},
      {"stage": "distilled", "measured": false, "note": "no checkpoint", "params": 180000,
       "decode_flops_per_token": 360000, "prefill_flops_per_token": 350000, "context": 256, "bytes": 720000},
      {"stage": "quantized", "measured": true, "ppl": 5.9, "nll": 1.77, "kl": 0.09, "top1": 0.8, "params": 180000,
       "decode_flops_per_token": 360000, "prefill_flops_per_token": 350000, "context": 256, "bytes": 190000}],
    "prune": "keep-heads 0.75, keep-ffn 0.5",
    "timing": {"reference_seconds": 10, "artifact_seconds": 3, "artifact_prefill_tokens_per_second": 50000}})JSON");
  REQUIRE(kerf::pipeline::check_report(old, "old.json").ok());
  html = render_report_html(old, nullptr, {old});
  check_structure(html);
  const std::string summary = section(html, "summary");
  CHECK(summary.find("<tr><th>tool</th><td><span class=\"na\">not in this report") != std::string::npos);
  CHECK(summary.find("5.9000 vs 5.3300 FP reference (+10.69 %)") != std::string::npos);
  CHECK(section(html, "tensors").find("q4_asym g32 rtn linear") != std::string::npos);  // the metadata, as detail
  CHECK(section(html, "tensors").find("not in this report") != std::string::npos);
  CHECK(section(html, "layers").find("not in this report</span> (schema <code>kerf.eval/1</code>") != std::string::npos);
  CHECK(section(html, "placement").find("not in this report") != std::string::npos);
  CHECK(section(html, "curve").find("One bit budget only") != std::string::npos);
  const std::string stages = section(html, "stages");
  CHECK(stages.find("keep-heads 0.75, keep-ffn 0.5") != std::string::npos);
  CHECK(stages.find("<td>pruned</td><td class=\"n\">9.5000</td><td class=\"n\">+78.24 %</td>") != std::string::npos);
  CHECK(stages.find("not measured: no checkpoint") != std::string::npos);
  CHECK(stages.find("<td class=\"n\">0.3600</td>") != std::string::npos);  // decode MFLOP/token of the pruned model

  // A report without a reference (kerf.report/1 writes null): no KL / top-1 shown as if measured.
  J noref = fixture();
  noref.erase("verification");
  noref["reference"] = "", noref["ppl_reference"] = nullptr, noref["kl"] = nullptr, noref["top1"] = nullptr;
  html = render_report_html(noref, nullptr, {});
  check_structure(html);
  CHECK(section(html, "summary").find("none (artifact metrics only)") != std::string::npos);
  CHECK(section(html, "summary").find("top-1 agreement") == std::string::npos);

  // No baseline file, but kerf verify's record of one: the diff uses it.
  J verified = fixture();
  verified["verification"]["baseline"] = {{"file", "ci/baseline.json"}, {"ppl", 7.25}, {"kl", 0.04}, {"top1", 0.9},
                                          {"bpw", 4.5625}, {"bytes", 151234}};
  const std::string vb = section(render_report_html(verified, nullptr, {}), "baseline");
  CHECK(vb.find("<code>ci/baseline.json</code> (from the verification)") != std::string::npos);
  CHECK(vb.find("<tr class=\"regress\"><td>perplexity</td><td class=\"n\">7.25</td>") != std::string::npos);
  CHECK(vb.find("<tr class=\"improve\"><td>KL(reference ‖ artifact)</td>") != std::string::npos);
  CHECK(vb.find("<tr><td>bits per weight</td>") != std::string::npos);
  CHECK(vb.find("1 metric is worse than in the baseline.") != std::string::npos);

  // Keys of unexpected types never throw (check_report rejects them; the renderer shows them as missing).
  J odd = fixture();
  odd["ppl"] = "seven", odd["layers"] = 3, odd["placement"] = J::object(), odd["tensors"][0]["shape"] = "64x64";
  CHECK_NOTHROW(html = render_report_html(odd, &odd, {odd, odd}));
  check_structure(html);
}

TEST_CASE("report html: reading reports, errors name the file and the problem", "[report]") {
  kerf::test::TempDir d("report_html");
  using kerf::ErrorCode;
  auto write = [&](const std::string& name, const std::string& text) {
    kerf::test::write_bytes(d.file(name), text);
    return d.file(name);
  };
  const std::string good = write("good.json", fixture().dump(2));
  const std::string malformed = write("bad.json", "{\"schema\": \"kerf.report/1\", \"ppl\": 7.3,\n");
  const std::string foreign = write("bench.json", R"({"schema": "kerf.bench/1", "decode_tps": 3})");
  const std::string noschema = write("noschema.json", R"({"ppl": 7})");
  const std::string array = write("array.json", "[1, 2]");
  J wrong_type = fixture();
  wrong_type["ppl"] = "7.3";
  const std::string typed = write("typed.json", wrong_type.dump());
  J wrong_tensor = fixture();
  wrong_tensor["tensors"][2] = "x";
  const std::string tens = write("tens.json", wrong_tensor.dump());

  auto r = kerf::pipeline::read_report(good);
  REQUIRE(r.ok());
  CHECK((*r)["ppl"] == 7.3);
  struct Case {
    std::string path, must_say;
  };
  for (const Case& c : {Case{malformed, "malformed JSON"}, Case{foreign, "schema \"kerf.bench/1\" is not supported"},
                        Case{noschema, "no \"schema\" key"}, Case{array, "the top level is an array"},
                        Case{typed, "\"ppl\" is a string, expected a number"}, Case{tens, "\"tensors\"[2] is a string"}}) {
    INFO(c.path);
    auto e = kerf::pipeline::read_report(c.path);
    REQUIRE(!e.ok());
    CHECK(e.status().code() == ErrorCode::kBadInput);
    CHECK(kerf::exit_code_for(e.status().code()) == 3);
    CHECK(e.status().message().find(c.path) != std::string::npos);
    CHECK(e.status().message().find(c.must_say) != std::string::npos);
  }
  auto missing = kerf::pipeline::read_report(d.file("none.json"));
  REQUIRE(!missing.ok());
  CHECK(missing.status().code() == ErrorCode::kIo);

  // write_report_html: the page of the report; a bad baseline / curve file stops it before anything
  // is written; an unwritable output leaves nothing behind.
  kerf::pipeline::ReportOptions o;
  o.report_path = good;
  o.output_path = d.file("out.html");
  o.baseline_path = malformed;
  auto st = kerf::pipeline::write_report_html(o);
  CHECK(st.code() == ErrorCode::kBadInput);
  CHECK(st.message().rfind("--baseline: " + malformed, 0) == 0);
  CHECK(!std::filesystem::exists(o.output_path));
  o.baseline_path.clear();
  o.curve_paths = {foreign};
  st = kerf::pipeline::write_report_html(o);
  CHECK(st.code() == ErrorCode::kBadInput);
  CHECK(st.message().find("--curve: " + foreign) != std::string::npos);
  CHECK(!std::filesystem::exists(o.output_path));

  // The curve: this report plus the --curve files, each once (the report itself named again is not
  // a second point).
  J other = fixture();
  other["bpw"] = 8.5, other["ppl"] = 7.01, other["recipe"] = "int8";
  o.curve_paths = {good, write("other.json", other.dump())};
  o.baseline_path = good;
  st = kerf::pipeline::write_report_html(o);
  REQUIRE(st.ok());
  const std::string page = slurp(o.output_path);
  CHECK(page == render_report_html(*r, &*r, {*r, other}));
  CHECK(count(section(page, "curve"), "<circle class=\"pt") == 2);
  CHECK(section(page, "baseline").find("No metric is worse than in the baseline.") != std::string::npos);

  o.output_path = d.file("no-such-dir/out.html");
  st = kerf::pipeline::write_report_html(o);
  CHECK(st.code() == ErrorCode::kIo);
  CHECK(!std::filesystem::exists(d.file("no-such-dir")));
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(d.path)) files += e.path().string().find(".tmp") != std::string::npos;
  CHECK(files == 0);
}

TEST_CASE("report files: a number beyond double is bad input naming the file; invalid UTF-8 is written, not thrown", "[report]") {
  kerf::test::TempDir d("report_json_io");
  using kerf::ErrorCode;
  // "ppl": 1e400 is JSON, but no double holds it: nlohmann throws out_of_range, not parse_error.
  const std::string huge = d.file("huge.json");
  kerf::test::write_bytes(huge, R"({"schema": "kerf.report/1", "ppl": 1e400})");
  auto r = kerf::pipeline::read_report(huge);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == ErrorCode::kBadInput);
  CHECK(kerf::exit_code_for(r.status().code()) == 3);
  CHECK(r.status().message().find(huge) != std::string::npos);
  auto b = kerf::pipeline::read_report_file(huge);  // kerf verify --baseline
  REQUIRE(!b.ok());
  CHECK(b.status().code() == ErrorCode::kBadInput);
  CHECK(b.status().message().find(huge) != std::string::npos);
  auto m = kerf::pipeline::read_manifest(huge);
  REQUIRE(!m.ok());
  CHECK(m.status().code() == ErrorCode::kBadInput);
  CHECK(m.status().message().find(huge) != std::string::npos);

  // A file name that is not UTF-8 (Latin-1 "\xe9") in a report: written with U+FFFD, read back.
  kerf::pipeline::EvalReport rep;
  rep.artifact = "out/mod\xe9le.kerf";
  rep.ppl = 7.3;
  std::string text;
  REQUIRE_NOTHROW(text = kerf::pipeline::eval_report_json(rep));
  const J j = J::parse(text);
  CHECK(j["artifact"] == "out/mod\xef\xbf\xbdle.kerf");
  std::string html;
  CHECK_NOTHROW(html = render_report_html(j, nullptr, {}));
  J manifest = {{"schema", "kerf.manifest/1"}, {"artifact", {{"file", "mod\xe9le.kerf"}}}};
  const std::string mpath = d.file("m.manifest.json");
  REQUIRE(kerf::pipeline::write_manifest(mpath, manifest).ok());
  auto back = kerf::pipeline::read_manifest(mpath);
  REQUIRE(back.ok());
  CHECK((*back)["artifact"]["file"] == "mod\xef\xbf\xbdle.kerf");
}

TEST_CASE("report html: real kerf eval reports of stories260K, rendered in headless Chromium", "[report]") {
  kerf::test::TempDir d("report_chromium");
  // Two RTN compiles (INT4 and INT8 linears) evaluated on stories 400:440, as `kerf eval --json` writes them.
  std::vector<std::string> reports;
  for (const auto& [name, dtype] : {std::pair<std::string, kerf::fmt::DType>{"int4", kerf::fmt::DType::kQ4Asym},
                                    std::pair<std::string, kerf::fmt::DType>{"int8", kerf::fmt::DType::kQ8Sym}}) {
    kerf::pipeline::CompileOptions co;
    co.model_path = kerf::test::kModel;
    co.output_path = d.file("s260k-" + name + ".kerf");
    co.quant.linear_dtype = dtype;
    auto c = kerf::pipeline::compile(co);
    INFO(c.status().to_string());
    REQUIRE(c.ok());
    kerf::pipeline::EvalOptions eo;
    eo.artifact_path = co.output_path;
    eo.reference_path = kerf::test::kModel;
    eo.text_path = kerf::test::kText;
    eo.stories = {400, 440};
    auto e = kerf::pipeline::evaluate(eo);
    INFO(e.status().to_string());
    REQUIRE(e.ok());
    reports.push_back(d.file(name + ".json"));
    kerf::test::write_bytes(reports.back(), kerf::pipeline::eval_report_json(*e));
  }
  auto r4 = kerf::pipeline::read_report(reports[0]);
  auto r8 = kerf::pipeline::read_report(reports[1]);
  INFO(r4.status().to_string());
  REQUIRE(r4.ok());
  REQUIRE(r8.ok());

  kerf::pipeline::ReportOptions o;
  o.report_path = reports[0];
  o.baseline_path = reports[1];
  o.curve_paths = {reports[1]};
  o.output_path = d.file("real.html");
  REQUIRE(kerf::pipeline::write_report_html(o).ok());
  const std::string html = slurp(o.output_path);
  check_structure(html);
  const double ppl4 = (*r4)["ppl"], ppl8 = (*r8)["ppl"];
  CHECK(ppl4 > ppl8);  // INT4 costs more than INT8
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4f", ppl4);
  CHECK(section(html, "summary").find(buf) != std::string::npos);
  CHECK(count(section(html, "curve"), "<circle class=\"pt") == 2);
  CHECK(section(html, "baseline").find("<tr class=\"regress\"><td>perplexity</td>") != std::string::npos);
  CHECK(section(html, "baseline").find("<tr class=\"improve\"><td>bits per weight</td>") != std::string::npos);
  CHECK(section(html, "stages").find("No pruning") != std::string::npos);
  const size_t n_tensors = (*r4)["tensors"].size();
  CHECK(n_tensors > 30);
  CHECK(count(section(html, "tensors"), "<td class=\"name\">") == n_tensors);
  // The kerf.report/1 writer: per-layer charts (5 blocks of stories260K; RTN records no errors, so
  // the bits-per-weight chart) and the program's placement.
  REQUIRE((*r4)["schema"] == "kerf.report/1");
  CHECK(count(section(html, "layers"), "<svg") >= 1);
  CHECK(count(section(html, "layers"), "<rect class=\"bar\"") >= 5);
  CHECK(section(html, "layers").find("id=\"layers-bpw\"") != std::string::npos);
  CHECK(section(html, "placement").find("cpu: ") != std::string::npos);
  CHECK(section(html, "summary").find("tool</th><td>kerf ") != std::string::npos);

  // The fixture too (every section populated), then both pages in Chromium: every section in the
  // rendered DOM, and a screenshot that is a real rendering.
  const std::string fixture_json = d.file("fixture.json");
  kerf::test::write_bytes(fixture_json, fixture().dump(2));
  kerf::pipeline::ReportOptions f;
  f.report_path = fixture_json;
  f.baseline_path = reports[0];
  f.curve_paths = {reports[0], reports[1]};
  f.output_path = d.file("fixture.html");
  REQUIRE(kerf::pipeline::write_report_html(f).ok());

  const std::string script = std::string(KERF_SOURCE_DIR) + "/scripts/render-report.sh";
  // Kept under the build tree (not the temporary directory) so that a person can look at them.
  const std::string keep = std::string(KERF_BINARY_DIR) + "/report-screenshots";
  std::filesystem::create_directories(keep);
  for (const std::string& page : {o.output_path, f.output_path}) {
    const std::string stem = std::filesystem::path(page).stem().string();
    const std::string html_copy = keep + "/" + stem + ".html", png = keep + "/" + stem + ".png";
    std::filesystem::copy_file(page, html_copy, std::filesystem::copy_options::overwrite_existing);
    const std::string log = d.file(stem + ".log");
    const int rc = std::system(("'" + script + "' '" + html_copy + "' '" + png + "' >'" + log + "' 2>&1").c_str());
    INFO("scripts/render-report.sh " << html_copy << " " << png << " (no Chromium? scripts/install-deps.sh installs it):\n"
                                     << slurp(log));
    REQUIRE(rc == 0);
    CHECK(slurp(log).find("render-report: OK") != std::string::npos);
    CHECK(std::filesystem::file_size(png) > 20000);
  }
}
