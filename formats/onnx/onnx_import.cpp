#include "formats/onnx/onnx_import.h"

#include <google/protobuf/io/coded_stream.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace kerf {
namespace {

namespace fs = std::filesystem;
using ir::DType;

const std::vector<std::string>& kSupported() {
  static const std::vector<std::string> ops = {
      "Add",    "Cast",       "Concat",  "Constant", "ConstantOfShape", "DequantizeLinear", "Div",     "Equal",
      "Expand", "Gather",     "Identity", "MatMul",  "Mul",             "Neg",     "Pow",   "QuantizeLinear",
      "Range",  "Reciprocal", "ReduceMean", "Reshape", "Shape",         "Sigmoid", "Slice",
      "Softmax", "Sqrt",      "Squeeze", "Sub",      "Transpose",       "Trilu",   "Unsqueeze",
      "Where"};
  return ops;
}

Result<DType> map_dtype(int32_t t, const std::string& what) {
  switch (t) {
    case onnx::TensorProto::FLOAT: return DType::kF32;
    case onnx::TensorProto::FLOAT16: return DType::kF16;
    case onnx::TensorProto::BFLOAT16: return DType::kBF16;
    case onnx::TensorProto::DOUBLE: return DType::kF64;
    case onnx::TensorProto::INT64: return DType::kI64;
    case onnx::TensorProto::INT32: return DType::kI32;
    case onnx::TensorProto::INT8: return DType::kI8;
    case onnx::TensorProto::UINT8: return DType::kU8;
    case onnx::TensorProto::BOOL: return DType::kBool;
    default:
      if (!onnx::TensorProto::DataType_IsValid(t) || t == onnx::TensorProto::UNDEFINED)
        return BadInput(what + ": ONNX element type " + std::to_string(t) + " is not a valid ONNX data type");
      return Unsupported(what + ": ONNX element type " + std::to_string(t) + " (" +
                         onnx::TensorProto::DataType_Name(static_cast<onnx::TensorProto::DataType>(t)) +
                         ") is not supported");
  }
}

/// A decimal external-data offset / length; std::stoull would throw on "lots" or an overflow.
Result<uint64_t> parse_external_number(const std::string& v, const std::string& what, const std::string& key) {
  uint64_t x = 0;
  const auto r = std::from_chars(v.data(), v.data() + v.size(), x);  // digits only, overflow is an error
  if (v.empty() || r.ec != std::errc() || r.ptr != v.data() + v.size()) return BadInput(what + ": external data " + key + " '" + v + "' is not a number");
  return x;
}

Result<ir::Tensor> convert_tensor(const onnx::TensorProto& tp, const std::string& what, const fs::path& base_dir) {
  KERF_ASSIGN_OR_RETURN(DType dt, map_dtype(tp.data_type(), what));
  ir::Tensor t;
  t.dtype = dt;
  uint64_t numel = 1;
  if (tp.dims_size() > kOnnxMaxRank)
    return ResourceLimit(what + ": rank " + std::to_string(tp.dims_size()) + " is over kerf's limit of " +
                         std::to_string(kOnnxMaxRank));
  for (int64_t d : tp.dims()) {
    if (d < 0) return BadInput(what + ": negative dimension " + std::to_string(d));
    if (d != 0 && numel > (1ull << 40) / static_cast<uint64_t>(d))
      return BadInput(what + ": shape has too many elements");
    numel *= static_cast<uint64_t>(d);
    t.shape.push_back(d);
  }
  const size_t esize = ir::dtype_size(dt);
  const uint64_t nbytes = numel * esize;
  if (tp.data_location() == onnx::TensorProto::EXTERNAL) {
    std::string location;
    uint64_t offset = 0, length = nbytes;
    bool has_length = false;
    for (const auto& kv : tp.external_data()) {
      if (kv.key() == "location") location = kv.value();
      else if (kv.key() == "offset") {
        KERF_ASSIGN_OR_RETURN(offset, parse_external_number(kv.value(), what, "offset"));
      } else if (kv.key() == "length") {
        KERF_ASSIGN_OR_RETURN(length, parse_external_number(kv.value(), what, "length"));
        has_length = true;
      }
    }
    if (location.empty()) return BadInput(what + ": external data without a location");
    fs::path p = (base_dir / location).lexically_normal();
    const fs::path base = base_dir.lexically_normal();
    auto rel = p.lexically_relative(base);
    if (fs::path(location).is_absolute() || rel.empty() || *rel.begin() == "..")
      return BadInput(what + ": external data location '" + location + "' escapes the model's folder");
    if (has_length && length != nbytes)
      return BadInput(what + ": external data length " + std::to_string(length) + " but shape and dtype need " +
                      std::to_string(nbytes) + " bytes");
    // A symlink inside the folder may still point outside it: compare the resolved paths too.
    std::error_code ec_p, ec_b;
    const fs::path real = fs::weakly_canonical(p, ec_p), real_base = fs::weakly_canonical(base, ec_b);
    if (!ec_p && !ec_b) {
      const fs::path real_rel = real.lexically_relative(real_base);
      if (real_rel.empty() || *real_rel.begin() == "..")
        return BadInput(what + ": external data location '" + location + "' resolves to '" + real.string() +
                        "', outside the model's folder");
    }
    std::ifstream f(p, std::ios::binary);
    if (!f) return IoError(what + ": cannot open external data file '" + p.string() + "'");
    f.seekg(0, std::ios::end);
    const uint64_t fsize = static_cast<uint64_t>(f.tellg());
    if (offset > fsize || nbytes > fsize - offset)
      return BadInput(what + ": external data [" + std::to_string(offset) + ", +" + std::to_string(nbytes) +
                      ") is outside '" + p.string() + "' (" + std::to_string(fsize) + " bytes)");
    t.data.resize(nbytes);
    f.seekg(static_cast<std::streamoff>(offset));
    f.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(nbytes));
    if (!f) return IoError(what + ": short read from '" + p.string() + "'");
    return t;
  }
  if (tp.has_raw_data()) {
    if (tp.raw_data().size() != nbytes)
      return BadInput(what + ": raw_data has " + std::to_string(tp.raw_data().size()) + " bytes, shape " +
                      "and dtype need " + std::to_string(nbytes));
    t.data.assign(tp.raw_data().begin(), tp.raw_data().end());
    return t;
  }
  auto count_err = [&](size_t have) {
    return BadInput(what + ": has " + std::to_string(have) + " values, shape needs " + std::to_string(numel));
  };
  std::vector<float> fv;
  std::vector<int64_t> iv;
  switch (dt) {
    case DType::kF32:
      if (static_cast<uint64_t>(tp.float_data_size()) != numel) return count_err(tp.float_data_size());
      fv.assign(tp.float_data().begin(), tp.float_data().end());
      return ir::Tensor::from_f32(t.shape, fv, dt);
    case DType::kF64: {
      if (static_cast<uint64_t>(tp.double_data_size()) != numel) return count_err(tp.double_data_size());
      t.data.resize(nbytes);
      std::memcpy(t.data.data(), tp.double_data().data(), nbytes);
      return t;
    }
    case DType::kF16:
    case DType::kBF16: {  // stored as uint16 bit patterns in int32_data
      if (static_cast<uint64_t>(tp.int32_data_size()) != numel) return count_err(tp.int32_data_size());
      t.data.resize(nbytes);
      for (uint64_t i = 0; i < numel; ++i) {
        uint16_t h = static_cast<uint16_t>(tp.int32_data(static_cast<int>(i)));
        std::memcpy(t.data.data() + 2 * i, &h, 2);
      }
      return t;
    }
    case DType::kI64:
      if (static_cast<uint64_t>(tp.int64_data_size()) != numel) return count_err(tp.int64_data_size());
      iv.assign(tp.int64_data().begin(), tp.int64_data().end());
      return ir::Tensor::from_i64(t.shape, iv, dt);
    default:
      if (static_cast<uint64_t>(tp.int32_data_size()) != numel) return count_err(tp.int32_data_size());
      iv.assign(tp.int32_data().begin(), tp.int32_data().end());
      return ir::Tensor::from_i64(t.shape, iv, dt);
  }
}

