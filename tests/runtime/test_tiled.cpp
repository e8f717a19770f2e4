// The tiled weight layout of format 1.2 (formats/SPEC.md section 6.6): pack_tiled / unpack_tiled
// (formats/artifact/pack.h) against an independent packer written from the SPEC text, lossless round
// trips, dequant_row_tiled == the plain layout's dequant_row bit for bit, the SPEC's worked example,
// the loader's checks of tiled tensors, and a tiled artifact run by the executor against the
// normative integer arithmetic of qkernels.h.
#include <catch2/catch.hpp>

#include <functional>

#include "../../runtime-lite/src/kernels.h"
#include "../../runtime-lite/src/qkernels.h"
#include "formats/artifact/pack.h"
#include "test_util.h"

using namespace kt;
using fmt::DType;

namespace {

/// The tiled code u of element (r, c) of a generic tensor (ternary q + 1, binary 1 for +1).
int tiled_u(const GenericQ& q, int64_t r, int64_t c) {
  const int code = q.codes[size_t(r * q.cols + c)];
  return q.dtype == DType::kTernary ? code + 1 : q.dtype == DType::kBinary ? (code > 0) : code;
}

/// An independent tiled packer, element by element from the SPEC 6.6 text (no format.h geometry):
/// tiles of R rows, per group the f16 parameters of the R rows then the group's blocks, R rows x cb
/// bytes each, tiles padded to 64 bytes; padding columns get the code of q = 0. f16 scales only.
std::vector<uint8_t> tiled_ref(const GenericQ& q, uint32_t log2_rows) {
  const int64_t R = int64_t(1) << log2_rows, NT = (q.rows + R - 1) / R, KB = (q.cols + 31) / 32,
                gpb = q.group / 32, ng = q.ng();
  const int w = q.dtype == DType::kTernary ? 2 : q.dtype == DType::kBinary ? 1 : int(q.bits);
  const int64_t cb = 4 * w;  // 32 codes of w bits: 32, 16, 12, 8, 4 bytes
  const int64_t P = 2 * R * (q.asym() ? 2 : 1), GB = P + gpb * R * cb;
  const int64_t tile = (ng * P + KB * R * cb + 63) / 64 * 64;
  const int zero = q.dtype == DType::kQSym ? 1 << (q.bits - 1) : q.dtype == DType::kTernary ? 1 : 0;
  std::vector<uint8_t> out(size_t(NT * tile), 0);
  auto put16 = [&](int64_t at, uint16_t v) {
    out[size_t(at)] = uint8_t(v & 0xff);
    out[size_t(at + 1)] = uint8_t(v >> 8);
  };
  for (int64_t r = 0; r < q.rows; ++r) {
    const int64_t base = r / R * tile, i = r % R;
    for (int64_t j = 0; j < ng; ++j) {
      put16(base + j * GB + 2 * i, q.s[size_t(r * ng + j)]);
      if (q.asym()) put16(base + j * GB + 2 * R + 2 * i, q.m[size_t(r * ng + j)]);
    }
    for (int64_t kb = 0; kb < KB; ++kb) {
      uint8_t* blk = out.data() + base + (kb / gpb) * GB + P + (kb % gpb) * R * cb + i * cb;
      for (int e = 0; e < 32; ++e) {
        const int64_t c = 32 * kb + e;
        const unsigned u = unsigned(c < q.cols ? tiled_u(q, r, c) : zero);
        switch (w) {
          case 8: blk[e] = uint8_t(u); break;
          case 4: blk[e % 16] |= uint8_t(u << (e < 16 ? 0 : 4)); break;
          case 3: case 2:
            blk[e % 8] |= uint8_t((u & 3) << (2 * (e / 8)));
            if (w == 3) blk[8 + e / 8] |= uint8_t(((u >> 2) & 1) << (e % 8));  // u32 LE, bit e
            break;
          default: blk[e / 8] |= uint8_t(u << (e % 8)); break;
        }
      }
    }
  }
  return out;
}

kerf::rt::WeightView view_of(const art::TensorRecord& t) {
  kerf::rt::WeightView w;
  w.dtype = t.dtype;
  w.data = t.payload.data();
  w.rows = t.shape[0];
  w.cols = t.shape[1];
  w.group = t.group_size;
  w.flags = t.flags;
  return w;
}

/// Elements whose dequant_row_tiled bits differ from dequant_row of `plain` (or that wrote past the
/// row); the first one described in *first.
int64_t tiled_mismatches(const art::TensorRecord& tiled, const art::TensorRecord& plain, std::string* first) {
  kerf::rt::TiledView tv;
  if (!kerf::rt::tiled_view(view_of(tiled), &tv)) {
    *first = "tiled_view refused the tensor";
    return 1;
  }
  const int64_t rows = plain.shape[0], cols = plain.shape[1];
  std::vector<float> a(static_cast<size_t>(cols) + 1, 7.f), b(static_cast<size_t>(cols));
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    kerf::rt::dequant_row(view_of(plain), r, b.data());
    kerf::rt::dequant_row_tiled(tv, r, a.data());
    if (bits_of(a[size_t(cols)]) != bits_of(7.f) && bad++ == 0) *first = "wrote past the row";
    for (int64_t c = 0; c < cols; ++c)
      if (bits_of(a[size_t(c)]) != bits_of(b[size_t(c)]) && bad++ == 0)
        *first = "(" + std::to_string(r) + ", " + std::to_string(c) + "): tiled " + std::to_string(a[size_t(c)]) +
                 ", plain " + std::to_string(b[size_t(c)]);
  }
  return bad;
}

