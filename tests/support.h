// Helpers shared by the test files: scratch directories and file bytes, the bundled stories260K
// model (its lifted graph, loaded once) and tokenized stories of the shared text, and the pieces of
// the multi-process tests (a free port, spawning this binary on a hidden test case, reaping it).
#pragma once

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "compiler/pipeline/model_io.h"
#include "compiler/pipeline/text.h"

extern char** environ;

namespace kerf::test {

// ------------------------------------------------------------------------------ files

/// A fresh directory `test_<tag>_<pid>` under the build tree, removed when the test ends.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    path = std::filesystem::path(KERF_BINARY_DIR) / ("test_" + tag + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void write_bytes(const std::string& p, const std::string& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(b.data(), static_cast<std::streamsize>(b.size()));
  REQUIRE(f.good());
}

// ------------------------------------------------------------------------------ comparisons

inline bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m;
}

// ------------------------------------------------------------------------------ stories260K

/// The bundled model and its tokenizer (the same bytes as shared/models/stories260K/), and the
/// shared evaluation text.
inline const std::string kModel = std::string(KERF_SOURCE_DIR) + "/examples/stories260K/stories260K.fp16.onnx";
inline const std::string kTok = std::string(KERF_SOURCE_DIR) + "/examples/stories260K/tok512.bin";
inline const std::string kText = std::string(KERF_SHARED_DIR) + "/text/tinystories_valid_800.txt";

/// The lifted graph of the bundled model, loaded once.
inline const ir::Graph& lifted() {
  static ir::Graph g;
  static bool done = false;
  if (!done) {
    auto m = pipeline::load_model(kModel);
    INFO(m.status().to_string());
    REQUIRE(m.ok());
    g = m->lifted;
    done = true;
  }
  return g;
}

/// Stories [a, b) of the text, tokenized (BOS first); story a+i cut to cap(i) tokens.
inline std::vector<std::vector<int64_t>> stories(int a, int b, const std::function<size_t(int)>& cap) {
  auto all = pipeline::read_stories(kText);
  REQUIRE(all.ok());
  auto sel = pipeline::select_stories(*all, pipeline::StoryRange{a, b}, kText);
  INFO(sel.status().to_string());
  REQUIRE(sel.ok());
  auto tok = pipeline::read_llama2c_tokenizer(kTok, 512);
  REQUIRE(tok.ok());
  auto ids = pipeline::tokenize_texts(*tok, 512, *sel);
  REQUIRE(ids.ok());
  std::vector<std::vector<int64_t>> out = std::move(*ids);
  for (size_t i = 0; i < out.size(); ++i) {
    const size_t c = cap(static_cast<int>(i));
    if (out[i].size() > c) out[i].resize(c);
  }
  return out;
}

/// Stories [a, b) of the text, tokenized, at most `cap` tokens each.
inline std::vector<std::vector<int64_t>> stories(int a, int b, size_t cap) {
  return stories(a, b, [cap](int) { return cap; });
}

// ------------------------------------------------------------------------------ processes

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

inline std::string exe_path() {
  std::vector<char> buf(4096);
  ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  REQUIRE(n > 0);
  return std::string(buf.data(), static_cast<size_t>(n));
}

/// The variables of a distributed run that a worker does not inherit from this process (it gets
/// its own in `vars`).
inline const std::vector<std::string> kDistEnv = {"RANK",       "WORLD_SIZE",  "MASTER_ADDR",       "MASTER_PORT",
                                                  "LOCAL_RANK", "KERF_DP_OUT", "GLOO_SOCKET_IFNAME"};

/// Starts this test binary on the hidden test case `test_name` with this process's environment,
/// less `not_inherited` and OMP_WAIT_POLICY, plus `vars` and OMP_WAIT_POLICY=passive; its stdout
/// and stderr go to `log`.
inline pid_t spawn_worker(const std::string& test_name, const std::map<std::string, std::string>& vars,
                          const std::string& log, const std::vector<std::string>& not_inherited = kDistEnv) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string s(*e);
    std::string name = s.substr(0, s.find('='));
    if (vars.count(name) || name == "OMP_WAIT_POLICY" ||
        std::find(not_inherited.begin(), not_inherited.end(), name) != not_inherited.end())
      continue;
    env.push_back(s);
  }
  for (const auto& [n, v] : vars) env.push_back(n + "=" + v);
  env.push_back("OMP_WAIT_POLICY=passive");
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);

  std::string exe = exe_path(), spec = test_name;
  std::vector<char*> argv = {exe.data(), spec.data(), nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  return pid;
}

/// Child processes, killed (SIGKILL) and reaped if still running when this goes out of scope, so
/// that a failed REQUIRE in the parent never leaves a worker behind.
struct Children {
  std::vector<pid_t> pids;
  std::vector<int> codes;  // -2 running, -1 killed on timeout, 128+N died of signal N, else exit code

  Children() = default;
  Children(const Children&) = delete;
  Children& operator=(const Children&) = delete;
  ~Children() {
    for (size_t i = 0; i < pids.size(); ++i)
      if (codes[i] == -2) {
        ::kill(pids[i], SIGKILL);
        int st = 0;
        ::waitpid(pids[i], &st, 0);
      }
  }
  void add(pid_t p) {
    pids.push_back(p);
    codes.push_back(-2);
  }
  /// Waits for every child up to `timeout`; kills the ones still running.
  void wait_all(std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto left = [&] { return std::count(codes.begin(), codes.end(), -2); };
    while (left() > 0 && std::chrono::steady_clock::now() < deadline) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (codes[i] != -2) continue;
        int st = 0;
        if (::waitpid(pids[i], &st, WNOHANG) == pids[i]) codes[i] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      if (left() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (size_t i = 0; i < pids.size(); ++i)
      if (codes[i] == -2) {
        ::kill(pids[i], SIGKILL);
        int st = 0;
        ::waitpid(pids[i], &st, 0);
        codes[i] = -1;
      }
  }
};

/// `world` copies of this binary on the hidden test case `test_name` (spawn_worker), the ranks of a
/// group that meets at 127.0.0.1 on a free port: rank r gets RANK, WORLD_SIZE, MASTER_ADDR,
/// MASTER_PORT and KERF_DP_OUT = outs[r] (`dir`/rank<r><out_ext>); its output goes to logs[r]
/// (`dir`/rank<r>.log).
struct DpWorkers : Children {
  std::vector<std::string> outs, logs;

  DpWorkers(const TempDir& dir, const std::string& test_name, int world, const std::string& out_ext,
            const std::vector<std::string>& not_inherited = kDistEnv) {
    const int port = free_port();
    for (int r = 0; r < world; ++r) {
      outs.push_back(dir.file("rank" + std::to_string(r) + out_ext));
      logs.push_back(dir.file("rank" + std::to_string(r) + ".log"));
      add(spawn_worker(test_name,
                       {{"RANK", std::to_string(r)},
                        {"WORLD_SIZE", std::to_string(world)},
                        {"MASTER_ADDR", "127.0.0.1"},
                        {"MASTER_PORT", std::to_string(port)},
                        {"KERF_DP_OUT", outs.back()}},
                       logs.back(), not_inherited));
    }
  }
};

}  // namespace kerf::test
