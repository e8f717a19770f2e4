// Writer -> loader round trips, determinism and atomic writes.
#include <catch2/catch.hpp>

#include "../../runtime-lite/src/kernels.h"
#include "../../runtime-lite/src/model.h"
#include "test_util.h"

using namespace kt;
using fmt::DType;

namespace {

/// A small artifact with every dtype, all metadata types and a one-op program (Embedding).
art::ArtifactBuilder mixed_builder() {
  art::ArtifactBuilder b;
  b.add_meta_int(fmt::meta::kVocab, 5);
  b.add_meta_int(fmt::meta::kMaxSeq, 8);
  b.add_meta_float(fmt::meta::kBpw, 4.5);
  b.add_meta_string(fmt::meta::kRecipe, "fold,quant{bpw=4.5}");
  b.add_meta_bytes("test.blob", {0, 1, 2, 255});
  std::mt19937 rng(7);
  const std::vector<float> e = random_vec(rng, 5 * 3, 1.f);
  const uint32_t emb = b.add_tensor(art::TensorRecord::from_f32("emb", {5, 3}, e));
  b.add_tensor(art::TensorRecord::from_f16("half", {2, 3}, {1, 2, 3, -4, 0.5f, 65504}));
  art::TensorRecord bf{"bf", DType::kBF16, {2}, 0, {0x80, 0x3f, 0x00, 0xc0}};  // 1.0, -2.0
  b.add_tensor(bf);
  art::TensorRecord i32{"ints", DType::kI32, {3}, 0, std::vector<uint8_t>(12, 7)};
  b.add_tensor(i32);
  art::TensorRecord i64{"longs", DType::kI64, {1, 1, 1, 2}, 0, std::vector<uint8_t>(16, 9)};
  b.add_tensor(i64);
  b.add_tensor(kt::quantize_q8_sym("q8", 3, 7, 4, random_vec(rng, 21, 1.f)));
  b.add_tensor(kt::quantize_q4_asym("q4", 3, 7, 4, random_vec(rng, 21, 1.f)));
  const uint32_t tok = b.add_value({"tokens", 1});
  const uint32_t out = b.add_value({"out", 3});
  const uint32_t logits = b.add_value({"logits", 5});
  b.add_op({fmt::OpCode::kEmbedding, fmt::Backend::kCpu, "embed", {tok, art::tensor_ref(emb)}, {out}, {}});
  b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "cls", {out, art::tensor_ref(emb)}, {logits}, {}});
  b.set_io(tok, logits);
  return b;
}

}  // namespace

