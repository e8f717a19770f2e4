#!/usr/bin/env bash
# README command (2): install dependencies, build, run the whole test suite (CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
(cd build && OMP_WAIT_POLICY=passive ctest --output-on-failure)
# runtime-lite cross-built for aarch64 and run under qemu (every ISA), plus x86 == aarch64 greedy text.
KERF_HOST_BUILD=build bash scripts/test-aarch64.sh
# ASan + UBSan (clang): the runtime test suite, every fuzz regression input and the malformed-model
# corpus replayed through the fuzz targets, then 30 s of libFuzzer per target (scripts/fuzz.sh).
KERF_HOST_BUILD=build bash scripts/fuzz.sh --seconds 30
