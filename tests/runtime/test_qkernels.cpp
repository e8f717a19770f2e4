// The integer kernels of runtime-lite (runtime-lite/src/qkernels.h) on the tiled layout:
//   - a test-local packer from per-element codes (checked against the SPEC 6.6 worked example bytes
//     and against dequant_row_tiled, an independent reader of the layout);
//   - the scalar reference against a double-precision computation from the dequantized weights
//     and the quantized activations;
//   - every other ISA the CPU has bit-identical to the scalar reference (quantize_acts and gemm),
//     for every dtype, odd shapes, group sizes, token counts, tile sub-ranges and ldy > rows.
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <catch2/catch.hpp>

#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../runtime-lite/src/qkernels.h"
#include "kerf/format.h"

namespace {

namespace fmt = kerf::fmt;
using kerf::rt::Isa;
using kerf::rt::QActs;
using kerf::rt::QKernels;
using kerf::rt::TiledView;
using fmt::DType;

struct QType {
  DType dtype;
  uint32_t bits;  // kQSym / kQAsym
  const char* name;
};
const QType kTypes[] = {{DType::kQSym, 2, "qsym2"},   {DType::kQSym, 3, "qsym3"},   {DType::kQSym, 4, "qsym4"},
                        {DType::kQSym, 8, "qsym8"},   {DType::kQAsym, 2, "qasym2"}, {DType::kQAsym, 3, "qasym3"},
                        {DType::kQAsym, 4, "qasym4"}, {DType::kQAsym, 8, "qasym8"}, {DType::kTernary, 0, "ternary"},
                        {DType::kBinary, 0, "binary"}};

/// Largest code u of a type (ternary: 2, the writers' range).
int max_code(const QType& t) {
  return t.dtype == DType::kTernary ? 2 : t.dtype == DType::kBinary ? 1 : (1 << t.bits) - 1;
}
/// The signed value q of code u (qasym: u itself).
int code_value(const QType& t, int u) {
  switch (t.dtype) {
    case DType::kQSym: return u - (1 << (t.bits - 1));
    case DType::kTernary: return u - 1;
    case DType::kBinary: return 2 * u - 1;
    default: return u;
  }
}

float f16f(uint16_t h) { return fmt::f16_to_f32(h); }

/// A [rows, cols] tensor as per-element codes and f16 parameters, and its tiled payload.
struct Tensor {
  QType t;
  int64_t rows = 0, cols = 0, g = 0, R = 0, ng = 0;
  std::vector<uint8_t> u;       // [rows][cols]
  std::vector<uint16_t> s, m;   // [rows][ng]
  std::vector<uint8_t> buf;     // payload storage (over-allocated for 64-byte alignment)
  TiledView v;
};

/// Sets the bits of code u of element e in one row's block bytes c (SPEC 6.6 code order); c must
/// start zeroed.
void put_code(const QType& t, uint8_t* c, int e, int u) {
  if (t.dtype == DType::kBinary) {
    c[e >> 3] |= uint8_t(u << (e & 7));
  } else if (t.dtype == DType::kTernary || t.bits == 2 || t.bits == 3) {
    c[e & 7] |= uint8_t((u & 3) << (2 * (e >> 3)));
    if (t.dtype != DType::kTernary && t.bits == 3) c[8 + (e >> 3)] |= uint8_t(((u >> 2) & 1) << (e & 7));
  } else if (t.bits == 4) {
    c[e & 15] |= uint8_t(u << (e < 16 ? 0 : 4));
  } else {
    c[e] = uint8_t(u);
  }
}

/// Packs codes / parameters into the tiled layout. Every byte that is not a real row's code or
/// parameter (padding rows, padding columns, tile padding) is random: readers must not depend on it.
void pack(Tensor& w, std::mt19937& rng) {
  const uint32_t lr = w.R == 1 ? 0 : w.R == 2 ? 1 : w.R == 4 ? 2 : w.R == 8 ? 3 : 4;
  const uint32_t flags = fmt::make_qflags_tiled(w.t.bits, fmt::ScaleFormat::kF16, lr);
  REQUIRE(fmt::qflags_valid(w.t.dtype, flags));
  const fmt::TiledLayout L = fmt::tiled_layout(w.t.dtype, uint64_t(w.rows), uint64_t(w.cols), uint64_t(w.g), flags);
  w.buf.assign(L.bytes + 64, 0);
  uint8_t* base = w.buf.data() + (64 - reinterpret_cast<uintptr_t>(w.buf.data()) % 64) % 64;
  for (uint64_t i = 0; i < L.bytes; ++i) base[i] = uint8_t(rng());
  std::uniform_int_distribution<int> code(0, max_code(w.t));
  for (int64_t r = 0; r < w.rows; ++r) {
    uint8_t* tile = base + uint64_t(r) / L.R * L.tile_bytes;
    const int64_t i = r % int64_t(L.R);
    for (int64_t j = 0; j < w.ng; ++j) {
      uint8_t* p = tile + L.param_offset(uint64_t(j)) + 2 * i;
      std::memcpy(p, &w.s[size_t(r * w.ng + j)], 2);
      if (w.t.dtype == DType::kQAsym) std::memcpy(p + 2 * L.R, &w.m[size_t(r * w.ng + j)], 2);
    }
    for (uint64_t kb = 0; kb < L.KB; ++kb) {
      uint8_t* c = tile + L.block_offset(kb) + uint64_t(i) * L.cb;
      std::memset(c, 0, L.cb);
      for (int e = 0; e < 32; ++e) {
        const int64_t col = int64_t(kb) * 32 + e;
        put_code(w.t, c, e, col < w.cols ? w.u[size_t(r * w.cols + col)] : code(rng));
      }
    }
  }
  w.v.dtype = w.t.dtype;
  w.v.bits = w.t.bits;
  w.v.rows = w.rows;
  w.v.cols = w.cols;
  w.v.L = L;
  w.v.data = base;
}

uint16_t random_f16(std::mt19937& rng, bool allow_negative) {
  std::uniform_real_distribution<float> mag(-12.0f, 1.0f);  // log2 |value|
  float x = std::exp2(mag(rng));
  if (rng() % 16 == 0) x = 3e-6f;          // an f16 subnormal
  if (allow_negative && rng() % 2) x = -x;
  return fmt::f32_to_f16(x);
}

Tensor make_tensor(const QType& t, int64_t rows, int64_t cols, int64_t g, int64_t R, std::mt19937& rng) {
  Tensor w;
  w.t = t;
  w.rows = rows;
  w.cols = cols;
  w.g = g;
  w.R = R;
  w.ng = (cols + g - 1) / g;
  std::uniform_int_distribution<int> code(0, max_code(t));
  w.u.resize(size_t(rows * cols));
  for (auto& x : w.u) x = uint8_t(code(rng));
  w.s.resize(size_t(rows * w.ng));
  w.m.resize(size_t(rows * w.ng));
  for (auto& x : w.s) x = random_f16(rng, t.dtype != DType::kQAsym);
  for (auto& x : w.m) x = random_f16(rng, true);
  pack(w, rng);
  return w;
}

/// Quantized activations with a 64-byte aligned q.
struct Acts {
  std::vector<int8_t> qbuf;
  std::vector<float> d;
  std::vector<int32_t> sum;
  QActs a;
  Acts(int64_t T, int64_t K) {
    const int64_t KB = (K + 31) / 32;
    qbuf.assign(size_t(T * KB * 32 + 64), int8_t(0x5a));  // not zero: quantize_acts writes the padding
    d.assign(size_t(T * KB), -1.0f);
    sum.assign(size_t(T * KB), -1);
    a.T = T;
    a.KB = KB;
    a.q = qbuf.data() + (64 - reinterpret_cast<uintptr_t>(qbuf.data()) % 64) % 64;
    a.d = d.data();
    a.sum = sum.data();
  }
};

/// Activations with the awkward cases: all-zero blocks, one huge value, negative blocks, exact
/// .5 ties (a block whose amax is 127, so x * id == x), tiny values (subnormal scale -> id = 0).
std::vector<float> make_x(int64_t T, int64_t K, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(T * K));
  for (auto& v : x) v = nd(rng);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b * 32 < K; ++b) {
      float* xb = x.data() + t * K + b * 32;
      const int n = int(std::min<int64_t>(32, K - b * 32));
      switch ((t * 7 + b) % 6) {
        case 0: for (int e = 0; e < n; ++e) xb[e] = 0.0f; break;
        case 1: xb[n / 2] = (rng() % 2 ? 1e30f : -3e4f); break;
        case 2: for (int e = 0; e < n; ++e) xb[e] = -std::fabs(xb[e]) * 100.0f; break;
        case 3:  // ties: 127 then k + 0.5 for k = -16 .. 14: d = 1, q = nearbyint(k + .5) (half to even)
          for (int e = 0; e < n; ++e) xb[e] = e == 0 ? 127.0f : float(e - 17) + 0.5f;
          break;
        case 4: for (int e = 0; e < n; ++e) xb[e] *= 1e-38f; break;  // amax / 127 is subnormal
        default: break;
      }
    }
  return x;
}

