#include "compiler/targets/profile.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "compiler/pipeline/yaml_fields.h"

namespace kerf::targets {

// Generated at build time from compiler/targets/*.yaml (CMakeLists.txt): {file stem, text}.
extern const std::vector<std::pair<std::string, std::string>>& builtin_profile_texts();

namespace {

const std::set<std::string> kOps = {"Embedding", "RMSNorm", "Linear", "Rotary", "Attention", "GatedFFN", "Add"};
const std::set<std::string> kFloatWeights = {"f32", "f16", "bf16", "q8_sym", "q4_asym", "qsym", "qasym", "ternary", "binary"};
const std::set<std::string> kNpuWeights = {"int8", "int4"};
const std::set<std::string> kKernels = {"native", "avx2", "avx512vnni", "neon", "neondot", "scalar", "plain"};

std::string join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
  return out;
}

using pipeline::yaml::check_keys;
using pipeline::yaml::Ctx;
using pipeline::yaml::get;

template <typename T>
Status need(const Ctx& c, const YAML::Node& parent, const std::string& where, const std::string& key, T* out) {
  const YAML::Node n = parent[key];
  if (!n) return c.err(where + "." + key, "missing (required)");
  return get(c, n, where + "." + key, out);
}

Status number_in(const Ctx& c, const std::string& key, double v, double lo_excl, double hi, const std::string& unit) {
  if (!std::isfinite(v) || !(v > lo_excl) || v > hi) {
    std::ostringstream os;
    os << v << " is impossible (must be > " << lo_excl << " and <= " << hi << " " << unit << ")";
    return c.err(key, os.str());
  }
  return Status::Ok();
}

Status parse_unit(const Ctx& c, const YAML::Node& n, const std::string& kind, UnitProfile* u) {
  const std::string w = "units." + kind;
  std::set<std::string> keys = {"api", "device", "features", "ops", "weights", "gops", "bandwidth_gbs", "launch_us",
                                "transfer_us", "sources"};
  if (kind == "cpu") keys.insert({"kernels", "threads"});
  if (kind == "npu") keys.insert({"activation_bits", "weight_bits", "max_tokens"});
  KERF_RETURN_IF_ERROR(check_keys(c, n, w, keys));
  u->present = true;
  KERF_RETURN_IF_ERROR(need(c, n, w, "api", &u->api));
  if (n["device"]) KERF_RETURN_IF_ERROR(get(c, n["device"], w + ".device", &u->device));
  if (n["features"]) KERF_RETURN_IF_ERROR(get(c, n["features"], w + ".features", &u->features));
  std::vector<std::string> ops, weights;
  KERF_RETURN_IF_ERROR(need(c, n, w, "ops", &ops));
  KERF_RETURN_IF_ERROR(need(c, n, w, "weights", &weights));
  for (const auto& o : ops) {
    if (!kOps.count(o)) return c.err(w + ".ops", "unknown op '" + o + "' (known: " + join(kOps) + ")");
    u->ops.insert(o);
  }
  const std::set<std::string>& wk = kind == "npu" ? kNpuWeights : kFloatWeights;
  for (const auto& x : weights) {
    if (!wk.count(x)) return c.err(w + ".weights", "unknown weight precision '" + x + "' for a " + kind + " (known: " + join(wk) + ")");
    u->weights.insert(x);
  }
  if (u->ops.empty()) return c.err(w + ".ops", "empty: a unit that runs no op should be left out");
  if (u->weights.empty() && (u->ops.count("Linear") || u->ops.count("GatedFFN") || u->ops.count("Embedding")))
    return c.err(w + ".weights", "empty, but the unit runs ops with weights");
  KERF_RETURN_IF_ERROR(need(c, n, w, "gops", &u->gops));
  KERF_RETURN_IF_ERROR(number_in(c, w + ".gops", u->gops, 0, 1e6, "GOPS"));
  KERF_RETURN_IF_ERROR(need(c, n, w, "bandwidth_gbs", &u->bandwidth_gbs));
  KERF_RETURN_IF_ERROR(number_in(c, w + ".bandwidth_gbs", u->bandwidth_gbs, 0, 1e4, "GB/s"));
  if (n["launch_us"]) KERF_RETURN_IF_ERROR(get(c, n["launch_us"], w + ".launch_us", &u->launch_us));
  if (n["transfer_us"]) KERF_RETURN_IF_ERROR(get(c, n["transfer_us"], w + ".transfer_us", &u->transfer_us));
  if (!std::isfinite(u->launch_us) || u->launch_us < 0 || u->launch_us > 1e6)
    return c.err(w + ".launch_us", "must be in [0, 1e6] microseconds");
  if (!std::isfinite(u->transfer_us) || u->transfer_us < 0 || u->transfer_us > 1e6)
    return c.err(w + ".transfer_us", "must be in [0, 1e6] microseconds");
  KERF_RETURN_IF_ERROR(need(c, n, w, "sources", &u->sources));
  if (u->sources.empty()) return c.err(w + ".sources", "empty: say where the figures come from");
  if (kind == "cpu") {
    if (u->api != "x86-64" && u->api != "arm64" && u->api != "native")
      return c.err(w + ".api", "'" + u->api + "' (known: x86-64, arm64, native = the machine kerf runs on)");
    KERF_RETURN_IF_ERROR(need(c, n, w, "kernels", &u->kernels));
    if (!kKernels.count(u->kernels)) return c.err(w + ".kernels", "unknown '" + u->kernels + "' (known: " + join(kKernels) + ")");
    const bool x86k = u->kernels == "avx2" || u->kernels == "avx512vnni", armk = u->kernels == "neon" || u->kernels == "neondot";
    if (u->kernels == "native" && u->api != "native")
      return c.err(w + ".kernels", "'native' kernels need api 'native' (the machine kerf runs on)");
    if ((x86k && u->api != "x86-64") || (armk && u->api != "arm64"))
      return c.err(w + ".kernels", "'" + u->kernels + "' kernels do not exist on " + u->api);
    KERF_RETURN_IF_ERROR(need(c, n, w, "threads", &u->threads));
    if (u->threads < 1 || u->threads > 1024) return c.err(w + ".threads", std::to_string(u->threads) + " is not in [1, 1024]");
    for (const auto& o : kOps)
      if (!u->ops.count(o)) return c.err(w + ".ops", "the cpu must run every op (missing " + o + ")");
  } else if (kind == "gpu") {
    if (u->api != "opencl-1.2" && u->api != "opencl-3.0")
      return c.err(w + ".api", "'" + u->api + "' (known: opencl-1.2, opencl-3.0)");
  } else {  // npu
    KERF_RETURN_IF_ERROR(need(c, n, w, "activation_bits", &u->activation_bits));
    if (u->activation_bits != 8 && u->activation_bits != 16)
      return c.err(w + ".activation_bits", std::to_string(u->activation_bits) + " (an npu takes 8 or 16)");
    KERF_RETURN_IF_ERROR(need(c, n, w, "weight_bits", &u->weight_bits));
    if (u->weight_bits != 4 && u->weight_bits != 8)
      return c.err(w + ".weight_bits", std::to_string(u->weight_bits) + " (4 or 8)");
    if (!u->weights.count("int" + std::to_string(u->weight_bits)))
      return c.err(w + ".weight_bits", "int" + std::to_string(u->weight_bits) + " is not in weights");
    if (u->ops.count("Embedding"))
      return c.err(w + ".ops", "Embedding (a table gather) does not run on the npu path; leave it to the cpu");
    if (n["max_tokens"]) KERF_RETURN_IF_ERROR(get(c, n["max_tokens"], w + ".max_tokens", &u->max_tokens));
    if (u->max_tokens < 0 || u->max_tokens > (int64_t(1) << 20)) return c.err(w + ".max_tokens", "must be in [0, 2^20]");
  }
  return Status::Ok();
}

}  // namespace

