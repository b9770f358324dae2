#include "daemon/server/uds_listener.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <grpcpp/server_posix.h>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/common/logging.h"
#include "daemon/common/mutex.h"

namespace wsync::server {

absl::StatusOr<std::unique_ptr<UdsListener>> UdsListener::Listen(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 128) != 0) {
    std::string err = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot listen on ", path, ": ", err));
  }
  return std::unique_ptr<UdsListener>(new UdsListener(fd));
}

UdsListener::~UdsListener() {
  Stop();
  close(fd_);
}

void UdsListener::Serve(grpc::Server* server) {
  thread_ = std::thread([this, server] { Loop(server); });
}

void UdsListener::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void UdsListener::Loop(grpc::Server* server) {
  auto log = Logger("server");
  while (!stop_.load()) {
    pollfd p{fd_, POLLIN, 0};
    int n = poll(&p, 1, 100);
    if (n <= 0) continue;
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);  // gRPC polls it
    if (c < 0) continue;
    ucred cred{};
    socklen_t len = sizeof(cred);
    PeerCred pc;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      pc = {cred.pid, cred.uid, cred.gid};
    }
    {
      wsync::MutexLock lock(&mu_);
      creds_[c] = pc;  // a reused descriptor number replaces the old entry
    }
    log->debug("connection fd {} from pid {} uid {}", c, pc.pid, pc.uid);
    grpc::AddInsecureChannelFromFd(server, c);
  }
}

PeerCred UdsListener::Lookup(const std::string& peer) const {
  absl::string_view rest = peer;
  int fd;
  if (!absl::ConsumePrefix(&rest, "fd:") || !absl::SimpleAtoi(rest, &fd)) return {};
  wsync::MutexLock lock(&mu_);
  auto it = creds_.find(fd);
  return it == creds_.end() ? PeerCred{} : it->second;
}

}  // namespace wsync::server
