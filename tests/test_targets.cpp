// Tests for compiler/targets: device profiles (built-ins parse, validation rejects unknown fields and
// impossible numbers with the field named), the placement pass (support, cost decisions, transfers,
// pins and strict mode, the attention unit shared by both phases) and the npu weight quantizer.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "compiler/targets/lower.h"
#include "compiler/targets/placement.h"
#include "compiler/targets/profile.h"
#include "kerf/format.h"

using namespace kerf;
using namespace kerf::targets;

namespace {

// A profile with a cpu and an npu whose figures the tests vary.
std::string soc_yaml(double npu_gops = 20000, double npu_transfer_us = 10, const std::string& extra_npu = "",
                     const std::string& placement = "") {
  return "kerf_profile: 1\n"
         "name: test-soc\n"
         "description: test\n"
         "memory_mb: 1024\n" +
         placement +
         "units:\n"
         "  cpu:\n"
         "    api: arm64\n"
         "    kernels: neondot\n"
         "    threads: 4\n"
         "    ops: [Embedding, RMSNorm, Linear, Rotary, Attention, GatedFFN, Add]\n"
         "    weights: [f32, f16, q8_sym, q4_asym, qsym, qasym, ternary, binary]\n"
         "    gops: 100\n"
         "    bandwidth_gbs: 20\n"
         "    launch_us: 1\n"
         "    sources: [test]\n"
         "  npu:\n"
         "    api: test-npu\n"
         "    ops: [RMSNorm, Linear, Rotary, Attention, GatedFFN, Add]\n"
         "    weights: [int8, int4]\n"
         "    activation_bits: 16\n"
         "    weight_bits: 8\n"
         "    gops: " +
         std::to_string(npu_gops) + "\n    bandwidth_gbs: 20\n    launch_us: 1\n    transfer_us: " +
         std::to_string(npu_transfer_us) + "\n" + extra_npu + "    sources: [test]\n";
}

DeviceProfile parse_ok(const std::string& y) {
  auto p = parse_profile(y, "test.yaml");
  INFO((p.ok() ? std::string() : p.status().message()));
  REQUIRE(p.ok());
  return *p;
}

std::string parse_err(const std::string& y) {
  auto p = parse_profile(y, "test.yaml");
  REQUIRE_FALSE(p.ok());
  CHECK(p.status().code() == ErrorCode::kBadInput);
  return p.status().message();
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  REQUIRE(at != std::string::npos);
  return s.replace(at, from.size(), to);
}

// A Llama-shaped program: embedding, L blocks, final norm, classifier (widths: D = 256, F = 768).
Program llama_program(int layers, int64_t D = 256, int64_t F = 768, int64_t V = 4096) {
  Program p;
  auto value = [&](int64_t w) {
    p.widths.push_back(w);
    return int(p.widths.size() - 1);
  };
  const int tokens = value(1);
  (void)tokens;
  auto add = [&](const std::string& name, const std::string& op, std::vector<int> in, int64_t out_w, int64_t rows = 0,
                 int64_t cols = 0, int nmat = 1) {
    ProgramOp o;
    o.name = name;
    o.op = op;
    o.inputs = std::move(in);
    o.output = value(out_w);
    if (rows) {
      for (int k = 0; k < nmat; ++k) o.weight_dtypes.push_back("qsym");
      o.weight_params = rows * cols * nmat;
      o.weight_rows = rows * nmat;
      o.weight_bytes = double(o.weight_params) * 0.5 + double(o.weight_rows) * 4;
      o.macs_per_token = double(o.weight_params);
    }
    if (op == "Attention") {
      o.n_heads = 8;
      o.n_kv_heads = 4;
      o.head_dim = D / 8;
    }
    p.ops.push_back(o);
    return o.output;
  };
  ProgramOp emb;
  emb.name = "tok_embeddings";
  emb.op = "Embedding";
  emb.weight_dtypes = {"qsym"};
  emb.weight_bytes = double(D);
  emb.output = value(D);
  p.ops.push_back(emb);
  int x = emb.output;
  for (int l = 0; l < layers; ++l) {
    const std::string b = "layers." + std::to_string(l) + ".";
    const int h = add(b + "attn_norm", "RMSNorm", {x}, D);
    const int q = add(b + "q", "Linear", {h}, D, D, D);
    const int k = add(b + "k", "Linear", {h}, D / 2, D / 2, D);
    const int v = add(b + "v", "Linear", {h}, D / 2, D / 2, D);
    const int qr = add(b + "q_rot", "Rotary", {q}, D);
    const int kr = add(b + "k_rot", "Rotary", {k}, D / 2);
    const int a = add(b + "attn", "Attention", {qr, kr, v}, D);
    const int o = add(b + "o", "Linear", {a}, D, D, D);
    const int x1 = add(b + "res1", "Add", {x, o}, D);
    const int h2 = add(b + "ffn_norm", "RMSNorm", {x1}, D);
    const int f = add(b + "ffn", "GatedFFN", {h2}, D, F, D, 3);
    x = add(b + "res2", "Add", {x1, f}, D);
  }
  const int n = add("norm", "RMSNorm", {x}, D);
  p.output = add("output", "Linear", {n}, V, V, D);
  return p;
}

const OpPlacement& op_named(const Program& prog, const Placement& pl, const std::string& name) {
  for (size_t i = 0; i < prog.ops.size(); ++i)
    if (prog.ops[i].name == name) return pl.ops[i];
  FAIL("no op " << name);
  return pl.ops[0];
}

}  // namespace

