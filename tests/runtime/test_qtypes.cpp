// Format 1.1 generic quantized dtypes (qsym / qasym with 2..8 bits, ternary, binary; f16 or k6 group
// parameters): the writer and loader accept them, and dequant_row / linear / embedding on the loaded
// tensors reproduce the reference values of an independent bit-by-bit packer (test_util.h) exactly.
#include <catch2/catch.hpp>

#include "../../runtime-lite/src/kernels.h"
#include "../../runtime-lite/src/model.h"
#include "test_util.h"

using namespace kt;
using fmt::DType;

namespace {

struct QCfg {
  DType dtype;
  uint32_t bits;
};
/// Every generic dtype / code width.
std::vector<QCfg> all_qcfgs() {
  std::vector<QCfg> v;
  for (uint32_t b = 2; b <= 8; ++b) v.push_back({DType::kQSym, b});
  for (uint32_t b = 2; b <= 8; ++b) v.push_back({DType::kQAsym, b});
  v.push_back({DType::kTernary, 0});
  v.push_back({DType::kBinary, 0});
  return v;
}
std::string qname(const QCfg& q, bool k6) {
  return std::string(fmt::dtype_name(q.dtype)) + (q.bits ? std::to_string(q.bits) : "") + (k6 ? "/k6" : "/f16");
}

/// Program Embedding(f32 table [V, K]) -> Linear(weight [V, K]) -> logits (V = vocab), plus `extra`
/// tensors the program does not use.
art::ArtifactBuilder linear_model(const art::TensorRecord& weight, uint32_t seed,
                                  const std::vector<art::TensorRecord>& extra = {}) {
  const int64_t V = weight.shape[0], K = weight.shape[1];
  art::ArtifactBuilder b;
  b.add_meta_int(fmt::meta::kVocab, V);
  b.add_meta_int(fmt::meta::kMaxSeq, 8);
  std::mt19937 rng(seed);
  const uint32_t table = b.add_tensor(art::TensorRecord::from_f32("table", {V, K}, random_vec(rng, size_t(V * K), 1.f)));
  const uint32_t w = b.add_tensor(weight);
  for (const art::TensorRecord& t : extra) b.add_tensor(t);
  const uint32_t tok = b.add_value({"tokens", 1}), x = b.add_value({"x", uint32_t(K)});
  const uint32_t logits = b.add_value({"logits", uint32_t(V)});
  b.add_op({fmt::OpCode::kEmbedding, fmt::Backend::kCpu, "embed", {tok, art::tensor_ref(table)}, {x}, {}});
  b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "proj", {x, art::tensor_ref(w)}, {logits}, {}});
  b.set_io(tok, logits);
  return b;
}

/// Writes `b` and opens it (with data verification); REQUIREs success.
struct Opened {
  TempDir dir;
  kerf_model* m = nullptr;
  explicit Opened(const art::ArtifactBuilder& b) {
    const std::string path = dir.file("q.kerf");
    REQUIRE(b.write(path) == "");
    std::string msg;
    const int rc = open_status(path, KERF_OPEN_VERIFY_DATA, &msg, &m);
    INFO(msg);
    REQUIRE(rc == KERF_OK);
  }
  ~Opened() { kerf_model_close(m); }
  const kerf::rt::TensorInfo& tensor(const std::string& name) const {
    for (const auto& t : m->tensors)
      if (t.name == name) return t;
    FAIL("no tensor " << name);
    return m->tensors[0];
  }
};

/// Number of elements of `w` whose dequant_row value differs in bits from generic_ref (and the first
/// one in *first).
int64_t mismatches(const kerf::rt::WeightView& w, const GenericQ& q, std::string* first) {
  std::vector<float> row(size_t(q.cols) + 1, 12345.f);
  int64_t bad = 0;
  for (int64_t r = 0; r < q.rows; ++r) {
    kerf::rt::dequant_row(w, r, row.data());
    if (row[size_t(q.cols)] != 12345.f) {  // wrote past the row
      ++bad;
      if (first->empty()) *first = "row " + std::to_string(r) + ": wrote past the end";
    }
    for (int64_t c = 0; c < q.cols; ++c) {
      const float want = generic_ref(q, r, c);
      if (bits_of(row[size_t(c)]) != bits_of(want)) {
        if (bad++ == 0)
          *first = "(" + std::to_string(r) + ", " + std::to_string(c) + "): got " + std::to_string(row[size_t(c)]) +
                   " want " + std::to_string(want);
      }
    }
  }
  return bad;
}

}  // namespace

