// kerf prune: structured width / depth pruning of a lifted transformer graph (compiler/ir/ir.h).
//
// Structures (per transformer block, found by analyze()):
//   * query heads      h in [0, H): rows h*Dh..h*Dh+Dh-1 of wq [H*Dh, D] and the same columns of wo [D, H*Dh];
//   * KV groups        g in [0, G): rows g*Dh.. of wk and wv [G*Dh, D], plus the H/G query heads that
//                      read them (GQA: query head h reads KV head h / (H/G));
//   * FFN channels     c in [0, F): row c of w1 and w3 [F, D], column c of w2 [D, F];
//   * embedding channels d in [0, D): column d of the embedding table [V, D], entry d of every RMSNorm
//                      weight, column d of wq/wk/wv/w1/w3 (and of an untied classifier), row d of wo/w2;
//   * whole blocks     (depth): the block's output is replaced by its residual input.
// Head pruning is GQA-aware in one of two modes, chosen by the caller:
//   kKvGroups   removes whole KV groups with their query heads (G' = round(keep * G), H' = G' * H/G);
//   kQueryHeads removes query heads evenly within every group (H/G' per group kept = round(keep * H/G),
//               G unchanged).
// Either way n_heads % n_kv_heads == 0 holds. make_plan gives every block the same counts (uniform
// width, as Minitron prunes width: Muralidharan et al. 2024, "Compact Language Models via Pruning and
// Knowledge Distillation", sec. 2); plan_with_widths takes per-block counts, which
// prune/importance.h allocate_widths measures. Which structures go is decided by an importance score per
// structure (prune/importance.h): the lowest-scored ones are removed; kept ones stay in their
// original order.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/status.h"

