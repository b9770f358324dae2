#include "client/cpp/cuda_memory.h"

#include <cuda.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/device_info.h"

namespace wsync::client {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::FailedPreconditionError(absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}

using GetAddressRangeFn = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);

}  // namespace

absl::StatusOr<v1::MemoryRef> CudaMemoryRef(const void* ptr, uint64_t nbytes, cudaEvent_t ready) {
  cudaPointerAttributes attr;
  if (absl::Status s = Cuda(cudaPointerGetAttributes(&attr, ptr), "cudaPointerGetAttributes"); !s.ok()) return s;
  if (attr.type != cudaMemoryTypeDevice) {
    return absl::InvalidArgumentError(absl::StrFormat("%p is not device memory (cudaMalloc'ed)", ptr));
  }
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q;
  if (absl::Status s = Cuda(cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault, &q),
                            "cudaGetDriverEntryPointByVersion");
      !s.ok()) {
    return s;
  }
  if (q != cudaDriverEntryPointSuccess || fn == nullptr) {
    return absl::FailedPreconditionError("the CUDA driver has no cuMemGetAddressRange");
  }
  CUdeviceptr base = 0;
  size_t size = 0;
  if (reinterpret_cast<GetAddressRangeFn>(fn)(&base, &size, reinterpret_cast<CUdeviceptr>(ptr)) != CUDA_SUCCESS) {
    return absl::InvalidArgumentError(absl::StrFormat("cuMemGetAddressRange(%p) failed", ptr));
  }
  const uint64_t offset = reinterpret_cast<CUdeviceptr>(ptr) - base;
  if (nbytes > size - offset) {
    return absl::InvalidArgumentError(absl::StrCat("bytes [", offset, ", ", offset + nbytes,
                                                   ") leave the allocation of ", size, " bytes"));
  }
  cudaIpcMemHandle_t mh;
  if (absl::Status s = Cuda(cudaIpcGetMemHandle(&mh, reinterpret_cast<void*>(base)), "cudaIpcGetMemHandle"); !s.ok()) {
    return s;
  }
  cudaDeviceProp prop;
  if (absl::Status s = Cuda(cudaGetDeviceProperties(&prop, attr.device), "cudaGetDeviceProperties"); !s.ok()) return s;
  v1::MemoryRef ref;
  auto* ipc = ref.mutable_cuda_ipc();
  ipc->set_ipc_handle(std::string(reinterpret_cast<const char*>(&mh), sizeof(mh)));
  ipc->set_device_uuid(kernels::GpuUuidString(prop.uuid.bytes));
  if (ready != nullptr) {
    cudaIpcEventHandle_t eh;
    if (absl::Status s = Cuda(cudaIpcGetEventHandle(&eh, ready), "cudaIpcGetEventHandle"); !s.ok()) return s;
    ipc->set_event_handle(std::string(reinterpret_cast<const char*>(&eh), sizeof(eh)));
  }
  ref.set_offset(offset);
  ref.set_nbytes(nbytes);
  return ref;
}

}  // namespace wsync::client
