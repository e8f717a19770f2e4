#include "compiler/pipeline/emit.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace kerf::pipeline {

namespace {
using fmt::AttrKey;
using fmt::OpCode;
}  // namespace

Result<artifact::ArtifactBuilder> build_artifact(const ir::Graph& g, const quant::QuantizedModel& q,
                                                 const EmitOptions& opt) {
  artifact::ArtifactBuilder b;
  if (g.inputs.size() != 1 || g.outputs.empty())
    return Unsupported("the lifted graph must have one input (token ids) and logits as its first output; it has " +
                       std::to_string(g.inputs.size()) + " inputs");
  std::map<std::string, uint32_t> values, tensors;
  auto width_of = [&](const std::string& v) -> Result<uint32_t> {
    auto it = g.values.find(v);
    if (it == g.values.end() || !it->second.rank_known || it->second.shape.empty() ||
        !it->second.shape.back().is_static())
      return BadInput("value '" + v + "' has no static last dimension (run infer-shapes)");
    return static_cast<uint32_t>(it->second.shape.back().value);
  };
  const uint32_t input_id = b.add_value({g.inputs[0], 1});
  values[g.inputs[0]] = input_id;

  auto tensor_id = [&](const std::string& name, const std::string& node) -> Result<uint32_t> {
    auto it = tensors.find(name);
    if (it != tensors.end()) return it->second;
    artifact::TensorRecord rec;
    rec.name = name;
    auto qt = q.tensors.find(name);
    if (qt != q.tensors.end()) {
      rec.dtype = qt->second.dtype;
      rec.shape = {qt->second.rows, qt->second.cols};
      rec.group_size = fmt::dtype_is_quantized(rec.dtype) ? static_cast<uint32_t>(qt->second.group_size) : 0;
      rec.flags = qt->second.flags;
      rec.payload = qt->second.payload;
    } else {
      const ir::Tensor* t = g.constant(name);
      if (!t) return BadInput("node '" + node + "': weight '" + name + "' is not a constant");
      if (!ir::dtype_is_float(t->dtype)) return BadInput("node '" + node + "': weight '" + name + "' is not a float tensor");
      rec = artifact::TensorRecord::from_f32(name, t->shape, t->to_f32());
    }
    uint32_t id = b.add_tensor(std::move(rec));
    tensors[name] = id;
    return id;
  };
  auto value_id = [&](const std::string& v, const std::string& node) -> Result<uint32_t> {
    auto it = values.find(v);
    if (it == values.end())
      return Unsupported("node '" + node + "': input '" + v + "' is not an activation computed earlier");
    return it->second;
  };

  int64_t n_layers = 0, dim = 0;
  for (const auto& n : g.nodes) {
    artifact::OpRecord op;
    op.name = n.name;
    std::vector<std::pair<std::string, bool>> ins;  // (name, is_tensor)
    if (n.is("kerf", "Embedding")) {
      op.op = OpCode::kEmbedding;
      ins = {{n.inputs[0], false}, {n.inputs[1], true}};
    } else if (n.is("kerf", "RMSNorm")) {
      op.op = OpCode::kRMSNorm;
      ins = {{n.inputs[0], false}, {n.inputs[1], true}};
      op.attrs.push_back(artifact::attr_float(AttrKey::kEps, n.attr_float("eps", 1e-5)));
    } else if (n.is("kerf", "Linear")) {
      op.op = OpCode::kLinear;
      ins = {{n.inputs[0], false}, {n.inputs[1], true}};
    } else if (n.is("kerf", "Rotary")) {
      op.op = OpCode::kRotary;
      ins = {{n.inputs[0], false}};
      op.attrs.push_back(artifact::attr_int(AttrKey::kHeadDim, n.attr_int("head_dim", 0)));
      op.attrs.push_back(artifact::attr_float(AttrKey::kTheta, n.attr_float("theta", 10000.0)));
      op.attrs.push_back(artifact::attr_int(AttrKey::kInterleaved, n.attr_int("interleaved", 1)));
    } else if (n.is("kerf", "Attention")) {
      op.op = OpCode::kAttention;
      ins = {{n.inputs[0], false}, {n.inputs[1], false}, {n.inputs[2], false}};
      op.attrs.push_back(artifact::attr_int(AttrKey::kNHeads, n.attr_int("n_heads", 0)));
      op.attrs.push_back(artifact::attr_int(AttrKey::kNKvHeads, n.attr_int("n_kv_heads", 0)));
      op.attrs.push_back(artifact::attr_int(AttrKey::kHeadDim, n.attr_int("head_dim", 0)));
      const int64_t hd = n.attr_int("head_dim", 0);
      if (hd <= 0) return BadInput("node '" + n.name + "': Attention without a positive head_dim");
      op.attrs.push_back(artifact::attr_float(AttrKey::kScale, n.attr_float("scale", 1.0 / std::sqrt(static_cast<double>(hd)))));
      op.attrs.push_back(artifact::attr_int(AttrKey::kCausal, n.attr_int("causal", 1)));
      ++n_layers;
    } else if (n.is("kerf", "GatedFFN")) {
      op.op = OpCode::kGatedFFN;
      if (n.attr_string("activation", "silu") != "silu")
        return Unsupported("node '" + n.name + "': GatedFFN activation '" + n.attr_string("activation", "") + "'");
      ins = {{n.inputs[0], false}, {n.inputs[1], true}, {n.inputs[2], true}, {n.inputs[3], true}};
      op.attrs.push_back(artifact::attr_int(AttrKey::kActivation, 1));
    } else if (n.is("", "Add")) {
      op.op = OpCode::kAdd;
      ins = {{n.inputs[0], false}, {n.inputs[1], false}};
    } else {
      return Unsupported("node '" + n.name + "' (" + n.qualified_op() +
                         ") has no runtime op: only lifted graphs (kerf ops + Add) can be emitted");
    }
    for (const auto& [name, is_tensor] : ins) {
      if (is_tensor) {
        KERF_ASSIGN_OR_RETURN(uint32_t id, tensor_id(name, n.name));
        op.inputs.push_back(artifact::tensor_ref(id));
      } else {
        KERF_ASSIGN_OR_RETURN(uint32_t id, value_id(name, n.name));
        op.inputs.push_back(id);
      }
    }
    KERF_ASSIGN_OR_RETURN(uint32_t w, width_of(n.outputs[0]));
    if (n.is("kerf", "Embedding")) dim = w;
    const uint32_t out = b.add_value({n.outputs[0], w});
    values[n.outputs[0]] = out;
    op.outputs = {out};
    b.add_op(std::move(op));
  }
  auto out_it = values.find(g.outputs[0]);
  if (out_it == values.end()) return BadInput("graph output '" + g.outputs[0] + "' is not computed by any op");
  b.set_io(input_id, out_it->second);

  KERF_ASSIGN_OR_RETURN(uint32_t vocab, width_of(g.outputs[0]));
  b.add_meta_string(fmt::meta::kArch, "llama");
  b.add_meta_int(fmt::meta::kVocab, vocab);
  b.add_meta_int(fmt::meta::kDim, dim);
  b.add_meta_int(fmt::meta::kLayers, n_layers);
  auto ms = g.metadata.find("model.max_seq_len");
  b.add_meta_int(fmt::meta::kMaxSeq, ms != g.metadata.end() ? std::stoll(ms->second) : 2048);
  b.add_meta_string(fmt::meta::kTokType, "llama2c");
  b.add_meta_bytes(fmt::meta::kTokModel, opt.tokenizer);
  b.add_meta_int(fmt::meta::kTokBos, 1);
  b.add_meta_int(fmt::meta::kTokEos, 2);
  b.add_meta_string(fmt::meta::kProducer, "kerf");
  b.add_meta_string(fmt::meta::kProducerVersion, opt.producer_version);
  b.add_meta_string(fmt::meta::kRecipe, opt.recipe);
  b.add_meta_string(fmt::meta::kTarget, opt.target);
  b.add_meta_string("source.file", opt.source_name);
  b.add_meta_float(fmt::meta::kBpw, q.bpw);
  if (opt.bpw_budget > 0) b.add_meta_float(kMetaBpwBudget, opt.bpw_budget);
  for (const auto& p : q.plan) {
    std::string desc;
    char buf[96];
    if (!p.precision.empty()) {
      desc = p.precision + " " + p.method + " " + p.role;
      if (fmt::dtype_is_generic_quant(p.dtype) && fmt::qflags_layout(p.flags) == fmt::Layout::kTiled)
        desc += " layout=t" + std::to_string(fmt::qflags_tile_rows(p.flags));
      std::snprintf(buf, sizeof buf, " rel.err=%.4f", p.rel_rms_error);
      desc += buf;
      if (p.output_error >= 0) {
        std::snprintf(buf, sizeof buf, " out.err=%.5f", p.output_error);
        desc += buf;
      }
      if (p.sensitivity >= 0) {
        std::snprintf(buf, sizeof buf, " sens.kl=%.5f", p.sensitivity);
        desc += buf;
      }
    } else {
      desc = std::string(fmt::describe_qtype(p.dtype, p.flags, uint32_t(p.group_size), buf, sizeof buf)) + " " + p.method +
             " " + p.role;
    }
    b.add_meta_string("quant.tensor." + p.name, desc);
  }
  for (const auto& [k, v] : opt.extra_meta) b.add_meta_string(k, v);
  std::string err = b.validate();
  if (!err.empty()) return Internal("artifact does not validate: " + err);
  return b;
}

}  // namespace kerf::pipeline
