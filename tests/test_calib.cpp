// Calibrated quantization on the real model: layer-by-layer GPTQ vs RTN output error, AWQ folding
// keeps the FP function, the mixed-precision allocator (budget met exactly, overrides respected),
// the knapsack solver against brute force, recipes (every example parses; errors are precise), and
// the INT4 GPTQ recipe end to end against the perplexity bound.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "compiler/pipeline/compile.h"
#include "compiler/pipeline/eval.h"
#include "compiler/pipeline/model_io.h"
#include "compiler/pipeline/recipe_file.h"
#include "compiler/pipeline/text.h"
#include "distill/qad.h"
#include "distill/reference.h"
#include "quant/bpw.h"
#include "quant/calib/calibrate.h"
#include "quant/calib/mixed.h"
#include "support.h"

using namespace kerf;
using namespace kerf::test;

namespace {

quant::TensorChoice choice(const std::string& spec, quant::Method m, quant::ParamRule r = quant::ParamRule::kSearch) {
  quant::TensorChoice c;
  auto q = quant::parse_qspec(spec);
  REQUIRE(q.ok());
  c.spec = *q;
  c.method = m;
  c.rule = r;
  return c;
}

std::map<std::string, quant::TensorChoice> uniform(const ir::Graph& g, const quant::TensorChoice& c) {
  auto uses = quant::enumerate_weights(g);
  REQUIRE(uses.ok());
  std::map<std::string, quant::TensorChoice> m;
  for (const auto& u : *uses) m[u.tensor] = c;
  return m;
}

}  // namespace

TEST_CASE("tokenize_text follows EVAL.md: BOS first, same ids as the reference prompt", "[calib]") {
  auto tok = pipeline::read_llama2c_tokenizer(kTok, 512);
  REQUIRE(tok.ok());
  auto ids = pipeline::tokenize_text(*tok, 512, "Once upon a time, there was a little girl named Lily.");
  REQUIRE(ids.ok());
  REQUIRE(ids->size() > 3);
  CHECK((*ids)[0] == 1);
  // stories260K.ref.json holds these tokens; the first pieces after BOS are "Once" " upon".
  CHECK(ids->size() < 30);
}

TEST_CASE("solve_mckp matches brute force and never exceeds the budget", "[calib][mixed]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const int n = 2 + trial % 4, k = 2 + trial % 3;
    std::vector<std::vector<quant::KnapsackItem>> items(static_cast<size_t>(n));
    for (auto& it : items)
      for (int c = 0; c < k; ++c) {
        quant::KnapsackItem x;
        x.bits = 100 + static_cast<int64_t>(rng() % 900);
        x.cost = static_cast<double>(rng() % 1000) / 100.0;
        it.push_back(x);
      }
    const int64_t budget = 300 * n + static_cast<int64_t>(rng() % 400);
    // brute force
    double best = 1e30;
    std::vector<int> idx(static_cast<size_t>(n), 0);
    bool feasible = false;
    for (;;) {
      int64_t b = 0;
      double c = 0;
      for (int i = 0; i < n; ++i) {
        b += items[static_cast<size_t>(i)][static_cast<size_t>(idx[static_cast<size_t>(i)])].bits;
        c += items[static_cast<size_t>(i)][static_cast<size_t>(idx[static_cast<size_t>(i)])].cost;
      }
      if (b <= budget) {
        feasible = true;
        best = std::min(best, c);
      }
      int i = 0;
      while (i < n && ++idx[static_cast<size_t>(i)] == k) idx[static_cast<size_t>(i++)] = 0;
      if (i == n) break;
    }
    auto r = quant::solve_mckp(items, budget);
    if (!feasible) {
      CHECK_FALSE(r.ok());
      continue;
    }
    REQUIRE(r.ok());
    int64_t b = 0;
    double c = 0;
    for (int i = 0; i < n; ++i) {
      b += items[static_cast<size_t>(i)][static_cast<size_t>((*r)[static_cast<size_t>(i)])].bits;
      c += items[static_cast<size_t>(i)][static_cast<size_t>((*r)[static_cast<size_t>(i)])].cost;
    }
    CHECK(b <= budget);
    CHECK(c == Approx(best).margin(1e-9));  // budgets < 20000 bits: unit 1, exact
  }
}

