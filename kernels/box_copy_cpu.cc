#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/box_copy.h"
#include "kernels/digest_avx512.h"
#include "kernels/parallel.h"

namespace wsync::kernels {
namespace {

// Number of innermost rows of an op: the product of all extents but the last.
int64_t Rows(const BoxCopyOp& op) {
  int64_t rows = 1;
  for (int d = 0; d + 1 < op.ndim; ++d) rows *= op.extent[d];
  return rows;
}

// Element offsets of row `row` (row-major over the outer dimensions).
void RowOffsets(const BoxCopyOp& op, int64_t row, int64_t* src_off, int64_t* dst_off) {
  int64_t s = 0, t = 0;
  for (int d = op.ndim - 2; d >= 0; --d) {
    int64_t idx = row % op.extent[d];
    row /= op.extent[d];
    s += idx * op.src_stride[d];
    t += idx * op.dst_stride[d];
  }
  *src_off = s;
  *dst_off = t;
}

// Copies n bytes with non-temporal stores where the CPU has them: for
// batches much larger than the caches this skips the read-for-ownership of
// the destination, as glibc's memcpy does for large single copies.

#if defined(__x86_64__)
// Full-cache-line non-temporal stores (AVX-512) where the CPU has them.
__attribute__((target("avx512f"))) void StreamCopy512(char* dst, const char* src, size_t n) {
  size_t head = (64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63;
  if (head > n) head = n;
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  size_t blocks = n / 256;
  for (size_t i = 0; i < blocks; ++i) {
    __m512i a = _mm512_loadu_si512(src);
    __m512i b = _mm512_loadu_si512(src + 64);
    __m512i c = _mm512_loadu_si512(src + 128);
    __m512i d = _mm512_loadu_si512(src + 192);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), a);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + 64), b);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + 128), c);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + 192), d);
    src += 256;
    dst += 256;
  }
  std::memcpy(dst, src, n - blocks * 256);
}
const bool kHasAvx512 = __builtin_cpu_supports("avx512f");

// One pass over a contiguous row of n bytes: copies it and adds the digest
// terms of its words (the first at payload word `first_word`) to `out`, from
// the same registers that are stored. The row is taken in 64-byte blocks from
// its start; a block's store streams when the destination is 64-byte aligned
// and `stream` is set. The tail (n % 64 bytes) is left to the caller.
// Returns the bytes handled.
__attribute__((target("avx512f,avx512dq"))) size_t CopyDigestBlocks512(
    char* dst, const char* src, size_t n, uint64_t first_word, bool stream, DigestSums* out) {
  const size_t blocks = n / 64;
  const bool nt = stream && (reinterpret_cast<uintptr_t>(dst) & 63) == 0;
  DigestLanes512 d;
  DigestLanesStart(&d, first_word);
  for (size_t i = 0; i < blocks; ++i) {
    const __m512i w = _mm512_loadu_si512(src + 64 * i);
    if (nt) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + 64 * i), w);
    } else {
      _mm512_storeu_si512(dst + 64 * i, w);
    }
    DigestLanesAdd(&d, w);
  }
  DigestLanesFinish(d, out);
  return blocks * 64;
}
const bool kHasAvx512dq = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#endif

void StreamCopy(char* dst, const char* src, size_t n) {
#if defined(__x86_64__)
  if (kHasAvx512) {
    StreamCopy512(dst, src, n);
    return;
  }

  size_t head = (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
  if (head > n) head = n;
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  size_t blocks = n / 64;
  for (size_t i = 0; i < blocks; ++i) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32));
    __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), d);
    src += 64;
    dst += 64;
  }
  std::memcpy(dst, src, n - blocks * 64);
#else
  std::memcpy(dst, src, n);
#endif
}

// How many rows ahead the next source row is prefetched.
constexpr int kPrefetchRows = 2;

// Starts loading the first bytes of the next source row: strided rows begin
// on pages the hardware prefetcher has not seen yet.
void PrefetchRow(const BoxCopyOp& op, int64_t off, bool dst = false) {
#if defined(__x86_64__)
  const void* base = dst ? op.dst : op.src;
  if (base == nullptr) return;
  const int esz = DTypeSize(dst ? op.dst_dtype : op.src_dtype);
  const char* p = static_cast<const char*>(base) + off * esz;
  const int64_t row_bytes = std::min<int64_t>(op.extent[op.ndim - 1] * esz, 4096);
  for (int64_t i = 0; i < row_bytes; i += 64) _mm_prefetch(p + i, _MM_HINT_T0);
#endif
}

