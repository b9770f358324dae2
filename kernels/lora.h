#ifndef WSYNC_KERNELS_LORA_H_
#define WSYNC_KERNELS_LORA_H_

// LoRA merge and unmerge over a 2-d box of a weight:
//
//   dst[r, c] = W[r, c] + scale * sum_k B[r, k] * A[k, c]
//
// for r < rows, c < cols, k < rank. Unmerge is the same op with -scale.
// Every operand has its own dtype and element strides, so one op covers
// the PEFT convention (A [rank, in], B [out, rank]: a_k_stride = in,
// a_col_stride = 1, b_row_stride = rank, b_k_stride = 1) and DeepSpeed's
// (left [in, rank] = A^T, right [rank, out] = B^T: a_k_stride = 1,
// a_col_stride = rank, b_row_stride = 1, b_k_stride = out), and a box of a
// sharded weight (pass B's first row and A's first column of the box).
//
// Arithmetic (the CPU reference; the CUDA version follows it where it can):
//   acc = 0 (fp32); for k = 0 .. rank-1: acc = acc + B[r,k] * A[k,c]
//   out = W[r,c] + scale * acc        (fp32, each operation rounded)
//   dst = out rounded once to dst_dtype (kernels/dtype.h).
// Operands are widened to fp32 exactly. Error bound against exact
// arithmetic: |dst - exact| <= ulp(dst)/2 + gamma * (|W| + |scale| * sum_k |B A|)
// with gamma = (rank + 2) * 2^-24.

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace wsync::kernels {

struct LoraMergeOp {
  const void* w = nullptr;  // W[0, 0] of the box
  DType w_dtype = DType::kF32;
  int64_t w_row_stride = 0, w_col_stride = 1;
  const void* a = nullptr;  // A[0, c0]: k = 0, first column of the box
  DType a_dtype = DType::kF32;
  int64_t a_k_stride = 0, a_col_stride = 1;
  const void* b = nullptr;  // B[r0, 0]: first row of the box, k = 0
  DType b_dtype = DType::kF32;
  int64_t b_row_stride = 0, b_k_stride = 1;
  void* dst = nullptr;  // may equal w (in-place) when strides and dtype match
  DType dst_dtype = DType::kF32;
  int64_t dst_row_stride = 0, dst_col_stride = 1;
  int64_t rows = 0, cols = 0, rank = 0;
  float scale = 1.0f;  // alpha / r; negative to unmerge
};

// Input checks kept apart from the math: non-null operands, rows, cols,
// rank >= 1, supported dtypes. Returns "" when valid, else a message.
std::string CheckLoraOps(const LoraMergeOp* ops, size_t n);

// CPU reference: runs every op (rows split over up to `threads` threads).
void LoraMergeCpu(const LoraMergeOp* ops, size_t n, int threads);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_LORA_H_
