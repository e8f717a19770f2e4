#include "compiler/targets/lower.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "kerf/format.h"
#include "kerf/kerf.h"
#include "kerf/npu_calibrate.h"
#include "quant/qspec.h"

namespace kerf::targets {
namespace {

using fmt::OpCode;

int64_t attr_i(const artifact::OpRecord& op, fmt::AttrKey k) {
  for (const fmt::OpAttr& a : op.attrs)
    if (a.key == uint32_t(k)) return a.i;
  return 0;
}

fmt::Backend backend_of(const std::string& unit) {
  return unit == "gpu" ? fmt::Backend::kGpu : unit == "npu" ? fmt::Backend::kNpu : fmt::Backend::kCpu;
}

/// An artifact opened by runtime-lite from the builder's bytes (closed at scope exit).
struct OpenArtifact {
  std::vector<uint8_t> bytes;
  void* aligned = nullptr;
  kerf_model* m = nullptr;
  ~OpenArtifact() {
    if (m) kerf_model_close(m);
    std::free(aligned);
  }
  Status open(const artifact::ArtifactBuilder& b) {
    std::string err;
    bytes = b.serialize(&err);
    if (bytes.empty()) return Internal("artifact: " + err);
    if (posix_memalign(&aligned, 64, bytes.size()) != 0) return ResourceLimit("out of memory");
    std::memcpy(aligned, bytes.data(), bytes.size());
    char msg[512] = {0};
    if (kerf_model_open_memory(aligned, bytes.size(), KERF_OPEN_NO_VERIFY_DATA, "<target lowering>", &m, msg, sizeof msg) !=
        KERF_OK)
      return Internal(std::string("runtime-lite rejected the artifact being lowered: ") + msg);
    return Status::Ok();
  }
};

}  // namespace

Program program_of(const artifact::ArtifactBuilder& b) {
  Program p;
  const auto ms = b.meta().find(fmt::meta::kMaxSeq);
  if (ms != b.meta().end()) p.max_seq_len = ms->second.i;
  for (const artifact::ValueRecord& v : b.values()) p.widths.push_back(v.width);
  p.output = int(b.output_value());
  for (const artifact::OpRecord& r : b.ops()) {
    ProgramOp op;
    op.name = r.name;
    op.op = fmt::op_name(r.op);
    for (uint32_t ref : r.inputs) {
      if (ref & fmt::kRefTensorBit) {
        const artifact::TensorRecord& t = b.tensors()[ref & ~fmt::kRefTensorBit];
        if (r.op == OpCode::kRMSNorm) continue;  // a norm weight is a vector, no matrix dtype
        op.weight_dtypes.push_back(fmt::dtype_name(t.dtype));
        const int64_t rows = t.shape[0], cols = t.shape.size() > 1 ? t.shape[1] : 1;
        if (r.op == OpCode::kEmbedding) {
          op.weight_bytes += double(t.payload.size()) / double(rows);  // one row per token
          continue;
        }
        op.weight_bytes += double(t.payload.size());
        op.weight_params += rows * cols;
        op.weight_rows += rows;
        op.macs_per_token += double(rows) * double(cols);
      } else if (ref != b.input_value()) {
        op.inputs.push_back(int(ref));
      }
    }
    op.output = int(r.outputs.at(0));
    if (r.op == OpCode::kAttention) {
      op.n_heads = attr_i(r, fmt::AttrKey::kNHeads);
      op.n_kv_heads = attr_i(r, fmt::AttrKey::kNKvHeads);
      op.head_dim = attr_i(r, fmt::AttrKey::kHeadDim);
    }
    p.ops.push_back(std::move(op));
  }
  return p;
}

std::vector<std::string> cpu_only_tensors(const artifact::ArtifactBuilder& b, const Placement& p) {
  std::map<uint32_t, bool> only_cpu;
  for (size_t i = 0; i < b.ops().size(); ++i) {
    const bool cpu = p.ops[i].unit[0] == "cpu" && p.ops[i].unit[1] == "cpu";
    for (uint32_t ref : b.ops()[i].inputs)
      if (ref & fmt::kRefTensorBit) {
        auto it = only_cpu.find(ref & ~fmt::kRefTensorBit);
        if (it == only_cpu.end()) only_cpu[ref & ~fmt::kRefTensorBit] = cpu;
        else it->second = it->second && cpu;
      }
  }
  std::vector<std::string> out;
  for (const auto& [t, cpu] : only_cpu)
    if (cpu) out.push_back(b.tensors()[t].name);
  return out;
}

Result<artifact::TensorRecord> quantize_npu_weight(const std::string& name, const float* w, int64_t rows, int64_t cols,
                                                   int bits) {
  if (bits != 4 && bits != 8) return InvalidArgument(name + ": npu weights are 4 or 8 bits, not " + std::to_string(bits));
  const int qmax = (1 << (bits - 1)) - 1;
  // The codes and per-row scales are chosen here; quant::pack (quant/qspec.h) lays them out as the
  // kQSym payload (one group per row, fp16 scales).
  auto spec = quant::parse_qspec("int" + std::to_string(bits) + "_sym:row");
  if (!spec.ok()) return spec.status();
  quant::Unpacked u;
  u.spec = *spec;
  u.rows = rows;
  u.cols = cols;
  u.codes.resize(size_t(rows * cols));
  u.params.resize(size_t(rows));
  std::vector<int16_t> q(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c) {
      if (!std::isfinite(wr[c]))
        return BadInput(name + ": weight at row " + std::to_string(r) + ", col " + std::to_string(c) + " is not finite");
      amax = std::max(amax, std::fabs(wr[c]));
    }
    float best_s = 0;
    double best_err = INFINITY;
    for (int step = 0; step <= 20; ++step) {
      const float ratio = 1.0f - 0.01f * float(step);
      const float s = fmt::f16_to_f32(fmt::f32_to_f16(amax * ratio / float(qmax)));
      double err = 0;
      for (int64_t c = 0; c < cols; ++c) {
        int v = s > 0 ? int(std::lround(wr[c] / s)) : 0;
        v = std::min(qmax, std::max(-qmax, v));
        q[size_t(c)] = int16_t(v);
        const double d = double(wr[c]) - double(s * float(v));
        err += d * d;
      }
      if (err < best_err) {
        best_err = err;
        best_s = s;
        std::copy(q.begin(), q.end(), u.codes.begin() + r * cols);
      }
      if (amax == 0) break;
    }
    u.params[size_t(r)].scale = best_s;
  }
  KERF_ASSIGN_OR_RETURN(quant::QuantTensor qt, quant::pack(u));
  artifact::TensorRecord t;
  t.name = name;
  t.dtype = qt.dtype;
  t.shape = {rows, cols};
  t.group_size = uint32_t(qt.group_size);
  t.flags = qt.flags;
  t.payload = std::move(qt.payload);
  return t;
}

