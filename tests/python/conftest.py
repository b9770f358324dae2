import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wsyncctl():
    """Path of the wsyncctl binary built by Bazel (scripts/test.sh builds it first)."""
    path = os.environ.get("WSYNCCTL") or str(ROOT / "bazel-bin" / "client" / "cli" / "wsyncctl")
    if not os.access(path, os.X_OK):
        pytest.fail(f"wsyncctl not found at {path}; run 'bazel build //client/cli:wsyncctl' first")
    return path


@pytest.fixture
def run(wsyncctl):
    def _run(*args, check=True):
        proc = subprocess.run([wsyncctl, *args], capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"wsyncctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc
    return _run


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs torch and a CUDA GPU (skipped elsewhere)")
