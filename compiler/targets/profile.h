// Device profiles (compiler/targets/*.yaml, built into the kerf binary; `kerf targets` lists them).
// A profile describes one device (a desktop CPU or a phone SoC): per compute unit (cpu, and
// optionally gpu and npu) its ISA / API and features, the ops and weight precisions it runs, its
// activation arithmetic, and the throughput / bandwidth / dispatch figures of the placement cost
// model (placement.h), each with the source it comes from.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "compiler/ir/status.h"

namespace kerf::targets {

/// One compute unit of a device.
struct UnitProfile {
  bool present = false;
  std::string api;                  ///< cpu: "x86-64" | "arm64" | "native" (the machine kerf runs on); gpu: "opencl-1.2" | "opencl-3.0"; npu: vendor stack, e.g. "qnn-htp-v75"
  std::string device;               ///< marketing name, e.g. "Adreno 750" (free text)
  std::vector<std::string> features;  ///< e.g. [avx2, fma, f16c] / [neon, dotprod, i8mm] / [fp16]
  /// cpu only: runtime-lite's integer kernels for the tiled weight layout: "avx2", "avx512vnni",
  /// "neon", "neondot", "scalar", "native" (tiled; the best kernels of the machine that runs it), or
  /// "plain" (no tiled layout: the portable scalar path).
  std::string kernels;
  std::set<std::string> ops;        ///< runtime op names (Embedding, RMSNorm, Linear, Rotary, Attention, GatedFFN, Add)
  /// cpu / gpu: weight dtypes it runs ("f32", "f16", "bf16", "q8_sym", "q4_asym", "qsym", "qasym",
  /// "ternary", "binary"); npu: "int8" and/or "int4" (per-channel symmetric, docs/npu-arithmetic.md).
  std::set<std::string> weights;
  int activation_bits = 32;         ///< npu: 8 or 16 (static-scale integer activations); cpu / gpu: 32 (f32)
  int weight_bits = 0;              ///< npu: bits of its per-channel weights (4 or 8; must be in `weights`)
  int threads = 0;                  ///< cpu: threads the cost model assumes (>= 1)
  double gops = 0;                  ///< sustained throughput, 10^9 multiply-adds x 2 per second, at this unit's arithmetic
  double bandwidth_gbs = 0;         ///< sustained memory bandwidth this unit sees, GB/s (10^9 bytes)
  double launch_us = 0;             ///< per-op dispatch overhead, microseconds
  double transfer_us = 0;           ///< fixed cost of one value handed to / from this unit (sync, cache maintenance), us
  int64_t max_tokens = 0;           ///< npu: largest T of one graph execution (static shapes; 0 = no limit)
  std::vector<std::string> sources; ///< where the figures come from (vendor pages, measurements)
};

/// A device: the file compiler/targets/NAME.yaml (schema: docs/targets.md).
struct DeviceProfile {
  std::string name;         ///< == the file's stem; what --target takes
  std::string description;
  double memory_mb = 0;     ///< memory the model package may use at run time (weights + KV cache + activations), MB
  UnitProfile cpu, gpu, npu;
  /// Placement policy per phase: "auto" (the cost model decides) or a unit name ("cpu", "gpu",
  /// "npu") meaning "every op that unit supports goes there".
  std::string prefill = "auto", decode = "auto";
  std::string yaml;         ///< the profile's text as read (stored in the artifact: target.profile)

  /// The unit by name ("cpu", "gpu", "npu"); nullptr for another name or an absent unit.
  const UnitProfile* unit(const std::string& name) const;
};

/// Parses and validates a profile. `label` names it in messages (the file path). Errors
/// (kBadInput): YAML syntax (with the line), an unknown field anywhere ("units.gpu.bandwith_gbs:
/// unknown field (known: ...)"), a missing required field, a wrong type, an unknown op / weight
/// dtype / kernels / api / policy name, and impossible numbers: gops, bandwidth_gbs or memory_mb
/// <= 0 or beyond physical plausibility (gops > 10^6, bandwidth_gbs > 10^4, memory_mb > 2^24),
/// negative launch_us / transfer_us or > 10^6, threads outside [1, 1024], activation_bits not 8 or
/// 16 on an npu (32 on cpu / gpu), a policy naming an absent unit, an NPU listing Embedding, and
/// `name` differing from `expected_name` when that is given.
Result<DeviceProfile> parse_profile(const std::string& text, const std::string& label,
                                    const std::string& expected_name = "");

/// The built-in profiles (compiler/targets/*.yaml, embedded at build time), sorted by name.
const std::vector<DeviceProfile>& builtin_profiles();

/// A built-in profile by name, or a profile file when `name_or_path` ends in .yaml / .yml or
/// contains '/'. kInvalidArgument for an unknown name (listing the known ones); kBadInput / kIoError
/// for a bad file.
Result<DeviceProfile> load_profile(const std::string& name_or_path);

}  // namespace kerf::targets
