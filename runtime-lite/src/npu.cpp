// The integer-only NPU reference backend: fixed-point primitives, deterministic tables, the integer
// kernels and the DeviceBackend that runs them. docs/npu-arithmetic.md is the normative description;
// npu.h documents every function.
#include "npu.h"
#include "util.h"

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>

#include "kernels.h"
#include "model.h"

// No fused multiply-add in this file, whatever -ffp-contract / -march the build uses: the tables and
// multipliers derived in prepare() must have the same bits on every platform (det_exp's Horner steps
// would otherwise fuse on aarch64).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace kerf::rt::npu {

// ============================================================================ primitives

int16_t quantize_value(float x, float scale, int32_t qmax) {
  const float r = x / scale;
  if (r != r) return 0;
  if (r >= float(qmax)) return int16_t(qmax);
  if (r <= -float(qmax)) return int16_t(-qmax);
  return int16_t(std::nearbyint(r));  // the default rounding mode: to nearest, ties to even
}

int32_t srdhm(int32_t a, int32_t b) {
  const bool overflow = a == b && a == std::numeric_limits<int32_t>::min();
  const int64_t ab = int64_t(a) * int64_t(b);
  const int64_t nudge = ab >= 0 ? (int64_t(1) << 30) : (1 - (int64_t(1) << 30));
  const int32_t high = int32_t((ab + nudge) / (int64_t(1) << 31));  // C++ division truncates toward zero
  return overflow ? std::numeric_limits<int32_t>::max() : high;
}

