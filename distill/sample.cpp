// Sampling training text from the teacher (see qad.h sample_from_teacher).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "compiler/pipeline/progress.h"
#include "distill/qad.h"
#include "distill/reference.h"

namespace kerf::distill {

Result<std::vector<std::vector<int64_t>>> sample_from_teacher(const ir::Graph& teacher, int n, int64_t max_len, double temperature,
                                                              uint64_t seed, int64_t bos, int64_t eos, int threads) {
  if (n < 1 || max_len < 2 || !(temperature > 0))
    return InvalidArgument("teacher sampling: n >= 1, max_len >= 2 and temperature > 0 required");
  ReferenceOptions ro;
  ro.threads = threads;
  KERF_ASSIGN_OR_RETURN(ReferenceExecutor ex, ReferenceExecutor::create(teacher, ro));
  if (!ex.has_kv_cache()) return InvalidArgument("teacher sampling needs a lifted graph (kerf.Attention with a KV cache)");
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> out;
  progress::Task task("teacher samples", n, "sequences");  // the installed reporter's, if any
  for (int done = 0; done < n;) {
    const int B = std::min(256, n - done);
    std::vector<std::vector<int64_t>> seqs(static_cast<size_t>(B), std::vector<int64_t>{bos});
    std::vector<bool> open(static_cast<size_t>(B), true);
    ex.reset_cache();
    std::vector<int64_t> step(static_cast<size_t>(B), bos);
    for (int64_t t = 1; t < max_len; ++t) {
      KERF_ASSIGN_OR_RETURN(std::vector<float> lg, ex.forward_batch(step, B, 1));
      const int64_t V = static_cast<int64_t>(lg.size()) / B;
      bool any = false;
      for (int b = 0; b < B; ++b) {
        const float* l = lg.data() + static_cast<size_t>(b) * static_cast<size_t>(V);
        const float mx = *std::max_element(l, l + V);
        std::vector<double> p(static_cast<size_t>(V));
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += p[static_cast<size_t>(v)] = std::exp((l[v] - mx) / temperature);
        double u = std::uniform_real_distribution<double>(0.0, sum)(rng);
        int64_t tok = V - 1;
        for (int64_t v = 0; v < V; ++v) {
          u -= p[static_cast<size_t>(v)];
          if (u <= 0) {
            tok = v;
            break;
          }
        }
        if (open[static_cast<size_t>(b)]) {
          if (tok == bos || tok == eos) open[static_cast<size_t>(b)] = false;
          else seqs[static_cast<size_t>(b)].push_back(tok);
        }
        step[static_cast<size_t>(b)] = tok;  // closed rows keep running (same batch shape), ignored
        any = any || open[static_cast<size_t>(b)];
      }
      if (!any) break;
    }
    ex.reset_cache();
    for (auto& s : seqs)
      if (s.size() >= 2) out.push_back(std::move(s));
    done += B;
    task.set(done);
  }
  task.finish();
  return out;
}

}  // namespace kerf::distill
