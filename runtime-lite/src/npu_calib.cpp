// Static-scale calibration of the NPU path (npu.h: npu_calibrate): runs the model on the CPU with
// the reference kernels and a value observer, and turns what it saw into the "npu.act_scales" and
// "npu.op_scales" metadata blobs (docs/npu-arithmetic.md section 2).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "model.h"
#include "npu.h"

namespace kerf::rt {
namespace {

constexpr int kBins = 4096;  ///< histogram of |x| over [0, max |x|] (percentile / MSE clipping)

struct Stat {
  bool seen = false;
  double amax = 0.0;
  uint64_t count = 0;
  std::vector<uint64_t> hist;
};

/// Observations: value v at v; GatedFFN op i's internal k (h1, h3, g) at n_values + 3 i + k.
struct Calib {
  const kerf_model* m = nullptr;
  std::vector<Stat> st;
  bool histogram = false;  ///< second pass
  std::string bad;         ///< first non-finite observation
};

std::string what_of(const kerf_model* m, size_t op, int which) {
  static const char* kInternal[3] = {"h1 = w1 x", "h3 = w3 x", "silu(h1) * h3"};
  const kerf::rt::OpInfo& o = m->ops[op];
  std::string s = "op #" + std::to_string(op) + " '" + std::string(o.name) + "' (" + fmt::op_name(o.op) + ")";
  if (which < 0) return s + " output value '" + std::string(m->values[o.output].name) + "'";
  return s + " internal " + kInternal[which];
}

void observe(void* ctx, size_t op, int which, const float* data, int64_t T, int64_t width) {
  Calib* c = static_cast<Calib*>(ctx);
  if (op >= c->m->ops.size() || which > 2) return;
  const size_t idx = which < 0 ? size_t(c->m->ops[op].output) : c->m->values.size() + 3 * op + size_t(which);
  Stat& s = c->st[idx];
  const int64_t n = T * width;
  s.seen = true;
  if (!c->histogram) {
    double amax = s.amax;
    for (int64_t k = 0; k < n; ++k) {
      const float x = data[k];
      if (!std::isfinite(x)) {
        if (c->bad.empty()) c->bad = what_of(c->m, op, which) + " produced a non-finite number";
        return;
      }
      amax = std::max(amax, double(std::fabs(x)));
    }
    s.amax = amax;
    return;
  }
  if (!(s.amax > 0.0)) return;
  if (s.hist.empty()) s.hist.assign(kBins, 0);
  const double inv = double(kBins) / s.amax;
  for (int64_t k = 0; k < n; ++k) {
    const double b = double(std::fabs(data[k])) * inv;
    s.hist[size_t(std::min(double(kBins - 1), std::floor(b)))] += 1;
  }
  s.count += uint64_t(n);
}

/// The clipping range of one observed quantity.
double choose_clip(const Stat& s, const npu::CalibOptions& o) {
  if (!(s.amax > 0.0)) return 1.0;
  if (o.clip == npu::Clip::kAbsMax || s.count == 0) return s.amax;
  const double w = s.amax / kBins;
  if (o.clip == npu::Clip::kPercentile) {
    const double target = std::min(100.0, std::max(0.0, o.percentile)) / 100.0 * double(s.count);
    double cum = 0.0;
    for (int b = 0; b < kBins; ++b) {
      cum += double(s.hist[size_t(b)]);
      if (cum >= target) return (b + 1) * w;
    }
    return s.amax;
  }
  // MSE: bins at their centres; suffix sums of n, n x, n x^2 give the clipping error in O(1).
  const double qmax = double(npu::qmax_of(o.act_bits));
  std::vector<double> sn(kBins + 1, 0.0), sx(kBins + 1, 0.0), sx2(kBins + 1, 0.0);
  for (int b = kBins - 1; b >= 0; --b) {
    const double n = double(s.hist[size_t(b)]), x = (b + 0.5) * w;
    sn[size_t(b)] = sn[size_t(b) + 1] + n;
    sx[size_t(b)] = sx[size_t(b) + 1] + n * x;
    sx2[size_t(b)] = sx2[size_t(b) + 1] + n * x * x;
  }
  double best = s.amax, best_err = -1.0;
  for (int j = kBins / 32; j <= kBins; ++j) {
    const double clip = j * w, step = clip / qmax;
    const double inside = sn[0] - sn[size_t(j)];
    const double outside = sn[size_t(j)] * clip * clip - 2.0 * clip * sx[size_t(j)] + sx2[size_t(j)];
    const double err = inside * step * step / 12.0 + outside;
    if (best_err < 0.0 || err < best_err) {
      best_err = err;
      best = clip;
    }
  }
  return best;
}

float scale_of(double clip, int bits) {
  const float sc = float(clip / double(npu::qmax_of(bits)));
  return sc >= FLT_MIN ? sc : FLT_MIN;
}

void put_f32(std::vector<uint8_t>* out, float f) {
  uint8_t b[4];
  std::memcpy(b, &f, 4);  // little-endian hosts (x86-64, aarch64): the file order
  out->insert(out->end(), b, b + 4);
}
void put_u32(std::vector<uint8_t>* out, uint32_t v) {
  for (int k = 0; k < 4; ++k) out->push_back(uint8_t(v >> (8 * k)));
}

}  // namespace

int npu_calibrate_opts(const kerf_model* m, const std::vector<std::vector<int32_t>>& seqs,
                       const npu::CalibOptions& opt, std::vector<uint8_t>* act_scales,
                       std::vector<uint8_t>* op_scales, std::string* err) {
  std::string dummy;
  if (!err) err = &dummy;
  if (!m || !act_scales || !op_scales) {
    *err = "npu_calibrate: NULL argument";
    return KERF_ERR_ARGUMENT;
  }
  if (opt.act_bits != 8 && opt.act_bits != 16) {
    *err = "npu_calibrate: act_bits must be 8 or 16, not " + std::to_string(opt.act_bits);
    return KERF_ERR_ARGUMENT;
  }
  size_t total = 0;
  for (size_t q = 0; q < seqs.size(); ++q) {
    for (int32_t t : seqs[q])
      if (t < 0 || t >= m->vocab) {
        *err = "npu_calibrate: sequence " + std::to_string(q) + " has token " + std::to_string(t) + " outside [0, " +
               std::to_string(m->vocab) + ")";
        return KERF_ERR_ARGUMENT;
      }
    total += seqs[q].size();
  }
  if (total == 0) {
    *err = "npu_calibrate: no calibration tokens";
    return KERF_ERR_ARGUMENT;
  }
  kerf_session* s = nullptr;
  char cerr[512] = {0};
  int rc = kerf_session_create_ex(m, 0, KERF_SESSION_CPU_ONLY, &s, cerr, sizeof cerr);
  if (rc != KERF_OK) {
    *err = std::string("npu_calibrate: ") + cerr;
    return rc;
  }
  set_reference_kernels(s, true);
  Calib c;
  c.m = m;
  c.st.resize(m->values.size() + 3 * m->ops.size());
  set_value_observer(s, observe, &c);
  const int passes = opt.clip == npu::Clip::kAbsMax ? 1 : 2;
  for (int pass = 0; pass < passes && rc == KERF_OK; ++pass) {
    c.histogram = pass == 1;
    for (size_t q = 0; q < seqs.size() && rc == KERF_OK; ++q) {
      if (seqs[q].empty()) continue;
      kerf_session_reset(s);
      const int n = int(std::min(seqs[q].size(), size_t(s->n_ctx)));
      rc = kerf_session_eval(s, seqs[q].data(), n, nullptr, 0);
      if (rc != KERF_OK) *err = "npu_calibrate: sequence " + std::to_string(q) + ": " + kerf_session_last_error(s);
      else if (!c.bad.empty()) {
        *err = "npu_calibrate: sequence " + std::to_string(q) + ": " + c.bad;
        rc = KERF_ERR_CORRUPT;
      }
    }
  }
  kerf_session_free(s);
  if (rc != KERF_OK) return rc;

  act_scales->clear();
  for (size_t v = 0; v < m->values.size(); ++v) {
    const Stat& st = c.st[v];
    if (!st.seen) {
      put_f32(act_scales, 0.f);
      put_u32(act_scales, 0);
      continue;
    }
    put_f32(act_scales, scale_of(choose_clip(st, opt), opt.act_bits));
    put_u32(act_scales, uint32_t(opt.act_bits));
  }
  op_scales->clear();
  for (size_t i = 0; i < m->ops.size(); ++i) {
    const bool ffn = m->ops[i].op == fmt::OpCode::kGatedFFN;
    for (int k = 0; k < 3; ++k) {
      const Stat& st = c.st[m->values.size() + 3 * i + size_t(k)];
      put_f32(op_scales, ffn ? scale_of(choose_clip(st, opt), opt.act_bits) : 0.f);
    }
    put_f32(op_scales, ffn ? float(opt.act_bits) : 0.f);
  }
  return KERF_OK;
}

int npu_calibrate(const kerf_model* m, const std::vector<std::vector<int32_t>>& seqs, int act_bits,
                  std::vector<uint8_t>* act_scales, std::vector<uint8_t>* op_scales, std::string* err) {
  npu::CalibOptions o;
  o.act_bits = act_bits;
  return npu_calibrate_opts(m, seqs, o, act_scales, op_scales, err);
}

}  // namespace kerf::rt
