#ifndef WSYNC_DAEMON_SERVICE_PEER_CLIENT_H_
#define WSYNC_DAEMON_SERVICE_PEER_CLIENT_H_

#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "daemon/core/peer.h"
#include "daemon/transport/communicator.h"

namespace wsync::service {

// The rendezvous store of a coordinator daemon, reached over its WsyncPeer
// service: what Gloo and NCCL groups spanning several daemons rendezvous
// through. Keys are scoped by `job`. Thread-safe.
std::unique_ptr<transport::KvStore> NewRemoteKvStore(std::shared_ptr<grpc::Channel> coordinator,
                                                     std::string job);

struct PeerLinkOptions {
  // mTLS: this daemon's certificate and key, and the CA that signed its
  // peers' certificates. All empty = plaintext, allowed only with insecure.
  std::string tls_cert, tls_key, tls_ca;
  bool insecure = false;
  // Deadline of calls that do not wait for work (everything but Prepare
  // and KvGet, which get their own wait plus this).
  int64_t call_timeout_ms = 10000;
  int64_t max_message_bytes = 64 << 20;
};

// core::PeerLink over gRPC: one channel per peer address, reused. Refuses
// to build without TLS material unless `insecure`. Thread-safe.
absl::StatusOr<std::unique_ptr<core::PeerLink>> NewGrpcPeerLink(const PeerLinkOptions& options);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PEER_CLIENT_H_
