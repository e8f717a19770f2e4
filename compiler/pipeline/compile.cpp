#include "compiler/pipeline/compile.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "compiler/pipeline/emit.h"
#include "compiler/pipeline/manifest.h"
#include "compiler/pipeline/model_io.h"
#include "compiler/pipeline/recipe_file.h"
#include "compiler/targets/lower.h"
#include "compiler/targets/placement.h"
#include "compiler/targets/profile.h"
#include "formats/artifact/pack.h"
#include "formats/onnx/qdq_export.h"
#include "kerf/xxh64.h"
#include "quant/bpw.h"
#include "quant/calib/calibrate.h"
#include "quant/calib/mixed.h"
#include "distill/checkpoint.h"
#include "distill/dist.h"
#include "distill/reference.h"
#include "formats/onnx/onnx_import.h"
#include "passes/registry.h"
#include "prune/importance.h"
#include "prune/prune.h"

namespace kerf::pipeline {

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string recipe_name(const quant::QuantOptions& q) {
  auto d = [](fmt::DType t) { return std::string(fmt::dtype_name(t)); };
  std::string s = "rtn linear=" + d(q.linear_dtype);
  if (fmt::dtype_is_quantized(q.linear_dtype)) s += " g" + std::to_string(q.group_size);
  s += " embedding=" + d(q.embedding_dtype);
  if (fmt::dtype_is_quantized(q.embedding_dtype))
    s += q.embedding_group ? " g" + std::to_string(q.embedding_group) : " per-row";
  return s;
}
std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

/// The candidates of a bpw budget given on the command line without a recipe.
std::vector<std::string> default_candidates() {
  return {"int2_asym:g32:k6", "int3_sym:g32:k6", "int3_asym:g32:k6", "int4_sym:g32:k6",
          "int4_asym:g32:k6", "int5_sym:g32:k6", "int6_sym:g32:k6", "int8_sym:g32:k6"};
}

/// The one-line summary of a (quantization-aware) distillation run.
std::string training_summary(const char* label, const distill::QadReport& r, const std::string& src, size_t n_val) {
  char buf[400];
  std::snprintf(buf, sizeof buf, "%s: %d steps on %s minus %zu validation sequences; val KL %.4f -> %.4f (best, step %d), %.1f s, %.0f tok/s",
                label, r.steps, src.c_str(), n_val, r.val_kl_initial, r.val_kl_best, r.best_step, r.seconds, r.tokens_per_second);
  return buf;
}

/// Builds the effective recipe from the file (if any) and the command-line overrides.
Result<Recipe> effective_recipe(const CompileOptions& opt) {
  Recipe r;
  if (!opt.recipe_path.empty()) {
    KERF_ASSIGN_OR_RETURN(r, parse_recipe_file(opt.recipe_path));
  } else {
    r.name = "command line";
    r.calib_tokens = 65536;  // GPTQ's Hessians are converged long before; --calib-tokens 0 lifts the cap
    r.default_choice.spec = quant::QSpec{quant::QKind::kAsym, 4, 32, fmt::ScaleFormat::kF16};
    r.default_choice.method = quant::Method::kGptq;
    r.default_choice.rule = quant::ParamRule::kSearch;
    // The embedding stays INT8 per row unless a budget is given: then the allocator decides it too.
    if (!(opt.bpw > 0)) {
      RecipeOverride emb;
      emb.match = "embedding";
      emb.choice.spec = quant::QSpec{quant::QKind::kSym, 8, 0, fmt::ScaleFormat::kF16};
      emb.choice.method = quant::Method::kRtn;
      emb.choice.rule = quant::ParamRule::kSearch;
      r.overrides.push_back(emb);
    }
  }
  if (!opt.method.empty()) {
    KERF_ASSIGN_OR_RETURN(r.default_choice.method, quant::parse_method(opt.method));
  }
  if (!opt.linear_spec.empty()) {
    auto q = quant::parse_qspec(opt.linear_spec);
    if (!q.ok()) return q.status().with_context("--linear");
    r.default_choice.spec = *q;
  }
  const std::string emb_spec = !opt.embedding_spec.empty() ? opt.embedding_spec : opt.embedding_spec_if_calibrated;
  if (!emb_spec.empty()) {
    auto q = quant::parse_qspec(emb_spec);
    if (!q.ok()) return q.status().with_context("--embedding");
    bool done = false;
    for (auto& o : r.overrides)
      if (o.match == "embedding") {
        o.choice.spec = *q;
        done = true;
      }
    if (!done) {
      RecipeOverride emb;
      emb.match = "embedding";
      emb.choice = r.default_choice;
      emb.choice.method = quant::Method::kRtn;
      emb.choice.spec = *q;
      r.overrides.insert(r.overrides.begin(), emb);
    }
  }
  if (opt.qad_steps > 0) {
    if (!r.qad) {  // defaults for the final phase after pruning + distillation
      r.qad_options.batch = 4;
      r.qad_options.lr = 5e-4;
      r.qad_options.warmup = 0;
    }
    r.qad = true;
    r.qad_options.steps = opt.qad_steps;
    r.qad_options.eval_every = std::max(25, opt.qad_steps / 4);
  } else if (opt.qad_steps == 0) {
    r.qad = false;
  }
  if (opt.bpw > 0) {
    r.mixed = true;
    r.mixed_bpw = opt.bpw;
  }
  if (r.mixed && r.candidates.empty())
    for (const auto& c : default_candidates()) {
      quant::TensorChoice ch = r.default_choice;
      ch.spec = *quant::parse_qspec(c);
      r.candidates.push_back(ch);
    }
  if (opt.strict) r.strict = true;
  return r;
}

/// The model's context length (metadata model.max_seq_len; 512 when the source did not say).
int64_t model_max_seq(const ir::Graph& lifted) {
  auto ms = lifted.metadata.find("model.max_seq_len");
  return ms != lifted.metadata.end() ? std::stoll(ms->second) : 512;
}

/// Tokenizes the calibration stories: BOS + text, truncated to the model's max_seq_len, stopping
/// at the token cap.
Result<std::vector<std::vector<int64_t>>> calibration_sequences(const std::string& path, StoryRange range, int64_t cap,
                                                                const std::vector<uint8_t>& tokenizer, int64_t vocab,
                                                                const ir::Graph& lifted, std::string* source) {
  const int64_t max_seq = model_max_seq(lifted);
  KERF_ASSIGN_OR_RETURN(auto all, read_stories(path));
  KERF_ASSIGN_OR_RETURN(auto stories, select_stories(all, range, path));
  KERF_ASSIGN_OR_RETURN(auto tokenized, tokenize_texts(tokenizer, vocab, stories));
  std::vector<std::vector<int64_t>> seqs;
  int64_t total = 0;
  for (std::vector<int64_t>& ids : tokenized) {
    if (static_cast<int64_t>(ids.size()) > max_seq) ids.resize(static_cast<size_t>(max_seq));
    if (cap > 0 && total + static_cast<int64_t>(ids.size()) > cap) ids.resize(static_cast<size_t>(std::max<int64_t>(cap - total, 0)));
    if (ids.size() < 2) break;
    total += static_cast<int64_t>(ids.size());
    seqs.push_back(std::move(ids));
    if (cap > 0 && total >= cap) break;
  }
  if (seqs.empty()) return BadInput(path + ": no calibration tokens in stories " + std::to_string(range.begin) + ":" + std::to_string(range.end));
  *source = path + " stories " + std::to_string(range.begin) + ":" + std::to_string(range.begin + static_cast<int>(seqs.size())) +
            " (" + std::to_string(seqs.size()) + " sequences, " + std::to_string(total) + " tokens)";
  return seqs;
}

/// Data-free augmentation: appends `n` sequences sampled from `teacher` (temperature 1, BOS 1 /
/// EOS 2 as in llama2.c tokenizers, up to the model's context) to `seqs` and describes them in `src`.
Status add_teacher_samples(const ir::Graph& teacher, int n, uint64_t seed, int threads, const char* label,
                           const std::function<void(const std::string&)>& progress, std::vector<std::vector<int64_t>>* seqs,
                           std::string* src) {
  if (n <= 0) return Status::Ok();
  const auto t0 = std::chrono::steady_clock::now();
  KERF_ASSIGN_OR_RETURN(auto gen, distill::sample_from_teacher(teacher, n, model_max_seq(teacher), 1.0, seed, 1, 2, threads));
  size_t toks = 0;
  for (auto& q : gen) toks += q.size(), seqs->push_back(std::move(q));
  *src += " + " + std::to_string(n) + " teacher samples (" + std::to_string(toks) + " tokens)";
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s: sampled %d sequences (%zu tokens) from the teacher in %.1f s", label, n, toks, since(t0));
  if (progress) progress(buf);
  return Status::Ok();
}

/// Hidden-state distillation pairs: every block output of the student with the FP model's block
/// output at the same depth. The widths agree when only heads / FFN channels were pruned (or
/// nothing); removed blocks or embedding channels are an error naming `key`.
Result<std::vector<std::pair<std::string, std::string>>> block_output_pairs(const ir::Graph& student, const ir::Graph& teacher,
                                                                            const char* key) {
  KERF_ASSIGN_OR_RETURN(prune::Model ms, prune::analyze(student));
  KERF_ASSIGN_OR_RETURN(prune::Model mt, prune::analyze(teacher));
  if (ms.blocks.size() != mt.blocks.size() || ms.dim != mt.dim)
    return InvalidArgument(std::string(key) + ": hidden-state distillation needs the FP model's depth and width (student " +
                           std::to_string(ms.blocks.size()) + " blocks of width " + std::to_string(ms.dim) + ", FP model " +
                           std::to_string(mt.blocks.size()) + " of width " + std::to_string(mt.dim) +
                           "): no drop_blocks / keep_embed with it");
  std::vector<std::pair<std::string, std::string>> pairs;
  for (size_t b = 0; b < ms.blocks.size(); ++b) pairs.push_back({ms.blocks[b].residual_out, mt.blocks[b].residual_out});
  return pairs;
}

Status compile_calibrated(const CompileOptions& opt, ir::Graph& lifted, const ir::Graph* teacher_graph,
                          const std::vector<std::vector<int64_t>>& distill_samples, const std::vector<uint8_t>& tokenizer,
                          int64_t vocab, CompileSummary* s, std::map<std::string, std::string>* meta) {
  KERF_ASSIGN_OR_RETURN(Recipe r, effective_recipe(opt));
  s->calibrated = true;
  s->recipe_hash = opt.recipe_path.empty() ? 0 : r.hash;
  auto progress = [&](const std::string& line) {
    if (opt.progress) progress::log(line);  // a log line / event of the process's reporter (progress.h)
  };
  auto calib_options = [&] {
    quant::CalibOptions co;
    co.threads = opt.threads;
    co.sequential = r.sequential;
    co.gptq = r.gptq;
    return co;
  };
  KERF_ASSIGN_OR_RETURN(std::vector<quant::WeightUse> uses, quant::enumerate_weights(lifted));
  std::vector<std::string> unmatched;
  std::map<std::string, quant::TensorChoice> choices = recipe_choices(r, uses, &unmatched);
  if (!unmatched.empty() && r.strict)
    return InvalidArgument("--strict: recipe override '" + unmatched[0] + "' matches no weight matrix");

  // Calibration data.
  std::vector<std::vector<int64_t>> calib;
  if (!opt.calib_path.empty()) {
    StoryRange range{0, 128};
    if (r.calib_stories) range = *r.calib_stories;
    if (opt.calib_stories) range = *opt.calib_stories;
    const int64_t cap = opt.calib_tokens >= 0 ? opt.calib_tokens : r.calib_tokens;
    KERF_ASSIGN_OR_RETURN(calib, calibration_sequences(opt.calib_path, range, cap, tokenizer, vocab, lifted, &s->calib_source));
    std::vector<int64_t> flat;
    for (const auto& q : calib) flat.insert(flat.end(), q.begin(), q.end());
    s->calib_hash = xxh64(flat.data(), flat.size() * sizeof(int64_t), 0);
    s->calib_range = std::to_string(range.begin) + ":" + std::to_string(range.begin + static_cast<int>(calib.size()));
    s->calib_sequences = static_cast<int64_t>(calib.size());
    s->calib_token_count = static_cast<int64_t>(flat.size());
    progress("calibration: " + s->calib_source);
  }

  if (r.mixed) {
    if (calib.empty())
      return InvalidArgument("a bpw budget needs calibration data to measure sensitivities: pass --calib FILE "
                             "(e.g. ../shared/text/tinystories_valid_800.txt; stories 0:128 by default)");
    const auto tm = std::chrono::steady_clock::now();
    quant::MixedOptions mo;
    mo.bpw = r.mixed_bpw;
    mo.candidates = r.candidates;
    mo.rounds = r.rounds;
    mo.threads = opt.threads;
    mo.gptq = r.gptq;
    mo.progress = progress;
    for (const auto& u : uses)
      for (const auto& o : r.overrides)
        if (recipe_matches(o.match, u)) {
          mo.fixed[u.tensor] = o.choice;
          break;
        }
    std::vector<std::vector<int64_t>> sens;
    int64_t n = 0;
    for (const auto& q : calib) {
      if (n >= r.sensitivity_tokens) break;
      std::vector<int64_t> x = q;
      if (n + static_cast<int64_t>(x.size()) > r.sensitivity_tokens) x.resize(static_cast<size_t>(r.sensitivity_tokens - n));
      if (x.size() < 2) break;
      n += static_cast<int64_t>(x.size());
      sens.push_back(std::move(x));
    }
    auto mr = quant::allocate_mixed(lifted, calib, sens, mo);
    if (!mr.ok()) return mr.status().with_context("recipe '" + r.name + "'");
    choices = mr->choices;
    s->mixed_log = mr->log;
    s->mixed_budget = r.mixed_bpw;
    s->mixed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tm).count();
    // Sensitivities into the plan below.
    for (const auto& [t, sv] : mr->sensitivity) {
      const auto& ch = choices[t];
      for (size_t c = 0; c < mo.candidates.size(); ++c)
        if (quant::to_string(mo.candidates[c]) == quant::to_string(ch)) (*meta)["quant.sensitivity." + t] = std::to_string(sv[c]);
    }
  }

