// An asynchronous front for a synchronous DeviceBackend (backend.h): run() hands the op to the unit's
// own thread and returns, so the executor goes on with CPU ops that do not depend on it; upload(),
// download() and finish() first wait until the unit's queue is empty. The OpenCL backend is
// asynchronous by itself (non-blocking enqueues); the NPU reference computes on the CPU and gets
// this front, which is how a real NPU behaves towards the host (a command queue).
#include <pthread.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <new>

#include "backend.h"
#include "kerf/kerf.h"

namespace kerf::rt {
namespace {

class AsyncUnit final : public DeviceBackend {
 public:
  explicit AsyncUnit(std::unique_ptr<DeviceBackend> inner) : inner_(std::move(inner)) {}
  ~AsyncUnit() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (started_) pthread_join(worker_, nullptr);
  }
  fmt::Backend unit() const override { return inner_->unit(); }
  const char* device_name() const override { return inner_->device_name(); }

  int prepare(kerf_session* s, const uint8_t* ops_on_unit, std::string* err) override {
    const int rc = inner_->prepare(s, ops_on_unit, err);
    sync_stats();
    return rc;
  }
  int upload(uint32_t v, const float* host, int64_t T, std::string* err) override {
    if (const int rc = wait(err); rc != KERF_OK) return rc;
    const int rc = inner_->upload(v, host, T, err);
    sync_stats();
    return rc;
  }
  int download(uint32_t v, float* host, int64_t T, std::string* err) override {
    if (const int rc = wait(err); rc != KERF_OK) return rc;
    const int rc = inner_->download(v, host, T, err);
    sync_stats();
    return rc;
  }
  int run(size_t i, int64_t T, int64_t pos0, std::string* err) override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (rc_ != KERF_OK) {  // an earlier op failed: report it now
        if (err) *err = err_;
        return rc_;
      }
      if (!started_) {  // a thread that cannot be created is a status, not an abort
        if (pthread_create(&worker_, nullptr, &AsyncUnit::thread_main, this) != 0) {
          if (err) *err = "cannot start the unit's thread";
          return KERF_ERR_MEMORY;
        }
        started_ = true;
      }
      queue_.push_back({i, T, pos0});
    }
    cv_.notify_all();
    return KERF_OK;
  }
  int kv_rows(size_t i, int64_t pos0, int64_t T, float* k, float* v, bool write, std::string* err) override {
    if (const int rc = wait(err); rc != KERF_OK) return rc;
    const int rc = inner_->kv_rows(i, pos0, T, k, v, write, err);
    sync_stats();
    return rc;
  }
  int finish(std::string* err) override {
    if (const int rc = wait(err); rc != KERF_OK) return rc;
    const int rc = inner_->finish(err);
    sync_stats();
    return rc;
  }

 private:
  struct Job {
    size_t op;
    int64_t T, pos0;
  };

  static void* thread_main(void* self) {
    static_cast<AsyncUnit*>(self)->loop();
    return nullptr;
  }

  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ with nothing left
      const Job j = queue_.front();
      busy_ = true;
      lk.unlock();
      std::string why;
      const int rc = rc_ == KERF_OK ? inner_->run(j.op, j.T, j.pos0, &why) : rc_;
      lk.lock();
      if (rc != KERF_OK && rc_ == KERF_OK) {
        rc_ = rc;
        err_ = why;
      }
      queue_.pop_front();
      busy_ = false;
      done_.notify_all();
    }
  }

  /// Waits until every queued op ran; the first failure among them, once.
  int wait(std::string* err) {
    std::unique_lock<std::mutex> lk(mu_);
    done_.wait(lk, [&] { return queue_.empty() && !busy_; });
    sync_stats_locked();
    if (rc_ != KERF_OK) {
      const int rc = rc_;
      if (err) *err = err_;
      rc_ = KERF_OK;
      err_.clear();
      return rc;
    }
    return KERF_OK;
  }
  void sync_stats() {
    std::lock_guard<std::mutex> lk(mu_);
    sync_stats_locked();
  }
  /// The inner unit's counters, read when its thread is idle or under the lock after a job.
  void sync_stats_locked() {
    if (queue_.empty() && !busy_) stats = inner_->stats;
  }

  std::unique_ptr<DeviceBackend> inner_;
  std::mutex mu_;
  std::condition_variable cv_, done_;
  std::deque<Job> queue_;
  pthread_t worker_{};
  bool started_ = false, stop_ = false, busy_ = false;
  int rc_ = KERF_OK;
  std::string err_;
};

}  // namespace

std::unique_ptr<DeviceBackend> make_async(std::unique_ptr<DeviceBackend> inner) {
  if (!inner) return nullptr;
  return std::unique_ptr<DeviceBackend>(new (std::nothrow) AsyncUnit(std::move(inner)));
}

}  // namespace kerf::rt
