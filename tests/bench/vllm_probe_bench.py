"""Cost of wsync.vllm's layout probe against one plain vLLM load_weights of the
same model in the same process (the baseline), on a real vLLM model class.

    WSYNCD=bazel-bin/daemon/wsyncd $(bash scripts/engines_venv.sh) \\
        tests/bench/vllm_probe_bench.py [--preset qwen2-0.5b|tiny] [--device cpu] [--dtype bfloat16]

Prints the probe's time, the baseline's and their ratio. The model is built
with vLLM's dummy load format (no checkpoint needed); the baseline feeds it
random tensors of the canonical shapes the daemon reports."""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "client", "python"))

PRESETS = {
    # Qwen2-0.5B's shapes.
    "qwen2-0.5b": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
                   "num_hidden_layers": 24, "vocab_size": 151936, "tie_word_embeddings": True},
    "tiny": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
             "num_hidden_layers": 2, "vocab_size": 1000, "tie_word_embeddings": False},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.5b")
    ap.add_argument("--device", default="cpu", help="cpu (VLLM_TARGET_DEVICE=cpu) or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--chunk-mib", type=int, default=1024, help="the probe's scratch chunk")
    ap.add_argument("--wsyncd", default=os.environ.get("WSYNCD", "bazel-bin/daemon/wsyncd"))
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    import torch
    import transformers
    import wsync
    import wsync.vllm
    from vllm.config import DeviceConfig, LoadConfig, ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.models.registry import ModelRegistry

    cfg = PRESETS[args.preset]
    d = tempfile.mkdtemp()
    transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"}
                                      ).save_pretrained(d)
    sock = os.path.join(d, "wsyncd.sock")
    daemon = subprocess.Popen([args.wsyncd, "--socket", sock], stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(sock):
            time.sleep(0.02)
        mc = ModelConfig(model=d, skip_tokenizer_init=True, dtype=args.dtype, enforce_eager=True)
        vc = VllmConfig(model_config=mc, device_config=DeviceConfig(device=args.device),
                        load_config=LoadConfig(load_format="dummy"))
        with set_current_vllm_config(vc):
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                         distributed_init_method="tcp://127.0.0.1:29533")
            initialize_model_parallel(tensor_model_parallel_size=1)
            cls, _ = ModelRegistry.resolve_model_cls(mc.architectures, model_config=mc)
            from vllm.utils.torch_utils import set_default_torch_dtype
            with torch.device(args.device), set_default_torch_dtype(mc.dtype):
                model = cls(vllm_config=vc, prefix="")
            client = wsync.Client(socket=sock, name="bench")
            client.register_model("m", config=cfg)
            shapes = client.describe_layout("m", "vllm", wsync.vllm.coordinates(model),
                                            wsync.vllm.recipe_options(model))["tensors"]
            weights = [(n, torch.randn(s, device=args.device, dtype=mc.dtype)) for n, s in sorted(shapes.items())]
            elements = sum(p.numel() for p in model.parameters())
            t0 = time.monotonic()
            model.load_weights(iter(weights))
            base = time.monotonic() - t0
            report = wsync.vllm.probe_report(client, model, "m", chunk_bytes=args.chunk_mib << 20)
            assert not report.mismatches, report.mismatches
            probe = report.seconds
            print(f"vllm_probe_bench: {args.preset} on {args.device}, {elements / 1e6:.0f}M {args.dtype} "
                  f"parameters, {args.chunk_mib} MiB scratch chunks")
            print(f"  load_weights (baseline) {base:.2f} s; probe {probe:.2f} s = {probe / base:.1f}x the baseline")
            client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()


if __name__ == "__main__":
    main()
