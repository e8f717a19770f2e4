// Tests for the IR text form (compiler/ir/ir_text.h): exact round trips and parse errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "compiler/ir/ir.h"
#include "compiler/ir/ir_text.h"
#include "kerf/xxh64.h"

using namespace kerf;
using namespace kerf::ir;

namespace {

std::string vi_str(const ValueInfo& v) {
  return std::string(dtype_name(v.dtype)) + (v.rank_known ? shape_to_string(v.shape) : "<rank?>");
}

/// Field-by-field equality; on mismatch reports the first difference through Catch's INFO.
bool graphs_equal(const Graph& a, const Graph& b, std::string* why) {
  auto fail = [&](const std::string& m) {
    *why = m;
    return false;
  };
  if (a.name != b.name) return fail("name: " + a.name + " vs " + b.name);
  if (a.opset != b.opset) return fail("opset");
  if (a.inputs != b.inputs) return fail("inputs");
  if (a.outputs != b.outputs) return fail("outputs");
  if (a.metadata != b.metadata) return fail("metadata");
  if (a.initializers.size() != b.initializers.size()) return fail("initializer count");
  for (const auto& [k, t] : a.initializers) {
    auto it = b.initializers.find(k);
    if (it == b.initializers.end()) return fail("initializer missing: " + k);
    if (!(it->second == t)) return fail("initializer differs: " + k);
  }
  if (a.values.size() != b.values.size()) return fail("values count");
  for (const auto& [k, v] : a.values) {
    auto it = b.values.find(k);
    if (it == b.values.end()) return fail("values missing: " + k);
    const ValueInfo& w = it->second;
    if (v.dtype != w.dtype || v.rank_known != w.rank_known || v.shape != w.shape)
      return fail("values differ: " + k + " " + vi_str(v) + " vs " + vi_str(w));
  }
  if (a.nodes.size() != b.nodes.size()) return fail("node count");
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    const Node& x = a.nodes[i];
    const Node& y = b.nodes[i];
    const std::string at = "node " + std::to_string(i) + " (" + x.name + "): ";
    if (x.op != y.op || x.domain != y.domain) return fail(at + "op " + x.qualified_op() + " vs " + y.qualified_op());
    if (x.name != y.name) return fail(at + "name vs " + y.name);
    if (x.inputs != y.inputs) return fail(at + "inputs");
    if (x.outputs != y.outputs) return fail(at + "outputs");
    if (x.attrs.size() != y.attrs.size()) return fail(at + "attr count");
    for (const auto& [k, v] : x.attrs) {
      auto it = y.attrs.find(k);
      if (it == y.attrs.end()) return fail(at + "attr missing " + k);
      const AttrValue& w = it->second;
      if (v.index() != w.index()) return fail(at + "attr kind differs " + k);
      bool same = false;
      if (auto* d = std::get_if<double>(&v)) {  // bitwise, so NaN == NaN and -0.0 != 0.0
        same = std::memcmp(d, &std::get<double>(w), 8) == 0;
      } else if (auto* fs = std::get_if<std::vector<double>>(&v)) {
        const auto& gs = std::get<std::vector<double>>(w);
        same = fs->size() == gs.size() && (fs->empty() || std::memcmp(fs->data(), gs.data(), 8 * fs->size()) == 0);
      } else {
        same = v == w;
      }
      if (!same) return fail(at + "attr differs " + k);
    }
  }
  return true;
}

/// print -> parse -> compare -> print again.
void check_round_trip(const Graph& g) {
  const std::string text = print_graph(g);
  INFO(text);
  auto parsed = parse_graph(text);
  INFO(parsed.status().to_string());
  REQUIRE(parsed.ok());
  std::string why;
  CHECK(graphs_equal(g, *parsed, &why));
  if (!why.empty()) FAIL(why);
  CHECK(print_graph(*parsed) == text);
}

Tensor f32_bits(std::vector<int64_t> shape, const std::vector<uint32_t>& bits) {
  Tensor t;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.data.resize(bits.size() * 4);
  std::memcpy(t.data.data(), bits.data(), t.data.size());
  return t;
}

