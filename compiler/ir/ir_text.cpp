#include "compiler/ir/ir_text.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "kerf/xxh64.h"

namespace kerf::ir {

namespace {

// ----------------------------------------------------------------------------------- char classes

bool is_alpha(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_word_char(char c) { return is_alpha(c) || is_digit(c) || c == '.'; }
bool is_name_char(char c) {
  return is_alpha(c) || is_digit(c) || c == '.' || c == ':' || c == '/' || c == '-';
}

/// [A-Za-z0-9_.:/\-]+ : may follow '%' / '@' unquoted.
bool is_bare_name(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!is_name_char(c)) return false;
  return true;
}

/// [A-Za-z_][A-Za-z0-9_.]* : one lexer word.
bool is_word(std::string_view s) {
  if (s.empty() || !is_alpha(s[0])) return false;
  for (char c : s)
    if (!is_word_char(c)) return false;
  return true;
}

/// [A-Za-z_][A-Za-z0-9_]*
bool is_ident(std::string_view s) {
  if (s.empty() || !is_alpha(s[0])) return false;
  for (char c : s)
    if (!is_alpha(c) && !is_digit(c)) return false;
  return true;
}

/// Identifiers joined by single dots ("com.microsoft").
bool is_dotted_ident(std::string_view s) {
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    if (!is_ident(s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start)))
      return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// ---------------------------------------------------------------------------------------- printing

void append_quoted(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

std::string quoted(std::string_view s) {
  std::string out;
  append_quoted(out, s);
  return out;
}

void append_vref(std::string& out, const std::string& name) {
  if (name.empty()) {
    out += '_';
  } else if (is_bare_name(name)) {
    out += '%';
    out += name;
  } else {
    out += '%';
    append_quoted(out, name);
  }
}

std::string dtype_token(DType t) { return t == DType::kUndefined ? "?" : dtype_name(t); }

void append_dim(std::string& out, const Dim& d) {
  if (d.value == -1) {
    if (d.symbol.empty())
      out += '?';
    else if (is_word(d.symbol))
      out += d.symbol;
    else
      append_quoted(out, d.symbol);
  } else {
    out += std::to_string(d.value);
  }
}

void append_value_type(std::string& out, const ValueInfo& vi) {
  out += dtype_token(vi.dtype);
  if (!vi.rank_known) return;
  out += '[';
  for (size_t i = 0; i < vi.shape.size(); ++i) {
    if (i) out += ',';
    append_dim(out, vi.shape[i]);
  }
  out += ']';
}

void append_tensor_type(std::string& out, const Tensor& t) {
  out += dtype_token(t.dtype);
  out += '[';
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(t.shape[i]);
  }
  out += ']';
}

/// Makes a finite float token recognisable as a float: "65504" -> "65504.0".
void ensure_float_look(std::string& s) {
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
}

template <class F>
std::string shortest(F v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, r.ptr);
  ensure_float_look(s);
  return s;
}

std::string hex_bits(uint64_t bits, int digits) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "0x%0*llx", digits, static_cast<unsigned long long>(bits));
  return buf;
}

/// Canonical (default quiet) NaN bit pattern of a float dtype, positive.
uint64_t canonical_nan(DType t) {
  switch (t) {
    case DType::kF16: return 0x7e00u;
    case DType::kBF16: return 0x7fc0u;
    case DType::kF32: return 0x7fc00000u;
    default: return 0x7ff8000000000000ull;
  }
}
uint64_t sign_bit(DType t) {
  switch (t) {
    case DType::kF16: case DType::kBF16: return 0x8000u;
    case DType::kF32: return 0x80000000u;
    default: return 0x8000000000000000ull;
  }
}
int hex_digits(DType t) {
  return static_cast<int>(2 * (dtype_size(t) == 0 ? 8 : dtype_size(t)));
}
bool bits_are_nan(DType t, uint64_t bits) {
  switch (t) {
    case DType::kF16: return (bits & 0x7c00u) == 0x7c00u && (bits & 0x3ffu) != 0 && bits <= 0xffffu;
    case DType::kBF16: return (bits & 0x7f80u) == 0x7f80u && (bits & 0x7fu) != 0 && bits <= 0xffffu;
    case DType::kF32:
      return (bits & 0x7f800000u) == 0x7f800000u && (bits & 0x7fffffu) != 0 && bits <= 0xffffffffu;
    default:
      return (bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull && (bits & 0xfffffffffffffull) != 0;
  }
}

std::string nan_token(DType t, uint64_t bits) {
  if (bits == canonical_nan(t)) return "nan";
  if (bits == (canonical_nan(t) | sign_bit(t))) return "-nan";
  return "nan(" + hex_bits(bits, hex_digits(t)) + ")";
}

std::string fmt_double(double v) {
  if (std::isnan(v)) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    return nan_token(DType::kF64, bits);
  }
  return shortest(v);
}

