// QDQ ONNX export of a target's NPU partition (formats/onnx/qdq_export.h, docs/qdq-export.md):
// stories260K lowered for snapdragon-8-gen3 (A16W8) as compile.cpp's per-target loop does it, exported,
// checked for structure, re-imported with kerf's ONNX importer, run by the LibTorch reference executor
// on the embedding rows of real text and compared with runtime-lite's integer-only NPU backend; plus
// the QuantizeLinear / DequantizeLinear semantics the importer and reference executor gained for it.
#include <catch2/catch.hpp>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "compiler/pipeline/emit.h"
#include "compiler/pipeline/model_io.h"
#include "compiler/pipeline/text.h"
#include "compiler/targets/lower.h"
#include "compiler/targets/placement.h"
#include "compiler/targets/profile.h"
#include "distill/reference.h"
#include "formats/onnx/onnx_import.h"
#include "formats/onnx/qdq_export.h"
#include "kerf/format.h"
#include "kerf/kerf.h"
#include "quant/recipe.h"
#include "runtime-lite/src/model.h"
#include "runtime-lite/src/npu.h"
#include "support.h"

namespace {

using namespace kerf;
using kerf::test::TempDir;

/// One target's final builder and placement, made the way pipeline::compile's per-target loop makes
/// them (RTN baseline, no recipe; the cpu's tiled layout is left out: it is lossless and only touches
/// weights that the cpu alone reads, none of them in the npu partition).
struct NpuTarget {
  artifact::ArtifactBuilder builder;
  targets::Placement placement;
  targets::DeviceProfile profile;
  double seconds = 0;
};

/// snapdragon-8-gen3 (A16W8), or a variant of the profile with other npu.activation_bits (8: the
/// 8-bit QDQ form) / npu.weight_bits (4: int4 weights; calibrated on 16 stories to save time).
const NpuTarget& snapdragon(int act_bits = 16, int weight_bits = 8) {
  static std::map<std::pair<int, int>, NpuTarget> cache;
  const std::pair<int, int> key(act_bits, weight_bits);
  if (cache.count(key)) return cache[key];
  NpuTarget& t = cache[key];
  const auto t0 = std::chrono::steady_clock::now();
  const ir::Graph& g = kerf::test::lifted();
  auto q = quant::quantize_graph_rtn(g, quant::QuantOptions{});
  INFO(q.status().to_string());
  REQUIRE(q.ok());
  auto prof = targets::load_profile("snapdragon-8-gen3");
  REQUIRE(prof.ok());
  t.profile = *prof;
  REQUIRE(t.profile.npu.activation_bits == 16);
  t.profile.npu.activation_bits = act_bits;
  t.profile.npu.weight_bits = weight_bits;
  if (weight_bits == 4) t.profile.npu.weights.insert("int4");
  auto tok = pipeline::read_llama2c_tokenizer(kerf::test::kTok, 512);
  REQUIRE(tok.ok());
  pipeline::EmitOptions eo;
  eo.tokenizer = *tok;
  eo.recipe = "rtn";
  eo.target = t.profile.name;
  eo.source_name = "stories260K.fp16.onnx";
  auto plain = pipeline::build_artifact(g, *q, eo);
  INFO(plain.status().to_string());
  REQUIRE(plain.ok());
  auto pl = targets::place(targets::program_of(*plain), t.profile, targets::PlaceOptions{});
  INFO(pl.status().to_string());
  REQUIRE(pl.ok());
  t.placement = *pl;
  t.builder = std::move(*plain);
  Status st = targets::apply_placement(t.builder, t.placement, t.profile, g);
  INFO(st.to_string());
  REQUIRE(st.ok());
  // compile.cpp: the stories of --calib-stories (0:128 by default), each cut to 256 tokens, 16384 in all.
  auto all = pipeline::read_stories(kerf::test::kText);
  REQUIRE(all.ok());
  auto texts = pipeline::select_stories(*all, pipeline::StoryRange{0, weight_bits == 8 ? 128 : 16}, kerf::test::kText);
  REQUIRE(texts.ok());
  auto seqs = targets::tokenize_with_artifact(t.builder, *texts, 256, 16384);
  REQUIRE(seqs.ok());
  st = targets::calibrate_npu(t.builder, t.profile, *seqs);
  INFO(st.to_string());
  REQUIRE(st.ok());
  t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

bool on_npu(const targets::Placement& p, size_t i) { return p.ops[i].unit[1] == "npu"; }

std::vector<std::pair<float, uint32_t>> act_scales(const artifact::ArtifactBuilder& b) {
  const std::string& s = b.meta().at(fmt::meta::kNpuActScales).str;
  std::vector<std::pair<float, uint32_t>> v(b.values().size());
  for (size_t i = 0; i < v.size(); ++i) {
    std::memcpy(&v[i].first, s.data() + 8 * i, 4);
    std::memcpy(&v[i].second, s.data() + 8 * i + 4, 4);
  }
  return v;
}

const onnx::AttributeProto* attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}

/// Row `r` of a q8_sym [rows, cols] table (group g), dequantized: code x f16 scale.
std::vector<float> q8_row(const artifact::TensorRecord& t, int64_t r) {
  const int64_t cols = t.shape[1], g = t.group_size, ng = (cols + g - 1) / g;
  std::vector<float> out(static_cast<size_t>(cols));
  const uint8_t* scales = t.payload.data() + t.shape[0] * cols;
  for (int64_t c = 0; c < cols; ++c) {
    uint16_t h;
    std::memcpy(&h, scales + 2 * (r * ng + c / g), 2);
    out[static_cast<size_t>(c)] = float(int8_t(t.payload[static_cast<size_t>(r * cols + c)])) * fmt::f16_to_f32(h);
  }
  return out;
}

/// softmax KL(p || q) of one logit row, in nats.
double kl_row(const float* p, const float* q, int64_t n) {
  auto lse = [n](const float* x) {
    double m = x[0];
    for (int64_t i = 1; i < n; ++i) m = std::max(m, double(x[i]));
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
    return m + std::log(s);
  };
  const double lp = lse(p), lq = lse(q);
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = double(p[i]) - lp, b = double(q[i]) - lq;
    kl += std::exp(a) * (a - b);
  }
  return kl;
}

