"""Plain numpy references of the engines' layouts, written from their
sources and independent of wsync's recipes (docs/layouts.md cites the files):
Megatron-core's global tensors (as its sharded_state_dict places them) to
Hugging Face tensors, Transformers v5 fused experts to per-expert tensors,
and Hugging Face tensors to each vLLM 0.33 process's parameters."""
import socket

import numpy as np
import torch


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_numpy(t):
    """Raw values: fp32 as float32, bf16 as its uint16 bit patterns."""
    t = t.detach().cpu().contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy().copy()


def wsync_dtype(a):
    return "bf16" if a.dtype == np.uint16 else "fp32"


def megatron_to_hf(g, cfg):
    """Global Megatron tensors -> the Hugging Face checkpoint."""
    H, nh, ng, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    q = nh // ng
    V = cfg["vocab_size"]
    hf = {"model.embed_tokens.weight": g["embedding.word_embeddings.weight"][:V],
          "lm_head.weight": g["output_layer.weight"][:V],
          "model.norm.weight": g["decoder.final_layernorm.weight"]}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        qkv = g["decoder.layers.self_attention.linear_qkv.weight"][l].reshape(ng, q + 2, hd, H)
        hf[p + "self_attn.q_proj.weight"] = qkv[:, :q].reshape(nh * hd, H)
        hf[p + "self_attn.k_proj.weight"] = qkv[:, q].reshape(ng * hd, H)
        hf[p + "self_attn.v_proj.weight"] = qkv[:, q + 1].reshape(ng * hd, H)
        if "decoder.layers.self_attention.linear_qkv.bias" in g:
            b = g["decoder.layers.self_attention.linear_qkv.bias"][l].reshape(ng, q + 2, hd)
            hf[p + "self_attn.q_proj.bias"] = b[:, :q].reshape(-1)
            hf[p + "self_attn.k_proj.bias"] = b[:, q].reshape(-1)
            hf[p + "self_attn.v_proj.bias"] = b[:, q + 1].reshape(-1)
        if "decoder.layers.self_attention.q_layernorm.weight" in g:
            hf[p + "self_attn.q_norm.weight"] = g["decoder.layers.self_attention.q_layernorm.weight"][l]
            hf[p + "self_attn.k_norm.weight"] = g["decoder.layers.self_attention.k_layernorm.weight"][l]
        hf[p + "self_attn.o_proj.weight"] = g["decoder.layers.self_attention.linear_proj.weight"][l]
        hf[p + "input_layernorm.weight"] = g["decoder.layers.self_attention.linear_qkv.layer_norm_weight"][l]
        hf[p + "post_attention_layernorm.weight"] = g["decoder.layers.mlp.linear_fc1.layer_norm_weight"][l]
        if cfg.get("num_experts"):
            hf[p + "mlp.gate.weight"] = g["decoder.layers.mlp.router.weight"][l]
            I = cfg["moe_intermediate_size"]
            for e in range(cfg["num_experts"]):
                fc1 = g["decoder.layers.mlp.experts.experts.linear_fc1.weight"][l, e]
                hf[p + f"mlp.experts.{e}.gate_proj.weight"] = fc1[:I]
                hf[p + f"mlp.experts.{e}.up_proj.weight"] = fc1[I:]
                hf[p + f"mlp.experts.{e}.down_proj.weight"] = g["decoder.layers.mlp.experts.experts.linear_fc2.weight"][l, e]
        else:
            I = cfg["intermediate_size"]
            fc1 = g["decoder.layers.mlp.linear_fc1.weight"][l]
            hf[p + "mlp.gate_proj.weight"] = fc1[:I]
            hf[p + "mlp.up_proj.weight"] = fc1[I:]
            hf[p + "mlp.down_proj.weight"] = g["decoder.layers.mlp.linear_fc2.weight"][l]
    return hf


