// The .kerf v1 artifact writer. See writer.h and formats/SPEC.md.
#include "formats/artifact/writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>

#include "kerf/xxh64.h"

namespace kerf::artifact {
namespace {

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

template <typename T>
void put(std::vector<uint8_t>& out, const T& v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}
void put_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
  const size_t at = out.size();
  out.resize(at + n);
  if (n) std::memcpy(out.data() + at, p, n);
}
void pad_to(std::vector<uint8_t>& out, uint64_t a) { out.resize(align_up(out.size(), a), 0); }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
std::string op_label(const OpRecord& op, size_t i) {
  const char* n = fmt::op_name(op.op);
  return "op #" + std::to_string(i) + " '" + op.name + "' (" + (n ? n : "?") + ")";
}
bool known_dtype(fmt::DType t) {
  switch (t) {
    case fmt::DType::kF32: case fmt::DType::kF16: case fmt::DType::kBF16: case fmt::DType::kI32:
    case fmt::DType::kI64: case fmt::DType::kQ8Sym: case fmt::DType::kQ4Asym: case fmt::DType::kQSym:
    case fmt::DType::kQAsym: case fmt::DType::kTernary: case fmt::DType::kBinary: return true;
  }
  return false;
}

/// Deduplicating string pool.
struct StringPool {
  std::vector<uint8_t> bytes;
  std::map<std::string, uint32_t> at;
  bool ok = true;
  void add(const std::string& s, uint32_t* off, uint32_t* size) {
    auto it = at.find(s);
    if (it == at.end()) {
      if (bytes.size() + s.size() > UINT32_MAX) { ok = false; *off = *size = 0; return; }
      it = at.emplace(s, uint32_t(bytes.size())).first;
      put_bytes(bytes, s.data(), s.size());
    }
    *off = it->second;
    *size = uint32_t(s.size());
  }
};

}  // namespace

// ------------------------------------------------------------------------------------ records

fmt::OpAttr attr_int(fmt::AttrKey key, int64_t v) {
  fmt::OpAttr a;
  std::memset(&a, 0, sizeof a);
  a.key = uint32_t(key);
  a.kind = 0;
  a.i = v;
  return a;
}
fmt::OpAttr attr_float(fmt::AttrKey key, double v) {
  fmt::OpAttr a;
  std::memset(&a, 0, sizeof a);
  a.key = uint32_t(key);
  a.kind = 1;
  a.f = v;
  return a;
}

TensorRecord TensorRecord::from_f32(std::string name, std::vector<int64_t> shape, const std::vector<float>& v) {
  TensorRecord t{std::move(name), fmt::DType::kF32, std::move(shape), 0, {}};
  t.payload.resize(v.size() * 4);
  if (!v.empty()) std::memcpy(t.payload.data(), v.data(), v.size() * 4);
  return t;
}
TensorRecord TensorRecord::from_f16(std::string name, std::vector<int64_t> shape, const std::vector<float>& v) {
  TensorRecord t{std::move(name), fmt::DType::kF16, std::move(shape), 0, {}};
  t.payload.resize(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = fmt::f32_to_f16(v[i]);
    std::memcpy(t.payload.data() + 2 * i, &h, 2);
  }
  return t;
}

// ------------------------------------------------------------------------------------ builder

void ArtifactBuilder::add_meta_int(const std::string& key, int64_t v) {
  MetaValue m;
  m.type = fmt::MetaType::kInt;
  m.i = v;
  meta_[key] = std::move(m);
}
void ArtifactBuilder::add_meta_float(const std::string& key, double v) {
  MetaValue m;
  m.type = fmt::MetaType::kFloat;
  m.f = v;
  meta_[key] = std::move(m);
}
void ArtifactBuilder::add_meta_string(const std::string& key, std::string v) {
  MetaValue m;
  m.type = fmt::MetaType::kString;
  m.str = std::move(v);
  meta_[key] = std::move(m);
}
void ArtifactBuilder::add_meta_bytes(const std::string& key, std::vector<uint8_t> v) {
  MetaValue m;
  m.type = fmt::MetaType::kBytes;
  m.str.assign(v.begin(), v.end());
  meta_[key] = std::move(m);
}
uint32_t ArtifactBuilder::add_tensor(TensorRecord t) {
  tensors_.push_back(std::move(t));
  return uint32_t(tensors_.size() - 1);
}
uint32_t ArtifactBuilder::add_value(ValueRecord v) {
  values_.push_back(std::move(v));
  return uint32_t(values_.size() - 1);
}
void ArtifactBuilder::add_op(OpRecord op) { ops_.push_back(std::move(op)); }
void ArtifactBuilder::set_io(uint32_t input_value, uint32_t output_value) {
  input_value_ = input_value;
  output_value_ = output_value;
}

