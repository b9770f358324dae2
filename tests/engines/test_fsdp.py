"""Real FSDP2 models (Transformers v5 classes sharded with fully_shard on CPU
under gloo), registered through wsync.fsdp, synced to hf (per-expert and
fused) and vLLM layouts, byte for byte.

The expected bytes come from FSDP2 itself: every process all-gathers each
parameter (DTensor.full_tensor()), and the numpy references in reference.py
turn those Hugging Face tensors into the targets' layouts."""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import wsync
import wsync.fsdp
from conftest import wait_registered
from reference import as_numpy, free_port, fused_to_per_expert, hf_to_vllm, wsync_dtype

MOE = {"model_type": "qwen3_moe", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
       "head_dim": 4, "intermediate_size": 24, "moe_intermediate_size": 8, "num_experts": 4,
       "num_experts_per_tok": 2, "decoder_sparse_step": 1, "num_hidden_layers": 2, "vocab_size": 100,
       "tie_word_embeddings": False}
DENSE = {"model_type": "qwen2", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 4, "intermediate_size": 24, "num_hidden_layers": 2, "vocab_size": 100,
         "tie_word_embeddings": False}


def trainer(rank, world, port, sock, out, cfg, registered, done):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import transformers
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(7)
    model = transformers.AutoModelForCausalLM.from_config(config)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    full = {n: as_numpy(p.full_tensor()) for n, p in model.named_parameters()}
    client = wsync.Client(socket=sock, name=f"fsdp-{rank}")
    reg = wsync.fsdp.register(client, model, "policy")
    if rank == 0:
        np.save(os.path.join(out, "full.npy"), np.array(full, dtype=object), allow_pickle=True)
    registered.put((rank, sorted(reg.buffers)))
    done.wait(600)
    client.close()
    dist.destroy_process_group()


@pytest.mark.parametrize("cfg,world", [(MOE, 2), (MOE, 3), (DENSE, 3)], ids=["moe-dp2", "moe-dp3", "dense-dp3"])
def test_fsdp2_to_hf_and_vllm(cfg, world, daemon, tmp_path):
    client = wsync.Client(socket=daemon, name="test")
    client.register_model("policy", config=cfg)
    ctx = mp.get_context("spawn")
    registered, done = ctx.Queue(), ctx.Event()
    procs = mp.start_processes(trainer, nprocs=world, join=False, start_method="spawn",
                               args=(world, free_port(), daemon, str(tmp_path), cfg, registered, done))
    try:
        wait_registered(procs, registered, world)
        full = np.load(tmp_path / "full.npy", allow_pickle=True).item()
        moe = bool(cfg.get("num_experts"))
        assert not moe or "model.layers.0.mlp.experts.gate_up_proj" in full  # Transformers v5: fused
        hf = fused_to_per_expert(full, cfg)
        targets = {"hf": [("hf", {}, dict(rank=0, world_size=1), hf)],
                   "vllm-tp2": [("vllm", {}, dict(rank=r, world_size=2, tp=r, tp_size=2, etp=r, etp_size=2), t)
                                for r, t in enumerate(hf_to_vllm(hf, cfg, 2, False))]}
        if moe:
            targets["hf-fused"] = [("hf", {"experts": "fused"}, dict(rank=0, world_size=1), full)]
            targets["vllm-tp2-ep"] = [("vllm", {}, dict(rank=r, world_size=2, tp=r, tp_size=2, ep=r, ep_size=2), t)
                                      for r, t in enumerate(hf_to_vllm(hf, cfg, 2, True))]
        buffers = {}
        for rid, procs_of in targets.items():
            for r, (recipe, options, coords, tensors) in enumerate(procs_of):
                bufs = {n: client.empty(t.shape, wsync_dtype(t)) for n, t in tensors.items()}
                client.register_shards("policy", "target", bufs, rank=coords, recipe=recipe,
                                       recipe_options=options, replica=rid)
                buffers[(rid, r)] = bufs
        assert client.sync("policy", 1, progress=False).version == 1
        for (rid, r), bufs in buffers.items():
            want = targets[rid][r][3]
            for n, b in bufs.items():
                assert np.array_equal(b.view(np.uint8), np.ascontiguousarray(want[n]).view(np.uint8)), (rid, r, n)
    finally:
        done.set()
        procs.join(timeout=60)
        client.close()


def test_flat_partitions_are_refused(daemon):
    """DeepSpeed ZeRO-3's flat partitions are named in an error instead of
    being registered wrongly (FSDP1 FlatParameters are refused the same way)."""
    client = wsync.Client(socket=daemon, name="test")
    model = torch.nn.Linear(4, 4)
    model.weight.ds_id = 3  # what DeepSpeed ZeRO-3 puts on its partitions
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 partition"):
        wsync.fsdp.register(client, model, "policy")
    client.close()
