"""The trainer's side of a sync, in one call per step.

    import wsync, wsync.megatron, wsync.trainer
    client = wsync.Client()
    wsync.megatron.register(client, model, "policy")        # once, on every rank
    for step in range(...):
        train_step(...)
        wsync.trainer.step(client, "policy", version=step + 1)   # on every rank

`step` is collective over the trainer's processes (torch.distributed's
default group, or `group`): every process has finished its optimizer step
before the first byte is read, the daemon syncs the version from the
trainer's registered memory into every target replica (or `replicas`), and
no process returns, so none changes its weights, before the version is
committed everywhere or the sync has failed. Rank 0 of the group drives the
sync; a failure raises the same WsyncError on every rank.

Trainers whose registration holds CPU copies (wsync.fsdp's CPU shards) pass
`refresh=reg.refresh`, which every rank runs before the sync.
"""


def step(client, model_id, version, replicas=None, lora=None, deadline_ms=0, group=None, refresh=None,
         progress=False):
    """Syncs `version` of `model_id` and returns the SyncResult on every
    rank. Raises WsyncError on every rank if the sync failed. Without an
    initialised torch.distributed, this process is the only one and drives
    the sync itself."""
    from wsync.client import WsyncError, _grpc_code
    from wsync.v1 import wsync_pb2
    dist = None
    try:
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            dist = None
    except ImportError:
        pass
    if refresh is not None:
        refresh()
    rank = dist.get_rank(group) if dist is not None else 0
    if dist is not None:
        dist.barrier(group)
    outcome = [None]
    if rank == 0:
        try:
            result = client.sync(model_id, version, lora=lora, replicas=replicas, deadline_ms=deadline_ms,
                                 progress=progress)
            outcome = [("ok", result.SerializeToString())]
        except WsyncError as e:
            outcome = [("error", e.code.value[0], e.message)]
    if dist is not None:
        src = dist.get_global_rank(group, 0) if group is not None else 0
        dist.broadcast_object_list(outcome, src=src, group=group)
    if outcome[0][0] == "error":
        raise WsyncError(_grpc_code(outcome[0][1]), outcome[0][2])
    result = wsync_pb2.SyncResult()
    result.ParseFromString(outcome[0][1])
    return result
