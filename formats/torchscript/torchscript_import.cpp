#include "formats/torchscript/torchscript_import.h"

#include "formats/torchscript/archive_check.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/lower_tuples.h>
#include <torch/csrc/jit/passes/peephole.h>
#include <torch/csrc/jit/passes/remove_dropout.h>
#include <torch/csrc/jit/passes/remove_mutation.h>
#include <torch/csrc/jit/passes/shape_analysis.h>
#include <torch/script.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace kerf {
namespace {

namespace fs = std::filesystem;
namespace tj = torch::jit;
using ir::DType;

const std::vector<std::string>& kSupported() {
  static const std::vector<std::string> ops = [] {
    std::vector<std::string> v = {
        // tensor ops
        "aten::add", "aten::bmm", "aten::cat", "aten::clone", "aten::contiguous", "aten::detach",
        "aten::div", "aten::dropout", "aten::embedding", "aten::eq", "aten::expand", "aten::expand_as",
        "aten::floor_divide", "aten::full", "aten::full_like", "aten::linear", "aten::masked_fill",
        "aten::matmul", "aten::mean", "aten::mm", "aten::mul", "aten::neg", "aten::ones", "aten::ones_like",
        "aten::permute", "aten::pow", "aten::reciprocal", "aten::reshape", "aten::reshape_as", "aten::rsqrt",
        "aten::rsub", "aten::select", "aten::sigmoid", "aten::silu", "aten::slice", "aten::softmax",
        "aten::sqrt", "aten::square", "aten::squeeze", "aten::stack", "aten::sub", "aten::t", "aten::to",
        "aten::transpose", "aten::tril", "aten::triu", "aten::type_as", "aten::unsqueeze", "aten::view",
        "aten::view_as", "aten::where", "aten::zeros", "aten::zeros_like",
        // sizes, numbers and lists
        "aten::Float", "aten::FloatImplicit", "aten::Int", "aten::IntImplicit", "aten::ScalarImplicit",
        "aten::__getitem__", "aten::dim", "aten::floordiv", "aten::len", "aten::size", "prim::Constant",
        "prim::ListConstruct", "prim::ListUnpack", "prim::NumToTensor", "prim::TupleConstruct",
        "prim::TupleIndex", "prim::TupleUnpack", "prim::device", "prim::dtype", "prim::unchecked_cast"};
    std::sort(v.begin(), v.end());
    return v;
  }();
  return ops;
}

bool supported(const std::string& kind) {
  const auto& s = kSupported();
  return std::binary_search(s.begin(), s.end(), kind);
}

// ONNX TensorProto element types, as Cast's `to` attribute wants them.
int64_t onnx_type(DType t) {
  switch (t) {
    case DType::kF32: return 1;
    case DType::kU8: return 2;
    case DType::kI8: return 3;
    case DType::kI32: return 6;
    case DType::kI64: return 7;
    case DType::kBool: return 9;
    case DType::kF16: return 10;
    case DType::kF64: return 11;
    case DType::kBF16: return 16;
    default: return 0;
  }
}

std::optional<DType> from_scalar_type(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return DType::kF32;
    case c10::ScalarType::Half: return DType::kF16;
    case c10::ScalarType::BFloat16: return DType::kBF16;
    case c10::ScalarType::Double: return DType::kF64;
    case c10::ScalarType::Long: return DType::kI64;
    case c10::ScalarType::Int: return DType::kI32;
    case c10::ScalarType::Char: return DType::kI8;
    case c10::ScalarType::Byte: return DType::kU8;
    case c10::ScalarType::Bool: return DType::kBool;
    default: return std::nullopt;
  }
}

c10::ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::kF16: return c10::ScalarType::Half;
    case DType::kBF16: return c10::ScalarType::BFloat16;
    case DType::kF64: return c10::ScalarType::Double;
    case DType::kI64: return c10::ScalarType::Long;
    case DType::kI32: return c10::ScalarType::Int;
    case DType::kI8: return c10::ScalarType::Char;
    case DType::kU8: return c10::ScalarType::Byte;
    case DType::kBool: return c10::ScalarType::Bool;
    default: return c10::ScalarType::Float;
  }
}

// PyTorch's type promotion (c10/core/ScalarType.h promoteTypes) on kerf's dtypes.
int category(DType t) { return t == DType::kBool ? 0 : (ir::dtype_is_float(t) ? 2 : 1); }
int width_rank(DType t) {
  switch (t) {
    case DType::kF64: case DType::kI64: return 3;
    case DType::kF32: case DType::kI32: return 2;
    default: return 1;
  }
}
DType promote(DType a, DType b) {
  if (a == DType::kUndefined) return b;
  if (b == DType::kUndefined || a == b) return a;
  if (category(a) != category(b)) return category(a) > category(b) ? a : b;
  if (width_rank(a) != width_rank(b)) return width_rank(a) > width_rank(b) ? a : b;
  // f16 vs bf16 -> f32; i8 vs u8 -> i16, which kerf does not have: i32.
  return category(a) == 2 ? DType::kF32 : DType::kI32;
}
// c10's combine_categories: a higher-priority operand class keeps its dtype unless a lower one
// brings a higher category.
DType combine(DType higher, DType lower) {
  if (ir::dtype_is_float(higher)) return higher;
  if (higher == DType::kBool || ir::dtype_is_float(lower)) return promote(higher, lower);
  return higher != DType::kUndefined ? higher : lower;
}

std::string strip_suffix(const std::string& debug_name) {
  // "tokens.1" -> "tokens" (TorchScript's uniquing suffix)
  size_t dot = debug_name.rfind('.');
  if (dot != std::string::npos && dot + 1 < debug_name.size() &&
      std::all_of(debug_name.begin() + static_cast<long>(dot) + 1, debug_name.end(), ::isdigit))
    return debug_name.substr(0, dot);
  return debug_name;
}

bool numeric(const std::string& s) { return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit); }

/// "file.py:12:4 `x = torch.gelu(y)`" for a node, from the source range TorchScript keeps.
std::string location(const tj::Node* n) {
  std::string s;
  try {
    // The archive's code/*.py ranges map back to the user's source (its debug info).
    tj::SourceRange r = n->sourceRange();
    if (auto orig = r.findSourceRangeThatGenerated()) r = *orig;
    auto fl = r.file_line_col();
    if (fl && !std::get<0>(*fl).empty())
      s = std::get<0>(*fl) + ":" + std::to_string(std::get<1>(*fl)) + ":" + std::to_string(std::get<2>(*fl));
    else
      s = "<no source location>";
    if (r.source() && r.size() > 0) {
      std::string text = r.text().str();
      text = text.substr(0, text.find('\n'));
      while (!text.empty() && (text.back() == ' ' || text.back() == '\r')) text.pop_back();
      if (text.size() > 72) text = text.substr(0, 69) + "...";
      if (!text.empty()) s += " `" + text + "`";
    }
  } catch (const std::exception&) {
    if (s.empty()) s = "<no source location>";
  }
  return s;
}

/// An importer-side value: a tensor (also Python numbers, as 0-D tensors), a list / tuple, None,
/// or something only read as a constant (device, string).
struct TV {
  enum class Kind { kOther, kNone, kTensor, kList } kind = Kind::kOther;
  std::string name;               ///< kTensor: IR value name (empty while `num` holds the value)
  std::optional<ir::Tensor> num;  ///< kTensor: a 0-D constant not yet in the graph
  DType dtype = DType::kUndefined;
  int rank = -1;                  ///< -1 = unknown
  bool wrapped = false;           ///< a Python number: lowest priority in type promotion
  std::vector<TV> elems;          ///< kList
  std::string shape_of;           ///< kList of ints held as a 1-D i64 IR value (aten::size)
  int64_t len = -1;               ///< kList length, -1 = unknown