TEST_CASE("writer/loader round trip of metadata, tensors of every dtype and the program", "[writer]") {
  TempDir d;
  art::ArtifactBuilder b = mixed_builder();
  const std::string path = d.file("m.kerf");
  REQUIRE(b.write(path) == "");
  const std::vector<uint8_t> bytes = read_file(path);
  const fmt::FileHeader h = header_of(bytes);
  CHECK(h.data_offset % 4096 == 0);
  CHECK(h.file_size == bytes.size());

  std::string msg;
  kerf_model* m = nullptr;
  REQUIRE(open_status(path, KERF_OPEN_VERIFY_DATA, &msg, &m) == KERF_OK);
  INFO(msg);
  CHECK(kerf_model_vocab_size(m) == 5);
  CHECK(kerf_model_max_seq_len(m) == 8);
  double bpw = 0;
  CHECK(kerf_model_meta_float(m, fmt::meta::kBpw, &bpw) == KERF_OK);
  CHECK(bpw == 4.5);
  const char* s = nullptr;
  size_t n = 0;
  REQUIRE(kerf_model_meta_string(m, fmt::meta::kRecipe, &s, &n) == KERF_OK);
  CHECK(std::string(s, n) == "fold,quant{bpw=4.5}");
  REQUIRE(kerf_model_meta_string(m, "test.blob", &s, &n) == KERF_OK);
  CHECK(std::vector<uint8_t>(s, s + n) == std::vector<uint8_t>{0, 1, 2, 255});
  int64_t iv = 0;
  CHECK(kerf_model_meta_int(m, "no.such.key", &iv) != KERF_OK);
  CHECK(kerf_model_meta_int(m, fmt::meta::kBpw, &iv) != KERF_OK);  // wrong type

  REQUIRE(m->tensors.size() == 7);
  for (size_t i = 0; i < 7; ++i) {
    // every tensor: dtype, shape, group and payload bytes survive, and payloads are 64-aligned
    const kerf::rt::TensorInfo& t = m->tensors[i];
    CHECK(t.offset % 64 == 0);
    CHECK(reinterpret_cast<uintptr_t>(t.data) % 64 == 0);
  }
  CHECK(m->tensors[0].name == "emb");
  CHECK(m->tensors[0].dtype == DType::kF32);
  CHECK(m->tensors[1].dtype == DType::kF16);
  CHECK(m->tensors[2].dtype == DType::kBF16);
  CHECK(m->tensors[4].rank == 4);
  CHECK(m->tensors[4].shape[3] == 2);
  CHECK(m->tensors[5].dtype == DType::kQ8Sym);
  CHECK(m->tensors[5].group_size == 4);
  CHECK(m->tensors[6].dtype == DType::kQ4Asym);
  CHECK(m->tensors[6].size == fmt::quant_payload_bytes(DType::kQ4Asym, 3, 7, 4));
  // payload bytes equal what was given
  art::ArtifactBuilder again = mixed_builder();
  std::string err;
  std::vector<uint8_t> ser = again.serialize(&err);
  REQUIRE(err.empty());
  CHECK(ser == bytes);
  // decoded values: f16 and bf16 rows through the kernels' dequantization
  float row[3];
  kerf::rt::dequant_row(m->tensors[1].view(), 1, row);
  CHECK(row[0] == -4.f);
  CHECK(row[1] == 0.5f);
  CHECK(row[2] == 65504.f);
  float bfr[2];
  kerf::rt::dequant_row(m->tensors[2].view(), 0, bfr);
  CHECK(bfr[0] == 1.f);
  CHECK(bfr[1] == -2.f);
  // program
  REQUIRE(m->ops.size() == 2);
  CHECK(m->ops[0].op == fmt::OpCode::kEmbedding);
  CHECK(m->ops[0].name == "embed");
  CHECK(m->ops[1].inputs[1] == art::tensor_ref(0));
  CHECK(m->values.size() == 3);
  CHECK(m->values[1].name == "out");
  CHECK(m->values[1].width == 3);
  CHECK(m->input_value == 0);
  CHECK(m->output_value == 2);
  kerf_model_close(m);
}

TEST_CASE("writer output is deterministic and independent of metadata insertion order", "[writer]") {
  art::ArtifactBuilder a = mixed_builder(), b = mixed_builder();
  std::string e1, e2;
  const std::vector<uint8_t> x = a.serialize(&e1), y = b.serialize(&e2);
  REQUIRE(e1.empty());
  REQUIRE(!x.empty());
  CHECK(x == y);
  art::ArtifactBuilder c = mixed_builder();
  c.add_meta_string("aaa.first", "1");
  art::ArtifactBuilder d = mixed_builder();
  d.add_meta_string("aaa.first", "1");
  CHECK(c.serialize(nullptr) == d.serialize(nullptr));
  CHECK(c.serialize(nullptr) != x);
  // Same two files through write().
  TempDir t;
  REQUIRE(a.write(t.file("1.kerf")) == "");
  REQUIRE(b.write(t.file("2.kerf")) == "");
  CHECK(read_file(t.file("1.kerf")) == read_file(t.file("2.kerf")));
}

