// Hand-worked layouts, written out literally: the source of truth the
// recipes and the planner are checked against. Canonical tensors hold labels
// (value = base + row + 10000 * col), so column 0 of a row-sharded buffer
// spells out which canonical rows it holds, and row 0 of a column-sharded
// buffer which columns.
#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/layout/layout_testing.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/planner.h"
#include "daemon/layout/recipe.h"

namespace wsync::layout {
namespace {

using testing::CanonicalData;

float Base(const std::string& name) {
  // Expert e (HF per-expert tensors): 1000*(e+1) + {0 gate, 100 up, 200 down}.
  if (auto pos = name.find(".experts."); pos != std::string::npos) {
    int e = std::stoi(name.substr(pos + 9));
    float base = 1000.0f * (e + 1);
    if (absl::StrContains(name, "up_proj") || absl::StrContains(name, ".w3.")) base += 100;
    if (absl::StrContains(name, "down_proj") || absl::StrContains(name, ".w2.")) base += 200;
    return base;
  }
  if (absl::StrContains(name, "q_proj")) return 100;
  if (absl::StrContains(name, "k_proj")) return 200;
  if (absl::StrContains(name, "v_proj")) return 300;
  if (absl::StrContains(name, "gate_proj")) return 400;
  if (absl::StrContains(name, "up_proj")) return 500;
  if (absl::StrContains(name, "down_proj")) return 600;
  if (absl::StrContains(name, "lm_head")) return 5000;
  return 0;  // embeddings: row i -> i
}

CanonicalData Labels(const ModelSpec& model) {
  CanonicalData data(model.size());
  for (int32_t t = 0; t < model.size(); ++t) {
    const Shape& s = model.tensor(t).shape;
    const int64_t cols = s.ndim == 2 ? s.d[1] : 1;
    data[t].resize(s.NumElements());
    for (int64_t i = 0; i < s.NumElements(); ++i) {
      data[t][i] = Base(model.tensor(t).name) + static_cast<float>(i / cols) + 10000.0f * (i % cols);
    }
  }
  return data;
}

struct Fixture {
  ModelConfig config;
  ModelSpec model;
  CanonicalData data;

  explicit Fixture(ModelConfig c) : config(std::move(c)) {
    auto tensors = CanonicalTensors(config, DType::kF32);
    REQUIRE(tensors.ok());
    auto m = ModelSpec::Create(*tensors);
    REQUIRE(m.ok());
    model = *m;
    data = Labels(model);
  }

  std::vector<ShardSpec> Shards(const std::string& recipe, RankCoords r,
                                const RecipeOptions& options = {}) {
    auto s = BuildShards(model, config, recipe, options, r, DType::kF32);
    INFO(s.status().ToString());
    REQUIRE(s.ok());
    return *s;
  }

  Endpoint Rank(const std::string& recipe, RankCoords r, const RecipeOptions& options = {}) {
    return Endpoint{absl::StrCat(recipe, "/", r.ToString()), {"n", -1}, Shards(recipe, r, options)};
  }

  // Every process of a layout with these sizes.
  std::vector<Endpoint> Ranks(const std::string& recipe, LayoutSizes sizes,
                              const RecipeOptions& options = {}) {
    auto ranks = EngineRanks(recipe, sizes);
    INFO(ranks.status().ToString());
    REQUIRE(ranks.ok());
    std::vector<Endpoint> out;
    for (const RankCoords& r : *ranks) out.push_back(Rank(recipe, r, options));
    return out;
  }