  if (r.qad) {
    if (opt.calib_path.empty())
      return InvalidArgument("quantization-aware distillation needs training text: pass --calib FILE (stories " +
                             std::to_string(r.qad_stories.begin) + ":" + std::to_string(r.qad_stories.end) + " are used)");
    const auto tq = std::chrono::steady_clock::now();
    std::string src;
    KERF_ASSIGN_OR_RETURN(auto seqs, calibration_sequences(opt.calib_path, r.qad_stories, 0, tokenizer, vocab, lifted, &src));
    const size_t n_val = static_cast<size_t>(std::floor(r.qad_val_fraction * static_cast<double>(seqs.size())));
    std::vector<std::vector<int64_t>> val(seqs.end() - static_cast<std::ptrdiff_t>(n_val), seqs.end());
    seqs.resize(seqs.size() - n_val);
    // The teacher is the FP model (the unpruned one after pruning), taken before any initialization;
    // a copy only when it is `lifted` itself.
    std::optional<ir::Graph> fp;
    if (!teacher_graph) fp = lifted;
    const ir::Graph& teacher = teacher_graph ? *teacher_graph : *fp;
    if (r.qad_init_gptq) {
      // Training starts from the post-training result: every quantized matrix is GPTQ-quantized
      // with its precision and rule, and its latent weights become the dequantized values. GPTQ for
      // every choice: no AWQ fold, so quantize_calibrated leaves `lifted` as it is (no copy needed).
      if (calib.empty()) return InvalidArgument("qad.init: gptq needs calibration data: pass --calib FILE");
      std::map<std::string, quant::TensorChoice> gc = choices;
      for (auto& [t, ch] : gc) ch.method = quant::Method::kGptq;
      const quant::CalibOptions co = calib_options();
      const auto ti = std::chrono::steady_clock::now();
      auto qm = quant::quantize_calibrated(lifted, gc, calib, co);
      if (!qm.ok()) return qm.status().with_context("qad.init: gptq");
      for (const auto& [name, qt] : qm->tensors) {
        if (gc.at(name).spec.plain()) continue;
        KERF_ASSIGN_OR_RETURN(std::vector<float> d, quant::dequantize(qt));
        lifted.initializers[name] = ir::Tensor::from_f32({qt.rows, qt.cols}, d);
      }
      char buf[160];
      std::snprintf(buf, sizeof buf, "qad: latent weights start at the GPTQ result (%.3f bpw, %.1f s)", qm->bpw,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - ti).count());
      progress(buf);
      (*meta)["compile.qad_init"] = "gptq";
    }
    std::map<std::string, std::pair<quant::QSpec, quant::ParamRule>> prec;
    for (auto& [t, ch] : choices) {
      // The emitted quantizer must be the one in the training forward: RTN with the tensor's rule
      // (the importance search uses calibration statistics the training forward does not have).
      if (ch.rule == quant::ParamRule::kSearch) ch.rule = quant::ParamRule::kRtn;
      ch.method = quant::Method::kRtn;
      prec[t] = {ch.spec, ch.rule};
    }
    distill::QadOptions qo = r.qad_options;
    if (opt.seed >= 0) qo.seed = static_cast<uint64_t>(opt.seed);
    qo.threads = opt.threads;
    qo.progress = progress;
    KERF_RETURN_IF_ERROR(add_teacher_samples(teacher, r.qad_teacher_samples, qo.seed + 7, opt.threads, "qad", progress, &seqs, &src));
    if (r.qad_teacher_samples <= 0 && !distill_samples.empty()) {
      // After pruning, the quantization-aware phase trains on the distillation's teacher samples too
      // (the stories alone are memorized within its steps, as they were in distillation).
      size_t toks = 0;
      for (const auto& q : distill_samples) toks += q.size(), seqs.push_back(q);
      src += " + the distillation's " + std::to_string(distill_samples.size()) + " teacher samples (" + std::to_string(toks) + " tokens)";
    }
    if (qo.hidden_weight > 0) {
      KERF_ASSIGN_OR_RETURN(qo.hidden_pairs, block_output_pairs(lifted, teacher, "qad.hidden_weight"));
    }
    auto qr = distill::quantization_aware_distill(lifted, teacher, prec, seqs, val, qo);
    if (!qr.ok()) return qr.status().with_context("quantization-aware distillation");
    // Learned scales: the emitted tensors are quantized with the trained group parameters.
    for (auto& [t, gp] : qr->params) choices.at(t).params = std::move(gp);
    if (qo.learn_scales) (*meta)["compile.qad_learn_scales"] = std::to_string(qr->params.size()) + " tensors";
    s->qad_log = qr->log;
    s->qad_log.push_back(training_summary("qad", *qr, src, n_val));
    (*meta)["compile.qad"] = s->qad_log.back();
    s->qad_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tq).count();
  }

  quant::CalibOptions co = calib_options();
  co.awq = r.awq;
  co.awq_clip = r.awq_clip;
  co.progress = progress;
  co.phase_seconds = &s->calib_phase_seconds;
  const auto tq = std::chrono::steady_clock::now();
  KERF_ASSIGN_OR_RETURN(s->quant, quant::quantize_calibrated(lifted, choices, calib, co));
  s->calib_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tq).count();
  for (auto& p : s->quant.plan) {
    if (r.qad) p.method += "+qad";
    auto it = meta->find("quant.sensitivity." + p.name);
    if (it != meta->end()) p.sensitivity = std::stod(it->second);
    if (r.strict && p.note.find("skipped") != std::string::npos)
      return InvalidArgument("--strict: weight '" + p.name + "': " + p.note);
  }
  for (auto it = meta->begin(); it != meta->end();) it = it->first.rfind("quant.sensitivity.", 0) == 0 ? meta->erase(it) : std::next(it);
  if (r.mixed && r.strict && s->quant.bpw > r.mixed_bpw + 1e-9)
    return InvalidArgument("--strict: allocated " + std::to_string(s->quant.bpw) + " bpw exceeds the budget " + std::to_string(r.mixed_bpw));
  s->recipe = r.name + (r.mixed ? " (mixed, budget " + std::to_string(r.mixed_bpw).substr(0, 5) + " bpw)" : "") +
              (r.qad ? " + quantization-aware distillation" : "");
  (*meta)["compile.recipe_text"] = r.source_text;
  if (s->recipe_hash) (*meta)["compile.recipe_hash"] = hex64(s->recipe_hash);
  if (!calib.empty()) {
    (*meta)["compile.calib_hash"] = hex64(s->calib_hash);
    // The file's name, not the path as given: the artifact must not depend on where the text lies.
    (*meta)["compile.calib_source"] = std::filesystem::path(opt.calib_path).filename().string() +
                                      s->calib_source.substr(std::min(opt.calib_path.size(), s->calib_source.size()));
  }
  return Status::Ok();
}

