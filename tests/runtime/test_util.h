// Helpers shared by the runtime-lite tests: temp dirs, file bytes, Llama-shaped artifacts built with
// the writer (random weights or stories260K's llama2.c checkpoint), hash re-fixing for corruption.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "formats/artifact/writer.h"
#include "kerf/format.h"
#include "kerf/kerf.h"
#include "kerf/xxh64.h"

namespace kt {

namespace fmt = kerf::fmt;
namespace art = kerf::artifact;

inline std::string shared_path(const std::string& rel) { return std::string(KERF_SHARED_DIR) + "/" + rel; }
inline std::string tok_path() { return shared_path("models/stories260K/tok512.bin"); }

/// A fresh temporary directory, removed (with its files) at scope exit.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/kerf_rt_test_XXXXXX";
    const char* p = mkdtemp(tmpl);
    path = p ? p : "/tmp";
  }
  ~TempDir() {
    if (path != "/tmp") std::system(("rm -rf '" + path + "'").c_str());
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
  /// Names of the entries in the directory.
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    FILE* f = popen(("ls -A '" + path + "'").c_str(), "r");
    if (!f) return out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, f)) {
      std::string s(buf);
      if (!s.empty() && s.back() == '\n') s.pop_back();
      out.push_back(s);
    }
    pclose(f);
    return out;
  }
};

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
inline void write_file(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

inline fmt::FileHeader header_of(const std::vector<uint8_t>& f) {
  fmt::FileHeader h;
  std::memcpy(&h, f.data(), sizeof h);
  return h;
}
/// Recomputes sections_hash and header_hash after a deliberate edit (so that a later check fires).
inline void refix_hashes(std::vector<uint8_t>& f) {
  fmt::FileHeader h = header_of(f);
  if (h.data_offset <= f.size() && h.header_size <= h.data_offset)
    h.sections_hash = kerf::xxh64(f.data() + h.header_size, h.data_offset - h.header_size);
  h.header_hash = 0;
  std::memcpy(f.data(), &h, sizeof h);
  h.header_hash = kerf::xxh64(f.data(), h.header_size);
  std::memcpy(f.data(), &h, sizeof h);
}
inline void set_header(std::vector<uint8_t>& f, const fmt::FileHeader& h) {
  std::memcpy(f.data(), &h, sizeof h);
  refix_hashes(f);
}

/// Opens `path`; returns the status and fills *msg with the error text.
inline int open_status(const std::string& path, uint32_t flags, std::string* msg, kerf_model** keep = nullptr) {
  kerf_model* m = nullptr;
  char err[1024] = {0};
  const int rc = kerf_model_open(path.c_str(), flags, &m, err, sizeof err);
  *msg = err;
  if (keep) *keep = m;
  else kerf_model_close(m);
  return rc;
}

inline std::vector<float> random_vec(std::mt19937& rng, size_t n, float scale) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

struct LlamaCfg {
  int dim = 16, hidden = 40, layers = 2, heads = 4, kv_heads = 2, vocab = 512, max_seq = 64;
  int head_dim() const { return dim / heads; }
};

/// Weights in llama2.c naming, each row-major [out, in] (vectors [n]).
using Weights = std::map<std::string, std::vector<float>>;

inline std::string lname(int l, const char* w) { return "layers." + std::to_string(l) + "." + w; }

inline Weights random_llama(const LlamaCfg& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Weights w;
  const size_t D = size_t(c.dim), F = size_t(c.hidden), KV = size_t(c.kv_heads * c.head_dim());
  w["tok_embeddings.weight"] = random_vec(rng, size_t(c.vocab) * D, 0.5f);
  for (int l = 0; l < c.layers; ++l) {
    std::vector<float> n1 = random_vec(rng, D, 0.1f), n2 = random_vec(rng, D, 0.1f);
    for (float& x : n1) x += 1.f;
    for (float& x : n2) x += 1.f;
    w[lname(l, "attention_norm.weight")] = n1;
    w[lname(l, "ffn_norm.weight")] = n2;
    w[lname(l, "attention.wq.weight")] = random_vec(rng, D * D, 0.3f);
    w[lname(l, "attention.wk.weight")] = random_vec(rng, KV * D, 0.3f);
    w[lname(l, "attention.wv.weight")] = random_vec(rng, KV * D, 0.3f);
    w[lname(l, "attention.wo.weight")] = random_vec(rng, D * D, 0.3f);
    w[lname(l, "feed_forward.w1.weight")] = random_vec(rng, F * D, 0.3f);
    w[lname(l, "feed_forward.w2.weight")] = random_vec(rng, D * F, 0.3f);
    w[lname(l, "feed_forward.w3.weight")] = random_vec(rng, F * D, 0.3f);
  }
  std::vector<float> nf = random_vec(rng, D, 0.1f);
  for (float& x : nf) x += 1.f;
  w["norm.weight"] = nf;
  return w;
}

/// Reads shared/models/stories260K/stories260K.bin (llama2.c legacy checkpoint). Empty on failure.
inline Weights stories260k(LlamaCfg* c) {
  const std::vector<uint8_t> b = read_file(shared_path("models/stories260K/stories260K.bin"));
  if (b.size() < 28) return {};
  int32_t h[7];
  std::memcpy(h, b.data(), 28);
  *c = LlamaCfg{h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6]};
  size_t at = 28;
  Weights w;
  auto take = [&](const std::string& name, size_t n) {
    std::vector<float> v(n);
    if (at + 4 * n <= b.size()) std::memcpy(v.data(), b.data() + at, 4 * n);
    at += 4 * n;
    w[name] = v;
  };
  const size_t D = size_t(c->dim), F = size_t(c->hidden), KV = size_t(c->kv_heads * c->head_dim());
  take("tok_embeddings.weight", size_t(c->vocab) * D);
  auto per_layer = [&](const char* nm, size_t n) {
    for (int l = 0; l < c->layers; ++l) take(lname(l, nm), n);
  };
  per_layer("attention_norm.weight", D);
  per_layer("attention.wq.weight", D * D);
  per_layer("attention.wk.weight", KV * D);
  per_layer("attention.wv.weight", KV * D);
  per_layer("attention.wo.weight", D * D);
  per_layer("ffn_norm.weight", D);
  per_layer("feed_forward.w1.weight", F * D);
  per_layer("feed_forward.w2.weight", D * F);
  per_layer("feed_forward.w3.weight", F * D);
  take("norm.weight", D);
  if (at > b.size()) return {};
  return w;
}

