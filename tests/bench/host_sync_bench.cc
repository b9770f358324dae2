// Host sync benchmark: a real sync job (plan, regroup, digest, verify,
// commit) between shared-memory buffers, through daemon/core, against a
// plain memcpy of the same bytes in the same run; and the control overhead
// per tensor for a model of ~50k tiny tensors; and the same dense model into
// block-FP8 targets. Prints ratios; asserts nothing.
//
//   bazel run -c opt //tests/bench:host_sync_bench [-- --layers 7 --threads 2 --reps 5]
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/core.h"
#include "daemon/core/pause_acker.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/recipe.h"

using namespace wsync;

namespace {

// The bench process as a local, non-administrator caller.
wsync::core::Caller Me() { return wsync::core::Caller::Local(getuid(), getgid(), getpid(), false); }


double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One shm object per rank; buffers are carved out of it.
struct Arena {
  std::string name;
  char* base = nullptr;
  size_t size = 0;
  explicit Arena(size_t bytes) : size(bytes) {
    static int n = 0;
    name = absl::StrCat("/wsync-bench-", getpid(), "-", n++);
    int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) std::perror("ftruncate");
    base = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    close(fd);
  }
  ~Arena() { munmap(base, size); }
};

struct Setup {
  std::unique_ptr<core::Core> core;
  std::string session;
  std::unique_ptr<core::PauseAcker> sink;
  std::vector<std::unique_ptr<Arena>> arenas;
  uint64_t target_bytes = 0;
  int64_t tensors = 0;
};

// Registers `recipe` ranks of `sizes` with buffers in one arena per rank.
// With `fp8` (targets of a model with block scales), the weights that have
// scales are fp8_e4m3 buffers and their scale buffers fp32.
void RegisterRanks(Setup& s, const layout::ModelSpec& spec, const layout::ModelConfig& cfg,
                   const std::string& recipe, layout::LayoutSizes sizes, core::Role role,
                   const std::string& replica, core::UpdateMode mode, layout::DType dt, bool fill,
                   bool fp8 = false) {
  const auto grid = layout::EngineRanks(recipe, sizes);
  for (const layout::RankCoords& r : *grid) {
    auto shards = *layout::BuildShards(spec, cfg, recipe, {}, r, dt);
    if (fp8) {
      for (auto& sh : shards) {
        if (sh.pieces.empty()) continue;
        if (spec.ScalesOf(sh.pieces[0].tensor) >= 0) sh.dtype = layout::DType::kF32;
        if (spec.ScaleTensorOf(sh.pieces[0].tensor) >= 0) sh.dtype = layout::DType::kF8E4M3;
      }
    }
    size_t total = 0;
    for (const auto& sh : shards) total += (sh.shape.NumElements() * kernels::DTypeSize(sh.dtype) + 255) / 256 * 256;
    s.arenas.push_back(std::make_unique<Arena>(total));
    Arena& a = *s.arenas.back();
    core::RegisterShardsArgs args;
    args.caller = Me();
    args.session_id = s.session;
    args.model_id = "bench";
    args.role = role;
    args.replica_id = replica;
    args.rank = r;
    args.recipe = recipe;
    args.mode = mode;
    size_t off = 0;
    for (const auto& sh : shards) {
      core::BufferArg b;
      b.name = sh.name;
      b.shm_name = a.name;
      b.offset = off;
      b.nbytes = sh.shape.NumElements() * kernels::DTypeSize(sh.dtype);
      b.shape = sh.shape;
      b.dtype = sh.dtype;
      args.buffers.push_back(b);
      if (role == core::Role::kTarget) s.target_bytes += b.nbytes;
      off += (b.nbytes + 255) / 256 * 256;
    }
    if (fill) {
      for (size_t i = 0; i < a.size; i += 4096) a.base[i] = static_cast<char>(i >> 12);
    } else {
      std::memset(a.base, 0, a.size);  // fault the pages in, as a live replica has them
    }
    auto res = s.core->RegisterShards(args);
    shm_unlink(a.name.c_str());  // mapped on both sides now; nothing left in /dev/shm
    if (!res.ok()) {
      std::fprintf(stderr, "register: %s\n", res.status().ToString().c_str());
      std::exit(1);
    }
  }
}

