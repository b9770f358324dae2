#include "daemon/memory/cuda_memory.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/logging.h"
#include "kernels/cuda_status.h"
#include "kernels/device_info.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

namespace wsync::memory {
namespace {

using kernels::CudaStatus;

// CUDA refuses to open one IPC handle twice in a process, so open handles
// are shared by every lease that uses them: the process-wide table counts
// leases, each lease counts its own buffers.
struct OpenHandle {
  void* base = nullptr;
  uint64_t size = 0;
  int device = -1;
  int leases = 0;
};

wsync::Mutex g_mu;
std::map<std::string, OpenHandle>& Handles() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g_mu) {
  static auto* m = new std::map<std::string, OpenHandle>;
  return *m;
}

using GetAddressRangeFn = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);

// cuMemGetAddressRange through the runtime, so the daemon links no libcuda
// and starts on machines without a driver.
absl::StatusOr<GetAddressRangeFn> AddressRangeFn() {
  static GetAddressRangeFn fn = nullptr;
  static cudaError_t err = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    cudaError_t e = cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 12000, cudaEnableDefault, &q);
    if (e == cudaSuccess && q != cudaDriverEntryPointSuccess) e = cudaErrorSymbolNotFound;
    fn = reinterpret_cast<GetAddressRangeFn>(p);
    return e;
  }();
  if (err != cudaSuccess) return CudaStatus(err, "cudaGetDriverEntryPointByVersion(cuMemGetAddressRange)");
  return fn;
}

std::string HandleId(const std::string& handle) { return absl::BytesToHexString(handle.substr(0, 8)); }

class CudaLeaseImpl final : public CudaLease {
 public:
  explicit CudaLeaseImpl(std::string client) : client_(std::move(client)) {}

  ~CudaLeaseImpl() override {
    wsync::MutexLock lock(&mu_);
    for (const auto& [handle, refs] : refs_) CloseLocked(handle);
    for (const auto& [handle, ev] : events_) {
      cudaSetDevice(ev.second);
      cudaEventDestroy(static_cast<cudaEvent_t>(ev.first));
    }
  }

  absl::StatusOr<Range> Acquire(const std::string& handle, const std::string& device_uuid, uint64_t offset,
                                uint64_t nbytes, const std::string& what) override {
    if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": a CUDA IPC memory handle has ",
                                                     sizeof(cudaIpcMemHandle_t), " bytes, got ", handle.size()));
    }
    auto device = DeviceOrdinal(device_uuid);
    if (!device.ok()) return Annotate(device.status(), absl::StrCat(what));
    wsync::MutexLock lock(&mu_);
    wsync::MutexLock g(&g_mu);
    auto it = Handles().find(handle);
    const bool fresh = it == Handles().end();
    OpenHandle h;
    if (fresh) {
      auto opened = Open(handle, *device, device_uuid, what);
      if (!opened.ok()) return opened.status();
      h = *opened;
    } else {
      h = it->second;
      if (h.device != *device) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": CUDA IPC handle ", HandleId(handle),
                                                       " was registered earlier on GPU ", h.device, ", not on ",
                                                       device_uuid));
      }
    }
    if (offset > h.size || nbytes > h.size - offset) {
      if (fresh) Close(h);
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", nbytes, " bytes at offset ", offset,
                                                     " are outside the CUDA allocation of ", h.size,
                                                     " bytes (handle ", HandleId(handle), ")"));
    }
    if (fresh) {
      Handles()[handle] = h;
      Logger("memory")->debug("opened CUDA IPC handle {} on GPU {} ({} bytes) for {}", HandleId(handle), h.device,
                              h.size, client_);
    }
    if (refs_[handle]++ == 0) Handles()[handle].leases++;
    return Range{static_cast<char*>(h.base) + offset, h.device};
  }

  void Release(const std::string& handle) override {
    wsync::MutexLock lock(&mu_);
    auto it = refs_.find(handle);
    if (it == refs_.end()) return;
    if (--it->second > 0) return;
    CloseLocked(handle);
    refs_.erase(it);
  }

  absl::StatusOr<void*> OpenEvent(const std::string& handle, int device, const std::string& what) override {
    if (handle.size() != sizeof(cudaIpcEventHandle_t)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": a CUDA IPC event handle has ",
                                                     sizeof(cudaIpcEventHandle_t), " bytes, got ", handle.size()));
    }
    wsync::MutexLock lock(&mu_);
    auto it = events_.find(handle);
    if (it != events_.end()) return it->second.first;
    if (absl::Status s = CudaStatus(cudaSetDevice(device), absl::StrCat(what, ": cudaSetDevice")); !s.ok()) return s;
    cudaIpcEventHandle_t eh;
    std::memcpy(&eh, handle.data(), sizeof(eh));
    cudaEvent_t ev = nullptr;
    cudaError_t e = cudaIpcOpenEventHandle(&ev, eh);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": cannot open CUDA IPC event: ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
          "); create it with cudaEventInterprocess | cudaEventDisableTiming"));
    }
    events_[handle] = {ev, device};
    return static_cast<void*>(ev);
  }

  size_t num_handles() const override {
    wsync::MutexLock lock(&mu_);
    return refs_.size();
  }

 private:
  // Opens `handle` on `device` and measures the allocation from its base.
  static absl::StatusOr<OpenHandle> Open(const std::string& handle, int device, const std::string& device_uuid,
                                         const std::string& what) {
    if (absl::Status s = CudaStatus(cudaSetDevice(device), absl::StrCat(what, ": cudaSetDevice(", device, ")"));
        !s.ok()) {
      return s;
    }
    cudaIpcMemHandle_t mh;
    std::memcpy(&mh, handle.data(), sizeof(mh));
    void* base = nullptr;
    cudaError_t e = cudaIpcOpenMemHandle(&base, mh, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": cannot open CUDA IPC handle ", HandleId(handle), " on ", device_uuid, ": ", cudaGetErrorName(e),
          " (", cudaGetErrorString(e),
          "); the handle must come from cudaIpcGetMemHandle on an allocation base of a live process"));
    }
    auto range = AddressRangeFn();
    CUdeviceptr rbase = 0;
    size_t rsize = 0;
    if (!range.ok() || (*range)(&rbase, &rsize, reinterpret_cast<CUdeviceptr>(base)) != CUDA_SUCCESS) {
      cudaIpcCloseMemHandle(base);
      return absl::InternalError(
          absl::StrCat(what, ": cuMemGetAddressRange failed on the opened handle ", HandleId(handle)));
    }
    return OpenHandle{base, static_cast<uint64_t>(rsize) - (reinterpret_cast<uint64_t>(base) - rbase), device, 0};
  }

  static bool Close(const OpenHandle& h) {
    cudaSetDevice(h.device);
    if (cudaIpcCloseMemHandle(h.base) == cudaSuccess) return true;
    cudaGetLastError();
    return false;
  }

  // Gives up this lease's share of `handle`.
  void CloseLocked(const std::string& handle) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    wsync::MutexLock g(&g_mu);
    auto it = Handles().find(handle);
    if (it == Handles().end() || --it->second.leases > 0) return;
    if (!Close(it->second)) {
      Logger("memory")->warn("closing CUDA IPC handle {} of {} failed", HandleId(handle), client_);
    } else {
      Logger("memory")->debug("closed CUDA IPC handle {} of {}", HandleId(handle), client_);
    }
    Handles().erase(it);
  }

  const std::string client_;
  mutable wsync::Mutex mu_;
  std::map<std::string, int> refs_ ABSL_GUARDED_BY(mu_);  // handle -> buffers of this lease
  std::map<std::string, std::pair<void*, int>> events_ ABSL_GUARDED_BY(mu_);  // handle -> (event, device)
};

}  // namespace

