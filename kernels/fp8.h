#ifndef WSYNC_KERNELS_FP8_H_
#define WSYNC_KERNELS_FP8_H_

// float8_e4m3fn and scaled FP8 quantization, shared by the CPU reference
// (the specification) and the CUDA kernels.
//
// float8_e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no
// infinities; S.1111.111 (0x7f, 0xff) is NaN; the largest finite value is
// 448 (0x7e), the smallest subnormal 2^-9. Narrowing from fp32 rounds to
// nearest, ties to even, and saturates: every finite value or infinity whose
// magnitude is 448 or more becomes +/-448 (torch's cast gives NaN past 464;
// quantized values never get there). NaN stays NaN (0x7f with the sign).
//
// Scaled quantization (the `weight_scale_inv` convention of DeepSeek-V3 and
// Qwen3-FP8 checkpoints, which vLLM loads): a matrix is cut into blocks of
// block_rows x block_cols elements (the last ones may be smaller); for each
// block, in fp32,
//   amax      = max |w| over the block
//   scale_inv = amax / 448, or 1 when amax is 0
//   q         = F32ToE4m3(w / scale_inv)
// so that w ~ E4m3ToF32(q) * scale_inv. 128 x 128 blocks are block FP8; one
// block over the whole matrix is per-tensor scaling; 1 x cols blocks are
// per-output-channel scaling. Infinite or NaN inputs are an error (never a
// NaN scale).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace wsync::kernels {

inline constexpr float kE4m3Max = 448.0f;

// fp32 -> e4m3fn bits, as described above. Branch-light, host and device.
WSYNC_HD uint8_t F32ToE4m3(float f) {
  const uint32_t u = F32Bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7fu;     // NaN
  if (a >= 0x43e00000u) return sign | 0x7eu;    // |f| >= 448 (and Inf): saturate
  if (a < 0x3c800000u) {                        // |f| < 2^-6: subnormal range, steps of 2^-9
    // Scaling by 2^9 is exact; adding and removing 2^23 rounds to an integer,
    // ties to even. 8 encodes the smallest normal, 2^-6.
    const float m = (BitsF32(a) * 512.0f + 8388608.0f) - 8388608.0f;
    return sign | static_cast<uint8_t>(m);
  }
  // Normal: keep 3 of 23 mantissa bits, ties to even; a carry moves into the
  // exponent. Rebias 127 -> 7.
  const uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
  return sign | static_cast<uint8_t>(r - (120u << 3));
}

// e4m3fn bits -> fp32 (exact).
WSYNC_HD float E4m3ToF32(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  const uint32_t e = (b >> 3) & 0xfu, m = b & 7u;
  if (e == 0xfu && m == 7u) return BitsF32(sign | 0x7fc00000u);
  if (e == 0) return BitsF32(sign | F32Bits(static_cast<float>(m) * (1.0f / 512.0f)));
  return BitsF32(sign | ((e + 120u) << 23) | (m << 20));
}

// One matrix to quantize: `rows` x `cols` elements of src_dtype (fp32,
// bf16 or fp16) with row stride `src_ld` (elements), into e4m3fn bytes with
// row stride `dst_ld`, and one fp32 scale_inv per block into `scale_inv`,
// ceil(rows / block_rows) x ceil(cols / block_cols) with row stride
// `scale_ld`. A block holds at most 2^40 elements, an op at most 2^24
// blocks (CheckFp8QuantOps).
struct Fp8QuantOp {
  const void* src = nullptr;
  DType src_dtype = DType::kBF16;
  int64_t rows = 0, cols = 0;
  int64_t src_ld = 0;
  uint8_t* dst = nullptr;
  int64_t dst_ld = 0;
  float* scale_inv = nullptr;
  int64_t scale_ld = 0;
  int64_t block_rows = 128, block_cols = 128;
};

// One block of one op: the unit of work of both implementations, numbered
// op by op, then by block row and block column.
struct Fp8Block {
  uint32_t op = 0;
  int64_t bi = 0, bj = 0;
};
std::vector<Fp8Block> MakeFp8Blocks(const Fp8QuantOp* ops, size_t n);

// A non-finite element, as a key that orders elements like the CPU
// reference meets them: block number << 40 | row-major index in the block.
// The GPU keeps the smallest key (atomicMin) so both report the same one.
inline constexpr uint64_t kFp8AllFinite = ~0ull;
WSYNC_HD uint64_t Fp8BadKey(uint64_t block, uint64_t index_in_block) { return block << 40 | index_in_block; }
// Where the element of key `key` of a batch whose blocks are `blocks` is;
// false if the key names no element of it (kFp8AllFinite, or a corrupt
// value read back from a device). Fp8BadMessage names it with its value.
struct Fp8Element {
  size_t op = 0;
  int64_t row = 0, col = 0;
};
bool Fp8BadElement(const Fp8QuantOp* ops, const std::vector<Fp8Block>& blocks, uint64_t key, Fp8Element* e);
std::string Fp8BadMessage(const Fp8Element& e, float value);

// Input checks, kept apart: dtypes, sizes, strides and block sizes. Returns
// "" when valid, else a message naming the op.
std::string CheckFp8QuantOps(const Fp8QuantOp* ops, size_t n);

// CPU reference: quantizes every op (ops must pass CheckFp8QuantOps) over
// up to `threads` threads. Returns "" or, for the first op holding an
// infinite or NaN value, a message naming the op, the element (row, column)
// and the value; that op's outputs are then unspecified.
std::string QuantizeFp8Cpu(const Fp8QuantOp* ops, size_t n, int threads);

// The inverse, for reading FP8 checkpoints: w = E4m3ToF32(q) * scale_inv
// of the element's block, in fp32, for one `rows` x `cols` matrix (dense
// row-major q and out; scale_inv ceil(rows / block_rows) x
// ceil(cols / block_cols), row-major).
void DequantizeFp8Cpu(const uint8_t* q, const float* scale_inv, int64_t rows, int64_t cols, int64_t block_rows,
                      int64_t block_cols, float* out);

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_FP8_H_
