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

inline float ToF32(float x) { return x; }
struct Bf16Bits {
  uint16_t v;
};
struct F16Bits {
  uint16_t v;
};
inline float ToF32(Bf16Bits x) { return Bf16ToF32(x.v); }
inline float ToF32(F16Bits x) { return F16ToF32(x.v); }

// Quantizes block `k` of elements of type T; returns kFp8AllFinite or the
// key of the first non-finite element (row-major), leaving the block
// unwritten. The amax scan carries no branch (a block with a non-finite
// element is scanned again for the first one); the rounding still does.
template <typename T>
uint64_t QuantizeBlockOf(const Fp8QuantOp& op, const T* src, const Fp8Block& b, uint64_t k) {
  const int64_t r0 = b.bi * op.block_rows, r1 = std::min(op.rows, r0 + op.block_rows);
  const int64_t c0 = b.bj * op.block_cols, c1 = std::min(op.cols, c0 + op.block_cols);
  float amax = 0.0f;
  bool finite = true;
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = src + r * op.src_ld;
    for (int64_t c = c0; c < c1; ++c) {
      const float a = std::fabs(ToF32(row[c]));
      finite &= a <= 3.4028234663852886e38f;  // false for NaN and infinity
      amax = a > amax ? a : amax;
    }
  }
  if (!finite) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = c0; c < c1; ++c) {
        if (!std::isfinite(ToF32(src[r * op.src_ld + c]))) {
          return Fp8BadKey(k, static_cast<uint64_t>((r - r0) * (c1 - c0) + (c - c0)));
        }
      }
    }
  }
  const float scale_inv = amax == 0.0f ? 1.0f : amax / kE4m3Max;
  op.scale_inv[b.bi * op.scale_ld + b.bj] = scale_inv;
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = src + r * op.src_ld;
    uint8_t* out = op.dst + r * op.dst_ld;
    for (int64_t c = c0; c < c1; ++c) out[c] = F32ToE4m3(ToF32(row[c]) / scale_inv);
  }
  return kFp8AllFinite;
}

uint64_t QuantizeBlock(const Fp8QuantOp& op, const Fp8Block& b, uint64_t k) {
  switch (op.src_dtype) {
    case DType::kF32: return QuantizeBlockOf(op, static_cast<const float*>(op.src), b, k);
    case DType::kBF16: return QuantizeBlockOf(op, static_cast<const Bf16Bits*>(op.src), b, k);
    default: return QuantizeBlockOf(op, static_cast<const F16Bits*>(op.src), b, k);
  }
}

}  // namespace

std::string CheckFp8QuantOps(const Fp8QuantOp* ops, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const Fp8QuantOp& op = ops[i];
    if (op.src_dtype != DType::kF32 && op.src_dtype != DType::kBF16 && op.src_dtype != DType::kF16) {
      return Where(i) + "source dtype " + DTypeName(op.src_dtype) + " is not fp32, bf16 or fp16";
    }
    if (op.rows < 1 || op.cols < 1) {
      return Where(i) + "shape [" + std::to_string(op.rows) + ", " + std::to_string(op.cols) + "] is empty";
    }
    if (op.block_rows < 1 || op.block_cols < 1) {
      return Where(i) + "block [" + std::to_string(op.block_rows) + ", " + std::to_string(op.block_cols) +
             "] is empty";
    }
    if (op.src == nullptr || op.dst == nullptr || op.scale_inv == nullptr) return Where(i) + "null pointer";
    const int64_t bh = std::min(op.rows, op.block_rows), bw = std::min(op.cols, op.block_cols);
    const int64_t nblocks = ((op.rows + op.block_rows - 1) / op.block_rows) * ((op.cols + op.block_cols - 1) / op.block_cols);
    if (bh > (int64_t{1} << 40) / bw || nblocks > (int64_t{1} << 24)) {
      return Where(i) + std::to_string(nblocks) + " blocks of up to " + std::to_string(bh) + " x " + std::to_string(bw) +
             " elements: more than 2^24 blocks or 2^40 elements in a block";
    }
    const int64_t scale_cols = (op.cols + op.block_cols - 1) / op.block_cols;
    if (op.src_ld < op.cols || op.dst_ld < op.cols || op.scale_ld < scale_cols) {
      return Where(i) + "row strides (source " + std::to_string(op.src_ld) + ", fp8 " + std::to_string(op.dst_ld) +
             ", scales " + std::to_string(op.scale_ld) + ") shorter than the rows (" + std::to_string(op.cols) +
             " elements, " + std::to_string(scale_cols) + " scales)";
    }
  }
  return "";
}

