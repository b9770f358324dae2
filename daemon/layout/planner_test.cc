#include "daemon/layout/planner.h"

#include <catch2/catch.hpp>
#include <random>

#include "daemon/layout/layout_testing.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/recipe.h"

namespace wsync::layout {
namespace {

struct Setup {
  ModelConfig config;
  ModelSpec model;
  Setup() {
    config.family = "qwen2";
    config.hidden_size = 16;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.intermediate_size = 24;
    config.vocab_size = 70;
    config.num_hidden_layers = 2;
    auto t = CanonicalTensors(config, DType::kF32);
    REQUIRE(t.ok());
    model = *ModelSpec::Create(*t);
  }
  Endpoint Rank(const std::string& id, const std::string& recipe, RankCoords r, DType dt,
                Location loc = {"node-a", -1}) {
    auto s = BuildShards(model, config, recipe, {}, r, dt);
    REQUIRE(s.ok());
    return Endpoint{id, loc, *s};
  }
};

RankCoords Tp(int r, int n) {
  RankCoords c;
  c.tp = r;
  c.tp_size = n;
  return c;
}

TEST_CASE("target bytes with no source are an error naming them") {
  Setup s;
  std::vector<Endpoint> src = {s.Rank("trainer/tp0", "megatron", Tp(0, 2), DType::kF32)};
  std::vector<Endpoint> dst = {s.Rank("gen/tp0", "vllm", Tp(0, 1), DType::kBF16)};
  auto plan = BuildPlan(s.model, src, dst);
  REQUIRE_FALSE(plan.ok());
  CHECK(plan.status().code() == absl::StatusCode::kFailedPrecondition);
  std::string msg(plan.status().message());
  INFO(msg);
  // Megatron TP rank 0 of 2 holds query heads 0-1 (rows 0:8 of q_proj, head
  // dim 4) and query group 0 (rows 0:4 of k_proj and v_proj); the padded
  // vocab (256 rows) covers all 70 embedding rows. Per layer 10 regions are
  // missing: q/k/v weight and bias, o_proj columns, gate, up, down.
  CHECK_THAT(msg, Catch::StartsWith(
                      "20 target region(s) have no source: target 'gen/tp0' shard "
                      "'model.layers.0.self_attn.qkv_proj.weight': "
                      "'model.layers.0.self_attn.q_proj.weight' [8:16, 0:16]; target 'gen/tp0' "
                      "shard 'model.layers.0.self_attn.qkv_proj.weight': "
                      "'model.layers.0.self_attn.k_proj.weight' [4:8, 0:16]"));
  CHECK_THAT(msg, Catch::EndsWith("(is every source rank registered?)"));
}

TEST_CASE("bad options and duplicate endpoints") {
  Setup s;
  std::vector<Endpoint> src = {s.Rank("a", "hf", {}, DType::kF32)};
  std::vector<Endpoint> dst = {s.Rank("a", "hf", {}, DType::kF32)};
  CHECK(BuildPlan(s.model, src, dst).status().message() == "duplicate endpoint id 'a'");
  dst[0].id = "b";
  PlanOptions o;
  o.max_bucket_bytes = 8;
  CHECK(BuildPlan(s.model, src, dst, o).status().message() == "max_bucket_bytes must be >= 64, got 8");
}

TEST_CASE("sources are chosen by locality, then by load") {
  Setup s;
  // Two data-parallel replicas of the same trainer layout.
  RankCoords d0, d1;
  d0.dp_size = d1.dp_size = 2;
  d1.dp = 1;
  std::vector<Endpoint> src = {
      s.Rank("trainer/dp0", "megatron", d0, DType::kF32, {"node-a", 0}),
      s.Rank("trainer/dp1", "megatron", d1, DType::kF32, {"node-b", 0}),
  };
  SECTION("same node wins") {
    std::vector<Endpoint> dst = {s.Rank("gen", "hf", {}, DType::kBF16, {"node-b", 3})};
    auto plan = BuildPlan(s.model, src, dst);
    REQUIRE(plan.ok());
    for (const CopyOp& op : plan->ops) CHECK(op.src_endpoint == 1);
  }
  SECTION("same device beats same node") {
    std::vector<Endpoint> dst = {s.Rank("gen", "hf", {}, DType::kBF16, {"node-a", 0})};
    src[1].location = {"node-a", 1};
    auto plan = BuildPlan(s.model, src, dst);
    REQUIRE(plan.ok());
    for (const CopyOp& op : plan->ops) CHECK(op.src_endpoint == 0);
  }
  SECTION("equally remote replicas share the load") {
    std::vector<Endpoint> dst = {s.Rank("gen", "hf", {}, DType::kBF16, {"node-c", 0})};
    auto plan = BuildPlan(s.model, src, dst);
    REQUIRE(plan.ok());
    uint64_t bytes[2] = {0, 0};
    for (const Bucket& b : plan->buckets) bytes[b.src_endpoint] += b.bytes;
    CHECK(bytes[0] > 0);
    CHECK(bytes[1] > 0);
    uint64_t total = bytes[0] + bytes[1];
    CHECK(bytes[0] * 10 > total * 3);  // neither side carries less than 30%
    CHECK(bytes[1] * 10 > total * 3);
  }
}

TEST_CASE("the schedule is deterministic, bounded by the bucket size, and hashed") {
  Setup s;
  std::vector<Endpoint> src, dst;
  for (int r = 0; r < 2; ++r) src.push_back(s.Rank("t" + std::to_string(r), "megatron", Tp(r, 2), DType::kF32));
  for (int r = 0; r < 2; ++r) dst.push_back(s.Rank("g" + std::to_string(r), "vllm", Tp(r, 2), DType::kBF16));
  PlanOptions small;
  small.max_bucket_bytes = 256;
  auto a = BuildPlan(s.model, src, dst, small);
  auto b = BuildPlan(s.model, src, dst, small);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->hash == b->hash);
  CHECK(a->HashHex().size() == 16);
  for (const Bucket& bk : a->buckets) CHECK(bk.bytes <= 256);
  auto big = BuildPlan(s.model, src, dst);
  REQUIRE(big.ok());
  CHECK(big->hash != a->hash);
  CHECK(big->buckets.size() < a->buckets.size());
  CHECK(big->total_bytes == a->total_bytes);
  // Ops stay grouped: a bucket never mixes endpoint pairs, and pairs appear
  // in (source, target) order.
  for (size_t i = 1; i < a->buckets.size(); ++i) {
    auto prev = std::make_pair(a->buckets[i - 1].src_endpoint, a->buckets[i - 1].dst_endpoint);
    auto cur = std::make_pair(a->buckets[i].src_endpoint, a->buckets[i].dst_endpoint);
    CHECK(prev <= cur);
  }
  // A different endpoint name changes the hash.
  dst[1].id = "g1-renamed";
  auto renamed = BuildPlan(s.model, src, dst, small);
  REQUIRE(renamed.ok());
  CHECK(renamed->hash != a->hash);

  SECTION("split ops still move every byte correctly") {
    std::mt19937 rng(11);
    auto data = testing::RandomCanonical(s.model, rng);
    auto sb = testing::MaterializeAll(s.model, src, data);
    auto db = testing::Garbage(dst, 0x77);
    testing::Execute(*a, src, sb, dst, db);
    auto want = testing::MaterializeAll(s.model, dst, data);
    CHECK(db[0] == want[0]);
  }
}

}  // namespace
}  // namespace wsync::layout