std::string ArtifactBuilder::validate() const {
  for (const auto& [key, v] : meta_) {
    if (key.empty() || key.size() > 256) return "metadata key '" + key + "' must be 1..256 bytes";
    if (v.type == fmt::MetaType::kString && v.str.size() > UINT32_MAX)
      return "metadata '" + key + "': string longer than 4 GiB";
  }
  if (tensors_.size() >= fmt::kRefTensorBit) return "too many tensors";
  if (values_.size() >= fmt::kRefTensorBit) return "too many values";
  std::map<std::string, size_t> names;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorRecord& t = tensors_[i];
    const std::string label = "tensor #" + std::to_string(i) + " '" + t.name + "'";
    if (t.name.empty()) return label + ": empty name";
    if (!names.emplace(t.name, i).second)
      return label + ": duplicate name (also tensor #" + std::to_string(names[t.name]) + ")";
    if (!known_dtype(t.dtype)) return label + ": unknown dtype " + std::to_string(uint32_t(t.dtype));
    if (const char* why = fmt::qflags_problem(t.dtype, t.flags)) {
      char hex[16];
      std::snprintf(hex, sizeof hex, "0x%08x", unsigned(t.flags));
      return label + ": invalid flags " + hex + " for dtype " + fmt::dtype_name(t.dtype) + ": " + why;
    }
    uint64_t want = 0;
    if (t.shape.size() > fmt::kMaxRank ||
        !fmt::tensor_payload_bytes(t.dtype, uint32_t(t.shape.size()), t.shape.data(), t.group_size, &want, t.flags))
      return label + ": invalid " + fmt::dtype_name(t.dtype) + " shape " + shape_str(t.shape) + " with group_size " +
             std::to_string(t.group_size) + " (rank 1..4, dims >= 1; quantized: rank 2 and group >= 1; plain: group 0)";
    if (t.payload.size() != want) {
      char prec[64];
      fmt::describe_qtype(t.dtype, t.flags, t.group_size, prec, sizeof prec);
      return label + " (" + prec + " " + shape_str(t.shape) + "): payload is " + std::to_string(t.payload.size()) +
             " bytes, expected " + std::to_string(want);
    }
  }
  for (size_t i = 0; i < values_.size(); ++i)
    if (values_[i].width < 1) return "value #" + std::to_string(i) + " '" + values_[i].name + "': width must be >= 1";
  if (input_value_ >= values_.size() || output_value_ >= values_.size())
    return "program input/output value not set or out of range (set_io; " + std::to_string(values_.size()) +
           " values)";
  for (size_t i = 0; i < ops_.size(); ++i) {
    const OpRecord& op = ops_[i];
    const std::string label = op_label(op, i);
    const char* kinds = fmt::op_input_kinds(op.op);
    if (!kinds) return label + ": unknown op code " + std::to_string(uint32_t(op.op));
    if (uint32_t(op.backend) >= fmt::kBackendCount) return label + ": unknown backend " + std::to_string(uint32_t(op.backend));
    if (op.inputs.size() != std::strlen(kinds))
      return label + ": has " + std::to_string(op.inputs.size()) + " inputs, expected " +
             std::to_string(std::strlen(kinds));
    for (size_t k = 0; k < op.inputs.size(); ++k) {
      const uint32_t ref = op.inputs[k];
      const bool is_tensor = (ref & fmt::kRefTensorBit) != 0;
      const uint32_t idx = ref & ~fmt::kRefTensorBit;
      if (is_tensor != (kinds[k] == 't'))
        return label + ": input " + std::to_string(k) + " must be a " + (kinds[k] == 't' ? "tensor" : "value");
      if (is_tensor && idx >= tensors_.size())
        return label + ": input " + std::to_string(k) + " refers to tensor " + std::to_string(idx) + " but there are " +
               std::to_string(tensors_.size()) + " tensors";
      if (!is_tensor && idx >= values_.size())
        return label + ": input " + std::to_string(k) + " refers to value " + std::to_string(idx) + " but there are " +
               std::to_string(values_.size()) + " values";
    }
    if (op.outputs.size() != 1) return label + ": must have exactly 1 output";
    if (op.outputs[0] >= values_.size())
      return label + ": output refers to value " + std::to_string(op.outputs[0]) + " but there are " +
             std::to_string(values_.size()) + " values";
    for (const fmt::OpAttr& a : op.attrs) {
      const char* an = fmt::attr_name(fmt::AttrKey(a.key));
      if (!an) return label + ": unknown attribute key " + std::to_string(a.key);
      if (a.kind != fmt::attr_kind(fmt::AttrKey(a.key)))
        return label + ": attribute " + an + " must be " + (a.kind ? "an int" : "a float");
    }
  }
  return "";
}