/// Element i of a well-formed tensor.
void append_element(std::string& out, const Tensor& t, size_t i) {
  const uint8_t* p = t.data.data() + i * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      if (std::isnan(f)) {
        uint32_t b;
        std::memcpy(&b, p, 4);
        out += nan_token(t.dtype, b);
      } else {
        out += shortest(f);
      }
      break;
    }
    case DType::kF16:
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      const float f = t.dtype == DType::kF16 ? half_to_float(h) : bf16_to_float(h);
      out += std::isnan(f) ? nan_token(t.dtype, h) : shortest(f);
      break;
    }
    case DType::kF64: {
      double d;
      std::memcpy(&d, p, 8);
      out += fmt_double(d);
      break;
    }
    case DType::kI64: {
      int64_t v;
      std::memcpy(&v, p, 8);
      out += std::to_string(v);
      break;
    }
    case DType::kI32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      out += std::to_string(v);
      break;
    }
    case DType::kI8: out += std::to_string(static_cast<int>(static_cast<int8_t>(*p))); break;
    case DType::kU8:
    case DType::kBool: out += std::to_string(static_cast<int>(*p)); break;
    case DType::kUndefined: break;
  }
}

bool well_formed(const Tensor& t) {
  if (t.dtype == DType::kUndefined) return false;
  for (int64_t d : t.shape)
    if (d < 0) return false;
  return static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype) == t.data.size();
}

/// The data part of a const / tensor attribute: "[...]", "raw \"..\"" or "elided(...)".
void append_tensor_data(std::string& out, const Tensor& t, const PrintOptions& opt) {
  if (opt.max_inline_elements >= 0 && t.numel() > opt.max_inline_elements) {
    out += "elided(" + std::to_string(t.data.size()) + " bytes, xxh64 " +
           hex_bits(kerf::xxh64(t.data.data(), t.data.size()), 16) + ")";
    return;
  }
  if (!well_formed(t)) {
    static const char* kHex = "0123456789abcdef";
    out += "raw \"";
    for (uint8_t b : t.data) {
      out += kHex[b >> 4];
      out += kHex[b & 15];
    }
    out += '"';
    return;
  }
  out += '[';
  const size_t n = static_cast<size_t>(t.numel());
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ", ";
    append_element(out, t, i);
  }
  out += ']';
}

void append_attr_value(std::string& out, const AttrValue& v, const PrintOptions& opt) {
  if (auto* i = std::get_if<int64_t>(&v)) {
    out += std::to_string(*i);
  } else if (auto* d = std::get_if<double>(&v)) {
    out += fmt_double(*d);
  } else if (auto* s = std::get_if<std::string>(&v)) {
    append_quoted(out, *s);
  } else if (auto* is = std::get_if<std::vector<int64_t>>(&v)) {
    out += "i[";
    for (size_t k = 0; k < is->size(); ++k) {
      if (k) out += ", ";
      out += std::to_string((*is)[k]);
    }
    out += ']';
  } else if (auto* fs = std::get_if<std::vector<double>>(&v)) {
    out += "f[";
    for (size_t k = 0; k < fs->size(); ++k) {
      if (k) out += ", ";
      out += fmt_double((*fs)[k]);
    }
    out += ']';
  } else if (auto* t = std::get_if<Tensor>(&v)) {
    out += "tensor ";
    append_tensor_type(out, *t);
    out += ' ';
    append_tensor_data(out, *t, opt);
  }
}

void append_op(std::string& out, const Node& n) {
  if (is_ident(n.op) && (n.domain.empty() || is_dotted_ident(n.domain))) {
    out += n.qualified_op();
  } else {
    append_quoted(out, n.domain);
    out += '.';
    append_quoted(out, n.op);
  }
}

}  // namespace

