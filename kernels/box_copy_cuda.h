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

// Copies every op (device pointers) as BoxCopyCpu does, bit for bit. One
// launch covers all tiles (MakeBoxTiles, box_copy.h); rows move with 16-byte accesses where source and
// destination are aligned and of equal dtype.
cudaError_t LaunchBoxCopy(const BoxCopyOp* d_ops, const BoxTile* d_tiles, int num_tiles,
                          cudaStream_t stream);

// Adds the digest sums of every op's destination boxes (as BoxDigestCpu
// with word_base) into *d_sums (device, zeroed by the caller).
cudaError_t LaunchBoxDigest(const BoxCopyOp* d_ops, const uint64_t* d_word_base,
                            const BoxTile* d_tiles, int num_tiles, DigestSums* d_sums,
                            cudaStream_t stream);

// LaunchBoxCopy and LaunchBoxDigest in one pass over the destination: each
// tile is digested right after it is written (as BoxCopyDigestCpu).
cudaError_t LaunchBoxCopyDigest(const BoxCopyOp* d_ops, const uint64_t* d_word_base,
                                const BoxTile* d_tiles, int num_tiles, DigestSums* d_sums,
                                cudaStream_t stream);

// How LoRA merge computes B @ A.
enum class LoraMath {
  // One thread per output element, in the CPU reference's operation order:
  // bit-identical to LoraMergeCpu.
  kExact,
  // TF32 tensor cores, 3xTF32 split (sm_80+). Not bit-identical; bound
  // against exact arithmetic, with S = |scale| * sum_k |B[r,k] A[k,c]|:
  //   |dst - exact| <= ulp(dst)/2 + 2^-22 |W| + (rank + 4) 2^-21 S
  // (the CPU reference's bound has (rank + 2) 2^-24 S).
  kTensorCore,
};

// kTensorCore from rank 32 up, where it beats the exact kernel.
inline LoraMath DefaultLoraMath(int64_t max_rank) {
  return max_rank >= 32 ? LoraMath::kTensorCore : LoraMath::kExact;
}

// LoRA merge/unmerge of every op (device op array), reading W once and
// writing dst once. max_rows and max_cols bound every op's box (they size
// the grid).
cudaError_t LaunchLoraMerge(const LoraMergeOp* d_ops, int num_ops, int64_t max_rows, int64_t max_cols,
                            LoraMath math, cudaStream_t stream);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_BOX_COPY_CUDA_H_