Tensor u16_bits(DType dt, std::vector<int64_t> shape, const std::vector<uint16_t>& bits) {
  Tensor t;
  t.dtype = dt;
  t.shape = std::move(shape);
  t.data.resize(bits.size() * 2);
  std::memcpy(t.data.data(), bits.data(), t.data.size());
  return t;
}

double dbits(uint64_t b) {
  double d;
  std::memcpy(&d, &b, 8);
  return d;
}

/// A graph touching every feature of the IR.
Graph kitchen_sink() {
  Graph g;
  g.name = "stories260K \"test\"";
  g.opset = 17;
  g.metadata["source.format"] = "onnx";
  g.metadata["weird key\twith\ttabs"] = "line1\nline2 \\ \x01 caf\xc3\xa9";
  g.inputs = {"tokens", "/model/input weird"};
  g.outputs = {"logits", "onnx::MatMul_1541", "aux"};
  g.values["tokens"] = ValueInfo{DType::kI64, {Dim::sym("batch"), Dim::sym("seq")}, true};
  g.values["/model/input weird"] = ValueInfo{DType::kF32, {Dim{}, Dim::sym("sequence length"), Dim::of(0)}, true};
  g.values["logits"] = ValueInfo{DType::kF32, {Dim::sym("batch"), Dim::sym("seq"), Dim::of(512)}, true};
  g.values["x"] = ValueInfo{DType::kF32, {Dim::sym("batch"), Dim::sym("seq"), Dim::of(64)}, true};
  g.values["scalar"] = ValueInfo{DType::kF16, {}, true};                 // rank 0
  g.values["rank_unknown"] = ValueInfo{DType::kBF16, {}, false};         // dtype only
  g.values["nothing_known"] = ValueInfo{};                               // entry with no info
  g.values["dtype_unknown"] = ValueInfo{DType::kUndefined, {Dim::of(3), Dim::sym("?")}, true};
  g.values["stale value"] = ValueInfo{DType::kU8, {Dim::of(7)}, true};  // names nothing in the graph
  g.values["model.embed.weight"] = ValueInfo{DType::kF16, {Dim::of(4), Dim::of(2)}, true};  // type of a const

  g.initializers["model.embed.weight"] =
      Tensor::from_f32({4, 2}, {0.0123f, -0.5f, 1.f, 2.f, 3.f, 65504.f, -0.f, 1e-7f}, DType::kF16);
  g.initializers["shape"] = Tensor::from_i64({3}, {0, -1, 64});
  g.initializers["unused const"] = Tensor::from_i64({2, 2}, {1, 0, 1, 1}, DType::kBool);  // no node uses it
  g.initializers["scalar_f64"] = Tensor::from_f32({}, {0.1f}, DType::kF64);
  g.initializers["empty"] = Tensor::from_f32({0, 3}, {}, DType::kF32);
  g.initializers["i32s"] = Tensor::from_i64({2}, {INT32_MIN, INT32_MAX}, DType::kI32);
  g.initializers["i8s"] = Tensor::from_i64({3}, {-128, 0, 127}, DType::kI8);
  g.initializers["u8s"] = Tensor::from_i64({3}, {0, 128, 255}, DType::kU8);
  g.initializers["i64s"] = Tensor::from_i64(
      {2}, {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()});
  g.initializers["bf16s"] = Tensor::from_f32({3}, {1.f, -3.140625f, 1e30f}, DType::kBF16);
  Tensor bad;  // byte count does not match: printed raw
  bad.dtype = DType::kF32;
  bad.shape = {2};
  bad.data = {1, 2, 3};
  g.initializers["malformed"] = bad;

  Node emb;
  emb.op = "Embedding";
  emb.domain = "kerf";
  emb.name = "embed";
  emb.inputs = {"tokens", "model.embed.weight"};
  emb.outputs = {"x"};
  g.nodes.push_back(emb);

  Node rs;
  rs.op = "Reshape";
  rs.name = "/layers.0/Reshape";
  rs.inputs = {"x", "shape", ""};
  rs.outputs = {"y"};
  rs.attrs["allowzero"] = int64_t{0};
  rs.attrs["perm"] = std::vector<int64_t>{0, 2, 1, 3};
  rs.attrs["eps"] = 1e-05;
  rs.attrs["two"] = 2.0;  // must stay a float
  rs.attrs["act"] = std::string("silu");
  rs.attrs["scales"] = std::vector<double>{1.0, 2.5, -0.0};
  rs.attrs["value"] = Tensor::from_f32({2}, {1.f, 2.f});
  rs.attrs["no_ints"] = std::vector<int64_t>{};
  rs.attrs["no_floats"] = std::vector<double>{};
  rs.attrs["empty_str"] = std::string();
  rs.attrs["weird key!"] = int64_t{-7};
  rs.attrs["big"] = std::numeric_limits<int64_t>::min();
  g.nodes.push_back(rs);

  Node split;
  split.op = "Split";
  split.name = "n3";
  split.inputs = {"y"};
  split.outputs = {"a", "", "onnx::MatMul_1541"};  // an omitted optional output
  g.nodes.push_back(split);

  Node ms;
  ms.op = "FusedMatMul";
  ms.domain = "com.microsoft";
  ms.name = "node with \"quotes\" and \\";
  ms.inputs = {"a", "/model/input weird"};
  ms.outputs = {"logits"};
  g.nodes.push_back(ms);

  Node odd;  // op and domain that are not identifiers; no name; no inputs
  odd.op = "My-Op.v2";
  odd.domain = "";
  odd.outputs = {"aux"};
  g.nodes.push_back(odd);

  Node sink;  // no outputs
  sink.op = "Sink";
  sink.domain = "kerf.debug";
  sink.name = "sink";
  sink.inputs = {"aux", "", ""};
  g.nodes.push_back(sink);
  return g;
}

}  // namespace

