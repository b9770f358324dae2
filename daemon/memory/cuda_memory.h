#ifndef WSYNC_DAEMON_MEMORY_CUDA_MEMORY_H_
#define WSYNC_DAEMON_MEMORY_CUDA_MEMORY_H_

// GPU memory: client allocations shared through CUDA IPC, and daemon-owned
// device buffers. In a build without CUDA every call fails with
// FAILED_PRECONDITION saying so; the header is the same.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/memory/host_memory.h"

namespace wsync::memory {

// The GPU memory one client session registered. Clients send the CUDA IPC
// handle of an allocation's *base* (PyTorch's caching allocator hands out
// sub-blocks of larger allocations) with an offset. Each distinct handle is
// opened once per lease, on the GPU named by its UUID, counted by the
// buffers that use it, and closed when the last is released or the lease
// ends. Thread-safe.
class CudaLease {
 public:
  // `client` names the session in logs and errors.
  static std::unique_ptr<CudaLease> Create(std::string client);

  // Closes every handle and event still open.
  virtual ~CudaLease() = default;

  struct Range {
    void* ptr = nullptr;  // device address of byte `offset`, valid in this process
    int device = -1;      // CUDA ordinal
  };

  // Resolves bytes [offset, offset + nbytes) of the allocation whose base
  // has IPC handle `handle` (the 64 bytes of cudaIpcMemHandle_t) on the GPU
  // `device_uuid` ("GPU-xxxxxxxx-..."), opening it on first use, and takes
  // one reference. Errors name `what`: INVALID_ARGUMENT for a malformed
  // handle or a range outside the allocation (its size comes from
  // cuMemGetAddressRange), NOT_FOUND for a UUID that no visible GPU has,
  // FAILED_PRECONDITION when CUDA refuses the handle (with CUDA's error).
  virtual absl::StatusOr<Range> Acquire(const std::string& handle, const std::string& device_uuid,
                                        uint64_t offset, uint64_t nbytes, const std::string& what) = 0;

  // Drops one reference taken by Acquire on `handle`; the last one closes it.
  virtual void Release(const std::string& handle) = 0;

  // Opens the producer's IPC event (cudaIpcEventHandle_t, 64 bytes) on
  // `device`, once per lease, and returns it as a cudaEvent_t. The daemon
  // waits on it before reading the buffers registered with it.
  virtual absl::StatusOr<void*> OpenEvent(const std::string& handle, int device, const std::string& what) = 0;

  // Handles currently open.
  virtual size_t num_handles() const = 0;
};

// Daemon-owned device memory, zero-initialized.
class DeviceBuffer final : public Buffer {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(int device, uint64_t bytes,
                                                                const std::string& what);
  ~DeviceBuffer() override;
  void* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  int device() const override { return device_; }

 private:
  DeviceBuffer(void* data, uint64_t size, int device) : data_(data), size_(size), device_(device) {}
  void* data_;
  uint64_t size_;
  int device_;
};

// Daemon-owned host memory, zero-initialized, page-locked and mapped: GPU
// kernels read and write it at the same address (unified addressing).
class PinnedHostBuffer final : public Buffer {
 public:
  static absl::StatusOr<std::unique_ptr<PinnedHostBuffer>> Allocate(uint64_t bytes, const std::string& what);
  ~PinnedHostBuffer() override;
  void* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  int device() const override { return -1; }

 private:
  PinnedHostBuffer(void* data, uint64_t size) : data_(data), size_(size) {}
  void* data_;
  uint64_t size_;
};

// The CUDA ordinal of the visible GPU with this UUID.
absl::StatusOr<int> DeviceOrdinal(const std::string& device_uuid);

}  // namespace wsync::memory

#endif  // WSYNC_DAEMON_MEMORY_CUDA_MEMORY_H_
