#include <algorithm>

#include "kernels/box_copy.cuh"
#include "kernels/box_copy_cuda.h"
#include "kernels/lora_tc.cuh"

namespace wsync::kernels {

std::vector<BoxTile> MakeBoxTiles(const BoxCopyOp* ops, size_t n, uint64_t tile_bytes) {
  std::vector<BoxTile> tiles;
  for (size_t i = 0; i < n; ++i) {
    int64_t rows = 1;
    for (int d = 0; d + 1 < ops[i].ndim; ++d) rows *= ops[i].extent[d];
    const uint64_t row_bytes =
        static_cast<uint64_t>(ops[i].extent[ops[i].ndim - 1]) * DTypeSize(ops[i].dst_dtype);
    const int64_t per = std::max<int64_t>(1, static_cast<int64_t>(tile_bytes / std::max<uint64_t>(row_bytes, 1)));
    for (int64_t r = 0; r < rows; r += per) {
      tiles.push_back({static_cast<uint32_t>(i), r, std::min(rows, r + per)});
    }
  }
  return tiles;
}

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
  dim3 block(32, 8);
  dim3 grid(static_cast<unsigned>((max_cols + 31) / 32), static_cast<unsigned>((max_rows + 7) / 8),
            static_cast<unsigned>(num_ops));
  device::LoraMergeKernel<<<grid, block, 0, stream>>>(d_ops);
  return cudaGetLastError();
}

}  // namespace wsync::kernels
