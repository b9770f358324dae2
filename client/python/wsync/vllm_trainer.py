"""The trainer side of the "wsync" weight-transfer backend of vLLM.

    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    import wsync, wsync.megatron, wsync.vllm
    from wsync.vllm_trainer import WsyncTrainerInitInfo

    wsync.vllm.register_backend()                       # both factories
    client = wsync.Client()
    wsync.megatron.register(client, model, "policy")    # every trainer rank, once
    engine = WeightTransferTrainerFactory.trainer_init(
        WsyncTrainerInitInfo(model_id="policy", replica="gen-0", wsync=client, rank=rank),
        client=vllm_client)                             # e.g. HTTPVLLMWeightSyncClient
    for step in ...:
        train_step(...)
        engine.send_weights()                           # every trainer rank

`send_weights` is one round, collective over the trainer's processes:
1. rank 0 pauses generation if the vLLM client offers it
   (`pause_generation(mode=..., clear_cache=True)`: AsyncLLM, or any client
   with that method; clearing drops the prefix cache computed from the old
   weights), then calls `start_weight_update`;
2. every rank enters wsync.trainer.step, which syncs the next version from
   the trainer's registered memory; meanwhile rank 0's `update_weights`
   call returns on each worker once the version is committed there (and its
   loader-path parameters are loaded);
3. rank 0 calls `finish_weight_update(weight_version=str(version))` and
   resumes generation.
If the sync fails, the workers' update_weights fail with the daemon's error,
generation resumes on the old version (staged replicas are untouched), and
send_weights raises.

Pausing is engine-level (one call per vLLM engine, from the process that owns
its client); registration and the wait for the commit are per worker.
"""
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vllm.distributed.weight_transfer.base import TrainerInitInfo, TrainerWeightTransferEngine

from wsync import trainer as wsync_trainer


@dataclass
class WsyncTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "wsync"

    model_id: str = ""
    replica: str = ""
    wsync: Any = None  # this trainer process's wsync.Client (its registration holds the weights)
    socket: str = "/run/wsync/wsyncd.sock"  # the generator workers' wsyncd socket
    update_mode: str = "staged"
    probe: bool = True
    on_mismatch: str = "refuse"
    probe_chunk_mib: int = 1024
    pause_mode: str = "wait"  # vLLM pause_generation mode: abort, wait or keep
    timeout_ms: int = 600000
    first_version: int = 1
    extra: dict = field(default_factory=dict)  # more worker init_info keys


class WsyncTrainerEngine(TrainerWeightTransferEngine[WsyncTrainerInitInfo]):
    """The trainer's side: one send_weights per step, on every trainer rank."""

    init_info_cls = WsyncTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info, *, client, source=None):
        if not init_info.model_id or not init_info.replica:
            raise ValueError("WsyncTrainerInitInfo needs model_id and replica")
        if init_info.wsync is None:
            raise ValueError("WsyncTrainerInitInfo.wsync: give this process's wsync.Client (it registered the "
                             "trainer's weights)")
        if init_info.pause_mode not in ("abort", "wait", "keep"):
            raise ValueError(f"pause_mode={init_info.pause_mode!r}: expected abort, wait or keep")
        engine = cls(client=client, source=source, is_sender=init_info.rank == 0, rank=init_info.rank)
        engine.info = init_info
        engine.version = init_info.first_version - 1
        if engine.is_sender:
            worker_info = dict(model_id=init_info.model_id, replica=init_info.replica, socket=init_info.socket,
                               update_mode=init_info.update_mode, probe=init_info.probe,
                               on_mismatch=init_info.on_mismatch, probe_chunk_mib=init_info.probe_chunk_mib)
            worker_info.update(init_info.extra)
            client.init_weight_transfer_engine(worker_info)
        return engine

    def send_weights(self, version=None):
        """Syncs the next version (or `version`) into the replica; returns the
        wsync SyncResult."""
        info = self.info
        version = self.version + 1 if version is None else version
        if not self.is_sender:
            result = wsync_trainer.step(info.wsync, info.model_id, version, deadline_ms=info.timeout_ms)
            self.version = version
            return result
        pause = getattr(self.client, "pause_generation", None)
        resume = getattr(self.client, "resume_generation", None)
        if pause is not None:
            pause(mode=info.pause_mode, clear_cache=True)
        try:
            self.client.start_weight_update()
            waited = {}

            def wait():
                try:
                    self.client.update_weights({"version": version, "timeout_ms": info.timeout_ms})
                except BaseException as e:  # reported after the sync
                    waited["error"] = e

            waiter = threading.Thread(target=wait, name="wsync-update-weights", daemon=True)
            waiter.start()
            try:
                result = wsync_trainer.step(info.wsync, info.model_id, version, deadline_ms=info.timeout_ms)
            finally:
                waiter.join()
            if "error" in waited:
                raise RuntimeError(f"wsync: the vLLM workers did not take version {version}: "
                                   f"{waited['error']}") from waited["error"]
            self.client.finish_weight_update(weight_version=str(version))
        finally:
            if resume is not None:
                resume()
        self.version = version
        return result
