// kerf quant: baseline RTN recipe over a lifted graph (see recipe.h).
#include "quant/recipe.h"

#include <set>

#include "quant/bpw.h"

namespace kerf::quant {
namespace {

bool storable(fmt::DType t) {
  return t == fmt::DType::kQ4Asym || t == fmt::DType::kQ8Sym || t == fmt::DType::kF16 || t == fmt::DType::kF32;
}

Status check_dtype_group(const char* what, fmt::DType t, int g) {
  if (!storable(t))
    return InvalidArgument(std::string("quant options: ") + what + " dtype " + fmt::dtype_name(t) +
                           " is not one of q4_asym, q8_sym, f16, f32");
  if (t == fmt::DType::kQ4Asym && g < 1)
    return InvalidArgument(std::string("quant options: ") + what + " group size " + std::to_string(g) +
                           " must be >= 1 for q4_asym");
  if (t == fmt::DType::kQ8Sym && g < 0)
    return InvalidArgument(std::string("quant options: ") + what + " group size " + std::to_string(g) +
                           " must be >= 1 (or 0 = per row) for q8_sym");
  return Status::Ok();
}

fmt::DType storage_of(ir::DType t) {
  switch (t) {
    case ir::DType::kF16: return fmt::DType::kF16;
    case ir::DType::kBF16: return fmt::DType::kBF16;
    case ir::DType::kI64: return fmt::DType::kI64;
    case ir::DType::kI32: return fmt::DType::kI32;
    default: return fmt::DType::kF32;
  }
}

Result<QuantTensor> store(const std::vector<float>& w, int64_t rows, int64_t cols, fmt::DType t, int g) {
  switch (t) {
    case fmt::DType::kQ4Asym: return quantize_q4_asym_rtn(w.data(), rows, cols, g);
    case fmt::DType::kQ8Sym: return quantize_q8_sym_rtn(w.data(), rows, cols, g);
    default: return store_plain(w.data(), rows, cols, t);
  }
}

}  // namespace

Status validate(const QuantOptions& o) {
  KERF_RETURN_IF_ERROR(check_dtype_group("linear", o.linear_dtype, o.group_size));
  KERF_RETURN_IF_ERROR(check_dtype_group("embedding", o.embedding_dtype, o.embedding_group));
  return Status::Ok();
}

Result<std::vector<WeightUse>> enumerate_weights(const ir::Graph& g) {
  std::vector<WeightUse> uses;
  std::map<std::string, size_t> index;
  auto note = [&](const ir::Node& n, size_t slot, bool is_embedding) -> Status {
    const std::string where = "node '" + n.name + "' (" + n.qualified_op() + ")";
    if (slot >= n.inputs.size() || n.inputs[slot].empty())
      return BadInput(where + ": missing weight input #" + std::to_string(slot));
    const std::string& t = n.inputs[slot];
    const ir::Tensor* c = g.constant(t);
    if (c == nullptr) return BadInput(where + ": weight '" + t + "' is not an initializer");
    if (c->shape.size() != 2)
      return BadInput(where + ": weight '" + t + "' must be a 2-D matrix, has rank " + std::to_string(c->shape.size()));
    if (!ir::dtype_is_float(c->dtype))
      return BadInput(where + ": weight '" + t + "' has non-float dtype " + ir::dtype_name(c->dtype));
    if (c->shape[0] < 1 || c->shape[1] < 1)
      return BadInput(where + ": weight '" + t + "' has an empty shape [" + std::to_string(c->shape[0]) + ", " +
                      std::to_string(c->shape[1]) + "]");
    if (c->data.size() != static_cast<size_t>(c->numel()) * ir::dtype_size(c->dtype))
      return BadInput(where + ": weight '" + t + "' has " + std::to_string(c->data.size()) +
                      " data bytes, shape says " + std::to_string(c->numel() * ir::dtype_size(c->dtype)));
    auto it = index.find(t);
    if (it == index.end()) {
      it = index.emplace(t, uses.size()).first;
      WeightUse u;
      u.tensor = t;
      u.node = n.name;
      u.rows = c->shape[0];
      u.cols = c->shape[1];
      uses.push_back(u);
    }
    (is_embedding ? uses[it->second].embedding : uses[it->second].linear) = true;
    return Status::Ok();
  };
  for (const ir::Node& n : g.nodes) {
    if (n.domain != "kerf") continue;
    if (n.op == "Linear") {
      KERF_RETURN_IF_ERROR(note(n, 1, false));
    } else if (n.op == "Embedding") {
      KERF_RETURN_IF_ERROR(note(n, 1, true));
    } else if (n.op == "GatedFFN") {
      for (size_t s = 1; s <= 3; ++s) KERF_RETURN_IF_ERROR(note(n, s, false));
      const auto& w1 = g.constant(n.inputs[1])->shape;
      const auto& w3 = g.constant(n.inputs[2])->shape;
      const auto& w2 = g.constant(n.inputs[3])->shape;
      if (w1 != w3 || w2[0] != w1[1] || w2[1] != w1[0])
        return BadInput("node '" + n.name + "' (kerf.GatedFFN): shapes of w1 '" + n.inputs[1] + "' [" +
                        std::to_string(w1[0]) + "," + std::to_string(w1[1]) + "], w3 '" + n.inputs[2] + "' [" +
                        std::to_string(w3[0]) + "," + std::to_string(w3[1]) + "], w2 '" + n.inputs[3] + "' [" +
                        std::to_string(w2[0]) + "," + std::to_string(w2[1]) + "] disagree (want [F,D],[F,D],[D,F])");
    }
  }
  return uses;
}

std::vector<TensorPlan> kept_initializers(const ir::Graph& g, const std::vector<WeightUse>& weights) {
  std::set<std::string> listed;
  for (const WeightUse& u : weights) listed.insert(u.tensor);
  std::vector<TensorPlan> kept;
  for (const ir::Node& n : g.nodes)
    for (const std::string& in : n.inputs) {
      if (in.empty() || listed.count(in) || !g.is_constant(in)) continue;
      listed.insert(in);
      TensorPlan k;
      k.name = in;
      k.dtype = storage_of(g.constant(in)->dtype);
      k.method = "none";
      k.role = (n.op == "RMSNorm" || n.op == "LayerNorm") ? "norm" : "other";
      kept.push_back(std::move(k));
    }
  return kept;
}

Result<QuantizedModel> quantize_graph_rtn(const ir::Graph& g, const QuantOptions& opt) {
  KERF_RETURN_IF_ERROR(validate(opt));
  KERF_ASSIGN_OR_RETURN(std::vector<WeightUse> uses, enumerate_weights(g));

  // 2. Decide and quantize each one.
  QuantizedModel m;
  BpwAccount account;
  for (const WeightUse& u : uses) {
    const ir::Tensor& c = *g.constant(u.tensor);
    TensorPlan p;
    p.name = u.tensor;
    p.rows = c.shape[0];
    p.cols = c.shape[1];
    int group = 0;
    p.role = u.role();
    if (u.embedding) {
      p.dtype = opt.embedding_dtype;
      group = opt.embedding_group;
    } else {
      p.dtype = opt.linear_dtype;
      group = opt.group_size;
    }
    p.method = fmt::dtype_is_quantized(p.dtype) ? "rtn" : (p.dtype == fmt::DType::kF16 ? "cast" : "none");
    const std::vector<float> w = c.to_f32();
    auto q = store(w, p.rows, p.cols, p.dtype, group);
    if (!q.ok()) return q.status().with_context("tensor '" + u.tensor + "' (" + p.role + ", node '" + u.node + "')");
    p.group_size = q->group_size;
    auto dq = dequantize(*q);
    if (!dq.ok()) return dq.status().with_context("tensor '" + u.tensor + "'");
    p.rel_rms_error = relative_rms_error(w.data(), dq->data(), static_cast<int64_t>(w.size()));
    KERF_RETURN_IF_ERROR(account.add(u.tensor, *q).with_context("tensor '" + u.tensor + "'"));
    p.bits = stored_bits(*q);
    m.tensors.emplace(u.tensor, std::move(q).value());
    m.plan.push_back(std::move(p));
  }
  m.weight_count = account.weight_count();
  m.weight_bits = account.weight_bits();
  m.bpw = account.bpw();

  m.kept = kept_initializers(g, uses);
  return m;
}

}  // namespace kerf::quant
