// FP8 against references written plainly here: the e4m3fn value table from
// its bit layout, nearest-even rounding by search over that table, and the
// block scales recomputed element by element.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/fp8.h"

namespace wsync::kernels {
namespace {

// Value of every e4m3fn code (NaN for 0x7f, 0xff), from the bit layout.
std::vector<double> Table() {
  std::vector<double> t(256);
  for (int c = 0; c < 256; ++c) {
    const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    double v = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
    if (e == 15 && m == 7) v = NAN;
    t[c] = s ? -v : v;
  }
  return t;
}

// Nearest finite code by search, ties to the even code, saturating at 448.
uint8_t Nearest(double x, const std::vector<double>& t) {
  if (std::isnan(x)) return std::signbit(x) ? 0xff : 0x7f;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::fabs(x);
  if (a >= 448) return sign | 0x7e;
  int best = 0;
  for (int c = 1; c <= 0x7e; ++c) {
    const double d = std::fabs(t[c] - a), db = std::fabs(t[best] - a);
    if (d < db || (d == db && (c & 1) == 0)) best = c;
  }
  return sign | static_cast<uint8_t>(best);
}

TEST_CASE("e4m3fn decodes every code as its bit layout says") {
  const auto t = Table();
  CHECK(E4m3ToF32(0x7e) == 448.0f);
  CHECK(E4m3ToF32(0x01) == std::ldexp(1.0f, -9));
  CHECK(E4m3ToF32(0x38) == 1.0f);
  for (int c = 0; c < 256; ++c) {
    INFO("code " << c);
    if (std::isnan(t[c])) {
      CHECK(std::isnan(E4m3ToF32(static_cast<uint8_t>(c))));
    } else {
      CHECK(E4m3ToF32(static_cast<uint8_t>(c)) == static_cast<float>(t[c]));
    }
  }
}

TEST_CASE("fp32 -> e4m3fn rounds to nearest even and saturates, as the table search does") {
  const auto t = Table();
  std::vector<float> xs = {0.0f, -0.0f, 448.0f, 449.0f, 463.9f, 464.0f, 480.0f, 1e30f, INFINITY, -INFINITY,
                           1e-30f, std::ldexp(1.0f, -10), std::ldexp(3.0f, -11), std::ldexp(1.0f, -6)};
  // Every code, the midpoints between neighbours (ties) and one fp32 step to
  // either side of them.
  for (int c = 0; c < 0x7e; ++c) {
    for (int s : {0, 1}) {
      const float v = static_cast<float>(t[c]), next = static_cast<float>(t[c + 1]);
      const float mid = static_cast<float>((t[c] + t[c + 1]) / 2);
      for (float x : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f), next}) {
        xs.push_back(s ? -x : x);
      }
    }
  }
  std::mt19937 rng(17);
  std::uniform_real_distribution<double> exp(-14, 10);
  for (int i = 0; i < 20000; ++i) {
    float x = static_cast<float>(std::exp2(exp(rng)));
    xs.push_back(i % 2 ? -x : x);
  }
  for (float x : xs) {
    INFO("x = " << x);
    CHECK(static_cast<int>(F32ToE4m3(x)) == static_cast<int>(Nearest(x, t)));
  }
  CHECK(F32ToE4m3(NAN) == 0x7f);
  CHECK(F32ToE4m3(-NAN) == 0xff);
}

// Plain reference of one op: per block, amax and scale_inv in fp32, then the
// nearest code by table search of w / scale_inv.
void Reference(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t br, int64_t bc,
               std::vector<uint8_t>* q, std::vector<float>* scales) {
  const auto t = Table();
  const int64_t nbr = (rows + br - 1) / br, nbc = (cols + bc - 1) / bc;
  q->assign(rows * cols, 0);
  scales->assign(nbr * nbc, 0);
  for (int64_t bi = 0; bi < nbr; ++bi) {
    for (int64_t bj = 0; bj < nbc; ++bj) {
      double amax = 0;
      for (int64_t r = bi * br; r < std::min(rows, (bi + 1) * br); ++r) {
        for (int64_t c = bj * bc; c < std::min(cols, (bj + 1) * bc); ++c) {
          amax = std::max(amax, std::fabs(static_cast<double>(w[r * cols + c])));
        }
      }
      const float s = amax == 0 ? 1.0f : static_cast<float>(amax) / 448.0f;
      (*scales)[bi * nbc + bj] = s;
      for (int64_t r = bi * br; r < std::min(rows, (bi + 1) * br); ++r) {
        for (int64_t c = bj * bc; c < std::min(cols, (bj + 1) * bc); ++c) {
          (*q)[r * cols + c] = Nearest(static_cast<float>(w[r * cols + c] / s), t);
        }
      }
    }
  }
}

