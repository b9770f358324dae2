#include "daemon/service/peer_service.h"

#include "absl/strings/str_cat.h"
#include "daemon/service/status_mapping.h"

namespace wsync::service {
namespace {

grpc::Status NotYet(const char* rpc) {
  return ToGrpcStatus(absl::UnimplementedError(absl::StrCat(
      "wsync.v1.WsyncPeer/", rpc,
      " is not implemented in this wsyncd build: the multi-node coordinator and transports "
      "(daemon/transport) are not built yet")));
}

class PeerService final : public v1::WsyncPeer::Service {
 public:
  explicit PeerService(core::Core* core) : core_(core) {}

  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest*, v1::JoinResponse*) override {
    return NotYet("Join");
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*,
                         v1::HeartbeatResponse*) override {
    return NotYet("Heartbeat");
  }
  grpc::Status DistributePlan(grpc::ServerContext*, const v1::PlanPart*, v1::PlanAck*) override {
    return NotYet("DistributePlan");
  }
  grpc::Status KvSet(grpc::ServerContext*, const v1::KvSetRequest*, v1::KvSetResponse*) override {
    return NotYet("KvSet");
  }
  grpc::Status KvGet(grpc::ServerContext*, const v1::KvGetRequest*, v1::KvGetResponse*) override {
    return NotYet("KvGet");
  }
  grpc::Status Prepare(grpc::ServerContext*, const v1::PrepareRequest*,
                       v1::PrepareResponse*) override {
    return NotYet("Prepare");
  }
  grpc::Status Commit(grpc::ServerContext*, const v1::CommitRequest*,
                      v1::CommitResponse*) override {
    return NotYet("Commit");
  }
  grpc::Status Abort(grpc::ServerContext*, const v1::AbortRequest*, v1::AbortResponse*) override {
    return NotYet("Abort");
  }

 private:
  [[maybe_unused]] core::Core* const core_;
};

}  // namespace

std::unique_ptr<v1::WsyncPeer::Service> NewPeerService(core::Core* core) {
  return std::make_unique<PeerService>(core);
}

}  // namespace wsync::service
