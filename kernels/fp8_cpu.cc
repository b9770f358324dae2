#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/parallel.h"

namespace wsync::kernels {
namespace {

float Load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kBF16: return Bf16ToF32(static_cast<const uint16_t*>(p)[i]);
    default: return F16ToF32(static_cast<const uint16_t*>(p)[i]);
  }
}

std::string Where(size_t i) { return "fp8 quantization op " + std::to_string(i) + ": "; }

// Quantizes block (bi, bj) of `op`; returns "" or what was not finite.
std::string QuantizeBlock(const Fp8QuantOp& op, int64_t bi, int64_t bj) {
  const int64_t r0 = bi * op.block_rows, r1 = std::min(op.rows, r0 + op.block_rows);
  const int64_t c0 = bj * op.block_cols, c1 = std::min(op.cols, c0 + op.block_cols);
  float amax = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      const float w = Load(op.src, op.src_dtype, r * op.src_ld + c);
      if (!std::isfinite(w)) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%g", w);
        return "element (" + std::to_string(r) + ", " + std::to_string(c) + ") is " + buf +
               "; FP8 scales need finite weights";
      }
      amax = std::max(amax, std::fabs(w));
    }
  }
  const float scale_inv = amax == 0.0f ? 1.0f : amax / kE4m3Max;
  op.scale_inv[bi * op.scale_ld + bj] = scale_inv;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      op.dst[r * op.dst_ld + c] = F32ToE4m3(Load(op.src, op.src_dtype, r * op.src_ld + c) / scale_inv);
    }
  }
  return "";
}

}  // namespace

std::string CheckFp8QuantOps(const Fp8QuantOp* ops, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const Fp8QuantOp& op = ops[i];
    if (op.src_dtype != DType::kF32 && op.src_dtype != DType::kBF16 && op.src_dtype != DType::kF16) {
      return Where(i) + "source dtype " + std::to_string(static_cast<int>(op.src_dtype)) +
             " is not fp32, bf16 or fp16";
    }
    if (op.rows < 1 || op.cols < 1) {
      return Where(i) + "shape [" + std::to_string(op.rows) + ", " + std::to_string(op.cols) + "] is empty";
    }
    if (op.block_rows < 1 || op.block_cols < 1) {
      return Where(i) + "block [" + std::to_string(op.block_rows) + ", " + std::to_string(op.block_cols) +
             "] is empty";
    }
    if (op.src == nullptr || op.dst == nullptr || op.scale_inv == nullptr) return Where(i) + "null pointer";
    const int64_t scale_cols = (op.cols + op.block_cols - 1) / op.block_cols;
    if (op.src_ld < op.cols || op.dst_ld < op.cols || op.scale_ld < scale_cols) {
      return Where(i) + "row strides (source " + std::to_string(op.src_ld) + ", fp8 " + std::to_string(op.dst_ld) +
             ", scales " + std::to_string(op.scale_ld) + ") shorter than the rows (" + std::to_string(op.cols) +
             " elements, " + std::to_string(scale_cols) + " scales)";
    }
  }
  return "";
}

std::string QuantizeFp8Cpu(const Fp8QuantOp* ops, size_t n, int threads) {
  struct Block {
    size_t op;
    int64_t bi, bj;
  };
  std::vector<Block> blocks;
  for (size_t i = 0; i < n; ++i) {
    const int64_t br = (ops[i].rows + ops[i].block_rows - 1) / ops[i].block_rows;
    const int64_t bc = (ops[i].cols + ops[i].block_cols - 1) / ops[i].block_cols;
    for (int64_t bi = 0; bi < br; ++bi) {
      for (int64_t bj = 0; bj < bc; ++bj) blocks.push_back({i, bi, bj});
    }
  }
  std::vector<std::string> errors(blocks.size());
  ParallelFor(blocks.size(), threads, [&](size_t k) {
    errors[k] = QuantizeBlock(ops[blocks[k].op], blocks[k].bi, blocks[k].bj);
  });
  for (size_t k = 0; k < blocks.size(); ++k) {
    if (!errors[k].empty()) return Where(blocks[k].op) + errors[k];
  }
  return "";
}

}  // namespace wsync::kernels
