// Tests for quant/qspec.h: precision specs, parameter rules, ParamGrid, pack / unpack, quantize_rtn,
// and their agreement with bpw.h / rtn.h.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kerf/format.h"
#include "quant/bpw.h"
#include "quant/qspec.h"
#include "quant/rtn.h"

using namespace kerf;
using namespace kerf::quant;

namespace {

QSpec spec(const std::string& text) {
  auto s = parse_qspec(text);
  REQUIRE(s.ok());
  return *s;
}

float f16(float x) { return fmt::f16_to_f32(fmt::f32_to_f16(x)); }

// Deterministic N(0, 1) samples: LCG + Box-Muller (no std distribution differences).
std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  auto uni = [&]() {
    s = s * 1664525u + 1013904223u;
    return (static_cast<double>(s >> 8) + 0.5) / static_cast<double>(1u << 24);
  };
  for (size_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uni())), t = 6.283185307179586 * uni();
    v[i] = static_cast<float>(r * std::cos(t));
    if (i + 1 < n) v[i + 1] = static_cast<float>(r * std::sin(t));
  }
  return v;
}
std::vector<float> uniform(size_t n, float lo, float hi, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) / static_cast<float>(1u << 24);
  }
  return v;
}

double weighted_matrix_sse(const std::vector<float>& w, const std::vector<float>& dq, const float* h, int64_t cols) {
  double e = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = static_cast<double>(w[i]) - dq[i];
    e += (h ? h[i % cols] : 1.0) * d * d;
  }
  return e;
}

std::vector<float> dq_of(const QuantTensor& q) {
  auto d = dequantize(q);
  REQUIRE(d.ok());
  return *d;
}

const std::vector<std::string>& all_kinds() {
  static const std::vector<std::string> v = {
      "int2_sym", "int3_sym", "int4_sym", "int5_sym", "int6_sym", "int7_sym", "int8_sym",
      "int2_asym", "int3_asym", "int4_asym", "int5_asym", "int6_asym", "int7_asym", "int8_asym",
      "ternary", "binary"};
  return v;
}

}  // namespace

// ------------------------------------------------------------------ text form, flags, bits
TEST_CASE("qspec: parse / to_string round trips, dtype and flags", "[qspec]") {
  for (const auto& k : all_kinds())
    for (const std::string g : {"", ":g32", ":g1", ":g7", ":g64", ":row"})
      for (const std::string sc : {"", ":f16", ":k6"}) {
        const std::string text = k + g + sc;
        CAPTURE(text);
        auto s = parse_qspec(text);
        REQUIRE(s.ok());
        REQUIRE(validate(*s).ok());
        auto back = parse_qspec(to_string(*s));
        REQUIRE(back.ok());
        CHECK(*back == *s);
        CHECK(to_string(*back) == to_string(*s));
        CHECK(fmt::qflags_valid(dtype_of(*s), flags_of(*s)));
        CHECK((s->scales == fmt::ScaleFormat::kK6) == (sc == ":k6"));
        CHECK(s->group_size == (g.empty() ? 32 : g == ":row" ? 0 : std::stoi(g.substr(2))));
      }
  CHECK(to_string(spec("int4_asym")) == "int4_asym:g32");
  CHECK(to_string(spec("int3_sym:k6:g32")) == "int3_sym:g32:k6");
  CHECK(to_string(spec("int8_sym:row")) == "int8_sym:row");
  CHECK(to_string(spec("ternary:g64:f16")) == "ternary:g64");
  CHECK(to_string(spec("f16")) == "f16");
  CHECK(to_string(spec("f32")) == "f32");
  CHECK(spec("f16").plain());
  CHECK(dtype_of(spec("f16")) == fmt::DType::kF16);
  CHECK(flags_of(spec("f32")) == 0);

  const QSpec a = spec("int3_sym:g32:k6");
  CHECK(a.kind == QKind::kSym);
  CHECK(a.bits == 3);
  CHECK(a.qmin() == -4);
  CHECK(a.qmax() == 3);
  CHECK(dtype_of(a) == fmt::DType::kQSym);
  CHECK(flags_of(a) == (3u | (1u << 8)));
  const QSpec b = spec("int4_asym:g32");
  CHECK(b.qmin() == 0);
  CHECK(b.qmax() == 15);
  CHECK(dtype_of(b) == fmt::DType::kQAsym);
  CHECK(flags_of(b) == 4u);
  const QSpec t = spec("ternary:g64");
  CHECK(t.bits == 0);
  CHECK(t.qmin() == -1);
  CHECK(t.qmax() == 1);
  CHECK(dtype_of(t) == fmt::DType::kTernary);
  CHECK(flags_of(t) == 0u);
  CHECK(dtype_of(spec("binary:k6")) == fmt::DType::kBinary);
  CHECK(flags_of(spec("binary:k6")) == (1u << 8));
  CHECK(spec("int4_sym:g32").group_for(172) == 32);
  CHECK(spec("int4_sym:g64").group_for(7) == 7);
  CHECK(spec("int4_sym:row").group_for(172) == 172);
}

TEST_CASE("qspec: parse errors quote the text and say what is wrong", "[qspec]") {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "empty"},
      {"int4", "_sym or _asym"},
      {"int9_sym", "outside 2..8"},
      {"int1_asym", "outside 2..8"},
      {"int_sym", "bit width"},
      {"int4_sym:g0", "must be 1"},
      {"int4_sym:g", "unknown option"},
      {"int4_sym:gx", "bad group size"},
      {"int4_sym:g-3", "bad group size"},
      {"int4_sym:g99999999999", "bad group size"},
      {"int4_sym:g32:g64", "given twice"},
      {"int4_sym:k6:f16", "given twice"},
      {"int4_sym:q8", "unknown option 'q8'"},
      {"int4_sym:", "empty option"},
      {"f16:g32", "takes no options"},
      {"INT4_SYM", "unknown precision"},
      {"q4_0", "unknown precision"},
      {"ternary:k5", "unknown option"},
  };
  for (const auto& [text, why] : bad) {
    CAPTURE(text);
    auto s = parse_qspec(text);
    REQUIRE_FALSE(s.ok());
    CHECK(s.status().code() == ErrorCode::kInvalidArgument);
    CHECK_THAT(s.status().message(), Catch::Contains("'" + text + "'"));
    CHECK_THAT(s.status().message(), Catch::Contains(why));
  }
  CHECK(*parse_param_rule("rtn") == ParamRule::kRtn);
  CHECK(*parse_param_rule("twn") == ParamRule::kTwn);
  CHECK(*parse_param_rule("search") == ParamRule::kSearch);
  for (ParamRule r : {ParamRule::kRtn, ParamRule::kTwn, ParamRule::kSearch}) CHECK(*parse_param_rule(param_rule_name(r)) == r);
  auto bad_rule = parse_param_rule("gptq");
  REQUIRE_FALSE(bad_rule.ok());
  CHECK_THAT(bad_rule.status().message(), Catch::Contains("'gptq'"));
}

