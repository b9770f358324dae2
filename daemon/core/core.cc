#include "daemon/core/core.h"

#include <unistd.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "daemon/common/build_info.h"
#include "daemon/common/logging.h"

namespace wsync::core {
namespace {

class CoreImpl final : public Core {
 public:
  explicit CoreImpl(const CoreOptions& options)
      : options_(options), started_(absl::Now()), log_(Logger("core")) {}

  void AddEndpoint(const EndpointInfo& endpoint) override {
    absl::MutexLock lock(&mu_);
    endpoints_.push_back(endpoint);
  }

  DaemonStatus GetStatus() const override {
    DaemonStatus status;
    status.daemon_id = options_.daemon_id;
    status.version = Version();
    status.build = BuildDescription();
    status.uptime_s = absl::ToDoubleSeconds(absl::Now() - started_);
    status.pid = getpid();
    status.gpus = options_.gpus;
    absl::MutexLock lock(&mu_);
    status.serving = serving_;
    status.endpoints = endpoints_;
    return status;
  }

  void BeginShutdown() override {
    absl::MutexLock lock(&mu_);
    if (!serving_) return;
    serving_ = false;
    log_->info("core: no longer accepting new work");
  }

 private:
  const CoreOptions options_;
  const absl::Time started_;
  std::shared_ptr<spdlog::logger> log_;
  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  std::vector<EndpointInfo> endpoints_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<Core> Core::Create(const CoreOptions& options) {
  return std::make_unique<CoreImpl>(options);
}

}  // namespace wsync::core
