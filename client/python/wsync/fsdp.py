"""Register an FSDP2 model's parameter shards with wsyncd as one source process.

    import wsync, wsync.fsdp
    client = wsync.Client()
    reg = wsync.fsdp.register(client, model, "policy")   # after fully_shard(...)
    ...
    reg.refresh()                  # CPU parameters only: after each optimizer step
    client.sync("policy", version=step)

FSDP2 (`torch.distributed.fsdp.fully_shard`) keeps each parameter as a
DTensor sharded on dim 0 over the data-parallel mesh with torch.chunk's
split (ceil(rows/world) rows each, the last shorter or empty), which is the
`fsdp` recipe. `register` registers each process's local shards under the
parameter names (Hugging Face names for Transformers models; fused v5
experts, `mlp.experts.gate_up_proj`, are recognized) as process
`rank` of `world_size`, dp = its mesh coordinate.

GPU shards are registered in place through CUDA IPC. FSDP2 all-gathers from
its own padded shard storage, so CPU shards cannot be moved into shared
memory without breaking training: they are registered as shared-memory
copies, and `refresh()` copies the current values into them (call it after
each optimizer step, before the sync).

Refused, with an error that says so: FSDP1 (`FullyShardedDataParallel`), whose
flat parameters concatenate many tensors into one 1-d buffer; DeepSpeed
ZeRO-3 partitions (`ds_tensor`), likewise flat; HSDP or any placement other
than Shard(0) on a 1-d mesh covering every process. For those, describe the
buffers with explicit pieces (Client.register_shards(pieces=...)).
"""
import torch

_WRAPPERS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


class Registration:
    """What `register` registered: `buffers` ({name: tensor the daemon reads})
    and the parameters they come from."""

    def __init__(self, client, model_id):
        self.client, self.model_id = client, model_id
        self.buffers = {}
        self._copies = []  # (shared-memory tensor, local shard) for CPU parameters

    def refresh(self):
        """Copies CPU shards into their shared-memory buffers (no-op on GPUs)."""
        with torch.no_grad():
            for dst, src in self._copies:
                dst.copy_(src)


def _refuse_flat(model):
    from torch.distributed.fsdp import FullyShardedDataParallel
    for m in model.modules():
        if isinstance(m, FullyShardedDataParallel):
            raise ValueError(
                "FSDP1 (FullyShardedDataParallel) flattens parameters into 1-d FlatParameters, which wsync "
                "does not read; use FSDP2 (torch.distributed.fsdp.fully_shard), or register explicit pieces")
    for name, p in model.named_parameters():
        if hasattr(p, "ds_tensor") or hasattr(p, "ds_id"):
            raise ValueError(
                f"parameter {name!r} is a DeepSpeed ZeRO-3 partition (flat), which wsync does not read; "
                "use FSDP2, or register explicit pieces")


def _name(n):
    for w in _WRAPPERS:
        n = n.replace(w, "")
    return n


def register(client, model, model_id, ready_event=None, coordinator=""):
    """Registers this process's FSDP2 shards of `model` as a source of
    `model_id` (registered with the model's Hugging Face config). Returns a
    Registration."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard
    from wsync.client import torch_dtype_name
    _refuse_flat(model)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    reg = Registration(client, model_id)
    dp, fused = rank, False
    for raw, p in model.named_parameters():
        name = _name(raw)
        fused |= name.endswith(".mlp.experts.gate_up_proj")
        torch_dtype_name(p.dtype, f"parameter {name!r}")
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            if mesh.ndim != 1 or tuple(p.placements) != (Shard(0),) or mesh.size() != world:
                raise ValueError(
                    f"parameter {name!r} is placed {tuple(p.placements)} on a {mesh.ndim}-d mesh of "
                    f"{mesh.size()} of {world} processes; wsync.fsdp reads Shard(0) on one mesh over every "
                    "process (FSDP2 without HSDP or tensor parallelism)")
            dp = mesh.get_local_rank()
            local = p.to_local()
            rows = p.shape[0]
            chunk = -(-rows // world)
            want = max(0, min(rows, (dp + 1) * chunk) - dp * chunk)
            if local.shape[0] != want:
                raise ValueError(f"parameter {name!r}: local shard has {local.shape[0]} rows, torch.chunk "
                                 f"gives process {dp} of {world} {want} of {rows}")
        elif world > 1:
            raise ValueError(f"parameter {name!r} is not sharded by FSDP2 (not a DTensor) in a world of {world}")
        else:
            local = p.data
        if local.numel() == 0:
            continue  # torch.chunk leaves trailing processes nothing
        if local.is_cuda:
            reg.buffers[name] = local
        else:
            shm = client.shared_copy(local, f"parameter {name!r}")
            reg._copies.append((shm, local))
            reg.buffers[name] = shm
    client.register_shards(model_id, "source", reg.buffers, recipe="fsdp",
                           recipe_options={"experts": "fused" if fused else "per_expert"},
                           rank=dict(rank=rank, world_size=world, dp=dp, dp_size=world, edp=dp, edp_size=world),
                           ready_event=ready_event, coordinator=coordinator)
    return reg