  bool is_tensor() const { return kind == Kind::kTensor; }
  bool is_none() const { return kind == Kind::kNone; }
};

TV number_i64(int64_t v) {
  TV t;
  t.kind = TV::Kind::kTensor;
  t.num = ir::Tensor::from_i64({}, {v}, DType::kI64);
  t.dtype = DType::kI64;
  t.rank = 0;
  t.wrapped = true;
  return t;
}
TV number_f64(double v) {
  TV t;
  t.kind = TV::Kind::kTensor;
  ir::Tensor x;
  x.dtype = DType::kF64;
  x.data.resize(8);
  std::memcpy(x.data.data(), &v, 8);
  t.num = std::move(x);
  t.dtype = DType::kF64;
  t.rank = 0;
  t.wrapped = true;
  return t;
}
TV number_bool(bool v) {
  TV t;
  t.kind = TV::Kind::kTensor;
  ir::Tensor x;
  x.dtype = DType::kBool;
  x.data = {static_cast<uint8_t>(v ? 1 : 0)};
  t.num = std::move(x);
  t.dtype = DType::kBool;
  t.rank = 0;
  t.wrapped = true;
  return t;
}

Result<ir::Tensor> to_ir_tensor(const at::Tensor& t0, const std::string& what) {
  auto dt = from_scalar_type(t0.scalar_type());
  if (!dt) return Unsupported(what + ": tensor element type " + std::string(c10::toString(t0.scalar_type())) + " is not supported");
  at::Tensor t = t0.detach().to(at::kCPU).contiguous();
  ir::Tensor out;
  out.dtype = *dt;
  out.shape = t.sizes().vec();
  out.data.resize(static_cast<size_t>(t.numel()) * ir::dtype_size(*dt));
  if (!out.data.empty()) std::memcpy(out.data.data(), t.data_ptr(), out.data.size());
  return out;
}

// ------------------------------------------------------------------------------------------------

class Importer {
 public:
  explicit Importer(std::string file) : file_(std::move(file)) {}

  Result<ir::Graph> run(tj::Module& module) {
    auto method = module.find_method("forward");
    if (!method) return BadInput(file_ + ": the TorchScript module has no forward() method");
    std::shared_ptr<tj::Graph> graph = method->graph()->copy();
    g_.name = module.type()->name() ? module.type()->name()->name() : "forward";
    g_.opset = 17;  // the default-domain nodes follow ONNX opset-17 semantics
    g_.metadata["source.format"] = "torchscript";
    g_.metadata["source.file"] = file_;

    tj::Inline(*graph);
    // forward's arguments, with the types a traced archive records (before shapes are erased).
    std::vector<std::pair<const tj::Value*, TV>> args;
    KERF_RETURN_IF_ERROR(read_inputs(*graph, &args));
    KERF_RETURN_IF_ERROR(resolve_attributes(graph, module));
    tj::EraseShapeInformation(graph);
    tj::LowerSimpleTuples(graph);
    tj::removeDropout(graph);
    for (int round = 0; round < 2; ++round) {
      tj::PeepholeOptimize(graph, /*disable_shape_peepholes=*/true);
      tj::ConstantPropagation(graph);
      tj::RemoveListMutation(graph);
      tj::RemoveTensorMutation(graph);
      tj::LowerSimpleTuples(graph);
      tj::EliminateDeadCode(graph);
    }
    for (auto& [v, tv] : args) {
      g_.inputs.push_back(tv.name);
      tv_[v] = tv;
    }

    KERF_RETURN_IF_ERROR(check_graph(*graph));
    for (tj::Node* n : graph->nodes()) {
      if (!live_nodes_.count(n) || n->kind() == c10::prim::Constant) continue;
      cur_ = n;
      Status st = convert(n);
      if (!st.ok()) return st;
    }
    KERF_RETURN_IF_ERROR(set_outputs(*graph));
    Status st = g_.validate();
    if (!st.ok()) return Internal(file_ + ": the imported graph is malformed (a kerf bug): " + st.message());
    return std::move(g_);
  }

 private:
  std::string file_;
  ir::Graph g_;
  std::unordered_set<std::string> used_;
  std::unordered_map<const tj::Value*, TV> tv_;
  std::unordered_map<const tj::Value*, std::string> param_path_;     // constants made from attributes
  std::unordered_map<const c10::TensorImpl*, std::string> param_by_impl_;
  std::unordered_set<const tj::Node*> live_nodes_;
  const tj::Node* cur_ = nullptr;
  std::string cur_out_;  // base name of the IR values made for the node being converted

  // ---------------------------------------------------------------- setup
  Status read_inputs(tj::Graph& graph, std::vector<std::pair<const tj::Value*, TV>>* args) {
    std::set<std::string> names;
    for (size_t i = 1; i < graph.inputs().size(); ++i) {  // input 0 is the module itself
      const tj::Value* v = graph.inputs()[i];
      auto tt = v->type()->cast<c10::TensorType>();
      if (!tt)
        return Unsupported(file_ + ": forward() argument '" + strip_suffix(v->debugName()) + "' has type " +
                           v->type()->repr_str() + "; kerf imports tensor arguments only (token ids [batch, seq])");
      TV tv;
      tv.kind = TV::Kind::kTensor;
      tv.dtype = DType::kI64;
      tv.rank = 2;
      if (auto st = tt->scalarType()) {
        auto dt = from_scalar_type(*st);
        if (!dt) return Unsupported(file_ + ": forward() argument '" + v->debugName() + "' has element type " + c10::toString(*st));
        tv.dtype = *dt;
      }
      if (auto r = tt->dim()) tv.rank = static_cast<int>(*r);
      std::string base = strip_suffix(v->debugName());
      if (base.empty() || numeric(base)) base = "input" + std::to_string(i - 1);
      tv.name = fresh(base);
      ir::ValueInfo vi;
      vi.dtype = tv.dtype;
      vi.rank_known = true;
      static const char* kDims[] = {"batch", "seq"};
      for (int d = 0; d < tv.rank; ++d)
        vi.shape.push_back(ir::Dim::sym(d < 2 && !ir::dtype_is_float(tv.dtype) ? kDims[d] : "d" + std::to_string(d)));
      g_.values[tv.name] = vi;
      args->emplace_back(v, tv);
    }
    return Status::Ok();
  }

