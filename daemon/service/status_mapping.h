#ifndef WSYNC_DAEMON_SERVICE_STATUS_MAPPING_H_
#define WSYNC_DAEMON_SERVICE_STATUS_MAPPING_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace wsync::service {

// The one place that turns a core absl::Status into a gRPC status: the code
// maps one to one (absl and gRPC share numbering) and the message is kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse, for clients that call core-style code over gRPC.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_STATUS_MAPPING_H_
