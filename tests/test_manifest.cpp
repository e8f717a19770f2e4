// Package manifests (compiler/pipeline/manifest.h, docs/manifest.md): SHA-256 against known values
// and sha256sum, the manifest written by compile beside the artifact, byte-identical artifacts and
// manifests from identical inputs (RTN and GPTQ with calibration, and what the thread count
// changes), recipe / artifact changes detected, failed compiles leaving nothing, ONNX external data,
// manifest_set_verification, the build's commit id.
#include <catch2/catch.hpp>
#include <onnx/onnx_pb.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compiler/pipeline/build_info.h"
#include "compiler/pipeline/compile.h"
#include "compiler/pipeline/inspect.h"
#include "compiler/pipeline/manifest.h"
#include "support.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using kerf::test::kModel;
using kerf::test::kText;
using kerf::test::read_bytes;
using kerf::test::TempDir;
using kerf::test::write_bytes;
namespace pl = kerf::pipeline;

namespace {

const std::string kRecipeDir = std::string(KERF_SOURCE_DIR) + "/examples/recipes/";

pl::CompileOptions rtn_options(const std::string& out) {
  pl::CompileOptions o;
  o.model_path = kModel;
  o.output_path = out;
  o.threads = 1;
  o.verify_lift = false;  // does not change the output; saves a LibTorch run
  return o;
}

pl::CompileOptions gptq_options(const std::string& out, int threads) {
  pl::CompileOptions o = rtn_options(out);
  o.recipe_path = kRecipeDir + "int4-gptq.yaml";
  o.calib_path = kText;
  o.calib_stories = pl::StoryRange{0, 16};
  o.threads = threads;
  return o;
}

void compile_ok(const pl::CompileOptions& o) {
  auto r = pl::compile(o);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
}

json manifest_of(const std::string& artifact) {
  auto m = pl::read_manifest(pl::manifest_path_for(artifact));
  INFO(m.status().to_string());
  REQUIRE(m.ok());
  return *m;
}

/// sha256sum's answer for a file (an independent implementation), or "" when the tool is missing.
std::string sha256sum_tool(const std::string& path) {
  std::FILE* p = ::popen(("sha256sum '" + path + "' 2>/dev/null").c_str(), "r");
  if (!p) return "";
  char buf[256] = {0};
  const size_t n = std::fread(buf, 1, sizeof buf - 1, p);
  ::pclose(p);
  std::string s(buf, n);
  return s.size() >= 64 ? s.substr(0, 64) : "";
}

}  // namespace

