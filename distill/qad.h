// kerf distill: quantization-aware distillation (QAD) of a lifted LM graph, LibTorch autograd.
//
// Student = the graph whose weight matrices are fake-quantized in every forward with the exact
// quantizer the artifact will use (quant/qspec.h quantize_rtn with the tensor's precision and rule,
// snapped to the representable grid), gradients passed straight through (STE, Bengio et al. 2013:
// W_eff = W + stopgrad(Q(W) - W)); teacher = the FP graph. Loss = T^2 * KL(softmax(z_t / T) ||
// softmax(z_s / T)) per token (Hinton et al. 2015), averaged over the real (unpadded) positions.
// AdamW (Loshchilov & Hutter 2019), linear warm-up then cosine decay to 10 % of the peak learning
// rate, global gradient-norm clipping. Norm weights are trained too (stored in f32). Batches are
// drawn with a seeded RNG from the training sequences; every `eval_every` steps the KL on the
// validation sequences is measured and the best weights are kept (early stopping on validation).
// After training, quantizing each matrix with quantize_rtn(spec, rule) reproduces the forward the
// student was trained with: the emitted artifact is the model that was trained.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"
#include "distill/dist.h"
#include "quant/qspec.h"

namespace kerf::distill {

struct QadOptions {
  int steps = 300;               ///< optimizer steps
  int batch = 8;                 ///< sequences per step
  int seq_len = 512;             ///< tokens per sequence (longer ones are cut at a random offset); use the
                                 ///< model's max_seq_len: positions never trained degrade
  double lr = 1e-3;              ///< peak learning rate
  double weight_decay = 0.0;     ///< AdamW decoupled weight decay
  int warmup = 20;               ///< linear warm-up steps
  double temperature = 1.0;      ///< distillation temperature T
  double clip = 1.0;             ///< max global gradient norm (0 = none)
  int eval_every = 50;           ///< validation KL every N steps (and at the end)
  uint64_t seed = 0;
  int threads = 0;               ///< LibTorch threads (0 = all cores)
  /// Information lines (rank 0): set-up and one per validation, "qad step 50/300 loss 0.41 val.kl 0.38
  /// 1234 tok/s ETA 40 s"; null = silent. When set, the steps are also a progress task named `label`
  /// (unit "steps") of the installed progress reporter (compiler/pipeline/progress.h).
  std::function<void(const std::string&)> progress;
  std::string label = "qad";     ///< progress / log prefix ("distill" for plain knowledge distillation)
  bool bucket = true;            ///< batches of sequences of similar length (less padding); else uniform sampling
  /// Learned step sizes (LSQ, Esser et al. 2020; LSQ+ offsets for asym, Bhalgat et al. 2020): every
  /// fake-quantized matrix's group parameters (scale, and min for asym) become trained tensors,
  /// initialized with the tensor's rule, instead of being recomputed from the weights each step.
  /// The forward stays exact (quant::quantize_with_params: snapped to fp16 / the k6 grid, codes
  /// by quantize_value); gradients: d/dw = 1 inside the code range (x = (w - m) / s within
  /// [qmin, qmax]) else 0, d/ds = q - x inside and q outside, d/dm = 0 inside and 1 outside;
  /// binary: d/dw = 1, d/ds = q. Scale gradients are multiplied by LSQ's 1 / sqrt(n * qmax)
  /// (n = group size) and stepped at lr * scale_lr, without weight decay. The trained parameters
  /// are returned in QadReport::params; quantizing with them reproduces the trained forward.
  bool learn_scales = false;
  double scale_lr = 1.0;
  bool cache_teacher = true;     ///< compute the teacher's logits (and hidden taps) once per training sequence
                                 ///< when no sequence is longer than seq_len and they fit in 2 GiB
  /// Optional hidden-state distillation: loss += hidden_weight * mean over pairs of
  /// MSE(student value, teacher value) / mean(teacher value^2) (normalized MSE per pair), with
  /// pairs of value names (student graph, teacher graph) of the same width, e.g. block outputs.
  double hidden_weight = 0.0;
  std::vector<std::pair<std::string, std::string>> hidden_pairs;
  /// Checkpoints (distill/checkpoint.h): every `checkpoint_every` steps (0 = only at the end) the
  /// latent weights, AdamW moments, best weights, step, RNG state and `checkpoint_meta` are written
  /// atomically to `checkpoint_path` (by rank 0). `resume` continues from that file: same tensors and
  /// shapes required, else kInvalidArgument naming the tensor; the run then equals an uninterrupted one.
  std::string checkpoint_path;
  int checkpoint_every = 0;
  bool resume = false;
  std::map<std::string, std::string> checkpoint_meta;
  bool checkpoint_initial = false;  ///< also store every tensor's starting value as "<name>#init"
  /// Data parallelism (distill/dist.h): with a group of W ranks every step draws one global batch of
  /// W * batch sequences, rank r trains on rows [r*batch, (r+1)*batch), and the ranks sum their
  /// gradients, KL sums, token counts and the hidden-state normalizers, so the step equals a single
  /// process with batch W * batch. Every rank reads the checkpoint on resume (a path all ranks see).
  /// Null = single process.
  DataParallel* dp = nullptr;
  /// Test hook: called with every tensor's (summed) gradient before each optimizer step.
  std::function<void(int step, const std::string& name, const std::vector<float>& grad)> on_gradient;
};

struct QadReport {
  int steps = 0, best_step = 0;
  double val_kl_initial = 0, val_kl_best = 0, val_kl_final = 0;  ///< fake-quantized student vs teacher
  double seconds = 0, tokens_per_second = 0;
  int resumed_from = 0;          ///< step the run resumed from (0 = fresh)
  std::vector<std::string> log;  ///< one line per validation
  /// learn_scales: per fake-quantized matrix the trained (best) group parameters, unsnapped, flat
  /// group order [rows * ng]; quant::quantize_with_params(latent weights, spec, params) is the
  /// trained forward's weight. Empty otherwise.
  std::map<std::string, std::vector<quant::GroupParams>> params;
};

/// Trains `student` in place (its weight-matrix and norm initializers become float32, the
/// trained latent weights). `precision` gives every weight matrix's precision and rule (plain
/// precisions are trained without fake quantization). `teacher` is the FP graph (same
/// structure). Errors: kInvalidArgument (no training sequences, bad options, a matrix without a
/// precision), and the executor's / quantizer's errors.
Result<QadReport> quantization_aware_distill(ir::Graph& student, const ir::Graph& teacher,
                                             const std::map<std::string, std::pair<quant::QSpec, quant::ParamRule>>& precision,
                                             const std::vector<std::vector<int64_t>>& train,
                                             const std::vector<std::vector<int64_t>>& val, const QadOptions& opt);

/// The learned-scale (learn_scales) forward and straight-through gradients of one matrix, as the
/// training computes them, for L = sum(upstream ⊙ Q(W)): `w` [rows, cols] float32, `params`
/// [rows * ng] group parameters (unsnapped; min used for asym only), `upstream` [rows, cols] = dL/dQ.
/// value = quant::quantize_with_params dequantized; dw [rows, cols], ds / dm [rows * ng] (dm all 0
/// unless asym) by the rules in QadOptions::learn_scales, before LSQ's gradient scale.
/// Errors: kInvalidArgument (plain spec, null pointers, params.size() != rows * ng) and
/// quantize_with_params's errors.
struct LsqGradients {
  std::vector<float> value, dw, ds, dm;
};
Result<LsqGradients> lsq_gradients(const float* w, int64_t rows, int64_t cols, const quant::QSpec& spec,
                                   const std::vector<quant::GroupParams>& params, const float* upstream);

/// Data-free augmentation: `n` sequences sampled from `teacher` (a lifted LM graph), each starting
/// with `bos` and ending before the first `bos` / `eos` the model emits or at `max_len` tokens;
/// ancestral sampling at `temperature` with a seeded RNG (deterministic for a seed and thread
/// count), generated in batches of up to 256 with the executor's KV cache. Sequences shorter than
/// 2 tokens are dropped. The batches are a progress task ("teacher samples") of the installed progress
/// reporter, if any (compiler/pipeline/progress.h). Errors: kInvalidArgument (n < 1, max_len < 2,
/// temperature <= 0), executor errors.
Result<std::vector<std::vector<int64_t>>> sample_from_teacher(const ir::Graph& teacher, int n, int64_t max_len, double temperature,
                                                              uint64_t seed, int64_t bos, int64_t eos, int threads);

}  // namespace kerf::distill
