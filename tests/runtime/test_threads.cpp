// The thread pool (coverage of every index, ranges, caller participation, the spin-then-block
// handoff) and multi-threaded sessions (bit-identical logits for every thread count).
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "../../runtime-lite/src/threadpool.h"
#include "test_util.h"

using namespace kt;
using kerf::rt::ThreadPool;

TEST_CASE("ThreadPool: every index once, chunks aligned to the grain, the right chunk count", "[threads]") {
  for (int nt : {1, 2, 3, 5}) {
    ThreadPool pool;
    REQUIRE(pool.start(nt));
    REQUIRE(pool.size() == nt);
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(64), int64_t(1001)})
      for (int64_t grain : {int64_t(1), int64_t(4), int64_t(16)}) {
        INFO("threads " << nt << " n " << n << " grain " << grain);
        std::vector<int> hits(static_cast<size_t>(n), 0);
        std::atomic<int> chunks{0}, misaligned{0}, bad_tid{0};
        pool.parallel_for(n, grain, [&](int64_t b, int64_t e, int tid) {
          ++chunks;
          if (b % grain != 0 || (e % grain != 0 && e != n) || b >= e) ++misaligned;
          if (tid < 0 || tid >= nt) ++bad_tid;
          for (int64_t i = b; i < e; ++i) ++hits[size_t(i)];  // chunks are disjoint: no race
        });
        CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
        CHECK(misaligned == 0);
        CHECK(bad_tid == 0);
        const int64_t units = (n + grain - 1) / grain;
        CHECK(chunks == (nt == 1 ? 1 : int(std::min<int64_t>(units, ThreadPool::kChunksPerThread * nt))));
      }
    pool.parallel_for(0, 1, [&](int64_t, int64_t, int) { FAIL("n == 0 must not call fn"); });
  }
}

TEST_CASE("ThreadPool: back-to-back regions and regions after the workers went to sleep", "[threads]") {
  ThreadPool pool;
  REQUIRE(pool.start(3));
  std::vector<int64_t> sum(300);
  int64_t total = 0, want = 0;
  for (int r = 0; r < 20000; ++r) {  // spinning handoff; each region sees its own r
    pool.parallel_for(300, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) sum[size_t(i)] = r + 1;
    });
    for (int64_t x : sum) total += x;
    want += 300 * int64_t(r + 1);
  }
  CHECK(total == want);
  // Idle longer than the spin window: the workers block on the condition variable; each region
  // must still wake them (a lost wakeup would hang here).
  for (int r = 0; r < 20; ++r) {
    std::this_thread::sleep_for(std::chrono::nanoseconds(2 * ThreadPool::kSpinNs));
    std::atomic<int> seen{0};
    pool.parallel_for(3, 1, [&](int64_t, int64_t, int) { ++seen; });
    REQUIRE(seen == 3);
  }
  // restart with another size, stop
  REQUIRE(pool.start(2));
  std::atomic<int> seen{0};
  pool.parallel_for(2, 1, [&](int64_t, int64_t, int) { ++seen; });
  CHECK(seen == 2);
  pool.stop();
  CHECK(pool.size() == 1);
  CHECK_FALSE(pool.start(0));
}

namespace {

/// All-logits prefill, then last-row prefill + decode of the same tokens, for `threads`.
struct Run {
  std::vector<float> all, last, dec;
};
Run run_session(kerf_model* m, int threads, const std::vector<int32_t>& toks, int kv_type = KERF_KV_F32) {
  const int V = kerf_model_vocab_size(m), N = int(toks.size());
  kerf_session* s = nullptr;
  REQUIRE(kerf_session_create(m, 0, &s) == KERF_OK);
  REQUIRE(kerf_session_set_threads(s, threads) == KERF_OK);
  REQUIRE(kerf_session_threads(s) == threads);
  REQUIRE(kerf_session_set_kv_type(s, kv_type) == KERF_OK);
  Run r;
  r.all.resize(size_t(N * V));
  r.last.resize(size_t(V));
  r.dec.resize(size_t(N * V));
  REQUIRE(kerf_session_eval(s, toks.data(), N, r.all.data(), 1) == KERF_OK);
  kerf_session_reset(s);
  REQUIRE(kerf_session_eval(s, toks.data(), N, r.last.data(), 0) == KERF_OK);
  kerf_session_reset(s);
  for (int i = 0; i < N; ++i) REQUIRE(kerf_session_eval(s, &toks[size_t(i)], 1, r.dec.data() + i * V, 1) == KERF_OK);
  kerf_session_free(s);
  return r;
}

}  // namespace