namespace kerf::prune {

/// One transformer block of a lifted graph.
struct Block {
  int index = 0;                          ///< position in the graph (0-based)
  std::string attn_norm, ffn_norm;        ///< RMSNorm node names
  std::string attention, ffn;             ///< Attention / GatedFFN node names
  std::string wq, wk, wv, wo;             ///< initializer names, wq [H*Dh, D], wk/wv [G*Dh, D], wo [D, H*Dh]
  std::string w1, w3, w2;                 ///< w1/w3 [F, D], w2 [D, F]
  std::string attn_norm_weight, ffn_norm_weight;
  std::string residual_in, residual_out;  ///< the block's input and output values of the residual stream
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn_dim = 0;
};

/// The prunable structure of a lifted decoder-only transformer.
struct Model {
  int64_t dim = 0, vocab = 0;
  std::string embedding_table;            ///< [V, D]
  std::string classifier_weight;          ///< [V, D]; equal to embedding_table when tied
  std::string final_norm_weight;
  std::vector<Block> blocks;
};

/// Finds the blocks: every kerf.Attention with its Linear q/k/v (through Rotary) and wo, the block's
/// RMSNorms, its GatedFFN and the two residual Adds, in graph order.
/// Errors: kUnsupported naming the node when the graph is not the lifted pattern (a q/k/v that is not
/// a Linear of the attention norm, a missing GatedFFN after an Attention, an untied classifier of
/// another shape, biases on the projections).
Result<Model> analyze(const ir::Graph& lifted);

/// How query heads are removed (see the file comment).
enum class HeadMode { kKvGroups, kQueryHeads };
const char* head_mode_name(HeadMode m);  ///< "kv-groups" | "query-heads"
Result<HeadMode> parse_head_mode(const std::string& s);

/// Importance per structure (larger = more important). Every vector is indexed as the structure
/// (blocks in graph order); an empty vector means "not scored" (that structure kind can then not be
/// pruned). Filled by prune/importance.h.
struct Scores {
  std::string method;                          ///< "activation" | "taylor" | "magnitude"
  std::vector<std::vector<double>> heads;      ///< [block][H] query heads
  std::vector<std::vector<double>> kv_groups;  ///< [block][G]
  std::vector<std::vector<double>> ffn;        ///< [block][F]
  std::vector<double> embed;                   ///< [D]
  std::vector<double> blocks;                  ///< [L] depth importance (calibration-loss increase when removed)
  /// Second moments of the inputs of wo and w2 on the calibration tokens, for compensate():
  /// attn_gram[block] = sum_t a_t a_t^T, a_t the attention output [H*Dh] (row-major (H*Dh)^2);
  /// ffn_gram[block] = sum_t h_t h_t^T, h_t the gated FFN activation [F]. Empty when not measured.
  std::vector<std::vector<double>> attn_gram, ffn_gram;
};

/// What to keep, as fractions of the original counts (1 = keep all). Counts are rounded to the
/// nearest achievable value (at least one of each).
struct PruneOptions {
  double keep_heads = 1.0;   ///< fraction of query heads per block
  HeadMode head_mode = HeadMode::kKvGroups;
  double keep_ffn = 1.0;     ///< fraction of FFN channels per block
  double keep_embed = 1.0;   ///< fraction of embedding (model-dim) channels
  int drop_blocks = 0;       ///< whole blocks removed (lowest depth importance first)
};

/// The decision: kept indices (ascending) of every structure. Serializable (to_text / plan_from_text)
/// so that a checkpoint or an artifact can record it and it can be applied again to the source model.
struct Plan {
  std::vector<std::vector<int64_t>> heads;      ///< [block][kept query heads]
  std::vector<std::vector<int64_t>> kv_groups;  ///< [block][kept KV groups]
  std::vector<std::vector<int64_t>> ffn;        ///< [block][kept FFN channels]
  std::vector<int64_t> embed;                   ///< kept embedding channels
  std::vector<int> dropped_blocks;              ///< removed blocks (ascending)
  bool identity() const;                        ///< nothing removed
};

/// Chooses what to keep from the scores. Errors: kInvalidArgument for a fraction outside (0, 1], a
/// fraction < 1 that rounds to the full count (nothing would be removed; the message gives the
/// smallest reduction), kQueryHeads with one query head per group, drop_blocks >= the block count,
/// or a structure asked to shrink that has no scores.
Result<Plan> make_plan(const Model& m, const Scores& s, const PruneOptions& opt);

/// Per-block widths, for non-uniform plans: head units kept in block l (KV groups in kv-groups mode,
/// query heads per KV group in query-heads mode) and FFN channels kept in block l. An empty vector
/// means that structure kind is not pruned.
struct Widths {
  std::vector<int64_t> head_units, ffn;
};

/// The widths a plan keeps (empty vectors for kinds the plan leaves whole).
Widths widths_of(const Model& m, const Plan& p, HeadMode mode);

/// Head units of the unpruned block b: its KV groups (kv-groups mode) or its query heads per KV
/// group (query-heads mode).
int64_t full_head_units(const Block& b, HeadMode mode);

/// The plan that keeps, in block l, the w.head_units[l] highest-scored head units and the w.ffn[l]
/// highest-scored FFN channels (scores as make_plan uses them); embedding channels and dropped blocks
/// are copied from `base`. Blocks may differ in width (the runtime reads every Attention's n_heads /
/// n_kv_heads and every matrix's shape). Errors: kInvalidArgument for a list that is not one entry per
/// block, a count outside [1, full width], or a pruned kind without scores.
Result<Plan> plan_with_widths(const Model& m, const Scores& s, HeadMode mode, const Widths& w, const Plan& base);

/// Rewrites `g` (as analyze()d into `m`): slices the initializers, updates Attention's n_heads /
/// n_kv_heads, rewires dropped blocks, removes dead nodes and re-infers value shapes. The result
/// passes Graph::validate(). The identity plan leaves every tensor bit-identical.
/// Errors: kInvalidArgument for a plan that does not fit the model (index out of range, unsorted,
/// empty, a head plan that breaks GQA), kBadInput if a sliced initializer is shared with a node the
/// rewrite does not know.
Status apply_plan(ir::Graph& g, const Model& m, const Plan& plan);

/// Least-squares reconstruction of the pruned blocks' outputs (the structured form of OBS updates,
/// as in ZipLM, Kurtic et al. 2023, and FLAP's compensation): with G = sum_t x_t x_t^T the second
/// moment of a projection's input over the calibration tokens and K the kept input indices, the
/// kept columns become W' = W G[:, K] G[K, K]^-1 (W the unpruned weights [D, n]), which minimises
/// sum_t ||W x_t - W' x_t[K]||^2: what the removed heads / channels contributed is folded into the
/// kept ones as far as they correlate. Applied to wo (attention output) and w2 (FFN) of every block
/// whose heads / channels were pruned; they become float32. `original` is the graph before
/// apply_plan; G[K, K] is damped by 1e-4 x its mean diagonal. Errors: kInvalidArgument when the
/// scores carry no Gram matrices of the right size.
Status compensate(ir::Graph& pruned, const ir::Graph& original, const Model& m, const Plan& plan, const Scores& s);

/// Text form: one line per block "block 0 heads 0,1,2,3,4,5 kv 0,1,2 ffn 3,5,..." plus
/// "embed ..." and "drop ..." lines. plan_from_text(to_text(p)) == p.
std::string to_text(const Plan& p);
Result<Plan> plan_from_text(const std::string& text);

/// Parameters and FLOPs of a lifted graph (counted from the kerf ops, f32 MACs x 2):
///   Linear 2*N*K per token; GatedFFN 6*F*D; Attention 4*H*Dh*L for a token attending over L
///   positions (q.k and the weighted sum of v); RMSNorm, Rotary, softmax and residual adds are
///   not counted (< 1 % here). Embedding lookups cost nothing.
struct Cost {
  int64_t parameters = 0;        ///< Graph::parameter_count(): every initializer read by a node, once
  int64_t matrix_parameters = 0; ///< of which in weight matrices (Linear / GatedFFN / Embedding)
  double decode_flops = 0;       ///< per decoded token at context `context` (the token attends over context+1 positions)
  double prefill_flops = 0;      ///< per token of a `context`-token prompt (mean attended length (context+1)/2)
  int64_t context = 0;
};
/// Errors: kBadInput for a lifted op without its weights.
Result<Cost> count_cost(const ir::Graph& lifted, int64_t context);

/// Budget solving: the largest uniform keep fractions for heads and FFN (as equal as the discrete
/// counts allow, heads per `head_mode`) such that decode FLOPs at `context` (kind "flops") or the
/// parameter count (kind "params") is at most `fraction` of the original. Embedding and depth are
/// left as in `base`. Errors: kInvalidArgument for an unknown kind or an unreachable fraction.
Result<PruneOptions> solve_budget(const ir::Graph& lifted, const Model& m, const std::string& kind, double fraction,
                                  int64_t context, const PruneOptions& base);

}  // namespace kerf::prune
