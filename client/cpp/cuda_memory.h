#ifndef WSYNC_CLIENT_CPP_CUDA_MEMORY_H_
#define WSYNC_CLIENT_CPP_CUDA_MEMORY_H_

// Registering GPU memory from C++: raw device pointers become MemoryRefs
// that the daemon opens through CUDA IPC.
//
//   auto ref = wsync::client::CudaMemoryRef(d_ptr, nbytes);
//   buffer_spec->mutable_memory()->CopyFrom(*ref);

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "wsync/v1/types.pb.h"

namespace wsync::client {

// A MemoryRef for bytes [ptr, ptr + nbytes) of a cudaMalloc'ed allocation:
// the IPC handle of the allocation's base (found with cuMemGetAddressRange),
// the offset of `ptr` from it, and the device's UUID. `ready`, when given,
// must be created with cudaEventInterprocess | cudaEventDisableTiming; the
// daemon waits on it before each sync reads the buffer (record it after
// every update). INVALID_ARGUMENT when the range leaves the allocation or
// the pointer is not device memory. Thread-safe.
absl::StatusOr<v1::MemoryRef> CudaMemoryRef(const void* ptr, uint64_t nbytes, cudaEvent_t ready = nullptr);

}  // namespace wsync::client

#endif  // WSYNC_CLIENT_CPP_CUDA_MEMORY_H_
