#include "kernels/dtype.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>

namespace wsync::kernels {
namespace {

// Expected bits worked out by hand from the IEEE-754 binary16 format.
TEST_CASE("fp32 -> fp16 rounding, range and specials") {
  CHECK(F32ToF16(1.0f) == 0x3c00);
  CHECK(F32ToF16(-2.0f) == 0xc000);
  CHECK(F32ToF16(65504.0f) == 0x7bff);           // largest finite
  CHECK(F32ToF16(65519.0f) == 0x7bff);           // below the halfway point
  CHECK(F32ToF16(65520.0f) == 0x7c00);           // tie with an odd mantissa -> Inf
  CHECK(F32ToF16(1e10f) == 0x7c00);
  CHECK(F32ToF16(-INFINITY) == 0xfc00);
  CHECK(F32ToF16(std::nanf("")) == 0x7e00);
  CHECK(F32ToF16(-std::nanf("")) == 0xfe00);
  CHECK(F32ToF16(0.1f) == 0x2e66);               // 0.0999755859375
  CHECK(F32ToF16(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
  CHECK(F32ToF16(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(F32ToF16(std::ldexp(1.0f, -25)) == 0x0000);  // tie -> even (0)
  CHECK(F32ToF16(std::ldexp(1.5f, -25)) == 0x0001);  // above the tie
  CHECK(F32ToF16(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 * 2^-24: tie -> even (2)
  CHECK(F32ToF16(-0.0f) == 0x8000);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (down).
  CHECK(F32ToF16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
}

TEST_CASE("fp16 -> fp32 is exact for every pattern and round-trips") {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    float f = F16ToF32(static_cast<uint16_t>(h));
    bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (nan) {
      REQUIRE(std::isnan(f));
    } else {
      REQUIRE(F32ToF16(f) == h);
    }
  }
  CHECK(F16ToF32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(F16ToF32(0x03ff) == std::ldexp(1023.0f, -24));
  CHECK(F16ToF32(0x7bff) == 65504.0f);
}

TEST_CASE("16-bit to 16-bit conversions round once, through fp32") {
  // bf16 0x3f81 = 1.0078125 is not an fp16 value? It is: 1 + 2^-7 fits in 10 bits.
  CHECK(F32ToF16(Bf16ToF32(0x3f81)) == 0x3c08);
  // fp16 0x3c01 = 1 + 2^-10 -> bf16 (7 mantissa bits): rounds to 1.0.
  CHECK(F32ToBf16(F16ToF32(0x3c01)) == 0x3f80);
  // bf16 1e5 (0x47c3 = 99840) overflows fp16 -> Inf.
  CHECK(F32ToF16(Bf16ToF32(0x47c3)) == 0x7c00);
}

TEST_CASE("dtype sizes and names") {
  CHECK(DTypeSize(DType::kF32) == 4);
  CHECK(DTypeSize(DType::kBF16) == 2);
  CHECK(DTypeSize(DType::kF16) == 2);
  CHECK(DTypeSize(DType::kF8E4M3) == 1);
  CHECK(std::string(DTypeName(DType::kBF16)) == "bf16");
}

}  // namespace
}  // namespace wsync::kernels
