// The integer-only NPU reference path ([npu]): fixed-point primitives against straightforward
// int64 / __int128 / double references, the deterministic tables, each kernel against a float
// reference within a tolerance derived from its quantization steps, the backend's metadata checks,
// prefill == decode, the executor's dispatch, a bit-exactness golden hash (same on x86-64 and
// aarch64) and stories260K end to end (A8W8, A16W8, A16W4 against the float CPU logits).
#include <catch2/catch.hpp>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>

#include "../../runtime-lite/src/backend.h"
#include "../../runtime-lite/src/kernels.h"
#include "../../runtime-lite/src/model.h"
#include "../../runtime-lite/src/npu.h"
#include "test_util.h"

using namespace kt;
namespace npu = kerf::rt::npu;
using kerf::rt::DeviceBackend;

namespace {

using i128 = __int128;
using u128 = unsigned __int128;

// ------------------------------------------------------------------ straightforward references

i128 floor_div(i128 a, i128 b) {  // b > 0
  i128 q = a / b;
  if (a % b != 0 && a < 0) --q;
  return q;
}
int32_t ref_srdhm(int32_t a, int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
  return int32_t(floor_div(i128(a) * b + (i128(1) << 30), i128(1) << 31));  // round half up of a*b / 2^31
}
/// x / 2^e rounded to nearest, ties away from zero.
i128 ref_rhaz(i128 x, int e) {
  if (e == 0) return x;
  const i128 mag = x < 0 ? -x : x;
  const i128 r = (mag + (i128(1) << (e - 1))) >> e;
  return x < 0 ? -r : r;
}
int32_t ref_sat32(i128 v) { return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : int32_t(v); }
int32_t ref_mbqm(int32_t x, int32_t m, int shift) {
  const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  return int32_t(ref_rhaz(ref_srdhm(ref_sat32(i128(x) * (i128(1) << left)), m), right));
}
int64_t ref_mul_round_shift(int64_t x, int32_t m, int right) {
  const u128 mag = u128(x < 0 ? -i128(x) : i128(x)) * u128(uint32_t(m));
  u128 r = right == 0 ? mag : (mag + (u128(1) << (right - 1))) >> right;
  if (r > u128(INT64_MAX)) r = u128(INT64_MAX);
  return x < 0 ? -int64_t(r) : int64_t(r);
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

// The backend's virtual calls go through these: runtime-lite is built with -fno-rtti, so UBSan's vptr
// check (KERF_SANITIZE builds, RTTI in the tests) cannot see the dynamic type and would report every
// call from this file as a false positive. (For the same reason this file never owns a backend: a
// std::unique_ptr<DeviceBackend> destructor instantiated here would be the COMDAT copy the
// executor's kerf_session destructor links to. The sessions own them.)
#define KT_NO_VPTR __attribute__((no_sanitize("vptr")))
KT_NO_VPTR int be_upload(DeviceBackend* b, uint32_t v, const float* x, int64_t T, std::string* err) {
  return b->upload(v, x, T, err);
}
KT_NO_VPTR int be_run(DeviceBackend* b, size_t i, int64_t T, int64_t pos0, std::string* err) {
  return b->run(i, T, pos0, err);
}
KT_NO_VPTR int be_download(DeviceBackend* b, uint32_t v, float* x, int64_t T, std::string* err) {
  return b->download(v, x, T, err);
}

// ------------------------------------------------------------------ artifacts

/// Llama weights from integer draws only (no libm on the way: the golden hash must not depend on
/// the platform's log / sqrt behind std::normal_distribution).
Weights int_weights(const LlamaCfg& c, uint32_t seed) {
  std::mt19937 rng(seed);
  const Weights shape = random_llama(c, 1);
  Weights w;
  for (const auto& kv : shape) {
    std::vector<float> v(kv.second.size());
    const bool norm = kv.first.find("norm") != std::string::npos;
    for (float& x : v) {
      const int d = int(rng() % 2001u) - 1000;
      x = norm ? 1.0f + float(d) / 4096.f : float(d) / 2048.f;
    }
    w[kv.first] = v;
  }
  return w;
}

/// build_llama with every layer matrix qsym `attn_bits` (attention) / `ffn_bits` (FFN), one f16 scale
/// per output channel (group = cols); the embedding table (tied classifier) stays f32. Every op but
/// the Embedding and the classifier is placed on the NPU (ops 1 .. n-2).
art::ArtifactBuilder llama_builder(const LlamaCfg& c, const Weights& w, uint32_t attn_bits, uint32_t ffn_bits,
                                   uint32_t group_override = 0) {
  std::map<std::string, MatPrecision> ov;
  const uint32_t D = uint32_t(c.dim), F = uint32_t(c.hidden);
  for (int l = 0; l < c.layers; ++l) {
    auto q = [&](const char* n, uint32_t bits, uint32_t cols) {
      ov[lname(l, n)] = MatPrecision{fmt::DType::kQSym, group_override ? group_override : cols,
                                     fmt::make_qflags(bits, fmt::ScaleFormat::kF16)};
    };
    q("attention.wq.weight", attn_bits, D);
    q("attention.wk.weight", attn_bits, D);
    q("attention.wv.weight", attn_bits, D);
    q("attention.wo.weight", attn_bits, D);
    q("feed_forward.w1.weight", ffn_bits, D);
    q("feed_forward.w3.weight", ffn_bits, D);
    q("feed_forward.w2.weight", ffn_bits, F);
  }
  art::ArtifactBuilder b;
  build_llama(b, c, w, fmt::DType::kF32, 32, true, 0, ov);
  for (size_t i = 1; i + 1 < b.ops().size(); ++i) b.ops()[i].backend = fmt::Backend::kNpu;
  return b;
}

struct Opened {
  TempDir dir;
  kerf_model* m = nullptr;
  std::string path;
  ~Opened() { kerf_model_close(m); }
};
std::unique_ptr<Opened> open_builder(const art::ArtifactBuilder& b) {
  auto o = std::make_unique<Opened>();
  o->path = o->dir.file("m.kerf");
  const std::string e = b.write(o->path);
  REQUIRE(e == "");
  std::string msg;
  REQUIRE(open_status(o->path, KERF_OPEN_VERIFY_DATA, &msg, &o->m) == KERF_OK);
  return o;
}

/// Drives the NPU backend of a session of `m` (ops 1..n-2 placed on the NPU; the executor made and
/// prepared the backend) directly: Embedding rows from the f32 table are uploaded, ops 1..n-2 run on
/// the NPU, the final norm is downloaded and the classifier runs on the CPU with the reference kernel.
struct NpuDriver {
  const kerf_model* m;
  kerf_session* s = nullptr;
  DeviceBackend* b = nullptr;
  int pos = 0;
  NpuDriver(const kerf_model* mm, std::string* err, int* rc) : m(mm) {
    char msg[1024] = {0};
    *rc = kerf_session_create_ex(m, 0, 0, &s, msg, sizeof msg);
    *err = msg;
    if (s) b = s->dev[KERF_UNIT_NPU].get();
    if (*rc == KERF_OK) REQUIRE(b);
  }
  ~NpuDriver() { kerf_session_free(s); }
  /// Runs tokens at the current position; returns the final-norm rows [T, D] (dequantized).
  std::vector<float> eval(const int32_t* tok, int T) {
    const kerf::rt::OpInfo& emb = m->ops.front();
    const kerf::rt::WeightView table = m->tensors[emb.inputs[1] & ~fmt::kRefTensorBit].view();
    const int64_t D = table.cols;
    std::vector<float> x(size_t(T * D));
    for (int t = 0; t < T; ++t) kerf::rt::dequant_row(table, tok[t], x.data() + t * D);
    std::string err;
    REQUIRE(be_upload(b, emb.output, x.data(), T, &err) == KERF_OK);
    for (size_t i = 1; i + 1 < m->ops.size(); ++i) {
      INFO(err);
      REQUIRE(be_run(b, i, T, pos, &err) == KERF_OK);
    }
    std::vector<float> h(size_t(T * D));
    REQUIRE(be_download(b, m->ops.back().inputs[0], h.data(), T, &err) == KERF_OK);
    pos += T;
    return h;
  }
  /// Classifier on the CPU (reference linear over the f32 tied table).
  std::vector<float> logits(const std::vector<float>& h, int T) const {
    const kerf::rt::WeightView table = m->tensors[m->ops.back().inputs[1] & ~fmt::kRefTensorBit].view();
    std::vector<float> out(size_t(T) * size_t(table.rows)), row(size_t(table.cols));
    kerf::rt::linear(table, h.data(), T, out.data(), row.data());
    return out;
  }
  std::vector<int16_t> codes(uint32_t v, int T) {
    std::vector<int16_t> c(size_t(T) * m->values[v].width);
    std::string err;
    REQUIRE(npu::read_codes(b, v, T, c.data(), &err) == KERF_OK);
    return c;
  }
};

/// {f32 scale, u32 bits} records.
std::vector<uint8_t> act_blob(const std::vector<std::pair<float, uint32_t>>& recs) {
  std::vector<uint8_t> out(recs.size() * 8);
  for (size_t v = 0; v < recs.size(); ++v) {
    std::memcpy(out.data() + 8 * v, &recs[v].first, 4);
    std::memcpy(out.data() + 8 * v + 4, &recs[v].second, 4);
  }
  return out;
}

std::vector<std::string> stories() {
  const std::vector<uint8_t> b = read_file(shared_path("text/tinystories_valid_800.txt"));
  std::vector<std::string> out;
  std::string cur, line;
  auto flush = [&] {
    const size_t a = cur.find_first_not_of(" \t\r\n");
    if (a != std::string::npos) out.push_back(cur.substr(a, cur.find_last_not_of(" \t\r\n") - a + 1));
    cur.clear();
  };
  size_t at = 0;
  while (at < b.size()) {
    size_t e = at;
    while (e < b.size() && b[e] != '\n') ++e;
    line.assign(reinterpret_cast<const char*>(b.data()) + at, e - at);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "<|endoftext|>") flush();
    else cur += line + "\n";
    at = e + 1;
  }
  flush();
  return out;
}

std::vector<int32_t> tokenize(const kerf_model* m, const std::string& text, int max_len) {
  std::vector<int32_t> t(text.size() + 8);
  int n = 0;
  REQUIRE(kerf_tokenize(m, text.c_str(), 1, t.data(), int(t.size()), &n) == KERF_OK);
  t.resize(size_t(std::min(n, max_len)));
  return t;
}

struct Agreement {
  double kl = 0.0;  ///< mean KL(p_ref || p)
  double top1 = 0.0;
  size_t n = 0;
};
void accumulate(Agreement* a, const float* ref, const float* got, int V) {
  double mr = ref[0], mg = got[0];
  int ar = 0, ag = 0;
  for (int k = 1; k < V; ++k) {
    if (ref[k] > mr) { mr = ref[k]; ar = k; }
    if (got[k] > mg) { mg = got[k]; ag = k; }
  }
  double zr = 0, zg = 0;
  for (int k = 0; k < V; ++k) {
    zr += std::exp(ref[k] - mr);
    zg += std::exp(got[k] - mg);
  }
  const double lzr = std::log(zr), lzg = std::log(zg);
  double kl = 0;
  for (int k = 0; k < V; ++k) {
    const double lr = ref[k] - mr - lzr, lg = got[k] - mg - lzg;
    kl += std::exp(lr) * (lr - lg);
  }
  a->kl += kl;
  a->top1 += ar == ag ? 1.0 : 0.0;
  a->n += 1;
}

bool report() { return std::getenv("KERF_NPU_REPORT") != nullptr; }

}  // namespace

