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

#include "formats/artifact/pack.h"
#include "formats/artifact/writer.h"
#include "kerf/format.h"
#include "kerf/kerf.h"
#include "kerf/xxh64.h"

namespace kt {

namespace fmt = kerf::fmt;
namespace art = kerf::artifact;

/// The IEEE-754 bit pattern of f (bit-exactness checks).
inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
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
inline void refix_hashes(std::vector<uint8_t>& f) { fmt::rehash_file(f.data(), f.size()); }
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

// ------------------------------------------------------------------ generic quantized dtypes (1.1)
//
// An independent, deliberately naive implementation of the format 1.1 layouts, written from the
// SPEC text: explicit codes and parameters, packed bit by bit (no format.h layout helpers), and the
// reference dequantization of one element. Tests compare the runtime against these.

/// A generic quantized [rows, cols] tensor given by its codes and parameters.
struct GenericQ {
  fmt::DType dtype = fmt::DType::kQSym;
  uint32_t bits = 0;  ///< qsym / qasym: 2..8; ternary / binary: 0
  bool k6 = false;    ///< scale format: false = f16 per group, true = k6
  int64_t rows = 0, cols = 0;
  uint32_t group = 0;
  /// [rows * cols] row-major. qsym / qasym: the stored code u in [0, 2^bits); ternary: q in
  /// {-1, 0, 1}; binary: q in {-1, 1}.
  std::vector<int> codes;
  std::vector<uint16_t> s, m;   ///< f16 bits per group, flat order i = r * ng + j (m: qasym only)
  std::vector<uint8_t> sc, mc;  ///< k6: 6-bit values per group (mc: qasym only)
  std::vector<uint16_t> d, dm;  ///< k6: f16 bits per super-block of 8 groups (dm: qasym only)

