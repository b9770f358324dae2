#ifndef WSYNC_DAEMON_CORE_CORE_H_
#define WSYNC_DAEMON_CORE_CORE_H_

// The daemon's state and operations, independent of gRPC: sessions (leases),
// the registry of models and ranks, sync jobs with two-phase commit, and
// versions. Every RPC of the service layer is one method here.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/common/metrics.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/recipe.h"
#include "daemon/layout/types.h"
#include "daemon/core/modes.h"

namespace wsync::core {


const char* RoleName(Role r);
const char* UpdateModeName(UpdateMode m);
const char* LoraModeName(LoraMode m);

// An address the daemon accepts clients on.
struct EndpointInfo {
  std::string kind;     // "unix" or "tcp"
  std::string address;  // socket path, or host:port as bound
  bool tls = false;
};

// Who makes a call (docs/security.md). The service layer establishes it
// for every RPC: the Unix peer's credentials (SO_PEERCRED) on the local
// socket, the client certificate's name over mTLS, anonymous otherwise.
struct Caller {
  enum class Kind { kAnonymous, kLocal, kCertificate };
  Kind kind = Kind::kAnonymous;
  int64_t uid = -1, gid = -1, pid = 0;  // kLocal
  std::string subject;                  // kCertificate: CN, else the first SAN
  // Administrators (the daemon's uid, --admin-group) act on every model and
  // see every session.
  bool admin = false;
  // Whether the caller may change anything; false only for anonymous
  // callers without --allow-anonymous-writes.
  bool may_write = false;

  static Caller Local(int64_t uid, int64_t gid, int64_t pid, bool admin);
  static Caller Certificate(std::string subject);
  static Caller Anonymous(bool may_write);
  // What sessions and models are bound to: "uid:1000", "cert:trainer",
  // "anonymous".
  std::string Key() const;
  // For messages: "uid 1000", "certificate 'trainer'", "an anonymous caller".
  std::string ToString() const;
};

// A client opening a session.
struct ClientInfo {
  std::string name;  // from Hello; shown in status and errors
  int64_t pid = 0;   // SO_PEERCRED's where known, else the client's word
  Caller caller;
};

// What one request may make the daemon hold.
struct Limits {
  int64_t max_tensors_per_model = 1 << 20;
  uint64_t max_kv_value_bytes = 1 << 20;
  // The rendezvous store in all.
  uint64_t max_kv_total_bytes = 256ull << 20;
};

// Something the daemon tells an attached client.
struct Event {
  enum class Kind { kPause, kResume, kCommitted, kFailed };
  Kind kind = Kind::kPause;
  std::string model_id, replica_id;
  uint64_t version = 0;
  uint64_t timeout_ms = 0;  // kPause: ack within this
  bool poisoned = false;    // kResume
  std::string digest;       // kCommitted
  int code = 0;             // kFailed: absl::StatusCode
  std::string message;      // kFailed
};

// Receives a session's events. Push is called with the core's lock held: it
// must only queue the event (never block, never call into Core).
// Thread-safe.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void Push(const Event& e) = 0;
};

struct LoraAdapterArg {
  std::string base_tensor, a_tensor, b_tensor;
  int64_t rank = 0;
  double scaling = 1.0;
  LoraConvention convention = LoraConvention::kPeft;
};

struct RegisterModelArgs {
  Caller caller;
  // From a peer daemon's rank announcement (peers are authenticated by the
  // service): the model gets no owner until a local client registers it.
  bool announced = false;
  std::string session_id;
  std::string model_id;
  std::vector<layout::TensorSpec> tensors;  // empty = generate from config
  bool has_config = false;
  layout::ModelConfig config;
  std::vector<LoraAdapterArg> adapters;
  // Add the derived FP8 scale tensors, grouped this way
  // (RegisterModelRequest.fp8_scaling).
  std::optional<layout::Fp8Scaling> fp8_scales;
};