/// Independent check of quantize_acts' output against its definition in double precision.
void check_quantized(const std::vector<float>& x, int64_t T, int64_t K, const QActs& a) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < a.KB; ++b) {
      const float* xb = x.data() + t * K + b * 32;
      const int n = int(std::min<int64_t>(32, K - b * 32));
      float amax = 0.0f;
      for (int e = 0; e < n; ++e) amax = std::max(amax, std::fabs(xb[e]));
      const float d = a.d[t * a.KB + b];
      REQUIRE(d == amax / 127.0f);
      const int8_t* q = a.q + t * a.KB * 32 + b * 32;
      int32_t sum = 0;
      for (int e = 0; e < 32; ++e) {
        sum += q[e];
        REQUIRE(q[e] >= -127);
        if (e >= n) {
          REQUIRE(q[e] == 0);
        } else if (d < 0x1p-126f) {
          REQUIRE(q[e] == 0);
        } else {
          const double r = double(xb[e]) / double(d);
          REQUIRE(std::fabs(q[e] - r) <= 0.5 + 1e-4);
          if (std::fabs(xb[e]) == amax) REQUIRE(std::abs(q[e]) == 127);
          if (d == 1.0f && r - std::floor(r) == 0.5) REQUIRE(q[e] % 2 == 0);  // ties to even
        }
      }
      REQUIRE(sum == a.sum[t * a.KB + b]);
    }
}