/// The checkpoint path recorded in the artifact ("distill.checkpoint"): relative to the artifact's
/// folder when the checkpoint lies in it or below (the default OUTPUT.ckpt), so that the same compile
/// into another folder gives the same bytes; otherwise absolute. `kerf eval` resolves a relative
/// one against the artifact's folder.
std::string checkpoint_ref(const std::string& ck, const std::string& output_path) {
  std::error_code ec;
  const std::filesystem::path abs = std::filesystem::absolute(ck, ec).lexically_normal();
  if (ec) return ck;
  const std::filesystem::path dir = std::filesystem::absolute(output_path, ec).parent_path().lexically_normal();
  if (ec) return abs.string();
  const std::filesystem::path rel = abs.lexically_relative(dir);
  if (rel.empty() || *rel.begin() == "..") return abs.string();
  return rel.string();
}

bool pruning_requested(const CompileOptions& opt) {
  return opt.keep_heads < 1 || opt.keep_ffn < 1 || opt.keep_embed < 1 || opt.drop_blocks > 0 || !opt.prune_budget.empty();
}

std::string cost_line(const std::string& stage, const prune::Cost& c, uint64_t bytes_f32) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-10s %9lld params  %8.3f MFLOP/token decode @ctx %lld  %8.3f MFLOP/token prefill (%lld-token prompt)  %llu bytes f32",
                stage.c_str(), static_cast<long long>(c.parameters), c.decode_flops / 1e6, static_cast<long long>(c.context),
                c.prefill_flops / 1e6, static_cast<long long>(c.context), static_cast<unsigned long long>(bytes_f32));
  return buf;
}

