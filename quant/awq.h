// kerf quant: AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression
// and Acceleration", Section 3.2; reference implementation llm-awq auto_scale.py / auto_clip.py),
// with the loss computed exactly from the calibration second-moment matrix instead of activation
// samples.
//
// Statistics per Linear input (as the calibration pass gathers them): H = sum over tokens of x x^T
// (double [cols, cols], row-major, un-normalised) and act_mean_abs[c] = mean |x_c|. For weights W
// [rows, cols] = [out, in] and an approximation W_hat, the output error over the calibration tokens
// is sum_t |x_t (W - W_hat)^T|^2 = tr(D H D^T), D = W - W_hat.
//
// 1. Scale search (auto_scale). y = x W^T = (x diag(1/s)) (W diag(s))^T for any s > 0, so the
//    quantizer may see W' = W diag(s) instead of W; input channels with large activations get
//    s > 1 and hence a finer effective grid. Candidates alpha = k / grid, k = 0 .. grid-1:
//    s = max(act_mean_abs^alpha, 1e-4), then s /= sqrt(max(s) * min(s)) (as the reference does);
//    every matrix sharing the input (wq, wk, wv; or w1, w3) is quantized as W diag(s) by RTN
//    (quantize_rtn_unpacked with opt.rule, default kRtn; importances diag(H) / s^2 only for
//    kSearch) and divided back; loss = sum over the matrices of tr(D H D^T). alpha = 0 is s = 1,
//    plain RTN. The best alpha (strictly smallest loss, so ties keep the smaller alpha) wins. A
//    candidate whose scaled weights push a group parameter out of the fp16 range (kUnsupported)
//    gets loss +inf.
//
// 2. Folding s (the caller's job). Quantize W' = W diag(s) (scale_columns) for every matrix of the
//    group, and divide the op that produces their input by s so that the model is unchanged:
//      - input from an RMSNorm: norm weight[c] /= s[c];
//      - input from a previous Linear (e.g. wv -> wo through attention, which is linear in v per
//        head; w3 -> w2 in the gated FFN, since h = silu(w1 x) * (w3 x) is linear in w3's output):
//        that Linear's output row c (W_prev[c, :]) /= s[c].
//    The statistics of the scaled problem are x' = x diag(1/s): H' = diag(1/s) H diag(1/s)
//    (scale_hessian) and act_mean_abs'[c] = act_mean_abs[c] / s[c]. Pass W' and H' to awq_clip and
//    to the final quantizer (RTN or gptq_quantize); tr(D' H' D'^T) with D' = W' - Q' equals
//    tr(D H D^T) with D = W - Q' diag(1/s), so errors are comparable across the fold.
//
// 3. Clip search (auto_clip). For each row and group: shrink the group's range by ratios
//    r = 1 - k / clip_grid, k = 0 .. floor(max_shrink * clip_grid) (1, 0.95, ..., 0.5 by default):
//    sym / ternary / binary: [-r M, r M], M = max |w| (the reference's rule); asym: [r min, r max]
//    (the range search of GPTQ's quant.py; it shrinks towards 0, so a clamped weight never grows in
//    magnitude, and a one-signed group is clipped on its far side only). The clamped group is quantized
//    (choose_group_params with opt.rule, snapped through the tensor's ParamGrid built from the
//    unclipped weights) and its output error d_g H_gg d_g^T is measured against the UNCLIPPED
//    weights with the diagonal block H_gg of the group's columns (the reference measures each
//    group's partial output separately, ignoring cross-group terms). The ratio with the smallest
//    error (ties: the larger ratio) is kept and w is CLAMPED in place to that range, so a later
//    quantizer on the clamped weights realises it (exactly for RTN with fp16 scales; GPTQ keeps
//    updating the weights after the clamp). The reference skips q / k projections (their errors are
//    amplified by the softmax); that choice is left to the caller.
#pragma once

#include <cstdint>
#include <vector>

#include "compiler/ir/status.h"
#include "quant/qspec.h"

namespace kerf::quant {

struct AwqOptions {
  int grid = 20;                      ///< alpha candidates k / grid, k = 0 .. grid-1 (>= 1)
  ParamRule rule = ParamRule::kRtn;   ///< group-parameter rule of the quantizer inside both searches
  int clip_grid = 20;                 ///< clip ratios 1 - k / clip_grid (>= 1)
  double max_shrink = 0.5;            ///< smallest clip ratio is 1 - max_shrink (0 <= max_shrink < 1)
};

/// One weight matrix [rows, cols] (float32 row-major) among those sharing an input.
struct WeightRef {
  const float* w = nullptr;
  int64_t rows = 0;
};

struct AwqScales {
  std::vector<float> s;         ///< [cols], the best per-input-channel scales
  double alpha = 0.0;           ///< the best exponent
  double loss0 = 0.0;           ///< sum tr(D H D^T) at alpha = 0 (plain RTN)
  double loss_best = 0.0;       ///< the same at the best alpha (<= loss0)
  std::vector<double> losses;   ///< loss per candidate alpha = k / grid
};

/// Grid search of the AWQ scales for matrices `ws` sharing one input (see above). H [cols, cols]
/// and act_mean_abs [cols] are the statistics of that input. Errors: kInvalidArgument (empty ws,
/// null pointers, bad shapes, plain / invalid spec, grid < 1, negative or non-finite
/// act_mean_abs), kBadInput (NaN / Inf weights or H), errors of the quantizer.
Result<AwqScales> awq_search_scales(const std::vector<WeightRef>& ws, const double* H, const float* act_mean_abs,
                                    int64_t cols, const QSpec& spec, const AwqOptions& opt);

struct AwqClipStats {
  double err_before = 0.0;      ///< sum over groups of d_g H_gg d_g^T without clipping (ratio 1)
  double err_after = 0.0;       ///< the same with the chosen ratios (<= err_before)
  int64_t groups = 0;           ///< groups searched (rows * ng)
  int64_t groups_clipped = 0;   ///< groups whose chosen ratio is < 1
  double mean_ratio = 1.0;      ///< mean chosen ratio over the groups
};

/// The auto_clip search on w [rows, cols] (float32 row-major, modified in place: clamped to the
/// chosen ranges) with H [cols, cols] the statistics of its (already AWQ-scaled) input.
/// `stats` may be null. Errors: as awq_search_scales, plus clip_grid < 1 or max_shrink outside
/// [0, 1). w is unchanged when an error is returned.
Status awq_clip(float* w, int64_t rows, int64_t cols, const double* H, const QSpec& spec, const AwqOptions& opt,
                AwqClipStats* stats = nullptr);

/// w[r, c] *= s[c] for a [rows, cols] row-major matrix (W' = W diag(s)).
void scale_columns(float* w, int64_t rows, int64_t cols, const float* s);
/// diag(1/s) H diag(1/s): H'[i, j] = H[i, j] / (s_i s_j), [cols, cols] row-major.
std::vector<double> scale_hessian(const double* H, int64_t cols, const float* s);

}  // namespace kerf::quant