void StreamFence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// Contiguous rows of a dtype conversion, compiled twice: for any x86-64 and
// vectorized for AVX-512 CPUs. The element functions are those of dtype.h, so
// both give the same bits.
#define WSYNC_CONVERT_CONTIG                                                         \
  using u16 = uint16_t;                                                              \
  if (st == DType::kF32 && dt == DType::kBF16) {                                     \
    const float* s = static_cast<const float*>(src);                                 \
    u16* d = static_cast<u16*>(dst);                                                 \
    for (int64_t i = 0; i < n; ++i) d[i] = F32ToBf16(s[i]);                          \
  } else if (st == DType::kBF16 && dt == DType::kF32) {                              \
    const u16* s = static_cast<const u16*>(src);                                     \
    float* d = static_cast<float*>(dst);                                             \
    for (int64_t i = 0; i < n; ++i) d[i] = Bf16ToF32(s[i]);                          \
  } else if (st == DType::kF32 && dt == DType::kF16) {                               \
    const float* s = static_cast<const float*>(src);                                 \
    u16* d = static_cast<u16*>(dst);                                                 \
    for (int64_t i = 0; i < n; ++i) d[i] = F32ToF16(s[i]);                           \
  } else if (st == DType::kF16 && dt == DType::kF32) {                               \
    const u16* s = static_cast<const u16*>(src);                                     \
    float* d = static_cast<float*>(dst);                                             \
    for (int64_t i = 0; i < n; ++i) d[i] = F16ToF32(s[i]);                           \
  } else if (st == DType::kBF16 && dt == DType::kF16) {                              \
    const u16* s = static_cast<const u16*>(src);                                     \
    u16* d = static_cast<u16*>(dst);                                                 \
    for (int64_t i = 0; i < n; ++i) d[i] = F32ToF16(Bf16ToF32(s[i]));                \
  } else {                                                                           \
    const u16* s = static_cast<const u16*>(src);                                     \
    u16* d = static_cast<u16*>(dst);                                                 \
    for (int64_t i = 0; i < n; ++i) d[i] = F32ToBf16(F16ToF32(s[i]));                \
  }

void ConvertContig(const void* src, DType st, void* dst, DType dt, int64_t n) { WSYNC_CONVERT_CONTIG }

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw"), optimize("O3"))) void ConvertContig512(
    const void* src, DType st, void* dst, DType dt, int64_t n) {
  WSYNC_CONVERT_CONTIG
}
const bool kHasAvx512bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#endif

template <typename S, typename D, typename Conv>
void ConvertRow(const S* src, int64_t ss, D* dst, int64_t ds, int64_t n, Conv conv) {
  if (ss == 1 && ds == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = conv(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * ds] = conv(src[i * ss]);
  }
}

