#ifndef WSYNC_KERNELS_BOX_COPY_CUH_
#define WSYNC_KERNELS_BOX_COPY_CUH_

// Device code of the batched box copy, box digest and LoRA merge. The
// element conversions are those of dtype.h, shared with the CPU references.

#include <cstdint>

#include "kernels/box_copy_cuda.h"
#include "kernels/digest.h"
#include "kernels/dtype.h"

namespace wsync::kernels::device {

__device__ __forceinline__ void RowOffsets(const BoxCopyOp& op, int64_t row, int64_t* so, int64_t* dof) {
  int64_t s = 0, t = 0;
  for (int d = op.ndim - 2; d >= 0; --d) {
    const int64_t idx = row % op.extent[d];
    row /= op.extent[d];
    s += idx * op.src_stride[d];
    t += idx * op.dst_stride[d];
  }
  *so = s;
  *dof = t;
}

__device__ __forceinline__ void CopyElement(const BoxCopyOp& op, int64_t si, int64_t di) {
  if (op.src == nullptr) {
    switch (DTypeSize(op.dst_dtype)) {
      case 4: static_cast<uint32_t*>(op.dst)[di] = 0; break;
      case 2: static_cast<uint16_t*>(op.dst)[di] = 0; break;
      default: static_cast<uint8_t*>(op.dst)[di] = 0; break;
    }
    return;
  }
  if (op.src_dtype == op.dst_dtype) {
    switch (DTypeSize(op.dst_dtype)) {
      case 4: static_cast<uint32_t*>(op.dst)[di] = static_cast<const uint32_t*>(op.src)[si]; break;
      case 2: static_cast<uint16_t*>(op.dst)[di] = static_cast<const uint16_t*>(op.src)[si]; break;
      default: static_cast<uint8_t*>(op.dst)[di] = static_cast<const uint8_t*>(op.src)[si]; break;
    }
    return;
  }
  StoreFromF32(op.dst, op.dst_dtype, di, LoadAsF32(op.src, op.src_dtype, si));
}

// Copies one tile; the block's threads stride over the tile's columns of
// each of its rows.
__device__ __forceinline__ void CopyTile(const BoxCopyOp& op, const BoxTile& tile) {
  const int last = op.ndim - 1;
  const int64_t c0 = tile.col_begin, c1 = tile.col_end;
  const int esz = DTypeSize(op.dst_dtype);
  for (int64_t r = tile.row_begin; r < tile.row_end; ++r) {
    int64_t so, dof;
    RowOffsets(op, r, &so, &dof);
    const bool contiguous = op.src_stride[last] == 1 && op.dst_stride[last] == 1;
    if (contiguous && op.src != nullptr && op.src_dtype == op.dst_dtype) {
      const char* s = static_cast<const char*>(op.src) + (so + c0) * esz;
      char* d = static_cast<char*>(op.dst) + (dof + c0) * esz;
      const int64_t bytes = (c1 - c0) * esz;
      if ((reinterpret_cast<uintptr_t>(s) & 15) == 0 && (reinterpret_cast<uintptr_t>(d) & 15) == 0) {
        const int64_t vec = bytes / 16;
        for (int64_t i = threadIdx.x; i < vec; i += blockDim.x) {
          reinterpret_cast<uint4*>(d)[i] = reinterpret_cast<const uint4*>(s)[i];
        }
        for (int64_t i = vec * 16 + threadIdx.x; i < bytes; i += blockDim.x) d[i] = s[i];
        continue;
      }
    }
    for (int64_t i = c0 + threadIdx.x; i < c1; i += blockDim.x) {
      CopyElement(op, so + i * op.src_stride[last], dof + i * op.dst_stride[last]);
    }
  }
}

// Adds this thread's digest terms of the tile's destination words to *s1,
// *s2. Each thread handles whole 8-byte words of a row (the row zero-padded
// to a word multiple). A row contiguous in the destination is read a word
// at a time where the word is 8-byte aligned and whole, byte by byte
// elsewhere.
__device__ __forceinline__ void DigestTile(const BoxCopyOp& op, const BoxTile& tile, uint64_t word_base, uint64_t* s1,
                                           uint64_t* s2) {
  const int last = op.ndim - 1;
  const int64_t n = op.extent[last];
  const int esz = DTypeSize(op.dst_dtype);
  const int esz_shift = esz == 4 ? 2 : esz == 2 ? 1 : 0;
  const int64_t row_bytes = n * esz;
  const int64_t row_words = (row_bytes + 7) / 8;
  const int64_t whole_words = row_bytes / 8;
  // The tile's words: its first column starts a word (MakeBoxTiles), its
  // last column ends one or the row.
  const int64_t w0 = tile.col_begin * esz / 8;
  const int64_t w1 = tile.col_end == n ? row_words : tile.col_end * esz / 8;
  const bool contiguous = op.dst_stride[last] == 1;
  for (int64_t r = tile.row_begin; r < tile.row_end; ++r) {
    int64_t so, dof;
    RowOffsets(op, r, &so, &dof);
    const unsigned char* row = static_cast<const unsigned char*>(op.dst);
    const unsigned char* first = row + dof * esz;
    const bool aligned = contiguous && (reinterpret_cast<uintptr_t>(first) & 7) == 0;
    for (int64_t w = w0 + threadIdx.x; w < w1; w += blockDim.x) {
      uint64_t word = 0;
      if (aligned && w < whole_words) {
        word = reinterpret_cast<const uint64_t*>(first)[w];
      } else if (contiguous) {
        for (int b = 0; b < 8; ++b) {
          const int64_t byte = w * 8 + b;
          if (byte >= row_bytes) break;
          word |= static_cast<uint64_t>(first[byte]) << (8 * b);
        }
      } else {
        for (int b = 0; b < 8; ++b) {
          const int64_t byte = w * 8 + b;
          if (byte >= row_bytes) break;
          const int64_t elem = byte >> esz_shift, within = byte & (esz - 1);
          const unsigned char v = row[(dof + elem * op.dst_stride[last]) * esz + within];
          word |= static_cast<uint64_t>(v) << (8 * b);
        }
      }
      const uint64_t idx = word_base + r * row_words + w;
      *s1 += DigestG1(word ^ (idx * kDigestK1));
      *s2 += DigestG2(word + (idx + 1) * kDigestK2);
    }
  }
}

// Adds the block's sums into *sums: a warp reduction, then one atomic pair
// per warp (the sums are modular, so the order does not matter).
__device__ __forceinline__ void AddSums(DigestSums* sums, uint64_t s1, uint64_t s2) {
  for (int off = 16; off > 0; off >>= 1) {
    s1 += __shfl_down_sync(0xffffffffu, s1, off);
    s2 += __shfl_down_sync(0xffffffffu, s2, off);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(&sums->s1), static_cast<unsigned long long>(s1));
    atomicAdd(reinterpret_cast<unsigned long long*>(&sums->s2), static_cast<unsigned long long>(s2));
  }
}

