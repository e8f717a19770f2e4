#include "passes/registry.h"

#include "passes/passes.h"

namespace kerf::passes {

const std::vector<PassInfo>& registry() {
  static const std::vector<PassInfo> passes = {
      // Shapes first: folding needs symbolic shapes to evaluate the exporter's Shape chains.
      {"infer-shapes", "dtype and symbolic shape of every value", &make_infer_shapes},
      // Folding turns Shape/Gather/Concat chains over static dims into constants.
      {"fold", "constant folding, incl. symbolic shape chains", &make_fold},
      // DCE after folding: the folded chains' inputs (Shape of activations) are now dead.
      {"dce", "remove unused nodes and initializers", &make_dce},
      // Lifting matches on the folded graph (constant reshape targets, scales, rotary tables).
      {"lift-transformer", "lift op soup into Embedding/RMSNorm/Linear/Rotary/Attention/GatedFFN",
       &make_lift_transformer},
  };
  return passes;
}

const char* canonicalize_pipeline() { return "fold,dce,lift-transformer,dce,infer-shapes"; }

Status run_pipeline(ir::Graph& g, const std::string& text, PassContext* ctx_in) {
  std::string expanded = text == "canonicalize" ? canonicalize_pipeline() : text;
  KERF_ASSIGN_OR_RETURN(auto steps, parse_pipeline(expanded));
  PassContext local;
  PassContext& ctx = ctx_in ? *ctx_in : local;
  for (const auto& step : steps) {
    if (step.pass == "canonicalize") {
      KERF_RETURN_IF_ERROR(run_pipeline(g, canonicalize_pipeline(), &ctx));
      continue;
    }
    const PassInfo* info = nullptr;
    for (const auto& p : registry())
      if (step.pass == p.name) info = &p;
    if (!info) {
      std::string known;
      for (const auto& p : registry()) known += std::string(known.empty() ? "" : ", ") + p.name;
      return InvalidArgument("unknown pass '" + step.pass + "' (known: " + known + ", canonicalize)");
    }
    std::unique_ptr<Pass> pass = info->make();
    for (const auto& [k, v] : step.options) KERF_RETURN_IF_ERROR(pass->set_option(k, v));
    auto r = pass->run(g, ctx);
    if (!r.ok()) return r.status().with_context("pass " + step.pass);
    Status valid = g.validate();
    if (!valid.ok()) return Internal("pass " + step.pass + " left an invalid graph: " + valid.message());
  }
  return Status::Ok();
}

}  // namespace kerf::passes
