#ifndef WSYNC_DAEMON_SERVER_UNIX_SOCKET_H_
#define WSYNC_DAEMON_SERVER_UNIX_SOCKET_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace wsync::server {

// Exclusive ownership of a Unix socket path for one daemon's lifetime.
//
// Ownership is an flock on "<path>.lock" (which records the owner's pid), so
// two daemons never share a socket even when they start at the same moment.
// Not thread-safe; the server uses one from its start/stop thread.
class SocketClaim {
 public:
  // Creates the socket's directory (mode 0750) if missing, takes the lock,
  // and clears the way for bind: a stale socket file is removed. Fails with
  // FAILED_PRECONDITION when another live daemon holds the lock (naming its
  // pid) or something still accepts connections on the path, and when the
  // path exists but is not a socket.
  static absl::StatusOr<std::unique_ptr<SocketClaim>> Acquire(const std::string& path);

  // Releases the lock and removes the socket and lock files.
  ~SocketClaim();

  // After the server has bound the socket: sets mode 0660 and, when `group`
  // is not empty, its group (a name or a numeric gid).
  absl::Status SecureSocket(const std::string& group);

  // Removes the socket and lock files and releases the lock. Idempotent.
  void Release();

  const std::string& path() const { return path_; }

 private:
  SocketClaim(std::string path, int lock_fd) : path_(std::move(path)), lock_fd_(lock_fd) {}

  std::string path_;
  int lock_fd_;
};

// Whether something accepts connections on the Unix socket at `path`.
bool UnixSocketAnswers(const std::string& path);

}  // namespace wsync::server

#endif  // WSYNC_DAEMON_SERVER_UNIX_SOCKET_H_
