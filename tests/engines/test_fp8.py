"""wsyncctl convert --dtype fp8 against torch's own float8_e4m3fn cast and
against real vLLM 0.33 loading the checkpoint it writes.

vLLM on CPU cannot build a block-FP8 model as is: choosing the GEMM kernel
for Fp8LinearMethod raises "CPUFp8BlockScaledMMKernel requires AMX tile
support (Sapphire Rapids or newer)". No forward pass runs in these tests, so
the worker replaces that choice (init_fp8_linear_kernel) with nothing;
everything the loader does (parameter creation, load_weights, the fused
qkv/gate_up shards and their scales) is vLLM's own."""
import contextlib
import json
import multiprocessing
import os
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

CFG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256,
       "intermediate_size": 384, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
       "vocab_size": 64, "tie_word_embeddings": False, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
       "torch_dtype": "bfloat16"}


# The same with 4 KV heads and intermediate 512: vLLM TP=2 cuts at block edges.
CFG_TP2 = dict(CFG, num_key_value_heads=4, intermediate_size=512)


def hf_tensors(seed, cfg=CFG):
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
                       p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
                       p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (i, h),
                       p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i)})
    rng = np.random.default_rng(seed)
    out = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    out["model.layers.1.mlp.up_proj.weight"][:128, :128] = 0  # a block of zeros: scale 1
    out["model.layers.0.self_attn.o_proj.weight"][3, 200] = 5000.0  # far beyond 448
    return out


# Qwen3-MoE: 4 experts of width 256 (two blocks), a router that stays bf16;
# vLLM TP=2 cuts at block edges, with or without expert parallelism.
CFG_MOE = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 256,
           "intermediate_size": 512, "moe_intermediate_size": 256, "num_experts": 4, "num_experts_per_tok": 2,
           "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "num_attention_heads": 4,
           "num_key_value_heads": 4, "head_dim": 64, "num_hidden_layers": 2, "vocab_size": 64,
           "tie_word_embeddings": False, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
           "torch_dtype": "bfloat16"}


def moe_tensors(seed):
    c = CFG_MOE
    h, i, v, e, d = c["hidden_size"], c["moe_intermediate_size"], c["vocab_size"], c["num_experts"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,),
                       p + "mlp.gate.weight": (e, h)})
        for x in range(e):
            shapes.update({p + f"mlp.experts.{x}.gate_proj.weight": (i, h), p + f"mlp.experts.{x}.up_proj.weight": (i, h),
                           p + f"mlp.experts.{x}.down_proj.weight": (h, i)})
    rng = np.random.default_rng(seed)
    out = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    out["model.layers.1.mlp.experts.2.up_proj.weight"][128:, :128] = 0  # a block of zeros: scale 1
    out["model.layers.0.mlp.experts.3.down_proj.weight"][7, 9] = -9000.0  # far beyond 448
    return out


def quantized(name):
    return name.startswith("model.layers.") and name.endswith("_proj.weight")


def torch_block_fp8(w):
    """Block FP8 with torch's own float8_e4m3fn cast."""
    t = torch.from_numpy(w)
    rows, cols = t.shape
    br, bc = -(-rows // 128), -(-cols // 128)
    padded = torch.zeros(br * 128, bc * 128)
    padded[:rows, :cols] = t
    amax = padded.abs().reshape(br, 128, bc, 128).amax(dim=(1, 3))
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / 448.0)
    expanded = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:rows, :cols]
    q = (t / expanded).to(torch.float8_e4m3fn)
    return q.view(torch.uint8).numpy(), scale.numpy()


@contextlib.contextmanager
def fp8_models(ckpt, port, world=1, rank=0, ep=False):
    """vllm_cpu.models for the block-FP8 checkpoint `ckpt` (bf16 for what
    stays unquantized): (vllm config, target, reference)."""
    import vllm_cpu
    import vllm.model_executor.layers.quantization.fp8 as vfp8
    vfp8.init_fp8_linear_kernel = lambda *a, **k: None  # the GEMM needs AMX; no forward pass runs
    with vllm_cpu.models(ckpt, world, rank, port, "bfloat16", ep) as models:
        yield models


def vllm_worker(ckpt, port, out):
    from safetensors.torch import load_file
    with fp8_models(ckpt, port) as (vc, model, _):
        mc = vc.model_config
        loaded = model.load_weights(load_file(os.path.join(ckpt, "model.safetensors")).items())
        params = {}
        for n, p in model.named_parameters():
            if n.endswith("_scale") or ".attn." in n:
                continue  # kv-cache scales: not in weight checkpoints
            t = p.detach()
            params[n] = (str(t.dtype), (t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t.float()).numpy())
        np.save(out, {"quantization": mc.quantization, "params": params, "loaded": sorted(loaded)}, allow_pickle=True)


