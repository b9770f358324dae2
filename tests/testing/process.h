#ifndef WSYNC_TESTS_TESTING_PROCESS_H_
#define WSYNC_TESTS_TESTING_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace wsync::testing {

// Path of a binary of this workspace inside the test's runfiles, e.g.
// Runfile("daemon/wsyncd").
std::string Runfile(const std::string& workspace_relative);

// A fresh directory under $TEST_TMPDIR (or /tmp), short enough for Unix
// socket paths.
std::string MakeTempDir();

// A child process whose stdout and stderr go to files. Not thread-safe.
class Process {
 public:
  // Starts `argv[0]` (a path, or a name looked up in PATH) with `argv`.
  // Aborts the process if fork fails.
  explicit Process(std::vector<std::string> argv);
  ~Process();  // SIGKILLs the child if it still runs.

  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Waits up to timeout_ms for exit. Returns the exit code, 128+signal if
  // killed, or -1 on timeout (the child keeps running).
  int Wait(int timeout_ms);
  bool Running();
  std::string Stdout() const;
  std::string Stderr() const;

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::string out_path_, err_path_;
};

// Runs a command to completion (up to timeout_ms) and returns its result.
struct RunResult {
  int exit_code = -1;
  std::string out, err;
};
RunResult Run(std::vector<std::string> argv, int timeout_ms = 30000);

bool WaitForImpl(bool (*fn)(void*), void* arg, int timeout_ms);

// Polls `predicate` every 20 ms until it holds or timeout_ms passes.
template <typename F>
bool WaitFor(F predicate, int timeout_ms) {
  return WaitForImpl([](void* p) { return (*static_cast<F*>(p))(); }, &predicate, timeout_ms);
}

}  // namespace wsync::testing

#endif  // WSYNC_TESTS_TESTING_PROCESS_H_
