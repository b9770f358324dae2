#ifndef WSYNC_DAEMON_SERVICE_CONVERT_H_
#define WSYNC_DAEMON_SERVICE_CONVERT_H_

#include <vector>

#include "daemon/core/core.h"
#include "wsync/v1/wsync.pb.h"

namespace wsync::service {

// Core types -> wsync.v1 messages. Each overwrites `out`.
void ToProto(const core::DaemonStatus& in, v1::GetStatusResponse* out);
void ToProto(const std::vector<core::ModelInfo>& in, v1::ListModelsResponse* out);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_CONVERT_H_