TEST_CASE("recipes: every example parses; errors name the key and line", "[calib][recipe]") {
  const std::string dir = std::string(KERF_SOURCE_DIR) + "/examples/recipes";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    auto r = pipeline::parse_recipe_file(e.path().string());
    INFO(e.path().string() << ": " << r.status().to_string());
    CHECK(r.ok());
    ++n;
  }
  CHECK(n >= 4);
  auto bad = [](const std::string& text) {
    auto r = pipeline::parse_recipe_text(text, "r.yaml");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == ErrorCode::kBadInput);
    return r.status().message();
  };
  CHECK_THAT(bad("default: {precision: int9_sym}"), Catch::Contains("default.precision"));
  CHECK_THAT(bad("defaults: {precision: int4_sym}"), Catch::Contains("defaults") && Catch::Contains("unknown key"));
  CHECK_THAT(bad("default: {method: magic}"), Catch::Contains("default.method"));
  CHECK_THAT(bad("tensors:\n  - precision: int4_sym\n"), Catch::Contains("tensors[0]") && Catch::Contains("match"));
  CHECK_THAT(bad("mixed: {candidates: [int4_sym]}"), Catch::Contains("bpw"));
  CHECK_THAT(bad("mixed: {bpw: 4, candidates: [f16]}"), Catch::Contains("not a quantized precision"));
  CHECK_THAT(bad("default: {precision: int4_sym, rule: twn}"), Catch::Contains("twn"));
  CHECK_THAT(bad("name: [unclosed\n"), Catch::Contains("line"));
  CHECK_THAT(bad("calibration: {stories: \"9:3\"}"), Catch::Contains("calibration.stories"));
  CHECK_THAT(bad("qad: {steps: 10, teacher_samples: -1}"), Catch::Contains("qad.teacher_samples"));
  CHECK_THAT(bad("qad: {steps: 10, hidden_weight: -0.5}"), Catch::Contains("qad.hidden_weight"));
  CHECK_THAT(bad("qad: {steps: 10, teacher_sample: 5}"), Catch::Contains("teacher_sample") && Catch::Contains("unknown key"));
  CHECK_THAT(bad("prune: {keep_ffn: 0.5, allocation: greedy}"), Catch::Contains("prune.allocation") && Catch::Contains("greedy"));
  {
    auto r = pipeline::parse_recipe_text("prune: {keep_ffn: 0.5, allocation: measured}\n", "p.yaml");
    REQUIRE(r.ok());
    CHECK(r->prune_alloc == "measured");
  }
  {
    // qad: and distill: keep their own teacher-sample counts.
    auto r = pipeline::parse_recipe_text("qad: {steps: 10, teacher_samples: 300, hidden_weight: 0.5}\ndistill: {steps: 20, teacher_samples: 7}\n", "q.yaml");
    INFO(r.status().to_string());
    REQUIRE(r.ok());
    CHECK(r->qad_teacher_samples == 300);
    CHECK(r->qad_options.hidden_weight == 0.5);
    CHECK(r->teacher_samples == 7);
    CHECK(r->distill_options.steps == 20);
  }

  // Roles.
  quant::WeightUse emb{"model.embed.weight", "embed", true, true, 512, 64};
  quant::WeightUse wq{"model.layers.0.wq.weight", "layers.0.wq", true, false, 64, 64};
  quant::WeightUse w2{"model.layers.3.w2.weight", "layers.3.ffn", true, false, 64, 172};
  CHECK(pipeline::recipe_matches("embedding", emb));
  CHECK(pipeline::recipe_matches("classifier", emb));
  CHECK_FALSE(pipeline::recipe_matches("linear", emb));
  CHECK(pipeline::recipe_matches("attention", wq));
  CHECK_FALSE(pipeline::recipe_matches("attention", w2));
  CHECK(pipeline::recipe_matches("ffn", w2));
  CHECK(pipeline::recipe_matches("model.layers.3.*", w2));
  CHECK_FALSE(pipeline::recipe_matches("model.layers.3.*", wq));
}