  // prim::GetAttr chains from `self` -> constants; tensors keep their module path as name.
  Status resolve_attributes(std::shared_ptr<tj::Graph>& graph, tj::Module& module) {
    std::unordered_map<const tj::Value*, std::pair<c10::IValue, std::string>> objects;
    objects[graph->inputs()[0]] = {c10::IValue(module._ivalue()), ""};
    std::vector<tj::Node*> dead;
    std::function<Status(tj::Block*)> walk = [&](tj::Block* b) -> Status {
      for (tj::Node* n : b->nodes()) {
        for (tj::Block* sub : n->blocks()) KERF_RETURN_IF_ERROR(walk(sub));
        if (n->kind() != c10::prim::GetAttr) continue;
        auto it = objects.find(n->input());
        if (it == objects.end() || !it->second.first.isObject()) continue;
        const std::string attr = n->s(c10::attr::name);
        const std::string path = it->second.second.empty() ? attr : it->second.second + "." + attr;
        c10::IValue value;
        try {
          value = it->second.first.toObject()->getAttr(attr);
        } catch (const std::exception& e) {
          return BadInput(file_ + ": attribute '" + path + "' cannot be read: " + e.what());
        }
        if (value.isObject()) {
          objects[n->output()] = {value, path};
          continue;
        }
        tj::WithInsertPoint guard(n);
        tj::Value* c = nullptr;
        try {
          if (value.isTensor()) {
            at::Tensor t = value.toTensor().detach();
            c = graph->insertConstant(t);
            param_path_[c] = path;
            param_by_impl_.emplace(t.unsafeGetTensorImpl(), path);
          } else {
            c = graph->insertConstant(value);
          }
        } catch (const std::exception&) {
          continue;  // not encodable as a constant (e.g. a dict): left as GetAttr, reported if used
        }
        n->output()->replaceAllUsesWith(c);
        dead.push_back(n);
      }
      return Status::Ok();
    };
    KERF_RETURN_IF_ERROR(walk(graph->block()));
    for (auto it = dead.rbegin(); it != dead.rend(); ++it) (*it)->destroy();
    return Status::Ok();
  }

  // Liveness from the outputs; every op with no mapping is listed; in-place writes to live values
  // and control flow are refused.
  Status check_graph(tj::Graph& graph) {
    std::unordered_set<const tj::Value*> live;
    std::vector<const tj::Value*> stack(graph.outputs().begin(), graph.outputs().end());
    std::function<void(const tj::Block*)> free_vars = [&](const tj::Block* b) {
      for (const tj::Node* m : b->nodes()) {
        for (const tj::Value* in : m->inputs()) stack.push_back(in);
        for (const tj::Block* sub : m->blocks()) free_vars(sub);
      }
      for (const tj::Value* o : b->outputs()) stack.push_back(o);
    };
    while (!stack.empty()) {
      const tj::Value* v = stack.back();
      stack.pop_back();
      if (!live.insert(v).second) continue;
      const tj::Node* p = v->node();
      if (p->owningBlock() != graph.block() || p->kind() == c10::prim::Param) continue;
      if (!live_nodes_.insert(p).second) continue;
      for (const tj::Value* in : p->inputs()) stack.push_back(in);
      for (const tj::Block* b : p->blocks()) free_vars(b);
    }
    std::map<std::string, std::vector<std::string>> unsupported;
    size_t count = 0;
    for (const tj::Node* n : graph.nodes()) {
      const std::string kind = n->kind().toQualString();
      if (live_nodes_.count(n)) {
        if (!supported(kind)) {
          unsupported[kind].push_back(location(n));
          ++count;
        }
        continue;
      }
      // A dead node that writes a live value changes what the outputs compute.
      if (const c10::FunctionSchema* s = n->maybeSchema()) {
        for (size_t i = 0; i < s->arguments().size() && i < n->inputs().size(); ++i) {
          const auto* ai = s->arguments()[i].alias_info();
          if (ai && ai->isWrite() && live.count(n->inputs()[i]))
            return Unsupported(file_ + ": in-place op " + kind + " at " + location(n) + " writes '" +
                               n->inputs()[i]->debugName() + "', which the outputs depend on");
        }
      }
    }
    if (!unsupported.empty()) {
      std::ostringstream os;
      os << file_ << ": " << count << " node(s) use ops kerf does not support:";
      for (const auto& [op, locs] : unsupported) {
        os << "\n  " << op;
        if (op == "prim::If" || op == "prim::Loop") os << " (control flow that depends on the input)";
        os << " (" << locs.size() << "): ";
        for (size_t i = 0; i < locs.size() && i < 8; ++i) os << (i ? "; " : "") << locs[i];
        if (locs.size() > 8) os << "; ... " << locs.size() - 8 << " more";
      }
      return Unsupported(os.str());
    }
    return Status::Ok();
  }

  // ---------------------------------------------------------------- emission helpers
  std::string fresh(const std::string& base) {
    std::string b = base.empty() ? "v" : base;
    std::string name = b;
    for (int k = 1; used_.count(name) || g_.initializers.count(name); ++k) name = b + "_" + std::to_string(k);
    used_.insert(name);
    return name;
  }

  Status fail(const std::string& what) const {
    return Unsupported(file_ + ": " + std::string(cur_->kind().toQualString()) + " at " + location(cur_) + ": " + what);
  }

  /// Appends a node; returns its (single) output name.
  std::string emit(const std::string& op, std::vector<std::string> inputs, std::map<std::string, ir::AttrValue> attrs = {},
                   const std::string& out = "", const std::string& domain = "") {
    ir::Node n;
    n.op = op;
    n.domain = domain;
    n.outputs = {out.empty() ? fresh(cur_out_ + "/" + op) : out};
    n.name = n.outputs[0];
    n.inputs = std::move(inputs);
    n.attrs = std::move(attrs);
    g_.nodes.push_back(std::move(n));
    return g_.nodes.back().outputs[0];
  }

  std::string add_const(ir::Tensor t, const std::string& base) {
    std::string name = fresh(base);
    g_.initializers.emplace(name, std::move(t));
    return name;
  }
  std::string const_i64(std::vector<int64_t> v, bool scalar = false) {
    std::vector<int64_t> shape;
    if (!scalar) shape.push_back(static_cast<int64_t>(v.size()));
    return add_const(ir::Tensor::from_i64(shape, v, DType::kI64), cur_out_ + "/const");
  }

  /// The IR value of tensor `v` in dtype `want` (kUndefined = as it is): numbers become
  /// initializers, constants are cast at import, other values through a Cast node.
  Result<std::string> tensor(const TV& v, DType want = DType::kUndefined) {
    if (!v.is_tensor()) return fail("expected a tensor argument");
    if (v.num) return add_const(want == DType::kUndefined ? *v.num : v.num->cast(want), cur_out_ + "/const");
    if (want == DType::kUndefined || want == v.dtype) return v.name;
    if (v.dtype == DType::kUndefined) return fail("the element type of '" + v.name + "' is not known");
    if (const ir::Tensor* t = g_.constant(v.name))
      return add_const(t->cast(want), v.name + "." + ir::dtype_name(want));
    return emit("Cast", {v.name}, {{"to", onnx_type(want)}});
  }

  TV out_tensor(const std::string& name, DType dt, int rank, bool wrapped = false) {
    TV t;
    t.kind = TV::Kind::kTensor;
    t.name = name;
    t.dtype = dt;
    t.rank = rank;
    t.wrapped = wrapped;
    return t;
  }

  /// TV of a torch value: converted earlier, or a constant read now.
  Result<TV> get(const tj::Value* v) {
    auto it = tv_.find(v);
    if (it != tv_.end()) return it->second;
    if (v->node()->kind() != c10::prim::Constant)
      return Internal(file_ + ": value '" + v->debugName() + "' used before it is defined (a kerf bug)");
    auto iv = tj::toIValue(v);
    if (!iv) return Internal(file_ + ": constant '" + v->debugName() + "' has no value");
    KERF_ASSIGN_OR_RETURN(TV tv, from_ivalue(*iv, v));
    tv_[v] = tv;
    return tv;
  }

