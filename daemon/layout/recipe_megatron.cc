// The Megatron-LM core (mcore) GPT layout. See docs/layouts.md.
#include "absl/strings/str_cat.h"
#include "daemon/layout/recipe_internal.h"

namespace wsync::layout::internal {
namespace {

// A GLU fc1 of one rank: [gate rows of the rank; up rows of the rank].
void GluFc1(Builder& b, size_t shard, const std::string& gate, const std::string& up, int64_t width,
            int rank, int size, int64_t hidden) {
  const int64_t local = width / size;
  b.Map(shard, gate, Rows(rank * local, local, hidden), Rows(0, local, hidden));
  b.Map(shard, up, Rows(rank * local, local, hidden), Rows(local, local, hidden));
}

// Multi-latent attention of one layer (megatron/core/transformer/
// multi_latent_attention.py): the down projections are duplicated on every
// TP rank under the TE spec (TELinear, parallel_mode 'duplicated') but
// column-parallel under the local spec (ColumnParallelLinear, rows split;
// the output is gathered before the norm); the up projections are split by
// heads, linear_proj by the heads' v columns. The TE spec fuses q and kv
// layer norms into the up projections; input_layernorm is its own module in
// both.
absl::Status MlaAttention(Builder& b, const ModelConfig& c, bool te, const std::string& hf, const std::string& mc,
                          int tp, int T) {
  const int64_t H = c.hidden_size, hl = c.num_attention_heads / T, qa = c.q_lora_rank, kvr = c.kv_lora_rank,
                kva = c.kv_lora_rank + c.qk_rope_head_dim;
  const int64_t q_rows = hl * c.QkHeadDim(), kv_rows = hl * (c.qk_nope_head_dim + c.v_head_dim),
                v_cols = hl * c.v_head_dim;
  auto down = [&](const std::string& name, const std::string& tensor, int64_t rows) -> absl::Status {
    if (te) {
      b.Add(mc + name, Shape::Of({rows, H}));
      b.Map(b.Last(), hf + tensor, Rows(0, rows, H), Rows(0, rows, H));
      return absl::OkStatus();
    }
    if (absl::Status s = Divides(rows, T, "rows of " + tensor, "megatron tp_size (local spec)"); !s.ok()) return s;
    b.Add(mc + name, Shape::Of({rows / T, H}));
    b.Map(b.Last(), hf + tensor, Rows(tp * (rows / T), rows / T, H), Rows(0, rows / T, H));
    return absl::OkStatus();
  };
  auto norm = [&](const std::string& name, const std::string& tensor, int64_t n) {
    b.Add(mc + name, Shape::Of({n}));
    b.Map(b.Last(), hf + tensor, Range(0, n), Range(0, n));
  };
  norm("input_layernorm.weight", "input_layernorm.weight", H);
  if (qa > 0) {
    if (absl::Status s = down("self_attention.linear_q_down_proj.weight", "self_attn.q_a_proj.weight", qa); !s.ok()) {
      return s;
    }
    norm(te ? "self_attention.linear_q_up_proj.layer_norm_weight" : "self_attention.q_layernorm.weight",
         "self_attn.q_a_layernorm.weight", qa);
    b.Add(mc + "self_attention.linear_q_up_proj.weight", Shape::Of({q_rows, qa}));
    b.Map(b.Last(), hf + "self_attn.q_b_proj.weight", Rows(tp * q_rows, q_rows, qa), Rows(0, q_rows, qa));
  } else {
    b.Add(mc + "self_attention.linear_q_proj.weight", Shape::Of({q_rows, H}));
    b.Map(b.Last(), hf + "self_attn.q_proj.weight", Rows(tp * q_rows, q_rows, H), Rows(0, q_rows, H));
  }
  if (absl::Status s = down("self_attention.linear_kv_down_proj.weight", "self_attn.kv_a_proj_with_mqa.weight", kva);
      !s.ok()) {
    return s;
  }
  norm(te ? "self_attention.linear_kv_up_proj.layer_norm_weight" : "self_attention.kv_layernorm.weight",
       "self_attn.kv_a_layernorm.weight", kvr);
  b.Add(mc + "self_attention.linear_kv_up_proj.weight", Shape::Of({kv_rows, kvr}));
  b.Map(b.Last(), hf + "self_attn.kv_b_proj.weight", Rows(tp * kv_rows, kv_rows, kvr), Rows(0, kv_rows, kvr));
  b.Add(mc + "self_attention.linear_proj.weight", Shape::Of({H, v_cols}));
  b.Map(b.Last(), hf + "self_attn.o_proj.weight", Cols(H, tp * v_cols, v_cols), Cols(H, 0, v_cols));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<ShardSpec>> Megatron(const ModelSpec& model, const ModelConfig& c,
                                                const RecipeOptions& options, const RankCoords& r,
                                                DType dtype) {
  if (absl::Status s = CheckOptions("megatron", options,
                                    {"make_vocab_size_divisible_by", "spec", "moe_layout", "vpp"});
      !s.ok()) {
    return s;
  }
  std::string spec = "te";
  if (auto it = options.find("spec"); it != options.end()) spec = it->second;
  if (spec != "te" && spec != "local") {
    return absl::InvalidArgumentError(
        absl::StrCat("megatron recipe option spec='", spec, "' must be te or local"));
  }
  const bool te = spec == "te";
  std::string moe_layout = te ? "grouped" : "sequential";
  if (auto it = options.find("moe_layout"); it != options.end()) moe_layout = it->second;
  if (moe_layout != "grouped" && moe_layout != "sequential") {
    return absl::InvalidArgumentError(absl::StrCat(
        "megatron recipe option moe_layout='", moe_layout, "' must be grouped or sequential"));
  }
  auto vpp = IntOption(options, "vpp", 1);
  if (!vpp.ok()) return vpp.status();
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_attention_heads,
                ng = c.num_key_value_heads, L = c.num_hidden_layers;
  const int tp = r.tp, T = r.tp_size;
  for (absl::Status s : {Divides(nh, T, "num_attention_heads", "megatron tp_size"),
                         Divides(ng, T, "num_key_value_heads (query groups)", "megatron tp_size"),
                         Divides(L, r.pp_size * *vpp, "num_hidden_layers", "megatron pp_size x vpp")}) {
    if (!s.ok()) return s;
  }
  auto padded = PaddedVocab("megatron", options, c.vocab_size, T);
  if (!padded.ok()) return padded.status();
  const int64_t Vp = *padded;

  Builder b(model, dtype);
  const bool first = r.pp == 0, last = r.pp == r.pp_size - 1;
  if (first) {
    b.Add("embedding.word_embeddings.weight", Shape::Of({Vp / T, H}));
    VocabRows(b, b.Last(), "model.embed_tokens.weight", c.vocab_size, Vp, tp, T, H);
  }
  // Layers of this stage: with virtual pipelining, chunk v of stage pp holds
  // layers (v * pp_size + pp) * per_chunk + j. Names carry global layer and
  // expert numbers, so the chunks of one process never collide.
  const int64_t per_chunk = L / (r.pp_size * *vpp);
  const int64_t q_per_group = nh / ng;
  const int64_t groups = ng / T;
  const int64_t block = (q_per_group + 2) * hd;  // rows of one query group in linear_qkv
  for (int64_t k = 0; k < *vpp * per_chunk; ++k) {
    const int64_t chunk = k / per_chunk, j = k % per_chunk;
    const int64_t l = (chunk * r.pp_size + r.pp) * per_chunk + j;
    const std::string hf = absl::StrCat("model.layers.", l, ".");
    const std::string mc = absl::StrCat("decoder.layers.", l, ".");

    if (c.IsMla()) {
      if (absl::Status s = MlaAttention(b, c, te, hf, mc, tp, T); !s.ok()) return s;
    } else {
      // The TE spec fuses the layer norms into the next linear layer; the
      // local spec keeps them as modules of their own.
      b.Add(mc + (te ? "self_attention.linear_qkv.layer_norm_weight" : "input_layernorm.weight"),
            Shape::Of({H}));
      b.Map(b.Last(), hf + "input_layernorm.weight", Range(0, H), Range(0, H));

      b.Add(mc + "self_attention.linear_qkv.weight", Shape::Of({groups * block, H}));
      size_t qkv = b.Last();
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t G = tp * groups + g;  // global query group
        const int64_t at = g * block;
        b.Map(qkv, hf + "self_attn.q_proj.weight", Rows(G * q_per_group * hd, q_per_group * hd, H),
              Rows(at, q_per_group * hd, H));
        b.Map(qkv, hf + "self_attn.k_proj.weight", Rows(G * hd, hd, H),
              Rows(at + q_per_group * hd, hd, H));
        b.Map(qkv, hf + "self_attn.v_proj.weight", Rows(G * hd, hd, H),
              Rows(at + (q_per_group + 1) * hd, hd, H));
      }
      if (c.attention_bias) {
        b.Add(mc + "self_attention.linear_qkv.bias", Shape::Of({groups * block}));
        size_t bias = b.Last();
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t G = tp * groups + g;
          const int64_t at = g * block;
          b.Map(bias, hf + "self_attn.q_proj.bias", Range(G * q_per_group * hd, q_per_group * hd),
                Range(at, q_per_group * hd));
          b.Map(bias, hf + "self_attn.k_proj.bias", Range(G * hd, hd), Range(at + q_per_group * hd, hd));
          b.Map(bias, hf + "self_attn.v_proj.bias", Range(G * hd, hd),
                Range(at + (q_per_group + 1) * hd, hd));
        }
      }
      if (c.qk_norm) {
        b.Add(mc + "self_attention.q_layernorm.weight", Shape::Of({hd}));
        b.Map(b.Last(), hf + "self_attn.q_norm.weight", Range(0, hd), Range(0, hd));
        b.Add(mc + "self_attention.k_layernorm.weight", Shape::Of({hd}));
        b.Map(b.Last(), hf + "self_attn.k_norm.weight", Range(0, hd), Range(0, hd));
      }
      const int64_t attn_cols = nh * hd / T;
      b.Add(mc + "self_attention.linear_proj.weight", Shape::Of({H, attn_cols}));
      b.Map(b.Last(), hf + "self_attn.o_proj.weight", Cols(H, tp * attn_cols, attn_cols),
            Cols(H, 0, attn_cols));
    }

    if (!c.IsMoeLayer(l)) {
      const int64_t I = c.intermediate_size;
      if (absl::Status s = Divides(I, T, "intermediate_size", "megatron tp_size"); !s.ok()) return s;
      b.Add(mc + (te ? "mlp.linear_fc1.layer_norm_weight" : "pre_mlp_layernorm.weight"), Shape::Of({H}));
      b.Map(b.Last(), hf + "post_attention_layernorm.weight", Range(0, H), Range(0, H));
      b.Add(mc + "mlp.linear_fc1.weight", Shape::Of({2 * I / T, H}));
      GluFc1(b, b.Last(), hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight", I, tp, T, H);
      b.Add(mc + "mlp.linear_fc2.weight", Shape::Of({H, I / T}));
      b.Map(b.Last(), hf + "mlp.down_proj.weight", Cols(H, tp * (I / T), I / T), Cols(H, 0, I / T));
      continue;
    }

    // MoE layer.
    const MoeNames n = MoeNamesFor(c, l);
    const int64_t E = c.num_experts, Ie = c.ExpertSize();
    for (absl::Status s : {Divides(E, r.ep_size, "num_experts", "megatron ep_size"),
                           Divides(Ie, r.etp_size, "moe_intermediate_size", "megatron etp_size")}) {
      if (!s.ok()) return s;
    }
    b.Add(mc + "pre_mlp_layernorm.weight", Shape::Of({H}));
    b.Map(b.Last(), hf + "post_attention_layernorm.weight", Range(0, H), Range(0, H));
    b.Add(mc + "mlp.router.weight", Shape::Of({E, H}));
    b.Map(b.Last(), n.router, Rows(0, E, H), Rows(0, E, H));
    if (!n.router_bias.empty()) {  // moe_router_enable_expert_bias: an fp32 buffer
      b.Add(mc + "mlp.router.expert_bias", Shape::Of({E}))->dtype = DType::kF32;
      b.Map(b.Last(), n.router_bias, Range(0, E), Range(0, E));
    }
    // Expert rank ep holds experts [ep * E/ep_size, (ep+1) * E/ep_size),
    // each split over etp.
    const int64_t local_experts = E / r.ep_size;
    const int64_t Il = Ie / r.etp_size;
    for (int64_t i = 0; i < local_experts; ++i) {
      const int64_t e = r.ep * local_experts + i;
      const std::string ep = absl::StrCat(n.expert_prefix, e, ".");
      std::string fc1, fc2;
      if (moe_layout == "grouped") {
        fc1 = absl::StrCat(mc, "mlp.experts.linear_fc1.weight", e);
        fc2 = absl::StrCat(mc, "mlp.experts.linear_fc2.weight", e);
      } else {
        fc1 = absl::StrCat(mc, "mlp.experts.local_experts.", e, ".linear_fc1.weight");
        fc2 = absl::StrCat(mc, "mlp.experts.local_experts.", e, ".linear_fc2.weight");
      }
      b.Add(fc1, Shape::Of({2 * Il, H}));
      GluFc1(b, b.Last(), ep + n.gate + ".weight", ep + n.up + ".weight", Ie, r.etp, r.etp_size, H);
      b.Add(fc2, Shape::Of({H, Il}));
      b.Map(b.Last(), ep + n.down + ".weight", Cols(H, r.etp * Il, Il), Cols(H, 0, Il));
    }
    if (!n.shared_prefix.empty()) {
      const int64_t Is = c.shared_expert_intermediate_size;
      if (absl::Status s = Divides(Is, T, "shared_expert_intermediate_size", "megatron tp_size");
          !s.ok()) {
        return s;
      }
      b.Add(mc + "mlp.shared_experts.linear_fc1.weight", Shape::Of({2 * Is / T, H}));
      GluFc1(b, b.Last(), n.shared_prefix + "gate_proj.weight", n.shared_prefix + "up_proj.weight",
             Is, tp, T, H);
      b.Add(mc + "mlp.shared_experts.linear_fc2.weight", Shape::Of({H, Is / T}));
      b.Map(b.Last(), n.shared_prefix + "down_proj.weight", Cols(H, tp * (Is / T), Is / T),
            Cols(H, 0, Is / T));
      if (!n.shared_gate.empty()) {
        b.Add(mc + "mlp.shared_experts.gate_weight", Shape::Of({1, H}));
        b.Map(b.Last(), n.shared_gate, Rows(0, 1, H), Rows(0, 1, H));
      }
    }
  }
  if (last) {
    b.Add("decoder.final_layernorm.weight", Shape::Of({H}));
    b.Map(b.Last(), "model.norm.weight", Range(0, H), Range(0, H));
    // Tied embeddings: with one stage the embedding is reused; with several,
    // the last stage keeps its own copy as output_layer.
    if (!c.tie_word_embeddings || r.pp_size > 1) {
      b.Add("output_layer.weight", Shape::Of({Vp / T, H}));
      VocabRows(b, b.Last(), c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
                c.vocab_size, Vp, tp, T, H);
    }
  }
  return b.Finish();
}

}  // namespace wsync::layout::internal
