#include "daemon/layout/model_config.h"

#include <algorithm>
#include <tuple>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace wsync::layout {
namespace {

const char* const kFamilies[] = {"llama",     "mistral",     "qwen2",       "qwen3",  "mixtral",
                                 "qwen2_moe", "qwen3_moe",   "deepseek_v2", "deepseek_v3", "kimi_k2"};

// Families with DeepSeek's architecture (vLLM: DeepseekV2ForCausalLM and
// its subclasses; Kimi-K2 configs name DeepseekV3ForCausalLM).
bool DeepSeekFamily(const std::string& f) { return f == "deepseek_v2" || f == "deepseek_v3" || f == "kimi_k2"; }

absl::Status Need(int64_t v, const char* field, const std::string& family) {
  if (v > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("model config (", family, "): '", field, "' must be set and > 0, got ", v));
}

}  // namespace

bool ModelConfig::IsMoeLayer(int64_t l) const {
  if (num_experts <= 0) return false;
  if (DeepSeekFamily(family)) return l >= first_k_dense_replace && l % std::max<int64_t>(moe_layer_freq, 1) == 0;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), l) != mlp_only_layers.end()) {
    return false;
  }
  int64_t step = decoder_sparse_step > 0 ? decoder_sparse_step : 1;
  return (l + 1) % step == 0;
}

int64_t ModelConfig::ExpertSize() const {
  return moe_intermediate_size > 0 ? moe_intermediate_size : intermediate_size;
}

