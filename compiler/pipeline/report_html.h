// `kerf report`: renders a "kerf.report/1" JSON report (written by `kerf eval --json` / `kerf verify
// --json`, see docs/report.md) as one self-contained HTML page: inline CSS, charts as inline SVG,
// no scripts, no network resources (no external CSS, JS, fonts or images), readable on screen and
// in print. Older "kerf.eval/1" reports are accepted too; sections whose data a report lacks say so.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compiler/ir/status.h"

namespace kerf::pipeline {

/// Renders REPORT as a complete HTML document (UTF-8, starting with "<!DOCTYPE html>").
///
/// Sections, each a `<section id="...">` with a heading: summary, verification, tensors, layers,
/// curve, stages, placement, baseline. Every string taken from the JSON is HTML-escaped.
///
/// @param report    the report object ("schema": "kerf.report/1" or "kerf.eval/1"); optional keys
///                  may be absent, and keys of an unexpected type are shown as missing, never throw.
/// @param baseline  an older report to diff against (metric, baseline, this, delta; regressions
///                  highlighted; tensors whose storage changed), or nullptr: then the baseline numbers
///                  `kerf verify` recorded in report["verification"]["baseline"], if any.
/// @param curve     reports of the same model at several bit budgets; with two or more, the
///                  "curve" section plots perplexity against bits per weight (one point per report,
///                  labelled with its recipe). May include REPORT itself; may be empty.
/// @return the HTML text; the same inputs give the same bytes (no timestamps). Does not validate
///         the schema (the caller does: check_report / read_report).
std::string render_report_html(const nlohmann::ordered_json& report, const nlohmann::ordered_json* baseline,
                               const std::vector<nlohmann::ordered_json>& curve);

/// Checks that J is a report kerf can render: a JSON object with "schema" "kerf.report/1" (or the older
/// "kerf.eval/1"), and the known keys, where present and not null, of the right JSON type (numbers,
/// strings, arrays of objects, objects). LABEL (usually the file name) starts every error message.
/// @return BadInput naming LABEL and the offending key, or Ok.
Status check_report(const nlohmann::ordered_json& j, const std::string& label);

/// Reads and checks (check_report) the report at PATH.
/// @return the parsed report; IoError when the file cannot be read, BadInput (naming PATH) for
/// malformed JSON or a wrong schema.
Result<nlohmann::ordered_json> read_report(const std::string& path);

/// `kerf report` options.
struct ReportOptions {
  std::string report_path;               ///< the report to render
  std::string baseline_path;             ///< optional: an older report to diff against
  std::vector<std::string> curve_paths;  ///< optional: reports at other bit budgets; with any, the curve
                                         ///< holds REPORT plus these (each file once)
  std::string output_path;               ///< the HTML file, written atomically (temp file + rename)
};

/// Reads the reports (read_report), renders them (render_report_html) and writes OUTPUT atomically.
/// @return InvalidArgument for an empty report / output path; the read_report errors (prefixed with
/// "--baseline" / "--curve" for those files); IoError when OUTPUT cannot be written (nothing is left
/// behind then).
Status write_report_html(const ReportOptions& opt);

}  // namespace kerf::pipeline