/// y[t][r] = sum over blocks of d_b * sum_e w_e q_e in double (w from the codes and parameters),
/// and the scale of the float rounding errors: the sum of |s q_w q d| (+ |m q d| for qasym, whose
/// two parts the kernels round separately).
void ref_gemm(const Tensor& w, const QActs& a, std::vector<double>* y, std::vector<double>* mag) {
  y->assign(size_t(a.T * w.rows), 0.0);
  mag->assign(size_t(a.T * w.rows), 0.0);
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0.0, am = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        const int64_t gi = r * w.ng + c / w.g;
        const double s = f16f(w.s[size_t(gi)]);
        const int u = w.u[size_t(r * w.cols + c)];
        const bool asym = w.t.dtype == DType::kQAsym;
        const double mn = asym ? double(f16f(w.m[size_t(gi)])) : 0.0, sq = s * code_value(w.t, u);
        const double qd = a.q[t * a.KB * 32 + c] * double(a.d[t * a.KB + c / 32]);
        acc += (sq + mn) * qd;
        am += (std::fabs(sq) + std::fabs(mn)) * std::fabs(qd);
      }
      (*y)[size_t(t * w.rows + r)] = acc;
      (*mag)[size_t(t * w.rows + r)] = am;
    }
}

std::vector<const QKernels*> simd_kernels() {
  std::vector<const QKernels*> out;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512Vnni, Isa::kNeon, Isa::kNeonDot})
    if (const QKernels* k = kerf::rt::qkernels(isa)) out.push_back(k);
  return out;
}

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

