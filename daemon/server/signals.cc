#include "daemon/server/signals.h"

#include <signal.h>
#include <string.h>

#include <atomic>
#include <thread>

#include "daemon/common/logging.h"
#include "daemon/server/options.h"

namespace wsync::server {
namespace {

sigset_t HandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

void BlockHandledSignals() {
  sigset_t set = HandledSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A client that disappears mid-write must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);
}

int ServeUntilSignal(Server* server, int argc, const char* const argv[]) {
  auto log = Logger("main");
  sigset_t set = HandledSignals();
  std::atomic<bool> done{false};
  std::thread stopper;
  while (!done.load()) {
    timespec tick{0, 200 * 1000 * 1000};
    int sig = sigtimedwait(&set, nullptr, &tick);
    if (sig < 0) continue;  // timeout or EINTR
    if (sig == SIGHUP) {
      auto parsed = ParseCommandLine(argc, argv);
      if (!parsed.ok()) {
        log->error("SIGHUP: keeping the current log settings: {}", parsed.status().ToString());
        continue;
      }
      if (absl::Status s = server->ReloadLogging(parsed->options.log); !s.ok()) {
        log->error("SIGHUP: keeping the current log settings: {}", s.ToString());
      }
      continue;
    }
    if (stopper.joinable()) {
      log->warn("received {} while already shutting down; still draining", strsignal(sig));
      continue;
    }
    log->info("received {}: shutting down", strsignal(sig));
    stopper = std::thread([server, &done] {
      server->Shutdown();
      done.store(true);
    });
  }
  stopper.join();
  return 0;
}

}  // namespace wsync::server
