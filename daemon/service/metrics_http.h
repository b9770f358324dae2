#ifndef WSYNC_DAEMON_SERVICE_METRICS_HTTP_H_
#define WSYNC_DAEMON_SERVICE_METRICS_HTTP_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/common/metrics.h"
#include "daemon/core/core.h"

namespace wsync::service {

// The whole Prometheus exposition of a daemon: `metrics`' counters and
// histograms, then gauges read from `status` (build, uptime, sessions,
// running jobs, registered bytes, replica versions, peers).
std::string RenderMetrics(const Metrics& metrics, const core::DaemonStatus& status);

// Serves GET /metrics over plaintext HTTP (cpp-httplib) on its own thread.
// What it shows is what GetStatus shows an anonymous caller, plus counters:
// bind it to an interface only the scraper reaches.
//
// Thread-safe: Stop may be called from any thread, more than once.
class MetricsServer {
 public:
  // Binds `address` ("host:port"; port 0 picks a free port; "[::1]:port" for
  // IPv6) and starts serving. INVALID_ARGUMENT for a malformed address,
  // UNAVAILABLE when the port cannot be bound. `core` and `metrics` must
  // outlive the server (or Stop).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& address, core::Core* core,
                                                              const Metrics* metrics);
  virtual ~MetricsServer() = default;

  // The bound port.
  virtual int port() const = 0;

  // Stops serving and joins the thread; scrapes in flight finish first.
  virtual void Stop() = 0;
};

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_METRICS_HTTP_H_