struct ModelRegistered {
  std::string model_id;
  int64_t num_tensors = 0;
  uint64_t total_bytes = 0;
};

struct PieceArg {
  std::string tensor;
  layout::Box canonical, shard;
};

struct BufferArg {
  std::string name;
  // Host memory: a POSIX shm object. GPU memory: the CUDA IPC handle of an
  // allocation base, its GPU's UUID, and an optional IPC event to wait on.
  enum class Memory { kHostShm, kCudaIpc };
  Memory memory = Memory::kHostShm;
  std::string shm_name;
  std::string cuda_handle, device_uuid, event_handle;
  uint64_t offset = 0, nbytes = 0;
  layout::Shape shape;
  std::vector<int64_t> strides;  // empty = dense row-major
  layout::DType dtype = layout::DType::kBF16;
  std::vector<PieceArg> pieces;  // empty = from the recipe
};

struct RegisterShardsArgs {
  Caller caller;
  std::string session_id;
  std::string model_id;
  Role role = Role::kSource;
  std::string replica_id;  // targets
  layout::RankCoords rank;
  std::string recipe;  // "" = every buffer lists its pieces
  layout::RecipeOptions recipe_options;
  std::vector<BufferArg> buffers;
  UpdateMode mode = UpdateMode::kStaged;
  // The peer address (host:port) of the daemon coordinating syncs of this
  // model; "" or this daemon's own address = this daemon.
  std::string coordinator;
};

struct ShardsRegistered {
  int64_t num_buffers = 0, num_pieces = 0;
  uint64_t bytes = 0;
};

struct SyncArgs {
  Caller caller;
  std::string model_id;
  uint64_t version = 0;
  LoraMode lora = LoraMode::kNone;
  std::vector<std::string> lora_bases;  // empty = every adapter
  std::vector<std::string> replicas;    // empty = every replica
  uint64_t deadline_ms = 0;             // 0 = the daemon's default
  uint64_t max_bucket_bytes = 0;        // 0 = the daemon's default
};

struct Progress {
  std::string phase;  // QUEUED PLANNING TRANSFERRING VERIFYING COMMITTING DONE FAILED CANCELLED
  uint64_t bytes_done = 0, bytes_total = 0;
  uint64_t buckets_done = 0, buckets_total = 0;
  double rate_bytes_per_s = 0;
};

struct PhaseTimes {
  double plan_ms = 0, transfer_ms = 0, verify_ms = 0, commit_ms = 0, total_ms = 0;
};

struct SyncOutcome {
  std::string model_id;
  uint64_t version = 0;
  std::string digest;  // over every replica's buckets
  uint64_t bytes = 0, buckets = 0;
  std::string plan_hash;
  PhaseTimes times;
  std::vector<std::string> replicas;
  bool already_committed = false;  // an identical retry: nothing moved
  std::string path;                // how the bytes moved: "host", "gpu", "gloo" or "nccl"
  // FP8 pieces this daemon quantized, and how many of them it first
  // assembled in fp32 (the others were read straight from one source).
  uint64_t fp8_pieces = 0, fp8_assembled = 0;
};

struct VersionInfo {
  uint64_t version = 0;
  std::string digest;
};

// Status snapshots.
struct RankInfo {
  Role role = Role::kSource;
  std::string replica_id;
  layout::RankCoords rank;
  std::string session_id, client_name;  // session_id: as in SessionInfo
  int64_t num_buffers = 0;
  uint64_t bytes = 0;
  UpdateMode mode = UpdateMode::kStaged;
};

struct ReplicaInfo {
  std::string replica_id;
  uint64_t version = 0;
  std::string digest;
  bool poisoned = false;
};

