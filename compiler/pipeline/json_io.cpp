#include "compiler/pipeline/json_io.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "formats/artifact/writer.h"

namespace kerf::pipeline {

namespace {

/// "\"a\" or \"b\"".
std::string quoted_list(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i == 0 ? "" : i + 1 == v.size() ? " or " : ", ") + ("\"" + v[i] + "\"");
  return s;
}

/// nlohmann's message without its "[json.exception.parse_error.101] " tag.
std::string json_error_text(const nlohmann::json::exception& e) {
  std::string s = e.what();
  const size_t tag = s.find("] ");
  return s.rfind("[json.exception.", 0) == 0 && tag != std::string::npos ? s.substr(tag + 2) : s;
}

}  // namespace

Result<nlohmann::ordered_json> read_json_file(const std::string& path, const std::vector<std::string>& schemas) {
  using J = nlohmann::ordered_json;
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream os;
  os << f.rdbuf();
  if (f.bad()) return IoError(path + ": read error");
  J j;
  try {
    j = J::parse(os.str());
  } catch (const nlohmann::json::parse_error& e) {
    return BadInput(path + ": not valid JSON: malformed JSON: " + json_error_text(e));
  } catch (const nlohmann::json::exception& e) {  // e.g. out_of_range 406: a number beyond double (1e400)
    return BadInput(path + ": not valid JSON: " + json_error_text(e));
  }
  if (!j.is_object()) return BadInput(path + ": not a JSON object: the top level is " + json_type_name(j) + ", not an object");
  if (schemas.empty()) return j;
  auto s = j.find("schema");
  if (s == j.end()) return BadInput(path + ": no \"schema\" key (expected " + quoted_list(schemas) + ")");
  if (!s->is_string()) return BadInput(path + ": \"schema\" is " + json_type_name(*s) + ", not a string (expected " + quoted_list(schemas) + ")");
  const std::string schema = s->get<std::string>();
  for (const std::string& want : schemas)
    if (schema == want) return j;
  return BadInput(path + ": schema \"" + schema + "\" is not supported (expected " + quoted_list(schemas) + ")");
}

Status write_text_atomic(const std::string& path, const std::string& text) {
  const std::string err = artifact::write_file_atomic(path, text.data(), text.size());
  return err.empty() ? Status::Ok() : IoError(err);
}

const char* json_type_name(const nlohmann::ordered_json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

}  // namespace kerf::pipeline
