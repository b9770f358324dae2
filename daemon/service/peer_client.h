#ifndef WSYNC_DAEMON_SERVICE_PEER_CLIENT_H_
#define WSYNC_DAEMON_SERVICE_PEER_CLIENT_H_

#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "daemon/transport/communicator.h"

namespace wsync::service {

// The rendezvous store of a coordinator daemon, reached over its WsyncPeer
// service: what Gloo and NCCL groups spanning several daemons rendezvous
// through. Keys are scoped by `job`. Thread-safe.
std::unique_ptr<transport::KvStore> NewRemoteKvStore(std::shared_ptr<grpc::Channel> coordinator,
                                                     std::string job);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PEER_CLIENT_H_
