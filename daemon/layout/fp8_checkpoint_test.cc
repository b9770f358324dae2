// Which tensors a block-FP8 checkpoint quantizes, by the names of a
// Qwen3-MoE checkpoint (Qwen3-30B-A3B-FP8 keeps its router, norms,
// embeddings and lm_head in bf16), and the scale tensors' names and shapes.
#include "daemon/layout/fp8_checkpoint.h"

#include <catch2/catch.hpp>

namespace wsync::layout {
namespace {

TensorSpec T(const std::string& name, std::initializer_list<int64_t> dims) { return {name, Shape::Of(dims), DType::kBF16}; }

TEST_CASE("block FP8 quantizes the linear weights of decoder layers only") {
  for (const TensorSpec& t : {T("model.layers.0.self_attn.q_proj.weight", {4096, 2048}),
                              T("model.layers.0.self_attn.o_proj.weight", {2048, 4096}),
                              T("model.layers.3.mlp.down_proj.weight", {2048, 6144}),
                              T("model.layers.3.mlp.experts.17.gate_proj.weight", {768, 2048}),
                              T("model.layers.3.block_sparse_moe.experts.2.w1.weight", {14336, 4096}),
                              T("model.layers.3.mlp.experts.gate_up_proj.weight", {128, 1536, 2048}),
                              T("model.layers.1.self_attn.kv_b_proj.weight", {4096, 512})}) {
    INFO(t.name);
    CHECK(Fp8Quantized(t));
  }
  for (const TensorSpec& t : {T("model.embed_tokens.weight", {151936, 2048}), T("lm_head.weight", {151936, 2048}),
                              T("model.norm.weight", {2048}), T("model.layers.0.input_layernorm.weight", {2048}),
                              T("model.layers.0.self_attn.q_norm.weight", {128}),
                              T("model.layers.0.self_attn.q_proj.bias", {4096}),
                              T("model.layers.3.mlp.gate.weight", {128, 2048}),
                              T("model.layers.3.block_sparse_moe.gate.weight", {8, 4096}),
                              T("model.layers.3.mlp.shared_expert_gate.weight", {1, 2048}),
                              T("model.layers.0.self_attn.kv_a_layernorm.weight", {512})}) {
    INFO(t.name);
    CHECK_FALSE(Fp8Quantized(t));
  }
}

TEST_CASE("scale tensors: names, and one scale per 128 x 128 block, partial blocks rounded up") {
  CHECK(Fp8ScaleName("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight_scale_inv");
  std::string w;
  CHECK(IsFp8ScaleName("model.layers.0.mlp.up_proj.weight_scale_inv", &w));
  CHECK(w == "model.layers.0.mlp.up_proj.weight");
  CHECK_FALSE(IsFp8ScaleName("model.layers.0.mlp.up_proj.weight", &w));
  CHECK(Fp8ScaleShape(Shape::Of({4096, 2048})) == Shape::Of({32, 16}));
  CHECK(Fp8ScaleShape(Shape::Of({1000, 129})) == Shape::Of({8, 2}));
  CHECK(Fp8ScaleShape(Shape::Of({128, 1536, 2048})) == Shape::Of({128, 12, 16}));
}

TEST_CASE("channel and tensor scales: vLLM's names, [rows, 1] and [1, 1], and which scaling a scale tensor means") {
  CHECK(Fp8ScaleName("model.layers.0.mlp.up_proj.weight", Fp8Scaling::kChannel) ==
        "model.layers.0.mlp.up_proj.weight_scale");
  CHECK(Fp8ScaleName("model.layers.0.mlp.experts.w2_weight", Fp8Scaling::kTensor) ==
        "model.layers.0.mlp.experts.w2_weight_scale");
  CHECK(Fp8ScaleShape(Shape::Of({1000, 129}), Fp8Scaling::kChannel) == Shape::Of({1000, 1}));
  CHECK(Fp8ScaleShape(Shape::Of({1000, 129}), Fp8Scaling::kTensor) == Shape::Of({1, 1}));
  CHECK(Fp8ScaleShape(Shape::Of({8, 768, 256}), Fp8Scaling::kTensor) == Shape::Of({8, 1, 1}));
  CHECK((Fp8GroupOf(Fp8Scaling::kChannel, 1000, 129).rows == 1 && Fp8GroupOf(Fp8Scaling::kChannel, 1000, 129).cols == 129));
  CHECK((Fp8GroupOf(Fp8Scaling::kTensor, 1000, 129).rows == 1000 && Fp8GroupOf(Fp8Scaling::kTensor, 1000, 129).cols == 129));
  const Shape w = Shape::Of({300, 256});
  CHECK(Fp8ScalingOf("x.weight_scale_inv", Shape::Of({3, 2}), w) == Fp8Scaling::kBlock);
  CHECK(Fp8ScalingOf("x.weight_scale", Shape::Of({300, 1}), w) == Fp8Scaling::kChannel);
  CHECK(Fp8ScalingOf("x.weight_scale", Shape::Of({1, 1}), w) == Fp8Scaling::kTensor);
  CHECK(Fp8ScalingOf("s", Shape::Of({1, 1}), w) == Fp8Scaling::kTensor);
  // The name rules out the other kinds.
  CHECK_FALSE(Fp8ScalingOf("x.weight_scale_inv", Shape::Of({300, 1}), w).has_value());
  CHECK_FALSE(Fp8ScalingOf("x.weight_scale", Shape::Of({3, 2}), w).has_value());
  // Where two fit, they group the same elements: one block is the whole 100 x 100 matrix.
  CHECK(Fp8ScalingOf("s", Shape::Of({1, 1}), Shape::Of({100, 100})) == Fp8Scaling::kBlock);
}

Box B2(int64_t r0, int64_t c0, int64_t rows, int64_t cols) {
  Box b;
  b.ndim = 2;
  b.off[0] = r0;
  b.off[1] = c0;
  b.size[0] = rows;
  b.size[1] = cols;
  return b;
}

TEST_CASE("scale buffers: vLLM's fused experts get one scale matrix per expert, worked out by hand") {
  CHECK(Fp8ScaleName("model.layers.0.mlp.experts.w13_weight") == "model.layers.0.mlp.experts.w13_weight_scale_inv");
  // Two experts' gate and up [256, 384] each, stacked as w13 [2, 512, 384].
  std::vector<TensorSpec> t;
  for (int e = 0; e < 2; ++e) {
    for (const char* m : {"gate_proj", "up_proj"}) {
      const std::string n = "model.layers.0.mlp.experts." + std::to_string(e) + "." + m + ".weight";
      t.push_back({n, Shape::Of({256, 384}), DType::kBF16});
      t.push_back({Fp8ScaleName(n), Shape::Of({2, 3}), DType::kF32, n});
    }
  }
  auto model = ModelSpec::Create(t);
  REQUIRE(model.ok());
  ShardSpec w13{"model.layers.0.mlp.experts.w13_weight", Shape::Of({2, 512, 384}), DType::kF8E4M3, {}};
  auto slab = [](int64_t e, int64_t r) {
    Box b;
    b.ndim = 3;
    b.off[0] = e;
    b.off[1] = r;
    b.size[0] = 1;
    b.size[1] = 256;
    b.size[2] = 384;
    return b;
  };
  for (int e = 0; e < 2; ++e) {
    w13.pieces.push_back({model->Find("model.layers.0.mlp.experts." + std::to_string(e) + ".gate_proj.weight"),
                          B2(0, 0, 256, 384), slab(e, 0)});
    w13.pieces.push_back({model->Find("model.layers.0.mlp.experts." + std::to_string(e) + ".up_proj.weight"),
                          B2(0, 0, 256, 384), slab(e, 256)});
  }
  auto sc = Fp8ScaleShard(*model, w13);
  REQUIRE(sc.has_value());
  CHECK(sc->name == "model.layers.0.mlp.experts.w13_weight_scale_inv");
  CHECK(sc->shape == Shape::Of({2, 4, 3}));
  REQUIRE(sc->pieces.size() == 4);
  // Expert 1's up_proj: scale rows 2-3 of matrix 1.
  const Piece& up1 = sc->pieces[3];
  CHECK(model->tensor(up1.tensor).name == "model.layers.0.mlp.experts.1.up_proj.weight_scale_inv");
  CHECK(up1.canonical == B2(0, 0, 2, 3));
  CHECK(up1.shard.ndim == 3);
  CHECK((up1.shard.off[0] == 1 && up1.shard.off[1] == 2 && up1.shard.off[2] == 0));
  CHECK((up1.shard.size[0] == 1 && up1.shard.size[1] == 2 && up1.shard.size[2] == 3));

  // A tensor-parallel half of 192 rows puts up_proj at row 192: not a block edge.
  ShardSpec half = w13;
  half.shape = Shape::Of({2, 384, 384});
  half.pieces[1].canonical = B2(0, 0, 192, 384);
  half.pieces[1].shard.off[1] = 192;
  half.pieces[1].shard.size[1] = 192;
  CHECK_FALSE(Fp8ScaleShard(*model, half).has_value());
}

TEST_CASE("scale buffers: channel and tensor scales stacked as vLLM stacks qkv and w13, worked out by hand") {
  // q [256, 64], k and v [128, 64], fused as qkv_proj [512, 64].
  for (Fp8Scaling sc : {Fp8Scaling::kChannel, Fp8Scaling::kTensor}) {
    INFO(Fp8ScalingName(sc));
    std::vector<TensorSpec> t;
    for (const char* m : {"q_proj", "k_proj", "v_proj"}) {
      const std::string n = std::string("model.layers.0.self_attn.") + m + ".weight";
      const Shape shape = Shape::Of({m[0] == 'q' ? 256 : 128, 64});
      t.push_back({n, shape, DType::kBF16});
      t.push_back({Fp8ScaleName(n, sc), Fp8ScaleShape(shape, sc), DType::kF32, n});
    }
    auto model = ModelSpec::Create(t);
    REQUIRE(model.ok());
    ShardSpec qkv{"model.layers.0.self_attn.qkv_proj.weight", Shape::Of({512, 64}), DType::kF8E4M3, {}};
    qkv.pieces.push_back({model->Find("model.layers.0.self_attn.q_proj.weight"), B2(0, 0, 256, 64), B2(0, 0, 256, 64)});
    qkv.pieces.push_back({model->Find("model.layers.0.self_attn.k_proj.weight"), B2(0, 0, 128, 64), B2(256, 0, 128, 64)});
    qkv.pieces.push_back({model->Find("model.layers.0.self_attn.v_proj.weight"), B2(0, 0, 128, 64), B2(384, 0, 128, 64)});
    auto out = Fp8ScaleShard(*model, qkv);
    REQUIRE(out.has_value());
    CHECK(out->name == "model.layers.0.self_attn.qkv_proj.weight_scale");
    REQUIRE(out->pieces.size() == 3);
    if (sc == Fp8Scaling::kChannel) {
      CHECK(out->shape == Shape::Of({512, 1}));
      CHECK(out->pieces[1].canonical == B2(0, 0, 128, 1));
      CHECK(out->pieces[1].shard == B2(256, 0, 128, 1));
      CHECK(out->pieces[2].shard == B2(384, 0, 128, 1));
    } else {  // vLLM's qkv_proj.weight_scale of 3 values
      CHECK(out->shape == Shape::Of({3, 1}));
      CHECK(out->pieces[0].shard == B2(0, 0, 1, 1));
      CHECK(out->pieces[1].canonical == B2(0, 0, 1, 1));
      CHECK(out->pieces[1].shard == B2(1, 0, 1, 1));
      CHECK(out->pieces[2].shard == B2(2, 0, 1, 1));
    }
    // Half of q's rows (a TP cut) covers whole rows but not the whole tensor.
    ShardSpec half{"q", Shape::Of({128, 64}), DType::kF8E4M3, {}};
    half.pieces.push_back({model->Find("model.layers.0.self_attn.q_proj.weight"), B2(128, 0, 128, 64), B2(0, 0, 128, 64)});
    CHECK(Fp8ScaleShard(*model, half).has_value() == (sc == Fp8Scaling::kChannel));
    // Half of its columns (a row-parallel cut) covers neither.
    half.shape = Shape::Of({256, 32});
    half.pieces[0] = {model->Find("model.layers.0.self_attn.q_proj.weight"), B2(0, 32, 256, 32), B2(0, 0, 256, 32)};
    CHECK_FALSE(Fp8ScaleShard(*model, half).has_value());
    // Rows of the buffer that no piece covers: no scale buffer.
    ShardSpec gap = qkv;
    gap.shape = Shape::Of({600, 64});
    CHECK_FALSE(Fp8ScaleShard(*model, gap).has_value());
  }
}

TEST_CASE("a model's scale tensors must fit their weights") {
  const TensorSpec w = {"model.layers.0.mlp.up_proj.weight", Shape::Of({300, 256}), DType::kBF16};
  auto ok = ModelSpec::Create({w, {"s", Shape::Of({3, 2}), DType::kF32, w.name}});
  INFO(ok.status().ToString());
  REQUIRE(ok.ok());
  CHECK(ok->ScalesOf(1) == 0);
  CHECK(ok->ScaleTensorOf(0) == 1);
  CHECK(ok->ScalesOf(0) == -1);
  CHECK(ok->ScaleTensorOf(1) == -1);
  auto err = [&](std::vector<TensorSpec> t) {
    auto m = ModelSpec::Create(std::move(t));
    REQUIRE_FALSE(m.ok());
    return std::string(m.status().message());
  };
  CHECK(err({w, {"s", Shape::Of({2, 2}), DType::kF32, w.name}}) ==
        "scale tensor 's' of 'model.layers.0.mlp.up_proj.weight' is fp32 [2, 2]; its scales of [300, 256] are fp32 "
        "[3, 2] (block), or [300, 1] (channel), or [1, 1] (tensor)");
  CHECK(err({w, {"w_scale_inv", Shape::Of({300, 1}), DType::kF32, w.name}}) ==
        "scale tensor 'w_scale_inv' of 'model.layers.0.mlp.up_proj.weight' is fp32 [300, 1]; its scales of "
        "[300, 256] are fp32 [3, 2] (block)");
  auto channel = ModelSpec::Create({w, {"w_scale", Shape::Of({300, 1}), DType::kF32, w.name}});
  REQUIRE(channel.ok());
  CHECK(channel->ScalingOf(0) == Fp8Scaling::kChannel);
  CHECK((channel->ScaleGroupOf(0).rows == 1 && channel->ScaleGroupOf(0).cols == 256));
  CHECK_THAT(err({w, {"s", Shape::Of({3, 2}), DType::kBF16, w.name}}), Catch::Contains("is bf16 [3, 2]"));
  CHECK_THAT(err({w, {"s", Shape::Of({3, 2}), DType::kF32, "nope"}}), Catch::Contains("the model has no such tensor"));
  CHECK_THAT(err({w, {"s", Shape::Of({3, 2}), DType::kF32, w.name}, {"t", Shape::Of({3, 2}), DType::kF32, w.name}}),
             Catch::Contains("'s' already holds its scales"));
  CHECK_THAT(err({{"v", Shape::Of({300}), DType::kBF16}, {"s", Shape::Of({3}), DType::kF32, "v"}}),
             Catch::Contains("FP8 scales are for 2-d weights"));
}

}  // namespace
}  // namespace wsync::layout
