#ifndef WSYNC_KERNELS_FP8_CUDA_H_
#define WSYNC_KERNELS_FP8_CUDA_H_

// CUDA version of the scaled FP8 quantization, with the same ops and the
// same bytes and scales as QuantizeFp8Cpu (kernels/fp8.h). Input checks are
// the CPU ones (CheckFp8QuantOps): run them first.

#include <cuda_runtime_api.h>

#include "kernels/fp8.h"

namespace wsync::kernels {

// Quantizes every block of `d_blocks` (device copies of MakeFp8Blocks over
// the device-resident `d_ops`). `*d_first_bad` (device, set to
// kFp8AllFinite by the caller) ends as kFp8AllFinite or the smallest key of
// a non-finite element (Fp8BadElement decodes it); blocks holding one are
// then unspecified. Returns the launch error; work completes on `stream`.
cudaError_t LaunchQuantizeFp8(const Fp8QuantOp* d_ops, const Fp8Block* d_blocks, int64_t num_blocks,
                              unsigned long long* d_first_bad, cudaStream_t stream);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_FP8_CUDA_H_
