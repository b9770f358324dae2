"""Python client of wsyncd, the wsync weight-sync daemon.

The main entry point is :class:`Client`. See client/python/README.md.
"""
from wsync.client import Client, WsyncError, DTYPES, remove_stale_shm

__all__ = ["Client", "WsyncError", "DTYPES", "remove_stale_shm"]
__version__ = "0.1.0"