TEST_CASE("qspec: validate names the bad field", "[qspec]") {
  QSpec s;
  s.kind = QKind::kSym;
  s.bits = 9;
  CHECK_THAT(validate(s).message(), Catch::Contains("bits 9"));
  s.bits = 4;
  s.group_size = -1;
  CHECK_THAT(validate(s).message(), Catch::Contains("group_size -1"));
  s.kind = QKind::kTernary;
  s.group_size = 32;
  CHECK_THAT(validate(s).message(), Catch::Contains("bits 4"));  // ternary needs bits 0
  s.bits = 0;
  CHECK(validate(s).ok());
  s.kind = QKind::kF16;
  CHECK_THAT(validate(s).message(), Catch::Contains("group_size 32"));
  s.group_size = 0;
  CHECK(validate(s).ok());
}

TEST_CASE("qspec: spec_bits == logical_bits for every kind; hand-counted bpw", "[qspec]") {
  for (const auto& k : all_kinds())
    for (const std::string g : {":g32", ":g7", ":g5", ":row", ":g1000"})
      for (const std::string sc : {"", ":k6"})
        for (auto [rows, cols] : {std::pair<int64_t, int64_t>{64, 64}, {1, 1}, {3, 5}, {9, 172}, {7, 13}}) {
          const QSpec s = spec(k + g + sc);
          CAPTURE(to_string(s), rows, cols);
          auto lb = logical_bits(dtype_of(s), rows, cols, s.group_for(cols), flags_of(s));
          REQUIRE(lb.ok());
          CHECK(spec_bits(s, rows, cols) == *lb);
          if (s.group_size == 0) CHECK(*logical_bits(dtype_of(s), rows, cols, 0, flags_of(s)) == *lb);
        }
  CHECK(spec_bits(spec("int4_sym:g32:k6"), 64, 64) == 64 * 64 * 17 / 4);  // 4.25 bpw
  CHECK(spec_bits(spec("int4_asym:g32:k6"), 64, 64) == 64 * 64 * 9 / 2);  // 4.5 bpw
  CHECK(spec_bits(spec("int4_asym:g32"), 64, 64) == 64 * 64 * 5);         // 5.0 bpw (4 + 32/32)
  CHECK(spec_bits(spec("int4_sym:g32"), 64, 64) == 64 * 64 * 9 / 2);      // 4.5 bpw
  // ternary: 13 bytes per 64-col row + one f16 scale per group of 32
  CHECK(spec_bits(spec("ternary:g32"), 10, 64) == 10 * 13 * 8 + 10 * 2 * 16);
  CHECK(spec_bits(spec("binary:g32"), 10, 64) == 10 * 64 + 10 * 2 * 16);
  // k6 with a partial super-block: NG = 3*6 = 18 -> 3 super-blocks
  CHECK(spec_bits(spec("int3_sym:g32:k6"), 3, 172) == 3 * 172 * 3 + 18 * 6 + 3 * 16);
  CHECK(spec_bits(spec("int3_asym:g32:k6"), 3, 172) == 3 * 172 * 3 + 2 * (18 * 6 + 3 * 16));
  CHECK(spec_bits(spec("f16"), 3, 5) == 15 * 16);
  CHECK(spec_bits(spec("f32"), 3, 5) == 15 * 32);
  CHECK(spec_bits(spec("f32"), 0, 5) == 0);
  // logical bits are a lower bound of the payload bits (padding bits are not counted)
  for (const auto& k : all_kinds()) {
    const QSpec s = spec(k + ":g32:k6");
    CHECK(static_cast<uint64_t>(spec_bits(s, 9, 172)) <=
          8 * fmt::quant_payload_bytes(dtype_of(s), 9, 172, 32, flags_of(s)));
  }
}

TEST_CASE("qspec: bpw accounting of generic dtypes uses the flags", "[qspec][quant]") {
  CHECK(code_bits(fmt::DType::kQSym, fmt::make_qflags(3, fmt::ScaleFormat::kK6)) == 3);
  CHECK(code_bits(fmt::DType::kBinary) == 1);
  CHECK(code_row_bits(fmt::DType::kTernary, 64) == 13 * 8);
  CHECK(group_param_bits(fmt::DType::kQAsym, fmt::make_qflags(4, fmt::ScaleFormat::kF16)) == 32);
  CHECK(group_param_bits(fmt::DType::kQAsym, fmt::make_qflags(4, fmt::ScaleFormat::kK6)) == 12);
  CHECK(super_param_bits(fmt::DType::kQAsym, fmt::make_qflags(4, fmt::ScaleFormat::kK6)) == 32);
  CHECK(super_param_bits(fmt::DType::kQSym, fmt::make_qflags(4, fmt::ScaleFormat::kF16)) == 0);
  CHECK_FALSE(logical_bits(fmt::DType::kQSym, 4, 4, 4).ok());  // flags 0: bits 0 is invalid for qsym
  CHECK_FALSE(logical_bits(fmt::DType::kQ4Asym, 4, 4, 4, 4u).ok());  // flags must be 0
  CHECK_FALSE(logical_bits(fmt::DType::kTernary, 4, 4, 4, 2u).ok());
  CHECK(*logical_bits(fmt::DType::kTernary, 4, 4, 4) == 4 * 8 + 4 * 16);  // flags 0 = ternary, f16 scales

  const std::vector<float> w = gaussian(64 * 64, 5);
  auto q = quantize_rtn(w.data(), 64, 64, spec("int4_sym:g32:k6"), nullptr, ParamRule::kRtn);
  REQUIRE(q.ok());
  CHECK(stored_bits(*q) == 64 * 64 * 17 / 4);
  BpwAccount acc;
  REQUIRE(acc.add("w", *q).ok());
  CHECK(acc.bpw() == 4.25);
  REQUIRE(acc.add("w", *q).ok());  // tied: counted once
  CHECK(acc.weight_count() == 64 * 64);
  auto q2 = quantize_rtn(w.data(), 64, 64, spec("int4_sym:g32"), nullptr, ParamRule::kRtn);
  REQUIRE(q2.ok());
  CHECK_FALSE(acc.add("w", *q2).ok());  // same dtype / group, other flags
  REQUIRE(acc.add("w2", *q2).ok());
  CHECK(acc.bpw() == (4.25 + 4.5) / 2);
  CHECK(acc.entries()[0].flags == flags_of(spec("int4_sym:g32:k6")));
}