int64_t argmax(const float* x, int64_t n) { return std::max_element(x, x + n) - x; }

/// An artifact opened by runtime-lite from the builder's bytes.
struct Opened {
  void* buf = nullptr;
  kerf_model* m = nullptr;
  explicit Opened(const artifact::ArtifactBuilder& b) {
    std::string err;
    const std::vector<uint8_t> bytes = b.serialize(&err);
    INFO(err);
    REQUIRE(!bytes.empty());
    REQUIRE(posix_memalign(&buf, 64, bytes.size()) == 0);
    std::memcpy(buf, bytes.data(), bytes.size());
    char msg[512] = {0};
    INFO(msg);
    REQUIRE(kerf_model_open_memory(buf, bytes.size(), 0, "qdq test", &m, msg, sizeof msg) == KERF_OK);
  }
  ~Opened() {
    if (m) kerf_model_close(m);
    std::free(buf);
  }
  /// Logits [n, vocab] of a fresh session over `tokens`; `flags` as kerf_session_create_ex.
  std::vector<float> logits(const std::vector<int32_t>& tokens, uint32_t flags, uint64_t* npu_ops = nullptr) const {
    kerf_session* s = nullptr;
    char msg[512] = {0};
    INFO(msg);
    REQUIRE(kerf_session_create_ex(m, 0, flags, &s, msg, sizeof msg) == KERF_OK);
    std::vector<float> out(tokens.size() * size_t(kerf_model_vocab_size(m)));
    const int rc = kerf_session_eval(s, tokens.data(), int(tokens.size()), out.data(), 1);
    INFO(kerf_session_last_error(s));
    CHECK(rc == KERF_OK);
    if (npu_ops) {
      kerf_unit_stats st{};
      REQUIRE(kerf_session_unit_stats(s, KERF_UNIT_NPU, &st) == KERF_OK);
      *npu_ops = st.ops;
    }
    kerf_session_free(s);
    return out;
  }
};

/// A session whose NPU backend is the plain (synchronous) NPU reference, so that its codes can be read
/// (npu::read_codes); KERF_SYNC_UNITS is set while the session is created and restored after.
struct NpuSession {
  kerf_session* s = nullptr;
  rt::DeviceBackend* npu = nullptr;
  explicit NpuSession(const kerf_model* m) {
    const char* old = std::getenv("KERF_SYNC_UNITS");
    const std::string saved = old ? old : "";
    setenv("KERF_SYNC_UNITS", "1", 1);
    char msg[512] = {0};
    const int rc = kerf_session_create_ex(m, 0, 0, &s, msg, sizeof msg);
    if (old) setenv("KERF_SYNC_UNITS", saved.c_str(), 1);
    else unsetenv("KERF_SYNC_UNITS");
    INFO(msg);
    REQUIRE(rc == KERF_OK);
    npu = s->dev[KERF_UNIT_NPU].get();
    REQUIRE(npu != nullptr);
  }
  ~NpuSession() { kerf_session_free(s); }
  std::vector<int16_t> codes(uint32_t v, int64_t T, int64_t width) const {
    std::vector<int16_t> c(static_cast<size_t>(T * width));
    std::string err;
    INFO(err);
    REQUIRE(rt::npu::read_codes(npu, v, T, c.data(), &err) == KERF_OK);
    return c;
  }
};

}  // namespace

