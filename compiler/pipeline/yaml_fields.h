// Strict YAML reading shared by the recipe (recipe_file.cpp) and device-profile (compiler/targets/
// profile.cpp) parsers: unknown keys are errors naming the dotted path and the known keys, values of
// the wrong type name the line. Errors are kBadInput "LABEL: dotted.key: what".
#pragma once

#include <yaml-cpp/yaml.h>

#include <set>
#include <string>

#include "compiler/ir/status.h"

namespace kerf::pipeline::yaml {

struct Ctx {
  std::string label;         ///< the file, as messages name it
  std::string noun = "key";  ///< "key" (recipes) or "field" (profiles), as messages say it
  Status err(const std::string& key, const std::string& what) const { return BadInput(label + ": " + key + ": " + what); }
};

/// Parses `text` into *root, which must be a mapping ("LABEL: a WHAT must be a YAML mapping");
/// syntax errors name the line.
inline Status load_mapping(const std::string& text, const std::string& label, const std::string& what, YAML::Node* root) {
  try {
    *root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    return BadInput(label + ": YAML syntax error at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  } catch (const YAML::Exception& e) {
    return BadInput(label + ": " + e.what());
  }
  if (!root->IsMap()) return BadInput(label + ": a " + what + " must be a YAML mapping");
  return Status::Ok();
}

/// `n` must be a mapping whose keys are all in `known` ("where.k: unknown key (known: a, b)").
inline Status check_keys(const Ctx& c, const YAML::Node& n, const std::string& where, const std::set<std::string>& known) {
  if (!n.IsMap()) return c.err(where, "must be a mapping (line " + std::to_string(n.Mark().line + 1) + ")");
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    if (!known.count(k)) {
      std::string list;
      for (const auto& s : known) list += (list.empty() ? "" : ", ") + s;
      return c.err(where.empty() ? k : where + "." + k, "unknown " + c.noun + " (known: " + list + ")");
    }
  }
  return Status::Ok();
}

/// `n` as a T ("key: has the wrong type (line L)").
template <typename T>
Status get(const Ctx& c, const YAML::Node& n, const std::string& key, T* out) {
  try {
    *out = n.as<T>();
  } catch (const YAML::Exception&) {
    return c.err(key, "has the wrong type (line " + std::to_string(n.Mark().line + 1) + ")");
  }
  return Status::Ok();
}

}  // namespace kerf::pipeline::yaml
