#ifndef WSYNC_DAEMON_MEMORY_HOST_MEMORY_H_
#define WSYNC_DAEMON_MEMORY_HOST_MEMORY_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace wsync::memory {

// The host memory one client session registered: POSIX shared-memory
// objects, each mapped once for the lease's life and unmapped when the lease
// ends. Thread-safe.
class HostLease {
 public:
  // `uid` is the client's uid (from SO_PEERCRED); -1 when unknown (TCP),
  // in which case every object is refused. `client` names it in errors.
  static std::unique_ptr<HostLease> Create(int64_t uid, std::string client);

  // Unmaps every object.
  virtual ~HostLease() = default;

  struct Resolved {
    void* ptr = nullptr;
    // The object's identity, the same in every lease that maps it:
    // "shm:<st_dev>:<st_ino>".
    std::string object;
  };
  // Returns the address of bytes [offset, offset + nbytes) of shm object
  // `name` ("/wsync-123-0"), mapping it on first use (the mapping is under a
  // GuardedRange: a page that vanishes later faults into a private page, not
  // a crash). With `reserve` (memory the daemon will write), the range's
  // pages are allocated now (posix_fallocate), so that a full /dev/shm fails
  // here and not in the middle of a sync. Errors name `what` (the buffer)
  // and the object: INVALID_ARGUMENT for a malformed name or a range outside
  // the object, NOT_FOUND when it does not exist, PERMISSION_DENIED when the
  // calling client's uid does not own it, RESOURCE_EXHAUSTED when its pages
  // cannot be reserved.
  virtual absl::StatusOr<Resolved> Resolve(const std::string& name, uint64_t offset, uint64_t nbytes,
                                           const std::string& what, bool reserve = false) = 0;

  // Whether every mapped object is still whole: FAILED_PRECONDITION when an
  // object shrank below its mapped size (a client's ftruncate), DATA_LOSS
  // when a page of it faulted since it was mapped (the bytes that went
  // through it are wrong). Either names the object and a buffer in it, and
  // stays so until the session ends: the client must attach again.
  virtual absl::Status CheckIntact() const = 0;

  // Objects currently mapped, and their total size.
  virtual size_t num_mappings() const = 0;
  virtual uint64_t mapped_bytes() const = 0;
};

// Daemon-owned memory (staging, pristine LoRA bases, LoRA operands), on the
// host or on a GPU, released on destruction. Not thread-safe.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual void* data() const = 0;
  virtual uint64_t size() const = 0;
  // -1 for host memory, else the CUDA device ordinal.
  virtual int device() const = 0;
};

// Anonymous, page-aligned, zero-initialized host memory.
class HostBuffer final : public Buffer {
 public:
  static absl::StatusOr<std::unique_ptr<HostBuffer>> Allocate(uint64_t bytes, const std::string& what);
  ~HostBuffer() override;
  void* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  int device() const override { return -1; }

 private:
  HostBuffer(void* data, uint64_t size) : data_(data), size_(size) {}
  void* data_;
  uint64_t size_;
};

}  // namespace wsync::memory

#endif  // WSYNC_DAEMON_MEMORY_HOST_MEMORY_H_
