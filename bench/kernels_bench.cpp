// Google Benchmark of the runtime-lite integer kernels (runtime-lite/src/qkernels.h), one thread,
// every ISA this CPU has:
//   StreamRead/<MiB>               the single-thread read bandwidth (the roof of a GEMV)
//   Gemv/<isa>/<dtype>/<rows>x<cols>/<cold|hot>   T = 1; bytes/s = tensor bytes per second. cold
//                                  cycles through copies of the tensor > L3 (decode streams the whole
//                                  model from DRAM), hot reuses one copy (L2 / L3 resident)
//   Gemm/<isa>/<dtype>/<rows>x<cols>/T<T>   items/s = multiply-adds * 2 (ops/s)
//   Quantize/<isa>/<K>x<T>         activations quantized per second (items/s)
//   GemvVsStream/<isa>/qsym4/<rows>x<cols>   cold GEMV and StreamRead alternating: bw_fraction
// Run: build/kerf_kernels_bench [--benchmark_filter=...] (not part of ctest: numbers, not checks).
// Fractions of bandwidth compare a Gemv cold rate with StreamRead/256MiB of the same run. Rates use
// CPU time (single-threaded, so memory stalls count; time-slicing by other processes does not). On a
// shared machine use --benchmark_repetitions=N --benchmark_format=json and take each benchmark's
// fastest repetition (the least disturbed one).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kerf/format.h"
#include "qkernels.h"

namespace {

namespace fmt = kerf::fmt;
using kerf::rt::Isa;
using kerf::rt::QActs;
using kerf::rt::QKernels;
using kerf::rt::TiledView;

constexpr size_t kColdBytes = size_t(192) << 20;  // > L3 (32 MiB here) many times over

template <class T>
T* aligned_array(size_t n) {
  void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
  return static_cast<T*>(p);
}

/// `copies` tiled tensors with random codes and f16 scales (mins) of about 1 / 16.
struct Weights {
  std::vector<TiledView> views;
  uint8_t* mem = nullptr;
  ~Weights() { std::free(mem); }
  Weights(fmt::DType dt, uint32_t bits, int64_t rows, int64_t cols, int64_t g, size_t copies) {
    const uint32_t flags = fmt::make_qflags_tiled(bits, fmt::ScaleFormat::kF16, 2);
    const fmt::TiledLayout L = fmt::tiled_layout(dt, uint64_t(rows), uint64_t(cols), uint64_t(g), flags);
    mem = aligned_array<uint8_t>(L.bytes * copies);
    std::mt19937_64 rng(7);
    for (size_t i = 0; i + 8 <= L.bytes * copies; i += 8) {
      const uint64_t r = rng();
      std::memcpy(mem + i, &r, 8);
    }
    const uint16_t h = fmt::f32_to_f16(0.0625f);
    for (size_t c = 0; c < copies; ++c) {
      TiledView v;
      v.dtype = dt;
      v.bits = bits;
      v.rows = rows;
      v.cols = cols;
      v.L = L;
      v.data = mem + c * L.bytes;
      for (uint64_t t = 0; t < L.NT; ++t)
        for (uint64_t j = 0; j < L.ng; ++j)
          for (uint64_t i = 0; i < L.param_bytes / 2; ++i)
            std::memcpy(const_cast<uint8_t*>(v.data) + t * L.tile_bytes + L.param_offset(j) + 2 * i, &h, 2);
      views.push_back(v);
    }
  }
};

struct Acts {
  QActs a;
  std::vector<float> x;
  Acts(const QKernels* k, int64_t T, int64_t K) {
    a.T = T;
    a.KB = (K + 31) / 32;
    a.q = aligned_array<int8_t>(size_t(T * a.KB * 32));
    a.d = aligned_array<float>(size_t(T * a.KB));
    a.sum = aligned_array<int32_t>(size_t(T * a.KB));
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    x.resize(size_t(T * K));
    for (float& v : x) v = nd(rng);
    k->quantize_acts(x.data(), T, K, &a);
  }
  ~Acts() {
    std::free(a.q);
    std::free(a.d);
    std::free(a.sum);
  }
};

void stream_read(benchmark::State& st, size_t bytes) {
  const size_t n = bytes / 8;
  uint64_t* p = aligned_array<uint64_t>(n);
  for (size_t i = 0; i < n; ++i) p[i] = i;
  for (auto _ : st) {
    uint64_t s[8] = {};
    for (size_t i = 0; i < n; i += 8)
      for (int k = 0; k < 8; ++k) s[k] += p[i + k];
    benchmark::DoNotOptimize(s);
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(bytes));
  std::free(p);
}

void gemm(benchmark::State& st, const QKernels* k, fmt::DType dt, uint32_t bits, int64_t rows, int64_t cols,
          int64_t T, bool cold) {
  const int64_t g = 32;
  const uint64_t one = fmt::tiled_layout(dt, uint64_t(rows), uint64_t(cols), uint64_t(g),
                                         fmt::make_qflags_tiled(bits, fmt::ScaleFormat::kF16, 2)).bytes;
  const size_t copies = cold ? (kColdBytes + one - 1) / one : 1;
  Weights w(dt, bits, rows, cols, g, copies);
  Acts a(k, T, cols);
  std::vector<float> y(size_t(T * rows));
  size_t c = 0;
  for (auto _ : st) {
    const TiledView& v = w.views[c];
    c = c + 1 == copies ? 0 : c + 1;
    k->gemm(v, a.a, 0, int64_t(v.L.NT), y.data(), rows);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(one));
  st.SetItemsProcessed(int64_t(st.iterations()) * 2 * rows * cols * T);
}

/// GEMV (cold) and a streaming read alternate in every iteration (~64 MiB each), so that slow
/// changes of the machine's bandwidth (shared hosts) affect both: counters gemv_GBps, stream_GBps
/// and their ratio bw_fraction, from the accumulated times.
void gemv_vs_stream(benchmark::State& st, const QKernels* k, fmt::DType dt, uint32_t bits, int64_t rows,
                    int64_t cols) {
  const size_t slice = size_t(64) << 20, sbytes = size_t(256) << 20;
  uint64_t* sp = aligned_array<uint64_t>(sbytes / 8);
  for (size_t i = 0; i < sbytes / 8; ++i) sp[i] = i;
  const uint64_t one = fmt::tiled_layout(dt, uint64_t(rows), uint64_t(cols), 32,
                                         fmt::make_qflags_tiled(bits, fmt::ScaleFormat::kF16, 2)).bytes;
  const size_t copies = (kColdBytes + one - 1) / one, per_iter = (slice + one - 1) / one;
  Weights w(dt, bits, rows, cols, 32, copies);
  Acts a(k, 1, cols);
  std::vector<float> y(static_cast<size_t>(rows));
  size_t c = 0, so = 0;
  double tg = 0, ts = 0, gb = 0, sb = 0;
  uint64_t sink = 0;
  for (auto _ : st) {
    auto t0 = std::chrono::steady_clock::now();
    const uint64_t* p = sp + so / 8;
    uint64_t s[8] = {};
    for (size_t i = 0; i < slice / 8; i += 8)
      for (int j = 0; j < 8; ++j) s[j] += p[i + j];
    for (uint64_t v : s) sink += v;
    so = (so + slice) % sbytes;
    auto t1 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < per_iter; ++i) {
      const TiledView& v = w.views[c];
      c = c + 1 == copies ? 0 : c + 1;
      k->gemm(v, a.a, 0, int64_t(v.L.NT), y.data(), rows);
    }
    benchmark::ClobberMemory();
    auto t2 = std::chrono::steady_clock::now();
    ts += std::chrono::duration<double>(t1 - t0).count();
    tg += std::chrono::duration<double>(t2 - t1).count();
    sb += double(slice);
    gb += double(per_iter * one);
  }
  benchmark::DoNotOptimize(sink);
  st.counters["gemv_GBps"] = gb / tg / 1e9;
  st.counters["stream_GBps"] = sb / ts / 1e9;
  st.counters["bw_fraction"] = (gb / tg) / (sb / ts);
  std::free(sp);
}

