#include "client/convert/safetensors.h"

#include <dirent.h>

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <string>

#include "tests/testing/process.h"

namespace wsync::convert {
namespace {

// A file made of an 8-byte little-endian header length, the header, then data.
std::string Write(const std::string& dir, const std::string& name, const std::string& header,
                  const std::string& data, int64_t claimed_len = -1) {
  std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary);
  uint64_t n = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
  out << header << data;
  return path;
}

std::string OpenError(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  REQUIRE_FALSE(f.ok());
  return std::string(f.status().message());
}

TEST_CASE("a hand-made file reads back") {
  std::string dir = testing::MakeTempDir();
  // Two fp32 values of "a" then one bf16 value of "b" (1.0 = 0x3f80).
  std::string data("\x00\x00\x80\x3f\x00\x00\x00\x40\x80\x3f", 10);
  std::string path = Write(dir, "ok.safetensors",
                           R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],)"
                           R"("data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[8,10]}})",
                           data);
  auto f = SafetensorsFile::Open(path);
  INFO(f.status().ToString());
  REQUIRE(f.ok());
  REQUIRE((*f)->tensors().size() == 2);
  const TensorInfo* a = (*f)->Find("a");
  REQUIRE(a != nullptr);
  CHECK(a->shape == layout::Shape::Of({2}));
  float av[2];  // the hand-made header is not padded: the data is not 4-byte aligned
  std::memcpy(av, (*f)->Data(*a), sizeof(av));
  CHECK(av[0] == 1.0f);
  CHECK(av[1] == 2.0f);
  const TensorInfo* b = (*f)->Find("b");
  CHECK(b->dtype == layout::DType::kBF16);
  CHECK(*static_cast<const uint16_t*>((*f)->Data(*b)) == 0x3f80);
  CHECK((*f)->metadata().at("format") == "pt");
}

size_t Entries(const std::string& dir) {
  size_t n = 0;
  DIR* d = opendir(dir.c_str());
  while (dirent* e = readdir(d)) n += std::string(e->d_name) != "." && std::string(e->d_name) != "..";
  closedir(d);
  return n;
}

TEST_CASE("the writer lays out, pads and renames atomically") {
  std::string dir = testing::MakeTempDir();
  std::string path = dir + "/w.safetensors";
  std::vector<TensorInfo> t = {{"x", layout::DType::kF16, layout::Shape::Of({3}), 0, 0},
                               {"y", layout::DType::kF32, layout::Shape::Of({2, 2}), 0, 0}};
  {
    auto w = SafetensorsWriter::Create(path, t, {{"k", "v"}});
    REQUIRE(w.ok());
    CHECK(Entries(dir) == 1);                  // a temporary under a fresh name
    CHECK(access(path.c_str(), F_OK) != 0);  // nothing that looks complete yet
    uint16_t x[3] = {1, 2, 3};
    float y[4] = {1, 2, 3, 4};
    REQUIRE((*w)->Write(0, 0, x, sizeof(x)).ok());
    REQUIRE((*w)->Write(1, 8, y + 2, 8).ok());
    REQUIRE((*w)->Write(1, 0, y, 8).ok());
    CHECK_FALSE((*w)->Write(0, 4, x, 4).ok());  // past the end of x
    REQUIRE((*w)->Commit().ok());
  }
  CHECK(Entries(dir) == 1);  // the file itself, no temporary left
  auto f = SafetensorsFile::Open(path);
  REQUIRE(f.ok());
  const TensorInfo* y = (*f)->Find("y");
  CHECK(y->begin == 6);
  float y3;  // y starts at byte 6: not 4-byte aligned
  std::memcpy(&y3, static_cast<const char*>((*f)->Data(*y)) + 12, 4);
  CHECK(y3 == 4.0f);
  CHECK((*f)->metadata().at("k") == "v");
  // The header is padded to a multiple of 8 bytes.
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  CHECK(len[0] % 8 == 0);

  SECTION("an abandoned writer leaves no file") {
    std::string p2 = dir + "/abandoned.safetensors";
    { auto w = SafetensorsWriter::Create(p2, t, {}); }
    CHECK(access(p2.c_str(), F_OK) != 0);
    CHECK(access((p2 + ".tmp").c_str(), F_OK) != 0);
  }
}

TEST_CASE("corrupt and truncated files are rejected with the file and tensor named") {
  std::string dir = testing::MakeTempDir();
  const std::string f32x2 = std::string(8, '\0');
  auto hdr = [](const std::string& entries) { return "{" + entries + "}"; };

  std::string p = dir + "/short.safetensors";
  std::ofstream(p) << "abc";
  CHECK(OpenError(p) == p + ": truncated: 3 bytes, no header length");

  p = Write(dir, "long.safetensors", "{}", "", 1000);
  CHECK(OpenError(p) == p + ": truncated: header length 1000 but the file has only 2 bytes after it");

  p = Write(dir, "json.safetensors", "{\"a\": [", "");
  CHECK(OpenError(p) == p + ": corrupt header: not a JSON object");

  p = Write(dir, "array.safetensors", "[1,2]", "");
  CHECK(OpenError(p) == p + ": corrupt header: not a JSON object");

  p = Write(dir, "fields.safetensors", hdr(R"("a":{"dtype":"F32","shape":[2]})"), f32x2);
  CHECK(OpenError(p) == p + ": tensor 'a': entry must have dtype, shape and data_offsets");

  p = Write(dir, "dtype.safetensors", hdr(R"("a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]})"), f32x2);
  CHECK(OpenError(p) ==
        p + ": tensor 'a': dtype I64 is not supported (F32, BF16, F16, F8_E4M3)");

  p = Write(dir, "range.safetensors", hdr(R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), f32x2);
  CHECK(OpenError(p) ==
        p + ": tensor 'a': data_offsets [0, 16] fall outside the data section (8 bytes)");

  p = Write(dir, "size.safetensors", hdr(R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), f32x2);
  CHECK(OpenError(p) ==
        p + ": tensor 'a': data_offsets span 8 bytes but shape [3] of F32 needs 12");

  p = Write(dir, "overlap.safetensors",
            hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"),
            f32x2);
  CHECK(OpenError(p) ==
        p + ": tensors 'a' [0, 8) and 'b' [4, 8) have overlapping data offsets");

  p = Write(dir, "hole.safetensors", hdr(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), f32x2);
  CHECK(OpenError(p) == p + ": bytes [0, 4) of the data section belong to no tensor (before 'a')");

  p = Write(dir, "tail.safetensors", hdr(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), f32x2);
  CHECK(OpenError(p) == p + ": bytes [4, 8) at the end belong to no tensor");

  p = Write(dir, "meta.safetensors", hdr(R"("__metadata__":{"n":1})"), "");
  CHECK(OpenError(p) == p + ": __metadata__.n must be a string");

  // A shape whose element count overflows 64 bits (2^32 * 2^32 * 2 wraps
  // to 0, which would match an empty data range).
  p = Write(dir, "overflow.safetensors",
            hdr(R"("a":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,0]})"), "");
  CHECK(OpenError(p) == p + ": tensor 'a': shape holds more than 2^62 elements");
  p = Write(dir, "negative.safetensors",
            hdr(R"("a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,0]})"), "");
  CHECK(OpenError(p) == p + ": tensor 'a': shape holds more than 2^62 elements");

  auto missing = SafetensorsFile::Open(dir + "/nope.safetensors");
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace wsync::convert