  // Plans src -> dst, fills the sources from the labels, runs the plan into
  // garbage-filled targets and returns the target buffers.
  testing::Buffers Run(const std::vector<Endpoint>& src, const std::vector<Endpoint>& dst) {
    auto plan = BuildPlan(model, src, dst);
    INFO(plan.status().ToString());
    REQUIRE(plan.ok());
    auto sb = testing::MaterializeAll(model, src, data);
    auto db = testing::Garbage(dst, 0xee);
    testing::Execute(*plan, src, sb, dst, db);
    return db;
  }
};

LayoutSizes Tp(int size) {
  LayoutSizes s;
  s.tp = size;
  return s;
}

RankCoords Process(const std::string& recipe, LayoutSizes sizes, int rank) {
  auto ranks = EngineRanks(recipe, sizes);
  REQUIRE(ranks.ok());
  return (*ranks)[rank];
}

const ShardSpec& Find(const std::vector<ShardSpec>& shards, const std::string& name) {
  for (const ShardSpec& s : shards) {
    if (s.name == name) return s;
  }
  FAIL("no shard " << name);
  return shards[0];
}

size_t Index(const std::vector<ShardSpec>& shards, const std::string& name) {
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards[i].name == name) return i;
  }
  FAIL("no shard " << name);
  return 0;
}

// Column 0 of every row of a 2-d fp32 buffer (or of slab `slab` of a 3-d one).
std::vector<float> Col0(const ShardSpec& s, const std::vector<uint8_t>& bytes, int64_t slab = 0) {
  const float* f = reinterpret_cast<const float*>(bytes.data());
  const int64_t rows = s.shape.ndim == 3 ? s.shape.d[1] : s.shape.d[0];
  const int64_t cols = s.shape.d[s.shape.ndim - 1];
  std::vector<float> out;
  for (int64_t r = 0; r < rows; ++r) out.push_back(f[slab * rows * cols + r * cols]);
  return out;
}

// Row 0 of a 2-d fp32 buffer (or of slab `slab` of a 3-d one).
std::vector<float> Row0(const ShardSpec& s, const std::vector<uint8_t>& bytes, int64_t slab = 0) {
  const float* f = reinterpret_cast<const float*>(bytes.data());
  const int64_t rows = s.shape.ndim == 3 ? s.shape.d[1] : s.shape.d[0];
  const int64_t cols = s.shape.d[s.shape.ndim - 1];
  return std::vector<float>(f + slab * rows * cols, f + slab * rows * cols + cols);
}

ModelConfig Dense(int64_t nh, int64_t ng, int64_t I, int64_t V = 16) {
  ModelConfig c;
  c.family = "llama";
  c.hidden_size = 2;
  c.num_attention_heads = nh;
  c.num_key_value_heads = ng;
  c.head_dim = 1;
  c.intermediate_size = I;
  c.vocab_size = V;
  c.num_hidden_layers = 1;
  return c;
}

// A one-layer qwen3_moe model with H=2 and one head dim: E experts of width Ie.
ModelConfig Moe(int64_t E, int64_t Ie) {
  ModelConfig c;
  c.family = "qwen3_moe";
  c.hidden_size = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 1;
  c.vocab_size = 16;
  c.num_hidden_layers = 1;
  c.num_experts = E;
  c.moe_intermediate_size = Ie;
  return c;
}

TEST_CASE("QKV, nh=24 ng=8: Megatron TP=4 holds [qqqkv qqqkv], vLLM TP=4 [q x6, k k, v v]") {
  Fixture f(Dense(24, 8, 8));
  const std::vector<std::vector<float>> megatron = {
      {100, 101, 102, 200, 300, 103, 104, 105, 201, 301},
      {106, 107, 108, 202, 302, 109, 110, 111, 203, 303},
      {112, 113, 114, 204, 304, 115, 116, 117, 205, 305},
      {118, 119, 120, 206, 306, 121, 122, 123, 207, 307},
  };
  const std::vector<std::vector<float>> vllm = {
      {100, 101, 102, 103, 104, 105, 200, 201, 300, 301},
      {106, 107, 108, 109, 110, 111, 202, 203, 302, 303},
      {112, 113, 114, 115, 116, 117, 204, 205, 304, 305},
      {118, 119, 120, 121, 122, 123, 206, 207, 306, 307},
  };
  for (int r = 0; r < 4; ++r) {
    RankCoords rc;
    rc.tp = r;
    rc.tp_size = 4;
    auto m = f.Shards("megatron", rc);
    const ShardSpec& mq = Find(m, "decoder.layers.0.self_attention.linear_qkv.weight");
    CHECK(mq.shape == Shape::Of({10, 2}));
    CHECK(Col0(mq, testing::Materialize(f.model, mq, f.data)) == megatron[r]);
    auto v = f.Shards("vllm", rc);
    const ShardSpec& vq = Find(v, "model.layers.0.self_attn.qkv_proj.weight");
    CHECK(vq.shape == Shape::Of({10, 2}));
    CHECK(Col0(vq, testing::Materialize(f.model, vq, f.data)) == vllm[r]);
  }

  SECTION("the planner regroups Megatron TP=4 into vLLM TP=4") {
    auto dst = f.Ranks("vllm", Tp(4));
    auto db = f.Run(f.Ranks("megatron", Tp(4)), dst);
    for (int r = 0; r < 4; ++r) {
      size_t i = Index(dst[r].shards, "model.layers.0.self_attn.qkv_proj.weight");
      CHECK(Col0(dst[r].shards[i], db[r][i]) == vllm[r]);
    }
  }
}