TEST_CASE("a 2 x 2 block worked by hand") {
  const float w[4] = {448.0f, -224.0f, 1.0f, 0.0f};
  uint8_t q[4];
  float s = 0;
  Fp8QuantOp op;
  op.src = w;
  op.src_dtype = DType::kF32;
  op.rows = op.cols = op.src_ld = op.dst_ld = 2;
  op.dst = q;
  op.scale_inv = &s;
  op.scale_ld = 1;
  REQUIRE(CheckFp8QuantOps(&op, 1).empty());
  REQUIRE(QuantizeFp8Cpu(&op, 1, 1).empty());
  CHECK(s == 1.0f);  // amax 448
  CHECK(q[0] == 0x7e);  // 448 = 1.75 * 2^8
  CHECK(q[1] == 0xf6);  // -224 = -1.75 * 2^7
  CHECK(q[2] == 0x38);  // 1
  CHECK(q[3] == 0x00);
}

TEST_CASE("block, per-tensor and per-channel scales match the plain reference, partial blocks included") {
  const int64_t rows = 300, cols = 260;  // 128 x 128 blocks: 3 x 3, the last ones partial
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> drawn(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) drawn[i] = normal(rng) * (i % 97 == 0 ? 50.0f : 1.0f);
  for (int64_t r = 0; r < 128; ++r) {  // one block all zeros: scale 1, codes 0
    for (int64_t c = 128; c < 256; ++c) drawn[r * cols + c] = 0;
  }
  struct Case {
    const char* name;
    int64_t br, bc;
  };
  for (DType dt : {DType::kBF16, DType::kF32, DType::kF16}) {
    // The source in `dt`, and `w`: the values it holds.
    std::vector<float> w(rows * cols), f32(rows * cols);
    std::vector<uint16_t> half(rows * cols);
    for (int64_t i = 0; i < rows * cols; ++i) {
      if (dt == DType::kF32) f32[i] = w[i] = drawn[i];
      if (dt == DType::kBF16) half[i] = F32ToBf16(drawn[i]), w[i] = Bf16ToF32(half[i]);
      if (dt == DType::kF16) half[i] = F32ToF16(drawn[i]), w[i] = F16ToF32(half[i]);
    }
    for (Case k : {Case{"block 128 x 128", 128, 128}, Case{"per tensor", rows, cols}, Case{"per channel", 1, cols}}) {
      for (int threads : {1, 2, 3}) {  // few blocks on several threads: blocks cut into row slices
        INFO(DTypeName(dt) << ", " << k.name << ", " << threads << " thread(s)");
        std::vector<uint8_t> want_q, got_q(rows * cols, 0xaa);
        std::vector<float> want_s;
        Reference(w, rows, cols, k.br, k.bc, &want_q, &want_s);
        std::vector<float> got_s(want_s.size(), -1.0f);
        Fp8QuantOp op;
        op.src = dt == DType::kF32 ? static_cast<const void*>(f32.data()) : half.data();
        op.src_dtype = dt;
        op.rows = rows;
        op.cols = cols;
        op.src_ld = cols;
        op.dst = got_q.data();
        op.dst_ld = cols;
        op.scale_inv = got_s.data();
        op.scale_ld = (cols + k.bc - 1) / k.bc;
        op.block_rows = k.br;
        op.block_cols = k.bc;
        REQUIRE(CheckFp8QuantOps(&op, 1).empty());
        REQUIRE(QuantizeFp8Cpu(&op, 1, threads).empty());
        CHECK(got_s == want_s);
        CHECK(got_q == want_q);
        if (k.br == 128) {
          CHECK(got_s[1] == 1.0f);  // the zero block
          // Dequantized values are within half a step of the block's scale.
          for (int64_t i = 0; i < rows * cols; i += 7) {
            const float s = got_s[(i / cols / 128) * 3 + (i % cols) / 128];
            CHECK(std::fabs(E4m3ToF32(got_q[i]) * s - w[i]) <= std::fabs(w[i]) / 16 + s * std::ldexp(1.0f, -10));
          }
        }
      }
    }
  }
}

// Quantizes `vals` (each row's block has amax 448, so scale_inv 1 and
// q = F32ToE4m3(x)) with one 1 x cols block per row; checks every code
// against F32ToE4m3 and every scale against 1. The CPU path runs rows
// 16 elements at a time where it can (AVX-512) and the rest one by one:
// `cols` leaves a tail of one.
template <typename T>
void CheckScaleOneRows(const std::vector<T>& vals, DType dt, float (*to_f32)(T)) {
  const int64_t cols = 4097;
  const int64_t rows = (static_cast<int64_t>(vals.size()) + cols - 2) / (cols - 1);
  std::vector<T> src(rows * cols);
  std::vector<uint8_t> want(rows * cols), got(rows * cols, 0xaa);
  const T max = [&] {
    for (T v : vals) {
      if (to_f32(v) == 448.0f) return v;
    }
    FAIL("no 448 among the values");
    return T{};
  }();
  for (int64_t r = 0, k = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const T v = c == r % cols ? max : vals[std::min<int64_t>(k++, vals.size() - 1)];
      src[r * cols + c] = v;
      want[r * cols + c] = F32ToE4m3(to_f32(v));
    }
  }
  std::vector<float> scales(rows, -1.0f);
  Fp8QuantOp op;
  op.src = src.data();
  op.src_dtype = dt;
  op.rows = rows;
  op.cols = op.src_ld = op.dst_ld = cols;
  op.dst = got.data();
  op.scale_inv = scales.data();
  op.scale_ld = 1;
  op.block_rows = 1;
  op.block_cols = cols;
  REQUIRE(CheckFp8QuantOps(&op, 1).empty());
  REQUIRE(QuantizeFp8Cpu(&op, 1, 2).empty());
  CHECK(std::count(scales.begin(), scales.end(), 1.0f) == rows);
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (got[i] != want[i]) {
      INFO("element " << i << ": " << to_f32(src[i]));
      REQUIRE(static_cast<int>(got[i]) == static_cast<int>(want[i]));
    }
  }
}

