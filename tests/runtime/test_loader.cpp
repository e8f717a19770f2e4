// The loader rejects bad files with clear messages (formats/SPEC.md section 8).
#include <catch2/catch.hpp>

#include "../../runtime-lite/src/model.h"
#include "test_util.h"

using namespace kt;

namespace {

/// A valid tiny Llama artifact's bytes (f32 weights, no tokenizer needed for the loader).
std::vector<uint8_t> good_bytes() {
  LlamaCfg c;
  c.vocab = 32;
  art::ArtifactBuilder b;
  build_llama(b, c, random_llama(c, 3), fmt::DType::kQ8Sym, 8, false);
  std::string err;
  std::vector<uint8_t> v = b.serialize(&err);
  REQUIRE(err.empty());
  return v;
}

struct Case {
  TempDir dir;
  std::string path = dir.file("model.kerf");
  int open(const std::vector<uint8_t>& bytes, std::string* msg, uint32_t flags = 0) {
    write_file(path, bytes);
    return open_status(path, flags, msg);
  }
};

fmt::TensorEntry entry(const std::vector<uint8_t>& f, uint32_t i) {
  const fmt::FileHeader h = header_of(f);
  fmt::TensorEntry e;
  std::memcpy(&e, f.data() + h.tensors_offset + uint64_t(i) * h.tensor_entry_size, sizeof e);
  return e;
}
void put_entry(std::vector<uint8_t>& f, uint32_t i, const fmt::TensorEntry& e) {
  const fmt::FileHeader h = header_of(f);
  std::memcpy(f.data() + h.tensors_offset + uint64_t(i) * h.tensor_entry_size, &e, sizeof e);
  refix_hashes(f);
}

}  // namespace

TEST_CASE("a valid artifact opens, with and without data verification", "[loader]") {
  Case c;
  std::string msg;
  CHECK(c.open(good_bytes(), &msg) == KERF_OK);
  CHECK(c.open(good_bytes(), &msg, KERF_OPEN_VERIFY_DATA) == KERF_OK);
  CHECK(c.open(good_bytes(), &msg, KERF_OPEN_NO_VERIFY_DATA) == KERF_OK);
  CHECK(msg.empty());
}

TEST_CASE("kerf_model_open_memory: same checks as a file, aligned borrowed buffer", "[loader]") {
  const std::vector<uint8_t> good = good_bytes();
  // A 64-byte aligned copy (std::vector's storage is only 16-byte aligned in general).
  std::vector<uint8_t> store(good.size() + 128);
  uint8_t* p = store.data() + (64 - reinterpret_cast<uintptr_t>(store.data()) % 64) % 64;
  std::memcpy(p, good.data(), good.size());
  kerf_model* m = nullptr;
  char err[512] = {0};
  REQUIRE(kerf_model_open_memory(p, good.size(), 0, "asset.kerf", &m, err, sizeof err) == KERF_OK);
  CHECK(kerf_model_vocab_size(m) == 32);
  kerf_model_close(m);  // must not unmap the caller's buffer
  CHECK(std::memcmp(p, good.data(), good.size()) == 0);

  SECTION("misaligned buffer") {
    CHECK(kerf_model_open_memory(p + 1, good.size() - 1, 0, "asset.kerf", &m, err, sizeof err) == KERF_ERR_ARGUMENT);
    CHECK(m == nullptr);
    CHECK_THAT(std::string(err), Catch::Contains("asset.kerf") && Catch::Contains("64-byte aligned"));
  }
  SECTION("truncated buffer: named, not read past its end") {
    CHECK(kerf_model_open_memory(p, good.size() - 4096, 0, nullptr, &m, err, sizeof err) == KERF_ERR_CORRUPT);
    CHECK(m == nullptr);
    CHECK_THAT(std::string(err), Catch::Contains("<memory>"));
  }
  SECTION("flipped payload byte: rejected by default, accepted with KERF_OPEN_NO_VERIFY_DATA") {
    const fmt::FileHeader h = header_of(good);
    const fmt::TensorEntry e = entry(good, 5);
    p[h.data_offset + e.offset + 1] ^= 0x01;
    CHECK(kerf_model_open_memory(p, good.size(), 0, "asset.kerf", &m, err, sizeof err) == KERF_ERR_CORRUPT);
    CHECK_THAT(std::string(err), Catch::Contains("asset.kerf: checksum mismatch in tensor"));
    REQUIRE(kerf_model_open_memory(p, good.size(), KERF_OPEN_NO_VERIFY_DATA, "asset.kerf", &m, err, sizeof err) ==
            KERF_OK);
    kerf_model_close(m);
  }
  SECTION("NULL arguments") {
    CHECK(kerf_model_open_memory(nullptr, 10, 0, nullptr, &m, err, sizeof err) == KERF_ERR_ARGUMENT);
    CHECK(kerf_model_open_memory(p, good.size(), 0, nullptr, nullptr, err, sizeof err) == KERF_ERR_ARGUMENT);
  }
}

