// kerf quant/calib: calibrated, layer-by-layer quantization (see calibrate.h).
#include "quant/calib/calibrate.h"

#include <Eigen/Dense>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <set>

#include "distill/reference.h"
#include "quant/bpw.h"
#include "quant/calib/stages.h"

namespace kerf::quant {

Result<Method> parse_method(const std::string& t) {
  if (t == "rtn") return Method::kRtn;
  if (t == "gptq") return Method::kGptq;
  if (t == "awq") return Method::kAwq;
  if (t == "awq+gptq") return Method::kAwqGptq;
  return InvalidArgument("unknown quantization method '" + t + "' (known: rtn, gptq, awq, awq+gptq)");
}

const char* method_name(Method m) {
  switch (m) {
    case Method::kRtn: return "rtn";
    case Method::kGptq: return "gptq";
    case Method::kAwq: return "awq";
    case Method::kAwqGptq: return "awq+gptq";
  }
  return "?";
}

std::string to_string(const TensorChoice& c) {
  if (c.spec.plain()) return to_string(c.spec);
  return to_string(c.spec) + " " + method_name(c.method) + " " + (c.params.empty() ? param_rule_name(c.rule) : "learned");
}

void InputStats::add(const float* x, int64_t rows, int64_t c) {
  if (cols == 0) {
    cols = c;
    H.assign(static_cast<size_t>(c * c), 0.0);
    mean_abs.assign(static_cast<size_t>(c), 0.f);
  }
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const RowMat> X(x, rows, c);
  Eigen::MatrixXf G = X.transpose() * X;  // symmetric, so storage order does not matter
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) H[static_cast<size_t>(i * c + j)] += static_cast<double>(G(i, j));
  // running mean of |x|
  const double n0 = static_cast<double>(tokens), n1 = n0 + static_cast<double>(rows);
  for (int64_t j = 0; j < c; ++j) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r) s += std::fabs(x[r * c + j]);
    mean_abs[static_cast<size_t>(j)] = static_cast<float>((mean_abs[static_cast<size_t>(j)] * n0 + s) / n1);
  }
  tokens += rows;
}

std::vector<float> InputStats::imatrix() const {
  std::vector<float> v(static_cast<size_t>(cols), 0.f);
  const double n = tokens > 0 ? static_cast<double>(tokens) : 1.0;
  for (int64_t j = 0; j < cols; ++j) v[static_cast<size_t>(j)] = static_cast<float>(H[static_cast<size_t>(j * cols + j)] / n);
  return v;
}