TEST_CASE("vLLM replicates KV heads when TP exceeds the KV-head count") {
  Fixture f(Dense(8, 2, 8));
  // TP=8 > 2 KV heads: rank r holds q head r and KV head r / 4.
  const std::vector<std::vector<float>> tp8 = {
      {100, 200, 300}, {101, 200, 300}, {102, 200, 300}, {103, 200, 300},
      {104, 201, 301}, {105, 201, 301}, {106, 201, 301}, {107, 201, 301},
  };
  for (int r = 0; r < 8; ++r) {
    RankCoords rc;
    rc.tp = r;
    rc.tp_size = 8;
    auto v = f.Shards("vllm", rc);
    const ShardSpec& q = Find(v, "model.layers.0.self_attn.qkv_proj.weight");
    CHECK(Col0(q, testing::Materialize(f.model, q, f.data)) == tp8[r]);
  }
  // Megatron cannot split 2 query groups over 8 ranks.
  RankCoords rc;
  rc.tp_size = 8;
  auto bad = BuildShards(f.model, f.config, "megatron", {}, rc, DType::kF32);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message() ==
        "num_key_value_heads (query groups) (2) is not divisible by megatron tp_size (8)");

  SECTION("Megatron TP=2 -> vLLM TP=8 fills every replica") {
    auto dst = f.Ranks("vllm", Tp(8));
    auto db = f.Run(f.Ranks("megatron", Tp(2)), dst);
    for (int r = 0; r < 8; ++r) {
      size_t i = Index(dst[r].shards, "model.layers.0.self_attn.qkv_proj.weight");
      CHECK(Col0(dst[r].shards[i], db[r][i]) == tp8[r]);
    }
  }
}

// Runs a plan from Megatron TP=m to vLLM TP=n and returns each target's
// gate_up_proj column 0.
std::vector<std::vector<float>> Regroup(Fixture& f, int m, int n) {
  auto dst = f.Ranks("vllm", Tp(n));
  auto db = f.Run(f.Ranks("megatron", Tp(m)), dst);
  std::vector<std::vector<float>> out;
  for (int r = 0; r < n; ++r) {
    size_t i = Index(dst[r].shards, "model.layers.0.mlp.gate_up_proj.weight");
    out.push_back(Col0(dst[r].shards[i], db[r][i]));
  }
  return out;
}

TEST_CASE("gate/up regroup from Megatron TP=4 to vLLM TP=2") {
  Fixture f(Dense(8, 8, 8));
  // Megatron rank 1 of 4 holds [gate rows 2,3; up rows 2,3].
  RankCoords r1;
  r1.tp = 1;
  r1.tp_size = 4;
  auto m = f.Shards("megatron", r1);
  const ShardSpec& fc1 = Find(m, "decoder.layers.0.mlp.linear_fc1.weight");
  CHECK(Col0(fc1, testing::Materialize(f.model, fc1, f.data)) ==
        std::vector<float>{402, 403, 502, 503});
  auto out = Regroup(f, 4, 2);
  CHECK(out[0] == std::vector<float>{400, 401, 402, 403, 500, 501, 502, 503});
  CHECK(out[1] == std::vector<float>{404, 405, 406, 407, 504, 505, 506, 507});
}

