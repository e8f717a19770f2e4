// kerf quant: precision specs, group-parameter rules, the representable grid and packing (see qspec.h).
#include "quant/qspec.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

namespace kerf::quant {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;
constexpr int kK6Max = 63;

bool is_int_kind(QKind k) { return k == QKind::kSym || k == QKind::kAsym; }
bool is_k6(const QSpec& s) { return s.scales == fmt::ScaleFormat::kK6; }
bool is_asym(const QSpec& s) { return s.kind == QKind::kAsym; }

std::string rc(int64_t r, int64_t c) { return "row " + std::to_string(r) + ", col " + std::to_string(c); }

Status check_shape(const char* fn, int64_t rows, int64_t cols) {
  if (rows < 1 || cols < 1)
    return InvalidArgument(std::string(fn) + ": matrix shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                           "]: rows and cols must be >= 1");
  if (cols > kMaxElements / rows)
    return InvalidArgument(std::string(fn) + ": matrix shape [" + std::to_string(rows) + ", " +
                           std::to_string(cols) + "] is too large (more than 2^40 elements)");
  return Status::Ok();
}

float round_f16(float x) { return fmt::f16_to_f32(fmt::f32_to_f16(x)); }

/// fp16 bits of the smallest-error d >= 0 such that f16(d) * 63 >= top (top >= 0, finite).
/// false when it does not fit the fp16 range.
bool choose_super(float top, uint16_t* bits) {
  if (!(top > 0.0f)) {
    *bits = 0;
    return true;
  }
  uint16_t b = fmt::f32_to_f16(top / static_cast<float>(kK6Max));
  while (b < 0x7c00u && k6_param(b, kK6Max) < top) ++b;  // positive fp16 bit patterns are ordered
  if (b >= 0x7c00u) return false;
  *bits = b;
  return true;
}

int k6_round(float v, float d) {
  if (d == 0.0f) return 0;
  const float x = std::round(v / d);
  if (!(x > 0.0f)) return 0;  // also NaN
  return x >= static_cast<float>(kK6Max) ? kK6Max : static_cast<int>(x);
}

// ------------------------------------------------------------------ bit packing (LSB first)
void put_bits(uint8_t* p, uint64_t bit, uint32_t value, int nbits) {
  for (int k = 0; k < nbits; ++k, ++bit)
    if ((value >> k) & 1u) p[bit / 8] = static_cast<uint8_t>(p[bit / 8] | (1u << (bit % 8)));
}
uint32_t get_bits(const uint8_t* p, uint64_t bit, int nbits) {
  uint32_t v = 0;
  for (int k = 0; k < nbits; ++k, ++bit) v |= static_cast<uint32_t>((p[bit / 8] >> (bit % 8)) & 1u) << k;
  return v;
}
void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xFF);
  p[1] = static_cast<uint8_t>(v >> 8);
}
uint16_t get_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// ------------------------------------------------------------------ parameter rules
/// Snapping used while choosing: the grid's, or fp16 rounding (with the kK6 sign constraints).
struct Snapper {
  const QSpec* spec = nullptr;
  const ParamGrid* grid = nullptr;
  int64_t i = 0;
  GroupParams operator()(GroupParams p) const {
    if (grid != nullptr) return grid->snap(i, p);
    GroupParams o;
    o.scale = round_f16(is_k6(*spec) ? std::max(p.scale, 0.0f) : p.scale);
    o.min = is_asym(*spec) ? round_f16(is_k6(*spec) ? std::min(p.min, 0.0f) : p.min) : 0.0f;
    return o;
  }
};

struct Search {
  const QSpec& spec;
  const float* w;
  const float* h;  // null: all 1
  int64_t n;
  Snapper snap;
  GroupParams best{}, best_snapped{};
  double best_err = std::numeric_limits<double>::infinity();

  double hw(int64_t k) const { return h ? static_cast<double>(h[k]) : 1.0; }

  /// Evaluates a candidate (snapped, codes by quantize_value); keeps it when strictly better.
  bool consider(GroupParams c) {
    if (!std::isfinite(c.scale) || !std::isfinite(c.min)) return false;
    if (is_k6(spec)) {
      if (c.scale < 0.0f) return false;
      c.min = std::min(c.min, 0.0f);
    }
    if (!is_asym(spec)) c.min = 0.0f;
    const GroupParams sp = snap(c);
    if (!std::isfinite(sp.scale) || !std::isfinite(sp.min)) return false;
    const double e = weighted_sse(spec, sp, w, h, n);
    if (e < best_err) {
      best_err = e;
      best = c;
      best_snapped = sp;
      return true;
    }
    return false;
  }

  /// Weighted least-squares refit of the parameters given the codes of the snapped best;
  /// repeated while it improves (at most `rounds` times).
  void refine(int rounds) {
    for (int it = 0; it < rounds; ++it) {
      double shq = 0, shqq = 0, sh = 0, shw = 0, shwq = 0;
      for (int64_t k = 0; k < n; ++k) {
        const double q = quantize_value(spec, best_snapped, w[k]);
        const double hk = hw(k), x = w[k];
        sh += hk;
        shw += hk * x;
        shq += hk * q;
        shqq += hk * q * q;
        shwq += hk * x * q;
      }
      GroupParams c;
      if (is_asym(spec)) {
        const double D = sh * shqq - shq * shq;
        if (!(D > 0)) return;
        c.scale = static_cast<float>((sh * shwq - shw * shq) / D);
        c.min = static_cast<float>((shqq * shw - shq * shwq) / D);
        if (is_k6(spec) && c.min > 0.0f) {
          c.min = 0.0f;
          c.scale = static_cast<float>(shwq / shqq);
        }
      } else {
        if (!(shqq > 0)) return;
        c.scale = static_cast<float>(shwq / shqq);
      }
      if (!consider(c)) return;
    }
  }
};

