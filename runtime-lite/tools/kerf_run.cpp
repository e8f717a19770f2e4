// kerf-run: generate text with a .kerf artifact.
//   kerf-run MODEL.kerf --prompt "Once upon a time" -n 100 --seed 1 [--temp 1.0] [--top-p 0.9]
//            [--ctx N] [-t N] [--kv-f16] [--no-verify] [--cpu-only] [--stats]
// Exit codes: 0 ok, 1 runtime failure, 2 bad arguments, 3 bad/corrupt artifact, 4 unsupported,
// 5 I/O error.
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kerf/kerf.h"

namespace {

const char* kUsage =
    "usage: kerf-run MODEL.kerf [options]\n"
    "  --prompt TEXT   prompt text (default: empty, i.e. start from BOS)\n"
    "  -n N            generate at most N new tokens (default 256); stops earlier at EOS or when\n"
    "                  the context is full\n"
    "  --seed S        sampler seed (default 1)\n"
    "  --temp T        temperature (default 1.0); 0 = greedy (argmax)\n"
    "  --top-p P       nucleus sampling threshold in (0, 1] (default 0.9; 1 = off)\n"
    "  --ctx N         context length (default: the model's max_seq_len)\n"
    "  -t N            threads (default 0 = one per online CPU)\n"
    "  --kv-f16        keep the KV cache in f16 (half the memory, logits move by ~1e-3)\n"
    "  --no-verify     skip the tensor payload checksums when loading (bounds, header and\n"
    "                  section checksums are always checked; payloads are by default)\n"
    "  --cpu-only      run every op on the CPU, ignoring the artifact's GPU / NPU placement\n"
    "                  (without it, a unit this runtime cannot use is an error, never a fallback)\n"
    "  --stats         print the tensors' precisions, the kernels' instruction set, threads, load\n"
    "                  time, prefill / decode tokens/s and each compute unit's time to stderr\n"
    "  -h, --help      this help\n"
    "exit codes: 0 ok, 1 runtime failure, 2 bad arguments, 3 bad or corrupt artifact,\n"
    "            4 unsupported artifact, 5 I/O error\n";

int bad_arg(const char* msg, const char* val) {
  std::fprintf(stderr, "kerf-run: %s%s%s\n%s", msg, val ? ": " : "", val ? val : "", kUsage);
  return 2;
}

bool parse_long(const char* s, long lo, long hi, long* out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}
bool parse_u64(const char* s, unsigned long long* out) {
  char* end = nullptr;
  errno = 0;
  if (*s == '-') return false;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (errno || end == s || *end) return false;
  *out = v;
  return true;
}
bool parse_float(const char* s, float lo, float hi, float* out) {
  char* end = nullptr;
  errno = 0;
  const float v = std::strtof(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
  *out = v;
  return true;
}

int exit_code_for(int status) {
  switch (status) {
    case KERF_ERR_IO: return 5;
    case KERF_ERR_FORMAT: case KERF_ERR_CORRUPT: return 3;
    case KERF_ERR_UNSUPPORTED: return 4;
    case KERF_ERR_ARGUMENT: return 2;
    case KERF_ERR_MEMORY: case KERF_ERR_CONTEXT: return 7;  // resource limit (README "Exit codes")
    default: return 70;
  }
}

/// "weights: 14 x qasym4/f16 g32 (1.2 MiB), 5 x f32 (0.1 MiB)": tensors grouped by full precision,
/// in order of first appearance.
void print_precisions(const kerf_model* m) {
  struct Group { std::string precision; int count; unsigned long long bytes; };
  std::vector<Group> groups;
  for (int i = 0; i < kerf_model_tensor_count(m); ++i) {
    kerf_tensor_info ti;
    if (kerf_model_tensor_info(m, i, &ti) != KERF_OK) continue;
    Group* g = nullptr;
    for (Group& x : groups)
      if (x.precision == ti.precision) g = &x;
    if (!g) {
      groups.push_back({ti.precision, 0, 0});
      g = &groups.back();
    }
    ++g->count;
    g->bytes += ti.bytes;
  }
  std::fputs("weights:", stderr);
  for (size_t i = 0; i < groups.size(); ++i)
    std::fprintf(stderr, "%s %d x %s (%.2f MiB)", i ? "," : "", groups[i].count, groups[i].precision.c_str(),
                 double(groups[i].bytes) / (1024.0 * 1024.0));
  std::fputc('\n', stderr);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  const char* model_path = nullptr;
  const char* prompt = "";
  long n_new = 256, ctx = 0, threads = 0;
  unsigned long long seed = 1;
  float temp = 1.0f, top_p = 0.9f;
  bool no_verify = false, stats = false, kv_f16 = false, cpu_only = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    auto value = [&](const char** v) {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    const char* v = nullptr;
    if (!std::strcmp(a, "-h") || !std::strcmp(a, "--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (!std::strcmp(a, "--prompt")) {
      if (!value(&prompt)) return bad_arg("--prompt needs a value", nullptr);
    } else if (!std::strcmp(a, "-n")) {
      if (!value(&v) || !parse_long(v, 0, 1L << 30, &n_new)) return bad_arg("-n needs an integer >= 0", v);
    } else if (!std::strcmp(a, "--seed")) {
      if (!value(&v) || !parse_u64(v, &seed)) return bad_arg("--seed needs an unsigned integer", v);
    } else if (!std::strcmp(a, "--temp")) {
      if (!value(&v) || !parse_float(v, 0.0f, 1e6f, &temp)) return bad_arg("--temp needs a number >= 0", v);
    } else if (!std::strcmp(a, "--top-p")) {
      if (!value(&v) || !parse_float(v, 0.0f, 1.0f, &top_p) || top_p <= 0.0f)
        return bad_arg("--top-p needs a number in (0, 1]", v);
    } else if (!std::strcmp(a, "--ctx")) {
      if (!value(&v) || !parse_long(v, 1, 1L << 30, &ctx)) return bad_arg("--ctx needs an integer >= 1", v);
    } else if (!std::strcmp(a, "-t")) {
      if (!value(&v) || !parse_long(v, 0, 1024, &threads)) return bad_arg("-t needs an integer in [0, 1024]", v);
    } else if (!std::strcmp(a, "--kv-f16")) {
      kv_f16 = true;
    } else if (!std::strcmp(a, "--no-verify")) {
      no_verify = true;
    } else if (!std::strcmp(a, "--verify")) {
      // the default since payload hashes are checked on every load; still accepted
    } else if (!std::strcmp(a, "--stats")) {
      stats = true;
    } else if (!std::strcmp(a, "--cpu-only")) {
      cpu_only = true;
    } else if (a[0] == '-' && a[1] != '\0') {
      return bad_arg("unknown option", a);
    } else if (!model_path) {
      model_path = a;
    } else {
      return bad_arg("unexpected argument", a);
    }
  }
  if (!model_path) return bad_arg("missing MODEL.kerf", nullptr);

  const double t0 = now_s();
  kerf_model* model = nullptr;
  char err[1024];
  int rc = kerf_model_open(model_path, no_verify ? KERF_OPEN_NO_VERIFY_DATA : 0u, &model, err, sizeof err);
  if (rc != KERF_OK) {
    std::fprintf(stderr, "kerf-run: %s\n", err);
    return exit_code_for(rc);
  }
  const double t_load = now_s() - t0;
  if (ctx > kerf_model_max_seq_len(model)) {
    std::fprintf(stderr, "kerf-run: --ctx %ld exceeds the model's max_seq_len %d\n", ctx, kerf_model_max_seq_len(model));
    kerf_model_close(model);
    return 2;
  }
  kerf_session* sess = nullptr;
  err[0] = '\0';
  rc = kerf_session_create_ex(model, int(ctx), cpu_only ? KERF_SESSION_CPU_ONLY : 0u, &sess, err, sizeof err);
  if (rc == KERF_OK) rc = kerf_session_set_threads(sess, int(threads));
  if (rc == KERF_OK && kv_f16) rc = kerf_session_set_kv_type(sess, KERF_KV_F16);
  if (rc != KERF_OK) {
    std::fprintf(stderr, "kerf-run: cannot create a session: %s%s%s\n", kerf_status_string(rc), err[0] ? ": " : "", err);
    kerf_session_free(sess);
    kerf_model_close(model);
    return exit_code_for(rc);
  }
  const int n_ctx = ctx ? int(ctx) : kerf_model_max_seq_len(model);
  std::vector<int32_t> toks(std::strlen(prompt) + 8);
  int n_tok = 0;
  if (*prompt) {
    rc = kerf_tokenize(model, prompt, 1, toks.data(), int(toks.size()), &n_tok);
  } else {  // no prompt: start from BOS alone (llama2.c), so the first piece loses its leading space
    toks[0] = kerf_token_bos(model);
    n_tok = 1;
    rc = kerf_tokenize(model, "", 1, toks.data() + 1, int(toks.size()) - 1, &n_tok);  // checks a tokenizer exists
    n_tok = 1;
  }
  if (rc != KERF_OK) {
    std::fprintf(stderr, "kerf-run: %s: cannot tokenize the prompt: %s\n", model_path,
                 rc == KERF_ERR_UNSUPPORTED ? "the artifact has no llama2c tokenizer" : kerf_status_string(rc));
    kerf_session_free(sess);
    kerf_model_close(model);
    return exit_code_for(rc);
  }
  int exit_code = 0;
  if (n_tok > n_ctx) {
    std::fprintf(stderr, "kerf-run: the prompt is %d tokens, more than the context (%d)\n", n_tok, n_ctx);
    exit_code = 2;
  }
  const int vocab = kerf_model_vocab_size(model);
  std::vector<float> logits(static_cast<size_t>(vocab));
  kerf_sampler* sampler = exit_code ? nullptr : kerf_sampler_create(temp, top_p, seed);
  double t_prefill = 0.0, t_decode = 0.0;
  int n_decoded = 0;
  if (!exit_code) {
    std::fputs(prompt, stdout);
    std::fflush(stdout);
    double t = now_s();
    rc = kerf_session_eval(sess, toks.data(), n_tok, logits.data(), 0);
    t_prefill = now_s() - t;
    int32_t prev = toks[size_t(n_tok) - 1];
    const int32_t eos = kerf_token_eos(model);
    for (long i = 0; rc == KERF_OK && i < n_new; ++i) {
      const int32_t next = kerf_sampler_sample(sampler, logits.data(), vocab);
      if (next == eos || next < 0) break;
      const char* piece = kerf_token_to_piece(model, prev, next);
      if (piece) std::fputs(piece, stdout);
      std::fflush(stdout);
      prev = next;
      if (kerf_session_pos(sess) >= n_ctx || i + 1 == n_new) break;  // context end / nothing more to sample
      t = now_s();
      rc = kerf_session_eval(sess, &next, 1, logits.data(), 0);
      t_decode += now_s() - t;
      ++n_decoded;
    }
    std::fputc('\n', stdout);
    if (rc != KERF_OK) {
      std::fprintf(stderr, "kerf-run: evaluation failed: %s: %s\n", kerf_status_string(rc), kerf_session_last_error(sess));
      exit_code = exit_code_for(rc);
    }
  }
  if (stats && !exit_code) {
    print_precisions(model);
    std::fprintf(stderr, "kernels: %s, %d thread%s, KV cache %s\n", kerf_model_isa(model), kerf_session_threads(sess),
                 kerf_session_threads(sess) == 1 ? "" : "s", kv_f16 ? "f16" : "f32");
    std::fprintf(stderr, "load: %.1f ms\n", t_load * 1e3);
    std::fprintf(stderr, "prefill: %d tokens in %.1f ms (%.1f tokens/s)\n", n_tok, t_prefill * 1e3,
                 t_prefill > 0 ? n_tok / t_prefill : 0.0);
    std::fprintf(stderr, "decode: %d tokens in %.1f ms (%.1f tokens/s)\n", n_decoded, t_decode * 1e3,
                 t_decode > 0 ? n_decoded / t_decode : 0.0);
    for (int u = 0; u < 3; ++u) {
      kerf_unit_stats st;
      if (kerf_session_unit_stats(sess, u, &st) != KERF_OK) continue;
      std::fprintf(stderr, "unit %s (%s): %llu op runs, %.1f ms running, %llu uploads / %llu downloads in %.1f ms\n",
                   u == 0 ? "cpu" : u == 1 ? "gpu" : "npu", kerf_session_unit_device(sess, u), (unsigned long long)st.ops,
                   double(st.run_ns) / 1e6, (unsigned long long)st.uploads, (unsigned long long)st.downloads,
                   double(st.transfer_ns) / 1e6);
    }
  }
  kerf_sampler_free(sampler);
  kerf_session_free(sess);
  kerf_model_close(model);
  return exit_code;
}
