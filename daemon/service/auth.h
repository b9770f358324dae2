#ifndef WSYNC_DAEMON_SERVICE_AUTH_H_
#define WSYNC_DAEMON_SERVICE_AUTH_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "daemon/core/core.h"

namespace wsync::service {

// The credentials of a local connection, from SO_PEERCRED.
struct UnixCred {
  int64_t pid = 0, uid = -1, gid = -1;
};

// Establishes who makes each call (docs/security.md): the Unix peer's
// credentials on the local socket, the client certificate's name over mTLS,
// anonymous otherwise; and who may reach the peer service. Thread-safe.
class Authenticator {
 public:
  struct Options {
    // Members of this group (name or numeric gid) are administrators, like
    // the daemon's own uid. "" = none.
    std::string admin_group;
    // Anonymous callers may change things (default: read-only).
    bool anonymous_writes = false;
    // Certificate names (CN or SAN) of the daemons allowed on the peer
    // service over mTLS.
    std::vector<std::string> peer_identities;
    // Peers over plaintext TCP (--insecure) are allowed unauthenticated.
    bool insecure_peers = false;
  };
  // Credentials of a local connection, by its gRPC peer string ("fd:17");
  // nullopt for any other transport.
  using CredLookup = std::function<std::optional<UnixCred>(const std::string& peer)>;

  // INVALID_ARGUMENT when admin_group names no group.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const Options& options, CredLookup lookup);
  virtual ~Authenticator() = default;

  // The caller of a public-service RPC.
  virtual core::Caller Identify(const grpc::ServerContext& ctx) const = 0;

  // OK when the caller of a peer-service RPC is another daemon: an mTLS
  // certificate named in peer_identities, or anyone over plaintext TCP with
  // insecure_peers. PERMISSION_DENIED naming the caller otherwise, and
  // always on the local socket.
  virtual absl::Status CheckPeer(const grpc::ServerContext& ctx) const = 0;
};

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_AUTH_H_