TEST_CASE("calibrated GPTQ lowers every layer's output error vs RTN on the calibration inputs", "[calib][gptq]") {
  const auto calib = stories(0, 24, 256);
  ir::Graph g1 = lifted(), g2 = lifted();
  quant::CalibOptions co;
  co.threads = 1;
  auto rtn = quant::quantize_calibrated(g1, uniform(g1, choice("int3_sym:g32", quant::Method::kRtn, quant::ParamRule::kRtn)), calib, co);
  REQUIRE(rtn.ok());
  auto gptq = quant::quantize_calibrated(g2, uniform(g2, choice("int3_sym:g32", quant::Method::kGptq)), calib, co);
  INFO(gptq.status().to_string());
  REQUIRE(gptq.ok());
  REQUIRE(rtn->plan.size() == 36);
  REQUIRE(gptq->plan.size() == 36);
  double sum_rtn = 0, sum_gptq = 0;
  for (size_t i = 0; i < rtn->plan.size(); ++i) {
    const auto& a = rtn->plan[i];
    const auto& b = gptq->plan[i];
    REQUIRE(a.name == b.name);
    CHECK(a.output_error < 0);  // plain RTN needs no calibration: no statistics, no output error
    CHECK(b.output_error >= 0);
    CHECK(b.precision == "int3_sym:g32");
    CHECK(b.method == "gptq/search");
    sum_gptq += b.output_error;
  }
  // Same precision, same bits.
  CHECK(rtn->bpw == Approx(gptq->bpw));
  // An RTN run with the imatrix search rule is calibrated too: its output errors are measured and
  // GPTQ beats it on (nearly) every tensor.
  ir::Graph g3 = lifted();
  auto srch = quant::quantize_calibrated(g3, uniform(g3, choice("int3_sym:g32", quant::Method::kRtn)), calib, co);
  REQUIRE(srch.ok());
  int wins = 0;
  for (size_t i = 0; i < srch->plan.size(); ++i) {
    REQUIRE(srch->plan[i].output_error >= 0);
    sum_rtn += srch->plan[i].output_error;
    if (gptq->plan[i].output_error < srch->plan[i].output_error) ++wins;
  }
  CHECK(wins >= 33);
  CHECK(sum_gptq < 0.8 * sum_rtn);
}

TEST_CASE("calibration is required when the recipe needs it, with a clear message", "[calib]") {
  ir::Graph g = lifted();
  quant::CalibOptions co;
  auto r = quant::quantize_calibrated(g, uniform(g, choice("int4_asym:g32", quant::Method::kGptq)), {}, co);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(r.status().message(), Catch::Contains("--calib"));
  // A missing choice is named.
  auto m = uniform(g, choice("int4_asym:g32", quant::Method::kRtn, quant::ParamRule::kRtn));
  m.erase("model.layers.2.wv.weight");
  auto r2 = quant::quantize_calibrated(g, m, {}, co);
  REQUIRE_FALSE(r2.ok());
  CHECK_THAT(r2.status().message(), Catch::Contains("model.layers.2.wv.weight"));
}

TEST_CASE("AWQ folding keeps the FP model's function (scales only, no quantization)", "[calib][awq]") {
  // awq with an 8-bit precision: the folded graph must compute (nearly) the same logits as the
  // original, since folding is an exact re-parameterisation and int8 error is small.
  const auto calib = stories(0, 8, 128);
  ir::Graph g = lifted();
  quant::CalibOptions co;
  co.threads = 1;
  co.awq_clip = false;
  auto ch = uniform(g, choice("int8_sym:g32", quant::Method::kAwq));
  auto r = quant::quantize_calibrated(g, ch, calib, co);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  int folded = 0;
  for (const auto& p : r->plan)
    if (p.note.find("folded into") != std::string::npos) ++folded;
  CHECK(folded >= 30);  // q/k/v, w1/w3 (norms), wo (v rows, GQA-tied), w2 (w3 rows) in every layer
  // The folded FP graph (before quantization): re-run the original and the folded-FP model.
  // g now holds folded weights for norms (f32) and the scaled matrices (f32, pre-quantization).
  distill::ReferenceOptions ro;
  ro.threads = 1;
  auto a = distill::ReferenceExecutor::create(lifted(), ro);
  auto b = distill::ReferenceExecutor::create(g, ro);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  const auto seq = stories(200, 201, 64)[0];
  auto la = a->forward_tokens(seq);
  auto lb = b->forward_tokens(seq);
  REQUIRE(la.ok());
  REQUIRE(lb.ok());
  double diff = 0, mx = 0;
  for (size_t i = 0; i < la->size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs((*la)[i] - (*lb)[i])));
    mx = std::max(mx, static_cast<double>(std::fabs((*la)[i])));
  }
  CHECK(diff < 1e-3 * mx);
}

