// JSON and text files of the pipeline: the one reader of kerf's JSON files (reports, baselines,
// package manifests), the one JSON writer (invalid UTF-8 in strings - e.g. file names - never
// throws) and the one Status-returning atomic text write.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compiler/ir/status.h"

namespace kerf::pipeline {

/// j as JSON text (`indent` < 0: one line). Strings that are not valid UTF-8 (a file name in another
/// encoding) are written with U+FFFD in place of the bad bytes instead of throwing.
template <class Json>
std::string dump_json(const Json& j, int indent = -1) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

/// j as a JSON file's text: dump_json with a 2-space indent and a trailing newline.
template <class Json>
std::string json_file_text(const Json& j) {
  return dump_json(j, 2) + "\n";
}

/// Reads and parses the JSON object at `path` whose "schema" string is one of `schemas` (any
/// schema, or none, when `schemas` is empty). Errors: kIo (missing / unreadable file), kBadInput
/// (not JSON - malformed, or a number that does not fit a double such as 1e400 -, not an object,
/// no / another "schema"); every message starts with `path`.
Result<nlohmann::ordered_json> read_json_file(const std::string& path, const std::vector<std::string>& schemas);

/// Writes `text` to `path` atomically (artifact::write_file_atomic: temporary file in the same
/// directory, fsync, rename). Errors: kIo naming the file; nothing is left behind then.
Status write_text_atomic(const std::string& path, const std::string& text);

/// "null", "a boolean", "a number", "a string", "an array" or "an object": for error messages.
const char* json_type_name(const nlohmann::ordered_json& v);

}  // namespace kerf::pipeline
