// ONNX import, pass pipeline, before/after IR tests of fold / dce / lift-transformer, and the
// lifted stories260K graphs.
#include <catch2/catch.hpp>
#include <onnx/onnx_pb.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "compiler/ir/ir_text.h"
#include "formats/onnx/onnx_import.h"
#include "passes/registry.h"

namespace ir = kerf::ir;

namespace {

std::string model(const char* name) { return std::string(KERF_SHARED_DIR) + "/models/stories260K/" + name; }

ir::Graph parse(const std::string& text) {
  auto g = ir::parse_graph(text);
  INFO(g.status().to_string());
  REQUIRE(g.ok());
  return std::move(g).value();
}

std::string run(const std::string& before, const std::string& pipeline) {
  ir::Graph g = parse(before);
  kerf::Status st = kerf::passes::run_pipeline(g, pipeline);
  INFO(st.to_string());
  REQUIRE(st.ok());
  ir::PrintOptions po;
  po.value_types = false;
  return ir::print_graph(g, po);
}

std::string canonical(const std::string& text) {
  ir::PrintOptions po;
  po.value_types = false;
  return ir::print_graph(parse(text), po);
}

ir::Graph lifted(const char* file) {
  auto g = kerf::import_onnx(model(file));
  INFO(g.status().to_string());
  REQUIRE(g.ok());
  kerf::Status st = kerf::passes::run_pipeline(*g, "canonicalize");
  INFO(st.to_string());
  REQUIRE(st.ok());
  return std::move(g).value();
}

std::string write_model(const onnx::ModelProto& m, const std::string& name) {
  std::string path = std::string(KERF_BINARY_DIR) + "/" + name;
  std::ofstream f(path, std::ios::binary);
  REQUIRE(m.SerializeToOstream(&f));
  return path;
}

onnx::ModelProto tiny_model(const std::vector<std::pair<std::string, std::string>>& ops) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* os = m.add_opset_import();
  os->set_domain("");
  os->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("tiny");
  auto* in = g->add_input();
  in->set_name("x");
  in->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  in->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(4);
  std::string prev = "x";
  int i = 0;
  for (const auto& [op, name] : ops) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(name);
    n->add_input(prev);
    prev = "v" + std::to_string(i++);
    n->add_output(prev);
  }
  auto* out = g->add_output();
  out->set_name(prev);
  out->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  return m;
}

}  // namespace

TEST_CASE("import: the three stories260K exports import with their inputs and initializers", "[import]") {
  for (const char* f : {"stories260K.fp32.onnx", "stories260K.fp16.onnx", "stories260K.kv.fp16.onnx"}) {
    auto g = kerf::import_onnx(model(f));
    INFO(f << ": " << g.status().to_string());
    REQUIRE(g.ok());
    CHECK(g->validate().ok());
    CHECK(g->nodes.size() > 900);  // the exporter's op soup, Constant nodes already turned into initializers
    const ir::Tensor* emb = g->constant("model.embed.weight");
    REQUIRE(emb != nullptr);
    CHECK(emb->shape == std::vector<int64_t>{512, 64});
    CHECK(emb->dtype == (std::string(f) == "stories260K.fp32.onnx" ? ir::DType::kF32 : ir::DType::kF16));
    REQUIRE(!g->inputs.empty());
    const auto& vi = g->values.at(g->inputs[0]);
    CHECK(vi.dtype == ir::DType::kI64);
    REQUIRE(vi.shape.size() == 2);
    CHECK(vi.shape[0].symbol == "batch");
    CHECK(vi.shape[1].symbol == "seq");
  }
  auto kv = kerf::import_onnx(model("stories260K.kv.fp16.onnx"));
  REQUIRE(kv.ok());
  CHECK(kv->inputs.size() == 11);   // input_ids + 5 x (key, value)
  CHECK(kv->outputs.size() == 11);  // logits + 5 x (key, value)
}

