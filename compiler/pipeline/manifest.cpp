// Package manifests ("kerf.manifest/1"), see manifest.h and docs/manifest.md.
#include "compiler/pipeline/manifest.h"

#include "compiler/targets/profile.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <google/protobuf/wire_format_lite.h>
#include <openssl/evp.h>

#include "compiler/pipeline/build_info.h"
#include "compiler/pipeline/json_io.h"
#include "compiler/pipeline/text.h"
#include "kerf/format.h"

namespace kerf::pipeline {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

std::string to_hex(const unsigned char* d, unsigned n) {
  static const char* k = "0123456789abcdef";
  std::string s(size_t(n) * 2, '0');
  for (unsigned i = 0; i < n; ++i) {
    s[2 * i] = k[d[i] >> 4];
    s[2 * i + 1] = k[d[i] & 15];
  }
  return s;
}

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

std::string basename_of(const std::string& path) { return fs::path(path).filename().string(); }

/// {"file": basename (or `shown`), "bytes", "sha256"} of a file.
Result<json> hashed_file(const std::string& path, const std::string& shown = "") {
  KERF_ASSIGN_OR_RETURN(FileDigest d, sha256_file(path));
  json j;
  j["file"] = shown.empty() ? basename_of(path) : shown;
  j["bytes"] = d.bytes;
  j["sha256"] = d.sha256;
  return j;
}

// ---- ONNX external data: the "location" of every initializer stored outside the .onnx file. The
// file is scanned field by field with protobuf's own stream reader (skipping the tensors' payloads),
// so a large model is not parsed into memory a second time.
namespace wire = google::protobuf::internal;
using google::protobuf::io::CodedInputStream;

bool read_len(CodedInputStream& in, uint32_t* len) { return in.ReadVarint32(len); }

/// StringStringEntryProto {1: key, 2: value}.
bool scan_entry(CodedInputStream& in, std::string* key, std::string* value) {
  while (uint32_t tag = in.ReadTag()) {
    const uint32_t field = tag >> 3, wt = tag & 7;
    if ((field == 1 || field == 2) && wt == 2) {
      uint32_t n;
      if (!read_len(in, &n) || !in.ReadString(field == 1 ? key : value, int(n))) return false;
    } else if (!wire::WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
  return true;
}

/// TensorProto: 13 = external_data (repeated StringStringEntryProto), 14 = data_location (1 = EXTERNAL).
bool scan_tensor(CodedInputStream& in, std::string* location, bool* external) {
  while (uint32_t tag = in.ReadTag()) {
    const uint32_t field = tag >> 3, wt = tag & 7;
    if (field == 13 && wt == 2) {
      uint32_t n;
      if (!read_len(in, &n)) return false;
      const auto lim = in.PushLimit(int(n));
      std::string k, v;
      if (!scan_entry(in, &k, &v)) return false;
      in.PopLimit(lim);
      if (k == "location") *location = v;
    } else if (field == 14 && wt == 0) {
      uint32_t v;
      if (!in.ReadVarint32(&v)) return false;
      *external = v == 1;
    } else if (!wire::WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
  return true;
}

/// GraphProto: 5 = initializer (repeated TensorProto).
bool scan_graph(CodedInputStream& in, std::set<std::string>* files) {
  while (uint32_t tag = in.ReadTag()) {
    const uint32_t field = tag >> 3, wt = tag & 7;
    if (field == 5 && wt == 2) {
      uint32_t n;
      if (!read_len(in, &n)) return false;
      const auto lim = in.PushLimit(int(n));
      std::string location;
      bool external = false;
      if (!scan_tensor(in, &location, &external)) return false;
      in.PopLimit(lim);
      if (external && !location.empty()) files->insert(location);
    } else if (!wire::WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
  return true;
}

/// The external-data files an ONNX model's initializers name (relative to the model's folder,
/// sorted). Errors: kIo (unreadable), kBadInput (not a protobuf ModelProto).
Result<std::vector<std::string>> onnx_external_data_files(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return IoError(path + ": cannot open: " + std::strerror(errno));
  std::set<std::string> files;
  bool ok = true;
  {
    google::protobuf::io::FileInputStream fis(fd, 1 << 20);
    CodedInputStream in(&fis);
    in.SetTotalBytesLimit(INT32_MAX);
    while (uint32_t tag = in.ReadTag()) {
      const uint32_t field = tag >> 3, wt = tag & 7;
      if (field == 7 && wt == 2) {  // ModelProto.graph
        uint32_t n;
        if (!read_len(in, &n)) { ok = false; break; }
        const auto lim = in.PushLimit(int(n));
        if (!scan_graph(in, &files)) { ok = false; break; }
        in.PopLimit(lim);
      } else if (!wire::WireFormatLite::SkipField(&in, tag)) {
        ok = false;
        break;
      }
    }
    ok = ok && in.ConsumedEntireMessage();
  }
  ::close(fd);
  if (!ok) return BadInput(path + ": cannot read the ONNX model's external-data entries (not a valid ModelProto)");
  return std::vector<std::string>(files.begin(), files.end());
}

bool is_torchscript_zip(const std::string& path) {
  char magic[4] = {0};
  std::ifstream f(path, std::ios::binary);
  f.read(magic, 4);
  return f.gcount() == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

/// What runtime-lite runs an artifact of `target` with (runtime-lite/src/qkernels.cpp picks the
/// kernels at load time from the CPU; KERF_ISA forces one).
std::string target_kernels(const std::string& target) {
  if (target == "generic") return "portable scalar float kernels (plain layout; any CPU)";
  if (target == "x86-64-avx2") return "x86-64 AVX2+FMA+F16C or better (AVX-512 VNNI) integer kernels / scalar fallback";
  if (target == "x86-64-avx512") return "x86-64 AVX-512 F/BW/VL/VNNI integer kernels (AVX2 / scalar fallback)";
  if (target == "arm64-neon-dotprod") return "arm64 NEON dotprod integer kernels (NEON / scalar fallback)";
  if (target == "host")
    return "tiled integer kernels chosen at load time: AVX-512 VNNI, AVX2, NEON dotprod or NEON / scalar fallback";
  auto p = targets::load_profile(target);
  if (!p.ok()) return "unknown target";
  std::string k = "cpu: " + p->cpu.kernels + " integer kernels";
  if (p->gpu.present) k += "; gpu: runtime-lite OpenCL backend (" + p->gpu.api + ")";
  if (p->npu.present) k += "; npu: integer-only A" + std::to_string(p->npu.activation_bits) + "W" + std::to_string(p->npu.weight_bits) + " path (bit-exact reference in runtime-lite)";
  return k;
}

/// The BLAS LibTorch computes with, as it names itself (OpenBLAS: version, build options and the
/// CPU kernel set it picked, e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64"), or
/// "unknown". Looked up at run time so that nothing links against a particular BLAS.
std::string blas_description() {
  using GetStr = char* (*)();
  if (auto f = reinterpret_cast<GetStr>(::dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    std::string s = f();
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
  }
  return "unknown";
}

}  // namespace

std::string manifest_path_for(const std::string& artifact_path) {
  const size_t slash = artifact_path.rfind('/');
  const size_t dot = artifact_path.rfind('.');
  const bool has_ext = dot != std::string::npos && (slash == std::string::npos || dot > slash + 1);
  return (has_ext ? artifact_path.substr(0, dot) : artifact_path) + ".manifest.json";
}

Result<FileDigest> sha256_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return IoError(path + ": cannot open: " + std::strerror(errno));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> guard(f, std::fclose);
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Internal("OpenSSL: SHA-256 init failed");
  std::vector<unsigned char> buf(1 << 20);
  FileDigest d;
  for (;;) {
    const size_t n = std::fread(buf.data(), 1, buf.size(), f);
    if (n > 0) {
      if (EVP_DigestUpdate(ctx.get(), buf.data(), n) != 1) return Internal("OpenSSL: SHA-256 update failed");
      d.bytes += n;
    }
    if (n < buf.size()) {
      if (std::ferror(f)) return IoError(path + ": read error: " + std::strerror(errno));
      break;
    }
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1) return Internal("OpenSSL: SHA-256 final failed");
  d.sha256 = to_hex(md, len);
  return d;
}

std::string sha256_hex(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr) != 1) return "";
  return to_hex(md, len);
}

Result<json> read_manifest(const std::string& manifest_path) { return read_json_file(manifest_path, {kManifestSchema}); }

Status write_manifest(const std::string& manifest_path, const json& manifest) {
  return write_text_atomic(manifest_path, json_file_text(manifest));
}

Status manifest_set_verification(const std::string& manifest_path, const json& verification) {
  KERF_ASSIGN_OR_RETURN(json m, read_manifest(manifest_path));
  m["verification"] = verification;  // keeps its position when present (ordered_json)
  return write_manifest(manifest_path, m);
}

Status check_artifact_against_manifest(const std::string& artifact_path, const json& manifest,
                                       const std::string& manifest_path) {
  auto a = manifest.find("artifact");
  if (a == manifest.end() || !a->is_object() || !a->contains("sha256") || !(*a)["sha256"].is_string() ||
      !a->contains("bytes") || !(*a)["bytes"].is_number_unsigned())
    return BadInput(manifest_path + ": no artifact.sha256 / artifact.bytes");
  KERF_ASSIGN_OR_RETURN(FileDigest d, sha256_file(artifact_path));
  const std::string want = (*a)["sha256"].get<std::string>();
  const uint64_t want_bytes = (*a)["bytes"].get<uint64_t>();
  if (d.sha256 != want || d.bytes != want_bytes)
    return BadInput(artifact_path + ": sha256 " + d.sha256 + " (" + std::to_string(d.bytes) + " bytes) does not match " +
                    manifest_path + " (sha256 " + want + ", " + std::to_string(want_bytes) +
                    " bytes): the artifact was altered or replaced after it was compiled");
  return Status::Ok();
}

Result<std::string> inspect_manifest_text(const std::string& artifact_path) {
  const std::string mpath = manifest_path_for(artifact_path);
  std::error_code ec;
  if (!fs::exists(mpath, ec)) return "\nmanifest: none (no " + mpath + ")\n";
  KERF_ASSIGN_OR_RETURN(json m, read_manifest(mpath));
  KERF_RETURN_IF_ERROR(check_artifact_against_manifest(artifact_path, m, mpath));
  std::string note;
  auto a = m.find("artifact");
  if (a != m.end() && a->contains("file") && (*a)["file"].is_string() &&
      (*a)["file"].get<std::string>() != basename_of(artifact_path))
    note = " (the manifest names it " + (*a)["file"].get<std::string>() + ")";
  return "\nmanifest " + mpath + ": artifact sha256 matches" + note + "\n" + json_file_text(m);
}

std::string canonical_compile_options(const CompileOptions& opt, bool calibrated) {
  const CompileOptions def;
  std::string s;
  auto add = [&](const std::string& flag, const std::string& value) {
    s += (s.empty() ? "" : " ") + flag;
    if (!value.empty()) s += " " + value;
  };
  add("--target", opt.target);
  if (!calibrated) {  // the RTN baseline's settings
    add("--linear", fmt::dtype_name(opt.quant.linear_dtype));
    add("--embedding", fmt::dtype_name(opt.quant.embedding_dtype));
    add("--group-size", std::to_string(opt.quant.group_size));
    if (opt.quant.embedding_group != def.quant.embedding_group)
      add("--embedding-group", std::to_string(opt.quant.embedding_group));
  } else {  // the calibrated path reads only these of them (over the recipe)
    if (!opt.linear_spec.empty()) add("--linear", opt.linear_spec);
    if (!opt.embedding_spec.empty()) add("--embedding", opt.embedding_spec);
    else if (!opt.embedding_spec_if_calibrated.empty()) add("--embedding", opt.embedding_spec_if_calibrated);
  }
  if (!opt.method.empty()) add("--method", opt.method);
  if (opt.calib_stories) add("--calib-stories", std::to_string(opt.calib_stories->begin) + ":" + std::to_string(opt.calib_stories->end));
  if (opt.calib_tokens >= 0) add("--calib-tokens", std::to_string(opt.calib_tokens));
  if (opt.bpw > 0) add("--bpw", shortest_double(opt.bpw));
  if (opt.strict) add("--strict", "");
  if (opt.keep_heads < 1) add("--keep-heads", shortest_double(opt.keep_heads));
  if (opt.keep_ffn < 1) add("--keep-ffn", shortest_double(opt.keep_ffn));
  if (opt.keep_embed < 1) add("--keep-embed", shortest_double(opt.keep_embed));
  if (opt.drop_blocks > 0) add("--drop-blocks", std::to_string(opt.drop_blocks));
  if (!opt.head_mode.empty()) add("--head-mode", opt.head_mode);
  if (!opt.importance.empty()) add("--importance", opt.importance);
  if (!opt.prune_budget.empty()) add("--prune-budget", opt.prune_budget);
  if (!opt.prune_alloc.empty()) add("--prune-alloc", opt.prune_alloc);
  if (opt.distill_steps >= 0) add("--distill-steps", std::to_string(opt.distill_steps));
  if (opt.seed >= 0) add("--seed", std::to_string(opt.seed));
  if (opt.teacher_samples >= 0) add("--teacher-samples", std::to_string(opt.teacher_samples));
  if (opt.qad_steps >= 0) add("--qad-steps", std::to_string(opt.qad_steps));
  return s;
}

Result<json> compile_manifest(const CompileOptions& opt, const CompileSummary& s, const CompileManifestInputs& in) {
  json m;
  m["schema"] = kManifestSchema;
  KERF_ASSIGN_OR_RETURN(m["artifact"], hashed_file(opt.output_path));

  KERF_ASSIGN_OR_RETURN(json src, hashed_file(opt.model_path));
  const bool torchscript = is_torchscript_zip(opt.model_path);
  src["format"] = torchscript ? "torchscript" : "onnx";
  if (!torchscript) {
    KERF_ASSIGN_OR_RETURN(std::vector<std::string> ext, onnx_external_data_files(opt.model_path));
    if (!ext.empty()) {
      const fs::path dir = fs::path(opt.model_path).parent_path();
      json arr = json::array();
      for (const std::string& loc : ext) {
        // The location as the ONNX file names it (relative to the model's folder): reproducible.
        KERF_ASSIGN_OR_RETURN(json e, hashed_file((dir / loc).string(), loc));
        arr.push_back(std::move(e));
      }
      src["external_data"] = std::move(arr);
    }
  }
  m["source_model"] = std::move(src);

  KERF_ASSIGN_OR_RETURN(m["tokenizer"], hashed_file(in.tokenizer_path));

  json r;
  r["name"] = in.recipe_name.empty() ? json(nullptr) : json(in.recipe_name);
  if (!opt.recipe_path.empty()) {
    KERF_ASSIGN_OR_RETURN(json f, hashed_file(opt.recipe_path));
    r["file"] = f["file"];
    r["sha256"] = f["sha256"];
  } else {
    r["file"] = nullptr;
    r["sha256"] = nullptr;
  }
  r["args"] = s.recipe;
  r["options"] = canonical_compile_options(opt, s.calibrated);
  m["recipe"] = std::move(r);

  if (!opt.calib_path.empty()) {
    KERF_ASSIGN_OR_RETURN(json c, hashed_file(opt.calib_path));
    if (!s.calib_range.empty()) {
      char h[17];
      std::snprintf(h, sizeof h, "%016llx", static_cast<unsigned long long>(s.calib_hash));
      c["stories"] = s.calib_range;
      c["sequences"] = s.calib_sequences;
      c["tokens"] = s.calib_token_count;
      c["tokens_xxh64"] = h;
    }
    m["calibration"] = std::move(c);
  } else {
    m["calibration"] = nullptr;
  }

  if (!in.checkpoint_path.empty()) {
    json d;
    KERF_ASSIGN_OR_RETURN(d["checkpoint"], hashed_file(in.checkpoint_path));
    m["distillation"] = std::move(d);
  } else {
    m["distillation"] = nullptr;
  }

  json tool;
  tool["name"] = "kerf";
  tool["version"] = kerf_version();
  tool["commit"] = kerf_commit();
  m["tool"] = std::move(tool);

  // LibTorch's float results (calibration statistics, distillation) depend on the intra-op thread
  // count and the BLAS kernels: OpenBLAS splits a GEMM across threads and its edge kernels sum
  // along K in another order (stories260K GPTQ: --threads 1 and 2 give different artifacts). When
  // those results reach the weights, both are inputs and are recorded; otherwise "compute" is null.
  // Every such path (calibration statistics, GPTQ / AWQ, mixed precision, activation / Taylor pruning
  // importance, distillation, QAD) needs --calib, so a compile without calibration text has none.
  const bool torch_numerics = !opt.calib_path.empty();
  if (torch_numerics) {
    json c;
    int threads = opt.threads;
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    c["threads"] = threads;
    c["blas"] = blas_description();
    m["compute"] = std::move(c);
  } else {
    m["compute"] = nullptr;
  }

  json t;
  t["profile"] = opt.target;
  t["layout"] = s.layout;
  t["kernels"] = target_kernels(opt.target);
  m["target"] = std::move(t);

  m["verification"] = nullptr;
  return m;
}

Status write_compile_manifest(const CompileOptions& opt, const CompileSummary& s, const CompileManifestInputs& in) {
  const std::string mpath = manifest_path_for(opt.output_path);
  auto m = compile_manifest(opt, s, in);
  Status st = m.ok() ? write_manifest(mpath, *m) : m.status();
  if (!st.ok()) {
    ::unlink(opt.output_path.c_str());
    ::unlink(mpath.c_str());
    return st.with_context("package manifest " + mpath);
  }
  return Status::Ok();
}

}  // namespace kerf::pipeline
