// The kerf command-line tool: compile, eval, inspect, bench, passes.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <tuple>
#include <vector>
#include <malloc.h>
#include <exception>
#include <new>
#include <unistd.h>

#include "compiler/pipeline/bench.h"
#include "compiler/pipeline/build_info.h"
#include "compiler/pipeline/inspect.h"
#include "compiler/pipeline/report_html.h"
#include "compiler/ir/ir_text.h"
#include "compiler/pipeline/compile.h"
#include "compiler/pipeline/eval.h"
#include "compiler/pipeline/json_io.h"
#include "compiler/pipeline/progress.h"
#include "compiler/pipeline/verify.h"
#include "compiler/targets/profile.h"
#include "quant/qspec.h"
#include "passes/registry.h"

#ifndef KERF_VERSION
#define KERF_VERSION "0"
#endif

namespace {

int fail(const kerf::Status& st) {
  const int code = kerf::exit_code_for(st.code());
  // A failed verification's message is the whole documented line ("kerf verify: FAILED: ..."),
  // printed as it is; other errors are "kerf: <kind>: <message>".
  const bool verdict = st.code() == kerf::ErrorCode::kVerificationFailed;
  const std::string text = verdict ? st.message() : st.to_string();
  kerf::progress::Reporter* r = kerf::progress::current();
  if (r && (!verdict || r->mode() == kerf::progress::Mode::kJson)) {
    r->error(text, code);  // "kerf: ..." below any progress bars, or an "error" event (--log-json)
  } else {
    std::fprintf(stderr, verdict ? "%s\n" : "kerf: %s\n", text.c_str());
  }
  return code;
}

kerf::Result<kerf::fmt::DType> parse_dtype(const std::string& s) {
  using kerf::fmt::DType;
  if (s == "q4_asym" || s == "int4") return DType::kQ4Asym;
  if (s == "q8_sym" || s == "int8") return DType::kQ8Sym;
  if (s == "f16") return DType::kF16;
  if (s == "f32") return DType::kF32;
  return kerf::InvalidArgument("unknown precision '" + s + "' (known: q4_asym, q8_sym, f16, f32)");
}

}  // namespace

/// Progress / log flags of the long-running subcommands (compile, distill, eval, verify); one set per
/// process, since one subcommand runs (compiler/pipeline/progress.h chooses the mode from them).
struct ProgressFlags {
  bool quiet = false, log_json = false;
};
void add_progress_flags(CLI::App* c, ProgressFlags& f) {
  c->add_flag("-q,--quiet", f.quiet, "no progress bars or information lines (errors only)");
  c->add_flag("--log-json", f.log_json,
              "machine-readable log: one JSON object per line on stderr (start / progress / done / log / timing / "
              "error events, compiler/pipeline/progress.h); wins over --quiet");
}

/// The pruning / distillation options shared by `kerf compile` and `kerf distill`.
void add_pruning_options(CLI::App* c, kerf::pipeline::CompileOptions& o) {
  c->add_option("--keep-heads", o.keep_heads, "structured pruning: fraction of query heads kept per block")->check(CLI::Range(0.0, 1.0));
  c->add_option("--keep-ffn", o.keep_ffn, "structured pruning: fraction of FFN channels kept per block")->check(CLI::Range(0.0, 1.0));
  c->add_option("--keep-embed", o.keep_embed, "structured pruning: fraction of embedding (model-dim) channels kept")->check(CLI::Range(0.0, 1.0));
  c->add_option("--drop-blocks", o.drop_blocks, "structured pruning: whole transformer blocks removed (depth)")->check(CLI::NonNegativeNumber);
  c->add_option("--head-mode", o.head_mode, "GQA-aware head pruning: kv-groups (whole KV groups with their query heads) or query-heads (evenly within groups)");
  c->add_option("--importance", o.importance, "pruning importance: activation (Minitron), taylor (first order), magnitude");
  c->add_option("--prune-budget", o.prune_budget, "solve the keep fractions for a budget: flops:F or params:F (F of the original)");
  c->add_option("--prune-alloc", o.prune_alloc, "per-block widths: uniform (every block the same) or measured (greedy, calibration KL re-measured; same totals)")
      ->check(CLI::IsMember({"uniform", "measured"}));
  c->add_option("--distill-steps", o.distill_steps, "knowledge-distillation steps after pruning (teacher = the unpruned model)");
  c->add_option("--seed", o.seed, "seed of the distillation / quantization-aware batches and the teacher samples (default: the recipe's, else 0)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--teacher-samples", o.teacher_samples, "distillation: sequences sampled from the teacher added to the training text (default: one per distillation step)");
  c->add_option("--checkpoint", o.checkpoint_path, "distillation checkpoint (default OUTPUT.ckpt when distilling)");
  c->add_flag("--resume", o.resume, "continue distillation from --checkpoint");
}

