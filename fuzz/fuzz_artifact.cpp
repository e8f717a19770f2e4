// libFuzzer target: the .kerf loader (kerf_model_open_memory) on arbitrary bytes. The header and
// section hashes are re-computed first (fmt::rehash_file), so that mutations reach the parsers and
// bounds checks instead of stopping at a checksum; payload hashes are skipped for the same reason
// (KERF_OPEN_NO_VERIFY_DATA). Whatever opens is run: introspection, a 2-token prefill + 1 decode
// step, tokenization and detokenization; any payload values (NaN scales, wild codes) must be safe.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kerf/format.h"
#include "kerf/kerf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const size_t cap = (size + 63) / 64 * 64 + 64;
  uint8_t* buf = static_cast<uint8_t*>(std::aligned_alloc(64, cap));
  if (!buf) return 0;
  if (size) std::memcpy(buf, data, size);
  kerf::fmt::rehash_file(buf, size);
  kerf_model* m = nullptr;
  char err[512];
  if (kerf_model_open_memory(buf, size, KERF_OPEN_NO_VERIFY_DATA, "fuzz.kerf", &m, err, sizeof err) == KERF_OK) {
    char line[512];
    for (int i = 0; i < kerf_model_op_count(m); ++i) kerf_model_op_describe(m, i, line, sizeof line);
    kerf_tensor_info ti;
    for (int i = 0; i < kerf_model_tensor_count(m); ++i) kerf_model_tensor_info(m, i, &ti);
    const int vocab = kerf_model_vocab_size(m);
    kerf_session* s = nullptr;
    // Bounded work per input: the executor runs only models whose weights fit in the input (always
    // true here) and a context of at most 8.
    const int n_ctx = kerf_model_max_seq_len(m) < 8 ? kerf_model_max_seq_len(m) : 8;
    if (vocab <= (1 << 16) && kerf_session_create(m, n_ctx, &s) == KERF_OK) {
      std::vector<float> logits(size_t(vocab) * 2);
      const int32_t toks[2] = {0, vocab - 1};
      if (kerf_session_eval(s, toks, n_ctx >= 2 ? 2 : 1, logits.data(), 1) == KERF_OK && n_ctx >= 3)
        kerf_session_eval(s, toks + 1, 1, logits.data(), 0);
      kerf_session_free(s);
    }
    int32_t ids[64];
    int n = 0;
    if (kerf_tokenize(m, "Once upon a time, \xc3\xa9\xff!", 1, ids, 64, &n) == KERF_OK)
      for (int i = 0; i < n; ++i) kerf_token_to_piece(m, i ? ids[i - 1] : kerf_token_bos(m), ids[i]);
    kerf_model_close(m);
  }
  std::free(buf);
  return 0;
}
