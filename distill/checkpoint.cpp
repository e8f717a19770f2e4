// kerf distill: training checkpoints. See distill/checkpoint.h for the file format.
#include "distill/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>

#include "kerf/xxh64.h"

namespace kerf::distill {

static_assert(sizeof(float) == 4, "f32 checkpoints need a 4-byte float");

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

CheckpointTensor* Checkpoint::find(const std::string& name) {
  for (auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {

std::string sys_error() { return std::strerror(errno); }

// ------------------------------------------------------------------------------------ encoding

void put_u32(std::string& b, uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); }  // LE host
void put_u64(std::string& b, uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); }
void put_i64(std::string& b, int64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); }

Status put_str(std::string& b, const std::string& s, const std::string& what) {
  if (s.size() > std::numeric_limits<uint32_t>::max())
    return InvalidArgument(what + " is longer than 4 GiB - 1 bytes");
  put_u32(b, static_cast<uint32_t>(s.size()));
  b.append(s);
  return Status::Ok();
}

/// Element count of `shape`, or an error (negative dim, overflow).
Result<uint64_t> element_count(const std::vector<int64_t>& shape, const std::string& what) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgument(what + " has a negative dim " + std::to_string(d));
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
      return InvalidArgument(what + ": shape product overflows");
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

Result<std::string> encode_payload(const Checkpoint& ck) {
  // Size first, so the payload is allocated once.
  size_t bytes = 8;
  for (const auto& [k, v] : ck.meta) bytes += 8 + k.size() + v.size();
  std::set<std::string> names;
  for (const auto& t : ck.tensors) {
    const std::string what = "checkpoint tensor '" + t.name + "'";
    if (!names.insert(t.name).second) return InvalidArgument("duplicate " + what);
    KERF_ASSIGN_OR_RETURN(uint64_t n, element_count(t.shape, what));
    if (n != t.data.size())
      return InvalidArgument(what + " has shape " + shape_text(t.shape) + " (" + std::to_string(n) +
                             " elements) but " + std::to_string(t.data.size()) + " values");
    if (t.shape.size() > std::numeric_limits<uint32_t>::max()) return InvalidArgument(what + " has too many dims");
    bytes += 8 + t.name.size() + 8 * t.shape.size() + 4 * t.data.size();
  }
  if (ck.meta.size() > std::numeric_limits<uint32_t>::max() ||
      ck.tensors.size() > std::numeric_limits<uint32_t>::max())
    return InvalidArgument("checkpoint has more than 2^32 - 1 meta entries or tensors");

  std::string b;
  b.reserve(bytes);
  put_u32(b, static_cast<uint32_t>(ck.meta.size()));
  for (const auto& [k, v] : ck.meta) {
    KERF_RETURN_IF_ERROR(put_str(b, k, "checkpoint meta key"));
    KERF_RETURN_IF_ERROR(put_str(b, v, "checkpoint meta value of '" + k + "'"));
  }
  put_u32(b, static_cast<uint32_t>(ck.tensors.size()));
  for (const auto& t : ck.tensors) {
    KERF_RETURN_IF_ERROR(put_str(b, t.name, "checkpoint tensor name"));
    put_u32(b, static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) put_i64(b, d);
    b.append(reinterpret_cast<const char*>(t.data.data()), 4 * t.data.size());
  }
  return b;
}

// ------------------------------------------------------------------------------------ file I/O

/// Writes all of [p, p+n) to fd, retrying on EINTR and short writes.
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

/// Reads exactly n bytes; false on error or early EOF (errno = 0 for EOF).
bool read_all(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (r == 0) {
      errno = 0;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

/// Closes fd on scope exit unless released.
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// ------------------------------------------------------------------------------------ decoding

/// A bounds-checked little-endian reader over the payload.
class Reader {
 public:
  Reader(const std::string& path, const char* p, size_t n) : path_(path), p_(p), n_(n) {}
  size_t offset() const { return off_; }
  size_t remaining() const { return n_ - off_; }

  Status bad(const std::string& what) const {
    return BadInput("checkpoint '" + path_ + "': " + what + " (payload offset " + std::to_string(off_) + ")");
  }
  Status need(uint64_t bytes, const std::string& what) const {
    if (bytes > remaining())
      return bad("truncated: " + what + " needs " + std::to_string(bytes) + " bytes, " +
                 std::to_string(remaining()) + " remain");
    return Status::Ok();
  }
  Result<uint32_t> u32(const std::string& what) {
    KERF_RETURN_IF_ERROR(need(4, what));
    uint32_t v;
    std::memcpy(&v, p_ + off_, 4);
    off_ += 4;
    return v;
  }
  Result<int64_t> i64(const std::string& what) {
    KERF_RETURN_IF_ERROR(need(8, what));
    int64_t v;
    std::memcpy(&v, p_ + off_, 8);
    off_ += 8;
    return v;
  }
  Result<std::string> str(const std::string& what) {
    KERF_ASSIGN_OR_RETURN(uint32_t len, u32(what + " length"));
    KERF_RETURN_IF_ERROR(need(len, what));
    std::string s(p_ + off_, len);
    off_ += len;
    return s;
  }
  void copy(void* dst, size_t bytes) {  // caller checked need()
    if (bytes == 0) return;  // an empty tensor's data() may be null: memcpy(nullptr, .., 0) is UB
    std::memcpy(dst, p_ + off_, bytes);
    off_ += bytes;
  }

 private:
  const std::string& path_;
  const char* p_;
  size_t n_;
  size_t off_ = 0;
};

Result<Checkpoint> decode_payload(const std::string& path, const std::string& payload) {
  Reader r(path, payload.data(), payload.size());
  Checkpoint ck;
  KERF_ASSIGN_OR_RETURN(uint32_t n_meta, r.u32("meta count"));
  // Each entry is at least 8 bytes (two u32 lengths).
  if (uint64_t{n_meta} * 8 > r.remaining())
    return r.bad("meta count " + std::to_string(n_meta) + " does not fit in the " +
                 std::to_string(r.remaining()) + " remaining bytes");
  for (uint32_t i = 0; i < n_meta; ++i) {
    const std::string what = "meta entry " + std::to_string(i);
    KERF_ASSIGN_OR_RETURN(std::string key, r.str(what + " key"));
    KERF_ASSIGN_OR_RETURN(std::string value, r.str(what + " value"));
    if (!ck.meta.emplace(std::move(key), std::move(value)).second) return r.bad("duplicate " + what + " key");
  }
  KERF_ASSIGN_OR_RETURN(uint32_t n_tensors, r.u32("tensor count"));
  // Each tensor is at least 8 bytes (name length, ndim) plus 4 bytes of data.
  if (uint64_t{n_tensors} * 12 > r.remaining())
    return r.bad("tensor count " + std::to_string(n_tensors) + " does not fit in the " +
                 std::to_string(r.remaining()) + " remaining bytes");
  ck.tensors.reserve(n_tensors);
  std::set<std::string> names;
  for (uint32_t i = 0; i < n_tensors; ++i) {
    CheckpointTensor t;
    KERF_ASSIGN_OR_RETURN(t.name, r.str("tensor " + std::to_string(i) + " name"));
    const std::string what = "tensor " + std::to_string(i) + " '" + t.name + "'";
    if (!names.insert(t.name).second) return r.bad("duplicate " + what);
    KERF_ASSIGN_OR_RETURN(uint32_t ndim, r.u32(what + " ndim"));
    KERF_RETURN_IF_ERROR(r.need(uint64_t{ndim} * 8, what + " dims"));
    t.shape.resize(ndim);
    uint64_t count = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < ndim; ++d) {
      KERF_ASSIGN_OR_RETURN(t.shape[d], r.i64(what + " dim"));
      if (t.shape[d] < 0) return r.bad(what + " has a negative dim " + std::to_string(t.shape[d]));
      const uint64_t dim = static_cast<uint64_t>(t.shape[d]);
      if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / dim) overflow = true;
      else count *= dim;
    }
    // A product that overflows cannot be zero unless a dim is zero.
    if (overflow) {
      bool any_zero = false;
      for (int64_t d : t.shape) any_zero |= d == 0;
      if (!any_zero)
        return r.bad("shape/size mismatch: " + what + " shape " + shape_text(t.shape) + " overflows");
      count = 0;
    }
    if (count > r.remaining() / 4)
      return r.bad("shape/size mismatch: " + what + " shape " + shape_text(t.shape) + " needs " +
                   std::to_string(count) + " f32 values but only " + std::to_string(r.remaining()) +
                   " bytes remain");
    t.data.resize(static_cast<size_t>(count));
    r.copy(t.data.data(), 4 * static_cast<size_t>(count));
    ck.tensors.push_back(std::move(t));
  }
  if (r.remaining() != 0)
    return r.bad(std::to_string(r.remaining()) + " trailing bytes after the last tensor");
  return ck;
}

}  // namespace

