#include "tests/testing/model_proto.h"

namespace wsync::testing {

v1::RegisterModelRequest ModelRequest(const std::string& model_id, const layout::ModelConfig& config) {
  v1::RegisterModelRequest m;
  m.set_model_id(model_id);
  v1::ModelConfig* c = m.mutable_config();
  c->set_family(config.family);
  c->set_hidden_size(config.hidden_size);
  c->set_num_attention_heads(config.num_attention_heads);
  c->set_num_key_value_heads(config.num_key_value_heads);
  c->set_head_dim(config.head_dim);
  c->set_intermediate_size(config.intermediate_size);
  c->set_vocab_size(config.vocab_size);
  c->set_num_hidden_layers(config.num_hidden_layers);
  c->set_tie_word_embeddings(config.tie_word_embeddings);
  c->set_attention_bias(config.attention_bias);
  c->set_qk_norm(config.qk_norm);
  c->set_num_experts(config.num_experts);
  c->set_moe_intermediate_size(config.moe_intermediate_size);
  c->set_shared_expert_intermediate_size(config.shared_expert_intermediate_size);
  c->set_decoder_sparse_step(config.decoder_sparse_step);
  for (int64_t l : config.mlp_only_layers) c->add_mlp_only_layers(l);
  c->set_q_lora_rank(config.q_lora_rank);
  c->set_kv_lora_rank(config.kv_lora_rank);
  c->set_qk_nope_head_dim(config.qk_nope_head_dim);
  c->set_qk_rope_head_dim(config.qk_rope_head_dim);
  c->set_v_head_dim(config.v_head_dim);
  c->set_first_k_dense_replace(config.first_k_dense_replace);
  c->set_moe_layer_freq(config.moe_layer_freq);
  c->set_num_shared_experts(config.num_shared_experts);
  c->set_n_group(config.n_group);
  c->set_router_bias(config.router_bias);
  return m;
}

}  // namespace wsync::testing
