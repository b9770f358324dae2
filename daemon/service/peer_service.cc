#include "daemon/service/peer_service.h"

#include "absl/strings/str_cat.h"
#include "daemon/core/peer.h"
#include "daemon/service/convert.h"
#include "daemon/service/status_mapping.h"

namespace wsync::service {
namespace {

class PeerService final : public v1::WsyncPeer::Service {
 public:
  PeerService(core::Coordinator* coordinator, core::Participant* participant, const Authenticator* auth)
      : coordinator_(coordinator), participant_(participant), auth_(auth) {}

  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest* req, v1::JoinResponse* resp) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    if (req->self().daemon_id().empty()) {
      return ToGrpcStatus(absl::InvalidArgumentError("Join: self.daemon_id must be set"));
    }
    auto [epoch, members] = coordinator_->Join(FromProto(req->self()));
    resp->set_epoch(epoch);
    for (const auto& x : members) ToProto(x, resp->add_members());
    ToProto(coordinator_->self(), resp->mutable_coordinator());
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    resp->set_rejoin(!coordinator_->Heartbeat(req->daemon_id(), req->incarnation()));
    return grpc::Status::OK;
  }
  grpc::Status AnnounceRanks(grpc::ServerContext* ctx, const v1::RankAnnouncement* req,
                             v1::AnnounceResponse*) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    auto a = FromProto(*req);
    if (!a.ok()) return ToGrpcStatus(a.status());
    return ToGrpcStatus(coordinator_->AcceptRanks(*a));
  }
  grpc::Status WithdrawRanks(grpc::ServerContext* ctx, const v1::WithdrawRequest* req, v1::WithdrawResponse*) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    auto role = RoleFromProto(req->role(), absl::StrCat("withdrawal of model '", req->model_id(), "'"));
    if (!role.ok()) return ToGrpcStatus(role.status());
    return ToGrpcStatus(
        coordinator_->WithdrawRanks(req->daemon_id(), req->model_id(), *role, req->replica_id(), FromProto(req->rank())));
  }
  grpc::Status DistributePlan(grpc::ServerContext* ctx, const v1::PlanPart* req, v1::PlanAck* resp) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    auto part = FromProto(*req);
    if (!part.ok()) return ToGrpcStatus(part.status());
    auto hash = participant_->AcceptPlan(*part);
    if (!hash.ok()) return ToGrpcStatus(hash.status());
    resp->set_job_id(req->job_id());
    resp->set_plan_hash(*hash);
    return grpc::Status::OK;
  }
  grpc::Status KvSet(grpc::ServerContext* ctx, const v1::KvSetRequest* req, v1::KvSetResponse*) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    return ToGrpcStatus(coordinator_->KvSet(req->job_id(), req->key(), req->value()));
  }
  grpc::Status KvGet(grpc::ServerContext* ctx, const v1::KvGetRequest* req, v1::KvGetResponse* resp) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    auto v = coordinator_->KvGet(req->job_id(), req->key(), req->timeout_ms(), [ctx] { return ctx->IsCancelled(); });
    if (!v.ok()) return ToGrpcStatus(v.status());
    resp->set_value(*v);
    return grpc::Status::OK;
  }
  grpc::Status Prepare(grpc::ServerContext* ctx, const v1::PrepareRequest* req, v1::PrepareResponse* resp) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    auto r = participant_->PreparePart(req->job_id(), req->timeout_ms());
    if (!r.ok()) return ToGrpcStatus(r.status());
    ToProto(*r, resp);
    return grpc::Status::OK;
  }
  grpc::Status Commit(grpc::ServerContext* ctx, const v1::CommitRequest* req, v1::CommitResponse*) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    std::map<std::string, std::string> digests(req->replica_digests().begin(), req->replica_digests().end());
    return ToGrpcStatus(participant_->CommitPart(req->job_id(), req->version(), digests));
  }
  grpc::Status Abort(grpc::ServerContext* ctx, const v1::AbortRequest* req, v1::AbortResponse*) override {
    if (absl::Status s = auth_->CheckPeer(*ctx); !s.ok()) return ToGrpcStatus(s);
    return ToGrpcStatus(participant_->AbortPart(req->job_id(), req->reason()));
  }

 private:
  core::Coordinator* const coordinator_;
  core::Participant* const participant_;
  const Authenticator* const auth_;
};

}  // namespace

std::unique_ptr<v1::WsyncPeer::Service> NewPeerService(core::Coordinator* coordinator, core::Participant* participant,
                                                       const Authenticator* auth) {
  return std::make_unique<PeerService>(coordinator, participant, auth);
}

}  // namespace wsync::service
