#ifndef WSYNC_DAEMON_CORE_CORE_H_
#define WSYNC_DAEMON_CORE_CORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace wsync::core {

// An address the daemon accepts clients on.
struct EndpointInfo {
  std::string kind;     // "unix" or "tcp"
  std::string address;  // socket path, or host:port as bound
  bool tls = false;
};

// A registered model, as status reports it.
struct ModelInfo {
  std::string model_id;
  int64_t num_tensors = 0;
  uint64_t total_bytes = 0;
};

// A running or queued sync job, as status reports it.
struct JobInfo {
  std::string job_id;
  std::string model_id;
  uint64_t version = 0;
  std::string phase;
  double elapsed_ms = 0;
};

// An attached client session.
struct SessionInfo {
  std::string session_id;
  std::string client_name;
  int64_t pid = 0;
};

// A point-in-time view of the daemon.
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
};

struct CoreOptions {
  std::string daemon_id;
  // GPU descriptions (or the reason there are none), probed at start.
  std::vector<std::string> gpus;
};

// The daemon's state and operations, independent of gRPC: everything the
// service layer exposes is a method here that returns absl::Status.
// Thread-safe: every method may be called from any thread.
class Core {
 public:
  // Creates a core that serves requests (serving() is true).
  static std::unique_ptr<Core> Create(const CoreOptions& options);

  virtual ~Core() = default;

  // Records an endpoint the server bound, for status reporting.
  virtual void AddEndpoint(const EndpointInfo& endpoint) = 0;

  // A consistent snapshot of identity, endpoints, models, jobs and sessions.
  virtual DaemonStatus GetStatus() const = 0;

  // Stops accepting new work: later mutating calls fail UNAVAILABLE, and
  // GetStatus reports serving = false. Idempotent.
  virtual void BeginShutdown() = 0;
};

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_CORE_H_