  bool asym() const { return dtype == fmt::DType::kQAsym; }
  int64_t ng() const { return (cols + group - 1) / group; }
  int64_t n_groups() const { return rows * ng(); }
  int64_t n_super() const { return (n_groups() + 7) / 8; }
  uint32_t flags() const { return bits | (k6 ? 0x100u : 0u); }  // SPEC: bits 0-7 b, bits 8-15 scale format
};

/// Sets `nbits` bits of `value` at bit offset `bit` (LSB first) of out[base..].
inline void put_bits(std::vector<uint8_t>& out, size_t base, uint64_t bit, uint32_t value, int nbits) {
  for (int k = 0; k < nbits; ++k)
    if ((value >> k) & 1u) out[base + size_t((bit + uint64_t(k)) / 8)] |= uint8_t(1u << ((bit + uint64_t(k)) % 8));
}
inline void put_f16_le(std::vector<uint8_t>& out, uint16_t h) {
  out.push_back(uint8_t(h & 0xff));
  out.push_back(uint8_t(h >> 8));
}

/// The payload of `q`, bit by bit from the SPEC: codes row after row, then the group parameters.
inline std::vector<uint8_t> pack_generic(const GenericQ& q) {
  std::vector<uint8_t> out;
  for (int64_t r = 0; r < q.rows; ++r) {
    const size_t base = out.size();
    if (q.dtype == fmt::DType::kTernary) {
      for (int64_t k = 0; k < (q.cols + 4) / 5; ++k) {
        int byte = 0, pow3 = 1;
        for (int t = 0; t < 5; ++t, pow3 *= 3) {
          const int64_t c = 5 * k + t;
          const int digit = c < q.cols ? q.codes[size_t(r * q.cols + c)] + 1 : 1;  // padding digit 1 (q = 0)
          byte += digit * pow3;
        }
        out.push_back(uint8_t(byte));
      }
      continue;
    }
    const int b = q.dtype == fmt::DType::kBinary ? 1 : int(q.bits);
    out.resize(base + size_t((q.cols * b + 7) / 8), 0);
    for (int64_t c = 0; c < q.cols; ++c) {
      const int code = q.codes[size_t(r * q.cols + c)];
      const uint32_t v = q.dtype == fmt::DType::kBinary ? (code > 0 ? 1u : 0u) : uint32_t(code);
      put_bits(out, base, uint64_t(c) * uint64_t(b), v, b);
    }
  }
  const int64_t NG = q.n_groups();
  if (!q.k6) {
    for (int64_t i = 0; i < NG; ++i) put_f16_le(out, q.s[size_t(i)]);
    if (q.asym())
      for (int64_t i = 0; i < NG; ++i) put_f16_le(out, q.m[size_t(i)]);
    return out;
  }
  auto put6 = [&](const std::vector<uint8_t>& v) {
    const size_t base = out.size();
    out.resize(base + size_t((NG * 6 + 7) / 8), 0);
    for (int64_t i = 0; i < NG; ++i) put_bits(out, base, uint64_t(6 * i), v[size_t(i)], 6);
  };
  put6(q.sc);
  if (q.asym()) put6(q.mc);
  for (int64_t k = 0; k < q.n_super(); ++k) put_f16_le(out, q.d[size_t(k)]);
  if (q.asym())
    for (int64_t k = 0; k < q.n_super(); ++k) put_f16_le(out, q.dm[size_t(k)]);
  return out;
}

inline art::TensorRecord generic_record(const std::string& name, const GenericQ& q) {
  art::TensorRecord t{name, q.dtype, {q.rows, q.cols}, q.group, pack_generic(q)};
  t.flags = q.flags();
  return t;
}

/// Reference dequantized element (r, c), with the SPEC's f32 expressions:
/// s = f16(s_i) or f16(d) * float(sc); w = s * float(q), or (s * float(u)) + m for qasym.
inline float generic_ref(const GenericQ& q, int64_t r, int64_t c) {
  const int64_t i = r * q.ng() + c / q.group;
  float s, m = 0.f;
  if (q.k6) {
    const float d = fmt::f16_to_f32(q.d[size_t(i / 8)]);
    s = d * float(q.sc[size_t(i)]);
    if (q.asym()) {
      const float dm = fmt::f16_to_f32(q.dm[size_t(i / 8)]);
      m = dm * float(q.mc[size_t(i)]);
    }
  } else {
    s = fmt::f16_to_f32(q.s[size_t(i)]);
    if (q.asym()) m = fmt::f16_to_f32(q.m[size_t(i)]);
  }
  const int code = q.codes[size_t(r * q.cols + c)];
  switch (q.dtype) {
    case fmt::DType::kQSym: return s * float(code - (1 << (q.bits - 1)));
    case fmt::DType::kQAsym: {
      volatile float p = s * float(code);  // rounded product, never fused with the addition
      return p + m;
    }
    default: return s * float(code);  // ternary, binary
  }
}

/// f16 bits of a random finite value (normal, sd `scale`, either sign).
inline uint16_t random_f16(std::mt19937& rng, float scale) {
  std::normal_distribution<float> nd(0.f, scale);
  return fmt::f32_to_f16(nd(rng));
}

/// Random codes and parameters (every code value and 6-bit value reachable, scales of both signs).
inline GenericQ random_generic(std::mt19937& rng, fmt::DType dt, uint32_t bits, bool k6, int64_t rows, int64_t cols,
                               uint32_t group) {
  GenericQ q;
  q.dtype = dt;
  q.bits = bits;
  q.k6 = k6;
  q.rows = rows;
  q.cols = cols;
  q.group = group;
  q.codes.resize(size_t(rows * cols));
  for (int& c : q.codes) {
    if (dt == fmt::DType::kTernary) c = int(rng() % 3) - 1;
    else if (dt == fmt::DType::kBinary) c = (rng() & 1) ? 1 : -1;
    else c = int(rng() % (1u << bits));
  }
  const size_t NG = size_t(q.n_groups()), NS = size_t(q.n_super());
  const bool asym = q.asym();
  if (!k6) {
    for (size_t i = 0; i < NG; ++i) q.s.push_back(random_f16(rng, 0.05f));
    if (asym)
      for (size_t i = 0; i < NG; ++i) q.m.push_back(random_f16(rng, 0.5f));
  } else {
    for (size_t i = 0; i < NG; ++i) q.sc.push_back(uint8_t(rng() % 64));
    if (asym)
      for (size_t i = 0; i < NG; ++i) q.mc.push_back(uint8_t(rng() % 64));
    for (size_t k = 0; k < NS; ++k) q.d.push_back(random_f16(rng, 0.002f));
    if (asym)
      for (size_t k = 0; k < NS; ++k) q.dm.push_back(random_f16(rng, 0.01f));
  }
  return q;
}

/// Round-to-nearest quantizer of a float [rows, cols] matrix into a generic dtype (fixture quality,
/// for end-to-end runs): qsym s = max|w| / (2^(b-1) - 1); qasym m = min w, s = (max - min) / (2^b - 1);
/// ternary s = max|w|; binary s = mean|w|. k6: per 8 groups d = max s / 63, sc = round(s / d)
/// (likewise dm from the largest |m|, mc clamped to 0..63). Codes use the stored parameters.
inline GenericQ quantize_generic_q(fmt::DType dt, uint32_t bits, bool k6, int64_t rows, int64_t cols, uint32_t group,
                                   const std::vector<float>& w) {
  GenericQ q;
  q.dtype = dt;
  q.bits = bits;
  q.k6 = k6;
  q.rows = rows;
  q.cols = cols;
  q.group = group;
  const int64_t ng = q.ng(), NG = q.n_groups();
  std::vector<float> sf(static_cast<size_t>(NG)), mf(static_cast<size_t>(NG), 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t c0 = j * group, c1 = std::min<int64_t>(cols, c0 + group);
      float lo = w[size_t(r * cols + c0)], hi = lo, amax = 0.f, asum = 0.f;
      for (int64_t c = c0; c < c1; ++c) {
        const float x = w[size_t(r * cols + c)];
        lo = std::min(lo, x);
        hi = std::max(hi, x);
        amax = std::max(amax, std::fabs(x));
        asum += std::fabs(x);
      }
      float s = 0.f;
      switch (dt) {
        case fmt::DType::kQSym: s = amax / float((1 << (bits - 1)) - 1); break;
        case fmt::DType::kQAsym: s = (hi - lo) / float((1 << bits) - 1); mf[size_t(r * ng + j)] = lo; break;
        case fmt::DType::kTernary: s = amax; break;
        default: s = asum / float(c1 - c0); break;
      }
      sf[size_t(r * ng + j)] = s;
    }
  if (!k6) {
    for (int64_t i = 0; i < NG; ++i) q.s.push_back(fmt::f32_to_f16(sf[size_t(i)]));
    if (q.asym())
      for (int64_t i = 0; i < NG; ++i) q.m.push_back(fmt::f32_to_f16(mf[size_t(i)]));
  } else {
    auto k6_encode = [&](const std::vector<float>& v, std::vector<uint8_t>* six, std::vector<uint16_t>* sup) {
      for (int64_t k = 0; k < q.n_super(); ++k) {
        float big = 0.f;
        for (int64_t i = 8 * k; i < std::min<int64_t>(NG, 8 * k + 8); ++i)
          if (std::fabs(v[size_t(i)]) > std::fabs(big)) big = v[size_t(i)];
        const uint16_t dh = fmt::f32_to_f16(big / 63.f);
        const float d = fmt::f16_to_f32(dh);
        sup->push_back(dh);
        for (int64_t i = 8 * k; i < std::min<int64_t>(NG, 8 * k + 8); ++i) {
          const float x = d != 0.f ? std::nearbyint(v[size_t(i)] / d) : 0.f;
          six->push_back(uint8_t(std::min(63.f, std::max(0.f, x))));
        }
      }
    };
    k6_encode(sf, &q.sc, &q.d);
    if (q.asym()) k6_encode(mf, &q.mc, &q.dm);
  }
  // Codes from the stored (f16 / k6-rounded) parameters.
  q.codes.assign(size_t(rows * cols), 0);
  const int half = bits ? 1 << (bits - 1) : 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const size_t at = size_t(r * cols + c);
      float s, m = 0.f;
      const int64_t i = r * ng + c / group;
      if (k6) {
        s = fmt::f16_to_f32(q.d[size_t(i / 8)]) * float(q.sc[size_t(i)]);
        if (q.asym()) m = fmt::f16_to_f32(q.dm[size_t(i / 8)]) * float(q.mc[size_t(i)]);
      } else {
        s = fmt::f16_to_f32(q.s[size_t(i)]);
        if (q.asym()) m = fmt::f16_to_f32(q.m[size_t(i)]);
      }
      const float x = w[at];
      const float t = s != 0.f ? std::nearbyint((x - m) / s) : 0.f;
      switch (dt) {
        case fmt::DType::kQSym: q.codes[at] = int(std::min(float(half - 1), std::max(float(-half), t))) + half; break;
        case fmt::DType::kQAsym: q.codes[at] = int(std::min(float((1 << bits) - 1), std::max(0.f, t))); break;
        case fmt::DType::kTernary: q.codes[at] = int(std::min(1.f, std::max(-1.f, t))); break;
        default: q.codes[at] = x >= 0.f ? 1 : -1; break;
      }
    }
  return q;
}

