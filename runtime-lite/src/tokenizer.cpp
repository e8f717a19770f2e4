// llama2.c tokenizer (the tok*.bin file stored as metadata bytes "tokenizer.model").
// Encoding follows shared/tools/export_llama.py encode_llama2c (the EVAL.md protocol); decoding
// follows llama2.c's decode().
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "kerf/tokenizer.h"
#include "model.h"
#include "tokenize.h"
#include "util.h"

namespace kerf::rt {

bool parse_tokenizer(const uint8_t* data, uint64_t size, int vocab, Tokenizer* tok, std::string* err) {
  uint64_t at = 0;
  // Ids 0, 1, 2 are <unk>, <s>, </s> in every llama2.c tokenizer (BOS and EOS default to 1 and 2).
  if (vocab < 3) {
    *err = strf("vocabulary of %d tokens: a llama2.c tokenizer has at least 3 (<unk>, <s>, </s>)", vocab);
    return false;
  }
  if (size < 4) {
    *err = "too short for max_token_length";
    return false;
  }
  std::memcpy(&tok->max_token_length, data, 4);
  at = 4;
  tok->pieces.resize(size_t(vocab));
  tok->scores.resize(size_t(vocab));
  tok->index.clear();
  tok->index.reserve(size_t(vocab) * 2);
  for (int i = 0; i < vocab; ++i) {
    if (size - at < 8) {
      *err = strf("token %d header at byte %llu exceeds the %llu bytes", i, (unsigned long long)at, (unsigned long long)size);
      return false;
    }
    float score;
    int32_t len;
    std::memcpy(&score, data + at, 4);
    std::memcpy(&len, data + at + 4, 4);
    at += 8;
    if (len < 0 || uint64_t(len) > size - at) {
      *err = strf("token %d piece [byte %llu, %d bytes] exceeds the %llu bytes", i, (unsigned long long)at, len,
                  (unsigned long long)size);
      return false;
    }
    tok->scores[size_t(i)] = score;
    tok->pieces[size_t(i)].assign(reinterpret_cast<const char*>(data + at), size_t(len));
    tok->index[tok->pieces[size_t(i)]] = i;  // later duplicates win, like the python dict
    at += uint64_t(len);
  }
  tok->present = true;
  return true;
}

}  // namespace kerf::rt

namespace {

/// Length of the UTF-8 character starting at s[0] (1 for an invalid or truncated sequence).
size_t utf8_len(const unsigned char* s, size_t left) {
  size_t n = 1;
  if (s[0] >= 0xF0 && s[0] < 0xF8) n = 4;
  else if (s[0] >= 0xE0) n = s[0] < 0xF0 ? 3 : 1;
  else if (s[0] >= 0xC0) n = 2;
  if (n > left) return 1;
  for (size_t i = 1; i < n; ++i)
    if ((s[i] & 0xC0) != 0x80) return 1;
  return n;
}

}  // namespace

extern "C" {

int kerf_tokenize(const kerf_model* m, const char* text, int add_bos, int32_t* tokens, int max_tokens, int* n_tokens) {
  if (!m || !text || !n_tokens || max_tokens < 0 || (!tokens && max_tokens > 0)) return KERF_ERR_ARGUMENT;
  if (!m->tok.present) return KERF_ERR_UNSUPPORTED;
  std::vector<int32_t> ids;
  kerf::rt::encode(m->tok, m->vocab, text, add_bos != 0, &ids);
  return kerf::rt::copy_ids(ids, tokens, max_tokens, n_tokens);
}

}  // extern "C"

