#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace wsync::kernels {
namespace {

float Load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kBF16: return Bf16ToF32(static_cast<const uint16_t*>(p)[i]);
    default: return F16ToF32(static_cast<const uint16_t*>(p)[i]);
  }
}

std::string Where(size_t i) { return "fp8 quantization op " + std::to_string(i) + ": "; }

inline float ToF32(float x) { return x; }
struct Bf16Bits {
  uint16_t v;
};
struct F16Bits {
  uint16_t v;
};
inline float ToF32(Bf16Bits x) { return Bf16ToF32(x.v); }
inline float ToF32(F16Bits x) { return F16ToF32(x.v); }

constexpr float kF32Max = 3.4028234663852886e38f;

// One row of a block: `n` elements from `src`. RowAmax raises *amax to
// their largest magnitude and clears *finite if one is NaN or infinite;
// RowQuantize writes F32ToE4m3(x / scale_inv) of each into `out`.
template <typename T>
void RowAmax(const T* src, int64_t n, float* amax, bool* finite) {
  float m = *amax;
  bool f = *finite;
  for (int64_t c = 0; c < n; ++c) {
    const float a = std::fabs(ToF32(src[c]));
    f &= a <= kF32Max;  // false for NaN and infinity
    m = a > m ? a : m;
  }
  *amax = m;
  *finite = f;
}

template <typename T>
void RowQuantize(const T* src, int64_t n, float scale_inv, uint8_t* out) {
  for (int64_t c = 0; c < n; ++c) out[c] = F32ToE4m3(ToF32(src[c]) / scale_inv);
}

#if defined(__x86_64__)
// GCC 12's AVX-512 headers start masked intrinsics from an undefined
// vector, which -W(maybe-)uninitialized reports.
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
// The same rows, 16 elements at a time with AVX-512; the same bytes as the
// loops above for every input (the division is IEEE in both, and E4m3x16
// is F32ToE4m3 lane by lane).
__attribute__((target("avx512f"))) inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 Load16(const Bf16Bits* p) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}
__attribute__((target("avx512f"))) inline __m512 Load16(const F16Bits* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

__attribute__((target("avx512f"))) inline __m128i E4m3x16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  // Normal: keep 3 mantissa bits, ties to even, and rebias.
  __m512i r = _mm512_add_epi32(a, _mm512_set1_epi32(0x7ffff));
  r = _mm512_add_epi32(r, _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1)));
  r = _mm512_sub_epi32(_mm512_srli_epi32(r, 20), _mm512_set1_epi32(120 << 3));
  // Subnormal: steps of 2^-9 (the product by 512 is exact).
  const __m512 big = _mm512_set1_ps(8388608.0f);
  const __m512 m = _mm512_sub_ps(
      _mm512_add_ps(_mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(512.0f)), big), big);
  r = _mm512_mask_mov_epi32(r, _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x3c800000)), _mm512_cvttps_epi32(m));
  r = _mm512_mask_mov_epi32(r, _mm512_cmpge_epu32_mask(a, _mm512_set1_epi32(0x43e00000)), _mm512_set1_epi32(0x7e));
  r = _mm512_mask_mov_epi32(r, _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000)), _mm512_set1_epi32(0x7f));
  return _mm512_cvtepi32_epi8(_mm512_or_si512(r, sign));
}

template <typename T>
__attribute__((target("avx512f"))) void RowAmax512(const T* src, int64_t n, float* amax, bool* finite) {
  const __m512 limit = _mm512_set1_ps(kF32Max);
  __m512 m = _mm512_setzero_ps();
  __mmask16 ok = 0xffff;
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512 a = _mm512_abs_ps(Load16(src + c));
    ok &= _mm512_cmp_ps_mask(a, limit, _CMP_LE_OQ);
    m = _mm512_max_ps(a, m);  // a NaN lane keeps m (and clears ok)
  }
  const float v = _mm512_reduce_max_ps(m);
  *amax = v > *amax ? v : *amax;
  *finite = *finite && ok == 0xffff;
  RowAmax(src + c, n - c, amax, finite);
}

