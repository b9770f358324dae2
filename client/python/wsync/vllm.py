"""Register a vLLM worker's model parameters with wsyncd as one target process.

    import wsync, wsync.vllm
    client = wsync.Client()
    wsync.vllm.register(client, model, "policy", replica="gen-0")   # in each worker

This is the worker-side building block of the vLLM integration: it reads the
worker's place from vLLM's own parallel state (tensor, pipeline and data
parallel groups) and from each MoE layer's own parallel config (expert rank,
expert tensor-parallel rank, expert placement), never recomputing them, and
registers every parameter under its vLLM name in the `vllm` recipe.

Before registering, `probe` verifies the recipe against vLLM's own loaders:
it asks the daemon where a sync would put each canonical element
(DescribeLayout), feeds vLLM's `load_weights` probe tensors whose values
encode each element's canonical position (its index and its tensor, in
digits of 8, 11 or 24 bits, one pass per digit, so that every value is exact
in the parameters' dtype) into scratch copies of the parameters, and compares every
element with the layout. A parameter vLLM lays out differently, or transforms
in a way that is not a permutation, refuses the registration with
LayoutMismatch naming the parameter and its first wrong element. The probe
needs one scratch copy of the worker's parameters and one load_weights pass
per digit; `register(probe_layout=False)` skips it.

wsync.vllm_engine is the "wsync" weight-transfer backend built on these.
Not built yet: the loader path for parameters the probe refuses.

GPU parameters are registered in place through CUDA IPC; CPU parameters are
moved into the client's shared memory (`param.data` is replaced by a
shared-memory tensor holding the same values).
"""


from wsync.client import torch_dtype_name


def register_backend():
    """Registers the "wsync" weight-transfer backend with vLLM (lazily: vLLM
    imports wsync.vllm_engine when a config names it). Idempotent. vLLM calls
    it through this package's vllm.general_plugins entry point."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    if "wsync" not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine("wsync", "wsync.vllm_engine", "WsyncWeightTransferEngine")


def _routed_experts(model):
    """[(module name, RoutedExperts)] of the model's MoE layers."""
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ == "RoutedExperts"]


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
        first, mpc = experts[0][0], experts[0][1].moe_config.moe_parallel_config
        for name, e in experts[1:]:
            other = e.moe_config.moe_parallel_config
            places = [(c.ep_rank, c.ep_size, c.tp_rank, c.tp_size) for c in (mpc, other)]
            if places[0] != places[1]:
                raise ValueError(f"MoE layers {first!r} and {name!r} disagree on this worker's place "
                                 f"(ep_rank, ep_size, tp_rank, tp_size): {places[0]} vs {places[1]}")
        coords.update(ep=mpc.ep_rank, ep_size=mpc.ep_size, etp=mpc.tp_rank, etp_size=mpc.tp_size)
    return coords


def recipe_options(model):
    """The vllm recipe options that describe this model: expert placement
    (as each MoE layer reports it) and the expert parameter names."""
    options = {}
    experts = _routed_experts(model)
    if experts:
        placements = {e.expert_placement_strategy for _, e in experts}
        if len(placements) != 1:
            raise ValueError(f"MoE layers use different expert placements: {sorted(placements)}; the vllm "
                             "recipe needs one placement for the whole model")
        options["expert_placement"] = placements.pop()
        routed = any(".routed_experts." in n for n, _ in model.named_parameters())
        options["moe_names"] = "routed_experts" if routed else "legacy"
    return options


class LayoutMismatch(ValueError):
    """vLLM's loaders put canonical elements somewhere the recipe does not."""


def _box(offsets, sizes):
    return tuple(slice(o, o + n) for o, n in zip(offsets, sizes))


