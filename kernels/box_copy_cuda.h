#ifndef WSYNC_KERNELS_BOX_COPY_CUDA_H_
#define WSYNC_KERNELS_BOX_COPY_CUDA_H_

// CUDA versions of the box copy, box digest and LoRA merge, with the same
// op structs and the same results as the CPU references (box_copy.h,
// lora.h, digest.h). Launchers take device-resident op arrays and a stream
// and return the launch error; work completes asynchronously. Input checks
// are the CPU ones (CheckBoxCopyOps, CheckLoraOps): run them first.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/box_copy.h"
#include "kernels/digest.h"
#include "kernels/lora.h"

namespace wsync::kernels {

// A slice of rows of one op, processed by one thread block.
struct BoxTile {
  uint32_t op = 0;
  int64_t row_begin = 0, row_end = 0;
};

// Splits ops into tiles of about `rows_bytes` destination bytes (host side).
std::vector<BoxTile> MakeBoxTiles(const BoxCopyOp* ops, size_t n, uint64_t tile_bytes = 64 << 10);

// Copies every op (device pointers) as BoxCopyCpu does, bit for bit. One
// launch covers all tiles; rows move with 16-byte accesses where source and
// destination are aligned and of equal dtype.
cudaError_t LaunchBoxCopy(const BoxCopyOp* d_ops, const BoxTile* d_tiles, int num_tiles,
                          cudaStream_t stream);

// Adds the digest sums of every op's destination boxes (as BoxDigestCpu
// with word_base) into *d_sums (device, zeroed by the caller).
cudaError_t LaunchBoxDigest(const BoxCopyOp* d_ops, const uint64_t* d_word_base,
                            const BoxTile* d_tiles, int num_tiles, DigestSums* d_sums,
                            cudaStream_t stream);

// LoRA merge/unmerge of every op, bit-identical to LoraMergeCpu (same
// operation order, no fused multiply-add).
cudaError_t LaunchLoraMerge(const LoraMergeOp* d_ops, int num_ops, int64_t max_rows, int64_t max_cols,
                            cudaStream_t stream);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_BOX_COPY_CUDA_H_
