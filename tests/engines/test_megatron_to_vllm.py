"""End to end with both real engines: Megatron-core trainer processes
(TP=2, EP=2, ETP=1, bf16, registered through wsync.megatron) sync into vLLM
0.33 worker processes (TP=2 with expert parallelism, registered through
wsync.vllm with the layout probe), and every vLLM parameter equals, byte for
byte, what vLLM's own load_weights makes of the Hugging Face checkpoint that
Megatron's own placement (sharded_state_dict) describes."""
import os

import numpy as np
import torch
import torch.multiprocessing as mp

import wsync
from conftest import wait_registered
from reference import free_port, megatron_to_hf, to_torch
from test_megatron import global_tensors, trainer
from test_vllm import MOE, worker


def save_checkpoint(cfg, hf, d):
    """The HF tensors as a checkpoint vLLM can be built from and load."""
    import transformers
    from safetensors.torch import save_file
    kw = {k: v for k, v in cfg.items() if k != "model_type"}
    transformers.AutoConfig.for_model(cfg["model_type"], **kw).save_pretrained(d)
    save_file({n: to_torch(np.ascontiguousarray(t)) for n, t in hf.items()}, os.path.join(d, "model.safetensors"))


def test_megatron_trainer_into_vllm_workers(daemon, tmp_path):
    sizes, world, tp = dict(tp=2, ep=2, etp=1), 2, 2
    client = wsync.Client(socket=daemon, name="test")
    client.register_model("policy", config=MOE)
    ctx = mp.get_context("spawn")
    t_registered, t_done = ctx.Queue(), ctx.Event()
    trainers = mp.start_processes(trainer, nprocs=world, join=False, start_method="spawn",
                                  args=(world, free_port(), daemon, str(tmp_path), MOE, sizes, torch.bfloat16,
                                        t_registered, t_done))
    v_registered, synced, results, v_done = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    workers = None
    try:
        wait_registered(trainers, t_registered, world)
        reports = [np.load(tmp_path / f"trainer-{r}.npy", allow_pickle=True).item() for r in range(world)]
        hf = megatron_to_hf(global_tensors(reports), MOE)
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        save_checkpoint(MOE, hf, str(ckpt))
        workers = mp.start_processes(worker, nprocs=tp, join=False, start_method="spawn",
                                     args=(tp, free_port(), daemon, str(ckpt), True, "vllm", v_registered, synced,
                                           results, v_done, None, "bfloat16", False))
        wait_registered(workers, v_registered, tp)
        assert client.sync("policy", 1, progress=False).version == 1
        synced.set()
        for rank, bad, count in sorted(wait_registered(workers, results, tp)):
            assert count > 0
            assert not bad, f"vLLM process {rank}: parameters differ from vLLM's own load_weights: {bad}"
    finally:
        synced.set()
        v_done.set()
        t_done.set()
        if workers is not None:
            workers.join(timeout=60)
        trainers.join(timeout=60)
        client.close()
