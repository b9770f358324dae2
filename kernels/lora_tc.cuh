#ifndef WSYNC_KERNELS_LORA_TC_CUH_
#define WSYNC_KERNELS_LORA_TC_CUH_

// Tensor-core LoRA merge (sm_80+): dst = W + scale * (B @ A) with B @ A on
// TF32 tensor cores in the "3xTF32" split (x = hi + lo, both TF32; the
// product is hi*hi + hi*lo + lo*hi), which keeps the product close to fp32
// accuracy. Error bound: see LoraMath::kTensorCore in box_copy_cuda.h.
//
// One block of 4 warps computes a 64 x 64 output tile; each warp owns a
// 32 x 32 quarter (2 x 2 fragments of 16 x 16). B and A are staged through
// shared memory 32 ranks at a time, widened to fp32 with any dtype and
// stride; the epilogue reads W once and writes dst once (the merge is fused
// with the copy of W).

#include <mma.h>

#include <cstdint>

#include "kernels/box_copy_cuda.h"
#include "kernels/dtype.h"

namespace wsync::kernels::device {

inline constexpr int kTcTile = 64;
inline constexpr int kTcK = 32;
inline constexpr int kTcThreads = 128;

__device__ __forceinline__ void SplitTf32(float x, float* hi, float* lo) {
  const float h = nvcuda::wmma::__float_to_tf32(x);
  *hi = h;
  *lo = nvcuda::wmma::__float_to_tf32(x - h);
}

__global__ void __launch_bounds__(kTcThreads) LoraMergeTcKernel(const LoraMergeOp* __restrict__ ops) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  const LoraMergeOp op = ops[blockIdx.z];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTcTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTcTile;
  if (r0 >= op.rows || c0 >= op.cols) return;  // uniform per block

  // Leading dimensions padded to keep fragment pointers 32-byte aligned and
  // spread shared-memory banks.
  constexpr int kLdB = kTcK + 4;     // Bs[row][k]
  constexpr int kLdA = kTcTile + 4;  // As[k][col], Cs[row][col]
  __shared__ __align__(32) float Bs[kTcTile * kLdB];
  __shared__ __align__(32) float As[kTcK * kLdA];
  __shared__ __align__(32) float Cs[kTcTile * kLdA];

  const int warp = threadIdx.x / 32;
  const int wr = (warp / 2) * 32, wc = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < op.rank; k0 += kTcK) {
    for (int idx = threadIdx.x; idx < kTcTile * kTcK; idx += kTcThreads) {
      const int i = idx / kTcK, k = idx % kTcK;
      const int64_t r = r0 + i, kk = k0 + k;
      Bs[i * kLdB + k] = (r < op.rows && kk < op.rank)
                             ? LoadAsF32(op.b, op.b_dtype, r * op.b_row_stride + kk * op.b_k_stride)
                             : 0.0f;
    }
    for (int idx = threadIdx.x; idx < kTcK * kTcTile; idx += kTcThreads) {
      const int k = idx / kTcTile, j = idx % kTcTile;
      const int64_t c = c0 + j, kk = k0 + k;
      As[k * kLdA + j] = (c < op.cols && kk < op.rank)
                             ? LoadAsF32(op.a, op.a_dtype, kk * op.a_k_stride + c * op.a_col_stride)
                             : 0.0f;
    }
    __syncthreads();
    for (int ks = 0; ks < kTcK; ks += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bh[2], bl[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> ah[2], al[2];
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(bh[i], Bs + (wr + 16 * i) * kLdB + ks, kLdB);
        for (int t = 0; t < bh[i].num_elements; ++t) SplitTf32(bh[i].x[t], &bh[i].x[t], &bl[i].x[t]);
      }
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(ah[j], As + ks * kLdA + wc + 16 * j, kLdA);
        for (int t = 0; t < ah[j].num_elements; ++t) SplitTf32(ah[j].x[t], &ah[j].x[t], &al[j].x[t]);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          wmma::mma_sync(acc[i][j], bl[i], ah[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], bh[i], al[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], bh[i], ah[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wr + 16 * i) * kLdA + wc + 16 * j, acc[i][j], kLdA, wmma::mem_row_major);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kTcTile * kTcTile; idx += kTcThreads) {
    const int i = idx / kTcTile, j = idx % kTcTile;
    const int64_t r = r0 + i, c = c0 + j;
    if (r >= op.rows || c >= op.cols) continue;
    const float w = LoadAsF32(op.w, op.w_dtype, r * op.w_row_stride + c * op.w_col_stride);
    StoreFromF32(op.dst, op.dst_dtype, r * op.dst_row_stride + c * op.dst_col_stride,
                 __fadd_rn(w, __fmul_rn(op.scale, Cs[i * kLdA + j])));
  }
#endif
}

}  // namespace wsync::kernels::device

#endif  // WSYNC_KERNELS_LORA_TC_CUH_
