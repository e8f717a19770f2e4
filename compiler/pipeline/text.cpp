#include "compiler/pipeline/text.h"

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace kerf::pipeline {

Result<StoryRange> parse_story_range(const std::string& text) {
  const size_t colon = text.find(':');
  auto bad = [&] { return InvalidArgument("story range '" + text + "' is not A:B with 0 <= A < B"); };
  if (colon == std::string::npos) return bad();
  StoryRange r;
  try {
    size_t p1 = 0, p2 = 0;
    r.begin = std::stoi(text.substr(0, colon), &p1);
    r.end = std::stoi(text.substr(colon + 1), &p2);
    if (p1 != colon || p2 != text.size() - colon - 1) return bad();
  } catch (...) {
    return bad();
  }
  if (r.begin < 0 || r.end <= r.begin) return bad();
  return r;
}

static std::string strip(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

Result<std::vector<std::string>> read_stories(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError(path + ": cannot open text file");
  std::vector<std::string> stories;
  std::string line, cur;
  auto flush = [&] {
    std::string s = strip(cur);
    if (!s.empty()) stories.push_back(s);
    cur.clear();
  };
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "<|endoftext|>") {
      flush();
      continue;
    }
    cur += line;
    cur += '\n';
  }
  flush();
  if (stories.empty()) return BadInput(path + ": holds no story text");
  return stories;
}

Result<std::vector<std::string>> select_stories(const std::vector<std::string>& all, StoryRange r,
                                                const std::string& path) {
  if (static_cast<size_t>(r.end) > all.size())
    return InvalidArgument("stories " + std::to_string(r.begin) + ":" + std::to_string(r.end) + " requested but " +
                           path + " has " + std::to_string(all.size()));
  return std::vector<std::string>(all.begin() + r.begin, all.begin() + r.end);
}

std::optional<double> parse_finite(const std::string& s) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::string shortest_double(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

}  // namespace kerf::pipeline
