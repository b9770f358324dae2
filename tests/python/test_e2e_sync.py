"""Multi-process end-to-end tests: a real wsyncd, trainer processes and
generator processes (scripts/demo/trainer.py, generator.py), checked against
the independent numpy reconstruction in scripts/demo/layouts.py."""
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "client" / "python"))
import wsync  # noqa: E402

DEMO = ROOT / "scripts" / "demo"
PY = sys.executable


def small_config(**kw):
    c = {"model_type": "qwen3_moe", "hidden_size": 64, "num_attention_heads": 8,
         "num_key_value_heads": 2, "head_dim": 8, "num_hidden_layers": 2, "num_experts": 4,
         "moe_intermediate_size": 32, "intermediate_size": 64, "decoder_sparse_step": 1,
         "vocab_size": 200, "tie_word_embeddings": False}
    c.update(kw)
    return c


class Proc:
    def __init__(self, argv, log):
        self.p = subprocess.Popen([PY, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=log, text=True)

    def ask(self, obj=None):
        if obj is not None:
            self.p.stdin.write(json.dumps(obj) + "\n")
            self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, f"{self.p.args} exited with {self.p.wait()}"
        return json.loads(line)

    def kill(self):
        self.p.kill()
        self.p.wait()
        wsync.remove_stale_shm(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write('{"cmd": "exit"}\n')
                self.p.stdin.flush()
                self.p.wait(timeout=20)
            except Exception:
                self.p.kill()


@pytest.fixture
def daemon(tmp_path, wsyncctl, request):
    wsyncd = os.environ.get("WSYNCD") or str(ROOT / "bazel-bin" / "daemon" / "wsyncd")
    sock = f"/tmp/wsync-e2e-{os.getpid()}-{time.monotonic_ns() % 100000}/wsyncd.sock"
    log = open(tmp_path / "wsyncd.log", "w")
    # Tests that kill a process mid-transfer slow every bucket down (fault
    # injection) so that the kill lands while buckets are still moving.
    delay = getattr(request, "param", 0)
    p = subprocess.Popen([wsyncd, "--socket", sock, "--bucket-mib", "1", "--pause-timeout-ms", "5000",
                          "--fault-bucket-delay-ms", str(delay)], stderr=log)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.02)
    yield {"socket": sock, "pid": p.pid, "log": tmp_path / "wsyncd.log", "tmp": tmp_path}
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    assert not os.path.exists(sock)


class Cluster:
    """Trainer ranks (megatron) and generator replicas (vllm) around a daemon."""

    def __init__(self, daemon, cfg, tp=2, pp=2):
        self.d = daemon
        self.cfg_path = str(daemon["tmp"] / "config.json")
        json.dump(cfg, open(self.cfg_path, "w"))
        self.log = open(daemon["tmp"] / "children.log", "a")
        self.common = ["--socket", daemon["socket"], "--config", self.cfg_path]
        self.tp, self.pp = tp, pp
        self.trainers = {}
        for pp_ in range(pp):
            for tp_ in range(tp):
                self.start_trainer(tp_, pp_)
        self.gens = {}

    def start_trainer(self, tp, pp):
        extra = ["--register-model"] if (tp, pp) == (0, 0) else []
        t = Proc([str(DEMO / "trainer.py"), *self.common, "--tp", str(tp), "--tp-size", str(self.tp),
                  "--pp", str(pp), "--pp-size", str(self.pp), *extra], self.log)
        assert t.ask()["ready"]
        self.trainers[(tp, pp)] = t
        return t

    def add_gen(self, replica, tp_size, mode):
        g = Proc([str(DEMO / "generator.py"), *self.common, "--replica", replica, "--tp-size",
                  str(tp_size), "--mode", mode], self.log)
        assert g.ask()["ready"]
        self.gens[replica] = g
        return g

    def load(self, base, lora):
        for t in self.trainers.values():
            assert t.ask({"cmd": "load", "base_seed": base, "lora_seed": lora})["ok"]

    def check(self, version, base, lora, **kw):
        out = {}
        for r, g in self.gens.items():
            c = g.ask({"cmd": "check", "version": version, "base_seed": base, "lora_seed": lora, **kw})
            assert c["ok"], (r, c["errors"])
            assert c["version"] == version
            out[r] = c
        return out

    def close(self):
        for p in list(self.trainers.values()) + list(self.gens.values()):
            p.stop()
        self.log.close()


@pytest.fixture
def cluster_factory(daemon):
    made = []

    def make(cfg=None, **kw):
        c = Cluster(daemon, cfg or small_config(), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_equal_and_unequal_tp_replicated_kv_moe_every_lora_mode_staged_and_in_place(daemon, cluster_factory):
    c = cluster_factory()
    # TP=4 > 2 KV heads: replicated KV heads; TP=2 equal to the trainer; TP=1 in place.
    c.add_gen("tp4", 4, "staged")
    c.add_gen("tp2", 2, "in_place")
    c.add_gen("tp1", 1, "staged")
    with wsync.Client(daemon["socket"], name="driver") as d:
        c.load(1, 1)
        r = d.sync("policy", 1, progress=False)  # plain, no LoRA
        assert set(r.replicas) == {"tp4", "tp2", "tp1"}
        c.check(1, 1, None)
        r = d.sync("policy", 2, lora="merge", progress=False)
        c.check(2, 1, 1)
        c.load(1, 2)
        r2 = d.sync("policy", 3, lora="adapter_only", progress=False)
        assert r2.bytes < r.bytes  # only the adapted tensors moved
        c.check(3, 1, 2)
        r = d.sync("policy", 4, lora="merge", progress=False)
        c.check(4, 1, 2, same_as_previous=True)  # adapter_only == merge, bit for bit
        r = d.sync("policy", 5, lora="unmerge", progress=False)
        # Unmerging the adapter merged at version 4 returns the base within rounding.
        st = d.status()
        assert {x.replica_id: x.version for x in st.models[0].replicas} == {"tp4": 5, "tp2": 5, "tp1": 5}
        again = d.sync("policy", 5, lora="unmerge", progress=False)
        assert again.bytes == 0  # idempotent retry: nothing moved


def daemon_maps(pid):
    with open(f"/proc/{pid}/maps") as f:
        return sum("/wsync-" in line for line in f)


def daemon_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("daemon", [20], indirect=True)
def test_trainer_killed_mid_sync(daemon, cluster_factory):
    c = cluster_factory()
    c.add_gen("g", 2, "staged")
    with wsync.Client(daemon["socket"], name="driver") as d:
        c.load(1, 1)
        first = d.sync("policy", 1, progress=False)
        c.check(1, 1, None)
        maps_before, fds_before = daemon_maps(daemon["pid"]), daemon_fds(daemon["pid"])
        c.load(2, 1)
        victim = c.trainers[(1, 1)]

        def kill_once(p):
            if p.phase == wsync.client.types_pb2.TRANSFERRING and p.buckets_done >= 2 and victim.p.poll() is None:
                victim.p.send_signal(signal.SIGKILL)
                victim.p.wait()
                wsync.remove_stale_shm(victim.p.pid)
                time.sleep(0.3)  # the daemon notices the broken stream

        with pytest.raises(wsync.WsyncError) as e:
            d.sync("policy", 2, progress=kill_once, bucket_bytes=64 << 10)
        assert e.value.code == grpc.StatusCode.ABORTED
        assert "client 'trainer-tp1-pp1'" in e.value.message
        # The generator keeps version 1 with its digest; the daemon is healthy.
        w = d.wait_version("policy", "g", 1, 0)
        assert (w.version, w.digest) == (1, d.status().models[0].replicas[0].digest)
        c.check(1, 1, None)
        st = d.status()
        assert st.serving
        # Its mappings went with it (the other trainers' remain), no fd leaked.
        assert daemon_maps(daemon["pid"]) < maps_before
        assert daemon_fds(daemon["pid"]) <= fds_before
        # A sync now names the bytes nobody holds (process tp1 pp1's half of
        # layer 1); once it is back, syncs succeed.
        with pytest.raises(wsync.WsyncError) as e:
            d.sync("policy", 2, progress=False)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "3 registered) do not hold all of the model yet; no holder for tensor 'model.layers.1." in e.value.message
        c.start_trainer(1, 1)
        c.load(2, 1)
        d.sync("policy", 2, progress=False)
        c.check(2, 2, None)
        assert first.digest != d.status().models[0].replicas[0].digest


@pytest.mark.parametrize("daemon", [20], indirect=True)
def test_generator_dying_mid_sync(daemon, cluster_factory):
    c = cluster_factory()
    c.add_gen("a", 2, "in_place")
    g = c.add_gen("b", 1, "staged")
    with wsync.Client(daemon["socket"], name="driver") as d:
        c.load(1, 1)
        d.sync("policy", 1, progress=False)

        def kill(p):
            if p.phase == wsync.client.types_pb2.TRANSFERRING and p.buckets_done >= 1 and g.p.poll() is None:
                g.kill()
                time.sleep(0.3)

        with pytest.raises(wsync.WsyncError) as e:
            d.sync("policy", 2, progress=kill, bucket_bytes=16 << 10)
        assert e.value.code == grpc.StatusCode.ABORTED
        assert "client 'gen-b'" in e.value.message
        del c.gens["b"]
        # The in-place replica was written partly: poisoned until a full resend.
        rep = {r.replica_id: r for r in d.status().models[0].replicas}
        assert set(rep) == {"a"}
        assert rep["a"].poisoned and rep["a"].version == 1
        d.sync("policy", 2, progress=False)
        c.check(2, 1, None)


def test_bad_registrations_get_precise_errors(daemon):
    with wsync.Client(daemon["socket"], name="bad") as cl:
        with pytest.raises(wsync.WsyncError) as e:
            cl.register_shards("nope", "source", {"x": cl.empty((4,), "fp32")})
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert e.value.message == "model 'nope' is not registered"
        cl.register_model("m", tensors=[("w", (8, 4), "fp32")])
        buf = cl.empty((8, 4), "bf16")
        with pytest.raises(wsync.WsyncError) as e:
            cl.register_shards("m", "source", {"w": buf},
                               pieces={"w": [("w", ([0, 0], [8, 4]), ([0, 0], [8, 5]))]})
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "shard box [0:8, 0:5] is outside the shard's shape [8, 4]" in e.value.message
        wrong = cl.empty((4, 8), "bf16")
        with pytest.raises(wsync.WsyncError) as e:
            cl.register_shards("m", "source", {"w": wrong},
                               pieces={"w": [("w", ([0, 0], [8, 4]), ([0, 0], [4, 8]))]})
        assert "have different sizes" in e.value.message
        # Memory owned by another user is refused: a child that dropped to
        # nobody registers an object root created.
        code = r'''
import os, sys
sys.path.insert(0, sys.argv[2])
import wsync
from wsync.v1 import types_pb2, wsync_pb2
os.setgid(65534); os.setuid(65534)
c = wsync.Client(sys.argv[1], name="nobody")
c.register_model("nobodys", tensors=[("w", [8, 4], "fp32")])  # its own model; root's memory
req = wsync_pb2.RegisterShardsRequest(session_id=c.session_id, model_id="nobodys", role=types_pb2.SOURCE)
b = req.buffers.add(name="w", shape=[8, 4], dtype=types_pb2.FLOAT32,
                    memory=types_pb2.MemoryRef(host_shm=types_pb2.HostShm(name=sys.argv[3]), offset=0, nbytes=128))
b.pieces.add(tensor="w", canonical=types_pb2.Box(offsets=[0, 0], sizes=[8, 4]),
             shard=types_pb2.Box(offsets=[0, 0], sizes=[8, 4]))
try:
    c.stub.RegisterShards(req)
    print("accepted")
except Exception as e:
    print(e.code().name, e.details())
'''
        if os.getuid() == 0:
            shm = "/wsync-e2e-root-owned"
            fd = os.open("/dev/shm" + shm, os.O_CREAT | os.O_RDWR, 0o666)
            os.ftruncate(fd, 4096)
            os.close(fd)
            os.chmod(os.path.dirname(daemon["socket"]), 0o755)
            os.chmod(daemon["socket"], 0o666)
            try:
                out = subprocess.run([PY, "-c", code, daemon["socket"], str(ROOT / "client" / "python"), shm],
                                     capture_output=True, text=True, timeout=60)
                assert out.stdout.startswith("PERMISSION_DENIED"), out.stdout + out.stderr
                assert "is owned by uid 0, not by client 'nobody' (uid 65534)" in out.stdout
            finally:
                os.unlink("/dev/shm" + shm)


def test_wait_version_times_out(daemon, cluster_factory):
    c = cluster_factory()
    c.add_gen("g", 1, "staged")
    with wsync.Client(daemon["socket"], name="driver") as d:
        t0 = time.monotonic()
        with pytest.raises(wsync.WsyncError) as e:
            d.wait_version("policy", "g", 1, timeout_ms=300)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert e.value.message == ("model 'policy' replica 'g' did not reach version 1 within 300 ms "
                                   "(it is at version 0)")
        assert time.monotonic() - t0 >= 0.29
        with pytest.raises(wsync.WsyncError) as e:
            d.wait_version("policy", "nope", 1, timeout_ms=10)
        assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_wsyncctl_sync_wait_models_status_cancel(daemon, cluster_factory, run):
    c = cluster_factory()
    c.add_gen("g", 2, "staged")
    c.load(3, 1)
    s = ["--socket", daemon["socket"]]
    r = run(*s, "sync", "policy", "1", "--lora", "merge", "--no-progress")
    assert "model policy version 1 committed on g" in r.stdout
    assert "digest" in r.stdout and "transfer" in r.stdout
    c.check(1, 3, 1)
    r = run(*s, "wait", "policy", "g", "1", "--wait-ms", "1000")
    assert "replica g at version 1" in r.stdout
    r = run(*s, "models")
    assert "policy" in r.stdout and "g@v1" in r.stdout
    r = run(*s, "status")
    assert "RANKS" in r.stdout and "trainer-tp1-pp1" in r.stdout and "staged" in r.stdout
    assert "g@v1" in r.stdout
    r = run(*s, "--json", "status")
    st = json.loads(r.stdout)
    assert st["models"][0]["replicas"][0]["version"] == "1"
    r = run(*s, "cancel", "policy", check=False)
    assert r.returncode == 1
    assert "no sync of model 'policy' is running" in r.stderr
    r = run(*s, "wait", "policy", "g", "2", "--wait-ms", "100", check=False)
    assert r.returncode == 1
    assert "did not reach version 2 within 100 ms" in r.stderr


def e4m3_reference(x):
    """fp32 -> float8_e4m3fn codes, written plainly: every finite code
    decoded from its bits, the nearest one taken (ties to the even code),
    magnitudes past 448 saturated."""
    codes = np.arange(127)  # 0x00..0x7e: the non-negative finite codes, increasing
    e, m = codes >> 3, codes & 7
    vals = np.where(e == 0, m / 512.0, (1 + m / 8.0) * 2.0 ** (e - 7.0))
    a = np.minimum(np.abs(x.astype(np.float64)), 448.0)
    hi = np.clip(np.searchsorted(vals, a), 1, 126)
    lo = hi - 1
    dlo, dhi = a - vals[lo], vals[hi] - a
    pick = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (pick | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)


def scaled_reference(w, scaling):
    """(codes, scales) of one fp32 matrix: one scale per row or per matrix,
    amax / 448 in fp32 (1 where amax is 0), codes of w / scale in fp32."""
    amax = np.abs(w).max(axis=1, keepdims=True) if scaling == "channel" else np.abs(w).max().reshape(1, 1)
    scale = np.where(amax == 0, np.float32(1), amax / np.float32(448)).astype(np.float32)
    return e4m3_reference((w / scale).astype(np.float32)), scale


@pytest.mark.parametrize("scaling", ["channel", "tensor"])
def test_fp8_channel_and_tensor_scales_match_a_numpy_reference(daemon, run, scaling):
    """q is held by two trainer buffers, split by columns, so each row's
    amax (and the matrix's) spans both; the generator fuses q, k and v into
    one fp8 qkv buffer with vLLM's stacked scales ([128, 1] per channel, [3]
    per tensor)."""
    rng = np.random.default_rng(5)
    shapes = {"q": (64, 32), "k": (32, 32), "v": (32, 32)}
    name = {p: f"model.layers.0.self_attn.{p}_proj.weight" for p in shapes}
    w = {p: (rng.standard_normal(s) * (1 + np.arange(s[0]))[:, None]).astype(np.float32) for p, s in shapes.items()}
    model = f"fp8-{scaling}"
    with wsync.Client(daemon["socket"], name="fp8") as cl:
        with pytest.raises(ValueError):
            cl.register_model(model, tensors=[(name["q"], (64, 32), "bf16")], fp8_scaling="rows")
        with pytest.raises(wsync.WsyncError) as e:
            cl.register_model(model, tensors=[(name["q"], (64, 32), "bf16")], fp8_block_scales=True,
                              fp8_scaling=scaling)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"fp8_block_scales asks for block scales, fp8_scaling for {scaling}" in e.value.message
        resp = cl.register_model(model, tensors=[(name[p], s, "bf16") for p, s in shapes.items()],
                                 fp8_scaling=scaling)
        assert resp.num_tensors == 6  # three weights, three "<weight>_scale"
        src = {"q_left": cl.empty((64, 16), "fp32"), "q_right": cl.empty((64, 16), "fp32"),
               "k": cl.empty((32, 32), "fp32"), "v": cl.empty((32, 32), "fp32")}
        src["q_left"][...] = w["q"][:, :16]
        src["q_right"][...] = w["q"][:, 16:]
        src["k"][...] = w["k"]
        src["v"][...] = w["v"]
        cl.register_shards(model, "source", src, pieces={
            "q_left": [(name["q"], ([0, 0], [64, 16]), ([0, 0], [64, 16]))],
            "q_right": [(name["q"], ([0, 16], [64, 16]), ([0, 0], [64, 16]))],
            "k": [(name["k"], ([0, 0], [32, 32]), ([0, 0], [32, 32]))],
            "v": [(name["v"], ([0, 0], [32, 32]), ([0, 0], [32, 32]))]})
        rows = {"q": 0, "k": 64, "v": 96}
        per = {p: s[0] if scaling == "channel" else 1 for p, s in shapes.items()}
        scale_rows = {"q": 0, "k": per["q"], "v": per["q"] + per["k"]}
        qkv = cl.empty((128, 32), "fp8_e4m3")
        scales = cl.empty((sum(per.values()), 1), "fp32")
        cl.register_shards(model, "target", {"qkv": qkv, "qkv_scale": scales}, replica="gen", pieces={
            "qkv": [(name[p], ([0, 0], list(s)), ([rows[p], 0], list(s))) for p, s in shapes.items()],
            "qkv_scale": [(name[p] + "_scale", ([0, 0], [per[p], 1]), ([scale_rows[p], 0], [per[p], 1]))
                          for p in shapes]})
        result = cl.sync(model, 1, progress=False)
        assert result.version == 1
        # q comes from two buffers, so it is assembled first; k and v are read straight from theirs.
        assert (result.fp8_pieces, result.fp8_assembled) == (3, 1)
        for p, s in shapes.items():
            codes, scale = scaled_reference(w[p], scaling)
            assert np.array_equal(qkv[rows[p]:rows[p] + s[0]], codes), p
            assert np.array_equal(scales[scale_rows[p]:scale_rows[p] + per[p]], scale), p
        r = run("--socket", daemon["socket"], "sync", model, "2", "--no-progress")
        assert "FP8: 3 pieces quantized, 2 read straight from one source, 1 assembled in fp32 first" in r.stdout
        r = run("--socket", daemon["socket"], "models")
        assert f"6 (3 FP8, {scaling} scales)" in r.stdout
        st = json.loads(run("--socket", daemon["socket"], "--json", "status").stdout)
        m = next(m for m in st["models"] if m["model_id"] == model)
        assert (m["fp8_weights"], m["fp8_scaling"]) == ("3", f"FP8_SCALING_{scaling.upper()}")
        cl.unregister(model)
