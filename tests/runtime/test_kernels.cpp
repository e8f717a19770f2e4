// Kernels against straightforward double-precision references on small odd sizes.
#include <catch2/catch.hpp>

#include "../../runtime-lite/src/kernels.h"
#include "test_util.h"

using namespace kt;
using kerf::rt::WeightView;

namespace {

WeightView view_of(const art::TensorRecord& t) {
  WeightView w;
  w.dtype = t.dtype;
  w.data = t.payload.data();
  w.rows = t.shape.size() == 2 ? t.shape[0] : 1;
  w.cols = t.shape.size() == 2 ? t.shape[1] : t.shape[0];
  w.group = t.group_size;
  return w;
}

/// Reference dequantization straight from the SPEC formulas (independent of the kernel code).
std::vector<double> ref_dequant(const art::TensorRecord& t) {
  const int64_t R = t.shape[0], C = t.shape[1], g = t.group_size, ng = (C + g - 1) / g;
  std::vector<double> out(size_t(R * C));
  const uint8_t* p = t.payload.data();
  auto f16 = [](const uint8_t* q) {
    uint16_t h;
    std::memcpy(&h, q, 2);
    return double(fmt::f16_to_f32(h));
  };
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      if (t.dtype == fmt::DType::kQ8Sym) {
        out[size_t(r * C + c)] = double(int8_t(p[r * C + c])) * f16(p + R * C + 2 * (r * ng + c / g));
      } else {
        const int64_t rb = (C + 1) / 2;
        const int code = (c % 2 == 0) ? (p[r * rb + c / 2] & 15) : (p[r * rb + c / 2] >> 4);
        out[size_t(r * C + c)] = code * f16(p + R * rb + 2 * (r * ng + c / g)) + f16(p + R * rb + 2 * R * ng + 2 * (r * ng + c / g));
      }
    }
  return out;
}

void check_gemv(const art::TensorRecord& t, const std::vector<float>& orig, double quant_tol) {
  const WeightView w = view_of(t);
  const std::vector<double> wd = ref_dequant(t);
  std::mt19937 rng(11);
  const int64_t T = 3;
  const std::vector<float> x = random_vec(rng, size_t(T * w.cols), 1.f);
  std::vector<float> y(size_t(T * w.rows)), row(size_t(w.cols));
  kerf::rt::linear(w, x.data(), T, y.data(), row.data());
  for (int64_t t2 = 0; t2 < T; ++t2)
    for (int64_t n = 0; n < w.rows; ++n) {
      double ref = 0, orig_ref = 0, mag = 0;
      for (int64_t k = 0; k < w.cols; ++k) {
        ref += wd[size_t(n * w.cols + k)] * x[size_t(t2 * w.cols + k)];
        orig_ref += double(orig[size_t(n * w.cols + k)]) * x[size_t(t2 * w.cols + k)];
        mag += std::fabs(wd[size_t(n * w.cols + k)] * x[size_t(t2 * w.cols + k)]);
      }
      INFO("row " << n << " token " << t2);
      CHECK(std::fabs(y[size_t(t2 * w.rows + n)] - ref) <= 1e-5 * (1 + mag));   // kernel == SPEC dequant
      CHECK(std::fabs(y[size_t(t2 * w.rows + n)] - orig_ref) <= quant_tol * (1 + mag));  // quantization error bounded
    }
  // dequant_row reproduces every element
  for (int64_t r = 0; r < w.rows; ++r) {
    kerf::rt::dequant_row(w, r, row.data());
    for (int64_t c = 0; c < w.cols; ++c) REQUIRE(row[size_t(c)] == Approx(wd[size_t(r * w.cols + c)]).margin(1e-7));
  }
}

}  // namespace

TEST_CASE("Q8Sym and Q4Asym GEMV, cols 172 with group 32 (partial last group) and odd cols", "[kernels]") {
  std::mt19937 rng(5);
  for (int64_t cols : {172, 37}) {
    const int64_t rows = 7;
    const std::vector<float> w = random_vec(rng, size_t(rows * cols), 1.f);
    INFO("cols " << cols);
    check_gemv(kt::quantize_q8_sym("w", rows, cols, 32, w), w, 0.01);
    check_gemv(kt::quantize_q4_asym("w", rows, cols, 32, w), w, 0.12);
  }
}