absl::Status NormalizeConfig(ModelConfig* c) {
  if (std::find(std::begin(kFamilies), std::end(kFamilies), c->family) == std::end(kFamilies)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown model family '", c->family,
        "' (supported: llama, mistral, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3, "
        "kimi_k2; for other architectures send explicit pieces)"));
  }
  const std::string& f = c->family;
  // Bounds first, so that no loop, product or allocation below can run away
  // on a hostile config.
  constexpr int64_t kMaxDim = int64_t{1} << 31, kMaxCount = int64_t{1} << 16;
  for (auto [v, name, max] : {std::tuple{c->hidden_size, "hidden_size", kMaxDim},
                              {c->num_attention_heads, "num_attention_heads", kMaxCount},
                              {c->num_key_value_heads, "num_key_value_heads", kMaxCount},
                              {c->head_dim, "head_dim", kMaxDim},
                              {c->intermediate_size, "intermediate_size", kMaxDim},
                              {c->vocab_size, "vocab_size", kMaxDim},
                              {c->num_hidden_layers, "num_hidden_layers", kMaxCount},
                              {c->num_experts, "num_experts", kMaxCount},
                              {c->moe_intermediate_size, "moe_intermediate_size", kMaxDim},
                              {c->shared_expert_intermediate_size, "shared_expert_intermediate_size", kMaxDim},
                              {c->decoder_sparse_step, "decoder_sparse_step", kMaxCount},
                              {c->q_lora_rank, "q_lora_rank", kMaxDim},
                              {c->kv_lora_rank, "kv_lora_rank", kMaxDim},
                              {c->qk_nope_head_dim, "qk_nope_head_dim", kMaxDim},
                              {c->qk_rope_head_dim, "qk_rope_head_dim", kMaxDim},
                              {c->v_head_dim, "v_head_dim", kMaxDim},
                              {c->first_k_dense_replace, "first_k_dense_replace", kMaxCount},
                              {c->moe_layer_freq, "moe_layer_freq", kMaxCount},
                              {c->num_shared_experts, "n_shared_experts", kMaxCount},
                              {c->n_group, "n_group", kMaxCount}}) {
    if (v < 0 || v > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config (", f, "): '", name, "' = ", v, " is outside [0, ", max, "]"));
    }
  }
  if (static_cast<int64_t>(c->mlp_only_layers.size()) > c->num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("model config (", f, "): 'mlp_only_layers' lists ",
                                                   c->mlp_only_layers.size(), " layers of ",
                                                   c->num_hidden_layers));
  }
  for (auto [v, name] : {std::pair{c->hidden_size, "hidden_size"},
                         {c->num_attention_heads, "num_attention_heads"},
                         {c->vocab_size, "vocab_size"},
                         {c->num_hidden_layers, "num_hidden_layers"}}) {
    if (absl::Status s = Need(v, name, f); !s.ok()) return s;
  }
  if (c->num_key_value_heads == 0) c->num_key_value_heads = c->num_attention_heads;
  const bool deepseek = DeepSeekFamily(f);
  if (deepseek) {
    // Multi-head latent attention: every head has its own q (nope + rope)
    // and its own k_nope and v from the shared latent; head_dim and the KV
    // heads of GQA do not apply.
    for (auto [v, name] : {std::pair{c->kv_lora_rank, "kv_lora_rank"},
                           {c->qk_nope_head_dim, "qk_nope_head_dim"},
                           {c->qk_rope_head_dim, "qk_rope_head_dim"},
                           {c->v_head_dim, "v_head_dim"}}) {
      if (absl::Status s = Need(v, name, f); !s.ok()) return s;
    }
    c->head_dim = c->QkHeadDim();
    c->num_key_value_heads = c->num_attention_heads;
    if (c->moe_layer_freq == 0) c->moe_layer_freq = 1;
    if (c->n_group == 0) c->n_group = 1;
    if (c->first_k_dense_replace > c->num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat("model config (", f, "): first_k_dense_replace ",
                                                     c->first_k_dense_replace, " exceeds num_hidden_layers ",
                                                     c->num_hidden_layers));
    }
    c->decoder_sparse_step = 1;
    c->mlp_only_layers.clear();
  } else {
    c->q_lora_rank = c->kv_lora_rank = c->qk_nope_head_dim = c->qk_rope_head_dim = c->v_head_dim = 0;
    c->first_k_dense_replace = 0;
    c->moe_layer_freq = 1;
    c->num_shared_experts = 0;
    c->n_group = 1;
    c->router_bias = false;
  }
  if (c->head_dim == 0) {
    if (c->hidden_size % c->num_attention_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model config: hidden_size ", c->hidden_size, " is not divisible by num_attention_heads ",
          c->num_attention_heads, "; set head_dim"));
    }
    c->head_dim = c->hidden_size / c->num_attention_heads;
  }
  if (c->num_attention_heads % c->num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config: num_attention_heads ", c->num_attention_heads,
        " is not divisible by num_key_value_heads ", c->num_key_value_heads));
  }
  if (f == "qwen2" || f == "qwen2_moe") c->attention_bias = true;
  if (deepseek && c->attention_bias) {
    return absl::InvalidArgumentError(absl::StrCat("model config (", f, "): attention_bias = true is not part "
                                                   "of the DeepSeek architecture the recipes know"));
  }
  if (f == "qwen3" || f == "qwen3_moe") c->qk_norm = true;
  const bool moe_family = f == "mixtral" || f == "qwen2_moe" || f == "qwen3_moe";
  if (deepseek && c->num_experts > 0) {
    if (absl::Status s = Need(c->moe_intermediate_size, "moe_intermediate_size", f); !s.ok()) return s;
  } else if (deepseek) {
    c->num_shared_experts = 0;  // n_routed_experts null: every layer is dense
    c->router_bias = false;
  } else if (moe_family) {
    if (absl::Status s = Need(c->num_experts, "num_experts", f); !s.ok()) return s;
    if (absl::Status s = Need(c->ExpertSize(), "moe_intermediate_size", f); !s.ok()) return s;
  } else if (c->num_experts > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: family '", f, "' is dense but num_experts = ", c->num_experts));
  }
  if (f == "mixtral") {
    c->decoder_sparse_step = 1;
    c->mlp_only_layers.clear();
    c->moe_intermediate_size = c->intermediate_size;
  }
  bool any_dense = false;
  for (int64_t l = 0; l < c->num_hidden_layers; ++l) any_dense |= !c->IsMoeLayer(l);
  if (any_dense) {
    if (absl::Status s = Need(c->intermediate_size, "intermediate_size", f); !s.ok()) return s;
  }
  if (deepseek) {
    c->shared_expert_intermediate_size = c->moe_intermediate_size * c->num_shared_experts;
  } else if (f != "qwen2_moe") {
    c->shared_expert_intermediate_size = 0;
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("config.json is not a JSON object");
  }
  ModelConfig c;
  auto get_int = [&](const char* key, int64_t* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' must be an integer"));
    }
    *out = it->get<int64_t>();
    return absl::OkStatus();
  };
  auto get_bool = [&](const char* key, bool* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' must be a boolean"));
    }
    *out = it->get<bool>();
    return absl::OkStatus();
  };
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) {
    return absl::InvalidArgumentError("config.json: 'model_type' is missing");
  }
  c.family = mt->get<std::string>();
  for (auto [key, out] : {std::pair{"hidden_size", &c.hidden_size},
                          {"num_attention_heads", &c.num_attention_heads},
                          {"num_key_value_heads", &c.num_key_value_heads},
                          {"head_dim", &c.head_dim},
                          {"intermediate_size", &c.intermediate_size},
                          {"vocab_size", &c.vocab_size},
                          {"num_hidden_layers", &c.num_hidden_layers},
                          {"moe_intermediate_size", &c.moe_intermediate_size},
                          {"shared_expert_intermediate_size", &c.shared_expert_intermediate_size},
                          {"decoder_sparse_step", &c.decoder_sparse_step},
                          {"q_lora_rank", &c.q_lora_rank},
                          {"kv_lora_rank", &c.kv_lora_rank},
                          {"qk_nope_head_dim", &c.qk_nope_head_dim},
                          {"qk_rope_head_dim", &c.qk_rope_head_dim},
                          {"v_head_dim", &c.v_head_dim},
                          {"first_k_dense_replace", &c.first_k_dense_replace},
                          {"moe_layer_freq", &c.moe_layer_freq},
                          {"n_shared_experts", &c.num_shared_experts},
                          {"n_group", &c.n_group}}) {
    if (absl::Status s = get_int(key, out); !s.ok()) return s;
  }
  // DeepSeek calls the routed experts n_routed_experts; topk_method noaux_tc
  // adds the router's score-correction bias.
  if (absl::Status s = get_int("n_routed_experts", &c.num_experts); !s.ok()) return s;
  if (auto it = j.find("topk_method"); it != j.end() && it->is_string()) {
    c.router_bias = it->get<std::string>() == "noaux_tc";
  }
  // Mixtral calls it num_local_experts; Qwen MoE models num_experts.
  if (absl::Status s = get_int("num_local_experts", &c.num_experts); !s.ok()) return s;
  if (absl::Status s = get_int("num_experts", &c.num_experts); !s.ok()) return s;
  if (absl::Status s = get_bool("tie_word_embeddings", &c.tie_word_embeddings); !s.ok()) return s;
  if (absl::Status s = get_bool("attention_bias", &c.attention_bias); !s.ok()) return s;
  if (auto it = j.find("mlp_only_layers"); it != j.end() && it->is_array()) {
    for (const auto& v : *it) {
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError("config.json: 'mlp_only_layers' must hold integers");
      }
      c.mlp_only_layers.push_back(v.get<int64_t>());
    }
  }
  if (auto it = j.find("mlp_bias"); it != j.end() && it->is_boolean() && it->get<bool>()) {
    return absl::InvalidArgumentError("config.json: mlp_bias = true is not supported by the recipes");
  }
  if (absl::Status s = NormalizeConfig(&c); !s.ok()) return s;
  return c;
}