TEST_CASE("qdq: the npu partition of stories260K exports as an opset-21 QDQ model with one pair per quantized tensor",
          "[qdq]") {
  const NpuTarget& t = snapdragon();
  const artifact::ArtifactBuilder& b = t.builder;
  const int64_t T = t.profile.npu.max_tokens;
  REQUIRE(T == 128);
  TempDir dir("qdq_structure");
  QdqExportOptions opt;
  opt.tokens = T;
  opt.producer_version = "test";
  QdqExportSummary sum;
  const std::string path = dir.file("snapdragon-8-gen3.qdq.onnx");
  Status st = export_qdq_onnx(b, t.placement, opt, path, &sum);
  INFO(st.to_string());
  REQUIRE(st.ok());
  onnx::ModelProto m;
  {
    const std::string bytes = kerf::test::read_bytes(path);
    REQUIRE(bytes.size() == sum.bytes);
    REQUIRE(m.ParseFromString(bytes));
  }
  CHECK(m.ir_version() == 10);
  REQUIRE(m.opset_import_size() == 1);
  CHECK(m.opset_import(0).domain().empty());
  CHECK(m.opset_import(0).version() == 21);
  CHECK(m.producer_name() == "kerf");
  const onnx::GraphProto& g = m.graph();

  // What the artifact says the npu quantizes: every value an npu op reads or writes (static scale from
  // npu.act_scales), the GatedFFN internals (npu.op_scales) and the softmax probabilities (Q15).
  const auto act = act_scales(b);
  std::set<uint32_t> values;
  std::multiset<float> want_scales;
  size_t ffn = 0, attn = 0, npu_ops = 0, layers_kv = 0;
  std::set<uint32_t> npu_weights;
  const std::string& osb = b.meta().at(fmt::meta::kNpuOpScales).str;
  for (size_t i = 0; i < b.ops().size(); ++i) {
    if (!on_npu(t.placement, i)) continue;
    const auto& op = b.ops()[i];
    ++npu_ops;
    for (uint32_t r : op.inputs) {
      if (r & fmt::kRefTensorBit) {
        if (op.op != fmt::OpCode::kRMSNorm) npu_weights.insert(r & ~fmt::kRefTensorBit);
      } else {
        values.insert(r);
      }
    }
    values.insert(op.outputs[0]);
    if (op.op == fmt::OpCode::kGatedFFN) {
      ++ffn;
      float rec[4];
      std::memcpy(rec, osb.data() + 16 * i, 16);
      for (int k = 0; k < 3; ++k) want_scales.insert(rec[k]);
      CHECK(rec[3] == 16.f);
    }
    if (op.op == fmt::OpCode::kAttention) {
      ++attn;
      layers_kv += 2;
      want_scales.insert(1.0f / 32768.0f);
    }
  }
  for (uint32_t v : values) {
    want_scales.insert(act[v].first);
    CHECK(act[v].second == 16u);  // A16W8
  }
  CHECK(npu_ops == 62);  // every op but the Embedding (stories260K: 63 ops)
  CHECK(sum.npu_ops == npu_ops);
  CHECK(sum.act_values == values.size());
  CHECK(sum.internal_pairs == 3 * ffn + attn);
  CHECK(sum.qdq_pairs == values.size() + 3 * ffn + attn);
  CHECK(sum.activation_bits == 16);
  CHECK(sum.weight_matrices == npu_weights.size());

  std::map<std::string, const onnx::TensorProto*> inits;
  for (const auto& i : g.initializer()) inits[i.name()] = &i;
  std::map<std::string, const onnx::NodeProto*> producer;
  std::map<std::string, std::vector<const onnx::NodeProto*>> consumers;
  std::map<std::string, size_t> op_count;
  for (const auto& n : g.node()) {
    ++op_count[n.op_type()];
    for (const auto& o : n.output()) producer[o] = &n;
    for (const auto& i : n.input()) consumers[i].push_back(&n);
  }
  // Only standard ops of the decomposition.
  const std::set<std::string> allowed = {"QuantizeLinear", "DequantizeLinear", "MatMul", "Mul", "Add", "Sub", "Div",
                                         "ReduceMean", "Sqrt", "Reshape", "Transpose", "Slice", "Concat", "Expand",
                                         "Softmax", "Sigmoid"};
  for (const auto& [op, n] : op_count) {
    INFO(op);
    CHECK(allowed.count(op) == 1);
  }
  // QDQ pairs: each QuantizeLinear feeds exactly one DequantizeLinear with the same scalar scale, zero
  // point 0 (omitted), INT16 codes; their scales are exactly the artifact's static scales.
  CHECK(op_count["QuantizeLinear"] == sum.qdq_pairs);
  CHECK(op_count["DequantizeLinear"] == sum.qdq_pairs + sum.weight_matrices);
  std::multiset<float> got_scales;
  for (const auto& n : g.node()) {
    if (n.op_type() != "QuantizeLinear") continue;
    INFO(n.name());
    REQUIRE(n.input_size() == 2);
    const onnx::AttributeProto* od = attr(n, "output_dtype");
    REQUIRE(od != nullptr);
    CHECK(od->i() == onnx::TensorProto::INT16);
    const onnx::TensorProto* sc = inits.count(n.input(1)) ? inits[n.input(1)] : nullptr;
    REQUIRE(sc != nullptr);
    CHECK(sc->dims_size() == 0);
    REQUIRE(sc->data_type() == onnx::TensorProto::FLOAT);
    float s;
    std::memcpy(&s, sc->raw_data().data(), 4);
    got_scales.insert(s);
    const auto& cs = consumers[n.output(0)];
    REQUIRE(cs.size() == 1);
    CHECK(cs[0]->op_type() == "DequantizeLinear");
    CHECK(cs[0]->input_size() == 2);
    CHECK(cs[0]->input(1) == n.input(1));
  }
  CHECK(got_scales == want_scales);
  // Weights: INT8 initializers W^T [K, N] with codes in [-127, 127], each dequantized per output
  // channel (axis 1) by a float32 [N] scale; the other initializers are float32 or int64 (shapes).
  size_t int8_inits = 0;
  for (const auto& i : g.initializer()) {
    INFO(i.name());
    if (i.data_type() == onnx::TensorProto::INT8) {
      ++int8_inits;
      REQUIRE(i.dims_size() == 2);
      const auto& cs = consumers[i.name()];
      REQUIRE(cs.size() == 1);
      CHECK(cs[0]->op_type() == "DequantizeLinear");
      const onnx::AttributeProto* ax = attr(*cs[0], "axis");
      REQUIRE(ax != nullptr);
      CHECK(ax->i() == 1);
      const onnx::TensorProto* sc = inits[cs[0]->input(1)];
      REQUIRE(sc != nullptr);
      CHECK(sc->data_type() == onnx::TensorProto::FLOAT);
      REQUIRE(sc->dims_size() == 1);
      CHECK(sc->dims(0) == i.dims(1));
      const std::string& raw = i.raw_data();
      REQUIRE(int64_t(raw.size()) == i.dims(0) * i.dims(1));
      int lo = 0, hi = 0;
      for (char c : raw) lo = std::min(lo, int(int8_t(c))), hi = std::max(hi, int(int8_t(c)));
      CHECK(lo >= -127);
      CHECK(hi <= 127);
      CHECK(hi - lo > 128);  // 8-bit codes (snapdragon-8-gen3: weight_bits 8)
    } else {
      CHECK((i.data_type() == onnx::TensorProto::FLOAT || i.data_type() == onnx::TensorProto::INT64));
    }
  }
  CHECK(int8_inits == npu_weights.size());
  // I/O: the embedding output [T, 64] in; the logits [T, 512] and each layer's K and V [T, 32] out.
  REQUIRE(g.input_size() == 1);
  REQUIRE(g.output_size() == int(1 + layers_kv));
  auto dims = [](const onnx::ValueInfoProto& vi) {
    std::vector<int64_t> d;
    CHECK(vi.type().tensor_type().elem_type() == onnx::TensorProto::FLOAT);
    for (const auto& x : vi.type().tensor_type().shape().dim()) d.push_back(x.dim_value());
    return d;
  };
  CHECK(dims(g.input(0)) == std::vector<int64_t>{T, 64});
  CHECK(dims(g.output(0)) == std::vector<int64_t>{T, 512});
  for (int o = 1; o < g.output_size(); ++o) CHECK(dims(g.output(o)) == std::vector<int64_t>{T, 32});  // G * Dh = 4 x 8
  for (int o = 0; o < g.output_size(); ++o) {  // every output is a dequantized value
    REQUIRE(producer.count(g.output(o).name()));
    CHECK(producer[g.output(o).name()]->op_type() == "DequantizeLinear");
  }
  std::printf("[qdq] snapdragon-8-gen3 npu partition: %zu ops -> %zu ONNX nodes, %zu QDQ pairs (%zu values + %zu internals), "
              "%zu int8 weight matrices, %llu bytes; lowering + calibration %.1f s\n",
              sum.npu_ops, sum.nodes, sum.qdq_pairs, sum.act_values, sum.internal_pairs, sum.weight_matrices,
              static_cast<unsigned long long>(sum.bytes), t.seconds);
}

