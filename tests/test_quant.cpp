// Tests for quant/: RTN quantizers (rtn.h), bpw accounting (bpw.h), the baseline recipe (recipe.h).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "kerf/format.h"
#include "quant/bpw.h"
#include "quant/recipe.h"
#include "quant/rtn.h"

using namespace kerf;
using namespace kerf::quant;

#ifndef KERF_SHARED_DIR
#define KERF_SHARED_DIR "/work/shared"
#endif

namespace {

uint16_t u16_at(const std::vector<uint8_t>& p, size_t off) { return static_cast<uint16_t>(p[off] | (p[off + 1] << 8)); }
float h2f_at(const std::vector<uint8_t>& p, size_t off) { return ir::half_to_float(u16_at(p, off)); }
float fp16(float x) { return ir::half_to_float(ir::float_to_half(x)); }

// Deterministic pseudo-random weights in [-a, a] (an LCG; no std::random distribution differences).
std::vector<float> lcg_weights(size_t n, float a, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = a * (2.0f * static_cast<float>(s >> 8) / static_cast<float>(1u << 24) - 1.0f);
  }
  return v;
}

int q4_code(const QuantTensor& q, int64_t r, int64_t c) {
  const uint8_t b = q.payload[r * ((q.cols + 1) / 2) + c / 2];
  return (c % 2 == 0) ? (b & 0xF) : (b >> 4);
}

}  // namespace

TEST_CASE("q4_asym RTN: hand-computed 1x8 row, group 4", "[quant]") {
  // group 0: min 0, max 7.5 -> scale 0.5 (exact in fp16); codes 0, 3, 15, round(6.4) = 6
  // group 1: min -1, max 2.75 -> scale 3.75/15 = 0.25; codes 0, 15, round(4.4) = 4, round(8) = 8
  const std::vector<float> w = {0.0f, 1.5f, 7.5f, 3.2f, -1.0f, 2.75f, 0.1f, 1.0f};
  auto q = quantize_q4_asym_rtn(w.data(), 1, 8, 4);
  REQUIRE(q.ok());
  CHECK(q->dtype == fmt::DType::kQ4Asym);
  CHECK(q->rows == 1);
  CHECK(q->cols == 8);
  CHECK(q->group_size == 4);
  const std::vector<uint8_t> expected = {
      0x30, 0x6F, 0xF0, 0x84,  // codes: (0,3) (15,6) (0,15) (4,8), low nibble = even column
      0x00, 0x38, 0x00, 0x34,  // scales f16: 0.5, 0.25
      0x00, 0x00, 0x00, 0xBC,  // mins f16: 0.0, -1.0
  };
  CHECK(q->payload == expected);
  auto dq = dequantize(*q);
  REQUIRE(dq.ok());
  const std::vector<float> want = {0.0f, 1.5f, 7.5f, 3.0f, -1.0f, 2.75f, 0.0f, 1.0f};
  CHECK(*dq == want);
  CHECK(stored_bits(*q) == 8 * 4 + 2 * 32);
}

TEST_CASE("q4_asym RTN: odd cols pack the last nibble low, constant group gets codes 0", "[quant]") {
  const std::vector<float> w = {2.0f, 2.0f, 2.0f, 1.0f, 4.0f};  // 1x5, g 3: group 0 constant, group 1 [1, 4]
  auto q = quantize_q4_asym_rtn(w.data(), 1, 5, 3);
  REQUIRE(q.ok());
  REQUIRE(q->payload.size() == fmt::quant_payload_bytes(fmt::DType::kQ4Asym, 1, 5, 3));  // 3 + 8
  CHECK(q->payload[0] == 0x00);  // codes 0, 0
  CHECK(q->payload[1] == 0x00);  // code 0 (col 2), code 0 (col 3 = min of group 1)
  CHECK(q->payload[2] == 0x0F);  // code 15 (col 4) in the low nibble, high nibble padding 0
  CHECK(h2f_at(q->payload, 3) == 0.0f);   // scale of the constant group
  CHECK(h2f_at(q->payload, 5) == fp16(3.0f / 15.0f));
  CHECK(h2f_at(q->payload, 7) == 2.0f);   // min group 0
  CHECK(h2f_at(q->payload, 9) == 1.0f);   // min group 1
  auto dq = dequantize(*q);
  REQUIRE(dq.ok());
  CHECK((*dq)[0] == 2.0f);
  CHECK((*dq)[2] == 2.0f);
  CHECK((*dq)[3] == 1.0f);
  CHECK((*dq)[4] == Approx(4.0f).margin(1e-3));
  CHECK(stored_bits(*q) == 5 * 4 + 2 * 32);  // logical bits: the padding nibble is not counted
}

