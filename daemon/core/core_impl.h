#ifndef WSYNC_DAEMON_CORE_CORE_IMPL_H_
#define WSYNC_DAEMON_CORE_CORE_IMPL_H_

// Internal to daemon/core: the registry and job structures behind Core.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/core/core.h"
#include "daemon/core/executor.h"
#include "daemon/core/dist_plan.h"
#include "daemon/core/peer.h"
#include "daemon/core/part_state.h"
#include "daemon/core/recent.h"
#include "daemon/core/sync_job.h"
#include "daemon/core/target_write.h"
#include "daemon/transport/communicator_cache.h"
#include "daemon/layout/lowering.h"
#include "daemon/layout/planner.h"
#include "daemon/memory/cuda_memory.h"
#include "daemon/memory/host_memory.h"
#include "spdlog/logger.h"
#include "daemon/common/mutex.h"

namespace wsync::core::internal {

struct Session {
  std::string id;
  ClientInfo client;
  EventSink* sink = nullptr;
  std::unique_ptr<memory::HostLease> lease;
  std::unique_ptr<memory::CudaLease> cuda;
  absl::Time attached;
  bool closing = false;
  // For messages others may read: never the session id, which is a
  // capability. "client 'trainer-0' (pid 1234, uid 1000)"
  std::string Label() const;
};

// One registered rank: a source rank, or a rank of a target replica.
struct RankReg {
  ~RankReg();  // releases the CUDA IPC handles its buffers hold
  std::string session_id;
  // The daemon holding the rank's memory: "" = this one. Ranks of other
  // daemons (announced to this coordinator) have shards but no memory.
  std::string daemon;
  Role role = Role::kSource;
  std::string replica_id;
  layout::RankCoords coords;
  std::string recipe;
  // The client gave world_size (rather than leaving it to be derived).
  bool world_declared = false;
  std::vector<layout::ShardSpec> shards;
  std::vector<void*> live;                     // per shard: client memory
  // Per shard: the client memory's identity and byte range, for overlap
  // checks ("shm:<dev>:<ino>" or "cuda:<ordinal>"; begin, end).
  struct Extent {
    std::string object;
    uint64_t begin = 0, end = 0;
    std::string where;  // for messages: "shm object /x" or "GPU 0 memory"
  };
  std::vector<Extent> extents;
  std::vector<std::vector<int64_t>> strides;   // per shard: empty = dense
  uint64_t bytes = 0;
  // Where the buffers live: -1 host shared memory, else the CUDA ordinal
  // (every buffer of a rank is on the same device).
  int device = -1;
  memory::CudaLease* cuda = nullptr;        // the session's, when device >= 0
  std::vector<std::string> cuda_handles;    // one reference each on `cuda`
  std::vector<void*> events;                // producer events to wait on (sources)
  std::string gpu_uuid;                     // the GPU's UUID when device >= 0, or announced
  // Daemon-owned, per shard, allocated on first use (targets only), on the
  // rank's device.
  std::vector<std::unique_ptr<memory::Buffer>> staging;
  std::vector<std::unique_ptr<memory::Buffer>> base;  // fp32 pristine base (LoRA)
  std::vector<layout::ShardSpec> base_specs;          // their fp32 twins of `shards`
  std::unique_ptr<memory::Buffer> fp8_scratch;        // fp32 assembly of FP8 pieces (targets)
  std::string Label() const;

