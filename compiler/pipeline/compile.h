// `kerf compile`: model -> lifted IR -> quantized -> .kerf artifact, with a printed summary.
#pragma once

#include <string>
#include <vector>

#include <optional>

#include "compiler/ir/status.h"
#include "compiler/pipeline/progress.h"
#include "compiler/pipeline/text.h"
#include "compiler/targets/placement.h"
#include "formats/onnx/qdq_export.h"
#include "quant/recipe.h"

namespace kerf::pipeline {

struct CompileOptions {
  std::string model_path;
  std::string output_path;
  std::string tokenizer_path;        ///< empty: the only tokenizer.bin / tok*.bin beside the model
  /// Device profile(s): a built-in name (`kerf targets`) or a NAME.yaml file; "a,b,c" compiles one
  /// artifact per device in one run (output_path is then a folder receiving NAME.kerf per target).
  std::string target = "host";
  /// Placement pins (--place PATTERN=UNIT, fnmatch on op names), before the recipe's placement: ones.
  std::vector<std::pair<std::string, std::string>> place_pins;
  /// Also write each npu target's npu partition as QDQ ONNX (NAME.qdq.onnx beside its artifact,
  /// formats/onnx/qdq_export.h); an error when no target uses its npu.
  bool export_qdq = false;
  quant::QuantOptions quant;         ///< default: INT4 asym g32 linears, INT8 per-row embedding
  bool verify_lift = true;           ///< run imported and lifted graphs on a probe and compare logits
  int threads = 0;                   ///< LibTorch threads (0 = all cores)
  std::string producer_version = "0";

  // Calibrated quantization (quant/calib). Used when a recipe, a bpw budget or a calibrated
  // precision (`linear_spec`) is given; otherwise the RTN baseline of `quant` applies.
  std::string recipe_path;           ///< YAML recipe (compiler/pipeline/recipe_file.h)
  std::string linear_spec;           ///< e.g. "int4_asym:g32" (CLI --linear with a qspec text)
  std::string embedding_spec;        ///< e.g. "int8_sym:row"; selects the calibrated path
  std::string embedding_spec_if_calibrated;  ///< applied only when another option selects the calibrated path
  std::string method;                ///< rtn | gptq | awq | awq+gptq (CLI --method)
  std::string calib_path;            ///< calibration text (stories separated by <|endoftext|>)
  std::optional<StoryRange> calib_stories;  ///< default: the recipe's, else 0:128
  int64_t calib_tokens = -1;         ///< cap (-1: the recipe's, 0: none)
  double bpw = 0;                    ///< mixed-precision budget (0: the recipe's / none)
  bool strict = false;               ///< fail when the recipe cannot be met exactly
  bool progress = false;             ///< progress lines on stderr