GroupParams rule_rtn(const QSpec& s, const float* w, int64_t n) {
  GroupParams p;
  switch (s.kind) {
    case QKind::kSym: {
      const float nneg = std::ldexp(1.0f, s.bits - 1);  // 2^(b-1)
      if (!is_k6(s)) {
        float amax = 0.0f, wstar = 0.0f;
        for (int64_t k = 0; k < n; ++k)
          if (std::fabs(w[k]) > amax) {
            amax = std::fabs(w[k]);
            wstar = w[k];
          }
        p.scale = wstar / -nneg;
      } else {
        float mx = 0.0f, mn = 0.0f;
        for (int64_t k = 0; k < n; ++k) {
          mx = std::max(mx, w[k]);
          mn = std::min(mn, w[k]);
        }
        p.scale = std::max(mx / (nneg - 1.0f), -mn / nneg);
      }
      break;
    }
    case QKind::kAsym: {
      float mn = w[0], mx = w[0];
      for (int64_t k = 0; k < n; ++k) {
        mn = std::min(mn, w[k]);
        mx = std::max(mx, w[k]);
      }
      if (is_k6(s)) mn = std::min(mn, 0.0f);
      p.scale = static_cast<float>((static_cast<double>(mx) - mn) / static_cast<double>(s.qmax()));
      p.min = mn;
      break;
    }
    case QKind::kTernary:
    case QKind::kBinary: {
      double sa = 0;
      for (int64_t k = 0; k < n; ++k) sa += std::fabs(w[k]);
      p.scale = static_cast<float>(sa / static_cast<double>(n));
      break;
    }
    default: break;
  }
  return p;
}

GroupParams rule_twn(const float* w, int64_t n) {
  double sa = 0;
  for (int64_t k = 0; k < n; ++k) sa += std::fabs(w[k]);
  const double delta = 0.7 * sa / static_cast<double>(n);
  double sum = 0;
  int64_t cnt = 0;
  for (int64_t k = 0; k < n; ++k)
    if (std::fabs(w[k]) > delta) {
      sum += std::fabs(w[k]);
      ++cnt;
    }
  GroupParams p;
  p.scale = cnt > 0 ? static_cast<float>(sum / static_cast<double>(cnt)) : 0.0f;
  return p;
}

/// make_qx_quants-style search for kSym.
void search_sym(Search& S) {
  const QSpec& s = S.spec;
  const int nneg = 1 << (s.bits - 1);
  float amax = 0.0f, wstar = 0.0f;
  for (int64_t k = 0; k < S.n; ++k)
    if (std::fabs(S.w[k]) > amax) {
      amax = std::fabs(S.w[k]);
      wstar = S.w[k];
    }
  if (amax == 0.0f) return;
  for (int t = -9; t <= 9; ++t) {
    for (int orient = 0; orient < 2; ++orient) {
      // orient 0: w* -> -2^(b-1) (Q4_0 / make_qx_quants); orient 1: w* -> +(2^(b-1) - 1)
      const float top = orient == 0 ? -(static_cast<float>(nneg) + 0.1f * t) : (static_cast<float>(nneg - 1) + 0.1f * t);
      if (std::fabs(top) < 0.05f) continue;
      const float iscale = top / wstar;
      if (is_k6(s) && !(iscale > 0.0f)) continue;
      GroupParams c;
      c.scale = 1.0f / iscale;
      S.consider(c);
      double sxl = 0, sll = 0;
      for (int64_t k = 0; k < S.n; ++k) {
        const float l = std::min(static_cast<float>(nneg - 1), std::max(-static_cast<float>(nneg), std::round(iscale * S.w[k])));
        sxl += S.hw(k) * S.w[k] * l;
        sll += S.hw(k) * l * l;
      }
      if (sll > 0) {
        c.scale = static_cast<float>(sxl / sll);
        S.consider(c);
      }
    }
  }
}

/// make_qkx2_quants-style search for kAsym.
void search_asym(Search& S) {
  const QSpec& s = S.spec;
  float mn = S.w[0], mx = S.w[0];
  for (int64_t k = 0; k < S.n; ++k) {
    mn = std::min(mn, S.w[k]);
    mx = std::max(mx, S.w[k]);
  }
  if (is_k6(s)) mn = std::min(mn, 0.0f);
  if (!(mx > mn)) return;
  const int nmax = s.qmax();
  const double range = static_cast<double>(mx) - mn;
  for (int t = 0; t <= 20; ++t) {
    const double iscale = (nmax - 1.0 + 0.1 * t) / range;
    GroupParams c;
    c.scale = static_cast<float>(1.0 / iscale);
    c.min = mn;
    S.consider(c);
    double sh = 0, shl = 0, shll = 0, shx = 0, shxl = 0;
    for (int64_t k = 0; k < S.n; ++k) {
      const double l = std::min<double>(nmax, std::max(0.0, std::round(iscale * (static_cast<double>(S.w[k]) - mn))));
      const double hk = S.hw(k), x = S.w[k];
      sh += hk;
      shl += hk * l;
      shll += hk * l * l;
      shx += hk * x;
      shxl += hk * x * l;
    }
    const double D = sh * shll - shl * shl;
    if (D > 0) {
      c.scale = static_cast<float>((sh * shxl - shx * shl) / D);
      c.min = static_cast<float>((shll * shx - shl * shxl) / D);
      if (is_k6(s) && c.min > 0.0f) {
        c.min = 0.0f;
        c.scale = static_cast<float>(shxl / shll);
      }
      if (c.scale >= 0.0f) S.consider(c);
    }
  }
}

/// Ternary: supports "the k largest |w|" with their weighted LS scale; the 4 best (by the
/// unsnapped error) are evaluated exactly.
void search_ternary(Search& S) {
  std::vector<int64_t> idx(static_cast<size_t>(S.n));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return std::fabs(S.w[a]) > std::fabs(S.w[b]); });
  // error(k) = sum h w^2 - A_k^2 / H_k; minimise  <=>  maximise A_k^2 / H_k
  std::vector<std::pair<double, double>> cand;  // (-A^2/H, s)
  double A = 0, H = 0;
  for (int64_t k = 0; k < S.n; ++k) {
    const int64_t j = idx[static_cast<size_t>(k)];
    A += S.hw(j) * std::fabs(S.w[j]);
    H += S.hw(j);
    if (H > 0 && A > 0) cand.emplace_back(-A * A / H, A / H);
  }
  const size_t keep = std::min<size_t>(4, cand.size());
  std::partial_sort(cand.begin(), cand.begin() + keep, cand.end());
  for (size_t k = 0; k < keep; ++k) {
    GroupParams c;
    c.scale = static_cast<float>(cand[k].second);
    S.consider(c);
  }
  S.consider(rule_twn(S.w, S.n));
}

void search_binary(Search& S) {
  double a = 0, hs = 0;
  for (int64_t k = 0; k < S.n; ++k) {
    a += S.hw(k) * std::fabs(S.w[k]);
    hs += S.hw(k);
  }
  if (hs > 0) {
    GroupParams c;
    c.scale = static_cast<float>(a / hs);
    S.consider(c);
  }
}

