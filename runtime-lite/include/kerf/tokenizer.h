/* runtime-lite: the llama2.c tokenizer on its own (no model), for tools that tokenize text before
 * an artifact exists (kerf compile's calibration data). Same encoding as kerf_tokenize().
 * C API; every int function returns KERF_OK (0) or a negative kerf_status (kerf/kerf.h). */
#ifndef KERF_TOKENIZER_H
#define KERF_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "kerf/kerf.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kerf_tokenizer kerf_tokenizer;

/* Parses a llama2.c tokenizer file's bytes (tok*.bin) holding exactly `vocab` tokens.
 * KERF_ERR_CORRUPT (message in err) for a malformed file, KERF_ERR_ARGUMENT for NULL / vocab < 3 (ids 0-2
 * are <unk>, <s>, </s>; BOS = 1 is what add_bos inserts). */
int kerf_tokenizer_load(const uint8_t* data, size_t size, int vocab, kerf_tokenizer** out, char* err, size_t err_size);
/* Encodes UTF-8 text (BOS first when add_bos). *n_tokens receives the full count; when it exceeds
 * max_tokens only max_tokens ids are written and KERF_ERR_ARGUMENT is returned. */
int kerf_tokenizer_encode(const kerf_tokenizer* t, const char* text, int add_bos, int32_t* tokens, int max_tokens,
                          int* n_tokens);
void kerf_tokenizer_free(kerf_tokenizer* t);

#ifdef __cplusplus
}
#endif

#endif
