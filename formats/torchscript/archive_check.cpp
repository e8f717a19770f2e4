#include "formats/torchscript/archive_check.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace kerf::torchscript {
namespace {

uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t rd32(const uint8_t* p) { return uint32_t(rd16(p)) | uint32_t(rd16(p + 2)) << 16; }
uint64_t rd64(const uint8_t* p) { return uint64_t(rd32(p)) | uint64_t(rd32(p + 4)) << 32; }

constexpr uint32_t kEocd = 0x06054b50u, kZip64Locator = 0x07064b50u, kZip64Eocd = 0x06064b50u,
                   kCentral = 0x02014b50u, kLocal = 0x04034b50u;

/// a + b <= limit without overflow.
bool fits(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

}  // namespace

Result<std::vector<ZipRecord>> read_zip_directory(const uint8_t* data, size_t size, const std::string& name) {
  auto bad = [&](const std::string& m) { return BadInput(name + ": " + m); };
  // End of central directory: 22 bytes plus a comment of up to 65535, searched from the end.
  if (size < 22) return bad("not a zip archive (" + std::to_string(size) + " bytes)");
  size_t eocd = SIZE_MAX;
  const size_t lowest = size >= 22 + 65535 ? size - 22 - 65535 : 0;
  for (size_t at = size - 22 + 1; at-- > lowest;)
    if (rd32(data + at) == kEocd) {
      eocd = at;
      break;
    }
  if (eocd == SIZE_MAX) return bad("no zip end-of-central-directory record");
  uint64_t count = rd16(data + eocd + 10), cd_size = rd32(data + eocd + 12), cd_offset = rd32(data + eocd + 16);
  if (eocd >= 20 && rd32(data + eocd - 20) == kZip64Locator) {
    const uint64_t z64 = rd64(data + eocd - 20 + 8);
    if (!fits(z64, 56, size) || rd32(data + z64) != kZip64Eocd)
      return bad("zip64 end-of-central-directory record at byte " + std::to_string(z64) + " is outside the file");
    count = rd64(data + z64 + 32);
    cd_size = rd64(data + z64 + 40);
    cd_offset = rd64(data + z64 + 48);
  }
  if (!fits(cd_offset, cd_size, size))
    return bad("central directory [byte " + std::to_string(cd_offset) + ", " + std::to_string(cd_size) +
               " bytes] is outside the " + std::to_string(size) + "-byte file");
  if (count > cd_size / 46) return bad("central directory claims " + std::to_string(count) + " records in " +
                                       std::to_string(cd_size) + " bytes");
  std::vector<ZipRecord> out;
  out.reserve(size_t(count));
  uint64_t at = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    const std::string where = "central directory record #" + std::to_string(i) + " at byte " + std::to_string(at);
    if (!fits(at, 46, cd_end) || rd32(data + at) != kCentral) return bad(where + ": bad signature or truncated");
    const uint8_t* c = data + at;
    ZipRecord r;
    r.method = rd16(c + 10);
    r.compressed_size = rd32(c + 20);
    r.uncompressed_size = rd32(c + 24);
    const uint64_t name_len = rd16(c + 28), extra_len = rd16(c + 30), comment_len = rd16(c + 32);
    uint64_t local = rd32(c + 42);
    if (!fits(at + 46, name_len + extra_len + comment_len, cd_end)) return bad(where + ": name or extra field truncated");
    r.name.assign(reinterpret_cast<const char*>(c + 46), size_t(name_len));
    // ZIP64 extended information (APPNOTE 4.5.3): the fields that are 0xFFFFFFFF above, in order.
    for (uint64_t e = 0; e + 4 <= extra_len;) {
      const uint8_t* x = c + 46 + name_len + e;
      const uint16_t id = rd16(x), len = rd16(x + 2);
      if (e + 4 + len > extra_len) return bad(where + " ('" + r.name + "'): extra field truncated");
      if (id == 0x0001) {
        uint64_t k = 4;
        auto take = [&](uint64_t* v) {
          if (*v == 0xFFFFFFFFu && k + 8 <= 4u + len) {
            *v = rd64(x + k);
            k += 8;
          }
        };
        take(&r.uncompressed_size);
        take(&r.compressed_size);
        take(&local);
      }
      e += 4 + len;
    }
    if (!fits(local, 30, size) || rd32(data + local) != kLocal)
      return bad(where + " ('" + r.name + "'): local header at byte " + std::to_string(local) + " is missing");
    r.data_offset = local + 30 + rd16(data + local + 26) + rd16(data + local + 28);
    if (!fits(r.data_offset, r.compressed_size, size))
      return bad("record '" + r.name + "' [byte " + std::to_string(r.data_offset) + ", " +
                 std::to_string(r.compressed_size) + " bytes] runs past the end of the " + std::to_string(size) +
                 "-byte file");
    if (r.method == 0 && r.uncompressed_size != r.compressed_size)
      return bad("stored record '" + r.name + "' claims " + std::to_string(r.uncompressed_size) + " bytes but holds " +
                 std::to_string(r.compressed_size));
    out.push_back(std::move(r));
    at += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

Status check_pickle_lengths(const uint8_t* p, size_t n, const std::string& what) {
  size_t at = 0;
  // Fixed-size arguments of the opcodes torch's pickler emits (pickletools, protocol 2-5).
  auto fixed = [](uint8_t op) -> int {
    switch (op) {
      case 0x80: return 1;  // PROTO
      case 'K': case 'q': case 'h': return 1;  // BININT1, BINPUT, BINGET
      case 'M': return 2;  // BININT2
      case 'J': case 'r': case 'j': return 4;  // BININT, LONG_BINPUT, LONG_BINGET
      case 'G': return 8;  // BINFLOAT
      case '(': case 't': case ')': case '}': case ']': case 'u': case 's': case 'e': case 'a': case 'R': case 'b':
      case 'Q': case 0x85: case 0x86: case 0x87: case 0x88: case 0x89: case 'N': case 0x94: case 'l': case 'd':
      case 0x81: case '0': case '1': case '2': case 0x93:
        return 0;
      default: return -1;
    }
  };
  while (at < n) {
    const uint8_t op = p[at];
    const size_t op_at = at++;
    const size_t left = n - at;
    auto too_long = [&](uint64_t len) {
      return BadInput(what + ": pickle opcode 0x" + [&] {
        char b[8];
        std::snprintf(b, sizeof b, "%02x", op);
        return std::string(b);
      }() + " at byte " + std::to_string(op_at) + " claims " + std::to_string(len) + " bytes but only " +
                      std::to_string(left) + " remain");
    };
    if (op == '.') return Status::Ok();  // STOP
    if (const int k = fixed(op); k >= 0) {
      if (size_t(k) > left) return too_long(uint64_t(k));
      at += size_t(k);
      continue;
    }
    uint64_t len = 0;
    size_t hdr = 0;
    switch (op) {
      case 0x8c: case 'C': case 'U': case 0x8a: hdr = 1; break;  // SHORT_BINUNICODE, SHORT_BINBYTES, SHORT_BINSTRING, LONG1
      case 'X': case 'B': case 'T': case 0x8b: hdr = 4; break;     // BINUNICODE, BINBYTES, BINSTRING, LONG4
      case 0x8d: case 0x8e: case 0x95: hdr = 8; break;             // BINUNICODE8, BINBYTES8, FRAME
      case 'c': {                                                  // GLOBAL: "module\nname\n"
        for (int lines = 0; lines < 2; ++lines) {
          const void* nl = std::memchr(p + at, '\n', n - at);
          if (!nl) return BadInput(what + ": pickle GLOBAL at byte " + std::to_string(op_at) + " is not terminated");
          at = size_t(static_cast<const uint8_t*>(nl) - p) + 1;
        }
        continue;
      }
      default: return Status::Ok();  // an opcode this walker does not know: LibTorch decides
    }
    if (hdr > left) return too_long(hdr);
    len = hdr == 1 ? p[at] : hdr == 4 ? rd32(p + at) : rd64(p + at);
    if ((op == 'T' || op == 0x8b) && (len & 0x80000000u)) return too_long(len);  // negative i32 length
    at += hdr;
    if (op == 0x95) continue;  // FRAME: its length is a hint covering the following opcodes
    if (len > n - at) return too_long(len);
    at += size_t(len);
  }
  return Status::Ok();
}

Status check_torchscript_archive(const uint8_t* data, size_t size, const std::string& name) {
  KERF_ASSIGN_OR_RETURN(std::vector<ZipRecord> records, read_zip_directory(data, size, name));
  for (const ZipRecord& r : records) {
    const bool pickle = r.name.size() > 4 && r.name.compare(r.name.size() - 4, 4, ".pkl") == 0;
    if (!pickle || r.method != 0) continue;
    KERF_RETURN_IF_ERROR(check_pickle_lengths(data + r.data_offset, size_t(r.compressed_size),
                                              name + ": record '" + r.name + "'"));
  }
  return Status::Ok();
}

}  // namespace kerf::torchscript
