#!/usr/bin/env bash
# README command (2): install dependencies, build, run the whole test suite (CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
(cd build && OMP_WAIT_POLICY=passive ctest --output-on-failure)
# Side by side (the qemu runs use about one core, the clang build and the fuzzers the rest):
#  - runtime-lite cross-built for aarch64 and run under qemu (every ISA), plus x86 == aarch64 greedy
#    text (scripts/test-aarch64.sh; its output is printed when it ends);
#  - ASan + UBSan (clang): the runtime test suite, every fuzz regression input and the malformed-model
#    corpus replayed through the fuzz targets, then 30 s of libFuzzer per target (scripts/fuzz.sh).
aarch64_log="$(mktemp)"
KERF_HOST_BUILD=build bash scripts/test-aarch64.sh >"$aarch64_log" 2>&1 &
aarch64_pid=$!
fuzz_rc=0
KERF_HOST_BUILD=build bash scripts/fuzz.sh --seconds 30 || fuzz_rc=$?
aarch64_rc=0
wait "$aarch64_pid" || aarch64_rc=$?
cat "$aarch64_log"
rm -f "$aarch64_log"
[ "$aarch64_rc" = 0 ] || { echo "test.sh: FAILED: the aarch64 suite (output above)" >&2; exit 1; }
[ "$fuzz_rc" = 0 ] || { echo "test.sh: FAILED: scripts/fuzz.sh (sanitizers / fuzzing, output above)" >&2; exit 1; }
echo "test.sh: all passed"