// ------------------------------------------------------------------ hand-computed quantizers
TEST_CASE("qspec: int4_sym RTN, Q4_0 sign rule, byte-exact", "[qspec]") {
  const std::vector<float> w = {1.0f, -2.0f, 0.5f, 4.0f};
  const QSpec s = spec("int4_sym:g4");
  auto p = choose_group_params(s, w.data(), nullptr, 4, ParamRule::kRtn);
  REQUIRE(p.ok());
  CHECK(p->scale == -0.5f);  // 4 / -8: the largest |w| maps to code -8
  CHECK(p->min == 0.0f);
  CHECK(quantize_value(s, *p, 1.0f) == -2);
  CHECK(quantize_value(s, *p, -2.0f) == 4);
  CHECK(quantize_value(s, *p, 0.5f) == -1);
  CHECK(quantize_value(s, *p, 4.0f) == -8);
  CHECK(quantize_value(s, *p, -100.0f) == 7);  // clamped
  auto q = quantize_rtn(w.data(), 1, 4, s, nullptr, ParamRule::kRtn);
  REQUIRE(q.ok());
  CHECK(q->dtype == fmt::DType::kQSym);
  CHECK(q->flags == 4u);
  CHECK(q->group_size == 4);
  // u = q + 8 = 6, 12, 7, 0 -> nibbles LSB first; then s = -0.5 = f16 0xB800
  CHECK(q->payload == std::vector<uint8_t>{0xC6, 0x07, 0x00, 0xB8});
  CHECK(dq_of(*q) == w);  // exact
  // kK6: scales must be >= 0 -> the smallest non-clipping s = max(4 / 7, 2 / 8)
  auto pk = choose_group_params(spec("int4_sym:g4:k6"), w.data(), nullptr, 4, ParamRule::kRtn);
  REQUIRE(pk.ok());
  CHECK(pk->scale == 4.0f / 7.0f);
  const std::vector<float> wn = {1.0f, -4.0f, 0.5f, 2.0f};
  CHECK(choose_group_params(spec("int4_sym:g4:k6"), wn.data(), nullptr, 4, ParamRule::kRtn)->scale == 0.5f);
  const std::vector<float> z = {0.0f, 0.0f};
  CHECK(choose_group_params(s, z.data(), nullptr, 2, ParamRule::kRtn)->scale == 0.0f);
  CHECK(quantize_value(s, GroupParams{}, 3.0f) == 0);
}

TEST_CASE("qspec: int4_asym:f16 RTN is byte-identical to kQ4Asym", "[qspec]") {
  const std::vector<float> w = {0.0f, 1.5f, 7.5f, 3.2f, -1.0f, 2.75f, 0.1f, 1.0f};
  auto q = quantize_rtn(w.data(), 1, 8, spec("int4_asym:g4"), nullptr, ParamRule::kRtn);
  REQUIRE(q.ok());
  const std::vector<uint8_t> expected = {0x30, 0x6F, 0xF0, 0x84, 0x00, 0x38, 0x00, 0x34, 0x00, 0x00, 0x00, 0xBC};
  CHECK(q->payload == expected);
  for (auto [rows, cols, g] : {std::tuple<int64_t, int64_t, int>{5, 172, 32}, {3, 33, 8}, {1, 1, 1}, {2, 7, 64}}) {
    const std::vector<float> x = uniform(rows * cols, -0.7f, 0.9f, static_cast<uint32_t>(cols));
    auto a = quantize_rtn(x.data(), rows, cols, spec("int4_asym:g" + std::to_string(g)), nullptr, ParamRule::kRtn);
    auto b = quantize_q4_asym_rtn(x.data(), rows, cols, g);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->payload == b->payload);
  }
  // k6 asym: the min is clamped to <= 0
  const std::vector<float> pos = {1.0f, 2.0f, 3.0f, 4.0f};
  auto p = choose_group_params(spec("int4_asym:g4:k6"), pos.data(), nullptr, 4, ParamRule::kRtn);
  REQUIRE(p.ok());
  CHECK(p->min == 0.0f);
  CHECK(p->scale == 4.0f / 15.0f);
  p = choose_group_params(spec("int4_asym:g4"), pos.data(), nullptr, 4, ParamRule::kRtn);
  CHECK(p->min == 1.0f);
  CHECK(p->scale == 0.2f);
}

TEST_CASE("qspec: int2 sym / asym hand-computed, byte-exact", "[qspec]") {
  {
    const std::vector<float> w = {0.5f, -1.0f, 2.0f, -0.25f};
    auto q = quantize_rtn(w.data(), 1, 4, spec("int2_sym:g4"), nullptr, ParamRule::kRtn);
    REQUIRE(q.ok());
    // s = 2 / -2 = -1; codes round(-0.5) = -1, 1, -2, round(0.25) = 0; u = q + 2 = 1, 3, 0, 2
    CHECK(q->payload == std::vector<uint8_t>{0x8D, 0x00, 0xBC});
    CHECK(dq_of(*q) == std::vector<float>{1.0f, -1.0f, 2.0f, 0.0f});
  }
  {
    const std::vector<float> w = {-1.0f, 0.5f, 2.0f, 0.9f};
    auto q = quantize_rtn(w.data(), 1, 4, spec("int2_asym:g4"), nullptr, ParamRule::kRtn);
    REQUIRE(q.ok());
    // s = 3 / 3 = 1, m = -1; codes 0, round(1.5) = 2, 3, round(1.9) = 2
    CHECK(q->payload == std::vector<uint8_t>{0xB8, 0x00, 0x3C, 0x00, 0xBC});
    CHECK(dq_of(*q) == std::vector<float>{-1.0f, 1.0f, 2.0f, 1.0f});
  }
}

TEST_CASE("qspec: int3_sym 1x7 g4 (partial last group), byte-exact", "[qspec]") {
  const std::vector<float> w = {1.0f, -2.0f, 0.5f, 4.0f, 0.3f, -0.6f, 0.15f};
  auto q = quantize_rtn(w.data(), 1, 7, spec("int3_sym:g4"), nullptr, ParamRule::kRtn);
  REQUIRE(q.ok());
  // group 0: s = 4 / -4 = -1, q = -1, 2, -1 (round(-0.5) away from zero), -4 -> u = q + 4 = 3, 6, 3, 0
  // group 1 (3 elements): s = -0.6 / -4 = 0.15 -> f16 0x30CD = 0.15002441; q = 2, -4, 1 -> u = 6, 0, 5
  // 21 bits LSB first: 3 | 6<<3 | 3<<6 | 0<<9 | 6<<12 | 0<<15 | 5<<18 = 0x1460F3
  CHECK(q->payload == std::vector<uint8_t>{0xF3, 0x60, 0x14, 0x00, 0xBC, 0xCD, 0x30});
  CHECK(fmt::f32_to_f16(0.15f) == 0x30CD);
  auto u = unpack(*q);
  REQUIRE(u.ok());
  CHECK(u->codes == std::vector<int16_t>{-1, 2, -1, -4, 2, -4, 1});
  const float s1 = fmt::f16_to_f32(0x30CD);
  CHECK(dq_of(*q) == std::vector<float>{1.0f, -2.0f, 1.0f, 4.0f, 2 * s1, -4 * s1, s1});
}