TEST_CASE("targets: every built-in profile parses, with the ones the issue names", "[targets]") {
  const auto& all = builtin_profiles();
  std::vector<std::string> names;
  for (const auto& p : all) names.push_back(p.name);
  for (const char* want : {"host", "generic", "x86-64-avx2", "x86-64-avx512", "arm64-neon-dotprod", "snapdragon-8-gen3",
                           "dimensity-9300"})
    CHECK(std::find(names.begin(), names.end(), want) != names.end());
  // builtin_profiles() skips an invalid file with a message; re-parse each to be sure none was skipped
  for (const auto& p : all) {
    auto again = parse_profile(p.yaml, p.name, p.name);
    INFO(p.name);
    REQUIRE(again.ok());
    CHECK(!p.cpu.sources.empty());
  }
  const DeviceProfile sd = *load_profile("snapdragon-8-gen3");
  CHECK(sd.gpu.present);
  CHECK(sd.npu.present);
  CHECK(sd.npu.activation_bits == 16);
  CHECK_FALSE(sd.npu.ops.count("Embedding"));
  const DeviceProfile dm = *load_profile("dimensity-9300");
  CHECK(dm.gpu.present);
  CHECK(dm.npu.present);
  auto unknown = load_profile("snapdragon-9-gen9");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(unknown.status().message(), Catch::Contains("snapdragon-8-gen3") && Catch::Contains("dimensity-9300"));
}

