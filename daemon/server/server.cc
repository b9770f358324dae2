#include "daemon/server/server.h"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/build_info.h"
#include "daemon/common/logging.h"
#include "daemon/server/uds_listener.h"
#include "daemon/server/unix_socket.h"
#include "absl/time/clock.h"
#include "daemon/core/peer.h"
#include "daemon/service/metrics_http.h"
#include "daemon/service/peer_client.h"
#include "daemon/service/peer_service.h"
#include "daemon/service/public_service.h"

#ifdef WSYNC_WITH_CUDA
#include "kernels/device_info.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"
#endif

namespace wsync::server {
namespace {

constexpr char kPublicServiceName[] = "wsync.v1.Wsync";
constexpr char kPeerServiceName[] = "wsync.v1.WsyncPeer";

std::vector<std::string> ProbeGpus() {
#ifdef WSYNC_WITH_CUDA
  auto gpus = kernels::ListGpus();
  if (!gpus.ok()) return {absl::StrCat("none: ", gpus.status().ToString())};
  if (gpus->empty()) return {"none: no CUDA device visible"};
  std::vector<std::string> out;
  for (const auto& g : *gpus) out.push_back(kernels::Describe(g));
  return out;
#else
  return {"none: this build has no CUDA support"};
#endif
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "wsyncd";
  return buf;
}

// The host part of `host_port` as peers should dial it: a wildcard bind
// address becomes the host name.
std::string ReachableHost(const std::string& host_port) {
  std::string host = host_port.substr(0, host_port.rfind(':'));
  return host == "0.0.0.0" || host == "[::]" || host.empty() ? HostName() : host;
}

class ServerImpl final : public Server {
 public:
  ServerImpl(Options options, std::unique_ptr<Metrics> metrics, std::unique_ptr<core::PeerLink> peers,
             std::unique_ptr<core::Core> core)
      : options_(std::move(options)),
        metrics_(std::move(metrics)),
        peers_(std::move(peers)),
        core_(std::move(core)),
        log_(Logger("server")) {}

  ~ServerImpl() override { Shutdown(); }

