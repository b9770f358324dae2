#include "daemon/core/pause_acker.h"
#include "daemon/common/mutex.h"

namespace wsync::core {

PauseAcker::PauseAcker(Core* core, const std::string* session_id)
    : core_(core), session_id_(session_id), thread_([this] { Run(); }) {}

PauseAcker::~PauseAcker() {
  {
    wsync::MutexLock lock(&mu_);
    done_ = true;
  }
  thread_.join();
}

void PauseAcker::Push(const Event& e) {
  wsync::MutexLock lock(&mu_);
  events_.push_back(e);
  if (e.kind == Event::Kind::kPause && ack_) pending_.push_back(e);
}

void PauseAcker::set_ack(bool ack) {
  wsync::MutexLock lock(&mu_);
  ack_ = ack;
}

std::vector<Event> PauseAcker::events() const {
  wsync::MutexLock lock(&mu_);
  return events_;
}

void PauseAcker::Run() {
  while (true) {
    Event e;
    {
      wsync::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ || !pending_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (done_) return;
      e = pending_.front();
      pending_.erase(pending_.begin());
    }
    (void)core_->AckPause(*session_id_, e.model_id, e.replica_id, e.version);
  }
}

}  // namespace wsync::core
