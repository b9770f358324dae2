#include "daemon/layout/model_config.h"

#include <catch2/catch.hpp>
#include <map>
#include <set>

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

// DeepSeek-V3's published config.json (the MTP layer 61 is not part of the
// canonical model) and Kimi-K2's.
constexpr char kDeepSeekV3[] = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
  "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_attention_heads": 128,
  "num_key_value_heads": 128, "num_hidden_layers": 61, "first_k_dense_replace": 3, "moe_layer_freq": 1,
  "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
  "topk_method": "noaux_tc", "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 129280, "tie_word_embeddings": false,
  "num_nextn_predict_layers": 1, "attention_bias": false})";

constexpr char kKimiK2[] = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "hidden_size": 7168,
  "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_attention_heads": 64,
  "num_key_value_heads": 64, "num_hidden_layers": 61, "first_k_dense_replace": 1, "moe_layer_freq": 1,
  "n_routed_experts": 384, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 1, "topk_group": 1,
  "topk_method": "noaux_tc", "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 163840, "tie_word_embeddings": false})";

// DeepSeek-V2-Lite: no q LoRA (a plain q_proj), no router bias.
constexpr char kDeepSeekV2Lite[] = R"({
  "model_type": "deepseek_v2", "hidden_size": 2048, "intermediate_size": 10944,
  "moe_intermediate_size": 1408, "num_attention_heads": 16, "num_key_value_heads": 16,
  "num_hidden_layers": 27, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_routed_experts": 64,
  "n_shared_experts": 2, "n_group": 1, "topk_method": "greedy", "q_lora_rank": null, "kv_lora_rank": 512,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 102400,
  "tie_word_embeddings": false})";

TEST_CASE("DeepSeek-V3: MLA, 3 dense layers, 256 routed + 1 shared expert, router bias; 671B parameters") {
  auto c = ParseHfConfig(kDeepSeekV3);
  REQUIRE(c.ok());
  CHECK(c->IsMla());
  CHECK(c->router_bias);
  CHECK(c->n_group == 8);
  CHECK_FALSE(c->IsMoeLayer(2));
  CHECK(c->IsMoeLayer(3));
  CHECK(c->shared_expert_intermediate_size == 2048);
  auto t = CanonicalTensors(*c, DType::kBF16);
  REQUIRE(t.ok());
  std::map<std::string, TensorSpec> by;
  for (const TensorSpec& s : *t) by[s.name] = s;
  // Shapes worked out from the config (DeepSeek-V3's model.safetensors.index.json lists the same names).
  CHECK(by.at("model.layers.0.self_attn.q_a_proj.weight").shape == Shape::Of({1536, 7168}));
  CHECK(by.at("model.layers.0.self_attn.q_b_proj.weight").shape == Shape::Of({128 * 192, 1536}));
  CHECK(by.at("model.layers.0.self_attn.kv_a_proj_with_mqa.weight").shape == Shape::Of({576, 7168}));
  CHECK(by.at("model.layers.0.self_attn.kv_b_proj.weight").shape == Shape::Of({128 * 256, 512}));
  CHECK(by.at("model.layers.0.self_attn.o_proj.weight").shape == Shape::Of({7168, 128 * 128}));
  CHECK(by.at("model.layers.0.mlp.gate_proj.weight").shape == Shape::Of({18432, 7168}));
  CHECK(by.at("model.layers.3.mlp.gate.e_score_correction_bias").dtype == DType::kF32);
  CHECK(by.at("model.layers.60.mlp.experts.255.down_proj.weight").shape == Shape::Of({7168, 2048}));
  CHECK(by.at("model.layers.60.mlp.shared_experts.up_proj.weight").shape == Shape::Of({2048, 7168}));
  CHECK(by.count("model.layers.2.mlp.gate.weight") == 0);
  // 671B as published (685B with the MTP module, which is not here).
  CHECK(Params(*c) == 671026419200ull);
}

TEST_CASE("Kimi-K2 and DeepSeek-V2-Lite take the same architecture") {
  auto k = ParseHfConfig(kKimiK2);
  REQUIRE(k.ok());
  CHECK(k->num_experts == 384);
  CHECK(k->n_group == 1);
  CHECK(k->IsMoeLayer(1));
  auto lite = ParseHfConfig(kDeepSeekV2Lite);
  REQUIRE(lite.ok());
  CHECK(lite->q_lora_rank == 0);
  CHECK_FALSE(lite->router_bias);
  auto t = CanonicalTensors(*lite, DType::kBF16);
  REQUIRE(t.ok());
  std::set<std::string> names;
  for (const TensorSpec& s : *t) names.insert(s.name);
  CHECK(names.count("model.layers.0.self_attn.q_proj.weight"));
  CHECK_FALSE(names.count("model.layers.0.self_attn.q_a_proj.weight"));
  CHECK_FALSE(names.count("model.layers.1.mlp.gate.e_score_correction_bias"));
  CHECK(names.count("model.layers.1.mlp.shared_experts.gate_proj.weight"));
  // 15.7B as published for DeepSeek-V2-Lite.
  CHECK(Params(*lite) > 15'600'000'000ull);
  CHECK(Params(*lite) < 15'800'000'000ull);
}

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
        "qwen3_moe, deepseek_v2, deepseek_v3, kimi_k2; for other architectures send explicit pieces)");
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
