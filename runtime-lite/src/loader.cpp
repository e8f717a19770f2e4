// Loader: maps a .kerf file read-only and validates everything (formats/SPEC.md section 8) before
// any of it is used. Every failure returns a status and a message naming the file, the section /
// tensor / op and the offset.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kerf/xxh64.h"
#include "model.h"
#include "util.h"

namespace kerf::rt {

std::string strf(const char* f, ...) {
  char buf[768];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

WeightView TensorInfo::view() const {
  WeightView w;
  w.dtype = dtype;
  w.data = data;
  w.rows = rank == 1 ? 1 : shape[0];
  w.cols = rank == 1 ? shape[0] : shape[1];
  w.group = group_size;
  w.flags = flags;
  return w;
}

FloatBuf::~FloatBuf() { std::free(p); }
bool FloatBuf::reserve(size_t count) {
  if (count <= n && p) return true;
  std::free(p);
  p = nullptr;
  n = 0;
  if (count == 0) count = 1;
  if (count > SIZE_MAX / sizeof(float)) return false;
  p = static_cast<float*>(std::malloc(count * sizeof(float)));
  if (!p) return false;
  n = count;
  return true;
}
bool FloatBuf::zeros(size_t count) {
  std::free(p);
  p = nullptr;
  n = 0;
  if (count == 0) count = 1;
  p = static_cast<float*>(std::calloc(count, sizeof(float)));
  if (!p) return false;
  n = count;
  return true;
}

namespace {

/// a + b <= limit without overflow.
bool fits(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

struct Loader {
  kerf_model* m;
  const char* path;
  std::string* err;
  uint64_t fsize;

  int fail(int status, const std::string& msg) {
    *err = std::string(path) + ": " + msg;
    return status;
  }
  std::string_view str(uint32_t off, uint32_t size, bool* ok) const {
    const fmt::FileHeader& h = m->header;
    if (!fits(off, size, h.strings_size)) { *ok = false; return {}; }
    *ok = true;
    return std::string_view(reinterpret_cast<const char*>(m->map + h.strings_offset + off), size);
  }

  int header();
  int sections();
  int metadata();
  int tensors(uint32_t flags);
  int program();
  int placement();
  int check_op(OpInfo& op, uint64_t file_off, std::vector<uint8_t>& defined);
};

int Loader::header() {
  const uint8_t* p = m->map;
  if (fsize < 8 || std::memcmp(p, fmt::kMagic, 8) != 0)
    return fail(KERF_ERR_FORMAT, strf("not a .kerf file (bad magic at offset 0; file is %llu bytes)",
                                      (unsigned long long)fsize));
  if (fsize < 16)
    return fail(KERF_ERR_CORRUPT, strf("file is %llu bytes, too small for a header (truncated?)", (unsigned long long)fsize));
  uint16_t major, minor;
  uint32_t header_size;
  std::memcpy(&major, p + 8, 2);
  std::memcpy(&minor, p + 10, 2);
  std::memcpy(&header_size, p + 12, 4);
  if (major != fmt::kVersionMajor)
    return fail(KERF_ERR_FORMAT, strf("format version %u.%u is %s than this runtime's %u.x: unsupported major version",
                                      major, minor, major > fmt::kVersionMajor ? "newer" : "older", fmt::kVersionMajor));
  if (header_size < sizeof(fmt::FileHeader) || header_size > 4096)
    return fail(KERF_ERR_CORRUPT, strf("header: header_size %u at offset 12 is outside [%zu, 4096]", header_size,
                                       sizeof(fmt::FileHeader)));
  if (header_size > fsize)
    return fail(KERF_ERR_CORRUPT, strf("file is %llu bytes but header_size is %u (truncated?)", (unsigned long long)fsize,
                                       header_size));
  uint8_t buf[4096];
  std::memcpy(buf, p, header_size);
  const size_t hh = offsetof(fmt::FileHeader, header_hash);
  uint64_t stored;
  std::memcpy(&stored, buf + hh, 8);
  std::memset(buf + hh, 0, 8);
  const uint64_t computed = xxh64(buf, header_size);
  if (stored != computed)
    return fail(KERF_ERR_CORRUPT, strf("checksum mismatch in header [offset 0, %u bytes] (header says 0x%016llx, computed "
                                       "0x%016llx)", header_size, (unsigned long long)stored, (unsigned long long)computed));
  std::memcpy(&m->header, p, sizeof(fmt::FileHeader));
  if (m->header.file_size != fsize)
    return fail(KERF_ERR_CORRUPT, strf("file is %llu bytes but header says %llu (truncated?)", (unsigned long long)fsize,
                                       (unsigned long long)m->header.file_size));
  return KERF_OK;
}

int Loader::sections() {
  const fmt::FileHeader& h = m->header;
  if (h.data_offset % fmt::kDataAlign != 0)
    return fail(KERF_ERR_CORRUPT, strf("data section offset %llu is not a multiple of %llu", (unsigned long long)h.data_offset,
                                       (unsigned long long)fmt::kDataAlign));
  if (h.data_offset < h.header_size || !fits(h.data_offset, h.data_size, fsize) || h.data_offset + h.data_size != fsize)
    return fail(KERF_ERR_CORRUPT, strf("data section [offset %llu, %llu bytes] does not end at the end of the file (%llu bytes)",
                                       (unsigned long long)h.data_offset, (unsigned long long)h.data_size,
                                       (unsigned long long)fsize));
  if (h.tensor_entry_size < sizeof(fmt::TensorEntry))
    return fail(KERF_ERR_CORRUPT, strf("header: tensor_entry_size %u < %zu", h.tensor_entry_size, sizeof(fmt::TensorEntry)));
  struct Sec { const char* name; uint64_t off, size; } secs[4] = {
      {"metadata", h.meta_offset, h.meta_size},
      {"string pool", h.strings_offset, h.strings_size},
      {"tensor table", h.tensors_offset, uint64_t(h.tensor_count) * h.tensor_entry_size},
      {"program", h.program_offset, h.program_size},
  };
  for (const Sec& s : secs)
    if (s.off < h.header_size || !fits(s.off, s.size, h.data_offset))
      return fail(KERF_ERR_CORRUPT, strf("%s section [offset %llu, %llu bytes] is outside [%u, %llu) (between header and data)",
                                         s.name, (unsigned long long)s.off, (unsigned long long)s.size, h.header_size,
                                         (unsigned long long)h.data_offset));
  for (int a = 0; a < 4; ++a)
    for (int b = a + 1; b < 4; ++b)
      if (secs[a].size && secs[b].size && secs[a].off < secs[b].off + secs[b].size && secs[b].off < secs[a].off + secs[a].size)
        return fail(KERF_ERR_CORRUPT, strf("%s section [offset %llu, %llu bytes] overlaps %s section [offset %llu, %llu bytes]",
                                           secs[a].name, (unsigned long long)secs[a].off, (unsigned long long)secs[a].size,
                                           secs[b].name, (unsigned long long)secs[b].off, (unsigned long long)secs[b].size));
  const uint64_t computed = xxh64(m->map + h.header_size, h.data_offset - h.header_size);
  if (computed != h.sections_hash)
    return fail(KERF_ERR_CORRUPT, strf("checksum mismatch in sections [offset %u, %llu bytes] (header says 0x%016llx, "
                                       "computed 0x%016llx)", h.header_size, (unsigned long long)(h.data_offset - h.header_size),
                                       (unsigned long long)h.sections_hash, (unsigned long long)computed));
  return KERF_OK;
}

int Loader::metadata() {
  const fmt::FileHeader& h = m->header;
  const uint8_t* base = m->map + h.meta_offset;
  const uint64_t size = h.meta_size;
  uint64_t at = 0;
  auto need = [&](uint64_t n) { return fits(at, n, size); };
  auto bad = [&](const char* what) {
    return fail(KERF_ERR_CORRUPT, strf("metadata: %s at offset %llu (section ends at %llu)", what,
                                       (unsigned long long)(h.meta_offset + at), (unsigned long long)(h.meta_offset + size)));
  };
  if (!need(4)) return bad("record count does not fit");
  uint32_t count;
  std::memcpy(&count, base, 4);
  at = 4;
  if (count > size / 6) return bad("record count too large for the section");
  m->meta.reserve(count);
  for (uint32_t r = 0; r < count; ++r) {
    MetaInfo mi;
    uint32_t ks;
    if (!need(4)) return bad("key size does not fit");
    std::memcpy(&ks, base + at, 4);
    at += 4;
    if (ks == 0 || ks > 256) return bad("key size not in 1..256");
    if (!need(ks)) return bad("key does not fit");
    mi.key = std::string_view(reinterpret_cast<const char*>(base + at), ks);
    at += ks;
    if (!need(1)) return bad("type does not fit");
    const uint8_t type = base[at++];
    mi.type = fmt::MetaType(type);
    switch (mi.type) {
      case fmt::MetaType::kInt:
        if (!need(8)) return bad("int value does not fit");
        std::memcpy(&mi.i, base + at, 8);
        at += 8;
        break;
      case fmt::MetaType::kFloat:
        if (!need(8)) return bad("float value does not fit");
        std::memcpy(&mi.f, base + at, 8);
        at += 8;
        break;
      case fmt::MetaType::kString: {
        uint32_t n;
        if (!need(4)) return bad("string size does not fit");
        std::memcpy(&n, base + at, 4);
        at += 4;
        if (!need(n)) return bad("string value does not fit");
        mi.data = reinterpret_cast<const char*>(base + at);
        mi.size = n;
        at += n;
        break;
      }
      case fmt::MetaType::kBytes: {
        uint64_t n;
        if (!need(8)) return bad("bytes size does not fit");
        std::memcpy(&n, base + at, 8);
        at += 8;
        if (!need(n)) return bad("bytes value does not fit");
        mi.data = reinterpret_cast<const char*>(base + at);
        mi.size = n;
        at += n;
        break;
      }
      default:
        return fail(KERF_ERR_CORRUPT, strf("metadata: key '%.*s' has unknown type %u at offset %llu", int(ks), mi.key.data(),
                                           type, (unsigned long long)(h.meta_offset + at - 1)));
    }
    m->meta.push_back(mi);
  }
  if (at != size) return bad("trailing bytes after the last record");
  std::vector<std::string_view> keys;
  for (const MetaInfo& mi : m->meta) keys.push_back(mi.key);
  std::sort(keys.begin(), keys.end());
  for (size_t i = 1; i < keys.size(); ++i)
    if (keys[i] == keys[i - 1])
      return fail(KERF_ERR_CORRUPT, strf("metadata: duplicate key '%.*s'", int(keys[i].size()), keys[i].data()));
  auto req_int = [&](const char* key, int* out) {
    const MetaInfo* mi = m->find_meta(key);
    if (!mi || mi->type != fmt::MetaType::kInt)
      return fail(KERF_ERR_CORRUPT, strf("metadata: required int key '%s' is missing", key));
    if (mi->i < 1 || mi->i > INT32_MAX)
      return fail(KERF_ERR_CORRUPT, strf("metadata: '%s' = %lld is out of range", key, (long long)mi->i));
    *out = int(mi->i);
    return int(KERF_OK);
  };
  int st = req_int(fmt::meta::kVocab, &m->vocab);
  if (st != KERF_OK) return st;
  return req_int(fmt::meta::kMaxSeq, &m->max_seq_len);
}

int Loader::tensors(uint32_t flags) {
  const fmt::FileHeader& h = m->header;
  m->tensors.resize(h.tensor_count);
  for (uint32_t i = 0; i < h.tensor_count; ++i) {
    const uint64_t eoff = h.tensors_offset + uint64_t(i) * h.tensor_entry_size;
    fmt::TensorEntry e;
    std::memcpy(&e, m->map + eoff, sizeof e);
    TensorInfo& t = m->tensors[i];
    bool ok;
    t.name = str(e.name_offset, e.name_size, &ok);
    if (!ok || e.name_size == 0)
      return fail(KERF_ERR_CORRUPT, strf("tensor table entry #%u at offset %llu: name [%u, %u bytes] is empty or outside the "
                                         "string pool (%llu bytes)", i, (unsigned long long)eoff, e.name_offset, e.name_size,
                                         (unsigned long long)h.strings_size));
    const int nl = int(t.name.size());
    const char* nm = t.name.data();
    t.dtype = fmt::DType(e.dtype);
    if (std::strcmp(fmt::dtype_name(t.dtype), "?") == 0)
      return fail(KERF_ERR_UNSUPPORTED, strf("tensor '%.*s' (#%u, table offset %llu): unknown dtype %u", nl, nm, i,
                                             (unsigned long long)eoff, e.dtype));
    t.rank = e.rank;
    bool dims_ok = e.rank >= 1 && e.rank <= fmt::kMaxRank;
    for (uint32_t d = 0; d < fmt::kMaxRank && dims_ok; ++d) {
      if (d < e.rank) t.shape[d] = e.shape[d];
      else if (e.shape[d] != 0) dims_ok = false;
    }
    if (const char* why = fmt::qflags_problem(t.dtype, e.flags)) {
      // An unknown scale format or layout may be a later minor version's addition: unsupported, not
      // corrupt.
      const bool unknown = fmt::dtype_is_generic_quant(t.dtype) &&
                           (uint32_t(fmt::qflags_scale(e.flags)) > 1u || uint32_t(fmt::qflags_layout(e.flags)) > 1u);
      return fail(unknown ? KERF_ERR_UNSUPPORTED : KERF_ERR_CORRUPT,
                  strf("tensor '%.*s' (#%u, table offset %llu): invalid flags 0x%08x for dtype %s: %s", nl, nm, i,
                       (unsigned long long)eoff, e.flags, fmt::dtype_name(t.dtype), why));
    }
    if (fmt::dtype_is_generic_quant(t.dtype) && fmt::qflags_layout(e.flags) == fmt::Layout::kTiled &&
        e.group_size % fmt::kTileBlock != 0)
      return fail(KERF_ERR_CORRUPT, strf("tensor '%.*s' (#%u, table offset %llu): group_size %u with the tiled layout "
                                         "(flags 0x%08x) must be a multiple of %u", nl, nm, i, (unsigned long long)eoff,
                                         e.group_size, e.flags, unsigned(fmt::kTileBlock)));
    uint64_t want = 0;
    if (!dims_ok || !fmt::tensor_payload_bytes(t.dtype, e.rank, e.shape, e.group_size, &want, e.flags))
      return fail(KERF_ERR_CORRUPT, strf("tensor '%.*s' (#%u, table offset %llu): invalid %s rank %u shape [%lld, %lld, %lld, "
                                         "%lld] group_size %u flags 0x%08x", nl, nm, i, (unsigned long long)eoff,
                                         fmt::dtype_name(t.dtype), e.rank, (long long)e.shape[0], (long long)e.shape[1],
                                         (long long)e.shape[2], (long long)e.shape[3], e.group_size, e.flags));
    t.group_size = e.group_size;
    t.flags = e.flags;
    t.offset = e.offset;
    t.size = e.size;
    t.hash = e.hash;
    if (e.size != want) {
      char prec[64];
      fmt::describe_qtype(t.dtype, e.flags, e.group_size, prec, sizeof prec);
      return fail(KERF_ERR_CORRUPT, strf("tensor '%.*s' (#%u): payload size %llu bytes does not match its precision "
                                         "%s and shape (expected %llu bytes)", nl, nm, i, (unsigned long long)e.size, prec,
                                         (unsigned long long)want));
    }
    if (e.offset % fmt::kTensorAlign != 0)
      return fail(KERF_ERR_CORRUPT, strf("tensor '%.*s' (#%u): payload offset %llu is not %llu-byte aligned", nl, nm, i,
                                         (unsigned long long)e.offset, (unsigned long long)fmt::kTensorAlign));
    if (!fits(e.offset, e.size, h.data_size))
      return fail(KERF_ERR_CORRUPT, strf("tensor '%.*s' payload [offset %llu, %llu bytes] exceeds data section (size %llu)", nl,
                                         nm, (unsigned long long)e.offset, (unsigned long long)e.size,
                                         (unsigned long long)h.data_size));
    t.data = m->map + h.data_offset + e.offset;
    if ((flags & KERF_OPEN_VERIFY_DATA) || !(flags & KERF_OPEN_NO_VERIFY_DATA)) {
      const uint64_t c = xxh64(t.data, t.size);
      if (c != t.hash)
        return fail(KERF_ERR_CORRUPT, strf("checksum mismatch in tensor '%.*s' payload [offset %llu, %llu bytes] (table says "
                                           "0x%016llx, computed 0x%016llx)", nl, nm, (unsigned long long)e.offset,
                                           (unsigned long long)e.size, (unsigned long long)t.hash, (unsigned long long)c));
    }
  }
  std::vector<std::string_view> names;
  for (const TensorInfo& t : m->tensors) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  for (size_t i = 1; i < names.size(); ++i)
    if (names[i] == names[i - 1])
      return fail(KERF_ERR_CORRUPT, strf("tensor table: duplicate tensor name '%.*s'", int(names[i].size()), names[i].data()));
  return KERF_OK;
}

int Loader::program() {
  const fmt::FileHeader& h = m->header;
  const uint8_t* base = m->map + h.program_offset;
  const uint64_t size = h.program_size;
  uint64_t at = 0;
  auto bad = [&](const std::string& what) {
    return fail(KERF_ERR_CORRUPT, strf("program: %s at offset %llu (section [offset %llu, %llu bytes])", what.c_str(),
                                       (unsigned long long)(h.program_offset + at), (unsigned long long)h.program_offset,
                                       (unsigned long long)size));
  };
  fmt::ProgramHeader ph;
  if (!fits(at, sizeof ph, size)) return bad("header does not fit");
  std::memcpy(&ph, base, sizeof ph);
  at += sizeof ph;
  if (ph.n_values > (size - at) / sizeof(fmt::ValueEntry)) return bad(strf("%u value entries do not fit", ph.n_values));
  if (ph.input_value >= ph.n_values || ph.output_value >= ph.n_values)
    return bad(strf("input value %u / output value %u out of range (%u values)", ph.input_value, ph.output_value, ph.n_values));
  m->values.resize(ph.n_values);
  for (uint32_t v = 0; v < ph.n_values; ++v) {
    fmt::ValueEntry ve;
    std::memcpy(&ve, base + at, sizeof ve);
    bool ok;
    m->values[v].name = str(ve.name_offset, ve.name_size, &ok);
    if (!ok) return bad(strf("value #%u name outside the string pool", v));
    if (ve.width < 1) return bad(strf("value #%u has width 0", v));
    m->values[v].width = ve.width;
    at += sizeof ve;
  }
  m->input_value = ph.input_value;
  m->output_value = ph.output_value;
  if (m->values[ph.input_value].width != 1) return bad("input value (token ids) must have width 1");
  if (m->values[ph.output_value].width != uint32_t(m->vocab))
    return bad(strf("output value width %u != model.vocab_size %d", m->values[ph.output_value].width, m->vocab));
  if (ph.n_ops > (size - at) / sizeof(fmt::OpEntry)) return bad(strf("%u ops do not fit", ph.n_ops));
  std::vector<uint8_t> defined(ph.n_values, 0);
  defined[ph.input_value] = 1;
  m->ops.resize(ph.n_ops);
  for (uint32_t i = 0; i < ph.n_ops; ++i) {
    const uint64_t op_off = h.program_offset + at;
    fmt::OpEntry oe;
    if (!fits(at, sizeof oe, size)) return bad(strf("op #%u does not fit", i));
    std::memcpy(&oe, base + at, sizeof oe);
    at += sizeof oe;
    const uint64_t rec = uint64_t(oe.n_inputs) * 4 + uint64_t(oe.n_outputs) * 4 + uint64_t(oe.n_attrs) * sizeof(fmt::OpAttr);
    if (!fits(at, rec, size)) return bad(strf("op #%u inputs/outputs/attrs (%u/%u/%u) do not fit", i, oe.n_inputs, oe.n_outputs, oe.n_attrs));
    OpInfo& op = m->ops[i];
    op.index = i;
    bool ok;
    op.name = str(oe.name_offset, oe.name_size, &ok);
    if (!ok) return bad(strf("op #%u name outside the string pool", i));
    op.op = fmt::OpCode(oe.op);
    const char* opn = fmt::op_name(op.op);
    const char* kinds = fmt::op_input_kinds(op.op);
    const int nl = int(op.name.size());
    if (!kinds)
      return fail(KERF_ERR_UNSUPPORTED, strf("op #%u '%.*s' at offset %llu: unknown op code %u", i, nl, op.name.data(),
                                             (unsigned long long)op_off, oe.op));
    if (oe.backend >= fmt::kBackendCount)
      return fail(KERF_ERR_UNSUPPORTED, strf("op #%u '%.*s' (%s) at offset %llu: unknown backend %u", i, nl,
                                             op.name.data(), opn, (unsigned long long)op_off, oe.backend));
    op.unit[0] = fmt::Backend(oe.backend);
    op.unit[1] = op.unit[0];
    if (oe.n_inputs != std::strlen(kinds) || oe.n_outputs != 1)
      return fail(KERF_ERR_CORRUPT, strf("op #%u '%.*s' (%s) at offset %llu: has %u inputs and %u outputs, expected %zu and 1",
                                         i, nl, op.name.data(), opn, (unsigned long long)op_off, oe.n_inputs, oe.n_outputs,
                                         std::strlen(kinds)));
    op.inputs.resize(oe.n_inputs);
    if (oe.n_inputs) std::memcpy(op.inputs.data(), base + at, 4 * size_t(oe.n_inputs));
    at += 4 * uint64_t(oe.n_inputs);
    std::memcpy(&op.output, base + at, 4);
    at += 4;
    // Attributes.
    uint32_t seen = 0;
    bool has_head_dim = false, has_heads = false, has_kv = false, has_scale = false;
    for (uint32_t a = 0; a < oe.n_attrs; ++a) {
      fmt::OpAttr attr;
      std::memcpy(&attr, base + at, sizeof attr);
      at += sizeof attr;
      const char* an = fmt::attr_name(fmt::AttrKey(attr.key));
      if (!an)
        return fail(KERF_ERR_UNSUPPORTED, strf("op #%u '%.*s' (%s) at offset %llu: unknown attribute key %u", i, nl,
                                               op.name.data(), opn, (unsigned long long)op_off, attr.key));
      const uint32_t bit = 1u << attr.key;
      if (seen & bit)
        return fail(KERF_ERR_CORRUPT, strf("op #%u '%.*s' (%s): attribute %s repeated", i, nl, op.name.data(), opn, an));
      seen |= bit;
      if (attr.kind != fmt::attr_kind(fmt::AttrKey(attr.key)))
        return fail(KERF_ERR_CORRUPT, strf("op #%u '%.*s' (%s): attribute %s has kind %u, expected %u", i, nl, op.name.data(),
                                           opn, an, attr.kind, fmt::attr_kind(fmt::AttrKey(attr.key))));
      bool allowed = false;
      switch (fmt::AttrKey(attr.key)) {
        case fmt::AttrKey::kEps: allowed = op.op == fmt::OpCode::kRMSNorm; op.eps = attr.f; break;
        case fmt::AttrKey::kTheta: allowed = op.op == fmt::OpCode::kRotary; op.theta = attr.f; break;
        case fmt::AttrKey::kInterleaved: allowed = op.op == fmt::OpCode::kRotary; op.interleaved = attr.i; break;
        case fmt::AttrKey::kHeadDim:
          allowed = op.op == fmt::OpCode::kRotary || op.op == fmt::OpCode::kAttention;
          op.head_dim = attr.i;
          has_head_dim = true;
          break;
        case fmt::AttrKey::kNHeads: allowed = op.op == fmt::OpCode::kAttention; op.n_heads = attr.i; has_heads = true; break;
        case fmt::AttrKey::kNKvHeads: allowed = op.op == fmt::OpCode::kAttention; op.n_kv_heads = attr.i; has_kv = true; break;
        case fmt::AttrKey::kScale: allowed = op.op == fmt::OpCode::kAttention; op.scale = attr.f; has_scale = true; break;
        case fmt::AttrKey::kCausal: allowed = op.op == fmt::OpCode::kAttention; op.causal = attr.i; break;
        case fmt::AttrKey::kActivation: allowed = op.op == fmt::OpCode::kGatedFFN; op.activation = attr.i; break;
      }
      if (!allowed)
        return fail(KERF_ERR_CORRUPT, strf("op #%u '%.*s' (%s): attribute %s does not apply to this op", i, nl, op.name.data(),
                                           opn, an));
    }
    if (op.op == fmt::OpCode::kRotary && !has_head_dim)
      return fail(KERF_ERR_CORRUPT, strf("op #%u '%.*s' (Rotary): required attribute head_dim missing", i, nl, op.name.data()));
    if (op.op == fmt::OpCode::kAttention && !(has_head_dim && has_heads && has_kv))
      return fail(KERF_ERR_CORRUPT, strf("op #%u '%.*s' (Attention): required attributes n_heads, n_kv_heads, head_dim missing",
                                         i, nl, op.name.data()));
    if (op.op == fmt::OpCode::kAttention && !has_scale && op.head_dim > 0) op.scale = 1.0 / std::sqrt(double(op.head_dim));
    const int st = check_op(op, op_off, defined);
    if (st != KERF_OK) return st;
  }
  if (at != size) return bad("trailing bytes after the last op");
  if (!defined[ph.output_value]) return bad(strf("output value %u is never written", ph.output_value));
  return placement();
}

// placement.prefill (SPEC section 7.3): one Backend byte per op for evaluations of T > 1 tokens (an
// Attention op on two units keeps a KV cache on each, backend.h).
int Loader::placement() {
  const MetaInfo* pm = m->find_meta(fmt::meta::kPlacementPrefill);
  if (pm) {
    if (pm->type != fmt::MetaType::kBytes || pm->size != m->ops.size())
      return fail(KERF_ERR_CORRUPT, strf("metadata '%s': must be %zu bytes (one per op)", fmt::meta::kPlacementPrefill,
                                         m->ops.size()));
    for (size_t i = 0; i < m->ops.size(); ++i) {
      OpInfo& op = m->ops[i];
      const uint8_t b = uint8_t(pm->data[i]);
      const int nl = int(op.name.size());
      if (b >= fmt::kBackendCount)
        return fail(KERF_ERR_CORRUPT, strf("metadata '%s': op #%zu '%.*s': unknown backend %u", fmt::meta::kPlacementPrefill,
                                           i, nl, op.name.data(), unsigned(b)));
      op.unit[1] = fmt::Backend(b);
    }
  }
  for (const OpInfo& op : m->ops)
    for (int ph = 0; ph < 2; ++ph)
      if (op.unit[ph] != fmt::Backend::kCpu) m->units_used |= 1u << uint32_t(op.unit[ph]);
  return KERF_OK;
}

// Shape / dtype / dataflow checks of one op (SPEC section 7 table).
int Loader::check_op(OpInfo& op, uint64_t op_off, std::vector<uint8_t>& defined) {
  const char* opn = fmt::op_name(op.op);
  const int nl = int(op.name.size());
  const std::string label = strf("op #%u '%.*s' (%s) at offset %llu", op.index, nl, op.name.data(), opn,
                                 (unsigned long long)op_off);
  auto corrupt = [&](const std::string& what) { return fail(KERF_ERR_CORRUPT, label + ": " + what); };
  const char* kinds = fmt::op_input_kinds(op.op);
  const uint32_t nv = uint32_t(m->values.size()), nt = uint32_t(m->tensors.size());
  for (size_t k = 0; k < op.inputs.size(); ++k) {
    const uint32_t ref = op.inputs[k];
    const uint32_t idx = ref & ~fmt::kRefTensorBit;
    const bool is_t = (ref & fmt::kRefTensorBit) != 0;
    if (is_t != (kinds[k] == 't')) return corrupt(strf("input %zu must be a %s ref", k, kinds[k] == 't' ? "tensor" : "value"));
    if (is_t && idx >= nt) return corrupt(strf("input %zu refers to tensor %u but there are %u tensors", k, idx, nt));
    if (!is_t) {
      if (idx >= nv) return corrupt(strf("input %zu refers to value %u but there are %u values", k, idx, nv));
      if (!defined[idx]) return corrupt(strf("input %zu reads value %u before it is written", k, idx));
      const bool want_tokens = op.op == fmt::OpCode::kEmbedding && k == 0;
      if ((idx == m->input_value) != want_tokens)
        return corrupt(want_tokens ? "Embedding must read the program input (token ids)"
                                   : "only Embedding may read the program input (token ids)");
    }
  }
  if (op.output >= nv) return corrupt(strf("output refers to value %u but there are %u values", op.output, nv));
  if (defined[op.output]) return corrupt(strf("output value %u is written twice (or is the program input)", op.output));
  defined[op.output] = 1;

  auto w = [&](size_t k) -> const TensorInfo& { return m->tensors[op.inputs[k] & ~fmt::kRefTensorBit]; };
  auto width = [&](size_t k) -> int64_t { return m->values[op.inputs[k]].width; };
  const int64_t out_w = m->values[op.output].width;
  auto matrix_dtype_ok = [](fmt::DType t) {  // plain float or any quantized dtype, plain or tiled layout
    return t == fmt::DType::kF32 || t == fmt::DType::kF16 || t == fmt::DType::kBF16 || fmt::dtype_is_quantized(t);
  };
  auto need_matrix = [&](size_t k, int64_t rows, int64_t cols, const char* role) -> int {
    const TensorInfo& t = w(k);
    if (!matrix_dtype_ok(t.dtype))
      return fail(KERF_ERR_UNSUPPORTED, label + strf(": %s tensor '%.*s' has unsupported dtype %s", role, int(t.name.size()),
                                                     t.name.data(), fmt::dtype_name(t.dtype)));
    if (t.rank != 2 || t.shape[0] != rows || t.shape[1] != cols)
      return corrupt(strf("%s tensor '%.*s' must be [%lld, %lld] (rank %u, shape [%lld, %lld])", role, int(t.name.size()),
                          t.name.data(), (long long)rows, (long long)cols, t.rank, (long long)t.shape[0],
                          (long long)(t.rank > 1 ? t.shape[1] : 0)));
    return KERF_OK;
  };
  switch (op.op) {
    case fmt::OpCode::kEmbedding:
      return need_matrix(1, m->vocab, out_w, "table");
    case fmt::OpCode::kRMSNorm: {
      const TensorInfo& t = w(1);
      if (t.dtype != fmt::DType::kF32 && t.dtype != fmt::DType::kF16 && t.dtype != fmt::DType::kBF16) {
        char prec[64];  // e.g. a quantized or tiled tensor: only Embedding, Linear and GatedFFN read those
        fmt::describe_qtype(t.dtype, t.flags, t.group_size, prec, sizeof prec);
        return fail(KERF_ERR_UNSUPPORTED, label + strf(": weight tensor '%.*s' has unsupported precision %s (f32, f16 or "
                                                       "bf16 only)", int(t.name.size()), t.name.data(), prec));
      }
      if (t.rank != 1 || t.shape[0] != width(0) || out_w != width(0))
        return corrupt(strf("weight must be [%lld] like the input and output widths", (long long)width(0)));
      if (!(op.eps > 0.0) || !std::isfinite(op.eps)) return corrupt("eps must be > 0");
      return KERF_OK;
    }
    case fmt::OpCode::kLinear:
      return need_matrix(1, out_w, width(0), "weight");
    case fmt::OpCode::kRotary:
      if (op.head_dim < 2 || op.head_dim % 2 != 0 || width(0) % op.head_dim != 0)
        return corrupt(strf("head_dim %lld must be even, >= 2 and divide the input width %lld", (long long)op.head_dim,
                            (long long)width(0)));
      if (out_w != width(0)) return corrupt("output width differs from input width");
      if (!(op.theta > 0.0) || !std::isfinite(op.theta)) return corrupt("theta must be > 0");
      if (op.interleaved != 0 && op.interleaved != 1)
        return fail(KERF_ERR_UNSUPPORTED, label + strf(": interleaved = %lld unsupported", (long long)op.interleaved));
      return KERF_OK;
    case fmt::OpCode::kAttention: {
      const int64_t H = op.n_heads, G = op.n_kv_heads, Dh = op.head_dim;
      if (H < 1 || G < 1 || Dh < 1 || H > 65536 || G > 65536 || Dh > 65536 || H % G != 0)
        return corrupt(strf("n_heads %lld, n_kv_heads %lld, head_dim %lld invalid (need >= 1 and n_heads %% n_kv_heads == 0)",
                            (long long)H, (long long)G, (long long)Dh));
      if (width(0) != H * Dh || width(1) != G * Dh || width(2) != G * Dh || out_w != H * Dh)
        return corrupt(strf("widths q %lld, k %lld, v %lld, out %lld do not match n_heads*head_dim %lld and "
                            "n_kv_heads*head_dim %lld", (long long)width(0), (long long)width(1), (long long)width(2),
                            (long long)out_w, (long long)(H * Dh), (long long)(G * Dh)));
      if (!std::isfinite(op.scale)) return corrupt("scale must be finite");
      if (op.causal != 0 && op.causal != 1)
        return fail(KERF_ERR_UNSUPPORTED, label + strf(": causal = %lld unsupported", (long long)op.causal));
      op.kv_slot = m->n_attention++;
      return KERF_OK;
    }
    case fmt::OpCode::kGatedFFN: {
      const int64_t D = width(0);
      if (w(1).rank != 2 || out_w != D) return corrupt("w1 must be [F, D] and output width D");
      const int64_t F = w(1).shape[0];
      int st = need_matrix(1, F, D, "w1");
      if (st == KERF_OK) st = need_matrix(2, F, D, "w3");
      if (st == KERF_OK) st = need_matrix(3, D, F, "w2");
      if (st != KERF_OK) return st;
      if (op.activation != 1)
        return fail(KERF_ERR_UNSUPPORTED, label + strf(": activation %lld unsupported (1 = silu)", (long long)op.activation));
      return KERF_OK;
    }
    case fmt::OpCode::kAdd:
      if (width(0) != width(1) || out_w != width(0))
        return corrupt(strf("widths %lld + %lld -> %lld differ", (long long)width(0), (long long)width(1), (long long)out_w));
      return KERF_OK;
  }
  return corrupt("unknown op");
}

}  // namespace

namespace {

/// Validates the bytes [map, map + fsize) into a new model (which takes over the mapping when
/// `owns_map`: unmapped by kerf_model_close, also on failure).
int load_bytes(const uint8_t* map, uint64_t fsize, bool owns_map, const char* path, uint32_t flags, kerf_model** out,
               std::string* err) {
  kerf_model* m = new (std::nothrow) kerf_model;
  if (!m) {
    if (owns_map) ::munmap(const_cast<uint8_t*>(map), size_t(fsize));
    *err = strf("%s: out of memory", path);
    return KERF_ERR_MEMORY;
  }
  m->path = path;
  m->map = map;
  m->map_size = size_t(fsize);
  m->owns_map = owns_map;
  Loader L{m, path, err, fsize};
  int rc = L.header();
  if (rc == KERF_OK) rc = L.sections();
  if (rc == KERF_OK) rc = L.metadata();
  if (rc == KERF_OK) rc = L.tensors(flags);
  if (rc == KERF_OK) rc = L.program();
  if (rc == KERF_OK) {
    const MetaInfo* bos = m->find_meta(fmt::meta::kTokBos);
    const MetaInfo* eos = m->find_meta(fmt::meta::kTokEos);
    if (bos && bos->type == fmt::MetaType::kInt) m->tok.bos = int32_t(bos->i);
    if (eos && eos->type == fmt::MetaType::kInt) m->tok.eos = int32_t(eos->i);
    if (bos && (bos->i < 0 || bos->i >= m->vocab)) rc = L.fail(KERF_ERR_CORRUPT, "metadata: tokenizer.bos_id out of range");
    if (eos && (eos->i < 0 || eos->i >= m->vocab)) rc = L.fail(KERF_ERR_CORRUPT, "metadata: tokenizer.eos_id out of range");
    const MetaInfo* tt = m->find_meta(fmt::meta::kTokType);
    const MetaInfo* tm = m->find_meta(fmt::meta::kTokModel);
    const bool llama2c = !tt || (tt->type == fmt::MetaType::kString && std::string_view(tt->data, tt->size) == "llama2c");
    if (rc == KERF_OK && tm && llama2c) {
      if (tm->type != fmt::MetaType::kBytes) {
        rc = L.fail(KERF_ERR_CORRUPT, "metadata: tokenizer.model must be bytes");
      } else {
        std::string terr;
        if (!parse_tokenizer(reinterpret_cast<const uint8_t*>(tm->data), tm->size, m->vocab, &m->tok, &terr))
          rc = L.fail(KERF_ERR_CORRUPT, "metadata 'tokenizer.model': " + terr);
      }
    }
  }
  if (rc != KERF_OK) {
    kerf_model_close(m);
    return rc;
  }
  for (const MetaInfo& mi : m->meta) m->meta_keys.emplace_back(mi.key);  // NUL-terminated copies
  for (const TensorInfo& t : m->tensors) {
    m->tensor_names.emplace_back(t.name);
    char prec[64];
    m->tensor_precisions.emplace_back(fmt::describe_qtype(t.dtype, t.flags, t.group_size, prec, sizeof prec));
  }
  *out = m;
  return KERF_OK;
}

}  // namespace

int load_model(const char* path, uint32_t flags, kerf_model** out, std::string* err) {
  *out = nullptr;
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = strf("%s: cannot open: %s", path, std::strerror(errno));
    return KERF_ERR_IO;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    *err = strf("%s: not a regular file", path);
    ::close(fd);
    return KERF_ERR_IO;
  }
  const uint64_t fsize = uint64_t(st.st_size);
  if (fsize < 8) {
    ::close(fd);
    *err = strf("%s: not a .kerf file (%llu bytes)", path, (unsigned long long)fsize);
    return KERF_ERR_FORMAT;
  }
  void* map = ::mmap(nullptr, size_t(fsize), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    *err = strf("%s: mmap failed: %s", path, std::strerror(errno));
    return KERF_ERR_IO;
  }
  return load_bytes(static_cast<const uint8_t*>(map), fsize, true, path, flags, out, err);
}

int load_model_memory(const void* data, size_t size, uint32_t flags, const char* name, kerf_model** out,
                      std::string* err) {
  *out = nullptr;
  if (reinterpret_cast<uintptr_t>(data) % fmt::kTensorAlign != 0) {
    *err = strf("%s: the buffer at %p is not %llu-byte aligned (tiled weights are read in place)", name, data,
                (unsigned long long)fmt::kTensorAlign);
    return KERF_ERR_ARGUMENT;
  }
  if (size < 8) {
    *err = strf("%s: not a .kerf file (%llu bytes)", name, (unsigned long long)size);
    return KERF_ERR_FORMAT;
  }
  return load_bytes(static_cast<const uint8_t*>(data), uint64_t(size), false, name, flags, out, err);
}

}  // namespace kerf::rt

const kerf::rt::MetaInfo* kerf_model::find_meta(std::string_view key) const {
  for (const auto& mi : meta)
    if (mi.key == key) return &mi;
  return nullptr;
}
