// Starts the real wsyncd binary on temporary sockets and drives it through
// wsyncctl and through the generated C++ stubs.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <regex>

#include "client/cpp/connection.h"
#include "daemon/service/peer_client.h"
#include "daemon/transport/communicator.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/testing/process.h"
#include "wsync/v1/peer.grpc.pb.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace wsync {
namespace {

using testing::Process;
using testing::Run;
using testing::Runfile;

constexpr int kStartMs = 20000;  // generous: CI machines are slow and noisy

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

bool Answers(const std::string& socket_path) {
  client::ConnectOptions o;
  o.socket = socket_path;
  o.connect_timeout_ms = 200;
  return client::Connect(o).ok();
}

// A wsyncd child on a fresh socket, stopped (SIGKILL) when it goes away.
struct Daemon {
  explicit Daemon(std::vector<std::string> extra = {}) {
    dir = testing::MakeTempDir();
    socket = dir + "/run/wsyncd.sock";
    std::vector<std::string> argv = {Runfile("daemon/wsyncd"), "--socket", socket,
                                     "--grace-period-ms", "2000"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<Process>(argv);
    bool up = testing::WaitFor([&] { return !proc->Running() || Answers(socket); }, kStartMs);
    INFO("wsyncd stderr:\n" << proc->Stderr());
    REQUIRE(up);
    REQUIRE(proc->Running());
  }

  std::shared_ptr<grpc::Channel> Channel() {
    client::ConnectOptions o;
    o.socket = socket;
    auto ch = client::Connect(o);
    REQUIRE(ch.ok());
    return *ch;
  }

  testing::RunResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {Runfile("client/cli/wsyncctl"), "--socket", socket});
    return Run(args);
  }

  std::string dir, socket;
  std::unique_ptr<Process> proc;
};

v1::GetStatusResponse GetStatus(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Wsync::NewStub(channel);
  grpc::ClientContext ctx;
  v1::GetStatusResponse response;
  grpc::Status s = stub->GetStatus(&ctx, v1::GetStatusRequest(), &response);
  INFO(s.error_message());
  REQUIRE(s.ok());
  return response;
}

TEST_CASE("wsyncctl reports health and status of a running daemon") {
  Daemon d;
  auto health = d.Ctl({"health"});
  INFO(health.err);
  CHECK(health.exit_code == 0);
  CHECK(health.out == "SERVING\n");

  auto status = d.Ctl({"status"});
  INFO(status.err);
  CHECK(status.exit_code == 0);
  CHECK_THAT(status.out, Catch::Contains("SERVING"));
  CHECK_THAT(status.out, Catch::Contains(d.socket));
  CHECK_THAT(status.out, Catch::Contains("(none registered)"));
  CHECK_THAT(status.out, Catch::Contains("(none running)"));
  CHECK_THAT(status.out, Catch::Contains("pid " + std::to_string(d.proc->pid())));

  auto json = d.Ctl({"--json", "status"});
  CHECK(json.exit_code == 0);
  CHECK_THAT(json.out, Catch::Contains("\"daemon_id\":"));
  CHECK_THAT(json.out, Catch::Contains("\"serving\": true"));
  CHECK_THAT(json.out, Catch::Contains("\"pid\": \"" + std::to_string(d.proc->pid()) + "\""));
}

