"""The wsync demo: a daemon, a simulated Megatron trainer (TP=2 x PP=2, a small
Qwen3-MoE-shaped model, LoRA on the attention projections) and two simulated
vLLM replicas (TP=4 staged, TP=1 in-place), all separate processes. Runs
several syncs (merge, adapter_only, an idempotent retry), checks every
generator byte against an independent reconstruction, prints a summary and
exits 0 only if everything matched.

With --vllm-python (the engines venv's python), the generators are real vLLM
0.33 model instances on CPU instead (scripts/demo/vllm_generator.py): TP=2
with expert parallelism (staged) and TP=1 (in place), registered through the
"wsync" backend's worker code, checked against vLLM's own load_weights.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))
import wsync  # noqa: E402

CONFIG = {
    "model_type": "qwen3_moe", "hidden_size": 256, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 32, "num_hidden_layers": 4, "num_experts": 8,
    "moe_intermediate_size": 128, "intermediate_size": 512, "decoder_sparse_step": 1,
    "vocab_size": 1000, "tie_word_embeddings": False, "num_experts_per_tok": 2,
}


class Child:
    def __init__(self, argv, log, python=sys.executable):
        self.p = subprocess.Popen([python, *argv], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log, text=True)

    def ask(self, obj=None, timeout=120):
        if obj is not None:
            self.p.stdin.write(json.dumps(obj) + "\n")
            self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.p.args} exited ({self.p.wait()})")
        return json.loads(line)

    def stop(self):
        try:
            self.p.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.p.stdin.flush()
            self.p.wait(timeout=20)
        except Exception:
            self.p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wsyncd", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--vllm-python", help="the engines venv's python: real vLLM generators instead of "
                    "simulated ones (scripts/demo.sh --vllm)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="wsync-demo-")
    sock = os.path.join(tmp, "run", "wsyncd.sock")
    cfg_path = os.path.join(tmp, "config.json")
    json.dump(CONFIG, open(cfg_path, "w"))
    log = open(os.path.join(tmp, "children.log"), "w")
    daemon_log = open(os.path.join(tmp, "wsyncd.log"), "w")
    daemon = subprocess.Popen([args.wsyncd, "--socket", sock, "--daemon-id", "demo-node",
                               "--bucket-mib", "4"], stderr=daemon_log)
    children = []
    ok = True
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        print(f"wsyncd pid {daemon.pid} on {sock}")
        common = ["--socket", sock, "--config", cfg_path]
        trainers = []
        for pp in range(2):
            for tp in range(2):
                extra = ["--register-model"] if (tp, pp) == (0, 0) else []
                t = Child([os.path.join(HERE, "trainer.py"), *common, "--tp", str(tp), "--tp-size", "2",
                           "--pp", str(pp), "--pp-size", "2", *extra], log)
                print(f"trainer tp{tp} pp{pp}: {t.ask()}")
                trainers.append(t)
        children += trainers
        gens = {}
        if args.vllm_python:
            print("generators: real vLLM 0.33 Qwen3MoeForCausalLM instances on CPU (building them takes a minute)")
            for replica, tp_size, mode, ep in (("vllm-tp2-ep", 2, "staged", True), ("vllm-tp1", 1, "in_place", False)):
                g = Child([os.path.join(HERE, "vllm_generator.py"), *common, "--replica", replica,
                           "--tp-size", str(tp_size), "--mode", mode, *(["--ep"] if ep else [])], log,
                          python=args.vllm_python)
                r = g.ask(timeout=600)
                print(f"generator {replica} (vLLM TP={tp_size}{', expert parallel' if ep else ''}, {mode}): "
                      f"workers {r['vllm_workers']}, layout probe passed, {r['in_place']} parameters written "
                      f"in place, {len(r['loader'])} through the loader path")
                gens[replica] = g
        else:
            for replica, tp_size, mode in (("gen-tp4", 4, "staged"), ("gen-tp1", 1, "in_place")):
                g = Child([os.path.join(HERE, "generator.py"), *common, "--replica", replica,
                           "--tp-size", str(tp_size), "--mode", mode], log)
                print(f"generator {replica} (TP={tp_size}, {mode}): {g.ask()}")
                gens[replica] = g
        children += list(gens.values())

        client = wsync.Client(sock, name="demo-driver")
        steps = [  # (version, lora mode, base seed, lora seed, what changed)
            (1, "merge", 1, 1, "full sync, adapters merged"),
            (2, "adapter_only", 1, 2, "only the adapters moved"),
            (3, "merge", 2, 2, "new base weights"),
            (4, "adapter_only", 2, 3, "only the adapters moved"),
            (4, "adapter_only", 2, 3, "retry of version 4 (idempotent)"),
            (5, "merge", 2, 3, "full merge of the same weights: bit-identical to adapter_only"),
        ]
        rows = []
        for version, mode, base, lseed, what in steps:
            for t in trainers:
                t.ask({"cmd": "load", "base_seed": base, "lora_seed": lseed})
            print(f"\n== version {version}: {what} (lora={mode})")

            def show(p):
                frac = p.bytes_done / max(1, p.bytes_total)
                phase = wsync.client.types_pb2.SyncPhase.Name(p.phase)
                sys.stdout.write(f"\r   [{'#' * int(30 * frac):<30}] {100 * frac:5.1f}% "
                                 f"{p.buckets_done}/{p.buckets_total} buckets "
                                 f"{p.rate_bytes_per_s / 1e9:6.2f} GB/s {phase:<12}")
                sys.stdout.flush()

            res = client.sync("policy", version, lora=mode, progress=show)
            print()
            same = version == 5
            for g in gens.values():
                g.p.stdin.write(json.dumps({"cmd": "check", "version": version, "base_seed": base,
                                            "lora_seed": lseed, "same_as_previous": same}) + "\n")
                g.p.stdin.flush()
            checks = {r: g.ask(timeout=600) for r, g in gens.items()}
            for r, c in checks.items():
                status = "OK" if c["ok"] else "MISMATCH " + "; ".join(c["errors"])
                print(f"   {r}: version {c['version']} digest {c['digest'][:12]}... "
                      f"{c['bytes'] / 2**20:.1f} MiB checked (merged tensors within the LoRA error "
                      f"bound, max {c['max_ulp']} bf16 ulp from the float64 reference): {status}")
                ok &= c["ok"] and c["version"] == version
            rows.append((version, mode, res))
        print("\n{:>7}  {:<12} {:>9} {:>7} {:>9} {:>8} {:>10} {:>9} {:>9}".format(
            "version", "lora", "MiB", "buckets", "total ms", "plan ms", "xfer GB/s", "verify ms",
            "commit ms"))
        for version, mode, r in rows:
            t = r.timings
            gbps = r.bytes / (t.transfer_ms / 1e3) / 1e9 if t.transfer_ms > 0 else 0.0
            print("{:>7}  {:<12} {:>9.1f} {:>7} {:>9.1f} {:>8.1f} {:>10.2f} {:>9.1f} {:>9.1f}".format(
                version, mode, r.bytes / 2**20, r.buckets, t.total_ms, t.plan_ms, gbps, t.verify_ms,
                t.commit_ms))
        st = client.status()
        for m in st.models:
            for rep in m.replicas:
                print(f"replica {rep.replica_id}: version {rep.version}, digest {rep.digest}")
        client.close()
    finally:
        for c in children:
            c.stop()
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=30)
        print(f"\nwsyncd exited {rc}")
        ok &= rc == 0
        log.close()
        daemon_log.close()
        if not args.keep:
            subprocess.run(["rm", "-rf", tmp])
        else:
            print(f"logs in {tmp}")
    print("DEMO OK: every generator byte matched" if ok else "DEMO FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
