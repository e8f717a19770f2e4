// libFuzzer target: the TorchScript importer (torch::jit::load, then kerf's graph walk) on arbitrary
// bytes written to a private temporary file, then the canonicalize pipeline on what imports.
// A TorchScript file is a zip of stored (uncompressed) records whose CRC-32s LibTorch checks, so a
// mutation inside a record would almost always stop at "crc32 mismatch". The harness therefore
// re-computes the CRC-32 of every stored record (local header and central directory) before
// loading, and mutations reach the unpickler, the TorchScript compiler and kerf's graph walk.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "formats/torchscript/torchscript_import.h"
#include "fuzz/importer_common.h"

namespace {

uint32_t crc32(const uint8_t* p, size_t n) {
  static uint32_t table[256];
  static const bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)init;
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}
uint32_t rd32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }
uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
void wr32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}

/// Re-computes the CRC-32 of each stored zip record: local headers in file order (sizes from the
/// header; records past the end are left alone), then the central directory entries that point at them.
void refix_zip_crcs(std::vector<uint8_t>& z) {
  std::vector<std::pair<uint32_t, uint32_t>> fixed;  // local header offset -> crc
  const size_t n = z.size();
  for (size_t at = 0; at + 30 <= n;) {
    if (rd32(&z[at]) != 0x04034b50u) break;
    const uint16_t method = rd16(&z[at + 8]);
    const uint64_t csize = rd32(&z[at + 18]);
    const uint64_t data = at + 30 + uint64_t(rd16(&z[at + 26])) + rd16(&z[at + 28]);
    if (data > n || csize > n - data) break;
    if (method == 0) {
      const uint32_t c = crc32(&z[data], size_t(csize));
      wr32(&z[at + 14], c);
      fixed.emplace_back(uint32_t(at), c);
    }
    at = size_t(data + csize);
  }
  for (size_t at = 0; at + 46 <= n; ++at) {
    if (rd32(&z[at]) != 0x02014b50u) continue;
    const uint32_t local = rd32(&z[at + 42]);
    for (const auto& [off, c] : fixed)
      if (off == local) wr32(&z[at + 16], c);
  }
}

const std::string& scratch_file() {
  static const std::string path = [] {
    char tmpl[] = "/tmp/kerf_fuzz_ts_XXXXXX";
    const int fd = ::mkstemp(tmpl);
    if (fd >= 0) ::close(fd);
    return std::string(tmpl) + "";
  }();
  return path;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_file();
  std::vector<uint8_t> z(data, data + size);
  refix_zip_crcs(z);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();  // the harness itself is broken, not the input
  if (size && std::fwrite(z.data(), 1, size, f) != size) std::abort();
  std::fclose(f);
  kerf::Result<kerf::ir::Graph> g = kerf::import_torchscript(path);
  kerf::fuzz::canonicalize_imported(g);
  return 0;
}