Result<ir::ValueInfo> convert_value_info(const onnx::ValueInfoProto& vi) {
  ir::ValueInfo out;
  if (!vi.type().has_tensor_type()) return Unsupported("value '" + vi.name() + "' is not a tensor");
  const auto& tt = vi.type().tensor_type();
  if (tt.elem_type() != 0) {
    KERF_ASSIGN_OR_RETURN(out.dtype, map_dtype(tt.elem_type(), "value '" + vi.name() + "'"));
  }
  if (tt.has_shape()) {
    if (tt.shape().dim_size() > kOnnxMaxRank)
      return ResourceLimit("value '" + vi.name() + "': rank " + std::to_string(tt.shape().dim_size()) +
                           " is over kerf's limit of " + std::to_string(kOnnxMaxRank));
    out.rank_known = true;
    for (const auto& d : tt.shape().dim()) {
      if (d.has_dim_value()) {
        if (d.dim_value() < 0) return BadInput("value '" + vi.name() + "' has a negative dimension");
        out.shape.push_back(ir::Dim::of(d.dim_value()));
      } else {
        out.shape.push_back(ir::Dim::sym(d.dim_param()));
      }
    }
  }
  return out;
}

Result<ir::AttrValue> convert_attr(const onnx::AttributeProto& a, const std::string& where, const fs::path& base) {
  switch (a.type()) {
    case onnx::AttributeProto::INT: return ir::AttrValue(static_cast<int64_t>(a.i()));
    case onnx::AttributeProto::FLOAT: return ir::AttrValue(static_cast<double>(a.f()));
    case onnx::AttributeProto::STRING: return ir::AttrValue(a.s());
    case onnx::AttributeProto::INTS: return ir::AttrValue(std::vector<int64_t>(a.ints().begin(), a.ints().end()));
    case onnx::AttributeProto::FLOATS: {
      std::vector<double> v(a.floats().begin(), a.floats().end());
      return ir::AttrValue(std::move(v));
    }
    case onnx::AttributeProto::TENSOR: {
      KERF_ASSIGN_OR_RETURN(ir::Tensor t, convert_tensor(a.t(), where + " attribute '" + a.name() + "'", base));
      return ir::AttrValue(std::move(t));
    }
    default:
      return Unsupported(where + ": attribute '" + a.name() + "' of type " +
                         onnx::AttributeProto::AttributeType_Name(a.type()) +
                         " (subgraphs / control flow are not supported)");
  }
}

}  // namespace

