// The vLLM layout. See docs/layouts.md.
#include "absl/strings/str_cat.h"
#include "daemon/layout/recipe_internal.h"

namespace wsync::layout::internal {
namespace {

// vLLM's linear expert placement: rank r of n holds E/n experts, the first
// E%n ranks one more.
void ExpertRange(int64_t E, int rank, int size, int64_t* first, int64_t* count) {
  const int64_t base = E / size, rem = E % size;
  *count = base + (rank < rem ? 1 : 0);
  *first = rank * base + std::min<int64_t>(rank, rem);
}

}  // namespace

absl::StatusOr<std::vector<ShardSpec>> Vllm(const ModelSpec& model, const ModelConfig& c,
                                            const RecipeOptions& options, const RankCoords& r,
                                            DType dtype) {
  if (absl::Status s = CheckOptions("vllm", options, {"vocab_padding"}); !s.ok()) return s;
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_attention_heads,
                ng = c.num_key_value_heads, L = c.num_hidden_layers;
  const int tp = r.tp, T = r.tp_size;
  for (absl::Status s : {Divides(nh, T, "num_attention_heads", "vllm tp_size"),
                         Divides(L, r.pp_size, "num_hidden_layers", "vllm pp_size")}) {
    if (!s.ok()) return s;
  }
  // KV heads: split when there are at least as many as ranks, else each rank
  // holds one, replicated tp_size / ng times.
  int64_t kv_local, kv_first;
  if (ng >= T) {
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
    const int64_t q_rows = q_local * hd, kv_rows = kv_local * hd;
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
    // EP: whole experts spread over ep ranks. Otherwise every rank holds all
    // experts, each split over tp.
    int64_t e_first, e_count, Il, i_rank;
    if (r.ep_size > 1) {
      ExpertRange(E, r.ep, r.ep_size, &e_first, &e_count);
      Il = Ie;
      i_rank = 0;
    } else {
      if (absl::Status s = Divides(Ie, T, "moe_intermediate_size", "vllm tp_size"); !s.ok()) return s;
      e_first = 0;
      e_count = E;
      Il = Ie / T;
      i_rank = tp;
    }
    if (e_count > 0) {
      b.Add(moe + "experts.w13_weight", Shape::Of({e_count, 2 * Il, H}));
      size_t w13 = b.Last();
      b.Add(moe + "experts.w2_weight", Shape::Of({e_count, H, Il}));
      size_t w2 = b.Last();
      for (int64_t i = 0; i < e_count; ++i) {
        const std::string ep = absl::StrCat(n.expert_prefix, e_first + i, ".");
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
      b.Add(n.shared_gate, Shape::Of({1, H}));
      b.Map(b.Last(), n.shared_gate, Rows(0, 1, H), Rows(0, 1, H));
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
