// GPU benchmarks, as ratios against baselines measured in the same run:
//   1. the batched box copy kernel, alone and with the digest fused in (as
//      syncs run it), against cudaMemcpy D2D of the same bytes;
//   2. LoRA merge (r = 8, 16, 64, 128) against D2D over W's bytes and
//      against cuBLASLt computing D = s * B @ A + W;
//   3. colocated syncs of Llama-2-7B shapes (bf16) through a daemon in this
//      process, between a trainer process and a generator process on this
//      GPU: megatron TP=1 -> vllm TP=1 and TP=2 -> TP=1, staged and in place
//      (p50 of the Sync RPC, registration excluded), against one D2D copy
//      of the model's bytes.
//
//   bazel run -c opt //tests/bench:gpu_bench [-- --quick]
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/recipe.h"
#include "daemon/server/server.h"
#include "kernels/box_copy_cuda.h"
#include "kernels/device_info.h"
#include "tests/testing/gpu_child.h"
#include "tests/testing/model_proto.h"

namespace wsync {
namespace {

#define CK(expr)                                                                     \
  do {                                                                               \
    cudaError_t _e = (expr);                                                         \
    if (_e != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(_e));        \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)
#define CKL(expr)                                                                    \
  do {                                                                               \
    cublasStatus_t _s = (expr);                                                      \
    if (_s != CUBLAS_STATUS_SUCCESS) {                                               \
      std::fprintf(stderr, "%s failed: %d\n", #expr, static_cast<int>(_s));          \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

// Median milliseconds of `reps` runs of fn on the default stream.
template <typename F>
double TimeMs(F fn, int reps = 20) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  fn();  // warm up
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a));
    fn();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return t[t.size() / 2];
}

template <typename T>
T* Upload(const std::vector<T>& v) {
  void* p;
  CK(cudaMalloc(&p, std::max<size_t>(16, v.size() * sizeof(T))));
  CK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return static_cast<T*>(p);
}

void BoxCopyBench() {
  std::printf("\n== box copy kernel vs cudaMemcpy D2D (same bytes)\n");
  std::printf("%-44s %10s %10s %8s %12s %8s\n", "case", "kernel ms", "D2D ms", "ratio", "+digest ms", "ratio");
  const int64_t rows = 4096, cols = 4096;
  struct Case {
    const char* name;
    kernels::DType st, dt;
    int64_t box_rows;  // rows per box: the source is regrouped in slices
  };
  for (const Case& c : {Case{"bf16 -> bf16, 64 boxes of 64 x 4096 (x16)", kernels::DType::kBF16, kernels::DType::kBF16, 64},
                        Case{"bf16 -> bf16, 4096 boxes of 1 x 4096 (x16)", kernels::DType::kBF16, kernels::DType::kBF16, 1},
                        Case{"fp32 -> bf16, 64 boxes of 64 x 4096 (x16)", kernels::DType::kF32, kernels::DType::kBF16, 64}}) {
    const int copies = 16;  // 16 tensors of 4096 x 4096: 512 MiB of bf16
    const size_t ssz = kernels::DTypeSize(c.st), dsz = kernels::DTypeSize(c.dt);
    char *src, *dst;
    CK(cudaMalloc(&src, copies * rows * cols * ssz));
    CK(cudaMalloc(&dst, copies * rows * cols * dsz));
    CK(cudaMemset(src, 0x3c, copies * rows * cols * ssz));
    std::vector<kernels::BoxCopyOp> ops;
    for (int k = 0; k < copies; ++k) {
      for (int64_t r = 0; r < rows; r += c.box_rows) {
        // Interleaved regroup: box j of the source lands at the mirrored row.
        kernels::BoxCopyOp op;
        op.src = src + (k * rows * cols + r * cols) * ssz;
        op.dst = dst + (k * rows * cols + (rows - c.box_rows - r) * cols) * dsz;
        op.src_dtype = c.st;
        op.dst_dtype = c.dt;
        op.ndim = 2;
        op.extent[0] = c.box_rows;
        op.extent[1] = cols;
        op.src_stride[0] = op.dst_stride[0] = cols;
        op.src_stride[1] = op.dst_stride[1] = 1;
        ops.push_back(op);
      }
    }
    auto tiles = kernels::MakeBoxTiles(ops.data(), ops.size());
    auto* d_ops = Upload(ops);
    auto* d_tiles = Upload(tiles);
    const double k = TimeMs([&] { CK(kernels::LaunchBoxCopy(d_ops, d_tiles, static_cast<int>(tiles.size()), nullptr)); });
    // The same copy with the sync's digest fused in (what a sync runs).
    std::vector<uint64_t> base(ops.size());
    kernels::BoxPayloadWords(ops.data(), ops.size(), 0, base.data());
    auto* d_base = Upload(base);
    auto* d_sums = Upload(std::vector<kernels::DigestSums>(1));
    const double kd = TimeMs([&] {
      CK(kernels::LaunchBoxCopyDigest(d_ops, d_base, d_tiles, static_cast<int>(tiles.size()), d_sums, nullptr));
    });
    // Baseline: D2D moving the bytes the kernel reads + writes (a D2D copy
    // of n bytes reads n and writes n).
    const size_t moved = copies * rows * cols * (ssz + dsz) / 2;
    char *a, *b;
    CK(cudaMalloc(&a, moved));
    CK(cudaMalloc(&b, moved));
    const double d = TimeMs([&] { CK(cudaMemcpyAsync(b, a, moved, cudaMemcpyDeviceToDevice)); });
    std::printf("%-44s %10.3f %10.3f %7.0f%% %12.3f %7.0f%%\n", c.name, k, d, 100.0 * d / k, kd, 100.0 * d / kd);
    for (void* p : {static_cast<void*>(src), static_cast<void*>(dst), static_cast<void*>(d_ops),
                    static_cast<void*>(d_tiles), static_cast<void*>(a), static_cast<void*>(b),
                    static_cast<void*>(d_base), static_cast<void*>(d_sums)}) {
      CK(cudaFree(p));
    }
  }
}

void LoraBench() {
  std::printf("\n== LoRA merge, W 4096 x 4096 bf16 -> bf16, A/B fp32 (as syncs gather them)\n");
  std::printf("%-6s %-12s %10s %10s %8s %12s %8s\n", "rank", "kernel", "merge ms", "D2D(W) ms", "vs D2D",
              "cuBLASLt ms", "speedup");
  const int64_t out = 4096, in = 4096;
  uint16_t *w, *dst, *a16, *b16;
  float *a, *b;
  CK(cudaMalloc(&w, out * in * 2));
  CK(cudaMalloc(&dst, out * in * 2));
  CK(cudaMemset(w, 0x3c, out * in * 2));
  const double d2d = TimeMs([&] { CK(cudaMemcpyAsync(dst, w, out * in * 2, cudaMemcpyDeviceToDevice)); });
  cublasLtHandle_t lt;
  CKL(cublasLtCreate(&lt));
  void* ws;
  const size_t ws_size = 32 << 20;
  CK(cudaMalloc(&ws, ws_size));
  for (int64_t r : {8, 16, 64, 128}) {
    CK(cudaMalloc(&a, r * in * 4));
    CK(cudaMalloc(&b, out * r * 4));
    CK(cudaMalloc(&a16, r * in * 2));
    CK(cudaMalloc(&b16, out * r * 2));
    CK(cudaMemset(a, 0, r * in * 4));
    CK(cudaMemset(b, 0, out * r * 4));
    CK(cudaMemset(a16, 0, r * in * 2));
    CK(cudaMemset(b16, 0, out * r * 2));
    kernels::LoraMergeOp op;
    op.w = w;
    op.w_dtype = kernels::DType::kBF16;
    op.w_row_stride = in;
    op.a = a;
    op.a_k_stride = in;
    op.b = b;
    op.b_row_stride = r;
    op.dst = dst;
    op.dst_dtype = kernels::DType::kBF16;
    op.dst_row_stride = in;
    op.rows = out;
    op.cols = in;
    op.rank = r;
    op.scale = 2.0f / r;
    auto* d_op = Upload(std::vector<kernels::LoraMergeOp>{op});
    const kernels::LoraMath math = kernels::DefaultLoraMath(r);
    const double k = TimeMs([&] { CK(kernels::LaunchLoraMerge(d_op, 1, out, in, math, nullptr)); });
    // cuBLASLt, column-major view of the row-major tensors:
    // D^T (in x out) = s * A^T (in x r) @ B^T (r x out) + W^T, bf16 in and out.
    cublasLtMatmulDesc_t desc;
    CKL(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasLtMatrixLayout_t la, lb, lc;
    CKL(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, in, r, in));
    CKL(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, r, out, r));
    CKL(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, in, out, in));
    cublasLtMatmulPreference_t pref;
    CKL(cublasLtMatmulPreferenceCreate(&pref));
    CKL(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_size, sizeof(ws_size)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    CKL(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &heur, &found));
    const float alpha = 2.0f / r, beta = 1.0f;
    double blas = -1;
    if (found > 0) {
      blas = TimeMs([&] {
        CKL(cublasLtMatmul(lt, desc, &alpha, a16, la, b16, lb, &beta, w, lc, dst, lc, &heur.algo, ws, ws_size, nullptr));
      });
    }
    std::printf("%-6lld %-12s %10.3f %10.3f %7.0f%% %12.3f %7.2fx\n", static_cast<long long>(r),
                math == kernels::LoraMath::kTensorCore ? "tensor-core" : "exact", k, d2d, 100.0 * d2d / k, blas,
                blas > 0 ? blas / k : 0.0);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
    for (void* p : {static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(a16), static_cast<void*>(b16),
                    static_cast<void*>(d_op)}) {
      CK(cudaFree(p));
    }
  }
  cublasLtDestroy(lt);
  for (void* p : {static_cast<void*>(w), static_cast<void*>(dst), ws}) CK(cudaFree(p));
}

