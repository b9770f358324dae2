#include "client/convert/files.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace wsync::convert {

absl::StatusOr<int> OpenRegularFile(const std::string& path, uint64_t* size) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  // Reads of a regular file never block; clear the flag anyway.
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  if (size != nullptr) *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

absl::StatusOr<std::string> ReadRegularFile(const std::string& path, uint64_t max_bytes) {
  uint64_t size = 0;
  auto fd = OpenRegularFile(path, &size);
  if (!fd.ok()) return fd.status();
  if (size > max_bytes) {
    close(*fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is ", size, " bytes; at most ", max_bytes, " are read"));
  }
  std::string out(size, '\0');
  size_t at = 0;
  while (at < size) {
    ssize_t n = read(*fd, out.data() + at, size - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    at += static_cast<size_t>(n);
  }
  close(*fd);
  out.resize(at);
  return out;
}

absl::StatusOr<int> CreateTemporaryBeside(const std::string& path, std::string* tmp) {
  std::string name = path + ".XXXXXX";
  int fd = mkstemp(name.data());
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat("cannot create ", name, ": ", std::strerror(errno)));
  const mode_t mask = umask(0);
  umask(mask);
  fchmod(fd, 0644 & ~mask);
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  *tmp = name;
  return fd;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  std::string tmp;
  auto fd = CreateTemporaryBeside(path, &tmp);
  if (!fd.ok()) return fd.status();
  size_t at = 0;
  while (at < text.size()) {
    ssize_t n = write(*fd, text.data() + at, text.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      close(*fd);
      unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("writing ", tmp, ": ", std::strerror(err)));
    }
    at += static_cast<size_t>(n);
  }
  if (fsync(*fd) != 0 || close(*fd) != 0) {
    const int err = errno;
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("writing ", tmp, ": ", std::strerror(err)));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

bool SameDirectory(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return stat(a.c_str(), &sa) == 0 && stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

}  // namespace wsync::convert
