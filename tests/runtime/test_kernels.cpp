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

// ---------------------------------------------------------------- fast kernels vs the reference

namespace {

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& ref) {
  double scale = 0, d = 0;
  for (float r : ref) scale = std::max(scale, double(std::fabs(r)));
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - ref[i])));
  return d / std::max(scale, 1e-30);
}

}  // namespace

TEST_CASE("f16 rows: the branch-free conversion is fmt::f16_to_f32 for all 65536 inputs", "[kernels][fast]") {
  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = uint16_t(i);
  std::vector<float> out(65536);
  kerf::rt::f16_to_f32_row(h.data(), out.data(), 65536);
  int64_t bad = 0;
  for (uint32_t i = 0; i < 65536; ++i) bad += f32_bits(out[i]) != f32_bits(fmt::f16_to_f32(uint16_t(i)));
  CHECK(bad == 0);
}

TEST_CASE("exp_fast: relative error < 2e-7 on [-87, 88], clamped outside, NaN kept", "[kernels][fast]") {
  std::vector<float> x;
  for (double v = -87.0; v <= 88.0; v += 0.001) x.push_back(float(v));
  for (float v : {0.f, -0.f, 1e-8f, -1e-8f, 0.34657359f, -0.34657359f}) x.push_back(v);
  std::vector<float> y(x.size());
  kerf::rt::exp_fast_n(x.data(), y.data(), int64_t(x.size()));
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::fabs(double(y[i]) / std::exp(double(x[i])) - 1.0));
  WARN("exp_fast max relative error " << worst);
  CHECK(worst < 2e-7);
  const float edge[4] = {-200.f, 200.f, -INFINITY, NAN};
  float e[4];
  kerf::rt::exp_fast_n(edge, e, 4);
  CHECK(e[0] == Approx(std::exp(-87.0)).epsilon(1e-6));
  CHECK(e[1] == Approx(std::exp(88.0)).epsilon(1e-6));
  CHECK(e[2] == e[0]);
  CHECK(std::isnan(e[3]));
}

TEST_CASE("rotary_fast is bit-identical to rotary (table from rope_table_fill)", "[kernels][fast]") {
  std::mt19937 rng(14);
  const int64_t T = 5, Dh = 64, H = 3, W = H * Dh, pos0 = 1000;
  const std::vector<float> x = random_vec(rng, size_t(T * W), 3.f);
  std::vector<float> table(size_t((pos0 + T) * Dh));
  kerf::rt::rope_table_fill(Dh, 500000.0, 0, 7, table.data());  // filled in two pieces, like a session
  kerf::rt::rope_table_fill(Dh, 500000.0, 7, pos0 + T, table.data());
  for (bool inter : {true, false}) {
    std::vector<float> ref = x, fast(x.size()), inplace = x;
    kerf::rt::rotary(ref.data(), T, W, Dh, 500000.0, inter, pos0);
    kerf::rt::rotary_fast(x.data(), fast.data(), T, W, Dh, inter, pos0, table.data());
    kerf::rt::rotary_fast(inplace.data(), inplace.data(), T, W, Dh, inter, pos0, table.data());
    int64_t bad = 0;
    for (size_t i = 0; i < x.size(); ++i) bad += (f32_bits(fast[i]) != f32_bits(ref[i])) + (f32_bits(inplace[i]) != f32_bits(ref[i]));
    CHECK(bad == 0);
  }
}

