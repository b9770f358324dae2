#ifndef WSYNC_KERNELS_BOX_COPY_H_
#define WSYNC_KERNELS_BOX_COPY_H_

// Batched N-d box copy with dtype cast: the data mover of every sync.
//
// One op copies an N-d box (N <= kMaxBoxDims) of elements from `src` to
// `dst`, each addressed with its own element strides, converting from
// src_dtype to dst_dtype with the rounding of kernels/dtype.h. An op with a
// null `src` writes zeros (padding). Equal dtypes copy raw bits.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/digest.h"
#include "kernels/dtype.h"

namespace wsync::kernels {

inline constexpr int kMaxBoxDims = 4;

struct BoxCopyOp {
  const void* src = nullptr;  // element (0,..,0) of the box; null = fill zeros
  void* dst = nullptr;        // element (0,..,0) of the box
  DType src_dtype = DType::kF32;
  DType dst_dtype = DType::kF32;
  int32_t ndim = 1;                     // 1..kMaxBoxDims
  int64_t extent[kMaxBoxDims] = {};     // elements per dimension, each >= 1
  int64_t src_stride[kMaxBoxDims] = {};  // element strides; the last is usually 1
  int64_t dst_stride[kMaxBoxDims] = {};
};

// Input checks, kept apart from the copy: ndim in range, extents >= 1,
// dtypes that the kernels convert (fp32, bf16, fp16; fp8 only between equal
// dtypes), non-null dst. Returns "" when valid, else a message naming the op.
std::string CheckBoxCopyOps(const BoxCopyOp* ops, size_t n);

// Total bytes written by `ops` (what a memcpy of the same data would move).
uint64_t BoxCopyBytes(const BoxCopyOp* ops, size_t n);

// CPU reference, and the host data path: runs every op, splitting large
// batches into row ranges over up to `threads` threads. Ops must pass
// CheckBoxCopyOps, and no two ops may write the same element.
void BoxCopyCpu(const BoxCopyOp* ops, size_t n, int threads);

// Digests of box data (kernels/digest.h). A batch's payload is the
// destination bytes of its ops in order, each op row-major, every innermost
// row zero-padded to a multiple of 8 bytes; op i's first row starts at
// 64-bit word `word_base[i]` of the payload (see BoxPayloadWords).
//
// Words of one row of op i (its innermost extent at the destination dtype).
uint64_t BoxRowWords(const BoxCopyOp& op);
// Payload words of each op, and their running offsets from `first_word`.
// Returns the total.
uint64_t BoxPayloadWords(const BoxCopyOp* ops, size_t n, uint64_t first_word,
                         uint64_t* word_base);

// BoxCopyCpu that also digests every row it writes (the "sent" digest).
DigestSums BoxCopyDigestCpu(const BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                            int threads);

// Digest of the destination boxes as they are in memory now (the
// "received" digest); `src` is ignored.
DigestSums BoxDigestCpu(const BoxCopyOp* ops, size_t n, const uint64_t* word_base, int threads);

// The work of one GPU thread block: rows [row_begin, row_end) of op `op`,
// elements [col_begin, col_end) of each row's innermost extent. A row longer
// than a tile is cut into column ranges whose bytes start at multiples of 8,
// so that each digest word of a row belongs to exactly one tile.
struct BoxTile {
  uint32_t op = 0;
  int64_t row_begin = 0, row_end = 0;
  int64_t col_begin = 0, col_end = 0;
};

// Splits ops into tiles of about `tile_bytes` destination bytes (rounded
// down to a multiple of 8, at least 8): whole rows where a row fits, else
// one row cut into columns. Ops must pass CheckBoxCopyOps.
std::vector<BoxTile> MakeBoxTiles(const BoxCopyOp* ops, size_t n, uint64_t tile_bytes = 64 << 10);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_BOX_COPY_H_