std::string print_graph(const Graph& g, const PrintOptions& opt) {
  std::string out;
  std::set<std::string> typed;  // names whose Graph::values entry has been printed
  auto annotate = [&](const std::string& name, bool allowed) {
    if (!allowed) return;
    auto it = g.values.find(name);
    if (it == g.values.end()) return;
    out += " : ";
    append_value_type(out, it->second);
    typed.insert(name);
  };

  out += "graph ";
  append_quoted(out, g.name);
  out += " opset " + std::to_string(g.opset) + " {\n";
  for (const auto& [k, v] : g.metadata) {
    out += "  meta ";
    append_quoted(out, k);
    out += " = ";
    append_quoted(out, v);
    out += '\n';
  }
  for (const auto& in : g.inputs) {
    out += "  input ";
    append_vref(out, in);
    annotate(in, true);
    out += '\n';
  }
  for (const auto& o : g.outputs) {
    out += "  output ";
    append_vref(out, o);
    annotate(o, true);
    out += '\n';
  }
  for (const auto& [name, t] : g.initializers) {
    out += "  const ";
    append_vref(out, name);
    out += " : ";
    append_tensor_type(out, t);
    out += " = ";
    append_tensor_data(out, t, opt);
    out += '\n';
  }
  for (const auto& n : g.nodes) {
    out += "  ";
    if (n.outputs.empty()) out += "()";
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      if (i) out += ", ";
      append_vref(out, n.outputs[i]);
      annotate(n.outputs[i], opt.value_types);
    }
    out += " = ";
    append_op(out, n);
    out += '(';
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      if (i) out += ", ";
      append_vref(out, n.inputs[i]);
    }
    out += ')';
    if (!n.attrs.empty()) {
      out += " {";
      bool first = true;
      for (const auto& [k, v] : n.attrs) {
        if (!first) out += ", ";
        first = false;
        if (is_word(k))
          out += k;
        else
          append_quoted(out, k);
        out += " = ";
        append_attr_value(out, v, opt);
      }
      out += '}';
    }
    if (!n.name.empty()) {
      out += " @";
      if (is_bare_name(n.name))
        out += n.name;
      else
        append_quoted(out, n.name);
    }
    out += '\n';
  }
  if (opt.value_types) {
    for (const auto& [name, vi] : g.values) {
      if (typed.count(name)) continue;
      out += "  value ";
      append_vref(out, name);
      out += " : ";
      append_value_type(out, vi);
      out += '\n';
    }
  }
  out += "}\n";
  return out;
}

// ------------------------------------------------------------------------------------------ parsing

namespace {

enum class Tok { kWord, kNumber, kString, kValue, kNodeName, kPunct, kNewline, kEnd, kError };

struct Token {
  Tok kind = Tok::kEnd;
  std::string text;  // decoded text (strings unescaped; value/node names without the sigil)
  int line = 1, col = 1;
};

class Lexer {
 public:
  explicit Lexer(std::string_view src) : s_(src) {}

  Token next() {
    // Skip blanks and comments (not newlines).
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\r') {
        advance();
      } else if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') advance();
      } else {
        break;
      }
    }
    Token t;
    t.line = line_;
    t.col = col_;
    if (pos_ >= s_.size()) {
      t.kind = Tok::kEnd;
      return t;
    }
    const char c = s_[pos_];
    if (c == '\n') {
      advance();
      t.kind = Tok::kNewline;
      return t;
    }
    if (c == '"') {
      t.kind = Tok::kString;
      if (!read_string(t)) t.kind = Tok::kError;
      return t;
    }
    if (c == '%' || c == '@') {
      t.kind = c == '%' ? Tok::kValue : Tok::kNodeName;
      advance();
      if (pos_ < s_.size() && s_[pos_] == '"') {
        if (!read_string(t)) t.kind = Tok::kError;
        return t;
      }
      const size_t start = pos_;
      while (pos_ < s_.size() && is_name_char(s_[pos_])) advance();
      t.text = std::string(s_.substr(start, pos_ - start));
      if (t.text.empty()) {
        t.kind = Tok::kError;
        t.text = "expected a name or a quoted string after '" + std::string(1, c) + "', got " + describe_here();
      }
      return t;
    }
    if (is_alpha(c) || (c == '-' && pos_ + 1 < s_.size() && is_alpha(s_[pos_ + 1]))) {
      const size_t start = pos_;
      advance();
      while (pos_ < s_.size() && is_word_char(s_[pos_])) advance();
      t.text = std::string(s_.substr(start, pos_ - start));
      t.kind = c == '-' ? Tok::kNumber : Tok::kWord;  // "-inf", "-nan"
      if ((t.text == "nan" || t.text == "-nan") && pos_ < s_.size() && s_[pos_] == '(') {
        const size_t close = s_.find(')', pos_);
        if (close != std::string_view::npos && s_.substr(pos_, close - pos_).find('\n') == std::string_view::npos) {
          while (pos_ <= close) advance();
          t.text = std::string(s_.substr(start, pos_ - start));
        }
      }
      return t;
    }
    if (is_digit(c) || ((c == '-' || c == '.') && pos_ + 1 < s_.size() &&
                         (is_digit(s_[pos_ + 1]) || s_[pos_ + 1] == '.'))) {
      const size_t start = pos_;
      advance();
      const bool hex = c == '0' && pos_ < s_.size() && (s_[pos_] == 'x' || s_[pos_] == 'X');
      while (pos_ < s_.size()) {
        const char d = s_[pos_];
        if (is_word_char(d)) {
          advance();
        } else if ((d == '+' || d == '-') && !hex && (s_[pos_ - 1] == 'e' || s_[pos_ - 1] == 'E')) {
          advance();
        } else {
          break;
        }
      }
      t.kind = Tok::kNumber;
      t.text = std::string(s_.substr(start, pos_ - start));
      return t;
    }
    if (std::strchr("()[]{},=:?.", c) != nullptr) {
      advance();
      t.kind = Tok::kPunct;
      t.text = std::string(1, c);
      return t;
    }
    t.kind = Tok::kError;
    t.text = "expected a token, got " + describe_here();
    return t;
  }

 private:
  std::string describe_here() const {
    if (pos_ >= s_.size()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(s_[pos_]);
    if (c == '\n') return "end of line";
    if (c < 0x20 || c >= 0x7f) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "byte 0x%02x", c);
      return buf;
    }
    return "'" + std::string(1, static_cast<char>(c)) + "'";
  }

  void advance() {
    if (s_[pos_] == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
    ++pos_;
  }

  static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  /// At '"': reads a quoted string into t.text. On error t.text is the message (sans position).
  bool read_string(Token& t) {
    advance();  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] == '\n') {
        t.text = "expected a closing '\"', got " + describe_here();
        return false;
      }
      const char c = s_[pos_];
      if (c == '"') {
        advance();
        t.text = std::move(out);
        return true;
      }
      if (c != '\\') {
        out += c;
        advance();
        continue;
      }
      advance();
      if (pos_ >= s_.size()) {
        t.text = "expected an escape character after '\\', got end of input";
        return false;
      }
      const char e = s_[pos_];
      switch (e) {
        case '"': out += '"'; advance(); break;
        case '\\': out += '\\'; advance(); break;
        case 'n': out += '\n'; advance(); break;
        case 't': out += '\t'; advance(); break;
        case 'r': out += '\r'; advance(); break;
        case 'x': {
          advance();
          const int h = pos_ < s_.size() ? hexval(s_[pos_]) : -1;
          const int l = pos_ + 1 < s_.size() ? hexval(s_[pos_ + 1]) : -1;
          if (h < 0 || l < 0) {
            t.text = "expected two hex digits after '\\x', got " + describe_here();
            return false;
          }
          out += static_cast<char>(h * 16 + l);
          advance();
          advance();
          break;
        }
        default:
          t.text = "expected an escape (\\\" \\\\ \\n \\t \\r \\xHH), got " + describe_here();
          return false;
      }
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
  int line_ = 1, col_ = 1;
};