TEST_CASE("F16 and F32 GEMV", "[kernels]") {
  std::mt19937 rng(9);
  const int64_t rows = 5, cols = 13, T = 2;
  const std::vector<float> w = random_vec(rng, size_t(rows * cols), 1.f), x = random_vec(rng, size_t(T * cols), 1.f);
  const art::TensorRecord h = art::TensorRecord::from_f16("h", {rows, cols}, w);
  const art::TensorRecord f = art::TensorRecord::from_f32("f", {rows, cols}, w);
  std::vector<float> yh(size_t(T * rows)), yf(size_t(T * rows)), row(static_cast<size_t>(cols));
  kerf::rt::linear(view_of(h), x.data(), T, yh.data(), row.data());
  kerf::rt::linear(view_of(f), x.data(), T, yf.data(), row.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < rows; ++n) {
      double ref = 0, ref16 = 0;
      for (int64_t k = 0; k < cols; ++k) {
        ref += double(w[size_t(n * cols + k)]) * x[size_t(t * cols + k)];
        ref16 += double(fmt::f16_to_f32(fmt::f32_to_f16(w[size_t(n * cols + k)]))) * x[size_t(t * cols + k)];
      }
      CHECK(yf[size_t(t * rows + n)] == Approx(ref).margin(1e-5));
      CHECK(yh[size_t(t * rows + n)] == Approx(ref16).margin(1e-5));
    }
}

TEST_CASE("Embedding rows are dequantized table rows", "[kernels]") {
  std::mt19937 rng(2);
  const std::vector<float> w = random_vec(rng, 9 * 11, 1.f);
  const art::TensorRecord q = kt::quantize_q4_asym("e", 9, 11, 4, w);
  const std::vector<double> wd = ref_dequant(q);
  const int32_t toks[3] = {8, 0, 8};
  std::vector<float> out(3 * 11);
  kerf::rt::embedding(view_of(q), toks, 3, out.data());
  for (int t = 0; t < 3; ++t)
    for (int c = 0; c < 11; ++c) CHECK(out[size_t(t * 11 + c)] == Approx(wd[size_t(toks[t] * 11 + c)]).margin(1e-7));
}

TEST_CASE("RMSNorm", "[kernels]") {
  std::mt19937 rng(3);
  const int64_t T = 2, D = 7;
  const std::vector<float> x = random_vec(rng, size_t(T * D), 2.f), w = random_vec(rng, size_t(D), 1.f);
  std::vector<float> out(size_t(T * D));
  kerf::rt::rmsnorm(x.data(), w.data(), T, D, 1e-5, out.data());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += double(x[size_t(t * D + i)]) * x[size_t(t * D + i)];
    const double inv = 1.0 / std::sqrt(ss / D + 1e-5);
    for (int64_t i = 0; i < D; ++i) CHECK(out[size_t(t * D + i)] == Approx(w[size_t(i)] * x[size_t(t * D + i)] * inv).margin(1e-5));
  }
}

TEST_CASE("Rotary matches the direct formula (interleaved and half-split)", "[kernels]") {
  std::mt19937 rng(4);
  const int64_t T = 3, Dh = 6, H = 2, W = H * Dh, pos0 = 17;
  const std::vector<float> x = random_vec(rng, size_t(T * W), 1.f);
  for (bool inter : {true, false}) {
    std::vector<float> y = x;
    kerf::rt::rotary(y.data(), T, W, Dh, 10000.0, inter, pos0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < Dh / 2; ++i) {
          const double ang = double(pos0 + t) / std::pow(10000.0, double(2 * i) / double(Dh));
          const int64_t ia = inter ? 2 * i : i, ib = inter ? 2 * i + 1 : i + Dh / 2;
          const double a = x[size_t(t * W + h * Dh + ia)], b = x[size_t(t * W + h * Dh + ib)];
          CHECK(y[size_t(t * W + h * Dh + ia)] == Approx(a * std::cos(ang) - b * std::sin(ang)).margin(1e-5));
          CHECK(y[size_t(t * W + h * Dh + ib)] == Approx(a * std::sin(ang) + b * std::cos(ang)).margin(1e-5));
        }
  }
  // position 0 is the identity
  std::vector<float> y = x;
  kerf::rt::rotary(y.data(), 1, W, Dh, 10000.0, true, 0);
  for (int64_t i = 0; i < W; ++i) CHECK(y[size_t(i)] == x[size_t(i)]);
}