  Result<TV> from_ivalue(const c10::IValue& iv, const tj::Value* v) {
    TV t;
    if (iv.isNone()) {
      t.kind = TV::Kind::kNone;
    } else if (iv.isInt()) {
      t = number_i64(iv.toInt());
    } else if (iv.isDouble()) {
      t = number_f64(iv.toDouble());
    } else if (iv.isBool()) {
      t = number_bool(iv.toBool());
    } else if (iv.isTensor()) {
      const at::Tensor& at = iv.toTensor();
      std::string path;
      if (auto p = param_path_.find(v); p != param_path_.end()) {
        path = p->second;
      } else if (auto q = param_by_impl_.find(at.unsafeGetTensorImpl()); q != param_by_impl_.end()) {
        path = q->second;
      }
      KERF_ASSIGN_OR_RETURN(ir::Tensor x, to_ir_tensor(at, file_ + ": constant " + (path.empty() ? v->debugName() : path)));
      t.kind = TV::Kind::kTensor;
      t.dtype = x.dtype;
      t.rank = static_cast<int>(x.shape.size());
      if (path.empty() && x.shape.empty()) {
        t.num = std::move(x);  // a 0-D constant (a traced Python number): dtype decided where used
      } else if (!path.empty() && g_.initializers.count(path)) {
        t.name = path;  // the same parameter reached again
      } else {
        t.name = path.empty() ? add_const(std::move(x), strip_suffix(v->debugName()) + ".const") : add_const(std::move(x), path);
      }
    } else if (iv.isIntList()) {
      t.kind = TV::Kind::kList;
      for (int64_t x : iv.toIntVector()) t.elems.push_back(number_i64(x));
      t.len = static_cast<int64_t>(t.elems.size());
    } else if (iv.isDoubleList()) {
      t.kind = TV::Kind::kList;
      for (double x : iv.toDoubleVector()) t.elems.push_back(number_f64(x));
      t.len = static_cast<int64_t>(t.elems.size());
    } else if (iv.isBoolList()) {
      t.kind = TV::Kind::kList;
      for (bool x : iv.toBoolList()) t.elems.push_back(number_bool(x));
      t.len = static_cast<int64_t>(t.elems.size());
    } else {
      t.kind = TV::Kind::kOther;  // string, device, ...: read with toIValue where needed
    }
    return t;
  }

  Result<TV> in(size_t i) {
    if (i >= cur_->inputs().size()) return fail("expected at least " + std::to_string(i + 1) + " inputs");
    return get(cur_->inputs()[i]);
  }
  /// Input `name` by the schema's argument name (nullopt if the overload has no such argument).
  std::optional<size_t> arg_index(const std::string& name) const {
    const c10::FunctionSchema* s = cur_->maybeSchema();
    if (!s) return std::nullopt;
    auto i = s->argumentIndexWithName(name);
    if (!i || static_cast<size_t>(*i) >= cur_->inputs().size()) return std::nullopt;
    return static_cast<size_t>(*i);
  }

  std::optional<int64_t> const_int(const TV& t) const {
    if (t.is_tensor() && t.num && !ir::dtype_is_float(t.num->dtype) && t.num->numel() == 1) return t.num->i64_at(0);
    return std::nullopt;
  }
  std::optional<double> const_float(const TV& t) const {
    if (t.is_tensor() && t.num && t.num->numel() == 1) {
      if (t.num->dtype == DType::kF64) {
        double d;
        std::memcpy(&d, t.num->data.data(), 8);
        return d;
      }
      return ir::dtype_is_float(t.num->dtype) ? static_cast<double>(t.num->f32_at(0)) : static_cast<double>(t.num->i64_at(0));
    }
    return std::nullopt;
  }
  Result<int64_t> need_int(size_t i, const std::string& what) {
    KERF_ASSIGN_OR_RETURN(TV t, in(i));
    auto v = const_int(t);
    if (!v) return fail(what + " must be a constant integer");
    return *v;
  }
  Result<std::vector<int64_t>> need_ints(size_t i, const std::string& what) {
    KERF_ASSIGN_OR_RETURN(TV t, in(i));
    std::vector<int64_t> out;
    if (t.kind == TV::Kind::kList && t.shape_of.empty()) {
      for (const TV& e : t.elems) {
        auto v = const_int(e);
        if (!v) return fail(what + " must be constant integers");
        out.push_back(*v);
      }
      return out;
    }
    if (auto v = const_int(t)) return std::vector<int64_t>{*v};
    return fail(what + " must be constant integers");
  }
  Result<int> need_rank(const TV& t, const std::string& what) {
    if (t.rank < 0) return fail("the rank of " + what + " is not known");
    return t.rank;
  }
  Result<DType> dtype_arg(const TV& t) {
    auto v = const_int(t);
    if (!v) return fail("the dtype argument must be a constant");
    auto dt = from_scalar_type(static_cast<c10::ScalarType>(*v));
    if (!dt) return fail("dtype " + std::string(c10::toString(static_cast<c10::ScalarType>(*v))) + " is not supported");
    return *dt;
  }

  /// A 1-D int64 IR value holding int list `t` (aten::size result or a list of numbers / 0-D ints).
  /// expand: a constant -1 ("keep this dim" for aten::expand) becomes 1 (ONNX Expand broadcasting).
  Result<std::string> shape_tensor(const TV& t, bool expand = false) {
    if (!t.shape_of.empty()) return t.shape_of;
    if (t.kind != TV::Kind::kList) {
      if (t.is_tensor() && t.rank == 1) return tensor(t, DType::kI64);
      return fail("expected a list of sizes");
    }
    std::vector<std::string> parts;
    std::vector<int64_t> run;
    auto flush = [&] {
      if (!run.empty()) parts.push_back(const_i64(run));
      run.clear();
    };
    for (const TV& e : t.elems) {
      if (auto v = const_int(e)) {
        run.push_back(expand && *v == -1 ? 1 : *v);
        continue;
      }
      flush();
      KERF_ASSIGN_OR_RETURN(std::string s, tensor(e, DType::kI64));
      if (e.rank == 0) s = emit("Unsqueeze", {s, const_i64({0})});
      else if (e.rank != 1) return fail("a size in the list is not a scalar");
      parts.push_back(s);
    }
    flush();
    if (parts.empty()) return const_i64({});
    if (parts.size() == 1) return parts[0];
    return emit("Concat", parts, {{"axis", int64_t{0}}});
  }

  /// A scalar (0-D) or constant as a 1-element 1-D int64 IR value (Slice starts/ends).
  Result<std::string> one_i64(const TV& t, int64_t if_none) {
    if (t.is_none()) return const_i64({if_none});
    if (auto v = const_int(t)) return const_i64({*v});
    KERF_ASSIGN_OR_RETURN(std::string s, tensor(t, DType::kI64));
    if (t.rank == 0) return emit("Unsqueeze", {s, const_i64({0})});
    return s;
  }

  DType result_type(const std::vector<const TV*>& ops) const {
    DType dim = DType::kUndefined, zero = DType::kUndefined, wrapped = DType::kUndefined;
    for (const TV* t : ops) {
      if (t->wrapped) {
        DType w = ir::dtype_is_float(t->dtype) ? DType::kF32 : t->dtype;  // Python float -> default dtype
        wrapped = promote(wrapped, w);
      } else if (t->rank == 0) {
        zero = promote(zero, t->dtype);
      } else {
        dim = promote(dim, t->dtype);
      }
    }
    return combine(dim, combine(zero, wrapped));
  }
  static int max_rank(const std::vector<const TV*>& ops) {
    int r = 0;
    for (const TV* t : ops) {
      if (t->rank < 0) return -1;
      r = std::max(r, t->rank);
    }
    return r;
  }