// ==================================================================== primitives

TEST_CASE("npu: SaturatingRoundingDoublingHighMul and RoundingDivideByPOT against int128 references", "[npu]") {
  const int32_t edges[] = {INT32_MIN, INT32_MIN + 1, -(1 << 30) - 1, -(1 << 30), -(1 << 30) + 1, -65536, -3, -2, -1,
                           0, 1, 2, 3, 65536, (1 << 30) - 1, 1 << 30, (1 << 30) + 1, INT32_MAX - 1, INT32_MAX};
  for (int32_t a : edges)
    for (int32_t b : edges) {
      INFO(a << " * " << b);
      REQUIRE(npu::srdhm(a, b) == ref_srdhm(a, b));
    }
  CHECK(npu::srdhm(INT32_MIN, INT32_MIN) == INT32_MAX);  // the one saturating case
  // ties: a * b / 2^31 = +-0.5, +-1.5 round toward +infinity (gemmlowp's nudge)
  CHECK(npu::srdhm(1 << 30, 1) == 1);
  CHECK(npu::srdhm(-(1 << 30), 1) == 0);
  CHECK(npu::srdhm(3 << 29, 2) == 2);
  CHECK(npu::srdhm(-(3 << 29), 2) == -1);
  std::mt19937_64 rng(7);
  for (int k = 0; k < 300000; ++k) {
    const int32_t a = int32_t(uint32_t(rng())), b = int32_t(uint32_t(rng()) >> (rng() % 32));
    if (npu::srdhm(a, b) != ref_srdhm(a, b)) FAIL(a << " * " << b);
  }
  // RoundingDivideByPOT: exhaustive over x in [-2^13, 2^13] and every exponent, then random / edges.
  for (int e = 0; e <= 31; ++e) {
    for (int32_t x = -8192; x <= 8192; ++x)
      if (npu::rounding_divide_by_pot(x, e) != int32_t(ref_rhaz(x, e))) FAIL(x << " >> " << e);
    for (int32_t x : edges) REQUIRE(npu::rounding_divide_by_pot(x, e) == int32_t(ref_rhaz(x, e)));
    for (int k = 0; k < 5000; ++k) {
      const int32_t x = int32_t(uint32_t(rng()));
      if (npu::rounding_divide_by_pot(x, e) != int32_t(ref_rhaz(x, e))) FAIL(x << " >> " << e);
    }
  }
  CHECK(npu::rounding_divide_by_pot(3, 1) == 2);  // 1.5 -> 2, ties away from zero
  CHECK(npu::rounding_divide_by_pot(-3, 1) == -2);
  CHECK(npu::rounding_divide_by_pot(5, 1) == 3);
  CHECK(npu::rounding_divide_by_pot(-5, 2) == -1);  // -1.25
  // the int64 version
  for (int n = 0; n <= 62; ++n)
    for (int k = 0; k < 2000; ++k) {
      const int64_t x = int64_t(rng()) >> (rng() % 64);
      if (npu::rshift_rhaz(x, n) != int64_t(ref_rhaz(x, n))) FAIL(x << " >> " << n);
    }
  CHECK(npu::rshift_rhaz(-(int64_t(3) << 40), 41) == -2);
  CHECK(npu::rshift_rhaz(INT64_MAX, 62) == 2);
  CHECK(npu::rshift_rhaz(INT64_MIN, 62) == -2);
}