// ------------------------------------------------------------------------------------ API

Status save_checkpoint(const std::string& path, const Checkpoint& ck) {
  if (path.empty()) return InvalidArgument("save_checkpoint: empty path");
  KERF_ASSIGN_OR_RETURN(std::string payload, encode_payload(ck));

  std::string header;
  header.append(kCheckpointMagic, 8);
  put_u32(header, kCheckpointVersion);
  put_u64(header, payload.size());
  put_u64(header, xxh64(payload.data(), payload.size()));

  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot create checkpoint '" + tmp + "' (for '" + path + "'): " + sys_error());
  auto fail = [&](const std::string& what) {
    std::string msg = what + " checkpoint '" + tmp + "' (for '" + path + "'): " + sys_error();
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return IoError(msg);
  };
  if (!write_all(fd, header.data(), header.size()) || !write_all(fd, payload.data(), payload.size()))
    return fail("cannot write");
  if (::fsync(fd) != 0) return fail("cannot fsync");
  const int rc = ::close(fd);
  fd = -1;
  if (rc != 0) return fail("cannot close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string msg = "cannot rename '" + tmp + "' to checkpoint '" + path + "': " + sys_error();
    ::unlink(tmp.c_str());
    return IoError(msg);
  }
  // Make the rename itself durable. Best effort: the file is complete either way.
  int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return Status::Ok();
}

