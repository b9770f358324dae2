"""A simulated vLLM generator replica: all its TP ranks' weights, bf16, in
the vLLM layout, registered with wsyncd as one target replica. On command it
waits for a version and checks every byte against an independent numpy
reconstruction (scripts/demo/layouts.py).

Protocol (JSON lines on stdin, replies on stdout):
  {"cmd": "check", "version": V, "base_seed": S, "lora_seed": T}  (T null = no LoRA)
  {"cmd": "exit"}
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc import commands, generator_args, reply  # noqa: E402  (also puts the wsync package on the path)

import layouts  # noqa: E402
import wsync  # noqa: E402


def main():
    args = generator_args(__doc__).parse_args()
    cfg = json.load(open(args.config))
    client = wsync.Client(args.socket, name=f"gen-{args.replica}")
    zeros = {k: np.zeros(s, "float32") for k, s in layouts.hf_tensors(cfg).items()}
    ranks = []
    for tp in range(args.tp_size):
        shapes = {k: v.shape for k, v in layouts.vllm_rank(cfg, zeros, tp, args.tp_size).items()}
        bufs = {k: client.empty(s, "bf16") for k, s in shapes.items()}
        client.register_shards(args.model, "target", bufs, recipe="vllm", replica=args.replica,
                               rank=dict(tp=tp, tp_size=args.tp_size), update_mode=args.mode)
        ranks.append(bufs)
    reply({"ready": True, "pid": os.getpid()})
    scale = args.lora_alpha / args.lora_rank
    previous = None
    for cmd in commands():
        if cmd["cmd"] != "check":
            continue
        got = client.wait_version(args.model, args.replica, cmd["version"], timeout_ms=60000)
        w = layouts.canonical(cfg, cmd["base_seed"])
        merged_names = set()
        if cmd.get("lora_seed") is not None:
            lora = layouts.adapters(cfg, cmd["lora_seed"], args.lora_rank)
            ref = layouts.merged(cfg, w, lora, scale, args.lora_rank)
            # |W| + s * |B| @ |A|: the magnitude the fp32 accumulation error scales with.
            mag = layouts.merged(cfg, {k: np.abs(v) for k, v in w.items()},
                                 {k: np.abs(v) for k, v in lora.items()}, abs(scale), args.lora_rank)
            w = ref
            merged_names = {"self_attn.qkv_proj.weight", "self_attn.o_proj.weight"}
        nbytes, max_ulp, bad = 0, 0, []
        gamma = (args.lora_rank + 2) * 2.0 ** -24
        for tp, bufs in enumerate(ranks):
            want = layouts.vllm_rank(cfg, w, tp, args.tp_size)
            mags = layouts.vllm_rank(cfg, mag, tp, args.tp_size) if merged_names else {}
            for name, arr in bufs.items():
                exp = layouts.to_bf16(want[name])
                nbytes += arr.nbytes
                if any(name.endswith(m) for m in merged_names):
                    # The stated bound of kernels/lora.h, against a float64 reference:
                    # |got - exact| <= ulp(got)/2 + gamma * (|W| + s*|B||A|), plus the
                    # reference's own rounding to bf16.
                    g = layouts.from_bf16(arr).astype(np.float64)
                    ulp = np.abs(layouts.from_bf16(arr + 1).astype(np.float64) - g)
                    err = np.abs(g - want[name].astype(np.float64))
                    ok = err <= ulp + gamma * mags[name]
                    max_ulp = max(max_ulp, int(np.abs(arr.astype(np.int32) - exp.astype(np.int32)).max()))
                    if not ok.all():
                        bad.append(f"rank {tp} {name}: {int((~ok).sum())} elements outside the bound")
                elif not np.array_equal(arr, exp):
                    n = int((arr != exp).sum())
                    bad.append(f"rank {tp} {name}: {n} elements differ")
        if cmd.get("same_as_previous"):
            if any(not np.array_equal(a, previous[tp][k]) for tp, b in enumerate(ranks) for k, a in b.items()):
                bad.append("not bit-identical to the previous version")
        previous = [{k: a.copy() for k, a in b.items()} for b in ranks]
        reply({"ok": not bad, "version": got.version, "digest": got.digest, "bytes": nbytes,
               "max_ulp": max_ulp, "errors": bad[:5]})
    client.close()


if __name__ == "__main__":
    main()
