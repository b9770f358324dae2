// LowerLoraMerge, worked by hand: which factor elements the kernel op starts
// at and how it steps through them, for both storage conventions, checked
// against a naive merge of the same numbers.
#include "daemon/layout/lowering.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

namespace wsync::layout {
namespace {

// W [4, 6] fp32, LoRA rank 2; the op covers canonical rows 1..2, columns 3..5.
CopyOp Op() {
  CopyOp c;
  c.canonical.ndim = 2;
  c.canonical.off[0] = 1;
  c.canonical.off[1] = 3;
  c.canonical.size[0] = 2;
  c.canonical.size[1] = 3;
  return c;
}

// D over the op's box holds W (all ones) + 0.5 * B @ A with A[k][j] = 10k + j
// and B[i][k] = 100i + k, computed naively in double.
void CheckMerged(const std::vector<float>& D) {
  for (int i = 1; i < 3; ++i) {
    for (int j = 3; j < 6; ++j) {
      double want = 1.0;
      for (int k = 0; k < 2; ++k) want += 0.5 * (100.0 * i + k) * (10.0 * k + j);
      INFO(i << "," << j);
      CHECK(D[i * 6 + j] == Approx(want));
    }
  }
}

TEST_CASE("LowerLoraMerge: PEFT A [r, in], B [out, r]") {
  // A[k][j] = 10k + j, B[i][k] = 100i + k.
  std::vector<float> A(2 * 6), B(4 * 2), W(4 * 6, 1.0f), D(4 * 6, 0.0f);
  for (int k = 0; k < 2; ++k) for (int j = 0; j < 6; ++j) A[k * 6 + j] = 10 * k + j;
  for (int i = 0; i < 4; ++i) for (int k = 0; k < 2; ++k) B[i * 2 + k] = 100 * i + k;
  LoraFactors f{A.data(), DType::kF32, 6, B.data(), DType::kF32, 2, 2, false};
  const CopyOp c = Op();
  const MatrixView w{&W[1 * 6 + 3], 6, 1}, d{&D[1 * 6 + 3], 6, 1};
  kernels::LoraMergeOp m = LowerLoraMerge(c, f, w, DType::kF32, d, DType::kF32, 0.5f);
  // Starts at A[0][3] and B[1][0]; k steps a row of A, a column of B.
  CHECK(m.a == &A[3]);
  CHECK(m.a_k_stride == 6);
  CHECK(m.a_col_stride == 1);
  CHECK(m.b == &B[2]);
  CHECK(m.b_row_stride == 2);
  CHECK(m.b_k_stride == 1);
  CHECK(m.rows == 2);
  CHECK(m.cols == 3);
  CHECK(m.rank == 2);
  REQUIRE(kernels::CheckLoraOps(&m, 1).empty());
  kernels::LoraMergeCpu(&m, 1, 1);
  CheckMerged(D);
  CHECK(D[0] == 0.0f);  // outside the box: untouched
}

TEST_CASE("LowerLoraMerge: transposed (DeepSpeed) A^T [in, r], B^T [r, out], bf16 factors") {
  // The same A and B as above, stored transposed, in bf16 (the values are
  // small integers, exact in bf16).
  auto bf16 = [](float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return static_cast<uint16_t>(u >> 16);
  };
  std::vector<uint16_t> AT(6 * 2), BT(2 * 4);
  for (int k = 0; k < 2; ++k) for (int j = 0; j < 6; ++j) AT[j * 2 + k] = bf16(10 * k + j);
  for (int i = 0; i < 4; ++i) for (int k = 0; k < 2; ++k) BT[k * 4 + i] = bf16(100 * i + k);
  std::vector<float> W(4 * 6, 1.0f), D(4 * 6, 0.0f);
  LoraFactors f{AT.data(), DType::kBF16, 2, BT.data(), DType::kBF16, 4, 2, true};
  const CopyOp c = Op();
  kernels::LoraMergeOp m =
      LowerLoraMerge(c, f, {&W[9], 6, 1}, DType::kF32, {&D[9], 6, 1}, DType::kF32, 0.5f);
  // Starts at A^T[3][0] and B^T[0][1]; k steps along a row of A^T, down a column of B^T.
  CHECK(m.a == &AT[3 * 2]);
  CHECK(m.a_k_stride == 1);
  CHECK(m.a_col_stride == 2);
  CHECK(m.b == &BT[1]);
  CHECK(m.b_row_stride == 1);
  CHECK(m.b_k_stride == 4);
  REQUIRE(kernels::CheckLoraOps(&m, 1).empty());
  kernels::LoraMergeCpu(&m, 1, 1);
  CheckMerged(D);
}

}  // namespace
}  // namespace wsync::layout
