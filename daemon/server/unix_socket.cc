#include "daemon/server/unix_socket.h"

#include <algorithm>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "daemon/common/logging.h"
#include "daemon/common/status.h"

namespace wsync::server {
namespace {

std::string ErrnoText(int err) { return absl::StrCat(std::strerror(err), " (errno ", err, ")"); }

// mkdir -p; directories this creates get `mode`.
absl::Status MakeDirs(const std::string& dir, mode_t mode) {
  if (dir.empty() || dir == "/") return absl::OkStatus();
  struct stat st;
  if (stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not a directory"));
    }
    return absl::OkStatus();
  }
  size_t slash = dir.find_last_of('/');
  if (slash != std::string::npos && slash > 0) {
    WSYNC_RETURN_IF_ERROR(MakeDirs(dir.substr(0, slash), mode));
  }
  if (mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create socket directory ", dir, ": ", ErrnoText(errno)));
  }
  chmod(dir.c_str(), mode);  // not subject to the umask
  Logger("server")->info("created socket directory {} (mode {:o})", dir, mode);
  return absl::OkStatus();
}

std::string ReadPid(int fd) {
  char buf[32] = {0};
  ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
  if (n <= 0) return "unknown";
  return std::string(absl::StripAsciiWhitespace(absl::string_view(buf, n)));
}

}  // namespace

bool UnixSocketAnswers(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

absl::StatusOr<std::unique_ptr<SocketClaim>> SocketClaim::Acquire(const std::string& path) {
  auto log = Logger("server");
  size_t slash = path.find_last_of('/');
  WSYNC_RETURN_IF_ERROR(MakeDirs(path.substr(0, slash), 0750));

  const std::string lock_path = path + ".lock";
  int fd = -1;
  for (int attempt = 0; attempt < 3; ++attempt) {
    fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot open lock file ", lock_path, ": ", ErrnoText(errno)));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      std::string pid = ReadPid(fd);
      close(fd);
      if (err == EWOULDBLOCK) {
        return absl::FailedPreconditionError(absl::StrCat(
            "socket ", path, " is owned by another running wsyncd (pid ", pid, ", lock ",
            lock_path, "); stop it first or choose another --socket"));
      }
      return absl::InternalError(absl::StrCat("flock ", lock_path, ": ", ErrnoText(err)));
    }
    // The previous owner may have unlinked the file between our open and
    // flock; only a lock on the file currently at lock_path counts.
    struct stat by_fd, by_path;
    if (fstat(fd, &by_fd) == 0 && stat(lock_path.c_str(), &by_path) == 0 &&
        by_fd.st_ino == by_path.st_ino && by_fd.st_dev == by_path.st_dev) {
      break;
    }
    close(fd);
    fd = -1;
  }
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("lock file ", lock_path, " keeps changing; retry"));
  }
  std::unique_ptr<SocketClaim> claim(new SocketClaim(path, fd));

  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      claim->lock_fd_ = -1;
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat(path, " exists and is not a socket; refusing to replace it"));
    }
    if (UnixSocketAnswers(path)) {
      claim->lock_fd_ = -1;
      close(fd);
      return absl::FailedPreconditionError(absl::StrCat(
          "socket ", path, " is served by a live process that holds no wsyncd lock (",
          lock_path, "); stop it first or choose another --socket"));
    }
    if (unlink(path.c_str()) != 0) {
      std::string msg = absl::StrCat("cannot remove stale socket ", path, ": ", ErrnoText(errno));
      claim->lock_fd_ = -1;
      close(fd);
      return absl::PermissionDeniedError(msg);
    }
    log->warn("replaced stale socket {} (nothing was accepting on it)", path);
  }
  std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
    log->warn("could not record pid in {}: {}", lock_path, ErrnoText(errno));
  }
  return claim;
}

absl::Status SocketClaim::SecureSocket(const std::string& group) {
  if (chmod(path_.c_str(), 0660) != 0) {
    return absl::InternalError(absl::StrCat("chmod 0660 ", path_, ": ", ErrnoText(errno)));
  }
  if (group.empty()) return absl::OkStatus();
  gid_t gid;
  uint32_t numeric;
  if (absl::SimpleAtoi(group, &numeric)) {
    gid = numeric;
  } else {
    struct group* g = getgrnam(group.c_str());
    if (g == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("--socket-group: no group named '", group, "'"));
    }
    gid = g->gr_gid;
  }
  if (chown(path_.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("chgrp ", group, " ", path_, ": ", ErrnoText(errno)));
  }
  // The group must also reach the socket: a private directory of the
  // daemon's (others may not enter it, as the 0750 one made at start) is
  // handed to the group, which may enter it but not write there.
  const std::string dir = path_.substr(0, std::max<size_t>(path_.find_last_of('/'), 1));
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    return absl::InternalError(absl::StrCat("stat ", dir, ": ", ErrnoText(errno)));
  }
  if ((st.st_mode & S_IXOTH) == 0 && !(st.st_gid == gid && (st.st_mode & S_IXGRP))) {
    if (st.st_uid != geteuid()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--socket-group ", group, ": members cannot enter ", dir, ", which this daemon does not own; "
          "give it to the group (g+x) or put the socket elsewhere"));
    }
    if (chown(dir.c_str(), static_cast<uid_t>(-1), gid) != 0 ||
        chmod(dir.c_str(), (st.st_mode & 07777 & ~S_IWGRP) | S_IXGRP | S_IRGRP) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("chgrp ", group, " ", dir, ": ", ErrnoText(errno)));
    }
    Logger("server")->info("socket directory {} now belongs to group {} (members may enter it)", dir, group);
  }
  return absl::OkStatus();
}

void SocketClaim::Release() {
  if (lock_fd_ < 0) return;
  unlink(path_.c_str());
  unlink((path_ + ".lock").c_str());
  close(lock_fd_);
  lock_fd_ = -1;
  Logger("server")->info("removed socket {}", path_);
}

SocketClaim::~SocketClaim() { Release(); }

}  // namespace wsync::server
