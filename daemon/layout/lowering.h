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
// both sides are merged, so whole-row runs become one long row.
kernels::BoxCopyOp LowerCopy(const CopyOp& op, const ShardView& src, const ShardView& dst);

// The kernel op zero-filling `fill`.
kernels::BoxCopyOp LowerFill(const FillOp& fill, const ShardView& dst);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_LOWERING_H_