TEST_CASE("ir text: kitchen-sink graph round-trips exactly", "[ir-text]") {
  const Graph g = kitchen_sink();
  Graph wellformed = g;
  wellformed.initializers.erase("malformed");  // deliberately has 3 bytes for f32[2]
  INFO(wellformed.validate().to_string());
  REQUIRE(wellformed.validate().ok());
  check_round_trip(g);
  check_round_trip(wellformed);
}

TEST_CASE("ir text: printed form is readable and matches the documented syntax", "[ir-text]") {
  const std::string t = print_graph(kitchen_sink());
  INFO(t);
  CHECK(t.rfind("graph \"stories260K \\\"test\\\"\" opset 17 {\n", 0) == 0);
  CHECK(t.find("  meta \"source.format\" = \"onnx\"\n") != std::string::npos);
  CHECK(t.find("  input %tokens : i64[batch,seq]\n") != std::string::npos);
  CHECK(t.find("  input %\"/model/input weird\" : f32[?,\"sequence length\",0]\n") != std::string::npos);
  CHECK(t.find("  output %logits : f32[batch,seq,512]\n") != std::string::npos);
  CHECK(t.find("  output %onnx::MatMul_1541\n") != std::string::npos);
  CHECK(t.find("  const %model.embed.weight : f16[4,2] = [0.012298584, -0.5, 1.0, 2.0, 3.0, 65504.0, -0.0, "
               "1.1920929e-07]\n") != std::string::npos);
  CHECK(t.find("  const %shape : i64[3] = [0, -1, 64]\n") != std::string::npos);
  CHECK(t.find("  const %\"unused const\" : bool[2,2] = [1, 0, 1, 1]\n") != std::string::npos);
  CHECK(t.find("  const %empty : f32[0,3] = []\n") != std::string::npos);
  CHECK(t.find("  const %malformed : f32[2] = raw \"010203\"\n") != std::string::npos);
  CHECK(t.find("  %x : f32[batch,seq,64] = kerf.Embedding(%tokens, %model.embed.weight) @embed\n") !=
        std::string::npos);
  CHECK(t.find("  %y = Reshape(%x, %shape, _) {act = \"silu\", allowzero = 0, big = -9223372036854775808, "
               "empty_str = \"\", eps = 1e-05, no_floats = f[], no_ints = i[], perm = i[0, 2, 1, 3], "
               "scales = f[1.0, 2.5, -0.0], two = 2.0, value = tensor f32[2] [1.0, 2.0], \"weird key!\" = -7} "
               "@/layers.0/Reshape\n") != std::string::npos);
  CHECK(t.find("  %a, _, %onnx::MatMul_1541 = Split(%y) @n3\n") != std::string::npos);
  CHECK(t.find("= com.microsoft.FusedMatMul(%a, %\"/model/input weird\") @\"node with \\\"quotes\\\" and \\\\\"\n") !=
        std::string::npos);
  CHECK(t.find("  %aux = \"\".\"My-Op.v2\"()\n") != std::string::npos);
  CHECK(t.find("  () = kerf.debug.Sink(%aux, _, _) @sink\n") != std::string::npos);
  CHECK(t.find("  value %\"stale value\" : u8[7]\n") != std::string::npos);
  CHECK(t.find("  value %rank_unknown : bf16\n") != std::string::npos);
  CHECK(t.find("  value %nothing_known : ?\n") != std::string::npos);
  CHECK(t.find("  value %dtype_unknown : ?[3,\"?\"]\n") != std::string::npos);
  CHECK(t.find("  value %scalar : f16[]\n") != std::string::npos);
  CHECK(t.find("  value %model.embed.weight : f16[4,2]\n") != std::string::npos);
  CHECK(t.substr(t.size() - 2) == "}\n");
}