namespace {

/// Double-precision causal GQA attention over all T rows at once (positions 0..T-1).
std::vector<double> ref_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                  int64_t T, int64_t H, int64_t G, int64_t Dh, double scale) {
  std::vector<double> out(size_t(T * H * Dh), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      std::vector<double> s(size_t(t + 1));
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= t; ++j) {
        double d = 0;
        for (int64_t i = 0; i < Dh; ++i) d += double(q[size_t(t * H * Dh + h * Dh + i)]) * k[size_t(j * G * Dh + g * Dh + i)];
        s[size_t(j)] = d * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int64_t j = 0; j <= t; ++j)
        for (int64_t i = 0; i < Dh; ++i)
          out[size_t(t * H * Dh + h * Dh + i)] += s[size_t(j)] / sum * v[size_t(j * G * Dh + g * Dh + i)];
    }
  return out;
}

}  // namespace

TEST_CASE("Attention: prefill == token-by-token decode == double reference, GQA head mapping", "[kernels]") {
  std::mt19937 rng(6);
  const int64_t T = 7, H = 6, G = 2, Dh = 5, n_ctx = 9;
  const double scale = 1.0 / std::sqrt(double(Dh));
  const std::vector<float> q = random_vec(rng, size_t(T * H * Dh), 1.f), k = random_vec(rng, size_t(T * G * Dh), 1.f),
                           v = random_vec(rng, size_t(T * G * Dh), 1.f);
  const kerf::rt::AttnShape sh{H, G, Dh, scale, true};
  std::vector<float> kc(size_t(n_ctx * G * Dh)), vc(kc.size()), scores(static_cast<size_t>(n_ctx));
  std::vector<float> pre(size_t(T * H * Dh));
  kerf::rt::attention(sh, q.data(), k.data(), v.data(), T, 0, kc.data(), vc.data(), pre.data(), scores.data());
  std::vector<float> kc2(kc.size()), vc2(kc.size()), dec(pre.size());
  for (int64_t t = 0; t < T; ++t)
    kerf::rt::attention(sh, q.data() + t * H * Dh, k.data() + t * G * Dh, v.data() + t * G * Dh, 1, t, kc2.data(),
                        vc2.data(), dec.data() + t * H * Dh, scores.data());
  const std::vector<double> ref = ref_attention(q, k, v, T, H, G, Dh, scale);
  for (size_t i = 0; i < pre.size(); ++i) {
    CHECK(std::fabs(pre[i] - dec[i]) <= 1e-5);
    CHECK(std::fabs(pre[i] - ref[i]) <= 1e-5);
  }
  // GQA: heads 0..2 read KV head 0, heads 3..5 KV head 1. Changing KV head 1's values must leave
  // the outputs of heads 0..2 untouched and change heads 3..5.
  std::vector<float> v2 = v;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < Dh; ++i) v2[size_t(t * G * Dh + 1 * Dh + i)] += 1.f;
  std::vector<float> out2(pre.size());
  kerf::rt::attention(sh, q.data(), k.data(), v2.data(), T, 0, kc.data(), vc.data(), out2.data(), scores.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Dh; ++i) {
        const size_t at = size_t(t * H * Dh + h * Dh + i);
        if (h < 3) CHECK(out2[at] == pre[at]);
        else CHECK(out2[at] == Approx(pre[at] + 1.f).margin(1e-5));  // softmax weights sum to 1
      }
}

TEST_CASE("SiLU-gated multiply and Add", "[kernels]") {
  std::vector<float> a = {-2.f, 0.f, 3.f}, b = {1.f, 5.f, 0.5f};
  kerf::rt::silu_mul(a.data(), b.data(), 3);
  CHECK(a[0] == Approx(-2.0 / (1 + std::exp(2.0))));
  CHECK(a[1] == 0.f);
  CHECK(a[2] == Approx(3.0 / (1 + std::exp(-3.0)) * 0.5));
  std::vector<float> o(3);
  kerf::rt::add(b.data(), b.data(), o.data(), 3);
  CHECK(o == std::vector<float>{2.f, 10.f, 1.f});
}
