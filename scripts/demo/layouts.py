"""Independent numpy reconstruction of the layouts the demo and tests use.

Written from Megatron-LM's and vLLM's conventions, separately from the C++
recipes (daemon/layout), so that the daemon's output can be checked against
it byte for byte. Covers the Qwen3-MoE family: GQA with q/k norms, every
layer MoE (no shared expert), untied embeddings.
"""
import numpy as np


def hf_tensors(c):
    """Canonical Hugging Face tensors: name -> shape."""
    H, nh, ng, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    E, I, V = c["num_experts"], c["moe_intermediate_size"], c["vocab_size"]
    t = {"model.embed_tokens.weight": (V, H)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = (H,)
        t[p + "self_attn.q_proj.weight"] = (nh * hd, H)
        t[p + "self_attn.k_proj.weight"] = (ng * hd, H)
        t[p + "self_attn.v_proj.weight"] = (ng * hd, H)
        t[p + "self_attn.q_norm.weight"] = (hd,)
        t[p + "self_attn.k_norm.weight"] = (hd,)
        t[p + "self_attn.o_proj.weight"] = (H, nh * hd)
        t[p + "post_attention_layernorm.weight"] = (H,)
        t[p + "mlp.gate.weight"] = (E, H)
        for e in range(E):
            t[p + f"mlp.experts.{e}.gate_proj.weight"] = (I, H)
            t[p + f"mlp.experts.{e}.up_proj.weight"] = (I, H)
            t[p + f"mlp.experts.{e}.down_proj.weight"] = (H, I)
    t["model.norm.weight"] = (H,)
    t["lm_head.weight"] = (V, H)
    return t


LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_tensors(c, r):
    """PEFT adapter tensors on the attention projections: name -> shape."""
    t = {}
    shapes = hf_tensors(c)
    for l in range(c["num_hidden_layers"]):
        for m in LORA_MODULES:
            base = f"model.layers.{l}.self_attn.{m}"
            out, inp = shapes[base + ".weight"]
            t[base + ".lora_A.weight"] = (r, inp)
            t[base + ".lora_B.weight"] = (out, r)
    return t


def megatron_rank(c, w, tp, tp_size, pp, pp_size):
    """Megatron-LM core buffers of rank (tp, pp): name -> array (from canonical `w`)."""
    H, nh, ng, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    E, V, L = c["num_experts"], c["vocab_size"], c["num_hidden_layers"]
    q = nh // ng
    groups = ng // tp_size
    vp = -(-V // (128 * tp_size)) * 128 * tp_size  # make_vocab_size_divisible_by=128, times TP
    out = {}

    def vocab(name):
        rows = vp // tp_size
        a = np.zeros((rows, H), np.float32)
        lo, hi = tp * rows, min(V, (tp + 1) * rows)
        if hi > lo:
            a[: hi - lo] = w[name][lo:hi]
        return a

    if pp == 0:
        out["embedding.word_embeddings.weight"] = vocab("model.embed_tokens.weight")
    per = L // pp_size
    for j in range(per):
        l = pp * per + j
        p, m = f"model.layers.{l}.", f"decoder.layers.{l}."  # global layer numbers
        out[m + "self_attention.linear_qkv.layer_norm_weight"] = w[p + "input_layernorm.weight"]
        rows = []
        for g in range(tp * groups, (tp + 1) * groups):  # per query group: q heads, k, v
            rows += [w[p + "self_attn.q_proj.weight"][g * q * hd:(g + 1) * q * hd],
                     w[p + "self_attn.k_proj.weight"][g * hd:(g + 1) * hd],
                     w[p + "self_attn.v_proj.weight"][g * hd:(g + 1) * hd]]
        out[m + "self_attention.linear_qkv.weight"] = np.concatenate(rows)
        out[m + "self_attention.q_layernorm.weight"] = w[p + "self_attn.q_norm.weight"]
        out[m + "self_attention.k_layernorm.weight"] = w[p + "self_attn.k_norm.weight"]
        cols = nh * hd // tp_size
        out[m + "self_attention.linear_proj.weight"] = w[p + "self_attn.o_proj.weight"][:, tp * cols:(tp + 1) * cols]
        out[m + "pre_mlp_layernorm.weight"] = w[p + "post_attention_layernorm.weight"]
        out[m + "mlp.router.weight"] = w[p + "mlp.gate.weight"]
        for e in range(E):  # EP = 1, expert-TP = 1: every rank holds every expert whole (EDP copies)
            ep = p + f"mlp.experts.{e}."
            out[m + f"mlp.experts.linear_fc1.weight{e}"] = np.concatenate(
                [w[ep + "gate_proj.weight"], w[ep + "up_proj.weight"]])
            out[m + f"mlp.experts.linear_fc2.weight{e}"] = w[ep + "down_proj.weight"]
    if pp == pp_size - 1:
        out["decoder.final_layernorm.weight"] = w["model.norm.weight"]
        out["output_layer.weight"] = vocab("lm_head.weight")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def vllm_rank(c, w, tp, tp_size):
    """vLLM buffers of TP rank tp: name -> fp32 array (from canonical `w`)."""
    H, nh, ng, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    E, I, V, L = c["num_experts"], c["moe_intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    vp = -(-V // 64) * 64
    rows = vp // tp_size
    out = {}

    def vocab(name):
        a = np.zeros((rows, H), np.float32)
        lo, hi = tp * rows, min(V, (tp + 1) * rows)
        if hi > lo:
            a[: hi - lo] = w[name][lo:hi]
        return a

    qh = nh // tp_size
    if ng >= tp_size:
        kvh, kv0 = ng // tp_size, tp * (ng // tp_size)
    else:
        kvh, kv0 = 1, tp // (tp_size // ng)  # KV head replicated on tp_size/ng ranks
    out["model.embed_tokens.weight"] = vocab("model.embed_tokens.weight")
    for l in range(L):
        p = f"model.layers.{l}."
        out[p + "input_layernorm.weight"] = w[p + "input_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = w[p + "post_attention_layernorm.weight"]
        out[p + "self_attn.qkv_proj.weight"] = np.concatenate([
            w[p + "self_attn.q_proj.weight"][tp * qh * hd:(tp + 1) * qh * hd],
            w[p + "self_attn.k_proj.weight"][kv0 * hd:(kv0 + kvh) * hd],
            w[p + "self_attn.v_proj.weight"][kv0 * hd:(kv0 + kvh) * hd]])
        out[p + "self_attn.q_norm.weight"] = w[p + "self_attn.q_norm.weight"]
        out[p + "self_attn.k_norm.weight"] = w[p + "self_attn.k_norm.weight"]
        out[p + "self_attn.o_proj.weight"] = w[p + "self_attn.o_proj.weight"][:, tp * qh * hd:(tp + 1) * qh * hd]
        out[p + "mlp.gate.weight"] = w[p + "mlp.gate.weight"]
        il = I // tp_size  # FusedMoE under TP: every expert, intermediate rows split
        w13 = np.empty((E, 2 * il, H), np.float32)
        w2 = np.empty((E, H, il), np.float32)
        for e in range(E):
            ep = p + f"mlp.experts.{e}."
            w13[e, :il] = w[ep + "gate_proj.weight"][tp * il:(tp + 1) * il]
            w13[e, il:] = w[ep + "up_proj.weight"][tp * il:(tp + 1) * il]
            w2[e] = w[ep + "down_proj.weight"][:, tp * il:(tp + 1) * il]
        out[p + "mlp.experts.routed_experts.w13_weight"] = w13  # vLLM >= 0.33 names
        out[p + "mlp.experts.routed_experts.w2_weight"] = w2
    out["model.norm.weight"] = w["model.norm.weight"]
    out["lm_head.weight"] = vocab("lm_head.weight")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def to_bf16(x):
    """fp32 -> bf16 bits, round to nearest even (inputs have no NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def merged(c, w, lora, scale, r):
    """Canonical weights with the adapters merged, in float64 (the reference)."""
    out = dict(w)
    for l in range(c["num_hidden_layers"]):
        for m in LORA_MODULES:
            base = f"model.layers.{l}.self_attn.{m}"
            a = lora[base + ".lora_A.weight"].astype(np.float64)
            b = lora[base + ".lora_B.weight"].astype(np.float64)
            out[base + ".weight"] = (w[base + ".weight"].astype(np.float64) + scale * (b @ a)).astype(np.float64)
    return out


def canonical(c, seed, scale=0.05):
    """Deterministic canonical weights for `seed` (fp32)."""
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in hf_tensors(c).items()}


def adapters(c, seed, r):
    rng = np.random.default_rng(seed + 1_000_003)
    return {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in lora_tensors(c, r).items()}
