#!/usr/bin/env bash
# README command (2): install dependencies, build, run the whole test suite (CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
cd build && OMP_WAIT_POLICY=passive ctest --output-on-failure