  // Target memory, the same for local syncs and multi-node parts. Allocates
  // through `ctx` on `device` what a sync writing this rank needs and does
  // not have yet: staging for every shard when `mode` is staged, and an fp32
  // base for every shard holding a tensor for which `tracked` is true when
  // W moves (`moves`). Both are kept for later syncs.
  absl::Status PrepareTargetMemory(ExecContext* ctx, int device, UpdateMode mode,
                                   const std::function<bool(int32_t)>& tracked, bool moves);
  // Views of shard `s`: the client's live memory; where a sync writes it
  // (staging when staged, else live); its fp32 base (requires base[s]).
  layout::ShardView Live(uint32_t s) const;
  layout::ShardView Write(uint32_t s, UpdateMode mode) const;
  layout::ShardView Base(uint32_t s) const;
  // The staged commit of `box` of shard `s`: staging to live memory.
  kernels::BoxCopyOp CommitCopy(uint32_t s, const layout::Box& box) const;
};

// A target replica. What its memory holds is one checked state machine:
//
//   Empty --Commit--> Current --Commit--> Current
//   Empty | Current --Poison (a failed in-place write)--> Poisoned
//   Poisoned --Commit of a full sync--> Current   (an adapter-only commit cannot repair it)
//   any --Reset (new memory registered)--> Empty
//
// Apart from it, the pristine LoRA base the daemon keeps for the replica is
// valid from a full commit until a full sync fails (its twins are written as
// the sync goes) or new memory is registered.
struct Replica {
  enum class Health { kEmpty, kCurrent, kPoisoned };
  std::string id;
  UpdateMode mode = UpdateMode::kStaged;
  std::map<std::string, std::unique_ptr<RankReg>> ranks;  // key: coords
  uint64_t version = 0;  // last committed; 0 = none
  std::string digest;

  Health health() const { return health_; }
  bool poisoned() const { return health_ == Health::kPoisoned; }
  bool base_valid() const { return base_valid_; }
  // Records committed `v`. `full`: a sync that wrote every byte (LoRA none or
  // merge), which also renews the LoRA base when the model has adapters.
  // False, changing nothing, for a partial commit onto a poisoned replica.
  bool Commit(uint64_t v, std::string committed_digest, bool full, bool has_adapters) {
    if (health_ == Health::kPoisoned && !full) return false;
    version = v;
    digest = std::move(committed_digest);
    health_ = Health::kCurrent;
    if (full && has_adapters) base_valid_ = true;
    return true;
  }
  void Poison() { health_ = Health::kPoisoned; }
  // A full sync that touched the replica failed: its base twins may be half
  // written.
  void FullSyncFailed() { base_valid_ = false; }
  void Reset() {
    health_ = Health::kEmpty;
    version = 0;
    digest.clear();
    base_valid_ = false;
  }
  // Syncs wait for all world_size processes: set when the first rank named a
  // recipe or declared its world size. Otherwise (explicit pieces, no world
  // size) the registered ranks are the replica.
  bool counted = false;

