"""Whole update rounds into real vLLM 0.33 models on CPU, driven from the
trainer side: wsync.vllm_trainer.WsyncTrainerEngine (made by vLLM's own
WeightTransferTrainerFactory) drives the workers' "wsync" backend engines,
or the worker extension, through a VLLMWeightSyncClient that runs each call
on every worker process (what vLLM's collective_rpc does in an engine).

One parameter's loader is patched, in the synced model and in the reference
alike, to lay the weight out differently from the vllm recipe (its columns
reversed): the probe finds it, and with on_mismatch="loader" that parameter
takes the loader path (the daemon writes the checkpoint tensor into a
worker-owned staging buffer, vLLM's load_weights puts it in place) while the
others are written in place. After each version, every parameter must equal
byte for byte what vLLM's load_weights makes of the same checkpoint."""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import wsync
import wsync.vllm
from conftest import wait_registered
from reference import as_numpy, free_port
from test_vllm import DENSE, checkpoint, hf_source
import vllm_cpu

PLANT = "model.layers.1.mlp.down_proj.weight"


def worker(rank, world, port, ckpt, commands, replies, mode):
    from safetensors.torch import load_file
    with vllm_cpu.models(ckpt, world, rank, port) as (vc, target, reference):
        from vllm.config import WeightTransferConfig
        for model in (target, reference):
            param = dict(model.named_parameters())[PLANT]
            original = param.weight_loader
            param.weight_loader = lambda p, w, *a, _o=original, **k: _o(p, w.flip(-1), *a, **k)
        hf = load_file(os.path.join(ckpt, "model.safetensors"))
        if mode == "backend":
            from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
            wsync.vllm.register_backend()
            engine = WeightTransferEngineFactory.create_engine(WeightTransferConfig(backend="wsync"), vc,
                                                               torch.device("cpu"), target)
            calls = {"init": lambda info: (engine.init_transfer_engine(engine.parse_init_info(info)),
                                           engine.paths())[1],
                     "start": engine.start_weight_update, "update": engine.update_weights,
                     "finish": engine.finish_weight_update, "shutdown": engine.shutdown}
        else:
            class Worker(wsync.vllm.WsyncWorkerExtension):
                """What vLLM's worker_extension_cls mixes into its Worker:
                the extension reads the model at self.model_runner.model."""
                class model_runner:
                    model = target
            w = Worker()
            calls = {"init": lambda info: (w.wsync_init(**info), w.wsync_paths())[1],
                     "start": lambda: None, "update": lambda info: w.wsync_update(**info),
                     "finish": lambda: None, "shutdown": w.wsync_shutdown}
        while True:
            cmd, arg = commands[rank].get()
            if cmd == "stop":
                return
            try:
                if cmd == "check":
                    reference.load_weights((n, t * arg) for n, t in hf.items())
                    want = dict(reference.named_parameters())
                    out = [n for n, p in target.named_parameters()
                           if not np.array_equal(as_numpy(p).view(np.uint8), as_numpy(want[n]).view(np.uint8))]
                elif arg is None:
                    out = calls[cmd]()
                else:
                    out = calls[cmd](arg)
                replies.put((rank, "ok", out))
            except Exception as e:  # reported to the test, which fails with it
                replies.put((rank, "error", f"{type(e).__name__}: {e}"))


class Workers:
    """A VLLMWeightSyncClient over worker processes: each call runs on every
    worker and returns when all have answered (vLLM's collective_rpc). It
    records the engine-level calls (pause, resume, weight versions)."""

    def __init__(self, procs, commands, replies):
        self.procs, self.commands, self.replies = procs, commands, replies
        self.log = []

    def call(self, cmd, arg=None):
        for q in self.commands:
            q.put((cmd, arg))
        answers = sorted(wait_registered(self.procs, self.replies, len(self.commands)))
        errors = [f"worker {r}: {msg}" for r, kind, msg in answers if kind == "error"]
        if errors:
            raise RuntimeError("; ".join(errors))
        return [out for _, _, out in answers]

    def init_weight_transfer_engine(self, init_info):
        self.log.append("init")
        self.paths = self.call("init", init_info)

    def start_weight_update(self):
        self.log.append("start")
        self.call("start")

    def update_weights(self, update_info):
        self.log.append(f"update {update_info['version']}")
        self.call("update", update_info)

    def finish_weight_update(self, weight_version=None):
        self.log.append(f"finish {weight_version}")
        self.call("finish")

    def pause_generation(self, mode="abort", clear_cache=True):
        self.log.append(f"pause {mode} clear_cache={clear_cache}")

    def resume_generation(self):
        self.log.append("resume")


@pytest.mark.parametrize("mode", ["backend", "extension"])
def test_trainer_engine_rounds_with_the_loader_path(mode, daemon, tmp_path):
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from wsync.vllm_trainer import WsyncTrainerInitInfo
    tp = 2
    hf = checkpoint(DENSE, str(tmp_path))
    client, bufs = hf_source(daemon, DENSE, hf)

    ctx = mp.get_context("spawn")
    commands, replies = [ctx.Queue() for _ in range(tp)], ctx.Queue()
    procs = mp.start_processes(worker, nprocs=tp, join=False, start_method="spawn",
                               args=(tp, free_port(), str(tmp_path), commands, replies, mode))
    workers = Workers(procs, commands, replies)
    try:
        wsync.vllm.register_backend()
        engine = WeightTransferTrainerFactory.trainer_init(
            WsyncTrainerInitInfo(model_id="policy", replica="gen", wsync=client, socket=daemon,
                                 on_mismatch="loader", timeout_ms=120000, rank=0),
            client=workers)
        # The probe sent exactly the planted parameter through the loader path.
        for paths in workers.paths:
            assert [n for n, p in paths.items() if p == "loader"] == [PLANT]
            assert sum(p == "in_place" for p in paths.values()) == len(paths) - 1 > 10
        status = client.status().models[0]
        assert {r.replica_id for r in status.replicas} == {"gen"}

        assert engine.send_weights().version == 1
        assert workers.call("check", 1.0) == [[]] * tp
        # Version 2: new trainer weights.
        for n, b in bufs.items():
            b[...] = -hf[n]
        assert engine.send_weights().version == 2
        assert workers.call("check", -1.0) == [[]] * tp
        assert workers.log == ["init", "pause wait clear_cache=True", "start", "update 1", "finish 1", "resume",
                               "pause wait clear_cache=True", "start", "update 2", "finish 2", "resume"]
        # A version the daemon refuses (older than the replica's): the
        # workers' wait ends with the daemon's reason, nothing is finished,
        # generation resumes on version 2.
        workers.log.clear()
        with pytest.raises(Exception) as refused:
            engine.send_weights(version=1)
        assert "is at version 2; version 1 is older" in str(refused.value)
        assert workers.log == ["pause wait clear_cache=True", "start", "update 1", "resume"]
        assert workers.call("check", -1.0) == [[]] * tp
        workers.call("shutdown")
    finally:
        for q in commands:
            q.put(("stop", None))
        procs.join(timeout=60)
        client.close()