MoeNames MoeNamesFor(const ModelConfig& c, int64_t l) {
  MoeNames n;
  const std::string layer = absl::StrCat("model.layers.", l, ".");
  if (c.family == "mixtral") {
    n.router = layer + "block_sparse_moe.gate.weight";
    n.expert_prefix = layer + "block_sparse_moe.experts.";
    n.gate = "w1";
    n.up = "w3";
    n.down = "w2";
  } else {
    n.router = layer + "mlp.gate.weight";
    n.expert_prefix = layer + "mlp.experts.";
    n.gate = "gate_proj";
    n.up = "up_proj";
    n.down = "down_proj";
  }
  if (c.shared_expert_intermediate_size > 0 && DeepSeekFamily(c.family)) {
    n.shared_prefix = layer + "mlp.shared_experts.";
  } else if (c.shared_expert_intermediate_size > 0) {
    n.shared_prefix = layer + "mlp.shared_expert.";
    n.shared_gate = layer + "mlp.shared_expert_gate.weight";
  }
  if (c.router_bias) n.router_bias = layer + "mlp.gate.e_score_correction_bias";
  return n;
}

absl::StatusOr<std::vector<TensorSpec>> CanonicalTensors(const ModelConfig& input, DType dtype,
                                                         int64_t max_tensors) {
  ModelConfig c = input;
  if (absl::Status s = NormalizeConfig(&c); !s.ok()) return s;
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_attention_heads,
                ng = c.num_key_value_heads;
  std::vector<TensorSpec> t;
  auto add = [&](std::string name, Shape shape) { t.push_back({std::move(name), shape, dtype}); };
  add("model.embed_tokens.weight", Shape::Of({c.vocab_size, H}));
  auto too_many = [&] {
    return absl::InvalidArgumentError(absl::StrCat("model config (", c.family, "): ", c.num_hidden_layers,
                                                   " layers and ", c.num_experts, " experts make more than ",
                                                   max_tensors, " tensors"));
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (static_cast<int64_t>(t.size()) > max_tensors) return too_many();
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", Shape::Of({H}));
    if (c.IsMla()) {
      // HF's DeepseekV3Attention (and V2's), in checkpoint order.
      const int64_t qk = c.QkHeadDim(), kvr = c.kv_lora_rank;
      if (c.q_lora_rank > 0) {
        add(p + "self_attn.q_a_proj.weight", Shape::Of({c.q_lora_rank, H}));
        add(p + "self_attn.q_a_layernorm.weight", Shape::Of({c.q_lora_rank}));
        add(p + "self_attn.q_b_proj.weight", Shape::Of({nh * qk, c.q_lora_rank}));
      } else {
        add(p + "self_attn.q_proj.weight", Shape::Of({nh * qk, H}));
      }
      add(p + "self_attn.kv_a_proj_with_mqa.weight", Shape::Of({kvr + c.qk_rope_head_dim, H}));
      add(p + "self_attn.kv_a_layernorm.weight", Shape::Of({kvr}));
      add(p + "self_attn.kv_b_proj.weight", Shape::Of({nh * (c.qk_nope_head_dim + c.v_head_dim), kvr}));
      add(p + "self_attn.o_proj.weight", Shape::Of({H, nh * c.v_head_dim}));
    } else {
      add(p + "self_attn.q_proj.weight", Shape::Of({nh * hd, H}));
      add(p + "self_attn.k_proj.weight", Shape::Of({ng * hd, H}));
      add(p + "self_attn.v_proj.weight", Shape::Of({ng * hd, H}));
      if (c.attention_bias) {
        add(p + "self_attn.q_proj.bias", Shape::Of({nh * hd}));
        add(p + "self_attn.k_proj.bias", Shape::Of({ng * hd}));
        add(p + "self_attn.v_proj.bias", Shape::Of({ng * hd}));
      }
      if (c.qk_norm) {
        add(p + "self_attn.q_norm.weight", Shape::Of({hd}));
        add(p + "self_attn.k_norm.weight", Shape::Of({hd}));
      }
      add(p + "self_attn.o_proj.weight", Shape::Of({H, nh * hd}));
    }
    add(p + "post_attention_layernorm.weight", Shape::Of({H}));
    if (!c.IsMoeLayer(l)) {
      const int64_t I = c.intermediate_size;
      add(p + "mlp.gate_proj.weight", Shape::Of({I, H}));
      add(p + "mlp.up_proj.weight", Shape::Of({I, H}));
      add(p + "mlp.down_proj.weight", Shape::Of({H, I}));
      continue;
    }
    const MoeNames n = MoeNamesFor(c, l);
    const int64_t Ie = c.ExpertSize();
    add(n.router, Shape::Of({c.num_experts, H}));
    if (!n.router_bias.empty()) t.push_back({n.router_bias, Shape::Of({c.num_experts}), DType::kF32});
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string ep = absl::StrCat(n.expert_prefix, e, ".");
      add(ep + n.gate + ".weight", Shape::Of({Ie, H}));
      add(ep + n.up + ".weight", Shape::Of({Ie, H}));
      add(ep + n.down + ".weight", Shape::Of({H, Ie}));
    }
    if (!n.shared_prefix.empty()) {
      const int64_t Is = c.shared_expert_intermediate_size;
      add(n.shared_prefix + "gate_proj.weight", Shape::Of({Is, H}));
      add(n.shared_prefix + "up_proj.weight", Shape::Of({Is, H}));
      add(n.shared_prefix + "down_proj.weight", Shape::Of({H, Is}));
      if (!n.shared_gate.empty()) add(n.shared_gate, Shape::Of({1, H}));
    }
  }
  add("model.norm.weight", Shape::Of({H}));
  if (!c.tie_word_embeddings) add("lm_head.weight", Shape::Of({c.vocab_size, H}));
  if (static_cast<int64_t>(t.size()) > max_tensors) return too_many();
  return t;
}

}  // namespace wsync::layout
