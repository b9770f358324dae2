// The vLLM layout. See docs/layouts.md.
#include "absl/strings/str_cat.h"
#include "daemon/layout/recipe_internal.h"

namespace wsync::layout::internal {
namespace {

// The global experts expert rank `rank` of `size` holds, in local order
// (vllm/model_executor/layers/fused_moe/expert_map_manager.py):
// linear gives rank r E/n experts from r*(E/n) + min(r, E%n), the first E%n
// ranks one more; round_robin gives it r, r+n, r+2n, ...
std::vector<int64_t> LocalExperts(int64_t E, int rank, int size, bool round_robin) {
  std::vector<int64_t> out;
  if (round_robin) {
    for (int64_t e = rank; e < E; e += size) out.push_back(e);
    return out;
  }
  const int64_t base = E / size, rem = E % size;
  const int64_t count = base + (rank < rem ? 1 : 0);
  const int64_t first = rank * base + std::min<int64_t>(rank, rem);
  for (int64_t i = 0; i < count; ++i) out.push_back(first + i);
  return out;
}

}  // namespace

absl::StatusOr<std::vector<ShardSpec>> Vllm(const ModelSpec& model, const ModelConfig& c,
                                            const RecipeOptions& options, const RankCoords& r,
                                            DType dtype) {
  if (absl::Status s = CheckOptions("vllm", options, {"vocab_padding", "expert_placement", "moe_names", "qkv_a"});
      !s.ok()) {
    return s;
  }
  std::string placement = "linear", moe_names = "routed_experts", qkv_a = "fused";
  if (auto it = options.find("expert_placement"); it != options.end()) placement = it->second;
  if (auto it = options.find("moe_names"); it != options.end()) moe_names = it->second;
  if (auto it = options.find("qkv_a"); it != options.end()) qkv_a = it->second;
  if (qkv_a != "fused" && qkv_a != "separate") {
    return absl::InvalidArgumentError(absl::StrCat(
        "vllm recipe option qkv_a='", qkv_a,
        "' must be fused (DeepseekV2MLAAttention: self_attn.fused_qkv_a_proj) or separate "
        "(DeepseekV2Attention, without MLA: q_a_proj and kv_a_proj_with_mqa)"));
  }
  if (placement != "linear" && placement != "round_robin") {
    return absl::InvalidArgumentError(absl::StrCat("vllm recipe option expert_placement='", placement,
                                                   "' must be linear or round_robin"));
  }
  if (moe_names != "routed_experts" && moe_names != "legacy") {
    return absl::InvalidArgumentError(absl::StrCat(
        "vllm recipe option moe_names='", moe_names,
        "' must be routed_experts (mlp.experts.routed_experts.w13_weight, vLLM >= 0.33) or legacy "
        "(mlp.experts.w13_weight)"));
  }
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_attention_heads,
                ng = c.num_key_value_heads, L = c.num_hidden_layers;
  const int tp = r.tp, T = r.tp_size;
  for (absl::Status s : {Divides(nh, T, "num_attention_heads", "vllm tp_size"),
                         Divides(L, r.pp_size, "num_hidden_layers", "vllm pp_size")}) {
    if (!s.ok()) return s;
  }
  // KV heads: split when there are at least as many as ranks, else each rank
  // holds one, replicated tp_size / ng times (MLA: every head has its own).
  int64_t kv_local, kv_first;
  if (c.IsMla()) {
    kv_local = nh / T;
    kv_first = tp * kv_local;
  } else if (ng >= T) {
    if (absl::Status s = Divides(ng, T, "num_key_value_heads", "vllm tp_size"); !s.ok()) return s;
    kv_local = ng / T;
    kv_first = tp * kv_local;
  } else {
    if (absl::Status s = Divides(T, ng, "vllm tp_size", "num_key_value_heads"); !s.ok()) return s;
    kv_local = 1;
    kv_first = tp / (T / ng);
  }
  auto padded = PaddedVocab("vllm", options, c.vocab_size, T);
  if (!padded.ok()) return padded.status();
  const int64_t Vp = *padded;
  if (absl::Status s = Divides(Vp, T, "padded vocab", "vllm tp_size"); !s.ok()) return s;

  Builder b(model, dtype);
  const bool first = r.pp == 0, last = r.pp == r.pp_size - 1;
  if (first) {
    b.Add("model.embed_tokens.weight", Shape::Of({Vp / T, H}));
    VocabRows(b, b.Last(), "model.embed_tokens.weight", c.vocab_size, Vp, tp, T, H);
  }
  const int64_t per_stage = L / r.pp_size;
  const int64_t q_local = nh / T;
  for (int64_t l = r.pp * per_stage; l < (r.pp + 1) * per_stage; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    for (const char* norm : {"input_layernorm.weight", "post_attention_layernorm.weight"}) {
      b.Add(p + norm, Shape::Of({H}));
      b.Map(b.Last(), p + norm, Range(0, H), Range(0, H));
    }
    if (c.IsMla()) {
      // vllm/model_executor/models/deepseek_v2.py, DeepseekV2MLAAttention:
      // q_a and kv_a stacked in fused_qkv_a_proj and replicated
      // (disable_tp); q_b_proj, q_proj and kv_b_proj split by heads
      // (ColumnParallelLinear), o_proj by heads' v columns (RowParallel).
      const int64_t qa = c.q_lora_rank, kva = c.kv_lora_rank + c.qk_rope_head_dim, kvr = c.kv_lora_rank;
      const int64_t q_rows = q_local * c.QkHeadDim(), kv_rows = q_local * (c.qk_nope_head_dim + c.v_head_dim),
                    v_cols = q_local * c.v_head_dim;
      auto whole = [&](const std::string& name, Shape shape) {
        b.Add(p + name, shape);
        b.Map(b.Last(), p + name, Box::Whole(shape), Box::Whole(shape));
      };
      if (qa > 0 && qkv_a == "fused") {
        b.Add(p + "self_attn.fused_qkv_a_proj.weight", Shape::Of({qa + kva, H}));
        b.Map(b.Last(), p + "self_attn.q_a_proj.weight", Rows(0, qa, H), Rows(0, qa, H));
        b.Map(b.Last(), p + "self_attn.kv_a_proj_with_mqa.weight", Rows(0, kva, H), Rows(qa, kva, H));
      } else {
        if (qa > 0) whole("self_attn.q_a_proj.weight", Shape::Of({qa, H}));
        whole("self_attn.kv_a_proj_with_mqa.weight", Shape::Of({kva, H}));
      }
      if (qa > 0) {
        whole("self_attn.q_a_layernorm.weight", Shape::Of({qa}));
        b.Add(p + "self_attn.q_b_proj.weight", Shape::Of({q_rows, qa}));
        b.Map(b.Last(), p + "self_attn.q_b_proj.weight", Rows(tp * q_rows, q_rows, qa), Rows(0, q_rows, qa));
      } else {
        b.Add(p + "self_attn.q_proj.weight", Shape::Of({q_rows, H}));
        b.Map(b.Last(), p + "self_attn.q_proj.weight", Rows(tp * q_rows, q_rows, H), Rows(0, q_rows, H));
      }
      whole("self_attn.kv_a_layernorm.weight", Shape::Of({kvr}));
      b.Add(p + "self_attn.kv_b_proj.weight", Shape::Of({kv_rows, kvr}));
      b.Map(b.Last(), p + "self_attn.kv_b_proj.weight", Rows(tp * kv_rows, kv_rows, kvr), Rows(0, kv_rows, kvr));
      b.Add(p + "self_attn.o_proj.weight", Shape::Of({H, v_cols}));
      b.Map(b.Last(), p + "self_attn.o_proj.weight", Cols(H, tp * v_cols, v_cols), Cols(H, 0, v_cols));
    }
    const int64_t q_rows = q_local * hd, kv_rows = kv_local * hd;
    if (!c.IsMla()) {
      b.Add(p + "self_attn.qkv_proj.weight", Shape::Of({q_rows + 2 * kv_rows, H}));
      b.Map(b.Last(), p + "self_attn.q_proj.weight", Rows(tp * q_rows, q_rows, H), Rows(0, q_rows, H));
      b.Map(b.Last(), p + "self_attn.k_proj.weight", Rows(kv_first * hd, kv_rows, H),
            Rows(q_rows, kv_rows, H));
      b.Map(b.Last(), p + "self_attn.v_proj.weight", Rows(kv_first * hd, kv_rows, H),
            Rows(q_rows + kv_rows, kv_rows, H));
      if (c.attention_bias) {
        b.Add(p + "self_attn.qkv_proj.bias", Shape::Of({q_rows + 2 * kv_rows}));
        b.Map(b.Last(), p + "self_attn.q_proj.bias", Range(tp * q_rows, q_rows), Range(0, q_rows));
        b.Map(b.Last(), p + "self_attn.k_proj.bias", Range(kv_first * hd, kv_rows),
              Range(q_rows, kv_rows));
        b.Map(b.Last(), p + "self_attn.v_proj.bias", Range(kv_first * hd, kv_rows),
              Range(q_rows + kv_rows, kv_rows));
      }
      if (c.qk_norm) {
        for (const char* norm : {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}) {
          b.Add(p + norm, Shape::Of({hd}));
          b.Map(b.Last(), p + norm, Range(0, hd), Range(0, hd));
        }
      }
      b.Add(p + "self_attn.o_proj.weight", Shape::Of({H, q_rows}));
      b.Map(b.Last(), p + "self_attn.o_proj.weight", Cols(H, tp * q_rows, q_rows), Cols(H, 0, q_rows));
    }

    if (!c.IsMoeLayer(l)) {
      const int64_t I = c.intermediate_size;
      if (absl::Status s = Divides(I, T, "intermediate_size", "vllm tp_size"); !s.ok()) return s;
      const int64_t Il = I / T;
      b.Add(p + "mlp.gate_up_proj.weight", Shape::Of({2 * Il, H}));
      b.Map(b.Last(), p + "mlp.gate_proj.weight", Rows(tp * Il, Il, H), Rows(0, Il, H));
      b.Map(b.Last(), p + "mlp.up_proj.weight", Rows(tp * Il, Il, H), Rows(Il, Il, H));
      b.Add(p + "mlp.down_proj.weight", Shape::Of({H, Il}));
      b.Map(b.Last(), p + "mlp.down_proj.weight", Cols(H, tp * Il, Il), Cols(H, 0, Il));
      continue;
    }

    const MoeNames n = MoeNamesFor(c, l);
    const std::string moe = c.family == "mixtral" ? p + "block_sparse_moe." : p + "mlp.";
    const int64_t E = c.num_experts, Ie = c.ExpertSize();
    b.Add(moe + "gate.weight", Shape::Of({E, H}));
    b.Map(b.Last(), n.router, Rows(0, E, H), Rows(0, E, H));
    if (!n.router_bias.empty()) {  // an fp32 parameter whatever the model's dtype
      b.Add(moe + "gate.e_score_correction_bias", Shape::Of({E}))->dtype = DType::kF32;
      b.Map(b.Last(), n.router_bias, Range(0, E), Range(0, E));
    }
    // Experts: expert rank ep holds whole experts (placement), each split
    // over etp. vLLM uses one or the other: with enable_expert_parallel,
    // ep over dp x tp and etp 1; without, etp over dp x tp and ep 1.
    if (absl::Status s = Divides(Ie, r.etp_size, "moe_intermediate_size", "vllm expert tp size (dp x tp)");
        !s.ok()) {
      return s;
    }
    const std::vector<int64_t> local = LocalExperts(E, r.ep, r.ep_size, placement == "round_robin");
    const int64_t Il = Ie / r.etp_size, i_rank = r.etp;
    const int64_t e_count = static_cast<int64_t>(local.size());
    if (e_count > 0) {
      const std::string experts = moe + (moe_names == "legacy" ? "experts." : "experts.routed_experts.");
      b.Add(experts + "w13_weight", Shape::Of({e_count, 2 * Il, H}));
      size_t w13 = b.Last();
      b.Add(experts + "w2_weight", Shape::Of({e_count, H, Il}));
      size_t w2 = b.Last();
      for (int64_t i = 0; i < e_count; ++i) {
        const std::string ep = absl::StrCat(n.expert_prefix, local[i], ".");
        b.Map(w13, ep + n.gate + ".weight", Rows(i_rank * Il, Il, H), Slab3(i, 0, Il, 0, H));
        b.Map(w13, ep + n.up + ".weight", Rows(i_rank * Il, Il, H), Slab3(i, Il, Il, 0, H));
        b.Map(w2, ep + n.down + ".weight", Cols(H, i_rank * Il, Il), Slab3(i, 0, H, 0, Il));
      }
    }
    if (!n.shared_prefix.empty()) {
      const int64_t Is = c.shared_expert_intermediate_size;
      if (absl::Status s = Divides(Is, T, "shared_expert_intermediate_size", "vllm tp_size");
          !s.ok()) {
        return s;
      }
      const int64_t Isl = Is / T;
      b.Add(n.shared_prefix + "gate_up_proj.weight", Shape::Of({2 * Isl, H}));
      b.Map(b.Last(), n.shared_prefix + "gate_proj.weight", Rows(tp * Isl, Isl, H), Rows(0, Isl, H));
      b.Map(b.Last(), n.shared_prefix + "up_proj.weight", Rows(tp * Isl, Isl, H), Rows(Isl, Isl, H));
      b.Add(n.shared_prefix + "down_proj.weight", Shape::Of({H, Isl}));
      b.Map(b.Last(), n.shared_prefix + "down_proj.weight", Cols(H, tp * Isl, Isl), Cols(H, 0, Isl));
      if (!n.shared_gate.empty()) {
        b.Add(n.shared_gate, Shape::Of({1, H}));
        b.Map(b.Last(), n.shared_gate, Rows(0, 1, H), Rows(0, 1, H));
      }
    }
  }
  if (last) {
    b.Add("model.norm.weight", Shape::Of({H}));
    b.Map(b.Last(), "model.norm.weight", Range(0, H), Range(0, H));
    // Tied embeddings share embed_tokens, except on a last stage that lacks
    // it (pp_size > 1), which keeps lm_head as its own copy.
    if (!c.tie_word_embeddings || r.pp_size > 1) {
      b.Add("lm_head.weight", Shape::Of({Vp / T, H}));
      VocabRows(b, b.Last(), c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
                c.vocab_size, Vp, tp, T, H);
    }
  }
  return b.Finish();
}

}  // namespace wsync::layout::internal