constexpr float kSentinel = -7.25e33f;

/// Runs gemm over tiles [tile0, tile1) into a [T][ldy] buffer prefilled with kSentinel.
std::vector<float> run_gemm(const QKernels* k, const Tensor& w, const QActs& a, int64_t tile0, int64_t tile1,
                            int64_t ldy) {
  std::vector<float> y(size_t(a.T * ldy), kSentinel);
  k->gemm(w.v, a, tile0, tile1, y.data(), ldy);
  return y;
}

/// One case: the scalar reference against the double computation (full range), then every SIMD
/// ISA bit for bit against the scalar reference (full range and a random sub-range, ldy > rows).
void check_case(const QType& qt, int64_t rows, int64_t cols, int64_t g, int64_t R, int64_t T, std::mt19937& rng) {
  CAPTURE(qt.name, rows, cols, g, R, T);
  const Tensor w = make_tensor(qt, rows, cols, g, R, rng);
  const std::vector<float> x = make_x(T, cols, rng);
  const QKernels* scalar = kerf::rt::qkernels(Isa::kScalar);
  Acts acts(T, cols);
  scalar->quantize_acts(x.data(), T, cols, &acts.a);
  const QActs& a = acts.a;
  const int64_t NT = int64_t(w.v.L.NT), ldy = rows + 3;

  std::vector<double> yr, mag;
  ref_gemm(w, a, &yr, &mag);
  const std::vector<float> ys = run_gemm(scalar, w, a, 0, NT, ldy);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < ldy; ++r) {
      CAPTURE(t, r);
      const float v = ys[size_t(t * ldy + r)];
      if (r >= rows) {
        REQUIRE(bits_of(v) == bits_of(kSentinel));
      } else {
        const double ref = yr[size_t(t * rows + r)];
        REQUIRE(std::fabs(double(v) - ref) <= 1e-5 * mag[size_t(t * rows + r)] + 1e-37);
      }
    }

  std::uniform_int_distribution<int64_t> tile(0, NT);
  int64_t s0 = tile(rng), s1 = tile(rng);
  if (s0 > s1) std::swap(s0, s1);
  const std::vector<float> ysub = run_gemm(scalar, w, a, s0, s1, ldy);
  for (const QKernels* k : simd_kernels()) {
    CAPTURE(kerf::rt::isa_name(k->isa));
    Acts ak(T, cols);
    k->quantize_acts(x.data(), T, cols, &ak.a);
    REQUIRE(std::memcmp(ak.a.q, a.q, size_t(T * a.KB * 32)) == 0);
    REQUIRE(std::memcmp(ak.d.data(), acts.d.data(), acts.d.size() * 4) == 0);
    REQUIRE(ak.sum == acts.sum);
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t t0 = pass ? s0 : 0, t1 = pass ? s1 : NT;
      CAPTURE(t0, t1);
      const std::vector<float>& want = pass ? ysub : ys;
      const std::vector<float> got = run_gemm(k, w, a, t0, t1, ldy);
      for (size_t i = 0; i < got.size(); ++i) {
        CAPTURE(i / size_t(ldy), i % size_t(ldy), want[i], got[i]);
        REQUIRE(bits_of(got[i]) == bits_of(want[i]));
      }
    }
  }
}

}  // namespace