void CopyRow(const BoxCopyOp& op, int64_t src_off, int64_t dst_off, bool stream) {
  const int last = op.ndim - 1;
  const int64_t n = op.extent[last];
  const int64_t ss = op.src_stride[last];
  const int64_t ds = op.dst_stride[last];
  const int dsz = DTypeSize(op.dst_dtype);
  char* dst = static_cast<char*>(op.dst) + dst_off * dsz;
  if (op.src == nullptr) {
    if (ds == 1) {
      std::memset(dst, 0, n * dsz);
    } else {
      for (int64_t i = 0; i < n; ++i) std::memset(dst + i * ds * dsz, 0, dsz);
    }
    return;
  }
  const int ssz = DTypeSize(op.src_dtype);
  const char* src = static_cast<const char*>(op.src) + src_off * ssz;
  if (op.src_dtype == op.dst_dtype) {
    if (ss == 1 && ds == 1) {
      if (stream && n * dsz >= 256) {
        StreamCopy(dst, src, n * dsz);
      } else {
        std::memcpy(dst, src, n * dsz);
      }
    } else if (dsz == 4) {
      ConvertRow(reinterpret_cast<const uint32_t*>(src), ss, reinterpret_cast<uint32_t*>(dst), ds,
                 n, [](uint32_t v) { return v; });
    } else if (dsz == 2) {
      ConvertRow(reinterpret_cast<const uint16_t*>(src), ss, reinterpret_cast<uint16_t*>(dst), ds,
                 n, [](uint16_t v) { return v; });
    } else {
      ConvertRow(reinterpret_cast<const uint8_t*>(src), ss, reinterpret_cast<uint8_t*>(dst), ds, n,
                 [](uint8_t v) { return v; });
    }
    return;
  }
  if (ss == 1 && ds == 1) {
#if defined(__x86_64__)
    if (kHasAvx512bw) {
      ConvertContig512(src, op.src_dtype, dst, op.dst_dtype, n);
      return;
    }
#endif
    ConvertContig(src, op.src_dtype, dst, op.dst_dtype, n);
    return;
  }
  using u16 = uint16_t;
  const auto* s16 = reinterpret_cast<const u16*>(src);
  const auto* s32 = reinterpret_cast<const float*>(src);
  auto* d16 = reinterpret_cast<u16*>(dst);
  auto* d32 = reinterpret_cast<float*>(dst);
  switch (op.src_dtype) {
    case DType::kF32:
      if (op.dst_dtype == DType::kBF16) {
        ConvertRow(s32, ss, d16, ds, n, [](float v) { return F32ToBf16(v); });
      } else {
        ConvertRow(s32, ss, d16, ds, n, [](float v) { return F32ToF16(v); });
      }
      return;
    case DType::kBF16:
      if (op.dst_dtype == DType::kF32) ConvertRow(s16, ss, d32, ds, n, [](u16 v) { return Bf16ToF32(v); });
      else ConvertRow(s16, ss, d16, ds, n, [](u16 v) { return F32ToF16(Bf16ToF32(v)); });
      return;
    case DType::kF16:
      if (op.dst_dtype == DType::kF32) ConvertRow(s16, ss, d32, ds, n, [](u16 v) { return F16ToF32(v); });
      else ConvertRow(s16, ss, d16, ds, n, [](u16 v) { return F32ToBf16(F16ToF32(v)); });
      return;
    default:
      return;  // rejected by CheckBoxCopyOps
  }
}

// Copies a contiguous row of equal dtypes and adds the digest of its
// `row_bytes` bytes as payload words from `word`: in one pass over the
// source where the CPU has AVX-512, else digest then copy (from cache).
void CopyDigestRow(const BoxCopyOp& op, int64_t src_off, int64_t dst_off, uint64_t row_bytes,
                   uint64_t word, bool stream, DigestSums* sums) {
  const int esz = DTypeSize(op.dst_dtype);
  const char* src = static_cast<const char*>(op.src) + src_off * esz;
  char* dst = static_cast<char*>(op.dst) + dst_off * esz;
  size_t done = 0;
#if defined(__x86_64__)
  if (kHasAvx512dq) done = CopyDigestBlocks512(dst, src, row_bytes, word, stream, sums);
#endif
  const size_t rest = row_bytes - done;
  if (rest == 0) return;
  DigestSums part = DigestPartial(src + done, rest, word + done / 8);
  sums->s1 += part.s1;
  sums->s2 += part.s2;
  if (stream && rest >= 256) {
    StreamCopy(dst + done, src + done, rest);
  } else {
    std::memcpy(dst + done, src + done, rest);
  }
}

struct Task {
  uint32_t op;
  int64_t row_begin, row_end;
};

// Row-range tasks of about total / (4 * threads) bytes each.
std::vector<Task> MakeTasks(const BoxCopyOp* ops, size_t n, uint64_t total, int threads) {
  const uint64_t chunk = std::max<uint64_t>(total / (4 * std::max(threads, 1)), 64 << 10);
  std::vector<Task> tasks;
  for (size_t i = 0; i < n; ++i) {
    const int64_t rows = Rows(ops[i]);
    const uint64_t row_bytes =
        static_cast<uint64_t>(ops[i].extent[ops[i].ndim - 1]) * DTypeSize(ops[i].dst_dtype);
    const int64_t per_task =
        std::max<int64_t>(1, static_cast<int64_t>(chunk / std::max<uint64_t>(row_bytes, 1)));
    for (int64_t r = 0; r < rows; r += per_task) {
      tasks.push_back({static_cast<uint32_t>(i), r, std::min(rows, r + per_task)});
    }
  }
  return tasks;
}

