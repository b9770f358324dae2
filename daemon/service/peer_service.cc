#include "daemon/service/peer_service.h"

#include "absl/strings/str_cat.h"
#include "daemon/service/status_mapping.h"

namespace wsync::service {
namespace {

grpc::Status NotYet(const char* rpc) {
  return ToGrpcStatus(absl::UnimplementedError(absl::StrCat(
      "wsync.v1.WsyncPeer/", rpc,
      " is not implemented in this wsyncd build: multi-node plan distribution and two-phase "
      "commit are not built yet")));
}

class PeerService final : public v1::WsyncPeer::Service {
 public:
  explicit PeerService(core::Core* core) : core_(core) {}

  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest* req, v1::JoinResponse* resp) override {
    if (req->self().daemon_id().empty()) {
      return ToGrpcStatus(absl::InvalidArgumentError("Join: self.daemon_id must be set"));
    }
    core::Core::Member m{req->self().daemon_id(), req->self().address(), req->self().version(),
                         req->self().incarnation()};
    auto [epoch, members] = core_->Join(m);
    resp->set_epoch(epoch);
    for (const auto& x : members) {
      v1::Member* p = resp->add_members();
      p->set_daemon_id(x.daemon_id);
      p->set_address(x.address);
      p->set_incarnation(x.incarnation);
      p->set_version(x.version);
    }
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    resp->set_rejoin(!core_->Heartbeat(req->daemon_id(), req->incarnation()));
    return grpc::Status::OK;
  }
  grpc::Status DistributePlan(grpc::ServerContext*, const v1::PlanPart*, v1::PlanAck*) override {
    return NotYet("DistributePlan");
  }
  grpc::Status KvSet(grpc::ServerContext*, const v1::KvSetRequest* req, v1::KvSetResponse*) override {
    return ToGrpcStatus(core_->KvSet(req->job_id(), req->key(), req->value()));
  }
  grpc::Status KvGet(grpc::ServerContext* ctx, const v1::KvGetRequest* req, v1::KvGetResponse* resp) override {
    auto v = core_->KvGet(req->job_id(), req->key(), req->timeout_ms(), [ctx] { return ctx->IsCancelled(); });
    if (!v.ok()) return ToGrpcStatus(v.status());
    resp->set_value(*v);
    return grpc::Status::OK;
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
  core::Core* const core_;
};

}  // namespace

std::unique_ptr<v1::WsyncPeer::Service> NewPeerService(core::Core* core) {
  return std::make_unique<PeerService>(core);
}

}  // namespace wsync::service
