#include "daemon/service/peer_client.h"

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/service/convert.h"
#include "daemon/service/status_mapping.h"
#include "wsync/v1/peer.grpc.pb.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

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

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream f(path);
  if (!f) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " '", path, "'"));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class GrpcPeerLink final : public core::PeerLink {
 public:
  GrpcPeerLink(const PeerLinkOptions& o, std::shared_ptr<grpc::ChannelCredentials> creds)
      : options_(o), creds_(std::move(creds)) {}

  absl::StatusOr<Joined> Join(const std::string& address, const core::PeerMember& self) override {
    v1::JoinRequest req;
    ToProto(self, req.mutable_self());
    v1::JoinResponse resp;
    if (absl::Status s = Call(address, "Join", options_.call_timeout_ms, &v1::WsyncPeer::Stub::Join, req, &resp);
        !s.ok()) {
      return s;
    }
    Joined j;
    j.daemon_id = resp.coordinator().daemon_id();
    j.incarnation = resp.coordinator().incarnation();
    for (const auto& m : resp.members()) j.members.push_back(FromProto(m));
    return j;
  }

  absl::StatusOr<bool> Heartbeat(const std::string& address, const std::string& daemon_id,
                                 uint64_t incarnation) override {
    v1::HeartbeatRequest req;
    req.set_daemon_id(daemon_id);
    req.set_incarnation(incarnation);
    v1::HeartbeatResponse resp;
    if (absl::Status s =
            Call(address, "Heartbeat", options_.call_timeout_ms, &v1::WsyncPeer::Stub::Heartbeat, req, &resp);
        !s.ok()) {
      return s;
    }
    return resp.rejoin();
  }

  absl::Status Announce(const std::string& address, const core::RankAnnouncement& a) override {
    v1::RankAnnouncement req;
    ToProto(a, &req);
    v1::AnnounceResponse resp;
    return Call(address, "AnnounceRanks", options_.call_timeout_ms, &v1::WsyncPeer::Stub::AnnounceRanks, req, &resp);
  }

  absl::Status Withdraw(const std::string& address, const std::string& daemon_id, const std::string& model_id,
                        core::Role role, const std::string& replica_id, const layout::RankCoords& rank) override {
    v1::WithdrawRequest req;
    req.set_daemon_id(daemon_id);
    req.set_model_id(model_id);
    req.set_role(ToProto(role));
    req.set_replica_id(replica_id);
    ToProto(rank, req.mutable_rank());
    v1::WithdrawResponse resp;
    return Call(address, "WithdrawRanks", options_.call_timeout_ms, &v1::WsyncPeer::Stub::WithdrawRanks, req, &resp);
  }

  absl::StatusOr<std::string> DistributePlan(const std::string& address, const core::PlanPart& part) override {
    v1::PlanPart req;
    ToProto(part, &req);
    v1::PlanAck resp;
    if (absl::Status s = Call(address, "DistributePlan", options_.call_timeout_ms,
                              &v1::WsyncPeer::Stub::DistributePlan, req, &resp);
        !s.ok()) {
      return s;
    }
    return resp.plan_hash();
  }

  absl::StatusOr<core::PrepareResult> Prepare(const std::string& address, const std::string& job_id,
                                              uint64_t timeout_ms) override {
    v1::PrepareRequest req;
    req.set_job_id(job_id);
    req.set_timeout_ms(timeout_ms);
    v1::PrepareResponse resp;
    if (absl::Status s = Call(address, "Prepare", timeout_ms + options_.call_timeout_ms,
                              &v1::WsyncPeer::Stub::Prepare, req, &resp);
        !s.ok()) {
      return s;
    }
    return FromProto(resp);
  }

  absl::Status Commit(const std::string& address, const std::string& job_id, uint64_t version,
                      const std::map<std::string, std::string>& digests) override {
    v1::CommitRequest req;
    req.set_job_id(job_id);
    req.set_version(version);
    for (const auto& [r, d] : digests) (*req.mutable_replica_digests())[r] = d;
    v1::CommitResponse resp;
    return Call(address, "Commit", options_.call_timeout_ms, &v1::WsyncPeer::Stub::Commit, req, &resp);
  }

  absl::Status Abort(const std::string& address, const std::string& job_id, const std::string& reason) override {
    v1::AbortRequest req;
    req.set_job_id(job_id);
    req.set_reason(reason);
    v1::AbortResponse resp;
    return Call(address, "Abort", options_.call_timeout_ms, &v1::WsyncPeer::Stub::Abort, req, &resp);
  }

  std::unique_ptr<transport::KvStore> Store(const std::string& address, const std::string& scope) override {
    return NewRemoteKvStore(Channel(address), scope);
  }

 private:
  std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
    wsync::MutexLock lock(&mu_);
    auto it = channels_.find(address);
    if (it != channels_.end()) return it->second;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
    args.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    // Reconnect quickly after a peer restarts.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto ch = grpc::CreateCustomChannel(address, creds_, args);
    channels_[address] = ch;
    return ch;
  }

  template <typename Req, typename Resp>
  absl::Status Call(const std::string& address, const char* rpc, int64_t timeout_ms,
                    grpc::Status (v1::WsyncPeer::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& req, Resp* resp) {
    auto stub = v1::WsyncPeer::NewStub(Channel(address));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    grpc::Status s = ((*stub).*method)(&ctx, req, resp);
    if (s.ok()) return absl::OkStatus();
    absl::Status st = FromGrpcStatus(s);
    return Annotate(st, absl::StrCat("peer ", address, " ", rpc));
  }

  const PeerLinkOptions options_;
  const std::shared_ptr<grpc::ChannelCredentials> creds_;
  wsync::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<transport::KvStore> NewRemoteKvStore(std::shared_ptr<grpc::Channel> coordinator, std::string job) {
  return std::make_unique<RemoteKvStore>(std::move(coordinator), std::move(job));
}

absl::StatusOr<std::unique_ptr<core::PeerLink>> NewGrpcPeerLink(const PeerLinkOptions& o) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.tls_cert.empty() && o.tls_key.empty() && o.tls_ca.empty()) {
    if (!o.insecure) {
      return absl::InvalidArgumentError(
          "peer connections need TLS (certificate, key and the peers' CA) or an explicit --insecure");
    }
    creds = grpc::InsecureChannelCredentials();
  } else {
    if (o.tls_cert.empty() || o.tls_key.empty() || o.tls_ca.empty()) {
      return absl::InvalidArgumentError(
          "mTLS between peers needs --tls-cert, --tls-key and --tls-client-ca (the CA of the peers)");
    }
    grpc::SslCredentialsOptions ssl;
    auto ca = ReadPem(o.tls_ca, "--tls-client-ca");
    if (!ca.ok()) return ca.status();
    auto cert = ReadPem(o.tls_cert, "--tls-cert");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(o.tls_key, "--tls-key");
    if (!key.ok()) return key.status();
    ssl.pem_root_certs = *ca;
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
    creds = grpc::SslCredentials(ssl);
  }
  return std::unique_ptr<core::PeerLink>(new GrpcPeerLink(o, std::move(creds)));
}

}  // namespace wsync::service