TEST_CASE("missing file and non-kerf files", "[loader]") {
  Case c;
  std::string msg;
  CHECK(open_status(c.dir.file("absent.kerf"), 0, &msg) == KERF_ERR_IO);
  CHECK_THAT(msg, Catch::Contains("absent.kerf") && Catch::Contains("cannot open"));
  std::vector<uint8_t> f = good_bytes();
  f[0] = 'X';
  CHECK(c.open(f, &msg) == KERF_ERR_FORMAT);
  CHECK_THAT(msg, Catch::Contains("model.kerf") && Catch::Contains("not a .kerf file") && Catch::Contains("magic"));
  CHECK(c.open({'K', 'E'}, &msg) == KERF_ERR_FORMAT);
  CHECK(c.open({}, &msg) == KERF_ERR_FORMAT);
  CHECK_THAT(msg, Catch::Contains("0 bytes"));
}

TEST_CASE("newer major version is refused, newer minor accepted", "[loader]") {
  Case c;
  std::string msg;
  std::vector<uint8_t> f = good_bytes();
  fmt::FileHeader h = header_of(f);
  h.version_major = 2;
  set_header(f, h);
  CHECK(c.open(f, &msg) == KERF_ERR_FORMAT);
  CHECK_THAT(msg, Catch::Contains("2." + std::to_string(fmt::kVersionMinor)) && Catch::Contains("newer") &&
                      Catch::Contains("major"));
  f = good_bytes();
  h = header_of(f);
  h.version_minor = 7;
  set_header(f, h);
  CHECK(c.open(f, &msg) == KERF_OK);
}

TEST_CASE("truncated file", "[loader]") {
  Case c;
  std::string msg;
  std::vector<uint8_t> f = good_bytes();
  const size_t full = f.size();
  f.resize(full - 100);
  CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
  CHECK_THAT(msg, Catch::Contains("file is " + std::to_string(full - 100) + " bytes but header says " +
                                  std::to_string(full) + " (truncated?)"));
  f.resize(60);  // inside the header
  CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
  CHECK_THAT(msg, Catch::Contains("truncated"));
}

