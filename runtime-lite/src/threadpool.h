// runtime-lite's thread pool: persistent workers for the parallel regions of the executor (tens of
// thousands per second in a decode loop, so dispatch latency matters more than generality).
// Private header; no exceptions, no OpenMP.
#pragma once

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace kerf::rt {

/// n - 1 worker threads plus the calling thread (thread 0).
///
/// A region splits [0, n) into chunks (about kChunksPerThread per thread, boundaries on multiples of
/// a grain). Thread i owns the i-th contiguous share of the chunks and claims them in order with an
/// atomic counter (so each thread streams through one contiguous range, as with a static split);
/// a thread done with its share steals the remaining chunks of the others. The caller works too and
/// returns when every chunk is done. Stealing keeps a region from waiting on a worker the OS has
/// descheduled (another process on the same CPUs), unless that worker is inside a chunk already.
///
/// Dispatch: the caller publishes the job and bumps an atomic generation counter; idle workers spin
/// on it for about kSpinNs (so back-to-back regions start within a cache-line transfer), then block
/// on a condition variable, so an idle pool burns no CPU. With more threads than CPUs they block at
/// once.
///
/// Not reentrant: fn must not start another region of the same pool, and only one thread may call
/// run() at a time (one session per thread, kerf.h).
class ThreadPool {
 public:
  /// fn(ctx, begin, end, tid): process items [begin, end); tid in [0, size()) is the index of the
  /// calling thread (for per-thread scratch). Called once per chunk, possibly several times per
  /// thread in one region.
  using Fn = void (*)(void* ctx, int64_t begin, int64_t end, int tid);

  ThreadPool() = default;
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() { stop(); }

  /// Stops any workers, then starts n - 1 new ones (n >= 1; n == 1 runs everything on the caller).
  /// Returns false (with no worker running, size() == 1) when a thread cannot be created.
  bool start(int n);
  /// Joins the workers; size() becomes 1.
  void stop();
  int size() const { return n_threads_; }

  /// Runs fn over [0, n) in min(ceil(n / grain), kChunksPerThread * size()) chunks of whole grains
  /// (the last chunk ends at n). With one chunk or one thread, fn(ctx, 0, n, 0) runs on the caller
  /// with no synchronization. n <= 0 does nothing.
  void run(int64_t n, int64_t grain, Fn fn, void* ctx);

  /// run() with a callable f(begin, end, tid).
  template <class F>
  void parallel_for(int64_t n, int64_t grain, const F& f) {
    run(n, grain, [](void* c, int64_t b, int64_t e, int tid) { (*static_cast<const F*>(c))(b, e, tid); },
        const_cast<F*>(&f));
  }

  static constexpr int kChunksPerThread = 2;
  /// How long an idle worker spins before blocking.
  static constexpr int64_t kSpinNs = 200000;

 private:
  struct Worker {
    ThreadPool* pool;
    int tid;
    pthread_t thread;
  };
  /// Thread i's chunks [next, end) of a region (its own cache line: claiming is uncontended unless
  /// another thread steals).
  struct alignas(64) Share {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  /// One region's job. Two slots alternate, so a late worker can still read the previous region's
  /// slot while the caller fills the next one; a slot is refilled only when no worker reads it.
  struct Job {
    Fn fn = nullptr;
    void* ctx = nullptr;
    int64_t n = 0, grain = 1, units = 0, chunks = 0;
    int threads = 0;
    std::unique_ptr<Share[]> shares;           ///< one per thread
    alignas(64) std::atomic<int64_t> done{0};  ///< chunks finished
    alignas(64) std::atomic<int> readers{0};   ///< workers that may be reading this slot
  };
  static void* worker_main(void* arg);
  static void claim_chunks(Job& job, int tid);

  int n_threads_ = 1;
  std::vector<Worker> workers_;
  Job jobs_[2];
  std::atomic<bool> stopping_{false};
  uint32_t start_gen_ = 0;  ///< generation when the workers were started
  int64_t spin_ns_ = kSpinNs;
  alignas(64) std::atomic<uint32_t> generation_{0};  ///< region g uses jobs_[g & 1]
  alignas(64) std::atomic<int> sleepers_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace kerf::rt
