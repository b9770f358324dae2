"""DeepSeek-V3-family models built by the real vLLM 0.33 package on CPU
(DeepseekV3ForCausalLM: multi-head latent attention with fused_qkv_a_proj,
one dense first layer, routed experts with a shared expert, the router's
fp32 score-correction bias, two expert groups) receive a sync from a Hugging
Face checkpoint and hold, byte for byte, what vLLM's own load_weights makes
of that checkpoint: at TP=1, TP=2, and TP=2 with expert parallelism under
linear and round-robin expert placement. A DeepSeek-V2-Lite-shaped model (a
plain q_proj, no router bias) runs at TP=2.

The harness is test_vllm.py's: each worker builds the model class twice,
registers one through wsync.vllm (probe on) and loads the checkpoint into
the other. The CPU MoE kernel needs hidden and per-rank expert widths
divisible by 32, hence the sizes."""
import os

import numpy as np
import pytest
import torch.multiprocessing as mp

import wsync
import wsync.vllm
from conftest import wait_registered
from reference import as_numpy, free_port
import vllm_cpu
from test_vllm import checkpoint, hf_source

V3 = {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 64, "moe_intermediate_size": 64,
      "num_hidden_layers": 2, "vocab_size": 100, "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
      "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 1,
      "num_experts_per_tok": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 2, "topk_group": 1,
      "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
      "max_position_embeddings": 256, "tie_word_embeddings": False}
V2_LITE = dict(V3, model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"], q_lora_rank=None,
               n_group=1, topk_method="greedy", scoring_func="softmax", n_shared_experts=2)


def worker(rank, world, port, sock, ckpt, ep, placement, registered, synced, results, done):
    from safetensors.torch import load_file
    with vllm_cpu.models(ckpt, world, rank, port, "float32", ep, placement) as (vc, target, reference):
        reference.load_weights(iter(load_file(os.path.join(ckpt, "model.safetensors")).items()))
        # vLLM's loader derives the MLA layers' W_UK_T and W_UV from
        # kv_b_proj once loaded (here: from the dummy weights), as parameters
        # that registration leaves out.
        assert wsync.vllm.refresh_derived(target) == 2
        client = wsync.Client(socket=sock, name=f"vllm-{rank}")
        wsync.vllm.register(client, target, "policy", replica="gen")
        options = wsync.vllm.recipe_options(target)
        registered.put((rank, options.get("expert_placement")))
        synced.wait(600)
        want = dict(reference.named_parameters())
        weights = {n: p for n, p in target.named_parameters() if n in want}
        assert len(weights) == len(want)
        bad = [n for n, p in weights.items()
               if not np.array_equal(as_numpy(p).view(np.uint8), as_numpy(want[n]).view(np.uint8))]
        names = sorted(weights)
        # The derived tensors are stale until refreshed, then equal vLLM's
        # from its own load.
        wsync.vllm.refresh_derived(reference)
        stale = derived(target)
        assert all(not np.array_equal(stale[k], v) for k, v in derived(reference).items())
        wsync.vllm.refresh_derived(target)
        fresh, ref = derived(target), derived(reference)
        bad += [k for k in ref if not np.array_equal(fresh[k].view(np.uint8), ref[k].view(np.uint8))]
        results.put((rank, bad, names))
        done.wait(600)
        client.close()


def derived(model):
    """The MLA layers' tensors vLLM derives after loading, by name."""
    return {f"{n}.{k}": as_numpy(getattr(m, k)) for n, m in model.named_modules()
            if type(m).__name__ == "MLAAttention" for k in ("W_UV", "W_UK_T")}


@pytest.mark.parametrize("cfg,tp,ep,placement", [
    (V3, 1, False, "linear"), (V3, 2, False, "linear"), (V3, 2, True, "linear"), (V3, 2, True, "round_robin"),
    (V2_LITE, 2, False, "linear")],
    ids=["v3-tp1", "v3-tp2", "v3-tp2-ep-linear", "v3-tp2-ep-round-robin", "v2-lite-tp2"])
def test_deepseek_models_receive_what_their_loader_would_load(cfg, tp, ep, placement, daemon, tmp_path):
    hf = checkpoint(cfg, str(tmp_path))
    client, _ = hf_source(daemon, cfg, hf)
    ctx = mp.get_context("spawn")
    registered, synced, results, done = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    procs = mp.start_processes(worker, nprocs=tp, join=False, start_method="spawn",
                               args=(tp, free_port(), daemon, str(tmp_path), ep, placement, registered, synced,
                                     results, done))
    try:
        placements = {p for _, p in wait_registered(procs, registered, tp)}
        # vLLM applies round-robin placement only with several expert groups
        # and expert parallelism; wsync.vllm reports what each layer uses.
        assert placements == {placement if ep else "linear"}
        assert client.sync("policy", 1, progress=False).version == 1
        synced.set()
        for rank, bad, names in sorted(wait_registered(procs, results, tp)):
            assert not bad, f"vLLM process {rank}: parameters differ from vLLM's own load_weights: {bad}"
            if cfg is V3:
                assert "model.layers.0.self_attn.fused_qkv_a_proj.weight" in names
                assert "model.layers.1.mlp.gate.e_score_correction_bias" in names
                assert "model.layers.1.mlp.shared_experts.gate_up_proj.weight" in names
                assert "model.layers.0.mlp.gate_up_proj.weight" in names  # the dense first layer
            else:
                assert "model.layers.0.self_attn.q_proj.weight" in names
    finally:
        synced.set()
        done.set()
        procs.join(timeout=60)
        client.close()