void kerf::rt::encode(const Tokenizer& tk, int vocab, const char* text, bool add_bos, std::vector<int32_t>* out) {
  std::vector<int32_t>& ids = *out;
  ids.clear();
  const size_t len = std::strlen(text);
  ids.reserve(len + 2);
  if (add_bos) ids.push_back(tk.bos);
  auto sp = tk.index.find(" ");
  if (sp != tk.index.end()) ids.push_back(sp->second);  // dummy prefix (the python always adds it)
  const unsigned char* s = reinterpret_cast<const unsigned char*>(text);
  std::string key;
  for (size_t i = 0; i < len;) {
    const size_t n = utf8_len(s + i, len - i);
    key.assign(text + i, n);
    auto it = tk.index.find(key);
    if (it != tk.index.end()) {
      ids.push_back(it->second);
    } else {
      for (size_t b = 0; b < n; ++b) {
        const int32_t id = int32_t(s[i + b]) + 3;
        ids.push_back(id < vocab ? id : 0);  // byte fallback (id 0 = <unk> if the vocab lacks byte pieces)
      }
    }
    i += n;
  }
  // Merge the adjacent pair whose merged piece has the best score; first pair on ties. Like the
  // python, BOS takes part in the pair search (its piece never merges in practice).
  for (;;) {
    float best = -1e10f;
    size_t at = SIZE_MAX;
    int32_t best_id = -1;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      key = tk.pieces[size_t(ids[i])];
      key += tk.pieces[size_t(ids[i + 1])];
      auto it = tk.index.find(key);
      if (it != tk.index.end() && tk.scores[size_t(it->second)] > best) {
        best = tk.scores[size_t(it->second)];
        at = i;
        best_id = it->second;
      }
    }
    if (at == SIZE_MAX) break;
    ids[at] = best_id;
    ids.erase(ids.begin() + std::ptrdiff_t(at) + 1);
  }
}

int kerf::rt::copy_ids(const std::vector<int32_t>& ids, int32_t* tokens, int max_tokens, int* n_tokens) {
  *n_tokens = int(ids.size());
  if (int(ids.size()) > max_tokens) {
    if (max_tokens > 0) std::memcpy(tokens, ids.data(), size_t(max_tokens) * sizeof(int32_t));
    return KERF_ERR_ARGUMENT;
  }
  if (!ids.empty()) std::memcpy(tokens, ids.data(), ids.size() * sizeof(int32_t));
  return KERF_OK;
}

struct kerf_tokenizer {
  kerf::rt::Tokenizer tok;
  int vocab = 0;
};

extern "C" {

int kerf_tokenizer_load(const uint8_t* data, size_t size, int vocab, kerf_tokenizer** out, char* err, size_t err_size) {
  if (out) *out = nullptr;
  if (!data || !out || vocab < 3) {
    if (err && err_size)
      std::snprintf(err, err_size, "tokenizer: %s", !data || !out ? "NULL data or output pointer"
                                                    : "vocab must be at least 3 (<unk>, <s>, </s>)");
    return KERF_ERR_ARGUMENT;
  }
  kerf_tokenizer* t = new (std::nothrow) kerf_tokenizer;
  if (!t) return KERF_ERR_MEMORY;
  std::string e;
  if (!kerf::rt::parse_tokenizer(data, size, vocab, &t->tok, &e)) {
    if (err && err_size) std::snprintf(err, err_size, "tokenizer: %s", e.c_str());
    delete t;
    return KERF_ERR_CORRUPT;
  }
  t->vocab = vocab;
  *out = t;
  return KERF_OK;
}

int kerf_tokenizer_encode(const kerf_tokenizer* t, const char* text, int add_bos, int32_t* tokens, int max_tokens, int* n_tokens) {
  if (!t || !text || !n_tokens || max_tokens < 0 || (!tokens && max_tokens > 0)) return KERF_ERR_ARGUMENT;
  std::vector<int32_t> ids;
  kerf::rt::encode(t->tok, t->vocab, text, add_bos != 0, &ids);
  return kerf::rt::copy_ids(ids, tokens, max_tokens, n_tokens);
}

void kerf_tokenizer_free(kerf_tokenizer* t) { delete t; }

const char* kerf_token_to_piece(const kerf_model* m, int32_t prev, int32_t token) {
  if (!m || !m->tok.present || token < 0 || token >= m->vocab) return nullptr;
  const char* piece = m->tok.pieces[size_t(token)].c_str();
  if (prev == m->tok.bos && piece[0] == ' ') ++piece;
  // "<0xAB>" raw byte pieces -> the byte.
  const std::string& p = m->tok.pieces[size_t(token)];
  if (p.size() == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && p[5] == '>') {
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = hex(p[3]), lo = hex(p[4]);
    if (hi >= 0 && lo >= 0) {
      kerf_model* mm = const_cast<kerf_model*>(m);  // the per-model decode buffer (documented in kerf.h)
      mm->piece_buf.assign(1, char(hi * 16 + lo));
      return mm->piece_buf.c_str();
    }
  }
  return piece;
}

int32_t kerf_token_bos(const kerf_model* m) { return m ? m->tok.bos : -1; }
int32_t kerf_token_eos(const kerf_model* m) { return m ? m->tok.eos : -1; }

}  // extern "C"
