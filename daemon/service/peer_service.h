#ifndef WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_
#define WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_

#include <memory>

#include "daemon/core/core.h"
#include "wsync/v1/peer.grpc.pb.h"

namespace wsync::service {

// Creates the wsync.v1.WsyncPeer service (daemon <-> daemon). `core` must
// outlive the service. Thread-safe.
std::unique_ptr<v1::WsyncPeer::Service> NewPeerService(core::Core* core);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_