TEST_CASE("writer rejects invalid input with a message naming the culprit", "[writer]") {
  SECTION("payload size") {
    art::ArtifactBuilder b = mixed_builder();
    art::TensorRecord t = kt::quantize_q4_asym("bad.q4", 4, 172, 32, std::vector<float>(4 * 172, 1.f));
    t.payload.pop_back();
    b.add_tensor(t);
    const std::string e = b.validate();
    CHECK_THAT(e, Catch::Contains("bad.q4") && Catch::Contains("payload") && Catch::Contains("expected"));
  }
  SECTION("duplicate tensor names") {
    art::ArtifactBuilder b = mixed_builder();
    b.add_tensor(art::TensorRecord::from_f32("emb", {1}, {1.f}));
    CHECK_THAT(b.validate(), Catch::Contains("duplicate") && Catch::Contains("emb"));
  }
  SECTION("tensor ref out of range") {
    art::ArtifactBuilder b = mixed_builder();
    b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "oops", {1, art::tensor_ref(99)}, {2}, {}});
    CHECK_THAT(b.validate(), Catch::Contains("oops") && Catch::Contains("tensor 99"));
  }
  SECTION("value ref out of range") {
    art::ArtifactBuilder b = mixed_builder();
    b.add_op({fmt::OpCode::kAdd, fmt::Backend::kCpu, "add", {1, 42}, {2}, {}});
    CHECK_THAT(b.validate(), Catch::Contains("value 42"));
  }
  SECTION("wrong input kind and arity") {
    art::ArtifactBuilder b = mixed_builder();
    b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "lin", {1, 2}, {2}, {}});
    CHECK_THAT(b.validate(), Catch::Contains("must be a tensor"));
    art::ArtifactBuilder c = mixed_builder();
    c.add_op({fmt::OpCode::kRotary, fmt::Backend::kCpu, "rot", {1, 2}, {2}, {}});
    CHECK_THAT(c.validate(), Catch::Contains("inputs"));
  }
  SECTION("attribute of the wrong kind") {
    art::ArtifactBuilder b = mixed_builder();
    fmt::OpAttr a = art::attr_int(fmt::AttrKey::kEps, 1);
    b.add_op({fmt::OpCode::kRMSNorm, fmt::Backend::kCpu, "norm", {1, art::tensor_ref(0)}, {2}, {a}});
    CHECK_THAT(b.validate(), Catch::Contains("eps"));
  }
  SECTION("bad shape for a quantized type") {
    art::ArtifactBuilder b = mixed_builder();
    b.add_tensor(art::TensorRecord{"q", DType::kQ8Sym, {4}, 32, std::vector<uint8_t>(12)});
    CHECK_THAT(b.validate(), Catch::Contains("'q'") && Catch::Contains("invalid"));
  }
  SECTION("io not set") {
    art::ArtifactBuilder b;
    b.add_value({"x", 1});
    CHECK_THAT(b.validate(), Catch::Contains("set_io"));
  }
}

TEST_CASE("atomic write: an error leaves nothing behind and keeps an existing file", "[writer]") {
  TempDir d;
  const std::string path = d.file("model.kerf");
  art::ArtifactBuilder bad = mixed_builder();
  bad.add_tensor(art::TensorRecord{"broken", DType::kF32, {4}, 0, std::vector<uint8_t>(3)});
  std::string e = bad.write(path);
  CHECK_THAT(e, Catch::Contains("broken"));
  CHECK(d.list().empty());  // no file, no temp file

  write_file(path, {1, 2, 3});
  e = bad.write(path);
  CHECK(!e.empty());
  CHECK(read_file(path) == std::vector<uint8_t>{1, 2, 3});
  CHECK(d.list() == std::vector<std::string>{"model.kerf"});

  // An I/O failure (missing directory) is reported with the path and leaves nothing.
  art::ArtifactBuilder good = mixed_builder();
  e = good.write(d.file("no/such/dir/model.kerf"));
  CHECK_THAT(e, Catch::Contains("no/such/dir/model.kerf"));
  CHECK(d.list() == std::vector<std::string>{"model.kerf"});

  // A good write replaces the file atomically and leaves no temp file.
  REQUIRE(good.write(path) == "");
  CHECK(d.list() == std::vector<std::string>{"model.kerf"});
  std::string msg;
  CHECK(open_status(path, KERF_OPEN_VERIFY_DATA, &msg) == KERF_OK);
}