struct Kind {
  const char* name;
  DType dtype;     ///< the generic dtype the codes are drawn for
  uint32_t bits;
  DType legacy;    ///< kQ8Sym / kQ4Asym: store the plain tensor in that legacy dtype; else == dtype
};
const Kind kKinds[] = {
    {"qsym2", DType::kQSym, 2, DType::kQSym},       {"qsym3", DType::kQSym, 3, DType::kQSym},
    {"qsym4", DType::kQSym, 4, DType::kQSym},       {"qsym8", DType::kQSym, 8, DType::kQSym},
    {"qasym2", DType::kQAsym, 2, DType::kQAsym},    {"qasym3", DType::kQAsym, 3, DType::kQAsym},
    {"qasym4", DType::kQAsym, 4, DType::kQAsym},    {"qasym8", DType::kQAsym, 8, DType::kQAsym},
    {"ternary", DType::kTernary, 0, DType::kTernary}, {"binary", DType::kBinary, 0, DType::kBinary},
    {"q8_sym", DType::kQSym, 8, DType::kQ8Sym},     {"q4_asym", DType::kQAsym, 4, DType::kQ4Asym},
};

/// The plain record of `q` in `legacy`: q8_sym = qsym8's bytes with codes u - 128 (u ^ 0x80), q4_asym
/// = qasym4/f16's bytes.
art::TensorRecord plain_record(const std::string& name, const GenericQ& q, DType legacy) {
  art::TensorRecord t = generic_record(name, q);
  if (legacy == DType::kQ8Sym)
    for (int64_t k = 0; k < q.rows * q.cols; ++k) t.payload[size_t(k)] ^= 0x80u;
  if (legacy != q.dtype) {
    t.dtype = legacy;
    t.flags = 0;
  }
  return t;
}

/// Program Embedding(table [V, K]) -> Linear(weight [V, K]) -> logits, plus unused `extra` tensors.
art::ArtifactBuilder emb_linear_model(const art::TensorRecord& table, const art::TensorRecord& weight,
                                      const std::vector<art::TensorRecord>& extra = {}) {
  const int64_t V = weight.shape[0], K = weight.shape[1];
  art::ArtifactBuilder b;
  b.add_meta_int(fmt::meta::kVocab, V);
  b.add_meta_int(fmt::meta::kMaxSeq, 16);
  const uint32_t te = b.add_tensor(table), tw = b.add_tensor(weight);
  for (const art::TensorRecord& t : extra) b.add_tensor(t);
  const uint32_t tok = b.add_value({"tokens", 1}), x = b.add_value({"x", uint32_t(K)});
  const uint32_t logits = b.add_value({"logits", uint32_t(V)});
  b.add_op({fmt::OpCode::kEmbedding, fmt::Backend::kCpu, "embed", {tok, art::tensor_ref(te)}, {x}, {}});
  b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "proj", {x, art::tensor_ref(tw)}, {logits}, {}});
  b.set_io(tok, logits);
  return b;
}

art::TensorRecord packed(const art::TensorRecord& plain, uint32_t log2_rows) {
  art::TensorRecord t;
  std::string err;
  const bool ok = art::pack_tiled(plain, log2_rows, &t, &err);
  INFO(err);
  REQUIRE(ok);
  return t;
}

}  // namespace