Status apply_placement(artifact::ArtifactBuilder& b, const Placement& p, const DeviceProfile& profile, const ir::Graph& g) {
  auto& ops = b.ops();
  if (p.ops.size() != ops.size()) return Internal("placement has " + std::to_string(p.ops.size()) + " ops, the program " + std::to_string(ops.size()));
  std::vector<uint8_t> prefill(ops.size());
  bool prefill_differs = false;
  std::string why;
  for (size_t i = 0; i < ops.size(); ++i) {
    ops[i].backend = backend_of(p.ops[i].unit[0]);
    prefill[i] = uint8_t(backend_of(p.ops[i].unit[1]));
    prefill_differs |= p.ops[i].unit[1] != p.ops[i].unit[0];
    why += ops[i].name + ": prefill " + p.ops[i].unit[1] + " (" + p.ops[i].why[1] + "), decode " + p.ops[i].unit[0] + " (" +
           p.ops[i].why[0] + ")\n";
  }
  if (prefill_differs) b.add_meta_bytes(fmt::meta::kPlacementPrefill, prefill);
  b.add_meta_string("placement.why", why);
  b.add_meta_string(fmt::meta::kTargetProfile, profile.yaml);
  // NPU weights: per-channel symmetric ints from the float weights.
  const int bits = profile.npu.weight_bits;
  std::map<uint32_t, std::pair<bool, bool>> users;  // tensor -> (read by an npu op, read by another op)
  for (size_t i = 0; i < ops.size(); ++i) {
    const bool npu = p.ops[i].unit[0] == "npu" || p.ops[i].unit[1] == "npu";
    const bool other = !npu;  // an op on the npu in one phase only reads the npu copy in both
    if (ops[i].op == OpCode::kRMSNorm) continue;  // the npu converts norm weights itself
    for (uint32_t ref : ops[i].inputs)
      if (ref & fmt::kRefTensorBit) {
        auto& u = users[ref & ~fmt::kRefTensorBit];
        u.first |= npu;
        u.second |= other;
      }
  }
  std::map<uint32_t, uint32_t> npu_copy;  // tensor -> the tensor npu ops read
  for (const auto& [ti, u] : users) {
    if (!u.first) continue;
    const std::string name = b.tensors()[ti].name;
    const ir::Tensor* t = g.constant(name);
    if (!t) return Internal("npu lowering: weight '" + name + "' has no float constant in the graph");
    const std::vector<float> w = t->to_f32();
    if (t->shape.size() != 2) return Internal("npu lowering: weight '" + name + "' is not a matrix");
    const std::string qname = u.second ? name + "@npu" + std::to_string(bits) : name;
    KERF_ASSIGN_OR_RETURN(artifact::TensorRecord rec, quantize_npu_weight(qname, w.data(), t->shape[0], t->shape[1], bits));
    if (u.second) {
      npu_copy[ti] = b.add_tensor(std::move(rec));
    } else {
      b.tensors()[ti] = std::move(rec);
      npu_copy[ti] = ti;
    }
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    if (!(p.ops[i].unit[0] == "npu" || p.ops[i].unit[1] == "npu") || ops[i].op == OpCode::kRMSNorm) continue;
    // An op on the npu in one phase only reads the npu copy in both (one weight per op in the
    // format): the other unit runs the per-channel ints, which every cpu / gpu kernel takes.
    for (uint32_t& ref : ops[i].inputs)
      if (ref & fmt::kRefTensorBit) ref = artifact::tensor_ref(npu_copy.at(ref & ~fmt::kRefTensorBit));
  }
  return Status::Ok();
}

