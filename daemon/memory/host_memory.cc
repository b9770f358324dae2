#include "daemon/memory/host_memory.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/common/logging.h"
#include "daemon/memory/fault_guard.h"
#include "daemon/common/mutex.h"

namespace wsync::memory {
namespace {

struct Mapping {
  void* addr = nullptr;
  uint64_t size = 0;
  std::string object;
  int fd = -1;          // kept open: fstat tells whether the object shrank
  std::string first;    // the first buffer registered in it, for messages
  std::unique_ptr<GuardedRange> guard;
};

class HostLeaseImpl final : public HostLease {
 public:
  HostLeaseImpl(int64_t uid, std::string client) : uid_(uid), client_(std::move(client)) {}

  ~HostLeaseImpl() override {
    wsync::MutexLock lock(&mu_);
    for (auto& [name, m] : maps_) {
      m.guard.reset();
      munmap(m.addr, m.size);
      close(m.fd);
    }
    if (!maps_.empty()) {
      Logger("memory")->info("unmapped {} shm object(s) of {}", maps_.size(), client_);
    }
  }

  absl::StatusOr<Resolved> Resolve(const std::string& name, uint64_t offset, uint64_t nbytes,
                                   const std::string& what, bool reserve) override {
    if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos ||
        name.size() > 255) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": shm name '", name, "' must be '/' followed by a name without '/'"));
    }
    wsync::MutexLock lock(&mu_);
    auto it = maps_.find(name);
    if (it == maps_.end()) {
      auto m = Map(name, what);
      if (!m.ok()) return m.status();
      it = maps_.emplace(name, std::move(*m)).first;
      it->second.first = what;
    }
    const Mapping& m = it->second;
    if (offset > m.size || nbytes > m.size - offset) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", nbytes, " bytes at offset ", offset,
                                                     " are outside shm object ", name, " (",
                                                     m.size, " bytes)"));
    }
    if (reserve && nbytes > 0) {
      if (absl::Status s = Reserve(m, name, offset, nbytes, what); !s.ok()) return s;
    }
    return Resolved{static_cast<char*>(m.addr) + offset, m.object};
  }

  absl::Status CheckIntact() const override {
    wsync::MutexLock lock(&mu_);
    // A fault (bytes already went through a zero page) outranks a shrink.
    for (const auto& [name, m] : maps_) {
      if (m.guard->faulted()) {
        return absl::DataLossError(absl::StrCat(
            "shm object ", name, " (", m.first, ", of ", client_, ") lost a page while the daemon used it (it shrank, "
            "or /dev/shm could not back it); bytes read from or written to it are not trusted: attach again and "
            "re-register"));
      }
    }
    for (const auto& [name, m] : maps_) {
      struct stat st;
      if (fstat(m.fd, &st) != 0) {
        return absl::InternalError(absl::StrCat("fstat shm object ", name, ": ", std::strerror(errno)));
      }
      if (static_cast<uint64_t>(st.st_size) < m.size) {
        return absl::FailedPreconditionError(absl::StrCat(
            "shm object ", name, " (", m.first, ", of ", client_, ") shrank from ", m.size, " to ", st.st_size,
            " bytes since it was registered; attach again and re-register"));
      }
    }
    return absl::OkStatus();
  }

  size_t num_mappings() const override {
    wsync::MutexLock lock(&mu_);
    return maps_.size();
  }

  uint64_t mapped_bytes() const override {
    wsync::MutexLock lock(&mu_);
    uint64_t total = 0;
    for (const auto& [n, m] : maps_) total += m.size;
    return total;
  }

 private:
  absl::StatusOr<Mapping> Map(const std::string& name, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (uid_ < 0) {
      return absl::PermissionDeniedError(absl::StrCat(
          what, ": shm object ", name, " cannot be registered by ", client_,
          ": its uid is unknown (host memory is registered over the daemon's Unix socket only)"));
    }
    int fd = shm_open(name.c_str(), O_RDWR, 0);
    if (fd < 0) {
      int err = errno;
      if (err == ENOENT) {
        return absl::NotFoundError(absl::StrCat(what, ": shm object ", name, " does not exist"));
      }
      return absl::PermissionDeniedError(
          absl::StrCat(what, ": cannot open shm object ", name, ": ", std::strerror(err)));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
      close(fd);
      return absl::InternalError(absl::StrCat("fstat ", name, ": ", std::strerror(errno)));
    }
    if (static_cast<int64_t>(st.st_uid) != uid_) {
      close(fd);
      return absl::PermissionDeniedError(absl::StrCat(
          what, ": shm object ", name, " is owned by uid ", st.st_uid, ", not by ", client_,
          " (uid ", uid_, ")"));
    }
    if (st.st_size == 0) {
      close(fd);
      return absl::InvalidArgumentError(absl::StrCat(what, ": shm object ", name, " is empty"));
    }
    void* addr = mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
      const int err = errno;
      close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat("mmap ", name, " (", st.st_size, " bytes): ", std::strerror(err)));
    }
    Logger("memory")->debug("mapped {} ({} bytes) for {}", name, st.st_size, client_);
    Mapping m;
    m.addr = addr;
    m.size = static_cast<uint64_t>(st.st_size);
    m.object = absl::StrCat("shm:", st.st_dev, ":", st.st_ino);
    m.fd = fd;
    m.guard = GuardedRange::Guard(addr, m.size);
    return m;
  }

  // Allocates the pages of [offset, offset + nbytes) of `m`, refusing at
  // once when the filesystem has clearly too little room (posix_fallocate on
  // tmpfs would fill memory before failing).
  absl::Status Reserve(const Mapping& m, const std::string& name, uint64_t offset, uint64_t nbytes,
                       const std::string& what) const {
    struct stat st;
    struct statvfs vfs;
    if (fstat(m.fd, &st) == 0 && fstatvfs(m.fd, &vfs) == 0) {
      const uint64_t held = static_cast<uint64_t>(st.st_blocks) * 512;
      const uint64_t room = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
      if (nbytes > held && nbytes - held > room) {
        return absl::ResourceExhaustedError(absl::StrCat(
            what, ": cannot reserve ", nbytes, " bytes of shm object ", name, ": its filesystem (/dev/shm) has ",
            room, " bytes free"));
      }
    }
    if (int err = posix_fallocate(m.fd, static_cast<off_t>(offset), static_cast<off_t>(nbytes)); err != 0) {
      return absl::ResourceExhaustedError(absl::StrCat(what, ": cannot reserve ", nbytes, " bytes of shm object ",
                                                       name, ": ", std::strerror(err)));
    }
    return absl::OkStatus();
  }

  const int64_t uid_;
  const std::string client_;
  mutable wsync::Mutex mu_;
  std::map<std::string, Mapping> maps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<HostLease> HostLease::Create(int64_t uid, std::string client) {
  return std::make_unique<HostLeaseImpl>(uid, std::move(client));
}

absl::StatusOr<std::unique_ptr<HostBuffer>> HostBuffer::Allocate(uint64_t bytes,
                                                                  const std::string& what) {
  if (bytes == 0) bytes = 1;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of host memory for ", what));
  }
  return std::unique_ptr<HostBuffer>(new HostBuffer(p, bytes));
}

HostBuffer::~HostBuffer() { munmap(data_, size_); }

}  // namespace wsync::memory
