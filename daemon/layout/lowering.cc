#include "daemon/layout/lowering.h"

namespace wsync::layout {

void Strides(const ShardView& v, int64_t* out) {
  const Shape& s = v.spec->shape;
  if (v.strides != nullptr) {
    for (int i = 0; i < s.ndim; ++i) out[i] = v.strides[i];
    return;
  }
  int64_t acc = 1;
  for (int i = s.ndim - 1; i >= 0; --i) {
    out[i] = acc;
    acc *= s.d[i];
  }
}

int64_t Offset(const Box& b, const int64_t* strides) {
  int64_t off = 0;
  for (int i = 0; i < b.ndim; ++i) off += b.off[i] * strides[i];
  return off;
}

namespace {

// Merges dimension k into k+1 wherever both sides are contiguous across it.
void Merge(kernels::BoxCopyOp* op, bool has_src) {
  int n = 0;
  for (int k = 0; k < op->ndim; ++k) {
    if (n > 0) {
      int p = n - 1;
      bool dst_ok = op->dst_stride[p] == op->extent[k] * op->dst_stride[k];
      bool src_ok = !has_src || op->src_stride[p] == op->extent[k] * op->src_stride[k];
      if (dst_ok && src_ok) {
        op->extent[p] *= op->extent[k];
        op->dst_stride[p] = op->dst_stride[k];
        op->src_stride[p] = op->src_stride[k];
        continue;
      }
    }
    op->extent[n] = op->extent[k];
    op->src_stride[n] = op->src_stride[k];
    op->dst_stride[n] = op->dst_stride[k];
    ++n;
  }
  op->ndim = n;
}

}  // namespace

kernels::BoxCopyOp LowerFillImpl(const FillOp& f, const ShardView& dst, bool merge);

kernels::BoxCopyOp LowerCopy(const CopyOp& c, const ShardView& src, const ShardView& dst, bool merge) {
  int64_t ss[kMaxDims], ds[kMaxDims];
  Strides(src, ss);
  Strides(dst, ds);
  kernels::BoxCopyOp op;
  op.src_dtype = src.spec->dtype;
  op.dst_dtype = dst.spec->dtype;
  op.src = static_cast<const char*>(src.base) +
           Offset(c.src_box, ss) * kernels::DTypeSize(op.src_dtype);
  op.dst = static_cast<char*>(dst.base) + Offset(c.dst_box, ds) * kernels::DTypeSize(op.dst_dtype);
  // Pair the non-unit dimensions of both boxes in order.
  int n = 0;
  for (int d; (d = NthNonUnitDim(c.dst_box, n)) >= 0; ++n) {
    op.extent[n] = c.dst_box.size[d];
    op.dst_stride[n] = ds[d];
    op.src_stride[n] = ss[NthNonUnitDim(c.src_box, n)];
  }
  if (n == 0) {
    op.extent[0] = 1;
    op.src_stride[0] = op.dst_stride[0] = 1;
    n = 1;
  }
  op.ndim = n;
  if (merge) Merge(&op, true);
  return op;
}

MatrixView LowerMatrix(const CopyOp& op, const Box& box, const ShardView& view) {
  int64_t st[kMaxDims];
  Strides(view, st);
  MatrixView m;
  m.ptr = static_cast<char*>(view.base) + Offset(box, st) * kernels::DTypeSize(view.spec->dtype);
  // Non-unit canonical dimensions pair in order with non-unit box dimensions.
  int k = 0;
  for (int c = 0; c < op.canonical.ndim && c < 2; ++c) {
    if (op.canonical.size[c] == 1) continue;
    const int d = NthNonUnitDim(box, k++);
    (c == 0 ? m.row_stride : m.col_stride) = d >= 0 ? st[d] : 0;
  }
  return m;
}

kernels::LoraMergeOp LowerLoraMerge(const CopyOp& op, const LoraFactors& f, const MatrixView& w, DType w_dtype,
                                    const MatrixView& dst, DType dst_dtype, float scale) {
  const int64_t r0 = op.canonical.off[0], c0 = op.canonical.off[1];
  const size_t a_size = kernels::DTypeSize(f.a_dtype), b_size = kernels::DTypeSize(f.b_dtype);
  kernels::LoraMergeOp m;
  m.w = w.ptr;
  m.w_dtype = w_dtype;
  m.w_row_stride = w.row_stride;
  m.w_col_stride = w.col_stride;
  m.dst = dst.ptr;
  m.dst_dtype = dst_dtype;
  m.dst_row_stride = dst.row_stride;
  m.dst_col_stride = dst.col_stride;
  m.a_dtype = f.a_dtype;
  m.b_dtype = f.b_dtype;
  if (!f.transposed) {  // A [rank, in]: A[k, c0 + j]; B [out, rank]: B[r0 + i, k]
    m.a = static_cast<const char*>(f.a) + c0 * a_size;
    m.a_k_stride = f.a_cols;
    m.a_col_stride = 1;
    m.b = static_cast<const char*>(f.b) + r0 * f.b_cols * b_size;
    m.b_row_stride = f.b_cols;
    m.b_k_stride = 1;
  } else {  // A^T [in, rank]: A^T[c0 + j, k]; B^T [rank, out]: B^T[k, r0 + i]
    m.a = static_cast<const char*>(f.a) + c0 * f.a_cols * a_size;
    m.a_k_stride = 1;
    m.a_col_stride = f.a_cols;
    m.b = static_cast<const char*>(f.b) + r0 * b_size;
    m.b_row_stride = 1;
    m.b_k_stride = f.b_cols;
  }
  m.rows = op.canonical.size[0];
  m.cols = op.canonical.size[1];
  m.rank = f.rank;
  m.scale = scale;
  return m;
}

kernels::BoxCopyOp LowerBox(const Box& box, const ShardView& view) {
  FillOp f;
  f.dst_box = box;
  return LowerFillImpl(f, view, /*merge=*/false);
}

kernels::BoxCopyOp LowerFill(const FillOp& f, const ShardView& dst) { return LowerFillImpl(f, dst, true); }

kernels::BoxCopyOp LowerFillImpl(const FillOp& f, const ShardView& dst, bool merge) {
  int64_t ds[kMaxDims];
  Strides(dst, ds);
  kernels::BoxCopyOp op;
  op.src = nullptr;
  op.dst_dtype = op.src_dtype = dst.spec->dtype;
  op.dst = static_cast<char*>(dst.base) + Offset(f.dst_box, ds) * kernels::DTypeSize(op.dst_dtype);
  int n = 0;
  for (int d = 0; d < f.dst_box.ndim; ++d) {
    if (f.dst_box.size[d] == 1) continue;
    op.extent[n] = f.dst_box.size[d];
    op.dst_stride[n] = ds[d];
    ++n;
  }
  if (n == 0) {
    op.extent[0] = 1;
    op.dst_stride[0] = 1;
    n = 1;
  }
  op.ndim = n;
  if (merge) Merge(&op, false);
  return op;
}

}  // namespace wsync::layout
