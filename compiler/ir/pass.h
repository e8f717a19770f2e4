// Pass manager: named graph passes, their options and counters, and text pipelines such as
// "fold,dce,lift-transformer" or "canonicalize" (an alias). The registry (passes/registry.h) lists
// every pass in one place, in order; there is no self-registration through static initializers.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"

namespace kerf {

/// State shared by the passes of one pipeline run.
struct PassContext {
  std::map<std::string, int64_t> counters;  ///< "<pass>.<counter>" -> value, e.g. "fold.folded_nodes"
  std::vector<std::string> log;             ///< one line per notable decision
  bool verbose = false;
  void count(const std::string& pass, const std::string& counter, int64_t n = 1) {
    counters[pass + "." + counter] += n;
  }
};

class Pass {
 public:
  virtual ~Pass() = default;
  virtual const char* name() const = 0;
  virtual const char* description() const = 0;
  /// Sets an option from the pipeline text ("lift-transformer{verify=0}"). Unknown keys or bad
  /// values are kInvalidArgument naming the pass and key.
  virtual Status set_option(const std::string& key, const std::string& value) {
    return InvalidArgument(std::string("pass '") + name() + "' has no option '" + key + "' (value '" + value + "')");
  }
  /// Transforms `g` in place; returns whether anything changed. On error the graph may be partly
  /// transformed: callers that need it intact run on a copy.
  virtual Result<bool> run(ir::Graph& g, PassContext& ctx) = 0;
};

/// One element of a parsed pipeline: pass name and its options, in order of appearance.
struct PipelineStep {
  std::string pass;
  std::vector<std::pair<std::string, std::string>> options;
};

/// Parses "a,b{k=v,k2=v2},c" into steps (syntax only; names are checked by run_pipeline).
Result<std::vector<PipelineStep>> parse_pipeline(const std::string& text);
/// Prints steps back as text: parse_pipeline(print_pipeline(s)) == s.
std::string print_pipeline(const std::vector<PipelineStep>& steps);

}  // namespace kerf
