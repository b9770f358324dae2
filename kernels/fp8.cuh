#ifndef WSYNC_KERNELS_FP8_CUH_
#define WSYNC_KERNELS_FP8_CUH_

// Scaled FP8 quantization: one thread block per quantization block. The
// block's amax is reduced in shared memory, thread 0 writes the scale, then
// every element is divided by it and rounded with F32ToE4m3 (kernels/fp8.h),
// so the bytes and scales equal QuantizeFp8Cpu's.

#include <cuda_runtime.h>

#include "kernels/fp8.h"

namespace wsync::kernels {

__device__ __forceinline__ float Fp8Load(const Fp8QuantOp& op, int64_t i) {
  switch (op.src_dtype) {
    case DType::kF32: return static_cast<const float*>(op.src)[i];
    case DType::kBF16: return Bf16ToF32(static_cast<const uint16_t*>(op.src)[i]);
    default: return F16ToF32(static_cast<const uint16_t*>(op.src)[i]);
  }
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads) QuantizeFp8Kernel(const Fp8QuantOp* __restrict__ ops,
                                                              const Fp8Block* __restrict__ blocks,
                                                              unsigned long long* first_bad) {
  const Fp8Block b = blocks[blockIdx.x];
  const Fp8QuantOp& op = ops[b.op];
  const int64_t r0 = b.bi * op.block_rows, c0 = b.bj * op.block_cols;
  const int64_t h = min(op.rows, r0 + op.block_rows) - r0;
  const int64_t w = min(op.cols, c0 + op.block_cols) - c0;
  const int64_t n = h * w;
  float amax = 0.0f;
  for (int64_t l = threadIdx.x; l < n; l += kThreads) {
    const float v = Fp8Load(op, (r0 + l / w) * op.src_ld + c0 + l % w);
    if (!isfinite(v)) atomicMin(first_bad, static_cast<unsigned long long>(Fp8BadKey(blockIdx.x, l)));
    amax = fmaxf(amax, fabsf(v));
  }
  __shared__ float s_max[kThreads];
  __shared__ float s_scale;
  s_max[threadIdx.x] = amax;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) s_max[threadIdx.x] = fmaxf(s_max[threadIdx.x], s_max[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const float m = s_max[0];
    s_scale = m == 0.0f ? 1.0f : __fdiv_rn(m, kE4m3Max);
    op.scale_inv[b.bi * op.scale_ld + b.bj] = s_scale;
  }
  __syncthreads();
  const float scale = s_scale;
  for (int64_t l = threadIdx.x; l < n; l += kThreads) {
    const int64_t r = r0 + l / w, c = c0 + l % w;
    op.dst[r * op.dst_ld + c] = F32ToE4m3(__fdiv_rn(Fp8Load(op, r * op.src_ld + c), scale));
  }
}

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_FP8_CUH_