TEST_CASE("ir text: float attributes stay floats, ints stay ints", "[ir-text]") {
  Graph g;
  g.name = "attrs";
  Node n;
  n.op = "Op";
  n.outputs = {"o"};
  n.attrs["f_whole"] = 3.0;
  n.attrs["f_big"] = 1e300;
  n.attrs["f_tiny"] = dbits(1);  // smallest f64 denormal
  n.attrs["f_negzero"] = -0.0;
  n.attrs["f_inf"] = std::numeric_limits<double>::infinity();
  n.attrs["f_ninf"] = -std::numeric_limits<double>::infinity();
  n.attrs["f_nan"] = std::numeric_limits<double>::quiet_NaN();
  n.attrs["f_nnan"] = -std::numeric_limits<double>::quiet_NaN();
  n.attrs["f_payload"] = dbits(0x7ff0000000000001ull);  // signalling NaN with a payload
  n.attrs["f_third"] = 1.0 / 3.0;
  n.attrs["f_max"] = std::numeric_limits<double>::max();
  n.attrs["i_3"] = int64_t{3};
  n.attrs["list"] = std::vector<double>{0.1, 100.0, std::numeric_limits<double>::infinity(), dbits(0x8000000000000001ull)};
  g.nodes.push_back(n);
  check_round_trip(g);
  const std::string t = print_graph(g);
  INFO(t);
  CHECK(t.find("f_whole = 3.0") != std::string::npos);
  CHECK(t.find("i_3 = 3,") != std::string::npos);
  CHECK(t.find("f_negzero = -0.0") != std::string::npos);
  CHECK(t.find("f_inf = inf,") != std::string::npos);
  CHECK(t.find("f_ninf = -inf,") != std::string::npos);
  CHECK(t.find("f_nan = nan,") != std::string::npos);
  CHECK(t.find("f_nnan = -nan,") != std::string::npos);
  CHECK(t.find("f_payload = nan(0x7ff0000000000001)") != std::string::npos);
  CHECK(t.find("f_big = 1e+300") != std::string::npos);
  CHECK(t.find("list = f[0.1, 100.0, inf, -5e-324]") != std::string::npos);
}