/// Matrix tensor in the requested dtype (`flags`: code bits / scale format of the generic dtypes;
/// the tiled layout bits pack the quantized matrix with art::pack_tiled, and an unpackable one
/// gets an empty payload, which the writer rejects by name).
inline art::TensorRecord matrix(const std::string& name, int64_t rows, int64_t cols, const std::vector<float>& v,
                                fmt::DType dt, uint32_t group, uint32_t flags = 0) {
  switch (dt) {
    case fmt::DType::kF16: return art::TensorRecord::from_f16(name, {rows, cols}, v);
    case fmt::DType::kQ8Sym: return quantize_q8_sym(name, rows, cols, group, v);
    case fmt::DType::kQ4Asym: return quantize_q4_asym(name, rows, cols, group, v);
    case fmt::DType::kQSym: case fmt::DType::kQAsym: case fmt::DType::kTernary: case fmt::DType::kBinary: {
      const bool k6 = fmt::qflags_scale(flags) == fmt::ScaleFormat::kK6;
      art::TensorRecord plain =
          generic_record(name, quantize_generic_q(dt, fmt::qflags_bits(flags), k6, rows, cols, group, v));
      if (fmt::qflags_layout(flags) != fmt::Layout::kTiled) return plain;
      art::TensorRecord tiled;
      if (art::pack_tiled(plain, flags >> 24, &tiled, nullptr)) return tiled;
      plain.payload.clear();
      return plain;
    }
    default: return art::TensorRecord::from_f32(name, {rows, cols}, v);
  }
}

/// Per-tensor precision overriding build_llama's default for the named weight.
struct MatPrecision {
  fmt::DType dtype = fmt::DType::kF32;
  uint32_t group = 0;
  uint32_t flags = 0;
};

/// Adds the Llama program (lifted ops, tied classifier) and metadata to `b`.
/// `flags`: TensorEntry.flags of the matrices when `dt` is a generic quantized dtype; `overrides`:
/// weight name -> precision for single matrices.
inline void build_llama(art::ArtifactBuilder& b, const LlamaCfg& c, const Weights& w, fmt::DType dt = fmt::DType::kF32,
                        uint32_t group = 32, bool tokenizer = true, uint32_t flags = 0,
                        const std::map<std::string, MatPrecision>& overrides = {}) {
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
  auto mat = [&](const std::string& n, int64_t r, int64_t k) {
    const auto o = overrides.find(n);
    if (o != overrides.end()) return b.add_tensor(matrix(n, r, k, w.at(n), o->second.dtype, o->second.group, o->second.flags));
    return b.add_tensor(matrix(n, r, k, w.at(n), dt, group, flags));
  };
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
