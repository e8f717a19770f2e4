#!/usr/bin/env bash
# Builds kerf's libFuzzer targets with ASan + UBSan (clang, -DKERF_FUZZ=ON -DKERF_SANITIZE=ON, in
# build-fuzz/), seeds their corpora from ../shared/models, replays every committed regression input
# (fuzz/regressions/<target>/) and the malformed-input corpus (tests/data/bad/), then fuzzes each
# target for --seconds. Any crash, leak, sanitizer report, timeout or over-limit allocation fails the
# script and leaves the input in build-fuzz/crashes/ (add it to fuzz/regressions/ with the fix).
# The sanitized build's runtime test suite (kerf_runtime_tests) runs too unless --no-tests.
#
# Usage: scripts/fuzz.sh [--seconds N] [--targets "onnx artifact ..."] [--jobs J] [--no-tests]
#   --seconds N   fuzzing time per target (default 60; CI uses 30, the nightly run 3600)
#   --targets     subset of: onnx torchscript artifact tokenizer (default: all four)
#   --jobs J      targets fuzzed at the same time (default: the number of cores)
#   KERF_HOST_BUILD  the regular build whose `kerf` compiles the artifact seeds (default: build)
#   KERF_FUZZ_BUILD  the fuzz build directory (default: build-fuzz)
#   KERF_SOURCE_DIR  the repository, when running a copy of this script (bash reads a script as it
#                    runs: copy it before a long run if you may edit it meanwhile)
# Prints one line per target: executions, seconds, corpus size, and the libFuzzer coverage figures.
set -euo pipefail
here="${KERF_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"  # set when running a copy of this script
seconds=60
targets="onnx torchscript artifact tokenizer"
jobs="$(nproc)"
run_tests=1
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --no-tests) run_tests=0; shift ;;
    *) echo "fuzz.sh: unknown argument '$1' (see the usage at the top of scripts/fuzz.sh)" >&2; exit 2 ;;
  esac
