#!/usr/bin/env bash
# Renders a `kerf report` HTML page in headless Chromium as a person would see it, and checks it:
#   scripts/render-report.sh REPORT.html OUT.png
# 1. a 1280x4000 screenshot (OUT.png) with network access blocked (the page must be self-contained);
# 2. the DOM Chromium built (--dump-dom, written beside OUT.png as OUT.dom.html) holds every
#    section of the report (summary, verification, tensors, layers, curve, stages, placement,
#    baseline) and every inline SVG chart of the page;
# 3. the screenshot is a real rendering: a PNG that decodes (zlib + the PNG filters, in Python's
#    standard library: no PIL needed), 1280x4000 pixels, not blank (many distinct colours, and a
#    share of non-background pixels).
# Exits 0 when all hold; otherwise non-zero with a message naming what failed (2: usage, 3: no
# Chromium, 1: a check failed). Chromium: Debian's `chromium` (scripts/install-deps.sh installs it);
# $CHROMIUM overrides the binary.
set -euo pipefail

die() { echo "render-report: $*" >&2; exit "${2:-1}"; }

[ $# -eq 2 ] || die "usage: scripts/render-report.sh REPORT.html OUT.png" 2
html=$1
png=$2
[ -f "$html" ] || die "$html: no such file" 2

chrome=${CHROMIUM:-}
if [ -z "$chrome" ]; then
  for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then chrome=$(command -v "$c"); break; fi
  done
fi
[ -n "$chrome" ] || die "no Chromium found (install Debian's 'chromium': scripts/install-deps.sh, or set CHROMIUM)" 3

abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
dom=${png%.png}.dom.html
profile=$(mktemp -d "${TMPDIR:-/tmp}/render-report.XXXXXX")
trap 'rm -rf "$profile"' EXIT

# Every host resolves to nothing: a page that needs the network renders wrong here, not silently.
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --no-default-browser-check
       --disable-extensions --disable-background-networking --disable-sync --mute-audio
       "--host-resolver-rules=MAP * ~NOTFOUND" "--user-data-dir=$profile")

rm -f "$png" "$dom"
if ! timeout 120 "$chrome" "${flags[@]}" --window-size=1280,4000 --screenshot="$png" "file://$abs_html" \
     >"$profile/screenshot.log" 2>&1; then
  tail -n 20 "$profile/screenshot.log" >&2
  die "chromium --screenshot failed"
fi
[ -s "$png" ] || { tail -n 20 "$profile/screenshot.log" >&2; die "chromium wrote no screenshot to $png"; }

if ! timeout 120 "$chrome" "${flags[@]}" --dump-dom "file://$abs_html" >"$dom" 2>"$profile/dom.log"; then
  tail -n 20 "$profile/dom.log" >&2
  die "chromium --dump-dom failed"
fi

missing=()
for id in summary verification tensors layers curve stages placement baseline; do
  grep -q "<section id=\"$id\"" "$dom" || missing+=("$id")
done
[ ${#missing[@]} -eq 0 ] || die "the rendered DOM ($dom) lacks section(s): ${missing[*]}"
# Every inline SVG chart of the page survived parsing.
want_svg=$({ grep -o "<svg" "$html" || true; } | wc -l)
got_svg=$({ grep -o "<svg" "$dom" || true; } | wc -l)
[ "$got_svg" -eq "$want_svg" ] || die "the rendered DOM ($dom) holds $got_svg <svg> charts, the page $want_svg"

/usr/bin/python3 - "$png" <<'PY' || die "the screenshot $png is not a real rendering (see above)"
import struct, sys, zlib

path = sys.argv[1]
data = open(path, "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit("not a PNG file")
pos, idat, ihdr = 8, [], None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
        sys.exit("PNG chunk %r has a bad CRC" % kind)
    if kind == b"IHDR":
        ihdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat.append(body)
    elif kind == b"IEND":
        break
    pos += 12 + n
if ihdr is None:
    sys.exit("PNG without IHDR")
w, h, depth, ctype, _, _, interlace = ihdr
if (w, h) != (1280, 4000):
    sys.exit("screenshot is %dx%d, expected 1280x4000" % (w, h))
channels = {2: 3, 6: 4}.get(ctype)
if depth != 8 or channels is None or interlace != 0:
    sys.exit("unexpected PNG format (bit depth %d, colour type %d, interlace %d)" % (depth, ctype, interlace))
raw = zlib.decompress(b"".join(idat))
stride = w * channels
if len(raw) != h * (stride + 1):
    sys.exit("PNG image data has %d bytes, expected %d" % (len(raw), h * (stride + 1)))

# Undo the per-row filters (PNG spec 9.2); count colours on every 4th row.
colours, nonbg, sampled = {}, 0, 0
prev = bytearray(stride)
for y in range(h):
    f = raw[y * (stride + 1)]
    row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    if f == 1:
        for i in range(channels, stride):
            row[i] = (row[i] + row[i - channels]) & 255
    elif f == 2:
        row = bytearray((a + b) & 255 for a, b in zip(row, prev))
    elif f == 3:
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            row[i] = (row[i] + ((left + prev[i]) >> 1)) & 255
    elif f == 4:
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            row[i] = (row[i] + pred) & 255
    elif f != 0:
        sys.exit("bad PNG filter type %d in row %d" % (f, y))
    prev = row
    if y % 4 == 0:
        for x in range(0, stride, channels):
            px = bytes(row[x:x + 3])
            colours[px] = colours.get(px, 0) + 1
        sampled += w
bg, bg_count = max(colours.items(), key=lambda kv: kv[1])
share = 1.0 - bg_count / sampled
print("render-report: %dx%d PNG, %d distinct colours, %.1f %% of the sampled pixels differ from the background #%s"
      % (w, h, len(colours), 100 * share, bg.hex()))
if len(colours) < 16:
    sys.exit("only %d distinct colours: a blank or single-colour page" % len(colours))
if share < 0.02:
    sys.exit("only %.2f %% of the pixels differ from the background: nearly blank" % (100 * share))
PY
echo "render-report: OK: $png (DOM: $dom; all 8 sections and $got_svg SVG chart(s) present)"
