// `kerf verify`: a CI gate. Measures an artifact with the EVAL.md protocol (evaluate()), compares
// the metrics with acceptance thresholds (command line, else the recipe's `verify:` section stored in
// the artifact as "verify.*" metadata) and optionally with a previous report (--baseline), and says
// what failed. The result is the "kerf.report/1" report with a "verification" object (and "speed"
// with --bench); docs/report.md documents every key.
//
// Checks (metric names as in the report's verification.checks[].metric):
//   ppl_increase      ppl / ppl_reference - 1            <= max_ppl_increase       (fraction)
//   top1              top-1 agreement with the reference >= min_top1
//   kl                mean KL(p_ref || p_artifact)       <= max_kl                 (nats / token)
//   with a baseline report (same text and story range):
//   ppl_vs_baseline   ppl / baseline ppl - 1             <= max_ppl_regression     (default 1 %)
//   kl_vs_baseline    kl - baseline kl                   <= max_kl_regression      (default 0.005 nats)
//   top1_vs_baseline  top1 - baseline top1               >= -max_top1_regression   (default 0.01)
//   bpw_vs_baseline   bpw - baseline bpw: reported; fails only when the artifact's recipe has a
//                     bits-per-weight budget (mixed.bpw) and bpw exceeds it (limit = budget - baseline bpw)
//   bytes_vs_baseline bytes - baseline bytes: reported only (limit null)
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compiler/ir/status.h"
#include "compiler/pipeline/eval.h"
#include "compiler/pipeline/recipe_file.h"

namespace kerf::pipeline {

/// Tolerances used against a baseline when neither the command line nor the recipe sets them.
inline constexpr double kDefaultMaxPplRegression = 0.01;    ///< 1 % relative perplexity
inline constexpr double kDefaultMaxKlRegression = 0.005;    ///< nats / token
inline constexpr double kDefaultMaxTop1Regression = 0.01;   ///< one percentage point of agreement

struct VerifyOptions {
  EvalOptions eval;              ///< artifact, reference (required), text, stories, threads, progress
  VerifyThresholds thresholds;   ///< from the command line; each set one overrides the artifact's
  std::string baseline_path;     ///< previous report ("kerf.report/1" or "kerf.eval/1"); empty = none
  bool bench = false;            ///< add "speed": kerf bench with 1 thread, -p 64 -n 32 -r 1
};

/// One comparison.
struct VerifyCheck {
  std::string metric;            ///< see the table above
  double value = 0;              ///< fractions for ppl_increase / ppl_vs_baseline, else the metric's unit
  std::optional<double> limit;   ///< nullopt: reported only, never fails
  std::string op = "<=";         ///< value OP limit must hold: "<=" or ">="
  bool passed = true;
  std::string message;           ///< e.g. "ppl_increase 4.87 % <= 6 % (ppl 5.589 vs reference 5.328)"
};

/// Thresholds in force and where each came from ("command line", "recipe", "default").
struct ResolvedThresholds {
  VerifyThresholds values;
  std::map<std::string, std::string> sources;
  std::optional<double> bpw_budget;  ///< the artifact's "quant.bpw_budget" (a mixed-precision recipe's budget)
};

struct VerifyOutcome {
  nlohmann::ordered_json report;                   ///< kerf.report/1 with "verification" (+ "speed")
  std::optional<nlohmann::ordered_json> baseline;  ///< the baseline report as read
  std::vector<VerifyCheck> checks;
  bool passed = true;
};

/// Sets the threshold `key` (a VerifyThresholds field name) from a command-line text ("5%" or
/// "0.05", parse_threshold). kInvalidArgument naming `flag` and the text.
Status set_threshold(VerifyThresholds* t, const std::string& key, const std::string& flag, const std::string& text);

/// Reads a report file (a baseline). Errors: kIo (missing / unreadable), kBadInput naming the file
/// when it is not JSON, not an object, has another "schema" than kerf.report/1 / kerf.eval/1, or
/// lacks a numeric "ppl".
Result<nlohmann::ordered_json> read_report_file(const std::string& path);

/// The thresholds of `artifact_path` ("verify.*" metadata) overridden by `command_line`, plus the
/// baseline defaults when `with_baseline`, and the recipe's bpw budget. Errors: the loader's
/// (kIo / kBadInput / kUnsupported), kBadInput for malformed verify.* values.
Result<ResolvedThresholds> resolve_thresholds(const std::string& artifact_path, const VerifyThresholds& command_line,
                                              bool with_baseline);

/// The checks of a report object (report_object()) against thresholds and an optional baseline
/// report. Pure: no I/O. Checks whose inputs are missing (null ppl_reference, a baseline without
/// "kl") are left out.
std::vector<VerifyCheck> run_checks(const nlohmann::ordered_json& report, const ResolvedThresholds& th,
                                    const nlohmann::ordered_json* baseline);

/// The report's "verification" object: passed, thresholds, threshold_sources, checks, baseline.
nlohmann::ordered_json verification_object(const std::vector<VerifyCheck>& checks, const ResolvedThresholds& th,
                                           const nlohmann::ordered_json* baseline, const std::string& baseline_path);

/// Runs the whole gate: thresholds (kInvalidArgument when there are none at all: the message names
/// the flags to give), baseline (read first, so a bad file fails fast; kInvalidArgument when it was
/// measured on another story range or text), the artifact's package manifest when one exists (its
/// hash must match the artifact: kBadInput otherwise), evaluate(), checks, and --bench. A failed
/// check is NOT an error here: see VerifyOutcome::passed.
Result<VerifyOutcome> run_verify(const VerifyOptions& opt);

/// The table kerf verify prints on stdout: a header line, then metric / value / limit / result rows.
std::string verify_table(const VerifyOutcome& o);
/// "kerf verify: FAILED: <message>; <message>" naming every failed check ("" when all passed).
std::string verify_failure_line(const VerifyOutcome& o);

/// Records the verification in the artifact's package manifest (manifest.h) when the manifest file
/// exists: its "verification" becomes report.verification plus "stories" and the measured "metrics".
/// Returns the manifest path written, or "" when there is none. Errors: manifest_set_verification's.
Result<std::string> record_verification_in_manifest(const std::string& artifact_path, const VerifyOutcome& o);

}  // namespace kerf::pipeline