static int kerf_main(int argc, char** argv) {
  // Distillation and calibration allocate and free the same large LibTorch buffers every step; by
  // default glibc returns them to the kernel (mmap'd blocks, heap trimming) and the next step
  // page-faults them in again (measured: ~20 % of a distillation step in kernel page faults).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"kerf " KERF_VERSION ": compress an LLM (ONNX) into a .kerf artifact for runtime-lite, and report its accuracy"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kerf ") + KERF_VERSION + " (commit " + kerf::kerf_commit() + ")");

  ProgressFlags pflags;  // -q / --log-json of whichever subcommand runs

  // compile
  kerf::pipeline::CompileOptions copt;
  copt.producer_version = KERF_VERSION;
  std::string linear = "q4_asym", embedding = "q8_sym";
  auto* compile = app.add_subcommand("compile", "compile MODEL.onnx into a .kerf artifact");
  compile->add_option("model", copt.model_path, "FP16/FP32 ONNX model")->required();
  compile->add_option("-o,--output", copt.output_path, "artifact to write (atomically)")->required();
  compile->add_option("--target", copt.target,
                      "device profile(s): a name from `kerf targets` (host, generic, x86-64-avx2, x86-64-avx512, "
                      "arm64-neon-dotprod, snapdragon-8-gen3, dimensity-9300) or a PROFILE.yaml; a,b,c writes one "
                      "artifact per device into the folder -o names, sharing calibration and distillation")
      ->capture_default_str();
  std::vector<std::string> place_pins;
  compile->add_option("--place", place_pins,
                      "pin ops to a unit: PATTERN=UNIT (fnmatch on op names, e.g. 'layers.*.ffn=npu'); with --strict an "
                      "op the unit cannot run is an error");
  compile->add_flag("--export-qdq", copt.export_qdq,
                    "also write each npu target's npu partition as a QDQ ONNX model (NAME.qdq.onnx, opset 21) for "
                    "vendor NPU toolchains (docs/qdq-export.md)");
  compile->add_option("--tokenizer", copt.tokenizer_path,
                      "llama2.c tokenizer file (default: the only tokenizer.bin / tok*.bin beside the model)");
  compile->add_option("--group-size", copt.quant.group_size, "quantization group size along the input dim")
      ->capture_default_str();
  compile->add_option("--linear", linear,
                      "precision of Linear/FFN weights: RTN baseline q4_asym | q8_sym | f16 | f32, or a calibrated "
                      "precision such as int4_asym:g32, int3_sym:g32:k6, ternary:g32, binary:g32")
      ->capture_default_str();
  compile->add_option("--embedding", embedding,
                      "precision of the (tied) embedding: q8_sym | q4_asym | f16 | f32, or e.g. int8_sym:row")
      ->capture_default_str();
  compile->add_option("--threads", copt.threads, "LibTorch threads (0 = all cores)")->capture_default_str();
  bool no_verify = false;
  compile->add_flag("--no-verify-lift", no_verify, "skip the imported-vs-lifted probe comparison");
  compile->add_option("--recipe", copt.recipe_path, "quantization recipe (YAML, see examples/recipes/)");
  compile->add_option("--method", copt.method, "quantization method for the default precision: rtn, gptq, awq, awq+gptq");
  compile->add_option("--calib", copt.calib_path, "calibration text (stories separated by <|endoftext|> lines)");
  std::string calib_stories;
  compile->add_option("--calib-stories", calib_stories, "calibration story range A:B (default: the recipe's, else 0:128)");
  compile->add_option("--calib-tokens", copt.calib_tokens, "cap on calibration tokens (0 = no cap; default: the recipe's, 65536 without a recipe)");
  compile->add_option("--bpw", copt.bpw, "mixed precision: effective bits-per-weight budget over all weight matrices");
  compile->add_flag("--strict", copt.strict, "fail when the recipe cannot be met exactly (instead of noting it)");
  add_pruning_options(compile, copt);
  compile->add_option("--student", copt.student_path, "compile the pruned + distilled student of a `kerf distill` checkpoint");
  compile->add_option("--qad-steps", copt.qad_steps, "final quantization-aware distillation steps (default with pruning: 20 % of --distill-steps; 0 = none, quantize post-training)");
  add_progress_flags(compile, pflags);
  bool compile_time = false;
  compile->add_flag("--time", compile_time,
                    "print where the compile time went (wall seconds and % per stage: a table after the summary, a "
                    "\"timing\" event with --log-json)");

  // distill: pruning + knowledge distillation only, to a checkpoint (`kerf compile --student` quantizes it)
  kerf::pipeline::CompileOptions dopt;
  auto* distill = app.add_subcommand("distill", "prune MODEL and distill it from the unpruned model into a checkpoint");
  distill->add_option("model", dopt.model_path, "FP16/FP32 ONNX or TorchScript model (the teacher)")->required();
  distill->add_option("-o,--output", dopt.output_path, "checkpoint to write (atomically; --resume continues it)")->required();
  distill->add_option("--calib", dopt.calib_path, "training / calibration text (stories 0:400 train the student)")->required();
  std::string dcalib_stories;
  distill->add_option("--calib-stories", dcalib_stories, "stories for the importance scores (default 0:128)");
  distill->add_option("--recipe", dopt.recipe_path, "recipe with prune: / distill: sections");
  distill->add_option("--threads", dopt.threads, "LibTorch threads (0 = all cores)")->capture_default_str();
  distill->add_option("--tokenizer", dopt.tokenizer_path, "llama2.c tokenizer file (default: beside the model)");
  add_pruning_options(distill, dopt);
  add_progress_flags(distill, pflags);

  // eval
  kerf::pipeline::EvalOptions eopt;
  std::string stories = "400:800", json_path, md_path;
  auto* eval = app.add_subcommand("eval", "EVAL.md protocol: artifact (runtime-lite) vs FP reference (LibTorch)");
  eval->add_option("artifact", eopt.artifact_path, ".kerf artifact")->required();
  eval->add_option("--reference", eopt.reference_path, "FP model the artifact was compiled from (ONNX)");
  eval->add_option("--text", eopt.text_path, "text file of stories separated by <|endoftext|> lines")->required();
  eval->add_option("--stories", stories, "story range A:B")->capture_default_str();
  eval->add_option("--json", json_path, "write the JSON report here");
  eval->add_option("--markdown", md_path, "write the Markdown report here");
  eval->add_option("--threads", eopt.threads, "LibTorch threads for the reference (0 = all cores)")->capture_default_str();
  eval->add_flag("--cpu-only", eopt.cpu_only, "run the artifact's every op on the CPU (ignore its GPU / NPU placement) to isolate a unit's arithmetic cost");
  add_progress_flags(eval, pflags);

  // verify: the EVAL.md metrics against thresholds and a baseline report (exit 6 when a check fails)
  kerf::pipeline::VerifyOptions vopt;
  std::string vstories = "400:800", vjson, vhtml;
  std::vector<std::pair<std::string, std::string>> vflags;  // threshold key, flag
  std::map<std::string, std::string> vtexts;                  // flag -> text given
  auto* verify = app.add_subcommand("verify", "CI gate: measure an artifact (EVAL.md), check it against thresholds and a baseline report");
  verify->add_option("artifact", vopt.eval.artifact_path, ".kerf artifact")->required();
  verify->add_option("--reference", vopt.eval.reference_path, "FP model the artifact was compiled from (ONNX / TorchScript)")->required();
  verify->add_option("--text", vopt.eval.text_path, "text file of stories separated by <|endoftext|> lines")->required();
  verify->add_option("--stories", vstories, "story range A:B")->capture_default_str();
  for (const auto& [key, flag, help] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"max_ppl_increase", "--max-ppl-increase", "fail when ppl / ppl_reference - 1 exceeds this (5% or 0.05)"},
           {"min_top1", "--min-top1", "fail when top-1 agreement with the reference is below this (0.85 or 85%)"},
           {"max_kl", "--max-kl", "fail when mean KL(reference || artifact) exceeds this many nats per token"},
           {"max_ppl_regression", "--max-ppl-regression", "with --baseline: fail when ppl / baseline ppl - 1 exceeds this (default 1%)"},
           {"max_kl_regression", "--max-kl-regression", "with --baseline: fail when kl - baseline kl exceeds this many nats (default 0.005)"},
           {"max_top1_regression", "--max-top1-regression", "with --baseline: fail when top-1 drops by more than this (default 0.01)"}}) {
    vflags.emplace_back(key, flag);
    verify->add_option(flag, vtexts[flag], help + "; overrides the recipe's verify: section");
  }
  verify->add_option("--baseline", vopt.baseline_path, "an earlier report (kerf eval / verify --json) to compare with");
  verify->add_option("--json", vjson, "write the kerf.report/1 report with its verification here (docs/report.md)");
  verify->add_option("--html", vhtml, "write the self-contained HTML report here");
  verify->add_flag("--bench", vopt.bench, "also measure runtime-lite speed (1 thread, 64-token prefill, 32 decode steps)");
  verify->add_option("--threads", vopt.eval.threads, "LibTorch threads for the reference (0 = all cores)")->capture_default_str();
  add_progress_flags(verify, pflags);

  // inspect
  std::string inspect_path, pipeline = "canonicalize";
  bool full = false;
  auto* inspect = app.add_subcommand("inspect", "print a model's lifted IR, or an artifact's metadata, tensors and program");
  inspect->add_option("path", inspect_path, "ONNX model or .kerf artifact")->required();
  inspect->add_option("--pipeline", pipeline, "passes to run on a model before printing ('none' = as imported)")
      ->capture_default_str();
  inspect->add_flag("--full", full, "print every constant in full (the text then parses back)");

  auto* passes = app.add_subcommand("passes", "list the graph passes in pipeline order");

  // targets: the device profiles (compiler/targets/*.yaml)
  std::string target_show, target_check;
  auto* targets_cmd = app.add_subcommand("targets", "list the device profiles --target takes, or show / check one");
  targets_cmd->add_option("--show", target_show, "print a profile's YAML (a built-in name)");
  targets_cmd->add_option("--check", target_check, "validate a profile file (exit 3 with the problem when it is invalid)");

  // bench
  kerf::pipeline::BenchOptions bopt;
  std::string bench_json;
  auto* bench = app.add_subcommand("bench", "prefill / decode tokens/s of an artifact on runtime-lite (llama-bench style)");
  bench->add_option("artifact", bopt.artifact_path, ".kerf artifact")->required();
  bench->add_option("-t,--threads", bopt.threads, "runtime-lite threads (0 = one per online CPU)")->capture_default_str();
  bench->add_option("-p,--prompt-tokens", bopt.prompt_tokens, "prefill test: one evaluation of P random tokens (0 = skip)")->capture_default_str();
  bench->add_option("-n,--gen-tokens", bopt.gen_tokens, "decode test: G single-token evaluations (0 = skip)")->capture_default_str();
  bench->add_option("-r,--repeat", bopt.repeat, "timed repetitions of each test, after one warm-up")->capture_default_str();
  bench->add_flag("--kv-f16", bopt.kv_f16, "f16 KV cache");
  bench->add_flag("--cpu-only", bopt.cpu_only, "run every op on the CPU, ignoring the artifact's GPU / NPU placement (for comparison)");
  bench->add_option("--bandwidth-mib", bopt.bandwidth_mib, "buffer of the read-bandwidth measurement (0 = skip)")->capture_default_str();
  bench->add_option("--json", bench_json, "write the JSON report here (keys: compiler/pipeline/bench.h)");

  // report: a kerf.report/1 JSON report as one self-contained HTML page
  kerf::pipeline::ReportOptions ropt;
  auto* report = app.add_subcommand("report", "render a JSON report (kerf eval / verify --json) as a self-contained HTML page");
  report->add_option("report", ropt.report_path, "kerf.report/1 (or kerf.eval/1) JSON report")->required();
  report->add_option("--baseline", ropt.baseline_path, "an earlier report to diff against (regressions highlighted)");
  report->add_option("--curve", ropt.curve_paths, "reports at other bit budgets: plot perplexity against bits per weight");
  report->add_option("-o,--output", ropt.output_path, "HTML file to write (atomically)")->required();

  // CLI11's own exit codes (106 for a missing required option, ...) are not kerf's: every command-line
  // error exits 2 (README "Exit codes"); --help / --version (CLI::Success and its subclasses) exit 0.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the help, the version or the error message
    return dynamic_cast<const CLI::Success*>(&e) != nullptr ? 0 : kerf::exit_code_for(kerf::ErrorCode::kInvalidArgument);
  }

  // Progress and logs on stderr: bars on a terminal, plain lines otherwise, JSON lines, or quiet.
  const kerf::progress::Mode pmode = kerf::progress::choose_mode(pflags.quiet, pflags.log_json, isatty(STDERR_FILENO));
  const std::unique_ptr<kerf::progress::Reporter> reporter = kerf::progress::make_stderr_reporter(pmode);
  const kerf::progress::ScopedReporter scoped_reporter(reporter.get());
  const bool show_progress = pmode != kerf::progress::Mode::kQuiet;

  if (*compile) {
    copt.verify_lift = !no_verify;
    copt.progress = show_progress;
    if (!calib_stories.empty()) {
      auto cr = kerf::pipeline::parse_story_range(calib_stories);
      if (!cr.ok()) return fail(cr.status().with_context("--calib-stories"));
      copt.calib_stories = *cr;
    }
    // A legacy dtype name selects the RTN baseline; a qspec text ("int4_asym:g32") the calibrated path.
    auto l = parse_dtype(linear);
    if (l.ok()) {
      copt.quant.linear_dtype = *l;
    } else {
      auto q = kerf::quant::parse_qspec(linear);
      if (!q.ok()) return fail(kerf::InvalidArgument("--linear: '" + linear + "' is neither q4_asym | q8_sym | f16 | f32 nor " + q.status().message()));
      copt.linear_spec = linear;
    }
    auto e = parse_dtype(embedding);
    if (e.ok()) {
      copt.quant.embedding_dtype = *e;
      // In the calibrated path a legacy name means the same storage in qspec terms.
      if (compile->count("--embedding") > 0)
        copt.embedding_spec_if_calibrated = embedding == "q8_sym" || embedding == "int8"   ? "int8_sym:row"
                                            : embedding == "q4_asym" || embedding == "int4" ? "int4_asym:g32"
                                                                                             : embedding;
    } else {
      auto q = kerf::quant::parse_qspec(embedding);
      if (!q.ok()) return fail(kerf::InvalidArgument("--embedding: '" + embedding + "' is neither q8_sym | q4_asym | f16 | f32 nor " + q.status().message()));
      copt.embedding_spec = embedding;
    }
    for (const std::string& pin : place_pins) {
      const size_t eq = pin.rfind('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == pin.size())
        return fail(kerf::InvalidArgument("--place '" + pin + "': expected PATTERN=UNIT (unit cpu, gpu or npu)"));
      copt.place_pins.emplace_back(pin.substr(0, eq), pin.substr(eq + 1));
    }
    auto r = kerf::pipeline::compile(copt);
    if (!r.ok()) return fail(r.status());
    if (r->distributed_rank > 0) {
      std::cout << "kerf compile: data-parallel rank " << r->distributed_rank << " finished distillation (rank 0 writes the artifact)\n";
      return 0;
    }
    std::cout << kerf::pipeline::compile_summary_text(copt, *r);
    if (compile_time) {
      const auto rows = kerf::pipeline::compile_timing(*r);
      if (pmode == kerf::progress::Mode::kJson) {
        reporter->timing(rows, r->total_seconds);
      } else {
        std::cout << kerf::progress::timing_table(rows, r->total_seconds);
      }
    }
    return 0;
  }
  if (*targets_cmd) {
    if (!target_check.empty()) {
      auto p = kerf::targets::load_profile(target_check);
      if (!p.ok()) return fail(p.status());
      std::cout << target_check << ": valid profile '" << p->name << "'\n";
      return 0;
    }
    if (!target_show.empty()) {
      auto p = kerf::targets::load_profile(target_show);
      if (!p.ok()) return fail(p.status());
      std::cout << p->yaml;
      return 0;
    }
    std::cout << kerf::pipeline::targets_table();
    return 0;
  }
  if (*distill) {
    dopt.distill_only = true;
    dopt.progress = show_progress;
    if (!dcalib_stories.empty()) {
      auto cr = kerf::pipeline::parse_story_range(dcalib_stories);
      if (!cr.ok()) return fail(cr.status().with_context("--calib-stories"));
      dopt.calib_stories = *cr;
    }
    if (!dopt.checkpoint_path.empty()) return fail(kerf::InvalidArgument("kerf distill writes its checkpoint to -o; --checkpoint is for kerf compile"));
    auto r = kerf::pipeline::compile(dopt);
    if (!r.ok()) return fail(r.status());
    if (r->distributed_rank > 0) {
      std::cout << "kerf distill: data-parallel rank " << r->distributed_rank << " finished\n";
      return 0;
    }
    std::cout << "kerf distill " << dopt.model_path << " -> " << dopt.output_path << " (" << r->bytes << " bytes)\n";
    std::cout << "  pruning: " << r->prune_text << "\n";
    for (const auto& l : r->stage_lines) std::cout << "    " << l << "\n";
    if (!r->distill_log.empty()) std::cout << "  " << r->distill_log.back() << "\n";
    std::cout << "  next: kerf compile " << dopt.model_path << " --student " << dopt.output_path << " -o OUT.kerf --calib TEXT\n";
    return 0;
  }
  if (*eval) {
    auto range = kerf::pipeline::parse_story_range(stories);
    if (!range.ok()) return fail(range.status());
    eopt.stories = *range;
    eopt.progress = show_progress;
    auto r = kerf::pipeline::evaluate(eopt);
    if (!r.ok()) return fail(r.status());
    const std::string md = kerf::pipeline::eval_report_markdown(*r);
    std::cout << md;
    if (!json_path.empty()) {
      auto st = kerf::pipeline::write_text_atomic(json_path, kerf::pipeline::eval_report_json(*r));
      if (!st.ok()) return fail(st);
    }
    if (!md_path.empty()) {
      auto st = kerf::pipeline::write_text_atomic(md_path, md);
      if (!st.ok()) return fail(st);
    }
    return 0;
  }
  if (*verify) {
    for (const auto& [key, flag] : vflags)
      if (verify->count(flag) > 0) {
        auto st = kerf::pipeline::set_threshold(&vopt.thresholds, key, flag, vtexts[flag]);
        if (!st.ok()) return fail(st);
      }
    auto range = kerf::pipeline::parse_story_range(vstories);
    if (!range.ok()) return fail(range.status().with_context("--stories"));
    vopt.eval.stories = *range;
    vopt.eval.progress = show_progress;
    auto r = kerf::pipeline::run_verify(vopt);
    if (!r.ok()) return fail(r.status());
    std::cout << kerf::pipeline::verify_table(*r) << std::flush;
    if (!vjson.empty()) {
      auto st = kerf::pipeline::write_text_atomic(vjson, kerf::pipeline::json_file_text(r->report));
      if (!st.ok()) return fail(st);
    }
    if (!vhtml.empty()) {
      const nlohmann::ordered_json* base = r->baseline ? &*r->baseline : nullptr;
      auto st = kerf::pipeline::write_text_atomic(vhtml, kerf::pipeline::render_report_html(r->report, base, {}));
      if (!st.ok()) return fail(st);
    }
    // The verdict decides the exit code (6 when a check failed) and its line is always printed;
    // failing to record it in the package manifest is an extra error line, whose exit code (5)
    // counts only when the gate passed.
    auto m = kerf::pipeline::record_verification_in_manifest(vopt.eval.artifact_path, *r);
    if (m.ok() && !m->empty() && pmode != kerf::progress::Mode::kQuiet)
      std::cout << "kerf verify: recorded the verification in " << *m << "\n" << std::flush;
    const int record_code = m.ok() ? 0 : fail(m.status());
    // The last stderr line of a failed gate names every failed check (docs/report.md).
    if (!r->passed) return fail(kerf::VerificationFailed(kerf::pipeline::verify_failure_line(*r)));
    return record_code;
  }
  if (*inspect) {
    auto r = kerf::inspect(inspect_path, pipeline, full);
    if (!r.ok()) return fail(r.status());
    std::cout << *r;
    return 0;
  }
  if (*bench) {
    auto r = kerf::pipeline::run_bench(bopt);
    if (!r.ok()) return fail(r.status());
    std::cout << kerf::pipeline::bench_report_text(*r);
    if (!bench_json.empty()) {
      auto st = kerf::pipeline::write_text_atomic(bench_json, kerf::pipeline::bench_report_json(*r));
      if (!st.ok()) return fail(st);
    }
    return 0;
  }
  if (*report) {
    auto st = kerf::pipeline::write_report_html(ropt);
    if (!st.ok()) return fail(st);
    std::cout << "kerf report: wrote " << ropt.output_path << "\n";
    return 0;
  }
  if (*passes) {
    for (const auto& p : kerf::passes::registry()) std::printf("%-18s %s\n", p.name, p.description);
    std::printf("%-18s = %s\n", "canonicalize", kerf::passes::canonicalize_pipeline());
    return 0;
  }
  return 0;
}

// Nothing escapes kerf as an exception: library boundaries convert LibTorch / protobuf / std
// exceptions to a Status, and anything that slips through is reported here with its exit code
// (README "Exit codes") instead of std::terminate's abort. Outputs are written atomically, so an
// exception never leaves a half-written file behind.
int main(int argc, char** argv) {
  try {
    return kerf_main(argc, argv);
  } catch (const std::bad_alloc&) {
    return fail(kerf::ResourceLimit("out of memory (the model or the requested work does not fit in this machine's memory)"));
  } catch (const std::exception& e) {
    return fail(kerf::Internal(std::string("uncaught exception: ") + e.what()));
  } catch (...) {
    return fail(kerf::Internal("uncaught exception of unknown type"));
  }
}