// One block per tile.
__global__ void BoxCopyKernel(const BoxCopyOp* __restrict__ ops, const BoxTile* __restrict__ tiles) {
  const BoxTile tile = tiles[blockIdx.x];
  CopyTile(ops[tile.op], tile);
}

// Digest of the destination boxes as they are in memory.
__global__ void BoxDigestKernel(const BoxCopyOp* __restrict__ ops, const uint64_t* __restrict__ word_base,
                                const BoxTile* __restrict__ tiles, DigestSums* sums) {
  const BoxTile tile = tiles[blockIdx.x];
  uint64_t s1 = 0, s2 = 0;
  DigestTile(ops[tile.op], tile, word_base[tile.op], &s1, &s2);
  AddSums(sums, s1, s2);
}

// Copy, then digest of what the block wrote: the tile's bytes are re-read
// right after the block wrote them (from L2 rather than HBM, for tiles of
// tens of KiB). Tiles of a batch never share a destination element, so the
// block barrier is the only ordering needed.
__global__ void BoxCopyDigestKernel(const BoxCopyOp* __restrict__ ops, const uint64_t* __restrict__ word_base,
                                    const BoxTile* __restrict__ tiles, DigestSums* sums) {
  const BoxTile tile = tiles[blockIdx.x];
  const BoxCopyOp op = ops[tile.op];
  CopyTile(op, tile);
  __syncthreads();
  uint64_t s1 = 0, s2 = 0;
  DigestTile(op, tile, word_base[tile.op], &s1, &s2);
  AddSums(sums, s1, s2);
}