TEST_CASE("qspec: ternary absmean / TWN / search and binary, byte-exact", "[qspec]") {
  const std::vector<float> w = {0.25f, -1.5f, 1.0f, -0.25f, 0.5f, -0.5f, 0.5f};
  const QSpec t = spec("ternary:g4");
  // absmean: group 0 mean|w| = 3 / 4 = 0.75 -> codes 0, -1 (clamped), 1, 0; group 1 mean 0.5 -> 1, -1, 1
  auto p = choose_group_params(t, w.data(), nullptr, 4, ParamRule::kRtn);
  REQUIRE(p.ok());
  CHECK(p->scale == 0.75f);
  auto q = quantize_rtn(w.data(), 1, 7, t, nullptr, ParamRule::kRtn);
  REQUIRE(q.ok());
  CHECK(q->dtype == fmt::DType::kTernary);
  CHECK(q->flags == 0u);
  // digits d = q + 1 = [1,0,2,1,2 | 0,2,(1,1,1)]: 1 + 2*9 + 1*27 + 2*81 = 208; 0 + 2*3 + 9 + 27 + 81 = 123
  CHECK(q->payload == std::vector<uint8_t>{208, 123, 0x00, 0x3A, 0x00, 0x38});
  CHECK(dq_of(*q) == std::vector<float>{0.0f, -0.75f, 0.75f, 0.0f, 0.5f, -0.5f, 0.5f});
  // TWN: delta = 0.7 * 0.75 = 0.525; |w| above: 1.5, 1.0 -> s = 1.25
  auto pt = choose_group_params(t, w.data(), nullptr, 4, ParamRule::kTwn);
  REQUIRE(pt.ok());
  CHECK(pt->scale == 1.25f);
  auto qt = quantize_rtn(w.data(), 1, 7, t, nullptr, ParamRule::kTwn);
  REQUIRE(qt.ok());
  CHECK(dq_of(*qt) == std::vector<float>{0.0f, -1.25f, 1.25f, 0.0f, 0.5f, -0.5f, 0.5f});
  // search: {1, 1, 0.1, 0.1}: support {1, 1} gives s = 1 and error 0.02; absmean s = 0.55 errs 0.425
  const std::vector<float> x = {1.0f, 0.1f, -1.0f, 0.1f};
  CHECK(choose_group_params(t, x.data(), nullptr, 4, ParamRule::kRtn)->scale == 0.55f);
  auto ps = choose_group_params(t, x.data(), nullptr, 4, ParamRule::kSearch);
  REQUIRE(ps.ok());
  CHECK(ps->scale == 1.0f);
  CHECK(weighted_sse(t, *ps, x.data(), nullptr, 4) == Approx(0.02).epsilon(1e-6));
  // weighted: all importance on the small ones -> their support wins
  const std::vector<float> h = {0.0f, 1.0f, 0.0f, 1.0f};
  auto pw = choose_group_params(t, x.data(), h.data(), 4, ParamRule::kSearch);
  REQUIRE(pw.ok());
  CHECK(weighted_sse(t, GroupParams{f16(pw->scale), 0.0f}, x.data(), h.data(), 4) < 1e-6);

  const QSpec b = spec("binary:g4");
  auto qb = quantize_rtn(w.data(), 1, 7, b, nullptr, ParamRule::kRtn);
  REQUIRE(qb.ok());
  CHECK(qb->dtype == fmt::DType::kBinary);
  // signs + - + - + - + -> bits 1010101 = 0x55; s = 0.75, 0.5
  CHECK(qb->payload == std::vector<uint8_t>{0x55, 0x00, 0x3A, 0x00, 0x38});
  CHECK(dq_of(*qb) == std::vector<float>{0.75f, -0.75f, 0.75f, -0.75f, 0.5f, -0.5f, 0.5f});
  // weighted binary: s = sum h|w| / sum h = (0.25 * 1 + 0.25 * 3) / 4
  const std::vector<float> hb = {1.0f, 0.0f, 0.0f, 3.0f};
  CHECK(choose_group_params(b, w.data(), hb.data(), 4, ParamRule::kSearch)->scale == 0.25f);
  CHECK(choose_group_params(b, w.data(), nullptr, 4, ParamRule::kSearch)->scale == 0.75f);
  CHECK(quantize_value(b, GroupParams{}, 0.0f) == 1);
  CHECK(quantize_value(b, GroupParams{0.5f, 0.0f}, -0.0001f) == -1);
  CHECK(quantize_value(t, GroupParams{}, 1.0f) == 0);
}