namespace {

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

namespace calib_detail {

std::vector<Stage> build_stages(const distill::ReferenceExecutor& ex) {
  std::vector<Stage> stages;
  std::map<std::string, size_t> by_input;  // input value -> stage
  for (size_t i = 0; i < ex.num_nodes(); ++i) {
    const std::string& op = ex.node_op(i);
    const auto& in = ex.node_inputs(i);
    if (op == "Linear" && in.size() >= 2) {
      auto it = by_input.find(in[0]);
      if (it == by_input.end()) {
        Stage s;
        s.node = i;
        s.node_name = ex.node_name(i);
        s.input_value = in[0];
        by_input[in[0]] = stages.size();
        stages.push_back(std::move(s));
        it = by_input.find(in[0]);
      }
      auto& ts = stages[it->second].tensors;
      if (std::find(ts.begin(), ts.end(), in[1]) == ts.end()) ts.push_back(in[1]);
    } else if (op == "GatedFFN" && in.size() >= 4) {
      Stage a;
      a.node = i;
      a.node_name = ex.node_name(i);
      a.input_value = in[0];
      a.tensors = {in[1], in[2]};
      stages.push_back(std::move(a));
      Stage b;
      b.node = i;
      b.node_name = ex.node_name(i);
      b.what = "ffn_hidden";
      b.tensors = {in[3]};
      stages.push_back(std::move(b));
    }
  }
  return stages;
}

std::vector<Batch> make_batches(const std::vector<std::vector<int64_t>>& seqs, int64_t max_tokens) {
  std::vector<size_t> order(seqs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return seqs[a].size() < seqs[b].size(); });
  std::vector<Batch> out;
  size_t i = 0;
  while (i < order.size()) {
    // Rows of increasing length: the batch's T is its last (longest) row's length.
    size_t j = i;
    while (j < order.size() && j - i < 64) {
      const int64_t T = static_cast<int64_t>(seqs[order[j]].size());
      if (j > i && static_cast<int64_t>(j - i + 1) * T > max_tokens) break;
      ++j;
    }
    Batch b;
    b.B = static_cast<int64_t>(j - i);
    b.T = static_cast<int64_t>(seqs[order[j - 1]].size());
    for (size_t k = i; k < j; ++k) {
      const auto& q = seqs[order[k]];
      b.tokens.insert(b.tokens.end(), q.begin(), q.end());
      b.tokens.insert(b.tokens.end(), static_cast<size_t>(b.T) - q.size(), q.empty() ? 0 : q.back());
      b.lens.push_back(static_cast<int64_t>(q.size()));
      b.index.push_back(order[k]);
    }
    out.push_back(std::move(b));
    i = j;
  }
  return out;
}

Status observe(distill::ReferenceExecutor& ex, std::vector<Stage*> stages, const std::vector<std::vector<int64_t>>& calib,
               progress::Reporter* reporter, const std::string& task) {
  if (stages.empty()) return Status::Ok();
  std::vector<size_t> nodes;
  size_t last = 0;
  for (Stage* s : stages) {
    nodes.push_back(s->node);
    last = std::max(last, s->node);
  }
  const Batch* cur = nullptr;
  std::vector<float> packed;
  ex.set_observer(
      [&](const distill::ReferenceExecutor::Observation& o) {
        // Keep the rows of real positions only (row = b * T + t, real when t < lens[b]).
        const float* data = o.data;
        int64_t rows = o.rows;
        if (cur && cur->B * cur->T == o.rows) {
          packed.clear();
          for (int64_t b = 0; b < cur->B; ++b)
            packed.insert(packed.end(), o.data + b * cur->T * o.cols, o.data + (b * cur->T + cur->lens[static_cast<size_t>(b)]) * o.cols);
          data = packed.data();
          rows = static_cast<int64_t>(packed.size()) / o.cols;
        }
        for (Stage* s : stages)
          if (s->node == o.node_index && s->what == o.what) s->stats.add(data, rows, o.cols);
      },
      nodes);
  Status st = Status::Ok();
  const std::vector<Batch> batches = make_batches(calib);
  progress::Task pt(task, static_cast<int64_t>(batches.size()), "batches", reporter);
  for (const Batch& b : batches) {
    cur = &b;
    ex.reset_cache();
    st = ex.forward_prefix_batch(b.tokens, b.B, b.T, last);
    if (!st.ok()) break;
    pt.step();
  }
  ex.reset_cache();
  ex.set_observer(nullptr, {});
  return st;
}

Result<QuantTensor> quantize_one(const std::vector<float>& w, int64_t rows, int64_t cols, const TensorChoice& c,
                                 const InputStats* stats, const GptqOptions& gopt, std::string* note) {
  if (c.spec.plain()) return store_plain(w.data(), rows, cols, c.spec.kind == QKind::kF16 ? fmt::DType::kF16 : fmt::DType::kF32);
  const bool gptq = c.method == Method::kGptq || c.method == Method::kAwqGptq;
  if (!c.params.empty()) {
    if (c.method != Method::kRtn) return InvalidArgument("learned group parameters need method rtn, not " + to_string(c));
    KERF_ASSIGN_OR_RETURN(Unpacked u, quantize_with_params(w.data(), rows, cols, c.spec, c.params));
    return pack(u);
  }
  if (gptq) {
    if (!stats || stats->cols != cols) return Internal("GPTQ needs the input statistics of this tensor");
    GptqOptions o = gopt;
    o.rule = c.rule;
    GptqStats gs;
    KERF_ASSIGN_OR_RETURN(Unpacked u, gptq_quantize(w.data(), rows, cols, stats->H.data(), c.spec, o, &gs));
    if (gs.damp_retries > 0) *note += (note->empty() ? "" : "; ") + std::string("gptq damping raised ") + std::to_string(gs.damp_retries) + "x";
    return pack(u);
  }
  std::vector<float> imp;
  if (c.rule == ParamRule::kSearch && stats && stats->cols == cols) imp = stats->imatrix();
  return quantize_rtn(w.data(), rows, cols, c.spec, imp.empty() ? nullptr : imp.data(), c.rule);
}

}  // namespace calib_detail

