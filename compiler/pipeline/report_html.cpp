// `kerf report`: a "kerf.report/1" (or older "kerf.eval/1") JSON report as one self-contained HTML
// page. Everything is generated here: inline CSS, inline SVG charts, no scripts, no network
// references; every string that comes from a report goes through esc().
#include "compiler/pipeline/report_html.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "compiler/pipeline/json_io.h"
#include "compiler/pipeline/report.h"

namespace kerf::pipeline {
namespace {

using J = nlohmann::ordered_json;

// ------------------------------------------------------------------------------ text helpers

/// HTML-escapes text for element content and double- or single-quoted attribute values.
std::string esc(const std::string& s) {
  std::string o;
  o.reserve(s.size() + 16);
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string strf(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char* f, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

/// 1234567 -> "1,234,567".
std::string grouped(double v) {
  if (!std::isfinite(v)) return "—";
  const bool neg = v < 0;
  std::string d = strf("%.0f", std::fabs(v)), o;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i > 0 && (d.size() - i) % 3 == 0) o += ',';
    o += d[i];
  }
  return neg ? "-" + o : o;
}

std::string human_bytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return strf("%.2f GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return strf("%.2f MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return strf("%.1f KiB", b / 1024.0);
  return strf("%.0f B", b);
}

/// Four significant digits, no exponent for ordinary magnitudes.
std::string sig(double v) {
  if (!std::isfinite(v)) return "—";
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e6 || a < 1e-4) return strf("%.3e", v);
  return strf("%.4g", v);
}

/// A signed percentage of a fraction: 0.025 -> "+2.50 %".
std::string pct(double frac) { return strf("%+.2f %%", 100.0 * frac); }

std::string basename_of(const std::string& p) {
  const size_t s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

std::string truncated(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t cut = n - 1;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // whole UTF-8 characters
  return s.substr(0, cut) + "…";
}

const std::string kNotIn = "<span class=\"na\">not in this report</span>";
const std::string kDash = "<span class=\"na\">—</span>";

// ------------------------------------------------------------------------------ tolerant accessors

/// o[k] when o is an object holding a non-null k, else nullptr.
const J* get(const J& o, const char* k) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(k);
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> num(const J& o, const char* k) {
  const J* v = get(o, k);
  if (v != nullptr && v->is_number()) return v->get<double>();
  return std::nullopt;
}

std::optional<std::string> str(const J& o, const char* k) {
  const J* v = get(o, k);
  if (v != nullptr && v->is_string()) return v->get<std::string>();
  return std::nullopt;
}

const J* arr(const J& o, const char* k) {
  const J* v = get(o, k);
  return v != nullptr && v->is_array() ? v : nullptr;
}

const J* obj(const J& o, const char* k) {
  const J* v = get(o, k);
  return v != nullptr && v->is_object() ? v : nullptr;
}

/// A tokens/s value that is either a number or a `kerf bench` statistic object ({"mean", "stddev", ...}).
std::optional<double> rate(const J& o, const char* k, std::optional<double>* stddev = nullptr) {
  if (auto v = num(o, k)) return v;
  if (const J* s = obj(o, k)) {
    if (stddev != nullptr) *stddev = num(*s, "stddev");
    return num(*s, "mean");
  }
  return std::nullopt;
}

std::string str_or(const J& o, const char* k, const std::string& dflt) { return str(o, k).value_or(dflt); }

/// A scalar cell: strings escaped, numbers with `sig`, absent -> dash.
std::string cell(const J& o, const char* k) {
  const J* v = get(o, k);
  if (v == nullptr) return kDash;
  if (v->is_string()) return esc(v->get<std::string>());
  if (v->is_number_integer() || v->is_number_unsigned()) return grouped(v->get<double>());
  if (v->is_number()) return sig(v->get<double>());
  if (v->is_boolean()) return v->get<bool>() ? "yes" : "no";
  return esc(dump_json(*v));
}

bool has_reference(const J& r) {
  const auto ref = num(r, "ppl_reference");
  return ref && *ref > 0;
}

std::string schema_of(const J& r) { return str_or(r, "schema", "?"); }
bool is_old(const J& r) { return schema_of(r) == kEvalReportSchema; }

// ------------------------------------------------------------------------------ SVG charts

/// Evenly spaced "nice" tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int want) {
  if (!(hi > lo)) hi = lo + (lo == 0 ? 1.0 : std::fabs(lo) * 0.1);
  const double raw = (hi - lo) / std::max(1, want);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag * 1.0000001) {
      step = m * mag;
      break;
    }
  if (!(step > 0) || !std::isfinite(step) || (hi - lo) / step > 1000) return {lo, hi};  // degenerate ranges
  std::vector<double> t;
  const double first = std::floor(lo / step) * step;
  for (double v = first; v <= hi + step * 0.999; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

std::string tick_label(double v, double step) {
  if (v == 0) return "0";
  const double a = std::fabs(step);
  if (a >= 1 && std::fabs(v) < 1e6) return strf("%.0f", v);
  if (a < 1e-4 || std::fabs(v) >= 1e6) return strf("%.1e", v);
  const int dec = std::max(0, static_cast<int>(std::ceil(-std::log10(a) - 1e-9)));
  return strf("%.*f", dec, v);
}

/// A vertical bar chart: one bar per label (missing values drawn as "n/a"), a y axis with ticks and
/// grid lines, the value above each bar, axis titles.
std::string bar_chart(const std::string& id, const std::string& title, const std::string& xlabel, const std::string& ylabel,
                      const std::vector<std::string>& labels, const std::vector<std::optional<double>>& values,
                      const std::string& css_class) {
  const double W = 900, H = 300, L = 78, R = 16, T = 34, B = 52;
  const double pw = W - L - R, ph = H - T - B;
  double vmax = 0;
  for (const auto& v : values)
    if (v && std::isfinite(*v)) vmax = std::max(vmax, *v);
  std::vector<double> ticks = nice_ticks(0, vmax > 0 ? vmax : 1, 5);
  const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : ticks.back();
  if (ticks.back() < vmax * 1.1) ticks.push_back(ticks.back() + step);  // headroom for the value labels
  const double top = ticks.back();
  auto y = [&](double v) { return T + ph * (1.0 - v / top); };
  const size_t n = std::max<size_t>(1, labels.size());
  const double slot = pw / static_cast<double>(n);
  const size_t label_every = slot >= 18 ? 1 : static_cast<size_t>(std::ceil(18.0 / slot));

  std::ostringstream s;
  s << "<figure class=\"chart\"><svg id=\"" << esc(id) << "\" class=\"" << css_class << "\" viewBox=\"0 0 " << W << ' ' << H
    << "\" width=\"" << W << "\" height=\"" << H << "\" role=\"img\" aria-label=\"" << esc(title) << "\">";
  s << "<text class=\"ctitle\" x=\"" << L << "\" y=\"20\">" << esc(title) << "</text>";
  for (double t : ticks) {
    s << strf("<line class=\"grid\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, W - R, y(t), y(t));
    s << strf("<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", L - 6, y(t) + 4) << tick_label(t, step)
      << "</text>";
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    const double cx = L + slot * (static_cast<double>(i) + 0.5), bw = std::max(1.0, slot * 0.7);
    const auto& v = values[i];
    if (v && std::isfinite(*v)) {
      const double h = std::max(0.0, T + ph - y(*v));
      s << strf("<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\">", cx - bw / 2, T + ph - h, bw, h)
        << "<title>" << esc(labels[i]) << ": " << sig(*v) << "</title></rect>";
      if (slot >= 34)
        s << strf("<text class=\"val\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", cx, T + ph - h - 4) << sig(*v) << "</text>";
      else if (slot >= 11)
        s << strf("<text class=\"val\" x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-90 %.1f %.1f)\">", cx + 3, T + ph - h - 4, cx + 3,
                  T + ph - h - 4)
          << sig(*v) << "</text>";
    } else {
      s << strf("<text class=\"val na\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">n/a</text>", cx, T + ph - 4);
    }
    if (i % label_every == 0)
      s << strf("<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", cx, T + ph + 16) << esc(labels[i]) << "</text>";
  }
  s << strf("<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, L, T, T + ph);
  s << strf("<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, W - R, T + ph, T + ph);
  s << strf("<text class=\"atitle\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", L + pw / 2, H - 10) << esc(xlabel) << "</text>";
  s << strf("<text class=\"atitle\" transform=\"rotate(-90)\" x=\"%.1f\" y=\"16\" text-anchor=\"middle\">", -(T + ph / 2))
    << esc(ylabel) << "</text>";
  s << "</svg></figure>\n";
  return s.str();
}

struct CurvePoint {
  double bpw = 0, ppl = 0;
  std::string label;
  bool current = false;
};

/// Perplexity against bits per weight: a line through the points in bpw order, each point labelled,
/// the FP reference perplexity as a dashed line when known.
std::string curve_chart(std::vector<CurvePoint> pts, std::optional<double> ref_ppl) {
  std::sort(pts.begin(), pts.end(), [](const CurvePoint& a, const CurvePoint& b) { return a.bpw < b.bpw; });
  const double W = 900, H = 380, L = 78, R = 24, T = 34, B = 52;
  const double pw = W - L - R, ph = H - T - B;
  double x0 = pts.front().bpw, x1 = pts.front().bpw, y0 = pts.front().ppl, y1 = pts.front().ppl;
  for (const auto& p : pts) x0 = std::min(x0, p.bpw), x1 = std::max(x1, p.bpw), y0 = std::min(y0, p.ppl), y1 = std::max(y1, p.ppl);
  if (ref_ppl) y0 = std::min(y0, *ref_ppl), y1 = std::max(y1, *ref_ppl);
  const double xpad = std::max(0.25, (x1 - x0) * 0.08), ypad = std::max(1e-3 * std::fabs(y1), (y1 - y0) * 0.15);
  const std::vector<double> xt = nice_ticks(std::max(0.0, x0 - xpad), x1 + xpad, 6);
  const std::vector<double> yt = nice_ticks(std::max(0.0, y0 - ypad), y1 + ypad, 5);
  const double xa = xt.front(), xb = xt.back(), ya = yt.front(), yb = yt.back();
  const double xs = xt.size() > 1 ? xt[1] - xt[0] : 1, ys = yt.size() > 1 ? yt[1] - yt[0] : 1;
  auto X = [&](double v) { return L + pw * (v - xa) / (xb - xa); };
  auto Y = [&](double v) { return T + ph * (1.0 - (v - ya) / (yb - ya)); };

  std::ostringstream s;
  s << "<figure class=\"chart\"><svg id=\"curve-chart\" viewBox=\"0 0 " << W << ' ' << H << "\" width=\"" << W << "\" height=\"" << H
    << "\" role=\"img\" aria-label=\"perplexity against bits per weight\">";
  s << "<text class=\"ctitle\" x=\"" << L << "\" y=\"20\">Perplexity vs bits per weight</text>";
  for (double t : yt) {
    s << strf("<line class=\"grid\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, W - R, Y(t), Y(t));
    s << strf("<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", L - 6, Y(t) + 4) << tick_label(t, ys) << "</text>";
  }
  for (double t : xt) {
    s << strf("<line class=\"grid\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", X(t), X(t), T, T + ph);
    s << strf("<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", X(t), T + ph + 16) << tick_label(t, xs) << "</text>";
  }
  if (ref_ppl) {
    s << strf("<line class=\"ref\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, W - R, Y(*ref_ppl), Y(*ref_ppl));
    s << strf("<text class=\"reflabel\" x=\"%.1f\" y=\"%.1f\">", L + 6, Y(*ref_ppl) + 15)
      << "FP reference " << sig(*ref_ppl) << "</text>";
  }
  std::string poly;
  for (const auto& p : pts) poly += strf("%.1f,%.1f ", X(p.bpw), Y(p.ppl));
  s << "<polyline class=\"line\" points=\"" << poly << "\"/>";
  bool last_above = false;
  for (size_t i = 0; i < pts.size(); ++i) {
    const auto& p = pts[i];
    const double px = X(p.bpw), py = Y(p.ppl);
    s << strf("<circle class=\"%s\" cx=\"%.1f\" cy=\"%.1f\" r=\"%d\">", p.current ? "pt cur" : "pt", px, py, p.current ? 6 : 4)
      << "<title>" << esc(p.label) << ": " << sig(p.bpw) << " bpw, perplexity " << sig(p.ppl) << "</title></circle>";
    // Labels above the point, below it when the previous label is close or the top is near; the
    // outer points' labels are anchored towards the inside of the plot.
    bool above = py - 24 > T;
    if (i > 0 && last_above && px - X(pts[i - 1].bpw) < 220 && py + 22 < T + ph) above = false;
    if (!above && py + 22 >= T + ph) above = true;
    last_above = above;
    const char* anchor = px > L + pw * 0.75 ? "end" : px < L + pw * 0.25 ? "start" : "middle";
    s << strf("<text class=\"plabel\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\">", px, above ? py - 10 : py + 18, anchor)
      << esc(truncated(p.label, 40)) << " (" << sig(p.ppl) << ")</text>";
  }
  s << strf("<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, L, T, T + ph);
  s << strf("<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, W - R, T + ph, T + ph);
  s << strf("<text class=\"atitle\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", L + pw / 2, H - 10)
    << "bits per weight (EVAL.md: all weight matrices)</text>";
  s << strf("<text class=\"atitle\" transform=\"rotate(-90)\" x=\"%.1f\" y=\"16\" text-anchor=\"middle\">", -(T + ph / 2))
    << "perplexity (lower is better)</text>";
  s << "</svg></figure>\n";
  return s.str();
}

// ------------------------------------------------------------------------------ sections

const char* kCss = R"CSS(
:root{--fg:#1b1f24;--muted:#5b6470;--line:#d4d9df;--head:#eef1f4;--accent:#2b6cb0;--accent2:#c05621;
--pass:#1e7b34;--passbg:#e3f4e7;--fail:#b42318;--failbg:#fde8e6;--warnbg:#fff4d6}
*{box-sizing:border-box}
html{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{margin:0 auto;max-width:1200px;padding:20px 28px 48px;color:var(--fg);background:#fff;
font:14px/1.45 "DejaVu Sans","Helvetica Neue",Arial,sans-serif}
header h1{font-size:22px;margin:0 0 2px}
header .sub{color:var(--muted);margin:0 0 10px}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;padding:8px 0 10px;border-bottom:1px solid var(--line);margin-bottom:8px}
nav a{color:var(--accent);text-decoration:none}
section{padding:6px 0 14px;border-bottom:1px solid var(--line)}
h2{font-size:18px;margin:14px 0 8px}
h3{font-size:15px;margin:12px 0 6px}
p{margin:6px 0}
code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.wide{width:100%}
td.name{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.na{color:var(--muted);font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:150px;background:#fafbfc}
.card .k{color:var(--muted);font-size:12px}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.card .d{color:var(--muted);font-size:12px}
.banner{border-radius:6px;padding:10px 14px;margin:10px 0;font-weight:600;font-size:15px}
.banner.pass{background:var(--passbg);color:var(--pass);border:1px solid var(--pass)}
.banner.fail{background:var(--failbg);color:var(--fail);border:1px solid var(--fail)}
.banner ul{margin:6px 0 0 18px;padding:0;font-weight:400;font-size:13.5px}
.note{background:var(--warnbg);border-left:4px solid #d69e2e;padding:6px 10px;margin:8px 0}
tr.regress td{background:var(--failbg)}
tr.regress td.verdict{color:var(--fail);font-weight:600}
tr.improve td.verdict{color:var(--pass);font-weight:600}
tr.failed td{background:var(--failbg)}
td.ok{color:var(--pass);font-weight:600}
td.bad{color:var(--fail);font-weight:600}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}
.chip{border:1px solid var(--line);border-radius:10px;padding:1px 9px;background:#f5f7f9;font-size:12.5px}
figure.chart{margin:8px 0 12px}
svg{max-width:100%;height:auto;font-family:"DejaVu Sans",Arial,sans-serif}
svg .grid{stroke:#e3e7eb;stroke-width:1}
svg .axis{stroke:#4a5360;stroke-width:1.2}
svg .tick{font-size:11px;fill:#4a5360}
svg .val{font-size:10.5px;fill:#1b1f24}
svg .val.na{fill:#8a939e}
svg .ctitle{font-size:14px;font-weight:600;fill:#1b1f24}
svg .atitle{font-size:12px;fill:#4a5360}
svg .bar{fill:#2b6cb0}
svg.alt .bar{fill:#c05621}
svg.bpw .bar{fill:#4a7c59}
svg .line{fill:none;stroke:#2b6cb0;stroke-width:2}
svg .pt{fill:#2b6cb0;stroke:#fff;stroke-width:1.5}
svg .pt.cur{fill:#c05621}
svg .plabel{font-size:11.5px;fill:#1b1f24}
svg .ref{stroke:#1e7b34;stroke-width:1.5;stroke-dasharray:6 4}
svg .reflabel{font-size:11px;fill:#1e7b34}
footer{color:var(--muted);font-size:12px;margin-top:14px}
@page{margin:14mm}
@media print{body{max-width:none;padding:0;font-size:11px}nav{display:none}
h2{break-after:avoid}figure.chart,tr,.card,.banner{break-inside:avoid}
table{font-size:10px}section{border-bottom:none}}
)CSS";

void section_open(std::ostringstream& o, const char* id, const std::string& heading) {
  o << "<section id=\"" << id << "\">\n<h2>" << heading << "</h2>\n";
}
void section_close(std::ostringstream& o) { o << "</section>\n"; }

std::string card(const std::string& k, const std::string& v, const std::string& d = "") {
  return "<div class=\"card\"><div class=\"k\">" + k + "</div><div class=\"v\">" + v + "</div>" +
         (d.empty() ? "" : "<div class=\"d\">" + d + "</div>") + "</div>";
}

std::string kv_row(const std::string& k, const std::string& v) { return "<tr><th>" + k + "</th><td>" + v + "</td></tr>\n"; }

/// A fraction-valued check metric (the ppl increase, ppl vs baseline) is shown as a percentage.
bool fraction_metric(const std::string& m) { return m == "ppl_increase" || m == "ppl_vs_baseline"; }

std::string check_value(const std::string& metric, const J& c, const char* k) {
  auto v = num(c, k);
  if (!v) return cell(c, k);
  if (fraction_metric(metric)) return pct(*v);
  if (metric == "bytes_vs_baseline") return (*v >= 0 ? "+" : "") + grouped(*v);
  if (metric.find("_vs_baseline") != std::string::npos) return strf("%+.4g", *v);
  return sig(*v);
}

std::string op_text(const std::string& op) { return op == "<=" ? "≤" : op == ">=" ? "≥" : esc(op); }

/// A check's limit: fractions as unsigned percentages, "none" when null.
std::string limit_value(const std::string& metric, const J& c) {
  auto v = num(c, "limit");
  if (!v) return "<span class=\"na\">no limit</span>";
  return fraction_metric(metric) ? strf("%.2f %%", 100.0 * *v) : check_value(metric, c, "limit");
}

/// The failed checks of a verification object.
std::vector<const J*> failed_checks(const J& ver) {
  std::vector<const J*> f;
  if (const J* cs = arr(ver, "checks"))
    for (const J& c : *cs)
      if (const J* p = get(c, "passed"); p != nullptr && p->is_boolean() && !p->get<bool>()) f.push_back(&c);
  return f;
}

std::string verification_banner(const J& ver) {
  const J* p = get(ver, "passed");
  const J* cs = arr(ver, "checks");
  const size_t n = cs != nullptr ? cs->size() : 0;
  const auto failed = failed_checks(ver);
  const bool passed = p != nullptr && p->is_boolean() ? p->get<bool>() : failed.empty();
  std::ostringstream o;
  if (passed) {
    o << "<div class=\"banner pass\" id=\"verdict\">PASS — all " << n << " check" << (n == 1 ? "" : "s") << " passed</div>\n";
  } else {
    o << "<div class=\"banner fail\" id=\"verdict\">FAIL — " << failed.size() << " of " << n << " check" << (n == 1 ? "" : "s")
      << " failed";
    if (!failed.empty()) {
      o << "<ul>";
      for (const J* c : failed) {
        const std::string m = str_or(*c, "metric", "?");
        // The check's own message when it has one (kerf verify writes "metric VALUE OP LIMIT (context)").
        const std::string msg = str_or(*c, "message", "");
        if (!msg.empty())
          o << "<li><b>" << esc(m) << "</b>: " << esc(msg) << "</li>";
        else
          o << "<li><b>" << esc(m) << "</b> = " << check_value(m, *c, "value") << " (required: " << op_text(str_or(*c, "op", ""))
            << " " << limit_value(m, *c) << ")</li>";
      }
      o << "</ul>";
    }
    o << "</div>\n";
  }
  return o.str();
}

void summary_section(std::ostringstream& o, const J& r) {
  section_open(o, "summary", "Summary");
  if (const J* ver = obj(r, "verification")) o << verification_banner(*ver);

  // Headline cards.
  o << "<div class=\"cards\">";
  if (auto b = num(r, "bytes")) o << card("size", human_bytes(*b), grouped(*b) + " bytes");
  if (auto b = num(r, "bpw")) o << card("bits per weight", strf("%.3f", *b), "all weight matrices");
  if (auto p = num(r, "ppl")) {
    std::string d = "no FP reference";
    if (has_reference(r)) d = pct(*p / *num(r, "ppl_reference") - 1.0) + " vs FP " + strf("%.4f", *num(r, "ppl_reference"));
    o << card("perplexity", strf("%.4f", *p), d);
  }
  if (has_reference(r)) {
    if (auto k = num(r, "kl")) o << card("KL(ref ‖ artifact)", strf("%.5f", *k), "nats / token");
    if (auto t = num(r, "top1")) o << card("top-1 agreement", strf("%.2f %%", 100.0 * *t), "with the FP reference");
  }
  if (const J* sp = obj(r, "speed")) {
    if (auto d = rate(*sp, "decode_tps")) o << card("decode", strf("%.1f tok/s", *d), "runtime-lite");
  }
  o << "</div>\n";

  o << "<table class=\"kv\">\n";
  o << kv_row("artifact", "<code>" + esc(str_or(r, "artifact", "?")) + "</code>");
  o << kv_row("target", get(r, "target") != nullptr ? esc(str_or(r, "target", "")) : kNotIn);
  o << kv_row("recipe", get(r, "recipe") != nullptr ? "<code>" + esc(str_or(r, "recipe", "")) + "</code>" : kNotIn);
  if (const J* tool = obj(r, "tool"))
    o << kv_row("tool", esc(str_or(*tool, "name", "kerf")) + " " + esc(str_or(*tool, "version", "?")) + ", commit <code>" +
                            esc(str_or(*tool, "commit", "unknown")) + "</code>");
  else
    o << kv_row("tool", kNotIn);
  o << kv_row("report schema", "<code>" + esc(schema_of(r)) + "</code>");
  if (auto b = num(r, "bytes")) o << kv_row("size", grouped(*b) + " bytes (" + human_bytes(*b) + ")");
  else o << kv_row("size", kNotIn);
  if (auto b = num(r, "bpw")) o << kv_row("bits per weight", strf("%.4f", *b));
  else o << kv_row("bits per weight", kNotIn);
  const std::string reference = str_or(r, "reference", "");
  o << kv_row("reference", get(r, "reference") == nullptr ? kNotIn
                           : reference.empty()           ? "<span class=\"na\">none (artifact metrics only)</span>"
                                                         : "<code>" + esc(reference) + "</code>");
  if (auto p = num(r, "ppl")) {
    std::string v = strf("%.4f", *p);
    if (has_reference(r)) {
      const double ref = *num(r, "ppl_reference");
      v += " vs " + strf("%.4f", ref) + " FP reference (" + pct(*p / ref - 1.0) + ")";
    }
    o << kv_row("perplexity", v);
  } else {
    o << kv_row("perplexity", kNotIn);
  }
  if (auto n = num(r, "nll")) {
    std::string v = strf("%.5f", *n);
    if (has_reference(r))
      if (auto nr = num(r, "nll_reference")) v += " vs " + strf("%.5f", *nr) + " reference";
    o << kv_row("mean NLL (nats/token)", v);
  }
  if (has_reference(r)) {
    if (auto k = num(r, "kl")) o << kv_row("KL(reference ‖ artifact)", strf("%.5f nats/token", *k));
    if (auto t = num(r, "top1")) o << kv_row("top-1 agreement", strf("%.4f (%.2f %%)", *t, 100.0 * *t));
  }
  std::string text = "<code>" + esc(str_or(r, "text", "?")) + "</code>, stories " + esc(str_or(r, "stories", "?"));
  if (auto n = num(r, "n_stories")) text += " (" + grouped(*n) + " stories";
  if (auto n = num(r, "predicted_tokens")) text += (num(r, "n_stories") ? ", " : " (") + grouped(*n) + " predicted tokens";
  if (num(r, "n_stories") || num(r, "predicted_tokens")) text += ")";
  o << kv_row("evaluation text", get(r, "text") != nullptr || get(r, "stories") != nullptr ? text : kNotIn);
  if (const J* sp = obj(r, "speed")) {
    std::string v;
    std::optional<double> sd;
    if (auto p = rate(*sp, "prefill_tps", &sd)) v += strf("prefill %.1f tok/s", *p) + (sd ? strf(" ± %.1f", *sd) : "");
    sd.reset();
    if (auto d = rate(*sp, "decode_tps", &sd)) v += (v.empty() ? "" : ", ") + strf("decode %.1f tok/s", *d) + (sd ? strf(" ± %.1f", *sd) : "");
    if (auto t = num(*sp, "threads")) v += strf(", %g thread%s", *t, *t == 1 ? "" : "s");
    if (auto isa = str(*sp, "isa")) v += ", kernels " + esc(*isa);
    o << kv_row("speed (runtime-lite)", v.empty() ? kDash : v);
  } else {
    o << kv_row("speed (runtime-lite)", "<span class=\"na\">not measured (<code>kerf verify --bench</code> or <code>kerf bench</code>)</span>");
  }
  if (const J* t = obj(r, "timing")) {
    std::string v;
    if (auto a = num(*t, "reference_seconds")) v += strf("reference %.2f s", *a);
    if (auto a = num(*t, "artifact_seconds")) v += (v.empty() ? "" : ", ") + strf("artifact %.2f s", *a);
    if (auto a = num(*t, "artifact_prefill_tokens_per_second")) v += strf(" (%.0f tokens/s)", *a);
    o << kv_row("evaluation time", v.empty() ? kDash : v);
  }
  if (const J* ts = arr(r, "tensors")) {
    // Tensor count by precision: a fallback from the requested precision shows up here.
    std::map<std::string, int> by;
    for (const J& t : *ts) {
      if (!t.is_object()) continue;
      std::string k;
      if (t.contains("precision")) k = str(t, "precision").value_or("kept (floating point)");
      else k = str_or(t, "storage", "?");
      ++by[k];
    }
    std::string v = grouped(static_cast<double>(ts->size())) + " tensors:";
    bool first = true;
    for (const auto& [k, n] : by) v += (first ? " " : ", ") + esc(k) + " × " + std::to_string(n), first = false;
    o << kv_row("tensors by precision", v);
  }
  o << "</table>\n";
  section_close(o);
}

void verification_section(std::ostringstream& o, const J& r) {
  section_open(o, "verification", "Verification");
  const J* ver = obj(r, "verification");
  if (ver == nullptr) {
    o << "<p class=\"na\">No verification in this report (it was written by <code>kerf eval</code>). "
         "<code>kerf verify ARTIFACT --reference MODEL --text FILE --max-ppl-increase 5% --min-top1 0.85 --max-kl 0.08 "
         "--json R.json</code> checks thresholds and writes one.</p>\n";
    section_close(o);
    return;
  }
  o << verification_banner(*ver);
  if (const J* th = obj(*ver, "thresholds")) {
    const J* src = obj(*ver, "threshold_sources");
    o << "<h3>Thresholds</h3><table><tr><th>threshold</th><th class=\"n\">value</th>" << (src ? "<th>from</th>" : "") << "</tr>\n";
    for (auto it = th->begin(); it != th->end(); ++it) {
      std::string v = it->is_number() ? sig(it->get<double>()) : esc(dump_json(*it));
      if (it->is_number() && (it.key() == "max_ppl_increase" || it.key() == "max_ppl_regression"))
        v = strf("%.2f %%", 100.0 * it->get<double>());
      o << "<tr><td><code>" << esc(it.key()) << "</code></td><td class=\"n\">" << v << "</td>";
      if (src) o << "<td>" << (str(*src, it.key().c_str()) ? esc(*str(*src, it.key().c_str())) : kDash) << "</td>";
      o << "</tr>\n";
    }
    o << "</table>\n";
  }
  o << "<h3>Checks</h3>";
  const J* cs = arr(*ver, "checks");
  if (cs == nullptr || cs->empty()) {
    o << "<p class=\"na\">No checks.</p>\n";
  } else {
    o << "<table class=\"wide\"><tr><th>metric</th><th class=\"n\">value</th><th>op</th><th class=\"n\">limit</th><th>result</th>"
         "<th>message</th></tr>\n";
    for (const J& c : *cs) {
      const std::string m = str_or(c, "metric", "?");
      const J* p = get(c, "passed");
      const bool ok = p != nullptr && p->is_boolean() && p->get<bool>();
      o << "<tr" << (ok ? "" : " class=\"failed\"") << "><td><code>" << esc(m) << "</code></td><td class=\"n\">"
        << check_value(m, c, "value") << "</td><td>" << op_text(str_or(c, "op", "")) << "</td><td class=\"n\">"
        << limit_value(m, c) << "</td><td class=\"" << (ok ? "ok\">PASS" : "bad\">FAIL") << "</td><td>"
        << esc(str_or(c, "message", "")) << "</td></tr>\n";
    }
    o << "</table>\n";
  }
  if (const J* b = obj(*ver, "baseline"))
    o << "<p>Baseline: <code>" << esc(str_or(*b, "file", "?")) << "</code> (see <a href=\"#baseline\">the diff</a>).</p>\n";
  section_close(o);
}

std::string shape_text(const J& t) {
  const J* s = arr(t, "shape");
  if (s == nullptr) return kDash;
  std::string o;
  for (size_t i = 0; i < s->size(); ++i) o += (i ? "×" : "") + ((*s)[i].is_number() ? grouped((*s)[i].get<double>()) : "?");
  return o;
}

void tensors_section(std::ostringstream& o, const J& r) {
  section_open(o, "tensors", "Tensors");
  const J* ts = arr(r, "tensors");
  if (ts == nullptr) {
    o << "<p>Per-tensor data is " << kNotIn << ".</p>\n";
    section_close(o);
    return;
  }
  bool any_precision = false, any_sens = false;
  for (const J& t : *ts) {
    any_precision = any_precision || (t.is_object() && t.contains("precision"));
    any_sens = any_sens || num(t, "sensitivity_kl").has_value();
  }
  if (!any_precision)
    o << "<p class=\"note\">Precision, method, bits per weight and errors per tensor are " << kNotIn << " (schema <code>"
      << esc(schema_of(r)) << "</code>); the artifact's metadata string is shown instead.</p>\n";
  o << "<p>Relative weight error <i>rel.err</i> = ‖W − Ŵ‖ / ‖W‖ and output error <i>out.err</i> (relative error of the "
       "layer's output on the calibration inputs) are measured by calibrated recipes; RTN compiles record none."
    << (any_sens ? " <i>sens.KL</i>: the measured sensitivity (KL, nats) the mixed-precision allocation used." : "") << "</p>\n";
  o << "<table class=\"wide\"><tr><th>name</th><th>shape</th><th>storage</th>";
  if (any_precision) o << "<th>precision</th><th>method</th>";
  else o << "<th>detail</th>";
  o << "<th class=\"n\">bits/w</th><th class=\"n\">bytes</th><th class=\"n\">rel.err</th><th class=\"n\">out.err</th>"
    << (any_sens ? "<th class=\"n\">sens.KL</th>" : "") << "</tr>\n";
  double total = 0;
  for (const J& t : *ts) {
    if (!t.is_object()) continue;
    const auto b = num(t, "bytes");
    total += b.value_or(0);
    o << "<tr><td class=\"name\">" << esc(str_or(t, "name", "?")) << "</td><td class=\"n\">" << shape_text(t) << "</td><td>"
      << esc(str_or(t, "storage", "")) << "</td>";
    if (any_precision) {
      o << "<td>" << (t.contains("precision") ? (get(t, "precision") ? cell(t, "precision") : "<span class=\"na\">kept</span>") : kDash)
        << "</td><td>" << cell(t, "method") << "</td>";
    } else {
      o << "<td>" << esc(str_or(t, "detail", "")) << "</td>";
    }
    auto f = [&](const char* k, const char* fmt) {
      auto v = num(t, k);
      return v ? strf(fmt, *v) : kDash;
    };
    o << "<td class=\"n\">" << f("bits_per_weight", "%.3f") << "</td><td class=\"n\">" << (b ? grouped(*b) : kDash)
      << "</td><td class=\"n\">" << f("rel_err", "%.4f") << "</td><td class=\"n\">" << f("out_err", "%.4f") << "</td>"
      << (any_sens ? "<td class=\"n\">" + f("sensitivity_kl", "%.3g") + "</td>" : "") << "</tr>\n";
  }
  o << "<tr><th colspan=\"" << (any_precision ? 6 : 5) << "\">total (" << ts->size() << " tensors)</th><th class=\"n\">" << grouped(total)
    << "</th><th colspan=\"" << (any_sens ? 3 : 2) << "\"></th></tr>\n";
  o << "</table>\n";
  section_close(o);
}

void layers_section(std::ostringstream& o, const J& r) {
  section_open(o, "layers", "Per-layer error");
  const J* ls = arr(r, "layers");
  if (ls == nullptr || ls->empty()) {
    if (ls == nullptr)
      o << "<p>Per-layer errors are " << kNotIn << (is_old(r) ? " (schema <code>kerf.eval/1</code>: re-run <code>kerf eval --json</code>)" : "")
        << ".</p>\n";
    else
      o << "<p class=\"na\">The report lists no transformer blocks.</p>\n";
    section_close(o);
    return;
  }
  std::vector<std::string> labels;
  std::vector<std::optional<double>> rel, out, bpw;
  bool any_rel = false, any_out = false, any_bpw = false;
  for (const J& l : *ls) {
    auto n = num(l, "layer");
    labels.push_back(n ? strf("%.0f", *n) : "?");
    rel.push_back(num(l, "rel_err_mean"));
    out.push_back(num(l, "out_err_sum"));
    bpw.push_back(num(l, "bpw"));
    any_rel = any_rel || rel.back().has_value();
    any_out = any_out || out.back().has_value();
    any_bpw = any_bpw || bpw.back().has_value();
  }
  if (any_rel)
    o << bar_chart("layers-rel", "Weight error per block: rel_err_mean (weight-count-weighted)", "transformer block",
                   "mean relative weight error", labels, rel, "");
  else
    o << "<p class=\"na\">No weight errors recorded (calibrated recipes measure them; RTN compiles record none).</p>\n";
  if (any_out)
    o << bar_chart("layers-out", "Output error per block: out_err_sum (sum over the block's matrices)", "transformer block",
                   "summed output error", labels, out, "alt");
  else
    o << "<p class=\"na\">No output errors recorded (they are measured on calibration inputs: calibrated recipes only).</p>\n";
  if (any_bpw)
    o << bar_chart("layers-bpw", "Bits per weight per block (the block's quantized matrices)", "transformer block", "bits per weight",
                   labels, bpw, "bpw");
  o << "<table><tr><th class=\"n\">block</th><th class=\"n\">parameters</th><th class=\"n\">bytes</th><th class=\"n\">bits/w</th>"
       "<th class=\"n\">rel_err_mean</th><th class=\"n\">out_err_sum</th></tr>\n";
  for (const J& l : *ls) {
    auto f = [&](const char* k, const char* fmt) {
      auto v = num(l, k);
      return v ? strf(fmt, *v) : kDash;
    };
    o << "<tr><td class=\"n\">" << cell(l, "layer") << "</td><td class=\"n\">" << cell(l, "params") << "</td><td class=\"n\">"
      << cell(l, "bytes") << "</td><td class=\"n\">" << f("bpw", "%.3f") << "</td><td class=\"n\">" << f("rel_err_mean", "%.5f")
      << "</td><td class=\"n\">" << f("out_err_sum", "%.5f") << "</td></tr>\n";
  }
  o << "</table>\n";
  section_close(o);
}

/// What makes two reports' accuracy metrics comparable: the same text and reference (by file name:
/// reports from different directories are fine) and the same stories.
std::string setup_key(const J& c) {
  return basename_of(str_or(c, "text", "")) + "|" + str_or(c, "stories", "") + "|" + basename_of(str_or(c, "reference", ""));
}

std::string curve_label(const J& c) {
  std::string rec = str_or(c, "recipe", "");
  if (rec.empty()) rec = basename_of(str_or(c, "artifact", "?"));
  return rec;
}

void curve_section(std::ostringstream& o, const J& r, const std::vector<J>& curve) {
  section_open(o, "curve", "Bits per weight → perplexity");
  std::vector<CurvePoint> pts;
  std::vector<const J*> used;
  for (const J& c : curve) {
    auto b = num(c, "bpw");
    auto p = num(c, "ppl");
    if (!b || !p) continue;
    CurvePoint pt;
    pt.bpw = *b, pt.ppl = *p, pt.label = curve_label(c);
    pt.current = str(c, "artifact") == str(r, "artifact") && num(c, "bpw") == num(r, "bpw") && num(c, "ppl") == num(r, "ppl");
    pts.push_back(pt);
    used.push_back(&c);
  }
  if (pts.size() < 2) {
    o << "<p>One bit budget only. To plot perplexity against bits per weight, compile the model at several budgets (e.g. "
         "<code>kerf compile MODEL --calib TEXT --bpw 3</code>, <code>--bpw 4</code>, <code>--bpw 5</code>), evaluate each with "
         "<code>kerf eval … --json</code> and pass the reports: <code>kerf report R.json --curve A.json B.json C.json -o "
         "report.html</code>.</p>\n";
    section_close(o);
    return;
  }
  std::optional<double> ref;
  if (has_reference(r)) ref = num(r, "ppl_reference");
  // Reports of different texts / stories / references are not on one curve.
  std::set<std::string> setups;
  for (const J* c : used) setups.insert(setup_key(*c));
  if (setups.size() > 1)
    o << "<p class=\"note\">These reports were measured on different texts, story ranges or references: their perplexities are "
         "not directly comparable.</p>\n";
  o << curve_chart(pts, ref);
  std::vector<size_t> order(used.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return pts[a].bpw < pts[b].bpw; });
  o << "<table class=\"wide\"><tr><th>recipe</th><th>artifact</th><th class=\"n\">bits/w</th><th class=\"n\">bytes</th>"
       "<th class=\"n\">perplexity</th><th class=\"n\">vs FP</th><th class=\"n\">KL</th><th class=\"n\">top-1</th></tr>\n";
  for (size_t i : order) {
    const J& c = *used[i];
    o << "<tr" << (pts[i].current ? " class=\"current\"" : "") << "><td><code>" << esc(pts[i].label) << "</code>"
      << (pts[i].current ? " (this report)" : "") << "</td><td class=\"name\">" << esc(basename_of(str_or(c, "artifact", "?")))
      << "</td><td class=\"n\">" << strf("%.3f", pts[i].bpw) << "</td><td class=\"n\">" << cell(c, "bytes") << "</td><td class=\"n\">"
      << strf("%.4f", pts[i].ppl) << "</td><td class=\"n\">"
      << (has_reference(c) ? pct(pts[i].ppl / *num(c, "ppl_reference") - 1.0) : kDash) << "</td><td class=\"n\">"
      << (has_reference(c) && num(c, "kl") ? strf("%.5f", *num(c, "kl")) : kDash) << "</td><td class=\"n\">"
      << (has_reference(c) && num(c, "top1") ? strf("%.4f", *num(c, "top1")) : kDash) << "</td></tr>\n";
  }
  o << "</table>\n";
  section_close(o);
}

void stages_section(std::ostringstream& o, const J& r) {
  section_open(o, "stages", "Compression stages");
  const J* st = arr(r, "stages");
  if (st == nullptr || st->empty()) {
    o << "<p>No pruning: the artifact was quantized directly from the source model (no structured pruning or distillation "
         "stages).</p>\n";
    section_close(o);
    return;
  }
  if (auto p = str(r, "prune")) o << "<p>" << esc(*p) << "</p>\n";
  const auto ref = num(r, "ppl_reference");
  o << "<table class=\"wide\"><tr><th>stage</th><th class=\"n\">perplexity</th><th class=\"n\">vs FP</th><th class=\"n\">KL</th>"
       "<th class=\"n\">top-1</th><th class=\"n\">parameters</th><th class=\"n\">decode MFLOP/token</th>"
       "<th class=\"n\">prefill MFLOP/token</th><th class=\"n\">bytes</th></tr>\n";
  for (const J& s : *st) {
    const J* m = get(s, "measured");
    const bool measured = m == nullptr || !m->is_boolean() || m->get<bool>();
    o << "<tr><td>" << esc(str_or(s, "stage", "?")) << "</td>";
    if (measured && num(s, "ppl")) {
      const double p = *num(s, "ppl");
      o << "<td class=\"n\">" << strf("%.4f", p) << "</td><td class=\"n\">" << (ref && *ref > 0 ? pct(p / *ref - 1.0) : kDash)
        << "</td><td class=\"n\">" << (num(s, "kl") ? strf("%.5f", *num(s, "kl")) : kDash) << "</td><td class=\"n\">"
        << (num(s, "top1") ? strf("%.4f", *num(s, "top1")) : kDash) << "</td>";
    } else {
      o << "<td colspan=\"4\" class=\"na\">not measured" << (str(s, "note") ? ": " + esc(*str(s, "note")) : "") << "</td>";
    }
    auto mf = [&](const char* k) {
      auto v = num(s, k);
      return v ? strf("%.4f", *v / 1e6) : kDash;
    };
    o << "<td class=\"n\">" << cell(s, "params") << "</td><td class=\"n\">" << mf("decode_flops_per_token") << "</td><td class=\"n\">"
      << mf("prefill_flops_per_token") << "</td><td class=\"n\">" << cell(s, "bytes") << "</td></tr>\n";
  }
  o << "</table>\n";
  section_close(o);
}

/// An op's weight tensors, when the report lists them and they differ from its name.
std::string weights_text(const J& op) {
  const J* w = arr(op, "weights");
  if (w == nullptr || w->empty()) return "";
  std::string s;
  for (const J& n : *w)
    if (n.is_string() && n.get<std::string>() != str_or(op, "name", "")) s += (s.empty() ? "" : ", ") + esc(n.get<std::string>());
  return s.empty() ? "" : "<br><span class=\"na\">" + s + "</span>";
}

void placement_section(std::ostringstream& o, const J& r) {
  section_open(o, "placement", "Op placement");
  const J* pl = arr(r, "placement");
  if (pl == nullptr) {
    o << "<p>Per-op placement is " << kNotIn << ".</p>\n";
    section_close(o);
    return;
  }
  if (pl->empty()) o << "<p class=\"na\">No device in this report.</p>\n";
  for (const J& d : *pl) {
    const J* ops = arr(d, "ops");
    const size_t n = ops != nullptr ? ops->size() : 0;
    o << "<h3>device <code>" << esc(str_or(d, "device", "?")) << "</code> — " << n << " op" << (n == 1 ? "" : "s") << "</h3>\n";
    if (ops == nullptr || ops->empty()) {
      o << "<p class=\"na\">No ops.</p>\n";
      continue;
    }
    std::map<std::string, int> by_unit, by_kernel;
    // "npu / cpu" = prefill on the npu, decode on the cpu (format 1.3 placement)
    auto units = [&](const J& op) {
      const std::string d = str_or(op, "unit", "?"), p = str_or(op, "unit_prefill", d);
      return p == d ? d : p + " / " + d;
    };
    for (const J& op : *ops) ++by_unit[units(op)], ++by_kernel[str_or(op, "kernel", "?")];
    o << "<div class=\"chips\">";
    for (const auto& [u, c] : by_unit) o << "<span class=\"chip unit\">" << esc(u) << ": " << c << " op" << (c == 1 ? "" : "s") << "</span>";
    o << "</div><div class=\"chips\">";
    for (const auto& [k, c] : by_kernel) o << "<span class=\"chip\">" << esc(k) << " × " << c << "</span>";
    o << "</div>\n";
    // A reason shared by every op (e.g. "target host has one compute unit (CPU): ...; ") is said once.
    std::string common = str_or((*ops)[0], "reason", "");
    for (const J& op : *ops) {
      const std::string rs = str_or(op, "reason", "");
      size_t k = 0;
      while (k < common.size() && k < rs.size() && common[k] == rs[k]) ++k;
      common.resize(k);
    }
    const size_t cut = common.rfind("; ");
    common = cut == std::string::npos || ops->size() < 2 ? "" : common.substr(0, cut + 2);
    if (!common.empty()) o << "<p>Every op: " << esc(common.substr(0, common.size() - 2)) << ".</p>\n";
    o << "<table class=\"wide\"><tr><th class=\"n\">index</th><th>op</th><th>name</th><th>unit (prefill / decode)</th><th>kernel</th><th>reason</th></tr>\n";
    for (const J& op : *ops)
      o << "<tr><td class=\"n\">" << cell(op, "index") << "</td><td><code>" << esc(str_or(op, "op", "?")) << "</code></td><td class=\"name\">"
        << esc(str_or(op, "name", "")) << weights_text(op) << "</td><td>" << esc(units(op)) << "</td><td>" << esc(str_or(op, "kernel", ""))
        << "</td><td>" << esc(str_or(op, "reason", "").substr(common.size())) << "</td></tr>\n";
    o << "</table>\n";
  }
  section_close(o);
}

/// +1: larger is better, -1: smaller is better, 0: neither.
struct DiffMetric {
  const char* key;
  const char* label;
  int better;
};

void baseline_section(std::ostringstream& o, const J& r, const J* baseline) {
  section_open(o, "baseline", "Diff against the baseline");
  const J* base = baseline;
  std::string source;
  if (base == nullptr)
    if (const J* ver = obj(r, "verification"))
      if (const J* b = obj(*ver, "baseline")) base = b, source = str_or(*b, "file", "");
  if (base == nullptr) {
    o << "<p>No baseline given. <code>kerf report R.json --baseline OLD.json -o report.html</code> (or <code>kerf verify … "
         "--baseline OLD.json</code>) compares with an earlier report and highlights regressions.</p>\n";
    section_close(o);
    return;
  }
  o << "<p>Baseline: ";
  if (!source.empty()) o << "<code>" << esc(source) << "</code> (from the verification)";
  else
    o << "artifact <code>" << esc(str_or(*base, "artifact", "?")) << "</code>, recipe <code>" << esc(str_or(*base, "recipe", "?"))
      << "</code>" << (obj(*base, "tool") ? ", " + esc(str_or(*obj(*base, "tool"), "name", "kerf")) + " " +
                                                  esc(str_or(*obj(*base, "tool"), "version", "?")) + " commit <code>" +
                                                  esc(str_or(*obj(*base, "tool"), "commit", "?")) + "</code>"
                                            : "");
  o << ". Regressions (worse than the baseline) are highlighted.</p>\n";
  if (str(*base, "stories") && str(r, "stories") && setup_key(*base) != setup_key(r)) {
    o << "<p class=\"note\">The baseline was measured on <code>" << esc(basename_of(str_or(*base, "text", "?"))) << "</code> stories "
      << esc(str_or(*base, "stories", "?")) << ", this report on <code>" << esc(basename_of(str_or(r, "text", "?"))) << "</code> stories "
      << esc(str_or(r, "stories", "?")) << " (references <code>" << esc(basename_of(str_or(*base, "reference", "?"))) << "</code>, <code>"
      << esc(basename_of(str_or(r, "reference", "?"))) << "</code>): the accuracy metrics are not directly comparable.</p>\n";
  }
  static const DiffMetric kMetrics[] = {
      {"ppl", "perplexity", -1},          {"ppl_reference", "perplexity of the FP reference", 0},
      {"nll", "mean NLL (nats/token)", -1}, {"kl", "KL(reference ‖ artifact)", -1},
      {"top1", "top-1 agreement", +1},    {"bpw", "bits per weight", -1},
      {"bytes", "bytes", -1},             {"predicted_tokens", "predicted tokens", 0},
  };
  struct Row {
    std::string label;
    std::optional<double> a, b;
    int better;
    bool integer;
  };
  std::vector<Row> rows;
  for (const auto& m : kMetrics) {
    auto a = num(*base, m.key), b = num(r, m.key);
    if (!a && !b) continue;
    if ((m.better != 0 || std::string(m.key) == "ppl_reference") && std::string(m.key) != "bpw" && std::string(m.key) != "bytes" &&
        std::string(m.key) != "ppl" && std::string(m.key) != "nll" && !has_reference(r) && !has_reference(*base))
      continue;  // KL / top-1 without a reference are zeros, not measurements
    rows.push_back({m.label, a, b, m.better, std::string(m.key) == "bytes" || std::string(m.key) == "predicted_tokens"});
  }
  const J* sa = obj(*base, "speed");
  const J* sb = obj(r, "speed");
  if (sa != nullptr || sb != nullptr)
    for (const char* k : {"prefill_tps", "decode_tps"})
      rows.push_back({std::string(k) == "prefill_tps" ? "prefill tokens/s" : "decode tokens/s", sa ? rate(*sa, k) : std::nullopt,
                      sb ? rate(*sb, k) : std::nullopt, +1, false});
  o << "<table><tr><th>metric</th><th class=\"n\">baseline</th><th class=\"n\">this</th><th class=\"n\">delta</th>"
       "<th class=\"n\">relative</th><th>verdict</th></tr>\n";
  int regressions = 0;
  for (const auto& row : rows) {
    auto v = [&](const std::optional<double>& x) { return x ? (row.integer ? grouped(*x) : sig(*x)) : kNotIn; };
    std::string cls, verdict = "—", delta = kDash, rel = kDash;
    if (row.a && row.b) {
      const double d = *row.b - *row.a;
      delta = row.integer ? (d >= 0 ? "+" : "") + grouped(d) : strf("%+.4g", d);
      if (*row.a != 0) rel = pct(d / std::fabs(*row.a));
      const double tol = 1e-9 * std::max(std::fabs(*row.a), std::fabs(*row.b));
      if (row.better != 0 && std::fabs(d) > tol) {
        const bool worse = (row.better > 0) == (d < 0);
        cls = worse ? "regress" : "improve";
        verdict = worse ? "worse" : "better";
        regressions += worse;
      } else if (row.better != 0) {
        verdict = "same";
      }
    }
    o << "<tr" << (cls.empty() ? "" : " class=\"" + cls + "\"") << "><td>" << row.label << "</td><td class=\"n\">" << v(row.a)
      << "</td><td class=\"n\">" << v(row.b) << "</td><td class=\"n\">" << delta << "</td><td class=\"n\">" << rel
      << "</td><td class=\"verdict\">" << verdict << "</td></tr>\n";
  }
  o << "</table>\n<p>" << (regressions == 0 ? "No metric is worse than in the baseline."
                                             : std::to_string(regressions) + " metric" + (regressions == 1 ? " is" : "s are") +
                                                   " worse than in the baseline.")
    << "</p>\n";

  // Per-tensor storage changes: a fallback to another precision shows up here.
  const J* ta = arr(*base, "tensors");
  const J* tb = arr(r, "tensors");
  if (ta != nullptr && tb != nullptr) {
    auto what = [](const J& t) {
      std::string s = str_or(t, "storage", "?");
      if (t.contains("precision")) s += " [" + str(t, "precision").value_or("kept") + "]";
      return s;
    };
    std::map<std::string, std::string> a, b;
    std::vector<std::string> names;
    for (const J& t : *ta) a[str_or(t, "name", "?")] = what(t);
    for (const J& t : *tb) {
      b[str_or(t, "name", "?")] = what(t);
      names.push_back(str_or(t, "name", "?"));
    }
    for (const auto& [n, w] : a)
      if (!b.count(n)) names.push_back(n);
    std::vector<std::string> changed;
    for (const auto& n : names)
      if (!a.count(n) || !b.count(n) || a[n] != b[n]) changed.push_back(n);
    if (changed.empty()) {
      o << "<p>All " << b.size() << " tensors have the same storage as in the baseline.</p>\n";
    } else {
      o << "<h3>Tensors whose storage changed (" << changed.size() << " of " << names.size() << ")</h3>\n";
      o << "<table class=\"wide\"><tr><th>tensor</th><th>baseline</th><th>this</th></tr>\n";
      for (const auto& n : changed)
        o << "<tr><td class=\"name\">" << esc(n) << "</td><td>" << (a.count(n) ? esc(a[n]) : kDash) << "</td><td>"
          << (b.count(n) ? esc(b[n]) : kDash) << "</td></tr>\n";
      o << "</table>\n";
    }
  }
  section_close(o);
}

}  // namespace

std::string render_report_html(const nlohmann::ordered_json& report, const nlohmann::ordered_json* baseline,
                               const std::vector<nlohmann::ordered_json>& curve) {
  const J& r = report;
  std::ostringstream o;
  const std::string artifact = str_or(r, "artifact", "?");
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
       "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n"
       "<title>kerf report: "
    << esc(basename_of(artifact)) << "</title>\n<style>" << kCss << "</style>\n</head>\n<body>\n";
  o << "<header><h1>kerf report: " << esc(basename_of(artifact)) << "</h1><p class=\"sub\">";
  if (const J* ver = obj(r, "verification")) {
    const J* p = get(*ver, "passed");
    const bool passed = p != nullptr && p->is_boolean() ? p->get<bool>() : failed_checks(*ver).empty();
    o << "verification " << (passed ? "PASS" : "FAIL") << " · ";
  }
  if (auto t = str(r, "target")) o << "target <code>" << esc(*t) << "</code> · ";
  if (auto t = str(r, "recipe")) o << "recipe <code>" << esc(*t) << "</code> · ";
  o << "schema <code>" << esc(schema_of(r)) << "</code></p></header>\n";
  o << "<nav><a href=\"#summary\">summary</a><a href=\"#verification\">verification</a><a href=\"#tensors\">tensors</a>"
       "<a href=\"#layers\">layers</a><a href=\"#curve\">bpw curve</a><a href=\"#stages\">stages</a>"
       "<a href=\"#placement\">placement</a><a href=\"#baseline\">baseline</a></nav>\n";
  summary_section(o, r);
  verification_section(o, r);
  tensors_section(o, r);
  layers_section(o, r);
  curve_section(o, r, curve);
  stages_section(o, r);
  placement_section(o, r);
  baseline_section(o, r, baseline);
  o << "<footer>Generated by <code>kerf report</code> from <code>" << esc(schema_of(r)) << "</code>";
  if (const J* tool = obj(r, "tool"))
    o << " (" << esc(str_or(*tool, "name", "kerf")) << " " << esc(str_or(*tool, "version", "?")) << ", commit <code>"
      << esc(str_or(*tool, "commit", "unknown")) << "</code>)";
  o << ". Metrics: shared/EVAL.md protocol; self-contained page (no scripts, no network).</footer>\n</body>\n</html>\n";
  return o.str();
}

// ------------------------------------------------------------------------------ files

Status check_report(const nlohmann::ordered_json& j, const std::string& label) {
  if (!j.is_object()) return BadInput(label + ": not a kerf report: the top level is " + json_type_name(j) + ", not an object");
  const J* s = get(j, "schema");
  if (s == nullptr) return BadInput(label + ": not a kerf report: no \"schema\" key (expected \"" + kReportSchema + "\")");
  if (!s->is_string()) return BadInput(label + ": \"schema\" is " + json_type_name(*s) + ", not a string");
  const std::string schema = s->get<std::string>();
  if (schema != kReportSchema && schema != kEvalReportSchema)
    return BadInput(label + ": schema \"" + schema + "\" is not supported (expected \"" + kReportSchema + "\" or the older \"" +
                    kEvalReportSchema + "\")");
  auto want = [&](const char* key, bool (J::*is)() const noexcept, const char* what) -> Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null() || ((*it).*is)()) return Status::Ok();
    return BadInput(label + ": \"" + key + "\" is " + json_type_name(*it) + ", expected " + what);
  };
  for (const char* k : {"ppl", "ppl_reference", "nll", "nll_reference", "kl", "top1", "bpw", "bytes", "n_stories", "predicted_tokens"})
    KERF_RETURN_IF_ERROR(want(k, &J::is_number, "a number"));
  for (const char* k : {"artifact", "reference", "text", "stories", "recipe", "target"}) KERF_RETURN_IF_ERROR(want(k, &J::is_string, "a string"));
  for (const char* k : {"tensors", "layers", "stages", "placement"}) KERF_RETURN_IF_ERROR(want(k, &J::is_array, "an array"));
  for (const char* k : {"tool", "timing", "speed", "verification"}) KERF_RETURN_IF_ERROR(want(k, &J::is_object, "an object"));
  for (const char* k : {"tensors", "layers", "stages", "placement"})
    if (const J* a = arr(j, k))
      for (size_t i = 0; i < a->size(); ++i)
        if (!(*a)[i].is_object())
          return BadInput(label + ": \"" + k + "\"[" + std::to_string(i) + "] is " + json_type_name((*a)[i]) + ", expected an object");
  if (const J* v = obj(j, "verification"))
    if (const J* c = get(*v, "checks"); c != nullptr && !c->is_array())
      return BadInput(label + ": \"verification.checks\" is " + json_type_name(*c) + ", expected an array");
  return Status::Ok();
}

Result<nlohmann::ordered_json> read_report(const std::string& path) {
  KERF_ASSIGN_OR_RETURN(J j, read_json_file(path, {kReportSchema, kEvalReportSchema}));
  KERF_RETURN_IF_ERROR(check_report(j, path));
  return j;
}

Status write_report_html(const ReportOptions& opt) {
  if (opt.report_path.empty()) return InvalidArgument("kerf report: no report given");
  if (opt.output_path.empty()) return InvalidArgument("kerf report: no output (-o OUT.html) given");
  auto rep = read_report(opt.report_path);
  if (!rep.ok()) return rep.status();
  std::optional<J> base;
  if (!opt.baseline_path.empty()) {
    auto b = read_report(opt.baseline_path);
    if (!b.ok()) return b.status().with_context("--baseline");
    base = std::move(*b);
  }
  // The curve: this report plus the --curve reports, each file once.
  std::vector<J> curve;
  if (!opt.curve_paths.empty()) {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::set<std::string> seen = {fs::weakly_canonical(opt.report_path, ec).string()};
    curve.push_back(*rep);
    for (const auto& p : opt.curve_paths) {
      const std::string key = fs::weakly_canonical(p, ec).string();
      auto c = read_report(p);
      if (!c.ok()) return c.status().with_context("--curve");
      if (!seen.insert(key).second) continue;
      curve.push_back(std::move(*c));
    }
  }
  const std::string html = render_report_html(*rep, base ? &*base : nullptr, curve);

  return write_text_atomic(opt.output_path, html);
}

}  // namespace kerf::pipeline