TEST_CASE("targets: profile validation names the field of an unknown key or an impossible number", "[targets]") {
  const std::string ok = soc_yaml();
  parse_ok(ok);
  CHECK_THAT(parse_err(replace(ok, "memory_mb: 1024", "memory_mb: 1024\nmemroy_mb: 3")),
             Catch::Contains("memroy_mb: unknown field"));
  CHECK_THAT(parse_err(replace(ok, "    bandwidth_gbs: 20\n    launch_us: 1\n    transfer_us",
                               "    bandwith_gbs: 20\n    launch_us: 1\n    transfer_us")),
             Catch::Contains("units.npu.bandwith_gbs: unknown field"));
  CHECK_THAT(parse_err(replace(ok, "gops: 100", "gops: -5")), Catch::Contains("units.cpu.gops: -5 is impossible"));
  CHECK_THAT(parse_err(replace(ok, "gops: 100", "gops: 1e9")), Catch::Contains("units.cpu.gops"));
  CHECK_THAT(parse_err(replace(ok, "bandwidth_gbs: 20", "bandwidth_gbs: 0")), Catch::Contains("units.cpu.bandwidth_gbs: 0 is impossible"));
  CHECK_THAT(parse_err(replace(ok, "memory_mb: 1024", "memory_mb: 1e12")), Catch::Contains("memory_mb"));
  CHECK_THAT(parse_err(replace(ok, "threads: 4", "threads: 0")), Catch::Contains("units.cpu.threads: 0 is not in [1, 1024]"));
  CHECK_THAT(parse_err(replace(ok, "activation_bits: 16", "activation_bits: 12")), Catch::Contains("units.npu.activation_bits: 12"));
  CHECK_THAT(parse_err(replace(ok, "weight_bits: 8", "weight_bits: 2")), Catch::Contains("units.npu.weight_bits: 2"));
  CHECK_THAT(parse_err(replace(ok, "ops: [RMSNorm, Linear", "ops: [Embedding, RMSNorm, Linear")),
             Catch::Contains("Embedding") && Catch::Contains("npu"));
  CHECK_THAT(parse_err(replace(ok, "ops: [RMSNorm, Linear", "ops: [Softmax, Linear")), Catch::Contains("unknown op 'Softmax'"));
  CHECK_THAT(parse_err(replace(ok, "weights: [int8, int4]", "weights: [int8, fp8]")), Catch::Contains("unknown weight precision 'fp8'"));
  CHECK_THAT(parse_err(replace(ok, "api: arm64", "api: x86-64")), Catch::Contains("'neondot' kernels do not exist on x86-64"));
  CHECK_THAT(parse_err(replace(ok, "launch_us: 1\n    sources", "launch_us: -1\n    sources")), Catch::Contains("units.cpu.launch_us"));
  CHECK_THAT(parse_err(replace(ok, "ops: [Embedding, RMSNorm, Linear, Rotary, Attention, GatedFFN, Add]",
                               "ops: [Embedding, RMSNorm, Linear]")),
             Catch::Contains("the cpu must run every op"));
  CHECK_THAT(parse_err(soc_yaml(20000, 10, "", "placement:\n  prefill: gpu\n")),
             Catch::Contains("placement.prefill: names the gpu, which this profile does not have"));
  CHECK_THAT(parse_err(replace(ok, "sources: [test]\n  npu", "sources: []\n  npu")), Catch::Contains("units.cpu.sources: empty"));
  CHECK_THAT(parse_err(replace(ok, "kerf_profile: 1", "kerf_profile: 2")), Catch::Contains("kerf_profile: 2"));
  CHECK_THAT(parse_err(replace(ok, "gops: 100", "gops: [1, 2]")), Catch::Contains("units.cpu.gops: has the wrong type"));
  CHECK_THAT(parse_err(replace(ok, "units:", "units: [")), Catch::Contains("YAML syntax error at line"));
  auto named = parse_profile(ok, "other.yaml", "other");
  REQUIRE_FALSE(named.ok());
  CHECK_THAT(named.status().message(), Catch::Contains("'test-soc' differs from the file name 'other'"));
}

TEST_CASE("targets: placement on a cpu-only profile is all cpu without transfers", "[targets][placement]") {
  const Program prog = llama_program(2);
  auto pl = place(prog, *load_profile("x86-64-avx2"), PlaceOptions{});
  REQUIRE(pl.ok());
  for (const auto& o : pl->ops) {
    CHECK(o.unit[0] == "cpu");
    CHECK(o.unit[1] == "cpu");
  }
  CHECK(pl->transfers[0].empty());
  CHECK(pl->transfers[1].empty());
  CHECK(pl->total_us[1] > pl->total_us[0]);  // a 128-token prefill costs more than one decode step
}

TEST_CASE("targets: a fast npu with cheap handoffs takes every op it supports; Embedding stays on the cpu", "[targets][placement]") {
  const Program prog = llama_program(2);
  const DeviceProfile p = parse_ok(soc_yaml(20000, 1));
  auto pl = place(prog, p, PlaceOptions{});
  REQUIRE(pl.ok());
  const OpPlacement& emb = op_named(prog, *pl, "tok_embeddings");
  CHECK(emb.unit[1] == "cpu");
  CHECK_THAT(emb.why[1], Catch::Contains("only the cpu runs it") && Catch::Contains("the npu does not run Embedding"));
  for (const char* n : {"layers.0.q", "layers.1.ffn", "output"}) {
    INFO(n);
    CHECK(op_named(prog, *pl, n).unit[1] == "npu");
    CHECK_THAT(op_named(prog, *pl, n).why[1], Catch::StartsWith("cost: npu"));
  }
  CHECK(op_named(prog, *pl, "layers.0.attn").unit[1] == "npu");
  CHECK(op_named(prog, *pl, "layers.0.attn").unit[0] == "npu");
  // one handoff in (the embedding output), one out (the logits) per phase
  REQUIRE(pl->transfers[1].size() == 2);
  CHECK(pl->transfers[1][0].from == "cpu");
  CHECK(pl->transfers[1][0].to == "npu");
  CHECK(pl->transfers[1][1].to == "cpu");
  CHECK(pl->uses("npu"));
}