// ------------------------------------------------------------------ kK6
TEST_CASE("qspec: kK6 ParamGrid on a hand example (d choice, clamping, mins <= 0)", "[qspec]") {
  const QSpec s = spec("int4_sym:g4:k6");
  std::vector<GroupParams> init(10);
  const float sc[10] = {0.1f, 0.5f, 1.0f, 6.3f, 2.0f, 0.0f, 3.0f, 1.5f, 0.01f, 0.02f};
  for (int i = 0; i < 10; ++i) init[i].scale = sc[i];
  auto g = ParamGrid::make(s, 1, 40, init);  // NG = 10 -> 2 super-blocks, the last partial
  REQUIRE(g.ok());
  REQUIRE(g->super_d().size() == 2);
  CHECK(g->super_dm().empty());
  CHECK(g->groups() == 10);
  // 6.3 / 63 = 0.1 -> f16 0x2E66 = 0.099975586, but 63 * that = 6.2985 < 6.3 -> rounded up to 0x2E67
  CHECK(fmt::f32_to_f16(0.1f) == 0x2E66);
  CHECK(g->super_d()[0] == 0x2E67);
  const float d0 = fmt::f16_to_f32(0x2E67);
  CHECK(g->snap(3, GroupParams{6.3f, 0.0f}).scale == 63.0f * d0);
  CHECK(g->snap(2, GroupParams{1.0f, 0.0f}).scale == 10.0f * d0);  // round(9.996) = 10
  CHECK(g->snap(0, GroupParams{100.0f, 0.0f}).scale == 63.0f * d0);  // clamped to 63
  CHECK(g->snap(0, GroupParams{-1.0f, 0.0f}).scale == 0.0f);         // clamped to 0
  CHECK(g->k6_codes(2, GroupParams{1.0f, 0.0f}).first == 10);
  // block 1: the smallest fp16 d with 63 d >= 0.02
  const uint16_t d1 = g->super_d()[1];
  CHECK(fmt::f16_to_f32(d1) * 63.0f >= 0.02f);
  CHECK(fmt::f16_to_f32(static_cast<uint16_t>(d1 - 1)) * 63.0f < 0.02f);
  CHECK(g->snap(9, GroupParams{0.02f, 0.0f}).scale == 63.0f * fmt::f16_to_f32(d1));

  // asym: dm <= 0 from the most negative init min; positive mins snap to 0
  const QSpec a = spec("int4_asym:g4:k6");
  std::vector<GroupParams> ia(3);
  ia[0] = {15.75f, -0.5f};  // 15.75 / 63 = 0.25 exactly
  ia[1] = {0.25f, -3.15f};
  ia[2] = {0.125f, 0.0f};
  auto ga = ParamGrid::make(a, 3, 4, ia);
  REQUIRE(ga.ok());
  REQUIRE(ga->super_dm().size() == 1);
  CHECK(fmt::f32_to_f16(0.05f) == 0x2A66);  // 63 * 0.049988 = 3.1492 < 3.15
  CHECK(ga->super_dm()[0] == 0xAA67);       // -0.050048828
  CHECK(ga->super_d()[0] == 0x3400);  // 0.25
  CHECK(ga->snap(2, ia[2]).scale == 0.25f);  // round(0.125 / 0.25) = round(0.5) = 1 (ties away from zero)
  CHECK(ga->snap(0, ia[0]).scale == 15.75f);

  const float dm = fmt::f16_to_f32(0xAA67);
  CHECK(ga->snap(1, ia[1]).min == 63.0f * dm);
  CHECK(ga->snap(0, ia[0]).min == 10.0f * dm);  // round(-0.5 / -0.05005) = round(9.99) = 10
  CHECK(ga->snap(0, GroupParams{0.5f, 0.3f}).min == 0.0f);
  CHECK(ga->snap(0, GroupParams{0.5f, -100.0f}).min == 63.0f * dm);

  // all-zero block: d = 0, every scale snaps to 0
  std::vector<GroupParams> zero(2);
  auto gz = ParamGrid::make(s, 1, 8, zero);
  REQUIRE(gz.ok());
  CHECK(gz->super_d()[0] == 0);
  CHECK(gz->snap(1, GroupParams{1.0f, 0.0f}).scale == 0.0f);

  // errors
  CHECK(ParamGrid::make(s, 1, 40, std::vector<GroupParams>(9)).status().code() == ErrorCode::kInvalidArgument);
  CHECK(ParamGrid::make(spec("f16"), 1, 40, {}).status().code() == ErrorCode::kInvalidArgument);
  std::vector<GroupParams> huge(10);
  huge[4].scale = 1e7f;
  CHECK(ParamGrid::make(s, 1, 40, huge).status().code() == ErrorCode::kUnsupported);
  auto gf = ParamGrid::make(spec("int4_sym:g4"), 1, 40, huge);
  REQUIRE_FALSE(gf.ok());
  CHECK(gf.status().code() == ErrorCode::kUnsupported);
  CHECK_THAT(gf.status().message(), Catch::Contains("row 0, group 4"));
  CHECK(ParamGrid::make(spec("int4_sym:g4"), 1, 40, {}).ok());  // kF16: init optional
  CHECK(ParamGrid::make(spec("int4_sym:g4"), 1, 40, {})->snap(0, GroupParams{0.1f, 7.0f}).scale == f16(0.1f));
  CHECK(ParamGrid::make(spec("int4_sym:g4"), 1, 40, {})->snap(0, GroupParams{0.1f, 7.0f}).min == 0.0f);
}

TEST_CASE("qspec: kK6 byte-exact hand-packed payloads", "[qspec]") {
  {
    Unpacked u;
    u.spec = spec("int3_sym:g2:k6");
    u.rows = 1;
    u.cols = 4;
    u.codes = {-4, 3, 0, 1};
    u.params = {{5.0f, 0.0f}, {63.0f, 0.0f}};
    u.super_d = {0x3C00};  // d = 1
    auto q = pack(u);
    REQUIRE(q.ok());
    CHECK(q->flags == fmt::make_qflags(3, fmt::ScaleFormat::kK6));
    // codes u = 0, 7, 4, 5 -> 0x0B38; sc = 5, 63 -> 5 | 63 << 6 = 0x0FC5; d f16 1.0
    CHECK(q->payload == std::vector<uint8_t>{0x38, 0x0B, 0xC5, 0x0F, 0x00, 0x3C});
    CHECK(dq_of(*q) == std::vector<float>{-20.0f, 15.0f, 0.0f, 63.0f});
  }
  {
    Unpacked u;
    u.spec = spec("int2_asym:g2:k6");
    u.rows = 1;
    u.cols = 4;
    u.codes = {0, 3, 1, 2};
    u.params = {{0.5f, -15.75f}, {1.0f, 0.0f}};
    u.super_d = {0x3800};   // 0.5
    u.super_dm = {0xB400};  // -0.25
    auto q = pack(u);
    REQUIRE(q.ok());
    // codes 0 | 3<<2 | 1<<4 | 2<<6 = 0x9C; sc 1, 2 -> 0x81 0x00; mc 63, 0 -> 0x3F 0x00; d; dm
    CHECK(q->payload == std::vector<uint8_t>{0x9C, 0x81, 0x00, 0x3F, 0x00, 0x00, 0x38, 0x00, 0xB4});
    CHECK(dq_of(*q) == std::vector<float>{-15.75f, -14.25f, 1.0f, 2.0f});
    auto back = unpack(*q);
    REQUIRE(back.ok());
    CHECK(back->codes == u.codes);
    CHECK(back->params[0].min == -15.75f);
    CHECK(back->super_dm == u.super_dm);
  }
  {
    // ternary k6: 1x6, g3: rows padded with digit 1; NG = 2 -> 2 sc in 2 bytes
    Unpacked u;
    u.spec = spec("ternary:g3:k6");
    u.rows = 1;
    u.cols = 6;
    u.codes = {1, -1, 0, 0, 1, 1};
    u.params = {{0.75f, 0.0f}, {0.25f, 0.0f}};
    u.super_d = {0x3400};  // 0.25: sc 3, 1
    auto q = pack(u);
    REQUIRE(q.ok());
    // digits 2,0,1,1,2 -> 2 + 9 + 27 + 162 = 200; digit 2 then padding 1 x4 -> 2 + 3 + 9 + 27 + 81 = 122
    CHECK(q->payload == std::vector<uint8_t>{200, 122, 0x43, 0x00, 0x00, 0x34});
  }
}

