// Thread pool (threadpool.h).
#include "threadpool.h"

#include <chrono>
#include <new>
#include <thread>

namespace kerf::rt {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

bool ThreadPool::start(int n) {
  stop();
  if (n < 1) return false;
  for (Job& job : jobs_) {
    job.shares.reset(new (std::nothrow) Share[size_t(n)]);
    if (!job.shares) return false;
    job.threads = n;
  }
  stopping_ = false;
  start_gen_ = generation_.load();
  // More threads than CPUs: a spinning thread would hold a CPU a working one needs.
  const unsigned cpus = std::thread::hardware_concurrency();
  spin_ns_ = cpus != 0 && unsigned(n) > cpus ? 0 : kSpinNs;
  workers_.resize(size_t(n - 1));
  for (int i = 1; i < n; ++i) {
    Worker& w = workers_[size_t(i - 1)];
    w.pool = this;
    w.tid = i;
    if (pthread_create(&w.thread, nullptr, &ThreadPool::worker_main, &w) != 0) {
      workers_.resize(size_t(i - 1));  // the ones started so far
      n_threads_ = i;
      stop();
      return false;
    }
  }
  n_threads_ = n;
  return true;
}

void ThreadPool::stop() {
  if (!workers_.empty()) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
      generation_.fetch_add(1);  // workers exit before touching a job slot
    }
    cv_.notify_all();
    for (Worker& w : workers_) pthread_join(w.thread, nullptr);
    workers_.clear();
  }
  n_threads_ = 1;
}

void* ThreadPool::worker_main(void* arg) {
  Worker* w = static_cast<Worker*>(arg);
  ThreadPool* p = w->pool;
  uint32_t seen = p->start_gen_;  // not the current value: run() may already have bumped it
  for (;;) {
    uint32_t g = p->generation_.load(std::memory_order_acquire);
    if (g == seen) {
      const int64_t until = now_ns() + p->spin_ns_;
      for (int i = 1; (g = p->generation_.load(std::memory_order_acquire)) == seen; ++i) {
        cpu_relax();
        if ((i & 63) == 0 && now_ns() > until) break;
      }
      if (g == seen) {
        // Dekker with run(): sleepers_ is raised under the lock before the generation is re-read,
        // and run() reads sleepers_ after bumping the generation, so a wakeup cannot be lost.
        std::unique_lock<std::mutex> lk(p->mu_);
        p->sleepers_.fetch_add(1);
        while ((g = p->generation_.load()) == seen) p->cv_.wait(lk);
        p->sleepers_.fetch_sub(1);
      }
    }
    seen = g;
    if (p->stopping_) return nullptr;
    // Dekker with run() again: announce the read of the slot, then check that the region is still
    // the current one (run() refills a slot only when no reader is announced, after publishing the
    // next region). A worker that woke too late skips it.
    Job& job = p->jobs_[g & 1];
    job.readers.fetch_add(1);
    if (p->generation_.load() == g) claim_chunks(job, w->tid);
    job.readers.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::claim_chunks(Job& job, int tid) {
  for (int k = 0; k < job.threads; ++k) {  // own share first, then steal from the next threads'
    Share& sh = job.shares[size_t((tid + k) % job.threads)];
    for (;;) {
      const int64_t c = sh.next.fetch_add(1, std::memory_order_relaxed);
      if (c >= sh.end) break;
      const int64_t u0 = job.units * c / job.chunks, u1 = job.units * (c + 1) / job.chunks;
      job.fn(job.ctx, u0 * job.grain, u1 * job.grain < job.n ? u1 * job.grain : job.n, tid);
      job.done.fetch_add(1, std::memory_order_release);
    }
  }
}

void ThreadPool::run(int64_t n, int64_t grain, Fn fn, void* ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t units = (n + grain - 1) / grain;
  const int64_t most = int64_t(kChunksPerThread) * n_threads_, chunks = units < most ? units : most;
  if (n_threads_ == 1 || chunks == 1) {
    fn(ctx, 0, n, 0);
    return;
  }
  const uint32_t g = generation_.load(std::memory_order_relaxed) + 1;  // only this thread writes it
  Job& job = jobs_[g & 1];
  for (int i = 1; job.readers.load() != 0; ++i) {  // a late worker still reads region g - 2
    cpu_relax();
    if ((i & 255) == 0) std::this_thread::yield();
  }
  job.fn = fn;
  job.ctx = ctx;
  job.n = n;
  job.grain = grain;
  job.units = units;
  job.chunks = chunks;
  for (int t = 0; t < n_threads_; ++t) {
    job.shares[size_t(t)].next.store(chunks * t / n_threads_, std::memory_order_relaxed);
    job.shares[size_t(t)].end = chunks * (t + 1) / n_threads_;
  }
  job.done.store(0, std::memory_order_relaxed);
  generation_.store(g);  // seq_cst: publishes the job, ordered before the sleepers_ read
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lk(mu_); }
    cv_.notify_all();
  }
  claim_chunks(job, 0);
  for (int i = 1; job.done.load(std::memory_order_acquire) != chunks; ++i) {
    cpu_relax();
    if ((i & 255) == 0) std::this_thread::yield();  // a worker inside a chunk was descheduled
  }
}

}  // namespace kerf::rt
