// Planner benchmark: time to plan a whole-model sync, per canonical tensor.
// Shapes follow Qwen3-235B-A22B (94 layers, 128 experts, GQA 64/4), and a
// variant with more experts per layer that reaches ~100k tensors.
//
//   bazel run -c opt //tests/bench:planner_bench
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/planner.h"
#include "daemon/layout/recipe.h"

using namespace wsync::layout;

namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int Run(int64_t experts) {
  ModelConfig c;
  c.family = "qwen3_moe";
  c.hidden_size = 4096;
  c.num_attention_heads = 64;
  c.num_key_value_heads = 4;
  c.head_dim = 128;
  c.intermediate_size = 12288;
  c.moe_intermediate_size = 1536;
  c.num_experts = experts;
  c.vocab_size = 151936;
  c.num_hidden_layers = 94;
  auto tensors = CanonicalTensors(c, DType::kBF16);
  if (!tensors.ok()) return std::printf("%s\n", tensors.status().ToString().c_str()), 1;
  auto model = ModelSpec::Create(*tensors);
  if (!model.ok()) return 1;

  // Trainer: Megatron TP=4 x DP=8 x PP=2 (47 layers a stage) = 64
  // processes, experts EP=8 x ETP=1 (EDP 4 copies). Generator: vLLM TP=8 with
  // expert parallelism (EP = 8) -> 8 processes.
  auto t0 = std::chrono::steady_clock::now();
  std::vector<Endpoint> src, dst;
  LayoutSizes ms;
  ms.tp = 4;
  ms.dp = 8;
  ms.pp = 2;
  ms.ep = 8;
  ms.etp = 1;
  auto mranks = EngineRanks("megatron", ms);
  if (!mranks.ok()) return std::printf("%s\n", mranks.status().ToString().c_str()), 1;
  for (const RankCoords& r : *mranks) {
    auto s = BuildShards(*model, c, "megatron", {}, r, DType::kF32);
    if (!s.ok()) return std::printf("%s\n", s.status().ToString().c_str()), 1;
    src.push_back({absl::StrCat("trainer/", r.ToString()), {absl::StrCat("t", r.rank / 8), r.rank % 8}, *s});
  }
  LayoutSizes vs;
  vs.tp = 8;
  vs.ep = 8;
  const auto grid = EngineRanks("vllm", vs);
  for (const RankCoords& r : *grid) {
    const int t = r.tp;
    auto s = BuildShards(*model, c, "vllm", {}, r, DType::kBF16);
    if (!s.ok()) return std::printf("%s\n", s.status().ToString().c_str()), 1;
    dst.push_back({absl::StrCat("gen/tp", t), {"g0", t}, *s});
  }
  double t_recipes = Since(t0);

  double best = 1e9;
  Plan plan;
  for (int rep = 0; rep < 3; ++rep) {
    auto t1 = std::chrono::steady_clock::now();
    auto p = BuildPlan(*model, src, dst);
    double t = Since(t1);
    if (!p.ok()) return std::printf("%s\n", p.status().ToString().c_str()), 1;
    if (t < best) {
      best = t;
      plan = std::move(*p);
    }
  }
  // The source-completeness check every sync runs first (every canonical
  // byte has a holder), against the plan it precedes.
  std::vector<const ShardSpec*> held;
  for (const Endpoint& e : src) {
    for (const ShardSpec& s : e.shards) held.push_back(&s);
  }
  auto t2 = std::chrono::steady_clock::now();
  const size_t uncovered = UncoveredParts(*model, held, 5).size();
  const double t_cover = Since(t2);
  if (uncovered != 0) return std::printf("the sources leave %zu parts uncovered\n", uncovered), 1;
  const double n = static_cast<double>(model->size());
  std::printf("    source coverage check %.3f s (%.0f%% of the plan)\n", t_cover, 100 * t_cover / best);
  std::printf(
      "%6lld experts/layer: %7d tensors, %.1f GB bf16; %zu source + %zu target ranks; recipes %.2f s\n"
      "    plan %.3f s = %.2f us/tensor (target <= 5 us, 100k tensors < 0.5 s); %zu ops, %zu "
      "buckets, %zu fills, hash %s\n",
      static_cast<long long>(experts), model->size(), model->TotalBytes() / 1e9, src.size(),
      dst.size(), t_recipes, best, best / n * 1e6, plan.ops.size(), plan.buckets.size(),
      plan.fills.size(), plan.HashHex().c_str());
  return 0;
}

}  // namespace

int main() {
  std::printf("planner_bench: Megatron TP4 DP8 PP2, EP8 ETP1 (fp32) -> vLLM TP8 EP8 (bf16), best of 3\n");
  if (int rc = Run(128); rc != 0) return rc;  // Qwen3-235B-A22B
  return Run(352);                            // ~100k tensors
}