  /// Elementwise op with PyTorch's type promotion: operands are cast to the result type.
  Result<TV> binary(const std::string& op, const TV& a, const TV& b, DType compute = DType::kUndefined,
                    const std::string& out = "") {
    DType rt = compute != DType::kUndefined ? compute : result_type({&a, &b});
    KERF_ASSIGN_OR_RETURN(std::string an, tensor(a, rt));
    KERF_ASSIGN_OR_RETURN(std::string bn, tensor(b, rt));
    std::string o = emit(op, {an, bn}, {}, out);
    return out_tensor(o, op == "Equal" ? DType::kBool : rt, max_rank({&a, &b}), a.wrapped && b.wrapped);
  }

  /// `b * alpha` unless alpha is absent or the constant 1.
  Result<TV> scaled(const TV& b, size_t alpha_index) {
    if (alpha_index >= cur_->inputs().size()) return b;
    KERF_ASSIGN_OR_RETURN(TV alpha, in(alpha_index));
    if (alpha.is_none()) return b;
    if (auto f = const_float(alpha); f && *f == 1.0) return b;
    return binary("Mul", b, alpha);
  }

  void set(size_t output, TV t) { tv_[cur_->outputs()[output]] = std::move(t); }
  Status alias(const TV& t) {
    set(0, t);
    return Status::Ok();
  }
  Status done(const TV& t) { return alias(t); }

  static int64_t norm(int64_t d, int rank) { return d < 0 ? d + rank : d; }