Result<std::vector<std::vector<int32_t>>> tokenize_with_artifact(const artifact::ArtifactBuilder& b,
                                                                 const std::vector<std::string>& texts, int64_t max_len,
                                                                 int64_t max_tokens) {
  OpenArtifact a;
  KERF_RETURN_IF_ERROR(a.open(b));
  std::vector<std::vector<int32_t>> out;
  int64_t total = 0;
  for (const std::string& text : texts) {
    if (max_tokens > 0 && total >= max_tokens) break;
    std::vector<int32_t> ids(text.size() + 8);
    int n = 0;
    if (kerf_tokenize(a.m, text.c_str(), 1, ids.data(), int(ids.size()), &n) != KERF_OK)
      return Internal("tokenizing the npu calibration text failed");
    ids.resize(size_t(std::min<int64_t>(n, max_len)));
    if (ids.size() < 2) continue;
    total += int64_t(ids.size());
    out.push_back(std::move(ids));
  }
  return out;
}

Status calibrate_npu(artifact::ArtifactBuilder& b, const DeviceProfile& profile, const std::vector<std::vector<int32_t>>& seqs) {
  if (seqs.empty()) return InvalidArgument("npu calibration: no token sequences");
  // Calibrate on the CPU version of the same program (same weights: the npu's per-channel ints).
  std::vector<fmt::Backend> saved;
  for (auto& op : b.ops()) {
    saved.push_back(op.backend);
    op.backend = fmt::Backend::kCpu;
  }
  const auto meta_prefill = b.meta().find(fmt::meta::kPlacementPrefill);
  std::vector<uint8_t> prefill;
  if (meta_prefill != b.meta().end()) {
    prefill.assign(meta_prefill->second.str.begin(), meta_prefill->second.str.end());
    b.add_meta_bytes(fmt::meta::kPlacementPrefill, std::vector<uint8_t>(prefill.size(), 0));
  }
  OpenArtifact a;
  Status st = a.open(b);
  for (size_t i = 0; i < saved.size(); ++i) b.ops()[i].backend = saved[i];
  if (!prefill.empty()) b.add_meta_bytes(fmt::meta::kPlacementPrefill, prefill);
  KERF_RETURN_IF_ERROR(st);
  std::vector<uint8_t> act, opsc;
  std::string err;
  // 8-bit codes: clip at the 99.99th percentile of |x| (measured on stories260K A8W8: KL 0.022 vs
  // 0.034 with absmax); 16-bit codes have the range to keep every outlier (absmax measured best).
  rt::npu::CalibOptions co;
  co.act_bits = profile.npu.activation_bits;
  co.clip = co.act_bits == 8 ? rt::npu::Clip::kPercentile : rt::npu::Clip::kAbsMax;
  co.percentile = 99.99;
  if (kerf::rt::npu_calibrate_opts(a.m, seqs, co, &act, &opsc, &err) != KERF_OK) return Internal("npu calibration: " + err);
  int64_t tokens = 0;
  for (const auto& q : seqs) tokens += int64_t(q.size());
  b.add_meta_string("npu.calibration", std::string(co.act_bits == 8 ? "percentile 99.99" : "absmax") + " clip, " +
                                           std::to_string(co.act_bits) + "-bit activations, " + std::to_string(seqs.size()) +
                                           " sequences, " + std::to_string(tokens) + " tokens");
  b.add_meta_bytes(fmt::meta::kNpuActScales, std::move(act));
  b.add_meta_bytes(fmt::meta::kNpuOpScales, std::move(opsc));
  return Status::Ok();
}

}  // namespace kerf::targets