TEST_CASE("import: unsupported ops are all listed with their node names, exit class unsupported", "[import]") {
  auto m = tiny_model({{"Relu", "first_relu"}, {"Erf", "gelu_erf"}, {"LSTM", "rnn"}, {"Erf", "gelu_erf_2"}});
  auto r = kerf::import_onnx(write_model(m, "unsupported.onnx"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == kerf::ErrorCode::kUnsupported);
  const std::string& msg = r.status().message();
  CHECK(msg.find("Relu (1): first_relu") != std::string::npos);
  CHECK(msg.find("Erf (2): gelu_erf, gelu_erf_2") != std::string::npos);
  CHECK(msg.find("LSTM (1): rnn") != std::string::npos);
  CHECK(kerf::exit_code_for(r.status().code()) == 4);
}

TEST_CASE("import: bad files are rejected with a clear error", "[import]") {
  auto missing = kerf::import_onnx("/nonexistent/model.onnx");
  CHECK(missing.status().code() == kerf::ErrorCode::kIo);
  const std::string junk = std::string(KERF_BINARY_DIR) + "/junk.onnx";
  {
    std::ofstream f(junk, std::ios::binary);
    f << "this is not a protobuf \xff\xff\xff\xff";
  }
  auto bad = kerf::import_onnx(junk);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == kerf::ErrorCode::kBadInput);
  CHECK(bad.status().message().find("junk.onnx") != std::string::npos);

  auto m = tiny_model({{"Sigmoid", "s"}});
  m.mutable_opset_import(0)->set_version(11);
  auto old = kerf::import_onnx(write_model(m, "opset11.onnx"));
  REQUIRE_FALSE(old.ok());
  CHECK(old.status().code() == kerf::ErrorCode::kUnsupported);
  CHECK(old.status().message().find("opset 11") != std::string::npos);

  // A raw_data size that does not match the shape.
  auto m2 = tiny_model({{"Sigmoid", "s"}});
  auto* init = m2.mutable_graph()->add_initializer();
  init->set_name("w");
  init->set_data_type(onnx::TensorProto::FLOAT);
  init->add_dims(1000);
  init->set_raw_data(std::string(12, '\0'));
  auto short_data = kerf::import_onnx(write_model(m2, "short.onnx"));
  REQUIRE_FALSE(short_data.ok());
  CHECK(short_data.status().message().find("initializer 'w'") != std::string::npos);
}

TEST_CASE("pipeline text parses, prints back, and rejects unknown passes and options", "[passes]") {
  auto steps = kerf::parse_pipeline("fold, dce,lift-transformer{canonical-names=0}");
  REQUIRE(steps.ok());
  CHECK(kerf::print_pipeline(*steps) == "fold,dce,lift-transformer{canonical-names=0}");
  ir::Graph g = parse("graph \"g\" opset 17 {\n  input %x : f32[4]\n  output %y\n  %y = Sigmoid(%x)\n}\n");
  auto st = kerf::passes::run_pipeline(g, "fold,nosuchpass");
  CHECK(st.code() == kerf::ErrorCode::kInvalidArgument);
  CHECK(st.message().find("nosuchpass") != std::string::npos);
  st = kerf::passes::run_pipeline(g, "lift-transformer{speed=11}");
  CHECK(st.code() == kerf::ErrorCode::kInvalidArgument);
  CHECK(st.message().find("speed") != std::string::npos);
  CHECK_FALSE(kerf::parse_pipeline("fold{k=v").ok());
}

TEST_CASE("fold: static Shape/Gather chains fold, dynamic dims stay; dce removes the rest", "[passes]") {
  const std::string before = R"(graph "g" opset 17 {
  input %x : f32[batch,seq,64]
  output %y
  const %two : i64[] = [2]
  const %zero : i64[1] = [0]
  const %minus1 : i64[1] = [-1]
  %s = Shape(%x)
  %d = Gather(%s, %two) {axis = 0}
  %du = Unsqueeze(%d, %zero)
  %shape = Concat(%minus1, %du) {axis = 0}
  %y = Reshape(%x, %shape)
  %unused = Sigmoid(%x)
}
)";
  const std::string after = R"(graph "g" opset 17 {
  input %x : f32[batch,seq,64]
  output %y : f32[?,64]
  const %shape : i64[2] = [-1, 64]
  %y = Reshape(%x, %shape)
}
)";
  CHECK(run(before, "fold,dce") == canonical(after));
  // Without dce the dead Sigmoid stays: fold alone does not remove live-looking nodes.
  CHECK(run(before, "fold").find("Sigmoid") != std::string::npos);
}

TEST_CASE("fold: a dynamic dim is not folded", "[passes]") {
  const std::string before = R"(graph "g" opset 17 {
  input %x : f32[batch,seq,64]
  output %d
  const %one : i64[] = [1]
  %s = Shape(%x)
  %d = Gather(%s, %one) {axis = 0}
}
)";
  std::string out = run(before, "fold,dce");
  CHECK(out.find("Gather") != std::string::npos);
  CHECK(out.find("Shape") != std::string::npos);
}

