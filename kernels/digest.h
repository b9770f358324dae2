#ifndef WSYNC_KERNELS_DIGEST_H_
#define WSYNC_KERNELS_DIGEST_H_

// A 128-bit digest of a byte string that CPU and GPU compute identically.
//
// Definition. Split the n bytes into 64-bit little-endian words
// w_0 .. w_{m-1}, m = ceil(n / 8), the last one zero-padded. With
//   K1 = 0x9e3779b97f4a7c15, K2 = 0xc2b2ae3d27d4eb4f, K3 = 0x165667b19e3779f9
//   M1 = 0xff51afd7ed558ccd, M2 = 0xc4ceb9fe1a85ec53
//   g1(x) = y ^ (y >> 32) with y = x * M1     (mod 2^64)
//   g2(x) = y ^ (y >> 29) with y = x * M2
//   s1 = sum_i g1(w_i ^ (i * K1))            (mod 2^64)
//   s2 = sum_i g2(w_i + (i + 1) * K2)        (mod 2^64)
//   fmix(x) = MurmurHash3's 64-bit finalizer
// the digest is lo = fmix(s1 ^ n), hi = fmix(s2 + n * K3), printed as 32
// hex digits (hi then lo). g1 and g2 are bijections (an odd multiplier, an
// xorshift), so any change to one word changes both sums; the position
// enters every term, so moved words change them too. One multiply per word
// and lane keeps it faster than the copies it checks.
//
// Each word's term depends only on its value and index, and the sums are
// modular, so any split of the words over threads or GPU blocks, in any
// order, gives the same result. Partial sums of a range that starts at word
// index `first_word` are computed with DigestPartial and added up.
// It detects corruption, not tampering: it is not a cryptographic hash.

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace wsync::kernels {

struct DigestSums {
  uint64_t s1 = 0, s2 = 0;
};

struct Digest128 {
  uint64_t hi = 0, lo = 0;
  bool operator==(const Digest128& o) const { return hi == o.hi && lo == o.lo; }
  bool operator!=(const Digest128& o) const { return !(*this == o); }
  std::string Hex() const;
};

WSYNC_HD uint64_t DigestFmix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}

inline constexpr uint64_t kDigestK1 = 0x9e3779b97f4a7c15ull;
inline constexpr uint64_t kDigestK2 = 0xc2b2ae3d27d4eb4full;
inline constexpr uint64_t kDigestK3 = 0x165667b19e3779f9ull;

inline constexpr uint64_t kDigestM1 = 0xff51afd7ed558ccdull;
inline constexpr uint64_t kDigestM2 = 0xc4ceb9fe1a85ec53ull;

WSYNC_HD uint64_t DigestG1(uint64_t x) {
  x *= kDigestM1;
  return x ^ (x >> 32);
}

WSYNC_HD uint64_t DigestG2(uint64_t x) {
  x *= kDigestM2;
  return x ^ (x >> 29);
}

// The two terms of word `w` at index `i`.
WSYNC_HD void DigestTerm(uint64_t w, uint64_t i, DigestSums* s) {
  s->s1 += DigestG1(w ^ (i * kDigestK1));
  s->s2 += DigestG2(w + (i + 1) * kDigestK2);
}

// Sums for `nbytes` bytes whose first byte is byte 8 * first_word of the
// whole string. nbytes must be a multiple of 8 unless the range ends the
// string.
DigestSums DigestPartial(const void* data, size_t nbytes, uint64_t first_word);

// Combines sums over all words of an n-byte string into the digest.
Digest128 DigestFinish(DigestSums sums, uint64_t total_bytes);

// Digest of `nbytes` bytes, using up to `threads` threads.
Digest128 DigestBytes(const void* data, size_t nbytes, int threads = 1);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_DIGEST_H_
