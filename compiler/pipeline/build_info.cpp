// Build identification. KERF_COMMIT_ID comes from the header that the kerf_commit_id target
// (cmake/kerf_commit.cmake) regenerates on every build; KERF_PROJECT_VERSION from CMakeLists.txt.
#include "compiler/pipeline/build_info.h"

#include "kerf_commit_id.h"  // generated: ${CMAKE_BINARY_DIR}/generated/kerf_commit_id.h
#ifndef KERF_PROJECT_VERSION
#define KERF_PROJECT_VERSION "0"
#endif

namespace kerf {
const char* kerf_version() { return KERF_PROJECT_VERSION; }
const char* kerf_commit() { return KERF_COMMIT_ID; }
}  // namespace kerf
