#ifndef WSYNC_DAEMON_SERVER_UDS_LISTENER_H_
#define WSYNC_DAEMON_SERVER_UDS_LISTENER_H_

#include <sys/types.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/server.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/mutex.h"

namespace wsync::server {

// The credentials of a connected client, from SO_PEERCRED.
struct PeerCred {
  int64_t pid = 0, uid = -1, gid = -1;
};

// Accepts connections on the daemon's Unix socket itself, so that every
// connection's SO_PEERCRED is known, and hands each one to gRPC. RPC
// handlers look the credentials up by the call's peer string. Thread-safe.
class UdsListener {
 public:
  // Binds and listens on `path` (which must be free: see SocketClaim).
  static absl::StatusOr<std::unique_ptr<UdsListener>> Listen(const std::string& path);
  ~UdsListener();  // stops accepting

  // Starts accepting and passing connections to `server` (which must outlive
  // Stop()).
  void Serve(grpc::Server* server);

  // Stops accepting new connections. Idempotent.
  void Stop();

  // Credentials of the connection behind a gRPC peer string ("fd:17"), or
  // nullopt-like PeerCred{uid = -1} when unknown (e.g. TCP).
  PeerCred Lookup(const std::string& peer) const;

 private:
  explicit UdsListener(int fd) : fd_(fd) {}
  void Loop(grpc::Server* server);

  int fd_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable wsync::Mutex mu_;
  std::map<int, PeerCred> creds_ ABSL_GUARDED_BY(mu_);
};

}  // namespace wsync::server

#endif  // WSYNC_DAEMON_SERVER_UDS_LISTENER_H_