 private:
  Health health_ = Health::kEmpty;
  bool base_valid_ = false;
};


struct Job {
  std::string id;
  std::set<std::string> daemons;  // other daemons the job depends on
  std::string model_id;
  uint64_t version = 0;
  absl::Time start;
  std::set<std::string> sessions;  // sessions whose memory the job touches
  std::atomic<bool> cancel{false};
  // Guarded by CoreImpl::mu_.
  std::string abort_reason;
  absl::StatusCode abort_code = absl::StatusCode::kOk;
  std::set<std::string> acks;  // sessions that acknowledged the pause
  std::set<std::string> pause_sessions;
  uint64_t pause_version = 0;
  Progress progress;
};

struct Model {
  std::string id;
  std::string owner_session;
  // The identity that registered it; none for a model known only from
  // peers' announcements, which the first local registrant claims.
  std::optional<Caller> owner;
  layout::ModelSpec spec;
  bool has_config = false;
  layout::ModelConfig config;
  std::map<int32_t, Adapter> adapters;  // base tensor id -> adapter
  std::map<std::string, std::unique_ptr<RankReg>> sources;  // key: coords
  std::string source_recipe;
  layout::RankCoords source_sizes;
  std::map<std::string, Replica> replicas;
  std::map<std::string, layout::RankCoords> replica_sizes;
  std::map<std::string, std::string> replica_recipe;
  Job* running = nullptr;
  bool has_last = false;
  SyncOutcome last;
  std::string last_error;
  // Multi-node: the peer address of the coordinator that local ranks were
  // registered for ("" = this daemon coordinates), and the running
  // participant part (registrations wait while it runs).
  std::string coordinator;
  struct Part* part = nullptr;
  // Wire buckets of multi-node syncs, kept between syncs; only the running
  // part's thread touches them.
  std::vector<std::unique_ptr<memory::Buffer>> wire;
  // Where they are: "host", "pinned" (GPU kernels pack and unpack them) or
  // "gpu<N>" (NCCL).
  std::string wire_kind;
  uint64_t generation = 0;  // bumps on every registration change
  // The last plan built, reused while the registrations, the replicas synced
  // and the bucket size are the same (plan_key).
  std::string plan_key;
  std::unique_ptr<layout::Plan> plan;
};

// A participant's part of a multi-node sync (dist_sync.cc).
struct Part {
  using Phase = PartState::Phase;
  using Decision = PartState::Decision;
  PlanPart plan;
  std::unique_ptr<DistPlan> dist;
  Job* job = nullptr;  // owned by jobs_, under "part:<job id>"
  Model* model = nullptr;
  // This daemon's source ranks in the plan (null where another daemon
  // holds it).
  std::vector<RankReg*> src_local;
  // The plan's targets (PlanPart::targets, null ranks where another daemon
  // holds them) and what the part did to them. Touched only by the part's
  // own thread, and by FinishPart under the lock.
  std::unique_ptr<SyncJob> sj;
  absl::Time deadline;
  // Phase and decision (commit with the replicas' digests, or abort with
  // the reason).
  PartState state;
  absl::Status error;  // Failed / Aborted
  PrepareResult result;
  bool watchdog_fired = false;
  std::map<std::string, std::string> digests;
  std::string abort_reason;
  transport::Communicator* comm = nullptr;  // while transferring
  std::thread thread;
  bool done = false;  // the thread has finished
  // RPC threads blocked in Await on this part (Prepare, Commit, Abort).
  // ReapParts frees a part only when it is done and this is 0: a waiter
  // re-reads the part when it wakes.
  int waiters = 0;
};

std::string CoordsKey(const layout::RankCoords& r);

// A client-given string as errors quote it: whole when short, else its first
// 48 bytes and its length, so that no error grows with the request.
std::string Quoted(const std::string& s);
// INVALID_ARGUMENT (quoting the id) unless it matches [A-Za-z0-9._-]{1,128}.
absl::Status CheckModelId(const std::string& id);

// The factors of adapter `ad` for layout::LowerLoraMerge: A and B are the
// adapter's whole tensors, held in fp32.
// "world_size=4 (tp=2,cp=1,dp=2,pp=1; etp=1,ep=2,edp=2)".
std::string SizesString(const layout::RankCoords& r);

class CoreImpl final : public Core {
 public:
  explicit CoreImpl(const CoreOptions& options);
  ~CoreImpl() override;