TEST_CASE("q4_asym RTN: partial last group uses its real elements only (cols 172, g 32)", "[quant]") {
  const int64_t rows = 3, cols = 172, g = 32, ng = 6;
  std::vector<float> w = lcg_weights(rows * cols, 1.0f, 7);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 160; c < cols; ++c) w[r * cols + c] = 0.1f + 0.01f * static_cast<float>(c - 160) + 0.05f * r;
  auto q = quantize_q4_asym_rtn(w.data(), rows, cols, static_cast<int>(g));
  REQUIRE(q.ok());
  CHECK(q->payload.size() == fmt::quant_payload_bytes(fmt::DType::kQ4Asym, rows, cols, g));
  CHECK(q->payload.size() == static_cast<size_t>(rows * 86 + 4 * rows * ng));
  const size_t scales = rows * 86, mins = scales + 2 * rows * ng;
  for (int64_t r = 0; r < rows; ++r) {
    const float mn = 0.1f + 0.05f * r, mx = 0.1f + 0.11f + 0.05f * r;
    const float w_mn = w[r * cols + 160], w_mx = w[r * cols + 171];
    CHECK(w_mn == mn);
    CHECK(w_mx == Approx(mx));
    CHECK(u16_at(q->payload, scales + 2 * (r * ng + 5)) ==
          ir::float_to_half(static_cast<float>((static_cast<double>(w_mx) - w_mn) / 15.0)));
    CHECK(u16_at(q->payload, mins + 2 * (r * ng + 5)) == ir::float_to_half(w_mn));
    // a full group's scale is about 2/15, the partial one about 0.11/15
    CHECK(h2f_at(q->payload, scales + 2 * (r * ng + 0)) > 0.1f);
    CHECK(h2f_at(q->payload, scales + 2 * (r * ng + 5)) < 0.008f);
  }
  CHECK(stored_bits(*q) == rows * cols * 4 + rows * ng * 32);
}

TEST_CASE("q4_asym RTN: codes are optimal for the fp16-rounded params; error <= scale/2", "[quant]") {
  for (auto [rows, cols, g] : {std::tuple<int64_t, int64_t, int>{4, 64, 32}, {5, 172, 32}, {3, 33, 8}, {2, 7, 64},
                               {1, 1, 1}, {6, 100, 128}}) {
    CAPTURE(rows, cols, g);
    const std::vector<float> w = lcg_weights(rows * cols, 0.7f, static_cast<uint32_t>(rows * 1000 + cols));
    auto q = quantize_q4_asym_rtn(w.data(), rows, cols, g);
    REQUIRE(q.ok());
    REQUIRE(q->payload.size() == fmt::quant_payload_bytes(fmt::DType::kQ4Asym, rows, cols, g));
    auto dq = dequantize(*q);
    REQUIRE(dq.ok());
    const int64_t ng = (cols + g - 1) / g;
    const size_t scales = rows * ((cols + 1) / 2), mins = scales + 2 * rows * ng;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float s = h2f_at(q->payload, scales + 2 * (r * ng + c / g));
        const float m = h2f_at(q->payload, mins + 2 * (r * ng + c / g));
        const float x = w[r * cols + c];
        const int code = q4_code(*q, r, c);
        CHECK((*dq)[r * cols + c] == static_cast<float>(code) * s + m);
        // no other code dequantizes closer (ties aside)
        for (int k = 0; k < 16; ++k)
          CHECK(std::fabs(static_cast<float>(code) * s + m - x) <= std::fabs(static_cast<float>(k) * s + m - x) + 1e-6f);
        CHECK(std::fabs((*dq)[r * cols + c] - x) <= s / 2 + 2e-3f * 0.7f + 1e-6f);
      }
  }
}