TEST_CASE("quantized rows round like F32ToE4m3: every bf16 and fp16 value and 9 million fp32 ones up to 448") {
  std::vector<uint16_t> b16, f16;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (std::fabs(Bf16ToF32(h)) <= 448.0f) b16.push_back(h);  // NaN and beyond 448 left out
    if (std::fabs(F16ToF32(h)) <= 448.0f) f16.push_back(h);
  }
  CheckScaleOneRows<uint16_t>(b16, DType::kBF16, [](uint16_t h) { return Bf16ToF32(h); });
  CheckScaleOneRows<uint16_t>(f16, DType::kF16, [](uint16_t h) { return F16ToF32(h); });
  // fp32: every value of the top 23 bits up to 448 (every exponent and the
  // first 14 mantissa bits, which hold the rounding position of normal and
  // subnormal codes), with low bits that make ties, and ones just off them;
  // both signs.
  std::vector<float> f32;
  for (uint32_t hi = 0; hi <= (0x43e00000u >> 9); ++hi) {
    for (uint32_t lo : {0x000u, 0x001u, 0x100u, 0x1ffu}) {
      const uint32_t bits = (hi << 9) | lo;
      if (bits > 0x43e00000u) continue;
      f32.push_back(BitsF32(bits | (lo == 0x001u ? 0x80000000u : 0u)));
    }
  }
  CheckScaleOneRows<float>(f32, DType::kF32, [](float x) { return x; });
}

TEST_CASE("non-finite weights and bad ops are errors that name the element or the op") {
  std::vector<float> w(16 * 16, 0.5f);
  w[5 * 16 + 9] = INFINITY;
  std::vector<uint8_t> q(256);
  std::vector<float> s(4);
  Fp8QuantOp op;
  op.src = w.data();
  op.src_dtype = DType::kF32;
  op.rows = op.cols = op.src_ld = op.dst_ld = 16;
  op.dst = q.data();
  op.scale_inv = s.data();
  op.scale_ld = 2;
  op.block_rows = op.block_cols = 8;
  REQUIRE(CheckFp8QuantOps(&op, 1).empty());
  CHECK(QuantizeFp8Cpu(&op, 1, 2) == "fp8 quantization op 0: element (5, 9) is inf; FP8 scales need finite weights");
  const std::vector<Fp8Block> blocks = MakeFp8Blocks(&op, 1);
  Fp8Element e;
  REQUIRE(Fp8BadElement(&op, blocks, Fp8BadKey(1, 1 * 8 + 1), &e));  // block (0, 1), local (1, 1)
  CHECK(e.row == 1);
  CHECK(e.col == 9);
  CHECK_FALSE(Fp8BadElement(&op, blocks, kFp8AllFinite, &e));
  CHECK_FALSE(Fp8BadElement(&op, blocks, Fp8BadKey(1, 64), &e));  // past the 8 x 8 block
  w[5 * 16 + 9] = NAN;
  CHECK(QuantizeFp8Cpu(&op, 1, 1).find("element (5, 9) is nan") != std::string::npos);
  // One per-tensor block, cut into row slices over 3 threads: the first
  // non-finite element in row-major order is named, whichever slice finds one.
  Fp8QuantOp whole = op;
  whole.block_rows = whole.block_cols = 16;
  whole.scale_ld = 1;
  w[13 * 16 + 2] = -INFINITY;
  CHECK(QuantizeFp8Cpu(&whole, 1, 3).find("element (5, 9) is nan") != std::string::npos);
  w[5 * 16 + 9] = 0.5f;
  CHECK(QuantizeFp8Cpu(&whole, 1, 3).find("element (13, 2) is -inf") != std::string::npos);
  Fp8QuantOp bad = op;
  bad.scale_ld = 1;
  CHECK(CheckFp8QuantOps(&bad, 1) ==
        "fp8 quantization op 0: row strides (source 16, fp8 16, scales 1) shorter than the rows (16 elements, 2 scales)");
  bad = op;
  bad.src_dtype = DType::kF8E4M3;
  CHECK(CheckFp8QuantOps(&bad, 1) == "fp8 quantization op 0: source dtype fp8_e4m3 is not fp32, bf16 or fp16");
}

}  // namespace
}  // namespace wsync::kernels
