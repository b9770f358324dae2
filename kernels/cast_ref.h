#ifndef WSYNC_KERNELS_CAST_REF_H_
#define WSYNC_KERNELS_CAST_REF_H_

#include <cstddef>
#include <cstdint>

namespace wsync::kernels {

// CPU reference of LaunchCastF32ToBf16: out[i] = bf16(in[i]) for i < n,
// rounding as documented in kernels/dtype.h. `in` and `out` must not overlap.
void CastF32ToBf16Ref(const float* in, uint16_t* out, size_t n);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_CAST_REF_H_