TEST_CASE("rmsnorm_fast, silu_mul_fast, linear_rows against the reference kernels", "[kernels][fast]") {
  std::mt19937 rng(15);
  const int64_t T = 3, D = 203;  // not a multiple of 16: vector body and scalar tail
  const std::vector<float> x = random_vec(rng, size_t(T * D), 2.f), w = random_vec(rng, size_t(D), 1.f);
  std::vector<float> ref(x.size()), fast(x.size());
  kerf::rt::rmsnorm(x.data(), w.data(), T, D, 1e-5, ref.data());
  kerf::rt::rmsnorm_fast(x.data(), w.data(), T, D, 1e-5, fast.data());
  CHECK(max_rel_diff(fast, ref) < 1e-6);

  std::vector<float> a = random_vec(rng, 1000, 4.f), a2 = a;
  const std::vector<float> b = random_vec(rng, 1000, 1.f);
  kerf::rt::silu_mul(a.data(), b.data(), 1000);
  kerf::rt::silu_mul_fast(a2.data(), b.data(), 1000);
  for (size_t i = 0; i < a.size(); ++i) CHECK(a2[i] == Approx(a[i]).epsilon(1e-6).margin(1e-30));

  const int64_t rows = 37, cols = 100;
  const std::vector<float> wm = random_vec(rng, size_t(rows * cols), 1.f), xm = random_vec(rng, size_t(T * cols), 1.f);
  const art::TensorRecord recs[] = {
      art::TensorRecord::from_f32("f", {rows, cols}, wm), art::TensorRecord::from_f16("h", {rows, cols}, wm),
      kt::quantize_q4_asym("q", rows, cols, 32, wm),
      generic_record("g", quantize_generic_q(fmt::DType::kQSym, 3, true, rows, cols, 32, wm))};
  for (const art::TensorRecord& r : recs) {
    INFO(r.name);
    WeightView v = view_of(r);
    v.flags = r.flags;
    std::vector<float> yref(size_t(T * rows)), yfast(yref.size()), ysplit(yref.size()), row(static_cast<size_t>(cols));
    kerf::rt::linear(v, xm.data(), T, yref.data(), row.data());
    kerf::rt::linear_rows(v, xm.data(), T, 0, rows, yfast.data(), rows, row.data());
    CHECK(max_rel_diff(yfast, yref) < 1e-5);
    // rows split in pieces (as threads do) and tokens one at a time: the same bits
    for (int64_t r0 = 0; r0 < rows; r0 += 10)
      for (int64_t t = 0; t < T; ++t)
        kerf::rt::linear_rows(v, xm.data() + t * cols, 1, r0, std::min(rows, r0 + 10), ysplit.data() + t * rows, rows,
                              row.data());
    CHECK(ysplit == yfast);
  }
}

TEST_CASE("attention_fast: f32 cache == reference, f16 cache == reference on f16-rounded K/V", "[kernels][fast]") {
  std::mt19937 rng(16);
  const int64_t T = 9, H = 4, G = 2, Dh = 40, n_ctx = 12, kvw = G * Dh;
  const double scale = 1.0 / std::sqrt(double(Dh));
  const std::vector<float> q = random_vec(rng, size_t(T * H * Dh), 1.f), k = random_vec(rng, size_t(T * kvw), 1.f),
                           v = random_vec(rng, size_t(T * kvw), 1.f);
  for (bool causal : {true, false}) {
    INFO("causal " << causal);
    const kerf::rt::AttnShape sh{H, G, Dh, scale, causal};
    auto reference = [&](const std::vector<float>& kk, const std::vector<float>& vv) {
      std::vector<float> kc(size_t(n_ctx * kvw)), vc(kc.size()), sc(static_cast<size_t>(n_ctx)), out(q.size());
      kerf::rt::attention(sh, q.data(), kk.data(), vv.data(), T, 0, kc.data(), vc.data(), out.data(), sc.data());
      return out;
    };
    for (bool f16 : {false, true}) {
      INFO("f16 cache " << f16);
      std::vector<float> kcf(size_t(n_ctx * kvw)), vcf(kcf.size());
      std::vector<uint16_t> kch(kcf.size()), vch(kcf.size());
      kerf::rt::KVView kv;
      kv.k = f16 ? static_cast<void*>(kch.data()) : kcf.data();
      kv.v = f16 ? static_cast<void*>(vch.data()) : vcf.data();
      kv.f16 = f16;
      kv.n_kv_heads = G;
      kv.head_dim = Dh;
      kv.n_ctx = n_ctx;
      kerf::rt::kv_store(kv, k.data(), v.data(), 4, 0);  // stored in two calls
      kerf::rt::kv_store(kv, k.data() + 4 * kvw, v.data() + 4 * kvw, T - 4, 4);
      std::vector<float> whole(q.size()), split(q.size()), sc(static_cast<size_t>(n_ctx));
      kerf::rt::attention_fast(sh, q.data(), T, 0, T, kv, 0, H * T, whole.data(), sc.data());
      kerf::rt::attention_fast(sh, q.data(), T, 0, T, kv, 0, 13, split.data(), sc.data());  // two threads' items
      kerf::rt::attention_fast(sh, q.data(), T, 0, T, kv, 13, H * T, split.data(), sc.data());
      CHECK(split == whole);
      std::vector<float> kr = k, vr = v;  // what the f16 cache holds
      if (f16)
        for (size_t i = 0; i < kr.size(); ++i) {
          kr[i] = fmt::f16_to_f32(fmt::f32_to_f16(k[i]));
          vr[i] = fmt::f16_to_f32(fmt::f32_to_f16(v[i]));
        }
      CHECK(max_rel_diff(whole, reference(kr, vr)) < 1e-5);
      if (f16) {
        const double d = max_rel_diff(whole, reference(k, v));
        WARN("attention with an f16 KV cache: max |diff| / max |out| = " << d);
        CHECK(d > 0);
        CHECK(d < 2e-3);
      }
      // the last query row alone (a last-logits prefill): the same bits as row T-1 of the whole
      std::vector<float> last(size_t(H * Dh));
      kerf::rt::attention_fast(sh, q.data() + (T - 1) * H * Dh, 1, T - 1, T, kv, 0, H, last.data(), sc.data());
      CHECK(std::equal(last.begin(), last.end(), whole.end() - H * Dh));
    }
  }
}