TEST_CASE("npu: MultiplyByQuantizedMultiplier, mul_round_shift and QuantizeMultiplier", "[npu]") {
  std::mt19937_64 rng(11);
  // TFLite MBQM: the composition of the references; saturation of the left shift.
  for (int shift = -31; shift <= 31; ++shift)
    for (int k = 0; k < 5000; ++k) {
      const int32_t x = int32_t(uint32_t(rng())) >> (rng() % 32);
      const int32_t m = int32_t((uint32_t(rng()) >> 1) | 0x40000000u);
      if (npu::multiply_by_quantized_multiplier(x, m, shift) != ref_mbqm(x, m, shift)) FAIL(x << " " << m << " " << shift);
    }
  CHECK(npu::saturating_left_shift(1 << 20, 12) == INT32_MAX);
  CHECK(npu::saturating_left_shift(-(1 << 20), 11) == INT32_MIN);
  CHECK(npu::saturating_left_shift(-(1 << 20), 10) == -(1 << 30));
  CHECK(npu::multiply_by_quantized_multiplier(1 << 20, 1 << 30, 12) == INT32_MAX / 2 + 1);  // saturated, then * 0.5
  // mul_round_shift: exact 96-bit product, one rounding (ties away), int64 saturation.
  for (int right = 0; right <= 127; ++right)
    for (int k = 0; k < 2000; ++k) {
      const int64_t x = int64_t(rng()) >> (rng() % 64);
      const int32_t m = int32_t(uint32_t(rng()) >> (1 + rng() % 31));
      if (npu::mul_round_shift(x, m, right) != ref_mul_round_shift(x, m, right)) FAIL(x << " " << m << " " << right);
    }
  for (int right = 1; right <= 62; ++right) {  // exact ties: x * m = (2k + 1) 2^(right - 1)
    const int64_t x = int64_t(3) << (right - 1);
    CHECK(npu::mul_round_shift(x, 1, right) == 2);
    CHECK(npu::mul_round_shift(-x, 1, right) == -2);
  }
  CHECK(npu::mul_round_shift(INT64_MIN, INT32_MAX, 0) == INT64_MAX * -1);  // saturated magnitude
  CHECK(npu::mul_round_shift(INT64_MAX, INT32_MAX, 30) == INT64_MAX);
  CHECK(npu::mul_round_shift(INT64_MIN, 1 << 30, 94) == -1);       // 2^93 / 2^94 = 0.5: ties away from zero
  CHECK(npu::mul_round_shift(INT64_MIN, 1 << 30, 95) == 0);        // 0.25
  CHECK(npu::mul_round_shift(INT64_MIN, INT32_MAX, 93) == -2);     // -(2 - 2^-30)
  CHECK(npu::mul_round_shift(int64_t(1) << 40, 1 << 30, 127) == 0);
  // QuantizeMultiplier: m in [2^30, 2^31), relative error <= 2^-31.
  for (int k = 0; k < 20000; ++k) {
    const double real = std::ldexp(0.5 + 0.5 * double(rng() >> 11) / 9007199254740992.0, int(rng() % 60) - 30);
    npu::Multiplier mm;
    REQUIRE(npu::quantize_multiplier(real, &mm));
    REQUIRE(mm.m >= (1 << 30));
    const double back = std::ldexp(double(mm.m), mm.shift - 31);
    REQUIRE(std::fabs(back - real) <= std::ldexp(real, -31));
  }
  npu::Multiplier mm;
  REQUIRE(npu::quantize_multiplier(1.0 - std::ldexp(1.0, -33), &mm));  // q * 2^31 rounds to 2^31
  CHECK(mm.m == (1 << 30));
  CHECK(mm.shift == 1);
  REQUIRE(npu::quantize_multiplier(0.0, &mm));
  CHECK((mm.m == 0 && mm.shift == 0));
  REQUIRE(npu::quantize_multiplier(std::ldexp(1.0, -40), &mm));  // below 2^-32: zero
  CHECK(mm.m == 0);
  CHECK_FALSE(npu::quantize_multiplier(-1.0, &mm));
  CHECK_FALSE(npu::quantize_multiplier(std::nan(""), &mm));
  CHECK_FALSE(npu::quantize_multiplier(std::ldexp(1.0, 31), &mm));
  // integer square root
  for (uint64_t n = 0; n < (1u << 16); ++n) {
    const uint64_t r = npu::isqrt_u64(n);
    if (!(r * r <= n && (r + 1) * (r + 1) > n)) FAIL(n);
  }
  for (int k = 0; k < 30000; ++k) {
    const uint64_t n = rng() >> (rng() % 64);
    const u128 r = npu::isqrt_u64(n);
    if (!(r * r <= n && (r + 1) * (r + 1) > n)) FAIL(n);
    const uint64_t q = rng() >> 32;
    CHECK(npu::isqrt_u64(q * q) == q);
    if (q > 0) CHECK(npu::isqrt_u64(q * q - 1) == q - 1);
  }
  CHECK(npu::isqrt_u64(UINT64_MAX) == 0xffffffffu);
  // inverse square root and reciprocal: the definitions, and the values they approximate
  for (int k = 0; k < 30000; ++k) {
    const uint64_t m = std::max<uint64_t>(1, (rng() >> 2) >> (rng() % 62));
    const npu::InvSqrt is = npu::inv_sqrt_q(m);
    REQUIRE((is.k >= 0 && is.k <= 30));
    const u128 n = u128(m) << (2 * is.k);
    REQUIRE((n >= (u128(1) << 60) && n < (u128(1) << 62)));
    const uint64_t r = npu::isqrt_u64(uint64_t(n));
    REQUIRE(is.R == int64_t(((u128(1) << 61) + r / 2) / r));
    REQUIRE(std::fabs(std::ldexp(double(is.R), is.k - 61) * std::sqrt(double(m)) - 1.0) < std::ldexp(1.0, -29));
    const int32_t E = int32_t(std::max<uint64_t>(1, (rng() >> 33) >> (rng() % 31)));
    const npu::Recip rc = npu::recip_q(E);
    REQUIRE(((int64_t(E) << rc.s) >= (int64_t(1) << 30) && (int64_t(E) << rc.s) < (int64_t(1) << 31)));
    REQUIRE(rc.R == int64_t(((u128(1) << 61) - 1) / (u128(E) << rc.s)));
    REQUIRE(std::fabs(std::ldexp(double(rc.R), rc.s - 61) * double(E) - 1.0) < std::ldexp(1.0, -30));
  }
  CHECK(npu::inv_sqrt_q(1).R == (int64_t(1) << 31));
  CHECK(npu::inv_sqrt_q(1).k == 30);
  CHECK(npu::recip_q(1 << 30).R == (int64_t(1) << 31) - 1);
  // upload quantization: ties to even, saturation, NaN
  CHECK(npu::quantize_value(2.5f, 1.f, 127) == 2);
  CHECK(npu::quantize_value(3.5f, 1.f, 127) == 4);
  CHECK(npu::quantize_value(-2.5f, 1.f, 127) == -2);
  CHECK(npu::quantize_value(0.75f, 0.5f, 127) == 2);
  CHECK(npu::quantize_value(1000.f, 1.f, 127) == 127);
  CHECK(npu::quantize_value(-1e9f, 1.f, 32767) == -32767);
  CHECK(npu::quantize_value(INFINITY, 1.f, 127) == 127);
  CHECK(npu::quantize_value(std::nanf(""), 1.f, 127) == 0);
}

TEST_CASE("npu: deterministic tables (exp, log, exp2, CORDIC, RoPE phases, SiLU)", "[npu]") {
  for (double x = -740.0; x <= 709.0; x += 0.173) {
    const double e = std::exp(x), d = npu::det_exp(x);
    if (std::fabs(d - e) > 4e-16 * e + 1e-320) FAIL(x << ": " << d << " vs " << e);
  }
  for (double x = -1.0; x <= 1.0; x += 1.0 / 1024) REQUIRE(std::fabs(npu::det_exp(x) - std::exp(x)) <= 4e-16 * std::exp(x));
  CHECK(npu::det_exp(0.0) == 1.0);
  CHECK(std::isinf(npu::det_exp(800.0)));
  CHECK(npu::det_exp(-800.0) == 0.0);
  for (double x = 1e-300; x < 1e300; x *= 1.37) {
    const double l = std::log(x);
    if (std::fabs(npu::det_log(x) - l) > 4e-16 * std::fabs(l) + 1e-300) FAIL(x);
  }
  CHECK(npu::det_log(1.0) == 0.0);
  // exp2 tables: within one Q30 unit of the exact value.
  const npu::Exp2Tables& t = npu::exp2_tables();
  CHECK(t.hi[0] == (1u << 30));
  CHECK(t.lo[0] == (1u << 30));
  for (int j = 0; j < 256; ++j) {
    CHECK(std::fabs(double(t.hi[j]) - std::ldexp(std::exp2(-j / 256.0), 30)) <= 1.0);
    CHECK(std::fabs(double(t.lo[j]) - std::ldexp(std::exp2(-j / 65536.0), 30)) <= 1.0);
  }
  double worst = 0;
  for (uint32_t f = 0; f < 65536; ++f)
    worst = std::max(worst, std::fabs(double(npu::exp2_neg_q16(f)) - std::ldexp(std::exp2(-double(f) / 65536.0), 30)));
  CHECK(worst <= 2.0);
  // CORDIC: |error| <= 2 / 2^30 over quarter turns, their neighbours and random phases.
  std::mt19937 rng(5);
  std::vector<uint32_t> phases = {0u, 1u << 30, 2u << 30, 3u << 30, (1u << 29), (1u << 29) - 1, (1u << 29) + 1,
                                  UINT32_MAX, 0x12345678u};
  for (int k = 0; k < 30000; ++k) phases.push_back(uint32_t(rng()));
  double cw = 0;
  for (uint32_t ph : phases) {
    int32_t c, s;
    npu::cordic_cos_sin(ph, &c, &s);
    const double a = double(ph) * (2.0 * M_PI / 4294967296.0);
    cw = std::max({cw, std::fabs(c - std::ldexp(std::cos(a), 30)), std::fabs(s - std::ldexp(std::sin(a), 30))});
  }
  CHECK(cw <= 2.0);
  // RoPE phase increments: theta^(-2i/d) / (2 pi) turns, 2^-50 relative.
  for (int64_t d : {8, 64, 128})
    for (int64_t i = 0; i < d / 2; ++i) {
      const double turns = std::ldexp(double(npu::rope_phase_inc(i, d, 10000.0)), -64);
      const double want = std::pow(10000.0, -2.0 * double(i) / double(d)) / (2.0 * M_PI);
      REQUIRE(std::fabs(turns - want) <= want * 1e-14);
    }
  CHECK(npu::rope_phase(1, npu::rope_phase_inc(0, 8, 10000.0)) == uint32_t(std::llround(4294967296.0 / (2 * M_PI))));
  // SiLU tables: 8 bits exact to the Q8 rounding; 16 bits within the interpolation bound.
  std::vector<int32_t> lut;
  const float s8 = 8.f / 127.f;
  npu::silu_lut(s8, 8, &lut);
  REQUIRE(lut.size() == 256);
  for (int c = -127; c <= 127; ++c)
    REQUIRE(std::fabs(double(npu::silu_eval(lut.data(), 8, c)) - 256.0 * silu(c * double(s8)) / double(s8)) <= 0.5 + 1e-9);
  for (float s16 : {8.f / 32767.f, 40.f / 32767.f}) {
    npu::silu_lut(s16, 16, &lut);
    REQUIRE(lut.size() == 513);
    const double h = 128.0 * double(s16), bound_real = h * h / 16.0 + double(s16) / 256.0;  // max|silu''| = 1/2
    for (int c = -32767; c <= 32767; ++c) {
      const double got = double(npu::silu_eval(lut.data(), 16, c)) / 256.0 * double(s16);
      if (std::fabs(got - silu(c * double(s16))) > bound_real + 1e-12) FAIL(c);
    }
  }
}