  absl::Status Init() {
    grpc::EnableDefaultHealthCheckService(true);
    service::Authenticator::Options ao;
    ao.admin_group = options_.admin_group;
    ao.anonymous_writes = options_.allow_anonymous_writes;
    ao.peer_identities = absl::StrSplit(options_.peer_identities, ',', absl::SkipEmpty());
    ao.insecure_peers = options_.insecure;
    auto auth = service::Authenticator::Create(ao, [this](const std::string& peer) -> std::optional<service::UnixCred> {
      if (!absl::StartsWith(peer, "fd:")) return std::nullopt;  // only the local socket hands gRPC descriptors
      PeerCred c = uds_ ? uds_->Lookup(peer) : PeerCred{};
      return service::UnixCred{c.pid, c.uid, c.gid};
    });
    if (!auth.ok()) return auth.status();
    auth_ = std::move(*auth);
    if (options_.allow_anonymous_writes) {
      log_->warn("--allow-anonymous-writes: callers without a client certificate may register, sync, cancel and "
                 "unregister models{}", options_.listen.empty() ? "" : absl::StrCat(" over ", options_.listen));
    }
    if (!options_.tls_client_ca.empty() && ao.peer_identities.empty()) {
      log_->warn("mTLS is on but --peer-identities is empty: no daemon may use this daemon's peer service");
    }
    public_service_ = service::NewPublicService(core_.get(), auth_.get(), static_cast<size_t>(options_.max_name_bytes));
    peer_service_ = service::NewPeerService(core_.get(), core_.get(), auth_.get());

    grpc::ServerBuilder builder;
    builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.RegisterService(public_service_.get());
    builder.RegisterService(peer_service_.get());

    if (!options_.socket.empty()) {
      auto claim = SocketClaim::Acquire(options_.socket);
      if (!claim.ok()) return claim.status();
      socket_ = std::move(*claim);
      // Connections are accepted by UdsListener (for SO_PEERCRED) and handed
      // to gRPC one by one.
      auto uds = UdsListener::Listen(options_.socket);
      if (!uds.ok()) {
        socket_->Release();
        return uds.status();
      }
      uds_ = std::move(*uds);
    }
    int tcp_port = -1;
    bool tls = false;
    if (!options_.listen.empty()) {
      std::shared_ptr<grpc::ServerCredentials> creds;
      if (options_.tls_cert.empty()) {
        creds = grpc::InsecureServerCredentials();
        log_->warn("--listen {} is plaintext (--insecure): anyone who can reach it can drive "
                   "this daemon", options_.listen);
      } else {
        auto cert = ReadFile(options_.tls_cert, "--tls-cert");
        if (!cert.ok()) return cert.status();
        auto key = ReadFile(options_.tls_key, "--tls-key");
        if (!key.ok()) return key.status();
        grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
        if (!options_.tls_client_ca.empty()) {
          auto ca = ReadFile(options_.tls_client_ca, "--tls-client-ca");
          if (!ca.ok()) return ca.status();
          ssl.pem_root_certs = *ca;
          ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
        }
        ssl.pem_key_cert_pairs.push_back({*key, *cert});
        creds = grpc::SslServerCredentials(ssl);
        tls = true;
      }
      builder.AddListeningPort(options_.listen, creds, &tcp_port);
    }

    server_ = builder.BuildAndStart();
    if (server_ == nullptr) {
      if (socket_) socket_->Release();
      return absl::UnavailableError(absl::StrCat(
          "could not bind ",
          options_.socket.empty() ? "" : absl::StrCat("unix:", options_.socket),
          options_.socket.empty() || options_.listen.empty() ? "" : " and ",
          options_.listen.empty() ? "" : absl::StrCat("tcp ", options_.listen),
          " (address in use or not permitted; see the log above)"));
    }
    if (socket_) {
      if (absl::Status s = socket_->SecureSocket(options_.socket_group); !s.ok()) {
        server_->Shutdown();
        socket_->Release();
        return s;
      }
      uds_->Serve(server_.get());
      core_->AddEndpoint({"unix", options_.socket, false});
    }
    if (!options_.listen.empty()) {
      if (tcp_port <= 0) {
        server_->Shutdown();
        if (socket_) socket_->Release();
        return absl::UnavailableError(absl::StrCat("could not bind --listen ", options_.listen));
      }
      std::string host = options_.listen.substr(0, options_.listen.rfind(':'));
      core_->AddEndpoint({"tcp", absl::StrCat(host, ":", tcp_port), tls});
      const std::string advertise =
          options_.advertise.empty() ? absl::StrCat(ReachableHost(options_.listen), ":", tcp_port) : options_.advertise;
      core_->StartCluster(advertise);
      if (peers_) log_->info("peers reach this daemon at {}", advertise);
    }
    if (!options_.metrics_listen.empty()) {
      auto http = service::MetricsServer::Start(options_.metrics_listen, core_.get(), metrics_.get());
      if (!http.ok()) {
        server_->Shutdown();
        if (socket_) socket_->Release();
        return absl::Status(http.status().code(), absl::StrCat("--metrics-listen: ", http.status().message()));
      }
      metrics_http_ = std::move(*http);
      std::string host = options_.metrics_listen.substr(0, options_.metrics_listen.rfind(':'));
      core_->AddEndpoint({"metrics", absl::StrCat("http://", host, ":", metrics_http_->port(), "/metrics"), false});
    }
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    health->SetServingStatus(true);
    health->SetServingStatus(kPublicServiceName, true);
    health->SetServingStatus(kPeerServiceName, true);

    for (const core::EndpointInfo& e : core_->GetStatus(core::Caller::Anonymous(false)).endpoints) {
      log_->info("listening on {} {}{}", e.kind, e.address, e.kind == "tcp" ? (e.tls ? " (TLS)" : " (plaintext)") : "");
    }
    return absl::OkStatus();
  }

  void Shutdown() override {
    {
      wsync::MutexLock lock(&mu_);
      if (shutdown_started_) {
        mu_.Await(absl::Condition(&shutdown_done_));
        return;
      }
      shutdown_started_ = true;
    }
    if (server_ != nullptr) {
      log_->info("shutting down: health NOT_SERVING, draining for up to {} ms",
                 options_.grace_period_ms);
      server_->GetHealthCheckService()->Shutdown();
      if (uds_) uds_->Stop();  // no new local connections
      core_->BeginShutdown();
      auto deadline = std::chrono::system_clock::now() +
                      std::chrono::milliseconds(options_.grace_period_ms);
      server_->Shutdown(deadline);
      server_->Wait();
      log_->info("all calls finished");
    }
    if (metrics_http_ != nullptr) metrics_http_->Stop();  // scrapes keep working while calls drain
    if (socket_) socket_->Release();
    if (server_ != nullptr) log_->info("wsyncd stopped");
    wsync::MutexLock lock(&mu_);
    shutdown_done_ = true;
  }

  void Wait() override {
    wsync::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&shutdown_done_));
  }

  std::vector<core::EndpointInfo> endpoints() const override {
    return core_->GetStatus(core::Caller::Anonymous(false)).endpoints;
  }

  absl::Status ReloadLogging(const LogOptions& log) override {
    WSYNC_RETURN_IF_ERROR(ConfigureLogging(log));
    log_->info("log settings reloaded: level={} levels='{}'", log.level, log.levels);
    return absl::OkStatus();
  }