template <typename T>
__attribute__((target("avx512f"))) void RowQuantize512(const T* src, int64_t n, float scale_inv, uint8_t* out) {
  const __m512 s = _mm512_set1_ps(scale_inv);
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), E4m3x16(_mm512_div_ps(Load16(src + c), s)));
  }
  RowQuantize(src + c, n - c, scale_inv, out + c);
}

const bool kHasAvx512 = __builtin_cpu_supports("avx512f");
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Block `b`'s rows [ra, rb) of elements of type T, in two steps:
// RowsAmax raises *amax to their largest magnitude and clears *finite if
// one is NaN or infinite; RowsQuantize writes them with `scale_inv`.
// FirstBad gives the key of the block's first non-finite element
// (row-major) of block number `k`. The amax scan carries no branch.
struct Rows {
  int64_t r0, r1, c0, c1;
};
Rows RowsOf(const Fp8QuantOp& op, const Fp8Block& b, int64_t ra, int64_t rb) {
  const int64_t r0 = b.bi * op.block_rows, r1 = std::min(op.rows, r0 + op.block_rows);
  const int64_t c0 = b.bj * op.block_cols, c1 = std::min(op.cols, c0 + op.block_cols);
  return {std::min(r1, r0 + ra), std::min(r1, r0 + rb), c0, c1};
}

template <typename T>
void RowsAmax(const Fp8QuantOp& op, const T* src, const Rows& w, float* amax, bool* finite) {
  auto amax_row = RowAmax<T>;
#if defined(__x86_64__)
  if (kHasAvx512) amax_row = RowAmax512<T>;
#endif
  for (int64_t r = w.r0; r < w.r1; ++r) amax_row(src + r * op.src_ld + w.c0, w.c1 - w.c0, amax, finite);
}

template <typename T>
void RowsQuantize(const Fp8QuantOp& op, const T* src, const Rows& w, float scale_inv) {
  auto quantize_row = RowQuantize<T>;
#if defined(__x86_64__)
  if (kHasAvx512) quantize_row = RowQuantize512<T>;
#endif
  for (int64_t r = w.r0; r < w.r1; ++r) {
    quantize_row(src + r * op.src_ld + w.c0, w.c1 - w.c0, scale_inv, op.dst + r * op.dst_ld + w.c0);
  }
}

template <typename T>
uint64_t FirstBad(const Fp8QuantOp& op, const T* src, const Fp8Block& b, uint64_t k) {
  const Rows w = RowsOf(op, b, 0, op.block_rows);
  for (int64_t r = w.r0; r < w.r1; ++r) {
    for (int64_t c = w.c0; c < w.c1; ++c) {
      if (!std::isfinite(ToF32(src[r * op.src_ld + c]))) {
        return Fp8BadKey(k, static_cast<uint64_t>((r - w.r0) * (w.c1 - w.c0) + (c - w.c0)));
      }
    }
  }
  return kFp8AllFinite;
}

// Calls fn(src) with op.src as a pointer to its element type.
template <typename Fn>
auto WithSource(const Fp8QuantOp& op, const Fn& fn) {
  switch (op.src_dtype) {
    case DType::kF32: return fn(static_cast<const float*>(op.src));
    case DType::kBF16: return fn(static_cast<const Bf16Bits*>(op.src));
    default: return fn(static_cast<const F16Bits*>(op.src));
  }
}

}  // namespace

