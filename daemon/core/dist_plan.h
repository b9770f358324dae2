#ifndef WSYNC_DAEMON_CORE_DIST_PLAN_H_
#define WSYNC_DAEMON_CORE_DIST_PLAN_H_

// Internal to daemon/core: the schedule of a multi-node sync, which the
// coordinator and every participant derive the same way from a PlanPart.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/core/peer.h"
#include "daemon/layout/planner.h"

namespace wsync::core {
struct Adapter;
}  // namespace wsync::core

namespace wsync::core::internal {

// One op of a wire bucket: plan op `op`, at byte `offset` of the bucket,
// travelling as `dtype`.
struct WireOp {
  uint32_t op = 0;
  uint64_t offset = 0;
  layout::DType dtype = layout::DType::kF32;
};

// A wire bucket: the bytes one source rank sends for one plan bucket, to
// every daemon in `chain` after the first (a chain broadcast when the bytes
// serve several replicas or daemons).
struct Wire {
  bool gather = false;  // LoRA operands (whole A and B, fp32) for targets
  bool moves = true;    // false: adapter_only/unmerge, written from local LoRA math
  uint32_t bucket = 0;  // in DistPlan::plan or ::gather
  uint64_t bytes = 0;
  std::vector<WireOp> ops;
  std::vector<int> chain;  // member ranks; the source's first
  // Digest words of the destination boxes before this bucket, and in it.
  uint64_t word_base = 0, words = 0;
};

struct DistPlan {
  // Per planned target (the ranks of each group's first replica): the PlanPart::targets indexes that receive its
  // bytes (one per replica of its group).
  std::vector<std::vector<uint32_t>> receivers;
  layout::Plan plan;
  bool has_gather = false;
  layout::Plan gather;
  layout::Endpoint gather_target;  // whole A and B of each active adapter, fp32
  std::set<int32_t> active;        // adapted bases this sync
  std::set<int32_t> adapted;       // every adapter base: kept as an fp32 base
  bool full = true;                // LoRA none or merge: W moves
  std::vector<Wire> wires;         // gather wires first, then one per plan bucket
  std::map<std::string, int> rank_of;  // daemon id -> member rank
  std::string hash;
};

// Which transport carries the wires of `part`, chosen the way NCCL chooses
// its own transports: NCCL when it can connect every pair of members (both
// can run NCCL, each holds all its ranks of the part on one GPU, and the
// two GPUs differ), else Gloo, which connects anything (GPU shards staged
// through pinned host buffers). `why`, when Gloo is chosen for a part with
// GPU ranks, says what kept NCCL out.
WireTransport ChooseWireTransport(const PlanPart& part, std::string* why);

// Builds the schedule of `part` over the local model `spec` and its
// adapters. Deterministic: equal parts give equal schedules and hashes.
absl::StatusOr<DistPlan> BuildDistPlan(const PlanPart& part, const layout::ModelSpec& spec,
                                       const std::map<int32_t, Adapter>& adapters);

}  // namespace wsync::core::internal

#endif  // WSYNC_DAEMON_CORE_DIST_PLAN_H_
