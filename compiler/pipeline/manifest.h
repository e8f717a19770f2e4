// Package manifests ("kerf.manifest/1"): a JSON file beside each compiled artifact that records what
// went in (source model, tokenizer, recipe, calibration data, distillation checkpoint: basenames and
// SHA-256 of their bytes), what came out (the artifact's size and SHA-256), the tool (version and git
// commit), the target profile, and the verification result (`kerf verify` fills it in).
// Identical inputs give byte-identical manifests: no timestamps, absolute paths or host names. The
// LibTorch thread count and BLAS are recorded ("compute") only for compiles given calibration text,
// whose artifacts depend on them (docs/manifest.md, "Reproducibility"). Field reference:
// docs/manifest.md.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "compiler/ir/status.h"
#include "compiler/pipeline/compile.h"

namespace kerf::pipeline {

/// The schema tag written in every manifest's "schema" field.
inline constexpr const char* kManifestSchema = "kerf.manifest/1";

/// Where the manifest of `artifact_path` lives: beside it, with the artifact's extension (".kerf", or
/// whatever follows the last '.' of the file name) replaced by ".manifest.json":
/// "out/m.kerf" -> "out/m.manifest.json"; "m" (no extension) -> "m.manifest.json".
std::string manifest_path_for(const std::string& artifact_path);

/// Lower-case hex SHA-256 of the file's bytes (streamed in 1 MiB blocks, so multi-GB files are fine),
/// and its size in bytes. Errors: kIo (cannot open / read; the message names the file), kInternal
/// (the hash library failed).
struct FileDigest {
  uint64_t bytes = 0;
  std::string sha256;  ///< 64 lower-case hex characters
};
Result<FileDigest> sha256_file(const std::string& path);

/// Lower-case hex SHA-256 of an in-memory byte string.
std::string sha256_hex(const std::string& bytes);

/// Reads and parses a manifest. Errors: kIo (missing / unreadable file), kBadInput (not JSON, not an
/// object, or "schema" is not "kerf.manifest/1"); messages name the file.
Result<nlohmann::ordered_json> read_manifest(const std::string& manifest_path);

/// Writes `manifest` to `manifest_path` atomically (temporary file in the same directory + rename;
/// pretty-printed with 2-space indent and a trailing newline). Errors: kIo, naming the file.
Status write_manifest(const std::string& manifest_path, const nlohmann::ordered_json& manifest);

/// Rewrites the manifest at `manifest_path` atomically with its "verification" field set to
/// `verification` (the object `kerf verify` produced; null clears it). Other fields and their order are
/// kept. Errors: kIo (missing / unreadable / unwritable file), kBadInput (malformed JSON or not a
/// kerf.manifest/1 object); messages name the file.
Status manifest_set_verification(const std::string& manifest_path,
                                 const nlohmann::ordered_json& verification);

/// Checks the artifact against its manifest: size and SHA-256 of `artifact_path`'s bytes must equal
/// manifest.artifact.bytes / .sha256. Errors: kBadInput ("<artifact>: sha256 ... does not match
/// manifest <file> ..." when altered, or the manifest lacks the fields), kIo (unreadable).
Status check_artifact_against_manifest(const std::string& artifact_path,
                                       const nlohmann::ordered_json& manifest,
                                       const std::string& manifest_path);

/// What `kerf inspect ARTIFACT` prints about the package manifest: when manifest_path_for(artifact)
/// exists, "manifest <path>: artifact sha256 matches" and the manifest (pretty JSON); otherwise a line
/// saying there is none. Errors: kBadInput when the artifact's bytes do not match the manifest
/// (altered or replaced artifact) or the manifest is malformed; kIo when unreadable.
Result<std::string> inspect_manifest_text(const std::string& artifact_path);

/// The canonical text of the compile options that change the artifact, in a fixed order, only those
/// that differ from their defaults, without paths (the files are hashed separately) and without
/// settings that do not change the output (threads, progress, --no-verify-lift). Example:
/// "--target host --linear int4_asym:g32 --calib-stories 0:16". `calibrated`: the calibrated path ran
/// (CompileSummary::calibrated), which ignores the RTN baseline's --linear / --embedding dtypes and
/// --group-size. Recorded as manifest.recipe.options.
std::string canonical_compile_options(const CompileOptions& opt, bool calibrated);

/// The files and values of one compile that the manifest records, besides `opt` and the summary.
struct CompileManifestInputs {
  std::string tokenizer_path;   ///< the tokenizer file used (given or found beside the model)
  std::string recipe_name;      ///< the YAML recipe's `name:` (empty without --recipe)
  std::string checkpoint_path;  ///< distillation checkpoint the weights came from (empty: none)
};

/// The "kerf.manifest/1" object of a finished compile (opt.output_path must be the complete
/// artifact): hashes the artifact, the source model (and its ONNX external-data files), the
/// tokenizer, the recipe file, the calibration text and the checkpoint; "verification" is null.
/// Errors: kIo naming an unreadable file; kBadInput for an ONNX file whose external-data entries
/// cannot be read.
Result<nlohmann::ordered_json> compile_manifest(const CompileOptions& opt, const CompileSummary& s,
                                                const CompileManifestInputs& in);

/// compile_manifest() written to manifest_path_for(opt.output_path). Called by compile() after the
/// artifact is in place. On error it removes the artifact and any manifest at that path, so a
/// failed compile leaves neither behind.
Status write_compile_manifest(const CompileOptions& opt, const CompileSummary& s, const CompileManifestInputs& in);

}  // namespace kerf::pipeline