std::string CheckFp8QuantOps(const Fp8QuantOp* ops, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const Fp8QuantOp& op = ops[i];
    if (op.src_dtype != DType::kF32 && op.src_dtype != DType::kBF16 && op.src_dtype != DType::kF16) {
      return Where(i) + "source dtype " + DTypeName(op.src_dtype) + " is not fp32, bf16 or fp16";
    }
    if (op.rows < 1 || op.cols < 1) {
      return Where(i) + "shape [" + std::to_string(op.rows) + ", " + std::to_string(op.cols) + "] is empty";
    }
    if (op.block_rows < 1 || op.block_cols < 1) {
      return Where(i) + "block [" + std::to_string(op.block_rows) + ", " + std::to_string(op.block_cols) +
             "] is empty";
    }
    if (op.src == nullptr || op.dst == nullptr || op.scale_inv == nullptr) return Where(i) + "null pointer";
    const int64_t bh = std::min(op.rows, op.block_rows), bw = std::min(op.cols, op.block_cols);
    const int64_t nblocks = ((op.rows + op.block_rows - 1) / op.block_rows) * ((op.cols + op.block_cols - 1) / op.block_cols);
    if (bh > (int64_t{1} << 40) / bw || nblocks > (int64_t{1} << 24)) {
      return Where(i) + std::to_string(nblocks) + " blocks of up to " + std::to_string(bh) + " x " + std::to_string(bw) +
             " elements: more than 2^24 blocks or 2^40 elements in a block";
    }
    const int64_t scale_cols = (op.cols + op.block_cols - 1) / op.block_cols;
    if (op.src_ld < op.cols || op.dst_ld < op.cols || op.scale_ld < scale_cols) {
      return Where(i) + "row strides (source " + std::to_string(op.src_ld) + ", fp8 " + std::to_string(op.dst_ld) +
             ", scales " + std::to_string(op.scale_ld) + ") shorter than the rows (" + std::to_string(op.cols) +
             " elements, " + std::to_string(scale_cols) + " scales)";
    }
  }
  return "";
}

std::vector<Fp8Block> MakeFp8Blocks(const Fp8QuantOp* ops, size_t n) {
  std::vector<Fp8Block> blocks;
  for (size_t i = 0; i < n; ++i) {
    const int64_t br = (ops[i].rows + ops[i].block_rows - 1) / ops[i].block_rows;
    const int64_t bc = (ops[i].cols + ops[i].block_cols - 1) / ops[i].block_cols;
    for (int64_t bi = 0; bi < br; ++bi) {
      for (int64_t bj = 0; bj < bc; ++bj) blocks.push_back({static_cast<uint32_t>(i), bi, bj});
    }
  }
  return blocks;
}

bool Fp8BadElement(const Fp8QuantOp* ops, const std::vector<Fp8Block>& blocks, uint64_t key, Fp8Element* e) {
  const uint64_t k = key >> 40, l = key & ((1ull << 40) - 1);
  if (k >= blocks.size()) return false;
  const Fp8Block& b = blocks[k];
  const Fp8QuantOp& op = ops[b.op];
  const int64_t r0 = b.bi * op.block_rows, c0 = b.bj * op.block_cols;
  const int64_t width = std::min(op.cols, c0 + op.block_cols) - c0;
  const int64_t height = std::min(op.rows, r0 + op.block_rows) - r0;
  if (l >= static_cast<uint64_t>(width * height)) return false;
  *e = {b.op, r0 + static_cast<int64_t>(l) / width, c0 + static_cast<int64_t>(l) % width};
  return true;
}

std::string Fp8BadMessage(const Fp8Element& e, float value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", value);
  return Where(e.op) + "element (" + std::to_string(e.row) + ", " + std::to_string(e.col) + ") is " + buf +
         "; FP8 scales need finite weights";
}

