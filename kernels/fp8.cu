#include "kernels/fp8.cuh"
#include "kernels/fp8_cuda.h"

namespace wsync::kernels {

cudaError_t LaunchQuantizeFp8(const Fp8QuantOp* d_ops, const Fp8Block* d_blocks, int64_t num_blocks,
                              unsigned long long* d_first_bad, cudaStream_t stream) {
  if (num_blocks == 0) return cudaSuccess;
  if (num_blocks < 0 || num_blocks > 0x7fffffff) return cudaErrorInvalidValue;
  constexpr int kThreads = 256;
  QuantizeFp8Kernel<kThreads><<<static_cast<unsigned>(num_blocks), kThreads, 0, stream>>>(d_ops, d_blocks,
                                                                                         d_first_bad);
  return cudaGetLastError();
}

}  // namespace wsync::kernels