void quantize(benchmark::State& st, const QKernels* k, int64_t T, int64_t K) {
  Acts a(k, T, K);
  for (auto _ : st) {
    k->quantize_acts(a.x.data(), T, K, &a.a);
    benchmark::ClobberMemory();
  }
  st.SetItemsProcessed(int64_t(st.iterations()) * T * K);
}

struct DT {
  fmt::DType dt;
  uint32_t bits;
  const char* name;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("StreamRead/256MiB", stream_read, size_t(256) << 20);
  benchmark::RegisterBenchmark("StreamRead/4MiB", stream_read, size_t(4) << 20);
  const DT kDts[] = {{fmt::DType::kQSym, 4, "qsym4"},  {fmt::DType::kQSym, 8, "qsym8"},
                     {fmt::DType::kQSym, 3, "qsym3"},  {fmt::DType::kQSym, 2, "qsym2"},
                     {fmt::DType::kQAsym, 4, "qasym4"}, {fmt::DType::kTernary, 0, "ternary"},
                     {fmt::DType::kBinary, 0, "binary"}};
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Vnni, Isa::kNeon, Isa::kNeonDot}) {
    const QKernels* k = kerf::rt::qkernels(isa);
    if (!k) continue;
    const std::string in = kerf::rt::isa_name(isa);
    for (const DT& d : kDts)
      for (auto shape : {std::pair<int64_t, int64_t>{2048, 5632}, {768, 2048}})
        for (bool cold : {true, false}) {
          if (isa == Isa::kScalar && (cold == false || d.bits != 4)) continue;
          const std::string name = "Gemv/" + in + "/" + d.name + "/" + std::to_string(shape.first) + "x" +
                                   std::to_string(shape.second) + (cold ? "/cold" : "/hot");
          benchmark::RegisterBenchmark(name.c_str(), gemm, k, d.dt, d.bits, shape.first, shape.second, 1, cold)
              ;
        }
    for (const DT& d : kDts)
      for (int64_t T : {4, 16, 128}) {
        if (isa == Isa::kScalar && (T != 4 || d.bits != 4)) continue;
        const std::string name = "Gemm/" + in + "/" + d.name + "/2048x5632/T" + std::to_string(T);
        benchmark::RegisterBenchmark(name.c_str(), gemm, k, d.dt, d.bits, 2048, 5632, T, false);
      }
    benchmark::RegisterBenchmark(("Quantize/" + in + "/5632x1").c_str(), quantize, k, 1, 5632);
    if (isa != Isa::kScalar)
      for (auto shape : {std::pair<int64_t, int64_t>{2048, 5632}, {768, 2048}})
        benchmark::RegisterBenchmark(("GemvVsStream/" + in + "/qsym4/" + std::to_string(shape.first) + "x" +
                                      std::to_string(shape.second)).c_str(),
                                     gemv_vs_stream, k, fmt::DType::kQSym, 4u, shape.first, shape.second)
            ->MinTime(3.0);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