/// Structured pruning, then knowledge distillation against the unpruned model. `lifted` becomes the
/// (trained, float32) student; `teacher` receives the original.
Status prune_and_distill(const CompileOptions& opt, const Recipe* recipe, ir::Graph& lifted, ir::Graph* teacher,
                         std::vector<std::vector<int64_t>>* samples,
                         const std::vector<uint8_t>& tokenizer, int64_t vocab, CompileSummary* s,
                         std::map<std::string, std::string>* meta) {
  auto progress = [&](const std::string& line) {
    if (opt.progress) progress::log(line);  // a log line / event of the process's reporter (progress.h)
  };
  const auto t0 = std::chrono::steady_clock::now();
  *teacher = lifted;
  KERF_ASSIGN_OR_RETURN(prune::Model m, prune::analyze(lifted));
  prune::PruneOptions po;
  po.keep_heads = opt.keep_heads;
  po.keep_ffn = opt.keep_ffn;
  po.keep_embed = opt.keep_embed;
  po.drop_blocks = opt.drop_blocks;
  if (!opt.head_mode.empty()) {
    KERF_ASSIGN_OR_RETURN(po.head_mode, prune::parse_head_mode(opt.head_mode));
  }
  prune::ImportanceOptions io;
  io.metric = prune::Metric::kActivation;
  if (!opt.importance.empty()) {
    KERF_ASSIGN_OR_RETURN(io.metric, prune::parse_metric(opt.importance));
  }
  const int64_t max_seq = model_max_seq(lifted);
  const int64_t ctx = max_seq / 2;
  if (!opt.prune_budget.empty()) {
    const auto colon = opt.prune_budget.find(':');
    double frac = 0;
    try {
      frac = colon == std::string::npos ? -1 : std::stod(opt.prune_budget.substr(colon + 1));
    } catch (const std::exception&) {
      frac = -1;
    }
    if (frac <= 0) return InvalidArgument("--prune-budget '" + opt.prune_budget + "': expected flops:F or params:F with 0 < F < 1");
    KERF_ASSIGN_OR_RETURN(po, prune::solve_budget(lifted, m, opt.prune_budget.substr(0, colon), frac, ctx, po));
  }
  io.depth = po.drop_blocks > 0;
  io.threads = opt.threads;
  io.progress = progress;
  std::vector<std::vector<int64_t>> calib;
  const bool measured = opt.prune_alloc == "measured";
  if (io.metric != prune::Metric::kMagnitude || io.depth || measured) {
    if (opt.calib_path.empty())
      return InvalidArgument(measured ? std::string("--prune-alloc measured needs calibration text: pass --calib FILE")
                                      : std::string("pruning by ") + prune::metric_name(io.metric) +
                                            " importance needs calibration text: pass --calib FILE (or --importance magnitude)");
    const StoryRange range = opt.calib_stories ? *opt.calib_stories : StoryRange{0, 128};
    std::string src;
    KERF_ASSIGN_OR_RETURN(calib, calibration_sequences(opt.calib_path, range, 0, tokenizer, vocab, lifted, &src));
  }
  KERF_ASSIGN_OR_RETURN(prune::Scores sc, prune::compute_importance(lifted, m, calib, io));
  KERF_ASSIGN_OR_RETURN(prune::Plan plan, prune::make_plan(m, sc, po));
  if (plan.identity()) return InvalidArgument("pruning: the keep fractions round to the full model (nothing to remove)");
  if (measured) {
    prune::AllocationOptions ao;
    ao.threads = opt.threads;
    ao.progress = progress;
    KERF_ASSIGN_OR_RETURN(plan, prune::allocate_widths(lifted, m, sc, po.head_mode, plan, calib, ao));
  }
  KERF_ASSIGN_OR_RETURN(prune::Cost before, prune::count_cost(lifted, ctx));
  KERF_RETURN_IF_ERROR(prune::apply_plan(lifted, m, plan));
  if (!sc.attn_gram.empty()) KERF_RETURN_IF_ERROR(prune::compensate(lifted, *teacher, m, plan, sc));
  KERF_ASSIGN_OR_RETURN(prune::Cost after, prune::count_cost(lifted, ctx));
  {
    const prune::Block& b = m.blocks[0];
    // Per-block counts: one number when every block keeps the same, else the list ("8,6,6,4,6").
    auto counts = [&](const std::vector<std::vector<int64_t>>& kept, int64_t full) {
      if (kept.empty()) return std::to_string(full);
      std::string one = std::to_string(kept[0].size()), all;
      bool same = true;
      for (const auto& k : kept) {
        same = same && k.size() == kept[0].size();
        all += (all.empty() ? "" : ",") + std::to_string(k.size());
      }
      return same ? one : all;
    };
    const int64_t d = plan.embed.empty() ? m.dim : static_cast<int64_t>(plan.embed.size());
    char buf[600];
    std::snprintf(buf, sizeof buf,
                  "kept %s/%lld query heads (%s/%lld KV groups, %s), %s/%lld FFN channels per block%s, %lld/%lld embedding channels, %zu/%zu blocks (%s importance); "
                  "decode FLOPs/token -%.1f %%, parameters -%.1f %%",
                  counts(plan.heads, b.n_heads).c_str(), static_cast<long long>(b.n_heads), counts(plan.kv_groups, b.n_kv_heads).c_str(),
                  static_cast<long long>(b.n_kv_heads), prune::head_mode_name(po.head_mode), counts(plan.ffn, b.ffn_dim).c_str(),
                  static_cast<long long>(b.ffn_dim), measured ? " (measured allocation)" : "", static_cast<long long>(d),
                  static_cast<long long>(m.dim), m.blocks.size() - plan.dropped_blocks.size(), m.blocks.size(), prune::metric_name(io.metric),
                  100.0 * (1.0 - after.decode_flops / before.decode_flops),
                  100.0 * (1.0 - static_cast<double>(after.parameters) / static_cast<double>(before.parameters)));
    s->prune_text = buf;
    progress(std::string("pruning: ") + buf);
  }
  s->stage_lines.push_back(cost_line("original", before, static_cast<uint64_t>(before.parameters) * 4));
  s->stage_lines.push_back(cost_line("pruned", after, static_cast<uint64_t>(after.parameters) * 4));
  (*meta)["prune.plan"] = prune::to_text(plan);
  (*meta)["prune.summary"] = s->prune_text;
  (*meta)["prune.importance"] = prune::metric_name(io.metric);
  auto put_cost = [&](const std::string& stage, const prune::Cost& c) {
    (*meta)["stage." + stage + ".params"] = std::to_string(c.parameters);
    (*meta)["stage." + stage + ".decode_flops"] = std::to_string(static_cast<long long>(c.decode_flops));
    (*meta)["stage." + stage + ".prefill_flops"] = std::to_string(static_cast<long long>(c.prefill_flops));
    (*meta)["stage." + stage + ".context"] = std::to_string(c.context);
  };
  put_cost("original", before);
  put_cost("pruned", after);
  std::map<std::string, std::string> stage_meta;  // carried by the checkpoint for `kerf compile --student`
  for (const auto& [k, v] : *meta)
    if (k.rfind("stage.", 0) == 0 || k.rfind("prune.", 0) == 0) stage_meta[k] = v;
  s->prune_seconds = since(t0);

  distill::QadOptions qo;
  qo.label = "distill";
  qo.batch = 6;
  qo.seq_len = static_cast<int>(max_seq);
  qo.lr = 2e-3;
  qo.steps = 0;
  StoryRange train_stories{0, 400};
  double val_fraction = 0.05;
  if (recipe && recipe->distill) {
    qo = recipe->distill_options;
    train_stories = recipe->distill_stories;
    val_fraction = recipe->distill_val_fraction;
  }
  if (opt.distill_steps >= 0) qo.steps = opt.distill_steps;
  if (opt.seed >= 0) qo.seed = static_cast<uint64_t>(opt.seed);
  const int steps = qo.steps;
  // The checkpoint sits beside the artifact by default: it holds the pruned (compensated) and the
  // distilled weights, which `kerf eval` scores for the stage table; --resume continues from it.
  std::string ck = opt.checkpoint_path.empty() ? opt.output_path + ".ckpt" : opt.checkpoint_path;
  {
    std::error_code ec;
    const auto abs = std::filesystem::absolute(ck, ec);
    if (!ec) ck = abs.string();
  }
  if (steps <= 0) {
    distill::Checkpoint c;
    c.meta["prune.plan"] = prune::to_text(plan);
    c.meta["prune.summary"] = s->prune_text;
    for (const auto& [k, v] : stage_meta) c.meta[k] = v;
    c.meta["source"] = std::filesystem::path(opt.model_path).filename().string();
    KERF_ASSIGN_OR_RETURN(std::vector<quant::WeightUse> uses, quant::enumerate_weights(lifted));
    for (const auto& u : uses) {
      const ir::Tensor& t = lifted.initializers.at(u.tensor);
      c.tensors.push_back({u.tensor + "#init", t.shape, t.to_f32()});
    }
    KERF_RETURN_IF_ERROR(distill::save_checkpoint(ck, c));
  }
  if (steps > 0) {
    if (opt.calib_path.empty()) return InvalidArgument("distillation needs training text: pass --calib FILE (stories 0:400 are used)");
    const auto td = std::chrono::steady_clock::now();
    std::string src;
    KERF_ASSIGN_OR_RETURN(auto seqs, calibration_sequences(opt.calib_path, train_stories, 0, tokenizer, vocab, *teacher, &src));
    const size_t n_val = static_cast<size_t>(std::floor(val_fraction * static_cast<double>(seqs.size())));
    std::vector<std::vector<int64_t>> val(seqs.end() - static_cast<std::ptrdiff_t>(n_val), seqs.end());
    seqs.resize(seqs.size() - n_val);
    // Data-free augmentation: by default one teacher-sampled sequence per distillation step (the
    // 400 training stories alone are memorized: on stories260K, 25 % heads / 50 % FFN pruned, the
    // validation KL after 2,000 steps was 0.30 without samples, 0.22 with 1,000).
    const int n_samples = opt.teacher_samples >= 0 ? opt.teacher_samples : (recipe && recipe->distill ? recipe->teacher_samples : steps);
    const size_t n_stories = seqs.size();
    KERF_RETURN_IF_ERROR(add_teacher_samples(*teacher, n_samples, qo.seed + 7, opt.threads, "distill", progress, &seqs, &src));
    samples->assign(seqs.begin() + static_cast<std::ptrdiff_t>(n_stories), seqs.end());
    KERF_ASSIGN_OR_RETURN(std::vector<quant::WeightUse> uses, quant::enumerate_weights(lifted));
    std::map<std::string, std::pair<quant::QSpec, quant::ParamRule>> prec;
    for (const auto& u : uses) prec[u.tensor] = {quant::QSpec{quant::QKind::kF32, 0, 0, fmt::ScaleFormat::kF16}, quant::ParamRule::kRtn};
    if (!(recipe && recipe->distill)) {
      qo.warmup = std::min(100, steps / 10);
      qo.eval_every = std::max(25, steps / 10);
    }
    if (qo.hidden_weight > 0) {
      KERF_ASSIGN_OR_RETURN(qo.hidden_pairs, block_output_pairs(lifted, *teacher, "distill.hidden_weight"));
    }
    qo.threads = opt.threads;
    qo.progress = progress;
    qo.checkpoint_path = ck;
    qo.checkpoint_initial = true;
    qo.checkpoint_every = std::max(50, steps / 10);
    qo.resume = opt.resume;
    qo.checkpoint_meta["prune.plan"] = prune::to_text(plan);
    qo.checkpoint_meta["prune.summary"] = s->prune_text;
    for (const auto& [k, v] : stage_meta) qo.checkpoint_meta[k] = v;
    qo.checkpoint_meta["source"] = std::filesystem::path(opt.model_path).filename().string();
    KERF_ASSIGN_OR_RETURN(std::unique_ptr<distill::DataParallel> dp, distill::DataParallel::from_env());
    if (dp->world_size() > 1) {
      qo.dp = dp.get();
      progress("distill: data parallel, " + dp->describe());
      s->distributed_rank = dp->rank();
    }
    auto dr = distill::quantization_aware_distill(lifted, *teacher, prec, seqs, val, qo);
    if (!dr.ok()) return dr.status().with_context("distillation");
    s->distill_log = dr->log;
    s->distill_log.push_back(training_summary("distill", *dr, src, n_val));
    (*meta)["compile.distill"] = s->distill_log.back();
    s->distill_seconds = since(td);
  }
  if (s->distributed_rank == 0) {
    auto h = file_xxh64(ck);
    if (!h.ok()) return h.status().with_context("pruning / distillation checkpoint");
    (*meta)["distill.checkpoint"] = checkpoint_ref(ck, opt.output_path);
    (*meta)["distill.checkpoint_xxh64"] = hex64(*h);
  }
  return Status::Ok();
}