TEST_CASE("targets: expensive handoffs keep a small model on the cpu", "[targets][placement]") {
  const Program prog = llama_program(2, 64, 128, 512);
  const DeviceProfile p = parse_ok(soc_yaml(20000, 5000));
  auto pl = place(prog, p, PlaceOptions{});
  REQUIRE(pl.ok());
  for (size_t i = 0; i < prog.ops.size(); ++i) {
    INFO(prog.ops[i].name);
    CHECK(pl->ops[i].unit[0] == "cpu");
    CHECK(pl->ops[i].unit[1] == "cpu");
  }
  CHECK(pl->kv_handoff_us[0] == 0);
}

TEST_CASE("targets: pins place ops; an impossible pin is an error under strict and a note otherwise", "[targets][placement]") {
  const Program prog = llama_program(2);
  const DeviceProfile p = parse_ok(soc_yaml(20000, 5000));  // the cost model alone keeps everything on the cpu
  PlaceOptions o;
  o.pins = {{"layers.1.ffn", "npu"}};
  auto pl = place(prog, p, o);
  REQUIRE(pl.ok());
  CHECK(op_named(prog, *pl, "layers.1.ffn").unit[0] == "npu");
  CHECK(op_named(prog, *pl, "layers.1.ffn").unit[1] == "npu");
  CHECK_THAT(op_named(prog, *pl, "layers.1.ffn").why[0], Catch::Contains("pinned by 'layers.1.ffn=npu'"));
  // once the pin pays for the two handoffs, the cost model may move neighbours along (one handoff in,
  // one out either way), but never what the npu cannot run
  CHECK(op_named(prog, *pl, "tok_embeddings").unit[0] == "cpu");
  CHECK(pl->transfers[0].size() >= 2);

  o.pins = {{"tok_*", "npu"}};
  o.strict = true;
  auto strict = place(prog, p, o);
  REQUIRE_FALSE(strict.ok());
  CHECK(strict.status().code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(strict.status().message(), Catch::Contains("op 'tok_embeddings' (Embedding) is pinned to the npu by 'tok_*=npu'") &&
                                            Catch::Contains("the npu does not run Embedding"));
  o.strict = false;
  auto lax = place(prog, p, o);
  REQUIRE(lax.ok());
  CHECK(op_named(prog, *lax, "tok_embeddings").unit[0] == "cpu");
  REQUIRE(lax->notes.size() == 1);
  CHECK_THAT(lax->notes[0], Catch::Contains("placed by cost instead"));

  o.pins = {{"*", "gpu"}};
  auto nogpu = place(prog, p, o);
  REQUIRE_FALSE(nogpu.ok());
  CHECK_THAT(nogpu.status().message(), Catch::Contains("profile test-soc has no gpu"));
  o.pins = {{"*", "tpu"}};
  CHECK_FALSE(place(prog, p, o).ok());
}

TEST_CASE("targets: a profile policy puts every op the unit supports there for that phase", "[targets][placement]") {
  const Program prog = llama_program(2);
  const DeviceProfile p = parse_ok(soc_yaml(20000, 5000, "", "placement:\n  prefill: npu\n  decode: cpu\n"));
  auto pl = place(prog, p, PlaceOptions{});
  REQUIRE(pl.ok());
  CHECK(op_named(prog, *pl, "layers.0.q").unit[1] == "npu");
  CHECK(op_named(prog, *pl, "layers.0.q").unit[0] == "cpu");
  CHECK_THAT(op_named(prog, *pl, "layers.0.q").why[1], Catch::Contains("profile placement.prefill = npu"));
  CHECK(op_named(prog, *pl, "tok_embeddings").unit[1] == "cpu");
  // Attention follows the policies too: prefill's on the npu, decode's on the cpu, and the KV cache
  // rows each phase appends reach the other when it next runs (priced in the modelled totals)
  CHECK(op_named(prog, *pl, "layers.0.attn").unit[1] == "npu");
  CHECK(op_named(prog, *pl, "layers.0.attn").unit[0] == "cpu");
  CHECK_THAT(op_named(prog, *pl, "layers.0.attn").why[1], Catch::Contains("KV cache rows are handed to the cpu when it next runs a decode step"));
  CHECK_THAT(op_named(prog, *pl, "layers.0.attn").why[0], Catch::Contains("KV cache rows are handed to the npu when it next runs a prefill"));
  CHECK(pl->kv_handoff_us[1] > 0);
  CHECK(pl->kv_handoff_us[0] > 0);
}

TEST_CASE("targets: the roofline cost of a decode step follows the weight bytes", "[targets][placement]") {
  const Program prog = llama_program(1);
  const DeviceProfile p = parse_ok(soc_yaml());
  size_t q = 0, ffn = 0;
  for (size_t i = 0; i < prog.ops.size(); ++i) {
    if (prog.ops[i].name == "layers.0.q") q = i;
    if (prog.ops[i].name == "layers.0.ffn") ffn = i;
  }
  // decode is bandwidth-bound on the cpu: cost = launch + bytes / bandwidth
  const double cq = op_cost_us(prog, q, p.cpu, false, 1, 256);
  const double bytes_q = prog.ops[q].weight_bytes + 4.0 * (256 + 256);
  CHECK(cq == Approx(1.0 + bytes_q / 20e3).epsilon(1e-9));
  CHECK(op_cost_us(prog, ffn, p.cpu, false, 1, 256) > 2.5 * cq);
  // the npu reads its 8-bit per-channel copy: 2x the 4-bit cpu weights
  const double nq = op_cost_us(prog, q, p.npu, true, 1, 256);
  CHECK(nq == Approx(1.0 + (256.0 * 256 + 2 * 256 + 2.0 * (256 + 256)) / 20e3).epsilon(1e-9));
}

TEST_CASE("targets: npu weights are per-channel symmetric ints with positive f16 scales", "[targets][npu]") {
  const int64_t rows = 3, cols = 40;
  std::vector<float> w(size_t(rows * cols));
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * float(i)) * (1.0f + float(i / cols));
  w[5] = 0;
  for (int bits : {8, 4}) {
    auto t = quantize_npu_weight("w", w.data(), rows, cols, bits);
    REQUIRE(t.ok());
    CHECK(t->dtype == fmt::DType::kQSym);
    CHECK(t->group_size == uint32_t(cols));
    CHECK(fmt::qflags_bits(t->flags) == uint32_t(bits));
    const uint64_t rb = fmt::qcode_row_bytes(fmt::DType::kQSym, cols, t->flags);
    REQUIRE(t->payload.size() == rb * rows + 2 * rows);
    const int qmax = (1 << (bits - 1)) - 1;
    double worst = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const uint16_t sh = uint16_t(t->payload[rb * rows + 2 * r] | (t->payload[rb * rows + 2 * r + 1] << 8));
      const float s = fmt::f16_to_f32(sh);
      CHECK(s > 0);
      float amax = 0;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[size_t(r * cols + c)]));
      for (int64_t c = 0; c < cols; ++c) {
        uint32_t u = 0;
        for (int k = 0; k < bits; ++k) {
          const uint64_t bit = uint64_t(c) * bits + k;
          u |= uint32_t((t->payload[rb * r + bit / 8] >> (bit % 8)) & 1u) << k;
        }
        const int q = int(u) - (1 << (bits - 1));
        CHECK(q >= -qmax);  // restricted range: -2^(b-1) never used
        CHECK(q <= qmax);
        worst = std::max(worst, double(std::fabs(w[size_t(r * cols + c)] - s * float(q))) / amax);
      }
    }
    CHECK(worst <= (bits == 8 ? 0.01 : 0.2));  // at most ~a step of (clip ratio >= 0.8) / qmax
  }
  std::vector<float> bad(w);
  bad[41] = NAN;
  auto e = quantize_npu_weight("w", bad.data(), rows, cols, 8);
  REQUIRE_FALSE(e.ok());
  CHECK_THAT(e.status().message(), Catch::Contains("row 1, col 1 is not finite"));
  CHECK_FALSE(quantize_npu_weight("w", w.data(), rows, cols, 3).ok());
}

