#!/usr/bin/env bash
# Example CI job (examples/ci/README.md): compile the bundled model for two targets, verify each
# package against the recipe's thresholds and a committed baseline report, and write the reports
# (JSON + self-contained HTML) next to the packages. Exit status: 0 when every package passes,
# kerf's exit code of the first failure otherwise (6 = verification failed; README "Exit codes").
#
#   bash examples/ci/compile-and-verify.sh [OUT_DIR]      (default out/ci)
#
# Environment: KERF (the kerf binary, default ./build/kerf), KERF_SHARED_DIR (default ../shared),
# KERF_CI_TARGETS (default "host arm64-neon-dotprod"), KERF_CI_BASELINE_DIR (default
# examples/ci/baseline; a target without a baseline file is verified against thresholds only).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-out/ci}
KERF=${KERF:-./build/kerf}
SHARED=${KERF_SHARED_DIR:-../shared}
TEXT="$SHARED/text/tinystories_valid_800.txt"
MODEL=examples/stories260K/stories260K.fp16.onnx
RECIPE=examples/recipes/int4-gptq.yaml
TARGETS=${KERF_CI_TARGETS:-host arm64-neon-dotprod}
BASELINES=${KERF_CI_BASELINE_DIR:-examples/ci/baseline}
export OMP_WAIT_POLICY=passive
mkdir -p "$OUT"
status=0
for t in $TARGETS; do
  pkg="$OUT/$t"
  mkdir -p "$pkg"
  echo "== $t: compile"
  "$KERF" compile "$MODEL" --target "$t" -o "$pkg/stories260K.kerf" --recipe "$RECIPE" --calib "$TEXT" --threads 1 -q \
    || { rc=$?; echo "compile for $t failed (exit $rc)" >&2; [ $status -eq 0 ] && status=$rc; continue; }
  base=()
  [ -f "$BASELINES/$t.json" ] && base=(--baseline "$BASELINES/$t.json")
  echo "== $t: verify"
  "$KERF" verify "$pkg/stories260K.kerf" --reference "$MODEL" --text "$TEXT" --stories 400:800 "${base[@]}" \
    --json "$pkg/report.json" --html "$pkg/report.html" -q
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "verify for $t failed (exit $rc); report: $pkg/report.html" >&2
    [ $status -eq 0 ] && status=$rc
  fi
done
exit $status
