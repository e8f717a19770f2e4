// The NPU path's static-scale calibration (runtime-lite/src/npu_calib.cpp), for the compiler: a C++
// header beside the C API (the compiler may not include runtime-lite's internals). The arithmetic is
// docs/npu-arithmetic.md; the scales land in the metadata keys npu.act_scales / npu.op_scales.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kerf/kerf.h"

namespace kerf::rt::npu {

/// How a value's clipping range is chosen from what calibration observed.
enum class Clip {
  kAbsMax,      ///< max |x| (nothing clipped)
  kPercentile,  ///< the `percentile` quantile of |x| (a 4096-bin histogram over [0, max |x|])
  kMse,         ///< the clip in [max/32, max] minimizing the expected squared error of round-and-clamp
                ///< on the histogram (rounding noise step^2/12 inside, (|x| - clip)^2 outside)
};
struct CalibOptions {
  int act_bits = 8;          ///< 8 or 16: bits of every value the calibration observes (and of the GatedFFN internals)
  Clip clip = Clip::kAbsMax;
  double percentile = 99.99; ///< kPercentile, in percent
};

}  // namespace kerf::rt::npu

namespace kerf::rt {

/// Static-scale calibration of the NPU path. Runs `m` (every op placed on the CPU) on each token
/// sequence (a fresh context each, truncated to max_seq_len) with the CPU reference kernels and a
/// value observer, and produces the metadata blobs of docs/npu-arithmetic.md section 2:
///   act_scales ("npu.act_scales"): per value {f32 scale, u32 bits}: scale = clip / qmax(bits) for
///     every value some op writes (the token ids: {0, 0}); a value that was always 0 gets clip 1.
///   op_scales ("npu.op_scales"): per op f32[4]; GatedFFN: scales of h1, h3, silu(h1)*h3 and the
///     bits (as a float); zeros for the other ops.
/// KERF_ERR_ARGUMENT for no sequences / a token out of range / bad act_bits; session errors as
/// kerf_session_eval returns them; KERF_ERR_CORRUPT when the model produced a non-finite value
/// (named). `npu_calibrate` is npu_calibrate_opts with CalibOptions{act_bits} (absmax).
int npu_calibrate(const kerf_model* m, const std::vector<std::vector<int32_t>>& seqs, int act_bits,
                  std::vector<uint8_t>* act_scales, std::vector<uint8_t>* op_scales, std::string* err);
int npu_calibrate_opts(const kerf_model* m, const std::vector<std::vector<int32_t>>& seqs,
                       const npu::CalibOptions& opt, std::vector<uint8_t>* act_scales,
                       std::vector<uint8_t>* op_scales, std::string* err);

}  // namespace kerf::rt