int32_t rounding_divide_by_pot(int32_t x, int exponent) {
  const int32_t mask = int32_t((int64_t(1) << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

int32_t saturating_left_shift(int32_t x, int exponent) {
  const int64_t v = int64_t(x) * (int64_t(1) << exponent);
  if (v > std::numeric_limits<int32_t>::max()) return std::numeric_limits<int32_t>::max();
  if (v < std::numeric_limits<int32_t>::min()) return std::numeric_limits<int32_t>::min();
  return int32_t(v);
}

int32_t multiply_by_quantized_multiplier(int32_t x, int32_t m, int shift) {
  const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  return rounding_divide_by_pot(srdhm(saturating_left_shift(x, left), m), right);
}

int64_t mul_round_shift(int64_t x, int32_t m, int right) {
  const bool neg = x < 0;
  const uint64_t ax = neg ? uint64_t(-(x + 1)) + 1u : uint64_t(x);  // |x| <= 2^63
  const uint64_t um = uint64_t(uint32_t(m));
  // P = |x| * m < 2^94 as (hi, lo) 64-bit halves.
  const uint64_t p_lo = (ax & 0xffffffffu) * um, p_hi = (ax >> 32) * um;
  uint64_t lo = p_hi << 32, hi = p_hi >> 32;
  lo += p_lo;
  if (lo < p_lo) ++hi;
  if (right > 0) {  // + 2^(right - 1), then >> right
    if (right <= 64) {
      const uint64_t half = uint64_t(1) << (right - 1);
      lo += half;
      if (lo < half) ++hi;
    } else {
      hi += uint64_t(1) << (right - 65);
    }
    if (right < 64) {
      lo = (lo >> right) | (hi << (64 - right));
      hi >>= right;
    } else {
      lo = hi >> (right - 64);
      hi = 0;
    }
  }
  const uint64_t kMax = uint64_t(std::numeric_limits<int64_t>::max());
  const uint64_t mag = hi != 0 || lo > kMax ? kMax : lo;
  return neg ? -int64_t(mag) : int64_t(mag);
}

int64_t rshift_rhaz(int64_t x, int n) {
  if (n == 0) return x;
  const int64_t mask = (int64_t(1) << n) - 1;
  const int64_t remainder = x & mask;
  const int64_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> n) + (remainder > threshold ? 1 : 0);
}

uint64_t isqrt_u64(uint64_t n) {
  uint64_t res = 0, bit = uint64_t(1) << 62;
  while (bit > n) bit >>= 2;
  while (bit != 0) {
    if (n >= res + bit) {
      n -= res + bit;
      res = (res >> 1) + bit;
    } else {
      res >>= 1;
    }
    bit >>= 2;
  }
  return res;
}

InvSqrt inv_sqrt_q(uint64_t m) {
  InvSqrt out;
  uint64_t n = m;
  while (n < (uint64_t(1) << 60)) {
    n <<= 2;
    ++out.k;
  }
  const uint64_t r = isqrt_u64(n);  // [2^30, 2^31)
  out.R = int64_t(((uint64_t(1) << 61) + (r >> 1)) / r);
  return out;
}

Recip recip_q(int32_t E) {
  Recip out;
  while ((int64_t(E) << out.s) < (int64_t(1) << 30)) ++out.s;
  out.R = ((int64_t(1) << 61) - 1) / (int64_t(E) << out.s);
  return out;
}

bool quantize_multiplier(double real, Multiplier* out) {
  if (!(real >= 0.0) || !std::isfinite(real)) return false;
  if (real == 0.0) {
    *out = Multiplier{};
    return true;
  }
  int shift = 0;
  const double q = std::frexp(real, &shift);                       // exact: real = q * 2^shift, q in [0.5, 1)
  int64_t q_fixed = int64_t(std::round(q * double(int64_t(1) << 31)));  // exact scaling, ties away from zero
  if (q_fixed == (int64_t(1) << 31)) {
    q_fixed /= 2;
    ++shift;
  }
  if (shift > 31) return false;
  if (shift < -31) {
    *out = Multiplier{};
    return true;
  }
  *out = Multiplier{int32_t(q_fixed), shift};
  return true;
}

// ============================================================================ deterministic doubles

namespace {
constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm: high 33 bits of ln 2 (k * kLn2Hi exact, |k| < 2^20)
constexpr double kLn2Lo = 1.90821492927058770002e-10;  // ln 2 - kLn2Hi
constexpr double kInvLn2 = 1.44269504088896338700e+00;
constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kTwoPi = 6.283185307179586;
constexpr double kLog2E = 1.4426950408889634;
}  // namespace

double det_exp(double x) {
  if (x != x) return x;
  if (x > 709.7) return std::numeric_limits<double>::infinity();
  if (x < -745.0) return 0.0;
  const double k = std::nearbyint(x * kInvLn2);
  const double r = (x - k * kLn2Hi) - k * kLn2Lo;  // |r| <= ~0.3466
  // Taylor series of degree 14, coefficients 1 / n! (n! exact in double), Horner from the top.
  double fact[15];
  fact[0] = 1.0;
  for (int n = 1; n <= 14; ++n) fact[n] = fact[n - 1] * double(n);
  double p = 1.0 / fact[14];
  for (int n = 13; n >= 0; --n) {
    const double pr = p * r;
    p = pr + 1.0 / fact[n];
  }
  return std::ldexp(p, int(k));
}

double det_log(double x) {
  if (!(x > 0.0) || !std::isfinite(x)) return std::numeric_limits<double>::quiet_NaN();
  int e = 0;
  double m = std::frexp(x, &e);  // x = m * 2^e, m in [0.5, 1)
  if (m < kSqrtHalf) {
    m *= 2.0;
    e -= 1;
  }
  const double s = (m - 1.0) / (m + 1.0);  // |s| <= 0.1716
  const double s2 = s * s;
  // log m = 2 (s + s^3/3 + ... + s^25/25): Horner in s2 over the odd reciprocals 1/(2j+1), j = 0..12.
  double p = 1.0 / 25.0;
  for (int j = 11; j >= 0; --j) {
    const double ps = p * s2;
    p = ps + 1.0 / double(2 * j + 1);
  }
  const double sp = s * p;
  const double logm = 2.0 * sp;
  const double ed = double(e);
  const double lo = ed * kLn2Lo + logm;
  return ed * kLn2Hi + lo;
}

// ============================================================================ tables

namespace {
struct Exp2Init {
  Exp2Tables t;
  Exp2Init() {
    double c[17];  // c[k] = 2^(-2^-k)
    c[0] = 0.5;
    for (int k = 1; k <= 16; ++k) c[k] = std::sqrt(c[k - 1]);
    for (int j = 0; j < 256; ++j) {
      double hi = 1.0, lo = 1.0;
      for (int b = 0; b < 8; ++b)
        if ((j >> b) & 1) {
          hi = hi * c[8 - b];
          lo = lo * c[16 - b];
        }
      t.hi[j] = uint32_t(std::nearbyint(std::ldexp(hi, 30)));
      t.lo[j] = uint32_t(std::nearbyint(std::ldexp(lo, 30)));
    }
  }
};
}  // namespace

const Exp2Tables& exp2_tables() {
  static const Exp2Init init;
  return init.t;
}

uint32_t exp2_neg_q16(uint32_t f) {
  const Exp2Tables& t = exp2_tables();
  return uint32_t((uint64_t(t.hi[(f >> 8) & 255u]) * uint64_t(t.lo[f & 255u]) + (uint64_t(1) << 29)) >> 30);
}

uint64_t rope_phase_inc(int64_t i, int64_t head_dim, double theta) {
  const double a = -(2.0 * double(i)) / double(head_dim);
  const double freq = det_exp(a * det_log(theta));
  const double turns = freq / kTwoPi;
  const double r = std::nearbyint(std::ldexp(turns, 64));
  if (!(r >= 0.0) || r >= 18446744073709551616.0) return 0;  // cannot happen: 0 <= turns < 1
  return uint64_t(r);
}

namespace {
// atan(2^-i) / (2 pi) in Q40 turns, i = 0..39, and the gain prod_{i<40} 1 / sqrt(1 + 2^-2i) in Q40:
// correctly rounded constants (mpmath, 200-bit precision), docs/npu-arithmetic.md section 5.4.
constexpr int64_t kCordicGainQ40 = INT64_C(667681663043);
constexpr int64_t kAtanQ40[40] = {
    INT64_C(137438953472), INT64_C(81134951838), INT64_C(42869480287), INT64_C(21761217566),
    INT64_C(10922836750),  INT64_C(5466743129),  INT64_C(2734038620),  INT64_C(1367102738),
    INT64_C(683561799),    INT64_C(341782203),   INT64_C(170891265),   INT64_C(85445653),
    INT64_C(42722829),     INT64_C(21361415),    INT64_C(10680707),    INT64_C(5340354),
    INT64_C(2670177),      INT64_C(1335088),     INT64_C(667544),      INT64_C(333772),
    INT64_C(166886),       INT64_C(83443),       INT64_C(41722),       INT64_C(20861),
    INT64_C(10430),        INT64_C(5215),        INT64_C(2608),        INT64_C(1304),
    INT64_C(652),          INT64_C(326),         INT64_C(163),         INT64_C(81),
    INT64_C(41),           INT64_C(20),          INT64_C(10),          INT64_C(5),
    INT64_C(3),            INT64_C(1),           INT64_C(1),           INT64_C(0),
};
}  // namespace

void cordic_cos_sin(uint32_t phase, int32_t* c, int32_t* s) {
  const uint32_t quad = ((phase + (uint32_t(1) << 29)) >> 30) & 3u;
  const int32_t r = int32_t(phase - (quad << 30));  // [-2^29, 2^29): at most 1/8 turn either way
  int64_t z = int64_t(r) * 256;                      // Q40 turns
  int64_t x = kCordicGainQ40, y = 0;
  for (int i = 0; i < 40; ++i) {
    const int64_t xs = x >> i, ys = y >> i;  // arithmetic shifts (floor)
    if (z >= 0) {
      x -= ys;
      y += xs;
      z -= kAtanQ40[i];
    } else {
      x += ys;
      y -= xs;
      z += kAtanQ40[i];
    }
  }
  const int32_t cq = int32_t(rshift_rhaz(x, 10)), sq = int32_t(rshift_rhaz(y, 10));
  switch (quad) {
    case 0: *c = cq; *s = sq; break;
    case 1: *c = -sq; *s = cq; break;
    case 2: *c = -cq; *s = -sq; break;
    default: *c = sq; *s = -cq; break;
  }
}

void silu_lut(float s1, int h_bits, std::vector<int32_t>* lut) {
  auto entry = [&](int32_t c) {
    const double x = double(c) * double(s1);  // exact (24-bit mantissa times a 17-bit integer)
    const double v = (256.0 * double(c)) / (1.0 + det_exp(-x));
    return int32_t(std::nearbyint(v));  // |v| <= 256 * 32768 + 1
  };
  lut->clear();
  if (h_bits == 8) {
    for (int32_t c = -128; c < 128; ++c) lut->push_back(entry(c));
  } else {
    for (int32_t k = 0; k <= 512; ++k) lut->push_back(entry(-32768 + 128 * k));
  }
}

int64_t rmsnorm_eps_q30(double eps, float s_x) {
  const double sx = double(s_x);
  const double e = eps / (sx * sx);
  const double v = std::nearbyint(std::ldexp(e, 30));
  const double cap = std::ldexp(1.0, 61);
  if (!(v >= 0.0)) return 0;  // eps <= 0 (or NaN: the loader rejects it)
  return v >= cap ? (int64_t(1) << 61) : int64_t(v);
}

// ============================================================================ kernels

void linear(const int16_t* x, int64_t T, int64_t K, int in_bits, const int8_t* w, int64_t N, const Multiplier* mul,
            int out_bits, int16_t* y) {
  const int32_t qmax = qmax_of(out_bits);
  for (int64_t t = 0; t < T; ++t) {
    const int16_t* xr = x + t * K;
    for (int64_t n = 0; n < N; ++n) {
      const int8_t* wr = w + n * K;
      int64_t r;
      if (in_bits == 8) {
        int32_t acc = 0;  // |acc| <= K * 127 * 128 < 2^31 (prepare checks K)
        for (int64_t k = 0; k < K; ++k) acc += int32_t(xr[k]) * int32_t(wr[k]);
        r = multiply_by_quantized_multiplier(acc, mul[n].m, mul[n].shift);
      } else {
        int64_t acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += int64_t(xr[k]) * int64_t(wr[k]);
        r = mul_round_shift(acc, mul[n].m, 31 - mul[n].shift);
      }
      y[t * N + n] = int16_t(clamp_code(r, qmax));
    }
  }
}

void rmsnorm(const int16_t* x, int64_t T, int64_t D, int64_t eps30, const Multiplier* g, const uint8_t* neg,
             int out_bits, int16_t* y) {
  const int32_t qmax = qmax_of(out_bits);
  for (int64_t t = 0; t < T; ++t) {
    const int16_t* xr = x + t * D;
    int16_t* yr = y + t * D;
    uint64_t S = 0;
    for (int64_t i = 0; i < D; ++i) S += uint64_t(int64_t(xr[i]) * int64_t(xr[i]));
    const uint64_t ud = uint64_t(D), qd = S / ud, rd = S % ud;
    const uint64_t m = (qd << 30) + (rd << 30) / ud + uint64_t(eps30);  // floor(S 2^30 / D) + eps30 < 2^62
    if (m == 0) {
      for (int64_t i = 0; i < D; ++i) yr[i] = 0;
      continue;
    }
    const InvSqrt is = inv_sqrt_q(m);
    for (int64_t i = 0; i < D; ++i) {
      const int64_t v = mul_round_shift(int64_t(xr[i]) * is.R, g[i].m, 77 - g[i].shift - is.k);
      yr[i] = int16_t(clamp_code(neg[i] ? -v : v, qmax));
    }
  }
}

void rotary(const int16_t* x, int16_t* y, int64_t T, int64_t width, int64_t head_dim, bool interleaved, int64_t pos0,
            const uint64_t* inc, Multiplier mul, int out_bits) {
  const int32_t qmax = qmax_of(out_bits);
  const int64_t half = head_dim / 2, heads = width / head_dim;
  const int right = 61 - mul.shift;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      int32_t C, S;
      cordic_cos_sin(rope_phase(pos0 + t, inc[i]), &C, &S);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = t * width + h * head_dim;
        const int64_t ia = base + (interleaved ? 2 * i : i), ib = base + (interleaved ? 2 * i + 1 : i + half);
        const int64_t a = x[ia], b = x[ib];
        y[ia] = int16_t(clamp_code(mul_round_shift(a * C - b * S, mul.m, right), qmax));
        y[ib] = int16_t(clamp_code(mul_round_shift(a * S + b * C, mul.m, right), qmax));
      }
    }
  }
}

