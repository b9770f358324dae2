"""Plumbing shared by the demo's trainer and generator processes."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The wsync package from this checkout (not necessarily pip-installed).
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))


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