TEST_CASE("q8_sym RTN: hand-computed per-row case", "[quant]") {
  // row 0: max|w| 63.5 -> scale 0.5; codes 127, round(-63.5) = -64 (half away from zero), 2, round(0.4) = 0
  // row 1: all zero -> scale 0, codes 0
  const std::vector<float> w = {63.5f, -31.75f, 1.0f, 0.2f, 0.0f, 0.0f, 0.0f, 0.0f};
  auto q = quantize_q8_sym_rtn(w.data(), 2, 4, 0);
  REQUIRE(q.ok());
  CHECK(q->dtype == fmt::DType::kQ8Sym);
  CHECK(q->group_size == 4);  // per row recorded as g = cols
  const std::vector<uint8_t> expected = {0x7F, 0xC0, 0x02, 0x00, 0, 0, 0, 0, 0x00, 0x38, 0x00, 0x00};
  CHECK(q->payload == expected);
  CHECK(q->payload.size() == fmt::quant_payload_bytes(fmt::DType::kQ8Sym, 2, 4, 4));
  auto dq = dequantize(*q);
  REQUIRE(dq.ok());
  const std::vector<float> want = {63.5f, -32.0f, 1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  CHECK(*dq == want);
  CHECK(stored_bits(*q) == 8 * 8 + 2 * 16);
}

TEST_CASE("q8_sym RTN: groups, partial group, error <= scale/2", "[quant]") {
  for (auto [rows, cols, g] : {std::tuple<int64_t, int64_t, int>{4, 64, 32}, {5, 172, 32}, {3, 33, 0}, {2, 7, 3}}) {
    CAPTURE(rows, cols, g);
    const std::vector<float> w = lcg_weights(rows * cols, 2.0f, static_cast<uint32_t>(rows + cols));
    auto q = quantize_q8_sym_rtn(w.data(), rows, cols, g);
    REQUIRE(q.ok());
    const int64_t ge = g == 0 ? cols : g, ng = (cols + ge - 1) / ge;
    CHECK(q->group_size == ge);
    REQUIRE(q->payload.size() == fmt::quant_payload_bytes(fmt::DType::kQ8Sym, rows, cols, ge));
    auto dq = dequantize(*q);
    REQUIRE(dq.ok());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < ng; ++j) {
        float amax = 0;
        for (int64_t c = j * ge; c < std::min(cols, (j + 1) * ge); ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
        const float s = h2f_at(q->payload, rows * cols + 2 * (r * ng + j));
        CHECK(s == fp16(amax / 127.0f));
        for (int64_t c = j * ge; c < std::min(cols, (j + 1) * ge); ++c) {
          const int code = static_cast<int8_t>(q->payload[r * cols + c]);
          CHECK(code >= -127);
          CHECK(code <= 127);
          CHECK(std::fabs((*dq)[r * cols + c] - w[r * cols + c]) <= s / 2 + 1e-6f);
        }
      }
  }
}

TEST_CASE("RTN quantizers reject NaN / Inf and bad arguments", "[quant]") {
  std::vector<float> w(2 * 4, 0.5f);
  w[1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  auto a = quantize_q4_asym_rtn(w.data(), 2, 4, 2);
  REQUIRE_FALSE(a.ok());
  CHECK(a.status().code() == ErrorCode::kBadInput);
  CHECK_THAT(a.status().message(), Catch::Contains("NaN") && Catch::Contains("row 1, col 2"));
  auto b = quantize_q8_sym_rtn(w.data(), 2, 4, 0);
  REQUIRE_FALSE(b.ok());
  CHECK_THAT(b.status().message(), Catch::Contains("row 1, col 2"));
  w[1 * 4 + 2] = -std::numeric_limits<float>::infinity();
  auto c = quantize_q4_asym_rtn(w.data(), 2, 4, 2);
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.status().message(), Catch::Contains("Inf") && Catch::Contains("row 1, col 2"));
  w[1 * 4 + 2] = 0.5f;

  CHECK(quantize_q4_asym_rtn(w.data(), 0, 4, 2).status().code() == ErrorCode::kInvalidArgument);
  CHECK(quantize_q4_asym_rtn(w.data(), 2, -1, 2).status().code() == ErrorCode::kInvalidArgument);
  CHECK(quantize_q4_asym_rtn(w.data(), 2, 4, 0).status().code() == ErrorCode::kInvalidArgument);
  CHECK(quantize_q4_asym_rtn(nullptr, 2, 4, 2).status().code() == ErrorCode::kInvalidArgument);
  CHECK(quantize_q8_sym_rtn(w.data(), 2, 4, -1).status().code() == ErrorCode::kInvalidArgument);

  // out of fp16 range: min -1e6 cannot be stored as an fp16 min
  std::vector<float> big = {-1e6f, 0.0f};
  auto d = quantize_q4_asym_rtn(big.data(), 1, 2, 2);
  REQUIRE_FALSE(d.ok());
  CHECK(d.status().code() == ErrorCode::kUnsupported);
  CHECK(quantize_q8_sym_rtn(big.data(), 1, 2, 2).ok());  // scale 1e6/127 fits fp16
  big[0] = -1e8f;
  CHECK(quantize_q8_sym_rtn(big.data(), 1, 2, 2).status().code() == ErrorCode::kUnsupported);

  // fp16 range edges: 65504 is the largest fp16; 65520 rounds to Inf
  std::vector<float> edge = {65504.0f, 65504.0f};
  CHECK(quantize_q4_asym_rtn(edge.data(), 1, 2, 2).ok());
  edge[0] = -65520.0f;
  CHECK(quantize_q4_asym_rtn(edge.data(), 1, 2, 2).status().code() == ErrorCode::kUnsupported);

  // dequantize checks the payload size
  auto q = quantize_q8_sym_rtn(w.data(), 2, 4, 0);
  REQUIRE(q.ok());
  QuantTensor bad = *q;
  bad.payload.pop_back();
  CHECK(dequantize(bad).status().code() == ErrorCode::kInvalidArgument);
  bad = *q;
  bad.group_size = 0;
  CHECK_FALSE(dequantize(bad).ok());
  bad = *q;
  bad.dtype = fmt::DType::kI32;
  CHECK_FALSE(dequantize(bad).ok());
}

TEST_CASE("store_plain f16 / f32 round-trips", "[quant]") {
  const std::vector<float> w = {1.0f, -2.5f, 0.1f, 3.0f, 1e-3f, 7.0f};
  auto f32 = store_plain(w.data(), 2, 3, fmt::DType::kF32);
  REQUIRE(f32.ok());
  CHECK(f32->payload.size() == 24);
  CHECK(*dequantize(*f32) == w);
  auto f16 = store_plain(w.data(), 2, 3, fmt::DType::kF16);
  REQUIRE(f16.ok());
  CHECK(f16->payload.size() == 12);
  auto dq = dequantize(*f16);
  REQUIRE(dq.ok());
  for (size_t i = 0; i < w.size(); ++i) CHECK((*dq)[i] == fp16(w[i]));
  CHECK(stored_bits(*f16) == 6 * 16);
  CHECK(stored_bits(*f32) == 6 * 32);
  CHECK_FALSE(store_plain(w.data(), 2, 3, fmt::DType::kQ8Sym).ok());
}

TEST_CASE("bpw of the stories260K default recipe: 5.028 linears, 5.435 all", "[quant]") {
  struct Shape { const char* name; int64_t rows, cols; };
  const Shape layer[] = {{"wq", 64, 64}, {"wk", 32, 64}, {"wv", 32, 64}, {"wo", 64, 64},
                         {"w1", 172, 64}, {"w3", 172, 64}, {"w2", 64, 172}};
  BpwAccount linears, all;
  int n = 0;
  for (int l = 0; l < 5; ++l)
    for (const Shape& s : layer) {
      const std::string name = "layers." + std::to_string(l) + "." + s.name;
      REQUIRE(linears.add(name, fmt::DType::kQ4Asym, s.rows, s.cols, 32).ok());
      REQUIRE(all.add(name, fmt::DType::kQ4Asym, s.rows, s.cols, 32).ok());
      ++n;
    }
  CHECK(n == 35);
  REQUIRE(all.add("tok_embeddings.weight", fmt::DType::kQ8Sym, 512, 64, 0).ok());
  // the tied classifier: same tensor, counted once
  REQUIRE(all.add("tok_embeddings.weight", fmt::DType::kQ8Sym, 512, 64, 0).ok());
  CHECK_FALSE(all.add("tok_embeddings.weight", fmt::DType::kQ4Asym, 512, 64, 32).ok());
  CHECK(linears.weight_count() == 5 * 45312);
  CHECK(linears.weight_bits() == 5 * 227840);
  CHECK(linears.bpw() == Approx(5.028).margin(0.001));
  CHECK(all.weight_count() == 5 * 45312 + 32768);
  CHECK(all.weight_bits() == 5 * 227840 + 270336);
  CHECK(all.bpw() == Approx(5.435).margin(0.001));
  CHECK(all.entries().size() == 36);

  CHECK(*logical_bits(fmt::DType::kF16, 10, 10, 0) == 1600);
  CHECK(*logical_bits(fmt::DType::kF32, 10, 10, 0) == 3200);
  CHECK(*logical_bits(fmt::DType::kQ4Asym, 64, 172, 32) == 64 * 172 * 4 + 64 * 6 * 32);
  CHECK_FALSE(logical_bits(fmt::DType::kQ4Asym, 64, 172, 0).ok());
  CHECK_FALSE(logical_bits(fmt::DType::kI64, 4, 4, 0).ok());
}

namespace {

ir::Node node(const char* op, const char* domain, const char* name, std::vector<std::string> in,
              std::vector<std::string> out) {
  ir::Node n;
  n.op = op;
  n.domain = domain;
  n.name = name;
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  return n;
}

// A tiny lifted model: V 16, D 8, F 12; tied classifier; one RMSNorm weight shared by two norms.
ir::Graph tiny_lifted() {
  ir::Graph g;
  g.name = "tiny";
  g.inputs = {"tokens"};
  g.outputs = {"logits"};
  auto mat = [&](const char* name, int64_t r, int64_t c, uint32_t seed) {
    g.initializers[name] = ir::Tensor::from_f32({r, c}, lcg_weights(r * c, 0.5f, seed));
  };
  mat("emb", 16, 8, 1);
  mat("wq", 8, 8, 2);
  mat("w1", 12, 8, 3);
  mat("w3", 12, 8, 4);
  mat("w2", 8, 12, 5);
  g.initializers["norm.w"] = ir::Tensor::from_f32({8}, std::vector<float>(8, 1.0f));
  g.nodes.push_back(node("Embedding", "kerf", "embed", {"tokens", "emb"}, {"h0"}));
  g.nodes.push_back(node("RMSNorm", "kerf", "norm0", {"h0", "norm.w"}, {"h1"}));
  g.nodes.push_back(node("Linear", "kerf", "q_proj", {"h1", "wq"}, {"h2"}));
  g.nodes.push_back(node("GatedFFN", "kerf", "ffn", {"h2", "w1", "w3", "w2"}, {"h3"}));
  g.nodes.push_back(node("RMSNorm", "kerf", "norm1", {"h3", "norm.w"}, {"h4"}));
  g.nodes.push_back(node("Linear", "kerf", "classifier", {"h4", "emb"}, {"logits"}));
  return g;
}

}  // namespace

TEST_CASE("quantize_graph_rtn: baseline recipe on a tiny lifted graph", "[quant]") {
  const ir::Graph g = tiny_lifted();
  auto m = quantize_graph_rtn(g, QuantOptions{});
  REQUIRE(m.ok());
  REQUIRE(m->plan.size() == 5);
  CHECK(m->tensors.size() == 5);
  CHECK(m->tensors.count("norm.w") == 0);
  const TensorPlan& e = m->plan[0];
  CHECK(e.name == "emb");
  CHECK(e.role == "embedding+classifier");
  CHECK(e.dtype == fmt::DType::kQ8Sym);
  CHECK(e.group_size == 8);
  CHECK(e.method == "rtn");
  for (size_t i = 1; i < 5; ++i) {
    CAPTURE(m->plan[i].name);
    CHECK(m->plan[i].role == "linear");
    CHECK(m->plan[i].dtype == fmt::DType::kQ4Asym);
    CHECK(m->plan[i].group_size == 32);
    CHECK(m->plan[i].rel_rms_error > 0.0);
    CHECK(m->plan[i].rel_rms_error < 0.2);  // 4-bit RTN on uniform weights: about 0.07
  }
  CHECK(m->plan[1].name == "wq");
  CHECK(m->plan[4].name == "w2");
  CHECK(e.rel_rms_error < 0.01);  // 8-bit
  for (const TensorPlan& p : m->plan) {
    const QuantTensor& q = m->tensors.at(p.name);
    CHECK(q.payload.size() == fmt::quant_payload_bytes(q.dtype, q.rows, q.cols, q.group_size));
    CHECK(p.bits == stored_bits(q));
  }
  // wq 8x8: 64*4 + 8*32; w1, w3 12x8: 96*4 + 12*32; w2 8x12: 96*4 + 8*32; emb 16x8 q8 per row: 128*8 + 16*16
  CHECK(m->weight_count == 64 + 96 + 96 + 96 + 128);
  CHECK(m->weight_bits == 512 + 768 + 768 + 640 + 1280);
  CHECK(m->bpw == Approx(3968.0 / 480.0));
  REQUIRE(m->kept.size() == 1);
  CHECK(m->kept[0].name == "norm.w");
  CHECK(m->kept[0].role == "norm");
  CHECK(m->kept[0].dtype == fmt::DType::kF32);

  // dequantized tensors match the original within the RTN bound
  const std::vector<float> wq = g.constant("wq")->to_f32();
  auto dq = dequantize(m->tensors.at("wq"));
  REQUIRE(dq.ok());
  for (size_t i = 0; i < wq.size(); ++i) CHECK(std::fabs((*dq)[i] - wq[i]) <= 1.0f / 15.0f / 2.0f + 1e-3f);

  // another recipe: f16 linears, q4 embedding
  QuantOptions o;
  o.linear_dtype = fmt::DType::kF16;
  o.embedding_dtype = fmt::DType::kQ4Asym;
  o.embedding_group = 4;
  auto m2 = quantize_graph_rtn(g, o);
  REQUIRE(m2.ok());
  CHECK(m2->plan[1].dtype == fmt::DType::kF16);
  CHECK(m2->plan[1].method == "cast");
  CHECK(m2->plan[0].dtype == fmt::DType::kQ4Asym);
  CHECK(m2->weight_bits == (64 + 96 + 96 + 96) * 16 + (128 * 4 + 16 * 2 * 32));
}

TEST_CASE("quantize_graph_rtn: errors name the tensor / node", "[quant]") {
  {
    ir::Graph g = tiny_lifted();
    g.initializers["wq"] = ir::Tensor::from_f32({2, 4, 8}, std::vector<float>(64, 0.1f));
    auto m = quantize_graph_rtn(g, QuantOptions{});
    REQUIRE_FALSE(m.ok());
    CHECK_THAT(m.status().message(), Catch::Contains("'wq'") && Catch::Contains("2-D"));
  }
  {
    ir::Graph g = tiny_lifted();
    g.nodes[2].inputs[1] = "h1";  // weight is an activation
    auto m = quantize_graph_rtn(g, QuantOptions{});
    REQUIRE_FALSE(m.ok());
    CHECK_THAT(m.status().message(), Catch::Contains("q_proj"));
  }
  {
    ir::Graph g = tiny_lifted();
    std::vector<float> v = g.constant("w3")->to_f32();
    v[13] = std::numeric_limits<float>::quiet_NaN();
    g.initializers["w3"] = ir::Tensor::from_f32({12, 8}, v);
    auto m = quantize_graph_rtn(g, QuantOptions{});
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == ErrorCode::kBadInput);
    CHECK_THAT(m.status().message(), Catch::Contains("'w3'") && Catch::Contains("row 1, col 5"));
  }
  {
    ir::Graph g = tiny_lifted();
    g.initializers["w2"] = ir::Tensor::from_f32({12, 8}, std::vector<float>(96, 0.1f));
    auto m = quantize_graph_rtn(g, QuantOptions{});
    REQUIRE_FALSE(m.ok());
    CHECK_THAT(m.status().message(), Catch::Contains("ffn"));
  }
  {
    QuantOptions o;
    o.group_size = 0;
    CHECK(quantize_graph_rtn(tiny_lifted(), o).status().code() == ErrorCode::kInvalidArgument);
    o = QuantOptions{};
    o.embedding_dtype = fmt::DType::kI64;
    CHECK(quantize_graph_rtn(tiny_lifted(), o).status().code() == ErrorCode::kInvalidArgument);
  }
}

