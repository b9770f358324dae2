// Who may do what (docs/security.md), against the real wsyncd binary: a
// second Unix user (created here with useradd; the test needs root) tries
// every cross-identity action through the socket its group may use; TCP
// callers without a certificate are read-only; mTLS clients are identified
// by their certificates.
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "client/cpp/connection.h"
#include "client/cpp/wsync_client.h"
#include "tests/testing/pki.h"
#include "tests/testing/process.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace wsync {
namespace {

using testing::Process;
using testing::Runfile;

constexpr char kUser[] = "wsync-test-intruder";
constexpr char kGroup[] = "wsync-test-clients";

// A directory every user may traverse (the test's own tmp is under /root).
std::string PublicTempDir() {
  char dir[] = "/tmp/wsync-sec-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  REQUIRE(chmod(dir, 0711) == 0);
  return dir;
}

bool EnsureUser() {
  if (getgrnam(kGroup) == nullptr) testing::Run({"groupadd", "--system", kGroup});
  if (getpwnam(kUser) == nullptr) {
    testing::Run({"useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", kGroup, kUser});
  }
  return getpwnam(kUser) != nullptr && getgrnam(kGroup) != nullptr;
}

struct Daemon {
  explicit Daemon(const std::string& dir, std::vector<std::string> extra) {
    socket = dir + "/run/wsyncd.sock";
    std::vector<std::string> argv = {Runfile("daemon/wsyncd"), "--socket", socket, "--grace-period-ms", "1000"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<Process>(argv);
    client::ConnectOptions o;
    o.socket = socket;
    o.connect_timeout_ms = 200;
    bool up = testing::WaitFor([&] { return !proc->Running() || client::Connect(o).ok(); }, 20000);
    INFO("wsyncd stderr:\n" << proc->Stderr());
    REQUIRE(up);
    REQUIRE(proc->Running());
  }
  // The TCP endpoint as bound.
  std::string TcpAddress() {
    client::ConnectOptions o;
    o.socket = socket;
    auto c = client::Client::Attach(o, "probe");
    REQUIRE(c.ok());
    auto st = (*c)->GetStatus();
    REQUIRE(st.ok());
    for (const auto& e : st->endpoints()) {
      if (e.kind() == "tcp") return e.address();
    }
    FAIL("no tcp endpoint");
    return "";
  }
  std::string socket;
  std::unique_ptr<Process> proc;
};

v1::RegisterModelRequest OneTensorModel(const std::string& id) {
  v1::RegisterModelRequest m;
  m.set_model_id(id);
  auto* t = m.add_tensors();
  t->set_name("w");
  t->add_shape(1024);
  t->set_dtype(v1::FLOAT32);
  return m;
}

v1::RegisterShardsRequest WholeSource(const std::string& model, const client::ShmBuffer& b) {
  v1::RegisterShardsRequest r;
  r.set_model_id(model);
  r.set_role(v1::SOURCE);
  v1::BufferSpec* bs = r.add_buffers();
  bs->set_name("w");
  bs->add_shape(1024);
  bs->set_dtype(v1::FLOAT32);
  *bs->mutable_memory() = b.Ref();
  v1::Piece* p = bs->add_pieces();
  p->set_tensor("w");
  p->mutable_canonical()->add_offsets(0);
  p->mutable_canonical()->add_sizes(1024);
  p->mutable_shard()->add_offsets(0);
  p->mutable_shard()->add_sizes(1024);
  return r;
}

// Runs security_probe as the test user against `d`: probe -> "CODE message".
std::map<std::string, std::string> Probe(Daemon& d, const std::string& model, const std::string& session,
                                         const std::string& shm) {
  auto probe = testing::Run({Runfile("tests/integration/security_probe"), kUser, d.socket, model, session, shm},
                            /*timeout_ms=*/120000);
  INFO("probe stdout:\n" << probe.out << "\nprobe stderr:\n" << probe.err << "\nwsyncd:\n" << d.proc->Stderr());
  REQUIRE(probe.exit_code == 0);
  std::map<std::string, std::string> got;
  std::istringstream lines(probe.out);
  for (std::string line; std::getline(lines, line);) {
    auto sp = line.find(' ');
    got[line.substr(0, sp)] = sp == std::string::npos ? "" : line.substr(sp + 1);
  }
  return got;
}

TEST_CASE("another Unix user is refused every action on root's model and session, and sees none of its secrets") {
  if (geteuid() != 0) {
    WARN("skipped: creating a second user needs root");
    return;
  }
  REQUIRE(EnsureUser());
  const std::string dir = PublicTempDir();
  // --socket-group: members of the group reach the socket, although wsyncd
  // created its directory 0750 root:root.
  Daemon d(dir, {"--socket-group", kGroup});

  client::ConnectOptions o;
  o.socket = d.socket;
  auto root = client::Client::Attach(o, "root-trainer");
  REQUIRE(root.ok());
  REQUIRE((*root)->RegisterModel(OneTensorModel("secret")).ok());
  auto shm = (*root)->Allocate(4096);
  REQUIRE(shm.ok());
  std::memset(shm->data, 0x5a, 4096);
  auto reg = (*root)->RegisterShards(WholeSource("secret", *shm));
  INFO(reg.status().ToString());
  REQUIRE(reg.ok());

  std::map<std::string, std::string> got = Probe(d, "secret", (*root)->session_id(), shm->shm_name);
  auto code = [&](const std::string& p) { return got[p].substr(0, got[p].find(' ')); };
  CHECK(code("attach") == "OK");
  CHECK(code("status") == "OK");
  CHECK(got["status_shows_victim_session"] == "no");
  CHECK(got["status_shows_victim_shm"] == "no");
  for (const char* p : {"register_victim_model", "register_with_victim_session", "register_victim_shm",
                        "sync_victim_model", "cancel_victim_model", "unregister_victim_model", "peer_join",
                        "peer_kvset"}) {
    INFO(p << ": " << got[p]);
    CHECK(code(p) == "PERMISSION_DENIED");
  }
  CHECK_THAT(got["register_with_victim_session"], Catch::Contains("session opened by another identity"));
  CHECK_THAT(got["register_victim_shm"], Catch::Contains("is owned by uid 0"));
  CHECK_THAT(got["sync_victim_model"], Catch::Contains("belongs to uid 0"));
  CHECK_THAT(got["peer_join"], Catch::Contains("not served on the local socket"));
  // What it may do: its own model with its own memory.
  CHECK(code("register_own_model") == "OK");
  CHECK(code("register_own_shm") == "OK");
  // Root's memory and model are untouched.
  CHECK(static_cast<unsigned char*>(shm->data)[100] == 0x5a);
  auto st = (*root)->GetStatus();
  REQUIRE(st.ok());
  bool found = false;
  for (const auto& m : st->models()) found |= m.model_id() == "secret" && m.ranks_size() == 1;
  CHECK(found);
  // Root, an administrator, sees every session id.
  CHECK(st->SerializeAsString().find((*root)->session_id()) != std::string::npos);
}

TEST_CASE("members of --admin-group act on other users' models, but never map their memory or use their sessions") {
  if (geteuid() != 0) {
    WARN("skipped: creating a second user needs root");
    return;
  }
  REQUIRE(EnsureUser());
  Daemon d(PublicTempDir(), {"--socket-group", kGroup, "--admin-group", kGroup});
  client::ConnectOptions o;
  o.socket = d.socket;
  auto root = client::Client::Attach(o, "root-trainer");
  REQUIRE(root.ok());
  REQUIRE((*root)->RegisterModel(OneTensorModel("secret")).ok());
  auto shm = (*root)->Allocate(4096);
  REQUIRE(shm.ok());
  REQUIRE((*root)->RegisterShards(WholeSource("secret", *shm)).ok());
  auto got = Probe(d, "secret", (*root)->session_id(), shm->shm_name);
  auto code = [&](const std::string& p) { return got[p].substr(0, got[p].find(' ')); };
  // Past authorization: the sync fails for lack of replicas, not permission.
  INFO("sync: " << got["sync_victim_model"]);
  CHECK(code("sync_victim_model") == "FAILED_PRECONDITION");
  CHECK(code("register_victim_model") == "OK");
  CHECK(code("unregister_victim_model") == "OK");
  CHECK(got["status_shows_victim_session"] == "yes");  // administrators see every session
  // What no administrator may do.
  CHECK(code("register_with_victim_session") == "PERMISSION_DENIED");
  CHECK(code("register_victim_shm") == "PERMISSION_DENIED");
  CHECK(code("peer_join") == "PERMISSION_DENIED");
}

TEST_CASE("TCP callers without a certificate only read, unless --allow-anonymous-writes") {
  const std::string dir = PublicTempDir();
  for (bool writes : {false, true}) {
    std::vector<std::string> flags = {"--listen", "127.0.0.1:0", "--insecure"};
    if (writes) flags.push_back("--allow-anonymous-writes");
    Daemon d(dir + (writes ? "/w" : "/r"), flags);
    client::ConnectOptions o;
    o.address = d.TcpAddress();
    o.insecure = true;
    auto c = client::Client::Attach(o, "anonymous");
    REQUIRE(c.ok());
    CHECK((*c)->GetStatus().ok());
    auto m = (*c)->RegisterModel(OneTensorModel("anon"));
    INFO(m.status().ToString());
    if (writes) {
      CHECK(m.ok());
      continue;
    }
    CHECK(m.status().code() == absl::StatusCode::kPermissionDenied);
    CHECK_THAT(std::string(m.status().message()), Catch::Contains("anonymous"));
    // A model a local user registered cannot be synced, cancelled or
    // unregistered from TCP either.
    client::ConnectOptions lo;
    lo.socket = d.socket;
    auto local = client::Client::Attach(lo, "local");
    REQUIRE(local.ok());
    REQUIRE((*local)->RegisterModel(OneTensorModel("anon")).ok());
    v1::SyncRequest s;
    s.set_model_id("anon");
    s.set_version(1);
    CHECK((*c)->Sync(s, nullptr).status().code() == absl::StatusCode::kPermissionDenied);
    auto stub = v1::Wsync::NewStub(*client::Connect(o));
    grpc::ClientContext ctx;
    v1::UnregisterRequest u;
    u.set_model_id("anon");
    v1::UnregisterResponse ur;
    CHECK(stub->Unregister(&ctx, u, &ur).error_code() == grpc::StatusCode::PERMISSION_DENIED);
  }
}

TEST_CASE("mTLS clients are identified by their certificates: one may not act on another's model") {
  const std::string dir = PublicTempDir();
  const std::string pki = dir + "/pki";
  REQUIRE(mkdir(pki.c_str(), 0700) == 0);
  const std::string err = testing::MakeTestPki(pki, {"server", "alice", "bob"});
  INFO(err);
  REQUIRE(err.empty());
  Daemon d(dir + "/d", {"--listen", "127.0.0.1:0", "--tls-cert", pki + "/server.pem", "--tls-key",
                        pki + "/server.key", "--tls-client-ca", pki + "/ca.pem"});
  auto as = [&](const std::string& name) {
    client::ConnectOptions o;
    o.address = d.TcpAddress();
    o.tls_ca = pki + "/ca.pem";
    o.tls_cert = pki + "/" + name + ".pem";
    o.tls_key = pki + "/" + name + ".key";
    auto c = client::Client::Attach(o, name);
    REQUIRE(c.ok());
    return std::move(*c);
  };
  auto alice = as("alice");
  auto bob = as("bob");
  REQUIRE(alice->RegisterModel(OneTensorModel("alices")).ok());
  auto again = bob->RegisterModel(OneTensorModel("alices"));
  CHECK(again.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK_THAT(std::string(again.status().message()),
             Catch::Contains("certificate 'bob'") && Catch::Contains("certificate 'alice'"));
  v1::SyncRequest s;
  s.set_model_id("alices");
  s.set_version(1);
  CHECK(bob->Sync(s, nullptr).status().code() == absl::StatusCode::kPermissionDenied);
  // Alice's own sync gets past authorization (and fails for lack of ranks).
  CHECK(alice->Sync(s, nullptr).status().code() == absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace wsync