TEST_CASE("generic dtypes: dequant_row of loaded tensors equals the reference bit for bit", "[qtypes][kernels]") {
  std::mt19937 rng(101);
  for (const QCfg& qc : all_qcfgs())
    for (bool k6 : {false, true}) {
      INFO(qname(qc, k6));
      std::vector<GenericQ> qs;
      std::vector<art::TensorRecord> recs;
      std::vector<std::string> names;
      // rows 1, 3, 9 (so that NG is not a multiple of 8); odd cols; partial last groups; group 1, group > cols
      for (int64_t rows : {1, 3, 9})
        for (int64_t cols : {1, 5, 7, 13, 172})
          for (uint32_t group : {1u, 3u, 8u, 32u, 200u}) {
            qs.push_back(random_generic(rng, qc.dtype, qc.bits, k6, rows, cols, group));
            names.push_back("t" + std::to_string(rows) + "x" + std::to_string(cols) + "g" + std::to_string(group));
            recs.push_back(generic_record(names.back(), qs.back()));
          }
      Opened o(linear_model(art::TensorRecord::from_f32("w", {2, 1}, {1.f, 2.f}), 1, recs));
      for (size_t k = 0; k < qs.size(); ++k) {
        INFO("tensor " << names[k]);
        const kerf::rt::TensorInfo& t = o.tensor(names[k]);
        CHECK(t.dtype == qc.dtype);
        CHECK(t.flags == qs[k].flags());
        CHECK(t.group_size == qs[k].group);
        CHECK(t.size == recs[k].payload.size());
        std::string first;
        const int64_t bad = mismatches(t.view(), qs[k], &first);
        INFO("first mismatch " << first);
        CHECK(bad == 0);
        // The same payload in an exact-size heap buffer: under ASan, any read past the payload fails.
        const std::vector<uint8_t> heap(t.data, t.data + t.size);
        kerf::rt::WeightView hv = t.view();
        hv.data = heap.data();
        CHECK(mismatches(hv, qs[k], &first) == 0);
      }
    }
}

