#ifndef WSYNC_TESTS_TESTING_WSYNCD_PROCESS_H_
#define WSYNC_TESTS_TESTING_WSYNCD_PROCESS_H_

// A real wsyncd (the Bazel runfile daemon/wsyncd) in a child process, for
// tests of peers: it listens on a Unix socket in a test directory and on
// TCP port 0 for other daemons. Not thread-safe.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cpp/wsync_client.h"
#include "tests/testing/process.h"

namespace wsync::testing {

class WsyncdProcess {
 public:
  // Starts daemon `id` with its socket at `<dir>/<id>.sock`, fast peer
  // timing (heartbeats every 200 ms) and `extra` flags (security, --peers),
  // and waits up to 20 s until it answers; then reads its TCP address.
  // The error carries the daemon's stderr.
  static absl::StatusOr<std::unique_ptr<WsyncdProcess>> Start(const std::string& id, const std::string& dir,
                                                              const std::vector<std::string>& extra);
  // A client of this daemon named `name`.
  absl::StatusOr<std::unique_ptr<client::Client>> Attach(const std::string& name) const;

  const std::string& id() const { return id_; }
  const std::string& socket() const { return socket_; }
  const std::string& address() const { return address_; }  // host:port for --peers
  Process& proc() { return *proc_; }

 private:
  WsyncdProcess() = default;
  std::string id_, socket_, address_;
  std::unique_ptr<Process> proc_;
};

}  // namespace wsync::testing

#endif  // WSYNC_TESTS_TESTING_WSYNCD_PROCESS_H_