void attention(const AttnParams& p, const int16_t* q, int64_t T, int64_t pos0, const int16_t* kc, const int16_t* vc,
               int16_t* out, int32_t* scratch) {
  const int64_t H = p.n_heads, G = p.n_kv_heads, Dh = p.head_dim, rep = H / G, kvw = G * Dh, qw = H * Dh;
  const int32_t qmax = qmax_of(p.out_bits);
  const int64_t kZMax = std::numeric_limits<int32_t>::max();
  int32_t* z = scratch;
  int32_t* e = scratch + pos0 + T;  // exponentials (Q18), then probabilities (Q15)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = p.causal ? pos0 + t + 1 : pos0 + T;  // <= kMaxKeys (prepare)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / rep;
      const int16_t* qh = q + t * qw + h * Dh;
      int32_t zmax = -int32_t(kZMax);
      for (int64_t j = 0; j < n; ++j) {
        const int16_t* kj = kc + j * kvw + g * Dh;
        int64_t acc = 0;  // 8-bit q, k: |acc| <= Dh * 127^2 < 2^31 (int32); 16-bit: int64
        for (int64_t d = 0; d < Dh; ++d) acc += int64_t(qh[d]) * int64_t(kj[d]);
        int64_t zj = mul_round_shift(acc, p.logit.m, 31 - p.logit.shift);
        if (p.logit_neg) zj = -zj;
        z[j] = int32_t(zj > kZMax ? kZMax : zj < -kZMax ? -kZMax : zj);
        if (z[j] > zmax) zmax = z[j];
      }
      int32_t E = 0;  // <= n * 2^18 < 2^31
      for (int64_t j = 0; j < n; ++j) {
        const int64_t d = int64_t(zmax) - z[j];  // [0, 2^32 - 2]
        const int64_t ip = d >> 16;
        e[j] = ip > 18 ? 0 : int32_t(rshift_rhaz(int64_t(exp2_neg_q16(uint32_t(d & 0xffff))), int(ip) + 12));
        E += e[j];
      }
      const Recip rc = recip_q(E);  // E >= 2^18 (the maximum's term)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t P = rshift_rhaz(int64_t(e[j]) * rc.R, 46 - rc.s);
        e[j] = int32_t(P > 32767 ? 32767 : P);
      }
      int16_t* oh = out + t * qw + h * Dh;
      for (int64_t d = 0; d < Dh; ++d) {
        int32_t acc = 0;  // |acc| <= 32767 * (32767 + n / 2) < 2^31
        for (int64_t j = 0; j < n; ++j) acc += e[j] * int32_t(vc[j * kvw + g * Dh + d]);
        oh[d] = int16_t(clamp_code(mul_round_shift(acc, p.out.m, 46 - p.out.shift), qmax));
      }
    }
  }
}

