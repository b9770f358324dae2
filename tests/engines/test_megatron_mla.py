"""A real Megatron-core 0.16 multi-latent-attention model (DeepSeek-V3
shape: MLA with q LoRA, a dense first layer, routed experts, a shared expert
and the router's expert bias) registered through wsync.megatron and synced
to the hf layout, byte for byte, at TP=1, TP=2 and TP=2 with EP=2.

As in test_megatron.py, every process labels its parameters by their global
position in Megatron-core's own placement (sharded_state_dict()), and the
expected Hugging Face tensors come from the plain numpy function below, not
from wsync. The model is built with the local layer spec on CPU, which
megatron-core 0.16 cannot do unaided; three test-only shims, none of which
touches a weight:
- MLA's RotaryEmbedding asks CUDA for the current device even with
  use_cpu_initialization: torch.cuda.current_device answers "cpu";
- multi_latent_attention.py sets HAVE_TE when Transformer Engine is absent
  (its extension module imports, with TELinear = None) and then calls
  isinstance(x, None): HAVE_TE is set to what it is, False;
- the local spec's DotProductAttention does not accept the k_channels and
  v_channels MLA passes: a subclass drops them (core attention holds no
  parameters).
The TE spec needs Transformer Engine (a GPU) and is not built here; its
names are covered by the recipe and `wsyncctl convert` tests."""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import wsync
import wsync.megatron
from conftest import wait_registered
from reference import as_numpy, free_port, wsync_dtype
from test_megatron import DIVISIBLE_BY, global_tensors, label_shards, padded_vocab

V = 100
CFG = {"model_type": "deepseek_v3", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 4,
       "intermediate_size": 16, "moe_intermediate_size": 8, "num_hidden_layers": 2, "vocab_size": V,
       "q_lora_rank": 8, "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 4,
       "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1, "moe_layer_freq": 1,
       "n_group": 1, "topk_method": "noaux_tc", "tie_word_embeddings": False}


def trainer(rank, world, port, sock, out, sizes, registered, done):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.cuda.current_device = lambda: "cpu"  # shim 1
    import megatron.core.transformer.multi_latent_attention as mla
    mla.HAVE_TE = False  # shim 2
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    class CoreAttention(DotProductAttention):  # shim 3
        def __init__(self, *args, k_channels=None, v_channels=None, **kwargs):
            super().__init__(*args, **kwargs)

    tp = sizes.get("tp", 1)
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, expert_model_parallel_size=sizes.get("ep", 1),
                                 expert_tensor_parallel_size=sizes.get("etp"))
    torch.manual_seed(99)
    c = CFG
    config = MLATransformerConfig(
        num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"], num_attention_heads=c["num_attention_heads"],
        ffn_hidden_size=c["intermediate_size"], use_cpu_initialization=True, add_bias_linear=False,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, normalization="RMSNorm",
        params_dtype=torch.float32, tensor_model_parallel_size=tp, sequence_parallel=False,
        expert_model_parallel_size=sizes.get("ep", 1), expert_tensor_parallel_size=sizes.get("etp"),
        multi_latent_attention=True, q_lora_rank=c["q_lora_rank"], kv_lora_rank=c["kv_lora_rank"],
        qk_head_dim=c["qk_nope_head_dim"], qk_pos_emb_head_dim=c["qk_rope_head_dim"], v_head_dim=c["v_head_dim"],
        rope_type="rope", qk_layernorm=True, num_moe_experts=c["n_routed_experts"],
        moe_ffn_hidden_size=c["moe_intermediate_size"],
        moe_shared_expert_intermediate_size=c["moe_intermediate_size"] * c["n_shared_experts"],
        moe_layer_freq=[0] * c["first_k_dense_replace"] + [1] * (c["num_hidden_layers"] - c["first_k_dense_replace"]),
        moe_router_enable_expert_bias=True, moe_router_score_function="sigmoid",
        moe_token_dispatcher_type="allgather", moe_router_topk=2)
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False)
    for layer in spec.layer_specs:
        layer.submodules.self_attention.submodules.core_attention = CoreAttention
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=padded_vocab(tp), max_sequence_length=64,
                     pre_process=True, post_process=True, share_embeddings_and_output_weights=False,
                     position_embedding_type="rope")

    pieces = label_shards([model])
    client = wsync.Client(socket=sock, name=f"megatron-{rank}")
    params = wsync.megatron.register(client, model, "policy", make_vocab_size_divisible_by=DIVISIBLE_BY)
    np.save(os.path.join(out, f"trainer-{rank}.npy"), np.array({
        "pieces": pieces, "names": sorted(params), "options": wsync.megatron.recipe_options(model, DIVISIBLE_BY)},
        dtype=object), allow_pickle=True)
    registered.put(rank)
    done.wait(600)
    client.close()
    dist.destroy_process_group()


