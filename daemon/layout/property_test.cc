// Property test: random models, random source and target layouts. Sources
// are filled straight from the canonical tensors, the plan runs on the CPU
// kernels, and every target byte must equal the target layout filled
// straight from the canonical tensors.
//
// The seed is fixed and printed; change it with
//   bazel test //daemon/layout:property_test --test_arg=--rng-seed=N
#include <catch2/catch.hpp>
#include <iostream>
#include <random>

#include "absl/strings/str_cat.h"
#include "daemon/layout/layout_testing.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/planner.h"
#include "daemon/layout/recipe.h"

namespace wsync::layout {
namespace {

constexpr unsigned kDefaultSeed = 20261121;
constexpr int kConfigs = 240;

template <typename T>
T Pick(std::mt19937& rng, std::initializer_list<T> options) {
  std::uniform_int_distribution<size_t> d(0, options.size() - 1);
  return *(options.begin() + d(rng));
}

ModelConfig RandomConfig(std::mt19937& rng) {
  ModelConfig c;
  c.family = Pick<std::string>(rng, {"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe",
                                     "qwen3_moe", "deepseek_v3", "deepseek_v2"});
  c.head_dim = Pick(rng, {2, 4});
  c.num_key_value_heads = Pick(rng, {1, 2, 4});
  c.num_attention_heads = c.num_key_value_heads * Pick(rng, {1, 2, 3});
  c.hidden_size = Pick(rng, {8, 12, 16});
  c.intermediate_size = Pick(rng, {8, 12, 16, 24});
  c.vocab_size = std::uniform_int_distribution<int>(20, 200)(rng);
  c.num_hidden_layers = Pick(rng, {1, 2, 4});
  c.tie_word_embeddings = rng() % 3 == 0;
  if (c.family == "deepseek_v3" || c.family == "deepseek_v2") {
    c.q_lora_rank = Pick(rng, {0, 4, 6});
    c.kv_lora_rank = Pick(rng, {4, 6});
    c.qk_nope_head_dim = Pick(rng, {2, 4});
    c.qk_rope_head_dim = Pick(rng, {2, 4});
    c.v_head_dim = Pick(rng, {2, 3});
    c.num_experts = Pick(rng, {0, 4, 6});
    c.moe_intermediate_size = Pick(rng, {4, 8});
    c.num_shared_experts = Pick(rng, {0, 1, 2});
    c.first_k_dense_replace = Pick(rng, {0, 1});
    c.moe_layer_freq = Pick(rng, {1, 1, 2});
    c.n_group = Pick(rng, {1, 2});
    c.router_bias = c.family == "deepseek_v3";
    return c;
  }
  if (c.family == "mixtral" || c.family == "qwen2_moe" || c.family == "qwen3_moe") {
    c.num_experts = Pick(rng, {2, 4, 6, 8});
    c.moe_intermediate_size = Pick(rng, {4, 8, 12});
    if (c.family == "qwen2_moe") c.shared_expert_intermediate_size = Pick(rng, {4, 8});
    if (c.family != "mixtral") {
      c.decoder_sparse_step = Pick(rng, {1, 1, 2});
      if (rng() % 4 == 0) c.mlp_only_layers = {0};
    }
  }
  return c;
}

struct Layout {
  std::string recipe;
  LayoutSizes sizes;
  RecipeOptions options;
  std::string ToString() const {
    std::string o;
    for (const auto& [k, v] : options) absl::StrAppend(&o, ",", k, "=", v);
    return absl::StrCat(recipe, ":tp=", sizes.tp, ",cp=", sizes.cp, ",dp=", sizes.dp, ",pp=", sizes.pp,
                        ",ep=", sizes.ep, ",etp=", sizes.etp, o);
  }
};

Layout RandomLayout(std::mt19937& rng, bool source, bool moe) {
  Layout l;
  l.recipe = source ? Pick<std::string>(rng, {"megatron", "megatron", "megatron", "vllm", "fsdp", "hf"})
                    : Pick<std::string>(rng, {"vllm", "vllm", "vllm", "megatron", "fsdp", "hf"});
  if (l.recipe == "hf" || l.recipe == "fsdp") {
    if (l.recipe == "fsdp") l.sizes.dp = Pick(rng, {1, 2, 3, 4});
    if (moe && rng() % 2) l.options["experts"] = "fused";
    return l;
  }
  l.sizes.tp = Pick(rng, {1, 2, 3, 4, 8});
  l.sizes.pp = Pick(rng, {1, 1, 2, 4});
  l.sizes.dp = Pick(rng, {1, 1, 2});
  if (l.recipe == "megatron") {
    l.sizes.cp = Pick(rng, {1, 1, 2});
    if (rng() % 2) l.options["spec"] = "local";
    if (rng() % 3 == 0) l.options["vpp"] = "2";
    if (moe) {
      l.sizes.ep = Pick(rng, {0, 1, 2, 4});
      l.sizes.etp = Pick(rng, {0, 1, 2});
      if (rng() % 2) l.options["moe_layout"] = Pick<std::string>(rng, {"grouped", "sequential"});
    }
  } else {
    if (rng() % 4 == 0) l.options["qkv_a"] = "separate";  // only read for MLA models
  }
  if (l.recipe == "vllm" && moe) {
    if (rng() % 2) l.sizes.ep = l.sizes.tp * l.sizes.dp;
    if (rng() % 2) l.options["expert_placement"] = "round_robin";
    if (rng() % 3 == 0) l.options["moe_names"] = "legacy";
  }
  return l;
}

// The endpoints of a layout, or an empty vector if the model cannot be split
// that way (INVALID_ARGUMENT from the recipe).
std::vector<Endpoint> Build(const ModelSpec& model, const ModelConfig& c, const Layout& l,
                            const std::string& prefix, DType dtype, std::mt19937& rng) {
  std::vector<Endpoint> out;
  auto ranks = EngineRanks(l.recipe, l.sizes);
  if (!ranks.ok()) {
    INFO(l.ToString() << ": " << ranks.status().ToString());
    REQUIRE(ranks.status().code() == absl::StatusCode::kInvalidArgument);
    return {};
  }
  for (const RankCoords& r : *ranks) {
    auto shards = BuildShards(model, c, l.recipe, l.options, r, dtype);
    if (!shards.ok()) {
      INFO(l.ToString() << ": " << shards.status().ToString());
      REQUIRE(shards.status().code() == absl::StatusCode::kInvalidArgument);
      return {};
    }
    Location loc{absl::StrCat("node", rng() % 3), static_cast<int>(rng() % 2)};
    out.push_back({absl::StrCat(prefix, "/", r.ToString()), loc, std::move(*shards)});
  }
  return out;
}

unsigned Seed() {
  unsigned s = Catch::rngSeed();
  return s != 0 ? s : kDefaultSeed;
}

TEST_CASE("random layouts reshard to random layouts, byte for byte") {
  const unsigned seed = Seed();
  std::cout << "property_test seed " << seed << " (change with --test_arg=--rng-seed=N)\n";
  std::mt19937 rng(seed);
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16};
  int done = 0, attempts = 0, round_trips = 0;
  while (done < kConfigs) {
    REQUIRE(++attempts < kConfigs * 50);
    ModelConfig c = RandomConfig(rng);
    auto tensors = CanonicalTensors(c, DType::kF32);
    if (!tensors.ok()) continue;  // e.g. heads that do not divide
    auto model = ModelSpec::Create(*tensors);
    REQUIRE(model.ok());
    Layout sl = RandomLayout(rng, true, c.IsMoe());
    Layout tl = RandomLayout(rng, false, c.IsMoe());
    DType sd = dtypes[rng() % 3], td = dtypes[rng() % 3];
    auto src = Build(*model, c, sl, "src", sd, rng);
    auto dst = Build(*model, c, tl, "dst", td, rng);
    if (src.empty() || dst.empty()) continue;

    INFO("config #" << done << " seed " << seed << ": " << c.family << " H=" << c.hidden_size
                    << " nh=" << c.num_attention_heads << " ng=" << c.num_key_value_heads
                    << " L=" << c.num_hidden_layers << " E=" << c.num_experts << " V="
                    << c.vocab_size << " tied=" << c.tie_word_embeddings << "; " << sl.ToString()
                    << " " << kernels::DTypeName(sd) << " -> " << tl.ToString() << " "
                    << kernels::DTypeName(td));
    PlanOptions options;
    options.max_bucket_bytes = Pick<uint64_t>(rng, {64, 1024, 1 << 20});
    auto plan = BuildPlan(*model, src, dst, options);
    INFO(plan.status().ToString());
    REQUIRE(plan.ok());
    for (const Bucket& b : plan->buckets) REQUIRE(b.bytes <= options.max_bucket_bytes);

    auto data = testing::RandomCanonical(*model, rng);
    auto sb = testing::MaterializeAll(*model, src, data);
    auto db = testing::Garbage(dst, 0xa5);
    testing::Execute(*plan, src, sb, dst, db, 1 + static_cast<int>(rng() % 2));
    auto want = testing::MaterializeAll(*model, dst, data);
    for (size_t e = 0; e < dst.size(); ++e) {
      for (size_t s = 0; s < dst[e].shards.size(); ++s) {
        INFO("target " << dst[e].id << " shard " << dst[e].shards[s].name);
        REQUIRE(db[e][s] == want[e][s]);
      }
    }

    // Round trip Megatron -> vLLM -> HF whenever both layouts apply.
    if (sl.recipe == "megatron" && tl.recipe == "vllm") {
      Layout hf{"hf", {}, {}};
      auto back = Build(*model, c, hf, "hf", DType::kF32, rng);
      REQUIRE(!back.empty());
      auto plan2 = BuildPlan(*model, dst, back, options);
      REQUIRE(plan2.ok());
      auto hb = testing::Garbage(back, 0x5a);
      testing::Execute(*plan2, dst, db, back, hb);
      REQUIRE(testing::ReadBack(*model, back[0].shards, hb[0]) == data);
      ++round_trips;
    }
    ++done;
  }
  std::cout << done << " configurations (" << attempts << " drawn), " << round_trips
            << " Megatron -> vLLM -> HF round trips\n";
  CHECK(done >= 200);
  CHECK(round_trips >= 10);
}

}  // namespace
}  // namespace wsync::layout
