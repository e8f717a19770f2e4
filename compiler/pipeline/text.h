// Evaluation / calibration text (shared/EVAL.md): stories separated by a line that holds only
// "<|endoftext|>".
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "compiler/ir/status.h"

namespace kerf::pipeline {

/// Half-open story range [begin, end).
struct StoryRange {
  int begin = 0, end = 0;
};

/// Parses "A:B" (0 <= A < B). kInvalidArgument naming the text otherwise.
Result<StoryRange> parse_story_range(const std::string& text);

/// Reads `path` and splits it into stories: the lines between separator lines, joined with '\n',
/// leading and trailing whitespace removed. kIo if unreadable, kBadInput if it holds no story.
Result<std::vector<std::string>> read_stories(const std::string& path);

/// Stories [r.begin, r.end) of `all`; kInvalidArgument if the file has fewer stories.
Result<std::vector<std::string>> select_stories(const std::vector<std::string>& all, StoryRange r,
                                                const std::string& path);

/// Numbers in metadata, recipe and report text.
/// The finite double that the WHOLE of `s` spells (strtod syntax; no leading space, no trailing
/// characters, no overflow); nullopt otherwise.
std::optional<double> parse_finite(const std::string& s);
/// The shortest decimal text that reads back to the same double (std::to_chars): 0.1 -> "0.1",
/// 4 -> "4", 1e-05 -> "1e-05".
std::string shortest_double(double v);

}  // namespace kerf::pipeline
