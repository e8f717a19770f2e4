// runtime-lite internals: llama2.c encoding shared by kerf_tokenize (model) and kerf_tokenizer_encode.
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"

namespace kerf::rt {

/// Encodes UTF-8 `text` as shared/EVAL.md says (BOS if add_bos, dummy-prefix " ", per-character
/// lookup with byte fallback id = byte + 3 (0 when >= vocab), then best-score pair merges).
void encode(const Tokenizer& tk, int vocab, const char* text, bool add_bos, std::vector<int32_t>* out);

/// The C API's output convention: *n_tokens = ids.size(); writes min(ids.size(), max_tokens) ids
/// and returns KERF_ERR_ARGUMENT when they do not all fit, else KERF_OK.
int copy_ids(const std::vector<int32_t>& ids, int32_t* tokens, int max_tokens, int* n_tokens);

}  // namespace kerf::rt
