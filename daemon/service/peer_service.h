#ifndef WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_
#define WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_

#include <memory>

#include "daemon/core/core.h"
#include "daemon/service/auth.h"
#include "wsync/v1/peer.grpc.pb.h"

namespace wsync::service {

// Creates the wsync.v1.WsyncPeer service (daemon <-> daemon). Every call is
// refused unless `auth` says it comes from another daemon (CheckPeer).
// `core` and `auth` must outlive the service. Thread-safe.
std::unique_ptr<v1::WsyncPeer::Service> NewPeerService(core::Core* core, const Authenticator* auth);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_
