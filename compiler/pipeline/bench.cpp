#include "compiler/pipeline/bench.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "compiler/pipeline/json_io.h"

namespace kerf::pipeline {

namespace {

struct ModelCloser {
  void operator()(kerf_model* m) const { kerf_model_close(m); }
};
struct SessionFree {
  void operator()(kerf_session* s) const { kerf_session_free(s); }
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return 0;
  return resident * uint64_t(sysconf(_SC_PAGESIZE));
}

BenchStat stat_of(std::vector<double> v) {
  BenchStat s;
  s.measured = true;
  s.samples = v;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(ss / double(v.size() - 1)) : 0.0;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}

Status eval_status(int rc, const std::string& what) {
  return Internal(std::string("runtime-lite failed during ") + what + ": " + kerf_status_string(rc));
}

}  // namespace

uint64_t decode_weight_bytes(const kerf_model* m) {
  auto bytes = [&](int t, bool one_row) -> uint64_t {
    kerf_tensor_info ti;
    if (kerf_model_tensor_info(m, t, &ti) != KERF_OK) return 0;
    return one_row && ti.rank >= 1 && ti.shape[0] > 0 ? ti.bytes / uint64_t(ti.shape[0]) : ti.bytes;
  };
  uint64_t total = 0;
  for (int i = 0; i < kerf_model_op_count(m); ++i) {
    kerf_op_info op;
    if (kerf_model_op_info(m, i, &op) != KERF_OK) continue;
    const std::string name = op.op;
    const bool row = name == "Embedding";
    if (row || name == "Linear" || name == "GatedFFN" || name == "RMSNorm")
      for (int k = 0; k < op.n_tensors; ++k) total += bytes(op.tensors[k], row);
  }
  return total;
}

Result<double> measure_read_bandwidth(uint64_t bytes, int threads, int passes) {
  if (threads < 1 || passes < 1 || bytes < 4096) return InvalidArgument("measure_read_bandwidth: bad arguments");
  const size_t n = size_t(bytes / 8);
  std::unique_ptr<uint64_t, void (*)(void*)> buf(static_cast<uint64_t*>(std::aligned_alloc(64, n * 8)), std::free);
  if (!buf) return Internal("cannot allocate the " + std::to_string(bytes >> 20) + " MiB bandwidth buffer");
  uint64_t* p = buf.get();
  for (size_t i = 0; i < n; ++i) p[i] = i;  // fault the pages in; distinct values
  std::vector<double> gbs;
  std::vector<uint64_t> sink(size_t(threads) * 8);
  for (int pass = 0; pass < passes; ++pass) {
    auto sum_slice = [&](int t) {
      const size_t b = n * size_t(t) / size_t(threads), e = n * size_t(t + 1) / size_t(threads);
      uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      size_t i = b;
      for (; i + 4 <= e; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
      }
      for (; i < e; ++i) a0 += p[i];
      sink[size_t(t) * 8] = a0 + a1 + a2 + a3;  // one cache line per thread
    };
    const double t0 = now_s();
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(sum_slice, t);
    sum_slice(0);
    for (auto& th : pool) th.join();
    gbs.push_back(double(n * 8) / (now_s() - t0) / 1e9);
  }
  uint64_t check = 0;
  for (uint64_t s : sink) check += s;
  const uint64_t un = uint64_t(n);  // sum of 0 .. n-1 without overflowing n * (n - 1)
  if (check != (un % 2 == 0 ? un / 2 * (un - 1) : un * ((un - 1) / 2))) return Internal("bandwidth buffer read back wrong");
  std::sort(gbs.begin(), gbs.end());
  return gbs[gbs.size() / 2];
}

Result<BenchReport> run_bench(const BenchOptions& opt) {
  if (opt.threads < 0 || opt.threads > 1024) return InvalidArgument("--threads must be in [0, 1024]");
  if (opt.prompt_tokens < 0 || opt.gen_tokens < 0 || opt.prompt_tokens + opt.gen_tokens < 1)
    return InvalidArgument("--prompt-tokens and --gen-tokens must be >= 0, not both 0");
  if (opt.repeat < 1) return InvalidArgument("--repeat must be >= 1");
  if (opt.bandwidth_mib != 0 && (opt.bandwidth_mib < 64 || opt.bandwidth_mib > (int64_t(1) << 20)))
    return InvalidArgument("--bandwidth-mib must be 0 (skip) or in [64, 1048576]");
  BenchReport rep;
  rep.artifact = opt.artifact_path;
  rep.prompt_tokens = opt.prompt_tokens;
  rep.gen_tokens = opt.gen_tokens;
  rep.repeat = opt.repeat;
  rep.kv_f16 = opt.kv_f16;
  rep.rss_before_load_bytes = resident_bytes();

  char err[1024] = {0};
  kerf_model* raw = nullptr;
  int rc = kerf_model_open(opt.artifact_path.c_str(), 0, &raw, err, sizeof err);
  if (rc != KERF_OK) {
    const std::string msg = std::string(kerf_status_string(rc)) + ": " + err;
    return rc == KERF_ERR_IO ? IoError(msg) : (rc == KERF_ERR_UNSUPPORTED ? Unsupported(msg) : BadInput(msg));
  }
  std::unique_ptr<kerf_model, ModelCloser> model(raw);
  const int vocab = kerf_model_vocab_size(raw), max_seq = kerf_model_max_seq_len(raw);
  if (opt.prompt_tokens > max_seq || opt.gen_tokens > max_seq)
    return InvalidArgument("--prompt-tokens " + std::to_string(opt.prompt_tokens) + " / --gen-tokens " +
                           std::to_string(opt.gen_tokens) + " exceed the model's max_seq_len " +
                           std::to_string(max_seq));
  std::error_code ec;
  rep.artifact_bytes = std::filesystem::file_size(opt.artifact_path, ec);
  rep.has_bpw = kerf_model_meta_float(raw, "quant.bpw", &rep.bpw) == KERF_OK;
  rep.isa = kerf_model_isa(raw);
  rep.bytes_per_decoded_token = decode_weight_bytes(raw);

  kerf_session* sraw = nullptr;
  char serr[1024] = {0};
  rc = kerf_session_create_ex(raw, std::max(opt.prompt_tokens, opt.gen_tokens), opt.cpu_only ? KERF_SESSION_CPU_ONLY : 0,
                              &sraw, serr, sizeof serr);
  if (rc != KERF_OK)
    return rc == KERF_ERR_UNSUPPORTED ? Unsupported(std::string("session creation: ") + serr)
                                      : eval_status(rc, std::string("session creation: ") + serr);
  std::unique_ptr<kerf_session, SessionFree> sess(sraw);
  if ((rc = kerf_session_set_threads(sraw, opt.threads)) != KERF_OK) return eval_status(rc, "thread start");
  if (opt.kv_f16 && (rc = kerf_session_set_kv_type(sraw, KERF_KV_F16)) != KERF_OK)
    return eval_status(rc, "KV cache allocation");
  rep.threads = kerf_session_threads(sraw);

  std::mt19937_64 rng(opt.seed);
  auto token = [&] { return int32_t(rng() % uint64_t(vocab)); };
  std::vector<float> logits(static_cast<size_t>(vocab));
  std::vector<double> pp, tg;
  // Per-unit time of the timed repetitions of one test, divided by their number.
  std::vector<kerf_unit_stats> acc[2];
  for (auto& a : acc) a.assign(3, kerf_unit_stats{});
  auto take_stats = [&](int test) {
    for (int u = 0; u < 3; ++u) {
      kerf_unit_stats st{};
      if (kerf_session_unit_stats(sraw, u, &st) != KERF_OK) continue;
      kerf_unit_stats& a = acc[test][size_t(u)];
      a.ops += st.ops, a.run_ns += st.run_ns, a.busy_ns += st.busy_ns, a.transfer_ns += st.transfer_ns;
      a.uploads += st.uploads, a.upload_bytes += st.upload_bytes, a.downloads += st.downloads, a.download_bytes += st.download_bytes;
    }
  };
  auto sess_error = [&](int code, const char* what) {
    return eval_status(code, std::string(what) + ": " + kerf_session_last_error(sraw));
  };
  for (int r = -1; r < opt.repeat; ++r) {  // r == -1: warm-up
    if (opt.prompt_tokens > 0) {
      std::vector<int32_t> prompt(static_cast<size_t>(opt.prompt_tokens));
      for (int32_t& t : prompt) t = token();
      kerf_session_reset(sraw);
      kerf_session_reset_stats(sraw);
      const double t0 = now_s();
      rc = kerf_session_eval(sraw, prompt.data(), opt.prompt_tokens, logits.data(), 0);
      const double dt = now_s() - t0;
      if (rc != KERF_OK) return sess_error(rc, "prefill");
      if (r >= 0) pp.push_back(opt.prompt_tokens / dt), take_stats(0);
    }
    if (opt.gen_tokens > 0) {
      kerf_session_reset(sraw);
      kerf_session_reset_stats(sraw);
      int32_t t = token();
      const double t0 = now_s();
      for (int i = 0; i < opt.gen_tokens; ++i, t = token())
        if ((rc = kerf_session_eval(sraw, &t, 1, logits.data(), 0)) != KERF_OK) return sess_error(rc, "decode");
      if (r >= 0) tg.push_back(opt.gen_tokens / (now_s() - t0)), take_stats(1);
    }
  }
  for (int test = 0; test < 2; ++test)
    for (int u = 0; u < 3; ++u) {
      const kerf_unit_stats& a = acc[test][size_t(u)];
      if (a.ops == 0 && a.uploads == 0 && a.downloads == 0) continue;
      const double n = double(std::max(opt.repeat, 1));
      UnitTiming ut;
      ut.unit = u == 0 ? "cpu" : u == 1 ? "gpu" : "npu";
      const char* dev = kerf_session_unit_device(sraw, u);
      ut.device = dev ? dev : "";
      ut.ops = uint64_t(double(a.ops) / n);
      ut.run_ms = double(a.run_ns) / n / 1e6;
      ut.busy_ms = double(a.busy_ns) / n / 1e6;
      ut.transfer_ms = double(a.transfer_ns) / n / 1e6;
      ut.uploads = uint64_t(double(a.uploads) / n);
      ut.downloads = uint64_t(double(a.downloads) / n);
      ut.upload_mib = double(a.upload_bytes) / n / 1048576.0;
      ut.download_mib = double(a.download_bytes) / n / 1048576.0;
      (test == 0 ? rep.prefill_units : rep.decode_units).push_back(ut);
    }
  if (!pp.empty()) rep.prefill_tps = stat_of(pp);
  if (!tg.empty()) rep.decode_tps = stat_of(tg);
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) == 0) rep.peak_rss_bytes = uint64_t(ru.ru_maxrss) * 1024;  // KiB on Linux
  sess.reset();
  model.reset();
  if (opt.bandwidth_mib > 0) {
    auto bw = measure_read_bandwidth(uint64_t(opt.bandwidth_mib) << 20, rep.threads, 5);
    if (!bw.ok()) return bw.status();
    rep.measured_bandwidth_gbs = *bw;
    if (rep.decode_tps.measured)
      rep.roofline_fraction = double(rep.bytes_per_decoded_token) * rep.decode_tps.mean / (*bw * 1e9);
  }
  return rep;
}

