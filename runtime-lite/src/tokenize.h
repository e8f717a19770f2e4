// runtime-lite internals: llama2.c encoding shared by kerf_tokenize (model) and kerf_tokenizer_encode.
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"

namespace kerf::rt {

/// Encodes UTF-8 `text` as shared/EVAL.md says (BOS if add_bos, dummy-prefix " ", per-character
/// lookup with byte fallback id = byte + 3 (0 when >= vocab), then best-score pair merges).
void encode(const Tokenizer& tk, int vocab, const char* text, bool add_bos, std::vector<int32_t>* out);

}  // namespace kerf::rt
