// kerf compiler: error model. Every fallible compiler function returns Status or Result<T>;
// exceptions from LibTorch / protobuf are caught at the boundary and turned into a Status.
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace kerf {

/// Error classes. The CLI maps them to exit codes (see README "Exit codes").
enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,  ///< bad command-line option or API argument (exit 2)
  kBadInput,         ///< malformed model / artifact / text file (exit 3)
  kUnsupported,      ///< well-formed input kerf cannot handle, e.g. an unknown op (exit 4)
  kIo,               ///< file could not be read or written (exit 5)
  kVerificationFailed,  ///< `kerf verify`: a measured metric is outside its threshold (exit 6)
  kResourceLimit,    ///< out of memory, or a model beyond kerf's limits (file size, nodes, rank) (exit 7)
  kInternal,         ///< a kerf bug (exit 70)
};

const char* error_code_name(ErrorCode c);
int exit_code_for(ErrorCode c);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }
  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  /// "unsupported: <message>"
  std::string to_string() const;
  /// Prepends context: "while importing x.onnx: <old message>".
  Status with_context(const std::string& ctx) const {
    return ok() ? *this : Status(code_, ctx + ": " + message_);
  }

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {ErrorCode::kInvalidArgument, std::move(m)}; }
inline Status BadInput(std::string m) { return {ErrorCode::kBadInput, std::move(m)}; }
inline Status Unsupported(std::string m) { return {ErrorCode::kUnsupported, std::move(m)}; }
inline Status IoError(std::string m) { return {ErrorCode::kIo, std::move(m)}; }
inline Status Internal(std::string m) { return {ErrorCode::kInternal, std::move(m)}; }
inline Status ResourceLimit(std::string m) { return {ErrorCode::kResourceLimit, std::move(m)}; }
inline Status VerificationFailed(std::string m) { return {ErrorCode::kVerificationFailed, std::move(m)}; }

/// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}                  // NOLINT(implicit)
  Result(Status status) : status_(std::move(status)) {}          // NOLINT(implicit)
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace kerf

#define KERF_CONCAT_INNER(a, b) a##b
#define KERF_CONCAT(a, b) KERF_CONCAT_INNER(a, b)

/// Returns the Status from the enclosing function if `expr` (a Status) is not ok.
#define KERF_RETURN_IF_ERROR(expr)            \
  do {                                        \
    ::kerf::Status kerf_st_ = (expr);         \
    if (!kerf_st_.ok()) return kerf_st_;      \
  } while (0)

/// `KERF_ASSIGN_OR_RETURN(auto x, f());` declares x from a Result or returns its Status.
#define KERF_ASSIGN_OR_RETURN(decl, expr)                                   \
  auto KERF_CONCAT(kerf_res_, __LINE__) = (expr);                           \
  if (!KERF_CONCAT(kerf_res_, __LINE__).ok())                               \
    return KERF_CONCAT(kerf_res_, __LINE__).status();                       \
  decl = std::move(KERF_CONCAT(kerf_res_, __LINE__)).value()