std::string describe(const Token& t) {
  switch (t.kind) {
    case Tok::kNewline: return "end of line";
    case Tok::kEnd: return "end of input";
    case Tok::kString: {
      std::string s = t.text.size() > 40 ? t.text.substr(0, 40) + "..." : t.text;
      return "string " + quoted(s);
    }
    case Tok::kValue: {
      std::string s;
      append_vref(s, t.text);
      return "'" + s + "'";
    }
    case Tok::kNodeName: return "'@" + t.text + "'";
    default: return "'" + (t.text.size() > 40 ? t.text.substr(0, 40) + "..." : t.text) + "'";
  }
}

const char* kDtypeList = "f32, f16, bf16, f64, i64, i32, i8, u8, bool or ?";

class Parser {
 public:
  explicit Parser(std::string_view text) : lex_(text) { cur_ = lex_.next(); }

  Result<Graph> parse() {
    Graph g;
    skip_newlines();
    KERF_RETURN_IF_ERROR(expect_word("graph"));
    if (cur_.kind != Tok::kString) return err("a quoted graph name");
    g.name = take().text;
    KERF_RETURN_IF_ERROR(expect_word("opset"));
    KERF_ASSIGN_OR_RETURN(g.opset, parse_int64());
    KERF_RETURN_IF_ERROR(expect_punct("{"));
    KERF_RETURN_IF_ERROR(expect_eol());
    while (true) {
      if (cur_.kind == Tok::kNewline) {
        take();
        continue;
      }
      if (is_punct("}")) break;
      KERF_RETURN_IF_ERROR(statement(g));
      KERF_RETURN_IF_ERROR(expect_eol());
    }
    take();  // '}'
    skip_newlines();
    if (cur_.kind != Tok::kEnd) return err("end of input after the graph's '}'");
    return g;
  }

 private:
  // ------------------------------------------------------------------------------- token helpers
  Token take() {
    Token t = std::move(cur_);
    cur_ = lex_.next();
    return t;
  }
  void skip_newlines() {
    while (cur_.kind == Tok::kNewline) take();
  }
  bool is_punct(const char* p) const { return cur_.kind == Tok::kPunct && cur_.text == p; }
  bool is_word(const char* w) const { return cur_.kind == Tok::kWord && cur_.text == w; }

