#!/usr/bin/env bash
# runtime-lite on 64-bit Arm: cross-builds the runtime (-DKERF_RUNTIME_ONLY=ON, toolchain
# cmake/aarch64-linux-gnu.cmake: Debian's g++-aarch64-linux-gnu) and runs it under
# qemu-aarch64-static with `-cpu max` (an Armv8.x+ CPU with dotprod / i8mm):
#   1. the runtime test suite (kerf_runtime_tests) once per instruction set, KERF_ISA=neondot, scalar,
#      neon: every ISA must exist in the build and pass (an ISA the build lacks fails); the
#      ISA-independent [qkernels] cases (every ISA against the scalar reference) run only once;
#   2. end to end: stories260K compiled by the x86 `kerf` for --target arm64-neon-dotprod,snapdragon-8-gen3
#      (two packages, one run), then greedy generation (--temp 0) of a fixed prompt by the aarch64
#      kerf-run (each ISA) and by the x86 kerf-run on the same artifact: the texts must be identical;
#      the snapdragon package (its ops on the integer-only NPU path) likewise on x86 and aarch64.
# Usage: scripts/test-aarch64.sh
#   KERF_HOST_BUILD     x86 build with `kerf` and `kerf-run` (default: build)
#   KERF_AARCH64_BUILD  the cross build directory (default: build-aarch64)
# Called by scripts/test.sh after CTest. Needs g++-aarch64-linux-gnu and qemu-user-static
# (scripts/install-deps.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
host_build="${KERF_HOST_BUILD:-$here/build}"
xbuild="${KERF_AARCH64_BUILD:-$here/build-aarch64}"
case "$host_build" in /*) ;; *) host_build="$here/$host_build" ;; esac
case "$xbuild" in /*) ;; *) xbuild="$here/$xbuild" ;; esac

fail() { echo "test-aarch64: FAILED: $*" >&2; exit 1; }
for tool in aarch64-linux-gnu-g++ qemu-aarch64-static; do
  command -v "$tool" >/dev/null || fail "$tool not found (bash scripts/install-deps.sh installs g++-aarch64-linux-gnu qemu-user-static)"
done
for bin in kerf kerf-run; do
  [ -x "$host_build/$bin" ] || fail "$host_build/$bin not built (the x86 build; set KERF_HOST_BUILD)"
done
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu max)
isas=(scalar neon neondot)
t_start=$SECONDS

echo "== aarch64 cross build ($xbuild)"
cmake -S "$here" -B "$xbuild" -DKERF_RUNTIME_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$here/cmake/aarch64-linux-gnu.cmake" >/dev/null
cmake --build "$xbuild" -j2 --target kerf_runtime_tests kerf-run
# ELF e_machine (offset 18, little endian) must be EM_AARCH64 = 183.
machine="$(od -An -tu2 -j18 -N2 "$xbuild/kerf-run" | tr -d ' ')"
[ "$machine" = 183 ] || fail "$xbuild/kerf-run is not an aarch64 ELF binary (e_machine $machine, expected 183)"
t_build=$SECONDS

# 1. The runtime suite, once per ISA. KERF_ISA naming an ISA the build or the (emulated) CPU lacks
#    makes every model-level test fail (kerf_model_open refuses it), so a missing NEON / dotprod path
#    cannot pass by skipping. The [qkernels] tests compare every ISA the build has with the scalar
#    reference whatever KERF_ISA says (~47 s under qemu), so they run once, with the first ISA;
#    the other ISAs run the rest of the suite (executor, sessions, loader, ... through KERF_ISA).
#    Measured under qemu on the 2-core CI machine: ~65 s with [qkernels], ~18 s without.
first=1
for isa in neondot scalar neon; do
  filter=()
  [ $first = 1 ] || filter=("~[qkernels]~[npu]~[.]")  # ISA-independent ([npu] ~29 s under qemu): once; ~[.] keeps hidden cases out
  echo "== kerf_runtime_tests ${filter[*]:-(all)}, KERF_ISA=$isa (qemu-aarch64 -cpu max)"
  t0=$SECONDS
  KERF_ISA=$isa "${qemu[@]}" "$xbuild/kerf_runtime_tests" "${filter[@]}" \
    || fail "kerf_runtime_tests ${filter[*]:-} with KERF_ISA=$isa"
  echo "   ($((SECONDS - t0)) s)"
  first=0
done

# 2. End to end: the same artifact, the same greedy text on x86 and on aarch64 (every ISA).
work="$(mktemp -d "${TMPDIR:-/tmp}/kerf-aarch64.XXXXXX")"
trap 'rm -rf "$work"' EXIT
art="$work/pk/arm64-neon-dotprod.kerf"
soc="$work/pk/snapdragon-8-gen3.kerf"
prompt="Once upon a time, there was a little girl named Lily."
ntok=48
calib="${KERF_SHARED_DIR:-$here/../shared}/text/tinystories_valid_800.txt"
echo "== e2e: kerf compile stories260K --target arm64-neon-dotprod,snapdragon-8-gen3 (int4-rtn.yaml; one run, two packages)"
OMP_WAIT_POLICY=passive "$host_build/kerf" compile "$here/examples/stories260K/stories260K.fp16.onnx" \
  --target arm64-neon-dotprod,snapdragon-8-gen3 -o "$work/pk" --recipe "$here/examples/recipes/int4-rtn.yaml" \
  --calib "$calib" -q >"$work/compile.log" 2>&1 \
  || { cat "$work/compile.log" >&2; fail "kerf compile --target arm64-neon-dotprod,snapdragon-8-gen3"; }
gen_args=("$art" --prompt "$prompt" -n "$ntok" --temp 0 --seed 1)
"$host_build/kerf-run" "${gen_args[@]}" >"$work/x86.txt" || fail "x86 kerf-run"
[ -s "$work/x86.txt" ] || fail "x86 kerf-run printed nothing"
echo "   x86-64 kerf-run: $(tr '\n' ' ' <"$work/x86.txt")"
for isa in "${isas[@]}"; do
  KERF_ISA=$isa "${qemu[@]}" "$xbuild/kerf-run" "${gen_args[@]}" --stats >"$work/arm.$isa.txt" 2>"$work/arm.$isa.err" \
    || { cat "$work/arm.$isa.err" >&2; fail "aarch64 kerf-run with KERF_ISA=$isa"; }
  grep -q "^kernels: $isa," "$work/arm.$isa.err" \
    || { cat "$work/arm.$isa.err" >&2; fail "aarch64 kerf-run --stats does not report 'kernels: $isa' under KERF_ISA=$isa"; }
  if ! cmp -s "$work/x86.txt" "$work/arm.$isa.txt"; then
    diff "$work/x86.txt" "$work/arm.$isa.txt" >&2 || true
    fail "aarch64 kerf-run (KERF_ISA=$isa) generated other text than x86-64 kerf-run on the same artifact"
  fi
  echo "   aarch64 KERF_ISA=$isa: identical ($ntok tokens, greedy)"
done
# The SoC package runs its prefill and decode on the integer-only NPU path (bit-exact by
# construction, docs/npu-arithmetic.md): the same text on x86-64 and on aarch64.
soc_args=("$soc" --prompt "$prompt" -n "$ntok" --temp 0 --seed 1)
"$host_build/kerf-run" "${soc_args[@]}" --stats >"$work/soc.x86.txt" 2>"$work/soc.x86.err" \
  || { cat "$work/soc.x86.err" >&2; fail "x86 kerf-run of the snapdragon-8-gen3 package"; }
grep -q "^unit npu" "$work/soc.x86.err" || { cat "$work/soc.x86.err" >&2; fail "the snapdragon-8-gen3 package ran no op on the npu"; }
KERF_ISA=neondot "${qemu[@]}" "$xbuild/kerf-run" "${soc_args[@]}" >"$work/soc.arm.txt" 2>"$work/soc.arm.err" \
  || { cat "$work/soc.arm.err" >&2; fail "aarch64 kerf-run of the snapdragon-8-gen3 package"; }
if ! cmp -s "$work/soc.x86.txt" "$work/soc.arm.txt"; then
  diff "$work/soc.x86.txt" "$work/soc.arm.txt" >&2 || true
  fail "the snapdragon-8-gen3 (npu) package generated other text on aarch64 than on x86-64"
fi
echo "   snapdragon-8-gen3 package (npu path): x86-64 and aarch64 identical ($ntok tokens, greedy)"
echo "test-aarch64: all passed (build $((t_build - t_start)) s, tests + e2e $((SECONDS - t_build)) s)"