const std::vector<std::string>& supported_onnx_ops() { return kSupported(); }

Result<ir::Graph> import_onnx_bytes(const void* data, size_t size, const std::string& base_dir,
                                    const std::string& display_name, const OnnxImportOptions& opt) {
  if (size > opt.max_file_bytes)
    return ResourceLimit(display_name + ": " + std::to_string(size) + " bytes is over the " +
                    std::to_string(opt.max_file_bytes) + "-byte limit for one ONNX file (use external data)");
  onnx::ModelProto model;
  {
    google::protobuf::io::CodedInputStream in(static_cast<const uint8_t*>(data), static_cast<int>(size));
    in.SetTotalBytesLimit(static_cast<int>(std::min<uint64_t>(opt.max_file_bytes, (2ull << 30) - 1)));
    in.SetRecursionLimit(64);
    if (!model.ParseFromCodedStream(&in) || !in.ConsumedEntireMessage())
      return BadInput(display_name + ": not a valid ONNX ModelProto (protobuf parse failed)");
  }
  if (!model.has_graph()) return BadInput(display_name + ": ONNX model has no graph");
  const fs::path base(base_dir.empty() ? "." : base_dir);

  ir::Graph g;
  g.name = model.graph().name();
  g.metadata["source.format"] = "onnx";
  g.metadata["source.file"] = display_name;
  if (!model.producer_name().empty())
    g.metadata["source.producer"] = model.producer_name() + " " + model.producer_version();
  bool have_default = false;
  for (const auto& os : model.opset_import()) {
    if (os.domain().empty() || os.domain() == "ai.onnx") {
      g.opset = os.version();
      have_default = true;
    }
  }
  if (!have_default) return BadInput(display_name + ": no opset_import for the default ONNX domain");
  if (g.opset < 13 || g.opset > 21)
    return Unsupported(display_name + ": opset " + std::to_string(g.opset) +
                       " of the default domain; kerf imports opsets 13 to 21");
  g.metadata["source.opset"] = std::to_string(g.opset);

  const auto& gp = model.graph();
  if (static_cast<size_t>(gp.node_size()) > opt.max_nodes)
    return ResourceLimit(display_name + ": " + std::to_string(gp.node_size()) + " nodes is over the limit of " +
                         std::to_string(opt.max_nodes));
  for (const auto& init : gp.initializer()) {
    if (init.name().empty()) return BadInput(display_name + ": an initializer has no name");
    if (g.initializers.count(init.name()))
      return BadInput(display_name + ": initializer '" + init.name() + "' is defined twice");
    KERF_ASSIGN_OR_RETURN(ir::Tensor t, convert_tensor(init, display_name + ": initializer '" + init.name() + "'", base));
    g.initializers.emplace(init.name(), std::move(t));
  }
  for (const auto& in : gp.input()) {
    if (g.initializers.count(in.name())) continue;  // IR < 4 style: initializers listed as inputs
    auto vi = convert_value_info(in);
    if (!vi.ok()) return vi.status().with_context(display_name + ": graph input");
    g.inputs.push_back(in.name());
    g.values[in.name()] = *vi;
  }
  for (const auto& out : gp.output()) {
    auto vi = convert_value_info(out);
    if (!vi.ok()) return vi.status().with_context(display_name + ": graph output");
    g.outputs.push_back(out.name());
    g.values[out.name()] = *vi;
  }
  for (const auto& vi : gp.value_info()) {
    auto r = convert_value_info(vi);
    if (r.ok()) g.values[vi.name()] = *r;
  }

  // Unsupported ops are collected over the whole graph and reported together.
  std::map<std::string, std::vector<std::string>> unsupported;
  const auto& supported = kSupported();
  int index = 0;
  for (const auto& np : gp.node()) {
    const std::string name = np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name();
    ++index;
    const bool default_domain = np.domain().empty() || np.domain() == "ai.onnx";
    if (!default_domain || !std::binary_search(supported.begin(), supported.end(), np.op_type())) {
      std::string key = default_domain ? np.op_type() : np.domain() + "::" + np.op_type();
      unsupported[key].push_back(name);
      continue;
    }
    if (np.op_type() == "Constant") {
      if (np.output_size() != 1) return BadInput(display_name + ": Constant node '" + name + "' needs one output");
      const std::string out = np.output(0);
      if (g.initializers.count(out)) return BadInput(display_name + ": value '" + out + "' is defined twice");
      ir::Tensor t;
      bool set = false;
      for (const auto& a : np.attribute()) {
        const std::string where = display_name + ": Constant '" + name + "'";
        if (a.name() == "value") {
          KERF_ASSIGN_OR_RETURN(t, convert_tensor(a.t(), where, base));
        } else if (a.name() == "value_float") {
          t = ir::Tensor::from_f32({}, {a.f()});
        } else if (a.name() == "value_floats") {
          t = ir::Tensor::from_f32({a.floats_size()}, std::vector<float>(a.floats().begin(), a.floats().end()));
        } else if (a.name() == "value_int") {
          t = ir::Tensor::from_i64({}, {a.i()});
        } else if (a.name() == "value_ints") {
          t = ir::Tensor::from_i64({a.ints_size()}, std::vector<int64_t>(a.ints().begin(), a.ints().end()));
        } else {
          return Unsupported(where + ": attribute '" + a.name() + "' is not supported");
        }
        set = true;
      }
      if (!set) return BadInput(display_name + ": Constant node '" + name + "' has no value");
      g.initializers.emplace(out, std::move(t));
      continue;
    }
    ir::Node n;
    n.op = np.op_type();
    n.name = name;
    n.inputs.assign(np.input().begin(), np.input().end());
    n.outputs.assign(np.output().begin(), np.output().end());
    for (const auto& a : np.attribute()) {
      KERF_ASSIGN_OR_RETURN(n.attrs[a.name()], convert_attr(a, display_name + ": node '" + name + "'", base));
    }
    // Opset 18 moved ReduceMean's axes from an attribute to an input: back to the attribute form the
    // passes and the reference executor read (the only op of the list whose signature changed in 18-21).
    if (g.opset >= 18 && n.op == "ReduceMean" && n.inputs.size() >= 2 && !n.inputs[1].empty()) {
      auto ax = g.initializers.find(n.inputs[1]);
      if (ax == g.initializers.end() || ax->second.dtype != DType::kI64)
        return Unsupported(display_name + ": ReduceMean node '" + name + "' (opset " + std::to_string(g.opset) +
                           ") takes its axes from '" + n.inputs[1] + "', which is not an int64 constant");
      n.attrs["axes"] = ir::AttrValue(ax->second.to_i64());
      n.inputs.resize(1);
    }
    g.nodes.push_back(std::move(n));
  }
  if (!unsupported.empty()) {
    std::ostringstream os;
    size_t count = 0;
    for (const auto& [op, names] : unsupported) count += names.size();
    os << display_name << ": " << count << " node(s) use ops kerf does not support:";
    for (const auto& [op, names] : unsupported) {
      os << "\n  " << op << " (" << names.size() << "): ";
      for (size_t i = 0; i < names.size() && i < 8; ++i) os << (i ? ", " : "") << names[i];
      if (names.size() > 8) os << ", ... " << names.size() - 8 << " more";
    }
    return Unsupported(os.str());
  }
  Status st = g.validate();
  if (!st.ok()) return st.with_context(display_name);
  return g;
}

Result<ir::Graph> import_onnx(const std::string& path, const OnnxImportOptions& opt) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return IoError(path + ": no such file");
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return IoError(path + ": cannot stat: " + ec.message());
  if (size > opt.max_file_bytes)
    return ResourceLimit(path + ": " + std::to_string(size) + " bytes is over the " +
                         std::to_string(opt.max_file_bytes) + "-byte limit for one ONNX file (use external data)");
  std::ifstream f(path, std::ios::binary);
  if (!f) return IoError(path + ": cannot open");
  std::string bytes(size, '\0');
  f.read(bytes.data(), static_cast<std::streamsize>(size));
  if (!f) return IoError(path + ": short read");
  fs::path parent = fs::path(path).parent_path();
  return import_onnx_bytes(bytes.data(), bytes.size(), parent.empty() ? "." : parent.string(), path, opt);
}

}  // namespace kerf