/// `kerf compile --student CKPT`: the pruned student of a `kerf distill` checkpoint (its plan applied
/// to the model, then its best — or initial — weights). `teacher` receives the unpruned model.
Status load_student(const CompileOptions& opt, ir::Graph& lifted, ir::Graph* teacher, CompileSummary* s,
                    std::map<std::string, std::string>* meta) {
  KERF_ASSIGN_OR_RETURN(distill::Checkpoint ck, distill::load_checkpoint(opt.student_path));
  auto it = ck.meta.find("prune.plan");
  if (it == ck.meta.end()) return BadInput(opt.student_path + ": not a kerf distill checkpoint (no prune.plan)");
  KERF_ASSIGN_OR_RETURN(prune::Plan plan, prune::plan_from_text(it->second));
  *teacher = lifted;
  KERF_ASSIGN_OR_RETURN(prune::Model m, prune::analyze(lifted));
  Status st = prune::apply_plan(lifted, m, plan);
  if (!st.ok()) return st.with_context(opt.student_path + ": its pruning plan does not fit " + opt.model_path);
  bool best = false;
  for (const auto& t : ck.tensors) best |= t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, "#best") == 0;
  const std::string suffix = best ? "#best" : "#init";
  size_t n = 0;
  for (const auto& t : ck.tensors) {
    const auto h = t.name.find('#');
    if (h == std::string::npos || t.name.substr(h) != suffix) continue;
    const std::string name = t.name.substr(0, h);
    auto w = lifted.initializers.find(name);
    if (w == lifted.initializers.end() || w->second.shape != t.shape)
      return BadInput(opt.student_path + ": tensor '" + name + "' is not in the pruned model or has another shape");
    w->second = ir::Tensor::from_f32(t.shape, t.data);
    ++n;
  }
  if (n == 0) return BadInput(opt.student_path + ": the checkpoint holds no student weights");
  for (const auto& [k, v] : ck.meta)
    if (k.rfind("stage.", 0) == 0 || k.rfind("prune.", 0) == 0) (*meta)[k] = v;
  s->prune_text = (*meta)["prune.summary"] + " (from " + opt.student_path + ")";
  KERF_ASSIGN_OR_RETURN(uint64_t h, file_xxh64(opt.student_path));
  std::error_code ec;
  const auto abs = std::filesystem::absolute(opt.student_path, ec);
  (*meta)["distill.checkpoint"] = ec ? opt.student_path : checkpoint_ref(abs.string(), opt.output_path);
  (*meta)["distill.checkpoint_xxh64"] = hex64(h);
  return Status::Ok();
}

}  // namespace

namespace {
/// Stores every quantized weight named in `names` that artifact::tiled_problem() accepts in the
/// tiled layout with 2^log2_rows rows per tile (lossless, formats/artifact/pack.h); the plan follows
/// the stored dtype, flags and group (its bits, hence bpw, are unchanged). Weights that cannot be
/// tiled stay plain and are listed in *untiled with the reason.
Status tile_weights(uint32_t log2_rows, const std::set<std::string>& names, quant::QuantizedModel* q,
                    std::vector<std::pair<std::string, std::string>>* untiled) {
  for (quant::TensorPlan& p : q->plan) {
    if (!names.count(p.name)) continue;
    auto it = q->tensors.find(p.name);
    if (it == q->tensors.end()) continue;
    quant::QuantTensor& qt = it->second;
    artifact::TensorRecord rec{p.name, qt.dtype, {qt.rows, qt.cols}, uint32_t(qt.group_size), std::move(qt.payload), qt.flags};
    if (const char* why = artifact::tiled_problem(rec)) {
      untiled->emplace_back(p.name, why);
      qt.payload = std::move(rec.payload);
      continue;
    }
    artifact::TensorRecord t;
    std::string err;
    if (!artifact::pack_tiled(rec, log2_rows, &t, &err)) return Internal("tiled layout: " + err);
    qt.dtype = p.dtype = t.dtype;
    qt.flags = p.flags = t.flags;
    qt.group_size = p.group_size = int32_t(t.group_size);
    qt.payload = std::move(t.payload);
  }
  return Status::Ok();
}
}  // namespace

