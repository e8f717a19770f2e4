// Progress reporter (compiler/pipeline/progress.h): each mode against a string sink with an
// injected clock, and the CLI's --log-json / --time / non-terminal output.
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <regex>
#include <thread>

#include "compiler/pipeline/progress.h"
#include "support.h"

namespace {

using kerf::progress::Mode;

/// A reporter writing into `out`, its clock reading `*now`.
std::unique_ptr<kerf::progress::Reporter> string_reporter(Mode mode, std::string* out, double* now, int width = 120) {
  kerf::progress::ReporterOptions o;
  o.mode = mode;
  o.write = [out](const std::string& s) { *out += s; };
  o.clock = [now] { return *now; };
  o.width = width;
  return kerf::progress::make_reporter(o);
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string l;
  while (std::getline(ss, l))
    if (!l.empty()) v.push_back(l);
  return v;
}

size_t count_of(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
  return n;
}

std::vector<nlohmann::json> parse_json_lines(const std::string& s) {
  std::vector<nlohmann::json> v;
  for (const std::string& l : split_lines(s)) {
    INFO("line: " << l);
    nlohmann::json j;
    REQUIRE_NOTHROW(j = nlohmann::json::parse(l));
    REQUIRE(j.is_object());
    REQUIRE(j.contains("event"));
    v.push_back(std::move(j));
  }
  return v;
}

/// Runs `cmd` through /bin/sh; returns its exit status.
int run_shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string kerf_exe() {
  const std::string p = std::string(KERF_BINARY_DIR) + "/kerf";
  INFO("the CLI tests need the kerf binary (build the kerf target): " << p);
  REQUIRE(std::filesystem::exists(p));
  return p;
}

}  // namespace

TEST_CASE("progress: bar mode redraws one line in place with \\r and leaves a final line", "[progress]") {
  std::string out;
  double now = 100;
  auto r = string_reporter(Mode::kBar, &out, &now);
  {
    kerf::progress::Task t("gptq", 10, "tensors", r.get());
    for (int i = 0; i < 10; ++i) {
      now += 1;
      t.step("layers." + std::to_string(i) + ".wq");
      if (i == 4) {
        // Mid-way: the redrawn line shows the bar, the count, the rate, elapsed time and the ETA.
        const std::string last = out.substr(out.rfind('\r'));
        CHECK(last.find("[############............] 5/10 tensors") != std::string::npos);
        CHECK(last.find("1 tensors/s") != std::string::npos);
        CHECK(last.find("0:05 ETA 0:05") != std::string::npos);
        CHECK(last.find("layers.4.wq") != std::string::npos);
        CHECK(last.find('\n') == std::string::npos);  // redrawn in place, no new line
      }
    }
    t.finish();
  }
  CHECK(count_of(out, "\r") >= 10);  // begin + one redraw per update (each 1 s apart) + the final clear
  REQUIRE(!out.empty());
  CHECK(out.back() == '\n');
  // The final line stays: after the last erase, the summary and one newline.
  const std::string tail = out.substr(out.rfind("\x1b[2K") + 4);
  CHECK(tail == "gptq: 10/10 tensors in 10.0 s (1 tensors/s)\n");
  CHECK(count_of(out, "\n") == 1);
}

TEST_CASE("progress: bar mode with two tasks moves the cursor up; log lines go above the bars", "[progress]") {
  std::string out;
  double now = 0;
  auto r = string_reporter(Mode::kBar, &out, &now);
  kerf::progress::Task a("calibration", 4, "stages", r.get());
  kerf::progress::Task b("gptq", 8, "tensors", r.get());
  now += 1;
  a.step();
  b.step();
  out.clear();
  now += 1;
  r->log("qad step 50/300 val.kl 0.38");
  // Erase both bar lines (cursor up once), print the line, redraw both bars.
  CHECK(out.rfind("\r\x1b[2K\x1b[1A\x1b[2Kqad step 50/300 val.kl 0.38\n", 0) == 0);
  const std::string rest = out.substr(out.find('\n') + 1);
  CHECK(rest.rfind("calibration", 0) == 0);
  CHECK(rest.find("\ngptq") != std::string::npos);
  CHECK(rest.back() != '\n');  // the bars stay open
  // Lines are cut to the terminal width (no wrap, so cursor-up stays right).
  out.clear();
  auto narrow = string_reporter(Mode::kBar, &out, &now, 30);
  kerf::progress::Task c("a-long-task-name", 100, "tensors", narrow.get());
  for (const std::string& l : split_lines(out)) {
    const std::string v = l.substr(l.rfind("\x1b[2K") == std::string::npos ? 0 : l.rfind("\x1b[2K") + 4);
    CHECK(v.size() <= 29);
  }
}