TEST_CASE("gate/up regroup from Megatron TP=2 to vLLM TP=8") {
  Fixture f(Dense(8, 8, 16));
  auto out = Regroup(f, 2, 8);
  CHECK(out[0] == std::vector<float>{400, 401, 500, 501});
  CHECK(out[3] == std::vector<float>{406, 407, 506, 507});
  CHECK(out[7] == std::vector<float>{414, 415, 514, 515});
}

TEST_CASE("vocab padding: Megatron pads to 128*TP, vLLM to 64, padding is zero-filled") {
  CHECK(*PaddedVocab("megatron", {}, 130, 1) == 256);
  CHECK(*PaddedVocab("megatron", {}, 130, 2) == 256);
  CHECK(*PaddedVocab("megatron", {}, 130, 4) == 512);
  CHECK(*PaddedVocab("megatron", {{"make_vocab_size_divisible_by", "64"}}, 130, 1) == 192);
  CHECK(*PaddedVocab("vllm", {}, 130, 2) == 192);
  CHECK(*PaddedVocab("vllm", {}, 128, 8) == 128);
  CHECK(*PaddedVocab("hf", {}, 130, 2) == 130);

  Fixture f(Dense(2, 2, 2, /*V=*/130));
  auto src = f.Ranks("megatron", Tp(2));
  auto dst = f.Ranks("vllm", Tp(2));
  const ShardSpec& m1 = Find(src[1].shards, "embedding.word_embeddings.weight");
  CHECK(m1.shape == Shape::Of({128, 2}));  // 256 padded rows / 2
  std::vector<float> want_m1(128, 0.0f);
  want_m1[0] = 128;
  want_m1[1] = 129;
  CHECK(Col0(m1, testing::Materialize(f.model, m1, f.data)) == want_m1);

  auto db = f.Run(src, dst);
  // vLLM: 192 padded rows, 96 per rank; rank 1 holds rows 96..129, then 62 zeros.
  size_t i = Index(dst[1].shards, "model.embed_tokens.weight");
  CHECK(dst[1].shards[i].shape == Shape::Of({96, 2}));
  std::vector<float> want(96, 0.0f);
  for (int k = 0; k < 34; ++k) want[k] = static_cast<float>(96 + k);
  CHECK(Col0(dst[1].shards[i], db[1][i]) == want);
  // Column 1 of the padding is zero too (label would be 10000 + row).
  const float* emb = reinterpret_cast<const float*>(db[1][i].data());
  CHECK(emb[95 * 2 + 1] == 0.0f);
  CHECK(emb[33 * 2 + 1] == 10129.0f);
}

TEST_CASE("MoE: Megatron EP=2 to vLLM TP=2") {
  Fixture f(Moe(4, 4));

  // Megatron dp=2, ep=2 (two processes; EP carved out of DP): process 1
  // holds experts 2 and 3 whole, named by their global numbers.
  LayoutSizes ep2;
  ep2.dp = 2;
  ep2.ep = 2;
  auto m = f.Shards("megatron", Process("megatron", ep2, 1));
  const ShardSpec& w0 = Find(m, "decoder.layers.0.mlp.experts.linear_fc1.weight2");
  CHECK(Col0(w0, testing::Materialize(f.model, w0, f.data)) ==
        std::vector<float>{3000, 3001, 3002, 3003, 3100, 3101, 3102, 3103});
  const ShardSpec& d1 = Find(m, "decoder.layers.0.mlp.experts.linear_fc2.weight3");
  CHECK(Row0(d1, testing::Materialize(f.model, d1, f.data)) ==
        std::vector<float>{4200, 14200, 24200, 34200});
  for (const ShardSpec& s : m) CHECK(s.name != "decoder.layers.0.mlp.experts.linear_fc1.weight0");

  auto dst = f.Ranks("vllm", Tp(2));
  auto db = f.Run(f.Ranks("megatron", ep2), dst);

  // vLLM TP rank 1 holds every expert, intermediate rows 2..3 of each.
  size_t w13 = Index(dst[1].shards, "model.layers.0.mlp.experts.routed_experts.w13_weight");
  CHECK(dst[1].shards[w13].shape == Shape::Of({4, 4, 2}));
  CHECK(Col0(dst[1].shards[w13], db[1][w13], 0) == std::vector<float>{1002, 1003, 1102, 1103});
  CHECK(Col0(dst[1].shards[w13], db[1][w13], 3) == std::vector<float>{4002, 4003, 4102, 4103});
  size_t w2 = Index(dst[1].shards, "model.layers.0.mlp.experts.routed_experts.w2_weight");
  CHECK(dst[1].shards[w2].shape == Shape::Of({4, 2, 2}));
  // Expert 2 (base 3200), output row 0, intermediate columns 2 and 3.
  CHECK(Row0(dst[1].shards[w2], db[1][w2], 2) == std::vector<float>{23200, 33200});
  size_t router = Index(dst[0].shards, "model.layers.0.mlp.gate.weight");
  CHECK(Col0(dst[0].shards[router], db[0][router]) == std::vector<float>{0, 1, 2, 3});
}