// ------------------------------------------------------------------ pack / unpack / dequantize
TEST_CASE("qspec: pack/unpack round trip, dequantize == dequantize_value, every kind x b x scales", "[qspec]") {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1}, {1, 5}, {3, 7}, {9, 13}, {3, 172}, {1, 172}, {9, 5}};
  int n = 0;
  for (const auto& k : all_kinds())
    for (const std::string sc : {"", ":k6"})
      for (const std::string g : {":g4", ":g32", ":row", ":g5"})
        for (auto [rows, cols] : shapes) {
          const QSpec s = spec(k + g + sc);
          CAPTURE(to_string(s), rows, cols);
          const std::vector<float> w = gaussian(rows * cols, static_cast<uint32_t>(rows * 131 + cols + n++));
          auto u = quantize_rtn_unpacked(w.data(), rows, cols, s, nullptr, ParamRule::kRtn);
          REQUIRE(u.ok());
          auto q = pack(*u);
          REQUIRE(q.ok());
          CHECK(q->dtype == dtype_of(s));
          CHECK(q->flags == flags_of(s));
          CHECK(q->group_size == s.group_for(cols));
          CHECK(q->payload.size() == fmt::quant_payload_bytes(q->dtype, rows, cols, q->group_size, q->flags));
          CHECK(*payload_bytes(q->dtype, rows, cols, q->group_size, q->flags) == q->payload.size());
          auto back = unpack(*q);
          REQUIRE(back.ok());
          CHECK(back->codes == u->codes);
          CHECK(back->super_d == u->super_d);
          CHECK(back->super_dm == u->super_dm);
          REQUIRE(back->params.size() == u->params.size());
          for (size_t i = 0; i < u->params.size(); ++i) {
            CHECK(back->params[i].scale == u->params[i].scale);
            CHECK(back->params[i].min == u->params[i].min);
          }
          auto again = pack(*back);
          REQUIRE(again.ok());
          CHECK(again->payload == q->payload);
          const std::vector<float> dq = dq_of(*q);
          const int64_t gg = s.group_for(cols), ng = (cols + gg - 1) / gg;
          bool same = true;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) {
              const size_t i = static_cast<size_t>(r * cols + c);
              const GroupParams& p = u->params[static_cast<size_t>(r * ng + c / gg)];
              same = same && dq[i] == dequantize_value(s, p, u->codes[i]);
              same = same && u->codes[i] == quantize_value(s, p, w[i]);
            }
          CHECK(same);
          auto q2 = quantize_rtn(w.data(), rows, cols, s, nullptr, ParamRule::kRtn);
          REQUIRE(q2.ok());
          CHECK(q2->payload == q->payload);
        }
}

TEST_CASE("qspec: pack rejects out-of-range codes and unrepresentable params", "[qspec]") {
  Unpacked u;
  u.spec = spec("int3_sym:g4");
  u.rows = 2;
  u.cols = 5;
  u.codes.assign(10, 0);
  u.params.assign(4, GroupParams{0.5f, 0.0f});
  REQUIRE(pack(u).ok());
  auto bad = u;
  bad.codes[7] = 4;  // int3_sym: -4..3
  auto r = pack(bad);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(r.status().message(), Catch::Contains("row 1, col 2"));
  bad = u;
  bad.codes[0] = -5;
  CHECK_FALSE(pack(bad).ok());
  bad = u;
  bad.params[1].scale = 0.1f;  // not an fp16 value
  r = pack(bad);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("not an fp16 value"));
  CHECK_THAT(r.status().message(), Catch::Contains("row 0, group 1"));
  bad = u;
  bad.params[2].scale = 1e6f;  // overflow
  CHECK_FALSE(pack(bad).ok());
  bad = u;
  bad.params[0].min = 0.5f;  // sym has no min
  CHECK_FALSE(pack(bad).ok());
  bad = u;
  bad.params.pop_back();
  CHECK_FALSE(pack(bad).ok());
  bad = u;
  bad.codes.push_back(0);
  CHECK_FALSE(pack(bad).ok());
  bad = u;
  bad.super_d = {0x3C00};  // super-scales with fp16 params
  CHECK_FALSE(pack(bad).ok());

  Unpacked k = u;
  k.spec = spec("int3_sym:g4:k6");
  k.super_d = {0x3800};  // d = 0.5: scales 0, 0.5, 1, ..., 31.5
  k.params = {{1.5f, 0.0f}, {0.0f, 0.0f}, {31.5f, 0.0f}, {0.5f, 0.0f}};
  REQUIRE(pack(k).ok());
  auto kb = k;
  kb.params[0].scale = 1.25f;  // not d * integer
  r = pack(kb);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("not d * k"));
  kb = k;
  kb.params[2].scale = 32.0f;  // k = 64 > 63
  CHECK_FALSE(pack(kb).ok());
  kb = k;
  kb.params[2].scale = -0.5f;  // k = -1
  CHECK_FALSE(pack(kb).ok());
  kb = k;
  kb.super_d = {};
  CHECK_FALSE(pack(kb).ok());
  kb = k;
  kb.super_d = {0x7C00};  // inf
  CHECK_FALSE(pack(kb).ok());
  kb = k;
  kb.super_dm = {0xB800};  // sym has no dm
  CHECK_FALSE(pack(kb).ok());

  Unpacked t;
  t.spec = spec("ternary:g4");
  t.rows = 1;
  t.cols = 3;
  t.codes = {1, -1, 2};
  t.params = {{1.0f, 0.0f}};
  CHECK_FALSE(pack(t).ok());
  Unpacked bn = t;
  bn.spec = spec("binary:g4");
  bn.codes = {1, 0, -1};  // binary has no 0
  CHECK_FALSE(pack(bn).ok());
  bn.codes = {1, 1, -1};
  CHECK(pack(bn).ok());
  Unpacked pl = t;
  pl.spec = spec("f16");
  CHECK_FALSE(pack(pl).ok());

  // unpack errors
  auto q = pack(u);
  REQUIRE(q.ok());
  auto qb = *q;
  qb.payload.pop_back();
  CHECK(unpack(qb).status().code() == ErrorCode::kInvalidArgument);
  CHECK_FALSE(dequantize(qb).ok());
  qb = *q;
  qb.flags = 9;
  CHECK_FALSE(unpack(qb).ok());
  qb = *q;
  qb.dtype = fmt::DType::kQ8Sym;
  CHECK_FALSE(unpack(qb).ok());
  CHECK_FALSE(payload_bytes(fmt::DType::kQ8Sym, 2, 5, 4, 3u).ok());  // flags must be 0 for old dtypes
  CHECK_FALSE(payload_bytes(fmt::DType::kQSym, 2, 5, 4, 0u).ok());   // bits 0 invalid for qsym
  // ternary bytes are decoded mod 243
  Unpacked t2;
  t2.spec = spec("ternary:g4");
  t2.rows = 1;
  t2.cols = 5;
  t2.codes = {1, 1, 1, 1, 1};  // 242
  t2.params = {{1.0f, 0.0f}, {1.0f, 0.0f}};
  auto qt = pack(t2);
  REQUIRE(qt.ok());
  CHECK(qt->payload[0] == 242);
  qt->payload[0] = 243 + 1;  // == 1 mod 243: digits 1,0,0,0,0 -> codes 0,-1,-1,-1,-1
  CHECK(unpack(*qt)->codes == std::vector<int16_t>{0, -1, -1, -1, -1});
}