namespace {

/// Agreement of the exported model (re-imported, run by the reference executor) with the NPU
/// backend's logits over the same artifact, on the first T tokens of 4 validation stories; and of the
/// float cpu path (the same per-channel weights, float activations) with the NPU, for scale.
struct Agreement {
  double kl = 0, kl_max = 0, top1 = 0, rel_max = 0, diff_max = 0, logit_max = 0;  // NPU vs QDQ
  double kl_cpu = 0, top1_cpu = 0;                                                 // NPU vs float cpu
  int64_t positions = 0;
};

Agreement agreement(int act_bits) {
  const NpuTarget& t = snapdragon(act_bits);
  const artifact::ArtifactBuilder& b = t.builder;
  const int64_t T = t.profile.npu.max_tokens, V = 512;
  TempDir dir("qdq_agree" + std::to_string(act_bits));
  const std::string path = dir.file("npu.qdq.onnx");
  QdqExportOptions opt;
  opt.tokens = T;
  QdqExportSummary sum;
  Status st = export_qdq_onnx(b, t.placement, opt, path, &sum);
  INFO(st.to_string());
  REQUIRE(st.ok());
  CHECK(sum.activation_bits == act_bits);

  // kerf's own importer takes it back cleanly, and the reference executor prepares it.
  auto g = import_onnx(path);
  INFO(g.status().to_string());
  REQUIRE(g.ok());
  CHECK(g->opset == 21);
  REQUIRE(g->inputs == sum.inputs);
  REQUIRE(g->outputs == sum.outputs);
  auto ref = distill::ReferenceExecutor::create(*g, distill::ReferenceOptions{1});
  INFO(ref.status().to_string());
  REQUIRE(ref.ok());

  // The partition's input is the Embedding's output: the rows of its q8_sym table (run on the cpu).
  const artifact::OpRecord* emb = nullptr;
  for (size_t i = 0; i < b.ops().size(); ++i)
    if (b.ops()[i].op == fmt::OpCode::kEmbedding) {
      emb = &b.ops()[i];
      CHECK_FALSE(on_npu(t.placement, i));
    }
  REQUIRE(emb != nullptr);
  const artifact::TensorRecord& table = b.tensors()[emb->inputs[1] & ~fmt::kRefTensorBit];
  REQUIRE(table.dtype == fmt::DType::kQ8Sym);
  REQUIRE(sum.input_widths == std::vector<int64_t>{table.shape[1]});

  // Real text: validation stories (outside the calibration stories 0:128), first T tokens of each.
  std::vector<std::vector<int32_t>> seqs;
  for (const auto& s : kerf::test::stories(400, 440, size_t(T)))
    if (int64_t(s.size()) == T && seqs.size() < 4) seqs.emplace_back(s.begin(), s.end());
  REQUIRE(seqs.size() == 4);

  Opened art(b);
  Agreement a;
  int64_t top1 = 0, top1_cpu = 0;
  for (const auto& toks : seqs) {
    std::vector<float> x;
    for (int32_t id : toks) {
      const std::vector<float> row = q8_row(table, id);
      x.insert(x.end(), row.begin(), row.end());
    }
    auto out = ref->run({{sum.inputs[0], ir::Tensor::from_f32({T, table.shape[1]}, x)}});
    INFO(out.status().to_string());
    REQUIRE(out.ok());
    REQUIRE(out->size() == sum.outputs.size());
    const std::vector<float> qdq = (*out)[0].to_f32();
    REQUIRE(int64_t(qdq.size()) == T * V);
    uint64_t npu_ops = 0;
    const std::vector<float> npu = art.logits(toks, 0, &npu_ops);
    CHECK(npu_ops == sum.npu_ops);  // the prefill ran on the NPU backend, every partition op
    const std::vector<float> cpu = art.logits(toks, KERF_SESSION_CPU_ONLY);
    for (int64_t r = 0; r < T; ++r) {
      const float *p = npu.data() + r * V, *q = qdq.data() + r * V, *c = cpu.data() + r * V;
      const double k = kl_row(p, q, V);
      a.kl += k;
      a.kl_max = std::max(a.kl_max, k);
      a.kl_cpu += kl_row(p, c, V);
      top1 += argmax(p, V) == argmax(q, V);
      top1_cpu += argmax(p, V) == argmax(c, V);
      double dm = 0, lm = 0;
      for (int64_t j = 0; j < V; ++j) {
        dm = std::max(dm, double(std::fabs(p[j] - q[j])));
        lm = std::max(lm, double(std::fabs(p[j])));
      }
      a.diff_max = std::max(a.diff_max, dm);
      a.logit_max = std::max(a.logit_max, lm);
      a.rel_max = std::max(a.rel_max, dm / lm);
      ++a.positions;
    }
  }
  a.kl /= double(a.positions);
  a.kl_cpu /= double(a.positions);
  a.top1 = double(top1) / double(a.positions);
  a.top1_cpu = double(top1_cpu) / double(a.positions);
  std::printf("[qdq] A%dW8, %lld positions (4 stories x %lld tokens): NPU vs QDQ model: KL %.3g (max %.3g), top-1 %.4f, "
              "max |diff| %.4f (max |logit| %.2f; worst row: %.4f of its max |logit|); NPU vs float cpu: KL %.3g, top-1 %.4f\n",
              act_bits, static_cast<long long>(a.positions), static_cast<long long>(T), a.kl, a.kl_max, a.top1, a.diff_max,
              a.logit_max, a.rel_max, a.kl_cpu, a.top1_cpu);
  return a;
}

}  // namespace