  static std::string pos(const Token& t) {
    return "line " + std::to_string(t.line) + ", column " + std::to_string(t.col) + ": ";
  }
  /// "line L, column C: expected <what>, got <current token>" (or the lexer's message).
  Status err(const std::string& what) const { return err_at(cur_, what); }
  static Status err_at(const Token& t, const std::string& what) {
    if (t.kind == Tok::kError) return BadInput(pos(t) + t.text);
    return BadInput(pos(t) + "expected " + what + ", got " + describe(t));
  }
  static Status err_got(const Token& t, const std::string& what, const std::string& got) {
    return BadInput(pos(t) + "expected " + what + ", got " + got);
  }

  Status expect_punct(const char* p) {
    if (!is_punct(p)) return err(std::string("'") + p + "'");
    take();
    return Status::Ok();
  }
  Status expect_word(const char* w) {
    if (!is_word(w)) return err(std::string("'") + w + "'");
    take();
    return Status::Ok();
  }
  Status expect_eol() {
    if (cur_.kind == Tok::kNewline) {
      take();
      return Status::Ok();
    }
    return err("end of line");
  }

  // ------------------------------------------------------------------------------------ numbers
  static bool looks_float(const std::string& s) {
    if (s.size() > 1 && (s.rfind("0x", 0) == 0 || s.rfind("0X", 0) == 0)) return false;
    return s.find_first_of(".eEn") != std::string::npos;  // '.', exponent, inf, nan
  }

  Result<int64_t> parse_int64() {
    if (cur_.kind != Tok::kNumber || looks_float(cur_.text)) return err("an integer");
    int64_t v = 0;
    const std::string& s = cur_.text;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return err("a 64-bit integer");
    take();
    return v;
  }

  static bool parse_hex(std::string_view s, uint64_t& v) {
    if (s.size() < 3 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) return false;
    auto r = std::from_chars(s.data() + 2, s.data() + s.size(), v, 16);
    return r.ec == std::errc() && r.ptr == s.data() + s.size();
  }

  /// A float token for an element of float dtype `t` (kF64 for attributes): returns its bits in
  /// that dtype (f32/f64 bits; f16/bf16 bits in the low 16).
  Result<uint64_t> parse_float_bits(DType t) {
    const bool ok_kind = cur_.kind == Tok::kNumber || (cur_.kind == Tok::kWord && (cur_.text == "inf" ||
                                                                                cur_.text.rfind("nan", 0) == 0));
    const std::string what = std::string("a ") + dtype_name(t) + " number";
    if (!ok_kind) return err(what);
    const std::string& s = cur_.text;
    // NaN forms.
    if (s == "nan" || s == "-nan") {
      uint64_t bits = canonical_nan(t) | (s[0] == '-' ? sign_bit(t) : 0);
      take();
      return bits;
    }
    if (s.rfind("nan(", 0) == 0 || s.rfind("-nan(", 0) == 0) {
      const size_t open = s.find('(');
      uint64_t bits = 0;
      if (s.back() != ')' || !parse_hex(std::string_view(s).substr(open + 1, s.size() - open - 2), bits) ||
          !bits_are_nan(t, bits))
        return err(std::string("a NaN bit pattern of ") + dtype_name(t) + " like nan(" +
                   hex_bits(canonical_nan(t) | 1, hex_digits(t)) + ")");
      take();
      return bits;
    }
    if (t == DType::kF64) {
      double d = 0;
      auto r = std::from_chars(s.data(), s.data() + s.size(), d);
      if (r.ptr != s.data() + s.size() || (r.ec != std::errc() && r.ec != std::errc::result_out_of_range))
        return err(what);
      if (r.ec == std::errc::result_out_of_range) d = std::strtod(s.c_str(), nullptr);
      uint64_t bits;
      std::memcpy(&bits, &d, 8);
      take();
      return bits;
    }
    float f = 0;
    auto r = std::from_chars(s.data(), s.data() + s.size(), f);
    if (r.ptr != s.data() + s.size() || (r.ec != std::errc() && r.ec != std::errc::result_out_of_range))
      return err(what);
    if (r.ec == std::errc::result_out_of_range) f = std::strtof(s.c_str(), nullptr);
    take();
    if (t == DType::kF16) return static_cast<uint64_t>(float_to_half(f));
    if (t == DType::kBF16) return static_cast<uint64_t>(float_to_bf16(f));
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return static_cast<uint64_t>(b);
  }

  Result<double> parse_double() {
    KERF_ASSIGN_OR_RETURN(uint64_t bits, parse_float_bits(DType::kF64));
    double d;
    std::memcpy(&d, &bits, 8);
    return d;
  }

  // -------------------------------------------------------------------------------------- names
  /// %name, %"name" or _ (empty name).
  Result<std::string> parse_vref(const char* what = "a value name (%name, %\"name\" or _)") {
    if (cur_.kind == Tok::kValue) return take().text;
    if (is_word("_")) {
      take();
      return std::string();
    }
    return err(what);
  }

