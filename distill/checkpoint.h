// kerf distill: training checkpoints (save / resume a distillation run).
//
// A checkpoint is a set of free-form key/value strings (step, RNG state as text, the pruning plan,
// options, ...) plus an ordered list of named float32 tensors (weights, optimizer moments). It is
// written atomically and read back bit-exactly (NaN payloads and -0.0 included). Standard library
// only: tensors are passed as float vectors, so the header is torch-free.
//
// File format (version 1; every integer little-endian, no padding, no alignment):
//
//   offset  size  field
//   0       8     magic "KERFCKPT"
//   8       4     u32 version = 1
//   12      8     u64 payload length P (the file is exactly 28 + P bytes)
//   20      8     u64 XXH64 (seed 0, runtime-lite/include/kerf/xxh64.h) of the P payload bytes
//   28      P     payload:
//                   u32 meta count M
//                   M x { u32 key length, key bytes, u32 value length, value bytes }
//                       (keys unique, written in std::map order)
//                   u32 tensor count N
//                   N x { u32 name length, name bytes, u32 ndim, ndim x i64 dims (each >= 0),
//                         prod(dims) x f32 data }   (ndim 0 = a scalar: one element)
//
// Tensor names are unique within a checkpoint. The payload must be consumed exactly (no trailing
// bytes). The reader validates every count, length and shape product against the bytes that remain
// before it allocates anything, so a corrupt or hostile file is rejected, never a huge allocation.
// Memory: load holds the payload plus the decoded tensors (about twice the file size) at its peak.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compiler/ir/status.h"

namespace kerf::distill {

inline constexpr char kCheckpointMagic[8] = {'K', 'E', 'R', 'F', 'C', 'K', 'P', 'T'};
inline constexpr uint32_t kCheckpointVersion = 1;
inline constexpr size_t kCheckpointHeaderBytes = 28;

struct CheckpointTensor {
  std::string name;
  std::vector<int64_t> shape;  ///< empty = a 0-d scalar (one element)
  std::vector<float> data;     ///< row-major, prod(shape) elements
};

struct Checkpoint {
  std::map<std::string, std::string> meta;  ///< free-form key/values (step, rng state text, plan text, options...)
  std::vector<CheckpointTensor> tensors;     ///< in order

  /// The tensor named `name`, or nullptr.
  const CheckpointTensor* find(const std::string& name) const;
  CheckpointTensor* find(const std::string& name);
};

/// Writes `ck` atomically: to "PATH.tmp-<pid>", fsync, rename over PATH, fsync of the directory.
/// On any error the temporary file is removed and PATH is untouched (absent, or the old file intact).
/// Errors: InvalidArgument (a tensor whose data size is not the product of its shape, a negative
/// dim, a duplicate tensor name, a string longer than 4 GiB - 1); IoError naming the path and the
/// system error for anything the file system refuses.
Status save_checkpoint(const std::string& path, const Checkpoint& ck);

/// Reads and validates a checkpoint (magic, version, payload length against the file size, XXH64
/// of the payload, then every count / length / shape product against the remaining bytes before
/// allocating). Errors: IoError (cannot open or read the file); BadInput naming the path and what
/// is wrong (truncated, bad magic, unsupported version, checksum mismatch, shape/size mismatch,
/// duplicate key or name, trailing bytes), with the payload offset where it applies.
Result<Checkpoint> load_checkpoint(const std::string& path);

}  // namespace kerf::distill