Status check_group_args(const QSpec& s, const float* w, const float* h, int64_t n, ParamRule rule) {
  KERF_RETURN_IF_ERROR(validate(s));
  if (s.plain()) return InvalidArgument("choose_group_params: plain spec '" + to_string(s) + "' has no group parameters");
  if (w == nullptr) return InvalidArgument("choose_group_params: null weight pointer");
  if (n < 1) return InvalidArgument("choose_group_params: group of " + std::to_string(n) + " elements (must be >= 1)");
  if (rule == ParamRule::kTwn && s.kind != QKind::kTernary)
    return InvalidArgument("choose_group_params: rule 'twn' applies to ternary only, not '" + to_string(s) + "'");
  if (h != nullptr)
    for (int64_t k = 0; k < n; ++k)
      if (!std::isfinite(h[k]) || h[k] < 0.0f)
        return InvalidArgument("choose_group_params: importance " + std::to_string(h[k]) + " at element " +
                               std::to_string(k) + " (must be finite and >= 0)");
  for (int64_t k = 0; k < n; ++k)
    if (!std::isfinite(w[k]))
      return InvalidArgument("choose_group_params: non-finite weight at element " + std::to_string(k));
  return Status::Ok();
}

/// The rule's parameters; candidates of kSearch evaluated with `snap`.
GroupParams choose_impl(const QSpec& s, const float* w, const float* h, int64_t n, ParamRule rule, Snapper snap,
                        GroupParams* snapped, const GroupParams* extra = nullptr) {
  if (h != nullptr) {
    double hs = 0;
    for (int64_t k = 0; k < n; ++k) hs += h[k];
    if (!(hs > 0)) h = nullptr;  // all importances zero: unweighted
  }
  const GroupParams base = rule == ParamRule::kTwn ? rule_twn(w, n) : rule_rtn(s, w, n);
  if (rule != ParamRule::kSearch) {
    *snapped = snap(base);
    return base;
  }
  Search S{s, w, h, n, snap};
  S.consider(base);
  if (extra != nullptr) S.consider(*extra);
  if (!std::isfinite(S.best_err)) {  // the kRtn estimate itself does not fit: report it
    *snapped = snap(base);
    return base;
  }
  switch (s.kind) {
    case QKind::kSym: search_sym(S); break;
    case QKind::kAsym: search_asym(S); break;
    case QKind::kTernary: search_ternary(S); break;
    case QKind::kBinary: search_binary(S); break;
    default: break;
  }
  S.refine(3);
  *snapped = S.best_snapped;
  return S.best;
}

Status check_importance(const float* h, int64_t cols) {
  if (h == nullptr) return Status::Ok();
  for (int64_t c = 0; c < cols; ++c)
    if (!std::isfinite(h[c]) || h[c] < 0.0f)
      return InvalidArgument("quantize_rtn: importance " + std::to_string(h[c]) + " at col " + std::to_string(c) +
                             " (must be finite and >= 0)");
  return Status::Ok();
}

const char* kind_prefix(QKind k) {
  switch (k) {
    case QKind::kF32: return "f32";
    case QKind::kF16: return "f16";
    case QKind::kSym: return "sym";
    case QKind::kAsym: return "asym";
    case QKind::kTernary: return "ternary";
    case QKind::kBinary: return "binary";
  }
  return "?";
}

}  // namespace

// ------------------------------------------------------------------ QSpec
int QSpec::qmin() const {
  switch (kind) {
    case QKind::kSym: return -(1 << (bits - 1));
    case QKind::kAsym: return 0;
    case QKind::kTernary:
    case QKind::kBinary: return -1;
    default: return 0;
  }
}
int QSpec::qmax() const {
  switch (kind) {
    case QKind::kSym: return (1 << (bits - 1)) - 1;
    case QKind::kAsym: return (1 << bits) - 1;
    case QKind::kTernary:
    case QKind::kBinary: return 1;
    default: return 0;
  }
}
int64_t QSpec::group_for(int64_t cols) const {
  return (group_size <= 0 || group_size > cols) ? cols : static_cast<int64_t>(group_size);
}

bool operator==(const QSpec& a, const QSpec& b) {
  return a.kind == b.kind && a.bits == b.bits && a.group_size == b.group_size && a.scales == b.scales;
}

fmt::DType dtype_of(const QSpec& s) {
  switch (s.kind) {
    case QKind::kF32: return fmt::DType::kF32;
    case QKind::kF16: return fmt::DType::kF16;
    case QKind::kSym: return fmt::DType::kQSym;
    case QKind::kAsym: return fmt::DType::kQAsym;
    case QKind::kTernary: return fmt::DType::kTernary;
    case QKind::kBinary: return fmt::DType::kBinary;
  }
  return fmt::DType::kF32;
}

uint32_t flags_of(const QSpec& s) {
  if (s.plain()) return 0;
  return fmt::make_qflags(is_int_kind(s.kind) ? static_cast<uint32_t>(s.bits) : 0u, s.scales);
}

Status validate(const QSpec& s) {
  const std::string k = std::string("precision ") + kind_prefix(s.kind);
  switch (s.kind) {
    case QKind::kF32:
    case QKind::kF16:
    case QKind::kSym:
    case QKind::kAsym:
    case QKind::kTernary:
    case QKind::kBinary: break;
    default: return InvalidArgument("precision: unknown kind " + std::to_string(static_cast<int>(s.kind)));
  }
  if (s.plain()) {
    if (s.bits != 0) return InvalidArgument(k + ": bits " + std::to_string(s.bits) + " must be 0 for a plain kind");
    if (s.group_size != 0)
      return InvalidArgument(k + ": group_size " + std::to_string(s.group_size) + " must be 0 for a plain kind");
    if (s.scales != fmt::ScaleFormat::kF16) return InvalidArgument(k + ": scales must be f16 (none) for a plain kind");
    return Status::Ok();
  }
  if (is_int_kind(s.kind)) {
    if (s.bits < 2 || s.bits > 8) return InvalidArgument(k + ": bits " + std::to_string(s.bits) + " must be 2..8");
  } else if (s.bits != 0) {
    return InvalidArgument(k + ": bits " + std::to_string(s.bits) + " must be 0 for ternary / binary");
  }
  if (s.group_size < 0)
    return InvalidArgument(k + ": group_size " + std::to_string(s.group_size) + " must be >= 1 (or 0 = one group per row)");
  if (s.scales != fmt::ScaleFormat::kF16 && s.scales != fmt::ScaleFormat::kK6)
    return InvalidArgument(k + ": scales format " + std::to_string(static_cast<uint32_t>(s.scales)) + " is not f16 or k6");
  return Status::Ok();
}

