#include "daemon/service/public_service.h"

#include <chrono>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/logging.h"
#include "daemon/service/convert.h"
#include "daemon/service/request_limits.h"
#include "daemon/service/status_mapping.h"
#include "daemon/common/mutex.h"

namespace wsync::service {
namespace {

// Queues a session's events for the Attach stream's writer thread.
class QueueSink final : public core::EventSink {
 public:
  void Push(const core::Event& e) override {
    wsync::MutexLock lock(&mu_);
    if (!closed_) q_.push_back(e);
  }
  // Blocks for the next event; false once closed and drained.
  bool Pop(core::Event* e) {
    wsync::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || !q_.empty(); };
    mu_.Await(absl::Condition(&ready));
    if (q_.empty()) return false;
    *e = q_.front();
    q_.pop_front();
    return true;
  }
  void Close() {
    wsync::MutexLock lock(&mu_);
    closed_ = true;
  }

 private:
  wsync::Mutex mu_;
  std::deque<core::Event> q_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// Largest bytes field (CUDA IPC handles are 64 bytes).
constexpr size_t kMaxBytesField = 4096;

class PublicService final : public v1::Wsync::Service {
 public:
  PublicService(core::Core* core, const Authenticator* auth, size_t max_name_bytes)
      : core_(core), auth_(auth), max_name_bytes_(max_name_bytes) {}

  grpc::Status Attach(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<v1::AttachEvent, v1::AttachRequest>* stream) override {
    v1::AttachRequest first;
    if (!stream->Read(&first)) return grpc::Status::OK;
    if (!first.has_hello()) {
      return ToGrpcStatus(absl::InvalidArgumentError("the first Attach message must be hello"));
    }
    if (absl::Status s = Limits(first); !s.ok()) return ToGrpcStatus(s);
    core::ClientInfo client;
    client.name = first.hello().client_name().empty() ? "unnamed" : first.hello().client_name();
    client.caller = auth_->Identify(*ctx);
    client.pid = client.caller.pid > 0 ? client.caller.pid : first.hello().pid();
    QueueSink sink;
    auto session = core_->OpenSession(client, &sink);
    if (!session.ok()) return ToGrpcStatus(session.status());
    v1::AttachEvent hello;
    hello.mutable_attached()->set_session_id(*session);
    hello.mutable_attached()->set_daemon_id(core_->daemon_id());
    stream->Write(hello);
    std::thread writer([&] {
      core::Event e;
      while (sink.Pop(&e)) {
        v1::AttachEvent out;
        ToProto(e, &out);
        if (!stream->Write(out)) break;
      }
    });
    v1::AttachRequest req;
    while (stream->Read(&req)) {
      if (req.has_pause_ack()) {
        const auto& a = req.pause_ack();
        absl::Status s = core_->AckPause(*session, a.model_id(), a.replica_id(), a.version());
        if (!s.ok()) Logger("service")->debug("pause ack from {}: {}", *session, s.ToString());
      }
    }
    core_->CloseSession(*session, ctx->IsCancelled() ? "went away (stream cancelled)" : "closed its stream");
    sink.Close();
    writer.join();
    return grpc::Status::OK;
  }

  grpc::Status RegisterModel(grpc::ServerContext* ctx, const v1::RegisterModelRequest* req,
                             v1::RegisterModelResponse* resp) override {
    if (absl::Status s = Limits(*req); !s.ok()) return ToGrpcStatus(s);
    auto args = FromProto(*req);
    if (!args.ok()) return ToGrpcStatus(args.status());
    args->caller = auth_->Identify(*ctx);
    auto r = core_->RegisterModel(*args);
    if (!r.ok()) return ToGrpcStatus(r.status());
    resp->set_model_id(r->model_id);
    resp->set_num_tensors(r->num_tensors);
    resp->set_total_bytes(r->total_bytes);
    return grpc::Status::OK;
  }

  grpc::Status RegisterShards(grpc::ServerContext* ctx, const v1::RegisterShardsRequest* req,
                              v1::RegisterShardsResponse* resp) override {
    if (absl::Status s = Limits(*req); !s.ok()) return ToGrpcStatus(s);
    auto args = FromProto(*req);
    if (!args.ok()) return ToGrpcStatus(args.status());
    args->caller = auth_->Identify(*ctx);
    auto r = core_->RegisterShards(*args);
    if (!r.ok()) return ToGrpcStatus(r.status());
    resp->set_num_buffers(r->num_buffers);
    resp->set_num_pieces(r->num_pieces);
    resp->set_registered_bytes(r->bytes);
    return grpc::Status::OK;
  }

