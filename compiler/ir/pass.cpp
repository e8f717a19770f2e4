#include "compiler/ir/pass.h"

#include <cctype>

namespace kerf {

namespace {
bool name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; }
std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}
}  // namespace

Result<std::vector<PipelineStep>> parse_pipeline(const std::string& text) {
  std::vector<PipelineStep> steps;
  size_t i = 0;
  const size_t n = text.size();
  auto err = [&](const std::string& what) {
    return InvalidArgument("pipeline '" + text + "', column " + std::to_string(i + 1) + ": " + what);
  };
  while (i < n) {
    while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    PipelineStep step;
    while (i < n && name_char(text[i])) step.pass += text[i++];
    if (step.pass.empty()) return err("expected a pass name");
    while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i < n && text[i] == '{') {
      ++i;
      size_t close = text.find('}', i);
      if (close == std::string::npos) return err("missing '}'");
      std::string body = text.substr(i, close - i);
      size_t p = 0;
      while (p <= body.size()) {
        size_t comma = body.find(',', p);
        if (comma == std::string::npos) comma = body.size();
        std::string kv = trim(body.substr(p, comma - p));
        if (!kv.empty()) {
          size_t eq = kv.find('=');
          if (eq == std::string::npos) return err("option '" + kv + "' is not key=value");
          step.options.emplace_back(trim(kv.substr(0, eq)), trim(kv.substr(eq + 1)));
        }
        p = comma + 1;
      }
      i = close + 1;
    }
    steps.push_back(std::move(step));
    while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i < n) {
      if (text[i] != ',') return err(std::string("expected ',' but found '") + text[i] + "'");
      ++i;
    }
  }
  if (steps.empty()) return InvalidArgument("empty pipeline");
  return steps;
}

std::string print_pipeline(const std::vector<PipelineStep>& steps) {
  std::string out;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (i) out += ",";
    out += steps[i].pass;
    if (!steps[i].options.empty()) {
      out += "{";
      for (size_t j = 0; j < steps[i].options.size(); ++j) {
        if (j) out += ",";
        out += steps[i].options[j].first + "=" + steps[i].options[j].second;
      }
      out += "}";
    }
  }
  return out;
}

}  // namespace kerf
