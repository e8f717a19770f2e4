// Knowledge distillation of a pruned student (distill/qad.h with every precision plain f32) on the
// real model: the KD loss goes down and the run is deterministic for a seed; a run resumed from a
// mid-run checkpoint equals the uninterrupted run bit for bit (and a checkpoint of another student
// or a corrupt one is refused); two data-parallel processes (c10d + Gloo, the test spawns two copies
// of this binary running the hidden "dp distill worker" test case) compute the gradients and
// weights of one process with the combined batch.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distill/checkpoint.h"
#include "distill/dist.h"
#include "distill/qad.h"
#include "prune/prune.h"
#include "quant/qspec.h"
#include "quant/recipe.h"
#include "support.h"

using namespace kerf;
using namespace kerf::test;
namespace fs = std::filesystem;

namespace {
namespace kd_test {

using Precision = std::map<std::string, std::pair<quant::QSpec, quant::ParamRule>>;
using Seqs = std::vector<std::vector<int64_t>>;
using Weights = std::map<std::string, std::vector<float>>;

/// The unpruned lifted graph (the teacher), loaded once.
const ir::Graph& teacher_graph() { return lifted(); }

/// Every block keeps KV groups {0,1,2} (query heads 0..5) and the first `ffn_keep` of its 172 FFN channels.
ir::Graph pruned_student(int64_t ffn_keep = 86) {
  auto m = prune::analyze(teacher_graph());
  INFO(m.status().to_string());
  REQUIRE(m.ok());
  prune::Plan p;
  for (size_t l = 0; l < m->blocks.size(); ++l) {
    p.kv_groups.push_back({0, 1, 2});
    p.heads.push_back({0, 1, 2, 3, 4, 5});
    std::vector<int64_t> ffn;
    for (int64_t c = 0; c < ffn_keep; ++c) ffn.push_back(c);
    p.ffn.push_back(ffn);
  }
  ir::Graph g = teacher_graph();
  Status st = prune::apply_plan(g, *m, p);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return g;
}

/// Plain f32 for every weight matrix: no fake quantization, plain knowledge distillation.
Precision plain_precision(const ir::Graph& g) {
  auto uses = quant::enumerate_weights(g);
  REQUIRE(uses.ok());
  Precision prec;
  for (const auto& u : *uses) prec[u.tensor] = {quant::QSpec{quant::QKind::kF32, 0, 0, fmt::ScaleFormat::kF16}, quant::ParamRule::kRtn};
  return prec;
}

Seqs train_64() { return stories(0, 12, 64); }
Seqs val_64() { return stories(380, 383, 64); }

/// The trained tensors of a student (every name in `prec`, plus the norms): float32 values.
Weights weights_of(const ir::Graph& g) {
  Weights w;
  for (const auto& [name, t] : g.initializers)
    if (t.dtype == ir::DType::kF16 || t.dtype == ir::DType::kF32) w[name] = t.to_f32();
  return w;
}

/// Names of the tensors whose bits differ (or that only one side has).
std::vector<std::string> differing(const Weights& a, const Weights& b) {
  std::vector<std::string> d;
  for (const auto& [n, v] : a)
    if (!b.count(n) || !bit_equal(v, b.at(n))) d.push_back(n);
  for (const auto& [n, v] : b)
    if (!a.count(n)) d.push_back(n);
  return d;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

/// The common options of these tests.
distill::QadOptions base_options() {
  distill::QadOptions o;
  o.batch = 4;
  o.seq_len = 64;
  o.lr = 2e-3;
  o.warmup = 5;
  o.eval_every = 5;
  o.seed = 0;
  o.threads = 1;
  o.label = "distill";
  return o;
}

// ------------------------------------------------------------------------------ data parallel
// The two-process workload: the same data, options and seed in the workers (batch 2 each, dp from
// the environment) and in the parent (batch 4, one process). Two configurations, run one after the
// other in the same process group:
//   "cached":  sequences of 12 different lengths (20..64 tokens) <= seq_len, bucketed batches: the
//              teacher's logits come from the cache, each rank trims the padding it does not need;
//   "cut":     the same sequences, seq_len 40: longer ones are cut at a random offset (drawn for the
//              whole global batch), the teacher runs on the rank's batch; uniform sampling.

struct DpConfig {
  std::string name;
  int64_t seq_len;
  bool bucket;
};
const std::vector<DpConfig> kDpConfigs = {{"cached", 64, true}, {"cut", 40, false}};
constexpr int kDpSteps = 2;

Seqs dp_train() { return stories(0, 12, [](int i) { return 20 + 4 * ((i * 5) % 12); }); }  // 20, 40, 60, 32, ...

/// Gradients of every step and the final weights, as checkpoint tensors "<config>/grad/<step>/<name>"
/// and "<config>/weight/<name>".
distill::Checkpoint run_dp_workload(distill::DataParallel* dp, int batch) {
  const Seqs train = dp_train();
  const Seqs val = stories(380, 382, 48);
  distill::Checkpoint out;
  for (const DpConfig& c : kDpConfigs) {
    ir::Graph student = pruned_student();
    const Precision prec = plain_precision(student);
    distill::QadOptions o = base_options();
    o.batch = batch;
    o.steps = kDpSteps;
    o.eval_every = 1;
    o.seq_len = c.seq_len;
    o.bucket = c.bucket;
    o.seed = 3;
    o.dp = dp;
    std::vector<std::string> trained;
    o.on_gradient = [&](int step, const std::string& name, const std::vector<float>& g) {
      if (step == 1) trained.push_back(name);
      out.tensors.push_back({c.name + "/grad/" + std::to_string(step) + "/" + name, {static_cast<int64_t>(g.size())}, g});
    };
    auto rep = distill::quantization_aware_distill(student, teacher_graph(), prec, train, val, o);
    INFO(c.name << ": " << rep.status().to_string());
    REQUIRE(rep.ok());
    REQUIRE(rep->steps == kDpSteps);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", rep->val_kl_best);
    out.meta[c.name + "/val_kl_best"] = buf;
    out.meta[c.name + "/best_step"] = std::to_string(rep->best_step);
    for (const std::string& name : trained) {
      const std::vector<float> w = student.initializers.at(name).to_f32();
      out.tensors.push_back({c.name + "/weight/" + name, {static_cast<int64_t>(w.size())}, w});
    }
  }
  return out;
}

}  // namespace kd_test
}  // namespace

using namespace kd_test;

// ================================================================================ plain KD

TEST_CASE("distillation lowers the KD loss on a fixed seed", "[distill]") {
  const Seqs train = train_64(), val = val_64();
  const ir::Graph original = pruned_student();
  const Precision prec = plain_precision(original);
  REQUIRE(prec.size() == 5 * 7 + 1);  // 7 matrices per block + the (tied) embedding
  distill::QadOptions o = base_options();
  o.steps = 30;
  o.eval_every = 10;

  ir::Graph s1 = original;
  auto r1 = distill::quantization_aware_distill(s1, teacher_graph(), prec, train, val, o);
  INFO(r1.status().to_string());
  REQUIRE(r1.ok());
  INFO("val KL " << r1->val_kl_initial << " -> best " << r1->val_kl_best << " (step " << r1->best_step << "), final "
                 << r1->val_kl_final);
  CHECK(r1->steps == 30);
  CHECK(r1->resumed_from == 0);
  CHECK(r1->val_kl_initial > 1.0);  // half the FFN and a quarter of the heads gone: far from the teacher (measured 3.9)
  CHECK(r1->val_kl_best < 0.8 * r1->val_kl_initial);
  CHECK(r1->val_kl_best <= r1->val_kl_final);
  CHECK(r1->best_step > 0);
  CHECK(r1->best_step % 10 == 0);
  CHECK(r1->log.size() == 4);  // before training + steps 10, 20, 30
  CHECK(r1->tokens_per_second > 0);

  // The student's trained tensors changed and became float32; shapes are the pruned ones.
  const Weights w0 = weights_of(original), w1 = weights_of(s1);
  for (const auto& [name, _] : prec) {
    INFO(name);
    REQUIRE(s1.initializers.count(name));
    CHECK(s1.initializers.at(name).dtype == ir::DType::kF32);
    CHECK(s1.initializers.at(name).shape == original.initializers.at(name).shape);
    CHECK(max_abs_diff(w0.at(name), w1.at(name)) > 1e-4);
  }
  CHECK(s1.initializers.at("model.layers.0.w1.weight").shape == std::vector<int64_t>{86, 64});
  CHECK(s1.initializers.at("model.layers.0.wk.weight").shape == std::vector<int64_t>{24, 64});

  // Same seed: bit-identical weights and report.
  ir::Graph s2 = original;
  auto r2 = distill::quantization_aware_distill(s2, teacher_graph(), prec, train, val, o);
  REQUIRE(r2.ok());
  CHECK(differing(w1, weights_of(s2)).empty());
  CHECK(r2->val_kl_initial == r1->val_kl_initial);
  CHECK(r2->val_kl_best == r1->val_kl_best);
  CHECK(r2->best_step == r1->best_step);
}

// ================================================================================ checkpoint / resume

TEST_CASE("resume equals an uninterrupted run", "[distill]") {
  TempDir d("distill_resume");
  const Seqs train = train_64(), val = val_64();
  const ir::Graph original = pruned_student();
  const Precision prec = plain_precision(original);
  distill::QadOptions o = base_options();
  o.steps = 20;
  o.checkpoint_every = 10;
  o.checkpoint_meta["test"] = "resume";

  // Run A, uninterrupted (its checkpointing does not affect training). While step 11 is being
  // applied, the step-10 checkpoint is on disk: copy it, as if the run had been killed there.
  const std::string ck_a = d.file("a.ckpt"), ck10 = d.file("step10.ckpt");
  o.checkpoint_path = ck_a;
  std::map<std::pair<int, std::string>, std::vector<float>> grads_a;
  bool copied = false;
  o.on_gradient = [&](int step, const std::string& name, const std::vector<float>& g) {
    if (step == 11 && !copied) {
      fs::copy_file(ck_a, ck10, fs::copy_options::overwrite_existing);
      copied = true;
    }
    if (step > 10) grads_a[{step, name}] = g;
  };
  ir::Graph sa = original;
  auto ra = distill::quantization_aware_distill(sa, teacher_graph(), prec, train, val, o);
  INFO(ra.status().to_string());
  REQUIRE(ra.ok());
  REQUIRE(copied);
  CHECK(ra->resumed_from == 0);
  {
    auto ck = distill::load_checkpoint(ck10);
    REQUIRE(ck.ok());
    CHECK(ck->meta.at("train.step") == "10");
    CHECK(ck->meta.at("test") == "resume");
    auto fin = distill::load_checkpoint(ck_a);
    REQUIRE(fin.ok());
    CHECK(fin->meta.at("train.step") == "20");
  }

  // Run B: a fresh student resumed from the step-10 checkpoint, same options.
  distill::QadOptions ob = o;
  ob.checkpoint_path = ck10;
  ob.resume = true;
  std::map<std::pair<int, std::string>, std::vector<float>> grads_b;
  ob.on_gradient = [&](int step, const std::string& name, const std::vector<float>& g) { grads_b[{step, name}] = g; };
  ir::Graph sb = original;
  auto rb = distill::quantization_aware_distill(sb, teacher_graph(), prec, train, val, ob);
  INFO(rb.status().to_string());
  REQUIRE(rb.ok());
  CHECK(rb->resumed_from == 10);
  CHECK(rb->steps == 20);
  CHECK(rb->val_kl_initial == ra->val_kl_initial);
  CHECK(rb->val_kl_best == ra->val_kl_best);
  CHECK(rb->val_kl_final == ra->val_kl_final);
  CHECK(rb->best_step == ra->best_step);
  CHECK(rb->log.size() == 3);  // before training + steps 15, 20
  // Steps 11..20 saw the same gradients, bit for bit, and ended on the same weights.
  REQUIRE(grads_b.size() == grads_a.size());
  REQUIRE(grads_b.size() == 10 * (prec.size() + 5 * 2 + 1));  // matrices + 2 RMSNorms per block + the final one
  for (const auto& [key, g] : grads_a) {
    INFO("step " << key.first << " " << key.second);
    REQUIRE(grads_b.count(key));
    CHECK(bit_equal(grads_b.at(key), g));
  }
  const Weights wa = weights_of(sa);
  CHECK(differing(wa, weights_of(sb)).empty());
  CHECK(differing(wa, weights_of(original)).size() >= prec.size());

  {  // a checkpoint of another student is refused, naming the tensor
    ir::Graph other = pruned_student(80);  // other FFN width
    const Precision oprec = plain_precision(other);
    const Weights before = weights_of(other);
    distill::QadOptions oo = ob;
    oo.on_gradient = nullptr;
    oo.checkpoint_path = ck_a;
    auto r = distill::quantization_aware_distill(other, teacher_graph(), oprec, train, val, oo);
    REQUIRE_FALSE(r.ok());
    INFO(r.status().to_string());
    CHECK(r.status().code() == ErrorCode::kInvalidArgument);
    const std::string msg = r.status().message();
    CHECK(msg.find(ck_a) != std::string::npos);
    CHECK(msg.find("shape") != std::string::npos);
    bool names_ffn = false;
    for (int l = 0; l < 5; ++l)
      for (const char* w : {"w1", "w2", "w3"})
        names_ffn = names_ffn || msg.find("'model.layers." + std::to_string(l) + "." + w + ".weight") != std::string::npos;
    CHECK(names_ffn);
    CHECK(differing(before, weights_of(other)).empty());  // untouched

    // A checkpoint without one of the student's tensors (its Adam moments, here).
    auto ck = distill::load_checkpoint(ck_a);
    REQUIRE(ck.ok());
    const std::string gone = "model.layers.3.wv.weight#adam.v";
    REQUIRE(ck->find(gone) != nullptr);
    ck->tensors.erase(std::remove_if(ck->tensors.begin(), ck->tensors.end(),
                                     [&](const distill::CheckpointTensor& t) { return t.name == gone; }),
                      ck->tensors.end());
    const std::string partial = d.file("partial.ckpt");
    REQUIRE(distill::save_checkpoint(partial, *ck).ok());
    ir::Graph s = original;
    oo.checkpoint_path = partial;
    auto r2 = distill::quantization_aware_distill(s, teacher_graph(), prec, train, val, oo);
    REQUIRE_FALSE(r2.ok());
    INFO(r2.status().to_string());
    CHECK(r2.status().code() == ErrorCode::kInvalidArgument);
    CHECK(r2.status().message().find("'" + gone + "'") != std::string::npos);
  }

  {  // a corrupt or truncated checkpoint is BadInput, a missing one an IoError
    const std::string good = read_bytes(ck10);
    REQUIRE(good.size() > 1000);
    const std::string bad = d.file("bad.ckpt");
    distill::QadOptions oo = ob;
    oo.on_gradient = nullptr;
    oo.checkpoint_path = bad;
    auto attempt = [&]() {
      ir::Graph s = original;
      auto r = distill::quantization_aware_distill(s, teacher_graph(), prec, train, val, oo);
      REQUIRE_FALSE(r.ok());
      CHECK(differing(weights_of(s), weights_of(original)).empty());
      return r.status();
    };
    std::string flipped = good;
    flipped[good.size() / 2] = static_cast<char>(flipped[good.size() / 2] ^ 0x04);
    write_bytes(bad, flipped);
    Status st = attempt();
    INFO(st.to_string());
    CHECK(st.code() == ErrorCode::kBadInput);
    CHECK(st.message().find("checksum") != std::string::npos);
    CHECK(st.message().find(bad) != std::string::npos);

    write_bytes(bad, good.substr(0, good.size() - 17));
    st = attempt();
    INFO(st.to_string());
    CHECK(st.code() == ErrorCode::kBadInput);
    CHECK(st.message().find("truncated") != std::string::npos);

    // A valid file whose training state is malformed.
    auto ck = distill::load_checkpoint(ck10);
    REQUIRE(ck.ok());
    ck->meta["train.rng"] = "not an rng state";
    REQUIRE(distill::save_checkpoint(bad, *ck).ok());
    st = attempt();
    INFO(st.to_string());
    CHECK(st.code() == ErrorCode::kBadInput);
    CHECK(st.message().find("training state") != std::string::npos);

    fs::remove(bad);
    st = attempt();
    INFO(st.to_string());
    CHECK(st.code() == ErrorCode::kIo);
  }
}

// ================================================================================ data parallel

// The worker half of the two-process test (hidden; run by the test below with RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, KERF_DP_OUT set): distills with batch 2 per rank and writes the summed
// gradients of every step and the final weights to KERF_DP_OUT (a checkpoint file).
TEST_CASE("dp distill worker", "[.dp_distill_worker]") {
  const char* out = std::getenv("KERF_DP_OUT");
  if (out == nullptr) {
    WARN("KERF_DP_OUT is not set: nothing to do (this test is run by the [distill] two-process test)");
    return;
  }
  auto dpr = distill::DataParallel::from_env(60);
  if (!dpr.ok()) FAIL(dpr.status().to_string());
  distill::DataParallel& dp = **dpr;
  REQUIRE(dp.world_size() == 2);
  distill::Checkpoint ck = run_dp_workload(&dp, 2);
  ck.meta["rank"] = std::to_string(dp.rank());
  REQUIRE(dp.barrier().ok());
  Status st = distill::save_checkpoint(out, ck);
  if (!st.ok()) FAIL(st.to_string());
}

TEST_CASE("2-process data-parallel distillation computes the same gradients as one process", "[distill]") {
  TempDir d("distill_dp2");
  DpWorkers kids(d, "dp distill worker", 2, ".ckpt");
  const std::vector<std::string>& outs = kids.outs;
  const std::vector<std::string>& logs = kids.logs;
  // Meanwhile: one process, batch 4 = 2 ranks x 2.
  const distill::Checkpoint single = run_dp_workload(nullptr, 4);
  kids.wait_all(std::chrono::seconds(120));

  std::vector<distill::Checkpoint> ranks;
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << " exit " << kids.codes[r] << " (-1 = killed after 120 s); log:\n" << read_bytes(logs[r]));
    REQUIRE(kids.codes[r] == 0);
    auto ck = distill::load_checkpoint(outs[r]);
    INFO(ck.status().to_string());
    REQUIRE(ck.ok());
    CHECK(ck->meta.at("rank") == std::to_string(r));
    ranks.push_back(std::move(*ck));
  }

  // Every tensor the single process reports, in the same order, on both ranks.
  const size_t n_params = 5 * 7 + 1 + 5 * 2 + 1;
  size_t n_grads = 0, n_weights = 0;
  for (const auto& t : single.tensors) (t.name.find("/grad/") != std::string::npos ? n_grads : n_weights) += 1;
  CHECK(n_grads == kDpConfigs.size() * kDpSteps * n_params);
  CHECK(n_weights == kDpConfigs.size() * n_params);
  for (int r = 0; r < 2; ++r) {
    REQUIRE(ranks[r].tensors.size() == single.tensors.size());
    for (size_t i = 0; i < single.tensors.size(); ++i) REQUIRE(ranks[r].tensors[i].name == single.tensors[i].name);
  }

  // Tolerances. The single process and the ranks add the same float terms in another order (a
  // weight gradient sums rows within a rank, then across ranks; the matmuls run over other row
  // counts), so the step-1 gradients, computed from identical weights, agree to rounding: max |diff|
  // <= 1e-5 of max |g| per tensor (measured 1e-6; up to 5e-6 over seeds 3..12). AdamW then divides
  // each element by its own magnitude (step 1: update = lr * g / (|g| + 1e-8) after clipping), which
  // turns the rounding noise of elements with |g| near 1e-8 (1e-6 .. 1e-8 of the tensor's largest)
  // into update differences of a sizeable fraction of lr. So after step 1 a few weight elements
  // already differ by more than rounding, and the step-2 gradients, computed from those weights,
  // differ by more than rounding too (measured up to 2.1e-5 of max |g| over seeds 3..12). Hence
  // step 2 within 1e-4 of max |g|; the trained updates (w - w0) within 2e-3 relative in L2 per tensor
  // (measured up to 5e-4), every weight within 2e-4 of max |w| (measured up to 4.4e-5), and at most
  // 0.1 % of all weight elements off by more than 1e-6 of max |w| (measured up to 13 of 324224).
  const ir::Graph initial = pruned_student();
  double worst[3] = {0, 0, 0}, worst_l2[3] = {0, 0, 0};  // step-1 grads, step-2 grads, weights
  std::string worst_name[3];
  size_t weight_elems = 0, weight_off = 0;
  auto l2 = [](const std::vector<float>& x, const std::vector<float>& y) {  // ||x - y||, y may be empty
    double t = 0;
    for (size_t k = 0; k < x.size(); ++k) {
      const double d = static_cast<double>(x[k]) - (y.empty() ? 0.0 : static_cast<double>(y[k]));
      t += d * d;
    }
    return std::sqrt(t);
  };
  for (size_t i = 0; i < single.tensors.size(); ++i) {
    const auto& s = single.tensors[i];
    const auto& a = ranks[0].tensors[i];
    const auto& b = ranks[1].tensors[i];
    INFO(s.name);
    REQUIRE(a.data.size() == s.data.size());
    // The ranks hold the same bits (a two-rank sum is a + b on both; the steps are then identical).
    CHECK(bit_equal(a.data, b.data));
    const double scale = max_abs(s.data);
    REQUIRE(scale > 0);
    const double rel = max_abs_diff(a.data, s.data) / scale;
    const size_t at_grad = s.name.find("/grad/");
    if (at_grad != std::string::npos) {
      const int step = std::stoi(s.name.substr(at_grad + 6));
      const int k = step - 1;
      const double rl2 = l2(a.data, s.data) / l2(s.data, {});
      if (rel > worst[k]) worst[k] = rel, worst_name[k] = s.name;
      worst_l2[k] = std::max(worst_l2[k], rl2);
      CHECK(rel <= (step == 1 ? 1e-5 : 1e-4));
      CHECK(rl2 <= (step == 1 ? 1e-5 : 1e-4));
    } else {
      const std::string pname = s.name.substr(s.name.find("/weight/") + 8);
      REQUIRE(initial.initializers.count(pname));
      const std::vector<float> w0 = initial.initializers.at(pname).to_f32();
      REQUIRE(w0.size() == s.data.size());
      std::vector<float> us(w0.size()), ua(w0.size());
      for (size_t k = 0; k < w0.size(); ++k) us[k] = s.data[k] - w0[k], ua[k] = a.data[k] - w0[k];
      const double norm_u = l2(us, {});
      REQUIRE(norm_u > 0);  // trained
      const double rl2 = l2(ua, us) / norm_u;
      if (rel > worst[2]) worst[2] = rel, worst_name[2] = s.name;
      worst_l2[2] = std::max(worst_l2[2], rl2);
      CHECK(rl2 <= 2e-3);
      CHECK(rel <= 2e-4);
      weight_elems += s.data.size();
      for (size_t k = 0; k < s.data.size(); ++k) weight_off += std::fabs(a.data[k] - s.data[k]) > 1e-6 * scale;
    }
  }
  INFO("worst max-relative difference: step-1 gradients " << worst[0] << " (" << worst_name[0] << "), step-2 gradients "
                                                          << worst[1] << " (" << worst_name[1] << "), weights " << worst[2]
                                                          << " (" << worst_name[2] << "); worst relative L2 " << worst_l2[0]
                                                          << ", " << worst_l2[1] << ", updates " << worst_l2[2] << "; "
                                                          << weight_off << " of " << weight_elems
                                                          << " weight elements off by > 1e-6 of max |w|");
  CHECK(weight_off * 1000 <= weight_elems);
  for (const auto& c : kDpConfigs) {
    INFO(c.name);
    CHECK(ranks[0].meta.at(c.name + "/best_step") == single.meta.at(c.name + "/best_step"));
    CHECK(std::stod(ranks[0].meta.at(c.name + "/val_kl_best")) ==
          Approx(std::stod(single.meta.at(c.name + "/val_kl_best"))).epsilon(1e-5));
    CHECK(ranks[0].meta.at(c.name + "/val_kl_best") == ranks[1].meta.at(c.name + "/val_kl_best"));
  }
}
