#!/usr/bin/env python3
"""Load and fault soak against a real wsyncd, on one machine (Unix socket only).

A trainer process and several generator processes (staged and in-place
replicas, each of two tensor-parallel ranks) register with the daemon; a
driver syncs new versions as fast as it can while it injects faults at
random: it cancels syncs mid-flight, SIGKILLs the trainer or a generator in
the middle of a sync and starts a new one, and lets generators leave and new
ones join. Every generator checks, inside its commit callback (before it
acknowledges any later pause, so nothing can change the bytes meanwhile),
that its memory holds exactly the bytes of the version the daemon just
reported committed. The run is bounded by --seconds and ends with a report:

  operations, faults injected, versions checked, lost (wrong bytes under a
  committed version: must be 0)

Exit status 0 only when nothing was lost and every generator that was
asked to check did so. Usage: soak.py --wsyncd PATH [--seconds 20] [--seed 1]
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))

import numpy as np  # noqa: E402

R, C = 256, 512  # the model: one fp32 tensor "w" [R, C] (512 KiB)


def data(version, rows=slice(None)):
    """The trainer's weights at `version`: distinct per version and element, exact in fp32."""
    i = np.arange(R * C, dtype=np.int64).reshape(R, C)[rows]
    return ((i * 7 + version * 1000003) % 65521).astype(np.float32)


def piece(t):
    h = R // 2
    return {"w": [("w", ([t * h, 0], [h, C]), ([0, 0], [h, C]))]}


# ----------------------------------------------------------------- roles
def trainer(sock):
    import wsync
    c = wsync.Client(sock, name="soak-trainer", reconnect=False)
    w = c.empty([R, C], "fp32")
    c.register_shards("soak", "source", {"w": w}, pieces={"w": [("w", ([0, 0], [R, C]), ([0, 0], [R, C]))]})
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        w[:] = data(cmd["load"])
        print(json.dumps({"loaded": cmd["load"]}), flush=True)