// Digests the destination row at element offset `dst_off` as payload words
// starting at `word`; strided rows are gathered first.
void DigestRow(const BoxCopyOp& op, int64_t dst_off, uint64_t word, std::vector<uint8_t>* tmp,
               DigestSums* sums) {
  const int last = op.ndim - 1;
  const int64_t n = op.extent[last];
  const int64_t ds = op.dst_stride[last];
  const int dsz = DTypeSize(op.dst_dtype);
  const char* row = static_cast<const char*>(op.dst) + dst_off * dsz;
  if (ds != 1) {
    tmp->resize(n * dsz);
    for (int64_t i = 0; i < n; ++i) std::memcpy(tmp->data() + i * dsz, row + i * ds * dsz, dsz);
    row = reinterpret_cast<const char*>(tmp->data());
  }
  DigestSums part = DigestPartial(row, n * dsz, word);
  sums->s1 += part.s1;
  sums->s2 += part.s2;
}

DigestSums RunDigest(const BoxCopyOp* ops, size_t n, const uint64_t* word_base, int threads,
                     bool copy) {
  const uint64_t total = BoxCopyBytes(ops, n);
  if (total < (2u << 20)) threads = 1;
  const bool stream = copy && total >= (32ull << 20);
  std::vector<Task> tasks = MakeTasks(ops, n, total, threads);
  std::vector<DigestSums> per_task(tasks.size());
  ParallelFor(tasks.size(), threads, [&](size_t t) {
    const Task& task = tasks[t];
    const BoxCopyOp& op = ops[task.op];
    const uint64_t row_words = BoxRowWords(op);
    const int last = op.ndim - 1;
    // Equal dtypes with contiguous rows: digest the source row (the same
    // bytes), then copy it, with streaming stores for large batches.
    const bool from_source = copy && op.src != nullptr && op.src_dtype == op.dst_dtype &&
                             op.src_stride[last] == 1 && op.dst_stride[last] == 1;
    const uint64_t row_bytes = static_cast<uint64_t>(op.extent[last]) * DTypeSize(op.dst_dtype);
    std::vector<uint8_t> tmp;
    DigestSums sums;
    for (int64_t r = task.row_begin; r < task.row_end; ++r) {
      int64_t so, dof;
      RowOffsets(op, r, &so, &dof);
      const uint64_t word = word_base[task.op] + r * row_words;
      if (r + kPrefetchRows < task.row_end) {
        int64_t nso, ndo;
        RowOffsets(op, r + kPrefetchRows, &nso, &ndo);
        PrefetchRow(op, copy ? nso : ndo, !copy);
      }
      if (from_source) {
        CopyDigestRow(op, so, dof, row_bytes, word, stream, &sums);
        continue;
      }
      if (copy) CopyRow(op, so, dof, /*stream=*/false);
      DigestRow(op, dof, word, &tmp, &sums);
    }
    if (stream) StreamFence();
    per_task[t] = sums;
  });
  DigestSums out;
  for (const DigestSums& s : per_task) {
    out.s1 += s.s1;
    out.s2 += s.s2;
  }
  return out;
}

}  // namespace

uint64_t BoxRowWords(const BoxCopyOp& op) {
  const uint64_t bytes =
      static_cast<uint64_t>(op.extent[op.ndim - 1]) * DTypeSize(op.dst_dtype);
  return (bytes + 7) / 8;
}

uint64_t BoxPayloadWords(const BoxCopyOp* ops, size_t n, uint64_t first_word,
                         uint64_t* word_base) {
  uint64_t at = first_word;
  for (size_t i = 0; i < n; ++i) {
    word_base[i] = at;
    at += static_cast<uint64_t>(Rows(ops[i])) * BoxRowWords(ops[i]);
  }
  return at - first_word;
}

DigestSums BoxCopyDigestCpu(const BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                            int threads) {
  return RunDigest(ops, n, word_base, threads, /*copy=*/true);
}

DigestSums BoxDigestCpu(const BoxCopyOp* ops, size_t n, const uint64_t* word_base, int threads) {
  return RunDigest(ops, n, word_base, threads, /*copy=*/false);
}

