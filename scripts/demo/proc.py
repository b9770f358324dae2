"""Plumbing shared by the demo's trainer and generator processes."""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The wsync package from this checkout (not necessarily pip-installed).
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))


def generator_args(description):
    """The command line of a demo generator replica (generator.py, and
    vllm_generator.py, which adds --ep)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--model", default="policy")
    ap.add_argument("--replica", required=True)
    ap.add_argument("--tp-size", type=int, default=1)
    ap.add_argument("--mode", choices=["staged", "in_place"], default="staged")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    return ap


def reply(obj):
    """One JSON object per line on stdout: the answer to a command."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def commands():
    """The JSON commands arriving on stdin, until {"cmd": "exit"}."""
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            return
        yield cmd