  // ---------------------------------------------------------------- conversion
  Status convert(const tj::Node* n) {
    const std::string k = n->kind().toQualString();
    {
      std::string base = n->outputs().empty() ? "" : strip_suffix(n->outputs()[0]->debugName());
      cur_out_ = base.empty() || numeric(base) ? k.substr(k.find("::") + 2) : base;
    }
    const std::string out = n->outputs().size() == 1 ? fresh(cur_out_) : "";

    // ----- lists, tuples, numbers, sizes
    if (k == "prim::ListConstruct" || k == "prim::TupleConstruct") {
      TV t;
      t.kind = TV::Kind::kList;
      for (size_t i = 0; i < n->inputs().size(); ++i) {
        KERF_ASSIGN_OR_RETURN(TV e, in(i));
        t.elems.push_back(std::move(e));
      }
      t.len = static_cast<int64_t>(t.elems.size());
      return done(t);
    }
    if (k == "prim::ListUnpack" || k == "prim::TupleUnpack") {
      KERF_ASSIGN_OR_RETURN(TV l, in(0));
      for (size_t i = 0; i < n->outputs().size(); ++i) {
        const std::string base = strip_suffix(n->outputs()[i]->debugName());
        KERF_ASSIGN_OR_RETURN(TV e, element(l, static_cast<int64_t>(i), numeric(base) ? "" : fresh(base)));
        set(i, std::move(e));
      }
      return Status::Ok();
    }
    if (k == "aten::__getitem__" || k == "prim::TupleIndex") {
      KERF_ASSIGN_OR_RETURN(TV l, in(0));
      if (l.kind != TV::Kind::kList) return fail("indexing is supported on lists only");
      KERF_ASSIGN_OR_RETURN(int64_t i, need_int(1, "the index"));
      KERF_ASSIGN_OR_RETURN(TV e, element(l, i, out));
      return done(e);
    }
    if (k == "aten::len") {
      KERF_ASSIGN_OR_RETURN(TV l, in(0));
      if (l.kind != TV::Kind::kList || l.len < 0) return fail("the length of the list is not known");
      return done(number_i64(l.len));
    }
    if (k == "aten::size") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      if (n->inputs().size() == 1) {
        TV t;
        t.kind = TV::Kind::kList;
        t.shape_of = emit("Shape", {xs}, {}, out);
        t.len = x.rank;
        return done(t);
      }
      KERF_ASSIGN_OR_RETURN(int64_t d, need_int(1, "the dim"));
      std::string s = emit("Shape", {xs});
      return done(out_tensor(emit("Gather", {s, const_i64({d}, true)}, {{"axis", int64_t{0}}}, out), DType::kI64, 0, true));
    }
    if (k == "aten::dim") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(int r, need_rank(x, "the tensor"));
      return done(number_i64(r));
    }
    if (k == "prim::dtype") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      if (x.dtype == DType::kUndefined) return fail("the element type is not known");
      return done(number_i64(static_cast<int64_t>(to_scalar_type(x.dtype))));
    }
    if (k == "prim::device") return done(TV{});
    if (k == "prim::NumToTensor" || k == "aten::ScalarImplicit" || k == "prim::unchecked_cast") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      if (k == "prim::NumToTensor") x.wrapped = false;
      if (k == "aten::ScalarImplicit") x.wrapped = true;
      return done(x);
    }
    if (k == "aten::Int" || k == "aten::IntImplicit" || k == "aten::Float" || k == "aten::FloatImplicit") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      const DType to = (k == "aten::Int" || k == "aten::IntImplicit") ? DType::kI64 : DType::kF64;
      TV r = x;
      if (x.num) {
        r.num = x.num->cast(to);
      } else if (x.dtype != to) {
        KERF_ASSIGN_OR_RETURN(std::string s, tensor(x, to));
        r.name = s;
      }
      r.dtype = to;
      r.wrapped = true;
      return done(r);
    }

    // ----- no-ops
    if (k == "aten::contiguous" || k == "aten::clone" || k == "aten::detach") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      return done(x);
    }
    if (k == "aten::dropout") {
      KERF_ASSIGN_OR_RETURN(TV train, in(2));
      auto t = const_int(train);
      if (!t || *t != 0) return fail("dropout in training mode");
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      return done(x);
    }

    // ----- arithmetic
    if (k == "aten::add" || k == "aten::sub" || k == "aten::rsub") {
      KERF_ASSIGN_OR_RETURN(TV a, in(0));
      KERF_ASSIGN_OR_RETURN(TV b, in(1));
      if (k == "aten::rsub") {  // other - self * alpha
        KERF_ASSIGN_OR_RETURN(TV as, scaled(a, 2));
        KERF_ASSIGN_OR_RETURN(TV r, binary("Sub", b, as, DType::kUndefined, out));
        return done(r);
      }
      KERF_ASSIGN_OR_RETURN(TV bs, scaled(b, 2));
      KERF_ASSIGN_OR_RETURN(TV r, binary(k == "aten::add" ? "Add" : "Sub", a, bs, DType::kUndefined, out));
      return done(r);
    }
    if (k == "aten::mul" || k == "aten::pow" || k == "aten::eq") {
      KERF_ASSIGN_OR_RETURN(TV a, in(0));
      KERF_ASSIGN_OR_RETURN(TV b, in(1));
      KERF_ASSIGN_OR_RETURN(TV r, binary(k == "aten::mul" ? "Mul" : k == "aten::pow" ? "Pow" : "Equal", a, b,
                                         DType::kUndefined, out));
      return done(r);
    }
    if (k == "aten::square") {
      KERF_ASSIGN_OR_RETURN(TV a, in(0));
      KERF_ASSIGN_OR_RETURN(TV r, binary("Pow", a, number_i64(2), DType::kUndefined, out));
      return done(r);
    }
    if (k == "aten::div" || k == "aten::floor_divide" || k == "aten::floordiv") {
      KERF_ASSIGN_OR_RETURN(TV a, in(0));
      KERF_ASSIGN_OR_RETURN(TV b, in(1));
      bool rounding = k != "aten::div";
      if (auto ri = arg_index("rounding_mode")) {
        auto mode = tj::toIValue(cur_->inputs()[*ri]);
        if (mode && mode->isString()) rounding = true;  // "trunc" / "floor": integer division for ints
      }
      DType rt = result_type({&a, &b});
      // True division of integers gives floats (the default dtype); ONNX Div on integers truncates,
      // which equals floor division for the non-negative sizes it is used on.
      if (!rounding && !ir::dtype_is_float(rt)) rt = DType::kF32;
      KERF_ASSIGN_OR_RETURN(TV r, binary("Div", a, b, rt, out));
      return done(r);
    }
    if (k == "aten::neg" || k == "aten::sqrt" || k == "aten::reciprocal" || k == "aten::sigmoid" ||
        k == "aten::rsqrt" || k == "aten::silu") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      DType dt = x.dtype;
      if (k != "aten::neg" && !ir::dtype_is_float(dt)) dt = DType::kF32;
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x, dt));
      std::string o;
      if (k == "aten::neg") o = emit("Neg", {xs}, {}, out);
      else if (k == "aten::sqrt") o = emit("Sqrt", {xs}, {}, out);
      else if (k == "aten::reciprocal") o = emit("Reciprocal", {xs}, {}, out);
      else if (k == "aten::sigmoid") o = emit("Sigmoid", {xs}, {}, out);
      else if (k == "aten::rsqrt") o = emit("Reciprocal", {emit("Sqrt", {xs})}, {}, out);
      else o = emit("Mul", {xs, emit("Sigmoid", {xs})}, {}, out);  // silu, as the ONNX exporter writes it
      return done(out_tensor(o, dt, x.rank, x.wrapped));
    }
    if (k == "aten::where" || k == "aten::masked_fill") {
      const bool mf = k == "aten::masked_fill";
      KERF_ASSIGN_OR_RETURN(TV c, in(mf ? 1 : 0));
      KERF_ASSIGN_OR_RETURN(TV a, in(mf ? 2 : 1));
      KERF_ASSIGN_OR_RETURN(TV b, in(mf ? 0 : 2));
      if (cur_->inputs().size() != 3) return fail("only the three-argument form is supported");
      DType rt = mf ? b.dtype : result_type({&a, &b});
      KERF_ASSIGN_OR_RETURN(std::string cs, tensor(c, DType::kBool));
      KERF_ASSIGN_OR_RETURN(std::string as, tensor(a, rt));
      KERF_ASSIGN_OR_RETURN(std::string bs, tensor(b, rt));
      return done(out_tensor(emit("Where", {cs, as, bs}, {}, out), rt, max_rank({&c, &a, &b})));
    }

    // ----- linear algebra, embedding, normalisation pieces
    if (k == "aten::linear") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(TV w, in(1));
      KERF_ASSIGN_OR_RETURN(TV b, in(2));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      KERF_ASSIGN_OR_RETURN(std::string ws, tensor(w));
      const ir::Tensor* wt = g_.constant(ws);
      const bool has_bias = !b.is_none();
      std::string o;
      if (wt && wt->shape.size() == 2 && ir::dtype_is_float(wt->dtype)) {
        o = emit("Linear", {xs, ws}, {}, has_bias ? "" : out, "kerf");  // x W^T, weight rows = outputs
      } else {
        o = emit("MatMul", {xs, emit("Transpose", {ws}, {{"perm", std::vector<int64_t>{1, 0}}})}, {}, has_bias ? "" : out);
      }
      if (has_bias) {
        KERF_ASSIGN_OR_RETURN(std::string bs, tensor(b, x.dtype));
        o = emit("Add", {o, bs}, {}, out);
      }
      return done(out_tensor(o, x.dtype, x.rank));
    }
    if (k == "aten::matmul" || k == "aten::mm" || k == "aten::bmm") {
      KERF_ASSIGN_OR_RETURN(TV a, in(0));
      KERF_ASSIGN_OR_RETURN(TV b, in(1));
      KERF_ASSIGN_OR_RETURN(std::string as, tensor(a));
      KERF_ASSIGN_OR_RETURN(std::string bs, tensor(b));
      int r = -1;
      if (a.rank >= 2 && b.rank >= 2) r = std::max(a.rank, b.rank);
      else if (a.rank >= 1 && b.rank == 1) r = a.rank - 1;
      else if (a.rank == 1 && b.rank >= 1) r = b.rank - 1;
      return done(out_tensor(emit("MatMul", {as, bs}, {}, out), promote(a.dtype, b.dtype), r));
    }
    if (k == "aten::embedding") {
      KERF_ASSIGN_OR_RETURN(TV w, in(0));
      KERF_ASSIGN_OR_RETURN(TV idx, in(1));
      KERF_ASSIGN_OR_RETURN(std::string ws, tensor(w));
      KERF_ASSIGN_OR_RETURN(std::string is, tensor(idx));
      return done(out_tensor(emit("Gather", {ws, is}, {{"axis", int64_t{0}}}, out), w.dtype,
                             idx.rank < 0 ? -1 : idx.rank + 1));
    }
    if (k == "aten::softmax") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(int64_t dim, need_int(1, "the dim"));
      DType dt = x.dtype;
      if (auto di = arg_index("dtype")) {
        KERF_ASSIGN_OR_RETURN(TV d, get(cur_->inputs()[*di]));
        if (!d.is_none()) {
          KERF_ASSIGN_OR_RETURN(dt, dtype_arg(d));
        }
      }
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x, dt));
      return done(out_tensor(emit("Softmax", {xs}, {{"axis", dim}}, out), dt, x.rank));
    }
    if (k == "aten::mean") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      std::vector<int64_t> axes;
      bool keep = false;
      if (cur_->inputs().size() >= 3) {
        KERF_ASSIGN_OR_RETURN(TV dims, in(1));
        if (!dims.is_none()) {
          KERF_ASSIGN_OR_RETURN(axes, need_ints(1, "the dims"));
        }
        KERF_ASSIGN_OR_RETURN(int64_t kd, need_int(2, "keepdim"));
        keep = kd != 0;
      }
      DType dt = x.dtype;
      if (auto di = arg_index("dtype")) {
        KERF_ASSIGN_OR_RETURN(TV d, get(cur_->inputs()[*di]));
        if (!d.is_none()) {
          KERF_ASSIGN_OR_RETURN(dt, dtype_arg(d));
        }
      }
      // Negative axes (as `mean(-1)` is usually written): the form the RMSNorm pattern matches.
      if (x.rank > 0)
        for (auto& a : axes) a = a >= 0 ? a - x.rank : a;
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x, dt));
      std::map<std::string, ir::AttrValue> attrs = {{"keepdims", int64_t{keep ? 1 : 0}}};
      if (!axes.empty()) attrs["axes"] = axes;
      int r = x.rank < 0 ? -1 : (axes.empty() ? (keep ? x.rank : 0) : (keep ? x.rank : x.rank - static_cast<int>(axes.size())));
      return done(out_tensor(emit("ReduceMean", {xs}, attrs, out), dt, r));
    }

    // ----- shapes and layout
    if (k == "aten::view" || k == "aten::reshape") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(TV size, in(1));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      KERF_ASSIGN_OR_RETURN(std::string ss, shape_tensor(size));
      return done(out_tensor(emit("Reshape", {xs, ss}, {}, out), x.dtype, static_cast<int>(size.len)));
    }
    if (k == "aten::view_as" || k == "aten::reshape_as" || k == "aten::expand_as") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(TV y, in(1));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      KERF_ASSIGN_OR_RETURN(std::string ys, tensor(y));
      const bool ex = k == "aten::expand_as";
      return done(out_tensor(emit(ex ? "Expand" : "Reshape", {xs, emit("Shape", {ys})}, {}, out), x.dtype,
                             ex && x.rank >= 0 && y.rank >= 0 ? std::max(x.rank, y.rank) : y.rank));
    }
    if (k == "aten::expand") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(TV size, in(1));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      KERF_ASSIGN_OR_RETURN(std::string ss, shape_tensor(size, /*expand=*/true));
      return done(out_tensor(emit("Expand", {xs, ss}, {}, out), x.dtype, static_cast<int>(size.len)));
    }
    if (k == "aten::transpose" || k == "aten::t" || k == "aten::permute") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(int r, need_rank(x, "the tensor"));
      std::vector<int64_t> perm(static_cast<size_t>(r));
      for (int i = 0; i < r; ++i) perm[static_cast<size_t>(i)] = i;
      if (k == "aten::transpose") {
        KERF_ASSIGN_OR_RETURN(int64_t d0, need_int(1, "dim0"));
        KERF_ASSIGN_OR_RETURN(int64_t d1, need_int(2, "dim1"));
        d0 = norm(d0, r);
        d1 = norm(d1, r);
        if (d0 < 0 || d1 < 0 || d0 >= r || d1 >= r) return fail("dims out of range for rank " + std::to_string(r));
        std::swap(perm[static_cast<size_t>(d0)], perm[static_cast<size_t>(d1)]);
      } else if (k == "aten::t") {
        if (r == 2) perm = {1, 0};
      } else {
        KERF_ASSIGN_OR_RETURN(perm, need_ints(1, "the dims"));
        if (static_cast<int>(perm.size()) != r) return fail("permutation of the wrong length");
        for (auto& p : perm) p = norm(p, r);
      }
      bool identity = true;
      for (int i = 0; i < r; ++i) identity = identity && perm[static_cast<size_t>(i)] == i;
      if (identity) return done(x);
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      return done(out_tensor(emit("Transpose", {xs}, {{"perm", perm}}, out), x.dtype, r));
    }
    if (k == "aten::unsqueeze" || k == "aten::squeeze") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      const bool un = k == "aten::unsqueeze";
      if (!un && cur_->inputs().size() == 1)
        return done(out_tensor(emit("Squeeze", {xs}, {}, out), x.dtype, -1));
      KERF_ASSIGN_OR_RETURN(int64_t d, need_int(1, "the dim"));
      return done(out_tensor(emit(un ? "Unsqueeze" : "Squeeze", {xs, const_i64({d})}, {}, out), x.dtype,
                             x.rank < 0 ? -1 : x.rank + (un ? 1 : -1)));
    }
    if (k == "aten::cat" || k == "aten::stack") {
      KERF_ASSIGN_OR_RETURN(TV l, in(0));
      KERF_ASSIGN_OR_RETURN(int64_t d, need_int(1, "the dim"));
      if (l.kind != TV::Kind::kList || l.elems.empty()) return fail("expected a non-empty list of tensors");
      std::vector<const TV*> ops;
      for (const TV& e : l.elems) ops.push_back(&e);
      DType rt = result_type(ops);
      int r = max_rank(ops);
      std::vector<std::string> parts;
      for (const TV& e : l.elems) {
        KERF_ASSIGN_OR_RETURN(std::string s, tensor(e, rt));
        if (k == "aten::stack") s = emit("Unsqueeze", {s, const_i64({d})});
        parts.push_back(s);
      }
      if (k == "aten::stack" && r >= 0) ++r;
      return done(out_tensor(emit("Concat", parts, {{"axis", d}}, out), rt, r));
    }
    if (k == "aten::slice") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(int64_t dim, need_int(1, "the dim"));
      KERF_ASSIGN_OR_RETURN(TV start, in(2));
      KERF_ASSIGN_OR_RETURN(TV end, in(3));
      KERF_ASSIGN_OR_RETURN(int64_t step, need_int(4, "the step"));
      const auto s0 = const_int(start), e0 = const_int(end);
      const bool from_start = start.is_none() || (s0 && *s0 == 0);
      const bool to_end = end.is_none() || (e0 && *e0 == std::numeric_limits<int64_t>::max());
      if (from_start && to_end && step == 1) return done(x);  // x[:, :] and friends
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      KERF_ASSIGN_OR_RETURN(std::string ss, one_i64(start, 0));
      KERF_ASSIGN_OR_RETURN(std::string es, one_i64(end, std::numeric_limits<int64_t>::max()));
      return done(out_tensor(emit("Slice", {xs, ss, es, const_i64({dim}), const_i64({step})}, {}, out), x.dtype, x.rank));
    }
    if (k == "aten::select") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(int64_t dim, need_int(1, "the dim"));
      KERF_ASSIGN_OR_RETURN(TV idx, in(2));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      std::string is;
      if (auto c = const_int(idx)) {
        is = const_i64({*c}, true);
      } else {
        KERF_ASSIGN_OR_RETURN(is, tensor(idx, DType::kI64));
      }
      return done(out_tensor(emit("Gather", {xs, is}, {{"axis", dim}}, out), x.dtype, x.rank < 0 ? -1 : x.rank - 1));
    }
    if (k == "aten::to" || k == "aten::type_as") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      DType to = DType::kUndefined;
      if (k == "aten::type_as") {
        KERF_ASSIGN_OR_RETURN(TV y, in(1));
        to = y.dtype;
      } else if (auto di = arg_index("dtype")) {
        KERF_ASSIGN_OR_RETURN(TV d, get(cur_->inputs()[*di]));
        if (!d.is_none()) {
          KERF_ASSIGN_OR_RETURN(to, dtype_arg(d));
        }
      } else if (auto oi = arg_index("other")) {
        KERF_ASSIGN_OR_RETURN(TV y, get(cur_->inputs()[*oi]));
        to = y.dtype;
      }
      if (to == DType::kUndefined || to == x.dtype) return done(x);  // a device move or no-op
      if (x.num) {
        TV r = x;
        r.num = x.num->cast(to);
        r.dtype = to;
        return done(r);
      }
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      return done(out_tensor(emit("Cast", {xs}, {{"to", onnx_type(to)}}, out), to, x.rank, x.wrapped));
    }
    if (k == "aten::full" || k == "aten::zeros" || k == "aten::ones" || k == "aten::full_like" ||
        k == "aten::zeros_like" || k == "aten::ones_like") {
      const bool like = k.size() > 5 && k.compare(k.size() - 5, 5, "_like") == 0;
      const bool full = k.rfind("aten::full", 0) == 0;
      KERF_ASSIGN_OR_RETURN(TV src, in(0));
      double fill = k.rfind("aten::ones", 0) == 0 ? 1.0 : 0.0;
      DType dt = like ? src.dtype : DType::kF32;
      if (full) {
        KERF_ASSIGN_OR_RETURN(TV f, in(1));
        auto fv = const_float(f);
        if (!fv) return fail("the fill value must be a constant");
        fill = *fv;
        if (!like && f.dtype != DType::kUndefined && !ir::dtype_is_float(f.dtype)) dt = f.dtype;  // torch.full(.., 3) is int64
      }
      if (auto di = arg_index("dtype")) {
        KERF_ASSIGN_OR_RETURN(TV d, get(cur_->inputs()[*di]));
        if (!d.is_none()) {
          KERF_ASSIGN_OR_RETURN(dt, dtype_arg(d));
        }
      }
      std::string shape;
      int r = -1;
      if (like) {
        KERF_ASSIGN_OR_RETURN(std::string xs, tensor(src));
        shape = emit("Shape", {xs});
        r = src.rank;
      } else {
        KERF_ASSIGN_OR_RETURN(shape, shape_tensor(src));
        r = static_cast<int>(src.len);
      }
      ir::Tensor value = ir::dtype_is_float(dt) ? number_f64(fill).num->cast(dt)
                                                : ir::Tensor::from_i64({}, {static_cast<int64_t>(fill)}, dt);
      value.shape = {1};
      return done(out_tensor(emit("ConstantOfShape", {shape}, {{"value", value}}, out), dt, r));
    }
    if (k == "aten::triu" || k == "aten::tril") {
      KERF_ASSIGN_OR_RETURN(TV x, in(0));
      KERF_ASSIGN_OR_RETURN(TV d, in(1));
      KERF_ASSIGN_OR_RETURN(std::string xs, tensor(x));
      std::string ds;
      if (auto c = const_int(d)) {
        ds = const_i64({*c}, true);
      } else {
        KERF_ASSIGN_OR_RETURN(ds, tensor(d, DType::kI64));
      }
      return done(out_tensor(emit("Trilu", {xs, ds}, {{"upper", int64_t{k == "aten::triu" ? 1 : 0}}}, out), x.dtype, x.rank));
    }
    return fail("no mapping (a kerf bug: the op is listed as supported)");
  }

  /// Element i of a list; `out` names the Gather that reads a size from a Shape ("" = generated).
  Result<TV> element(const TV& l, int64_t i, const std::string& out = "") {
    if (l.kind != TV::Kind::kList) return fail("expected a list");
    if (!l.shape_of.empty()) {
      if (l.len >= 0 && i < 0) i += l.len;
      if (i < 0) return fail("negative index into a list of unknown length");
      return out_tensor(emit("Gather", {l.shape_of, const_i64({i}, true)}, {{"axis", int64_t{0}}}, out), DType::kI64, 0, true);
    }
    if (i < 0) i += static_cast<int64_t>(l.elems.size());
    if (i < 0 || i >= static_cast<int64_t>(l.elems.size())) return fail("list index " + std::to_string(i) + " out of range");
    return l.elems[static_cast<size_t>(i)];
  }

  Status set_outputs(tj::Graph& graph) {
    std::vector<TV> outs;
    std::function<Status(const TV&)> flatten = [&](const TV& t) -> Status {
      if (t.kind == TV::Kind::kList && t.shape_of.empty()) {
        for (const TV& e : t.elems) KERF_RETURN_IF_ERROR(flatten(e));
        return Status::Ok();
      }
      if (!t.is_tensor()) return Unsupported(file_ + ": forward() returns something that is not a tensor");
      outs.push_back(t);
      return Status::Ok();
    };
    std::vector<std::string> bases;
    for (const tj::Value* v : graph.outputs()) {
      cur_ = v->node();
      KERF_ASSIGN_OR_RETURN(TV t, get(v));
      const size_t before = outs.size();
      KERF_RETURN_IF_ERROR(flatten(t));
      std::string base = strip_suffix(v->debugName());
      for (size_t i = before; i < outs.size(); ++i) bases.push_back(numeric(base) || outs.size() - before > 1 ? "" : base);
    }
    if (outs.empty()) return Unsupported(file_ + ": forward() returns no tensor");
    std::set<std::string> graph_inputs(g_.inputs.begin(), g_.inputs.end());
    for (size_t i = 0; i < outs.size(); ++i) {
      std::string want = bases[i].empty() ? (outs.size() == 1 ? "output" : "output_" + std::to_string(i)) : bases[i];
      cur_out_ = want;
      KERF_ASSIGN_OR_RETURN(std::string cur, tensor(outs[i]));
      const bool renamable = g_.producer(cur) >= 0 && !graph_inputs.count(cur) &&
                             std::find(g_.outputs.begin(), g_.outputs.end(), cur) == g_.outputs.end();
      std::string name = cur;
      if (!renamable) {
        name = emit("Identity", {cur}, {}, fresh(want));
      } else if (cur != want && !used_.count(want) && !g_.initializers.count(want)) {
        name = want;
        used_.insert(name);
        for (auto& nd : g_.nodes) {
          for (auto& s : nd.inputs) if (s == cur) s = name;
          for (auto& s : nd.outputs) if (s == cur) s = name;
          if (nd.name == cur) nd.name = name;
        }
      }
      g_.outputs.push_back(name);
      ir::ValueInfo vi;
      vi.dtype = outs[i].dtype;
      g_.values[name] = vi;  // element type; the shape is left to infer-shapes
    }
    return Status::Ok();
  }
};

}  // namespace

