// kerf quant: AWQ scale and clip search (see awq.h).
#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "quant/gptq.h"

namespace kerf::quant {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;

Status check_spec(const char* who, const QSpec& spec) {
  KERF_RETURN_IF_ERROR(validate(spec));
  if (spec.plain())
    return InvalidArgument(std::string(who) + ": spec " + to_string(spec) + " is not a quantized precision");
  return Status::Ok();
}

Status check_matrix(const char* who, const float* w, int64_t rows, int64_t cols) {
  if (w == nullptr) return InvalidArgument(std::string(who) + ": null weight pointer");
  if (rows < 1 || cols < 1 || cols > kMaxElements / rows)
    return InvalidArgument(std::string(who) + ": bad matrix shape [" + std::to_string(rows) + ", " +
                           std::to_string(cols) + "]");
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!std::isfinite(w[i]))
      return BadInput(std::string(who) + ": non-finite weight at row " + std::to_string(i / cols) + ", col " +
                      std::to_string(i % cols));
  return Status::Ok();
}

Status check_h(const char* who, const double* H, int64_t cols) {
  if (H == nullptr) return InvalidArgument(std::string(who) + ": null H pointer");
  if (cols > (int64_t{1} << 17)) return InvalidArgument(std::string(who) + ": too many input columns");
  for (int64_t i = 0; i < cols * cols; ++i)
    if (!std::isfinite(H[i]))
      return BadInput(std::string(who) + ": H has a non-finite value at (" + std::to_string(i / cols) + ", " +
                      std::to_string(i % cols) + ")");
  return Status::Ok();
}

/// diag(H) / max as float importances (null-equivalent all zero when H's diagonal is all zero).
std::vector<float> diag_importance(const double* H, int64_t cols, const float* s) {
  std::vector<double> d(static_cast<size_t>(cols));
  double mx = 0.0;
  for (int64_t c = 0; c < cols; ++c) {
    d[c] = std::max(0.0, H[c * cols + c]);
    if (s != nullptr) d[c] /= double(s[c]) * double(s[c]);
    mx = std::max(mx, d[c]);
  }
  std::vector<float> imp(static_cast<size_t>(cols), 0.f);
  if (mx > 0.0)
    for (int64_t c = 0; c < cols; ++c) imp[c] = static_cast<float>(d[c] / mx);
  return imp;
}

}  // namespace

void scale_columns(float* w, int64_t rows, int64_t cols, const float* s) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] *= s[c];
}

std::vector<double> scale_hessian(const double* H, int64_t cols, const float* s) {
  std::vector<double> out(static_cast<size_t>(cols * cols));
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) out[i * cols + j] = H[i * cols + j] / (double(s[i]) * double(s[j]));
  return out;
}

