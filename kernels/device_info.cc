#include "kernels/device_info.h"

#include <cuda_runtime_api.h>

#include <cstdio>

#include "absl/strings/str_format.h"
#include "kernels/cuda_status.h"

namespace wsync::kernels {

absl::StatusOr<std::vector<GpuInfo>> ListGpus() {
  int count = 0;
  if (absl::Status s = CudaStatus(cudaGetDeviceCount(&count), "cudaGetDeviceCount"); !s.ok()) {
    return s;
  }
  std::vector<GpuInfo> gpus;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (absl::Status s = CudaStatus(cudaGetDeviceProperties(&prop, i),
                                    absl::StrFormat("cudaGetDeviceProperties(%d)", i));
        !s.ok()) {
      return s;
    }
    GpuInfo info;
    info.ordinal = i;
    info.name = prop.name;
    info.sm_major = prop.major;
    info.sm_minor = prop.minor;
    info.total_bytes = prop.totalGlobalMem;
    info.uuid = GpuUuidString(prop.uuid.bytes);
    gpus.push_back(std::move(info));
  }
  return gpus;
}

std::string GpuUuidString(const void* uuid16) {
  const unsigned char* u = static_cast<const unsigned char*>(uuid16);
  return absl::StrFormat("GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2],
                         u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

std::string Describe(const GpuInfo& gpu) {
  return absl::StrFormat("%d: %s (sm_%d%d, %.1f GiB) %s", gpu.ordinal, gpu.name, gpu.sm_major,
                         gpu.sm_minor, gpu.total_bytes / double(1ull << 30), gpu.uuid);
}

}  // namespace wsync::kernels
