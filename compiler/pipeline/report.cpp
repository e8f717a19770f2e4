#include "compiler/pipeline/report.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <vector>

#include "compiler/pipeline/build_info.h"
#include "compiler/pipeline/text.h"
#include "kerf/format.h"
#include "quant/bpw.h"
#include "quant/qspec.h"

namespace kerf::pipeline {

namespace {

std::vector<std::string> split_spaces(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  std::string w;
  while (is >> w) out.push_back(w);
  return out;
}

std::optional<int64_t> to_int(const std::string& s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  for (char c : s)
    if (c < '0' || c > '9') return std::nullopt;
  return std::stoll(s);
}

// RTN form: the stored precision ("qasym4/f16 g32 t4", "q4_asym g32", "f32") as qspec text.
std::optional<std::string> storage_to_qspec(const std::vector<std::string>& words, int64_t cols) {
  if (words.empty()) return std::nullopt;
  std::string base, scales = "f16";
  const std::string& d = words[0];
  const auto slash = d.find('/');
  const std::string kind = d.substr(0, slash);
  if (slash != std::string::npos) scales = d.substr(slash + 1);
  if (kind == "q4_asym") base = "int4_asym";
  else if (kind == "q8_sym") base = "int8_sym";
  else if (kind == "ternary" || kind == "binary") base = kind;
  else if (kind.rfind("qasym", 0) == 0 && to_int(kind.substr(5))) base = "int" + kind.substr(5) + "_asym";
  else if (kind.rfind("qsym", 0) == 0 && to_int(kind.substr(4))) base = "int" + kind.substr(4) + "_sym";
  else if (kind == "f32" || kind == "f16" || kind == "bf16") return kind;
  else return std::nullopt;
  std::string text = base;
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w.size() > 1 && w[0] == 'g') {
      auto g = to_int(w.substr(1));
      if (!g) return std::nullopt;
      text += cols > 0 && *g == cols ? ":row" : ":g" + std::to_string(*g);
    }
  }
  if (scales == "k6") text += ":k6";
  auto q = quant::parse_qspec(text);
  if (!q.ok()) return std::nullopt;
  return quant::to_string(*q);
}

bool is_tiled(const kerf_tensor_info& ti) {
  return fmt::dtype_is_generic_quant(fmt::DType(ti.dtype)) && fmt::qflags_layout(ti.flags) == fmt::Layout::kTiled;
}

// Kernel family and the reason for one op (runtime-lite's executor: runtime-lite/src/executor.cpp).
void place_op(const std::string& op, const std::vector<kerf_tensor_info>& w, const std::string& target, OpPlacement* p) {
  bool tiled = false, quantized = false;
  for (const auto& t : w) {
    tiled = tiled || is_tiled(t);
    quantized = quantized || fmt::dtype_is_quantized(fmt::DType(t.dtype));
  }
  const std::string unit = "cpu of target " + (target.empty() ? std::string("(unknown)") : target) + ": ";
  if (op == "Linear" || op == "GatedFFN") {
    const std::string tail = op == "GatedFFN" ? " + SiLU gate" : "";
    if (tiled) {
      p->kernel = "tiled int8-act GEMV/GEMM" + tail;
      p->reason = unit + "tiled INT weights -> integer SIMD kernels (activations quantized to int8 per 32-column block)";
    } else if (quantized) {
      p->kernel = "row-dequant float GEMV/GEMM" + tail;
      p->reason = unit + "plain-layout quantized weights -> each row dequantized to float, float dot products";
    } else {
      p->kernel = "float GEMV/GEMM" + tail;
      p->reason = unit + "float weights -> float dot products";
    }
  } else if (op == "Embedding") {
    p->kernel = tiled ? "tiled row dequant (gather)" : "row dequant (gather)";
    p->reason = unit + "one table row dequantized per token";
  } else {
    p->kernel = "vectorized float";
    p->reason = unit + "activations only -> float kernels (SIMD-arranged, same bits on every ISA)";
  }
}