  // -------------------------------------------------------------------------------------- types
  Result<DType> parse_dtype() {
    if (is_punct("?")) {
      take();
      return DType::kUndefined;
    }
    if (cur_.kind == Tok::kWord) {
      auto d = dtype_from_name(cur_.text);
      if (d.ok()) {
        take();
        return *d;
      }
    }
    return err(std::string("a dtype (") + kDtypeList + ")");
  }

  Result<ValueInfo> parse_value_type() {
    ValueInfo vi;
    KERF_ASSIGN_OR_RETURN(vi.dtype, parse_dtype());
    if (!is_punct("[")) return vi;
    take();
    vi.rank_known = true;
    if (is_punct("]")) {
      take();
      return vi;
    }
    while (true) {
      Dim d;
      if (is_punct("?")) {
        take();
      } else if (cur_.kind == Tok::kWord || cur_.kind == Tok::kString) {
        d.symbol = take().text;
      } else if (cur_.kind == Tok::kNumber && !looks_float(cur_.text)) {
        KERF_ASSIGN_OR_RETURN(d.value, parse_int64());
      } else {
        return err("a dimension (integer, symbol or ?)");
      }
      vi.shape.push_back(std::move(d));
      if (is_punct(",")) {
        take();
        continue;
      }
      if (is_punct("]")) {
        take();
        return vi;
      }
      return err("',' or ']'");
    }
  }

  /// dtype[d0,d1,...] with integer dims.
  Status parse_tensor_type(Tensor& t) {
    KERF_ASSIGN_OR_RETURN(t.dtype, parse_dtype());
    KERF_RETURN_IF_ERROR(expect_punct("["));
    if (is_punct("]")) {
      take();
      return Status::Ok();
    }
    uint64_t numel = 1;
    while (true) {
      const Token at = cur_;
      KERF_ASSIGN_OR_RETURN(int64_t d, parse_int64());
      if (d > 0) {
        numel = numel > (uint64_t{1} << 40) / static_cast<uint64_t>(d) ? (uint64_t{1} << 41) : numel * static_cast<uint64_t>(d);
        if (numel > (uint64_t{1} << 40))
          return err_got(at, "a tensor shape with at most 2^40 elements", describe(at));
      }
      t.shape.push_back(d);
      if (is_punct(",")) {
        take();
        continue;
      }
      return expect_punct("]");
    }
  }

  static std::string tensor_type_string(const Tensor& t) {
    std::string s;
    append_tensor_type(s, t);
    return s;
  }

  /// After the tensor type: "[...]" or "raw \"hex\"". "elided(...)" is refused.
  Status parse_tensor_data(Tensor& t) {
    if (is_word("elided"))
      return err_got(cur_, "constant data ([...] or raw \"...\")",
                     "an elided constant; it was printed with PrintOptions::max_inline_elements and its "
                     "values are not in the text, so it cannot be parsed back");
    if (is_word("raw")) {
      take();
      if (cur_.kind != Tok::kString) return err("a quoted hex byte string");
      const Token tok = take();
      const std::string& h = tok.text;
      if (h.size() % 2 != 0) return err_got(tok, "an even number of hex digits", std::to_string(h.size()));
      for (size_t i = 0; i < h.size(); i += 2) {
        auto r = std::from_chars(h.data() + i, h.data() + i + 2, *t.data.insert(t.data.end(), 0), 16);
        if (r.ec != std::errc() || r.ptr != h.data() + i + 2)
          return err_got(tok, "hex digits", quoted(h.substr(i, 2)));
      }
      return Status::Ok();
    }
    if (!is_punct("[")) return err("constant data ([...] or raw \"...\")");
    const Token open = cur_;
    if (!well_formed_type(t))
      return err_got(open, "raw \"...\" data for " + tensor_type_string(t), "a value list");
    take();
    const size_t elt = dtype_size(t.dtype);
    const uint64_t n = static_cast<uint64_t>(t.numel());
    t.data.reserve(static_cast<size_t>(std::min<uint64_t>(n, uint64_t{1} << 24)) * elt);
    uint64_t count = 0;
    if (is_punct("]")) {
      take();
    } else {
      while (true) {
        if (count == n)
          return err("']' after " + std::to_string(n) + " values for " + tensor_type_string(t));
        KERF_RETURN_IF_ERROR(parse_element(t));
        ++count;
        if (is_punct(",")) {
          take();
          continue;
        }
        if (is_punct("]")) {
          take();
          break;
        }
        return err("',' or ']'");
      }
    }
    if (count != n)
      return err_got(open, std::to_string(n) + " values for " + tensor_type_string(t), std::to_string(count));
    return Status::Ok();
  }