namespace {

/// Op by op: the NPU runs the prefill of one validation story (every partition op); then each npu op
/// is exported ALONE (a placement with only that op on the npu), re-imported, fed the NPU's own codes
/// of its inputs (dequantized) and its output codes (QDQ output / scale) are compared with the NPU's.
/// Returns per op kind the largest |code difference| and the share of differing codes.
struct OpAgreement {
  std::map<std::string, int64_t> max_diff;
  std::map<std::string, double> differ;  // share of codes that differ
  int64_t codes = 0, differing = 0;
};

OpAgreement op_by_op(int act_bits, int weight_bits = 8) {
  const NpuTarget& t = snapdragon(act_bits, weight_bits);
  const artifact::ArtifactBuilder& b = t.builder;
  const int64_t T = t.profile.npu.max_tokens;
  std::vector<int32_t> toks;
  for (const auto& s : kerf::test::stories(400, 440, size_t(T)))
    if (int64_t(s.size()) == T) {
      toks.assign(s.begin(), s.end());
      break;
    }
  REQUIRE(int64_t(toks.size()) == T);
  Opened art(b);
  NpuSession sess(art.m);
  std::vector<float> logits(static_cast<size_t>(T) * 512);
  REQUIRE(kerf_session_eval(sess.s, toks.data(), int(T), logits.data(), 1) == KERF_OK);
  const auto act = act_scales(b);
  TempDir dir("qdq_opbyop" + std::to_string(act_bits) + "w" + std::to_string(weight_bits));
  OpAgreement r;
  std::map<std::string, int64_t> count, diff;
  for (size_t i = 0; i < b.ops().size(); ++i) {
    if (!on_npu(t.placement, i)) continue;
    const artifact::OpRecord& op = b.ops()[i];
    INFO(op.name);
    targets::Placement one = t.placement;
    for (size_t j = 0; j < one.ops.size(); ++j) one.ops[j].unit[1] = j == i ? "npu" : "cpu";
    QdqExportOptions opt;
    opt.tokens = T;
    QdqExportSummary sum;
    const std::string path = dir.file("op" + std::to_string(i) + ".onnx");
    Status st = export_qdq_onnx(b, one, opt, path, &sum);
    INFO(st.to_string());
    REQUIRE(st.ok());
    auto g = import_onnx(path);
    INFO(g.status().to_string());
    REQUIRE(g.ok());
    auto ref = distill::ReferenceExecutor::create(*g, distill::ReferenceOptions{1});
    REQUIRE(ref.ok());
    std::vector<uint32_t> ins;  // the graph inputs: the op's value inputs in order, once each
    for (uint32_t in : op.inputs)
      if (!(in & fmt::kRefTensorBit) && std::find(ins.begin(), ins.end(), in) == ins.end()) ins.push_back(in);
    REQUIRE(ins.size() == sum.inputs.size());
    std::map<std::string, ir::Tensor> feeds;
    for (size_t k = 0; k < ins.size(); ++k) {
      const int64_t w = b.values()[ins[k]].width;
      const std::vector<int16_t> c = sess.codes(ins[k], T, w);
      std::vector<float> f(c.size());
      for (size_t e = 0; e < c.size(); ++e) f[e] = float(c[e]) * act[ins[k]].first;
      feeds[sum.inputs[k]] = ir::Tensor::from_f32({T, w}, f);
    }
    auto out = ref->run(feeds);
    INFO(out.status().to_string());
    REQUIRE(out.ok());
    const uint32_t y = op.outputs[0];
    const std::vector<float> q = (*out)[0].to_f32();
    const std::vector<int16_t> npu = sess.codes(y, T, b.values()[y].width);
    REQUIRE(q.size() == npu.size());
    const std::string kind = fmt::op_name(op.op);
    int64_t& md = r.max_diff[kind];
    for (size_t e = 0; e < q.size(); ++e) {
      const int64_t d = std::llabs(std::llrint(double(q[e]) / double(act[y].first)) - int64_t(npu[e]));
      md = std::max(md, d);
      diff[kind] += d != 0;
    }
    count[kind] += int64_t(q.size());
    r.codes += int64_t(q.size());
  }
  std::string line;
  for (const auto& [kind, n] : count) {
    r.differ[kind] = double(diff[kind]) / double(n);
    r.differing += diff[kind];
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s%s %.2f %% differ (max %lld)", line.empty() ? "" : ", ", kind.c_str(),
                  100.0 * r.differ[kind], static_cast<long long>(r.max_diff[kind]));
    line += buf;
  }
  std::printf("[qdq] A%dW%d op by op (each npu op alone on the NPU's own input codes, %lld output codes): %.3f %% of "
              "codes differ; %s\n",
              act_bits, weight_bits, static_cast<long long>(r.codes), 100.0 * double(r.differing) / double(r.codes), line.c_str());
  return r;
}

}  // namespace

