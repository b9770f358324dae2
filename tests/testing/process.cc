#include "tests/testing/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace wsync::testing {
namespace {

// The helpers serve tests and benchmarks alike, so they do not use Catch.
[[noreturn]] void Die(const char* what) {
  std::perror(what);
  std::abort();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string Runfile(const std::string& rel) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  std::string base = srcdir ? srcdir : ".";
  return base + "/" + (ws ? ws : "wsync") + "/" + rel;
}

std::string MakeTempDir() {
  // $TEST_TMPDIR is deep inside Bazel's output base; Unix socket paths must
  // stay under 108 bytes, so use /tmp.
  char tmpl[] = "/tmp/wsync-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) Die("mkdtemp");
  return tmpl;
}

Process::Process(std::vector<std::string> argv) {
  static int counter = 0;
  std::string dir = MakeTempDir();
  out_path_ = dir + "/stdout." + std::to_string(counter);
  err_path_ = dir + "/stderr." + std::to_string(counter++);
  pid_ = fork();
  if (pid_ < 0) Die("fork");
  if (pid_ == 0) {
    int out = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());  // searches PATH for bare names
    dprintf(2, "exec %s failed\n", args[0]);
    _exit(127);
  }
}

Process::~Process() {
  if (Running()) {
    kill(pid_, SIGKILL);
    Wait(10000);
  }
}

void Process::Signal(int sig) { kill(pid_, sig); }

bool Process::Running() {
  if (status_ != -1) return false;
  int st;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = st;
    return false;
  }
  return true;
}

int Process::Wait(int timeout_ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Running()) {
    if (std::chrono::steady_clock::now() > end) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return -1;
}

std::string Process::Stdout() const { return ReadAll(out_path_); }
std::string Process::Stderr() const { return ReadAll(err_path_); }

RunResult Run(std::vector<std::string> argv, int timeout_ms) {
  Process p(std::move(argv));
  RunResult r;
  r.exit_code = p.Wait(timeout_ms);
  r.out = p.Stdout();
  r.err = p.Stderr();
  return r;
}

bool WaitForImpl(bool (*fn)(void*), void* arg, int timeout_ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!fn(arg)) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace wsync::testing
