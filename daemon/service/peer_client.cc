#include "daemon/service/peer_client.h"

#include <chrono>

#include "daemon/service/status_mapping.h"
#include "wsync/v1/peer.grpc.pb.h"

namespace wsync::service {
namespace {

class RemoteKvStore final : public transport::KvStore {
 public:
  RemoteKvStore(std::shared_ptr<grpc::Channel> ch, std::string job)
      : stub_(v1::WsyncPeer::NewStub(ch)), job_(std::move(job)) {}

  absl::Status Set(const std::string& key, const std::string& value) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::KvSetRequest req;
    req.set_job_id(job_);
    req.set_key(key);
    req.set_value(value);
    v1::KvSetResponse resp;
    return FromGrpcStatus(stub_->KvSet(&ctx, req, &resp));
  }

  absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    // The server waits up to `timeout`; the call gets a little more.
    ctx.set_deadline(std::chrono::system_clock::now() + timeout + std::chrono::seconds(5));
    v1::KvGetRequest req;
    req.set_job_id(job_);
    req.set_key(key);
    req.set_timeout_ms(static_cast<uint64_t>(timeout.count()));
    v1::KvGetResponse resp;
    if (grpc::Status s = stub_->KvGet(&ctx, req, &resp); !s.ok()) return FromGrpcStatus(s);
    return resp.value();
  }

 private:
  std::unique_ptr<v1::WsyncPeer::Stub> stub_;
  std::string job_;
};

}  // namespace

std::unique_ptr<transport::KvStore> NewRemoteKvStore(std::shared_ptr<grpc::Channel> coordinator, std::string job) {
  return std::make_unique<RemoteKvStore>(std::move(coordinator), std::move(job));
}

}  // namespace wsync::service
