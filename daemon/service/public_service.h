#ifndef WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_
#define WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_

#include <functional>
#include <memory>
#include <string>

#include "daemon/core/core.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace wsync::service {

// The caller's pid and uid for a gRPC peer string (uid -1 when unknown).
using PeerLookup = std::function<std::pair<int64_t, int64_t>(const std::string& peer)>;

// Creates the wsync.v1.Wsync service: thin adapters that convert protos to
// core calls and back. `core` must outlive the service. Thread-safe.
std::unique_ptr<v1::Wsync::Service> NewPublicService(core::Core* core, PeerLookup peers);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_
