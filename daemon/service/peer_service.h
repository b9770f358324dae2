#ifndef WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_
#define WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_

#include <memory>

#include "daemon/core/core.h"
#include "daemon/service/auth.h"
#include "wsync/v1/peer.grpc.pb.h"

namespace wsync::service {

// Creates the wsync.v1.WsyncPeer service (daemon <-> daemon): membership,
// rendezvous and announcements go to `coordinator`, plan parts and their
// two-phase commit to `participant` (both the daemon's core). Every call is
// refused unless `auth` says it comes from another daemon (CheckPeer).
// Everything given must outlive the service. Thread-safe.
std::unique_ptr<v1::WsyncPeer::Service> NewPeerService(core::Coordinator* coordinator, core::Participant* participant,
                                                       const Authenticator* auth);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PEER_SERVICE_H_
