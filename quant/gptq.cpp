// kerf quant: GPTQ (see gptq.h).
#include "quant/gptq.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <string>

namespace kerf::quant {
namespace {

using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int64_t kMaxElements = int64_t{1} << 40;
constexpr int64_t kMaxCols = int64_t{1} << 17;  // H is cols^2 doubles: 2^34 * 8 bytes at most

std::string shape_str(int64_t rows, int64_t cols) {
  return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

Status check_weights(const char* who, const float* w, int64_t rows, int64_t cols) {
  if (w == nullptr) return InvalidArgument(std::string(who) + ": null weight pointer");
  if (rows < 1 || cols < 1 || cols > kMaxElements / rows)
    return InvalidArgument(std::string(who) + ": bad matrix shape " + shape_str(rows, cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(w[r * cols + c]))
        return BadInput(std::string(who) + ": " + (std::isnan(w[r * cols + c]) ? "NaN" : "Inf") + " weight at row " +
                        std::to_string(r) + ", col " + std::to_string(c));
  return Status::Ok();
}

Status check_spec(const char* who, const QSpec& spec) {
  KERF_RETURN_IF_ERROR(validate(spec));
  if (spec.plain())
    return InvalidArgument(std::string(who) + ": spec " + to_string(spec) + " is not a quantized precision");
  return Status::Ok();
}

/// choose_group_params for every (row, group) of w: flat order, not snapped.
Result<std::vector<GroupParams>> estimate_params(const float* w, int64_t rows, int64_t cols, const QSpec& spec,
                                                 const float* imp, ParamRule rule) {
  const int64_t g = spec.group_for(cols), ng = (cols + g - 1) / g;
  std::vector<GroupParams> est(static_cast<size_t>(rows * ng));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t c0 = j * g, cnt = std::min(g, cols - c0);
      KERF_ASSIGN_OR_RETURN(est[r * ng + j],
                            choose_group_params(spec, w + r * cols + c0, imp ? imp + c0 : nullptr, cnt, rule));
    }
  return est;
}

/// tr(D H D^T) with D = a - b (b may be null: D = a), in double, in blocks of rows. Few rows: the
/// products D H row block by row block (2 rows cols^2 flops). Otherwise G = D^T D by symmetric
/// rank updates (rows cols^2 flops, lower triangle) and tr(D H D^T) = sum_ij H_ij G_ij, with the
/// strictly lower part counted for (i, j) and (j, i), which holds for any H since G is symmetric.
double trace_quad(const float* a, const float* b, int64_t rows, int64_t cols, const double* H) {
  Eigen::Map<const RowMatD> Hm(H, cols, cols);
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>(rows, (int64_t{1} << 22) / cols));
  RowMatD D(nb, cols);
  const auto load = [&](int64_t r0, int64_t m) {
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t at = (r0 + r) * cols + c;
        D(r, c) = b ? double(a[at]) - double(b[at]) : double(a[at]);
      }
  };
  double sum = 0.0;
  if (rows < 64) {
    RowMatD T(nb, cols);
    for (int64_t r0 = 0; r0 < rows; r0 += nb) {
      const int64_t m = std::min(nb, rows - r0);
      load(r0, m);
      T.topRows(m).noalias() = D.topRows(m) * Hm;
      sum += D.topRows(m).cwiseProduct(T.topRows(m)).sum();
    }
    return sum;
  }
  Eigen::MatrixXd G = Eigen::MatrixXd::Zero(cols, cols);
  for (int64_t r0 = 0; r0 < rows; r0 += nb) {
    const int64_t m = std::min(nb, rows - r0);
    load(r0, m);
    G.selfadjointView<Eigen::Lower>().rankUpdate(D.topRows(m).transpose());
  }
  for (int64_t j = 0; j < cols; ++j) {
    sum += H[j * cols + j] * G(j, j);
    for (int64_t i = j + 1; i < cols; ++i) sum += (H[i * cols + j] + H[j * cols + i]) * G(i, j);
  }
  return sum;
}

/// Lower-triangular inverse in place: on entry the lower triangle of `L` holds a Cholesky factor,
/// on exit the lower triangle holds L^-1 (the strict upper triangle is left as it was). Column
/// block [j0, j1) of L^-1 only depends on L[j0:, j0:], so the blocks are solved in order.
void invert_lower_in_place(Eigen::MatrixXd& L) {
  const int64_t n = L.rows(), nb = 256;
  Eigen::MatrixXd X;
  for (int64_t j0 = 0; j0 < n; j0 += nb) {
    const int64_t w = std::min(nb, n - j0), m = n - j0;
    X.setZero(m, w);
    for (int64_t t = 0; t < w; ++t) X(t, t) = 1.0;
    L.bottomRightCorner(m, m).triangularView<Eigen::Lower>().solveInPlace(X);
    for (int64_t t = 0; t < w; ++t)  // column j0 + t: rows j0 + t .. n-1 (lower part only)
      L.block(j0 + t, j0 + t, m - t, 1) = X.block(t, t, m - t, 1);
  }
}

}  // namespace

