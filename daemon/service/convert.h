#ifndef WSYNC_DAEMON_SERVICE_CONVERT_H_
#define WSYNC_DAEMON_SERVICE_CONVERT_H_

// wsync.v1 messages <-> core types. FromProto functions return
// INVALID_ARGUMENT naming the offending field.

#include <vector>

#include "absl/status/statusor.h"
#include "daemon/core/core.h"
#include "wsync/v1/wsync.pb.h"

namespace wsync::service {

absl::StatusOr<core::RegisterModelArgs> FromProto(const v1::RegisterModelRequest& in);
absl::StatusOr<core::RegisterShardsArgs> FromProto(const v1::RegisterShardsRequest& in);
absl::StatusOr<core::SyncArgs> FromProto(const v1::SyncRequest& in);
layout::RankCoords FromProto(const v1::RankCoordinates& in);

void ToProto(const core::DaemonStatus& in, v1::GetStatusResponse* out);
void ToProto(const std::vector<core::ModelInfo>& in, v1::ListModelsResponse* out);
void ToProto(const core::Progress& in, v1::ProgressUpdate* out);
void ToProto(const core::SyncOutcome& in, v1::SyncResult* out);
void ToProto(const core::Event& in, v1::AttachEvent* out);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_CONVERT_H_
