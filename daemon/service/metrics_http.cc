#include "daemon/service/metrics_http.h"

#include <httplib.h>

#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

namespace wsync::service {
namespace {

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// host and port of "host:port" or "[v6]:port".
absl::StatusOr<std::pair<std::string, int>> SplitAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "': expected host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "': port '", address.substr(colon + 1), "' is not 0..65535"));
  }
  return std::make_pair(host, port);
}

class MetricsServerImpl : public MetricsServer {
 public:
  MetricsServerImpl(core::Core* core, const Metrics* metrics) : core_(core), metrics_(metrics) {}
  ~MetricsServerImpl() override { Stop(); }

  absl::Status Listen(const std::string& address) {
    auto hp = SplitAddress(address);
    if (!hp.ok()) return hp.status();
    // cpp-httplib's default also sets SO_REUSEPORT, which would let a second
    // daemon bind the same port and split the scrapes: only SO_REUSEADDR.
    http_.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(RenderMetrics(*metrics_, core_->GetStatus(core::Caller::Anonymous(false))), kContentType);
    });
    const int port = hp->second == 0 ? http_.bind_to_any_port(hp->first) : (http_.bind_to_port(hp->first, hp->second)
                                                                               ? hp->second
                                                                               : -1);
    if (port <= 0) {
      return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", address,
                                                 " (address in use, or not an address of this host)"));
    }
    port_ = port;
    thread_ = std::thread([this] { http_.listen_after_bind(); });
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void Stop() override {
    wsync::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    http_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  core::Core* const core_;
  const Metrics* const metrics_;
  httplib::Server http_;
  int port_ = 0;
  std::thread thread_;
  wsync::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

std::string RenderMetrics(const Metrics& metrics, const core::DaemonStatus& status) {
  std::string out;
  metrics.Render(&out);
  RenderGauge("wsync_build_info", "Always 1; the labels say which wsyncd this is.",
              {{{{"daemon_id", status.daemon_id}, {"version", status.version}, {"build", status.build}}, 1}}, &out);
  RenderGauge("wsync_uptime_seconds", "Seconds since this wsyncd started.", {{{}, status.uptime_s}}, &out);
  RenderGauge("wsync_serving", "1 while the daemon accepts new calls, 0 while it drains.",
              {{{}, status.serving ? 1.0 : 0.0}}, &out);
  RenderGauge("wsync_sessions", "Attached client sessions.", {{{}, static_cast<double>(status.sessions.size())}},
              &out);
  RenderGauge("wsync_jobs_running", "Syncs and multi-node sync parts running now.",
              {{{}, static_cast<double>(status.jobs.size())}}, &out);
  std::vector<std::pair<MetricLabels, double>> registered, versions, poisoned;
  for (const core::ModelInfo& m : status.models) {
    std::map<std::string, double> by_role;
    for (const core::RankInfo& r : m.ranks) by_role[r.role == core::Role::kSource ? "source" : "target"] += r.bytes;
    for (const char* role : {"source", "target"}) {
      registered.push_back({{{"model", m.model_id}, {"role", role}}, by_role[role]});
    }
    for (const core::ReplicaInfo& r : m.replicas) {
      versions.push_back({{{"model", m.model_id}, {"replica", r.replica_id}}, static_cast<double>(r.version)});
      poisoned.push_back({{{"model", m.model_id}, {"replica", r.replica_id}}, r.poisoned ? 1.0 : 0.0});
    }
  }
  RenderGauge("wsync_registered_bytes", "Bytes of registered buffers held by this daemon's view, by model and role.",
              registered, &out);
  RenderGauge("wsync_replica_version", "Version committed to each target replica (0 = none yet).", versions, &out);
  RenderGauge("wsync_replica_poisoned",
              "1 if a failed in-place sync left the replica half written (refuse to serve it).", poisoned, &out);
  std::vector<std::pair<MetricLabels, double>> up, seen;
  for (const core::PeerInfo& p : status.peers) {
    up.push_back({{{"peer", p.daemon_id}, {"relation", p.relation}}, p.lost ? 0.0 : 1.0});
    seen.push_back({{{"peer", p.daemon_id}, {"relation", p.relation}}, p.last_seen_ms / 1e3});
  }
  RenderGauge("wsync_peer_up", "1 while the peer daemon answers heartbeats, 0 once it is declared lost.", up, &out);
  RenderGauge("wsync_peer_last_seen_seconds", "Seconds since the peer daemon was last heard from.", seen, &out);
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address, core::Core* core,
                                                                    const Metrics* metrics) {
  auto server = std::make_unique<MetricsServerImpl>(core, metrics);
  WSYNC_RETURN_IF_ERROR(server->Listen(address));
  return server;
}

}  // namespace wsync::service
