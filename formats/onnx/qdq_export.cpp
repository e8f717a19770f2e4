#include "formats/onnx/qdq_export.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "kerf/format.h"

namespace kerf {
namespace {

using artifact::OpRecord;
using fmt::AttrKey;
using fmt::OpCode;

constexpr int64_t kOpset = 21;      // QuantizeLinear / DequantizeLinear with INT16 and output_dtype
constexpr int64_t kIrVersion = 10;  // the IR version of opset 21 (ONNX 1.16)
constexpr float kMaskNeg = -1e9f;   // causal mask: exp(-1e9 - max) is 0 in float32
constexpr float kProbScale = 1.0f / 32768.0f;  // the NPU's Q15 softmax probabilities
constexpr int64_t kMaxTokens = 8191;           // npu::kMaxKeys

struct ActScale {
  float scale = 0;
  uint32_t bits = 0;
};

std::string op_label(const OpRecord& op, size_t i) {
  const char* n = fmt::op_name(op.op);
  return std::string(n ? n : "op") + " '" + op.name + "' (op #" + std::to_string(i) + ")";
}

const fmt::OpAttr* find_attr(const OpRecord& op, AttrKey k) {
  for (const fmt::OpAttr& a : op.attrs)
    if (a.key == uint32_t(k)) return &a;
  return nullptr;
}

/// Names as written: letters, digits and . _ / : - kept, anything else '_'.
std::string sanitize(const std::string& s) {
  std::string o = s;
  for (char& c : o) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                    c == '/' || c == ':' || c == '-';
    if (!ok) c = '_';
  }
  return o;
}

uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

/// Builds the GraphProto: unique tensor and node names, initializers, nodes.
class GraphWriter {
 public:
  explicit GraphWriter(onnx::GraphProto* g) : g_(g) {}

  /// A tensor name not used yet: `base`, else base.1, base.2, ...
  std::string unique(const std::string& base) {
    std::string n = base;
    for (int k = 1; names_.count(n); ++k) n = base + "." + std::to_string(k);
    names_.insert(n);
    return n;
  }

  std::string init_f32(const std::string& base, const std::vector<int64_t>& shape, const std::vector<float>& v) {
    return init_raw(base, onnx::TensorProto::FLOAT, shape, v.data(), v.size() * sizeof(float));
  }
  std::string init_i8(const std::string& base, const std::vector<int64_t>& shape, const std::vector<int8_t>& v) {
    return init_raw(base, onnx::TensorProto::INT8, shape, v.data(), v.size());
  }
  /// An int64 constant (shapes, axes, slice bounds), shared by content.
  std::string ints(const std::vector<int64_t>& v) {
    auto it = ints_.find(v);
    if (it != ints_.end()) return it->second;
    std::string base = "const.i64";
    for (int64_t x : v) base += "_" + (x < 0 ? "m" + std::to_string(-x) : std::to_string(x));
    const std::string n =
        init_raw(base, onnx::TensorProto::INT64, {int64_t(v.size())}, v.data(), v.size() * sizeof(int64_t));
    ints_[v] = n;
    return n;
  }
  std::string scalar(const std::string& base, float v) { return init_f32(base, {}, {v}); }

  /// Adds a node; its outputs must be names from unique(). Returns the node.
  onnx::NodeProto* node(const std::string& op, const std::string& name_base, const std::vector<std::string>& in,
                        const std::vector<std::string>& out) {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(op);
    std::string nm = name_base + "/" + op;
    for (int k = 1; node_names_.count(nm); ++k) nm = name_base + "/" + op + "." + std::to_string(k);
    node_names_.insert(nm);
    n->set_name(nm);
    for (const auto& s : in) n->add_input(s);
    for (const auto& s : out) n->add_output(s);
    return n;
  }
  /// A one-output node writing a fresh tensor `base` (uniquified); returns the tensor's name.
  std::string op1(const std::string& op, const std::string& base, const std::vector<std::string>& in,
                  onnx::NodeProto** out_node = nullptr) {
    const std::string out = unique(base);
    onnx::NodeProto* n = node(op, base, in, {out});
    if (out_node) *out_node = n;
    return out;
  }

  static void attr_int(onnx::NodeProto* n, const char* name, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr_ints(onnx::NodeProto* n, const char* name, const std::vector<int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }

  void add_io(bool input, const std::string& name, int64_t T, int64_t width) {
    onnx::ValueInfoProto* vi = input ? g_->add_input() : g_->add_output();
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    tt->mutable_shape()->add_dim()->set_dim_value(T);
    tt->mutable_shape()->add_dim()->set_dim_value(width);
  }

  size_t node_count() const { return size_t(g_->node_size()); }

 private:
  std::string init_raw(const std::string& base, int32_t dtype, const std::vector<int64_t>& shape, const void* data,
                       size_t bytes) {
    const std::string n = unique(base);
    onnx::TensorProto* t = g_->add_initializer();
    t->set_name(n);
    t->set_data_type(dtype);
    for (int64_t d : shape) t->add_dims(d);
    t->set_raw_data(std::string(static_cast<const char*>(data), bytes));  // little-endian hosts only (x86-64, aarch64)
    return n;
  }

  onnx::GraphProto* g_;
  std::set<std::string> names_, node_names_;
  std::map<std::vector<int64_t>, std::string> ints_;
};

class Exporter {
 public:
  Exporter(const artifact::ArtifactBuilder& b, const targets::Placement& p, const QdqExportOptions& opt,
           onnx::GraphProto* g, QdqExportSummary* s)
      : b_(b), p_(p), opt_(opt), w_(g), s_(s) {}