TEST_CASE("the C++ stubs see status, health and precise errors") {
  Daemon d({"--daemon-id", "node-under-test", "--listen", "127.0.0.1:0", "--insecure"});
  auto channel = d.Channel();
  v1::GetStatusResponse st = GetStatus(channel);
  CHECK(st.daemon_id() == "node-under-test");
  CHECK(st.serving());
  CHECK(st.pid() == d.proc->pid());
  CHECK(st.models_size() == 0);
  CHECK(st.jobs_size() == 0);
  CHECK(st.gpus_size() >= 1);  // a GPU, or the reason there is none
  std::string tcp;
  bool has_unix = false;
  for (const auto& e : st.endpoints()) {
    if (e.kind() == "unix") has_unix = e.address() == d.socket;
    if (e.kind() == "tcp") tcp = e.address();
  }
  CHECK(has_unix);
  REQUIRE_THAT(tcp, Catch::StartsWith("127.0.0.1:"));
  CHECK(tcp != "127.0.0.1:0");

  SECTION("health over the socket") {
    auto health = grpc::health::v1::Health::NewStub(channel);
    for (const char* service : {"", "wsync.v1.Wsync", "wsync.v1.WsyncPeer"}) {
      grpc::ClientContext ctx;
      grpc::health::v1::HealthCheckRequest req;
      req.set_service(service);
      grpc::health::v1::HealthCheckResponse resp;
      REQUIRE(health->Check(&ctx, req, &resp).ok());
      CHECK(resp.status() == grpc::health::v1::HealthCheckResponse::SERVING);
    }
  }

  SECTION("status over plaintext TCP, through the stub and wsyncctl") {
    client::ConnectOptions o;
    o.address = tcp;
    o.insecure = true;
    auto ch = client::Connect(o);
    REQUIRE(ch.ok());
    CHECK(GetStatus(*ch).daemon_id() == "node-under-test");
    auto r = Run({Runfile("client/cli/wsyncctl"), "--address", tcp, "--insecure", "health"});
    CHECK(r.exit_code == 0);
    CHECK(r.out == "SERVING\n");
  }

  SECTION("bad requests get precise errors, on the public and the peer service") {
    auto stub = v1::Wsync::NewStub(channel);
    grpc::ClientContext ctx;
    v1::RegisterModelResponse resp;
    grpc::Status s = stub->RegisterModel(&ctx, v1::RegisterModelRequest(), &resp);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message() == "model id '' must match [A-Za-z0-9._-]{1,128}");
    grpc::ClientContext sctx;
    v1::SyncRequest sreq;
    sreq.set_model_id("nope");
    sreq.set_version(1);
    auto reader = stub->Sync(&sctx, sreq);
    v1::SyncProgress p;
    while (reader->Read(&p)) {
    }
    s = reader->Finish();
    CHECK(s.error_code() == grpc::StatusCode::NOT_FOUND);
    CHECK(s.error_message() == "model 'nope' is not registered");

    auto peer = v1::WsyncPeer::NewStub(channel);
    grpc::ClientContext pctx;
    v1::PlanAck ack;
    s = peer->DistributePlan(&pctx, v1::PlanPart(), &ack);  // the peer service, from a local client
    CHECK(s.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_THAT(s.error_message(), Catch::Contains("not served on the local socket"));
  }
}

