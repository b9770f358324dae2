#include <cstdio>
#include <cstring>
#include <vector>

#include "kernels/digest.h"
#include "kernels/digest_avx512.h"
#include "kernels/parallel.h"

namespace wsync::kernels {

std::string Digest128::Hex() const {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buf;
}

namespace {

// The word loop for any CPU; CPUs with AVX-512 take eight words at a time
// through digest_avx512.h (the same sums).
// The position terms idx * K1 and (idx + 1) * K2 advance by addition, which
// leaves two multiplies per word (mod 2^64 the sums are the same).
void Words(const unsigned char* p, size_t n, uint64_t first, DigestSums* out) {
  uint64_t s1 = 0, s2 = 0;
  uint64_t k1 = first * kDigestK1, k2 = (first + 1) * kDigestK2;
  for (size_t i = 0; i < n; ++i) {
    uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);  // little-endian hosts (x86-64, aarch64)
    s1 += DigestG1(w ^ k1);
    s2 += DigestG2(w + k2);
    k1 += kDigestK1;
    k2 += kDigestK2;
  }
  out->s1 += s1;
  out->s2 += s2;
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512dq"))) void WordsAvx512(const unsigned char* p, size_t n, uint64_t first,
                                                            DigestSums* out) {
  DigestLanes512 d;
  DigestLanesStart(&d, first);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) DigestLanesAdd(&d, _mm512_loadu_si512(p + 8 * i));
  DigestLanesFinish(d, out);
  Words(p + 8 * i, n - i, first + i, out);
}
const bool kHasAvx512dq = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#endif

}  // namespace

DigestSums DigestPartial(const void* data, size_t nbytes, uint64_t first_word) {
  DigestSums s;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  const size_t full = nbytes / 8;
#if defined(__x86_64__)
  if (kHasAvx512dq && full >= 64) {
    WordsAvx512(p, full, first_word, &s);
  } else {
    Words(p, full, first_word, &s);
  }
#else
  Words(p, full, first_word, &s);
#endif
  if (size_t tail = nbytes % 8; tail != 0) {
    uint64_t w = 0;
    std::memcpy(&w, p + 8 * full, tail);
    DigestTerm(w, first_word + full, &s);
  }
  return s;
}

Digest128 DigestFinish(DigestSums s, uint64_t n) {
  Digest128 d;
  d.lo = DigestFmix(s.s1 ^ n);
  d.hi = DigestFmix(s.s2 + n * kDigestK3);
  return d;
}

Digest128 DigestBytes(const void* data, size_t nbytes, int threads) {
  constexpr size_t kChunk = 4 << 20;  // multiple of 8
  const size_t chunks = (nbytes + kChunk - 1) / kChunk;
  if (threads <= 1 || chunks <= 1) return DigestFinish(DigestPartial(data, nbytes, 0), nbytes);
  std::vector<DigestSums> partial(chunks);
  ParallelFor(chunks, threads, [&](size_t c) {
    size_t begin = c * kChunk;
    size_t len = std::min(kChunk, nbytes - begin);
    partial[c] = DigestPartial(static_cast<const char*>(data) + begin, len, begin / 8);
  });
  DigestSums total;
  for (const DigestSums& p : partial) {
    total.s1 += p.s1;
    total.s2 += p.s2;
  }
  return DigestFinish(total, nbytes);
}

}  // namespace wsync::kernels
