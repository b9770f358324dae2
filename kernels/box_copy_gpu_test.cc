// GPU tests: the CUDA box copy, box digest and LoRA merge against their CPU
// references, bit for bit, on randomized batches (every dtype pair, odd
// sizes, misaligned starts, up to 4-d boxes, zero fills, strided rows).
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/box_copy.h"
#include "kernels/box_copy_cuda.h"
#include "kernels/cuda_status.h"
#include "kernels/cuda_testing.h"
#include "kernels/device_info.h"
#include "kernels/lora.h"

namespace wsync::kernels {
namespace {

// Host ops over (src, dst) host buffers -> the same ops over device copies.
std::vector<BoxCopyOp> Remap(std::vector<BoxCopyOp> ops, const void* hs, const void* ds, const void* hd,
                             void* dd) {
  for (BoxCopyOp& op : ops) {
    if (op.src) op.src = static_cast<const char*>(ds) + (static_cast<const char*>(op.src) - static_cast<const char*>(hs));
    op.dst = static_cast<char*>(dd) + (static_cast<char*>(op.dst) - static_cast<const char*>(hd));
  }
  return ops;
}

std::vector<BoxCopyOp> RandomOps(std::mt19937& rng, DType st, DType dt, const std::vector<uint8_t>& src,
                                 std::vector<uint8_t>& dst) {
  const int64_t shape[4] = {5, 7, 9, 33};
  std::vector<BoxCopyOp> ops;
  int64_t cursor = 1;  // misaligned start
  for (int i = 0; i < 60; ++i) {
    BoxCopyOp op;
    op.ndim = 1 + static_cast<int>(rng() % 4);
    op.src_dtype = st;
    op.dst_dtype = dt;
    int64_t off = 0, stride = 1, elems = 1;
    for (int d = op.ndim - 1; d >= 0; --d) {
      int sd = 4 - op.ndim + d;
      op.extent[d] = 1 + static_cast<int64_t>(rng() % shape[sd]);
      off += static_cast<int64_t>(rng() % (shape[sd] - op.extent[d] + 1)) * stride;
      op.src_stride[d] = stride;
      stride *= shape[sd];
      elems *= op.extent[d];
    }
    int64_t ds = 1;
    bool transpose = rng() % 3 == 0;
    for (int k = 0; k < op.ndim; ++k) {
      int d = transpose ? k : op.ndim - 1 - k;
      op.dst_stride[d] = ds;
      ds *= op.extent[d];
    }
    if ((cursor + elems) * DTypeSize(dt) > static_cast<int64_t>(dst.size())) break;
    op.src = rng() % 8 == 0 ? nullptr : src.data() + off * DTypeSize(st);
    op.dst = dst.data() + cursor * DTypeSize(dt);
    ops.push_back(op);
    cursor += elems + static_cast<int64_t>(rng() % 3);
  }
  return ops;
}

TEST_CASE("a GPU is visible", "[gpu]") {
  auto gpus = ListGpus();
  INFO(gpus.status().ToString());
  REQUIRE(gpus.ok());
  REQUIRE(!gpus->empty());
  for (const GpuInfo& g : *gpus) {
    INFO(Describe(g));
    CHECK(g.uuid.rfind("GPU-", 0) == 0);
  }
}

TEST_CASE("GPU box copy and digest match the CPU references bit for bit", "[gpu]") {
  std::mt19937 rng(77);
  const DType types[] = {DType::kF32, DType::kBF16, DType::kF16};
  for (DType st : types) {
    for (DType dt : types) {
      std::vector<uint8_t> src(5 * 7 * 9 * 33 * 4);
      for (auto& b : src) b = static_cast<uint8_t>(rng());
      std::vector<uint8_t> want(1 << 18, 0x5a), got(1 << 18, 0x5a);
      auto ops = RandomOps(rng, st, dt, src, want);
      REQUIRE(CheckBoxCopyOps(ops.data(), ops.size()).empty());
      BoxCopyCpu(ops.data(), ops.size(), 1);
      std::vector<uint64_t> base(ops.size());
      BoxPayloadWords(ops.data(), ops.size(), 3, base.data());
      DigestSums cpu = BoxDigestCpu(ops.data(), ops.size(), base.data(), 1);

      for (uint64_t tile_bytes : {256, 16}) {  // 16: rows cut into column tiles
        std::fill(got.begin(), got.end(), 0x5a);
        uint8_t* d_src = ToDevice(src);
        uint8_t* d_dst = ToDevice(got);
        auto dops = Remap(ops, src.data(), d_src, want.data(), d_dst);
        auto tiles = MakeBoxTiles(dops.data(), dops.size(), tile_bytes);
        BoxCopyOp* d_ops = ToDevice(dops);
        BoxTile* d_tiles = ToDevice(tiles);
        uint64_t* d_base = ToDevice(base);
        DigestSums* d_sums = ToDevice(std::vector<DigestSums>(1));
        CUDA_REQUIRE(LaunchBoxCopy(d_ops, d_tiles, static_cast<int>(tiles.size()), nullptr));
        CUDA_REQUIRE(LaunchBoxDigest(d_ops, d_base, d_tiles, static_cast<int>(tiles.size()), d_sums, nullptr));
        CUDA_REQUIRE(cudaDeviceSynchronize());
        CUDA_REQUIRE(cudaMemcpy(got.data(), d_dst, got.size(), cudaMemcpyDeviceToHost));
        DigestSums gpu;
        CUDA_REQUIRE(cudaMemcpy(&gpu, d_sums, sizeof(gpu), cudaMemcpyDeviceToHost));
        INFO(DTypeName(st) << " -> " << DTypeName(dt) << ", tiles of " << tile_bytes << " bytes");
        CHECK(got == want);
        CHECK(gpu.s1 == cpu.s1);
        CHECK(gpu.s2 == cpu.s2);
        // The fused kernel: the same bytes and the same sums in one launch.
        CUDA_REQUIRE(cudaMemcpy(d_dst, std::vector<uint8_t>(got.size(), 0x5a).data(), got.size(),
                                cudaMemcpyHostToDevice));
        CUDA_REQUIRE(cudaMemset(d_sums, 0, sizeof(DigestSums)));
        CUDA_REQUIRE(LaunchBoxCopyDigest(d_ops, d_base, d_tiles, static_cast<int>(tiles.size()), d_sums, nullptr));
        CUDA_REQUIRE(cudaDeviceSynchronize());
        CUDA_REQUIRE(cudaMemcpy(got.data(), d_dst, got.size(), cudaMemcpyDeviceToHost));
        CUDA_REQUIRE(cudaMemcpy(&gpu, d_sums, sizeof(gpu), cudaMemcpyDeviceToHost));
        CHECK(got == want);
        CHECK(gpu.s1 == cpu.s1);
        CHECK(gpu.s2 == cpu.s2);
        for (void* p : {static_cast<void*>(d_src), static_cast<void*>(d_dst), static_cast<void*>(d_ops),
                        static_cast<void*>(d_tiles), static_cast<void*>(d_base), static_cast<void*>(d_sums)}) {
          CUDA_REQUIRE(cudaFree(p));
        }
      }
    }
  }
}

TEST_CASE("GPU LoRA merge (exact kernel) matches the CPU reference bit for bit", "[gpu]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  for (int64_t rank : {1, 8, 16, 64, 128}) {
    const int64_t out = 67, in = 131;
    std::vector<float> w(out * in), a(rank * in), b(out * rank);
    for (float& x : w) x = nd(rng);
    for (float& x : a) x = nd(rng);
    for (float& x : b) x = nd(rng);
    std::vector<uint16_t> want(out * in), got(out * in);
    LoraMergeOp op;
    op.w = w.data();
    op.w_row_stride = in;
    op.a = a.data();
    op.a_k_stride = in;
    op.b = b.data();
    op.b_row_stride = rank;
    op.dst = want.data();
    op.dst_dtype = DType::kBF16;
    op.dst_row_stride = in;
    op.rows = out;
    op.cols = in;
    op.rank = rank;
    op.scale = 2.0f / rank;
    LoraMergeCpu(&op, 1, 1);
    float* dw = ToDevice(w);
    float* da = ToDevice(a);
    float* db = ToDevice(b);
    uint16_t* dd = ToDevice(got);
    LoraMergeOp dop = op;
    dop.w = dw;
    dop.a = da;
    dop.b = db;
    dop.dst = dd;
    LoraMergeOp* d_ops = ToDevice(std::vector<LoraMergeOp>{dop});
    CUDA_REQUIRE(LaunchLoraMerge(d_ops, 1, out, in, LoraMath::kExact, nullptr));
    CUDA_REQUIRE(cudaDeviceSynchronize());
    CUDA_REQUIRE(cudaMemcpy(got.data(), dd, got.size() * 2, cudaMemcpyDeviceToHost));
    INFO("rank " << rank);
    CHECK(got == want);
    for (void* p : {static_cast<void*>(dw), static_cast<void*>(da), static_cast<void*>(db),
                    static_cast<void*>(dd), static_cast<void*>(d_ops)}) {
      CUDA_REQUIRE(cudaFree(p));
    }
  }
}

// The tensor-core kernel against a double-precision reference, within the
// bound stated for LoraMath::kTensorCore: both conventions, in place and
// out of place, odd shapes that leave partial 64 x 64 tiles and partial
// 32-rank chunks, unmerge (negative scale).
TEST_CASE("GPU LoRA merge (tensor cores) stays within its stated bound", "[gpu]") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t rank : {8, 33, 64, 128}) {
    for (bool peft : {true, false}) {
      for (bool in_place : {false, true}) {
        const int64_t out = 130, in = 97;
        std::vector<float> w(out * in), a(rank * in), b(out * rank);
        for (float& x : w) x = nd(rng);
        for (float& x : a) x = nd(rng) * 0.1f;
        for (float& x : b) x = nd(rng);
        LoraMergeOp op;
        op.w_row_stride = in;
        op.dst_row_stride = in;
        if (peft) {  // A [rank, in], B [out, rank]
          op.a_k_stride = in;
          op.a_col_stride = 1;
          op.b_row_stride = rank;
          op.b_k_stride = 1;
        } else {  // left [in, rank] = A^T, right [rank, out] = B^T
          op.a_k_stride = 1;
          op.a_col_stride = rank;
          op.b_row_stride = 1;
          op.b_k_stride = out;
        }
        op.rows = out;
        op.cols = in;
        op.rank = rank;
        op.scale = (in_place ? -16.0f : 16.0f) / rank;
        float* dw = ToDevice(w);
        float* da = ToDevice(a);
        float* db = ToDevice(b);
        float* dd = in_place ? dw : ToDevice(std::vector<float>(out * in, 0.0f));
        LoraMergeOp dop = op;
        dop.w = dw;
        dop.a = da;
        dop.b = db;
        dop.dst = dd;
        LoraMergeOp* d_ops = ToDevice(std::vector<LoraMergeOp>{dop});
        CUDA_REQUIRE(LaunchLoraMerge(d_ops, 1, out, in, LoraMath::kTensorCore, nullptr));
        CUDA_REQUIRE(cudaDeviceSynchronize());
        std::vector<float> got(out * in);
        CUDA_REQUIRE(cudaMemcpy(got.data(), dd, got.size() * 4, cudaMemcpyDeviceToHost));
        int bad = 0;
        for (int64_t r = 0; r < out; ++r) {
          for (int64_t c = 0; c < in; ++c) {
            double exact = 0, mag = 0;
            for (int64_t k = 0; k < rank; ++k) {
              const double bv = b[r * op.b_row_stride + k * op.b_k_stride];
              const double av = a[k * op.a_k_stride + c * op.a_col_stride];
              exact += bv * av;
              mag += std::fabs(bv * av);
            }
            const double wv = w[r * in + c];
            exact = wv + double(op.scale) * exact;
            const double bound = std::ldexp(std::fabs(exact), -24) + std::ldexp(std::fabs(wv), -22) +
                                 (rank + 4) * std::ldexp(std::fabs(double(op.scale)) * mag, -21);
            if (std::fabs(got[r * in + c] - exact) > bound && bad++ < 5) {
              UNSCOPED_INFO("rank " << rank << (peft ? " peft" : " deepspeed") << " [" << r << "," << c
                                    << "]: got " << got[r * in + c] << ", exact " << exact << ", bound " << bound);
            }
          }
        }
        INFO("rank " << rank << (peft ? " peft" : " deepspeed") << (in_place ? " in place" : ""));
        CHECK(bad == 0);
        for (void* p : {static_cast<void*>(dw), static_cast<void*>(da), static_cast<void*>(db),
                        static_cast<void*>(d_ops)}) {
          CUDA_REQUIRE(cudaFree(p));
        }
        if (!in_place) CUDA_REQUIRE(cudaFree(dd));
      }
    }
  }
}

}  // namespace
}  // namespace wsync::kernels