TEST_CASE("progress: lines mode throttles to ~10 % / 10 s and never uses \\r", "[progress]") {
  SECTION("a fast task prints its final line only") {
    std::string out;
    double now = 0;
    auto r = string_reporter(Mode::kLines, &out, &now);
    {
      kerf::progress::Task t("gptq", 1000, "tensors", r.get());
      for (int i = 0; i < 1000; ++i) {
        now += 0.001;
        t.step();
      }
    }
    CHECK(split_lines(out) == std::vector<std::string>{"gptq: 1000/1000 tensors in 1.0 s (1000 tensors/s)"});
  }
  SECTION("a slow task prints about every 10 %") {
    std::string out;
    double now = 0;
    auto r = string_reporter(Mode::kLines, &out, &now);
    {
      kerf::progress::Task t("distill", 100, "steps", r.get());
      for (int i = 0; i < 100; ++i) {
        now += 0.5;
        t.step();
      }
    }
    const auto lines = split_lines(out);
    REQUIRE(lines.size() == 10);  // 10 %, 20 %, ... 90 %, then the final line
    CHECK(lines[0] == "distill: 10/100 steps (10 %), 2 steps/s, elapsed 0:05, ETA 0:45");
    CHECK(lines[4] == "distill: 50/100 steps (50 %), 2 steps/s, elapsed 0:25, ETA 0:25");
    CHECK(lines[9] == "distill: 100/100 steps in 50.0 s (2 steps/s)");
    CHECK(out.find('\r') == std::string::npos);
  }
  SECTION("a task of unknown size prints every 10 s") {
    std::string out;
    double now = 0;
    auto r = string_reporter(Mode::kLines, &out, &now);
    {
      kerf::progress::Task t("sample", 0, "sequences", r.get());
      for (int i = 0; i < 30; ++i) {
        now += 1;
        t.step();
      }
    }
    const auto lines = split_lines(out);
    REQUIRE(lines.size() == 4);  // at 10 s, 20 s, 30 s, then the final line
    CHECK(lines[0] == "sample: 10 sequences, 1 sequences/s, elapsed 0:10");
    CHECK(lines[3] == "sample: 30 sequences in 30.0 s (1 sequences/s)");
  }
  SECTION("log lines are printed as they come") {
    std::string out;
    double now = 0;
    auto r = string_reporter(Mode::kLines, &out, &now);
    r->log("calibration: text stories 0:16");
    CHECK(out == "calibration: text stories 0:16\n");
  }
}

TEST_CASE("progress: json mode writes one parseable object per event with done / total / eta", "[progress]") {
  std::string out;
  double now = 50;
  auto r = string_reporter(Mode::kJson, &out, &now);
  {
    kerf::progress::Task t("gptq", 100, "tensors", r.get());
    for (int i = 0; i < 40; ++i) {
      now += 0.5;  // a constant 2 tensors / s
      t.step("layers.0.wq", "int4_asym:g32 gptq search rel.err 0.1");
    }
    r->log("calibration: \"quoted\" text\tand a tab");
    for (int i = 40; i < 100; ++i) {
      now += 0.5;
      t.step();
    }
  }
  r->timing({{"import", 1.0}, {"quantization (gptq)", 3.0}}, 4.0);
  const auto ev = parse_json_lines(out);
  REQUIRE(ev.size() == 1 + 100 + 1 + 1 + 1);  // start, 100 progress, log, done, timing
  CHECK(ev[0] == nlohmann::json::parse(R"({"event":"start","task":"gptq","done":0,"total":100,"unit":"tensors"})"));
  const nlohmann::json& p40 = ev[40];
  CHECK(p40["event"] == "progress");
  CHECK(p40["task"] == "gptq");
  CHECK(p40["done"] == 40);
  CHECK(p40["total"] == 100);
  CHECK(p40["unit"] == "tensors");
  CHECK(p40["item"] == "layers.0.wq");
  CHECK(p40["detail"] == "int4_asym:g32 gptq search rel.err 0.1");
  CHECK(p40["elapsed_s"].get<double>() == Approx(20.0));
  CHECK(p40["rate"].get<double>() == Approx(2.0));
  CHECK(p40["eta_s"].get<double>() == Approx(30.0));  // 60 left at 2 / s
  CHECK(ev[41]["event"] == "log");
  CHECK(ev[41]["msg"] == "calibration: \"quoted\" text\tand a tab");
  CHECK(ev[101]["done"] == 100);
  CHECK(ev[101]["eta_s"].get<double>() == 0.0);
  CHECK(!ev[101].contains("item"));
  const nlohmann::json& done = ev[102];
  CHECK(done["event"] == "done");
  CHECK(done["done"] == 100);
  CHECK(done["completed"] == true);
  CHECK(done["elapsed_s"].get<double>() == Approx(50.0));
  const nlohmann::json& tm = ev[103];
  CHECK(tm["event"] == "timing");
  CHECK(tm["total_s"].get<double>() == Approx(4.0));
  REQUIRE(tm["stages"].size() == 2);
  CHECK(tm["stages"][1]["stage"] == "quantization (gptq)");
  CHECK(tm["stages"][1]["percent"].get<double>() == Approx(75.0));
  // Errors are events too.
  out.clear();
  r->error("model.onnx: not an ONNX file", 3);
  CHECK(nlohmann::json::parse(out) == nlohmann::json::parse(R"({"event":"error","msg":"model.onnx: not an ONNX file","exit_code":3})"));
}

