"""Register a vLLM worker's model parameters with wsyncd as one target process.

    import wsync, wsync.vllm
    client = wsync.Client()
    wsync.vllm.register(client, model, "policy", replica="gen-0")   # in each worker

This is the worker-side building block of the vLLM integration: it reads the
worker's place from vLLM's own parallel state (tensor, pipeline and data
parallel groups) and from each MoE layer's own parallel config (expert rank,
expert tensor-parallel rank, expert placement), never recomputing them, and
registers every parameter under its vLLM name in the `vllm` recipe. The
weight-transfer backend, the layout probe and the loader path of the vLLM
issue are not built yet: registration trusts the recipe, which
tests/engines/test_vllm.py checks against vLLM's own load_weights.

GPU parameters are registered in place through CUDA IPC; CPU parameters are
moved into the client's shared memory (`param.data` is replaced by a
shared-memory tensor holding the same values).
"""


def _routed_experts(model):
    return [m for m in model.modules() if type(m).__name__ == "RoutedExperts"]


def coordinates(model):
    """This worker's rank dict for Client.register_shards."""
    from vllm.distributed import parallel_state as ps
    tp, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    pp_group, dp_group = ps.get_pp_group(), ps.get_dp_group()
    pp, pp_size = pp_group.rank_in_group, pp_group.world_size
    dp, dp_size = dp_group.rank_in_group, dp_group.world_size
    coords = dict(rank=(dp * pp_size + pp) * tp_size + tp, world_size=tp_size * dp_size * pp_size,
                  tp=tp, tp_size=tp_size, pp=pp, pp_size=pp_size, dp=dp, dp_size=dp_size)
    experts = _routed_experts(model)
    if experts:
        mpc = experts[0].moe_config.moe_parallel_config
        for e in experts[1:]:
            other = e.moe_config.moe_parallel_config
            if (other.ep_rank, other.ep_size, other.tp_rank, other.tp_size) != (
                    mpc.ep_rank, mpc.ep_size, mpc.tp_rank, mpc.tp_size):
                raise ValueError("MoE layers of this model disagree on their parallel config")
        coords.update(ep=mpc.ep_rank, ep_size=mpc.ep_size, etp=mpc.tp_rank, etp_size=mpc.tp_size)
    return coords


def recipe_options(model):
    """The vllm recipe options that describe this model: expert placement
    (as each MoE layer reports it) and the expert parameter names."""
    options = {}
    experts = _routed_experts(model)
    if experts:
        placements = {e.expert_placement_strategy for e in experts}
        if len(placements) != 1:
            raise ValueError(f"MoE layers use different expert placements: {sorted(placements)}")
        options["expert_placement"] = placements.pop()
        routed = any(".routed_experts." in n for n, _ in model.named_parameters())
        options["moe_names"] = "routed_experts" if routed else "legacy"
    return options


def register(client, model, model_id, replica, update_mode="staged", coordinator=""):
    """Registers this worker's parameters as one process of target replica
    `replica` of `model_id`. Returns {name: tensor} of what was registered."""
    import torch
    from wsync.client import _torch_dtypes
    names = {v: k for k, v in _torch_dtypes().items()}
    buffers = {}
    for name, p in model.named_parameters():
        if p.dtype not in names:
            raise ValueError(f"parameter {name!r}: dtype {p.dtype} is not one wsync syncs")
        if p.is_cuda:
            buffers[name] = p.data
            continue
        shm = client.empty_torch(tuple(p.shape), names[p.dtype])
        with torch.no_grad():
            shm.copy_(p.data)
        p.data = shm
        buffers[name] = shm
    client.register_shards(model_id, "target", buffers, rank=coordinates(model), recipe="vllm",
                           recipe_options=recipe_options(model), replica=replica,
                           update_mode=update_mode, coordinator=coordinator)
    return buffers