// ------------------------------------------------------------------ search quality
TEST_CASE("qspec: kSearch is never worse than kRtn per group (fp16 scales), weighted or not", "[qspec]") {
  const int64_t n = 32;
  for (const auto& k : all_kinds())
    for (int weighted = 0; weighted < 2; ++weighted) {
      const QSpec s = spec(k + ":g32");
      CAPTURE(to_string(s), weighted);
      auto grid = ParamGrid::make(s, 1, n, {});
      REQUIRE(grid.ok());
      double sum_rtn = 0, sum_search = 0;
      int strictly = 0;
      for (uint32_t trial = 0; trial < 40; ++trial) {
        const std::vector<float> w = gaussian(n, 1000 + trial);
        const std::vector<float> h = uniform(n, 0.0f, 4.0f, 77 + trial);
        const float* hp = weighted ? h.data() : nullptr;
        auto pr = choose_group_params(s, w.data(), hp, n, ParamRule::kRtn);
        auto ps = choose_group_params(s, w.data(), hp, n, ParamRule::kSearch);
        REQUIRE(pr.ok());
        REQUIRE(ps.ok());
        const double er = weighted_sse(s, grid->snap(0, *pr), w.data(), hp, n);
        const double es = weighted_sse(s, grid->snap(0, *ps), w.data(), hp, n);
        CHECK(es <= er);
        sum_rtn += er;
        sum_search += es;
        strictly += es < er;
        // the grid overload returns the snapped params of the same choice
        auto pg = choose_group_params(s, w.data(), hp, n, ParamRule::kSearch, *grid, 0);
        REQUIRE(pg.ok());
        CHECK(weighted_sse(s, *pg, w.data(), hp, n) == es);
      }
      if (s.kind == QKind::kBinary && !weighted) {
        CHECK(sum_search == sum_rtn);  // the LS scale of binary is mean|w| = the kRtn scale
      } else {
        CHECK(sum_search < sum_rtn);
        CHECK(strictly > 20);
      }
    }
}

TEST_CASE("qspec: quantize_rtn kSearch beats kRtn on random matrices (fp16 and k6, weighted)", "[qspec]") {
  const int64_t rows = 40, cols = 96;
  const std::vector<float> w = gaussian(rows * cols, 99);
  std::vector<float> h = uniform(cols, 0.0f, 1.0f, 5);
  for (auto& x : h) x = x * x * 10.0f;  // skewed importances
  for (const auto& k : all_kinds())
    for (const std::string sc : {"", ":k6"})
      for (int weighted = 0; weighted < 2; ++weighted) {
        const QSpec s = spec(k + ":g32" + sc);
        CAPTURE(to_string(s), weighted);
        const float* hp = weighted ? h.data() : nullptr;
        auto qr = quantize_rtn(w.data(), rows, cols, s, hp, ParamRule::kRtn);
        auto qs = quantize_rtn(w.data(), rows, cols, s, hp, ParamRule::kSearch);
        REQUIRE(qr.ok());
        REQUIRE(qs.ok());
        const double er = weighted_matrix_sse(w, dq_of(*qr), hp, cols);
        const double es = weighted_matrix_sse(w, dq_of(*qs), hp, cols);
        if (s.kind == QKind::kBinary && !weighted)
          CHECK(es == er);
        else
          CHECK(es < er);
        if (s.scales == fmt::ScaleFormat::kF16) {
          // per group guarantee
          auto ur = unpack(*qr);
          auto us = unpack(*qs);
          REQUIRE(ur.ok());
          REQUIRE(us.ok());
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < cols / 32; ++j) {
              const float* wp = w.data() + r * cols + j * 32;
              const float* hg = hp ? hp + j * 32 : nullptr;
              const size_t i = static_cast<size_t>(r * (cols / 32) + j);
              CHECK(weighted_sse(s, us->params[i], wp, hg, 32) <= weighted_sse(s, ur->params[i], wp, hg, 32));
            }
        }
      }
}

// ------------------------------------------------------------------ errors
TEST_CASE("qspec: quantize_rtn / choose_group_params errors", "[qspec]") {
  std::vector<float> w = gaussian(3 * 10, 3);
  const QSpec s = spec("int4_sym:g4");
  w[2 * 10 + 7] = std::numeric_limits<float>::quiet_NaN();
  auto r = quantize_rtn(w.data(), 3, 10, s, nullptr, ParamRule::kRtn);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kBadInput);
  CHECK_THAT(r.status().message(), Catch::Contains("NaN"));
  CHECK_THAT(r.status().message(), Catch::Contains("row 2, col 7"));
  w[2 * 10 + 7] = std::numeric_limits<float>::infinity();
  r = quantize_rtn(w.data(), 3, 10, spec("ternary"), nullptr, ParamRule::kSearch);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("Inf weight at row 2, col 7"));
  w[2 * 10 + 7] = 0.0f;
  CHECK(quantize_rtn(w.data(), 3, 10, s, nullptr, ParamRule::kTwn).status().code() == ErrorCode::kInvalidArgument);
  CHECK(quantize_rtn(w.data(), 3, 10, spec("ternary"), nullptr, ParamRule::kTwn).ok());
  CHECK(quantize_rtn(nullptr, 3, 10, s, nullptr, ParamRule::kRtn).status().code() == ErrorCode::kInvalidArgument);
  CHECK(quantize_rtn(w.data(), 0, 10, s, nullptr, ParamRule::kRtn).status().code() == ErrorCode::kInvalidArgument);
  std::vector<float> h(10, 1.0f);
  h[4] = -1.0f;
  r = quantize_rtn(w.data(), 3, 10, s, h.data(), ParamRule::kSearch);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("col 4"));
  std::vector<float> big(8, 1e6f);
  r = quantize_rtn(big.data(), 2, 4, spec("int4_asym:g4"), nullptr, ParamRule::kRtn);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kUnsupported);
  big[5] = -1e6f;  // row 1 group 0: scale 2e6 / 15 overflows fp16
  r = quantize_rtn(big.data(), 2, 4, spec("int4_asym:g4"), nullptr, ParamRule::kRtn);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kUnsupported);
  CHECK_THAT(r.status().message(), Catch::Contains("row 0, group 0"));
  // k6 reaches further: s = d * sc with d up to 65504
  CHECK(quantize_rtn(big.data(), 2, 4, spec("int4_asym:g4:k6"), nullptr, ParamRule::kSearch).ok());

  CHECK(choose_group_params(s, w.data(), nullptr, 0, ParamRule::kRtn).status().code() == ErrorCode::kInvalidArgument);
  CHECK(choose_group_params(spec("f16"), w.data(), nullptr, 4, ParamRule::kRtn).status().code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(choose_group_params(s, w.data(), nullptr, 4, ParamRule::kTwn).status().message(), Catch::Contains("ternary"));
  CHECK_FALSE(choose_group_params(s, nullptr, nullptr, 4, ParamRule::kRtn).ok());

  // plain specs store f16 / f32
  auto pf = quantize_rtn(w.data(), 3, 10, spec("f16"), nullptr, ParamRule::kSearch);
  REQUIRE(pf.ok());
  CHECK(pf->dtype == fmt::DType::kF16);
  CHECK(stored_bits(*pf) == spec_bits(spec("f16"), 3, 10));
  CHECK_FALSE(quantize_rtn_unpacked(w.data(), 3, 10, spec("f32"), nullptr, ParamRule::kRtn).ok());
}