constexpr char kLlama2_7b[] =
    R"({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
        "intermediate_size": 11008, "vocab_size": 32000, "num_hidden_layers": 32})";

// "trainer-tp1", "trainer-tp2" (megatron, bf16) and "gen-staged",
// "gen-in_place" (vllm TP=1, bf16), of model "llama7b" (or the 2-layer
// "llama7b-quick" with --quick).
bool g_quick = false;

testing::GpuScenario Scenario(const std::string& name, uint64_t) {
  testing::GpuScenario sc;
  auto config = layout::ParseHfConfig(kLlama2_7b);
  if (!config.ok()) std::abort();
  if (g_quick) config->num_hidden_layers = 2;
  const bool trainer = name.rfind("trainer", 0) == 0;
  const int tp = name == "trainer-tp2" ? 2 : 1;
  auto tensors = layout::CanonicalTensors(*config, layout::DType::kBF16);
  auto spec = layout::ModelSpec::Create(*tensors);
  if (trainer) {
    v1::RegisterModelRequest m = testing::ModelRequest("llama7b", *config);
    sc.model = m;
  }
  for (int r = 0; r < tp; ++r) {
    layout::RankCoords rc;
    rc.tp = r;
    rc.tp_size = tp;
    const std::string recipe = trainer ? "megatron" : "vllm";
    auto shards = layout::BuildShards(*spec, *config, recipe, {}, rc, layout::DType::kBF16);
    if (!shards.ok()) {
      std::fprintf(stderr, "%s\n", shards.status().ToString().c_str());
      std::abort();
    }
    testing::GpuRank rank;
    rank.request = testing::RankRequest("llama7b", name, r, tp);
    auto& req = rank.request;
    req.mutable_recipe()->set_name(recipe);
    for (const layout::ShardSpec& s : *shards) {
      auto* b = req.add_buffers();
      b->set_name(s.name);
      b->set_dtype(v1::BFLOAT16);
      for (int d = 0; d < s.shape.ndim; ++d) b->add_shape(s.shape.d[d]);
      rank.bytes.emplace_back();
      rank.sizes.push_back(s.shape.NumElements() * 2);
    }
    sc.ranks.push_back(std::move(rank));
  }
  return sc;
}