/// Test fixtures: plain round-to-nearest-even quantizers of a row-major [rows, cols] matrix `w` into the
/// SPEC layouts, group `group` >= 1 along cols (last group partial). They let runtime-lite's tests
/// build artifacts without the compiler (quant/rtn.h is the product's quantizer):
///   q8_sym:  scale = f16(max|w| / 127) per group, code = clamp(round(w / scale), -127, 127)
///   q4_asym: min = f16(min w), scale = f16((max w - min) / 15), code = clamp(round((w-min)/scale), 0, 15)
/// (codes use the f16-rounded scale/min; a zero scale gives code 0; bad sizes give an empty payload).
inline art::TensorRecord quantize_q8_sym(std::string name, int64_t rows, int64_t cols, uint32_t group,
                                         const std::vector<float>& w) {
  art::TensorRecord t{std::move(name), fmt::DType::kQ8Sym, {rows, cols}, group, {}};
  if (rows < 1 || cols < 1 || group < 1 || int64_t(w.size()) != rows * cols) return t;  // size check fails later
  const int64_t ng = (cols + group - 1) / group;
  t.payload.assign(size_t(fmt::quant_payload_bytes(t.dtype, rows, cols, group)), 0);
  uint8_t* codes = t.payload.data();
  uint8_t* scales = codes + rows * cols;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c0 = g * group, c1 = std::min<int64_t>(cols, c0 + group);
      float amax = 0.f;
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      const uint16_t sh = fmt::f32_to_f16(amax / 127.f);
      const float s = fmt::f16_to_f32(sh);
      std::memcpy(scales + 2 * (r * ng + g), &sh, 2);
      for (int64_t c = c0; c < c1; ++c) {
        float q = s > 0.f ? std::nearbyint(w[r * cols + c] / s) : 0.f;
        q = std::min(127.f, std::max(-127.f, q));
        codes[r * cols + c] = uint8_t(int8_t(q));
      }
    }
  }
  return t;
}

