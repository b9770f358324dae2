#include "daemon/layout/model_config.h"

#include <catch2/catch.hpp>

namespace wsync::layout {
namespace {

uint64_t Params(const ModelConfig& c) {
  auto t = CanonicalTensors(c, DType::kF32);
  REQUIRE(t.ok());
  uint64_t n = 0;
  for (const TensorSpec& s : *t) n += s.shape.NumElements();
  return n;
}

// Published configs; the parameter counts are the models' published totals.
constexpr char kLlama2_7b[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": false,
  "rms_norm_eps": 1e-05, "torch_dtype": "float16"})";

constexpr char kQwen2_7b[] = R"({
  "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
  "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
  "vocab_size": 152064, "tie_word_embeddings": false})";

constexpr char kMixtral[] = R"({
  "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000})";

constexpr char kQwen3Moe[] = R"({
  "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
  "moe_intermediate_size": 768, "num_attention_heads": 32, "num_key_value_heads": 4,
  "head_dim": 128, "num_hidden_layers": 48, "num_experts": 128, "num_experts_per_tok": 8,
  "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
  "tie_word_embeddings": false})";

constexpr char kQwen2Moe[] = R"({
  "model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
  "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 24,
  "num_experts": 60, "decoder_sparse_step": 1, "vocab_size": 151936})";

TEST_CASE("Llama-2-7B: 291 tensors, 6,738,415,616 parameters") {
  auto c = ParseHfConfig(kLlama2_7b);
  REQUIRE(c.ok());
  CHECK(c->head_dim == 128);
  CHECK_FALSE(c->attention_bias);
  auto t = CanonicalTensors(*c, DType::kBF16);
  REQUIRE(t.ok());
  CHECK(t->size() == 291);
  CHECK(Params(*c) == 6738415616ull);
}

TEST_CASE("Qwen2-7B: qkv bias, 7,615,616,512 parameters") {
  auto c = ParseHfConfig(kQwen2_7b);
  REQUIRE(c.ok());
  CHECK(c->attention_bias);
  CHECK(Params(*c) == 7615616512ull);
}

TEST_CASE("Mixtral-8x7B: 46,702,792,704 parameters with w1/w2/w3 experts") {
  auto c = ParseHfConfig(kMixtral);
  REQUIRE(c.ok());
  CHECK(c->num_experts == 8);
  CHECK(c->ExpertSize() == 14336);
  CHECK(Params(*c) == 46702792704ull);
  auto t = CanonicalTensors(*c, DType::kBF16);
  REQUIRE(t.ok());
  bool found = false;
  for (const auto& s : *t) found |= s.name == "model.layers.31.block_sparse_moe.experts.7.w3.weight";
  CHECK(found);
}

TEST_CASE("Qwen3-30B-A3B: q/k norms, 128 experts per layer, 30.5B parameters") {
  auto c = ParseHfConfig(kQwen3Moe);
  REQUIRE(c.ok());
  CHECK(c->qk_norm);
  CHECK(c->IsMoeLayer(0));
  CHECK(Params(*c) == 30532122624ull);
}

TEST_CASE("Qwen1.5-MoE-A2.7B: shared expert and its gate") {
  auto c = ParseHfConfig(kQwen2Moe);
  REQUIRE(c.ok());
  auto names = MoeNamesFor(*c, 3);
  CHECK(names.shared_gate == "model.layers.3.mlp.shared_expert_gate.weight");
  CHECK(Params(*c) == 14315784192ull);
}

TEST_CASE("sparse steps and mlp_only_layers choose dense layers") {
  ModelConfig c;
  c.family = "qwen2_moe";
  c.num_experts = 4;
  c.decoder_sparse_step = 2;
  c.mlp_only_layers = {3};
  CHECK_FALSE(c.IsMoeLayer(0));
  CHECK(c.IsMoeLayer(1));
  CHECK_FALSE(c.IsMoeLayer(3));
  CHECK(c.IsMoeLayer(5));
}

TEST_CASE("bad configs name the field") {
  CHECK(ParseHfConfig("[1, 2]").status().message() == "config.json is not a JSON object");
  CHECK(ParseHfConfig("{\"hidden_size\": 8}").status().message() ==
        "config.json: 'model_type' is missing");
  CHECK(ParseHfConfig(R"({"model_type": "gpt2", "hidden_size": 8})").status().message() ==
        "unknown model family 'gpt2' (supported: llama, mistral, qwen2, qwen3, mixtral, qwen2_moe, "
        "qwen3_moe; for other architectures send explicit pieces)");
  CHECK(ParseHfConfig(R"({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                          "vocab_size": 10, "intermediate_size": 4})")
            .status()
            .message() == "model config (llama): 'num_hidden_layers' must be set and > 0, got 0");
  CHECK(ParseHfConfig(R"({"model_type": "llama", "hidden_size": "8"})").status().message() ==
        "config.json: 'hidden_size' must be an integer");
  CHECK(ParseHfConfig(R"({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 3,
                          "num_key_value_heads": 2, "head_dim": 2, "vocab_size": 10,
                          "num_hidden_layers": 1, "intermediate_size": 4})")
            .status()
            .message() ==
        "model config: num_attention_heads 3 is not divisible by num_key_value_heads 2");
}

}  // namespace
}  // namespace wsync::layout