std::vector<uint8_t> ArtifactBuilder::serialize(std::string* err) const {
  std::string e = validate();
  if (!e.empty()) {
    if (err) *err = e;
    return {};
  }
  try {
    StringPool pool;
    // Metadata (sorted by key: std::map order).
    std::vector<uint8_t> meta;
    put(meta, uint32_t(meta_.size()));
    for (const auto& [key, v] : meta_) {
      put(meta, uint32_t(key.size()));
      put_bytes(meta, key.data(), key.size());
      put(meta, uint8_t(v.type));
      switch (v.type) {
        case fmt::MetaType::kInt: put(meta, v.i); break;
        case fmt::MetaType::kFloat: put(meta, v.f); break;
        case fmt::MetaType::kString: put(meta, uint32_t(v.str.size())); put_bytes(meta, v.str.data(), v.str.size()); break;
        case fmt::MetaType::kBytes: put(meta, uint64_t(v.str.size())); put_bytes(meta, v.str.data(), v.str.size()); break;
      }
    }
    // Tensor table and data layout.
    std::vector<fmt::TensorEntry> entries(tensors_.size());
    uint64_t data_size = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorRecord& t = tensors_[i];
      fmt::TensorEntry& te = entries[i];
      std::memset(&te, 0, sizeof te);
      pool.add(t.name, &te.name_offset, &te.name_size);
      te.dtype = uint32_t(t.dtype);
      te.rank = uint32_t(t.shape.size());
      for (size_t d = 0; d < t.shape.size(); ++d) te.shape[d] = t.shape[d];
      te.group_size = t.group_size;
      te.flags = t.flags;
      te.offset = align_up(data_size, fmt::kTensorAlign);
      te.size = t.payload.size();
      te.hash = xxh64(t.payload.data(), t.payload.size());
      data_size = te.offset + te.size;
    }
    // Program.
    std::vector<uint8_t> prog;
    fmt::ProgramHeader ph{uint32_t(values_.size()), uint32_t(ops_.size()), input_value_, output_value_};
    put(prog, ph);
    for (const ValueRecord& v : values_) {
      fmt::ValueEntry ve{0, 0, v.width, 0};
      pool.add(v.name, &ve.name_offset, &ve.name_size);
      put(prog, ve);
    }
    for (const OpRecord& op : ops_) {
      fmt::OpEntry oe{uint32_t(op.op), uint32_t(op.backend), uint32_t(op.inputs.size()), uint32_t(op.outputs.size()),
                      uint32_t(op.attrs.size()), 0, 0, 0};
      pool.add(op.name, &oe.name_offset, &oe.name_size);
      put(prog, oe);
      for (uint32_t r : op.inputs) put(prog, r);
      for (uint32_t r : op.outputs) put(prog, r);
      for (const fmt::OpAttr& a : op.attrs) {
        fmt::OpAttr z;
        std::memset(&z, 0, sizeof z);  // canonical bytes whatever the caller left in the union
        z.key = a.key;
        z.kind = a.kind;
        if (a.kind == 0) z.i = a.i; else z.f = a.f;
        put(prog, z);
      }
    }
    if (!pool.ok) {
      if (err) *err = "string pool exceeds 4 GiB";
      return {};
    }
    // Assemble.
    fmt::FileHeader h;
    std::memset(&h, 0, sizeof h);
    std::memcpy(h.magic, fmt::kMagic, 8);
    h.version_major = fmt::kVersionMajor;
    h.version_minor = fmt::kVersionMinor;
    h.header_size = sizeof(fmt::FileHeader);
    std::vector<uint8_t> out(sizeof(fmt::FileHeader), 0);
    pad_to(out, 8);
    h.meta_offset = out.size();
    h.meta_size = meta.size();
    put_bytes(out, meta.data(), meta.size());
    pad_to(out, 8);
    h.strings_offset = out.size();
    h.strings_size = pool.bytes.size();
    put_bytes(out, pool.bytes.data(), pool.bytes.size());
    pad_to(out, 8);
    h.tensors_offset = out.size();
    h.tensor_count = uint32_t(entries.size());
    h.tensor_entry_size = sizeof(fmt::TensorEntry);
    put_bytes(out, entries.data(), entries.size() * sizeof(fmt::TensorEntry));
    pad_to(out, 8);
    h.program_offset = out.size();
    h.program_size = prog.size();
    put_bytes(out, prog.data(), prog.size());
    pad_to(out, fmt::kDataAlign);
    h.data_offset = out.size();
    h.data_size = data_size;
    h.sections_hash = xxh64(out.data() + h.header_size, out.size() - h.header_size);
    out.resize(h.data_offset + data_size, 0);
    for (size_t i = 0; i < tensors_.size(); ++i)
      if (!tensors_[i].payload.empty())
        std::memcpy(out.data() + h.data_offset + entries[i].offset, tensors_[i].payload.data(), tensors_[i].payload.size());
    h.file_size = out.size();
    h.header_hash = 0;
    h.header_hash = xxh64(&h, sizeof h);
    std::memcpy(out.data(), &h, sizeof h);
    return out;
  } catch (const std::bad_alloc&) {
    if (err) *err = "out of memory while serializing the artifact";
    return {};
  }
}

