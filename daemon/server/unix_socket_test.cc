#include "daemon/server/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace wsync::server {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/wsync-sock-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

// Binds (and optionally listens on) a Unix socket at `path`; returns the fd.
int BindSocket(const std::string& path, bool listening) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  if (listening) REQUIRE(listen(fd, 1) == 0);
  return fd;
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

TEST_CASE("the socket directory is created 0750") {
  std::string dir = TempDir() + "/run/wsync";
  std::string path = dir + "/d.sock";
  auto claim = SocketClaim::Acquire(path);
  REQUIRE(claim.ok());
  struct stat st;
  REQUIRE(stat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0750);
  CHECK(Exists(path + ".lock"));
  (*claim)->Release();
  CHECK_FALSE(Exists(path + ".lock"));
}

TEST_CASE("a second claim on the same path fails and names the owner's pid") {
  std::string path = TempDir() + "/d.sock";
  auto first = SocketClaim::Acquire(path);
  REQUIRE(first.ok());
  auto second = SocketClaim::Acquire(path);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(second.status().message()),
             Catch::Contains("pid " + std::to_string(getpid())));
  (*first)->Release();
  CHECK(SocketClaim::Acquire(path).ok());
}

TEST_CASE("a stale socket is replaced") {
  std::string path = TempDir() + "/d.sock";
  int fd = BindSocket(path, /*listening=*/false);
  close(fd);  // the file stays, nobody accepts
  REQUIRE(Exists(path));
  CHECK_FALSE(UnixSocketAnswers(path));
  auto claim = SocketClaim::Acquire(path);
  REQUIRE(claim.ok());
  CHECK_FALSE(Exists(path));
}

TEST_CASE("a socket something still serves is not replaced") {
  std::string path = TempDir() + "/d.sock";
  int fd = BindSocket(path, /*listening=*/true);
  CHECK(UnixSocketAnswers(path));
  auto claim = SocketClaim::Acquire(path);
  REQUIRE_FALSE(claim.ok());
  CHECK_THAT(std::string(claim.status().message()), Catch::Contains("live process"));
  CHECK(Exists(path));
  close(fd);
}

TEST_CASE("a regular file at the socket path is not replaced") {
  std::string path = TempDir() + "/d.sock";
  std::ofstream(path) << "precious";
  auto claim = SocketClaim::Acquire(path);
  REQUIRE_FALSE(claim.ok());
  CHECK_THAT(std::string(claim.status().message()), Catch::Contains("is not a socket"));
  CHECK(Exists(path));
}

TEST_CASE("SecureSocket sets mode 0660 and rejects unknown groups") {
  std::string path = TempDir() + "/d.sock";
  auto claim = SocketClaim::Acquire(path);
  REQUIRE(claim.ok());
  int fd = BindSocket(path, true);
  REQUIRE((*claim)->SecureSocket("").ok());
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
  absl::Status s = (*claim)->SecureSocket("no-such-group-wsync");
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK((*claim)->SecureSocket(std::to_string(getgid())).ok());
  close(fd);
}

}  // namespace
}  // namespace wsync::server