def generator(sock, replica, mode):
    import wsync
    lock = threading.Lock()
    bufs = []

    def on_commit(model, rep, version, digest):
        with lock:
            ok = all(np.array_equal(bufs[t], data(version, slice(t * R // 2, (t + 1) * R // 2))) for t in range(2))
        print(json.dumps({"replica": replica, "checked": version, "ok": bool(ok)}), flush=True)

    c = wsync.Client(sock, name=f"soak-{replica}", on_commit=on_commit, reconnect=False)
    for t in range(2):
        bufs.append(c.empty([R // 2, C], "fp32"))
        c.register_shards("soak", "target", {"w": bufs[t]}, rank={"tp": t, "tp_size": 2}, replica=replica,
                          update_mode=mode, pieces=piece(t))
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:  # until the driver closes stdin
        pass
    c.close()


# ---------------------------------------------------------------- driver
class Child:
    def __init__(self, args, log):
        self.p = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log, text=True)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cv:
                self.lines.append(json.loads(line))
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_for(self, key, timeout=30):
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for i, m in enumerate(self.lines):
                    if key in m:
                        return self.lines.pop(i)
                if self.p.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"{self.p.args[2:]} gave no {key!r} (exit {self.p.poll()})")
                self.cv.wait(0.1)

    def send(self, obj):
        self.p.stdin.write(json.dumps(obj) + "\n")
        self.p.stdin.flush()

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        import wsync
        wsync.remove_stale_shm(self.p.pid)  # a SIGKILLed client cannot unlink its own

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
                self.p.wait(timeout=10)
            except Exception:
                self.p.kill()


def drive(args):
    import grpc
    import wsync
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="wsync-soak-")
    sock = os.path.join(tmp, "run", "wsyncd.sock")
    log = open(os.path.join(tmp, "children.log"), "w")
    daemon_log = open(os.path.join(tmp, "wsyncd.log"), "w")
    d = subprocess.Popen([args.wsyncd, "--socket", sock, "--bucket-mib", "1", "--pause-timeout-ms", "5000",
                          "--fault-bucket-delay-ms", "2"], stderr=daemon_log)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.02)
    counts = {"operations": 0, "syncs_ok": 0, "syncs_failed": 0, "faults": 0, "cancels": 0,
              "trainer_kills": 0, "generator_kills": 0, "generator_leaves": 0, "generator_joins": 0,
              "versions_checked": 0, "lost": 0}
    gens, trainer_child, ctl = {}, None, None
    try:
        ctl = wsync.Client(sock, name="soak-driver", reconnect=False)
        ctl.register_model("soak", tensors=[("w", [R, C], "fp32")])

        def start_trainer():
            t = Child(["--role", "trainer", "--socket", sock], log)
            t.wait_for("ready")
            return t

        serial = [0]

        def start_gen():
            serial[0] += 1
            rid = f"g{serial[0]}"
            mode = rng.choice(["staged", "in_place"])
            g = Child(["--role", "generator", "--socket", sock, "--replica", rid, "--mode", mode], log)
            g.wait_for("ready")
            gens[rid] = g
            counts["generator_joins"] += 1
            return rid

        trainer_child = start_trainer()
        for _ in range(3):
            start_gen()
        version = 0
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            version += 1
            trainer_child.send({"load": version})
            trainer_child.wait_for("loaded")
            fault = rng.random()
            victim = None
            done = threading.Event()
            if fault < 0.15:
                kind = "cancel"
            elif fault < 0.25:
                kind = "kill_trainer"
            elif fault < 0.35:
                kind = "kill_generator"
                victim = rng.choice(sorted(gens))
            else:
                kind = None

            def inject(p):
                if kind is None or done.is_set() or p.buckets_done < 1:
                    return
                done.set()
                counts["faults"] += 1
                if kind == "cancel":
                    counts["cancels"] += 1
                    threading.Thread(target=lambda: _quiet(ctl.cancel, "soak", version)).start()
                elif kind == "kill_trainer":
                    counts["trainer_kills"] += 1
                    trainer_child.kill()
                else:
                    counts["generator_kills"] += 1
                    gens[victim].kill()

            counts["operations"] += 1
            try:
                ctl.sync("soak", version, progress=inject, bucket_bytes=64 << 10, deadline_ms=30000)
                counts["syncs_ok"] += 1
            except wsync.WsyncError as e:
                counts["syncs_failed"] += 1
                if e.code not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED,
                                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DATA_LOSS,
                                  grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            if kind == "kill_trainer" and done.is_set():
                trainer_child = start_trainer()
            if kind == "kill_generator" and done.is_set():
                gens.pop(victim)
                start_gen()
            # Membership churn between syncs.
            r = rng.random()
            if r < 0.1 and len(gens) > 1:
                rid = rng.choice(sorted(gens))
                gens.pop(rid).close()
                counts["generator_leaves"] += 1
                counts["operations"] += 1
            elif r < 0.2 and len(gens) < 5:
                start_gen()
                counts["operations"] += 1
            # Collect what generators checked so far.
            for g in gens.values():
                with g.cv:
                    keep = []
                    for m in g.lines:
                        if "checked" in m:
                            counts["versions_checked"] += 1
                            counts["lost"] += 0 if m["ok"] else 1
                            if not m["ok"]:
                                print(f"LOST: replica {m['replica']} version {m['checked']} holds wrong bytes",
                                      file=sys.stderr)
                        else:
                            keep.append(m)
                    g.lines = keep
        # A last sync that nothing disturbs: every generator must check it.
        version += 1
        trainer_child.send({"load": version})
        trainer_child.wait_for("loaded")
        ctl.sync("soak", version, progress=False)
        counts["operations"] += 1
        counts["syncs_ok"] += 1
        for rid, g in gens.items():
            while True:  # earlier checks may still be queued
                m = g.wait_for("checked", timeout=30)
                counts["versions_checked"] += 1
                if not m["ok"]:
                    counts["lost"] += 1
                    print(f"LOST: replica {rid} version {m['checked']} holds wrong bytes", file=sys.stderr)
                if m["checked"] == version:
                    break
    finally:
        for g in gens.values():
            g.close()
        if trainer_child:
            trainer_child.close()
        if ctl:
            ctl.close()
        d.send_signal(signal.SIGTERM)
        daemon_rc = d.wait(timeout=30)
    counts["daemon_exit"] = daemon_rc
    print("soak: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0 if counts["lost"] == 0 and daemon_rc == 0 and counts["versions_checked"] > 0 else 1


def _quiet(fn, *a):
    try:
        fn(*a)
    except Exception:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="driver", choices=["driver", "trainer", "generator"])
    ap.add_argument("--wsyncd")
    ap.add_argument("--socket")
    ap.add_argument("--replica")
    ap.add_argument("--mode")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.role == "trainer":
        return trainer(args.socket)
    if args.role == "generator":
        return generator(args.socket, args.replica, args.mode)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
