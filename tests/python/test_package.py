"""The Python client package: installable with pip, stubs current with proto/."""
import filecmp
import subprocess
import sys

from conftest import ROOT


def test_pip_installs_the_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(ROOT / "client" / "python")], check=True,
                   timeout=300)
    out = subprocess.run([sys.executable, "-c", "import wsync, wsync.v1.wsync_pb2_grpc; print(wsync.__version__)"],
                         env={"PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.1.0"
    subprocess.run(["rm", "-rf", str(ROOT / "client" / "python" / "build")])


def test_generated_stubs_match_the_protos(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_python.sh"), str(tmp_path)], check=True)
    for name in ("types_pb2.py", "wsync_pb2.py", "wsync_pb2_grpc.py", "peer_pb2.py", "peer_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / "wsync" / "v1" / name, ROOT / "client" / "python" / "wsync" / "v1" / name,
                           shallow=False), f"{name} is stale: run scripts/gen_python.sh"