TEST_CASE("qdq: op by op, on the NPU's own input codes, the QDQ model reproduces the NPU's output codes", "[qdq]") {
  // A8: every op within one code; only near-ties round differently (measured 0.41 % of the codes;
  // GatedFFN 3.4 %: its three internal roundings; Linear 0.34 %; the others <= 0.03 %).
  const OpAgreement a8 = op_by_op(8);
  for (const auto& [kind, d] : a8.max_diff) {
    INFO(kind);
    CHECK(d <= 1);
    CHECK(a8.differ.at(kind) < 0.05);
  }
  CHECK(double(a8.differing) / double(a8.codes) < 0.01);
  // A16 (1/32767 of a range per code): the NPU's fixed-point internals show through -- the SiLU table
  // (513 entries, linear interpolation) in GatedFFN (measured: 41 % of its codes differ, max 5) and
  // the integer softmax in Attention (7.4 %, max 2); the other ops stay within one code (<= 0.1 %).
  const OpAgreement a16 = op_by_op(16);
  for (const auto& [kind, d] : a16.max_diff) {
    INFO(kind);
    CHECK(d <= (kind == "GatedFFN" ? 16 : kind == "Attention" ? 4 : 1));
  }
}

// Tolerances from the measurements (docs/qdq-export.md), with margins of ~5-10x. The float QDQ model and
// the fixed-point NPU round at the same points but from slightly different pre-rounding values
// (fixed-point multipliers, CORDIC RoPE, table SiLU, integer softmax), so wherever the pre-rounding
// values differ by more than a code the two roundings are independent.
TEST_CASE("qdq: re-imported and run by the reference executor, the A16 QDQ model agrees with the integer NPU backend",
          "[qdq]") {
  const Agreement a = agreement(16);
  // A16: a code is 1/32767 of a value's range, finer than the differences above, so the QDQ model's
  // roundings are independent of the NPU's: it is as far from the NPU as float is, within ~2x
  // (measured: KL 8.6e-7 vs 4.9e-7; top-1 1.0; worst row 0.16 % of its max |logit|).
  CHECK(a.kl < 1e-5);
  CHECK(a.kl_max < 2e-4);
  CHECK(a.top1 >= 0.99);
  CHECK(a.rel_max < 0.01);
  CHECK(a.kl < 4 * a.kl_cpu);
}

TEST_CASE("qdq: end to end at A8, the QDQ model is as close to the NPU as the model's 8-bit rounding allows", "[qdq]") {
  const Agreement a = agreement(8);
  // A8: op by op the two agree within one code (above), but a one-code flip is 1/127 of a range and
  // ~60 requantizations in a row amplify the rare flips: over 5 layers the roundings decorrelate, and
  // the QDQ model ends as far from the NPU as the float path is (measured: KL 0.044 vs 0.039, top-1
  // 0.908 vs 0.906) -- stories260K itself is that sensitive to A8 (its profile uses A16).
  CHECK(a.kl < 2 * a.kl_cpu);
  CHECK(a.kl < 0.1);
  CHECK(a.top1 >= 0.85);
}

