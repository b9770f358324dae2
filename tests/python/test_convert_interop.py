"""wsyncctl convert against the independent `safetensors` package (PyPI).

Files written by safetensors are converted by wsync, files written by wsync
are loaded by safetensors, and the Megatron layout is checked against a
numpy implementation of Megatron's QKV interleave and GLU fc1, written here
from Megatron-LM's conventions and independent of the C++ recipes.
"""
import json

import numpy as np
import pytest
import safetensors
from safetensors.numpy import load_file, save_file

CONFIG = {
    "model_type": "qwen2", "hidden_size": 16, "intermediate_size": 24,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
    "vocab_size": 90, "tie_word_embeddings": False,
}
H, I, NH, NG, L, V = 16, 24, 4, 2, 2, 90
HD = H // NH


def canonical(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for l in range(L):
        p = f"model.layers.{l}."
        shapes.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (NH * HD, H), p + "self_attn.k_proj.weight": (NG * HD, H),
            p + "self_attn.v_proj.weight": (NG * HD, H), p + "self_attn.q_proj.bias": (NH * HD,),
            p + "self_attn.k_proj.bias": (NG * HD,), p + "self_attn.v_proj.bias": (NG * HD,),
            p + "self_attn.o_proj.weight": (H, NH * HD), p + "mlp.gate_proj.weight": (I, H),
            p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I),
        })
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def write_hf_sharded(directory, tensors):
    """Two safetensors files plus model.safetensors.index.json, as HF writes them."""
    directory.mkdir()
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def load_dir(directory):
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture
def ckpt(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path


def test_files_written_by_safetensors_round_trip_through_megatron(ckpt, run):
    orig = canonical(np.float16)
    write_hf_sharded(ckpt / "hf", orig)
    cfg = str(ckpt / "config.json")
    run("convert", "--model-config", cfg, "--from", "hf", "--to", "megatron:tp=2,pp=2",
        "--in", str(ckpt / "hf"), "--out", str(ckpt / "meg"), "--quiet")
    run("convert", "--model-config", cfg, "--from", "megatron:tp=2,pp=2", "--to", "hf",
        "--in", str(ckpt / "meg"), "--out", str(ckpt / "back"), "--quiet")
    back = load_dir(ckpt / "back")
    assert sorted(back) == sorted(orig)
    for k in orig:
        assert back[k].dtype == np.float16
        np.testing.assert_array_equal(back[k], orig[k], err_msg=k)


def megatron_qkv(q, k, v, rank, tp):
    """Megatron-LM's fused QKV rows for one TP rank: per query group, its q heads, then k, then v."""
    groups_per_rank = NG // tp
    heads_per_group = NH // NG
    rows = []
    for g in range(rank * groups_per_rank, (rank + 1) * groups_per_rank):
        rows.append(q[g * heads_per_group * HD:(g + 1) * heads_per_group * HD])
        rows.append(k[g * HD:(g + 1) * HD])
        rows.append(v[g * HD:(g + 1) * HD])
    return np.concatenate(rows)


def test_megatron_rank_files_load_in_safetensors_with_megatrons_layout(ckpt, run):
    orig = canonical(np.float32, seed=1)
    write_hf_sharded(ckpt / "hf", orig)
    run("convert", "--model-config", str(ckpt / "config.json"), "--from", "hf",
        "--to", "megatron:tp=2", "--in", str(ckpt / "hf"), "--out", str(ckpt / "meg"), "--quiet")
    manifest = json.loads((ckpt / "meg" / "wsync_layout.json").read_text())
    assert manifest["recipe"] == "megatron" and manifest["sizes"]["tp"] == 2
    for rank in range(2):
        t = load_file(str(ckpt / "meg" / f"rank-{rank:05d}.safetensors"))
        for l in range(L):
            p, m = f"model.layers.{l}.self_attn.", f"decoder.layers.{l}."
            np.testing.assert_array_equal(
                t[m + "self_attention.linear_qkv.weight"],
                megatron_qkv(orig[p + "q_proj.weight"], orig[p + "k_proj.weight"],
                             orig[p + "v_proj.weight"], rank, 2))
            np.testing.assert_array_equal(
                t[m + "self_attention.linear_qkv.bias"],
                megatron_qkv(orig[p + "q_proj.bias"], orig[p + "k_proj.bias"],
                             orig[p + "v_proj.bias"], rank, 2))
            width = I // 2
            gate = orig[f"model.layers.{l}.mlp.gate_proj.weight"][rank * width:(rank + 1) * width]
            up = orig[f"model.layers.{l}.mlp.up_proj.weight"][rank * width:(rank + 1) * width]
            np.testing.assert_array_equal(t[m + "mlp.linear_fc1.weight"], np.concatenate([gate, up]))
            cols = NH * HD // 2
            np.testing.assert_array_equal(
                t[m + "self_attention.linear_proj.weight"],
                orig[p + "o_proj.weight"][:, rank * cols:(rank + 1) * cols])
        # Vocab padded to 128 * tp = 256 rows, 128 per rank; rank 1 is all padding here.
        emb = t["embedding.word_embeddings.weight"]
        assert emb.shape == (128, H)
        if rank == 0:
            np.testing.assert_array_equal(emb[:V], orig["model.embed_tokens.weight"])
            assert not emb[V:].any()
        else:
            assert not emb.any()


def bf16_bits(x):
    """Round-to-nearest-even fp32 -> bf16, in numpy (NaN-free input)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_bf16_output_matches_numpy_rounding_and_loads_in_safetensors(ckpt, run):
    orig = canonical(np.float32, seed=2)
    write_hf_sharded(ckpt / "hf", orig)
    run("convert", "--model-config", str(ckpt / "config.json"), "--from", "hf", "--to", "vllm:tp=2",
        "--in", str(ckpt / "hf"), "--out", str(ckpt / "v"), "--dtype", "bf16", "--quiet")
    run("convert", "--model-config", str(ckpt / "config.json"), "--from", "vllm:tp=2", "--to", "hf",
        "--in", str(ckpt / "v"), "--out", str(ckpt / "back"), "--quiet")
    raw = safetensors.deserialize((ckpt / "back" / "model.safetensors").read_bytes())
    got = {name: info for name, info in raw}
    assert sorted(got) == sorted(orig)
    for name, arr in orig.items():
        assert got[name]["dtype"] in ("BF16", "bfloat16")
        assert list(got[name]["shape"]) == list(arr.shape)
        np.testing.assert_array_equal(np.frombuffer(bytes(got[name]["data"]), dtype=np.uint16),
                                      bf16_bits(arr).reshape(-1), err_msg=name)


def test_corrupt_input_fails_naming_the_file(ckpt, run):
    orig = canonical(np.float32, seed=3)
    (ckpt / "hf").mkdir()
    save_file(orig, str(ckpt / "hf" / "model.safetensors"))
    data = (ckpt / "hf" / "model.safetensors").read_bytes()
    (ckpt / "hf" / "model.safetensors").write_bytes(data[:100])
    proc = run("convert", "--model-config", str(ckpt / "config.json"), "--from", "hf",
               "--to", "vllm:tp=2", "--in", str(ckpt / "hf"), "--out", str(ckpt / "v"), check=False)
    assert proc.returncode == 1
    assert str(ckpt / "hf" / "model.safetensors") in proc.stderr
    assert "truncated" in proc.stderr
    assert not (ckpt / "v" / "rank-00000.safetensors").exists()