Result<AwqScales> awq_search_scales(const std::vector<WeightRef>& ws, const double* H, const float* act_mean_abs,
                                    int64_t cols, const QSpec& spec, const AwqOptions& opt) {
  const char* who = "awq_search_scales";
  KERF_RETURN_IF_ERROR(check_spec(who, spec));
  if (ws.empty()) return InvalidArgument(std::string(who) + ": no weight matrices");
  if (cols < 1) return InvalidArgument(std::string(who) + ": cols " + std::to_string(cols) + " must be >= 1");
  if (opt.grid < 1) return InvalidArgument(std::string(who) + ": grid " + std::to_string(opt.grid) + " must be >= 1");
  for (const WeightRef& m : ws) KERF_RETURN_IF_ERROR(check_matrix(who, m.w, m.rows, cols));
  KERF_RETURN_IF_ERROR(check_h(who, H, cols));
  if (act_mean_abs == nullptr) return InvalidArgument(std::string(who) + ": null act_mean_abs pointer");
  for (int64_t c = 0; c < cols; ++c)
    if (!std::isfinite(act_mean_abs[c]) || act_mean_abs[c] < 0.f)
      return InvalidArgument(std::string(who) + ": act_mean_abs[" + std::to_string(c) + "] = " +
                             std::to_string(act_mean_abs[c]) + " (must be finite and >= 0)");

  AwqScales best;
  best.losses.assign(static_cast<size_t>(opt.grid), 0.0);
  std::vector<float> s(static_cast<size_t>(cols)), ws_scaled, imp;
  for (int k = 0; k < opt.grid; ++k) {
    const double alpha = double(k) / double(opt.grid);
    double smax = 0.0, smin = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double v = std::max(std::pow(double(act_mean_abs[c]), alpha), 1e-4);
      s[c] = static_cast<float>(v);
      smax = c == 0 ? v : std::max(smax, v);
      smin = c == 0 ? v : std::min(smin, v);
    }
    const double norm = std::sqrt(smax * smin);
    for (int64_t c = 0; c < cols; ++c) s[c] = static_cast<float>(double(s[c]) / norm);
    if (opt.rule == ParamRule::kSearch) imp = diag_importance(H, cols, s.data());
    double loss = 0.0;
    for (const WeightRef& m : ws) {
      ws_scaled.assign(m.w, m.w + m.rows * cols);
      scale_columns(ws_scaled.data(), m.rows, cols, s.data());
      auto u = quantize_rtn_unpacked(ws_scaled.data(), m.rows, cols, spec, imp.empty() ? nullptr : imp.data(),
                                     opt.rule);
      if (!u.ok()) {
        // A candidate whose scaled weights leave the fp16 parameter range is infeasible; plain
        // RTN (alpha = 0) failing is an error of the input.
        if (k > 0 && u.status().code() == ErrorCode::kUnsupported) {
          loss = std::numeric_limits<double>::infinity();
          break;
        }
        return u.status();
      }
      KERF_ASSIGN_OR_RETURN(std::vector<float> hat, dequantize(*u));
      for (int64_t r = 0; r < m.rows; ++r)
        for (int64_t c = 0; c < cols; ++c) hat[r * cols + c] /= s[c];
      loss += output_error_abs(m.w, hat.data(), m.rows, cols, H);
    }
    best.losses[k] = loss;
    if (k == 0) best.loss0 = loss;
    if (k == 0 || loss < best.loss_best) {
      best.loss_best = loss;
      best.alpha = alpha;
      best.s = s;
    }
  }
  return best;
}

