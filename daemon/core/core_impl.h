#ifndef WSYNC_DAEMON_CORE_CORE_IMPL_H_
#define WSYNC_DAEMON_CORE_CORE_IMPL_H_

// Internal to daemon/core: the registry and job structures behind Core.

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/core/core.h"
#include "daemon/core/executor.h"
#include "daemon/layout/planner.h"
#include "daemon/memory/cuda_memory.h"
#include "daemon/memory/host_memory.h"
#include "spdlog/logger.h"

namespace wsync::core::internal {

struct Session {
  std::string id;
  ClientInfo client;
  EventSink* sink = nullptr;
  std::unique_ptr<memory::HostLease> lease;
  std::unique_ptr<memory::CudaLease> cuda;
  absl::Time attached;
  bool closing = false;
  std::string Label() const;  // "client 'trainer-0' (session s-3, pid 1234)"
};

// One registered rank: a source rank, or a rank of a target replica.
struct RankReg {
  ~RankReg();  // releases the CUDA IPC handles its buffers hold
  std::string session_id;
  Role role = Role::kSource;
  std::string replica_id;
  layout::RankCoords coords;
  std::string recipe;
  std::vector<layout::ShardSpec> shards;
  std::vector<void*> live;                     // per shard: client memory
  std::vector<std::vector<int64_t>> strides;   // per shard: empty = dense
  uint64_t bytes = 0;
  // Where the buffers live: -1 host shared memory, else the CUDA ordinal
  // (every buffer of a rank is on the same device).
  int device = -1;
  memory::CudaLease* cuda = nullptr;        // the session's, when device >= 0
  std::vector<std::string> cuda_handles;    // one reference each on `cuda`
  std::vector<void*> events;                // producer events to wait on (sources)
  // Daemon-owned, per shard, allocated on first use (targets only), on the
  // rank's device.
  std::vector<std::unique_ptr<memory::Buffer>> staging;
  std::vector<std::unique_ptr<memory::Buffer>> base;  // fp32 pristine base (LoRA)
  std::string Label() const;
};

struct Replica {
  std::string id;
  UpdateMode mode = UpdateMode::kStaged;
  std::map<std::string, std::unique_ptr<RankReg>> ranks;  // key: coords
  uint64_t version = 0;
  std::string digest;
  bool poisoned = false;
  bool base_valid = false;  // pristine LoRA base held since the last full sync
};

struct Adapter {
  int32_t a = -1, b = -1;  // tensor ids
  int64_t rank = 0;
  double scaling = 1.0;
  LoraConvention convention = LoraConvention::kPeft;
};

struct Job {
  std::string id;
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
  uint64_t generation = 0;  // bumps on every registration change
  // The last plan built, reused while the registrations, the replicas synced
  // and the bucket size are the same (plan_key).
  std::string plan_key;
  std::unique_ptr<layout::Plan> plan;
};

// Session id -> replicas it holds target ranks of.
using SessionReplicas = std::map<std::string, std::set<std::string>>;

std::string CoordsKey(const layout::RankCoords& r);
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
  absl::StatusOr<VersionInfo> WaitVersion(const std::string& model_id,
                                          const std::string& replica_id, uint64_t min_version,
                                          uint64_t timeout_ms,
                                          const std::function<bool()>& client_gone) override;
  absl::StatusOr<int64_t> Unregister(const std::string& model_id, const std::string& replica_id,
                                     const Role* role, const layout::RankCoords* rank) override;
  absl::StatusOr<std::string> CancelSync(const std::string& model_id, uint64_t version) override;
  DaemonStatus GetStatus() const override;
  void BeginShutdown() override;
  std::pair<uint64_t, std::vector<Member>> Join(const Member& m) override;
  bool Heartbeat(const std::string& daemon_id, uint64_t incarnation) override;
  absl::Status KvSet(const std::string& job, const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> KvGet(const std::string& job, const std::string& key, uint64_t timeout_ms,
                                    const std::function<bool()>& client_gone) override;

 private:
  // Sends `e` to every session in `sessions` (no lock held).
  void Notify(const std::set<std::string>& sessions, const Event& e);
  // Asks each session to pause the replicas it holds ranks of, and waits for
  // every session's ack. Called without mu_.
  absl::Status PauseTargets(Job* job, const SessionReplicas& sessions, const std::string& model_id,
                            uint64_t version, absl::Time deadline);
  // Job abort/cancel/deadline check, returning the error to end with.
  absl::Status CheckJob(Job* job, absl::Time deadline, const char* phase,
                        const std::function<bool()>& client_gone);
  void SetProgress(Job* job, const Progress& p);
  // Removes ranks owned by `session_id` from every model. Requires mu_.
  void DropSessionRanks(const std::string& session_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoreOptions options_;
  const absl::Time started_;
  const std::unique_ptr<Executor> host_exec_;
  absl::StatusOr<std::unique_ptr<Executor>> cuda_exec_;
  std::shared_ptr<spdlog::logger> log_;
  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  std::vector<EndpointInfo> endpoints_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Model>> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, std::string> kv_ ABSL_GUARDED_BY(mu_);  // "job\0key" -> value
};

}  // namespace wsync::core::internal

#endif  // WSYNC_DAEMON_CORE_CORE_IMPL_H_
