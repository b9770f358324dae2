#ifndef WSYNC_DAEMON_CORE_PAUSE_ACKER_H_
#define WSYNC_DAEMON_CORE_PAUSE_ACKER_H_

#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/core.h"
#include "daemon/common/mutex.h"

namespace wsync::core {

// An EventSink for in-process sessions (benchmarks, tests, embedders): it
// records every event and acknowledges pause requests from its own thread,
// since Push runs under the core's lock and may not call back into it.
// Thread-safe.
class PauseAcker final : public EventSink {
 public:
  // `session_id` may be filled in after construction (OpenSession needs the
  // sink first); it is read when a pause arrives.
  PauseAcker(Core* core, const std::string* session_id);
  ~PauseAcker() override;  // stops the thread

  void Push(const Event& e) override;
  // Whether pauses are acknowledged (default true).
  void set_ack(bool ack);
  std::vector<Event> events() const;

 private:
  void Run();

  Core* const core_;
  const std::string* const session_id_;
  mutable wsync::Mutex mu_;
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);
  std::vector<Event> pending_ ABSL_GUARDED_BY(mu_);
  bool ack_ ABSL_GUARDED_BY(mu_) = true;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_PAUSE_ACKER_H_
