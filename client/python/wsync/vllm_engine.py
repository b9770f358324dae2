"""The "wsync" weight-transfer backend of vLLM (vllm.distributed.weight_transfer).

Worker side (WsyncWeightTransferEngine): each worker's engine attaches to its
node's wsyncd and registers the worker's parameters as one process of the
replica (wsync.vllm.WorkerSession: the layout probe, then in place or
through the loader path). The bytes move daemon to daemon and straight into
the registered memory; `update_weights({"version": v})` returns once v is
committed for the replica and the loader-path parameters are loaded.

The trainer side is wsync.vllm_trainer.WsyncTrainerEngine, which drives the
whole round (pause, start, sync, update, finish with the weight version,
resume). docs/vllm.md has a complete example.

Importing this module imports vLLM; wsync.vllm.register_backend() registers
it lazily, and vLLM calls that itself through the package's
`vllm.general_plugins` entry point.
"""
from dataclasses import dataclass

from vllm.distributed.weight_transfer.base import WeightTransferEngine

from wsync import vllm as wsync_vllm


@dataclass
class WsyncInitInfo:
    model_id: str
    replica: str
    socket: str = "/run/wsync/wsyncd.sock"
    update_mode: str = "staged"
    probe: bool = True
    on_mismatch: str = "refuse"  # or "loader": parameters the probe refuses take the loader path
    probe_chunk_mib: int = 1024  # the probe's fp32 scratch, a chunk of parameters at a time


@dataclass
class WsyncUpdateInfo:
    version: int
    timeout_ms: int = 600000


class WsyncWeightTransferEngine(WeightTransferEngine[WsyncInitInfo, WsyncUpdateInfo]):
    """One worker's side of the wsync backend."""

    init_info_cls = WsyncInitInfo
    update_info_cls = WsyncUpdateInfo
    supports_draft_weight_update = False

    session = None

    def init_transfer_engine(self, init_info):
        self.session = wsync_vllm.WorkerSession(self.model)
        self.session.init(init_info.model_id, init_info.replica, socket=init_info.socket,
                          update_mode=init_info.update_mode, probe=init_info.probe,
                          on_mismatch=init_info.on_mismatch, probe_chunk_mib=init_info.probe_chunk_mib)

    def start_weight_update(self):
        """Nothing to prepare: the daemon writes the registered memory."""

    def update_weights(self, update_info):
        # The base class calls torch.accelerator.synchronize(), which a CPU
        # worker does not have; _synchronize waits where there is a GPU.
        self.receive_weights(self.parse_update_info(update_info))
        wsync_vllm._synchronize(self.model)

    def receive_weights(self, update_info):
        if self.session is None:
            raise RuntimeError("wsync weight transfer: init_transfer_engine was not called")
        self.session.update(update_info.version, update_info.timeout_ms)

    def finish_weight_update(self):
        """Nothing to finish: the version was committed atomically, and the
        loader path ran in update_weights."""

    def paths(self):
        """{parameter: "in_place" | "loader"}."""
        return self.session.paths() if self.session is not None else {}

    def shutdown(self):
        if self.session is not None:
            self.session.shutdown()
            self.session = None