inline art::TensorRecord quantize_q4_asym(std::string name, int64_t rows, int64_t cols, uint32_t group,
                                          const std::vector<float>& w) {
  art::TensorRecord t{std::move(name), fmt::DType::kQ4Asym, {rows, cols}, group, {}};
  if (rows < 1 || cols < 1 || group < 1 || int64_t(w.size()) != rows * cols) return t;
  const int64_t ng = (cols + group - 1) / group, rb = (cols + 1) / 2;
  t.payload.assign(size_t(fmt::quant_payload_bytes(t.dtype, rows, cols, group)), 0);
  uint8_t* codes = t.payload.data();
  uint8_t* scales = codes + rows * rb;
  uint8_t* mins = scales + 2 * rows * ng;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c0 = g * group, c1 = std::min<int64_t>(cols, c0 + group);
      float lo = w[r * cols + c0], hi = lo;
      for (int64_t c = c0; c < c1; ++c) { lo = std::min(lo, w[r * cols + c]); hi = std::max(hi, w[r * cols + c]); }
      const uint16_t mh = fmt::f32_to_f16(lo), sh = fmt::f32_to_f16((hi - lo) / 15.f);
      const float m = fmt::f16_to_f32(mh), s = fmt::f16_to_f32(sh);
      std::memcpy(scales + 2 * (r * ng + g), &sh, 2);
      std::memcpy(mins + 2 * (r * ng + g), &mh, 2);
      for (int64_t c = c0; c < c1; ++c) {
        float q = s > 0.f ? std::nearbyint((w[r * cols + c] - m) / s) : 0.f;
        q = std::min(15.f, std::max(0.f, q));
        codes[r * rb + c / 2] |= uint8_t(unsigned(q) << ((c & 1) ? 4 : 0));
      }
    }
  }
  return t;
}

/// Matrix tensor in the requested dtype.
inline art::TensorRecord matrix(const std::string& name, int64_t rows, int64_t cols, const std::vector<float>& v,
                                fmt::DType dt, uint32_t group) {
  switch (dt) {
    case fmt::DType::kF16: return art::TensorRecord::from_f16(name, {rows, cols}, v);
    case fmt::DType::kQ8Sym: return quantize_q8_sym(name, rows, cols, group, v);
    case fmt::DType::kQ4Asym: return quantize_q4_asym(name, rows, cols, group, v);
    default: return art::TensorRecord::from_f32(name, {rows, cols}, v);
  }
}