Result<CompileSummary> compile(const CompileOptions& opt) {
  CompileSummary s;
  const auto t_start = std::chrono::steady_clock::now();
  // --target a,b,c: one artifact per device profile, sharing everything before placement.
  std::vector<targets::DeviceProfile> profiles;
  {
    std::set<std::string> seen;
    std::string rest = opt.target;
    while (true) {
      const size_t comma = rest.find(',');
      const std::string name = rest.substr(0, comma);
      if (name.empty()) return InvalidArgument("--target '" + opt.target + "': empty profile name");
      KERF_ASSIGN_OR_RETURN(targets::DeviceProfile p, targets::load_profile(name));
      if (!seen.insert(p.name).second) return InvalidArgument("--target '" + opt.target + "': " + p.name + " is listed twice");
      profiles.push_back(std::move(p));
      if (comma == std::string::npos) break;
      rest = rest.substr(comma + 1);
    }
    if (profiles.size() > 1 && !opt.distill_only) {
      std::error_code ec;
      if (std::filesystem::exists(opt.output_path, ec) && !std::filesystem::is_directory(opt.output_path, ec))
        return InvalidArgument("-o " + opt.output_path + ": with several targets the output is a folder (one NAME.kerf per target), "
                               "and this is a file");
    }
  }
  if (opt.export_qdq && std::none_of(profiles.begin(), profiles.end(), [](const targets::DeviceProfile& p) { return p.npu.present; }))
    return InvalidArgument("--export-qdq: no --target profile has an npu (e.g. snapdragon-8-gen3, dimensity-9300)");
  std::vector<std::vector<int32_t>> npu_seqs;  // the npu's calibration tokens, shared by the targets
  KERF_RETURN_IF_ERROR(quant::validate(opt.quant));
  if (opt.output_path.empty()) return InvalidArgument("no output path (-o)");

  auto t0 = std::chrono::steady_clock::now();
  KERF_ASSIGN_OR_RETURN(ir::Graph imported, import_model(opt.model_path));
  s.import_seconds = since(t0);
  s.imported_nodes = imported.nodes.size();
  ir::Graph lifted = imported;
  t0 = std::chrono::steady_clock::now();
  PassContext pctx;
  Status st = passes::run_pipeline(lifted, "canonicalize", &pctx);
  if (!st.ok()) return st.with_context(opt.model_path);
  s.passes_seconds = since(t0);
  s.lifted_nodes = lifted.nodes.size();
  s.lifted_ops = lifted.op_histogram();
  KERF_ASSIGN_OR_RETURN(int64_t vocab, vocab_size_of(lifted));

  std::string tok_path = opt.tokenizer_path;
  if (tok_path.empty()) {
    KERF_ASSIGN_OR_RETURN(tok_path, find_tokenizer_beside(opt.model_path));
  }
  KERF_ASSIGN_OR_RETURN(std::vector<uint8_t> tokenizer, read_llama2c_tokenizer(tok_path, vocab));

  if (opt.verify_lift) {
    // The lifted graph must compute what the imported one does: same logits on a probe.
    t0 = std::chrono::steady_clock::now();
    distill::ReferenceOptions ro;
    ro.threads = opt.threads;
    KERF_ASSIGN_OR_RETURN(auto ref_in, distill::ReferenceExecutor::create(imported, ro));
    KERF_ASSIGN_OR_RETURN(auto ref_out, distill::ReferenceExecutor::create(lifted, ro));
    std::vector<int64_t> probe = {1};
    for (int i = 0; i < 23; ++i) probe.push_back(3 + (i * 37 + 11) % std::max<int64_t>(vocab - 3, 1));
    KERF_ASSIGN_OR_RETURN(auto a, ref_in.forward_tokens(probe));
    KERF_ASSIGN_OR_RETURN(auto b, ref_out.forward_tokens(probe));
    if (a.size() != b.size()) return Internal("lifted graph's logits have another size than the imported graph's");
    double diff = 0, scale = 1;
    for (size_t i = 0; i < a.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(a[i])));
    }
    s.lift_max_abs_diff = diff;
    s.verify_seconds = since(t0);
    // Both graphs run in float32 on the same weights; an fp16 source also carries fp16-rounded RoPE
    // tables that the lifted Rotary recomputes exactly (measured on stories260K: 1.8e-5 from the
    // fp32 export, 0.02 from the fp16 one, with logits up to ~15).
    bool f16_source = false;
    for (const auto& [name, t] : imported.initializers) f16_source |= t.dtype == ir::DType::kF16 || t.dtype == ir::DType::kBF16;
    const double tol = (f16_source ? 5e-3 : 1e-4) * scale;
    if (diff > tol)
      return Internal("lifting changed the model: probe logits differ by " + std::to_string(diff) +
                      " (tolerance " + std::to_string(tol) + ") between the imported and the lifted graph");
  }

  t0 = std::chrono::steady_clock::now();
  std::map<std::string, std::string> extra_meta;
  CompileOptions popt = opt;  // pruning / distillation settings: the command line over the recipe
  Recipe recipe;
  const bool have_recipe = !opt.recipe_path.empty();
  if (have_recipe) {
    KERF_ASSIGN_OR_RETURN(recipe, parse_recipe_file(opt.recipe_path));
    for (const auto& [k, v] : verify_metadata(recipe.verify)) extra_meta[k] = v;  // kerf verify's thresholds
    if (recipe.prune) {
      if (!(opt.keep_heads < 1)) popt.keep_heads = recipe.keep_heads;
      if (!(opt.keep_ffn < 1)) popt.keep_ffn = recipe.keep_ffn;
      if (!(opt.keep_embed < 1)) popt.keep_embed = recipe.keep_embed;
      if (opt.drop_blocks == 0) popt.drop_blocks = recipe.drop_blocks;
      if (opt.head_mode.empty()) popt.head_mode = recipe.head_mode;
      if (opt.importance.empty()) popt.importance = recipe.importance;
      if (opt.prune_budget.empty()) popt.prune_budget = recipe.prune_budget;
      if (opt.prune_alloc.empty()) popt.prune_alloc = recipe.prune_alloc;
    }
  }
  const bool from_student = !opt.student_path.empty();
  if (from_student && (pruning_requested(popt) || opt.distill_only))
    return InvalidArgument("--student takes the pruning from the checkpoint: drop --keep-* / --prune-budget / --drop-blocks");
  const bool pruning = pruning_requested(popt) || from_student;
  if (opt.distill_only) {
    if (!pruning) return InvalidArgument("kerf distill needs a pruning target: --keep-heads / --keep-ffn / --keep-embed / --drop-blocks / --prune-budget");
    popt.checkpoint_path = opt.output_path;
    popt.qad_steps = 0;
  }
  // The final phase of distillation trains under the quantizers the artifact will use (QAD): by
  // default the last 20 % of --distill-steps when the recipe has no qad: section of its own.
  if (pruning && popt.qad_steps < 0 && !(have_recipe && recipe.qad)) {
    const int total = popt.distill_steps >= 0 ? popt.distill_steps : (have_recipe && recipe.distill ? recipe.distill_options.steps : 0);
    if (total >= 10) {
      popt.qad_steps = total / 5;
      popt.distill_steps = total - popt.qad_steps;
    }
  }
  ir::Graph teacher;
  std::vector<std::vector<int64_t>> distill_samples;  // teacher samples the distillation trained on
  if (from_student) {
    KERF_RETURN_IF_ERROR(load_student(popt, lifted, &teacher, &s, &extra_meta));
  } else if (pruning) {
    KERF_RETURN_IF_ERROR(prune_and_distill(popt, have_recipe ? &recipe : nullptr, lifted, &teacher, &distill_samples, tokenizer, vocab, &s, &extra_meta));
    if (s.distributed_rank > 0) return s;  // data-parallel worker: rank 0 quantizes and writes
    if (opt.distill_only) {
      std::error_code ec;
      s.bytes = std::filesystem::file_size(opt.output_path, ec);
      s.recipe = "distillation only";
      s.total_seconds = since(t_start);
      return s;
    }
  } else if (opt.distill_steps > 0 || (have_recipe && recipe.distill && recipe.distill_options.steps > 0)) {
    return InvalidArgument("--distill-steps needs a pruned student: add --keep-heads / --keep-ffn / --prune-budget");
  }
  const bool calibrated = !opt.recipe_path.empty() || opt.bpw > 0 || !opt.linear_spec.empty() ||
                          !opt.embedding_spec.empty() || !opt.method.empty() || pruning;
  if (calibrated) {
    KERF_RETURN_IF_ERROR(compile_calibrated(popt, lifted, pruning ? &teacher : nullptr, distill_samples, tokenizer, vocab, &s, &extra_meta));
  } else {
    const bool npu_target = std::any_of(profiles.begin(), profiles.end(), [](const targets::DeviceProfile& p) { return p.npu.present; });
    if (!opt.calib_path.empty() && !npu_target)
      return InvalidArgument("--calib given but the RTN baseline needs no calibration: add --method, --recipe or --bpw "
                             "(or a --target with an npu, whose static activation scales use it)");
    KERF_ASSIGN_OR_RETURN(s.quant, quant::quantize_graph_rtn(lifted, opt.quant));
    s.recipe = recipe_name(opt.quant);
  }
  s.quant_seconds = since(t0);

  // Per device: placement, the device's weight forms (tiled for the cpu, per-channel ints for the
  // npu, plain for the gpu), the npu's static scales, then the artifact and its manifest. The
  // import, pruning, distillation and calibrated quantization above are shared by every target.
  // The program the placement pass reads is the same for every target: built once from the plain
  // (untiled) weights; the payloads are dropped at once (only the ops and tensor names are used).
  artifact::ArtifactBuilder plain;
  {
    EmitOptions eo;
    eo.tokenizer = tokenizer;
    eo.target = profiles.front().name;
    KERF_ASSIGN_OR_RETURN(plain, build_artifact(lifted, s.quant, eo));
  }
  const targets::Program program = targets::program_of(plain);
  for (artifact::TensorRecord& t : plain.tensors()) std::vector<uint8_t>().swap(t.payload);
  for (size_t ti = 0; ti < profiles.size(); ++ti) {
    const targets::DeviceProfile& prof = profiles[ti];
    t0 = std::chrono::steady_clock::now();
    TargetResult tr;
    tr.name = prof.name;
    tr.bpw = s.quant.bpw;
    tr.output_path = profiles.size() == 1 ? opt.output_path : (std::filesystem::path(opt.output_path) / (prof.name + ".kerf")).string();
    EmitOptions eo;
    eo.tokenizer = tokenizer;
    eo.recipe = s.recipe;
    eo.target = prof.name;
    eo.source_name = std::filesystem::path(opt.model_path).filename().string();
    eo.producer_version = opt.producer_version;
    eo.bpw_budget = s.mixed_budget;
    eo.extra_meta = extra_meta;
    // 1. placement
    targets::PlaceOptions po;
    po.pins = opt.place_pins;
    if (have_recipe) po.pins.insert(po.pins.end(), recipe.placement.begin(), recipe.placement.end());
    po.strict = opt.strict || (have_recipe && recipe.strict);
    KERF_ASSIGN_OR_RETURN(tr.placement, targets::place(program, prof, po));
    // 2. weight layouts: the cpu's tiled layout for weights only cpu ops read
    quant::QuantizedModel q = s.quant;
    const int tile_log2 = prof.cpu.kernels == "plain" ? -1 : 2;
    tr.layout = tile_log2 < 0 ? "plain" : "tiled" + std::to_string(1 << tile_log2);
    if (tile_log2 >= 0) {
      const auto names = targets::cpu_only_tensors(plain, tr.placement);
      KERF_RETURN_IF_ERROR(tile_weights(uint32_t(tile_log2), std::set<std::string>(names.begin(), names.end()), &q, &tr.untiled));
      size_t tiled = 0;
      for (const auto& p : q.plan)
        tiled += fmt::dtype_is_generic_quant(p.dtype) && fmt::qflags_layout(p.flags) == fmt::Layout::kTiled;
      if (tiled == 0) tr.layout = "plain";  // every matrix is read by a gpu / npu op (or cannot be tiled)
      std::string untiled;
      for (const auto& [name, why] : tr.untiled) untiled += (untiled.empty() ? "" : "; ") + name + ": " + why;
      if (!untiled.empty()) eo.extra_meta["compile.untiled"] = untiled;
    }
    eo.extra_meta["compile.layout"] = tr.layout;
    KERF_ASSIGN_OR_RETURN(artifact::ArtifactBuilder builder, build_artifact(lifted, q, eo));
    q.tensors.clear();
    // 3. the placement and the npu lowering
    KERF_RETURN_IF_ERROR(targets::apply_placement(builder, tr.placement, prof, lifted));
    if (tr.placement.uses("npu")) {
      if (opt.calib_path.empty())
        return InvalidArgument("target " + prof.name + " places ops on its npu, whose integer path needs static activation "
                               "scales calibrated on text: add --calib FILE (e.g. ../shared/text/tinystories_valid_800.txt)");
      if (npu_seqs.empty()) {
        KERF_ASSIGN_OR_RETURN(auto all, read_stories(opt.calib_path));
        const StoryRange r = popt.calib_stories.value_or(StoryRange{0, 128});
        KERF_ASSIGN_OR_RETURN(auto texts, select_stories(all, r, opt.calib_path));
        KERF_ASSIGN_OR_RETURN(npu_seqs, targets::tokenize_with_artifact(builder, texts, 256, 16384));
      }
      KERF_RETURN_IF_ERROR(targets::calibrate_npu(builder, prof, npu_seqs));
    }
    if (tr.placement.uses("npu")) {
      // The npu's per-channel copies change what is stored: bits per weight over the same logical
      // weights (EVAL.md), every stored matrix counted (a tied table and its npu copy both).
      int64_t bits = 0;
      std::set<std::string> planned;
      for (const auto& p : s.quant.plan) planned.insert(p.name);
      for (const artifact::TensorRecord& t : builder.tensors()) {
        const std::string base = t.name.substr(0, t.name.find("@npu"));
        if (t.shape.size() != 2 || !planned.count(base)) continue;
        KERF_ASSIGN_OR_RETURN(int64_t b, quant::logical_bits(t.dtype, t.shape[0], t.shape[1], t.group_size, t.flags));
        bits += b;
      }
      tr.bpw = s.quant.weight_count > 0 ? double(bits) / double(s.quant.weight_count) : 0;
      builder.add_meta_float(fmt::meta::kBpw, tr.bpw);
    }
    if (opt.export_qdq && tr.placement.uses("npu")) {  // the npu partition for vendor toolchains
      QdqExportOptions qo;
      qo.tokens = prof.npu.max_tokens > 0 ? prof.npu.max_tokens : 128;
      qo.producer_version = opt.producer_version;
      tr.qdq_path = (std::filesystem::path(tr.output_path).parent_path() / (prof.name + ".qdq.onnx")).string();
      if (profiles.size() > 1) {
        std::error_code ec;
        std::filesystem::create_directories(opt.output_path, ec);
      }
      KERF_RETURN_IF_ERROR(export_qdq_onnx(builder, tr.placement, qo, tr.qdq_path, &tr.qdq)
                               .with_context("--export-qdq, target " + prof.name));
    }
    if (profiles.size() > 1) {
      std::error_code ec;
      std::filesystem::create_directories(opt.output_path, ec);
      if (ec) return IoError(opt.output_path + ": cannot create the output folder: " + ec.message());
    }
    std::string err = builder.write(tr.output_path);
    if (!err.empty()) return IoError(err);
    s.write_seconds += since(t0);
    std::error_code ec;
    tr.bytes = std::filesystem::file_size(tr.output_path, ec);
    const auto t_manifest = std::chrono::steady_clock::now();
    {  // The package manifest (manifest.h), once the artifact is complete; on error neither remains.
      CompileManifestInputs mi;
      mi.tokenizer_path = tok_path;
      mi.recipe_name = have_recipe ? recipe.name : "";
      auto ck = eo.extra_meta.find("distill.checkpoint");
      if (ck != eo.extra_meta.end())
        mi.checkpoint_path = std::filesystem::path(ck->second).is_absolute()
                                 ? ck->second
                                 : (std::filesystem::path(opt.output_path).parent_path() / ck->second).string();
      CompileOptions topt = opt;
      topt.target = prof.name;
      topt.output_path = tr.output_path;
      CompileSummary ts = s;
      ts.bytes = tr.bytes;
      ts.layout = tr.layout;
      ts.untiled = tr.untiled;
      KERF_RETURN_IF_ERROR(write_compile_manifest(topt, ts, mi));
    }
    s.manifest_seconds += since(t_manifest);
    s.targets.push_back(std::move(tr));
  }
  if (opt.export_qdq && std::none_of(s.targets.begin(), s.targets.end(), [](const TargetResult& t) { return !t.qdq_path.empty(); })) {
    for (const TargetResult& t : s.targets) {  // an error leaves nothing of this run behind
      std::error_code ec;
      std::filesystem::remove(t.output_path, ec);
      std::filesystem::remove(manifest_path_for(t.output_path), ec);
    }
    return InvalidArgument("--export-qdq: no target placed an op on its npu, so there is no npu partition to export");
  }
  s.bytes = s.targets.front().bytes;
  s.layout = s.targets.front().layout;
  s.untiled = s.targets.front().untiled;
  for (auto& [name, t] : s.quant.tensors) t.payload.clear();
  s.total_seconds = since(t_start);
  return s;
}