TEST_CASE("qkernels: the test packer writes the SPEC 6.6 worked example", "[qkernels]") {
  // [3, 40] qsym4, g = 32, R = 2; row 0: u_c = c mod 16, s = 0.5 / 0.25 (formats/SPEC.md 6.6)
  std::mt19937 rng(1);
  Tensor w;
  w.t = kTypes[2];
  w.rows = 3;
  w.cols = 40;
  w.g = 32;
  w.R = 2;
  w.ng = 2;
  w.u.assign(3 * 40, 0);
  for (int c = 0; c < 40; ++c) w.u[size_t(c)] = uint8_t(c % 16);
  w.s = {0x3800, 0x3400, 0, 0, 0, 0};
  w.m.assign(6, 0);
  pack(w, rng);
  REQUIRE(w.v.L.tile_bytes == 128);
  REQUIRE(w.v.L.bytes == 256);
  const uint8_t* p = w.v.data;
  CHECK(p[0] == 0x00);
  CHECK(p[1] == 0x38);
  CHECK(p[36] == 0x00);
  CHECK(p[37] == 0x34);
  for (int i = 0; i < 16; ++i) CHECK(p[4 + i] == 0x11 * i);
  // block 1: columns 32..39 in the low nibbles of bytes 0..7 (the high nibbles and bytes 8..15 are
  // padding columns, random here: readers must not depend on them)
  for (int i = 0; i < 8; ++i) CHECK((p[40 + i] & 15) == i);
}

TEST_CASE("qkernels: the test packer agrees with dequant_row_tiled for every dtype", "[qkernels]") {
  std::mt19937 rng(2);
  for (const QType& qt : kTypes)
    for (int64_t R : {1, 4, 16}) {
      CAPTURE(qt.name, R);
      const Tensor w = make_tensor(qt, 7, 100, 64, R, rng);
      std::vector<float> row(100);
      for (int64_t r = 0; r < w.rows; ++r) {
        kerf::rt::dequant_row_tiled(w.v, r, row.data());
        for (int64_t c = 0; c < w.cols; ++c) {
          CAPTURE(r, c);
          const int64_t gi = r * w.ng + c / w.g;
          const int u = w.u[size_t(r * w.cols + c)];
          const float s = f16f(w.s[size_t(gi)]);
          float want;
          if (qt.dtype == DType::kQAsym) {
            const float p = s * float(u);
            want = p + f16f(w.m[size_t(gi)]);
          } else {
            want = s * float(code_value(qt, u));
          }
          REQUIRE(bits_of(row[size_t(c)]) == bits_of(want));
        }
      }
    }
}

TEST_CASE("qkernels: dispatch, ISA names and the KERF_ISA override", "[qkernels]") {
  const QKernels* scalar = kerf::rt::qkernels(Isa::kScalar);
  REQUIRE(scalar != nullptr);
  REQUIRE(scalar->isa == Isa::kScalar);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Vnni, Isa::kNeon, Isa::kNeonDot}) {
    Isa back = Isa::kScalar;
    REQUIRE(kerf::rt::parse_isa(kerf::rt::isa_name(isa), &back));
    REQUIRE(back == isa);
    if (const QKernels* k = kerf::rt::qkernels(isa)) REQUIRE(k->isa == isa);
  }
  Isa dummy;
  REQUIRE_FALSE(kerf::rt::parse_isa("avx3", &dummy));
  REQUIRE_FALSE(kerf::rt::parse_isa(nullptr, &dummy));
#if defined(__x86_64__)
  REQUIRE(kerf::rt::qkernels(Isa::kNeon) == nullptr);
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;  // F16C: CPUID.1:ECX bit 29 (clang's builtin lacks "f16c")
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
    REQUIRE(kerf::rt::qkernels(Isa::kAvx2) != nullptr);
  if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
    REQUIRE(kerf::rt::qkernels(Isa::kAvx512Vnni) != nullptr);
#elif defined(__aarch64__)
  REQUIRE(kerf::rt::qkernels(Isa::kNeon) != nullptr);
  REQUIRE(kerf::rt::qkernels(Isa::kAvx2) == nullptr);
