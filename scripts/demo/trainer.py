"""A simulated Megatron-LM trainer rank: holds fp32 master weights in the
Megatron layout (plus whole LoRA adapters on its stage when tp == 0) in
shared memory registered with wsyncd, and rewrites them on command.

Protocol: one JSON object per line on stdin; each gets a JSON reply on stdout.
  {"cmd": "load", "base_seed": S, "lora_seed": T}   -> {"ok": true}
  {"cmd": "exit"}
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc import commands, reply  # noqa: E402  (also puts the wsync package on the path)

import layouts  # noqa: E402
import wsync  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--config", required=True, help="HF config.json")
    ap.add_argument("--model", default="policy")
    ap.add_argument("--tp", type=int, default=0)
    ap.add_argument("--tp-size", type=int, default=1)
    ap.add_argument("--pp", type=int, default=0)
    ap.add_argument("--pp-size", type=int, default=1)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--register-model", action="store_true")
    args = ap.parse_args()
    cfg = json.load(open(args.config))
    r = args.lora_rank
    client = wsync.Client(args.socket, name=f"trainer-tp{args.tp}-pp{args.pp}")
    if args.register_model:
        adapters = []
        for l in range(cfg["num_hidden_layers"]):
            for m in layouts.LORA_MODULES:
                base = f"model.layers.{l}.self_attn.{m}"
                adapters.append(dict(base=base + ".weight", a=base + ".lora_A.weight",
                                     b=base + ".lora_B.weight", rank=r, scaling=args.lora_alpha / r))
        client.register_model(args.model, config=cfg, lora_adapters=adapters)

    zeros = {k: np.zeros(s, "float32") for k, s in layouts.hf_tensors(cfg).items()}
    shapes = {k: v.shape for k, v in layouts.megatron_rank(cfg, zeros, args.tp, args.tp_size, args.pp,
                                                             args.pp_size).items()}
    bufs = {k: client.empty(s, "fp32") for k, s in shapes.items()}
    pieces = {}
    lora_names = []
    if args.tp == 0:  # this stage's adapters, whole
        per = cfg["num_hidden_layers"] // args.pp_size
        for name, shape in layouts.lora_tensors(cfg, r).items():
            layer = int(name.split(".")[2])
            if args.pp * per <= layer < (args.pp + 1) * per:
                bufs[name] = client.empty(shape, "fp32")
                box = ([0] * len(shape), list(shape))
                pieces[name] = [(name, box, box)]
                lora_names.append(name)
    client.register_shards(args.model, "source", bufs, recipe="megatron",
                           # Megatron-core's grids: process pp*tp_size + tp; experts
                           # not tensor-parallel (etp 1), so the tp ranks hold
                           # expert copies (edp = tp).
                           rank=dict(rank=args.pp * args.tp_size + args.tp,
                                     world_size=args.tp_size * args.pp_size,
                                     tp=args.tp, tp_size=args.tp_size, pp=args.pp, pp_size=args.pp_size,
                                     etp=0, etp_size=1, ep=0, ep_size=1, edp=args.tp, edp_size=args.tp_size),
                           pieces=pieces)
    reply({"ready": True, "buffers": len(bufs), "pid": os.getpid()})
    for cmd in commands():
        if cmd["cmd"] == "load":
            w = layouts.canonical(cfg, cmd["base_seed"])
            for k, v in layouts.megatron_rank(cfg, w, args.tp, args.tp_size, args.pp, args.pp_size).items():
                bufs[k][...] = v
            if lora_names:
                a = layouts.adapters(cfg, cmd["lora_seed"], r)
                for k in lora_names:
                    bufs[k][...] = a[k]
            reply({"ok": True})
    client.close()


if __name__ == "__main__":
    main()
