#!/usr/bin/env bash
# The main job on the bundled model: compile (FP16 ONNX -> INT4 GPTQ artifact, calibrated layer by
# layer on stories 0-127), evaluate and verify the artifact against the FP reference on stories
# 400-799 (shared/EVAL.md), and generate a story.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${KERF_SHARED_DIR:-../shared}
TEXT="$SHARED/text/tinystories_valid_800.txt"
export OMP_WAIT_POLICY=passive   # LibTorch's OpenMP workers otherwise spin on shared cores
mkdir -p out
./build/kerf compile examples/stories260K/stories260K.fp16.onnx --target host -o out/stories260K.kerf \
  --recipe examples/recipes/int4-gptq.yaml --calib "$TEXT" --threads 1 -q
# EVAL.md metrics, checked against the recipe's verify: thresholds (exit 6 if one fails); the
# kerf.report/1 JSON and the self-contained HTML report go to out/.
./build/kerf verify out/stories260K.kerf --reference examples/stories260K/stories260K.fp16.onnx \
  --text "$TEXT" --stories 400:800 --json out/report.json --html out/report.html
echo
./build/kerf-run out/stories260K.kerf --prompt "Once upon a time" -n 100 --seed 1