#endif

  const char* old = std::getenv("KERF_ISA");
  const std::string saved = old ? old : "";
  unsetenv("KERF_ISA");
  const QKernels* best = kerf::rt::qkernels_best();
  REQUIRE(best != nullptr);
  const QKernels* want = scalar;  // the first available of this priority order
  for (Isa isa : {Isa::kScalar, Isa::kNeon, Isa::kNeonDot, Isa::kAvx2, Isa::kAvx512Vnni})
    if (const QKernels* k = kerf::rt::qkernels(isa)) want = k;
  REQUIRE(best == want);
  setenv("KERF_ISA", "scalar", 1);
  REQUIRE(kerf::rt::qkernels_best() == scalar);
  setenv("KERF_ISA", "no-such-isa", 1);
  REQUIRE(kerf::rt::qkernels_best() == nullptr);
  for (const QKernels* k : simd_kernels()) {
    setenv("KERF_ISA", kerf::rt::isa_name(k->isa), 1);
    REQUIRE(kerf::rt::qkernels_best() == k);
  }
  if (old) setenv("KERF_ISA", saved.c_str(), 1); else unsetenv("KERF_ISA");
}

TEST_CASE("qkernels: quantize_acts follows its definition; non-finite input is handled alike by every ISA",
          "[qkernels]") {
  std::mt19937 rng(3);
  for (int64_t K : {1, 31, 32, 33, 100, 288}) {
    CAPTURE(K);
    const int64_t T = 5;
    std::vector<float> x = make_x(T, K, rng);
    Acts a(T, K);
    kerf::rt::qkernels(Isa::kScalar)->quantize_acts(x.data(), T, K, &a.a);
    check_quantized(x, T, K, a.a);
    // NaN and inf: NaN is ignored by amax and quantizes to 0; an inf block has d = inf and q = 0.
    x[0] = std::numeric_limits<float>::quiet_NaN();
    x[size_t(K - 1)] = std::numeric_limits<float>::infinity();
    kerf::rt::qkernels(Isa::kScalar)->quantize_acts(x.data(), T, K, &a.a);
    REQUIRE(a.a.q[0] == 0);
    for (const QKernels* k : simd_kernels()) {
      CAPTURE(kerf::rt::isa_name(k->isa));
      Acts b(T, K);
      k->quantize_acts(x.data(), T, K, &b.a);
      REQUIRE(std::memcmp(b.a.q, a.a.q, size_t(T * a.a.KB * 32)) == 0);
      REQUIRE(std::memcmp(b.d.data(), a.d.data(), a.d.size() * 4) == 0);
      REQUIRE(b.sum == a.sum);
    }
  }
}

TEST_CASE("qkernels: scalar reference for every tile height R", "[qkernels]") {
  std::mt19937 rng(4);
  for (const QType& qt : kTypes)
    for (int64_t R : {1, 2, 8, 16})
      for (int64_t rows : {1, 5, 17})
        check_case(qt, rows, 100, 64, R, rows % 3 + 1, rng);
}

TEST_CASE("qkernels: every ISA is bit-identical to the scalar reference", "[qkernels]") {
  std::mt19937 rng(5);
  for (const QType& qt : kTypes)
    for (int64_t cols : {1, 31, 33, 100, 172, 288, 768})
      for (int64_t g : {int64_t(32), int64_t(64), int64_t(128), (cols + 31) / 32 * 32 + 32})
        for (int64_t rows : {1, 3, 4, 5, 9})
          for (int64_t T : {1, 2, 3, 4, 5, 8, 9}) check_case(qt, rows, cols, g, 4, T, rng);
}

TEST_CASE("qkernels: large tensors (K chunks, tile blocks, token groups)", "[qkernels]") {
  // 8292 columns = 260 blocks (> one 256-block activation chunk); 300 rows = 75 tiles (> one
  // 64-tile cache block); T = 9: two 4-token groups and a single token.
  std::mt19937 rng(6);
  check_case(kTypes[2], 300, 8292, 32, 4, 9, rng);
  check_case(kTypes[5], 300, 8292, 128, 4, 6, rng);
  check_case(kTypes[9], 70, 8292, 8192, 4, 3, rng);
}