TEST_CASE("vLLM EP places whole experts, the first ranks taking the remainder") {
  ModelConfig c = Moe(5, 0);  // Mixtral's experts are intermediate_size wide
  c.family = "mixtral";
  c.intermediate_size = 2;
  Fixture f(c);
  // 5 experts over tp=2 with enable_expert_parallel (ep = tp x dp = 2):
  // rank 0 holds experts 0-2, rank 1 experts 3-4.
  LayoutSizes s;
  s.tp = 2;
  s.ep = 2;
  auto v = f.Shards("vllm", Process("vllm", s, 1));
  const ShardSpec& w13 = Find(v, "model.layers.0.block_sparse_moe.experts.routed_experts.w13_weight");
  CHECK(w13.shape == Shape::Of({2, 4, 2}));
  auto bytes = testing::Materialize(f.model, w13, f.data);
  CHECK(Col0(w13, bytes, 0) == std::vector<float>{4000, 4001, 4100, 4101});  // expert 3: w1, w3
  CHECK(Col0(w13, bytes, 1) == std::vector<float>{5000, 5001, 5100, 5101});

  SECTION("round_robin: rank 1 of 2 holds experts 1 and 3") {
    auto rr = f.Shards("vllm", Process("vllm", s, 1), {{"expert_placement", "round_robin"}});
    const ShardSpec& w = Find(rr, "model.layers.0.block_sparse_moe.experts.routed_experts.w13_weight");
    CHECK(w.shape == Shape::Of({2, 4, 2}));
    auto b = testing::Materialize(f.model, w, f.data);
    CHECK(Col0(w, b, 0) == std::vector<float>{2000, 2001, 2100, 2101});
    CHECK(Col0(w, b, 1) == std::vector<float>{4000, 4001, 4100, 4101});
  }
  SECTION("moe_names=legacy: vLLM before the routed_experts module") {
    auto old = f.Shards("vllm", Process("vllm", s, 0), {{"moe_names", "legacy"}});
    CHECK(Find(old, "model.layers.0.block_sparse_moe.experts.w13_weight").shape == Shape::Of({3, 4, 2}));
  }
  SECTION("vLLM dp=2, tp=1, EP: the expert rank is dp * tp_size + tp") {
    LayoutSizes d;
    d.dp = 2;
    d.ep = 2;
    auto w = f.Shards("vllm", Process("vllm", d, 1));
    CHECK(Find(w, "model.layers.0.block_sparse_moe.experts.routed_experts.w13_weight").shape ==
          Shape::Of({2, 4, 2}));
  }
  SECTION("vLLM dp=2, tp=1 without EP: experts tensor-parallel over the 2 processes") {
    LayoutSizes d;
    d.dp = 2;
    auto w = f.Shards("vllm", Process("vllm", d, 1));
    const ShardSpec& w13 = Find(w, "model.layers.0.block_sparse_moe.experts.routed_experts.w13_weight");
    CHECK(w13.shape == Shape::Of({5, 2, 2}));
    // Expert 0's w1 row 1 and w3 row 1: the second half of intermediate rows.
    CHECK(Col0(w13, testing::Materialize(f.model, w13, f.data), 0) == std::vector<float>{1001, 1101});
  }
}

