"""Real vLLM 0.33 models on CPU receive a sync, and hold exactly what vLLM's
own load_weights makes of the same Hugging Face checkpoint.

Each vLLM worker process builds its model class twice
(VLLM_TARGET_DEVICE=cpu, load_format=dummy, gloo): one instance registers as a
target through wsync.vllm, with coordinates from vLLM's parallel state and
its MoE layers' own parallel config; the other loads the checkpoint with
vLLM's load_weights. After a sync from the checkpoint (registered as an hf
source), every parameter of the first must equal the second byte for byte.
The CPU MoE kernel needs hidden and per-rank intermediate sizes divisible by
32, hence the sizes below. No forward pass runs (the wheel has no CPU ops)."""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import wsync
import wsync.vllm
from conftest import wait_registered
from reference import as_numpy, free_port, fused_to_per_expert, wsync_dtype
import vllm_cpu

DENSE = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 32,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2,
         "vocab_size": 100, "tie_word_embeddings": False}
MOE = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 32,
       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
       "moe_intermediate_size": 64, "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
       "num_hidden_layers": 2, "vocab_size": 100, "tie_word_embeddings": False}


def worker(rank, world, port, sock, ckpt, ep, replica, registered, synced, results, done, plant=None,
           dtype="float32", via_backend=False, stray=False):
    from safetensors.torch import load_file
    with vllm_cpu.models(ckpt, world, rank, port, dtype, ep) as (vc, target, reference):
        reference.load_weights(iter(load_file(os.path.join(ckpt, "model.safetensors")).items()))
        client = wsync.Client(socket=sock, name=f"vllm-{rank}")
        if plant is not None:
            # A loader that lays a parameter out differently from the recipe
            # (columns reversed), or (stray) writes it into another parameter
            # of the same shape: the probe must refuse it.
            params = dict(target.named_parameters())
            param = params[plant]
            original = param.weight_loader
            if stray:
                other = params[plant.replace(".1.", ".0.")]
                param.weight_loader = lambda p, w, *a, **k: original(other, w, *a, **k)
            else:
                param.weight_loader = lambda p, w, *a, **k: original(p, w.flip(-1), *a, **k)
            try:
                # stray: one parameter group per probe chunk, so that the
                # stray write lands outside the chunk under test.
                wsync.vllm.register(client, target, "policy", replica=replica,
                                    probe_chunk_bytes=1 if stray else 1 << 30)
                registered.put((rank, "registered"))
            except wsync.vllm.LayoutMismatch as e:
                registered.put((rank, str(e)))
            done.wait(600)
            client.close()
            return
        engine = None
        if via_backend:
            # vLLM's weight-transfer plug-in API, as a worker drives it.
            from vllm.config import WeightTransferConfig
            from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
            wsync.vllm.register_backend()
            engine = WeightTransferEngineFactory.create_engine(WeightTransferConfig(backend="wsync"), vc,
                                                               torch.device("cpu"), target)
            engine.init_transfer_engine(engine.parse_init_info(
                {"model_id": "policy", "replica": replica, "socket": sock}))
            registered.put((rank, 0.0))
        else:
            seconds = wsync.vllm.probe(client, target, "policy")
            wsync.vllm.register(client, target, "policy", replica=replica, probe_layout=False)
            registered.put((rank, seconds))
        synced.wait(600)
        if engine is not None:
            engine.start_weight_update()
            engine.update_weights({"version": 1})
            engine.finish_weight_update()
        want = dict(reference.named_parameters())
        bad = [n for n, p in target.named_parameters()
               if not np.array_equal(as_numpy(p).view(np.uint8), as_numpy(want[n]).view(np.uint8))]
        results.put((rank, bad, len(want)))
        done.wait(600)
        if engine is not None:
            engine.shutdown()
        client.close()


def checkpoint(cfg, d):
    """A Hugging Face checkpoint of random weights, made by transformers (v5
    fused experts turned into the per-expert names vLLM 0.33 loads); also
    for the DeepSeek models of test_deepseek.py."""
    import transformers
    from safetensors.torch import save_file
    kw = {k: v for k, v in cfg.items() if k != "model_type"}
    config = transformers.AutoConfig.for_model(cfg["model_type"], **kw)
    torch.manual_seed(11)
    model = transformers.AutoModelForCausalLM.from_config(config)
    full = {n: as_numpy(p) for n, p in model.state_dict().items()}
    hf = fused_to_per_expert(full, cfg)
    # transformers initialises DeepSeek's router bias to zeros: give it
    # values, so that a bias left unwritten would show.
    for n in hf:
        if n.endswith("e_score_correction_bias"):
            hf[n] = np.linspace(-1, 1, hf[n].size, dtype=np.float32)
    config.save_pretrained(d)
    save_file({n: torch.from_numpy(np.ascontiguousarray(t)) for n, t in hf.items()}, os.path.join(d, "model.safetensors"))
    return hf