Status awq_clip(float* w, int64_t rows, int64_t cols, const double* H, const QSpec& spec, const AwqOptions& opt,
                AwqClipStats* stats) {
  const char* who = "awq_clip";
  KERF_RETURN_IF_ERROR(check_spec(who, spec));
  KERF_RETURN_IF_ERROR(check_matrix(who, w, rows, cols));
  KERF_RETURN_IF_ERROR(check_h(who, H, cols));
  if (opt.clip_grid < 1)
    return InvalidArgument(std::string(who) + ": clip_grid " + std::to_string(opt.clip_grid) + " must be >= 1");
  if (!(opt.max_shrink >= 0.0 && opt.max_shrink < 1.0))
    return InvalidArgument(std::string(who) + ": max_shrink " + std::to_string(opt.max_shrink) + " must be in [0, 1)");

  const int64_t g = spec.group_for(cols), ng = (cols + g - 1) / g, NG = rows * ng;
  const int n_ratio = static_cast<int>(std::floor(opt.max_shrink * opt.clip_grid + 1e-9)) + 1;
  const bool asym = spec.kind == QKind::kAsym;
  std::vector<float> imp;
  if (opt.rule == ParamRule::kSearch) imp = diag_importance(H, cols, nullptr);
  const float* impp = imp.empty() ? nullptr : imp.data();

  // The grid of the unclipped tensor (kK6 super-scales; clipping only shrinks the parameters).
  std::vector<GroupParams> est;
  if (spec.scales == fmt::ScaleFormat::kK6) {
    est.resize(static_cast<size_t>(NG));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < ng; ++j) {
        const int64_t c0 = j * g, cnt = std::min(g, cols - c0);
        KERF_ASSIGN_OR_RETURN(est[r * ng + j],
                              choose_group_params(spec, w + r * cols + c0, impp ? impp + c0 : nullptr, cnt, opt.rule));
      }
  }
  KERF_ASSIGN_OR_RETURN(ParamGrid grid, ParamGrid::make(spec, rows, cols, est));

  // Chosen clamp range per group; applied only after every group is searched (w unchanged on error).
  std::vector<float> lo_sel(static_cast<size_t>(NG)), hi_sel(static_cast<size_t>(NG));
  std::vector<char> clip_sel(static_cast<size_t>(NG), 0);
  std::vector<double> Hg, d;
  std::vector<float> cur;
  AwqClipStats st;
  st.groups = NG;
  double ratio_sum = 0.0;
  for (int64_t j = 0; j < ng; ++j) {
    const int64_t c0 = j * g, cnt = std::min(g, cols - c0);
    Hg.resize(static_cast<size_t>(cnt * cnt));
    for (int64_t a = 0; a < cnt; ++a)
      for (int64_t b = 0; b < cnt; ++b) Hg[a * cnt + b] = H[(c0 + a) * cols + (c0 + b)];
    cur.resize(static_cast<size_t>(cnt));
    d.resize(static_cast<size_t>(cnt));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r * ng + j;
      const float* wg = w + r * cols + c0;
      float mn = wg[0], mx = wg[0], amax = 0.f;
      for (int64_t t = 0; t < cnt; ++t) {
        mn = std::min(mn, wg[t]);
        mx = std::max(mx, wg[t]);
        amax = std::max(amax, std::fabs(wg[t]));
      }
      double best_err = 0.0, best_ratio = 1.0, err1 = 0.0;
      float best_lo = mn, best_hi = mx;
      for (int k = 0; k < n_ratio; ++k) {
        const double ratio = 1.0 - double(k) / double(opt.clip_grid);
        float lo, hi;
        if (asym) {  // GPTQ quant.py's range search: [r min, r max] (shrinks towards 0)
          lo = static_cast<float>(ratio * mn);
          hi = static_cast<float>(ratio * mx);
        } else {
          hi = static_cast<float>(ratio * amax);
          lo = -hi;
        }
        if (k == 0) {  // ratio 1: the group itself, no clamping
          lo = std::min(lo, mn);
          hi = std::max(hi, mx);
        }
        for (int64_t t = 0; t < cnt; ++t) cur[t] = std::min(hi, std::max(lo, wg[t]));
        KERF_ASSIGN_OR_RETURN(GroupParams p, choose_group_params(spec, cur.data(), impp ? impp + c0 : nullptr, cnt,
                                                                 opt.rule, grid, i));
        for (int64_t t = 0; t < cnt; ++t)
          d[t] = double(wg[t]) - double(dequantize_value(spec, p, quantize_value(spec, p, cur[t])));
        double err = 0.0;
        for (int64_t a = 0; a < cnt; ++a) {
          double row = 0.0;
          for (int64_t b = 0; b < cnt; ++b) row += Hg[a * cnt + b] * d[b];
          err += d[a] * row;
        }
        if (k == 0) err1 = err;
        if (k == 0 || err < best_err) {
          best_err = err;
          best_ratio = ratio;
          best_lo = lo;
          best_hi = hi;
        }
        if (amax == 0.f) break;  // an all-zero group: nothing to clip
      }
      lo_sel[i] = best_lo;
      hi_sel[i] = best_hi;
      clip_sel[i] = best_ratio < 1.0;
      st.err_before += err1;
      st.err_after += best_err;
      st.groups_clipped += best_ratio < 1.0 ? 1 : 0;
      ratio_sum += best_ratio;
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t i = r * ng + j;
      if (!clip_sel[i]) continue;
      const int64_t c0 = j * g, cnt = std::min(g, cols - c0);
      for (int64_t t = 0; t < cnt; ++t) {
        float& x = w[r * cols + c0 + t];
        x = std::min(hi_sel[i], std::max(lo_sel[i], x));
      }
    }
  st.mean_ratio = NG > 0 ? ratio_sum / double(NG) : 1.0;
  if (stats != nullptr) *stats = st;
  return Status::Ok();
}

}  // namespace kerf::quant
