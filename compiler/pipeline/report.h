// The JSON report "kerf.report/1" that `kerf eval --json` and `kerf verify --json` write: the EVAL.md
// metrics of an artifact against its FP reference, every tensor's stored precision / method / error,
// per-layer aggregates, the per-op placement of the program, and (verify only) the speed and the
// verification verdict. Field reference: docs/report.md; JSON Schema: docs/report.schema.json.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "compiler/pipeline/eval.h"
#include "kerf/kerf.h"

namespace kerf::pipeline {

/// The value of every report's "schema" key.
inline constexpr const char* kReportSchema = "kerf.report/1";
/// The schema of the older reports (`kerf eval --json` before kerf.report/1), still read.
inline constexpr const char* kEvalReportSchema = "kerf.eval/1";

/// A "quant.tensor.<name>" metadata string, parsed. Two forms are written by the compiler
/// (compiler/pipeline/emit.cpp):
///   calibrated: "<qspec> <method> <role> [layout=tR] rel.err=X [out.err=Y] [sens.kl=Z]", e.g.
///               "int4_asym:g32 gptq/search linear layout=t4 rel.err=0.0774 out.err=0.00053";
///   RTN baseline: "<stored precision> <method> <role>", e.g. "qasym4/f16 g32 t4 rtn linear" or
///               "q4_asym g32 rtn linear" (the precision is then translated to qspec text:
///               "int4_asym:g32"; a group as wide as the row is ":row").
/// Fields that are absent or not understood stay nullopt (the report writes null).
struct TensorDetail {
  std::optional<std::string> precision;  ///< quant/qspec.h text, e.g. "int4_asym:g32", "int8_sym:row", "f16"
  std::optional<std::string> method;     ///< e.g. "gptq/search", "rtn", "rtn/search", "gptq/search+qad"
  std::optional<std::string> role;       ///< e.g. "linear", "embedding+classifier"
  std::optional<int> tile_rows;          ///< layout=tR (tiled layout, R rows per tile)
  std::optional<double> rel_err;         ///< relative RMS weight error ||W - Q(W)|| / ||W||
  std::optional<double> out_err;         ///< output error on the calibration inputs (relative MSE)
  std::optional<double> sens_kl;         ///< mixed precision: measured sensitivity (KL, nats)
};

/// Parses `detail` (see TensorDetail). `cols`: the tensor's row width (to recognise per-row groups
/// in the RTN form; 0 if unknown). Never fails: an empty or foreign string gives all nullopt.
TensorDetail parse_tensor_detail(const std::string& detail, int64_t cols);

/// Transformer block of a tensor name: N from "...layers.N..." ("model.layers.3.wq.weight" -> 3);
/// nullopt when the name has no such component.
std::optional<int64_t> layer_index(const std::string& name);

/// Fills what the report needs from the open artifact beyond evaluate()'s metrics: every tensor's
/// storage codes (TensorInfo::dtype_code / flags / group_size, matched by name), the layout
/// ("compile.layout"), and the program op by op with its compute unit and kernel family
/// (EvalReport::ops). Called by evaluate(); safe to call again (replaces rep->ops).
void collect_artifact_structure(const kerf_model* m, EvalReport* rep);

/// The report as a JSON object, keys in the documented order (docs/report.md). Reference-dependent
/// numbers (ppl_reference, nll_reference, kl, top1) are null when the report has no reference.
/// tool.version is kerf_version(), tool.commit is kerf_commit() (build_info.h).
nlohmann::ordered_json report_object(const EvalReport& r);

}  // namespace kerf::pipeline