std::string to_string(const QSpec& s) {
  std::string out;
  switch (s.kind) {
    case QKind::kF32: return "f32";
    case QKind::kF16: return "f16";
    case QKind::kSym: out = "int" + std::to_string(s.bits) + "_sym"; break;
    case QKind::kAsym: out = "int" + std::to_string(s.bits) + "_asym"; break;
    case QKind::kTernary: out = "ternary"; break;
    case QKind::kBinary: out = "binary"; break;
  }
  out += s.group_size == 0 ? ":row" : ":g" + std::to_string(s.group_size);
  if (s.scales == fmt::ScaleFormat::kK6) out += ":k6";
  return out;
}

Result<QSpec> parse_qspec(const std::string& text) {
  const auto err = [&](const std::string& why) {
    return InvalidArgument("precision '" + text + "': " + why +
                           " (expected f32 | f16 | int<b>_sym | int<b>_asym | ternary | binary, b = 2..8, "
                           "then optionally :g<N> or :row, and :k6 or :f16, e.g. int4_asym:g32:k6)");
  };
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t p = text.find(':', start);
    parts.push_back(text.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  QSpec s;
  const std::string& head = parts[0];
  if (head.empty()) return err("empty precision name");
  if (head == "f32" || head == "f16") {
    s.kind = head == "f32" ? QKind::kF32 : QKind::kF16;
    s.bits = 0;
    s.group_size = 0;
    if (parts.size() > 1) return err("plain precision '" + head + "' takes no options");
    return s;
  }
  if (head == "ternary" || head == "binary") {
    s.kind = head == "ternary" ? QKind::kTernary : QKind::kBinary;
    s.bits = 0;
  } else if (head.size() > 3 && head.compare(0, 3, "int") == 0) {
    size_t i = 3;
    while (i < head.size() && std::isdigit(static_cast<unsigned char>(head[i]))) ++i;
    const std::string num = head.substr(3, i - 3), rest = head.substr(i);
    if (num.empty() || num.size() > 2) return err("'" + head + "' needs a bit width after 'int'");
    const int b = std::stoi(num);
    if (rest == "_sym") s.kind = QKind::kSym;
    else if (rest == "_asym") s.kind = QKind::kAsym;
    else return err("'" + head + "' must end in _sym or _asym");
    if (b < 2 || b > 8) return err("bit width " + num + " is outside 2..8");
    s.bits = b;
  } else {
    return err("unknown precision '" + head + "'");
  }
  s.group_size = 32;
  s.scales = fmt::ScaleFormat::kF16;
  bool have_group = false, have_scales = false;
  for (size_t k = 1; k < parts.size(); ++k) {
    const std::string& o = parts[k];
    if (o == "row" || (o.size() > 1 && o[0] == 'g')) {
      if (have_group) return err("group size given twice ('" + o + "')");
      have_group = true;
      if (o == "row") {
        s.group_size = 0;
        continue;
      }
      const std::string num = o.substr(1);
      if (num.size() > 10 || !std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return err("bad group size '" + o + "' (use g<N> with N >= 1, or row)");
      const long long g = std::stoll(num);
      if (g < 1 || g > INT32_MAX) return err("group size " + num + " must be 1 .. 2147483647 (or use row)");
      s.group_size = static_cast<int>(g);
    } else if (o == "k6" || o == "f16") {
      if (have_scales) return err("scale format given twice ('" + o + "')");
      have_scales = true;
      s.scales = o == "k6" ? fmt::ScaleFormat::kK6 : fmt::ScaleFormat::kF16;
    } else {
      return err(o.empty() ? std::string("empty option") : "unknown option '" + o + "'");
    }
  }
  return s;
}

int64_t spec_bits(const QSpec& s, int64_t rows, int64_t cols) {
  if (!validate(s).ok() || rows < 1 || cols < 1 || cols > kMaxElements / rows) return 0;
  if (s.kind == QKind::kF32) return rows * cols * 32;
  if (s.kind == QKind::kF16) return rows * cols * 16;
  int64_t code_bits = 0;
  switch (s.kind) {
    case QKind::kSym:
    case QKind::kAsym: code_bits = rows * cols * s.bits; break;
    case QKind::kTernary: code_bits = rows * ((cols + 4) / 5) * 8; break;
    case QKind::kBinary: code_bits = rows * cols; break;
    default: break;
  }
  const int64_t g = s.group_for(cols), ng = (cols + g - 1) / g, NG = rows * ng;
  const int64_t arrays = is_asym(s) ? 2 : 1;
  if (is_k6(s)) {
    const int64_t ns = (NG + fmt::kK6GroupsPerSuper - 1) / fmt::kK6GroupsPerSuper;
    return code_bits + arrays * (6 * NG + 16 * ns);
  }
  return code_bits + arrays * 16 * NG;
}

Result<ParamRule> parse_param_rule(const std::string& text) {
  if (text == "rtn") return ParamRule::kRtn;
  if (text == "twn") return ParamRule::kTwn;
  if (text == "search") return ParamRule::kSearch;
  return InvalidArgument("parameter rule '" + text + "': expected rtn, twn or search");
}

const char* param_rule_name(ParamRule r) {
  switch (r) {
    case ParamRule::kRtn: return "rtn";
    case ParamRule::kTwn: return "twn";
    case ParamRule::kSearch: return "search";
  }
  return "?";
}

// ------------------------------------------------------------------ choosing parameters
Result<GroupParams> choose_group_params(const QSpec& s, const float* w, const float* h, int64_t n, ParamRule rule) {
  KERF_RETURN_IF_ERROR(check_group_args(s, w, h, n, rule));
  Snapper snap{&s, nullptr, 0};
  GroupParams snapped;
  return choose_impl(s, w, h, n, rule, snap, &snapped);
}

Result<GroupParams> choose_group_params(const QSpec& s, const float* w, const float* h, int64_t n, ParamRule rule,
                                        const ParamGrid& grid, int64_t i) {
  KERF_RETURN_IF_ERROR(check_group_args(s, w, h, n, rule));
  if (s != grid.spec())
    return InvalidArgument("choose_group_params: spec '" + to_string(s) + "' differs from the grid's '" +
                           to_string(grid.spec()) + "'");
  if (i < 0 || i >= grid.groups())
    return InvalidArgument("choose_group_params: group " + std::to_string(i) + " outside 0.." +
                           std::to_string(grid.groups() - 1));
  Snapper snap{&s, &grid, i};
  GroupParams snapped;
  choose_impl(s, w, h, n, rule, snap, &snapped);
  return snapped;
}

// ------------------------------------------------------------------ ParamGrid
Result<ParamGrid> ParamGrid::make(const QSpec& s, int64_t rows, int64_t cols, const std::vector<GroupParams>& init) {
  KERF_RETURN_IF_ERROR(validate(s));
  if (s.plain()) return InvalidArgument("ParamGrid: plain spec '" + to_string(s) + "' has no group parameters");
  KERF_RETURN_IF_ERROR(check_shape("ParamGrid", rows, cols));
  ParamGrid G;
  G.spec_ = s;
  G.rows_ = rows;
  G.cols_ = cols;
  G.group_ = s.group_for(cols);
  G.ng_ = (cols + G.group_ - 1) / G.group_;
  const int64_t NG = rows * G.ng_;
  const bool need = is_k6(s) || !init.empty();
  if (need && static_cast<int64_t>(init.size()) != NG)
    return InvalidArgument("ParamGrid: " + std::to_string(init.size()) + " initial group parameters for " +
                           std::to_string(NG) + " groups (" + std::to_string(rows) + " rows x " +
                           std::to_string(G.ng_) + ")");
  const auto where = [&](int64_t i) {
    return "row " + std::to_string(i / G.ng_) + ", group " + std::to_string(i % G.ng_);
  };
  for (int64_t i = 0; i < static_cast<int64_t>(init.size()); ++i) {
    const GroupParams& p = init[static_cast<size_t>(i)];
    if (!std::isfinite(p.scale) || !std::isfinite(p.min))
      return InvalidArgument("ParamGrid: non-finite parameter at " + where(i));
    if (!is_k6(s)) {
      const bool ok_s = std::isfinite(round_f16(p.scale));
      const bool ok_m = !is_asym(s) || std::isfinite(round_f16(p.min));
      if (!ok_s || !ok_m)
        return Unsupported("ParamGrid: " + where(i) + ": " + (ok_s ? "min " + std::to_string(p.min) : "scale " + std::to_string(p.scale)) +
                           " outside the fp16 range");
    }
  }
  if (!is_k6(s)) return G;
  const int64_t per = fmt::kK6GroupsPerSuper, ns = (NG + per - 1) / per;
  G.d_.assign(static_cast<size_t>(ns), 0);
  if (is_asym(s)) G.dm_.assign(static_cast<size_t>(ns), 0);
  for (int64_t b = 0; b < ns; ++b) {
    float top = 0.0f, bottom = 0.0f;
    for (int64_t i = b * per; i < std::min(NG, (b + 1) * per); ++i) {
      top = std::max(top, init[static_cast<size_t>(i)].scale);
      bottom = std::min(bottom, init[static_cast<size_t>(i)].min);
    }
    if (!choose_super(top, &G.d_[static_cast<size_t>(b)]))
      return Unsupported("ParamGrid: super-block " + std::to_string(b) + " (from " + where(b * per) + "): scale " +
                         std::to_string(top) + " / 63 is outside the fp16 range");
    if (is_asym(s)) {
      uint16_t bits = 0;
      if (!choose_super(-bottom, &bits))
        return Unsupported("ParamGrid: super-block " + std::to_string(b) + " (from " + where(b * per) + "): min " +
                           std::to_string(bottom) + " / 63 is outside the fp16 range");
      G.dm_[static_cast<size_t>(b)] = bits == 0 ? uint16_t{0} : static_cast<uint16_t>(bits | 0x8000u);
    }
  }
  return G;
}

std::pair<int, int> ParamGrid::k6_codes(int64_t i, GroupParams p) const {
  if (!is_k6(spec_)) return {0, 0};
  const size_t b = static_cast<size_t>(i / fmt::kK6GroupsPerSuper);
  const int ks = k6_round(p.scale, fmt::f16_to_f32(d_[b]));
  const int km = is_asym(spec_) ? k6_round(p.min, fmt::f16_to_f32(dm_[b])) : 0;
  return {ks, km};
}

GroupParams ParamGrid::snap(int64_t i, GroupParams p) const {
  GroupParams o;
  if (!is_k6(spec_)) {
    o.scale = round_f16(p.scale);
    o.min = is_asym(spec_) ? round_f16(p.min) : 0.0f;
    return o;
  }
  const size_t b = static_cast<size_t>(i / fmt::kK6GroupsPerSuper);
  const auto k = k6_codes(i, p);
  o.scale = k6_param(d_[b], k.first);
  o.min = is_asym(spec_) ? k6_param(dm_[b], k.second) : 0.0f;
  return o;
}

// ------------------------------------------------------------------ codes
int quantize_value(const QSpec& s, GroupParams p, float w) {
  switch (s.kind) {
    case QKind::kBinary: return w >= 0.0f ? 1 : -1;
    case QKind::kSym:
    case QKind::kAsym:
    case QKind::kTernary: {
      if (p.scale == 0.0f) return 0;
      const float x = std::round((s.kind == QKind::kAsym ? w - p.min : w) / p.scale);
      const int lo = s.qmin(), hi = s.qmax();
      if (!(x > static_cast<float>(lo))) return lo;  // NaN -> lo (cannot happen for finite inputs)
      if (x >= static_cast<float>(hi)) return hi;
      return static_cast<int>(x);
    }
    default: return 0;
  }
}

float dequantize_value(const QSpec& s, GroupParams p, int q) { return dequant_expr(p.scale, p.min, q, is_asym(s)); }

double weighted_sse(const QSpec& s, GroupParams p, const float* w, const float* h, int64_t n) {
  double e = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    const double d = static_cast<double>(w[k]) - dequantize_value(s, p, quantize_value(s, p, w[k]));
    e += (h ? static_cast<double>(h[k]) : 1.0) * d * d;
  }
  return e;
}

// ------------------------------------------------------------------ pack / unpack
Result<QuantTensor> pack(const Unpacked& u) {
  const QSpec& s = u.spec;
  KERF_RETURN_IF_ERROR(validate(s).with_context("pack"));
  if (s.plain()) return InvalidArgument("pack: plain spec '" + to_string(s) + "' is not a quantized dtype");
  KERF_RETURN_IF_ERROR(check_shape("pack", u.rows, u.cols));
  const int64_t rows = u.rows, cols = u.cols, g = s.group_for(cols), ng = (cols + g - 1) / g, NG = rows * ng;
  if (g > INT32_MAX) return InvalidArgument("pack: group of " + std::to_string(g) + " columns does not fit a 32-bit group size");
  const std::string what = "pack " + to_string(s) + " [" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
  if (static_cast<int64_t>(u.codes.size()) != rows * cols)
    return InvalidArgument(what + ": " + std::to_string(u.codes.size()) + " codes, expected " + std::to_string(rows * cols));
  if (static_cast<int64_t>(u.params.size()) != NG)
    return InvalidArgument(what + ": " + std::to_string(u.params.size()) + " group parameters, expected " + std::to_string(NG));
  const int64_t ns = (NG + fmt::kK6GroupsPerSuper - 1) / fmt::kK6GroupsPerSuper;
  const bool asym = is_asym(s), k6 = is_k6(s);
  if (k6) {
    if (static_cast<int64_t>(u.super_d.size()) != ns)
      return InvalidArgument(what + ": " + std::to_string(u.super_d.size()) + " super-scales d, expected " + std::to_string(ns));
    if (static_cast<int64_t>(u.super_dm.size()) != (asym ? ns : 0))
      return InvalidArgument(what + ": " + std::to_string(u.super_dm.size()) + " super-mins dm, expected " +
                             std::to_string(asym ? ns : 0));
    for (int64_t b = 0; b < ns; ++b)
      if (!std::isfinite(fmt::f16_to_f32(u.super_d[b])) || (asym && !std::isfinite(fmt::f16_to_f32(u.super_dm[b]))))
        return InvalidArgument(what + ": super-block " + std::to_string(b) + " has a non-finite d / dm");
  } else if (!u.super_d.empty() || !u.super_dm.empty()) {
    return InvalidArgument(what + ": super-scales given for fp16 group parameters");
  }

  QuantTensor q;
  q.dtype = dtype_of(s);
  q.flags = flags_of(s);
  q.rows = rows;
  q.cols = cols;
  q.group_size = static_cast<int32_t>(g);
  const uint64_t rb = fmt::qcode_row_bytes(q.dtype, static_cast<uint64_t>(cols), q.flags);
  q.payload.assign(fmt::quant_payload_bytes(q.dtype, rows, cols, g, q.flags), 0);
  uint8_t* codes = q.payload.data();
  const int lo = s.qmin(), hi = s.qmax();
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = codes + r * rb;
    for (int64_t c = 0; c < cols; ++c) {
      const int v = u.codes[static_cast<size_t>(r * cols + c)];
      if (v < lo || v > hi || (s.kind == QKind::kBinary && v == 0))
        return InvalidArgument(what + ": code " + std::to_string(v) + " at " + rc(r, c) + " is outside " +
                               (s.kind == QKind::kBinary ? std::string("{-1, +1}") : std::to_string(lo) + ".." + std::to_string(hi)));
      switch (s.kind) {
        case QKind::kSym:
        case QKind::kAsym:
          put_bits(row, static_cast<uint64_t>(c) * s.bits, static_cast<uint32_t>(v - lo), s.bits);
          break;
        case QKind::kTernary: break;  // below
        case QKind::kBinary:
          if (v > 0) row[c / 8] = static_cast<uint8_t>(row[c / 8] | (1u << (c % 8)));
          break;
        default: break;
      }
    }
    if (s.kind == QKind::kTernary)
      for (uint64_t k = 0; k < rb; ++k) {
        int byte = 0;
        for (int t = 4; t >= 0; --t) {
          const int64_t c = static_cast<int64_t>(k) * 5 + t;
          const int d = c < cols ? u.codes[static_cast<size_t>(r * cols + c)] + 1 : 1;  // padding digit 1
          byte = byte * 3 + d;
        }
        row[k] = static_cast<uint8_t>(byte);
      }
  }
  uint8_t* par = codes + static_cast<uint64_t>(rows) * rb;
  const auto where = [&](int64_t i) { return "row " + std::to_string(i / ng) + ", group " + std::to_string(i % ng); };
  for (int64_t i = 0; i < NG; ++i)
    if (!asym && u.params[static_cast<size_t>(i)].min != 0.0f)
      return InvalidArgument(what + ": non-zero min " + std::to_string(u.params[static_cast<size_t>(i)].min) + " at " +
                             where(i) + " (only asym kinds have a min)");
  if (!k6) {
    for (int a = 0; a < (asym ? 2 : 1); ++a)
      for (int64_t i = 0; i < NG; ++i) {
        const float v = a == 0 ? u.params[static_cast<size_t>(i)].scale : u.params[static_cast<size_t>(i)].min;
        const uint16_t bits = fmt::f32_to_f16(v);
        const float back = fmt::f16_to_f32(bits);
        if (!(back == v) || std::signbit(back) != std::signbit(v) || !std::isfinite(v))
          return InvalidArgument(what + ": " + (a == 0 ? "scale " : "min ") + std::to_string(v) + " at " + where(i) +
                                 " is not an fp16 value (snap it with ParamGrid)");
        put_u16(par + 2 * (static_cast<uint64_t>(a) * NG + i), bits);
      }
    return q;
  }
  const uint64_t p6 = (static_cast<uint64_t>(NG) * 6 + 7) / 8;
  uint8_t* sc = par;
  uint8_t* mc = asym ? par + p6 : nullptr;
  uint8_t* d = par + (asym ? 2 : 1) * p6;
  uint8_t* dm = asym ? d + 2 * ns : nullptr;
  for (int64_t i = 0; i < NG; ++i) {
    const size_t b = static_cast<size_t>(i / fmt::kK6GroupsPerSuper);
    for (int a = 0; a < (asym ? 2 : 1); ++a) {
      const float v = a == 0 ? u.params[static_cast<size_t>(i)].scale : u.params[static_cast<size_t>(i)].min;
      const uint16_t db = a == 0 ? u.super_d[b] : u.super_dm[b];
      const int k = k6_round(v, fmt::f16_to_f32(db));
      if (!(k6_param(db, k) == v))
        return InvalidArgument(what + ": " + (a == 0 ? "scale " : "min ") + std::to_string(v) + " at " + where(i) +
                               " is not " + (a == 0 ? "d" : "dm") + " * k for k in 0..63 (" + (a == 0 ? "d" : "dm") +
                               " = " + std::to_string(fmt::f16_to_f32(db)) + "; snap it with ParamGrid)");
      put_bits(a == 0 ? sc : mc, static_cast<uint64_t>(i) * 6, static_cast<uint32_t>(k), 6);
    }
  }
  for (int64_t b = 0; b < ns; ++b) {
    put_u16(d + 2 * b, u.super_d[static_cast<size_t>(b)]);
    if (asym) put_u16(dm + 2 * b, u.super_dm[static_cast<size_t>(b)]);
  }
  return q;
}

