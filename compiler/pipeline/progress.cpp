#include "compiler/pipeline/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>

#include <nlohmann/json.hpp>

#include "compiler/pipeline/json_io.h"

namespace kerf::progress {

Mode choose_mode(bool quiet, bool log_json, bool stderr_is_tty) {
  if (log_json) return Mode::kJson;
  if (quiet) return Mode::kQuiet;
  const char* term = std::getenv("TERM");
  if (stderr_is_tty && !(term && std::string(term) == "dumb")) return Mode::kBar;
  return Mode::kLines;
}

std::string format_clock(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "--:--";
  const long long s = static_cast<long long>(std::llround(seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

std::string timing_table(const std::vector<TimingRow>& rows, double total_seconds) {
  size_t w = 5;
  for (const TimingRow& r : rows) w = std::max(w, r.stage.size());
  std::string out = "  compile time by stage (wall seconds, % of total):\n";
  char buf[256];
  auto row = [&](const std::string& name, double s) {
    const double pct = total_seconds > 0 ? 100.0 * s / total_seconds : 0.0;
    std::snprintf(buf, sizeof buf, "    %-*s %9.3f s %6.1f %%\n", static_cast<int>(w), name.c_str(), s, pct);
    out += buf;
  };
  for (const TimingRow& r : rows) row(r.stage, r.seconds);
  row("total", total_seconds);
  return out;
}

namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Times and rates in events rounded to `digits` decimals (milliseconds for times), so that the
/// text stays short (x / 10^d: the nearest double of the decimal, no 0.009000000000000001).
double round_to(double v, int digits) {
  const double p = std::pow(10.0, digits);
  return std::isfinite(v) ? std::round(v * p) / p : v;
}

std::string format_rate(double r) {
  char buf[32];
  if (r >= 100)
    std::snprintf(buf, sizeof buf, "%.0f", r);
  else
    std::snprintf(buf, sizeof buf, "%.3g", r);
  return buf;
}

struct TaskState {
  std::string name, unit, item;
  int64_t total = 0, done = 0;
  int64_t start = 0;        ///< units done before the task began (resumed run)
  double t0 = 0;
  double sample_t = 0;      ///< start of the current rate sample
  int64_t sample_done = 0;
  double rate = -1;         ///< smoothed units / s (-1: no sample yet)
  double last_print_t = 0;  ///< lines mode
  int64_t last_print_done = 0;
};

class StreamReporter final : public Reporter {
 public:
  explicit StreamReporter(ReporterOptions o) : o_(std::move(o)) {
    if (!o_.clock) o_.clock = steady_seconds;
    o_.width = std::max(o_.width, 20);
  }
  ~StreamReporter() override {
    std::lock_guard<std::mutex> lk(mu_);
    if (o_.mode == Mode::kBar && drawn_ > 0) emit("\n");
  }

  Mode mode() const override { return o_.mode; }

  int begin(const std::string& task, int64_t total, const std::string& unit, int64_t start) override {
    std::lock_guard<std::mutex> lk(mu_);
    const double now = o_.clock();
    const int id = next_id_++;
    TaskState& t = tasks_[id];
    t.name = task;
    t.unit = unit;
    t.total = std::max<int64_t>(total, 0);
    t.start = t.done = t.sample_done = t.last_print_done = std::max<int64_t>(start, 0);
    t.t0 = t.sample_t = t.last_print_t = now;
    order_.push_back(id);
    if (o_.mode == Mode::kJson) {
      nlohmann::ordered_json j;
      j["event"] = "start";
      j["task"] = task;
      j["done"] = t.done;
      j["total"] = t.total;
      j["unit"] = unit;
      json_line(j);
    } else if (o_.mode == Mode::kBar) {
      redraw();
      last_draw_ = now;
    }
    return id;
  }

  void update(int id, int64_t done, const std::string& item, const std::string& detail) override {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = tasks_.find(id);
    if (it == tasks_.end()) return;
    TaskState& t = it->second;
    const double now = o_.clock();
    t.done = done;
    if (!item.empty()) t.item = item;
    sample_rate(t, now);
    switch (o_.mode) {
      case Mode::kQuiet:
        break;
      case Mode::kJson: {
        nlohmann::ordered_json j;
        j["event"] = "progress";
        j["task"] = t.name;
        j["done"] = t.done;
        j["total"] = t.total;
        j["unit"] = t.unit;
        if (!item.empty()) j["item"] = item;
        if (!detail.empty()) j["detail"] = detail;
        j["elapsed_s"] = round_to(now - t.t0, 3);
        put_number(j, "rate", rate_of(t, now), 4);
        put_number(j, "eta_s", eta_of(t, now), 3);
        json_line(j);
        break;
      }
      case Mode::kBar:
        if (now - last_draw_ >= o_.bar_redraw_s) {
          redraw();
          last_draw_ = now;
        }
        break;
      case Mode::kLines: {
        const double gap = now - t.last_print_t;
        const bool by_fraction = t.total > 0 &&
                                 static_cast<double>(t.done - t.last_print_done) >= o_.lines_fraction * static_cast<double>(t.total) &&
                                 gap >= o_.lines_min_gap_s;
        // At done == total the final line follows at once: no progress line for it.
        if ((by_fraction || gap >= o_.lines_every_s) && (t.total == 0 || t.done < t.total)) {
          emit(progress_line(t, now) + "\n");
          t.last_print_t = now;
          t.last_print_done = t.done;
        }
        break;
      }
    }
  }

  void end(int id, bool completed, const std::string& summary) override {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = tasks_.find(id);
    if (it == tasks_.end()) return;
    TaskState t = it->second;
    tasks_.erase(it);
    order_.erase(std::remove(order_.begin(), order_.end(), id), order_.end());
    const double now = o_.clock();
    const double elapsed = now - t.t0;
    const double avg = elapsed > 0 && t.done > t.start ? static_cast<double>(t.done - t.start) / elapsed : -1;
    switch (o_.mode) {
      case Mode::kQuiet:
        break;
      case Mode::kJson: {
        nlohmann::ordered_json j;
        j["event"] = "done";
        j["task"] = t.name;
        j["done"] = t.done;
        j["total"] = t.total;
        j["unit"] = t.unit;
        j["elapsed_s"] = round_to(elapsed, 3);
        put_number(j, "rate", avg, 4);
        j["completed"] = completed;
        if (!summary.empty()) j["summary"] = summary;
        json_line(j);
        break;
      }
      case Mode::kBar:
        clear();
        emit(cut(final_line(t, completed, elapsed, avg, summary)) + "\n");
        draw();
        last_draw_ = now;
        break;
      case Mode::kLines:
        emit(final_line(t, completed, elapsed, avg, summary) + "\n");
        break;
    }
  }

  void log(const std::string& msg) override {
    std::lock_guard<std::mutex> lk(mu_);
    switch (o_.mode) {
      case Mode::kQuiet:
        break;
      case Mode::kJson: {
        nlohmann::ordered_json j;
        j["event"] = "log";
        j["msg"] = msg;
        json_line(j);
        break;
      }
      case Mode::kBar:
        clear();
        emit(msg + "\n");
        draw();
        break;
      case Mode::kLines:
        emit(msg + "\n");
        break;
    }
  }

  void error(const std::string& msg, int exit_code) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (o_.mode == Mode::kJson) {
      nlohmann::ordered_json j;
      j["event"] = "error";
      j["msg"] = msg;
      j["exit_code"] = exit_code;
      json_line(j);
      return;
    }
    if (o_.mode == Mode::kBar) clear();
    emit("kerf: " + msg + "\n");
    if (o_.mode == Mode::kBar) draw();
  }

  void timing(const std::vector<TimingRow>& rows, double total_seconds) override {
    if (o_.mode != Mode::kJson) return;  // the table is the caller's (timing_table(), on stdout)
    std::lock_guard<std::mutex> lk(mu_);
    nlohmann::ordered_json j;
    j["event"] = "timing";
    j["total_s"] = round_to(total_seconds, 3);
    nlohmann::ordered_json st = nlohmann::ordered_json::array();
    for (const TimingRow& r : rows) {
      nlohmann::ordered_json e;
      e["stage"] = r.stage;
      e["seconds"] = round_to(r.seconds, 3);
      e["percent"] = round_to(total_seconds > 0 ? 100.0 * r.seconds / total_seconds : 0.0, 1);
      st.push_back(std::move(e));
    }
    j["stages"] = std::move(st);
    json_line(j);
  }

 private:
  void emit(const std::string& s) {
    if (o_.write) o_.write(s);
  }
  void json_line(const nlohmann::ordered_json& j) {
    emit(pipeline::dump_json(j) + "\n");
  }
  static void put_number(nlohmann::ordered_json& j, const char* key, double v, int digits) {
    if (v >= 0 && std::isfinite(v))
      j[key] = round_to(v, digits);
    else
      j[key] = nullptr;
  }

  /// Exponentially smoothed rate: samples of at least rate_min_sample_s, weighted by
  /// 1 - exp(-dt / tau) with tau = rate_tau_fraction * elapsed in [rate_tau_min_s, rate_tau_max_s].
  void sample_rate(TaskState& t, double now) {
    const double dt = now - t.sample_t;
    if (dt < o_.rate_min_sample_s || t.done <= t.sample_done) return;
    const double inst = static_cast<double>(t.done - t.sample_done) / dt;
    if (t.rate < 0) {
      t.rate = inst;
    } else {
      const double tau = std::clamp(o_.rate_tau_fraction * (now - t.t0), o_.rate_tau_min_s, std::max(o_.rate_tau_min_s, o_.rate_tau_max_s));
      const double a = 1.0 - std::exp(-dt / tau);
      t.rate = a * inst + (1.0 - a) * t.rate;
    }
    t.sample_t = now;
    t.sample_done = t.done;
  }
  /// The smoothed rate, or the average so far before the first sample; -1 when unknown.
  static double rate_of(const TaskState& t, double now) {
    if (t.rate >= 0) return t.rate;
    const double el = now - t.t0;
    return el > 0 && t.done > t.start ? static_cast<double>(t.done - t.start) / el : -1;
  }
  static double eta_of(const TaskState& t, double now) {
    if (t.total <= 0) return -1;
    if (t.done >= t.total) return 0;
    const double r = rate_of(t, now);
    return r > 0 ? static_cast<double>(t.total - t.done) / r : -1;
  }

  std::string progress_line(const TaskState& t, double now) const {
    std::string s = t.name + ": " + std::to_string(t.done);
    if (t.total > 0) {
      char buf[32];
      std::snprintf(buf, sizeof buf, " (%.0f %%)", 100.0 * static_cast<double>(t.done) / static_cast<double>(t.total));
      s += "/" + std::to_string(t.total) + " " + t.unit + buf;
    } else {
      s += " " + t.unit;
    }
    const double r = rate_of(t, now);
    if (r > 0) s += ", " + format_rate(r) + " " + t.unit + "/s";
    s += ", elapsed " + format_clock(now - t.t0);
    if (t.total > 0) s += ", ETA " + format_clock(eta_of(t, now));
    return s;
  }

  std::string bar_line(const TaskState& t, double now) const {
    char name[64];
    std::snprintf(name, sizeof name, "%-12s", t.name.c_str());
    std::string s = name;
    if (t.total > 0) {
      constexpr int kBar = 24;
      const double f = std::clamp(static_cast<double>(t.done) / static_cast<double>(t.total), 0.0, 1.0);
      const int full = static_cast<int>(f * kBar);
      s += " [" + std::string(static_cast<size_t>(full), '#') + std::string(static_cast<size_t>(kBar - full), '.') + "] ";
      s += std::to_string(t.done) + "/" + std::to_string(t.total) + " " + t.unit;
    } else {
      s += " " + std::to_string(t.done) + " " + t.unit;
    }
    const double r = rate_of(t, now);
    s += "  " + (r > 0 ? format_rate(r) : std::string("-")) + " " + t.unit + "/s";
    s += "  " + format_clock(now - t.t0);
    if (t.total > 0) s += " ETA " + format_clock(eta_of(t, now));
    if (!t.item.empty()) s += "  " + t.item;
    return s;
  }

  static std::string final_line(const TaskState& t, bool completed, double elapsed, double avg, const std::string& summary) {
    char buf[160];
    const std::string count = std::to_string(t.done) + (t.total > 0 ? "/" + std::to_string(t.total) : "") + " " + t.unit;
    if (completed) {
      std::snprintf(buf, sizeof buf, "%s: %s in %.1f s", t.name.c_str(), count.c_str(), elapsed);
      std::string s = buf;
      if (avg > 0) s += " (" + format_rate(avg) + " " + t.unit + "/s)";
      if (!summary.empty()) s += "; " + summary;
      return s;
    }
    std::snprintf(buf, sizeof buf, "%s: stopped at %s after %.1f s", t.name.c_str(), count.c_str(), elapsed);
    return buf + (summary.empty() ? "" : "; " + summary);
  }

  std::string cut(const std::string& s) const {
    const size_t w = static_cast<size_t>(o_.width - 1);
    return s.size() <= w ? s : s.substr(0, w);
  }

  // Bar mode: the running tasks occupy the last `drawn_` lines; the cursor stays at the end of the
  // last one (no newline), so \r + erase redraws a single task and ANSI cursor-up reaches the others.
  void clear() {
    if (drawn_ == 0) return;
    std::string s = "\r\x1b[2K";
    for (int i = 1; i < drawn_; ++i) s += "\x1b[1A\x1b[2K";
    emit(s);
    drawn_ = 0;
  }
  void draw() {
    const double now = o_.clock();
    std::string s;
    for (size_t i = 0; i < order_.size(); ++i) {
      if (i) s += "\n";
      s += cut(bar_line(tasks_.at(order_[i]), now));
    }
    if (!s.empty()) emit(s);
    drawn_ = static_cast<int>(order_.size());
  }
  void redraw() {
    clear();
    draw();
  }

  ReporterOptions o_;
  std::mutex mu_;
  std::map<int, TaskState> tasks_;
  std::vector<int> order_;
  int next_id_ = 0;
  int drawn_ = 0;
  double last_draw_ = -1e300;
};

}  // namespace

std::unique_ptr<Reporter> make_reporter(ReporterOptions opt) { return std::make_unique<StreamReporter>(std::move(opt)); }

std::unique_ptr<Reporter> make_stderr_reporter(Mode mode) {
  ReporterOptions o;
  o.mode = mode;
  o.write = [](const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stderr);
    std::fflush(stderr);
  };
  if (mode == Mode::kBar) {
    struct winsize ws {};
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
      o.width = ws.ws_col;
    } else if (const char* c = std::getenv("COLUMNS")) {
      o.width = std::atoi(c) > 0 ? std::atoi(c) : o.width;
    }
  }
  return make_reporter(std::move(o));
}

}  // namespace kerf::progress
