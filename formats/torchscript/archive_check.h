// Structural checks of a TorchScript archive BEFORE LibTorch reads it: the zip directory and every
// length field of the pickles inside. LibTorch 1.13 trusts them: its Unpickler reserves a string of
// the length a BINUNICODE opcode claims before reading it, so a 1 MB file could make it allocate
// gigabytes (found by fuzz_torchscript). No LibTorch dependency.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/ir/status.h"

namespace kerf::torchscript {

/// One record of a zip archive (PKWARE APPNOTE 6.3.x, section 4.3; ZIP64 sizes and offsets read
/// from the 0x0001 extra field). Offsets and sizes in bytes from the start of the file.
struct ZipRecord {
  std::string name;
  uint16_t method = 0;        ///< 0 = stored (what torch.jit.save writes), 8 = deflate
  uint64_t data_offset = 0;   ///< first byte of the record's (compressed) data
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
};

/// Reads the central directory of the zip bytes [data, data + size). Errors (kBadInput, naming
/// `display_name`, the record and the offset): no end-of-central-directory record, a directory or
/// local header outside the file, a record whose data runs past the end of the file.
Result<std::vector<ZipRecord>> read_zip_directory(const uint8_t* data, size_t size, const std::string& display_name);

/// Walks a pickle (protocols 2-5, the opcodes torch.save / torch.jit.save emit) and checks that
/// every length-prefixed argument (BINUNICODE, BINBYTES, BINSTRING, LONG1/4, FRAME, ...) fits in the
/// bytes that remain. Stops at STOP or at an opcode it does not know (LibTorch then decides).
/// kBadInput naming `what`, the opcode and its byte offset.
Status check_pickle_lengths(const uint8_t* data, size_t size, const std::string& what);

/// Both of the above on a whole archive: the directory, then every stored `*.pkl` record.
Status check_torchscript_archive(const uint8_t* data, size_t size, const std::string& display_name);

}  // namespace kerf::torchscript