TEST_CASE("ir text: float edge values round-trip bit-exactly in every float dtype", "[ir-text]") {
  Graph g;
  g.name = "edges";
  // f32: denormal min, -0.0, 65504, FLT_MAX, FLT_MIN, 0.1, inf, -inf, quiet NaN, -NaN, payload NaN, sNaN.
  g.initializers["f32"] = f32_bits({12}, {0x00000001u, 0x80000000u, 0x477fe000u, 0x7f7fffffu, 0x00800000u,
                                          0x3dcccccdu, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u,
                                          0x7fc12345u, 0xff800001u});
  // f16: 65504, -0.0, smallest subnormal, largest subnormal, inf, -inf, NaN, payload NaN.
  g.initializers["f16"] = u16_bits(DType::kF16, {8}, {0x7bffu, 0x8000u, 0x0001u, 0x03ffu, 0x7c00u, 0xfc00u,
                                                      0x7e00u, 0x7c01u});
  g.initializers["bf16"] = u16_bits(DType::kBF16, {6}, {0x0001u, 0x8000u, 0x7f7fu, 0x7f80u, 0x7fc0u, 0xff81u});
  Tensor f64;
  f64.dtype = DType::kF64;
  f64.shape = {5};
  const uint64_t b64[5] = {1ull, 0x8000000000000000ull, 0x7fefffffffffffffull, 0x7ff8000000000000ull,
                           0x7ff4000000000000ull};
  f64.data.resize(40);
  std::memcpy(f64.data.data(), b64, 40);
  g.initializers["f64"] = f64;
  check_round_trip(g);
  const std::string t = print_graph(g);
  INFO(t);
  CHECK(t.find("const %f32 : f32[12] = [1e-45, -0.0, 65504.0, 3.4028235e+38, 1.1754944e-38, 0.1, inf, -inf, "
               "nan, -nan, nan(0x7fc12345), nan(0xff800001)]") != std::string::npos);
  CHECK(t.find("const %f16 : f16[8] = [65504.0, -0.0, 5.9604645e-08, 6.097555e-05, inf, -inf, nan, "
               "nan(0x7c01)]") != std::string::npos);
}

TEST_CASE("ir text: every f16 and bf16 bit pattern round-trips", "[ir-text]") {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    std::vector<uint16_t> all(65536);
    for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
    Graph g;
    g.initializers["all"] = u16_bits(dt, {65536}, all);
    auto parsed = parse_graph(print_graph(g));
    REQUIRE(parsed.ok());
    const Tensor& back = parsed->initializers.at("all");
    const Tensor& orig = g.initializers.at("all");
    REQUIRE(back.data.size() == orig.data.size());
    int mismatches = 0;
    for (size_t i = 0; i < 65536; ++i) {
      uint16_t a, b;
      std::memcpy(&a, orig.data.data() + 2 * i, 2);
      std::memcpy(&b, back.data.data() + 2 * i, 2);
      if (a != b && ++mismatches <= 5) {
        INFO(dtype_name(dt) << " bits 0x" << std::hex << a << " came back as 0x" << b);
        CHECK(a == b);
      }
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("ir text: f32 values round-trip across the range", "[ir-text]") {
  std::vector<uint32_t> bits;
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < 20000; ++i) {  // pseudo-random bit patterns, every exponent
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    bits.push_back(static_cast<uint32_t>(x));
  }
  Graph g;
  g.initializers["r"] = f32_bits({static_cast<int64_t>(bits.size())}, bits);
  auto parsed = parse_graph(print_graph(g));
  REQUIRE(parsed.ok());
  CHECK(parsed->initializers.at("r") == g.initializers.at("r"));
}

TEST_CASE("ir text: elided constants print a hash and refuse to parse", "[ir-text]") {
  Graph g;
  g.name = "big";
  std::vector<float> v(100);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.5f;
  g.initializers["big"] = Tensor::from_f32({10, 10}, v, DType::kF16);
  g.initializers["small"] = Tensor::from_i64({2}, {1, 2});
  Node n;
  n.op = "Constant";
  n.outputs = {"c"};
  n.attrs["value"] = Tensor::from_f32({4}, {1, 2, 3, 4});
  g.nodes.push_back(n);

  PrintOptions opt;
  opt.max_inline_elements = 3;
  const std::string t = print_graph(g, opt);
  INFO(t);
  const Tensor& big = g.initializers.at("big");
  char hash[32];
  std::snprintf(hash, sizeof hash, "0x%016llx", static_cast<unsigned long long>(kerf::xxh64(big.data.data(), 200)));
  CHECK(t.find(std::string("const %big : f16[10,10] = elided(200 bytes, xxh64 ") + hash + ")\n") !=
        std::string::npos);
  CHECK(t.find("const %small : i64[2] = [1, 2]\n") != std::string::npos);
  CHECK(t.find("{value = tensor f32[4] elided(16 bytes, xxh64 0x") != std::string::npos);

  auto r = parse_graph(t);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == ErrorCode::kBadInput);
  CHECK(r.status().message().rfind("line 2, column 29: expected constant data", 0) == 0);
  CHECK(r.status().message().find("elided") != std::string::npos);
  CHECK(r.status().message().find("cannot be parsed back") != std::string::npos);

  // max_inline_elements = -1 (default) prints everything and round-trips.
  check_round_trip(g);
}