TEST_CASE("qdq: int4 weights export as int8 codes in [-7, 7] and agree op by op", "[qdq]") {
  const NpuTarget& t = snapdragon(16, 4);
  TempDir dir("qdq_w4");
  QdqExportOptions opt;
  opt.tokens = 32;
  const std::string path = dir.file("w4.onnx");
  QdqExportSummary sum;
  REQUIRE(export_qdq_onnx(t.builder, t.placement, opt, path, &sum).ok());
  onnx::ModelProto m;
  REQUIRE(m.ParseFromString(kerf::test::read_bytes(path)));
  size_t n = 0;
  for (const auto& i : m.graph().initializer()) {
    if (i.data_type() != onnx::TensorProto::INT8) continue;
    ++n;
    int lo = 0, hi = 0;
    for (char c : i.raw_data()) lo = std::min(lo, int(int8_t(c))), hi = std::max(hi, int(int8_t(c)));
    INFO(i.name());
    CHECK(lo >= -7);
    CHECK(hi <= 7);
    CHECK(hi - lo >= 12);
  }
  CHECK(n == sum.weight_matrices);
  const OpAgreement a = op_by_op(16, 4);
  for (const auto& [kind, d] : a.max_diff) {
    INFO(kind);
    CHECK(d <= (kind == "GatedFFN" ? 16 : kind == "Attention" ? 4 : 1));
  }
}

TEST_CASE("qdq: bad inputs are named errors and leave no file", "[qdq]") {
  const NpuTarget& t = snapdragon();
  TempDir dir("qdq_errors");
  QdqExportOptions opt;
  opt.tokens = 16;
  auto fails = [&](const artifact::ArtifactBuilder& b, const targets::Placement& p, const QdqExportOptions& o,
                   ErrorCode code, const std::string& needle, const std::string& path_ = "") {
    const std::string path = path_.empty() ? dir.file("bad.onnx") : path_;
    Status st = export_qdq_onnx(b, p, o, path);
    INFO(st.to_string());
    REQUIRE_FALSE(st.ok());
    CHECK(st.code() == code);
    CHECK_THAT(st.message(), Catch::Contains(needle));
    CHECK_FALSE(std::filesystem::exists(path));
  };
  {  // a short T works (the causal prefill of the first 16 tokens)
    QdqExportSummary s;
    REQUIRE(export_qdq_onnx(t.builder, t.placement, opt, dir.file("t16.onnx"), &s).ok());
    CHECK(s.tokens == 16);
  }
  QdqExportOptions zero = opt;
  zero.tokens = 0;
  fails(t.builder, t.placement, zero, ErrorCode::kInvalidArgument, "tokens must be in [1, 8191]");
  zero.tokens = 8192;
  fails(t.builder, t.placement, zero, ErrorCode::kInvalidArgument, "got 8192");
  targets::Placement cpu = t.placement;
  for (auto& o : cpu.ops) o.unit[1] = "cpu";
  fails(t.builder, cpu, opt, ErrorCode::kInvalidArgument, "no op is placed on the npu for prefill");
  targets::Placement shorter = t.placement;
  shorter.ops.pop_back();
  fails(t.builder, shorter, opt, ErrorCode::kInvalidArgument, "the placement has 62 ops, the artifact 63");
  {
    artifact::ArtifactBuilder b = t.builder;
    b.add_meta_bytes(fmt::meta::kNpuActScales, {1, 2, 3});
    fails(b, t.placement, opt, ErrorCode::kBadInput, "npu.act_scales' must be bytes, 8 per value");
  }
  {  // a value with a zero scale is named
    artifact::ArtifactBuilder b = t.builder;
    std::string s = b.meta().at(fmt::meta::kNpuActScales).str;
    const uint32_t v = b.ops()[1].outputs[0];
    std::memset(&s[8 * v], 0, 4);
    b.add_meta_bytes(fmt::meta::kNpuActScales, std::vector<uint8_t>(s.begin(), s.end()));
    fails(b, t.placement, opt, ErrorCode::kBadInput, "value #" + std::to_string(v) + " '" + b.values()[v].name + "' has scale 0");
  }
  {  // an npu Linear whose weight is not per-channel qsym: tensor and op named
    artifact::ArtifactBuilder b = t.builder;
    size_t li = 0;
    while (b.ops()[li].op != fmt::OpCode::kLinear || !on_npu(t.placement, li)) ++li;
    artifact::TensorRecord& w = b.tensors()[b.ops()[li].inputs[1] & ~fmt::kRefTensorBit];
    const int64_t rows = w.shape[0], cols = w.shape[1];
    w = artifact::TensorRecord::from_f32(w.name, {rows, cols}, std::vector<float>(size_t(rows * cols), 0.5f));
    fails(b, t.placement, opt, ErrorCode::kBadInput, "Linear '" + b.ops()[li].name + "' (op #" + std::to_string(li) +
                                                         "): weight '" + w.name + "' is f32");
  }
  {  // the Embedding on the npu has no decomposition (the npu backend refuses it too)
    targets::Placement p = t.placement;
    p.ops[0].unit[1] = "npu";
    fails(t.builder, p, opt, ErrorCode::kUnsupported, "token lookups run on the cpu");
  }
  fails(t.builder, t.placement, opt, ErrorCode::kIo, "no_such_dir", dir.file("no_such_dir/x.onnx"));
}

// ------------------------------------------------------------------ QuantizeLinear / DequantizeLinear

