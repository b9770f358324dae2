#ifndef WSYNC_KERNELS_CUDA_STATUS_H_
#define WSYNC_KERNELS_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace wsync::kernels {

// Turns a CUDA runtime result into a Status: OK for cudaSuccess, otherwise
// INTERNAL (UNAVAILABLE when no driver or device is present) with `what`,
// the CUDA error name and its description.
inline absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_CUDA_STATUS_H_