// The exact merge: a block of 32 x 8 threads computes a 32 x 32 output
// tile, each thread one column of 4 rows (8 apart). A and B pass through
// shared memory in chunks of 32 k, converted to fp32 once; the k loop runs
// in the CPU reference's order with separately rounded multiplies and adds.
inline constexpr int kLoraTile = 32;       // output rows and columns per block
inline constexpr int kLoraThreadsY = 8;    // blockDim = (kLoraTile, kLoraThreadsY)
inline constexpr int kLoraRowsPerThread = kLoraTile / kLoraThreadsY;
inline constexpr int kLoraKChunk = 32;

__global__ void LoraMergeKernel(const LoraMergeOp* __restrict__ ops) {
  __shared__ float sa[kLoraKChunk][kLoraTile];      // A[k0 + k][c0 + c]
  __shared__ float sb[kLoraTile][kLoraKChunk + 1];  // B[r0 + r][k0 + k]
  const LoraMergeOp op = ops[blockIdx.z];
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kLoraTile, r0 = static_cast<int64_t>(blockIdx.y) * kLoraTile;
  if (r0 >= op.rows || c0 >= op.cols) return;  // the whole block: ops differ in size
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kLoraTile + tx;
  float acc[kLoraRowsPerThread] = {};
  for (int64_t k0 = 0; k0 < op.rank; k0 += kLoraKChunk) {
    const int kn = static_cast<int>(op.rank - k0 < kLoraKChunk ? op.rank - k0 : kLoraKChunk);
    for (int i = tid; i < kLoraKChunk * kLoraTile; i += kLoraTile * kLoraThreadsY) {
      const int k = i / kLoraTile, c = i % kLoraTile;
      sa[k][c] = k < kn && c0 + c < op.cols
                     ? LoadAsF32(op.a, op.a_dtype, (k0 + k) * op.a_k_stride + (c0 + c) * op.a_col_stride)
                     : 0.0f;
      const int r = i / kLoraKChunk, kb = i % kLoraKChunk;
      sb[r][kb] = kb < kn && r0 + r < op.rows
                      ? LoadAsF32(op.b, op.b_dtype, (r0 + r) * op.b_row_stride + (k0 + kb) * op.b_k_stride)
                      : 0.0f;
    }
    __syncthreads();
    for (int k = 0; k < kn; ++k) {
      const float a = sa[k][tx];
#pragma unroll
      for (int j = 0; j < kLoraRowsPerThread; ++j) acc[j] = __fadd_rn(acc[j], __fmul_rn(sb[ty + j * kLoraThreadsY][k], a));
    }
    __syncthreads();
  }
  const int64_t c = c0 + tx;
  if (c >= op.cols) return;
#pragma unroll
  for (int j = 0; j < kLoraRowsPerThread; ++j) {
    const int64_t r = r0 + ty + j * kLoraThreadsY;
    if (r >= op.rows) break;
    const float w = LoadAsF32(op.w, op.w_dtype, r * op.w_row_stride + c * op.w_col_stride);
    StoreFromF32(op.dst, op.dst_dtype, r * op.dst_row_stride + c * op.dst_col_stride,
                 __fadd_rn(w, __fmul_rn(op.scale, acc[j])));
  }
}

}  // namespace wsync::kernels::device

#endif  // WSYNC_KERNELS_BOX_COPY_CUH_
