// Loading models into the lifted IR, and the tokenizer file that goes into an artifact.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/ir/ir.h"
#include "compiler/ir/pass.h"

namespace kerf::pipeline {

/// A model as the compiler sees it: the imported graph's size and the lifted graph.
struct LoadedModel {
  ir::Graph lifted;            ///< after passes::canonicalize_pipeline()
  size_t imported_nodes = 0;   ///< nodes right after import (Constant nodes already folded in)
  size_t imported_initializers = 0;
  PassContext passes;          ///< counters and log of the canonicalize run
  double import_seconds = 0, passes_seconds = 0;
};

/// Imports a model file, detected by content, not extension: a TorchScript archive (a zip,
/// "PK\x03\x04": formats/torchscript) or else ONNX (formats/onnx).
/// Errors: those of import_torchscript / import_onnx.
Result<ir::Graph> import_model(const std::string& path);

/// Imports `path` (import_model) and runs the canonicalize pipeline.
/// Errors: those of import_model and of the passes (kUnsupported names the op / node).
Result<LoadedModel> load_model(const std::string& path);

/// A llama2.c tokenizer file (tok*.bin: int32 max_token_length, then per token float32 score,
/// int32 length, bytes) checked to hold exactly `vocab_size` tokens.
/// Errors: kIo (unreadable), kBadInput naming the file, the token index and the byte offset.
Result<std::vector<uint8_t>> read_llama2c_tokenizer(const std::string& path, int64_t vocab_size);

/// Finds the tokenizer for a model when none is given: the only "tokenizer.bin" or "tok*.bin"
/// beside the model. Errors (kInvalidArgument) say what was found and to pass --tokenizer.
Result<std::string> find_tokenizer_beside(const std::string& model_path);

/// Tokenizes `text` with a llama2.c tokenizer file's bytes (shared/EVAL.md encoding, BOS first).
/// Errors: kBadInput for a malformed tokenizer file.
Result<std::vector<int64_t>> tokenize_text(const std::vector<uint8_t>& tokenizer_file, int64_t vocab, const std::string& text);
/// The same for many texts, parsing the tokenizer file once.
Result<std::vector<std::vector<int64_t>>> tokenize_texts(const std::vector<uint8_t>& tokenizer_file, int64_t vocab,
                                                         const std::vector<std::string>& texts);

/// Vocabulary size of a lifted LM graph: rows of the Embedding table. kBadInput if none.
Result<int64_t> vocab_size_of(const ir::Graph& lifted);

/// XXH64 (seed 0) of a whole file's bytes. Errors: IoError naming the path (missing, unreadable).
Result<uint64_t> file_xxh64(const std::string& path);

}  // namespace kerf::pipeline
