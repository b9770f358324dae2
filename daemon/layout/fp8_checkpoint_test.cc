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

}  // namespace
}  // namespace wsync::layout
