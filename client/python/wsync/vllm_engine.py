"""The "wsync" weight-transfer backend of vLLM (vllm.distributed.weight_transfer).

    LLM(model=..., weight_transfer_config={"backend": "wsync"})
    llm.init_weight_transfer_engine({"init_info": {"model_id": "policy", "replica": "gen-0"}})
    # each step: the trainer syncs version v (Client.sync), then
    llm.update_weights({"update_info": {"version": v}})      # returns once v is committed

Each worker's engine attaches to its node's wsyncd and registers the
worker's parameters as one process of the replica (wsync.vllm.register, with
the layout probe). The bytes move daemon to daemon and straight into the
registered parameters; `update_weights` only waits until the version is
committed for this replica. Pausing generation around the commit is the
engine-level part (vLLM's pause_generation): drive it from the trainer until
this backend does.

Importing this module imports vLLM; wsync.vllm.register_backend() registers
it lazily, and vLLM calls that itself through the package's
`vllm.general_plugins` entry point.
"""
from dataclasses import dataclass

from vllm.distributed.weight_transfer.base import WeightTransferEngine

import wsync
from wsync import vllm as wsync_vllm


@dataclass
class WsyncInitInfo:
    model_id: str
    replica: str
    socket: str = "/run/wsync/wsyncd.sock"
    update_mode: str = "staged"
    probe: bool = True


@dataclass
class WsyncUpdateInfo:
    version: int
    timeout_ms: int = 600000


class WsyncWeightTransferEngine(WeightTransferEngine[WsyncInitInfo, WsyncUpdateInfo]):
    """One worker's side of the wsync backend."""

    init_info_cls = WsyncInitInfo
    update_info_cls = WsyncUpdateInfo
    supports_draft_weight_update = False

    client = None

    def init_transfer_engine(self, init_info):
        import os
        self.info = init_info
        self.client = wsync.Client(socket=init_info.socket, name=f"vllm-worker-{os.getpid()}")
        self.buffers = wsync_vllm.register(self.client, self.model, init_info.model_id, init_info.replica,
                                           update_mode=init_info.update_mode, probe_layout=init_info.probe)

    def start_weight_update(self):
        """Nothing to prepare: the daemon writes the registered parameters."""

    def update_weights(self, update_info):
        # The base class synchronizes the accelerator; the daemon's commit is
        # complete when wait_version returns, and a CPU worker has none.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info):
        if self.client is None:
            raise RuntimeError("wsync weight transfer: init_transfer_engine was not called")
        got = self.client.wait_version(self.info.model_id, self.info.replica, update_info.version,
                                       update_info.timeout_ms)
        if got.version < update_info.version:
            raise TimeoutError(f"wsync: replica '{self.info.replica}' of model '{self.info.model_id}' is at "
                               f"version {got.version}, not {update_info.version}, after "
                               f"{update_info.timeout_ms} ms")

    def finish_weight_update(self):
        """Nothing to finish: the version was committed atomically."""

    def shutdown(self):
        if self.client is not None:
            self.client.close()
            self.client = None