TEST_CASE("progress: the ETA follows a changed rate, smoothed; unknown before any progress", "[progress]") {
  std::string out;
  double now = 0;
  auto r = string_reporter(Mode::kJson, &out, &now);
  kerf::progress::Task t("eval", 200, "stories", r.get());
  for (int i = 0; i < 100; ++i) {
    now += 1;  // 1 story / s
    t.step();
  }
  auto last = [&] { return nlohmann::json::parse(split_lines(out).back()); };
  CHECK(last()["eta_s"].get<double>() == Approx(100.0));
  for (int i = 0; i < 20; ++i) {
    now += 0.5;  // now 2 stories / s
    t.step();
  }
  const double eta = last()["eta_s"].get<double>();
  CHECK(eta < 80.0);  // faster than the old rate's 80 s for the 80 left...
  CHECK(eta > 40.0);  // ...but smoothed: not yet the new rate's 40 s
  for (int i = 0; i < 60; ++i) {
    now += 0.5;
    t.step();
  }
  const double eta2 = last()["eta_s"].get<double>();  // 20 left: 10 s at the new rate, 20 s at the old
  CHECK(eta2 > 10.0);
  CHECK(eta2 < 12.0);
  // Before the first unit: no rate, no ETA (null).
  out.clear();
  kerf::progress::Task u("gptq", 10, "tensors", r.get());
  u.set(0);
  CHECK(last()["eta_s"].is_null());
  CHECK(last()["rate"].is_null());
}

TEST_CASE("progress: a resumed task's rate counts only the new units", "[progress]") {
  std::string out;
  double now = 0;
  auto r = string_reporter(Mode::kJson, &out, &now);
  kerf::progress::Task t("distill", 1000, "steps", r.get(), 900);
  for (int i = 0; i < 10; ++i) {
    now += 1;
    t.step();
  }
  const auto ev = parse_json_lines(out);
  CHECK(ev[0]["done"] == 900);
  CHECK(ev.back()["done"] == 910);
  CHECK(ev.back()["rate"].get<double>() == Approx(1.0));
  CHECK(ev.back()["eta_s"].get<double>() == Approx(90.0));
}

TEST_CASE("progress: quiet prints nothing but errors; an unfinished task ends as not completed", "[progress]") {
  std::string out;
  double now = 0;
  auto q = string_reporter(Mode::kQuiet, &out, &now);
  {
    kerf::progress::Task t("gptq", 3, "tensors", q.get());
    for (int i = 0; i < 3; ++i) {
      now += 20;
      t.step("x");
    }
    q->log("a line");
  }
  CHECK(out.empty());
  q->error("boom", 1);
  CHECK(out == "kerf: boom\n");

  std::string js;
  auto j = string_reporter(Mode::kJson, &js, &now);
  {
    kerf::progress::Task t("gptq", 3, "tensors", j.get());
    t.step();  // an error unwinds here
  }
  const auto ev = parse_json_lines(js);
  REQUIRE(ev.back()["event"] == "done");
  CHECK(ev.back()["completed"] == false);
  CHECK(ev.back()["done"] == 1);
  std::string ls;
  auto l = string_reporter(Mode::kLines, &ls, &now);
  {
    kerf::progress::Task t("gptq", 3, "tensors", l.get());
    now += 2;
    t.step();
  }
  CHECK(ls == "gptq: 1/3 tensors (33 %), 0.5 tensors/s, elapsed 0:02, ETA 0:04\n"
              "gptq: stopped at 1/3 tensors after 2.0 s\n");
  // No reporter: tasks are no-ops.
  kerf::progress::Task none("gptq", 3, "tensors", nullptr);
  none.step();
  CHECK(none.done() == 1);
}