// ------------------------------------------------------------------ end to end on stories260K

#include "compiler/pipeline/compile.h"
#include "compiler/pipeline/eval.h"
#include "kerf/kerf.h"
#include "support.h"

TEST_CASE("targets: one compile writes a package per device; each runs with its placement and is scored",
          "[targets][e2e]") {
  kerf::test::TempDir dir("targets_e2e");
  pipeline::CompileOptions o;
  o.model_path = std::string(KERF_SOURCE_DIR) + "/examples/stories260K/stories260K.fp16.onnx";
  o.output_path = dir.file("pk");
  o.target = "host,x86-64-avx2,arm64-neon-dotprod,snapdragon-8-gen3,dimensity-9300";
  o.calib_path = std::string(KERF_SHARED_DIR) + "/text/tinystories_valid_800.txt";
  o.verify_lift = false;
  auto r = pipeline::compile(o);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  REQUIRE(r->targets.size() == 5);
  std::map<std::string, const pipeline::TargetResult*> by;
  for (const auto& t : r->targets) {
    by[t.name] = &t;
    INFO(t.name);
    CHECK(std::filesystem::exists(dir.file("pk/" + t.name + ".kerf")));
    CHECK(std::filesystem::exists(dir.file("pk/" + t.name + ".manifest.json")));
    CHECK(t.bytes == std::filesystem::file_size(dir.file("pk/" + t.name + ".kerf")));
  }
  // cpu-only profiles: no placement beyond the cpu, no transfers
  for (const char* n : {"host", "x86-64-avx2", "arm64-neon-dotprod"}) {
    CHECK_FALSE(by[n]->placement.uses("gpu"));
    CHECK_FALSE(by[n]->placement.uses("npu"));
    CHECK(by[n]->layout == "tiled4");
  }
  CHECK(by["snapdragon-8-gen3"]->placement.uses("npu"));
  CHECK(by["dimensity-9300"]->placement.uses("gpu"));
  // the SoC packages record each op's units and why; the loader and the report read them back
  for (const char* n : {"snapdragon-8-gen3", "dimensity-9300"}) {
    INFO(n);
    pipeline::EvalOptions e;
    e.artifact_path = dir.file(std::string("pk/") + n + ".kerf");
    e.reference_path = o.model_path;
    e.text_path = o.calib_path;
    e.stories = {400, 410};
    auto rep = pipeline::evaluate(e);
    INFO(rep.status().to_string());
#ifndef KERF_HAVE_OPENCL
    if (std::string(n) == "dimensity-9300") {  // its GPU ops need OpenCL: refused, not run elsewhere
      REQUIRE_FALSE(rep.ok());
      CHECK_THAT(rep.status().message(), Catch::Contains("placed on the gpu"));
      continue;
    }
#endif
    REQUIRE(rep.ok());
    size_t accel = 0;
    for (const auto& p : rep->ops) {
      CHECK_THAT(p.reason, Catch::StartsWith("placement: prefill "));
      accel += p.unit != "cpu" || p.unit_prefill != "cpu";
    }
    CHECK(accel >= 50);  // 63 ops; the accelerator takes all but the embedding (and the decode tail)
    // Same weights on the CPU (float): the accelerator's own arithmetic costs little here.
    e.cpu_only = true;
    auto cpu = pipeline::evaluate(e);
    REQUIRE(cpu.ok());
    if (std::string(n) == "snapdragon-8-gen3") {
      // A16W8 integer path vs the same per-channel int8 weights in float (measured: 5.3 vs 5.3, KL ~7e-4)
      CHECK(rep->kl < 0.005);
      CHECK(std::fabs(rep->ppl / cpu->ppl - 1) < 0.01);
    } else {
      // f32 OpenCL vs f32 CPU: the same model up to summation order
      CHECK(std::fabs(rep->ppl / cpu->ppl - 1) < 1e-4);
      CHECK(std::fabs(rep->kl - cpu->kl) < 1e-4);
    }
  }
  // Shared work: one quantization for every package; the cpu packages hold the same weights.
  CHECK(r->quant.bpw == Approx(5.435).margin(0.001));
  CHECK(by["host"]->bytes == by["x86-64-avx2"]->bytes);
}

