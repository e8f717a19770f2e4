// `kerf bench`: throughput of an artifact on runtime-lite, with llama-bench's semantics, and how
// close decoding comes to the memory-bandwidth roofline.
//
//   prefill: one evaluation of P random tokens from an empty context (logits of the last token);
//   decode:  G single-token evaluations of random tokens from an empty context (logits each time);
//   each repeated R times after one untimed warm-up of both; tokens/s = tokens / wall seconds.
//
// JSON report (bench_report_json), keys in this order:
//   artifact                 path
//   isa                      instruction set of the integer kernels (kerf_model_isa)
//   threads                  threads of the session (kerf_session_set_threads)
//   kv_cache                 "f32" | "f16"
//   prompt_tokens, gen_tokens, repeat    P, G, R
//   prefill_tps, decode_tps  {mean, stddev (sample, 0 when R == 1), min, max, samples: [R values]},
//                            tokens per second; null when P (G) is 0
//   peak_rss_bytes           getrusage ru_maxrss of the process after the timed runs (before the
//                            bandwidth buffer exists); includes the kerf CLI's own libraries
//   rss_before_load_bytes    resident bytes before the artifact was opened (so the runtime's share
//                            is peak_rss_bytes - rss_before_load_bytes)
//   artifact_bytes           file size
//   bpw                      the artifact's quant.bpw metadata (null when absent)
//   bytes_per_decoded_token  weight payload bytes a decode step reads: every Linear and GatedFFN
//                            weight tensor (a tied classifier counts once, as a Linear), every
//                            RMSNorm weight, and one Embedding row (table bytes / rows)
//   measured_bandwidth_gbs   streaming read of a buffer of bandwidth_mib MiB by `threads` threads,
//                            median of 5 passes, 1e9 bytes/s (null when bandwidth_mib is 0)
//   roofline_fraction        bytes_per_decoded_token * decode_tps.mean / measured bandwidth (null
//                            when either is missing): 1.0 would be decoding at memory speed
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/ir/status.h"
#include "kerf/kerf.h"

namespace kerf::pipeline {

struct BenchOptions {
  std::string artifact_path;
  int threads = 1;              ///< 0 = one per online CPU
  int prompt_tokens = 128;      ///< P >= 0 (0: no prefill test)
  int gen_tokens = 64;          ///< G >= 0 (0: no decode test); P + G >= 1, each <= max_seq_len
  int repeat = 3;               ///< R >= 1
  bool kv_f16 = false;          ///< KERF_KV_F16 cache
  int64_t bandwidth_mib = 1024; ///< buffer of the bandwidth measurement (>= 64 MiB, far above L3); 0 = skip
  uint64_t seed = 1;            ///< random tokens
  bool cpu_only = false;        ///< KERF_SESSION_CPU_ONLY: ignore the artifact's GPU / NPU placement
};

/// Time of one compute unit over the timed repetitions of one test (kerf_session_unit_stats).
struct UnitTiming {
  std::string unit, device;     ///< "cpu" / "gpu" / "npu"; the device behind it
  uint64_t ops = 0;
  double run_ms = 0, busy_ms = 0, transfer_ms = 0;  ///< per repetition (busy: device-measured, 0 = unknown)
  uint64_t uploads = 0, downloads = 0;              ///< per repetition
  double upload_mib = 0, download_mib = 0;          ///< per repetition
};

/// Tokens per second over the R repetitions.
struct BenchStat {
  bool measured = false;
  double mean = 0, stddev = 0, min = 0, max = 0;
  std::vector<double> samples;
};

struct BenchReport {
  std::string artifact, isa;
  int threads = 1, prompt_tokens = 0, gen_tokens = 0, repeat = 0;
  bool kv_f16 = false;
  BenchStat prefill_tps, decode_tps;
  std::vector<UnitTiming> prefill_units, decode_units;  ///< per unit the session uses
  uint64_t peak_rss_bytes = 0, rss_before_load_bytes = 0, artifact_bytes = 0, bytes_per_decoded_token = 0;
  bool has_bpw = false;
  double bpw = 0;
  double measured_bandwidth_gbs = 0;  ///< 0 = not measured
  double roofline_fraction = 0;       ///< 0 = not computed
};

/// Runs the benchmark. Errors: kInvalidArgument for options out of range (naming the option and the
/// model's max_seq_len), kIo / kBadInput / kUnsupported when the artifact cannot be opened (the
/// loader's message), kInternal when the runtime fails to evaluate.
Result<BenchReport> run_bench(const BenchOptions& opt);

/// Weight payload bytes one decode step reads (the bytes_per_decoded_token rule above).
uint64_t decode_weight_bytes(const kerf_model* m);

/// Streaming-read bandwidth in GB/s (1e9 bytes/s): `threads` threads (>= 1) each sum their slice of
/// a `bytes`-byte buffer (written once before timing); the median of `passes` passes. kInternal
/// when the buffer cannot be allocated.
Result<double> measure_read_bandwidth(uint64_t bytes, int threads, int passes);

std::string bench_report_json(const BenchReport& r);
/// The human-readable table kerf bench prints.
std::string bench_report_text(const BenchReport& r);

}  // namespace kerf::pipeline
