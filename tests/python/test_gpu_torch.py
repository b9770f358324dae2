"""GPU test (marker gpu): a colocated sync between a torch trainer process and
a torch generator process on one GPU, through CUDA IPC registration of torch
CUDA tensors. Skipped unless torch with a usable CUDA device is importable.
The expected generator tensor is built here with torch slicing and casting,
independent of the daemon's planner and kernels."""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from test_e2e_sync import daemon  # noqa: F401  (fixture)

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CHILD = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[3])
    import wsync
    role, sock = sys.argv[1], sys.argv[2]
    torch.manual_seed(7)
    full = torch.randn(64, 40, device="cuda")             # canonical fp32
    c = wsync.Client(sock, name=role)
    if role == "trainer":
        c.register_model("m", tensors=[("w", (64, 40), "fp32")])
        pool = torch.empty(2 * 32 * 40 + 64, device="cuda")  # one block: offsets from its base
        for tp in range(2):
            shard = pool[64 + tp * 1280: 64 + (tp + 1) * 1280].view(32, 40)
            shard.copy_(full[tp * 32:(tp + 1) * 32])
            c.register_shards("m", "source", {"w": shard}, rank=dict(tp=tp, tp_size=2),
                              pieces={"w": [("w", ([tp * 32, 0], [32, 40]), ([0, 0], [32, 40]))]})
        torch.cuda.synchronize()
    else:
        out = torch.zeros(64, 40, dtype=torch.bfloat16, device="cuda")
        c.register_shards("m", "target", {"w": out}, rank=dict(tp=0, tp_size=1), replica="gen",
                          pieces={"w": [("w", ([0, 0], [64, 40]), ([0, 0], [64, 40]))]})
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "check":
            ok = role != "trainer" and torch.equal(out, full.to(torch.bfloat16))
            print(json.dumps({"ok": bool(ok)}), flush=True)
""")


def test_torch_colocated_sync(daemon):  # noqa: F811
    procs = {}
    for role in ("trainer", "generator"):
        procs[role] = subprocess.Popen(
            [sys.executable, "-c", CHILD, role, daemon["socket"], str(ROOT / "client" / "python")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert procs[role].stdout.readline().strip() == "ready"
    try:
        import wsync
        with wsync.Client(daemon["socket"], name="driver") as c:
            result = c.sync("m", 1)
            assert result.version == 1
        procs["generator"].stdin.write("check\n")
        procs["generator"].stdin.flush()
        assert json.loads(procs["generator"].stdout.readline())["ok"]
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