Setup Make(const layout::ModelConfig& cfg, int threads, uint64_t bucket,
           std::optional<layout::Fp8Scaling> fp8 = std::nullopt) {
  Setup s;
  core::CoreOptions o;
  o.daemon_id = "bench";
  o.copy_threads = threads;
  o.default_bucket_bytes = bucket;
  s.core = core::Core::Create(o);
  s.sink = std::make_unique<core::PauseAcker>(s.core.get(), &s.session);
  s.session = *s.core->OpenSession({"bench", getpid(), Me()}, s.sink.get());
  core::RegisterModelArgs m;
  m.caller = Me();
  m.session_id = s.session;
  m.model_id = "bench";
  m.has_config = true;
  m.config = cfg;
  m.fp8_scales = fp8;
  auto reg = s.core->RegisterModel(m);
  s.tensors = reg->num_tensors;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int layers = 7, threads = 2, reps = 5;
  layout::Fp8Scaling scaling = layout::Fp8Scaling::kBlock;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--fp8-scaling") {
      const std::string v = argv[i + 1];
      if (v == "channel") {
        scaling = layout::Fp8Scaling::kChannel;
      } else if (v == "tensor") {
        scaling = layout::Fp8Scaling::kTensor;
      } else if (v != "block") {
        return std::fprintf(stderr, "--fp8-scaling: block, channel or tensor, not '%s'\n", v.c_str()), 2;
      }
    }
    if (std::string(argv[i]) == "--layers") layers = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--threads") threads = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
  }
  // ---- ~3 GB dense model, Megatron TP=2 (bf16) -> vLLM TP=4 (bf16).
  layout::ModelConfig cfg;
  cfg.family = "llama";
  cfg.hidden_size = 4096;
  cfg.num_attention_heads = 32;
  cfg.num_key_value_heads = 8;
  cfg.intermediate_size = 11008;
  cfg.vocab_size = 32000;
  cfg.num_hidden_layers = layers;
  auto spec = *layout::ModelSpec::Create(*layout::CanonicalTensors(cfg, layout::DType::kBF16));
  for (core::UpdateMode mode : {core::UpdateMode::kInPlace, core::UpdateMode::kStaged}) {
    Setup s = Make(cfg, threads, 64ull << 20);
    layout::LayoutSizes src, dst;
    src.tp = 2;
    dst.tp = 4;
    RegisterRanks(s, spec, cfg, "megatron", src, core::Role::kSource, "", mode, layout::DType::kBF16, true);
    RegisterRanks(s, spec, cfg, "vllm", dst, core::Role::kTarget, "gen", mode, layout::DType::kBF16, false);
    const uint64_t bytes = s.target_bytes;
    std::vector<char> a(bytes), b(bytes);
    std::memset(a.data(), 1, bytes);
    std::memset(b.data(), 2, bytes);
    std::vector<double> mem, sync, ratio;
    core::SyncOutcome last;
    for (int v = 1; v <= reps + 1; ++v) {
      double t0 = Now();
      std::memcpy(b.data(), a.data(), bytes);
      mem.push_back(Now() - t0);
      core::SyncArgs args;
      args.caller = Me();
      args.model_id = "bench";
      args.version = v;
      t0 = Now();
      auto r = s.core->Sync(args, nullptr, nullptr);
      sync.push_back(Now() - t0);
      if (!r.ok()) return std::printf("sync: %s\n", r.status().ToString().c_str()), 1;
      last = *r;
      if (v == 1) {  // the first sync builds the plan and the staging
        mem.clear();
        sync.clear();
        continue;
      }
      ratio.push_back(mem.back() / sync.back());
    }
    std::sort(mem.begin(), mem.end());
    std::sort(sync.begin(), sync.end());
    std::sort(ratio.begin(), ratio.end());
    const double tm = mem[reps / 2], ts = sync[reps / 2];
    const bool in_place = mode == core::UpdateMode::kInPlace;
    std::printf(
        "host sync %s, %.2f GB bf16, Megatron TP2 -> vLLM TP4, %d copy threads (medians of %d pairs):\n"
        "  memcpy of the same bytes (1 thread): %.3f s = %.2f GB/s\n"
        "  sync: %.3f s = %.2f GB/s; sync / memcpy per pair: median %.0f%% (%.0f%% - %.0f%%), "
        "target >= %d%%\n"
        "  phases of the last sync: plan %.1f ms, transfer %.1f ms (%.2f GB/s), verify %.1f ms, "
        "commit %.1f ms\n",
        in_place ? "in_place" : "staged", bytes / 1e9, threads, reps, tm, bytes / tm / 1e9, ts, bytes / ts / 1e9,
        100 * ratio[reps / 2], 100 * ratio.front(), 100 * ratio.back(), in_place ? 70 : 60,
        last.times.plan_ms, last.times.transfer_ms, bytes / (last.times.transfer_ms / 1e3) / 1e9,
        last.times.verify_ms, last.times.commit_ms);
  }

  // ---- The same shapes into FP8 targets (intermediate 11264, so that
  // vLLM TP=4 cuts fall on 128-row blocks): in place, bf16 trainers; the
  // sync assembles each FP8 piece in fp32 (or reads it straight from one
  // trainer buffer), quantizes it with its scales, digests and re-reads
  // what it wrote. --fp8-scaling channel or tensor: vLLM TP=1, since a
  // TP cut would split their groups.
  {
    layout::ModelConfig f = cfg;
    f.intermediate_size = 11264;
    Setup s = Make(f, threads, 64ull << 20, scaling);
    std::vector<layout::TensorSpec> tensors = *layout::CanonicalTensors(f, layout::DType::kBF16);
    const size_t n = tensors.size();
    uint64_t quantized = 0;
    for (size_t i = 0; i < n; ++i) {
      if (tensors[i].shape.ndim == 2 && layout::Fp8Quantized(tensors[i])) {
        quantized += tensors[i].shape.NumElements();
        tensors.push_back({layout::Fp8ScaleName(tensors[i].name, scaling),
                           layout::Fp8ScaleShape(tensors[i].shape, scaling), layout::DType::kF32, tensors[i].name});
      }
    }
    auto fspec = *layout::ModelSpec::Create(tensors);
    layout::LayoutSizes src, dst;
    src.tp = 2;
    dst.tp = scaling == layout::Fp8Scaling::kBlock ? 4 : 1;
    RegisterRanks(s, fspec, f, "megatron", src, core::Role::kSource, "", core::UpdateMode::kInPlace,
                  layout::DType::kBF16, true);
    RegisterRanks(s, fspec, f, "vllm", dst, core::Role::kTarget, "gen", core::UpdateMode::kInPlace,
                  layout::DType::kBF16, false, /*fp8=*/true);
    // Baseline: memcpy of what the sync reads plus writes: every target
    // byte, plus the bf16 bytes of the quantized weights (2 read, 1 written
    // per element, where the target byte counts the written one).
    const uint64_t bytes = s.target_bytes + 2 * quantized;
    std::vector<char> a(bytes), b(bytes);
    std::memset(a.data(), 1, bytes);
    std::memset(b.data(), 2, bytes);
    std::vector<double> mem, sync;
    core::SyncOutcome last;
    for (int v = 1; v <= reps + 1; ++v) {
      double t0 = Now();
      std::memcpy(b.data(), a.data(), bytes);
      const double tm = Now() - t0;
      core::SyncArgs args;
      args.caller = Me();
      args.model_id = "bench";
      args.version = v;
      t0 = Now();
      auto r = s.core->Sync(args, nullptr, nullptr);
      const double ts = Now() - t0;
      if (!r.ok()) return std::printf("sync: %s\n", r.status().ToString().c_str()), 1;
      last = *r;
      if (v == 1) continue;  // the first sync builds the plan and the scratch
      mem.push_back(tm);
      sync.push_back(ts);
    }
    std::sort(mem.begin(), mem.end());
    std::sort(sync.begin(), sync.end());
    const double tm = mem[reps / 2], ts = sync[reps / 2];
    std::printf(
        "host FP8 sync in_place, %.2f GB of targets (%.2f G elements quantized), Megatron TP2 bf16 -> vLLM TP%d "
        "FP8 with %s scales, %d copy threads (medians of %d):\n"
        "  memcpy of the bytes read + written (%.2f GB, 1 thread): %.3f s\n"
        "  sync: %.3f s; memcpy / sync %.0f%%\n"
        "  phases of the last sync: plan %.1f ms, transfer (assemble + quantize) %.1f ms, verify %.1f ms, "
        "commit %.1f ms\n"
        "  FP8 pieces: %llu, %llu read straight from one source, %llu assembled in fp32 first\n",
        s.target_bytes / 1e9, quantized / 1e9, static_cast<int>(dst.tp), layout::Fp8ScalingName(scaling), threads,
        reps, bytes / 1e9, tm, ts, 100 * tm / ts,
        last.times.plan_ms, last.times.transfer_ms, last.times.verify_ms, last.times.commit_ms,
        static_cast<unsigned long long>(last.fp8_pieces),
        static_cast<unsigned long long>(last.fp8_pieces - last.fp8_assembled),
        static_cast<unsigned long long>(last.fp8_assembled));
  }

  // ---- Control overhead: ~50k tiny tensors.
  layout::ModelConfig tiny;
  tiny.family = "qwen3_moe";
  tiny.hidden_size = 16;
  tiny.num_attention_heads = 2;
  tiny.num_key_value_heads = 1;
  tiny.head_dim = 8;
  tiny.moe_intermediate_size = 8;
  tiny.num_experts = 128;
  tiny.vocab_size = 64;
  tiny.num_hidden_layers = 130;
  auto tspec = *layout::ModelSpec::Create(*layout::CanonicalTensors(tiny, layout::DType::kBF16));
  Setup s = Make(tiny, 1, 64ull << 20);
  layout::LayoutSizes one;
  RegisterRanks(s, tspec, tiny, "megatron", one, core::Role::kSource, "", core::UpdateMode::kInPlace,
                layout::DType::kBF16, true);
  RegisterRanks(s, tspec, tiny, "vllm", one, core::Role::kTarget, "gen", core::UpdateMode::kInPlace,
                layout::DType::kBF16, false);
  std::vector<double> times;
  core::SyncOutcome last;
  for (int v = 1; v <= 3; ++v) {
    core::SyncArgs args;
    args.caller = Me();
    args.model_id = "bench";
    args.version = v;
    double t0 = Now();
    auto r = s.core->Sync(args, nullptr, nullptr);
    times.push_back(Now() - t0);
    if (!r.ok()) return std::printf("sync: %s\n", r.status().ToString().c_str()), 1;
    last = *r;
  }
  std::sort(times.begin(), times.end());
  std::printf("control overhead: %lld tensors, %.1f MiB: sync %.1f ms = %.2f us per tensor "
              "(plan %.1f ms, transfer %.1f, verify %.1f, commit %.1f)\n",
              static_cast<long long>(s.tensors), s.target_bytes / 1048576.0, times[1] * 1e3,
              times[1] * 1e6 / s.tensors, last.times.plan_ms, last.times.transfer_ms, last.times.verify_ms,
              last.times.commit_ms);
  return 0;
}
