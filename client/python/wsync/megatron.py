"""Register a Megatron-core model's parameters with wsyncd as one source process.

    import wsync, wsync.megatron
    client = wsync.Client()
    wsync.megatron.register(client, model, "policy")   # once, after building the model
    ...
    client.sync("policy", version=step)                # after each optimizer step (any one process)

`register` reads this process's place from Megatron-core's `parallel_state`
(dense grid tp x cp x dp x pp, expert grid etp x ep x edp x pp, the global
rank and world size) and registers every parameter of the model under its
global name in the `megatron` recipe: layer numbers are global (pipeline and
virtual-pipeline offsets applied, from each TransformerLayer's own
`layer_number`) and so are expert numbers (each MoE layer's own
`local_expert_indices`). The layer spec (TransformerEngine or local) and the
expert layout (grouped or sequential) are read from the parameter names.

What is registered is the model's parameters in their training dtype, not
fp32 main parameters or optimizer state. Megatron's distributed optimizer
shards the optimizer state and main parameters, but after each step it
all-gathers the updated model parameters into every data-parallel rank, so
each rank's parameters are whole (per its TP/PP/EP place) and registering
them is correct; sync after that all-gather finished (pass `ready_event`, a
`torch.cuda.Event(interprocess=True)` the trainer records after the step).
Parameters offloaded to CPU by an optimizer (`optimizer_cpu_offload`) are not
model parameters and are not read; the model parameters must stay resident
(on the GPU, or in host memory for CPU runs) while syncs read them.

The router's score-correction bias of DeepSeek-style MoE layers
(`moe_router_enable_expert_bias`: `mlp.router.expert_bias`) is a buffer, not
a parameter; it is registered too, in fp32 (Megatron-core updates it in place
after each step and keeps it fp32 even under a bf16 wrapper).

GPU parameters are registered in place through CUDA IPC. CPU parameters must
live in memory the daemon can map: `register` moves each one into the
client's shared memory (`param.data` is replaced by a shared-memory tensor
with the same values), which is refused for a parameter that is a view into a
larger buffer (Megatron DDP's contiguous parameter buffer): register such
models before wrapping them, or on GPUs.
"""
import re

from wsync.client import torch_dtype_name


def _chunks(model):
    """The GPTModel chunks of a possibly wrapped model (DDP, Float16Module, a
    list of virtual-pipeline chunks)."""
    chunks = list(model) if isinstance(model, (list, tuple)) else [model]
    out = []
    for m in chunks:
        while not hasattr(m, "decoder") and hasattr(m, "module"):
            m = m.module
        if not hasattr(m, "decoder"):
            raise ValueError(f"{type(m).__name__} is not a Megatron-core GPTModel (no .decoder), nor a wrapper of one")
        out.append(m)
    return out


def coordinates():
    """This process's rank dict for Client.register_shards, from Megatron-core's
    parallel_state (which must be initialized) and torch.distributed."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    if not ps.model_parallel_is_initialized():
        raise RuntimeError("megatron.core.parallel_state is not initialized (call initialize_model_parallel first)")
    return dict(
        rank=dist.get_rank(), world_size=dist.get_world_size(),
        tp=ps.get_tensor_model_parallel_rank(), tp_size=ps.get_tensor_model_parallel_world_size(),
        cp=ps.get_context_parallel_rank(), cp_size=ps.get_context_parallel_world_size(),
        dp=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_rank(), pp_size=ps.get_pipeline_model_parallel_world_size(),
        etp=ps.get_expert_tensor_parallel_rank(), etp_size=ps.get_expert_tensor_parallel_world_size(),
        ep=ps.get_expert_model_parallel_rank(), ep_size=ps.get_expert_model_parallel_world_size(),
        edp=ps.get_expert_data_parallel_rank(), edp_size=ps.get_expert_data_parallel_world_size(),
    )


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")
_SEQUENTIAL = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(.*)$")
_GROUPED = re.compile(r"^(mlp\.experts\.linear_fc[12]\.weight)(\d+)$")


def _weights(chunk):
    """(name, tensor) of a chunk's parameters and router expert biases."""
    yield from chunk.named_parameters()
    for name, module in chunk.named_modules():
        bias = getattr(module, "expert_bias", None)
        if bias is None:
            continue
        # Megatron-core keeps the bias fp32 by replacing the tensor when a
        # wrapper cast it (Router._maintain_float32_expert_bias): do it now,
        # so that the tensor registered is the one it keeps updating.
        keep = getattr(module, "_maintain_float32_expert_bias", None)
        if keep is not None:
            keep()
        yield f"{name}.expert_bias", module.expert_bias


