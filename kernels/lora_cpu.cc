#include <algorithm>
#include <vector>

#include "kernels/lora.h"
#include "kernels/parallel.h"

namespace wsync::kernels {

std::string CheckLoraOps(const LoraMergeOp* ops, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const LoraMergeOp& op = ops[i];
    std::string where = "lora op " + std::to_string(i) + ": ";
    if (!op.w || !op.a || !op.b || !op.dst) return where + "null operand";
    if (op.rows < 1 || op.cols < 1 || op.rank < 1) {
      return where + "rows, cols and rank must be >= 1 (got " + std::to_string(op.rows) + ", " +
             std::to_string(op.cols) + ", " + std::to_string(op.rank) + ")";
    }
    for (DType t : {op.w_dtype, op.a_dtype, op.b_dtype, op.dst_dtype}) {
      if (t != DType::kF32 && t != DType::kBF16 && t != DType::kF16) {
        return where + "unsupported dtype " + DTypeName(t) + " (fp32, bf16 or fp16)";
      }
    }
  }
  return "";
}

void LoraMergeCpu(const LoraMergeOp* ops, size_t n, int threads) {
  for (size_t i = 0; i < n; ++i) {
    const LoraMergeOp& op = ops[i];
    // A widened once to fp32, row-major [rank, cols].
    std::vector<float> a(static_cast<size_t>(op.rank * op.cols));
    for (int64_t k = 0; k < op.rank; ++k) {
      for (int64_t c = 0; c < op.cols; ++c) {
        a[k * op.cols + c] = LoadAsF32(op.a, op.a_dtype, k * op.a_k_stride + c * op.a_col_stride);
      }
    }
    const int64_t rows_per_task = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(op.cols, 1));
    const size_t tasks = static_cast<size_t>((op.rows + rows_per_task - 1) / rows_per_task);
    const bool big = op.rows * op.cols * std::max<int64_t>(op.rank, 8) >= (1 << 22);
    ParallelFor(tasks, big ? threads : 1, [&](size_t t) {
      std::vector<float> acc(static_cast<size_t>(op.cols));
      const int64_t r0 = static_cast<int64_t>(t) * rows_per_task;
      const int64_t r1 = std::min(op.rows, r0 + rows_per_task);
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t k = 0; k < op.rank; ++k) {
          const float bk = LoadAsF32(op.b, op.b_dtype, r * op.b_row_stride + k * op.b_k_stride);
          const float* ak = a.data() + k * op.cols;
          for (int64_t c = 0; c < op.cols; ++c) acc[c] = acc[c] + bk * ak[c];
        }
        for (int64_t c = 0; c < op.cols; ++c) {
          const float w = LoadAsF32(op.w, op.w_dtype, r * op.w_row_stride + c * op.w_col_stride);
          const float delta = op.scale * acc[c];
          StoreFromF32(op.dst, op.dst_dtype, r * op.dst_row_stride + c * op.dst_col_stride,
                       w + delta);
        }
      }
    });
  }
}

}  // namespace wsync::kernels