const std::vector<std::string>& supported_torchscript_ops() { return kSupported(); }

bool is_torchscript_archive(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  if (!f.read(magic, 4)) return false;
  return std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

Result<ir::Graph> import_torchscript(const std::string& path, const TorchScriptImportOptions& opt) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return IoError(path + ": no such file");
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return IoError(path + ": cannot stat: " + ec.message());
  if (size > opt.max_file_bytes)
    return ResourceLimit(path + ": " + std::to_string(size) + " bytes is over the " + std::to_string(opt.max_file_bytes) +
                    "-byte limit for a TorchScript archive");
  if (!is_torchscript_archive(path)) return BadInput(path + ": not a TorchScript archive (no zip header)");
  {
    // The zip directory and the pickles' length fields, checked before LibTorch trusts them
    // (archive_check.h). Mapped, not read: archives can be gigabytes.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return IoError(path + ": cannot open: " + std::strerror(errno));
    void* map = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) return IoError(path + ": cannot map: " + std::strerror(errno));
    const Status st = torchscript::check_torchscript_archive(static_cast<const uint8_t*>(map), size_t(size),
                                                             path + ": not a loadable TorchScript archive");
    ::munmap(map, size_t(size));
    KERF_RETURN_IF_ERROR(st);
  }
  try {
    torch::jit::Module module;
    try {
      module = torch::jit::load(path, torch::kCPU);
    } catch (const c10::Error& e) {
      return BadInput(path + ": not a loadable TorchScript archive: " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      return BadInput(path + ": not a loadable TorchScript archive: " + e.what());
    }
    module.eval();
    torch::NoGradGuard no_grad;
    Importer imp(path);
    return imp.run(module);
  } catch (const c10::Error& e) {
    return Internal(path + ": LibTorch failed while importing: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(path + ": LibTorch failed while importing: " + e.what());
  }
}

}  // namespace kerf
