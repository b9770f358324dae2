#include "daemon/service/public_service.h"

#include "absl/strings/str_cat.h"
#include "daemon/service/convert.h"
#include "daemon/service/status_mapping.h"

namespace wsync::service {
namespace {

// What an RPC that a later component provides answers until then.
grpc::Status NotYet(const char* rpc, const char* missing) {
  return ToGrpcStatus(absl::UnimplementedError(
      absl::StrCat("wsync.v1.Wsync/", rpc, " is not implemented in this wsyncd build: ", missing)));
}

constexpr char kRegistry[] =
    "it needs the session/registry layer (daemon/core registry and daemon/memory), which is not "
    "built yet";
constexpr char kSyncJobs[] = "it needs sync jobs (daemon/core jobs and the planner), which are not built yet";

class PublicService final : public v1::Wsync::Service {
 public:
  explicit PublicService(core::Core* core) : core_(core) {}

  grpc::Status Attach(grpc::ServerContext*,
                      grpc::ServerReaderWriter<v1::AttachEvent, v1::AttachRequest>*) override {
    return NotYet("Attach", kRegistry);
  }

  grpc::Status RegisterModel(grpc::ServerContext*, const v1::RegisterModelRequest*,
                             v1::RegisterModelResponse*) override {
    return NotYet("RegisterModel", kRegistry);
  }

  grpc::Status RegisterShards(grpc::ServerContext*, const v1::RegisterShardsRequest*,
                              v1::RegisterShardsResponse*) override {
    return NotYet("RegisterShards", kRegistry);
  }

  grpc::Status Sync(grpc::ServerContext*, const v1::SyncRequest*,
                    grpc::ServerWriter<v1::SyncProgress>*) override {
    return NotYet("Sync", kSyncJobs);
  }

  grpc::Status WaitVersion(grpc::ServerContext*, const v1::WaitVersionRequest*,
                           v1::WaitVersionResponse*) override {
    return NotYet("WaitVersion", kSyncJobs);
  }

  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                         v1::GetStatusResponse* response) override {
    ToProto(core_->GetStatus(), response);
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    ToProto(core_->GetStatus().models, response);
    return grpc::Status::OK;
  }

  grpc::Status Unregister(grpc::ServerContext*, const v1::UnregisterRequest*,
                          v1::UnregisterResponse*) override {
    return NotYet("Unregister", kRegistry);
  }

  grpc::Status CancelSync(grpc::ServerContext*, const v1::CancelSyncRequest*,
                          v1::CancelSyncResponse*) override {
    return NotYet("CancelSync", kSyncJobs);
  }

 private:
  core::Core* const core_;
};

}  // namespace

std::unique_ptr<v1::Wsync::Service> NewPublicService(core::Core* core) {
  return std::make_unique<PublicService>(core);
}

}  // namespace wsync::service
