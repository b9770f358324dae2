#ifndef WSYNC_DAEMON_SERVER_SERVER_H_
#define WSYNC_DAEMON_SERVER_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/core/core.h"
#include "daemon/server/options.h"

namespace wsync::server {

// A running wsyncd: the core, the gRPC services (public, peer, health) and
// the endpoints they listen on. Thread-safe.
class Server {
 public:
  // Validates `options` (nothing is touched when they are inconsistent),
  // configures logging, claims the Unix socket, binds every endpoint and
  // starts serving. On error nothing is left behind: no socket, no thread.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const Options& options);

  // Shuts down if still running.
  virtual ~Server() = default;

  // Drains in order: health turns NOT_SERVING and the core refuses new work;
  // in-flight calls get up to the grace period to finish, then are
  // cancelled; the socket is removed. Blocks until done. A second call
  // (from any thread) waits for the first to finish and does nothing else.
  virtual void Shutdown() = 0;

  // Blocks until Shutdown has completed.
  virtual void Wait() = 0;

  // Endpoints as bound (a TCP port 0 is replaced by the chosen port).
  virtual std::vector<core::EndpointInfo> endpoints() const = 0;

  // Applies new log settings (SIGHUP). INVALID_ARGUMENT leaves the old ones.
  virtual absl::Status ReloadLogging(const LogOptions& log) = 0;
};

}  // namespace wsync::server

#endif  // WSYNC_DAEMON_SERVER_SERVER_H_
