// libFuzzer target: the llama2.c tokenizer parser (kerf_tokenizer_load) and encoder. Input: 2 bytes
// giving the vocabulary size (little-endian, 1..4096), then the tokenizer file; what loads encodes a
// fixed text (ASCII, UTF-8, invalid UTF-8) and the input bytes themselves as text.
#include <cstdint>
#include <string>
#include <vector>

#include "kerf/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int vocab = 1 + int((uint32_t(data[0]) | uint32_t(data[1]) << 8) % 4096);
  kerf_tokenizer* t = nullptr;
  char err[256];
  if (kerf_tokenizer_load(data + 2, size - 2, vocab, &t, err, sizeof err) != 0) return 0;
  std::vector<int32_t> ids(4096);
  int n = 0;
  kerf_tokenizer_encode(t, "Once upon a time, Lily saw a \xc3\xa9l\xc3\xa9phant \xff\xfe.", 1, ids.data(), int(ids.size()), &n);
  kerf_tokenizer_encode(t, "", 0, ids.data(), int(ids.size()), &n);
  const std::string text(reinterpret_cast<const char*>(data) + 2, size - 2);  // NULs end it early: fine
  kerf_tokenizer_encode(t, text.c_str(), 1, ids.data(), 4, &n);  // too small an output: an error status
  kerf_tokenizer_free(t);
  return 0;
}
