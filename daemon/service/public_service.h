#ifndef WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_
#define WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_

#include <functional>
#include <memory>
#include <string>

#include "daemon/core/core.h"
#include "daemon/service/auth.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace wsync::service {

// Creates the wsync.v1.Wsync service: thin adapters that check a request's
// sizes (no string over `max_name_bytes`), identify its caller through
// `auth`, convert the proto to a core call and the result back. `core` and
// `auth` must outlive the service. Thread-safe.
std::unique_ptr<v1::Wsync::Service> NewPublicService(core::Core* core, const Authenticator* auth,
                                                     size_t max_name_bytes);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_PUBLIC_SERVICE_H_
