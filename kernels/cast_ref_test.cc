#include "kernels/cast_ref.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "kernels/dtype.h"

namespace wsync::kernels {
namespace {

uint16_t Cast(uint32_t bits) {
  float f = BitsF32(bits);
  uint16_t out = 0;
  CastF32ToBf16Ref(&f, &out, 1);
  return out;
}

// Expected values worked out by hand from the IEEE-754 bit patterns.
TEST_CASE("fp32 -> bf16 rounds to nearest even") {
  CHECK(Cast(0x3f800000u) == 0x3f80);  // 1.0 is exact
  CHECK(Cast(0x3f808000u) == 0x3f80);  // 1 + 2^-8: tie, 0x3f80 is even -> down
  CHECK(Cast(0x3f818000u) == 0x3f82);  // 1 + 3*2^-8: tie, 0x3f81 is odd -> up
  CHECK(Cast(0x3f808001u) == 0x3f81);  // just above the tie -> up
  CHECK(Cast(0x3f807fffu) == 0x3f80);  // just below the tie -> down
  CHECK(Cast(0xbf818000u) == 0xbf82);  // sign does not change the rounding
  CHECK(Cast(0x80000000u) == 0x8000);  // -0.0 keeps its sign
  CHECK(Cast(0x00008000u) == 0x0000);  // subnormal tie -> even
  CHECK(Cast(0x00018000u) == 0x0002);  // subnormal tie -> even (up)
}

TEST_CASE("fp32 -> bf16 overflow, infinities and NaN") {
  CHECK(Cast(0x7f7fffffu) == 0x7f80);  // FLT_MAX rounds past bf16 max -> +Inf
  CHECK(Cast(0x7f7f7fffu) == 0x7f7f);  // below the halfway point stays finite
  CHECK(Cast(0x7f800000u) == 0x7f80);  // +Inf
  CHECK(Cast(0xff800000u) == 0xff80);  // -Inf
  CHECK(Cast(0x7fa00000u) == 0x7fc0);  // signaling NaN -> quiet NaN
  CHECK(Cast(0x7f800001u) == 0x7fc0);  // NaN whose payload would round to Inf
  CHECK(Cast(0xffc00001u) == 0xffc0);  // negative NaN keeps its sign
}

TEST_CASE("bf16 -> fp32 is exact and round-trips") {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    float f = Bf16ToF32(static_cast<uint16_t>(h));
    bool nan = (h & 0x7fffu) > 0x7f80u;
    if (!nan) REQUIRE(F32ToBf16(f) == h);
  }
}

TEST_CASE("the reference casts a whole array") {
  std::vector<float> in = {1.0f, -2.5f, 3.140625f, 0.0f};
  std::vector<uint16_t> out(in.size());
  CastF32ToBf16Ref(in.data(), out.data(), in.size());
  CHECK(out == std::vector<uint16_t>{0x3f80, 0xc020, 0x4049, 0x0000});
}

}  // namespace
}  // namespace wsync::kernels