TEST_CASE("process grids as the engines number them") {
  // Megatron-core, order tp-cp-ep-dp-pp, tp=2 dp=2 ep=2 etp=1 (4 processes):
  // dense tp = r % 2, dp = r / 2; expert etp 0, ep = r % 2, edp = r / 2.
  LayoutSizes m;
  m.tp = 2;
  m.dp = 2;
  m.ep = 2;
  m.etp = 1;
  auto ranks = EngineRanks("megatron", m);
  REQUIRE(ranks.ok());
  REQUIRE(ranks->size() == 4);
  const int want[4][5] = {{0, 0, 0, 0, 0}, {1, 0, 0, 1, 0}, {0, 1, 0, 0, 1}, {1, 1, 0, 1, 1}};
  for (int r = 0; r < 4; ++r) {
    const RankCoords& c = (*ranks)[r];
    INFO(c.ToString());
    CHECK(c.rank == r);
    CHECK(c.world_size == 4);
    CHECK(std::vector<int>{c.tp, c.dp, c.etp, c.ep, c.edp} ==
          std::vector<int>{want[r][0], want[r][1], want[r][2], want[r][3], want[r][4]});
    CHECK(c.ep_size == 2);
    CHECK(c.edp_size == 2);
  }
  // The example: tp=2, ep=2 on 2 GPUs -> process r has tp r, ep r,
  // and ETP defaults to TP, so with ep=2 the world of 2 cannot hold etp x ep = 4.
  LayoutSizes two;
  two.tp = 2;
  two.ep = 2;
  auto bad = EngineRanks("megatron", two);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message() ==
        "megatron layout: etp x ep x pp = 2 x 2 x 1 does not divide the world of tp x cp x dp x pp = 2 "
        "processes (etp defaults to tp, as Megatron-core's expert_tensor_parallel_size does; give etp=1 for "
        "whole experts, or a larger dp)");
  two.etp = 1;
  auto ok = EngineRanks("megatron", two);
  REQUIRE(ok.ok());
  CHECK((*ok)[1].tp == 1);
  CHECK((*ok)[1].ep == 1);
  CHECK((*ok)[1].ToString() == "rank 1/2 (tp 1/2; ep 1/2)");
  // cp sits between tp and dp: tp=2 cp=2 dp=2, process 5 = tp 1, cp 0, dp 1.
  LayoutSizes c3;
  c3.tp = 2;
  c3.cp = 2;
  c3.dp = 2;
  auto r3 = EngineRanks("megatron", c3);
  REQUIRE(r3.ok());
  CHECK((*r3)[5].tp == 1);
  CHECK((*r3)[5].cp == 0);
  CHECK((*r3)[5].dp == 1);
  // ETP defaults to TP, and EDP copies the experts over cp x dp.
  CHECK((*r3)[5].etp == 1);
  CHECK((*r3)[5].edp_size == 4);
  CHECK((*r3)[5].edp == 2);

  // vLLM: tp=2, dp=2, pp=2: rank = (dp * pp_size + pp) * tp_size + tp.
  LayoutSizes v;
  v.tp = 2;
  v.dp = 2;
  v.pp = 2;
  auto vr = EngineRanks("vllm", v);
  REQUIRE(vr.ok());
  const RankCoords& p6 = (*vr)[6];  // dp 1, pp 1, tp 0
  CHECK(std::vector<int>{p6.dp, p6.pp, p6.tp, p6.etp, p6.etp_size} == std::vector<int>{1, 1, 0, 2, 4});
  v.ep = 4;
  vr = EngineRanks("vllm", v);
  REQUIRE(vr.ok());
  CHECK((*vr)[6].ep == 2);
  v.ep = 2;
  CHECK(EngineRanks("vllm", v).status().message() ==
        "vllm layout: ep=2 is not vLLM's expert-parallel size; with enable_expert_parallel it is tp x dp "
        "= 4 (give ep=4, or no ep for tensor-parallel experts)");
}