std::vector<Fp8Block> MakeFp8Blocks(const Fp8QuantOp* ops, size_t n) {
  std::vector<Fp8Block> blocks;
  for (size_t i = 0; i < n; ++i) {
    const int64_t br = (ops[i].rows + ops[i].block_rows - 1) / ops[i].block_rows;
    const int64_t bc = (ops[i].cols + ops[i].block_cols - 1) / ops[i].block_cols;
    for (int64_t bi = 0; bi < br; ++bi) {
      for (int64_t bj = 0; bj < bc; ++bj) blocks.push_back({static_cast<uint32_t>(i), bi, bj});
    }
  }
  return blocks;
}

bool Fp8BadElement(const Fp8QuantOp* ops, const std::vector<Fp8Block>& blocks, uint64_t key, Fp8Element* e) {
  const uint64_t k = key >> 40, l = key & ((1ull << 40) - 1);
  if (k >= blocks.size()) return false;
  const Fp8Block& b = blocks[k];
  const Fp8QuantOp& op = ops[b.op];
  const int64_t r0 = b.bi * op.block_rows, c0 = b.bj * op.block_cols;
  const int64_t width = std::min(op.cols, c0 + op.block_cols) - c0;
  const int64_t height = std::min(op.rows, r0 + op.block_rows) - r0;
  if (l >= static_cast<uint64_t>(width * height)) return false;
  *e = {b.op, r0 + static_cast<int64_t>(l) / width, c0 + static_cast<int64_t>(l) % width};
  return true;
}

std::string Fp8BadMessage(const Fp8Element& e, float value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", value);
  return Where(e.op) + "element (" + std::to_string(e.row) + ", " + std::to_string(e.col) + ") is " + buf +
         "; FP8 scales need finite weights";
}

std::string QuantizeFp8Cpu(const Fp8QuantOp* ops, size_t n, int threads) {
  const std::vector<Fp8Block> blocks = MakeFp8Blocks(ops, n);
  std::vector<uint64_t> bad(blocks.size(), kFp8AllFinite);
  ParallelFor(blocks.size(), threads, [&](size_t k) { bad[k] = QuantizeBlock(ops[blocks[k].op], blocks[k], k); });
  for (uint64_t key : bad) {
    if (key == kFp8AllFinite) continue;
    Fp8Element e;
    if (!Fp8BadElement(ops, blocks, key, &e)) return "fp8 quantization: internal error: bad element key";
    const Fp8QuantOp& op = ops[e.op];
    return Fp8BadMessage(e, Load(op.src, op.src_dtype, e.row * op.src_ld + e.col));
  }
  return "";
}

void DequantizeFp8Cpu(const uint8_t* q, const float* scale_inv, int64_t rows, int64_t cols, int64_t block_rows,
                      int64_t block_cols, float* out) {
  const int64_t scale_cols = (cols + block_cols - 1) / block_cols;
  for (int64_t r = 0; r < rows; ++r) {
    const float* srow = scale_inv + (r / block_rows) * scale_cols;
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = E4m3ToF32(q[r * cols + c]) * srow[c / block_cols];
  }
}

}  // namespace wsync::kernels