TEST_CASE("ir text: value_types=false leaves node outputs untyped", "[ir-text]") {
  const Graph g = kitchen_sink();
  PrintOptions opt;
  opt.value_types = false;
  const std::string t = print_graph(g, opt);
  INFO(t);
  CHECK(t.find("  %x = kerf.Embedding(%tokens, %model.embed.weight) @embed\n") != std::string::npos);
  CHECK(t.find("  input %tokens : i64[batch,seq]\n") != std::string::npos);
  CHECK(t.find("value %") == std::string::npos);
  auto r = parse_graph(t);
  REQUIRE(r.ok());
  CHECK(r->values.count("x") == 0);
  CHECK(r->values.count("tokens") == 1);
}

TEST_CASE("ir text: hand-written text parses (lead's syntax, comments, quoted node names)", "[ir-text]") {
  const char* text = R"(# a comment before the graph
graph "tiny" opset 17 {
  meta "source.format" = "onnx"   # trailing comment
  input %tokens : i64[batch,seq]
  output %logits : f32[batch,seq,4]

  const %w : f16[2] = [0.5, -1]
  %x : f32[batch,seq,4] = kerf.Embedding(%tokens, %w) @"embed"
  %logits, %b = Split(%x, _) {axis = -1, split = i[2,2], eps=1e-5, theta = 10000.0} @"/Split"
}
)";
  auto r = parse_graph(text);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  const Graph& g = *r;
  CHECK(g.name == "tiny");
  CHECK(g.opset == 17);
  REQUIRE(g.nodes.size() == 2);
  CHECK(g.nodes[0].is("kerf", "Embedding"));
  CHECK(g.nodes[0].name == "embed");
  CHECK(g.nodes[1].inputs == std::vector<std::string>{"x", ""});
  CHECK(g.nodes[1].outputs == std::vector<std::string>{"logits", "b"});
  CHECK(g.nodes[1].attr_int("axis", 0) == -1);
  CHECK(g.nodes[1].attr_ints("split") == std::vector<int64_t>{2, 2});
  CHECK(std::holds_alternative<double>(g.nodes[1].attrs.at("eps")));
  CHECK(g.nodes[1].attr_float("eps", 0) == 1e-5);
  CHECK(g.nodes[1].attr_float("theta", 0) == 10000.0);
  CHECK(g.initializers.at("w").to_f32() == std::vector<float>{0.5f, -1.f});
  CHECK(g.values.at("x").shape[2] == Dim::of(4));
  CHECK(g.values.at("logits").shape[0] == Dim::sym("batch"));
  CHECK(g.validate().ok());
}

namespace {
std::string parse_error(const std::string& text) {
  auto r = parse_graph(text);
  if (r.ok()) return "<parsed ok>";
  CHECK(r.status().code() == ErrorCode::kBadInput);
  return r.status().message();
}
}  // namespace