TEST_CASE("pack_tiled matches the SPEC packer; unpack restores the plain bytes; dequant is bit-exact", "[tiled]") {
  std::mt19937 rng(606);
  const int64_t row_counts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 17};
  int64_t cases = 0;
  for (const Kind& k : kKinds)
    for (int64_t rows : row_counts)
      for (int64_t cols : {1, 5, 31, 32, 33, 64, 100, 172})
        for (uint32_t g : {32u, 64u, 128u})
          for (uint32_t lr : {0u, 2u, 4u}) {
            INFO(k.name << " [" << rows << ", " << cols << "] g" << g << " R" << (1 << lr));
            const GenericQ q = random_generic(rng, k.dtype, k.bits, false, rows, cols, g);
            const art::TensorRecord plain = plain_record("w", q, k.legacy);
            CHECK(art::tiled_problem(plain) == nullptr);
            const art::TensorRecord t = packed(plain, lr);
            CHECK(t.name == "w");
            CHECK(t.dtype == k.dtype);
            CHECK(t.group_size == g);
            CHECK(t.flags == fmt::make_qflags_tiled(k.bits, fmt::ScaleFormat::kF16, lr));
            uint64_t want = 0;
            REQUIRE(fmt::tensor_payload_bytes(t.dtype, 2, t.shape.data(), t.group_size, &want, t.flags));
            CHECK(t.payload.size() == want);
            CHECK(t.payload == tiled_ref(q, lr));
            std::string first;
            const int64_t bad = tiled_mismatches(t, plain, &first);
            INFO("first mismatch " << first);
            CHECK(bad == 0);
            art::TensorRecord back;
            std::string err;
            REQUIRE(art::unpack_tiled(t, &back, &err));
            const art::TensorRecord generic = generic_record("w", q);  // q8_sym / q4_asym come back generic
            CHECK(back.dtype == k.dtype);
            CHECK(back.flags == generic.flags);
            CHECK(back.group_size == g);
            CHECK(back.shape == plain.shape);
            CHECK(back.payload == generic.payload);
            ++cases;
          }
  CHECK(cases == 12 * 10 * 8 * 3 * 3);
}