// ==================================================================== kernels vs float

TEST_CASE("npu: Linear kernel against the float product (A8 / A16, W8 / W4)", "[npu]") {
  std::mt19937 rng(21);
  for (int in_bits : {8, 16})
    for (int wbits : {4, 8})
      for (int out_bits : {8, 16}) {
        const int64_t T = 3, K = 37, N = 11;
        const int32_t qx = npu::qmax_of(in_bits), qy = npu::qmax_of(out_bits), wl = 1 << (wbits - 1);
        const float sx = 1.5f / float(qx);
        std::vector<int16_t> x(size_t(T * K));
        for (auto& v : x) v = int16_t(int32_t(rng() % uint32_t(2 * qx + 1)) - qx);
        std::vector<int8_t> w(size_t(N * K));
        for (auto& v : w) v = int8_t(int32_t(rng() % uint32_t(2 * wl)) - wl);
        std::vector<float> sw(static_cast<size_t>(N));
        for (auto& s : sw) s = fmt::f16_to_f32(fmt::f32_to_f16(0.001f + float(rng() % 1000) * 5e-5f));
        std::vector<double> ref(size_t(T * N));
        double ymax = 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            int64_t acc = 0;
            for (int64_t k = 0; k < K; ++k) acc += int64_t(x[size_t(t * K + k)]) * w[size_t(n * K + k)];
            ref[size_t(t * N + n)] = double(acc) * double(sx) * double(sw[size_t(n)]);
            ymax = std::max(ymax, std::fabs(ref[size_t(t * N + n)]));
          }
        const float sy = float(ymax / qy * 1.001);
        std::vector<npu::Multiplier> mul(static_cast<size_t>(N));
        for (int64_t n = 0; n < N; ++n)
          REQUIRE(npu::quantize_multiplier(double(sx) * double(sw[size_t(n)]) / double(sy), &mul[size_t(n)]));
        std::vector<int16_t> y(size_t(T * N));
        npu::linear(x.data(), T, K, in_bits, w.data(), N, mul.data(), out_bits, y.data());
        // A16 (one rounding): 1/2 step; A8 (TFLite's two roundings): 1/2 + 1/2^(right shift + 1) <= 1 step.
        for (size_t k = 0; k < y.size(); ++k) {
          const double r = ref[k] / double(sy);
          const double tol = (in_bits == 16 ? 0.5 : 1.0) + std::fabs(r) * std::ldexp(1.0, -29);
          INFO("A" << in_bits << " W" << wbits << " out" << out_bits << " #" << k << ": " << y[k] << " vs " << r);
          REQUIRE(std::fabs(double(y[k]) - r) <= tol);
        }
      }
}

TEST_CASE("npu: RMSNorm kernel against the float norm", "[npu]") {
  std::mt19937 rng(22);
  for (int in_bits : {8, 16})
    for (int out_bits : {8, 16}) {
      const int64_t T = 5, D = 48;
      const int32_t qx = npu::qmax_of(in_bits), qy = npu::qmax_of(out_bits);
      const float sx = 3.f / float(qx);
      const double eps = 1e-5;
      std::vector<int16_t> x(size_t(T * D));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < D; ++i) {
          const int32_t range = t == 0 ? 0 : t == 1 ? 2 : t == 2 ? qx / 50 : qx;  // a zero row, tiny rows (eps matters)
          x[size_t(t * D + i)] = int16_t(range ? int32_t(rng() % uint32_t(2 * range + 1)) - range : 0);
        }
      std::vector<float> gamma(static_cast<size_t>(D));
      for (auto& g : gamma) g = float(int(rng() % 4001) - 2000) / 1000.f;
      std::vector<double> ref(size_t(T * D));
      double ymax = 0;
      for (int64_t t = 0; t < T; ++t) {
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += std::pow(double(x[size_t(t * D + i)]) * sx, 2);
        const double inv = 1.0 / std::sqrt(ss / double(D) + eps);
        for (int64_t i = 0; i < D; ++i) {
          ref[size_t(t * D + i)] = double(gamma[size_t(i)]) * double(x[size_t(t * D + i)]) * sx * inv;
          ymax = std::max(ymax, std::fabs(ref[size_t(t * D + i)]));
        }
      }
      const float sy = float(ymax / qy * 1.001);
      std::vector<npu::Multiplier> g(static_cast<size_t>(D));
      std::vector<uint8_t> neg(static_cast<size_t>(D));
      for (int64_t i = 0; i < D; ++i) {
        neg[size_t(i)] = gamma[size_t(i)] < 0;
        REQUIRE(npu::quantize_multiplier(std::fabs(double(gamma[size_t(i)])) / double(sy), &g[size_t(i)]));
      }
      std::vector<int16_t> y(size_t(T * D));
      npu::rmsnorm(x.data(), T, D, npu::rmsnorm_eps_q30(eps, sx), g.data(), neg.data(), out_bits, y.data());
      for (size_t k = 0; k < y.size(); ++k) {
        const double r = ref[k] / double(sy);
        INFO("A" << in_bits << " out" << out_bits << " #" << k << ": " << y[k] << " vs " << r);
        REQUIRE(std::fabs(double(y[k]) - r) <= 0.5 + std::fabs(r) * 2e-7);
      }
      for (int64_t i = 0; i < D; ++i) CHECK(y[size_t(i)] == 0);  // the zero row
    }
}

TEST_CASE("npu: Rotary kernel against cos / sin in double", "[npu]") {
  std::mt19937 rng(23);
  for (int bits : {8, 16})
    for (bool inter : {true, false})
      for (int64_t pos0 : {int64_t(0), int64_t(7), int64_t(123457)}) {
        const int64_t T = 3, Dh = 8, W = 2 * Dh;
        const double theta = 10000.0;
        const int32_t q = npu::qmax_of(bits);
        const float sx = 2.f / float(q), sy = 3.f / float(q);  // |rotated| <= sqrt(2) * 2 < 3
        std::vector<int16_t> x(size_t(T * W)), y(size_t(T * W));
        for (auto& v : x) v = int16_t(int32_t(rng() % uint32_t(2 * q + 1)) - q);
        std::vector<uint64_t> inc(size_t(Dh / 2));
        for (int64_t i = 0; i < Dh / 2; ++i) inc[size_t(i)] = npu::rope_phase_inc(i, Dh, theta);
        npu::Multiplier mul;
        REQUIRE(npu::quantize_multiplier(double(sx) / double(sy), &mul));
        npu::rotary(x.data(), y.data(), T, W, Dh, inter, pos0, inc.data(), mul, bits);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t h = 0; h < 2; ++h)
            for (int64_t i = 0; i < Dh / 2; ++i) {
              const double ang = double(pos0 + t) * std::pow(theta, -2.0 * double(i) / double(Dh));
              const int64_t ia = t * W + h * Dh + (inter ? 2 * i : i), ib = t * W + h * Dh + (inter ? 2 * i + 1 : i + Dh / 2);
              const double a = x[size_t(ia)] * double(sx), b = x[size_t(ib)] * double(sx);
              const double ra = (a * std::cos(ang) - b * std::sin(ang)) / sy, rb = (a * std::sin(ang) + b * std::cos(ang)) / sy;
              const double tol = 0.5 + (std::fabs(a) + std::fabs(b)) / sy * 2e-8;
              INFO("bits " << bits << " pos " << pos0 + t << " pair " << i);
              REQUIRE(std::fabs(y[size_t(ia)] - ra) <= tol);
              REQUIRE(std::fabs(y[size_t(ib)] - rb) <= tol);
            }
      }
}