namespace {

onnx::ModelProto qdq_model(int64_t opset) {
  onnx::ModelProto m;
  m.set_ir_version(opset >= 21 ? 10 : 8);
  auto* os = m.add_opset_import();
  os->set_domain("");
  os->set_version(opset);
  m.mutable_graph()->set_name("qdq");
  return m;
}
void io(onnx::GraphProto* g, bool input, const std::string& name, std::vector<int64_t> dims) {
  auto* vi = input ? g->add_input() : g->add_output();
  vi->set_name(name);
  vi->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) vi->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(d);
}
void init(onnx::GraphProto* g, const std::string& name, int32_t type, std::vector<int64_t> dims, const std::string& raw) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(type);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(raw);
}
template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
onnx::NodeProto* node(onnx::GraphProto* g, const std::string& op, std::vector<std::string> in, std::string out) {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(out + "_node");
  for (auto& i : in) n->add_input(i);
  n->add_output(out);
  return n;
}
void int_attr(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
std::vector<float> run_model(const onnx::ModelProto& m, const std::string& file, const std::vector<float>& x,
                             std::vector<int64_t> shape) {
  std::string bytes;
  REQUIRE(m.SerializeToString(&bytes));
  kerf::test::write_bytes(file, bytes);
  auto g = import_onnx(file);
  INFO(g.status().to_string());
  REQUIRE(g.ok());
  auto ref = distill::ReferenceExecutor::create(*g, distill::ReferenceOptions{1});
  INFO(ref.status().to_string());
  REQUIRE(ref.ok());
  auto out = ref->run({{"x", ir::Tensor::from_f32(shape, x)}});
  INFO(out.status().to_string());
  REQUIRE(out.ok());
  return (*out)[0].to_f32();
}

}  // namespace

TEST_CASE("qdq: QuantizeLinear rounds half to even and saturates to its type; DequantizeLinear per tensor and per axis",
          "[qdq]") {
  TempDir dir("qdq_ops");
  const std::vector<float> x = {2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1e9f, -1e9f, 1.49f};  // scale 1
  SECTION("opset 21, INT16 by output_dtype, no zero point") {
    onnx::ModelProto m = qdq_model(21);
    auto* g = m.mutable_graph();
    io(g, true, "x", {8});
    io(g, false, "y", {8});
    init(g, "s", onnx::TensorProto::FLOAT, {}, raw(std::vector<float>{1.0f}));
    int_attr(node(g, "QuantizeLinear", {"x", "s"}, "q"), "output_dtype", onnx::TensorProto::INT16);
    node(g, "DequantizeLinear", {"q", "s"}, "y");
    CHECK(run_model(m, dir.file("a.onnx"), x, {8}) == std::vector<float>{2, 4, -2, -0, 0, 32767, -32768, 1});
  }
  SECTION("opset 13, an int8 zero point sets the type (and shifts the codes)") {
    onnx::ModelProto m = qdq_model(13);
    auto* g = m.mutable_graph();
    io(g, true, "x", {8});
    io(g, false, "y", {8});
    init(g, "s", onnx::TensorProto::FLOAT, {}, raw(std::vector<float>{0.5f}));
    init(g, "z", onnx::TensorProto::INT8, {}, raw(std::vector<int8_t>{3}));
    node(g, "QuantizeLinear", {"x", "s", "z"}, "q");
    node(g, "DequantizeLinear", {"q", "s", "z"}, "y");
    // x / 0.5 = 5, 7, -5, -1, 1, 2e9, -2e9, 2.98 -> +3 -> saturate [-128, 127] -> -3 -> * 0.5
    CHECK(run_model(m, dir.file("b.onnx"), x, {8}) == std::vector<float>{2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 62.0f, -65.5f, 1.5f});
  }
  SECTION("no zero point and no output_dtype: uint8") {
    onnx::ModelProto m = qdq_model(17);
    auto* g = m.mutable_graph();
    io(g, true, "x", {8});
    io(g, false, "y", {8});
    init(g, "s", onnx::TensorProto::FLOAT, {}, raw(std::vector<float>{1.0f}));
    node(g, "QuantizeLinear", {"x", "s"}, "q");
    node(g, "DequantizeLinear", {"q", "s"}, "y");
    CHECK(run_model(m, dir.file("c.onnx"), x, {8}) == std::vector<float>{2, 4, 0, 0, 0, 255, 0, 1});
  }
  SECTION("per-axis DequantizeLinear of int8 codes (axis 1), then MatMul; opset-21 ReduceMean with an axes input") {
    onnx::ModelProto m = qdq_model(21);
    auto* g = m.mutable_graph();
    io(g, true, "x", {1, 2});
    io(g, false, "y", {1, 1});
    init(g, "w", onnx::TensorProto::INT8, {2, 3}, raw(std::vector<int8_t>{1, -2, 127, -127, 4, 5}));
    init(g, "ws", onnx::TensorProto::FLOAT, {3}, raw(std::vector<float>{0.5f, 0.25f, 2.0f}));
    init(g, "axes", onnx::TensorProto::INT64, {1}, raw(std::vector<int64_t>{-1}));
    int_attr(node(g, "DequantizeLinear", {"w", "ws"}, "wd"), "axis", 1);
    node(g, "MatMul", {"x", "wd"}, "xw");  // [1, 3]
    int_attr(node(g, "ReduceMean", {"xw", "axes"}, "y"), "keepdims", 1);
    // W = [[0.5, -0.5, 254], [-63.5, 1, 10]]; x = [1, 2]: x W = [-126.5, 1.5, 274]; mean 49.666..
    const auto y = run_model(m, dir.file("d.onnx"), {1.0f, 2.0f}, {1, 2});
    REQUIRE(y.size() == 1);
    CHECK(y[0] == Approx(149.0 / 3.0).epsilon(1e-6));
  }
}