std::vector<progress::TimingRow> compile_timing(const CompileSummary& s) {
  std::vector<progress::TimingRow> rows;
  double sum = 0;
  auto add = [&](const std::string& stage, double seconds, bool ran) {
    if (!ran) return;
    rows.push_back({stage, seconds});
    sum += seconds;
  };
  add("import", s.import_seconds, true);
  add("passes", s.passes_seconds, true);
  add("lift check", s.verify_seconds, s.lift_max_abs_diff >= 0);
  add("pruning", s.prune_seconds, !s.stage_lines.empty());  // not for --student (loaded: "other")
  add("distillation", s.distill_seconds, !s.distill_log.empty());
  add("mixed-precision allocation", s.mixed_seconds, s.mixed_budget > 0);
  add("quantization-aware distillation", s.qad_seconds, !s.qad_log.empty());
  if (s.calibrated) {
    double phases = 0;
    for (const auto& [phase, sec] : s.calib_phase_seconds) {
      add(phase, sec, true);
      phases += sec;
    }
    add("quantization (other)", std::max(0.0, s.calib_seconds - phases), true);
  } else {
    add("quantization (rtn)", s.quant_seconds, true);
  }
  add("write", s.write_seconds, true);
  add("manifest", s.manifest_seconds, s.bytes > 0);
  add("other", std::max(0.0, s.total_seconds - sum), true);
  return rows;
}

