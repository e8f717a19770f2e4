// Quantization recipes: YAML files (examples/recipes/) that say, per weight matrix, which precision
// and method to use, or a bits-per-weight budget for the mixed-precision allocator.
//
//   name: int4-gptq                       # free text, recorded in the artifact
//   calibration:                          # defaults for --calib-stories / --calib-tokens
//     stories: "0:128"                    # half-open story range of the --calib text
//     tokens: 32768                       # cap on calibration tokens (whole stories, in order)
//     sequential: true                    # statistics on the quantized prefix (GPTQ's true-sequential)
//   default: {precision: int4_asym:g32, method: gptq, rule: search}
//   gptq: {damp: 0.01, act_order: true, block_size: 128, static_groups: false}
//   awq: {grid: 20, clip: true, max_shrink: 0.5}
//   tensors:                              # overrides, first match wins
//     - match: embedding                  # a role or a name glob (fnmatch), see below
//       precision: int8_sym:row
//       method: rtn
//       rule: search
//   mixed:                                # optional: allocate the non-overridden matrices
//     bpw: 4.5                            # effective bpw over ALL matrices (shared/EVAL.md)
//     candidates: [int3_sym:g32:k6, int4_sym:g32:k6, int6_sym:g32:k6]
//     method: gptq                        # method / rule of the candidates
//     rule: search
//     rounds: 1                           # re-measurement rounds (quant/calib/mixed.h)
//     sensitivity_tokens: 4096            # tokens of the calibration text used to measure KL
//   qad:                                  # optional: quantization-aware distillation (distill/qad.h)
//     steps: 300                          #   before the final quantization; the trained weights
//     lr: 0.001                           #   are quantized with RTN under each tensor's precision
//     batch: 8                            #   and rule ("search" becomes "rtn": the quantizer in
//     seq_len: 512                        #   the training forward must be the one emitted)
//     stories: "0:400"                    #   training stories of the --calib text (never 400-799)
//     val_fraction: 0.05                  #   the last 5 % of them: validation / early stopping
//     temperature: 1.0
//     seed: 0
//     teacher_samples: 0                  #   sequences sampled from the FP model added to the training
//                                         #   stories (data-free augmentation, distill/qad.h)
//     hidden_weight: 0.0                  #   normalized MSE on every block output vs the FP model
//     init: fp                            #   latent weights start at the FP weights (fp), or at the
//                                         #   GPTQ-quantized ones (gptq: training starts from the
//                                         #   post-training result; needs --calib)
//     learn_scales: false                 #   true: group scales / mins are trained too (LSQ, qad.h)
//     scale_lr: 1.0                       #   and stepped at lr * scale_lr; the artifact stores them
//   prune:                                # optional: structured pruning (prune/prune.h) before quantization
//     keep_heads: 0.75                    #   fractions kept; or budget: "flops:0.6" / "params:0.5"
//     keep_ffn: 0.5
//     keep_embed: 1.0
//     drop_blocks: 0
//     head_mode: kv-groups                #   or query-heads
//     importance: activation              #   or taylor, magnitude
//     allocation: uniform                 #   or measured (per-block widths, same totals)
//   distill:                              # optional: KD of the pruned student from the unpruned model
//     steps: 2000                         #   same keys as qad (hidden_weight needs the same depth)
//   strict: false                         # fail instead of noting when something is not as asked
//   verify:                               # optional: acceptance thresholds of `kerf verify` (stored
//     max_ppl_increase: 6%                #   in the artifact as verify.* metadata; the command line
//     min_top1: 0.87                      #   overrides them key by key). "6%" or 0.06; see
//     max_kl: 0.06                        #   VerifyThresholds below and docs/report.md
//     max_ppl_regression: 1%              #   (vs a --baseline report)
//
// Roles for `match`: "all", "linear" (every matrix but the embedding), "embedding" (the embedding
// table, tied or not), "classifier" (an untied output projection named *output* / *lm_head*, or
// the tied table), "attention" (names *.wq.*, *.wk.*, *.wv.*, *.wo.*), "ffn" (*.w1.*, *.w2.*,
// *.w3.*); anything else is a glob on the initializer name, e.g. "model.layers.0.*".
// Precision texts are quant/qspec.h's ("int4_asym:g32", "int3_sym:g32:k6", "ternary:g64",
// "binary:g32", "int8_sym:row", "f16"); methods "rtn", "gptq", "awq", "awq+gptq"; rules "rtn",
// "twn", "search".
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "compiler/pipeline/text.h"
#include "distill/qad.h"
#include "quant/calib/calibrate.h"
#include "quant/calib/mixed.h"
#include "quant/recipe.h"