Result<Unpacked> unpack(const QuantTensor& q) {
  if (!fmt::dtype_is_generic_quant(q.dtype))
    return InvalidArgument(std::string("unpack: dtype ") + fmt::dtype_name(q.dtype) +
                           " is not a generic quantized dtype (qsym, qasym, ternary, binary)");
  if (!fmt::qflags_valid(q.dtype, q.flags))
    return InvalidArgument(std::string("unpack: flags 0x") + [&] {
      char buf[16];
      std::snprintf(buf, sizeof buf, "%x", q.flags);
      return std::string(buf);
    }() + " are invalid for " + fmt::dtype_name(q.dtype));
  KERF_RETURN_IF_ERROR(check_shape("unpack", q.rows, q.cols));
  if (q.group_size < 1) return InvalidArgument("unpack: group size " + std::to_string(q.group_size) + " must be >= 1");
  Unpacked u;
  QSpec& s = u.spec;
  switch (q.dtype) {
    case fmt::DType::kQSym: s.kind = QKind::kSym; break;
    case fmt::DType::kQAsym: s.kind = QKind::kAsym; break;
    case fmt::DType::kTernary: s.kind = QKind::kTernary; break;
    default: s.kind = QKind::kBinary; break;
  }
  s.bits = static_cast<int>(fmt::qflags_bits(q.flags));
  s.scales = fmt::qflags_scale(q.flags);
  s.group_size = q.group_size;
  const int64_t rows = q.rows, cols = q.cols, g = q.group_size, ng = (cols + g - 1) / g, NG = rows * ng;
  const uint64_t want = fmt::quant_payload_bytes(q.dtype, rows, cols, g, q.flags);
  if (q.payload.size() != want)
    return InvalidArgument("unpack: " + to_string(s) + " [" + std::to_string(rows) + ", " + std::to_string(cols) +
                           "]: payload has " + std::to_string(q.payload.size()) + " bytes, expected " + std::to_string(want));
  u.rows = rows;
  u.cols = cols;
  u.codes.resize(static_cast<size_t>(rows * cols));
  u.params.resize(static_cast<size_t>(NG));
  const uint8_t* p = q.payload.data();
  const uint64_t rb = fmt::qcode_row_bytes(q.dtype, static_cast<uint64_t>(cols), q.flags);
  const int lo = s.qmin();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = p + r * rb;
    int16_t* out = u.codes.data() + r * cols;
    switch (s.kind) {
      case QKind::kSym:
      case QKind::kAsym:
        for (int64_t c = 0; c < cols; ++c)
          out[c] = static_cast<int16_t>(static_cast<int>(get_bits(row, static_cast<uint64_t>(c) * s.bits, s.bits)) + lo);
        break;
      case QKind::kTernary:
        for (int64_t c = 0; c < cols; ++c) {
          int v = row[c / 5] % 243;
          for (int t = 0; t < c % 5; ++t) v /= 3;
          out[c] = static_cast<int16_t>(v % 3 - 1);
        }
        break;
      default:
        for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<int16_t>(((row[c / 8] >> (c % 8)) & 1u) ? 1 : -1);
        break;
    }
  }
  const bool asym = is_asym(s);
  const uint8_t* par = p + static_cast<uint64_t>(rows) * rb;
  if (!is_k6(s)) {
    for (int64_t i = 0; i < NG; ++i) {
      u.params[static_cast<size_t>(i)].scale = fmt::f16_to_f32(get_u16(par + 2 * i));
      if (asym) u.params[static_cast<size_t>(i)].min = fmt::f16_to_f32(get_u16(par + 2 * (NG + i)));
    }
    return u;
  }
  const int64_t ns = (NG + fmt::kK6GroupsPerSuper - 1) / fmt::kK6GroupsPerSuper;
  const uint64_t p6 = (static_cast<uint64_t>(NG) * 6 + 7) / 8;
  const uint8_t* sc = par;
  const uint8_t* mc = par + p6;
  const uint8_t* d = par + (asym ? 2 : 1) * p6;
  const uint8_t* dm = d + 2 * ns;
  u.super_d.resize(static_cast<size_t>(ns));
  for (int64_t b = 0; b < ns; ++b) u.super_d[static_cast<size_t>(b)] = get_u16(d + 2 * b);
  if (asym) {
    u.super_dm.resize(static_cast<size_t>(ns));
    for (int64_t b = 0; b < ns; ++b) u.super_dm[static_cast<size_t>(b)] = get_u16(dm + 2 * b);
  }
  for (int64_t i = 0; i < NG; ++i) {
    const size_t b = static_cast<size_t>(i / fmt::kK6GroupsPerSuper);
    GroupParams& gp = u.params[static_cast<size_t>(i)];
    gp.scale = k6_param(u.super_d[b], static_cast<int>(get_bits(sc, static_cast<uint64_t>(i) * 6, 6)));
    if (asym) gp.min = k6_param(u.super_dm[b], static_cast<int>(get_bits(mc, static_cast<uint64_t>(i) * 6, 6)));
  }
  return u;
}

