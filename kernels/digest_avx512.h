#ifndef WSYNC_KERNELS_DIGEST_AVX512_H_
#define WSYNC_KERNELS_DIGEST_AVX512_H_

// The digest of kernels/digest.h over eight consecutive words at a time, in
// AVX-512 registers: the one vector form of DigestTerm that the CPU paths
// share (the digest loop and the fused copy + digest). Only for CPUs with
// avx512f and avx512dq; callers carry that target.

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#include "kernels/digest.h"

#define WSYNC_AVX512_INLINE __attribute__((target("avx512f,avx512dq"), always_inline)) inline

namespace wsync::kernels {

// Running sums of eight lanes; lane j holds words first_word + 8i + j.
struct DigestLanes512 {
  __m512i k1, k2, s1, s2;
};

// Lanes whose next eight words are `first_word` .. `first_word + 7`.
WSYNC_AVX512_INLINE void DigestLanesStart(DigestLanes512* d, uint64_t first_word) {
  const __m512i idx = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first_word)),
                                       _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  d->k1 = _mm512_mullo_epi64(idx, _mm512_set1_epi64(static_cast<long long>(kDigestK1)));
  d->k2 = _mm512_mullo_epi64(_mm512_add_epi64(idx, _mm512_set1_epi64(1)),
                             _mm512_set1_epi64(static_cast<long long>(kDigestK2)));
  d->s1 = d->s2 = _mm512_setzero_si512();
}

// Adds the terms of the next eight words `w`.
WSYNC_AVX512_INLINE void DigestLanesAdd(DigestLanes512* d, __m512i w) {
  const __m512i y1 = _mm512_mullo_epi64(_mm512_xor_si512(w, d->k1),
                                        _mm512_set1_epi64(static_cast<long long>(kDigestM1)));
  const __m512i y2 = _mm512_mullo_epi64(_mm512_add_epi64(w, d->k2),
                                        _mm512_set1_epi64(static_cast<long long>(kDigestM2)));
  // The zero-masked shift: the plain one starts from an undefined register,
  // which GCC 12 reports as maybe-uninitialized.
  d->s1 = _mm512_add_epi64(d->s1, _mm512_xor_si512(y1, _mm512_maskz_srli_epi64(0xff, y1, 32)));
  d->s2 = _mm512_add_epi64(d->s2, _mm512_xor_si512(y2, _mm512_maskz_srli_epi64(0xff, y2, 29)));
  d->k1 = _mm512_add_epi64(d->k1, _mm512_set1_epi64(static_cast<long long>(8 * kDigestK1)));
  d->k2 = _mm512_add_epi64(d->k2, _mm512_set1_epi64(static_cast<long long>(8 * kDigestK2)));
}

// Adds the lanes' sums into *out (as unsigned: GCC's _mm512_reduce_add_epi64
// adds signed, which overflows).
WSYNC_AVX512_INLINE void DigestLanesFinish(const DigestLanes512& d, DigestSums* out) {
  alignas(64) uint64_t l1[8], l2[8];
  _mm512_store_si512(l1, d.s1);
  _mm512_store_si512(l2, d.s2);
  for (int i = 0; i < 8; ++i) {
    out->s1 += l1[i];
    out->s2 += l2[i];
  }
}

}  // namespace wsync::kernels

#undef WSYNC_AVX512_INLINE
#endif  // __x86_64__

#endif  // WSYNC_KERNELS_DIGEST_AVX512_H_