TEST_CASE("mixed precision meets the bpw budget exactly and respects overrides", "[calib][mixed]") {
  const auto calib = stories(0, 8, 128);
  const auto sens = stories(8, 10, 96);
  quant::MixedOptions mo;
  mo.threads = 1;
  mo.rounds = 1;
  mo.candidates = {choice("int2_asym:g32:k6", quant::Method::kGptq), choice("int4_asym:g32:k6", quant::Method::kGptq),
                   choice("int8_sym:g32:k6", quant::Method::kGptq)};
  mo.fixed["model.embed.weight"] = choice("int8_sym:row", quant::Method::kRtn);
  for (double budget : {3.5, 4.8}) {
    mo.bpw = budget;
    auto r = quant::allocate_mixed(lifted(), calib, sens, mo);
    INFO(r.status().to_string());
    REQUIRE(r.ok());
    CHECK(r->weights == 259328);
    CHECK(r->choices.size() == 36);
    CHECK(quant::to_string(r->choices.at("model.embed.weight").spec) == "int8_sym:row");
    // Recount the bits from the choices.
    int64_t bits = 0;
    auto uses = quant::enumerate_weights(lifted());
    REQUIRE(uses.ok());
    for (const auto& u : *uses) bits += quant::spec_bits(r->choices.at(u.tensor).spec, u.rows, u.cols);
    CHECK(bits == r->total_bits);
    CHECK(bits <= r->budget_bits);
    // "Exactly": no single upgrade of the cheapest step would still fit (within one tensor's step).
    CHECK(r->bpw > budget - 0.12);
    CHECK(r->bpw <= budget);
    CHECK(r->sensitivity.size() == 35);
    for (const auto& [t, s] : r->sensitivity) {
      REQUIRE(s.size() == 3);
      CHECK(s[0] > s[2]);  // int2 hurts more than int8, for every tensor
    }
    CHECK_FALSE(r->measured_kl.empty());
  }
  // An impossible budget names the minimum.
  mo.bpw = 2.0;
  auto bad = quant::allocate_mixed(lifted(), calib, sens, mo);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("cannot be met"));
}

TEST_CASE("INT4 GPTQ recipe end to end: perplexity <= 5.61 at <= 5.44 bpw (issue 3 anchor)", "[calib][e2e][slow]") {
  pipeline::CompileOptions o;
  o.model_path = kModel;
  o.output_path = std::string(KERF_BINARY_DIR) + "/test_int4_gptq.kerf";
  o.recipe_path = std::string(KERF_SOURCE_DIR) + "/examples/recipes/int4-gptq.yaml";
  o.calib_path = kText;
  o.threads = 1;
  auto r = pipeline::compile(o);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  CHECK(r->quant.bpw == Approx(5.435).margin(0.001));
  CHECK(r->calib_hash != 0);
  pipeline::EvalOptions e;
  e.artifact_path = o.output_path;
  e.reference_path = kModel;
  e.text_path = kText;
  auto rep = pipeline::evaluate(e);
  REQUIRE(rep.ok());
  CHECK(rep->predicted_tokens == 152644);
  CHECK(rep->ppl_reference == Approx(5.3284).margin(0.002));
  CHECK(rep->ppl <= 5.61);
  CHECK(rep->kl < 0.06);
  CHECK(rep->top1 > 0.875);
  std::filesystem::remove(o.output_path);
}

