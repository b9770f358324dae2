"""Real Megatron-core models, registered through wsync.megatron, synced to hf
and vLLM layouts, byte for byte.

Each case builds a GPTModel from the megatron-core package on CPU (local
layer spec, use_cpu_initialization, gloo process groups started with
torch.multiprocessing on loopback), in as many processes as its layout has.
The source bytes are the model's own initialized parameters, each element
then offset by a label of its global position (so that copies Megatron
initializes alike, such as the same local expert on two EP ranks, differ).

The expected bytes do not come from wsync: every process reports its shards
with the placement Megatron-core itself gives them (sharded_state_dict(): key,
global shape and offsets, experts and the GLU halves included), the test
assembles the global Megatron tensors, and the plain numpy functions below
turn them into Hugging Face and vLLM tensors. `wsyncctl convert` is checked
the same way: its per-process megatron files must hold each process's own
parameters, and converting them back must give the same HF tensors.
"""
import json
import os
import subprocess
import zlib

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import wsync
import wsync.megatron
from conftest import wait_registered
from reference import as_numpy, free_port, hf_to_vllm, megatron_to_hf, to_torch, wsync_dtype

V = 100            # vocabulary; Megatron pads it (make_vocab_size_divisible_by x TP)
DIVISIBLE_BY = 32

DENSE = {"model_type": "qwen2", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 4, "intermediate_size": 24, "num_hidden_layers": 2, "vocab_size": V,
         "tie_word_embeddings": False}
MOE = {"model_type": "qwen3_moe", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
       "head_dim": 4, "intermediate_size": 24, "moe_intermediate_size": 8, "num_experts": 4,
       "decoder_sparse_step": 1, "num_hidden_layers": 2, "vocab_size": V, "tie_word_embeddings": False}

# name, HF config, Megatron sizes, parameter dtype, vLLM target layouts (tp, expert parallel).
CASES = [
    ("dense-tp1", DENSE, dict(tp=1), torch.float32, [(1, False), (2, False)]),
    ("dense-tp2", DENSE, dict(tp=2), torch.float32, [(1, False), (2, False), (4, False)]),
    ("dense-pp2", DENSE, dict(pp=2), torch.bfloat16, [(2, False)]),
    ("moe-tp2-ep2-etp1", MOE, dict(tp=2, ep=2, etp=1), torch.bfloat16, [(1, False), (2, False), (2, True)]),
    ("moe-tp1-ep2", MOE, dict(dp=2, ep=2), torch.float32, [(2, False), (2, True)]),
    ("moe-tp2-pp2", MOE, dict(tp=2, pp=2), torch.float32, [(2, True)]),
    ("dense-pp2-vpp2", dict(DENSE, num_hidden_layers=4), dict(pp=2, vpp=2), torch.float32, [(2, False)]),
]


def padded_vocab(tp):
    m = DIVISIBLE_BY * tp
    return (V + m - 1) // m * m


