#include "kernels/digest.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

namespace wsync::kernels {
namespace {

// Golden values from an independent Python implementation of the definition
// in digest.h (arbitrary-precision integers, masked to 64 bits).
TEST_CASE("digest matches the independent implementation") {
  CHECK(DigestBytes("", 0).Hex() == "00000000000000000000000000000000");
  CHECK(DigestBytes("wsync", 5).Hex() == "19c7282c5ddeb9ea9f961444336d389f");
  std::string s;
  for (int rep = 0; rep < 4; ++rep) {
    for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  }
  s += "abc";
  CHECK(DigestBytes(s.data(), s.size()).Hex() == "0b0700f7bf42bb523308cf37b59d1c5a");
}

TEST_CASE("the vector loop gives the word-by-word sums at any length and first word") {
  std::mt19937_64 rng(5);
  std::vector<uint64_t> words(1003);
  for (auto& w : words) w = rng();
  for (size_t n : {size_t{64}, size_t{65}, size_t{71}, size_t{1003}}) {
    for (uint64_t first : {uint64_t{0}, uint64_t{3}, (uint64_t{1} << 40) + 1}) {
      DigestSums want;
      for (size_t i = 0; i < n; ++i) DigestTerm(words[i], first + i, &want);
      const DigestSums got = DigestPartial(words.data(), n * 8, first);
      INFO(n << " words from word " << first);
      CHECK(got.s1 == want.s1);
      CHECK(got.s2 == want.s2);
    }
  }
}

TEST_CASE("digest is independent of how the words are split") {
  std::mt19937_64 rng(7);
  std::vector<uint64_t> words(3 << 20);  // 24 MiB: several 4 MiB chunks
  for (auto& w : words) w = rng();
  const size_t n = words.size() * 8 - 5;
  Digest128 whole = DigestFinish(DigestPartial(words.data(), n, 0), n);
  CHECK(DigestBytes(words.data(), n, 2) == whole);
  CHECK(DigestBytes(words.data(), n, 4) == whole);
  // Two ranges summed in the other order.
  size_t split = 8 * 1000;
  DigestSums b = DigestPartial(reinterpret_cast<const char*>(words.data()) + split, n - split,
                               split / 8);
  DigestSums a = DigestPartial(words.data(), split, 0);
  DigestSums sum{b.s1 + a.s1, b.s2 + a.s2};
  CHECK(DigestFinish(sum, n) == whole);
}

TEST_CASE("digest changes with any single bit, with position and with length") {
  std::vector<unsigned char> data(4096, 0x5a);
  Digest128 base = DigestBytes(data.data(), data.size());
  for (size_t bit : {0u, 7u, 8u * 1000 + 3, 8u * 4095 + 7}) {
    data[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
    CHECK(DigestBytes(data.data(), data.size()) != base);
    data[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
  }
  // Swapping two distinct words changes the digest (terms depend on position).
  std::vector<uint64_t> w = {1, 2, 3, 4};
  Digest128 d1 = DigestBytes(w.data(), 32);
  std::swap(w[0], w[3]);
  CHECK(DigestBytes(w.data(), 32) != d1);
  // Trailing zero bytes are not ignored.
  std::vector<unsigned char> zeros(4096, 0);
  CHECK(DigestBytes(zeros.data(), 4095) != DigestBytes(zeros.data(), 4096));
}

}  // namespace
}  // namespace wsync::kernels