TEST_CASE("quantization-aware distillation lowers the KL, and the emitted quantization is the trained forward",
          "[calib][qad]") {
  const bool learn = GENERATE(false, true);  // learned scales (LSQ) or the rule's per-step scales
  INFO("learn_scales " << learn);
  const auto train = stories(0, 40, 128);
  const auto val = stories(380, 384, 96);
  ir::Graph teacher = lifted();
  ir::Graph student = lifted();
  auto uses = quant::enumerate_weights(student);
  REQUIRE(uses.ok());
  std::map<std::string, std::pair<quant::QSpec, quant::ParamRule>> prec;
  std::map<std::string, quant::TensorChoice> choices;
  for (const auto& u : *uses) {
    const auto c = choice(u.embedding ? "int4_asym:g32:k6" : "int2_asym:g32:k6", quant::Method::kRtn, quant::ParamRule::kRtn);
    prec[u.tensor] = {c.spec, c.rule};
    choices[u.tensor] = c;
  }
  distill::QadOptions qo;
  qo.steps = 12;
  qo.eval_every = 6;
  qo.batch = 4;
  qo.seq_len = 128;
  qo.lr = 2e-3;
  qo.threads = 1;
  qo.learn_scales = learn;
  auto rep = distill::quantization_aware_distill(student, teacher, prec, train, val, qo);
  INFO(rep.status().to_string());
  REQUIRE(rep.ok());
  CHECK(rep->val_kl_initial > 0.5);             // INT2 everywhere: far from the teacher
  CHECK(rep->val_kl_best < 0.8 * rep->val_kl_initial);  // measured: ~0.5x after 12 steps
  CHECK(rep->log.size() == 3);
  CHECK(rep->params.size() == (learn ? uses->size() : 0u));
  if (learn) {
    // Every matrix's trained group parameters; they moved away from the rule's parameters of the
    // trained weights (else nothing was learned), and the compiler quantizes with them.
    size_t moved = 0, total = 0;
    for (const auto& u : *uses) {
      const auto& gp = rep->params.at(u.tensor);
      REQUIRE(static_cast<int64_t>(gp.size()) == u.rows * ((u.cols + 31) / 32));
      const auto& w = student.initializers.at(u.tensor);
      const std::vector<float> wf = w.to_f32();
      auto rule = quant::quantize_rtn_unpacked(wf.data(), u.rows, u.cols, choices[u.tensor].spec, nullptr, quant::ParamRule::kRtn);
      REQUIRE(rule.ok());
      for (size_t i = 0; i < gp.size(); ++i, ++total) moved += std::fabs(gp[i].scale - rule->params[i].scale) > 1e-3f * std::fabs(rule->params[i].scale);
      choices[u.tensor].params = gp;
    }
    CHECK(moved > total / 2);
  }

  // Quantize the trained weights as the compiler does (RTN, same rule) and run them: the KL on the
  // validation sequences must be the one the distillation reported for its fake-quantized forward.
  ir::Graph emitted = student;
  quant::CalibOptions co;
  co.threads = 1;
  auto q = quant::quantize_calibrated(emitted, choices, {}, co);
  REQUIRE(q.ok());
  for (const auto& [name, t] : q->tensors) {
    auto d = quant::dequantize(t);
    REQUIRE(d.ok());
    emitted.initializers[name] = ir::Tensor::from_f32({t.rows, t.cols}, *d);
  }
  distill::ReferenceOptions ro;
  ro.threads = 1;
  auto te = distill::ReferenceExecutor::create(teacher, ro);
  auto se = distill::ReferenceExecutor::create(emitted, ro);
  REQUIRE(te.ok());
  REQUIRE(se.ok());
  double kl = 0;
  int64_t n = 0;
  for (const auto& seq : val) {
    te->reset_cache();
    se->reset_cache();
    auto a = te->forward_tokens(seq);
    auto b = se->forward_tokens(seq);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    const size_t V = a->size() / seq.size();
    for (size_t t = 0; t < seq.size(); ++t) {
      double ma = -1e30, mb = -1e30, sa = 0, sb = 0;
      for (size_t v = 0; v < V; ++v) {
        ma = std::max(ma, static_cast<double>((*a)[t * V + v]));
        mb = std::max(mb, static_cast<double>((*b)[t * V + v]));
      }
      for (size_t v = 0; v < V; ++v) {
        sa += std::exp((*a)[t * V + v] - ma);
        sb += std::exp((*b)[t * V + v] - mb);
      }
      double k = 0;
      for (size_t v = 0; v < V; ++v) {
        const double la = (*a)[t * V + v] - ma - std::log(sa), lb = (*b)[t * V + v] - mb - std::log(sb);
        k += std::exp(la) * (la - lb);
      }
      kl += k;
      ++n;
    }
  }
  CHECK(kl / static_cast<double>(n) == Approx(rep->val_kl_best).epsilon(1e-3));
}