namespace kerf::pipeline {

/// Acceptance thresholds of `kerf verify`: a recipe's `verify:` section, the artifact's "verify.<key>"
/// metadata (written by `kerf compile --recipe`), or the command line (which overrides key by key).
/// All are fractions or nats, never percent numbers: 0.05 means 5 %. Unset = not checked.
struct VerifyThresholds {
  std::optional<double> max_ppl_increase;     ///< artifact ppl / reference ppl - 1 must be <= this
  std::optional<double> min_top1;             ///< top-1 agreement with the reference must be >= this
  std::optional<double> max_kl;               ///< mean KL(p_ref || p_artifact), nats / token, must be <= this
  std::optional<double> max_ppl_regression;   ///< artifact ppl / baseline ppl - 1 must be <= this
  std::optional<double> max_kl_regression;    ///< kl - baseline kl (nats) must be <= this
  std::optional<double> max_top1_regression;  ///< baseline top1 - top1 must be <= this

  /// Whether any threshold is set.
  bool any() const;
  /// Every threshold set in `over` replaces this one's.
  void override_with(const VerifyThresholds& over);
  /// The key names above, in declaration order ("max_ppl_increase", ...), and the member of each.
  static const std::vector<std::pair<const char*, std::optional<double> VerifyThresholds::*>>& fields();
};

/// Parses one threshold value for `key` (a VerifyThresholds field name): "5%" or "0.05" for the
/// ratio keys (max_ppl_increase, min_top1, max_ppl_regression, max_top1_regression; a bare number
/// above 1 is rejected as ambiguous - write "5%" or "0.05"), a plain number of nats for max_kl and
/// max_kl_regression (a "%" is rejected). Every value must be finite and >= 0; min_top1 and
/// max_top1_regression <= 1. Errors: kInvalidArgument quoting the text (the caller names the key / flag).
Result<double> parse_threshold(const std::string& key, const std::string& text);

/// The thresholds as artifact metadata: "verify.<key>" -> the number (shortest round-trip text).
std::map<std::string, std::string> verify_metadata(const VerifyThresholds& t);
/// Reads "verify.<key>" entries back (`get` returns the metadata string or nullopt). Errors:
/// kBadInput naming the key when a value is not a finite number.
Result<VerifyThresholds> verify_thresholds_from_metadata(
    const std::function<std::optional<std::string>(const std::string&)>& get);

struct RecipeOverride {
  std::string match;
  quant::TensorChoice choice;
};

struct Recipe {
  std::string name;
  std::string source_text;                 ///< the YAML as read (recorded / hashed)
  uint64_t hash = 0;                       ///< XXH64 of source_text
  std::optional<StoryRange> calib_stories;
  int64_t calib_tokens = 0;                ///< 0 = no cap
  bool sequential = true;
  quant::TensorChoice default_choice;
  quant::GptqOptions gptq;
  quant::AwqOptions awq;
  bool awq_clip = true;
  std::vector<RecipeOverride> overrides;
  bool mixed = false;
  double mixed_bpw = 0;
  std::vector<quant::TensorChoice> candidates;
  int rounds = 1;
  int64_t sensitivity_tokens = 4096;
  bool strict = false;
  bool qad = false;
  distill::QadOptions qad_options;
  StoryRange qad_stories{0, 400};
  double qad_val_fraction = 0.05;
  int qad_teacher_samples = 0;           ///< qad: sequences sampled from the FP model added to the training text
  bool qad_init_gptq = false;            ///< qad: init: gptq (the latent weights start at the GPTQ result)
  // Structured pruning and distillation (compile: prune -> distill -> quantize).
  bool prune = false;
  double keep_heads = 1, keep_ffn = 1, keep_embed = 1;
  int drop_blocks = 0;
  std::string head_mode, importance, prune_budget, prune_alloc;
  bool distill = false;
  distill::QadOptions distill_options;   ///< steps 0 = no distillation
  StoryRange distill_stories{0, 400};
  double distill_val_fraction = 0.05;
  int teacher_samples = 0;               ///< sequences sampled from the teacher added to the training text
  VerifyThresholds verify;               ///< `verify:` section (kerf verify's acceptance thresholds)
  /// `placement:` section: op-name pattern (fnmatch) -> unit ("cpu", "gpu", "npu"), in file order;
  /// pins for the placement pass (compiler/targets/placement.h), after --place.
  std::vector<std::pair<std::string, std::string>> placement;
};

/// Parses a recipe. Errors: kIo (unreadable), kBadInput naming the file, the key and what is wrong
/// (unknown key, bad precision / method / rule, wrong type, YAML syntax error with line number).
Result<Recipe> parse_recipe_file(const std::string& path);
Result<Recipe> parse_recipe_text(const std::string& text, const std::string& label);

/// Whether override `match` applies to weight `u` (role keywords or name glob, see above).
bool recipe_matches(const std::string& match, const quant::WeightUse& u);

/// The choice for every weight matrix from the default and the overrides (first match wins).
/// `unmatched` receives overrides that matched no tensor.
std::map<std::string, quant::TensorChoice> recipe_choices(const Recipe& r, const std::vector<quant::WeightUse>& weights,
                                                          std::vector<std::string>* unmatched);

}  // namespace kerf::pipeline