def label_shards(chunks):
    """Labels every element of the Megatron chunks by its global position in
    Megatron-core's own placement (sharded_state_dict()): equal for copies
    (DP, EDP, replicated norms), different everywhere else. Returns the
    pieces (key, global offset, global shape, local shape, values)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    def shards(v):
        if isinstance(v, ShardedTensorFactory):
            built = v.build()
            for x in built if isinstance(built, list) else [built]:
                yield from shards(x)
        elif isinstance(v, ShardedTensor):
            yield v
        elif isinstance(v, dict):
            for x in v.values():
                yield from shards(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from shards(x)

    pieces = []
    with torch.no_grad():
        for sh in shards([c.sharded_state_dict() for c in chunks]):
            local = (1,) * sh.prepend_axis_num + tuple(sh.data.shape)
            idx = np.zeros(local, dtype=np.int64)
            stride = 1
            for d in reversed(range(len(local))):
                idx += (np.arange(local[d]) + sh.global_offset[d]).reshape(
                    [-1 if i == d else 1 for i in range(len(local))]) * stride
                stride *= sh.global_shape[d]
            # Small integers: exact in bf16 as in fp32.
            label = ((idx * 7 + zlib.crc32(sh.key.encode())) % 251).astype(np.float32).reshape(sh.data.shape)
            if not any(p[0] == sh.key and p[1] == tuple(sh.global_offset) for p in pieces):
                sh.data.add_(torch.from_numpy(label).to(sh.data.dtype))
            pieces.append((sh.key, tuple(sh.global_offset), tuple(sh.global_shape), local, as_numpy(sh.data)))
    return pieces


# ----------------------------------------------------------------- processes
def trainer(rank, world, port, sock, out, cfg, sizes, dtype, registered, done):
    """One Megatron process: build, label, report its shards, register, wait."""
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    tp, pp, vpp = sizes.get("tp", 1), sizes.get("pp", 1), sizes.get("vpp")
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                 virtual_pipeline_model_parallel_size=vpp,
                                 expert_model_parallel_size=sizes.get("ep", 1),
                                 expert_tensor_parallel_size=sizes.get("etp"))
    moe = cfg.get("num_experts", 0) > 0
    torch.manual_seed(1234)
    kw = dict(num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
              num_attention_heads=cfg["num_attention_heads"], num_query_groups=cfg["num_key_value_heads"],
              kv_channels=cfg["head_dim"], ffn_hidden_size=cfg["intermediate_size"], use_cpu_initialization=True,
              add_bias_linear=False, add_qkv_bias=cfg["model_type"] == "qwen2", gated_linear_unit=True,
              activation_func=torch.nn.functional.silu, normalization="RMSNorm", params_dtype=dtype,
              bf16=dtype == torch.bfloat16, pipeline_dtype=dtype, tensor_model_parallel_size=tp,
              pipeline_model_parallel_size=pp,
              sequence_parallel=False, expert_model_parallel_size=sizes.get("ep", 1),
              virtual_pipeline_model_parallel_size=vpp,
              expert_tensor_parallel_size=sizes.get("etp"))
    if moe:
        kw.update(num_moe_experts=cfg["num_experts"], moe_ffn_hidden_size=cfg["moe_intermediate_size"],
                  moe_token_dispatcher_type="allgather", moe_router_topk=2, qk_layernorm=True)
    config = TransformerConfig(**kw)
    spec = get_gpt_layer_local_spec(num_experts=cfg.get("num_experts"), moe_grouped_gemm=False,
                                    qk_layernorm=moe)
    # With virtual pipelining, a list of chunks (vp_stage 0..vpp-1), as
    # Megatron-LM's get_model returns it.
    chunks = []
    for vp in range(vpp or 1):
        chunks.append(GPTModel(
            config=config, transformer_layer_spec=spec, vocab_size=padded_vocab(tp), max_sequence_length=64,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=vpp is None, vp_stage=vp if vpp else None),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=vpp is None, vp_stage=vp if vpp else None),
            share_embeddings_and_output_weights=False, position_embedding_type="rope",
            vp_stage=vp if vpp else None))
    if dtype == torch.bfloat16:
        # As Megatron-LM trains in bf16: the wrapper casts every parameter,
        # norms included (wsync.megatron unwraps it).
        from megatron.core.transformer.module import Float16Module
        chunks = [Float16Module(config, c) for c in chunks]
    model = chunks if vpp else chunks[0]

    pieces = label_shards(chunks)

    client = wsync.Client(socket=sock, name=f"megatron-{rank}")
    registered_params = wsync.megatron.register(client, model, "policy",
                                                make_vocab_size_divisible_by=DIVISIBLE_BY)
    np.save(os.path.join(out, f"trainer-{rank}.npy"), np.array({
        "pieces": pieces, "coords": wsync.megatron.coordinates(),
        "params": {n: as_numpy(p) for n, p in registered_params.items()},
        "options": wsync.megatron.recipe_options(model, DIVISIBLE_BY)}, dtype=object), allow_pickle=True)
    registered.put(rank)
    done.wait(600)
    client.close()
    dist.destroy_process_group()


def global_tensors(reports):
    """Megatron's global tensors by sharded key, from every process's pieces."""
    out = {}
    for rep in reports:
        for key, offset, shape, local, data in rep["pieces"]:
            g = out.setdefault(key, np.full(shape, np.nan if data.dtype == np.float32 else 0xFFFF, data.dtype))
            g[tuple(slice(o, o + n) for o, n in zip(offset, local))] = data.reshape(local)
    for key, g in out.items():
        assert not (np.isnan(g).any() if g.dtype == np.float32 else (g == 0xFFFF).any()), f"{key}: holes"
    return out


# --------------------------------------------------------------------- test
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_megatron_to_hf_and_vllm(case, daemon, tmp_path, wsyncctl):
    name, cfg, sizes, dtype, vllm_layouts = case
    world = sizes.get("tp", 1) * sizes.get("pp", 1) * sizes.get("dp", 1)
    client = wsync.Client(socket=daemon, name="test")
    client.register_model("policy", config=cfg)

    ctx = mp.get_context("spawn")
    registered, done = ctx.Queue(), ctx.Event()
    procs = mp.start_processes(trainer, nprocs=world, join=False, start_method="spawn",
                               args=(world, free_port(), daemon, str(tmp_path), cfg, sizes, dtype,
                                     registered, done))
    try:
        wait_registered(procs, registered, world)
        reports = [np.load(tmp_path / f"trainer-{r}.npy", allow_pickle=True).item() for r in range(world)]
        # Megatron's own numbering of processes is the one wsync registered.
        assert sorted(r["coords"]["rank"] for r in reports) == list(range(world))
        hf = megatron_to_hf(global_tensors(reports), cfg)

        # Targets: hf (one process) and vLLM layouts, coordinates as vLLM gives them.
        targets = {"hf": [("hf", dict(rank=0, world_size=1), hf)]}
        for tp_size, ep in vllm_layouts:
            rid = f"vllm-tp{tp_size}{'-ep' if ep else ''}"
            targets[rid] = []
            for r, tensors in enumerate(hf_to_vllm(hf, cfg, tp_size, ep)):
                coords = dict(rank=r, world_size=tp_size, tp=r, tp_size=tp_size)
                coords.update(dict(ep=r, ep_size=tp_size) if ep else dict(etp=r, etp_size=tp_size))
                targets[rid].append(("vllm", coords, tensors))
        buffers = {}
        for rid, procs_of in targets.items():
            for r, (recipe, coords, tensors) in enumerate(procs_of):
                bufs = {n: client.empty(t.shape, wsync_dtype(t)) for n, t in tensors.items()}
                for b in bufs.values():
                    b.fill(0x5A)
                client.register_shards("policy", "target", bufs, rank=coords, recipe=recipe, replica=rid)
                buffers[(rid, r)] = bufs
        result = client.sync("policy", 1, progress=False)
        assert result is not None and result.version == 1

        for (rid, r), bufs in buffers.items():
            want = targets[rid][r][2]
            for n, b in bufs.items():
                assert b.dtype == want[n].dtype and b.shape == want[n].shape, (rid, r, n)
                if not np.array_equal(b.view(np.uint8), np.ascontiguousarray(want[n]).view(np.uint8)):
                    bad = np.argwhere(b != want[n])[0]
                    pytest.fail(f"{name}: {rid} process {r} {n}: first difference at {tuple(bad)}: "
                                f"{b[tuple(bad)]} != {want[n][tuple(bad)]}")

        convert_round_trip(name, cfg, sizes, reports, hf, tmp_path, wsyncctl)
    finally:
        done.set()
        procs.join(timeout=60)
        client.close()


def convert_round_trip(name, cfg, sizes, reports, hf, tmp, wsyncctl):
    """wsyncctl convert hf -> megatron gives every process its own parameters
    (by its global rank), and megatron -> hf gives the HF tensors back."""
    from safetensors.torch import load_file as load_torch, save_file

    def load_file(path):
        return {n: as_numpy(t) for n, t in load_torch(path).items()}

    (tmp / "hf").mkdir()
    json.dump(cfg, open(tmp / "config.json", "w"))
    save_file({n: to_torch(t) for n, t in hf.items()}, str(tmp / "hf" / "model.safetensors"))
    options = reports[0]["options"]
    layout = "megatron:" + ",".join([f"{k}={v}" for k, v in sizes.items() if k != "vpp"] +
                                    [f"{k}={v}" for k, v in sorted(options.items())])
    dtype = "bf16" if next(iter(hf.values())).dtype == np.uint16 else "fp32"

    def convert(frm, to, src, dst):
        r = subprocess.run([wsyncctl, "convert", "--model-config", str(tmp / "config.json"), "--from", frm,
                            "--to", to, "--in", str(tmp / src), "--out", str(tmp / dst), "--dtype", dtype],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{name}: wsyncctl convert --from {frm} --to {to}: {r.stderr}"

    convert("hf", layout, "hf", "meg")
    manifest = json.load(open(tmp / "meg" / "wsync_layout.json"))
    assert manifest["world_size"] == len(reports)
    for rep in reports:
        rank = rep["coords"]["rank"]
        entry = next(e for e in manifest["ranks"] if e["rank"] == rank)
        for k in ("tp", "cp", "dp", "pp", "etp", "ep", "edp"):
            assert entry[k] == rep["coords"][k], (name, rank, k)
        got = load_file(str(tmp / "meg" / entry["file"]))
        assert set(got) == set(rep["params"]), (name, rank, set(got) ^ set(rep["params"]))
        for n, want in rep["params"].items():
            if n in ("embedding.word_embeddings.weight", "output_layer.weight"):
                # Rows past the vocabulary are Megatron's padding: the model's
                # own values there, zeros from convert.
                rows = want.shape[0]
                keep = max(0, min(rows, V - rep["coords"]["tp"] * rows))
                assert not got[n][keep:].any(), (name, rank, n, "padding")
                got[n], want = got[n][:keep], want[:keep]
            assert np.array_equal(got[n].view(np.uint8), want.view(np.uint8)), (name, rank, n)
    convert(layout, "hf", "meg", "back")
    back = load_file(str(tmp / "back" / "model.safetensors"))
    assert set(back) == set(hf)
    for n, t in hf.items():
        assert np.array_equal(back[n].view(np.uint8), np.ascontiguousarray(t).view(np.uint8)), (name, n)