/// Adds the Llama program (lifted ops, tied classifier) and metadata to `b`.
inline void build_llama(art::ArtifactBuilder& b, const LlamaCfg& c, const Weights& w, fmt::DType dt = fmt::DType::kF32,
                        uint32_t group = 32, bool tokenizer = true) {
  using fmt::AttrKey;
  using fmt::OpCode;
  const int64_t D = c.dim, F = c.hidden, Dh = c.head_dim(), KV = c.kv_heads * Dh;
  b.add_meta_string(fmt::meta::kArch, "llama");
  b.add_meta_int(fmt::meta::kVocab, c.vocab);
  b.add_meta_int(fmt::meta::kDim, c.dim);
  b.add_meta_int(fmt::meta::kLayers, c.layers);
  b.add_meta_int(fmt::meta::kMaxSeq, c.max_seq);
  b.add_meta_string(fmt::meta::kProducer, "kerf-tests");
  if (tokenizer) {
    b.add_meta_string(fmt::meta::kTokType, "llama2c");
    b.add_meta_bytes(fmt::meta::kTokModel, read_file(tok_path()));
    b.add_meta_int(fmt::meta::kTokBos, 1);
    b.add_meta_int(fmt::meta::kTokEos, 2);
  }
  auto vec = [&](const std::string& n) { return b.add_tensor(art::TensorRecord::from_f32(n, {D}, w.at(n))); };
  auto mat = [&](const std::string& n, int64_t r, int64_t k) { return b.add_tensor(matrix(n, r, k, w.at(n), dt, group)); };
  auto val = [&](const std::string& n, int64_t width) { return b.add_value({n, uint32_t(width)}); };
  auto op = [&](OpCode code, const std::string& name, std::vector<uint32_t> in, uint32_t out,
                std::vector<fmt::OpAttr> attrs = {}) {
    b.add_op({code, fmt::Backend::kCpu, name, std::move(in), {out}, std::move(attrs)});
  };
  using art::tensor_ref;
  const uint32_t emb = mat("tok_embeddings.weight", c.vocab, D);
  const uint32_t tokens = val("tokens", 1);
  uint32_t x = val("x.embed", D);
  op(OpCode::kEmbedding, "embed", {tokens, tensor_ref(emb)}, x);
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "l" + std::to_string(l) + ".";
    const uint32_t h = val(p + "attn_in", D), q = val(p + "q", D), k = val(p + "k", KV), v = val(p + "v", KV);
    const uint32_t qr = val(p + "q_rot", D), kr = val(p + "k_rot", KV), a = val(p + "attn", D), o = val(p + "attn_out", D);
    const uint32_t x1 = val(p + "resid1", D), h2 = val(p + "ffn_in", D), f = val(p + "ffn_out", D), x2 = val(p + "resid2", D);
    op(OpCode::kRMSNorm, p + "attention_norm", {x, tensor_ref(vec(lname(l, "attention_norm.weight")))}, h,
       {art::attr_float(AttrKey::kEps, 1e-5)});
    op(OpCode::kLinear, p + "wq", {h, tensor_ref(mat(lname(l, "attention.wq.weight"), D, D))}, q);
    op(OpCode::kLinear, p + "wk", {h, tensor_ref(mat(lname(l, "attention.wk.weight"), KV, D))}, k);
    op(OpCode::kLinear, p + "wv", {h, tensor_ref(mat(lname(l, "attention.wv.weight"), KV, D))}, v);
    const std::vector<fmt::OpAttr> rot = {art::attr_int(AttrKey::kHeadDim, Dh), art::attr_float(AttrKey::kTheta, 10000.0),
                                          art::attr_int(AttrKey::kInterleaved, 1)};
    op(OpCode::kRotary, p + "rope_q", {q}, qr, rot);
    op(OpCode::kRotary, p + "rope_k", {k}, kr, rot);
    op(OpCode::kAttention, p + "attention", {qr, kr, v}, a,
       {art::attr_int(AttrKey::kNHeads, c.heads), art::attr_int(AttrKey::kNKvHeads, c.kv_heads),
        art::attr_int(AttrKey::kHeadDim, Dh), art::attr_int(AttrKey::kCausal, 1)});
    op(OpCode::kLinear, p + "wo", {a, tensor_ref(mat(lname(l, "attention.wo.weight"), D, D))}, o);
    op(OpCode::kAdd, p + "residual1", {x, o}, x1);
    op(OpCode::kRMSNorm, p + "ffn_norm", {x1, tensor_ref(vec(lname(l, "ffn_norm.weight")))}, h2,
       {art::attr_float(AttrKey::kEps, 1e-5)});
    const uint32_t w1 = mat(lname(l, "feed_forward.w1.weight"), F, D);
    const uint32_t w3 = mat(lname(l, "feed_forward.w3.weight"), F, D);
    const uint32_t w2 = mat(lname(l, "feed_forward.w2.weight"), D, F);
    op(OpCode::kGatedFFN, p + "ffn", {h2, tensor_ref(w1), tensor_ref(w3), tensor_ref(w2)}, f,
       {art::attr_int(AttrKey::kActivation, 1)});
    op(OpCode::kAdd, p + "residual2", {x1, f}, x2);
    x = x2;
  }
  const uint32_t n = val("final_norm", D), logits = val("logits", c.vocab);
  op(OpCode::kRMSNorm, "norm", {x, tensor_ref(vec("norm.weight"))}, n, {art::attr_float(AttrKey::kEps, 1e-5)});
  op(OpCode::kLinear, "classifier", {n, tensor_ref(emb)}, logits);  // tied
  b.set_io(tokens, logits);
}

/// Parses the "logits_fp32" rows of stories260K.ref.json.
inline std::vector<std::vector<float>> ref_logits() {
  const std::vector<uint8_t> b = read_file(shared_path("models/stories260K/stories260K.ref.json"));
  std::string s(b.begin(), b.end());
  std::vector<std::vector<float>> rows;
  size_t at = s.find("\"logits_fp32\"");
  if (at == std::string::npos) return rows;
  at = s.find('[', at) + 1;  // outer list
  while (at < s.size()) {
    while (at < s.size() && (s[at] == ' ' || s[at] == ',' || s[at] == '\n')) ++at;
    if (at >= s.size() || s[at] == ']') break;
    if (s[at] != '[') break;
    ++at;
    std::vector<float> row;
    while (at < s.size() && s[at] != ']') {
      char* end = nullptr;
      const double v = std::strtod(s.c_str() + at, &end);
      if (end == s.c_str() + at) { ++at; continue; }
      row.push_back(float(v));
      at = size_t(end - s.c_str());
    }
    ++at;
    rows.push_back(row);
  }
  return rows;
}

}  // namespace kt