TEST_CASE("learned scales: LSQ straight-through gradients on hand cases; recipe keys", "[calib][qad]") {
  auto spec = [](const char* t) {
    auto s = quant::parse_qspec(t);
    REQUIRE(s.ok());
    return *s;
  };
  auto approx = [](const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) CHECK(a[i] == Approx(b[i]).margin(1e-6));
  };
  SECTION("int2_sym: x = w / s = 1.8, -0.4, 0.8, -2.6 in [-2, 1]") {
    const std::vector<float> w = {0.9f, -0.2f, 0.4f, -1.3f}, up = {1.f, 2.f, 3.f, 4.f};
    auto g = distill::lsq_gradients(w.data(), 1, 4, spec("int2_sym:g4"), {{0.5f, 0.f}}, up.data());
    REQUIRE(g.ok());
    approx(g->value, {0.5f, 0.f, 0.5f, -1.f});             // codes 1, 0, 1, -2
    approx(g->dw, {0.f, 2.f, 3.f, 0.f});                   // straight through inside the range only
    approx(g->ds, {1 * 1.f + 2 * 0.4f + 3 * 0.2f + 4 * -2.f});  // q outside, q - x inside: -5.6
    approx(g->dm, {0.f});
  }
  SECTION("int2_asym: x = (w - m) / s = 0.4, 2, 3.6, -1.2 in [0, 3]") {
    const std::vector<float> w = {0.1f, 0.5f, 0.9f, -0.3f}, up = {1.f, 1.f, 1.f, 1.f};
    auto g = distill::lsq_gradients(w.data(), 1, 4, spec("int2_asym:g4"), {{0.25f, 0.f}}, up.data());
    REQUIRE(g.ok());
    approx(g->value, {0.f, 0.5f, 0.75f, 0.f});  // codes 0, 2, 3, 0
    approx(g->dw, {1.f, 1.f, 0.f, 0.f});
    approx(g->ds, {-0.4f + 0.f + 3.f + 0.f});   // 2.6
    approx(g->dm, {2.f});                       // 1 per clamped weight (LSQ+)
  }
  SECTION("ternary and binary") {
    const std::vector<float> w = {0.3f, -0.1f, 0.5f, -0.9f}, up = {1.f, 1.f, 1.f, 1.f};
    auto t = distill::lsq_gradients(w.data(), 1, 4, spec("ternary:g4"), {{0.375f, 0.f}}, up.data());
    REQUIRE(t.ok());
    approx(t->value, {0.375f, 0.f, 0.375f, -0.375f});  // x = 0.8, -0.267, 1.333, -2.4: codes 1, 0, 1, -1
    approx(t->dw, {1.f, 1.f, 0.f, 0.f});
    approx(t->ds, {(1 - 0.8f) + 0.1f / 0.375f + 1.f - 1.f});  // 0.4667
    auto b = distill::lsq_gradients(w.data(), 1, 4, spec("binary:g4"), {{0.25f, 0.f}}, up.data());
    REQUIRE(b.ok());
    approx(b->value, {0.25f, -0.25f, 0.25f, -0.25f});
    approx(b->dw, {1.f, 1.f, 1.f, 1.f});  // sign: straight through everywhere
    approx(b->ds, {0.f});                 // sum of the codes
  }
  SECTION("errors; recipe keys") {
    const std::vector<float> w(8, 0.1f);
    CHECK(distill::lsq_gradients(w.data(), 1, 8, spec("int2_sym:g4"), {{0.5f, 0.f}}, w.data()).status().code() ==
          ErrorCode::kInvalidArgument);
    CHECK_FALSE(distill::lsq_gradients(w.data(), 1, 8, spec("f16"), {}, w.data()).ok());
    auto r = pipeline::parse_recipe_text("qad: {steps: 2, learn_scales: true, scale_lr: 0.5}\n", "l.yaml");
    REQUIRE(r.ok());
    CHECK(r->qad_options.learn_scales);
    CHECK(r->qad_options.scale_lr == 0.5);
    auto bad = pipeline::parse_recipe_text("qad: {steps: 2, learn_scales: true, scale_lr: 0}\n", "l.yaml");
    REQUIRE_FALSE(bad.ok());
    CHECK_THAT(bad.status().message(), Catch::Contains("qad.scale_lr"));
    auto typo = pipeline::parse_recipe_text("qad: {steps: 2, learn_scales: maybe}\n", "l.yaml");
    REQUIRE_FALSE(typo.ok());
    CHECK_THAT(typo.status().message(), Catch::Contains("qad.learn_scales"));
  }
}