def hf_to_vllm(hf, cfg, tp_size, expert_parallel):
    """HF tensors -> each vLLM process's parameters (vLLM 0.33 names), one dict per tp rank."""
    H, nh, ng, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    V = cfg["vocab_size"]
    ranks = []
    for r in range(tp_size):
        out = {}
        vp = (V + 63) // 64 * 64
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            full = np.zeros((vp, H), hf[name].dtype)
            full[:V] = hf[name]
            out[name] = full[r * vp // tp_size:(r + 1) * vp // tp_size]
        out["model.norm.weight"] = hf["model.norm.weight"]
        qh = nh // tp_size
        kv = [r * ng // tp_size] if ng >= tp_size else [r // (tp_size // ng)]
        if ng >= tp_size:
            kv = list(range(r * ng // tp_size, (r + 1) * ng // tp_size))
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            for n in ("input_layernorm.weight", "post_attention_layernorm.weight",
                      "self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                if p + n in hf:
                    out[p + n] = hf[p + n]
            for kind in ("weight", "bias"):
                if p + "self_attn.q_proj." + kind not in hf:
                    continue
                qp, kp, vp_ = (hf[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv")
                heads = lambda t, hs: np.concatenate([t[h * hd:(h + 1) * hd] for h in hs])  # noqa: E731
                out[p + "self_attn.qkv_proj." + kind] = np.concatenate(
                    [heads(qp, range(r * qh, (r + 1) * qh)), heads(kp, kv), heads(vp_, kv)])
            o = hf[p + "self_attn.o_proj.weight"]
            out[p + "self_attn.o_proj.weight"] = o[:, r * qh * hd:(r + 1) * qh * hd]
            if cfg.get("num_experts"):
                E, I = cfg["num_experts"], cfg["moe_intermediate_size"]
                out[p + "mlp.gate.weight"] = hf[p + "mlp.gate.weight"]
                ex = lambda e, n: hf[p + f"mlp.experts.{e}.{n}_proj.weight"]  # noqa: E731
                if expert_parallel:   # linear placement, whole experts
                    per = E // tp_size
                    mine, rows = range(r * per, (r + 1) * per), slice(0, I)
                else:                 # every expert, intermediate split over tp
                    mine, rows = range(E), slice(r * I // tp_size, (r + 1) * I // tp_size)
                pre = p + "mlp.experts.routed_experts."
                out[pre + "w13_weight"] = np.stack([np.concatenate([ex(e, "gate")[rows], ex(e, "up")[rows]])
                                                    for e in mine])
                out[pre + "w2_weight"] = np.stack([ex(e, "down")[:, rows] for e in mine])
            else:
                I = cfg["intermediate_size"]
                rows = slice(r * I // tp_size, (r + 1) * I // tp_size)
                out[p + "mlp.gate_up_proj.weight"] = np.concatenate(
                    [hf[p + "mlp.gate_proj.weight"][rows], hf[p + "mlp.up_proj.weight"][rows]])
                out[p + "mlp.down_proj.weight"] = hf[p + "mlp.down_proj.weight"][:, rows]
        ranks.append(out)
    return ranks


def to_torch(a):
    """The inverse of as_numpy (uint16 arrays are bf16 bits)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if a.dtype == np.uint16 else t


def fused_to_per_expert(hf, cfg):
    """Transformers v5 MoE checkpoints -> v4 names: gate_up_proj [E, 2I, H]
    holds gate rows then up rows (its forward chunks the output in 2),
    down_proj [E, H, I]."""
    out = {}
    I = cfg.get("moe_intermediate_size", 0)
    for n, t in hf.items():
        if n.endswith(".mlp.experts.gate_up_proj"):
            pre = n[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = t[e, :I]
                out[f"{pre}{e}.up_proj.weight"] = t[e, I:]
        elif n.endswith(".mlp.experts.down_proj"):
            pre = n[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = t[e]
        else:
            out[n] = t
    return out
