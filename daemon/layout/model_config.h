#ifndef WSYNC_DAEMON_LAYOUT_MODEL_CONFIG_H_
#define WSYNC_DAEMON_LAYOUT_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/layout/types.h"

namespace wsync::layout {

// Architecture hyper-parameters, as in a Hugging Face config.json.
struct ModelConfig {
  // "llama", "mistral", "qwen2", "qwen3" (dense GQA); "mixtral", "qwen2_moe",
  // "qwen3_moe" (MoE); "deepseek_v2", "deepseek_v3", "kimi_k2" (multi-head
  // latent attention, dense first layers, routed and shared experts). Read
  // from config.json's "model_type".
  std::string family;
  int64_t hidden_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;  // dense MLP (Mixtral: the expert MLP)
  int64_t vocab_size = 0;
  int64_t num_hidden_layers = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v bias (always on for qwen2 and qwen2_moe)
  bool qk_norm = false;         // per-head q/k RMSNorm (qwen3, qwen3_moe)
  int64_t num_experts = 0;
  int64_t moe_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  // DeepSeek families. Multi-head latent attention: q_lora_rank 0 (null in
  // config.json) means a plain q_proj instead of q_a_proj/q_b_proj.
  int64_t q_lora_rank = 0;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // Layers below first_k_dense_replace are dense; after them every
  // moe_layer_freq-th layer (l % freq == 0) has experts.
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t num_shared_experts = 0;  // n_shared_experts, each moe_intermediate_size wide
  int64_t n_group = 1;             // expert groups of the router (vLLM: round_robin needs > 1)
  bool router_bias = false;        // topk_method "noaux_tc": mlp.gate.e_score_correction_bias (fp32)

  bool IsMoe() const { return num_experts > 0; }
  bool IsMla() const { return kv_lora_rank > 0; }
  // Per-head width of q and k (MLA: nope + rope).
  int64_t QkHeadDim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Whether layer `l` has experts (else a dense MLP).
  bool IsMoeLayer(int64_t l) const;
  // Per-expert MLP width.
  int64_t ExpertSize() const;
};

// Parses a Hugging Face config.json. Unknown model types and missing or
// non-positive required fields are INVALID_ARGUMENT naming the field.
absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& json_text);

// Fills defaults (head_dim, num_key_value_heads, family traits) and checks
// that the numbers fit together (heads divide hidden, etc.).
absl::Status NormalizeConfig(ModelConfig* config);

// Family-specific names of the MoE parts of layer `l` (Hugging Face side).
struct MoeNames {
  std::string router;                 // e.g. model.layers.3.mlp.gate.weight
  std::string expert_prefix;          // e.g. model.layers.3.mlp.experts.
  std::string gate, up, down;         // per-expert suffixes: "gate_proj" or "w1", ...
  std::string shared_prefix;          // model.layers.3.mlp.shared_expert. ("" = none)
  std::string shared_gate;            // model.layers.3.mlp.shared_expert_gate.weight ("" = none)
  std::string router_bias;            // model.layers.3.mlp.gate.e_score_correction_bias ("" = none)
};
MoeNames MoeNamesFor(const ModelConfig& config, int64_t layer);

// The canonical (Hugging Face) tensors of the model, in checkpoint order,
// of dtype `dtype` except the router biases, which are fp32 (as vLLM and
// Megatron-core keep them). INVALID_ARGUMENT as soon as the config makes more
// than `max_tensors`, before any more are generated.
absl::StatusOr<std::vector<TensorSpec>> CanonicalTensors(const ModelConfig& config, DType dtype,
                                                         int64_t max_tensors = INT64_MAX);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_MODEL_CONFIG_H_