struct ModelInfo {
  std::string model_id;
  int64_t num_tensors = 0;
  uint64_t total_bytes = 0;
  int64_t num_adapters = 0;
  // Weights with FP8 scales, and their scaling when they share one.
  int64_t fp8_weights = 0;
  std::optional<layout::Fp8Scaling> fp8_scaling;
  std::vector<RankInfo> ranks;
  std::vector<ReplicaInfo> replicas;
  bool has_last_sync = false;
  SyncOutcome last_sync;
  std::string last_error;
};

struct JobInfo {
  std::string job_id;
  std::string model_id;
  uint64_t version = 0;
  Progress progress;
  double elapsed_ms = 0;
};

struct SessionInfo {
  std::string session_id;  // empty unless the viewer owns it or is an administrator
  std::string client_name;
  int64_t pid = 0, uid = -1;
  std::string identity;  // Caller::ToString()
  double attached_ms = 0;
};

// Another daemon this one knows (see PeerStatus in wsync.proto).
struct PeerInfo {
  std::string daemon_id, address;
  uint64_t incarnation = 0;
  std::string relation;  // "member" or "coordinator"
  double last_seen_ms = 0;
  bool lost = false;
};

struct DaemonStatus {
  std::string daemon_id;
  std::string version;
  std::string build;
  double uptime_s = 0;
  int64_t pid = 0;
  bool serving = false;
  std::vector<EndpointInfo> endpoints;
  std::vector<std::string> gpus;
  std::vector<ModelInfo> models;
  std::vector<JobInfo> jobs;
  std::vector<SessionInfo> sessions;
  std::vector<PeerInfo> peers;
};

// A daemon as its peers know it.
struct PeerMember {
  std::string daemon_id;
  std::string address;       // host:port of its peer endpoint
  uint64_t incarnation = 0;  // start time in ns; changes on restart
  std::string version;
  bool nccl = false;  // it can build NCCL communicators
};

class PeerLink;
struct RankAnnouncement;
struct PlanPart;
struct PrepareResult;

// Faults a test can inject into a daemon.
struct TestHooks {
  // Sleep this long after every sync bucket (0 = no sleep).
  uint64_t bucket_delay_ms = 0;
  // Flip the first byte of multi-node wire bucket N as this daemon receives
  // it (-1 = none).
  int64_t corrupt_wire = -1;
  // Multi-node parts treat this daemon's host-memory ranks as if on GPU 0,
  // run by a second host context: the host-staged GPU path without a GPU.
  bool stand_in_gpu = false;
  // As stand_in_gpu, and further: this daemon says it can run NCCL, its
  // ranks are on a GPU of their own ("GPU-stand-in-<daemon id>"), and the
  // communicators of parts that choose NCCL are built over Gloo. Exercises
  // the NCCL path's choice and its device-resident wire buffers without a
  // GPU (not NCCL itself).
  bool stand_in_nccl = false;
};

struct CoreOptions {
  std::string daemon_id;
  std::vector<std::string> gpus;  // descriptions, or why there are none
  uint64_t default_deadline_ms = 600000;
  uint64_t pause_timeout_ms = 10000;
  uint64_t default_bucket_bytes = 64ull << 20;
  int copy_threads = 2;
  // Multi-node: how to reach other daemons (null = this daemon works
  // alone), and this run's incarnation (start time in ns).
  PeerLink* peers = nullptr;
  uint64_t incarnation = 0;
  // Coordinators to join at start (--peers).
  std::vector<std::string> join;
  // Heartbeats to coordinators, and how long a silent member may go before
  // it is dropped and its jobs abort.
  uint64_t heartbeat_ms = 1000;
  uint64_t peer_timeout_ms = 10000;
  // Interface the Gloo data plane listens on.
  std::string data_host = "127.0.0.1";
  // Bytes per chunk of a chain broadcast.
  uint64_t chunk_bytes = 4ull << 20;
  Limits limits;
  // Fault injection, for tests only (wsyncd's --fault-* flags); absent in
  // production, where each hook costs one check.
  std::optional<TestHooks> test_hooks;
  // Where sync outcomes, durations and bytes are counted (null = nowhere).
  // Must outlive the core.
  Metrics* metrics = nullptr;
};

