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

  // Every rank of a layout with these sizes.
  std::vector<Endpoint> Ranks(const std::string& recipe, RankCoords sizes) {
    std::vector<Endpoint> out;
    for (const RankCoords& r : AllRanks(sizes)) out.push_back(Rank(recipe, r));
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

RankCoords Tp(int size) {
  RankCoords r;
  r.tp_size = size;
  return r;
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
  ModelConfig c;
  c.family = "qwen3_moe";
  c.hidden_size = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 1;
  c.vocab_size = 16;
  c.num_hidden_layers = 1;
  c.num_experts = 4;
  c.moe_intermediate_size = 4;
  Fixture f(c);

  // Megatron EP rank 1 of 2 holds experts 2 and 3 whole: weight0 = expert 2.
  RankCoords e1;
  e1.ep = 1;
  e1.ep_size = 2;
  auto m = f.Shards("megatron", e1);
  const ShardSpec& w0 = Find(m, "decoder.layers.0.mlp.experts.linear_fc1.weight0");
  CHECK(Col0(w0, testing::Materialize(f.model, w0, f.data)) ==
        std::vector<float>{3000, 3001, 3002, 3003, 3100, 3101, 3102, 3103});
  const ShardSpec& d1 = Find(m, "decoder.layers.0.mlp.experts.linear_fc2.weight1");
  CHECK(Row0(d1, testing::Materialize(f.model, d1, f.data)) ==
        std::vector<float>{4200, 14200, 24200, 34200});

  RankCoords ep2;
  ep2.ep_size = 2;
  auto dst = f.Ranks("vllm", Tp(2));
  auto db = f.Run(f.Ranks("megatron", ep2), dst);

  // vLLM TP rank 1 holds every expert, intermediate rows 2..3 of each.
  size_t w13 = Index(dst[1].shards, "model.layers.0.mlp.experts.w13_weight");
  CHECK(dst[1].shards[w13].shape == Shape::Of({4, 4, 2}));
  CHECK(Col0(dst[1].shards[w13], db[1][w13], 0) == std::vector<float>{1002, 1003, 1102, 1103});
  CHECK(Col0(dst[1].shards[w13], db[1][w13], 3) == std::vector<float>{4002, 4003, 4102, 4103});
  size_t w2 = Index(dst[1].shards, "model.layers.0.mlp.experts.w2_weight");
  CHECK(dst[1].shards[w2].shape == Shape::Of({4, 2, 2}));
  // Expert 2 (base 3200), output row 0, intermediate columns 2 and 3.
  CHECK(Row0(dst[1].shards[w2], db[1][w2], 2) == std::vector<float>{23200, 33200});
  size_t router = Index(dst[0].shards, "model.layers.0.mlp.gate.weight");
  CHECK(Col0(dst[0].shards[router], db[0][router]) == std::vector<float>{0, 1, 2, 3});
}

TEST_CASE("vLLM EP places whole experts, the first ranks taking the remainder") {
  ModelConfig c;
  c.family = "mixtral";
  c.hidden_size = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 1;
  c.vocab_size = 16;
  c.num_hidden_layers = 1;
  c.num_experts = 5;
  c.intermediate_size = 2;
  Fixture f(c);
  // 5 experts over 2 ranks: rank 0 holds experts 0-2, rank 1 experts 3-4.
  RankCoords r;
  r.ep = 1;
  r.ep_size = 2;
  auto v = f.Shards("vllm", r);
  const ShardSpec& w13 = Find(v, "model.layers.0.block_sparse_moe.experts.w13_weight");
  CHECK(w13.shape == Shape::Of({2, 4, 2}));
  auto bytes = testing::Materialize(f.model, w13, f.data);
  CHECK(Col0(w13, bytes, 0) == std::vector<float>{4000, 4001, 4100, 4101});  // expert 3: w1, w3
  CHECK(Col0(w13, bytes, 1) == std::vector<float>{5000, 5001, 5100, 5101});
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

TEST_CASE("pipeline stages hold their layers with local names") {
  ModelConfig c = Dense(2, 2, 2);
  c.num_hidden_layers = 4;
  Fixture f(c);
  RankCoords r;
  r.pp = 1;
  r.pp_size = 2;
  auto s = f.Shards("megatron", r);
  // Stage 1 of 2 holds global layers 2 and 3 as decoder.layers.0 and .1, the
  // final norm and the output layer, and no embedding.
  const ShardSpec& qkv = Find(s, "decoder.layers.1.self_attention.linear_qkv.weight");
  CHECK(f.model.tensor(qkv.pieces[0].tensor).name == "model.layers.3.self_attn.q_proj.weight");
  CHECK(Find(s, "output_layer.weight").shape == Shape::Of({128, 2}));
  for (const ShardSpec& sh : s) CHECK(sh.name != "embedding.word_embeddings.weight");
}

}  // namespace
}  // namespace wsync::layout