TEST_CASE("SPEC worked examples decode byte for byte", "[qtypes][kernels]") {
  // formats/SPEC.md section 6.5: a 1x7 qsym3 tensor, group 4 (groups {0..3}, {4..6}).
  GenericQ q;
  q.dtype = DType::kQSym;
  q.bits = 3;
  q.rows = 1;
  q.cols = 7;
  q.group = 4;
  q.codes = {5, 0, 7, 3, 4, 1, 6};
  SECTION("qsym3/f16 g4") {
    q.s = {0x3800, 0xB400};  // 0.5, -0.25
    const std::vector<uint8_t> bytes = {0xC5, 0xC7, 0x18, 0x00, 0x38, 0x00, 0xB4};
    CHECK(pack_generic(q) == bytes);
    art::TensorRecord t{"w", DType::kQSym, {1, 7}, 4, bytes};
    t.flags = 0x003;
    Opened o(linear_model(t, 2));
    float row[7];
    kerf::rt::dequant_row(o.tensor("w").view(), 0, row);
    const float want[7] = {0.5f, -2.f, 1.5f, -0.5f, -0.f, 0.75f, -0.5f};  // -0.25 * 0 = -0
    for (int c = 0; c < 7; ++c) CHECK(bits_of(row[c]) == bits_of(want[c]));
  }
  SECTION("qsym3/k6 g4") {
    q.k6 = true;
    q.sc = {2, 1};
    q.d = {0x3400};  // 0.25: s0 = 0.5, s1 = 0.25
    const std::vector<uint8_t> bytes = {0xC5, 0xC7, 0x18, 0x42, 0x00, 0x00, 0x34};
    CHECK(pack_generic(q) == bytes);
    art::TensorRecord t{"w", DType::kQSym, {1, 7}, 4, bytes};
    t.flags = 0x103;
    Opened o(linear_model(t, 2));
    float row[7];
    kerf::rt::dequant_row(o.tensor("w").view(), 0, row);
    const float want[7] = {0.5f, -2.f, 1.5f, -0.5f, 0.f, -0.75f, 0.5f};
    for (int c = 0; c < 7; ++c) CHECK(bits_of(row[c]) == bits_of(want[c]));
  }
  SECTION("qasym3/k6 g4") {
    q.dtype = DType::kQAsym;
    q.k6 = true;
    q.sc = {2, 1};
    q.mc = {3, 0};
    q.d = {0x3400};   // 0.25
    q.dm = {0xB800};  // -0.5: m0 = -1.5, m1 = -0
    const std::vector<uint8_t> bytes = {0xC5, 0xC7, 0x18, 0x42, 0x00, 0x03, 0x00, 0x00, 0x34, 0x00, 0xB8};
    CHECK(pack_generic(q) == bytes);
    art::TensorRecord t{"w", DType::kQAsym, {1, 7}, 4, bytes};
    t.flags = 0x103;
    Opened o(linear_model(t, 2));
    float row[7];
    kerf::rt::dequant_row(o.tensor("w").view(), 0, row);
    const float want[7] = {1.f, -1.5f, 2.f, 0.f, 1.f, 0.25f, 1.5f};
    for (int c = 0; c < 7; ++c) CHECK(bits_of(row[c]) == bits_of(want[c]));
  }
  SECTION("ternary/f16 g5") {
    GenericQ t3;
    t3.dtype = DType::kTernary;
    t3.rows = 1;
    t3.cols = 5;
    t3.group = 5;
    t3.codes = {1, -1, 0, 0, 1};
    t3.s = {0x3E00};  // 1.5
    const std::vector<uint8_t> bytes = {0xC8, 0x00, 0x3E};  // 2 + 0*3 + 1*9 + 1*27 + 2*81 = 200
    CHECK(pack_generic(t3) == bytes);
    art::TensorRecord t{"w", DType::kTernary, {1, 5}, 5, bytes};
    Opened o(linear_model(t, 2));
    float row[5];
    kerf::rt::dequant_row(o.tensor("w").view(), 0, row);
    const float want[5] = {1.5f, -1.5f, 0.f, 0.f, 1.5f};
    for (int c = 0; c < 5; ++c) CHECK(bits_of(row[c]) == bits_of(want[c]));
  }
  SECTION("binary/f16 g8") {
    GenericQ b1;
    b1.dtype = DType::kBinary;
    b1.rows = 1;
    b1.cols = 10;
    b1.group = 8;
    b1.codes = {1, -1, -1, 1, 1, 1, -1, 1, -1, 1};
    b1.s = {0x3C00, 0x4000};  // 1, 2
    const std::vector<uint8_t> bytes = {0xB9, 0x02, 0x00, 0x3C, 0x00, 0x40};
    CHECK(pack_generic(b1) == bytes);
    art::TensorRecord t{"w", DType::kBinary, {1, 10}, 8, bytes};
    Opened o(linear_model(t, 2));
    float row[10];
    kerf::rt::dequant_row(o.tensor("w").view(), 0, row);
    const float want[10] = {1, -1, -1, 1, 1, 1, -1, 1, -2, 2};
    for (int c = 0; c < 10; ++c) CHECK(bits_of(row[c]) == bits_of(want[c]));
  }
}

TEST_CASE("ternary bytes 243..255 decode as byte mod 243", "[qtypes][kernels]") {
  // One row holding every byte value 0..255 (1280 elements), one group, scale 1.
  std::vector<uint8_t> bytes(256);
  for (int i = 0; i < 256; ++i) bytes[size_t(i)] = uint8_t(i);
  bytes.push_back(0x00);
  bytes.push_back(0x3C);  // s = 1.0
  art::TensorRecord t{"w", DType::kTernary, {1, 1280}, 1280, bytes};
  Opened o(linear_model(t, 3));
  std::vector<float> row(1280);
  kerf::rt::dequant_row(o.tensor("w").view(), 0, row.data());
  int bad = 0;
  for (int k = 0; k < 256; ++k) {
    int v = k % 243;
    for (int d = 0; d < 5; ++d, v /= 3)
      if (row[size_t(5 * k + d)] != float(v % 3 - 1)) ++bad;
  }
  CHECK(bad == 0);
  // A partial last byte >= 243 too (cols 7: byte 1 holds elements 5, 6).
  art::TensorRecord p{"p", DType::kTernary, {1, 7}, 4, {0xF2, 0xFF, 0x00, 0x3C, 0x00, 0xC0}};  // s = 1, -2
  Opened o2(linear_model(p, 3));
  float r7[7];
  kerf::rt::dequant_row(o2.tensor("p").view(), 0, r7);
  // 0xF2 = 242 = 2*(1+3+9+27+81): all +1; 0xFF = 255 -> 12 = 0 + 1*3 + 1*9: digits 0, 1 -> q -1, 0
  const float want[7] = {1, 1, 1, 1, -2, 2, -0.f};
  for (int c = 0; c < 7; ++c) CHECK(bits_of(r7[c]) == bits_of(want[c]));
}