def named_parameters(model):
    """[(global recipe name, parameter)] of every parameter of the model's
    chunks (and every router expert bias): layer and expert numbers made
    global."""
    out = []
    for chunk in _chunks(model):
        for name, p in _weights(chunk):
            m = _LAYER.match(name)
            if m is None:
                out.append((name, p))
                continue
            layer = chunk.decoder.layers[int(m.group(1))]
            rest = m.group(2)
            experts = getattr(getattr(layer, "mlp", None), "local_expert_indices", None)
            for pattern, fmt in ((_SEQUENTIAL, "mlp.experts.local_experts.{e}.{tail}"),
                                 (_GROUPED, "{head}{e}")):
                e = pattern.match(rest)
                if e is None:
                    continue
                if experts is None:
                    raise ValueError(f"{name}: an expert parameter outside a MoE layer with local_expert_indices")
                if pattern is _SEQUENTIAL:
                    rest = fmt.format(e=experts[int(e.group(1))], tail=e.group(2))
                else:
                    rest = fmt.format(head=e.group(1), e=experts[int(e.group(2))])
                break
            out.append((f"decoder.layers.{layer.layer_number - 1}.{rest}", p))
    return out


def recipe_options(model, make_vocab_size_divisible_by=128, names=None):
    """The megatron recipe options that describe this model: spec (te or
    local, from the layer norm names), moe_layout (grouped or sequential),
    vpp (the number of chunks) and the vocabulary padding. `names`: the
    global names of named_parameters(model), if already at hand."""
    if names is None:
        names = [n for n, _ in named_parameters(model)]
    options = {"make_vocab_size_divisible_by": str(make_vocab_size_divisible_by)}
    fused_norms = ("linear_qkv.layer_norm_weight", "linear_kv_up_proj.layer_norm_weight")
    options["spec"] = "te" if any(n.endswith(fused_norms) for n in names) else "local"
    if any(".mlp.experts.local_experts." in n for n in names):
        options["moe_layout"] = "sequential"
    elif any(_GROUPED.search(n.split(".", 3)[-1]) for n in names if ".mlp.experts.linear_fc" in n):
        options["moe_layout"] = "grouped"
    chunks = len(_chunks(model))
    if chunks > 1:
        options["vpp"] = str(chunks)
    return options


def register(client, model, model_id, make_vocab_size_divisible_by=128, ready_event=None, coordinator=""):
    """Registers this process's parameters as a source of `model_id` (which
    must be registered, with the Hugging Face config of the model). Returns
    {global name: tensor} of what was registered. make_vocab_size_divisible_by
    is the value the trainer padded its vocabulary with (Megatron-LM's
    --make-vocab-size-divisible-by; the padded size is a multiple of it times
    TP)."""
    buffers = {}
    for name, p in named_parameters(model):
        if name in buffers:
            raise ValueError(f"two parameters of this process map to {name!r}")
        torch_dtype_name(p.dtype, f"parameter {name!r}")
        if not p.is_cuda:
            if p.data.untyped_storage().nbytes() != p.numel() * p.element_size():
                raise ValueError(
                    f"parameter {name!r} is a view into a larger CPU buffer (a DDP parameter buffer?); "
                    "register the model before wrapping it, or keep it on GPUs")
            shm = client.shared_copy(p.data, f"parameter {name!r}")
            p.data = shm
            buffers[name] = shm  # the tensor object the client allocated (p.data is a new one each time)
        else:
            buffers[name] = p.data
    client.register_shards(model_id, "source", buffers, rank=coordinates(), recipe="megatron",
                           recipe_options=recipe_options(model, make_vocab_size_divisible_by, list(buffers)),
                           ready_event=ready_event, coordinator=coordinator)
    return buffers
