// Progress and machine-readable logs of the long-running commands (`kerf compile`, `kerf distill`,
// `kerf eval`): progress bars with an ETA on a terminal, short plain lines in CI logs, one JSON
// object per line for machines (--log-json), or nothing (--quiet).
//
// The interface (Reporter, Task, current(), log()) is header-only so that the lower libraries
// (quant/calib, distill) report through it without linking against the pipeline; the concrete
// reporter (make_reporter / make_stderr_reporter, progress.cpp) is created once per process by the
// CLI and installed with ScopedReporter. With no reporter installed, tasks are silent and log()
// writes plain lines to stderr (the behaviour library callers had before).
//
// Event vocabulary (the --log-json objects, one per line on stderr; times in seconds, rounded to
// milliseconds; null where unknown):
//   {"event":"start","task":"gptq","done":0,"total":35,"unit":"tensors"}
//   {"event":"progress","task":"gptq","done":12,"total":35,"unit":"tensors","item":"layers.0.wq",
//    "detail":"...","elapsed_s":4.1,"rate":2.9,"eta_s":7.5}            (item / detail optional)
//   {"event":"done","task":"gptq","done":35,"total":35,"unit":"tensors","elapsed_s":12.0,"rate":2.9,
//    "completed":true,"summary":"..."}                                  (summary optional)
//   {"event":"log","msg":"calibration: ..."}
//   {"event":"timing","total_s":3.2,"stages":[{"stage":"import","seconds":0.4,"percent":12.5},...]}
//   {"event":"error","msg":"...","exit_code":2}
// `total` is 0 when a task's size is unknown (then no ETA). `completed` is false for a task ended
// early (an error unwound it).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kerf::progress {

/// How a process reports. Chosen once (choose_mode) by the CLI.
enum class Mode {
  kQuiet,  ///< nothing but errors
  kLines,  ///< plain lines: a progress line at most every ~10 s or 10 % of a task, plus its final line
  kBar,    ///< a terminal: one line per running task redrawn in place (\r, ANSI cursor-up for several)
  kJson,   ///< one JSON object per line for every event (see the vocabulary above)
};

/// The mode of a process: json when `log_json` (it wins over `quiet`: a machine asked for the
/// events), else quiet when `quiet`, else bar when stderr is a terminal (`stderr_is_tty`, and TERM
/// is not "dumb"), else lines.
Mode choose_mode(bool quiet, bool log_json, bool stderr_is_tty);

/// One row of a time breakdown: a stage and its wall seconds.
struct TimingRow {
  std::string stage;
  double seconds = 0;
};

/// Adds `seconds` to the row named `stage` of `rows` (appended on first use, so rows keep the
/// order in which stages first ran).
inline void add_seconds(std::vector<std::pair<std::string, double>>& rows, const std::string& stage, double seconds) {
  for (auto& r : rows)
    if (r.first == stage) {
      r.second += seconds;
      return;
    }
  rows.emplace_back(stage, seconds);
}

/// Receiver of progress events. Implementations are thread-safe: tasks may be advanced and lines
/// logged from several threads.
class Reporter {
 public:
  virtual ~Reporter() = default;
  virtual Mode mode() const = 0;
  /// Starts a task named `task` ("calibration", "gptq", "distill", "eval"...) of `total` units
  /// (0 = unknown) counted in `unit` ("stages", "tensors", "steps", "stories"), `start` of them
  /// already done (a resumed run: not counted in the rate). Returns its id.
  virtual int begin(const std::string& task, int64_t total, const std::string& unit, int64_t start) = 0;
  /// `done` units of task `id` are finished; `item` names the unit just finished (optional),
  /// `detail` is a free-form line about it (JSON only).
  virtual void update(int id, int64_t done, const std::string& item, const std::string& detail) = 0;
  /// Ends task `id`: its final line (bar / lines) or "done" event. `completed` false: ended early.
  virtual void end(int id, bool completed, const std::string& summary) = 0;
  /// An ordinary information line (validation results, chosen settings...).
  virtual void log(const std::string& msg) = 0;
  /// An error (printed in every mode, quiet included): "kerf: MSG" or an "error" event.
  virtual void error(const std::string& msg, int exit_code) = 0;
  /// A time breakdown as a "timing" event (json mode; the other modes print nothing: the CLI prints
  /// timing_table() on stdout itself).
  virtual void timing(const std::vector<TimingRow>& rows, double total_seconds) = 0;
};

