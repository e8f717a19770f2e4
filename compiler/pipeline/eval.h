// `kerf eval`: the shared/EVAL.md protocol. The FP reference (the source model, lifted and run by
// the LibTorch reference executor in float32) and the ARTIFACT (run by runtime-lite) see the same
// stories, tokenized by the artifact's tokenizer and truncated to the model's max_seq_len, each
// story in a fresh context.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "compiler/pipeline/text.h"

namespace kerf::pipeline {

struct EvalOptions {
  std::string artifact_path;
  std::string reference_path;  ///< FP model (ONNX); empty = artifact metrics only (no KL / top-1)
  std::string text_path;
  StoryRange stories{400, 800};
  int threads = 1;             ///< LibTorch threads for the reference (per-story forwards are small)
  bool progress = false;       ///< the stories as a progress task ("eval") of the installed reporter (progress.h)
  bool stages = true;          ///< pruned artifacts: also score the pruned and distilled FP models (needs the
                               ///< reference; the distilled weights come from the checkpoint the artifact names)
  bool cpu_only = false;       ///< run every op on the CPU (KERF_SESSION_CPU_ONLY), ignoring GPU / NPU placement:
                               ///< the same weights in float, to isolate what a unit's arithmetic costs
};

struct TensorInfo {
  std::string name, dtype, detail;  ///< dtype: the stored precision ("qasym4/f16 g32 t4"); detail: the
                                    ///< "quant.tensor.<name>" metadata, e.g. "int4_asym:g32 gptq/search
                                    ///< linear layout=t4 rel.err=0.0774 out.err=0.00053" (report.h parses it)
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  // Storage codes (kerf_tensor_info; filled by collect_artifact_structure in report.h):
  uint32_t dtype_code = 0;   ///< kerf::fmt::DType
  uint32_t flags = 0;        ///< TensorEntry flags (generic quantized dtypes: bits, scales, layout)
  uint32_t group_size = 0;   ///< 0 for plain dtypes
};

/// One op of the artifact's program and where runtime-lite runs it (the report's "placement").
struct OpPlacement {
  int index = 0;
  std::string op;                    ///< "kerf.Linear", "kerf.RMSNorm", ...
  std::string name;                  ///< the op's output value, e.g. "layers.0.q"
  std::vector<std::string> weights;  ///< tensors it reads, in input order (GatedFFN: w1, w3, w2)
  std::string unit = "cpu";          ///< compute unit of decode (one token): cpu, gpu or npu (format 1.3 placement)
  std::string unit_prefill = "cpu";  ///< compute unit of prefill (more than one token)
  std::string kernel;                ///< kernel family, e.g. "tiled int8-act GEMV/GEMM", "vectorized float"
  std::string reason;                ///< why this unit and kernel
};

/// One row of the compression-stage table (artifacts compiled with pruning): the source model, the
/// pruned model before distillation, the distilled FP student, and the quantized artifact, each
/// scored on the same stories against the source (FP stages by the reference executor, the last
/// by runtime-lite).
struct StageMetrics {
  std::string name;             ///< "original" | "pruned" | "distilled" | "quantized"
  bool measured = false;        ///< false: not available (note says why)
  std::string note;
  double ppl = 0, nll = 0, kl = 0, top1 = 0;
  int64_t params = 0;           ///< parameters (every initializer read by a node, once)
  double decode_flops = 0, prefill_flops = 0;  ///< per token, at `context` (prune/prune.h Cost)
  int64_t context = 0;
  uint64_t bytes = 0;           ///< float32 weights for FP stages; the artifact's file size for "quantized"
};

struct EvalReport {
  std::string artifact, reference, text;
  StoryRange stories;
  int64_t n_stories = 0;
  int64_t predicted_tokens = 0;     ///< positions scored: sum over stories of (tokens - 1)
  double nll = 0, nll_reference = 0;  ///< mean NLL (nats / token)
  double ppl = 0, ppl_reference = 0;  ///< exp(mean NLL)
  double kl = 0;                      ///< mean KL(p_ref || p_artifact), nats
  double top1 = 0;                    ///< fraction of positions whose argmax agrees
  double bpw = 0;                     ///< effective bits per weight (EVAL.md), from the artifact
  uint64_t bytes = 0;                 ///< artifact file size
  double reference_seconds = 0, artifact_seconds = 0;  ///< wall time of each forward over the set
  double artifact_tokens_per_second = 0;               ///< prefill tokens/s of runtime-lite (1 thread)
  std::vector<TensorInfo> tensors;
  std::string recipe, target;
  std::vector<StageMetrics> stages;   ///< empty unless the artifact records pruning (and a reference is given)
  std::string prune_summary;          ///< the artifact's "prune.summary"
  std::vector<OpPlacement> ops;       ///< the program, op by op (collect_artifact_structure)
  std::string layout;                 ///< the artifact's "compile.layout" ("tiled4", "plain"; empty when absent)
};

/// Runs the protocol. Errors: kIo / kBadInput for unreadable or corrupt artifact, model or text
/// (messages from the loader / importer), kInvalidArgument for a bad story range, kBadInput when
/// the reference and artifact vocabularies differ.
Result<EvalReport> evaluate(const EvalOptions& opt);

/// The report as JSON, schema "kerf.report/1" (docs/report.md, docs/report.schema.json): top-level
/// numbers ppl, ppl_reference, kl, top1, bpw, bytes, ..., per-tensor and per-layer tables, placement.
/// Built by report_object() of report.h (which verify extends with "speed" / "verification").
std::string eval_report_json(const EvalReport& r);
/// The report as Markdown.
std::string eval_report_markdown(const EvalReport& r);

}  // namespace kerf::pipeline
