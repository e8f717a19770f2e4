#!/usr/bin/env bash
# Quantization wall time on the s15M shape (random weights; shared/models/README.md): GPTQ INT4 g32
# with calibration (layer by layer) and the 4.5-bpw mixed-precision allocation.
# Needs Debian's python3-torch and python3-onnx to make the model (not committed, as README says).
# Usage: bench/quant-time.sh [BUILD_DIR]   (writes into ${TMPDIR:-/tmp}/kerf-bench)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$here/build}"
shared="$here/../shared"
out="${TMPDIR:-/tmp}/kerf-bench"
mkdir -p "$out"
export OMP_WAIT_POLICY=passive
if [ ! -f "$out/s15M.fp16.onnx" ]; then
  /usr/bin/python3 "$shared/tools/export_llama.py" --synthetic 288,768,6,6,6,32000,256 --seed 0 \
    --out "$out/s15M" --only fp16 >/dev/null
fi
# A llama2.c tokenizer with 32000 pieces: the 512 real ones of tok512.bin, then filler pieces that
# never match (calibration text then tokenizes exactly as with tok512).
/usr/bin/python3 - "$shared/models/stories260K/tok512.bin" "$out/tok32000.bin" <<'PY'
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
text="$shared/text/tinystories_valid_800.txt"
echo "== s15M: INT4 GPTQ g32 (int4-gptq.yaml), calibration stories 0:128 capped at 32768 tokens"
/usr/bin/time -f "wall %e s, peak RSS %M KB" "$build/kerf" compile "$out/s15M.fp16.onnx" -o "$out/s15M.int4-gptq.kerf" \
  --tokenizer "$out/tok32000.bin" --recipe "$here/examples/recipes/int4-gptq.yaml" --calib "$text" --calib-tokens 32768 \
  --threads 2 -q | grep -E "quantization wall time|compile time|effective bits"
echo "== stories260K: INT4 GPTQ g32 (int4-gptq.yaml), calibration stories 0:128"
/usr/bin/time -f "wall %e s, peak RSS %M KB" "$build/kerf" compile "$here/examples/stories260K/stories260K.fp16.onnx" \
  -o "$out/stories260K.int4-gptq.kerf" --recipe "$here/examples/recipes/int4-gptq.yaml" --calib "$text" --threads 1 -q \
  | grep -E "quantization wall time|compile time|effective bits"