TEST_CASE("registration checks: grids that do not cover the world, coordinates out of range") {
  RankCoords r;
  r.world_size = 4;
  r.tp_size = 2;
  CHECK(CompleteRank(&r).message() ==
        "the dense grid tp x cp x dp x pp = 2 x 1 x 1 x 1 = 2 processes, but world_size is 4");
  RankCoords e;
  e.world_size = 2;
  e.rank = 1;
  e.tp = 1;
  e.tp_size = 2;
  e.ep_size = 4;
  CHECK(CompleteRank(&e).message() ==
        "the expert grid etp x ep x edp x pp = 1 x 4 x 1 x 1 = 4 processes, but world_size is 2 (both "
        "grids cover the same processes)");
  RankCoords o;
  o.tp = 2;
  o.tp_size = 2;
  CHECK(CompleteRank(&o).message() == "rank coordinate tp = 2 is outside [0, 2)");
  // Legacy callers: no world_size, and rank follows Megatron's order.
  RankCoords l;
  l.tp = 1;
  l.tp_size = 2;
  l.pp = 1;
  l.pp_size = 2;
  REQUIRE(CompleteRank(&l).ok());
  CHECK(l.world_size == 4);
  CHECK(l.rank == 3);
  CHECK(l.etp_size == 2);
  CHECK(l.etp == 1);
}

TEST_CASE("FSDP splits dim 0 like torch.chunk, with an uneven last shard") {
  Fixture f(Dense(2, 2, 2, /*V=*/10));
  // 10 embedding rows over 4 ranks: ceil(10/4) = 3 -> 3, 3, 3, 1.
  std::vector<int64_t> rows;
  for (int r = 0; r < 4; ++r) {
    RankCoords rc;
    rc.dp = r;
    rc.dp_size = 4;
    auto s = f.Shards("fsdp", rc);
    rows.push_back(Find(s, "model.embed_tokens.weight").shape.d[0]);
  }
  CHECK(rows == std::vector<int64_t>{3, 3, 3, 1});
  // A 2-row tensor over 4 ranks: ranks 2 and 3 hold none of it.
  RankCoords r3;
  r3.dp = 3;
  r3.dp_size = 4;
  auto s = f.Shards("fsdp", r3);
  for (const ShardSpec& sh : s) CHECK(sh.name != "model.layers.0.mlp.gate_proj.weight");
}

TEST_CASE("pipeline stages hold their layers under global layer numbers") {
  ModelConfig c = Dense(2, 2, 2);
  c.num_hidden_layers = 4;
  Fixture f(c);
  RankCoords r;
  r.pp = 1;
  r.pp_size = 2;
  auto s = f.Shards("megatron", r);
  // Stage 1 of 2 holds layers 2 and 3, the final norm and the output layer,
  // and no embedding.
  const ShardSpec& qkv = Find(s, "decoder.layers.3.self_attention.linear_qkv.weight");
  CHECK(f.model.tensor(qkv.pieces[0].tensor).name == "model.layers.3.self_attn.q_proj.weight");
  CHECK(Find(s, "output_layer.weight").shape == Shape::Of({128, 2}));
  for (const ShardSpec& sh : s) {
    CHECK(sh.name != "embedding.word_embeddings.weight");
    CHECK(sh.name.rfind("decoder.layers.0.", 0) != 0);
  }
  SECTION("virtual pipeline: stage 1 of 2 with vpp=2 holds layers 1 and 3") {
    auto v = f.Shards("megatron", r, {{"vpp", "2"}});
    std::vector<std::string> qkvs;
    for (const ShardSpec& sh : v) {
      if (sh.name.find("linear_qkv.weight") != std::string::npos) qkvs.push_back(sh.name);
    }
    CHECK(qkvs == std::vector<std::string>{"decoder.layers.1.self_attention.linear_qkv.weight",
                                           "decoder.layers.3.self_attention.linear_qkv.weight"});
  }
}

