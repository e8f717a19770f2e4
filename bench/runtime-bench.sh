#!/usr/bin/env bash
# runtime-lite speed on the random-weight Llama shapes of ../shared/models/README.md (s15M, s110M,
# s1B): compile each with the calibration-free recipes (int4-rtn for every shape; ternary-rtn and
# binary-rtn for s110M and s1B) under /usr/bin/time -v (compile wall time, compile peak RSS), then
# `kerf bench` at 1 and 2 threads, and print a Markdown table (also written to a file).
#
# Usage: bench/runtime-bench.sh [SHAPE...]        (default: s15M s110M s1B)
#   KERF_BUILD        build directory with kerf and kerf-run (default: build)
#   KERF_BENCH_DIR    cache of models, tokenizer and artifacts (default: /tmp/kerf-bench; never
#                     committed). Models are generated when missing: s1B takes ~4 min and 13 GB of
#                     memory (its weights go to s1B.fp16.onnx.data, 2.2 GB), s110M ~20 s.
#   KERF_BENCH_OUT    the Markdown table (default: $KERF_BENCH_DIR/runtime-bench.md)
#   KERF_BENCH_PASSES whole `kerf bench` runs per (artifact, threads) (default 4); each run is
#                     `--repeat 3` (prompt 128 tokens, then 64 decoded tokens); the table shows the
#                     median over the passes of each run's mean tokens/s.
#   KERF_BENCH_TARGET kerf compile --target (default: host)
# Needs /usr/bin/python3 with numpy, torch and onnx to make the models (Debian: python3-numpy
# python3-torch python3-onnx). Run on an otherwise idle machine: every number is wall-clock.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${KERF_BUILD:-$here/build}"
case "$build" in /*) ;; *) build="$here/$build" ;; esac
dir="${KERF_BENCH_DIR:-/tmp/kerf-bench}"
out_md="${KERF_BENCH_OUT:-$dir/runtime-bench.md}"
passes="${KERF_BENCH_PASSES:-4}"
target="${KERF_BENCH_TARGET:-host}"
shared="$here/../shared"
py=/usr/bin/python3
export OMP_WAIT_POLICY=passive

fail() { echo "runtime-bench: $*" >&2; exit 1; }
[ -x "$build/kerf" ] || fail "$build/kerf not built (set KERF_BUILD)"
[ -x /usr/bin/time ] || fail "/usr/bin/time missing (apt-get install time)"
[[ "$passes" =~ ^[1-9][0-9]*$ ]] || fail "KERF_BENCH_PASSES must be a positive integer, not '$passes'"

shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(s15M s110M s1B)
declare -A spec=(
  [s15M]=288,768,6,6,6,32000,256
  [s110M]=768,2048,12,12,12,32000,1024
  [s1B]=2048,5632,22,32,4,32000,2048
)
declare -A recipes=(
  [s15M]="int4-rtn"
  [s110M]="int4-rtn ternary-rtn binary-rtn"
  [s1B]="int4-rtn ternary-rtn binary-rtn"
)
for s in "${shapes[@]}"; do
  [ -n "${spec[$s]:-}" ] || fail "unknown shape '$s' (known: s15M s110M s1B)"
done
mkdir -p "$dir"

# The models (random weights, seed 0) and a 32000-piece llama2.c tokenizer: stories260K's 512 real
# pieces, then filler pieces that never match.
for s in "${shapes[@]}"; do
  [ -f "$dir/$s.fp16.onnx" ] && continue
  "$py" -c "import numpy, torch, onnx" 2>/dev/null \
    || fail "$py lacks numpy / torch / onnx (apt-get install python3-numpy python3-torch python3-onnx)"
  echo "== generating $s (${spec[$s]}) into $dir" >&2
  "$py" "$shared/tools/export_llama.py" --synthetic "${spec[$s]}" --seed 0 --out "$dir/$s" --only fp16 >&2
done
if [ ! -f "$dir/tok32000.bin" ]; then
  "$py" - "$shared/models/stories260K/tok512.bin" "$dir/tok32000.bin" <<'PY'
import struct, sys
src, dst = sys.argv[1], sys.argv[2]
d = open(src, 'rb').read()
maxlen, = struct.unpack_from('i', d, 0)
out = bytearray(d)
for i in range(32000 - 512):
    piece = ('\x01fill%05d' % i).encode()
    out += struct.pack('fi', -1e9, len(piece)) + piece
out[0:4] = struct.pack('i', max(maxlen, 10))
open(dst, 'wb').write(bytes(out))
PY
fi

rows="$dir/runtime-bench.rows.tsv"
load0="$(cut -d' ' -f1-3 /proc/loadavg)"
: >"$rows"
for s in "${shapes[@]}"; do
  for r in ${recipes[$s]}; do
    art="$dir/$s.$r.kerf"
    log="$dir/$s.$r.compile.log"
    echo "== $s $r: kerf compile --target $target" >&2
    /usr/bin/time -v "$build/kerf" compile "$dir/$s.fp16.onnx" --target "$target" -o "$art" \
      --tokenizer "$dir/tok32000.bin" --recipe "$here/examples/recipes/$r.yaml" >"$log" 2>&1 \
      || { tail -30 "$log" >&2; fail "kerf compile of $s with $r.yaml failed (log: $log)"; }
    wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$log")"
    rss_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")"
    [ -n "$wall" ] && [ -n "$rss_kb" ] || fail "no /usr/bin/time figures in $log"
    for t in 1 2; do
      for p in $(seq 1 "$passes"); do
        json="$dir/$s.$r.t$t.p$p.json"
        echo "== $s $r: kerf bench --threads $t (pass $p/$passes)" >&2
        "$build/kerf" bench "$art" --threads "$t" --prompt-tokens 128 --gen-tokens 64 --repeat 3 \
          --json "$json" >&2 || fail "kerf bench $art --threads $t failed"
      done
    done
    printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "$wall" "$rss_kb" "$dir/$s.$r" >>"$rows"
  done
done

load1="$(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$rows" "$passes" "$(nproc)" "$load0" "$load1" <<'PY' | tee "$out_md"
import json, statistics, sys
rows, passes, ncpu, load0, load1 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def load(prefix, t):
    runs = []
    for p in range(1, passes + 1):
        with open(f"{prefix}.t{t}.p{p}.json") as f:
            runs.append(json.load(f))
    return runs

def mean_of(run, key):
    v = run[key]
    if not isinstance(v, dict) or "mean" not in v:
        sys.exit(f"runtime-bench: kerf bench JSON key '{key}' is not an object with 'mean': {v!r}")
    return float(v["mean"])

def secs(wall):  # h:mm:ss or m:ss.ss
    parts = [float(x) for x in wall.split(":")]
    s = 0.0
    for x in parts:
        s = s * 60 + x
    return s

print("| shape | type | bpw | file bytes | t=1 prefill tok/s | t=1 decode tok/s | t=2 prefill tok/s | "
      "t=2 decode tok/s | roofline fraction (t=2 decode) | compile time | compile peak RSS | runtime peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
isas = set()
for line in open(rows):
    shape, recipe, wall, rss_kb, prefix = line.rstrip("\n").split("\t")
    r1, r2 = load(prefix, 1), load(prefix, 2)
    med = lambda runs, key: statistics.median(mean_of(x, key) for x in runs)
    bpw = r1[0]["bpw"]
    nbytes = r1[0]["artifact_bytes"]
    roof = statistics.median(float(x["roofline_fraction"]) for x in r2)
    rt_rss = max(int(x["peak_rss_bytes"]) for x in r1 + r2)
    rt_base = min(int(x["rss_before_load_bytes"]) for x in r1 + r2)
    isas.add(r1[0]["isa"])
    print(f"| {shape} | {recipe} | {bpw:.3f} | {nbytes:,} | {med(r1, 'prefill_tps'):.1f} | {med(r1, 'decode_tps'):.2f} | "
          f"{med(r2, 'prefill_tps'):.1f} | {med(r2, 'decode_tps'):.2f} | {roof:.2f} | {secs(wall):.1f} s | "
          f"{int(rss_kb) / 1e6:.2f} GB | {rt_rss / 1e6:,.0f} MB (+{(rt_rss - rt_base) / 1e6:,.0f}) |")
print()
print(f"Median of {passes} `kerf bench --repeat 3` runs per cell (prompt 128 tokens, 64 decoded); "
      f"{ncpu} CPUs; kernels: {', '.join(sorted(isas))}; compile under /usr/bin/time -v. Runtime peak RSS is the "
      f"`kerf bench` process's (LibTorch-linked: ~160 MB before loading), in parentheses what loading and running "
      f"added. Load average (1, 5, 15 min) before the run {load0}, at its end {load1} (the bench itself adds "
      f"up to 2): more means other processes shared the cores.")
PY
echo "runtime-bench: table written to $out_md" >&2