void silu_mul(const int16_t* h1, const int16_t* h3, int64_t n, const int32_t* lut, int h_bits, Multiplier mul,
              int g_bits, int16_t* g) {
  const int32_t qmax = qmax_of(g_bits);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t prod = silu_eval(lut, h_bits, h1[i]) * int64_t(h3[i]);
    g[i] = int16_t(clamp_code(mul_round_shift(prod, mul.m, 39 - mul.shift), qmax));
  }
}

void add(const int16_t* a, const int16_t* b, int64_t n, Multiplier ma, Multiplier mb, int out_bits, int16_t* y) {
  const int32_t qmax = qmax_of(out_bits);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t A = mul_round_shift(a[i], ma.m, 15 - ma.shift), B = mul_round_shift(b[i], mb.m, 15 - mb.shift);
    y[i] = int16_t(clamp_code(rshift_rhaz(A + B, 16), qmax));
  }
}

}  // namespace kerf::rt::npu

// ============================================================================ the backend

namespace kerf::rt {
namespace {

using namespace npu;
using fmt::OpCode;

std::string op_label(const OpInfo& op, size_t i) {
  return std::string(fmt::op_name(op.op)) + " '" + std::string(op.name) + "' (op #" + std::to_string(i) + ")";
}

struct ValState {
  bool used = false;
  int bits = 0;
  float scale = 0.f;
  int64_t width = 0;
  AlignedBuf codes;  ///< int16 [n_ctx, width]
  int16_t* p() const { return codes.as<int16_t>(); }
};

struct MatQ {
  int64_t N = 0, K = 0;
  int wbits = 0;
  AlignedBuf w;  ///< int8 [N, K] codes q = u - 2^(b-1)
  std::vector<float> scale;  ///< per output channel (f16 -> f32)
  std::vector<Multiplier> mul;
  const int8_t* p() const { return w.as<int8_t>(); }
};

struct OpState {
  bool on = false;
  MatQ mat[3];                 ///< Linear: [0]; GatedFFN: w1, w3, w2
  std::vector<Multiplier> g;   ///< RMSNorm: per channel |gamma| / s_y
  std::vector<uint8_t> gneg;   ///< RMSNorm: gamma < 0
  int64_t eps30 = 0;
  std::vector<uint64_t> inc;   ///< Rotary: phase increments
  Multiplier mul, mul2;        ///< Rotary: s_x / s_y; GatedFFN: s1 s3 / s_g; Add: s_a / s_y, s_b / s_y
  AttnParams attn;
  AlignedBuf kc, vc;           ///< Attention: int16 [n_ctx, G*Dh]
  float s_h[3] = {0, 0, 0};    ///< GatedFFN internals: h1, h3, g scales
  int hbits = 0;               ///< GatedFFN internals' bits
  std::vector<int32_t> lut;    ///< GatedFFN SiLU table
};

class NpuBackend final : public DeviceBackend {
 public:
  fmt::Backend unit() const override { return fmt::Backend::kNpu; }
  const char* device_name() const override {
    return "NPU reference (integer-only arithmetic, bit-exact, on the CPU; docs/npu-arithmetic.md)";
  }
  int prepare(kerf_session* s, const uint8_t* ops_on_unit, std::string* err) override;
  int upload(uint32_t v, const float* host, int64_t T, std::string* err) override;
  int download(uint32_t v, float* host, int64_t T, std::string* err) override;
  int run(size_t i, int64_t T, int64_t pos0, std::string* err) override;
  int finish(std::string*) override { return KERF_OK; }
  int kv_rows(size_t i, int64_t pos0, int64_t T, float* k, float* v, bool write, std::string* err) override;

  int codes(uint32_t v, int64_t T, int16_t* out, std::string* err) const;

 private:
  int check_weight(size_t i, uint32_t ref, const char* role, MatQ* mq, std::string* err);
  int check_value(uint32_t v, const MetaInfo* mi, std::string* err);
  int value_arg(uint32_t v, int64_t T, std::string* err) const;
  int mat_multipliers(size_t i, MatQ* mq, float s_in, float s_out, const char* role, std::string* err);
  int multiplier(size_t i, double real, const char* what, Multiplier* out, int max_shift, std::string* err);

