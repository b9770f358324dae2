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

// fp32 -> bf16, expected bits worked out by hand from the IEEE-754 patterns.
TEST_CASE("fp32 -> bf16 rounds to nearest even") {
  auto cast = [](uint32_t bits) { return F32ToBf16(BitsF32(bits)); };
  CHECK(cast(0x3f800000u) == 0x3f80);  // 1.0 is exact
  CHECK(cast(0x3f808000u) == 0x3f80);  // 1 + 2^-8: tie, 0x3f80 is even -> down
  CHECK(cast(0x3f818000u) == 0x3f82);  // 1 + 3*2^-8: tie, 0x3f81 is odd -> up
  CHECK(cast(0x3f808001u) == 0x3f81);  // just above the tie -> up
  CHECK(cast(0x3f807fffu) == 0x3f80);  // just below the tie -> down
  CHECK(cast(0xbf818000u) == 0xbf82);  // sign does not change the rounding
  CHECK(cast(0x80000000u) == 0x8000);  // -0.0 keeps its sign
  CHECK(cast(0x00008000u) == 0x0000);  // subnormal tie -> even
  CHECK(cast(0x00018000u) == 0x0002);  // subnormal tie -> even (up)
}

TEST_CASE("fp32 -> bf16 overflow, infinities and NaN") {
  auto cast = [](uint32_t bits) { return F32ToBf16(BitsF32(bits)); };
  CHECK(cast(0x7f7fffffu) == 0x7f80);  // FLT_MAX rounds past bf16 max -> +Inf
  CHECK(cast(0x7f7f7fffu) == 0x7f7f);  // below the halfway point stays finite
  CHECK(cast(0x7f800000u) == 0x7f80);  // +Inf
  CHECK(cast(0xff800000u) == 0xff80);  // -Inf
  CHECK(cast(0x7fa00000u) == 0x7fc0);  // signaling NaN -> quiet NaN
  CHECK(cast(0x7f800001u) == 0x7fc0);  // NaN whose payload would round to Inf
  CHECK(cast(0xffc00001u) == 0xffc0);  // negative NaN keeps its sign
}

TEST_CASE("bf16 -> fp32 is exact and round-trips") {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    float f = Bf16ToF32(static_cast<uint16_t>(h));
    bool nan = (h & 0x7fffu) > 0x7f80u;
    if (!nan) REQUIRE(F32ToBf16(f) == h);
  }
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