nlohmann::ordered_json opt_num(const std::optional<double>& v) { return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr); }
nlohmann::ordered_json opt_str(const std::optional<std::string>& v) { return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr); }

// Logical bits (EVAL.md) of a matrix tensor, or nullopt for non-matrices / unknown storage.
std::optional<int64_t> matrix_bits(const TensorInfo& t) {
  if (t.shape.size() != 2) return std::nullopt;
  auto b = quant::logical_bits(fmt::DType(t.dtype_code), t.shape[0], t.shape[1], t.group_size, t.flags);
  if (!b.ok() || *b <= 0) return std::nullopt;
  return *b;
}

}  // namespace

TensorDetail parse_tensor_detail(const std::string& detail, int64_t cols) {
  TensorDetail d;
  std::vector<std::string> pos;
  for (const std::string& w : split_spaces(detail)) {
    const auto eq = w.find('=');
    if (eq == std::string::npos) {
      pos.push_back(w);
      continue;
    }
    const std::string k = w.substr(0, eq), v = w.substr(eq + 1);
    if (k == "layout" && v.size() > 1 && v[0] == 't') {
      if (auto r = to_int(v.substr(1))) d.tile_rows = static_cast<int>(*r);
    } else if (k == "rel.err") {
      d.rel_err = parse_finite(v);
    } else if (k == "out.err") {
      d.out_err = parse_finite(v);
    } else if (k == "sens.kl") {
      d.sens_kl = parse_finite(v);
    }
  }
  if (pos.size() == 3 && quant::parse_qspec(pos[0]).ok()) {  // calibrated form
    d.precision = pos[0];
    d.method = pos[1];
    d.role = pos[2];
  } else if (pos.size() >= 3) {  // RTN form: storage words, method, role
    d.method = pos[pos.size() - 2];
    d.role = pos.back();
    std::vector<std::string> storage(pos.begin(), pos.end() - 2);
    d.precision = storage_to_qspec(storage, cols);
    for (const std::string& w : storage)
      if (w.size() > 1 && w[0] == 't')
        if (auto r = to_int(w.substr(1))) d.tile_rows = static_cast<int>(*r);
  }
  return d;
}

std::optional<int64_t> layer_index(const std::string& name) {
  for (size_t at = name.find("layers."); at != std::string::npos; at = name.find("layers.", at + 1)) {
    if (at > 0 && name[at - 1] != '.' && name[at - 1] != '/' && name[at - 1] != '_') continue;
    size_t e = at + 7;
    while (e < name.size() && name[e] >= '0' && name[e] <= '9') ++e;
    if (e == at + 7 || (e < name.size() && name[e] != '.')) continue;
    if (auto v = to_int(name.substr(at + 7, e - at - 7))) return v;
  }
  return std::nullopt;
}