TEST_CASE("SIGTERM drains, removes the socket and exits 0") {
  Daemon d;
  struct stat st;
  REQUIRE(stat(d.socket.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
  std::string dir = d.socket.substr(0, d.socket.rfind('/'));
  REQUIRE(stat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0750);

  d.proc->Signal(SIGTERM);
  d.proc->Signal(SIGTERM);  // a second shutdown request changes nothing
  int code = d.proc->Wait(kStartMs);
  INFO(d.proc->Stderr());
  CHECK(code == 0);
  CHECK_FALSE(Exists(d.socket));
  CHECK_FALSE(Exists(d.socket + ".lock"));
  CHECK_THAT(d.proc->Stderr(), Catch::Contains("health NOT_SERVING"));
  CHECK_THAT(d.proc->Stderr(), Catch::Contains("removed socket"));

  auto r = Run({Runfile("client/cli/wsyncctl"), "--socket", d.socket, "status"});
  CHECK(r.exit_code == 3);
  CHECK_THAT(r.err, Catch::Contains(d.socket));
}

TEST_CASE("SIGINT also exits 0") {
  Daemon d;
  d.proc->Signal(SIGINT);
  CHECK(d.proc->Wait(kStartMs) == 0);
  CHECK_FALSE(Exists(d.socket));
}

TEST_CASE("a second daemon on the same socket refuses to start and says why") {
  Daemon first;
  auto second = Run({Runfile("daemon/wsyncd"), "--socket", first.socket});
  CHECK(second.exit_code == 1);
  CHECK_THAT(second.err, Catch::Contains("owned by another running wsyncd"));
  CHECK_THAT(second.err, Catch::Contains("pid " + std::to_string(first.proc->pid())));
  CHECK_THAT(second.err, Catch::Contains(first.socket));
  // The first daemon is unaffected.
  auto health = first.Ctl({"health"});
  CHECK(health.exit_code == 0);
  CHECK(Exists(first.socket));
}

TEST_CASE("a stale socket left by a dead daemon is replaced") {
  std::string dir = testing::MakeTempDir();
  std::string path = dir + "/wsyncd.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  close(fd);  // the file stays; nothing accepts on it
  Process p({Runfile("daemon/wsyncd"), "--socket", path});
  REQUIRE(testing::WaitFor([&] { return !p.Running() || Answers(path); }, kStartMs));
  INFO(p.Stderr());
  CHECK(p.Running());
  CHECK_THAT(p.Stderr(), Catch::Contains("replaced stale socket"));
  p.Signal(SIGTERM);
  CHECK(p.Wait(kStartMs) == 0);
}

TEST_CASE("bad flags and config keys stop the daemon before it binds anything") {
  std::string dir = testing::MakeTempDir();
  std::string config = dir + "/wsyncd.toml";
  std::ofstream(config) << "socket = \"" << dir << "/x.sock\"\nlisten-adress = \"0.0.0.0:1\"\n";
  auto r = Run({Runfile("daemon/wsyncd"), "--config", config});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("unknown key 'listen-adress'"));
  CHECK_FALSE(Exists(dir + "/x.sock"));

  r = Run({Runfile("daemon/wsyncd"), "--socket", dir + "/y.sock", "--listen", "127.0.0.1:0"});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("--insecure"));
  CHECK_FALSE(Exists(dir + "/y.sock"));
}

TEST_CASE("peers join, heartbeat, and rendezvous Gloo groups through the daemon's store") {
  Daemon d({"--listen", "127.0.0.1:0", "--insecure"});
  std::string tcp;
  const v1::GetStatusResponse status = GetStatus(d.Channel());
  for (const auto& e : status.endpoints()) {
    if (e.kind() == "tcp") tcp = e.address();
  }
  client::ConnectOptions o;
  o.address = tcp;
  o.insecure = true;
  auto ch = client::Connect(o);
  REQUIRE(ch.ok());
  auto peer = v1::WsyncPeer::NewStub(*ch);
  v1::JoinRequest join;
  join.mutable_self()->set_daemon_id("node-b");
  join.mutable_self()->set_address("10.0.0.2:7070");
  join.mutable_self()->set_incarnation(42);
  v1::JoinResponse jr;
  grpc::ClientContext c1;
  REQUIRE(peer->Join(&c1, join, &jr).ok());
  CHECK(jr.epoch() == 1);
  REQUIRE(jr.members_size() == 1);
  CHECK(jr.members(0).daemon_id() == "node-b");
  v1::HeartbeatRequest hb;
  hb.set_daemon_id("node-b");
  hb.set_incarnation(43);  // a restarted daemon it does not know yet
  v1::HeartbeatResponse hr;
  grpc::ClientContext c2;
  REQUIRE(peer->Heartbeat(&c2, hb, &hr).ok());
  CHECK(hr.rejoin());

  // Two Gloo ranks (threads here, daemons in production) rendezvous through
  // the daemon's KV store over TCP and exchange bytes.
  std::vector<absl::Status> st(2);
  std::vector<std::vector<int>> got(2, std::vector<int>(256));
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      auto store = service::NewRemoteKvStore(*ch, "job-1");
      transport::GlooOptions go;
      go.timeout = std::chrono::milliseconds(10000);
      auto comm = transport::CreateGlooCommunicator(store.get(), "sync-1/gloo", r, 2, go);
      if (!comm.ok()) {
        st[r] = comm.status();
        return;
      }
      std::vector<int> mine(256, 100 + r);
      st[r] = (*comm)->Exchange({{transport::P2P::Kind::kSend, mine.data(), 1024, 1 - r, 1},
                                 {transport::P2P::Kind::kRecv, got[r].data(), 1024, 1 - r, 1}});
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 2; ++r) {
    INFO(st[r].ToString());
    CHECK(st[r].ok());
    CHECK(got[r] == std::vector<int>(256, 100 + (1 - r)));
  }
  // A key nobody sets times out with its name.
  auto store = service::NewRemoteKvStore(*ch, "job-2");
  auto missing = store->Get("never", std::chrono::milliseconds(100));
  CHECK(missing.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(missing.status().message() == "rendezvous key 'never' of job 'job-2' did not appear within 100 ms");
}