TEST_CASE("lift-transformer: RMSNorm, Linear and the SiLU-gated FFN of a hand-written block", "[passes]") {
  const std::string before = R"(graph "g" opset 17 {
  input %x : f32[batch,seq,4]
  output %y
  const %two : f32[] = [2]
  const %eps : f32[] = [9.99999975e-06]
  const %one : f32[] = [1]
  const %nw : f32[4] = [1, 2, 3, 4]
  const %w1 : f32[4,3] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
  const %w3 : f32[4,3] = [0.5, 0.25, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  const %w2 : f32[3,4] = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
  %p = Pow(%x, %two)
  %m = ReduceMean(%p) {axes = i[-1], keepdims = 1}
  %a = Add(%m, %eps)
  %s = Sqrt(%a)
  %r = Div(%one, %s)
  %xn = Mul(%x, %r)
  %h = Mul(%nw, %xn)
  %g = MatMul(%h, %w1)
  %sg = Sigmoid(%g)
  %act = Mul(%g, %sg)
  %u = MatMul(%h, %w3)
  %gu = Mul(%act, %u)
  %y = MatMul(%gu, %w2)
}
)";
  const std::string after = R"(graph "g" opset 17 {
  input %x : f32[batch,seq,4]
  output %y : f32[batch,seq,4]
  const %nw : f32[4] = [1, 2, 3, 4]
  const %w1.T : f32[3,4] = [1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12]
  const %w2.T : f32[4,3] = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
  const %w3.T : f32[3,4] = [0.5, 2, 5, 8, 0.25, 3, 6, 9, 1, 4, 7, 10]
  %h = kerf.RMSNorm(%x, %nw) {eps = 9.9999997473787516e-06}
  %y = kerf.GatedFFN(%h, %w1.T, %w3.T, %w2.T) {activation = "silu"}
}
)";
  CHECK(run(before, "lift-transformer{canonical-names=0},dce") == canonical(after));
}

TEST_CASE("lift-transformer: stories260K lifts to the small transformer graph", "[passes][stories]") {
  ir::Graph g = lifted("stories260K.fp32.onnx");
  auto h = g.op_histogram();
  CHECK(g.nodes.size() == 63);
  CHECK(h["kerf.Embedding"] == 1);
  CHECK(h["kerf.RMSNorm"] == 11);
  CHECK(h["kerf.Linear"] == 21);  // 4 per layer + the tied classifier
  CHECK(h["kerf.Rotary"] == 10);
  CHECK(h["kerf.Attention"] == 5);
  CHECK(h["kerf.GatedFFN"] == 5);
  CHECK(h["Add"] == 10);
  CHECK(g.inputs == std::vector<std::string>{"tokens"});
  CHECK(g.outputs == std::vector<std::string>{"logits"});
  // Tied classifier: the last Linear reads the embedding table.
  const ir::Node& cls = g.nodes.back();
  CHECK(cls.is("kerf", "Linear"));
  CHECK(cls.inputs[1] == "model.embed.weight");
  CHECK(g.initializers.count("model.layers.4.w2.weight") == 1);
  CHECK(g.initializers.at("model.layers.0.wk.weight").shape == std::vector<int64_t>{32, 64});
  for (const auto& n : g.nodes)
    if (n.is("kerf", "Attention")) {
      CHECK(n.attr_int("n_heads", 0) == 8);
      CHECK(n.attr_int("n_kv_heads", 0) == 4);
      CHECK(n.attr_int("head_dim", 0) == 8);
      CHECK(n.attr_float("scale", 0) == Approx(1.0 / std::sqrt(8.0)));
    } else if (n.is("kerf", "Rotary")) {
      CHECK(n.attr_float("theta", 0) == 10000.0);
    }
  CHECK(g.metadata.at("model.max_seq_len") == "512");
  CHECK(g.parameter_count() == 64 * 11 + 512 * 64 + 5 * (64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3));
}

TEST_CASE("lift-transformer: no-cache and KV-cache exports lift to the same graph", "[passes][stories]") {
  ir::PrintOptions po;
  po.max_inline_elements = 0;  // weights printed as dtype/shape/hash
  ir::Graph a = lifted("stories260K.fp16.onnx"), b = lifted("stories260K.kv.fp16.onnx");
  CHECK(a.metadata.at("source.file") != b.metadata.at("source.file"));
  a.metadata.erase("source.file");  // provenance: the only line allowed to differ
  b.metadata.erase("source.file");
  const std::string plain = ir::print_graph(a, po);
  const std::string kv = ir::print_graph(b, po);
  CHECK(plain == kv);
  CHECK(plain.find("kerf.Attention") != std::string::npos);
  CHECK(plain.find("past_key_values") == std::string::npos);
}

TEST_CASE("lifted IR text round-trips in full form", "[passes][ir-text][stories]") {
  ir::Graph g = lifted("stories260K.fp32.onnx");
  const std::string text = ir::print_graph(g);
  auto back = ir::parse_graph(text);
  REQUIRE(back.ok());
  CHECK(ir::print_graph(*back) == text);
}