/// The process's reporter slot (null: none installed).
inline std::atomic<Reporter*>& current_slot() {
  static std::atomic<Reporter*> slot{nullptr};
  return slot;
}
/// The installed reporter, or null.
inline Reporter* current() { return current_slot().load(); }

/// Installs `r` as the process's reporter for the lifetime of this object (restores the previous).
class ScopedReporter {
 public:
  explicit ScopedReporter(Reporter* r) : prev_(current_slot().exchange(r)) {}
  ~ScopedReporter() { current_slot().store(prev_); }
  ScopedReporter(const ScopedReporter&) = delete;
  ScopedReporter& operator=(const ScopedReporter&) = delete;

 private:
  Reporter* prev_;
};

/// An information line through the installed reporter; without one, a plain line on stderr.
inline void log(const std::string& msg) {
  if (Reporter* r = current()) {
    r->log(msg);
  } else {
    std::fprintf(stderr, "%s\n", msg.c_str());
  }
}

/// One task of a reporter (RAII): begun on construction, ended on finish() or destruction (then
/// as not completed unless all units were done). A null reporter makes every call a no-op. step()
/// may be called from several threads.
class Task {
 public:
  /// `start`: units already done when the task begins (a resumed run).
  Task(const std::string& name, int64_t total, const std::string& unit, Reporter* r = current(), int64_t start = 0)
      : r_(r), total_(total), done_(start) {
    if (r_) id_ = r_->begin(name, total, unit, start);
  }
  ~Task() { finish(); }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  /// One more unit done.
  void step(const std::string& item = "", const std::string& detail = "") {
    const int64_t d = done_.fetch_add(1) + 1;
    if (r_) r_->update(id_, d, item, detail);
  }
  /// `done` units done in all.
  void set(int64_t done, const std::string& item = "", const std::string& detail = "") {
    done_.store(done);
    if (r_) r_->update(id_, done, item, detail);
  }
  /// Ends the task (once); `summary` is appended to its final line.
  void finish(const std::string& summary = "") {
    if (r_ && !finished_.exchange(true)) r_->end(id_, total_ <= 0 || done_.load() >= total_, summary);
  }
  int64_t done() const { return done_.load(); }

 private:
  Reporter* r_;
  int id_ = -1;
  int64_t total_ = 0;
  std::atomic<int64_t> done_{0};
  std::atomic<bool> finished_{false};
};

/// Settings of the stream reporter (make_reporter).
struct ReporterOptions {
  Mode mode = Mode::kLines;
  /// Receives the output text (stderr for the CLI); called under the reporter's lock.
  std::function<void(const std::string&)> write;
  /// Monotonic seconds (default: std::chrono::steady_clock); injectable for tests.
  std::function<double()> clock;
  int width = 100;                   ///< bar mode: characters per line (lines are cut to width - 1)
  double bar_redraw_s = 0.1;         ///< bar mode: at most one redraw per this many seconds
  double lines_every_s = 10;         ///< lines mode: a line when this long since the task's last one
  double lines_fraction = 0.10;      ///< lines mode: ... or when this fraction of the total was done since,
  double lines_min_gap_s = 1;        ///< ... and at least this long since the last one (short tasks: final line only)
  /// Rate smoothing: an exponential moving average of the rate samples with the time constant
  /// tau = rate_tau_fraction * elapsed, clamped to [rate_tau_min_s, rate_tau_max_s].
  double rate_tau_min_s = 3;
  double rate_tau_max_s = 60;
  double rate_tau_fraction = 0.2;
  double rate_min_sample_s = 0.2;    ///< rate samples span at least this long
};

/// A reporter writing `opt.mode`'s format through `opt.write`. Errors: none (a null `write` drops
/// the output).
std::unique_ptr<Reporter> make_reporter(ReporterOptions opt);

/// The CLI's reporter: `mode` on stderr (flushed per event); bar mode takes the terminal's width.
std::unique_ptr<Reporter> make_stderr_reporter(Mode mode);

/// The table of a time breakdown: one row per stage, "stage  seconds  percent", a total last.
std::string timing_table(const std::vector<TimingRow>& rows, double total_seconds);

/// A duration for progress lines: "0:07", "12:34", "1:02:03"; "--:--" for a negative (unknown) or
/// non-finite value.
std::string format_clock(double seconds);

}  // namespace kerf::progress