TEST_CASE("qasym4 with f16 parameters is byte-identical to q4_asym", "[qtypes][kernels]") {
  std::mt19937 rng(7);
  const std::vector<float> w = random_vec(rng, 5 * 37, 1.f);
  art::TensorRecord q4 = kt::quantize_q4_asym("q4", 5, 37, 8, w);
  art::TensorRecord g4{"g4", DType::kQAsym, {5, 37}, 8, q4.payload};
  g4.flags = 4;
  Opened o(linear_model(q4, 4, {g4}));
  std::vector<float> a(37), b(37);
  for (int64_t r = 0; r < 5; ++r) {
    kerf::rt::dequant_row(o.tensor("q4").view(), r, a.data());
    kerf::rt::dequant_row(o.tensor("g4").view(), r, b.data());
    for (int c = 0; c < 37; ++c) REQUIRE(bits_of(a[size_t(c)]) == bits_of(b[size_t(c)]));
  }
}

TEST_CASE("Linear and Embedding on generic-dtype weights", "[qtypes][kernels][executor]") {
  std::mt19937 rng(21);
  for (const QCfg& qc : all_qcfgs())
    for (bool k6 : {false, true}) {
      INFO(qname(qc, k6));
      const int64_t N = 9, K = 37;
      const GenericQ q = random_generic(rng, qc.dtype, qc.bits, k6, N, K, 8);
      Opened o(linear_model(generic_record("w", q), 5));
      const kerf::rt::WeightView w = o.tensor("w").view();
      // linear(): y[t, n] == x[t] . reference row n
      const int64_t T = 3;
      const std::vector<float> x = random_vec(rng, size_t(T * K), 1.f);
      std::vector<float> y(static_cast<size_t>(T * N)), buf(static_cast<size_t>(K));
      kerf::rt::linear(w, x.data(), T, y.data(), buf.data());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
          double ref = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double p = double(generic_ref(q, n, k)) * x[size_t(t * K + k)];
            ref += p;
            mag += std::fabs(p);
          }
          INFO("t " << t << " n " << n);
          CHECK(std::fabs(y[size_t(t * N + n)] - ref) <= 1e-6 * (1 + mag));
        }
      // embedding(): rows are the reference rows, bit for bit
      const int32_t toks[4] = {8, 0, 3, 8};
      std::vector<float> e(size_t(4 * K));
      kerf::rt::embedding(w, toks, 4, e.data());
      int bad = 0;
      for (int t = 0; t < 4; ++t)
        for (int64_t k = 0; k < K; ++k) bad += bits_of(e[size_t(t * K + k)]) != bits_of(generic_ref(q, toks[t], k));
      CHECK(bad == 0);
      // end to end through the session: logits = table[tok] . W^T
      kerf_session* s = nullptr;
      REQUIRE(kerf_session_create(o.m, 0, &s) == KERF_OK);
      std::vector<float> logits(size_t(2 * N));
      const int32_t in[2] = {4, 1};
      REQUIRE(kerf_session_eval(s, in, 2, logits.data(), 1) == KERF_OK);
      kerf::rt::WeightView table = o.tensor("table").view();
      for (int t = 0; t < 2; ++t)
        for (int64_t n = 0; n < N; ++n) {
          double ref = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double p = double(generic_ref(q, n, k)) * reinterpret_cast<const float*>(table.data)[in[t] * K + k];
            ref += p;
            mag += std::fabs(p);
          }
          CHECK(std::fabs(logits[size_t(t * N + n)] - ref) <= 1e-6 * (1 + mag));
        }
      kerf_session_free(s);
    }
}