TEST_CASE("npu: Attention kernel against the float softmax (GQA, causal / not, a cache prefix)", "[npu]") {
  std::mt19937 rng(24);
  for (int bits : {8, 16})
    for (bool causal : {true, false}) {
      const int64_t H = 4, G = 2, Dh = 8, T = 4, pos0 = 5, n_ctx = 16, qw = H * Dh, kvw = G * Dh;
      const int32_t q = npu::qmax_of(bits);
      const float sq = 2.f / float(q), sk = 2.5f / float(q), sv = 1.f / float(q), so = 1.f / float(q);
      const double scale = 1.0 / std::sqrt(double(Dh));
      auto draw = [&](std::vector<int16_t>& v) {
        for (auto& c : v) c = int16_t(int32_t(rng() % uint32_t(2 * q + 1)) - q);
      };
      std::vector<int16_t> qc(size_t(T * qw)), kc(size_t(n_ctx * kvw)), vc(size_t(n_ctx * kvw)), out(size_t(T * qw));
      draw(qc);
      draw(kc);
      draw(vc);
      npu::AttnParams p;
      p.n_heads = H;
      p.n_kv_heads = G;
      p.head_dim = Dh;
      p.causal = causal;
      p.out_bits = bits;
      REQUIRE(npu::quantize_multiplier(scale * sq * sk * 1.4426950408889634 * 65536.0, &p.logit));
      REQUIRE(npu::quantize_multiplier(double(sv) / double(so), &p.out));
      std::vector<int32_t> scratch(size_t(2 * (pos0 + T)));
      npu::attention(p, qc.data(), T, pos0, kc.data(), vc.data(), out.data(), scratch.data());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t g = h / (H / G), n = causal ? pos0 + t + 1 : pos0 + T;
          std::vector<double> sc(static_cast<size_t>(n));
          double mx = -1e300, sum = 0;
          for (int64_t j = 0; j < n; ++j) {
            double d = 0;
            for (int64_t e = 0; e < Dh; ++e)
              d += qc[size_t(t * qw + h * Dh + e)] * double(sq) * kc[size_t(j * kvw + g * Dh + e)] * double(sk);
            sc[size_t(j)] = d * scale;
            mx = std::max(mx, sc[size_t(j)]);
          }
          for (auto& v : sc) sum += (v = std::exp(v - mx));
          for (int64_t e = 0; e < Dh; ++e) {
            double o = 0;
            for (int64_t j = 0; j < n; ++j) o += sc[size_t(j)] / sum * vc[size_t(j * kvw + g * Dh + e)] * double(sv);
            // probabilities: Q15 rounding (+ the 32767 clamp) and ~1e-5 relative from the Q16 logits
            const double tol = 0.5 + (1.0 / so) * (2e-5 + double(n + 1) / 65536.0);
            INFO("bits " << bits << " causal " << causal << " t " << t << " h " << h << " d " << e);
            REQUIRE(std::fabs(out[size_t(t * qw + h * Dh + e)] - o / so) <= tol);
          }
        }
    }
}

TEST_CASE("npu: SiLU gate and Add kernels against float", "[npu]") {
  std::mt19937 rng(25);
  for (int hb : {8, 16})
    for (float range : {4.f, 30.f}) {
      const int32_t q = npu::qmax_of(hb);
      const float s1 = range / float(q), s3 = 2.f / float(q);
      std::vector<int16_t> h1, h3;
      for (int32_t c = -q; c <= q; c += (hb == 8 ? 1 : 7)) {
        h1.push_back(int16_t(c));
        h3.push_back(int16_t(int32_t(rng() % uint32_t(2 * q + 1)) - q));
      }
      double gmax = 0;
      for (size_t i = 0; i < h1.size(); ++i) gmax = std::max(gmax, std::fabs(silu(h1[i] * double(s1)) * h3[i] * s3));
      const float sg = float(gmax / q * 1.001);
      std::vector<int32_t> lut;
      npu::silu_lut(s1, hb, &lut);
      npu::Multiplier mul;
      REQUIRE(npu::quantize_multiplier(double(s1) * double(s3) / double(sg), &mul));
      std::vector<int16_t> g(h1.size());
      npu::silu_mul(h1.data(), h3.data(), int64_t(h1.size()), lut.data(), hb, mul, hb, g.data());
      const double h = 128.0 * s1, eps_silu = hb == 8 ? s1 / 512.0 : h * h / 16.0 + s1 / 256.0;
      for (size_t i = 0; i < g.size(); ++i) {
        const double r = silu(h1[i] * double(s1)) * h3[i] * s3 / sg;
        INFO("h bits " << hb << " range " << range << " h1 " << h1[i] << " h3 " << h3[i]);
        REQUIRE(std::fabs(g[i] - r) <= 0.5 + std::fabs(h3[i] * s3) * eps_silu / sg + std::fabs(r) * 1e-8);
      }
    }
  for (int bits : {8, 16}) {
    const int32_t q = npu::qmax_of(bits);
    const float sa = 1.f / float(q), sb = 3.7f / float(q), sy = 4.8f / float(q);
    std::vector<int16_t> a(4000), b(4000), y(4000);
    for (size_t i = 0; i < a.size(); ++i) {
      a[i] = int16_t(int32_t(rng() % uint32_t(2 * q + 1)) - q);
      b[i] = int16_t(int32_t(rng() % uint32_t(2 * q + 1)) - q);
    }
    npu::Multiplier ma, mb;
    REQUIRE(npu::quantize_multiplier(double(sa) / double(sy), &ma));
    REQUIRE(npu::quantize_multiplier(double(sb) / double(sy), &mb));
    npu::add(a.data(), b.data(), int64_t(a.size()), ma, mb, bits, y.data());
    for (size_t i = 0; i < a.size(); ++i) {
      const double r = (a[i] * double(sa) + b[i] * double(sb)) / sy;
      REQUIRE(std::fabs(y[i] - r) <= 0.5 + std::ldexp(1.0, -15) + std::fabs(r) * 1e-9);
    }
  }
}

// ==================================================================== the backend

namespace {

/// A small Llama (integer-drawn weights) with calibrated scales: the base for the backend tests.
struct Small {
  LlamaCfg c{16, 40, 2, 4, 2, 64, 32};
  Weights w = int_weights(c, 3);
  std::vector<uint8_t> act, ops;
  std::vector<std::vector<int32_t>> seqs;
  Small() {
    std::mt19937 rng(9);
    for (int q = 0; q < 3; ++q) {
      std::vector<int32_t> s(20);
      for (auto& t : s) t = int32_t(rng() % 64u);
      seqs.push_back(s);
    }
    auto base = open_builder(llama_builder(c, w, 8, 4));
    std::string err;
    REQUIRE(kerf::rt::npu_calibrate(base->m, seqs, 8, &act, &ops, &err) == KERF_OK);
  }
};

int prepare_status(const kerf_model* m, std::string* err) {
  int rc = 0;
  NpuDriver d(m, err, &rc);
  return rc;
}

}  // namespace