done
host_build="${KERF_HOST_BUILD:-$here/build}"
fbuild="${KERF_FUZZ_BUILD:-$here/build-fuzz}"
case "$host_build" in /*) ;; *) host_build="$here/$host_build" ;; esac
case "$fbuild" in /*) ;; *) fbuild="$here/$fbuild" ;; esac
shared="$here/../shared/models/stories260K"
fail() { echo "fuzz.sh: FAILED: $*" >&2; exit 1; }
command -v clang++ >/dev/null || fail "clang++ not found (bash scripts/install-deps.sh installs clang libclang-rt-14-dev)"
[ -d "$shared" ] || fail "$shared not found (../shared beside the repository)"

# ---- build
cmake -S "$here" -B "$fbuild" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKERF_FUZZ=ON -DKERF_SANITIZE=ON >/dev/null
fuzzers=()
for t in $targets; do
  case "$t" in onnx|torchscript|artifact|tokenizer) fuzzers+=("fuzz_$t") ;;
    *) fail "unknown target '$t' (onnx torchscript artifact tokenizer)" ;; esac
done
build_targets=("${fuzzers[@]}")
[ "$run_tests" = 1 ] && build_targets+=(kerf_runtime_tests)
cmake --build "$fbuild" -j"$(nproc)" --target "${build_targets[@]}"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$here/fuzz/lsan.supp:print_suppressions=0"
# libgomp / LibTorch threads: one is plenty for a fuzzer.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive

# LeakSanitizer stops the world with ptrace-like calls, which some containers forbid; it then dies
# with "LeakSanitizer has encountered a fatal error" after every run. Say so and go on without leak
# checks rather than fail on every input (ASan and UBSan are unaffected).
probe="$("$fbuild/${fuzzers[0]}" -runs=0 2>&1 || true)"
if grep -q "LeakSanitizer has encountered a fatal error" <<<"$probe"; then
  echo "fuzz.sh: WARNING: LeakSanitizer cannot run in this environment (ptrace restricted): leak checks are OFF" >&2
  export ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}"
fi

# ---- the sanitized runtime test suite
if [ "$run_tests" = 1 ]; then
  echo "fuzz.sh: kerf_runtime_tests under ASan + UBSan"
  (cd "$fbuild" && ./kerf_runtime_tests) || fail "kerf_runtime_tests under ASan + UBSan"
fi

# ---- seed corpora (inputs the targets accept, so mutations start deep)
seeds="$fbuild/seeds"
mkdir -p "$fbuild/crashes"
for t in $targets; do rm -rf "${seeds:?}/$t"; mkdir -p "$seeds/$t"; done
# ONNX: the three stories260K exports, plus the small malformed models (fast inputs near error paths)
[ -d "$seeds/onnx" ] && cp "$shared"/*.onnx "$here"/tests/data/bad/*.onnx "$seeds/onnx/"
[ -d "$seeds/torchscript" ] && cp "$shared"/*.pt "$seeds/torchscript/"
# vocabulary size 512 as two little-endian bytes, then the tokenizer file (fuzz/fuzz_tokenizer.cpp)
[ -d "$seeds/tokenizer" ] && { printf '\000\002'; cat "$shared/tok512.bin"; } > "$seeds/tokenizer/tok512"
if [[ " $targets " == *" artifact "* ]]; then
  [ -x "$host_build/kerf" ] || fail "$host_build/kerf not built (the artifact seeds are compiled with it; set KERF_HOST_BUILD)"
  # RTN INT4, and every generic quantized dtype (fuzz/seed-mixed.yaml), each in the tiled (host) and
  # plain (generic) layouts: four artifacts of 120-240 KB, compiled in well under a second each.
  for target in host generic; do
    for recipe in "" "$here/fuzz/seed-mixed.yaml"; do
      out="$seeds/artifact/stories260K-$target${recipe:+-mixed}.kerf"
      "$host_build/kerf" compile "$shared/stories260K.fp16.onnx" --target "$target" ${recipe:+--recipe "$recipe"} \
        -q --threads 1 -o "$out" >/dev/null || fail "compiling the artifact seed $out"
      rm -f "${out%.kerf}.manifest.json"
    done
  done
fi

# ---- replay: committed regressions (every crash ever found) and the malformed-input corpus
for f in "${fuzzers[@]}"; do
  t="${f#fuzz_}"
  replay=()
  shopt -s nullglob
  replay+=("$here/fuzz/regressions/$t"/*)
  shopt -u nullglob
  [ "$t" = onnx ] && replay+=("$here"/tests/data/bad/*.onnx)
  if [ ${#replay[@]} -gt 0 ]; then
    "$fbuild/$f" -rss_limit_mb=2048 -timeout=60 "${replay[@]}" >"$fbuild/$f.replay.log" 2>&1 \
      || { tail -40 "$fbuild/$f.replay.log" >&2; fail "$f on a regression / corpus input"; }
    echo "fuzz.sh: $f replayed ${#replay[@]} regression and corpus inputs: no crash"
  fi
done

# ---- fuzz
run_one() {
  local f="$1" t="${1#fuzz_}"
  mkdir -p "$fbuild/corpus/$t"
  local TIMEFORMAT='%U %S'  # CPU seconds (user, system) of the fuzzer, into $f.cpu
  # libFuzzer caps inputs at 1 MiB by default; the seeds (1.3 MB ONNX, 1.1 MB TorchScript) must fit whole.
  local max_len
  max_len="$(find "$seeds/$t" -type f -printf '%s\n' | sort -n | tail -1)"
  max_len=$(( ${max_len:-0} > 4096 ? max_len : 4096 ))
  { time "$fbuild/$f" -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=30 \
      -print_final_stats=1 -artifact_prefix="$fbuild/crashes/$t-" \
      "$fbuild/corpus/$t" "$seeds/$t" >"$fbuild/$f.log" 2>&1; } 2>"$fbuild/$f.cpu"
}
pids=()
names=()
status=0
for f in "${fuzzers[@]}"; do
  run_one "$f" & pids+=($!); names+=("$f")
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || { status=1; echo "fuzz.sh: ${names[0]} FAILED (log: $fbuild/${names[0]}.log)" >&2; tail -60 "$fbuild/${names[0]}.log" >&2; }
    pids=("${pids[@]:1}"); names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=1; echo "fuzz.sh: ${names[$i]} FAILED (log: $fbuild/${names[$i]}.log)" >&2; tail -60 "$fbuild/${names[$i]}.log" >&2; }
done
for f in "${fuzzers[@]}"; do
  log="$fbuild/$f.log"
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  cov="$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || true)"
  cpu="$(awk '{printf "%.0f", $1 + $2}' "$fbuild/$f.cpu" 2>/dev/null || echo '?')"
  echo "fuzz.sh: $f: $runs executions in ${seconds} s (${cpu} s of CPU); $cov"
done
[ "$status" = 0 ] || fail "a fuzzer found a crash (inputs in $fbuild/crashes/)"
echo "fuzz.sh: all targets clean"