  // Structured pruning (prune/) and knowledge distillation (distill/), before quantization. Any keep
  // fraction < 1, drop_blocks > 0 or a budget enables pruning; the teacher is the unpruned model.
  double keep_heads = 1, keep_ffn = 1, keep_embed = 1;  ///< fractions kept (prune/prune.h)
  int drop_blocks = 0;               ///< whole blocks removed (depth)
  std::string head_mode;             ///< kv-groups | query-heads (default kv-groups)
  std::string importance;            ///< activation | taylor | magnitude (default activation)
  std::string prune_budget;          ///< "flops:F" or "params:F": solve keep fractions for F x the original
  std::string prune_alloc;           ///< uniform (default: every block the same width) | measured (prune/importance.h allocate_widths)
  int distill_steps = -1;            ///< KD steps after pruning (-1: the recipe's, else 0)
  int64_t seed = -1;                 ///< seed of distillation / QAD batches and teacher samples (-1: the recipe's, else 0)
  std::string checkpoint_path;       ///< distillation checkpoint (default OUTPUT.ckpt when distilling)
  bool resume = false;               ///< continue from checkpoint_path
  int qad_steps = -1;                ///< final quantization-aware distillation steps (-1: the recipe's; with pruning
                                     ///< and no recipe qad: section, 20 % of --distill-steps)
  bool distill_only = false;         ///< `kerf distill`: prune + distill, write the checkpoint to output_path, stop
  std::string student_path;          ///< compile the student of a `kerf distill` checkpoint (its plan + weights)
  int teacher_samples = -1;          ///< sequences sampled from the teacher added to the training text (-1: the recipe's, else 0)
};

/// One device's artifact of a compile.
struct TargetResult {
  std::string name;                  ///< profile name
  std::string output_path;           ///< the artifact written
  uint64_t bytes = 0;
  double bpw = 0;                    ///< effective bits per weight of this artifact (EVAL.md; the npu's copies counted)
  std::string layout;                ///< "tiled4" or "plain" (cpu weights)
  std::vector<std::pair<std::string, std::string>> untiled;  ///< (weight, reason) left plain
  targets::Placement placement;      ///< per op: unit per phase, why; transfers; modelled time
  std::string qdq_path;              ///< --export-qdq: the npu partition's QDQ ONNX ("" when not written)
  QdqExportSummary qdq;
};

struct CompileSummary {
  size_t imported_nodes = 0, lifted_nodes = 0;
  std::map<std::string, int> lifted_ops;
  double lift_max_abs_diff = -1;     ///< probe logits, imported vs lifted graph (-1: not verified)
  quant::QuantizedModel quant;       ///< plan, bpw (tensors' payloads dropped after writing)
  uint64_t bytes = 0;                ///< artifact size on disk
  double import_seconds = 0, passes_seconds = 0, verify_seconds = 0, quant_seconds = 0, write_seconds = 0,
         total_seconds = 0;
  std::string recipe;
  bool calibrated = false;           ///< the quant/calib path ran
  std::string calib_source;          ///< "FILE stories A:B, N sequences, T tokens"
  uint64_t calib_hash = 0;           ///< XXH64 of the calibration token ids (int64 LE)
  std::string calib_range;           ///< stories actually used, "A:B" (manifest)
  int64_t calib_sequences = 0, calib_token_count = 0;  ///< calibration sequences / tokens used (manifest)
  uint64_t recipe_hash = 0;          ///< XXH64 of the recipe file (0: none)
  double calib_seconds = 0, mixed_seconds = 0, qad_seconds = 0;
  /// calib_seconds by phase: "calibration", "awq search", "quantization (METHOD)" (quant/calib/calibrate.h)
  std::vector<std::pair<std::string, double>> calib_phase_seconds;
  double manifest_seconds = 0;        ///< writing the package manifest
  std::vector<std::string> qad_log;   ///< distillation progress (validation lines, summary last)
  std::vector<std::string> mixed_log; ///< allocator rounds
  double mixed_budget = 0;            ///< requested bpw (0: no allocation)
  // Pruning / distillation (empty when not asked).
  std::string prune_text;             ///< "kept 6/8 heads (3/4 KV groups), 86/172 FFN channels per block (activation)"
  std::vector<std::string> stage_lines;  ///< params / FLOPs per stage
  std::vector<std::string> distill_log;
  double prune_seconds = 0, distill_seconds = 0;
  int distributed_rank = 0;           ///< > 0: a data-parallel distillation worker; nothing was written
  // Weight layout (formats/SPEC.md 6.6), recorded as metadata "compile.layout" / "compile.untiled".
  std::string layout;                 ///< "tiled4" (R = 4 rows per tile) or "plain"
  std::vector<std::pair<std::string, std::string>> untiled;  ///< tiled target: (weight, reason) of those left plain
  std::vector<TargetResult> targets;  ///< one per --target profile, in order (bytes / layout above: the first's)
};

/// Compiles. Errors: kInvalidArgument (unknown target, bad quant options, no tokenizer, a placement pin
/// that cannot be honoured under strict, an npu target without --calib), and the
/// import / pass / quantization / write errors, each naming the file, node or tensor. Nothing is
/// left at output_path on error.
Result<CompileSummary> compile(const CompileOptions& opt);

/// `kerf targets`: every built-in profile with its units in one or two lines.
std::string targets_table();

/// Placement in brief: per phase the ops per unit, transfers and modelled time; the notes.
std::string placement_text(const targets::Placement& p, const std::string& indent);

/// Human-readable summary (ops, per-tensor plan, bpw, bytes, timings).
std::string compile_summary_text(const CompileOptions& opt, const CompileSummary& s);

/// Where the compile's wall time went (`kerf compile --time`): import, passes, lift check, pruning,
/// distillation, mixed-precision allocation, quantization-aware distillation, calibration, AWQ
/// search, quantization per method, write, manifest, and "other" (tokenizer, set-up: the rest of
/// total_seconds). Stages that did not run are left out; the rows sum to total_seconds.
std::vector<progress::TimingRow> compile_timing(const CompileSummary& s);

}  // namespace kerf::pipeline
