#ifndef WSYNC_DAEMON_LAYOUT_LOWERING_H_
#define WSYNC_DAEMON_LAYOUT_LOWERING_H_

// Lowers plan ops (boxes in shard coordinates) to kernel box-copy ops
// (pointers and element strides), given where each shard's first element
// lives. Shards are dense row-major unless strides are given.

#include <cstdint>

#include "daemon/layout/planner.h"
#include "kernels/box_copy.h"
#include "kernels/lora.h"

namespace wsync::layout {

// Element strides of a shard: dense row-major when `strides` is null.
struct ShardView {
  const ShardSpec* spec = nullptr;
  const int64_t* strides = nullptr;  // spec->shape.ndim entries, or null
  void* base = nullptr;              // element 0
};

// The element strides of `view`'s dimensions (its own, or dense row-major)
// into `out` (spec->shape.ndim entries).
void Strides(const ShardView& view, int64_t* out);
// The element offset of `box`'s first element, given element `strides`.
int64_t Offset(const Box& box, const int64_t* strides);

// The kernel op copying `op`. Adjacent dimensions that are contiguous on
// both sides are merged, so whole-row runs become one long row. Unmerged
// (merge = false) it has the dimensions of LowerBox(op.dst_box, dst), so
// kernels::BoxCopyDigestCpu of it digests what BoxDigestCpu of that box
// would.
kernels::BoxCopyOp LowerCopy(const CopyOp& op, const ShardView& src, const ShardView& dst, bool merge = true);

// The kernel op zero-filling `fill`.
kernels::BoxCopyOp LowerFill(const FillOp& fill, const ShardView& dst);

// The destination side of a kernel op over `box` of `view`, one dimension
// per non-unit box dimension and never merged: its payload words
// (kernels::BoxPayloadWords) depend only on the box and the dtype, so the
// digests of equal contents agree whatever the strides of the memory.
kernels::BoxCopyOp LowerBox(const Box& box, const ShardView& view);

// A 2-d view of the elements of `box` (a box of `view`'s shard holding
// `op.canonical`, a 2-d canonical box): the address of canonical element
// (0, 0) of op.canonical and the element strides of canonical rows and
// columns in the shard (0 for a dimension of size 1). Used for LoRA ops.
struct MatrixView {
  void* ptr = nullptr;
  int64_t row_stride = 0, col_stride = 0;
};
MatrixView LowerMatrix(const CopyOp& op, const Box& box, const ShardView& view);

// A LoRA adapter's factors, each a whole dense row-major tensor. PEFT stores
// A [rank, in] and B [out, rank]; `transposed` (DeepSpeed) stores A^T
// [in, rank] and B^T [rank, out]. a_cols and b_cols are the stored row
// lengths (A's and B's shape[1]).
struct LoraFactors {
  const void* a = nullptr;
  DType a_dtype = DType::kF32;
  int64_t a_cols = 0;
  const void* b = nullptr;
  DType b_dtype = DType::kF32;
  int64_t b_cols = 0;
  int64_t rank = 0;
  bool transposed = false;
};

// The kernel op of a LoRA merge over `op` (a 2-d canonical box): `dst` gets
// W + scale * B @ A over op.canonical, reading W from `w`. The factors'
// rows and columns are those of op.canonical. Used by the daemon's syncs
// and by wsyncctl convert.
kernels::LoraMergeOp LowerLoraMerge(const CopyOp& op, const LoraFactors& factors, const MatrixView& w,
                                    DType w_dtype, const MatrixView& dst, DType dst_dtype, float scale);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_LOWERING_H_