  void AddEndpoint(const EndpointInfo& endpoint) override;
  const std::string& daemon_id() const override { return options_.daemon_id; }
  absl::StatusOr<std::string> OpenSession(const ClientInfo& client, EventSink* sink) override;
  void CloseSession(const std::string& session_id, const std::string& reason) override;
  absl::Status AckPause(const std::string& session_id, const std::string& model_id,
                        const std::string& replica_id, uint64_t version) override;
  absl::StatusOr<ModelRegistered> RegisterModel(const RegisterModelArgs& args) override;
  absl::StatusOr<ShardsRegistered> RegisterShards(const RegisterShardsArgs& args) override;
  absl::StatusOr<SyncOutcome> Sync(const SyncArgs& args,
                                   const std::function<void(const Progress&)>& progress,
                                   const std::function<bool()>& client_gone) override;
  // Sync without the metrics: the local sync, or SyncDistributed.
  absl::StatusOr<SyncOutcome> RunSync(const SyncArgs& args, const std::function<void(const Progress&)>& progress,
                                      const std::function<bool()>& client_gone);
  // Counts a sync's outcome, durations and bytes in options_.metrics.
  void RecordSync(const std::string& model_id, const absl::StatusOr<SyncOutcome>& out) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<VersionInfo> WaitVersion(const std::string& model_id,
                                          const std::string& replica_id, uint64_t min_version,
                                          uint64_t timeout_ms,
                                          const std::function<bool()>& client_gone) override;
  absl::StatusOr<int64_t> Unregister(const Caller& caller, const std::string& model_id,
                                     const std::string& replica_id, const Role* role,
                                     const layout::RankCoords* rank) override;
  absl::StatusOr<std::string> CancelSync(const Caller& caller, const std::string& model_id,
                                         uint64_t version) override;
  DaemonStatus GetStatus(const Caller& viewer) const override;
  absl::StatusOr<std::pair<layout::ModelSpec, std::vector<layout::ShardSpec>>> DescribeLayout(
      const std::string& model_id, const std::string& recipe, const layout::RecipeOptions& options,
      const layout::RankCoords& rank) const override;
  void BeginShutdown() override;
  std::pair<uint64_t, std::vector<Member>> Join(const Member& m) override;
  bool Heartbeat(const std::string& daemon_id, uint64_t incarnation) override;
  absl::Status KvSet(const std::string& job, const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> KvGet(const std::string& job, const std::string& key, uint64_t timeout_ms,
                                    const std::function<bool()>& client_gone) override;
  absl::Status AcceptRanks(const RankAnnouncement& a) override;
  absl::Status WithdrawRanks(const std::string& daemon_id, const std::string& model_id, Role role,
                             const std::string& replica_id, const layout::RankCoords& rank) override;
  absl::StatusOr<std::string> AcceptPlan(const PlanPart& part) override;
  absl::StatusOr<PrepareResult> PreparePart(const std::string& job_id, uint64_t timeout_ms) override;
  absl::Status CommitPart(const std::string& job_id, uint64_t version,
                          const std::map<std::string, std::string>& replica_digests) override;
  absl::Status AbortPart(const std::string& job_id, const std::string& reason) override;
  void StartCluster(const std::string& peer_address) override;
  std::string PeerAddress() const;
  PeerMember self() const override;

 private:
  // Sends `e` to every session in `sessions` (no lock held).
  void Notify(const std::set<std::string>& sessions, const Event& e);
  void NotifyLocked(const std::set<std::string>& sessions, const Event& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tells the sessions holding target ranks of the replicas a sync asked for
  // (all replicas when it named none) that the sync was refused with `s`, so
  // that clients waiting for that version stop waiting.
  void NotifyRefused(const SyncArgs& args, const Model& model, const absl::Status& s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Asks each session to pause the replicas it holds ranks of, and waits for
  // every session's ack. Called without mu_.
  absl::Status PauseTargets(Job* job, const SessionReplicas& sessions, const std::string& model_id,
                            uint64_t version, absl::Time deadline);
  // Job abort/cancel/deadline check, returning the error to end with.
  absl::Status CheckJob(Job* job, absl::Time deadline, const char* phase,
                        const std::function<bool()>& client_gone);
  void SetProgress(Job* job, const Progress& p);
  // Whether `caller` may write at all and, for an existing `model` (null for
  // a new one), is its owner or an administrator. PERMISSION_DENIED naming
  // the caller, the model, `action` and what would allow it otherwise.
  absl::Status Authorize(const Caller& caller, const std::string& model_id, const Model* model,
                         const char* action) const;
  // The caller's attached session `session_id`: NOT_FOUND when unknown or
  // closing, PERMISSION_DENIED when it belongs to another identity.
  absl::StatusOr<Session*> CallerSession(const Caller& caller, const std::string& session_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Refuses a rank whose memory shares bytes with registered memory it may
  // not share: a target with anything, a source with a target. `replaced`
  // is the rank the new one replaces, if any. Requires mu_.
  absl::Status CheckOverlaps(const RankReg& rank, const RankReg* replaced, const std::string& who) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the host memory of `sessions` is still whole (HostLease::
  // CheckIntact). Called before a job writes anything, after its transfer
  // and after its commit copy.
  absl::Status CheckMemory(const std::set<std::string>& sessions) ABSL_LOCKS_EXCLUDED(mu_);
  // Who holds registrations of `session_id`, for messages: the client's
  // label (never the session id) or the peer daemon.
  std::string HolderLabel(const std::string& session_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes ranks owned by `session_id` from every model. Requires mu_.
  void DropSessionRanks(const std::string& session_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<ShardsRegistered> RegisterShardsLocal(const RegisterShardsArgs& a);
  // The coordinator a registration names, "" when it is this daemon.
  std::string RemoteCoordinator(const RegisterShardsArgs& a) const;
  // Checks a sync request against the registry and picks the replicas to
  // update (and the adapters for LoRA); sets *done instead when every
  // selected replica already holds the version.
  absl::Status SelectSync(const SyncArgs& args, Model* model, std::vector<Replica*>* todo,
                          std::set<int32_t>* active, std::optional<SyncOutcome>* done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stores a validated rank in the model (consistency with the model's
  // other ranks, duplicates). Requires mu_.
  absl::Status StoreRank(Model& model, std::unique_ptr<RankReg> rank, UpdateMode mode, const std::string& who)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // INVALID_ARGUMENT when another process of `ranks` has `rank`'s dense
  // coordinates or its expert coordinates. Requires mu_.
  absl::Status CheckGridPlace(const std::map<std::string, std::unique_ptr<RankReg>>& ranks,
                              const RankReg& rank, const std::string& who) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- Multi-node (cluster.cc, dist_sync.cc).
  bool IsDistributed(const Model& m) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SyncOutcome> SyncDistributed(const SyncArgs& args,
                                              const std::function<void(const Progress&)>& progress,
                                              const std::function<bool()>& client_gone);
  // Tells the coordinator about a rank just registered here; joins it first
  // when needed.
  absl::Status AnnounceRank(const std::string& coordinator, const std::string& model_id, Role role,
                            const std::string& replica_id, const layout::RankCoords& rank);
  // What the coordinator is told about local rank `r` of `m`. Requires mu_.
  RankAnnouncement MakeAnnouncement(const Model& m, const RankReg& r, UpdateMode mode) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Announcements of every local rank of models coordinated at `address`.
  std::vector<RankAnnouncement> LocalAnnouncements(const std::string& address);
  void RecordJoin(const std::string& address, const PeerLink::Joined& j);
  // Heartbeats, membership timeouts, withdrawals, rejoins.
  void ClusterLoop();
  // Every 100 ms: aborts the communicator of any part still running past
  // its deadline, so no transfer outlives its sync even when the
  // coordinator is unreachable.
  void WatchdogLoop();
  // Drops the ranks of `daemon_id` and aborts jobs that need it.
  void DropDaemon(const std::string& daemon_id, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A Gloo communicator for `members` (daemon ids in rank order),
  // rendezvousing under `key` through the coordinator of the running part.
  absl::StatusOr<std::unique_ptr<transport::Communicator>> NewCommunicator(const std::vector<std::string>& members,
                                                                          int rank, const std::string& key);
  void RunPart(Part* part);
  absl::Status TransferPart(Part* part);
  // Where a multi-node part runs work on a local rank's memory: its GPU, or
  // -1 for host memory (0 when the stand_in_gpu test hook is on).
  int DeviceOf(const RankReg* r) const;
  // The UUID of the GPU holding rank `r` ("" = host memory; a stand-in
  // under the stand_in_nccl test hook).
  std::string GpuOf(const RankReg& r) const;
  // Test hooks standing in for GPUs (stand_in_gpu or stand_in_nccl).
  bool StandIn() const;
  bool StandInNccl() const;
  // A context for multi-node parts: host work, and GPU work on cuda_exec_
  // (or on the host, standing in, under the stand_in_gpu test hook).
  absl::StatusOr<std::unique_ptr<MixedContext>> NewMixedContext();
  void FinishPart(Part* part);
  void ReapParts() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // SyncJob::Settle on `model`, logging commits the replicas' state machine
  // refuses (a bug). Returns the notices to send once the lock is released.
  std::vector<SyncJob::Notice> SettleJob(Model* model, SyncJob* sj, uint64_t version, const absl::Status& error,
                                         const std::map<std::string, std::string>& digests)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Replica::Commit, logging a commit the state machine refuses (a bug).
  void CommitReplica(Model* model, Replica* rep, uint64_t version, std::string digest, bool full)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LogRefusedCommit(const Model& model, const std::string& replica_id, uint64_t version);
  // Moves `p` to `next`, logging an illegal transition (which leaves it).
  void EnterPhase(Part* p, Part::Phase next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoreOptions options_;
  const absl::Time started_;
  const std::unique_ptr<Executor> host_exec_;
  absl::StatusOr<std::unique_ptr<Executor>> cuda_exec_;
  const bool nccl_;  // this daemon can build NCCL communicators (PeerMember::nccl)
  std::shared_ptr<spdlog::logger> log_;
  mutable wsync::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  std::vector<EndpointInfo> endpoints_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Model>> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t kv_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // keys and values held in kv_
  std::map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, std::string> kv_ ABSL_GUARDED_BY(mu_);  // "job\0key" -> value
  std::map<std::string, absl::Time> last_seen_ ABSL_GUARDED_BY(mu_);  // member -> last heartbeat
  // Coordinators this daemon has joined: address -> its daemon id ("" until
  // joined) and when it last answered.
  struct Upstream {
    std::string daemon_id;
    absl::Time last_ok;
    bool lost = false;
  };
  std::map<std::string, Upstream> upstream_ ABSL_GUARDED_BY(mu_);
  // Local ranks that went away, to be withdrawn from their coordinators.
  struct Withdrawal {
    std::string coordinator, model_id;
    Role role;
    std::string replica_id;
    layout::RankCoords rank;
  };
  std::vector<Withdrawal> withdrawals_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Part>> parts_ ABSL_GUARDED_BY(mu_);
  // Comm key -> where its communicator rendezvouses (the coordinator's
  // address) and, for NCCL, this daemon's GPU (-1: Gloo).
  struct CommRoute {
    std::string coordinator;
    int nccl_device = -1;
  };
  std::map<std::string, CommRoute> comm_store_ ABSL_GUARDED_BY(mu_);
  // Finished parts -> committed, so that a retried Prepare or Commit of a
  // recent job still gets its answer.
  // How recent parts ended, kept after the part is reaped: a coordinator
  // that asks late still learns the reason.
  struct PartOutcome {
    bool committed = false;
    absl::Status error;  // why it aborted
  };
  RecentMap<PartOutcome> outcomes_ ABSL_GUARDED_BY(mu_){256};
  uint64_t comm_generation_ ABSL_GUARDED_BY(mu_) = 0;
  transport::CommunicatorCache comms_;
  bool cluster_stop_ ABSL_GUARDED_BY(mu_) = false;
  mutable wsync::Mutex addr_mu_;
  std::string peer_address_ ABSL_GUARDED_BY(addr_mu_);
  std::thread cluster_thread_, watchdog_thread_;
};

}  // namespace wsync::core::internal

#endif  // WSYNC_DAEMON_CORE_CORE_IMPL_H_