 private:
  const Options options_;
  std::unique_ptr<Metrics> metrics_;       // outlives core_, which updates it
  std::unique_ptr<core::PeerLink> peers_;  // outlives core_
  std::unique_ptr<core::Core> core_;
  std::unique_ptr<service::MetricsServer> metrics_http_;  // reads core_; stopped in Shutdown
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<service::Authenticator> auth_;
  std::unique_ptr<v1::Wsync::Service> public_service_;
  std::unique_ptr<v1::WsyncPeer::Service> peer_service_;
  std::unique_ptr<SocketClaim> socket_;
  std::unique_ptr<UdsListener> uds_;
  std::unique_ptr<grpc::Server> server_;
  wsync::Mutex mu_;
  bool shutdown_started_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_done_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Options& input) {
  WSYNC_RETURN_IF_ERROR(ValidateOptions(input));
  WSYNC_RETURN_IF_ERROR(ConfigureLogging(input.log));
  Options options = input;
  if (options.daemon_id.empty()) options.daemon_id = HostName();

  core::CoreOptions core_options;
  core_options.daemon_id = options.daemon_id;
  core_options.gpus = ProbeGpus();
  core_options.default_deadline_ms = static_cast<uint64_t>(options.sync_deadline_ms);
  core_options.pause_timeout_ms = static_cast<uint64_t>(options.pause_timeout_ms);
  core_options.default_bucket_bytes = static_cast<uint64_t>(options.bucket_mib) << 20;
  core_options.copy_threads = options.copy_threads;
  if (options.fault_bucket_delay_ms > 0 || options.fault_corrupt_wire >= 0 || options.test_stand_in_gpu ||
      options.test_stand_in_nccl) {
    core_options.test_hooks =
        core::TestHooks{static_cast<uint64_t>(options.fault_bucket_delay_ms), options.fault_corrupt_wire,
                        options.test_stand_in_gpu, options.test_stand_in_nccl};
  }
  core_options.limits.max_tensors_per_model = options.max_tensors_per_model;
  core_options.limits.max_kv_value_bytes = static_cast<uint64_t>(options.max_kv_value_bytes);
  auto log = Logger("server");
  log->info("wsyncd {} ({}) starting as '{}', pid {}", Version(), BuildDescription(),
            options.daemon_id, getpid());
  // A descriptor is kept per registered shm object (to notice shrinking):
  // allow as many as the hard limit does.
  if (rlimit nofile{}; getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nofile) == 0) log->debug("open file limit raised to {}", nofile.rlim_cur);
  }
  for (const std::string& g : core_options.gpus) log->info("gpu {}", g);
  if (core_options.test_hooks) {
    log->warn("test hooks are on (--fault-bucket-delay-ms {}, --fault-corrupt-wire {}{}{}): for tests only",
              options.fault_bucket_delay_ms, options.fault_corrupt_wire,
              options.test_stand_in_gpu ? ", --test-stand-in-gpu" : "",
              options.test_stand_in_nccl ? ", --test-stand-in-nccl" : "");
  }

  std::unique_ptr<core::PeerLink> peers;
  if (!options.listen.empty() && (options.insecure || !options.tls_client_ca.empty())) {
    service::PeerLinkOptions po;
    po.insecure = options.insecure;
    if (!options.insecure) {
      po.tls_cert = options.tls_cert;
      po.tls_key = options.tls_key;
      po.tls_ca = options.tls_client_ca;
    }
    po.max_message_bytes = options.max_message_bytes;
    // A peer that does not answer within the member timeout counts as gone.
    po.call_timeout_ms = options.peer_timeout_ms;
    auto link = service::NewGrpcPeerLink(po);
    if (!link.ok()) return link.status();
    peers = std::move(*link);
    core_options.peers = peers.get();
    core_options.incarnation = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
    core_options.join = absl::StrSplit(options.peers, ',', absl::SkipEmpty());
    core_options.heartbeat_ms = static_cast<uint64_t>(options.heartbeat_ms);
    core_options.peer_timeout_ms = static_cast<uint64_t>(options.peer_timeout_ms);
    core_options.data_host = !options.data_host.empty()
                                 ? options.data_host
                                 : ReachableHost(options.advertise.empty() ? options.listen : options.advertise);
  } else if (!options.listen.empty()) {
    log->warn("multi-node syncs are off: peers need mTLS (--tls-client-ca) or --insecure");
  }
  auto metrics = Metrics::Create();
  core_options.metrics = metrics.get();
  auto server = std::make_unique<ServerImpl>(options, std::move(metrics), std::move(peers),
                                             core::Core::Create(core_options));
  if (absl::Status s = server->Init(); !s.ok()) {
    log->error("start failed: {}", s.ToString());
    return s;
  }
  return std::unique_ptr<Server>(std::move(server));
}

}  // namespace wsync::server
