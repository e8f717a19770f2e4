// Build identification: the kerf version and the git commit the binary was built from.
#pragma once

namespace kerf {

/// The project version from CMakeLists.txt's project(), e.g. "0.1.0".
const char* kerf_version();

/// The git commit of the source tree at BUILD time (regenerated on every build, rewritten only when it
/// changes): 40 hex digits, with "-dirty" appended when tracked files had uncommitted changes;
/// "unknown" when the sources are not a git checkout (or git is missing).
const char* kerf_commit();

}  // namespace kerf