  const kerf_model* m_ = nullptr;
  int64_t n_ctx_ = 0;
  std::vector<ValState> vals_;
  std::vector<OpState> ops_;
  AlignedBuf h1_, h3_, g_;  ///< GatedFFN internals, int16 [n_ctx, max F]
  AlignedBuf scratch_;      ///< attention: int32 [2 n_ctx]
};

using Clock = std::chrono::steady_clock;
uint64_t ns_since(Clock::time_point t0) {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

int NpuBackend::check_weight(size_t i, uint32_t ref, const char* role, MatQ* mq, std::string* err) {
  const OpInfo& op = m_->ops[i];
  const TensorInfo& t = m_->tensors[ref & ~fmt::kRefTensorBit];
  const WeightView w = t.view();
  const uint32_t b = fmt::qflags_bits(t.flags);
  const bool ok = t.dtype == fmt::DType::kQSym && (b == 4 || b == 8) &&
                  fmt::qflags_scale(t.flags) == fmt::ScaleFormat::kF16 &&
                  fmt::qflags_layout(t.flags) == fmt::Layout::kPlain && int64_t(t.group_size) == w.cols;
  if (!ok) {
    char desc[96];
    fmt::describe_qtype(t.dtype, t.flags, t.group_size, desc, sizeof desc);
    *err = op_label(op, i) + ": " + role + "weight '" + std::string(t.name) + "' is " + desc +
           "; the NPU needs qsym4 or qsym8 codes with one f16 scale per output channel (group_size == cols = " +
           std::to_string(w.cols) + ") in the plain layout";
    return KERF_ERR_UNSUPPORTED;
  }
  mq->N = w.rows;
  mq->K = w.cols;
  mq->wbits = int(b);
  if (!mq->w.reserve(size_t(w.rows * w.cols))) {
    *err = op_label(op, i) + ": out of memory for the weight codes";
    return KERF_ERR_MEMORY;
  }
  const fmt::QLayout L = fmt::qlayout(t.dtype, uint64_t(w.rows), uint64_t(w.cols), t.group_size, t.flags);
  int8_t* dst = mq->w.as<int8_t>();
  const int off = 1 << (b - 1);
  mq->scale.assign(size_t(w.rows), 0.f);
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* row = w.data + uint64_t(r) * L.row_bytes;
    for (int64_t c = 0; c < w.cols; ++c) {
      const int u = b == 8 ? int(row[c]) : int((row[c >> 1] >> ((c & 1) * 4)) & 15u);
      dst[r * w.cols + c] = int8_t(u - off);
    }
    const float sc = fmt::f16_to_f32(rd16(w.data + L.scale + 2 * uint64_t(r)));
    if (!std::isfinite(sc)) {
      *err = op_label(op, i) + ": " + role + "weight '" + std::string(t.name) + "': scale of output channel " +
             std::to_string(r) + " is not finite";
      return KERF_ERR_CORRUPT;
    }
    if (sc < 0.f) {
      *err = op_label(op, i) + ": " + role + "weight '" + std::string(t.name) + "': scale of output channel " +
             std::to_string(r) + " is negative; the NPU needs non-negative per-channel scales";
      return KERF_ERR_UNSUPPORTED;
    }
    mq->scale[size_t(r)] = sc;
  }
  return KERF_OK;
}

int NpuBackend::check_value(uint32_t v, const MetaInfo* mi, std::string* err) {
  ValState& vs = vals_[v];
  if (vs.used) return KERF_OK;
  float sc;
  uint32_t bits;
  std::memcpy(&sc, mi->data + 8 * uint64_t(v), 4);
  std::memcpy(&bits, mi->data + 8 * uint64_t(v) + 4, 4);
  const std::string name = "value #" + std::to_string(v) + " '" + std::string(m_->values[v].name) + "'";
  if (bits != 8 && bits != 16) {
    *err = std::string("metadata '") + fmt::meta::kNpuActScales + "': " + name + " is used on the NPU but has bits " +
           std::to_string(bits) + " (needs 8 or 16)";
    return KERF_ERR_CORRUPT;
  }
  if (!std::isfinite(sc) || !(sc > 0.f)) {
    *err = std::string("metadata '") + fmt::meta::kNpuActScales + "': " + name + " has scale " + strf("%g", double(sc)) +
           " (needs a finite scale > 0)";
    return KERF_ERR_CORRUPT;
  }
  vs.used = true;
  vs.bits = int(bits);
  vs.scale = sc;
  vs.width = m_->values[v].width;
  if (!vs.codes.reserve(size_t(n_ctx_) * size_t(vs.width) * sizeof(int16_t))) {
    *err = "out of memory for the codes of " + name;
    return KERF_ERR_MEMORY;
  }
  std::memset(vs.codes.p, 0, size_t(n_ctx_) * size_t(vs.width) * sizeof(int16_t));
  return KERF_OK;
}

int NpuBackend::multiplier(size_t i, double real, const char* what, Multiplier* out, int max_shift, std::string* err) {
  Multiplier mm;
  if (!quantize_multiplier(real, &mm) || mm.shift > max_shift) {
    *err = op_label(m_->ops[i], i) + ": " + what + " multiplier " + strf("%g", real) +
           " is out of the fixed-point range of the NPU path (check the static scales)";
    return KERF_ERR_UNSUPPORTED;
  }
  *out = mm;
  return KERF_OK;
}

int NpuBackend::mat_multipliers(size_t i, MatQ* mq, float s_in, float s_out, const char* role, std::string* err) {
  mq->mul.assign(size_t(mq->N), Multiplier{});
  for (int64_t n = 0; n < mq->N; ++n) {
    const double real = (double(s_in) * double(mq->scale[size_t(n)])) / double(s_out);
    if (const int rc = multiplier(i, real, role, &mq->mul[size_t(n)], 31, err); rc != KERF_OK) return rc;
  }
  return KERF_OK;
}

int NpuBackend::prepare(kerf_session* s, const uint8_t* on, std::string* err) {
  m_ = s->model;
  n_ctx_ = s->n_ctx;
  const kerf_model* m = m_;
  vals_.clear();
  vals_.resize(m->values.size());
  ops_.clear();
  ops_.resize(m->ops.size());
  // 1. ops and weights
  bool any_ffn = false;
  int64_t max_f = 0;
  for (size_t i = 0; i < m->ops.size(); ++i) {
    if (!on[i]) continue;
    const OpInfo& op = m->ops[i];
    OpState& os = ops_[i];
    os.on = true;
    switch (op.op) {
      case OpCode::kEmbedding:
        *err = op_label(op, i) + " is not supported on the NPU (token lookups run on the CPU; place the "
               "Embedding on the CPU)";
        return KERF_ERR_UNSUPPORTED;
      case OpCode::kLinear:
        if (const int rc = check_weight(i, op.inputs[1], "", &os.mat[0], err); rc != KERF_OK) return rc;
        break;
      case OpCode::kGatedFFN: {
        const char* roles[3] = {"w1 ", "w3 ", "w2 "};
        for (int k = 0; k < 3; ++k)
          if (const int rc = check_weight(i, op.inputs[size_t(k) + 1], roles[k], &os.mat[k], err); rc != KERF_OK)
            return rc;
        any_ffn = true;
        max_f = std::max(max_f, os.mat[0].N);
        break;
      }
      default: break;
    }
  }
  // 2. activation scales of every value an NPU op reads or writes
  const MetaInfo* as = m->find_meta(fmt::meta::kNpuActScales);
  if (!as) {
    *err = std::string("metadata '") + fmt::meta::kNpuActScales +
           "' is missing: the NPU needs static activation scales from calibration (npu_calibrate)";
    return KERF_ERR_UNSUPPORTED;
  }
  if (as->type != fmt::MetaType::kBytes || as->size != 8 * uint64_t(m->values.size())) {
    *err = std::string("metadata '") + fmt::meta::kNpuActScales + "': must be bytes, " +
           std::to_string(8 * m->values.size()) + " long (8 per value, " + std::to_string(m->values.size()) +
           " values); it has " + std::to_string(as->size);
    return KERF_ERR_CORRUPT;
  }
  for (size_t i = 0; i < m->ops.size(); ++i) {
    if (!on[i]) continue;
    const OpInfo& op = m->ops[i];
    for (uint32_t ref : op.inputs)
      if (!(ref & fmt::kRefTensorBit))
        if (const int rc = check_value(ref, as, err); rc != KERF_OK) return rc;
    if (const int rc = check_value(op.output, as, err); rc != KERF_OK) return rc;
  }
  // 3. GatedFFN internal scales
  const MetaInfo* osm = m->find_meta(fmt::meta::kNpuOpScales);
  if (any_ffn && !osm) {
    *err = std::string("metadata '") + fmt::meta::kNpuOpScales +
           "' is missing: the NPU needs the static scales of the GatedFFN internals from calibration (npu_calibrate)";
    return KERF_ERR_UNSUPPORTED;
  }
  if (osm && (osm->type != fmt::MetaType::kBytes || osm->size != 16 * uint64_t(m->ops.size()))) {
    *err = std::string("metadata '") + fmt::meta::kNpuOpScales + "': must be bytes, " +
           std::to_string(16 * m->ops.size()) + " long (4 float32 per op, " + std::to_string(m->ops.size()) +
           " ops); it has " + std::to_string(osm->size);
    return KERF_ERR_CORRUPT;
  }
  // 4. per-op constants
  for (size_t i = 0; i < m->ops.size(); ++i) {
    if (!on[i]) continue;
    const OpInfo& op = m->ops[i];
    OpState& os = ops_[i];
    const ValState& out = vals_[op.output];
    auto in = [&](size_t k) -> const ValState& { return vals_[op.inputs[k]]; };
    switch (op.op) {
      case OpCode::kLinear: {
        MatQ& mq = os.mat[0];
        if (in(0).bits == 8 && mq.K * 127 * (mq.wbits == 8 ? 128 : 8) > int64_t(std::numeric_limits<int32_t>::max())) {
          *err = op_label(op, i) + ": K = " + std::to_string(mq.K) +
                 " is too large for the int32 accumulator of 8-bit activations";
          return KERF_ERR_UNSUPPORTED;
        }
        if (const int rc = mat_multipliers(i, &mq, in(0).scale, out.scale, "output", err); rc != KERF_OK) return rc;
        break;
      }
      case OpCode::kRMSNorm: {
        const TensorInfo& t = m->tensors[op.inputs[1] & ~fmt::kRefTensorBit];
        const int64_t D = out.width;
        std::vector<float> gam(static_cast<size_t>(D));
        dequant_row(t.view(), 0, gam.data());
        os.g.assign(size_t(D), Multiplier{});
        os.gneg.assign(size_t(D), 0);
        for (int64_t d = 0; d < D; ++d) {
          const float gv = gam[size_t(d)];
          if (!std::isfinite(gv)) {
            *err = op_label(op, i) + ": weight '" + std::string(t.name) + "' element " + std::to_string(d) +
                   " is not finite";
            return KERF_ERR_CORRUPT;
          }
          os.gneg[size_t(d)] = gv < 0.f;
          const double real = std::fabs(double(gv)) / double(out.scale);
          if (const int rc = multiplier(i, real, "weight / output scale", &os.g[size_t(d)], 31, err); rc != KERF_OK)
            return rc;
        }
        os.eps30 = rmsnorm_eps_q30(op.eps, in(0).scale);
        break;
      }
      case OpCode::kRotary: {
        os.inc.resize(size_t(op.head_dim / 2));
        for (int64_t k = 0; k < op.head_dim / 2; ++k) os.inc[size_t(k)] = rope_phase_inc(k, op.head_dim, op.theta);
        if (const int rc = multiplier(i, double(in(0).scale) / double(out.scale), "input / output scale", &os.mul, 31,
                                      err);
            rc != KERF_OK)
          return rc;
        break;
      }
      case OpCode::kAttention: {
        AttnParams& ap = os.attn;
        ap.n_heads = op.n_heads;
        ap.n_kv_heads = op.n_kv_heads;
        ap.head_dim = op.head_dim;
        ap.causal = op.causal != 0;
        ap.out_bits = out.bits;
        ap.logit_neg = op.scale < 0.0;
        if (n_ctx_ > kMaxKeys) {
          *err = op_label(op, i) + ": n_ctx = " + std::to_string(n_ctx_) + " exceeds the " + std::to_string(kMaxKeys) +
                 " keys whose Q18 exponentials the NPU softmax sums in int32; create the session with n_ctx <= " +
                 std::to_string(kMaxKeys);
          return KERF_ERR_UNSUPPORTED;
        }
        const double lr = (((std::fabs(op.scale) * double(in(0).scale)) * double(in(1).scale)) * kLog2E) * 65536.0;
        if (const int rc = multiplier(i, lr, "logit", &ap.logit, 31, err); rc != KERF_OK) return rc;
        if (const int rc = multiplier(i, double(in(2).scale) / double(out.scale), "v / output scale", &ap.out, 31, err);
            rc != KERF_OK)
          return rc;
        const size_t kvb = size_t(n_ctx_) * size_t(op.n_kv_heads * op.head_dim) * sizeof(int16_t);
        if (!os.kc.reserve(kvb) || !os.vc.reserve(kvb)) {
          *err = op_label(op, i) + ": out of memory for the KV cache";
          return KERF_ERR_MEMORY;
        }
        break;
      }
      case OpCode::kGatedFFN: {
        float rec[4];
        std::memcpy(rec, osm->data + 16 * uint64_t(i), 16);
        const std::string where = std::string("metadata '") + fmt::meta::kNpuOpScales + "': " + op_label(op, i);
        for (int k = 0; k < 3; ++k)
          if (!std::isfinite(rec[k]) || !(rec[k] > 0.f)) {
            const char* nm[3] = {"h1 = w1 x", "h3 = w3 x", "silu(h1) * h3"};
            *err = where + ": scale of " + nm[k] + " is " + strf("%g", double(rec[k])) + " (needs a finite scale > 0)";
            return KERF_ERR_CORRUPT;
          }
        if (rec[3] != 8.f && rec[3] != 16.f) {
          *err = where + ": bits of the internals are " + strf("%g", double(rec[3])) + " (needs 8 or 16)";
          return KERF_ERR_CORRUPT;
        }
        for (int k = 0; k < 3; ++k) os.s_h[k] = rec[k];
        os.hbits = int(rec[3]);
        const bool a8 = in(0).bits == 8, g8 = os.hbits == 8;
        for (int k = 0; k < 3; ++k) {
          const MatQ& mq = os.mat[k];
          if ((k < 2 ? a8 : g8) && mq.K * 127 * (mq.wbits == 8 ? 128 : 8) > int64_t(std::numeric_limits<int32_t>::max())) {
            *err = op_label(op, i) + ": K = " + std::to_string(mq.K) +
                   " is too large for the int32 accumulator of 8-bit activations";
            return KERF_ERR_UNSUPPORTED;
          }
        }
        int rc = mat_multipliers(i, &os.mat[0], in(0).scale, os.s_h[0], "w1", err);
        if (rc == KERF_OK) rc = mat_multipliers(i, &os.mat[1], in(0).scale, os.s_h[1], "w3", err);
        if (rc == KERF_OK) rc = mat_multipliers(i, &os.mat[2], os.s_h[2], out.scale, "w2", err);
        if (rc == KERF_OK)
          rc = multiplier(i, (double(os.s_h[0]) * double(os.s_h[1])) / double(os.s_h[2]), "gate", &os.mul, 31, err);
        if (rc != KERF_OK) return rc;
        silu_lut(os.s_h[0], os.hbits, &os.lut);
        break;
      }
      case OpCode::kAdd: {
        int rc = multiplier(i, double(in(0).scale) / double(out.scale), "a / output scale", &os.mul, 15, err);
        if (rc == KERF_OK)
          rc = multiplier(i, double(in(1).scale) / double(out.scale), "b / output scale", &os.mul2, 15, err);
        if (rc != KERF_OK) return rc;
        break;
      }
      case OpCode::kEmbedding: break;  // rejected above
    }
  }
  // 5. scratch
  const size_t hb = size_t(n_ctx_) * size_t(max_f) * sizeof(int16_t);
  if ((max_f > 0 && (!h1_.reserve(hb) || !h3_.reserve(hb) || !g_.reserve(hb))) ||
      !scratch_.reserve(2 * size_t(n_ctx_) * sizeof(int32_t))) {
    *err = "out of memory for the NPU scratch buffers";
    return KERF_ERR_MEMORY;
  }
  return KERF_OK;
}

int NpuBackend::value_arg(uint32_t v, int64_t T, std::string* err) const {
  if (!m_ || v >= vals_.size() || !vals_[v].used) {
    *err = "value #" + std::to_string(v) + " is not on the NPU";
    return KERF_ERR_ARGUMENT;
  }
  if (T < 1 || T > n_ctx_) {
    *err = "T = " + std::to_string(T) + " outside [1, n_ctx = " + std::to_string(n_ctx_) + "]";
    return KERF_ERR_ARGUMENT;
  }
  return KERF_OK;
}

int NpuBackend::upload(uint32_t v, const float* host, int64_t T, std::string* err) {
  if (const int rc = value_arg(v, T, err); rc != KERF_OK) return rc;
  const auto t0 = Clock::now();
  const ValState& vs = vals_[v];
  const int32_t qmax = qmax_of(vs.bits);
  int16_t* dst = vs.p();
  const int64_t n = T * vs.width;
  for (int64_t k = 0; k < n; ++k) dst[k] = quantize_value(host[k], vs.scale, qmax);
  stats.uploads += 1;
  stats.upload_bytes += uint64_t(n) * sizeof(float);
  stats.transfer_ns += ns_since(t0);
  return KERF_OK;
}

int NpuBackend::download(uint32_t v, float* host, int64_t T, std::string* err) {
  if (const int rc = value_arg(v, T, err); rc != KERF_OK) return rc;
  const auto t0 = Clock::now();
  const ValState& vs = vals_[v];
  const int16_t* src = vs.p();
  const int64_t n = T * vs.width;
  for (int64_t k = 0; k < n; ++k) host[k] = float(src[k]) * vs.scale;
  stats.downloads += 1;
  stats.download_bytes += uint64_t(n) * sizeof(float);
  stats.transfer_ns += ns_since(t0);
  return KERF_OK;
}

// The KV caches hold the k and v values' codes (their static scales): a handoff converts like a
// value transfer (docs/npu-arithmetic.md section 3).
int NpuBackend::kv_rows(size_t i, int64_t pos0, int64_t T, float* k, float* v, bool write, std::string* err) {
  if (!m_ || i >= ops_.size() || !ops_[i].on || m_->ops[i].op != OpCode::kAttention || !k || !v || T < 1 || pos0 < 0 ||
      pos0 + T > n_ctx_) {
    *err = "kv_rows: bad arguments (an Attention op on the NPU; rows within n_ctx)";
    return KERF_ERR_ARGUMENT;
  }
  const auto t0 = Clock::now();
  const OpInfo& op = m_->ops[i];
  const int64_t kvw = op.n_kv_heads * op.head_dim, n = T * kvw;
  for (int c = 0; c < 2; ++c) {
    const ValState& vs = vals_[op.inputs[size_t(1 + c)]];
    int16_t* cache = (c == 0 ? ops_[i].kc : ops_[i].vc).as<int16_t>() + pos0 * kvw;
    float* host = c == 0 ? k : v;
    if (write) {
      const int32_t qmax = qmax_of(vs.bits);
      for (int64_t j = 0; j < n; ++j) cache[j] = quantize_value(host[j], vs.scale, qmax);
    } else {
      for (int64_t j = 0; j < n; ++j) host[j] = float(cache[j]) * vs.scale;
    }
  }
  if (write) stats.uploads += 2, stats.upload_bytes += uint64_t(2 * n) * sizeof(float);
  else stats.downloads += 2, stats.download_bytes += uint64_t(2 * n) * sizeof(float);
  stats.transfer_ns += ns_since(t0);
  return KERF_OK;
}

int NpuBackend::codes(uint32_t v, int64_t T, int16_t* out, std::string* err) const {
  if (const int rc = value_arg(v, T, err); rc != KERF_OK) return rc;
  std::memcpy(out, vals_[v].p(), size_t(T * vals_[v].width) * sizeof(int16_t));
  return KERF_OK;
}

int NpuBackend::run(size_t i, int64_t T, int64_t pos0, std::string* err) {
  if (!m_ || i >= ops_.size() || !ops_[i].on) {
    *err = "op #" + std::to_string(i) + " is not on the NPU";
    return KERF_ERR_ARGUMENT;
  }
  if (T < 1 || pos0 < 0) {
    *err = "T = " + std::to_string(T) + ", pos0 = " + std::to_string(pos0) + " invalid";
    return KERF_ERR_ARGUMENT;
  }
  if (pos0 + T > n_ctx_) {
    *err = "positions up to " + std::to_string(pos0 + T) + " exceed n_ctx = " + std::to_string(n_ctx_);
    return KERF_ERR_CONTEXT;
  }
  const auto t0 = Clock::now();
  const OpInfo& op = m_->ops[i];
  OpState& os = ops_[i];
  const ValState& out = vals_[op.output];
  auto in = [&](size_t k) -> const ValState& { return vals_[op.inputs[k]]; };
  switch (op.op) {
    case OpCode::kRMSNorm:
      rmsnorm(in(0).p(), T, out.width, os.eps30, os.g.data(), os.gneg.data(), out.bits, out.p());
      break;
    case OpCode::kLinear: {
      const MatQ& mq = os.mat[0];
      linear(in(0).p(), T, mq.K, in(0).bits, mq.p(), mq.N, mq.mul.data(), out.bits, out.p());
      break;
    }
    case OpCode::kRotary:
      rotary(in(0).p(), out.p(), T, out.width, op.head_dim, op.interleaved != 0, pos0, os.inc.data(), os.mul, out.bits);
      break;
    case OpCode::kAttention: {
      const int64_t kvw = op.n_kv_heads * op.head_dim;
      int16_t* kc = os.kc.as<int16_t>();
      int16_t* vc = os.vc.as<int16_t>();
      std::memcpy(kc + pos0 * kvw, in(1).p(), size_t(T * kvw) * sizeof(int16_t));
      std::memcpy(vc + pos0 * kvw, in(2).p(), size_t(T * kvw) * sizeof(int16_t));
      attention(os.attn, in(0).p(), T, pos0, kc, vc, out.p(), scratch_.as<int32_t>());
      break;
    }
    case OpCode::kGatedFFN: {
      const MatQ &w1 = os.mat[0], &w3 = os.mat[1], &w2 = os.mat[2];
      int16_t *h1 = h1_.as<int16_t>(), *h3 = h3_.as<int16_t>(), *g = g_.as<int16_t>();
      linear(in(0).p(), T, w1.K, in(0).bits, w1.p(), w1.N, w1.mul.data(), os.hbits, h1);
      linear(in(0).p(), T, w3.K, in(0).bits, w3.p(), w3.N, w3.mul.data(), os.hbits, h3);
      silu_mul(h1, h3, T * w1.N, os.lut.data(), os.hbits, os.mul, os.hbits, g);
      linear(g, T, w2.K, os.hbits, w2.p(), w2.N, w2.mul.data(), out.bits, out.p());
      break;
    }
    case OpCode::kAdd:
      add(in(0).p(), in(1).p(), T * out.width, os.mul, os.mul2, out.bits, out.p());
      break;
    case OpCode::kEmbedding:
      *err = "Embedding is not supported on the NPU";
      return KERF_ERR_UNSUPPORTED;
  }
  stats.ops += 1;
  stats.run_ns += ns_since(t0);
  return KERF_OK;
}

}  // namespace

std::unique_ptr<DeviceBackend> make_npu_backend(std::string* err) {
  std::unique_ptr<DeviceBackend> b(new (std::nothrow) NpuBackend);
  if (!b && err) *err = "out of memory";
  return b;
}

namespace npu {
int read_codes(DeviceBackend* b, uint32_t v, int64_t T, int16_t* out, std::string* err) {
  if (!b || b->unit() != fmt::Backend::kNpu) {
    *err = "not an NPU backend";
    return KERF_ERR_ARGUMENT;
  }
  return static_cast<NpuBackend*>(b)->codes(v, T, out, err);
}
}  // namespace npu

}  // namespace kerf::rt
