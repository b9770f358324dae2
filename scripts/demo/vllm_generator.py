"""A real vLLM generator replica for the demo (`scripts/demo.sh --vllm`): vLLM
0.33's own Qwen3MoeForCausalLM built on CPU in TP worker processes
(VLLM_TARGET_DEVICE=cpu, load_format=dummy, gloo; no forward pass runs on
CPU). Each worker registers its parameters through wsync.vllm.WorkerSession,
the code the "wsync" weight-transfer backend runs, layout probe included.

On "check", each worker waits for the version's commit and compares every
parameter with what vLLM's own load_weights makes of the expected weights
(scripts/demo/layouts.py, rounded to bf16) in a second model instance: bit
for bit, except the LoRA-merged projections, which are checked element by
element against the float64 merge within the LoRA kernel's stated bound,
through the layout the probe verified.

Runs in the engines venv (scripts/engines_venv.sh). Protocol as
generator.py: JSON lines on stdin, replies on stdout.
"""
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(rank, world, port, ckpt, cfg, args, commands, replies):
    os.dup2(2, 1)  # vLLM's prints must not reach the reply stream
    sys.path.insert(0, HERE)
    # The engine tests' CPU model builder (tests/engines/vllm_cpu.py).
    sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "engines"))
    import numpy as np
    import torch

    import layouts
    import proc  # noqa: F401  (puts this checkout's wsync package on the path)
    import vllm_cpu
    import wsync.vllm
    with vllm_cpu.models(ckpt, world, rank, port, "bfloat16", args.ep) as (_, target, reference):
        session = wsync.vllm.WorkerSession(target)
        paths = session.init(args.model, args.replica, socket=args.socket, update_mode=args.mode)
        layout = session.client.describe_layout(args.model, "vllm", wsync.vllm.coordinates(target),
                                                wsync.vllm.recipe_options(target))
        replies.put((rank, {"ready": True, "pid": os.getpid(), **paths}))
        params = dict(target.named_parameters())
        scale = args.lora_alpha / args.lora_rank
        gamma = (args.lora_rank + 2) * 2.0 ** -24
        previous = None
        bits = lambda t: t.detach().view(torch.int16).numpy()  # noqa: E731
        while True:
            cmd = commands[rank].get()
            if cmd["cmd"] == "exit":
                session.shutdown()
                return
            session.update(cmd["version"], timeout_ms=60000)
            got = session.client.wait_version(args.model, args.replica, cmd["version"], timeout_ms=1000)
            w = layouts.canonical(cfg, cmd["base_seed"])
            merged = set()
            if cmd.get("lora_seed") is not None:
                lora = layouts.adapters(cfg, cmd["lora_seed"], args.lora_rank)
                mag = layouts.merged(cfg, {k: np.abs(v) for k, v in w.items()},
                                     {k: np.abs(v) for k, v in lora.items()}, abs(scale), args.lora_rank)
                w = layouts.merged(cfg, w, lora, scale, args.lora_rank)
                merged = {n for n in params if n.endswith(("self_attn.qkv_proj.weight", "self_attn.o_proj.weight"))}
            reference.load_weights(
                (n, torch.from_numpy(layouts.to_bf16(a).view(np.int16)).view(torch.bfloat16)) for n, a in w.items())
            want = dict(reference.named_parameters())
            nbytes, max_ulp, bad = 0, 0, []
            for name, p in params.items():
                nbytes += p.numel() * p.element_size()
                g, ref = bits(p), bits(want[name])
                if name not in merged:
                    if not np.array_equal(g, ref):
                        bad.append(f"rank {rank} {name}: {int((g != ref).sum())} elements differ from vLLM's "
                                   "load_weights")
                    continue
                max_ulp = max(max_ulp, int(np.abs(g.astype(np.int32) - ref.astype(np.int32)).max()))
                # Element by element through the verified layout: the stated
                # bound of kernels/lora.h against the float64 merge.
                got_f = p.detach().float().numpy().astype(np.float64)
                up = layouts.from_bf16((g.view(np.uint16) + 1).astype(np.uint16)).astype(np.float64)
                ulp = np.abs(up - got_f)
                for tensor, (co, cs), (so, ss) in layout["buffers"][name]["pieces"]:
                    cb = tuple(slice(o, o + n) for o, n in zip(co, cs))
                    sb = tuple(slice(o, o + n) for o, n in zip(so, ss))
                    exact = w[tensor][cb].astype(np.float64).reshape(ss)
                    ok = np.abs(got_f[sb] - exact) <= ulp[sb] + gamma * mag[tensor][cb].reshape(ss)
                    if not ok.all():
                        bad.append(f"rank {rank} {name} ({tensor}): {int((~ok).sum())} elements outside the bound")
            if cmd.get("same_as_previous") and previous is not None:
                if any(not np.array_equal(bits(p), previous[n]) for n, p in params.items()):
                    bad.append(f"rank {rank}: not bit-identical to the previous version")
            previous = {n: bits(p).copy() for n, p in params.items()}
            replies.put((rank, {"ok": not bad, "version": got.version, "digest": got.digest, "bytes": nbytes,
                                "max_ulp": max_ulp, "errors": bad[:5]}))


def main():
    sys.path.insert(0, HERE)
    import proc
    ap = proc.generator_args(__doc__)
    ap.add_argument("--ep", action="store_true", help="vLLM's enable_expert_parallel")
    args = ap.parse_args()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import torch.multiprocessing as mp
    cfg = json.load(open(args.config))
    ckpt = tempfile.mkdtemp(prefix="wsync-demo-vllm-")
    json.dump({**cfg, "architectures": ["Qwen3MoeForCausalLM"], "torch_dtype": "bfloat16"},
              open(os.path.join(ckpt, "config.json"), "w"))
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    commands, replies = [ctx.Queue() for _ in range(args.tp_size)], ctx.Queue()
    procs = mp.start_processes(worker, nprocs=args.tp_size, join=False, start_method="spawn",
                               args=(args.tp_size, port, ckpt, cfg, args, commands, replies))

    def gather():
        import queue
        got = []
        while len(got) < args.tp_size:
            try:
                got.append(replies.get(timeout=1))
            except queue.Empty:
                procs.join(timeout=0.01)  # raises a worker's error
        return [r for _, r in sorted(got, key=lambda x: x[0])]

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    ready = gather()
    reply({"ready": True, "pid": os.getpid(), "vllm_workers": [r["pid"] for r in ready],
           "in_place": sum(r["in_place"] for r in ready), "loader": sorted({n for r in ready for n in r["loader"]})})
    for line in sys.stdin:
        cmd = json.loads(line)
        for q in commands:
            q.put(cmd)
        if cmd["cmd"] == "exit":
            break
        results = gather()
        reply({"ok": all(r["ok"] for r in results), "version": min(r["version"] for r in results),
               "digest": results[0]["digest"], "bytes": sum(r["bytes"] for r in results),
               "max_ulp": max(r["max_ulp"] for r in results),
               "errors": [e for r in results for e in r["errors"]][:5]})
    procs.join(timeout=60)


if __name__ == "__main__":
    main()