void collect_artifact_structure(const kerf_model* m, EvalReport* rep) {
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < rep->tensors.size(); ++i) by_name[rep->tensors[i].name] = i;
  const int nt = kerf_model_tensor_count(m);
  std::vector<kerf_tensor_info> infos(static_cast<size_t>(std::max(nt, 0)));
  for (int i = 0; i < nt; ++i) {
    kerf_tensor_info& ti = infos[static_cast<size_t>(i)];
    if (kerf_model_tensor_info(m, i, &ti) != KERF_OK) {
      ti = kerf_tensor_info{};
      continue;
    }
    auto it = by_name.find(ti.name);
    if (it == by_name.end()) continue;
    TensorInfo& t = rep->tensors[it->second];
    t.dtype_code = ti.dtype;
    t.flags = ti.flags;
    t.group_size = ti.group_size;
  }
  const char* s = nullptr;
  size_t n = 0;
  if (kerf_model_meta_string(m, "compile.layout", &s, &n) == KERF_OK) rep->layout.assign(s, n);
  rep->ops.clear();
  std::vector<std::string> why;  // per op, in program order: its line of placement.why (format 1.3), name cut
  if (kerf_model_meta_string(m, "placement.why", &s, &n) == KERF_OK) {
    std::string all(s, n), lineb;
    std::istringstream is(all);
    while (std::getline(is, lineb)) {
      const size_t colon = lineb.find(": ");
      why.push_back(colon == std::string::npos ? lineb : lineb.substr(colon + 2));
    }
  }
  for (int i = 0, no = kerf_model_op_count(m); i < no; ++i) {
    kerf_op_info oi{};
    if (kerf_model_op_info(m, i, &oi) != KERF_OK) continue;
    OpPlacement p;
    p.index = i;
    p.op = std::string("kerf.") + (oi.op ? oi.op : "?");
    char line[1024] = {0};
    if (kerf_model_op_describe(m, i, line, sizeof line) == KERF_OK) {
      const char* eq = std::strstr(line, " = ");
      if (eq) p.name.assign(line, static_cast<size_t>(eq - line));
    }
    std::vector<kerf_tensor_info> w;
    for (int k = 0; k < oi.n_tensors && k < 4; ++k) {
      const int ti = oi.tensors[k];
      if (ti < 0 || ti >= nt || !infos[static_cast<size_t>(ti)].name) continue;
      w.push_back(infos[static_cast<size_t>(ti)]);
      p.weights.push_back(infos[static_cast<size_t>(ti)].name);
    }
    place_op(oi.op ? oi.op : "", w, rep->target, &p);
    // "[cpu]" or "[npu prefill / cpu]" at the end of the description (kerf_model_op_describe)
    const char* br = std::strrchr(line, '[');
    if (br) {
      std::string units(br + 1);
      if (!units.empty() && units.back() == ']') units.pop_back();
      const size_t sl = units.find(" prefill / ");
      p.unit = sl == std::string::npos ? units : units.substr(sl + 11);
      p.unit_prefill = sl == std::string::npos ? p.unit : units.substr(0, sl);
    }
    auto kernel_of = [&](const std::string& u) {
      return u == "gpu" ? std::string("OpenCL kernels (runtime-lite GPU backend, f32)")
             : u == "npu" ? std::string("integer-only NPU path (docs/npu-arithmetic.md, bit-exact reference)")
                          : p.kernel;
    };
    if (p.unit != "cpu" || p.unit_prefill != "cpu")
      p.kernel = p.unit_prefill == p.unit ? kernel_of(p.unit) : "prefill: " + kernel_of(p.unit_prefill) + "; decode: " + kernel_of(p.unit);
    if (why.size() == size_t(kerf_model_op_count(m)))
      p.reason = "placement: " + why[size_t(i)] + (p.unit == "cpu" && p.unit_prefill == "cpu" ? "; " + p.reason : std::string());
    rep->ops.push_back(std::move(p));
  }
}