TEST_CASE("quantize_graph_rtn: stories260K real weights, default recipe", "[quant]") {
  // The llama2.c checkpoint: 7 x int32 header (dim, hidden, layers, heads, kv_heads, vocab, seq), then
  // fp32 tok_embeddings [V,D], rms_att [L,D], wq [L,D,D], wk [L,KV,D], wv [L,KV,D], wo [L,D,D],
  // rms_ffn [L,D], w1 [L,F,D], w2 [L,D,F], w3 [L,F,D], rms_final [D], RoPE tables (classifier tied).
  const std::string path = std::string(KERF_SHARED_DIR) + "/models/stories260K/stories260K.bin";
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    WARN("skipped: " << path << " not found");
    return;
  }
  int32_t hdr[7] = {};
  REQUIRE(std::fread(hdr, 4, 7, f) == 7);
  const int64_t D = hdr[0], F = hdr[1], L = hdr[2], H = hdr[3], G = hdr[4], V = hdr[5];
  REQUIRE(D == 64);
  REQUIRE(F == 172);
  REQUIRE(V == 512);
  const int64_t KV = D / H * G;
  ir::Graph g;
  g.inputs = {"tokens"};
  g.outputs = {"logits"};
  auto read = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    REQUIRE(std::fread(v.data(), 4, v.size(), f) == v.size());
    g.initializers[name] = ir::Tensor::from_f32(std::move(shape), v);
  };
  auto per_layer = [&](const char* what, std::vector<int64_t> shape) {
    for (int64_t l = 0; l < L; ++l) read("layers." + std::to_string(l) + "." + what, shape);
  };
  read("tok_embeddings.weight", {V, D});
  per_layer("attention_norm.weight", {D});
  per_layer("attention.wq.weight", {D, D});
  per_layer("attention.wk.weight", {KV, D});
  per_layer("attention.wv.weight", {KV, D});
  per_layer("attention.wo.weight", {D, D});
  per_layer("ffn_norm.weight", {D});
  per_layer("feed_forward.w1.weight", {F, D});
  per_layer("feed_forward.w2.weight", {D, F});
  per_layer("feed_forward.w3.weight", {F, D});
  read("norm.weight", {D});
  std::fclose(f);

  // the lifted program (Rotary / Attention / Add carry no weights and do not matter here)
  g.nodes.push_back(node("Embedding", "kerf", "embed", {"tokens", "tok_embeddings.weight"}, {"x0"}));
  std::string x = "x0";
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    auto lin = [&](const std::string& w, const std::string& in, const std::string& out) {
      g.nodes.push_back(node("Linear", "kerf", (p + w).c_str(), {in, p + w + ".weight"}, {p + out}));
    };
    g.nodes.push_back(node("RMSNorm", "kerf", (p + "attention_norm").c_str(), {x, p + "attention_norm.weight"}, {p + "h"}));
    lin("attention.wq", p + "h", "q");
    lin("attention.wk", p + "h", "k");
    lin("attention.wv", p + "h", "v");
    lin("attention.wo", p + "v", "o");
    g.nodes.push_back(node("RMSNorm", "kerf", (p + "ffn_norm").c_str(), {p + "o", p + "ffn_norm.weight"}, {p + "h2"}));
    g.nodes.push_back(node("GatedFFN", "kerf", (p + "feed_forward").c_str(),
                           {p + "h2", p + "feed_forward.w1.weight", p + "feed_forward.w3.weight",
                            p + "feed_forward.w2.weight"},
                           {p + "out"}));
    x = p + "out";
  }
  g.nodes.push_back(node("RMSNorm", "kerf", "norm", {x, "norm.weight"}, {"xf"}));
  g.nodes.push_back(node("Linear", "kerf", "output", {"xf", "tok_embeddings.weight"}, {"logits"}));

  auto m = quantize_graph_rtn(g, QuantOptions{});
  REQUIRE(m.ok());
  CHECK(m->plan.size() == 36);
  CHECK(m->kept.size() == static_cast<size_t>(2 * L + 1));
  CHECK(m->weight_count == 259328);
  CHECK(m->bpw == Approx(5.435).margin(0.001));
  int n_linear = 0;
  for (const TensorPlan& p : m->plan) {
    CAPTURE(p.name, p.rel_rms_error);
    if (p.role == "linear") {
      ++n_linear;
      CHECK(p.dtype == fmt::DType::kQ4Asym);
      CHECK(p.rel_rms_error > 0.02);
      CHECK(p.rel_rms_error < 0.15);
    } else {
      CHECK(p.role == "embedding+classifier");
      CHECK(p.dtype == fmt::DType::kQ8Sym);
      CHECK(p.rel_rms_error < 0.01);
    }
  }
  CHECK(n_linear == 35);
}