TEST_CASE("targets: an npu op overlaps independent cpu ops; results are the same as run in order",
          "[targets][e2e][overlap]") {
  kerf::test::TempDir dir("targets_overlap");
  pipeline::CompileOptions o;
  o.model_path = std::string(KERF_SOURCE_DIR) + "/examples/stories260K/stories260K.fp16.onnx";
  o.output_path = dir.file("sd.kerf");
  o.target = "snapdragon-8-gen3";
  o.calib_path = std::string(KERF_SHARED_DIR) + "/text/tinystories_valid_800.txt";
  o.verify_lift = false;
  // q on the npu while k and v run on the cpu from the same (cpu) norm output
  o.place_pins = {{"layers.*.attn_norm", "cpu"}, {"layers.*.k", "cpu"}, {"layers.*.v", "cpu"}, {"layers.*.q", "npu"}};
  auto r = pipeline::compile(o);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  const std::vector<int32_t> toks = {1, 403, 261, 378, 285, 30, 395, 11, 259, 1009 % 512};
  auto logits = [&](bool sync) {
    if (sync) setenv("KERF_SYNC_UNITS", "1", 1);
    else unsetenv("KERF_SYNC_UNITS");
    kerf_model* m = nullptr;
    char err[512];
    REQUIRE(kerf_model_open(o.output_path.c_str(), 0, &m, err, sizeof err) == KERF_OK);
    kerf_session* s = nullptr;
    REQUIRE(kerf_session_create_ex(m, 0, 0, &s, err, sizeof err) == KERF_OK);
    std::vector<float> out(toks.size() * 512), one(512);
    REQUIRE(kerf_session_eval(s, toks.data(), int(toks.size()), out.data(), 1) == KERF_OK);
    for (int i = 0; i < 8; ++i) {  // decode steps
      const int32_t t = int32_t(7 + 31 * i);
      REQUIRE(kerf_session_eval(s, &t, 1, one.data(), 0) == KERF_OK);
      out.insert(out.end(), one.begin(), one.end());
    }
    kerf_unit_stats st;
    REQUIRE(kerf_session_unit_stats(s, KERF_UNIT_NPU, &st) == KERF_OK);
    CHECK(st.ops > 0);
    kerf_session_free(s);
    kerf_model_close(m);
    unsetenv("KERF_SYNC_UNITS");
    return out;
  };
  const std::vector<float> a = logits(false), b = logits(true);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == b[i]);
}

