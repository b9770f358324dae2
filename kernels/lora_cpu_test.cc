#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/lora.h"

namespace wsync::kernels {
namespace {

// A dense row-major matrix of `dtype` elements.
struct Mat {
  DType dtype;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  Mat(DType t, int64_t r, int64_t c) : dtype(t), rows(r), cols(c), bytes(r * c * DTypeSize(t)) {}
  float Get(int64_t r, int64_t c) const { return LoadAsF32(bytes.data(), dtype, r * cols + c); }
  void Set(int64_t r, int64_t c, float v) { StoreFromF32(bytes.data(), dtype, r * cols + c, v); }
};

Mat Random(DType t, int64_t r, int64_t c, float scale, std::mt19937& rng) {
  Mat m(t, r, c);
  std::normal_distribution<float> dist(0.0f, scale);
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < c; ++j) m.Set(i, j, dist(rng));
  }
  return m;
}

// Distance from x to the next representable value of `t` away from zero.
double Ulp(float x, DType t) {
  float ax = std::fabs(x);
  switch (t) {
    case DType::kF32: return std::nextafter(ax, INFINITY) - ax;
    case DType::kBF16: {
      uint16_t b = F32ToBf16(ax);
      return Bf16ToF32(static_cast<uint16_t>(b + 1)) - Bf16ToF32(b);
    }
    case DType::kF16: {
      uint16_t h = F32ToF16(ax);
      return F16ToF32(static_cast<uint16_t>(h + 1)) - F16ToF32(h);
    }
    default: return 0;
  }
}

LoraMergeOp PeftOp(const Mat& w, const Mat& a, const Mat& b, Mat& dst, float scale) {
  LoraMergeOp op;
  op.w = w.bytes.data();
  op.w_dtype = w.dtype;
  op.w_row_stride = w.cols;
  op.a = a.bytes.data();
  op.a_dtype = a.dtype;
  op.a_k_stride = a.cols;  // A [rank, in]
  op.b = b.bytes.data();
  op.b_dtype = b.dtype;
  op.b_row_stride = b.cols;  // B [out, rank]
  op.dst = dst.bytes.data();
  op.dst_dtype = dst.dtype;
  op.dst_row_stride = dst.cols;
  op.rows = w.rows;
  op.cols = w.cols;
  op.rank = a.rows;
  op.scale = scale;
  return op;
}

TEST_CASE("a 2x2 rank-1 merge worked by hand") {
  // W = [[1 2] [3 4]], B = [[1] [2]], A = [[10 20]], s = 0.5:
  // s*B@A = [[5 10] [10 20]] -> [[6 12] [13 24]].
  Mat w(DType::kF32, 2, 2), a(DType::kF32, 1, 2), b(DType::kF32, 2, 1), dst(DType::kF32, 2, 2);
  w.Set(0, 0, 1), w.Set(0, 1, 2), w.Set(1, 0, 3), w.Set(1, 1, 4);
  a.Set(0, 0, 10), a.Set(0, 1, 20);
  b.Set(0, 0, 1), b.Set(1, 0, 2);
  LoraMergeOp op = PeftOp(w, a, b, dst, 0.5f);
  REQUIRE(CheckLoraOps(&op, 1).empty());
  LoraMergeCpu(&op, 1, 1);
  CHECK(dst.Get(0, 0) == 6);
  CHECK(dst.Get(0, 1) == 12);
  CHECK(dst.Get(1, 0) == 13);
  CHECK(dst.Get(1, 1) == 24);
}

// The stated bound (kernels/lora.h): |dst - exact| <= ulp(dst)/2 +
// gamma * (|W| + |s| * sum_k |B A|), gamma = (rank + 2) * 2^-24.
TEST_CASE("merge is within the stated bound of a double-precision reference") {
  std::mt19937 rng(42);
  const DType types[] = {DType::kF32, DType::kBF16, DType::kF16};
  for (DType wt : types) {
    for (DType ot : types) {
      for (int64_t rank : {1, 8, 64, 128}) {
        const int64_t out = 37, in = 53;
        Mat w = Random(wt, out, in, 1.0f, rng);
        Mat a = Random(DType::kBF16, rank, in, 0.5f, rng);
        Mat b = Random(DType::kBF16, out, rank, 0.5f, rng);
        Mat dst(ot, out, in);
        const float s = 2.0f / static_cast<float>(rank);
        LoraMergeOp op = PeftOp(w, a, b, dst, s);
        LoraMergeCpu(&op, 1, 2);
        const double gamma = (rank + 2) * std::ldexp(1.0, -24);
        double worst = 0;
        for (int64_t r = 0; r < out; ++r) {
          for (int64_t c = 0; c < in; ++c) {
            double exact = 0, mag = 0;
            for (int64_t k = 0; k < rank; ++k) {
              exact += static_cast<double>(b.Get(r, k)) * a.Get(k, c);
              mag += std::fabs(static_cast<double>(b.Get(r, k)) * a.Get(k, c));
            }
            exact = w.Get(r, c) + static_cast<double>(s) * exact;
            mag = std::fabs(w.Get(r, c)) + std::fabs(s) * mag;
            double got = dst.Get(r, c);
            double bound = Ulp(dst.Get(r, c), ot) / 2 + gamma * mag;
            worst = std::max(worst, std::fabs(got - exact) / bound);
          }
        }
        INFO(DTypeName(wt) << " -> " << DTypeName(ot) << " rank " << rank);
        CHECK(worst <= 1.0);
      }
    }
  }
}