nlohmann::ordered_json report_object(const EvalReport& r) {
  using J = nlohmann::ordered_json;
  const bool ref = !r.reference.empty();
  J j;
  j["schema"] = kReportSchema;
  j["tool"] = {{"name", "kerf"}, {"version", kerf_version()}, {"commit", kerf_commit()}};
  j["artifact"] = r.artifact;
  j["reference"] = r.reference;
  j["text"] = r.text;
  j["stories"] = std::to_string(r.stories.begin) + ":" + std::to_string(r.stories.end);
  j["n_stories"] = r.n_stories;
  j["predicted_tokens"] = r.predicted_tokens;
  j["ppl"] = r.ppl;
  j["ppl_reference"] = ref ? J(r.ppl_reference) : J(nullptr);
  j["nll"] = r.nll;
  j["nll_reference"] = ref ? J(r.nll_reference) : J(nullptr);
  j["kl"] = ref ? J(r.kl) : J(nullptr);
  j["top1"] = ref ? J(r.top1) : J(nullptr);
  j["bpw"] = r.bpw;
  j["bytes"] = r.bytes;
  j["recipe"] = r.recipe;
  j["target"] = r.target;

  struct LayerAcc {
    int64_t params = 0, bits = 0, err_weights = 0;
    uint64_t bytes = 0;
    double err_sum = 0, out_err_sum = 0;
    bool has_err = false, has_out = false, bits_ok = true;
  };
  std::map<int64_t, LayerAcc> layers;
  J ts = J::array();
  for (const auto& t : r.tensors) {
    const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 0;
    const TensorDetail d = parse_tensor_detail(t.detail, cols);
    const std::optional<int64_t> layer = layer_index(t.name);
    const std::optional<int64_t> bits = matrix_bits(t);
    int64_t numel = t.shape.empty() ? 0 : 1;
    for (int64_t s : t.shape) numel *= s;
    J e;
    e["name"] = t.name;
    e["storage"] = t.dtype;
    e["shape"] = t.shape;
    e["bytes"] = t.bytes;
    e["detail"] = t.detail;
    e["precision"] = opt_str(d.precision);
    e["method"] = opt_str(d.method);
    e["role"] = opt_str(d.role);
    e["layer"] = layer ? J(*layer) : J(nullptr);
    e["bits_per_weight"] = bits && numel > 0 ? J(static_cast<double>(*bits) / static_cast<double>(numel)) : J(nullptr);
    e["rel_err"] = opt_num(d.rel_err);
    e["out_err"] = opt_num(d.out_err);
    e["sensitivity_kl"] = opt_num(d.sens_kl);
    ts.push_back(std::move(e));
    if (layer && t.shape.size() == 2) {
      LayerAcc& a = layers[*layer];
      a.params += numel;
      a.bytes += t.bytes;
      if (bits) a.bits += *bits;
      else a.bits_ok = false;
      if (d.rel_err) {
        a.has_err = true;
        a.err_sum += *d.rel_err * static_cast<double>(numel);
        a.err_weights += numel;
      }
      if (d.out_err) {
        a.has_out = true;
        a.out_err_sum += *d.out_err;
      }
    }
  }
  j["tensors"] = std::move(ts);
  J ls = J::array();
  for (const auto& [layer, a] : layers) {
    ls.push_back({{"layer", layer},
                  {"params", a.params},
                  {"bytes", a.bytes},
                  {"bpw", a.bits_ok && a.params > 0 ? J(static_cast<double>(a.bits) / static_cast<double>(a.params)) : J(nullptr)},
                  {"rel_err_mean", a.has_err ? J(a.err_sum / static_cast<double>(a.err_weights)) : J(nullptr)},
                  {"out_err_sum", a.has_out ? J(a.out_err_sum) : J(nullptr)}});
  }
  j["layers"] = std::move(ls);

  if (!r.stages.empty()) {
    J st = J::array();
    for (const auto& m : r.stages) {
      J e = {{"stage", m.name}, {"measured", m.measured}};
      if (m.measured) e.update({{"ppl", m.ppl}, {"nll", m.nll}, {"kl", m.kl}, {"top1", m.top1}});
      else e["note"] = m.note;
      e.update({{"params", m.params}, {"decode_flops_per_token", m.decode_flops}, {"prefill_flops_per_token", m.prefill_flops},
                {"context", m.context}, {"bytes", m.bytes}});
      st.push_back(e);
    }
    j["stages"] = st;
    j["prune"] = r.prune_summary;
  }

  J ops = J::array();
  for (const auto& p : r.ops)
    ops.push_back({{"index", p.index}, {"op", p.op}, {"name", p.name}, {"weights", p.weights},
                   {"unit", p.unit}, {"unit_prefill", p.unit_prefill}, {"kernel", p.kernel}, {"reason", p.reason}});
  j["placement"] = J::array({J{{"device", r.target.empty() ? std::string("unknown") : r.target},
                               {"layout", r.layout.empty() ? J(nullptr) : J(r.layout)},
                               {"ops", std::move(ops)}}});
  j["timing"] = {{"reference_seconds", r.reference_seconds},
                 {"artifact_seconds", r.artifact_seconds},
                 {"artifact_prefill_tokens_per_second", r.artifact_tokens_per_second}};
  return j;
}

}  // namespace kerf::pipeline
