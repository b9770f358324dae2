#ifndef WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_
#define WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_

#include <memory>

#include "daemon/core/core.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace wsync::service {

// Creates the wsync.v1.Wsync service: thin adapters that convert protos to
// core calls and back. `core` must outlive the service. Thread-safe.
std::unique_ptr<v1::Wsync::Service> NewPublicService(core::Core* core);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_