  Status run();

 private:
  int64_t width(uint32_t v) const { return int64_t(b_.values()[v].width); }
  std::string value_label(uint32_t v) const {
    return "value #" + std::to_string(v) + " '" + b_.values()[v].name + "'";
  }
  Status read_metadata();
  Status check_act(uint32_t v);
  /// QuantizeLinear -> DequantizeLinear of `x` with a scalar scale; the dequantized tensor is `deq`
  /// (a name from unique()). Returns it.
  std::string qdq(const std::string& x, const std::string& base, float scale, int bits, const std::string& deq);
  /// The op's float result `y` of value v quantized with v's static scale; deq_[v] becomes the
  /// dequantized value (named after v).
  void emit_value(uint32_t v, const std::string& y);
  Result<std::string> weight(size_t i, uint32_t ref, const char* role, int64_t rows, int64_t cols);
  Result<std::string> norm_weight(size_t i, uint32_t ref, int64_t D);
  Result<int64_t> attr_int(size_t i, AttrKey k);
  Result<double> attr_float(size_t i, AttrKey k);
  Status rmsnorm(size_t i);
  Status linear(size_t i);
  Status rotary(size_t i);
  Status attention(size_t i);
  Status gated_ffn(size_t i);
  Status add(size_t i);

  const artifact::ArtifactBuilder& b_;
  const targets::Placement& p_;
  const QdqExportOptions& opt_;
  GraphWriter w_;
  QdqExportSummary* s_;
  int64_t T_ = 0;
  std::vector<ActScale> act_;
  std::vector<float> op_scales_;  // 4 per op (may be empty)
  std::vector<std::string> vbase_;  // per value: its (unique) base name
  std::vector<std::string> deq_;    // per value: the dequantized tensor consumers read ("" = not yet)
  std::vector<std::string> obase_;  // per op: base for its intermediate names
  std::map<uint32_t, std::string> weights_;  // tensor index -> dequantized W^T [K, N]
  std::map<uint32_t, std::string> norms_;    // tensor index -> gamma [D]
  std::map<std::string, std::pair<std::string, std::string>> rope_;  // (dh, theta, interleaved) -> cos, sin
  std::map<std::string, std::string> masks_;
  std::set<int> bits_seen_;
};

Status Exporter::read_metadata() {
  const auto& meta = b_.meta();
  const size_t nv = b_.values().size(), no = b_.ops().size();
  auto it = meta.find(fmt::meta::kNpuActScales);
  if (it == meta.end())
    return BadInput(std::string("metadata '") + fmt::meta::kNpuActScales +
                    "' is missing: the npu partition needs the static activation scales of calibration "
                    "(targets::calibrate_npu)");
  if (it->second.type != fmt::MetaType::kBytes || it->second.str.size() != 8 * nv)
    return BadInput(std::string("metadata '") + fmt::meta::kNpuActScales + "' must be bytes, 8 per value (" +
                    std::to_string(8 * nv) + "); it has " + std::to_string(it->second.str.size()));
  act_.resize(nv);
  for (size_t v = 0; v < nv; ++v) {
    std::memcpy(&act_[v].scale, it->second.str.data() + 8 * v, 4);
    std::memcpy(&act_[v].bits, it->second.str.data() + 8 * v + 4, 4);
  }
  auto os = meta.find(fmt::meta::kNpuOpScales);
  if (os != meta.end()) {
    if (os->second.type != fmt::MetaType::kBytes || os->second.str.size() != 16 * no)
      return BadInput(std::string("metadata '") + fmt::meta::kNpuOpScales + "' must be bytes, 16 per op (" +
                      std::to_string(16 * no) + "); it has " + std::to_string(os->second.str.size()));
    op_scales_.resize(4 * no);
    std::memcpy(op_scales_.data(), os->second.str.data(), 16 * no);
  }
  return Status::Ok();
}

Status Exporter::check_act(uint32_t v) {
  const ActScale& a = act_[v];
  if (a.bits != 8 && a.bits != 16)
    return BadInput(std::string("metadata '") + fmt::meta::kNpuActScales + "': " + value_label(v) +
                    " is used on the npu but has bits " + std::to_string(a.bits) + " (needs 8 or 16)");
  if (!std::isfinite(a.scale) || !(a.scale > 0.f)) {
    std::ostringstream os;
    os << "metadata '" << fmt::meta::kNpuActScales << "': " << value_label(v) << " has scale " << a.scale
       << " (needs a finite scale > 0)";
    return BadInput(os.str());
  }
  bits_seen_.insert(int(a.bits));
  return Status::Ok();
}

std::string Exporter::qdq(const std::string& x, const std::string& base, float scale, int bits, const std::string& deq) {
  const std::string sc = w_.scalar(base + "/scale", scale);
  const std::string q = w_.unique(base + "/q");
  onnx::NodeProto* qn = w_.node("QuantizeLinear", base, {x, sc}, {q});
  GraphWriter::attr_int(qn, "output_dtype", bits == 8 ? onnx::TensorProto::INT8 : onnx::TensorProto::INT16);
  w_.node("DequantizeLinear", base, {q, sc}, {deq});
  s_->qdq_pairs += 1;
  return deq;
}

void Exporter::emit_value(uint32_t v, const std::string& y) {
  deq_[v] = qdq(y, vbase_[v], act_[v].scale, int(act_[v].bits), vbase_[v]);
  s_->act_values += 1;
}

Result<int64_t> Exporter::attr_int(size_t i, AttrKey k) {
  const fmt::OpAttr* a = find_attr(b_.ops()[i], k);
  if (!a || a->kind != 0) return BadInput(op_label(b_.ops()[i], i) + ": integer attribute '" + fmt::attr_name(k) + "' is missing");
  return a->i;
}
Result<double> Exporter::attr_float(size_t i, AttrKey k) {
  const fmt::OpAttr* a = find_attr(b_.ops()[i], k);
  if (!a || a->kind != 1) return BadInput(op_label(b_.ops()[i], i) + ": float attribute '" + fmt::attr_name(k) + "' is missing");
  return a->f;
}

Result<std::string> Exporter::weight(size_t i, uint32_t ref, const char* role, int64_t rows, int64_t cols) {
  const OpRecord& op = b_.ops()[i];
  const uint32_t ti = ref & ~fmt::kRefTensorBit;
  if (!(ref & fmt::kRefTensorBit) || ti >= b_.tensors().size())
    return BadInput(op_label(op, i) + ": " + role + "weight is not a tensor of the artifact");
  auto done = weights_.find(ti);
  const artifact::TensorRecord& t = b_.tensors()[ti];
  const std::string where = op_label(op, i) + ": " + role + "weight '" + t.name + "'";
  if (t.shape.size() != 2 || t.shape[0] != rows || t.shape[1] != cols)
    return BadInput(where + " should be [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  if (done != weights_.end()) return done->second;
  const uint32_t bits = fmt::qflags_bits(t.flags);
  if (t.dtype != fmt::DType::kQSym || (bits != 4 && bits != 8) || fmt::qflags_scale(t.flags) != fmt::ScaleFormat::kF16 ||
      fmt::qflags_layout(t.flags) != fmt::Layout::kPlain || int64_t(t.group_size) != cols) {
    char desc[96];
    fmt::describe_qtype(t.dtype, t.flags, t.group_size, desc, sizeof desc);
    return BadInput(where + " is " + desc +
                    "; the npu partition needs qsym4 / qsym8 codes with one f16 scale per output channel (group_size "
                    "== cols) in the plain layout (targets::apply_placement)");
  }
  const fmt::QLayout L = fmt::qlayout(t.dtype, uint64_t(rows), uint64_t(cols), t.group_size, t.flags);
  if (t.payload.size() != L.bytes)
    return BadInput(where + ": payload has " + std::to_string(t.payload.size()) + " bytes, qsym" + std::to_string(bits) +
                    " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] needs " + std::to_string(L.bytes));
  const int64_t N = rows, K = cols;
  std::vector<int8_t> wt(static_cast<size_t>(N * K));  // W^T [K, N]
  std::vector<float> sc(static_cast<size_t>(N));
  const int off = 1 << (bits - 1);
  for (int64_t r = 0; r < N; ++r) {
    const uint8_t* row = t.payload.data() + uint64_t(r) * L.row_bytes;
    for (int64_t c = 0; c < K; ++c) {
      const int u = bits == 8 ? int(row[c]) : int((row[c >> 1] >> ((c & 1) * 4)) & 15u);
      wt[size_t(c * N + r)] = int8_t(u - off);
    }
    const float s = fmt::f16_to_f32(rd16(t.payload.data() + L.scale + 2 * uint64_t(r)));
    if (!std::isfinite(s) || s < 0.f)
      return BadInput(where + ": the scale of output channel " + std::to_string(r) +
                      " is negative or not finite (the npu needs finite scales >= 0)");
    sc[size_t(r)] = s;
  }
  const std::string base = sanitize(t.name);
  const std::string codes = w_.init_i8(base, {K, N}, wt);
  const std::string scales = w_.init_f32(base + "/scale", {N}, sc);
  const std::string deq = w_.unique(base + "/dq");
  onnx::NodeProto* dq = w_.node("DequantizeLinear", base, {codes, scales}, {deq});
  GraphWriter::attr_int(dq, "axis", 1);  // per output channel: the columns of W^T
  weights_[ti] = deq;
  s_->weight_matrices += 1;
  return deq;
}

Result<std::string> Exporter::norm_weight(size_t i, uint32_t ref, int64_t D) {
  const OpRecord& op = b_.ops()[i];
  const uint32_t ti = ref & ~fmt::kRefTensorBit;
  if (!(ref & fmt::kRefTensorBit) || ti >= b_.tensors().size())
    return BadInput(op_label(op, i) + ": weight is not a tensor of the artifact");
  auto done = norms_.find(ti);
  if (done != norms_.end()) return done->second;
  const artifact::TensorRecord& t = b_.tensors()[ti];
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  const std::string where = op_label(op, i) + ": weight '" + t.name + "'";
  if (n != D) return BadInput(where + " has " + std::to_string(n) + " elements, the norm's width is " + std::to_string(D));
  std::vector<float> g(static_cast<size_t>(D));
  const size_t es = fmt::dtype_elem_size(t.dtype);
  if (t.dtype != fmt::DType::kF32 && t.dtype != fmt::DType::kF16 && t.dtype != fmt::DType::kBF16)
    return Unsupported(where + " is " + fmt::dtype_name(t.dtype) + "; the export takes f32 / f16 / bf16 norm weights");
  if (t.payload.size() != size_t(D) * es)
    return BadInput(where + ": payload has " + std::to_string(t.payload.size()) + " bytes, expected " +
                    std::to_string(size_t(D) * es));
  for (int64_t d = 0; d < D; ++d) {
    const uint8_t* p = t.payload.data() + size_t(d) * es;
    float v;
    if (t.dtype == fmt::DType::kF32) std::memcpy(&v, p, 4);
    else if (t.dtype == fmt::DType::kF16) v = fmt::f16_to_f32(rd16(p));
    else v = fmt::bf16_to_f32(rd16(p));
    if (!std::isfinite(v)) return BadInput(where + ": element " + std::to_string(d) + " is not finite");
    g[size_t(d)] = v;
  }
  const std::string name = w_.init_f32(sanitize(t.name), {D}, g);
  norms_[ti] = name;
  return name;
}

Status Exporter::rmsnorm(size_t i) {
  const OpRecord& op = b_.ops()[i];
  const uint32_t x = op.inputs[0], y = op.outputs[0];
  const int64_t D = width(y);
  if (width(x) != D) return BadInput(op_label(op, i) + ": input width " + std::to_string(width(x)) + " != output width " + std::to_string(D));
  KERF_ASSIGN_OR_RETURN(const double eps, attr_float(i, AttrKey::kEps));
  KERF_ASSIGN_OR_RETURN(const std::string gamma, norm_weight(i, op.inputs[1], D));
  const std::string& base = obase_[i];
  const std::string xd = deq_[x];
  const std::string sq = w_.op1("Mul", base + "/x2", {xd, xd});
  onnx::NodeProto* rm = nullptr;
  const std::string ms = w_.op1("ReduceMean", base + "/mean", {sq, w_.ints({-1})}, &rm);
  GraphWriter::attr_int(rm, "keepdims", 1);
  const std::string ae = w_.op1("Add", base + "/mean_eps", {ms, w_.scalar(base + "/eps", float(eps))});
  const std::string rt = w_.op1("Sqrt", base + "/rms", {ae});
  const std::string nx = w_.op1("Div", base + "/normed", {xd, rt});
  emit_value(y, w_.op1("Mul", vbase_[y] + "/f", {nx, gamma}));
  return Status::Ok();
}

Status Exporter::linear(size_t i) {
  const OpRecord& op = b_.ops()[i];
  const uint32_t x = op.inputs[0], y = op.outputs[0];
  KERF_ASSIGN_OR_RETURN(const std::string wd, weight(i, op.inputs[1], "", width(y), width(x)));
  emit_value(y, w_.op1("MatMul", vbase_[y] + "/f", {deq_[x], wd}));
  return Status::Ok();
}

Status Exporter::rotary(size_t i) {
  const OpRecord& op = b_.ops()[i];
  const uint32_t x = op.inputs[0], y = op.outputs[0];
  KERF_ASSIGN_OR_RETURN(const int64_t dh, attr_int(i, AttrKey::kHeadDim));
  KERF_ASSIGN_OR_RETURN(const double theta, attr_float(i, AttrKey::kTheta));
  KERF_ASSIGN_OR_RETURN(const int64_t inter, attr_int(i, AttrKey::kInterleaved));
  const int64_t W = width(x);
  if (width(y) != W || dh <= 0 || dh % 2 != 0 || W % dh != 0)
    return BadInput(op_label(op, i) + ": head_dim " + std::to_string(dh) + " must be even and divide the width " +
                    std::to_string(W) + " (input and output)");
  if (!(theta > 0) || !std::isfinite(theta)) return BadInput(op_label(op, i) + ": theta must be finite and > 0");
  const int64_t H = W / dh, half = dh / 2;
  const bool il = inter != 0;
  const int64_t axis = il ? 3 : 2;
  const std::vector<int64_t> tshape = il ? std::vector<int64_t>{T_, 1, half, 1} : std::vector<int64_t>{T_, 1, 1, half};
  std::ostringstream key;
  key.precision(17);
  key << dh << "/" << theta << "/" << il;
  auto it = rope_.find(key.str());
  if (it == rope_.end()) {
    // Positions 0..T-1, pair i: angle = p * theta^(-2i / Dh), in double (the NPU's CORDIC phases are
    // exact to 2^-30), rounded to float32 once.
    std::vector<float> c(static_cast<size_t>(T_ * half)), s(static_cast<size_t>(T_ * half));
    for (int64_t p = 0; p < T_; ++p)
      for (int64_t k = 0; k < half; ++k) {
        const double inv = std::pow(theta, -(2.0 * double(k)) / double(dh));
        const double a = double(p) * inv;
        c[size_t(p * half + k)] = float(std::cos(a));
        s[size_t(p * half + k)] = float(std::sin(a));
      }
    const std::string b = "rope.dh" + std::to_string(dh) + (il ? ".interleaved" : ".halves");
    it = rope_.emplace(key.str(), std::make_pair(w_.init_f32(b + ".cos", tshape, c), w_.init_f32(b + ".sin", tshape, s))).first;
  }
  const std::string &C = it->second.first, &S = it->second.second;
  const std::string& base = obase_[i];
  const std::vector<int64_t> shape4 = il ? std::vector<int64_t>{T_, H, half, 2} : std::vector<int64_t>{T_, H, 2, half};
  const std::string xr = w_.op1("Reshape", base + "/pairs", {deq_[x], w_.ints(shape4)});
  const std::string ax = w_.ints({axis});
  const std::string a = w_.op1("Slice", base + "/a", {xr, w_.ints({0}), w_.ints({1}), ax});
  const std::string bb = w_.op1("Slice", base + "/b", {xr, w_.ints({1}), w_.ints({2}), ax});
  const std::string ac = w_.op1("Mul", base + "/a_cos", {a, C});
  const std::string bs = w_.op1("Mul", base + "/b_sin", {bb, S});
  const std::string as = w_.op1("Mul", base + "/a_sin", {a, S});
  const std::string bc = w_.op1("Mul", base + "/b_cos", {bb, C});
  const std::string a2 = w_.op1("Sub", base + "/a_rot", {ac, bs});
  const std::string b2 = w_.op1("Add", base + "/b_rot", {as, bc});
  onnx::NodeProto* cat = nullptr;
  const std::string r4 = w_.op1("Concat", base + "/rotated", {a2, b2}, &cat);
  GraphWriter::attr_int(cat, "axis", axis);
  emit_value(y, w_.op1("Reshape", vbase_[y] + "/f", {r4, w_.ints({T_, W})}));
  return Status::Ok();
}

Status Exporter::attention(size_t i) {
  const OpRecord& op = b_.ops()[i];
  if (op.inputs.size() != 3) return BadInput(op_label(op, i) + ": needs inputs q, k, v");
  const uint32_t q = op.inputs[0], k = op.inputs[1], v = op.inputs[2], y = op.outputs[0];
  KERF_ASSIGN_OR_RETURN(const int64_t H, attr_int(i, AttrKey::kNHeads));
  KERF_ASSIGN_OR_RETURN(const int64_t G, attr_int(i, AttrKey::kNKvHeads));
  KERF_ASSIGN_OR_RETURN(const int64_t dh, attr_int(i, AttrKey::kHeadDim));
  KERF_ASSIGN_OR_RETURN(const double scale, attr_float(i, AttrKey::kScale));
  KERF_ASSIGN_OR_RETURN(const int64_t causal, attr_int(i, AttrKey::kCausal));
  if (H <= 0 || G <= 0 || dh <= 0 || H % G != 0 || width(q) != H * dh || width(k) != G * dh || width(v) != G * dh ||
      width(y) != H * dh)
    return BadInput(op_label(op, i) + ": widths q " + std::to_string(width(q)) + ", k " + std::to_string(width(k)) +
                    ", v " + std::to_string(width(v)) + ", out " + std::to_string(width(y)) + " do not match n_heads " +
                    std::to_string(H) + ", n_kv_heads " + std::to_string(G) + ", head_dim " + std::to_string(dh));
  const int64_t rep = H / G;
  const std::string& base = obase_[i];
  onnx::NodeProto* n = nullptr;
  // q [T, H*Dh] -> [H, T, Dh]
  const std::string q3 = w_.op1("Reshape", base + "/q_heads", {deq_[q], w_.ints({T_, H, dh})});
  const std::string qh = w_.op1("Transpose", base + "/q_hTd", {q3}, &n);
  GraphWriter::attr_ints(n, "perm", {1, 0, 2});
  // k [T, G*Dh] -> [G, Dh, T]; v -> [G, T, Dh]
  const std::string k3 = w_.op1("Reshape", base + "/k_heads", {deq_[k], w_.ints({T_, G, dh})});
  std::string kt = w_.op1("Transpose", base + "/k_gdT", {k3}, &n);
  GraphWriter::attr_ints(n, "perm", {1, 2, 0});
  const std::string v3 = w_.op1("Reshape", base + "/v_heads", {deq_[v], w_.ints({T_, G, dh})});
  std::string vh = w_.op1("Transpose", base + "/v_gTd", {v3}, &n);
  GraphWriter::attr_ints(n, "perm", {1, 0, 2});
  if (rep > 1) {  // query head h reads KV head h / rep: repeat each KV head rep times, in place
    const std::string k4 = w_.op1("Reshape", base + "/k_g1dT", {kt, w_.ints({G, 1, dh, T_})});
    const std::string ke = w_.op1("Expand", base + "/k_grdT", {k4, w_.ints({G, rep, dh, T_})});
    kt = w_.op1("Reshape", base + "/k_hdT", {ke, w_.ints({H, dh, T_})});
    const std::string v4 = w_.op1("Reshape", base + "/v_g1Td", {vh, w_.ints({G, 1, T_, dh})});
    const std::string ve = w_.op1("Expand", base + "/v_grTd", {v4, w_.ints({G, rep, T_, dh})});
    vh = w_.op1("Reshape", base + "/v_hTd", {ve, w_.ints({H, T_, dh})});
  }
  const std::string sc = w_.op1("MatMul", base + "/scores", {qh, kt});  // [H, T, T]
  std::string logits = w_.op1("Mul", base + "/scaled", {sc, w_.scalar(base + "/scale", float(scale))});
  if (causal) {
    auto it = masks_.find("causal");
    if (it == masks_.end()) {
      std::vector<float> m(size_t(T_ * T_), 0.f);
      for (int64_t r = 0; r < T_; ++r)
        for (int64_t c = r + 1; c < T_; ++c) m[size_t(r * T_ + c)] = kMaskNeg;
      it = masks_.emplace("causal", w_.init_f32("causal_mask", {T_, T_}, m)).first;
    }
    logits = w_.op1("Add", base + "/masked", {logits, it->second});
  }
  const std::string pr = w_.op1("Softmax", base + "/probs", {logits}, &n);
  GraphWriter::attr_int(n, "axis", -1);
  // The NPU's probabilities are Q15 codes in [0, 32767]: INT16 with scale 2^-15.
  const std::string pd = qdq(pr, base + "/probs", kProbScale, 16, w_.unique(base + "/probs/dq"));
  s_->internal_pairs += 1;
  const std::string o = w_.op1("MatMul", base + "/context", {pd, vh});  // [H, T, Dh]
  const std::string ot = w_.op1("Transpose", base + "/context_Thd", {o}, &n);
  GraphWriter::attr_ints(n, "perm", {1, 0, 2});
  emit_value(y, w_.op1("Reshape", vbase_[y] + "/f", {ot, w_.ints({T_, H * dh})}));
  return Status::Ok();
}

Status Exporter::gated_ffn(size_t i) {
  const OpRecord& op = b_.ops()[i];
  const uint32_t x = op.inputs[0], y = op.outputs[0];
  KERF_ASSIGN_OR_RETURN(const int64_t act, attr_int(i, AttrKey::kActivation));
  if (act != 1) return Unsupported(op_label(op, i) + ": activation " + std::to_string(act) + " (the export decomposes silu = 1 only)");
  if (op.inputs.size() != 4) return BadInput(op_label(op, i) + ": needs inputs x, w1, w3, w2");
  const int64_t D = width(x);
  if (width(y) != D) return BadInput(op_label(op, i) + ": output width differs from the input's");
  const uint32_t w1ref = op.inputs[1];
  const uint32_t ti = w1ref & ~fmt::kRefTensorBit;
  if (!(w1ref & fmt::kRefTensorBit) || ti >= b_.tensors().size() || b_.tensors()[ti].shape.size() != 2)
    return BadInput(op_label(op, i) + ": w1 is not a matrix of the artifact");
  const int64_t F = b_.tensors()[ti].shape[0];
  KERF_ASSIGN_OR_RETURN(const std::string w1, weight(i, op.inputs[1], "w1 ", F, D));
  KERF_ASSIGN_OR_RETURN(const std::string w3, weight(i, op.inputs[2], "w3 ", F, D));
  KERF_ASSIGN_OR_RETURN(const std::string w2, weight(i, op.inputs[3], "w2 ", D, F));
  if (op_scales_.empty())
    return BadInput(op_label(op, i) + ": metadata '" + fmt::meta::kNpuOpScales +
                    "' is missing (the static scales of the GatedFFN internals, targets::calibrate_npu)");
  const float* rec = op_scales_.data() + 4 * i;
  const char* nm[3] = {"h1 = w1 x", "h3 = w3 x", "silu(h1) * h3"};
  for (int k = 0; k < 3; ++k)
    if (!std::isfinite(rec[k]) || !(rec[k] > 0.f)) {
      std::ostringstream os;
      os << "metadata '" << fmt::meta::kNpuOpScales << "': " << op_label(op, i) << ": scale of " << nm[k] << " is "
         << rec[k] << " (needs a finite scale > 0)";
      return BadInput(os.str());
    }
  if (rec[3] != 8.f && rec[3] != 16.f) {
    std::ostringstream os;
    os << "metadata '" << fmt::meta::kNpuOpScales << "': " << op_label(op, i) << ": bits of the internals are " << rec[3]
       << " (needs 8 or 16)";
    return BadInput(os.str());
  }
  const int hb = int(rec[3]);
  bits_seen_.insert(hb);
  const std::string& base = obase_[i];
  const std::string xd = deq_[x];
  const std::string h1 = qdq(w_.op1("MatMul", base + "/h1", {xd, w1}), base + "/h1", rec[0], hb, w_.unique(base + "/h1/dq"));
  const std::string h3 = qdq(w_.op1("MatMul", base + "/h3", {xd, w3}), base + "/h3", rec[1], hb, w_.unique(base + "/h3/dq"));
  const std::string sg = w_.op1("Sigmoid", base + "/sigmoid_h1", {h1});
  const std::string si = w_.op1("Mul", base + "/silu_h1", {h1, sg});
  const std::string g = qdq(w_.op1("Mul", base + "/gate", {si, h3}), base + "/gate", rec[2], hb, w_.unique(base + "/gate/dq"));
  s_->internal_pairs += 3;
  emit_value(y, w_.op1("MatMul", vbase_[y] + "/f", {g, w2}));
  return Status::Ok();
}

Status Exporter::add(size_t i) {
  const OpRecord& op = b_.ops()[i];
  const uint32_t a = op.inputs[0], c = op.inputs[1], y = op.outputs[0];
  if (width(a) != width(y) || width(c) != width(y)) return BadInput(op_label(op, i) + ": inputs and output differ in width");
  emit_value(y, w_.op1("Add", vbase_[y] + "/f", {deq_[a], deq_[c]}));
  return Status::Ok();
}

Status Exporter::run() {
  const auto& ops = b_.ops();
  const size_t nv = b_.values().size();
  T_ = opt_.tokens;
  if (T_ < 1 || T_ > kMaxTokens)
    return InvalidArgument("QDQ export: tokens must be in [1, " + std::to_string(kMaxTokens) + "] (the keys one NPU softmax "
                           "sums, docs/npu-arithmetic.md section 7), got " + std::to_string(T_));
  if (p_.ops.size() != ops.size())
    return InvalidArgument("QDQ export: the placement has " + std::to_string(p_.ops.size()) + " ops, the artifact " +
                           std::to_string(ops.size()));
  std::vector<bool> on(ops.size(), false);
  for (size_t i = 0; i < ops.size(); ++i) on[i] = p_.ops[i].unit[1] == "npu";
  if (std::find(on.begin(), on.end(), true) == on.end())
    return InvalidArgument("QDQ export: no op is placed on the npu for prefill (nothing to export)");
  KERF_RETURN_IF_ERROR(read_metadata());

  // Producers, consumers, and the values that cross the partition's boundary.
  std::vector<int64_t> producer(nv, -1);
  std::vector<bool> read_outside(nv, false);
  for (size_t i = 0; i < ops.size(); ++i) {
    const OpRecord& op = ops[i];
    if (op.outputs.size() != 1 || op.outputs[0] >= nv)
      return BadInput(op_label(op, i) + ": needs exactly one output value in range");
    if (producer[op.outputs[0]] >= 0)
      return BadInput(value_label(op.outputs[0]) + " is written by two ops (#" + std::to_string(producer[op.outputs[0]]) +
                      " and #" + std::to_string(i) + ")");
    producer[op.outputs[0]] = int64_t(i);
    for (uint32_t ref : op.inputs)
      if (!(ref & fmt::kRefTensorBit)) {
        if (ref >= nv) return BadInput(op_label(op, i) + ": input value #" + std::to_string(ref) + " out of range");
        if (!on[i]) read_outside[ref] = true;
      }
  }
  if (b_.output_value() < nv) read_outside[b_.output_value()] = true;

  vbase_.resize(nv);
  deq_.assign(nv, "");
  for (uint32_t v = 0; v < nv; ++v)
    vbase_[v] = w_.unique(b_.values()[v].name.empty() ? "value" + std::to_string(v) : sanitize(b_.values()[v].name));
  obase_.resize(ops.size());
  for (size_t i = 0; i < ops.size(); ++i)
    if (on[i]) obase_[i] = ops[i].name.empty() ? "op" + std::to_string(i) : sanitize(ops[i].name);

  s_->tokens = T_;
  s_->opset = kOpset;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (!on[i]) continue;
    const OpRecord& op = ops[i];
    const char* kinds = fmt::op_input_kinds(op.op);
    if (!kinds || std::strlen(kinds) != op.inputs.size())
      return BadInput(op_label(op, i) + ": unknown op or wrong number of inputs");
    if (op.op == OpCode::kEmbedding)
      return Unsupported(op_label(op, i) + " is placed on the npu for prefill, but token lookups run on the cpu (the npu "
                         "backend refuses it too); place the Embedding on the cpu");
    // Values entering the partition: the NPU quantizes them at upload.
    for (uint32_t ref : op.inputs) {
      if (ref & fmt::kRefTensorBit) continue;
      if (ref == b_.input_value())
        return BadInput(op_label(op, i) + " reads the token ids, which only an Embedding can");
      KERF_RETURN_IF_ERROR(check_act(ref));
      if (!deq_[ref].empty()) continue;
      if (producer[ref] >= int64_t(i))
        return BadInput(op_label(op, i) + " reads " + value_label(ref) + " before op #" + std::to_string(producer[ref]) + " writes it");
      w_.add_io(true, vbase_[ref], T_, width(ref));
      s_->inputs.push_back(vbase_[ref]);
      s_->input_widths.push_back(width(ref));
      deq_[ref] = qdq(vbase_[ref], vbase_[ref], act_[ref].scale, int(act_[ref].bits), w_.unique(vbase_[ref] + "/dq"));
      s_->act_values += 1;
    }
    KERF_RETURN_IF_ERROR(check_act(op.outputs[0]));
    Status st;
    switch (op.op) {
      case OpCode::kRMSNorm: st = rmsnorm(i); break;
      case OpCode::kLinear: st = linear(i); break;
      case OpCode::kRotary: st = rotary(i); break;
      case OpCode::kAttention: st = attention(i); break;
      case OpCode::kGatedFFN: st = gated_ffn(i); break;
      case OpCode::kAdd: st = add(i); break;
      default: st = Unsupported(op_label(op, i) + ": no QDQ decomposition for this op");
    }
    KERF_RETURN_IF_ERROR(st);
    s_->npu_ops += 1;
  }
  // Outputs: values leaving the partition, then each Attention's K and V (the KV-cache rows).
  std::set<std::string> outs;
  auto add_out = [&](uint32_t v) {
    if (!outs.insert(deq_[v]).second) return;
    w_.add_io(false, deq_[v], T_, width(v));
    s_->outputs.push_back(deq_[v]);
    s_->output_widths.push_back(width(v));
  };
  for (uint32_t v = 0; v < nv; ++v)
    if (producer[v] >= 0 && on[size_t(producer[v])] && read_outside[v]) add_out(v);
  for (size_t i = 0; i < ops.size(); ++i)
    if (on[i] && ops[i].op == OpCode::kAttention) {
      add_out(ops[i].inputs[1]);
      add_out(ops[i].inputs[2]);
    }
  if (s_->outputs.empty()) return InvalidArgument("QDQ export: the npu partition has no output");
  s_->nodes = w_.node_count();
  s_->activation_bits = bits_seen_.size() == 1 ? *bits_seen_.begin() : 0;
  return Status::Ok();
}

std::string meta_string(const artifact::ArtifactBuilder& b, const char* key) {
  auto it = b.meta().find(key);
  return it != b.meta().end() && it->second.type == fmt::MetaType::kString ? it->second.str : std::string();
}

}  // namespace

Result<std::string> qdq_onnx_bytes(const artifact::ArtifactBuilder& b, const targets::Placement& p,
                                   const QdqExportOptions& opt, QdqExportSummary* summary) {
  QdqExportSummary local;
  QdqExportSummary* s = summary ? summary : &local;
  *s = QdqExportSummary{};
  try {
    onnx::ModelProto m;
    m.set_ir_version(kIrVersion);
    auto* os = m.add_opset_import();
    os->set_domain("");
    os->set_version(kOpset);
    m.set_producer_name(opt.producer);
    m.set_producer_version(opt.producer_version);
    const std::string target = meta_string(b, fmt::meta::kTarget);
    onnx::GraphProto* g = m.mutable_graph();
    g->set_name(!opt.graph_name.empty() ? opt.graph_name : (target.empty() ? "" : target + " ") + "npu partition");
    Exporter ex(b, p, opt, g, s);
    KERF_RETURN_IF_ERROR(ex.run());
    g->set_doc_string(
        "kerf: the npu partition (prefill ops) of one target as a QDQ model: static per-tensor symmetric activation "
        "scales (zero point 0) from calibration, per-channel symmetric int weights; a prefill of " +
        std::to_string(s->tokens) + " tokens at positions 0.." + std::to_string(s->tokens - 1) +
        " from an empty KV cache. docs/qdq-export.md");
    auto prop = [&](const std::string& k, const std::string& v) {
      auto* e = m.add_metadata_props();
      e->set_key(k);
      e->set_value(v);
    };
    if (!target.empty()) prop("kerf.target", target);
    const std::string src = meta_string(b, "source.file");
    if (!src.empty()) prop("kerf.source", src);
    prop("kerf.tokens", std::to_string(s->tokens));
    prop("kerf.activation_bits", s->activation_bits ? std::to_string(s->activation_bits) : "mixed");
    const size_t size = m.ByteSizeLong();
    if (size > size_t(std::numeric_limits<int32_t>::max()))
      return ResourceLimit("QDQ export: the model is " + std::to_string(size) +
                           " bytes, over protobuf's 2 GiB limit for one ONNX file (external data is not written yet)");
    std::string bytes;
    if (!m.SerializeToString(&bytes)) return Internal("QDQ export: protobuf serialization failed");
    s->bytes = bytes.size();
    return bytes;
  } catch (const std::exception& e) {
    return Internal(std::string("QDQ export: ") + e.what());
  }
}

Status export_qdq_onnx(const artifact::ArtifactBuilder& b, const targets::Placement& p, const QdqExportOptions& opt,
                       const std::string& path, QdqExportSummary* summary) {
  KERF_ASSIGN_OR_RETURN(const std::string bytes, qdq_onnx_bytes(b, p, opt, summary));
  const std::string err = artifact::write_file_atomic(path, bytes.data(), bytes.size());
  if (!err.empty()) return IoError(err);
  return Status::Ok();
}

Status export_qdq_onnx(const artifact::ArtifactBuilder& b, const targets::Placement& p, const QdqExportOptions& opt,
                       const std::string& path) {
  return export_qdq_onnx(b, p, opt, path, nullptr);
}

}  // namespace kerf
