// runtime-lite internals: small helpers shared by the translation units.
#pragma once

#include <string>

namespace kerf::rt {

/// printf-style formatting into a std::string (messages are truncated at 767 bytes).
std::string strf(const char* f, ...) __attribute__((format(printf, 1, 2)));

}  // namespace kerf::rt