Result<std::vector<float>> dequantize(const Unpacked& u) {
  KERF_RETURN_IF_ERROR(validate(u.spec).with_context("dequantize"));
  if (u.spec.plain()) return InvalidArgument("dequantize: plain spec in an Unpacked tensor");
  KERF_RETURN_IF_ERROR(check_shape("dequantize", u.rows, u.cols));
  const int64_t g = u.spec.group_for(u.cols), ng = (u.cols + g - 1) / g;
  if (static_cast<int64_t>(u.codes.size()) != u.rows * u.cols || static_cast<int64_t>(u.params.size()) != u.rows * ng)
    return InvalidArgument("dequantize: " + std::to_string(u.codes.size()) + " codes / " + std::to_string(u.params.size()) +
                           " group parameters for [" + std::to_string(u.rows) + ", " + std::to_string(u.cols) + "] g " +
                           std::to_string(g));
  std::vector<float> out(u.codes.size());
  for (int64_t r = 0; r < u.rows; ++r)
    for (int64_t c = 0; c < u.cols; ++c) {
      const size_t k = static_cast<size_t>(r * u.cols + c);
      out[k] = dequantize_value(u.spec, u.params[static_cast<size_t>(r * ng + c / g)], u.codes[k]);
    }
  return out;
}

// ------------------------------------------------------------------ quantize
namespace {
/// The checks quantize_rtn_unpacked and quantize_with_params share (`what` names the caller).
Status check_quantize_input(const char* what, const float* w, int64_t rows, int64_t cols, const QSpec& s) {
  KERF_RETURN_IF_ERROR(validate(s).with_context(what));
  if (s.plain()) return InvalidArgument(std::string(what) + ": plain spec '" + to_string(s) + "' has no unpacked form");
  if (w == nullptr) return InvalidArgument(std::string(what) + ": null weight pointer");
  KERF_RETURN_IF_ERROR(check_shape(what, rows, cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(w[r * cols + c]))
        return BadInput(std::string(what) + ": " + (std::isnan(w[r * cols + c]) ? "NaN" : "Inf") + " weight at " + rc(r, c));
  if (s.group_for(cols) > INT32_MAX)
    return InvalidArgument(std::string(what) + ": group of " + std::to_string(s.group_for(cols)) + " columns is too large");
  return Status::Ok();
}

/// Unpacked tensor of W under `grid`: params = grid.snap(init) (or `searched` per group when
/// given), codes by quantize_value.
Unpacked quantize_on_grid(const float* w, const ParamGrid& grid, const std::vector<GroupParams>& init,
                          const std::function<GroupParams(int64_t)>& searched) {
  const QSpec& s = grid.spec();
  const int64_t rows = grid.rows(), cols = grid.cols(), g = grid.group(), ng = grid.groups_per_row(), NG = rows * ng;
  Unpacked u;
  u.spec = s;
  u.rows = rows;
  u.cols = cols;
  u.codes.resize(static_cast<size_t>(rows * cols));
  u.params.resize(static_cast<size_t>(NG));
  u.super_d = grid.super_d();
  u.super_dm = grid.super_dm();
  for (int64_t i = 0; i < NG; ++i) {
    const int64_t r = i / ng, c0 = (i % ng) * g, n = std::min(cols, c0 + g) - c0;
    const float* wp = w + r * cols + c0;
    const GroupParams p = searched ? searched(i) : grid.snap(i, init[static_cast<size_t>(i)]);
    u.params[static_cast<size_t>(i)] = p;
    for (int64_t k = 0; k < n; ++k) u.codes[static_cast<size_t>(r * cols + c0 + k)] = static_cast<int16_t>(quantize_value(s, p, wp[k]));
  }
  return u;
}
}  // namespace

Result<Unpacked> quantize_with_params(const float* w, int64_t rows, int64_t cols, const QSpec& s,
                                      const std::vector<GroupParams>& params) {
  KERF_RETURN_IF_ERROR(check_quantize_input("quantize_with_params", w, rows, cols, s));
  const int64_t g = s.group_for(cols), ng = (cols + g - 1) / g;
  if (static_cast<int64_t>(params.size()) != rows * ng)
    return InvalidArgument("quantize_with_params: " + std::to_string(params.size()) + " group parameters for [" + std::to_string(rows) +
                           ", " + std::to_string(cols) + "] in groups of " + std::to_string(g) + " (need " + std::to_string(rows * ng) + ")");
  KERF_ASSIGN_OR_RETURN(ParamGrid grid, ParamGrid::make(s, rows, cols, params));
  return quantize_on_grid(w, grid, params, nullptr);
}

Result<Unpacked> quantize_rtn_unpacked(const float* w, int64_t rows, int64_t cols, const QSpec& s,
                                       const float* col_importance, ParamRule rule) {
  KERF_RETURN_IF_ERROR(check_quantize_input("quantize_rtn", w, rows, cols, s));
  if (rule == ParamRule::kTwn && s.kind != QKind::kTernary)
    return InvalidArgument("quantize_rtn: rule 'twn' applies to ternary only, not '" + to_string(s) + "'");
  KERF_RETURN_IF_ERROR(check_importance(col_importance, cols));
  const int64_t g = s.group_for(cols), ng = (cols + g - 1) / g, NG = rows * ng;
  const auto group_ptr = [&](int64_t i, const float** wp, const float** hp, int64_t* n) {
    const int64_t r = i / ng, j = i % ng, c0 = j * g;
    *wp = w + r * cols + c0;
    *hp = col_importance ? col_importance + c0 : nullptr;
    *n = std::min(cols, c0 + g) - c0;
  };
  std::vector<GroupParams> init(static_cast<size_t>(NG));
  const Snapper f16snap{&s, nullptr, 0};
  for (int64_t i = 0; i < NG; ++i) {
    const float *wp, *hp;
    int64_t n;
    group_ptr(i, &wp, &hp, &n);
    GroupParams snapped;
    init[static_cast<size_t>(i)] = choose_impl(s, wp, hp, n, rule, f16snap, &snapped);
  }
  KERF_ASSIGN_OR_RETURN(ParamGrid grid, ParamGrid::make(s, rows, cols, init));
  if (!(is_k6(s) && rule == ParamRule::kSearch)) return quantize_on_grid(w, grid, init, nullptr);
  // kK6 with kSearch: each group's search is re-run against the grid.
  return quantize_on_grid(w, grid, init, [&](int64_t i) {
    const float *wp, *hp;
    int64_t n;
    group_ptr(i, &wp, &hp, &n);
    GroupParams p;
    choose_impl(s, wp, hp, n, rule, Snapper{&s, &grid, i}, &p, &init[static_cast<size_t>(i)]);
    return p;
  });
}

Result<QuantTensor> quantize_rtn(const float* w, int64_t rows, int64_t cols, const QSpec& s,
                                 const float* col_importance, ParamRule rule) {
  KERF_RETURN_IF_ERROR(validate(s).with_context("quantize_rtn"));
  if (s.plain()) {
    if (w == nullptr) return InvalidArgument("quantize_rtn: null weight pointer");
    return store_plain(w, rows, cols, s.kind == QKind::kF16 ? fmt::DType::kF16 : fmt::DType::kF32);
  }
  KERF_ASSIGN_OR_RETURN(Unpacked u, quantize_rtn_unpacked(w, rows, cols, s, col_importance, rule));
  return pack(u);
}

}  // namespace kerf::quant
