#ifndef WSYNC_DAEMON_SERVICE_REQUEST_LIMITS_H_
#define WSYNC_DAEMON_SERVICE_REQUEST_LIMITS_H_

#include <cstddef>

#include <google/protobuf/message.h>

#include "absl/status/status.h"

namespace wsync::service {

// Refuses a request carrying a string longer than `max_string_bytes` (ids,
// names, options) or a bytes field longer than `max_bytes_field`, anywhere
// in it, with INVALID_ARGUMENT naming the field's path and quoting at most
// a short prefix. Runs before anything else reads the request, so that no
// error or log line echoes an oversized string.
absl::Status CheckRequestLimits(const google::protobuf::Message& request, size_t max_string_bytes,
                                size_t max_bytes_field);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_REQUEST_LIMITS_H_
