#include "daemon/layout/types.h"

#include <catch2/catch.hpp>

#include "daemon/layout/recipe.h"

namespace wsync::layout {
namespace {

Box B(std::initializer_list<std::pair<int64_t, int64_t>> ranges) {
  Box b;
  for (auto [lo, hi] : ranges) {
    b.off[b.ndim] = lo;
    b.size[b.ndim] = hi - lo;
    ++b.ndim;
  }
  return b;
}

ModelSpec Model() {
  auto m = ModelSpec::Create({{"w", Shape::Of({4, 6}), DType::kF32},
                              {"b", Shape::Of({6}), DType::kF32},
                              {"e", Shape::Of({3, 4}), DType::kBF16}});
  REQUIRE(m.ok());
  return *m;
}

std::string Err(const ModelSpec& m, const ShardSpec& s) {
  absl::Status st = ValidateShard(m, s);
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == absl::StatusCode::kInvalidArgument);
  return std::string(st.message());
}

TEST_CASE("boxes: intersection, containment, subtraction") {
  Box a = B({{0, 4}, {0, 6}});
  Box b = B({{2, 6}, {3, 9}});
  CHECK(a.Intersect(b) == B({{2, 4}, {3, 6}}));
  CHECK(a.Intersect(B({{4, 5}, {0, 1}})).ndim == 0);
  CHECK(a.Contains(B({{1, 2}, {5, 6}})));
  CHECK_FALSE(a.Contains(b));
  CHECK(a.ToString() == "[0:4, 0:6]");
  std::vector<Box> rest;
  SubtractBox(a, B({{1, 3}, {2, 4}}), &rest);
  int64_t total = 0;
  for (const Box& r : rest) {
    total += r.NumElements();
    CHECK_FALSE(r.Overlaps(B({{1, 3}, {2, 4}})));
  }
  CHECK(total == 24 - 4);
}

TEST_CASE("a valid shard with a 2-d piece in a 3-d buffer") {
  ModelSpec m = Model();
  ShardSpec s{"w13", Shape::Of({2, 4, 6}), DType::kBF16, {}};
  s.pieces.push_back({m.Find("w"), B({{0, 4}, {0, 6}}), B({{1, 2}, {0, 4}, {0, 6}})});
  CHECK(ValidateShard(m, s).ok());
  int32_t map[kMaxDims];
  PieceDimMap(s.pieces[0], map);
  CHECK(map[0] == 1);
  CHECK(map[1] == 2);
  CHECK(MapToShard(s.pieces[0], map, B({{2, 3}, {1, 4}})) == B({{1, 2}, {2, 3}, {1, 4}}));
}

TEST_CASE("validation errors name the shard, the tensor and both boxes") {
  ModelSpec m = Model();
  ShardSpec s{"qkv", Shape::Of({8, 6}), DType::kBF16, {}};

  s.pieces = {{m.Find("w"), B({{2, 6}, {0, 6}}), B({{0, 4}, {0, 6}})}};
  CHECK(Err(m, s) ==
        "shard 'qkv': piece 0 of 'w': canonical box [2:6, 0:6] is outside the tensor's shape [4, 6]");

  s.pieces = {{m.Find("w"), B({{0, 4}, {0, 6}}), B({{6, 10}, {0, 6}})}};
  CHECK(Err(m, s) ==
        "shard 'qkv': piece 0 of 'w': shard box [6:10, 0:6] is outside the shard's shape [8, 6]");

  s.pieces = {{m.Find("w"), B({{0, 4}, {0, 6}}), B({{0, 6}, {0, 4}})}};
  CHECK(Err(m, s) ==
        "shard 'qkv': piece 0 of 'w': canonical box [0:4, 0:6] and shard box [0:6, 0:4] have "
        "different sizes (they must agree once size-1 dimensions are dropped)");

  s.pieces = {{m.Find("w"), B({{0, 4}, {0, 6}}), B({{0, 4}, {0, 6}})},
              {m.Find("w"), B({{0, 2}, {0, 6}}), B({{3, 5}, {0, 6}})}};
  CHECK(Err(m, s) ==
        "shard 'qkv': pieces 0 ('w' at [0:4, 0:6]) and 1 ('w' at [3:5, 0:6]) overlap");

  s.pieces = {{7, B({{0, 1}}), B({{0, 1}, {0, 1}})}};
  CHECK(Err(m, s) == "shard 'qkv': piece 0 refers to unknown tensor #7");

  s.pieces = {{m.Find("b"), B({{0, 6}, {0, 1}}), B({{0, 6}})}};
  CHECK(Err(m, s) ==
        "shard 'qkv': piece 0 of 'b': canonical box [0:6, 0:1] is outside the tensor's shape [6]");

  ShardSpec bad_shape{"x", Shape::Of({0, 3}), DType::kF32, {}};
  CHECK(Err(m, bad_shape) == "shard 'x': shape [0, 3] has a dimension < 1");
}

TEST_CASE("declared buffers must match the recipe's shape and dtype") {
  ShardSpec want{"decoder.layers.0.mlp.linear_fc1.weight", Shape::Of({8, 4}), DType::kBF16, {}};
  CHECK(CheckDeclaredBuffer(want, Shape::Of({8, 4}), DType::kBF16).ok());
  absl::Status s = CheckDeclaredBuffer(want, Shape::Of({4, 8}), DType::kBF16);
  CHECK(s.message() ==
        "buffer 'decoder.layers.0.mlp.linear_fc1.weight': shape [4, 8] does not match the "
        "expected [8, 4]");
  s = CheckDeclaredBuffer(want, Shape::Of({8, 4}), DType::kF32);
  CHECK(s.message() ==
        "buffer 'decoder.layers.0.mlp.linear_fc1.weight': dtype fp32 does not match the expected "
        "bf16");
}

TEST_CASE("model specs reject duplicate and malformed tensors") {
  auto dup = ModelSpec::Create({{"w", Shape::Of({2}), DType::kF32}, {"w", Shape::Of({3}), DType::kF32}});
  CHECK(dup.status().message() == "duplicate tensor name 'w'");
  auto zero = ModelSpec::Create({{"w", Shape::Of({2, 0}), DType::kF32}});
  CHECK(zero.status().message() == "tensor 'w': shape [2, 0] has a dimension < 1");
  auto unnamed = ModelSpec::Create({{"", Shape::Of({2}), DType::kF32}});
  CHECK(unnamed.status().message() == "tensor #0 has no name");
  ModelSpec m = Model();
  CHECK(m.Find("b") == 1);
  CHECK(m.Find("nope") == -1);
  CHECK(m.TotalBytes() == 4 * 6 * 4 + 6 * 4 + 3 * 4 * 2);
}

TEST_CASE("dtype names parse, unknown ones are named") {
  CHECK(*ParseDType("bfloat16") == DType::kBF16);
  CHECK(*ParseDType("F16") == DType::kF16);
  CHECK(*ParseDType("float32") == DType::kF32);
  CHECK(*ParseDType("F8_E4M3") == DType::kF8E4M3);
  CHECK(ParseDType("int8").status().message() ==
        "unknown dtype 'int8' (expected fp32, bf16, fp16 or fp8_e4m3)");
}

TEST_CASE("recipes report unknown names, options and impossible splits") {
  ModelConfig c;
  c.family = "llama";
  c.hidden_size = 8;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 12;
  c.vocab_size = 100;
  c.num_hidden_layers = 2;
  auto tensors = CanonicalTensors(c, DType::kF32);
  REQUIRE(tensors.ok());
  auto model = ModelSpec::Create(*tensors);
  REQUIRE(model.ok());
  RankCoords r;
  CHECK(BuildShards(*model, c, "deepspeed", {}, r, DType::kBF16).status().message() ==
        "unknown recipe 'deepspeed' (known: megatron, vllm, hf, fsdp)");
  CHECK(BuildShards(*model, c, "vllm", {{"padding", "64"}}, r, DType::kBF16).status().message() ==
        "unknown vllm recipe option 'padding' (known: vocab_padding, expert_placement, moe_names, qkv_a)");
  r.tp = 3;
  r.tp_size = 2;
  CHECK(BuildShards(*model, c, "vllm", {}, r, DType::kBF16).status().message() ==
        "rank coordinate tp = 3 is outside [0, 2)");
  r.tp = 0;
  r.tp_size = 8;
  CHECK(BuildShards(*model, c, "vllm", {}, r, DType::kBF16).status().message() ==
        "num_attention_heads (4) is not divisible by vllm tp_size (8)");
  RankCoords pp;
  pp.pp_size = 3;
  CHECK(BuildShards(*model, c, "megatron", {}, pp, DType::kBF16).status().message() ==
        "num_hidden_layers (2) is not divisible by megatron pp_size x vpp (3)");
  // A model missing a tensor the recipe needs.
  std::vector<TensorSpec> fewer = *tensors;
  fewer.pop_back();  // lm_head.weight
  auto partial = ModelSpec::Create(fewer);
  REQUIRE(partial.ok());
  auto s = BuildShards(*partial, c, "vllm", {}, RankCoords{}, DType::kBF16);
  CHECK(s.status().code() == absl::StatusCode::kNotFound);
  CHECK(s.status().message() ==
        "recipe needs canonical tensor 'lm_head.weight', which the model does not have (shard "
        "'lm_head.weight')");
}

}  // namespace
}  // namespace wsync::layout
