#ifndef WSYNC_KERNELS_DEVICE_INFO_H_
#define WSYNC_KERNELS_DEVICE_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace wsync::kernels {

// What the daemon reports about one visible GPU.
struct GpuInfo {
  int ordinal = 0;
  std::string name;  // "NVIDIA H100 80GB HBM3"
  std::string uuid;  // "GPU-8f0c...", as nvidia-smi prints it.
  int sm_major = 0;
  int sm_minor = 0;
  uint64_t total_bytes = 0;
};

// Lists the GPUs visible to this process. UNAVAILABLE (with the CUDA error)
// when there is no driver or no device. Thread-safe.
absl::StatusOr<std::vector<GpuInfo>> ListGpus();

// "GPU-8f0c1a2b-...": a device UUID (cudaDeviceProp::uuid) as nvidia-smi
// prints it.
std::string GpuUuidString(const void* uuid16);

// "0: NVIDIA H100 80GB HBM3 (sm_90, 79.2 GiB) GPU-8f0c..."
std::string Describe(const GpuInfo& gpu);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_DEVICE_INFO_H_
