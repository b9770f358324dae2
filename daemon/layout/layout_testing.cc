#include "daemon/layout/layout_testing.h"

#include <cstdlib>

#include "daemon/layout/lowering.h"
#include "kernels/box_copy.h"
#include "kernels/fp8.h"
#include "daemon/layout/fp8_checkpoint.h"

namespace wsync::layout::testing {
namespace {

// Row-major linear position -> coordinates of box `b`, as an element offset
// into a dense row-major array of shape `shape`.
int64_t DenseOffset(const Box& b, const Shape& shape, int64_t k) {
  int64_t coord[kMaxDims];
  for (int d = b.ndim - 1; d >= 0; --d) {
    coord[d] = b.off[d] + k % b.size[d];
    k /= b.size[d];
  }
  int64_t off = 0;
  for (int d = 0; d < shape.ndim; ++d) off = off * shape.d[d] + coord[d];
  return off;
}

}  // namespace

CanonicalData RandomCanonical(const ModelSpec& model, std::mt19937& rng) {
  std::uniform_int_distribution<int> m(-127, 127);
  CanonicalData data(model.size());
  for (int32_t t = 0; t < model.size(); ++t) {
    data[t].resize(model.tensor(t).shape.NumElements());
    for (float& v : data[t]) v = static_cast<float>(m(rng)) / 64.0f;
  }
  return data;
}

std::vector<uint8_t> Materialize(const ModelSpec& model, const ShardSpec& shard,
                                 const CanonicalData& data) {
  std::vector<uint8_t> out(shard.shape.NumElements() * kernels::DTypeSize(shard.dtype), 0);
  for (const Piece& p : shard.pieces) {
    const Shape& cs = model.tensor(p.tensor).shape;
    const int64_t n = p.canonical.NumElements();
    for (int64_t k = 0; k < n; ++k) {
      float v = data[p.tensor][DenseOffset(p.canonical, cs, k)];
      kernels::StoreFromF32(out.data(), shard.dtype, DenseOffset(p.shard, shard.shape, k), v);
    }
  }
  return out;
}

Buffers MaterializeAll(const ModelSpec& model, const std::vector<Endpoint>& endpoints,
                       const CanonicalData& data) {
  Buffers b(endpoints.size());
  for (size_t e = 0; e < endpoints.size(); ++e) {
    for (const ShardSpec& s : endpoints[e].shards) b[e].push_back(Materialize(model, s, data));
  }
  return b;
}

Buffers Garbage(const std::vector<Endpoint>& endpoints, uint8_t fill) {
  Buffers b(endpoints.size());
  for (size_t e = 0; e < endpoints.size(); ++e) {
    for (const ShardSpec& s : endpoints[e].shards) {
      b[e].emplace_back(s.shape.NumElements() * kernels::DTypeSize(s.dtype), fill);
    }
  }
  return b;
}

void Execute(const Plan& plan, const std::vector<Endpoint>& sources, Buffers& src,
             const std::vector<Endpoint>& targets, Buffers& dst, int threads) {
  std::vector<kernels::BoxCopyOp> ops;
  for (const FillOp& f : plan.fills) {
    ShardView v{&targets[f.dst_endpoint].shards[f.dst_shard], nullptr,
                dst[f.dst_endpoint][f.dst_shard].data()};
    ops.push_back(LowerFill(f, v));
  }
  for (const CopyOp& c : plan.ops) {
    ShardView s{&sources[c.src_endpoint].shards[c.src_shard], nullptr,
                src[c.src_endpoint][c.src_shard].data()};
    ShardView d{&targets[c.dst_endpoint].shards[c.dst_shard], nullptr,
                dst[c.dst_endpoint][c.dst_shard].data()};
    ops.push_back(LowerCopy(c, s, d));
  }
  kernels::BoxCopyCpu(ops.data(), ops.size(), threads);
}

CanonicalData ReadBack(const ModelSpec& model, const std::vector<ShardSpec>& shards,
                       const std::vector<std::vector<uint8_t>>& buffers) {
  CanonicalData data(model.size());
  for (size_t i = 0; i < shards.size(); ++i) {
    const ShardSpec& s = shards[i];
    int32_t t = s.pieces.at(0).tensor;
    data[t].resize(s.shape.NumElements());
    for (int64_t k = 0; k < s.shape.NumElements(); ++k) {
      data[t][k] = kernels::LoadAsF32(buffers[i].data(), s.dtype, k);
    }
  }
  return data;
}

CanonicalData MergeLoraNaive(const ModelSpec& model, const CanonicalData& data,
                             const std::vector<NamedAdapter>& adapters) {
  CanonicalData out = data;
  for (const NamedAdapter& ad : adapters) {
    const int32_t w = model.Find(ad.base), a = model.Find(ad.a), b = model.Find(ad.b);
    const int64_t rows = model.tensor(w).shape.d[0], cols = model.tensor(w).shape.d[1];
    const int64_t rank = model.tensor(a).shape.d[0];
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        double sum = 0;
        for (int64_t k = 0; k < rank; ++k) sum += double(data[b][i * rank + k]) * double(data[a][k * cols + j]);
        out[w][i * cols + j] = static_cast<float>(double(data[w][i * cols + j]) + ad.scaling * sum);
      }
    }
  }
  return out;
}

void Fp8Reference(const ModelSpec& model, const CanonicalData& data, int32_t tensor, std::vector<uint8_t>* q,
                  std::vector<float>* scales, int64_t block_rows, int64_t block_cols) {
  const Shape shape = model.tensor(tensor).shape;
  const Shape ss = Shape::Of({(shape.d[0] + block_rows - 1) / block_rows, (shape.d[1] + block_cols - 1) / block_cols});
  q->assign(shape.NumElements(), 0);
  scales->assign(ss.NumElements(), 0);
  kernels::Fp8QuantOp op;
  op.src = data[tensor].data();
  op.src_dtype = DType::kF32;
  op.rows = shape.d[0];
  op.cols = op.src_ld = op.dst_ld = shape.d[1];
  op.dst = q->data();
  op.scale_inv = scales->data();
  op.scale_ld = ss.d[1];
  op.block_rows = block_rows;
  op.block_cols = block_cols;
  const std::string err = kernels::QuantizeFp8Cpu(&op, 1, 1);
  if (!err.empty()) std::abort();  // test data is finite
}

}  // namespace wsync::layout::testing