TEST_CASE("ir text: parse errors name the line and column", "[ir-text]") {
  const std::string head = "graph \"g\" opset 17 {\n  input %x : f32[2]\n";
  // Unknown dtype.
  CHECK(parse_error(head + "  const %w : f33[2] = [1, 2]\n}\n") ==
        "line 3, column 14: expected a dtype (f32, f16, bf16, f64, i64, i32, i8, u8, bool or ?), got 'f33'");
  CHECK(parse_error(head + "  %y : float[2] = Relu(%x)\n}\n") ==
        "line 3, column 8: expected a dtype (f32, f16, bf16, f64, i64, i32, i8, u8, bool or ?), got 'float'");
  // Missing ')'.
  CHECK(parse_error(head + "  %y = Add(%x, %x\n}\n") == "line 3, column 18: expected ',' or ')', got end of line");
  CHECK(parse_error(head + "  %y = Add(%x %x)\n}\n") == "line 3, column 15: expected ',' or ')', got '%x'");
  // Undefined syntax.
  CHECK(parse_error(head + "  frobnicate %x\n}\n") ==
        "line 3, column 3: expected a statement (meta, input, output, const, value, a node '%out = Op(...)' or "
        "'}'), got 'frobnicate'");
  CHECK(parse_error(head + "  %y = Relu(%x) $\n}\n") == "line 3, column 17: expected a token, got '$'");
  CHECK(parse_error(head + "  %y = Relu(%x) extra\n}\n") == "line 3, column 17: expected end of line, got 'extra'");
  CHECK(parse_error("graf \"g\" opset 1 {\n}\n") == "line 1, column 1: expected 'graph', got 'graf'");
  CHECK(parse_error(head) == "line 3, column 1: expected a statement (meta, input, output, const, value, a node "
                             "'%out = Op(...)' or '}'), got end of input");
  CHECK(parse_error(head + "}\n}\n") == "line 4, column 1: expected end of input after the graph's '}', got '}'");
  // Strings and names.
  CHECK(parse_error(head + "  meta \"k\" = \"unterminated\n}\n") ==
        "line 3, column 14: expected a closing '\"', got end of line");
  CHECK(parse_error(head + "  meta \"k\" = \"bad \\q escape\"\n}\n") ==
        "line 3, column 14: expected an escape (\\\" \\\\ \\n \\t \\r \\xHH), got 'q'");
  CHECK(parse_error(head + "  input % x\n}\n") == "line 3, column 9: expected a name or a quoted string after '%', "
                                                   "got ' '");
  // Values.
  CHECK(parse_error(head + "  const %w : f32[2,2] = [1, 2, 3]\n}\n") ==
        "line 3, column 25: expected 4 values for f32[2,2], got 3");
  CHECK(parse_error(head + "  const %w : f32[2] = [1, 2, 3]\n}\n") ==
        "line 3, column 30: expected ']' after 2 values for f32[2], got '3'");
  CHECK(parse_error(head + "  const %w : i8[1] = [200]\n}\n") ==
        "line 3, column 23: expected a i8 value in [-128, 127], got 200");
  CHECK(parse_error(head + "  const %w : i64[1] = [1.5]\n}\n") ==
        "line 3, column 24: expected an integer (i64), got '1.5'");
  CHECK(parse_error(head + "  const %w : f32[1] = [abc]\n}\n") == "line 3, column 24: expected a f32 number, got 'abc'");
  CHECK(parse_error(head + "  %y = Relu(%x) {alpha = }\n}\n") ==
        "line 3, column 26: expected an attribute value (integer, float, \"string\", i[...], f[...] or tensor ...), "
        "got '}'");
  CHECK(parse_error(head + "  %y = Relu(%x) {a = 1, a = 2}\n}\n") ==
        "line 3, column 25: expected an attribute name not given before, got 'a'");
  CHECK(parse_error(head + "  %y = Relu(%x) {a = i[1, 2.5]}\n}\n") == "line 3, column 27: expected an integer, got '2.5'");
  CHECK(parse_error(head + "  const %w : f32[1048576,1048576,2] = []\n}\n") ==
        "line 3, column 34: expected a tensor shape with at most 2^40 elements, got '2'");
  CHECK(parse_error(head + "  const %w : f32[-1] = [1]\n}\n") ==
        "line 3, column 24: expected raw \"...\" data for f32[-1], got a value list");
  CHECK(parse_error(head + "  const %w : f32[2] = elided(8 bytes, xxh64 0x0)\n}\n") ==
        "line 3, column 23: expected constant data ([...] or raw \"...\"), got an elided constant; it was printed "
        "with PrintOptions::max_inline_elements and its values are not in the text, so it cannot be parsed back");
  // Conflicting type annotations.
  CHECK(parse_error(head + "  output %x : f32[3]\n}\n") ==
        "line 3, column 15: expected the type given earlier for %x (f32[2]), got f32[3]");
  // Duplicate constant.
  CHECK(parse_error(head + "  const %w : f32[] = [1]\n  const %w : f32[] = [2]\n}\n") ==
        "line 4, column 9: expected a constant name not defined before, got '%w'");
}