double output_error_abs(const float* w, const float* w_hat, int64_t rows, int64_t cols, const double* H) {
  return trace_quad(w, w_hat, rows, cols, H);
}

double output_error(const float* w, const float* w_hat, int64_t rows, int64_t cols, const double* H) {
  const double num = trace_quad(w, w_hat, rows, cols, H);
  const double den = trace_quad(w, nullptr, rows, cols, H);
  return den > 0.0 ? num / den : num;
}

Result<Unpacked> gptq_quantize(const float* w, int64_t rows, int64_t cols, const double* H, const QSpec& spec,
                               const GptqOptions& opt, GptqStats* stats) {
  const auto t_start = std::chrono::steady_clock::now();
  KERF_RETURN_IF_ERROR(check_spec("gptq", spec));
  KERF_RETURN_IF_ERROR(check_weights("gptq", w, rows, cols));
  if (H == nullptr) return InvalidArgument("gptq: null H pointer");
  if (cols > kMaxCols) return InvalidArgument("gptq: " + std::to_string(cols) + " input columns is too many");
  if (opt.block_size < 1) return InvalidArgument("gptq: block_size " + std::to_string(opt.block_size) + " must be >= 1");
  if (!(opt.damp >= 0.0) || !std::isfinite(opt.damp))
    return InvalidArgument("gptq: damp " + std::to_string(opt.damp) + " must be a finite value >= 0");
  const int64_t n = cols;
  for (int64_t i = 0; i < n * n; ++i)
    if (!std::isfinite(H[i]))
      return BadInput("gptq: H has a non-finite value at (" + std::to_string(i / n) + ", " + std::to_string(i % n) + ")");

  // Dead inputs, importances, processing order.
  std::vector<double> diag(static_cast<size_t>(n));
  std::vector<char> dead(static_cast<size_t>(n), 0);
  double max_diag = 0.0;
  int64_t n_dead = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double h = H[i * n + i];
    if (h < 0.0) return BadInput("gptq: H has a negative diagonal entry at " + std::to_string(i));
    if (h == 0.0) {
      dead[i] = 1;
      ++n_dead;
    }
    diag[i] = dead[i] ? 1.0 : h;
    if (!dead[i]) max_diag = std::max(max_diag, h);
  }
  std::vector<float> imp(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) imp[i] = dead[i] ? 0.f : static_cast<float>(diag[i] / max_diag);
  const double mean_diag = std::accumulate(diag.begin(), diag.end(), 0.0) / static_cast<double>(n);

  std::vector<int64_t> perm(static_cast<size_t>(n)), invperm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (opt.act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });
  for (int64_t k = 0; k < n; ++k) invperm[perm[k]] = k;

  // Weights with dead columns zeroed, initial estimates, grid.
  std::vector<float> w0(w, w + rows * cols);
  if (n_dead > 0)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        if (dead[c]) w0[r * cols + c] = 0.f;
  const int64_t g = spec.group_for(cols), ng = (cols + g - 1) / g, NG = rows * ng;
  // kK6: the grid's super-scales come from estimates on the original weights (see gptq.h).
  std::vector<GroupParams> est;
  if (spec.scales == fmt::ScaleFormat::kK6) {
    KERF_ASSIGN_OR_RETURN(est, estimate_params(w0.data(), rows, cols, spec, imp.data(), opt.rule));
  }
  KERF_ASSIGN_OR_RETURN(ParamGrid grid, ParamGrid::make(spec, rows, cols, est));

  // U = upper Cholesky factor of (H + lambda I)^-1 in processing order. With Hp the permuted H and
  // P the reversal, P Hp P = L L^T gives Hp = V V^T with V = P L P upper, so Hp^-1 = U^T U with
  // U = V^-1 = P L^-1 P: one Cholesky and one triangular inverse.
  RowMatF U(n, n);
  double frac = opt.damp;
  int retries = 0;
  {
    Eigen::MatrixXd R = Eigen::MatrixXd::Zero(n, n);
    for (;;) {
      const double lambda = frac * mean_diag;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t cj = perm[n - 1 - j];
        for (int64_t i = j; i < n; ++i) {
          const int64_t ci = perm[n - 1 - i];
          R(i, j) = (i == j) ? diag[ci] + lambda : H[ci * n + cj];
        }
      }
      Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> llt(R);
      bool ok = llt.info() == Eigen::Success;
      for (int64_t i = 0; ok && i < n; ++i) {
        const double p = R(i, i);
        ok = std::isfinite(p) && p * p > 1e-10 * mean_diag;
      }
      if (ok) break;
      if (retries >= opt.max_damp_retries)
        return BadInput("gptq: H + damping is not positive definite after " + std::to_string(retries) +
                        " damping retries (last damping fraction " + std::to_string(frac) + ")");
      frac = frac > 0.0 ? frac * 10.0 : 1e-4;
      ++retries;
    }
    invert_lower_in_place(R);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const double v = j >= i ? R(n - 1 - i, n - 1 - j) : 0.0;
        if (!std::isfinite(v)) return BadInput("gptq: the inverse of H + damping is not finite");
        U(i, j) = static_cast<float>(v);
      }
  }

  // Main loop over blocks of processing positions.
  RowMatF Wp(rows, n);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < n; ++k) Wp(r, k) = w0[r * cols + perm[k]];
  const int64_t B = std::min<int64_t>(opt.block_size, n);
  RowMatF W1(rows, B), Err1(rows, B);
  Unpacked u;
  u.spec = spec;
  u.rows = rows;
  u.cols = cols;
  u.codes.assign(static_cast<size_t>(rows * cols), 0);
  u.params.assign(static_cast<size_t>(NG), GroupParams{});
  std::vector<char> ready(static_cast<size_t>(ng), 0);
  if (opt.static_groups) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < ng; ++j) {
        const int64_t c0 = j * g, cnt = std::min(g, cols - c0);
        KERF_ASSIGN_OR_RETURN(u.params[r * ng + j], choose_group_params(spec, &w0[r * cols + c0], &imp[c0], cnt,
                                                                        opt.rule, grid, r * ng + j));
      }
    std::fill(ready.begin(), ready.end(), 1);
  }
  RowMatF vals, Ug, pend;
  std::vector<int64_t> far_t, far_p;

  // Parameters of group j for every row, chosen when its first column (processing position k,
  // index i inside the block [i1, i2)) is about to be quantized.
  auto init_group = [&](int64_t j, int64_t k, int64_t i, int64_t i1, int64_t i2) -> Status {
    const int64_t c0 = j * g, cnt = std::min(g, cols - c0);
    vals.resize(rows, cnt);
    far_t.clear();
    far_p.clear();
    for (int64_t t = 0; t < cnt; ++t) {
      const int64_t p = invperm[c0 + t];
      if (p < k) return Internal("gptq: column " + std::to_string(c0 + t) + " of group " + std::to_string(j) +
                                 " was quantized before its group parameters were chosen");
      if (p < i2) {
        vals.col(t) = W1.col(p - i1);  // inside the block: up to date
      } else {
        vals.col(t) = Wp.col(p);  // after the block: still owes the block's updates so far
        far_t.push_back(t);
        far_p.push_back(p);
      }
    }
    if (!far_t.empty() && i > 0) {
      const int64_t nf = static_cast<int64_t>(far_t.size());
      Ug.resize(i, nf);
      for (int64_t s = 0; s < i; ++s)
        for (int64_t f = 0; f < nf; ++f) Ug(s, f) = U(i1 + s, far_p[f]);
      pend.noalias() = Err1.leftCols(i) * Ug;
      for (int64_t f = 0; f < nf; ++f) vals.col(far_t[f]) -= pend.col(f);
    }
    for (int64_t r = 0; r < rows; ++r) {
      auto p = choose_group_params(spec, &vals(r, 0), &imp[c0], cnt, opt.rule, grid, r * ng + j);
      if (!p.ok()) return p.status();
      u.params[r * ng + j] = *p;
    }
    ready[j] = 1;
    return Status::Ok();
  };

  for (int64_t i1 = 0; i1 < n; i1 += B) {
    const int64_t i2 = std::min(i1 + B, n), cnt = i2 - i1;
    W1.leftCols(cnt) = Wp.middleCols(i1, cnt);
    for (int64_t i = 0; i < cnt; ++i) {
      const int64_t k = i1 + i, c = perm[k], j = c / g;
      if (!ready[j]) KERF_RETURN_IF_ERROR(init_group(j, k, i, i1, i2));
      const float d = U(k, k);
      const float* urow = &U(k, i1);  // U(k, i1 + t)
      for (int64_t r = 0; r < rows; ++r) {
        float* wr = &W1(r, 0);
        const GroupParams p = u.params[r * ng + j];
        const float wv = wr[i];
        const int q = quantize_value(spec, p, wv);
        u.codes[r * cols + c] = static_cast<int16_t>(q);
        const float e = (wv - dequantize_value(spec, p, q)) / d;
        Err1(r, i) = e;
        for (int64_t t = i + 1; t < cnt; ++t) wr[t] -= e * urow[t];
      }
    }
    if (i2 < n) Wp.rightCols(n - i2).noalias() -= Err1.leftCols(cnt) * U.block(i1, i2, cnt, n - i2);
  }
  u.super_d = grid.super_d();
  u.super_dm = grid.super_dm();

  if (stats != nullptr) {
    KERF_ASSIGN_OR_RETURN(Unpacked rtn, quantize_rtn_unpacked(w0.data(), rows, cols, spec, imp.data(), opt.rule));
    KERF_ASSIGN_OR_RETURN(std::vector<float> hat_rtn, dequantize(rtn));
    KERF_ASSIGN_OR_RETURN(std::vector<float> hat_gptq, dequantize(u));
    const double den = trace_quad(w, nullptr, rows, cols, H);
    const double e_rtn = trace_quad(w, hat_rtn.data(), rows, cols, H);
    const double e_gptq = trace_quad(w, hat_gptq.data(), rows, cols, H);
    stats->err_rtn = den > 0.0 ? e_rtn / den : e_rtn;
    stats->err_gptq = den > 0.0 ? e_gptq / den : e_gptq;
    stats->damp_retries = retries;
    stats->damp_used = frac;
    stats->dead_cols = n_dead;
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  }
  return u;
}

Result<QuantTensor> gptq_quantize_packed(const float* w, int64_t rows, int64_t cols, const double* H,
                                         const QSpec& spec, const GptqOptions& opt, GptqStats* stats) {
  KERF_ASSIGN_OR_RETURN(Unpacked u, gptq_quantize(w, rows, cols, H, spec, opt, stats));
  return pack(u);
}

}  // namespace kerf::quant
