#ifndef WSYNC_DAEMON_LAYOUT_LOWERING_H_
#define WSYNC_DAEMON_LAYOUT_LOWERING_H_

// Lowers plan ops (boxes in shard coordinates) to kernel box-copy ops
// (pointers and element strides), given where each shard's first element
// lives. Shards are dense row-major unless strides are given.

#include <cstdint>

#include "daemon/layout/planner.h"
#include "kernels/box_copy.h"

namespace wsync::layout {

// Element strides of a shard: dense row-major when `strides` is null.
struct ShardView {
  const ShardSpec* spec = nullptr;
  const int64_t* strides = nullptr;  // spec->shape.ndim entries, or null
  void* base = nullptr;              // element 0
};

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

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_LOWERING_H_
