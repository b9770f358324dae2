#include "kernels/cast_ref.h"

#include "kernels/dtype.h"

namespace wsync::kernels {

void CastF32ToBf16Ref(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = F32ToBf16(in[i]);
}

}  // namespace wsync::kernels