void SyncBench(const std::string& trainer, const std::string& gen, int reps) {
  std::fprintf(stderr, "starting %s -> %s\n", trainer.c_str(), gen.c_str());
  server::Options o;
  o.log.level = "warn";
  auto d = testing::ColocatedDaemon::Start(trainer, gen, o);
  if (!d.ok()) {
    std::fprintf(stderr, "%s -> %s: %s\n", trainer.c_str(), gen.c_str(), d.status().ToString().c_str());
    std::exit(1);
  }
  std::vector<double> rpc, daemon, transfer, verify, commit;
  uint64_t bytes = 0;
  for (int i = 0; i <= reps; ++i) {  // version 1 builds the plan and the staging: not counted
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*d)->Sync("llama7b", i + 1);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!r.ok()) {
      std::fprintf(stderr, "sync failed: %s\n", r.status().ToString().c_str());
      std::exit(1);
    }
    bytes = r->bytes();
    if (i == 0) continue;
    rpc.push_back(ms);
    daemon.push_back(r->timings().total_ms());
    transfer.push_back(r->timings().transfer_ms());
    verify.push_back(r->timings().verify_ms());
    commit.push_back(r->timings().commit_ms());
  }
  std::sort(rpc.begin(), rpc.end());
  std::sort(daemon.begin(), daemon.end());
  d->reset();  // frees the children's buffers and the staging before the baseline allocates
  // Baseline: one D2D copy of the model's bytes.
  char *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  const double d2d = TimeMs([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 5);
  CK(cudaFree(a));
  CK(cudaFree(b));
  std::printf("%-12s -> %-13s %8.2f GiB  p50 %7.2f ms (daemon %7.2f ms, p90 %7.2f)  D2D %6.2f ms  D2D/p50 %4.0f%%\n",
              trainer.c_str(), gen.c_str(), bytes / double(1ull << 30), rpc[rpc.size() / 2], daemon[daemon.size() / 2],
              rpc[rpc.size() * 9 / 10], d2d, 100.0 * d2d / rpc[rpc.size() / 2]);
  auto p50 = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("%29s phases p50: transfer %7.2f ms, verify %7.2f ms, commit %7.2f ms\n", "", p50(transfer), p50(verify),
              p50(commit));
}

}  // namespace
}  // namespace wsync

