#ifndef WSYNC_DAEMON_LAYOUT_PLANNER_H_
#define WSYNC_DAEMON_LAYOUT_PLANNER_H_

// The planner: which bytes go where.
//
// Given the shards of every source endpoint and every target endpoint of a
// model, it intersects each target piece with the source pieces of the same
// canonical tensor and emits copy ops (source shard + box -> target shard +
// box), zero-fill ops for target padding, and a deterministic schedule of
// buckets grouped by (source endpoint, target endpoint). No full tensor is
// ever materialized.
//
// Source choice: when several sources hold the same bytes (data-parallel
// replicas, replicated norms, tied copies), the planner prefers the most
// local one (same device > same node > remote), then the least loaded (bytes
// assigned so far), then the lowest endpoint index.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/layout/types.h"

namespace wsync::layout {

// Where an endpoint's memory lives.
struct Location {
  std::string node;  // host identity
  int device = -1;   // GPU ordinal; -1 = host memory
};

// One rank's registered shards.
struct Endpoint {
  std::string id;  // unique and stable, e.g. "source/tp1.pp0.dp0" or "gen-a/tp3"
  Location location;
  std::vector<ShardSpec> shards;
};

struct PlanOptions {
  uint64_t max_bucket_bytes = 64ull << 20;  // target-dtype bytes per bucket (>= 64)
};

// Copies `src_box` of source shard (src_endpoint, src_shard) to `dst_box` of
// target shard (dst_endpoint, dst_shard). The boxes hold the same elements
// (sizes agree once size-1 dimensions are dropped), each in its own shard's
// coordinates; dtypes are the shards'.
struct CopyOp {
  uint32_t src_endpoint = 0, src_shard = 0;
  uint32_t dst_endpoint = 0, dst_shard = 0;
  int32_t tensor = -1;
  Box canonical;  // the same elements in the canonical tensor
  Box src_box;
  Box dst_box;
};

// Zero-fills `dst_box` of a target shard (padding no piece covers).
struct FillOp {
  uint32_t dst_endpoint = 0, dst_shard = 0;
  Box dst_box;
};

// A run of consecutive ops between one source and one target endpoint.
struct Bucket {
  uint32_t src_endpoint = 0, dst_endpoint = 0;
  uint32_t first_op = 0, num_ops = 0;
  uint64_t bytes = 0;  // target-dtype bytes
};

struct Plan {
  std::vector<CopyOp> ops;  // in bucket order
  std::vector<Bucket> buckets;
  std::vector<FillOp> fills;
  uint64_t total_bytes = 0;  // sum of bucket bytes
  uint64_t hash = 0;         // stable over the schedule; equal plans hash equal
  std::string HashHex() const;
};

// Plans a sync from `sources` to `targets`. Every shard must pass
// ValidateShard. FAILED_PRECONDITION when target bytes have no source,
// naming the target endpoint, shard, tensor and the uncovered box (up to 5
// of them); INVALID_ARGUMENT for a bad option or duplicate endpoint ids.
// Target pieces of derived scale tensors get no ops (the sync computes
// them while quantizing their weights) and no fills.
absl::StatusOr<Plan> BuildPlan(const ModelSpec& model, const std::vector<Endpoint>& sources,
                               const std::vector<Endpoint>& targets,
                               const PlanOptions& options = {});

// Restricts `op` to the part whose destination lies in `window` (a box in
// the destination shard's coordinates), adjusting the source and canonical
// boxes to match. Returns false when they do not intersect.
bool ClipCopy(const CopyOp& op, const Box& window, CopyOp* out);

// Bytes of one element-box at `dtype`.
uint64_t BoxBytes(const Box& box, DType dtype);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_PLANNER_H_