std::unique_ptr<CudaLease> CudaLease::Create(std::string client) {
  return std::make_unique<CudaLeaseImpl>(std::move(client));
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Allocate(int device, uint64_t bytes,
                                                                    const std::string& what) {
  if (bytes == 0) bytes = 1;
  if (absl::Status s = CudaStatus(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")")); !s.ok()) {
    return s;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes on GPU ", device, " for ",
                                                     what, ": ", cudaGetErrorString(e)));
  }
  if (absl::Status s = CudaStatus(cudaMemset(p, 0, bytes), "cudaMemset"); !s.ok()) {
    cudaFree(p);
    return s;
  }
  return std::unique_ptr<DeviceBuffer>(new DeviceBuffer(p, bytes, device));
}

DeviceBuffer::~DeviceBuffer() {
  cudaSetDevice(device_);
  cudaFree(data_);
}

absl::StatusOr<std::unique_ptr<PinnedHostBuffer>> PinnedHostBuffer::Allocate(uint64_t bytes,
                                                                            const std::string& what) {
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of pinned host memory for ", what, ": ", cudaGetErrorString(e)));
  }
  std::memset(p, 0, bytes);
  return std::unique_ptr<PinnedHostBuffer>(new PinnedHostBuffer(p, bytes));
}

PinnedHostBuffer::~PinnedHostBuffer() { cudaFreeHost(data_); }

absl::StatusOr<int> DeviceOrdinal(const std::string& device_uuid) {
  // The visible GPUs do not change during a process's life: query them once,
  // not for every buffer registered.
  static const auto* gpus = new absl::StatusOr<std::vector<kernels::GpuInfo>>(kernels::ListGpus());
  if (!gpus->ok()) return gpus->status();
  std::string names;
  for (const kernels::GpuInfo& g : **gpus) {
    if (g.uuid == device_uuid) return g.ordinal;
    absl::StrAppend(&names, names.empty() ? "" : ", ", g.uuid);
  }
  return absl::NotFoundError(absl::StrCat("no visible GPU has UUID '", device_uuid, "' (visible: ",
                                          names.empty() ? "none" : names, ")"));
}

}  // namespace wsync::memory
