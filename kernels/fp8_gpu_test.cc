// GPU test: the CUDA FP8 quantization against QuantizeFp8Cpu, byte for byte
// and scale for scale, on several ops of every source dtype and scaling
// (128 x 128 blocks with partial edges, per tensor, per channel, strided
// rows), and the non-finite element both report.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda_status.h"
#include "kernels/cuda_testing.h"
#include "kernels/fp8.h"
#include "kernels/fp8_cuda.h"

namespace wsync::kernels {
namespace {

struct Batch {
  std::vector<uint8_t> src;  // every op's source, back to back
  std::vector<Fp8QuantOp> ops;  // offsets into src / q / s in the pointers
  size_t q_bytes = 0, s_count = 0;
};

Batch MakeBatch(std::mt19937& rng, float poison) {
  Batch b;
  struct Shape {
    int64_t rows, cols, ld, br, bc;
    DType dt;
  };
  const Shape shapes[] = {{300, 260, 260, 128, 128, DType::kBF16}, {256, 512, 520, 128, 128, DType::kF32},
                          {77, 129, 130, 77, 129, DType::kF16},   {64, 200, 200, 1, 200, DType::kBF16},
                          {1, 1, 1, 128, 128, DType::kF32},       {129, 1, 3, 128, 128, DType::kBF16}};
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (const Shape& sh : shapes) {
    Fp8QuantOp op;
    op.src_dtype = sh.dt;
    op.rows = sh.rows;
    op.cols = sh.cols;
    op.src_ld = sh.ld;
    op.dst_ld = sh.cols + 3;
    op.block_rows = sh.br;
    op.block_cols = sh.bc;
    op.scale_ld = (sh.cols + sh.bc - 1) / sh.bc;
    const int esz = DTypeSize(sh.dt);
    op.src = reinterpret_cast<const void*>(b.src.size());
    b.src.resize(b.src.size() + sh.rows * sh.ld * esz + 16, 0);
    for (int64_t i = 0; i < sh.rows * sh.ld; ++i) {
      const float v = normal(rng) * (i % 101 == 0 ? 40.0f : 1.0f);
      uint8_t* p = b.src.data() + reinterpret_cast<size_t>(op.src) + i * esz;
      if (sh.dt == DType::kF32) std::memcpy(p, &v, 4);
      uint16_t h = sh.dt == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
      if (sh.dt != DType::kF32) std::memcpy(p, &h, 2);
    }
    op.dst = reinterpret_cast<uint8_t*>(b.q_bytes);
    b.q_bytes += sh.rows * op.dst_ld;
    op.scale_inv = reinterpret_cast<float*>(b.s_count * 4);
    b.s_count += ((sh.rows + sh.br - 1) / sh.br) * op.scale_ld;
    b.ops.push_back(op);
  }
  if (poison != 0) {  // op 1, element (200, 300)
    float* p = reinterpret_cast<float*>(b.src.data() + reinterpret_cast<size_t>(b.ops[1].src)) + 200 * 520 + 300;
    *p = poison;
  }
  return b;
}

// The batch's ops over real buffers at `src`, `q` and `s`.
std::vector<Fp8QuantOp> Place(const Batch& b, const void* src, uint8_t* q, float* s) {
  std::vector<Fp8QuantOp> ops = b.ops;
  for (Fp8QuantOp& op : ops) {
    op.src = static_cast<const uint8_t*>(src) + reinterpret_cast<size_t>(op.src);
    op.dst = q + reinterpret_cast<size_t>(op.dst);
    op.scale_inv = s + reinterpret_cast<size_t>(op.scale_inv) / 4;
  }
  return ops;
}

TEST_CASE("CUDA FP8 quantization equals the CPU reference byte for byte") {
  for (float poison : {0.0f, INFINITY}) {
    std::mt19937 rng(11);
    Batch b = MakeBatch(rng, poison);
    std::vector<uint8_t> cq(b.q_bytes, 0xaa);
    std::vector<float> cs(b.s_count, -1.0f);
    std::vector<Fp8QuantOp> cops = Place(b, b.src.data(), cq.data(), cs.data());
    REQUIRE(CheckFp8QuantOps(cops.data(), cops.size()).empty());
    const std::string cpu_error = QuantizeFp8Cpu(cops.data(), cops.size(), 2);

    uint8_t* dsrc = ToDevice(b.src);
    uint8_t* dq = ToDevice(std::vector<uint8_t>(b.q_bytes, 0xaa));
    float* ds = ToDevice(std::vector<float>(b.s_count, -1.0f));
    std::vector<Fp8QuantOp> gops = Place(b, dsrc, dq, ds);
    const std::vector<Fp8Block> blocks = MakeFp8Blocks(gops.data(), gops.size());
    Fp8QuantOp* dops = ToDevice(gops);
    Fp8Block* dblocks = ToDevice(blocks);
    unsigned long long* dbad = ToDevice(std::vector<unsigned long long>{kFp8AllFinite});
    CUDA_REQUIRE(LaunchQuantizeFp8(dops, dblocks, static_cast<int64_t>(blocks.size()), dbad, nullptr));
    CUDA_REQUIRE(cudaDeviceSynchronize());
    const uint64_t bad = ToHost(dbad, 1)[0];
    if (poison == 0) {
      REQUIRE(cpu_error.empty());
      CHECK(bad == kFp8AllFinite);
      CHECK(ToHost(dq, b.q_bytes) == cq);
      CHECK(ToHost(ds, b.s_count) == cs);
    } else {
      REQUIRE(bad != kFp8AllFinite);
      Fp8Element e;
      REQUIRE(Fp8BadElement(gops.data(), blocks, bad, &e));
      CHECK(e.op == 1);
      CHECK(e.row == 200);
      CHECK(e.col == 300);
      CHECK(Fp8BadMessage(e, poison) == cpu_error);
    }
    for (void* p : {static_cast<void*>(dsrc), static_cast<void*>(dq), static_cast<void*>(ds),
                    static_cast<void*>(dops), static_cast<void*>(dblocks), static_cast<void*>(dbad)}) {
      CUDA_REQUIRE(cudaFree(p));
    }
  }
}

}  // namespace
}  // namespace wsync::kernels
