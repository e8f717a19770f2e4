// kerf quant: GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers", Algorithm 1, with the details of the reference implementation
// gptq.py / quant.py), for every precision of quant/qspec.h, plus the output-error proxy used to
// judge quantizers.
//
// Problem. A Linear y = x W^T, W float32 [rows, cols] = [out, in] row-major, calibration statistics
// H = sum over calibration tokens of x x^T (double [cols, cols], row-major, un-normalised). GPTQ
// quantizes the columns of W one after the other and spreads each column's rounding error over the
// columns not yet quantized so that tr((W - Q) H (W - Q)^T) stays small:
//   1. dead inputs (H_ii == 0) get H_ii = 1 and their weights are set to 0 (so they carry no error);
//   2. act_order: columns are processed by decreasing diag(H) (stable order for ties);
//   3. damping: lambda = damp * mean(diag(H)) is added to the diagonal; when the Cholesky
//      factorisation fails (or is numerically singular: a pivot^2 <= 1e-10 * mean diag(H)) the
//      damping fraction is multiplied by 10 (0 becomes 1e-4) and it is retried, at most
//      max_damp_retries times (GptqStats::damp_retries counts them; beyond: kBadInput);
//   4. U = the upper Cholesky factor of (H + lambda I)^-1 (in processing order), H^-1 = U^T U;
//   5. for each column k (in processing order): q = quantize(w_k) with its group's parameters,
//      e = (w_k - dequant(q)) / U_kk, and every later column k' gets w_k' -= e * U_kk'. Columns are
//      handled in blocks of block_size: inside a block the update is immediate (rank-1), the rest of
//      the matrix is updated once per block with one matrix product (the "lazy batch" update).
// Groups. Groups are CONTIGUOUS in the original column order (that is what the artifact stores;
// there is no g_idx). The parameters of a (row, group) are chosen the first time one of the group's
// columns is processed: at that moment no column of the group is quantized yet and each holds its
// error-updated value, and choose_group_params(spec, those values, importances diag(H) of the
// group's columns, rule, grid, i) gives the (snapped) parameters. Without
// act_order that is simply at the group's first column. With static_groups, every group's
// parameters are chosen up front from the original weights (same rule and importances).
// ParamGrid. For kK6 scales the grid (super-scales per 8 groups) needs initial estimates before the
// error updates run: they are choose_group_params(rule, importances diag(H)) on the ORIGINAL weights
// (dead columns zeroed). A group parameter that the updates push beyond its super-block's range is
// clamped by ParamGrid::snap (6-bit code 63). kF16 needs no estimates.
// Codes are quantize_value() of the updated weight under the group's snapped parameters, for every
// kind (int sym / asym of 2..8 bits, ternary, binary).
#pragma once

#include <cstdint>
#include <vector>

#include "compiler/ir/status.h"
#include "quant/qspec.h"
#include "quant/rtn.h"

namespace kerf::quant {

struct GptqOptions {
  double damp = 0.01;        ///< fraction of mean(diag(H)) added to the diagonal (>= 0)
  bool act_order = true;     ///< process columns by decreasing diag(H)
  int block_size = 128;      ///< columns per lazy-batch block (>= 1)
  ParamRule rule = ParamRule::kSearch;  ///< how each group's parameters are chosen
  bool static_groups = false;           ///< choose all group parameters up front (original weights)
  int max_damp_retries = 8;  ///< Cholesky retries with 10x damping before giving up
};

struct GptqStats {
  /// Relative output-error proxy output_error(W, dequant, H) of RTN (quantize_rtn_unpacked with the
  /// same spec, rule and importances diag(H) on the same weights, hence the same grid construction;
  /// no error feedback) and of the GPTQ result.
  double err_rtn = 0.0;
  double err_gptq = 0.0;
  int damp_retries = 0;      ///< Cholesky retries (each with 10x the damping)
  double damp_used = 0.0;    ///< damping fraction that succeeded (relative to mean diag(H))
  int64_t dead_cols = 0;     ///< inputs with H_ii == 0
  double seconds = 0.0;      ///< wall time of gptq_quantize, statistics included
};

/// GPTQ-quantizes W [rows, cols] (float32 row-major) with second-moment matrix H [cols, cols]
/// (double row-major, symmetric PSD, un-normalised; only its lower triangle enters the Cholesky
/// factorisation). Returns codes and snapped parameters (pack() turns them into the artifact
/// payload, quant::dequantize() into floats). `stats` (optional): RTN vs GPTQ proxy errors,
/// retries, time; the two errors cost an extra RTN pass and three [rows, cols] x [cols, cols]
/// double products (about as much again as GPTQ itself with kSearch), so pass nullptr to skip them.
/// Cost: O(cols^3) for the factorisation, O(rows * cols^2) float for the updates (one matrix
/// product per block), plus choose_group_params once per (row, group) -- the dominant part with
/// kSearch. Single-threaded, deterministic.
/// Errors: kInvalidArgument (null pointer, bad shape, plain or invalid spec, block_size < 1,
/// damp < 0, kTwn for a non-ternary spec); kBadInput (NaN / Inf in W or H, a negative diag(H), H
/// not positive definite even after the damping retries); errors of choose_group_params / ParamGrid.
Result<Unpacked> gptq_quantize(const float* w, int64_t rows, int64_t cols, const double* H, const QSpec& spec,
                               const GptqOptions& opt, GptqStats* stats = nullptr);
/// gptq_quantize() followed by pack().
Result<QuantTensor> gptq_quantize_packed(const float* w, int64_t rows, int64_t cols, const double* H,
                                         const QSpec& spec, const GptqOptions& opt, GptqStats* stats = nullptr);

/// Relative output-error proxy tr(D H D^T) / tr(W H W^T), D = W - W_hat: the expected squared error
/// of y = x W^T over the calibration tokens relative to the output energy. W, W_hat float32
/// [rows, cols] row-major, H double [cols, cols] row-major. When tr(W H W^T) <= 0 it returns the
/// absolute tr(D H D^T) (0 when both are 0). Cost: one [rows, cols] x [cols, cols] double product.
double output_error(const float* w, const float* w_hat, int64_t rows, int64_t cols, const double* H);
/// The absolute tr(D H D^T) (D = W - W_hat) without the normalisation.
double output_error_abs(const float* w, const float* w_hat, int64_t rows, int64_t cols, const double* H);

}  // namespace kerf::quant