def mla_megatron_to_hf(g, cfg):
    """Global Megatron tensors of the MLA model -> the Hugging Face checkpoint,
    from Megatron-core's module names (multi_latent_attention.py, moe/) and
    HF's DeepseekV3 names; no permutation: both keep heads contiguous, q as
    [nope, rope] and kv_b as [k_nope, v] per head, kv_a as [latent, rope]."""
    def at(key, l):
        per_layer = f"decoder.layers.{l}.{key}"
        return g[per_layer] if per_layer in g else g[f"decoder.layers.{key}"][l]

    hf = {"model.embed_tokens.weight": g["embedding.word_embeddings.weight"][:V],
          "lm_head.weight": g["output_layer.weight"][:V],
          "model.norm.weight": g["decoder.final_layernorm.weight"]}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        for hf_name, meg in (("input_layernorm.weight", "input_layernorm.weight"),
                             ("self_attn.q_a_proj.weight", "self_attention.linear_q_down_proj.weight"),
                             ("self_attn.q_a_layernorm.weight", "self_attention.q_layernorm.weight"),
                             ("self_attn.q_b_proj.weight", "self_attention.linear_q_up_proj.weight"),
                             ("self_attn.kv_a_proj_with_mqa.weight", "self_attention.linear_kv_down_proj.weight"),
                             ("self_attn.kv_a_layernorm.weight", "self_attention.kv_layernorm.weight"),
                             ("self_attn.kv_b_proj.weight", "self_attention.linear_kv_up_proj.weight"),
                             ("self_attn.o_proj.weight", "self_attention.linear_proj.weight"),
                             ("post_attention_layernorm.weight", "pre_mlp_layernorm.weight")):
            hf[p + hf_name] = at(meg, l)
        if l < cfg["first_k_dense_replace"]:
            I = cfg["intermediate_size"]
            fc1 = at("mlp.linear_fc1.weight", l)
            hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"] = fc1[:I], fc1[I:]
            hf[p + "mlp.down_proj.weight"] = at("mlp.linear_fc2.weight", l)
            continue
        hf[p + "mlp.gate.weight"] = at("mlp.router.weight", l)
        hf[p + "mlp.gate.e_score_correction_bias"] = at("mlp.router.expert_bias", l)
        I = cfg["moe_intermediate_size"]
        for e in range(cfg["n_routed_experts"]):
            fc1 = at("mlp.experts.experts.linear_fc1.weight", l)[e]
            hf[p + f"mlp.experts.{e}.gate_proj.weight"], hf[p + f"mlp.experts.{e}.up_proj.weight"] = fc1[:I], fc1[I:]
            hf[p + f"mlp.experts.{e}.down_proj.weight"] = at("mlp.experts.experts.linear_fc2.weight", l)[e]
        Is = I * cfg["n_shared_experts"]
        fc1 = at("mlp.shared_experts.linear_fc1.weight", l)
        hf[p + "mlp.shared_experts.gate_proj.weight"] = fc1[:Is]
        hf[p + "mlp.shared_experts.up_proj.weight"] = fc1[Is:]
        hf[p + "mlp.shared_experts.down_proj.weight"] = at("mlp.shared_experts.linear_fc2.weight", l)
    return hf


@pytest.mark.parametrize("sizes", [dict(tp=1), dict(tp=2), dict(tp=2, ep=2, etp=1)],
                         ids=["tp1", "tp2", "tp2-ep2-etp1"])
def test_megatron_mla_to_hf(sizes, daemon, tmp_path):
    world = sizes.get("tp", 1)
    client = wsync.Client(socket=daemon, name="test")
    client.register_model("policy", config=CFG)
    ctx = mp.get_context("spawn")
    registered, done = ctx.Queue(), ctx.Event()
    procs = mp.start_processes(trainer, nprocs=world, join=False, start_method="spawn",
                               args=(world, free_port(), daemon, str(tmp_path), sizes, registered, done))
    try:
        wait_registered(procs, registered, world)
        reports = [np.load(tmp_path / f"trainer-{r}.npy", allow_pickle=True).item() for r in range(world)]
        assert reports[0]["options"]["spec"] == "local"
        assert "decoder.layers.1.mlp.router.expert_bias" in reports[0]["names"]
        hf = mla_megatron_to_hf(global_tensors(reports), CFG)
        bufs = {n: client.empty(t.shape, wsync_dtype(t)) for n, t in hf.items()}
        for b in bufs.values():
            b.fill(0x5A)
        client.register_shards("policy", "target", bufs, rank=dict(rank=0, world_size=1), recipe="hf", replica="hf")
        assert client.sync("policy", 1, progress=False).version == 1
        for n, b in bufs.items():
            want = np.ascontiguousarray(hf[n])
            assert np.array_equal(b.view(np.uint8), want.view(np.uint8)), f"{sizes}: {n} differs"
    finally:
        done.set()
        procs.join(timeout=60)
        client.close()