TEST_CASE("Megatron's two layer specs name the dense layer norms differently") {
  Fixture f(Dense(2, 2, 2));
  auto te = f.Shards("megatron", RankCoords{});
  auto local = f.Shards("megatron", RankCoords{}, {{"spec", "local"}});
  std::vector<std::string> te_norms, local_norms;
  for (const ShardSpec& s : te) {
    if (s.name.find("norm") != std::string::npos) te_norms.push_back(s.name);
  }
  for (const ShardSpec& s : local) {
    if (s.name.find("norm") != std::string::npos) local_norms.push_back(s.name);
  }
  CHECK(te_norms == std::vector<std::string>{"decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
                                             "decoder.layers.0.mlp.linear_fc1.layer_norm_weight",
                                             "decoder.final_layernorm.weight"});
  CHECK(local_norms == std::vector<std::string>{"decoder.layers.0.input_layernorm.weight",
                                                "decoder.layers.0.pre_mlp_layernorm.weight",
                                                "decoder.final_layernorm.weight"});
  auto bad = BuildShards(f.model, f.config, "megatron", {{"spec", "transformer_engine"}}, RankCoords{},
                         DType::kF32);
  CHECK(bad.status().message() == "megatron recipe option spec='transformer_engine' must be te or local");
}

TEST_CASE("Transformers v5 fused experts: gate_up_proj [E, 2I, H] and down_proj [E, H, I]") {
  Fixture f(Moe(4, 2));
  auto hf = f.Shards("hf", RankCoords{}, {{"experts", "fused"}});
  const ShardSpec& gu = Find(hf, "model.layers.0.mlp.experts.gate_up_proj");
  CHECK(gu.shape == Shape::Of({4, 4, 2}));
  auto b = testing::Materialize(f.model, gu, f.data);
  CHECK(Col0(gu, b, 2) == std::vector<float>{3000, 3001, 3100, 3101});  // expert 2: gate rows, up rows
  const ShardSpec& dn = Find(hf, "model.layers.0.mlp.experts.down_proj");
  CHECK(dn.shape == Shape::Of({4, 2, 2}));
  CHECK(Row0(dn, testing::Materialize(f.model, dn, f.data), 1) == std::vector<float>{2200, 12200});
  for (const ShardSpec& s : hf) CHECK(s.name.find("experts.0.") == std::string::npos);

  // FSDP over 3 processes chunks the expert dimension: 2, 2, 0 experts.
  std::vector<int64_t> experts;
  for (int r = 0; r < 3; ++r) {
    RankCoords rc;
    rc.dp = r;
    rc.dp_size = 3;
    auto s = f.Shards("fsdp", rc, {{"experts", "fused"}});
    int64_t n = 0;
    for (const ShardSpec& sh : s) {
      if (sh.name == "model.layers.0.mlp.experts.gate_up_proj") n = sh.shape.d[0];
    }
    experts.push_back(n);
  }
  CHECK(experts == std::vector<int64_t>{2, 2, 0});

  // Round trip: per-expert hf -> fused fsdp over 3 -> fused hf, byte for byte.
  auto src = f.Ranks("hf", LayoutSizes{});
  LayoutSizes d3;
  d3.dp = 3;
  auto mid = f.Ranks("fsdp", d3, {{"experts", "fused"}});
  auto mb = f.Run(src, mid);
  auto back = f.Ranks("hf", LayoutSizes{}, {{"experts", "fused"}});
  auto plan = BuildPlan(f.model, mid, back);
  REQUIRE(plan.ok());
  auto bb = testing::Garbage(back, 0x11);
  testing::Execute(*plan, mid, mb, back, bb);
  CHECK(bb == testing::MaterializeAll(f.model, back, f.data));
  CHECK(Col0(back[0].shards[Index(back[0].shards, "model.layers.0.mlp.experts.gate_up_proj")],
             bb[0][Index(back[0].shards, "model.layers.0.mlp.experts.gate_up_proj")], 3) ==
        std::vector<float>{4000, 4001, 4100, 4101});
}

}  // namespace
}  // namespace wsync::layout