const UnitProfile* DeviceProfile::unit(const std::string& n) const {
  const UnitProfile* u = n == "cpu" ? &cpu : n == "gpu" ? &gpu : n == "npu" ? &npu : nullptr;
  return u && u->present ? u : nullptr;
}

Result<DeviceProfile> parse_profile(const std::string& text, const std::string& label, const std::string& expected_name) {
  Ctx c{label, "field"};
  YAML::Node root;
  KERF_RETURN_IF_ERROR(pipeline::yaml::load_mapping(text, label, "device profile", &root));
  DeviceProfile p;
  p.yaml = text;
  try {
    KERF_RETURN_IF_ERROR(check_keys(c, root, "", {"kerf_profile", "name", "description", "memory_mb", "placement", "units"}));
    int version = 0;
    KERF_RETURN_IF_ERROR(need(c, root, "", "kerf_profile", &version));
    if (version != 1) return c.err("kerf_profile", std::to_string(version) + " (this kerf reads version 1)");
    KERF_RETURN_IF_ERROR(need(c, root, "", "name", &p.name));
    if (p.name.empty() || p.name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_") != std::string::npos)
      return c.err("name", "'" + p.name + "' (lowercase letters, digits, '-' and '_' only)");
    if (!expected_name.empty() && p.name != expected_name)
      return c.err("name", "'" + p.name + "' differs from the file name '" + expected_name + "'");
    KERF_RETURN_IF_ERROR(need(c, root, "", "description", &p.description));
    KERF_RETURN_IF_ERROR(need(c, root, "", "memory_mb", &p.memory_mb));
    KERF_RETURN_IF_ERROR(number_in(c, "memory_mb", p.memory_mb, 0, double(1 << 24), "MB"));
    const YAML::Node units = root["units"];
    if (!units) return c.err("units", "missing (required)");
    KERF_RETURN_IF_ERROR(check_keys(c, units, "units", {"cpu", "gpu", "npu"}));
    if (!units["cpu"]) return c.err("units.cpu", "missing: every device has a cpu (it runs what no other unit can)");
    KERF_RETURN_IF_ERROR(parse_unit(c, units["cpu"], "cpu", &p.cpu));
    if (units["gpu"]) KERF_RETURN_IF_ERROR(parse_unit(c, units["gpu"], "gpu", &p.gpu));
    if (units["npu"]) KERF_RETURN_IF_ERROR(parse_unit(c, units["npu"], "npu", &p.npu));
    if (const YAML::Node pl = root["placement"]) {
      KERF_RETURN_IF_ERROR(check_keys(c, pl, "placement", {"prefill", "decode"}));
      if (pl["prefill"]) KERF_RETURN_IF_ERROR(get(c, pl["prefill"], "placement.prefill", &p.prefill));
      if (pl["decode"]) KERF_RETURN_IF_ERROR(get(c, pl["decode"], "placement.decode", &p.decode));
      for (const auto& [k, v] : {std::pair<std::string, std::string>{"prefill", p.prefill}, {"decode", p.decode}}) {
        if (v != "auto" && v != "cpu" && v != "gpu" && v != "npu")
          return c.err("placement." + k, "'" + v + "' (known: auto, cpu, gpu, npu)");
        if (v != "auto" && !p.unit(v)) return c.err("placement." + k, "names the " + v + ", which this profile does not have");
      }
    }
  } catch (const YAML::Exception& e) {
    return BadInput(label + ": " + e.what());
  }
  return p;
}

const std::vector<DeviceProfile>& builtin_profiles() {
  static const std::vector<DeviceProfile> all = [] {
    std::vector<DeviceProfile> v;
    for (const auto& [stem, text] : builtin_profile_texts()) {
      auto p = parse_profile(text, "compiler/targets/" + stem + ".yaml", stem);
      // The build embeds only files the test suite parses ([targets]); a bad one is a build defect.
      if (!p.ok()) {
        std::fprintf(stderr, "kerf: built-in profile %s is invalid: %s\n", stem.c_str(), p.status().message().c_str());
        continue;
      }
      v.push_back(std::move(*p));
    }
    std::sort(v.begin(), v.end(), [](const DeviceProfile& a, const DeviceProfile& b) { return a.name < b.name; });
    return v;
  }();
  return all;
}

Result<DeviceProfile> load_profile(const std::string& name_or_path) {
  const bool is_file = name_or_path.find('/') != std::string::npos ||
                       (name_or_path.size() > 5 && (name_or_path.rfind(".yaml") == name_or_path.size() - 5)) ||
                       (name_or_path.size() > 4 && (name_or_path.rfind(".yml") == name_or_path.size() - 4));
  if (is_file) {
    std::ifstream f(name_or_path, std::ios::binary);
    if (!f) return IoError(name_or_path + ": cannot open the device profile");
    std::stringstream ss;
    ss << f.rdbuf();
    return parse_profile(ss.str(), name_or_path, std::filesystem::path(name_or_path).stem().string());
  }
  std::string known;
  for (const DeviceProfile& p : builtin_profiles()) {
    if (p.name == name_or_path) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  return InvalidArgument("unknown target '" + name_or_path + "' (known: " + known + "; or a profile file NAME.yaml)");
}

}  // namespace kerf::targets
