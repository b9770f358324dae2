// CPU FP8 quantization (kernels/fp8.h: the reference that FP8 syncs
// and `wsyncctl convert --dtype fp8` run on the host) against memcpy of the
// bytes it reads plus writes, measured in the same run. Prints ratios; it
// asserts nothing.
//
//   bazel run -c opt //tests/bench:fp8_bench [-- --mib 512 --reps 5 --threads 2 --dtype bf16|fp32
//                                              --scaling block|channel|tensor]
//
// Syncs quantize fp32 (the piece assembled in scratch); `wsyncctl convert`
// quantizes fp32 slabs too.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/fp8.h"

namespace {

template <typename F>
double MedianSeconds(int reps, F f) {
  std::vector<double> t;
  f();  // warm up (page faults, caches)
  for (int i = 0; i < reps; ++i) {
    auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t mib = 512;
  int reps = 5, threads = 2;
  std::string dtype = "bf16", scaling = "block";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--mib") mib = std::atoll(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--dtype" && (std::string(argv[i + 1]) == "bf16" || std::string(argv[i + 1]) == "fp32")) dtype = argv[i + 1];
    else if (a == "--scaling" && (std::string(argv[i + 1]) == "block" || std::string(argv[i + 1]) == "channel" ||
                                  std::string(argv[i + 1]) == "tensor")) {
      scaling = argv[i + 1];
    } else {
      std::fprintf(stderr,
                   "usage: fp8_bench [--mib N] [--reps N] [--threads N] [--dtype bf16|fp32] "
                   "[--scaling block|channel|tensor]\n");
      return 2;
    }
  }
  // A weight of `mib` MiB in `dtype`, 4096 columns (32 blocks wide).
  const bool f32 = dtype == "fp32";
  const int64_t esize = f32 ? 4 : 2;
  const int64_t cols = 4096, rows = std::max<int64_t>(128, mib * (1 << 20) / esize / cols);
  std::vector<uint16_t> w16(f32 ? 0 : rows * cols);
  std::vector<float> w32(f32 ? rows * cols : 0);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (auto& x : w16) x = wsync::kernels::F32ToBf16(nd(rng));
  for (auto& x : w32) x = nd(rng);
  std::vector<uint8_t> q(rows * cols);
  // Scale groups: 128 x 128 blocks, rows, or the whole matrix.
  const int64_t br = scaling == "block" ? 128 : scaling == "channel" ? 1 : rows;
  const int64_t bc = scaling == "block" ? 128 : cols;
  std::vector<float> scale(((rows + br - 1) / br) * (cols / bc));
  wsync::kernels::Fp8QuantOp op;
  op.src = f32 ? static_cast<const void*>(w32.data()) : w16.data();
  op.src_dtype = f32 ? wsync::kernels::DType::kF32 : wsync::kernels::DType::kBF16;
  op.rows = rows;
  op.cols = op.src_ld = op.dst_ld = cols;
  op.dst = q.data();
  op.scale_inv = scale.data();
  op.scale_ld = cols / bc;
  op.block_rows = br;
  op.block_cols = bc;
  if (std::string err = wsync::kernels::CheckFp8QuantOps(&op, 1); !err.empty()) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 1;
  }
  const double quant = MedianSeconds(reps, [&] { wsync::kernels::QuantizeFp8Cpu(&op, 1, threads); });
  // Baseline: memcpy of the bytes quantization reads plus writes (esize
  // bytes in, one fp8 byte out per element), on one thread.
  const size_t moved = rows * cols * (esize + 1);
  std::vector<char> a(moved, 1), b(moved, 0);
  const double copy = MedianSeconds(reps, [&] { std::memcpy(b.data(), a.data(), moved); });
  std::printf("%s-scaled FP8 quantization, %s [%lld, %lld] (%.0f MiB), %d thread(s), median of %d\n",
              scaling.c_str(), dtype.c_str(),
              static_cast<long long>(rows), static_cast<long long>(cols), rows * cols * esize / 1048576.0, threads,
              reps);
  std::printf("  quantize %.1f ms (%.2f GB/s of %s read)   memcpy of read+written bytes %.1f ms   memcpy/quantize %.0f%%\n",
              quant * 1e3, rows * cols * esize / quant / 1e9, dtype.c_str(), copy * 1e3, 100.0 * copy / quant);
  return 0;
}