@pytest.mark.parametrize("cfg,tp,ep,dtype", [(DENSE, 1, False, "float32"), (DENSE, 2, False, "float32"),
                                             (MOE, 1, False, "float32"), (MOE, 2, False, "float32"),
                                             (MOE, 2, True, "float32"), (MOE, 2, True, "bfloat16")],
                         ids=["dense-tp1", "dense-tp2", "moe-tp1", "moe-tp2", "moe-tp2-ep", "moe-tp2-ep-bf16"])
def test_vllm_models_receive_what_their_loader_would_load(cfg, tp, ep, dtype, daemon, tmp_path):
    run_sync(cfg, tp, ep, dtype, daemon, tmp_path, via_backend=False)


def test_the_wsync_weight_transfer_backend(daemon, tmp_path):
    """The same through vLLM's weight-transfer plug-in API: the factory
    creates the "wsync" engine, init registers the worker (with the probe),
    update_weights returns once the trainer's sync is committed."""
    run_sync(MOE, 2, True, "float32", daemon, tmp_path, via_backend=True)


def hf_source(daemon, cfg, hf):
    """A client that registered model "policy" and one hf source process
    holding the checkpoint `hf`; returns it and the source buffers."""
    client = wsync.Client(socket=daemon, name="trainer")
    client.register_model("policy", config=cfg)
    bufs = {n: client.empty(t.shape, wsync_dtype(t)) for n, t in hf.items()}
    for n, b in bufs.items():
        b[...] = hf[n]
    client.register_shards("policy", "source", bufs, recipe="hf", rank=dict(rank=0, world_size=1))
    return client, bufs


def run_sync(cfg, tp, ep, dtype, daemon, tmp_path, via_backend):
    hf = checkpoint(cfg, str(tmp_path))
    client, _ = hf_source(daemon, cfg, hf)

    ctx = mp.get_context("spawn")
    registered, synced, results, done = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    procs = mp.start_processes(worker, nprocs=tp, join=False, start_method="spawn",
                               args=(tp, free_port(), daemon, str(tmp_path), ep, "gen", registered, synced,
                                     results, done, None, dtype, via_backend))
    try:
        probed = wait_registered(procs, registered, tp)
        assert client.sync("policy", 1, progress=False).version == 1
        synced.set()
        reports = wait_registered(procs, results, tp)
        for rank, bad, count in sorted(reports):
            assert count > 0
            assert not bad, f"vLLM process {rank}: parameters differ from vLLM's own load_weights: {bad}"
        print(f"layout probe: {', '.join(f'{s:.2f} s' for _, s in sorted(probed))}")
    finally:
        synced.set()
        done.set()
        procs.join(timeout=60)
        client.close()


@pytest.mark.parametrize("stray", [False, True], ids=["reversed-columns", "stray-write"])
def test_probe_refuses_a_layout_vllm_loads_differently(stray, daemon, tmp_path):
    """A loader patched to reverse a parameter's columns, or to write it into
    another parameter: registration is refused, naming the parameter (and its
    first wrong element), and nothing is registered."""
    hf = checkpoint(DENSE, str(tmp_path))
    client = wsync.Client(socket=daemon, name="trainer")
    client.register_model("policy", config=DENSE)
    ctx = mp.get_context("spawn")
    registered, synced, results, done = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    plant = "model.layers.1.mlp.down_proj.weight"
    procs = mp.start_processes(worker, nprocs=1, join=False, start_method="spawn",
                               args=(1, free_port(), daemon, str(tmp_path), False, "gen", registered, synced,
                                     results, done, plant, "float32", False, stray))
    try:
        [(_, outcome)] = wait_registered(procs, registered, 1)
        if stray:
            assert outcome.startswith(f"vLLM's load_weights wrote into a parameter other than '{plant}' while "
                                      f"loading the checkpoint tensors the vllm recipe puts there ({plant})"), outcome
        else:
            assert outcome.startswith(f"parameter '{plant}' element (0, 0): vLLM's load_weights put"), outcome
            assert "where the vllm recipe puts" in outcome and f"canonical '{plant}' element (0, 0)" in outcome
        assert not client.status().models[0].replicas  # nothing was registered
    finally:
        done.set()
        procs.join(timeout=60)
        client.close()
    assert hf  # the checkpoint existed for vLLM to build from