Result<Checkpoint> load_checkpoint(const std::string& path) {
  FdGuard g;
  g.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (g.fd < 0) return IoError("cannot open checkpoint '" + path + "': " + sys_error());
  struct stat st;
  if (::fstat(g.fd, &st) != 0) return IoError("cannot stat checkpoint '" + path + "': " + sys_error());
  if (!S_ISREG(st.st_mode)) return IoError("checkpoint '" + path + "' is not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  const std::string where = "checkpoint '" + path + "'";

  if (file_size < kCheckpointHeaderBytes)
    return BadInput(where + ": truncated: " + std::to_string(file_size) + " bytes, shorter than the " +
                    std::to_string(kCheckpointHeaderBytes) + "-byte header");
  char header[kCheckpointHeaderBytes];
  if (!read_all(g.fd, header, sizeof header))
    return errno ? IoError("cannot read " + where + ": " + sys_error())
                 : BadInput(where + ": truncated header");
  if (std::memcmp(header, kCheckpointMagic, 8) != 0) return BadInput(where + ": bad magic (not a kerf checkpoint)");
  uint32_t version;
  uint64_t payload_len, checksum;
  std::memcpy(&version, header + 8, 4);
  std::memcpy(&payload_len, header + 12, 8);
  std::memcpy(&checksum, header + 20, 8);
  if (version != kCheckpointVersion)
    return BadInput(where + ": unsupported version " + std::to_string(version) + " (this build reads " +
                    std::to_string(kCheckpointVersion) + ")");
  const uint64_t body = file_size - kCheckpointHeaderBytes;
  if (payload_len > body)
    return BadInput(where + ": truncated: header says " + std::to_string(payload_len) +
                    " payload bytes, the file has " + std::to_string(body));
  if (payload_len < body)
    return BadInput(where + ": " + std::to_string(body - payload_len) + " trailing bytes after the " +
                    std::to_string(payload_len) + "-byte payload");

  std::string payload(static_cast<size_t>(payload_len), '\0');
  if (!read_all(g.fd, payload.data(), payload.size()))
    return errno ? IoError("cannot read " + where + ": " + sys_error())
                 : BadInput(where + ": truncated payload (file shrank while reading)");
  const uint64_t actual = xxh64(payload.data(), payload.size());
  if (actual != checksum) {
    char buf[80];
    std::snprintf(buf, sizeof buf, "stored %016llx, computed %016llx", static_cast<unsigned long long>(checksum),
                  static_cast<unsigned long long>(actual));
    return BadInput(where + ": checksum mismatch (" + buf + ")");
  }
  return decode_payload(path, payload);
}

}  // namespace kerf::distill