TEST_CASE("npu: calibration blobs and their validation in prepare", "[npu]") {
  Small sm;
  auto base = open_builder(llama_builder(sm.c, sm.w, 8, 4));
  const kerf_model* m0 = base->m;
  REQUIRE(sm.act.size() == 8 * m0->values.size());
  REQUIRE(sm.ops.size() == 16 * m0->ops.size());
  for (size_t v = 0; v < m0->values.size(); ++v) {
    float sc;
    uint32_t bits;
    std::memcpy(&sc, sm.act.data() + 8 * v, 4);
    std::memcpy(&bits, sm.act.data() + 8 * v + 4, 4);
    INFO(m0->values[v].name);
    if (v == m0->input_value) {
      CHECK((sc == 0.f && bits == 0));
    } else {
      CHECK(bits == 8);
      CHECK((std::isfinite(sc) && sc > 0.f));
    }
  }
  for (size_t i = 0; i < m0->ops.size(); ++i) {
    float r[4];
    std::memcpy(r, sm.ops.data() + 16 * i, 16);
    if (m0->ops[i].op == fmt::OpCode::kGatedFFN) CHECK((r[0] > 0.f && r[1] > 0.f && r[2] > 0.f && r[3] == 8.f));
    else CHECK((r[0] == 0.f && r[1] == 0.f && r[2] == 0.f && r[3] == 0.f));
  }
  // absmax: the scale of x.embed is max |embedding row| / 127 over the tokens seen.
  {
    float sc;
    std::memcpy(&sc, sm.act.data() + 8 * m0->ops[0].output, 4);
    const std::vector<float>& tab = sm.w.at("tok_embeddings.weight");
    float amax = 0;
    for (const auto& s : sm.seqs)
      for (int32_t t : s)
        for (int k = 0; k < sm.c.dim; ++k) amax = std::max(amax, std::fabs(tab[size_t(t * sm.c.dim + k)]));
    CHECK(sc == float(double(amax) / 127.0));
  }

  auto with = [&](const art::ArtifactBuilder& b0, const std::vector<uint8_t>* act, const std::vector<uint8_t>* ops) {
    art::ArtifactBuilder b = b0;
    if (act) b.add_meta_bytes(fmt::meta::kNpuActScales, *act);
    if (ops) b.add_meta_bytes(fmt::meta::kNpuOpScales, *ops);
    return open_builder(b);
  };
  const art::ArtifactBuilder good = llama_builder(sm.c, sm.w, 8, 4);
  std::string err;
  {
    auto o = with(good, &sm.act, &sm.ops);
    CHECK(prepare_status(o->m, &err) == KERF_OK);
  }
  SECTION("weights: per-group scales, asymmetric codes, f32 are unsupported, by op and tensor") {
    auto o = with(llama_builder(sm.c, sm.w, 8, 4, 8), &sm.act, &sm.ops);
    CHECK(prepare_status(o->m, &err) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(err, Catch::Contains("Linear 'l0.wq' (op #2)") && Catch::Contains("layers.0.attention.wq.weight") &&
                        Catch::Contains("qsym8/f16 g8") && Catch::Contains("group_size == cols = 16"));
    art::ArtifactBuilder b = good;
    for (auto& t : b.tensors())
      if (t.name == "layers.1.feed_forward.w3.weight")
        t = matrix(t.name, sm.c.hidden, sm.c.dim, sm.w.at(t.name), fmt::DType::kQAsym, uint32_t(sm.c.dim),
                   fmt::make_qflags(4, fmt::ScaleFormat::kF16));
    auto o2 = with(b, &sm.act, &sm.ops);
    CHECK(prepare_status(o2->m, &err) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(err, Catch::Contains("GatedFFN 'l1.ffn'") && Catch::Contains("w3 weight 'layers.1.feed_forward.w3.weight' is qasym4"));
    art::ArtifactBuilder b3;
    build_llama(b3, sm.c, sm.w);  // every matrix f32
    for (size_t i = 1; i + 1 < b3.ops().size(); ++i) b3.ops()[i].backend = fmt::Backend::kNpu;
    auto o3 = with(b3, &sm.act, &sm.ops);
    CHECK(prepare_status(o3->m, &err) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(err, Catch::Contains("weight 'layers.0.attention.wq.weight' is f32"));
  }
  SECTION("activation scales: missing, short, NaN, zero bits") {
    auto o = with(good, nullptr, &sm.ops);
    CHECK(prepare_status(o->m, &err) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(err, Catch::Contains("'npu.act_scales' is missing"));
    std::vector<uint8_t> shorter(sm.act.begin(), sm.act.end() - 8);
    auto o2 = with(good, &shorter, &sm.ops);
    CHECK(prepare_status(o2->m, &err) == KERF_ERR_CORRUPT);
    CHECK_THAT(err, Catch::Contains("npu.act_scales") && Catch::Contains("8 per value"));
    const uint32_t v = base->m->ops[2].output;  // l0.q
    std::vector<uint8_t> nan = sm.act;
    const float qnan = std::nanf("");
    std::memcpy(nan.data() + 8 * v, &qnan, 4);
    auto o3 = with(good, &nan, &sm.ops);
    CHECK(prepare_status(o3->m, &err) == KERF_ERR_CORRUPT);
    CHECK_THAT(err, Catch::Contains("'l0.q'") && Catch::Contains("scale nan"));
    std::vector<uint8_t> zero_bits = sm.act;
    std::memset(zero_bits.data() + 8 * v + 4, 0, 4);
    auto o4 = with(good, &zero_bits, &sm.ops);
    CHECK(prepare_status(o4->m, &err) == KERF_ERR_CORRUPT);
    CHECK_THAT(err, Catch::Contains("'l0.q'") && Catch::Contains("bits 0"));
  }
  SECTION("op scales: missing, short, NaN, bad bits") {
    auto o = with(good, &sm.act, nullptr);
    CHECK(prepare_status(o->m, &err) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(err, Catch::Contains("'npu.op_scales' is missing"));
    std::vector<uint8_t> shorter(sm.ops.begin(), sm.ops.end() - 4);
    auto o2 = with(good, &sm.act, &shorter);
    CHECK(prepare_status(o2->m, &err) == KERF_ERR_CORRUPT);
    size_t ffn = 0;
    while (base->m->ops[ffn].op != fmt::OpCode::kGatedFFN) ++ffn;
    std::vector<uint8_t> nan = sm.ops;
    const float qnan = std::nanf("");
    std::memcpy(nan.data() + 16 * ffn + 4, &qnan, 4);
    auto o3 = with(good, &sm.act, &nan);
    CHECK(prepare_status(o3->m, &err) == KERF_ERR_CORRUPT);
    CHECK_THAT(err, Catch::Contains("GatedFFN 'l0.ffn'") && Catch::Contains("h3 = w3 x"));
    std::vector<uint8_t> bits = sm.ops;
    const float twelve = 12.f;
    std::memcpy(bits.data() + 16 * ffn + 12, &twelve, 4);
    auto o4 = with(good, &sm.act, &bits);
    CHECK(prepare_status(o4->m, &err) == KERF_ERR_CORRUPT);
    CHECK_THAT(err, Catch::Contains("bits of the internals are 12"));
  }
  SECTION("Embedding on the NPU is unsupported, by name") {
    art::ArtifactBuilder b = good;
    b.ops()[0].backend = fmt::Backend::kNpu;
    auto o = with(b, &sm.act, &sm.ops);
    CHECK(prepare_status(o->m, &err) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(err, Catch::Contains("Embedding 'embed' (op #0) is not supported on the NPU"));
  }
  SECTION("the session's message names the unit and its device") {
    auto o = with(good, nullptr, &sm.ops);
    kerf_session* s = nullptr;
    char msg[512] = {0};
    CHECK(kerf_session_create_ex(o->m, 0, 0, &s, msg, sizeof msg) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(std::string(msg), Catch::Contains("npu (NPU reference") && Catch::Contains("'npu.act_scales' is missing"));
    CHECK(s == nullptr);
    REQUIRE(kerf_session_create_ex(o->m, 0, KERF_SESSION_CPU_ONLY, &s, msg, sizeof msg) == KERF_OK);  // the override
    kerf_session_free(s);
  }
}

TEST_CASE("npu: prefill == token-by-token decode, and the executor's dispatch gives the same bits", "[npu]") {
  Small sm;
  for (int abits : {8, 16}) {
    std::vector<uint8_t> act = sm.act, ops = sm.ops;
    std::string err;
    if (abits == 16) {
      auto base = open_builder(llama_builder(sm.c, sm.w, 8, 4));
      REQUIRE(kerf::rt::npu_calibrate(base->m, sm.seqs, 16, &act, &ops, &err) == KERF_OK);
    }
    art::ArtifactBuilder b = llama_builder(sm.c, sm.w, 8, 4);
    b.add_meta_bytes(fmt::meta::kNpuActScales, act);
    b.add_meta_bytes(fmt::meta::kNpuOpScales, ops);
    auto o = open_builder(b);
    const kerf_model* m = o->m;
    std::vector<int32_t> toks = {1, 5, 9, 33, 2, 17, 60, 4, 4, 12, 40};
    const int T = int(toks.size());
    int rc = 0;
    NpuDriver pre(m, &err, &rc);
    REQUIRE(rc == KERF_OK);
    const std::vector<float> hp = pre.eval(toks.data(), T);
    const uint32_t vout = m->ops.back().inputs[0];
    const std::vector<int16_t> cp = pre.codes(vout, T);
    NpuDriver dec(m, &err, &rc);
    REQUIRE(rc == KERF_OK);
    for (int t = 0; t < T; ++t) {
      dec.eval(toks.data() + t, 1);
      const std::vector<int16_t> c = dec.codes(vout, 1);
      for (int k = 0; k < sm.c.dim; ++k) REQUIRE(c[size_t(k)] == cp[size_t(t * sm.c.dim + k)]);
    }
    // The executor's dispatch of the same artifact (reference kernels for the CPU's Embedding and
    // classifier, so that the classifier is the same code as NpuDriver::logits).
    kerf_session* s = nullptr;
    char msg[512] = {0};
    REQUIRE(kerf_session_create_ex(m, 0, 0, &s, msg, sizeof msg) == KERF_OK);
    REQUIRE(kerf::rt::set_reference_kernels(s, true));
    std::vector<float> lg(size_t(T) * size_t(sm.c.vocab));
    REQUIRE(kerf_session_eval(s, toks.data(), T, lg.data(), 1) == KERF_OK);
    const std::vector<float> want = pre.logits(hp, T);
    for (size_t k = 0; k < lg.size(); ++k) REQUIRE(bits_of(lg[k]) == bits_of(want[k]));
    kerf_unit_stats st{};
    REQUIRE(kerf_session_unit_stats(s, KERF_UNIT_NPU, &st) == KERF_OK);
    CHECK(st.ops == m->ops.size() - 2);
    CHECK(st.uploads == 1);
    CHECK(st.downloads == 1);
    kerf_session_free(s);
  }
}

TEST_CASE("npu: bit-exactness golden hash (x86-64 and aarch64 alike)", "[npu]") {
  // A fixed model (integer-drawn weights: qsym8 attention, qsym4 FFN), fixed scales mixing 8- and
  // 16-bit values, fixed input codes: a prefill of 10 tokens, then 2 decode steps. Everything the
  // arithmetic derives (multipliers, eps, exp2 / SiLU tables, RoPE phases, CORDIC) feeds the codes.
  const LlamaCfg c{16, 40, 2, 4, 2, 32, 16};
  const Weights w = int_weights(c, 12345);
  art::ArtifactBuilder b = llama_builder(c, w, 8, 4);
  std::vector<std::pair<float, uint32_t>> act;
  for (size_t v = 0; v < b.values().size(); ++v) {
    const uint32_t bits = v % 2 == 0 ? 16 : 8;  // the attention outputs (#8, #20) 16-bit: P's rounding shows
    act.push_back(v == b.input_value() ? std::make_pair(0.f, 0u)
                                       : std::make_pair(float(2 + v % 5) / float(npu::qmax_of(int(bits))), bits));
  }
  std::vector<float> op_sc;
  int ffn = 0;
  for (const auto& op : b.ops()) {
    const bool f = op.op == fmt::OpCode::kGatedFFN;
    const int bits = ffn % 2 == 0 ? 8 : 16;
    for (float s : {3.f, 2.f, 1.5f}) op_sc.push_back(f ? s / float(npu::qmax_of(bits)) : 0.f);
    op_sc.push_back(f ? float(bits) : 0.f);
    ffn += f;
  }
  std::vector<uint8_t> opb(op_sc.size() * 4);
  std::memcpy(opb.data(), op_sc.data(), opb.size());
  b.add_meta_bytes(fmt::meta::kNpuActScales, act_blob(act));
  b.add_meta_bytes(fmt::meta::kNpuOpScales, opb);
  auto o = open_builder(b);
  const kerf_model* m = o->m;
  std::string err;
  int rc = 0;
  NpuDriver d(m, &err, &rc);
  INFO(err);
  REQUIRE(rc == KERF_OK);
  std::mt19937 rng(77);
  const uint32_t vin = m->ops.front().output;
  const float s_in = act[vin].first;
  const int32_t q_in = npu::qmax_of(int(act[vin].second));
  std::vector<uint8_t> all;
  auto step = [&](int T, int pos0) {
    std::vector<float> x(size_t(T * c.dim));
    for (auto& v : x) v = float(int32_t(rng() % uint32_t(2 * q_in + 1)) - q_in) * s_in;  // exact codes back
    REQUIRE(be_upload(d.b, vin, x.data(), T, &err) == KERF_OK);
    for (size_t i = 1; i + 1 < m->ops.size(); ++i) {
      REQUIRE(be_run(d.b, i, T, pos0, &err) == KERF_OK);
      const std::vector<int16_t> cc = d.codes(m->ops[i].output, T);
      const uint8_t* p = reinterpret_cast<const uint8_t*>(cc.data());
      all.insert(all.end(), p, p + cc.size() * 2);  // little-endian int16 (both hosts)
    }
  };
  step(10, 0);
  step(1, 10);
  step(1, 11);
  // The derived tables on their own (so a difference is easy to place).
  std::vector<uint8_t> tabs;
  auto put = [&](const void* p, size_t n) { tabs.insert(tabs.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
  put(&npu::exp2_tables(), sizeof(npu::Exp2Tables));
  for (int hb : {8, 16}) {
    std::vector<int32_t> lut;
    npu::silu_lut(0.0123f, hb, &lut);
    put(lut.data(), lut.size() * 4);
  }
  for (int64_t i = 0; i < 32; ++i) {
    const uint64_t inc = npu::rope_phase_inc(i, 64, 500000.0);
    put(&inc, 8);
    int32_t cs[2];
    npu::cordic_cos_sin(npu::rope_phase(4095, inc), &cs[0], &cs[1]);
    put(cs, 8);
  }
  const int64_t e30 = npu::rmsnorm_eps_q30(1e-6, 0.0007f);
  put(&e30, 8);
  for (uint64_t m = 1; m < (uint64_t(1) << 62); m = m * 3 / 2 + 1) {
    const npu::InvSqrt is = npu::inv_sqrt_q(m);
    put(&is.R, 8);
    put(&is.k, 4);
  }
  for (int64_t E = 1; E < INT32_MAX; E = E * 5 / 4 + 1) {
    const npu::Recip rc = npu::recip_q(int32_t(E));
    put(&rc.R, 8);
    put(&rc.s, 4);
  }
  // Each kernel on many random 16-bit (and 8-bit) codes: a constant that moves by 2^-31 flips some
  // of ~10^5 rounding decisions, which the model above (~10^3 codes) would most likely miss.
  std::vector<uint8_t> kern;
  auto putk = [&](const std::vector<int16_t>& v) {
    kern.insert(kern.end(), (const uint8_t*)v.data(), (const uint8_t*)v.data() + v.size() * 2);
  };
  auto codes = [&](size_t n, int32_t q) {
    std::vector<int16_t> v(n);
    for (auto& x : v) x = int16_t(int32_t(rng() % uint32_t(2 * q + 1)) - q);
    return v;
  };
  auto mult = [](double real) {
    npu::Multiplier mm;
    REQUIRE(npu::quantize_multiplier(real, &mm));
    return mm;
  };
  {  // Linear, A8 (TFLite requantization) and A16 (mul_round_shift), 16-bit outputs
    const int64_t T = 64, K = 300, N = 64;
    std::vector<int8_t> wq(size_t(N * K));
    for (auto& v : wq) v = int8_t(int32_t(rng() % 255u) - 127);
    std::vector<npu::Multiplier> mul;
    for (int64_t n = 0; n < N; ++n) mul.push_back(mult((1.0 + double(n) / 97.0) * 0.03));
    std::vector<int16_t> x8 = codes(size_t(T * K), 127), y(size_t(T * N));
    npu::linear(x8.data(), T, K, 8, wq.data(), N, mul.data(), 16, y.data());
    putk(y);
    for (auto& mm : mul) mm = mult(std::ldexp(double(mm.m), mm.shift - 31) / 250.0);
    std::vector<int16_t> x16 = codes(size_t(T * K), 32767);
    npu::linear(x16.data(), T, K, 16, wq.data(), N, mul.data(), 16, y.data());
    putk(y);
  }
  {  // RMSNorm: 512 rows of 256
    const int64_t T = 512, D = 256;
    std::vector<int16_t> x = codes(size_t(T * D), 32767), y(size_t(T * D));
    std::vector<npu::Multiplier> g;
    std::vector<uint8_t> neg;
    for (int64_t d = 0; d < D; ++d) {
      g.push_back(mult(3000.0 + double(d) * 7.25));
      neg.push_back(uint8_t(d % 3 == 0));
    }
    npu::rmsnorm(x.data(), T, D, npu::rmsnorm_eps_q30(1e-5, 3.0f / 32767.f), g.data(), neg.data(), 16, y.data());
    putk(y);
  }
  {  // Rotary: 64 rows of 16 heads x 64, from position 1000
    const int64_t T = 64, Dh = 64, W = 16 * Dh;
    std::vector<uint64_t> inc;
    for (int64_t i = 0; i < Dh / 2; ++i) inc.push_back(npu::rope_phase_inc(i, Dh, 10000.0));
    std::vector<int16_t> x = codes(size_t(T * W), 20000), y(size_t(T * W));
    npu::rotary(x.data(), y.data(), T, W, Dh, true, 1000, inc.data(), mult(0.7), 16);
    putk(y);
  }
  {  // Attention: 8 heads over 2 KV heads of 64, 64 query rows after 100 cached positions
    const int64_t H = 8, G = 2, Dh = 64, T = 64, pos0 = 100;
    std::vector<int16_t> q = codes(size_t(T * H * Dh), 12000), kc = codes(size_t((pos0 + T) * G * Dh), 12000),
                         vc = codes(size_t((pos0 + T) * G * Dh), 12000), out(size_t(T * H * Dh));
    npu::AttnParams p;
    p.n_heads = H;
    p.n_kv_heads = G;
    p.head_dim = Dh;
    p.logit = mult(3e-4);
    p.out = mult(1.0);
    p.out_bits = 16;
    std::vector<int32_t> scratch(size_t(2 * (pos0 + T)));
    npu::attention(p, q.data(), T, pos0, kc.data(), vc.data(), out.data(), scratch.data());
    putk(out);
  }
  for (int hb : {8, 16}) {  // SiLU gate
    const int32_t q = npu::qmax_of(hb);
    std::vector<int16_t> h1 = codes(100000, q), h3 = codes(100000, q), g(100000);
    std::vector<int32_t> lut;
    npu::silu_lut(hb == 8 ? 0.05f : 2e-4f, hb, &lut);
    npu::silu_mul(h1.data(), h3.data(), 100000, lut.data(), hb, mult(hb == 8 ? 0.9 : 0.03), 16, g.data());
    putk(g);
  }
  {  // Add
    std::vector<int16_t> a = codes(100000, 32767), b2 = codes(100000, 32767), y(100000);
    npu::add(a.data(), b2.data(), 100000, mult(0.6), mult(0.45), 16, y.data());
    putk(y);
  }
  const uint64_t h_codes = kerf::xxh64(all.data(), all.size()), h_tabs = kerf::xxh64(tabs.data(), tabs.size());
  const uint64_t h_kern = kerf::xxh64(kern.data(), kern.size());
  if (report())
    std::printf("npu golden: codes %016llx tables %016llx kernels %016llx\n", (unsigned long long)h_codes,
                (unsigned long long)h_tabs, (unsigned long long)h_kern);
  CHECK(h_kern == UINT64_C(0x03c4aba0e00bb4c6));
  CHECK(h_tabs == UINT64_C(0xaa9360da589de58c));
  CHECK(h_codes == UINT64_C(0x41331e15720953bd));
}

namespace {

/// One accuracy configuration of the stories260K end-to-end runs.
struct E2ECfg {
  const char* name;
  int abits;
  uint32_t wbits;
  npu::Clip clip;
};
struct E2EResult {
  double kl = 0, top1 = 0;      ///< vs the same quantized weights on the CPU (float)
  double kl32 = 0, top32 = 0;   ///< vs the f32 model
  size_t positions = 0;
};

/// stories260K with per-channel RTN weights (Linear / FFN; Embedding and the tied classifier f32 on
/// the CPU), calibrated on stories [0, n_calib) of tinystories_valid_800.txt, evaluated on the
/// stories `eval` (fresh context each, all ops but Embedding and classifier on the NPU).
std::vector<E2EResult> stories_e2e(const std::vector<E2ECfg>& cfgs, int n_calib, const std::vector<int>& eval_ids) {
  LlamaCfg c;
  const Weights w = stories260k(&c);
  REQUIRE(!w.empty());
  const std::vector<std::string> st = stories();
  REQUIRE(st.size() >= 800);
  auto f32 = open_builder([&] {
    art::ArtifactBuilder b;
    build_llama(b, c, w);
    return b;
  }());
  std::vector<std::vector<int32_t>> calib, eval;
  for (int k = 0; k < n_calib; ++k) calib.push_back(tokenize(f32->m, st[size_t(k)], c.max_seq));
  for (int k : eval_ids) eval.push_back(tokenize(f32->m, st[size_t(k)], c.max_seq));
  auto cpu_logits = [&](const kerf_model* m, const std::vector<int32_t>& t) {
    kerf_session* s = nullptr;
    REQUIRE(kerf_session_create_ex(m, 0, KERF_SESSION_CPU_ONLY, &s, nullptr, 0) == KERF_OK);
    std::vector<float> lg(t.size() * size_t(c.vocab));
    REQUIRE(kerf_session_eval(s, t.data(), int(t.size()), lg.data(), 1) == KERF_OK);
    kerf_session_free(s);
    return lg;
  };
  std::vector<std::vector<float>> ref32;
  for (const auto& t : eval) ref32.push_back(cpu_logits(f32->m, t));
  std::vector<E2EResult> out;
  for (const E2ECfg& cf : cfgs) {
    const art::ArtifactBuilder b0 = llama_builder(c, w, cf.wbits, cf.wbits);
    auto base = open_builder(b0);
    npu::CalibOptions opt;
    opt.act_bits = cf.abits;
    opt.clip = cf.clip;
    std::vector<uint8_t> act, ops;
    std::string err;
    REQUIRE(kerf::rt::npu_calibrate_opts(base->m, calib, opt, &act, &ops, &err) == KERF_OK);
    art::ArtifactBuilder b = b0;
    b.add_meta_bytes(fmt::meta::kNpuActScales, act);
    b.add_meta_bytes(fmt::meta::kNpuOpScales, ops);
    auto o = open_builder(b);
    Agreement vs_cpu, vs_f32;
    for (size_t e = 0; e < eval.size(); ++e) {
      const std::vector<int32_t>& t = eval[e];
      int rc = 0;
      NpuDriver d(o->m, &err, &rc);
      INFO(err);
      REQUIRE(rc == KERF_OK);
      const int T = int(t.size());
      const std::vector<float> got = d.logits(d.eval(t.data(), T), T);
      const std::vector<float> ref = cpu_logits(o->m, t);
      for (int k = 0; k < T; ++k) {
        accumulate(&vs_cpu, ref.data() + size_t(k) * c.vocab, got.data() + size_t(k) * c.vocab, c.vocab);
        accumulate(&vs_f32, ref32[e].data() + size_t(k) * c.vocab, got.data() + size_t(k) * c.vocab, c.vocab);
      }
    }
    E2EResult r;
    r.kl = vs_cpu.kl / double(vs_cpu.n);
    r.top1 = vs_cpu.top1 / double(vs_cpu.n);
    r.kl32 = vs_f32.kl / double(vs_f32.n);
    r.top32 = vs_f32.top1 / double(vs_f32.n);
    r.positions = vs_cpu.n;
    if (report())
      std::printf("npu stories260K %-14s vs CPU (same weights): KL %.5f top-1 %.4f | vs f32: KL %.5f top-1 %.4f (%zu positions)\n",
                  cf.name, r.kl, r.top1, r.kl32, r.top32, r.positions);
    out.push_back(r);
  }
  return out;
}

}  // namespace

TEST_CASE("npu: stories260K end to end (A8W8, A16W8, A16W4) against the float CPU logits", "[npu][stories260K]") {
  // Calibration (absmax): stories 0-3; evaluation: story 400 (EVAL.md's evaluation range, 470
  // positions); all ops but Embedding / classifier on the NPU. Measured, identical on x86-64 and
  // aarch64 (qemu), vs the float CPU run of the same weights | vs the f32 model:
  //   A8W8   KL 0.03881  top-1 0.8809  |  KL 0.03929  top-1 0.8766
  //   A16W8  KL 0.00033  top-1 0.9957  |  KL 0.00085  top-1 0.9830
  //   A16W4  KL 0.00022  top-1 0.9979  |  KL 0.16548  top-1 0.7787  (the W4 RTN weights themselves)
  const std::vector<E2ECfg> cfgs = {{"A8W8", 8, 8, npu::Clip::kAbsMax},
                                    {"A16W8", 16, 8, npu::Clip::kAbsMax},
                                    {"A16W4", 16, 4, npu::Clip::kAbsMax}};
  const std::vector<E2EResult> r = stories_e2e(cfgs, 4, {400});
  const double kl_bound[3] = {0.045, 0.0005, 0.0004}, top1_bound[3] = {0.87, 0.99, 0.99},
               kl32_bound[3] = {0.045, 0.0011, 0.19};
  for (size_t k = 0; k < cfgs.size(); ++k) {
    INFO(cfgs[k].name << ": KL " << r[k].kl << " top-1 " << r[k].top1 << "; vs f32 KL " << r[k].kl32 << " top-1 " << r[k].top32);
    CHECK(r[k].kl <= kl_bound[k]);
    CHECK(r[k].top1 >= top1_bound[k]);
    CHECK(r[k].kl32 <= kl32_bound[k]);
  }
}

TEST_CASE("npu: stories260K clipping methods, 16 calibration / 10 evaluation stories (report)", "[.][npu-report]") {
  // Hidden (slow): KERF_NPU_REPORT=1 kerf_runtime_tests "[npu-report]" prints the table of
  // docs/npu-arithmetic.md section 8.
  const std::vector<E2ECfg> cfgs = {{"A8W8 absmax", 8, 8, npu::Clip::kAbsMax},
                                    {"A8W8 p99.99", 8, 8, npu::Clip::kPercentile},
                                    {"A8W8 mse", 8, 8, npu::Clip::kMse},
                                    {"A8W4 absmax", 8, 4, npu::Clip::kAbsMax},
                                    {"A8W4 p99.99", 8, 4, npu::Clip::kPercentile},
                                    {"A16W8 absmax", 16, 8, npu::Clip::kAbsMax},
                                    {"A16W8 p99.99", 16, 8, npu::Clip::kPercentile},
                                    {"A16W4 absmax", 16, 4, npu::Clip::kAbsMax}};
  std::vector<int> ev;
  for (int k = 400; k < 410; ++k) ev.push_back(k);
  const std::vector<E2EResult> r = stories_e2e(cfgs, 16, ev);
  for (size_t k = 0; k < cfgs.size(); ++k) CHECK(r[k].positions > 0);
}