// This daemon as the coordinator of its models' multi-node syncs: what the
// peer service offers the other daemons (membership, the rendezvous store,
// rank announcements). Thread-safe.
class Coordinator {
 public:
  virtual ~Coordinator() = default;

  // Membership: a daemon joins (or rejoins with a new incarnation, which
  // replaces the old one). Returns the epoch and the members.
  using Member = PeerMember;
  virtual std::pair<uint64_t, std::vector<Member>> Join(const Member& m) = 0;
  // A member's heartbeat; false when this daemon does not know that
  // incarnation (the caller must rejoin).
  virtual bool Heartbeat(const std::string& daemon_id, uint64_t incarnation) = 0;

  // The rendezvous store, scoped by job: Set replaces (RESOURCE_EXHAUSTED
  // past Limits), Get waits up to timeout_ms for the key (DEADLINE_EXCEEDED
  // naming it).
  virtual absl::Status KvSet(const std::string& job, const std::string& key, const std::string& value) = 0;
  virtual absl::StatusOr<std::string> KvGet(const std::string& job, const std::string& key,
                                            uint64_t timeout_ms, const std::function<bool()>& client_gone) = 0;

  // A participant's rank, announced to this daemon as the model's
  // coordinator (registers the model from the announcement when new).
  virtual absl::Status AcceptRanks(const RankAnnouncement& a) = 0;
  // A participant's rank went away.
  virtual absl::Status WithdrawRanks(const std::string& daemon_id, const std::string& model_id, Role role,
                                     const std::string& replica_id, const layout::RankCoords& rank) = 0;

  // This daemon as peers know it.
  virtual PeerMember self() const = 0;
};

// This daemon as a participant in a coordinator's sync: what the peer
// service offers the coordinator (plan, prepare, commit, abort).
// Thread-safe.
class Participant {
 public:
  virtual ~Participant() = default;

  // Checks a plan part against the local registrations, rebuilds the plan
  // and compares hashes, then starts the transfer in the background.
  // Returns the recomputed plan hash.
  virtual absl::StatusOr<std::string> AcceptPlan(const PlanPart& part) = 0;
  // Waits up to timeout_ms for the transfer of `job_id` to end; returns its
  // digests, or why it failed.
  virtual absl::StatusOr<PrepareResult> PreparePart(const std::string& job_id, uint64_t timeout_ms) = 0;
  // Publishes the version on the local targets (staged: copies staging to
  // live within a pause). Idempotent.
  virtual absl::Status CommitPart(const std::string& job_id, uint64_t version,
                                  const std::map<std::string, std::string>& replica_digests) = 0;
  // Ends the job: stops a running transfer, keeps previous versions
  // (in_place targets written so far are poisoned). Idempotent.
  virtual absl::Status AbortPart(const std::string& job_id, const std::string& reason) = 0;
};

// The daemon's core as its clients, its server and its peers use it: the
// public operations, the lifecycle, and (through the two interfaces above)
// the peer side.
//
// Thread-safe: every method may be called from any thread. Methods that wait
// (Sync, WaitVersion, CloseSession) hold no lock while waiting.
class Core : public Coordinator, public Participant {
 public:
  static std::unique_ptr<Core> Create(const CoreOptions& options);
  virtual ~Core() = default;

  // Records an endpoint the server bound, for status reporting.
  virtual void AddEndpoint(const EndpointInfo& endpoint) = 0;

  // This daemon's identity (CoreOptions::daemon_id).
  virtual const std::string& daemon_id() const = 0;

  // Opens a session (lease) for a client; events go to `sink`, which must
  // stay valid until CloseSession returns. The session id is 128 random bits
  // and valid only for calls from client.caller's identity. UNAVAILABLE while
  // shutting down.
  virtual absl::StatusOr<std::string> OpenSession(const ClientInfo& client, EventSink* sink) = 0;