TEST_CASE("targets: --target takes a profile file; an invalid one stops the compile before any work", "[targets]") {
  kerf::test::TempDir dir("targets_file");
  const std::string good = dir.file("test-soc.yaml"), bad = dir.file("bad.yaml");
  kerf::test::write_bytes(good, soc_yaml());
  kerf::test::write_bytes(bad, replace(soc_yaml(), "name: test-soc", "name: bad\nfrequency_ghz: 3"));
  auto p = load_profile(good);
  REQUIRE(p.ok());
  CHECK(p->name == "test-soc");
  pipeline::CompileOptions o;
  o.model_path = std::string(KERF_SOURCE_DIR) + "/examples/stories260K/stories260K.fp16.onnx";
  o.output_path = dir.file("out.kerf");
  o.target = "host," + bad;
  auto r = pipeline::compile(o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kBadInput);
  CHECK_THAT(r.status().message(), Catch::Contains(bad) && Catch::Contains("frequency_ghz: unknown field"));
  CHECK_FALSE(std::filesystem::exists(o.output_path));
  o.target = "host,host";
  auto twice = pipeline::compile(o);
  REQUIRE_FALSE(twice.ok());
  CHECK_THAT(twice.status().message(), Catch::Contains("host is listed twice"));
  // an npu target needs calibration text for its static scales
  o.target = good;
  auto nocal = pipeline::compile(o);
  REQUIRE_FALSE(nocal.ok());
  CHECK_THAT(nocal.status().message(), Catch::Contains("places ops on its npu") && Catch::Contains("--calib"));
  CHECK_FALSE(std::filesystem::exists(o.output_path));
}