TEST_CASE("tiled layout: the SPEC 6.6 worked example byte for byte", "[tiled]") {
  // [3, 40] qsym4 g32, R = 2: row 0 codes u_c = c mod 16, scales 0.5 / 0.25; rows 1, 2 random.
  std::mt19937 rng(7);
  GenericQ q = random_generic(rng, DType::kQSym, 4, false, 3, 40, 32);
  for (int64_t c = 0; c < 40; ++c) q.codes[size_t(c)] = int(c % 16);
  q.s[0] = 0x3800;
  q.s[1] = 0x3400;
  const art::TensorRecord t = packed(generic_record("ex", q), 1);
  CHECK(t.flags == 0x01010004u);
  REQUIRE(t.payload.size() == 256);
  const uint8_t* p = t.payload.data();
  CHECK((p[0] == 0x00 && p[1] == 0x38));    // s[0][0]
  CHECK((p[36] == 0x00 && p[37] == 0x34));  // s[0][1]
  CHECK((p[2] == (q.s[2] & 0xff) && p[3] == (q.s[2] >> 8)));        // s[1][0]
  CHECK((p[128] == (q.s[4] & 0xff) && p[129] == (q.s[4] >> 8)));    // s[2][0], tile 1
  CHECK((p[164] == (q.s[5] & 0xff) && p[165] == (q.s[5] >> 8)));    // s[2][1]
  for (int i = 0; i < 16; ++i) CHECK(p[4 + i] == 0x11 * i);         // row 0, block 0
  const uint8_t blk1[16] = {0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
                            0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
  CHECK(std::memcmp(p + 40, blk1, 16) == 0);  // row 0, block 1: columns 32..39, then u = 8 padding
  // row 1, block 0 at 20: byte i = u_i | u_{i+16} << 4
  for (int i = 0; i < 16; ++i) CHECK(p[20 + i] == (q.codes[size_t(40 + i)] | q.codes[size_t(40 + i + 16)] << 4));
  CHECK(p[132] == (q.codes[80] | q.codes[96] << 4));  // row 2, block 0, byte 0
  // zero: tile padding 72..127, padding row 3 (params 130..131, 166..167; codes 148..163, 184..199), 200..255
  for (int at : {72, 100, 127, 130, 131, 148, 163, 166, 167, 184, 199, 200, 255}) CHECK(p[at] == 0);
  kerf::rt::TiledView tv;
  REQUIRE(kerf::rt::tiled_view(view_of(t), &tv));
  CHECK((tv.L.tile_bytes == 128 && tv.L.group_bytes == 36 && tv.L.block_offset(1) == 40));
  float row[40];
  kerf::rt::dequant_row_tiled(tv, 0, row);
  for (int c = 0; c < 40; ++c) CHECK(row[c] == (c < 32 ? 0.5f * float(c % 16 - 8) : 0.25f * float(c - 40)));
}

TEST_CASE("tiled_problem and pack / unpack errors name the tensor and the reason", "[tiled]") {
  std::mt19937 rng(8);
  auto rec = [&](DType dt, uint32_t bits, bool k6, int64_t cols, uint32_t g) {
    return generic_record("t", random_generic(rng, dt, bits, k6, 3, cols, g));
  };
  art::TensorRecord out;
  std::string err;
  SECTION("not packable") {
    const std::pair<art::TensorRecord, const char*> bad[] = {
        {rec(DType::kQSym, 4, true, 64, 32), "k6"},
        {rec(DType::kQAsym, 5, false, 64, 32), "5, 6 and 7"},
        {rec(DType::kQSym, 7, false, 64, 32), "5, 6 and 7"},
        {rec(DType::kQSym, 4, false, 64, 16), "multiple of 32"},
        {rec(DType::kTernary, 0, false, 100, 48), "multiple of 32"},
        {art::TensorRecord::from_f32("t", {2, 32}, std::vector<float>(64, 1.f)), "not a quantized dtype"},
    };
    for (const auto& [t, why] : bad) {
      INFO(why);
      REQUIRE(art::tiled_problem(t) != nullptr);
      CHECK_THAT(art::tiled_problem(t), Catch::Contains(why));
      CHECK_FALSE(art::pack_tiled(t, 2, &out, &err));
      CHECK_THAT(err, Catch::Contains("tensor 't'") && Catch::Contains(why));
    }
    const art::TensorRecord tiled = packed(rec(DType::kQSym, 4, false, 64, 32), 2);
    CHECK_THAT(art::tiled_problem(tiled), Catch::Contains("already"));
  }
  SECTION("bad arguments and payloads") {
    art::TensorRecord t = rec(DType::kQSym, 3, false, 64, 32);
    CHECK_FALSE(art::pack_tiled(t, 5, &out, &err));
    CHECK_THAT(err, Catch::Contains("tensor 't'") && Catch::Contains("0..4"));
    t.payload.pop_back();
    CHECK_FALSE(art::pack_tiled(t, 2, &out, &err));
    CHECK_THAT(err, Catch::Contains("tensor 't'") && Catch::Contains("expected"));
    CHECK_FALSE(art::unpack_tiled(rec(DType::kQSym, 3, false, 64, 32), &out, &err));  // plain
    CHECK_THAT(err, Catch::Contains("tensor 't'") && Catch::Contains("not a tiled tensor"));
    art::TensorRecord tiled = packed(rec(DType::kTernary, 0, false, 40, 32), 0);
    tiled.payload.push_back(0);
    CHECK_FALSE(art::unpack_tiled(tiled, &out, &err));
    CHECK_THAT(err, Catch::Contains("expected"));
    tiled.payload.pop_back();
    tiled.payload[2] = 0x03;  // row 0, column 0: ternary code 3 (never written)
    CHECK_FALSE(art::unpack_tiled(tiled, &out, &err));
    CHECK_THAT(err, Catch::Contains("code 3 at row 0, column 0"));
    CHECK(out.name.empty());  // *out untouched on every error
  }
  SECTION("one group per row: any group size >= cols is stored as a multiple of 32") {
    const GenericQ q = random_generic(rng, DType::kQSym, 8, false, 5, 40, 40);
    const art::TensorRecord q8 = plain_record("emb", q, DType::kQ8Sym);  // per-row q8_sym, g = cols
    CHECK(art::tiled_problem(q8) == nullptr);
    const art::TensorRecord t = packed(q8, 2);
    CHECK(t.group_size == 64);
    GenericQ q64 = q;
    q64.group = 64;  // the same single group per row
    CHECK(t.payload == tiled_ref(q64, 2));
    std::string first;
    const int64_t bad = tiled_mismatches(t, q8, &first);
    INFO(first);
    CHECK(bad == 0);
  }
}

namespace {

std::vector<uint8_t> with_entry(std::vector<uint8_t> f, uint32_t i, const std::function<void(fmt::TensorEntry&)>& edit) {
  const fmt::FileHeader h = header_of(f);
  fmt::TensorEntry e;
  uint8_t* at = f.data() + h.tensors_offset + uint64_t(i) * h.tensor_entry_size;
  std::memcpy(&e, at, sizeof e);
  edit(e);
  std::memcpy(at, &e, sizeof e);
  refix_hashes(f);
  return f;
}

}  // namespace

TEST_CASE("loader: tiled tensors are checked and named in errors", "[tiled][loader]") {
  std::mt19937 rng(9);
  const art::TensorRecord table = art::TensorRecord::from_f32("table", {6, 64}, random_vec(rng, 6 * 64, 1.f));
  const art::TensorRecord w = packed(generic_record("w", random_generic(rng, DType::kQSym, 4, false, 6, 64, 32)), 2);
  std::string err;
  const std::vector<uint8_t> good = emb_linear_model(table, w).serialize(&err);
  REQUIRE(err.empty());
  TempDir d;
  const std::string path = d.file("t.kerf");
  std::string msg;
  kerf_model* m = nullptr;
  write_file(path, good);
  REQUIRE(open_status(path, KERF_OPEN_VERIFY_DATA, &msg, &m) == KERF_OK);
  kerf_tensor_info ti;
  REQUIRE(kerf_model_tensor_info(m, 1, &ti) == KERF_OK);
  CHECK(std::string(ti.precision) == "qsym4/f16 g32 t4");
  CHECK(ti.flags == 0x02010004u);
  CHECK(ti.bytes == w.payload.size());
  kerf_model_close(m);
  auto open = [&](const std::vector<uint8_t>& f) {
    write_file(path, f);
    return open_status(path, 0, &msg);
  };
  auto set_flags = [](uint32_t flags) { return [flags](fmt::TensorEntry& e) { e.flags = flags; }; };
  CHECK(open(with_entry(good, 1, set_flags(0x05010004u))) == KERF_ERR_CORRUPT);  // R = 32
  CHECK_THAT(msg, Catch::Contains("tensor 'w' (#1") && Catch::Contains("0x05010004") && Catch::Contains("tile rows"));
  CHECK(open(with_entry(good, 1, set_flags(0x02010104u))) == KERF_ERR_CORRUPT);  // k6 + tiled
  CHECK_THAT(msg, Catch::Contains("tensor 'w'") && Catch::Contains("needs f16 scales"));
  CHECK(open(with_entry(good, 1, set_flags(0x02010005u))) == KERF_ERR_CORRUPT);  // b = 5 tiled
  CHECK_THAT(msg, Catch::Contains("tensor 'w'") && Catch::Contains("2, 3, 4 or 8"));
  CHECK(open(with_entry(good, 1, set_flags(0x02020004u))) == KERF_ERR_UNSUPPORTED);  // layout 2
  CHECK_THAT(msg, Catch::Contains("tensor 'w'") && Catch::Contains("unknown layout"));
  CHECK(open(with_entry(good, 1, [](fmt::TensorEntry& e) { e.group_size = 16; })) == KERF_ERR_CORRUPT);
  CHECK_THAT(msg, Catch::Contains("tensor 'w'") && Catch::Contains("group_size 16") && Catch::Contains("multiple of 32"));
  CHECK(open(with_entry(good, 1, [](fmt::TensorEntry& e) { e.size -= 64; })) == KERF_ERR_CORRUPT);
  CHECK_THAT(msg, Catch::Contains("'w'") && Catch::Contains("qsym4/f16 g32 t4") && Catch::Contains("expected"));
  CHECK(open(with_entry(good, 1, set_flags(0x03010004u))) == KERF_ERR_CORRUPT);  // R = 8: another size
  CHECK_THAT(msg, Catch::Contains("'w'") && Catch::Contains("qsym4/f16 g32 t8") && Catch::Contains("expected 320"));

  // Only Embedding, Linear and GatedFFN read quantized (tiled) tensors: not an RMSNorm weight.
  art::ArtifactBuilder b;
  b.add_meta_int(fmt::meta::kVocab, 6);
  b.add_meta_int(fmt::meta::kMaxSeq, 4);
  const uint32_t te = b.add_tensor(table), tw = b.add_tensor(w);
  const uint32_t tn = b.add_tensor(packed(generic_record("nw", random_generic(rng, DType::kQSym, 8, false, 1, 64, 32)), 0));
  const uint32_t tok = b.add_value({"tokens", 1}), x = b.add_value({"x", 64}), h = b.add_value({"h", 64});
  const uint32_t logits = b.add_value({"logits", 6});
  b.add_op({fmt::OpCode::kEmbedding, fmt::Backend::kCpu, "embed", {tok, art::tensor_ref(te)}, {x}, {}});
  b.add_op({fmt::OpCode::kRMSNorm, fmt::Backend::kCpu, "norm", {x, art::tensor_ref(tn)}, {h}, {}});
  b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "proj", {h, art::tensor_ref(tw)}, {logits}, {}});
  b.set_io(tok, logits);
  REQUIRE(b.write(path) == "");
  CHECK(open_status(path, 0, &msg) == KERF_ERR_UNSUPPORTED);
  CHECK_THAT(msg, Catch::Contains("'norm' (RMSNorm)") && Catch::Contains("'nw'") && Catch::Contains("qsym8/f16 g32 t1"));
}