TEST_CASE("generic-dtype Embedding table and GatedFFN weights are accepted; RMSNorm weights are not", "[qtypes][loader]") {
  LlamaCfg c;
  c.vocab = 40;
  const Weights w = random_llama(c, 4);
  for (uint32_t flags : {0x103u, 0x006u}) {
    art::ArtifactBuilder b;
    build_llama(b, c, w, DType::kQAsym, 8, false, flags);
    TempDir d;
    REQUIRE(b.write(d.file("m.kerf")) == "");
    std::string msg;
    CHECK(open_status(d.file("m.kerf"), KERF_OPEN_VERIFY_DATA, &msg) == KERF_OK);
    INFO(msg);
  }
  // An RMSNorm weight must be a plain float vector.
  art::ArtifactBuilder b;
  b.add_meta_int(fmt::meta::kVocab, 4);
  b.add_meta_int(fmt::meta::kMaxSeq, 4);
  std::mt19937 rng(1);
  const uint32_t table = b.add_tensor(art::TensorRecord::from_f32("table", {4, 5}, random_vec(rng, 20, 1.f)));
  const uint32_t nw = b.add_tensor(generic_record("norm.w", random_generic(rng, DType::kQSym, 4, false, 1, 5, 5)));
  const uint32_t cls = b.add_tensor(art::TensorRecord::from_f32("cls", {4, 5}, random_vec(rng, 20, 1.f)));
  const uint32_t tok = b.add_value({"tokens", 1}), x = b.add_value({"x", 5}), h = b.add_value({"h", 5});
  const uint32_t logits = b.add_value({"logits", 4});
  b.add_op({fmt::OpCode::kEmbedding, fmt::Backend::kCpu, "embed", {tok, art::tensor_ref(table)}, {x}, {}});
  b.add_op({fmt::OpCode::kRMSNorm, fmt::Backend::kCpu, "norm", {x, art::tensor_ref(nw)}, {h}, {}});
  b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "cls", {h, art::tensor_ref(cls)}, {logits}, {}});
  b.set_io(tok, logits);
  TempDir d;
  REQUIRE(b.write(d.file("n.kerf")) == "");
  std::string msg;
  CHECK(open_status(d.file("n.kerf"), 0, &msg) == KERF_ERR_UNSUPPORTED);
  CHECK_THAT(msg, Catch::Contains("'norm'") && Catch::Contains("qsym"));
}

namespace {

/// A valid artifact holding qsym3/f16 "q3" (#1: the Linear weight, [6, 13] g4), plus "f" (f32),
/// "q4" (q4_asym), "tern" (ternary/k6), not used by the program.
std::vector<uint8_t> flags_artifact() {
  std::mt19937 rng(9);
  const GenericQ q = random_generic(rng, DType::kQSym, 3, false, 6, 13, 4);
  art::ArtifactBuilder b = linear_model(generic_record("q3", q), 6,
                                        {art::TensorRecord::from_f32("f", {2, 2}, {1, 2, 3, 4}),
                                         kt::quantize_q4_asym("q4", 2, 9, 4, random_vec(rng, 18, 1.f)),
                                         generic_record("tern", random_generic(rng, DType::kTernary, 0, true, 3, 11, 4))});
  std::string err;
  std::vector<uint8_t> f = b.serialize(&err);
  REQUIRE(err.empty());
  return f;
}
fmt::TensorEntry entry_of(const std::vector<uint8_t>& f, uint32_t i) {
  const fmt::FileHeader h = header_of(f);
  fmt::TensorEntry e;
  std::memcpy(&e, f.data() + h.tensors_offset + uint64_t(i) * h.tensor_entry_size, sizeof e);
  return e;
}
/// Copy of `f` with tensor i's flags (and optionally size) replaced, hashes re-fixed.
std::vector<uint8_t> with_entry(std::vector<uint8_t> f, uint32_t i, uint32_t flags, int64_t size_delta = 0) {
  const fmt::FileHeader h = header_of(f);
  fmt::TensorEntry e = entry_of(f, i);
  e.flags = flags;
  e.size = uint64_t(int64_t(e.size) + size_delta);
  std::memcpy(f.data() + h.tensors_offset + uint64_t(i) * h.tensor_entry_size, &e, sizeof e);
  refix_hashes(f);
  return f;
}

}  // namespace