TEST_CASE("the C++ client example syncs through a real daemon") {
  Daemon d;
  auto r = Run({Runfile("client/cpp/wsync_example"), "--socket", d.socket});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("version 1 committed") && Catch::Contains("all bytes match"));
  // The example's session ended: its registrations and model are gone.
  auto status = d.Ctl({"models"});
  CHECK_THAT(status.out, Catch::Contains("(no models registered)"));
}

TEST_CASE("--metrics-listen serves Prometheus metrics: syncs counted, status as gauges") {
  Daemon d({"--metrics-listen", "127.0.0.1:0"});
  std::string url;
  const v1::GetStatusResponse status = GetStatus(d.Channel());
  for (const auto& e : status.endpoints()) {
    if (e.kind() == "metrics") url = e.address();
  }
  INFO(url);
  std::smatch m;
  REQUIRE(std::regex_match(url, m, std::regex(R"(http://127\.0\.0\.1:([0-9]+)/metrics)")));
  CHECK_THAT(d.Ctl({"status"}).out, Catch::Contains("metrics") && Catch::Contains(url));
  auto r = Run({Runfile("client/cpp/wsync_example"), "--socket", d.socket});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);

  httplib::Client http("127.0.0.1", std::stoi(m[1]));
  auto res = http.Get("/metrics");
  REQUIRE(res);
  CHECK(res->status == 200);
  const std::string& body = res->body;
  INFO(body);
  // The example's one sync: counted by model and outcome, its bytes by path,
  // its duration observed once.
  CHECK(std::regex_search(body, std::regex(R"(\nwsync_syncs_total\{model="[^"]+",outcome="ok"\} 1\n)")));
  CHECK(std::regex_search(body, std::regex(R"(\nwsync_sync_bytes_total\{model="[^"]+",path="host"\} [1-9][0-9]*\n)")));
  CHECK(std::regex_search(body, std::regex(R"(\nwsync_sync_duration_seconds_count\{model="[^"]+"\} 1\n)")));
  CHECK_THAT(body, Catch::Contains("\nwsync_serving 1\n") && Catch::Contains("\nwsync_watchdog_aborts_total 0\n"));

  // A malformed address stops the daemon before it binds anything.
  auto bad = Run({Runfile("daemon/wsyncd"), "--socket", d.dir + "/other.sock", "--metrics-listen", "9464"});
  CHECK(bad.exit_code != 0);
  CHECK_THAT(bad.err, Catch::Contains("--metrics-listen must be host:port, got '9464'"));
}

TEST_CASE("JSON logs and SIGHUP reload of the log level") {
  std::string dir = testing::MakeTempDir();
  std::string config = dir + "/wsyncd.toml";
  std::ofstream(config) << "log-level = \"info\"\nlog-format = \"json\"\n";
  Daemon d({"--config", config});
  CHECK_THAT(d.proc->Stderr(), Catch::StartsWith("{\"ts\":\""));
  CHECK_THAT(d.proc->Stderr(), Catch::Contains("\"logger\":\"server\""));

  std::ofstream(config, std::ios::trunc) << "log-level = \"debug\"\nlog-format = \"json\"\n";
  d.proc->Signal(SIGHUP);
  bool reloaded = testing::WaitFor(
      [&] { return d.proc->Stderr().find("log settings reloaded: level=debug") != std::string::npos; },
      kStartMs);
  INFO(d.proc->Stderr());
  CHECK(reloaded);
  CHECK(d.proc->Running());
  d.proc->Signal(SIGTERM);
  CHECK(d.proc->Wait(kStartMs) == 0);
}

}  // namespace
}  // namespace wsync