std::string bench_report_json(const BenchReport& r) {
  using J = nlohmann::ordered_json;
  auto stat = [](const BenchStat& s) -> J {
    if (!s.measured) return nullptr;
    return J{{"mean", s.mean}, {"stddev", s.stddev}, {"min", s.min}, {"max", s.max}, {"samples", s.samples}};
  };
  J j;
  j["artifact"] = r.artifact;
  j["isa"] = r.isa;
  j["threads"] = r.threads;
  j["kv_cache"] = r.kv_f16 ? "f16" : "f32";
  j["prompt_tokens"] = r.prompt_tokens;
  j["gen_tokens"] = r.gen_tokens;
  j["repeat"] = r.repeat;
  j["prefill_tps"] = stat(r.prefill_tps);
  j["decode_tps"] = stat(r.decode_tps);
  j["peak_rss_bytes"] = r.peak_rss_bytes;
  j["rss_before_load_bytes"] = r.rss_before_load_bytes;
  j["artifact_bytes"] = r.artifact_bytes;
  j["bpw"] = r.has_bpw ? J(r.bpw) : J(nullptr);
  j["bytes_per_decoded_token"] = r.bytes_per_decoded_token;
  auto units = [](const std::vector<UnitTiming>& v) {
    J a = J::array();
    for (const UnitTiming& u : v)
      a.push_back({{"unit", u.unit}, {"device", u.device}, {"ops", u.ops}, {"run_ms", u.run_ms}, {"busy_ms", u.busy_ms},
                   {"transfer_ms", u.transfer_ms}, {"uploads", u.uploads}, {"downloads", u.downloads},
                   {"upload_mib", u.upload_mib}, {"download_mib", u.download_mib}});
    return a;
  };
  j["prefill_units"] = units(r.prefill_units);
  j["decode_units"] = units(r.decode_units);
  j["measured_bandwidth_gbs"] = r.measured_bandwidth_gbs > 0 ? J(r.measured_bandwidth_gbs) : J(nullptr);
  j["roofline_fraction"] = r.roofline_fraction > 0 ? J(r.roofline_fraction) : J(nullptr);
  return json_file_text(j);
}