std::string write_file_atomic(const std::string& path, const void* data, size_t n) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string tmpl = path + ".tmp.XXXXXX";
  std::vector<char> tmp(tmpl.begin(), tmpl.end());
  tmp.push_back('\0');
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return path + ": cannot create temporary file: " + std::strerror(errno);
  const std::string tmp_path(tmp.data());
  auto fail = [&](const char* what) {
    const std::string msg = path + ": " + what + ": " + std::strerror(errno);
    ::close(fd);
    ::unlink(tmp_path.c_str());
    return msg;
  };
  size_t done = 0;
  while (done < n) {
    const ssize_t w = ::write(fd, static_cast<const uint8_t*>(data) + done, n - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    done += size_t(w);
  }
  if (::fchmod(fd, 0644) != 0) return fail("fchmod");
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) {
    const std::string msg = path + ": close: " + std::strerror(errno);
    ::unlink(tmp_path.c_str());
    return msg;
  }
  if (::rename(tmp_path.c_str(), path.c_str()) != 0) {
    const std::string msg = path + ": rename: " + std::strerror(errno);
    ::unlink(tmp_path.c_str());
    return msg;
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: the file itself is already durable and in place
    ::close(dfd);
  }
  return "";
}


std::string ArtifactBuilder::write(const std::string& path) const {
  std::string err;
  const std::vector<uint8_t> bytes = serialize(&err);
  if (!err.empty()) return path + ": " + err;
  return write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace kerf::artifact
