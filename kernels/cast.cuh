#ifndef WSYNC_KERNELS_CAST_CUH_
#define WSYNC_KERNELS_CAST_CUH_

#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace wsync::kernels {

// Grid-stride fp32 -> bf16 cast. Reads 4 floats at a time when `in` is
// 16-byte aligned; the tail and unaligned inputs go element by element.
__global__ void CastF32ToBf16Kernel(const float* __restrict__ in, uint16_t* __restrict__ out,
                                    size_t n) {
  size_t tid = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  bool vec = (reinterpret_cast<uintptr_t>(in) % 16 == 0) &&
             (reinterpret_cast<uintptr_t>(out) % 8 == 0);
  size_t n_vec = vec ? n / 4 : 0;
  for (size_t i = tid; i < n_vec; i += stride) {
    float4 v = reinterpret_cast<const float4*>(in)[i];
    ushort4 o;
    o.x = F32ToBf16(v.x);
    o.y = F32ToBf16(v.y);
    o.z = F32ToBf16(v.z);
    o.w = F32ToBf16(v.w);
    reinterpret_cast<ushort4*>(out)[i] = o;
  }
  for (size_t i = n_vec * 4 + tid; i < n; i += stride) out[i] = F32ToBf16(in[i]);
}

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_CAST_CUH_