TEST_CASE("manifest: SHA-256 of bytes and of streamed files", "[manifest]") {
  // FIPS 180-2 test vectors.
  CHECK(pl::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(pl::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  TempDir d("manifest_sha");
  // 2.5 MiB + 3 bytes: several 1 MiB read blocks and a partial one.
  std::string big(size_t(5) * 512 * 1024 + 3, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  write_bytes(d.file("big.bin"), big);
  auto h = pl::sha256_file(d.file("big.bin"));
  REQUIRE(h.ok());
  CHECK(h->bytes == big.size());
  CHECK(h->sha256 == pl::sha256_hex(big));
  const std::string tool = sha256sum_tool(d.file("big.bin"));
  if (!tool.empty()) CHECK(h->sha256 == tool);
  auto missing = pl::sha256_file(d.file("nope.bin"));
  CHECK(missing.status().code() == kerf::ErrorCode::kIo);
  CHECK(missing.status().message().find("nope.bin") != std::string::npos);
}

TEST_CASE("manifest: path beside the artifact", "[manifest]") {
  CHECK(pl::manifest_path_for("out/m.kerf") == "out/m.manifest.json");
  CHECK(pl::manifest_path_for("/a/b.c/model") == "/a/b.c/model.manifest.json");
  CHECK(pl::manifest_path_for("m.v2.kerf") == "m.v2.manifest.json");
  CHECK(pl::manifest_path_for("dir/.hidden") == "dir/.hidden.manifest.json");
}

TEST_CASE("manifest: the build's commit id", "[manifest]") {
  // Generated at build time (cmake/kerf_commit.cmake): HEAD of the source tree when this binary was
  // built, "-dirty" with uncommitted changes to tracked files, "unknown" when git cannot tell.
  const std::string c = kerf::kerf_commit();
  CHECK(std::string(kerf::kerf_version()) == "0.1.0");
  std::string head;
  if (std::FILE* p = ::popen(("git -C '" + std::string(KERF_SOURCE_DIR) + "' rev-parse --verify HEAD 2>/dev/null").c_str(), "r")) {
    char buf[128] = {0};
    head.assign(buf, std::fread(buf, 1, sizeof buf - 1, p));
    ::pclose(p);
    while (!head.empty() && (head.back() == '\n' || head.back() == ' ')) head.pop_back();
  }
  if (std::regex_match(head, std::regex("[0-9a-f]{40}"))) {
    INFO("a commit since the last build makes this fail: rebuild");
    CHECK(std::regex_match(c, std::regex("[0-9a-f]{40}(-dirty)?")));
    CHECK(c.substr(0, 40) == head);
  } else {
    CHECK(c == "unknown");
  }
}

TEST_CASE("manifest: RTN compile writes it; two compiles give identical artifacts and manifests", "[manifest]") {
  TempDir a("manifest_rtn_a"), b("manifest_rtn_b");
  pl::CompileOptions oa = rtn_options(a.file("m.kerf"));
  compile_ok(oa);
  pl::CompileOptions ob = rtn_options(b.file("m.kerf"));
  ob.threads = 2;  // RTN runs no LibTorch: the thread count changes nothing
  compile_ok(ob);
  const std::string ma = a.file("m.manifest.json"), mb = b.file("m.manifest.json");
  REQUIRE(fs::exists(ma));
  CHECK(read_bytes(a.file("m.kerf")) == read_bytes(b.file("m.kerf")));
  CHECK(read_bytes(ma) == read_bytes(mb));

  const json m = manifest_of(oa.output_path);
  CHECK(m["schema"] == "kerf.manifest/1");
  CHECK(m["artifact"]["file"] == "m.kerf");
  const std::string art = read_bytes(oa.output_path);
  CHECK(m["artifact"]["bytes"].get<uint64_t>() == art.size());
  CHECK(m["artifact"]["sha256"] == pl::sha256_hex(art));
  CHECK(m["source_model"]["file"] == "stories260K.fp16.onnx");
  CHECK(m["source_model"]["sha256"] == pl::sha256_hex(read_bytes(kModel)));
  CHECK(m["source_model"]["format"] == "onnx");
  CHECK_FALSE(m["source_model"].contains("external_data"));
  CHECK(m["tokenizer"]["file"] == "tok512.bin");
  CHECK(m["tokenizer"]["sha256"] == pl::sha256_hex(read_bytes(kerf::test::kTok)));
  CHECK(m["recipe"]["file"].is_null());
  CHECK(m["recipe"]["args"] == "rtn linear=q4_asym g32 embedding=q8_sym per-row");
  CHECK(m["recipe"]["options"] == "--target host --linear q4_asym --embedding q8_sym --group-size 32");
  CHECK(m["calibration"].is_null());
  CHECK(m["distillation"].is_null());
  CHECK(m["compute"].is_null());
  CHECK(m["tool"]["name"] == "kerf");
  CHECK(m["tool"]["commit"] == kerf::kerf_commit());
  CHECK(m["target"]["profile"] == "host");
  CHECK(m["target"]["layout"] == "tiled4");
  CHECK(m["verification"].is_null());
  // Nothing machine- or run-specific: no absolute path, no build-tree path.
  const std::string text = read_bytes(ma);
  CHECK(text.find(KERF_BINARY_DIR) == std::string::npos);
  CHECK(text.find(KERF_SOURCE_DIR) == std::string::npos);
  CHECK(text.find("\"/") == std::string::npos);
  // Key order is part of the format.
  std::vector<std::string> keys;
  for (auto it = m.begin(); it != m.end(); ++it) keys.push_back(it.key());
  CHECK(keys == std::vector<std::string>{"schema", "artifact", "source_model", "tokenizer", "recipe", "calibration",
                                         "distillation", "tool", "compute", "target", "verification"});

  // kerf inspect prints it and says the artifact matches.
  auto txt = kerf::inspect(oa.output_path, "none", false);
  INFO(txt.status().to_string());
  REQUIRE(txt.ok());
  CHECK(txt->find("manifest " + ma + ": artifact sha256 matches") != std::string::npos);
  CHECK(txt->find("\"schema\": \"kerf.manifest/1\"") != std::string::npos);
}

TEST_CASE("manifest: GPTQ with calibration is byte-identical for a fixed thread count", "[manifest]") {
  // Two threads (the default is all cores, so a multi-threaded LibTorch is the common case).
  TempDir a("manifest_gptq_a"), b("manifest_gptq_b"), c("manifest_gptq_c");
  compile_ok(gptq_options(a.file("m.kerf"), 2));
  compile_ok(gptq_options(b.file("m.kerf"), 2));
  compile_ok(gptq_options(c.file("m.kerf"), 1));
  CHECK(read_bytes(a.file("m.kerf")) == read_bytes(b.file("m.kerf")));
  CHECK(read_bytes(a.file("m.manifest.json")) == read_bytes(b.file("m.manifest.json")));

  json m1 = manifest_of(a.file("m.kerf")), m2 = manifest_of(c.file("m.kerf"));
  CHECK(m1["recipe"]["name"] == "int4-gptq");
  CHECK(m1["recipe"]["file"] == "int4-gptq.yaml");
  CHECK(m1["recipe"]["sha256"] == pl::sha256_hex(read_bytes(kRecipeDir + "int4-gptq.yaml")));
  CHECK(m1["recipe"]["args"] == "int4-gptq");
  CHECK(m1["recipe"]["options"] == "--target host --calib-stories 0:16");
  CHECK(m1["calibration"]["file"] == "tinystories_valid_800.txt");
  CHECK(m1["calibration"]["sha256"] == pl::sha256_hex(read_bytes(kText)));
  CHECK(m1["calibration"]["stories"] == "0:16");
  CHECK(m1["calibration"]["sequences"] == 16);
  CHECK(m1["calibration"]["tokens"] == 5220);  // the 16 stories, tokenized with BOS
  // LibTorch's results depend on the thread count (OpenBLAS splits GEMMs across threads), so it is an
  // input, recorded; everything else about the two packages is the same.
  CHECK(m1["compute"]["threads"] == 2);
  CHECK(m2["compute"]["threads"] == 1);
  CHECK_FALSE(m1["compute"]["blas"].get<std::string>().empty());
  for (json* m : {&m1, &m2}) {
    m->erase("artifact");
    m->erase("compute");
  }
  CHECK(m1 == m2);
}

TEST_CASE("manifest: pruned compiles into two folders are identical; the checkpoint is hashed", "[manifest]") {
  // The checkpoint beside the artifact is recorded relative to it (not by absolute path).
  TempDir a("manifest_prune_a"), b("manifest_prune_b");
  for (const TempDir* d : {&a, &b}) {
    pl::CompileOptions o = rtn_options(d->file("m.kerf"));
    o.recipe_path = kRecipeDir + "int4-rtn.yaml";
    o.keep_ffn = 0.5;
    o.importance = "magnitude";  // needs no calibration text
    compile_ok(o);
  }
  CHECK(read_bytes(a.file("m.kerf")) == read_bytes(b.file("m.kerf")));
  CHECK(read_bytes(a.file("m.kerf.ckpt")) == read_bytes(b.file("m.kerf.ckpt")));
  CHECK(read_bytes(a.file("m.manifest.json")) == read_bytes(b.file("m.manifest.json")));
  const json m = manifest_of(a.file("m.kerf"));
  CHECK(m["distillation"]["checkpoint"]["file"] == "m.kerf.ckpt");
  CHECK(m["distillation"]["checkpoint"]["sha256"] == pl::sha256_hex(read_bytes(a.file("m.kerf.ckpt"))));
  CHECK(m["recipe"]["options"] == "--target host --keep-ffn 0.5 --importance magnitude");
  CHECK(m["compute"].is_null());
}

TEST_CASE("manifest: a changed recipe changes the recipe hash", "[manifest]") {
  TempDir d("manifest_recipe");
  const std::string yaml = read_bytes(kRecipeDir + "int4-rtn.yaml");
  write_bytes(d.file("r1.yaml"), yaml);
  write_bytes(d.file("r2.yaml"), yaml + "# changed\n");
  pl::CompileOptions o1 = rtn_options(d.file("a.kerf"));
  o1.recipe_path = d.file("r1.yaml");
  compile_ok(o1);
  pl::CompileOptions o2 = rtn_options(d.file("b.kerf"));
  o2.recipe_path = d.file("r2.yaml");
  compile_ok(o2);
  const json m1 = manifest_of(o1.output_path), m2 = manifest_of(o2.output_path);
  CHECK(m1["recipe"]["name"] == "int4-rtn");
  CHECK(m1["recipe"]["sha256"] == pl::sha256_hex(yaml));
  CHECK(m2["recipe"]["sha256"] == pl::sha256_hex(yaml + "# changed\n"));
  CHECK(m1["recipe"]["sha256"] != m2["recipe"]["sha256"]);
  CHECK(m1["calibration"].is_null());
  CHECK(m1["compute"].is_null());  // calibration-free: no LibTorch results in the weights
}

TEST_CASE("manifest: inspect detects an altered artifact; malformed manifests are named", "[manifest]") {
  TempDir d("manifest_flip");
  pl::CompileOptions o = rtn_options(d.file("m.kerf"));
  compile_ok(o);
  const std::string original = read_bytes(o.output_path);
  std::string bytes = original;
  const json m = manifest_of(o.output_path);
  auto st = pl::check_artifact_against_manifest(o.output_path, m, d.file("m.manifest.json"));
  CHECK(st.ok());
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x01);
  write_bytes(o.output_path, bytes);
  auto r = kerf::inspect(o.output_path, "none", false);
  CHECK(r.status().code() == kerf::ErrorCode::kBadInput);  // exit 3
  CHECK(r.status().message().find("does not match") != std::string::npos);
  CHECK(r.status().message().find("m.manifest.json") != std::string::npos);

  write_bytes(d.file("m.manifest.json"), "{\"schema\": \"kerf.manifest/1\", ");
  r = kerf::inspect(o.output_path, "none", false);
  CHECK(r.status().code() == kerf::ErrorCode::kBadInput);
  CHECK(r.status().message().find("m.manifest.json: not valid JSON") != std::string::npos);
  // Without a manifest, inspect says so.
  fs::remove(d.file("m.manifest.json"));
  write_bytes(o.output_path, original);
  r = kerf::inspect(o.output_path, "none", false);
  REQUIRE(r.ok());
  CHECK(r->find("manifest: none (no " + d.file("m.manifest.json") + ")") != std::string::npos);
}

TEST_CASE("manifest: a failed compile leaves neither artifact nor manifest", "[manifest]") {
  TempDir d("manifest_fail");
  // The failure comes after the artifact is written: its manifest cannot be renamed into place (an
  // empty directory holds the path). The artifact is removed again, and no manifest file (nor any
  // temporary file) is left.
  pl::CompileOptions o = rtn_options(d.file("m.kerf"));
  fs::create_directories(d.file("m.manifest.json"));
  auto r = pl::compile(o);
  CHECK(r.status().code() == kerf::ErrorCode::kIo);
  CHECK(r.status().message().find("m.manifest.json") != std::string::npos);
  CHECK_FALSE(fs::exists(d.file("m.kerf")));
  CHECK_FALSE(fs::is_regular_file(d.file("m.manifest.json")));
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(d.path)) left.push_back(e.path().filename().string());
  CHECK(left == std::vector<std::string>{"m.manifest.json"});
  fs::remove(d.file("m.manifest.json"));

  // The manifest cannot be written (its path is a directory): the artifact is removed again.
  pl::CompileOptions o2 = rtn_options(d.file("n.kerf"));
  fs::create_directories(d.file("n.manifest.json"));
  fs::create_directories(d.file("n.manifest.json/occupied"));
  r = pl::compile(o2);
  CHECK(r.status().code() == kerf::ErrorCode::kIo);
  CHECK(r.status().message().find("n.manifest.json") != std::string::npos);
  CHECK_FALSE(fs::exists(d.file("n.kerf")));
  CHECK_FALSE(fs::is_regular_file(d.file("n.manifest.json")));
}

TEST_CASE("manifest: ONNX external-data files are hashed too", "[manifest]") {
  TempDir d("manifest_ext");
  onnx::ModelProto model;
  {
    std::ifstream f(kModel, std::ios::binary);
    REQUIRE(model.ParseFromIstream(&f));
  }
  // Every initializer of >= 1 KiB into weights.bin (ONNX external data: location / offset / length).
  std::string blob;
  int moved = 0;
  for (onnx::TensorProto& t : *model.mutable_graph()->mutable_initializer()) {
    if (!t.has_raw_data() || t.raw_data().size() < 1024) continue;
    while (blob.size() % 64) blob.push_back('\0');
    const size_t off = blob.size();
    blob += t.raw_data();
    auto* loc = t.add_external_data();
    loc->set_key("location");
    loc->set_value("weights.bin");
    auto* o = t.add_external_data();
    o->set_key("offset");
    o->set_value(std::to_string(off));
    auto* l = t.add_external_data();
    l->set_key("length");
    l->set_value(std::to_string(t.raw_data().size()));
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
    ++moved;
  }
  REQUIRE(moved > 10);
  write_bytes(d.file("weights.bin"), blob);
  {
    std::ofstream f(d.file("ext.onnx"), std::ios::binary);
    REQUIRE(model.SerializeToOstream(&f));
  }
  fs::copy_file(kerf::test::kTok, d.file("tok512.bin"));
  pl::CompileOptions o = rtn_options(d.file("ext.kerf"));
  o.model_path = d.file("ext.onnx");
  compile_ok(o);
  const json m = manifest_of(o.output_path);
  CHECK(m["source_model"]["file"] == "ext.onnx");
  CHECK(m["source_model"]["sha256"] == pl::sha256_hex(read_bytes(d.file("ext.onnx"))));
  REQUIRE(m["source_model"].contains("external_data"));
  REQUIRE(m["source_model"]["external_data"].size() == 1);
  CHECK(m["source_model"]["external_data"][0]["file"] == "weights.bin");
  CHECK(m["source_model"]["external_data"][0]["bytes"].get<uint64_t>() == blob.size());
  CHECK(m["source_model"]["external_data"][0]["sha256"] == pl::sha256_hex(blob));
}

TEST_CASE("manifest: manifest_set_verification rewrites only the verification", "[manifest]") {
  TempDir d("manifest_verif");
  pl::CompileOptions o = rtn_options(d.file("m.kerf"));
  compile_ok(o);
  const std::string mp = pl::manifest_path_for(o.output_path);
  const json before = manifest_of(o.output_path);
  json v = {{"passed", false},
            {"checks", json::array({{{"metric", "kl"}, {"value", 0.1}, {"limit", 0.08}, {"op", "<="}, {"passed", false}}})}};
  REQUIRE(pl::manifest_set_verification(mp, v).ok());
  json after = manifest_of(o.output_path);
  CHECK(after["verification"] == v);
  CHECK(after.back() == v);  // still the last key
  after["verification"] = nullptr;
  CHECK(after == before);
  CHECK(pl::manifest_set_verification(mp, nullptr).ok());
  CHECK(manifest_of(o.output_path) == before);
  // Nothing left over from the atomic rewrite.
  int files = 0;
  for (const auto& e : fs::directory_iterator(d.path)) files += e.is_regular_file() ? 1 : 0;
  CHECK(files == 2);

  auto st = pl::manifest_set_verification(d.file("none.manifest.json"), v);
  CHECK(st.code() == kerf::ErrorCode::kIo);
  CHECK(st.message().find("none.manifest.json") != std::string::npos);
  write_bytes(d.file("bad.manifest.json"), "[1, 2");
  st = pl::manifest_set_verification(d.file("bad.manifest.json"), v);
  CHECK(st.code() == kerf::ErrorCode::kBadInput);
  CHECK(st.message().find("bad.manifest.json") != std::string::npos);
  write_bytes(d.file("other.manifest.json"), "{\"schema\": \"kerf.report/1\"}");
  st = pl::manifest_set_verification(d.file("other.manifest.json"), v);
  CHECK(st.code() == kerf::ErrorCode::kBadInput);
  CHECK(read_bytes(d.file("other.manifest.json")) == "{\"schema\": \"kerf.report/1\"}");
}