using namespace calib_detail;

Result<QuantizedModel> quantize_calibrated(ir::Graph& g, const std::map<std::string, TensorChoice>& choices,
                                           const std::vector<std::vector<int64_t>>& calib, const CalibOptions& opt) {
  auto say = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  progress::Reporter* const reporter = opt.progress ? progress::current() : nullptr;
  auto add_time = [&](const std::string& phase, std::chrono::steady_clock::time_point t0) {
    if (opt.phase_seconds) progress::add_seconds(*opt.phase_seconds, phase, since(t0));
  };
  const auto t_setup = std::chrono::steady_clock::now();
  KERF_ASSIGN_OR_RETURN(std::vector<WeightUse> uses, enumerate_weights(g));
  bool need_calib = false, need_awq = false;
  for (const WeightUse& u : uses) {
    auto it = choices.find(u.tensor);
    if (it == choices.end()) return InvalidArgument("no precision chosen for weight '" + u.tensor + "'");
    KERF_RETURN_IF_ERROR(validate(it->second.spec).with_context("weight '" + u.tensor + "'"));
    if (it->second.rule == ParamRule::kTwn && it->second.spec.kind != QKind::kTernary)
      return InvalidArgument("weight '" + u.tensor + "': rule twn is only for ternary, not " + to_string(it->second.spec));
    if (!it->second.spec.plain() && it->second.needs_calibration()) need_calib = true;
    if (it->second.method == Method::kAwq || it->second.method == Method::kAwqGptq) need_awq = true;
  }
  if (need_calib && calib.empty())
    return InvalidArgument("the recipe needs calibration data (gptq / awq / importance search) but none was given: "
                           "pass --calib FILE (e.g. ../shared/text/tinystories_valid_800.txt --calib-stories 0:128)");

  distill::ReferenceOptions ro;
  ro.threads = opt.threads;
  KERF_ASSIGN_OR_RETURN(distill::ReferenceExecutor ex, distill::ReferenceExecutor::create(g, ro));
  std::vector<Stage> stages = build_stages(ex);
  std::map<std::string, size_t> stage_of;  // tensor -> stage
  for (size_t s = 0; s < stages.size(); ++s)
    for (const std::string& t : stages[s].tensors) stage_of[t] = s;
  add_time("calibration", t_setup);

  std::map<std::string, std::string> notes;
  auto add_note = [&](const std::string& t, const std::string& n) {
    std::string& x = notes[t];
    x += (x.empty() ? "" : "; ") + n;
  };

  // ---- AWQ: statistics of every stage from the FP model in one pass, then scales folded in order.
  if (need_awq) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Stage*> all;
    for (Stage& s : stages) all.push_back(&s);
    KERF_RETURN_IF_ERROR(observe(ex, all, calib, reporter).with_context("AWQ calibration pass"));
    add_time("calibration", t0);
    const auto t_search = std::chrono::steady_clock::now();
    progress::Task search("awq search", static_cast<int64_t>(stages.size()), "stages", reporter);
    for (Stage& st : stages) {
      search.step(st.node_name);
      bool any = false;
      for (const std::string& t : st.tensors) {
        const Method m = choices.at(t).method;
        any |= m == Method::kAwq || m == Method::kAwqGptq;
      }
      if (!any || st.stats.tokens == 0) continue;
      const QSpec spec = choices.at(st.tensors[0]).spec;
      if (spec.plain()) continue;
      // Find the fold target.
      std::string fold_desc;
      std::vector<float> act = st.stats.mean_abs;
      const int64_t C = st.stats.cols;
      enum class Fold { kNone, kNorm, kRows } fold = Fold::kNone;
      std::string target;          // initializer to divide
      std::vector<int64_t> row_of;  // kRows: input channel c -> row of target scaled by 1/s[c]
      if (st.what == "ffn_hidden") {
        // h = act(x W1^T) * (x W3^T): channel c of h scales with row c of w3.
        const auto& in = ex.node_inputs(st.node);
        target = in[2];
        fold = Fold::kRows;
        row_of.resize(static_cast<size_t>(C));
        for (int64_t c = 0; c < C; ++c) row_of[static_cast<size_t>(c)] = c;
      } else {
        const int p = g.producer(st.input_value);
        const auto cons = g.consumers(st.input_value);
        bool exclusive = true;
        for (int ci : cons) {
          const ir::Node& cn = g.nodes[static_cast<size_t>(ci)];
          const bool in_stage = (cn.op == "Linear" || cn.op == "GatedFFN") && cn.inputs.size() >= 2 &&
                                std::find(st.tensors.begin(), st.tensors.end(), cn.inputs[1]) != st.tensors.end();
          exclusive &= in_stage;
        }
        if (p >= 0 && exclusive) {
          const ir::Node& pn = g.nodes[static_cast<size_t>(p)];
          if (pn.domain == "kerf" && pn.op == "RMSNorm" && pn.inputs.size() >= 2 && g.is_constant(pn.inputs[1])) {
            target = pn.inputs[1];
            fold = Fold::kNorm;
          } else if (pn.domain == "kerf" && pn.op == "Attention" && pn.inputs.size() == 3) {
            // out[h*Dh+d] is a mix of v[(h/rep)*Dh+d]: scale v's producing Linear rows, tied per KV group.
            const int vp = g.producer(pn.inputs[2]);
            const int64_t H = std::get<int64_t>(pn.attrs.at("n_heads")), G = std::get<int64_t>(pn.attrs.at("n_kv_heads")),
                          Dh = std::get<int64_t>(pn.attrs.at("head_dim"));
            if (vp >= 0 && g.nodes[static_cast<size_t>(vp)].op == "Linear" && g.consumers(pn.inputs[2]).size() == 1 &&
                H * Dh == C) {
              target = g.nodes[static_cast<size_t>(vp)].inputs[1];
              fold = Fold::kRows;
              const int64_t rep = H / G;
              row_of.resize(static_cast<size_t>(C));
              std::vector<float> tied(static_cast<size_t>(C), 0.f);
              for (int64_t h = 0; h < H; ++h)
                for (int64_t d = 0; d < Dh; ++d) {
                  row_of[static_cast<size_t>(h * Dh + d)] = (h / rep) * Dh + d;
                  float m = 0;
                  for (int64_t h2 = (h / rep) * rep; h2 < (h / rep + 1) * rep; ++h2) m += act[static_cast<size_t>(h2 * Dh + d)];
                  tied[static_cast<size_t>(h * Dh + d)] = m / static_cast<float>(rep);
                }
              act = tied;
            }
          }
        }
      }
      // Scaling a matrix's columns is only exact when the matrix is read by this stage alone (a tied
      // embedding / classifier table is also an Embedding lookup).
      std::string shared;
      for (const std::string& t : st.tensors)
        for (int ci : g.consumers(t)) {
          const ir::Node& cn = g.nodes[static_cast<size_t>(ci)];
          if (!(cn.domain == "kerf" && (cn.op == "Linear" || cn.op == "GatedFFN"))) shared = t;
        }
      if (!shared.empty()) {
        for (const std::string& t : st.tensors)
          add_note(t, "awq scaling skipped: '" + shared + "' is also read by a non-Linear op (tied embedding)");
        continue;
      }
      if (fold == Fold::kNone) {
        for (const std::string& t : st.tensors) add_note(t, "awq scaling skipped: input has no foldable producer");
        continue;
      }
      // A fold target that is itself a weight matrix must not be quantized yet (it is not: this
      // pass runs before any quantization) — but it must not be in this stage either.
      std::vector<std::vector<float>> ws;
      std::vector<WeightRef> refs;
      std::vector<std::vector<int64_t>> shapes(st.tensors.size());
      for (size_t k = 0; k < st.tensors.size(); ++k) {
        KERF_ASSIGN_OR_RETURN(auto w, ex.weight(st.tensors[k], &shapes[k]));
        ws.push_back(std::move(w));
      }
      for (size_t k = 0; k < ws.size(); ++k) refs.push_back(WeightRef{ws[k].data(), shapes[k][0]});
      auto sc = awq_search_scales(refs, st.stats.H.data(), act.data(), C, spec, opt.awq);
      if (!sc.ok()) return sc.status().with_context("AWQ scale search for '" + st.tensors[0] + "'");
      const std::vector<float>& s = sc->s;
      // Fold: weights of the stage * s (columns), target / s.
      for (size_t k = 0; k < ws.size(); ++k) {
        scale_columns(ws[k].data(), shapes[k][0], C, s.data());
        KERF_RETURN_IF_ERROR(ex.set_weight(st.tensors[k], ws[k]));
      }
      std::vector<int64_t> tshape;
      KERF_ASSIGN_OR_RETURN(auto tw, ex.weight(target, &tshape));
      if (fold == Fold::kNorm) {
        for (int64_t c = 0; c < C; ++c) tw[static_cast<size_t>(c)] /= s[static_cast<size_t>(c)];
      } else {
        const int64_t tcols = tshape.size() == 2 ? tshape[1] : 1;
        std::vector<bool> done(static_cast<size_t>(tshape.empty() ? 0 : tshape[0]), false);
        for (int64_t c = 0; c < C; ++c) {
          const int64_t r = row_of[static_cast<size_t>(c)];
          if (done[static_cast<size_t>(r)]) continue;
          done[static_cast<size_t>(r)] = true;
          for (int64_t j = 0; j < tcols; ++j) tw[static_cast<size_t>(r * tcols + j)] /= s[static_cast<size_t>(c)];
        }
      }
      KERF_RETURN_IF_ERROR(ex.set_weight(target, tw));
      g.initializers[target] = ir::Tensor::from_f32(tshape, tw);
      for (size_t k = 0; k < st.tensors.size(); ++k) g.initializers[st.tensors[k]] = ir::Tensor::from_f32(shapes[k], ws[k]);
      char buf[200];
      std::snprintf(buf, sizeof buf, "awq alpha %.2f folded into %s (loss %.4g -> %.4g)", sc->alpha, target.c_str(),
                    sc->loss0, sc->loss_best);
      for (const std::string& t : st.tensors) add_note(t, buf);
      st.stats = InputStats{};  // inputs changed by the fold; re-observed below
    }
    search.finish();
    add_time("awq search", t_search);
    say("awq: scales searched and folded in " + std::to_string(since(t0)).substr(0, 5) + " s");
  }

  // ---- FP statistics for the non-sequential mode.
  if (need_calib && !opt.sequential) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Stage*> all;
    for (Stage& s : stages) all.push_back(&s);
    for (Stage& s : stages) s.stats = InputStats{};
    KERF_RETURN_IF_ERROR(observe(ex, all, calib, reporter).with_context("calibration pass"));
    add_time("calibration", t0);
  }

  // Progress: the stages observed one by one (sequential mode), and the matrices, as a task named
  // after their method ("quantize" for a mix).
  std::string quant_task;
  for (const WeightUse& u : uses) {
    const TensorChoice& c = choices.at(u.tensor);
    const std::string m = c.spec.plain() ? "cast" : method_name(c.method);
    quant_task = quant_task.empty() || quant_task == m ? m : "quantize";
  }
  std::unique_ptr<progress::Task> stage_task;
  if (need_calib && opt.sequential)
    stage_task = std::make_unique<progress::Task>("calibration", static_cast<int64_t>(stages.size()), "stages", reporter);
  progress::Task tensor_task(quant_task.empty() ? "quantize" : quant_task, static_cast<int64_t>(uses.size()), "tensors", reporter);

  // ---- Quantize stage by stage (untied embedding tables first: no input statistics).
  QuantizedModel m;
  BpwAccount account;
  std::map<std::string, TensorPlan> plans;
  std::map<std::string, QuantTensor> done;
  auto quantize_tensor = [&](const std::string& t, const InputStats* stats) -> Status {
    const auto t0 = std::chrono::steady_clock::now();
    const TensorChoice& c = choices.at(t);
    std::vector<int64_t> shape;
    KERF_ASSIGN_OR_RETURN(std::vector<float> w, ex.weight(t, &shape));
    const int64_t rows = shape[0], cols = shape[1];
    const std::vector<float> w0 = w;  // post-fold, pre-clip: the weights the error figures compare with
    std::string note = notes[t];
    if (opt.awq_clip && (c.method == Method::kAwq || c.method == Method::kAwqGptq) && stats && stats->cols == cols &&
        !c.spec.plain()) {
      AwqClipStats cs;
      KERF_RETURN_IF_ERROR(awq_clip(w.data(), rows, cols, stats->H.data(), c.spec, opt.awq, &cs).with_context("weight '" + t + "'"));
    }
    auto q = quantize_one(w, rows, cols, c, stats, opt.gptq, &note);
    if (!q.ok()) return q.status().with_context("weight '" + t + "' (" + to_string(c) + ")");
    KERF_ASSIGN_OR_RETURN(std::vector<float> dq, dequantize(*q));
    TensorPlan p;
    p.name = t;
    p.dtype = q->dtype;
    p.flags = q->flags;
    p.group_size = q->group_size;
    p.rows = rows;
    p.cols = cols;
    p.precision = to_string(c.spec);
    p.method = c.spec.plain() ? (c.spec.kind == QKind::kF16 ? "cast" : "none")
                              : std::string(method_name(c.method)) + "/" + (c.params.empty() ? param_rule_name(c.rule) : "learned");
    p.rel_rms_error = relative_rms_error(w0.data(), dq.data(), rows * cols);
    if (stats && stats->cols == cols && stats->tokens > 0) p.output_error = output_error(w0.data(), dq.data(), rows, cols, stats->H.data());
    p.note = note;
    KERF_RETURN_IF_ERROR(ex.set_weight(t, dq));
    plans[t] = std::move(p);
    done.emplace(t, std::move(q).value());
    char buf[300];
    std::snprintf(buf, sizeof buf, "%s rel.err %.4f out.err %s (%.2f s)", to_string(c).c_str(),
                  plans[t].rel_rms_error, plans[t].output_error >= 0 ? std::to_string(plans[t].output_error).substr(0, 8).c_str() : "-",
                  since(t0));
    add_time(std::string("quantization (") + (c.spec.plain() ? "cast" : method_name(c.method)) + ")", t0);
    tensor_task.step(t, buf);
    return Status::Ok();
  };

  for (const WeightUse& u : uses)
    if (!stage_of.count(u.tensor)) KERF_RETURN_IF_ERROR(quantize_tensor(u.tensor, nullptr));

  for (size_t si = 0; si < stages.size(); ++si) {
    Stage& st = stages[si];
    bool needs = false;
    for (const std::string& t : st.tensors) needs |= !choices.at(t).spec.plain() && choices.at(t).needs_calibration();
    if (needs && opt.sequential) {
      const auto t0 = std::chrono::steady_clock::now();
      st.stats = InputStats{};
      KERF_RETURN_IF_ERROR(observe(ex, {&st}, calib).with_context("calibration of stage '" + st.node_name + "'"));
      add_time("calibration", t0);
    }
    if (stage_task)
      stage_task->step(st.node_name + (st.what == "ffn_hidden" ? " (w2 input)" : ""),
                       needs ? std::to_string(st.stats.tokens) + " tokens" : "");
    for (const std::string& t : st.tensors)
      KERF_RETURN_IF_ERROR(quantize_tensor(t, needs || st.stats.tokens > 0 ? &st.stats : nullptr));
  }
  if (stage_task) stage_task->finish();
  tensor_task.finish();

  for (const WeightUse& u : uses) {
    TensorPlan& p = plans.at(u.tensor);
    p.role = u.role();
    KERF_RETURN_IF_ERROR(account.add(u.tensor, done.at(u.tensor)).with_context("tensor '" + u.tensor + "'"));
    p.bits = stored_bits(done.at(u.tensor));
    m.plan.push_back(p);
  }
  m.tensors = std::move(done);
  m.weight_count = account.weight_count();
  m.weight_bits = account.weight_bits();
  m.bpw = account.bpw();
  m.kept = kept_initializers(g, uses);
  return m;
}

}  // namespace kerf::quant