// The fast kernels' sums in their documented order, in plain scalar code: 16 partial sums (element
// i into sum i % 16), reduced as ((s0+s8)+(s4+s12)) + ... (kernels.cpp hsum), then the tail in
// order. No contraction here either, so the comparison below is exact on every ISA.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
namespace {
float dot16_scalar(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] = acc[j] + a[i + j] * b[i + j];
  float a8[8], a4[4];
  for (int j = 0; j < 8; ++j) a8[j] = acc[j] + acc[j + 8];
  for (int j = 0; j < 4; ++j) a4[j] = a8[j] + a8[j + 4];
  float s = (a4[0] + a4[2]) + (a4[1] + a4[3]);
  for (; i < n; ++i) s = s + a[i] * b[i];
  return s;
}
}  // namespace

TEST_CASE("fast kernels sum in their documented order: the same bits on every ISA", "[kernels][fast]") {
  std::mt19937 rng(17);
  const int64_t rows = 5, T = 2;
  for (int64_t K : {int64_t(7), int64_t(16), int64_t(203), int64_t(768)}) {
    INFO("K " << K);
    const std::vector<float> w = random_vec(rng, size_t(rows * K), 1.f), x = random_vec(rng, size_t(T * K), 1.f);
    const art::TensorRecord f = art::TensorRecord::from_f32("f", {rows, K}, w);
    std::vector<float> y(size_t(T * rows)), row(static_cast<size_t>(K));
    kerf::rt::linear_rows(view_of(f), x.data(), T, 0, rows, y.data(), rows, row.data());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < rows; ++r)
        CHECK(f32_bits(y[size_t(t * rows + r)]) == f32_bits(dot16_scalar(w.data() + r * K, x.data() + t * K, K)));
    std::vector<float> o(static_cast<size_t>(K));
    kerf::rt::rmsnorm_fast(x.data(), w.data(), 1, K, 1e-5, o.data());
    const float inv = 1.0f / std::sqrt(dot16_scalar(x.data(), x.data(), K) / float(K) + float(1e-5));
    int64_t bad = 0;
    for (int64_t i = 0; i < K; ++i) bad += f32_bits(o[size_t(i)]) != f32_bits(w[size_t(i)] * (x[size_t(i)] * inv));
    CHECK(bad == 0);
  }
}
