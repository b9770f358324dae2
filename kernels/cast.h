#ifndef WSYNC_KERNELS_CAST_H_
#define WSYNC_KERNELS_CAST_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace wsync::kernels {

// Casts n fp32 values at device pointer `in` to bf16 bits at device pointer
// `out` on `stream`, with the rounding of kernels/dtype.h (bit-identical to
// CastF32ToBf16Ref). Returns the launch error, if any; the cast itself
// completes asynchronously. n == 0 launches nothing.
cudaError_t LaunchCastF32ToBf16(const float* in, uint16_t* out, size_t n, cudaStream_t stream);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_CAST_H_
