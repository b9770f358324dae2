#include <cstring>
#include <vector>

#include "kernels/box_copy.h"
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

template <typename S, typename D, typename Conv>
void ConvertRow(const S* src, int64_t ss, D* dst, int64_t ds, int64_t n, Conv conv) {
  if (ss == 1 && ds == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = conv(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * ds] = conv(src[i * ss]);
  }
}

void CopyRow(const BoxCopyOp& op, int64_t src_off, int64_t dst_off) {
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
      std::memcpy(dst, src, n * dsz);
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
  using u16 = uint16_t;
  const auto* s16 = reinterpret_cast<const u16*>(src);
  const auto* s32 = reinterpret_cast<const float*>(src);
  auto* d16 = reinterpret_cast<u16*>(dst);
  auto* d32 = reinterpret_cast<float*>(dst);
  switch (op.src_dtype) {
    case DType::kF32:
      if (op.dst_dtype == DType::kBF16) ConvertRow(s32, ss, d16, ds, n, F32ToBf16);
      else ConvertRow(s32, ss, d16, ds, n, F32ToF16);
      return;
    case DType::kBF16:
      if (op.dst_dtype == DType::kF32) ConvertRow(s16, ss, d32, ds, n, Bf16ToF32);
      else ConvertRow(s16, ss, d16, ds, n, [](u16 v) { return F32ToF16(Bf16ToF32(v)); });
      return;
    case DType::kF16:
      if (op.dst_dtype == DType::kF32) ConvertRow(s16, ss, d32, ds, n, F16ToF32);
      else ConvertRow(s16, ss, d16, ds, n, [](u16 v) { return F32ToBf16(F16ToF32(v)); });
      return;
    default:
      return;  // rejected by CheckBoxCopyOps
  }
}

struct Task {
  uint32_t op;
  int64_t row_begin, row_end;
};

}  // namespace

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
  constexpr uint64_t kMinBytesPerThread = 1 << 20;
  if (threads < 1) threads = 1;
  if (total < kMinBytesPerThread * 2) threads = 1;
  if (threads == 1) {
    for (size_t i = 0; i < n; ++i) {
      const int64_t rows = Rows(ops[i]);
      for (int64_t r = 0; r < rows; ++r) {
        int64_t so, dof;
        RowOffsets(ops[i], r, &so, &dof);
        CopyRow(ops[i], so, dof);
      }
    }
    return;
  }
  // Tasks of about total / (4 * threads) bytes each, in row units.
  const uint64_t chunk = std::max<uint64_t>(total / (4 * threads), 64 << 10);
  std::vector<Task> tasks;
  for (size_t i = 0; i < n; ++i) {
    const int64_t rows = Rows(ops[i]);
    const uint64_t row_bytes =
        static_cast<uint64_t>(ops[i].extent[ops[i].ndim - 1]) * DTypeSize(ops[i].dst_dtype);
    const int64_t per_task = std::max<int64_t>(1, static_cast<int64_t>(chunk / std::max<uint64_t>(row_bytes, 1)));
    for (int64_t r = 0; r < rows; r += per_task) {
      tasks.push_back({static_cast<uint32_t>(i), r, std::min(rows, r + per_task)});
    }
  }
  ParallelFor(tasks.size(), threads, [&](size_t t) {
    const Task& task = tasks[t];
    const BoxCopyOp& op = ops[task.op];
    for (int64_t r = task.row_begin; r < task.row_end; ++r) {
      int64_t so, dof;
      RowOffsets(op, r, &so, &dof);
      CopyRow(op, so, dof);
    }
  });
}

}  // namespace wsync::kernels