int main(int argc, char** argv) {
  // Children get --quick through the environment (their argv is the child's).
  wsync::g_quick = std::getenv("WSYNC_BENCH_QUICK") != nullptr;
  for (int i = 1; i < argc; ++i) wsync::g_quick |= std::string(argv[i]) == "--quick";
  if (wsync::g_quick) setenv("WSYNC_BENCH_QUICK", "1", 1);
  int child = wsync::testing::MaybeRunGpuChild(argc, argv, wsync::Scenario);
  if (child >= 0) return child;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line shows up even if the run is cut short
  auto gpus = wsync::kernels::ListGpus();
  if (!gpus.ok() || gpus->empty()) {
    std::fprintf(stderr, "no GPU: %s\n", gpus.status().ToString().c_str());
    return 1;
  }
  std::printf("GPU %s\n", wsync::kernels::Describe((*gpus)[0]).c_str());
  wsync::BoxCopyBench();
  wsync::LoraBench();
  std::printf("\n== colocated sync, Llama-2-7B shapes%s, bf16, one GPU (20 syncs after a first that plans)\n",
              wsync::g_quick ? " (2 layers: --quick)" : "");
  const int reps = wsync::g_quick ? 5 : 20;
  wsync::SyncBench("trainer-tp1", "gen-staged", reps);
  wsync::SyncBench("trainer-tp2", "gen-staged", reps);
  wsync::SyncBench("trainer-tp1", "gen-in_place", reps);
  wsync::SyncBench("trainer-tp2", "gen-in_place", reps);
  return 0;
}
