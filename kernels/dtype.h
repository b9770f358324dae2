#ifndef WSYNC_KERNELS_DTYPE_H_
#define WSYNC_KERNELS_DTYPE_H_

// Element conversions shared by the CPU references and the CUDA kernels.
// Every function is pure and compiles for host and device, so both paths
// produce the same bits.
//
// Rounding and special values (fp32 -> bf16):
// - finite values round to nearest, ties to even;
// - values that round past the largest bf16 become +/-Inf;
// - +/-Inf stay Inf; every NaN becomes a quiet NaN with the same sign
//   (0x7fc0 / 0xffc0), so payloads are not preserved.

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define WSYNC_HD __host__ __device__ __forceinline__
#else
#define WSYNC_HD inline
#endif

namespace wsync::kernels {

WSYNC_HD uint32_t F32Bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

WSYNC_HD float BitsF32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// fp32 -> bf16 bits, round to nearest even.
WSYNC_HD uint16_t F32ToBf16(float f) {
  uint32_t u = F32Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN
    return static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7fc0u);
  }
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return static_cast<uint16_t>(u >> 16);
}

// bf16 bits -> fp32 (exact).
WSYNC_HD float Bf16ToF32(uint16_t h) { return BitsF32(static_cast<uint32_t>(h) << 16); }

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_DTYPE_H_