TEST_CASE("flipped bits are caught by the checksums", "[loader]") {
  Case c;
  std::string msg;
  const std::vector<uint8_t> good = good_bytes();
  const fmt::FileHeader h = header_of(good);
  SECTION("header field") {
    std::vector<uint8_t> f = good;
    f[offsetof(fmt::FileHeader, tensor_count)] ^= 0x04;
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("checksum mismatch in header") && Catch::Contains("header says 0x"));
  }
  SECTION("tensor table") {
    std::vector<uint8_t> f = good;
    f[h.tensors_offset + 80 * 3 + 20] ^= 0x10;  // a shape byte of tensor #3
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("checksum mismatch in sections") && Catch::Contains("computed 0x"));
  }
  SECTION("program") {
    std::vector<uint8_t> f = good;
    f[h.program_offset + h.program_size - 3] ^= 0x01;
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("checksum mismatch in sections"));
  }
  SECTION("metadata") {
    std::vector<uint8_t> f = good;
    f[h.meta_offset + 10] ^= 0x01;
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("checksum mismatch in sections"));
  }
  SECTION("tensor data: by default and with KERF_OPEN_VERIFY_DATA, not with KERF_OPEN_NO_VERIFY_DATA") {
    std::vector<uint8_t> f = good;
    const fmt::TensorEntry e = entry(f, 5);
    f[h.data_offset + e.offset + 1] ^= 0x01;
    CHECK(c.open(f, &msg, KERF_OPEN_NO_VERIFY_DATA) == KERF_OK);
    CHECK(c.open(f, &msg, KERF_OPEN_VERIFY_DATA | KERF_OPEN_NO_VERIFY_DATA) == KERF_ERR_CORRUPT);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("checksum mismatch in tensor 'layers.0.attention.wo.weight'") &&
                        Catch::Contains("offset " + std::to_string(e.offset)));
    CHECK(c.open(f, &msg, KERF_OPEN_VERIFY_DATA) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("checksum mismatch in tensor 'layers.0.attention.wo.weight'") &&
                        Catch::Contains("offset " + std::to_string(e.offset)));
  }
}

TEST_CASE("lying offsets and sizes are rejected before use", "[loader]") {
  Case c;
  std::string msg;
  const std::vector<uint8_t> good = good_bytes();
  SECTION("tensor payload past the data section") {
    std::vector<uint8_t> f = good;
    fmt::TensorEntry e = entry(f, 0);
    const fmt::FileHeader h = header_of(f);
    e.offset = (h.data_size / 64 + 10) * 64;
    put_entry(f, 0, e);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("tensor 'tok_embeddings.weight' payload [offset " + std::to_string(e.offset)) &&
                        Catch::Contains("exceeds data section (size " + std::to_string(h.data_size) + ")"));
  }
  SECTION("offset + size overflowing 64 bits") {
    std::vector<uint8_t> f = good;
    fmt::TensorEntry e = entry(f, 1);
    e.offset = UINT64_MAX - 63;
    put_entry(f, 1, e);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("exceeds data section"));
  }
  SECTION("misaligned payload") {
    std::vector<uint8_t> f = good;
    fmt::TensorEntry e = entry(f, 1);
    e.offset += 4;
    put_entry(f, 1, e);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("aligned"));
  }
  SECTION("payload size disagreeing with dtype/shape/group") {
    std::vector<uint8_t> f = good;
    fmt::TensorEntry e = entry(f, 2);
    e.size -= 2;
    put_entry(f, 2, e);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("payload size") && Catch::Contains("expected"));
  }
  SECTION("unknown dtype") {
    std::vector<uint8_t> f = good;
    fmt::TensorEntry e = entry(f, 2);
    e.dtype = 99;
    put_entry(f, 2, e);
    CHECK(c.open(f, &msg) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(msg, Catch::Contains("unknown dtype 99"));
  }
  SECTION("tensor name outside the string pool") {
    std::vector<uint8_t> f = good;
    fmt::TensorEntry e = entry(f, 2);
    e.name_offset = 0xfffffff0u;
    put_entry(f, 2, e);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("string pool"));
  }
  SECTION("section beyond the data offset") {
    std::vector<uint8_t> f = good;
    fmt::FileHeader h = header_of(f);
    h.program_size = h.data_offset;
    set_header(f, h);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("program section"));
  }
  SECTION("huge tensor count") {
    std::vector<uint8_t> f = good;
    fmt::FileHeader h = header_of(f);
    h.tensor_count = 0xffffffffu;
    set_header(f, h);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("tensor table section"));
  }
  SECTION("data offset not page aligned") {
    std::vector<uint8_t> f = good;
    fmt::FileHeader h = header_of(f);
    h.data_offset -= 64;
    h.data_size += 64;
    set_header(f, h);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("multiple of 4096"));
  }
  SECTION("header_size smaller than known") {
    std::vector<uint8_t> f = good;
    fmt::FileHeader h = header_of(f);
    h.header_size = 64;
    std::memcpy(f.data(), &h, sizeof h);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("header_size 64"));
  }
}

