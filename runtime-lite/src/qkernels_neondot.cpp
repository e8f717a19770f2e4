// The ARMv8.2-A dot-product build of qkernels_neon.cpp (kNeonDot: sdot instead of smull / sadalp).
// Compiled with -march=armv8.2-a+dotprod on aarch64 only (CMakeLists.txt).
#define KERF_QK_NEON_DOT 1
#include "qkernels_neon.cpp"