def test_block_fp8_matches_torch_and_vllm_loads_it(tmp_path, wsyncctl):
    from safetensors.numpy import save_file
    src = hf_tensors(7)
    (tmp_path / "hf").mkdir()
    json.dump(CFG, open(tmp_path / "hf" / "config.json", "w"))
    save_file(src, str(tmp_path / "hf" / "model.safetensors"))
    r = subprocess.run([wsyncctl, "convert", "--model-config", str(tmp_path / "hf" / "config.json"), "--from", "hf",
                        "--to", "hf", "--in", str(tmp_path / "hf"), "--out", str(tmp_path / "fp8"), "--dtype", "fp8",
                        "--bucket-mib", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out_cfg = json.load(open(tmp_path / "fp8" / "config.json"))
    assert out_cfg["quantization_config"] == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                              "weight_block_size": [128, 128],
                                              "modules_to_not_convert": ["model.embed_tokens", "lm_head"]}

    # Byte for byte what torch's own cast gives.
    from safetensors import safe_open
    with safe_open(str(tmp_path / "fp8" / "model.safetensors"), "pt") as f:
        ck = {n: f.get_tensor(n) for n in f.keys()}
    n_quantized = 0
    for name, w in src.items():
        if quantized(name):
            n_quantized += 1
            q, scale = torch_block_fp8(w)
            assert ck[name].dtype == torch.float8_e4m3fn, name
            assert np.array_equal(ck[name].view(torch.uint8).numpy(), q), name
            assert np.array_equal(ck[name + "_scale_inv"].numpy(), scale), name
        else:
            assert ck[name].dtype == torch.bfloat16, name
            assert torch.equal(ck[name], torch.from_numpy(w).to(torch.bfloat16)), name
            assert name + "_scale_inv" not in ck
    assert n_quantized == 14

    # vLLM's own loader puts those bytes and scales into its fused parameters.
    ctx = multiprocessing.get_context("spawn")
    out = str(tmp_path / "vllm.npy")
    from reference import free_port
    p = ctx.Process(target=vllm_worker, args=(str(tmp_path / "fp8"), free_port(), out))
    p.start()
    p.join(600)
    assert p.exitcode == 0, "the vLLM worker failed (its traceback is above)"
    got = np.load(out, allow_pickle=True).item()
    assert got["quantization"] == "fp8"
    params = got["params"]

    def fp8(name):
        return ck[name].view(torch.uint8).numpy()

    for layer in range(CFG["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        fused = {p + "self_attn.qkv_proj": ["q_proj", "k_proj", "v_proj"], p + "mlp.gate_up_proj": ["gate_proj", "up_proj"]}
        for vname, parts in fused.items():
            sub = "self_attn." if "qkv" in vname else "mlp."
            dt, w = params[vname + ".weight"]
            assert dt == "torch.float8_e4m3fn", vname
            assert np.array_equal(w, np.concatenate([fp8(p + sub + x + ".weight") for x in parts])), vname
            _, s = params[vname + ".weight_scale_inv"]
            assert np.array_equal(s, np.concatenate([ck[p + sub + x + ".weight_scale_inv"].numpy() for x in parts])), vname
        for single in ["self_attn.o_proj", "mlp.down_proj"]:
            _, w = params[p + single + ".weight"]
            assert np.array_equal(w, fp8(p + single + ".weight")), single
            _, s = params[p + single + ".weight_scale_inv"]
            assert np.array_equal(s, ck[p + single + ".weight_scale_inv"].numpy()), single
    for name in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]:
        dt, w = params[name]
        assert dt == "torch.bfloat16", name
        assert np.array_equal(w, ck[name].float().numpy()), name


# The fused expert scales of layer 1 of CFG_MOE.
PLANTED = "layers.1.mlp.experts.routed_experts.w13_weight_scale_inv"


def plant_flip(model, suffix):
    """Patches the weight loader of `model`'s parameter ending in `suffix` to
    flip the columns of what it loads; returns the parameter's name."""
    params = dict(model.named_parameters())
    name = next(n for n in params if n.endswith(suffix))
    original = params[name].weight_loader

    def flipped(*a, **k):  # FusedMoE passes its arguments by keyword
        if "loaded_weight" in k:
            k["loaded_weight"] = k["loaded_weight"].flip(-1)
        else:
            a = (a[0], a[1].flip(-1)) + a[2:]
        return original(*a, **k)
    params[name].weight_loader = flipped
    return name


def sync_worker(rank, world, ep, plant, fp8_ckpt, port, sock, registered, synced, results, done):
    """TP rank `rank` of `world` of a vLLM block-FP8 model registered through
    wsync.vllm (target), and a second instance that vLLM's own load_weights
    fills from the checkpoint wsyncctl convert --dtype fp8 wrote (reference).
    With `plant`, both have that parameter's loader flipped (plant_flip), and
    the target registers with on_mismatch="loader" and loads its loader-path
    parameters after the sync."""
    from safetensors.torch import load_file
    import wsync
    import wsync.vllm
    with fp8_models(fp8_ckpt, port, world, rank, ep) as (_, target, reference):
        if plant:
            plant_flip(target, plant)
            plant_flip(reference, plant)
        reference.load_weights(load_file(os.path.join(fp8_ckpt, "model.safetensors")).items())
        client = wsync.Client(socket=sock, name=f"vllm-{rank}")
        reg = wsync.vllm.register(client, target, "policy", replica="gen",
                                  on_mismatch="loader" if plant else "refuse")
        registered.put((rank, "registered"))
        synced.wait(600)
        reg.load(target)
        paths = reg.paths()
        want = dict(reference.named_parameters())
        compared, bad = 0, []
        for n, p in target.named_parameters():
            if n.endswith(wsync.vllm.ATTENTION_SCALES):
                continue
            compared += 1
            a, b = p.detach(), want[n].detach()
            if a.dtype != b.dtype or not torch.equal(a.view(torch.uint8), b.view(torch.uint8)):
                bad.append(n)
        results.put((rank, bad, compared, sorted(n for n, path in paths.items() if path == "loader")))
        done.wait(600)
        client.close()


def convert_to_fp8(tmp_path, wsyncctl, cfg, src):
    """Writes `src` as an hf checkpoint under tmp_path/hf and converts it
    with wsyncctl convert --dtype fp8 into tmp_path/fp8."""
    from safetensors.numpy import save_file
    (tmp_path / "hf").mkdir()
    json.dump(cfg, open(tmp_path / "hf" / "config.json", "w"))
    save_file(src, str(tmp_path / "hf" / "model.safetensors"))
    r = subprocess.run([wsyncctl, "convert", "--model-config", str(tmp_path / "hf" / "config.json"), "--from", "hf",
                        "--to", "hf", "--in", str(tmp_path / "hf"), "--out", str(tmp_path / "fp8"), "--dtype", "fp8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def sync_and_compare(tmp_path, wsyncctl, daemon, cfg, src, world=1, ep=False, plant=None):
    """Converts `src` (fp32, hf names) to block FP8 with wsyncctl, registers
    it as an fp32 source with fp8_block_scales, syncs it into a vLLM model
    of the converted checkpoint (TP=world, expert parallel if ep; `plant`:
    see sync_worker) and compares every rank with vLLM's own load of the
    checkpoint: (names that differ on some rank, parameters compared per
    rank, the loader-path parameters of rank 0)."""
    import torch.multiprocessing as mp
    import wsync
    from conftest import wait_registered
    from reference import free_port
    convert_to_fp8(tmp_path, wsyncctl, cfg, src)

    client = wsync.Client(socket=daemon, name="trainer")
    client.register_model("policy", config=cfg, fp8_block_scales=True)
    bufs = {n: client.empty(t.shape, "fp32") for n, t in src.items()}
    for n, b in bufs.items():
        b[...] = src[n]
    client.register_shards("policy", "source", bufs, recipe="hf", rank=dict(rank=0, world_size=1))

    ctx = mp.get_context("spawn")
    registered, synced, results, done = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    procs = mp.start_processes(sync_worker, nprocs=world, join=False, start_method="spawn",
                               args=(world, ep, plant, str(tmp_path / "fp8"), free_port(), daemon, registered,
                                     synced, results, done))
    try:
        wait_registered(procs, registered, world)
        assert client.sync("policy", 1, progress=False).version == 1
        synced.set()
        got = sorted(wait_registered(procs, results, world))
        assert len({compared for _, _, compared, _ in got}) == 1, got
        return sorted({n for _, bad, _, _ in got for n in bad}), got[0][2], got[0][3]
    finally:
        synced.set()
        done.set()
        procs.join(timeout=60)
        client.close()


@pytest.mark.parametrize("world", [1, 2])
def test_a_sync_into_vllm_block_fp8_holds_what_vllm_loads_from_the_converted_checkpoint(tmp_path, wsyncctl, daemon,
                                                                                        world):
    """fp32 weights registered with fp8_block_scales sync into a vLLM block-FP8
    model (TP=1 and TP=2): every parameter, FP8 bytes and scales included,
    equals what vLLM's load_weights makes of the checkpoint wsyncctl convert
    --dtype fp8 writes from the same weights."""
    cfg = CFG if world == 1 else CFG_TP2
    bad, compared, _ = sync_and_compare(tmp_path, wsyncctl, daemon, cfg, hf_tensors(9, cfg), world)
    assert compared == 3 + 2 * (3 + 2 + 2 + 2 + 2)  # embed, norm, lm_head; per layer qkv w/s/b, o w/s, gate_up w/s, down w/s, 2 norms
    assert not bad, f"parameters differ from vLLM's own load of the converted checkpoint: {bad}"


@pytest.mark.parametrize("world,ep", [(1, False), (2, False), (2, True)])
def test_a_sync_into_vllm_block_fp8_moe_quantizes_each_expert_into_the_fused_buffers(tmp_path, wsyncctl, daemon,
                                                                                     world, ep):
    """The same for Qwen3-MoE (TP=1, TP=2, TP=2 with expert parallelism): vLLM
    keeps the experts of a layer in fused w13_weight/w2_weight FP8 buffers
    with [E, rows/128, cols/128] scales; the sync quantizes each expert's
    matrices into them, the router stays bf16."""
    bad, compared, _ = sync_and_compare(tmp_path, wsyncctl, daemon, CFG_MOE, moe_tensors(5), world, ep)
    # embed, norm, lm_head; per layer qkv w/s, o w/s, q/k norms, 2 norms, router, w13 w/s, w2 w/s
    assert compared == 3 + 2 * (2 + 2 + 2 + 2 + 1 + 2 + 2)
    assert not bad, f"parameters differ from vLLM's own load of the converted checkpoint: {bad}"


@pytest.mark.parametrize("world", [1, 2])
def test_fp8_weights_and_scales_take_the_loader_path_together(tmp_path, wsyncctl, daemon, world):
    """A loader that flips layer 1's fused expert scales (in the target and in
    the reference): with on_mismatch="loader", the probe sends those scales
    and their FP8 weights through the loader path. The daemon quantizes each
    expert's canonical weights whole into FP8 staging with fp32 staging for
    their scales, vLLM's load_weights takes them after the sync, and every
    parameter equals vLLM's own load of the converted checkpoint."""
    bad, compared, loader = sync_and_compare(tmp_path, wsyncctl, daemon, CFG_MOE, moe_tensors(5), world,
                                             plant=PLANTED)
    assert compared == 3 + 2 * (2 + 2 + 2 + 2 + 1 + 2 + 2)
    assert [n.split("layers.")[1] for n in loader] == ["1.mlp.experts.routed_experts.w13_weight",
                                                       "1.mlp.experts.routed_experts.w13_weight_scale_inv"], loader
    assert not bad, f"parameters differ from vLLM's own load of the converted checkpoint: {bad}"


def probe_worker(rank, fp8_ckpt, port, sock, results):
    """Probes a block-FP8 Qwen3-MoE model as it is, then with the loader of
    its fused expert scales planted to flip their columns."""
    import wsync
    import wsync.vllm
    with fp8_models(fp8_ckpt, port) as (_, target, _):
        client = wsync.Client(socket=sock, name="vllm-probe")
        clean = wsync.vllm.probe_report(client, target, "policy")
        planted = plant_flip(target, PLANTED)
        bad = wsync.vllm.probe_report(client, target, "policy")
        results.put((rank, sorted(clean.mismatches), planted, bad.mismatches))
        client.close()


def test_the_layout_probe_checks_fp8_weights_and_their_scales(tmp_path, wsyncctl, daemon):
    """wsync.vllm's probe loads position labels through vLLM's own FP8
    loaders (into fp32 scratch): the recipe agrees with every FP8 weight and
    scale of a block-FP8 MoE model, and a loader that lays the fused expert
    scales out differently is named."""
    import torch.multiprocessing as mp
    import wsync
    from conftest import wait_registered
    from reference import free_port
    convert_to_fp8(tmp_path, wsyncctl, CFG_MOE, moe_tensors(3))
    client = wsync.Client(socket=daemon, name="trainer")
    client.register_model("policy", config=CFG_MOE, fp8_block_scales=True)
    results = mp.get_context("spawn").Queue()
    procs = mp.start_processes(probe_worker, nprocs=1, join=False, start_method="spawn",
                               args=(str(tmp_path / "fp8"), free_port(), daemon, results))
    try:
        [(_, clean, planted, bad)] = wait_registered(procs, results, 1)
        assert clean == []
        assert list(bad) == [planted], bad
        assert "w13_weight_scale_inv" in bad[planted] and "probe pass" in bad[planted]
    finally:
        procs.join(timeout=60)
        client.close()