std::string QuantizeFp8Cpu(const Fp8QuantOp* ops, size_t n, int threads) {
  const std::vector<Fp8Block> blocks = MakeFp8Blocks(ops, n);
  // Units of work: whole blocks when there are enough of them for the
  // threads, else slices of their rows, so that a single large block (a
  // per-tensor scale) still uses every thread. A block's amax is the max
  // over its slices, the same value whatever the cut.
  const size_t slices =
      threads > 1 && blocks.size() < 4 * static_cast<size_t>(threads) && !blocks.empty()
          ? (4 * static_cast<size_t>(threads) + blocks.size() - 1) / blocks.size()
          : 1;
  auto slice_rows = [&](size_t u, int64_t* ra, int64_t* rb) {
    const int64_t br = ops[blocks[u / slices].op].block_rows, j = static_cast<int64_t>(u % slices);
    const int64_t per = (br + static_cast<int64_t>(slices) - 1) / static_cast<int64_t>(slices);
    *ra = j * per;
    *rb = std::min(br, *ra + per);
  };
  const size_t units = blocks.size() * slices;
  std::vector<float> amax(units, 0.0f);
  std::vector<char> finite(units, 1);
  std::vector<uint64_t> bad(blocks.size(), kFp8AllFinite);
  std::vector<float> scale(blocks.size());
  // Block k's scale from its amax, or the key of its first non-finite
  // element (the block is then left unwritten); true when it is to be
  // quantized.
  auto settle = [&](size_t k, float m, bool f) {
    const Fp8QuantOp& op = ops[blocks[k].op];
    if (!f) {
      bad[k] = WithSource(op, [&](const auto* src) { return FirstBad(op, src, blocks[k], k); });
      return false;
    }
    scale[k] = m == 0.0f ? 1.0f : m / kE4m3Max;
    op.scale_inv[blocks[k].bi * op.scale_ld + blocks[k].bj] = scale[k];
    return true;
  };
  auto quantize = [&](size_t u) {
    const size_t k = u / slices;
    const Fp8QuantOp& op = ops[blocks[k].op];
    int64_t ra, rb;
    slice_rows(u, &ra, &rb);
    WithSource(op, [&](const auto* src) { RowsQuantize(op, src, RowsOf(op, blocks[k], ra, rb), scale[k]); });
  };
  // Whole blocks are scanned and written by one thread while they are in
  // its cache; slices are scanned, then settled per block, then written.
  ParallelFor(units, threads, [&](size_t u) {
    const Fp8QuantOp& op = ops[blocks[u / slices].op];
    int64_t ra, rb;
    slice_rows(u, &ra, &rb);
    bool f = true;
    WithSource(op, [&](const auto* src) { RowsAmax(op, src, RowsOf(op, blocks[u / slices], ra, rb), &amax[u], &f); });
    finite[u] = f;
    if (slices == 1 && settle(u, amax[u], f)) quantize(u);
  });
  if (slices > 1) {
    std::vector<char> go(blocks.size());
    for (size_t k = 0; k < blocks.size(); ++k) {
      float m = 0.0f;
      bool f = true;
      for (size_t j = 0; j < slices; ++j) {
        m = std::max(m, amax[k * slices + j]);
        f = f && finite[k * slices + j];
      }
      go[k] = settle(k, m, f);
    }
    ParallelFor(units, threads, [&](size_t u) {
      if (go[u / slices]) quantize(u);
    });
  }
  for (uint64_t key : bad) {
    if (key == kFp8AllFinite) continue;
    Fp8Element e;
    if (!Fp8BadElement(ops, blocks, key, &e)) return "fp8 quantization: internal error: bad element key";
    const Fp8QuantOp& op = ops[e.op];
    return Fp8BadMessage(e, Load(op.src, op.src_dtype, e.row * op.src_ld + e.col));
  }
  return "";
}

void DequantizeFp8Cpu(const uint8_t* q, const float* scale_inv, int64_t rows, int64_t cols, int64_t block_rows,
                      int64_t block_cols, float* out) {
  const int64_t scale_cols = (cols + block_cols - 1) / block_cols;
  for (int64_t r = 0; r < rows; ++r) {
    const float* srow = scale_inv + (r / block_rows) * scale_cols;
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = E4m3ToF32(q[r * cols + c]) * srow[c / block_cols];
  }
}

}  // namespace wsync::kernels