TEST_CASE("program errors name the op", "[loader]") {
  Case c;
  std::string msg;
  LlamaCfg cfg;
  cfg.vocab = 32;
  const Weights w = random_llama(cfg, 3);
  SECTION("shape mismatch between a Linear weight and its input") {
    art::ArtifactBuilder b;
    build_llama(b, cfg, w, fmt::DType::kF32, 8, false);
    const uint32_t bad = b.add_tensor(art::TensorRecord::from_f32("odd", {3, 5}, std::vector<float>(15)));
    const uint32_t out = b.add_value({"o", 3});
    b.add_op({fmt::OpCode::kLinear, fmt::Backend::kCpu, "misfit", {2, art::tensor_ref(bad)}, {out}, {}});
    std::string err;
    std::vector<uint8_t> f = b.serialize(&err);
    REQUIRE(err.empty());
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'misfit'") && Catch::Contains("Linear") && Catch::Contains("'odd'"));
  }
  SECTION("value read before it is written") {
    art::ArtifactBuilder b;
    build_llama(b, cfg, w, fmt::DType::kF32, 8, false);
    const uint32_t later = b.add_value({"later", 16});
    const uint32_t out = b.add_value({"o", 16});
    b.add_op({fmt::OpCode::kAdd, fmt::Backend::kCpu, "early", {later, 2}, {out}, {}});
    std::vector<uint8_t> f = b.serialize(nullptr);
    CHECK(c.open(f, &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("'early'") && Catch::Contains("before it is written"));
  }
  SECTION("unknown op code and attribute are unsupported") {
    art::ArtifactBuilder b;
    build_llama(b, cfg, w, fmt::DType::kF32, 8, false);
    std::vector<uint8_t> f = b.serialize(nullptr);
    const fmt::FileHeader h = header_of(f);
    const uint64_t op0 = h.program_offset + sizeof(fmt::ProgramHeader) + b.value_count() * sizeof(fmt::ValueEntry);
    std::vector<uint8_t> g = f;
    const uint32_t code = 77;
    std::memcpy(g.data() + op0, &code, 4);
    refix_hashes(g);
    CHECK(c.open(g, &msg) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(msg, Catch::Contains("op #0 'embed'") && Catch::Contains("unknown op code 77"));
    // op #1 is the first RMSNorm: its eps attribute key sits after the 32-byte entry + 2 inputs + 1 output.
    const uint64_t op1 = op0 + sizeof(fmt::OpEntry) + 3 * 4;
    g = f;
    const uint32_t key = 55;
    std::memcpy(g.data() + op1 + sizeof(fmt::OpEntry) + 3 * 4, &key, 4);
    refix_hashes(g);
    CHECK(c.open(g, &msg) == KERF_ERR_UNSUPPORTED);
    CHECK_THAT(msg, Catch::Contains("attention_norm") && Catch::Contains("unknown attribute key 55"));
  }
  SECTION("GQA heads must divide") {
    art::ArtifactBuilder b;
    LlamaCfg odd = cfg;
    odd.kv_heads = 3;  // 4 % 3 != 0 (and kv width 12)
    build_llama(b, odd, random_llama(odd, 1), fmt::DType::kF32, 8, false);
    CHECK(c.open(b.serialize(nullptr), &msg) == KERF_ERR_CORRUPT);
    CHECK_THAT(msg, Catch::Contains("Attention") && Catch::Contains("n_kv_heads 3"));
  }
}
