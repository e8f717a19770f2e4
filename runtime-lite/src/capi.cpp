// The C API (kerf.h): model open/close and metadata lookups, status strings. Sessions are in
// executor.cpp, tokenizer functions in tokenizer.cpp, the sampler in sampler.cpp.
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "model.h"
#include "qkernels.h"

namespace {

/// Copies `msg` into the caller's error buffer (truncated, NUL-terminated; nothing when NULL).
void copy_err(const std::string& msg, char* err, size_t err_size) {
  if (err && err_size > 0) {
    const size_t n = msg.size() < err_size - 1 ? msg.size() : err_size - 1;
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
  }
}

/// After a successful load: picks the integer kernels (KERF_ISA or the best of this CPU).
int finish_open(int rc, const std::string& msg, const char* name, kerf_model** out, char* err, size_t err_size) {
  if (rc != KERF_OK) {
    copy_err(msg, err, err_size);
    return rc;
  }
  (*out)->qk = kerf::rt::qkernels_best();
  if (!(*out)->qk) {
    const char* isa = std::getenv("KERF_ISA");
    copy_err(std::string(name) + ": KERF_ISA=" + (isa ? isa : "") +
                 " names an instruction set that is unknown or that this build or CPU lacks (known: scalar, avx2, "
                 "avx512vnni, neon, neondot; unset KERF_ISA for the best available)",
             err, err_size);
    kerf_model_close(*out);
    *out = nullptr;
    return KERF_ERR_UNSUPPORTED;
  }
  copy_err("", err, err_size);
  return KERF_OK;
}

}  // namespace

extern "C" {

int kerf_model_open(const char* path, uint32_t flags, kerf_model** out, char* err, size_t err_size) {
  if (!out || !path) {
    if (out) *out = nullptr;
    copy_err("kerf_model_open: NULL path or output pointer", err, err_size);
    return KERF_ERR_ARGUMENT;
  }
  std::string msg;
  const int rc = kerf::rt::load_model(path, flags, out, &msg);
  return finish_open(rc, msg, path, out, err, err_size);
}

int kerf_model_open_memory(const void* data, size_t size, uint32_t flags, const char* name, kerf_model** out,
                           char* err, size_t err_size) {
  if (!out || !data) {
    if (out) *out = nullptr;
    copy_err("kerf_model_open_memory: NULL buffer or output pointer", err, err_size);
    return KERF_ERR_ARGUMENT;
  }
  if (!name) name = "<memory>";
  std::string msg;
  const int rc = kerf::rt::load_model_memory(data, size, flags, name, out, &msg);
  return finish_open(rc, msg, name, out, err, err_size);
}

const char* kerf_model_isa(const kerf_model* m) { return m && m->qk ? kerf::rt::isa_name(m->qk->isa) : nullptr; }

int kerf_model_op_info(const kerf_model* m, int index, kerf_op_info* out) {
  if (!m || !out || index < 0 || size_t(index) >= m->ops.size()) return KERF_ERR_ARGUMENT;
  const kerf::rt::OpInfo& op = m->ops[size_t(index)];
  out->op = kerf::fmt::op_name(op.op);
  out->n_tensors = 0;
  for (uint32_t ref : op.inputs)
    if ((ref & kerf::fmt::kRefTensorBit) && out->n_tensors < 4)
      out->tensors[out->n_tensors++] = int(ref & ~kerf::fmt::kRefTensorBit);
  return KERF_OK;
}

void kerf_model_close(kerf_model* m) {
  if (!m) return;
  if (m->map && m->owns_map) ::munmap(const_cast<uint8_t*>(m->map), m->map_size);
  delete m;
}

int kerf_model_vocab_size(const kerf_model* m) { return m ? m->vocab : 0; }
int kerf_model_max_seq_len(const kerf_model* m) { return m ? m->max_seq_len : 0; }

int kerf_model_meta_int(const kerf_model* m, const char* key, int64_t* out) {
  if (!m || !key || !out) return KERF_ERR_ARGUMENT;
  const kerf::rt::MetaInfo* mi = m->find_meta(key);
  if (!mi || mi->type != kerf::fmt::MetaType::kInt) return KERF_ERR_ARGUMENT;
  *out = mi->i;
  return KERF_OK;
}

int kerf_model_meta_float(const kerf_model* m, const char* key, double* out) {
  if (!m || !key || !out) return KERF_ERR_ARGUMENT;
  const kerf::rt::MetaInfo* mi = m->find_meta(key);
  if (!mi || mi->type != kerf::fmt::MetaType::kFloat) return KERF_ERR_ARGUMENT;
  *out = mi->f;
  return KERF_OK;
}

int kerf_model_meta_string(const kerf_model* m, const char* key, const char** data, size_t* size) {
  if (!m || !key || !data || !size) return KERF_ERR_ARGUMENT;
  const kerf::rt::MetaInfo* mi = m->find_meta(key);
  if (!mi || (mi->type != kerf::fmt::MetaType::kString && mi->type != kerf::fmt::MetaType::kBytes))
    return KERF_ERR_ARGUMENT;
  *data = mi->data;
  *size = size_t(mi->size);
  return KERF_OK;
}

const char* kerf_status_string(int status) {
  switch (status) {
    case KERF_OK: return "ok";
    case KERF_ERR_IO: return "I/O error";
    case KERF_ERR_FORMAT: return "not a supported .kerf file";
    case KERF_ERR_CORRUPT: return "corrupt artifact";
    case KERF_ERR_UNSUPPORTED: return "unsupported op, dtype or attribute";
    case KERF_ERR_ARGUMENT: return "bad argument";
    case KERF_ERR_CONTEXT: return "context full";
    case KERF_ERR_MEMORY: return "out of memory";
  }
  return "unknown status";
}

}  // extern "C"
