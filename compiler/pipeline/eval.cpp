#include "compiler/pipeline/eval.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "compiler/pipeline/json_io.h"
#include "compiler/pipeline/model_io.h"
#include "compiler/pipeline/progress.h"
#include "compiler/pipeline/report.h"
#include "distill/checkpoint.h"
#include "distill/reference.h"
#include "kerf/xxh64.h"
#include "prune/prune.h"
#include "kerf/kerf.h"

namespace kerf::pipeline {

namespace {

struct ModelCloser {
  void operator()(kerf_model* m) const { kerf_model_close(m); }
};
struct SessionFree {
  void operator()(kerf_session* s) const { kerf_session_free(s); }
};

// log-softmax of one row, in double.
void log_softmax(const float* x, int n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  double mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
  const double lse = mx + std::log(s);
  for (int i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<double>(x[i]) - lse;
}

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Result<EvalReport> evaluate(const EvalOptions& opt) {
  EvalReport rep;
  rep.artifact = opt.artifact_path;
  rep.reference = opt.reference_path;
  rep.text = opt.text_path;
  rep.stories = opt.stories;

  char err[512] = {0};
  kerf_model* raw = nullptr;
  int rc = kerf_model_open(opt.artifact_path.c_str(), KERF_OPEN_VERIFY_DATA, &raw, err, sizeof err);
  if (rc != KERF_OK) {
    std::string msg = std::string(kerf_status_string(rc)) + ": " + err;
    return rc == KERF_ERR_IO ? IoError(msg) : (rc == KERF_ERR_UNSUPPORTED ? Unsupported(msg) : BadInput(msg));
  }
  std::unique_ptr<kerf_model, ModelCloser> model(raw);
  const int vocab = kerf_model_vocab_size(model.get());
  const int max_seq = kerf_model_max_seq_len(model.get());
  std::error_code ec;
  rep.bytes = std::filesystem::file_size(opt.artifact_path, ec);
  double bpw = 0;
  if (kerf_model_meta_float(model.get(), "quant.bpw", &bpw) == 0) rep.bpw = bpw;
  const char* s = nullptr;
  size_t n = 0;
  if (kerf_model_meta_string(model.get(), "compile.recipe", &s, &n) == 0) rep.recipe.assign(s, n);
  if (kerf_model_meta_string(model.get(), "compile.target", &s, &n) == 0) rep.target.assign(s, n);

  // Per-tensor table: storage from the tensor table, method / role / calibration figures from the
  // "quant.tensor.<name>" metadata the compiler writes.
  for (int i = 0, nt = kerf_model_tensor_count(model.get()); i < nt; ++i) {
    kerf_tensor_info ti{};
    if (kerf_model_tensor_info(model.get(), i, &ti) != 0) continue;
    TensorInfo t;
    t.name = ti.name;
    t.dtype = ti.precision ? ti.precision : ti.dtype_name;
    for (uint32_t d = 0; d < ti.rank && d < 4; ++d) t.shape.push_back(ti.shape[d]);
    t.bytes = ti.bytes;
    if (kerf_model_meta_string(model.get(), ("quant.tensor." + t.name).c_str(), &s, &n) == 0) t.detail.assign(s, n);
    rep.tensors.push_back(std::move(t));
  }
  collect_artifact_structure(model.get(), &rep);  // report.h: storage codes, program, placement
  if (opt.cpu_only)
    for (OpPlacement& p : rep.ops)
      if (p.unit != "cpu" || p.unit_prefill != "cpu") {
        p.reason = "--cpu-only: run on the cpu instead of the artifact's " + p.unit_prefill + " (prefill) / " + p.unit +
                   " (decode); " + p.reason;
        p.unit = p.unit_prefill = "cpu";
      }

  KERF_ASSIGN_OR_RETURN(auto all, read_stories(opt.text_path));
  KERF_ASSIGN_OR_RETURN(auto stories, select_stories(all, opt.stories, opt.text_path));

  std::unique_ptr<distill::ReferenceExecutor> ref;
  if (!opt.reference_path.empty()) {
    KERF_ASSIGN_OR_RETURN(LoadedModel lm, load_model(opt.reference_path));
    KERF_ASSIGN_OR_RETURN(int64_t ref_vocab, vocab_size_of(lm.lifted));
    if (ref_vocab != vocab)
      return BadInput("reference " + opt.reference_path + " has vocabulary " + std::to_string(ref_vocab) +
                      " but artifact " + opt.artifact_path + " has " + std::to_string(vocab));
    distill::ReferenceOptions ro;
    ro.threads = opt.threads;
    KERF_ASSIGN_OR_RETURN(auto ex, distill::ReferenceExecutor::create(lm.lifted, ro));
    ref = std::make_unique<distill::ReferenceExecutor>(std::move(ex));
  }

  // Compression stages: FP models rebuilt from the reference and the artifact's records.
  struct FpStage {
    size_t row;
    std::unique_ptr<distill::ReferenceExecutor> ex;
    double nll = 0, kl = 0;
    int64_t agree = 0;
  };
  std::vector<FpStage> fp_stages;
  auto meta_str = [&](const std::string& key) {
    const char* v = nullptr;
    size_t n = 0;
    return kerf_model_meta_string(model.get(), key.c_str(), &v, &n) == 0 ? std::string(v, n) : std::string();
  };
  const std::string plan_text = meta_str("prune.plan");
  if (!plan_text.empty() && ref && opt.stages) {
    rep.prune_summary = meta_str("prune.summary");
    auto cost_of = [&](const std::string& stage, StageMetrics* m) {
      try {
        m->params = std::stoll(meta_str("stage." + stage + ".params"));
        m->decode_flops = std::stod(meta_str("stage." + stage + ".decode_flops"));
        m->prefill_flops = std::stod(meta_str("stage." + stage + ".prefill_flops"));
        m->context = std::stoll(meta_str("stage." + stage + ".context"));
      } catch (const std::exception&) {
      }
      m->bytes = static_cast<uint64_t>(m->params) * 4;
    };
    StageMetrics orig, pruned, distilled, quantized;
    orig.name = "original";
    orig.measured = true;
    pruned.name = "pruned";
    distilled.name = "distilled";
    quantized.name = "quantized";
    quantized.measured = true;
    cost_of("original", &orig);
    cost_of("pruned", &pruned);
    cost_of("pruned", &distilled);
    cost_of("pruned", &quantized);
    quantized.bytes = rep.bytes;
    KERF_ASSIGN_OR_RETURN(LoadedModel lm, load_model(opt.reference_path));
    KERF_ASSIGN_OR_RETURN(prune::Plan plan, prune::plan_from_text(plan_text));
    KERF_ASSIGN_OR_RETURN(prune::Model pm, prune::analyze(lm.lifted));
    ir::Graph g = lm.lifted;
    KERF_RETURN_IF_ERROR(prune::apply_plan(g, pm, plan).with_context(opt.artifact_path + ": recorded pruning plan"));
    distill::ReferenceOptions ro;
    ro.threads = opt.threads;
    // The checkpoint the compile wrote: "#init" = the pruned (compensated) student, "#best" = the
    // distilled one. Its hash is recorded in the artifact; a changed file is reported, not used.
    std::string ck_path = meta_str("distill.checkpoint");
    const std::string ck_hash = meta_str("distill.checkpoint_xxh64");
    if (!ck_path.empty() && std::filesystem::path(ck_path).is_relative())  // relative to the artifact's folder
      ck_path = (std::filesystem::path(opt.artifact_path).parent_path() / ck_path).string();
    std::optional<distill::Checkpoint> ck;
    std::string ck_note;
    if (ck_path.empty()) {
      ck_note = "no checkpoint recorded";
    } else {
      auto h = file_xxh64(ck_path);
      char hb[17];
      std::snprintf(hb, sizeof hb, "%016llx", static_cast<unsigned long long>(h.ok() ? *h : 0));
      if (!h.ok()) {
        ck_note = "checkpoint " + ck_path + " not found";
      } else if (hb != ck_hash) {
        ck_note = "checkpoint " + ck_path + " changed since compile (hash " + std::string(hb) + ", recorded " + ck_hash + ")";
      } else {
        KERF_ASSIGN_OR_RETURN(distill::Checkpoint c, distill::load_checkpoint(ck_path));
        ck = std::move(c);
      }
    }
    auto stage_executor = [&](const std::string& suffix) -> Result<std::unique_ptr<distill::ReferenceExecutor>> {
      KERF_ASSIGN_OR_RETURN(auto ex, distill::ReferenceExecutor::create(g, ro));
      size_t n = 0;
      for (const auto& t : ck->tensors) {
        const auto hash = t.name.find('#');
        if (hash == std::string::npos || t.name.substr(hash) != suffix) continue;
        KERF_RETURN_IF_ERROR(ex.set_weight(t.name.substr(0, hash), t.data).with_context(ck_path));
        ++n;
      }
      if (n == 0) return std::unique_ptr<distill::ReferenceExecutor>();
      return std::make_unique<distill::ReferenceExecutor>(std::move(ex));
    };
    if (ck) {
      KERF_ASSIGN_OR_RETURN(auto pex, stage_executor("#init"));
      if (pex) {
        fp_stages.push_back({1, std::move(pex)});
        pruned.measured = true;
      }
      KERF_ASSIGN_OR_RETURN(auto dex, stage_executor("#best"));
      if (dex) {
        fp_stages.push_back({2, std::move(dex)});
        distilled.measured = true;
      } else {
        distilled.note = "no distillation";
      }
    }
    if (!pruned.measured) {  // the plan alone (without the compile's output compensation)
      KERF_ASSIGN_OR_RETURN(auto pex, distill::ReferenceExecutor::create(g, ro));
      fp_stages.push_back({1, std::make_unique<distill::ReferenceExecutor>(std::move(pex))});
      pruned.measured = true;
      pruned.note = "recorded plan applied to the reference, without compensation";
    }
    if (!ck) distilled.note = ck_note;
    rep.stages = {orig, pruned, distilled, quantized};
  }

  kerf_session* sraw = nullptr;
  char serr[1024] = {0};
  rc = kerf_session_create_ex(model.get(), 0, opt.cpu_only ? KERF_SESSION_CPU_ONLY : 0, &sraw, serr, sizeof serr);
  if (rc == KERF_ERR_UNSUPPORTED) return Unsupported(std::string("cannot run the artifact's placement: ") + serr);
  if (rc != KERF_OK) return Internal(std::string("cannot create a runtime session: ") + kerf_status_string(rc) + ": " + serr);
  std::unique_ptr<kerf_session, SessionFree> session(sraw);

  double nll = 0, nll_ref = 0, kl = 0;
  int64_t agree = 0, positions = 0;
  std::vector<int32_t> toks(static_cast<size_t>(std::max(max_seq, 1)) * 8);
  std::vector<float> logits;
  std::vector<double> lp, lq;
  // Progress: one unit per story (the artifact's, the reference's and any stage models' forwards).
  progress::Task task("eval", static_cast<int64_t>(stories.size()), "stories", opt.progress ? progress::current() : nullptr);
  for (size_t si = 0; si < stories.size(); ++si) {
    int count = 0;
    rc = kerf_tokenize(model.get(), stories[si].c_str(), 1, toks.data(), static_cast<int>(toks.size()), &count);
    if (rc == KERF_ERR_ARGUMENT && count > static_cast<int>(toks.size())) {
      toks.resize(static_cast<size_t>(count));
      rc = kerf_tokenize(model.get(), stories[si].c_str(), 1, toks.data(), count, &count);
    }
    if (rc != KERF_OK) return BadInput("story " + std::to_string(opt.stories.begin + static_cast<int>(si)) + ": tokenizer failed");
    const int T = std::min(count, max_seq);
    if (T < 2) {
      task.step();
      continue;
    }
    logits.resize(static_cast<size_t>(T) * static_cast<size_t>(vocab));
    kerf_session_reset(session.get());
    auto t0 = std::chrono::steady_clock::now();
    rc = kerf_session_eval(session.get(), toks.data(), T, logits.data(), 1);
    rep.artifact_seconds += since(t0);
    if (rc != KERF_OK)
      return Internal(std::string("runtime-lite failed on story ") + std::to_string(si) + ": " + kerf_status_string(rc) + ": " +
                      kerf_session_last_error(session.get()));
    std::vector<float> ref_logits;
    if (ref) {
      ref->reset_cache();
      std::vector<int64_t> t64(toks.begin(), toks.begin() + T);
      t0 = std::chrono::steady_clock::now();
      KERF_ASSIGN_OR_RETURN(ref_logits, ref->forward_tokens(t64));
      rep.reference_seconds += since(t0);
    }
    for (int t = 0; t + 1 < T; ++t) {
      const float* q = logits.data() + static_cast<size_t>(t) * static_cast<size_t>(vocab);
      const int target = toks[static_cast<size_t>(t) + 1];
      log_softmax(q, vocab, lq);
      nll -= lq[static_cast<size_t>(target)];
      if (ref) {
        const float* p = ref_logits.data() + static_cast<size_t>(t) * static_cast<size_t>(vocab);
        log_softmax(p, vocab, lp);
        nll_ref -= lp[static_cast<size_t>(target)];
        double k = 0;
        for (int i = 0; i < vocab; ++i) {
          const double lpi = lp[static_cast<size_t>(i)];
          k += std::exp(lpi) * (lpi - lq[static_cast<size_t>(i)]);
        }
        kl += k;
        agree += argmax(p, vocab) == argmax(q, vocab);
      }
      ++positions;
    }
    for (FpStage& st : fp_stages) {
      st.ex->reset_cache();
      std::vector<int64_t> t64(toks.begin(), toks.begin() + T);
      KERF_ASSIGN_OR_RETURN(std::vector<float> sl, st.ex->forward_tokens(t64));
      for (int t = 0; t + 1 < T; ++t) {
        const float* q = sl.data() + static_cast<size_t>(t) * static_cast<size_t>(vocab);
        const float* p = ref_logits.data() + static_cast<size_t>(t) * static_cast<size_t>(vocab);
        log_softmax(q, vocab, lq);
        log_softmax(p, vocab, lp);
        st.nll -= lq[static_cast<size_t>(toks[static_cast<size_t>(t) + 1])];
        double k = 0;
        for (int i = 0; i < vocab; ++i) k += std::exp(lp[static_cast<size_t>(i)]) * (lp[static_cast<size_t>(i)] - lq[static_cast<size_t>(i)]);
        st.kl += k;
        st.agree += argmax(p, vocab) == argmax(q, vocab);
      }
    }
    ++rep.n_stories;
    task.step("story " + std::to_string(opt.stories.begin + static_cast<int>(si)), std::to_string(positions) + " tokens scored");
  }
  task.finish();
  if (positions == 0) return BadInput("no story in " + opt.text_path + " has two or more tokens");
  rep.predicted_tokens = positions;
  rep.nll = nll / static_cast<double>(positions);
  rep.ppl = std::exp(rep.nll);
  if (ref) {
    rep.nll_reference = nll_ref / static_cast<double>(positions);
    rep.ppl_reference = std::exp(rep.nll_reference);
    rep.kl = kl / static_cast<double>(positions);
    rep.top1 = static_cast<double>(agree) / static_cast<double>(positions);
  }
  if (!rep.stages.empty()) {
    const double n = static_cast<double>(positions);
    rep.stages[0].nll = rep.nll_reference, rep.stages[0].ppl = rep.ppl_reference, rep.stages[0].top1 = 1;
    for (const FpStage& st : fp_stages) {
      StageMetrics& m = rep.stages[st.row];
      m.nll = st.nll / n;
      m.ppl = std::exp(m.nll);
      m.kl = st.kl / n;
      m.top1 = static_cast<double>(st.agree) / n;
    }
    StageMetrics& q = rep.stages[3];
    q.nll = rep.nll, q.ppl = rep.ppl, q.kl = rep.kl, q.top1 = rep.top1;
  }
  rep.artifact_tokens_per_second =
      rep.artifact_seconds > 0 ? static_cast<double>(positions + rep.n_stories) / rep.artifact_seconds : 0;
  return rep;
}

std::string eval_report_json(const EvalReport& r) { return json_file_text(report_object(r)); }

std::string eval_report_markdown(const EvalReport& r) {
  std::ostringstream os;
  char buf[512];
  os << "# kerf accuracy report\n\n";
  os << "- artifact: `" << r.artifact << "` (" << r.bytes << " bytes, recipe `" << r.recipe << "`, target `" << r.target
     << "`)\n";
  os << "- reference: `" << (r.reference.empty() ? "(none)" : r.reference) << "` (LibTorch, float32)\n";
  os << "- text: `" << r.text << "`, stories " << r.stories.begin << ":" << r.stories.end << " (" << r.n_stories
     << " stories, " << r.predicted_tokens << " predicted tokens)\n\n";
  os << "| metric | reference (FP) | artifact (runtime-lite) |\n|---|---|---|\n";
  std::snprintf(buf, sizeof buf, "| perplexity | %.4f | %.4f (%+.2f %%) |\n", r.ppl_reference, r.ppl,
                r.ppl_reference > 0 ? 100.0 * (r.ppl / r.ppl_reference - 1.0) : 0.0);
  os << buf;
  std::snprintf(buf, sizeof buf, "| mean NLL (nats/token) | %.5f | %.5f |\n", r.nll_reference, r.nll);
  os << buf;
  std::snprintf(buf, sizeof buf, "| KL(ref ‖ artifact) | 0 | %.5f |\n| top-1 agreement | 1 | %.4f |\n", r.kl, r.top1);
  os << buf;
  std::snprintf(buf, sizeof buf, "| bits per weight (EVAL.md) | — | %.3f |\n| bytes | — | %llu |\n", r.bpw,
                static_cast<unsigned long long>(r.bytes));
  os << buf;
  std::snprintf(buf, sizeof buf,
                "\nTime: reference %.2f s, artifact %.2f s (runtime-lite scalar CPU, 1 thread, %.0f prefill tokens/s).\n",
                r.reference_seconds, r.artifact_seconds, r.artifact_tokens_per_second);
  os << buf;
  if (!r.stages.empty()) {
    os << "\n## Compression stages\n\n" << r.prune_summary << "\n\n";
    os << "| stage | perplexity | KL(ref ‖ stage) | top-1 | parameters | decode MFLOP/token | prefill MFLOP/token | bytes |\n"
          "|---|---|---|---|---|---|---|---|\n";
    for (const auto& m : r.stages) {
      if (m.measured)
        std::snprintf(buf, sizeof buf, "| %s | %.4f (%+.2f %%) | %.4f | %.4f |", m.name.c_str(), m.ppl,
                      r.ppl_reference > 0 ? 100.0 * (m.ppl / r.ppl_reference - 1.0) : 0.0, m.kl, m.top1);
      else
        std::snprintf(buf, sizeof buf, "| %s | n/a (%s) | | |", m.name.c_str(), m.note.c_str());
      os << buf;
      std::snprintf(buf, sizeof buf, " %lld | %.4f | %.4f | %llu%s |\n", static_cast<long long>(m.params), m.decode_flops / 1e6,
                    m.prefill_flops / 1e6, static_cast<unsigned long long>(m.bytes), m.name == "quantized" ? "" : " (f32)");
      os << buf;
    }
    if (!r.stages.empty() && r.stages[0].context > 0)
      os << "\nFLOPs: 2 x multiply-adds of the matrices plus attention over the context, per token; decode at context " << r.stages[0].context
         << ", prefill averaged over a " << r.stages[0].context << "-token prompt (prune/prune.h).\n";
  }
  if (!r.ops.empty()) {
    os << "\n## Placement (target `" << r.target << "`)\n\n| # | op | name | unit (prefill / decode) | kernel | why |\n|---|---|---|---|---|---|\n";
    for (const auto& p : r.ops)
      os << "| " << p.index << " | " << p.op << " | `" << p.name << "` | "
         << (p.unit_prefill == p.unit ? p.unit : p.unit_prefill + " / " + p.unit) << " | " << p.kernel << " | " << p.reason << " |\n";
  }
  if (!r.tensors.empty()) {
    os << "\n## Tensors\n\n| tensor | shape | storage | bytes | precision, method, role, calibration |\n|---|---|---|---|---|\n";
    for (const auto& t : r.tensors) {
      std::string shape;
      for (size_t d = 0; d < t.shape.size(); ++d) shape += (d ? "x" : "") + std::to_string(t.shape[d]);
      os << "| `" << t.name << "` | " << shape << " | " << t.dtype << " | " << t.bytes << " | "
         << (t.detail.empty() ? "kept" : t.detail) << " |\n";
    }
  }
  return os.str();
}

}  // namespace kerf::pipeline