TEST_CASE("sessions: logits are bit-identical for 1, 2 and 3 threads, prefill == decode", "[threads][executor]") {
  // Large enough that Linear, GatedFFN and Attention take the parallel path (>= 64K multiply-adds).
  LlamaCfg c;
  c.dim = 128;
  c.hidden = 352;
  c.heads = 4;
  c.kv_heads = 2;
  c.max_seq = 48;
  const Weights w = random_llama(c, 21);
  std::vector<int32_t> toks;
  for (int i = 0; i < 40; ++i) toks.push_back(int32_t((i * 211 + 7) % c.vocab));
  // Mixed layouts in one q/k/v group and one GatedFFN: tiled with plain members.
  const std::map<std::string, MatPrecision> mixed = {
      {lname(0, "attention.wk.weight"), {fmt::DType::kQ4Asym, 32, 0}},
      {lname(1, "attention.wq.weight"), {fmt::DType::kQSym, 32, fmt::make_qflags_tiled(8, fmt::ScaleFormat::kF16, 4)}},
      {lname(0, "feed_forward.w3.weight"), {fmt::DType::kF16, 0, 0}}};
  const struct {
    fmt::DType dt;
    uint32_t flags;
    bool mixed;
  } precisions[] = {
      {fmt::DType::kF32, 0, false},
      {fmt::DType::kQ4Asym, 0, false},
      {fmt::DType::kQSym, fmt::make_qflags(3, fmt::ScaleFormat::kK6), false},
      {fmt::DType::kQSym, fmt::make_qflags_tiled(4, fmt::ScaleFormat::kF16, 2), false},
      {fmt::DType::kQAsym, fmt::make_qflags_tiled(3, fmt::ScaleFormat::kF16, 3), false},
      {fmt::DType::kTernary, fmt::make_qflags_tiled(0, fmt::ScaleFormat::kF16, 0), false},
      {fmt::DType::kQSym, fmt::make_qflags_tiled(4, fmt::ScaleFormat::kF16, 2), true},
  };
  for (const auto& [dt, flags, is_mixed] : precisions) {
    char prec[64];
    INFO("precision " << fmt::describe_qtype(dt, flags, 32, prec, sizeof prec) << (is_mixed ? " mixed" : ""));
    TempDir d;
    art::ArtifactBuilder b;
    build_llama(b, c, w, dt, 32, false, flags, is_mixed ? mixed : std::map<std::string, MatPrecision>{});
    const std::string path = d.file("m.kerf");
    REQUIRE(b.write(path) == "");
    kerf_model* m = nullptr;
    std::string msg;
    REQUIRE(open_status(path, 0, &msg, &m) == KERF_OK);
    if (is_mixed) {  // the overrides took effect
      std::map<std::string, std::string> prec_of;
      for (int i = 0; i < kerf_model_tensor_count(m); ++i) {
        kerf_tensor_info ti;
        REQUIRE(kerf_model_tensor_info(m, i, &ti) == KERF_OK);
        prec_of[ti.name] = ti.precision;
      }
      CHECK(prec_of[lname(0, "attention.wk.weight")] == "q4_asym g32");
      CHECK(prec_of[lname(0, "attention.wq.weight")] == "qsym4/f16 g32 t4");
      CHECK(prec_of[lname(1, "attention.wq.weight")] == "qsym8/f16 g32 t16");
      CHECK(prec_of[lname(0, "feed_forward.w3.weight")] == "f16");
    }
    const int V = kerf_model_vocab_size(m), N = int(toks.size());
    const Run one = run_session(m, 1, toks);
    CHECK(one.dec == one.all);  // every output row is computed the same way whatever T is
    CHECK(std::equal(one.last.begin(), one.last.end(), one.all.end() - V));  // last-row-only prefill
    for (int nt : {2, 3}) {
      INFO("threads " << nt);
      const Run r = run_session(m, nt, toks);
      CHECK(r.all == one.all);
      CHECK(r.last == one.last);
      CHECK(r.dec == one.dec);
    }
    const Run h1 = run_session(m, 1, toks, KERF_KV_F16), h2 = run_session(m, 2, toks, KERF_KV_F16);
    CHECK(h1.all == h2.all);
    CHECK(h1.dec == h1.all);
    CHECK(h1.all != one.all);  // the f16 cache is in use
    CHECK(N * V == int(one.all.size()));
    kerf_model_close(m);
  }
}

TEST_CASE("kerf_session_set_threads arguments", "[threads]") {
  LlamaCfg c;
  TempDir d;
  art::ArtifactBuilder b;
  build_llama(b, c, random_llama(c, 3), fmt::DType::kF32, 32, false);
  REQUIRE(b.write(d.file("m.kerf")) == "");
  kerf_model* m = nullptr;
  std::string msg;
  REQUIRE(open_status(d.file("m.kerf"), 0, &msg, &m) == KERF_OK);
  kerf_session* s = nullptr;
  REQUIRE(kerf_session_create(m, 0, &s) == KERF_OK);
  CHECK(kerf_session_threads(s) == 1);  // the default
  CHECK(kerf_session_set_threads(s, -1) == KERF_ERR_ARGUMENT);
  CHECK(kerf_session_set_threads(s, 1025) == KERF_ERR_ARGUMENT);
  CHECK(kerf_session_set_threads(nullptr, 2) == KERF_ERR_ARGUMENT);
  CHECK(kerf_session_threads(s) == 1);
  REQUIRE(kerf_session_set_threads(s, 0) == KERF_OK);
  CHECK(kerf_session_threads(s) == int(sysconf(_SC_NPROCESSORS_ONLN)));
  CHECK(kerf_session_set_kv_type(s, 2) == KERF_ERR_ARGUMENT);
  CHECK(kerf_session_set_kv_type(nullptr, KERF_KV_F16) == KERF_ERR_ARGUMENT);
  const int32_t tok[2] = {1, 5};
  REQUIRE(kerf_session_eval(s, tok, 2, nullptr, 0) == KERF_OK);
  REQUIRE(kerf_session_set_kv_type(s, KERF_KV_F16) == KERF_OK);
  CHECK(kerf_session_pos(s) == 0);  // the caches were emptied
  kerf_session_free(s);
  kerf_model_close(m);
}