TEST_CASE("progress: events from several threads stay whole lines", "[progress]") {
  std::string out;
  std::atomic<int> tick{0};
  kerf::progress::ReporterOptions o;
  o.mode = Mode::kJson;
  o.write = [&out](const std::string& s) { out += s; };  // called under the reporter's lock
  o.clock = [&tick] { return 0.001 * tick.fetch_add(1); };
  auto r = kerf::progress::make_reporter(o);
  {
    kerf::progress::Task t("calibration", 4000, "batches", r.get());
    std::vector<std::thread> th;
    for (int k = 0; k < 4; ++k)
      th.emplace_back([&] {
        for (int i = 0; i < 1000; ++i) t.step("", "thread work");
      });
    for (auto& x : th) x.join();
  }
  const auto ev = parse_json_lines(out);
  REQUIRE(ev.size() == 4002);
  int64_t max_done = 0;
  for (const auto& e : ev)
    if (e["event"] == "progress") max_done = std::max<int64_t>(max_done, e["done"].get<int64_t>());
  CHECK(max_done == 4000);
  CHECK(ev.back()["completed"] == true);
}

TEST_CASE("progress: mode choice, clock format and the timing table", "[progress]") {
  CHECK(kerf::progress::choose_mode(true, true, true) == Mode::kJson);
  CHECK(kerf::progress::choose_mode(true, false, true) == Mode::kQuiet);
  CHECK(kerf::progress::choose_mode(false, false, false) == Mode::kLines);
  const char* term = std::getenv("TERM");
  const std::string saved = term ? term : "";
  setenv("TERM", "xterm", 1);
  CHECK(kerf::progress::choose_mode(false, false, true) == Mode::kBar);
  setenv("TERM", "dumb", 1);
  CHECK(kerf::progress::choose_mode(false, false, true) == Mode::kLines);
  if (term) setenv("TERM", saved.c_str(), 1); else unsetenv("TERM");

  CHECK(kerf::progress::format_clock(7.4) == "0:07");
  CHECK(kerf::progress::format_clock(754) == "12:34");
  CHECK(kerf::progress::format_clock(3723) == "1:02:03");
  CHECK(kerf::progress::format_clock(-1) == "--:--");

  const std::string t = kerf::progress::timing_table({{"import", 0.5}, {"quantization (gptq)", 1.5}}, 2.0);
  CHECK(t.find("    import                  0.500 s   25.0 %\n") != std::string::npos);
  CHECK(t.find("    quantization (gptq)     1.500 s   75.0 %\n") != std::string::npos);
  CHECK(t.find("    total                   2.000 s  100.0 %\n") != std::string::npos);

  std::vector<std::pair<std::string, double>> rows;
  kerf::progress::add_seconds(rows, "calibration", 1);
  kerf::progress::add_seconds(rows, "quantization (gptq)", 2);
  kerf::progress::add_seconds(rows, "calibration", 0.5);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0] == std::make_pair(std::string("calibration"), 1.5));
}

