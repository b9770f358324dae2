"""Tests against the real engine packages (megatron-core, vllm) from PyPI.

They run in the engines venv (scripts/engines_venv.sh), never with Debian's
Python packages, and need the wsyncd and wsyncctl binaries Bazel built
(WSYNCD, WSYNCCTL; scripts/test.sh sets both)."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "client" / "python"))


def _binary(env, *path):
    p = os.environ.get(env) or str(ROOT.joinpath("bazel-bin", *path))
    if not os.access(p, os.X_OK):
        pytest.fail(f"{env}: {p} is not an executable; build it with bazel first (scripts/test.sh does)")
    return p


def wait_registered(procs, registered, n, seconds=300):
    """Waits for `n` items on `registered` from processes started by
    torch.multiprocessing.start_processes; re-raises a process's error."""
    import queue
    deadline = time.monotonic() + seconds
    items = []
    while len(items) < n:
        try:
            items.append(registered.get(timeout=1))
        except queue.Empty:
            procs.join(timeout=0.01)  # raises the error of a process that failed
            assert time.monotonic() < deadline, f"{n - len(items)} process(es) never registered"
    return items


@pytest.fixture(scope="session")
def wsyncctl():
    return _binary("WSYNCCTL", "client", "cli", "wsyncctl")


@pytest.fixture
def daemon(tmp_path):
    """A wsyncd on a private Unix socket; yields the socket path."""
    wsyncd = _binary("WSYNCD", "daemon", "wsyncd")
    sock = f"/tmp/wsync-engines-{os.getpid()}-{time.monotonic_ns() % 1000000}/wsyncd.sock"
    log = open(tmp_path / "wsyncd.log", "w")
    p = subprocess.Popen([wsyncd, "--socket", sock, "--bucket-mib", "1"], stderr=log)
    for _ in range(500):
        if os.path.exists(sock) or p.poll() is not None:
            break
        time.sleep(0.02)
    assert os.path.exists(sock), f"wsyncd did not start: {open(tmp_path / 'wsyncd.log').read()}"
    yield sock
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0, open(tmp_path / "wsyncd.log").read()