TEST_CASE("qspec: quantize_with_params equals the rule's quantize_rtn for its parameters; hand case; errors", "[qspec]") {
  // Every kind x scale format x rule (kSearch without importances; k6 + kSearch re-searches against
  // the grid, so it is not a given-parameter quantizer): quantizing with the rule's unsnapped
  // parameters reproduces quantize_rtn_unpacked bit for bit (codes, params, super-scales).
  const int64_t rows = 5, cols = 37;  // g16: a partial last group; 15 groups span two k6 super-blocks
  const std::vector<float> w = gaussian(static_cast<size_t>(rows * cols), 11);
  for (const std::string& kind : all_kinds())
    for (const std::string& fmt_ : {std::string(""), std::string(":k6")})
      for (ParamRule rule : {ParamRule::kRtn, ParamRule::kSearch, ParamRule::kTwn}) {
        if (rule == ParamRule::kTwn && kind != "ternary") continue;
        if (rule == ParamRule::kSearch && !fmt_.empty()) continue;
        const QSpec s = spec(kind + ":g16" + fmt_);
        INFO(to_string(s) << " " << param_rule_name(rule));
        std::vector<GroupParams> init;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            auto gp = choose_group_params(s, w.data() + r * cols + c0, nullptr, std::min<int64_t>(16, cols - c0), rule);
            REQUIRE(gp.ok());
            init.push_back(*gp);
          }
        auto a = quantize_rtn_unpacked(w.data(), rows, cols, s, nullptr, rule);
        auto b = quantize_with_params(w.data(), rows, cols, s, init);
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        CHECK(a->codes == b->codes);
        CHECK(a->super_d == b->super_d);
        CHECK(a->super_dm == b->super_dm);
        REQUIRE(a->params.size() == b->params.size());
        for (size_t i = 0; i < a->params.size(); ++i) {
          CHECK(a->params[i].scale == b->params[i].scale);
          CHECK(a->params[i].min == b->params[i].min);
        }
      }
  // Hand case, int2_sym g4, s = 0.5 (not the rule's -0.65): codes clamp(round(w / s), -2, 1).
  const std::vector<float> h = {0.9f, -0.2f, 0.4f, -1.3f};
  auto u = quantize_with_params(h.data(), 1, 4, spec("int2_sym:g4"), {GroupParams{0.5f, 0.f}});
  REQUIRE(u.ok());
  CHECK(u->codes == std::vector<int16_t>{1, 0, 1, -2});
  auto d = dequantize(*u);
  REQUIRE(d.ok());
  CHECK(*d == std::vector<float>{0.5f, 0.f, 0.5f, -1.f});
  // The given scale is snapped: 0.3 is not an fp16 value.
  auto v = quantize_with_params(h.data(), 1, 4, spec("int2_sym:g4"), {GroupParams{0.3f, 0.f}});
  REQUIRE(v.ok());
  CHECK(v->params[0].scale == f16(0.3f));
  // Errors: wrong parameter count (names the need), non-finite parameter, NaN weight, plain spec.
  auto e = quantize_with_params(h.data(), 1, 4, spec("int2_sym:g2"), {GroupParams{0.5f, 0.f}});
  REQUIRE_FALSE(e.ok());
  CHECK(e.status().code() == ErrorCode::kInvalidArgument);
  CHECK_THAT(e.status().message(), Catch::Contains("need 2"));
  CHECK(quantize_with_params(h.data(), 1, 4, spec("int2_sym:g4"), {GroupParams{std::nanf(""), 0.f}}).status().code() ==
        ErrorCode::kInvalidArgument);
  std::vector<float> bad = h;
  bad[3] = std::numeric_limits<float>::quiet_NaN();
  auto n = quantize_with_params(bad.data(), 1, 4, spec("int2_sym:g4"), {GroupParams{0.5f, 0.f}});
  REQUIRE_FALSE(n.ok());
  CHECK(n.status().code() == ErrorCode::kBadInput);
  CHECK_THAT(n.status().message(), Catch::Contains("row 0, col 3"));
  CHECK(quantize_with_params(h.data(), 1, 4, spec("f16"), {}).status().code() == ErrorCode::kInvalidArgument);
}

// ------------------------------------------------------------------ report (hidden)
TEST_CASE("qspec: relative RMS error report, 172x64 N(0,1)", "[.qspec-report]") {
  const int64_t rows = 172, cols = 64;
  const std::vector<float> w = gaussian(rows * cols, 2024);
  for (const std::string t : {"int4_sym:g32", "int4_asym:g32", "int4_sym:g32:k6", "int4_asym:g32:k6",
                              "int3_sym:g32", "int3_sym:g32:k6", "int3_asym:g32:k6", "int2_asym:g32",
                              "ternary:g32", "binary:g32", "int8_sym:row"}) {
    const QSpec s = spec(t);
    double e[3] = {0, 0, 0};
    for (int k = 0; k < 3; ++k) {
      const ParamRule rule = k == 0 ? ParamRule::kRtn : k == 1 ? ParamRule::kSearch : ParamRule::kTwn;
      if (rule == ParamRule::kTwn && s.kind != QKind::kTernary) continue;
      auto q = quantize_rtn(w.data(), rows, cols, s, nullptr, rule);
      REQUIRE(q.ok());
      const std::vector<float> dq = dq_of(*q);
      e[k] = relative_rms_error(w.data(), dq.data(), rows * cols);
    }
    std::printf("%-18s bpw %.4f  rtn %.5f  search %.5f%s\n", t.c_str(),
                static_cast<double>(spec_bits(s, rows, cols)) / static_cast<double>(rows * cols), e[0], e[1],
                s.kind == QKind::kTernary ? (std::string("  twn ") + std::to_string(e[2])).c_str() : "");
  }
}