TEST_CASE("reference quantizers follow the SPEC layouts", "[writer]") {
  // q4: 1 row, 5 cols, group 4 -> groups {0..3}, {4}; codes packed low nibble first.
  art::TensorRecord q4 = kt::quantize_q4_asym("q", 1, 5, 4, {0.f, 1.f, 2.f, 15.f, 3.f});
  REQUIRE(q4.payload.size() == 3 + 4 * 2);
  CHECK((q4.payload[0] & 0xf) == 0);   // 0 -> code 0
  CHECK((q4.payload[0] >> 4) == 1);    // 1 -> code 1 (scale 1, min 0)
  CHECK((q4.payload[1] >> 4) == 15);   // 15 -> code 15
  CHECK((q4.payload[2] & 0xf) == 0);   // single-element group: code 0, min = 3
  CHECK((q4.payload[2] >> 4) == 0);    // unused high nibble is zero
  uint16_t s0, s1, m0, m1;
  std::memcpy(&s0, &q4.payload[3], 2);
  std::memcpy(&s1, &q4.payload[5], 2);
  std::memcpy(&m0, &q4.payload[7], 2);
  std::memcpy(&m1, &q4.payload[9], 2);
  CHECK(fmt::f16_to_f32(s0) == 1.f);
  CHECK(fmt::f16_to_f32(s1) == 0.f);
  CHECK(fmt::f16_to_f32(m0) == 0.f);
  CHECK(fmt::f16_to_f32(m1) == 3.f);
  art::TensorRecord q8 = kt::quantize_q8_sym("q", 1, 3, 2, {-127.f, 63.5f, 2.f});
  REQUIRE(q8.payload.size() == 3 + 2 * 2);
  CHECK(int8_t(q8.payload[0]) == -127);
  CHECK(int8_t(q8.payload[2]) == 127);
}

TEST_CASE("introspection API lists metadata, tensors and ops", "[writer][capi]") {
  TempDir d;
  art::ArtifactBuilder b = mixed_builder();
  REQUIRE(b.write(d.file("m.kerf")) == "");
  std::string msg;
  kerf_model* m = nullptr;
  REQUIRE(open_status(d.file("m.kerf"), 0, &msg, &m) == KERF_OK);
  REQUIRE(kerf_model_meta_count(m) == 5);
  CHECK(std::string(kerf_model_meta_key(m, 0)) == "compile.recipe");  // sorted by key
  CHECK(kerf_model_meta_key(m, 5) == nullptr);
  REQUIRE(kerf_model_tensor_count(m) == 7);
  kerf_tensor_info ti;
  REQUIRE(kerf_model_tensor_info(m, 6, &ti) == KERF_OK);
  CHECK(std::string(ti.name) == "q4");
  CHECK(std::string(ti.dtype_name) == "q4_asym");
  CHECK(ti.rank == 2);
  CHECK(ti.shape[1] == 7);
  CHECK(ti.group_size == 4);
  CHECK(ti.bytes == fmt::quant_payload_bytes(fmt::DType::kQ4Asym, 3, 7, 4));
  CHECK(kerf_model_tensor_info(m, 7, &ti) == KERF_ERR_ARGUMENT);
  REQUIRE(kerf_model_op_count(m) == 2);
  char line[256];
  REQUIRE(kerf_model_op_describe(m, 1, line, sizeof line) == KERF_OK);
  CHECK_THAT(std::string(line), Catch::Contains("logits = Linear(out, @emb)"));
  kerf_model_close(m);
}