  // Ends a lease: aborts running syncs that touch the session (ABORTED,
  // naming the client and `reason`), waits for them to stop, releases its
  // registrations and unmaps its memory. Idempotent.
  virtual void CloseSession(const std::string& session_id, const std::string& reason) = 0;

  // A client acknowledges a pause request.
  virtual absl::Status AckPause(const std::string& session_id, const std::string& model_id,
                                const std::string& replica_id, uint64_t version) = 0;

  // Declares a model, owned by the caller's identity. Idempotent for
  // identical requests from the owner or an administrator; PERMISSION_DENIED
  // for read-only callers, another identity's model or session.
  virtual absl::StatusOr<ModelRegistered> RegisterModel(const RegisterModelArgs& args) = 0;

  // Registers one rank's buffers; all or nothing. The session must be the
  // caller's and the model the caller's (or the caller an administrator):
  // PERMISSION_DENIED otherwise. Target memory may share no byte with any
  // other registered buffer, nor a source with a target (INVALID_ARGUMENT
  // naming both buffers).
  virtual absl::StatusOr<ShardsRegistered> RegisterShards(const RegisterShardsArgs& args) = 0;

  // Runs a sync to completion, for the model's owner or an administrator
  // (PERMISSION_DENIED otherwise). `progress` is called from the calling thread
  // as buckets complete; `client_gone` is polled, and a true result cancels.
  virtual absl::StatusOr<SyncOutcome> Sync(const SyncArgs& args,
                                           const std::function<void(const Progress&)>& progress,
                                           const std::function<bool()>& client_gone) = 0;

  // Waits until the replica has committed a version >= min_version.
  virtual absl::StatusOr<VersionInfo> WaitVersion(const std::string& model_id,
                                                  const std::string& replica_id,
                                                  uint64_t min_version, uint64_t timeout_ms,
                                                  const std::function<bool()>& client_gone) = 0;

  // Releases a model, a replica (replica_id set) or one rank (rank set), for
  // the model's owner or an administrator. Returns the number of ranks
  // released.
  virtual absl::StatusOr<int64_t> Unregister(const Caller& caller, const std::string& model_id,
                                             const std::string& replica_id, const Role* role,
                                             const layout::RankCoords* rank) = 0;

  // Cancels the running sync of a model (version 0 = whichever), for the
  // model's owner or an administrator. Returns its job id.
  virtual absl::StatusOr<std::string> CancelSync(const Caller& caller, const std::string& model_id,
                                                 uint64_t version) = 0;

  // The shards (buffers and pieces) `recipe` gives the process at `rank` of
  // model `model_id`, and the model's canonical tensors their pieces index.
  // Read-only, for any caller. NOT_FOUND for an unknown model,
  // FAILED_PRECONDITION when it has no config, INVALID_ARGUMENT from the
  // recipe or the coordinates.
  virtual absl::StatusOr<std::pair<layout::ModelSpec, std::vector<layout::ShardSpec>>> DescribeLayout(
      const std::string& model_id, const std::string& recipe, const layout::RecipeOptions& options,
      const layout::RankCoords& rank) const = 0;

  // A consistent snapshot of identity, endpoints, models, jobs and sessions
  // as `viewer` may see it: session ids only of the viewer's own sessions
  // (every one for administrators).
  virtual DaemonStatus GetStatus(const Caller& viewer) const = 0;

  // Stops accepting new work (UNAVAILABLE), cancels running syncs and wakes
  // waiters. Idempotent.
  virtual void BeginShutdown() = 0;

  // Records the address peers reach this daemon at (host:port as bound)
  // and starts the background membership work: joins --peers, heartbeats,
  // drops silent members. Call once, after the peer endpoint is bound;
  // without a PeerLink it only records the address.
  virtual void StartCluster(const std::string& peer_address) = 0;
};

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_CORE_H_
