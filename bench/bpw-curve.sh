#!/usr/bin/env bash
# bpw -> perplexity curve on stories260K: one mixed-precision allocation per budget
# (`kerf compile --bpw B`, default candidates, GPTQ, post-training), each evaluated with the
# EVAL.md protocol (stories 400-799). Prints a Markdown table.
# Usage: bench/bpw-curve.sh [BUILD_DIR] [BUDGETS...]   (default budgets: 3.0 3.5 4.0 4.5 5.0 6.0)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$here/build}"; shift || true
budgets=("$@"); [ ${#budgets[@]} -gt 0 ] || budgets=(3.0 3.5 4.0 4.5 5.0 6.0)
text="$here/../shared/text/tinystories_valid_800.txt"
model="$here/examples/stories260K/stories260K.fp16.onnx"
out="${TMPDIR:-/tmp}/kerf-bpw-curve"; mkdir -p "$out"
export OMP_WAIT_POLICY=passive
echo "| budget | bpw | perplexity | KL | top-1 | bytes |"
echo "|---|---|---|---|---|---|"
for b in "${budgets[@]}"; do
  "$build/kerf" compile "$model" -o "$out/b$b.kerf" --calib "$text" --bpw "$b" --threads 1 -q > "$out/b$b.log"
  "$build/kerf" eval "$out/b$b.kerf" --reference "$model" --text "$text" -q --json "$out/b$b.json" > /dev/null
  python3 -c "import json;d=json.load(open('$out/b$b.json'));print('| $b | %.3f | %.4f | %.4f | %.4f | %d |'%(d['bpw'],d['ppl'],d['kl'],d['top1'],d['bytes']))"
done
