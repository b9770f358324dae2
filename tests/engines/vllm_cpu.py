"""Real vLLM model instances on CPU, built the way vLLM's own loader builds
them, for the engine tests and the demo's real-vLLM mode.

The CPU wheel has no kernels, so no forward pass runs: VLLM_TARGET_DEVICE=cpu,
load_format=dummy, gloo process groups. Used inside a spawned process, one
per tensor-parallel rank. Importing this module selects vLLM's CPU platform
(VLLM_TARGET_DEVICE=cpu), which must happen before vLLM is imported."""
import contextlib
import os

os.environ["VLLM_TARGET_DEVICE"] = "cpu"


@contextlib.contextmanager
def models(ckpt, world, rank, port, dtype="float32", ep=False, placement="linear"):
    """Yields (vllm_config, target, reference): two instances of the model
    class of checkpoint directory `ckpt` (config.json) for TP rank `rank` of
    `world` (enable_expert_parallel=ep, expert_placement_strategy=placement),
    parameters in `dtype` (DeepSeek's router bias stays fp32, as vLLM makes
    it), inside vLLM's current-config context. The second instance has its
    own prefix, as vLLM registers attention layers by name."""
    from vllm.config import (DeviceConfig, LoadConfig, ModelConfig, ParallelConfig, VllmConfig,
                             set_current_vllm_config)
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.models.registry import ModelRegistry
    from vllm.utils.torch_utils import set_default_torch_dtype
    mc = ModelConfig(model=ckpt, skip_tokenizer_init=True, dtype=dtype, enforce_eager=True)
    vc = VllmConfig(model_config=mc, device_config=DeviceConfig(device="cpu"),
                    load_config=LoadConfig(load_format="dummy"),
                    parallel_config=ParallelConfig(tensor_parallel_size=world, enable_expert_parallel=ep,
                                                   expert_placement_strategy=placement))
    with set_current_vllm_config(vc):
        init_distributed_environment(world_size=world, rank=rank, local_rank=rank, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")
        initialize_model_parallel(tensor_model_parallel_size=world)
        cls, _ = ModelRegistry.resolve_model_cls(mc.architectures, model_config=mc)
        if vc.quant_config is not None and getattr(vc.quant_config, "ignored_layers", None):
            # vLLM matches a quantized checkpoint's modules_to_not_convert
            # against full module names: the reference needs its own copies.
            vc.quant_config.ignored_layers += [f"reference.{x}" for x in list(vc.quant_config.ignored_layers)]
        # Parameters in the model config's dtype, as vLLM's loaders build them
        # (a bare constructor gives fp32 whatever the config says).
        with set_default_torch_dtype(mc.dtype):
            target, reference = cls(vllm_config=vc, prefix=""), cls(vllm_config=vc, prefix="reference")
        if mc.quantization is None:
            dtypes = {p.dtype for n, p in target.named_parameters() if not n.endswith(".e_score_correction_bias")}
            assert dtypes == {mc.dtype}, f"vLLM built parameters of {dtypes}, not {mc.dtype}"
        yield vc, target, reference