TEST_CASE("qad init: gptq starts training from the post-training GPTQ result", "[calib][qad][e2e]") {
  const auto dir = std::filesystem::temp_directory_path() / "kerf_test_qad_init";
  std::filesystem::create_directories(dir);
  // The validation KL before training, from the set-up line "... val KL X before training".
  auto initial_kl = [&](const std::string& init) {
    const auto recipe = dir / (init + ".yaml");
    {
      std::ofstream f(recipe);
      f << "calibration: {stories: \"0:16\"}\n"
           "default: {precision: int3_asym:g32, method: gptq, rule: rtn}\n"
           "tensors:\n  - match: embedding\n    precision: int8_sym:row\n"
           "qad: {steps: 1, batch: 2, seq_len: 64, stories: \"0:12\", val_fraction: 0.25, eval_every: 1, init: "
        << init << "}\n";
    }
    pipeline::CompileOptions o;
    o.model_path = kModel;
    o.output_path = (dir / (init + ".kerf")).string();
    o.calib_path = kText;
    o.recipe_path = recipe.string();
    o.threads = 1;
    auto s = pipeline::compile(o);
    INFO(s.status().to_string());
    REQUIRE(s.ok());
    REQUIRE_FALSE(s->qad_log.empty());
    const std::string& first = s->qad_log.front();
    const auto at = first.find("val KL ");
    REQUIRE(at != std::string::npos);
    return std::stod(first.substr(at + 7));
  };
  const double kl_fp = initial_kl("fp");
  const double kl_gptq = initial_kl("gptq");
  // INT3 g32: the RTN forward of the FP weights is much further from the teacher than the GPTQ result
  // (which also shows the teacher stayed the FP model: a teacher equal to the student would give ~0).
  CHECK(kl_gptq < 0.8 * kl_fp);
  CHECK(kl_gptq > 0.01);

  // Refused: an unknown init.
  auto bad = pipeline::parse_recipe_text("qad: {steps: 2, init: awq}\n", "b.yaml");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("qad.init") && Catch::Contains("awq"));
  auto fine = pipeline::parse_recipe_text("qad: {steps: 2, init: gptq}\n", "g.yaml");
  REQUIRE(fine.ok());
  CHECK(fine->qad_init_gptq);
  std::filesystem::remove_all(dir);
}

TEST_CASE("kerf compile: recipes needing calibration say so; --strict rejects an override that matches nothing",
          "[calib][recipe]") {
  pipeline::CompileOptions o;
  o.model_path = kModel;
  o.output_path = std::string(KERF_BINARY_DIR) + "/test_strict.kerf";
  o.recipe_path = std::string(KERF_SOURCE_DIR) + "/examples/recipes/int4-gptq.yaml";
  auto r = pipeline::compile(o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(r.status().message(), Catch::Contains("--calib"));
  CHECK_FALSE(std::filesystem::exists(o.output_path));

  const std::string rp = std::string(KERF_BINARY_DIR) + "/test_strict_recipe.yaml";
  {
    std::ofstream f(rp);
    f << "default: {precision: int4_asym:g32, method: rtn, rule: rtn}\n"
         "tensors:\n  - {match: \"model.nonexistent.*\", precision: int8_sym:row}\n";
  }
  o.recipe_path = rp;
  o.strict = true;
  auto s = pipeline::compile(o);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(s.status().message(), Catch::Contains("--strict") && Catch::Contains("model.nonexistent.*"));
  CHECK_FALSE(std::filesystem::exists(o.output_path));
  o.strict = false;  // without --strict it compiles (RTN needs no calibration)
  auto ok = pipeline::compile(o);
  INFO(ok.status().to_string());
  REQUIRE(ok.ok());
  CHECK(ok->quant.plan.size() == 36);
  std::filesystem::remove(o.output_path);
  std::filesystem::remove(rp);
}