std::string targets_table() {
  std::ostringstream os;
  os << "device profiles (compiler/targets/*.yaml; --target NAME, or a NAME.yaml of your own: docs/targets.md)\n";
  for (const targets::DeviceProfile& p : targets::builtin_profiles()) {
    os << "  " << p.name << ": " << p.description << "\n";
    os << "      cpu " << p.cpu.api << " " << p.cpu.kernels << " kernels, " << p.cpu.threads << " threads";
    if (p.gpu.present) os << "; gpu " << p.gpu.api << (p.gpu.device.empty() ? "" : " (" + p.gpu.device + ")");
    if (p.npu.present)
      os << "; npu " << p.npu.api << " A" << p.npu.activation_bits << "W" << p.npu.weight_bits << " integer path";
    os << "; placement prefill " << p.prefill << ", decode " << p.decode << "\n";
  }
  return os.str();
}

std::string placement_text(const targets::Placement& p, const std::string& indent) {
  std::ostringstream os;
  char buf[256];
  std::map<std::string, int> count[2];
  for (const auto& o : p.ops)
    for (int ph = 0; ph < 2; ++ph) ++count[ph][o.unit[ph]];
  for (int ph = 1; ph >= 0; --ph) {
    os << indent << (ph ? "prefill" : "decode ") << " placement:";
    for (const auto& [u, n] : count[ph]) os << " " << u << " " << n << " ops";
    std::snprintf(buf, sizeof buf, "; %zu transfers%s; modelled %.1f us\n", p.transfers[ph].size(),
                  p.kv_handoff_us[ph] > 0 ? " + KV-cache handoffs" : "", p.total_us[ph]);
    os << buf;
  }
  for (const auto& n : p.notes) os << indent << "note: " << n << "\n";
  return os.str();
}

std::string compile_summary_text(const CompileOptions& opt, const CompileSummary& s) {
  std::ostringstream os;
  char buf[512];
  os << "kerf compile " << opt.model_path << " -> " << opt.output_path << " (target " << opt.target << ")\n";
  os << "  graph: " << s.imported_nodes << " imported nodes -> " << s.lifted_nodes << " lifted ops (";
  bool first = true;
  for (const auto& [op, n] : s.lifted_ops) {
    os << (first ? "" : ", ") << op << " x" << n;
    first = false;
  }
  os << ")\n";
  if (s.lift_max_abs_diff >= 0) {
    std::snprintf(buf, sizeof buf, "  lift verified: probe logits imported vs lifted, max |diff| = %.3g\n", s.lift_max_abs_diff);
    os << buf;
  }
  os << "  recipe: " << s.recipe << "\n";
  if (!s.calib_source.empty()) os << "  calibration: " << s.calib_source << " (hash " << hex64(s.calib_hash) << ")\n";
  if (!s.prune_text.empty()) os << "  pruning: " << s.prune_text << "\n";
  for (const auto& l : s.stage_lines) os << "    " << l << "\n";
  if (!s.distill_log.empty()) os << "  " << s.distill_log.back() << "\n";
  for (const auto& l : s.mixed_log) os << "  allocator: " << l << "\n";
  if (!s.qad_log.empty()) os << "  " << s.qad_log.back() << "\n";
  if (s.calibrated) {
    os << "  tensor                               precision          method        shape     bits/w  rel.err  out.err  sens.KL\n";
    for (const auto& p : s.quant.plan) {
      auto num = [&](double v) {
        if (v < 0) return std::string("      -");
        std::snprintf(buf, sizeof buf, "%7.4f", v);
        return std::string(buf);
      };
      const std::string oe = num(p.output_error), se = num(p.sensitivity);
      std::snprintf(buf, sizeof buf, "  %-36s %-18s %-13s %-9s %6.3f  %.4f  %s  %s  (%s)", p.name.c_str(),
                    p.precision.c_str(), p.method.c_str(), (std::to_string(p.rows) + "x" + std::to_string(p.cols)).c_str(),
                    static_cast<double>(p.bits) / static_cast<double>(p.rows * p.cols), p.rel_rms_error, oe.c_str(),
                    se.c_str(), p.role.c_str());
      os << buf;
      if (!p.note.empty()) os << "  " << p.note;
      os << "\n";
    }
  } else {
  os << "  tensor                                   precision (stored)   shape        bits/w  rel.err\n";
  for (const auto& p : s.quant.plan) {
    char prec[64];
    fmt::describe_qtype(p.dtype, p.flags, uint32_t(p.group_size), prec, sizeof prec);
    std::snprintf(buf, sizeof buf, "  %-40s %-20s %-12s %6.3f  %.4f  (%s)\n", p.name.c_str(), prec,
                  (std::to_string(p.rows) + "x" + std::to_string(p.cols)).c_str(),
                  static_cast<double>(p.bits) / static_cast<double>(p.rows * p.cols), p.rel_rms_error, p.role.c_str());
    os << buf;
  }
  }
  for (const auto& p : s.quant.kept) {
    std::snprintf(buf, sizeof buf, "  %-40s %-20s (kept: %s, not counted in bpw)\n", p.name.c_str(), "f32", p.role.c_str());
    os << buf;
  }
  std::snprintf(buf, sizeof buf, "  effective bits per weight: %.4f over %lld weights (EVAL.md; each target's own below)\n", s.quant.bpw,
                static_cast<long long>(s.quant.weight_count));
  os << buf;
  for (const TargetResult& t : s.targets) {
    std::snprintf(buf, sizeof buf, "%.4f", t.bpw);
    os << "  target " << t.name << ": " << t.output_path << ", " << t.bytes << " bytes, " << buf << " bpw; cpu weight layout "
       << t.layout;
    os << "\n";
    for (const auto& [name, why] : t.untiled) os << "    not tiled: " << name << ": " << why << "\n";
    os << placement_text(t.placement, "    ");
    if (!t.qdq_path.empty())
      os << "    npu partition as QDQ ONNX: " << t.qdq_path << " (opset " << t.qdq.opset << ", T = " << t.qdq.tokens << ", "
         << t.qdq.npu_ops << " ops -> " << t.qdq.nodes << " nodes, " << t.qdq.qdq_pairs << " QDQ pairs, "
         << t.qdq.weight_matrices << " int8 weights; docs/qdq-export.md)\n";
    os << "    package manifest: " << manifest_path_for(t.output_path) << " (docs/manifest.md)\n";
  }
  std::snprintf(buf, sizeof buf,
                "  compile time: %.2f s (import %.2f, passes %.2f, lift check %.2f, quantize %.2f, write %.2f)\n",
                s.total_seconds, s.import_seconds, s.passes_seconds, s.verify_seconds, s.quant_seconds, s.write_seconds);
  os << buf;
  if (s.calibrated) {
    std::snprintf(buf, sizeof buf, "  quantization wall time: %.2f s (pruning %.2f s, distillation %.2f s, mixed-precision allocation %.2f s, quantization-aware distillation %.2f s, calibrated quantization %.2f s)\n",
                  s.quant_seconds, s.prune_seconds, s.distill_seconds, s.mixed_seconds, s.qad_seconds, s.calib_seconds);
    os << buf;
  }
  return os.str();
}

}  // namespace kerf::pipeline