  grpc::Status Sync(grpc::ServerContext* ctx, const v1::SyncRequest* req,
                    grpc::ServerWriter<v1::SyncProgress>* writer) override {
    if (absl::Status s = Limits(*req); !s.ok()) return ToGrpcStatus(s);
    auto args = FromProto(*req);
    if (!args.ok()) return ToGrpcStatus(args.status());
    args->caller = auth_->Identify(*ctx);
    auto last = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    auto progress = [&](const core::Progress& p) {
      auto now = std::chrono::steady_clock::now();
      if (now - last < std::chrono::milliseconds(50) && p.buckets_done != p.buckets_total) return;
      last = now;
      v1::SyncProgress m;
      ToProto(p, m.mutable_progress());
      writer->Write(m);
    };
    auto r = core_->Sync(*args, progress, [ctx] { return ctx->IsCancelled(); });
    if (!r.ok()) return ToGrpcStatus(r.status());
    v1::SyncProgress m;
    ToProto(*r, m.mutable_result());
    writer->Write(m);
    return grpc::Status::OK;
  }

  grpc::Status WaitVersion(grpc::ServerContext* ctx, const v1::WaitVersionRequest* req,
                           v1::WaitVersionResponse* resp) override {
    if (absl::Status s = Limits(*req); !s.ok()) return ToGrpcStatus(s);
    auto r = core_->WaitVersion(req->model_id(), req->replica_id(), req->min_version(),
                                req->timeout_ms(), [ctx] { return ctx->IsCancelled(); });
    if (!r.ok()) return ToGrpcStatus(r.status());
    resp->set_version(r->version);
    resp->set_digest(r->digest);
    return grpc::Status::OK;
  }

  grpc::Status DescribeLayout(grpc::ServerContext*, const v1::DescribeLayoutRequest* req,
                              v1::DescribeLayoutResponse* resp) override {
    if (absl::Status s = Limits(*req); !s.ok()) return ToGrpcStatus(s);
    layout::RecipeOptions options(req->recipe().options().begin(), req->recipe().options().end());
    auto r = core_->DescribeLayout(req->model_id(), req->recipe().name(), options, FromProto(req->rank()));
    if (!r.ok()) return ToGrpcStatus(r.status());
    ToProto(r->first, r->second, resp);
    return grpc::Status::OK;
  }

  grpc::Status GetStatus(grpc::ServerContext* ctx, const v1::GetStatusRequest*,
                         v1::GetStatusResponse* response) override {
    ToProto(core_->GetStatus(auth_->Identify(*ctx)), response);
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    ToProto(core_->GetStatus(auth_->Identify(*ctx)).models, response);
    return grpc::Status::OK;
  }

  grpc::Status Unregister(grpc::ServerContext* ctx, const v1::UnregisterRequest* req,
                          v1::UnregisterResponse* resp) override {
    if (absl::Status s = Limits(*req); !s.ok()) return ToGrpcStatus(s);
    // One rank when both role and rank are given; else a replica or the model.
    const bool one_rank = req->role() != v1::ROLE_UNSPECIFIED && req->has_rank();
    core::Role role = core::Role::kSource;
    if (req->role() != v1::ROLE_UNSPECIFIED) {
      auto r = RoleFromProto(req->role(), absl::StrCat("unregister of model '", req->model_id(), "'"));
      if (!r.ok()) return ToGrpcStatus(r.status());
      role = *r;
    }
    layout::RankCoords rank = FromProto(req->rank());
    auto r = core_->Unregister(auth_->Identify(*ctx), req->model_id(), req->replica_id(), one_rank ? &role : nullptr,
                               one_rank ? &rank : nullptr);
    if (!r.ok()) return ToGrpcStatus(r.status());
    resp->set_released_ranks(*r);
    return grpc::Status::OK;
  }

  grpc::Status CancelSync(grpc::ServerContext* ctx, const v1::CancelSyncRequest* req,
                          v1::CancelSyncResponse* resp) override {
    if (absl::Status s = Limits(*req); !s.ok()) return ToGrpcStatus(s);
    auto r = core_->CancelSync(auth_->Identify(*ctx), req->model_id(), req->version());
    if (!r.ok()) return ToGrpcStatus(r.status());
    resp->set_job_id(*r);
    return grpc::Status::OK;
  }

 private:
  absl::Status Limits(const google::protobuf::Message& m) const {
    return CheckRequestLimits(m, max_name_bytes_, kMaxBytesField);
  }

  core::Core* const core_;
  const Authenticator* const auth_;
  const size_t max_name_bytes_;
};

}  // namespace

std::unique_ptr<v1::Wsync::Service> NewPublicService(core::Core* core, const Authenticator* auth,
                                                     size_t max_name_bytes) {
  return std::make_unique<PublicService>(core, auth, max_name_bytes);
}

}  // namespace wsync::service
