// Run by security_test as root: becomes another Unix user, then tries every
// cross-identity action against a daemon and prints one line per probe:
// "<probe> <grpc status code name> <message>". It decides nothing itself;
// the test checks the lines.
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <grpcpp/grpcpp.h>

#include "client/cpp/connection.h"
#include "client/cpp/wsync_client.h"
#include "wsync/v1/peer.grpc.pb.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace {

namespace v1 = wsync::v1;

const char* CodeName(absl::StatusCode c) {
  switch (c) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case absl::StatusCode::kNotFound: return "NOT_FOUND";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    default: return "OTHER";
  }
}

void Print(const std::string& probe, const absl::Status& s) {
  std::printf("%s %s %s\n", probe.c_str(), CodeName(s.code()), std::string(s.message()).c_str());
  std::fflush(stdout);
}

void Print(const std::string& probe, const grpc::Status& s) {
  Print(probe, absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message()));
}

v1::BufferSpec Buffer(const std::string& shm, uint64_t nbytes) {
  v1::BufferSpec b;
  b.set_name("w");
  b.add_shape(static_cast<int64_t>(nbytes / 4));
  b.set_dtype(v1::FLOAT32);
  b.mutable_memory()->mutable_host_shm()->set_name(shm);
  b.mutable_memory()->set_nbytes(nbytes);
  v1::Piece* p = b.add_pieces();
  p->set_tensor("w");
  p->mutable_canonical()->add_offsets(0);
  p->mutable_canonical()->add_sizes(static_cast<int64_t>(nbytes / 4));
  p->mutable_shard()->add_offsets(0);
  p->mutable_shard()->add_sizes(static_cast<int64_t>(nbytes / 4));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s USER SOCKET MODEL VICTIM_SESSION VICTIM_SHM\n", argv[0]);
    return 2;
  }
  const std::string user = argv[1], socket = argv[2], model = argv[3], victim_session = argv[4],
                    victim_shm = argv[5];
  passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr || initgroups(user.c_str(), pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
      setuid(pw->pw_uid) != 0) {
    std::perror("becoming the test user");
    return 2;
  }
  wsync::client::ConnectOptions o;
  o.socket = socket;
  auto client = wsync::client::Client::Attach(o, "intruder");
  Print("attach", client.status());
  if (!client.ok()) return 0;
  wsync::client::Client& c = **client;

  auto st = c.GetStatus();
  Print("status", st.status());
  if (st.ok()) {
    std::printf("status_shows_victim_session %s\n",
                st->SerializeAsString().find(victim_session) == std::string::npos ? "no" : "yes");
    std::printf("status_shows_victim_shm %s\n",
                st->SerializeAsString().find(victim_shm) == std::string::npos ? "no" : "yes");
  }

  v1::RegisterModelRequest same;
  same.set_model_id(model);
  auto* t = same.add_tensors();
  t->set_name("w");
  t->add_shape(1024);
  t->set_dtype(v1::FLOAT32);
  Print("register_victim_model", c.RegisterModel(same).status());

  // The victim's session id, as if it had leaked: the request goes through
  // the stub directly so that the client does not put its own id in.
  auto channel = wsync::client::Connect(o);
  auto stub = v1::Wsync::NewStub(*channel);
  {
    v1::RegisterShardsRequest r;
    r.set_session_id(victim_session);
    r.set_model_id(model);
    r.set_role(v1::TARGET);
    r.set_replica_id("stolen");
    *r.add_buffers() = Buffer(victim_shm, 4096);
    grpc::ClientContext ctx;
    v1::RegisterShardsResponse resp;
    Print("register_with_victim_session", stub->RegisterShards(&ctx, r, &resp));
  }
  {
    // Its own model and session, but the victim's shm object.
    v1::RegisterModelRequest mine = same;
    mine.set_model_id("intruder-model");
    Print("register_own_model", c.RegisterModel(mine).status());
    v1::RegisterShardsRequest r;
    r.set_model_id("intruder-model");
    r.set_role(v1::TARGET);
    r.set_replica_id("r");
    *r.add_buffers() = Buffer(victim_shm, 4096);
    Print("register_victim_shm", c.RegisterShards(r).status());
    auto own = c.Allocate(4096);
    if (own.ok()) {
      r.mutable_buffers(0)->mutable_memory()->mutable_host_shm()->set_name(own->shm_name);
      Print("register_own_shm", c.RegisterShards(r).status());
    }
  }
  {
    v1::SyncRequest r;
    r.set_model_id(model);
    r.set_version(7);
    Print("sync_victim_model", c.Sync(r, nullptr).status());
  }
  {
    v1::CancelSyncRequest r;
    r.set_model_id(model);
    grpc::ClientContext ctx;
    v1::CancelSyncResponse resp;
    Print("cancel_victim_model", stub->CancelSync(&ctx, r, &resp));
  }
  {
    v1::UnregisterRequest r;
    r.set_model_id(model);
    grpc::ClientContext ctx;
    v1::UnregisterResponse resp;
    Print("unregister_victim_model", stub->Unregister(&ctx, r, &resp));
  }
  auto peer = v1::WsyncPeer::NewStub(*channel);
  {
    v1::JoinRequest r;
    r.mutable_self()->set_daemon_id("fake-daemon");
    r.mutable_self()->set_address("127.0.0.1:1");
    grpc::ClientContext ctx;
    v1::JoinResponse resp;
    Print("peer_join", peer->Join(&ctx, r, &resp));
  }
  {
    v1::KvSetRequest r;
    r.set_job_id("j");
    r.set_key("k");
    r.set_value(std::string(2 << 20, 'x'));  // over --max-kv-value-bytes too
    grpc::ClientContext ctx;
    v1::KvSetResponse resp;
    Print("peer_kvset", peer->KvSet(&ctx, r, &resp));
  }
  return 0;
}