TEST_CASE("PEFT and DeepSpeed conventions give bit-identical results") {
  std::mt19937 rng(3);
  const int64_t out = 64, in = 96, rank = 16;
  Mat w = Random(DType::kBF16, out, in, 1.0f, rng);
  Mat a = Random(DType::kF32, rank, in, 0.3f, rng);
  Mat b = Random(DType::kF32, out, rank, 0.3f, rng);
  // DeepSpeed: left [in, rank] = A^T, right [rank, out] = B^T.
  Mat left(DType::kF32, in, rank), right(DType::kF32, rank, out);
  for (int64_t k = 0; k < rank; ++k) {
    for (int64_t c = 0; c < in; ++c) left.Set(c, k, a.Get(k, c));
    for (int64_t r = 0; r < out; ++r) right.Set(k, r, b.Get(r, k));
  }
  Mat peft(DType::kBF16, out, in), ds(DType::kBF16, out, in);
  LoraMergeOp p = PeftOp(w, a, b, peft, 0.25f);
  LoraMergeOp d = p;
  d.a = left.bytes.data();
  d.a_k_stride = 1;
  d.a_col_stride = rank;
  d.b = right.bytes.data();
  d.b_row_stride = 1;
  d.b_k_stride = out;
  d.dst = ds.bytes.data();
  LoraMergeCpu(&p, 1, 1);
  LoraMergeCpu(&d, 1, 1);
  CHECK(peft.bytes == ds.bytes);
}

// Merge then unmerge: |W'' - W| <= ulp(W')/2 + ulp(W'')/2 + 2 gamma (|W| + 2 |s| sum|BA|).
TEST_CASE("merge followed by unmerge returns W within the stated bound") {
  std::mt19937 rng(9);
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    const int64_t out = 48, in = 40, rank = 32;
    Mat w = Random(t, out, in, 1.0f, rng);
    Mat a = Random(DType::kF32, rank, in, 0.2f, rng);
    Mat b = Random(DType::kF32, out, rank, 0.2f, rng);
    Mat merged(t, out, in), back(t, out, in);
    const float s = 0.5f;
    LoraMergeOp m = PeftOp(w, a, b, merged, s);
    LoraMergeCpu(&m, 1, 1);
    LoraMergeOp u = PeftOp(merged, a, b, back, -s);
    LoraMergeCpu(&u, 1, 1);
    const double gamma = (rank + 2) * std::ldexp(1.0, -24);
    double worst = 0;
    int64_t exact_count = 0;
    for (int64_t r = 0; r < out; ++r) {
      for (int64_t c = 0; c < in; ++c) {
        double mag = 0;
        for (int64_t k = 0; k < rank; ++k) mag += std::fabs(double(b.Get(r, k)) * a.Get(k, c));
        double bound = Ulp(merged.Get(r, c), t) / 2 + Ulp(back.Get(r, c), t) / 2 +
                       2 * gamma * (std::fabs(w.Get(r, c)) + 2 * std::fabs(s) * mag);
        double err = std::fabs(double(back.Get(r, c)) - w.Get(r, c));
        worst = std::max(worst, err / bound);
        exact_count += err == 0;
      }
    }
    INFO(DTypeName(t) << ": " << exact_count << " of " << out * in << " exact");
    CHECK(worst <= 1.0);
  }
}

TEST_CASE("in-place merge (dst == W) equals an out-of-place merge") {
  std::mt19937 rng(5);
  Mat w = Random(DType::kBF16, 33, 65, 1.0f, rng);
  Mat a = Random(DType::kBF16, 8, 65, 0.5f, rng);
  Mat b = Random(DType::kBF16, 33, 8, 0.5f, rng);
  Mat out(DType::kBF16, 33, 65);
  LoraMergeOp op = PeftOp(w, a, b, out, 1.5f);
  LoraMergeCpu(&op, 1, 1);
  LoraMergeOp in_place = PeftOp(w, a, b, w, 1.5f);
  LoraMergeCpu(&in_place, 1, 1);
  CHECK(w.bytes == out.bytes);
}

TEST_CASE("bad LoRA ops are rejected with a message") {
  LoraMergeOp op;
  CHECK(CheckLoraOps(&op, 1) == "lora op 0: null operand");
  float x = 0;
  op.w = op.a = op.b = &x;
  op.dst = &x;
  op.rows = 1;
  op.cols = 1;
  op.rank = 0;
  CHECK(CheckLoraOps(&op, 1) == "lora op 0: rows, cols and rank must be >= 1 (got 1, 1, 0)");
  op.rank = 1;
  op.a_dtype = DType::kF8E4M3;
  CHECK(CheckLoraOps(&op, 1) == "lora op 0: unsupported dtype fp8_e4m3 (fp32, bf16 or fp16)");
}

}  // namespace
}  // namespace wsync::kernels
