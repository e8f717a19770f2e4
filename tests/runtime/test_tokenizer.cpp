// llama2.c tokenizer: the EVAL.md reference prompt, byte fallback, decode.
#include <catch2/catch.hpp>

#include "kerf/tokenizer.h"
#include "test_util.h"

using namespace kt;

namespace {

/// A model with the tok512.bin tokenizer (tiny random weights).
struct TokModel {
  TempDir dir;
  kerf_model* m = nullptr;
  TokModel() {
    LlamaCfg c;
    art::ArtifactBuilder b;
    build_llama(b, c, random_llama(c, 1), fmt::DType::kF32, 32, true);
    const std::string path = dir.file("tok.kerf");
    REQUIRE(b.write(path) == "");
    std::string msg;
    REQUIRE(open_status(path, 0, &msg, &m) == KERF_OK);
  }
  ~TokModel() { kerf_model_close(m); }
  std::vector<int32_t> encode(const char* text, int bos = 1) {
    std::vector<int32_t> t(strlen(text) + 8);
    int n = -1;
    REQUIRE(kerf_tokenize(m, text, bos, t.data(), int(t.size()), &n) == KERF_OK);
    t.resize(size_t(n));
    return t;
  }
  std::string decode(const std::vector<int32_t>& t) {
    std::string s;
    for (size_t i = 1; i < t.size(); ++i) {
      const char* p = kerf_token_to_piece(m, t[i - 1], t[i]);
      REQUIRE(p != nullptr);
      s += p;
    }
    return s;
  }
};

}  // namespace

TEST_CASE("tokenizer encodes the reference prompt exactly like export_llama.py", "[tokenizer]") {
  TokModel t;
  const std::vector<int32_t> want = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
  CHECK(t.encode("Once upon a time, there was a little girl named Lily.") == want);
  CHECK(kerf_token_bos(t.m) == 1);
  CHECK(kerf_token_eos(t.m) == 2);
}

TEST_CASE("tokenizer decode round trip and llama2.c decode rules", "[tokenizer]") {
  TokModel t;
  const char* text = "Once upon a time, there was a little girl named Lily.\nShe liked to play!";
  const std::vector<int32_t> ids = t.encode(text);
  // The dummy-prefix space is stripped after BOS; the newline comes back as a raw byte.
  CHECK(t.decode(ids) == text);
  CHECK(kerf_token_to_piece(t.m, 1, 99999) == nullptr);
  CHECK(kerf_token_to_piece(t.m, 1, -1) == nullptr);
  // "<0x0A>" is token 0x0A + 3 = 13 and decodes to "\n"
  CHECK(std::string(kerf_token_to_piece(t.m, 5, 13)) == "\n");
}

TEST_CASE("tokenizer byte fallback for characters outside the vocabulary", "[tokenizer]") {
  TokModel t;
  // U+4E2D is 3 UTF-8 bytes E4 B8 AD, not a piece of tok512: byte tokens byte + 3. The expected ids
  // are export_llama.py encode_llama2c's output for the same text.
  const std::vector<int32_t> ids = t.encode("a\xC3\xA9\xE4\xB8\xAD", 1);
  CHECK(ids == std::vector<int32_t>{1, 261, 485, 0xE4 + 3, 0xB8 + 3, 0xAD + 3});
  CHECK(t.decode(ids) == "a\xC3\xA9\xE4\xB8\xAD");  // dummy space stripped after BOS, bytes come back raw
  const std::vector<int32_t> alone = t.encode("\xE4\xB8\xAD", 1);
  CHECK(alone == std::vector<int32_t>{1, 410, 0xE4 + 3, 0xB8 + 3, 0xAD + 3});
  // invalid UTF-8 (a lone continuation byte) also falls back to a byte token
  const std::vector<int32_t> bad = t.encode("\x80", 1);
  CHECK(bad == std::vector<int32_t>{1, 410, 0x80 + 3});
}

TEST_CASE("tokenizer argument handling", "[tokenizer]") {
  TokModel t;
  int32_t buf[3];
  int n = 0;
  CHECK(kerf_tokenize(t.m, "Once upon a time there was", 1, buf, 3, &n) == KERF_ERR_ARGUMENT);
  CHECK(n > 3);
  CHECK(kerf_tokenize(t.m, nullptr, 1, buf, 3, &n) == KERF_ERR_ARGUMENT);
  // without BOS
  const std::vector<int32_t> a = t.encode("Lily", 0), b = t.encode("Lily", 1);
  REQUIRE(b.size() == a.size() + 1);
  CHECK(std::vector<int32_t>(b.begin() + 1, b.end()) == a);
}

TEST_CASE("standalone tokenizer: a vocabulary under 3 tokens is rejected (fuzz regression)", "[tokenizer][fuzz]") {
  // fuzz/regressions/tokenizer/vocab1-bos-out-of-range: vocab 1 with a valid one-token file used to
  // load, and add_bos then inserted BOS = 1, one past the pieces table (heap read out of bounds).
  const uint8_t one_token[] = {1, 0, 0, 0, /*score*/ 0, 0, 0, 0, /*len*/ 1, 0, 0, 0, 'a'};
  kerf_tokenizer* t = reinterpret_cast<kerf_tokenizer*>(1);
  char err[128] = {0};
  for (int vocab : {-1, 0, 1, 2}) {
    CHECK(kerf_tokenizer_load(one_token, sizeof one_token, vocab, &t, err, sizeof err) == KERF_ERR_ARGUMENT);
    CHECK(t == nullptr);
    CHECK_THAT(std::string(err), Catch::Contains("vocab must be at least 3"));
  }
  // Three tokens parse, and BOS (1) encodes in range.
  const uint8_t three[] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'a', 0, 0, 0, 0, 1, 0, 0, 0, 'b',
                           0, 0, 0, 0, 1, 0, 0, 0, 'c'};
  REQUIRE(kerf_tokenizer_load(three, sizeof three, 3, &t, err, sizeof err) == KERF_OK);
  int32_t ids[16];
  int n = 0;
  REQUIRE(kerf_tokenizer_encode(t, "c", 1, ids, 16, &n) == KERF_OK);
  REQUIRE(n == 2);
  CHECK(ids[0] == 1);
  CHECK(ids[1] == 2);
  kerf_tokenizer_free(t);
}