def probe(client, model, model_id):
    """Verifies the vllm recipe for this worker against vLLM's own
    load_weights (see the module docstring). Returns the seconds it took;
    raises LayoutMismatch."""
    import math
    import time

    import torch
    start = time.monotonic()
    layout = client.describe_layout(model_id, "vllm", coordinates(model), recipe_options(model))
    params = dict(model.named_parameters())
    for name in layout["buffers"]:
        if name not in params:
            raise LayoutMismatch(f"the vllm recipe has a parameter {name!r} that this vLLM model does not")
    for name, p in params.items():
        if name not in layout["buffers"]:
            raise LayoutMismatch(f"parameter {name!r} of this vLLM model is not in the vllm recipe")
        if list(p.shape) != layout["buffers"][name]["shape"]:
            raise LayoutMismatch(f"parameter {name!r} has shape {list(p.shape)}, the vllm recipe "
                                 f"{layout['buffers'][name]['shape']}")
    tensors = sorted(layout["tensors"].items())
    slot = {name: i for i, (name, _) in enumerate(tensors)}
    n_max = max(math.prod(shape) for _, shape in tensors)
    # The largest digit every parameter dtype holds exactly: integers to 2^8
    # in bf16, 2^11 in fp16, 2^24 in fp32. Element e of canonical tensor t is
    # told apart by the digits of e+1 (index passes) and of slot(t)+1 (slot
    # passes); an element no loader wrote reads 0 in every pass.
    exact = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24}
    for n, p in params.items():
        if p.dtype not in exact:
            raise LayoutMismatch(f"parameter {n!r}: the probe does not handle dtype {p.dtype}")
    bits = min(exact[p.dtype] for p in params.values())
    mask = (1 << bits) - 1
    passes = [("index", k) for k in range(math.ceil(math.log2(n_max + 1) / bits))] + \
             [("slot", k) for k in range(math.ceil(math.log2(len(tensors) + 1) / bits))]
    device = next(iter(params.values())).device
    index_dtype = torch.int32 if n_max < (1 << 31) - 1 else torch.int64
    feed_dtype = torch.float32 if bits > 11 else torch.float16

    def digits(kind, k, tensor, offsets, sizes):
        """Pass (kind, k)'s digit of every element of a box of a canonical tensor."""
        if kind == "slot":
            return torch.full(tuple(sizes), ((slot[tensor] + 1) >> (bits * k)) & mask, dtype=index_dtype,
                              device=device)
        shape = layout["tensors"][tensor]
        flat = torch.ones((), dtype=index_dtype, device=device)
        for d, (o, n) in enumerate(zip(offsets, sizes)):
            stride = math.prod(shape[d + 1:])
            flat = flat.unsqueeze(-1) + torch.arange(o * stride, (o + n) * stride, stride, dtype=index_dtype,
                                                     device=device)
        return (flat >> (bits * k)) & mask

    saved = {n: p.data for n, p in params.items()}
    try:
        scratch = {n: torch.zeros_like(d) for n, d in saved.items()}
        for n, p in params.items():
            p.data = scratch[n]
        for kind, k in passes:
            for d in scratch.values():
                d.zero_()
            model.load_weights((name, digits(kind, k, name, [0] * len(shape), shape).to(feed_dtype))
                               for name, shape in tensors)
            for name, buf in layout["buffers"].items():
                got = scratch[name]
                want = torch.zeros_like(got)
                for tensor, (co, cs), (so, ss) in buf["pieces"]:
                    want[_box(so, ss)] = digits(kind, k, tensor, co, cs).reshape(ss).to(got.dtype)
                if torch.equal(got, want):
                    continue
                at = tuple(int(i) for i in (got != want).nonzero()[0])
                raise LayoutMismatch(
                    f"parameter {name!r} element {at}: vLLM's load_weights put {float(got[at])!r} there "
                    f"in probe pass {kind} {k} ({bits}-bit digits), where the vllm recipe puts "
                    f"{float(want[at])!r} ({_describe(at, buf)})")
    finally:
        for n, p in params.items():
            p.data = saved[n]
    return time.monotonic() - start


def _describe(at, buf):
    """Which canonical element the recipe puts at `at` of a buffer: the
    piece's two boxes hold the same elements in the same order."""
    for tensor, (co, cs), (so, ss) in buf["pieces"]:
        if all(o <= a < o + n for a, o, n in zip(at, so, ss)):
            flat = 0
            for a, o, n in zip(at, so, ss):
                flat = flat * n + (a - o)
            idx = []
            for n in reversed(cs):
                idx.append(flat % n)
                flat //= n
            return f"canonical {tensor!r} element {tuple(o + i for o, i in zip(co, reversed(idx)))}"
    return "no canonical element: padding, left untouched"


def register(client, model, model_id, replica, update_mode="staged", coordinator="", probe_layout=True):
    """Registers this worker's parameters as one process of target replica
    `replica` of `model_id`, after `probe` (unless probe_layout=False).
    Returns {name: tensor} of what was registered."""
    if probe_layout:
        probe(client, model, model_id)
    buffers = {}
    for name, p in model.named_parameters():
        if p.is_cuda:
            torch_dtype_name(p.dtype, f"parameter {name!r}")
            buffers[name] = p.data
            continue
        shm = client.shared_copy(p.data, f"parameter {name!r}")
        p.data = shm
        buffers[name] = shm
    client.register_shards(model_id, "target", buffers, rank=coordinates(model), recipe="vllm",
                           recipe_options=recipe_options(model), replica=replica,
                           update_mode=update_mode, coordinator=coordinator)
    return buffers