std::string CheckBoxCopyOps(const BoxCopyOp* ops, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const BoxCopyOp& op = ops[i];
    std::string where = "box copy op " + std::to_string(i) + ": ";
    if (op.dst == nullptr) return where + "null destination";
    if (op.ndim < 1 || op.ndim > kMaxBoxDims) {
      return where + "ndim " + std::to_string(op.ndim) + " outside [1, " +
             std::to_string(kMaxBoxDims) + "]";
    }
    for (int d = 0; d < op.ndim; ++d) {
      if (op.extent[d] < 1) {
        return where + "extent[" + std::to_string(d) + "] = " + std::to_string(op.extent[d]) +
               " (must be >= 1)";
      }
    }
    if (DTypeSize(op.dst_dtype) == 0 || (op.src && DTypeSize(op.src_dtype) == 0)) {
      return where + "unknown dtype";
    }
    bool fp8 = op.dst_dtype == DType::kF8E4M3 || (op.src && op.src_dtype == DType::kF8E4M3);
    if (fp8 && op.src && op.src_dtype != op.dst_dtype) {
      return where + "conversion " + DTypeName(op.src_dtype) + " -> " + DTypeName(op.dst_dtype) +
             " is not supported (fp8_e4m3 is reserved: copies only)";
    }
  }
  return "";
}

uint64_t BoxCopyBytes(const BoxCopyOp* ops, size_t n) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    uint64_t e = 1;
    for (int d = 0; d < ops[i].ndim; ++d) e *= ops[i].extent[d];
    total += e * DTypeSize(ops[i].dst_dtype);
  }
  return total;
}

void BoxCopyCpu(const BoxCopyOp* ops, size_t n, int threads) {
  const uint64_t total = BoxCopyBytes(ops, n);
  // Batches far beyond the last-level cache stream their stores.
  const bool stream = total >= (32ull << 20);
  constexpr uint64_t kMinBytesPerThread = 1 << 20;
  if (threads < 1) threads = 1;
  if (total < kMinBytesPerThread * 2) threads = 1;
  if (threads == 1) {
    for (size_t i = 0; i < n; ++i) {
      const int64_t rows = Rows(ops[i]);
      for (int64_t r = 0; r < rows; ++r) {
        int64_t so, dof;
        RowOffsets(ops[i], r, &so, &dof);
        if (r + kPrefetchRows < rows) {
          int64_t nso, ndo;
          RowOffsets(ops[i], r + kPrefetchRows, &nso, &ndo);
          PrefetchRow(ops[i], nso);
        }
        CopyRow(ops[i], so, dof, stream);
      }
    }
    if (stream) StreamFence();
    return;
  }
  std::vector<Task> tasks = MakeTasks(ops, n, total, threads);
  ParallelFor(tasks.size(), threads, [&](size_t t) {
    const Task& task = tasks[t];
    const BoxCopyOp& op = ops[task.op];
    for (int64_t r = task.row_begin; r < task.row_end; ++r) {
      int64_t so, dof;
      RowOffsets(op, r, &so, &dof);
      if (r + kPrefetchRows < task.row_end) {
        int64_t nso, ndo;
        RowOffsets(op, r + kPrefetchRows, &nso, &ndo);
        PrefetchRow(op, nso);
      }
      CopyRow(op, so, dof, stream);
    }
    if (stream) StreamFence();
  });
}

std::vector<BoxTile> MakeBoxTiles(const BoxCopyOp* ops, size_t n, uint64_t tile_bytes) {
  tile_bytes = std::max<uint64_t>(8, tile_bytes / 8 * 8);
  std::vector<BoxTile> tiles;
  for (size_t i = 0; i < n; ++i) {
    const BoxCopyOp& op = ops[i];
    int64_t rows = 1;
    for (int d = 0; d + 1 < op.ndim; ++d) rows *= op.extent[d];
    const int64_t cols = op.extent[op.ndim - 1];
    const uint64_t esz = DTypeSize(op.dst_dtype);
    const uint64_t row_bytes = static_cast<uint64_t>(cols) * esz;
    const auto id = static_cast<uint32_t>(i);
    if (row_bytes <= tile_bytes) {
      const auto per = static_cast<int64_t>(tile_bytes / std::max<uint64_t>(row_bytes, 1));
      for (int64_t r = 0; r < rows; r += per) tiles.push_back({id, r, std::min(rows, r + per), 0, cols});
      continue;
    }
    // esz divides 8, and tile_bytes is a multiple of 8: every cut but the
    // row's end falls on a multiple of 8 bytes.
    const auto chunk = static_cast<int64_t>(tile_bytes / esz);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; c += chunk) tiles.push_back({id, r, r + 1, c, std::min(cols, c + chunk)});
    }
  }
  return tiles;
}

}  // namespace wsync::kernels
