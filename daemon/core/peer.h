#ifndef WSYNC_DAEMON_CORE_PEER_H_
#define WSYNC_DAEMON_CORE_PEER_H_

// What daemons tell each other (the multi-node data plane), as plain C++:
// membership, ranks announced to a model's coordinator, plan parts, the
// two-phase commit. The service layer carries these over gRPC (PeerLink);
// core never sees a proto.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/core/core.h"
#include "daemon/layout/types.h"
#include "daemon/transport/communicator.h"

namespace wsync::core {

// One rank registered on a participant, told to the model's coordinator.
// Shard pieces refer to tensors by index into `tensors`.
struct RankAnnouncement {
  std::string daemon_id;
  uint64_t incarnation = 0;
  std::string model_id;
  std::vector<layout::TensorSpec> tensors;  // the model's canonical tensors
  std::vector<LoraAdapterArg> adapters;
  Role role = Role::kSource;
  std::string replica_id;
  layout::RankCoords rank;
  std::string recipe;  // for "ranks missing" messages; pieces are explicit
  UpdateMode mode = UpdateMode::kStaged;
  std::vector<layout::ShardSpec> shards;
  std::string gpu_uuid;  // the GPU holding its buffers; "" = host memory
};

// A rank of a sync plan and the daemon that holds it.
struct PlanEndpoint {
  std::string daemon_id;
  Role role = Role::kSource;
  std::string replica_id;
  layout::RankCoords rank;
  UpdateMode mode = UpdateMode::kStaged;
  std::vector<layout::ShardSpec> shards;  // pieces index PlanPart::tensor_names
  std::string gpu_uuid;                   // "" = host memory
};

// What carries a multi-node part's wire buckets.
enum class WireTransport {
  kGloo,  // host memory over TCP; GPU shards staged through pinned host buffers
  kNccl,  // GPU memory: each member's wire buffers on its one GPU
};

// Everything a participant needs to run its part of a sync. Every member
// gets the same part: it rebuilds the plan from the endpoints and refuses a
// plan hash other than the coordinator's.
struct PlanPart {
  std::string job_id, model_id;
  std::string coordinator_id, coordinator_address;
  uint64_t version = 0;
  LoraMode lora = LoraMode::kNone;
  std::vector<std::string> lora_bases;  // tensor names; empty = every adapter
  uint64_t bucket_bytes = 0;
  uint64_t deadline_unix_ms = 0;
  std::string plan_hash;
  // The data-plane group: members in rank order, and the communicator key
  // (a new key means a new communicator).
  std::vector<PeerMember> members;
  std::string comm_key;
  WireTransport transport = WireTransport::kGloo;
  std::vector<std::string> tensor_names;  // the coordinator's spec, by id
  std::vector<PlanEndpoint> sources;
  // Replicas with identical layouts share one schedule: the first of each
  // group is planned, the others receive the same bytes (chain broadcast).
  std::vector<std::vector<std::string>> replica_groups;
  std::vector<PlanEndpoint> targets;  // every rank of every replica
};

// Digest sums of one wire bucket: as sent (replica_id "") or as received
// (the wire bytes) and written (the destination boxes) for a replica.
struct BucketSums {
  uint64_t bucket = 0;
  std::string replica_id;
  uint64_t s1 = 0, s2 = 0;          // wire bytes
  uint64_t w1 = 0, w2 = 0;          // written boxes (targets)
  uint64_t written_words = 0;
};

struct PrepareResult {
  bool ready = false;
  absl::Status error;  // why not ready
  std::vector<BucketSums> sums;
  uint64_t bytes_sent = 0, bytes_received = 0;
};

// How a daemon reaches other daemons; implemented over gRPC by the service
// layer. Every call has a deadline and returns UNAVAILABLE or
// DEADLINE_EXCEEDED naming the address when the peer does not answer.
// Thread-safe.
class PeerLink {
 public:
  virtual ~PeerLink() = default;
  // Joins the daemon at `address`; returns its id and members.
  struct Joined {
    std::string daemon_id;
    uint64_t incarnation = 0;
    std::vector<PeerMember> members;
  };
  virtual absl::StatusOr<Joined> Join(const std::string& address, const PeerMember& self) = 0;
  // True when the peer no longer knows this incarnation (rejoin).
  virtual absl::StatusOr<bool> Heartbeat(const std::string& address, const std::string& daemon_id,
                                         uint64_t incarnation) = 0;
  virtual absl::Status Announce(const std::string& address, const RankAnnouncement& a) = 0;
  virtual absl::Status Withdraw(const std::string& address, const std::string& daemon_id,
                                const std::string& model_id, Role role, const std::string& replica_id,
                                const layout::RankCoords& rank) = 0;
  // Returns the plan hash the participant computed.
  virtual absl::StatusOr<std::string> DistributePlan(const std::string& address, const PlanPart& part) = 0;
  // Waits (up to timeout_ms) for the participant's transfer to end.
  virtual absl::StatusOr<PrepareResult> Prepare(const std::string& address, const std::string& job_id,
                                                uint64_t timeout_ms) = 0;
  virtual absl::Status Commit(const std::string& address, const std::string& job_id, uint64_t version,
                              const std::map<std::string, std::string>& replica_digests) = 0;
  virtual absl::Status Abort(const std::string& address, const std::string& job_id, const std::string& reason) = 0;
  // The rendezvous store on the daemon at `address`, keys scoped by `scope`.
  virtual std::unique_ptr<transport::KvStore> Store(const std::string& address, const std::string& scope) = 0;
};

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_PEER_H_
