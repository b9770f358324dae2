"""The Python client across daemon restarts and forks, against a real wsyncd."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "client" / "python"))
import wsync  # noqa: E402

WSYNCD = os.environ.get("WSYNCD") or str(ROOT / "bazel-bin" / "daemon" / "wsyncd")
N = 1024  # the model: one [N, N] fp32 tensor (4 MiB, four 1 MiB buckets)


class Daemon:
    def __init__(self, tmp_path):
        self.sock = f"/tmp/wsync-res-{os.getpid()}-{time.monotonic_ns() % 100000}/wsyncd.sock"
        self.log = open(tmp_path / "wsyncd.log", "a")
        self.p = None

    def start(self):
        self.p = subprocess.Popen([WSYNCD, "--socket", self.sock, "--bucket-mib", "1",
                                   "--fault-bucket-delay-ms", "300"], stderr=self.log)
        for _ in range(500):
            if os.path.exists(self.sock):
                return
            time.sleep(0.02)
        raise AssertionError("wsyncd did not start")

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(timeout=30)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    d.start()
    yield d
    d.stop()


def whole(name):
    return {name: [(name, ([0, 0], [N, N]), ([0, 0], [N, N]))]}


def wait_for(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_a_restarted_daemon_poisons_the_interrupted_replica_and_clients_reattach(daemon):
    events = {"resume": [], "reconnect": 0}
    paused = threading.Event()
    trainer = wsync.Client(daemon.sock, name="trainer")
    gen = wsync.Client(daemon.sock, name="gen",
                       on_pause=lambda m, r, v: paused.set() if v == 2 else None,
                       on_resume=lambda m, r, v, p: events["resume"].append((m, r, v, p)),
                       on_reconnect=lambda c: events.__setitem__("reconnect", events["reconnect"] + 1))
    try:
        trainer.register_model("m", tensors=[("w", [N, N], "fp32")])
        w = trainer.empty([N, N], "fp32")
        w[:] = 1.0
        trainer.register_shards("m", "source", {"w": w}, pieces=whole("w"))
        live = gen.empty([N, N], "fp32")
        gen.register_shards("m", "target", {"w": live}, replica="r", update_mode="in_place", pieces=whole("w"))
        trainer.sync("m", 1, progress=False)
        assert wait_for(lambda: gen.committed.get(("m", "r")) == 1)
        assert np.array_equal(live, w)

        # Version 2 starts writing the generator's live memory; the daemon is
        # SIGKILLed in the middle.
        w[:] = 2.0
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("err", _sync_error(trainer, 2)))
        t.start()
        assert paused.wait(20)
        time.sleep(0.5)  # a bucket or so is written
        daemon.kill()
        t.join(30)
        assert isinstance(result.get("err"), wsync.WsyncError)

        # The generator was told: the replica is poisoned, not at version 1.
        assert wait_for(lambda: ("m", "r", 2, True) in events["resume"])
        assert ("m", "r") in gen.poisoned
        assert ("m", "r") not in gen.committed

        # A new daemon on the same socket: both clients re-attach and
        # re-register by themselves (the generator waits for the model).
        daemon.start()
        assert wait_for(lambda: gen.reconnects == 1 and trainer.reconnects == 1)
        assert wait_for(lambda: events["reconnect"] == 1)
        st = trainer.status()
        assert [m.model_id for m in st.models] == ["m"]
        assert wait_for(lambda: len(trainer.status().models[0].ranks) == 2)

        # The next sync repairs the replica.
        w[:] = 3.0
        trainer.sync("m", 3, progress=False)
        assert wait_for(lambda: gen.committed.get(("m", "r")) == 3)
        assert ("m", "r") not in gen.poisoned
        assert np.array_equal(live, w)
    finally:
        trainer.close()
        gen.close()


def _sync_error(client, version):
    try:
        client.sync("m", version, progress=False)
    except wsync.WsyncError as e:
        return e
    return None


def _child_uses_parents_client(q):
    c = _child_uses_parents_client.client
    try:
        c.status()
        q.put("no error")
    except wsync.WsyncError as e:
        q.put(e.message)
    c.close()  # must leave the parent's connection alone


def test_a_forked_child_cannot_break_the_parents_session(daemon):
    c = wsync.Client(daemon.sock, name="parent")
    try:
        c.register_model("m", tensors=[("w", [N, N], "fp32")])
        session = c.session_id
        _child_uses_parents_client.client = c
        q = mp.get_context("fork").Queue()
        for _ in range(3):  # DataLoader-style workers come and go
            p = mp.get_context("fork").Process(target=_child_uses_parents_client, args=(q,))
            p.start()
            p.join(20)
            assert p.exitcode == 0
            assert "belongs to another process" in q.get(timeout=5)
        time.sleep(0.3)
        st = c.status()
        assert [s.client_name for s in st.sessions] == ["parent"]
        assert st.sessions[0].session_id == session
        assert [m.model_id for m in st.models] == ["m"]
        assert c.reconnects == 0
    finally:
        c.close()


def test_remove_stale_shm_removes_only_what_dead_processes_left():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths = {p: f"/dev/shm/wsync-{p}-{os.getpid()}-test" for p in (dead.pid, os.getpid())}
    for path in paths.values():
        open(path, "wb").close()
    try:
        removed = wsync.remove_stale_shm()
        assert os.path.basename(paths[dead.pid]) in removed
        assert os.path.exists(paths[os.getpid()])  # this process still runs
        assert wsync.remove_stale_shm(os.getpid()) == [os.path.basename(paths[os.getpid()])]
    finally:
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)
