// CPU box-copy benchmark: the host data path against memcpy of the same
// bytes, measured in the same run. Prints ratios; it asserts nothing.
//
//   bazel run -c opt //tests/bench:box_copy_bench [-- --mib 256 --reps 7]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <string>
#include <vector>

#include "kernels/box_copy.h"

using wsync::kernels::BoxCopyCpu;
using wsync::kernels::BoxCopyOp;
using wsync::kernels::DType;

namespace {

double Seconds(const std::chrono::steady_clock::time_point& a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

template <typename F>
double Median(int reps, F f) {
  std::vector<double> t;
  f();  // warm up (page faults, caches)
  for (int i = 0; i < reps; ++i) {
    auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(Seconds(start));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// A regroup-like batch: `rows` rows of `run` bytes, taken as column blocks of
// a wider source matrix (so source rows are strided), written densely.
std::vector<BoxCopyOp> ColumnBlocks(char* src, char* dst, size_t bytes, size_t run, DType st,
                                    DType dt, int blocks) {
  std::vector<BoxCopyOp> ops;
  const int ss = wsync::kernels::DTypeSize(st), ds = wsync::kernels::DTypeSize(dt);
  const int64_t run_elems = run / ds;
  const int64_t src_row = run_elems * blocks;  // elements per source row
  const int64_t rows = bytes / run / blocks;
  for (int b = 0; b < blocks; ++b) {
    BoxCopyOp op;
    op.src = src + b * run_elems * ss;
    op.dst = dst + b * rows * run_elems * ds;
    op.src_dtype = st;
    op.dst_dtype = dt;
    op.ndim = 2;
    op.extent[0] = rows;
    op.extent[1] = run_elems;
    op.src_stride[0] = src_row;
    op.src_stride[1] = 1;
    op.dst_stride[0] = run_elems;
    op.dst_stride[1] = 1;
    ops.push_back(op);
  }
  return ops;
}

}  // namespace

// Median of per-repetition ratios, each repetition timing the baseline and
// the candidate back to back, so that the machine's drift cancels out.
struct Paired {
  double ratio;      // baseline time / candidate time (1.0 = as fast as memcpy)
  double candidate;  // median candidate seconds
};

template <typename Base, typename Cand>
Paired Compare(int reps, Base base, Cand cand) {
  base();
  cand();
  std::vector<double> ratios, times;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    base();
    double tb = Seconds(a);
    auto b = std::chrono::steady_clock::now();
    cand();
    double tc = Seconds(b);
    ratios.push_back(tb / tc);
    times.push_back(tc);
  }
  std::sort(ratios.begin(), ratios.end());
  std::sort(times.begin(), times.end());
  return {ratios[reps / 2], times[reps / 2]};
}

int main(int argc, char** argv) {
  size_t mib = 256;
  int reps = 9;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--mib") mib = std::strtoul(argv[i + 1], nullptr, 10);
    if (std::string(argv[i]) == "--reps") reps = std::atoi(argv[i + 1]);
  }
  const size_t bytes = mib << 20;
  std::vector<char> src(bytes * 2), dst(bytes * 2);
  std::memset(src.data(), 1, src.size());
  std::memset(dst.data(), 2, dst.size());
  auto memcpy1 = [&] { std::memcpy(dst.data(), src.data(), bytes); };
  auto gbps = [&](double t) { return bytes / t / 1e9; };

  double t_memcpy = Median(reps, memcpy1);
  std::printf("box_copy_bench: %zu MiB per run; medians of %d paired runs\n", mib, reps);
  std::printf("%-46s %6.2f GB/s\n", "memcpy, 1 thread (baseline)", gbps(t_memcpy));

  struct Case {
    const char* name;
    size_t run;
    int blocks;
  };
  const Case cases[] = {{"bf16 regroup, 4 KiB runs, 8 column blocks", 4096, 8},
                        {"bf16 regroup, 16 KiB runs, 4 column blocks", 16384, 4},
                        {"bf16 regroup, 64 KiB runs, 2 column blocks", 65536, 2}};
  for (const Case& c : cases) {
    auto ops = ColumnBlocks(src.data(), dst.data(), bytes, c.run, DType::kBF16, DType::kBF16, c.blocks);
    Paired one = Compare(reps, memcpy1, [&] { BoxCopyCpu(ops.data(), ops.size(), 1); });
    Paired two = Compare(reps, [&] { BoxCopyCpu(ops.data(), ops.size(), 1); },
                         [&] { BoxCopyCpu(ops.data(), ops.size(), 2); });
    std::printf("%-46s %6.2f GB/s  %5.1f%% of memcpy; 2 threads %.2fx one\n", c.name,
                gbps(one.candidate), 100 * one.ratio, two.ratio);
  }
  {
    // Casting: bytes counted as written (the bf16 output), like memcpy's.
    auto ops = ColumnBlocks(src.data(), dst.data(), bytes, 8192, DType::kF32, DType::kBF16, 4);
    Paired one = Compare(reps, memcpy1, [&] { BoxCopyCpu(ops.data(), ops.size(), 1); });
    Paired two = Compare(reps, [&] { BoxCopyCpu(ops.data(), ops.size(), 1); },
                         [&] { BoxCopyCpu(ops.data(), ops.size(), 2); });
    std::printf("%-46s %6.2f GB/s written, %5.1f%% of memcpy; 2 threads %.2fx one\n",
                "fp32 -> bf16 cast, 8 KiB output runs", gbps(one.candidate), 100 * one.ratio,
                two.ratio);
  }
  Paired m2 = Compare(reps, memcpy1, [&] {
    std::thread other([&] { std::memcpy(dst.data() + bytes / 2, src.data() + bytes / 2, bytes / 2); });
    std::memcpy(dst.data(), src.data(), bytes / 2);
    other.join();
  });
  std::printf("%-46s %6.2f GB/s (%.2fx one thread: this machine's ceiling for 2 threads)\n",
              "memcpy split over 2 threads", gbps(m2.candidate), m2.ratio);
  return 0;
}
