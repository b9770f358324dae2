#ifndef WSYNC_KERNELS_DTYPE_H_
#define WSYNC_KERNELS_DTYPE_H_

// Element conversions shared by the CPU references and the CUDA kernels.
// Every function is pure and compiles for host and device, so both paths
// produce the same bits.
//
// Rounding and special values, for every narrowing conversion
// (fp32 -> bf16, fp32 -> fp16, bf16 -> fp16, fp16 -> bf16):
// - finite values round to nearest, ties to even (one rounding: the
//   16-bit -> 16-bit conversions go through fp32, which holds both exactly);
// - values that round past the largest finite target become +/-Inf;
// - subnormal targets are produced with the same rounding (no flush to zero);
// - +/-Inf stay Inf; every NaN becomes the target's quiet NaN with the same
//   sign (bf16 0x7fc0/0xffc0, fp16 0x7e00/0xfe00), so payloads are not kept.
// Widening conversions (bf16 -> fp32, fp16 -> fp32) are exact, NaN payloads
// included. Copies between equal dtypes move raw bits and are always exact.

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define WSYNC_HD __host__ __device__ __forceinline__
#else
#define WSYNC_HD inline
#endif

namespace wsync::kernels {

// Element types. Values match wsync.v1.DType.
enum class DType : uint8_t {
  kF32 = 1,
  kBF16 = 2,
  kF16 = 3,
  kF8E4M3 = 4,  // float8_e4m3fn: box copies move it raw; kernels/fp8.h quantizes to it
};

// Bytes per element (0 for an unknown value).
WSYNC_HD int DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kF8E4M3: return 1;
  }
  return 0;
}

// "fp32", "bf16", "fp16", "fp8_e4m3".
inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "fp32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "fp16";
    case DType::kF8E4M3: return "fp8_e4m3";
  }
  return "unknown";
}

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
  // Branch-free so that compilers vectorize loops over it.
  uint32_t u = F32Bits(f);
  uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// bf16 bits -> fp32 (exact).
WSYNC_HD float Bf16ToF32(uint16_t h) { return BitsF32(static_cast<uint32_t>(h) << 16); }

// fp32 -> fp16 bits, round to nearest even.
WSYNC_HD uint16_t F32ToF16(float f) {
  uint32_t u = F32Bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to Inf (Inf too)
  if (a >= 0x38800000u) {                       // normal fp16 range (>= 2^-14)
    uint32_t mant_lsb = (a >> 13) & 1u;
    a += 0xfffu + mant_lsb;
    return sign | static_cast<uint16_t>((a - 0x38000000u) >> 13);
  }
  if (a < 0x33000000u) return sign;  // < 2^-25 rounds to zero (2^-25 is the tie -> 0)
  // Subnormal fp16: value = m * 2^-24 with m < 1024.
  uint32_t exp = a >> 23;              // biased fp32 exponent, 102..112
  uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - exp;          // 14..24: mant >> shift = m
  uint32_t m = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (m & 1u))) ++m;
  return sign | static_cast<uint16_t>(m);
}

// fp16 bits -> fp32 (exact).
WSYNC_HD float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return BitsF32(sign | 0x7f800000u | (mant << 13));  // Inf/NaN
  if (exp != 0) return BitsF32(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return BitsF32(sign);
  // Subnormal: normalize.
  int e = -1;
  do {
    mant <<= 1;
    ++e;
  } while ((mant & 0x400u) == 0);
  return BitsF32(sign | ((112 - e) << 23) | ((mant & 0x3ffu) << 13));
}

// Loads element i of a buffer of type t as fp32 (exact for every type but
// fp8, which is not supported and reads as 0).
WSYNC_HD float LoadAsF32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kBF16: return Bf16ToF32(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16: return F16ToF32(static_cast<const uint16_t*>(p)[i]);
    default: return 0.0f;
  }
}

// Stores fp32 `v` as element i of a buffer of type t, rounding as above.
WSYNC_HD void StoreFromF32(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::kF32: static_cast<float*>(p)[i] = v; break;
    case DType::kBF16: static_cast<uint16_t*>(p)[i] = F32ToBf16(v); break;
    case DType::kF16: static_cast<uint16_t*>(p)[i] = F32ToF16(v); break;
    default: break;
  }
}

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_DTYPE_H_