namespace {

/// The normative arithmetic of qkernels.h for one output: weight row `wrow` (dequantization
/// parameters and codes through the plain GenericQ) against activation row x[0..K).
float ref_dot(const GenericQ& q, int64_t wrow, const float* x) {
  const int64_t K = q.cols, KB = (K + 31) / 32;
  float acc = 0.f;
  for (int64_t b = 0; b < KB; ++b) {
    float amax = 0.f;
    for (int64_t c = 32 * b; c < std::min<int64_t>(K, 32 * b + 32); ++c) amax = std::max(amax, std::fabs(x[c]));
    const float d = amax / 127.0f, id = d != 0.f ? 1.0f / d : 0.0f;
    int32_t dot = 0, sum = 0;
    for (int64_t c = 32 * b; c < std::min<int64_t>(K, 32 * b + 32); ++c) {
      const float qa = std::min(127.f, std::max(-127.f, std::nearbyint(x[c] * id)));
      dot += tiled_u(q, wrow, c) * int32_t(qa);
      sum += int32_t(qa);
    }
    const int64_t j = wrow * q.ng() + 32 * b / q.group;
    const float s = fmt::f16_to_f32(q.s[size_t(j)]);
    int32_t iq = dot;
    if (q.dtype == DType::kQSym) iq = dot - (1 << (q.bits - 1)) * sum;
    if (q.dtype == DType::kTernary) iq = dot - sum;
    if (q.dtype == DType::kBinary) iq = 2 * dot - sum;
    acc = std::fmaf(s * d, float(iq), acc);
    if (q.asym()) acc = std::fmaf(fmt::f16_to_f32(q.m[size_t(j)]), d * float(sum), acc);
  }
  return acc;
}

}  // namespace