  static bool well_formed_type(const Tensor& t) {
    if (t.dtype == DType::kUndefined) return false;
    for (int64_t d : t.shape)
      if (d < 0) return false;
    return true;
  }

  Status parse_element(Tensor& t) {
    uint8_t buf[8];
    const size_t elt = dtype_size(t.dtype);
    if (dtype_is_float(t.dtype)) {
      KERF_ASSIGN_OR_RETURN(uint64_t bits, parse_float_bits(t.dtype));
      std::memcpy(buf, &bits, elt);  // little-endian: low bytes
    } else {
      const Token tok = cur_;
      auto v = parse_int64();
      if (!v.ok()) return err(std::string("an integer (") + dtype_name(t.dtype) + ")");
      int64_t lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
      if (t.dtype == DType::kI32) lo = INT32_MIN, hi = INT32_MAX;
      if (t.dtype == DType::kI8) lo = -128, hi = 127;
      if (t.dtype == DType::kU8 || t.dtype == DType::kBool) lo = 0, hi = 255;
      if (*v < lo || *v > hi)
        return err_got(tok, std::string("a ") + dtype_name(t.dtype) + " value in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "]",
                       tok.text);
      const int64_t x = *v;
      if (elt == 8) std::memcpy(buf, &x, 8);
      if (elt == 4) { const int32_t y = static_cast<int32_t>(x); std::memcpy(buf, &y, 4); }
      if (elt == 1) buf[0] = static_cast<uint8_t>(x & 0xff);
    }
    t.data.insert(t.data.end(), buf, buf + elt);
    return Status::Ok();
  }

  // ----------------------------------------------------------------------------------- attributes
  Result<AttrValue> parse_attr_value() {
    if (cur_.kind == Tok::kString) return AttrValue(take().text);
    if (cur_.kind == Tok::kNumber) {
      if (looks_float(cur_.text)) {
        KERF_ASSIGN_OR_RETURN(double d, parse_double());
        return AttrValue(d);
      }
      KERF_ASSIGN_OR_RETURN(int64_t i, parse_int64());
      return AttrValue(i);
    }
    if (cur_.kind == Tok::kWord) {
      if (cur_.text == "inf" || cur_.text.rfind("nan", 0) == 0) {
        KERF_ASSIGN_OR_RETURN(double d, parse_double());
        return AttrValue(d);
      }
      if (cur_.text == "i" || cur_.text == "f") {
        const bool ints = cur_.text == "i";
        take();
        KERF_RETURN_IF_ERROR(expect_punct("["));
        std::vector<int64_t> iv;
        std::vector<double> fv;
        if (!is_punct("]")) {
          while (true) {
            if (ints) {
              KERF_ASSIGN_OR_RETURN(int64_t x, parse_int64());
              iv.push_back(x);
            } else {
              KERF_ASSIGN_OR_RETURN(double x, parse_double());
              fv.push_back(x);
            }
            if (is_punct(",")) {
              take();
              continue;
            }
            if (is_punct("]")) break;
            return err("',' or ']'");
          }
        }
        take();  // ']'
        if (ints) return AttrValue(std::move(iv));
        return AttrValue(std::move(fv));
      }
      if (cur_.text == "tensor") {
        take();
        Tensor t;
        KERF_RETURN_IF_ERROR(parse_tensor_type(t));
        KERF_RETURN_IF_ERROR(parse_tensor_data(t));
        return AttrValue(std::move(t));
      }
    }
    return err("an attribute value (integer, float, \"string\", i[...], f[...] or tensor ...)");
  }

  // ----------------------------------------------------------------------------------- statements
  /// Records a `: type` annotation for `name`; repeated annotations must agree.
  Status set_type(Graph& g, const std::string& name, const ValueInfo& vi, const Token& at) {
    auto [it, inserted] = g.values.emplace(name, vi);
    if (inserted) return Status::Ok();
    const ValueInfo& old = it->second;
    if (old.dtype == vi.dtype && old.rank_known == vi.rank_known && old.shape == vi.shape) return Status::Ok();
    std::string a, b, v;
    append_value_type(a, old);
    append_value_type(b, vi);
    append_vref(v, name);
    return err_got(at, "the type given earlier for " + v + " (" + a + ")", b);
  }

  Status optional_type(Graph& g, const std::string& name) {
    if (!is_punct(":")) return Status::Ok();
    take();
    const Token at = cur_;
    KERF_ASSIGN_OR_RETURN(ValueInfo vi, parse_value_type());
    return set_type(g, name, vi, at);
  }

  Status statement(Graph& g) {
    if (is_word("meta")) {
      take();
      if (cur_.kind != Tok::kString) return err("a quoted metadata key");
      const Token key = take();
      KERF_RETURN_IF_ERROR(expect_punct("="));
      if (cur_.kind != Tok::kString) return err("a quoted metadata value");
      if (!g.metadata.emplace(key.text, take().text).second)
        return err_got(key, "a metadata key not given before", describe(key));
      return Status::Ok();
    }
    if (is_word("input") || is_word("output")) {
      const bool input = cur_.text == "input";
      take();
      KERF_ASSIGN_OR_RETURN(std::string name, parse_vref());
      (input ? g.inputs : g.outputs).push_back(name);
      return optional_type(g, name);
    }
    if (is_word("value")) {
      take();
      KERF_ASSIGN_OR_RETURN(std::string name, parse_vref());
      KERF_RETURN_IF_ERROR(expect_punct(":"));
      const Token at = cur_;
      KERF_ASSIGN_OR_RETURN(ValueInfo vi, parse_value_type());
      return set_type(g, name, vi, at);
    }
    if (is_word("const")) {
      take();
      const Token name_tok = cur_;
      KERF_ASSIGN_OR_RETURN(std::string name, parse_vref());
      if (g.initializers.count(name)) return err_got(name_tok, "a constant name not defined before", describe(name_tok));
      KERF_RETURN_IF_ERROR(expect_punct(":"));
      Tensor t;
      KERF_RETURN_IF_ERROR(parse_tensor_type(t));
      KERF_RETURN_IF_ERROR(expect_punct("="));
      KERF_RETURN_IF_ERROR(parse_tensor_data(t));
      g.initializers.emplace(std::move(name), std::move(t));
      return Status::Ok();
    }
    if (cur_.kind == Tok::kValue || is_word("_") || is_punct("(")) return node(g);
    return err("a statement (meta, input, output, const, value, a node '%out = Op(...)' or '}')");
  }

  Status node(Graph& g) {
    Node n;
    if (is_punct("(")) {
      take();
      KERF_RETURN_IF_ERROR(expect_punct(")"));
    } else {
      while (true) {
        KERF_ASSIGN_OR_RETURN(std::string out, parse_vref());
        if (is_punct(":")) {
          take();
          const Token at = cur_;
          KERF_ASSIGN_OR_RETURN(ValueInfo vi, parse_value_type());
          KERF_RETURN_IF_ERROR(set_type(g, out, vi, at));
        }
        n.outputs.push_back(std::move(out));
        if (!is_punct(",")) break;
        take();
      }
    }
    KERF_RETURN_IF_ERROR(expect_punct("="));
    // Op: word "dom.ain.Op" or "domain"."op".
    if (cur_.kind == Tok::kWord) {
      const Token tok = take();
      const size_t dot = tok.text.rfind('.');
      if (dot == std::string::npos) {
        n.op = tok.text;
      } else {
        n.domain = tok.text.substr(0, dot);
        n.op = tok.text.substr(dot + 1);
        if (n.op.empty() || n.domain.empty()) return err_got(tok, "an op name like Op or domain.Op", describe(tok));
      }
    } else if (cur_.kind == Tok::kString) {
      n.domain = take().text;
      KERF_RETURN_IF_ERROR(expect_punct("."));
      if (cur_.kind != Tok::kString) return err("a quoted op name");
      n.op = take().text;
    } else {
      return err("an op name (Op, domain.Op or \"domain\".\"op\")");
    }
    KERF_RETURN_IF_ERROR(expect_punct("("));
    if (!is_punct(")")) {
      while (true) {
        KERF_ASSIGN_OR_RETURN(std::string in, parse_vref());
        n.inputs.push_back(std::move(in));
        if (is_punct(",")) {
          take();
          continue;
        }
        if (is_punct(")")) break;
        return err("',' or ')'");
      }
    }
    take();  // ')'
    if (is_punct("{")) {
      take();
      if (!is_punct("}")) {
        while (true) {
          if (cur_.kind != Tok::kWord && cur_.kind != Tok::kString) return err("an attribute name");
          const Token key = take();
          KERF_RETURN_IF_ERROR(expect_punct("="));
          KERF_ASSIGN_OR_RETURN(AttrValue v, parse_attr_value());
          if (!n.attrs.emplace(key.text, std::move(v)).second)
            return err_got(key, "an attribute name not given before", describe(key));
          if (is_punct(",")) {
            take();
            continue;
          }
          if (is_punct("}")) break;
          return err("',' or '}'");
        }
      }
      take();  // '}'
    }
    if (cur_.kind == Tok::kNodeName) n.name = take().text;
    g.nodes.push_back(std::move(n));
    return Status::Ok();
  }

  Lexer lex_;
  Token cur_;
};

}  // namespace

Result<Graph> parse_graph(std::string_view text) { return Parser(text).parse(); }

}  // namespace kerf::ir