std::string bench_report_text(const BenchReport& r) {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof line, "kerf bench %s: %s kernels, %d thread%s, KV cache %s, %llu bytes",
                r.artifact.c_str(), r.isa.c_str(), r.threads, r.threads == 1 ? "" : "s", r.kv_f16 ? "f16" : "f32",
                (unsigned long long)r.artifact_bytes);
  o << line;
  if (r.has_bpw) {
    std::snprintf(line, sizeof line, ", %.3f bpw", r.bpw);
    o << line;
  }
  o << "\n\n| test | tokens/s (mean ± sd) | min | max |\n|---|---|---|---|\n";
  auto row = [&](const char* name, int n, const BenchStat& s) {
    if (!s.measured) return;
    std::snprintf(line, sizeof line, "| %s%d | %.1f ± %.1f | %.1f | %.1f |\n", name, n, s.mean, s.stddev, s.min,
                  s.max);
    o << line;
  };
  row("pp", r.prompt_tokens, r.prefill_tps);
  row("tg", r.gen_tokens, r.decode_tps);
  // Per-unit time per repetition (one prefill of P tokens; G decode steps).
  const bool hetero = r.prefill_units.size() > 1 || r.decode_units.size() > 1;
  if (hetero) {
    o << "\n| test | unit | device | ops | run ms | device busy ms | transfers (up/down) | MiB up/down | transfer ms |\n"
         "|---|---|---|---|---|---|---|---|---|\n";
    auto urows = [&](const char* name, int n, const std::vector<UnitTiming>& v) {
      for (const UnitTiming& u : v) {
        char busy[32] = "-";
        if (u.busy_ms > 0) std::snprintf(busy, sizeof busy, "%.3f", u.busy_ms);
        std::snprintf(line, sizeof line, "| %s%d | %s | %s | %llu | %.3f | %s | %llu / %llu | %.3f / %.3f | %.3f |\n", name, n,
                      u.unit.c_str(), u.device.c_str(), (unsigned long long)u.ops, u.run_ms, busy, (unsigned long long)u.uploads,
                      (unsigned long long)u.downloads, u.upload_mib, u.download_mib, u.transfer_ms);
        o << line;
      }
    };
    urows("pp", r.prompt_tokens, r.prefill_units);
    urows("tg", r.gen_tokens, r.decode_units);
  }
  std::snprintf(line, sizeof line,
                "\npeak RSS %.1f MiB (%.1f MiB before loading); %.2f MiB of weights read per decoded token",
                double(r.peak_rss_bytes) / 1048576.0, double(r.rss_before_load_bytes) / 1048576.0,
                double(r.bytes_per_decoded_token) / 1048576.0);
  o << line;
  if (r.measured_bandwidth_gbs > 0) {
    std::snprintf(line, sizeof line, "; read bandwidth %.1f GB/s", r.measured_bandwidth_gbs);
    o << line;
    if (r.roofline_fraction > 0) {
      std::snprintf(line, sizeof line, "; decode at %.1f %% of the bandwidth roofline", 100.0 * r.roofline_fraction);
      o << line;
    }
  }
  o << "\n";
  return o.str();
}

}  // namespace kerf::pipeline