TEST_CASE("a tiled artifact runs: embedding rows exact, linear logits by the normative integer arithmetic",
          "[tiled][executor]") {
  std::mt19937 rng(10);
  const int64_t V = 37, K = 100;  // partial last block and partial last tile
  for (const Kind& k : kKinds) {
    if (k.legacy != k.dtype) continue;
    INFO(k.name);
    const GenericQ qe = random_generic(rng, DType::kQSym, 8, false, V, K, 64);
    const GenericQ qw = random_generic(rng, k.dtype, k.bits, false, V, K, 32);
    TempDir d;
    const std::string path = d.file("run.kerf");
    REQUIRE(emb_linear_model(packed(generic_record("table", qe), 2), packed(generic_record("w", qw), 2)).write(path) == "");
    kerf_model* m = nullptr;
    std::string msg;
    REQUIRE(open_status(path, KERF_OPEN_VERIFY_DATA, &msg, &m) == KERF_OK);
    kerf_session* s = nullptr;
    REQUIRE(kerf_session_create(m, 16, &s) == KERF_OK);
    const std::vector<int32_t> toks = {3, 0, 36, 17, 17, 5};
    std::vector<float> logits(toks.size() * size_t(V));
    REQUIRE(kerf_session_eval(s, toks.data(), int(toks.size()), logits.data(), 1) == KERF_OK);
    int64_t bad = 0;
    std::vector<float> x(static_cast<size_t>(K));
    for (size_t t = 0; t < toks.size(); ++t) {
      for (int64_t c = 0; c < K; ++c) x[size_t(c)] = generic_ref(qe, toks[t], c);
      for (int64_t r = 0; r < V; ++r) bad += bits_of(logits[t * size_t(V) + size_t(r)]) != bits_of(ref_dot(qw, r, x.data()));
    }
    CHECK(bad == 0);
    kerf_session_free(s);
    kerf_model_close(m);
  }
}
