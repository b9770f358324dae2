#include "kernels/cast.cuh"
#include "kernels/cast.h"

namespace wsync::kernels {

cudaError_t LaunchCastF32ToBf16(const float* in, uint16_t* out, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  size_t work = (n + 3) / 4;
  int blocks = static_cast<int>((work + kThreads - 1) / kThreads);
  if (blocks > 65535) blocks = 65535;
  CastF32ToBf16Kernel<<<blocks, kThreads, 0, stream>>>(in, out, n);
  return cudaGetLastError();
}

}  // namespace wsync::kernels