TEST_CASE("progress: kerf compile --log-json --time writes only JSON lines, with a timing event", "[progress][cli]") {
  const std::string exe = kerf_exe();
  kerf::test::TempDir dir("progress_json");
  const std::string out = dir.file("rtn.kerf"), err = dir.file("stderr.txt"), sout = dir.file("stdout.txt");
  const int rc = run_shell(exe + " compile " + kerf::test::kModel + " -o " + out + " --log-json --time --threads 1 >" + sout + " 2>" + err);
  const std::string text = kerf::test::read_bytes(err);
  INFO("stderr:\n" << text);
  REQUIRE(rc == 0);
  const auto ev = parse_json_lines(text);
  const nlohmann::json* timing = nullptr;
  for (const auto& e : ev)
    if (e["event"] == "timing") timing = &e;
  REQUIRE(timing != nullptr);
  const double total = (*timing)["total_s"].get<double>();
  CHECK(total > 0);
  double sum = 0, pct = 0;
  std::vector<std::string> names;
  for (const auto& s : (*timing)["stages"]) {
    names.push_back(s["stage"].get<std::string>());
    CHECK(s["seconds"].get<double>() >= 0);
    sum += s["seconds"].get<double>();
    pct += s["percent"].get<double>();
  }
  CHECK(names.front() == "import");
  CHECK(std::find(names.begin(), names.end(), "lift check") != names.end());
  CHECK(std::find(names.begin(), names.end(), "quantization (rtn)") != names.end());
  CHECK(std::find(names.begin(), names.end(), "write") != names.end());
  CHECK(names.back() == "other");
  CHECK(sum == Approx(total).margin(0.01));
  CHECK(pct == Approx(100.0).margin(0.5));
  // The human summary stays on stdout, without the timing table (it is the JSON event).
  const std::string so = kerf::test::read_bytes(sout);
  CHECK(so.find("effective bits per weight") != std::string::npos);
  CHECK(so.find("compile time by stage") == std::string::npos);

  // Without --log-json, --time prints the table after the summary.
  const int rc2 = run_shell(exe + " compile " + kerf::test::kModel + " -o " + out + " --time -q --threads 1 >" + sout + " 2>" + err);
  REQUIRE(rc2 == 0);
  const std::string so2 = kerf::test::read_bytes(sout);
  CHECK(std::regex_search(so2, std::regex(R"(compile time by stage[^\n]*\n(    [a-z ()-]+ +[0-9.]+ s +[0-9.]+ %\n)+    total +[0-9.]+ s  100.0 %\n)")));
  CHECK(kerf::test::read_bytes(err).empty());  // -q: nothing on stderr

  // A failing command reports its error as an event too.
  const int rc3 = run_shell(exe + " compile " + dir.file("missing.onnx") + " -o " + out + " --log-json 2>" + err);
  CHECK(rc3 != 0);
  const auto ev3 = parse_json_lines(kerf::test::read_bytes(err));
  REQUIRE(!ev3.empty());
  CHECK(ev3.back()["event"] == "error");
  CHECK(ev3.back()["exit_code"] == rc3);
  CHECK(ev3.back()["msg"].get<std::string>().find("missing.onnx") != std::string::npos);
}

TEST_CASE("progress: GPTQ compile, not on a terminal: short plain lines, no \\r; --log-json: task events", "[progress][cli]") {
  const std::string exe = kerf_exe();
  kerf::test::TempDir dir("progress_lines");
  const std::string out = dir.file("gptq.kerf"), log = dir.file("log.txt");
  const std::string args = " compile " + kerf::test::kModel + " -o " + out + " --recipe " + std::string(KERF_SOURCE_DIR) +
                           "/examples/recipes/int4-gptq.yaml --calib " + kerf::test::kText + " --calib-stories 0:16 --threads 1";
  REQUIRE(run_shell(exe + args + " 2>&1 | cat >" + log) == 0);
  const std::string text = kerf::test::read_bytes(log);
  INFO("output:\n" << text);
  CHECK(text.find('\r') == std::string::npos);
  CHECK(text.find("\x1b[") == std::string::npos);
  std::smatch m;
  REQUIRE(std::regex_search(text, m, std::regex(R"(\ncalibration: (\d+)/(\d+) stages in [0-9.]+ s)")));
  CHECK(m[1] == m[2]);
  REQUIRE(std::regex_search(text, m, std::regex(R"(\nquantize: (\d+)/(\d+) tensors in [0-9.]+ s)")));
  CHECK(m[1] == m[2]);
  CHECK(text.find("calibration: " + kerf::test::kText) != std::string::npos);  // the information line

  const std::string err = dir.file("events.txt");
  REQUIRE(run_shell(exe + args + " --log-json 2>" + err + " >/dev/null") == 0);
  const auto ev = parse_json_lines(kerf::test::read_bytes(err));
  int64_t last_done = 0, total = -1;
  bool saw_eta = false, done_event = false;
  for (const auto& e : ev) {
    if (e.value("task", "") != "quantize") continue;
    if (e["event"] == "progress") {
      CHECK(e["done"].get<int64_t>() == last_done + 1);  // every tensor, in order
      last_done = e["done"].get<int64_t>();
      total = e["total"].get<int64_t>();
      CHECK(e.contains("item"));
      saw_eta |= e["eta_s"].is_number();
    }
    if (e["event"] == "done") {
      done_event = true;
      CHECK(e["completed"] == true);
      CHECK(e["done"] == total);
    }
  }
  CHECK(last_done == total);
  CHECK(total > 10);
  CHECK(saw_eta);
  CHECK(done_event);
}
