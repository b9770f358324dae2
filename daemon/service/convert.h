#ifndef WSYNC_DAEMON_SERVICE_CONVERT_H_
#define WSYNC_DAEMON_SERVICE_CONVERT_H_

// wsync.v1 messages <-> core types. FromProto functions return
// INVALID_ARGUMENT naming the offending field.

#include <vector>

#include "absl/status/statusor.h"
#include "daemon/core/core.h"
#include "daemon/core/peer.h"
#include "daemon/service/enums.h"
#include "wsync/v1/peer.pb.h"
#include "wsync/v1/wsync.pb.h"

namespace wsync::service {

absl::StatusOr<core::RegisterModelArgs> FromProto(const v1::RegisterModelRequest& in);
absl::StatusOr<core::RegisterShardsArgs> FromProto(const v1::RegisterShardsRequest& in);
absl::StatusOr<core::SyncArgs> FromProto(const v1::SyncRequest& in);
layout::RankCoords FromProto(const v1::RankCoordinates& in);
// Each shard's name, shape and pieces (canonical tensors named from `spec`),
// and the canonical tensors the pieces name, with their shapes.
void ToProto(const layout::ModelSpec& spec, const std::vector<layout::ShardSpec>& shards,
             v1::DescribeLayoutResponse* out);
absl::StatusOr<layout::Shape> ShapeFromProto(const google::protobuf::RepeatedField<int64_t>& dims,
                                             const std::string& field);
absl::StatusOr<layout::Box> FromProto(const v1::Box& b, const std::string& field);
void ToProto(const layout::RankCoords& r, v1::RankCoordinates* out);
// A shard as a BufferSpec without memory; pieces name tensors through
// `tensor_names` (indexed by the pieces' tensor ids).
void ToProto(const layout::ShardSpec& s, const std::vector<std::string>& tensor_names, v1::BufferSpec* out);
absl::StatusOr<layout::TensorSpec> FromProto(const v1::CanonicalTensor& t, const std::string& model_id);
// Refuses an unknown convention and a scaling that is not finite.
absl::StatusOr<core::LoraAdapterArg> FromProto(const v1::LoraAdapter& l, const std::string& model_id);

// The peer service's messages (peer_convert.cc).
void ToProto(const core::PeerMember& in, v1::Member* out);
core::PeerMember FromProto(const v1::Member& in);
void ToProto(const core::RankAnnouncement& in, v1::RankAnnouncement* out);
absl::StatusOr<core::RankAnnouncement> FromProto(const v1::RankAnnouncement& in);
void ToProto(const core::PlanPart& in, v1::PlanPart* out);
absl::StatusOr<core::PlanPart> FromProto(const v1::PlanPart& in);
void ToProto(const core::PrepareResult& in, v1::PrepareResponse* out);
core::PrepareResult FromProto(const v1::PrepareResponse& in);

void ToProto(const core::DaemonStatus& in, v1::GetStatusResponse* out);
void ToProto(const std::vector<core::ModelInfo>& in, v1::ListModelsResponse* out);
void ToProto(const core::Progress& in, v1::ProgressUpdate* out);
void ToProto(const core::SyncOutcome& in, v1::SyncResult* out);
void ToProto(const core::Event& in, v1::AttachEvent* out);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_CONVERT_H_
