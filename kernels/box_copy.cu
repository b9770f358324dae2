#include <algorithm>

#include "kernels/box_copy.cuh"
#include "kernels/box_copy_cuda.h"
#include "kernels/lora_tc.cuh"

namespace wsync::kernels {

cudaError_t LaunchBoxCopy(const BoxCopyOp* d_ops, const BoxTile* d_tiles, int num_tiles,
                          cudaStream_t stream) {
  if (num_tiles == 0) return cudaSuccess;
  device::BoxCopyKernel<<<num_tiles, 256, 0, stream>>>(d_ops, d_tiles);
  return cudaGetLastError();
}

cudaError_t LaunchBoxDigest(const BoxCopyOp* d_ops, const uint64_t* d_word_base, const BoxTile* d_tiles,
                            int num_tiles, DigestSums* d_sums, cudaStream_t stream) {
  if (num_tiles == 0) return cudaSuccess;
  device::BoxDigestKernel<<<num_tiles, 256, 0, stream>>>(d_ops, d_word_base, d_tiles, d_sums);
  return cudaGetLastError();
}

cudaError_t LaunchBoxCopyDigest(const BoxCopyOp* d_ops, const uint64_t* d_word_base, const BoxTile* d_tiles,
                                int num_tiles, DigestSums* d_sums, cudaStream_t stream) {
  if (num_tiles == 0) return cudaSuccess;
  device::BoxCopyDigestKernel<<<num_tiles, 256, 0, stream>>>(d_ops, d_word_base, d_tiles, d_sums);
  return cudaGetLastError();
}

cudaError_t LaunchLoraMerge(const LoraMergeOp* d_ops, int num_ops, int64_t max_rows, int64_t max_cols,
                            LoraMath math, cudaStream_t stream) {
  if (num_ops == 0 || max_rows <= 0 || max_cols <= 0) return cudaSuccess;
  if (math == LoraMath::kTensorCore) {
    dim3 grid(static_cast<unsigned>((max_cols + device::kTcTile - 1) / device::kTcTile),
              static_cast<unsigned>((max_rows + device::kTcTile - 1) / device::kTcTile),
              static_cast<unsigned>(num_ops));
    device::LoraMergeTcKernel<<<grid, device::kTcThreads, 0, stream>>>(d_ops);
    return cudaGetLastError();
  }
  dim3 block(device::kLoraTile, device::kLoraThreadsY);
  dim3 grid(static_cast<unsigned>((max_cols + device::kLoraTile - 1) / device::kLoraTile),
            static_cast<unsigned>((max_rows + device::kLoraTile - 1) / device::kLoraTile),
            static_cast<unsigned>(num_ops));
  device::LoraMergeKernel<<<grid, block, 0, stream>>>(d_ops);
  return cudaGetLastError();
}

}  // namespace wsync::kernels