TEST_CASE("loader rejects invalid flags and payload sizes with a clear error", "[qtypes][loader]") {
  TempDir d;
  const std::string path = d.file("f.kerf");
  const std::vector<uint8_t> good = flags_artifact();
  // tensors: #0 table, #1 q3, #2 f, #3 q4, #4 tern
  REQUIRE(entry_of(good, 1).flags == 0x003u);
  REQUIRE(entry_of(good, 4).flags == 0x100u);
  std::string msg;
  write_file(path, good);
  REQUIRE(open_status(path, KERF_OPEN_VERIFY_DATA, &msg) == KERF_OK);
  auto open = [&](const std::vector<uint8_t>& f) {
    write_file(path, f);
    return open_status(path, 0, &msg);
  };
  SECTION("qsym with 9 code bits") {
    CHECK(open(with_entry(good, 1, 0x009)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("tensor 'q3' (#1") && Catch::Contains("invalid flags 0x00000009") &&
                        Catch::Contains("qsym") && Catch::Contains("2..8"));
  }
  SECTION("qsym with 1 code bit") {
    CHECK(open(with_entry(good, 1, 0x101)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'q3'") && Catch::Contains("flags 0x00000101") && Catch::Contains("2..8"));
  }
  SECTION("qsym with 0 code bits") {
    CHECK(open(with_entry(good, 1, 0x000)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'q3'") && Catch::Contains("flags 0x00000000"));
  }
  SECTION("unknown scale format 2 is unsupported") {
    CHECK(open(with_entry(good, 1, 0x203)) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(msg, Catch::Contains("'q3'") && Catch::Contains("flags 0x00000203") && Catch::Contains("scale format"));
  }
  SECTION("nonzero upper bits") {
    // Format 1.2: 0x00010003 is the tiled layout (test_tiled.cpp), which needs g % 32 == 0 (q3 has g4).
    CHECK(open(with_entry(good, 1, 0x10003)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'q3'") && Catch::Contains("flags 0x00010003") && Catch::Contains("multiple of 32"));
    CHECK(open(with_entry(good, 1, 0x80000003u)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'q3'") && Catch::Contains("flags 0x80000003") && Catch::Contains("24-31"));
  }
  SECTION("flags on f32 and q4_asym") {
    CHECK(open(with_entry(good, 2, 0x001)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("tensor 'f' (#2") && Catch::Contains("flags 0x00000001") && Catch::Contains("f32") &&
                        Catch::Contains("must be 0"));
    CHECK(open(with_entry(good, 3, 0x104)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("tensor 'q4' (#3") && Catch::Contains("flags 0x00000104") &&
                        Catch::Contains("q4_asym"));
  }
  SECTION("ternary with code bits") {
    CHECK(open(with_entry(good, 4, 0x102)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'tern'") && Catch::Contains("flags 0x00000102") && Catch::Contains("ternary"));
  }
  SECTION("valid flags that imply another payload size") {
    CHECK(open(with_entry(good, 1, 0x004)) == KERF_ERR_CORRUPT);  // 4 bits: more code bytes
    CHECK_THAT(msg, Catch::Contains("'q3' (#1)") && Catch::Contains("payload size") && Catch::Contains("qsym4/f16 g4") &&
                        Catch::Contains("expected"));
    CHECK(open(with_entry(good, 1, 0x103)) == KERF_ERR_CORRUPT);  // k6 parameters: other size
    CHECK_THAT(msg, Catch::Contains("payload size") && Catch::Contains("qsym3/k6 g4"));
    CHECK(open(with_entry(good, 4, 0x000)) == KERF_ERR_CORRUPT);  // ternary with f16 parameters
    CHECK_THAT(msg, Catch::Contains("'tern'") && Catch::Contains("payload size"));
  }
  SECTION("size field off by one") {
    CHECK(open(with_entry(good, 1, 0x003, -1)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'q3'") && Catch::Contains("payload size") && Catch::Contains("expected"));
    CHECK(open(with_entry(good, 4, 0x100, +1)) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'tern'") && Catch::Contains("payload size"));
  }
  SECTION("generic dtype with a non-matrix shape") {
    std::vector<uint8_t> f = good;
    const fmt::FileHeader h = header_of(f);
    fmt::TensorEntry e = entry_of(f, 1);
    e.rank = 1;
    e.shape[1] = 0;
    std::memcpy(f.data() + h.tensors_offset + 1 * h.tensor_entry_size, &e, sizeof e);
    refix_hashes(f);
    CHECK(open(f) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'q3'") && Catch::Contains("invalid qsym rank 1"));
  }
}

TEST_CASE("writer validates flags and generic payload sizes", "[qtypes][writer]") {
  std::mt19937 rng(3);
  const GenericQ q = random_generic(rng, DType::kQAsym, 5, true, 3, 10, 4);
  SECTION("good") {
    const art::ArtifactBuilder b = linear_model(generic_record("w", q), 1);
    CHECK(b.validate() == "");
    std::string err;
    const std::vector<uint8_t> f = b.serialize(&err);
    REQUIRE(err.empty());
    CHECK(entry_of(f, 1).flags == 0x105u);
  }
  SECTION("bad flags name the tensor") {
    art::TensorRecord t = generic_record("w", q);
    t.flags = 0x109;
    CHECK_THAT(linear_model(t, 1).validate(),
               Catch::Contains("'w'") && Catch::Contains("invalid flags 0x00000109") && Catch::Contains("2..8"));
    t.flags = 0x205;
    CHECK_THAT(linear_model(t, 1).validate(), Catch::Contains("'w'") && Catch::Contains("scale format"));
    art::TensorRecord f = art::TensorRecord::from_f32("plain", {2, 2}, {1, 2, 3, 4});
    f.flags = 0x103;
    CHECK_THAT(linear_model(f, 1).validate(), Catch::Contains("'plain'") && Catch::Contains("must be 0"));
  }
  SECTION("payload size") {
    art::TensorRecord t = generic_record("w", q);
    t.payload.pop_back();
    CHECK_THAT(linear_model(t, 1).validate(), Catch::Contains("'w'") && Catch::Contains("qasym5/k6 g4") &&
                                                  Catch::Contains("payload is") && Catch::Contains("expected"));
  }
  SECTION("sizes agree with the independent packer for every dtype") {
    for (const QCfg& qc : all_qcfgs())
      for (bool k6 : {false, true})
        for (int64_t rows : {1, 2, 9})
          for (int64_t cols : {1, 6, 13, 100}) {
            const GenericQ g = random_generic(rng, qc.dtype, qc.bits, k6, rows, cols, 5);
            uint64_t want = 0;
            const int64_t shape[2] = {rows, cols};
            REQUIRE(fmt::tensor_payload_bytes(qc.dtype, 2, shape, 5, &want, g.flags()));
            INFO(qname(qc, k6) << " " << rows << "x" << cols);
            CHECK(want == pack_generic(g).size());
          }
  }
}

TEST_CASE("precision descriptions in the introspection API", "[qtypes][capi]") {
  std::mt19937 rng(5);
  const std::vector<art::TensorRecord> extra = {
      generic_record("a", random_generic(rng, DType::kQAsym, 4, false, 2, 40, 32)),
      generic_record("b", random_generic(rng, DType::kQSym, 3, true, 2, 40, 32)),
      generic_record("c", random_generic(rng, DType::kTernary, 0, true, 2, 70, 64)),
      generic_record("d", random_generic(rng, DType::kBinary, 0, false, 2, 40, 32)),
      kt::quantize_q4_asym("e", 2, 40, 32, random_vec(rng, 80, 1.f)),
  };
  Opened o(linear_model(art::TensorRecord::from_f32("w", {2, 3}, {1, 2, 3, 4, 5, 6}), 1, extra));
  const char* want[7] = {"f32", "f32", "qasym4/f16 g32", "qsym3/k6 g32", "ternary/k6 g64", "binary/f16 g32", "q4_asym g32"};
  const uint32_t want_flags[7] = {0, 0, 0x004, 0x103, 0x100, 0x000, 0};
  REQUIRE(kerf_model_tensor_count(o.m) == 7);
  for (int i = 0; i < 7; ++i) {
    kerf_tensor_info ti;
    REQUIRE(kerf_model_tensor_info(o.m, i, &ti) == KERF_OK);
    CHECK(std::string(ti.precision) == want[i]);
    CHECK(ti.flags == want_flags[i]);
  }
  kerf_tensor_info ti;
  REQUIRE(kerf_model_tensor_info(o.m, 3, &ti) == KERF_OK);
  CHECK(std::string(ti.dtype_name) == "qsym");
  char buf[64];
  CHECK(std::string(fmt::describe_qtype(DType::kQSym, 0x209, 8, buf, sizeof buf)) == "qsym(flags 0x00000209) g8");
  CHECK(std::string(fmt::describe_qtype(DType::kF16, 0, 0, buf, sizeof buf)) == "f16");
  CHECK(std::string(fmt::describe_qtype(DType::kQAsym, 0x108, 128, buf, 6)) == "qasym");  // truncated
}
