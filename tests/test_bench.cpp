// `kerf bench`: the JSON report's keys and values on a small tiled Llama, the byte count of a
// decode step, the bandwidth measurement, option errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "compiler/pipeline/bench.h"
#include "tests/runtime/test_util.h"

using kerf::pipeline::BenchOptions;
using kerf::pipeline::run_bench;

namespace {

/// A 2-layer Llama (dim 64) with qsym4 g32 weights in the tiled layout and quant.bpw = 4.5.
std::string small_artifact(const kt::TempDir& d) {
  kt::LlamaCfg c;
  c.dim = 64;
  c.hidden = 96;
  c.max_seq = 32;
  kt::art::ArtifactBuilder b;
  kt::build_llama(b, c, kt::random_llama(c, 5), kt::fmt::DType::kQSym, 32, false,
                  kt::fmt::make_qflags_tiled(4, kt::fmt::ScaleFormat::kF16, 2));
  b.add_meta_float("quant.bpw", 4.5);
  const std::string path = d.file("m.kerf");
  REQUIRE(b.write(path) == "");
  return path;
}

}  // namespace

TEST_CASE("kerf bench: JSON keys, statistics, bytes per decoded token, roofline", "[bench]") {
  kt::TempDir d;
  BenchOptions o;
  o.artifact_path = small_artifact(d);
  o.prompt_tokens = 16;
  o.gen_tokens = 8;
  o.repeat = 2;
  o.bandwidth_mib = 64;
  auto r = run_bench(o);
  REQUIRE(r.ok());
  const nlohmann::json j = nlohmann::json::parse(kerf::pipeline::bench_report_json(*r));
  for (const char* k : {"artifact", "isa", "threads", "kv_cache", "prompt_tokens", "gen_tokens", "repeat",
                        "prefill_tps", "decode_tps", "peak_rss_bytes", "rss_before_load_bytes", "artifact_bytes", "bpw",
                        "bytes_per_decoded_token", "measured_bandwidth_gbs", "roofline_fraction"})
    CHECK(j.contains(k));
  for (const char* k : {"prefill_tps", "decode_tps"}) {
    INFO(k);
    const auto& s = j[k];
    REQUIRE(s["samples"].size() == 2);
    const double a = s["samples"][0], b = s["samples"][1];
    CHECK(s["mean"].get<double>() == Approx((a + b) / 2));
    CHECK(s["min"].get<double>() == std::min(a, b));
    CHECK(s["max"].get<double>() == std::max(a, b));
    CHECK(s["stddev"].get<double>() == Approx(std::fabs(a - b) / std::sqrt(2.0)));
    CHECK(s["min"].get<double>() > 0);
  }
  CHECK(j["threads"] == 1);
  CHECK(j["kv_cache"] == "f32");
  CHECK(j["bpw"] == 4.5);
  CHECK(j["artifact_bytes"] == std::filesystem::file_size(o.artifact_path));
  CHECK(j["peak_rss_bytes"].get<uint64_t>() >= j["rss_before_load_bytes"].get<uint64_t>());
  CHECK(j["rss_before_load_bytes"].get<uint64_t>() > 0);

  // Bytes of a decode step, counted independently by tensor name: every matrix and norm once (the
  // tied embedding as the classifier) plus one embedding row.
  kerf_model* m = nullptr;
  char err[256];
  REQUIRE(kerf_model_open(o.artifact_path.c_str(), 0, &m, err, sizeof err) == KERF_OK);
  CHECK(j["isa"] == kerf_model_isa(m));
  uint64_t want = 0;
  for (int i = 0; i < kerf_model_tensor_count(m); ++i) {
    kerf_tensor_info ti;
    REQUIRE(kerf_model_tensor_info(m, i, &ti) == KERF_OK);
    want += ti.bytes;
    if (std::string(ti.name) == "tok_embeddings.weight") want += ti.bytes / uint64_t(ti.shape[0]);
  }
  CHECK(kerf::pipeline::decode_weight_bytes(m) == want);
  kerf_model_close(m);
  CHECK(j["bytes_per_decoded_token"] == want);
  const double bw = j["measured_bandwidth_gbs"];
  CHECK(bw > 0.1);
  CHECK(j["roofline_fraction"].get<double>() ==
        Approx(double(want) * j["decode_tps"]["mean"].get<double>() / (bw * 1e9)).epsilon(1e-12));

  // decode and bandwidth skipped: nulls, no roofline
  o.gen_tokens = 0;
  o.bandwidth_mib = 0;
  o.repeat = 1;
  o.kv_f16 = true;
  auto r2 = run_bench(o);
  REQUIRE(r2.ok());
  const nlohmann::json j2 = nlohmann::json::parse(kerf::pipeline::bench_report_json(*r2));
  CHECK(j2["decode_tps"].is_null());
  CHECK(j2["measured_bandwidth_gbs"].is_null());
  CHECK(j2["roofline_fraction"].is_null());
  CHECK(j2["prefill_tps"]["stddev"] == 0.0);
  CHECK(j2["kv_cache"] == "f16");
}

TEST_CASE("kerf bench: option and artifact errors", "[bench]") {
  kt::TempDir d;
  BenchOptions o;
  o.artifact_path = small_artifact(d);
  o.bandwidth_mib = 0;
  auto code = [&](const BenchOptions& x) { return run_bench(x).status().code(); };
  BenchOptions x = o;
  x.repeat = 0;
  CHECK(code(x) == kerf::ErrorCode::kInvalidArgument);
  x = o;
  x.prompt_tokens = 0;
  x.gen_tokens = 0;
  CHECK(code(x) == kerf::ErrorCode::kInvalidArgument);
  x = o;
  x.prompt_tokens = 33;  // max_seq_len 32
  auto r = run_bench(x);
  CHECK(r.status().code() == kerf::ErrorCode::kInvalidArgument);
  CHECK_THAT(r.status().message(), Catch::Contains("max_seq_len 32"));
  x = o;
  x.threads = -1;
  CHECK(code(x) == kerf::ErrorCode::kInvalidArgument);
  x = o;
  x.bandwidth_mib = 8;  // inside the caches: not a DRAM measurement
  CHECK(code(x) == kerf::ErrorCode::kInvalidArgument);
  x = o;
  x.artifact_path = d.file("missing.kerf");
  CHECK(code(x) == kerf::ErrorCode::kIo);
  kt::write_file(d.file("junk.kerf"), std::vector<uint8_t>(100, 7));
  x.artifact_path = d.file("junk.kerf");
  CHECK(code(x) == kerf::ErrorCode::kBadInput);
}
